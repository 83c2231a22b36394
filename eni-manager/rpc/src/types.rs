//! The messages: what a client may ask ([`Request`]) and what the manager answers
//! ([`Response`]). Plain data with their serde form; no behaviour beyond small helpers.
//!
//! Requests reject unknown fields (a typo must not silently change what is allocated);
//! responses accept them, so a newer manager may add fields without breaking older clients.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// One request from a client. On the wire it is internally tagged by `"op"`:
/// `{"op":"allocate","container_id":"...",...}`, `{"op":"list"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", from = "RequestWire")]
pub enum Request {
    /// Give the container's interface an address (CNI ADD). Idempotent per
    /// `container_id` + `ifname`: asking again returns the same allocation.
    Allocate(AllocateRequest),
    /// Give back what the container's interface holds (CNI DEL). Idempotent.
    Release(ReleaseRequest),
    /// Return the allocation of the container's interface, or `NotFound` (CNI CHECK).
    Check(CheckRequest),
    /// Every allocation on this node.
    List,
    /// The node, the pool, its ENIs and the manager's health (CNI STATUS, `enictl`).
    Status,
    /// Release every allocation that is not among the valid attachments (CNI GC).
    Gc(GcRequest),
}

/// How a [`Request`] is read: as `Request`, except that the ops without arguments are
/// read through an empty struct, so that `{"op":"list","extra":1}` is refused like any
/// other unknown field (serde ignores extra fields of unit variants).
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum RequestWire {
    Allocate(AllocateRequest),
    Release(ReleaseRequest),
    Check(CheckRequest),
    List(NoFields),
    Status(NoFields),
    Gc(GcRequest),
}

/// An op's arguments when it takes none.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

impl From<RequestWire> for Request {
    fn from(wire: RequestWire) -> Self {
        match wire {
            RequestWire::Allocate(req) => Request::Allocate(req),
            RequestWire::Release(req) => Request::Release(req),
            RequestWire::Check(req) => Request::Check(req),
            RequestWire::List(NoFields {}) => Request::List,
            RequestWire::Status(NoFields {}) => Request::Status,
            RequestWire::Gc(req) => Request::Gc(req),
        }
    }
}

impl Request {
    /// The request's `op` as it appears on the wire, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Allocate(_) => "allocate",
            Request::Release(_) => "release",
            Request::Check(_) => "check",
            Request::List => "list",
            Request::Status => "status",
            Request::Gc(_) => "gc",
        }
    }
}

/// The pod a container belongs to, as the runtime tells the CNI (`K8S_POD_*` arguments).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID, when the runtime passes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// Ask for an address for one interface of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocateRequest {
    /// The runtime's container (sandbox) id, `CNI_CONTAINERID`.
    pub container_id: String,
    /// The interface name inside the container, `CNI_IFNAME` (usually `eth0`).
    pub ifname: String,
    /// The path of the container's network namespace, `CNI_NETNS`.
    pub netns: String,
    /// The pod, when known; recorded with the allocation for GC and for operators.
    #[serde(default)]
    pub pod: Option<PodRef>,
    /// Whether the pod wants a whole ENI to itself (exclusive ENI mode).
    #[serde(default)]
    pub exclusive: bool,
    /// How long the manager may wait for the pool before failing, in milliseconds;
    /// 0 means the manager's own default.
    #[serde(default)]
    pub timeout_ms: u32,
    /// The pod's host ports (`hostPort`), from the CNI `portMappings` capability. Empty
    /// (or absent: older plugins) means none. Left out of the encoding when empty, so a
    /// newer plugin still talks to an older manager (requests refuse unknown fields).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
}

/// The transport protocol of a [`PortMapping`]. SCTP is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl PortProtocol {
    /// The wire spelling: `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

/// One host port of a pod: `hostIP:hostPort/protocol` on the node goes to
/// `podIP:containerPort`, as the CNI `portMappings` capability describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// The port on the node (1-65535).
    pub host_port: u16,
    /// The port in the pod (1-65535).
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: PortProtocol,
    /// The one node address to serve it on; `None` (or `0.0.0.0`): every node address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
}

/// One address held by one interface of one container, with everything the CNI needs to
/// wire the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The runtime's container (sandbox) id.
    pub container_id: String,
    /// The interface name inside the container.
    pub ifname: String,
    /// The path of the container's network namespace.
    pub netns: String,
    /// The pod, when known.
    #[serde(default)]
    pub pod: Option<PodRef>,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The prefix length to configure on the pod's interface.
    pub prefix_len: u8,
    /// The default gateway of the vSwitch.
    pub gateway: Ipv4Addr,
    /// The vSwitch (subnet) CIDR the address belongs to.
    pub subnet: Ipv4Net,
    /// The cloud id of the ENI that owns the address.
    pub eni_id: String,
    /// The ENI's MAC address, `aa:bb:cc:dd:ee:ff`.
    pub eni_mac: String,
    /// The ENI's link name on the node (in exclusive mode, the link to move into the pod).
    pub host_ifname: String,
    /// The route table that sends traffic of the ENI's addresses out through the ENI.
    pub route_table: u32,
    /// The MTU for the pod's interface.
    pub mtu: u32,
    /// Whether the whole ENI belongs to this container.
    pub exclusive: bool,
    /// When the allocation was made, in milliseconds since the Unix epoch.
    pub allocated_at_ms: u64,
    /// Set when the manager enforces NetworkPolicy: the pin directory of the policy maps,
    /// under which the CNI pins the programs it attaches to the pod's link. The manager
    /// has written the pod's rules before answering. Absent (older managers, policy off):
    /// attach nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_pin_dir: Option<String>,
}

