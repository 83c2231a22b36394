//! Unit tests: YAML -> desired -> reconcile against the recording fake.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use eni_bpf::fake::RecordingMaps;
use eni_bpf::{Backend, BackendState, DatapathMaps, Protocol, ServiceKey};

use super::files::{load_dir, parse_into, Loaded};
use super::*;

fn parse(text: &str) -> Loaded {
    let mut l = Loaded::default();
    parse_into(Path::new("t.yaml"), text, &mut l);
    l
}

fn key(vip: [u8; 4], port: u16, protocol: Protocol) -> ServiceKey {
    ServiceKey {
        vip: Ipv4Addr::from(vip).into(),
        port,
        protocol,
    }
}

fn be(last: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, last), port)
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  externalIPs: [192.0.2.7]
  ports:
    - { name: http, port: 80, protocol: TCP, targetPort: http-alt }
    - { name: dns, port: 53, protocol: UDP, targetPort: 5353 }
    - { name: sig, port: 99, protocol: SCTP }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: { kubernetes.io/service-name: web }
addressType: IPv4
ports:
  - { name: http, port: 8080, protocol: TCP }
  - { name: dns, port: 5353, protocol: UDP }
endpoints:
  - addresses: [10.0.0.1]
    conditions: { ready: true, serving: true, terminating: false }
  - addresses: [10.0.0.2]
    conditions: { ready: true }
  - addresses: [10.0.0.3]
    conditions: { ready: false, serving: true, terminating: true }
  - addresses: [10.0.0.4]
    conditions: { ready: false, serving: false, terminating: true }
  - addresses: [10.0.0.5]
    conditions: { ready: false }
"#;

fn want(text: &str) -> std::collections::BTreeMap<ServiceKey, eni_bpf::ServiceSpec> {
    let l = parse(text);
    assert!(l.problems.is_empty(), "{:?}", l.problems);
    desired(&l.services, &l.slices)
}

#[test]
fn desired_covers_cluster_and_external_ips_named_ports_and_states() {
    let d = want(WEB);
    let keys: Vec<_> = d.keys().copied().collect();
    assert_eq!(
        keys,
        vec![
            key([10, 96, 0, 10], 53, Protocol::Udp),
            key([10, 96, 0, 10], 80, Protocol::Tcp),
            key([192, 0, 2, 7], 53, Protocol::Udp),
            key([192, 0, 2, 7], 80, Protocol::Tcp),
        ],
        "SCTP skipped"
    );
    let http = &d[&key([10, 96, 0, 10], 80, Protocol::Tcp)];
    assert_eq!(
        http.backends,
        vec![
            Backend::active(be(1, 8080)),
            Backend::active(be(2, 8080)),
            Backend::terminating(be(3, 8080)),
        ],
        "ready -> active, serving+terminating -> terminating, others out; named port resolved"
    );
    assert_eq!(http.affinity_timeout, None);
    let dns = &d[&key([10, 96, 0, 10], 53, Protocol::Udp)];
    assert!(dns.backends.iter().all(|b| b.port == 5353));
}

#[test]
fn named_target_port_resolves_through_a_slice_port_named_like_it() {
    // A hand-written slice naming its port after the container port, not the service port.
    let text = r#"
apiVersion: v1
kind: Service
metadata: { name: api }
spec:
  clusterIP: 10.96.1.1
  ports: [{ name: web, port: 443, targetPort: https }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: api-1, labels: { kubernetes.io/service-name: api } }
addressType: IPv4
ports: [{ name: https, port: 8443 }]
endpoints: [{ addresses: [10.0.0.9] }]
"#;
    let d = want(text);
    let s = &d[&key([10, 96, 1, 1], 443, Protocol::Tcp)];
    assert_eq!(s.backends, vec![Backend::active(be(9, 8443))]);
}

