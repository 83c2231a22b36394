//! The one place where Alibaba Cloud error codes become [`ProviderError`] variants, and where
//! the treat-as-success rules live. Nothing else in the crate looks at Alibaba code strings.

use std::time::Duration;

use crate::error::ProviderError;

/// An Alibaba Cloud error answer, as read from the body and headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ErrorAnswer {
    /// HTTP status.
    pub status: u16,
    /// `Code`.
    pub code: String,
    /// `Message`.
    pub message: String,
    /// `RequestId` (or the `x-acs-request-id` header).
    pub request_id: Option<String>,
    /// `x-acs-retry-after`, milliseconds.
    pub retry_after: Option<Duration>,
}

/// Whether an error answer to `api` means the wanted end state already holds.
///
/// Detaching or deleting an ENI that is gone, and unassigning an address the ENI no longer
/// holds, are done.
pub(crate) fn treat_as_success(api: &str, code: &str) -> bool {
    matches!(
        (api, code),
        ("DetachNetworkInterface", "InvalidEniId.NotFound")
            | ("DeleteNetworkInterface", "InvalidEniId.NotFound")
            | ("UnassignPrivateIpAddresses", "InvalidIp.IpUnassigned")
    )
}

/// Map an error answer to a [`ProviderError`]. `vswitch` is the vSwitch the call drew
/// addresses from, when the caller knows it (for [`ProviderError::IpExhausted`]).
pub(crate) fn map_error(api: &'static str, e: ErrorAnswer, vswitch: Option<&str>) -> ProviderError {
    let ErrorAnswer {
        status,
        code,
        message,
        request_id,
        retry_after,
    } = e;
    let c = code.as_str();
    if c.starts_with("Throttling") || status == 429 {
        return ProviderError::Throttled {
            api,
            code,
            retry_after,
            request_id,
        };
    }
    if c == "InvalidVSwitchId.IpNotEnough" {
        return ProviderError::IpExhausted {
            api,
            vswitch: vswitch.map(str::to_string),
            code,
            message,
            request_id,
        };
    }
    match c {
        "EniPerInstanceLimitExceeded" | "QuotaExceeded.Eni" => ProviderError::EniLimit {
            api,
            code,
            message,
            request_id,
        },
        "InvalidOperation.Ipv4CountExceeded" | "QuotaExceeded.PrivateIpAddress" => {
            ProviderError::IpLimit {
                api,
                code,
                message,
                request_id,
            }
        }
        "InvalidAccessKeyId.NotFound"
        | "InvalidAccessKeyId.Inactive"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "InvalidTimeStamp.Expired"
        | "NoPermission"
        | "Forbidden"
        | "Forbidden.RAM" => ProviderError::Auth {
            api,
            code,
            message,
            request_id,
        },
        _ if c.starts_with("InvalidSecurityToken") || c.starts_with("Forbidden.") => {
            ProviderError::Auth {
                api,
                code,
                message,
                request_id,
            }
        }
        "InvalidEniId.NotFound"
        | "InvalidEcsId.NotFound"
        | "InvalidInstanceId.NotFound"
        | "InvalidVSwitchId.NotFound"
        | "InvalidSecurityGroupId.NotFound"
        | "InvalidRegionId.NotFound" => ProviderError::NotFound {
            api,
            code,
            message,
            request_id,
        },
        "InvalidOperation.InvalidEniState"
        | "InvalidOperation.InvalidEcsState"
        | "InvalidOperation.DetachPrimaryEniNotAllowed"
        | "InvalidOperation.EniInstanceMismatch"
        | "InvalidIp.IpAssigned"
        | "InvalidIp.IpUnassigned"
        | "InvalidIp.PrimaryIp" => ProviderError::InvalidState {
            api,
            code,
            message,
            request_id,
        },
        // A concurrent operation on the same resource, or a nonce clash: a later attempt
        // (with a new nonce) succeeds.
        "OperationConflict" | "SignatureNonceUsed" | "InternalError" | "ServiceUnavailable"
        | "UnknownError" => ProviderError::Transient {
            api,
            code,
            message,
            request_id,
        },
        _ if status >= 500 => ProviderError::Transient {
            api,
            code,
            message,
            request_id,
        },
        _ => ProviderError::Other {
            api,
            code,
            message,
            request_id,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, code: &str) -> ErrorAnswer {
        ErrorAnswer {
            status,
            code: code.into(),
            message: "m".into(),
            request_id: Some("r-1".into()),
            retry_after: None,
        }
    }

    #[test]
    fn maps_every_documented_code() {
        let cases: &[(u16, &str, &str)] = &[
            (400, "Throttling", "throttled"),
            (400, "Throttling.User", "throttled"),
            (429, "Throttling.Api", "throttled"),
            (429, "Whatever", "throttled"),
            (403, "InvalidVSwitchId.IpNotEnough", "ip_exhausted"),
            (403, "EniPerInstanceLimitExceeded", "eni_limit"),
            (403, "InvalidOperation.Ipv4CountExceeded", "ip_limit"),
            (403, "QuotaExceeded.PrivateIpAddress", "ip_limit"),
            (404, "InvalidEniId.NotFound", "not_found"),
            (404, "InvalidEcsId.NotFound", "not_found"),
            (404, "InvalidVSwitchId.NotFound", "not_found"),
            (404, "InvalidSecurityGroupId.NotFound", "not_found"),
            (404, "InvalidAccessKeyId.NotFound", "auth"),
            (400, "SignatureDoesNotMatch", "auth"),
            (400, "IncompleteSignature", "auth"),
            (400, "InvalidSecurityToken.Expired", "auth"),
            (400, "InvalidSecurityToken.MismatchWithAccessKey", "auth"),
            (403, "Forbidden.RAM", "auth"),
            (400, "InvalidTimeStamp.Expired", "auth"),
            (400, "InvalidOperation.InvalidEniState", "invalid_state"),
            (400, "InvalidOperation.InvalidEcsState", "invalid_state"),
            (
                400,
                "InvalidOperation.DetachPrimaryEniNotAllowed",
                "invalid_state",
            ),
            (403, "InvalidIp.IpAssigned", "invalid_state"),
            (403, "InvalidIp.IpUnassigned", "invalid_state"),
            (409, "OperationConflict", "transient"),
            (400, "SignatureNonceUsed", "transient"),
            (500, "InternalError", "transient"),
            (503, "ServiceUnavailable", "transient"),
            (502, "BadGateway", "transient"),
            (400, "InvalidParameter", "other"),
            (400, "MissingParameter", "other"),
            (400, "IdempotentParameterMismatch", "other"),
            (400, "InvalidOperation.EniZoneMismatch", "other"),
            (400, "InvalidOperation.Ipv4PrefixNotSupported", "other"),
        ];
        for (status, code, kind) in cases {
            let e = map_error("Api", answer(*status, code), Some("vsw-1"));
            assert_eq!(e.kind(), *kind, "{code}");
            assert_eq!(e.code(), Some(*code));
        }
    }

    #[test]
    fn keeps_details() {
        let mut a = answer(400, "Throttling.User");
        a.retry_after = Some(Duration::from_millis(1500));
        match map_error("Api", a, None) {
            ProviderError::Throttled {
                retry_after,
                request_id,
                ..
            } => {
                assert_eq!(retry_after, Some(Duration::from_millis(1500)));
                assert_eq!(request_id.as_deref(), Some("r-1"));
            }
            other => panic!("{other:?}"),
        }
        match map_error(
            "CreateNetworkInterface",
            answer(403, "InvalidVSwitchId.IpNotEnough"),
            Some("vsw-h2"),
        ) {
            ProviderError::IpExhausted { vswitch, .. } => {
                assert_eq!(vswitch.as_deref(), Some("vsw-h2"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn success_rules() {
        assert!(treat_as_success(
            "DeleteNetworkInterface",
            "InvalidEniId.NotFound"
        ));
        assert!(treat_as_success(
            "DetachNetworkInterface",
            "InvalidEniId.NotFound"
        ));
        assert!(treat_as_success(
            "UnassignPrivateIpAddresses",
            "InvalidIp.IpUnassigned"
        ));
        assert!(!treat_as_success(
            "AttachNetworkInterface",
            "InvalidEniId.NotFound"
        ));
        assert!(!treat_as_success(
            "AssignPrivateIpAddresses",
            "InvalidIp.IpUnassigned"
        ));
    }
}
