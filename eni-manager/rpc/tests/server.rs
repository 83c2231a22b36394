//! The server and the blocking client over a real unix socket in a temporary directory,
//! with a fake handler: every op, concurrency, socket file handling, timeouts, malformed
//! frames, shutdown, and refusal of peers that are neither root nor the server's user.

use std::fs;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eni_rpc::server::{Handler, ServeOptions, Server};
use eni_rpc::{
    read_frame, AllocateRequest, Allocation, Allocations, AttachmentRef, CheckRequest, Client,
    ClientError, ErrorCode, GcRequest, GcResult, NodeStatus, PoolStatus, ReleaseRequest, Released,
    Request, Response, RpcError, Status,
};
use tokio::sync::oneshot;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "eni-rpc-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn allocation(container_id: &str, ifname: &str) -> Allocation {
    Allocation {
        container_id: container_id.into(),
        ifname: ifname.into(),
        netns: "/var/run/netns/x".into(),
        pod: None,
        ip: Ipv4Addr::new(10, 0, 0, 7),
        prefix_len: 24,
        gateway: Ipv4Addr::new(10, 0, 0, 253),
        subnet: "10.0.0.0/24".parse().unwrap(),
        eni_id: "eni-1".into(),
        eni_mac: "02:00:00:00:00:01".into(),
        host_ifname: "eth1".into(),
        route_table: 1001,
        mtu: 1500,
        exclusive: false,
        allocated_at_ms: 1,
        policy_pin_dir: None,
    }
}

/// Answers from canned data; `container_id` values steer it: `slow` takes 400 ms,
/// `sleep-N` takes N ms, `exhausted` fails with `PoolExhausted`.
#[derive(Default)]
struct Fake {
    calls: AtomicU64,
}

impl Handler for Fake {
    async fn handle(&self, request: Request) -> Result<Response, RpcError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match request {
            Request::Allocate(req) => {
                if req.container_id == "exhausted" {
                    return Err(RpcError::new(
                        ErrorCode::PoolExhausted,
                        "no idle address within 5000 ms",
                    ));
                }
                if req.container_id == "slow" {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                if let Some(ms) = req.container_id.strip_prefix("sleep-") {
                    tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                }
                Ok(Response::Allocation(allocation(
                    &req.container_id,
                    &req.ifname,
                )))
            }
            Request::Release(req) => Ok(Response::Released(Released {
                released: (req.container_id == "known")
                    .then(|| allocation(&req.container_id, &req.ifname)),
            })),
            Request::Check(req) if req.container_id == "known" => Ok(Response::Allocation(
                allocation(&req.container_id, &req.ifname),
            )),
            Request::Check(req) => Err(RpcError::not_found(format!(
                "no allocation for {}/{}",
                req.container_id, req.ifname
            ))),
            Request::List => Ok(Response::Allocations(Allocations {
                allocations: vec![allocation("a", "eth0"), allocation("b", "eth0")],
            })),
            Request::Status => Ok(Response::Status(Status {
                node: NodeStatus {
                    instance_id: "i-1".into(),
                    instance_type: "t".into(),
                    zone: "z".into(),
                    provider: "aliyun".into(),
                    max_pods: 10,
                    max_enis: 3,
                    ipv4_per_eni: 6,
                },
                pool: PoolStatus {
                    idle: 0,
                    allocated: 0,
                    total: 0,
                    low_watermark: 1,
                    high_watermark: 3,
                    enis: vec![],
                },
                degraded: None,
                cloud_calls: 0,
                version: "test".into(),
            })),
            Request::Gc(req) => Ok(Response::GcResult(GcResult {
                released: if req.valid.is_empty() {
                    vec![allocation("gone", "eth0")]
                } else {
                    vec![]
                },
            })),
        }
    }
}

/// A server on a socket in a fresh temp dir, served by its own runtime.
struct TestServer {
    rt: tokio::runtime::Runtime,
    dir: TempDir,
    path: PathBuf,
    handler: Arc<Fake>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl TestServer {
    fn start(options: ServeOptions) -> TestServer {
        let dir = TempDir::new();
        let path = dir.0.join("run").join("eni-manager.sock");
        Self::start_at(dir, path, options).unwrap()
    }

    fn start_at(dir: TempDir, path: PathBuf, options: ServeOptions) -> io::Result<TestServer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let handler = Arc::new(Fake::default());
        let server = Server::bind(&path, options)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = rt.spawn(server.run(Arc::clone(&handler), async move {
            let _ = stopped.await;
        }));
        Ok(TestServer {
            rt,
            dir,
            path,
            handler,
            stop: Some(stop),
            task: Some(task),
        })
    }