#[test]
fn headless_external_name_and_other_namespaces_are_skipped() {
    let text = r#"
apiVersion: v1
kind: Service
metadata: { name: db, namespace: a }
spec: { clusterIP: None, ports: [{ port: 5432 }] }
---
apiVersion: v1
kind: Service
metadata: { name: ext, namespace: a }
spec: { type: ExternalName, externalName: example.com }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: a }
spec: { clusterIP: 10.96.2.2, ports: [{ port: 80 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: w, namespace: b, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ port: 80 }]
endpoints: [{ addresses: [10.0.0.1] }]
"#;
    let d = want(text);
    assert_eq!(d.len(), 1);
    let s = &d[&key([10, 96, 2, 2], 80, Protocol::Tcp)];
    assert!(s.backends.is_empty(), "the slice is in another namespace");
}

#[test]
fn client_ip_affinity_defaults_to_10800() {
    let text = r#"
apiVersion: v1
kind: Service
metadata: { name: a }
spec: { clusterIP: 10.96.3.1, sessionAffinity: ClientIP, ports: [{ port: 80 }] }
---
apiVersion: v1
kind: Service
metadata: { name: b }
spec:
  clusterIP: 10.96.3.2
  sessionAffinity: ClientIP
  sessionAffinityConfig: { clientIP: { timeoutSeconds: 30 } }
  ports: [{ port: 80 }]
"#;
    let d = want(text);
    assert_eq!(
        d[&key([10, 96, 3, 1], 80, Protocol::Tcp)].affinity_timeout,
        Some(Duration::from_secs(10_800))
    );
    assert_eq!(
        d[&key([10, 96, 3, 2], 80, Protocol::Tcp)].affinity_timeout,
        Some(Duration::from_secs(30))
    );
}

#[test]
fn invalid_documents_are_reported_and_the_rest_applies() {
    let text = format!(
        "{WEB}---\napiVersion: v1\nkind: Service\nmetadata: {{ name: bad }}\nspec: {{ ports: [{{ port: many }}] }}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: c }}\n---\nmetadata: {{ name: nokind }}\n"
    );
    let l = parse(&text);
    assert_eq!(l.services.len(), 1);
    assert_eq!(l.slices.len(), 1);
    let p: Vec<String> = l.problems.iter().map(ToString::to_string).collect();
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].starts_with("t.yaml document 2: invalid Service"),
        "{p:?}"
    );
    assert!(p[1].starts_with("t.yaml document 4: no kind"), "{p:?}");
}

#[test]
fn add_change_remove_through_the_fake_is_incremental() {
    let mut m = RecordingMaps::new();
    let d = want(WEB);
    let r = reconcile(&mut m, &d).unwrap();
    assert_eq!((r.upserted, r.deleted), (4, 0));
    assert!(r.errors.is_empty());
    assert_eq!(m.list().unwrap().len(), 4);

    // Idempotent: a second pass writes nothing.
    m.ops.clear();
    let r = reconcile(&mut m, &d).unwrap();
    assert_eq!((r.upserted, r.deleted, r.map_ops), (0, 0, 0));
    assert!(m.ops.is_empty());

    // Endpoint 10.0.0.2 becomes terminating: only the 4 frontends change, each by a few
    // slot writes, nothing is deleted.
    let changed = WEB.replace(
        "  - addresses: [10.0.0.2]\n    conditions: { ready: true }",
        "  - addresses: [10.0.0.2]\n    conditions: { ready: false, serving: true, terminating: true }",
    );
    m.ops.clear();
    let r = reconcile(&mut m, &want(&changed)).unwrap();
    assert_eq!((r.upserted, r.deleted), (4, 0));
    assert!(r.removed_backends.is_empty(), "terminating is not removed");
    let http = m
        .list()
        .unwrap()
        .into_iter()
        .find(|e| e.key == key([10, 96, 0, 10], 80, Protocol::Tcp))
        .unwrap();
    let states: Vec<_> = http.spec.backends.iter().map(|b| (b.ip, b.state)).collect();
    assert_eq!(
        states,
        vec![
            (Ipv4Addr::new(10, 0, 0, 1).into(), BackendState::Active),
            (Ipv4Addr::new(10, 0, 0, 2).into(), BackendState::Terminating),
            (Ipv4Addr::new(10, 0, 0, 3).into(), BackendState::Terminating),
        ]
    );
    assert!(!m
        .ops
        .iter()
        .any(|o| matches!(o, eni_bpf::MapOp::DeleteService(_))));

    // Remove the UDP port: only its two frontends are deleted, TCP untouched.
    let no_dns = changed.replace(
        "    - { name: dns, port: 53, protocol: UDP, targetPort: 5353 }\n",
        "",
    );
    m.ops.clear();
    let r = reconcile(&mut m, &want(&no_dns)).unwrap();
    assert_eq!((r.upserted, r.deleted), (0, 2));
    assert_eq!(r.removed_backends.len(), 6, "3 backends x 2 frontends");
    assert!(m.ops.iter().all(|o| matches!(
        o,
        eni_bpf::MapOp::DeleteService(_) | eni_bpf::MapOp::DeleteBackend(..)
    )));
    assert_eq!(m.list().unwrap().len(), 2);

    // Everything gone.
    let r = reconcile(&mut m, &Default::default()).unwrap();
    assert_eq!(r.deleted, 2);
    assert!(m.list().unwrap().is_empty());
    assert_eq!(m.backend_slots(), 0);
}

