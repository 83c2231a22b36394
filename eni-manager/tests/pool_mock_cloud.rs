//! The manager end to end against `mock-cloud` and its hypervisor, as root: each test makes a
//! node namespace, starts the mock (which binds the node's instance to it and plays the VPC in
//! a namespace of its own), and runs the built `eni-manager` inside the node namespace, where
//! it reaches the API and metadata at 100.100.100.200 through its primary NIC exactly as on
//! ECS and where the links of attached ENIs appear. The tests talk to the manager over its
//! unix socket with `eni_rpc::Client`, and check the cloud through the mock's admin API.
//!
//! Without root every test prints `SKIPPED: needs root` and returns.

#![allow(clippy::print_stdout, reason = "the tests report their numbers")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::*;
use eni_rpc::{Client, ClientError, ErrorCode, Status};
use rand::Rng;
use serde_json::{json, Value};

/// Everything one test needs; dropped in reverse order: manager, mock, namespace.
struct Rig {
    node: NodeNs,
    mock: MockCloud,
    dir: TempDir,
}

impl Rig {
    fn new(tag: &str, spec: &WorldSpec) -> Rig {
        let node = NodeNs::create(&unique("emn"));
        let mock = MockCloud::start(&world(spec, &node.name, &unique("emv")));
        Rig {
            node,
            mock,
            dir: TempDir::new(tag),
        }
    }

    fn config(&self, subnets: &[&str]) -> Value {
        aliyun_config(self.dir.path(), subnets)
    }

    fn manager(&self, cfg: &Value) -> ManagerProc {
        ManagerProc::start_aliyun(self.dir.path(), &self.node, cfg)
    }

    fn netns(&self) -> String {
        self.node.path()
    }

    fn metrics(&self) -> String {
        let (code, body) = self.node.http_get("127.0.0.1:9410", "/metrics");
        assert_eq!(code, 200, "GET /metrics: {body}");
        body
    }
}

/// `(action, count, ok, errors)` of the mock's call counters.
fn calls(mock: &MockCloud) -> BTreeMap<String, (u64, u64, Value)> {
    let v = mock.admin("calls");
    v["actions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, a)| {
            (
                k.clone(),
                (
                    a["count"].as_u64().unwrap_or(0),
                    a["ok"].as_u64().unwrap_or(0),
                    a["errors"].clone(),
                ),
            )
        })
        .collect()
}

fn count(c: &BTreeMap<String, (u64, u64, Value)>, action: &str) -> u64 {
    c.get(action).map_or(0, |a| a.0)
}

fn errors_with(c: &BTreeMap<String, (u64, u64, Value)>, code: &str) -> u64 {
    c.values()
        .map(|(_, _, e)| e.get(code).and_then(Value::as_u64).unwrap_or(0))
        .sum()
}

/// The manager's view: ENI id -> (status, secondary IPs, allocated (ip -> container)).
fn manager_enis(s: &Status) -> BTreeMap<String, (String, BTreeSet<Ipv4Addr>)> {
    s.pool
        .enis
        .iter()
        .map(|e| {
            (
                e.eni_id.clone(),
                (e.status.clone(), e.ips.iter().map(|i| i.ip).collect()),
            )
        })
        .collect()
}

