//! Unit tests of the policy sync against recording maps (no root, no bpffs).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use eni_policy::{DirectionRules, PodRef, PodRules};

use super::files::{parse_into, Objects};
use super::*;

#[derive(Debug, Default)]
struct Log {
    pods: BTreeMap<Ipv4Addr, PodRules>,
    writes: Vec<Ipv4Addr>,
    removes: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Default)]
struct FakeMaps(Arc<Mutex<Log>>);

impl PolicyMaps for FakeMaps {
    fn write_pod(&mut self, rules: &PodRules) -> Result<(), eni_bpf::PolicyError> {
        let mut l = self.0.lock().unwrap();
        l.pods.insert(rules.ip, rules.clone());
        l.writes.push(rules.ip);
        Ok(())
    }
    fn remove_pod(&mut self, ip: Ipv4Addr) -> Result<(), eni_bpf::PolicyError> {
        let mut l = self.0.lock().unwrap();
        l.pods.remove(&ip);
        l.removes.push(ip);
        Ok(())
    }
    fn pods(&self) -> Result<BTreeSet<Ipv4Addr>, eni_bpf::PolicyError> {
        Ok(self.0.lock().unwrap().pods.keys().copied().collect())
    }
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn alloc(ns: &str, name: &str, last: u8) -> AllocatedPod {
    AllocatedPod {
        pod: Some(PodRef::new(ns, name)),
        ip: ip(last),
        container_id: format!("c-{name}"),
    }
}

fn objects(text: &str) -> Objects {
    let mut o = Objects::default();
    parse_into(std::path::Path::new("/t.yaml"), text, &mut o);
    assert!(o.problems.is_empty(), "{:?}", o.problems);
    o
}

const DENY_B: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: deny-b, namespace: prod }
spec: { podSelector: { matchLabels: { app: b } }, policyTypes: [Ingress] }
---
apiVersion: v1
kind: Pod
metadata: { name: b, namespace: prod, labels: { app: b } }
"#;

const ALLOW_CLIENT: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: allow-client, namespace: prod }
spec:
  podSelector: { matchLabels: { app: b } }
  ingress: [ { from: [ { podSelector: { matchLabels: { role: client } } } ] } ]
---
apiVersion: v1
kind: Pod
metadata: { name: client, namespace: prod, labels: { role: client } }
"#;

#[test]
fn allocated_pods_take_labels_from_their_pod_object_and_the_address_from_the_allocation() {
    let o = objects(DENY_B);
    let d = desired(&o, &[alloc("prod", "b", 2), alloc("prod", "other", 3)]);
    assert_eq!(d.pods.len(), 2);
    let b = &d.pods[&ip(2)];
    assert_eq!(b.name, "prod/b");
    assert_eq!(b.rules.ingress, DirectionRules::Enforced(Vec::new()));
    assert_eq!(b.rules.egress, DirectionRules::Open);
    // No Pod object: no labels, not selected by `app: b`.
    assert_eq!(d.pods[&ip(3)].rules, PodRules::open(ip(3)));
}

#[test]
fn a_pod_without_a_pod_object_is_selected_by_an_empty_pod_selector_only() {
    let o = objects(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: all, namespace: prod }
spec: { podSelector: {}, policyTypes: [Egress] }
"#,
    );
    let d = desired(&o, &[alloc("prod", "x", 4), alloc("dev", "y", 5)]);
    assert_eq!(
        d.pods[&ip(4)].rules.egress,
        DirectionRules::Enforced(vec![])
    );
    assert_eq!(d.pods[&ip(5)].rules, PodRules::open(ip(5)));
}

#[test]
fn pods_without_kubernetes_arguments_are_open_and_stale_pod_objects_are_ignored() {
    let o = objects(
        r#"
apiVersion: v1
kind: Pod
metadata: { name: old, namespace: prod, labels: { app: b } }
status: { podIP: 10.0.0.7 }
---
apiVersion: v1
kind: Pod
metadata: { name: remote, namespace: prod }
status: { podIP: 10.0.0.9 }
"#,
    );
    let anon = AllocatedPod {
        pod: None,
        ip: ip(7),
        container_id: "abc".into(),
    };
    let d = desired(&o, &[anon]);
    // The allocation holds .7: the Pod object "old" claiming it is stale.
    assert_eq!(d.pods[&ip(7)].name, "container abc");
    assert_eq!(d.pods[&ip(7)].rules, PodRules::open(ip(7)));
    // A pod known only from the source gets an entry too.
    assert_eq!(d.pods[&ip(9)].name, "prod/remote");
}

