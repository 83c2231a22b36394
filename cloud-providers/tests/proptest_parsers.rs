//! Property tests of the response parsers: whatever a cloud API or a metadata service answers
//! (any HTTP status, any bytes, JSON or XML of the right shape with wrong values), every
//! provider call returns a typed answer or a [`ProviderError`], never a panic or a hang; and
//! answers that are well formed are read exactly.
//!
//! The answers come from a canned HTTP server on 127.0.0.1 that replies to every request with
//! the case's status and body; the providers run without retries, so each call is one
//! request. The Alibaba Cloud parsers (JSON, `model` and `errors`), the AWS EC2 ones (XML
//! through aws-sdk-ec2, then our conversion and `map_sdk_error`) and both metadata clients
//! are covered through the public API.
//!
//! Case counts keep each property to a few seconds in a debug build; raise them with
//! `PROPTEST_CASES=2000` for a longer hunt.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloud_providers::aliyun::{
    AliyunConfig, AliyunCredentials, AliyunProvider, CredentialProvider, SignatureVersion,
};
use cloud_providers::aws::{AwsConfig, AwsProvider};
use cloud_providers::metadata::{MetadataClient, MetadataFlavor};
use cloud_providers::{
    AddressCount, ApiRateLimiter, AssignAddressesOptions, AttachEniOptions, CallSettings,
    CloudProvider, CreateEniOptions, DeleteEniOptions, DetachEniOptions, Eni, IdempotencyToken,
    ListEnisOptions, Priority, ProviderError, Rate, RateLimitConfig, RetryPolicy,
    SubnetCapacityOptions, UnassignAddressesOptions,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

/// One canned HTTP answer.
#[derive(Debug, Clone)]
struct Canned {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// An HTTP/1.1 server answering every request with the current [`Canned`] answer and
/// closing the connection.
struct CannedServer {
    url: String,
    answer: Arc<Mutex<Canned>>,
}

impl CannedServer {
    fn start() -> CannedServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new(Canned {
            status: 200,
            headers: Vec::new(),
            body: b"{}".to_vec(),
        }));
        let shared = answer.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let canned = shared.lock().unwrap().clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &canned);
                });
            }
        });
        CannedServer { url, answer }
    }

    fn set(&self, canned: Canned) {
        *self.answer.lock().unwrap() = canned;
    }
}

fn serve(conn: TcpStream, canned: &Canned) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let mut out = format!(
        "HTTP/1.1 {} Canned\r\nContent-Length: {}\r\nConnection: close\r\n",
        canned.status,
        canned.body.len()
    );
    for (k, v) in &canned.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut conn = conn;
    conn.write_all(out.as_bytes())?;
    conn.write_all(&canned.body)?;
    conn.flush()
}

/// A runtime per test: the tests run in parallel, each with its own server, clients and
/// runtime, sharing nothing.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn settings() -> CallSettings {
    let limiter = ApiRateLimiter::new(RateLimitConfig::uniform(Rate {
        per_second: 1_000_000.0,
        burst: 1_000_000,
    }))
    .unwrap();
    let mut s = CallSettings::new(limiter);
    s.retry = RetryPolicy::none();
    s
}

fn aliyun(url: &str, signature: SignatureVersion) -> AliyunProvider {
    let mut cfg = AliyunConfig::new("cn-hangzhou").with_endpoint(url);
    cfg.signature = signature;
    cfg.instance_id = Some("i-node".into());
    cfg.request_timeout = Duration::from_secs(5);
    let creds = CredentialProvider::fixed(AliyunCredentials::new("id", "secret"));
    AliyunProvider::new(cfg, Arc::new(creds), None, settings()).unwrap()
}

fn aws(rt: &tokio::runtime::Runtime, url: &str) -> AwsProvider {
    let cfg = AwsConfig {
        region: Some("us-east-1".into()),
        endpoint_url: Some(url.into()),
        static_credentials: Some(("id".into(), "secret".into())),
        instance_id: Some("i-node".into()),
        request_timeout: Duration::from_secs(5),
    };
    rt.block_on(AwsProvider::new(cfg, None, settings()))
        .unwrap()
}

fn token() -> IdempotencyToken {
    IdempotencyToken::new("tok-1").unwrap()
}