/// The mock's ENIs of this node must be exactly the manager's, attached here, each with
/// exactly the addresses the manager knows; none left detached.
fn assert_cloud_matches_manager(mock: &MockCloud, s: &Status) {
    let mine = manager_enis(s);
    let cloud = mock.node_enis();
    let cloud_ids: BTreeSet<String> = cloud
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let mine_ids: BTreeSet<String> = mine.keys().cloned().collect();
    assert_eq!(
        cloud_ids, mine_ids,
        "the cloud's ENIs of this node differ from the manager's:\ncloud {cloud:#?}\nmanager {mine:#?}"
    );
    for e in &cloud {
        let id = e["id"].as_str().unwrap();
        assert_eq!(e["status"], "InUse", "ENI {id} is not in use: {e}");
        assert_eq!(
            e["instance"], INSTANCE,
            "ENI {id} is not attached here: {e}"
        );
        assert_eq!(
            secondary_ips(e),
            mine[id].1,
            "addresses of {id}: cloud vs manager"
        );
    }
    let stray: Vec<Value> = mock.state()["enis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["tags"]["eni-net.io/cluster"] == CLUSTER && e["status"] != "InUse")
        .cloned()
        .collect();
    assert!(stray.is_empty(), "ENIs left behind: {stray:#?}");
}

fn settled(rig: &Rig, m: &ManagerProc) -> bool {
    let Ok(mut c) = Client::connect(&m.socket, Duration::from_secs(5)) else {
        return false;
    };
    let Ok(s) = c.status() else { return false };
    let metrics = rig.metrics();
    let in_flight = metric(&metrics, "eni_pool_operations_in_flight").unwrap_or(1.0);
    let cloud = rig.mock.node_enis();
    in_flight == 0.0
        && s.pool.enis.iter().all(|e| e.status == "ready")
        && cloud.iter().all(|e| e["status"] == "InUse")
        && cloud.len() == s.pool.enis.len()
}

// ---------------------------------------------------------------------------------------------

/// 100 pods at once on a cold node: every one gets its own address on an ENI attached here,
/// with the minimum of creates and attaches (each ENI created with all the addresses it should
/// hold), links configured with their own route tables, and metrics and readiness served.
#[test]
fn cold_node_serves_100_concurrent_allocations_with_few_cloud_calls() {
    require_root!();
    let spec = WorldSpec::default(); // 8 ENIs x 20 addresses: 19 secondary per ENI
    let rig = Rig::new("cold", &spec);
    let min_idle = 4u32;
    let mut cfg = rig.config(&["vsw-h1"]);
    cfg["pool"]["min_idle"] = json!(min_idle);
    let m = rig.manager(&cfg);

    let (code, _) = rig.node.http_get("127.0.0.1:9410", "/readyz");
    assert_eq!(code, 200, "/readyz once serving");
    assert!(
        wait_for(Duration::from_secs(20), || m.status().pool.idle >= min_idle),
        "the warm pool never reached min_idle: {:?}",
        m.status().pool
    );

    const PODS: usize = 100;
    let barrier = Arc::new(Barrier::new(PODS));
    let started = Instant::now();
    let threads: Vec<_> = (0..PODS)
        .map(|i| {
            let barrier = barrier.clone();
            let socket = m.socket.clone();
            let netns = rig.netns();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket, Duration::from_secs(60)).unwrap();
                barrier.wait();
                let t = Instant::now();
                let r = c.allocate(alloc_req(&format!("cold-{i}"), &netns, 30_000));
                (r, t.elapsed())
            })
        })
        .collect();
    let mut allocs = Vec::new();
    let mut slowest = Duration::ZERO;
    for t in threads {
        let (r, took) = t.join().unwrap();
        slowest = slowest.max(took);
        allocs.push(r.unwrap_or_else(|e| panic!("allocation failed: {e}")));
    }
    let wall = started.elapsed();

    let ips: BTreeSet<Ipv4Addr> = allocs.iter().map(|a| a.ip).collect();
    assert_eq!(ips.len(), PODS, "addresses handed out twice");

    // Each address is on an ENI attached to this node, per the cloud.
    let state = rig.mock.state();
    let enis: Vec<&Value> = state["enis"].as_array().unwrap().iter().collect();
    for a in &allocs {
        let eni = enis
            .iter()
            .find(|e| e["id"] == a.eni_id.as_str())
            .unwrap_or_else(|| panic!("{} is on unknown ENI {}", a.ip, a.eni_id));
        assert_eq!(eni["instance"], INSTANCE, "{a:?}");
        assert_eq!(eni["status"], "InUse", "{a:?}");
        assert!(
            secondary_ips(eni).contains(&a.ip),
            "{} not on {}",
            a.ip,
            a.eni_id
        );
        assert_eq!(eni["mac"].as_str().unwrap().to_lowercase(), a.eni_mac);
    }

    // Links: found by MAC, up, with their own route table and rule.
    let rules = rig.node.rules();
    for eni in m.status().pool.enis {
        let link = rig
            .node
            .link_by_mac(&eni.mac)
            .unwrap_or_else(|| panic!("no link with MAC {} for {}", eni.mac, eni.eni_id));
        assert_eq!(
            link["ifname"].as_str(),
            eni.host_ifname.as_deref(),
            "{eni:?}"
        );
        assert!(
            link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{link}"
        );
        let table = 1000 + eni.device_index.expect("device index");
        let routes = rig.node.routes(table);
        assert!(
            routes.iter().any(|r| r["dst"] == "default"),
            "table {table} has no default route: {routes:?}"
        );
        assert!(
            routes.iter().any(|r| r["dst"] == "192.168.0.0/20"),
            "table {table} has no subnet route: {routes:?}"
        );
        assert!(
            rules
                .iter()
                .any(
                    |r| r["table"].as_str().and_then(|t| t.parse::<u32>().ok()) == Some(table)
                        && r["priority"] == 2000
                ),
            "no rule for table {table}: {rules:?}"
        );
    }

    // Let the refill after the burst finish, then count.
    assert!(wait_for(Duration::from_secs(20), || settled(&rig, &m)));
    let c = calls(&rig.mock);
    let per_eni = spec.ips - 1;
    let min_enis = (PODS as u32 + min_idle).div_ceil(per_eni) as u64;
    let creates = count(&c, "CreateNetworkInterface");
    let attaches = count(&c, "AttachNetworkInterface");
    let assigns = count(&c, "AssignPrivateIpAddresses");
    let polls =
        count(&c, "DescribeNetworkInterfaceAttribute") + count(&c, "DescribeNetworkInterfaces");
    let other: u64 = c
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "CreateNetworkInterface"
                    | "AttachNetworkInterface"
                    | "AssignPrivateIpAddresses"
                    | "DescribeNetworkInterfaceAttribute"
                    | "DescribeNetworkInterfaces"
            )
        })
        .map(|(_, v)| v.0)
        .sum();
    println!(
        "cold node: {PODS} allocations in {wall:?} (slowest {slowest:?}); creates {creates}, attaches {attaches}, \
         assigns {assigns} (minimum ENIs {min_enis}); ENI describes/polls {polls}; other calls {other}: {c:?}"
    );
    // Mutations: one create and one attach per ENI, ENIs as few as the addresses need.
    let bound = (min_enis as f64 * 1.1).floor() as u64;
    assert!(
        creates >= min_enis && creates <= bound,
        "creates {creates}, expected {min_enis}..={bound}"
    );
    assert_eq!(attaches, creates, "one attach per created ENI");
    // Assigns only top up ENIs that already exist: at most one per ENI and round.
    assert!(
        assigns <= 2 * creates,
        "assigns {assigns} for {creates} ENIs"
    );
    // Polling: the wait for each attach (attach 300-600 ms, polled every 200 ms) plus the
    // start-up reconciliation.
    assert!(polls <= creates * 8 + 4, "describe/poll calls {polls}");
    // Start-up: node, instance type, vSwitches, and a refresh now and then.
    assert!(other <= 10, "other calls {other}: {c:?}");

    // Metrics: pool gauges and cloud call counters.
    let text = rig.metrics();
    assert_eq!(
        metric(&text, "eni_pool_allocated_addresses"),
        Some(PODS as f64),
        "{text}"
    );
    let idle = metric(&text, "eni_pool_idle_addresses").unwrap();
    assert!(idle >= f64::from(min_idle), "{text}");
    assert_eq!(
        metric(
            &text,
            r#"eni_cloud_calls_total{api="CreateNetworkInterface",outcome="ok"}"#
        ),
        Some(creates as f64),
        "{text}"
    );
    assert_eq!(metric(&text, "eni_manager_ready"), Some(1.0));
    assert_eq!(metric(&text, "eni_manager_degraded"), Some(0.0));
}

