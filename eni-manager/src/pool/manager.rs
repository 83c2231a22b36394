//! The pool actor: the one task that owns the model, the store and the decisions.
//!
//! Requests (allocate, release, check, list, status, GC) and the results of cloud operations
//! arrive as messages. The actor drains whatever is queued, applies it to the model, appends
//! the resulting events to the store with one sync (group commit), and only then answers and
//! starts cloud operations; so every answer and every cloud call is preceded by its durable
//! record. Cloud work runs in tasks (`ops`) and reports back. On start the actor reconciles
//! the store with the cloud, the node and the pods' namespaces before it answers anything.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloud_providers::{
    AddressCount, EniStatus, IdempotencyToken, ListEnisOptions, NodeInfo, Priority, ProviderError,
    SubnetCapacityOptions,
};
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::ops::{self, OpContext, OpError, TAG_CLUSTER, TAG_KIND, TAG_NODE};
use super::planner::{self, Action, Blocked, Limits, PlanInput, PoolTargets, SubnetChoice};
use super::state::{
    AllocKey, AllocRecord, EniKind, EniPhase, EniRecord, Event, Intent, PodInfo, PoolState,
};
use crate::hostports::{HostPort, HostPortEntry, HostPorts};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Why reconciliation stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The cloud could not be asked.
    #[error(transparent)]
    Cloud(#[from] ProviderError),
    /// The store could not record the outcome.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an allocation failed; the CNI reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The request is malformed.
    BadRequest,
    /// Nothing is allocated under that key.
    NotFound,
    /// No address could be had in time, for no more specific reason.
    PoolExhausted,
    /// Every vSwitch/subnet of the zone is out of addresses.
    SubnetExhausted,
    /// The node holds as many ENIs and addresses as its instance type allows.
    EniLimit,
    /// The cloud throttled us.
    CloudThrottled,
    /// The cloud or its credentials are failing.
    CloudUnavailable,
    /// The deadline passed while waiting.
    Timeout,
    /// The manager is stopping.
    ShuttingDown,
    /// A bug or a storage failure.
    Internal,
    /// Well formed but not grantable as asked (a host port another allocation holds).
    Refused,
}

/// An allocation failure with its reason and an operator-facing message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AllocError {
    /// Why.
    pub reason: Reason,
    /// What happened, with what to do about it.
    pub message: String,
}

impl AllocError {
    fn new(reason: Reason, message: impl Into<String>) -> AllocError {
        AllocError {
            reason,
            message: message.into(),
        }
    }
}

/// An allocation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocRequest {
    /// Holder.
    pub key: AllocKey,
    /// The pod's network namespace.
    pub netns: String,
    /// The pod.
    pub pod: Option<PodInfo>,
    /// A whole ENI.
    pub exclusive: bool,
    /// How long to wait for the pool (None: the configured default).
    pub timeout: Option<Duration>,
    /// The pod's host ports, validated ([`crate::hostports::validate`]); refused when
    /// another allocation holds one of them.
    pub host_ports: Vec<HostPort>,
}

/// What a pod was given: the allocation and the ENI it lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The allocation.
    pub alloc: AllocRecord,
    /// The ENI (as it was at the time of the answer).
    pub eni: EniRecord,
}

/// One ENI in a status answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniView {
    /// The record.
    pub eni: EniRecord,
    /// Allocations on it.
    pub allocations: Vec<AllocRecord>,
}

/// A snapshot for `Status`.
#[derive(Debug, Clone)]
pub struct StatusView {
    /// The node.
    pub node: NodeInfo,
    /// Limits in force.
    pub limits: Limits,
    /// Targets in force.
    pub targets: PoolTargets,
    /// Idle shared addresses.
    pub idle: u32,
    /// Allocated addresses (shared and exclusive).
    pub allocated: u32,
    /// Shared addresses in total.
    pub total: u32,
    /// ENIs.
    pub enis: Vec<EniView>,
    /// Why the cloud is unusable, if it is.
    pub degraded: Option<String>,
    /// Requests waiting for the pool.
    pub waiting: u32,
    /// Cloud operations in flight.
    pub operations: u32,
}

type Reply<T> = oneshot::Sender<T>;

/// Messages to the actor.
#[derive(Debug)]
enum Msg {
    Allocate(AllocRequest, Reply<Result<Granted, AllocError>>),
    Release(AllocKey, Reply<Result<Option<Granted>, AllocError>>),
    Check(AllocKey, Reply<Result<Granted, AllocError>>),
    List(Reply<Vec<Granted>>),
    Status(Reply<StatusView>),
    Gc(BTreeSet<AllocKey>, Reply<Result<Vec<Granted>, AllocError>>),
    OpDone(u64, OpOutcome),
    SubnetsRefreshed(Result<Vec<cloud_providers::SubnetCapacity>, String>),
    OrphanScan(Result<Vec<cloud_providers::Eni>, String>),
}

#[derive(Debug)]
enum OpOutcome {
    Created(Result<EniRecord, OpError>),
    Assigned(Result<(BTreeSet<Ipv4Addr>, BTreeSet<Ipv4Net>), OpError>),
    Unassigned(Result<(), OpError>),
    Removed(Result<(), OpError>),
}

/// The handle everyone else uses.
#[derive(Debug, Clone)]
pub struct PoolHandle {
    tx: mpsc::Sender<Msg>,
}

fn gone<T>() -> Result<T, AllocError> {
    Err(AllocError::new(
        Reason::ShuttingDown,
        "the manager is shutting down",
    ))
}

impl PoolHandle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Msg) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Allocates (idempotent per key).
    pub async fn allocate(&self, req: AllocRequest) -> Result<Granted, AllocError> {
        self.ask(|r| Msg::Allocate(req, r))
            .await
            .unwrap_or_else(gone)
    }

    /// Releases (idempotent: `None` when nothing was allocated).
    pub async fn release(&self, key: AllocKey) -> Result<Option<Granted>, AllocError> {
        self.ask(|r| Msg::Release(key, r))
            .await
            .unwrap_or_else(gone)
    }

    /// The allocation under `key`.
    pub async fn check(&self, key: AllocKey) -> Result<Granted, AllocError> {
        self.ask(|r| Msg::Check(key, r)).await.unwrap_or_else(gone)
    }

    /// Every allocation.
    pub async fn list(&self) -> Result<Vec<Granted>, AllocError> {
        self.ask(Msg::List)
            .await
            .ok_or_else(|| gone::<()>().unwrap_err())
    }

    /// A status snapshot.
    pub async fn status(&self) -> Result<StatusView, AllocError> {
        self.ask(Msg::Status)
            .await
            .ok_or_else(|| gone::<()>().unwrap_err())
    }

    /// Releases every allocation not in `valid`.
    pub async fn gc(&self, valid: BTreeSet<AllocKey>) -> Result<Vec<Granted>, AllocError> {
        self.ask(|r| Msg::Gc(valid, r)).await.unwrap_or_else(gone)
    }
}

