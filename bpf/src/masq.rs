//! `Masquerade`: eBPF source NAT of pod traffic leaving the node, with ip-masq-agent
//! semantics. It loads the embedded `masq.bpf.o` with its maps pinned under a pin directory
//! (adopting pins a previous loader left, so translations survive a manager restart),
//! attaches its two tc programs with clsact to the node's uplinks, and writes the
//! non-masquerade CIDR list.
//!
//! What the programs do (see `src/bpf/masq.bpf.c`): a TCP, UDP or ICMP echo packet leaving
//! an attached link whose source is not the link's own address and whose destination is not
//! in the non-masquerade list leaves with the link's address as source and a port (echo
//! identifier) from [`MASQ_PORT_MIN`]..=[`MASQ_PORT_MAX`]; replies are translated back to
//! the pod. The list is exactly what [`Masquerade::set_nonmasq_cidrs`] was given: callers
//! add ip-masq-agent's defaults, the VPC CIDR and `169.254.0.0/16` (unless link-local
//! traffic is masqueraded) themselves.
//!
//! tc order on a link shared with [`crate::NodePortLb`]: the ingress program runs before
//! NodePort's ([`MASQ_INGRESS_PRIORITY`] < [`crate::TC_PRIORITY`]), the egress program after
//! it ([`MASQ_EGRESS_PRIORITY`]), so replies of Service flows are never masqueraded.
//!
//! Pin layout under `pin_dir`: `masq4_links`, `masq4_nonmasq`, `masq4_ct`, `masq4_stats`.
//! The tc filters are not bpf_links: they stay attached until [`Masquerade::detach`] (or
//! the link goes away); dropping the loader leaves them.

use std::{
    collections::BTreeSet,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    include_bytes_aligned,
    maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData, MapInfo, PerCpuArray},
    programs::TcAttachType,
    Ebpf, EbpfLoader,
};
use ipnet::Ipv4Net;

use crate::{
    error::BpfError,
    maps::{
        expected_sizes, ip_from_map, ip_to_map, CtKey, MasqCtVal, MasqLinkKey, MasqLinkVal,
        MASQ_ALL_MAPS, MASQ_CT_MAP, MASQ_LINKS_MAP, MASQ_NONMASQ_MAP, MASQ_STATS_MAP,
        MASQ_STAT_COUNT,
    },
    nodeport::{
        absent_is_none, attach_filters, classifier, detach_filters, ifindex, in_netns, map_err,
        prog_err, take_hash,
    },
};

pub use crate::maps::{MASQ_PORT_MAX, MASQ_PORT_MIN};

/// The tc programs of the object (function names in `masq.bpf.c`): ingress, egress.
pub const MASQ_PROGRAMS: [&str; 2] = [INGRESS_PROGRAM, EGRESS_PROGRAM];
const INGRESS_PROGRAM: &str = "masq4_ingress";
const EGRESS_PROGRAM: &str = "masq4_egress";

/// tc filter priority of the ingress program: before NodePort's ([`crate::TC_PRIORITY`]).
pub const MASQ_INGRESS_PRIORITY: u16 = 0x4d50;
/// tc filter priority of the egress program: after NodePort's ([`crate::TC_PRIORITY`]).
pub const MASQ_EGRESS_PRIORITY: u16 = 0x4f50;
/// tc filter handle of both programs.
pub const MASQ_TC_HANDLE: u32 = 0x4d51;

/// Largest number of entries in the non-masquerade list (`max_entries` of the trie).
pub const MAX_NONMASQ_CIDRS: usize = 1024;

/// ip-masq-agent's default `nonMasqueradeCIDRs` (used when its configuration gives none):
/// the private, shared and documentation ranges.
pub const IP_MASQ_AGENT_DEFAULT_CIDRS: [&str; 11] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "240.0.0.0/4",
];

/// The link-local range, never masqueraded unless `masqLinkLocal` is set.
pub const LINK_LOCAL_CIDR: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(169, 254, 0, 0), 16) {
    Ok(n) => n,
    Err(_) => panic!("valid literal"),
};