/// Pods leave: after the cool-down the surplus is given back (whole ENIs detached and deleted
/// first, then addresses unassigned) and the pool ends between its watermarks, agreeing with
/// the cloud.
#[test]
fn released_addresses_are_returned_after_the_cool_down() {
    require_root!();
    let spec = WorldSpec {
        enis: 5,
        ips: 10,
        ..Default::default()
    };
    let rig = Rig::new("cool", &spec);
    let mut cfg = rig.config(&["vsw-h1"]);
    cfg["pool"]["min_idle"] = json!(2);
    cfg["pool"]["max_idle"] = json!(5);
    cfg["pool"]["release_cooldown_s"] = json!(1);
    let m = rig.manager(&cfg);

    let netns = rig.netns();
    let threads: Vec<_> = (0..30)
        .map(|i| {
            let socket = m.socket.clone();
            let netns = netns.clone();
            std::thread::spawn(move || {
                Client::connect(&socket, Duration::from_secs(60))
                    .unwrap()
                    .allocate(alloc_req(&format!("cool-{i}"), &netns, 30_000))
                    .unwrap()
            })
        })
        .collect();
    let allocs: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(wait_for(Duration::from_secs(20), || settled(&rig, &m)));
    let before = m.status();
    let enis_before = before.pool.enis.len();
    assert!(
        enis_before >= 4,
        "30 pods on 9-address ENIs: {enis_before} ENIs"
    );

    // Keep 4 pods, all on the ENI of the first one where possible.
    let keep_eni = allocs[0].eni_id.clone();
    let mut kept: Vec<&str> = allocs
        .iter()
        .filter(|a| a.eni_id == keep_eni)
        .map(|a| a.container_id.as_str())
        .take(4)
        .collect();
    for a in &allocs {
        if kept.len() < 4 && !kept.contains(&a.container_id.as_str()) {
            kept.push(&a.container_id);
        }
    }
    let mut c = m.client();
    let released_at = Instant::now();
    for a in &allocs {
        if !kept.contains(&a.container_id.as_str()) {
            let r = c.release(release_req(&a.container_id)).unwrap();
            assert_eq!(r.map(|r| r.ip), Some(a.ip));
        }
    }
    // Idempotent.
    assert!(
        c.release(release_req(&allocs[29].container_id))
            .unwrap()
            .is_none()
            || kept.contains(&allocs[29].container_id.as_str())
    );

    let ok = wait_for(Duration::from_secs(20), || {
        let s = m.status();
        s.pool.idle >= 2 && s.pool.idle <= 5 && settled(&rig, &m)
    });
    let s = m.status();
    assert!(
        ok,
        "the pool did not shrink to its watermarks: {:?}",
        s.pool
    );
    let took = released_at.elapsed();
    assert_eq!(s.pool.allocated, 4);
    let c = calls(&rig.mock);
    println!(
        "cool-down: {enis_before} ENIs -> {}, idle {} / total {} after {took:?}; detaches {}, deletes {}, unassigns {}",
        s.pool.enis.len(),
        s.pool.idle,
        s.pool.total,
        count(&c, "DetachNetworkInterface"),
        count(&c, "DeleteNetworkInterface"),
        count(&c, "UnassignPrivateIpAddresses")
    );
    assert!(
        took >= Duration::from_secs(1),
        "released before the cool-down"
    );
    assert!(s.pool.enis.len() < enis_before, "no ENI was given back");
    assert!(count(&c, "DetachNetworkInterface") >= 1);
    assert!(count(&c, "DeleteNetworkInterface") >= 1);
    assert_cloud_matches_manager(&rig.mock, &s);
    // The kept pods still hold their addresses.
    for id in kept {
        let a = allocs.iter().find(|a| a.container_id == id).unwrap();
        let got = m
            .client()
            .check(eni_rpc::CheckRequest {
                container_id: id.to_string(),
                ifname: "eth0".into(),
            })
            .unwrap();
        assert_eq!(got.ip, a.ip);
    }
    // Links of removed ENIs are gone from the node.
    let macs: BTreeSet<String> = s.pool.enis.iter().map(|e| e.mac.clone()).collect();
    let eni_links = rig
        .node
        .links()
        .into_iter()
        .filter(|l| l["ifname"] != "lo" && l["ifname"] != "eth0")
        .filter(|l| !macs.contains(l["address"].as_str().unwrap_or_default()))
        .count();
    assert_eq!(
        eni_links,
        0,
        "links of removed ENIs left: {:?}",
        rig.node.links()
    );
}

