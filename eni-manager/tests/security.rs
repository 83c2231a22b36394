//! Security properties of a running manager, as root against `mock-cloud` (see
//! `pool_mock_cloud.rs` for the set-up):
//!
//! - its RPC socket is the root's alone: mode 0600, owned by root, and an unprivileged
//!   process (uid/gid 65534) cannot connect, while root can;
//! - the cloud credentials never show up anywhere an operator or a log collector sees them:
//!   the manager's log (stdout and stderr), `/metrics`, and every `enictl` subcommand, across
//!   allocations, throttled and failing cloud calls, and a start with a wrong secret (the
//!   mock answers `SignatureDoesNotMatch` with its string to sign), with the log at `debug`.
//!
//! `enictl` is another package: it is looked up in `ENICTL_BIN`, then next to this test's
//! executable (CI runs `cargo build --workspace --bins` first).
//!
//! Without root every test prints `SKIPPED: needs root` and returns.

#![allow(clippy::print_stdout, reason = "the tests report what they checked")]

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// The marker credentials: any appearance of either prefix in an output is a leak.
const MARKER_ID: &str = "MARKERKEYID7c1e93";
const MARKER_SECRET: &str = "MARKER-SECRET-5f2c8d41a9e6";
const MARKER_SECRET_WRONG: &str = "MARKER-SECRET-5f2c-wrong-0b77";

fn enictl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENICTL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let candidate = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|d| d.join("enictl"));
    match candidate {
        Some(c) if c.is_file() => c,
        _ => panic!(
            "enictl binary not found (looked at {candidate:?}); run `cargo build --workspace --bins` \
             with the same target dir first, or set ENICTL_BIN"
        ),
    }
}

/// A node namespace, the mock with the marker keys, and a directory for the manager.
struct Rig {
    node: NodeNs,
    mock: MockCloud,
    dir: TempDir,
}

impl Rig {
    fn new(tag: &str) -> Rig {
        let node = NodeNs::create(&unique("esn"));
        let mut w = world(&WorldSpec::default(), &node.name, &unique("esv"));
        w["access_keys"] = json!([{"id": MARKER_ID, "secret": MARKER_SECRET}]);
        w["timing"]["attach_ms"] = json!([100, 200]);
        let mock = MockCloud::start(&w);
        Rig {
            node,
            mock,
            dir: TempDir::new(tag),
        }
    }

    fn manager(&self, secret: &str) -> ManagerProc {
        let mut cfg = aliyun_config(self.dir.path(), &["vsw-h1"]);
        cfg["pool"]["min_idle"] = json!(2);
        cfg["pool"]["max_idle"] = json!(6);
        cfg["cloud"]["request_timeout_ms"] = json!(2000);
        cfg["cloud"]["retry_budget_ms"] = json!(3000);
        ManagerProc::spawn(
            self.dir.path(),
            Some(&self.node.name),
            &cfg,
            &[
                ("ALIBABA_CLOUD_ACCESS_KEY_ID", MARKER_ID),
                ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", secret),
                // Everything the manager can say, cloud requests and answers included.
                ("RUST_LOG", "debug"),
            ],
        )
    }

    fn metrics(&self) -> String {
        let (code, body) = self.node.http_get("127.0.0.1:9410", "/metrics");
        assert_eq!(code, 200, "GET /metrics: {body}");
        body
    }
}

