//! Retries and the one path every cloud call takes: rate limiter, attempt, observer, backoff.
//!
//! Throttling, 5xx and timeouts ([`ProviderError::is_retryable`]) are retried with exponential
//! backoff and full jitter (at least the cloud's `retry-after`), until the policy's time budget
//! is spent; then [`ProviderError::RetriesExhausted`] carries the last error. The attempt
//! closure is called again unchanged, so it must reuse its idempotency token; this module never
//! makes one up.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::error::ProviderError;
use crate::observe::{CallEvent, CallObserver, CallOutcome};
use crate::provider::Cloud;
use crate::ratelimit::{ApiRateLimiter, Priority};

/// When and how long to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Backoff before the first retry (doubled after every attempt).
    pub initial_backoff: Duration,
    /// Largest backoff between two attempts.
    pub max_backoff: Duration,
    /// Total time budget from the first attempt; no retry starts after it.
    pub max_elapsed: Duration,
    /// Most attempts, the first included (0 or 1: no retries).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 200 ms doubling to 10 s, at most 2 minutes and 20 attempts.
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(120),
            max_attempts: 20,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The delay before attempt `attempt + 1`: full jitter over the exponential ceiling, never
    /// less than the cloud's `retry_after`.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        let ceiling = self
            .initial_backoff
            .saturating_mul(exp)
            .min(self.max_backoff);
        let floor = self.initial_backoff / 2;
        let jittered = if ceiling > floor {
            rand::thread_rng().gen_range(floor..=ceiling)
        } else {
            ceiling
        };
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.max_backoff)),
            None => jittered,
        }
    }
}

/// Rate limiter, retry policy and observer, shared by one provider's calls.
#[derive(Debug, Clone)]
pub(crate) struct CallRunner {
    pub(crate) cloud: Cloud,
    pub(crate) limiter: Arc<ApiRateLimiter>,
    pub(crate) retry: RetryPolicy,
    pub(crate) observer: Arc<dyn CallObserver>,
}

impl CallRunner {
    /// Run `attempt` under the rate limiter, retrying retryable failures per the policy.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        api: &'static str,
        priority: Priority,
        mut attempt: F,
    ) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let start = tokio::time::Instant::now();
        let mut n = 0u32;
        loop {
            n += 1;
            let rate_limit_wait = self.limiter.acquire(api, priority).await;
            let sent = tokio::time::Instant::now();
            let result = attempt().await;
            let latency = sent.elapsed();
            let outcome = match &result {
                Ok(_) => CallOutcome::Ok,
                Err(e) => CallOutcome::Error {
                    kind: e.kind(),
                    code: e.code(),
                },
            };
            self.observer.on_call(&CallEvent {
                cloud: self.cloud,
                api,
                priority,
                attempt: n,
                rate_limit_wait,
                latency,
                outcome,
            });
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            let retry_after = match &err {
                ProviderError::Throttled { retry_after, .. } => *retry_after,
                _ => None,
            };
            let delay = self.retry.backoff(n, retry_after);
            let elapsed = start.elapsed();
            if n >= self.retry.max_attempts.max(1) || elapsed + delay > self.retry.max_elapsed {
                tracing::warn!(api, attempts = n, ?elapsed, error = %err, "giving up on cloud call");
                return Err(ProviderError::RetriesExhausted {
                    api,
                    attempts: n,
                    elapsed,
                    last: Box::new(err),
                });
            }
            tracing::debug!(api, attempt = n, ?delay, error = %err, "retrying cloud call");
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::CallStats;
    use crate::ratelimit::{Rate, RateLimitConfig};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn runner(retry: RetryPolicy, stats: Arc<CallStats>) -> CallRunner {
        CallRunner {
            cloud: Cloud::Aliyun,
            limiter: ApiRateLimiter::new(RateLimitConfig::uniform(Rate {
                per_second: 1000.0,
                burst: 100,
            }))
            .unwrap(),
            retry,
            observer: stats,
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(10),
            max_elapsed: Duration::from_secs(5),
            max_attempts: 10,
        }
    }

    fn throttled() -> ProviderError {
        ProviderError::Throttled {
            api: "X",
            code: "Throttling".into(),
            retry_after: None,
            request_id: None,
        }
    }

    #[test]
    fn backoff_grows_and_respects_bounds() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        for attempt in 1..30 {
            let d = p.backoff(attempt, None);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
        assert!(p.backoff(1, None) <= Duration::from_millis(100));
        assert!(p.backoff(2, Some(Duration::from_millis(700))) >= Duration::from_millis(700));
        // A huge retry-after is capped by max_backoff.
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(60))),
            Duration::from_secs(1)
        );
    }

    #[tokio::test]
    async fn retries_until_success_with_same_closure() {
        let stats = Arc::new(CallStats::new());
        let r = runner(fast(), stats.clone());
        let tries = AtomicU32::new(0);
        let out = r
            .run("X", Priority::Refill, || {
                let n = tries.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => Err(throttled()),
                        1 => Err(ProviderError::transport("X", "Timeout", "timed out")),
                        _ => Ok(n),
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(out, 2);
        let s = stats.api("X");
        assert_eq!((s.calls, s.ok, s.throttled, s.retries), (3, 1, 1, 2));
    }

    #[tokio::test]
    async fn non_retryable_fails_at_once() {
        let stats = Arc::new(CallStats::new());
        let r = runner(fast(), stats.clone());
        let err = r
            .run("X", Priority::Refill, || async {
                Err::<(), _>(ProviderError::NotFound {
                    api: "X",
                    code: "InvalidEniId.NotFound".into(),
                    message: String::new(),
                    request_id: None,
                })
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::NotFound { .. }));
        assert_eq!(stats.api("X").calls, 1);
    }

    #[tokio::test]
    async fn gives_up_with_clear_error() {
        let stats = Arc::new(CallStats::new());
        let mut policy = fast();
        policy.max_elapsed = Duration::from_millis(100);
        policy.max_attempts = 1000;
        let r = runner(policy, stats.clone());
        let start = std::time::Instant::now();
        let err = r
            .run("X", Priority::Refill, || async {
                Err::<(), _>(throttled())
            })
            .await
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_millis(500));
        match &err {
            ProviderError::RetriesExhausted { attempts, last, .. } => {
                assert!(*attempts > 2);
                assert!(matches!(**last, ProviderError::Throttled { .. }));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("giving up after"));
        // max_attempts bounds too.
        let r = runner(
            RetryPolicy {
                max_attempts: 3,
                ..fast()
            },
            stats,
        );
        let err = r
            .run("Y", Priority::Refill, || async {
                Err::<(), _>(throttled())
            })
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            ProviderError::RetriesExhausted { attempts: 3, .. }
        ));
    }
}
