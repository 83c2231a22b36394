//! The cloud operations behind the planner's actions, each a sequence of provider calls plus
//! node bring-up, run as its own task. They never touch the model: they return what happened
//! and the manager records it. On failure half-way they undo what they did (an ENI created but
//! not attached is deleted) so nothing is left behind; what they cannot undo carries the
//! node's tags and is found by reconciliation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use cloud_providers::{
    AddressCount, AssignAddressesOptions, AttachEniOptions, CloudProvider, CreateEniOptions,
    DeleteEniOptions, DetachEniOptions, Eni, IdempotencyToken, NodeInfo, Priority, ProviderError,
    UnassignAddressesOptions, WaitCondition, WaitEniOptions,
};
use ipnet::Ipv4Net;
use tracing::{info, warn};

use super::state::{EniKind, EniPhase, EniRecord};
use crate::node::{EniNetSpec, NodeNetError, NodeNetwork};

/// Tag keys the manager puts on every ENI it creates.
pub const TAG_CLUSTER: &str = "eni-net.io/cluster";
/// The node (instance id) the ENI was created for.
pub const TAG_NODE: &str = "eni-net.io/node";
/// `shared` or `exclusive`.
pub const TAG_KIND: &str = "eni-net.io/kind";

/// What every operation needs.
#[derive(Debug)]
pub struct OpContext {
    /// The cloud.
    pub provider: Arc<dyn CloudProvider>,
    /// The node's networking.
    pub net: Arc<dyn NodeNetwork>,
    /// The node.
    pub node: NodeInfo,
    /// Cluster id.
    pub cluster_id: String,
    /// Extra tags.
    pub extra_tags: BTreeMap<String, String>,
    /// Security groups of new ENIs.
    pub security_groups: Vec<String>,
    /// Link MTU.
    pub mtu: u32,
    /// Route table base.
    pub route_table_base: u32,
    /// Rule priority.
    pub rule_priority: u32,
    /// How long to wait for an attach.
    pub attach_timeout: Duration,
    /// How long to wait for the link to appear after attach.
    pub link_timeout: Duration,
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The cloud refused or failed.
    #[error(transparent)]
    Cloud(#[from] ProviderError),
    /// The node's networking failed.
    #[error(transparent)]
    Node(#[from] NodeNetError),
    /// A blocking task panicked or was cancelled.
    #[error("internal: {0}")]
    Internal(String),
}

impl OpContext {
    /// The ownership tags of a new ENI.
    pub fn tags(&self, kind: EniKind) -> BTreeMap<String, String> {
        let mut t = self.extra_tags.clone();
        t.insert(TAG_CLUSTER.into(), self.cluster_id.clone());
        t.insert(TAG_NODE.into(), self.node.instance_id.clone());
        t.insert(
            TAG_KIND.into(),
            match kind {
                EniKind::Shared => "shared",
                EniKind::Exclusive => "exclusive",
            }
            .into(),
        );
        t
    }

    /// The node-networking spec of an ENI.
    pub fn net_spec(&self, rec: &EniRecord) -> EniNetSpec {
        EniNetSpec {
            eni_id: rec.id.clone(),
            mac: rec.mac.clone(),
            kind: rec.kind,
            mtu: self.mtu,
            route_table: rec.route_table,
            rule_priority: self.rule_priority,
            cidr: rec.cidr,
            gateway: rec.gateway,
            primary_ip: rec.primary_ip,
        }
    }

    async fn bring_up(&self, rec: &EniRecord) -> Result<String, OpError> {
        let net = self.net.clone();
        let spec = self.net_spec(rec);
        let wait = self.link_timeout;
        tokio::task::spawn_blocking(move || net.bring_up(&spec, wait))
            .await
            .map_err(|e| OpError::Internal(e.to_string()))?
            .map_err(OpError::from)
    }

    async fn tear_down(&self, rec: &EniRecord) -> Result<(), OpError> {
        let net = self.net.clone();
        let spec = self.net_spec(rec);
        tokio::task::spawn_blocking(move || net.tear_down(&spec))
            .await
            .map_err(|e| OpError::Internal(e.to_string()))?
            .map_err(OpError::from)
    }
}

/// The secondary addresses of a cloud ENI, prefixes expanded to their members.
pub fn eni_addresses(eni: &Eni) -> (BTreeSet<Ipv4Addr>, BTreeSet<Ipv4Net>) {
    let mut ips: BTreeSet<Ipv4Addr> = eni.secondary_ips.iter().copied().collect();
    let prefixes: BTreeSet<Ipv4Net> = eni.prefixes.iter().copied().collect();
    for p in &prefixes {
        ips.extend(prefix_members(p));
    }
    (ips, prefixes)
}

/// Every address of a prefix (a /28 hands out all 16).
pub fn prefix_members(p: &Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let lo = u32::from(p.network());
    let hi = u32::from(p.broadcast());
    (lo..=hi).map(Ipv4Addr::from)
}

/// The gateway of a subnet on this cloud: Alibaba Cloud uses the fourth-last address (`.253`
/// of a /24), AWS the first (`.1`).
pub fn gateway_of(cloud: cloud_providers::Cloud, cidr: Ipv4Net) -> Ipv4Addr {
    match cloud {
        cloud_providers::Cloud::Aliyun => Ipv4Addr::from(u32::from(cidr.broadcast()) - 2),
        cloud_providers::Cloud::Aws => Ipv4Addr::from(u32::from(cidr.network()) + 1),
    }
}

/// Builds the model's record of an attached cloud ENI.
pub fn record_of(
    ctx: &OpContext,
    eni: &Eni,
    kind: EniKind,
    cidr: Ipv4Net,
) -> Result<EniRecord, OpError> {
    let (ips, prefixes) = eni_addresses(eni);
    let primary_ip = eni.primary_ip.ok_or_else(|| {
        OpError::Internal(format!(
            "the cloud reports no primary address for {}",
            eni.id
        ))
    })?;
    let index = eni.device_index.unwrap_or(0);
    Ok(EniRecord {
        id: eni.id.clone(),
        mac: eni.mac.to_ascii_lowercase(),
        kind,
        phase: EniPhase::Ready,
        subnet_id: eni.subnet_id.clone(),
        cidr,
        gateway: gateway_of(ctx.provider.cloud(), cidr),
        primary_ip,
        device_index: eni.device_index,
        attachment_id: eni.attachment_id.clone(),
        host_ifname: None,
        route_table: ctx.route_table_base + index,
        ips,
        prefixes,
    })
}

/// Creates an ENI, attaches it to this node, waits for it and brings it up. On failure after
/// the create, detaches (if needed) and deletes it.
pub async fn create_eni(
    ctx: &OpContext,
    subnet_id: &str,
    subnet_cidr: Ipv4Net,
    kind: EniKind,
    addresses: AddressCount,
    token: &IdempotencyToken,
    priority: Priority,
) -> Result<EniRecord, OpError> {
    let eni = ctx
        .provider
        .create_eni(&CreateEniOptions {
            subnet_id: subnet_id.to_string(),
            security_group_ids: ctx.security_groups.clone(),
            addresses,
            tags: ctx.tags(kind),
            description: Some(format!(
                "eni-net {} ENI of node {}",
                match kind {
                    EniKind::Shared => "shared",
                    EniKind::Exclusive => "exclusive",
                },
                ctx.node.instance_id
            )),
            idempotency_token: token.clone(),
            priority,
        })
        .await?;
    info!(eni = %eni.id, subnet = subnet_id, "ENI created");
    match attach_and_bring_up(ctx, &eni, kind, subnet_cidr, token, priority).await {
        Ok(rec) => Ok(rec),
        Err(e) => {
            warn!(eni = %eni.id, error = %e, "ENI could not be attached and brought up; removing it");
            if let Err(undo) = remove_from_cloud(ctx, &eni.id, eni.attachment_id.clone()).await {
                warn!(eni = %eni.id, error = %undo, "removing the ENI failed; reconciliation will retry");
            }
            Err(e)
        }
    }
}

async fn attach_and_bring_up(
    ctx: &OpContext,
    eni: &Eni,
    kind: EniKind,
    cidr: Ipv4Net,
    token: &IdempotencyToken,
    priority: Priority,
) -> Result<EniRecord, OpError> {
    ctx.provider
        .attach_eni(&AttachEniOptions {
            eni_id: eni.id.clone(),
            instance_id: ctx.node.instance_id.clone(),
            device_index: None,
            idempotency_token: attach_token(token),
            priority,
        })
        .await?;
    let mut wait = WaitEniOptions::new(eni.id.clone(), WaitCondition::Attached);
    wait.timeout = ctx.attach_timeout;
    wait.poll_interval = Duration::from_millis(200);
    wait.priority = priority;
    let attached = ctx
        .provider
        .wait_for_eni(&wait)
        .await?
        .ok_or_else(|| OpError::Internal(format!("{} vanished while attaching", eni.id)))?;
    adopt(ctx, &attached, kind, cidr).await
}

/// The attach of a create gets its own token, derived from the create's: a retried create
/// then retries the same attach.
fn attach_token(create: &IdempotencyToken) -> IdempotencyToken {
    let base = create.as_str();
    let keep = base.len().min(IdempotencyToken::MAX_LEN - 2);
    IdempotencyToken::new(format!("{}-a", &base[..keep]))
        .unwrap_or_else(|_| IdempotencyToken::random())
}

/// Brings up an attached cloud ENI and returns its record.
pub async fn adopt(
    ctx: &OpContext,
    eni: &Eni,
    kind: EniKind,
    cidr: Ipv4Net,
) -> Result<EniRecord, OpError> {
    let mut rec = record_of(ctx, eni, kind, cidr)?;
    let name = ctx.bring_up(&rec).await?;
    info!(eni = %rec.id, ifname = %name, table = rec.route_table, "ENI ready");
    rec.host_ifname = Some(name);
    Ok(rec)
}

/// Adds addresses to an ENI; returns the new ones (prefixes expanded) and the prefixes.
pub async fn assign(
    ctx: &OpContext,
    eni_id: &str,
    addresses: AddressCount,
    token: &IdempotencyToken,
    priority: Priority,
) -> Result<(BTreeSet<Ipv4Addr>, BTreeSet<Ipv4Net>), OpError> {
    let got = ctx
        .provider
        .assign_addresses(&AssignAddressesOptions {
            eni_id: eni_id.to_string(),
            addresses,
            idempotency_token: token.clone(),
            priority,
        })
        .await?;
    let prefixes: BTreeSet<Ipv4Net> = got.prefixes.iter().copied().collect();
    let mut ips: BTreeSet<Ipv4Addr> = got.ips.iter().copied().collect();
    for p in &prefixes {
        ips.extend(prefix_members(p));
    }
    Ok((ips, prefixes))
}

/// Removes addresses from an ENI (addresses already gone count as removed).
pub async fn unassign(
    ctx: &OpContext,
    eni_id: &str,
    ips: &BTreeSet<Ipv4Addr>,
    prefixes: &BTreeSet<Ipv4Net>,
) -> Result<(), OpError> {
    let single: Vec<Ipv4Addr> = ips
        .iter()
        .filter(|ip| !prefixes.iter().any(|p| p.contains(*ip)))
        .copied()
        .collect();
    ctx.provider
        .unassign_addresses(&UnassignAddressesOptions {
            eni_id: eni_id.to_string(),
            ips: single,
            prefixes: prefixes.iter().copied().collect(),
            priority: Priority::Release,
        })
        .await?;
    Ok(())
}

/// Tears down an ENI's node networking, then detaches and deletes it.
pub async fn remove_eni(ctx: &OpContext, rec: &EniRecord) -> Result<(), OpError> {
    if let Err(e) = ctx.tear_down(rec).await {
        warn!(eni = %rec.id, error = %e, "tearing down the ENI's routes failed; detaching anyway");
    }
    remove_from_cloud(ctx, &rec.id, rec.attachment_id.clone()).await
}

/// Detaches (if attached) and deletes an ENI, waiting for each step.
pub async fn remove_from_cloud(
    ctx: &OpContext,
    eni_id: &str,
    attachment_id: Option<String>,
) -> Result<(), OpError> {
    let current = match ctx.provider.describe_eni(eni_id, Priority::Release).await {
        Ok(e) => e,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if current.instance_id.is_some() {
        // An answer lost after the cloud acted (or a crash between the call and its record)
        // makes the repeat of a detach or delete find the ENI gone: that is done, not failed.
        let detached = ctx
            .provider
            .detach_eni(&DetachEniOptions {
                eni_id: eni_id.to_string(),
                instance_id: current
                    .instance_id
                    .clone()
                    .unwrap_or_else(|| ctx.node.instance_id.clone()),
                attachment_id: current.attachment_id.clone().or(attachment_id),
                priority: Priority::Release,
            })
            .await;
        match detached {
            // Only when the ENI itself is gone (not, say, an instance id the cloud lost).
            Err(e) if e.is_not_found() => {
                match ctx.provider.describe_eni(eni_id, Priority::Release).await {
                    Err(gone) if gone.is_not_found() => return Ok(()),
                    _ => return Err(e.into()),
                }
            }
            other => other?,
        }
        let mut wait = WaitEniOptions::new(eni_id.to_string(), WaitCondition::Detached);
        wait.timeout = ctx.attach_timeout;
        wait.poll_interval = Duration::from_millis(200);
        wait.priority = Priority::Release;
        ctx.provider.wait_for_eni(&wait).await?;
    }
    match ctx
        .provider
        .delete_eni(&DeleteEniOptions {
            eni_id: eni_id.to_string(),
            priority: Priority::Release,
        })
        .await
    {
        Err(e) if e.is_not_found() => {
            info!(eni = eni_id, "ENI already deleted");
            return Ok(());
        }
        other => other?,
    }
    let mut wait = WaitEniOptions::new(eni_id.to_string(), WaitCondition::Deleted);
    wait.timeout = ctx.attach_timeout;
    wait.poll_interval = Duration::from_millis(200);
    wait.priority = Priority::Release;
    ctx.provider.wait_for_eni(&wait).await?;
    info!(eni = eni_id, "ENI deleted");
    Ok(())
}
