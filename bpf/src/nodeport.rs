//! `NodePortLb`: the per-packet path for Service traffic a socket hook cannot see (NodePort,
//! externalIPs, LoadBalancer ingress IPs arriving on the node's links). It loads the
//! embedded `nodeport.bpf.o` with its maps pinned next to the socket LB's (adopting pins a
//! previous loader left), attaches its two tc programs with clsact to named links in a given
//! network namespace, and writes the frontends that are served per packet.
//!
//! Backends are not written here: the tc programs read the socket LB's `lb4_services` and
//! `lb4_backends` (the same pinned maps), so a frontend is programmed through
//! [`crate::DatapathMaps`] like any other and then marked external with
//! [`NodePortLb::set_frontend`].
//!
//! Pin layout under `pin_dir` (the same directory as [`crate::SocketLb`]'s; one directory
//! per network namespace, because `np4_links` is keyed by interface index):
//! `lb4_services`, `lb4_backends` (shared), `np4_frontends`, `np4_links`, `np4_ct`,
//! `np4_affinity`. The tc filters are not bpf_links and cannot be pinned: they stay
//! attached in the kernel until [`NodePortLb::detach`] (or the link goes away); this
//! loader never detaches them on drop. `np4_links` records what was attached.

use std::{
    fs::{self, File},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    include_bytes_aligned,
    maps::{HashMap, Map, MapData, MapError, MapInfo},
    programs::{
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
        ProgramError, SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};

use crate::{
    error::BpfError,
    maps::{
        expected_sizes, ip_from_map, ip_to_map, CtKey, CtVal, NpFrontendVal, NpLinkKey, NpLinkVal,
        FE_F_LOCAL, LINK_F_EGRESS, LINK_F_INGRESS, NP_ALL_MAPS, NP_CT_MAP, NP_FRONTENDS_MAP,
        NP_LINKS_MAP,
    },
    service::ServiceKey,
};

/// The tc programs of the object (function names in `nodeport.bpf.c`): ingress, egress.
pub const NODEPORT_PROGRAMS: [&str; 2] = [INGRESS_PROGRAM, EGRESS_PROGRAM];
const INGRESS_PROGRAM: &str = "np4_ingress";
const EGRESS_PROGRAM: &str = "np4_egress";

/// The tc filter priority (`pref` in `tc filter show`) the programs are attached at.
pub const TC_PRIORITY: u16 = 0x4e50;
/// The tc filter handle the programs are attached with.
pub const TC_HANDLE: u32 = 0x4e50;

static NODEPORT_OBJ: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nodeport.bpf.o"));

/// `externalTrafficPolicy` of a per-packet frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrafficPolicy {
    /// Any backend; clients are SNATed to the node address when the backend is reached
    /// through a node link (another node), so its replies come back through this node.
    Cluster,
    /// Only backends behind this node (pod links, the node itself); the client address is
    /// kept. With no such backend the packet is dropped.
    Local,
}

impl TrafficPolicy {
    fn to_map(self) -> NpFrontendVal {
        NpFrontendVal {
            flags: match self {
                Self::Cluster => 0,
                Self::Local => FE_F_LOCAL,
            },
        }
    }

    fn from_map(v: NpFrontendVal) -> Self {
        if v.flags & FE_F_LOCAL != 0 {
            Self::Local
        } else {
            Self::Cluster
        }
    }
}

/// One link the programs are attached to, as recorded in `np4_links`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLink {
    /// Interface index in the namespace the programs were attached in.
    pub ifindex: u32,
    /// Its current name there; `None` if no such interface exists any more.
    pub name: Option<String>,
    /// Address clients are SNATed to when a backend is reached through this link.
    pub node_ip: Ipv4Addr,
    /// The ingress program is attached.
    pub ingress: bool,
    /// The egress program is attached.
    pub egress: bool,
}

/// The loaded per-packet datapath and its (pinned) maps.
#[derive(Debug)]
pub struct NodePortLb {
    bpf: Ebpf,
    pin_dir: PathBuf,
    frontends: HashMap<MapData, crate::maps::SvcKey, NpFrontendVal>,
    links: HashMap<MapData, NpLinkKey, NpLinkVal>,
    ct: HashMap<MapData, CtKey, CtVal>,
}

pub(crate) fn map_err(map: &'static str, op: &'static str) -> impl Fn(MapError) -> BpfError {
    move |e| BpfError::map(map, op, e)
}

