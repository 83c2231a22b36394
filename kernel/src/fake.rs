//! [`FakeNetlink`]: an in-memory, recording implementation of [`Netlink`] for unit tests of
//! the layers above (pool, allocator, CNI wiring) without root.
//!
//! It models one namespace: links, IPv4 addresses, routes, rules and neighbours, with the
//! kernel's errnos for the common refusals (`EEXIST`, `ENODEV`, `ESRCH`, `ENOENT`,
//! `EADDRNOTAVAIL`). Every call is recorded as a line like `"addr add 10.0.0.5/24 dev
//! index 2"`. A test can make an operation fail ([`FakeNetlink::fail_next`]) or declare a
//! link kind unsupported ([`FakeNetlink::without_kind`]). Not modelled: the kernel's own
//! routes for addresses, the peer side of a move to another namespace (recorded in
//! [`FakeNetlink::moved_out`]), IPv6.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::addr::Addr;
use crate::error::{Error, Result};
use crate::link::{validate_link_name, IpvlanAdd, Link, LinkKind, MacAddr, MacvlanAdd, VethAdd};
use crate::neigh::Neigh;
use crate::netlink::Netlink;
use crate::route::{Route, TABLE_LOCAL, TABLE_MAIN};
use crate::rule::Rule;

/// A link moved out of the fake's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedLink {
    /// The link as it was before the move (or as created directly in the other namespace).
    pub link: Link,
    /// The raw fd of the target namespace.
    pub netns_fd: i32,
    /// Its name in the target namespace.
    pub name_there: String,
}

/// An in-memory [`Netlink`] with a recorded call log and injectable failures.
#[derive(Debug)]
pub struct FakeNetlink {
    /// Links by index (starts with `lo`, index 1).
    pub links: BTreeMap<u32, Link>,
    /// IPv4 addresses.
    pub addrs: Vec<Addr>,
    /// Routes, all tables.
    pub routes: Vec<Route>,
    /// Rules (starts with the kernel's three default rules).
    pub rules: Vec<Rule>,
    /// Neighbour and proxy entries.
    pub neighs: Vec<Neigh>,
    /// Links that left this namespace (moved, or created directly elsewhere).
    pub moved_out: Vec<MovedLink>,
    calls: Vec<String>,
    failures: HashMap<&'static str, Vec<i32>>,
    unsupported: HashSet<String>,
    next_index: u32,
}

impl Default for FakeNetlink {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeNetlink {
    /// A namespace with `lo` (index 1, down) and the default rules 0/32766/32767.
    pub fn new() -> Self {
        let mut links = BTreeMap::new();
        links.insert(
            1,
            Link {
                index: 1,
                name: "lo".into(),
                mac: Some(MacAddr([0; 6])),
                mtu: 65536,
                up: false,
                lower_up: false,
                kind: None,
                master: None,
                parent: None,
                link_netnsid: None,
            },
        );
        FakeNetlink {
            links,
            addrs: Vec::new(),
            routes: Vec::new(),
            rules: vec![
                Rule::new(TABLE_LOCAL).priority(0),
                Rule::new(TABLE_MAIN).priority(32766),
                Rule::new(253).priority(32767),
            ],
            neighs: Vec::new(),
            moved_out: Vec::new(),
            calls: Vec::new(),
            failures: HashMap::new(),
            unsupported: HashSet::new(),
            next_index: 2,
        }
    }

    /// Adds a physical-like link (an ENI's netdev, no kind), returning its index.
    pub fn add_nic(&mut self, name: &str, mac: MacAddr, mtu: u32) -> u32 {
        let index = self.alloc_index();
        self.links.insert(
            index,
            Link {
                index,
                name: name.into(),
                mac: Some(mac),
                mtu,
                up: false,
                lower_up: false,
                kind: None,
                master: None,
                parent: None,
                link_netnsid: None,
            },
        );
        index
    }

    /// Makes the next call of `op` (`"link add veth"`, `"addr add"`, `"route replace"`,
    /// ... the same names as in [`Error::Netlink`]) fail with `errno`. Calls queue up.
    pub fn fail_next(&mut self, op: &'static str, errno: i32) -> &mut Self {
        self.failures.entry(op).or_default().push(errno);
        self
    }

