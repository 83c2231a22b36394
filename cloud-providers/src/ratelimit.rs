//! Client-side rate limiting: one token bucket (governor GCRA) per API action, shared by
//! every caller holding the same [`ApiRateLimiter`], with priority among waiters.
//!
//! A caller that has to wait joins its API's queue; the bucket's next token always goes to the
//! waiter of the highest [`Priority`] (a pod waiting, then a pool refill, then a release), first
//! come first served within a priority. This module does not retry and does not talk to a
//! cloud.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

use crate::error::ProviderError;

/// Who is waiting for a call: decides the order in the rate limiter's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// A pod is waiting for an address right now. Goes first.
    PodWaiting,
    /// Keeping the warm pool above its low watermark.
    #[default]
    Refill,
    /// Giving addresses or ENIs back above the high watermark; can wait.
    Release,
}

impl Priority {
    /// A lower-case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::PodWaiting => "pod_waiting",
            Priority::Refill => "refill",
            Priority::Release => "release",
        }
    }
}

/// A sustained rate and a burst for one API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Calls per second, sustained (fractions allowed: 500 per minute is `8.33`).
    pub per_second: f64,
    /// Calls allowed at once after an idle period (at least 1).
    pub burst: u32,
}

impl Rate {
    /// `n` calls per minute, with a burst of `burst`.
    pub fn per_minute(n: u32, burst: u32) -> Rate {
        Rate {
            per_second: f64::from(n) / 60.0,
            burst,
        }
    }

    fn quota(&self) -> Result<Quota, ProviderError> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return Err(ProviderError::Config {
                message: format!("rate must be a positive number, got {}", self.per_second),
            });
        }
        let burst = std::num::NonZeroU32::new(self.burst).ok_or_else(|| ProviderError::Config {
            message: "burst must be at least 1".into(),
        })?;
        let period = Duration::from_secs_f64(1.0 / self.per_second);
        Quota::with_period(period)
            .map(|q| q.allow_burst(burst))
            .ok_or_else(|| ProviderError::Config {
                message: format!("rate {} per second is too high", self.per_second),
            })
    }
}

/// Rates per API action.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// The rate of actions without an entry in `per_api`.
    pub default: Rate,
    /// Rates by vendor action name (`CreateNetworkInterface`, `AssignPrivateIpAddresses`, ...).
    pub per_api: HashMap<String, Rate>,
}

impl Default for RateLimitConfig {
    /// Terway's published client-side limits per minute: create/attach/delete 500,
    /// describe 800, detach/assign/unassign 400; 300 for anything else; bursts of 10.
    /// The action names are the same on Alibaba Cloud and EC2.
    fn default() -> Self {
        let mut per_api = HashMap::new();
        for (api, n) in [
            ("CreateNetworkInterface", 500),
            ("AttachNetworkInterface", 500),
            ("DeleteNetworkInterface", 500),
            ("DescribeNetworkInterfaces", 800),
            ("DetachNetworkInterface", 400),
            ("AssignPrivateIpAddresses", 400),
            ("UnassignPrivateIpAddresses", 400),
        ] {
            per_api.insert(api.to_string(), Rate::per_minute(n, 10));
        }
        RateLimitConfig {
            default: Rate::per_minute(300, 10),
            per_api,
        }
    }
}

impl RateLimitConfig {
    /// The same rate for every API.
    pub fn uniform(rate: Rate) -> Self {
        RateLimitConfig {
            default: rate,
            per_api: HashMap::new(),
        }
    }

    /// This configuration with `api` at `rate`.
    pub fn with_api(mut self, api: &str, rate: Rate) -> Self {
        self.per_api.insert(api.to_string(), rate);
        self
    }
}

#[derive(Debug)]
struct Gate {
    bucket: DefaultDirectRateLimiter,
    /// Waiters in order: (priority, arrival sequence).
    queue: Mutex<BTreeSet<(Priority, u64)>>,
    changed: Notify,
}

/// Per-API token buckets with prioritized waiting. Clone the `Arc` to share it: every
/// provider built with the same limiter draws from the same buckets.
#[derive(Debug)]
pub struct ApiRateLimiter {
    config: RateLimitConfig,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
    seq: AtomicU64,
    clock: DefaultClock,
}

/// Removes a waiter from its queue however the wait ends (also when the future is dropped).
struct QueueSlot<'a> {
    gate: &'a Gate,
    key: (Priority, u64),
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        let mut q = self.gate.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.remove(&self.key);
        drop(q);
        self.gate.changed.notify_waiters();
    }
}

impl ApiRateLimiter {
    /// A limiter with these rates; fails if a rate is zero, negative or a burst is 0.
    pub fn new(config: RateLimitConfig) -> Result<Arc<Self>, ProviderError> {
        config.default.quota()?;
        for (api, rate) in &config.per_api {
            rate.quota().map_err(|e| ProviderError::Config {
                message: format!("rate of {api}: {e}"),
            })?;
        }
        Ok(Arc::new(ApiRateLimiter {
            config,
            gates: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            clock: DefaultClock::default(),
        }))
    }

