//! Links (`ip link`): listing and lookup, up/down, MTU, MAC, rename, move to another
//! namespace, delete, and creation of veth, ipvlan and macvlan links.
//!
//! Owns the translation between [`Link`] / the `*Add` option structs and `RTM_*LINK`
//! messages. It does not decide anything about pods or ENIs.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::str::FromStr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoIpVlan, InfoKind, InfoMacVlan, InfoVeth, IpVlanMode, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage, MacVlanMode,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::{strerror, Error, Result};
use crate::handle::Handle;

/// An Ethernet hardware address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    /// Parses `02:00:0a:00:00:01` (also with `-` separators, any case).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument {
            what: format!("MAC address {s:?}"),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl MacAddr {
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }
}

/// The kind of a link, as `ip -d link` shows it (`IFLA_INFO_KIND`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LinkKind {
    /// A veth pair end.
    Veth,
    /// An ipvlan slave.
    Ipvlan,
    /// A macvlan slave.
    Macvlan,
    /// A Linux bridge.
    Bridge,
    /// A VXLAN device.
    Vxlan,
    /// A dummy device.
    Dummy,
    /// Any other kind, by its kernel name.
    Other(String),
}

impl LinkKind {
    /// The kernel's name of the kind (`"veth"`, `"ipvlan"`, ...).
    pub fn as_str(&self) -> &str {
        match self {
            LinkKind::Veth => "veth",
            LinkKind::Ipvlan => "ipvlan",
            LinkKind::Macvlan => "macvlan",
            LinkKind::Bridge => "bridge",
            LinkKind::Vxlan => "vxlan",
            LinkKind::Dummy => "dummy",
            LinkKind::Other(s) => s,
        }
    }

    fn from_info(kind: &InfoKind) -> Self {
        match kind {
            InfoKind::Veth => LinkKind::Veth,
            InfoKind::IpVlan => LinkKind::Ipvlan,
            InfoKind::MacVlan => LinkKind::Macvlan,
            InfoKind::Bridge => LinkKind::Bridge,
            InfoKind::Vxlan => LinkKind::Vxlan,
            InfoKind::Dummy => LinkKind::Dummy,
            other => LinkKind::Other(other.to_string()),
        }
    }

    pub(crate) fn to_info(&self) -> InfoKind {
        match self {
            LinkKind::Veth => InfoKind::Veth,
            LinkKind::Ipvlan => InfoKind::IpVlan,
            LinkKind::Macvlan => InfoKind::MacVlan,
            LinkKind::Bridge => InfoKind::Bridge,
            LinkKind::Vxlan => InfoKind::Vxlan,
            LinkKind::Dummy => InfoKind::Dummy,
            LinkKind::Other(s) => InfoKind::Other(s.clone()),
        }
    }
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A network interface as the kernel reports it (`ip -d link show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index (`ifindex`).
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address, when the link has one.
    pub mac: Option<MacAddr>,
    /// MTU in bytes.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`).
    pub lower_up: bool,
    /// The kind, or `None` for a physical device.
    pub kind: Option<LinkKind>,
    /// Index of the master (bridge, bond) it is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_LINK`: the veth peer's or ipvlan/macvlan parent's index (in `link_netnsid`'s
    /// namespace when that is set).
    pub parent: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the namespace id (as seen from here) where `parent` lives.
    pub link_netnsid: Option<i32>,
}

impl Link {
    pub(crate) fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
            kind: None,
            master: None,
            parent: None,
            link_netnsid: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Address(bytes) => link.mac = MacAddr::from_bytes(bytes),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Controller(idx) => link.master = Some(*idx),
                LinkAttribute::Link(idx) => link.parent = Some(*idx),
                LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(LinkKind::from_info(kind));
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// ipvlan mode (`ip link add ... type ipvlan mode l2|l3|l3s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpvlanMode {
    /// Layer 2: slaves share the parent's MAC and see broadcasts.
    #[default]
    L2,
    /// Layer 3: routed, no broadcasts.
    L3,
    /// Layer 3 with netfilter (conntrack) on the slave.
    L3S,
}

