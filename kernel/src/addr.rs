//! IPv4 addresses (`ip -4 addr`): add, replace, delete, list.
//!
//! Owns the translation between [`Addr`] and `RTM_*ADDR` messages. IPv6 is out of scope.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::handle::Handle;
use crate::route::Scope;

/// An IPv4 address on a link (`ip addr add ADDRESS/PREFIX [broadcast B] [scope S] dev D`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Addr {
    /// Index of the link holding the address.
    pub index: u32,
    /// The address and its prefix length (`10.0.0.5/24`).
    pub address: Ipv4Net,
    /// Broadcast address, if any.
    pub broadcast: Option<Ipv4Addr>,
    /// Scope (`Universe` for normal addresses).
    pub scope: Scope,
}

impl Addr {
    /// `address` on link `index`, universe scope, no broadcast.
    pub fn new(index: u32, address: Ipv4Net) -> Self {
        Addr {
            index,
            address,
            broadcast: None,
            scope: Scope::Universe,
        }
    }
    /// Sets the broadcast address.
    pub fn broadcast(mut self, broadcast: Ipv4Addr) -> Self {
        self.broadcast = Some(broadcast);
        self
    }
    /// Sets the scope.
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    fn describe(&self) -> String {
        format!("{} dev index {}", self.address, self.index)
    }

    pub(crate) fn to_message(self) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = self.address.prefix_len();
        msg.header.scope = AddressScope::from(u8::from(self.scope));
        msg.header.index = self.index;
        let ip = IpAddr::V4(self.address.addr());
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        if let Some(b) = self.broadcast {
            msg.attributes.push(AddressAttribute::Broadcast(b));
        }
        msg
    }

    pub(crate) fn from_message(msg: &AddressMessage) -> Option<Self> {
        if msg.header.family != AddressFamily::Inet {
            return None;
        }
        let mut local = None;
        let mut address = None;
        let mut broadcast = None;
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
                AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
                AddressAttribute::Broadcast(ip) => broadcast = Some(*ip),
                _ => {}
            }
        }
        let ip = local.or(address)?;
        Some(Addr {
            index: msg.header.index,
            address: Ipv4Net::new(ip, msg.header.prefix_len).ok()?,
            broadcast,
            scope: Scope::from(u8::from(msg.header.scope)),
        })
    }
}

impl Handle {
    /// `ip addr add`: fails with `EEXIST` ([`crate::Error::is_exists`]) if the address is there.
    pub fn addr_add(&mut self, addr: &Addr) -> Result<()> {
        self.change(
            "addr add",
            &|| addr.describe(),
            RouteNetlinkMessage::NewAddress(addr.to_message()),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// `ip addr replace`: adds the address, or updates it (broadcast, scope) if present.
    pub fn addr_replace(&mut self, addr: &Addr) -> Result<()> {
        self.change(
            "addr replace",
            &|| addr.describe(),
            RouteNetlinkMessage::NewAddress(addr.to_message()),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// `ip addr del`: `EADDRNOTAVAIL` ([`crate::Error::is_not_found`]) if it is not there.
    pub fn addr_del(&mut self, addr: &Addr) -> Result<()> {
        self.change(
            "addr del",
            &|| addr.describe(),
            RouteNetlinkMessage::DelAddress(addr.to_message()),
            0,
        )
        .map(drop)
    }

    /// `ip -4 addr show [dev INDEX]`.
    pub fn addr_list(&mut self, index: Option<u32>) -> Result<Vec<Addr>> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let replies = self.dump("addr list", RouteNetlinkMessage::GetAddress(req))?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Addr::from_message(a),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_message_round_trip() {
        let addr = Addr::new(4, "10.1.2.3/24".parse().unwrap())
            .broadcast("10.1.2.255".parse().unwrap())
            .scope(Scope::Link);
        let msg = addr.to_message();
        assert_eq!(msg.header.prefix_len, 24);
        assert_eq!(msg.header.index, 4);
        assert_eq!(Addr::from_message(&msg), Some(addr));
    }
}
