//! Churn with chaos, as root against `mock-cloud` (see `pool_mock_cloud.rs` for the set-up):
//! 500 pod ADDs and DELs (the manager's `allocate` and `release`, as `eni-cni` sends them)
//! while the cloud fails 10% of calls, throttles the mutating ones and drops some answers
//! after acting on them, and the manager is SIGKILLed at random moments and restarted on the
//! same state. Afterwards:
//!
//! - no address was ever handed to two pods at once;
//! - every pod that was acknowledged and not deleted is up: the manager lists it with the
//!   address it was given, `check` returns that address, and the cloud has that address on
//!   an ENI attached to this node;
//! - nothing leaked: the cloud's ENIs of this node are exactly the manager's, each with
//!   exactly the addresses the manager knows, none left detached; every address is idle or
//!   allocated.
//!
//! The run prints its seed (`CHAOS_SEED=<n>` replays the kill schedule) and its duration.
//! Without root it prints `SKIPPED: needs root` and returns.

#![allow(clippy::print_stdout, reason = "the test reports its numbers")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use eni_rpc::{CheckRequest, Client, ClientError, Status};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Answered ADDs and DELs to reach.
const OPS: u32 = 500;
/// Workers, each holding at most `PER_WORKER` pods.
const WORKERS: usize = 6;
const PER_WORKER: usize = 5;

/// What the pods (the test) believe, checked against the manager and the cloud at the end.
#[derive(Debug, Default)]
struct Book {
    /// Pods acknowledged and not deleted: key -> address.
    held: BTreeMap<String, Ipv4Addr>,
    /// ADDs whose answer was lost: asked again (idempotently) later.
    pending_add: BTreeSet<String>,
    /// DELs whose answer was lost: asked again later.
    pending_del: BTreeSet<String>,
    violations: Vec<String>,
    adds: u32,
    dels: u32,
    refused: BTreeMap<String, u32>,
    lost: u32,
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
                    .push(format!("{key} held {old}, a repeated ADD answered {ip}"));
            }
        }
        self.held.insert(key.to_string(), ip);
        self.pending_add.remove(key);
        self.adds += 1;
    }
}