/// Takes `ips` + 1 addresses of `vswitch` as another node would: an ENI created (untagged)
/// through the API, after the manager learned the vSwitch's free count.
fn consume(mock: &MockCloud, vswitch: &str, ips: u32) {
    use cloud_providers::aliyun::{
        AliyunConfig, AliyunCredentials, AliyunProvider, CredentialProvider,
    };
    use cloud_providers::{
        AddressCount, ApiRateLimiter, CallSettings, CloudProvider, CreateEniOptions,
        IdempotencyToken, Priority, Rate, RateLimitConfig,
    };
    let limiter = ApiRateLimiter::new(RateLimitConfig::uniform(Rate {
        per_second: 100.0,
        burst: 50,
    }))
    .unwrap();
    let p = AliyunProvider::new(
        AliyunConfig::new("cn-hangzhou").with_endpoint(&mock.url),
        std::sync::Arc::new(CredentialProvider::fixed(AliyunCredentials::new(
            KEY_ID, KEY_SECRET,
        ))),
        None,
        CallSettings::new(limiter),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(p.create_eni(&CreateEniOptions {
        subnet_id: vswitch.into(),
        security_group_ids: vec!["sg-nodes".into()],
        addresses: AddressCount::Ips(ips),
        tags: BTreeMap::new(),
        description: Some("another node".into()),
        idempotency_token: IdempotencyToken::random(),
        priority: Priority::Refill,
    }))
    .unwrap();
}

/// The first vSwitch listed (ordered selection) has 4 free addresses when the manager starts;
/// another node then takes 3. The manager's create there is refused with IpNotEnough, the
/// vSwitch is skipped from then on, and every pod is served from the second one.
#[test]
fn an_exhausted_vswitch_is_skipped_for_the_next() {
    require_root!();
    let spec = WorldSpec {
        enis: 5,
        ips: 10,
        vswitches: vec![
            ("vsw-h1", "192.168.0.0/20"),
            ("vsw-tiny", "192.168.16.0/29"),
        ],
        ..Default::default()
    };
    let rig = Rig::new("vsw", &spec);
    let mut cfg = rig.config(&["vsw-tiny", "vsw-h1"]);
    cfg["network"]["subnet_selection"] = json!("ordered");
    cfg["pool"]["min_idle"] = json!(0);
    cfg["pool"]["max_idle"] = json!(20);
    // Creates sized to demand, so the first one fits what the manager believes vsw-tiny
    // has (a whole ENI would not, and would go to vsw-h1 without asking vsw-tiny at all).
    cfg["pool"]["fill_new_enis"] = json!(false);
    let m = rig.manager(&cfg);
    consume(&rig.mock, "vsw-tiny", 2);

    // One pod: an ENI with one address fits what the manager believes vsw-tiny has.
    let netns = rig.netns();
    let first = allocate(&m, "vsw-0", &netns, 30_000).expect("allocation after the refusal");
    assert_eq!(first.subnet.to_string(), "192.168.0.0/20", "{first:?}");
    // A burst: all from vsw-h1, vsw-tiny not asked again.
    let threads: Vec<_> = (1..20)
        .map(|i| {
            let socket = m.socket.clone();
            let netns = netns.clone();
            std::thread::spawn(move || {
                Client::connect(&socket, Duration::from_secs(60))
                    .unwrap()
                    .allocate(alloc_req(&format!("vsw-{i}"), &netns, 30_000))
            })
        })
        .collect();
    let mut allocs: Vec<_> = threads
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap()
                .expect("allocation after vSwitch exhaustion")
        })
        .collect();
    allocs.push(first);
    let ips: BTreeSet<Ipv4Addr> = allocs.iter().map(|a| a.ip).collect();
    assert_eq!(ips.len(), 20);
    for a in &allocs {
        assert_eq!(a.subnet.to_string(), "192.168.0.0/20", "{a:?}");
    }
    assert!(wait_for(Duration::from_secs(20), || settled(&rig, &m)));
    let c = calls(&rig.mock);
    let exhausted = errors_with(&c, "InvalidVSwitchId.IpNotEnough");
    println!(
        "vSwitch exhaustion: IpNotEnough {exhausted}, creates {}: {c:?}",
        count(&c, "CreateNetworkInterface")
    );
    assert_eq!(exhausted, 1, "vsw-tiny refused once, then skipped: {c:?}");
    let s = m.status();
    for e in &s.pool.enis {
        assert_eq!(e.subnet_id, "vsw-h1", "{e:?}");
    }
    assert_cloud_matches_manager(&rig.mock, &s);
    let text = rig.metrics();
    assert!(
        text.contains("eni_subnet_available_addresses{subnet=\"vsw-tiny\"} 0"),
        "{text}"
    );
}

