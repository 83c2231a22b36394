//! The only code in the project that talks to a cloud.
//!
//! - [`CloudProvider`]: one async trait at the level the ENI pool thinks in (learn the node,
//!   list/create/attach/wait/detach/delete ENIs, assign/unassign addresses, free addresses per
//!   vSwitch/subnet), taking option structs.
//! - [`ProviderError`]: every vendor error code mapped to one typed variant, in exactly one
//!   place per vendor; the pool decides on variants, never on strings.
//! - [`aliyun`]: Alibaba Cloud ECS (reqwest + rustls, signature V1/V3, credentials chain with
//!   RAM role refresh). [`aws`]: AWS EC2 (aws-sdk-ec2).
//! - [`metadata`]: instance metadata clients for both clouds.
//! - [`ApiRateLimiter`]: per-API token buckets shared process-wide, with [`Priority`] among
//!   waiters; [`RetryPolicy`]: exponential backoff with jitter on throttling, 5xx and timeouts,
//!   reusing the idempotency token, bounded in time.
//! - [`CallObserver`] / [`CallStats`]: per-API call counts, latency, throttles and error codes.
#![deny(missing_docs)]

pub mod aliyun;
pub mod aws;
mod error;
mod http;
pub mod metadata;
mod observe;
mod provider;
mod ratelimit;
mod retry;

use std::sync::Arc;

pub use error::ProviderError;
pub use observe::{ApiStats, CallEvent, CallObserver, CallOutcome, CallStats, NoopObserver};
pub use provider::{
    AddressCount, AssignAddressesOptions, AssignedAddresses, AttachEniOptions, Attachment, Cloud,
    CloudProvider, CreateEniOptions, DeleteEniOptions, DetachEniOptions, Eni, EniStatus,
    IdempotencyToken, ListEnisOptions, NodeInfo, NodeLimits, SubnetCapacity, SubnetCapacityOptions,
    UnassignAddressesOptions, WaitCondition, WaitEniOptions,
};
pub use ratelimit::{ApiRateLimiter, Priority, Rate, RateLimitConfig};
pub use retry::RetryPolicy;

/// What every call of a provider shares: the process-wide rate limiter, the retry policy and
/// the observer. Build one limiter per process and hand clones of the `Arc` to every provider.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// The rate limiter (share one per process).
    pub limiter: Arc<ApiRateLimiter>,
    /// When to retry.
    pub retry: RetryPolicy,
    /// Who hears about every attempt.
    pub observer: Arc<dyn CallObserver>,
}

impl CallSettings {
    /// Settings with this limiter, the default retry policy and no observer.
    pub fn new(limiter: Arc<ApiRateLimiter>) -> Self {
        CallSettings {
            limiter,
            retry: RetryPolicy::default(),
            observer: Arc::new(NoopObserver),
        }
    }
}
