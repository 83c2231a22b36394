//! The commands: ADD, DEL, CHECK, STATUS, GC and VERSION, each from a validated
//! [`Invocation`] to the JSON to print (or nothing) or a [`CniError`].
//!
//! Order of work, always: validate (done by [`crate::config`]), open the namespaces, one
//! request to the manager, then the kernel. ADD undoes itself and releases the address
//! when wiring fails. DEL keeps going past errors and reports them all.

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use eni_kernel::netns::NetnsFd;
use eni_kernel::{Handle, LinkKind, Neigh, Netlink, Rule, TABLE_MAIN};
use eni_rpc::{
    AllocateRequest, Allocation, CheckRequest, Client, ClientError, ErrorCode, GcRequest,
    ReleaseRequest,
};
use ipnet::Ipv4Net;
use serde_json::Value;

use crate::config::{Command, Invocation, Mode, NetConf};
use crate::datapath::{
    self, del_link_by_name, exclusive, host_veth_name, ipvlan, veth, BeforeUp, Datapath, Journal,
    LinkAt, Namespaces, PodSpec, WireError, WireResult, RULE_PRIO_FROM_POD, RULE_PRIO_TO_POD,
};
use crate::error::{
    self, CniError, DATAPATH, IO_FAILURE, PLUGIN_LIMITED, PLUGIN_NOT_AVAILABLE, UNKNOWN_CONTAINER,
};
use crate::log::Level;
use crate::result::CniResult;
use crate::{log, version};

/// Where the plugin keeps its small state (the ipvlan probe's answer), unless the
/// environment variable `ENI_CNI_RUN_DIR` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/eni-cni";
/// Timeout for requests other than `allocate` (which waits `timeout_ms` plus a margin).
const MANAGER_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout for `allocate` when the netconf leaves the wait to the manager.
const ALLOCATE_DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one validated invocation. `Ok(Some(json))` is printed on stdout.
pub fn run(inv: &Invocation) -> Result<Option<Value>, CniError> {
    let Some(conf) = inv.conf.as_ref() else {
        return Ok(Some(version::version_answer(None)));
    };
    match inv.env.command {
        Command::Version => Ok(Some(version::version_answer(Some(
            conf.cni_version.as_str(),
        )))),
        Command::Add => add(inv, conf).map(Some),
        Command::Del => del(inv, conf).map(|()| None),
        Command::Check => check(inv, conf).map(|()| None),
        Command::Status => status(conf).map(|()| None),
        Command::Gc => gc(conf).map(|()| None),
    }
}

fn connect(conf: &NetConf, op: &str, timeout: Duration) -> Result<Client, CniError> {
    Client::connect(&conf.socket, timeout).map_err(|e| error::from_client(op, &e))
}

fn kernel_err(what: &str) -> impl FnOnce(eni_kernel::Error) -> CniError + '_ {
    move |e| CniError::datapath(what, &e)
}

/// Opens a netlink handle inside `ns`; the handle stays bound there. The plugin is
/// single-threaded, so its thread steps into the namespace and back rather than starting a
/// thread for it.
fn handle_in(ns: &NetnsFd) -> Result<Handle, CniError> {
    eni_kernel::netns::handle_in_this_thread(ns)
        .map_err(kernel_err("open netlink in the pod's namespace"))
}

fn run_dir() -> PathBuf {
    std::env::var_os("ENI_CNI_RUN_DIR")
        .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), PathBuf::from)
}

/// Picks the datapath for a pod.
fn choose_datapath(inv: &Invocation, conf: &NetConf) -> Datapath {
    if inv.wants_exclusive(conf) {
        return Datapath::Exclusive;
    }
    match conf.mode {
        Mode::Veth => Datapath::Veth,
        Mode::Ipvlan => Datapath::Ipvlan,
        Mode::Exclusive => Datapath::Exclusive,
        Mode::Auto => {
            let (ipvlan, cached) = ipvlan_supported(&run_dir());
            let chosen = if ipvlan {
                Datapath::Ipvlan
            } else {
                Datapath::Veth
            };
            log!(
                Level::Info,
                "mode auto: kernel ipvlan {} ({}), using {}",
                if ipvlan { "available" } else { "unavailable" },
                if cached { "cached probe" } else { "probed now" },
                chosen.as_str()
            );
            chosen
        }
    }
}

