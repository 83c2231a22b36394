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
//! - [`start`]: what the daemon runs when `services.enabled` (load or adopt the pinned
//!   maps, attach to the cgroup, reconcile on every change of the configured source).

pub mod desired;
pub mod files;
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
pub use reconcile::{apply, current, diff, reconcile, ApplyReport, Op};

use crate::config::{ServiceSourceKind, ServicesConfig};

/// How often the directory is looked at.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the maps are reconciled even if no file changed (repairs drift, cheap: a
/// read of the maps and no write when nothing differs).
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
        }
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
        if self.last.as_ref() == Some(&fp) && !due {
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
        let want = desired(&loaded.services, &loaded.slices);
        match reconcile(maps, &want) {
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
                self.last = Some(fp);
                self.last_sync = Some(Instant::now());
                Some(report)
            }
            Err(e) => {
                warn!(error = %e, "cannot read the service maps; will retry");
                self.last = None;
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
}

impl ServicesHandle {
    /// The Kubernetes source's counters (`None` with the file source); their
    /// [`render`](self::kube::KubeStats::render) is in the manager's metrics format.
    pub fn kube_stats(&self) -> Option<&Arc<self::kube::KubeStats>> {
        self.kube_stats.as_ref()
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
pub fn start(cfg: &ServicesConfig) -> anyhow::Result<ServicesHandle> {
    match cfg.source {
        ServiceSourceKind::Files => start_files(cfg),
        ServiceSourceKind::Kubernetes => start_kube(cfg),
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

fn start_files(cfg: &ServicesConfig) -> anyhow::Result<ServicesHandle> {
    let mut lb = load_and_attach(cfg)?;
    info!(dir = %cfg.dir.display(), "services source: files");
    let mut source = FileSource::new(&cfg.dir, RESYNC_INTERVAL);
    let first = source.poll(&mut lb);
    terminate_udp(first.as_ref());
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("services".into())
        .spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(POLL_INTERVAL);
                let r = source.poll(&mut lb);
                terminate_udp(r.as_ref());
            }
        })
        .context("starting the services thread")?;
    Ok(ServicesHandle {
        stop,
        thread: Some(thread),
        kube_stats: None,
    })
}

/// How often the Kubernetes loop looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

fn start_kube(cfg: &ServicesConfig) -> anyhow::Result<ServicesHandle> {
    // The loop has a runtime of its own on its own thread: the client's background tasks
    // live there, and map writes (syscalls) never block the daemon's workers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the services runtime")?;
    let client = rt.block_on(self::kube::client(cfg.kubeconfig.as_deref()))?;
    let mut lb = load_and_attach(cfg)?;
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
            let r = rt.block_on(self::kube::run(client, &mut lb, &opts, &st, stopped, |r| {
                terminate_udp(Some(r))
            }));
            if let Err(e) = r {
                error!(error = %e, "the Kubernetes services source stopped; the pinned maps keep serving what they hold");
            }
        })
        .context("starting the services thread")?;
    Ok(ServicesHandle {
        stop,
        thread: Some(thread),
        kube_stats: Some(stats),
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
