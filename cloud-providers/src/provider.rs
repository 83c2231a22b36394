//! The `CloudProvider` trait and the plain data it speaks: nodes, ENIs, option structs.
//!
//! This module holds no cloud logic; the vendor modules implement the trait. Methods take
//! option structs so that the interface grows by fields, not by new methods.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use rand::Rng;

use crate::error::ProviderError;
use crate::ratelimit::Priority;

/// Which cloud a provider talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cloud {
    /// Alibaba Cloud ECS.
    Aliyun,
    /// AWS EC2.
    Aws,
}

impl Cloud {
    /// A lower-case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Aliyun => "aliyun",
            Cloud::Aws => "aws",
        }
    }
}

/// The limits of the node's instance type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLimits {
    /// ENIs the instance can hold, the primary included.
    pub max_enis: u32,
    /// IPv4 addresses one ENI can hold, its primary address included.
    pub ipv4_per_eni: u32,
    /// Whether /28 IPv4 prefixes can be assigned to ENIs of this instance type.
    pub prefix_support: bool,
}

/// What the pool needs to know about the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The instance id (`i-...`).
    pub instance_id: String,
    /// The instance type (`ecs.g7.large`, `m5.large`).
    pub instance_type: String,
    /// The region (`cn-hangzhou`, `us-east-1`).
    pub region: String,
    /// The zone (`cn-hangzhou-h`, `us-east-1a`).
    pub zone: String,
    /// The VPC id.
    pub vpc_id: String,
    /// The vSwitch/subnet of the primary ENI.
    pub primary_subnet_id: String,
    /// The security groups of the instance (of its primary ENI on AWS).
    pub security_group_ids: Vec<String>,
    /// The primary ENI's id.
    pub primary_eni_id: String,
    /// The primary ENI's MAC address (lower case, colon separated).
    pub primary_mac: String,
    /// The primary ENI's primary IPv4 address.
    pub primary_ip: Ipv4Addr,
    /// The instance type's limits.
    pub limits: NodeLimits,
}

/// The life-cycle status of an ENI, in the vendor-neutral form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EniStatus {
    /// Created, not attached (AWS `available`).
    Available,
    /// Being attached (AWS `attaching`, an attachment in progress).
    Attaching,
    /// Attached to an instance (AWS `in-use`).
    InUse,
    /// Being detached.
    Detaching,
    /// Being deleted.
    Deleting,
    /// A status this crate does not know, as the cloud spelled it.
    Unknown(String),
}

impl fmt::Display for EniStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EniStatus::Available => f.write_str("Available"),
            EniStatus::Attaching => f.write_str("Attaching"),
            EniStatus::InUse => f.write_str("InUse"),
            EniStatus::Detaching => f.write_str("Detaching"),
            EniStatus::Deleting => f.write_str("Deleting"),
            EniStatus::Unknown(s) => f.write_str(s),
        }
    }
}

/// An elastic network interface as the pool sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eni {
    /// The ENI id (`eni-...`).
    pub id: String,
    /// Its status.
    pub status: EniStatus,
    /// Whether this is an instance's primary ENI.
    pub is_primary: bool,
    /// MAC address, lower case and colon separated.
    pub mac: String,
    /// The vSwitch/subnet it lives in.
    pub subnet_id: String,
    /// The zone.
    pub zone: String,
    /// The VPC.
    pub vpc_id: String,
    /// The instance it is attached (or attaching) to.
    pub instance_id: Option<String>,
    /// Its device index on the instance, when attached.
    pub device_index: Option<u32>,
    /// The attachment id (AWS; needed to detach). `None` on Alibaba Cloud.
    pub attachment_id: Option<String>,
    /// The primary private IPv4 address.
    pub primary_ip: Option<Ipv4Addr>,
    /// Secondary private IPv4 addresses (the primary excluded).
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Assigned IPv4 prefixes (/28).
    pub prefixes: Vec<Ipv4Net>,
    /// Security groups.
    pub security_group_ids: Vec<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// A token that makes a mutating call safe to repeat: the same token is sent on every retry
/// of one logical operation, so the cloud carries it out once.
///
/// Alibaba Cloud takes it on create, attach and assign (`ClientToken`); EC2 on create only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyToken(String);

impl IdempotencyToken {
    /// The longest token the clouds accept (Alibaba Cloud: 64 ASCII characters).
    pub const MAX_LEN: usize = 64;

