//! The built binary against bad inputs and every manager error: each must print one CNI
//! error object on stdout (right code, a message naming the cause), exit non-zero, and
//! leave the node alone. Also VERSION and STATUS. Needs no root: no case gets as far as
//! wiring (the fake manager fails every request for these containers).

mod common;

use common::{cni_env, plugin_path, run_plugin, ManagerHandle, ManagerSetup, TempDir};
use serde_json::{json, Value};

const GOOD: &str = r#"{"cniVersion":"1.1.0","name":"eni","type":"eni-cni","mode":"veth"}"#;

struct Case {
    name: &'static str,
    /// Env changes: (key, Some(value)) sets, (key, None) removes.
    env: Vec<(&'static str, Option<String>)>,
    stdin: String,
    code: u64,
    /// Words the message must contain.
    msg: &'static [&'static str],
}

fn conf_with(field: &str, value: Value) -> String {
    let mut v: Value = serde_json::from_str(GOOD).unwrap();
    v[field] = value;
    v.to_string()
}

fn case(
    name: &'static str,
    env: Vec<(&'static str, Option<String>)>,
    stdin: String,
    code: u64,
    msg: &'static [&'static str],
) -> Case {
    Case {
        name,
        env,
        stdin,
        code,
        msg,
    }
}

fn set(k: &'static str, v: &str) -> (&'static str, Option<String>) {
    (k, Some(v.to_string()))
}

fn unset(k: &'static str) -> (&'static str, Option<String>) {
    (k, None)
}

fn manager_code(code: &str) -> (&'static str, Option<String>) {
    ("CNI_CONTAINERID", Some(format!("err-{code}")))
}