    /// Behaves like a kernel without this link kind (`ipvlan` on this machine's kernel).
    pub fn without_kind(&mut self, kind: &LinkKind) -> &mut Self {
        self.unsupported.insert(kind.as_str().to_string());
        self
    }

    /// Every call so far, in order, one line each (`"link set up 2"`).
    pub fn calls(&self) -> &[String] {
        &self.calls
    }

    /// Forgets the call log.
    pub fn clear_calls(&mut self) {
        self.calls.clear();
    }

    fn alloc_index(&mut self) -> u32 {
        let i = self.next_index;
        self.next_index += 1;
        i
    }

    /// Records the call and returns an injected failure, if one is queued.
    fn enter(&mut self, op: &'static str, subject: String) -> Result<()> {
        self.calls.push(format!("{op} {subject}"));
        if let Some(queue) = self.failures.get_mut(op) {
            if !queue.is_empty() {
                let errno = queue.remove(0);
                return Err(Error::netlink(op, subject, errno));
            }
        }
        Ok(())
    }

    fn link_mut(&mut self, op: &'static str, index: u32) -> Result<&mut Link> {
        self.links
            .get_mut(&index)
            .ok_or_else(|| Error::netlink(op, format!("index {index}"), libc::ENODEV))
    }

    fn name_taken(&self, name: &str) -> bool {
        self.links.values().any(|l| l.name == name)
    }

    fn new_link(&mut self, name: &str, kind: LinkKind, mtu: u32, mac: Option<MacAddr>) -> u32 {
        let index = self.alloc_index();
        let b = index.to_be_bytes();
        self.links.insert(
            index,
            Link {
                index,
                name: name.into(),
                mac: Some(mac.unwrap_or(MacAddr([0x02, 0xfa, b[0], b[1], b[2], b[3]]))),
                mtu,
                up: false,
                lower_up: false,
                kind: Some(kind),
                master: None,
                parent: None,
                link_netnsid: None,
            },
        );
        index
    }

    /// Removes a link and what hangs off it (addresses, routes through it, neighbours).
    fn drop_link(&mut self, index: u32) -> Option<Link> {
        let link = self.links.remove(&index)?;
        self.addrs.retain(|a| a.index != index);
        self.routes.retain(|r| r.oif != Some(index));
        self.neighs.retain(|n| n.index != index);
        Some(link)
    }

    fn moved(&mut self, link: Link, fd: BorrowedFd<'_>, name_there: String) {
        self.moved_out.push(MovedLink {
            link,
            netns_fd: fd.as_raw_fd(),
            name_there,
        });
    }

    fn child_add(&mut self, op: &'static str, kind: &LinkKind, c: &Child<'_>) -> Result<()> {
        let Child {
            name,
            parent,
            netns,
            mtu,
            mac,
        } = *c;
        self.enter(op, format!("{name} parent {parent}"))?;
        validate_link_name(name)?;
        if self.unsupported.contains(kind.as_str()) {
            return Err(Error::Unsupported {
                kind: if *kind == LinkKind::Ipvlan {
                    "ipvlan"
                } else {
                    "macvlan"
                },
            });
        }
        let parent_mtu = self.link_mut(op, parent)?.mtu;
        // As the kernel: the name is looked up in the requesting namespace even when the
        // link is created in another one (`netns`), and NLM_F_EXCL makes a hit EEXIST.
        if self.name_taken(name) {
            return Err(Error::netlink(op, name, libc::EEXIST));
        }
        let index = self.new_link(name, kind.clone(), mtu.unwrap_or(parent_mtu), mac);
        if let Some(l) = self.links.get_mut(&index) {
            l.parent = Some(parent);
        }
        if let Some(fd) = netns {
            let link = self.links.remove(&index).expect("just inserted");
            self.moved(link, fd, name.to_string());
        }
        Ok(())
    }
}

/// What ipvlan and macvlan creation have in common.
#[derive(Clone, Copy)]
struct Child<'a> {
    name: &'a str,
    parent: u32,
    netns: Option<BorrowedFd<'a>>,
    mtu: Option<u32>,
    mac: Option<MacAddr>,
}

