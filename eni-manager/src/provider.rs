//! Builds the cloud client the configuration asks for: Alibaba Cloud or AWS, one process-wide
//! rate limiter and retry policy, and the call statistics the metrics export.
//!
//! Only construction lives here; the clients are in `cloud-providers`.

use std::sync::Arc;

use cloud_providers::aliyun::{AliyunConfig, AliyunProvider, CredentialProvider};
use cloud_providers::aws::{AwsConfig, AwsProvider};
use cloud_providers::metadata::{MetadataClient, MetadataFlavor};
use cloud_providers::{
    ApiRateLimiter, CallSettings, CallStats, CloudProvider, ProviderError, Rate, RateLimitConfig,
    RetryPolicy,
};

use crate::config::{CloudConfig, CredentialSource, ProviderKind};

/// Builds the provider. `stats` receives every call.
pub async fn build(
    cfg: &CloudConfig,
    stats: Arc<CallStats>,
) -> Result<Arc<dyn CloudProvider>, ProviderError> {
    let limiter = ApiRateLimiter::new(RateLimitConfig::uniform(Rate {
        per_second: cfg.rate_per_second,
        burst: cfg.rate_burst,
    }))?;
    let settings = CallSettings {
        limiter,
        retry: RetryPolicy {
            max_elapsed: std::time::Duration::from_millis(cfg.retry_budget_ms),
            ..RetryPolicy::default()
        },
        observer: stats,
    };
    let request_timeout = std::time::Duration::from_millis(cfg.request_timeout_ms);
    match cfg.provider {
        ProviderKind::Aliyun => {
            let md = Arc::new(match &cfg.metadata_endpoint {
                Some(ep) => MetadataClient::new(MetadataFlavor::Aliyun, ep)?,
                None => MetadataClient::aliyun()?,
            });
            let region = match &cfg.region {
                Some(r) => r.clone(),
                None => md.region().await?,
            };
            let mut ac = AliyunConfig::new(region);
            if let Some(ep) = &cfg.endpoint {
                ac = ac.with_endpoint(ep);
            }
            ac.instance_id = cfg.instance_id.clone();
            ac.prefix_support = cfg.prefix_support;
            ac.request_timeout = request_timeout;
            let creds = match cfg.credentials {
                CredentialSource::Chain => CredentialProvider::default_chain(md.clone())?,
                CredentialSource::Env => CredentialProvider::from_env().ok_or_else(|| {
                    ProviderError::Config {
                        message: "cloud.credentials is env but ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET are not set".into(),
                    }
                })?,
                CredentialSource::File => {
                    let path = cfg
                        .credentials_file
                        .clone()
                        .or_else(CredentialProvider::default_file_path)
                        .ok_or_else(|| ProviderError::Config {
                            message: "cloud.credentials is file but no credentials_file is set and HOME is unknown".into(),
                        })?;
                    CredentialProvider::from_file(&path, "default", Some(md.clone()))?
                        .ok_or_else(|| ProviderError::Config {
                            message: format!(
                                "cloud.credentials_file {} has no usable [default] profile",
                                path.display()
                            ),
                        })?
                }
                CredentialSource::RamRole => CredentialProvider::ram_role(md.clone(), None),
            };
            Ok(Arc::new(AliyunProvider::new(
                ac,
                Arc::new(creds),
                Some(md),
                settings,
            )?))
        }
        ProviderKind::Aws => {
            let md = Arc::new(match &cfg.metadata_endpoint {
                Some(ep) => MetadataClient::new(MetadataFlavor::Aws, ep)?,
                None => MetadataClient::aws()?,
            });
            let ac = AwsConfig {
                region: cfg.region.clone(),
                endpoint_url: cfg.endpoint.clone(),
                static_credentials: None,
                instance_id: cfg.instance_id.clone(),
                request_timeout,
            };
            Ok(Arc::new(AwsProvider::new(ac, Some(md), settings).await?))
        }
    }
}
