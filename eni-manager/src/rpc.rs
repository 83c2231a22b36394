//! The CNI's requests, answered by the pool: converts between the wire types of `eni-rpc`
//! and the pool's own, and maps failure reasons to the protocol's error codes.
//!
//! No decisions here; the pool decides.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use eni_rpc::{
    AllocateRequest, Allocation, Allocations, EniStatus, ErrorCode, GcResult, IpStatus, NodeStatus,
    PodRef, PoolStatus, PortMapping, Released, Request, Response, RpcError, Status,
};

use crate::hostports::{HostPort, HostPorts};
use crate::metrics::Metrics;
use crate::pool::manager::{AllocError, AllocRequest, Granted, PoolHandle, Reason, StatusView};
use crate::pool::state::{AllocKey, EniKind, EniPhase, PodInfo};

/// The manager's [`eni_rpc::server::Handler`].
#[derive(Debug)]
pub struct RpcHandler {
    pool: PoolHandle,
    metrics: Arc<Metrics>,
    provider: &'static str,
    mtu: u32,
    policy: Option<Arc<crate::policy::PolicySync>>,
    host_ports: Option<HostPorts>,
}

/// How long an ADD (or DEL) with host ports waits for the services loop to write them.
pub const HOST_PORT_WAIT: Duration = Duration::from_secs(3);

impl RpcHandler {
    /// A handler answering from `pool`.
    pub fn new(pool: PoolHandle, metrics: Arc<Metrics>, provider: &'static str, mtu: u32) -> Self {
        RpcHandler {
            pool,
            metrics,
            provider,
            mtu,
            policy: None,
            host_ports: None,
        }
    }

    /// Serves host ports (`port_mappings`): the node runs the per-packet path
    /// (`services.nodeport`) and the services loop reads `hp`. Without this, an allocate
    /// asking for host ports is refused.
    pub fn with_host_ports(mut self, hp: HostPorts) -> Self {
        self.host_ports = Some(hp);
        self
    }

    /// The request's port mappings in the pool's form, checked; refused when this node
    /// does not serve host ports.
    fn host_ports_of(&self, mappings: &[PortMapping]) -> Result<Vec<HostPort>, RpcError> {
        if mappings.is_empty() {
            return Ok(Vec::new());
        }
        if self.host_ports.is_none() {
            return Err(RpcError::new(
                ErrorCode::Refused,
                "port_mappings: this node does not serve host ports because services.nodeport \
                 is off in the manager's configuration; enable services.enabled and \
                 services.nodeport.enabled, or chain the reference portmap plugin after \
                 eni-cni and remove \"portMappings\" from eni-cni's capabilities in the conflist",
            ));
        }
        crate::hostports::validate(mappings).map_err(|e| RpcError::new(ErrorCode::BadRequest, e))
    }

    /// Waits (at most [`HOST_PORT_WAIT`]) until the services loop has written the host
    /// ports the pool published for `g`'s change; logs when it has not.
    async fn wait_host_ports(&self, op: &str, g: &Granted) {
        let Some(hp) = &self.host_ports else { return };
        let want = hp.generation();
        if !hp.wait_applied(want, HOST_PORT_WAIT).await {
            tracing::warn!(op, container = %g.alloc.key, ip = %g.alloc.ip, generation = want, applied = hp.applied(), "the host ports are not in the maps yet; the services loop writes them at its next reconcile");
        }
    }

    /// Enforces NetworkPolicy: `allocate` writes the new pod's rules before it answers,
    /// `release` and `gc` remove them, and every allocation tells the CNI where to pin
    /// the programs it attaches.
    pub fn with_policy(mut self, policy: Arc<crate::policy::PolicySync>) -> Self {
        self.policy = Some(policy);
        self
    }

    fn wire(&self, g: &Granted) -> Allocation {
        let mut a = allocation(g, self.mtu);
        a.policy_pin_dir = self
            .policy
            .as_ref()
            .map(|p| p.pin_dir().display().to_string());
        a
    }