/// Whether the kernel has ipvlan, from the cache file in `dir` when it was written by
/// this kernel, else by probing (and caching the answer). Returns (answer, from cache).
pub fn ipvlan_supported(dir: &Path) -> (bool, bool) {
    let file = dir.join("ipvlan-probe");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Some((k, v)) = text.trim().rsplit_once(' ') {
            if k == kernel && (v == "1" || v == "0") {
                return (v == "1", true);
            }
        }
    }
    let supported = eni_kernel::kernel_supports(&LinkKind::Ipvlan);
    let _ = std::fs::create_dir_all(dir);
    let tmp = dir.join(format!(".ipvlan-probe.{}", std::process::id()));
    let body = format!("{kernel} {}\n", u8::from(supported));
    if std::fs::write(&tmp, body).is_ok() && std::fs::rename(&tmp, &file).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    (supported, false)
}

fn add(inv: &Invocation, conf: &NetConf) -> Result<Value, CniError> {
    let env = &inv.env;
    let netns = env
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let prev = match &conf.prev_result {
        Some(v) => CniResult::from_value(v)
            .map_err(|e| CniError::new(error::DECODE_FAILURE, format!("prevResult: {e}"), ""))?,
        None => CniResult::default(),
    };
    let datapath = choose_datapath(inv, conf);

    // Open everything before asking for an address.
    let pod_ns = NetnsFd::open(&netns).map_err(|e| {
        CniError::new(
            UNKNOWN_CONTAINER,
            format!("ADD: cannot open the pod's network namespace {netns}: {e}"),
            "",
        )
    })?;
    let host_ns = NetnsFd::current().map_err(kernel_err("open the node's namespace"))?;
    let mut host = Handle::new().map_err(kernel_err("open netlink on the node"))?;
    let mut pod = handle_in(&pod_ns)?;
    if pod.link_by_name(&env.ifname).is_ok() {
        return Err(CniError::new(
            DATAPATH,
            format!(
                "ADD: an interface {} already exists in the pod's namespace {netns}",
                env.ifname
            ),
            "the runtime called ADD twice, or another plugin created it; DEL first",
        ));
    }

    let timeout = if conf.timeout_ms == 0 {
        ALLOCATE_DEFAULT_TIMEOUT
    } else {
        MANAGER_TIMEOUT
    };
    let mut client = connect(conf, "ADD", timeout)?;
    let alloc = client
        .allocate(AllocateRequest {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            netns: netns.clone(),
            pod: env.pod.clone(),
            exclusive: datapath == Datapath::Exclusive,
            timeout_ms: conf.timeout_ms,
            port_mappings: conf.port_mappings.clone(),
        })
        .map_err(|e| error::from_client("ADD", &e))?;
    let datapath = if alloc.exclusive != (datapath == Datapath::Exclusive) {
        log!(
            Level::Warn,
            "asked for {} but the manager answered exclusive={}; following the manager",
            datapath.as_str(),
            alloc.exclusive
        );
        if alloc.exclusive {
            Datapath::Exclusive
        } else {
            Datapath::Veth
        }
    } else {
        datapath
    };
    let mtu = conf
        .mtu
        .unwrap_or(if alloc.mtu == 0 { 1500 } else { alloc.mtu });
    log!(
        Level::Info,
        "allocated {}/{} on {} ({}), table {}, wiring {} mode, mtu {mtu}",
        alloc.ip,
        alloc.prefix_len,
        alloc.eni_id,
        alloc.host_ifname,
        alloc.route_table,
        datapath.as_str()
    );

    let policy = alloc.policy_pin_dir.as_ref().map(|dir| PolicyAttach {
        pin_dir: PathBuf::from(dir),
        pod_netns: PathBuf::from(&netns),
        ip: alloc.ip,
        attached: RefCell::new(None),
    });
    let spec = PodSpec {
        container_id: &env.container_id,
        ifname: &env.ifname,
        sandbox: &netns,
        alloc: &alloc,
        mtu,
        before_up: policy.as_ref().map(|p| p as &dyn BeforeUp),
    };
    let mut ns = Namespaces {
        host: &mut host,
        pod: Some(&mut pod),
        host_fd: host_ns.as_fd(),
        pod_fd: Some(pod_ns.as_fd()),
    };
    let mut journal = Journal::default();
    let wired = match datapath {
        Datapath::Veth => veth::add(&mut ns, &spec, &mut journal),
        Datapath::Ipvlan => ipvlan::add(&mut ns, &spec, &mut journal),
        Datapath::Exclusive => exclusive::add(&mut ns, &spec, &mut journal),
    };
    match wired {
        Ok(attachment) => {
            let mut result = prev;
            result.add_attachment(&attachment);
            log!(Level::Info, "ADD done: {} in {netns}", attachment.address);
            Ok(result.to_json(conf.cni_version))
        }
        Err(wire_err) => {
            log!(Level::Error, "ADD failed, undoing: {wire_err}");
            let mut problems = journal.rollback(&mut ns);
            if let Some(p) = &policy {
                problems.extend(p.undo());
            }
            if let Err(e) = client.release(ReleaseRequest {
                container_id: env.container_id.clone(),
                ifname: env.ifname.clone(),
            }) {
                problems.push(format!("release {}: {}", alloc.ip, error::source_chain(&e)));
            }
            for p in &problems {
                log!(Level::Error, "cleanup after failed ADD: {p}");
            }
            let details = if problems.is_empty() {
                format!(
                    "everything ADD did was undone and {} was released",
                    alloc.ip
                )
            } else {
                format!("cleanup left problems: {}", problems.join("; "))
            };
            Err(CniError::new(
                DATAPATH,
                format!(
                    "ADD: wiring the pod ({} mode) failed at: {}: {}",
                    datapath.as_str(),
                    wire_err.what,
                    wire_err.source
                ),
                details,
            ))
        }
    }
}