/// The outcome of every provider call for one canned answer, with the ENI of
/// `describe_eni` kept for the exactness checks.
struct Outcomes {
    results: Vec<(&'static str, Result<(), ProviderError>)>,
    described: Result<Eni, ProviderError>,
}

/// Calls every provider method once (each is one request, no retries).
async fn call_all(p: &dyn CloudProvider) -> Outcomes {
    fn unit<T>(r: Result<T, ProviderError>) -> Result<(), ProviderError> {
        r.map(|_| ())
    }
    let mut results = Vec::new();
    let described = p.describe_eni("eni-1", Priority::Refill).await;
    results.push(("node_info", unit(p.node_info().await)));
    let list = ListEnisOptions {
        tags: [("k".to_string(), "v".to_string())].into(),
        instance_id: Some("i-node".into()),
        ..Default::default()
    };
    results.push(("list_enis", unit(p.list_enis(&list).await)));
    let create = CreateEniOptions {
        subnet_id: "vsw-1".into(),
        security_group_ids: vec!["sg-1".into()],
        addresses: AddressCount::Ips(3),
        tags: BTreeMap::new(),
        description: None,
        idempotency_token: token(),
        priority: Priority::Refill,
    };
    results.push(("create_eni", unit(p.create_eni(&create).await)));
    let attach = AttachEniOptions {
        eni_id: "eni-1".into(),
        instance_id: "i-node".into(),
        device_index: Some(1),
        idempotency_token: token(),
        priority: Priority::Refill,
    };
    results.push(("attach_eni", unit(p.attach_eni(&attach).await)));
    let assign = AssignAddressesOptions {
        eni_id: "eni-1".into(),
        addresses: AddressCount::Ips(2),
        idempotency_token: token(),
        priority: Priority::PodWaiting,
    };
    results.push(("assign_addresses", unit(p.assign_addresses(&assign).await)));
    let unassign = UnassignAddressesOptions {
        eni_id: "eni-1".into(),
        ips: vec![Ipv4Addr::new(10, 0, 0, 5)],
        prefixes: Vec::new(),
        priority: Priority::Release,
    };
    results.push((
        "unassign_addresses",
        unit(p.unassign_addresses(&unassign).await),
    ));
    let detach = DetachEniOptions {
        eni_id: "eni-1".into(),
        instance_id: "i-node".into(),
        attachment_id: Some("att-1".into()),
        priority: Priority::Release,
    };
    results.push(("detach_eni", unit(p.detach_eni(&detach).await)));
    let delete = DeleteEniOptions {
        eni_id: "eni-1".into(),
        priority: Priority::Release,
    };
    results.push(("delete_eni", unit(p.delete_eni(&delete).await)));
    let capacity = SubnetCapacityOptions {
        subnet_ids: vec!["vsw-1".into()],
        priority: Priority::Refill,
    };
    results.push(("subnet_capacity", unit(p.subnet_capacity(&capacity).await)));
    Outcomes { results, described }
}

/// Calls every metadata method once.
async fn metadata_all(md: &MetadataClient) -> Vec<Result<(), ProviderError>> {
    fn unit<T>(r: Result<T, ProviderError>) -> Result<(), ProviderError> {
        r.map(|_| ())
    }
    vec![
        unit(md.instance_id().await),
        unit(md.instance_type().await),
        unit(md.region().await),
        unit(md.zone().await),
        unit(md.primary_mac().await),
        unit(md.macs().await),
        unit(md.interface("00:16:3e:00:00:01").await),
        unit(md.ram_role().await),
        unit(md.vpc_cidrs().await),
    ]
}

/// Checks that hold for any answer: an error answer of status 429 is throttling; an error
/// always names what failed in its message.
fn common_checks(canned: &Canned, out: &Outcomes) -> Result<(), TestCaseError> {
    for (call, r) in out
        .results
        .iter()
        .map(|(c, r)| (*c, r.as_ref().map(|_| ())))
        .chain(std::iter::once((
            "describe_eni",
            out.described.as_ref().map(|_| ()),
        )))
    {
        if let Err(e) = r {
            prop_assert!(!e.to_string().is_empty(), "{call}: empty message");
            if canned.status == 429 {
                prop_assert!(
                    matches!(e.root(), ProviderError::Throttled { .. }),
                    "{call}: a 429 answer read as {e:?}"
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// HTTP statuses a server may answer with (no 1xx, 204 or 304: those carry no body).
fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => Just(200u16),
        1 => prop_oneof![
            Just(400u16), Just(401), Just(403), Just(404), Just(409), Just(429), Just(500),
            Just(502), Just(503), Just(504),
        ],
        1 => (200u16..600).prop_filter("no body", |s| *s != 204 && *s != 304),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(
        (
            prop_oneof![
                Just("x-acs-request-id".to_string()),
                Just("x-acs-retry-after".to_string()),
                Just("Content-Type".to_string()),
                Just("x-amzn-requestid".to_string()),
            ],
            "[ -~]{0,20}",
        ),
        0..3,
    )
}

/// Values that are sometimes an address, sometimes almost one, sometimes anything.
fn ipish() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => any::<u32>().prop_map(|n| json!(Ipv4Addr::from(n).to_string())),
        1 => Just(json!("10.0.0.256")),
        1 => Just(json!("fd00::1")),
        1 => Just(json!("")),
        1 => "\\PC{0,10}".prop_map(Value::String),
        1 => any::<i64>().prop_map(|n| json!(n)),
        1 => Just(Value::Null),
    ]
}

fn cidrish() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (any::<u32>(), 0u8..=32).prop_map(|(n, l)| {
            json!(ipnet::Ipv4Net::new(Ipv4Addr::from(n), l).unwrap().trunc().to_string())
        }),
        1 => Just(json!("10.0.0.0/33")),
        1 => "\\PC{0,12}".prop_map(Value::String),
        1 => Just(Value::Null),
    ]
}

fn textish() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => "[a-zA-Z0-9.:-]{0,16}".prop_map(Value::String),
        1 => "\\PC{0,12}".prop_map(Value::String),
        1 => any::<u64>().prop_map(|n| json!(n)),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
        1 => Just(json!([])),
        1 => Just(json!({})),
    ]
}

