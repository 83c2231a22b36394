//! The `#[repr(C)]` key and value types of the socket-LB maps, byte for byte the structs of
//! `src/bpf/socket_lb.bpf.c`, with explicit padding fields (always zero) so no byte of a key
//! is left undefined. This module owns the layouts and the `Pod` impls; it does no I/O.
//!
//! Addresses and ports are stored in network byte order, as the kernel hands them to the
//! hooks: an address is `u32::from_ne_bytes(ip.octets())`, a port is `port.to_be()`; an
//! IPv6 address is its 16 octets as four such words ([`ip6_to_map`]).

use std::net::{Ipv4Addr, Ipv6Addr};

/// Pinned name of the services map: [`SvcKey`] -> [`SvcVal`].
pub const SERVICES_MAP: &str = "lb4_services";
/// Pinned name of the backends map: [`BeKey`] -> [`BeVal`].
pub const BACKENDS_MAP: &str = "lb4_backends";
/// Pinned name of the session-affinity LRU map: [`AffKey`] -> [`AffVal`].
pub const AFFINITY_MAP: &str = "lb4_affinity";
/// Pinned name of the reverse-translation LRU map: [`RevKey`] -> [`SvcKey`].
pub const REV_NAT_MAP: &str = "lb4_rev_nat";
/// Pinned name of the IPv6 services map: [`Svc6Key`] -> [`SvcVal`].
pub const SERVICES6_MAP: &str = "lb6_services";
/// Pinned name of the IPv6 backends map: [`BeKey`] -> [`Be6Val`].
pub const BACKENDS6_MAP: &str = "lb6_backends";
/// Pinned name of the IPv6 session-affinity LRU map: [`AffKey`] -> [`Aff6Val`].
pub const AFFINITY6_MAP: &str = "lb6_affinity";
/// Pinned name of the IPv6 reverse-translation LRU map: [`Rev6Key`] -> [`Svc6Key`].
pub const REV_NAT6_MAP: &str = "lb6_rev_nat";
/// All maps of the socket-LB object, in a fixed order (IPv4 tables, then IPv6 ones).
pub const ALL_MAPS: [&str; 8] = [
    SERVICES_MAP,
    BACKENDS_MAP,
    AFFINITY_MAP,
    REV_NAT_MAP,
    SERVICES6_MAP,
    BACKENDS6_MAP,
    AFFINITY6_MAP,
    REV_NAT6_MAP,
];

/// `BeVal::state` of a backend that takes new connections.
pub const BACKEND_ACTIVE: u8 = 1;
/// `BeVal::state` of a backend that keeps its connections but takes no new ones.
pub const BACKEND_TERMINATING: u8 = 2;

/// Largest number of backend slots one service may have (`backend_count` is a `u16`).
pub const MAX_BACKENDS_PER_SERVICE: usize = u16::MAX as usize;

/// Converts an address to the map representation (network byte order in memory).
pub fn ip_to_map(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// Converts the map representation back to an address.
pub fn ip_from_map(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

/// Converts an IPv6 address to the map representation (`struct ip6`: its 16 octets in
/// network byte order, read as four native-endian words).
pub fn ip6_to_map(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// Converts the IPv6 map representation back to an address.
pub fn ip6_from_map(raw: [u32; 4]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in raw.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// Converts a port to the map representation (network byte order in memory).
pub fn port_to_map(port: u16) -> u16 {
    port.to_be()
}

/// Converts the map representation back to a port.
pub fn port_from_map(raw: u16) -> u16 {
    u16::from_be(raw)
}

/// Key of `lb4_services` (and value of `lb4_rev_nat`): a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey {
    /// Virtual IP, network byte order.
    pub vip: u32,
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// Always zero.
    pub pad: u8,
}

/// Value of `lb4_services`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcVal {
    /// Service id, the first half of every backend key of this service.
    pub id: u32,
    /// Slots `[0, backend_count)` exist in `lb4_backends`.
    pub backend_count: u16,
    /// Slots `[0, active_count)` are active; `[active_count, backend_count)` terminating.
    pub active_count: u16,
    /// ClientIP session affinity timeout in seconds; 0 disables affinity.
    pub affinity_timeout_s: u32,
    /// Reserved, zero.
    pub flags: u32,
}

/// Key of `lb4_backends`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BeKey {
    /// The owning service's [`SvcVal::id`].
    pub svc_id: u32,
    /// Slot index.
    pub slot: u32,
}

/// Value of `lb4_backends`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BeVal {
    /// Backend address, network byte order.
    pub ip: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// [`BACKEND_ACTIVE`] or [`BACKEND_TERMINATING`].
    pub state: u8,
    /// Always zero.
    pub pad: u8,
}