/// [`IP_MASQ_AGENT_DEFAULT_CIDRS`] parsed.
pub fn default_nonmasq_cidrs() -> Vec<Ipv4Net> {
    IP_MASQ_AGENT_DEFAULT_CIDRS
        .iter()
        .map(|c| c.parse().expect("valid literal"))
        .collect()
}

/// The list the datapath gets, with ip-masq-agent's rules: `cidrs` (the configured
/// `nonMasqueradeCIDRs`), plus `always` (e.g. the VPC CIDRs), plus [`LINK_LOCAL_CIDR`]
/// unless `masq_link_local`; host bits cleared, sorted, duplicates removed.
pub fn nonmasq_list(cidrs: &[Ipv4Net], masq_link_local: bool, always: &[Ipv4Net]) -> Vec<Ipv4Net> {
    let mut set: BTreeSet<Ipv4Net> = cidrs.iter().chain(always).map(Ipv4Net::trunc).collect();
    if !masq_link_local {
        set.insert(LINK_LOCAL_CIDR);
    }
    set.into_iter().collect()
}

static MASQ_OBJ: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/masq.bpf.o"));

/// The datapath's counters, summed over CPUs (indices `MASQ_STAT_*` of `masq.bpf.c`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MasqCounters {
    /// Flows given a translation.
    pub new_flows: u64,
    /// Packets translated at egress.
    pub snat_packets: u64,
    /// Replies translated back at ingress.
    pub reverse_packets: u64,
    /// Packets from pods to a destination in the non-masquerade list (left alone).
    pub exempt_packets: u64,
    /// Packets dropped because no port was free for their destination.
    pub no_port_drops: u64,
    /// Packets dropped because a rewrite failed.
    pub error_drops: u64,
    /// Packets from pods to outside the list that cannot be translated (other protocols,
    /// fragments, ICMP errors); they leave untranslated.
    pub unsupported_packets: u64,
    /// Flows opened from outside straight to a pod address (their replies keep the pod's
    /// source).
    pub inbound_flows: u64,
}

impl MasqCounters {
    fn from_slots(v: &[u64; MASQ_STAT_COUNT as usize]) -> Self {
        Self {
            new_flows: v[0],
            snat_packets: v[1],
            reverse_packets: v[2],
            exempt_packets: v[3],
            no_port_drops: v[4],
            error_drops: v[5],
            unsupported_packets: v[6],
            inbound_flows: v[7],
        }
    }
}

/// One uplink the programs are attached to, as recorded in `masq4_links`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasqLink {
    /// Interface index in the namespace the programs were attached in.
    pub ifindex: u32,
    /// Its current name there; `None` if no such interface exists any more.
    pub name: Option<String>,
    /// The address pods are masqueraded to on this link.
    pub addr: Ipv4Addr,
}

/// What [`Masquerade::set_nonmasq_cidrs`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrChanges {
    /// Entries written.
    pub added: Vec<Ipv4Net>,
    /// Entries removed.
    pub removed: Vec<Ipv4Net>,
}