#[test]
fn bad_inputs_give_the_right_error() {
    let manager = ManagerHandle::start(ManagerSetup::vpc());
    let sock = manager.socket.display().to_string();
    let run_dir = TempDir::new();
    let good = conf_with("socket", json!(sock));
    let with = |field: &str, value: Value| {
        let mut v: Value = serde_json::from_str(&good).unwrap();
        v[field] = value;
        v.to_string()
    };
    let stale = run_dir.0.join("stale.sock");
    std::fs::write(&stale, b"").unwrap();
    let g = || good.clone();

    let cases = vec![
        case(
            "malformed JSON",
            vec![],
            "{\"cniVersion\":".into(),
            6,
            &["not valid JSON"],
        ),
        case("empty stdin", vec![], String::new(), 6, &["empty"]),
        case(
            "JSON array",
            vec![],
            "[1,2]".into(),
            6,
            &["not a JSON object"],
        ),
        case(
            "old cniVersion",
            vec![],
            with("cniVersion", json!("0.3.1")),
            1,
            &["0.3.1", "supported"],
        ),
        case(
            "future cniVersion",
            vec![],
            with("cniVersion", json!("2.0.0")),
            1,
            &["2.0.0"],
        ),
        case(
            "cniVersion missing",
            vec![],
            r#"{"name":"eni","type":"eni-cni"}"#.into(),
            1,
            &["cniVersion is missing"],
        ),
        case(
            "cniVersion not a string",
            vec![],
            with("cniVersion", json!(1)),
            1,
            &["cniVersion must be a string"],
        ),
        case(
            "CNI_COMMAND missing",
            vec![unset("CNI_COMMAND")],
            g(),
            4,
            &["CNI_COMMAND is not set"],
        ),
        case(
            "CNI_COMMAND unknown",
            vec![set("CNI_COMMAND", "ATTACH")],
            g(),
            4,
            &["ATTACH"],
        ),
        case(
            "CNI_CONTAINERID missing",
            vec![unset("CNI_CONTAINERID")],
            g(),
            4,
            &["CNI_CONTAINERID is not set"],
        ),
        case(
            "CNI_CONTAINERID bad",
            vec![set("CNI_CONTAINERID", "a b/c")],
            g(),
            4,
            &["CNI_CONTAINERID", "invalid"],
        ),
        case(
            "CNI_NETNS missing",
            vec![unset("CNI_NETNS")],
            g(),
            4,
            &["CNI_NETNS is not set"],
        ),
        case(
            "CNI_NETNS relative",
            vec![set("CNI_NETNS", "netns/pod")],
            g(),
            4,
            &["not an absolute path"],
        ),
        case(
            "CNI_NETNS gone",
            vec![set("CNI_NETNS", "/var/run/netns/eni-cni-no-such-ns")],
            g(),
            3,
            &["does not exist"],
        ),
        case(
            "CNI_IFNAME missing",
            vec![unset("CNI_IFNAME")],
            g(),
            4,
            &["CNI_IFNAME is not set"],
        ),
        case(
            "CNI_IFNAME too long",
            vec![set("CNI_IFNAME", "abcdefghijklmnop")],
            g(),
            4,
            &["not a valid interface name"],
        ),
        case(
            "CNI_IFNAME slash",
            vec![set("CNI_IFNAME", "eth/0")],
            g(),
            4,
            &["not a valid interface name"],
        ),
        case(
            "CNI_IFNAME colon",
            vec![set("CNI_IFNAME", "eth0:1")],
            g(),
            4,
            &["not a valid interface name"],
        ),
        case(
            "CNI_ARGS malformed",
            vec![set("CNI_ARGS", "K8S_POD_NAME")],
            g(),
            4,
            &["not KEY=VALUE"],
        ),
        case(
            "ENI_EXCLUSIVE bad",
            vec![set("CNI_ARGS", "ENI_EXCLUSIVE=maybe")],
            g(),
            4,
            &["ENI_EXCLUSIVE"],
        ),
        case(
            "type wrong",
            vec![],
            with("type", json!("bridge")),
            7,
            &["type", "eni-cni"],
        ),
        case(
            "name missing",
            vec![],
            r#"{"cniVersion":"1.0.0","type":"eni-cni"}"#.into(),
            7,
            &["name is missing"],
        ),
        case(
            "name bad",
            vec![],
            with("name", json!("-eni")),
            7,
            &["name", "invalid"],
        ),
        case(
            "mode unknown",
            vec![],
            with("mode", json!("turbo")),
            7,
            &["mode", "turbo"],
        ),
        case(
            "mtu too small",
            vec![],
            with("mtu", json!(10)),
            7,
            &["mtu 10"],
        ),
        case(
            "mtu too big",
            vec![],
            with("mtu", json!(70000)),
            7,
            &["mtu 70000"],
        ),
        case(
            "mtu a string",
            vec![],
            with("mtu", json!("1500")),
            7,
            &["mtu"],
        ),
        case(
            "socket relative",
            vec![],
            with("socket", json!("eni.sock")),
            7,
            &["socket", "absolute"],
        ),
        case(
            "socket too long",
            vec![],
            with("socket", json!(format!("/{}", "s".repeat(200)))),
            7,
            &["socket path is 201 bytes"],
        ),
        case(
            "log_level unknown",
            vec![],
            with("log_level", json!("loud")),
            7,
            &["log_level"],
        ),
        case(
            "log_file relative",
            vec![],
            with("log_file", json!("cni.log")),
            7,
            &["log_file"],
        ),
        case(
            "timeout_ms negative",
            vec![],
            with("timeout_ms", json!(-1)),
            7,
            &["timeout_ms"],
        ),
        case(
            "timeout_ms huge",
            vec![],
            with("timeout_ms", json!(1_000_000_000u64)),
            7,
            &["timeout_ms"],
        ),
        case(
            "exclusiveEni not bool",
            vec![],
            with("runtimeConfig", json!({"exclusiveEni": "yes"})),
            7,
            &["exclusiveEni"],
        ),
        case(
            "unknown field",
            vec![],
            with("mdoe", json!("veth")),
            2,
            &["mdoe"],
        ),
        case(
            "ipam given",
            vec![],
            with("ipam", json!({"type": "host-local"})),
            2,
            &["ipam"],
        ),
        case(
            "prevResult garbage",
            vec![],
            with("prevResult", json!({"ips": [{"address": "x"}]})),
            6,
            &["prevResult"],
        ),
        case(
            "GC without valid-attachments",
            vec![set("CNI_COMMAND", "GC")],
            g(),
            7,
            &["valid-attachments"],
        ),
        case(
            "log_file unwritable",
            vec![],
            with("log_file", json!("/proc/eni-cni/x.log")),
            5,
            &["log file"],
        ),
        case(
            "manager down (no socket)",
            vec![],
            with("socket", json!(run_dir.0.join("none.sock"))),
            105,
            &["unreachable", "does not exist"],
        ),
        case(
            "manager socket stale",
            vec![],
            with("socket", json!(stale)),
            105,
            &["unreachable"],
        ),
        case(
            "pool exhausted",
            vec![manager_code("PoolExhausted")],
            g(),
            100,
            &["pool exhausted", "fake manager says"],
        ),
        case(
            "vSwitch exhausted",
            vec![manager_code("VSwitchExhausted")],
            g(),
            101,
            &["vSwitches"],
        ),
        case(
            "node full",
            vec![manager_code("EniLimit")],
            g(),
            102,
            &["node is full"],
        ),
        case(
            "cloud throttled",
            vec![manager_code("CloudThrottled")],
            g(),
            103,
            &["throttles"],
        ),
        case(
            "cloud unavailable",
            vec![manager_code("CloudUnavailable")],
            g(),
            104,
            &["unreachable"],
        ),
        case(
            "manager timeout",
            vec![manager_code("Timeout")],
            g(),
            11,
            &["try again later"],
        ),
        case(
            "manager shutting down",
            vec![manager_code("ShuttingDown")],
            g(),
            11,
            &["ShuttingDown"],
        ),
        case(
            "manager bad request",
            vec![manager_code("BadRequest")],
            g(),
            106,
            &["upgrade eni-cni and eni-manager together"],
        ),
        case(
            "manager version mismatch",
            vec![manager_code("VersionMismatch")],
            g(),
            106,
            &["VersionMismatch"],
        ),
        case(
            "manager internal",
            vec![manager_code("Internal")],
            g(),
            107,
            &["eni-manager failed"],
        ),
        case(
            "CHECK unknown container",
            vec![set("CNI_COMMAND", "CHECK"), manager_code("NotFound")],
            g(),
            3,
            &["no allocation"],
        ),
        case(
            "STATUS manager down",
            vec![set("CNI_COMMAND", "STATUS")],
            with("socket", json!("/nonexistent/eni.sock")),
            50,
            &["STATUS", "/nonexistent/eni.sock"],
        ),
    ];
    assert!(cases.len() >= 30);

    let mut failures = Vec::new();
    for c in &cases {
        // An interface name the test host does not have: nothing can collide.
        let mut env = cni_env("ADD", "c-test", "/proc/self/ns/net", "cnitest0", &run_dir.0);
        for (k, v) in &c.env {
            env.retain(|(key, _)| key != k);
            if let Some(v) = v {
                env.push((k, v.clone()));
            }
        }
        let out = run_plugin(plugin_path(), None, &env, &c.stdin);
        let problem = (|| -> Option<String> {
            if out.code == 0 {
                return Some("exit code 0".into());
            }
            let v: Value = serde_json::from_str(&out.stdout).ok()?;
            let msg = v["msg"].as_str().unwrap_or_default();
            if v["code"] != json!(c.code) {
                return Some(format!("code {} (expected {}): {msg}", v["code"], c.code));
            }
            if v["cniVersion"].as_str().is_none() {
                return Some("no cniVersion".into());
            }
            for word in c.msg {
                if !msg.contains(word) {
                    return Some(format!("message lacks {word:?}: {msg}"));
                }
            }
            if out.stdout.lines().count() != 1 {
                return Some(format!(
                    "stdout is more than the error object: {:?}",
                    out.stdout
                ));
            }
            None
        })()
        .or_else(|| {
            serde_json::from_str::<Value>(&out.stdout)
                .err()
                .map(|e| format!("stdout not JSON: {e}: {:?}", out.stdout))
        });
        if let Some(p) = problem {
            failures.push(format!("{}: {p}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Nothing was allocated for any of them.
    assert!(manager.state.lock().unwrap().allocations.is_empty());
}

#[test]
fn version_lists_the_supported_versions() {
    let run_dir = TempDir::new();
    let env = [("CNI_COMMAND", "VERSION".to_string())];
    for (stdin, expect) in [
        ("", "1.1.0"),
        (r#"{"cniVersion":"0.4.0"}"#, "0.4.0"),
        (r#"{"cniVersion":"1.0.0"}"#, "1.0.0"),
    ] {
        let out = run_plugin(plugin_path(), None, &env, stdin).ok();
        let v = out.json();
        assert_eq!(v["cniVersion"], expect);
        assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
    }
    drop(run_dir);
}

#[test]
fn status_answers_when_the_manager_does() {
    let manager = ManagerHandle::start(ManagerSetup::vpc());
    let conf = conf_with("socket", json!(manager.socket));
    let env = [("CNI_COMMAND", "STATUS".to_string())];
    let out = run_plugin(plugin_path(), None, &env, &conf);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.trim().is_empty(),
        "STATUS prints nothing on success: {:?}",
        out.stdout
    );
    assert!(
        manager.calls().contains(&"status ".to_string()),
        "{:?}",
        manager.calls()
    );
}

#[test]
fn logs_go_to_the_log_file_not_stdout() {
    let manager = ManagerHandle::start(ManagerSetup::vpc());
    let dir = TempDir::new();
    let log = dir.0.join("sub/cni.log");
    let mut v: Value = serde_json::from_str(&conf_with("socket", json!(manager.socket))).unwrap();
    v["log_file"] = json!(log);
    v["log_level"] = json!("debug");
    let env = cni_env(
        "ADD",
        "err-PoolExhausted",
        "/proc/self/ns/net",
        "cnitest0",
        &dir.0,
    );
    let out = run_plugin(plugin_path(), None, &env, &v.to_string());
    assert_ne!(out.code, 0);
    assert_eq!(out.json()["code"], 100);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("level=error") && text.contains("pool exhausted"),
        "{text}"
    );
    assert!(text.contains("container=err-PoolExh"), "{text}");
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}
