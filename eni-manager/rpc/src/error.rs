//! The error a manager answers with: a machine-readable [`ErrorCode`] plus a message for
//! humans. Clients decide on the code, never on the message text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why the manager could not do what was asked. On the wire: the variant's name as a
/// string (`"PoolExhausted"`).
///
/// A client that meets a code it does not know (sent by a newer manager) reads it as
/// [`ErrorCode::Internal`]; adding a code is therefore a compatible change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request was malformed: bad JSON, an unknown op, an unknown or missing field, a
    /// frame over the size limit.
    BadRequest,
    /// The client speaks a protocol version the manager does not.
    VersionMismatch,
    /// `check`: nothing is allocated for this container and interface.
    NotFound,
    /// No idle address became available before the request's deadline.
    PoolExhausted,
    /// The vSwitches (subnets) the node may use have no free addresses left.
    VSwitchExhausted,
    /// The instance already has as many ENIs (or addresses per ENI) as its type allows.
    EniLimit,
    /// The cloud API is throttling this node; the pool could not be refilled in time.
    CloudThrottled,
    /// The cloud API or the metadata service cannot be reached.
    CloudUnavailable,
    /// The request's deadline passed while the manager was working on it.
    Timeout,
    /// The manager is stopping and takes no new work.
    ShuttingDown,
    /// Anything else: a bug or an unexpected state; the message says what.
    Internal,
    /// The request is well formed but cannot be granted as asked on this node: a host port
    /// another pod holds, host ports on a node that does not serve them. The message says
    /// what to change; asking again unchanged fails again.
    Refused,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::VersionMismatch,
        ErrorCode::NotFound,
        ErrorCode::PoolExhausted,
        ErrorCode::VSwitchExhausted,
        ErrorCode::EniLimit,
        ErrorCode::CloudThrottled,
        ErrorCode::CloudUnavailable,
        ErrorCode::Timeout,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::Refused,
    ];

    /// The code's name as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BadRequest",
            ErrorCode::VersionMismatch => "VersionMismatch",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::PoolExhausted => "PoolExhausted",
            ErrorCode::VSwitchExhausted => "VSwitchExhausted",
            ErrorCode::EniLimit => "EniLimit",
            ErrorCode::CloudThrottled => "CloudThrottled",
            ErrorCode::CloudUnavailable => "CloudUnavailable",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::ShuttingDown => "ShuttingDown",
            ErrorCode::Internal => "Internal",
            ErrorCode::Refused => "Refused",
        }
    }

    /// Whether the same request may succeed if simply tried again later, without anyone
    /// changing the node or the cloud account (the CNI reports these as "try again later").
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::PoolExhausted
                | ErrorCode::CloudThrottled
                | ErrorCode::CloudUnavailable
                | ErrorCode::Timeout
                | ErrorCode::ShuttingDown
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not the name of any [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code {0:?}")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == s)
            .ok_or_else(|| UnknownErrorCode(s.to_owned()))
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(name.parse().unwrap_or(ErrorCode::Internal))
    }
}

/// The manager's answer when a request fails: `{"code":"PoolExhausted","message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcError {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people: names the cause (which vSwitch, which limit, ...).
    pub message: String,
}

impl RpcError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// A [`ErrorCode::BadRequest`] error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// A [`ErrorCode::NotFound`] error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// An [`ErrorCode::Internal`] error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}