#[test]
fn diff_is_order_insensitive() {
    let d = want(WEB);
    let mut cur = d.clone();
    for s in cur.values_mut() {
        s.backends.reverse();
    }
    assert!(diff(&d, &cur).is_empty());
}

#[test]
fn file_source_polls_reloads_and_keeps_state_when_the_dir_vanishes() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = RecordingMaps::new();
    let mut src = FileSource::new(dir.path(), Duration::from_secs(3600));
    assert_eq!(src.poll(&mut m).unwrap().upserted, 0);
    assert!(src.poll(&mut m).is_none(), "no change, no work");

    std::fs::write(dir.path().join("web.yaml"), WEB).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    std::fs::write(dir.path().join("broken.yml"), "kind: [").unwrap();
    assert_eq!(src.poll(&mut m).unwrap().upserted, 4);
    assert_eq!(load_dir(dir.path()).unwrap().problems.len(), 1);

    std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
    assert_eq!(src.poll(&mut m).unwrap().deleted, 4);

    std::fs::write(dir.path().join("web.yaml"), WEB).unwrap();
    src.poll(&mut m).unwrap();
    let path = dir.path().to_path_buf();
    drop(dir);
    assert!(!path.exists());
    assert!(src.poll(&mut m).is_none());
    assert_eq!(
        m.list().unwrap().len(),
        4,
        "a missing dir is not 'no services'"
    );
}

/// Counts reads of the whole table and can fail upserts, around the recording fake.
#[derive(Default)]
struct CountingMaps {
    inner: RecordingMaps,
    lists: std::cell::Cell<usize>,
    fail_upserts: bool,
}

impl DatapathMaps for CountingMaps {
    fn upsert_service(
        &mut self,
        key: ServiceKey,
        spec: &eni_bpf::ServiceSpec,
    ) -> Result<eni_bpf::UpsertOutcome, eni_bpf::BpfError> {
        if self.fail_upserts {
            return Err(eni_bpf::BpfError::InvalidService {
                key,
                reason: "injected failure".into(),
            });
        }
        self.inner.upsert_service(key, spec)
    }
    fn delete_service(&mut self, key: ServiceKey) -> Result<bool, eni_bpf::BpfError> {
        self.inner.delete_service(key)
    }
    fn list(&self) -> Result<Vec<eni_bpf::ServiceEntry>, eni_bpf::BpfError> {
        self.lists.set(self.lists.get() + 1);
        self.inner.list()
    }
}

