//! NetworkPolicy: NetworkPolicy, Pod and Namespace objects plus the pods this manager
//! allocated addresses to -> per-pod rules (`eni_policy::compile`) -> the pinned policy
//! maps of `eni_bpf::policy`. The pipeline is source -> [`desired_with()`] (pure) -> diff
//! against what was written -> incremental writes through [`PolicyMaps`]; only pods whose
//! rules changed are written, pods no longer known are removed.
//!
//! - [`files`]: the standalone source, a directory of YAML files polled every second.
//! - [`kube`]: the Kubernetes source, watches of NetworkPolicies, Pods and Namespaces.
//! - [`desired_with()`]: objects + allocations -> the wanted rules, one entry per pod
//!   address (or only for the addresses asked for).
//! - [`SyncState`]: the cached objects, the allocations and what was written. A full
//!   [`SyncState::sync`] recompiles only when the objects or the allocations changed;
//!   [`SyncState::admit`] writes one new pod's entry, compiling that pod alone.
//! - [`PolicySync`]: the state shared by the loop and the RPC handler, behind one lock.
//!   The handler calls [`PolicySync::admit`] while it answers `allocate` (so a new pod's
//!   entry exists before the CNI brings its link up; the other pods' rules that mention
//!   its address follow right after, on the loop) and [`PolicySync::refresh`] after
//!   `release`/`gc`.
//! - [`start`]: what the daemon runs when `policy.enabled`.
//!
//! Pods allocated here take their address from the allocation and their labels and named
//! ports from the Pod object of the same namespace and name. With the files source a pod
//! without a Pod object has no labels; with the Kubernetes source (which sees every Pod)
//! such a pod is closed until its Pod object arrives. This module never attaches programs
//! to links: `eni-cni` does, on the pod's link, before the link is up.

pub mod files;
pub mod kube;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use eni_bpf::policy::PolicyDatapath;
use eni_policy::types::{ObjectMeta, Pod, PodStatus};
use eni_policy::{PodRef, PodRules};
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use crate::pool::manager::{Granted, PoolHandle};
use files::Objects;

/// How often the directory is looked at (and the allocations re-read from the pool).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the set of pods in the maps is compared with the wanted set even if nothing
/// changed (repairs entries removed or added behind the manager's back).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);

/// The writes the sync needs; [`PolicyDatapath`] in the daemon, a recording fake in tests.
pub trait PolicyMaps: Send {
    /// Puts a pod's rules in force (replacing what it had).
    fn write_pod(&mut self, rules: &PodRules) -> Result<(), eni_bpf::PolicyError>;
    /// Removes a pod's entry, rules, counters and flows. Idempotent.
    fn remove_pod(&mut self, ip: Ipv4Addr) -> Result<(), eni_bpf::PolicyError>;
    /// The addresses that have an entry.
    fn pods(&self) -> Result<BTreeSet<Ipv4Addr>, eni_bpf::PolicyError>;
}

impl PolicyMaps for PolicyDatapath {
    fn write_pod(&mut self, rules: &PodRules) -> Result<(), eni_bpf::PolicyError> {
        PolicyDatapath::write_pod(self, rules)
    }
    fn remove_pod(&mut self, ip: Ipv4Addr) -> Result<(), eni_bpf::PolicyError> {
        PolicyDatapath::remove_pod(self, ip)
    }
    fn pods(&self) -> Result<BTreeSet<Ipv4Addr>, eni_bpf::PolicyError> {
        Ok(self.list()?.into_iter().map(|s| s.ip).collect())
    }
}

/// A pod this manager allocated an address to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AllocatedPod {
    /// Namespace and name from the CNI arguments (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`);
    /// `None` when the runtime passed none.
    pub pod: Option<PodRef>,
    /// The allocated address.
    pub ip: Ipv4Addr,
    /// The container id (for logs).
    pub container_id: String,
}

impl AllocatedPod {
    /// From a pool allocation.
    pub fn from_granted(g: &Granted) -> Self {
        AllocatedPod {
            pod: g
                .alloc
                .pod
                .as_ref()
                .map(|p| PodRef::new(p.namespace.clone(), p.name.clone())),
            ip: g.alloc.ip,
            container_id: g.alloc.key.container_id.clone(),
        }
    }
}