/// Give back what one interface of one container holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The runtime's container (sandbox) id.
    pub container_id: String,
    /// The interface name inside the container.
    pub ifname: String,
}

/// Ask for the allocation of one interface of one container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// The runtime's container (sandbox) id.
    pub container_id: String,
    /// The interface name inside the container.
    pub ifname: String,
}

/// One attachment the runtime still uses (an entry of `cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentRef {
    /// The runtime's container (sandbox) id.
    pub container_id: String,
    /// The interface name inside the container.
    pub ifname: String,
}

/// Release every allocation whose attachment is not listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    /// The attachments to keep; everything else is released.
    pub valid: Vec<AttachmentRef>,
}

/// The answer to `release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// What was released; `None` when nothing was allocated (release is idempotent).
    pub released: Option<Allocation>,
}

/// The answer to `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocations {
    /// Every allocation on the node.
    pub allocations: Vec<Allocation>,
}

/// The answer to `gc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcResult {
    /// The allocations that were released.
    pub released: Vec<Allocation>,
}

/// The node the manager runs on, as the metadata service describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The cloud's instance id.
    pub instance_id: String,
    /// The instance type, which sets the ENI limits.
    pub instance_type: String,
    /// The availability zone.
    pub zone: String,
    /// The cloud provider (`aliyun`, `aws`).
    pub provider: String,
    /// The most pods this node can give addresses to.
    pub max_pods: u32,
    /// The most ENIs the instance type may attach (the primary one included).
    pub max_enis: u32,
    /// The most IPv4 addresses per ENI.
    pub ipv4_per_eni: u32,
}

/// One address on one ENI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpStatus {
    /// The address.
    pub ip: Ipv4Addr,
    /// The container holding it; `None` while idle.
    #[serde(default)]
    pub container_id: Option<String>,
    /// The pod holding it, when known.
    #[serde(default)]
    pub pod: Option<PodRef>,
}

/// One ENI of the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniStatus {
    /// The cloud id of the ENI.
    pub eni_id: String,
    /// Its MAC address.
    pub mac: String,
    /// Its link name on the node, once the link has shown up.
    #[serde(default)]
    pub host_ifname: Option<String>,
    /// Its device index on the instance, once attached.
    #[serde(default)]
    pub device_index: Option<u32>,
    /// The vSwitch (subnet) id it lives in.
    pub subnet_id: String,
    /// Its life-cycle state in the manager: `ready` (addresses are handed out) or `leaving`
    /// (being detached and deleted).
    pub status: String,
    /// The container that holds the whole ENI, in exclusive mode.
    #[serde(default)]
    pub exclusive_to: Option<String>,
    /// Its secondary addresses, idle or allocated.
    pub ips: Vec<IpStatus>,
}

impl EniStatus {
    /// How many of the ENI's addresses are allocated to containers.
    pub fn used_ips(&self) -> usize {
        self.ips
            .iter()
            .filter(|ip| ip.container_id.is_some())
            .count()
    }
}

/// The warm pool of addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Addresses ready to hand out.
    pub idle: u32,
    /// Addresses held by containers.
    pub allocated: u32,
    /// All addresses the node holds.
    pub total: u32,
    /// Below this many idle addresses the pool refills.
    pub low_watermark: u32,
    /// Above this many idle addresses the pool releases the surplus (after a cool-down).
    pub high_watermark: u32,
    /// The ENIs the pool draws from.
    pub enis: Vec<EniStatus>,
}

/// The answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The node.
    pub node: NodeStatus,
    /// The warm pool.
    pub pool: PoolStatus,
    /// Why the cloud API or metadata service is unusable, when it is; allocations from the
    /// pool go on meanwhile.
    #[serde(default)]
    pub degraded: Option<String>,
    /// Cloud API calls made since the manager started.
    pub cloud_calls: u64,
    /// The manager's version.
    pub version: String,
}

/// A successful answer. On the wire it is internally tagged by `"kind"`:
/// `{"kind":"allocation","container_id":"...",...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// The answer to `allocate` and `check`.
    Allocation(Allocation),
    /// The answer to `release`.
    Released(Released),
    /// The answer to `list`.
    Allocations(Allocations),
    /// The answer to `status`.
    Status(Status),
    /// The answer to `gc`.
    GcResult(GcResult),
}

impl Response {
    /// The response's `kind` as it appears on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Allocation(_) => "allocation",
            Response::Released(_) => "released",
            Response::Allocations(_) => "allocations",
            Response::Status(_) => "status",
            Response::GcResult(_) => "gc_result",
        }
    }
}
