//! What the manager's Kubernetes sources share: building the client (a kubeconfig or the
//! in-cluster service account), list-then-watch streams of API objects converted into the
//! manager's small serde types, and [`Kind`], the per-kind store that commits a (re-)list
//! only when it completes.
//!
//! The Services source ([`crate::services::kube`]) and the NetworkPolicy source
//! ([`crate::policy::kube`]) each run their own loop over these pieces; this module knows
//! nothing of what they do with the objects, and holds no state of its own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::runtime::watcher::{self, watcher, Event};
use ::kube::runtime::WatchStreamExt;
use ::kube::{Api, Client};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, info, warn};

/// Why a Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// The kubeconfig named by `<section>.kubeconfig` could not be read or used.
    #[error("{section}.kubeconfig {}: cannot use this kubeconfig", path.display())]
    Kubeconfig {
        /// The configuration section (`services`, `policy`).
        section: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ::kube::config::KubeconfigError,
    },
    /// No kubeconfig was given and the in-cluster configuration is not there.
    #[error(
        "{section}.source kubernetes: {section}.kubeconfig is not set and the in-cluster \
         configuration is not usable (KUBERNETES_SERVICE_HOST/PORT and the service account \
         token under /var/run/secrets/kubernetes.io/serviceaccount/); run the manager in a \
         pod with a service account, or set {section}.kubeconfig"
    )]
    InCluster {
        /// The configuration section (`services`, `policy`).
        section: &'static str,
        /// Why.
        #[source]
        source: ::kube::config::InClusterError,
    },
    /// The client could not be built from the configuration.
    #[error("building the Kubernetes client")]
    Client {
        /// Why.
        #[source]
        source: ::kube::Error,
    },
    /// A watch stream ended (kube-rs watchers never end; this is a bug).
    #[error("the {kind} watch stream ended")]
    WatchEnded {
        /// The kind whose stream ended (`Service`, `Pod`, ...).
        kind: &'static str,
    },
}

/// A Kubernetes client from `kubeconfig` (its current context), or from the in-cluster
/// environment when `None`; `section` names the configuration section in errors. Must be
/// called inside the tokio runtime that will drive it.
pub async fn client(
    section: &'static str,
    kubeconfig: Option<&Path>,
) -> Result<Client, KubeSourceError> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // One process-wide provider; ring is the one the workspace builds. An error means
        // another thread installed one first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| KubeSourceError::Kubeconfig {
                section,
                path: path.to_path_buf(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(err)?;
            ::kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None => ::kube::Config::incluster()
            .map_err(|source| KubeSourceError::InCluster { section, source })?,
    };
    Client::try_from(config).map_err(|source| KubeSourceError::Client { source })
}

/// Namespace and name: an object's identity in a store (namespace `""` for cluster-scoped
/// kinds).
pub type ObjectKey = (String, String);

/// A stored kind (one of our reduced types).
pub trait Object: DeserializeOwned + PartialEq {
    /// The kind's name, for logs and metrics (`Service`, `Pod`, ...).
    const KIND: &'static str;
    /// Namespace and name.
    fn key(&self) -> ObjectKey;
}

/// The objects of one kind, as the watcher last reported them.
#[derive(Debug)]
pub struct Kind<T> {
    /// The committed objects.
    pub(crate) objects: BTreeMap<ObjectKey, T>,
    /// Objects of a (re-)list in progress; they replace `objects` when it completes.
    pub(crate) relisting: Option<BTreeMap<ObjectKey, T>>,
    /// Whether a first list completed.
    pub(crate) synced: bool,
}

impl<T> Default for Kind<T> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            relisting: None,
            synced: false,
        }
    }
}

