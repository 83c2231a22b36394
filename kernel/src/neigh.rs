//! IPv4 neighbour entries (`ip -4 neigh`): permanent entries and proxy entries.
//!
//! Owns the translation between [`Neigh`] and `RTM_*NEIGH` messages. The veth datapath
//! uses permanent entries so the host side never has to ARP for a pod's gateway.

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::handle::Handle;
use crate::link::MacAddr;

/// State of a neighbour entry (`nud`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NeighState {
    /// Never expires, never re-verified.
    #[default]
    Permanent,
    /// Confirmed recently.
    Reachable,
    /// Needs re-verification before use.
    Stale,
    /// No ARP needed on this device.
    Noarp,
    /// Resolution failed.
    Failed,
    /// Any other state bits.
    Other(u16),
}

impl From<NeighState> for u16 {
    fn from(s: NeighState) -> u16 {
        match s {
            NeighState::Permanent => 0x80,
            NeighState::Reachable => 0x02,
            NeighState::Stale => 0x04,
            NeighState::Noarp => 0x40,
            NeighState::Failed => 0x20,
            NeighState::Other(v) => v,
        }
    }
}

impl From<u16> for NeighState {
    fn from(v: u16) -> NeighState {
        match v {
            0x80 => NeighState::Permanent,
            0x02 => NeighState::Reachable,
            0x04 => NeighState::Stale,
            0x40 => NeighState::Noarp,
            0x20 => NeighState::Failed,
            v => NeighState::Other(v),
        }
    }
}

/// A neighbour entry (`ip neigh add IP lladdr MAC dev INDEX nud permanent`), or a proxy
/// entry (`ip neigh add proxy IP dev INDEX`: answer ARP for `ip` on that link).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Neigh {
    /// Link index.
    pub index: u32,
    /// The neighbour's IPv4 address.
    pub ip: Ipv4Addr,
    /// Its MAC (`None` for proxy entries).
    pub mac: Option<MacAddr>,
    /// A proxy-ARP entry (`NTF_PROXY`).
    pub proxy: bool,
    /// State (`Permanent` for entries we add).
    pub state: NeighState,
}

impl Neigh {
    /// A permanent entry `ip` -> `mac` on link `index`.
    pub fn permanent(index: u32, ip: Ipv4Addr, mac: MacAddr) -> Self {
        Neigh {
            index,
            ip,
            mac: Some(mac),
            proxy: false,
            state: NeighState::Permanent,
        }
    }

    /// A proxy entry: the kernel answers ARP requests for `ip` arriving on link `index`.
    pub fn proxy(index: u32, ip: Ipv4Addr) -> Self {
        Neigh {
            index,
            ip,
            mac: None,
            proxy: true,
            state: NeighState::Permanent,
        }
    }

    pub(crate) fn describe(&self) -> String {
        let proxy = if self.proxy { "proxy " } else { "" };
        format!("{proxy}{} dev index {}", self.ip, self.index)
    }

    pub(crate) fn to_message(self) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = self.index;
        msg.header.state = NeighbourState::from(u16::from(self.state));
        if self.proxy {
            msg.header.flags = NeighbourFlags::Proxy;
        }
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                self.ip,
            )));
        if let Some(mac) = self.mac {
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        }
        msg
    }

    pub(crate) fn from_message(msg: &NeighbourMessage) -> Option<Self> {
        if msg.header.family != AddressFamily::Inet {
            return None;
        }
        let mut ip = None;
        let mut mac = None;
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
                NeighbourAttribute::LinkLayerAddress(b) => {
                    mac = <[u8; 6]>::try_from(b.as_slice()).ok().map(MacAddr)
                }
                _ => {}
            }
        }
        Some(Neigh {
            index: msg.header.ifindex,
            ip: ip?,
            mac,
            proxy: msg.header.flags.contains(NeighbourFlags::Proxy),
            state: NeighState::from(u16::from(msg.header.state)),
        })
    }
}

impl Handle {
    /// `ip neigh add`: `EEXIST` if an entry for the address exists on the link.
    pub fn neigh_add(&mut self, neigh: &Neigh) -> Result<()> {
        self.change(
            "neigh add",
            &|| neigh.describe(),
            RouteNetlinkMessage::NewNeighbour(neigh.to_message()),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// `ip neigh replace`: adds the entry or overwrites the existing one.
    pub fn neigh_replace(&mut self, neigh: &Neigh) -> Result<()> {
        self.change(
            "neigh replace",
            &|| neigh.describe(),
            RouteNetlinkMessage::NewNeighbour(neigh.to_message()),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// `ip neigh del`: `ENOENT` ([`crate::Error::is_not_found`]) if there is none.
    pub fn neigh_del(&mut self, neigh: &Neigh) -> Result<()> {
        self.change(
            "neigh del",
            &|| neigh.describe(),
            RouteNetlinkMessage::DelNeighbour(neigh.to_message()),
            0,
        )
        .map(drop)
    }

    /// `ip -4 neigh show [proxy] [dev INDEX]`: ordinary entries, or proxy entries when
    /// `proxy` is true (the kernel keeps them in a separate table).
    pub fn neigh_list(&mut self, index: Option<u32>, proxy: bool) -> Result<Vec<Neigh>> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Inet;
        if proxy {
            req.header.flags = NeighbourFlags::Proxy;
        }
        let replies = self.dump("neigh list", RouteNetlinkMessage::GetNeighbour(req))?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Neigh::from_message(n),
                _ => None,
            })
            .filter(|n| n.proxy == proxy && index.is_none_or(|i| n.index == i))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neigh_message_round_trip() {
        let n = Neigh::permanent(
            3,
            "169.254.1.1".parse().unwrap(),
            MacAddr([2, 0, 0, 0, 0, 1]),
        );
        assert_eq!(Neigh::from_message(&n.to_message()), Some(n));
        let p = Neigh::proxy(3, "10.0.0.9".parse().unwrap());
        let msg = p.to_message();
        assert!(msg.header.flags.contains(NeighbourFlags::Proxy));
        assert_eq!(Neigh::from_message(&msg), Some(p));
    }
}