/// Runs `enictl --socket <socket> <args>` as root: (exit success, stdout + stderr).
fn enictl(socket: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(enictl_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run enictl");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Panics naming `what` if `text` holds either marker (or a recognisable part of one).
fn assert_no_marker(what: &str, text: &str) {
    for marker in [MARKER_ID, "MARKER-SECRET", "5f2c8d41a9e6", "0b77"] {
        if let Some(at) = text.find(marker) {
            let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!(
                "credential marker {marker:?} found in {what}: {}",
                &text[start..end]
            );
        }
    }
}

#[test]
fn the_rpc_socket_is_root_only() {
    require_root!();
    let rig = Rig::new("sock");
    let mut m = rig.manager(MARKER_SECRET);
    m.wait_ready(Duration::from_secs(30));

    let meta = std::fs::metadata(&m.socket).expect("stat the socket");
    assert!(meta.file_type().is_socket(), "{:?}", meta.file_type());
    assert_eq!(meta.uid(), 0, "socket owner");
    assert_eq!(
        meta.mode() & 0o777,
        0o600,
        "socket mode {:o}: only root may connect",
        meta.mode() & 0o777
    );
    // The directory is traversable by anyone, so the socket's own mode is what refuses.
    let dir_mode = std::fs::metadata(m.socket.parent().unwrap())
        .unwrap()
        .mode();
    assert_eq!(dir_mode & 0o005, 0o005, "directory mode {dir_mode:o}");

    // Root: enictl answers.
    let (ok, text) = enictl(&m.socket, &["status"]);
    assert!(ok, "enictl status as root: {text}");

    // uid/gid 65534 (nobody), no supplementary groups: refused at connect().
    let out = Command::new(enictl_bin())
        .arg("--socket")
        .arg(&m.socket)
        .args(["--timeout", "3s", "status"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run enictl as uid 65534");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("enictl status as uid 65534: {:?}: {text}", out.status);
    assert!(!out.status.success(), "uid 65534 was served: {text}");
    assert!(
        text.to_lowercase().contains("permission denied"),
        "uid 65534 failed for another reason than permissions: {text}"
    );
    // And the manager is still fine.
    assert!(m.alive());
    m.status();
}

#[test]
fn credentials_never_appear_in_logs_metrics_or_enictl() {
    require_root!();
    let rig = Rig::new("creds");
    let mut m = rig.manager(MARKER_SECRET);
    m.wait_ready(Duration::from_secs(30));
    let netns = rig.node.path();

    // Allocations (the pool fills through create/attach/assign), a release.
    for i in 0..8 {
        allocate(&m, &format!("sec-{i}"), &netns, 30_000).expect("allocation");
    }
    m.client().release(release_req("sec-0")).unwrap();

    // Throttled and failing cloud calls while the pool refills.
    rig.mock.put_faults(&json!({"faults": {
        "throttle_status": 429,
        "default": {"error_rate": 0.3},
        "actions": {
            "AssignPrivateIpAddresses": {"per_second": 1, "error_rate": 0.3},
            "CreateNetworkInterface": {"per_second": 1, "error_rate": 0.3},
            "DescribeNetworkInterfaces": {"per_second": 1}
        }
    }}));
    let netns2 = netns;
    let socket = m.socket.clone();
    let burst: Vec<_> = (8..30)
        .map(|i| {
            let (netns, socket) = (netns2.clone(), socket.clone());
            std::thread::spawn(move || {
                eni_rpc::Client::connect(&socket, Duration::from_secs(30))
                    .and_then(|mut c| c.allocate(alloc_req(&format!("sec-{i}"), &netns, 4_000)))
                    .is_ok()
            })
        })
        .collect();
    let served = burst
        .into_iter()
        .map(|t| t.join().unwrap_or(false))
        .filter(|ok| *ok)
        .count();
    println!("under faults: {served} of 22 allocations served");
    rig.mock.put_faults(&json!({"faults": {}}));

    // Every enictl view of the manager, as table and as JSON.
    let mut outputs = Vec::new();
    for args in [
        &["status"][..],
        &["pool"],
        &["enis"],
        &["allocations"],
        &["--json", "status"],
        &["--json", "pool"],
        &["--json", "enis"],
        &["--json", "allocations"],
    ] {
        let (ok, text) = enictl(&m.socket, args);
        assert!(ok, "enictl {args:?}: {text}");
        outputs.push((format!("enictl {args:?}"), text));
    }
    outputs.push(("/metrics".into(), rig.metrics()));
    let calls = rig.mock.admin("calls");
    println!("cloud calls: {calls}");
    let failed: u64 = calls["actions"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|a| a["errors"].as_object().cloned().unwrap_or_default())
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    assert!(
        failed >= 1,
        "no cloud call failed or was throttled: {calls}"
    );

    // A restart with the right key id and a wrong secret: every call is refused with
    // SignatureDoesNotMatch (whose message carries the mock's string to sign).
    m.kill9();
    let mut bad = rig.manager(MARKER_SECRET_WRONG);
    let refused = wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(&bad.log)
            .unwrap_or_default()
            .contains("SignatureDoesNotMatch")
            || !bad.alive()
    });
    assert!(
        refused,
        "the wrong secret was never refused; log:\n{}",
        bad.log_tail(40)
    );
    std::thread::sleep(Duration::from_millis(500));
    if bad.alive() {
        if let Ok(mut c) = eni_rpc::Client::connect(&bad.socket, Duration::from_secs(2)) {
            let _ = c.status();
        }
        let (_, text) = enictl(&bad.socket, &["status"]);
        outputs.push(("enictl status (wrong secret)".into(), text));
    }
    bad.kill9();

    let log = std::fs::read_to_string(&bad.log).unwrap();
    assert!(
        log.contains("SignatureDoesNotMatch"),
        "the log should say why the cloud refused"
    );
    assert!(
        log.lines().count() > 20,
        "too little logged to mean anything"
    );
    assert_no_marker("the manager's log (stdout and stderr)", &log);
    for (what, text) in &outputs {
        assert_no_marker(what, text);
    }
    println!(
        "checked {} log lines and {} outputs: no credential marker",
        log.lines().count(),
        outputs.len()
    );
}