    /// A fresh random token (32 hex digits).
    pub fn random() -> Self {
        let bytes: [u8; 16] = rand::thread_rng().gen();
        IdempotencyToken(hex::encode(bytes))
    }

    /// A token from a caller-chosen string: at most 64 printable ASCII characters.
    pub fn new(token: impl Into<String>) -> Result<Self, ProviderError> {
        let token = token.into();
        if token.is_empty()
            || token.len() > Self::MAX_LEN
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ProviderError::invalid_input(format!(
                "idempotency token must be 1-{} printable ASCII characters, got {token:?}",
                Self::MAX_LEN
            )));
        }
        Ok(IdempotencyToken(token))
    }

    /// The token text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A token derived from this one for the `part`-th call of a split request; stable, so
    /// retries of the whole operation derive the same tokens.
    pub(crate) fn part(&self, part: usize) -> IdempotencyToken {
        if part == 0 {
            return self.clone();
        }
        let suffix = format!("-{part}");
        let keep = Self::MAX_LEN.saturating_sub(suffix.len()).min(self.0.len());
        IdempotencyToken(format!("{}{}", &self.0[..keep], suffix))
    }
}

impl fmt::Display for IdempotencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many addresses to add: secondary IPs or /28 prefixes, never both in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressCount {
    /// No addresses besides the primary (create only).
    None,
    /// This many secondary private IPv4 addresses.
    Ips(u32),
    /// This many /28 IPv4 prefixes.
    Prefixes(u32),
}

/// Options of [`CloudProvider::list_enis`].
#[derive(Debug, Clone, Default)]
pub struct ListEnisOptions {
    /// Only ENIs carrying all of these tags (key and value must match).
    pub tags: BTreeMap<String, String>,
    /// Only ENIs attached to this instance.
    pub instance_id: Option<String>,
    /// Only these ENIs (empty: no restriction).
    pub eni_ids: Vec<String>,
    /// Queue position in the rate limiter.
    pub priority: Priority,
}

/// Options of [`CloudProvider::create_eni`].
#[derive(Debug, Clone)]
pub struct CreateEniOptions {
    /// The vSwitch (Alibaba Cloud) or subnet (AWS) to take addresses from.
    pub subnet_id: String,
    /// Security groups (at least one).
    pub security_group_ids: Vec<String>,
    /// Secondary IPs or prefixes to assign at creation.
    pub addresses: AddressCount,
    /// Tags to put on the ENI (the node's and cluster's ownership tags).
    pub tags: BTreeMap<String, String>,
    /// Description shown in the console.
    pub description: Option<String>,
    /// Sent unchanged on every retry, so a lost answer does not create a second ENI.
    pub idempotency_token: IdempotencyToken,
    /// Queue position in the rate limiter.
    pub priority: Priority,
}

/// Options of [`CloudProvider::attach_eni`].
#[derive(Debug, Clone)]
pub struct AttachEniOptions {
    /// The ENI to attach.
    pub eni_id: String,
    /// The instance to attach it to.
    pub instance_id: String,
    /// Device index (AWS requires one; `None` picks the lowest free index). Ignored on
    /// Alibaba Cloud, which picks it.
    pub device_index: Option<u32>,
    /// Sent unchanged on every retry (Alibaba Cloud only; EC2 attach takes no token).
    pub idempotency_token: IdempotencyToken,
    /// Queue position in the rate limiter.
    pub priority: Priority,
}

/// What [`CloudProvider::attach_eni`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The attachment id (AWS), needed to detach; `None` on Alibaba Cloud.
    pub attachment_id: Option<String>,
}

/// The condition [`CloudProvider::wait_for_eni`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    /// `InUse`. Fails with [`ProviderError::InvalidState`] if the ENI falls back to
    /// `Available` after having been seen `Attaching` (a failed attach).
    Attached,
    /// `Available` (detached).
    Detached,
    /// The ENI no longer exists.
    Deleted,
}

impl WaitCondition {
    /// A name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitCondition::Attached => "attached",
            WaitCondition::Detached => "detached",
            WaitCondition::Deleted => "deleted",
        }
    }
}

/// Options of [`CloudProvider::wait_for_eni`].
#[derive(Debug, Clone)]
pub struct WaitEniOptions {
    /// The ENI to watch.
    pub eni_id: String,
    /// What to wait for.
    pub until: WaitCondition,
    /// Give up after this long ([`ProviderError::WaitTimeout`]).
    pub timeout: Duration,
    /// Time between two describes.
    pub poll_interval: Duration,
    /// Queue position in the rate limiter.
    pub priority: Priority,
}

