//! The pod datapaths: what ADD builds in the kernel, what DEL removes and what CHECK
//! verifies, for each mode ([`veth`], [`ipvlan`], [`exclusive`]).
//!
//! Everything goes through [`Netlink`] (one for the node's namespace, one for the pod's),
//! so the logic runs against `FakeNetlink` in unit tests. ADD records every change in a
//! [`Journal`]; when a later step fails, the journal is rolled back in reverse, so ADD
//! leaves nothing half-built. DEL is idempotent and keeps going past errors.
//!
//! This module decides nothing about addresses: it wires what the manager allocated.

pub mod exclusive;
pub mod ipvlan;
pub mod veth;

use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;

use eni_kernel::{Addr, Link, MacAddr, Neigh, Netlink, Route, Rule, Scope, TABLE_MAIN};
use eni_rpc::Allocation;
use ipnet::Ipv4Net;

/// Priority of the `to <pod ip> lookup main` rule: deliver node-local traffic locally.
pub const RULE_PRIO_TO_POD: u32 = 1000;
/// Priority of the `from <pod ip> lookup <ENI table>` rule: egress through the owning ENI.
/// The manager's `from <ENI primary ip>` rule uses the same priority.
pub const RULE_PRIO_FROM_POD: u32 = 2000;

/// The datapath a pod gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datapath {
    /// veth pair + policy routing through the ENI's table.
    Veth,
    /// ipvlan L2 slave of the ENI, plus a host-side slave for node-to-pod traffic.
    Ipvlan,
    /// The whole ENI moves into the pod.
    Exclusive,
}

impl Datapath {
    /// The name used in logs and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Datapath::Veth => "veth",
            Datapath::Ipvlan => "ipvlan",
            Datapath::Exclusive => "exclusive",
        }
    }
}

/// A datapath step failed; `what` says which step, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct WireError {
    /// The step.
    pub what: String,
    /// The kernel's answer.
    #[source]
    pub source: eni_kernel::Error,
}

/// Result alias for datapath steps.
pub type WireResult<T> = Result<T, WireError>;

/// Attaches a description of the step to a kernel error.
pub(crate) trait Step<T> {
    fn step(self, what: impl FnOnce() -> String) -> WireResult<T>;
}

impl<T> Step<T> for eni_kernel::Result<T> {
    fn step(self, what: impl FnOnce() -> String) -> WireResult<T> {
        self.map_err(|source| WireError {
            what: what(),
            source,
        })
    }
}

/// The two namespaces a datapath touches.
pub struct Namespaces<'a> {
    /// Netlink in the node's namespace (where eni-cni runs).
    pub host: &'a mut dyn Netlink,
    /// Netlink in the pod's namespace; `None` when it is gone (DEL only).
    pub pod: Option<&'a mut dyn Netlink>,
    /// The node's namespace, for moving links back.
    pub host_fd: BorrowedFd<'a>,
    /// The pod's namespace, for creating and moving links into it.
    pub pod_fd: Option<BorrowedFd<'a>>,
}

impl std::fmt::Debug for Namespaces<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespaces")
            .field("pod", &self.pod.is_some())
            .finish()
    }
}

impl<'a> Namespaces<'a> {
    /// The pod's netlink; an error when the pod's namespace is not open.
    pub(crate) fn pod(&mut self) -> WireResult<&mut (dyn Netlink + 'a)> {
        match self.pod.as_deref_mut() {
            Some(pod) => Ok(pod),
            None => Err(WireError {
                what: "the pod's network namespace".into(),
                source: eni_kernel::Error::NotFound {
                    what: "pod network namespace".into(),
                },
            }),
        }
    }

    pub(crate) fn pod_fd(&self) -> WireResult<BorrowedFd<'a>> {
        self.pod_fd.ok_or_else(|| WireError {
            what: "the pod's network namespace".into(),
            source: eni_kernel::Error::NotFound {
                what: "pod network namespace".into(),
            },
        })
    }
}

/// Which namespace a link handed to [`BeforeUp`] is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAt {
    /// The node's namespace (the host end of a veth).
    Host,
    /// The pod's namespace (an ipvlan slave, an exclusive ENI).
    Pod,
}

/// Work that must be done on the pod's link while it is still down: attaching the
/// NetworkPolicy programs, so that no packet of the pod passes before they are there.
/// Each datapath calls it once, after the link exists and before the pod can use it.
pub trait BeforeUp: std::fmt::Debug {
    /// `ifname` in the namespace `at`.
    fn before_up(&self, at: LinkAt, ifname: &str) -> WireResult<()>;
}

/// What to wire: the allocation and the pod's side of it.
#[derive(Debug, Clone)]
pub struct PodSpec<'a> {
    /// The runtime's container id.
    pub container_id: &'a str,
    /// The interface name in the pod (`CNI_IFNAME`).
    pub ifname: &'a str,
    /// The pod's netns path (`CNI_NETNS`), for the result's `sandbox`.
    pub sandbox: &'a str,
    /// The manager's allocation.
    pub alloc: &'a Allocation,
    /// The MTU for the pod's interface.
    pub mtu: u32,
    /// Called on the pod's link before it is up (policy programs); `None`: nothing.
    pub before_up: Option<&'a dyn BeforeUp>,
}