fn worker(
    w: usize,
    socket: &Path,
    netns: &str,
    book: &Mutex<Book>,
    ops: &AtomicU32,
    stop: &AtomicBool,
) {
    let started = Instant::now();
    let mut rng = rand::thread_rng();
    let prefix = format!("c{w}-");
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) && ops.load(Ordering::Relaxed) < OPS {
        let (retry_add, retry_del, mine) = {
            let b = book.lock().unwrap();
            (
                b.pending_add
                    .iter()
                    .find(|k| k.starts_with(&prefix))
                    .cloned(),
                b.pending_del
                    .iter()
                    .find(|k| k.starts_with(&prefix))
                    .cloned(),
                b.held
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .cloned()
                    .collect::<Vec<_>>(),
            )
        };
        let Ok(mut client) = Client::connect(socket, Duration::from_secs(5)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        // Waves: for 6 s the pods come (ADD 4 times in 5), for 6 s they go, so the pool has to
        // grow (assigns, new ENIs) and shrink (unassigns, detaches, deletes) over and over.
        let growing = (started.elapsed().as_secs() / 6).is_multiple_of(2);
        let add = mine.is_empty()
            || (mine.len() < PER_WORKER && rng.gen_bool(if growing { 0.8 } else { 0.2 }));
        let (key, adding) = if let Some(k) = retry_add {
            (k, true)
        } else if let Some(k) = retry_del {
            (k, false)
        } else if add {
            n += 1;
            let k = format!("{prefix}{n}");
            book.lock().unwrap().pending_add.insert(k.clone());
            (k, true)
        } else {
            let k = mine[rng.gen_range(0..mine.len())].clone();
            let mut b = book.lock().unwrap();
            b.held.remove(&k);
            b.pending_del.insert(k.clone());
            (k, false)
        };
        if adding {
            match client.allocate(alloc_req(&key, netns, 5_000)) {
                Ok(a) => {
                    book.lock().unwrap().acked(&key, a.ip);
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                Err(ClientError::Remote(e)) => {
                    // A definite refusal: the pod is not up and holds nothing (the runtime
                    // would retry it as a new ADD).
                    let mut b = book.lock().unwrap();
                    b.pending_add.remove(&key);
                    *b.refused.entry(e.code.as_str().to_string()).or_default() += 1;
                    ops.fetch_add(1, Ordering::Relaxed);
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
                    b.pending_del.remove(&key);
                    b.dels += 1;
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    book.lock().unwrap().lost += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..300)));
    }
}

fn metrics(node: &NodeNs) -> String {
    let (code, body) = node.http_get("127.0.0.1:9410", "/metrics");
    assert_eq!(code, 200, "GET /metrics: {body}");
    body
}

/// No pool operation in flight, every ENI ready, the cloud's ENIs all in use and as many as
/// the manager's.
fn settled(node: &NodeNs, mock: &MockCloud, m: &ManagerProc) -> bool {
    let Ok(mut c) = Client::connect(&m.socket, Duration::from_secs(5)) else {
        return false;
    };
    let Ok(s) = c.status() else { return false };
    let in_flight = metric(&metrics(node), "eni_pool_operations_in_flight").unwrap_or(1.0);
    let cloud = mock.node_enis();
    in_flight == 0.0
        && s.pool.enis.iter().all(|e| e.status == "ready")
        && cloud.iter().all(|e| e["status"] == "InUse")
        && cloud.len() == s.pool.enis.len()
}

/// The cloud's ENIs of this node are exactly the manager's, attached here, with exactly the
/// addresses the manager knows; no ENI of the cluster is left detached.
fn assert_cloud_matches_manager(mock: &MockCloud, s: &Status) {
    let mine: BTreeMap<String, BTreeSet<Ipv4Addr>> = s
        .pool
        .enis
        .iter()
        .map(|e| (e.eni_id.clone(), e.ips.iter().map(|i| i.ip).collect()))
        .collect();
    let cloud = mock.node_enis();
    let cloud_ids: BTreeSet<String> = cloud
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let mine_ids: BTreeSet<String> = mine.keys().cloned().collect();
    assert_eq!(cloud_ids, mine_ids, "ENIs: cloud vs manager");
    for e in &cloud {
        let id = e["id"].as_str().unwrap();
        assert_eq!(e["status"], "InUse", "ENI {id}: {e}");
        assert_eq!(e["instance"], INSTANCE, "ENI {id}: {e}");
        assert_eq!(
            secondary_ips(e),
            mine[id],
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

#[test]
fn churn_of_500_with_cloud_faults_and_sigkills_leaks_and_duplicates_nothing() {
    require_root!();
    let started = Instant::now();
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("chaos seed {seed} (CHAOS_SEED={seed} replays the kill schedule)");
    let mut rng = StdRng::seed_from_u64(seed);

    let spec = WorldSpec {
        enis: 5,
        ips: 10,
        attach_ms: json!([150, 400]),
        ..Default::default()
    };
    let node = NodeNs::create(&unique("ecn"));
    let mock = MockCloud::start(&world(&spec, &node.name, &unique("ecv")));
    let dir = TempDir::new("chaos");
    let mut cfg = aliyun_config(dir.path(), &["vsw-h1"]);
    cfg["pool"]["min_idle"] = json!(2);
    cfg["pool"]["max_idle"] = json!(4);
    cfg["pool"]["release_cooldown_s"] = json!(1);
    let mut m = ManagerProc::start_aliyun(dir.path(), &node, &cfg);

    // 10% errors on every call, throttling (429) on the mutating ones, and answers dropped
    // after the cloud acted on them.
    let faulty = json!({"error_rate": 0.1, "drop_rate": 0.03});
    let mutating = json!({"per_second": 2, "error_rate": 0.1, "drop_rate": 0.05});
    mock.put_faults(&json!({"faults": {
        "throttle_status": 429,
        "default": faulty,
        "actions": {
            "AssignPrivateIpAddresses": mutating,
            "CreateNetworkInterface": {"per_second": 1, "error_rate": 0.1, "drop_rate": 0.05},
            "AttachNetworkInterface": mutating,
            "UnassignPrivateIpAddresses": mutating,
            "DetachNetworkInterface": mutating,
            "DeleteNetworkInterface": mutating
        }
    }}));

    let book = Arc::new(Mutex::new(Book::default()));
    let ops = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let netns = node.path();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (socket, netns, book, ops, stop) = (
                m.socket.clone(),
                netns.clone(),
                book.clone(),
                ops.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || worker(w, &socket, &netns, &book, &ops, &stop))
        })
        .collect();

    // Kill at random moments until the operations are done (or a minute has passed).
    let mut kills = 0;
    let churn_deadline = Instant::now() + Duration::from_secs(60);
    while ops.load(Ordering::Relaxed) < OPS && Instant::now() < churn_deadline {
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
        if ops.load(Ordering::Relaxed) >= OPS {
            break;
        }
        m.kill9();
        kills += 1;
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..150)));
        m.relaunch();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let churned = started.elapsed();
    let done = ops.load(Ordering::Relaxed);
    assert!(
        done >= OPS,
        "only {done} of {OPS} operations answered within a minute"
    );

    // Faults lifted, a last restart, and every lost answer asked for again.
    mock.put_faults(&json!({"faults": {}}));
    m.relaunch();
    m.wait_ready(Duration::from_secs(30));
    let mut c = m.client();
    let mut b = book.lock().unwrap();
    for key in std::mem::take(&mut b.pending_add) {
        match c.allocate(alloc_req(&key, &netns, 20_000)) {
            Ok(a) => b.acked(&key, a.ip),
            Err(e) => panic!("ADD of {key} again after the churn: {e}"),
        }
    }
    for key in std::mem::take(&mut b.pending_del) {
        c.release(release_req(&key)).unwrap();
        b.dels += 1;
    }
    assert!(
        wait_for(Duration::from_secs(30), || settled(&node, &mock, &m)),
        "the manager did not settle: {:?}",
        m.status().pool
    );
    let s = m.status();
    println!(
        "chaos: {done} operations ({} ADDs, {} DELs acknowledged, refused {:?}, {} answers lost) \
         with {kills} SIGKILLs ({} starts) in {churned:?}; {} pods up, {} ENIs, idle {}; \
         total {:?}",
        b.adds,
        b.dels,
        b.refused,
        b.lost,
        m.starts,
        b.held.len(),
        s.pool.enis.len(),
        s.pool.idle,
        started.elapsed()
    );
    let calls = mock.admin("calls");
    println!("cloud calls: {calls}");

    // No address given twice; the run meant something.
    assert!(b.violations.is_empty(), "{:#?}", b.violations);
    assert!(kills >= 3, "only {kills} kills: the churn was too short");
    assert!(
        b.adds >= 100,
        "only {} ADDs acknowledged: {:?}",
        b.adds,
        b.refused
    );
    // At most 6 x 5 pods + min_idle on a node of 5 x 9: "full" would be a false refusal.
    assert!(!b.refused.contains_key("EniLimit"), "{:?}", b.refused);
    let injected: u64 = calls["actions"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|a| a["errors"].as_object().cloned().unwrap_or_default())
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    assert!(
        injected >= 5,
        "too few cloud faults to mean anything: {calls}"
    );

    // Every pod that should be up is up, with its address, on this node's ENIs.
    let list = c.list().unwrap();
    let mut seen = BTreeSet::new();
    for a in &list {
        assert!(seen.insert(a.ip), "{} allocated twice", a.ip);
    }
    let listed: BTreeMap<String, Ipv4Addr> = list
        .iter()
        .map(|a| (a.container_id.clone(), a.ip))
        .collect();
    assert_eq!(
        listed, b.held,
        "the manager's allocations vs the pods that are up"
    );
    let cloud_ips: BTreeSet<Ipv4Addr> = mock.node_enis().iter().flat_map(secondary_ips).collect();
    for (key, ip) in &b.held {
        let a = c
            .check(CheckRequest {
                container_id: key.clone(),
                ifname: "eth0".into(),
            })
            .unwrap_or_else(|e| panic!("CHECK of {key}: {e}"));
        assert_eq!(a.ip, *ip, "CHECK of {key}");
        assert!(
            cloud_ips.contains(ip),
            "{key} holds {ip}, which the cloud does not give this node"
        );
    }

    // Nothing leaked: cloud and manager agree; every address is idle or allocated.
    assert_cloud_matches_manager(&mock, &s);
    let addresses: usize = s.pool.enis.iter().map(|e| e.ips.len()).sum();
    assert_eq!(
        addresses as u32,
        s.pool.idle + s.pool.allocated,
        "{:?}",
        s.pool
    );
    assert_eq!(s.pool.allocated as usize, b.held.len());
}
