//! The Kubernetes policy source: networking.k8s.io/v1 `NetworkPolicy`, v1 `Pod` and v1
//! `Namespace` objects of the whole cluster from kube-rs watchers (list, then watch; a full
//! re-list after a restart or a `410 Gone`), kept in a store of the compiler's small types
//! and handed over, as [`Objects`], to the same [`super::SyncState`] the files source feeds.
//!
//! Rules it keeps:
//! - Nothing is handed over before the initial list of *all three* kinds has completed:
//!   until then the sync has no objects, so new pods are closed (with the reason logged)
//!   and the entries already in the maps stay as they are.
//! - A (re-)list replaces a kind's objects at once when it completes
//!   ([`crate::kubewatch::Kind`]), never halfway through.
//! - Pods that finished (`status.phase` `Succeeded` or `Failed`) are left out: their
//!   address may already belong to a new pod.
//! - A burst of events gives one hand-over (debounce).
//!
//! It owns the watch loop and the store; it does not touch maps (the sync does).

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::kube::{Api, Client};
use eni_policy::types::{Namespace, NetworkPolicy, Pod};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace as ApiNamespace;
use k8s_openapi::api::core::v1::Pod as ApiPod;
use k8s_openapi::api::networking::v1::NetworkPolicy as ApiNetworkPolicy;
use tracing::info;

use super::files::Objects;
use crate::kubewatch::{
    on_item, sleep_until, watch, watch_kept, Kind, KindCounters, KubeSourceError, Object,
    ObjectKey, WatchStats,
};

/// Coalescing window: the first change after a hand-over waits this long for the rest of
/// its burst.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

impl Object for NetworkPolicy {
    const KIND: &'static str = "NetworkPolicy";
    fn key(&self) -> ObjectKey {
        (
            self.metadata.namespace().to_string(),
            self.metadata.name.clone(),
        )
    }
}

impl Object for Pod {
    const KIND: &'static str = "Pod";
    fn key(&self) -> ObjectKey {
        (
            self.metadata.namespace().to_string(),
            self.metadata.name.clone(),
        )
    }
}

impl Object for Namespace {
    const KIND: &'static str = "Namespace";
    fn key(&self) -> ObjectKey {
        (String::new(), self.metadata.name.clone())
    }
}

/// NetworkPolicies, Pods and Namespaces as last listed and watched.
#[derive(Debug, Default)]
pub struct PolicyStore {
    /// NetworkPolicies.
    pub policies: Kind<NetworkPolicy>,
    /// Pods (those that have not finished).
    pub pods: Kind<Pod>,
    /// Namespaces.
    pub namespaces: Kind<Namespace>,
}

impl PolicyStore {
    /// Whether all three kinds have been listed: only then is the store the truth.
    pub fn ready(&self) -> bool {
        self.policies.synced() && self.pods.synced() && self.namespaces.synced()
    }

    /// Copies of the objects held, in the shape the sync takes.
    pub fn objects(&self) -> Objects {
        Objects {
            policies: self.policies.objects().values().cloned().collect(),
            pods: self.pods.objects().values().cloned().collect(),
            namespaces: self.namespaces.objects().values().cloned().collect(),
            problems: Vec::new(),
        }
    }
}

/// Whether a Pod counts: a finished pod (`Succeeded`, `Failed`) is neither policed nor a
/// peer, and its address may have been given to another pod already.
pub fn pod_counts(pod: &ApiPod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

const KINDS: [&str; 3] = [NetworkPolicy::KIND, Pod::KIND, Namespace::KIND];

/// Counters of the policy Kubernetes source, rendered like the manager's other metrics.
#[derive(Debug)]
pub struct PolicyKubeStats {
    watch: WatchStats<3>,
    handovers: AtomicU64,
}

impl Default for PolicyKubeStats {
    fn default() -> Self {
        PolicyKubeStats {
            watch: WatchStats::new(KINDS),
            handovers: AtomicU64::new(0),
        }
    }
}

impl PolicyKubeStats {
    /// Whether all three initial lists completed.
    pub fn synced(&self) -> bool {
        self.watch.synced()
    }
    /// Completed lists of `NetworkPolicy` (index 0), `Pod` (1) or `Namespace` (2).
    pub fn lists(&self, kind: usize) -> u64 {
        self.watch.lists(kind)
    }
    /// Watch errors (including `410 Gone`) of a kind.
    pub fn watch_errors(&self, kind: usize) -> u64 {
        self.watch.watch_errors(kind)
    }
    /// Objects handed over to the sync.
    pub fn handovers(&self) -> u64 {
        self.handovers.load(Ordering::Relaxed)
    }

    /// The text exposition of these counters.
    pub fn render(&self) -> String {
        let mut o = self.watch.render(
            "eni_policy_kube",
            "1 once the initial lists of NetworkPolicies, Pods and Namespaces completed.",
        );
        let _ = writeln!(
            o,
            "# HELP eni_policy_kube_handovers_total Times the watched objects were handed to the policy sync.\n# TYPE eni_policy_kube_handovers_total counter\neni_policy_kube_handovers_total {}",
            self.handovers()
        );
        o
    }
}

impl crate::metrics::MetricsSource for PolicyKubeStats {
    fn render(&self) -> String {
        PolicyKubeStats::render(self)
    }
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Coalescing window for bursts of events.
    pub debounce: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self { debounce: DEBOUNCE }
    }
}

/// The counters of kind `idx`.
fn counters(stats: &PolicyKubeStats, idx: usize) -> KindCounters<'_> {
    stats.watch.counters(idx)
}

