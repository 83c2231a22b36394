//! The `#[repr(C)]` key and value types of the socket-LB maps, byte for byte the structs of
//! `src/bpf/socket_lb.bpf.c`, with explicit padding fields (always zero) so no byte of a key
//! is left undefined. This module owns the layouts and the `Pod` impls; it does no I/O.
//!
//! Addresses and ports are stored in network byte order, as the kernel hands them to the
//! hooks: an address is `u32::from_ne_bytes(ip.octets())`, a port is `port.to_be()`.

use std::net::Ipv4Addr;

/// Pinned name of the services map: [`SvcKey`] -> [`SvcVal`].
pub const SERVICES_MAP: &str = "lb4_services";
/// Pinned name of the backends map: [`BeKey`] -> [`BeVal`].
pub const BACKENDS_MAP: &str = "lb4_backends";
/// Pinned name of the session-affinity LRU map: [`AffKey`] -> [`AffVal`].
pub const AFFINITY_MAP: &str = "lb4_affinity";
/// Pinned name of the reverse-translation LRU map: [`RevKey`] -> [`SvcKey`].
pub const REV_NAT_MAP: &str = "lb4_rev_nat";
/// All maps of the socket-LB object, in a fixed order.
pub const ALL_MAPS: [&str; 4] = [SERVICES_MAP, BACKENDS_MAP, AFFINITY_MAP, REV_NAT_MAP];

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
    }

    #[test]
    fn byte_order_round_trips() {
        let ip = Ipv4Addr::new(10, 96, 0, 10);
        assert_eq!(ip_to_map(ip).to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(ip_from_map(ip_to_map(ip)), ip);
        assert_eq!(port_to_map(80).to_ne_bytes(), [0, 80]);
        assert_eq!(port_from_map(port_to_map(8080)), 8080);
    }
}
