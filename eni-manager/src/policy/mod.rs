//! NetworkPolicy: NetworkPolicy, Pod and Namespace objects plus the pods this manager
//! allocated addresses to -> per-pod rules (`eni_policy::compile`) -> the pinned policy
//! maps of `eni_bpf::policy`. The pipeline is source -> [`desired()`] (pure) -> diff against
//! what was written -> incremental writes through [`PolicyMaps`]; only pods whose rules
//! changed are written, pods no longer known are removed.
//!
//! - [`files`]: the standalone source, a directory of YAML files polled every second.
//! - [`desired()`]: objects + allocations -> the wanted rules, one entry per pod address.
//! - [`PolicySync`]: the state between syncs and the one lock every writer takes; the RPC
//!   handler calls [`PolicySync::refresh`] while it answers `allocate` (so a new pod's
//!   entry exists before the CNI brings its link up) and after `release`/`gc`.
//! - [`start`]: what the daemon runs when `policy.enabled`.
//!
//! Pods allocated here take their address from the allocation and their labels and named
//! ports from the Pod object of the same namespace and name, when the source has one; a
//! pod without a Pod object has no labels. This module never attaches programs to links:
//! `eni-cni` does, on the pod's link, before the link is up.

pub mod files;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use eni_bpf::policy::PolicyDatapath;
use eni_policy::types::{ObjectMeta, Pod, PodStatus};
use eni_policy::{PodRef, PodRules};
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
}

