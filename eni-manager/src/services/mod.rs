//! Services: Kubernetes `Service` and `EndpointSlice` objects -> the socket-level load
//! balancer's maps (`eni_bpf`). The pipeline is source -> [`desired`] (pure) -> [`diff`]
//! against the maps -> incremental updates through [`eni_bpf::DatapathMaps`].
//!
//! - [`types`]: the Kubernetes-format objects (only the fields used).
//! - [`desired()`]: objects -> the wanted table, one spec per frontend.
//! - [`reconcile()`]: diff and apply; only changed services are written.
//! - [`files`]: the standalone source, a directory of YAML files polled every second.
//! - [`kube`]: the Kubernetes source, Services and EndpointSlices watched through the API
//!   server (kube-rs watchers), debounced, reconciled once both kinds are listed.
//! - [`external`]: `services.nodeport`, the per-packet path on the node's links (NodePorts,
//!   externalIPs, LoadBalancer IPs from outside the node): its frontends are added to the
//!   table before the reconcile and written to the tc path's map after it.
//! - [`start`]: what the daemon runs when `services.enabled` (load or adopt the pinned
//!   maps, attach to the cgroup and, with `services.nodeport`, to the node's links;
//!   reconcile on every change of the configured source).

pub mod desired;
pub mod external;
pub mod files;
pub mod incremental;
pub mod kube;
pub mod reconcile;
pub mod types;
pub mod udp;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use eni_bpf::DatapathMaps;
use tracing::{error, info, warn};

pub use desired::desired;
pub use reconcile::{apply, current, diff, reconcile, ApplyReport, Op, Reconciler};

use crate::config::{ServiceSourceKind, ServicesConfig};

/// How often the directory is looked at.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the maps are reconciled even if no file changed. That pass reads the maps
/// back (repairing drift); passes caused by a change diff against the applied table kept
/// in memory.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);

type Fingerprint = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;

/// The directory source's state between polls.
#[derive(Debug)]
pub struct FileSource {
    dir: PathBuf,
    resync: Duration,
    last: Option<Fingerprint>,
    last_sync: Option<Instant>,
    last_error: Option<String>,
    reconciler: Reconciler,
    nodeport: Option<external::NodePortPath>,
    /// The host-port generation the last reconcile served.
    host_ports_seen: u64,
}

impl FileSource {
    /// A source reading `dir`; reconciles on change and at least every `resync`.
    pub fn new(dir: impl Into<PathBuf>, resync: Duration) -> Self {
        Self {
            dir: dir.into(),
            resync,
            last: None,
            last_sync: None,
            last_error: None,
            reconciler: Reconciler::new(),
            nodeport: None,
            host_ports_seen: 0,
        }
    }

    /// Also serves NodePorts, externalIPs and LoadBalancer IPs per packet through `path`
    /// (its frontends are reconciled after the socket LB's on every poll that reconciles).
    pub fn with_nodeport(mut self, path: external::NodePortPath) -> Self {
        self.nodeport = Some(path);
        self
    }

    /// The NodePort path, when there is one.
    pub fn nodeport(&self) -> Option<&external::NodePortPath> {
        self.nodeport.as_ref()
    }

    /// The pods' host ports served with the NodePort path, when there are any.
    pub fn host_ports(&self) -> Option<&crate::hostports::HostPorts> {
        self.nodeport.as_ref().and_then(|np| np.host_ports())
    }

    /// The host-port generation the last successful reconcile served: wait for a newer
    /// one ([`crate::hostports::HostPorts::wait_changed`]) between polls.
    pub fn host_ports_seen(&self) -> u64 {
        self.host_ports_seen
    }

