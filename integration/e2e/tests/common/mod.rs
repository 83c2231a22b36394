//! Harness for the full-stack tests: the built `mock-cloud` (with its hypervisor) binding two
//! instances to two node namespaces, an `eni-manager` process inside each node namespace, and
//! the `eni-cni` binary run inside a node namespace to wire pods (fresh network namespaces).
//! Traffic is real TCP between those namespaces, from small `python3` programs started with
//! `ip netns exec`.
//!
//! Every process and namespace is owned by a guard that removes it on drop, also when the
//! test panics. Nothing here touches the root namespace's network; the mock listens on
//! loopback, and inside its own VPC namespace.
//!
//! Binaries: `MOCK_CLOUD_BIN`, `ENI_MANAGER_BIN`, `ENI_CNI_BIN`, else next to the test
//! executable (`<target>/debug/<name>`); CI runs `cargo build --workspace --bins` first.

#![allow(
    dead_code,
    clippy::print_stdout,
    reason = "each test binary uses part of the harness; failures print logs on stdout"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use eni_rpc::{Allocation, Client, Status};
use serde_json::{json, Value};

/// The process runs as root (namespaces, links, routes).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Returns from the test with a visible skip when not root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::is_root() {
            std::io::Write::write_all(&mut std::io::stderr(), b"SKIPPED: needs root\n").ok();
            return;
        }
    };
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn next_seq() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Runs a command, panicking with its stderr on failure; returns stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, ignoring the outcome.
pub fn quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Polls `cond` every 50 ms until it holds or `within` passes; returns whether it held.
pub fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A built binary of the workspace: `$<env>`, else `<target>/debug/<name>`.
pub fn binary(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env}={} is not a file", p.display());
        return p;
    }
    // <target>/debug/deps/<test exe> -> <target>/debug/<name>; a binary that includes this
    // harness (eni-bench) sits in <target>/<profile>/ itself.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("the executable's directory");
    let candidate = if dir.ends_with("deps") {
        dir.parent().map(|d| d.join(name))
    } else {
        Some(dir.join(name))
    };
    match candidate {
        Some(c) if c.is_file() => c,
        _ => panic!(
            "the `{name}` binary was not found (looked at {candidate:?}); run \
             `cargo build --workspace --bins` with the same CARGO_TARGET_DIR first, or set {env}"
        ),
    }
}

pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let d =
            std::env::temp_dir().join(format!("e2e-{tag}-{}-{}", std::process::id(), next_seq()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            println!("(kept {} for inspection)", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------------------------

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    deleted: bool,
}

impl Netns {
    /// A fresh namespace with loopback up.
    pub fn create(name: &str) -> Netns {
        quiet(&["ip", "netns", "del", name]);
        sh(&["ip", "netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
            deleted: false,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A namespace set up as a cloud VM's network stack: a NIC answers ARP only for its own
    /// addresses (several NICs share one vSwitch), and it forwards (pods behind it).
    pub fn create_node(name: &str) -> Netns {
        let ns = Netns::create(name);
        for (k, v) in [
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.default.arp_ignore", "1"),
            ("net.ipv4.conf.default.arp_announce", "2"),
            ("net.ipv4.ip_forward", "1"),
        ] {
            ns.exec(&["sysctl", "-qw", &format!("{k}={v}")]);
        }
        ns
    }

    /// The path a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NAME ARGS`, panicking on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// `ip -n NAME -j ARGS` as JSON (an empty answer is `[]`).
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        let out = self.ip(&all);
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
            .unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {out}"))
    }

    /// `ip netns exec NAME ARGS`, panicking on failure; returns stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Links, by name.
    pub fn links(&self) -> BTreeMap<String, Value> {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["ifname"].as_str().unwrap().to_string(), l.clone()))
            .collect()
    }

    pub fn link_by_mac(&self, mac: &str) -> Option<Value> {
        self.links()
            .into_values()
            .find(|l| l["address"].as_str() == Some(mac))
    }

    /// The name of the link that holds `ip` (any prefix length).
    pub fn link_with_addr(&self, ip: Ipv4Addr) -> Option<String> {
        self.ip_json(&["-4", "addr", "show"])
            .as_array()
            .unwrap()
            .iter()
            .find(|l| {
                l["addr_info"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|i| i["local"] == ip.to_string()))
            })
            .map(|l| l["ifname"].as_str().unwrap().to_string())
    }

    /// Transmitted packets of one link.
    pub fn tx_packets(&self, link: &str) -> u64 {
        let v = self.ip_json(&["-s", "link", "show", "dev", link]);
        v[0]["stats64"]["tx"]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no tx counter for {link} in {}: {v}", self.name))
    }

    /// What the node's kernel holds that pods could change: links (name, up, master),
    /// addresses, rules, routes of every table, neighbour proxies. For "nothing changed".
    pub fn snapshot(&self) -> String {
        let links: Vec<String> = self
            .links()
            .values()
            .map(|l| format!("{} {} {}", l["ifname"], l["operstate"], l["address"]))
            .collect();
        let strip = |v: Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    let mut x = x.clone();
                    if let Some(o) = x.as_object_mut() {
                        // Counters and timers move on their own.
                        for k in ["stats64", "expires", "used", "cacheinfo"] {
                            o.remove(k);
                        }
                    }
                    x.to_string()
                })
                .collect()
        };
        format!(
            "links: {links:#?}\naddrs: {:#?}\nrules: {:#?}\nroutes: {:#?}\nproxies: {}",
            strip(self.ip_json(&["-4", "addr", "show"])),
            strip(self.ip_json(&["rule", "show"])),
            strip(self.ip_json(&["-4", "route", "show", "table", "all"])),
            self.ip(&["neigh", "show", "proxy"])
        )
    }

    /// Deletes the namespace now (the runtime removed the pod before DEL).
    pub fn delete(&mut self) {
        quiet(&["ip", "netns", "del", &self.name]);
        self.deleted = true;
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.deleted {
            quiet(&["ip", "netns", "del", &self.name]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client (the mock's admin API)
// ---------------------------------------------------------------------------------------------

/// One request with `Connection: close`: (status, body).
pub fn http(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    if !chunked {
        return (status, payload.to_string());
    }
    let mut out = String::new();
    let mut rest = payload;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    (status, out)
}

// ---------------------------------------------------------------------------------------------
// mock-cloud
// ---------------------------------------------------------------------------------------------

pub const KEY_ID: &str = "e2eid";
pub const KEY_SECRET: &str = "e2esecret";
pub const CLUSTER: &str = "e2e";
pub const ZONE: &str = "cn-hangzhou-h";
pub const VSWITCH: &str = "vsw-h1";
/// The vSwitch's gateway (the fourth-last address of 192.168.1.0/24).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 253);

/// A running mock-cloud; SIGTERM on drop (it then removes its VPC namespace), then the VPC
/// namespace is deleted in case it did not.
#[derive(Debug)]
pub struct MockCloud {
    pub url: String,
    pub vpc_ns: String,
    child: Child,
    log: PathBuf,
}

impl MockCloud {
    pub fn start(world: &Value, dir: &Path) -> MockCloud {
        let bin = binary("mock-cloud", "MOCK_CLOUD_BIN");
        let world_path = dir.join("world.yaml");
        // JSON is YAML.
        std::fs::write(&world_path, serde_json::to_string_pretty(world).unwrap()).unwrap();
        let vpc_ns = world["hypervisor"]["vpc_netns"]
            .as_str()
            .expect("the world names its VPC namespace")
            .to_string();
        let log = dir.join("mock-cloud.log");
        let mut child = Command::new(&bin)
            .arg("--world")
            .arg(&world_path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut mock = MockCloud {
            url: String::new(),
            vpc_ns,
            child,
            log,
        };
        mock.url = line
            .trim()
            .strip_prefix("mock-cloud listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line from mock-cloud: {line:?}; log:\n{}",
                    std::fs::read_to_string(&mock.log).unwrap_or_default()
                )
            })
            .to_string();
        mock
    }

    pub fn admin(&self, path: &str) -> Value {
        let (status, body) = http("GET", &format!("{}/_admin/{path}", self.url), None);
        assert_eq!(status, 200, "GET /_admin/{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn state(&self) -> Value {
        self.admin("state")
    }

    /// Replaces the faults (`{"actions": {...}}`), keeping the world's timing.
    pub fn set_faults(&self, faults: &Value) {
        let current = self.admin("faults");
        let body = json!({"faults": faults, "timing": current["timing"]});
        let (status, text) = http(
            "PUT",
            &format!("{}/_admin/faults", self.url),
            Some(&body.to_string()),
        );
        assert_eq!(status, 200, "PUT /_admin/faults: {text}");
    }

    /// The ENI (from `GET /_admin/state`) with this id.
    pub fn eni(&self, id: &str) -> Value {
        self.state()["enis"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("the mock has no ENI {id}"))
    }

    /// Every address every ENI holds, with its holders; panics naming any address held twice.
    pub fn assert_no_address_twice(&self) -> usize {
        let state = self.state();
        let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in state["enis"].as_array().unwrap() {
            for ip in e["private_ips"].as_array().unwrap() {
                holders
                    .entry(ip.as_str().unwrap().to_string())
                    .or_default()
                    .push(e["id"].as_str().unwrap().to_string());
            }
            if let Some(p) = e["primary_ip"].as_str() {
                let ids = holders.entry(p.to_string()).or_default();
                if !ids.contains(&e["id"].as_str().unwrap().to_string()) {
                    ids.push(e["id"].as_str().unwrap().to_string());
                }
            }
        }
        let twice: Vec<_> = holders.iter().filter(|(_, h)| h.len() > 1).collect();
        assert!(
            twice.is_empty(),
            "addresses held twice in the mock: {twice:?}"
        );
        holders.len()
    }

    fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for MockCloud {
    fn drop(&mut self) {
        if std::thread::panicking() {
            println!(
                "---- mock-cloud log ({}), last lines ----\n{}",
                self.log.display(),
                self.log_tail(40)
            );
        }
        terminate(&mut self.child, Duration::from_secs(5));
        quiet(&["ip", "netns", "del", &self.vpc_ns]);
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    quiet(&["kill", "-TERM", &child.id().to_string()]);
    let exited = wait_for(grace, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let _ = child.wait();
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// eni-manager
// ---------------------------------------------------------------------------------------------

/// A running `eni-manager` inside a node namespace; SIGTERM on drop (it removes its socket),
/// SIGKILL if it does not stop. Its log is printed when the test fails.
#[derive(Debug)]
pub struct Manager {
    pub node: String,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Manager {
    /// Writes the configuration into `dir` and starts the manager in namespace `node`.
    pub fn start(dir: &Path, node: &str, metrics_port: u16, pool: &Value) -> Manager {
        Manager::start_with(dir, node, metrics_port, pool, &Value::Null)
    }

    /// As [`Manager::start`], with `services` as the configuration's `services` section
    /// (`null`: none).
    pub fn start_with(
        dir: &Path,
        node: &str,
        metrics_port: u16,
        pool: &Value,
        services: &Value,
    ) -> Manager {
        Manager::start_sections(
            dir,
            node,
            metrics_port,
            pool,
            &json!({ "services": services }),
        )
    }

    /// As [`Manager::start`], with extra configuration sections (`{"services": ...,
    /// "policy": ...}`; a `null` section is left out).
    pub fn start_sections(
        dir: &Path,
        node: &str,
        metrics_port: u16,
        pool: &Value,
        sections: &Value,
    ) -> Manager {
        let bin = binary("eni-manager", "ENI_MANAGER_BIN");
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("manager.sock");
        let mut cfg = json!({
            "cloud": {
                "provider": "aliyun", "region": "cn-hangzhou",
                "endpoint": "http://100.100.100.200",
                "metadata_endpoint": "http://100.100.100.200",
                "credentials": "env", "rate_per_second": 50.0, "rate_burst": 50
            },
            "cluster": {"id": CLUSTER},
            "network": {"subnets": {ZONE: [VSWITCH]}},
            "pool": pool,
            "gc": {"interval_s": 3600, "grace_s": 3600, "orphan_eni_grace_s": 3600},
            "daemon": {
                "socket": socket, "state_dir": dir.join("state"),
                "metrics_address": format!("127.0.0.1:{metrics_port}")
            }
        });
        for (k, v) in sections.as_object().expect("sections is an object") {
            if !v.is_null() {
                cfg[k] = v.clone();
            }
        }
        let config = dir.join("manager.yaml");
        std::fs::write(&config, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
        let log = dir.join("manager.log");
        // Appended to: a restarted manager keeps the first one's log.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        // `ip netns exec` execs the manager: the child's pid is the manager's.
        let child = Command::new("ip")
            .args(["netns", "exec", node])
            .arg(&bin)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,eni_manager=debug")
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", KEY_SECRET)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Manager {
            node: node.to_string(),
            socket,
            log,
            child,
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("connect to the manager of {}: {e}", self.node))
    }

    pub fn status(&self) -> Status {
        self.client()
            .status()
            .unwrap_or_else(|e| panic!("status of the manager of {}: {e}", self.node))
    }

    pub fn allocations(&self) -> Vec<Allocation> {
        self.client().list().expect("list")
    }

    /// Waits until the manager answers and its pool holds `min_idle` idle addresses on ENIs
    /// that are all ready.
    pub fn wait_ready(&mut self, min_idle: u32, within: Duration) {
        let ok = wait_for(within, || {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "eni-manager in {} exited ({st}); log:\n{}",
                    self.node,
                    tail(&self.log, 60)
                );
            }
            Client::connect(&self.socket, Duration::from_secs(5))
                .and_then(|mut c| c.status())
                .is_ok_and(|s| s.pool.idle >= min_idle && self.settled(&s))
        });
        assert!(
            ok,
            "eni-manager in {} was not ready within {within:?}; log:\n{}",
            self.node,
            tail(&self.log, 60)
        );
    }

    fn settled(&self, s: &Status) -> bool {
        s.pool
            .enis
            .iter()
            .all(|e| e.status.eq_ignore_ascii_case("ready"))
    }

    /// Waits until no ENI is in transition and the pool holds at least `min_idle` idle
    /// addresses (so a snapshot of the node is not disturbed by a refill).
    pub fn wait_settled(&self, min_idle: u32) {
        let within = Duration::from_secs(20);
        let ok = wait_for(within, || {
            Client::connect(&self.socket, Duration::from_secs(5))
                .and_then(|mut c| c.status())
                .is_ok_and(|s| s.pool.idle >= min_idle && self.settled(&s))
        });
        assert!(
            ok,
            "the pool of {} did not settle within {within:?}: {:?}",
            self.node,
            self.client().status()
        );
    }

    /// The address of `ip` in the manager's status: (ENI id, holding container).
    pub fn ip_owner(&self, ip: Ipv4Addr) -> Option<(String, Option<String>)> {
        self.status().pool.enis.iter().find_map(|e| {
            e.ips
                .iter()
                .find(|i| i.ip == ip)
                .map(|i| (e.eni_id.clone(), i.container_id.clone()))
        })
    }

    /// The manager's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash or an OOM kill would: nothing is cleaned up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Lines of the log that contain every one of `needles`.
    pub fn log_has(&self, needles: &[&str]) -> bool {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if std::thread::panicking() {
            println!(
                "---- eni-manager log of {} ({}), last lines ----\n{}",
                self.node,
                self.log.display(),
                tail(&self.log, 50)
            );
        }
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster: mock + two nodes + their managers
// ---------------------------------------------------------------------------------------------

/// Two nodes bound to the mock's hypervisor, a manager in each. Drop order: managers, mock
/// (its VPC namespace), node namespaces, the directory.
#[derive(Debug)]
pub struct Cluster {
    pub a: Manager,
    pub b: Manager,
    /// The Service datapath's pieces of node A, when started with services.
    pub svc_a: Option<SvcNode>,
    /// The NetworkPolicy pieces of node A, when started with policy.
    pub pol_a: Option<PolicyNode>,
    pub mock: MockCloud,
    pub node_a: Netns,
    pub node_b: Netns,
    pub ip_a: Ipv4Addr,
    pub ip_b: Ipv4Addr,
    pub dir: TempDir,
    cni: PathBuf,
}

/// The pool settings of every node: small watermarks, nothing released during a test.
pub fn pool_settings() -> Value {
    json!({
        "min_idle": 2, "max_idle": 6, "release_cooldown_s": 3600,
        "batch_window_ms": 10, "allocate_timeout_ms": 20000
    })
}

pub const MIN_IDLE: u32 = 2;

/// How [`Cluster::start_opts`] builds the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// Both managers' `pool` section.
    pub pool: Value,
    /// Node A's manager runs the Service datapath.
    pub services: bool,
    /// ENIs per instance (primary included) and IPv4 addresses per ENI.
    pub eni_quantity: u32,
    pub ips_per_eni: u32,
    /// The mock cloud's `timing` and `faults` sections.
    pub timing: Value,
    pub faults: Value,
    /// How long the managers may take to warm their pools.
    pub ready_within: Duration,
    /// The nodes' vSwitch (it must hold 192.168.1.10 and .11, the nodes' addresses).
    pub vswitch_cidr: &'static str,
    /// Node A's manager enforces NetworkPolicy (file source, a private bpffs: see
    /// [`PolicyNode`]); its CNI then attaches the programs.
    pub policy: bool,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            pool: pool_settings(),
            services: false,
            eni_quantity: 4,
            ips_per_eni: 10,
            timing: json!({"attach_ms": [200, 400], "detach_ms": 100, "delete_ms": 100, "metadata_lag_ms": 100}),
            faults: json!({}),
            ready_within: Duration::from_secs(30),
            vswitch_cidr: "192.168.1.0/24",
            policy: false,
        }
    }
}

impl Cluster {
    /// Starts everything with [`pool_settings`] and waits until both managers have a warm
    /// pool.
    pub fn start() -> Cluster {
        Cluster::start_with(&pool_settings())
    }

    /// Starts everything with these `pool` settings on both nodes.
    pub fn start_with(pool: &Value) -> Cluster {
        Cluster::start_opts(&ClusterOpts {
            pool: pool.clone(),
            ..ClusterOpts::default()
        })
    }

    /// Starts everything, node A's manager with the eBPF Service datapath on (file source,
    /// a private bpffs, a cgroup of its own: see [`SvcNode`]).
    pub fn start_with_services() -> Cluster {
        Cluster::start_opts(&ClusterOpts {
            services: true,
            ..ClusterOpts::default()
        })
    }

    /// Starts everything as `opts` says, and waits until both managers hold `min_idle`
    /// idle addresses (the pool's `min_idle`, else [`MIN_IDLE`]).
    pub fn start_opts(opts: &ClusterOpts) -> Cluster {
        let pool = &opts.pool;
        let services = opts.services;
        let min_idle = pool["min_idle"]
            .as_u64()
            .map_or(MIN_IDLE, |n| u32::try_from(n).unwrap_or(MIN_IDLE));
        let pid = std::process::id();
        let n = next_seq();
        let suffix = if n == 0 {
            format!("{pid}")
        } else {
            format!("{pid}-{n}")
        };
        let dir = TempDir::new("cluster");
        let cni = binary("eni-cni", "ENI_CNI_BIN");
        // Fail on a missing binary before anything is created.
        binary("eni-manager", "ENI_MANAGER_BIN");
        binary("mock-cloud", "MOCK_CLOUD_BIN");
        let node_a = Netns::create_node(&format!("node-a-{suffix}"));
        let node_b = Netns::create_node(&format!("node-b-{suffix}"));
        let (ip_a, ip_b) = (
            Ipv4Addr::new(192, 168, 1, 10),
            Ipv4Addr::new(192, 168, 1, 11),
        );
        let instance = |id: &str, ip: Ipv4Addr, ns: &Netns| {
            json!({
                "id": id, "type": "ecs.e2e", "vswitch": VSWITCH, "security_groups": ["sg-nodes"],
                "primary_ip": ip.to_string(), "primary_eni": format!("eni-{id}-primary"),
                "netns": ns.name
            })
        };
        let world = json!({
            "region": "cn-hangzhou",
            "zones": [ZONE],
            "vpc": {"id": "vpc-e2e", "cidr": "192.168.0.0/16"},
            "vswitches": [{"id": VSWITCH, "zone": ZONE, "cidr": opts.vswitch_cidr}],
            "security_groups": ["sg-nodes"],
            "instance_types": [{
                "id": "ecs.e2e", "eni_quantity": opts.eni_quantity,
                "eni_private_ip_address_quantity": opts.ips_per_eni,
                "eni_ipv6_address_quantity": 0, "prefix_support": false
            }],
            "instances": [instance("i-node-a", ip_a, &node_a), instance("i-node-b", ip_b, &node_b)],
            "access_keys": [{"id": KEY_ID, "secret": KEY_SECRET}],
            "timing": opts.timing,
            "faults": opts.faults,
            "hypervisor": {"vpc_netns": format!("e2evpc-{suffix}")}
        });
        let mock = MockCloud::start(&world, dir.path());
        for ns in [&node_a, &node_b] {
            assert!(
                wait_for(Duration::from_secs(10), || ns.links().contains_key("eth0")),
                "the hypervisor did not give {} its primary NIC",
                ns.name
            );
        }
        let svc_a = services.then(|| SvcNode::create(&dir.path().join("svc-a"), &suffix));
        let pol_a = opts
            .policy
            .then(|| PolicyNode::create(&dir.path().join("pol-a"), &suffix));
        let mut a = Manager::start_sections(
            &dir.path().join("node-a"),
            &node_a.name,
            19410,
            pool,
            &json!({
                "services": svc_a.as_ref().map_or(Value::Null, SvcNode::config),
                "policy": pol_a.as_ref().map_or(Value::Null, PolicyNode::config),
            }),
        );
        let mut b = Manager::start(&dir.path().join("node-b"), &node_b.name, 19411, pool);
        a.wait_ready(min_idle, opts.ready_within);
        b.wait_ready(min_idle, opts.ready_within);
        // Each manager found its own instance through the metadata service, by the source
        // address of its requests.
        assert_eq!(a.status().node.instance_id, "i-node-a");
        assert_eq!(b.status().node.instance_id, "i-node-b");
        Cluster {
            a,
            b,
            svc_a,
            pol_a,
            mock,
            node_a,
            node_b,
            ip_a,
            ip_b,
            dir,
            cni,
        }
    }

    pub fn manager(&self, node: Node) -> &Manager {
        match node {
            Node::A => &self.a,
            Node::B => &self.b,
        }
    }

    pub fn node(&self, node: Node) -> &Netns {
        match node {
            Node::A => &self.node_a,
            Node::B => &self.node_b,
        }
    }

    /// A netconf for `node`'s manager (`cniVersion` 1.1.0); `extra` is merged in.
    pub fn netconf(&self, node: Node, mode: &str, extra: &Value) -> Value {
        let m = self.manager(node);
        let mut conf = json!({
            "cniVersion": "1.1.0",
            "name": "e2e",
            "type": "eni-cni",
            "socket": m.socket,
            "mode": mode,
            "log_file": self.dir.path().join(format!("cni-{}.log", node.tag())),
            "log_level": "debug",
            "timeout_ms": 20000
        });
        for (k, v) in extra.as_object().expect("extra is an object") {
            conf[k] = v.clone();
        }
        conf
    }

    /// Runs `eni-cni` inside `node`'s namespace with the `CNI_*` environment and `conf` on
    /// stdin.
    pub fn cni(&self, node: Node, env: &CniEnv<'_>, conf: &Value) -> Run {
        let ns = &self.node(node).name;
        let started = Instant::now();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(&self.cni)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", env.command)
            .env("CNI_PATH", "/opt/cni/bin")
            .env("ENI_CNI_RUN_DIR", self.dir.path().join("cni-run"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(c) = env.container {
            cmd.env("CNI_CONTAINERID", c);
        }
        if let Some(n) = env.netns {
            cmd.env("CNI_NETNS", n);
        }
        if let Some(i) = env.ifname {
            cmd.env("CNI_IFNAME", i);
        }
        if let Some(a) = env.args {
            cmd.env("CNI_ARGS", a);
        }
        let mut child = cmd.spawn().expect("run eni-cni");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            command: env.command.to_string(),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
        }
    }

    /// Starts `eni-cni` ADD without waiting for it (a failure injected while it runs).
    pub fn cni_spawn(&self, node: Node, env: &CniEnv<'_>, conf: &Value) -> Child {
        let ns = &self.node(node).name;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(&self.cni)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", env.command)
            .env("CNI_CONTAINERID", env.container.unwrap())
            .env("CNI_NETNS", env.netns.unwrap())
            .env("CNI_IFNAME", env.ifname.unwrap())
            .env("ENI_CNI_RUN_DIR", self.dir.path().join("cni-run"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run eni-cni");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        child
    }

    /// A new pod namespace on `node`, wired by `eni-cni` ADD in `mode`.
    pub fn add_pod(&self, node: Node, mode: &str, extra: &Value) -> Pod {
        let n = next_seq();
        let ns = Netns::create(&format!("pod-{}-{}-{n}", node.tag(), std::process::id()));
        let container = format!("e2e{:08x}{:04x}c{n}", std::process::id(), n);
        let conf = self.netconf(node, mode, extra);
        let run = self.cni(
            node,
            &CniEnv::add(
                &container,
                &ns.path(),
                "eth0",
                &format!("K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=p{n}"),
            ),
            &conf,
        );
        let run = run.ok();
        let result = run.json();
        let ip = pod_ip(&result);
        Pod {
            node,
            netns: ns.path(),
            ns,
            container,
            ifname: "eth0".into(),
            ip,
            result,
            conf,
            deleted: false,
        }
    }

    /// DEL of `pod` through `eni-cni`; asserts success.
    pub fn del_pod(&self, pod: &mut Pod) -> Run {
        let run = self.cni(pod.node, &pod.env("DEL"), &pod.conf).ok();
        pod.deleted = true;
        run
    }

    /// CHECK of `pod` with its ADD result as `prevResult`.
    pub fn check_pod(&self, pod: &Pod) -> Run {
        let mut conf = pod.conf.clone();
        conf["prevResult"] = pod.result.clone();
        self.cni(pod.node, &pod.env("CHECK"), &conf)
    }
}

/// What a node's Service datapath needs in a test, none of it shared with the machine: a
/// directory of Service/EndpointSlice YAML files, a private bpffs for the pins, and a cgroup
/// of its own in a private mount of the cgroup v2 hierarchy. (`ip netns exec` remounts
/// `/sys` for the manager, so `/sys/fs/cgroup` is out of its sight; a mount under the test's
/// directory is seen by both.) "Pod processes" that should use the Services join `cgroup`.
/// Drop: unmounts the bpffs (the pins, hence the attachments, go with it), removes the
/// cgroup, unmounts the hierarchy.
#[derive(Debug)]
pub struct SvcNode {
    pub dir: PathBuf,
    pub bpffs: PathBuf,
    pub cgroup_mount: PathBuf,
    pub cgroup: PathBuf,
}

impl SvcNode {
    pub fn create(root: &Path, tag: &str) -> SvcNode {
        // The mount points are outside `root`, so that no recursive removal of the test's
        // directory can ever walk into a bpffs or the cgroup hierarchy.
        let tmp = std::env::temp_dir();
        let cgroup_mount = tmp.join(format!("e2e-cgroup2-{tag}"));
        let svc = SvcNode {
            dir: root.join("services"),
            bpffs: tmp.join(format!("e2e-bpffs-{tag}")),
            cgroup: cgroup_mount.join(format!("eni-e2e-{tag}")),
            cgroup_mount,
        };
        for d in [&svc.dir, &svc.bpffs, &svc.cgroup_mount] {
            std::fs::create_dir_all(d).unwrap();
        }
        // `svc` exists before anything is mounted: a panic from here on unmounts.
        sh(&["mount", "-t", "bpf", "bpf", &svc.bpffs.to_string_lossy()]);
        sh(&[
            "mount",
            "-t",
            "cgroup2",
            "none",
            &svc.cgroup_mount.to_string_lossy(),
        ]);
        std::fs::create_dir(&svc.cgroup).expect("create the test cgroup");
        svc
    }

    /// The manager's `services` section.
    pub fn config(&self) -> Value {
        json!({
            "enabled": true, "source": "files", "dir": self.dir,
            "bpf_pin_dir": self.bpffs.join("eni-net"), "cgroup": self.cgroup
        })
    }

    /// Writes (replaces) one YAML file of the services directory, atomically.
    pub fn write(&self, name: &str, yaml: &str) {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.dir.join(name)).unwrap();
    }

    /// A shell command prefix that moves the shell into the node's cgroup first.
    pub fn join_cgroup(&self) -> String {
        format!("echo $$ > {}/cgroup.procs", self.cgroup.display())
    }
}

impl Drop for SvcNode {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.bpffs).status();
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg(&self.cgroup_mount).status();
        let _ = std::fs::remove_dir(&self.cgroup_mount);
        let _ = std::fs::remove_dir(&self.bpffs);
    }
}

/// What a node's NetworkPolicy needs in a test: a directory of NetworkPolicy/Pod/Namespace
/// YAML files and a private bpffs for the maps and link pins. Drop unmounts the bpffs (the
/// link pins, hence the attachments, go with it).
#[derive(Debug)]
pub struct PolicyNode {
    pub dir: PathBuf,
    pub bpffs: PathBuf,
}

impl PolicyNode {
    pub fn create(root: &Path, tag: &str) -> PolicyNode {
        let pol = PolicyNode {
            dir: root.join("policy"),
            bpffs: std::env::temp_dir().join(format!("e2e-polfs-{tag}")),
        };
        for d in [&pol.dir, &pol.bpffs] {
            std::fs::create_dir_all(d).unwrap();
        }
        sh(&["mount", "-t", "bpf", "bpf", &pol.bpffs.to_string_lossy()]);
        pol
    }

    /// The pin directory the manager is told to use.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join("eni-net")
    }

    /// The manager's `policy` section.
    pub fn config(&self) -> Value {
        json!({
            "enabled": true, "source": "files", "dir": self.dir, "bpf_pin_dir": self.pin_dir()
        })
    }

    /// Writes (replaces) one YAML file of the policy directory, atomically.
    pub fn write(&self, name: &str, yaml: &str) {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.dir.join(name)).unwrap();
    }
}

impl Drop for PolicyNode {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.bpffs);
    }
}

/// Which node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    A,
    B,
}

impl Node {
    pub fn tag(self) -> &'static str {
        match self {
            Node::A => "a",
            Node::B => "b",
        }
    }
}

