//! Observability hooks: every attempt of every cloud call is reported to a [`CallObserver`],
//! so the manager can export per-API call counts, latency, throttles and error codes.
//!
//! [`CallStats`] is a ready-made in-memory observer the manager can read and export; this
//! module has no metrics-system dependency and does not log.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use crate::provider::Cloud;
use crate::ratelimit::Priority;

/// How one attempt of a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome<'a> {
    /// The cloud answered with success (or with an error that counts as success, like
    /// deleting an ENI that is already gone).
    Ok,
    /// The attempt failed.
    Error {
        /// The [`crate::ProviderError::kind`] label (`throttled`, `transient`, ...).
        kind: &'static str,
        /// The vendor's error code, when there was one.
        code: Option<&'a str>,
    },
}

/// One finished attempt of a cloud call.
#[derive(Debug, Clone, Copy)]
pub struct CallEvent<'a> {
    /// Which cloud.
    pub cloud: Cloud,
    /// The vendor's action name.
    pub api: &'static str,
    /// The caller's priority.
    pub priority: Priority,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
    /// Time spent waiting for the rate limiter before this attempt.
    pub rate_limit_wait: Duration,
    /// Time from sending the request to its answer (or failure).
    pub latency: Duration,
    /// How the attempt ended.
    pub outcome: CallOutcome<'a>,
}

impl CallEvent<'_> {
    /// Whether the cloud throttled this attempt.
    pub fn throttled(&self) -> bool {
        matches!(
            self.outcome,
            CallOutcome::Error {
                kind: "throttled",
                ..
            }
        )
    }
}

/// Receives every attempt of every cloud call. Implementations must be cheap and must not
/// block: they run on the caller's task.
pub trait CallObserver: Send + Sync + fmt::Debug {
    /// One attempt finished.
    fn on_call(&self, event: &CallEvent<'_>);
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl CallObserver for NoopObserver {
    fn on_call(&self, _event: &CallEvent<'_>) {}
}

/// Counters of one API, as read by [`CallStats::snapshot`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiStats {
    /// Attempts made (retries included).
    pub calls: u64,
    /// Attempts that succeeded.
    pub ok: u64,
    /// Attempts the cloud throttled.
    pub throttled: u64,
    /// Retries (attempts after the first).
    pub retries: u64,
    /// Failed attempts by vendor error code (or error kind when there was no code).
    pub errors: BTreeMap<String, u64>,
    /// Sum of attempt latencies.
    pub latency_total: Duration,
    /// Slowest attempt.
    pub latency_max: Duration,
    /// Sum of the time spent waiting for the client-side rate limiter.
    pub rate_limit_wait_total: Duration,
}

/// An in-memory [`CallObserver`] keeping [`ApiStats`] per API action.
#[derive(Debug, Default)]
pub struct CallStats {
    apis: Mutex<HashMap<&'static str, ApiStats>>,
}

impl CallStats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the counters, by API action.
    pub fn snapshot(&self) -> BTreeMap<String, ApiStats> {
        let apis = self.apis.lock().unwrap_or_else(|e| e.into_inner());
        apis.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// The counters of one API (zero when it was never called).
    pub fn api(&self, api: &str) -> ApiStats {
        let apis = self.apis.lock().unwrap_or_else(|e| e.into_inner());
        apis.get(api).cloned().unwrap_or_default()
    }
}

impl CallObserver for CallStats {
    fn on_call(&self, event: &CallEvent<'_>) {
        let mut apis = self.apis.lock().unwrap_or_else(|e| e.into_inner());
        let s = apis.entry(event.api).or_default();
        s.calls += 1;
        if event.attempt > 1 {
            s.retries += 1;
        }
        s.latency_total += event.latency;
        s.latency_max = s.latency_max.max(event.latency);
        s.rate_limit_wait_total += event.rate_limit_wait;
        match event.outcome {
            CallOutcome::Ok => s.ok += 1,
            CallOutcome::Error { kind, code } => {
                if kind == "throttled" {
                    s.throttled += 1;
                }
                *s.errors
                    .entry(code.unwrap_or(kind).to_string())
                    .or_default() += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_api() {
        let stats = CallStats::new();
        let ev = |attempt, outcome| CallEvent {
            cloud: Cloud::Aliyun,
            api: "AssignPrivateIpAddresses",
            priority: Priority::Refill,
            attempt,
            rate_limit_wait: Duration::from_millis(1),
            latency: Duration::from_millis(10 * u64::from(attempt)),
            outcome,
        };
        stats.on_call(&ev(
            1,
            CallOutcome::Error {
                kind: "throttled",
                code: Some("Throttling.User"),
            },
        ));
        stats.on_call(&ev(
            2,
            CallOutcome::Error {
                kind: "transient",
                code: None,
            },
        ));
        stats.on_call(&ev(3, CallOutcome::Ok));
        let s = stats.api("AssignPrivateIpAddresses");
        assert_eq!((s.calls, s.ok, s.throttled, s.retries), (3, 1, 1, 2));
        assert_eq!(s.errors.get("Throttling.User"), Some(&1));
        assert_eq!(s.errors.get("transient"), Some(&1));
        assert_eq!(s.latency_max, Duration::from_millis(30));
        assert_eq!(s.latency_total, Duration::from_millis(60));
        assert_eq!(stats.api("Nope"), ApiStats::default());
    }
}
