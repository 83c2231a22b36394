//! Instance metadata clients for both clouds: Alibaba Cloud's (`100.100.100.200`, optional
//! session token) and AWS IMDSv2 (`169.254.169.254`, mandatory session token).
//!
//! One HTTP client with the cloud's header names, and typed accessors for the fields the pool
//! needs (identity, the MAC list, per-MAC interface details). This module does not retry
//! beyond a token refresh and two quick transport retries; it does not go through the API
//! rate limiter (the metadata service is local).

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use reqwest::StatusCode;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::ProviderError;
use crate::http;

const API: &str = "InstanceMetadata";

/// Which metadata service dialect to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataFlavor {
    /// Alibaba Cloud: `X-aliyun-ecs-metadata-token[-ttl-seconds]`; works without a token when
    /// the service does not hand one out.
    Aliyun,
    /// AWS IMDSv2: `X-aws-ec2-metadata-token[-ttl-seconds]`; the token is required.
    Aws,
}

impl MetadataFlavor {
    fn ttl_header(self) -> &'static str {
        match self {
            MetadataFlavor::Aliyun => "X-aliyun-ecs-metadata-token-ttl-seconds",
            MetadataFlavor::Aws => "X-aws-ec2-metadata-token-ttl-seconds",
        }
    }
    fn token_header(self) -> &'static str {
        match self {
            MetadataFlavor::Aliyun => "X-aliyun-ecs-metadata-token",
            MetadataFlavor::Aws => "X-aws-ec2-metadata-token",
        }
    }
    /// The service's address in production.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            MetadataFlavor::Aliyun => "http://100.100.100.200",
            MetadataFlavor::Aws => "http://169.254.169.254",
        }
    }
}

#[derive(Debug, Clone)]
enum Token {
    Value(String, Instant),
    /// The service gave no token (Alibaba Cloud only): go without.
    Unsupported,
}

/// A client of one instance metadata service.
#[derive(Debug)]
pub struct MetadataClient {
    http: reqwest::Client,
    base: String,
    flavor: MetadataFlavor,
    token_ttl: Duration,
    token: Mutex<Option<Token>>,
}

/// One network interface as the metadata service describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataInterface {
    /// MAC address, lower case.
    pub mac: String,
    /// ENI id.
    pub eni_id: String,
    /// Device number (AWS only).
    pub device_number: Option<u32>,
    /// The primary IPv4 address.
    pub primary_ip: Ipv4Addr,
    /// Every IPv4 address of the interface, the primary first.
    pub ips: Vec<Ipv4Addr>,
    /// IPv4 prefixes delegated to the interface.
    pub prefixes: Vec<Ipv4Net>,
    /// vSwitch/subnet id.
    pub subnet_id: String,
    /// vSwitch/subnet CIDR.
    pub subnet_cidr: Ipv4Net,
    /// The default gateway of the subnet (AWS: subnet base + 1).
    pub gateway: Ipv4Addr,
    /// Security groups (AWS only; empty on Alibaba Cloud).
    pub security_group_ids: Vec<String>,
}

impl MetadataClient {
    /// A client of the service at `endpoint` (`http://host[:port]`, no path). Requests time
    /// out after 5 s; tokens live 6 hours.
    pub fn new(flavor: MetadataFlavor, endpoint: &str) -> Result<Self, ProviderError> {
        Ok(MetadataClient {
            http: http::client(Duration::from_secs(5))?,
            base: endpoint.trim_end_matches('/').to_string(),
            flavor,
            token_ttl: Duration::from_secs(21600),
            token: Mutex::new(None),
        })
    }

    /// The Alibaba Cloud service at its production address.
    pub fn aliyun() -> Result<Self, ProviderError> {
        Self::new(
            MetadataFlavor::Aliyun,
            MetadataFlavor::Aliyun.default_endpoint(),
        )
    }

    /// AWS IMDSv2 at its production address.
    pub fn aws() -> Result<Self, ProviderError> {
        Self::new(MetadataFlavor::Aws, MetadataFlavor::Aws.default_endpoint())
    }

    /// The dialect.
    pub fn flavor(&self) -> MetadataFlavor {
        self.flavor
    }