/// The `CNI_*` environment of one call.
#[derive(Debug, Clone, Copy)]
pub struct CniEnv<'a> {
    pub command: &'a str,
    pub container: Option<&'a str>,
    pub netns: Option<&'a str>,
    pub ifname: Option<&'a str>,
    pub args: Option<&'a str>,
}

impl<'a> CniEnv<'a> {
    pub fn add(container: &'a str, netns: &'a str, ifname: &'a str, args: &'a str) -> Self {
        CniEnv {
            command: "ADD",
            container: Some(container),
            netns: Some(netns),
            ifname: Some(ifname),
            args: Some(args),
        }
    }

    /// GC and STATUS take no container.
    pub fn bare(command: &'a str) -> Self {
        CniEnv {
            command,
            container: None,
            netns: None,
            ifname: None,
            args: None,
        }
    }
}

/// What one run of the plugin gave.
#[derive(Debug)]
pub struct Run {
    pub command: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: stdout is not JSON ({e}): {:?}; stderr {}",
                self.command, self.stdout, self.stderr
            )
        })
    }

    /// Asserts exit 0.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "eni-cni {} failed: stdout {} stderr {}",
            self.command, self.stdout, self.stderr
        );
        self
    }

    /// Asserts a failure with CNI error `code`; returns the error's `msg` and `details`.
    pub fn err(&self, code: u64) -> String {
        assert_ne!(
            self.code, 0,
            "eni-cni {} succeeded: {}",
            self.command, self.stdout
        );
        let v = self.json();
        assert_eq!(
            v["code"].as_u64(),
            Some(code),
            "eni-cni {}: wrong error: {v}; stderr {}",
            self.command,
            self.stderr
        );
        format!("{} / {}", v["msg"], v["details"])
    }
}