/// One wanted map entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// `namespace/name` (or `container <id>` for a pod without Kubernetes arguments).
    pub name: String,
    /// The rules.
    pub rules: PodRules,
}

/// The wanted entries and what the compiler rejected.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// One entry per pod address.
    pub pods: BTreeMap<Ipv4Addr, Wanted>,
    /// Rejected policies (the pods they select are closed), as messages.
    pub errors: Vec<String>,
    /// How many pods' rules were compiled.
    pub compiled: usize,
}

/// Which pods get an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every pod of the objects with an address, and every pod allocated here (the files
    /// source: its Pod objects are the node's world). A pod allocated here without a Pod
    /// object has no labels.
    #[default]
    AllObjects,
    /// Only the pods allocated here (the Kubernetes source: the objects hold every pod of
    /// the cluster, needed as peers, but only this node's pods have links to police). A pod
    /// allocated here whose Pod object was not received is closed until it is.
    Allocated,
}

/// Objects + allocations -> the wanted entries, for every pod ([`Scope::AllObjects`]). Pure.
pub fn desired(objects: &Objects, allocated: &[AllocatedPod]) -> Desired {
    desired_with(objects, allocated, Scope::AllObjects, None)
}

/// Objects + allocations -> the wanted entries of the pods `scope` covers, and of those
/// only the addresses in `only` when given (every pod still counts as a peer). Pure.
///
/// - A pod allocated here uses the allocation's address; its labels and named ports come
///   from the Pod object of the same namespace and name if the source has one, otherwise
///   it has no labels (so only selectors that match an empty label set select it, such
///   as `podSelector: {}`) or, under [`Scope::Allocated`], it is closed.
/// - A Pod object whose address an allocation of this node holds under another name is
///   stale and left out; of two Pod objects with one address the first is used.
/// - Pods allocated without Kubernetes arguments are open and selected by nothing.
pub fn desired_with(
    objects: &Objects,
    allocated: &[AllocatedPod],
    scope: Scope,
    only: Option<&BTreeSet<Ipv4Addr>>,
) -> Desired {
    let by_ip: BTreeMap<Ipv4Addr, &AllocatedPod> = allocated.iter().map(|a| (a.ip, a)).collect();
    let by_ref: BTreeMap<&PodRef, &AllocatedPod> = allocated
        .iter()
        .filter_map(|a| a.pod.as_ref().map(|p| (p, a)))
        .collect();
    let wanted_ip = |ip: Ipv4Addr| only.is_none_or(|o| o.contains(&ip));
    let mut pods: Vec<Pod> = Vec::new();
    let mut seen_refs: BTreeSet<PodRef> = BTreeSet::new();
    let mut seen_ips: BTreeSet<Ipv4Addr> = BTreeSet::new();
    // The pods whose rules are computed.
    let mut compile: BTreeSet<PodRef> = BTreeSet::new();
    for p in &objects.pods {
        let key = PodRef::new(p.metadata.namespace(), p.metadata.name.clone());
        if !seen_refs.insert(key.clone()) {
            debug!(pod = %key, "a second Pod object with this name; ignored");
            continue;
        }
        let mut pod = p.clone();
        let mine = by_ref.get(&key);
        if let Some(a) = mine {
            pod.status = PodStatus {
                pod_ip: Some(a.ip.to_string()),
                pod_ips: Vec::new(),
            };
            pod.spec.host_network = false;
        } else if let Some(ip) = eni_policy::pod_ipv4(&pod) {
            if by_ip.contains_key(&ip) {
                debug!(pod = %key, %ip, "Pod object holds an address allocated here to another pod; ignored");
                continue;
            }
        }
        if let Some(ip) = eni_policy::pod_ipv4(&pod).filter(|_| !pod.spec.host_network) {
            if !seen_ips.insert(ip) {
                debug!(pod = %key, %ip, "a second Pod object with this address; ignored");
                continue;
            }
            if wanted_ip(ip) && (scope == Scope::AllObjects || mine.is_some()) {
                compile.insert(key.clone());
            }
        }
        pods.push(pod);
    }
    let mut anonymous = Vec::new();
    let mut unseen = Vec::new();
    for a in allocated {
        match &a.pod {
            Some(r) if !seen_refs.contains(r) => {
                if !seen_ips.insert(a.ip) {
                    continue;
                }
                seen_refs.insert(r.clone());
                if scope == Scope::Allocated {
                    unseen.push(a);
                    continue;
                }
                if wanted_ip(a.ip) {
                    compile.insert(r.clone());
                }
                pods.push(Pod {
                    metadata: ObjectMeta {
                        name: r.name.clone(),
                        namespace: Some(r.namespace.clone()),
                        labels: BTreeMap::new(),
                    },
                    status: PodStatus {
                        pod_ip: Some(a.ip.to_string()),
                        pod_ips: Vec::new(),
                    },
                    ..Pod::default()
                });
            }
            Some(_) => {}
            None => anonymous.push(a),
        }
    }
    let compiled = eni_policy::compile_only(
        &objects.policies,
        &pods,
        &objects.namespaces,
        &|k: &PodRef| compile.contains(k),
    );
    let mut out = Desired {
        pods: BTreeMap::new(),
        errors: compiled.errors.iter().map(ToString::to_string).collect(),
        compiled: compiled.pods.len(),
    };
    for (key, rules) in compiled.pods {
        out.pods.insert(
            rules.ip,
            Wanted {
                name: key.to_string(),
                rules,
            },
        );
    }
    for a in unseen.into_iter().filter(|a| wanted_ip(a.ip)) {
        let name = a.pod.as_ref().map_or_else(String::new, ToString::to_string);
        let reason = format!("the Pod object {name} has not been received from the source yet");
        out.pods.insert(
            a.ip,
            Wanted {
                name,
                rules: PodRules::closed(a.ip, reason),
            },
        );
    }
    for a in anonymous.into_iter().filter(|a| wanted_ip(a.ip)) {
        out.pods.entry(a.ip).or_insert_with(|| Wanted {
            name: format!("container {}", a.container_id),
            rules: PodRules::open(a.ip),
        });
    }
    out
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Entries written (new or changed).
    pub written: usize,
    /// Entries removed.
    pub removed: usize,
    /// Failed writes or removals (retried at the next sync).
    pub errors: Vec<String>,
    /// Pods whose rules were compiled (0 when nothing changed since the last sync).
    pub compiled: usize,
}