fn countish() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (0u64..64).prop_map(|n| json!(n)),
        1 => any::<i64>().prop_map(|n| json!(n)),
        1 => any::<f64>().prop_map(|f| json!(f)),
        1 => textish(),
    ]
}

/// An Alibaba `NetworkInterfaceSet` item with plausible and implausible values.
fn aliyun_eni() -> impl Strategy<Value = Value> {
    (
        (textish(), textish(), textish(), textish(), textish()),
        (ipish(), proptest::collection::vec((ipish(), any::<bool>()), 0..4)),
        proptest::collection::vec(cidrish(), 0..2),
        (proptest::collection::vec(("[a-z]{1,5}", textish()), 0..3), any::<Option<u32>>()),
    )
        .prop_map(|((status, kind, mac, vsw, inst), (primary, ips), prefixes, (tags, dev))| {
            json!({
                "NetworkInterfaceId": "eni-1",
                "Status": status, "Type": kind, "MacAddress": mac, "VSwitchId": vsw,
                "InstanceId": inst, "PrivateIpAddress": primary, "VpcId": "vpc-1",
                "ZoneId": "z-1",
                "PrivateIpSets": {"PrivateIpSet": ips.into_iter().map(|(a, p)| json!({"PrivateIpAddress": a, "Primary": p})).collect::<Vec<_>>()},
                "Ipv4PrefixSets": {"Ipv4PrefixSet": prefixes.into_iter().map(|p| json!({"Ipv4Prefix": p})).collect::<Vec<_>>()},
                "Tags": {"Tag": tags.into_iter().map(|(k, v)| json!({"TagKey": k, "TagValue": v})).collect::<Vec<_>>()},
                "SecurityGroupIds": {"SecurityGroupId": ["sg-1"]},
                "Attachment": {"InstanceId": "i-node", "DeviceIndex": dev},
            })
        })
}