/// Key of `lb4_affinity`: one client network namespace and one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffKey {
    /// `bpf_get_netns_cookie()` of the client socket.
    pub netns_cookie: u64,
    /// Service id.
    pub svc_id: u32,
    /// Always zero.
    pub pad: u32,
}

/// Value of `lb4_affinity`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffVal {
    /// `bpf_ktime_get_ns()` of the last use.
    pub last_used_ns: u64,
    /// Backend address chosen, network byte order.
    pub ip: u32,
    /// Backend port chosen, network byte order.
    pub port: u16,
    /// Slot the backend was in (checked against `ip`/`port` before reuse).
    pub slot: u16,
}

/// Key of `lb4_rev_nat`: one socket talking to one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevKey {
    /// `bpf_get_socket_cookie()`.
    pub cookie: u64,
    /// Backend address, network byte order.
    pub backend_ip: u32,
    /// Backend port, network byte order.
    pub backend_port: u16,
    /// Always zero.
    pub pad: u16,
}

/// Key of `lb6_services` (and value of `lb6_rev_nat`): an IPv6 frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Svc6Key {
    /// Virtual IP ([`ip6_to_map`]).
    pub vip: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// Always zero.
    pub pad: u8,
}

/// Value of `lb6_backends` (keys are [`BeKey`]; service ids are one space for both
/// families).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Be6Val {
    /// Backend address ([`ip6_to_map`]).
    pub ip: [u32; 4],
    /// Backend port, network byte order.
    pub port: u16,
    /// [`BACKEND_ACTIVE`] or [`BACKEND_TERMINATING`].
    pub state: u8,
    /// Always zero.
    pub pad: u8,
}

/// Value of `lb6_affinity` (keys are [`AffKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aff6Val {
    /// `bpf_ktime_get_ns()` of the last use.
    pub last_used_ns: u64,
    /// Backend address chosen ([`ip6_to_map`]).
    pub ip: [u32; 4],
    /// Backend port chosen, network byte order.
    pub port: u16,
    /// Slot the backend was in.
    pub slot: u16,
    /// Always zero.
    pub pad: u32,
}

/// Key of `lb6_rev_nat`: one socket talking to one IPv6 backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rev6Key {
    /// `bpf_get_socket_cookie()`.
    pub cookie: u64,
    /// Backend address ([`ip6_to_map`]).
    pub backend_ip: [u32; 4],
    /// Backend port, network byte order.
    pub backend_port: u16,
    /// Always zero.
    pub pad: u16,
    /// Always zero.
    pub pad2: u32,
}

