//! The admin API at `/_admin/`.

mod common;

use common::*;
use serde_json::json;

#[test]
fn state_shape() {
    let m = Mock::start_default();
    let e = m.attached_eni(
        "vsw-h1",
        "i-node-a",
        &[
            ("Tag.1.Key", "k"),
            ("Tag.1.Value", "v"),
            ("SecondaryPrivateIpAddressCount", "1"),
        ],
    );
    let st = m.state();
    let enis = st["enis"].as_array().unwrap();
    assert_eq!(enis.len(), 5, "{st}");
    let p = enis
        .iter()
        .find(|x| x["id"] == "eni-node-a-primary")
        .unwrap_or_else(|| panic!("{st}"));
    assert_eq!(p["status"], "InUse", "{p}");
    assert_eq!(p["type"], "Primary", "{p}");
    assert_eq!(p["instance"], "i-node-a", "{p}");
    assert_eq!(p["device_index"], 0, "{p}");
    assert_eq!(p["vswitch"], "vsw-h1", "{p}");
    assert_eq!(p["zone"], "cn-hangzhou-h", "{p}");
    assert!(is_mac(s(p, "mac")), "{p}");
    assert_eq!(p["primary_ip"], "192.168.1.10", "{p}");
    assert!(p["private_ips"].is_array(), "{p}");
    assert_eq!(p["prefixes"], json!([]), "{p}");
    assert_eq!(p["tags"], json!({}), "{p}");
    assert_eq!(p["security_groups"], json!(["sg-nodes"]), "{p}");

    let x = enis.iter().find(|x| x["id"] == e.as_str()).unwrap();
    assert_eq!(x["status"], "InUse", "{x}");
    assert_eq!(x["type"], "Secondary", "{x}");
    assert_eq!(x["instance"], "i-node-a", "{x}");
    assert_eq!(x["device_index"], 1, "{x}");
    assert_eq!(x["primary_ip"], "192.168.1.1", "{x}");
    let ips: Vec<&str> = x["private_ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(ips.contains(&"192.168.1.2"), "{x}");
    assert_eq!(x["tags"], json!({"k": "v"}), "{x}");
    assert_eq!(x["mac"], m.eni(&e).unwrap()["MacAddress"], "{x}");

    let vs = st["vswitches"].as_array().unwrap();
    assert_eq!(vs.len(), 4);
    let h2 = vs.iter().find(|v| v["id"] == "vsw-h2").unwrap();
    assert_eq!(h2["zone"], "cn-hangzhou-h");
    assert_eq!(h2["cidr"], "192.168.2.0/28");
    assert_eq!(h2["available"], 12);
    let insts = st["instances"].as_array().unwrap();
    assert_eq!(insts.len(), 4);
    let c = insts.iter().find(|v| v["id"] == "i-node-c").unwrap();
    assert_eq!(c["type"], "ecs.t5.small", "{c}");
    assert_eq!(c["zone"], "cn-hangzhou-h", "{c}");
    assert!(c["netns"].is_null() || c["netns"] == "", "{c}");
    assert_eq!(c["links"], json!({}), "{c}");
}

#[test]
fn calls_are_counted() {
    let m = Mock::start_default();
    let c = m.calls();
    assert_eq!(c["total"], 0, "{c}");
    m.ok("DescribeVSwitches", &[]);
    m.ok("DescribeVSwitches", &[]);
    m.err(
        "CreateNetworkInterface",
        &[("VSwitchId", "vsw-nope"), ("SecurityGroupId", "sg-nodes")],
        404,
        "InvalidVSwitchId.NotFound",
    );
    m.err(
        "CreateNetworkInterface",
        &[("VSwitchId", "vsw-h1")],
        400,
        "MissingParameter",
    );
    m.ok(
        "CreateNetworkInterface",
        &[("VSwitchId", "vsw-h1"), ("SecurityGroupId", "sg-nodes")],
    );
    // Admin and metadata calls are not API calls.
    m.state();
    m.md_ok("i-node-a", "instance-id");
    let c = m.calls();
    assert_eq!(c["total"], 5, "{c}");
    let dv = &c["actions"]["DescribeVSwitches"];
    assert_eq!(
        (&dv["count"], &dv["ok"], &dv["errors"]),
        (&json!(2), &json!(2), &json!({})),
        "{c}"
    );
    let cr = &c["actions"]["CreateNetworkInterface"];
    assert_eq!(cr["count"], 3, "{c}");
    assert_eq!(cr["ok"], 1, "{c}");
    assert_eq!(
        cr["errors"],
        json!({"InvalidVSwitchId.NotFound": 1, "MissingParameter": 1}),
        "{c}"
    );
    assert!(
        c["actions"].get("DescribeInstances").is_none()
            || c["actions"]["DescribeInstances"]["count"] == 0,
        "{c}"
    );
}

#[test]
fn faults_get_and_put() {
    let mut w = default_world();
    w["faults"] = json!({"blackhole": false, "throttle_status": 429, "default": {},
        "actions": {"AssignPrivateIpAddresses": {"per_second": 5, "per_minute": 200, "error_rate": 0.05, "latency_ms": 200}}});
    w["timing"]["attach_ms"] = json!([100, 200]);
    let m = Mock::start(&w);
    let f = m.faults();
    let a = &f["faults"]["actions"]["AssignPrivateIpAddresses"];
    assert_eq!(a["per_second"], 5, "{f}");
    assert_eq!(a["per_minute"], 200, "{f}");
    assert_eq!(a["error_rate"], 0.05, "{f}");
    assert_eq!(a["latency_ms"], 200, "{f}");
    assert_eq!(f["faults"]["throttle_status"], 429, "{f}");
    assert_eq!(f["faults"]["blackhole"], false, "{f}");
    assert_eq!(f["timing"]["attach_ms"], json!([100, 200]), "{f}");
    assert_eq!(f["timing"]["detach_ms"], 50, "{f}");

    // Only timing: faults stay.
    m.set_faults(json!({"timing": {"attach_ms": 10, "detach_ms": 20, "delete_ms": 30, "metadata_lag_ms": 40}}));
    let f = m.faults();
    assert_eq!(f["timing"]["attach_ms"], 10, "{f}");
    assert_eq!(f["timing"]["metadata_lag_ms"], 40, "{f}");
    assert_eq!(
        f["faults"]["actions"]["AssignPrivateIpAddresses"]["per_second"], 5,
        "{f}"
    );
    // Faults replaced wholesale.
    m.set_faults(json!({"faults": {"actions": {"DescribeVSwitches": {"latency_ms": 5}}}}));
    let f = m.faults();
    assert!(
        f["faults"]["actions"]
            .get("AssignPrivateIpAddresses")
            .is_none(),
        "not replaced wholesale: {f}"
    );
    assert_eq!(
        f["faults"]["actions"]["DescribeVSwitches"]["latency_ms"], 5,
        "{f}"
    );
    assert_eq!(f["timing"]["attach_ms"], 10, "{f}");
}

#[test]
fn faults_put_validation() {
    let m = Mock::start_default();
    let before = m.faults();
    let bad = [
        (
            json!({"faults": {"actions": {"DescribeVSwitches": {"error_rate": 2.0}}}}),
            vec!["error_rate"],
        ),
        (
            json!({"faults": {"actions": {"DescribeVSwitches": {"drop_rate": -0.5}}}}),
            vec!["drop_rate"],
        ),
        (
            json!({"faults": {"actions": {"Frobnicate": {}}}}),
            vec!["Frobnicate"],
        ),
        (
            json!({"faults": {"default": {"per_second": 0}}}),
            vec!["default"],
        ),
        (
            json!({"faults": {"throttle_status": 200}}),
            vec!["throttle_status"],
        ),
        (
            json!({"timing": {"attach_failure_rate": 1.5}}),
            vec!["attach_failure_rate"],
        ),
        (
            json!({"instance_types": [{"id": "ecs.g7.large", "eni_quantity": 0, "eni_private_ip_address_quantity": 10}]}),
            vec!["eni_quantity"],
        ),
        // Every problem at once.
        (
            json!({"faults": {"throttle_status": 99, "actions": {"Frobnicate": {}, "DescribeVSwitches": {"error_rate": 7}}}}),
            vec!["throttle_status", "Frobnicate", "error_rate"],
        ),
    ];
    for (body, words) in bad {
        let (st, text) = m.put_faults(&body);
        assert_eq!(st, 400, "{body} -> {st} {text}");
        for w in words {
            assert!(
                text.contains(w),
                "the problem with {w} is not named for {body}: {text}"
            );
        }
    }
    // Not JSON / wrong types.
    let r = m
        .http(
            "PUT",
            "/_admin/faults",
            &pairs(&[("Content-Type", "application/json")]),
            b"{nope",
            DEFAULT_TIMEOUT,
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    let (st, text) = m.put_faults(&json!({"faults": {"blackhole": "yes"}}));
    assert_eq!(st, 400, "{text}");
    // Nothing changed.
    assert_eq!(m.faults(), before);
}

#[test]
fn instance_types_replaced_at_run_time() {
    let m = Mock::start_default();
    m.set_faults(json!({"instance_types": [
        {"id": "ecs.g7.large", "eni_quantity": 2, "eni_private_ip_address_quantity": 4, "eni_ipv6_address_quantity": 1, "prefix_support": false},
        {"id": "ecs.t5.small", "eni_quantity": 2, "eni_private_ip_address_quantity": 3}
    ]}));
    let v = m.ok(
        "DescribeInstanceTypes",
        &[("InstanceTypes.1", "ecs.g7.large")],
    );
    let t = &v["InstanceTypes"]["InstanceType"][0];
    assert_eq!(t["EniQuantity"], 2, "{v}");
    assert_eq!(t["EniPrivateIpAddressQuantity"], 4, "{v}");
    let e = m.attached_eni(
        "vsw-h1",
        "i-node-a",
        &[("SecondaryPrivateIpAddressCount", "3")],
    );
    let e2 = m.create_eni_id("vsw-h1", &[]);
    m.err(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &e2), ("InstanceId", "i-node-a")],
        403,
        "EniPerInstanceLimitExceeded",
    );
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("SecondaryPrivateIpAddressCount", "1"),
        ],
        403,
        "InvalidOperation.Ipv4CountExceeded",
    );
    m.err(
        "AssignPrivateIpAddresses",
        &[("NetworkInterfaceId", &e), ("Ipv4PrefixCount", "1")],
        400,
        "InvalidOperation.Ipv4PrefixNotSupported",
    );
    // A type instances use cannot be dropped (validated like the world file).
    let (st, text) = m.put_faults(&json!({"instance_types": [
        {"id": "ecs.g7.large", "eni_quantity": 3, "eni_private_ip_address_quantity": 10}
    ]}));
    assert_eq!(
        st, 400,
        "dropping ecs.t5.small, used by i-node-c, was accepted: {text}"
    );
}

