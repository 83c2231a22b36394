//! The one error type every provider returns.
//!
//! Vendor error codes are mapped to these variants in exactly one place per vendor
//! (`aliyun::errors`, `aws::errors`); callers decide on variants, never on code strings.
//! This module owns no mapping itself.

use std::time::Duration;

/// What went wrong in a cloud call, in terms the pool can act on.
///
/// Every variant that came from the cloud carries the vendor's `code`, its `message` and the
/// `request_id` (for support tickets); `api` is the vendor's action name.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The cloud refused the call because of API rate limiting. Retried automatically;
    /// returned only inside [`ProviderError::RetriesExhausted`] or when retries are off.
    #[error("{api}: throttled by the cloud ({code}){}, request id {}", fmt_retry_after(.retry_after), fmt_opt(.request_id))]
    Throttled {
        /// The API action.
        api: &'static str,
        /// The vendor's error code (`Throttling.User`, `RequestLimitExceeded`, ...).
        code: String,
        /// How long the cloud asked us to wait, when it said.
        retry_after: Option<Duration>,
        /// The vendor's request id.
        request_id: Option<String>,
    },
    /// The vSwitch (Alibaba Cloud) or subnet (AWS) has no free addresses left for the request.
    #[error("{api}: no free addresses in vSwitch/subnet {}: {code}: {message}", .vswitch.as_deref().unwrap_or("(unknown)"))]
    IpExhausted {
        /// The API action.
        api: &'static str,
        /// The exhausted vSwitch or subnet, when it could be determined.
        vswitch: Option<String>,
        /// The vendor's error code.
        code: String,
        /// The vendor's message.
        message: String,
        /// The vendor's request id.
        request_id: Option<String>,
    },
    /// The instance already has as many ENIs as its type allows.
    #[error("{api}: ENI limit of the instance reached: {code}: {message}")]
    EniLimit {
        /// The API action.
        api: &'static str,
        /// The vendor's error code.
        code: String,
        /// The vendor's message.
        message: String,
        /// The vendor's request id.
        request_id: Option<String>,
    },
    /// The ENI (or the account quota) cannot hold more private addresses.
    #[error("{api}: address limit reached: {code}: {message}")]
    IpLimit {
        /// The API action.
        api: &'static str,
        /// The vendor's error code.
        code: String,
        /// The vendor's message.
        message: String,
        /// The vendor's request id.
        request_id: Option<String>,
    },
    /// The ENI, instance, vSwitch/subnet or security group does not exist.
    #[error("{api}: not found: {code}: {message}")]
    NotFound {
        /// The API action.
        api: &'static str,
        /// The vendor's error code.
        code: String,
        /// The vendor's message.
        message: String,
        /// The vendor's request id.
        request_id: Option<String>,
    },
    /// The resource is in a state that does not allow the operation (an ENI still attaching,
    /// an attach that fell back to `Available`, an address already assigned, ...).
    #[error("{api}: invalid state: {code}: {message}")]
    InvalidState {
        /// The API action (or the waiting operation).
        api: &'static str,
        /// The vendor's error code, or a code of this crate for states it observed itself.
        code: String,
        /// The vendor's message.
        message: String,
        /// The vendor's request id.
        request_id: Option<String>,
    },
    /// Credentials are missing, invalid, expired or lack a permission.
    #[error("{api}: authentication or authorization failed: {code}: {message}")]
    Auth {
        /// The API action, or `credentials` when fetching credentials failed.
        api: &'static str,
        /// The vendor's error code, or a code of this crate.
        code: String,
        /// What happened.
        message: String,
        /// The vendor's request id.
        request_id: Option<String>,
    },
    /// A failure worth retrying: 5xx, a timeout, a dropped connection. Retried automatically.
    #[error("{api}: transient failure: {code}: {message}")]
    Transient {
        /// The API action.
        api: &'static str,
        /// The vendor's error code, or `Timeout` / `Connection` / `Transport` for failures
        /// below HTTP.
        code: String,
        /// What happened.
        message: String,
        /// The vendor's request id.
        request_id: Option<String>,
    },
    /// Any other vendor error (invalid parameters, idempotency token mismatch, ...). Not retried.
    #[error("{api}: {code}: {message} (request id {})", fmt_opt(.request_id))]
    Other {
        /// The API action.
        api: &'static str,
        /// The vendor's error code.
        code: String,
        /// The vendor's message.
        message: String,
        /// The vendor's request id.
        request_id: Option<String>,
    },
    /// The caller asked for something this crate refuses before calling the cloud
    /// (mixing secondary IPs and prefixes, an empty request, an over-long token, ...).
    #[error("invalid request: {message}")]
    InvalidInput {
        /// What is wrong with the request.
        message: String,
    },
    /// The cloud (or the metadata service) answered something this crate cannot read.
    #[error("{api}: unexpected response: {message}")]
    Malformed {
        /// The API action or metadata path.
        api: &'static str,
        /// What could not be read.
        message: String,
    },
    /// A wait for an ENI state did not finish in time.
    #[error("waiting for ENI {eni_id} to become {wanted} timed out after {waited:?} (last status {last_status})")]
    WaitTimeout {
        /// The ENI waited on.
        eni_id: String,
        /// The condition waited for.
        wanted: &'static str,
        /// The status seen last.
        last_status: String,
        /// How long the wait lasted.
        waited: Duration,
    },
    /// Retries of a throttled or transient failure used up the retry budget.
    #[error("{api}: giving up after {attempts} attempts in {elapsed:?}: {last}")]
    RetriesExhausted {
        /// The API action.
        api: &'static str,
        /// How many attempts were made.
        attempts: u32,
        /// Time spent from the first attempt to giving up.
        elapsed: Duration,
        /// The last attempt's error.
        #[source]
        last: Box<ProviderError>,
    },
    /// The provider could not be set up (bad configuration, HTTP client construction).
    #[error("configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
}