/// macvlan mode (`ip link add ... type macvlan mode bridge|private`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MacvlanMode {
    /// Slaves of one parent talk to each other directly.
    #[default]
    Bridge,
    /// Slaves of one parent cannot talk to each other.
    Private,
}

/// Options for a new veth pair (`ip link add NAME type veth peer name PEER`).
#[derive(Debug, Clone)]
pub struct VethAdd<'a> {
    /// Name of the end created in the current namespace.
    pub name: String,
    /// Name of the peer end.
    pub peer_name: String,
    /// Create the peer directly in this namespace (`peer netns ...`).
    pub peer_netns: Option<BorrowedFd<'a>>,
    /// MTU of both ends.
    pub mtu: Option<u32>,
    /// MAC of the local end.
    pub mac: Option<MacAddr>,
    /// MAC of the peer end.
    pub peer_mac: Option<MacAddr>,
}

impl<'a> VethAdd<'a> {
    /// A pair `name` <-> `peer_name`, both in the current namespace, kernel-chosen MACs.
    pub fn new(name: impl Into<String>, peer_name: impl Into<String>) -> Self {
        VethAdd {
            name: name.into(),
            peer_name: peer_name.into(),
            peer_netns: None,
            mtu: None,
            mac: None,
            peer_mac: None,
        }
    }
    /// Creates the peer directly in the namespace `fd` refers to.
    pub fn peer_netns(mut self, fd: BorrowedFd<'a>) -> Self {
        self.peer_netns = Some(fd);
        self
    }
    /// Sets the MTU of both ends.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
    /// Sets the MAC of the local end.
    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }
    /// Sets the MAC of the peer end.
    pub fn peer_mac(mut self, mac: MacAddr) -> Self {
        self.peer_mac = Some(mac);
        self
    }
}

/// Options for a new ipvlan slave (`ip link add NAME link PARENT type ipvlan mode MODE`).
#[derive(Debug, Clone)]
pub struct IpvlanAdd<'a> {
    /// Name of the new link.
    pub name: String,
    /// Index of the parent link, in the current namespace.
    pub parent: u32,
    /// The ipvlan mode.
    pub mode: IpvlanMode,
    /// Create the link directly in this namespace.
    pub netns: Option<BorrowedFd<'a>>,
    /// MTU (defaults to the parent's).
    pub mtu: Option<u32>,
}

impl<'a> IpvlanAdd<'a> {
    /// An ipvlan slave of `parent` in the current namespace.
    pub fn new(name: impl Into<String>, parent: u32, mode: IpvlanMode) -> Self {
        IpvlanAdd {
            name: name.into(),
            parent,
            mode,
            netns: None,
            mtu: None,
        }
    }
    /// Creates the link directly in the namespace `fd` refers to.
    pub fn netns(mut self, fd: BorrowedFd<'a>) -> Self {
        self.netns = Some(fd);
        self
    }
    /// Sets the MTU.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
}

/// Options for a new macvlan slave (`ip link add NAME link PARENT type macvlan mode MODE`).
#[derive(Debug, Clone)]
pub struct MacvlanAdd<'a> {
    /// Name of the new link.
    pub name: String,
    /// Index of the parent link, in the current namespace.
    pub parent: u32,
    /// The macvlan mode.
    pub mode: MacvlanMode,
    /// Create the link directly in this namespace.
    pub netns: Option<BorrowedFd<'a>>,
    /// MTU (defaults to the parent's).
    pub mtu: Option<u32>,
    /// MAC of the new link (random when unset).
    pub mac: Option<MacAddr>,
}