fn same_route_key(a: &Route, b: &Route) -> bool {
    a.table == b.table && a.dst_or_default() == b.dst_or_default() && a.metric == b.metric
}

fn route_matches_del(stored: &Route, del: &Route) -> bool {
    stored.table == del.table
        && stored.dst_or_default() == del.dst_or_default()
        && (del.metric.is_none() || stored.metric == del.metric)
        && (del.gateway.is_none() || stored.gateway == del.gateway)
        && (del.oif.is_none() || stored.oif == del.oif)
}

fn rule_matches(stored: &Rule, want: &Rule) -> bool {
    (want.priority.is_none() || stored.priority == want.priority)
        && (want.table == 0 || stored.table == want.table)
        && (want.from.is_none() || stored.from == want.from)
        && (want.to.is_none() || stored.to == want.to)
        && (want.iif.is_none() || stored.iif == want.iif)
        && (want.oif.is_none() || stored.oif == want.oif)
}

fn rule_identical(stored: &Rule, new: &Rule) -> bool {
    (new.priority.is_none() || stored.priority == new.priority)
        && stored.table == new.table
        && stored.from == new.from
        && stored.to == new.to
        && stored.iif == new.iif
        && stored.oif == new.oif
}

impl Netlink for FakeNetlink {
    fn link_list(&mut self) -> Result<Vec<Link>> {
        self.enter("link list", String::new())?;
        Ok(self.links.values().cloned().collect())
    }

