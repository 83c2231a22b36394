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
        vip: Ipv4Addr::from(vip),
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
            (Ipv4Addr::new(10, 0, 0, 1), BackendState::Active),
            (Ipv4Addr::new(10, 0, 0, 2), BackendState::Terminating),
            (Ipv4Addr::new(10, 0, 0, 3), BackendState::Terminating),
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
        eni_bpf::MapOp::DeleteService(_) | eni_bpf::MapOp::DeleteBackend(_)
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