    /// The configured rate of `api`.
    pub fn rate_of(&self, api: &str) -> Rate {
        self.config
            .per_api
            .get(api)
            .copied()
            .unwrap_or(self.config.default)
    }

    fn gate(&self, api: &str) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = gates.get(api) {
            return g.clone();
        }
        // Validated in `new`, so this cannot fail; fall back to one per second regardless.
        let quota = self
            .rate_of(api)
            .quota()
            .unwrap_or_else(|_| Quota::per_second(std::num::NonZeroU32::MIN));
        let gate = Arc::new(Gate {
            bucket: RateLimiter::direct(quota),
            queue: Mutex::new(BTreeSet::new()),
            changed: Notify::new(),
        });
        gates.insert(api.to_string(), gate.clone());
        gate
    }

    /// Wait for a token of `api`'s bucket; returns how long the caller waited. Waiters of a
    /// higher priority get tokens first. Cancel-safe: dropping the future leaves the queue.
    pub async fn acquire(&self, api: &str, priority: Priority) -> Duration {
        let start = tokio::time::Instant::now();
        let gate = self.gate(api);
        let key = (priority, self.seq.fetch_add(1, Ordering::Relaxed));
        gate.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
        let _slot = QueueSlot { gate: &gate, key };
        loop {
            let changed = gate.changed.notified();
            tokio::pin!(changed);
            // Register before looking, so a change between the look and the wait is not lost.
            changed.as_mut().enable();
            let head = gate
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .first()
                .copied();
            if head == Some(key) {
                match gate.bucket.check() {
                    Ok(()) => return start.elapsed(),
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(self.clock.now());
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = &mut changed => {}
                        }
                    }
                }
            } else {
                changed.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_rates() {
        let bad = RateLimitConfig::uniform(Rate {
            per_second: 0.0,
            burst: 1,
        });
        assert!(ApiRateLimiter::new(bad).is_err());
        let bad = RateLimitConfig::uniform(Rate {
            per_second: 1.0,
            burst: 0,
        });
        assert!(ApiRateLimiter::new(bad).is_err());
        assert!(ApiRateLimiter::new(RateLimitConfig::default()).is_ok());
    }

    #[tokio::test]
    async fn burst_then_rate() {
        let l = ApiRateLimiter::new(RateLimitConfig::uniform(Rate {
            per_second: 20.0,
            burst: 3,
        }))
        .unwrap();
        let start = std::time::Instant::now();
        for _ in 0..3 {
            l.acquire("A", Priority::Refill).await;
        }
        assert!(start.elapsed() < Duration::from_millis(30));
        for _ in 0..4 {
            l.acquire("A", Priority::Refill).await;
        }
        // 4 more tokens at 20/s take about 200 ms.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(150), "{took:?}");
        // Another API has its own bucket.
        let t = std::time::Instant::now();
        l.acquire("B", Priority::Refill).await;
        assert!(t.elapsed() < Duration::from_millis(30));
    }

    #[tokio::test]
    async fn higher_priority_waiters_go_first() {
        let l = ApiRateLimiter::new(RateLimitConfig::uniform(Rate {
            per_second: 20.0,
            burst: 1,
        }))
        .unwrap();
        // Drain the burst so everyone below has to queue.
        l.acquire("A", Priority::Refill).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Releases arrive first, then refills, then pods.
        for (i, p) in [
            Priority::Release,
            Priority::Release,
            Priority::Refill,
            Priority::Refill,
            Priority::PodWaiting,
            Priority::PodWaiting,
        ]
        .into_iter()
        .enumerate()
        {
            let l = l.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                l.acquire("A", p).await;
                order.lock().unwrap().push((p, i));
            }));
            // Let each task enqueue before the next, so arrival order is defined.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let prios: Vec<Priority> = order.iter().map(|(p, _)| *p).collect();
        // The first release may already have taken the token that freed while the others
        // were still arriving; after that, strict priority order, FIFO within a priority.
        let rest = if prios[0] == Priority::Release && order[0].1 == 0 {
            &order[1..]
        } else {
            &order[..]
        };
        let mut sorted = rest.to_vec();
        sorted.sort();
        assert_eq!(rest, &sorted[..], "order was {order:?}");
        assert_eq!(rest[0].0, Priority::PodWaiting);
    }

    #[tokio::test]
    async fn cancelled_waiter_leaves_queue() {
        let l = ApiRateLimiter::new(RateLimitConfig::uniform(Rate {
            per_second: 10.0,
            burst: 1,
        }))
        .unwrap();
        l.acquire("A", Priority::Refill).await;
        // A pod waiter that gives up must not block the refill behind it.
        let r = tokio::time::timeout(
            Duration::from_millis(10),
            l.acquire("A", Priority::PodWaiting),
        )
        .await;
        assert!(r.is_err());
        let waited = tokio::time::timeout(
            Duration::from_millis(500),
            l.acquire("A", Priority::Release),
        )
        .await;
        assert!(waited.is_ok());
    }
}
