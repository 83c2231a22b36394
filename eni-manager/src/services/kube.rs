//! The Kubernetes source: v1 `Service` and discovery.k8s.io/v1 `EndpointSlice` objects
//! from the API server through kube-rs watchers (list, then watch; a full re-list after a
//! restart or a `410 Gone`), kept in an in-memory store of the small types of
//! [`super::types`] and fed to the same `desired()` -> `reconcile()` pipeline as the file
//! source.
//!
//! Rules it keeps:
//! - Nothing is reconciled before the initial list of *both* kinds has completed: an empty
//!   store then means "not known yet", not "no services"; the pinned maps keep serving what
//!   they hold.
//! - A (re-)list replaces a kind's objects at once when it completes, so an object missing
//!   from the new list is dropped then (and its frontends deleted), never halfway through.
//! - A burst of events gives one reconcile (debounce), and the maps are reconciled again
//!   every resync interval to repair drift.
//!
//! It owns the client, the watch loop and the store; it does not load maps or attach
//! programs ([`super::start`] does).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::kube::runtime::watcher::Event;
use ::kube::{Api, Client};
use eni_bpf::{DatapathMaps, ServiceKey, ServiceSpec};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service as ApiService;
use k8s_openapi::api::discovery::v1::EndpointSlice as ApiEndpointSlice;
use tracing::{info, info_span, warn};

use crate::kubewatch::{on_item, sleep_until, watch, KindCounters, WatchStats};
#[cfg(test)]
use {super::types::ObjectMeta, crate::kubewatch::reduce};

use super::desired::{desired_with, DesiredOptions};
use super::external::NodePortPath;
use super::incremental::{ChangeTracker, DesiredCache};
use super::reconcile::{ApplyReport, Reconciler};
use super::types::{EndpointSlice, Service};

/// Coalescing window: the first change after a reconcile waits this long for the rest of
/// its burst.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the maps are reconciled even without events (repairs drift).
pub const RESYNC: Duration = Duration::from_secs(60);
/// How long to wait before trying again when the maps could not be read.
pub const RETRY: Duration = Duration::from_secs(1);

pub use crate::kubewatch::{Kind, KubeSourceError, Object, ObjectKey};

/// A Kubernetes client from `kubeconfig` (its current context), or from the in-cluster
/// environment when `None` (errors name `services.kubeconfig`); see
/// [`crate::kubewatch::client`].
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeSourceError> {
    crate::kubewatch::client("services", kubeconfig).await
}

impl Object for Service {
    const KIND: &'static str = "Service";
    fn key(&self) -> ObjectKey {
        (
            self.metadata.namespace().to_string(),
            self.metadata.name.clone(),
        )
    }
}

impl Object for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
    fn key(&self) -> ObjectKey {
        (
            self.metadata.namespace().to_string(),
            self.metadata.name.clone(),
        )
    }
}

/// Services and EndpointSlices as last listed and watched.
#[derive(Debug, Default)]
pub struct KubeStore {
    /// Services.
    pub services: Kind<Service>,
    /// EndpointSlices.
    pub slices: Kind<EndpointSlice>,
}

impl KubeStore {
    /// Whether both kinds have been listed: only then is the store the truth.
    pub fn ready(&self) -> bool {
        self.services.synced() && self.slices.synced()
    }

    /// The desired table. Only meaningful when [`ready`](Self::ready).
    pub fn desired(&self, opts: &DesiredOptions) -> BTreeMap<ServiceKey, ServiceSpec> {
        let (services, slices) = self.objects();
        desired_with(&services, &slices, opts)
    }

    /// Copies of the Services and EndpointSlices held.
    pub fn objects(&self) -> (Vec<Service>, Vec<EndpointSlice>) {
        (
            self.services.objects.values().cloned().collect(),
            self.slices.objects.values().cloned().collect(),
        )
    }
}

const KINDS: [&str; 2] = [Service::KIND, EndpointSlice::KIND];