    /// Looks at the directory; when it changed (or the resync time passed) reads it and
    /// reconciles `maps`. `None`: nothing to do, or the directory could not be read (the
    /// maps are then left as they are: a missing directory is not "no services").
    pub fn poll<M: DatapathMaps + ?Sized>(&mut self, maps: &mut M) -> Option<ApplyReport> {
        let fp = match files::fingerprint(&self.dir) {
            Ok(fp) => fp,
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(&msg) {
                    warn!(dir = %self.dir.display(), error = %msg, "cannot read the services directory; keeping the current services");
                    self.last_error = Some(msg);
                }
                self.last = None;
                return None;
            }
        };
        self.last_error = None;
        let due = self.last_sync.is_none_or(|t| t.elapsed() >= self.resync);
        let host_ports = self.host_ports().map(|h| h.generation());
        let host_ports_changed = host_ports.is_some_and(|g| g != self.host_ports_seen);
        if self.last.as_ref() == Some(&fp) && !due && !host_ports_changed {
            return None;
        }
        let loaded = match files::load_dir(&self.dir) {
            Ok(l) => l,
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "cannot read the services directory; keeping the current services");
                return None;
            }
        };
        for p in &loaded.problems {
            warn!("services: {p}; skipped");
        }
        let mut want = desired(&loaded.services, &loaded.slices);
        let external = self
            .nodeport
            .as_ref()
            .map(|np| np.extend(&loaded.services, &loaded.slices, &mut want));
        if self.last.as_ref() == Some(&fp) && !host_ports_changed {
            // Nothing changed: this is the periodic resync, which checks the maps themselves.
            self.reconciler.invalidate();
        }
        match self.reconciler.reconcile(maps, &want) {
            Ok(report) => {
                if report.upserted + report.deleted > 0 || self.last.as_ref() != Some(&fp) {
                    info!(
                        services = loaded.services.len(),
                        slices = loaded.slices.len(),
                        frontends = want.len(),
                        upserted = report.upserted,
                        deleted = report.deleted,
                        map_ops = report.map_ops,
                        errors = report.errors.len(),
                        "services reconciled"
                    );
                }
                if let (Some(np), Some(ext)) = (self.nodeport.as_mut(), external.as_ref()) {
                    np.apply(ext);
                }
                if let Some(g) = host_ports {
                    self.host_ports_seen = g;
                }
                self.last = Some(fp);
                self.last_sync = Some(Instant::now());
                Some(report)
            }
            Err(e) => {
                warn!(error = %e, "cannot read the service maps; will retry");
                self.last = None;
                self.reconciler.invalidate();
                None
            }
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The running services loop.
#[derive(Debug)]
pub struct ServicesHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    kube_stats: Option<Arc<self::kube::KubeStats>>,
    nodeport_stats: Option<Arc<external::NodePortStats>>,
}

impl ServicesHandle {
    /// The Kubernetes source's counters (`None` with the file source); their
    /// [`render`](self::kube::KubeStats::render) is in the manager's metrics format.
    pub fn kube_stats(&self) -> Option<&Arc<self::kube::KubeStats>> {
        self.kube_stats.as_ref()
    }

    /// The NodePort path's counters (`None` without `services.nodeport`).
    pub fn nodeport_stats(&self) -> Option<&Arc<external::NodePortStats>> {
        self.nodeport_stats.as_ref()
    }

    /// Everything this loop exports on the manager's `/metrics`.
    pub fn metrics_sources(&self) -> Vec<Arc<dyn crate::metrics::MetricsSource>> {
        let mut out: Vec<Arc<dyn crate::metrics::MetricsSource>> = Vec::new();
        if let Some(k) = &self.kube_stats {
            out.push(k.clone());
        }
        if let Some(n) = &self.nodeport_stats {
            out.push(n.clone());
        }
        out
    }