#[test]
fn sync_writes_only_what_changed_and_removes_what_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let maps = FakeMaps::default();
    // An entry left by an earlier run, for an address nobody holds any more.
    maps.0
        .lock()
        .unwrap()
        .pods
        .insert(ip(99), PodRules::open(ip(99)));
    std::fs::write(dir.path().join("p.yaml"), DENY_B).unwrap();
    let mut s = SyncState::new(Box::new(maps.clone()), dir.path());
    let r = s.sync(vec![alloc("prod", "b", 2)], true);
    assert_eq!((r.written, r.removed), (1, 1), "{r:?}");
    assert!(r.errors.is_empty());
    assert!(s.has_entry(ip(2)));
    assert_eq!(
        maps.0.lock().unwrap().pods[&ip(2)].ingress,
        DirectionRules::Enforced(vec![])
    );

    // Nothing changed: nothing written.
    let r = s.sync(vec![alloc("prod", "b", 2)], true);
    assert_eq!((r.written, r.removed), (0, 0));

    // A client appears (allocated here): it gets an entry, b is unchanged (deny all).
    let r = s.sync(
        vec![alloc("prod", "b", 2), alloc("prod", "client", 3)],
        true,
    );
    assert_eq!((r.written, r.removed), (1, 0));

    // The allow policy and the client's Pod object: only b's rules change.
    std::fs::write(dir.path().join("p.yaml"), format!("{DENY_B}{ALLOW_CLIENT}")).unwrap();
    // Make sure the fingerprint differs even on coarse mtimes: the size changed.
    maps.0.lock().unwrap().writes.clear();
    let r = s.sync(
        vec![alloc("prod", "b", 2), alloc("prod", "client", 3)],
        true,
    );
    assert_eq!((r.written, r.removed), (1, 0));
    assert_eq!(maps.0.lock().unwrap().writes, vec![ip(2)]);
    let b = maps.0.lock().unwrap().pods[&ip(2)].clone();
    assert!(b.ingress.permits(ip(3), 6, 80));
    assert!(!b.ingress.permits(ip(4), 6, 80));

    // The client is released: its entry goes, and b's rules lose its address.
    let r = s.sync(vec![alloc("prod", "b", 2)], true);
    assert_eq!((r.written, r.removed), (1, 1));
    assert!(!maps.0.lock().unwrap().pods.contains_key(&ip(3)));
    assert!(!s.has_entry(ip(3)));
}

#[test]
fn a_missing_directory_keeps_what_was_read_and_closes_new_pods_until_first_read() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent");
    let maps = FakeMaps::default();
    maps.0
        .lock()
        .unwrap()
        .pods
        .insert(ip(50), PodRules::open(ip(50)));
    let mut s = SyncState::new(Box::new(maps.clone()), &missing);
    let r = s.sync(vec![alloc("prod", "b", 2)], true);
    assert_eq!((r.written, r.removed), (1, 0), "{r:?}");
    let l = maps.0.lock().unwrap();
    assert!(l.pods[&ip(2)].closed.is_some(), "a new pod is closed");
    assert!(l.pods.contains_key(&ip(50)), "existing entries are kept");
    drop(l);

    // The directory appears: b is computed for real, the unknown entry goes.
    std::fs::create_dir(&missing).unwrap();
    std::fs::write(missing.join("p.yaml"), DENY_B).unwrap();
    s.check_maps = true;
    let r = s.sync(vec![alloc("prod", "b", 2)], true);
    assert_eq!((r.written, r.removed), (1, 1), "{r:?}");
    assert!(maps.0.lock().unwrap().pods[&ip(2)].closed.is_none());

    // The directory disappears: the policies read before stay in force.
    std::fs::remove_dir_all(&missing).unwrap();
    let r = s.sync(vec![alloc("prod", "b", 2), alloc("prod", "c", 3)], true);
    assert_eq!((r.written, r.removed), (1, 0), "{r:?}");
    let l = maps.0.lock().unwrap();
    assert_eq!(l.pods[&ip(2)].ingress, DirectionRules::Enforced(vec![]));
    assert_eq!(l.pods[&ip(3)], PodRules::open(ip(3)));
}

#[test]
fn a_rejected_policy_closes_the_pods_it_selects() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: bad, namespace: prod }
spec:
  podSelector: {}
  ingress: [ { from: [ { ipBlock: { cidr: 10.0.0.0/33 } } ] } ]
"#,
    )
    .unwrap();
    let maps = FakeMaps::default();
    let mut s = SyncState::new(Box::new(maps.clone()), dir.path());
    s.sync(vec![alloc("prod", "b", 2), alloc("dev", "c", 3)], true);
    let l = maps.0.lock().unwrap();
    assert!(l.pods[&ip(2)].closed.is_some());
    assert_eq!(l.pods[&ip(3)], PodRules::open(ip(3)));
}
