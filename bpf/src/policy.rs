//! NetworkPolicy datapath loader: the pinned policy maps, per-pod tc attachments, rule
//! writes and counters. The rules themselves are computed by `eni-policy`; this module only
//! encodes them ([`encode_rules`]) and puts them in the maps.
//!
//! Pin layout under `pin_dir` (default [`crate::DEFAULT_PIN_DIR`], shared with the socket LB):
//! `pol_pods`, `pol_rules`, `pol_ct`, `pol_stats` (maps) and
//! `links/tc-<netns inode>-<ifname>/pol_to_pod|pol_from_pod` (one TCX bpf_link per hook).
//!
//! Every attachment loads its own instance of `policy.bpf.c` with the pod's address as a
//! read-only global, so the program needs no lookup to know whose link it is on. A pod's
//! rules are double-buffered: the new set is written into the inactive slot, then one
//! update of the pod's entry switches slot and revision, then the old slot is cleared; the
//! datapath never sees half a rule set.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    net::Ipv4Addr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    include_bytes_aligned,
    maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData, MapError, MapInfo},
    programs::{
        links::{FdLink, LinkOrder, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use eni_policy::{Allowed, DirectionRules, PodRules};
use ipnet::Ipv4Net;

use crate::{
    error::BpfError,
    maps::{
        ip_from_map, ip_to_map, policy_expected_sizes, PolCtKey, PolCtVal, PolPodVal, PolPortRange,
        PolRuleKey, PolRuleVal, PolStats, POL_ALL_MAPS, POL_CT_MAP, POL_DIR_EGRESS,
        POL_DIR_INGRESS, POL_F_EGRESS, POL_F_INGRESS, POL_MAX_PORT_RANGES, POL_PODS_MAP,
        POL_RULES_MAP, POL_RULE_PREFIX_BASE, POL_STATS_MAP,
    },
};

static POLICY_OBJ: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policy.bpf.o"));

/// The program for traffic to the pod.
pub const PROG_TO_POD: &str = "pol_to_pod";
/// The program for traffic from the pod.
pub const PROG_FROM_POD: &str = "pol_from_pod";

/// Errors of the policy datapath.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The embedded policy object could not be loaded (or a pinned map not adopted).
    #[error("loading the policy object with maps pinned under {pin_dir}")]
    Load {
        /// The pin directory.
        pin_dir: PathBuf,
        /// What aya reported.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A map, program, link or pin operation failed.
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// A pod's rules cannot be put in the maps (nothing was changed).
    #[error("pod {pod}: {reason}")]
    InvalidRules {
        /// The pod address.
        pod: Ipv4Addr,
        /// Why, and what to change.
        reason: String,
    },
    /// The interface does not exist in the namespace.
    #[error("interface {ifname} not found in network namespace {netns}")]
    NoInterface {
        /// The interface name.
        ifname: String,
        /// The namespace path.
        netns: PathBuf,
    },
}

/// Where the programs sit relative to the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkSide {
    /// The host end of the pod's veth: tc ingress is the pod's egress.
    HostVeth,
    /// A link inside the pod (ipvlan slave, exclusive ENI): tc ingress is the pod's ingress.
    InPod,
}

impl LinkSide {
    fn hooks(self) -> [(&'static str, TcAttachType); 2] {
        match self {
            Self::HostVeth => [
                (PROG_FROM_POD, TcAttachType::Ingress),
                (PROG_TO_POD, TcAttachType::Egress),
            ],
            Self::InPod => [
                (PROG_TO_POD, TcAttachType::Ingress),
                (PROG_FROM_POD, TcAttachType::Egress),
            ],
        }
    }
}

/// One encoded rule entry.
pub type RuleEntry = (Key<PolRuleKey>, PolRuleVal);

fn encode_allowed(pod: Ipv4Addr, a: &Allowed) -> Result<PolRuleVal, PolicyError> {
    if a.ranges.len() > POL_MAX_PORT_RANGES {
        return Err(PolicyError::InvalidRules {
            pod,
            reason: format!(
                "an entry has {} port ranges, the map value holds {POL_MAX_PORT_RANGES}",
                a.ranges.len()
            ),
        });
    }
    let mut v = PolRuleVal {
        any: u8::from(a.any),
        count: a.ranges.len() as u8,
        ..PolRuleVal::default()
    };
    for (slot, r) in v.ranges.iter_mut().zip(&a.ranges) {
        *slot = PolPortRange {
            start: r.start,
            end: r.end,
            proto: r.protocol.number(),
            pad: [0; 3],
        };
    }
    Ok(v)
}

/// The `pol_pods` flags and the `pol_rules` entries of `rules` in `slot`. Pure; the only
/// place [`PodRules`] become map bytes.
pub fn encode_rules(rules: &PodRules, slot: u8) -> Result<(u8, Vec<RuleEntry>), PolicyError> {
    let mut flags = 0;
    let mut entries = Vec::new();
    for (dir, flag, d) in [
        (POL_DIR_INGRESS, POL_F_INGRESS, &rules.ingress),
        (POL_DIR_EGRESS, POL_F_EGRESS, &rules.egress),
    ] {
        let DirectionRules::Enforced(list) = d else {
            continue;
        };
        flags |= flag;
        for r in list {
            let key = PolRuleKey {
                pod_ip: ip_to_map(rules.ip),
                dir,
                slot,
                pad: 0,
                peer: ip_to_map(r.cidr.network()),
            };
            entries.push((
                Key::new(POL_RULE_PREFIX_BASE + u32::from(r.cidr.prefix_len()), key),
                encode_allowed(rules.ip, &r.allowed)?,
            ));
        }
    }
    Ok((flags, entries))
}

/// A pod's state as read back from the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPolicyState {
    /// The pod address.
    pub ip: Ipv4Addr,
    /// Its `pol_pods` entry.
    pub pod: PolPodVal,
    /// Active-slot rules: (direction, peer prefix, value).
    pub rules: Vec<(u8, Ipv4Net, PolRuleVal)>,
    /// Its counters (zero when absent).
    pub stats: PolStats,
}

/// The policy maps, loaded or adopted from their pins.
#[derive(Debug)]
pub struct PolicyDatapath {
    pin_dir: PathBuf,
    pods: HashMap<MapData, u32, PolPodVal>,
    rules: LpmTrie<MapData, PolRuleKey, PolRuleVal>,
    ct: HashMap<MapData, PolCtKey, PolCtVal>,
    stats: HashMap<MapData, u32, PolStats>,
    /// Each pod's `pol_rules` keys as (prefix length, data), so writing one pod does not
    /// scan every pod's rules. Built by one scan the first time it is needed (adopting what
    /// a previous run wrote) and kept in step with each write; dropped after a failed
    /// write, to be rebuilt from the map. Only the manager writes these maps.
    index: Option<RuleIndex>,
}

/// Pod address -> its `pol_rules` keys as (prefix length, data).
type RuleIndex = BTreeMap<u32, BTreeSet<(u32, PolRuleKey)>>;

fn map_err(map: &'static str, op: &'static str) -> impl Fn(MapError) -> PolicyError {
    move |e| BpfError::map(map, op, e).into()
}

fn prog_err(
    program: &'static str,
    op: &'static str,
) -> impl Fn(aya::programs::ProgramError) -> PolicyError {
    move |e| {
        BpfError::Program {
            program,
            op,
            source: Box::new(e),
        }
        .into()
    }
}

fn absent_is_none<V>(r: Result<V, MapError>) -> Result<Option<V>, MapError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        // aya reports a delete of an absent key as the raw ENOENT.
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Checks the pin directory is on bpffs and that pinned maps have this build's layouts,
/// and loads the object with every map pinned there (adopting existing pins).
fn load_object(pin_dir: &Path, pod_ip: Option<u32>) -> Result<Ebpf, PolicyError> {
    fs::create_dir_all(pin_dir).map_err(|e| BpfError::io("create pin dir", pin_dir, e))?;
    let fs =
        nix::sys::statfs::statfs(pin_dir).map_err(|e| BpfError::io("statfs", pin_dir, e.into()))?;
    if fs.filesystem_type() != nix::sys::statfs::BPF_FS_MAGIC {
        return Err(BpfError::NotBpffs {
            path: pin_dir.to_path_buf(),
        }
        .into());
    }
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&'static str, PathBuf)> =
        POL_ALL_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
    for (name, path) in &paths {
        if path.exists() {
            let info = MapInfo::from_pin(path).map_err(map_err(name, "info"))?;
            let found = (info.key_size(), info.value_size());
            let expected = policy_expected_sizes(name).unwrap_or(found);
            if found != expected {
                return Err(BpfError::IncompatiblePin {
                    path: path.clone(),
                    found,
                    expected,
                }
                .into());
            }
        }
        loader.map_pin_path(name, path.as_path());
    }
    let ip = pod_ip.unwrap_or(0);
    loader.override_global("POD_IP", &ip, true);
    loader.load(POLICY_OBJ).map_err(|e| PolicyError::Load {
        pin_dir: pin_dir.to_path_buf(),
        source: Box::new(e),
    })
}

fn take<T: TryFrom<Map, Error = MapError>>(
    bpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, PolicyError> {
    let map = bpf
        .take_map(name)
        .ok_or(BpfError::MissingMap { map: name })?;
    T::try_from(map).map_err(map_err(name, "open"))
}

fn open_pinned<T: TryFrom<Map, Error = MapError>>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<T, PolicyError> {
    let path = pin_dir.join(name);
    if !path.exists() {
        return Err(BpfError::io(
            "open pin",
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no map is pinned there"),
        )
        .into());
    }
    let data = MapData::from_pin(&path).map_err(map_err(name, "open pin"))?;
    T::try_from(Map::from_map_data(data).map_err(map_err(name, "open"))?)
        .map_err(map_err(name, "open"))
}

impl PolicyDatapath {
    /// Creates the policy maps under `pin_dir`, or adopts the ones pinned there (their
    /// contents are kept). Loads no program into any link.
    pub fn load_or_adopt(pin_dir: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let pin_dir = pin_dir.as_ref().to_path_buf();
        let mut bpf = load_object(&pin_dir, None)?;
        Ok(Self {
            pods: take(&mut bpf, POL_PODS_MAP)?,
            rules: take(&mut bpf, POL_RULES_MAP)?,
            ct: take(&mut bpf, POL_CT_MAP)?,
            stats: take(&mut bpf, POL_STATS_MAP)?,
            index: None,
            pin_dir,
        })
    }

    /// Opens the maps pinned under `pin_dir` without loading anything (for inspection).
    pub fn open_pinned(pin_dir: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let pin_dir = pin_dir.as_ref().to_path_buf();
        Ok(Self {
            pods: open_pinned(&pin_dir, POL_PODS_MAP)?,
            rules: open_pinned(&pin_dir, POL_RULES_MAP)?,
            ct: open_pinned(&pin_dir, POL_CT_MAP)?,
            stats: open_pinned(&pin_dir, POL_STATS_MAP)?,
            index: None,
            pin_dir,
        })
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn index(&mut self) -> Result<&mut RuleIndex, PolicyError> {
        if self.index.is_none() {
            let mut index = RuleIndex::new();
            for k in self.rules.keys() {
                let k = k.map_err(map_err(POL_RULES_MAP, "iterate"))?;
                let d = k.data();
                index
                    .entry(d.pod_ip)
                    .or_default()
                    .insert((k.prefix_len(), d));
            }
            self.index = Some(index);
        }
        Ok(self.index.as_mut().expect("built above"))
    }

    fn rule_keys(
        &mut self,
        pod: u32,
        slot: Option<u8>,
    ) -> Result<Vec<(u32, PolRuleKey)>, PolicyError> {
        Ok(self
            .index()?
            .get(&pod)
            .into_iter()
            .flatten()
            .filter(|(_, d)| slot.is_none_or(|s| d.slot == s))
            .copied()
            .collect())
    }

    fn delete_rules(&mut self, keys: &[(u32, PolRuleKey)]) -> Result<(), PolicyError> {
        for &(prefix, data) in keys {
            absent_is_none(self.rules.remove(&Key::new(prefix, data)))
                .map_err(map_err(POL_RULES_MAP, "delete"))?;
            if let Some(set) = self.index.as_mut().and_then(|i| i.get_mut(&data.pod_ip)) {
                set.remove(&(prefix, data));
                if set.is_empty() {
                    self.index.as_mut().map(|i| i.remove(&data.pod_ip));
                }
            }
        }
        Ok(())
    }

    /// Puts a pod's compiled rules in force, atomically for the datapath: connections the
    /// new rules still allow keep going, the others are cut at their next packet.
    /// Validates everything before any map is touched.
    pub fn write_pod(&mut self, rules: &PodRules) -> Result<(), PolicyError> {
        let r = self.write_pod_inner(rules);
        if r.is_err() {
            self.index = None;
        }
        r
    }

    fn write_pod_inner(&mut self, rules: &PodRules) -> Result<(), PolicyError> {
        let pod = ip_to_map(rules.ip);
        let old =
            absent_is_none(self.pods.get(&pod, 0)).map_err(map_err(POL_PODS_MAP, "lookup"))?;
        let slot = old.map_or(0, |o| 1 - (o.slot & 1));
        let (flags, entries) = encode_rules(rules, slot)?;

        // Leftovers in the target slot (an interrupted write) go first.
        let stale = self.rule_keys(pod, Some(slot))?;
        self.delete_rules(&stale)?;
        for (k, v) in &entries {
            self.rules
                .insert(k, v, 0)
                .map_err(map_err(POL_RULES_MAP, "update"))?;
            self.index()?
                .entry(pod)
                .or_default()
                .insert((k.prefix_len(), k.data()));
        }
        let rev = match old {
            Some(o) => o.rev.wrapping_add(1),
            // A fresh start that conntrack entries of an earlier pod of this address
            // cannot share.
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.subsec_nanos() | 1),
        };
        const BPF_NOEXIST: u64 = 1;
        match self.stats.insert(pod, PolStats::default(), BPF_NOEXIST) {
            Ok(()) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(map_err(POL_STATS_MAP, "update")(e)),
        }
        self.pods
            .insert(
                pod,
                PolPodVal {
                    rev,
                    slot,
                    flags,
                    pad: 0,
                },
                0,
            )
            .map_err(map_err(POL_PODS_MAP, "update"))?;
        if old.is_some() {
            let previous = self.rule_keys(pod, Some(1 - slot))?;
            self.delete_rules(&previous)?;
        }
        Ok(())
    }

    /// Removes a pod's entry (its links then drop everything), rules, counters and
    /// conntrack entries. Idempotent.
    pub fn remove_pod(&mut self, ip: Ipv4Addr) -> Result<(), PolicyError> {
        let r = self.remove_pod_inner(ip);
        if r.is_err() {
            self.index = None;
        }
        r
    }

    fn remove_pod_inner(&mut self, ip: Ipv4Addr) -> Result<(), PolicyError> {
        let pod = ip_to_map(ip);
        absent_is_none(self.pods.remove(&pod)).map_err(map_err(POL_PODS_MAP, "delete"))?;
        let keys = self.rule_keys(pod, None)?;
        self.delete_rules(&keys)?;
        absent_is_none(self.stats.remove(&pod)).map_err(map_err(POL_STATS_MAP, "delete"))?;
        let flows: Vec<PolCtKey> = self
            .ct
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.pod_ip == pod)
            .collect();
        for k in flows {
            absent_is_none(self.ct.remove(&k)).map_err(map_err(POL_CT_MAP, "delete"))?;
        }
        Ok(())
    }

    /// How many `pol_rules` entries exist, both slots of every pod (what a write leaves
    /// behind is exactly the active slot's entries).
    pub fn rule_entries(&self) -> Result<usize, PolicyError> {
        let mut n = 0;
        for k in self.rules.keys() {
            k.map_err(map_err(POL_RULES_MAP, "iterate"))?;
            n += 1;
        }
        Ok(n)
    }

    /// A pod's counters, `None` when the pod has none.
    pub fn stats(&self, ip: Ipv4Addr) -> Result<Option<PolStats>, PolicyError> {
        absent_is_none(self.stats.get(&ip_to_map(ip), 0)).map_err(map_err(POL_STATS_MAP, "lookup"))
    }

    /// Every pod with rules, with its active rules and counters.
    pub fn list(&self) -> Result<Vec<PodPolicyState>, PolicyError> {
        let mut pods = Vec::new();
        for item in self.pods.iter() {
            let (ip, pod) = item.map_err(map_err(POL_PODS_MAP, "iterate"))?;
            pods.push((ip, pod));
        }
        let mut out = Vec::new();
        for (raw, pod) in pods {
            let mut rules = Vec::new();
            for item in self.rules.iter() {
                let (k, v) = item.map_err(map_err(POL_RULES_MAP, "iterate"))?;
                let d = k.data();
                if d.pod_ip != raw || d.slot != pod.slot {
                    continue;
                }
                let len = k.prefix_len().saturating_sub(POL_RULE_PREFIX_BASE) as u8;
                let net = Ipv4Net::new(ip_from_map(d.peer), len.min(32))
                    .expect("prefix length clamped to 32");
                rules.push((d.dir, net, v));
            }
            rules.sort_by_key(|(d, n, _)| (*d, n.prefix_len(), n.network()));
            let stats = absent_is_none(self.stats.get(&raw, 0))
                .map_err(map_err(POL_STATS_MAP, "lookup"))?
                .unwrap_or_default();
            out.push(PodPolicyState {
                ip: ip_from_map(raw),
                pod,
                rules,
                stats,
            });
        }
        out.sort_by_key(|s| s.ip);
        Ok(out)
    }

    /// Number of conntrack entries of a pod (for inspection and tests).
    pub fn flow_count(&self, ip: Ipv4Addr) -> usize {
        let pod = ip_to_map(ip);
        self.ct
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.pod_ip == pod)
            .count()
    }
}