#[test]
fn reconciler_reads_the_maps_once_then_diffs_in_memory() {
    let mut m = CountingMaps::default();
    let mut rec = Reconciler::new();
    let d = want(WEB);
    let r = rec.reconcile(&mut m, &d).unwrap();
    assert_eq!((r.upserted, r.deleted), (4, 0));
    assert_eq!(m.lists.get(), 1, "the first pass adopts what the maps hold");

    // Unchanged: no read, no write.
    m.inner.ops.clear();
    let r = rec.reconcile(&mut m, &d).unwrap();
    assert_eq!((r.upserted, r.deleted, r.map_ops), (0, 0, 0));
    assert!(m.inner.ops.is_empty());
    assert_eq!(m.lists.get(), 1);

    // A change: only the difference is written, still without reading the table.
    let no_dns = WEB.replace(
        "    - { name: dns, port: 53, protocol: UDP, targetPort: 5353 }\n",
        "",
    );
    let r = rec.reconcile(&mut m, &want(&no_dns)).unwrap();
    assert_eq!((r.upserted, r.deleted), (0, 2));
    assert_eq!(m.lists.get(), 1);
    assert_eq!(m.inner.list().unwrap().len(), 2);

    // Same outcome as the one-shot reconcile that reads the maps: nothing left to do.
    let again = reconcile(&mut m, &want(&no_dns)).unwrap();
    assert_eq!((again.upserted, again.deleted), (0, 0));
    assert_eq!(m.lists.get(), 2);

    // invalidate() makes the next pass read the maps (the periodic drift repair).
    rec.invalidate();
    rec.reconcile(&mut m, &want(&no_dns)).unwrap();
    assert_eq!(m.lists.get(), 3);
}

#[test]
fn reconciler_rereads_after_a_failed_write_and_then_converges() {
    let mut m = CountingMaps::default();
    let mut rec = Reconciler::new();
    rec.reconcile(&mut m, &Default::default()).unwrap();
    assert_eq!(m.lists.get(), 1);

    m.fail_upserts = true;
    let r = rec.reconcile(&mut m, &want(WEB)).unwrap();
    assert_eq!(r.errors.len(), 4);
    assert!(m.inner.list().unwrap().is_empty());

    // What a failed write left is not guessed: the next pass reads the maps again and
    // applies what is still missing.
    m.fail_upserts = false;
    let before = m.lists.get();
    let r = rec.reconcile(&mut m, &want(WEB)).unwrap();
    assert_eq!(m.lists.get(), before + 1);
    assert_eq!((r.upserted, r.errors.len()), (4, 0));
    assert_eq!(m.inner.list().unwrap().len(), 4);
}

#[test]
fn reconcile_changes_writes_only_the_changed_frontends() {
    let mut m = CountingMaps::default();
    let mut rec = Reconciler::new();
    let d = want(WEB);
    rec.reconcile(&mut m, &d).unwrap();
    assert_eq!(m.lists.get(), 1);

    // One frontend gets a new backend list, one is no longer wanted, one is unchanged.
    let mut keys = d.keys().copied();
    let (k1, k2, k3) = (
        keys.next().unwrap(),
        keys.next().unwrap(),
        keys.next().unwrap(),
    );
    let mut spec1 = d[&k1].clone();
    spec1.backends.truncate(1);
    let changes: std::collections::BTreeMap<_, _> = [
        (k1, Some(spec1.clone())),
        (k2, None),
        (k3, Some(d[&k3].clone())),
    ]
    .into_iter()
    .collect();
    m.inner.ops.clear();
    let r = rec.reconcile_changes(&mut m, &changes).unwrap();
    assert_eq!((r.upserted, r.deleted, r.errors.len()), (1, 1, 0));
    assert_eq!(m.lists.get(), 1, "no read of the maps");
    let now: std::collections::BTreeMap<_, _> = m
        .inner
        .list()
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.spec))
        .collect();
    assert_eq!(now.len(), d.len() - 1);
    assert_eq!(now[&k1], spec1);
    assert!(!now.contains_key(&k2));

    // The in-memory table followed: a full pass with the same wanted table does nothing.
    let mut full = d.clone();
    full.insert(k1, spec1);
    full.remove(&k2);
    let r = rec.reconcile(&mut m, &full).unwrap();
    assert_eq!((r.upserted, r.deleted), (0, 0));
}

