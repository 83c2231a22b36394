//! Shared helpers for the black-box tests: a fake eni-manager (the real `eni_rpc` server
//! with a test handler), running the built binary, root skips, and namespaces that are
//! always deleted (Drop guards, so also on panic).

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use eni_kernel::netns::{self, NetnsFd};
use eni_rpc::server::{Handler, ServeOptions, Server};
use eni_rpc::{
    Allocation, ErrorCode, GcResult, NodeStatus, PoolStatus, Released, Request, Response, RpcError,
    Status,
};
use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique name: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// True when running as root; otherwise prints the skip visibly.
pub fn root_or_skip(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false);
    if !root {
        let _ = writeln!(std::io::stderr(), "SKIPPED: needs root ({test})");
    }
    root
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(unique("eni-cni-test-"));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A named network namespace, deleted on drop.
pub struct TestNs {
    pub name: String,
    pub fd: NetnsFd,
}

impl TestNs {
    pub fn new(tag: &str) -> TestNs {
        let name = unique(&format!("ecni-{tag}"));
        let fd = netns::add_named(&name).expect("create test namespace");
        let ns = TestNs { name, fd };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// `ip -n NAME ARGS`, panicking on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} {:?}: {}",
            self.name,
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip netns exec NAME sh -c SCRIPT`, panicking on failure.
    pub fn sh(&self, script: &str) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Deletes the namespace now (DEL-after-the-netns-is-gone tests).
    pub fn delete(&mut self) {
        let _ = netns::del_named(&self.name);
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = netns::del_named(&self.name);
    }
}

/// One ENI as the fake manager describes it.
#[derive(Clone, Debug)]
pub struct FakeEni {
    pub eni_id: String,
    pub mac: String,
    pub host_ifname: String,
    pub route_table: u32,
}

/// What the fake manager hands out.
#[derive(Clone, Debug)]
pub struct ManagerSetup {
    pub subnet: ipnet::Ipv4Net,
    pub gateway: Ipv4Addr,
    pub first_ip: Ipv4Addr,
    pub shared: FakeEni,
    pub exclusive: Option<(FakeEni, Ipv4Addr)>,
    pub mtu: u32,
}

impl ManagerSetup {
    /// The test VPC 10.77.0.0/24: gateway .1, shared ENI eth1, exclusive ENI eth2 (.50).
    pub fn vpc() -> ManagerSetup {
        ManagerSetup {
            subnet: "10.77.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 77, 0, 1),
            first_ip: Ipv4Addr::new(10, 77, 0, 100),
            shared: FakeEni {
                eni_id: "eni-shared".into(),
                mac: "02:aa:00:00:00:01".into(),
                host_ifname: "eth1".into(),
                route_table: 1001,
            },
            exclusive: Some((
                FakeEni {
                    eni_id: "eni-excl".into(),
                    mac: "02:aa:00:00:00:02".into(),
                    host_ifname: "eth2".into(),
                    route_table: 1002,
                },
                Ipv4Addr::new(10, 77, 0, 50),
            )),
            mtu: 1500,
        }
    }
}

#[derive(Default)]
pub struct ManagerState {
    pub allocations: BTreeMap<(String, String), Allocation>,
    pub next: u32,
    /// Every request's op and container id, in order (`"release c1"`).
    pub calls: Vec<String>,
}

pub struct FakeManager {
    setup: ManagerSetup,
    pub state: Arc<Mutex<ManagerState>>,
}

impl Handler for FakeManager {
    async fn handle(&self, request: Request) -> Result<Response, RpcError> {
        let mut st = self.state.lock().unwrap();
        let id = match &request {
            Request::Allocate(r) => r.container_id.clone(),
            Request::Release(r) => r.container_id.clone(),
            Request::Check(r) => r.container_id.clone(),
            _ => String::new(),
        };
        st.calls.push(format!("{} {id}", request.op()));
        // A container id "err-<Code>" makes every request about it fail with that code.
        if let Some(code) = id.strip_prefix("err-") {
            let code: ErrorCode = code.parse().unwrap_or(ErrorCode::Internal);
            return Err(RpcError::new(
                code,
                format!("fake manager says {code} for {id}"),
            ));
        }
        match request {
            Request::Allocate(r) => {
                let key = (r.container_id.clone(), r.ifname.clone());
                if let Some(a) = st.allocations.get(&key) {
                    return Ok(Response::Allocation(a.clone()));
                }
                let s = &self.setup;
                let (eni, ip) = match (&s.exclusive, r.exclusive) {
                    (Some((eni, ip)), true) => (eni.clone(), *ip),
                    (_, true) => {
                        return Err(RpcError::new(ErrorCode::EniLimit, "no exclusive ENI left"))
                    }
                    _ => {
                        let ip = Ipv4Addr::from(u32::from(s.first_ip) + st.next);
                        st.next += 1;
                        (s.shared.clone(), ip)
                    }
                };
                let a = Allocation {
                    container_id: r.container_id,
                    ifname: r.ifname,
                    netns: r.netns,
                    pod: r.pod,
                    ip,
                    prefix_len: s.subnet.prefix_len(),
                    gateway: s.gateway,
                    subnet: s.subnet,
                    eni_id: eni.eni_id,
                    eni_mac: eni.mac,
                    host_ifname: eni.host_ifname,
                    route_table: eni.route_table,
                    mtu: s.mtu,
                    exclusive: r.exclusive,
                    allocated_at_ms: 1,
                    policy_pin_dir: None,
                };
                st.allocations.insert(key, a.clone());
                Ok(Response::Allocation(a))
            }
            Request::Release(r) => Ok(Response::Released(Released {
                released: st.allocations.remove(&(r.container_id, r.ifname)),
            })),
            Request::Check(r) => st
                .allocations
                .get(&(r.container_id.clone(), r.ifname.clone()))
                .cloned()
                .map(Response::Allocation)
                .ok_or_else(|| {
                    RpcError::not_found(format!(
                        "no allocation for {}/{}",
                        r.container_id, r.ifname
                    ))
                }),
            Request::List => Ok(Response::Allocations(eni_rpc::Allocations {
                allocations: st.allocations.values().cloned().collect(),
            })),
            Request::Status => Ok(Response::Status(Status {
                node: NodeStatus {
                    instance_id: "i-test".into(),
                    instance_type: "test".into(),
                    zone: "z".into(),
                    provider: "fake".into(),
                    max_pods: 10,
                    max_enis: 3,
                    ipv4_per_eni: 10,
                },
                pool: PoolStatus {
                    idle: 5,
                    allocated: u32::try_from(st.allocations.len()).unwrap(),
                    total: 10,
                    low_watermark: 1,
                    high_watermark: 5,
                    enis: Vec::new(),
                },
                degraded: None,
                cloud_calls: 0,
                version: "test".into(),
            })),
            Request::Gc(r) => {
                let keep: Vec<(String, String)> = r
                    .valid
                    .into_iter()
                    .map(|a| (a.container_id, a.ifname))
                    .collect();
                let gone: Vec<_> = st
                    .allocations
                    .keys()
                    .filter(|k| !keep.contains(k))
                    .cloned()
                    .collect();
                let released = gone
                    .iter()
                    .filter_map(|k| st.allocations.remove(k))
                    .collect();
                Ok(Response::GcResult(GcResult { released }))
            }
        }
    }
}

/// A fake manager serving on a socket in its own directory, on its own runtime thread;
/// stopped on drop.
pub struct ManagerHandle {
    pub socket: PathBuf,
    pub state: Arc<Mutex<ManagerState>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl ManagerHandle {
    pub fn start(setup: ManagerSetup) -> ManagerHandle {
        let dir = TempDir::new();
        let socket = dir.0.join("m.sock");
        let state = Arc::new(Mutex::new(ManagerState::default()));
        let handler = Arc::new(FakeManager {
            setup,
            state: state.clone(),
        });
        let server = Server::bind(&socket, ServeOptions::default()).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(server.run(handler, async {
                let _ = stopped.await;
            }))
            .unwrap();
        });
        ManagerHandle {
            socket,
            state,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn holds(&self, container_id: &str) -> bool {
        self.state
            .lock()
            .unwrap()
            .allocations
            .keys()
            .any(|(c, _)| c == container_id)
    }
}

impl Drop for ManagerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one run of a plugin gave.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} stderr {}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "plugin failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// The eni-cni binary: `$ENI_CNI_BIN` when set (the VM test puts the static binary at a
/// path of its own, see `integration/vm/tests.sh`), else the one cargo built for this test.
pub fn plugin_path() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| match std::env::var("ENI_CNI_BIN") {
        Ok(p) if !p.is_empty() => p,
        _ => env!("CARGO_BIN_EXE_eni-cni").to_string(),
    })
}

/// Runs `binary` (inside the named namespace `in_ns` via `ip netns exec`, when given)
/// with exactly `env` (plus PATH) and `stdin`.
pub fn run_plugin(binary: &str, in_ns: Option<&str>, env: &[(&str, String)], stdin: &str) -> Run {
    let mut cmd = match in_ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, binary]);
            c
        }
        None => Command::new(binary),
    };
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The usual environment of one attachment.
pub fn cni_env(
    command: &str,
    container: &str,
    netns: &str,
    ifname: &str,
    run_dir: &Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", container.to_string()),
        ("CNI_NETNS", netns.to_string()),
        ("CNI_IFNAME", ifname.to_string()),
        ("CNI_PATH", "/usr/lib/cni".to_string()),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME=pod".to_string(),
        ),
        ("ENI_CNI_RUN_DIR", run_dir.display().to_string()),
    ]
}