/// Counters of the Kubernetes source, rendered like the manager's other metrics.
#[derive(Debug)]
pub struct KubeStats {
    watch: WatchStats<2>,
    reconciles: AtomicU64,
    reconcile_failures: AtomicU64,
    frontends: AtomicU64,
}

impl Default for KubeStats {
    fn default() -> Self {
        KubeStats {
            watch: WatchStats::new(KINDS),
            reconciles: AtomicU64::new(0),
            reconcile_failures: AtomicU64::new(0),
            frontends: AtomicU64::new(0),
        }
    }
}

impl KubeStats {
    /// Whether both initial lists completed.
    pub fn synced(&self) -> bool {
        self.watch.synced()
    }
    /// Completed lists of `Service` (index 0) or `EndpointSlice` (1).
    pub fn lists(&self, kind: usize) -> u64 {
        self.watch.lists(kind)
    }
    /// Watch errors (including `410 Gone`) of a kind.
    pub fn watch_errors(&self, kind: usize) -> u64 {
        self.watch.watch_errors(kind)
    }
    /// Reconciles done (each one diffed the maps).
    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }

    /// The text exposition of these counters.
    pub fn render(&self) -> String {
        fn family(o: &mut String, name: &str, help: &str, ty: &str, series: &[(&str, u64)]) {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {ty}");
            for (labels, v) in series {
                let _ = writeln!(o, "{name}{labels} {v}");
            }
        }
        let mut o = self.watch.render(
            "eni_services_kube",
            "1 once the initial lists of Services and EndpointSlices completed.",
        );
        family(
            &mut o,
            "eni_services_reconciles_total",
            "Reconciles of the service maps from the Kubernetes source.",
            "counter",
            &[("", self.reconciles())],
        );
        family(
            &mut o,
            "eni_services_reconcile_failures_total",
            "Reconciles that could not read the maps or left a service unapplied.",
            "counter",
            &[("", self.reconcile_failures.load(Ordering::Relaxed))],
        );
        family(
            &mut o,
            "eni_services_frontends",
            "Frontends (address, port, protocol) wanted at the last reconcile.",
            "gauge",
            &[("", self.frontends.load(Ordering::Relaxed))],
        );
        o
    }
}

impl crate::metrics::MetricsSource for KubeStats {
    fn render(&self) -> String {
        KubeStats::render(self)
    }
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// What `desired()` needs beyond the objects (this node's name).
    pub desired: DesiredOptions,
    /// Coalescing window for bursts of events.
    pub debounce: Duration,
    /// Reconcile at least this often once synced.
    pub resync: Duration,
    /// Wait this long after a failed read of the maps.
    pub retry: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            desired: DesiredOptions::default(),
            debounce: DEBOUNCE,
            resync: RESYNC,
            retry: RETRY,
        }
    }
}

/// The counters of kind `idx`.
fn counters(stats: &KubeStats, idx: usize) -> KindCounters<'_> {
    stats.watch.counters(idx)
}

