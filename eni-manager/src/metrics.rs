//! Prometheus metrics and the health endpoints, served over HTTP on a local address.
//!
//! The pool and the RPC server record into [`Metrics`]; the cloud clients' per-API counters
//! come from `cloud_providers::CallStats`. Rendering is the text exposition format, by hand:
//! a few dozen series do not need a metrics library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloud_providers::CallStats;

use crate::pool::manager::{Reason, StatusView};
use crate::pool::state::Intent;

/// Upper bounds (seconds) of the allocation latency histogram.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    latency: BTreeMap<&'static str, Histogram>,
    failures: BTreeMap<&'static str, u64>,
    ops_started: BTreeMap<&'static str, u64>,
    ops_failed: BTreeMap<(String, &'static str), u64>,
    subnet_available: BTreeMap<String, u64>,
    pool: Option<PoolGauges>,
}

#[derive(Debug, Clone, Default)]
struct PoolGauges {
    idle: u32,
    allocated: u32,
    total: u32,
    waiting: u32,
    operations: u32,
    degraded: bool,
    max_pods: u32,
    per_eni: Vec<(String, u32, u32)>,
}

/// Everything the manager exports.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    gc_released: AtomicU64,
    rpc_requests: AtomicU64,
    ready: AtomicBool,
    /// The cloud clients' counters.
    pub calls: Arc<CallStats>,
    sources: Mutex<Vec<Arc<dyn MetricsSource>>>,
}

/// A part of the manager that keeps and renders its own series (the Services sources);
/// [`Metrics::render`] appends what it renders.
pub trait MetricsSource: Send + Sync + std::fmt::Debug {
    /// Its series in the text exposition format, each under its `# HELP`/`# TYPE` lines.
    fn render(&self) -> String;
}

/// The label value of a failure reason.
pub fn reason_label(r: Reason) -> &'static str {
    match r {
        Reason::BadRequest => "bad_request",
        Reason::NotFound => "not_found",
        Reason::PoolExhausted => "pool_exhausted",
        Reason::SubnetExhausted => "subnet_exhausted",
        Reason::EniLimit => "eni_limit",
        Reason::CloudThrottled => "cloud_throttled",
        Reason::CloudUnavailable => "cloud_unavailable",
        Reason::Timeout => "timeout",
        Reason::ShuttingDown => "shutting_down",
        Reason::Internal => "internal",
        Reason::Refused => "refused",
    }
}

