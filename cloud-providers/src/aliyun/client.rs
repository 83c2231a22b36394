//! The Alibaba Cloud RPC client: builds, signs (V1 or V3) and sends one action, reads the JSON
//! answer or the error, and runs it under the rate limiter and retry policy.
//!
//! It knows nothing about ENIs; the provider composes actions. Error codes are handed to
//! `errors` untouched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use time::macros::format_description;
use time::OffsetDateTime;

use super::credentials::CredentialProvider;
use super::errors::{self, ErrorAnswer};
use super::sign;
use crate::error::ProviderError;
use crate::http;
use crate::ratelimit::Priority;
use crate::retry::CallRunner;

/// How requests are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureVersion {
    /// RPC signature V1 (HMAC-SHA1, `Signature` query parameter).
    V1,
    /// ACS3-HMAC-SHA256 (`Authorization` header).
    #[default]
    V3,
}

/// Which Alibaba Cloud API an action belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    /// ECS, version 2014-05-26.
    Ecs,
    /// VPC, version 2016-04-28.
    Vpc,
}

impl Service {
    fn version(self) -> &'static str {
        match self {
            Service::Ecs => "2014-05-26",
            Service::Vpc => "2016-04-28",
        }
    }
}

/// A successful answer.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The JSON body (`{}` when an error was treated as success).
    pub body: serde_json::Value,
    /// Whether an error answer was taken as success (see `errors::treat_as_success`).
    pub treated_as_success: bool,
}

#[derive(Debug)]
pub(crate) struct RpcClient {
    pub(crate) http: reqwest::Client,
    pub(crate) ecs_endpoint: String,
    pub(crate) vpc_endpoint: String,
    pub(crate) region: String,
    pub(crate) signature: SignatureVersion,
    pub(crate) credentials: Arc<CredentialProvider>,
    pub(crate) runner: CallRunner,
}

fn timestamp(now: OffsetDateTime) -> String {
    now.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap_or_default()
}

fn nonce() -> String {
    let b: [u8; 16] = rand::thread_rng().gen();
    hex::encode(b)
}

impl RpcClient {
    pub(crate) fn new(
        timeout: Duration,
        ecs_endpoint: &str,
        vpc_endpoint: &str,
        region: String,
        signature: SignatureVersion,
        credentials: Arc<CredentialProvider>,
        runner: CallRunner,
    ) -> Result<Self, ProviderError> {
        for e in [ecs_endpoint, vpc_endpoint] {
            url::Url::parse(e).map_err(|err| ProviderError::Config {
                message: format!("endpoint {e:?}: {err}"),
            })?;
        }
        Ok(RpcClient {
            http: http::client(timeout)?,
            ecs_endpoint: ecs_endpoint.trim_end_matches('/').to_string(),
            vpc_endpoint: vpc_endpoint.trim_end_matches('/').to_string(),
            region,
            signature,
            credentials,
            runner,
        })
    }

    /// Call `api` with `params` (RegionId is added), retried per policy. `vswitch` names the
    /// vSwitch the call draws addresses from, for [`ProviderError::IpExhausted`].
    pub(crate) async fn call(
        &self,
        service: Service,
        api: &'static str,
        priority: Priority,
        params: &BTreeMap<String, String>,
        vswitch: Option<&str>,
    ) -> Result<Answer, ProviderError> {
        self.runner
            .run(api, priority, || {
                self.call_once(service, api, params, vswitch)
            })
            .await
    }