/// Settings of the actor.
#[derive(Debug, Clone)]
pub struct ManagerSettings {
    /// Targets.
    pub targets: PoolTargets,
    /// ENI cap from configuration (primary included).
    pub max_enis: Option<u32>,
    /// Batch window for demand.
    pub batch_window: Duration,
    /// Default allocation timeout.
    pub allocate_timeout: Duration,
    /// Subnets to create ENIs in (the node's zone), in configured order.
    pub subnets: Vec<String>,
    /// Sort subnets by free addresses (else keep the order).
    pub most_free: bool,
    /// How long an exhausted subnet is skipped.
    pub exhausted_block: Duration,
    /// GC interval.
    pub gc_interval: Duration,
    /// Grace before releasing an allocation whose netns is gone.
    pub gc_grace: Duration,
    /// Grace before deleting a detached ENI of the cluster.
    pub orphan_grace: Duration,
}

#[derive(Debug)]
struct Waiter {
    req: AllocRequest,
    deadline: Instant,
    reply: Reply<Result<Granted, AllocError>>,
}

#[derive(Debug, Clone)]
struct SubnetInfo {
    cidr: Ipv4Net,
    available: Option<u64>,
}

/// The actor.
#[derive(Debug)]
pub struct Manager {
    settings: ManagerSettings,
    ctx: Arc<OpContext>,
    limits: Limits,
    store: Store,
    state: PoolState,
    idle_since: HashMap<Ipv4Addr, u64>,
    waiters: VecDeque<Waiter>,
    plan_at: Option<Instant>,
    subnets: BTreeMap<String, SubnetInfo>,
    subnets_fetched: Option<Instant>,
    subnets_refreshing: bool,
    blocked_until: HashMap<String, Instant>,
    last_failure: Option<(Reason, String)>,
    degraded: Option<String>,
    netns_missing_since: HashMap<AllocKey, Instant>,
    leaving_retry_at: HashMap<String, Instant>,
    /// Failed removals of each leaving ENI in a row (sets the pause before the next try).
    leaving_failures: HashMap<String, u32>,
    orphans: HashMap<String, Instant>,
    orphan_scan_running: bool,
    orphan_scan_at: Option<Instant>,
    metrics: Arc<Metrics>,
    /// Where the allocations' host ports are published after each batch, when the node
    /// serves host ports.
    host_ports: Option<HostPorts>,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
}

