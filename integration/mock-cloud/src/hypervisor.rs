//! The hypervisor: real network links for attached ENIs, in network namespaces.
//!
//! The mock's VPC is a network namespace of its own (`mockvpc-<pid>` unless the world names
//! it) with one Linux bridge per vSwitch, each holding its vSwitch's gateway address, and IPv4
//! forwarding on, so that vSwitches route to each other. Its loopback also holds the API
//! address (`100.100.100.200`), where [`Hypervisor::listen_in_vpc`] listens.
//!
//! An instance is *bound* to a node namespace (one the test or demo made): its primary ENI
//! appears there as `eth0`, configured as DHCP would configure a VM's first NIC. Each secondary
//! ENI that becomes `InUse` is a veth pair: the node end (the ENI's MAC, next free `ethN`,
//! down, no address) in the node namespace, the other end in the VPC namespace, enslaved to
//! its vSwitch's bridge. Detaching deletes the VPC end, which deletes the pair wherever the
//! node end has been moved since.
//!
//! The VPC end of an ENI is named deterministically from the ENI id (`v` + 10 hex digits of
//! a hash) and carries an alias naming the ENI, its instance and the node-side name, so a
//! mock restarted over a VPC namespace left behind (kill -9, `--state`) finds and reuses the
//! links it made.
//!
//! Everything is done with iproute2's `ip`, always inside a named namespace (`ip -n`) or from
//! a short-lived thread that entered the namespace with `setns`: nothing here changes the
//! network configuration of the namespace the mock itself runs in, and a namespace that turns
//! out to be the mock's own is refused. All calls are blocking and serialized by one mutex;
//! async callers wrap them in `spawn_blocking`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use ipnet::Ipv4Net;
use nix::sched::CloneFlags;
use serde::Deserialize;
use tracing::{debug, info, warn};

use crate::world::{HypervisorConfig, VSwitch};

/// Where `ip netns` keeps named network namespaces.
const NETNS_RUN_DIR: &str = "/var/run/netns";
/// First word of the alias the hypervisor puts on the VPC end of each veth pair.
const ALIAS_TAG: &str = "mock-cloud";
/// Node-side name of the primary ENI.
const PRIMARY_IFNAME: &str = "eth0";
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// What the hypervisor needs to know about one NIC.
#[derive(Debug, Clone)]
pub struct NicSpec {
    /// The ENI id (`eni-...`).
    pub eni_id: String,
    /// The ENI's MAC address, `00:16:3e:aa:bb:cc`.
    pub mac: String,
    /// The ENI's vSwitch.
    pub vswitch_id: String,
    /// The vSwitch's CIDR block.
    pub vswitch_cidr: Ipv4Net,
    /// The vSwitch's gateway address.
    pub gateway: Ipv4Addr,
    /// Only for the primary ENI: address configured on eth0 with a default route via gateway.
    pub primary_ip: Option<Ipv4Addr>,
}

/// Why the hypervisor could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The process is not root: it cannot create namespaces or links.
    #[error(
        "the hypervisor needs root (effective uid is {euid}); run mock-cloud as root to bind \
         instances to network namespaces (the API works without)"
    )]
    NotRoot {
        /// The effective uid of the process.
        euid: u32,
    },
    /// The named network namespace does not exist.
    #[error("network namespace {netns} does not exist (no {path})")]
    NetnsNotFound {
        /// The namespace as given.
        netns: String,
        /// The path looked at.
        path: String,
    },
    /// The namespace cannot be used for this: the mock's own, or the VPC's.
    #[error("network namespace {netns} cannot be used: {reason}")]
    NetnsRefused {
        /// The namespace as given.
        netns: String,
        /// Why.
        reason: String,
    },
    /// A command ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A command could not be started.
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The error from the operating system.
        #[source]
        source: std::io::Error,
    },
    /// A command answered something unexpected.
    #[error("unexpected output from `{cmd}`: {detail}")]
    Output {
        /// The command line.
        cmd: String,
        /// What was wrong.
        detail: String,
    },
    /// Entering a network namespace failed.
    #[error("cannot enter network namespace {netns}: {source}")]
    Setns {
        /// The namespace's path.
        netns: String,
        /// The error from `setns`.
        #[source]
        source: nix::Error,
    },
    /// Another I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The instance is not bound to a network namespace.
    #[error("instance {instance} is not bound to a network namespace")]
    NotBound {
        /// The instance id.
        instance: String,
    },
    /// The instance is bound to another namespace already.
    #[error("instance {instance} is already bound to {bound}; cannot bind it to {requested}")]
    AlreadyBound {
        /// The instance id.
        instance: String,
        /// The namespace it is bound to.
        bound: String,
        /// The namespace asked for.
        requested: String,
    },
    /// The ENI is plugged into another instance.
    #[error("ENI {eni_id} is plugged into instance {plugged}, not {requested}")]
    PluggedElsewhere {
        /// The ENI id.
        eni_id: String,
        /// The instance it is plugged into.
        plugged: String,
        /// The instance asked for.
        requested: String,
    },
    /// The VPC-side name derived for an ENI is held by a link of another ENI.
    #[error("link {ifname} in the VPC namespace, derived from ENI {eni_id}, belongs to {other}")]
    NameClash {
        /// The ENI id.
        eni_id: String,
        /// The VPC-side interface name.
        ifname: String,
        /// Whose the link is, from its alias.
        other: String,
    },
    /// An argument cannot be used (a malformed MAC, an id with spaces, ...).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which argument.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A network namespace commands run in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ns {
    /// A name under `/var/run/netns`: commands run as `ip -n NAME ...`.
    Named(String),
    /// Any other path (`/proc/<pid>/ns/net`, ...): commands run from a thread that entered it.
    Path(PathBuf),
}

