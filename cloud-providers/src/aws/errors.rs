//! The one place where EC2 error codes become [`ProviderError`] variants, and where the
//! treat-as-success rules for EC2 live. Nothing else in the crate looks at EC2 code strings.

use aws_sdk_ec2::config::http::HttpResponse as Response;
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::RequestId;

use crate::error::ProviderError;

/// Whether an error code answered to `api` means the wanted end state already holds.
pub(crate) fn treat_as_success(api: &str, code: &str) -> bool {
    matches!(
        (api, code),
        (
            "DeleteNetworkInterface" | "DetachNetworkInterface",
            "InvalidNetworkInterfaceID.NotFound" | "InvalidAttachmentID.NotFound"
        )
    )
}

/// Map an EC2 error code (with its HTTP status) to a [`ProviderError`].
pub(crate) fn map_code(
    api: &'static str,
    status: u16,
    code: String,
    message: String,
    request_id: Option<String>,
    subnet: Option<&str>,
) -> ProviderError {
    match code.as_str() {
        // HTTP 429 is throttling whatever the code says (a proxy or gateway in front of EC2
        // may answer it without an EC2 error document), as on Alibaba Cloud.
        _ if status == 429 => ProviderError::Throttled {
            api,
            code,
            retry_after: None,
            request_id,
        },
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => ProviderError::Throttled {
            api,
            code,
            retry_after: None,
            request_id,
        },
        // No free address, or no free contiguous /28 for a prefix.
        "InsufficientFreeAddressesInSubnet" | "InsufficientCidrBlocks" => {
            ProviderError::IpExhausted {
                api,
                vswitch: subnet.map(str::to_string),
                code,
                message,
                request_id,
            }
        }
        "AttachmentLimitExceeded" | "NetworkInterfaceLimitExceeded" => ProviderError::EniLimit {
            api,
            code,
            message,
            request_id,
        },
        "PrivateIpAddressLimitExceeded" => ProviderError::IpLimit {
            api,
            code,
            message,
            request_id,
        },
        "AuthFailure"
        | "UnauthorizedOperation"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "RequestExpired"
        | "OptInRequired"
        | "Blocked" => ProviderError::Auth {
            api,
            code,
            message,
            request_id,
        },
        "InvalidNetworkInterfaceID.NotFound"
        | "InvalidAttachmentID.NotFound"
        | "InvalidInstanceID.NotFound"
        | "InvalidSubnetID.NotFound"
        | "InvalidGroup.NotFound"
        | "InvalidInstanceType" => ProviderError::NotFound {
            api,
            code,
            message,
            request_id,
        },
        "IncorrectState"
        | "IncorrectInstanceState"
        | "InvalidNetworkInterface.InUse"
        | "InvalidIPAddress.InUse"
        | "OperationNotPermitted" => ProviderError::InvalidState {
            api,
            code,
            message,
            request_id,
        },
        "InternalError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "Unavailable"
        | "ResourceLimitExceeded" => ProviderError::Transient {
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

/// The outcome of an SDK error: done anyway, or a mapped error.
pub(crate) enum Mapped {
    /// The error means the wanted state holds (see [`treat_as_success`]).
    Success,
    /// A real failure.
    Error(ProviderError),
}

/// Map an SDK error of `api`. `subnet` names the subnet the call draws addresses from.
pub(crate) fn map_sdk_error<E>(
    api: &'static str,
    err: &SdkError<E, Response>,
    subnet: Option<&str>,
) -> Mapped
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = err.code().unwrap_or("Unknown").to_string();
            if treat_as_success(api, &code) {
                return Mapped::Success;
            }
            let message = err.message().unwrap_or_default().to_string();
            let request_id = err.request_id().map(str::to_string);
            Mapped::Error(map_code(api, status, code, message, request_id, subnet))
        }
        SdkError::TimeoutError(_) => Mapped::Error(ProviderError::transport(
            api,
            "Timeout",
            format!("{}", DisplayErrorContext(err)),
        )),
        SdkError::DispatchFailure(d) => {
            let code = if d.is_timeout() {
                "Timeout"
            } else if d.is_io() {
                "Connection"
            } else {
                "Transport"
            };
            Mapped::Error(ProviderError::transport(
                api,
                code,
                format!("{}", DisplayErrorContext(err)),
            ))
        }
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            let message = format!("{}", DisplayErrorContext(err));
            if status == 429 {
                Mapped::Error(ProviderError::Throttled {
                    api,
                    code: "HTTP429".into(),
                    retry_after: None,
                    request_id: None,
                })
            } else if status >= 500 {
                Mapped::Error(ProviderError::Transient {
                    api,
                    code: format!("HTTP{status}"),
                    message,
                    request_id: None,
                })
            } else {
                Mapped::Error(ProviderError::malformed(api, message))
            }
        }
        _ => Mapped::Error(ProviderError::Other {
            api,
            code: "SdkError".into(),
            message: format!("{}", DisplayErrorContext(err)),
            request_id: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_ec2_codes() {
        let cases: &[(u16, &str, &str)] = &[
            (503, "RequestLimitExceeded", "throttled"),
            (400, "InsufficientFreeAddressesInSubnet", "ip_exhausted"),
            (400, "InsufficientCidrBlocks", "ip_exhausted"),
            (400, "AttachmentLimitExceeded", "eni_limit"),
            (400, "NetworkInterfaceLimitExceeded", "eni_limit"),
            (400, "PrivateIpAddressLimitExceeded", "ip_limit"),
            (400, "InvalidNetworkInterfaceID.NotFound", "not_found"),
            (400, "InvalidInstanceID.NotFound", "not_found"),
            (400, "InvalidSubnetID.NotFound", "not_found"),
            (400, "InvalidAttachmentID.NotFound", "not_found"),
            (401, "AuthFailure", "auth"),
            (403, "UnauthorizedOperation", "auth"),
            (400, "RequestExpired", "auth"),
            (400, "IncorrectState", "invalid_state"),
            (400, "InvalidNetworkInterface.InUse", "invalid_state"),
            (500, "InternalError", "transient"),
            (503, "Unavailable", "transient"),
            (502, "Whatever", "transient"),
            (429, "Unknown", "throttled"),
            (429, "TooManyRequestsException", "throttled"),
            (400, "InvalidParameterValue", "other"),
            (400, "IdempotentParameterMismatch", "other"),
        ];
        for (status, code, kind) in cases {
            let e = map_code(
                "Api",
                *status,
                code.to_string(),
                "m".into(),
                Some("req".into()),
                Some("subnet-1"),
            );
            assert_eq!(e.kind(), *kind, "{code}");
        }
        match map_code(
            "CreateNetworkInterface",
            400,
            "InsufficientFreeAddressesInSubnet".into(),
            String::new(),
            None,
            Some("subnet-9"),
        ) {
            ProviderError::IpExhausted { vswitch, .. } => {
                assert_eq!(vswitch.as_deref(), Some("subnet-9"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn success_rules() {
        assert!(treat_as_success(
            "DeleteNetworkInterface",
            "InvalidNetworkInterfaceID.NotFound"
        ));
        assert!(treat_as_success(
            "DetachNetworkInterface",
            "InvalidAttachmentID.NotFound"
        ));
        assert!(!treat_as_success(
            "AttachNetworkInterface",
            "InvalidNetworkInterfaceID.NotFound"
        ));
    }
}
