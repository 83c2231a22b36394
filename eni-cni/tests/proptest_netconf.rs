//! Property tests of the plugin's input handling: the `CNI_*` environment and the netconf on
//! stdin are validated without a panic whatever they hold; a refusal is a CNI error object
//! with one of the spec's input codes; an accepted netconf means what it said. Nothing here
//! acts on the node: inputs that would be accepted are only parsed, never run.
//!
//! Case counts keep each property to a few seconds in a debug build; raise them with
//! `PROPTEST_CASES=10000` for a longer hunt.

use std::collections::BTreeMap;

use eni_cni::config::{self, Command, Mode};
use eni_cni::error;
use eni_cni::result::CniResult;
use eni_cni::version::{self, CniVersion};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The codes `config::parse` may answer with: the CNI spec's input errors.
const INPUT_CODES: [u32; 6] = [
    error::INCOMPATIBLE_VERSION,
    error::UNSUPPORTED_FIELD,
    error::UNKNOWN_CONTAINER,
    error::INVALID_ENV,
    error::DECODE_FAILURE,
    error::INVALID_NETCONF,
];

/// Sends the plugin's error log lines (one per refused invocation) to /dev/null rather than
/// the test's stderr.
fn quiet_logs() {
    let _ = eni_cni::log::init(
        eni_cni::log::Level::Error,
        Some(std::path::Path::new("/dev/null")),
        String::new(),
    );
}

/// An environment lookup over a map.
fn env_fn(env: &BTreeMap<String, String>) -> impl Fn(&str) -> Option<String> + '_ {
    move |k| env.get(k).cloned()
}