/// Watches Services and EndpointSlices through `client` and keeps `maps` in line with
/// them until `stop` completes; with `nodeport`, NodePorts, externalIPs and LoadBalancer
/// IPs are added to the table and served per packet (written after each reconcile). `on_report` sees every reconcile's report (the daemon
/// terminates UDP sockets of removed backends with it).
///
/// Returns `Ok(())` when stopped; an error only if a watch stream ends, which kube-rs
/// watchers do not do (they retry with backoff forever).
pub async fn run<M, S, F>(
    client: Client,
    maps: &mut M,
    mut nodeport: Option<&mut NodePortPath>,
    opts: &KubeOptions,
    stats: &KubeStats,
    stop: S,
    mut on_report: F,
) -> Result<(), KubeSourceError>
where
    M: DatapathMaps + ?Sized,
    S: Future<Output = ()>,
    F: FnMut(&ApplyReport),
{
    let mut services = Box::pin(watch::<ApiService, Service>(Api::all(client.clone())));
    let mut slices = Box::pin(watch::<ApiEndpointSlice, EndpointSlice>(Api::all(client)));
    let mut stop = std::pin::pin!(stop);
    let mut store = KubeStore::default();
    let mut dirty_since: Option<Instant> = None;
    let mut next_resync: Option<Instant> = None;
    let mut was_ready = false;
    // Change-driven passes diff against what was applied; the periodic resync (no change
    // pending) reads the maps back to repair drift.
    let mut reconciler = Reconciler::new();
    // Without the NodePort path, a change recomputes only the Services it touched (the
    // NodePort path still recomputes the whole table: its frontends are derived from it).
    let mut tracker = ChangeTracker::default();
    let mut cache: Option<DesiredCache> = None;
    // The pods' host ports, served with the NodePort path: a change is reconciled like
    // any other (after the debounce).
    let host_ports = nodeport.as_deref().and_then(|np| np.host_ports().cloned());
    loop {
        let deadline = if store.ready() {
            [dirty_since.map(|t| t + opts.debounce), next_resync]
                .into_iter()
                .flatten()
                .min()
        } else {
            None
        };
        let changed = tokio::select! {
            () = &mut stop => return Ok(()),
            item = services.next() => {
                if let Some(Ok(ev)) = &item {
                    tracker.service_event(ev);
                }
                on_item(&mut store.services, item, counters(stats, 0), "the current services")?
            }
            item = slices.next() => {
                if let Some(Ok(ev)) = &item {
                    let old = match ev {
                        Event::Apply(s) | Event::Delete(s) => store.slices.objects().get(&s.key()),
                        _ => None,
                    };
                    tracker.slice_event(ev, old);
                }
                on_item(&mut store.slices, item, counters(stats, 1), "the current services")?
            }
            () = host_ports_changed(host_ports.as_ref()) => true,
            () = sleep_until(deadline) => {
                let span = info_span!("reconcile", source = "kubernetes");
                let _g = span.enter();
                let incremental = nodeport.is_none()
                    && dirty_since.is_some()
                    && !tracker.needs_full();
                let mut external = None;
                let (result, frontends) = match cache.as_mut().filter(|_| incremental) {
                    Some(c) => {
                        let changes =
                            tracker.update(c, store.services.objects(), store.slices.objects());
                        (reconciler.reconcile_changes(maps, &changes), c.len())
                    }
                    None => {
                        if dirty_since.is_none() {
                            reconciler.invalidate();
                        }
                        let want = match nodeport.as_deref() {
                            None => {
                                let c = tracker.rebuild(
                                    &opts.desired,
                                    store.services.objects(),
                                    store.slices.objects(),
                                );
                                let want = c.table();
                                cache = Some(c);
                                want
                            }
                            Some(np) => {
                                tracker.forget();
                                let (services, slices) = store.objects();
                                let mut want = desired_with(&services, &slices, &opts.desired);
                                external = Some(np.extend(&services, &slices, &mut want));
                                want
                            }
                        };
                        (reconciler.reconcile(maps, &want), want.len())
                    }
                };
                stats.frontends.store(frontends as u64, Ordering::Relaxed);
                match result {
                    Ok(report) => {
                        stats.reconciles.fetch_add(1, Ordering::Relaxed);
                        if !report.errors.is_empty() {
                            stats.reconcile_failures.fetch_add(1, Ordering::Relaxed);
                        }
                        if report.upserted + report.deleted > 0 || dirty_since.is_some() {
                            info!(
                                services = store.services.objects().len(),
                                slices = store.slices.objects().len(),
                                frontends,
                                upserted = report.upserted,
                                deleted = report.deleted,
                                map_ops = report.map_ops,
                                errors = report.errors.len(),
                                "services reconciled"
                            );
                        }
                        dirty_since = None;
                        // A service that could not be applied is tried again soon.
                        let wait = if report.errors.is_empty() {
                            opts.resync
                        } else {
                            opts.retry
                        };
                        next_resync = Some(Instant::now() + wait);
                        if let (Some(np), Some(ext)) = (nodeport.as_deref_mut(), external.as_ref()) {
                            np.apply(ext);
                        }
                        on_report(&report);
                    }
                    Err(e) => {
                        stats.reconcile_failures.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "cannot read the service maps; will retry");
                        reconciler.invalidate();
                        // The retry below does what the pending change asked for.
                        dirty_since = None;
                        next_resync = Some(Instant::now() + opts.retry);
                    }
                }
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
                services = store.services.objects().len(),
                slices = store.slices.objects().len(),
                "Kubernetes services source synced; reconciling"
            );
        }
    }
}

