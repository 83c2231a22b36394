//! The NetworkPolicy Kubernetes source against a scripted API server: a small HTTP server
//! in the test answers the watchers' list and watch requests for NetworkPolicies, Pods and
//! Namespaces with what each step hands it (lists with a resourceVersion, streamed
//! ADDED/MODIFIED/DELETED events, an ERROR event with code 410 the way the API server
//! expires a watch). The objects the source hands over feed a `SyncState` over recording
//! maps, exactly as in the daemon, and the test checks the rules the maps hold for a pod
//! allocated on this node after each step. No root, no cluster.

#[path = "common/apiserver.rs"]
mod apiserver;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eni_manager::kubewatch;
use eni_manager::policy::kube::{self as psrc, KubeOptions, PolicyKubeStats};
use eni_manager::policy::{AllocatedPod, PolicyMaps, Scope, SyncState};
use eni_policy::{PodRef, PodRules};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use apiserver::{ApiServer, WAIT};

const POLICIES: usize = 0;
const PODS: usize = 1;
const NAMESPACES: usize = 2;

/// The collections the watcher reads, in kind order.
const PATHS: &[&str] = &[
    "/apis/networking.k8s.io/v1/networkpolicies",
    "/api/v1/pods",
    "/api/v1/namespaces",
];

/// Recording maps shared between the sync (inside the source's callback) and the test.
#[derive(Debug, Clone, Default)]
struct SharedMaps(Arc<Mutex<BTreeMap<Ipv4Addr, PodRules>>>);

impl SharedMaps {
    fn get(&self, ip: Ipv4Addr) -> Option<PodRules> {
        self.0.lock().unwrap().get(&ip).cloned()
    }
}

impl PolicyMaps for SharedMaps {
    fn write_pod(&mut self, rules: &PodRules) -> Result<(), eni_bpf::PolicyError> {
        self.0.lock().unwrap().insert(rules.ip, rules.clone());
        Ok(())
    }
    fn remove_pod(&mut self, ip: Ipv4Addr) -> Result<(), eni_bpf::PolicyError> {
        self.0.lock().unwrap().remove(&ip);
        Ok(())
    }
    fn pods(&self) -> Result<BTreeSet<Ipv4Addr>, eni_bpf::PolicyError> {
        Ok(self.0.lock().unwrap().keys().copied().collect())
    }
}

fn list(kind: &str, api_version: &str, rv: &str, items: &[Value]) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|i| {
            let mut i = i.clone();
            if let Some(o) = i.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            i
        })
        .collect();
    json!({"kind": kind, "apiVersion": api_version,
           "metadata": {"resourceVersion": rv}, "items": items})
}

fn event(ty: &str, mut object: Value, rv: &str) -> Value {
    object["metadata"]["resourceVersion"] = json!(rv);
    json!({"type": ty, "object": object})
}

/// The ERROR event the API server sends when a watch's resourceVersion is too old.
fn gone() -> Value {
    json!({"type": "ERROR",
           "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Failure", "message": "too old resource version: 30 (45)",
                      "reason": "Expired", "code": 410}})
}

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn pod(ns: &str, name: &str, labels: &Value, ip: Option<&str>, phase: &str) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                     "resourceVersion": "1", "labels": labels},
        "spec": {"nodeName": "node-a",
                 "containers": [{"name": "app", "image": "x",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": phase}
    });
    if let Some(ip) = ip {
        p["status"]["podIP"] = json!(ip);
        p["status"]["podIPs"] = json!([{"ip": ip}]);
    }
    p
}

fn namespace(name: &str, labels: Value) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/metadata.name"] = json!(name);
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "resourceVersion": "1", "labels": labels},
           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

/// Ingress to `app: b` from pods `role: client` of its namespace, or from every pod of a
/// namespace labelled `team: a`, on the named port `http`.
fn allow_b() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "allow-b", "namespace": "prod", "resourceVersion": "1"},
           "spec": {"podSelector": {"matchLabels": {"app": "b"}},
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}},
                                          {"namespaceSelector": {"matchLabels": {"team": "a"}}}],
                                 "ports": [{"protocol": "TCP", "port": "http"}]}]}})
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