    /// Brings the policy maps in line with the allocations after a release or a GC,
    /// looking at the policy directory first. A failure is logged: the poll loop retries
    /// every second.
    async fn sync_policy(&self, why: &str) {
        if let Some(p) = &self.policy {
            if let Err(e) = p.refresh(true).await {
                tracing::error!(error = %format!("{e:#}"), why, "policy sync failed; pods without an entry stay closed until the next sync");
            }
        }
    }
}

fn code_of(r: Reason) -> ErrorCode {
    match r {
        Reason::BadRequest => ErrorCode::BadRequest,
        Reason::NotFound => ErrorCode::NotFound,
        Reason::PoolExhausted => ErrorCode::PoolExhausted,
        Reason::SubnetExhausted => ErrorCode::VSwitchExhausted,
        Reason::EniLimit => ErrorCode::EniLimit,
        Reason::CloudThrottled => ErrorCode::CloudThrottled,
        Reason::CloudUnavailable => ErrorCode::CloudUnavailable,
        Reason::Timeout => ErrorCode::Timeout,
        Reason::ShuttingDown => ErrorCode::ShuttingDown,
        Reason::Internal => ErrorCode::Internal,
        Reason::Refused => ErrorCode::Refused,
    }
}

fn rpc_err(e: AllocError) -> RpcError {
    RpcError::new(code_of(e.reason), e.message)
}

fn pod_ref(p: &Option<PodInfo>) -> Option<PodRef> {
    p.as_ref().map(|p| PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    })
}

fn allocation(g: &Granted, mtu: u32) -> Allocation {
    let a = &g.alloc;
    let e = &g.eni;
    Allocation {
        container_id: a.key.container_id.clone(),
        ifname: a.key.ifname.clone(),
        netns: a.netns.clone(),
        pod: pod_ref(&a.pod),
        ip: a.ip,
        prefix_len: e.cidr.prefix_len(),
        gateway: e.gateway,
        subnet: e.cidr,
        eni_id: e.id.clone(),
        eni_mac: e.mac.clone(),
        host_ifname: e.host_ifname.clone().unwrap_or_default(),
        route_table: e.route_table,
        mtu,
        exclusive: a.exclusive,
        allocated_at_ms: a.at_ms,
        policy_pin_dir: None,
    }
}

fn key(container_id: String, ifname: String) -> AllocKey {
    AllocKey {
        container_id,
        ifname,
    }
}