fn link_dir(pin_dir: &Path, netns: &Path, ifname: &str) -> Result<PathBuf, PolicyError> {
    let meta = fs::metadata(netns).map_err(|e| BpfError::io("stat netns", netns, e))?;
    Ok(pin_dir
        .join("links")
        .join(format!("tc-{}-{ifname}", meta.ino())))
}

/// Runs `f` on a short-lived thread that has entered the network namespace `netns`, so no
/// caller thread (a tokio worker) ever changes namespace.
fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, PolicyError> + Send,
) -> Result<T, PolicyError> {
    let ns = File::open(netns).map_err(|e| BpfError::io("open netns", netns, e))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| BpfError::io("setns", netns, e.into()))?;
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Attaches the policy programs for the pod `pod_ip` to `ifname` in the network namespace
/// `netns` (a path like `/proc/<pid>/ns/net` or `/run/netns/<name>`), as TCX links pinned
/// under `pin_dir/links/tc-<netns inode>-<ifname>/`. Idempotent: an existing pinned link is
/// switched to the new program in place (no moment without a program); a stale pin (its
/// interface gone) is replaced. Write the pod's rules first: until then the programs drop
/// every packet of the pod but ARP.
pub fn attach(
    pin_dir: impl AsRef<Path>,
    netns: impl AsRef<Path>,
    ifname: &str,
    pod_ip: Ipv4Addr,
    side: LinkSide,
) -> Result<(), PolicyError> {
    let pin_dir = pin_dir.as_ref();
    let netns = netns.as_ref();
    let dir = link_dir(pin_dir, netns, ifname)?;
    fs::create_dir_all(&dir).map_err(|e| BpfError::io("create link dir", &dir, e))?;
    in_netns(netns, || {
        if nix::net::if_::if_nametoindex(ifname).is_err() {
            return Err(PolicyError::NoInterface {
                ifname: ifname.to_owned(),
                netns: netns.to_path_buf(),
            });
        }
        let mut bpf = load_object(pin_dir, Some(ip_to_map(pod_ip)))?;
        for (name, hook) in side.hooks() {
            let prog: &mut SchedClassifier = bpf
                .program_mut(name)
                .ok_or(BpfError::MissingMap { map: name })?
                .try_into()
                .map_err(prog_err(name, "convert"))?;
            prog.load().map_err(prog_err(name, "load"))?;
            let my_id = prog.info().map_err(prog_err(name, "info"))?.id();
            let pin = dir.join(name);
            if pin.exists() {
                let replaced = PinnedLink::from_pin(&pin)
                    .ok()
                    .and_then(|p| SchedClassifierLink::try_from(FdLink::from(p)).ok())
                    .and_then(|l| prog.attach_to_link(l).ok())
                    .is_some();
                let running = replaced
                    && SchedClassifier::query_tcx(ifname, hook)
                        .map(|(_, progs)| progs.iter().any(|p| p.id() == my_id))
                        .unwrap_or(false);
                if running {
                    continue;
                }
                let _ = fs::remove_file(&pin);
            }
            let id = prog
                .attach_with_options(
                    ifname,
                    hook,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(prog_err(name, "attach"))?;
            let link = prog.take_link(id).map_err(prog_err(name, "take link"))?;
            let fd: FdLink = link.try_into().map_err(|e| BpfError::Link {
                program: name,
                op: "into fd link",
                source: Box::new(e),
            })?;
            fd.pin(&pin).map_err(|e| BpfError::LinkPin {
                program: name,
                path: pin.clone(),
                source: Box::new(e),
            })?;
        }
        Ok(())
    })
}

/// Whether a policy program is still attached to `ifname` (in the caller's namespace).
fn policy_programs_attached(ifname: &str) -> bool {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .iter()
        .any(|t| {
            SchedClassifier::query_tcx(ifname, *t).is_ok_and(|(_, progs)| {
                progs.iter().any(|p| {
                    p.name_as_str()
                        .is_some_and(|n| n == PROG_TO_POD || n == PROG_FROM_POD)
                })
            })
        })
}

/// Detaches the policy programs from `ifname` in `netns` by removing their link pins, and
/// waits (up to a second) until the kernel has released the links, which it does
/// asynchronously. Idempotent; keeps going past errors and returns the first. The pod's
/// map entries stay (see [`PolicyDatapath::remove_pod`]).
pub fn detach(
    pin_dir: impl AsRef<Path>,
    netns: impl AsRef<Path>,
    ifname: &str,
) -> Result<(), PolicyError> {
    let netns = netns.as_ref();
    let dir = link_dir(pin_dir.as_ref(), netns, ifname)?;
    if !dir.exists() {
        return Ok(());
    }
    let result = unpin_links(&dir);
    if netns.exists() {
        in_netns(netns, || {
            for _ in 0..100 {
                if !policy_programs_attached(ifname) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(())
        })?;
    }
    result
}

fn unpin_links(dir: &Path) -> Result<(), PolicyError> {
    let mut first: Option<PolicyError> = None;
    for name in [PROG_TO_POD, PROG_FROM_POD] {
        let p = dir.join(name);
        if p.exists() {
            if let Err(e) = fs::remove_file(&p) {
                first.get_or_insert(BpfError::io("unpin", p, e).into());
            }
        }
    }
    if let Err(e) = fs::remove_dir(dir) {
        first.get_or_insert(BpfError::io("remove link dir", dir, e).into());
    }
    first.map_or(Ok(()), Err)
}

/// How old an empty link directory must be before [`sweep_defunct_links`] removes it.
const EMPTY_LINK_DIR_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// What [`sweep_defunct_links`] found under `links/`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkSweep {
    /// Link directories removed: every pin in them was a link whose interface is gone.
    pub removed: Vec<PathBuf>,
    /// Link directories kept: at least one of their links is still on a live interface
    /// (or could not be read, which is never taken for dead).
    pub kept: usize,
}

/// Removes the link pins of pods whose interface no longer exists. A DEL that runs after
/// the pod's network namespace is gone cannot name that namespace, so the pins of the
/// pod-side link stay behind; each one keeps a loaded program alive in the kernel. The
/// kernel detaches a TCX link from a device being unregistered and reports its ifindex as
/// 0 from then on: exactly those pins are removed, and then their directory (an empty one
/// only after a minute, so an attach that has just created it can pin into it). A
/// link still on a device, a pin that is not a TCX link, or one that cannot be read is left
/// alone. Safe to run while pods are added: a fresh attachment is on a live device.
pub fn sweep_defunct_links(pin_dir: impl AsRef<Path>) -> Result<LinkSweep, PolicyError> {
    let links = pin_dir.as_ref().join("links");
    let mut sweep = LinkSweep::default();
    let entries = match fs::read_dir(&links) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(sweep),
        Err(e) => return Err(BpfError::io("read link dir", &links, e).into()),
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("tc-") {
            continue;
        }
        let dir = entry.path();
        // An attach creates the directory, then pins into it: a young empty one is kept.
        let young = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < EMPTY_LINK_DIR_GRACE);
        let mut live = false;
        let mut dead = 0;
        for name in [PROG_TO_POD, PROG_FROM_POD] {
            let pin = dir.join(name);
            match crate::linkinfo::tcx_link_ifindex(&pin) {
                Ok(Some(0)) => {
                    dead += 1;
                    if let Err(e) = fs::remove_file(&pin) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            return Err(BpfError::io("unpin", pin, e).into());
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Ok(_) | Err(_) => live = true,
            }
        }
        if live || (dead == 0 && young) {
            sweep.kept += 1;
            continue;
        }
        match fs::remove_dir(&dir) {
            Ok(()) => sweep.removed.push(dir),
            // An attach created a pin in it meanwhile: it is live.
            Err(_) => sweep.kept += 1,
        }
    }
    Ok(sweep)
}