/// The loaded masquerade datapath and its (pinned) maps.
pub struct Masquerade {
    bpf: Ebpf,
    pin_dir: PathBuf,
    links: HashMap<MapData, MasqLinkKey, MasqLinkVal>,
    nonmasq: LpmTrie<MapData, u32, u32>,
    ct: HashMap<MapData, CtKey, MasqCtVal>,
    stats: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for Masquerade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masquerade")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl Masquerade {
    /// Loads the tc programs, re-using maps pinned under `pin_dir` (contents kept) or
    /// creating and pinning them. Refuses a pinned map of another layout. Programs are
    /// loaded, not attached; see [`Self::attach`].
    pub fn load_or_adopt(pin_dir: impl AsRef<Path>) -> Result<Self, BpfError> {
        let pin_dir = pin_dir.as_ref().to_path_buf();
        fs::create_dir_all(&pin_dir).map_err(|e| BpfError::io("create pin dir", &pin_dir, e))?;
        let fs = nix::sys::statfs::statfs(&pin_dir)
            .map_err(|e| BpfError::io("statfs", &pin_dir, e.into()))?;
        if fs.filesystem_type() != nix::sys::statfs::BPF_FS_MAGIC {
            return Err(BpfError::NotBpffs { path: pin_dir });
        }
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&'static str, PathBuf)> = MASQ_ALL_MAPS
            .iter()
            .map(|m| (*m, pin_dir.join(m)))
            .collect();
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
        let mut bpf = loader.load(MASQ_OBJ).map_err(|e| BpfError::LoadObject {
            object: "masq",
            pin_dir: pin_dir.clone(),
            source: Box::new(e),
        })?;
        for name in MASQ_PROGRAMS {
            classifier(&mut bpf, name)?
                .load()
                .map_err(prog_err(name, "load"))?;
        }
        let nonmasq: Map = bpf.take_map(MASQ_NONMASQ_MAP).ok_or(BpfError::MissingMap {
            map: MASQ_NONMASQ_MAP,
        })?;
        let stats: Map = bpf.take_map(MASQ_STATS_MAP).ok_or(BpfError::MissingMap {
            map: MASQ_STATS_MAP,
        })?;
        Ok(Self {
            links: take_hash(&mut bpf, MASQ_LINKS_MAP)?,
            ct: take_hash(&mut bpf, MASQ_CT_MAP)?,
            nonmasq: LpmTrie::try_from(nonmasq).map_err(map_err(MASQ_NONMASQ_MAP, "open"))?,
            stats: PerCpuArray::try_from(stats).map_err(map_err(MASQ_STATS_MAP, "open"))?,
            bpf,
            pin_dir,
        })
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The non-masquerade list as the trie holds it, sorted.
    pub fn nonmasq_cidrs(&self) -> Result<Vec<Ipv4Net>, BpfError> {
        let mut out = Vec::new();
        for k in self.nonmasq.keys() {
            let k = k.map_err(map_err(MASQ_NONMASQ_MAP, "iterate"))?;
            let net = Ipv4Net::new(ip_from_map(k.data()), k.prefix_len() as u8).map_err(|_| {
                BpfError::io(
                    "read non-masquerade list: an entry has a prefix length over 32",
                    self.pin_dir.join(MASQ_NONMASQ_MAP),
                    std::io::Error::from(std::io::ErrorKind::InvalidData),
                )
            })?;
            out.push(net);
        }
        out.sort();
        Ok(out)
    }

    /// Makes the non-masquerade list exactly `cidrs` (host bits are cleared; duplicates
    /// and order do not matter), diff-wise: new entries are written before stale ones are
    /// removed, so an address in both the old and the new list is never masqueraded in
    /// between. At most [`MAX_NONMASQ_CIDRS`] distinct entries.
    pub fn set_nonmasq_cidrs(&mut self, cidrs: &[Ipv4Net]) -> Result<CidrChanges, BpfError> {
        let want: BTreeSet<Ipv4Net> = cidrs.iter().map(Ipv4Net::trunc).collect();
        if want.len() > MAX_NONMASQ_CIDRS {
            return Err(BpfError::io(
                "set non-masquerade CIDRs: the list is longer than MAX_NONMASQ_CIDRS (1024)",
                self.pin_dir.join(MASQ_NONMASQ_MAP),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{} distinct CIDRs", want.len()),
                ),
            ));
        }
        let have: BTreeSet<Ipv4Net> = self.nonmasq_cidrs()?.into_iter().collect();
        let mut changes = CidrChanges::default();
        for net in want.difference(&have) {
            self.nonmasq
                .insert(&lpm_key(*net), 1, 0)
                .map_err(map_err(MASQ_NONMASQ_MAP, "update"))?;
            changes.added.push(*net);
        }
        for net in have.difference(&want) {
            absent_is_none(self.nonmasq.remove(&lpm_key(*net)))
                .map_err(map_err(MASQ_NONMASQ_MAP, "delete"))?;
            changes.removed.push(*net);
        }
        Ok(changes)
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<MasqCounters, BpfError> {
        let mut sums = [0u64; MASQ_STAT_COUNT as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            let per_cpu = self
                .stats
                .get(&(i as u32), 0)
                .map_err(map_err(MASQ_STATS_MAP, "lookup"))?;
            *sum = per_cpu.iter().copied().fold(0u64, u64::wrapping_add);
        }
        Ok(MasqCounters::from_slots(&sums))
    }

    /// Number of entries in the connection-tracking map (two per masqueraded flow, one per
    /// flow opened from outside).
    pub fn tracked_entries(&self) -> Result<usize, BpfError> {
        let mut n = 0;
        for k in self.ct.keys() {
            k.map_err(map_err(MASQ_CT_MAP, "iterate"))?;
            n += 1;
        }
        Ok(n)
    }

    /// Attaches the ingress and egress programs to `link` in the network namespace at
    /// `netns` (adding the clsact qdisc if missing) and records the link with `addr`, the
    /// address pods are masqueraded to through it (the node's or the ENI's primary
    /// address). Idempotent: a filter already at this loader's priority and handle is
    /// replaced in place (an upgrade, not counted); attaching again with another address
    /// updates the address. Returns how many programs were newly attached. The filters
    /// stay after this process exits.
    pub fn attach(
        &mut self,
        netns: impl AsRef<Path>,
        link: &str,
        addr: Ipv4Addr,
    ) -> Result<usize, BpfError> {
        let netns = netns.as_ref();
        if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
            return Err(BpfError::io(
                "masquerade attach: the address must be the link's primary unicast address",
                netns.join(link),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        let idx = in_netns(netns, || ifindex(netns, link))?;
        let lkey = MasqLinkKey { ifindex: idx };
        let before =
            absent_is_none(self.links.get(&lkey, 0)).map_err(map_err(MASQ_LINKS_MAP, "lookup"))?;
        self.links
            .insert(
                lkey,
                MasqLinkVal {
                    addr: ip_to_map(addr),
                    flags: 0,
                },
                0,
            )
            .map_err(map_err(MASQ_LINKS_MAP, "update"))?;
        let bpf = &mut self.bpf;
        let result = in_netns(netns, move || {
            if ifindex(netns, link)? != idx {
                return Err(BpfError::io(
                    "masquerade attach: link changed while attaching",
                    netns.join(link),
                    std::io::Error::from(std::io::ErrorKind::Interrupted),
                ));
            }
            attach_filters(
                bpf,
                netns,
                link,
                MASQ_TC_HANDLE,
                &[
                    (
                        INGRESS_PROGRAM,
                        TcAttachType::Ingress,
                        MASQ_INGRESS_PRIORITY,
                    ),
                    (EGRESS_PROGRAM, TcAttachType::Egress, MASQ_EGRESS_PRIORITY),
                ],
            )
        });
        if result.is_err() && before.is_none() {
            let _ = self.links.remove(&lkey);
        }
        result
    }

    /// Detaches both programs from `link` in `netns` and forgets the link in
    /// `masq4_links`. The clsact qdisc is left. Detaching what is not attached is not an
    /// error. Flows already translated through the link lose their reverse translation.
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
        absent_is_none(self.links.remove(&MasqLinkKey { ifindex: idx }))
            .map_err(map_err(MASQ_LINKS_MAP, "delete"))?;
        Ok(())
    }

    /// Removes the record of the link with interface index `ifindex` without touching any
    /// filter: for a link that no longer exists (its filters went with it), so that a new
    /// link given the same index later is not taken for it. Idempotent.
    pub fn forget(&mut self, ifindex: u32) -> Result<(), BpfError> {
        absent_is_none(self.links.remove(&MasqLinkKey { ifindex }))
            .map_err(map_err(MASQ_LINKS_MAP, "delete"))?;
        Ok(())
    }

    /// The links recorded in `masq4_links`, with their current names in `netns`, sorted by
    /// interface index.
    pub fn links(&self, netns: impl AsRef<Path>) -> Result<Vec<MasqLink>, BpfError> {
        let mut recorded = Vec::new();
        for kv in self.links.iter() {
            recorded.push(kv.map_err(map_err(MASQ_LINKS_MAP, "iterate"))?);
        }
        recorded.sort_by_key(|(k, _)| k.ifindex);
        in_netns(netns.as_ref(), move || {
            Ok(recorded
                .into_iter()
                .map(|(k, v)| MasqLink {
                    ifindex: k.ifindex,
                    // nix answers an empty name, not an error, for an index that is gone.
                    name: nix::net::if_::if_indextoname(k.ifindex)
                        .ok()
                        .map(|c| c.to_string_lossy().into_owned())
                        .filter(|n| !n.is_empty()),
                    addr: ip_from_map(v.addr),
                })
                .collect())
        })
    }
}

fn lpm_key(net: Ipv4Net) -> Key<u32> {
    Key::new(u32::from(net.prefix_len()), ip_to_map(net.network()))
}

/// Removes the masquerade object's pins under `pin_dir`. Attached tc filters are not
/// touched: [`Masquerade::detach`] them first. Keeps going past errors, returns the first.
pub fn unpin_masq(pin_dir: impl AsRef<Path>) -> Result<(), BpfError> {
    let mut first = None;
    for m in MASQ_ALL_MAPS {
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
    fn the_object_has_both_programs_and_every_map() {
        let obj = String::from_utf8_lossy(MASQ_OBJ);
        for p in MASQ_PROGRAMS {
            assert!(obj.contains(p), "program {p} missing from masq.bpf.o");
        }
        for m in MASQ_ALL_MAPS {
            assert!(obj.contains(m), "map {m} missing from masq.bpf.o");
        }
    }

    #[test]
    fn lpm_keys_carry_the_network_in_map_byte_order() {
        let k = lpm_key("10.1.2.3/8".parse().unwrap());
        assert_eq!(k.prefix_len(), 8);
        assert_eq!(ip_from_map(k.data()), Ipv4Addr::new(10, 0, 0, 0));
    }

    #[test]
    fn the_list_adds_link_local_unless_masqueraded_and_the_extra_cidrs() {
        let vpc: Ipv4Net = "172.31.0.0/16".parse().unwrap();
        let l = nonmasq_list(&default_nonmasq_cidrs(), false, &[vpc]);
        assert_eq!(l.len(), 13, "{l:?}");
        assert!(l.contains(&LINK_LOCAL_CIDR) && l.contains(&vpc));
        let l = nonmasq_list(&default_nonmasq_cidrs(), true, &[]);
        assert_eq!(l.len(), 11);
        assert!(!l.contains(&LINK_LOCAL_CIDR));
        // Host bits cleared, duplicates merged, sorted.
        let l = nonmasq_list(
            &["10.1.2.3/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
            true,
            &["1.2.3.4/24".parse().unwrap()],
        );
        assert_eq!(
            l,
            vec![
                "1.2.3.0/24".parse::<Ipv4Net>().unwrap(),
                "10.0.0.0/8".parse().unwrap()
            ]
        );
    }

    #[test]
    fn tc_order_puts_nodeport_between_ingress_and_egress() {
        const {
            assert!(MASQ_INGRESS_PRIORITY < crate::TC_PRIORITY);
            assert!(MASQ_EGRESS_PRIORITY > crate::TC_PRIORITY);
        }
    }

    #[test]
    fn counters_map_their_slots_in_order() {
        let c = MasqCounters::from_slots(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            (
                c.new_flows,
                c.snat_packets,
                c.reverse_packets,
                c.exempt_packets
            ),
            (1, 2, 3, 4)
        );
        assert_eq!(
            (
                c.no_port_drops,
                c.error_drops,
                c.unsupported_packets,
                c.inbound_flows
            ),
            (5, 6, 7, 8)
        );
    }
}