/// DEL: the manager's view first (to know what was built), then the kernel, then release.
fn del(inv: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    let env = &inv.env;
    let mut errors: Vec<CniError> = Vec::new();
    let pod_ns = env.netns.as_ref().and_then(|p| match NetnsFd::open(p) {
        Ok(ns) => Some(ns),
        Err(e) => {
            log!(
                Level::Info,
                "DEL: pod namespace {} is gone ({e}); cleaning the node side only",
                p.display()
            );
            None
        }
    });
    let host_ns = NetnsFd::current().map_err(kernel_err("open the node's namespace"))?;
    let mut host = Handle::new().map_err(kernel_err("open netlink on the node"))?;
    let mut pod = match pod_ns.as_ref().map(handle_in).transpose() {
        Ok(p) => p,
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let mut ns = Namespaces {
        host: &mut host,
        pod: pod.as_mut().map(|p| p as &mut dyn Netlink),
        host_fd: host_ns.as_fd(),
        pod_fd: pod_ns.as_ref().map(AsFd::as_fd),
    };

    let mut client = match connect(conf, "DEL", MANAGER_TIMEOUT) {
        Ok(c) => Some(c),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let key = CheckRequest {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    };
    let alloc = match client.as_mut().map(|c| c.check(key.clone())) {
        Some(Ok(alloc)) => Some(alloc),
        Some(Err(ClientError::Remote(r))) if r.code == ErrorCode::NotFound => None,
        Some(Err(e)) => {
            errors.push(error::from_client("DEL", &e));
            None
        }
        None => None,
    };
    if let Some(a) = &alloc {
        for p in detach_policy(a, env.netns.as_deref()) {
            errors.push(CniError::new(DATAPATH, format!("DEL: {p}"), ""));
        }
    }
    let problems = match &alloc {
        Some(alloc) => teardown_known(&mut ns, env, alloc),
        None => teardown_unknown(&mut ns, &env.container_id, &env.ifname),
    };
    for p in problems {
        errors.push(CniError::new(DATAPATH, format!("DEL: {p}"), ""));
    }
    if let Some(client) = client.as_mut() {
        match client.release(ReleaseRequest {
            container_id: key.container_id,
            ifname: key.ifname,
        }) {
            Ok(Some(a)) => log!(Level::Info, "DEL: released {}", a.ip),
            Ok(None) => log!(
                Level::Info,
                "DEL: the manager held nothing for this interface"
            ),
            Err(e) => errors.push(error::from_client("DEL", &e)),
        }
    }
    combine("DEL", errors)
}

/// The node's own network namespace, as a path the policy loader can open (the plugin
/// runs single-threaded in it).
const HOST_NETNS: &str = "/proc/self/ns/net";

/// Attaches the NetworkPolicy programs to the pod's link while it is down (the
/// [`BeforeUp`] hook of ADD), and remembers where, to undo it if ADD fails.
#[derive(Debug)]
struct PolicyAttach {
    pin_dir: PathBuf,
    pod_netns: PathBuf,
    ip: Ipv4Addr,
    attached: RefCell<Option<(PathBuf, String)>>,
}

impl BeforeUp for PolicyAttach {
    fn before_up(&self, at: LinkAt, ifname: &str) -> WireResult<()> {
        let (netns, side) = match at {
            LinkAt::Host => (PathBuf::from(HOST_NETNS), eni_bpf::LinkSide::HostVeth),
            LinkAt::Pod => (self.pod_netns.clone(), eni_bpf::LinkSide::InPod),
        };
        // Recorded first: a half-done attach is undone too.
        *self.attached.borrow_mut() = Some((netns.clone(), ifname.to_string()));
        eni_bpf::policy::attach(&self.pin_dir, &netns, ifname, self.ip, side).map_err(|e| {
            WireError {
                what: format!(
                    "attach the NetworkPolicy programs to {ifname} (pins under {})",
                    self.pin_dir.display()
                ),
                source: eni_kernel::Error::Netlink {
                    op: "tc attach bpf",
                    subject: ifname.to_string(),
                    errno: 0,
                    message: error::source_chain(&e),
                },
            }
        })?;
        log!(
            Level::Debug,
            "NetworkPolicy programs attached to {ifname} ({side:?})"
        );
        Ok(())
    }
}

impl PolicyAttach {
    /// Detaches what [`BeforeUp::before_up`] attached; returns what failed.
    fn undo(&self) -> Vec<String> {
        match self.attached.borrow().as_ref() {
            Some((netns, ifname)) => match eni_bpf::policy::detach(&self.pin_dir, netns, ifname) {
                Ok(()) => Vec::new(),
                Err(e) => vec![format!(
                    "detach the NetworkPolicy programs from {ifname}: {}",
                    error::source_chain(&e)
                )],
            },
            None => Vec::new(),
        }
    }
}

/// Removes the NetworkPolicy programs of a pod (DEL, GC): from the host end of its veth,
/// and from its own interface when its namespace is still there. Idempotent; nothing to do
/// when the manager does not enforce policy. The pod's map entries are the manager's to
/// remove (on `release`).
fn detach_policy(alloc: &Allocation, pod_netns: Option<&Path>) -> Vec<String> {
    let Some(dir) = alloc.policy_pin_dir.as_deref() else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    let host = host_veth_name(&alloc.container_id, &alloc.ifname);
    let mut targets = vec![(PathBuf::from(HOST_NETNS), host)];
    if let Some(ns) = pod_netns.filter(|p| p.exists()) {
        targets.push((ns.to_path_buf(), alloc.ifname.clone()));
    }
    for (netns, ifname) in targets {
        if let Err(e) = eni_bpf::policy::detach(dir, &netns, &ifname) {
            problems.push(format!(
                "detach the NetworkPolicy programs from {ifname}: {}",
                error::source_chain(&e)
            ));
        }
    }
    problems
}

/// Several errors as one: the first one's code, every message.
fn combine(op: &str, errors: Vec<CniError>) -> Result<(), CniError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.into_iter().next().expect("one")),
        n => {
            let code = errors[0].code;
            let msgs: Vec<String> = errors.iter().map(|e| e.msg.clone()).collect();
            let details: Vec<String> = errors
                .iter()
                .map(|e| e.details.clone())
                .filter(|d| !d.is_empty())
                .collect();
            Err(CniError::new(
                code,
                format!("{op}: {n} problems: {}", msgs.join("; ")),
                details.join("; "),
            ))
        }
    }
}