impl<'a> MacvlanAdd<'a> {
    /// A macvlan slave of `parent` in the current namespace.
    pub fn new(name: impl Into<String>, parent: u32, mode: MacvlanMode) -> Self {
        MacvlanAdd {
            name: name.into(),
            parent,
            mode,
            netns: None,
            mtu: None,
            mac: None,
        }
    }
    /// Creates the link directly in the namespace `fd` refers to.
    pub fn netns(mut self, fd: BorrowedFd<'a>) -> Self {
        self.netns = Some(fd);
        self
    }
    /// Sets the MTU.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
    /// Sets the MAC.
    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }
}

/// Checks an interface name the way the kernel will (`dev_valid_name`), before sending.
pub fn validate_link_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            what: format!("link name {name:?} (1-15 bytes, no '/', ':' or spaces)"),
        })
    }
}

fn link_msg(index: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes = attributes;
    msg
}

fn info(kind: InfoKind, data: Option<InfoData>) -> LinkAttribute {
    let mut infos = vec![LinkInfo::Kind(kind)];
    infos.extend(data.map(LinkInfo::Data));
    LinkAttribute::LinkInfo(infos)
}

pub(crate) fn veth_message(spec: &VethAdd<'_>) -> LinkMessage {
    let mut peer = vec![LinkAttribute::IfName(spec.peer_name.clone())];
    peer.extend(spec.mtu.map(LinkAttribute::Mtu));
    peer.extend(spec.peer_mac.map(|m| LinkAttribute::Address(m.0.to_vec())));
    peer.extend(
        spec.peer_netns
            .map(|fd| LinkAttribute::NetNsFd(fd.as_raw_fd())),
    );
    let mut attrs = vec![LinkAttribute::IfName(spec.name.clone())];
    attrs.extend(spec.mtu.map(LinkAttribute::Mtu));
    attrs.extend(spec.mac.map(|m| LinkAttribute::Address(m.0.to_vec())));
    attrs.push(info(
        InfoKind::Veth,
        Some(InfoData::Veth(InfoVeth::Peer(link_msg(0, peer)))),
    ));
    link_msg(0, attrs)
}

pub(crate) fn ipvlan_message(spec: &IpvlanAdd<'_>) -> LinkMessage {
    let mode = match spec.mode {
        IpvlanMode::L2 => IpVlanMode::L2,
        IpvlanMode::L3 => IpVlanMode::L3,
        IpvlanMode::L3S => IpVlanMode::L3S,
    };
    let mut attrs = vec![
        LinkAttribute::IfName(spec.name.clone()),
        LinkAttribute::Link(spec.parent),
    ];
    attrs.extend(spec.mtu.map(LinkAttribute::Mtu));
    attrs.extend(spec.netns.map(|fd| LinkAttribute::NetNsFd(fd.as_raw_fd())));
    attrs.push(info(
        InfoKind::IpVlan,
        Some(InfoData::IpVlan(vec![InfoIpVlan::Mode(mode)])),
    ));
    link_msg(0, attrs)
}

pub(crate) fn macvlan_message(spec: &MacvlanAdd<'_>) -> LinkMessage {
    let mode = match spec.mode {
        MacvlanMode::Bridge => MacVlanMode::Bridge,
        MacvlanMode::Private => MacVlanMode::Private,
    };
    let mut attrs = vec![
        LinkAttribute::IfName(spec.name.clone()),
        LinkAttribute::Link(spec.parent),
    ];
    attrs.extend(spec.mtu.map(LinkAttribute::Mtu));
    attrs.extend(spec.mac.map(|m| LinkAttribute::Address(m.0.to_vec())));
    attrs.extend(spec.netns.map(|fd| LinkAttribute::NetNsFd(fd.as_raw_fd())));
    attrs.push(info(
        InfoKind::MacVlan,
        Some(InfoData::MacVlan(vec![InfoMacVlan::Mode(mode)])),
    ));
    link_msg(0, attrs)
}