impl PodSpec<'_> {
    /// Runs the [`BeforeUp`] hook, if any.
    pub(crate) fn before_up(&self, at: LinkAt, ifname: &str) -> WireResult<()> {
        match self.before_up {
            Some(h) => h.before_up(at, ifname),
            None => Ok(()),
        }
    }

    /// The pod's address as a host route prefix (`ip/32`).
    pub fn ip32(&self) -> Ipv4Net {
        Ipv4Net::new(self.alloc.ip, 32).expect("/32 is valid")
    }

    /// The pod's address with the vSwitch prefix (`ip/prefix_len`).
    pub fn ip_prefix(&self) -> WireResult<Ipv4Net> {
        Ipv4Net::new(self.alloc.ip, self.alloc.prefix_len).map_err(|_| WireError {
            what: format!("the allocation's prefix_len {}", self.alloc.prefix_len),
            source: eni_kernel::Error::InvalidArgument {
                what: "prefix length over 32".into(),
            },
        })
    }

    /// The ENI's MAC.
    pub fn eni_mac(&self) -> WireResult<MacAddr> {
        self.alloc.eni_mac.parse().step(|| {
            format!(
                "the allocation's eni_mac {:?} for {}",
                self.alloc.eni_mac, self.alloc.eni_id
            )
        })
    }
}

/// One change ADD made, and how to take it back.
#[derive(Debug, Clone)]
pub enum Undo {
    /// Delete this link in the node's namespace (a veth host end also takes its peer).
    HostLink(u32),
    /// Delete the link with this name in the pod's namespace.
    PodLink(String),
    /// Delete this route in the node's namespace.
    HostRoute(Route),
    /// Delete this rule in the node's namespace.
    HostRule(Rule),
    /// Delete this neighbour (or proxy) entry in the node's namespace.
    HostNeigh(Neigh),
    /// Move the link with this MAC from the pod back to the node under `name`, down and
    /// without addresses.
    ReturnLink {
        /// The ENI's MAC.
        mac: MacAddr,
        /// Its name on the node.
        name: String,
    },
}

/// The changes ADD made so far, undone in reverse on failure.
#[derive(Debug, Default)]
pub struct Journal(pub Vec<Undo>);

impl Journal {
    /// Records a change.
    pub fn push(&mut self, undo: Undo) {
        self.0.push(undo);
    }

    /// Takes back every recorded change, last first; returns what could not be undone.
    pub fn rollback(self, ns: &mut Namespaces<'_>) -> Vec<String> {
        let mut errors = Vec::new();
        for undo in self.0.into_iter().rev() {
            let r = match &undo {
                Undo::HostLink(index) => ns.host.link_del_if_exists(*index).map(drop),
                Undo::PodLink(name) => match ns.pod.as_deref_mut() {
                    Some(pod) => del_link_by_name(pod, name),
                    None => Ok(()),
                },
                Undo::HostRoute(route) => ns.host.route_del_if_exists(route).map(drop),
                Undo::HostRule(rule) => ns.host.rule_del_if_exists(rule).map(drop),
                Undo::HostNeigh(neigh) => ns.host.neigh_del_if_exists(neigh).map(drop),
                Undo::ReturnLink { mac, name } => match (ns.pod.as_deref_mut(), ns.pod_fd) {
                    (Some(pod), Some(_)) => return_link(pod, ns.host_fd, *mac, name),
                    _ => Ok(()),
                },
            };
            if let Err(e) = r {
                errors.push(format!("undo {undo:?}: {e}"));
            }
        }
        errors
    }
}

