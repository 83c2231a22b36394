//! Black-box tests of the built `enictl` binary against the real RPC server with a fake
//! handler, over a unix socket in a temporary directory.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use eni_rpc::server::{Handler, ServeOptions, Server};
use eni_rpc::{
    Allocation, Allocations, EniStatus, ErrorCode, IpStatus, NodeStatus, PodRef, PoolStatus,
    Request, Response, RpcError, Status,
};
use tokio::sync::oneshot;

const LONG_ID: &str = "4f1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff0";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn pod(name: &str) -> PodRef {
    PodRef {
        namespace: "shop".into(),
        name: name.into(),
        uid: None,
    }
}

fn status() -> Status {
    Status {
        node: NodeStatus {
            instance_id: "i-bp1testnode".into(),
            instance_type: "ecs.g7.large".into(),
            zone: "cn-hangzhou-h".into(),
            provider: "aliyun".into(),
            max_pods: 28,
            max_enis: 3,
            ipv4_per_eni: 10,
        },
        pool: PoolStatus {
            idle: 2,
            allocated: 1,
            total: 3,
            low_watermark: 2,
            high_watermark: 6,
            enis: vec![
                EniStatus {
                    eni_id: "eni-bp1shared".into(),
                    mac: "00:16:3e:00:00:01".into(),
                    host_ifname: Some("eth1".into()),
                    device_index: Some(1),
                    subnet_id: "vsw-bp1a".into(),
                    status: "ready".into(),
                    exclusive_to: None,
                    ips: vec![
                        IpStatus {
                            ip: Ipv4Addr::new(192, 168, 0, 10),
                            container_id: Some(LONG_ID.into()),
                            pod: Some(pod("cart-0")),
                        },
                        IpStatus {
                            ip: Ipv4Addr::new(192, 168, 0, 11),
                            container_id: None,
                            pod: None,
                        },
                        IpStatus {
                            ip: Ipv4Addr::new(192, 168, 0, 12),
                            container_id: None,
                            pod: None,
                        },
                    ],
                },
                EniStatus {
                    eni_id: "eni-bp1exclusive".into(),
                    mac: "00:16:3e:00:00:02".into(),
                    host_ifname: None,
                    device_index: None,
                    subnet_id: "vsw-bp1b".into(),
                    status: "attaching".into(),
                    exclusive_to: Some("ffeeddccbbaa99887766".into()),
                    ips: vec![],
                },
            ],
        },
        degraded: Some("metadata service unreachable: connection refused".into()),
        cloud_calls: 42,
        version: "0.1.0-test".into(),
    }
}

fn allocation() -> Allocation {
    Allocation {
        container_id: LONG_ID.into(),
        ifname: "eth0".into(),
        netns: "/var/run/netns/cart-0".into(),
        pod: Some(pod("cart-0")),
        ip: Ipv4Addr::new(192, 168, 0, 10),
        prefix_len: 24,
        gateway: Ipv4Addr::new(192, 168, 0, 253),
        subnet: "192.168.0.0/24".parse().unwrap(),
        eni_id: "eni-bp1shared".into(),
        eni_mac: "00:16:3e:00:00:01".into(),
        host_ifname: "eth1".into(),
        route_table: 1001,
        mtu: 1500,
        exclusive: false,
        allocated_at_ms: now_ms() - 5 * 60 * 1000 - 500,
        policy_pin_dir: None,
    }
}

/// Answers `status` and `list` from canned data, or everything with one error.
struct Fake {
    fail_with: Option<ErrorCode>,
}

impl Handler for Fake {
    async fn handle(&self, request: Request) -> Result<Response, RpcError> {
        if let Some(code) = self.fail_with {
            return Err(RpcError::new(code, "eni-manager is stopping"));
        }
        match request {
            Request::Status => Ok(Response::Status(status())),
            Request::List => Ok(Response::Allocations(Allocations {
                allocations: vec![allocation()],
            })),
            other => Err(RpcError::bad_request(format!(
                "enictl must not send {}",
                other.op()
            ))),
        }
    }
}

