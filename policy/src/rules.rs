//! The compiler's output: per pod and direction, a set of CIDR entries each carrying the
//! protocols and port ranges allowed for peers in it, in the shape the eBPF LPM trie holds.
//! The entries are already "flattened": for any address the longest entry containing it
//! carries the whole verdict (an `except` is a longer entry with less allowed), so the
//! datapath needs one longest-prefix lookup and one scan of at most [`MAX_PORT_RANGES`]
//! ranges. [`DirectionRules::permits`] evaluates a packet exactly as the datapath does.

use std::{fmt, net::Ipv4Addr};

use ipnet::Ipv4Net;

/// Most port ranges one CIDR entry can carry (the size of the map value's array). A pod
/// whose rules need more for one peer prefix is closed, with the reason.
pub const MAX_PORT_RANGES: usize = 16;

/// An L4 protocol NetworkPolicy can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`); `None` (absent) is TCP.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s {
            None | Some("TCP") => Some(Self::Tcp),
            Some("UDP") => Some(Self::Udp),
            Some("SCTP") => Some(Self::Sctp),
            Some(_) => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// An inclusive port range of one protocol; port 0 only appears in "every port" ranges
/// (`0..=65535`), which also admit non-first IP fragments (no L4 header, seen as port 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// The protocol.
    pub protocol: Protocol,
    /// First port.
    pub start: u16,
    /// Last port (>= `start`).
    pub end: u16,
}

impl PortRange {
    /// Every port of `protocol`.
    pub fn all(protocol: Protocol) -> Self {
        Self {
            protocol,
            start: 0,
            end: u16::MAX,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == 0 && self.end == u16::MAX {
            write!(f, "{}/*", self.protocol)
        } else if self.start == self.end {
            write!(f, "{}/{}", self.protocol, self.start)
        } else {
            write!(f, "{}/{}-{}", self.protocol, self.start, self.end)
        }
    }
}

/// What one CIDR entry allows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Allowed {
    /// Every protocol (ICMP included) and port: a rule without `ports`.
    pub any: bool,
    /// Otherwise these ranges (sorted, merged per protocol; empty with `any`).
    pub ranges: Vec<PortRange>,
}

impl Allowed {
    /// Allows nothing (an `except` hole or a deny).
    pub fn nothing() -> Self {
        Self::default()
    }

    /// Allows everything.
    pub fn everything() -> Self {
        Self {
            any: true,
            ranges: Vec::new(),
        }
    }

    /// Whether nothing is allowed.
    pub fn is_nothing(&self) -> bool {
        !self.any && self.ranges.is_empty()
    }

    /// Adds `other` to this set.
    pub fn add(&mut self, other: &Allowed) {
        if other.any {
            self.any = true;
        }
        self.ranges.extend_from_slice(&other.ranges);
        self.normalise();
    }

    /// Sorts and merges overlapping or adjacent ranges; drops ranges under `any`.
    pub fn normalise(&mut self) {
        if self.any {
            self.ranges.clear();
            return;
        }
        self.ranges.sort();
        let mut out: Vec<PortRange> = Vec::with_capacity(self.ranges.len());
        for r in self.ranges.drain(..) {
            match out.last_mut() {
                Some(last)
                    if last.protocol == r.protocol
                        && u32::from(r.start) <= u32::from(last.end) + 1 =>
                {
                    last.end = last.end.max(r.end);
                }
                _ => out.push(r),
            }
        }
        self.ranges = out;
    }

    /// Whether a packet of IP protocol `proto` to/from L4 port `port` is allowed.
    pub fn permits(&self, proto: u8, port: u16) -> bool {
        self.any
            || self
                .ranges
                .iter()
                .any(|r| r.protocol.number() == proto && r.start <= port && port <= r.end)
    }
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.any {
            return f.write_str("any");
        }
        if self.ranges.is_empty() {
            return f.write_str("deny");
        }
        let parts: Vec<String> = self.ranges.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// One entry of a pod's table for one direction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CidrRule {
    /// The peer prefix (host bits zero).
    pub cidr: Ipv4Net,
    /// What peers in it (and in no longer entry) may do.
    pub allowed: Allowed,
}

/// The rules of one pod in one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectionRules {
    /// No policy isolates the pod in this direction: everything passes.
    Open,
    /// Isolated: only what an entry allows passes (an empty list is default deny).
    Enforced(Vec<CidrRule>),
}

impl DirectionRules {
    /// The entry the datapath's longest-prefix lookup finds for `peer`.
    pub fn lookup(&self, peer: Ipv4Addr) -> Option<&CidrRule> {
        match self {
            Self::Open => None,
            Self::Enforced(rules) => rules
                .iter()
                .filter(|r| r.cidr.contains(&peer))
                .max_by_key(|r| r.cidr.prefix_len()),
        }
    }

    /// Whether a new flow with `peer`, IP protocol `proto` and L4 port `port` (the pod's
    /// port for ingress, the peer's for egress) is allowed, as the datapath decides it.
    pub fn permits(&self, peer: Ipv4Addr, proto: u8, port: u16) -> bool {
        match self {
            Self::Open => true,
            Self::Enforced(_) => self
                .lookup(peer)
                .is_some_and(|r| r.allowed.permits(proto, port)),
        }
    }

    /// Whether the direction is isolated.
    pub fn is_enforced(&self) -> bool {
        matches!(self, Self::Enforced(_))
    }
}

/// The compiled policy of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRules {
    /// The pod's address (what anti-spoofing checks and the maps are keyed by).
    pub ip: Ipv4Addr,
    /// Traffic to the pod; the port is the pod's.
    pub ingress: DirectionRules,
    /// Traffic from the pod; the port is the peer's.
    pub egress: DirectionRules,
    /// `namespace/name` of the policies selecting the pod.
    pub policies: Vec<String>,
    /// Set when the pod's policy could not be computed: both directions are then denied.
    pub closed: Option<String>,
}

impl PodRules {
    /// A pod selected by no policy.
    pub fn open(ip: Ipv4Addr) -> Self {
        Self {
            ip,
            ingress: DirectionRules::Open,
            egress: DirectionRules::Open,
            policies: Vec::new(),
            closed: None,
        }
    }

    /// A pod that must get no traffic in either direction, for `reason`.
    pub fn closed(ip: Ipv4Addr, reason: impl Into<String>) -> Self {
        Self {
            ip,
            ingress: DirectionRules::Enforced(Vec::new()),
            egress: DirectionRules::Enforced(Vec::new()),
            policies: Vec::new(),
            closed: Some(reason.into()),
        }
    }
}