    fn link_by_name(&mut self, name: &str) -> Result<Link> {
        self.enter("link get", name.to_string())?;
        self.links
            .values()
            .find(|l| l.name == name)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: format!("link {name}"),
            })
    }

    fn link_by_index(&mut self, index: u32) -> Result<Link> {
        self.enter("link get", format!("index {index}"))?;
        self.links
            .get(&index)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: format!("link index {index}"),
            })
    }

    fn link_by_mac(&mut self, mac: MacAddr) -> Result<Link> {
        self.enter("link list", format!("mac {mac}"))?;
        self.links
            .values()
            .find(|l| l.mac == Some(mac))
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: format!("link with MAC {mac}"),
            })
    }

    fn link_set_up(&mut self, index: u32) -> Result<()> {
        self.enter("link set up", index.to_string())?;
        let l = self.link_mut("link set up", index)?;
        l.up = true;
        l.lower_up = true;
        Ok(())
    }

    fn link_set_down(&mut self, index: u32) -> Result<()> {
        self.enter("link set down", index.to_string())?;
        let l = self.link_mut("link set down", index)?;
        l.up = false;
        l.lower_up = false;
        Ok(())
    }

    fn link_set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.enter("link set mtu", format!("{index} {mtu}"))?;
        self.link_mut("link set mtu", index)?.mtu = mtu;
        Ok(())
    }

    fn link_set_mac(&mut self, index: u32, mac: MacAddr) -> Result<()> {
        self.enter("link set address", format!("{index} {mac}"))?;
        self.link_mut("link set address", index)?.mac = Some(mac);
        Ok(())
    }

    fn link_rename(&mut self, index: u32, name: &str) -> Result<()> {
        const OP: &str = "link set name";
        self.enter(OP, format!("{index} {name}"))?;
        validate_link_name(name)?;
        let taken = self
            .links
            .values()
            .any(|l| l.name == name && l.index != index);
        let l = self.link_mut(OP, index)?;
        if taken {
            return Err(Error::netlink(OP, name, libc::EEXIST));
        }
        l.name = name.to_string();
        Ok(())
    }

    fn link_set_netns(
        &mut self,
        index: u32,
        netns: BorrowedFd<'_>,
        new_name: Option<&str>,
    ) -> Result<()> {
        const OP: &str = "link set netns";
        self.enter(OP, format!("{index} name {}", new_name.unwrap_or("-")))?;
        if let Some(n) = new_name {
            validate_link_name(n)?;
        }
        self.link_mut(OP, index)?;
        let link = self.drop_link(index).expect("checked above");
        let name_there = new_name.map_or_else(|| link.name.clone(), str::to_string);
        self.moved(link, netns, name_there);
        Ok(())
    }

    fn link_del(&mut self, index: u32) -> Result<()> {
        const OP: &str = "link del";
        self.enter(OP, index.to_string())?;
        let link = self
            .drop_link(index)
            .ok_or_else(|| Error::netlink(OP, format!("index {index}"), libc::ENODEV))?;
        if link.kind == Some(LinkKind::Veth) {
            if let Some(peer) = link.parent {
                self.drop_link(peer);
            }
        }
        Ok(())
    }

    fn veth_add(&mut self, spec: &VethAdd<'_>) -> Result<u32> {
        const OP: &str = "link add veth";
        self.enter(OP, format!("{} peer {}", spec.name, spec.peer_name))?;
        validate_link_name(&spec.name)?;
        validate_link_name(&spec.peer_name)?;
        if self.name_taken(&spec.name)
            || (spec.peer_netns.is_none()
                && (self.name_taken(&spec.peer_name) || spec.name == spec.peer_name))
        {
            return Err(Error::netlink(OP, &spec.name, libc::EEXIST));
        }
        let mtu = spec.mtu.unwrap_or(1500);
        let local = self.new_link(&spec.name, LinkKind::Veth, mtu, spec.mac);
        let peer = self.new_link(&spec.peer_name, LinkKind::Veth, mtu, spec.peer_mac);
        if let Some(l) = self.links.get_mut(&local) {
            l.parent = Some(peer);
        }
        if let Some(l) = self.links.get_mut(&peer) {
            l.parent = Some(local);
        }
        if let Some(fd) = spec.peer_netns {
            let peer_link = self.links.remove(&peer).expect("just inserted");
            if let Some(l) = self.links.get_mut(&local) {
                l.link_netnsid = Some(0);
            }
            self.moved(peer_link, fd, spec.peer_name.clone());
        }
        Ok(local)
    }

    fn ipvlan_add(&mut self, spec: &IpvlanAdd<'_>) -> Result<()> {
        let child = Child {
            name: &spec.name,
            parent: spec.parent,
            netns: spec.netns,
            mtu: spec.mtu,
            mac: None,
        };
        self.child_add("link add ipvlan", &LinkKind::Ipvlan, &child)
    }

    fn macvlan_add(&mut self, spec: &MacvlanAdd<'_>) -> Result<()> {
        let child = Child {
            name: &spec.name,
            parent: spec.parent,
            netns: spec.netns,
            mtu: spec.mtu,
            mac: spec.mac,
        };
        self.child_add("link add macvlan", &LinkKind::Macvlan, &child)
    }

    fn addr_add(&mut self, addr: &Addr) -> Result<()> {
        const OP: &str = "addr add";
        let subject = format!("{} dev index {}", addr.address, addr.index);
        self.enter(OP, subject.clone())?;
        self.link_mut(OP, addr.index)?;
        if self
            .addrs
            .iter()
            .any(|a| a.index == addr.index && a.address == addr.address)
        {
            return Err(Error::netlink(OP, subject, libc::EEXIST));
        }
        self.addrs.push(*addr);
        Ok(())
    }

    fn addr_replace(&mut self, addr: &Addr) -> Result<()> {
        const OP: &str = "addr replace";
        self.enter(OP, format!("{} dev index {}", addr.address, addr.index))?;
        self.link_mut(OP, addr.index)?;
        self.addrs
            .retain(|a| !(a.index == addr.index && a.address == addr.address));
        self.addrs.push(*addr);
        Ok(())
    }

    fn addr_del(&mut self, addr: &Addr) -> Result<()> {
        const OP: &str = "addr del";
        let subject = format!("{} dev index {}", addr.address, addr.index);
        self.enter(OP, subject.clone())?;
        let before = self.addrs.len();
        self.addrs
            .retain(|a| !(a.index == addr.index && a.address == addr.address));
        if self.addrs.len() == before {
            return Err(Error::netlink(OP, subject, libc::EADDRNOTAVAIL));
        }
        Ok(())
    }

    fn addr_list(&mut self, index: Option<u32>) -> Result<Vec<Addr>> {
        self.enter("addr list", String::new())?;
        Ok(self
            .addrs
            .iter()
            .filter(|a| index.is_none_or(|i| a.index == i))
            .copied()
            .collect())
    }

    fn route_add(&mut self, route: &Route) -> Result<()> {
        const OP: &str = "route add";
        self.enter(OP, route.describe())?;
        if let Some(oif) = route.oif {
            self.link_mut(OP, oif)?;
        }
        if self.routes.iter().any(|r| same_route_key(r, route)) {
            return Err(Error::netlink(OP, route.describe(), libc::EEXIST));
        }
        self.routes.push(*route);
        Ok(())
    }

    fn route_replace(&mut self, route: &Route) -> Result<()> {
        const OP: &str = "route replace";
        self.enter(OP, route.describe())?;
        if let Some(oif) = route.oif {
            self.link_mut(OP, oif)?;
        }
        self.routes.retain(|r| !same_route_key(r, route));
        self.routes.push(*route);
        Ok(())
    }

    fn route_del(&mut self, route: &Route) -> Result<()> {
        const OP: &str = "route del";
        self.enter(OP, route.describe())?;
        match self.routes.iter().position(|r| route_matches_del(r, route)) {
            Some(i) => {
                self.routes.remove(i);
                Ok(())
            }
            None => Err(Error::netlink(OP, route.describe(), libc::ESRCH)),
        }
    }

    fn route_list(&mut self, table: u32) -> Result<Vec<Route>> {
        self.enter("route list", format!("table {table}"))?;
        Ok(self
            .routes
            .iter()
            .filter(|r| r.table == table)
            .copied()
            .collect())
    }

    fn rule_add(&mut self, rule: &Rule) -> Result<()> {
        const OP: &str = "rule add";
        self.enter(OP, rule.describe())?;
        if self.rules.iter().any(|r| rule_identical(r, rule)) {
            return Err(Error::netlink(OP, rule.describe(), libc::EEXIST));
        }
        let mut rule = rule.clone();
        if rule.priority.is_none() {
            // The kernel picks one below the first non-zero priority.
            let first = self
                .rules
                .iter()
                .filter_map(|r| r.priority)
                .filter(|&p| p > 0)
                .min()
                .unwrap_or(1);
            rule.priority = Some(first.saturating_sub(1));
        }
        let at = self
            .rules
            .iter()
            .position(|r| r.priority > rule.priority)
            .unwrap_or(self.rules.len());
        self.rules.insert(at, rule);
        Ok(())
    }

    fn rule_del(&mut self, rule: &Rule) -> Result<()> {
        const OP: &str = "rule del";
        self.enter(OP, rule.describe())?;
        match self.rules.iter().position(|r| rule_matches(r, rule)) {
            Some(i) => {
                self.rules.remove(i);
                Ok(())
            }
            None => Err(Error::netlink(OP, rule.describe(), libc::ENOENT)),
        }
    }

    fn rule_list(&mut self) -> Result<Vec<Rule>> {
        self.enter("rule list", String::new())?;
        Ok(self.rules.clone())
    }

    fn neigh_add(&mut self, neigh: &Neigh) -> Result<()> {
        const OP: &str = "neigh add";
        self.enter(OP, neigh.describe())?;
        self.link_mut(OP, neigh.index)?;
        if self.neighs.iter().any(|n| same_neigh(n, neigh)) {
            return Err(Error::netlink(OP, neigh.describe(), libc::EEXIST));
        }
        self.neighs.push(*neigh);
        Ok(())
    }

    fn neigh_replace(&mut self, neigh: &Neigh) -> Result<()> {
        const OP: &str = "neigh replace";
        self.enter(OP, neigh.describe())?;
        self.link_mut(OP, neigh.index)?;
        self.neighs.retain(|n| !same_neigh(n, neigh));
        self.neighs.push(*neigh);
        Ok(())
    }

    fn neigh_del(&mut self, neigh: &Neigh) -> Result<()> {
        const OP: &str = "neigh del";
        self.enter(OP, neigh.describe())?;
        match self.neighs.iter().position(|n| same_neigh(n, neigh)) {
            Some(i) => {
                self.neighs.remove(i);
                Ok(())
            }
            None => Err(Error::netlink(OP, neigh.describe(), libc::ENOENT)),
        }
    }
}