    fn client(&self) -> Client {
        Client::connect(&self.path, Duration::from_secs(5)).unwrap()
    }

    fn calls(&self) -> u64 {
        self.handler.calls.load(Ordering::SeqCst)
    }

    /// Signals shutdown and waits for the server to return.
    fn stop(&mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => self.rt.block_on(task).unwrap(),
            None => Ok(()),
        }
    }
}

fn alloc_req(container_id: &str) -> AllocateRequest {
    AllocateRequest {
        container_id: container_id.into(),
        ifname: "eth0".into(),
        netns: "/var/run/netns/x".into(),
        pod: None,
        exclusive: false,
        timeout_ms: 1000,
        port_mappings: Vec::new(),
    }
}

fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// Sends raw bytes and reads one answer frame as JSON (`None` if the server closed).
fn raw_exchange(stream: &mut UnixStream, bytes: &[u8]) -> Option<serde_json::Value> {
    stream.write_all(bytes).unwrap();
    read_frame(stream)
        .ok()
        .flatten()
        .map(|payload| serde_json::from_slice(&payload).unwrap())
}

#[test]
fn socket_is_0600_and_serves_every_op_on_one_connection() {
    let mut server = TestServer::start(ServeOptions::default());
    let meta = fs::symlink_metadata(&server.path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let mut client = server.client();
    let allocated = client.allocate(alloc_req("c1")).unwrap();
    assert_eq!(allocated.container_id, "c1");
    assert_eq!(
        client
            .check(CheckRequest {
                container_id: "known".into(),
                ifname: "eth0".into()
            })
            .unwrap()
            .container_id,
        "known"
    );
    let missing = client
        .check(CheckRequest {
            container_id: "c9".into(),
            ifname: "eth0".into(),
        })
        .unwrap_err();
    assert_eq!(missing.remote().map(|e| e.code), Some(ErrorCode::NotFound));
    assert!(client
        .release(ReleaseRequest {
            container_id: "c9".into(),
            ifname: "eth0".into()
        })
        .unwrap()
        .is_none());
    assert!(client
        .release(ReleaseRequest {
            container_id: "known".into(),
            ifname: "eth0".into()
        })
        .unwrap()
        .is_some());
    assert_eq!(client.list().unwrap().len(), 2);
    assert_eq!(client.status().unwrap().version, "test");
    assert_eq!(client.gc(GcRequest { valid: vec![] }).unwrap().len(), 1);
    assert!(client
        .gc(GcRequest {
            valid: vec![AttachmentRef {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        })
        .unwrap()
        .is_empty());
    let exhausted = client.allocate(alloc_req("exhausted")).unwrap_err();
    assert!(matches!(
        &exhausted,
        ClientError::Remote(RpcError {
            code: ErrorCode::PoolExhausted,
            ..
        })
    ));
    assert!(!exhausted.is_unreachable());
    assert_eq!(server.calls(), 10);
    server.stop().unwrap();
}

#[test]
fn many_concurrent_clients_each_with_sequential_requests() {
    let mut server = TestServer::start(ServeOptions::default());
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let path = server.path.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(&path, Duration::from_secs(10)).unwrap();
                for i in 0..25 {
                    let id = format!("t{t}-r{i}");
                    let got = client.allocate(alloc_req(&id)).unwrap();
                    assert_eq!(got.container_id, id);
                }
            })
        })
        .collect();
    // Slow requests on other connections do not hold the fast ones up.
    let slow = {
        let path = server.path.clone();
        std::thread::spawn(move || {
            let mut client = Client::connect(&path, Duration::from_secs(10)).unwrap();
            client.allocate(alloc_req("slow")).unwrap()
        })
    };
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(slow.join().unwrap().container_id, "slow");
    assert_eq!(server.calls(), 32 * 25 + 1);
    server.stop().unwrap();
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = TempDir::new();
    let path = dir.0.join("eni-manager.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    let err = Client::connect(&path, Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("not running"), "{err}");

    let mut server = TestServer::start_at(dir, path, ServeOptions::default()).unwrap();
    assert_eq!(server.client().list().unwrap().len(), 2);
    server.stop().unwrap();
}