struct TestServer {
    /// Serves the socket until dropped.
    _rt: tokio::runtime::Runtime,
    dir: PathBuf,
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
}

impl TestServer {
    fn start(fail_with: Option<ErrorCode>) -> TestServer {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "enictl-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("eni-manager.sock");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = Server::bind(&path, ServeOptions::default()).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        rt.spawn(server.run(Arc::new(Fake { fail_with }), async move {
            let _ = stopped.await;
        }));
        TestServer {
            _rt: rt,
            dir,
            path,
            stop: Some(stop),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn enictl(socket: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_enictl"));
    command.env_remove("ENI_MANAGER_SOCKET");
    if let Some(socket) = socket {
        command.arg("--socket").arg(socket);
    }
    command.args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

/// Every line of a table has its columns start where the header's do.
fn assert_aligned(table: &str, columns: &[&str]) {
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    let starts: Vec<usize> = columns
        .iter()
        .map(|c| {
            header
                .find(c)
                .unwrap_or_else(|| panic!("{c} not in {header}"))
        })
        .collect();
    for line in lines {
        for &start in &starts[1..] {
            if start < line.len() {
                assert_eq!(
                    &line[start - 2..start],
                    "  ",
                    "misaligned at {start} in {line:?}\n{table}"
                );
                assert_ne!(&line[start..=start], " ", "{line:?}");
            }
        }
    }
}

#[test]
fn status_shows_node_pool_degraded_and_calls() {
    let server = TestServer::start(None);
    let output = enictl(Some(&server.path), &["status"]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    for needle in [
        "Node:",
        "i-bp1testnode (ecs.g7.large, cn-hangzhou-h, aliyun)",
        "28 pods, 3 ENIs, 10 IPv4 per ENI",
        "2 idle, 1 allocated, 3 total (low watermark 2, high watermark 6)",
        "Degraded:    yes: metadata service unreachable: connection refused",
        "Cloud calls: 42",
        "Version:     0.1.0-test",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    assert!(stderr(&output).is_empty());
}

#[test]
fn pool_shows_counts_and_one_aligned_row_per_eni() {
    let server = TestServer::start(None);
    let output = enictl(Some(&server.path), &["pool"]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    assert!(
        text.starts_with("Pool: 2 idle, 1 allocated, 3 total"),
        "{text}"
    );
    let table = text.split("\n\n").nth(1).unwrap();
    let columns = [
        "ENI",
        "MAC",
        "IFNAME",
        "INDEX",
        "SUBNET",
        "STATUS",
        "IPS",
        "EXCLUSIVE",
    ];
    assert_aligned(table, &columns);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    let shared: Vec<&str> = rows[1].split_whitespace().collect();
    assert_eq!(
        shared,
        [
            "eni-bp1shared",
            "00:16:3e:00:00:01",
            "eth1",
            "1",
            "vsw-bp1a",
            "ready",
            "1/3",
            "-"
        ]
    );
    let exclusive: Vec<&str> = rows[2].split_whitespace().collect();
    assert_eq!(
        exclusive,
        [
            "eni-bp1exclusive",
            "00:16:3e:00:00:02",
            "-",
            "-",
            "vsw-bp1b",
            "attaching",
            "0/0",
            "ffeeddccbbaa"
        ]
    );
}

#[test]
fn enis_shows_eni_rows_then_address_rows() {
    let server = TestServer::start(None);
    let output = enictl(Some(&server.path), &["enis"]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    let mut parts = text.split("\n\n");
    let enis = parts.next().unwrap();
    assert!(enis.starts_with("ENI "), "{text}");
    assert_eq!(enis.lines().count(), 3);
    let ips = parts.next().unwrap();
    assert_aligned(ips, &["ENI", "IP", "CONTAINER", "POD"]);
    assert!(ips.contains("192.168.0.10"), "{ips}");
    assert!(ips.contains("4f1d2c3b4a59  shop/cart-0"), "{ips}");
    assert!(!ips.contains(LONG_ID));
    assert_eq!(ips.lines().count(), 4);
}

#[test]
fn allocations_shortens_container_ids_and_shows_age() {
    let server = TestServer::start(None);
    let output = enictl(Some(&server.path), &["allocations"]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    let columns = ["CONTAINER", "IFNAME", "POD", "IP", "ENI", "AGE"];
    assert_aligned(&text, &columns);
    assert!(!text.contains(LONG_ID), "{text}");
    let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..5],
        [
            "4f1d2c3b4a59",
            "eth0",
            "shop/cart-0",
            "192.168.0.10/24",
            "eni-bp1shared"
        ]
    );
    assert!(row[5].starts_with("5m"), "{row:?}");
}

#[test]
fn json_prints_the_raw_response() {
    let server = TestServer::start(None);
    for (command, kind) in [
        ("status", "status"),
        ("pool", "status"),
        ("enis", "status"),
        ("allocations", "allocations"),
    ] {
        let output = enictl(Some(&server.path), &[command, "--json"]);
        assert_exit(&output, 0);
        let value: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
        assert_eq!(value["kind"], kind);
        let response: Response = serde_json::from_value(value).unwrap();
        if let Response::Status(got) = response {
            assert_eq!(got, status());
        }
    }
    let output = enictl(Some(&server.path), &["--json", "allocations"]);
    let value: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(value["allocations"][0]["container_id"], LONG_ID);
}

#[test]
fn socket_comes_from_the_environment() {
    let server = TestServer::start(None);
    let output = Command::new(env!("CARGO_BIN_EXE_enictl"))
        .env("ENI_MANAGER_SOCKET", &server.path)
        .arg("status")
        .output()
        .unwrap();
    assert_exit(&output, 0);
    assert!(stdout(&output).contains("i-bp1testnode"));
}

#[test]
fn manager_error_exits_1() {
    let server = TestServer::start(Some(ErrorCode::ShuttingDown));
    let output = enictl(Some(&server.path), &["status"]);
    assert_exit(&output, 1);
    assert!(stdout(&output).is_empty());
    let err = stderr(&output);
    assert!(
        err.contains("ShuttingDown") && err.contains("stopping"),
        "{err}"
    );
}

#[test]
fn unreachable_manager_exits_2_naming_the_socket() {
    let dir = std::env::temp_dir().join(format!("enictl-missing-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("eni-manager.sock");
    let output = enictl(Some(&missing), &["status"]);
    assert_exit(&output, 2);
    let err = stderr(&output);
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("is eni-manager running"), "{err}");

    // A stale socket file: nothing listens.
    drop(std::os::unix::net::UnixListener::bind(&missing).unwrap());
    let output = enictl(Some(&missing), &["allocations"]);
    assert_exit(&output, 2);
    assert!(
        stderr(&output).contains("not running"),
        "{}",
        stderr(&output)
    );
    let _ = fs::remove_dir_all(&dir);

    // The default path is used, and named, when nothing else is given.
    let output = enictl(None, &["status"]);
    if output.status.code() == Some(2) {
        assert!(stderr(&output).contains(eni_rpc::DEFAULT_SOCKET_PATH));
    }
}

#[test]
fn usage_errors_exit_64() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["status", "--bogus"],
        &["status", "--timeout", "soon"],
        &["status", "extra"],
    ] {
        let output = enictl(None, args);
        assert_exit(&output, 64);
        assert!(!stderr(&output).is_empty());
    }
    let output = enictl(None, &["--help"]);
    assert_exit(&output, 0);
    let help = stdout(&output);
    for word in [
        "status",
        "pool",
        "enis",
        "allocations",
        "--socket",
        "--json",
    ] {
        assert!(help.contains(word), "{word} missing from help:\n{help}");
    }
    assert!(help.contains("ENI_MANAGER_SOCKET"), "{help}");
}
