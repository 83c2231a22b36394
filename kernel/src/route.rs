//! IPv4 routes (`ip -4 route`): add, replace, delete, list per table; and the [`Scope`]
//! shared with addresses.
//!
//! Owns the translation between [`Route`] and `RTM_*ROUTE` messages. It does not know
//! which table belongs to which ENI: callers pass table ids.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::handle::Handle;

/// The main routing table (`table main`).
pub const TABLE_MAIN: u32 = 254;
/// The local routing table (`table local`).
pub const TABLE_LOCAL: u32 = 255;

/// Scope of a route or an address (`scope global|link|host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scope {
    /// `global` / `universe`: valid anywhere.
    #[default]
    Universe,
    /// `site`.
    Site,
    /// `link`: valid on the link only (directly connected).
    Link,
    /// `host`: valid on this host only.
    Host,
    /// `nowhere`.
    Nowhere,
    /// Any other value.
    Other(u8),
}

impl From<Scope> for u8 {
    fn from(s: Scope) -> u8 {
        match s {
            Scope::Universe => 0,
            Scope::Site => 200,
            Scope::Link => 253,
            Scope::Host => 254,
            Scope::Nowhere => 255,
            Scope::Other(v) => v,
        }
    }
}

impl From<u8> for Scope {
    fn from(v: u8) -> Scope {
        match v {
            0 => Scope::Universe,
            200 => Scope::Site,
            253 => Scope::Link,
            254 => Scope::Host,
            255 => Scope::Nowhere,
            v => Scope::Other(v),
        }
    }
}

/// Who installed a route (`proto kernel|boot|static|...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// `unspec`.
    Unspec,
    /// `kernel`: installed by the kernel (for an address's prefix).
    Kernel,
    /// `boot`: what `ip route add` uses by default.
    #[default]
    Boot,
    /// `static`.
    Static,
    /// `dhcp`.
    Dhcp,
    /// Any other value.
    Other(u8),
}

impl From<Protocol> for u8 {
    fn from(p: Protocol) -> u8 {
        match p {
            Protocol::Unspec => 0,
            Protocol::Kernel => 2,
            Protocol::Boot => 3,
            Protocol::Static => 4,
            Protocol::Dhcp => 16,
            Protocol::Other(v) => v,
        }
    }
}

impl From<u8> for Protocol {
    fn from(v: u8) -> Protocol {
        match v {
            0 => Protocol::Unspec,
            2 => Protocol::Kernel,
            3 => Protocol::Boot,
            4 => Protocol::Static,
            16 => Protocol::Dhcp,
            v => Protocol::Other(v),
        }
    }
}

/// Type of a route (`ip route add TYPE ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RouteKind {
    /// A gateway or direct route.
    #[default]
    Unicast,
    /// Accept locally (the `local` table).
    Local,
    /// Broadcast.
    Broadcast,
    /// Silently drop.
    Blackhole,
    /// Answer "host unreachable".
    Unreachable,
    /// Answer "administratively prohibited".
    Prohibit,
    /// Any other value.
    Other(u8),
}

impl From<RouteKind> for u8 {
    fn from(k: RouteKind) -> u8 {
        match k {
            RouteKind::Unicast => 1,
            RouteKind::Local => 2,
            RouteKind::Broadcast => 3,
            RouteKind::Blackhole => 6,
            RouteKind::Unreachable => 7,
            RouteKind::Prohibit => 8,
            RouteKind::Other(v) => v,
        }
    }
}

impl From<u8> for RouteKind {
    fn from(v: u8) -> RouteKind {
        match v {
            1 => RouteKind::Unicast,
            2 => RouteKind::Local,
            3 => RouteKind::Broadcast,
            6 => RouteKind::Blackhole,
            7 => RouteKind::Unreachable,
            8 => RouteKind::Prohibit,
            v => RouteKind::Other(v),
        }
    }
}

