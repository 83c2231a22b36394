//! `--state`: the cloud survives a `kill -9` of the mock.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SECS10: Duration = Duration::from_secs(10);

fn snapshot(m: &Mock, id: &str) -> Value {
    let mut v = m.eni(id).unwrap_or_else(|| panic!("{id} is gone"));
    v.as_object_mut().unwrap().remove("RequestId");
    v
}

#[test]
fn state_survives_kill9() {
    let mut w = default_world();
    w["timing"]["attach_ms"] = json!(1500);
    let mut m = Mock::start_with_state(&w);

    let a = m.create_eni_id(
        "vsw-h1",
        &[
            ("SecondaryPrivateIpAddressCount", "2"),
            ("Tag.1.Key", "k"),
            ("Tag.1.Value", "v"),
        ],
    );
    let b = m.create_eni_id("vsw-h1", &[("Ipv4PrefixCount", "1")]);
    let d_params = [
        ("VSwitchId", "vsw-i1"),
        ("SecurityGroupId", "sg-nodes"),
        ("ClientToken", "tok-persist"),
    ];
    let d = s(
        &m.ok("CreateNetworkInterface", &d_params),
        "NetworkInterfaceId",
    )
    .to_string();
    m.ok(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &a),
            ("PrivateIpAddress.1", "192.168.1.77"),
        ],
    );
    // Fill vsw-h4 completely.
    let full = m.create_eni_id("vsw-h4", &[("SecondaryPrivateIpAddressCount", "3")]);
    let c = m.create_eni_id("vsw-h1", &[]);
    // Free one address so that "freed" also survives.
    m.ok(
        "UnassignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &a),
            ("PrivateIpAddress.1", "192.168.1.2"),
        ],
    );
    let before: Vec<Value> = [&a, &b, &d, &full]
        .iter()
        .map(|id| snapshot(&m, id))
        .collect();
    let held_before: HashSet<String> = m.all_held_ips().into_iter().collect();
    let h1_before = m.vswitch_available("vsw-h1");

    m.ok(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &c), ("InstanceId", "i-node-a")],
    );
    assert_eq!(m.eni_status(&c), "Attaching");
    let state_file = m.state_path.clone().unwrap();
    m.kill9();
    let text = std::fs::read_to_string(&state_file).expect("the state file exists");
    serde_json::from_str::<Value>(&text).expect("the state file is JSON");

    m.restart();
    for (id, want) in [&a, &b, &d, &full].iter().zip(&before) {
        assert_eq!(&snapshot(&m, id), want, "{id} changed across the restart");
    }
    // The ENI that was Attaching finishes.
    let st = m.eni_status(&c);
    assert!(
        st == "Attaching" || st == "InUse",
        "{c} is {st} after the restart"
    );
    m.wait_status(&c, "InUse", SECS10);
    let dc = m.eni(&c).unwrap();
    assert_eq!(dc["Attachment"]["InstanceId"], "i-node-a", "{dc}");
    assert_eq!(dc["Attachment"]["DeviceIndex"], 1, "{dc}");
    // Allocations survived: counts and no address handed out twice.
    assert_eq!(m.vswitch_available("vsw-h1"), h1_before);
    assert_eq!(m.vswitch_available("vsw-h4"), 0);
    m.err(
        "CreateNetworkInterface",
        &[("VSwitchId", "vsw-h4"), ("SecurityGroupId", "sg-nodes")],
        403,
        "InvalidVSwitchId.IpNotEnough",
    );
    let n = m.create_eni("vsw-h1", &[("SecondaryPrivateIpAddressCount", "5")]);
    let new_id = s(&n, "NetworkInterfaceId").to_string();
    assert!(
        ![&a, &b, &c, &d, &full].contains(&&new_id),
        "id {new_id} reused after restart"
    );
    // The freed .2 is handed out (lowest first), nothing that was held is.
    assert_eq!(n["PrivateIpAddress"], "192.168.1.2", "{n}");
    for (ip, _) in eni_ips(&n) {
        assert!(
            !held_before.contains(&ip),
            "{ip} handed out twice after the restart"
        );
    }
    let b_prefix = eni_prefixes(&before[1])[0].clone();
    for (ip, _) in eni_ips(&n) {
        assert!(!ip_in(&ip, &b_prefix), "{ip} inside {b_prefix}");
    }
    let all = m.all_held_ips();
    let set: HashSet<&String> = all.iter().collect();
    assert_eq!(set.len(), all.len(), "duplicates after restart: {all:?}");
    // Idempotency records survived.
    let again = m.ok("CreateNetworkInterface", &d_params);
    assert_eq!(again["NetworkInterfaceId"], d.as_str(), "{again}");
    let mut other = d_params.to_vec();
    other[0] = ("VSwitchId", "vsw-h1");
    m.err(
        "CreateNetworkInterface",
        &other,
        400,
        "IdempotentParameterMismatch",
    );
    // Primaries are still there, once.
    let st = m.state();
    let prim = st["enis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "Primary")
        .count();
    assert_eq!(prim, 4, "{st}");
}

#[test]
fn detaching_and_deleting_finish_after_restart() {
    let mut w = default_world();
    w["timing"]["detach_ms"] = json!(1500);
    w["timing"]["delete_ms"] = json!(1500);
    let mut m = Mock::start_with_state(&w);
    let x = m.attached_eni("vsw-h1", "i-node-a", &[]);
    let y = m.create_eni_id("vsw-h4", &[("SecondaryPrivateIpAddressCount", "3")]);
    m.ok(
        "DetachNetworkInterface",
        &[("NetworkInterfaceId", &x), ("InstanceId", "i-node-a")],
    );
    m.ok("DeleteNetworkInterface", &[("NetworkInterfaceId", &y)]);
    assert_eq!(m.eni_status(&x), "Detaching");
    assert_eq!(m.eni_status(&y), "Deleting");
    m.kill9();
    m.restart();
    m.wait_status(&x, "Available", SECS10);
    m.wait_status(&y, "<gone>", SECS10);
    assert_eq!(m.vswitch_available("vsw-h4"), 4);
    assert_eq!(
        m.create_eni("vsw-h4", &[])["PrivateIpAddress"],
        "192.168.4.1"
    );
    // And once more: a clean restart keeps the result.
    m.restart();
    assert_eq!(m.eni_status(&x), "Available");
    assert_eq!(m.eni_status(&y), "<gone>");
    assert_eq!(m.vswitch_available("vsw-h4"), 3);
}

#[test]
fn without_state_a_restart_starts_fresh() {
    let mut m = Mock::start_default();
    let e = m.create_eni_id("vsw-h1", &[]);
    m.restart();
    assert!(m.eni(&e).is_none());
    assert_eq!(m.vswitch_available("vsw-h1"), 249);
}
