//! The [`Netlink`] trait: the kernel operations the manager and the CNI need, so the logic
//! above can run against [`crate::FakeNetlink`] in unit tests and [`Handle`] for real.
//!
//! Idempotent helpers (`*_ensure`, `*_if_exists`) are provided methods built on the
//! errno classification of [`crate::Error`], so both implementations share them.

use std::os::fd::BorrowedFd;

use crate::addr::Addr;
use crate::error::Result;
use crate::handle::Handle;
use crate::link::{IpvlanAdd, Link, MacAddr, MacvlanAdd, VethAdd};
use crate::neigh::Neigh;
use crate::route::Route;
use crate::rule::Rule;

/// Netlink operations on one network namespace. Names follow the `ip` command.
pub trait Netlink {
    /// `ip link show`.
    fn link_list(&mut self) -> Result<Vec<Link>>;
    /// `ip link show NAME`; [`crate::Error::NotFound`] if none.
    fn link_by_name(&mut self, name: &str) -> Result<Link>;
    /// The link with this index; [`crate::Error::NotFound`] if none.
    fn link_by_index(&mut self, index: u32) -> Result<Link>;
    /// The link with this MAC; [`crate::Error::NotFound`] if none.
    fn link_by_mac(&mut self, mac: MacAddr) -> Result<Link>;
    /// `ip link set INDEX up`.
    fn link_set_up(&mut self, index: u32) -> Result<()>;
    /// `ip link set INDEX down`.
    fn link_set_down(&mut self, index: u32) -> Result<()>;
    /// `ip link set INDEX mtu MTU`.
    fn link_set_mtu(&mut self, index: u32, mtu: u32) -> Result<()>;
    /// `ip link set INDEX address MAC`.
    fn link_set_mac(&mut self, index: u32, mac: MacAddr) -> Result<()>;
    /// `ip link set INDEX name NAME`.
    fn link_rename(&mut self, index: u32, name: &str) -> Result<()>;
    /// `ip link set INDEX netns FD [name NAME]`.
    fn link_set_netns(
        &mut self,
        index: u32,
        netns: BorrowedFd<'_>,
        new_name: Option<&str>,
    ) -> Result<()>;
    /// `ip link del INDEX`.
    fn link_del(&mut self, index: u32) -> Result<()>;
    /// `ip link add ... type veth peer ...`; returns the local end's index.
    fn veth_add(&mut self, spec: &VethAdd<'_>) -> Result<u32>;
    /// `ip link add ... type ipvlan ...`; [`crate::Error::Unsupported`] without kernel ipvlan.
    fn ipvlan_add(&mut self, spec: &IpvlanAdd<'_>) -> Result<()>;
    /// `ip link add ... type macvlan ...`.
    fn macvlan_add(&mut self, spec: &MacvlanAdd<'_>) -> Result<()>;
    /// `ip addr add` (`EEXIST` if present).
    fn addr_add(&mut self, addr: &Addr) -> Result<()>;
    /// `ip addr replace`.
    fn addr_replace(&mut self, addr: &Addr) -> Result<()>;
    /// `ip addr del` (`EADDRNOTAVAIL` if absent).
    fn addr_del(&mut self, addr: &Addr) -> Result<()>;
    /// `ip -4 addr show [dev INDEX]`.
    fn addr_list(&mut self, index: Option<u32>) -> Result<Vec<Addr>>;
    /// `ip route add` (`EEXIST` if present).
    fn route_add(&mut self, route: &Route) -> Result<()>;
    /// `ip route replace`.
    fn route_replace(&mut self, route: &Route) -> Result<()>;
    /// `ip route del` (`ESRCH` if absent).
    fn route_del(&mut self, route: &Route) -> Result<()>;
    /// `ip -4 route show table TABLE`.
    fn route_list(&mut self, table: u32) -> Result<Vec<Route>>;
    /// `ip rule add` (`EEXIST` if an identical rule exists).
    fn rule_add(&mut self, rule: &Rule) -> Result<()>;
    /// `ip rule del` (`ENOENT` if none matches).
    fn rule_del(&mut self, rule: &Rule) -> Result<()>;
    /// `ip -4 rule show`.
    fn rule_list(&mut self) -> Result<Vec<Rule>>;
    /// `ip neigh add` (`EEXIST` if present).
    fn neigh_add(&mut self, neigh: &Neigh) -> Result<()>;
    /// `ip neigh replace`.
    fn neigh_replace(&mut self, neigh: &Neigh) -> Result<()>;
    /// `ip neigh del` (`ENOENT` if absent).
    fn neigh_del(&mut self, neigh: &Neigh) -> Result<()>;

    /// Adds the address unless it is already there. `Ok(true)` if it was added.
    fn addr_ensure(&mut self, addr: &Addr) -> Result<bool> {
        created(self.addr_add(addr))
    }
    /// Deletes the address if present. `Ok(true)` if it was deleted.
    fn addr_del_if_exists(&mut self, addr: &Addr) -> Result<bool> {
        removed(self.addr_del(addr))
    }
    /// Adds the route unless an identical one is there. `Ok(true)` if it was added.
    fn route_ensure(&mut self, route: &Route) -> Result<bool> {
        created(self.route_add(route))
    }
    /// Deletes the route if present. `Ok(true)` if it was deleted.
    fn route_del_if_exists(&mut self, route: &Route) -> Result<bool> {
        removed(self.route_del(route))
    }
    /// Adds the rule unless an identical one is there. `Ok(true)` if it was added.
    fn rule_ensure(&mut self, rule: &Rule) -> Result<bool> {
        created(self.rule_add(rule))
    }
    /// Deletes a matching rule if there is one. `Ok(true)` if one was deleted.
    fn rule_del_if_exists(&mut self, rule: &Rule) -> Result<bool> {
        removed(self.rule_del(rule))
    }
    /// Deletes the neighbour entry if present. `Ok(true)` if it was deleted.
    fn neigh_del_if_exists(&mut self, neigh: &Neigh) -> Result<bool> {
        removed(self.neigh_del(neigh))
    }
    /// Deletes the link if present. `Ok(true)` if it was deleted.
    fn link_del_if_exists(&mut self, index: u32) -> Result<bool> {
        removed(self.link_del(index))
    }
}

fn created(r: Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.is_exists() => Ok(false),
        Err(e) => Err(e),
    }
}

fn removed(r: Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

impl Netlink for Handle {
    fn link_list(&mut self) -> Result<Vec<Link>> {
        Handle::link_list(self)
    }
    fn link_by_name(&mut self, name: &str) -> Result<Link> {
        Handle::link_by_name(self, name)
    }
    fn link_by_index(&mut self, index: u32) -> Result<Link> {
        Handle::link_by_index(self, index)
    }
    fn link_by_mac(&mut self, mac: MacAddr) -> Result<Link> {
        Handle::link_by_mac(self, mac)
    }
    fn link_set_up(&mut self, index: u32) -> Result<()> {
        Handle::link_set_up(self, index)
    }
    fn link_set_down(&mut self, index: u32) -> Result<()> {
        Handle::link_set_down(self, index)
    }
    fn link_set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        Handle::link_set_mtu(self, index, mtu)
    }
    fn link_set_mac(&mut self, index: u32, mac: MacAddr) -> Result<()> {
        Handle::link_set_mac(self, index, mac)
    }
    fn link_rename(&mut self, index: u32, name: &str) -> Result<()> {
        Handle::link_rename(self, index, name)
    }
    fn link_set_netns(
        &mut self,
        index: u32,
        netns: BorrowedFd<'_>,
        new_name: Option<&str>,
    ) -> Result<()> {
        Handle::link_set_netns(self, index, netns, new_name)
    }
    fn link_del(&mut self, index: u32) -> Result<()> {
        Handle::link_del(self, index)
    }
    fn veth_add(&mut self, spec: &VethAdd<'_>) -> Result<u32> {
        Handle::veth_add(self, spec)
    }
    fn ipvlan_add(&mut self, spec: &IpvlanAdd<'_>) -> Result<()> {
        Handle::ipvlan_add(self, spec)
    }
    fn macvlan_add(&mut self, spec: &MacvlanAdd<'_>) -> Result<()> {
        Handle::macvlan_add(self, spec)
    }
    fn addr_add(&mut self, addr: &Addr) -> Result<()> {
        Handle::addr_add(self, addr)
    }
    fn addr_replace(&mut self, addr: &Addr) -> Result<()> {
        Handle::addr_replace(self, addr)
    }
    fn addr_del(&mut self, addr: &Addr) -> Result<()> {
        Handle::addr_del(self, addr)
    }
    fn addr_list(&mut self, index: Option<u32>) -> Result<Vec<Addr>> {
        Handle::addr_list(self, index)
    }
    fn route_add(&mut self, route: &Route) -> Result<()> {
        Handle::route_add(self, route)
    }
    fn route_replace(&mut self, route: &Route) -> Result<()> {
        Handle::route_replace(self, route)
    }
    fn route_del(&mut self, route: &Route) -> Result<()> {
        Handle::route_del(self, route)
    }
    fn route_list(&mut self, table: u32) -> Result<Vec<Route>> {
        Handle::route_list(self, table)
    }
    fn rule_add(&mut self, rule: &Rule) -> Result<()> {
        Handle::rule_add(self, rule)
    }
    fn rule_del(&mut self, rule: &Rule) -> Result<()> {
        Handle::rule_del(self, rule)
    }
    fn rule_list(&mut self) -> Result<Vec<Rule>> {
        Handle::rule_list(self)
    }
    fn neigh_add(&mut self, neigh: &Neigh) -> Result<()> {
        Handle::neigh_add(self, neigh)
    }
    fn neigh_replace(&mut self, neigh: &Neigh) -> Result<()> {
        Handle::neigh_replace(self, neigh)
    }
    fn neigh_del(&mut self, neigh: &Neigh) -> Result<()> {
        Handle::neigh_del(self, neigh)
    }
}
