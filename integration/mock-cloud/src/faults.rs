//! Throttling and injected failures, and the per-action call counters.
//!
//! Decides, per call, whether it is throttled, fails, is answered late or has its connection
//! dropped; it never changes the cloud's state.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::ApiError;
use crate::world::{Faults, Timing};

/// What to do with one call, decided before it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Wait this long first.
    pub latency: Duration,
    /// Answer this error instead of running the call.
    pub fail: Option<ApiError>,
    /// Run the call, then close the connection without answering.
    pub drop: bool,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Counters for one action.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ActionCalls {
    /// Every call.
    pub count: u64,
    /// Calls that succeeded (including dropped answers).
    pub ok: u64,
    /// Successful calls whose answer was dropped.
    pub dropped: u64,
    /// Failed calls by error code.
    pub errors: BTreeMap<String, u64>,
}

/// Fault settings in force, rate-limit state and counters.
#[derive(Debug)]
pub struct FaultState {
    /// Settings in force.
    pub faults: Faults,
    buckets: HashMap<String, Bucket>,
    minute: HashMap<String, VecDeque<Instant>>,
    /// Counters per action.
    pub calls: BTreeMap<String, ActionCalls>,
}

/// The body of `PUT /_admin/faults`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultUpdate {
    /// Replaces the faults.
    #[serde(default)]
    pub faults: Option<Faults>,
    /// Replaces the timing.
    #[serde(default)]
    pub timing: Option<Timing>,
    /// Replaces the instance types.
    #[serde(default)]
    pub instance_types: Option<Vec<crate::world::InstanceType>>,
}

impl FaultState {
    /// Starts with these settings.
    pub fn new(faults: Faults) -> FaultState {
        FaultState {
            faults,
            buckets: HashMap::new(),
            minute: HashMap::new(),
            calls: BTreeMap::new(),
        }
    }

    /// Replaces the settings and forgets rate-limit history.
    pub fn replace(&mut self, faults: Faults) {
        self.faults = faults;
        self.buckets.clear();
        self.minute.clear();
    }

    /// Decides the fate of one call of `action`.
    pub fn plan(&mut self, action: &str, now: Instant) -> Plan {
        let f = self.faults.for_action(action).clone();
        let latency = f.latency_ms.pick();
        let mut retry_after: Option<Duration> = None;
        if let Some(per_min) = f.per_minute {
            let q = self.minute.entry(action.to_string()).or_default();
            while q
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
            {
                q.pop_front();
            }
            if q.len() as u32 >= per_min {
                let oldest = *q.front().expect("len >= per_min >= 1");
                retry_after =
                    Some(Duration::from_secs(60).saturating_sub(now.duration_since(oldest)));
            }
        }
        if retry_after.is_none() {
            if let Some(per_sec) = f.per_second {
                let b = self.buckets.entry(action.to_string()).or_insert(Bucket {
                    tokens: per_sec as f64,
                    last: now,
                });
                let elapsed = now.duration_since(b.last).as_secs_f64();
                b.tokens = (b.tokens + elapsed * per_sec as f64).min(per_sec as f64);
                b.last = now;
                if b.tokens >= 1.0 {
                    b.tokens -= 1.0;
                } else {
                    retry_after = Some(Duration::from_secs_f64((1.0 - b.tokens) / per_sec as f64));
                }
            }
        }
        if let Some(wait) = retry_after {
            let mut e = ApiError::new(
                self.faults.throttle_status.unwrap_or(400),
                "Throttling.User",
                "Request was denied due to user flow control.",
            );
            e.retry_after_ms = Some(wait.as_millis().max(1) as u64);
            return Plan {
                latency,
                fail: Some(e),
                drop: false,
            };
        }
        if f.per_minute.is_some() {
            self.minute
                .entry(action.to_string())
                .or_default()
                .push_back(now);
        }
        let roll: f64 = rand::random();
        if roll < f.error_rate {
            let e = if roll < f.error_rate / 2.0 {
                ApiError::new(
                    500,
                    "InternalError",
                    "The request processing has failed due to some unknown error.",
                )
            } else {
                ApiError::new(
                    503,
                    "ServiceUnavailable",
                    "The request has failed due to a temporary failure of the server.",
                )
            };
            return Plan {
                latency,
                fail: Some(e),
                drop: false,
            };
        }
        Plan {
            latency,
            fail: None,
            drop: rand::random::<f64>() < f.drop_rate,
        }
    }

    /// Counts a finished call.
    pub fn record(&mut self, action: &str, outcome: Result<(), &str>, dropped: bool) {
        let c = self.calls.entry(action.to_string()).or_default();
        c.count += 1;
        match outcome {
            Ok(()) => {
                c.ok += 1;
                if dropped {
                    c.dropped += 1;
                }
            }
            Err(code) => *c.errors.entry(code.to_string()).or_default() += 1,
        }
    }

    /// The counters as `GET /_admin/calls` shows them.
    pub fn calls_json(&self) -> serde_json::Value {
        serde_json::json!({
            "total": self.calls.values().map(|c| c.count).sum::<u64>(),
            "actions": self.calls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::ActionFaults;

    fn limited(per_second: Option<u32>, per_minute: Option<u32>) -> FaultState {
        let mut f = Faults::default();
        f.actions.insert(
            "AssignPrivateIpAddresses".into(),
            ActionFaults {
                per_second,
                per_minute,
                ..Default::default()
            },
        );
        FaultState::new(f)
    }

    #[test]
    fn token_bucket_allows_burst_then_refills() {
        let mut s = limited(Some(3), None);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(s.plan("AssignPrivateIpAddresses", t0).fail.is_none());
        }
        let e = s.plan("AssignPrivateIpAddresses", t0).fail.unwrap();
        assert_eq!(e.code, "Throttling.User");
        assert!(e.retry_after_ms.unwrap() > 300 && e.retry_after_ms.unwrap() <= 334);
        assert!(s
            .plan("AssignPrivateIpAddresses", t0 + Duration::from_millis(340))
            .fail
            .is_none());
        assert!(
            s.plan("DescribeNetworkInterfaces", t0).fail.is_none(),
            "other actions are free"
        );
    }

    #[test]
    fn minute_window_rolls() {
        let mut s = limited(None, Some(2));
        let t0 = Instant::now();
        assert!(s.plan("AssignPrivateIpAddresses", t0).fail.is_none());
        assert!(s
            .plan("AssignPrivateIpAddresses", t0 + Duration::from_secs(10))
            .fail
            .is_none());
        let e = s
            .plan("AssignPrivateIpAddresses", t0 + Duration::from_secs(20))
            .fail
            .unwrap();
        assert_eq!(e.retry_after_ms, Some(40_000));
        assert!(s
            .plan("AssignPrivateIpAddresses", t0 + Duration::from_secs(61))
            .fail
            .is_none());
    }
}