    async fn token(&self, force: bool) -> Result<Token, ProviderError> {
        let mut guard = self.token.lock().await;
        if !force {
            match &*guard {
                Some(Token::Value(t, exp)) if Instant::now() + Duration::from_secs(60) < *exp => {
                    return Ok(Token::Value(t.clone(), *exp));
                }
                Some(Token::Unsupported) => return Ok(Token::Unsupported),
                _ => {}
            }
        }
        let url = format!("{}/latest/api/token", self.base);
        let resp = self
            .http
            .put(&url)
            .header(
                self.flavor.ttl_header(),
                self.token_ttl.as_secs().to_string(),
            )
            .send()
            .await
            .map_err(|e| ProviderError::transport(API, http::transport_code(&e), e.to_string()))?;
        let status = resp.status();
        let token = if status.is_success() {
            let text = resp
                .text()
                .await
                .map_err(|e| ProviderError::transport(API, "Transport", e.to_string()))?;
            let token = text.trim();
            // The token goes back in a header: one that cannot be sent must not be cached,
            // or every lookup would fail with it until the TTL ends.
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ProviderError::malformed(
                    API,
                    format!(
                        "api/token: the session token ({} bytes) is empty or not printable ASCII",
                        token.len()
                    ),
                ));
            }
            Token::Value(token.to_string(), Instant::now() + self.token_ttl)
        } else if self.flavor == MetadataFlavor::Aliyun
            && matches!(
                status,
                StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::METHOD_NOT_ALLOWED
            )
        {
            Token::Unsupported
        } else {
            return Err(status_error("api/token", status));
        };
        *guard = Some(token.clone());
        Ok(token)
    }

    /// The raw text at `path` under `/latest/` (for example `meta-data/instance-id`).
    pub async fn get(&self, path: &str) -> Result<String, ProviderError> {
        let url = format!("{}/latest/{}", self.base, path.trim_start_matches('/'));
        let mut force_token = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.token(force_token).await;
            let token = match token {
                Ok(t) => t,
                Err(e) if e.is_retryable() && attempt < 3 => {
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut req = self.http.get(&url);
            if let Token::Value(t, _) = &token {
                req = req.header(self.flavor.token_header(), t);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if attempt < 3 => {
                    tracing::debug!(path, error = %e, "metadata request failed, retrying");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                    continue;
                }
                Err(e) => {
                    return Err(ProviderError::transport(
                        API,
                        http::transport_code(&e),
                        format!("{url}: {e}"),
                    ))
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !force_token && attempt < 3 {
                force_token = true;
                continue;
            }
            if status.is_server_error() && attempt < 3 {
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                continue;
            }
            if !status.is_success() {
                return Err(status_error(path, status));
            }
            return resp
                .text()
                .await
                .map_err(|e| ProviderError::transport(API, "Transport", e.to_string()));
        }
    }

    async fn get_trimmed(&self, path: &str) -> Result<String, ProviderError> {
        Ok(self.get(path).await?.trim().to_string())
    }

    /// `meta-data/instance-id`.
    pub async fn instance_id(&self) -> Result<String, ProviderError> {
        self.get_trimmed("meta-data/instance-id").await
    }

    /// `meta-data/instance/instance-type` (Alibaba Cloud) or `meta-data/instance-type` (AWS).
    pub async fn instance_type(&self) -> Result<String, ProviderError> {
        match self.flavor {
            MetadataFlavor::Aliyun => self.get_trimmed("meta-data/instance/instance-type").await,
            MetadataFlavor::Aws => self.get_trimmed("meta-data/instance-type").await,
        }
    }

    /// The region: `meta-data/region-id` or `meta-data/placement/region`.
    pub async fn region(&self) -> Result<String, ProviderError> {
        match self.flavor {
            MetadataFlavor::Aliyun => self.get_trimmed("meta-data/region-id").await,
            MetadataFlavor::Aws => self.get_trimmed("meta-data/placement/region").await,
        }
    }

    /// The zone: `meta-data/zone-id` or `meta-data/placement/availability-zone`.
    pub async fn zone(&self) -> Result<String, ProviderError> {
        match self.flavor {
            MetadataFlavor::Aliyun => self.get_trimmed("meta-data/zone-id").await,
            MetadataFlavor::Aws => {
                self.get_trimmed("meta-data/placement/availability-zone")
                    .await
            }
        }
    }

    /// The primary interface's MAC, lower case.
    pub async fn primary_mac(&self) -> Result<String, ProviderError> {
        Ok(self
            .get_trimmed("meta-data/mac")
            .await?
            .to_ascii_lowercase())
    }

    /// The MACs of every interface the instance has (as the service sees it; it may lag
    /// behind an attach), lower case.
    pub async fn macs(&self) -> Result<Vec<String>, ProviderError> {
        let text = self.get("meta-data/network/interfaces/macs/").await?;
        Ok(parse_mac_list(&text))
    }

    /// One interface's details.
    pub async fn interface(&self, mac: &str) -> Result<MetadataInterface, ProviderError> {
        let mac = mac.to_ascii_lowercase();
        let p = |field: &str| format!("meta-data/network/interfaces/macs/{mac}/{field}");
        match self.flavor {
            MetadataFlavor::Aliyun => {
                let eni_id = self.get_trimmed(&p("network-interface-id")).await?;
                let primary_ip = parse_ip(&self.get_trimmed(&p("primary-ip-address")).await?)?;
                let gateway = parse_ip(&self.get_trimmed(&p("gateway")).await?)?;
                let subnet_id = self.get_trimmed(&p("vswitch-id")).await?;
                let subnet_cidr = parse_net(&self.get_trimmed(&p("vswitch-cidr-block")).await?)?;
                let ips = parse_json_list(&self.get(&p("private-ipv4s")).await?)?
                    .iter()
                    .map(|s| parse_ip(s))
                    .collect::<Result<Vec<_>, _>>()?;
                let prefixes = match self.get(&p("ipv4-prefixes")).await {
                    Ok(text) => parse_json_list(&text)?
                        .iter()
                        .map(|s| parse_net(s))
                        .collect::<Result<Vec<_>, _>>()?,
                    Err(e) if e.is_not_found() => Vec::new(),
                    Err(e) => return Err(e),
                };
                Ok(MetadataInterface {
                    ips: primary_first(primary_ip, ips),
                    mac,
                    eni_id,
                    device_number: None,
                    primary_ip,
                    prefixes,
                    subnet_id,
                    subnet_cidr,
                    gateway,
                    security_group_ids: Vec::new(),
                })
            }
            MetadataFlavor::Aws => {
                let eni_id = self.get_trimmed(&p("interface-id")).await?;
                let device_number = self
                    .get_trimmed(&p("device-number"))
                    .await?
                    .parse::<u32>()
                    .map_err(|e| ProviderError::malformed(API, format!("device-number: {e}")))?;
                let ips = self
                    .get(&p("local-ipv4s"))
                    .await?
                    .split_whitespace()
                    .map(parse_ip)
                    .collect::<Result<Vec<_>, _>>()?;
                let primary_ip = *ips.first().ok_or_else(|| {
                    ProviderError::malformed(API, format!("interface {mac} has no local-ipv4s"))
                })?;
                let prefixes = match self.get(&p("ipv4-prefix")).await {
                    Ok(text) => text
                        .split_whitespace()
                        .map(parse_net)
                        .collect::<Result<Vec<_>, _>>()?,
                    Err(e) if e.is_not_found() => Vec::new(),
                    Err(e) => return Err(e),
                };
                let subnet_id = self.get_trimmed(&p("subnet-id")).await?;
                let subnet_cidr =
                    parse_net(&self.get_trimmed(&p("subnet-ipv4-cidr-block")).await?)?;
                let security_group_ids = match self.get(&p("security-group-ids")).await {
                    Ok(text) => text.split_whitespace().map(str::to_string).collect(),
                    Err(e) if e.is_not_found() => Vec::new(),
                    Err(e) => return Err(e),
                };
                let gateway = Ipv4Addr::from(u32::from(subnet_cidr.network()).wrapping_add(1));
                Ok(MetadataInterface {
                    mac,
                    eni_id,
                    device_number: Some(device_number),
                    primary_ip,
                    ips,
                    prefixes,
                    subnet_id,
                    subnet_cidr,
                    gateway,
                    security_group_ids,
                })
            }
        }
    }

    /// The VPC's IPv4 CIDR blocks. Alibaba Cloud: `meta-data/vpc-cidr-block` (the primary
    /// block; secondary blocks are not published there). AWS: every block associated with
    /// the VPC, from `vpc-ipv4-cidr-blocks` of the primary interface.
    pub async fn vpc_cidrs(&self) -> Result<Vec<Ipv4Net>, ProviderError> {
        let text = match self.flavor {
            MetadataFlavor::Aliyun => self.get("meta-data/vpc-cidr-block").await?,
            MetadataFlavor::Aws => {
                let mac = self.primary_mac().await?;
                self.get(&format!(
                    "meta-data/network/interfaces/macs/{mac}/vpc-ipv4-cidr-blocks"
                ))
                .await?
            }
        };
        let cidrs = text
            .split_whitespace()
            .map(parse_net)
            .collect::<Result<Vec<_>, _>>()?;
        if cidrs.is_empty() {
            return Err(ProviderError::malformed(
                API,
                "the VPC CIDR block list is empty",
            ));
        }
        Ok(cidrs)
    }

    /// The name of the instance's RAM role (Alibaba Cloud: first line of
    /// `meta-data/ram/security-credentials/`).
    pub async fn ram_role(&self) -> Result<String, ProviderError> {
        let text = self.get("meta-data/ram/security-credentials/").await?;
        text.lines()
            .map(|l| l.trim().trim_end_matches('/'))
            .find(|l| !l.is_empty())
            .map(str::to_string)
            .ok_or_else(|| ProviderError::Auth {
                api: "credentials",
                code: "NoRamRole".into(),
                message: "the instance has no RAM role".into(),
                request_id: None,
            })
    }
}

fn status_error(path: &str, status: StatusCode) -> ProviderError {
    let message = format!("metadata {path}: HTTP {status}");
    match status {
        StatusCode::NOT_FOUND => ProviderError::NotFound {
            api: API,
            code: "404".into(),
            message,
            request_id: None,
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Auth {
            api: API,
            code: status.as_u16().to_string(),
            message,
            request_id: None,
        },
        s if s.is_server_error() => ProviderError::Transient {
            api: API,
            code: s.as_u16().to_string(),
            message,
            request_id: None,
        },
        s => ProviderError::Other {
            api: API,
            code: s.as_u16().to_string(),
            message,
            request_id: None,
        },
    }
}

fn parse_ip(s: &str) -> Result<Ipv4Addr, ProviderError> {
    s.trim()
        .parse()
        .map_err(|_| ProviderError::malformed(API, format!("not an IPv4 address: {s:?}")))
}

fn parse_net(s: &str) -> Result<Ipv4Net, ProviderError> {
    s.trim()
        .parse()
        .map_err(|_| ProviderError::malformed(API, format!("not an IPv4 CIDR: {s:?}")))
}

fn parse_json_list(text: &str) -> Result<Vec<String>, ProviderError> {
    serde_json::from_str(text.trim())
        .map_err(|e| ProviderError::malformed(API, format!("expected a JSON list: {e}")))
}

fn primary_first(primary: Ipv4Addr, ips: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
    let mut out = vec![primary];
    out.extend(ips.into_iter().filter(|ip| *ip != primary));
    out
}

/// Lines `00:16:3e:..:../` -> MACs, lower case, without the slash.
pub(crate) fn parse_mac_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim().trim_end_matches('/').to_ascii_lowercase())
        .filter(|l| !l.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_lists() {
        assert_eq!(
            parse_mac_list("00:16:3E:00:00:01/\n00:16:3e:00:00:02/\n\n"),
            vec!["00:16:3e:00:00:01", "00:16:3e:00:00:02"]
        );
        assert!(parse_mac_list("").is_empty());
    }

    #[test]
    fn helpers() {
        assert_eq!(
            parse_json_list("[\"192.168.1.10\",\"192.168.1.11\"]\n").unwrap(),
            vec!["192.168.1.10", "192.168.1.11"]
        );
        assert!(parse_json_list("192.168.1.10").is_err());
        let p = Ipv4Addr::new(10, 0, 0, 1);
        let q = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(primary_first(p, vec![q, p]), vec![p, q]);
        assert!(matches!(
            status_error("x", StatusCode::NOT_FOUND),
            ProviderError::NotFound { .. }
        ));
        assert!(status_error("x", StatusCode::BAD_GATEWAY).is_retryable());
    }
}
