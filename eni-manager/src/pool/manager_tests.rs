//! The pool actor against a fake cloud and a fake node: warm-up, coalesced demand,
//! idempotency, release, restart and adoption, exhaustion and limits. No root needed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cloud_providers::{CallStats, CloudProvider, Eni, EniStatus, ProviderError};

use super::fake_cloud::FakeCloud;
use super::manager::{AllocRequest, Manager, ManagerSettings, PoolHandle, Reason};
use super::ops::{OpContext, TAG_CLUSTER, TAG_KIND, TAG_NODE};
use super::planner::{Limits, PoolTargets};
use super::state::AllocKey;
use crate::hostports::{HostPort, HostPorts};
use crate::metrics::Metrics;
use crate::node::FakeNodeNetwork;

struct Harness {
    cloud: Arc<FakeCloud>,
    net: Arc<FakeNodeNetwork>,
    dir: tempfile::TempDir,
}

fn settings(min_idle: u32, max_idle: u32, subnets: &[&str]) -> ManagerSettings {
    ManagerSettings {
        targets: PoolTargets {
            fill_new_enis: false,
            min_idle,
            max_idle,
            min_total: 0,
            release_cooldown_ms: 0,
            prefix_mode: false,
            exclusive_warm: 0,
        },
        max_enis: None,
        batch_window: Duration::from_millis(20),
        allocate_timeout: Duration::from_secs(5),
        subnets: subnets.iter().map(|s| s.to_string()).collect(),
        most_free: false,
        exhausted_block: Duration::from_secs(600),
        gc_interval: Duration::from_secs(3600),
        gc_grace: Duration::from_secs(3600),
        orphan_grace: Duration::from_secs(3600),
    }
}