impl Ns {
    /// A name under `/var/run/netns`, or a path (anything with a `/`).
    fn parse(spec: &str) -> Ns {
        if !spec.contains('/') {
            return Ns::Named(spec.to_string());
        }
        match spec
            .strip_prefix(NETNS_RUN_DIR)
            .and_then(|r| r.strip_prefix('/'))
        {
            Some(name) if !name.is_empty() && !name.contains('/') => Ns::Named(name.to_string()),
            _ => Ns::Path(PathBuf::from(spec)),
        }
    }

    fn path(&self) -> PathBuf {
        match self {
            Ns::Named(name) => Path::new(NETNS_RUN_DIR).join(name),
            Ns::Path(path) => path.clone(),
        }
    }

    fn show(&self) -> String {
        match self {
            Ns::Named(name) => name.clone(),
            Ns::Path(path) => path.display().to_string(),
        }
    }
}

/// Identity of a namespace: device and inode of its nsfs file.
type NsId = (u64, u64);

fn ns_id(path: &Path) -> std::io::Result<NsId> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// An instance bound to a node namespace.
#[derive(Debug, Clone)]
struct Binding {
    /// The namespace as the caller named it.
    spec: String,
    ns: Ns,
    id: NsId,
}

/// A plugged ENI.
#[derive(Debug, Clone)]
struct Plugged {
    instance: String,
    /// Node-side interface name.
    ifname: String,
}

#[derive(Debug, Default)]
struct Inner {
    /// The VPC namespace has been set up (created or adopted) since start or the last shutdown.
    vpc_ready: bool,
    /// vSwitch id -> bridge name, for every vSwitch seen.
    bridge_names: BTreeMap<String, String>,
    /// vSwitch ids whose bridge is set up in the current VPC namespace.
    bridges_up: BTreeSet<String>,
    /// vSwitch id -> (CIDR, gateway) of the world's vSwitches.
    vswitches: BTreeMap<String, (Ipv4Net, Ipv4Addr)>,
    instances: BTreeMap<String, Binding>,
    /// ENI id -> where it is plugged (primary ENIs included).
    enis: BTreeMap<String, Plugged>,
}

/// Plays the hypervisor: network links in namespaces for the ENIs of bound instances.
#[derive(Debug)]
pub struct Hypervisor {
    vpc_netns: String,
    api_address: Ipv4Addr,
    mtu: u32,
    inner: Mutex<Inner>,
}

/// One line of `ip -j link show`.
#[derive(Debug, Deserialize)]
struct LinkInfo {
    ifname: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    ifalias: Option<String>,
}

/// What the alias of a VPC-side link says.
#[derive(Debug, PartialEq, Eq)]
struct Alias {
    eni: String,
    instance: String,
    ifname: String,
}

impl Alias {
    fn render(&self) -> String {
        format!(
            "{ALIAS_TAG} eni={} instance={} ifname={}",
            self.eni, self.instance, self.ifname
        )
    }

    fn parse(text: &str) -> Option<Alias> {
        let mut words = text.split_whitespace();
        if words.next() != Some(ALIAS_TAG) {
            return None;
        }
        let (mut eni, mut instance, mut ifname) = (None, None, None);
        for word in words {
            match word.split_once('=') {
                Some(("eni", v)) => eni = Some(v.to_string()),
                Some(("instance", v)) => instance = Some(v.to_string()),
                Some(("ifname", v)) => ifname = Some(v.to_string()),
                _ => {}
            }
        }
        Some(Alias {
            eni: eni?,
            instance: instance?,
            ifname: ifname?,
        })
    }
}

