//! eBPF datapath for Service load balancing at the socket layer.
//!
//! - `src/bpf/socket_lb.bpf.c`: the cgroup hooks `connect4/6`, `sendmsg4/6`, `recvmsg4/6`,
//!   `getpeername4/6` for IPv4 and IPv6 Services (compiled by `build.rs`, embedded in this
//!   library).
//! - [`maps`]: the `#[repr(C)]` key/value types, the only place their layout is written.
//! - [`service`]: the caller-facing types, the [`DatapathMaps`] trait and the incremental
//!   update planner.
//! - [`SocketLb`]: the aya loader — pinned maps, pinned links, map updates.
//! - [`terminate_udp_sockets_to`]: moves connected UDP sockets off a removed backend.
//! - [`NodePortLb`]: the per-packet path (`src/bpf/nodeport.bpf.c`, tc on the node's links)
//!   for NodePort, externalIPs and LoadBalancer IPs reached from outside the node.
//!
//! - [`masq`]: masquerade (SNAT) of pod traffic leaving the node (`src/bpf/masq.bpf.c`, tc on
//!   the node's uplinks), ip-masq-agent semantics: [`Masquerade`] holds the pinned maps.
//! - [`policy`]: NetworkPolicy and anti-spoofing at tc on pod links (`src/bpf/policy.bpf.c`):
//!   [`PolicyDatapath`] holds the pinned maps, [`policy::attach`] puts the programs on a link.
//!
//! It does not decide what the services are (the manager's reconciler does).

#![deny(missing_docs)]

mod error;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
mod linkinfo;
pub mod maps;
pub mod masq;
mod nodeport;
pub mod policy;
pub mod service;
mod socket_lb;
mod sockterm;

pub use error::BpfError;
pub use masq::{
    default_nonmasq_cidrs, nonmasq_list, unpin_masq, CidrChanges, MasqCounters, MasqLink,
    Masquerade,
};
pub use nodeport::{
    unpin_nodeport, ExternalFrontends, NodeLink, NodePortLb, TrafficPolicy, NODEPORT_PROGRAMS,
    TC_HANDLE, TC_PRIORITY,
};
pub use policy::{LinkSide, PolicyDatapath, PolicyError};
pub use service::{
    Backend, BackendState, DatapathMaps, IpFamily, MapOp, Protocol, ServiceEntry, ServiceKey,
    ServiceSpec, UpsertOutcome,
};
pub use socket_lb::{read_pinned, unpin_all, SocketLb, DEFAULT_PIN_DIR, PROGRAMS};
pub use sockterm::{terminate_udp_sockets_in, terminate_udp_sockets_to};
