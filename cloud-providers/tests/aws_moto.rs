//! The AWS provider against `moto_server` (started by the tests; must be on PATH:
//! `pip install 'moto[server]'`) and against scripted EC2 answers for what moto does not
//! emulate (prefix delegation, error codes, throttling). Also the IMDSv2 client against a
//! scripted metadata service.
//!
//! The EC2 endpoint is one setting, so the same life cycle runs against LocalStack:
//! `EC2_TEST_ENDPOINT=http://127.0.0.1:4566 cargo test -p cloud-providers --test aws_moto`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::InstanceType;
use cloud_providers::aws::{AwsConfig, AwsProvider};
use cloud_providers::metadata::{MetadataClient, MetadataFlavor};
use cloud_providers::{
    AddressCount, ApiRateLimiter, AssignAddressesOptions, AttachEniOptions, CallSettings,
    CallStats, CloudProvider, CreateEniOptions, DeleteEniOptions, DetachEniOptions, EniStatus,
    IdempotencyToken, ListEnisOptions, Priority, ProviderError, Rate, RateLimitConfig, RetryPolicy,
    SubnetCapacityOptions, UnassignAddressesOptions, WaitCondition, WaitEniOptions,
};
use common::{Moto, Scripted};

fn settings() -> (CallSettings, Arc<CallStats>) {
    let stats = Arc::new(CallStats::new());
    let limiter = ApiRateLimiter::new(RateLimitConfig::uniform(Rate {
        per_second: 100.0,
        burst: 50,
    }))
    .unwrap();
    let mut s = CallSettings::new(limiter);
    s.retry = RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_elapsed: Duration::from_secs(10),
        max_attempts: 10,
    };
    s.observer = stats.clone();
    (s, stats)
}