#[test]
fn regular_file_at_the_socket_path_is_kept_and_reported() {
    let dir = TempDir::new();
    let path = dir.0.join("eni-manager.sock");
    fs::write(&path, b"precious").unwrap();
    let err = Server::bind(&path, ServeOptions::default()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(fs::read(&path).unwrap(), b"precious");

    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let err = Server::bind(&path, ServeOptions::default()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert!(path.is_dir());
}

#[test]
fn live_socket_of_another_server_is_not_taken_over() {
    let mut server = TestServer::start(ServeOptions::default());
    let err = Server::bind(&server.path, ServeOptions::default()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains("already listening"), "{err}");
    // The first server still answers.
    assert_eq!(server.client().list().unwrap().len(), 2);
    server.stop().unwrap();
}

#[test]
fn malformed_frames_over_the_socket() {
    let mut server = TestServer::start(ServeOptions::default());
    let mut stream = UnixStream::connect(&server.path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    let answer = raw_exchange(&mut stream, &raw_frame(b"{not json")).unwrap();
    assert_eq!(answer["err"]["code"], "BadRequest");
    let answer = raw_exchange(
        &mut stream,
        &raw_frame(br#"{"v":1,"req":{"op":"explode"}}"#),
    )
    .unwrap();
    assert_eq!(answer["err"]["code"], "BadRequest");
    let answer = raw_exchange(
        &mut stream,
        &raw_frame(br#"{"v":1,"req":{"op":"list","verbose":true}}"#),
    )
    .unwrap();
    assert_eq!(answer["err"]["code"], "BadRequest");
    let answer = raw_exchange(&mut stream, &raw_frame(br#"{"v":7,"req":{"op":"list"}}"#)).unwrap();
    assert_eq!(answer["v"], 1);
    assert_eq!(answer["err"]["code"], "VersionMismatch");
    let message = answer["err"]["message"].as_str().unwrap();
    assert!(
        message.contains("version 7") && message.contains("version 1"),
        "{message}"
    );
    // The connection is still in step after all that.
    let answer = raw_exchange(&mut stream, &raw_frame(br#"{"v":1,"req":{"op":"list"}}"#)).unwrap();
    assert_eq!(answer["ok"]["kind"], "allocations");

    // An oversized frame is answered, then the connection is closed.
    let answer = raw_exchange(&mut stream, &(64u32 * 1024 * 1024).to_be_bytes()).unwrap();
    assert_eq!(answer["err"]["code"], "BadRequest");
    assert!(answer["err"]["message"]
        .as_str()
        .unwrap()
        .contains("exceeds"));
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).unwrap_or(0), 0);

    // None of it reached the handler except the one valid request.
    assert_eq!(server.calls(), 1);
    server.stop().unwrap();
}

#[test]
fn idle_and_stalled_clients_are_disconnected() {
    let mut server = TestServer::start(ServeOptions {
        read_timeout: Duration::from_millis(200),
        ..ServeOptions::default()
    });
    let started = Instant::now();
    let mut idle = UnixStream::connect(&server.path).unwrap();
    let mut stalled = UnixStream::connect(&server.path).unwrap();
    stalled.write_all(&[0, 0]).unwrap();
    let mut half = UnixStream::connect(&server.path).unwrap();
    half.write_all(&raw_frame(br#"{"v":1,"req":{"op":"list"}}"#)[..10])
        .unwrap();
    for stream in [&mut idle, &mut stalled, &mut half] {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(stream.read(&mut buf).unwrap(), 0, "server closed it");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // The server still serves others.
    assert_eq!(server.client().list().unwrap().len(), 2);
    server.stop().unwrap();
}

#[test]
fn graceful_shutdown_finishes_requests_in_progress_and_removes_the_socket() {
    let mut server = TestServer::start(ServeOptions::default());
    let path = server.path.clone();
    let in_flight = std::thread::spawn(move || {
        let mut client = Client::connect(&path, Duration::from_secs(5)).unwrap();
        client.allocate(alloc_req("slow"))
    });
    let mut idle = server.client();
    idle.list().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    server.stop().unwrap();

    assert_eq!(in_flight.join().unwrap().unwrap().container_id, "slow");
    assert!(!server.path.exists(), "socket removed on shutdown");
    let err = idle.list().unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    let err = Client::connect(&server.path, Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }));
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn shutdown_abandons_requests_after_the_grace_period() {
    let mut server = TestServer::start(ServeOptions {
        shutdown_grace: Duration::from_millis(100),
        ..ServeOptions::default()
    });
    let path = server.path.clone();
    let in_flight = std::thread::spawn(move || {
        let mut client = Client::connect(&path, Duration::from_secs(10)).unwrap();
        client.allocate(alloc_req("sleep-5000"))
    });
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    server.stop().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = in_flight.join().unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Disconnected { .. }), "{err}");
}

#[test]
fn client_times_out_then_reconnects() {
    let mut server = TestServer::start(ServeOptions::default());
    let mut client = Client::connect(&server.path, Duration::from_millis(150)).unwrap();
    let mut request = alloc_req("sleep-600");
    request.timeout_ms = 0; // no allocate deadline: the client's own timeout applies
    let err = client.allocate(request).unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(err.is_unreachable());
    // The late answer is not mistaken for the next one: the client reconnected.
    assert_eq!(client.list().unwrap().len(), 2);

    // An allocate's own deadline extends the wait.
    let mut request = alloc_req("sleep-400");
    request.timeout_ms = 1000;
    assert_eq!(client.allocate(request).unwrap().container_id, "sleep-400");
    server.stop().unwrap();
}

#[test]
fn client_reports_why_it_cannot_connect() {
    let dir = TempDir::new();
    let missing = dir.0.join("nope.sock");
    let err = Client::connect(&missing, Duration::from_secs(1)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert!(text.contains("is eni-manager running"), "{text}");
    assert!(err.is_unreachable());
}

const CHILD_ENV: &str = "ENI_RPC_TEST_PEER_CHILD_SOCKET";

/// Not a test of its own: the body `non_root_peer_is_refused` runs in a child process as
/// `nobody`. Without the variable it returns at once.
#[test]
fn peer_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let outcome = match Client::connect(Path::new(&path), Duration::from_secs(5))
        .and_then(|mut client| client.status())
    {
        Ok(_) => "ANSWERED".to_owned(),
        Err(ClientError::Connect { source, .. }) => format!("CONNECT {:?}", source.kind()),
        Err(ClientError::Disconnected { .. }) => "DISCONNECTED".to_owned(),
        Err(other) => format!("OTHER {other}"),
    };
    writeln!(io::stdout(), "OUTCOME {outcome}").unwrap();
}

fn run_child_as(exe: &Path, uid: u32, gid: u32, socket: &Path) -> String {
    let output = Command::new(exe)
        .args(["--exact", "peer_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, socket)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|line| {
            line.split_once("OUTCOME ")
                .map(|(_, outcome)| outcome.trim())
        })
        .unwrap_or_else(|| panic!("no outcome from the child: {stdout}"))
        .to_owned()
}

#[test]
fn non_root_peer_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        writeln!(io::stdout(), "SKIPPED: needs root").unwrap();
        return;
    }
    let (uid, gid) = match nix::unistd::User::from_name("nobody") {
        Ok(Some(user)) => (user.uid.as_raw(), user.gid.as_raw()),
        _ => (65534, 65534),
    };
    let mut server = TestServer::start(ServeOptions::default());
    // The child runs a copy of this test binary that `nobody` can surely execute.
    let exe = server.dir.0.join("child");
    fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(
        server.path.parent().unwrap(),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    // With the socket at mode 0600, the kernel refuses the connect itself.
    assert_eq!(
        run_child_as(&exe, uid, gid, &server.path),
        "CONNECT PermissionDenied"
    );

    // Even with the mode widened, the server's SO_PEERCRED check closes the connection
    // before a request reaches the handler.
    fs::set_permissions(&server.path, fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(run_child_as(&exe, uid, gid, &server.path), "DISCONNECTED");
    assert_eq!(server.calls(), 0);

    // Root (our own user) is still served, and the child as root too.
    assert_eq!(server.client().list().unwrap().len(), 2);
    assert_eq!(run_child_as(&exe, 0, 0, &server.path), "ANSWERED");
    server.stop().unwrap();
}

/// Prints how long a CNI-like exchange takes (connect, one request, the answer). A
/// measurement, not a pass/fail test: `cargo test --release -p eni-rpc --all-features
/// --test server -- --ignored --nocapture round_trip_latency`.
#[test]
#[ignore = "a measurement; run it with --ignored --nocapture"]
fn round_trip_latency() {
    let mut server = TestServer::start(ServeOptions::default());
    let mut samples = Vec::new();
    for _ in 0..2000 {
        let started = Instant::now();
        let mut client = Client::connect(&server.path, Duration::from_secs(5)).unwrap();
        client
            .check(CheckRequest {
                container_id: "known".into(),
                ifname: "eth0".into(),
            })
            .unwrap();
        samples.push(started.elapsed());
    }
    samples.sort();
    writeln!(
        io::stdout(),
        "connect + check + answer over {} runs: p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        samples[samples.len() - 1]
    )
    .unwrap();
    server.stop().unwrap();
}