/// A node of 2 ENIs x 3 addresses holds 2 shared pods; the third is refused at once with
/// `EniLimit` saying the node is full, not after its timeout.
#[test]
fn the_eni_limit_is_a_fast_clear_error() {
    require_root!();
    let spec = WorldSpec {
        enis: 2,
        ips: 3,
        ..Default::default()
    };
    let rig = Rig::new("limit", &spec);
    let mut cfg = rig.config(&["vsw-h1"]);
    cfg["pool"]["min_idle"] = json!(1);
    cfg["pool"]["max_idle"] = json!(2);
    let m = rig.manager(&cfg);
    assert_eq!(m.status().node.max_pods, 2);
    let netns = rig.netns();
    for i in 0..2 {
        allocate(&m, &format!("limit-{i}"), &netns, 20_000).unwrap();
    }
    for i in 2..4 {
        let t = Instant::now();
        let err = allocate(&m, &format!("limit-{i}"), &netns, 20_000).unwrap_err();
        let took = t.elapsed();
        let remote = err
            .remote()
            .unwrap_or_else(|| panic!("not an answer: {err}"));
        println!("ENI limit: refused in {took:?}: {remote:?}");
        assert_eq!(remote.code, ErrorCode::EniLimit, "{remote:?}");
        assert!(remote.message.contains("node is full"), "{remote:?}");
        assert!(
            took < Duration::from_secs(3),
            "took {took:?} of a 20 s timeout"
        );
    }
    // A release makes room again.
    m.client().release(release_req("limit-0")).unwrap();
    allocate(&m, "limit-9", &netns, 20_000).unwrap();
    let text = rig.metrics();
    assert!(
        metric(
            &text,
            r#"eni_allocation_failures_total{reason="eni_limit"}"#
        ) >= Some(2.0),
        "{text}"
    );
}