/// An IPv4 route (`ip route add [TYPE] DST|default [via GW] [dev OIF] [src SRC]
/// [metric M] [scope S] [proto P] [onlink] table T`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// Routing table id ([`TABLE_MAIN`], or one per ENI).
    pub table: u32,
    /// Destination prefix; `None` is the default route (`0.0.0.0/0`).
    pub dst: Option<Ipv4Net>,
    /// Next-hop gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Scope: `Link` for directly connected destinations, `Universe` via a gateway.
    pub scope: Scope,
    /// Protocol tag (default `Boot`, as `ip route` uses).
    pub protocol: Protocol,
    /// `onlink`: trust that the gateway is on the link even without a covering prefix.
    pub onlink: bool,
    /// Preferred source address (`src`).
    pub prefsrc: Option<Ipv4Addr>,
    /// Metric (`metric` / priority).
    pub metric: Option<u32>,
    /// Route type (default `Unicast`).
    pub kind: RouteKind,
}

impl Route {
    /// A default route in `table`, with nothing else set yet.
    pub fn new(table: u32) -> Self {
        Route {
            table,
            dst: None,
            gateway: None,
            oif: None,
            scope: Scope::Universe,
            protocol: Protocol::Boot,
            onlink: false,
            prefsrc: None,
            metric: None,
            kind: RouteKind::Unicast,
        }
    }
    /// Sets the destination prefix (normalised: host bits cleared).
    pub fn dst(mut self, dst: Ipv4Net) -> Self {
        self.dst = Some(dst.trunc());
        self
    }
    /// Sets the gateway.
    pub fn gateway(mut self, gw: Ipv4Addr) -> Self {
        self.gateway = Some(gw);
        self
    }
    /// Sets the output interface.
    pub fn oif(mut self, index: u32) -> Self {
        self.oif = Some(index);
        self
    }
    /// Sets the scope.
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }
    /// Sets the protocol tag.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }
    /// Sets the `onlink` flag.
    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }
    /// Sets the preferred source address.
    pub fn prefsrc(mut self, src: Ipv4Addr) -> Self {
        self.prefsrc = Some(src);
        self
    }
    /// Sets the metric.
    pub fn metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }
    /// Sets the route type.
    pub fn kind(mut self, kind: RouteKind) -> Self {
        self.kind = kind;
        self
    }

    /// The destination as a prefix (`0.0.0.0/0` for the default route).
    pub fn dst_or_default(&self) -> Ipv4Net {
        self.dst.unwrap_or_default()
    }

    pub(crate) fn describe(&self) -> String {
        let mut s = match self.dst {
            Some(d) => d.to_string(),
            None => "default".into(),
        };
        if let Some(gw) = self.gateway {
            s += &format!(" via {gw}");
        }
        if let Some(oif) = self.oif {
            s += &format!(" dev index {oif}");
        }
        s + &format!(" table {}", self.table)
    }

    /// The message for add/replace (everything set), or for delete (`for_delete`: scope,
    /// protocol and type left as wildcards, as `ip route del` does).
    pub(crate) fn to_message(self, for_delete: bool) -> RouteMessage {
        let mut msg = RouteMessage::default();
        let dst = self.dst_or_default();
        msg.header = RouteHeader {
            address_family: AddressFamily::Inet,
            destination_prefix_length: dst.prefix_len(),
            table: u8::try_from(self.table).unwrap_or(0),
            ..RouteHeader::default()
        };
        if for_delete {
            msg.header.scope = RouteScope::NoWhere;
            msg.header.protocol = RouteProtocol::Unspec;
            msg.header.kind = RouteType::Unspec;
        } else {
            msg.header.scope = RouteScope::from(u8::from(self.scope));
            msg.header.protocol = RouteProtocol::from(u8::from(self.protocol));
            msg.header.kind = RouteType::from(u8::from(self.kind));
        }
        if self.onlink {
            msg.header.flags = RouteFlags::Onlink;
        }
        let a = &mut msg.attributes;
        a.push(RouteAttribute::Table(self.table));
        if self.dst.is_some() {
            a.push(RouteAttribute::Destination(RouteAddress::Inet(dst.addr())));
        }
        if let Some(gw) = self.gateway {
            a.push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = self.oif {
            a.push(RouteAttribute::Oif(oif));
        }
        if let Some(src) = self.prefsrc {
            a.push(RouteAttribute::PrefSource(RouteAddress::Inet(src)));
        }
        if let Some(m) = self.metric {
            a.push(RouteAttribute::Priority(m));
        }
        msg
    }

    pub(crate) fn from_message(msg: &RouteMessage) -> Option<Self> {
        if msg.header.address_family != AddressFamily::Inet {
            return None;
        }
        let mut route = Route::new(u32::from(msg.header.table));
        route.scope = Scope::from(u8::from(msg.header.scope));
        route.protocol = Protocol::from(u8::from(msg.header.protocol));
        route.kind = RouteKind::from(u8::from(msg.header.kind));
        route.onlink = msg.header.flags.contains(RouteFlags::Onlink);
        let mut dst_addr = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Table(t) => route.table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst_addr = Some(*ip),
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => route.gateway = Some(*ip),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => route.prefsrc = Some(*ip),
                RouteAttribute::Priority(m) => route.metric = Some(*m),
                _ => {}
            }
        }
        let len = msg.header.destination_prefix_length;
        route.dst = match (dst_addr, len) {
            (None, 0) => None,
            (addr, len) => Some(Ipv4Net::new(addr.unwrap_or(Ipv4Addr::UNSPECIFIED), len).ok()?),
        };
        Some(route)
    }
}