pub(crate) fn prog_err(
    program: &'static str,
    op: &'static str,
) -> impl Fn(ProgramError) -> BpfError {
    move |e| BpfError::Program {
        program,
        op,
        source: Box::new(e),
    }
}

pub(crate) fn tc_err<'a>(link: &'a str, op: &'static str) -> impl Fn(TcError) -> BpfError + 'a {
    move |e| BpfError::Tc {
        link: link.to_owned(),
        op,
        source: Box::new(e),
    }
}

pub(crate) fn take_hash<K: aya::Pod, V: aya::Pod>(
    bpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, BpfError> {
    let map: Map = bpf
        .take_map(name)
        .ok_or(BpfError::MissingMap { map: name })?;
    HashMap::try_from(map).map_err(map_err(name, "open"))
}

pub(crate) fn absent_is_none<V>(r: Result<V, MapError>) -> Result<Option<V>, MapError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        // A delete of a missing key reports the syscall's ENOENT.
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn is_eexist(e: &ProgramError) -> bool {
    match e {
        ProgramError::TcError(TcError::NetlinkError(n)) | ProgramError::NetlinkError(n) => {
            n.raw_os_error() == Some(libc::EEXIST)
        }
        _ => false,
    }
}

/// Runs `f` on a short-lived thread inside the network namespace at `netns` (e.g.
/// `/run/netns/NAME`, `/proc/PID/ns/net`), so no caller thread ever changes namespace.
pub(crate) fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, BpfError> + Send,
) -> Result<T, BpfError> {
    let ns = File::open(netns).map_err(|e| BpfError::io("open netns", netns, e))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| BpfError::io("enter netns", netns, e.into()))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(BpfError::io(
                "netns thread",
                netns,
                std::io::Error::other("panicked"),
            ))
        })
    })
}

pub(crate) fn ifindex(netns: &Path, link: &str) -> Result<u32, BpfError> {
    nix::net::if_::if_nametoindex(link).map_err(|e| {
        BpfError::io(
            "find link (name it as `ip link` shows it in that namespace)",
            netns.join(link),
            e.into(),
        )
    })
}