    async fn call_once(
        &self,
        service: Service,
        api: &'static str,
        params: &BTreeMap<String, String>,
        vswitch: Option<&str>,
    ) -> Result<Answer, ProviderError> {
        let creds = self.credentials.get().await?;
        let endpoint = match service {
            Service::Ecs => &self.ecs_endpoint,
            Service::Vpc => &self.vpc_endpoint,
        };
        let mut query = params.clone();
        query.insert("RegionId".into(), self.region.clone());
        let now = timestamp(OffsetDateTime::now_utc());
        let nonce = nonce();
        let request = match self.signature {
            SignatureVersion::V1 => {
                query.insert("Action".into(), api.into());
                query.insert("Version".into(), service.version().into());
                query.insert("Format".into(), "JSON".into());
                query.insert("AccessKeyId".into(), creds.access_key_id.clone());
                query.insert("SignatureMethod".into(), "HMAC-SHA1".into());
                query.insert("SignatureVersion".into(), "1.0".into());
                query.insert("SignatureNonce".into(), nonce);
                query.insert("Timestamp".into(), now);
                if let Some(t) = &creds.security_token {
                    query.insert("SecurityToken".into(), t.clone());
                }
                let signature = sign::v1_signature("POST", &query, &creds.access_key_secret);
                query.insert("Signature".into(), signature);
                let url = format!("{endpoint}/?{}", sign::canonical_query(&query));
                self.http.post(url)
            }
            SignatureVersion::V3 => {
                let url = format!("{endpoint}/?{}", sign::canonical_query(&query));
                let parsed = url::Url::parse(&url).map_err(|e| ProviderError::Config {
                    message: format!("endpoint {endpoint:?}: {e}"),
                })?;
                let host = match (parsed.host_str(), parsed.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_string(),
                    (None, _) => {
                        return Err(ProviderError::Config {
                            message: format!("endpoint {endpoint:?} has no host"),
                        })
                    }
                };
                let mut headers = vec![
                    ("host".to_string(), host),
                    ("x-acs-action".to_string(), api.to_string()),
                    ("x-acs-version".to_string(), service.version().to_string()),
                    ("x-acs-date".to_string(), now),
                    ("x-acs-signature-nonce".to_string(), nonce),
                    (
                        "x-acs-content-sha256".to_string(),
                        sign::EMPTY_BODY_SHA256.to_string(),
                    ),
                ];
                if let Some(t) = &creds.security_token {
                    headers.push(("x-acs-security-token".to_string(), t.clone()));
                }
                let sig = sign::v3_sign(
                    "POST",
                    "/",
                    &query,
                    &headers,
                    sign::EMPTY_BODY_SHA256,
                    &creds.access_key_secret,
                );
                let mut req = self.http.post(url);
                for (k, v) in &headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                req.header("Authorization", sig.authorization(&creds.access_key_id))
            }
        };
        let resp = request
            .send()
            .await
            .map_err(|e| ProviderError::transport(api, http::transport_code(&e), e.to_string()))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let header_request_id = header("x-acs-request-id");
        let retry_after = header("x-acs-retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis);
        let text = resp
            .text()
            .await
            .map_err(|e| ProviderError::transport(api, http::transport_code(&e), e.to_string()))?;
        if (200..300).contains(&status) {
            let body: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ProviderError::malformed(api, format!("body is not JSON: {e}")))?;
            return Ok(Answer {
                body,
                treated_as_success: false,
            });
        }
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let field = |k: &str| parsed.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let answer = ErrorAnswer {
            status,
            code: field("Code").unwrap_or_else(|| format!("HTTP{status}")),
            message: field("Message").unwrap_or_else(|| text.chars().take(200).collect()),
            request_id: field("RequestId").or(header_request_id),
            retry_after,
        };
        if errors::treat_as_success(api, &answer.code) {
            tracing::debug!(api, code = %answer.code, "error answer taken as success");
            return Ok(Answer {
                body: serde_json::Value::Object(Default::default()),
                treated_as_success: true,
            });
        }
        Err(errors::map_error(api, answer, vswitch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_format() {
        let t = OffsetDateTime::from_unix_timestamp(1_704_067_200).unwrap();
        assert_eq!(timestamp(t), "2024-01-01T00:00:00Z");
        assert_eq!(nonce().len(), 32);
        assert_ne!(nonce(), nonce());
    }
}