/// Turns "the kernel does not know this link kind" into [`Error::Unsupported`].
///
/// The kernel answers `EOPNOTSUPP` with the extended-ack text "Unknown device type" when
/// no `rtnl_link_ops` is registered for the kind (and autoloading a module failed). Without
/// extended ack (kernels before 4.12) a bare `EOPNOTSUPP` is taken to mean the same.
pub(crate) fn map_unsupported(kind: &'static str, err: Error) -> Error {
    match &err {
        Error::Netlink { errno, message, .. }
            if *errno == libc::EOPNOTSUPP
                && (message.contains("Unknown device type")
                    || *message == strerror(libc::EOPNOTSUPP)) =>
        {
            Error::Unsupported { kind }
        }
        _ => err,
    }
}

fn not_found_as(what: impl FnOnce() -> String) -> impl FnOnce(Error) -> Error {
    move |err| {
        if err.errno() == Some(libc::ENODEV) {
            Error::NotFound { what: what() }
        } else {
            err
        }
    }
}

impl Handle {
    /// All links of this namespace (`ip link show`).
    pub fn link_list(&mut self) -> Result<Vec<Link>> {
        let replies = self.dump(
            "link list",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    fn link_get(&mut self, what: String, msg: LinkMessage) -> Result<Link> {
        let subject = what.clone();
        let replies = self
            .change(
                "link get",
                &|| subject.clone(),
                RouteNetlinkMessage::GetLink(msg),
                0,
            )
            .map_err(not_found_as(|| what.clone()))?;
        replies
            .iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .ok_or(Error::NotFound { what })
    }

    /// The link named `name` (`ip link show NAME`); [`Error::NotFound`] if none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Link> {
        validate_link_name(name)?;
        self.link_get(
            format!("link {name}"),
            link_msg(0, vec![LinkAttribute::IfName(name.to_string())]),
        )
    }

    /// The link with index `index`; [`Error::NotFound`] if none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Link> {
        self.link_get(format!("link index {index}"), link_msg(index, vec![]))
    }

    /// The link whose MAC is `mac` (an ENI showing up after attach); [`Error::NotFound`] if
    /// none. Needs a dump: the kernel has no lookup by address.
    pub fn link_by_mac(&mut self, mac: MacAddr) -> Result<Link> {
        self.link_list()?
            .into_iter()
            .find(|l| l.mac == Some(mac))
            .ok_or_else(|| Error::NotFound {
                what: format!("link with MAC {mac}"),
            })
    }