/// Tears down a pod whose allocation the manager still knows.
fn teardown_known(
    ns: &mut Namespaces<'_>,
    env: &crate::config::Env,
    alloc: &Allocation,
) -> Vec<String> {
    let spec = PodSpec {
        container_id: &env.container_id,
        ifname: &env.ifname,
        sandbox: "",
        alloc,
        mtu: alloc.mtu,
        before_up: None,
    };
    if alloc.exclusive {
        return exclusive::del(ns, &spec);
    }
    let mut errors = Vec::new();
    if let Some(pod) = ns.pod.as_deref_mut() {
        if let Err(e) = del_pod_virtual_link(pod, &env.ifname) {
            errors.push(format!("delete {} in the pod: {e}", env.ifname));
        }
    }
    errors.extend(veth::del_host_side(
        ns.host,
        &env.container_id,
        &env.ifname,
        alloc.ip,
        alloc.route_table,
        &alloc.host_ifname,
    ));
    errors.extend(ipvlan::del(ns, &spec));
    errors
}

/// Deletes the pod's interface when it is one we create (veth or ipvlan), never a NIC.
fn del_pod_virtual_link(pod: &mut dyn Netlink, ifname: &str) -> eni_kernel::Result<()> {
    match pod.link_by_name(ifname) {
        Ok(l) if matches!(l.kind, Some(LinkKind::Veth | LinkKind::Ipvlan)) => {
            pod.link_del_if_exists(l.index).map(drop)
        }
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Tears down what can be found without the manager's record: the host veth (named from
/// the container id and ifname), the rules and proxy entries of the address routed to it.
fn teardown_unknown(ns: &mut Namespaces<'_>, container_id: &str, ifname: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let host_name = host_veth_name(container_id, ifname);
    if let Ok(link) = ns.host.link_by_name(&host_name) {
        let ips: Vec<Ipv4Net> = ns
            .host
            .route_list(TABLE_MAIN)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.oif == Some(link.index))
            .filter_map(|r| r.dst)
            .filter(|d| d.prefix_len() == 32)
            .collect();
        if let Err(e) = ns.host.link_del_if_exists(link.index) {
            errors.push(format!("delete {host_name}: {e}"));
        }
        for ip32 in ips {
            errors.extend(del_rules_and_proxies(ns.host, ip32));
        }
    }
    if let Some(pod) = ns.pod.as_deref_mut() {
        if let Err(e) = del_pod_virtual_link(pod, ifname) {
            errors.push(format!("delete {ifname} in the pod: {e}"));
        }
    }
    errors
}

/// Removes the rules for `ip32` (any table) and its proxy entries on any NIC.
fn del_rules_and_proxies(host: &mut dyn Netlink, ip32: Ipv4Net) -> Vec<String> {
    let mut errors = Vec::new();
    for rule in [
        Rule::new(TABLE_MAIN).priority(RULE_PRIO_TO_POD).to(ip32),
        Rule::new(0).priority(RULE_PRIO_FROM_POD).from(ip32),
    ] {
        if let Err(e) = host.rule_del_if_exists(&rule) {
            errors.push(format!("delete rule {rule:?}: {e}"));
        }
    }
    for link in host.link_list().unwrap_or_default() {
        if link.kind.is_none() || link.kind == Some(LinkKind::Veth) {
            let _ = host.neigh_del_if_exists(&Neigh::proxy(link.index, ip32.addr()));
        }
    }
    errors
}

fn check(inv: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    let env = &inv.env;
    let netns = env
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let pod_ns = NetnsFd::open(&netns).map_err(|e| {
        CniError::new(
            UNKNOWN_CONTAINER,
            format!("CHECK: cannot open the pod's network namespace {netns}: {e}"),
            "",
        )
    })?;
    let host_ns = NetnsFd::current().map_err(kernel_err("open the node's namespace"))?;
    let mut client = connect(conf, "CHECK", MANAGER_TIMEOUT)?;
    let alloc = client
        .check(CheckRequest {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
        })
        .map_err(|e| error::from_client("CHECK", &e))?;
    let mut host = Handle::new().map_err(kernel_err("open netlink on the node"))?;
    let mut pod = handle_in(&pod_ns)?;
    let datapath = if alloc.exclusive {
        Datapath::Exclusive
    } else {
        match pod.link_by_name(&env.ifname).map(|l| l.kind) {
            Ok(Some(LinkKind::Ipvlan)) => Datapath::Ipvlan,
            _ => Datapath::Veth,
        }
    };
    let spec = PodSpec {
        container_id: &env.container_id,
        ifname: &env.ifname,
        sandbox: &netns,
        alloc: &alloc,
        mtu: alloc.mtu,
        before_up: None,
    };
    let mut ns = Namespaces {
        host: &mut host,
        pod: Some(&mut pod),
        host_fd: host_ns.as_fd(),
        pod_fd: Some(pod_ns.as_fd()),
    };
    let mut missing = match datapath {
        Datapath::Veth => veth::check(&mut ns, &spec),
        Datapath::Ipvlan => ipvlan::check(&mut ns, &spec),
        Datapath::Exclusive => exclusive::check(&mut ns, &spec),
    };
    if let Some(prev) = &conf.prev_result {
        let prev = CniResult::from_value(prev)
            .map_err(|e| CniError::new(error::DECODE_FAILURE, format!("prevResult: {e}"), ""))?;
        let ours = if datapath == Datapath::Veth {
            Some(spec.ip32())
        } else {
            spec.ip_prefix().ok()
        };
        if let Some(ours) = ours {
            if !prev.ipv4_addresses().contains(&ours) {
                missing.push(format!(
                    "prevResult does not list {ours}, which eni-manager allocated"
                ));
            }
        }
        if !prev.has_sandbox_interface(&env.ifname, &netns) {
            missing.push(format!(
                "prevResult does not list interface {} in {netns}",
                env.ifname
            ));
        }
    }
    if missing.is_empty() {
        log!(Level::Info, "CHECK ok ({} mode)", datapath.as_str());
        return Ok(());
    }
    Err(CniError::new(
        DATAPATH,
        format!(
            "CHECK ({} mode): {} missing or wrong: {}",
            datapath.as_str(),
            missing.len(),
            missing.join("; ")
        ),
        "DEL and ADD the pod again (delete the pod) to rebuild its networking",
    ))
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let mut client = Client::connect(&conf.socket, MANAGER_TIMEOUT).map_err(|e| {
        CniError::new(
            PLUGIN_NOT_AVAILABLE,
            format!("STATUS: {}", error::source_chain(&e)),
            "eni-manager must run on this node before pods can get addresses",
        )
    })?;
    let status = client.status().map_err(|e| {
        CniError::new(
            PLUGIN_NOT_AVAILABLE,
            format!(
                "STATUS: eni-manager does not answer status: {}",
                error::source_chain(&e)
            ),
            "",
        )
    })?;
    if let Some(why) = &status.degraded {
        if status.pool.idle == 0 {
            return Err(CniError::new(
                PLUGIN_LIMITED,
                format!("STATUS: eni-manager is degraded ({why}) and has no idle address"),
                "new pods wait until the cloud API is reachable again",
            ));
        }
        log!(
            Level::Warn,
            "eni-manager degraded ({why}); {} idle addresses",
            status.pool.idle
        );
    }
    Ok(())
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    let mut client = connect(conf, "GC", MANAGER_TIMEOUT)?;
    let released = client
        .gc(GcRequest {
            valid: conf.valid_attachments.clone(),
        })
        .map_err(|e| error::from_client("GC", &e))?;
    log!(
        Level::Info,
        "GC: eni-manager released {} allocations",
        released.len()
    );
    let mut host = Handle::new().map_err(kernel_err("open netlink on the node"))?;
    let mut errors = Vec::new();
    for alloc in &released {
        errors.extend(detach_policy(alloc, None));
        if alloc.exclusive {
            continue; // The ENI link returns to the node when the pod's namespace dies.
        }
        errors.extend(veth::del_host_side(
            &mut host,
            &alloc.container_id,
            &alloc.ifname,
            alloc.ip,
            alloc.route_table,
            &alloc.host_ifname,
        ));
        if let Ok(eni) = host.link_by_name(&alloc.host_ifname) {
            if let Ok(slave) = host.link_by_name(&ipvlan::host_slave_name(eni.index)) {
                let route = datapath::host_route(
                    Ipv4Net::new(alloc.ip, 32).expect("/32 is valid"),
                    slave.index,
                );
                if let Err(e) = host.route_del_if_exists(&route) {
                    errors.push(format!("delete route {}: {e}", alloc.ip));
                }
            }
        }
        let _ = del_link_by_name(
            &mut host,
            &host_veth_name(&alloc.container_id, &alloc.ifname),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            DATAPATH,
            format!(
                "GC: released {} allocations but cleanup failed: {}",
                released.len(),
                errors.join("; ")
            ),
            "",
        ))
    }
}

/// Maps an I/O failure reading stdin.
pub fn stdin_error(e: &std::io::Error) -> CniError {
    CniError::new(
        IO_FAILURE,
        format!("cannot read the network configuration from stdin: {e}"),
        "",
    )
}
