//! The plugin's one error type, [`CniError`]: a CNI error code, a message that names the
//! cause and what to do, and details. Every failure of every command ends as one of these,
//! and `main` prints it (the only place that writes an error to stdout).
//!
//! Also owns the mapping from the manager's answers ([`eni_rpc::ClientError`]) to codes.
//! It must not print or log anything itself.

use eni_rpc::{ClientError, ErrorCode};
use serde::Serialize;

/// CNI spec code 1: the netconf's `cniVersion` is not supported.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// CNI spec code 2: a netconf field is not supported.
pub const UNSUPPORTED_FIELD: u32 = 2;
/// CNI spec code 3: the container (its netns or its allocation) is unknown.
pub const UNKNOWN_CONTAINER: u32 = 3;
/// CNI spec code 4: a required environment variable is missing or invalid.
pub const INVALID_ENV: u32 = 4;
/// CNI spec code 5: I/O failure (stdin, the log file, the state directory).
pub const IO_FAILURE: u32 = 5;
/// CNI spec code 6: the netconf (or prevResult) could not be decoded.
pub const DECODE_FAILURE: u32 = 6;
/// CNI spec code 7: the netconf is invalid.
pub const INVALID_NETCONF: u32 = 7;
/// CNI spec code 11: try again later (transient).
pub const TRY_AGAIN_LATER: u32 = 11;
/// CNI spec code 50 (STATUS): the plugin cannot serve ADD now.
pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
/// CNI spec code 51 (STATUS): the plugin can serve ADD with limited connectivity.
pub const PLUGIN_LIMITED: u32 = 51;
/// Ours: no idle address in the pool before the deadline.
pub const POOL_EXHAUSTED: u32 = 100;
/// Ours: the node's vSwitches (subnets) have no free addresses.
pub const VSWITCH_EXHAUSTED: u32 = 101;
/// Ours: the node has all the ENIs and addresses its instance type allows (node full).
pub const ENI_LIMIT: u32 = 102;
/// Ours: the cloud API throttles the node.
pub const CLOUD_THROTTLED: u32 = 103;
/// Ours: the cloud API or metadata service cannot be reached.
pub const CLOUD_UNAVAILABLE: u32 = 104;
/// Ours: eni-manager cannot be reached (no socket, refused, no answer in time).
pub const MANAGER_UNREACHABLE: u32 = 105;
/// Ours: eni-manager refused the request as malformed or of another protocol version.
pub const MANAGER_PROTOCOL: u32 = 106;
/// Ours: eni-manager failed internally.
pub const MANAGER_INTERNAL: u32 = 107;
/// Ours: the kernel refused to wire (or unwire) the pod's datapath.
pub const DATAPATH: u32 = 108;
/// Ours: eni-manager refused the request as asked (a host port another pod holds, host
/// ports on a node that does not serve them); the message says what to change.
pub const REFUSED: u32 = 109;

/// A CNI error, as printed on stdout: `{"cniVersion","code","msg","details"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    /// The CNI error code.
    pub code: u32,
    /// A short message naming the cause and what to do.
    pub msg: String,
    /// More detail (the manager's or the kernel's own words, every problem found).
    pub details: String,
}

impl CniError {
    /// An error with this code, message and details.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The JSON object the spec prescribes, in `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_value(Wire {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_default()
    }

    /// A datapath (kernel) failure while doing `what`.
    pub fn datapath(what: &str, err: &eni_kernel::Error) -> Self {
        CniError::new(
            DATAPATH,
            format!("{what}: the kernel refused: {err}"),
            "nothing was left half-built; the kernel's answer is above (see the plugin log)",
        )
    }
}