/// Completes when the host ports change; never without them.
async fn host_ports_changed(hp: Option<&crate::hostports::HostPorts>) {
    match hp {
        Some(hp) => hp.changed().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::types::{Endpoint, ServicePort, ServiceSpec as Spec};

    fn svc(ns: &str, name: &str, ip: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Spec {
                cluster_ip: Some(ip.into()),
                ports: vec![ServicePort {
                    port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            },
            status: Default::default(),
        }
    }

    fn slice(ns: &str, name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
        let mut s = EndpointSlice {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            endpoints: ips
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.to_string()],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        s.metadata.labels.insert(
            super::super::types::SERVICE_NAME_LABEL.into(),
            service.into(),
        );
        s
    }

    #[test]
    fn a_relist_replaces_the_kind_only_when_it_completes() {
        let mut k: Kind<Service> = Kind::default();
        assert!(!k.apply(Event::Init));
        assert!(!k.apply(Event::InitApply(svc("a", "x", "10.96.0.1"))));
        assert!(!k.apply(Event::InitApply(svc("a", "y", "10.96.0.2"))));
        assert!(!k.synced(), "not synced before InitDone");
        assert!(k.objects().is_empty(), "nothing committed before InitDone");
        assert!(k.apply(Event::InitDone));
        assert!(k.synced());
        assert_eq!(k.objects().len(), 2);
        // The same object again is no change.
        assert!(!k.apply(Event::Apply(svc("a", "x", "10.96.0.1"))));
        assert!(k.apply(Event::Apply(svc("a", "x", "10.96.0.9"))));
        // A re-list without y: y stays until the list completes, then goes.
        assert!(!k.apply(Event::Init));
        assert!(!k.apply(Event::InitApply(svc("a", "x", "10.96.0.9"))));
        assert_eq!(k.objects().len(), 2);
        assert!(k.apply(Event::InitDone));
        assert_eq!(
            k.objects().keys().cloned().collect::<Vec<_>>(),
            vec![("a".to_string(), "x".to_string())]
        );
        // An identical re-list changes nothing.
        assert!(!k.apply(Event::Init));
        assert!(!k.apply(Event::InitApply(svc("a", "x", "10.96.0.9"))));
        assert!(!k.apply(Event::InitDone));
        assert!(k.apply(Event::Delete(svc("a", "x", "10.96.0.9"))));
        assert!(!k.apply(Event::Delete(svc("a", "x", "10.96.0.9"))));
    }

    #[test]
    fn an_empty_first_list_is_a_change_and_sync() {
        let mut k: Kind<EndpointSlice> = Kind::default();
        assert!(!k.apply(Event::Init));
        assert!(
            k.apply(Event::InitDone),
            "the first list completing is a change"
        );
        assert!(k.synced());
    }

    #[test]
    fn the_store_is_ready_only_when_both_kinds_listed() {
        let mut s = KubeStore::default();
        s.services.apply(Event::Init);
        s.services
            .apply(Event::InitApply(svc("a", "x", "10.96.0.1")));
        s.services.apply(Event::InitDone);
        assert!(!s.ready());
        s.slices.apply(Event::Init);
        s.slices.apply(Event::InitApply(slice(
            "a",
            "x-1",
            "x",
            &["10.0.0.1", "10.0.0.2"],
        )));
        s.slices.apply(Event::InitDone);
        assert!(s.ready());
        let d = s.desired(&DesiredOptions::default());
        assert_eq!(d.len(), 1);
        assert_eq!(d.values().next().unwrap().backends.len(), 2);
    }

    #[test]
    fn internal_traffic_policy_local_uses_the_node_name_when_given() {
        let mut s = KubeStore::default();
        let mut web = svc("a", "web", "10.96.0.1");
        web.spec.internal_traffic_policy = Some("Local".into());
        s.services.apply(Event::Init);
        s.services.apply(Event::InitApply(web));
        s.services.apply(Event::InitDone);
        let mut sl = slice("a", "web-1", "web", &["10.0.0.1", "10.0.0.2"]);
        sl.endpoints[0].node_name = Some("node-a".into());
        sl.endpoints[1].node_name = Some("node-b".into());
        s.slices.apply(Event::Init);
        s.slices.apply(Event::InitApply(sl));
        s.slices.apply(Event::InitDone);
        let backends = |node: Option<&str>| -> Vec<String> {
            let d = s.desired(&DesiredOptions {
                node_name: node.map(str::to_string),
            });
            d.values()
                .next()
                .unwrap()
                .backends
                .iter()
                .map(|b| b.addr().to_string())
                .collect()
        };
        assert_eq!(backends(Some("node-a")), vec!["10.0.0.1:80"]);
        assert_eq!(backends(Some("node-c")), Vec::<String>::new());
        assert_eq!(
            backends(None),
            vec!["10.0.0.1:80", "10.0.0.2:80"],
            "no node name: Cluster"
        );
    }

    #[test]
    fn api_objects_reduce_to_our_types() {
        let api: ApiService = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7",
                         "annotations": {"x": "y"}},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "internalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}},
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http-alt"},
                               {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9", "ipMode": "VIP"},
                                                    {"hostname": "lb.example.com"}]}}
        }))
        .unwrap();
        let ours: Service = reduce(&api).unwrap();
        assert_eq!(
            ours.load_balancer_ips(),
            vec![std::net::Ipv4Addr::new(203, 0, 113, 9)],
            "status.loadBalancer.ingress reaches our type"
        );
        assert_eq!(ours.key(), ("shop".to_string(), "web".to_string()));
        assert_eq!(ours.spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        assert_eq!(ours.spec.internal_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(
            ours.spec.ports[0].target_port,
            Some(crate::services::types::IntOrString::String(
                "http-alt".into()
            ))
        );
        assert_eq!(
            ours.spec.ports[1].target_port,
            Some(crate::services::types::IntOrString::Int(5353))
        );
        assert_eq!(
            ours.spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds),
            Some(30)
        );
        let api: ApiEndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "node-a",
                           "conditions": {"ready": false, "serving": true, "terminating": true}}]
        }))
        .unwrap();
        let ours: EndpointSlice = reduce(&api).unwrap();
        assert_eq!(ours.service_name(), Some("web"));
        assert_eq!(ours.endpoints[0].node_name.as_deref(), Some("node-a"));
        assert_eq!(ours.endpoints[0].conditions.terminating, Some(true));
        assert_eq!(ours.ports[0].port, Some(8080));
    }

    #[test]
    fn stats_render_each_series_under_its_header() {
        let s = KubeStats::default();
        s.watch.counters(1).lists.fetch_add(2, Ordering::Relaxed);
        let text = s.render();
        assert!(
            text.contains(
                "# TYPE eni_services_kube_lists_total counter\n\
             eni_services_kube_lists_total{kind=\"Service\"} 0\n\
             eni_services_kube_lists_total{kind=\"EndpointSlice\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE eni_services_kube_synced gauge\neni_services_kube_synced 0\n"),
            "{text}"
        );
        assert!(text.contains("eni_services_frontends 0\n"), "{text}");
    }
}