/// 64-bit FNV-1a: stable across Rust versions and runs, unlike `DefaultHasher`.
fn fnv1a64(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Name of the VPC end of an ENI's veth pair: `v` + 10 hex digits of a hash of the ENI id.
fn vpc_ifname(eni_id: &str) -> String {
    format!("v{:010x}", fnv1a64(eni_id) >> 24)
}

/// Bridge of a vSwitch: `br-<id>` when the id fits and is plain, else `br-` + up to 6
/// characters of the id + 6 hex digits of its hash.
/// The MAC of every vSwitch gateway (Alibaba Cloud's VPC gateways answer with this one).
const GATEWAY_MAC: &str = "ee:ff:ff:ff:ff:ff";

fn bridge_name(vswitch_id: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if !vswitch_id.is_empty() && vswitch_id.len() <= IFNAME_MAX - 3 && vswitch_id.chars().all(plain)
    {
        return format!("br-{vswitch_id}");
    }
    let head: String = vswitch_id.chars().filter(|&c| plain(c)).take(6).collect();
    format!("br-{head}{:06x}", fnv1a64(vswitch_id) >> 40)
}

/// Bridge of a vSwitch, unique among those named so far (a clash falls back to a full hash).
fn unique_bridge_name(names: &BTreeMap<String, String>, vswitch_id: &str) -> String {
    let name = bridge_name(vswitch_id);
    if names.values().any(|n| *n == name) {
        format!("br-{:012x}", fnv1a64(vswitch_id) >> 16)
    } else {
        name
    }
}

/// The effective uid, from `/proc/self/status` (the `Uid:` line: real, effective, ...).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn check_root() -> Result<(), HypervisorError> {
    match effective_uid() {
        Some(0) => Ok(()),
        other => Err(HypervisorError::NotRoot {
            euid: other.unwrap_or(u32::MAX),
        }),
    }
}

fn check_word(what: &str, value: &str) -> Result<(), HypervisorError> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(HypervisorError::Invalid {
            what: what.to_string(),
            reason: format!("{value:?} must be non-empty and without spaces"),
        });
    }
    Ok(())
}

fn check_nic(nic: &NicSpec) -> Result<(), HypervisorError> {
    check_word("ENI id", &nic.eni_id)?;
    check_word("vSwitch id", &nic.vswitch_id)?;
    let groups: Vec<&str> = nic.mac.split(':').collect();
    let well_formed = groups.len() == 6
        && groups
            .iter()
            .all(|g| g.len() == 2 && g.chars().all(|c| c.is_ascii_hexdigit()));
    if !well_formed {
        return Err(HypervisorError::Invalid {
            what: format!("MAC address of {}", nic.eni_id),
            reason: format!("{:?} is not of the form 00:16:3e:aa:bb:cc", nic.mac),
        });
    }
    // A multicast MAC (low bit of the first octet) cannot be given to a NIC.
    let first = u8::from_str_radix(groups[0], 16).unwrap_or(1);
    if first & 1 == 1 {
        return Err(HypervisorError::Invalid {
            what: format!("MAC address of {}", nic.eni_id),
            reason: format!("{} is a multicast address", nic.mac),
        });
    }
    Ok(())
}

/// The `ip` binary: PATH may lack the sbin directories.
fn ip_bin() -> &'static str {
    static IP: OnceLock<String> = OnceLock::new();
    IP.get_or_init(|| {
        ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("ip")
            .to_string()
    })
}

/// Runs `f` on a short-lived thread that entered the network namespace at `path`. `f` never
/// runs if entering fails, so it cannot act on the caller's namespace by mistake.
fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, HypervisorError> {
    let file = File::open(path).map_err(|source| HypervisorError::Io {
        context: format!("cannot open network namespace {}", path.display()),
        source,
    })?;
    let file = &file;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(file, CloneFlags::CLONE_NEWNET).map_err(|source| {
                    HypervisorError::Setns {
                        netns: path.display().to_string(),
                        source,
                    }
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `ip` with `args` inside `ns`; answers its standard output.
fn ip_in(ns: &Ns, args: &[&str]) -> Result<String, HypervisorError> {
    let shown = match ns {
        Ns::Named(name) => format!("ip -n {name} {}", args.join(" ")),
        Ns::Path(path) => format!("ip {} (in netns {})", args.join(" "), path.display()),
    };
    debug!(cmd = %shown, "hypervisor: running");
    let output = match ns {
        Ns::Named(name) => Command::new(ip_bin())
            .arg("-n")
            .arg(name)
            .args(args)
            .output(),
        Ns::Path(path) => in_netns(path, || Command::new(ip_bin()).args(args).output())?,
    };
    finish(shown, output)
}

/// Runs `ip netns <args>` (creating or deleting a namespace, never changing the current one).
fn ip_netns(args: &[&str]) -> Result<String, HypervisorError> {
    let shown = format!("ip netns {}", args.join(" "));
    debug!(cmd = %shown, "hypervisor: running");
    let output = Command::new(ip_bin()).arg("netns").args(args).output();
    finish(shown, output)
}

fn finish(
    cmd: String,
    output: std::io::Result<std::process::Output>,
) -> Result<String, HypervisorError> {
    let output = output.map_err(|source| HypervisorError::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        debug!(cmd = %cmd, status = %output.status, stderr = %stderr, "hypervisor: command failed");
        Err(HypervisorError::Command {
            cmd,
            status: output.status.to_string(),
            stderr,
        })
    }
}

/// The links of a namespace.
fn links_in(ns: &Ns) -> Result<Vec<LinkInfo>, HypervisorError> {
    let out = ip_in(ns, &["-j", "link", "show"])?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&out).map_err(|e| HypervisorError::Output {
        cmd: format!("ip -j link show (in netns {})", ns.show()),
        detail: e.to_string(),
    })
}

fn has_link(links: &[LinkInfo], name: &str) -> bool {
    links.iter().any(|l| l.ifname == name)
}

fn link_with_mac<'a>(links: &'a [LinkInfo], mac: &str) -> Option<&'a LinkInfo> {
    links.iter().find(|l| {
        l.address
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case(mac))
    })
}