impl<T: Object + Clone> Kind<T> {
    /// Applies one watcher event. `true`: what a consumer would see changed (an object
    /// added, changed or removed, or the kind's first list completed).
    pub fn apply(&mut self, event: Event<T>) -> bool {
        match event {
            Event::Init => {
                debug!(kind = T::KIND, "listing");
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(o) => {
                self.relisting.get_or_insert_default().insert(o.key(), o);
                false
            }
            Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                let dropped = self
                    .objects
                    .keys()
                    .filter(|k| !listed.contains_key(*k))
                    .count();
                let first = !self.synced;
                let changed = first || listed != self.objects;
                info!(
                    kind = T::KIND,
                    objects = listed.len(),
                    dropped,
                    first,
                    "list complete"
                );
                self.objects = listed;
                self.synced = true;
                changed
            }
            Event::Apply(o) => {
                let k = o.key();
                if self.objects.get(&k) == Some(&o) {
                    return false;
                }
                debug!(kind = T::KIND, namespace = %k.0, name = %k.1, "applied");
                self.objects.insert(k, o);
                true
            }
            Event::Delete(o) => {
                let k = o.key();
                debug!(kind = T::KIND, namespace = %k.0, name = %k.1, "deleted");
                self.objects.remove(&k).is_some()
            }
        }
    }

    /// Whether a first list has completed.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The objects, by namespace and name.
    pub fn objects(&self) -> &BTreeMap<ObjectKey, T> {
        &self.objects
    }
}

/// Converts an API object into our reduced type (the field names are the API's).
pub fn reduce<K: Serialize, T: DeserializeOwned>(obj: &K) -> Result<T, serde_json::Error> {
    serde_json::to_value(obj).and_then(serde_json::from_value)
}

/// A watcher event on API objects -> the same event on our types. An object that does not
/// convert is logged and dropped (`None`).
pub fn reduce_event<K, T>(event: Event<K>) -> Option<Event<T>>
where
    K: Serialize + ::kube::Resource,
    T: Object,
{
    let conv = |o: K| match reduce::<K, T>(&o) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!(
                kind = T::KIND,
                namespace = o.meta().namespace.as_deref().unwrap_or(""),
                name = o.meta().name.as_deref().unwrap_or(""),
                error = %e,
                "object not understood; ignored"
            );
            None
        }
    };
    Some(match event {
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
        Event::InitApply(o) => Event::InitApply(conv(o)?),
        Event::Apply(o) => Event::Apply(conv(o)?),
        Event::Delete(o) => Event::Delete(conv(o)?),
    })
}

/// One watch stream's item: our event, or the watcher's error.
pub type Item<T> = Result<Event<T>, watcher::Error>;

/// List-then-watch of every object of `api`'s kind, converted to `T`; re-lists after a
/// restart or a `410 Gone`, retries errors with backoff, never ends.
pub fn watch<K, T>(api: Api<K>) -> impl Stream<Item = Item<T>> + Send
where
    K: ::kube::Resource
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
    T: Object + Send + 'static,
{
    watch_kept(api, |_| true)
}

/// [`watch`], with objects `keep` refuses treated as absent: not listed, and an update
/// that makes an object refused is a deletion.
pub fn watch_kept<K, T>(api: Api<K>, keep: fn(&K) -> bool) -> impl Stream<Item = Item<T>> + Send
where
    K: ::kube::Resource
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
    T: Object + Send + 'static,
{
    // `resourceVersion=0`: lists are served from the API server's watch cache, like
    // kube-proxy's informers; every node runs one of these, so quorum reads would weigh on
    // etcd. No page size: kube-rs drops `resourceVersion=0` from a paged list (the API
    // server ignores the limit of a cached list anyway).
    let mut config = watcher::Config::default().any_semantic();
    config.page_size = None;
    watcher(api, config)
        .default_backoff()
        .filter_map(move |r| async move {
            match r {
                Ok(ev) => {
                    let ev = match ev {
                        Event::InitApply(o) if !keep(&o) => return None,
                        Event::Apply(o) if !keep(&o) => Event::Delete(o),
                        ev => ev,
                    };
                    reduce_event::<K, T>(ev).map(Ok)
                }
                Err(e) => Some(Err(e)),
            }
        })
}