/// The pod's address from a CNI 1.x result.
pub fn pod_ip(result: &Value) -> Ipv4Addr {
    let addr = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in the result {result}"));
    addr.split('/').next().unwrap().parse().unwrap()
}

/// A pod: its namespace, container id, and what ADD answered. The namespace is deleted on
/// drop; DEL is the test's business.
#[derive(Debug)]
pub struct Pod {
    pub node: Node,
    pub ns: Netns,
    /// `CNI_NETNS`: still passed after the namespace is gone.
    pub netns: String,
    pub container: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub result: Value,
    pub conf: Value,
    pub deleted: bool,
}

impl Pod {
    pub fn env(&self, command: &'static str) -> CniEnv<'_> {
        CniEnv {
            command,
            container: Some(&self.container),
            netns: Some(&self.netns),
            ifname: Some(&self.ifname),
            args: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TCP between namespaces
// ---------------------------------------------------------------------------------------------

const SERVER_PY: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
while True:
    c, a = s.accept()
    f = c.makefile("rwb")
    for line in f:
        f.write(b"from=" + a[0].encode() + b" " + line)
        f.flush()
    c.close()
"#;

const CLIENT_PY: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
print("local=" + c.getsockname()[0], flush=True)
f = c.makefile("rwb")
for i in range(int(sys.argv[3])):
    f.write(("%s %d\n" % (sys.argv[4], i)).encode())
    f.flush()
    r = f.readline()
    if not r:
        sys.exit("the server closed the connection after %d answers" % i)
    sys.stdout.write(r.decode())
c.close()
"#;

/// A TCP echo server in a namespace (`python3`), answering each line with
/// `from=<peer address> <line>`. Killed on drop.
#[derive(Debug)]
pub struct TcpServer {
    pub ns: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    child: Child,
    _stdout: BufReader<ChildStdout>,
}

impl TcpServer {
    pub fn start(ns: &Netns, addr: Ipv4Addr, port: u16) -> TcpServer {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, python(), "-c", SERVER_PY])
            .arg(addr.to_string())
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "TCP server in {} on {addr}:{port}",
            ns.name
        );
        TcpServer {
            ns: ns.name.clone(),
            addr,
            port,
            child,
            _stdout: stdout,
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a TCP client saw.
#[derive(Debug)]
pub struct TcpExchange {
    /// The client's own address on the connection.
    pub local: Ipv4Addr,
    /// The source address the server saw, for every answer.
    pub seen_by_server: BTreeSet<Ipv4Addr>,
    /// Answers received.
    pub answers: usize,
}

/// Connects from namespace `from` to `server`, sends `rounds` lines and reads each answer.
pub fn tcp_exchange(from: &Netns, server: &TcpServer, rounds: usize) -> TcpExchange {
    let out = Command::new("ip")
        .args(["netns", "exec", &from.name, python(), "-c", CLIENT_PY])
        .arg(server.addr.to_string())
        .arg(server.port.to_string())
        .arg(rounds.to_string())
        .arg(&from.name)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "TCP {} -> {}:{} (server in {}) failed: {}{}",
        from.name,
        server.addr,
        server.port,
        server.ns,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let local = lines
        .next()
        .and_then(|l| l.strip_prefix("local="))
        .expect("local address line")
        .parse()
        .unwrap();
    let mut seen = BTreeSet::new();
    let mut answers = 0;
    for (i, l) in lines.enumerate() {
        let (peer, echoed) = l
            .strip_prefix("from=")
            .and_then(|r| r.split_once(' '))
            .unwrap_or_else(|| panic!("bad answer {l:?}"));
        assert_eq!(
            echoed,
            format!("{} {i}", from.name),
            "the echo is the line sent"
        );
        seen.insert(peer.parse().unwrap());
        answers += 1;
    }
    assert_eq!(answers, rounds, "every line was answered");
    TcpExchange {
        local,
        seen_by_server: seen,
        answers,
    }
}