/// Maps a failed call to the manager to a CNI error; `op` is the CNI command (`"ADD"`).
pub fn from_client(op: &str, err: &ClientError) -> CniError {
    if err.is_unreachable() {
        return CniError::new(
            MANAGER_UNREACHABLE,
            format!("{op}: eni-manager is unreachable: {err}"),
            "check that the eni-manager DaemonSet pod runs on this node and that the netconf's \
             `socket` matches its socket_path; the runtime will retry",
        );
    }
    let Some(remote) = err.remote() else {
        return CniError::new(
            MANAGER_PROTOCOL,
            format!("{op}: invalid answer from eni-manager: {err}"),
            format!(
                "{}; upgrade eni-cni and eni-manager together",
                source_chain(err)
            ),
        );
    };
    let m = &remote.message;
    let (code, msg) = match remote.code {
        ErrorCode::PoolExhausted => (
            POOL_EXHAUSTED,
            format!("{op}: no idle ENI address on this node in time (pool exhausted): {m}; the runtime will retry"),
        ),
        ErrorCode::VSwitchExhausted => (
            VSWITCH_EXHAUSTED,
            format!("{op}: the node's vSwitches/subnets have no free addresses: {m}; add vSwitches or free addresses"),
        ),
        ErrorCode::EniLimit => (
            ENI_LIMIT,
            format!("{op}: the node is full (all ENIs and addresses its instance type allows are in use): {m}; lower max pods or schedule elsewhere"),
        ),
        ErrorCode::CloudThrottled => (
            CLOUD_THROTTLED,
            format!("{op}: the cloud API throttles this node: {m}; the runtime will retry"),
        ),
        ErrorCode::CloudUnavailable => (
            CLOUD_UNAVAILABLE,
            format!("{op}: the cloud API or metadata service is unreachable from eni-manager: {m}"),
        ),
        ErrorCode::Timeout | ErrorCode::ShuttingDown => (
            TRY_AGAIN_LATER,
            format!("{op}: eni-manager could not finish in time ({}): {m}; try again later", remote.code),
        ),
        ErrorCode::NotFound => (
            UNKNOWN_CONTAINER,
            format!("{op}: eni-manager holds no allocation for this container and interface: {m}"),
        ),
        ErrorCode::BadRequest | ErrorCode::VersionMismatch => (
            MANAGER_PROTOCOL,
            format!("{op}: eni-manager refused the request ({}): {m}; upgrade eni-cni and eni-manager together", remote.code),
        ),
        ErrorCode::Refused => (REFUSED, format!("{op}: eni-manager refused the request: {m}")),
        ErrorCode::Internal => (
            MANAGER_INTERNAL,
            format!("{op}: eni-manager failed: {m}; see the eni-manager log"),
        ),
    };
    CniError::new(code, msg, format!("eni-manager error code {}", remote.code))
}

/// The error and its sources, joined by ": ".
pub fn source_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        s.push_str(": ");
        s.push_str(&e.to_string());
        next = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use eni_rpc::RpcError;

    #[test]
    fn every_manager_code_maps_to_a_documented_cni_code() {
        let expect = [
            (ErrorCode::BadRequest, MANAGER_PROTOCOL),
            (ErrorCode::VersionMismatch, MANAGER_PROTOCOL),
            (ErrorCode::NotFound, UNKNOWN_CONTAINER),
            (ErrorCode::PoolExhausted, POOL_EXHAUSTED),
            (ErrorCode::VSwitchExhausted, VSWITCH_EXHAUSTED),
            (ErrorCode::EniLimit, ENI_LIMIT),
            (ErrorCode::CloudThrottled, CLOUD_THROTTLED),
            (ErrorCode::CloudUnavailable, CLOUD_UNAVAILABLE),
            (ErrorCode::Timeout, TRY_AGAIN_LATER),
            (ErrorCode::ShuttingDown, TRY_AGAIN_LATER),
            (ErrorCode::Internal, MANAGER_INTERNAL),
            (ErrorCode::Refused, REFUSED),
        ];
        assert_eq!(expect.len(), ErrorCode::ALL.len());
        for (code, cni) in expect {
            let e = from_client(
                "ADD",
                &ClientError::Remote(RpcError::new(code, "why it failed")),
            );
            assert_eq!(e.code, cni, "{code}");
            assert!(e.msg.contains("why it failed"), "{}", e.msg);
            assert!(e.msg.starts_with("ADD: "), "{}", e.msg);
        }
    }

    #[test]
    fn json_shape() {
        let v = CniError::new(7, "bad", "").to_json("1.0.0");
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.0.0","code":7,"msg":"bad"})
        );
    }
}