impl WaitEniOptions {
    /// Wait for `until` with a 60 s timeout, polling every 500 ms, at refill priority.
    pub fn new(eni_id: impl Into<String>, until: WaitCondition) -> Self {
        WaitEniOptions {
            eni_id: eni_id.into(),
            until,
            timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            priority: Priority::Refill,
        }
    }
}

/// Options of [`CloudProvider::detach_eni`].
#[derive(Debug, Clone)]
pub struct DetachEniOptions {
    /// The ENI to detach.
    pub eni_id: String,
    /// The instance it is attached to (Alibaba Cloud requires it).
    pub instance_id: String,
    /// The attachment id (AWS); looked up with a describe when `None`.
    pub attachment_id: Option<String>,
    /// Queue position in the rate limiter.
    pub priority: Priority,
}

/// Options of [`CloudProvider::delete_eni`].
#[derive(Debug, Clone)]
pub struct DeleteEniOptions {
    /// The ENI to delete; it must be detached. Deleting an ENI that is gone succeeds.
    pub eni_id: String,
    /// Queue position in the rate limiter.
    pub priority: Priority,
}

/// Options of [`CloudProvider::assign_addresses`].
#[derive(Debug, Clone)]
pub struct AssignAddressesOptions {
    /// The ENI to add addresses to.
    pub eni_id: String,
    /// How many IPs or prefixes (not [`AddressCount::None`]). Alibaba Cloud takes at most
    /// 10 per call: larger requests are split, each part with a token derived from
    /// `idempotency_token`.
    pub addresses: AddressCount,
    /// Sent unchanged on every retry (Alibaba Cloud only; EC2 assign takes no token).
    pub idempotency_token: IdempotencyToken,
    /// Queue position in the rate limiter.
    pub priority: Priority,
}

/// The addresses a call added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssignedAddresses {
    /// New secondary IPv4 addresses.
    pub ips: Vec<Ipv4Addr>,
    /// New /28 prefixes.
    pub prefixes: Vec<Ipv4Net>,
}

/// Options of [`CloudProvider::unassign_addresses`].
#[derive(Debug, Clone)]
pub struct UnassignAddressesOptions {
    /// The ENI to remove addresses from.
    pub eni_id: String,
    /// Secondary IPs to remove. Removing one the ENI does not hold succeeds.
    pub ips: Vec<Ipv4Addr>,
    /// Prefixes to remove.
    pub prefixes: Vec<Ipv4Net>,
    /// Queue position in the rate limiter.
    pub priority: Priority,
}

/// Options of [`CloudProvider::subnet_capacity`].
#[derive(Debug, Clone, Default)]
pub struct SubnetCapacityOptions {
    /// The vSwitches/subnets to report (at least one).
    pub subnet_ids: Vec<String>,
    /// Queue position in the rate limiter.
    pub priority: Priority,
}

/// Free addresses of one vSwitch/subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetCapacity {
    /// vSwitch/subnet id.
    pub subnet_id: String,
    /// Its zone.
    pub zone: String,
    /// Its IPv4 CIDR.
    pub cidr: Ipv4Net,
    /// Free IPv4 addresses as the cloud reports them.
    pub available_ips: u64,
}

/// One cloud, at the level the ENI pool thinks in.
///
/// Every call goes through the provider's shared [`crate::ApiRateLimiter`] (waiting in
/// [`Priority`] order) and its [`crate::RetryPolicy`] (throttling, 5xx and timeouts are retried
/// with backoff, reusing the idempotency token), and is reported to its
/// [`crate::CallObserver`].
#[async_trait]
pub trait CloudProvider: Send + Sync + fmt::Debug {
    /// Which cloud this is.
    fn cloud(&self) -> Cloud;

    /// Learn the node: identity, zone, primary ENI and the instance type's limits.
    async fn node_info(&self) -> Result<NodeInfo, ProviderError>;

    /// ENIs matching the filters, all pages.
    async fn list_enis(&self, opts: &ListEnisOptions) -> Result<Vec<Eni>, ProviderError>;

    /// One ENI ([`ProviderError::NotFound`] if it does not exist).
    async fn describe_eni(&self, eni_id: &str, priority: Priority) -> Result<Eni, ProviderError>;

    /// Create a detached ENI.
    async fn create_eni(&self, opts: &CreateEniOptions) -> Result<Eni, ProviderError>;