impl NodePortLb {
    /// Loads the tc programs, re-using maps pinned under `pin_dir` (the socket LB's
    /// `lb4_services`/`lb4_backends` and this object's own, contents kept) or creating and
    /// pinning them. Refuses a pinned map of another layout. Programs are loaded, not
    /// attached; see [`Self::attach`].
    pub fn load_or_adopt(pin_dir: impl AsRef<Path>) -> Result<Self, BpfError> {
        let pin_dir = pin_dir.as_ref().to_path_buf();
        fs::create_dir_all(&pin_dir).map_err(|e| BpfError::io("create pin dir", &pin_dir, e))?;
        let fs = nix::sys::statfs::statfs(&pin_dir)
            .map_err(|e| BpfError::io("statfs", &pin_dir, e.into()))?;
        if fs.filesystem_type() != nix::sys::statfs::BPF_FS_MAGIC {
            return Err(BpfError::NotBpffs { path: pin_dir });
        }
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&'static str, PathBuf)> =
            NP_ALL_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
        for (name, path) in &paths {
            if path.exists() {
                let info = MapInfo::from_pin(path).map_err(map_err(name, "info"))?;
                let found = (info.key_size(), info.value_size());
                let expected = expected_sizes(name).unwrap_or(found);
                if found != expected {
                    return Err(BpfError::IncompatiblePin {
                        path: path.clone(),
                        found,
                        expected,
                    });
                }
            }
            loader.map_pin_path(name, path.as_path());
        }
        let mut bpf = loader
            .load(NODEPORT_OBJ)
            .map_err(|e| BpfError::LoadObject {
                object: "nodeport",
                pin_dir: pin_dir.clone(),
                source: Box::new(e),
            })?;
        for name in NODEPORT_PROGRAMS {
            classifier(&mut bpf, name)?
                .load()
                .map_err(prog_err(name, "load"))?;
        }
        Ok(Self {
            frontends: take_hash(&mut bpf, NP_FRONTENDS_MAP)?,
            links: take_hash(&mut bpf, NP_LINKS_MAP)?,
            ct: take_hash(&mut bpf, NP_CT_MAP)?,
            bpf,
            pin_dir,
        })
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Serves `key` per packet on the attached links with `policy`. Its backends are the
    /// socket LB's entry for the same key (program it with [`crate::DatapathMaps`]); until
    /// that exists, packets to it are dropped. Returns whether the map changed.
    pub fn set_frontend(
        &mut self,
        key: ServiceKey,
        policy: TrafficPolicy,
    ) -> Result<bool, BpfError> {
        let k = key.to_map().ok_or_else(|| BpfError::InvalidService {
            key,
            reason: "the per-packet (NodePort, externalIP, LoadBalancer) path is IPv4 only; \
                     serve IPv6 addresses through the socket LB as a ClusterIP"
                .into(),
        })?;
        let v = policy.to_map();
        let old = absent_is_none(self.frontends.get(&k, 0))
            .map_err(map_err(NP_FRONTENDS_MAP, "lookup"))?;
        if old == Some(v) {
            return Ok(false);
        }
        self.frontends
            .insert(k, v, 0)
            .map_err(map_err(NP_FRONTENDS_MAP, "update"))?;
        Ok(true)
    }

    /// Stops serving `key` per packet (flows already tracked keep their translation until
    /// they idle out). Returns whether it was there.
    pub fn remove_frontend(&mut self, key: ServiceKey) -> Result<bool, BpfError> {
        // An IPv6 frontend is never in the (IPv4) per-packet table.
        let Some(k) = key.to_map() else {
            return Ok(false);
        };
        absent_is_none(self.frontends.remove(&k))
            .map(|o| o.is_some())
            .map_err(map_err(NP_FRONTENDS_MAP, "delete"))
    }

    /// Every per-packet frontend with its policy, sorted.
    pub fn frontends(&self) -> Result<Vec<(ServiceKey, TrafficPolicy)>, BpfError> {
        let mut out = Vec::new();
        for kv in self.frontends.iter() {
            let (k, v) = kv.map_err(map_err(NP_FRONTENDS_MAP, "iterate"))?;
            if let Some(key) = ServiceKey::from_map(k) {
                out.push((key, TrafficPolicy::from_map(v)));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Number of entries in the connection-tracking map (two per tracked flow).
    pub fn tracked_entries(&self) -> Result<usize, BpfError> {
        let mut n = 0;
        for k in self.ct.keys() {
            k.map_err(map_err(NP_CT_MAP, "iterate"))?;
            n += 1;
        }
        Ok(n)
    }

    /// Attaches the ingress and egress programs to `link` in the network namespace at
    /// `netns` (adding the clsact qdisc if missing), as direct-action cls_bpf filters at
    /// priority [`TC_PRIORITY`], handle [`TC_HANDLE`], and records the link with `node_ip`,
    /// the address clients are SNATed to when a backend is reached through it. Idempotent:
    /// a filter already at that priority and handle is replaced in place by this loader's
    /// program (an upgrade, not counted). Returns how many programs were newly attached.
    /// The filters stay after this process exits.
    pub fn attach(
        &mut self,
        netns: impl AsRef<Path>,
        link: &str,
        node_ip: Ipv4Addr,
    ) -> Result<usize, BpfError> {
        let netns = netns.as_ref();
        if node_ip.is_unspecified() {
            return Err(BpfError::io(
                "attach: node_ip must be the node's address on the link, not 0.0.0.0",
                netns.join(link),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        // Resolve first, so the link is recorded as a node link before any packet is seen.
        let idx = in_netns(netns, || ifindex(netns, link))?;
        let lkey = NpLinkKey { ifindex: idx };
        let before =
            absent_is_none(self.links.get(&lkey, 0)).map_err(map_err(NP_LINKS_MAP, "lookup"))?;
        self.links
            .insert(
                NpLinkKey { ifindex: idx },
                NpLinkVal {
                    node_ip: ip_to_map(node_ip),
                    flags: LINK_F_INGRESS | LINK_F_EGRESS,
                },
                0,
            )
            .map_err(map_err(NP_LINKS_MAP, "update"))?;
        let bpf = &mut self.bpf;
        let result = in_netns(netns, move || {
            if ifindex(netns, link)? != idx {
                return Err(BpfError::io(
                    "attach: link changed while attaching",
                    netns.join(link),
                    std::io::Error::from(std::io::ErrorKind::Interrupted),
                ));
            }
            attach_filters(
                bpf,
                netns,
                link,
                TC_HANDLE,
                &[
                    (INGRESS_PROGRAM, TcAttachType::Ingress, TC_PRIORITY),
                    (EGRESS_PROGRAM, TcAttachType::Egress, TC_PRIORITY),
                ],
            )
        });
        if result.is_err() && before.is_none() {
            // Nothing of ours may be attached there: do not leave it recorded.
            let _ = self.links.remove(&lkey);
        }
        result
    }

    /// Detaches both programs from `link` in `netns` (every filter carrying their names on
    /// its ingress and egress) and forgets the link in `np4_links`. The clsact qdisc is left
    /// (other programs may use it). Detaching what is not attached is not an error.
    pub fn detach(&mut self, netns: impl AsRef<Path>, link: &str) -> Result<(), BpfError> {
        let netns = netns.as_ref();
        let idx = in_netns(netns, || {
            let idx = ifindex(netns, link)?;
            detach_filters(
                link,
                &[
                    (INGRESS_PROGRAM, TcAttachType::Ingress),
                    (EGRESS_PROGRAM, TcAttachType::Egress),
                ],
            )?;
            Ok(idx)
        })?;
        absent_is_none(self.links.remove(&NpLinkKey { ifindex: idx }))
            .map_err(map_err(NP_LINKS_MAP, "delete"))?;
        Ok(())
    }

    /// The links recorded in `np4_links`, with their current names in `netns`, sorted by
    /// interface index.
    pub fn attachments(&self, netns: impl AsRef<Path>) -> Result<Vec<NodeLink>, BpfError> {
        let mut recorded = Vec::new();
        for kv in self.links.iter() {
            recorded.push(kv.map_err(map_err(NP_LINKS_MAP, "iterate"))?);
        }
        recorded.sort_by_key(|(k, _)| k.ifindex);
        in_netns(netns.as_ref(), move || {
            Ok(recorded
                .into_iter()
                .map(|(k, v)| NodeLink {
                    ifindex: k.ifindex,
                    // nix answers an empty name, not an error, for an index that is gone.
                    name: nix::net::if_::if_indextoname(k.ifindex)
                        .ok()
                        .map(|c| c.to_string_lossy().into_owned())
                        .filter(|n| !n.is_empty()),
                    node_ip: ip_from_map(v.node_ip),
                    ingress: v.flags & LINK_F_INGRESS != 0,
                    egress: v.flags & LINK_F_EGRESS != 0,
                })
                .collect())
        })
    }
}

/// The per-packet frontends table as a reconciler sees it: which frontends the tc path
/// serves, with which policy. [`NodePortLb`] is the real one; a
/// `BTreeMap<ServiceKey, TrafficPolicy>` is an in-memory one for callers' unit tests.
pub trait ExternalFrontends {
    /// Every per-packet frontend with its policy, sorted.
    fn external_frontends(&self) -> Result<Vec<(ServiceKey, TrafficPolicy)>, BpfError>;
    /// Serves `key` per packet with `policy`; returns whether anything changed.
    fn set_external(&mut self, key: ServiceKey, policy: TrafficPolicy) -> Result<bool, BpfError>;
    /// Stops serving `key` per packet; returns whether it was there.
    fn remove_external(&mut self, key: ServiceKey) -> Result<bool, BpfError>;
}

impl ExternalFrontends for NodePortLb {
    fn external_frontends(&self) -> Result<Vec<(ServiceKey, TrafficPolicy)>, BpfError> {
        self.frontends()
    }
    fn set_external(&mut self, key: ServiceKey, policy: TrafficPolicy) -> Result<bool, BpfError> {
        self.set_frontend(key, policy)
    }
    fn remove_external(&mut self, key: ServiceKey) -> Result<bool, BpfError> {
        self.remove_frontend(key)
    }
}

impl ExternalFrontends for std::collections::BTreeMap<ServiceKey, TrafficPolicy> {
    fn external_frontends(&self) -> Result<Vec<(ServiceKey, TrafficPolicy)>, BpfError> {
        Ok(self.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn set_external(&mut self, key: ServiceKey, policy: TrafficPolicy) -> Result<bool, BpfError> {
        Ok(self.insert(key, policy) != Some(policy))
    }
    fn remove_external(&mut self, key: ServiceKey) -> Result<bool, BpfError> {
        Ok(self.remove(&key).is_some())
    }
}
/// Adds the clsact qdisc to `link` if it has none, then attaches each `(program, hook,
/// priority)` of `bpf` as a netlink tc filter with `handle`. A filter already there at that
/// priority and handle is replaced in place (no moment without one). Call it inside the
/// link's namespace (`netns` only names it in errors). Returns how many were newly attached.
///
/// The filters outlive the loader: dropping a netlink tc link detaches the filter, from
/// whatever namespace the dropping thread is in, so the handles are forgotten and
/// [`detach_filters`] finds the filters by program name.
pub(crate) fn attach_filters(
    bpf: &mut Ebpf,
    netns: &Path,
    link: &str,
    handle: u32,
    filters: &[(&'static str, TcAttachType, u16)],
) -> Result<usize, BpfError> {
    match tc::qdisc_add_clsact(link) {
        Ok(()) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(tc_err(link, "add clsact")(e)),
    }
    let mut attached = 0;
    for &(name, kind, priority) in filters {
        let prog = classifier(bpf, name)?;
        let opts = NlOptions {
            priority,
            handle: TcHandle::from(handle),
            classid: None,
        };
        let id = match prog.attach_with_options(link, kind, TcAttachOptions::Netlink(opts)) {
            Ok(id) => {
                attached += 1;
                id
            }
            Err(e) if is_eexist(&e) => {
                let old = SchedClassifierLink::attached(
                    link,
                    kind,
                    priority,
                    TcHandle::from(handle),
                    None,
                )
                .map_err(|e| BpfError::io("find link", netns.join(link), e))?;
                prog.attach_to_link(old)
                    .map_err(prog_err(name, "replace"))?
            }
            Err(e) => return Err(prog_err(name, "attach")(e)),
        };
        let taken = prog.take_link(id).map_err(prog_err(name, "take link"))?;
        std::mem::forget(taken);
    }
    Ok(attached)
}

/// Detaches every filter carrying each program's name from its hook on `link`. The clsact
/// qdisc is left (other programs may use it); what is not attached is not an error. Call
/// it inside the link's namespace.
pub(crate) fn detach_filters(
    link: &str,
    filters: &[(&'static str, TcAttachType)],
) -> Result<(), BpfError> {
    for &(name, kind) in filters {
        match tc::qdisc_detach_program(link, kind, name) {
            Ok(()) => {}
            Err(TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            // No clsact qdisc at all: nothing is attached.
            Err(TcError::NetlinkError(e))
                if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
            Err(e) => return Err(tc_err(link, "detach")(e)),
        }
    }
    Ok(())
}

pub(crate) fn classifier<'a>(
    bpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, BpfError> {
    bpf.program_mut(name)
        .ok_or_else(|| prog_err(name, "find")(ProgramError::UnexpectedProgramType))?
        .try_into()
        .map_err(prog_err(name, "convert"))
}

/// Removes the per-packet object's own pins under `pin_dir` (`np4_*`; the shared
/// `lb4_services`/`lb4_backends` are [`crate::unpin_all`]'s). Attached tc filters are not
/// touched: [`NodePortLb::detach`] them first. Keeps going past errors, returns the first.
pub fn unpin_nodeport(pin_dir: impl AsRef<Path>) -> Result<(), BpfError> {
    let mut first = None;
    for m in crate::maps::NP_OWN_MAPS {
        let p = pin_dir.as_ref().join(m);
        if p.exists() {
            if let Err(e) = fs::remove_file(&p) {
                first.get_or_insert(BpfError::io("unpin", p, e));
            }
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_round_trips_through_the_map_value() {
        for p in [TrafficPolicy::Cluster, TrafficPolicy::Local] {
            assert_eq!(TrafficPolicy::from_map(p.to_map()), p);
        }
        assert_eq!(TrafficPolicy::Local.to_map().flags, FE_F_LOCAL);
        assert_eq!(TrafficPolicy::Cluster.to_map().flags, 0);
    }

    #[test]
    fn the_object_has_both_programs_and_every_map() {
        let obj = aya_obj_names();
        for p in NODEPORT_PROGRAMS {
            assert!(obj.contains(p), "program {p} missing from nodeport.bpf.o");
        }
        for m in NP_ALL_MAPS {
            assert!(obj.contains(m), "map {m} missing from nodeport.bpf.o");
        }
    }

    /// The symbol names in the embedded object (a crude but dependency-free check).
    fn aya_obj_names() -> String {
        String::from_utf8_lossy(NODEPORT_OBJ).into_owned()
    }
}