/// Plausible and implausible values of the `CNI_*` variables.
fn env() -> impl Strategy<Value = BTreeMap<String, String>> {
    let command = prop_oneof![
        Just("ADD".to_string()),
        Just("DEL".to_string()),
        Just("CHECK".to_string()),
        Just("STATUS".to_string()),
        Just("GC".to_string()),
        Just("add".to_string()),
        Just(String::new()),
        "\\PC{0,8}",
    ];
    let container = prop_oneof![
        "[a-f0-9]{1,64}",
        "\\PC{0,20}",
        Just("x".repeat(1025)),
        Just(String::new()),
    ];
    let ifname = prop_oneof![
        Just("eth0".to_string()),
        "[a-z0-9]{1,20}",
        "\\PC{0,16}",
        Just("a/b".to_string()),
    ];
    let netns = prop_oneof![
        Just("/proc/self/ns/net".to_string()),
        Just("/nonexistent/ns".to_string()),
        Just("relative/ns".to_string()),
        "\\PC{0,20}",
    ];
    let args = prop_oneof![
        Just(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u1"
                .to_string()
        ),
        Just("ENI_EXCLUSIVE=true".to_string()),
        Just("ENI_EXCLUSIVE=maybe;=x;novalue;;".to_string()),
        "[A-Z_=;a-z0-9]{0,40}",
        "\\PC{0,30}",
    ];
    (
        proptest::option::of(command),
        proptest::option::of(container),
        proptest::option::of(ifname),
        proptest::option::of(netns),
        proptest::option::of(args),
    )
        .prop_map(|(c, id, ifname, netns, args)| {
            let mut m = BTreeMap::new();
            for (k, v) in [
                ("CNI_COMMAND", c),
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", ifname),
                ("CNI_NETNS", netns),
                ("CNI_ARGS", args),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            m
        })
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
        Just(json!("10.0.0.5/24")),
        Just(json!("fd00::1/64")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                "[a-z]{1,8}|address|ips|interfaces|routes",
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A netconf built from the plugin's own keys with good and bad values, plus now and then an
/// unknown key, so that most cases reach the field checks rather than stopping at the JSON
/// parser.
fn netconf() -> impl Strategy<Value = Map<String, Value>> {
    let version = prop_oneof![
        Just(json!("1.1.0")),
        Just(json!("1.0.0")),
        Just(json!("0.4.0")),
        Just(json!("0.3.1")),
        Just(json!(1)),
        json_value(),
    ];
    let name = prop_oneof![
        "[a-z0-9][a-z0-9._-]{0,15}".prop_map(Value::String),
        "\\PC{0,10}".prop_map(Value::String),
        json_value(),
    ];
    let kind = prop_oneof![Just(json!("eni-cni")), Just(json!("bridge")), json_value()];
    let socket = prop_oneof![
        Just(json!("/run/eni-manager/eni-manager.sock")),
        Just(json!("relative.sock")),
        Just(json!("/run/dir/")),
        Just(json!(format!("/{}", "s".repeat(200)))),
        json_value(),
    ];
    let mode = prop_oneof![
        Just(json!("auto")),
        Just(json!("exclusive")),
        Just(json!("ipvlan")),
        Just(json!("veth")),
        json_value(),
    ];
    let mtu = prop_oneof![(0u64..70_000).prop_map(|n| json!(n)), json_value()];
    let level = prop_oneof![Just(json!("debug")), Just(json!("loud")), json_value()];
    let timeout = prop_oneof![(0u64..700_000).prop_map(|n| json!(n)), json_value()];
    let runtime = prop_oneof![
        any::<bool>().prop_map(|b| json!({"exclusiveEni": b})),
        json_value(),
    ];
    let prev = prop_oneof![
        Just(json!({"cniVersion": "1.1.0", "ips": [{"address": "10.1.2.3/24"}], "interfaces": []})),
        Just(json!({"ips": [{"address": "not-a-cidr"}]})),
        Just(json!({"ips": {}})),
        json_value(),
    ];
    let attachments = prop_oneof![
        Just(json!([{"containerID": "abc", "ifname": "eth0"}])),
        Just(json!([{"containerID": ""}])),
        json_value(),
    ];
    (
        (
            proptest::option::of(version),
            proptest::option::of(name),
            proptest::option::of(kind),
            proptest::option::of(socket),
            proptest::option::of(mode),
            proptest::option::of(mtu),
        ),
        (
            proptest::option::of(level),
            proptest::option::of(timeout),
            proptest::option::of(runtime),
            proptest::option::of(prev),
            proptest::option::of(attachments),
            proptest::option::of(("[a-zA-Z]{1,8}|ipam|ipMasq", json_value())),
        ),
    )
        .prop_map(
            |((version, name, kind, socket, mode, mtu), (level, timeout, rt, prev, att, extra))| {
                let mut m = Map::new();
                for (k, v) in [
                    ("cniVersion", version),
                    ("name", name),
                    ("type", kind),
                    ("socket", socket),
                    ("mode", mode),
                    ("mtu", mtu),
                    ("log_level", level),
                    ("timeout_ms", timeout),
                    ("runtimeConfig", rt),
                    ("prevResult", prev),
                    ("cni.dev/valid-attachments", att),
                ] {
                    if let Some(v) = v {
                        m.insert(k.to_string(), v);
                    }
                }
                if let Some((k, v)) = extra {
                    m.insert(k, v);
                }
                m
            },
        )
}

/// Checks what `parse` says about one input: a refusal carries an input code and a message;
/// an acceptance matches the netconf it came from.
fn check_parse(env: &BTreeMap<String, String>, stdin: &[u8]) -> Result<(), TestCaseError> {
    let var = env_fn(env);
    match config::parse(&var, stdin) {
        Err(e) => {
            prop_assert!(INPUT_CODES.contains(&e.code), "code {} for {e:?}", e.code);
            prop_assert!(!e.msg.is_empty());
            // The error object the binary prints is JSON with the same code.
            let out = e.to_json("1.1.0");
            prop_assert_eq!(out["code"].as_u64(), Some(u64::from(e.code)));
        }
        Ok(inv) => {
            let cmd = env.get("CNI_COMMAND").map(String::as_str);
            prop_assert_eq!(Some(inv.env.command.as_str()), cmd);
            if inv.env.command == Command::Version {
                prop_assert!(inv.conf.is_none());
                return Ok(());
            }
            let conf = inv
                .conf
                .clone()
                .expect("a netconf for every command but VERSION");
            let input: Value = serde_json::from_slice(stdin).expect("accepted input is JSON");
            prop_assert_eq!(input["type"].as_str(), Some(config::PLUGIN_TYPE));
            prop_assert_eq!(input["name"].as_str(), Some(conf.name.as_str()));
            prop_assert_eq!(
                input["cniVersion"].as_str(),
                Some(conf.cni_version.as_str())
            );
            prop_assert!(version::SUPPORTED.contains(&conf.cni_version.as_str()));
            let mode = input.get("mode").and_then(Value::as_str).unwrap_or("auto");
            prop_assert_eq!(conf.mode.as_str(), mode);
            if let Some(mtu) = conf.mtu {
                prop_assert!((68..=65535).contains(&mtu));
                prop_assert_eq!(input["mtu"].as_u64(), Some(u64::from(mtu)));
            }
            prop_assert!(conf.socket.is_absolute());
            if conf.mode == Mode::Exclusive {
                prop_assert!(inv.wants_exclusive(&conf));
            }
            if inv.env.command.as_str() != "STATUS" && inv.env.command.as_str() != "GC" {
                prop_assert!(!inv.env.container_id.is_empty());
                prop_assert!(!inv.env.ifname.is_empty());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(384))]

    /// Arbitrary bytes on stdin with any environment: no panic, an input error or a valid
    /// invocation.
    #[test]
    fn any_bytes_with_any_env(env in env(), stdin in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_parse(&env, &stdin)?;
        let _ = config::requested_version(&stdin);
    }

    /// Netconfs of the plugin's keys with good and bad values.
    #[test]
    fn structured_netconf(env in env(), conf in netconf()) {
        let stdin = serde_json::to_vec(&Value::Object(conf)).unwrap();
        check_parse(&env, &stdin)?;
    }

    /// The same netconfs, cut short or with a byte changed: still no panic.
    #[test]
    fn mangled_netconf(env in env(), conf in netconf(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
        let mut stdin = serde_json::to_vec(&Value::Object(conf)).unwrap();
        let mut short = stdin.clone();
        short.truncate(cut.index(stdin.len() + 1));
        check_parse(&env, &short)?;
        let at = flip.0.index(stdin.len());
        stdin[at] ^= flip.1;
        check_parse(&env, &stdin)?;
    }

    /// VERSION answers with a version list for any stdin, through the binary's entry point.
    #[test]
    fn version_answers_for_any_stdin(stdin in proptest::collection::vec(any::<u8>(), 0..120)) {
        quiet_logs();
        let env: BTreeMap<String, String> = [("CNI_COMMAND".to_string(), "VERSION".to_string())].into();
        let var = env_fn(&env);
        let (out, failed) = eni_cni::main_with(&var, &mut stdin.as_slice());
        let out = out.expect("VERSION prints JSON");
        if failed {
            prop_assert!(out["code"].is_u64(), "{out}");
        } else {
            prop_assert!(out["supportedVersions"].is_array(), "{out}");
        }
    }

    /// A refused invocation becomes the binary's error object, with the same code, on the
    /// binary's entry point too (which parses first and acts only on a valid invocation).
    #[test]
    fn refusals_reach_stdout_as_error_objects(env in env(), conf in netconf()) {
        quiet_logs();
        let stdin = serde_json::to_vec(&Value::Object(conf)).unwrap();
        let var = env_fn(&env);
        if let Err(e) = config::parse(&var, &stdin) {
            let (out, failed) = eni_cni::main_with(&var, &mut stdin.as_slice());
            prop_assert!(failed);
            let out = out.expect("an error object");
            prop_assert_eq!(out["code"].as_u64(), Some(u64::from(e.code)));
            prop_assert!(out["msg"].is_string());
        }
    }

    /// `prevResult` of any shape: read or refused, and a result that is read comes back the
    /// same through `to_json` in the latest version.
    #[test]
    fn prev_result_any_shape(v in json_value()) {
        if let Ok(r) = CniResult::from_value(&v) {
            let again = CniResult::from_value(&r.to_json(CniVersion::LATEST)).expect("re-read");
            prop_assert_eq!(again.ips.len(), r.ips.len());
            prop_assert_eq!(again.interfaces.len(), r.interfaces.len());
            prop_assert_eq!(again.ipv4_addresses(), r.ipv4_addresses());
        }
    }

    /// Version strings: only the supported ones parse, and they print back the same.
    #[test]
    fn cni_version_strings(s in "\\PC{0,8}|[0-9]\\.[0-9]\\.[0-9]") {
        match CniVersion::parse(&s) {
            Some(v) => prop_assert_eq!(v.as_str(), s.as_str()),
            None => prop_assert!(!version::SUPPORTED.contains(&s.as_str())),
        }
    }
}