/// One JSON body holding the answer shapes of every action the provider calls, so one
/// canned answer exercises each parser; keys are dropped now and then.
fn aliyun_body() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(aliyun_eni(), 0..3),
        proptest::option::of(textish()),
        (proptest::collection::vec(ipish(), 0..4), proptest::collection::vec(cidrish(), 0..2)),
        (textish(), textish(), cidrish(), countish()),
        (textish(), countish(), countish()),
        (textish(), textish()),
        proptest::collection::vec(any::<bool>(), 9),
    )
        .prop_map(|(enis, next, (ips, prefixes), (vsw, zone, cidr, avail), (itype, eniq, ipq), (code, msg), keep)| {
            let first = enis.first().cloned().unwrap_or(json!({"NetworkInterfaceId": "eni-1"}));
            let parts = [
                ("NetworkInterfaceSets", json!({"NetworkInterfaceSet": enis})),
                ("NextToken", next.unwrap_or(Value::Null)),
                ("AssignedPrivateIpAddressesSet", json!({"PrivateIpSet": {"PrivateIpAddress": ips}, "Ipv4PrefixSet": {"Ipv4Prefixes": prefixes}})),
                ("VSwitches", json!({"VSwitch": [{"VSwitchId": vsw, "ZoneId": zone, "CidrBlock": cidr, "AvailableIpAddressCount": avail}]})),
                ("InstanceTypes", json!({"InstanceType": [{"InstanceTypeId": itype, "EniQuantity": eniq, "EniPrivateIpAddressQuantity": ipq}]})),
                ("Instances", json!({"Instance": [{"InstanceId": "i-node", "InstanceType": itype, "RegionId": "cn-hangzhou", "ZoneId": zone,
                    "VpcAttributes": {"VpcId": "vpc-1", "VSwitchId": vsw},
                    "NetworkInterfaces": {"NetworkInterface": [{"NetworkInterfaceId": "eni-p", "MacAddress": "00:16:3e:00:00:01", "PrimaryIpAddress": "10.0.0.2", "Type": "Primary"}]},
                    "SecurityGroupIds": {"SecurityGroupId": ["sg-1"]}}]})),
                ("NetworkInterfaceId", first["NetworkInterfaceId"].clone()),
                ("Code", code),
                ("Message", msg),
            ];
            let mut obj = serde_json::Map::new();
            for ((k, v), keep) in parts.into_iter().zip(keep) {
                if keep {
                    obj.insert(k.to_string(), v);
                }
            }
            obj.insert("RequestId".into(), json!("req-1"));
            Value::Object(obj)
        })
}

/// A well-formed ENI answer and what it must read as: (body, secondary IPs, primary IP).
fn aliyun_good_eni() -> impl Strategy<Value = (Value, Vec<Ipv4Addr>, Ipv4Addr)> {
    (
        any::<u32>(),
        proptest::collection::btree_set(any::<u32>(), 0..6),
        proptest::collection::btree_map("[a-z]{1,6}", "[a-z0-9]{0,6}", 0..3),
    )
        .prop_map(|(primary, secondaries, tags)| {
            let primary = Ipv4Addr::from(primary);
            let secondaries: Vec<Ipv4Addr> = secondaries
                .into_iter()
                .map(Ipv4Addr::from)
                .filter(|ip| *ip != primary)
                .collect();
            let mut sets = vec![json!({"PrivateIpAddress": primary.to_string(), "Primary": true})];
            sets.extend(
                secondaries
                    .iter()
                    .map(|ip| json!({"PrivateIpAddress": ip.to_string(), "Primary": false})),
            );
            let body = json!({"RequestId": "r", "NetworkInterfaceSets": {"NetworkInterfaceSet": [{
                "NetworkInterfaceId": "eni-1", "Status": "InUse", "Type": "Secondary",
                "MacAddress": "00:16:3E:AA:BB:CC", "VSwitchId": "vsw-1", "ZoneId": "z", "VpcId": "v",
                "InstanceId": "i-node", "PrivateIpAddress": primary.to_string(),
                "PrivateIpSets": {"PrivateIpSet": sets},
                "Tags": {"Tag": tags.iter().map(|(k, v)| json!({"TagKey": k, "TagValue": v})).collect::<Vec<_>>()},
                "Attachment": {"InstanceId": "i-node", "DeviceIndex": 1}
            }]}});
            (body, secondaries, primary)
        })
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn xml_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9.:-]{0,16}",
        1 => any::<u32>().prop_map(|n| Ipv4Addr::from(n).to_string()),
        1 => Just("10.0.0.0/33".to_string()),
        1 => Just("-1".to_string()),
        1 => Just("99999999999999999999".to_string()),
        1 => "\\PC{0,10}".prop_map(|s| xml_escape(&s)),
        1 => Just("<unclosed>".to_string()),
    ]
}

