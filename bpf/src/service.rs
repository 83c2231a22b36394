//! What callers speak: services, backends and specs in plain Rust types, the
//! [`DatapathMaps`] trait in front of the kernel maps, and the pure planner that turns
//! (what the maps hold, what is wanted) into the smallest ordered list of map writes.
//! This module does no I/O; [`crate::SocketLb`] and [`crate::fake::RecordingMaps`]
//! apply the plans.
//!
//! Both address families go through the same types and the same planner: a
//! [`ServiceKey`] with an IPv4 VIP lives in the `lb4_*` tables, one with an IPv6 VIP in the
//! `lb6_*` tables, and a service's backends must be of its VIP's family (a mix is rejected
//! before any map is touched). Service ids are one space shared by both families, so a
//! [`BeKey`] names one slot whatever the family and an id is never reused across families
//! while in use.

use std::{
    collections::{BTreeSet, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use crate::{
    error::BpfError,
    maps::{
        ip6_from_map, ip6_to_map, ip_from_map, ip_to_map, port_from_map, port_to_map, Be6Val,
        BeKey, BeVal, Svc6Key, SvcKey, SvcVal, BACKEND_ACTIVE, BACKEND_TERMINATING,
        MAX_BACKENDS_PER_SERVICE,
    },
};

/// The address family of a frontend or backend: which set of tables it lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4: `lb4_services`, `lb4_backends` (shared with the per-packet path).
    V4,
    /// IPv6: `lb6_services`, `lb6_backends` (socket hooks only).
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// Transport protocol of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    /// From an IP protocol number.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            _ => None,
        }
    }
}

/// A frontend: ClusterIP, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The virtual IP (ClusterIP), IPv4 or IPv6 (an IPv4-mapped IPv6 address is rejected:
    /// program the IPv4 address, the IPv6 hooks serve its mapped form from the IPv4 tables).
    pub vip: IpAddr,
    /// The service port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        // `[v6]:port` for IPv6, like a socket address.
        write!(f, "{}/{p}", SocketAddr::new(self.vip, self.port))
    }
}

impl ServiceKey {
    /// An IPv4 frontend.
    pub fn v4(vip: Ipv4Addr, port: u16, protocol: Protocol) -> Self {
        Self {
            vip: IpAddr::V4(vip),
            port,
            protocol,
        }
    }

    /// The family of the VIP.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.vip)
    }

    /// The `lb4_services` key; `None` for an IPv6 frontend.
    pub fn to_map(self) -> Option<SvcKey> {
        match self.vip {
            IpAddr::V4(vip) => Some(SvcKey {
                vip: ip_to_map(vip),
                port: port_to_map(self.port),
                proto: self.protocol.number(),
                pad: 0,
            }),
            IpAddr::V6(_) => None,
        }
    }

    /// The `lb6_services` key; `None` for an IPv4 frontend.
    pub fn to_map6(self) -> Option<Svc6Key> {
        match self.vip {
            IpAddr::V6(vip) => Some(Svc6Key {
                vip: ip6_to_map(vip),
                port: port_to_map(self.port),
                proto: self.protocol.number(),
                pad: 0,
            }),
            IpAddr::V4(_) => None,
        }
    }

    /// From an `lb4_services` key; `None` for a protocol this crate does not know.
    pub fn from_map(k: SvcKey) -> Option<Self> {
        Some(Self {
            vip: IpAddr::V4(ip_from_map(k.vip)),
            port: port_from_map(k.port),
            protocol: Protocol::from_number(k.proto)?,
        })
    }

    /// From an `lb6_services` key; `None` for a protocol this crate does not know.
    pub fn from_map6(k: Svc6Key) -> Option<Self> {
        Some(Self {
            vip: IpAddr::V6(ip6_from_map(k.vip)),
            port: port_from_map(k.port),
            protocol: Protocol::from_number(k.proto)?,
        })
    }
}

/// Whether a backend takes new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Ready: picked for new connections.
    Active,
    /// Terminating: keeps its existing connections, gets no new ones.
    Terminating,
}

