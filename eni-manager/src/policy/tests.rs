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

const THREE_PODS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: allow-client, namespace: prod }
spec:
  podSelector: { matchLabels: { app: b } }
  ingress: [ { from: [ { podSelector: { matchLabels: { role: client } } } ] } ]
---
apiVersion: v1
kind: Pod
metadata: { name: b, namespace: prod, labels: { app: b } }
---
apiVersion: v1
kind: Pod
metadata: { name: c1, namespace: prod, labels: { role: client } }
---
apiVersion: v1
kind: Pod
metadata: { name: other, namespace: prod }
---
apiVersion: v1
kind: Pod
metadata: { name: c2, namespace: prod, labels: { role: client } }
"#;

#[test]
fn admit_compiles_only_the_new_pod_and_the_next_sync_updates_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), THREE_PODS).unwrap();
    let maps = FakeMaps::default();
    let mut s = SyncState::new(Box::new(maps.clone()), dir.path());
    let before = vec![
        alloc("prod", "b", 2),
        alloc("prod", "c1", 3),
        alloc("prod", "other", 4),
    ];
    let r = s.sync(before.clone(), true);
    assert_eq!((r.compiled, r.written), (3, 3), "{r:?}");
    // Nothing changed: nothing compiled, nothing written.
    let r = s.sync(before.clone(), true);
    assert_eq!((r.compiled, r.written, r.removed), (0, 0, 0), "{r:?}");
    let b = maps.0.lock().unwrap().pods[&ip(2)].clone();
    assert!(b.ingress.permits(ip(3), 6, 80));
    assert!(!b.ingress.permits(ip(5), 6, 80), "c2 has no address yet");

    // c2 is allocated: only its own entry is compiled and written before admit returns.
    maps.0.lock().unwrap().writes.clear();
    let r = s.admit(alloc("prod", "c2", 5), true);
    assert_eq!((r.compiled, r.written, r.removed), (1, 1, 0), "{r:?}");
    assert!(r.errors.is_empty());
    assert_eq!(maps.0.lock().unwrap().writes, vec![ip(5)]);
    assert!(s.has_entry(ip(5)));
    assert_eq!(maps.0.lock().unwrap().pods[&ip(5)], PodRules::open(ip(5)));
    // b does not know c2 yet...
    assert!(!maps.0.lock().unwrap().pods[&ip(2)]
        .ingress
        .permits(ip(5), 6, 80));

    // ...until the follow-up full sync (the pool's list now includes c2).
    let mut after = before;
    after.push(alloc("prod", "c2", 5));
    let r = s.sync(after.clone(), true);
    assert_eq!((r.compiled, r.written, r.removed), (4, 1, 0), "{r:?}");
    assert_eq!(maps.0.lock().unwrap().writes, vec![ip(5), ip(2)]);
    assert!(maps.0.lock().unwrap().pods[&ip(2)]
        .ingress
        .permits(ip(5), 6, 80));
    let r = s.sync(after, true);
    assert_eq!((r.compiled, r.written), (0, 0), "{r:?}");
}

#[test]
fn admit_of_a_selected_pod_is_enforced_from_its_own_entry() {
    // The new pod is the one a policy selects: its entry carries the policy at once.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), THREE_PODS).unwrap();
    let maps = FakeMaps::default();
    let mut s = SyncState::new(Box::new(maps.clone()), dir.path());
    s.sync(vec![alloc("prod", "c1", 3)], true);
    let r = s.admit(alloc("prod", "b", 2), true);
    assert_eq!((r.compiled, r.written), (1, 1), "{r:?}");
    let b = maps.0.lock().unwrap().pods[&ip(2)].clone();
    assert!(b.ingress.is_enforced());
    assert!(b.ingress.permits(ip(3), 6, 80), "c1 is already allocated");
    assert!(!b.ingress.permits(ip(4), 6, 80));
}

#[test]
fn admit_before_the_source_was_read_closes_the_pod() {
    let dir = tempfile::tempdir().unwrap();
    let maps = FakeMaps::default();
    let mut s = SyncState::new(Box::new(maps.clone()), dir.path().join("absent"));
    let r = s.admit(alloc("prod", "b", 2), true);
    assert_eq!((r.compiled, r.written), (0, 1), "{r:?}");
    let closed = maps.0.lock().unwrap().pods[&ip(2)].closed.clone();
    assert!(
        closed
            .as_deref()
            .is_some_and(|c| c.contains("has not been read yet")),
        "{closed:?}"
    );
}

#[test]
fn a_pushed_source_polices_only_allocated_pods_and_closes_those_without_a_pod_object() {
    let maps = FakeMaps::default();
    let mut s = SyncState::pushed(Box::new(maps.clone()), "the test source", Scope::Allocated);
    assert!(!s.has_objects());
    // Nothing handed over yet: closed, with the reason.
    s.sync(vec![alloc("prod", "b", 2)], true);
    let closed = maps.0.lock().unwrap().pods[&ip(2)].closed.clone();
    assert_eq!(
        closed.as_deref(),
        Some("the test source has not been synced yet")
    );

    // The objects: b, and pods of other nodes (with addresses) that are only peers.
    let mut o = objects(DENY_B);
    o.pods.extend(
        objects(
            r#"
apiVersion: v1
kind: Pod
metadata: { name: remote, namespace: prod }
status: { podIP: 10.0.1.9 }
"#,
        )
        .pods,
    );
    s.set_objects(o.clone());
    let r = s.sync(vec![alloc("prod", "b", 2), alloc("prod", "new", 3)], true);
    assert_eq!(r.compiled, 1, "only b is compiled: {r:?}");
    let l = maps.0.lock().unwrap();
    assert_eq!(l.pods[&ip(2)].ingress, DirectionRules::Enforced(vec![]));
    assert!(l.pods[&ip(2)].closed.is_none());
    assert!(
        !l.pods.contains_key(&Ipv4Addr::new(10, 0, 1, 9)),
        "no entry for a pod of another node"
    );
    let closed = l.pods[&ip(3)].closed.clone().unwrap_or_default();
    assert!(
        closed.contains("prod/new has not been received"),
        "{closed}"
    );
    drop(l);

    // Its Pod object arrives: computed for real (open: nothing selects it).
    o.pods.extend(
        objects("apiVersion: v1\nkind: Pod\nmetadata: { name: new, namespace: prod }\n").pods,
    );
    s.set_objects(o);
    let r = s.sync(vec![alloc("prod", "b", 2), alloc("prod", "new", 3)], true);
    assert_eq!((r.compiled, r.written), (2, 1), "{r:?}");
    assert_eq!(maps.0.lock().unwrap().pods[&ip(3)], PodRules::open(ip(3)));
}