#[test]
fn service_counters_appear_on_the_manager_metrics() {
    use crate::metrics::{Metrics, MetricsSource};
    let metrics = Metrics::new(std::sync::Arc::new(cloud_providers::CallStats::new()));
    let kube: std::sync::Arc<dyn MetricsSource> =
        std::sync::Arc::new(self::kube::KubeStats::default());
    let np = external::NodePortPath::new(
        Box::new(std::collections::BTreeMap::<
            ServiceKey,
            eni_bpf::TrafficPolicy,
        >::new()),
        vec![Ipv4Addr::new(192, 168, 1, 10)],
    );
    np.stats().set_links(2);
    let before = metrics.render();
    assert!(!before.contains("eni_services_"), "{before}");
    metrics.add_source(kube);
    metrics.add_source(np.stats().clone());
    let text = metrics.render();
    for name in [
        "eni_manager_ready",
        "eni_services_kube_synced",
        "eni_services_kube_events_total",
        "eni_services_kube_lists_total",
        "eni_services_kube_watch_errors_total",
        "eni_services_reconciles_total",
        "eni_services_reconcile_failures_total",
        "eni_services_frontends",
        "eni_services_nodeport_links",
        "eni_services_nodeport_frontends",
        "eni_services_nodeport_reconciles_total",
        "eni_services_nodeport_reconcile_failures_total",
        "eni_services_nodeport_frontends_set_total",
        "eni_services_nodeport_frontends_removed_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from /metrics:\n{text}"
        );
    }
    assert!(text.contains("eni_services_nodeport_links 2\n"), "{text}");
}

#[test]
fn file_source_with_nodeport_serves_node_ports_and_follows_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = |etp: &str, node_port: u16| {
        format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{ name: web, namespace: shop }}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalTrafficPolicy: {etp}
  ports: [ {{ name: http, port: 80, targetPort: 8080, nodePort: {node_port} }} ]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{ name: web-1, namespace: shop, labels: {{ kubernetes.io/service-name: web }} }}
addressType: IPv4
ports: [ {{ name: http, port: 8080 }} ]
endpoints: [ {{ addresses: [10.0.0.1] }}, {{ addresses: [10.0.0.2] }} ]
"#
        )
    };
    std::fs::write(dir.path().join("web.yaml"), yaml("Cluster", 30080)).unwrap();
    let node = Ipv4Addr::new(192, 168, 1, 10);
    let mut src = FileSource::new(dir.path(), Duration::from_secs(3600)).with_nodeport(
        external::NodePortPath::new(
            Box::new(std::collections::BTreeMap::<
                ServiceKey,
                eni_bpf::TrafficPolicy,
            >::new()),
            vec![node],
        ),
    );
    let mut m = RecordingMaps::default();
    let r = src.poll(&mut m).unwrap();
    assert_eq!(r.upserted, 2, "the cluster IP and the NodePort");
    let listed = m.list().unwrap();
    let np = listed
        .iter()
        .find(|e| e.key == key([192, 168, 1, 10], 30080, Protocol::Tcp))
        .expect("the NodePort frontend is in the socket LB's table");
    assert_eq!(np.spec.backends.len(), 2);
    let stats = src.nodeport().unwrap().stats().clone();
    assert_eq!((stats.reconciles(), stats.frontends()), (1, 1));
    assert!(stats
        .render()
        .contains("eni_services_nodeport_frontends_set_total 1\n"));
    // A new nodePort and policy: the old frontend goes from both tables.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(dir.path().join("web.yaml"), yaml("Local", 30081)).unwrap();
    let r = src.poll(&mut m).unwrap();
    assert_eq!((r.upserted, r.deleted), (1, 1));
    let keys: Vec<ServiceKey> = m.list().unwrap().into_iter().map(|e| e.key).collect();
    assert!(keys.contains(&key([192, 168, 1, 10], 30081, Protocol::Tcp)));
    assert!(!keys.contains(&key([192, 168, 1, 10], 30080, Protocol::Tcp)));
    let text = stats.render();
    assert!(
        text.contains("eni_services_nodeport_frontends_set_total 2\n")
            && text.contains("eni_services_nodeport_frontends_removed_total 1\n"),
        "{text}"
    );
}