/// Deletes the link named `name` if it exists.
pub(crate) fn del_link_by_name(nl: &mut dyn Netlink, name: &str) -> eni_kernel::Result<()> {
    match nl.link_by_name(name) {
        Ok(link) => nl.link_del_if_exists(link.index).map(drop),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Moves the link with `mac` out of the pod (`pod`) into the node (`host_fd`) as `name`:
/// down, addresses flushed, then moved. Nothing to do when no such link is in the pod.
pub(crate) fn return_link(
    pod: &mut dyn Netlink,
    host_fd: BorrowedFd<'_>,
    mac: MacAddr,
    name: &str,
) -> eni_kernel::Result<()> {
    let link = match pod.link_by_mac(mac) {
        Ok(link) => link,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    };
    pod.link_set_down(link.index)?;
    for addr in pod.addr_list(Some(link.index))? {
        pod.addr_del_if_exists(&addr)?;
    }
    pod.link_set_netns(link.index, host_fd, Some(name))
}

/// The host-side veth name of a container's interface: `eni` + 11 hex digits of a hash of
/// (container id, ifname). Stable across invocations, so DEL finds what ADD made.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bit: stable, no dependency, good enough to spread names.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("eni{:011x}", h >> 20)
}

/// `default via gw dev index` in the pod's main table, `onlink` when the gateway is not
/// inside the interface's prefix.
pub(crate) fn default_route(index: u32, gateway: Ipv4Addr, prefix: Ipv4Net) -> Route {
    let r = Route::new(TABLE_MAIN).gateway(gateway).oif(index);
    if prefix.contains(&gateway) {
        r
    } else {
        r.onlink()
    }
}

/// Configures the pod side shared by ipvlan and exclusive mode on link `index`: MTU, up,
/// `ip/prefix_len`, default via the gateway.
pub(crate) fn configure_pod_link(
    pod: &mut dyn Netlink,
    link: &Link,
    spec: &PodSpec<'_>,
) -> WireResult<()> {
    let name = spec.ifname;
    let prefix = spec.ip_prefix()?;
    if link.mtu != spec.mtu {
        pod.link_set_mtu(link.index, spec.mtu)
            .step(|| format!("set MTU {} on {name} in the pod", spec.mtu))?;
    }
    pod.link_set_up(link.index)
        .step(|| format!("bring {name} up in the pod"))?;
    pod.addr_ensure(&Addr::new(link.index, prefix))
        .step(|| format!("add {prefix} to {name} in the pod"))?;
    let route = default_route(link.index, spec.alloc.gateway, prefix);
    pod.route_replace(&route).step(|| {
        format!(
            "add default via {} dev {name} in the pod",
            spec.alloc.gateway
        )
    })?;
    Ok(())
}

/// Checks the pod side shared by ipvlan and exclusive mode; returns what is missing.
pub(crate) fn check_pod_link(pod: &mut dyn Netlink, spec: &PodSpec<'_>) -> Vec<String> {
    let mut missing = Vec::new();
    let name = spec.ifname;
    let link = match pod.link_by_name(name) {
        Ok(l) => l,
        Err(e) => return vec![format!("interface {name} in the pod: {e}")],
    };
    if !link.up {
        missing.push(format!("interface {name} in the pod is down"));
    }
    match spec.ip_prefix() {
        Ok(prefix) => {
            check_addr(pod, &link, prefix, &mut missing);
            check_default_route(pod, &link, spec.alloc.gateway, &mut missing);
        }
        Err(e) => missing.push(e.to_string()),
    }
    missing
}

pub(crate) fn check_addr(
    nl: &mut dyn Netlink,
    link: &Link,
    prefix: Ipv4Net,
    missing: &mut Vec<String>,
) {
    match nl.addr_list(Some(link.index)) {
        Ok(addrs) if addrs.iter().any(|a| a.address == prefix) => {}
        Ok(_) => missing.push(format!("address {prefix} on {} in the pod", link.name)),
        Err(e) => missing.push(format!("list addresses of {}: {e}", link.name)),
    }
}

pub(crate) fn check_default_route(
    nl: &mut dyn Netlink,
    link: &Link,
    gateway: Ipv4Addr,
    missing: &mut Vec<String>,
) {
    match nl.route_list(TABLE_MAIN) {
        Ok(routes)
            if routes.iter().any(|r| {
                r.dst_or_default().prefix_len() == 0
                    && r.gateway == Some(gateway)
                    && r.oif == Some(link.index)
            }) => {}
        Ok(_) => missing.push(format!(
            "default route via {gateway} dev {} in the pod",
            link.name
        )),
        Err(e) => missing.push(format!("list routes in the pod: {e}")),
    }
}

/// A `/32` link-scope route to the pod in the node's main table.
pub(crate) fn host_route(ip32: Ipv4Net, oif: u32) -> Route {
    Route::new(TABLE_MAIN).dst(ip32).oif(oif).scope(Scope::Link)
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod wiring_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_valid_and_distinct() {
        let a = host_veth_name("4f1d2c3b4a5968778695a4b3c2d1e0f0", "eth0");
        assert_eq!(
            a,
            host_veth_name("4f1d2c3b4a5968778695a4b3c2d1e0f0", "eth0")
        );
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("eni"));
        assert!(eni_kernel::link::validate_link_name(&a).is_ok());
        assert_ne!(
            a,
            host_veth_name("4f1d2c3b4a5968778695a4b3c2d1e0f0", "eth1")
        );
        assert_ne!(
            a,
            host_veth_name("4f1d2c3b4a5968778695a4b3c2d1e0f1", "eth0")
        );
    }

    #[test]
    fn default_route_is_onlink_when_the_gateway_is_outside_the_prefix() {
        let r = default_route(
            3,
            "10.0.0.1".parse().unwrap(),
            "10.0.0.7/24".parse().unwrap(),
        );
        assert!(!r.onlink);
        let r = default_route(
            3,
            "10.0.1.1".parse().unwrap(),
            "10.0.0.7/24".parse().unwrap(),
        );
        assert!(r.onlink);
    }
}