#[derive(Debug, Default)]
struct Book {
    /// Allocations acknowledged and not released: key -> address.
    held: BTreeMap<String, Ipv4Addr>,
    /// Allocations whose answer was lost: re-allocated (idempotently) later.
    pending_alloc: BTreeSet<String>,
    /// Releases whose answer was lost: released again later.
    pending_release: BTreeSet<String>,
    violations: Vec<String>,
    acks: u64,
    releases: u64,
    refused: BTreeMap<String, u64>,
    lost: u64,
}

impl Book {
    fn acked(&mut self, key: &str, ip: Ipv4Addr) {
        if let Some((other, _)) = self.held.iter().find(|(k, v)| **v == ip && *k != key) {
            self.violations
                .push(format!("{ip} given to {key} while {other} holds it"));
        }
        if let Some(old) = self.held.get(key) {
            if *old != ip {
                self.violations
                    .push(format!("{key} held {old}, re-allocate answered {ip}"));
            }
        }
        self.held.insert(key.to_string(), ip);
        self.pending_alloc.remove(key);
        self.acks += 1;
    }
}

fn churn_worker(
    w: usize,
    socket: &std::path::Path,
    netns: &str,
    book: &Mutex<Book>,
    stop: &AtomicBool,
) {
    let mut rng = rand::thread_rng();
    let mut n = 0;
    let prefix = format!("w{w}-");
    while !stop.load(Ordering::Relaxed) {
        let (retry_alloc, retry_release, mine): (Option<String>, Option<String>, Vec<String>) = {
            let b = book.lock().unwrap();
            (
                b.pending_alloc
                    .iter()
                    .find(|k| k.starts_with(&prefix))
                    .cloned(),
                b.pending_release
                    .iter()
                    .find(|k| k.starts_with(&prefix))
                    .cloned(),
                b.held
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .cloned()
                    .collect(),
            )
        };
        let mut client = match Client::connect(socket, Duration::from_secs(10)) {
            Ok(c) => c,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let (key, allocating) = if let Some(k) = retry_alloc {
            (k, true)
        } else if let Some(k) = retry_release {
            (k, false)
        } else if mine.len() < 3 || (mine.len() < 5 && rng.gen_bool(0.55)) {
            n += 1;
            let k = format!("{prefix}{n}");
            book.lock().unwrap().pending_alloc.insert(k.clone());
            (k, true)
        } else {
            let k = mine[rng.gen_range(0..mine.len())].clone();
            let mut b = book.lock().unwrap();
            b.held.remove(&k);
            b.pending_release.insert(k.clone());
            (k, false)
        };
        if allocating {
            match client.allocate(alloc_req(&key, netns, 4_000)) {
                Ok(a) => book.lock().unwrap().acked(&key, a.ip),
                Err(ClientError::Remote(e)) => {
                    // A definite refusal: nothing is held under this key.
                    let mut b = book.lock().unwrap();
                    b.pending_alloc.remove(&key);
                    *b.refused.entry(e.code.as_str().to_string()).or_default() += 1;
                }
                Err(_) => {
                    book.lock().unwrap().lost += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        } else {
            match client.release(release_req(&key)) {
                Ok(_) => {
                    let mut b = book.lock().unwrap();
                    b.pending_release.remove(&key);
                    b.releases += 1;
                }
                Err(_) => {
                    book.lock().unwrap().lost += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..40)));
    }
}

/// A churn of allocations and releases under injected cloud faults (errors, dropped answers,
/// throttling), the manager SIGKILLed at random moments and restarted on the same state: in
/// the end the cloud, the manager's store and the allocations the pods hold agree exactly.
#[test]
fn sigkill_during_a_faulty_churn_loses_and_duplicates_nothing() {
    require_root!();
    let spec = WorldSpec {
        enis: 5,
        ips: 10,
        ..Default::default()
    };
    let rig = Rig::new("crash", &spec);
    let mut cfg = rig.config(&["vsw-h1"]);
    cfg["pool"]["min_idle"] = json!(2);
    cfg["pool"]["max_idle"] = json!(6);
    cfg["pool"]["release_cooldown_s"] = json!(1);
    let mut m = rig.manager(&cfg);
    let faulty = json!({"error_rate": 0.1, "drop_rate": 0.05});
    rig.mock.put_faults(&json!({"faults": {
        "default": faulty,
        "actions": {
            "AssignPrivateIpAddresses": {"per_second": 2, "error_rate": 0.1, "drop_rate": 0.1},
            "CreateNetworkInterface": {"per_second": 1, "error_rate": 0.1, "drop_rate": 0.1},
            "AttachNetworkInterface": {"error_rate": 0.1, "drop_rate": 0.1},
            "UnassignPrivateIpAddresses": {"error_rate": 0.1, "drop_rate": 0.1},
            "DetachNetworkInterface": {"error_rate": 0.1, "drop_rate": 0.1},
            "DeleteNetworkInterface": {"error_rate": 0.1, "drop_rate": 0.1}
        }
    }}));

    let book = Arc::new(Mutex::new(Book::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (socket, netns, book, stop) =
                (m.socket.clone(), rig.netns(), book.clone(), stop.clone());
            std::thread::spawn(move || churn_worker(w, &socket, &netns, &book, &stop))
        })
        .collect();
    let mut rng = rand::thread_rng();
    const KILLS: u32 = 12;
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
        m.kill9();
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..200)));
        m.relaunch();
    }
    m.wait_ready(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }

    // Faults lifted, one more restart, and every answer that was lost asked for again.
    rig.mock.put_faults(&json!({"faults": {}}));
    m.relaunch();
    m.wait_ready(Duration::from_secs(30));
    let mut c = m.client();
    let mut b = book.lock().unwrap();
    for key in std::mem::take(&mut b.pending_alloc) {
        match c.allocate(alloc_req(&key, &rig.netns(), 20_000)) {
            Ok(a) => b.acked(&key, a.ip),
            Err(e) => panic!("re-allocating {key} after the churn: {e}"),
        }
    }
    for key in std::mem::take(&mut b.pending_release) {
        c.release(release_req(&key)).unwrap();
    }
    assert!(
        wait_for(Duration::from_secs(30), || settled(&rig, &m)),
        "the manager did not settle: {:?}",
        m.status().pool
    );
    let s = m.status();
    let cl = calls(&rig.mock);
    println!(
        "crash churn: {} kills, {} starts; {} allocations acknowledged, {} releases, {} answers lost, refused {:?}; \
         now {} held, {} ENIs, idle {}; cloud calls {cl:?}",
        KILLS,
        m.starts,
        b.acks,
        b.releases,
        b.lost,
        b.refused,
        b.held.len(),
        s.pool.enis.len(),
        s.pool.idle
    );
    assert!(b.violations.is_empty(), "{:#?}", b.violations);
    // At most 6 x 5 pods + min_idle 2 on a node of 36: "full" would be a false refusal.
    assert!(!b.refused.contains_key("EniLimit"), "{:?}", b.refused);
    assert!(
        b.acks >= 20,
        "too little progress to mean anything: {} acks",
        b.acks
    );

    // The cloud and the manager agree on ENIs and addresses; nothing is left detached.
    assert_cloud_matches_manager(&rig.mock, &s);
    // The manager's allocations are exactly what the pods hold, each address once.
    let list = c.list().unwrap();
    let mut seen = BTreeSet::new();
    for a in &list {
        assert!(seen.insert(a.ip), "{} allocated twice", a.ip);
    }
    let listed: BTreeMap<String, Ipv4Addr> = list
        .iter()
        .map(|a| (a.container_id.clone(), a.ip))
        .collect();
    assert_eq!(listed, b.held, "manager allocations vs what the pods hold");
    // Every address on the node's ENIs is idle or allocated.
    let addresses: usize = s.pool.enis.iter().map(|e| e.ips.len()).sum();
    assert_eq!(
        addresses as u32,
        s.pool.idle + s.pool.allocated,
        "{:?}",
        s.pool
    );
    // Every allocated address is on an ENI of this node in the cloud.
    let cloud_ips: BTreeSet<Ipv4Addr> = rig
        .mock
        .node_enis()
        .iter()
        .flat_map(secondary_ips)
        .collect();
    for (k, ip) in &b.held {
        assert!(
            cloud_ips.contains(ip),
            "{k} holds {ip}, which the cloud does not give this node"
        );
    }
}