/// Pinned name of the per-packet frontends map: [`SvcKey`] -> [`NpFrontendVal`]. A frontend
/// listed here is served by the tc programs of `src/bpf/nodeport.bpf.c` for packets arriving
/// on the node's links; its backends are those of the same key in [`SERVICES_MAP`].
pub const NP_FRONTENDS_MAP: &str = "np4_frontends";
/// Pinned name of the node-links map: [`NpLinkKey`] -> [`NpLinkVal`] (links the tc programs
/// are attached to, with the node address used to SNAT through each).
pub const NP_LINKS_MAP: &str = "np4_links";
/// Pinned name of the per-packet connection-tracking LRU map: [`CtKey`] -> [`CtVal`].
pub const NP_CT_MAP: &str = "np4_ct";
/// Pinned name of the per-packet ClientIP affinity LRU map: [`NpAffKey`] -> [`AffVal`].
pub const NP_AFFINITY_MAP: &str = "np4_affinity";
/// The maps only the per-packet (NodePort) object has, in a fixed order.
pub const NP_OWN_MAPS: [&str; 4] = [NP_FRONTENDS_MAP, NP_LINKS_MAP, NP_CT_MAP, NP_AFFINITY_MAP];
/// Every map of the per-packet object: the shared services and backends maps, then its own.
pub const NP_ALL_MAPS: [&str; 6] = [
    SERVICES_MAP,
    BACKENDS_MAP,
    NP_FRONTENDS_MAP,
    NP_LINKS_MAP,
    NP_CT_MAP,
    NP_AFFINITY_MAP,
];

/// `NpFrontendVal::flags`: `externalTrafficPolicy: Local` (only backends behind this node,
/// client address kept). Without it: `Cluster` (any backend; SNAT for remote ones).
pub const FE_F_LOCAL: u32 = 1;
/// `NpLinkVal::flags`: the ingress program is attached.
pub const LINK_F_INGRESS: u32 = 1;
/// `NpLinkVal::flags`: the egress program is attached.
pub const LINK_F_EGRESS: u32 = 2;
/// `CtVal::flags`: entry for the client -> frontend direction.
pub const CT_F_FORWARD: u8 = 1;
/// `CtVal::flags`: entry for the backend -> client (or node) direction.
pub const CT_F_REPLY: u8 = 2;
/// `CtVal::flags`: the client was SNATed to a node address.
pub const CT_F_SNAT: u8 = 4;
/// Lowest source port the per-packet path SNATs to (above Linux's default ephemeral range,
/// `ip_local_port_range` 32768-60999, so node sockets and SNAT never share a port).
pub const SNAT_PORT_MIN: u16 = 61000;
/// Highest SNAT source port.
pub const SNAT_PORT_MAX: u16 = 65535;

/// Value of `np4_frontends`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NpFrontendVal {
    /// [`FE_F_LOCAL`] or 0.
    pub flags: u32,
}

/// Key of `np4_links`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NpLinkKey {
    /// Interface index, in the network namespace the programs are attached in.
    pub ifindex: u32,
}

/// Value of `np4_links`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NpLinkVal {
    /// The node address clients are SNATed to when a backend is reached through this link,
    /// network byte order.
    pub node_ip: u32,
    /// [`LINK_F_INGRESS`] | [`LINK_F_EGRESS`].
    pub flags: u32,
}

/// Key of `np4_ct`: a packet's addresses, ports and protocol as it arrives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address, network byte order.
    pub saddr: u32,
    /// Destination address, network byte order.
    pub daddr: u32,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// Value of `np4_ct`: what the packet's addresses and ports become.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtVal {
    /// New source address, network byte order.
    pub saddr: u32,
    /// New destination address, network byte order.
    pub daddr: u32,
    /// New source port, network byte order.
    pub sport: u16,
    /// New destination port, network byte order.
    pub dport: u16,
    /// [`CT_F_FORWARD`] or [`CT_F_REPLY`], with [`CT_F_SNAT`].
    pub flags: u8,
    /// Always zero.
    pub pad: [u8; 3],
    /// Forward entries: the service id the backend was picked from (0 in reply entries).
    pub svc_id: u32,
    /// Forward entries: the backend's slot (a UDP flow whose slot no longer holds that
    /// backend is re-decided).
    pub slot: u32,
    /// `bpf_ktime_get_ns()` of the last packet (updated at most once a second).
    pub last_seen_ns: u64,
}

/// Key of `np4_affinity`: one client address and one service (the value is an [`AffVal`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NpAffKey {
    /// Client address, network byte order.
    pub client_ip: u32,
    /// Service id.
    pub svc_id: u32,
}