/// Watches NetworkPolicies, Pods and Namespaces of every namespace through `client` until
/// `stop` completes, and hands the objects to `on_objects` once all three kinds have been
/// listed, then after every burst of changes.
///
/// Returns `Ok(())` when stopped; an error only if a watch stream ends, which kube-rs
/// watchers do not do (they retry with backoff forever).
pub async fn run<S, F>(
    client: Client,
    opts: &KubeOptions,
    stats: &PolicyKubeStats,
    stop: S,
    mut on_objects: F,
) -> Result<(), KubeSourceError>
where
    S: Future<Output = ()>,
    F: FnMut(Objects),
{
    let mut policies = Box::pin(watch::<ApiNetworkPolicy, NetworkPolicy>(Api::all(
        client.clone(),
    )));
    let mut pods = Box::pin(watch_kept::<ApiPod, Pod>(
        Api::all(client.clone()),
        pod_counts,
    ));
    let mut namespaces = Box::pin(watch::<ApiNamespace, Namespace>(Api::all(client)));
    let mut stop = std::pin::pin!(stop);
    let mut store = PolicyStore::default();
    let mut dirty_since: Option<Instant> = None;
    let mut was_ready = false;
    loop {
        let deadline = if store.ready() {
            dirty_since.map(|t| t + opts.debounce)
        } else {
            None
        };
        let changed = tokio::select! {
            () = &mut stop => return Ok(()),
            item = policies.next() => on_item(&mut store.policies, item, counters(stats, 0), "the current policies")?,
            item = pods.next() => on_item(&mut store.pods, item, counters(stats, 1), "the current policies")?,
            item = namespaces.next() => on_item(&mut store.namespaces, item, counters(stats, 2), "the current policies")?,
            () = sleep_until(deadline) => {
                dirty_since = None;
                stats.handovers.fetch_add(1, Ordering::Relaxed);
                on_objects(store.objects());
                false
            }
        };
        if changed && dirty_since.is_none() {
            dirty_since = Some(Instant::now());
        }
        if store.ready() && !was_ready {
            was_ready = true;
            stats.watch.set_synced();
            info!(
                policies = store.policies.objects().len(),
                pods = store.pods.objects().len(),
                namespaces = store.namespaces.objects().len(),
                "Kubernetes policy source synced"
            );
            // The first hand-over is not delayed: pods wait closed until it happens.
            stats.handovers.fetch_add(1, Ordering::Relaxed);
            on_objects(store.objects());
            dirty_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubewatch::reduce;
    use ::kube::runtime::watcher::Event;

    #[test]
    fn api_objects_reduce_to_the_compilers_types() {
        let api: ApiNetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "allow", "namespace": "prod", "resourceVersion": "3"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                     "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"namespaceSelector": {"matchExpressions":
                                    [{"key": "team", "operator": "In", "values": ["a"]}]}},
                                           {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                                  "ports": [{"protocol": "TCP", "port": "pg"},
                                            {"protocol": "UDP", "port": 5000, "endPort": 5010}]}]}
        }))
        .unwrap();
        let ours: NetworkPolicy = reduce(&api).unwrap();
        assert_eq!(ours.key(), ("prod".to_string(), "allow".to_string()));
        let compiled = eni_policy::compile(
            &[ours],
            &[reduce::<ApiPod, Pod>(
                &serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "db-0", "namespace": "prod", "labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "db", "ports": [{"name": "pg", "containerPort": 5432}]}]},
                    "status": {"phase": "Running", "podIP": "10.2.0.5", "podIPs": [{"ip": "10.2.0.5"}]}
                }))
                .unwrap(),
            )
            .unwrap()],
            &[],
        );
        assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
        let rules = &compiled.pods[&eni_policy::PodRef::new("prod", "db-0")];
        let ip = |s: &str| s.parse().unwrap();
        assert!(rules.ingress.permits(ip("10.3.0.1"), 6, 5432), "named port");
        assert!(rules.ingress.permits(ip("10.3.0.1"), 17, 5005), "endPort");
        assert!(!rules.ingress.permits(ip("10.1.0.1"), 6, 5432), "except");

        let ns: Namespace = reduce(
            &serde_json::from_value::<ApiNamespace>(serde_json::json!({
                "metadata": {"name": "prod", "labels": {"team": "a"}}
            }))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(ns.key(), (String::new(), "prod".to_string()));
        assert_eq!(ns.metadata.labels["team"], "a");
    }

    #[test]
    fn finished_pods_do_not_count() {
        let pod = |phase: &str| -> ApiPod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "a"},
                "status": {"phase": phase, "podIP": "10.0.0.1"}
            }))
            .unwrap()
        };
        assert!(pod_counts(&pod("Running")));
        assert!(pod_counts(&pod("Pending")));
        assert!(!pod_counts(&pod("Succeeded")));
        assert!(!pod_counts(&pod("Failed")));
        assert!(pod_counts(&ApiPod::default()));
    }

    #[test]
    fn the_store_is_ready_only_when_all_three_kinds_listed() {
        let mut s = PolicyStore::default();
        for done in 0..3 {
            assert!(!s.ready());
            match done {
                0 => {
                    s.policies.apply(Event::Init);
                    s.policies.apply(Event::InitDone);
                }
                1 => {
                    s.pods.apply(Event::Init);
                    s.pods.apply(Event::InitDone);
                }
                _ => {
                    s.namespaces.apply(Event::Init);
                    s.namespaces.apply(Event::InitDone);
                }
            }
        }
        assert!(s.ready());
    }

    #[test]
    fn stats_render_each_kind() {
        let s = PolicyKubeStats::default();
        s.watch.counters(1).lists.fetch_add(2, Ordering::Relaxed);
        let text = s.render();
        assert!(
            text.contains("eni_policy_kube_lists_total{kind=\"Pod\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("eni_policy_kube_synced 0\n"), "{text}");
    }
}