type Fingerprint = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;

/// Where the objects of a [`SyncState`] come from.
#[derive(Debug)]
enum Source {
    /// Read from a directory, re-read when its fingerprint changes.
    Files {
        dir: PathBuf,
        fingerprint: Option<Fingerprint>,
        last_dir_error: Option<String>,
    },
    /// Handed over by a source of its own ([`SyncState::set_objects`]); `what` names it in
    /// the reason a pod is closed before the first hand-over.
    Pushed { what: String },
}

/// The sync state: the maps, the cached objects, the allocations, what was written.
pub struct SyncState {
    maps: Box<dyn PolicyMaps>,
    source: Source,
    scope: Scope,
    /// The cached objects; `None` until the source delivered them once.
    objects: Option<Objects>,
    allocated: Vec<AllocatedPod>,
    /// What the maps hold, as far as this process wrote it.
    written: BTreeMap<Ipv4Addr, PodRules>,
    /// The entries wanted at the last full sync, while they are still what the objects and
    /// the allocations give (`None`: something changed since; recompile).
    current: Option<Desired>,
    /// Set when the maps' pod set must be read and compared (start, resync, failures).
    check_maps: bool,
    last_check: Option<Instant>,
    last_errors: Vec<String>,
}

impl std::fmt::Debug for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncState")
            .field("source", &self.source)
            .field("scope", &self.scope)
            .field("allocated", &self.allocated.len())
            .field("written", &self.written.len())
            .finish()
    }
}

