//! Command line, world-file validation, exit codes and signals.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Runs the binary to completion (with a timeout); answers (exit code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let dir = TestDir::new("cli-out");
    let out = std::fs::File::create(dir.file("out")).unwrap();
    let err = std::fs::File::create(dir.file("err")).unwrap();
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mock-cloud {args:?} did not exit (a bad world must not start a server)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code(),
        std::fs::read_to_string(dir.file("out")).unwrap(),
        std::fs::read_to_string(dir.file("err")).unwrap(),
    )
}

fn run_world_text(text: &str) -> (Option<i32>, String) {
    let dir = TestDir::new("cli");
    let p = dir.file("world.yaml");
    std::fs::write(&p, text).unwrap();
    let (code, _, err) = run(&["--world", p.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    (code, err)
}

fn run_world(w: &serde_json::Value) -> (Option<i32>, String) {
    run_world_text(&serde_yaml::to_string(w).unwrap())
}

#[test]
fn invalid_world_lists_every_problem_and_exits_64() {
    let mut w = default_world();
    w["vswitches"][1]["cidr"] = json!("10.0.0.0/28"); // outside the VPC
    w["instances"][0]["type"] = json!("ecs.nope");
    w["timing"]["attach_failure_rate"] = json!(3.0);
    let (code, err) = run_world(&w);
    assert_eq!(code, Some(64), "stderr: {err}");
    for field in [
        "vswitches[1].cidr",
        "instances[0].type",
        "timing.attach_failure_rate",
    ] {
        assert!(err.contains(field), "{field} not named:\n{err}");
    }
}

#[test]
fn each_validation_rule() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|w| w["vswitches"][3]["cidr"] = json!("192.168.4.0/30")),
            "vswitches[3].cidr",
        ),
        (
            Box::new(|w| w["vswitches"][0]["cidr"] = json!("192.168.1.5/24")),
            "vswitches[0].cidr",
        ),
        (
            Box::new(|w| w["vswitches"][1]["cidr"] = json!("192.168.1.16/28")),
            "overlaps",
        ),
        (
            Box::new(|w| w["vswitches"][0]["zone"] = json!("cn-hangzhou-z")),
            "vswitches[0].zone",
        ),
        (
            Box::new(|w| w["vswitches"][2]["id"] = json!("vsw-h1")),
            "vswitches[2].id",
        ),
        (
            Box::new(|w| w["instances"][1]["vswitch"] = json!("vsw-nope")),
            "instances[1].vswitch",
        ),
        (
            Box::new(|w| w["instances"][1]["security_groups"] = json!(["sg-nope"])),
            "instances[1].security_groups",
        ),
        (
            Box::new(|w| w["instances"][1]["primary_ip"] = json!("192.168.1.253")),
            "instances[1].primary_ip",
        ),
        (
            Box::new(|w| w["instances"][1]["primary_ip"] = json!("192.168.1.10")),
            "instances[1].primary_ip",
        ),
        (
            Box::new(|w| w["instances"][1]["ram_role"] = json!("nope")),
            "instances[1].ram_role",
        ),
        (
            Box::new(|w| w["faults"]["actions"] = json!({"DescribeVSwitches": {"per_minute": 0}})),
            "faults.actions.DescribeVSwitches",
        ),
        (
            Box::new(|w| w["faults"]["default"] = json!({"drop_rate": 1.5})),
            "faults.default.drop_rate",
        ),
    ];
    for (i, (edit, field)) in cases.into_iter().enumerate() {
        let mut w = default_world();
        edit(&mut w);
        let (code, err) = run_world(&w);
        assert_eq!(code, Some(64), "case {i} ({field}) stderr: {err}");
        assert!(err.contains(field), "case {i}: {field} not named:\n{err}");
    }
}

#[test]
fn unparseable_or_missing_world_and_bad_flags_exit_64() {
    let (code, err) = run_world_text("region: [unclosed");
    assert_eq!(code, Some(64), "{err}");
    let mut w = default_world();
    w["surprise"] = json!(1);
    let (code, err) = run_world(&w);
    assert_eq!(code, Some(64), "unknown field accepted: {err}");
    assert!(err.contains("surprise"), "{err}");
    let (code, _, err) = run(&[
        "--world",
        "/nonexistent/world.yaml",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(64), "{err}");
    let (code, _, err) = run(&["--bogus-flag"]);
    assert_eq!(code, Some(64), "{err}");
    let dir = TestDir::new("cli");
    let p = dir.file("world.yaml");
    write_world(&p, &default_world());
    let (code, _, err) = run(&["--world", p.to_str().unwrap(), "--listen", "not-an-address"]);
    assert_eq!(code, Some(64), "{err}");
}

#[test]
fn sigterm_and_sigint_exit_0() {
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let mut m = Mock::start_default();
        m.ok("DescribeVSwitches", &[]);
        sleep_ms(300);
        let st = m
            .signal_and_wait(sig, Duration::from_secs(10))
            .expect("exited");
        assert_eq!(st.code(), Some(0), "{sig:?}: {st:?}");
    }
}

#[test]
fn sigterm_right_after_the_first_answer_exits_0() {
    // Once the mock has printed its first line and answered, SIGTERM must already be handled
    // (a test harness may stop the mock at once).
    for _ in 0..5 {
        let mut m = Mock::start_default();
        m.ok("DescribeVSwitches", &[]);
        let st = m
            .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10))
            .expect("exited");
        assert_eq!(
            st.code(),
            Some(0),
            "killed by the signal instead of exiting 0: {st:?}"
        );
    }
}

#[test]
fn first_line_and_answers_on_the_port() {
    let m = Mock::start_default();
    let port: u16 = m.addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0);
    let (st, v) = m.call("DescribeInstanceTypes", &[]);
    assert_eq!(st, 200, "{v}");
}