async fn provider(endpoint: &str, instance_id: Option<String>) -> (AwsProvider, Arc<CallStats>) {
    let (s, stats) = settings();
    let cfg = AwsConfig {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint.into()),
        static_credentials: Some(("testing".into(), "testing".into())),
        instance_id,
        request_timeout: Duration::from_secs(10),
    };
    (AwsProvider::new(cfg, None, s).await.unwrap(), stats)
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A VPC, a subnet, a security group and one m5.large instance, made with the SDK directly.
async fn world(endpoint: &str) -> (String, String, String) {
    let (p, _) = provider(endpoint, None).await;
    let ec2 = p.sdk_client();
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        // Large: moto draws each secondary address at random from the subnet, with
        // repeats, so in a /24 a create asking for 2 addresses gets 1 about once in a
        // hundred runs. In a /18 that is about once in ten thousand.
        .cidr_block("10.0.64.0/18")
        .availability_zone("us-east-1a")
        .send()
        .await
        .unwrap();
    let subnet_id = subnet.subnet().unwrap().subnet_id().unwrap().to_string();
    let sg = ec2
        .create_security_group()
        .group_name("nodes")
        .description("nodes")
        .vpc_id(&vpc_id)
        .send()
        .await
        .unwrap();
    let sg_id = sg.group_id().unwrap().to_string();
    let run = ec2
        .run_instances()
        .image_id("ami-03cf127a")
        .instance_type(InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .subnet_id(&subnet_id)
        .security_group_ids(&sg_id)
        .send()
        .await
        .unwrap();
    let instance_id = run.instances()[0].instance_id().unwrap().to_string();
    (instance_id, subnet_id, sg_id)
}

async fn life_cycle(endpoint: &str) {
    let (instance_id, subnet_id, sg_id) = world(endpoint).await;
    let (p, stats) = provider(endpoint, Some(instance_id.clone())).await;

    let node = p.node_info().await.unwrap();
    assert_eq!(node.instance_id, instance_id);
    assert_eq!(node.instance_type, "m5.large");
    assert_eq!(node.zone, "us-east-1a");
    assert_eq!(node.primary_subnet_id, subnet_id);
    assert!(node.primary_eni_id.starts_with("eni-"));
    assert_eq!((node.limits.max_enis, node.limits.ipv4_per_eni), (3, 10));
    assert!(node.limits.prefix_support, "m5 is a Nitro type");

    let owner = [("cluster", "c1"), ("node", instance_id.as_str())];
    let eni = p
        .create_eni(&CreateEniOptions {
            subnet_id: subnet_id.clone(),
            security_group_ids: vec![sg_id.clone()],
            addresses: AddressCount::Ips(2),
            tags: tags(&owner),
            description: Some("test".into()),
            idempotency_token: IdempotencyToken::random(),
            priority: Priority::Refill,
        })
        .await
        .unwrap();
    assert_eq!(eni.status, EniStatus::Available);
    assert_eq!(eni.secondary_ips.len(), 2);
    assert_eq!(eni.subnet_id, subnet_id);

    let mine = p
        .list_enis(&ListEnisOptions {
            tags: tags(&owner),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0].id, eni.id);
    assert_eq!(mine[0].tags, tags(&owner));

    let att = p
        .attach_eni(&AttachEniOptions {
            eni_id: eni.id.clone(),
            instance_id: instance_id.clone(),
            device_index: None,
            idempotency_token: IdempotencyToken::random(),
            priority: Priority::PodWaiting,
        })
        .await
        .unwrap();
    assert!(att.attachment_id.is_some());
    let mut wait = WaitEniOptions::new(&eni.id, WaitCondition::Attached);
    wait.poll_interval = Duration::from_millis(100);
    wait.timeout = Duration::from_secs(10);
    let attached = p.wait_for_eni(&wait).await.unwrap().unwrap();
    assert_eq!(attached.status, EniStatus::InUse);
    assert_eq!(attached.instance_id.as_deref(), Some(instance_id.as_str()));
    assert_eq!(attached.device_index, Some(1));
    assert_eq!(attached.attachment_id, att.attachment_id);

    let on_node = p
        .list_enis(&ListEnisOptions {
            instance_id: Some(instance_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(on_node.len(), 2);

    // moto answers with every address of the ENI; only the new ones come back.
    let got = p
        .assign_addresses(&AssignAddressesOptions {
            eni_id: eni.id.clone(),
            addresses: AddressCount::Ips(3),
            idempotency_token: IdempotencyToken::random(),
            priority: Priority::PodWaiting,
        })
        .await
        .unwrap();
    assert_eq!(got.ips.len(), 3, "{got:?}");
    for ip in &got.ips {
        assert!(!eni.secondary_ips.contains(ip));
    }
    p.unassign_addresses(&UnassignAddressesOptions {
        eni_id: eni.id.clone(),
        ips: got.ips[..1].to_vec(),
        prefixes: vec![],
        priority: Priority::Release,
    })
    .await
    .unwrap();
    let now = p.describe_eni(&eni.id, Priority::Refill).await.unwrap();
    assert_eq!(now.secondary_ips.len(), 4);
    assert!(!now.secondary_ips.contains(&got.ips[0]));

    let cap = p
        .subnet_capacity(&SubnetCapacityOptions {
            subnet_ids: vec![subnet_id.clone()],
            priority: Priority::Refill,
        })
        .await
        .unwrap();
    assert_eq!(cap[0].cidr.to_string(), "10.0.64.0/18");
    assert!(cap[0].available_ips > 0 && cap[0].available_ips < 16_379);

    p.detach_eni(&DetachEniOptions {
        eni_id: eni.id.clone(),
        instance_id: instance_id.clone(),
        attachment_id: None,
        priority: Priority::Release,
    })
    .await
    .unwrap();
    let mut wait = WaitEniOptions::new(&eni.id, WaitCondition::Detached);
    wait.poll_interval = Duration::from_millis(100);
    let detached = p.wait_for_eni(&wait).await.unwrap().unwrap();
    assert_eq!(detached.instance_id, None);
    // Detaching a detached ENI is a no-op.
    p.detach_eni(&DetachEniOptions {
        eni_id: eni.id.clone(),
        instance_id: instance_id.clone(),
        attachment_id: None,
        priority: Priority::Release,
    })
    .await
    .unwrap();

    p.delete_eni(&DeleteEniOptions {
        eni_id: eni.id.clone(),
        priority: Priority::Release,
    })
    .await
    .unwrap();
    let mut wait = WaitEniOptions::new(&eni.id, WaitCondition::Deleted);
    wait.poll_interval = Duration::from_millis(100);
    assert!(p.wait_for_eni(&wait).await.unwrap().is_none());
    // Deleting it again succeeds (gone is done).
    p.delete_eni(&DeleteEniOptions {
        eni_id: eni.id.clone(),
        priority: Priority::Release,
    })
    .await
    .unwrap();
    let err = p.describe_eni(&eni.id, Priority::Refill).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(stats.api("CreateNetworkInterface").ok >= 1);
}

#[tokio::test]
async fn life_cycle_on_moto() {
    match std::env::var("EC2_TEST_ENDPOINT") {
        Ok(endpoint) => life_cycle(&endpoint).await,
        Err(_) => {
            let moto = Moto::start();
            life_cycle(&moto.url).await;
        }
    }
}

const EC2_NS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

fn action(body: &str) -> String {
    body.split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or_default()
        .to_string()
}

fn describe_xml(prefixes: &[&str]) -> String {
    let items: String = prefixes
        .iter()
        .map(|p| format!("<item><ipv4Prefix>{p}</ipv4Prefix></item>"))
        .collect();
    format!(
        r#"<DescribeNetworkInterfacesResponse xmlns="{EC2_NS}"><requestId>r1</requestId><networkInterfaceSet><item>
<networkInterfaceId>eni-1</networkInterfaceId><subnetId>subnet-1</subnetId><vpcId>vpc-1</vpcId>
<availabilityZone>us-east-1a</availabilityZone><macAddress>02:00:00:00:00:01</macAddress>
<privateIpAddress>10.0.1.5</privateIpAddress><status>in-use</status>
<attachment><attachmentId>eni-attach-1</attachmentId><instanceId>i-1</instanceId><deviceIndex>1</deviceIndex><status>attached</status></attachment>
<privateIpAddressesSet><item><privateIpAddress>10.0.1.5</privateIpAddress><primary>true</primary></item></privateIpAddressesSet>
<ipv4PrefixSet>{items}</ipv4PrefixSet><groupSet/><tagSet/></item></networkInterfaceSet></DescribeNetworkInterfacesResponse>"#
    )
}

fn error_xml(code: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code>\
         <Message>scripted {code}</Message></Error></Errors><RequestID>req-{code}</RequestID></Response>"
    )
}

/// Prefix delegation against scripted EC2 answers (moto accepts prefixes but ignores them).
#[tokio::test]
async fn prefix_delegation_against_scripted_ec2() {
    common::install_crypto();
    let server = Scripted::start(|req| match action(&req.body).as_str() {
        "DescribeNetworkInterfaces" => (200, describe_xml(&["10.0.1.32/28"])),
        "AssignPrivateIpAddresses" => (
            200,
            format!(
                r#"<AssignPrivateIpAddressesResponse xmlns="{EC2_NS}"><requestId>r2</requestId>
<networkInterfaceId>eni-1</networkInterfaceId><assignedPrivateIpAddressesSet/>
<assignedIpv4PrefixSet><item><ipv4Prefix>10.0.1.48/28</ipv4Prefix></item><item><ipv4Prefix>10.0.1.64/28</ipv4Prefix></item></assignedIpv4PrefixSet>
</AssignPrivateIpAddressesResponse>"#
            ),
        ),
        "UnassignPrivateIpAddresses" => (
            200,
            format!(r#"<UnassignPrivateIpAddressesResponse xmlns="{EC2_NS}"><requestId>r3</requestId><return>true</return></UnassignPrivateIpAddressesResponse>"#),
        ),
        other => (400, error_xml(&format!("Unexpected{other}"))),
    })
    .await;
    let (p, _) = provider(&server.url, Some("i-1".into())).await;
    let eni = p.describe_eni("eni-1", Priority::Refill).await.unwrap();
    assert_eq!(eni.prefixes, vec!["10.0.1.32/28".parse().unwrap()]);
    assert_eq!(eni.attachment_id.as_deref(), Some("eni-attach-1"));
    assert_eq!(eni.status, EniStatus::InUse);
    let got = p
        .assign_addresses(&AssignAddressesOptions {
            eni_id: "eni-1".into(),
            addresses: AddressCount::Prefixes(2),
            idempotency_token: IdempotencyToken::random(),
            priority: Priority::PodWaiting,
        })
        .await
        .unwrap();
    assert_eq!(
        got.prefixes,
        vec![
            "10.0.1.48/28".parse().unwrap(),
            "10.0.1.64/28".parse().unwrap()
        ]
    );
    assert!(got.ips.is_empty());
    p.unassign_addresses(&UnassignAddressesOptions {
        eni_id: "eni-1".into(),
        ips: vec![],
        prefixes: got.prefixes.clone(),
        priority: Priority::Release,
    })
    .await
    .unwrap();
    let recorded = server.recorded();
    let assign = recorded
        .iter()
        .find(|r| action(&r.body) == "AssignPrivateIpAddresses")
        .unwrap();
    assert!(assign.body.contains("Ipv4PrefixCount=2"), "{}", assign.body);
    assert!(!assign.body.contains("SecondaryPrivateIpAddressCount"));
    let unassign = recorded
        .iter()
        .find(|r| action(&r.body) == "UnassignPrivateIpAddresses")
        .unwrap();
    assert!(
        unassign.body.contains("Ipv4Prefix.1=10.0.1.48%2F28"),
        "{}",
        unassign.body
    );
    assert!(assign
        .header("authorization")
        .unwrap_or_default()
        .starts_with("AWS4-HMAC-SHA256 Credential=testing/"));
}

/// EC2 error codes arrive as typed errors; throttling is retried.
#[tokio::test]
async fn ec2_errors_against_scripted_ec2() {
    common::install_crypto();
    let throttles = Arc::new(AtomicU32::new(0));
    let t = throttles.clone();
    let server = Scripted::start(move |req| match action(&req.body).as_str() {
        "DescribeNetworkInterfaces" => {
            // Throttled twice, then answered.
            if t.fetch_add(1, Ordering::SeqCst) < 2 {
                (503, error_xml("RequestLimitExceeded"))
            } else {
                (200, describe_xml(&[]))
            }
        }
        "CreateNetworkInterface" => (400, error_xml("InsufficientFreeAddressesInSubnet")),
        "AttachNetworkInterface" => (400, error_xml("AttachmentLimitExceeded")),
        "DeleteNetworkInterface" => (400, error_xml("InvalidNetworkInterfaceID.NotFound")),
        "AssignPrivateIpAddresses" => (400, error_xml("PrivateIpAddressLimitExceeded")),
        _ => (500, error_xml("InternalError")),
    })
    .await;
    let (p, stats) = provider(&server.url, Some("i-1".into())).await;
    let eni = p.describe_eni("eni-1", Priority::Refill).await.unwrap();
    assert_eq!(eni.id, "eni-1");
    let s = stats.api("DescribeNetworkInterfaces");
    assert_eq!((s.calls, s.throttled), (3, 2));

    let err = p
        .create_eni(&CreateEniOptions {
            subnet_id: "subnet-1".into(),
            security_group_ids: vec!["sg-1".into()],
            addresses: AddressCount::Ips(5),
            tags: BTreeMap::new(),
            description: None,
            idempotency_token: IdempotencyToken::new("tok-1").unwrap(),
            priority: Priority::Refill,
        })
        .await
        .unwrap_err();
    match &err {
        ProviderError::IpExhausted {
            vswitch,
            request_id,
            ..
        } => {
            assert_eq!(vswitch.as_deref(), Some("subnet-1"));
            // The SDK reads EC2 request ids from the x-amzn-requestid header.
            assert_eq!(request_id.as_deref(), Some("req-scripted"));
        }
        other => panic!("{other:?}"),
    }
    let err = p
        .attach_eni(&AttachEniOptions {
            eni_id: "eni-1".into(),
            instance_id: "i-1".into(),
            device_index: Some(2),
            idempotency_token: IdempotencyToken::random(),
            priority: Priority::Refill,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::EniLimit { .. }), "{err:?}");
    let err = p
        .assign_addresses(&AssignAddressesOptions {
            eni_id: "eni-1".into(),
            addresses: AddressCount::Ips(20),
            idempotency_token: IdempotencyToken::random(),
            priority: Priority::Refill,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::IpLimit { .. }), "{err:?}");
    // Deleting a gone ENI is success.
    p.delete_eni(&DeleteEniOptions {
        eni_id: "eni-gone".into(),
        priority: Priority::Release,
    })
    .await
    .unwrap();
    // 5xx is retried, then reported clearly.
    let err = p
        .subnet_capacity(&SubnetCapacityOptions {
            subnet_ids: vec!["subnet-1".into()],
            priority: Priority::Refill,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::RetriesExhausted { .. }),
        "{err:?}"
    );
    assert!(matches!(err.root(), ProviderError::Transient { .. }));
    // The create carried the idempotency token.
    assert!(server.recorded().iter().any(
        |r| action(&r.body) == "CreateNetworkInterface" && r.body.contains("ClientToken=tok-1")
    ));
}

/// IMDSv2: token fetched once, sent on every read, refreshed after a 401.
#[tokio::test]
async fn imdsv2_against_scripted_service() {
    common::install_crypto();
    let generation = Arc::new(AtomicU32::new(0));
    let valid = Arc::new(AtomicU32::new(1));
    let (g, v) = (generation.clone(), valid.clone());
    let mac = "02:00:00:00:00:aa";
    let server = Scripted::start(move |req| {
        if req.method == "PUT" && req.path == "/latest/api/token" {
            if req.header("X-aws-ec2-metadata-token-ttl-seconds").is_none() {
                return (400, String::new());
            }
            let n = g.fetch_add(1, Ordering::SeqCst) + 1;
            return (200, format!("token-{n}"));
        }
        let want = format!("token-{}", v.load(Ordering::SeqCst));
        if req.header("X-aws-ec2-metadata-token") != Some(want.as_str()) {
            return (401, String::new());
        }
        let p = req.path.trim_start_matches("/latest/meta-data/");
        let iface = format!("network/interfaces/macs/{mac}/");
        let answer = match p {
            "instance-id" => "i-0abc".to_string(),
            "instance-type" => "m5.large".to_string(),
            "placement/availability-zone" => "us-east-1a".to_string(),
            "placement/region" => "us-east-1".to_string(),
            "mac" => mac.to_string(),
            "network/interfaces/macs/" => format!("02:00:00:00:00:01/\n{mac}/"),
            _ => match p.strip_prefix(iface.as_str()) {
                Some("interface-id") => "eni-0def".to_string(),
                Some("device-number") => "1".to_string(),
                Some("local-ipv4s") => "10.0.1.20\n10.0.1.21\n10.0.1.22".to_string(),
                Some("ipv4-prefix") => "10.0.1.48/28".to_string(),
                Some("subnet-id") => "subnet-1".to_string(),
                Some("subnet-ipv4-cidr-block") => "10.0.1.0/24".to_string(),
                Some("security-group-ids") => "sg-1\nsg-2".to_string(),
                Some("vpc-ipv4-cidr-blocks") => "10.0.0.0/16\n100.64.0.0/16".to_string(),
                _ => return (404, String::new()),
            },
        };
        (200, answer)
    })
    .await;
    let md = MetadataClient::new(MetadataFlavor::Aws, &server.url).unwrap();
    assert_eq!(md.instance_id().await.unwrap(), "i-0abc");
    assert_eq!(md.instance_type().await.unwrap(), "m5.large");
    assert_eq!(md.zone().await.unwrap(), "us-east-1a");
    assert_eq!(md.region().await.unwrap(), "us-east-1");
    assert_eq!(md.primary_mac().await.unwrap(), mac);
    assert_eq!(md.macs().await.unwrap(), vec!["02:00:00:00:00:01", mac]);
    let iface = md.interface(mac).await.unwrap();
    assert_eq!(iface.eni_id, "eni-0def");
    assert_eq!(iface.device_number, Some(1));
    assert_eq!(iface.primary_ip.to_string(), "10.0.1.20");
    assert_eq!(iface.ips.len(), 3);
    let vpc: Vec<String> = md
        .vpc_cidrs()
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(vpc, ["10.0.0.0/16", "100.64.0.0/16"]);
    assert_eq!(iface.prefixes, vec!["10.0.1.48/28".parse().unwrap()]);
    assert_eq!(iface.gateway.to_string(), "10.0.1.1");
    assert_eq!(iface.security_group_ids, vec!["sg-1", "sg-2"]);
    // One token for all of that.
    assert_eq!(generation.load(Ordering::SeqCst), 1);

    // The service forgets the token: the client gets a new one and goes on.
    valid.store(2, Ordering::SeqCst);
    assert_eq!(md.instance_id().await.unwrap(), "i-0abc");
    assert_eq!(generation.load(Ordering::SeqCst), 2);
    let err = md.get("meta-data/nothing-here").await.unwrap_err();
    assert!(err.is_not_found());

    // IMDSv2 without a token service fails clearly (no silent IMDSv1 fallback).
    let no_tokens = Scripted::start(|_| (403, String::new())).await;
    let md = MetadataClient::new(MetadataFlavor::Aws, &no_tokens.url).unwrap();
    let err = md.instance_id().await.unwrap_err();
    assert!(matches!(err, ProviderError::Auth { .. }), "{err:?}");
}