/// One endpoint of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Endpoint address, of the same family as the service's VIP.
    pub ip: IpAddr,
    /// Endpoint port.
    pub port: u16,
    /// Active or terminating.
    pub state: BackendState,
}

impl Backend {
    /// An active backend (an IPv4 or IPv6 socket address).
    pub fn active(addr: impl Into<SocketAddr>) -> Self {
        let addr = addr.into();
        Self {
            ip: addr.ip(),
            port: addr.port(),
            state: BackendState::Active,
        }
    }

    /// A terminating backend.
    pub fn terminating(addr: impl Into<SocketAddr>) -> Self {
        Self {
            state: BackendState::Terminating,
            ..Self::active(addr)
        }
    }

    /// The backend's socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    fn state_to_map(self) -> u8 {
        match self.state {
            BackendState::Active => BACKEND_ACTIVE,
            BackendState::Terminating => BACKEND_TERMINATING,
        }
    }

    fn state_from_map(state: u8) -> BackendState {
        if state == BACKEND_ACTIVE {
            BackendState::Active
        } else {
            BackendState::Terminating
        }
    }

    /// The `lb4_backends` value; `None` for an IPv6 backend.
    pub fn to_map(self) -> Option<BeVal> {
        match self.ip {
            IpAddr::V4(ip) => Some(BeVal {
                ip: ip_to_map(ip),
                port: port_to_map(self.port),
                state: self.state_to_map(),
                pad: 0,
            }),
            IpAddr::V6(_) => None,
        }
    }

    /// The `lb6_backends` value; `None` for an IPv4 backend.
    pub fn to_map6(self) -> Option<Be6Val> {
        match self.ip {
            IpAddr::V6(ip) => Some(Be6Val {
                ip: ip6_to_map(ip),
                port: port_to_map(self.port),
                state: self.state_to_map(),
                pad: 0,
            }),
            IpAddr::V4(_) => None,
        }
    }

    /// From an `lb4_backends` value.
    pub fn from_map(v: BeVal) -> Self {
        Self {
            ip: IpAddr::V4(ip_from_map(v.ip)),
            port: port_from_map(v.port),
            state: Self::state_from_map(v.state),
        }
    }

    /// From an `lb6_backends` value.
    pub fn from_map6(v: Be6Val) -> Self {
        Self {
            ip: IpAddr::V6(ip6_from_map(v.ip)),
            port: port_from_map(v.port),
            state: Self::state_from_map(v.state),
        }
    }
}