fn fmt_opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

fn fmt_retry_after(v: &Option<Duration>) -> String {
    match v {
        Some(d) => format!(", retry after {d:?}"),
        None => String::new(),
    }
}

impl ProviderError {
    /// The error that decided the outcome: for [`ProviderError::RetriesExhausted`] the last
    /// attempt's error, otherwise `self`. Match on this to learn *why* retries ran out.
    pub fn root(&self) -> &ProviderError {
        match self {
            ProviderError::RetriesExhausted { last, .. } => last.root(),
            other => other,
        }
    }

    /// Whether a retry with the same idempotency token may succeed: throttling and transient
    /// failures.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Throttled { .. } | ProviderError::Transient { .. }
        )
    }

    /// Whether this (or the root cause) is [`ProviderError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self.root(), ProviderError::NotFound { .. })
    }

    /// The vendor error code, when the error came from the cloud.
    pub fn code(&self) -> Option<&str> {
        match self.root() {
            ProviderError::Throttled { code, .. }
            | ProviderError::IpExhausted { code, .. }
            | ProviderError::EniLimit { code, .. }
            | ProviderError::IpLimit { code, .. }
            | ProviderError::NotFound { code, .. }
            | ProviderError::InvalidState { code, .. }
            | ProviderError::Auth { code, .. }
            | ProviderError::Transient { code, .. }
            | ProviderError::Other { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A short, stable label of the variant, for metrics (`throttled`, `ip_exhausted`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Throttled { .. } => "throttled",
            ProviderError::IpExhausted { .. } => "ip_exhausted",
            ProviderError::EniLimit { .. } => "eni_limit",
            ProviderError::IpLimit { .. } => "ip_limit",
            ProviderError::NotFound { .. } => "not_found",
            ProviderError::InvalidState { .. } => "invalid_state",
            ProviderError::Auth { .. } => "auth",
            ProviderError::Transient { .. } => "transient",
            ProviderError::Other { .. } => "other",
            ProviderError::InvalidInput { .. } => "invalid_input",
            ProviderError::Malformed { .. } => "malformed",
            ProviderError::WaitTimeout { .. } => "wait_timeout",
            ProviderError::RetriesExhausted { .. } => "retries_exhausted",
            ProviderError::Config { .. } => "config",
        }
    }

    pub(crate) fn invalid_input(message: impl Into<String>) -> Self {
        ProviderError::InvalidInput {
            message: message.into(),
        }
    }

    pub(crate) fn malformed(api: &'static str, message: impl Into<String>) -> Self {
        ProviderError::Malformed {
            api,
            message: message.into(),
        }
    }

    /// A transport-level failure (no HTTP answer), always transient.
    pub(crate) fn transport(api: &'static str, code: &str, message: impl Into<String>) -> Self {
        ProviderError::Transient {
            api,
            code: code.to_string(),
            message: message.into(),
            request_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_unwraps_retries() {
        let e = ProviderError::RetriesExhausted {
            api: "X",
            attempts: 3,
            elapsed: Duration::from_secs(1),
            last: Box::new(ProviderError::Throttled {
                api: "X",
                code: "Throttling".into(),
                retry_after: None,
                request_id: None,
            }),
        };
        assert!(matches!(e.root(), ProviderError::Throttled { .. }));
        assert_eq!(e.code(), Some("Throttling"));
        assert!(!e.is_retryable());
        assert!(e.root().is_retryable());
        assert!(e.to_string().contains("giving up after 3 attempts"));
    }
}