/// Work collected while handling a batch: events to sync, then answers and operations.
#[derive(Default)]
struct Batch {
    events: Vec<Event>,
    answers: Vec<Box<dyn FnOnce(bool) + Send>>,
    start: Vec<(u64, Intent, Priority)>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn reason_of(e: &OpError) -> Reason {
    match e {
        OpError::Cloud(p) => match p.root() {
            ProviderError::Throttled { .. } => Reason::CloudThrottled,
            ProviderError::IpExhausted { .. } => Reason::SubnetExhausted,
            ProviderError::EniLimit { .. } | ProviderError::IpLimit { .. } => Reason::EniLimit,
            ProviderError::Auth { .. } | ProviderError::Transient { .. } => {
                Reason::CloudUnavailable
            }
            _ => Reason::PoolExhausted,
        },
        OpError::Node(_) | OpError::Internal(_) => Reason::PoolExhausted,
    }
}

fn is_outage(e: &OpError) -> bool {
    matches!(e, OpError::Cloud(p) if matches!(p.root(), ProviderError::Auth { .. } | ProviderError::Transient { .. } | ProviderError::Throttled { .. } | ProviderError::Malformed { .. }))
        || matches!(e, OpError::Cloud(ProviderError::RetriesExhausted { .. }))
}

impl Manager {
    /// Opens the store, learns the subnets, reconciles with the cloud and the node, and returns
    /// the actor and its handle. Cloud failures during reconciliation leave the manager
    /// degraded (it serves from what the store holds) rather than failing.
    pub async fn start(
        settings: ManagerSettings,
        ctx: Arc<OpContext>,
        limits: Limits,
        state_dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<(Manager, PoolHandle), StoreError> {
        let opened = Store::open(state_dir)?;
        info!(
            replayed = opened.replayed,
            enis = opened.state.enis.len(),
            allocations = opened.state.allocations.len(),
            torn_tail = opened.discarded_tail,
            "state loaded"
        );
        let (tx, rx) = mpsc::channel(4096);
        let mut m = Manager {
            settings,
            ctx,
            limits,
            store: opened.store,
            state: opened.state,
            idle_since: HashMap::new(),
            waiters: VecDeque::new(),
            plan_at: Some(Instant::now()),
            subnets: BTreeMap::new(),
            subnets_fetched: None,
            subnets_refreshing: false,
            blocked_until: HashMap::new(),
            last_failure: None,
            degraded: None,
            netns_missing_since: HashMap::new(),
            leaving_retry_at: HashMap::new(),
            leaving_failures: HashMap::new(),
            orphans: HashMap::new(),
            orphan_scan_running: false,
            orphan_scan_at: None,
            metrics,
            host_ports: None,
            tx: tx.clone(),
            rx,
        };
        let now = now_ms();
        for (ip, _) in m.state.idle_ips() {
            m.idle_since.insert(ip, now);
        }
        for e in m.state.idle_exclusive() {
            m.idle_since.insert(e.primary_ip, now);
        }
        m.refresh_subnets_now().await;
        if let Err(e) = m.reconcile().await {
            let msg = format!("reconciliation with the cloud failed: {e}");
            warn!("{msg}; serving from the stored pool until the cloud answers");
            m.degraded = Some(msg);
        }
        m.update_gauges();
        Ok((m, PoolHandle { tx }))
    }

    /// Publishes the allocations' host ports to `hp` now and after every batch (before the
    /// batch's answers), so the services loop serves exactly what the store holds.
    pub fn with_host_ports(mut self, hp: HostPorts) -> Self {
        self.host_ports = Some(hp);
        self.publish_host_ports();
        self
    }

    /// Every host port held by an allocation, with its pod address and holder.
    pub fn host_port_entries(state: &PoolState) -> Vec<HostPortEntry> {
        state
            .allocations
            .values()
            .flat_map(|a| {
                a.host_ports.iter().map(|p| HostPortEntry {
                    port: *p,
                    pod_ip: a.ip,
                    holder: holder(&a.key, a.pod.as_ref()),
                })
            })
            .collect()
    }

    fn publish_host_ports(&self) {
        if let Some(hp) = &self.host_ports {
            hp.set(Self::host_port_entries(&self.state));
        }
    }

    /// The first host port of `req` that another allocation (or another waiting request)
    /// already claims, as a message naming the holder.
    fn host_port_conflict(&self, req: &AllocRequest) -> Option<String> {
        if req.host_ports.is_empty() {
            return None;
        }
        let held = self
            .state
            .allocations
            .values()
            .filter(|a| a.key != req.key)
            .map(|a| (&a.key, a.pod.as_ref(), &a.host_ports, "holds"));
        let waiting = self
            .waiters
            .iter()
            .filter(|w| w.req.key != req.key)
            .map(|w| {
                (
                    &w.req.key,
                    w.req.pod.as_ref(),
                    &w.req.host_ports,
                    "is waiting for",
                )
            });
        for (key, pod, ports, verb) in held.chain(waiting) {
            for want in &req.host_ports {
                if let Some(other) = ports.iter().find(|p| p.overlaps(want)) {
                    return Some(format!(
                        "port_mappings: host port {want} is taken: {} {verb} {other}; \
                         give the pod another hostPort (or hostIP), or delete the other pod first",
                        holder(key, pod)
                    ));
                }
            }
        }
        None
    }

    async fn refresh_subnets_now(&mut self) {
        let mut ids: BTreeSet<String> = self.settings.subnets.iter().cloned().collect();
        ids.extend(self.state.enis.values().map(|e| e.subnet_id.clone()));
        match self
            .ctx
            .provider
            .subnet_capacity(&SubnetCapacityOptions {
                subnet_ids: ids.into_iter().collect(),
                priority: Priority::Refill,
            })
            .await
        {
            Ok(caps) => self.apply_subnets(caps),
            Err(e) => {
                warn!(error = %e, "cannot learn the vSwitches/subnets");
                self.degraded = Some(format!("cannot describe vSwitches/subnets: {e}"));
            }
        }
    }

    fn apply_subnets(&mut self, caps: Vec<cloud_providers::SubnetCapacity>) {
        for c in caps {
            self.metrics
                .set_subnet_available(&c.subnet_id, c.available_ips);
            self.subnets.insert(
                c.subnet_id.clone(),
                SubnetInfo {
                    cidr: c.cidr,
                    available: Some(c.available_ips),
                },
            );
        }
        self.subnets_fetched = Some(Instant::now());
    }

    /// Brings the store in line with the cloud (ENIs tagged for this node and cluster) and the
    /// node (links): adopts what is ours, finishes or undoes operations a crash interrupted,
    /// drops what is gone.
    async fn reconcile(&mut self) -> Result<(), ReconcileError> {
        let ctx = self.ctx.clone();
        let node = &ctx.node;
        let mut tags = BTreeMap::new();
        tags.insert(TAG_CLUSTER.to_string(), self.ctx.cluster_id.clone());
        tags.insert(TAG_NODE.to_string(), node.instance_id.clone());
        let cloud_enis = self
            .ctx
            .provider
            .list_enis(&ListEnisOptions {
                tags,
                instance_id: None,
                eni_ids: Vec::new(),
                priority: Priority::Refill,
            })
            .await?;
        let mut events = Vec::new();
        let by_id: BTreeMap<&str, &cloud_providers::Eni> =
            cloud_enis.iter().map(|e| (e.id.as_str(), e)).collect();

        // Operations a crash interrupted: the cloud's answer below decides their effect.
        // An unassign or assign that reached the cloud shows in its address lists (synced
        // below); one that did not leaves the addresses as they were. A create shows as a
        // tagged ENI (adopted or removed below). Only removals are carried on.
        let mut redo_remove = Vec::new();
        for (op, intent) in self.state.intents.clone() {
            if let Intent::RemoveEni { eni_id } = &intent {
                redo_remove.push(eni_id.clone());
            }
            events.push(Event::IntentFinished { op });
        }
        self.commit_events(events)?;

        let mut events = Vec::new();
        // ENIs in the store that the cloud no longer shows attached here.
        for (id, rec) in self.state.enis.clone() {
            let attached_here = by_id.get(id.as_str()).is_some_and(|e| {
                e.instance_id.as_deref() == Some(node.instance_id.as_str())
                    && matches!(e.status, EniStatus::InUse)
            });
            if !attached_here {
                for a in self.state.allocations.values().filter(|a| a.eni_id == id) {
                    error!(eni = %id, pod = %a.key, ip = %a.ip, "the ENI of an allocation is gone from the cloud; dropping the allocation");
                    events.push(Event::Freed { key: a.key.clone() });
                }
                events.push(Event::EniGone { eni_id: id.clone() });
                if by_id.contains_key(id.as_str()) {
                    redo_remove.push(id.clone());
                }
                let _ = rec;
            }
        }
        self.commit_events(events)?;

        for eni in &cloud_enis {
            let attached_here = eni.instance_id.as_deref() == Some(node.instance_id.as_str());
            let kind = match eni.tags.get(TAG_KIND).map(String::as_str) {
                Some("exclusive") => EniKind::Exclusive,
                _ => EniKind::Shared,
            };
            let leaving = redo_remove.contains(&eni.id);
            match (&eni.status, attached_here) {
                (EniStatus::InUse, true) if !leaving => {
                    self.adopt_or_sync(eni, kind).await;
                }
                (EniStatus::Attaching, true) if !leaving => {
                    // Finish the attach in the background: wait, then adopt.
                    let cidr = self.subnet_cidr(&eni.subnet_id).await;
                    let ctx = self.ctx.clone();
                    let tx = self.tx.clone();
                    let eni = eni.clone();
                    let op = self.state.next_op;
                    let intent = Intent::CreateEni {
                        token: IdempotencyToken::random().as_str().to_string(),
                        subnet_id: eni.subnet_id.clone(),
                        kind,
                        ips: 0,
                        prefixes: 0,
                    };
                    self.commit_events(vec![Event::IntentStarted { op, intent }])?;
                    tokio::spawn(async move {
                        let res = async {
                            let cidr = cidr.ok_or_else(|| {
                                OpError::Internal(format!("unknown subnet {}", eni.subnet_id))
                            })?;
                            let mut wait = cloud_providers::WaitEniOptions::new(
                                eni.id.clone(),
                                cloud_providers::WaitCondition::Attached,
                            );
                            wait.timeout = ctx.attach_timeout;
                            let e =
                                ctx.provider.wait_for_eni(&wait).await?.ok_or_else(|| {
                                    OpError::Internal(format!("{} vanished", eni.id))
                                })?;
                            ops::adopt(&ctx, &e, kind, cidr).await
                        }
                        .await;
                        let _ = tx.send(Msg::OpDone(op, OpOutcome::Created(res))).await;
                    });
                }
                _ => {
                    // Ours but not usable here: detached, detaching, or interrupted while
                    // leaving. Remove it (detach if needed, then delete).
                    info!(eni = %eni.id, status = %eni.status, "removing an ENI of this node that is not in use");
                    let ctx = self.ctx.clone();
                    let id = eni.id.clone();
                    let att = eni.attachment_id.clone();
                    tokio::spawn(async move {
                        if let Err(e) = ops::remove_from_cloud(&ctx, &id, att).await {
                            warn!(eni = %id, error = %e, "removing a stray ENI failed; the next reconciliation retries");
                        }
                    });
                }
            }
        }
        self.degraded = None;
        Ok(())
    }

    async fn subnet_cidr(&mut self, subnet_id: &str) -> Option<Ipv4Net> {
        if let Some(s) = self.subnets.get(subnet_id) {
            return Some(s.cidr);
        }
        match self
            .ctx
            .provider
            .subnet_capacity(&SubnetCapacityOptions {
                subnet_ids: vec![subnet_id.to_string()],
                priority: Priority::Refill,
            })
            .await
        {
            Ok(caps) => {
                let cidr = caps
                    .iter()
                    .find(|c| c.subnet_id == subnet_id)
                    .map(|c| c.cidr);
                self.apply_subnets(caps);
                cidr
            }
            Err(e) => {
                warn!(subnet = subnet_id, error = %e, "cannot describe subnet");
                None
            }
        }
    }

    /// An attached ENI of ours: adopt it if the store lacks it, else bring its addresses in
    /// line with the cloud and make sure its link is configured.
    async fn adopt_or_sync(&mut self, eni: &cloud_providers::Eni, kind: EniKind) {
        let (cloud_ips, cloud_prefixes) = ops::eni_addresses(eni);
        if let Some(rec) = self.state.enis.get(&eni.id).cloned() {
            let mut events = Vec::new();
            let added: BTreeSet<Ipv4Addr> = cloud_ips.difference(&rec.ips).copied().collect();
            let removed: BTreeSet<Ipv4Addr> = rec.ips.difference(&cloud_ips).copied().collect();
            let added_p: BTreeSet<Ipv4Net> =
                cloud_prefixes.difference(&rec.prefixes).copied().collect();
            let removed_p: BTreeSet<Ipv4Net> =
                rec.prefixes.difference(&cloud_prefixes).copied().collect();
            for ip in &removed {
                if let Some(holder) = self.state.holder_of(*ip).cloned() {
                    error!(eni = %eni.id, %ip, pod = %holder, "an allocated address is no longer on its ENI; dropping the allocation");
                    events.push(Event::Freed { key: holder });
                }
            }
            if !added.is_empty() || !added_p.is_empty() {
                info!(eni = %eni.id, count = added.len(), "adopting addresses the store did not know");
                events.push(Event::AddressesAdded {
                    eni_id: eni.id.clone(),
                    ips: added.clone(),
                    prefixes: added_p,
                });
            }
            if !removed.is_empty() || !removed_p.is_empty() {
                events.push(Event::AddressesRemoved {
                    eni_id: eni.id.clone(),
                    ips: removed,
                    prefixes: removed_p,
                });
            }
            let held_by_pod = rec.kind == EniKind::Exclusive
                && self
                    .state
                    .allocations
                    .values()
                    .any(|a| a.exclusive && a.eni_id == rec.id);
            if !held_by_pod {
                let ctx = self.ctx.clone();
                let spec = ctx.net_spec(&rec);
                let wait = Duration::from_secs(5);
                let net = ctx.net.clone();
                match tokio::task::spawn_blocking(move || net.bring_up(&spec, wait)).await {
                    Ok(Ok(name)) if rec.host_ifname.as_deref() != Some(name.as_str()) => {
                        events.push(Event::EniLinked {
                            eni_id: rec.id.clone(),
                            host_ifname: name,
                        });
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        warn!(eni = %rec.id, error = %e, "re-configuring the ENI's link failed")
                    }
                    Err(e) => warn!(eni = %rec.id, error = %e, "bring-up task failed"),
                }
            }
            let now = now_ms();
            for ip in &added {
                self.idle_since.insert(*ip, now);
            }
            if let Err(e) = self.commit_events(events) {
                error!(error = %e, "cannot record reconciliation");
            }
            return;
        }
        let Some(cidr) = self.subnet_cidr(&eni.subnet_id).await else {
            warn!(eni = %eni.id, "cannot adopt an ENI whose subnet is unknown");
            return;
        };
        match ops::adopt(&self.ctx, eni, kind, cidr).await {
            Ok(rec) => {
                info!(eni = %rec.id, ips = rec.ips.len(), "adopted an attached ENI of this node");
                let now = now_ms();
                for ip in &rec.ips {
                    self.idle_since.insert(*ip, now);
                }
                if rec.kind == EniKind::Exclusive {
                    self.idle_since.insert(rec.primary_ip, now);
                }
                if let Err(e) = self.commit_events(vec![Event::EniReady(rec)]) {
                    error!(error = %e, "cannot record an adopted ENI");
                }
            }
            Err(e) => warn!(eni = %eni.id, error = %e, "adopting an attached ENI failed"),
        }
    }

    fn commit_events(&mut self, events: Vec<Event>) -> Result<(), StoreError> {
        let mut applied = Vec::with_capacity(events.len());
        for e in events {
            match self.state.apply(&e) {
                Ok(()) => applied.push(e),
                Err(err) => error!(error = %err, event = ?e, "event refused by the model"),
            }
        }
        self.store.append(&applied)
    }

    fn emit(&mut self, batch: &mut Batch, e: Event) -> bool {
        match self.state.apply(&e) {
            Ok(()) => {
                batch.events.push(e);
                true
            }
            Err(err) => {
                error!(error = %err, event = ?e, "event refused by the model");
                false
            }
        }
    }

    /// Runs until every handle is dropped. Returns an error only when the store fails: the
    /// process must then exit, so that nothing is answered that is not on disk.
    pub async fn run(mut self) -> Result<(), StoreError> {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gc_tick = tokio::time::interval(self.settings.gc_interval);
        gc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        gc_tick.tick().await;
        loop {
            let plan_sleep = async {
                match self.plan_at {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            let mut msgs = Vec::new();
            let mut gc_now = false;
            tokio::select! {
                m = self.rx.recv() => match m {
                    Some(m) => msgs.push(m),
                    None => return Ok(()),
                },
                _ = tick.tick() => {}
                _ = gc_tick.tick() => gc_now = true,
                _ = plan_sleep => {}
            }
            while msgs.len() < 512 {
                match self.rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            let mut batch = Batch::default();
            for m in msgs {
                self.handle(m, &mut batch);
            }
            if gc_now {
                self.gc_namespaces(&mut batch);
                self.start_orphan_scan();
            }
            self.expire_waiters();
            self.serve_waiters(&mut batch);
            if self.plan_at.is_some_and(|t| t <= Instant::now()) {
                self.plan(&mut batch);
            }
            self.retry_leaving(&mut batch);
            self.finish_batch(batch)?;
            if self.store.wants_compaction() {
                self.store.compact(&self.state)?;
            }
            self.update_gauges();
        }
    }

    fn finish_batch(&mut self, batch: Batch) -> Result<(), StoreError> {
        let synced = match self.store.append(&batch.events) {
            Ok(()) => true,
            Err(e) => {
                error!(error = %e, "cannot write the state store; stopping without answering");
                for a in batch.answers {
                    a(false);
                }
                return Err(e);
            }
        };
        // The host ports the batch changed are published before its answers: an ADD's
        // handler then waits for them to be served.
        self.publish_host_ports();
        for a in batch.answers {
            a(synced);
        }
        for (op, intent, priority) in batch.start {
            self.spawn_op(op, intent, priority);
        }
        Ok(())
    }

    fn handle(&mut self, m: Msg, batch: &mut Batch) {
        match m {
            Msg::Allocate(req, reply) => self.on_allocate(req, reply, batch),
            Msg::Release(key, reply) => {
                let res = self.release(&key, batch);
                answer(batch, reply, res);
            }
            Msg::Check(key, reply) => {
                let res = self.granted(&key).ok_or_else(|| {
                    AllocError::new(Reason::NotFound, format!("nothing is allocated to {key}"))
                });
                let _ = reply.send(res);
            }
            Msg::List(reply) => {
                let all = self
                    .state
                    .allocations
                    .keys()
                    .filter_map(|k| self.granted(k))
                    .collect();
                let _ = reply.send(all);
            }
            Msg::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Msg::Gc(valid, reply) => {
                let stale: Vec<AllocKey> = self
                    .state
                    .allocations
                    .keys()
                    .filter(|k| !valid.contains(k))
                    .cloned()
                    .collect();
                let mut released = Vec::new();
                for k in stale {
                    if let Ok(Some(g)) = self.release(&k, batch) {
                        info!(pod = %k, ip = %g.alloc.ip, "released by CNI GC");
                        released.push(g);
                    }
                }
                answer(batch, reply, Ok(released));
            }
            Msg::OpDone(op, outcome) => self.on_op_done(op, outcome, batch),
            Msg::OrphanScan(res) => {
                self.orphan_scan_running = false;
                match res {
                    Ok(enis) => self.remove_orphans(&enis),
                    Err(e) => warn!(error = %e, "listing the cluster's ENIs for orphans failed"),
                }
            }
            Msg::SubnetsRefreshed(res) => {
                self.subnets_refreshing = false;
                match res {
                    Ok(caps) => self.apply_subnets(caps),
                    Err(e) => warn!(error = %e, "refreshing subnet capacity failed"),
                }
            }
        }
    }

    fn granted(&self, key: &AllocKey) -> Option<Granted> {
        let alloc = self.state.allocations.get(key)?.clone();
        let eni = self.state.enis.get(&alloc.eni_id)?.clone();
        Some(Granted { alloc, eni })
    }

    fn validate(req: &AllocRequest) -> Result<(), AllocError> {
        let mut bad = Vec::new();
        if req.key.container_id.is_empty() || req.key.container_id.len() > 256 {
            bad.push("container_id must be 1-256 characters");
        }
        if req.key.ifname.is_empty() || req.key.ifname.len() > 15 || req.key.ifname.contains('/') {
            bad.push("ifname must be a valid interface name (1-15 characters, no '/')");
        }
        if req.netns.is_empty() {
            bad.push("netns must be the path of the pod's network namespace");
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(AllocError::new(Reason::BadRequest, bad.join("; ")))
        }
    }

    fn on_allocate(
        &mut self,
        req: AllocRequest,
        reply: Reply<Result<Granted, AllocError>>,
        batch: &mut Batch,
    ) {
        if let Err(e) = Self::validate(&req) {
            let _ = reply.send(Err(e));
            return;
        }
        if let Some(g) = self.granted(&req.key) {
            if g.alloc.host_ports != req.host_ports {
                warn!(pod = %req.key, held = ?g.alloc.host_ports, asked = ?req.host_ports, "ADD again with other host ports; keeping the ones already allocated (DEL first to change them)");
            }
            if g.alloc.exclusive != req.exclusive {
                let _ = reply.send(Err(AllocError::new(
                    Reason::BadRequest,
                    format!(
                        "{} already holds a {} allocation; release it first",
                        req.key,
                        if g.alloc.exclusive {
                            "exclusive"
                        } else {
                            "shared"
                        }
                    ),
                )));
                return;
            }
            answer(batch, reply, Ok(g));
            return;
        }
        if let Some(msg) = self.host_port_conflict(&req) {
            warn!(pod = %req.key, "{msg}");
            self.metrics.allocation_failed(Reason::Refused);
            let _ = reply.send(Err(AllocError::new(Reason::Refused, msg)));
            return;
        }
        let started = Instant::now();
        if let Some(g) = self.try_allocate(&req, batch) {
            self.metrics.observe_allocation(started.elapsed(), "pool");
            answer(batch, reply, Ok(g));
            return;
        }
        let timeout = req.timeout.unwrap_or(self.settings.allocate_timeout);
        debug!(pod = %req.key, exclusive = req.exclusive, "waiting for the pool");
        self.waiters.push_back(Waiter {
            deadline: Instant::now() + timeout,
            req,
            reply,
        });
        self.schedule_plan(self.settings.batch_window);
    }

    fn try_allocate(&mut self, req: &AllocRequest, batch: &mut Batch) -> Option<Granted> {
        let (ip, eni_id) = if req.exclusive {
            let e = self.state.idle_exclusive().into_iter().next()?;
            (e.primary_ip, e.id.clone())
        } else {
            // The address idle the longest, so a released address is reused last.
            let idle = self.state.idle_ips();
            let (ip, eni) = idle
                .iter()
                .min_by_key(|(ip, _)| (self.idle_since.get(ip).copied().unwrap_or(0), *ip))?;
            (*ip, eni.id.clone())
        };
        let rec = AllocRecord {
            key: req.key.clone(),
            ip,
            eni_id,
            netns: req.netns.clone(),
            pod: req.pod.clone(),
            exclusive: req.exclusive,
            at_ms: now_ms(),
            host_ports: req.host_ports.clone(),
        };
        if !self.emit(batch, Event::Allocated(rec)) {
            return None;
        }
        self.idle_since.remove(&ip);
        info!(pod = %req.key, %ip, exclusive = req.exclusive, host_ports = req.host_ports.len(), "allocated");
        // Falling below the low watermark: refill soon.
        self.schedule_plan(self.settings.batch_window);
        self.granted(&req.key)
    }

    fn release(
        &mut self,
        key: &AllocKey,
        batch: &mut Batch,
    ) -> Result<Option<Granted>, AllocError> {
        let Some(g) = self.granted(key) else {
            return Ok(None);
        };
        if !self.emit(batch, Event::Freed { key: key.clone() }) {
            return Err(AllocError::new(
                Reason::Internal,
                "release refused by the model",
            ));
        }
        self.idle_since.insert(g.alloc.ip, now_ms());
        self.netns_missing_since.remove(key);
        info!(pod = %key, ip = %g.alloc.ip, "released");
        self.schedule_plan(Duration::ZERO);
        Ok(Some(g))
    }

    fn schedule_plan(&mut self, after: Duration) {
        let at = Instant::now() + after;
        self.plan_at = Some(self.plan_at.map_or(at, |t| t.min(at)));
    }

    fn expire_waiters(&mut self) {
        let now = Instant::now();
        let mut keep = VecDeque::new();
        while let Some(w) = self.waiters.pop_front() {
            if w.deadline <= now {
                let (reason, why) = self.last_failure.clone().unwrap_or((
                    Reason::Timeout,
                    "the pool did not get an address in time".into(),
                ));
                let reason = if reason == Reason::PoolExhausted {
                    Reason::Timeout
                } else {
                    reason
                };
                self.metrics.allocation_failed(reason);
                let _ = w.reply.send(Err(AllocError::new(
                    reason,
                    format!("no address for {} within its deadline: {why}", w.req.key),
                )));
            } else {
                keep.push_back(w);
            }
        }
        self.waiters = keep;
    }

    fn serve_waiters(&mut self, batch: &mut Batch) {
        let mut keep = VecDeque::new();
        while let Some(w) = self.waiters.pop_front() {
            if let Some(g) = self.granted(&w.req.key) {
                answer(batch, w.reply, Ok(g));
                continue;
            }
            let waited = w.deadline;
            match self.try_allocate(&w.req, batch) {
                Some(g) => {
                    let _ = waited;
                    self.metrics.observe_allocation(
                        (w.deadline - Instant::now()).min(Duration::from_secs(3600)),
                        "waited",
                    );
                    answer(batch, w.reply, Ok(g));
                }
                None => keep.push_back(w),
            }
        }
        self.waiters = keep;
    }

    fn subnet_choices(&mut self) -> Vec<SubnetChoice> {
        let now = Instant::now();
        self.blocked_until.retain(|_, t| *t > now);
        let mut v: Vec<SubnetChoice> = self
            .settings
            .subnets
            .iter()
            .filter(|s| self.subnets.contains_key(*s))
            .map(|s| SubnetChoice {
                id: s.clone(),
                available: self.subnets.get(s).and_then(|i| i.available),
                blocked: self.blocked_until.contains_key(s),
            })
            .collect();
        if self.settings.most_free {
            v.sort_by_key(|c| std::cmp::Reverse(c.available.unwrap_or(0)));
        }
        v
    }

    fn plan(&mut self, batch: &mut Batch) {
        self.plan_at = None;
        let stale = self
            .subnets_fetched
            .is_none_or(|t| t.elapsed() > Duration::from_secs(60));
        if stale && !self.subnets_refreshing {
            self.subnets_refreshing = true;
            let provider = self.ctx.provider.clone();
            let tx = self.tx.clone();
            let ids: Vec<String> = self.settings.subnets.clone();
            tokio::spawn(async move {
                let res = provider
                    .subnet_capacity(&SubnetCapacityOptions {
                        subnet_ids: ids,
                        priority: Priority::Release,
                    })
                    .await
                    .map_err(|e| e.to_string());
                let _ = tx.send(Msg::SubnetsRefreshed(res)).await;
            });
        }
        let waiting_shared = self.waiters.iter().filter(|w| !w.req.exclusive).count() as u32;
        let waiting_exclusive = self.waiters.iter().filter(|w| w.req.exclusive).count() as u32;
        let subnets = self.subnet_choices();
        let plan = planner::plan(&PlanInput {
            state: &self.state,
            limits: self.limits,
            targets: &self.settings.targets,
            waiting_shared,
            waiting_exclusive,
            idle_since: &self.idle_since,
            now_ms: now_ms(),
            subnets: &subnets,
        });
        if let Some(b) = &plan.blocked {
            self.fail_blocked(b, plan.servable);
        }
        let priority = if waiting_shared + waiting_exclusive > 0 {
            Priority::PodWaiting
        } else {
            Priority::Refill
        };
        for action in plan.actions {
            let op = self.state.next_op;
            let (intent, prio) = match action {
                Action::Assign {
                    eni_id,
                    ips,
                    prefixes,
                } => (
                    Intent::Assign {
                        eni_id,
                        token: IdempotencyToken::random().as_str().to_string(),
                        ips,
                        prefixes,
                    },
                    priority,
                ),
                Action::CreateEni {
                    subnet_id,
                    kind,
                    ips,
                    prefixes,
                } => (
                    Intent::CreateEni {
                        token: IdempotencyToken::random().as_str().to_string(),
                        subnet_id,
                        kind,
                        ips,
                        prefixes,
                    },
                    priority,
                ),
                Action::Unassign {
                    eni_id,
                    ips,
                    prefixes,
                } => (
                    Intent::Unassign {
                        eni_id,
                        ips,
                        prefixes,
                    },
                    Priority::Release,
                ),
                Action::RemoveEni { eni_id } => {
                    self.emit(
                        batch,
                        Event::EniLeaving {
                            eni_id: eni_id.clone(),
                        },
                    );
                    (Intent::RemoveEni { eni_id }, Priority::Release)
                }
            };
            if self.emit(
                batch,
                Event::IntentStarted {
                    op,
                    intent: intent.clone(),
                },
            ) {
                debug!(op, ?intent, "operation planned");
                batch.start.push((op, intent, prio));
            }
        }
        self.schedule_release_check();
    }

    /// Surplus idle addresses (or exclusive ENIs) still in their cool-down: plan again when
    /// the first of them has cooled, or nothing would ever release them.
    fn schedule_release_check(&mut self) {
        let t = &self.settings.targets;
        let surplus = self.state.idle_ips().len() as u32 > t.max_idle
            || self.state.idle_exclusive().len() as u32 > t.exclusive_warm;
        if !surplus {
            return;
        }
        let now = now_ms();
        let cooldown = t.release_cooldown_ms;
        let next = self
            .state
            .idle_ips()
            .iter()
            .map(|(ip, _)| *ip)
            .chain(self.state.idle_exclusive().iter().map(|e| e.primary_ip))
            .filter_map(|ip| self.idle_since.get(&ip))
            .map(|since| since + cooldown)
            .filter(|at| *at > now)
            .min();
        if let Some(at) = next {
            self.schedule_plan(Duration::from_millis(at - now));
        }
    }

    /// Fails, now, the waiters that nothing in flight or planned can serve.
    fn fail_blocked(&mut self, b: &Blocked, servable: u32) {
        let (reason, msg) = match b {
            Blocked::EniLimit { max_enis, max_pods } => (
                Reason::EniLimit,
                format!(
                    "the node is full: its instance type allows {max_enis} ENIs, {max_pods} pods with shared addresses; schedule the pod elsewhere or use a larger instance type"
                ),
            ),
            Blocked::SubnetsExhausted { subnets } => (
                Reason::SubnetExhausted,
                format!(
                    "every vSwitch/subnet of this zone is out of addresses ({}); add a vSwitch/subnet to network.subnets or free addresses",
                    subnets.join(", ")
                ),
            ),
        };
        self.last_failure = Some((reason, msg.clone()));
        // Waiters that what is in flight, planned now, or room left on ENIs can still serve
        // keep waiting; the rest fail now.
        let mut servable = servable as usize;
        let mut keep = VecDeque::new();
        while let Some(w) = self.waiters.pop_front() {
            let exclusive_blocked = w.req.exclusive;
            if !exclusive_blocked && servable > 0 {
                servable -= 1;
                keep.push_back(w);
                continue;
            }
            self.metrics.allocation_failed(reason);
            let _ = w.reply.send(Err(AllocError::new(reason, msg.clone())));
        }
        self.waiters = keep;
    }

    fn spawn_op(&self, op: u64, intent: Intent, priority: Priority) {
        let ctx = self.ctx.clone();
        let tx = self.tx.clone();
        let cidr = match &intent {
            Intent::CreateEni { subnet_id, .. } => self.subnets.get(subnet_id).map(|s| s.cidr),
            _ => None,
        };
        let rec = intent
            .eni_id()
            .and_then(|id| self.state.enis.get(id))
            .cloned();
        self.metrics.operation_started(&intent);
        tokio::spawn(async move {
            let outcome = match intent {
                Intent::CreateEni {
                    token,
                    subnet_id,
                    kind,
                    ips,
                    prefixes,
                } => {
                    let count = if prefixes > 0 {
                        AddressCount::Prefixes(prefixes)
                    } else if ips > 0 {
                        AddressCount::Ips(ips)
                    } else {
                        AddressCount::None
                    };
                    let res = match (cidr, IdempotencyToken::new(token)) {
                        (Some(cidr), Ok(t)) => {
                            ops::create_eni(&ctx, &subnet_id, cidr, kind, count, &t, priority).await
                        }
                        (None, _) => Err(OpError::Internal(format!(
                            "the CIDR of subnet {subnet_id} is not known yet"
                        ))),
                        (_, Err(e)) => Err(OpError::Cloud(e)),
                    };
                    OpOutcome::Created(res)
                }
                Intent::Assign {
                    eni_id,
                    token,
                    ips,
                    prefixes,
                } => {
                    let count = if prefixes > 0 {
                        AddressCount::Prefixes(prefixes)
                    } else {
                        AddressCount::Ips(ips)
                    };
                    let res = match IdempotencyToken::new(token) {
                        Ok(t) => ops::assign(&ctx, &eni_id, count, &t, priority).await,
                        Err(e) => Err(OpError::Cloud(e)),
                    };
                    OpOutcome::Assigned(res)
                }
                Intent::Unassign {
                    eni_id,
                    ips,
                    prefixes,
                } => OpOutcome::Unassigned(ops::unassign(&ctx, &eni_id, &ips, &prefixes).await),
                Intent::RemoveEni { eni_id } => OpOutcome::Removed(match rec {
                    Some(rec) => ops::remove_eni(&ctx, &rec).await,
                    None => ops::remove_from_cloud(&ctx, &eni_id, None).await,
                }),
            };
            let _ = tx.send(Msg::OpDone(op, outcome)).await;
        });
    }

    fn record_failure(&mut self, what: &str, e: &OpError) {
        let reason = reason_of(e);
        warn!(error = %e, "{what} failed");
        self.metrics.operation_failed(what, reason);
        self.last_failure = Some((reason, format!("{what} failed: {e}")));
        if is_outage(e) {
            self.degraded = Some(format!("{what} failed: {e}"));
        }
    }

    fn on_op_done(&mut self, op: u64, outcome: OpOutcome, batch: &mut Batch) {
        let Some(intent) = self.state.intents.get(&op).cloned() else {
            warn!(op, "result of an unknown operation");
            return;
        };
        let now = now_ms();
        match (intent, outcome) {
            (Intent::CreateEni { subnet_id, .. }, OpOutcome::Created(res)) => match res {
                Ok(rec) => {
                    for ip in &rec.ips {
                        self.idle_since.insert(*ip, now);
                    }
                    if rec.kind == EniKind::Exclusive {
                        self.idle_since.insert(rec.primary_ip, now);
                    }
                    if let Some(s) = self.subnets.get_mut(&subnet_id) {
                        if let Some(a) = s.available.as_mut() {
                            *a = a.saturating_sub(1 + rec.ips.len() as u64);
                        }
                    }
                    self.emit(batch, Event::EniReady(rec));
                    self.degraded = None;
                }
                Err(e) => {
                    if let OpError::Cloud(p) = &e {
                        if let ProviderError::IpExhausted { .. } = p.root() {
                            warn!(subnet = %subnet_id, "vSwitch/subnet exhausted; skipping it for a while");
                            self.blocked_until.insert(
                                subnet_id.clone(),
                                Instant::now() + self.settings.exhausted_block,
                            );
                            if let Some(s) = self.subnets.get_mut(&subnet_id) {
                                s.available = Some(0);
                            }
                            self.metrics.set_subnet_available(&subnet_id, 0);
                        }
                    }
                    self.record_failure("creating an ENI", &e);
                }
            },
            (Intent::Assign { eni_id, .. }, OpOutcome::Assigned(res)) => match res {
                Ok((ips, prefixes)) => {
                    for ip in &ips {
                        self.idle_since.insert(*ip, now);
                    }
                    self.emit(
                        batch,
                        Event::AddressesAdded {
                            eni_id,
                            ips,
                            prefixes,
                        },
                    );
                    self.degraded = None;
                }
                Err(e) => {
                    if let OpError::Cloud(p) = &e {
                        if let ProviderError::IpExhausted { .. } = p.root() {
                            if let Some(rec) = self.state.enis.get(&eni_id) {
                                self.blocked_until.insert(
                                    rec.subnet_id.clone(),
                                    Instant::now() + self.settings.exhausted_block,
                                );
                            }
                        }
                    }
                    self.record_failure("assigning addresses", &e);
                }
            },
            (
                Intent::Unassign {
                    eni_id,
                    ips,
                    prefixes,
                },
                OpOutcome::Unassigned(res),
            ) => match res {
                Ok(()) => {
                    for ip in &ips {
                        self.idle_since.remove(ip);
                    }
                    self.emit(
                        batch,
                        Event::AddressesRemoved {
                            eni_id,
                            ips,
                            prefixes,
                        },
                    );
                }
                Err(e) => self.record_failure("unassigning addresses", &e),
            },
            (Intent::RemoveEni { eni_id }, OpOutcome::Removed(res)) => match res {
                Ok(()) => {
                    if let Some(rec) = self.state.enis.get(&eni_id) {
                        for ip in rec.ips.iter().chain([&rec.primary_ip]) {
                            self.idle_since.remove(ip);
                        }
                    }
                    self.leaving_failures.remove(&eni_id);
                    self.emit(batch, Event::EniGone { eni_id });
                }
                Err(e) => {
                    // Most failures are an ENI still between states after a crash (being
                    // attached or detached), which clears in seconds: retry soon, then back
                    // off to 30 s for one that keeps failing.
                    let n = self.leaving_failures.entry(eni_id.clone()).or_insert(0);
                    let pause = leaving_retry_pause(*n);
                    *n = n.saturating_add(1);
                    self.leaving_retry_at.insert(eni_id, Instant::now() + pause);
                    self.record_failure("removing an ENI", &e);
                }
            },
            (intent, outcome) => {
                error!(
                    op,
                    ?intent,
                    ?outcome,
                    "operation result does not match its intent"
                );
            }
        }
        self.emit(batch, Event::IntentFinished { op });
        self.schedule_plan(Duration::ZERO);
    }

    /// ENIs left `Leaving` by a failed removal: try again after a pause
    /// ([`leaving_retry_pause`]).
    fn retry_leaving(&mut self, batch: &mut Batch) {
        let now = Instant::now();
        let busy: BTreeSet<String> = self
            .state
            .intents
            .values()
            .filter_map(|i| i.eni_id().map(str::to_string))
            .collect();
        let due: Vec<String> = self
            .state
            .enis
            .values()
            .filter(|e| e.phase == EniPhase::Leaving && !busy.contains(&e.id))
            .filter(|e| self.leaving_retry_at.get(&e.id).is_none_or(|t| *t <= now))
            .map(|e| e.id.clone())
            .collect();
        for eni_id in due {
            self.leaving_retry_at.remove(&eni_id);
            let op = self.state.next_op;
            let intent = Intent::RemoveEni { eni_id };
            if self.emit(
                batch,
                Event::IntentStarted {
                    op,
                    intent: intent.clone(),
                },
            ) {
                batch.start.push((op, intent, Priority::Release));
            }
        }
    }

    /// Lists the cluster's ENIs (every node's) in the background, for `remove_orphans`.
    ///
    /// Every node of the cluster scans, so a scan runs at most once per half grace period
    /// (default every 5 minutes), not on every GC pass: a thousand nodes then cost the
    /// cloud API a few calls a second, not a thousand a minute.
    fn start_orphan_scan(&mut self) {
        let every = (self.settings.orphan_grace / 2).max(self.settings.gc_interval);
        if self.orphan_scan_running || self.orphan_scan_at.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.orphan_scan_running = true;
        self.orphan_scan_at = Some(Instant::now());
        let provider = self.ctx.provider.clone();
        let tx = self.tx.clone();
        let mut tags = BTreeMap::new();
        tags.insert(TAG_CLUSTER.to_string(), self.ctx.cluster_id.clone());
        tokio::spawn(async move {
            let res = provider
                .list_enis(&ListEnisOptions {
                    tags,
                    instance_id: None,
                    eni_ids: Vec::new(),
                    priority: Priority::Release,
                })
                .await
                .map_err(|e| e.to_string());
            let _ = tx.send(Msg::OrphanScan(res)).await;
        });
    }

    /// Deletes ENIs of this cluster that have stayed detached for the grace period: their
    /// node is gone, or crashed between create and attach. Every node does this; deleting an
    /// ENI that another node deleted first succeeds.
    fn remove_orphans(&mut self, enis: &[cloud_providers::Eni]) {
        let now = Instant::now();
        let detached: BTreeSet<&str> = enis
            .iter()
            .filter(|e| matches!(e.status, EniStatus::Available) && e.instance_id.is_none())
            .filter(|e| e.tags.get(TAG_CLUSTER) == Some(&self.ctx.cluster_id))
            .filter(|e| !self.state.enis.contains_key(&e.id))
            .map(|e| e.id.as_str())
            .collect();
        self.orphans.retain(|id, _| detached.contains(id.as_str()));
        for id in detached {
            let since = *self.orphans.entry(id.to_string()).or_insert(now);
            if now.duration_since(since) < self.settings.orphan_grace {
                continue;
            }
            self.orphans.remove(id);
            warn!(
                eni = id,
                "deleting a detached ENI of this cluster that no node uses"
            );
            let ctx = self.ctx.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                if let Err(e) = ops::remove_from_cloud(&ctx, &id, None).await {
                    warn!(eni = %id, error = %e, "deleting an orphaned ENI failed; the next pass retries");
                }
            });
        }
    }

    /// Releases allocations whose network namespace has been gone for the grace period.
    fn gc_namespaces(&mut self, batch: &mut Batch) {
        let now = Instant::now();
        let keys: Vec<(AllocKey, String)> = self
            .state
            .allocations
            .values()
            .map(|a| (a.key.clone(), a.netns.clone()))
            .collect();
        for (key, netns) in keys {
            if Path::new(&netns).exists() {
                self.netns_missing_since.remove(&key);
                continue;
            }
            let since = *self.netns_missing_since.entry(key.clone()).or_insert(now);
            if now.duration_since(since) >= self.settings.gc_grace {
                warn!(pod = %key, netns = %netns, "the pod's network namespace is gone; releasing its address");
                let _ = self.release(&key, batch);
                self.metrics.gc_released();
            }
        }
        self.netns_missing_since
            .retain(|k, _| self.state.allocations.contains_key(k));
    }

    fn status(&self) -> StatusView {
        let idle = self.state.idle_ips().len() as u32;
        let leaving = self.state.leaving_ips();
        let total = self
            .state
            .enis
            .values()
            .filter(|e| e.kind == EniKind::Shared && e.phase == EniPhase::Ready)
            .map(|e| e.ips.iter().filter(|ip| !leaving.contains(ip)).count() as u32)
            .sum();
        StatusView {
            node: self.ctx.node.clone(),
            limits: self.limits,
            targets: self.settings.targets.clone(),
            idle,
            allocated: self.state.allocations.len() as u32,
            total,
            enis: self
                .state
                .enis
                .values()
                .map(|e| EniView {
                    eni: e.clone(),
                    allocations: self
                        .state
                        .allocations
                        .values()
                        .filter(|a| a.eni_id == e.id)
                        .cloned()
                        .collect(),
                })
                .collect(),
            degraded: self.degraded.clone(),
            waiting: self.waiters.len() as u32,
            operations: self.state.intents.len() as u32,
        }
    }

    fn update_gauges(&self) {
        let s = self.status();
        self.metrics.set_pool(&s);
    }
}

/// `container/ifname (namespace/pod)`, for messages about an allocation's holder.
fn holder(key: &AllocKey, pod: Option<&PodInfo>) -> String {
    match pod {
        Some(p) => format!("{key} (pod {}/{})", p.namespace, p.name),
        None => key.to_string(),
    }
}

/// Queues an answer to be sent after the batch's events are on disk.
fn answer<T: Send + 'static>(
    batch: &mut Batch,
    reply: Reply<Result<T, AllocError>>,
    value: Result<T, AllocError>,
) {
    batch.answers.push(Box::new(move |synced| {
        let _ = reply.send(if synced {
            value
        } else {
            Err(AllocError::new(
                Reason::Internal,
                "the state store failed; nothing was changed",
            ))
        });
    }));
}

/// The pause before removing a leaving ENI again after `failures` failed tries in a row:
/// 2 s, 4 s, 8 s, 16 s, then 30 s.
fn leaving_retry_pause(failures: u32) -> Duration {
    Duration::from_secs(2u64 << failures.min(4)).min(Duration::from_secs(30))
}

#[cfg(test)]
mod leaving_retry_tests {
    use super::*;

    #[test]
    fn a_failing_removal_is_retried_soon_then_backs_off_to_thirty_seconds() {
        let secs: Vec<u64> = (0..7).map(|n| leaving_retry_pause(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(leaving_retry_pause(u32::MAX).as_secs(), 30);
    }
}