impl SyncState {
    /// A state over `maps`, reading objects from `dir`. The first sync compares with the
    /// maps' contents (entries left by an earlier run are rewritten or removed).
    pub fn new(maps: Box<dyn PolicyMaps>, dir: impl Into<PathBuf>) -> Self {
        Self::with_source(
            maps,
            Source::Files {
                dir: dir.into(),
                fingerprint: None,
                last_dir_error: None,
            },
            Scope::AllObjects,
        )
    }

    /// A state over `maps` whose objects are handed over with
    /// [`set_objects`](Self::set_objects) (the Kubernetes source); `what` names the source
    /// in the reason new pods are closed until the first hand-over.
    pub fn pushed(maps: Box<dyn PolicyMaps>, what: impl Into<String>, scope: Scope) -> Self {
        Self::with_source(maps, Source::Pushed { what: what.into() }, scope)
    }

    fn with_source(maps: Box<dyn PolicyMaps>, source: Source, scope: Scope) -> Self {
        SyncState {
            maps,
            source,
            scope,
            objects: None,
            allocated: Vec::new(),
            written: BTreeMap::new(),
            current: None,
            check_maps: true,
            last_check: None,
            last_errors: Vec::new(),
        }
    }

    /// Replaces the cached objects (a pushed source's hand-over); the next sync recompiles.
    pub fn set_objects(&mut self, objects: Objects) {
        debug!(
            policies = objects.policies.len(),
            pods = objects.pods.len(),
            namespaces = objects.namespaces.len(),
            "policy objects updated"
        );
        self.objects = Some(objects);
        self.current = None;
    }

    /// Whether the source delivered its objects at least once.
    pub fn has_objects(&self) -> bool {
        self.objects.is_some()
    }

    /// Why pods are closed before the source delivered anything.
    fn not_ready_reason(&self) -> String {
        match &self.source {
            Source::Files { dir, .. } => {
                format!(
                    "the policy directory {} has not been read yet",
                    dir.display()
                )
            }
            Source::Pushed { what } => format!("{what} has not been synced yet"),
        }
    }