fn same_neigh(a: &Neigh, b: &Neigh) -> bool {
    a.index == b.index && a.ip == b.ip && a.proxy == b.proxy
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::link::IpvlanMode;
    use crate::route::Scope;

    fn some_fd() -> std::fs::File {
        std::fs::File::open("/dev/null").unwrap()
    }

    /// What a caller above would do: host side of a veth-mode pod, through the trait.
    fn wire_pod(nl: &mut dyn Netlink, pod_ns: BorrowedFd<'_>, eni: u32) -> Result<u32> {
        let host = nl.veth_add(&VethAdd::new("veth-abc", "eth0").peer_netns(pod_ns))?;
        nl.link_set_up(host)?;
        nl.route_ensure(
            &Route::new(TABLE_MAIN)
                .dst("10.0.0.7/32".parse().unwrap())
                .oif(host)
                .scope(Scope::Link),
        )?;
        nl.rule_ensure(
            &Rule::new(1001)
                .priority(512)
                .from("10.0.0.7/32".parse().unwrap()),
        )?;
        nl.route_ensure(
            &Route::new(1001)
                .gateway("10.0.0.1".parse().unwrap())
                .oif(eni),
        )?;
        Ok(host)
    }

    #[test]
    fn models_a_veth_mode_pod_and_records_calls() {
        let mut nl = FakeNetlink::new();
        let eni = nl.add_nic("eth1", "02:00:00:00:00:0e".parse().unwrap(), 9001);
        let f = some_fd();
        let host = wire_pod(&mut nl, f.as_fd(), eni).unwrap();
        assert_eq!(nl.links[&host].name, "veth-abc");
        assert!(nl.links[&host].up);
        assert_eq!(nl.moved_out.len(), 1);
        assert_eq!(nl.moved_out[0].name_there, "eth0");
        assert_eq!(nl.route_list(1001).unwrap().len(), 1);
        assert_eq!(nl.calls()[0], "link add veth veth-abc peer eth0");
        // Wiring again is idempotent apart from the link itself.
        let again = wire_pod(&mut nl, f.as_fd(), eni).unwrap_err();
        assert!(again.is_exists());
        assert_eq!(nl.rules.len(), 4);
    }

    #[test]
    fn injected_failures_fire_once_per_queue_entry() {
        let mut nl = FakeNetlink::new();
        nl.fail_next("route replace", libc::ENETUNREACH);
        let r = Route::new(100).gateway("10.0.0.1".parse().unwrap());
        let e = nl.route_replace(&r).unwrap_err();
        assert!(
            matches!(e, Error::Netlink { op: "route replace", errno, .. } if errno == libc::ENETUNREACH)
        );
        nl.route_replace(&r).unwrap();
        assert_eq!(nl.calls().len(), 2);
    }

    #[test]
    fn ipvlan_unsupported_or_created() {
        let mut nl = FakeNetlink::new();
        let eni = nl.add_nic("eth1", "02:00:00:00:00:0e".parse().unwrap(), 9001);
        nl.ipvlan_add(&IpvlanAdd::new("ipv0", eni, IpvlanMode::L2))
            .unwrap();
        let l = nl.link_by_name("ipv0").unwrap();
        assert_eq!(
            (l.kind, l.parent, l.mtu),
            (Some(LinkKind::Ipvlan), Some(eni), 9001)
        );
        let e = nl
            .ipvlan_add(&IpvlanAdd::new("ipv1", 999, IpvlanMode::L2))
            .unwrap_err();
        assert!(e.is_not_found());

        nl.without_kind(&LinkKind::Ipvlan);
        let e = nl
            .ipvlan_add(&IpvlanAdd::new("ipv2", eni, IpvlanMode::L2))
            .unwrap_err();
        assert!(matches!(e, Error::Unsupported { kind: "ipvlan" }));
    }

    #[test]
    fn addresses_and_idempotent_helpers() {
        let mut nl = FakeNetlink::new();
        let a = Addr::new(1, "10.0.0.5/24".parse().unwrap());
        assert!(nl.addr_ensure(&a).unwrap());
        assert!(!nl.addr_ensure(&a).unwrap());
        assert!(nl.addr_add(&a).unwrap_err().is_exists());
        assert_eq!(nl.addr_list(Some(1)).unwrap(), vec![a]);
        assert!(nl.addr_del_if_exists(&a).unwrap());
        assert!(!nl.addr_del_if_exists(&a).unwrap());
        assert_eq!(
            nl.addr_del(&a).unwrap_err().errno(),
            Some(libc::EADDRNOTAVAIL)
        );
        let e = nl
            .addr_add(&Addr::new(42, "10.0.0.5/24".parse().unwrap()))
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENODEV));
    }

    #[test]
    fn routes_rules_and_neighbours() {
        let mut nl = FakeNetlink::new();
        let r = Route::new(100).dst("10.1.0.0/16".parse().unwrap()).oif(1);
        nl.route_add(&r).unwrap();
        assert!(nl.route_add(&r).unwrap_err().is_exists());
        nl.route_replace(&r.gateway("10.1.0.1".parse().unwrap()))
            .unwrap();
        assert_eq!(nl.route_list(100).unwrap().len(), 1);
        nl.route_del(&r).unwrap();
        assert_eq!(nl.route_del(&r).unwrap_err().errno(), Some(libc::ESRCH));

        let rule = Rule::new(100).from("10.1.2.3/32".parse().unwrap());
        nl.rule_add(&rule).unwrap();
        let listed = nl.rule_list().unwrap();
        let added = listed.iter().find(|x| x.table == 100).unwrap();
        assert_eq!(added.priority, Some(32765), "kernel-style auto priority");
        assert!(!nl.rule_ensure(&rule).unwrap());
        nl.rule_del(&rule).unwrap();
        assert_eq!(nl.rule_del(&rule).unwrap_err().errno(), Some(libc::ENOENT));
        assert!(!nl.rule_del_if_exists(&rule).unwrap());

        let n = Neigh::permanent(
            1,
            "169.254.1.1".parse().unwrap(),
            MacAddr([2, 0, 0, 0, 0, 1]),
        );
        nl.neigh_add(&n).unwrap();
        assert!(nl.neigh_add(&n).unwrap_err().is_exists());
        nl.neigh_replace(&n).unwrap();
        nl.neigh_del(&n).unwrap();
        assert!(!nl.neigh_del_if_exists(&n).unwrap());
    }

    #[test]
    fn links_move_rename_and_delete() {
        let mut nl = FakeNetlink::new();
        let m: MacAddr = "02:00:00:00:00:0e".parse().unwrap();
        let eni = nl.add_nic("eth1", m, 1500);
        assert_eq!(nl.link_by_mac(m).unwrap().index, eni);
        nl.link_set_mtu(eni, 9001).unwrap();
        nl.link_rename(eni, "eni-a").unwrap();
        assert!(nl.link_rename(eni, "lo").unwrap_err().is_exists());
        nl.addr_add(&Addr::new(eni, "10.0.0.9/24".parse().unwrap()))
            .unwrap();
        let f = some_fd();
        nl.link_set_netns(eni, f.as_fd(), Some("eth0")).unwrap();
        assert!(matches!(nl.link_by_mac(m), Err(Error::NotFound { .. })));
        assert!(nl.addrs.is_empty(), "addresses leave with the link");
        assert_eq!(nl.moved_out[0].link.mtu, 9001);
        assert_eq!(nl.moved_out[0].name_there, "eth0");

        let v = nl.veth_add(&VethAdd::new("a0", "a1")).unwrap();
        nl.link_del(v).unwrap();
        assert!(
            nl.link_by_name("a1").unwrap_err().is_not_found(),
            "peer goes too"
        );
        assert!(!nl.link_del_if_exists(v).unwrap());
    }
}