/// Removes the policy maps' pins and every policy link pin under `pin_dir` (uninstall,
/// tests). Leaves other pins (the socket LB's) alone. Keeps going past errors.
pub fn unpin_policy(pin_dir: impl AsRef<Path>) -> Result<(), PolicyError> {
    let pin_dir = pin_dir.as_ref();
    let mut first: Option<PolicyError> = None;
    if let Ok(entries) = fs::read_dir(pin_dir.join("links")) {
        for entry in entries.flatten() {
            let p = entry.path();
            if !entry.file_name().to_string_lossy().starts_with("tc-") {
                continue;
            }
            for name in [PROG_TO_POD, PROG_FROM_POD] {
                let l = p.join(name);
                if l.exists() {
                    if let Err(e) = fs::remove_file(&l) {
                        first.get_or_insert(BpfError::io("unpin", l, e).into());
                    }
                }
            }
            if let Err(e) = fs::remove_dir(&p) {
                first.get_or_insert(BpfError::io("remove link dir", p, e).into());
            }
        }
    }
    for m in POL_ALL_MAPS {
        let p = pin_dir.join(m);
        if p.exists() {
            if let Err(e) = fs::remove_file(&p) {
                first.get_or_insert(BpfError::io("unpin", p, e).into());
            }
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use eni_policy::{CidrRule, PortRange, Protocol};

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("cidr")
    }

    #[test]
    fn open_pod_has_no_flags_and_no_entries() {
        let (flags, entries) =
            encode_rules(&PodRules::open(Ipv4Addr::new(10, 0, 0, 1)), 0).expect("encode");
        assert_eq!(flags, 0);
        assert!(entries.is_empty());
    }

    #[test]
    fn closed_pod_is_isolated_both_ways_with_no_entries() {
        let (flags, entries) =
            encode_rules(&PodRules::closed(Ipv4Addr::new(10, 0, 0, 1), "x"), 1).expect("encode");
        assert_eq!(flags, POL_F_INGRESS | POL_F_EGRESS);
        assert!(entries.is_empty());
    }

    #[test]
    fn entries_carry_prefix_slot_direction_and_ranges() {
        let mut rules = PodRules::open(Ipv4Addr::new(10, 0, 0, 1));
        rules.ingress = DirectionRules::Enforced(vec![
            CidrRule {
                cidr: net("10.0.0.0/8"),
                allowed: Allowed {
                    any: false,
                    ranges: vec![PortRange {
                        protocol: Protocol::Udp,
                        start: 53,
                        end: 54,
                    }],
                },
            },
            CidrRule {
                cidr: net("10.1.0.0/16"),
                allowed: Allowed::nothing(),
            },
        ]);
        rules.egress = DirectionRules::Enforced(vec![CidrRule {
            cidr: net("0.0.0.0/0"),
            allowed: Allowed::everything(),
        }]);
        let (flags, entries) = encode_rules(&rules, 1).expect("encode");
        assert_eq!(flags, POL_F_INGRESS | POL_F_EGRESS);
        assert_eq!(entries.len(), 3);
        let (k, v) = &entries[0];
        assert_eq!(k.prefix_len(), 72);
        let d = k.data();
        assert_eq!((d.dir, d.slot, d.pad), (POL_DIR_INGRESS, 1, 0));
        assert_eq!(ip_from_map(d.pod_ip), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(ip_from_map(d.peer), Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!((v.any, v.count), (0, 1));
        assert_eq!(
            (v.ranges[0].start, v.ranges[0].end, v.ranges[0].proto),
            (53, 54, 17)
        );
        assert_eq!(entries[1].0.prefix_len(), 80);
        assert_eq!((entries[1].1.any, entries[1].1.count), (0, 0));
        assert_eq!(entries[2].0.prefix_len(), 64);
        assert_eq!(entries[2].0.data().dir, POL_DIR_EGRESS);
        assert_eq!(entries[2].1.any, 1);
    }

    #[test]
    fn too_many_ranges_are_refused_before_any_write() {
        let mut rules = PodRules::open(Ipv4Addr::new(10, 0, 0, 1));
        rules.ingress = DirectionRules::Enforced(vec![CidrRule {
            cidr: net("0.0.0.0/0"),
            allowed: Allowed {
                any: false,
                ranges: (0..=POL_MAX_PORT_RANGES as u16)
                    .map(|i| PortRange {
                        protocol: Protocol::Tcp,
                        start: i * 2 + 1,
                        end: i * 2 + 1,
                    })
                    .collect(),
            },
        }]);
        assert!(matches!(
            encode_rules(&rules, 0),
            Err(PolicyError::InvalidRules { .. })
        ));
    }

    #[test]
    fn the_compiler_limit_matches_the_map() {
        assert_eq!(eni_policy::MAX_PORT_RANGES, POL_MAX_PORT_RANGES);
    }
}