/// Objects + allocations -> the wanted entries. Pure.
///
/// - A pod allocated here uses the allocation's address; its labels and named ports come
///   from the Pod object of the same namespace and name if the source has one, otherwise
///   it has no labels (so only selectors that match an empty label set select it, such
///   as `podSelector: {}`).
/// - A Pod object whose address an allocation of this node holds under another name is
///   stale and left out; of two Pod objects with one address the first is used.
/// - Pods allocated without Kubernetes arguments are open and selected by nothing.
pub fn desired(objects: &Objects, allocated: &[AllocatedPod]) -> Desired {
    let by_ip: BTreeMap<Ipv4Addr, &AllocatedPod> = allocated.iter().map(|a| (a.ip, a)).collect();
    let by_ref: BTreeMap<&PodRef, &AllocatedPod> = allocated
        .iter()
        .filter_map(|a| a.pod.as_ref().map(|p| (p, a)))
        .collect();
    let mut pods: Vec<Pod> = Vec::new();
    let mut seen_refs: BTreeSet<PodRef> = BTreeSet::new();
    let mut seen_ips: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for p in &objects.pods {
        let key = PodRef::new(p.metadata.namespace(), p.metadata.name.clone());
        if !seen_refs.insert(key.clone()) {
            debug!(pod = %key, "a second Pod object with this name; ignored");
            continue;
        }
        let mut pod = p.clone();
        if let Some(a) = by_ref.get(&key) {
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
        }
        pods.push(pod);
    }
    let mut anonymous = Vec::new();
    for a in allocated {
        match &a.pod {
            Some(r) if !seen_refs.contains(r) => {
                if !seen_ips.insert(a.ip) {
                    continue;
                }
                seen_refs.insert(r.clone());
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
    let compiled = eni_policy::compile(&objects.policies, &pods, &objects.namespaces);
    let mut out = Desired {
        pods: BTreeMap::new(),
        errors: compiled.errors.iter().map(ToString::to_string).collect(),
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
    for a in anonymous {
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
}

type Fingerprint = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;

/// The sync state: the maps, the last objects read, what was written.
pub struct SyncState {
    maps: Box<dyn PolicyMaps>,
    dir: PathBuf,
    fingerprint: Option<Fingerprint>,
    /// The last objects read; `None` until the directory was read once.
    objects: Option<Objects>,
    last_dir_error: Option<String>,
    allocated: Vec<AllocatedPod>,
    /// What the maps hold, as far as this process wrote it.
    written: BTreeMap<Ipv4Addr, PodRules>,
    /// Set when the maps' pod set must be read and compared (start, resync, failures).
    check_maps: bool,
    last_check: Option<Instant>,
    last_errors: Vec<String>,
}

impl std::fmt::Debug for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncState")
            .field("dir", &self.dir)
            .field("allocated", &self.allocated.len())
            .field("written", &self.written.len())
            .finish()
    }
}

impl SyncState {
    /// A state over `maps`, reading objects from `dir`. The first sync compares with the
    /// maps' contents (entries left by an earlier run are rewritten or removed).
    pub fn new(maps: Box<dyn PolicyMaps>, dir: impl Into<PathBuf>) -> Self {
        SyncState {
            maps,
            dir: dir.into(),
            fingerprint: None,
            objects: None,
            last_dir_error: None,
            allocated: Vec::new(),
            written: BTreeMap::new(),
            check_maps: true,
            last_check: None,
            last_errors: Vec::new(),
        }
    }

    /// Re-reads the directory when it changed. An unreadable directory keeps the objects
    /// read before (a missing directory is not "no policies").
    fn poll_dir(&mut self) {
        let fp = match files::fingerprint(&self.dir) {
            Ok(fp) => fp,
            Err(e) => {
                let msg = e.to_string();
                if self.last_dir_error.as_deref() != Some(&msg) {
                    warn!(dir = %self.dir.display(), error = %msg, "cannot read the policy directory; keeping the policies read before (new pods are closed until it was read once)");
                    self.last_dir_error = Some(msg);
                }
                self.fingerprint = None;
                return;
            }
        };
        self.last_dir_error = None;
        if self.fingerprint.as_ref() == Some(&fp) {
            return;
        }
        match files::load_dir(&self.dir) {
            Ok(objects) => {
                for p in &objects.problems {
                    warn!("policy: {p}; skipped");
                }
                info!(
                    dir = %self.dir.display(),
                    policies = objects.policies.len(),
                    pods = objects.pods.len(),
                    namespaces = objects.namespaces.len(),
                    skipped = objects.problems.len(),
                    "policy directory read"
                );
                self.objects = Some(objects);
                self.fingerprint = Some(fp);
            }
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "cannot read the policy directory; keeping the policies read before");
            }
        }
    }

    /// Brings the maps in line with the objects and `allocated`: writes the entries that
    /// changed, removes those no longer wanted. `poll` also looks at the directory.
    pub fn sync(&mut self, allocated: Vec<AllocatedPod>, poll: bool) -> SyncReport {
        if poll {
            self.poll_dir();
        }
        self.allocated = allocated;
        if self
            .last_check
            .is_none_or(|t| t.elapsed() >= RESYNC_INTERVAL)
        {
            self.check_maps = true;
        }
        let mut report = SyncReport::default();
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
        let want = match &self.objects {
            Some(objects) => desired(objects, &self.allocated),
            None => {
                // Never read: nothing is known about policies. Pods allocated here get a
                // closed entry if they have none; nothing else is touched.
                let mut d = Desired::default();
                let reason = format!(
                    "the policy directory {} has not been read yet",
                    self.dir.display()
                );
                for a in &self.allocated {
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
            if self.written.get(ip) == Some(&w.rules) {
                continue;
            }
            if let Some(reason) = &w.rules.closed {
                warn!(pod = %w.name, %ip, %reason, "pod closed: its policy cannot be computed");
            }
            match self.maps.write_pod(&w.rules) {
                Ok(()) => {
                    debug!(pod = %w.name, %ip, policies = ?w.rules.policies, "policy written");
                    self.written.insert(*ip, w.rules.clone());
                    report.written += 1;
                }
                Err(e) => {
                    self.written.remove(ip);
                    report.errors.push(format!("write {} ({ip}): {e}", w.name));
                }
            }
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
        if !report.errors.is_empty() {
            self.check_maps = true;
            for e in &report.errors {
                error!("policy maps: {e}; will retry");
            }
        }
        if report.written + report.removed > 0 {
            info!(
                pods = want.pods.len(),
                written = report.written,
                removed = report.removed,
                errors = report.errors.len(),
                "policy synced"
            );
        }
        report
    }

    /// Whether the pod at `ip` has an entry written by this process.
    pub fn has_entry(&self, ip: Ipv4Addr) -> bool {
        self.written.contains_key(&ip)
    }
}

/// The running policy sync: shared by the poll loop and the RPC handler.
#[derive(Debug)]
pub struct PolicySync {
    state: Arc<Mutex<SyncState>>,
    /// Taken across "read the allocations, then sync", so a sync never applies an
    /// allocation list older than one already applied.
    order: tokio::sync::Mutex<()>,
    pool: PoolHandle,
    pin_dir: PathBuf,
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

    /// Whether the pod at `ip` has an entry in the maps.
    pub fn has_entry(&self, ip: Ipv4Addr) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .has_entry(ip)
    }
}

/// Loads (or adopts) the policy maps pinned under `pin_dir`, syncs once from `dir` and the
/// pool's allocations, then keeps syncing every [`POLL_INTERVAL`] on a task of its own.
pub async fn start(
    cfg: &crate::config::PolicyConfig,
    pin_dir: PathBuf,
    pool: PoolHandle,
) -> anyhow::Result<Arc<PolicySync>> {
    match cfg.source {
        crate::config::PolicySourceKind::Files => {}
    }
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
    info!(pin_dir = %pin_dir.display(), dir = %cfg.dir.display(), "policy source: files");
    let sync = Arc::new(PolicySync {
        state: Arc::new(Mutex::new(SyncState::new(Box::new(maps), &cfg.dir))),
        order: tokio::sync::Mutex::new(()),
        pool,
        pin_dir,
    });
    sync.refresh(true).await?;
    let s = sync.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            if let Err(e) = s.refresh(true).await {
                warn!(error = %format!("{e:#}"), "policy sync failed; will retry");
            }
        }
    });
    Ok(sync)
}

#[cfg(test)]
mod tests;