    /// Files source: re-reads the directory when it changed. An unreadable directory keeps
    /// the objects read before (a missing directory is not "no policies"). Other sources:
    /// nothing (their objects are handed over).
    fn poll_source(&mut self) {
        let Source::Files {
            dir,
            fingerprint,
            last_dir_error,
        } = &mut self.source
        else {
            return;
        };
        let fp = match files::fingerprint(dir) {
            Ok(fp) => fp,
            Err(e) => {
                let msg = e.to_string();
                if last_dir_error.as_deref() != Some(&msg) {
                    warn!(dir = %dir.display(), error = %msg, "cannot read the policy directory; keeping the policies read before (new pods are closed until it was read once)");
                    *last_dir_error = Some(msg);
                }
                *fingerprint = None;
                return;
            }
        };
        *last_dir_error = None;
        if fingerprint.as_ref() == Some(&fp) {
            return;
        }
        match files::load_dir(dir) {
            Ok(objects) => {
                for p in &objects.problems {
                    warn!("policy: {p}; skipped");
                }
                info!(
                    dir = %dir.display(),
                    policies = objects.policies.len(),
                    pods = objects.pods.len(),
                    namespaces = objects.namespaces.len(),
                    skipped = objects.problems.len(),
                    "policy directory read"
                );
                *fingerprint = Some(fp);
                self.objects = Some(objects);
                self.current = None;
            }
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot read the policy directory; keeping the policies read before");
            }
        }
    }

    /// The entries of `allocated` (or only `only`) when the objects are not known yet:
    /// closed, with the reason.
    fn closed_for(&self, allocated: &[AllocatedPod], only: Option<Ipv4Addr>) -> Desired {
        let reason = self.not_ready_reason();
        let mut d = Desired::default();
        for a in allocated.iter().filter(|a| only.is_none_or(|o| o == a.ip)) {
            d.pods.insert(
                a.ip,
                Wanted {
                    name: a
                        .pod
                        .as_ref()
                        .map_or_else(|| a.container_id.clone(), ToString::to_string),
                    rules: PodRules::closed(a.ip, reason.clone()),
                },
            );
        }
        d
    }

    /// Writes `w` at `ip` unless the maps already hold it (as far as this process wrote).
    fn write_entry(&mut self, ip: Ipv4Addr, w: &Wanted, report: &mut SyncReport) {
        if self.written.get(&ip) == Some(&w.rules) {
            return;
        }
        if let Some(reason) = &w.rules.closed {
            warn!(pod = %w.name, %ip, %reason, "pod closed: its policy cannot be computed");
        }
        match self.maps.write_pod(&w.rules) {
            Ok(()) => {
                debug!(pod = %w.name, %ip, policies = ?w.rules.policies, "policy written");
                self.written.insert(ip, w.rules.clone());
                report.written += 1;
            }
            Err(e) => {
                self.written.remove(&ip);
                report.errors.push(format!("write {} ({ip}): {e}", w.name));
            }
        }
    }

    /// Brings the maps in line with the objects and `allocated`: writes the entries that
    /// changed, removes those no longer wanted. `poll` also looks at the source (the
    /// directory). Compiles only when the objects or the allocations changed since the
    /// last sync that wrote everything it wanted.
    pub fn sync(&mut self, allocated: Vec<AllocatedPod>, poll: bool) -> SyncReport {
        if poll {
            self.poll_source();
        }
        if allocated != self.allocated {
            self.allocated = allocated;
            self.current = None;
        }
        if self
            .last_check
            .is_none_or(|t| t.elapsed() >= RESYNC_INTERVAL)
        {
            self.check_maps = true;
        }
        let mut report = SyncReport::default();
        if self.current.is_some() && !self.check_maps {
            return report;
        }
        let in_maps = if self.check_maps {
            match self.maps.pods() {
                Ok(set) => {
                    self.check_maps = false;
                    self.last_check = Some(Instant::now());
                    Some(set)
                }
                Err(e) => {
                    report.errors.push(format!("read the policy maps: {e}"));
                    None
                }
            }
        } else {
            None
        };
        let want = match (self.current.take(), &self.objects) {
            (Some(want), _) => want,
            (None, Some(objects)) => {
                let d = desired_with(objects, &self.allocated, self.scope, None);
                report.compiled = d.compiled;
                d
            }
            // Never read: nothing is known about policies. Pods allocated here get a
            // closed entry if they have none; nothing else is touched.
            (None, None) => self.closed_for(&self.allocated, None),
        };
        if want.errors != self.last_errors {
            for e in &want.errors {
                error!("{e}; the pods it selects are closed");
            }
            self.last_errors = want.errors.clone();
        }
        // Entries in the maps this process did not write (an earlier run, a hand edit)
        // count as unknown: rewritten if wanted, removed if not.
        if let Some(set) = &in_maps {
            self.written.retain(|ip, _| set.contains(ip));
            for ip in set {
                if !self.written.contains_key(ip) && !want.pods.contains_key(ip) {
                    if self.objects.is_none() {
                        continue;
                    }
                    match self.maps.remove_pod(*ip) {
                        Ok(()) => report.removed += 1,
                        Err(e) => report.errors.push(format!("remove {ip}: {e}")),
                    }
                }
            }
        }
        for (ip, w) in &want.pods {
            self.write_entry(*ip, w, &mut report);
        }
        if self.objects.is_some() {
            let gone: Vec<Ipv4Addr> = self
                .written
                .keys()
                .filter(|ip| !want.pods.contains_key(ip))
                .copied()
                .collect();
            for ip in gone {
                match self.maps.remove_pod(ip) {
                    Ok(()) => {
                        self.written.remove(&ip);
                        report.removed += 1;
                    }
                    Err(e) => report.errors.push(format!("remove {ip}: {e}")),
                }
            }
        }
        if report.errors.is_empty() {
            self.current = Some(want.clone());
        } else {
            self.check_maps = true;
            for e in &report.errors {
                error!("policy maps: {e}; will retry");
            }
        }
        if report.written + report.removed > 0 {
            info!(
                pods = want.pods.len(),
                compiled = report.compiled,
                written = report.written,
                removed = report.removed,
                errors = report.errors.len(),
                "policy synced"
            );
        }
        report
    }

    /// Puts a newly allocated pod's own entry in the maps, compiling that pod alone from
    /// the cached objects (plus, with `poll`, a directory that changed) and the allocations
    /// known so far with `pod` added. The rules of other pods whose peers now include its
    /// address are left to the next [`sync`](Self::sync), which recompiles because the
    /// allocations changed.
    pub fn admit(&mut self, pod: AllocatedPod, poll: bool) -> SyncReport {
        if poll {
            self.poll_source();
        }
        // An allocation known before under the same address is gone (the pool reuses
        // addresses only after a release).
        let ip = pod.ip;
        self.allocated.retain(|a| a.ip != ip);
        self.allocated.push(pod);
        self.current = None;
        let want = match &self.objects {
            Some(objects) => desired_with(
                objects,
                &self.allocated,
                self.scope,
                Some(&BTreeSet::from([ip])),
            ),
            None => self.closed_for(&self.allocated, Some(ip)),
        };
        let mut report = SyncReport {
            compiled: want.compiled,
            ..SyncReport::default()
        };
        for (ip, w) in &want.pods {
            self.write_entry(*ip, w, &mut report);
        }
        if !report.errors.is_empty() {
            self.check_maps = true;
            for e in &report.errors {
                error!("policy maps: {e}; will retry");
            }
        }
        debug!(%ip, compiled = report.compiled, written = report.written, "new pod's policy entry");
        report
    }

    /// Whether the pod at `ip` has an entry written by this process.
    pub fn has_entry(&self, ip: Ipv4Addr) -> bool {
        self.written.contains_key(&ip)
    }
}