    /// Start attaching an ENI; follow with [`CloudProvider::wait_for_eni`].
    async fn attach_eni(&self, opts: &AttachEniOptions) -> Result<Attachment, ProviderError>;

    /// Poll until the ENI is attached, detached or deleted.
    async fn wait_for_eni(&self, opts: &WaitEniOptions) -> Result<Option<Eni>, ProviderError>;

    /// Start detaching an ENI. Detaching an ENI that is gone succeeds.
    async fn detach_eni(&self, opts: &DetachEniOptions) -> Result<(), ProviderError>;

    /// Delete a detached ENI. Deleting an ENI that is gone succeeds.
    async fn delete_eni(&self, opts: &DeleteEniOptions) -> Result<(), ProviderError>;

    /// Add secondary IPs or prefixes to an ENI; returns only the new ones.
    async fn assign_addresses(
        &self,
        opts: &AssignAddressesOptions,
    ) -> Result<AssignedAddresses, ProviderError>;

    /// Remove secondary IPs and/or prefixes from an ENI.
    async fn unassign_addresses(
        &self,
        opts: &UnassignAddressesOptions,
    ) -> Result<(), ProviderError>;

    /// Free addresses per vSwitch/subnet.
    async fn subnet_capacity(
        &self,
        opts: &SubnetCapacityOptions,
    ) -> Result<Vec<SubnetCapacity>, ProviderError>;
}

/// Check an [`AddressCount`] against a per-call maximum; `allow_none` for create.
pub(crate) fn validate_count(count: AddressCount, allow_none: bool) -> Result<(), ProviderError> {
    match count {
        AddressCount::None if allow_none => Ok(()),
        AddressCount::None => Err(ProviderError::invalid_input(
            "an address request needs a count of IPs or prefixes",
        )),
        AddressCount::Ips(0) | AddressCount::Prefixes(0) => Err(ProviderError::invalid_input(
            "address count must be at least 1",
        )),
        _ => Ok(()),
    }
}

/// Shared poll loop of [`CloudProvider::wait_for_eni`], given a describe function.
pub(crate) async fn wait_for_eni_with<F, Fut>(
    opts: &WaitEniOptions,
    mut describe: F,
) -> Result<Option<Eni>, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Eni, ProviderError>>,
{
    let start = tokio::time::Instant::now();
    let mut seen_attaching = false;
    loop {
        let last_status = match describe().await {
            Ok(eni) => {
                let status = eni.status.to_string();
                match (opts.until, &eni.status) {
                    (WaitCondition::Attached, EniStatus::InUse) => return Ok(Some(eni)),
                    (WaitCondition::Attached, EniStatus::Attaching) => seen_attaching = true,
                    (WaitCondition::Attached, EniStatus::Available) if seen_attaching => {
                        return Err(ProviderError::InvalidState {
                            api: "WaitForEni",
                            code: "AttachFailed".into(),
                            message: format!(
                                "ENI {} went from Attaching back to Available: the attach failed",
                                opts.eni_id
                            ),
                            request_id: None,
                        });
                    }
                    (WaitCondition::Detached, EniStatus::Available) => return Ok(Some(eni)),
                    _ => {}
                }
                status
            }
            Err(e) if e.is_not_found() => {
                if opts.until == WaitCondition::Deleted {
                    return Ok(None);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let waited = start.elapsed();
        if waited + opts.poll_interval > opts.timeout {
            return Err(ProviderError::WaitTimeout {
                eni_id: opts.eni_id.clone(),
                wanted: opts.until.as_str(),
                last_status,
                waited,
            });
        }
        tokio::time::sleep(opts.poll_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rules() {
        assert!(IdempotencyToken::new("").is_err());
        assert!(IdempotencyToken::new("a b").is_err());
        assert!(IdempotencyToken::new("x".repeat(65)).is_err());
        let t = IdempotencyToken::new("x".repeat(64)).unwrap();
        let p = t.part(3);
        assert_eq!(p.as_str().len(), 64);
        assert!(p.as_str().ends_with("-3"));
        assert_eq!(t.part(0), t);
        let r = IdempotencyToken::random();
        assert_eq!(r.as_str().len(), 32);
        assert_ne!(r, IdempotencyToken::random());
    }

    #[test]
    fn counts() {
        assert!(validate_count(AddressCount::None, true).is_ok());
        assert!(validate_count(AddressCount::None, false).is_err());
        assert!(validate_count(AddressCount::Ips(0), false).is_err());
        assert!(validate_count(AddressCount::Prefixes(2), false).is_ok());
    }
}