impl Hypervisor {
    /// Nothing touches the kernel until the first bind.
    pub fn new(cfg: &HypervisorConfig, vswitches: &[VSwitch]) -> Hypervisor {
        let mut inner = Inner::default();
        for v in vswitches {
            let name = unique_bridge_name(&inner.bridge_names, &v.id);
            inner.bridge_names.insert(v.id.clone(), name);
            inner
                .vswitches
                .insert(v.id.clone(), (v.cidr.trunc(), v.gateway()));
        }
        Hypervisor {
            vpc_netns: cfg
                .vpc_netns
                .clone()
                .unwrap_or_else(|| format!("mockvpc-{}", std::process::id())),
            api_address: cfg.api_address,
            mtu: cfg.mtu,
            inner: Mutex::new(inner),
        }
    }

    /// The VPC namespace name in use (cfg.vpc_netns or "mockvpc-<pid>").
    pub fn vpc_netns(&self) -> &str {
        &self.vpc_netns
    }

    fn vpc(&self) -> Ns {
        Ns::Named(self.vpc_netns.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bind an instance to a node namespace (name under /var/run/netns, or an absolute path
    /// such as /proc/<pid>/ns/net or /var/run/netns/x). Creates the VPC namespace on first use
    /// (a bridge per vSwitch with its gateway address, up; lo up with the API address;
    /// forwarding on), then plugs the primary NIC as eth0 in the node namespace: MAC, MTU,
    /// primary_ip/prefix, up, default route via the gateway. Binding the same instance to the
    /// same namespace again (by any of its names) is a no-op; to another one is an error,
    /// unless the namespace it was bound to no longer exists (deleted, or deleted and made
    /// again under the same name): then it is bound afresh.
    pub fn bind(
        &self,
        instance: &str,
        netns: &str,
        primary: &NicSpec,
    ) -> Result<(), HypervisorError> {
        check_word("instance id", instance)?;
        check_nic(primary)?;
        check_root()?;
        let ns = Ns::parse(netns);
        let path = ns.path();
        if netns.is_empty() || !path.exists() {
            return Err(HypervisorError::NetnsNotFound {
                netns: netns.to_string(),
                path: path.display().to_string(),
            });
        }
        let id = ns_id(&path).map_err(|source| HypervisorError::Io {
            context: format!("cannot stat network namespace {}", path.display()),
            source,
        })?;
        self.refuse_own_netns(netns, id)?;

        let mut inner = self.lock();
        if let Some(bound) = inner.instances.get(instance).cloned() {
            if bound.id == id {
                return Ok(());
            }
            let alive = ns_id(&bound.ns.path()).is_ok_and(|now| now == bound.id);
            if alive {
                return Err(HypervisorError::AlreadyBound {
                    instance: instance.to_string(),
                    bound: bound.spec,
                    requested: netns.to_string(),
                });
            }
            // Its namespace was deleted (or deleted and made again): start over.
            info!(
                instance,
                old = %bound.spec,
                "hypervisor: the bound namespace is gone; binding again"
            );
            self.forget(&mut inner, instance);
        }
        if let Some(p) = inner.enis.get(&primary.eni_id) {
            return Err(HypervisorError::PluggedElsewhere {
                eni_id: primary.eni_id.clone(),
                plugged: p.instance.clone(),
                requested: instance.to_string(),
            });
        }
        self.ensure_vpc(&mut inner)?;
        let vpc_id = ns_id(&self.vpc().path()).map_err(|source| HypervisorError::Io {
            context: format!("cannot stat the VPC namespace {}", self.vpc_netns),
            source,
        })?;
        if vpc_id == id {
            return Err(HypervisorError::NetnsRefused {
                netns: netns.to_string(),
                reason: "it is the mock's VPC namespace".to_string(),
            });
        }
        let binding = Binding {
            spec: netns.to_string(),
            ns,
            id,
        };

        let ifname = self.connect(
            &mut inner,
            instance,
            &binding,
            primary,
            Some(PRIMARY_IFNAME),
        )?;
        let mtu = self.mtu.to_string();
        ip_in(
            &binding.ns,
            &[
                "link",
                "set",
                "dev",
                &ifname,
                "address",
                &primary.mac,
                "mtu",
                &mtu,
                "up",
            ],
        )?;
        if let Some(ip) = primary.primary_ip {
            let cidr = format!("{ip}/{}", primary.vswitch_cidr.prefix_len());
            ip_in(&binding.ns, &["addr", "replace", &cidr, "dev", &ifname])?;
            let gateway = primary.gateway.to_string();
            ip_in(
                &binding.ns,
                &[
                    "route", "replace", "default", "via", &gateway, "dev", &ifname,
                ],
            )?;
        }
        info!(
            instance,
            netns,
            eni = %primary.eni_id,
            ifname = %ifname,
            "hypervisor: instance bound, primary ENI plugged"
        );
        inner.enis.insert(
            primary.eni_id.clone(),
            Plugged {
                instance: instance.to_string(),
                ifname,
            },
        );
        inner.instances.insert(instance.to_string(), binding);
        Ok(())
    }

    /// Whether the instance is bound to a network namespace.
    pub fn is_bound(&self, instance: &str) -> bool {
        self.lock().instances.contains_key(instance)
    }

    /// A secondary ENI became InUse on a bound instance: a veth pair whose node end, named
    /// the next free ethN in the node namespace, has the ENI's MAC and the configured MTU and
    /// is left down without an address, and whose VPC end is enslaved to the vSwitch's bridge
    /// and up. Answers the node-side name. Idempotent per ENI id (answers the existing name);
    /// reuses a VPC-side link left by an earlier run of the mock.
    pub fn plug(&self, instance: &str, nic: &NicSpec) -> Result<String, HypervisorError> {
        check_nic(nic)?;
        let mut inner = self.lock();
        let binding =
            inner
                .instances
                .get(instance)
                .cloned()
                .ok_or_else(|| HypervisorError::NotBound {
                    instance: instance.to_string(),
                })?;
        if let Some(p) = inner.enis.get(&nic.eni_id) {
            if p.instance == instance {
                return Ok(p.ifname.clone());
            }
            return Err(HypervisorError::PluggedElsewhere {
                eni_id: nic.eni_id.clone(),
                plugged: p.instance.clone(),
                requested: instance.to_string(),
            });
        }
        self.ensure_vpc(&mut inner)?;
        let ifname = self.connect(&mut inner, instance, &binding, nic, None)?;
        info!(instance, eni = %nic.eni_id, ifname = %ifname, "hypervisor: ENI plugged");
        inner.enis.insert(
            nic.eni_id.clone(),
            Plugged {
                instance: instance.to_string(),
                ifname: ifname.clone(),
            },
        );
        Ok(ifname)
    }

    /// Detach: delete the VPC-side veth end (which removes the node end wherever it was
    /// moved, e.g. into a pod namespace). Idempotent: Ok if already gone, or if the VPC
    /// namespace does not exist.
    pub fn unplug(&self, eni_id: &str) -> Result<(), HypervisorError> {
        let mut inner = self.lock();
        let vpc = self.vpc();
        let vname = vpc_ifname(eni_id);
        if vpc.path().exists() {
            if let Err(err) = ip_in(&vpc, &["link", "del", "dev", &vname]) {
                // Gone already (or never made): fine. Still there: a real failure.
                if has_link(&links_in(&vpc)?, &vname) {
                    return Err(err);
                }
            }
        }
        if let Some(p) = inner.enis.remove(eni_id) {
            info!(instance = %p.instance, eni = %eni_id, ifname = %p.ifname, "hypervisor: ENI unplugged");
        }
        Ok(())
    }

    /// eni_id -> node-side ifname for the instance's plugged NICs (eth0 for the primary).
    pub fn links(&self, instance: &str) -> BTreeMap<String, String> {
        self.lock()
            .enis
            .iter()
            .filter(|(_, p)| p.instance == instance)
            .map(|(eni, p)| (eni.clone(), p.ifname.clone()))
            .collect()
    }

    /// The namespace an instance is bound to, as given to `bind`, if any.
    pub fn netns_of(&self, instance: &str) -> Option<String> {
        self.lock().instances.get(instance).map(|b| b.spec.clone())
    }

    /// A TCP listener bound at api_address:port inside the VPC namespace (the socket is made
    /// on a short-lived thread that entered the namespace; the listener works from any
    /// thread). Creates the VPC namespace if needed. The listener is blocking: call
    /// `set_nonblocking(true)` before handing it to tokio. While it is open, it keeps the
    /// namespace alive in the kernel even after `shutdown` (its links are deleted anyway).
    pub fn listen_in_vpc(&self, port: u16) -> Result<TcpListener, HypervisorError> {
        let mut inner = self.lock();
        self.ensure_vpc(&mut inner)?;
        let addr = SocketAddrV4::new(self.api_address, port);
        let path = self.vpc().path();
        in_netns(&path, || TcpListener::bind(addr))?.map_err(|source| HypervisorError::Io {
            context: format!(
                "cannot listen on {addr} in network namespace {}",
                self.vpc_netns
            ),
            source,
        })
    }

    /// Delete the VPC namespace, and with it every link made (their node ends included).
    /// Idempotent. Call on shutdown. Bindings are forgotten: bind again to start over.
    pub fn shutdown(&self) {
        let mut inner = self.lock();
        let vpc = self.vpc();
        if vpc.path().exists() {
            // Delete the links first: the namespace itself lives on while a socket made in it
            // (the API listener) is open, and its veth pairs with it.
            match links_in(&vpc) {
                Ok(links) => {
                    for link in links.iter().filter(|l| l.ifname != "lo") {
                        if let Err(e) = ip_in(&vpc, &["link", "del", "dev", &link.ifname]) {
                            // A veth whose peer was deleted a moment ago is gone already.
                            debug!(error = %e, "hypervisor: deleting a link at shutdown");
                        }
                    }
                }
                Err(e) => warn!(error = %e, "hypervisor: cannot list the VPC namespace's links"),
            }
            match ip_netns(&["del", &self.vpc_netns]) {
                Ok(_) => info!(netns = %self.vpc_netns, "hypervisor: VPC namespace deleted"),
                Err(e) => warn!(error = %e, "hypervisor: cannot delete the VPC namespace"),
            }
        }
        inner.vpc_ready = false;
        inner.bridges_up.clear();
        inner.instances.clear();
        inner.enis.clear();
    }

    /// Drops an instance's binding and its ENIs' links (best effort: most died with the
    /// namespace; a node end moved into a pod namespace did not).
    fn forget(&self, inner: &mut Inner, instance: &str) {
        let vpc = self.vpc();
        let enis: Vec<String> = inner
            .enis
            .iter()
            .filter(|(_, p)| p.instance == instance)
            .map(|(eni, _)| eni.clone())
            .collect();
        for eni in enis {
            if vpc.path().exists() {
                let vname = vpc_ifname(&eni);
                if let Err(e) = ip_in(&vpc, &["link", "del", "dev", &vname]) {
                    debug!(error = %e, "hypervisor: deleting a link of a forgotten instance");
                }
            }
            inner.enis.remove(&eni);
        }
        inner.instances.remove(instance);
    }

    /// Refuses the namespace the mock itself runs in: its network is not ours to change.
    fn refuse_own_netns(&self, netns: &str, id: NsId) -> Result<(), HypervisorError> {
        let own = ns_id(Path::new("/proc/self/ns/net")).map_err(|source| HypervisorError::Io {
            context: "cannot stat /proc/self/ns/net".to_string(),
            source,
        })?;
        if own == id {
            return Err(HypervisorError::NetnsRefused {
                netns: netns.to_string(),
                reason: "it is the network namespace mock-cloud runs in; the hypervisor only \
                         changes namespaces made for it"
                    .to_string(),
            });
        }
        Ok(())
    }

    /// Creates (or adopts, if left over) the VPC namespace and sets it up, once.
    fn ensure_vpc(&self, inner: &mut Inner) -> Result<(), HypervisorError> {
        if inner.vpc_ready {
            return Ok(());
        }
        check_root()?;
        check_word("VPC namespace name", &self.vpc_netns)?;
        if self.vpc_netns.contains('/') {
            return Err(HypervisorError::Invalid {
                what: "VPC namespace name".to_string(),
                reason: format!("{} must be a plain name, not a path", self.vpc_netns),
            });
        }
        let vpc = self.vpc();
        let path = vpc.path();
        let usable = path.exists() && ip_in(&vpc, &["link", "show", "lo"]).is_ok();
        if usable {
            info!(netns = %self.vpc_netns, "hypervisor: adopting the existing VPC namespace");
        } else {
            if path.exists() {
                // A stale entry (not a namespace any more): clear it.
                warn!(netns = %self.vpc_netns, "hypervisor: replacing a stale VPC namespace entry");
                if let Err(e) = ip_netns(&["del", &self.vpc_netns]) {
                    debug!(error = %e, "hypervisor: deleting the stale VPC namespace entry");
                }
            }
            ip_netns(&["add", &self.vpc_netns])?;
            info!(netns = %self.vpc_netns, "hypervisor: VPC namespace created");
        }
        let id = ns_id(&path).map_err(|source| HypervisorError::Io {
            context: format!("cannot stat {}", path.display()),
            source,
        })?;
        self.refuse_own_netns(&self.vpc_netns, id)?;

        ip_in(&vpc, &["link", "set", "dev", "lo", "up"])?;
        let api = format!("{}/32", self.api_address);
        ip_in(&vpc, &["addr", "replace", &api, "dev", "lo"])?;
        in_netns(&path, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        })?
        .map_err(|source| HypervisorError::Io {
            context: format!(
                "cannot turn on net.ipv4.ip_forward in network namespace {}",
                self.vpc_netns
            ),
            source,
        })?;
        inner.bridges_up.clear();
        let vswitches: Vec<(String, Ipv4Net, Ipv4Addr)> = inner
            .vswitches
            .iter()
            .map(|(id, (cidr, gw))| (id.clone(), *cidr, *gw))
            .collect();
        for (id, cidr, gateway) in vswitches {
            self.ensure_bridge(inner, &id, cidr, gateway)?;
        }
        inner.vpc_ready = true;
        Ok(())
    }

    /// Makes sure the vSwitch's bridge exists, holds the gateway address and is up; answers
    /// its name.
    fn ensure_bridge(
        &self,
        inner: &mut Inner,
        vswitch_id: &str,
        cidr: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<String, HypervisorError> {
        let name = match inner.bridge_names.get(vswitch_id) {
            Some(name) => name.clone(),
            None => {
                let name = unique_bridge_name(&inner.bridge_names, vswitch_id);
                inner
                    .bridge_names
                    .insert(vswitch_id.to_string(), name.clone());
                name
            }
        };
        if inner.bridges_up.contains(vswitch_id) {
            return Ok(name);
        }
        let vpc = self.vpc();
        if let Err(err) = ip_in(
            &vpc,
            &[
                "link",
                "add",
                "name",
                &name,
                "type",
                "bridge",
                "forward_delay",
                "0",
            ],
        ) {
            // Left over from an earlier run: adopt it.
            if !has_link(&links_in(&vpc)?, &name) {
                return Err(err);
            }
        }
        let address = format!("{gateway}/{}", cidr.prefix_len());
        ip_in(&vpc, &["addr", "replace", &address, "dev", &name])?;
        // A fixed MAC, as a VPC gateway has: a bridge without one takes the lowest MAC of
        // its ports and changes it whenever an ENI joins or leaves, and nodes that cached the
        // old one lose their gateway until their ARP entry expires.
        ip_in(
            &vpc,
            &["link", "set", "dev", &name, "address", GATEWAY_MAC, "up"],
        )?;
        debug!(vswitch = vswitch_id, bridge = %name, gateway = %address, "hypervisor: bridge ready");
        inner.bridges_up.insert(vswitch_id.to_string());
        Ok(name)
    }

    /// Makes the veth pair of `nic` between the VPC namespace and the instance's namespace
    /// (or adopts one left over); answers the node-side name. `fixed` names the node end
    /// (the primary's `eth0`); otherwise it is the next free `ethN`.
    fn connect(
        &self,
        inner: &mut Inner,
        instance: &str,
        binding: &Binding,
        nic: &NicSpec,
        fixed: Option<&str>,
    ) -> Result<String, HypervisorError> {
        let bridge = self.ensure_bridge(inner, &nic.vswitch_id, nic.vswitch_cidr, nic.gateway)?;
        let vpc = self.vpc();
        let vname = vpc_ifname(&nic.eni_id);
        let mtu = self.mtu.to_string();

        if let Some(existing) = links_in(&vpc)?.into_iter().find(|l| l.ifname == vname) {
            let alias = existing.ifalias.as_deref().and_then(Alias::parse);
            let mut reuse = None;
            match alias {
                Some(a) if a.eni != nic.eni_id => {
                    return Err(HypervisorError::NameClash {
                        eni_id: nic.eni_id.clone(),
                        ifname: vname,
                        other: a.eni,
                    });
                }
                Some(a) if a.instance == instance => {
                    let node_links = links_in(&binding.ns)?;
                    match link_with_mac(&node_links, &nic.mac) {
                        Some(l) => reuse = Some(l.ifname.clone()),
                        // A secondary's node end may have been moved into a pod namespace.
                        None if fixed.is_none() => reuse = Some(a.ifname),
                        // The primary's node end is elsewhere: the pair is stale.
                        None => {}
                    }
                }
                _ => {}
            }
            if let Some(ifname) = reuse {
                ip_in(
                    &vpc,
                    &[
                        "link", "set", "dev", &vname, "master", &bridge, "mtu", &mtu, "up",
                    ],
                )?;
                info!(eni = %nic.eni_id, ifname = %ifname, vpc_link = %vname, "hypervisor: reusing a link left by an earlier run");
                return Ok(ifname);
            }
            info!(eni = %nic.eni_id, vpc_link = %vname, "hypervisor: deleting a stale link");
            ip_in(&vpc, &["link", "del", "dev", &vname])?;
        }

        let node_path = binding.ns.path().display().to_string();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let node_links = links_in(&binding.ns)?;
            let ifname = match fixed {
                Some(name) => name.to_string(),
                None => {
                    let taken: BTreeSet<&str> = node_links
                        .iter()
                        .map(|l| l.ifname.as_str())
                        .chain(
                            inner
                                .enis
                                .values()
                                .filter(|p| p.instance == instance)
                                .map(|p| p.ifname.as_str()),
                        )
                        .collect();
                    (1..)
                        .map(|n| format!("eth{n}"))
                        .find(|name| !taken.contains(name.as_str()))
                        .unwrap_or_default()
                }
            };
            let created = ip_in(
                &vpc,
                &[
                    "link", "add", "name", &vname, "mtu", &mtu, "type", "veth", "peer", "name",
                    &ifname, "address", &nic.mac, "mtu", &mtu, "netns", &node_path,
                ],
            );
            match created {
                Ok(_) => {}
                Err(err) => {
                    // Someone took the name in the node namespace meanwhile: try the next one.
                    let raced = fixed.is_none()
                        && attempts < 3
                        && !has_link(&node_links, &ifname)
                        && has_link(&links_in(&binding.ns)?, &ifname);
                    if raced {
                        continue;
                    }
                    return Err(err);
                }
            }
            let alias = Alias {
                eni: nic.eni_id.clone(),
                instance: instance.to_string(),
                ifname: ifname.clone(),
            }
            .render();
            ip_in(
                &vpc,
                &[
                    "link", "set", "dev", &vname, "alias", &alias, "master", &bridge, "up",
                ],
            )?;
            debug!(eni = %nic.eni_id, ifname = %ifname, vpc_link = %vname, bridge = %bridge, "hypervisor: veth pair made");
            return Ok(ifname);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vpc_ifnames_are_short_stable_and_distinct() {
        let a = vpc_ifname("eni-bp1abcdefghijklmnopq");
        assert_eq!(a.len(), 11);
        assert!(a.len() <= IFNAME_MAX);
        assert_eq!(a, vpc_ifname("eni-bp1abcdefghijklmnopq"));
        assert_ne!(a, vpc_ifname("eni-bp1abcdefghijklmnopr"));
        // Pinned: the name must not change between builds, or a restart would not find links.
        assert_eq!(
            vpc_ifname(""),
            format!("v{:010x}", 0xcbf2_9ce4_8422_2325_u64 >> 24)
        );
    }

    #[test]
    fn bridge_names_fit_and_differ() {
        assert_eq!(bridge_name("vsw-h1"), "br-vsw-h1");
        let long1 = bridge_name("vsw-bp1abcdefghijklmnopq1");
        let long2 = bridge_name("vsw-bp1abcdefghijklmnopq2");
        assert!(long1.len() <= IFNAME_MAX && long2.len() <= IFNAME_MAX);
        assert!(long1.starts_with("br-vsw-bp"));
        assert_ne!(long1, long2);
        let odd = bridge_name("vsw a/b");
        assert!(odd.len() <= IFNAME_MAX);
        assert!(!odd.contains('/') && !odd.contains(' '));
        let mut names = BTreeMap::new();
        names.insert("x".to_string(), bridge_name("vsw-h1"));
        let clash = unique_bridge_name(&names, "vsw-h1");
        assert_ne!(clash, "br-vsw-h1");
        assert!(clash.len() <= IFNAME_MAX);
    }

    #[test]
    fn aliases_round_trip() {
        let a = Alias {
            eni: "eni-1".into(),
            instance: "i-a".into(),
            ifname: "eth2".into(),
        };
        assert_eq!(Alias::parse(&a.render()), Some(a));
        assert_eq!(Alias::parse("something else"), None);
        assert_eq!(Alias::parse("mock-cloud eni=x"), None);
    }

    #[test]
    fn netns_specs() {
        assert_eq!(Ns::parse("node-a"), Ns::Named("node-a".into()));
        assert_eq!(
            Ns::parse("/var/run/netns/node-a"),
            Ns::Named("node-a".into())
        );
        assert_eq!(
            Ns::parse("/proc/12/ns/net"),
            Ns::Path(PathBuf::from("/proc/12/ns/net"))
        );
        assert_eq!(
            Ns::Named("x".into()).path(),
            PathBuf::from("/var/run/netns/x")
        );
    }

    #[test]
    fn nic_specs_are_checked() {
        let mut nic = NicSpec {
            eni_id: "eni-1".into(),
            mac: "00:16:3e:aa:bb:cc".into(),
            vswitch_id: "vsw-1".into(),
            vswitch_cidr: "192.168.1.0/24".parse().expect("cidr"),
            gateway: Ipv4Addr::new(192, 168, 1, 253),
            primary_ip: None,
        };
        assert!(check_nic(&nic).is_ok());
        nic.mac = "00:16:3e:aa:bb".into();
        assert!(check_nic(&nic).is_err());
        nic.mac = "01:16:3e:aa:bb:cc".into();
        assert!(check_nic(&nic).is_err());
        nic.mac = "00:16:3e:aa:bb:cc".into();
        nic.eni_id = "eni 1".into();
        assert!(check_nic(&nic).is_err());
    }
}
