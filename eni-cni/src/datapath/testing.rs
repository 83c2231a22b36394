//! Two linked `FakeNetlink`s, a node and a pod, for the datapath unit tests: a link that
//! one side moves (or creates) into the other namespace appears on the other side, and
//! deleting a veth end removes its peer on the other side, as the kernel does.

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;

use eni_kernel::{
    Addr, FakeNetlink, IpvlanAdd, Link, LinkKind, MacAddr, MacvlanAdd, Neigh, Netlink, Result,
    Route, Rule, VethAdd,
};

type Shared = Rc<RefCell<FakeNetlink>>;
/// Pairs of (index here, index on the other side) of veth ends split across the two.
type Peers = Rc<RefCell<Vec<(bool, u32, u32)>>>;

/// One side of the pair, usable as `&mut dyn Netlink`.
#[derive(Debug)]
pub struct Side {
    is_host: bool,
    me: Shared,
    other: Shared,
    peers: Peers,
}

/// A node and a pod namespace.
#[derive(Debug)]
pub struct World {
    /// The node's side.
    pub host: Side,
    /// The pod's side.
    pub pod: Side,
    /// Stand-ins for the namespace fds.
    pub host_file: File,
    /// Stand-in for the pod namespace fd.
    pub pod_file: File,
}

impl World {
    /// A node with the ENI link `eth1` (MAC 02:00:00:00:00:e1, MTU 9001) and an empty pod.
    pub fn new() -> World {
        let host = Rc::new(RefCell::new(FakeNetlink::new()));
        let pod = Rc::new(RefCell::new(FakeNetlink::new()));
        host.borrow_mut()
            .add_nic("eth1", "02:00:00:00:00:e1".parse().unwrap(), 9001);
        let peers = Peers::default();
        World {
            host: Side {
                is_host: true,
                me: host.clone(),
                other: pod.clone(),
                peers: peers.clone(),
            },
            pod: Side {
                is_host: false,
                me: pod,
                other: host,
                peers,
            },
            host_file: File::open("/dev/null").unwrap(),
            pod_file: File::open("/dev/null").unwrap(),
        }
    }

    /// The node's fake.
    pub fn host_fake(&self) -> std::cell::RefMut<'_, FakeNetlink> {
        self.host.me.borrow_mut()
    }

    /// The pod's fake.
    pub fn pod_fake(&self) -> std::cell::RefMut<'_, FakeNetlink> {
        self.pod.me.borrow_mut()
    }

    /// Both namespaces, as the datapath code takes them.
    pub fn namespaces(&mut self, pod_present: bool) -> super::Namespaces<'_> {
        super::Namespaces {
            host: &mut self.host,
            pod: if pod_present {
                Some(&mut self.pod)
            } else {
                None
            },
            host_fd: self.host_file.as_fd(),
            pod_fd: if pod_present {
                Some(self.pod_file.as_fd())
            } else {
                None
            },
        }
    }
}

impl Side {
    /// Moves what left this side into the other one.
    fn sync(&self) {
        let moved: Vec<_> = self.me.borrow_mut().moved_out.drain(..).collect();
        for m in moved {
            let mut other = self.other.borrow_mut();
            let index = 100 + other.links.keys().copied().max().unwrap_or(0);
            let link = Link {
                index,
                name: m.name_there.clone(),
                parent: None,
                link_netnsid: None,
                up: false,
                lower_up: false,
                ..m.link.clone()
            };
            if m.link.kind == Some(LinkKind::Veth) {
                if let Some(local) = m.link.parent {
                    self.peers.borrow_mut().push((self.is_host, local, index));
                }
            }
            other.links.insert(index, link);
        }
    }

    /// When a veth end is deleted here, its peer over there goes too.
    fn drop_peer(&self, index: u32) {
        let mut peers = self.peers.borrow_mut();
        let mut keep = Vec::new();
        for (host_side, here, there) in peers.drain(..) {
            if host_side == self.is_host && here == index {
                let _ = self.other.borrow_mut().link_del(there);
            } else if host_side != self.is_host && there == index {
                let _ = self.other.borrow_mut().link_del(here);
            } else {
                keep.push((host_side, here, there));
            }
        }
        *peers = keep;
    }
}

macro_rules! delegate {
    ($( fn $name:ident(&mut self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        $(
            fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                let r = self.me.borrow_mut().$name($($arg),*);
                self.sync();
                r
            }
        )*
    };
}

impl Netlink for Side {
    delegate! {
        fn link_list(&mut self) -> Result<Vec<Link>>;
        fn link_by_name(&mut self, name: &str) -> Result<Link>;
        fn link_by_index(&mut self, index: u32) -> Result<Link>;
        fn link_by_mac(&mut self, mac: MacAddr) -> Result<Link>;
        fn link_set_up(&mut self, index: u32) -> Result<()>;
        fn link_set_down(&mut self, index: u32) -> Result<()>;
        fn link_set_mtu(&mut self, index: u32, mtu: u32) -> Result<()>;
        fn link_set_mac(&mut self, index: u32, mac: MacAddr) -> Result<()>;
        fn link_rename(&mut self, index: u32, name: &str) -> Result<()>;
        fn link_set_netns(&mut self, index: u32, netns: BorrowedFd<'_>, new_name: Option<&str>) -> Result<()>;
        fn veth_add(&mut self, spec: &VethAdd<'_>) -> Result<u32>;
        fn ipvlan_add(&mut self, spec: &IpvlanAdd<'_>) -> Result<()>;
        fn macvlan_add(&mut self, spec: &MacvlanAdd<'_>) -> Result<()>;
        fn addr_add(&mut self, addr: &Addr) -> Result<()>;
        fn addr_replace(&mut self, addr: &Addr) -> Result<()>;
        fn addr_del(&mut self, addr: &Addr) -> Result<()>;
        fn addr_list(&mut self, index: Option<u32>) -> Result<Vec<Addr>>;
        fn route_add(&mut self, route: &Route) -> Result<()>;
        fn route_replace(&mut self, route: &Route) -> Result<()>;
        fn route_del(&mut self, route: &Route) -> Result<()>;
        fn route_list(&mut self, table: u32) -> Result<Vec<Route>>;
        fn rule_add(&mut self, rule: &Rule) -> Result<()>;
        fn rule_del(&mut self, rule: &Rule) -> Result<()>;
        fn rule_list(&mut self) -> Result<Vec<Rule>>;
        fn neigh_add(&mut self, neigh: &Neigh) -> Result<()>;
        fn neigh_replace(&mut self, neigh: &Neigh) -> Result<()>;
        fn neigh_del(&mut self, neigh: &Neigh) -> Result<()>;
    }

    fn link_del(&mut self, index: u32) -> Result<()> {
        let r = self.me.borrow_mut().link_del(index);
        if r.is_ok() {
            self.drop_peer(index);
        }
        r
    }
}