/// The wire form of a status snapshot.
pub fn status(s: &StatusView, provider: &str, cloud_calls: u64) -> Status {
    Status {
        node: NodeStatus {
            instance_id: s.node.instance_id.clone(),
            instance_type: s.node.instance_type.clone(),
            zone: s.node.zone.clone(),
            provider: provider.to_string(),
            max_pods: s.limits.max_shared_pods(),
            max_enis: s.limits.max_enis,
            ipv4_per_eni: s.limits.ipv4_per_eni,
        },
        pool: PoolStatus {
            idle: s.idle,
            allocated: s.allocated,
            total: s.total,
            low_watermark: s.targets.min_idle,
            high_watermark: s.targets.max_idle,
            enis: s
                .enis
                .iter()
                .map(|v| EniStatus {
                    eni_id: v.eni.id.clone(),
                    mac: v.eni.mac.clone(),
                    host_ifname: v.eni.host_ifname.clone(),
                    device_index: v.eni.device_index,
                    subnet_id: v.eni.subnet_id.clone(),
                    status: match v.eni.phase {
                        EniPhase::Ready => "ready",
                        EniPhase::Leaving => "leaving",
                    }
                    .to_string(),
                    exclusive_to: if v.eni.kind == EniKind::Exclusive {
                        v.allocations.first().map(|a| a.key.container_id.clone())
                    } else {
                        None
                    },
                    ips: v
                        .eni
                        .ips
                        .iter()
                        .map(|ip| {
                            let holder = v.allocations.iter().find(|a| a.ip == *ip);
                            IpStatus {
                                ip: *ip,
                                container_id: holder.map(|a| a.key.container_id.clone()),
                                pod: holder.and_then(|a| pod_ref(&a.pod)),
                            }
                        })
                        .collect(),
                })
                .collect(),
        },
        degraded: s.degraded.clone(),
        cloud_calls,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

impl eni_rpc::server::Handler for RpcHandler {
    async fn handle(&self, request: Request) -> Result<Response, RpcError> {
        self.metrics.rpc_request();
        match request {
            Request::Allocate(AllocateRequest {
                container_id,
                ifname,
                netns,
                pod,
                exclusive,
                timeout_ms,
                port_mappings,
            }) => {
                let host_ports = self.host_ports_of(&port_mappings)?;
                let req = AllocRequest {
                    key: key(container_id, ifname),
                    netns,
                    pod: pod.map(|p| PodInfo {
                        namespace: p.namespace,
                        name: p.name,
                        uid: p.uid,
                    }),
                    exclusive,
                    timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms.into())),
                    host_ports,
                };
                let g = self.pool.allocate(req).await.map_err(rpc_err)?;
                if !g.alloc.host_ports.is_empty() {
                    self.wait_host_ports("allocate", &g).await;
                }
                if let Some(p) = &self.policy {
                    // Only the new pod's own entry is written before the answer; the
                    // rules of its peers follow at once on the policy loop.
                    if let Err(e) = p.admit(&g).await {
                        tracing::error!(error = %format!("{e:#}"), "policy admit failed");
                    }
                    if !p.has_entry(g.alloc.ip) {
                        tracing::error!(ip = %g.alloc.ip, container = %g.alloc.key.container_id, "no policy entry could be written for the new pod: it stays closed until one is");
                    }
                }
                Ok(Response::Allocation(self.wire(&g)))
            }
            Request::Release(r) => {
                let g = self
                    .pool
                    .release(key(r.container_id, r.ifname))
                    .await
                    .map_err(rpc_err)?;
                if let Some(g) = g.as_ref().filter(|g| !g.alloc.host_ports.is_empty()) {
                    self.wait_host_ports("release", g).await;
                }
                if g.is_some() {
                    self.sync_policy("release").await;
                }
                Ok(Response::Released(Released {
                    released: g.map(|g| self.wire(&g)),
                }))
            }
            Request::Check(r) => {
                let g = self
                    .pool
                    .check(key(r.container_id, r.ifname))
                    .await
                    .map_err(rpc_err)?;
                Ok(Response::Allocation(self.wire(&g)))
            }
            Request::List => {
                let all = self.pool.list().await.map_err(rpc_err)?;
                Ok(Response::Allocations(Allocations {
                    allocations: all.iter().map(|g| self.wire(g)).collect(),
                }))
            }
            Request::Status => {
                let s = self.pool.status().await.map_err(rpc_err)?;
                Ok(Response::Status(status(
                    &s,
                    self.provider,
                    self.metrics.cloud_calls(),
                )))
            }
            Request::Gc(r) => {
                let valid: BTreeSet<AllocKey> = r
                    .valid
                    .into_iter()
                    .map(|a| key(a.container_id, a.ifname))
                    .collect();
                let released = self.pool.gc(valid).await.map_err(rpc_err)?;
                if let Some(g) = released.iter().find(|g| !g.alloc.host_ports.is_empty()) {
                    self.wait_host_ports("gc", g).await;
                }
                if !released.is_empty() {
                    self.sync_policy("gc").await;
                }
                Ok(Response::GcResult(GcResult {
                    released: released.iter().map(|g| self.wire(g)).collect(),
                }))
            }
        }
    }
}