impl Harness {
    fn new(cloud: FakeCloud) -> Harness {
        Harness {
            cloud: Arc::new(cloud),
            net: Arc::new(FakeNodeNetwork::default()),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    async fn start(&self, s: ManagerSettings) -> (PoolHandle, tokio::task::JoinHandle<()>) {
        self.start_with(s, None).await
    }

    async fn start_with(
        &self,
        s: ManagerSettings,
        host_ports: Option<HostPorts>,
    ) -> (PoolHandle, tokio::task::JoinHandle<()>) {
        let provider: Arc<dyn CloudProvider> = self.cloud.clone();
        let ctx = Arc::new(OpContext {
            provider,
            net: self.net.clone(),
            node: self.cloud.node.clone(),
            cluster_id: "c1".into(),
            extra_tags: BTreeMap::new(),
            security_groups: vec!["sg-1".into()],
            mtu: 1500,
            route_table_base: 1000,
            rule_priority: 2000,
            attach_timeout: Duration::from_secs(5),
            link_timeout: Duration::from_secs(1),
        });
        let limits = Limits {
            max_enis: self.cloud.node.limits.max_enis,
            ipv4_per_eni: self.cloud.node.limits.ipv4_per_eni,
        };
        let metrics = Arc::new(Metrics::new(Arc::new(CallStats::new())));
        let (m, h) = Manager::start(s, ctx, limits, self.dir.path(), metrics)
            .await
            .expect("manager starts");
        let m = match host_ports {
            Some(hp) => m.with_host_ports(hp),
            None => m,
        };
        let task = tokio::spawn(async move {
            let _ = m.run().await;
        });
        (h, task)
    }
}

fn req(c: &str) -> AllocRequest {
    AllocRequest {
        key: AllocKey {
            container_id: c.into(),
            ifname: "eth0".into(),
        },
        netns: "/proc/self/ns/net".into(),
        pod: None,
        exclusive: false,
        timeout: Some(Duration::from_secs(3)),
        host_ports: Vec::new(),
    }
}

async fn wait_for(h: &PoolHandle, what: &str, ok: impl Fn(&super::manager::StatusView) -> bool) {
    for _ in 0..300 {
        if ok(&h.status().await.expect("status")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

async fn settle(h: &PoolHandle) {
    // Let a planning round start before looking.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..200 {
        let s = h.status().await.expect("status");
        if s.operations == 0 && s.waiting == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the pool did not settle");
}

#[tokio::test]
async fn warms_up_then_serves_from_the_pool() {
    let hs = Harness::new(FakeCloud::new(3, 10, &[("vsw-1", "10.0.0.0/24")]));
    let (h, _t) = hs.start(settings(3, 6, &["vsw-1"])).await;
    wait_for(&h, "warmed to the low watermark", |s| s.idle >= 3).await;
    settle(&h).await;
    let s = h.status().await.unwrap();
    assert_eq!(s.idle, 3, "warmed to exactly the low watermark");
    assert_eq!(hs.cloud.calls("CreateNetworkInterface"), 1);
    assert_eq!(hs.cloud.calls("AttachNetworkInterface"), 1);
    let g = h.allocate(req("c1")).await.unwrap();
    assert!(s.enis[0].eni.ips.contains(&g.alloc.ip));
    assert_eq!(g.eni.host_ifname.as_deref(), Some("eth1"));
    // Idempotent per key.
    let again = h.allocate(req("c1")).await.unwrap();
    assert_eq!(again.alloc.ip, g.alloc.ip);
    assert_eq!(h.check(req("c1").key).await.unwrap().alloc.ip, g.alloc.ip);
    let released = h.release(req("c1").key).await.unwrap();
    assert_eq!(released.map(|g| g.alloc.ip), Some(g.alloc.ip));
    assert!(
        h.release(req("c1").key).await.unwrap().is_none(),
        "release is idempotent"
    );
    assert_eq!(
        h.check(req("c1").key).await.unwrap_err().reason,
        Reason::NotFound
    );
}

#[tokio::test]
async fn concurrent_demand_is_coalesced_into_few_calls() {
    let hs = Harness::new(FakeCloud::new(4, 10, &[("vsw-1", "10.0.0.0/24")]));
    let (h, _t) = hs.start(settings(0, 30, &["vsw-1"])).await;
    settle(&h).await;
    assert_eq!(
        hs.cloud.calls("CreateNetworkInterface"),
        0,
        "min_idle 0: nothing yet"
    );
    let mut tasks = Vec::new();
    for i in 0..25 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.allocate(req(&format!("c{i}"))).await
        }));
    }
    let mut ips = BTreeSet::new();
    for t in tasks {
        ips.insert(t.await.unwrap().expect("allocated").alloc.ip);
    }
    assert_eq!(ips.len(), 25, "distinct addresses");
    // 25 addresses at 9 per ENI: 3 ENIs, each created with its addresses in the create call.
    assert_eq!(hs.cloud.calls("CreateNetworkInterface"), 3);
    assert_eq!(hs.cloud.calls("AttachNetworkInterface"), 3);
    assert!(hs.cloud.calls("AssignPrivateIpAddresses") <= 1);
}

#[tokio::test]
async fn the_node_full_fails_fast_with_the_reason() {
    let hs = Harness::new(FakeCloud::new(2, 3, &[("vsw-1", "10.0.0.0/24")]));
    let (h, _t) = hs.start(settings(0, 4, &["vsw-1"])).await;
    for i in 0..2 {
        h.allocate(req(&format!("c{i}"))).await.expect("fits");
    }
    let started = std::time::Instant::now();
    let e = h.allocate(req("c9")).await.unwrap_err();
    assert_eq!(e.reason, Reason::EniLimit, "{e}");
    assert!(e.message.contains("node is full"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(1), "fails fast");
}

#[tokio::test]
async fn an_exhausted_subnet_is_skipped() {
    let hs = Harness::new(FakeCloud::new(
        4,
        10,
        &[("vsw-small", "10.0.0.0/30"), ("vsw-big", "10.1.0.0/24")],
    ));
    let (h, _t) = hs.start(settings(0, 10, &["vsw-small", "vsw-big"])).await;
    // vsw-small has 2 hosts: a create asking for 1+3 fails; the next goes to vsw-big.
    let mut tasks = Vec::new();
    for i in 0..3 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.allocate(req(&format!("c{i}"))).await
        }));
    }
    for t in tasks {
        let g = t
            .await
            .unwrap()
            .expect("allocated despite the exhausted subnet");
        assert_eq!(g.eni.subnet_id, "vsw-big");
    }
}