/// The running policy sync: shared by the loop and the RPC handler.
#[derive(Debug)]
pub struct PolicySync {
    state: Arc<Mutex<SyncState>>,
    /// Taken across "read the allocations, then sync" and across an admit, so a sync never
    /// applies an allocation list older than one already applied.
    order: tokio::sync::Mutex<()>,
    pool: PoolHandle,
    pin_dir: PathBuf,
    /// Wakes the loop for a full sync now (after an admit, after new objects).
    kick: Arc<Notify>,
    kube_stats: Option<Arc<kube::PolicyKubeStats>>,
}

impl PolicySync {
    /// The pin directory the CNI attaches under.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Re-reads the allocations from the pool and syncs the maps; `poll` also looks at
    /// the directory. Returns once the maps are written.
    pub async fn refresh(&self, poll: bool) -> anyhow::Result<SyncReport> {
        let _order = self.order.lock().await;
        let allocated: Vec<AllocatedPod> = self
            .pool
            .list()
            .await
            .map_err(|e| anyhow::anyhow!("listing the allocations: {}", e.message))?
            .iter()
            .map(AllocatedPod::from_granted)
            .collect();
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.sync(allocated, poll)
        })
        .await
        .context("the policy sync task failed")
    }

    /// A new allocation: writes the pod's own entry (compiled alone, from the cached
    /// objects) and returns; the loop then does a full sync at once, which updates the
    /// other pods whose rules mention the new address.
    pub async fn admit(&self, granted: &Granted) -> anyhow::Result<SyncReport> {
        let pod = AllocatedPod::from_granted(granted);
        let report = {
            let _order = self.order.lock().await;
            let state = self.state.clone();
            tokio::task::spawn_blocking(move || {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.admit(pod, true)
            })
            .await
            .context("the policy sync task failed")?
        };
        self.kick.notify_one();
        Ok(report)
    }

    /// Whether the pod at `ip` has an entry in the maps.
    pub fn has_entry(&self, ip: Ipv4Addr) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .has_entry(ip)
    }

    /// The Kubernetes source's counters (source `kubernetes`), for the metrics endpoint.
    pub fn metrics_sources(&self) -> Vec<Arc<dyn crate::metrics::MetricsSource>> {
        self.kube_stats
            .iter()
            .map(|s| s.clone() as Arc<dyn crate::metrics::MetricsSource>)
            .collect()
    }
}