/// What a service should look like in the datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Its endpoints; order does not matter.
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP` with this timeout (whole seconds, at least 1); `None` for none.
    pub affinity_timeout: Option<Duration>,
}

/// One service as read back from the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The frontend.
    pub key: ServiceKey,
    /// The service id in the maps.
    pub id: u32,
    /// Backends in slot order (active first), and the affinity timeout.
    pub spec: ServiceSpec,
}

/// What an upsert did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpsertOutcome {
    /// The service id.
    pub id: u32,
    /// The service did not exist before.
    pub created: bool,
    /// Map writes and deletes done (0: nothing differed).
    pub map_ops: usize,
    /// Backends the service had before and has no longer: connected UDP sockets still
    /// aimed at them should be terminated ([`crate::terminate_udp_sockets_to`]).
    pub removed_backends: Vec<SocketAddr>,
}

/// The Service tables of the datapath, as the reconciler sees them. The real one is
/// [`crate::SocketLb`]; [`crate::fake::RecordingMaps`] records calls for callers' unit tests.
pub trait DatapathMaps {
    /// Creates or changes one service, writing only what differs.
    fn upsert_service(
        &mut self,
        key: ServiceKey,
        spec: &ServiceSpec,
    ) -> Result<UpsertOutcome, BpfError>;
    /// Removes one service; `Ok(false)` if it was not there.
    fn delete_service(&mut self, key: ServiceKey) -> Result<bool, BpfError>;
    /// Every service with its backends, read from the maps.
    fn list(&self) -> Result<Vec<ServiceEntry>, BpfError>;
}

/// One map write, in the order it must be applied. The family (which table) is the
/// key's: the VIP's for services, the backend address's for slot writes, explicit for
/// slot deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Insert or replace a service entry.
    PutService(ServiceKey, SvcVal),
    /// Delete a service entry.
    DeleteService(ServiceKey),
    /// Insert or replace a backend slot.
    PutBackend(BeKey, Backend),
    /// Delete a backend slot of the given family's table.
    DeleteBackend(IpFamily, BeKey),
}

/// Raw access to the tables the planner works on (both families); implemented by the real
/// maps and by the fake. Conversion to the map layouts happens behind it.
pub(crate) trait RawTables {
    fn get_service(&self, key: &ServiceKey) -> Result<Option<SvcVal>, BpfError>;
    fn get_backend(&self, family: IpFamily, key: &BeKey) -> Result<Option<Backend>, BpfError>;
    fn all_services(&self) -> Result<Vec<(ServiceKey, SvcVal)>, BpfError>;
    fn apply(&mut self, op: &MapOp) -> Result<(), BpfError>;
}

/// Checks a frontend and its backends are one family and no address is IPv4-mapped.
fn check_family(key: ServiceKey, spec: &ServiceSpec) -> Result<(), BpfError> {
    if let IpAddr::V6(v6) = key.vip {
        if v6.to_ipv4_mapped().is_some() {
            return Err(BpfError::InvalidService {
                key,
                reason: "the VIP is an IPv4-mapped IPv6 address; program the IPv4 address \
                         (the IPv6 hooks serve its mapped form from the IPv4 tables)"
                    .into(),
            });
        }
    }
    let family = key.family();
    if let Some(b) = spec.backends.iter().find(|b| IpFamily::of(b.ip) != family) {
        return Err(BpfError::InvalidService {
            key,
            reason: format!(
                "backend {} is {} but the frontend is {family}: a frontend's backends must be \
                 of its family (pair IPv4 endpoints with the IPv4 ClusterIP and IPv6 \
                 endpoints with the IPv6 one)",
                b.addr(),
                IpFamily::of(b.ip)
            ),
        });
    }
    Ok(())
}

fn affinity_secs(key: ServiceKey, d: Option<Duration>) -> Result<u32, BpfError> {
    match d {
        None => Ok(0),
        Some(d) => {
            let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            u32::try_from(s.max(1)).map_err(|_| BpfError::InvalidService {
                key,
                reason: format!("affinity timeout {d:?} is too long"),
            })
        }
    }
}

/// Plans an upsert. `old` is the current entry with its slots `[0, backend_count)`.
///
/// Order, so a datapath reader never sees a slot beyond what exists nor a terminating
/// backend inside the active range: (1) if a count shrinks, first lower the service's counts
/// to the smaller of old and new; (2) write the slots that differ; (3) write the final
/// service entry if it differs; (4) delete slots past the new end. Backends keep their slot
/// when they can, so affinity entries (which remember a slot) stay valid.
pub(crate) fn plan_upsert(
    key: ServiceKey,
    id: u32,
    old: Option<(SvcVal, Vec<Backend>)>,
    spec: &ServiceSpec,
) -> Result<(Vec<MapOp>, Vec<SocketAddr>), BpfError> {
    check_family(key, spec)?;
    let affinity_timeout_s = affinity_secs(key, spec.affinity_timeout)?;
    // Dedupe by address; active wins over terminating.
    let mut seen: HashSet<SocketAddr> = HashSet::new();
    let mut active: Vec<Backend> = Vec::new();
    let mut terminating: Vec<Backend> = Vec::new();
    for b in spec
        .backends
        .iter()
        .filter(|b| b.state == BackendState::Active)
        .chain(
            spec.backends
                .iter()
                .filter(|b| b.state != BackendState::Active),
        )
    {
        if b.port == 0 {
            return Err(BpfError::InvalidService {
                key,
                reason: format!("backend {} has port 0", b.ip),
            });
        }
        if seen.insert(b.addr()) {
            match b.state {
                BackendState::Active => active.push(*b),
                BackendState::Terminating => terminating.push(*b),
            }
        }
    }
    let (a, n) = (active.len(), active.len() + terminating.len());
    if n > MAX_BACKENDS_PER_SERVICE {
        return Err(BpfError::InvalidService {
            key,
            reason: format!("{n} backends, at most {MAX_BACKENDS_PER_SERVICE}"),
        });
    }

    let (old_val, old_slots) = match old {
        Some((v, s)) => (Some(v), s),
        None => (None, Vec::new()),
    };

    // Lay out: keep a backend in its old slot when that slot is in its new range.
    let mut want_active: HashSet<Backend> = active.iter().copied().collect();
    let mut want_term: HashSet<Backend> = terminating.iter().copied().collect();
    let mut slots: Vec<Option<Backend>> = vec![None; n];
    for (i, v) in old_slots.iter().enumerate().take(n) {
        let pool = if i < a {
            &mut want_active
        } else {
            &mut want_term
        };
        if pool.remove(v) {
            slots[i] = Some(*v);
        }
    }
    let mut rest_active = active.iter().filter(|v| want_active.contains(v));
    let mut rest_term = terminating.iter().filter(|v| want_term.contains(v));
    for (i, slot) in slots.iter_mut().enumerate() {
        if slot.is_none() {
            *slot = if i < a {
                rest_active.next().copied()
            } else {
                rest_term.next().copied()
            };
        }
    }
    let slots: Vec<Backend> = slots.into_iter().flatten().collect();
    debug_assert_eq!(slots.len(), n);

    let skey = key;
    let final_val = SvcVal {
        id,
        backend_count: n as u16,
        active_count: a as u16,
        affinity_timeout_s,
        flags: 0,
    };
    let mut ops = Vec::new();
    let (old_a, old_n) = old_val.map_or((0, 0), |v| {
        (usize::from(v.active_count), usize::from(v.backend_count))
    });
    if let Some(ov) = old_val {
        if a < old_a || n < old_n {
            ops.push(MapOp::PutService(
                skey,
                SvcVal {
                    backend_count: n.min(old_n) as u16,
                    active_count: a.min(old_a) as u16,
                    ..ov
                },
            ));
        }
    }
    for (i, v) in slots.iter().enumerate() {
        if old_slots.get(i) != Some(v) {
            ops.push(MapOp::PutBackend(
                BeKey {
                    svc_id: id,
                    slot: i as u32,
                },
                *v,
            ));
        }
    }
    if old_val != Some(final_val) || ops.iter().any(|o| matches!(o, MapOp::PutService(..))) {
        ops.push(MapOp::PutService(skey, final_val));
    }
    for i in n..old_n {
        ops.push(MapOp::DeleteBackend(
            key.family(),
            BeKey {
                svc_id: id,
                slot: i as u32,
            },
        ));
    }

    let now: HashSet<SocketAddr> = slots.iter().map(Backend::addr).collect();
    let removed = old_slots
        .iter()
        .map(Backend::addr)
        .filter(|a| !now.contains(a))
        .collect();
    Ok((ops, removed))
}

fn read_slots<R: RawTables + ?Sized>(
    raw: &R,
    family: IpFamily,
    val: &SvcVal,
) -> Result<Vec<Backend>, BpfError> {
    let mut out = Vec::with_capacity(usize::from(val.backend_count));
    for slot in 0..u32::from(val.backend_count) {
        if let Some(v) = raw.get_backend(
            family,
            &BeKey {
                svc_id: val.id,
                slot,
            },
        )? {
            out.push(v);
        }
    }
    Ok(out)
}

/// The service ids in use, read from the services tables of both families.
pub(crate) fn used_ids<R: RawTables + ?Sized>(raw: &R) -> Result<BTreeSet<u32>, BpfError> {
    Ok(raw.all_services()?.into_iter().map(|(_, v)| v.id).collect())
}

/// A service id not in `ids`: one past the highest in use (O(log n), so installing many
/// services is not quadratic), or, once the top of the range is taken, the lowest gap.
fn free_id(ids: &BTreeSet<u32>) -> Result<u32, BpfError> {
    match ids.last() {
        None => Ok(1),
        Some(&last) if last < u32::MAX => Ok(last + 1),
        Some(_) => (1..=u32::MAX)
            .find(|i| !ids.contains(i))
            .ok_or(BpfError::IdsExhausted),
    }
}

/// Upsert through any [`RawTables`]: read, plan, apply in order.
pub(crate) fn upsert<R: RawTables + ?Sized>(
    raw: &mut R,
    ids: &mut BTreeSet<u32>,
    key: ServiceKey,
    spec: &ServiceSpec,
) -> Result<UpsertOutcome, BpfError> {
    let old = match raw.get_service(&key)? {
        Some(v) => Some((v, read_slots(raw, key.family(), &v)?)),
        None => None,
    };
    let created = old.is_none();
    let id = match &old {
        Some((v, _)) => v.id,
        None => free_id(ids)?,
    };
    let (ops, removed_backends) = plan_upsert(key, id, old, spec)?;
    for op in &ops {
        raw.apply(op)?;
    }
    ids.insert(id);
    Ok(UpsertOutcome {
        id,
        created,
        map_ops: ops.len(),
        removed_backends,
    })
}

/// Delete through any [`RawTables`]: the service entry first (no new lookups), then slots.
pub(crate) fn delete<R: RawTables + ?Sized>(
    raw: &mut R,
    ids: &mut BTreeSet<u32>,
    key: ServiceKey,
) -> Result<bool, BpfError> {
    let Some(v) = raw.get_service(&key)? else {
        return Ok(false);
    };
    raw.apply(&MapOp::DeleteService(key))?;
    for slot in 0..u32::from(v.backend_count) {
        raw.apply(&MapOp::DeleteBackend(
            key.family(),
            BeKey { svc_id: v.id, slot },
        ))?;
    }
    ids.remove(&v.id);
    Ok(true)
}

/// List through any [`RawTables`], sorted by frontend.
pub(crate) fn list<R: RawTables + ?Sized>(raw: &R) -> Result<Vec<ServiceEntry>, BpfError> {
    let mut out = Vec::new();
    for (key, v) in raw.all_services()? {
        let backends = read_slots(raw, key.family(), &v)?;
        out.push(ServiceEntry {
            key,
            id: v.id,
            spec: ServiceSpec {
                backends,
                affinity_timeout: (v.affinity_timeout_s > 0)
                    .then(|| Duration::from_secs(u64::from(v.affinity_timeout_s))),
            },
        });
    }
    out.sort_by_key(|e| e.key);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::RecordingMaps;
    use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};

    fn key() -> ServiceKey {
        ServiceKey {
            vip: Ipv4Addr::new(10, 96, 0, 10).into(),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    fn be(last: u8) -> SocketAddr {
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, last), 8080).into()
    }

    fn key6() -> ServiceKey {
        ServiceKey {
            vip: "fd00:96::10".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    fn be6(last: u16) -> SocketAddr {
        SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, last), 8080, 0, 0).into()
    }

    fn spec(active: &[u8], terminating: &[u8]) -> ServiceSpec {
        ServiceSpec {
            backends: active
                .iter()
                .map(|l| Backend::active(be(*l)))
                .chain(terminating.iter().map(|l| Backend::terminating(be(*l))))
                .collect(),
            affinity_timeout: None,
        }
    }

    #[test]
    fn create_writes_backends_before_the_service() {
        let mut m = RecordingMaps::new();
        let out = m.upsert_service(key(), &spec(&[2, 3], &[])).unwrap();
        assert!(out.created);
        assert_eq!(out.map_ops, 3);
        assert!(matches!(m.ops[0], MapOp::PutBackend(..)));
        assert!(matches!(m.ops[1], MapOp::PutBackend(..)));
        assert!(matches!(m.ops[2], MapOp::PutService(..)));
    }

    #[test]
    fn unchanged_spec_writes_nothing() {
        let mut m = RecordingMaps::new();
        m.upsert_service(key(), &spec(&[2, 3, 4], &[])).unwrap();
        let out = m.upsert_service(key(), &spec(&[4, 3, 2], &[])).unwrap();
        assert_eq!(out.map_ops, 0);
        assert!(!out.created);
    }

    #[test]
    fn adding_one_backend_writes_one_slot_and_the_count() {
        let mut m = RecordingMaps::new();
        m.upsert_service(key(), &spec(&[2, 3], &[])).unwrap();
        m.ops.clear();
        let out = m.upsert_service(key(), &spec(&[2, 3, 4], &[])).unwrap();
        assert_eq!(out.map_ops, 2);
        assert!(matches!(
            m.ops[0],
            MapOp::PutBackend(BeKey { slot: 2, .. }, _)
        ));
        assert!(matches!(m.ops[1], MapOp::PutService(..)));
    }

    #[test]
    fn removing_shrinks_count_first_and_reports_removed() {
        let mut m = RecordingMaps::new();
        m.upsert_service(key(), &spec(&[2, 3, 4], &[])).unwrap();
        m.ops.clear();
        // The fake asserts no counted slot is ever missing and no counted slot is deleted.
        let out = m.upsert_service(key(), &spec(&[2, 4], &[])).unwrap();
        assert_eq!(out.removed_backends, vec![be(3)]);
        assert!(matches!(
            m.ops[0],
            MapOp::PutService(
                _,
                SvcVal {
                    backend_count: 2,
                    ..
                }
            )
        ));
        assert!(matches!(m.ops.last(), Some(MapOp::DeleteBackend(..))));
        let l = m.list().unwrap();
        let addrs: HashSet<_> = l[0].spec.backends.iter().map(|b| b.addr()).collect();
        assert_eq!(addrs, [be(2), be(4)].into_iter().collect());
        // 2 kept its slot.
        assert_eq!(l[0].spec.backends[0].addr(), be(2));
    }

    #[test]
    fn terminating_backends_sit_after_the_active_range() {
        let mut m = RecordingMaps::new();
        m.upsert_service(key(), &spec(&[2, 3, 4], &[])).unwrap();
        m.upsert_service(key(), &spec(&[2, 4], &[3])).unwrap();
        let l = m.list().unwrap();
        let states: Vec<_> = l[0].spec.backends.iter().map(|b| b.state).collect();
        assert_eq!(
            states,
            vec![
                BackendState::Active,
                BackendState::Active,
                BackendState::Terminating
            ]
        );
        assert_eq!(l[0].spec.backends[2].addr(), be(3));
        assert_eq!(m.backend_slots(), 3);
    }

    #[test]
    fn delete_removes_service_then_slots_and_frees_the_id() {
        let mut m = RecordingMaps::new();
        let id = m.upsert_service(key(), &spec(&[2], &[])).unwrap().id;
        assert!(m.delete_service(key()).unwrap());
        assert!(!m.delete_service(key()).unwrap());
        assert_eq!(m.backend_slots(), 0);
        assert!(m.list().unwrap().is_empty());
        assert_eq!(m.upsert_service(key(), &spec(&[2], &[])).unwrap().id, id);
    }

    #[test]
    fn new_ids_go_past_the_highest_then_fill_gaps_at_the_top() {
        assert_eq!(free_id(&BTreeSet::new()).unwrap(), 1);
        assert_eq!(free_id(&[1, 2, 7].into_iter().collect()).unwrap(), 8);
        let full_top: BTreeSet<u32> = [1, 2, 4, u32::MAX].into_iter().collect();
        assert_eq!(free_id(&full_top).unwrap(), 3);
    }

    #[test]
    fn affinity_and_validation() {
        let mut m = RecordingMaps::new();
        let mut s = spec(&[2], &[]);
        s.affinity_timeout = Some(Duration::from_millis(1500));
        m.upsert_service(key(), &s).unwrap();
        assert_eq!(
            m.list().unwrap()[0].spec.affinity_timeout,
            Some(Duration::from_secs(2))
        );
        let bad = ServiceSpec {
            backends: vec![Backend::active(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))],
            affinity_timeout: None,
        };
        let e = m.upsert_service(key(), &bad).unwrap_err();
        assert!(e.to_string().contains("10.96.0.10:80/tcp"), "{e}");
    }

    #[test]
    fn any_sequence_of_specs_keeps_the_reader_invariants() {
        // A deterministic walk over many (active, terminating) layouts; the fake asserts
        // the invariants at each map operation, and the end state must equal the spec.
        let mut m = RecordingMaps::new();
        let mut x: u32 = 12345;
        for _ in 0..400 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let (mut a, mut t) = (Vec::new(), Vec::new());
            for last in 2..10u8 {
                match (x >> last) % 3 {
                    0 => a.push(last),
                    1 => t.push(last),
                    _ => {}
                }
            }
            m.upsert_service(key(), &spec(&a, &t)).unwrap();
            let l = m.list().unwrap();
            let got: HashSet<_> = l[0].spec.backends.iter().copied().collect();
            let want: HashSet<_> = spec(&a, &t).backends.into_iter().collect();
            assert_eq!(got, want);
            assert_eq!(m.backend_slots(), want.len());
        }
    }

    #[test]
    fn ipv6_services_plan_like_ipv4_ones_and_share_the_id_space() {
        let mut m = RecordingMaps::new();
        let id4 = m.upsert_service(key(), &spec(&[2, 3], &[])).unwrap().id;
        let six = |a: &[u16], t: &[u16]| ServiceSpec {
            backends: a
                .iter()
                .map(|l| Backend::active(be6(*l)))
                .chain(t.iter().map(|l| Backend::terminating(be6(*l))))
                .collect(),
            affinity_timeout: Some(Duration::from_secs(30)),
        };
        let out = m.upsert_service(key6(), &six(&[2, 3, 4], &[])).unwrap();
        assert!(out.created);
        assert_ne!(out.id, id4, "one id space for both families");
        let out = m.upsert_service(key6(), &six(&[2, 4], &[3])).unwrap();
        assert!(
            out.removed_backends.is_empty(),
            "3 is terminating, not gone"
        );
        let out = m.upsert_service(key6(), &six(&[4], &[])).unwrap();
        let removed: HashSet<_> = out.removed_backends.into_iter().collect();
        assert_eq!(removed, [be6(2), be6(3)].into_iter().collect());
        assert!(matches!(
            m.ops.last(),
            Some(MapOp::DeleteBackend(IpFamily::V6, _))
        ));
        let l = m.list().unwrap();
        assert_eq!(l.len(), 2);
        let e6 = l.iter().find(|e| e.key == key6()).unwrap();
        assert_eq!(e6.spec.backends, vec![Backend::active(be6(4))]);
        assert_eq!(e6.spec.affinity_timeout, Some(Duration::from_secs(30)));
        assert_eq!(key6().to_string(), "[fd00:96::10]:80/tcp");
        assert!(m.delete_service(key6()).unwrap());
        assert_eq!(m.list().unwrap().len(), 1);
        assert_eq!(m.backend_slots(), 2);
    }

    #[test]
    fn mixed_families_and_mapped_vips_are_rejected() {
        let mut m = RecordingMaps::new();
        let e = m
            .upsert_service(
                key(),
                &ServiceSpec {
                    backends: vec![Backend::active(be6(2))],
                    affinity_timeout: None,
                },
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("10.96.0.10:80/tcp") && e.contains("is IPv6 but the frontend is IPv4"),
            "{e}"
        );
        let e = m
            .upsert_service(key6(), &spec(&[2], &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is IPv4 but the frontend is IPv6"), "{e}");
        let mapped = ServiceKey {
            vip: Ipv4Addr::new(10, 96, 0, 10).to_ipv6_mapped().into(),
            ..key()
        };
        let e = m
            .upsert_service(mapped, &ServiceSpec::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("IPv4-mapped"), "{e}");
        assert!(m.ops.is_empty(), "nothing written");
    }

    #[test]
    fn duplicate_addresses_collapse_active_wins() {
        let mut m = RecordingMaps::new();
        let mut s = spec(&[2], &[2]);
        s.backends.push(Backend::active(be(2)));
        m.upsert_service(key(), &s).unwrap();
        let l = m.list().unwrap();
        assert_eq!(l[0].spec.backends, vec![Backend::active(be(2))]);
    }
}