impl Metrics {
    /// Metrics sharing the cloud clients' `calls`.
    pub fn new(calls: Arc<CallStats>) -> Metrics {
        Metrics {
            calls,
            ..Default::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An allocation was answered after `took`; `path` is `pool` (an idle address) or
    /// `waited` (after the pool grew).
    pub fn observe_allocation(&self, took: Duration, path: &'static str) {
        let mut g = self.lock();
        let h = g.latency.entry(path).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        let s = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += s;
        h.count += 1;
    }

    /// An allocation failed.
    pub fn allocation_failed(&self, r: Reason) {
        *self.lock().failures.entry(reason_label(r)).or_default() += 1;
    }

    /// A cloud operation started.
    pub fn operation_started(&self, i: &Intent) {
        let kind = match i {
            Intent::CreateEni { .. } => "create_eni",
            Intent::Assign { .. } => "assign",
            Intent::Unassign { .. } => "unassign",
            Intent::RemoveEni { .. } => "remove_eni",
        };
        *self.lock().ops_started.entry(kind).or_default() += 1;
    }

    /// A cloud operation failed.
    pub fn operation_failed(&self, what: &str, r: Reason) {
        *self
            .lock()
            .ops_failed
            .entry((what.to_string(), reason_label(r)))
            .or_default() += 1;
    }

    /// GC released an allocation.
    pub fn gc_released(&self) {
        self.gc_released.fetch_add(1, Ordering::Relaxed);
    }

    /// An RPC request arrived.
    pub fn rpc_request(&self) {
        self.rpc_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Free addresses of a subnet, as last reported.
    pub fn set_subnet_available(&self, subnet: &str, n: u64) {
        self.lock().subnet_available.insert(subnet.to_string(), n);
    }

    /// The pool's gauges.
    pub fn set_pool(&self, s: &StatusView) {
        let per_eni = s
            .enis
            .iter()
            .map(|v| {
                (
                    v.eni.id.clone(),
                    v.eni.ips.len() as u32,
                    v.allocations.len() as u32,
                )
            })
            .collect();
        self.lock().pool = Some(PoolGauges {
            idle: s.idle,
            allocated: s.allocated,
            total: s.total,
            waiting: s.waiting,
            operations: s.operations,
            degraded: s.degraded.is_some(),
            max_pods: s.limits.max_shared_pods(),
            per_eni,
        });
    }

    /// Marks the manager ready (serving the CNI).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Adds `source`'s series to every [`render`](Self::render).
    pub fn add_source(&self, source: Arc<dyn MetricsSource>) {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(source);
    }

    /// Whether the manager is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let g = self.lock();
        let mut gauge = |name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        if let Some(p) = &g.pool {
            gauge(
                "eni_pool_idle_addresses",
                "Idle shared addresses.",
                p.idle.into(),
            );
            gauge(
                "eni_pool_allocated_addresses",
                "Addresses and exclusive ENIs held by pods.",
                p.allocated.into(),
            );
            gauge(
                "eni_pool_total_addresses",
                "Shared addresses held by the node.",
                p.total.into(),
            );
            gauge(
                "eni_pool_waiting_requests",
                "Allocations waiting for the pool.",
                p.waiting.into(),
            );
            gauge(
                "eni_pool_operations_in_flight",
                "Cloud operations in flight.",
                p.operations.into(),
            );
            gauge(
                "eni_pool_max_pods",
                "Pods with shared addresses the node can hold.",
                p.max_pods.into(),
            );
            gauge(
                "eni_manager_degraded",
                "1 when the cloud or metadata service is unusable.",
                u64::from(p.degraded),
            );
            let _ = writeln!(o, "# HELP eni_pool_eni_addresses Addresses per ENI, by state.\n# TYPE eni_pool_eni_addresses gauge");
            for (id, total, used) in &p.per_eni {
                let _ = writeln!(
                    o,
                    "eni_pool_eni_addresses{{eni=\"{id}\",state=\"allocated\"}} {used}"
                );
                let _ = writeln!(
                    o,
                    "eni_pool_eni_addresses{{eni=\"{id}\",state=\"idle\"}} {}",
                    total.saturating_sub(*used)
                );
            }
        }
        let _ = writeln!(o, "# HELP eni_manager_ready 1 when the manager serves the CNI.\n# TYPE eni_manager_ready gauge\neni_manager_ready {}", u8::from(self.is_ready()));
        let _ = writeln!(o, "# HELP eni_allocation_duration_seconds Time to answer an allocation.\n# TYPE eni_allocation_duration_seconds histogram");
        for (path, h) in &g.latency {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "eni_allocation_duration_seconds_bucket{{path=\"{path}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "eni_allocation_duration_seconds_bucket{{path=\"{path}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "eni_allocation_duration_seconds_sum{{path=\"{path}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "eni_allocation_duration_seconds_count{{path=\"{path}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(o, "# HELP eni_allocation_failures_total Failed allocations by reason.\n# TYPE eni_allocation_failures_total counter");
        for (r, n) in &g.failures {
            let _ = writeln!(o, "eni_allocation_failures_total{{reason=\"{r}\"}} {n}");
        }
        let _ = writeln!(o, "# HELP eni_pool_operations_total Cloud operations started.\n# TYPE eni_pool_operations_total counter");
        for (k, n) in &g.ops_started {
            let _ = writeln!(o, "eni_pool_operations_total{{operation=\"{k}\"}} {n}");
        }
        let _ = writeln!(o, "# HELP eni_pool_operation_failures_total Cloud operations failed.\n# TYPE eni_pool_operation_failures_total counter");
        for ((what, r), n) in &g.ops_failed {
            let _ = writeln!(
                o,
                "eni_pool_operation_failures_total{{operation=\"{what}\",reason=\"{r}\"}} {n}"
            );
        }
        let _ = writeln!(o, "# HELP eni_subnet_available_addresses Free addresses per vSwitch/subnet, as last reported.\n# TYPE eni_subnet_available_addresses gauge");
        for (s, n) in &g.subnet_available {
            let _ = writeln!(o, "eni_subnet_available_addresses{{subnet=\"{s}\"}} {n}");
        }
        drop(g);
        let _ = writeln!(o, "# HELP eni_gc_released_total Allocations released because the pod's namespace was gone.\n# TYPE eni_gc_released_total counter\neni_gc_released_total {}", self.gc_released.load(Ordering::Relaxed));
        let _ = writeln!(o, "# HELP eni_rpc_requests_total Requests from the CNI.\n# TYPE eni_rpc_requests_total counter\neni_rpc_requests_total {}", self.rpc_requests.load(Ordering::Relaxed));
        let snap = self.calls.snapshot();
        let _ = writeln!(o, "# HELP eni_cloud_calls_total Cloud API attempts by action and outcome.\n# TYPE eni_cloud_calls_total counter");
        for (api, s) in &snap {
            let _ = writeln!(
                o,
                "eni_cloud_calls_total{{api=\"{api}\",outcome=\"ok\"}} {}",
                s.ok
            );
            for (code, n) in &s.errors {
                let _ = writeln!(
                    o,
                    "eni_cloud_calls_total{{api=\"{api}\",outcome=\"{code}\"}} {n}"
                );
            }
        }
        let _ = writeln!(o, "# HELP eni_cloud_throttled_total Cloud API attempts throttled.\n# TYPE eni_cloud_throttled_total counter");
        for (api, s) in &snap {
            let _ = writeln!(
                o,
                "eni_cloud_throttled_total{{api=\"{api}\"}} {}",
                s.throttled
            );
        }
        let _ = writeln!(o, "# HELP eni_cloud_call_seconds_total Time spent in cloud API attempts.\n# TYPE eni_cloud_call_seconds_total counter");
        for (api, s) in &snap {
            let _ = writeln!(
                o,
                "eni_cloud_call_seconds_total{{api=\"{api}\"}} {}",
                s.latency_total.as_secs_f64()
            );
        }
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for s in sources {
            o.push_str(&s.render());
        }
        o
    }

    /// Total cloud API attempts.
    pub fn cloud_calls(&self) -> u64 {
        self.calls.snapshot().values().map(|s| s.calls).sum()
    }
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz` (the pool serves the
/// CNI) on `addr` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut sock, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let head = loop {
                match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf[n..])).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
                    Ok(Ok(k)) => n += k,
                }
                if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                    break String::from_utf8_lossy(&buf[..end]).into_owned();
                }
                if n == buf.len() {
                    return;
                }
            };
            let path = head
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => ("200 OK", metrics.render()),
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/readyz" if metrics.is_ready() => ("200 OK", "ready\n".to_string()),
                "/readyz" => ("503 Service Unavailable", "not ready\n".to_string()),
                _ => (
                    "404 Not Found",
                    "try /metrics, /healthz or /readyz\n".to_string(),
                ),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