#[test]
fn reset_goes_back_to_the_world() {
    let mut w = default_world();
    w["faults"]["actions"] = json!({"DescribeInstances": {"latency_ms": 1}});
    let m = Mock::start(&w);
    let before_faults = m.faults();
    let token_params = [
        ("VSwitchId", "vsw-h1"),
        ("SecurityGroupId", "sg-nodes"),
        ("ClientToken", "tok-reset"),
    ];
    let first = m.ok("CreateNetworkInterface", &token_params);
    let e = m.attached_eni(
        "vsw-h1",
        "i-node-a",
        &[("SecondaryPrivateIpAddressCount", "3")],
    );
    m.ok(
        "AssignPrivateIpAddresses",
        &[("NetworkInterfaceId", &e), ("Ipv4PrefixCount", "1")],
    );
    m.ok(
        "TagResources",
        &[
            ("ResourceType", "eni"),
            ("ResourceId.1", "eni-node-a-primary"),
            ("Tag.1.Key", "a"),
            ("Tag.1.Value", "b"),
        ],
    );
    // A nonce used before the reset.
    let n = nonce();
    let mut p = m.v1_params(
        &Cred::test(),
        "DescribeVSwitches",
        "2014-05-26",
        &[("SignatureNonce", &n)],
    );
    sign_v1("testsecret", "POST", &mut p);
    assert_eq!(
        m.send_v1("POST", false, &p, DEFAULT_TIMEOUT)
            .unwrap()
            .status,
        200
    );
    m.set_faults(json!({"faults": {"blackhole": false, "default": {"latency_ms": 1}, "actions": {}}, "timing": {"attach_ms": 999}}));

    m.reset();

    let st = m.state();
    let ids: Vec<&str> = st["enis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| s(x, "id"))
        .collect();
    assert_eq!(ids.len(), 4, "{st}");
    assert!(ids.contains(&"eni-node-a-primary"));
    let pa = st["enis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "eni-node-a-primary")
        .unwrap();
    assert_eq!(pa["tags"], json!({}), "{pa}");
    let h1 = st["vswitches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "vsw-h1")
        .unwrap();
    assert_eq!(h1["available"], 249, "{h1}");
    assert_eq!(m.faults(), before_faults);
    m.err(
        "DescribeNetworkInterfaceAttribute",
        &[("NetworkInterfaceId", &e)],
        404,
        "InvalidEniId.NotFound",
    );
    // Nonces forgotten.
    let mut p2 = m.v1_params(
        &Cred::test(),
        "DescribeVSwitches",
        "2014-05-26",
        &[("SignatureNonce", &n)],
    );
    sign_v1("testsecret", "POST", &mut p2);
    let r = m.send_v1("POST", false, &p2, DEFAULT_TIMEOUT).unwrap();
    assert_eq!(r.status, 200, "nonce remembered across reset: {}", r.text());
    // Idempotency records forgotten: the token creates anew, addresses start over.
    let again = m.ok(
        "CreateNetworkInterface",
        &[
            ("VSwitchId", "vsw-h1"),
            ("SecurityGroupId", "sg-nodes"),
            ("ClientToken", "tok-reset"),
            ("Description", "other"),
        ],
    );
    assert_eq!(again["PrivateIpAddress"], "192.168.1.1", "{again}");
    assert_eq!(first["PrivateIpAddress"], "192.168.1.1");
}

#[test]
fn admin_needs_no_signature_and_unknown_paths_404() {
    let m = Mock::start_default();
    let r = m.get("/_admin/state", &[]);
    assert_eq!(r.status, 200);
    let r = m.get("/_admin/nope", &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    let (st, _) = m.admin(
        "POST",
        "/_admin/bind",
        Some(&json!({"instance": "i-nope", "netns": "x"})),
    );
    assert!(
        (400..500).contains(&st),
        "binding an unknown instance: {st}"
    );
}