    /// Stops the loop (the pinned maps and links stay: traffic keeps flowing).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Loads (or adopts) the pinned maps, attaches the hooks to `cfg.cgroup`, then keeps
/// reconciling from the source on a thread of its own: the file source reconciles once
/// before this returns; the Kubernetes source builds its client before anything is loaded
/// (a bad kubeconfig fails here) and reconciles once both kinds have been listed.
///
/// With `services.nodeport` and `host_ports`, the pods' host ports are served with the
/// NodePort frontends; a change of `host_ports` wakes the loop at once.
pub fn start(
    cfg: &ServicesConfig,
    host_ports: Option<crate::hostports::HostPorts>,
) -> anyhow::Result<ServicesHandle> {
    match cfg.source {
        ServiceSourceKind::Files => start_files(cfg, host_ports),
        ServiceSourceKind::Kubernetes => start_kube(cfg, host_ports),
    }
}

fn load_and_attach(cfg: &ServicesConfig) -> anyhow::Result<eni_bpf::SocketLb> {
    let mut lb = eni_bpf::SocketLb::load_or_adopt(&cfg.bpf_pin_dir).with_context(|| {
        format!(
            "loading the socket load balancer (services.bpf_pin_dir {})",
            cfg.bpf_pin_dir.display()
        )
    })?;
    let attached = lb
        .attach(&cfg.cgroup)
        .with_context(|| format!("attaching to services.cgroup {}", cfg.cgroup.display()))?;
    info!(
        pin_dir = %cfg.bpf_pin_dir.display(),
        cgroup = %cfg.cgroup.display(),
        newly_attached = attached,
        "socket load balancer ready"
    );
    Ok(lb)
}

/// The network namespace the manager runs in: where `services.nodeport.links` are.
const OWN_NETNS: &str = "/proc/self/ns/net";

/// With `services.nodeport.enabled`: loads (or adopts) the tc programs and their maps next
/// to the socket LB's, attaches them to every configured link (a filter already there is
/// replaced in place: nothing is detached on a restart) and detaches them from links a
/// previous configuration listed and this one does not.
fn load_and_attach_nodeport(
    cfg: &ServicesConfig,
    host_ports: Option<crate::hostports::HostPorts>,
) -> anyhow::Result<Option<external::NodePortPath>> {
    let np = &cfg.nodeport;
    if !np.enabled {
        stop_nodeport(cfg);
        return Ok(None);
    }
    let plan = external::plan_from_kernel(np)?;
    let mut lb = eni_bpf::NodePortLb::load_or_adopt(&cfg.bpf_pin_dir).with_context(|| {
        format!(
            "loading the NodePort programs (services.bpf_pin_dir {})",
            cfg.bpf_pin_dir.display()
        )
    })?;
    let mut newly = 0;
    for link in &plan.links {
        let n = lb
            .attach(OWN_NETNS, &link.name, link.node_ip)
            .with_context(|| {
                format!(
                    "attaching the NodePort programs to services.nodeport.links {}",
                    link.name
                )
            })?;
        info!(link = %link.name, node_ip = %link.node_ip, newly_attached = n, "NodePort programs attached");
        newly += n;
    }
    match lb.attachments(OWN_NETNS) {
        Ok(recorded) => {
            for old in recorded {
                let Some(name) = old.name else { continue };
                if plan.links.iter().any(|l| l.name == name) {
                    continue;
                }
                match lb.detach(OWN_NETNS, &name) {
                    Ok(()) => {
                        info!(link = %name, "NodePort programs detached (the link is no longer in services.nodeport.links)")
                    }
                    Err(e) => {
                        warn!(link = %name, error = %e, "cannot detach the NodePort programs from a link no longer configured")
                    }
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot list the links the NodePort programs were attached to"),
    }
    info!(
        pin_dir = %cfg.bpf_pin_dir.display(),
        links = plan.links.len(),
        addresses = ?plan.addresses,
        newly_attached = newly,
        "NodePort datapath ready"
    );
    let mut path = external::NodePortPath::new(Box::new(lb), plan.addresses);
    if let Some(hp) = host_ports {
        path = path.with_host_ports(hp);
    }
    path.stats().set_links(plan.links.len());
    Ok(Some(path))
}

/// `services.nodeport` is off: if a previous configuration left the programs attached
/// (their maps are pinned in `bpf_pin_dir`), detaches them from every recorded link and
/// empties their frontends, so nothing keeps serving NodePorts from a stale table. Errors
/// are logged: the rest of the services still start.
fn stop_nodeport(cfg: &ServicesConfig) {
    if !cfg.bpf_pin_dir.join(eni_bpf::maps::NP_LINKS_MAP).exists() {
        return;
    }
    let mut lb = match eni_bpf::NodePortLb::load_or_adopt(&cfg.bpf_pin_dir) {
        Ok(lb) => lb,
        Err(e) => {
            warn!(error = %e, "services.nodeport is off but its maps are pinned; cannot open them to detach the programs");
            return;
        }
    };
    match lb.attachments(OWN_NETNS) {
        Ok(links) => {
            for name in links.into_iter().filter_map(|l| l.name) {
                match lb.detach(OWN_NETNS, &name) {
                    Ok(()) => {
                        info!(link = %name, "services.nodeport is off: NodePort programs detached")
                    }
                    Err(e) => {
                        warn!(link = %name, error = %e, "services.nodeport is off: cannot detach the NodePort programs")
                    }
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot list the links the NodePort programs were attached to"),
    }
    let r = reconcile::reconcile_external(&mut lb, &desired::ExternalTable::new());
    if let Err(e) = r {
        warn!(error = %e, "services.nodeport is off: cannot empty the per-packet frontends");
    }
}

fn start_files(
    cfg: &ServicesConfig,
    host_ports: Option<crate::hostports::HostPorts>,
) -> anyhow::Result<ServicesHandle> {
    let mut lb = load_and_attach(cfg)?;
    let nodeport = load_and_attach_nodeport(cfg, host_ports)?;
    let nodeport_stats = nodeport.as_ref().map(|n| n.stats().clone());
    info!(dir = %cfg.dir.display(), "services source: files");
    let mut source = FileSource::new(&cfg.dir, RESYNC_INTERVAL);
    if let Some(np) = nodeport {
        source = source.with_nodeport(np);
    }
    let first = source.poll(&mut lb);
    terminate_udp(first.as_ref());
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("services".into())
        .spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                // A host port added or removed is served at once; the directory is
                // looked at every POLL_INTERVAL.
                match source.host_ports() {
                    Some(hp) => {
                        hp.wait_changed(source.host_ports_seen(), POLL_INTERVAL);
                    }
                    None => std::thread::sleep(POLL_INTERVAL),
                }
                let r = source.poll(&mut lb);
                terminate_udp(r.as_ref());
            }
        })
        .context("starting the services thread")?;
    Ok(ServicesHandle {
        stop,
        thread: Some(thread),
        kube_stats: None,
        nodeport_stats,
    })
}

/// How often the Kubernetes loop looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

fn start_kube(
    cfg: &ServicesConfig,
    host_ports: Option<crate::hostports::HostPorts>,
) -> anyhow::Result<ServicesHandle> {
    // The loop has a runtime of its own on its own thread: the client's background tasks
    // live there, and map writes (syscalls) never block the daemon's workers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the services runtime")?;
    let client = rt.block_on(self::kube::client(cfg.kubeconfig.as_deref()))?;
    let mut lb = load_and_attach(cfg)?;
    let mut nodeport = load_and_attach_nodeport(cfg, host_ports)?;
    let nodeport_stats = nodeport.as_ref().map(|n| n.stats().clone());
    let opts = self::kube::KubeOptions {
        desired: desired::DesiredOptions {
            node_name: cfg.node_name.clone(),
        },
        ..Default::default()
    };
    info!(
        kubeconfig = %cfg.kubeconfig.as_deref().map_or("in-cluster".into(), |p| p.display().to_string()),
        node = opts.desired.node_name.as_deref().unwrap_or(""),
        "services source: kubernetes; the maps keep what they hold until Services and EndpointSlices are listed"
    );
    let stats = Arc::new(self::kube::KubeStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let st = stats.clone();
    let thread = std::thread::Builder::new()
        .name("services".into())
        .spawn(move || {
            let stopped = async move {
                while !flag.load(Ordering::SeqCst) {
                    tokio::time::sleep(STOP_POLL).await;
                }
            };
            let r = rt.block_on(self::kube::run(
                client,
                &mut lb,
                nodeport.as_mut(),
                &opts,
                &st,
                stopped,
                |r| terminate_udp(Some(r)),
            ));
            if let Err(e) = r {
                error!(error = %e, "the Kubernetes services source stopped; the pinned maps keep serving what they hold");
            }
        })
        .context("starting the services thread")?;
    Ok(ServicesHandle {
        stop,
        thread: Some(thread),
        kube_stats: Some(stats),
        nodeport_stats,
    })
}

/// Disconnects connected UDP sockets still aimed at a removed backend, in the host's and
/// every pod's network namespace, so their next `connect()` picks a live one.
fn terminate_udp(report: Option<&ApplyReport>) {
    if let Some(report) = report {
        udp::terminate_removed(&report.removed_backends);
    }
}

#[cfg(test)]
mod tests;