/// How often the link pins of pods whose interface is gone are removed (and once at start).
pub const LINK_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Removes the link pins left by pods whose namespace went away before a DEL could detach
/// them ([`eni_bpf::policy::sweep_defunct_links`]); each keeps a program loaded.
async fn sweep_links(pin_dir: PathBuf) {
    let dir = pin_dir.clone();
    match tokio::task::spawn_blocking(move || eni_bpf::policy::sweep_defunct_links(&dir)).await {
        Ok(Ok(sweep)) => {
            for d in &sweep.removed {
                info!(dir = %d.display(), "removed the policy link pins of an interface that no longer exists");
            }
        }
        Ok(Err(e)) => warn!(
            error = %e,
            pin_dir = %pin_dir.display(),
            "sweeping dead policy link pins failed; will retry"
        ),
        Err(e) => warn!(error = %e, "sweeping dead policy link pins panicked"),
    }
}

/// Loads (or adopts) the policy maps pinned under `pin_dir`, syncs once from the source
/// and the pool's allocations, then keeps syncing on a task of its own: every
/// [`POLL_INTERVAL`], and at once after an admit or (source `kubernetes`) after the
/// watched objects changed.
pub async fn start(
    cfg: &crate::config::PolicyConfig,
    pin_dir: PathBuf,
    pool: PoolHandle,
) -> anyhow::Result<Arc<PolicySync>> {
    // Validate before acting: a bad kubeconfig fails before the maps are touched.
    let client = match cfg.source {
        crate::config::PolicySourceKind::Files => None,
        crate::config::PolicySourceKind::Kubernetes => Some(
            crate::kubewatch::client("policy", cfg.kubeconfig.as_deref())
                .await
                .context("policy source kubernetes")?,
        ),
    };
    let pd = pin_dir.clone();
    let maps = tokio::task::spawn_blocking(move || PolicyDatapath::load_or_adopt(&pd))
        .await
        .context("loading the policy maps")?
        .with_context(|| {
            format!(
                "loading the policy maps (policy.bpf_pin_dir {})",
                pin_dir.display()
            )
        })?;
    let state = match &client {
        None => {
            info!(pin_dir = %pin_dir.display(), dir = %cfg.dir.display(), "policy source: files");
            SyncState::new(Box::new(maps), &cfg.dir)
        }
        Some(_) => {
            info!(pin_dir = %pin_dir.display(), "policy source: kubernetes");
            SyncState::pushed(
                Box::new(maps),
                "the Kubernetes source (NetworkPolicies, Pods, Namespaces)",
                Scope::Allocated,
            )
        }
    };
    let kube_stats = client
        .as_ref()
        .map(|_| Arc::new(kube::PolicyKubeStats::default()));
    let sync = Arc::new(PolicySync {
        state: Arc::new(Mutex::new(state)),
        order: tokio::sync::Mutex::new(()),
        pool,
        pin_dir,
        kick: Arc::new(Notify::new()),
        kube_stats: kube_stats.clone(),
    });
    sync.refresh(true).await?;
    if let (Some(client), Some(stats)) = (client, kube_stats) {
        let state = sync.state.clone();
        let kick = sync.kick.clone();
        tokio::spawn(async move {
            let on_objects = move |objects: Objects| {
                state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_objects(objects);
                kick.notify_one();
            };
            let r = kube::run(
                client,
                &kube::KubeOptions::default(),
                &stats,
                std::future::pending(),
                on_objects,
            )
            .await;
            if let Err(e) = r {
                error!(error = %e, "the policy Kubernetes source stopped; policies are no longer updated");
            }
        });
    }
    let s = sync.clone();
    tokio::spawn(async move {
        let mut next_sweep = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_sweep {
                sweep_links(s.pin_dir.clone()).await;
                next_sweep = tokio::time::Instant::now() + LINK_SWEEP_INTERVAL;
            }
            tokio::select! {
                () = tokio::time::sleep(POLL_INTERVAL) => {}
                () = s.kick.notified() => {}
            }
            if let Err(e) = s.refresh(true).await {
                warn!(error = %format!("{e:#}"), "policy sync failed; will retry");
            }
        }
    });
    Ok(sync)
}

#[cfg(test)]
mod tests;