    fn link_set(&mut self, op: &'static str, index: u32, msg: LinkMessage) -> Result<()> {
        self.change(
            op,
            &|| format!("index {index}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
        .map_err(not_found_as(|| format!("link index {index}")))
        .map(drop)
    }

    /// `ip link set INDEX up`.
    pub fn link_set_up(&mut self, index: u32) -> Result<()> {
        let mut msg = link_msg(index, vec![]);
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.link_set("link set up", index, msg)
    }

    /// `ip link set INDEX down`.
    pub fn link_set_down(&mut self, index: u32) -> Result<()> {
        let mut msg = link_msg(index, vec![]);
        msg.header.flags = LinkFlags::empty();
        msg.header.change_mask = LinkFlags::Up;
        self.link_set("link set down", index, msg)
    }

    /// `ip link set INDEX mtu MTU`.
    pub fn link_set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.link_set(
            "link set mtu",
            index,
            link_msg(index, vec![LinkAttribute::Mtu(mtu)]),
        )
    }

    /// `ip link set INDEX address MAC`.
    pub fn link_set_mac(&mut self, index: u32, mac: MacAddr) -> Result<()> {
        self.link_set(
            "link set address",
            index,
            link_msg(index, vec![LinkAttribute::Address(mac.0.to_vec())]),
        )
    }

    /// `ip link set INDEX name NAME` (kernels before 6.8 refuse with `EBUSY` while it is up).
    pub fn link_rename(&mut self, index: u32, name: &str) -> Result<()> {
        validate_link_name(name)?;
        self.link_set(
            "link set name",
            index,
            link_msg(index, vec![LinkAttribute::IfName(name.to_string())]),
        )
    }

    /// `ip link set INDEX netns FD [name NAME]`: moves the link into the namespace `netns`
    /// refers to, renaming it in the same request when `new_name` is given (so there is no
    /// moment where the name clashes in the target). Its index may change in the target.
    pub fn link_set_netns(
        &mut self,
        index: u32,
        netns: BorrowedFd<'_>,
        new_name: Option<&str>,
    ) -> Result<()> {
        let mut attrs = vec![LinkAttribute::NetNsFd(netns.as_raw_fd())];
        if let Some(name) = new_name {
            validate_link_name(name)?;
            attrs.push(LinkAttribute::IfName(name.to_string()));
        }
        self.link_set("link set netns", index, link_msg(index, attrs))
    }

    /// `ip link del INDEX` (deleting a veth end deletes its peer too).
    pub fn link_del(&mut self, index: u32) -> Result<()> {
        self.change(
            "link del",
            &|| format!("index {index}"),
            RouteNetlinkMessage::DelLink(link_msg(index, vec![])),
            0,
        )
        .map_err(not_found_as(|| format!("link index {index}")))
        .map(drop)
    }

    /// `ip link add NAME type veth peer name PEER [netns FD]`; returns the local end's index.
    pub fn veth_add(&mut self, spec: &VethAdd<'_>) -> Result<u32> {
        validate_link_name(&spec.name)?;
        validate_link_name(&spec.peer_name)?;
        self.change(
            "link add veth",
            &|| format!("{} peer {}", spec.name, spec.peer_name),
            RouteNetlinkMessage::NewLink(veth_message(spec)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| map_unsupported("veth", e))?;
        Ok(self.link_by_name(&spec.name)?.index)
    }

    /// `ip link add NAME link PARENT type ipvlan mode MODE [netns FD]`.
    /// [`Error::Unsupported`] `{ kind: "ipvlan" }` when the kernel has no ipvlan.
    pub fn ipvlan_add(&mut self, spec: &IpvlanAdd<'_>) -> Result<()> {
        validate_link_name(&spec.name)?;
        self.change(
            "link add ipvlan",
            &|| format!("{} parent {}", spec.name, spec.parent),
            RouteNetlinkMessage::NewLink(ipvlan_message(spec)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| map_unsupported("ipvlan", e))
        .map(drop)
    }

    /// `ip link add NAME link PARENT type macvlan mode MODE [netns FD]`.
    /// [`Error::Unsupported`] `{ kind: "macvlan" }` when the kernel has no macvlan.
    pub fn macvlan_add(&mut self, spec: &MacvlanAdd<'_>) -> Result<()> {
        validate_link_name(&spec.name)?;
        self.change(
            "link add macvlan",
            &|| format!("{} parent {}", spec.name, spec.parent),
            RouteNetlinkMessage::NewLink(macvlan_message(spec)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| map_unsupported("macvlan", e))
        .map(drop)
    }

    /// `ip link add NAME type KIND` with no options (bridge, dummy, ...): the probe behind
    /// [`crate::kernel_supports`]. [`Error::Unsupported`] when the kernel lacks the kind.
    pub fn link_add_plain(&mut self, name: &str, kind: &LinkKind) -> Result<()> {
        validate_link_name(name)?;
        let kind_name: &'static str = static_kind_name(kind);
        self.change(
            "link add",
            &|| format!("{name} type {kind}"),
            RouteNetlinkMessage::NewLink(link_msg(
                0,
                vec![
                    LinkAttribute::IfName(name.to_string()),
                    info(kind.to_info(), None),
                ],
            )),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| map_unsupported(kind_name, e))
        .map(drop)
    }
}

fn static_kind_name(kind: &LinkKind) -> &'static str {
    match kind {
        LinkKind::Veth => "veth",
        LinkKind::Ipvlan => "ipvlan",
        LinkKind::Macvlan => "macvlan",
        LinkKind::Bridge => "bridge",
        LinkKind::Vxlan => "vxlan",
        LinkKind::Dummy => "dummy",
        LinkKind::Other(_) => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Parseable};

    #[test]
    fn mac_round_trip() {
        let mac: MacAddr = "02:AB:00:0a:ff:01".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0xab, 0x00, 0x0a, 0xff, 0x01]);
        assert_eq!(mac.to_string(), "02:ab:00:0a:ff:01");
        assert!("02:ab:00".parse::<MacAddr>().is_err());
        assert!("02:ab:00:0a:ff:01:02".parse::<MacAddr>().is_err());
        assert!("zz:ab:00:0a:ff:01".parse::<MacAddr>().is_err());
    }

    #[test]
    fn link_names_are_checked() {
        assert!(validate_link_name("eth0").is_ok());
        assert!(validate_link_name("veth1234567890a").is_ok());
        for bad in ["", "veth1234567890ab", "a/b", "a b", "a:b", ".."] {
            assert!(validate_link_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn veth_message_carries_peer_with_its_options() {
        let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let spec = VethAdd::new("h0", "p0").mtu(1400).peer_mac(mac);
        let msg = veth_message(&spec);
        // Round trip through bytes: what we emit, the kernel's parser would read.
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        let parsed = LinkMessage::parse(buf.as_slice()).unwrap();
        assert_eq!(parsed, msg);
        let peer = parsed
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .expect("peer");
        assert!(peer
            .attributes
            .contains(&LinkAttribute::IfName("p0".into())));
        assert!(peer.attributes.contains(&LinkAttribute::Mtu(1400)));
        assert!(peer
            .attributes
            .contains(&LinkAttribute::Address(mac.0.to_vec())));
    }

    #[test]
    fn ipvlan_message_names_parent_and_mode() {
        let msg = ipvlan_message(&IpvlanAdd::new("ipv0", 7, IpvlanMode::L3S));
        assert!(msg.attributes.contains(&LinkAttribute::Link(7)));
        assert!(msg.attributes.contains(&LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::IpVlan),
            LinkInfo::Data(InfoData::IpVlan(vec![InfoIpVlan::Mode(IpVlanMode::L3S)])),
        ])));
    }

    #[test]
    fn unknown_device_type_becomes_unsupported() {
        let err = Error::Netlink {
            op: "link add ipvlan",
            subject: "x".into(),
            errno: libc::EOPNOTSUPP,
            message: "Unknown device type".into(),
        };
        assert!(matches!(
            map_unsupported("ipvlan", err),
            Error::Unsupported { kind: "ipvlan" }
        ));
        let other = Error::Netlink {
            op: "link add ipvlan",
            subject: "x".into(),
            errno: libc::EOPNOTSUPP,
            message: "Master is either lo or non-ether device".into(),
        };
        assert!(matches!(
            map_unsupported("ipvlan", other),
            Error::Netlink { .. }
        ));
    }

    #[test]
    fn parses_link_attributes() {
        let mut msg = link_msg(
            5,
            vec![
                LinkAttribute::IfName("veth0".into()),
                LinkAttribute::Mtu(9001),
                LinkAttribute::Address(vec![2, 0, 0, 0, 0, 9]),
                LinkAttribute::Link(6),
                LinkAttribute::LinkNetNsId(1),
                LinkAttribute::Controller(3),
                info(InfoKind::Veth, None),
            ],
        );
        msg.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
        let link = Link::from_message(&msg);
        assert_eq!(
            link,
            Link {
                index: 5,
                name: "veth0".into(),
                mac: Some(MacAddr([2, 0, 0, 0, 0, 9])),
                mtu: 9001,
                up: true,
                lower_up: true,
                kind: Some(LinkKind::Veth),
                master: Some(3),
                parent: Some(6),
                link_netnsid: Some(1),
            }
        );
    }
}