/// EC2 answers: an ENI set, an error document, or pieces of both, as XML.
fn aws_body() -> impl Strategy<Value = String> {
    let eni = (
        proptest::collection::vec(xml_text(), 8),
        proptest::collection::vec((xml_text(), any::<bool>()), 0..4),
    )
        .prop_map(|(f, ips)| {
            let ips: String = ips
                .into_iter()
                .map(|(a, p)| format!("<item><privateIpAddress>{a}</privateIpAddress><primary>{p}</primary></item>"))
                .collect();
            format!(
                "<item><networkInterfaceId>eni-1</networkInterfaceId><subnetId>{}</subnetId><vpcId>{}</vpcId>\
                 <availabilityZone>{}</availabilityZone><macAddress>{}</macAddress><privateIpAddress>{}</privateIpAddress>\
                 <status>{}</status><interfaceType>interface</interfaceType>\
                 <attachment><instanceId>i-node</instanceId><deviceIndex>{}</deviceIndex><attachmentId>{}</attachmentId></attachment>\
                 <privateIpAddressesSet>{ips}</privateIpAddressesSet>\
                 <groupSet><item><groupId>sg-1</groupId></item></groupSet>\
                 <tagSet><item><key>k</key><value>v</value></item></tagSet></item>",
                f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]
            )
        });
    let ns = "xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"";
    prop_oneof![
        (proptest::sample::select(vec![
            "DescribeNetworkInterfacesResponse",
            "CreateNetworkInterfaceResponse",
            "AssignPrivateIpAddressesResponse",
            "DescribeSubnetsResponse",
            "DescribeInstancesResponse",
        ]), proptest::collection::vec(eni, 0..3), xml_text(), xml_text())
            .prop_map(move |(root, enis, a, b)| {
                let set: String = enis.concat();
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><{root} {ns}><requestId>r</requestId>\
                     <networkInterfaceSet>{set}</networkInterfaceSet>\
                     <networkInterface>{}</networkInterface>\
                     <assignedPrivateIpAddressesSet><item><privateIpAddress>{a}</privateIpAddress></item></assignedPrivateIpAddressesSet>\
                     <subnetSet><item><subnetId>vsw-1</subnetId><cidrBlock>{b}</cidrBlock><availableIpAddressCount>{a}</availableIpAddressCount><availabilityZone>z</availabilityZone></item></subnetSet>\
                     <attachmentId>{a}</attachmentId><return>{b}</return></{root}>",
                    set.strip_prefix("<item>").and_then(|s| s.strip_suffix("</item>")).unwrap_or("")
                )
            }),
        (xml_text(), xml_text()).prop_map(|(code, msg)| format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code>\
             <Message>{msg}</Message></Error></Errors><RequestID>r</RequestID></Response>"
        )),
        proptest::sample::select(vec![
            "RequestLimitExceeded", "InvalidNetworkInterfaceID.NotFound",
            "AttachmentLimitExceeded", "InsufficientFreeAddressesInSubnet",
            "PrivateIpAddressLimitExceeded", "AuthFailure", "UnauthorizedOperation",
            "IncorrectState", "InvalidParameterValue", "InternalError", "Unavailable",
            "InvalidAttachmentID.NotFound",
        ]).prop_map(|code| format!(
            "<Response><Errors><Error><Code>{code}</Code><Message>m</Message></Error></Errors><RequestID>r</RequestID></Response>"
        )),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..200)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn run<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    if let Err(e) = runner(cases).run(&strategy, test) {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Alibaba Cloud
// ---------------------------------------------------------------------------------------------

/// Any status and any bytes: every call answers, a 2xx body that is not JSON is `Malformed`.
#[test]
fn aliyun_any_bytes() {
    let server = CannedServer::start();
    let rt = runtime();
    let p = aliyun(&server.url, SignatureVersion::V3);
    run(
        96,
        (status(), headers(), bytes()),
        |(status, headers, body)| {
            let canned = Canned {
                status,
                headers,
                body,
            };
            server.set(canned.clone());
            let out = rt.block_on(call_all(&p));
            common_checks(&canned, &out)?;
            if (200..300).contains(&status)
                && serde_json::from_slice::<Value>(&canned.body).is_err()
            {
                for (call, r) in &out.results {
                    if let Err(e) = r {
                        prop_assert!(
                            matches!(e.root(), ProviderError::Malformed { .. }),
                            "{call}: {e:?}"
                        );
                    }
                }
            }
            Ok(())
        },
    );
}

/// JSON of the right shapes with wrong values, under any status: every call answers.
#[test]
fn aliyun_shaped_json() {
    let server = CannedServer::start();
    let rt = runtime();
    let p = aliyun(&server.url, SignatureVersion::V1);
    run(
        160,
        (status(), headers(), aliyun_body()),
        |(status, headers, body)| {
            let canned = Canned {
                status,
                headers,
                body: serde_json::to_vec(&body).unwrap(),
            };
            server.set(canned.clone());
            let out = rt.block_on(call_all(&p));
            common_checks(&canned, &out)
        },
    );
}

/// A well-formed ENI answer is read exactly: addresses, primary, MAC, tags, attachment.
#[test]
fn aliyun_good_eni_reads_exactly() {
    let server = CannedServer::start();
    let rt = runtime();
    let p = aliyun(&server.url, SignatureVersion::V3);
    run(64, aliyun_good_eni(), |(body, secondaries, primary)| {
        server.set(Canned {
            status: 200,
            headers: Vec::new(),
            body: serde_json::to_vec(&body).unwrap(),
        });
        let eni = rt
            .block_on(p.describe_eni("eni-1", Priority::Refill))
            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(eni.id.as_str(), "eni-1");
        prop_assert_eq!(eni.primary_ip, Some(primary));
        prop_assert_eq!(&eni.secondary_ips, &secondaries);
        prop_assert_eq!(eni.mac.as_str(), "00:16:3e:aa:bb:cc");
        prop_assert_eq!(eni.instance_id.as_deref(), Some("i-node"));
        prop_assert_eq!(eni.device_index, Some(1));
        let tags: BTreeMap<String, String> = body["NetworkInterfaceSets"]["NetworkInterfaceSet"][0]
            ["Tags"]["Tag"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["TagKey"].as_str().unwrap().to_string(),
                    t["TagValue"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        prop_assert_eq!(&eni.tags, &tags);
        Ok(())
    });
}

/// Error answers with any code: a typed error, never a success the body did not give
/// (except the documented treat-as-success codes of detach, delete and unassign).
#[test]
fn aliyun_error_codes() {
    let server = CannedServer::start();
    let rt = runtime();
    let p = aliyun(&server.url, SignatureVersion::V3);
    let code = prop_oneof![
        proptest::sample::select(vec![
            "Throttling.User",
            "Throttling",
            "InvalidVSwitchId.IpNotEnough",
            "EniPerInstanceLimitExceeded",
            "QuotaExceeded.Eni",
            "InvalidOperation.Ipv4CountExceeded",
            "InvalidAccessKeyId.NotFound",
            "SignatureDoesNotMatch",
            "Forbidden.RAM",
            "InvalidEniId.NotFound",
            "InvalidIp.IpUnassigned",
            "IncorrectInstanceStatus",
            "ServiceUnavailable",
            "InternalError",
            "InvalidParameter",
        ])
        .prop_map(str::to_string),
        "\\PC{0,16}",
    ];
    run(
        96,
        (400u16..600, code, textish()),
        |(status, code, message)| {
            let body = json!({"Code": code, "Message": message, "RequestId": "r"});
            let canned = Canned {
                status,
                headers: Vec::new(),
                body: serde_json::to_vec(&body).unwrap(),
            };
            server.set(canned.clone());
            let out = rt.block_on(call_all(&p));
            common_checks(&canned, &out)?;
            let tolerated = ["detach_eni", "delete_eni", "unassign_addresses"];
            for (call, r) in &out.results {
                if r.is_ok() {
                    prop_assert!(
                        tolerated.contains(call),
                        "{call} succeeded on an error answer {code:?}"
                    );
                }
            }
            prop_assert!(out.described.is_err());
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// AWS EC2
// ---------------------------------------------------------------------------------------------

/// Any status and any bytes through aws-sdk-ec2 and our conversion: every call answers.
#[test]
fn aws_any_bytes() {
    let server = CannedServer::start();
    let rt = runtime();
    let p = aws(&rt, &server.url);
    run(48, (status(), bytes()), |(status, body)| {
        let canned = Canned {
            status,
            headers: Vec::new(),
            body,
        };
        server.set(canned.clone());
        let out = rt.block_on(call_all(&p));
        common_checks(&canned, &out)
    });
}

/// EC2-shaped XML with wrong values and error documents, under any status.
#[test]
fn aws_shaped_xml() {
    let server = CannedServer::start();
    let rt = runtime();
    let p = aws(&rt, &server.url);
    run(96, (status(), aws_body()), |(status, body)| {
        let canned = Canned {
            status,
            headers: vec![("Content-Type".into(), "text/xml;charset=UTF-8".into())],
            body: body.into_bytes(),
        };
        server.set(canned.clone());
        let out = rt.block_on(call_all(&p));
        common_checks(&canned, &out)
    });
}

// ---------------------------------------------------------------------------------------------
// Metadata services
// ---------------------------------------------------------------------------------------------

/// Both metadata flavours, any status below 500 and any body: every lookup answers. (The
/// clients retry a 5xx twice with 100 and 200 ms pauses, which would make this long; the
/// bodies are what is under test.)
#[test]
fn metadata_any_answer() {
    let server = CannedServer::start();
    let rt = runtime();
    let aliyun_md = MetadataClient::new(MetadataFlavor::Aliyun, &server.url).unwrap();
    let aws_md = MetadataClient::new(MetadataFlavor::Aws, &server.url).unwrap();
    let body = prop_oneof![
        bytes(),
        Just(b"00:16:3e:00:00:01/\n00:16:3e:00:00:02/".to_vec()),
        Just(b"[\"a\",\"b\"]".to_vec()),
        Just(b"[1, {}]".to_vec()),
        Just(b"10.0.0.0/33".to_vec()),
        Just(b"{\"AccessKeyId\":\"x\",\"AccessKeySecret\":\"y\",\"SecurityToken\":\"z\",\"Expiration\":\"bad\",\"Code\":\"Success\"}".to_vec()),
        "[ -~\n]{0,60}".prop_map(String::into_bytes),
    ];
    let status = status().prop_filter("no 5xx", |s| *s < 500);
    run(64, (status, body), |(status, body)| {
        server.set(Canned {
            status,
            headers: Vec::new(),
            body,
        });
        for md in [&aliyun_md, &aws_md] {
            for r in rt.block_on(metadata_all(md)) {
                if let Err(e) = r {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
        Ok(())
    });
}

/// Found by `metadata_any_answer`: a session token that cannot be sent in a header (control
/// characters, non-ASCII) was cached, so every later lookup failed with it (after two
/// retries each) until the token's TTL of six hours ran out. Now it is refused and not kept.
#[test]
fn metadata_unsendable_token_is_not_cached() {
    let server = CannedServer::start();
    let rt = runtime();
    for flavor in [MetadataFlavor::Aws, MetadataFlavor::Aliyun] {
        let md = MetadataClient::new(flavor, &server.url).unwrap();
        server.set(Canned {
            status: 200,
            headers: Vec::new(),
            body: "tok\u{1}en\u{e9}".as_bytes().to_vec(),
        });
        let t = std::time::Instant::now();
        let err = rt.block_on(md.instance_id()).unwrap_err();
        assert!(
            matches!(err, ProviderError::Malformed { .. }),
            "{flavor:?}: {err:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        server.set(Canned {
            status: 200,
            headers: Vec::new(),
            body: b"i-123".to_vec(),
        });
        assert_eq!(
            rt.block_on(md.instance_id())
                .expect("a good answer after a bad token"),
            "i-123",
            "{flavor:?}"
        );
    }
}