const B: u8 = 2;
const CLIENT: u8 = 3;
const STRANGER: u8 = 9;

/// Waits until the entry of b satisfies `ok`.
async fn wait_b(maps: &SharedMaps, step: &str, ok: impl Fn(&PodRules) -> bool) {
    let start = Instant::now();
    loop {
        let have = maps.get(ip(B));
        if have.as_ref().is_some_and(&ok) {
            return;
        }
        if start.elapsed() > WAIT {
            panic!("{step}: b's entry never got there; it is {have:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn open(r: &PodRules) -> bool {
    r.closed.is_none() && !r.ingress.is_enforced() && !r.egress.is_enforced()
}

fn admits(r: &PodRules, peer: u8) -> bool {
    r.closed.is_none() && r.ingress.is_enforced() && r.ingress.permits(ip(peer), 6, 8080)
}

fn isolated_without(r: &PodRules, peer: u8) -> bool {
    r.closed.is_none() && r.ingress.is_enforced() && !r.ingress.permits(ip(peer), 6, 8080)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_then_watches_policies_pods_and_namespaces_and_relists_after_410_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = ApiServer::start(PATHS).await;
    let kubeconfig = api.kubeconfig(dir.path());

    // This node allocated b and the client; the stranger lives on another node.
    let allocated = vec![
        AllocatedPod {
            pod: Some(PodRef::new("prod", "b")),
            ip: ip(B),
            container_id: "c-b".into(),
        },
        AllocatedPod {
            pod: Some(PodRef::new("prod", "client")),
            ip: ip(CLIENT),
            container_id: "c-client".into(),
        },
    ];
    let maps = SharedMaps::default();
    let state = Arc::new(Mutex::new(SyncState::pushed(
        Box::new(maps.clone()),
        "the Kubernetes source",
        Scope::Allocated,
    )));
    // Before the source runs: the pods are closed (their policy cannot be computed).
    state.lock().unwrap().sync(allocated.clone(), true);
    let closed = maps.get(ip(B)).and_then(|r| r.closed).unwrap_or_default();
    assert!(closed.contains("has not been synced yet"), "{closed}");

    let client = kubewatch::client("policy", Some(&kubeconfig))
        .await
        .expect("client");
    let stats = Arc::new(PolicyKubeStats::default());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = {
        let state = state.clone();
        let stats = stats.clone();
        let allocated = allocated.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.await;
            };
            let opts = KubeOptions {
                debounce: Duration::from_millis(20),
            };
            psrc::run(client, &opts, &stats, stop, |objects| {
                let mut s = state.lock().unwrap();
                s.set_objects(objects);
                let r = s.sync(allocated.clone(), false);
                assert!(r.errors.is_empty(), "{r:?}");
            })
            .await
        })
    };

    // 1. Policies and pods are listed; namespaces are held back: nothing is handed over.
    api.list(POLICIES)
        .await
        .1
        .send(list("NetworkPolicyList", "networking.k8s.io/v1", "10", &[]))
        .unwrap();
    let (_, pol_events) = api.watch(POLICIES).await;
    api.list(PODS)
        .await
        .1
        .send(list(
            "PodList",
            "v1",
            "20",
            &[
                pod(
                    "prod",
                    "b",
                    &json!({"app": "b"}),
                    Some("10.0.0.2"),
                    "Running",
                ),
                pod(
                    "prod",
                    "client",
                    &json!({"role": "client"}),
                    None,
                    "Pending",
                ),
                pod(
                    "prod",
                    "stranger",
                    &json!({"role": "client"}),
                    Some("10.0.0.9"),
                    "Running",
                ),
                // A finished pod holding b's address: left out, not a second claimant.
                pod("prod", "done", &json!({}), Some("10.0.0.2"), "Succeeded"),
            ],
        ))
        .unwrap();
    let (q, pod_events) = api.watch(PODS).await;
    assert_eq!(param(&q, "resourceVersion"), Some("20"), "{q}");
    let (_, ns_reply) = api.list(NAMESPACES).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stats.handovers(), 0, "nothing before all three lists");
    assert!(!stats.synced());
    assert!(
        maps.get(ip(B)).and_then(|r| r.closed).is_some(),
        "b still closed"
    );

    // 2. The namespaces list completes: b is computed (no policy yet: open).
    ns_reply
        .send(list(
            "NamespaceList",
            "v1",
            "30",
            &[namespace("prod", json!({}))],
        ))
        .unwrap();
    let (_, ns_events) = api.watch(NAMESPACES).await;
    wait_b(&maps, "after the lists", open).await;
    assert!(stats.synced());
    assert!(
        maps.get(ip(STRANGER)).is_none(),
        "no entry for a pod of another node"
    );

    // 3. A policy is added: b admits the client (a pod allocated here, labelled through
    //    its Pod object) and the stranger (a peer known only from the watch), nobody else.
    pol_events.send(event("ADDED", allow_b(), "11")).unwrap();
    wait_b(&maps, "policy added", |r| {
        admits(r, CLIENT) && admits(r, STRANGER) && isolated_without(r, 7)
    })
    .await;
    assert_eq!(
        maps.get(ip(B)).unwrap().policies,
        vec!["prod/allow-b".to_string()]
    );

    // 4. The client's labels change: it is no longer a client.
    pod_events
        .send(event(
            "MODIFIED",
            pod("prod", "client", &json!({"role": "other"}), None, "Running"),
            "21",
        ))
        .unwrap();
    wait_b(&maps, "pod label change", |r| {
        isolated_without(r, CLIENT) && admits(r, STRANGER)
    })
    .await;

    // 5. The namespace gets `team: a`: every pod of prod is let in again.
    ns_events
        .send(event(
            "MODIFIED",
            namespace("prod", json!({"team": "a"})),
            "31",
        ))
        .unwrap();
    wait_b(&maps, "namespace label change", |r| admits(r, CLIENT)).await;

    // 6. The namespaces watch expires (410 Gone): a re-list, which no longer has the
    //    label, replaces what was watched.
    ns_events.send(gone()).unwrap();
    let (_, relist) = api.list(NAMESPACES).await;
    relist
        .send(list(
            "NamespaceList",
            "v1",
            "45",
            &[namespace("prod", json!({}))],
        ))
        .unwrap();
    let (q, _ns_events2) = api.watch(NAMESPACES).await;
    assert_eq!(param(&q, "resourceVersion"), Some("45"), "{q}");
    wait_b(&maps, "after the re-list", |r| {
        isolated_without(r, CLIENT) && admits(r, STRANGER)
    })
    .await;
    assert_eq!(stats.lists(NAMESPACES), 2);
    assert!(stats.watch_errors(NAMESPACES) >= 1);

    // 7. The stranger finishes: a peer no more.
    pod_events
        .send(event(
            "MODIFIED",
            pod(
                "prod",
                "stranger",
                &json!({"role": "client"}),
                Some("10.0.0.9"),
                "Succeeded",
            ),
            "22",
        ))
        .unwrap();
    wait_b(&maps, "stranger finished", |r| {
        isolated_without(r, STRANGER) && isolated_without(r, CLIENT)
    })
    .await;

    // 8. The policy is removed: b is open again.
    pol_events.send(event("DELETED", allow_b(), "12")).unwrap();
    wait_b(&maps, "policy removed", open).await;

    let _ = stop_tx.send(());
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the loop stops")
        .expect("no panic")
        .expect("no error");
}

#[tokio::test]
async fn a_bad_kubeconfig_names_the_policy_section() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = kubewatch::client("policy", Some(&missing))
        .await
        .err()
        .expect("the client must be refused");
    let text = err.to_string();
    assert!(text.contains("policy.kubeconfig"), "{text}");
    assert!(text.contains(&missing.display().to_string()), "{text}");
}