/// With the cloud black-holed the pool keeps serving from idle addresses; the status says why
/// it is degraded; an empty pool fails an allocation with the reason at its deadline; when the
/// cloud is back, so is the pool.
#[test]
fn a_blackholed_cloud_degrades_but_the_pool_serves() {
    require_root!();
    let rig = Rig::new("degraded", &WorldSpec::default());
    let mut cfg = rig.config(&["vsw-h1"]);
    cfg["pool"]["min_idle"] = json!(4);
    cfg["pool"]["max_idle"] = json!(8);
    cfg["cloud"]["request_timeout_ms"] = json!(1000);
    cfg["cloud"]["retry_budget_ms"] = json!(2000);
    let m = rig.manager(&cfg);
    assert!(wait_for(Duration::from_secs(20), || settled(&rig, &m)
        && m.status().pool.idle >= 4));
    let idle = m.status().pool.idle;

    rig.mock.put_faults(&json!({"faults": {"blackhole": true}}));
    let netns = rig.netns();
    for i in 0..idle {
        let t = Instant::now();
        allocate(&m, &format!("dg-{i}"), &netns, 5_000).expect("allocation from the idle pool");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "pool hit took {:?}",
            t.elapsed()
        );
    }
    let degraded_within = Instant::now();
    assert!(
        wait_for(Duration::from_secs(20), || m.status().degraded.is_some()),
        "status never said degraded"
    );
    let why = m.status().degraded.unwrap();
    println!("degraded after {:?}: {why}", degraded_within.elapsed());
    assert_eq!(metric(&rig.metrics(), "eni_manager_degraded"), Some(1.0));

    let t = Instant::now();
    let err = allocate(&m, "dg-empty", &netns, 1_000).unwrap_err();
    let took = t.elapsed();
    let remote = err
        .remote()
        .unwrap_or_else(|| panic!("not an answer: {err}"));
    println!("empty pool: refused after {took:?}: {remote:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(remote.code, ErrorCode::CloudUnavailable, "{remote:?}");

    rig.mock
        .put_faults(&json!({"faults": {"blackhole": false}}));
    let a = allocate(&m, "dg-back", &netns, 30_000).expect("allocation once the cloud is back");
    assert!(!a.eni_id.is_empty());
    assert!(
        wait_for(Duration::from_secs(20), || m.status().degraded.is_none()),
        "still degraded: {:?}",
        m.status().degraded
    );
}
