//! Test harness: start `mock-cloud` and `moto_server` as child processes on free loopback
//! ports, and stop them when the test ends.
//!
//! `mock-cloud` must be built first (`cargo build -p mock-cloud`; CI builds the whole
//! workspace before testing). It is looked up in `MOCK_CLOUD_BIN`, then next to this test's
//! executable (`<target>/debug/mock-cloud`). `moto_server` must be on `PATH` (`pip install
//! 'moto[server]'`). A missing binary fails the test with a message saying so; it never
//! passes silently.

#![allow(dead_code, reason = "each test binary uses part of the harness")]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed on drop.
pub struct ChildGuard {
    pub child: Child,
    pub dir: Option<PathBuf>,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let d = std::env::temp_dir().join(format!("cp-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mock_cloud_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MOCK_CLOUD_BIN") {
        return PathBuf::from(p);
    }
    // <target>/debug/deps/<test exe> -> <target>/debug/mock-cloud
    let exe = std::env::current_exe().expect("current_exe");
    let mut candidates = Vec::new();
    if let Some(debug_dir) = exe.parent().and_then(|deps| deps.parent()) {
        candidates.push(debug_dir.join("mock-cloud"));
    }
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "mock-cloud binary not found (looked at {candidates:?}); run `cargo build -p mock-cloud` \
         with the same target dir first, or set MOCK_CLOUD_BIN"
    );
}

pub const WORLD: &str = r#"
region: cn-hangzhou
zones: [cn-hangzhou-h]
vpc: { id: vpc-mock, cidr: 192.168.0.0/16 }
vswitches:
  - { id: vsw-h1, zone: cn-hangzhou-h, cidr: 192.168.1.0/24 }
  - { id: vsw-h2, zone: cn-hangzhou-h, cidr: 192.168.2.0/28 }
security_groups: [sg-nodes]
instance_types:
  - { id: ecs.g7.large, eni_quantity: 3, eni_private_ip_address_quantity: 10, eni_ipv6_address_quantity: 10, prefix_support: true }
instances:
  - { id: i-node-a, type: ecs.g7.large, vswitch: vsw-h1, security_groups: [sg-nodes], primary_ip: 192.168.1.10, primary_eni: eni-node-a-primary, ram_role: node-role }
access_keys:
  - { id: testid, secret: testsecret }
  - { id: stsid, secret: stssecret, sts_token: sts-token-xyz }
ram_roles:
  - { name: node-role, credential_ttl_s: 3600 }
timing:
  attach_ms: 300
  detach_ms: 200
  delete_ms: 100
  metadata_lag_ms: 100
  attach_failure_rate: 0.0
"#;

/// A running mock-cloud.
pub struct MockCloud {
    pub url: String,
    _guard: ChildGuard,
}

impl MockCloud {
    pub fn start() -> MockCloud {
        Self::start_with(WORLD)
    }

    pub fn start_with(world: &str) -> MockCloud {
        install_crypto();
        let bin = mock_cloud_bin();
        let dir = temp_dir("mock");
        let world_path = dir.join("world.yaml");
        std::fs::write(&world_path, world).unwrap();
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
        let url = line
            .trim()
            .strip_prefix("mock-cloud listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from mock-cloud: {line:?}"))
            .to_string();
        MockCloud {
            url,
            _guard: ChildGuard {
                child,
                dir: Some(dir),
            },
        }
    }

    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        reqwest::get(format!("{}/_admin/{path}", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn put_faults(&self, body: serde_json::Value) {
        let r = reqwest::Client::new()
            .put(format!("{}/_admin/faults", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(
            status.is_success(),
            "PUT faults: {status} {}",
            r.text().await.unwrap_or_default()
        );
    }

    /// Calls of one action counted by the mock.
    pub async fn calls(&self, action: &str) -> u64 {
        let v = self.admin_get("calls").await;
        v["actions"][action]["count"].as_u64().unwrap_or(0)
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running moto_server.
pub struct Moto {
    pub url: String,
    _guard: ChildGuard,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "moto_server could not be started ({e}); it must be on PATH: \
                     pip install 'moto[server]'"
                )
            });
        let guard = ChildGuard { child, dir: None };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            url: format!("http://127.0.0.1:{port}"),
            _guard: guard,
        }
    }
}

/// One request a [`Scripted`] server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Recorded) -> (u16, String) + Send + Sync;

/// A scripted HTTP/1.1 server on a free loopback port: every request is recorded and answered
/// by the handler (status, body); each connection carries one request.
pub struct Scripted {
    pub url: String,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    pub async fn start(
        handler: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
    ) -> Scripted {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let handler: std::sync::Arc<Handler> = std::sync::Arc::new(handler);
        let recs = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let recs = recs.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    let head_end = loop {
                        let n = match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&tmp[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let mut first = lines.next().unwrap_or_default().split_whitespace();
                    let method = first.next().unwrap_or_default().to_string();
                    let path = first.next().unwrap_or_default().to_string();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                        .collect();
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
                    let rec = Recorded {
                        method,
                        path,
                        headers,
                        body,
                    };
                    let (status, text) = handler(&rec);
                    recs.lock().unwrap().push(rec);
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/xml\r\nx-amzn-requestid: req-scripted\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Scripted {
            url,
            requests,
            task,
        }
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// Install rustls' ring provider for the test's own HTTP clients.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
