//! Harness for the manager's integration tests: network namespaces, the `mock-cloud` binary
//! (with its hypervisor), `moto_server`, and the `eni-manager` binary itself, each owned by a
//! guard that removes it on drop (also when the test panics).
//!
//! `mock-cloud` is another package: it is looked up in `MOCK_CLOUD_BIN`, then next to this
//! test's executable (`<target>/debug/mock-cloud`); CI runs `cargo build --workspace --bins`
//! first. A missing binary fails the test with a message saying so.

#![allow(
    dead_code,
    clippy::print_stdout,
    reason = "each test binary uses part of the harness; tests report on stdout"
)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use eni_rpc::{AllocateRequest, Allocation, ReleaseRequest, Status};
use eni_rpc::{Client, ClientError};
use serde_json::{json, Value};

/// The process runs as root (namespaces, links, routes).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Returns from the test with a visible skip when not root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::is_root() {
            std::io::Write::write_all(
                &mut std::io::stderr(),
                b"SKIPPED: needs root (network namespaces, links, routes)\n",
            )
            .ok();
            return;
        }
    };
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `<prefix><pid>x<n>` (fits an interface or
/// namespace name).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
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

fn quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(unique(&format!("emt-{tag}-")));
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
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace standing for a node, deleted on drop. Set up as a cloud VM is:
/// loopback up, a NIC answers ARP only for its own addresses.
#[derive(Debug)]
pub struct NodeNs {
    pub name: String,
}

impl NodeNs {
    pub fn create(name: &str) -> NodeNs {
        quiet(&["ip", "netns", "del", name]);
        sh(&["ip", "netns", "add", name]);
        let ns = NodeNs {
            name: name.to_string(),
        };
        sh(&["ip", "-n", name, "link", "set", "lo", "up"]);
        for (k, v) in [
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.default.arp_ignore", "1"),
            ("net.ipv4.conf.default.arp_announce", "2"),
        ] {
            sh(&[
                "ip",
                "netns",
                "exec",
                name,
                "sysctl",
                "-qw",
                &format!("{k}={v}"),
            ]);
        }
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -j link show` in the namespace.
    pub fn links(&self) -> Vec<Value> {
        serde_json::from_str(&sh(&["ip", "-n", &self.name, "-j", "link", "show"])).unwrap()
    }

    pub fn link_by_mac(&self, mac: &str) -> Option<Value> {
        self.links()
            .into_iter()
            .find(|l| l["address"].as_str() == Some(mac))
    }

    /// Routes of one table.
    pub fn routes(&self, table: u32) -> Vec<Value> {
        let out = sh(&[
            "ip",
            "-n",
            &self.name,
            "-j",
            "route",
            "show",
            "table",
            &table.to_string(),
        ]);
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap()
    }

    pub fn rules(&self) -> Vec<Value> {
        serde_json::from_str(&sh(&["ip", "-n", &self.name, "-j", "rule", "show"])).unwrap()
    }

    /// GET `http://<addr><path>` from inside the namespace: (status, body).
    pub fn http_get(&self, addr: &str, path: &str) -> (u16, String) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "curl",
                "-s",
                "-m",
                "5",
                "-w",
                "\n%{http_code}",
                &format!("http://{addr}{path}"),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

impl Drop for NodeNs {
    fn drop(&mut self) {
        quiet(&["ip", "netns", "del", &self.name]);
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client (admin API, metrics)
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
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let payload = if chunked {
        let mut out = String::new();
        let mut rest = payload;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        payload.to_string()
    };
    (status, payload)
}

// ---------------------------------------------------------------------------------------------
// mock-cloud
// ---------------------------------------------------------------------------------------------

pub fn mock_cloud_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MOCK_CLOUD_BIN") {
        return PathBuf::from(p);
    }
    // <target>/debug/deps/<test exe> -> <target>/debug/mock-cloud
    let exe = std::env::current_exe().expect("current_exe");
    let candidate = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|d| d.join("mock-cloud"));
    match candidate {
        Some(c) if c.is_file() => c,
        _ => panic!(
            "mock-cloud binary not found (looked at {candidate:?}); run `cargo build --workspace --bins` \
             with the same target dir first, or set MOCK_CLOUD_BIN"
        ),
    }
}

/// The access key of every test world.
pub const KEY_ID: &str = "testid";
pub const KEY_SECRET: &str = "testsecret";
pub const INSTANCE: &str = "i-node-a";
pub const CLUSTER: &str = "itest";

/// An instance type and the vSwitches of a test world.
#[derive(Debug, Clone)]
pub struct WorldSpec {
    pub enis: u32,
    pub ips: u32,
    /// (id, cidr); the node's primary NIC is in the first.
    pub vswitches: Vec<(&'static str, &'static str)>,
    pub attach_ms: Value,
}

impl Default for WorldSpec {
    fn default() -> Self {
        WorldSpec {
            enis: 8,
            ips: 20,
            vswitches: vec![("vsw-h1", "192.168.0.0/20")],
            attach_ms: json!([300, 600]),
        }
    }
}

/// A world with one instance bound to `node_ns`, its VPC in namespace `vpc_ns`.
pub fn world(spec: &WorldSpec, node_ns: &str, vpc_ns: &str) -> Value {
    let first = spec.vswitches[0].1.split('/').next().unwrap();
    let base: Ipv4Addr = first.parse().unwrap();
    let primary = Ipv4Addr::from(u32::from(base) + 10);
    json!({
        "region": "cn-hangzhou",
        "zones": ["cn-hangzhou-h"],
        "vpc": {"id": "vpc-mock", "cidr": "192.168.0.0/16"},
        "vswitches": spec.vswitches.iter().map(|(id, cidr)| json!({"id": id, "zone": "cn-hangzhou-h", "cidr": cidr})).collect::<Vec<_>>(),
        "security_groups": ["sg-nodes"],
        "instance_types": [{
            "id": "ecs.test", "eni_quantity": spec.enis,
            "eni_private_ip_address_quantity": spec.ips,
            "eni_ipv6_address_quantity": 0, "prefix_support": false
        }],
        "instances": [{
            "id": INSTANCE, "type": "ecs.test", "vswitch": spec.vswitches[0].0,
            "security_groups": ["sg-nodes"], "primary_ip": primary.to_string(),
            "primary_eni": "eni-node-a-primary", "netns": node_ns
        }],
        "access_keys": [{"id": KEY_ID, "secret": KEY_SECRET}],
        "timing": {"attach_ms": spec.attach_ms, "detach_ms": 150, "delete_ms": 100, "metadata_lag_ms": 100},
        "hypervisor": {"vpc_netns": vpc_ns}
    })
}

/// A running mock-cloud; SIGTERM on drop (it then removes its VPC namespace), then the
/// namespace is deleted in case it did not.
#[derive(Debug)]
pub struct MockCloud {
    pub url: String,
    child: Child,
    vpc_ns: String,
    _dir: TempDir,
}

impl MockCloud {
    pub fn start(world: &Value) -> MockCloud {
        let bin = mock_cloud_bin();
        let dir = TempDir::new("mock");
        let world_path = dir.path().join("world.yaml");
        std::fs::write(&world_path, serde_json::to_string_pretty(world).unwrap()).unwrap();
        let vpc_ns = world["hypervisor"]["vpc_netns"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut child = Command::new(&bin)
            .arg("--world")
            .arg(&world_path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let mut mock = MockCloud {
            url: String::new(),
            child,
            vpc_ns,
            _dir: dir,
        };
        mock.url = line
            .trim()
            .strip_prefix("mock-cloud listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from mock-cloud: {line:?}"))
            .to_string();
        mock
    }

    pub fn admin(&self, path: &str) -> Value {
        let (status, body) = http("GET", &format!("{}/_admin/{path}", self.url), None);
        assert_eq!(status, 200, "GET /_admin/{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn put_faults(&self, body: &Value) {
        let (status, text) = http(
            "PUT",
            &format!("{}/_admin/faults", self.url),
            Some(&body.to_string()),
        );
        assert_eq!(status, 200, "PUT /_admin/faults: {text}");
    }

    pub fn state(&self) -> Value {
        self.admin("state")
    }

    /// Calls of one action.
    pub fn calls(&self, action: &str) -> u64 {
        self.admin("calls")["actions"][action]["count"]
            .as_u64()
            .unwrap_or(0)
    }

    /// ENIs of the mock tagged for this node and cluster.
    pub fn node_enis(&self) -> Vec<Value> {
        self.state()["enis"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["tags"]["eni-net.io/node"] == INSTANCE
                    && e["tags"]["eni-net.io/cluster"] == CLUSTER
            })
            .cloned()
            .collect()
    }
}

impl Drop for MockCloud {
    fn drop(&mut self) {
        quiet(&["kill", "-TERM", &self.child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.vpc_ns.is_empty() {
            quiet(&["ip", "netns", "del", &self.vpc_ns]);
        }
    }
}

/// The secondary addresses of a mock ENI (its primary excluded).
pub fn secondary_ips(eni: &Value) -> BTreeSet<Ipv4Addr> {
    let primary = eni["primary_ip"].as_str().unwrap_or_default();
    eni["private_ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|ip| *ip != primary)
        .map(|ip| ip.parse().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// eni-manager
// ---------------------------------------------------------------------------------------------

/// The manager's configuration for the mock, reached as on ECS through the node's NIC.
pub fn aliyun_config(dir: &Path, subnets: &[&str]) -> Value {
    json!({
        "cloud": {
            "provider": "aliyun", "region": "cn-hangzhou",
            "endpoint": "http://100.100.100.200", "metadata_endpoint": "http://100.100.100.200",
            "credentials": "env", "rate_per_second": 50.0, "rate_burst": 50
        },
        "cluster": {"id": CLUSTER},
        "network": {"subnets": {"cn-hangzhou-h": subnets}},
        "pool": {"min_idle": 2, "max_idle": 200, "release_cooldown_s": 3600, "allocate_timeout_ms": 20000},
        "gc": {"interval_s": 3600, "grace_s": 3600},
        "daemon": {
            "socket": dir.join("m.sock"), "state_dir": dir.join("state"),
            "metrics_address": "127.0.0.1:9410"
        }
    })
}

/// A running `eni-manager`, optionally inside a namespace; SIGKILLed on drop. Its log goes to
/// a file that is printed when the test fails.
#[derive(Debug)]
pub struct ManagerProc {
    pub ns: Option<String>,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    pub starts: u32,
}

impl ManagerProc {
    /// Writes the config into `dir` and starts the manager; does not wait for it.
    pub fn spawn(dir: &Path, ns: Option<&str>, cfg: &Value, env: &[(&str, &str)]) -> ManagerProc {
        let config = dir.join("manager.yaml");
        std::fs::write(&config, serde_json::to_string_pretty(cfg).unwrap()).unwrap();
        let mut m = ManagerProc {
            ns: ns.map(str::to_string),
            socket: PathBuf::from(cfg["daemon"]["socket"].as_str().unwrap()),
            config,
            log: dir.join("manager.log"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            starts: 0,
        };
        m.launch();
        m
    }

    /// The manager for the mock, in the node namespace, ready.
    pub fn start_aliyun(dir: &Path, ns: &NodeNs, cfg: &Value) -> ManagerProc {
        let mut m = Self::spawn(
            dir,
            Some(&ns.name),
            cfg,
            &[
                ("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID),
                ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", KEY_SECRET),
            ],
        );
        m.wait_ready(Duration::from_secs(30));
        m
    }

    fn launch(&mut self) {
        let bin = env!("CARGO_BIN_EXE_eni-manager");
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        cmd.arg("--config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("ENI_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // `ip netns exec` execs the manager: the child's pid is the manager's.
        self.child = Some(cmd.spawn().expect("starting eni-manager"));
        self.starts += 1;
    }

    /// Waits until the socket answers `status`.
    pub fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            assert!(
                self.alive(),
                "eni-manager exited; log:\n{}",
                self.log_tail(60)
            );
            if let Ok(mut c) = Client::connect(&self.socket, Duration::from_secs(5)) {
                if c.status().is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "eni-manager did not serve within {within:?}; log:\n{}",
                self.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same configuration and state directory (no wait).
    pub fn relaunch(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket, Duration::from_secs(60)).expect("connect to the manager")
    }

    pub fn status(&self) -> Status {
        self.client().status().expect("status")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Lines of the log that contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for ManagerProc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            println!(
                "---- eni-manager log ({}), last lines ----\n{}",
                self.log.display(),
                self.log_tail(80)
            );
        }
    }
}

/// An allocation request for `id` (interface eth0) in namespace `netns`.
pub fn alloc_req(id: &str, netns: &str, timeout_ms: u32) -> AllocateRequest {
    AllocateRequest {
        container_id: id.to_string(),
        ifname: "eth0".into(),
        netns: netns.to_string(),
        pod: None,
        exclusive: false,
        timeout_ms,
        port_mappings: Vec::new(),
    }
}

pub fn release_req(id: &str) -> ReleaseRequest {
    ReleaseRequest {
        container_id: id.to_string(),
        ifname: "eth0".into(),
    }
}

/// Allocates on a fresh connection.
pub fn allocate(
    m: &ManagerProc,
    id: &str,
    netns: &str,
    timeout_ms: u32,
) -> Result<Allocation, ClientError> {
    Client::connect(&m.socket, Duration::from_secs(60))?.allocate(alloc_req(id, netns, timeout_ms))
}

/// Polls `cond` every 100 ms until it holds or `within` passes; returns whether it held.
pub fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of a Prometheus sample line `name{labels} value` (labels matched as given).
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.strip_prefix(name_and_labels)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