// SAFETY (all impls below): the types are `#[repr(C)]`, `Copy`, made only of integers, and
// their explicit `pad` fields leave no implicit padding, so every bit pattern is valid and
// every byte is initialised.
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for SvcKey {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for SvcVal {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for BeKey {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for BeVal {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for AffKey {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for AffVal {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for RevKey {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for Svc6Key {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for Be6Val {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for Aff6Val {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for Rev6Key {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for NpFrontendVal {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for NpLinkKey {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for NpLinkVal {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for CtKey {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for CtVal {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for NpAffKey {}

/// (key size, value size) of each map, as the C object declares them; checked against
/// pinned maps before they are adopted.
pub fn expected_sizes(map: &str) -> Option<(u32, u32)> {
    use std::mem::size_of;
    let s = |k: usize, v: usize| Some((k as u32, v as u32));
    match map {
        SERVICES_MAP => s(size_of::<SvcKey>(), size_of::<SvcVal>()),
        BACKENDS_MAP => s(size_of::<BeKey>(), size_of::<BeVal>()),
        AFFINITY_MAP => s(size_of::<AffKey>(), size_of::<AffVal>()),
        REV_NAT_MAP => s(size_of::<RevKey>(), size_of::<SvcKey>()),
        SERVICES6_MAP => s(size_of::<Svc6Key>(), size_of::<SvcVal>()),
        BACKENDS6_MAP => s(size_of::<BeKey>(), size_of::<Be6Val>()),
        AFFINITY6_MAP => s(size_of::<AffKey>(), size_of::<Aff6Val>()),
        REV_NAT6_MAP => s(size_of::<Rev6Key>(), size_of::<Svc6Key>()),
        NP_FRONTENDS_MAP => s(size_of::<SvcKey>(), size_of::<NpFrontendVal>()),
        NP_LINKS_MAP => s(size_of::<NpLinkKey>(), size_of::<NpLinkVal>()),
        NP_CT_MAP => s(size_of::<CtKey>(), size_of::<CtVal>()),
        NP_AFFINITY_MAP => s(size_of::<NpAffKey>(), size_of::<AffVal>()),
        MASQ_LINKS_MAP => s(size_of::<MasqLinkKey>(), size_of::<MasqLinkVal>()),
        // LPM trie keys: a u32 prefix length, then the address.
        MASQ_NONMASQ_MAP => s(8, size_of::<u32>()),
        MASQ_CT_MAP => s(size_of::<CtKey>(), size_of::<MasqCtVal>()),
        MASQ_STATS_MAP => s(size_of::<u32>(), size_of::<u64>()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, size_of};

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!((size_of::<SvcKey>(), align_of::<SvcKey>()), (8, 4));
        assert_eq!(size_of::<SvcVal>(), 16);
        assert_eq!(size_of::<BeKey>(), 8);
        assert_eq!(size_of::<BeVal>(), 8);
        assert_eq!((size_of::<AffKey>(), align_of::<AffKey>()), (16, 8));
        assert_eq!(size_of::<AffVal>(), 16);
        assert_eq!(size_of::<RevKey>(), 16);
        assert_eq!((size_of::<Svc6Key>(), align_of::<Svc6Key>()), (20, 4));
        assert_eq!(size_of::<Be6Val>(), 20);
        assert_eq!((size_of::<Aff6Val>(), align_of::<Aff6Val>()), (32, 8));
        assert_eq!((size_of::<Rev6Key>(), align_of::<Rev6Key>()), (32, 8));
        for m in ALL_MAPS {
            assert!(expected_sizes(m).is_some(), "{m}");
        }
    }

    #[test]
    fn nodeport_layouts_match_the_c_structs() {
        assert_eq!(size_of::<NpFrontendVal>(), 4);
        assert_eq!(size_of::<NpLinkKey>(), 4);
        assert_eq!(size_of::<NpLinkVal>(), 8);
        assert_eq!((size_of::<CtKey>(), align_of::<CtKey>()), (16, 4));
        assert_eq!((size_of::<CtVal>(), align_of::<CtVal>()), (32, 8));
        assert_eq!(size_of::<NpAffKey>(), 8);
        for m in NP_ALL_MAPS {
            assert!(expected_sizes(m).is_some(), "{m}");
        }
    }

    #[test]
    fn byte_order_round_trips() {
        let ip = Ipv4Addr::new(10, 96, 0, 10);
        assert_eq!(ip_to_map(ip).to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(ip_from_map(ip_to_map(ip)), ip);
        assert_eq!(port_to_map(80).to_ne_bytes(), [0, 80]);
        assert_eq!(port_from_map(port_to_map(8080)), 8080);
        let ip6: Ipv6Addr = "fd00:96::a".parse().unwrap();
        let raw = ip6_to_map(ip6);
        assert_eq!(raw[0].to_ne_bytes(), [0xfd, 0, 0, 0x96]);
        assert_eq!(raw[3].to_ne_bytes(), [0, 0, 0, 0x0a]);
        assert_eq!(ip6_from_map(raw), ip6);
    }
}

// ---------------------------------------------------------------------------------------
// NetworkPolicy maps: byte for byte the structs of `src/bpf/policy.bpf.c`. Addresses are
// in network byte order (`ip_to_map`), ports in host byte order.

/// Pinned name of the per-pod state map: pod address ([`ip_to_map`]) -> [`PolPodVal`].
pub const POL_PODS_MAP: &str = "pol_pods";
/// Pinned name of the rules LPM trie: [`PolRuleKey`] -> [`PolRuleVal`].
pub const POL_RULES_MAP: &str = "pol_rules";
/// Pinned name of the conntrack LRU map: [`PolCtKey`] -> [`PolCtVal`].
pub const POL_CT_MAP: &str = "pol_ct";
/// Pinned name of the per-pod counters: pod address -> [`PolStats`].
pub const POL_STATS_MAP: &str = "pol_stats";
/// All maps of the policy object, in a fixed order.
pub const POL_ALL_MAPS: [&str; 4] = [POL_PODS_MAP, POL_RULES_MAP, POL_CT_MAP, POL_STATS_MAP];

/// `PolPodVal::flags`: ingress is isolated (only the rules allow).
pub const POL_F_INGRESS: u8 = 1;
/// `PolPodVal::flags`: egress is isolated.
pub const POL_F_EGRESS: u8 = 2;
/// `PolRuleKey::dir` and `PolCtVal::origin` of traffic to the pod.
pub const POL_DIR_INGRESS: u8 = 0;
/// `PolRuleKey::dir` and `PolCtVal::origin` of traffic from the pod.
pub const POL_DIR_EGRESS: u8 = 1;
/// Bits of a [`PolRuleKey`] before the peer address (pod_ip, dir, slot, pad); an entry for
/// `a.b.c.d/n` has `prefixlen = POL_RULE_PREFIX_BASE + n`.
pub const POL_RULE_PREFIX_BASE: u32 = 64;
/// Length of [`PolRuleVal::ranges`] (`MAX_PORT_RANGES` in the C program).
pub const POL_MAX_PORT_RANGES: usize = 16;

/// Value of `pol_pods`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolPodVal {
    /// Changes on every rules write; conntrack entries of another `rev` are re-checked.
    pub rev: u32,
    /// The active rules slot (0 or 1).
    pub slot: u8,
    /// [`POL_F_INGRESS`] | [`POL_F_EGRESS`].
    pub flags: u8,
    /// Always zero.
    pub pad: u16,
}

/// Data of a `pol_rules` key. The LPM key is `prefixlen: u32` followed by this (aya's
/// `lpm_trie::Key<PolRuleKey>`), `prefixlen` = [`POL_RULE_PREFIX_BASE`] + the CIDR's length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolRuleKey {
    /// The pod, network byte order.
    pub pod_ip: u32,
    /// [`POL_DIR_INGRESS`] or [`POL_DIR_EGRESS`].
    pub dir: u8,
    /// The rules slot this entry belongs to.
    pub slot: u8,
    /// Always zero.
    pub pad: u16,
    /// The peer network address, network byte order.
    pub peer: u32,
}

/// One port range of a [`PolRuleVal`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolPortRange {
    /// First port, host byte order.
    pub start: u16,
    /// Last port, host byte order.
    pub end: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// Value of `pol_rules`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolRuleVal {
    /// 1: every protocol and port.
    pub any: u8,
    /// `ranges[0..count]` are used.
    pub count: u8,
    /// Always zero.
    pub pad: u16,
    /// The allowed ranges.
    pub ranges: [PolPortRange; POL_MAX_PORT_RANGES],
}

/// Key of `pol_ct`: one flow as the pod sees it (the same key for both directions).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolCtKey {
    /// The pod, network byte order.
    pub pod_ip: u32,
    /// The peer, network byte order.
    pub peer_ip: u32,
    /// The pod's port, host byte order (0 without ports).
    pub pod_port: u16,
    /// The peer's port, host byte order.
    pub peer_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// Value of `pol_ct`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolCtVal {
    /// `bpf_ktime_get_ns()` of the last packet.
    pub last_seen_ns: u64,
    /// [`PolPodVal::rev`] when the flow was last checked.
    pub rev: u32,
    /// Direction of the flow's first packet.
    pub origin: u8,
    /// 1 once a TCP FIN or RST was seen.
    pub closing: u8,
    /// Always zero.
    pub pad: u16,
}

/// Value of `pol_stats`: per-pod counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolStats {
    /// Flows to the pod allowed.
    pub new_ingress: u64,
    /// Flows from the pod allowed.
    pub new_egress: u64,
    /// Packets to the pod denied by policy.
    pub drop_ingress: u64,
    /// Packets from the pod denied by policy.
    pub drop_egress: u64,
    /// Packets with another source (from the pod) or destination (to it) than its address.
    pub drop_spoofed: u64,
    /// Malformed packets, IPv6 where the direction is isolated.
    pub drop_other: u64,
}

#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for PolPodVal {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for PolRuleKey {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for PolRuleVal {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for PolCtKey {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for PolCtVal {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for PolStats {}

/// (key size, value size) of each policy map, as the C object declares them (the LPM key
/// size includes `prefixlen`); checked against pinned maps before they are adopted.
pub fn policy_expected_sizes(map: &str) -> Option<(u32, u32)> {
    use std::mem::size_of;
    let s = |k: usize, v: usize| Some((k as u32, v as u32));
    match map {
        POL_PODS_MAP => s(size_of::<u32>(), size_of::<PolPodVal>()),
        POL_RULES_MAP => s(4 + size_of::<PolRuleKey>(), size_of::<PolRuleVal>()),
        POL_CT_MAP => s(size_of::<PolCtKey>(), size_of::<PolCtVal>()),
        POL_STATS_MAP => s(size_of::<u32>(), size_of::<PolStats>()),
        _ => None,
    }
}

#[cfg(test)]
mod policy_layout_tests {
    use super::*;
    use std::mem::{align_of, size_of};

    #[test]
    fn policy_layouts_match_the_c_structs() {
        assert_eq!(size_of::<PolPodVal>(), 8);
        assert_eq!((size_of::<PolRuleKey>(), align_of::<PolRuleKey>()), (12, 4));
        assert_eq!(size_of::<PolPortRange>(), 8);
        assert_eq!(size_of::<PolRuleVal>(), 4 + 8 * POL_MAX_PORT_RANGES);
        assert_eq!(size_of::<PolCtKey>(), 16);
        assert_eq!((size_of::<PolCtVal>(), align_of::<PolCtVal>()), (16, 8));
        assert_eq!(size_of::<PolStats>(), 48);
    }
}

// ---------------------------------------------------------------------------------------
// Masquerade maps: byte for byte the structs of `src/bpf/masq.bpf.c`. Addresses, ports and
// ICMP echo identifiers in network byte order.

/// Pinned name of the masquerade uplinks map: [`MasqLinkKey`] -> [`MasqLinkVal`].
pub const MASQ_LINKS_MAP: &str = "masq4_links";
/// Pinned name of the non-masquerade LPM trie: `Key<u32>` (address, [`ip_to_map`]) -> `u32`
/// (1). A destination it matches is never masqueraded.
pub const MASQ_NONMASQ_MAP: &str = "masq4_nonmasq";
/// Pinned name of the masquerade connection-tracking LRU map: [`CtKey`] -> [`MasqCtVal`].
pub const MASQ_CT_MAP: &str = "masq4_ct";
/// Pinned name of the masquerade counters (per-CPU array of `u64`, `MASQ_STAT_*` indices).
pub const MASQ_STATS_MAP: &str = "masq4_stats";
/// Every map of the masquerade object, in a fixed order.
pub const MASQ_ALL_MAPS: [&str; 4] = [
    MASQ_LINKS_MAP,
    MASQ_NONMASQ_MAP,
    MASQ_CT_MAP,
    MASQ_STATS_MAP,
];

/// `MasqCtVal::flags`: the pod's tuple -> the translated source.
pub const MASQ_F_FORWARD: u8 = 1;
/// `MasqCtVal::flags`: the reply's tuple -> the pod.
pub const MASQ_F_REPLY: u8 = 2;
/// `MasqCtVal::flags`: a flow opened from outside straight to a pod address (replies keep
/// the pod's source).
pub const MASQ_F_INBOUND: u8 = 4;
/// Lowest port (or ICMP echo identifier) pods are masqueraded to. The range is above Linux's
/// default ephemeral range (`ip_local_port_range` 32768-60999) so node sockets never collide
/// with it; it is the NodePort SNAT range too, whose flows go to in-cluster backends (never
/// masqueraded), so the two cannot meet on one remote endpoint.
pub const MASQ_PORT_MIN: u16 = 61000;
/// Highest masquerade port.
pub const MASQ_PORT_MAX: u16 = 65535;
/// Number of `masq4_stats` counters.
pub const MASQ_STAT_COUNT: u32 = 8;

/// Key of `masq4_links`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MasqLinkKey {
    /// Interface index, in the network namespace the programs are attached in.
    pub ifindex: u32,
}

/// Value of `masq4_links`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MasqLinkVal {
    /// The link's primary address, pods' traffic is masqueraded to; network byte order.
    pub addr: u32,
    /// Reserved, zero.
    pub flags: u32,
}

/// Value of `masq4_ct` (keys are [`CtKey`]: the packet's tuple as it is seen).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MasqCtVal {
    /// Forward entries: the new source address; reply entries: the pod's address.
    pub addr: u32,
    /// Forward entries: the new source port; reply entries: the pod's port.
    pub port: u16,
    /// [`MASQ_F_FORWARD`], [`MASQ_F_REPLY`] or [`MASQ_F_INBOUND`].
    pub flags: u8,
    /// Always zero.
    pub pad: u8,
    /// `bpf_ktime_get_ns()` of the last packet (updated at most once a second).
    pub last_seen_ns: u64,
}

// SAFETY: as for the types above: `#[repr(C)]`, integers only, explicit padding.
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for MasqLinkKey {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for MasqLinkVal {}
#[expect(
    unsafe_code,
    reason = "aya::Pod marks plain-old-data map keys and values"
)]
unsafe impl aya::Pod for MasqCtVal {}

#[cfg(test)]
mod masq_tests {
    use super::*;
    use std::mem::{align_of, size_of};

    #[test]
    fn masq_layouts_match_the_c_structs() {
        assert_eq!(size_of::<MasqLinkKey>(), 4);
        assert_eq!(size_of::<MasqLinkVal>(), 8);
        assert_eq!((size_of::<MasqCtVal>(), align_of::<MasqCtVal>()), (16, 8));
        for m in MASQ_ALL_MAPS {
            assert!(expected_sizes(m).is_some(), "{m}");
        }
    }
}