const DUAL: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: dual, namespace: shop }
spec:
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20, "fd00:96::20", "::ffff:10.96.0.21"]
  ipFamilies: [IPv4, IPv6]
  externalIPs: ["2001:db8::7"]
  ports:
    - { name: http, port: 80, protocol: TCP, targetPort: 8080 }
---
apiVersion: v1
kind: Service
metadata: { name: six, namespace: shop }
spec:
  clusterIP: "fd00:96::30"
  ipFamilies: [IPv6]
  ports:
    - { name: dns, port: 53, protocol: UDP, targetPort: 5353 }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: dual-v4, namespace: shop, labels: { kubernetes.io/service-name: dual } }
addressType: IPv4
ports: [{ name: http, port: 8080, protocol: TCP }]
endpoints:
  - addresses: [10.0.0.1, "fd00:1::9"]
    conditions: { ready: true }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: dual-v6, namespace: shop, labels: { kubernetes.io/service-name: dual } }
addressType: IPv6
ports: [{ name: http, port: 8080, protocol: TCP }]
endpoints:
  - addresses: ["fd00:1::1"]
    conditions: { ready: true }
  - addresses: ["fd00:1::2"]
    conditions: { ready: false, serving: true, terminating: true }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: dual-fqdn, namespace: shop, labels: { kubernetes.io/service-name: dual } }
addressType: FQDN
ports: [{ name: http, port: 8080, protocol: TCP }]
endpoints:
  - addresses: [db.example.com]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: six-a, namespace: shop, labels: { kubernetes.io/service-name: six } }
addressType: IPv6
ports: [{ name: dns, port: 5353, protocol: UDP }]
endpoints:
  - addresses: ["fd00:1::3"]
"#;

#[test]
fn dual_stack_services_get_one_frontend_per_family_with_that_familys_endpoints() {
    let t = want(DUAL);
    let k6 = |ip: &str, port, protocol| ServiceKey {
        vip: ip.parse().unwrap(),
        port,
        protocol,
    };
    let sa = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    // Exactly: the IPv4 and IPv6 cluster IPs of `dual`, the IPv6 one of `six`. The
    // IPv4-mapped cluster IP and the IPv6 external IP are not frontends.
    let keys: Vec<ServiceKey> = t.keys().copied().collect();
    assert_eq!(
        keys,
        vec![
            key([10, 96, 0, 20], 80, Protocol::Tcp),
            k6("fd00:96::20", 80, Protocol::Tcp),
            k6("fd00:96::30", 53, Protocol::Udp),
        ]
    );
    // Each family's frontend gets that family's slices only (the stray IPv6 address in the
    // IPv4 slice and the FQDN slice are ignored).
    let v4 = &t[&key([10, 96, 0, 20], 80, Protocol::Tcp)].backends;
    assert_eq!(v4, &vec![Backend::active(be(1, 8080))]);
    let v6 = &t[&k6("fd00:96::20", 80, Protocol::Tcp)].backends;
    assert_eq!(
        v6,
        &vec![
            Backend::active(sa("[fd00:1::1]:8080")),
            Backend::terminating(sa("[fd00:1::2]:8080")),
        ]
    );
    let six = &t[&k6("fd00:96::30", 53, Protocol::Udp)].backends;
    assert_eq!(six, &vec![Backend::active(sa("[fd00:1::3]:5353"))]);

    // Both families reach the maps; each family's table holds its own.
    let mut m = RecordingMaps::new();
    let r = reconcile::Reconciler::new().reconcile(&mut m, &t).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let listed: Vec<ServiceKey> = m.list().unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().any(|k| k.vip.is_ipv6()));
}