#[tokio::test]
async fn releases_surplus_and_whole_enis() {
    let hs = Harness::new(FakeCloud::new(4, 10, &[("vsw-1", "10.0.0.0/24")]));
    let (h, _t) = hs.start(settings(1, 2, &["vsw-1"])).await;
    for i in 0..12 {
        h.allocate(req(&format!("c{i}"))).await.unwrap();
    }
    settle(&h).await;
    for i in 0..12 {
        h.release(req(&format!("c{i}")).key).await.unwrap();
    }
    for _ in 0..300 {
        settle(&h).await;
        let s = h.status().await.unwrap();
        if s.idle <= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = h.status().await.unwrap();
    assert!(
        (1..=2).contains(&s.idle),
        "idle {} within the watermarks",
        s.idle
    );
    assert!(
        hs.cloud.calls("DeleteNetworkInterface") >= 1,
        "an empty ENI was deleted"
    );
    let cloud_ips: usize = hs.cloud.enis().iter().map(|e| e.secondary_ips.len()).sum();
    assert_eq!(
        cloud_ips as u32, s.total,
        "the cloud holds exactly what the pool holds"
    );
}

#[tokio::test]
async fn a_restart_keeps_allocations_and_adopts_what_a_crash_left() {
    let hs = Harness::new(FakeCloud::new(4, 10, &[("vsw-1", "10.0.0.0/24")]));
    let (h, t) = hs.start(settings(2, 5, &["vsw-1"])).await;
    let a = h.allocate(req("keep")).await.unwrap();
    settle(&h).await;
    t.abort();
    drop(h);
    // A crash after the cloud created and attached an ENI but before the manager recorded it.
    let mut tags = BTreeMap::new();
    tags.insert(TAG_CLUSTER.to_string(), "c1".to_string());
    tags.insert(TAG_NODE.to_string(), "i-test".to_string());
    tags.insert(TAG_KIND.to_string(), "shared".to_string());
    hs.cloud.insert(Eni {
        id: "eni-orphan".into(),
        status: EniStatus::InUse,
        is_primary: false,
        mac: "00:16:3e:00:00:99".into(),
        subnet_id: "vsw-1".into(),
        zone: "z".into(),
        vpc_id: "vpc-1".into(),
        instance_id: Some("i-test".into()),
        device_index: Some(3),
        attachment_id: None,
        primary_ip: Some("10.0.0.200".parse().unwrap()),
        secondary_ips: vec!["10.0.0.201".parse().unwrap(), "10.0.0.202".parse().unwrap()],
        prefixes: Vec::new(),
        security_group_ids: vec![],
        tags: tags.clone(),
    });
    // And a detached one of this node (created, never attached): it must be removed.
    hs.cloud.insert(Eni {
        id: "eni-detached".into(),
        status: EniStatus::Available,
        is_primary: false,
        mac: "00:16:3e:00:00:98".into(),
        subnet_id: "vsw-1".into(),
        zone: "z".into(),
        vpc_id: "vpc-1".into(),
        instance_id: None,
        device_index: None,
        attachment_id: None,
        primary_ip: Some("10.0.0.210".parse().unwrap()),
        secondary_ips: vec![],
        prefixes: Vec::new(),
        security_group_ids: vec![],
        tags,
    });
    let (h, _t) = hs.start(settings(2, 5, &["vsw-1"])).await;
    let b = h.check(req("keep").key).await.expect("allocation survived");
    assert_eq!(a.alloc.ip, b.alloc.ip);
    let s = h.status().await.unwrap();
    let orphan = s
        .enis
        .iter()
        .find(|v| v.eni.id == "eni-orphan")
        .expect("adopted");
    assert_eq!(orphan.eni.ips.len(), 2);
    for _ in 0..100 {
        if hs.cloud.enis().iter().all(|e| e.id != "eni-detached") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        hs.cloud.enis().iter().all(|e| e.id != "eni-detached"),
        "a detached ENI of this node is deleted"
    );
    // Nothing handed out twice after the restart.
    let mut seen = BTreeSet::from([a.alloc.ip]);
    for i in 0..6 {
        let g = h.allocate(req(&format!("n{i}"))).await.unwrap();
        assert!(seen.insert(g.alloc.ip), "{} handed out twice", g.alloc.ip);
    }
}

#[tokio::test]
async fn a_failed_create_is_reported_to_waiters_and_retried() {
    let hs = Harness::new(FakeCloud::new(3, 10, &[("vsw-1", "10.0.0.0/24")]));
    hs.cloud.fail_next(
        "CreateNetworkInterface",
        ProviderError::Transient {
            api: "CreateNetworkInterface",
            code: "ServiceUnavailable".into(),
            message: "injected".into(),
            request_id: None,
        },
    );
    let (h, _t) = hs.start(settings(0, 4, &["vsw-1"])).await;
    let g = h.allocate(req("c1")).await.expect("the retry succeeds");
    assert_eq!(hs.cloud.calls("CreateNetworkInterface"), 2);
    assert!(g.eni.ips.contains(&g.alloc.ip));
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let hs = Harness::new(FakeCloud::new(3, 10, &[("vsw-1", "10.0.0.0/24")]));
    let (h, _t) = hs.start(settings(0, 4, &["vsw-1"])).await;
    let mut r = req("");
    let e = h.allocate(r.clone()).await.unwrap_err();
    assert_eq!(e.reason, Reason::BadRequest);
    r.key.container_id = "x".into();
    r.key.ifname = "a-name-much-too-long".into();
    assert_eq!(h.allocate(r).await.unwrap_err().reason, Reason::BadRequest);
    assert_eq!(h.status().await.unwrap().allocated, 0);
    assert_eq!(hs.cloud.calls("CreateNetworkInterface"), 0);
}

#[tokio::test]
async fn detached_enis_of_the_cluster_are_deleted_after_the_grace() {
    let hs = Harness::new(FakeCloud::new(3, 10, &[("vsw-1", "10.0.0.0/24")]));
    let mut tags = BTreeMap::new();
    tags.insert(TAG_CLUSTER.to_string(), "c1".to_string());
    tags.insert(TAG_NODE.to_string(), "i-gone".to_string());
    let orphan = |id: &str, tags: BTreeMap<String, String>| Eni {
        id: id.into(),
        status: EniStatus::Available,
        is_primary: false,
        mac: "00:16:3e:00:00:77".into(),
        subnet_id: "vsw-1".into(),
        zone: "z".into(),
        vpc_id: "vpc-1".into(),
        instance_id: None,
        device_index: None,
        attachment_id: None,
        primary_ip: Some("10.0.0.150".parse().unwrap()),
        secondary_ips: vec![],
        prefixes: Vec::new(),
        security_group_ids: vec![],
        tags,
    };
    hs.cloud.insert(orphan("eni-of-a-gone-node", tags));
    let mut other = BTreeMap::new();
    other.insert(TAG_CLUSTER.to_string(), "another-cluster".to_string());
    hs.cloud.insert(orphan("eni-of-another-cluster", other));
    let mut s = settings(0, 4, &["vsw-1"]);
    s.gc_interval = Duration::from_millis(50);
    s.orphan_grace = Duration::from_millis(120);
    let (_h, _t) = hs.start(s).await;
    for _ in 0..200 {
        if hs.cloud.enis().iter().all(|e| e.id != "eni-of-a-gone-node") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ids: Vec<String> = hs.cloud.enis().into_iter().map(|e| e.id).collect();
    assert!(!ids.contains(&"eni-of-a-gone-node".to_string()), "{ids:?}");
    assert!(
        ids.contains(&"eni-of-another-cluster".to_string()),
        "another cluster's ENI is never touched"
    );
}

#[tokio::test]
async fn prefix_mode_hands_out_members_of_prefixes() {
    let hs = Harness::new(FakeCloud::new(3, 10, &[("vsw-1", "10.0.0.0/24")]));
    let mut s = settings(4, 40, &["vsw-1"]);
    s.targets.prefix_mode = true;
    let (h, _t) = hs.start(s).await;
    let mut ips = BTreeSet::new();
    for i in 0..20 {
        ips.insert(h.allocate(req(&format!("c{i}"))).await.unwrap().alloc.ip);
    }
    assert_eq!(ips.len(), 20);
    let enis = hs.cloud.enis();
    let prefixes: Vec<ipnet::Ipv4Net> = enis.iter().flat_map(|e| e.prefixes.clone()).collect();
    assert!(!prefixes.is_empty(), "the pool asked for prefixes");
    assert!(
        enis.iter().all(|e| e.secondary_ips.is_empty()),
        "no single secondary addresses in prefix mode"
    );
    for ip in &ips {
        assert!(
            prefixes.iter().any(|p| p.contains(ip)),
            "{ip} is a member of an assigned prefix"
        );
    }
    // 20 pods + 4 idle need 2 prefixes (32 addresses); one create carries them.
    assert_eq!(prefixes.len(), 2, "{prefixes:?}");
    assert_eq!(hs.cloud.calls("CreateNetworkInterface"), 1);
}

#[tokio::test]
async fn an_allocation_whose_namespace_is_gone_is_released_after_the_grace() {
    let hs = Harness::new(FakeCloud::new(3, 10, &[("vsw-1", "10.0.0.0/24")]));
    let mut s = settings(1, 5, &["vsw-1"]);
    s.gc_interval = Duration::from_millis(50);
    s.gc_grace = Duration::from_millis(150);
    let (h, _t) = hs.start(s).await;
    let mut gone = req("pod-gone");
    gone.netns = "/var/run/netns/eni-manager-test-no-such-namespace".into();
    let g = h.allocate(gone.clone()).await.unwrap();
    let live = h.allocate(req("pod-live")).await.unwrap();
    wait_for(&h, "the stale allocation released", |s| {
        s.enis
            .iter()
            .flat_map(|v| v.allocations.iter())
            .all(|a| a.key != gone.key)
    })
    .await;
    assert_eq!(
        h.check(gone.key).await.unwrap_err().reason,
        Reason::NotFound
    );
    assert_eq!(
        h.check(req("pod-live").key).await.unwrap().alloc.ip,
        live.alloc.ip,
        "a pod whose namespace exists keeps its address"
    );
    let _ = g;
}

fn with_ports(c: &str, ports: &[(Option<&str>, u16, eni_rpc::PortProtocol)]) -> AllocRequest {
    let mut r = req(c);
    r.pod = Some(super::state::PodInfo {
        namespace: "shop".into(),
        name: format!("pod-{c}"),
        uid: None,
    });
    r.host_ports = ports
        .iter()
        .map(|(ip, port, protocol)| HostPort {
            host_ip: ip.map(|s| s.parse().unwrap()),
            host_port: *port,
            protocol: *protocol,
            container_port: 80,
        })
        .collect();
    r
}

#[tokio::test]
async fn host_ports_are_exclusive_published_and_survive_a_restart() {
    use eni_rpc::PortProtocol::{Tcp, Udp};
    let hs = Harness::new(FakeCloud::new(4, 10, &[("vsw-1", "10.0.0.0/24")]));
    let hp = HostPorts::new();
    let (h, t) = hs
        .start_with(settings(3, 6, &["vsw-1"]), Some(hp.clone()))
        .await;
    let a = h
        .allocate(with_ports("a", &[(None, 8080, Tcp), (None, 8080, Udp)]))
        .await
        .unwrap();
    assert_eq!(a.alloc.host_ports.len(), 2);
    // Published before the answer.
    let (g1, entries) = hp.snapshot();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.pod_ip == a.alloc.ip));
    assert_eq!(entries[0].holder, "a/eth0 (pod shop/pod-a)");
    // Idempotent ADD of the same container: same answer, no conflict with itself.
    let again = h
        .allocate(with_ports("a", &[(None, 8080, Tcp), (None, 8080, Udp)]))
        .await
        .unwrap();
    assert_eq!(again.alloc.ip, a.alloc.ip);
    assert_eq!(hp.generation(), g1, "nothing changed");
    // Another pod on the same port (any address overlaps a specific one): refused, named.
    let e = h
        .allocate(with_ports("b", &[(Some("192.168.1.10"), 8080, Tcp)]))
        .await
        .unwrap_err();
    assert_eq!(e.reason, Reason::Refused);
    assert!(
        e.message
            .contains("host port 192.168.1.10:8080/tcp is taken")
            && e.message
                .contains("a/eth0 (pod shop/pod-a) holds *:8080/tcp"),
        "{}",
        e.message
    );
    assert_eq!(
        h.check(req("b").key).await.unwrap_err().reason,
        Reason::NotFound,
        "nothing was allocated to the refused pod"
    );
    // Another port, or the same port over another protocol elsewhere, is fine.
    let b = h
        .allocate(with_ports("b", &[(None, 9090, Tcp)]))
        .await
        .unwrap();
    assert_eq!(hp.snapshot().1.len(), 3);
    // Crash and restart: the host ports come back from the store.
    t.abort();
    drop(h);
    let hp2 = HostPorts::new();
    let (h, _t) = hs
        .start_with(settings(3, 6, &["vsw-1"]), Some(hp2.clone()))
        .await;
    let entries = hp2.snapshot().1;
    let mut got: Vec<(u16, std::net::Ipv4Addr)> = entries
        .iter()
        .map(|e| (e.port.host_port, e.pod_ip))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![(8080, a.alloc.ip), (8080, a.alloc.ip), (9090, b.alloc.ip)]
    );
    assert!(
        h.allocate(with_ports("c", &[(None, 9090, Tcp)]))
            .await
            .is_err(),
        "the conflict check sees the restored host ports"
    );
    // Release: the pod's host ports go away, and the port is free again.
    h.release(req("a").key).await.unwrap();
    assert_eq!(hp2.snapshot().1.len(), 1);
    h.allocate(with_ports("c", &[(None, 8080, Tcp)]))
        .await
        .expect("the released port is free");
}