impl Handle {
    /// `ip route add`: `EEXIST` ([`crate::Error::is_exists`]) if the route is there.
    pub fn route_add(&mut self, route: &Route) -> Result<()> {
        self.change(
            "route add",
            &|| route.describe(),
            RouteNetlinkMessage::NewRoute(route.to_message(false)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// `ip route replace`: adds the route or replaces the one with the same destination,
    /// table and metric.
    pub fn route_replace(&mut self, route: &Route) -> Result<()> {
        self.change(
            "route replace",
            &|| route.describe(),
            RouteNetlinkMessage::NewRoute(route.to_message(false)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// `ip route del`: `ESRCH` ([`crate::Error::is_not_found`]) if no route matches.
    pub fn route_del(&mut self, route: &Route) -> Result<()> {
        self.change(
            "route del",
            &|| route.describe(),
            RouteNetlinkMessage::DelRoute(route.to_message(true)),
            0,
        )
        .map(drop)
    }

    /// `ip -4 route show table TABLE` (all route types, including `local`/`broadcast` in
    /// the local table).
    pub fn route_list(&mut self, table: u32) -> Result<Vec<Route>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let replies = self.dump("route list", RouteNetlinkMessage::GetRoute(req))?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Route::from_message(r),
                _ => None,
            })
            .filter(|r| r.table == table)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_message_round_trip() {
        let route = Route::new(1001)
            .dst("10.2.0.0/16".parse().unwrap())
            .gateway("10.0.0.1".parse().unwrap())
            .oif(3)
            .onlink()
            .prefsrc("10.0.0.5".parse().unwrap())
            .metric(100)
            .protocol(Protocol::Static);
        let msg = route.to_message(false);
        // Tables above 255 travel in RTA_TABLE only.
        assert_eq!(msg.header.table, 0);
        assert_eq!(Route::from_message(&msg), Some(route));
    }

    #[test]
    fn default_route_has_no_destination() {
        let route = Route::new(TABLE_MAIN).oif(2).scope(Scope::Link);
        let msg = route.to_message(false);
        assert_eq!(msg.header.destination_prefix_length, 0);
        assert!(!msg
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        assert_eq!(Route::from_message(&msg), Some(route));
    }

    #[test]
    fn delete_message_leaves_scope_and_protocol_wild() {
        let msg = Route::new(100).oif(2).to_message(true);
        assert_eq!(msg.header.scope, RouteScope::NoWhere);
        assert_eq!(msg.header.protocol, RouteProtocol::Unspec);
    }

    #[test]
    fn dst_is_normalised() {
        let r = Route::new(1).dst("10.0.0.7/24".parse().unwrap());
        assert_eq!(r.dst, Some("10.0.0.0/24".parse().unwrap()));
    }
}