/// The counters of a watch source of `N` kinds: per kind, objects received, lists
/// completed and watch errors; and whether every initial list completed.
#[derive(Debug)]
pub struct WatchStats<const N: usize> {
    kinds: [&'static str; N],
    synced: AtomicBool,
    events: [AtomicU64; N],
    lists: [AtomicU64; N],
    watch_errors: [AtomicU64; N],
}

impl<const N: usize> WatchStats<N> {
    /// All zero, for the kinds named `kinds` (their `kind` label values, in index order).
    pub fn new(kinds: [&'static str; N]) -> Self {
        WatchStats {
            kinds,
            synced: AtomicBool::new(false),
            events: std::array::from_fn(|_| AtomicU64::new(0)),
            lists: std::array::from_fn(|_| AtomicU64::new(0)),
            watch_errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
    /// Whether every initial list completed.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }
    /// Records that every initial list completed.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }
    /// Completed lists of kind `kind`.
    pub fn lists(&self, kind: usize) -> u64 {
        self.lists[kind].load(Ordering::Relaxed)
    }
    /// Watch errors (including `410 Gone`) of kind `kind`.
    pub fn watch_errors(&self, kind: usize) -> u64 {
        self.watch_errors[kind].load(Ordering::Relaxed)
    }
    /// The counters kind `kind` feeds.
    pub fn counters(&self, kind: usize) -> KindCounters<'_> {
        KindCounters {
            events: &self.events[kind],
            lists: &self.lists[kind],
            watch_errors: &self.watch_errors[kind],
        }
    }
    /// The text exposition: `{prefix}_synced` (a gauge, `synced_help`), then
    /// `{prefix}_events_total`, `{prefix}_lists_total` and `{prefix}_watch_errors_total`
    /// with one series per kind.
    pub fn render(&self, prefix: &str, synced_help: &str) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP {prefix}_synced {synced_help}\n# TYPE {prefix}_synced gauge\n{prefix}_synced {}",
            u64::from(self.synced())
        );
        for (name, help, arr) in [
            (
                "events_total",
                "Objects received from lists and watches.",
                &self.events,
            ),
            (
                "lists_total",
                "Completed lists (the first, and re-lists after a restart or 410 Gone).",
                &self.lists,
            ),
            (
                "watch_errors_total",
                "List and watch errors, 410 Gone included.",
                &self.watch_errors,
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP {prefix}_{name} {help}\n# TYPE {prefix}_{name} counter"
            );
            for (k, v) in self.kinds.iter().zip(arr) {
                let _ = writeln!(
                    o,
                    "{prefix}_{name}{{kind=\"{k}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        }
        o
    }
}

/// The counters one watched kind feeds.
#[derive(Debug, Clone, Copy)]
pub struct KindCounters<'a> {
    /// Objects listed or changed.
    pub events: &'a AtomicU64,
    /// Lists completed.
    pub lists: &'a AtomicU64,
    /// Failed lists and watches (410 Gone included).
    pub watch_errors: &'a AtomicU64,
}

/// Applies one watcher item to `kind`, counting it; `true` when the store changed. A list
/// or watch error is logged (a 410 Gone as the re-list it leads to) and changes nothing:
/// the watcher retries with backoff and `keeps` (what the source keeps serving meanwhile,
/// e.g. "the current services") says so in the log. A stream that ends is an error.
pub fn on_item<T: Object + Clone>(
    kind: &mut Kind<T>,
    item: Option<Item<T>>,
    counters: KindCounters<'_>,
    keeps: &str,
) -> Result<bool, KubeSourceError> {
    match item {
        None => Err(KubeSourceError::WatchEnded { kind: T::KIND }),
        Some(Ok(ev)) => {
            match &ev {
                Event::InitApply(_) | Event::Apply(_) | Event::Delete(_) => {
                    counters.events.fetch_add(1, Ordering::Relaxed);
                }
                Event::InitDone => {
                    counters.lists.fetch_add(1, Ordering::Relaxed);
                }
                Event::Init => {
                    if kind.synced() {
                        info!(kind = T::KIND, "watch restarted; re-listing");
                    }
                }
            }
            Ok(kind.apply(ev))
        }
        Some(Err(e)) => {
            counters.watch_errors.fetch_add(1, Ordering::Relaxed);
            match &e {
                watcher::Error::WatchError(status) if status.code == 410 => {
                    info!(kind = T::KIND, message = %status.message, "watch expired (410 Gone); re-listing");
                }
                _ => {
                    warn!(kind = T::KIND, error = %e, "list/watch failed; retrying with backoff ({keeps} stay)");
                }
            }
            Ok(false)
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
