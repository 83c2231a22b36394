//! The ECS API at `/`: actions, shapes, errors, limits, idempotency, paging.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SECS10: Duration = Duration::from_secs(10);

fn assigned_ips(v: &Value) -> Vec<String> {
    arr(
        v,
        &[
            "AssignedPrivateIpAddressesSet",
            "PrivateIpSet",
            "PrivateIpAddress",
        ],
    )
    .iter()
    .map(|x| x.as_str().unwrap().to_string())
    .collect()
}

fn assigned_prefixes(v: &Value) -> Vec<String> {
    arr(
        v,
        &[
            "AssignedPrivateIpAddressesSet",
            "Ipv4PrefixSet",
            "Ipv4Prefixes",
        ],
    )
    .iter()
    .map(|x| x.as_str().unwrap().to_string())
    .collect()
}

fn ids_of(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|e| s(e, "NetworkInterfaceId").to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Pages through DescribeNetworkInterfaces; answers (items, TotalCount of the first page, page sizes).
fn describe_all(
    m: &Mock,
    filters: &[(&str, &str)],
    max: Option<&str>,
) -> (Vec<Value>, u64, Vec<usize>) {
    let mut items = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    let mut total = None;
    for _ in 0..100 {
        let mut p: Vec<(&str, &str)> = filters.to_vec();
        if let Some(mx) = max {
            p.push(("MaxResults", mx));
        }
        if !token.is_empty() {
            p.push(("NextToken", &token));
        }
        let v = m.ok("DescribeNetworkInterfaces", &p);
        let page = arr(&v, &["NetworkInterfaceSets", "NetworkInterfaceSet"]).clone();
        let t = v["TotalCount"]
            .as_u64()
            .unwrap_or_else(|| panic!("TotalCount: {v}"));
        if total.is_none() {
            total = Some(t);
        }
        assert_eq!(Some(t), total, "TotalCount changed between pages: {v}");
        sizes.push(page.len());
        items.extend(page);
        let next = v["NextToken"]
            .as_str()
            .unwrap_or_else(|| panic!("NextToken not a string: {v}"));
        if next.is_empty() {
            return (items, total.unwrap(), sizes);
        }
        token = next.to_string();
    }
    panic!("more than 100 pages");
}

// ------------------------------------------------------------------------------------------
// CreateNetworkInterface / DescribeNetworkInterfaceAttribute shapes
// ------------------------------------------------------------------------------------------

#[test]
fn create_network_interface_shape() {
    let m = Mock::start_default();
    let v = m.ok(
        "CreateNetworkInterface",
        &[
            ("VSwitchId", "vsw-h1"),
            ("SecurityGroupId", "sg-nodes"),
            ("Description", "my eni"),
            ("NetworkInterfaceName", "eni-name"),
            ("Tag.1.Key", "owner"),
            ("Tag.1.Value", "a b*~"),
        ],
    );
    assert!(!s(&v, "RequestId").is_empty());
    let id = s(&v, "NetworkInterfaceId").to_string();
    assert!(id.starts_with("eni-"), "{v}");
    assert_eq!(v["Status"], "Available", "{v}");
    assert_eq!(v["Type"], "Secondary", "{v}");
    assert_eq!(v["VpcId"], "vpc-mock", "{v}");
    assert_eq!(v["VSwitchId"], "vsw-h1", "{v}");
    assert_eq!(v["ZoneId"], "cn-hangzhou-h", "{v}");
    assert!(is_mac(s(&v, "MacAddress")), "{v}");
    // Lowest free address of vsw-h1 (.10-.12 are the instances').
    assert_eq!(v["PrivateIpAddress"], "192.168.1.1", "{v}");
    assert_eq!(
        v["SecurityGroupIds"],
        json!({"SecurityGroupId": ["sg-nodes"]}),
        "{v}"
    );
    assert_eq!(
        v["PrivateIpSets"],
        json!({"PrivateIpSet": [{"PrivateIpAddress": "192.168.1.1", "Primary": true}]}),
        "{v}"
    );
    assert_eq!(
        arr(&v, &["Ipv4PrefixSets", "Ipv4PrefixSet"]).len(),
        0,
        "{v}"
    );
    assert_eq!(
        v["Tags"],
        json!({"Tag": [{"TagKey": "owner", "TagValue": "a b*~"}]}),
        "{v}"
    );

    let d = m.eni(&id).unwrap();
    assert!(!s(&d, "RequestId").is_empty());
    assert_ne!(d["RequestId"], v["RequestId"]);
    for k in [
        "NetworkInterfaceId",
        "Status",
        "Type",
        "VpcId",
        "VSwitchId",
        "ZoneId",
        "MacAddress",
        "PrivateIpAddress",
        "SecurityGroupIds",
        "PrivateIpSets",
        "Tags",
    ] {
        assert_eq!(d[k], v[k], "{k}: describe {d} vs create {v}");
    }
    assert_eq!(
        arr(&d, &["Ipv4PrefixSets", "Ipv4PrefixSet"]).len(),
        0,
        "{d}"
    );
    assert_eq!(d["Description"], "my eni", "{d}");
    assert_eq!(d["NetworkInterfaceName"], "eni-name", "{d}");
    assert_eq!(d["InstanceId"], "", "{d}");
    assert!(!s(&d, "CreationTime").is_empty(), "{d}");
    assert!(
        d.get("Attachment").is_none() || d["Attachment"].is_null(),
        "a detached ENI has no Attachment: {d}"
    );

    // A second ENI gets another MAC and the next address.
    let w = m.create_eni("vsw-h1", &[]);
    assert_ne!(w["MacAddress"], v["MacAddress"]);
    assert_ne!(w["NetworkInterfaceId"], v["NetworkInterfaceId"]);
    assert_eq!(w["PrivateIpAddress"], "192.168.1.2", "{w}");
    assert_eq!(arr(&w, &["Tags", "Tag"]).len(), 0, "{w}");
}

#[test]
fn create_with_security_group_ids_and_secondary_count() {
    let m = Mock::start_default();
    let v = m.ok(
        "CreateNetworkInterface",
        &[
            ("VSwitchId", "vsw-h1"),
            ("SecurityGroupIds.1", "sg-nodes"),
            ("SecurityGroupIds.2", "sg-other"),
            ("SecondaryPrivateIpAddressCount", "3"),
        ],
    );
    let sgs: BTreeSet<&str> = arr(&v, &["SecurityGroupIds", "SecurityGroupId"])
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(sgs, BTreeSet::from(["sg-nodes", "sg-other"]), "{v}");
    let ips = eni_ips(&v);
    assert_eq!(ips.len(), 4, "{v}");
    assert_eq!(v["PrivateIpAddress"], "192.168.1.1");
    let mut got: Vec<(String, bool)> = ips;
    got.sort();
    assert_eq!(
        got,
        vec![
            ("192.168.1.1".to_string(), true),
            ("192.168.1.2".to_string(), false),
            ("192.168.1.3".to_string(), false),
            ("192.168.1.4".to_string(), false),
        ]
    );
}

#[test]
fn create_with_explicit_addresses() {
    let m = Mock::start_default();
    let v = m.create_eni(
        "vsw-h1",
        &[
            ("PrimaryIpAddress", "192.168.1.100"),
            ("PrivateIpAddress.1", "192.168.1.101"),
            ("PrivateIpAddress.2", "192.168.1.102"),
        ],
    );
    assert_eq!(v["PrivateIpAddress"], "192.168.1.100", "{v}");
    let mut ips = eni_ips(&v);
    ips.sort();
    assert_eq!(
        ips,
        vec![
            ("192.168.1.100".to_string(), true),
            ("192.168.1.101".to_string(), false),
            ("192.168.1.102".to_string(), false),
        ]
    );
    // Already used addresses: an instance's primary IP, an ENI's primary and secondary.
    for (k, ip) in [
        ("PrimaryIpAddress", "192.168.1.10"),
        ("PrimaryIpAddress", "192.168.1.100"),
        ("PrimaryIpAddress", "192.168.1.101"),
    ] {
        m.err(
            "CreateNetworkInterface",
            &[
                ("VSwitchId", "vsw-h1"),
                ("SecurityGroupId", "sg-nodes"),
                (k, ip),
            ],
            403,
            "InvalidIp.IpAssigned",
        );
    }
    m.err(
        "CreateNetworkInterface",
        &[
            ("VSwitchId", "vsw-h1"),
            ("SecurityGroupId", "sg-nodes"),
            ("PrivateIpAddress.1", "192.168.1.102"),
        ],
        403,
        "InvalidIp.IpAssigned",
    );
    // The gateway / reserved addresses are not assignable (some 4xx).
    for ip in [
        "192.168.1.253",
        "192.168.1.0",
        "192.168.1.255",
        "192.168.9.9",
    ] {
        let (st, e) = m.call(
            "CreateNetworkInterface",
            &[
                ("VSwitchId", "vsw-h1"),
                ("SecurityGroupId", "sg-nodes"),
                ("PrimaryIpAddress", ip),
            ],
        );
        assert!(
            (400..500).contains(&st),
            "PrimaryIpAddress {ip} accepted: {e}"
        );
    }
    // Failed creates took nothing: the next automatic address is still .1.
    let w = m.create_eni("vsw-h1", &[]);
    assert_eq!(w["PrivateIpAddress"], "192.168.1.1", "{w}");
    assert_eq!(m.state()["enis"].as_array().unwrap().len(), 4 + 2);
}

#[test]
fn create_validation_errors() {
    let m = Mock::start_default();
    let base = [("VSwitchId", "vsw-h1"), ("SecurityGroupId", "sg-nodes")];
    fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = vec![("VSwitchId", "vsw-h1"), ("SecurityGroupId", "sg-nodes")];
        v.extend_from_slice(extra);
        v
    }
    let e = m.err(
        "CreateNetworkInterface",
        &[("SecurityGroupId", "sg-nodes")],
        400,
        "MissingParameter",
    );
    assert!(s(&e, "Message").contains("VSwitchId"), "{e}");
    let e = m.err(
        "CreateNetworkInterface",
        &[("VSwitchId", "vsw-h1")],
        400,
        "MissingParameter",
    );
    assert!(s(&e, "Message").contains("SecurityGroupId"), "{e}");
    m.err(
        "CreateNetworkInterface",
        &[("VSwitchId", "vsw-nope"), ("SecurityGroupId", "sg-nodes")],
        404,
        "InvalidVSwitchId.NotFound",
    );
    m.err(
        "CreateNetworkInterface",
        &[("VSwitchId", "vsw-h1"), ("SecurityGroupId", "sg-nope")],
        404,
        "InvalidSecurityGroupId.NotFound",
    );
    m.err(
        "CreateNetworkInterface",
        &[
            ("VSwitchId", "vsw-h1"),
            ("SecurityGroupIds.1", "sg-nodes"),
            ("SecurityGroupIds.2", "sg-nope"),
        ],
        404,
        "InvalidSecurityGroupId.NotFound",
    );
    for bad in ["0", "50", "abc", "-1"] {
        let e = m.err(
            "CreateNetworkInterface",
            &with(&[("SecondaryPrivateIpAddressCount", bad)]),
            400,
            "InvalidParameter",
        );
        assert!(
            s(&e, "Message").contains("SecondaryPrivateIpAddressCount"),
            "{e}"
        );
    }
    for bad in ["0", "11", "x"] {
        let e = m.err(
            "CreateNetworkInterface",
            &with(&[("Ipv4PrefixCount", bad)]),
            400,
            "InvalidParameter",
        );
        assert!(s(&e, "Message").contains("Ipv4PrefixCount"), "{e}");
    }
    // Secondary IPs and prefixes cannot be mixed.
    m.err(
        "CreateNetworkInterface",
        &with(&[
            ("SecondaryPrivateIpAddressCount", "1"),
            ("Ipv4PrefixCount", "1"),
        ]),
        400,
        "InvalidParameter",
    );
    m.err(
        "CreateNetworkInterface",
        &with(&[
            ("PrivateIpAddress.1", "192.168.1.50"),
            ("Ipv4PrefixCount", "1"),
        ]),
        400,
        "InvalidParameter",
    );
    // Malformed address.
    m.err(
        "CreateNetworkInterface",
        &with(&[("PrimaryIpAddress", "192.168.1.999")]),
        400,
        "InvalidParameter",
    );
    // 21 tags.
    let keys: Vec<(String, String)> = (1..=21)
        .flat_map(|i| {
            [
                (format!("Tag.{i}.Key"), format!("k{i}")),
                (format!("Tag.{i}.Value"), format!("v{i}")),
            ]
        })
        .collect();
    let mut p: Vec<(&str, &str)> = base.to_vec();
    p.extend(keys.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    m.err("CreateNetworkInterface", &p, 400, "InvalidParameter");
    // 20 tags are fine.
    let p20: Vec<(&str, &str)> = p[..2 + 40].to_vec();
    let v = m.ok("CreateNetworkInterface", &p20);
    assert_eq!(arr(&v, &["Tags", "Tag"]).len(), 20, "{v}");
    // ClientToken longer than 64.
    let long = "t".repeat(65);
    m.err(
        "CreateNetworkInterface",
        &with(&[("ClientToken", &long)]),
        400,
        "InvalidParameter",
    );
    // Region.
    let (st, e) = m.call(
        "CreateNetworkInterface",
        &with(&[("RegionId", "cn-beijing")]),
    );
    assert_eq!(e["Code"], "InvalidRegionId.NotFound", "{e}");
    assert!((400..500).contains(&st), "{st} {e}");
    // Nothing was created but the 20-tag ENI.
    assert_eq!(m.state()["enis"].as_array().unwrap().len(), 4 + 1);
}

#[test]
fn format_xml_refused() {
    let m = Mock::start_default();
    let e = m.err(
        "DescribeInstanceTypes",
        &[("Format", "XML")],
        400,
        "InvalidParameter",
    );
    assert!(s(&e, "Message").contains("Format"), "{e}");
}

// ------------------------------------------------------------------------------------------
// Lifecycle and timing
// ------------------------------------------------------------------------------------------

#[test]
fn eni_lifecycle_with_delays() {
    let world = default_world();
    let world = with_timing(world, "attach_ms", json!(400));
    let world = with_timing(world, "detach_ms", json!(400));
    let world = with_timing(world, "delete_ms", json!(400));
    let m = Mock::start(&world);
    let id = m.create_eni_id("vsw-h1", &[]);

    let t0 = Instant::now();
    m.ok(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &id), ("InstanceId", "i-node-a")],
    );
    assert_eq!(m.eni_status(&id), "Attaching");
    let took = m.wait_status(&id, "InUse", SECS10) + Duration::ZERO;
    let took = took.max(t0.elapsed());
    assert!(
        took >= Duration::from_millis(330),
        "InUse after only {took:?} (attach_ms 400)"
    );
    assert!(
        took <= Duration::from_millis(2500),
        "InUse after {took:?} (attach_ms 400)"
    );
    let d = m.eni(&id).unwrap();
    assert_eq!(d["InstanceId"], "i-node-a", "{d}");
    assert_eq!(d["Attachment"]["InstanceId"], "i-node-a", "{d}");
    assert_eq!(d["Attachment"]["DeviceIndex"], 1, "{d}");

    let t0 = Instant::now();
    m.ok(
        "DetachNetworkInterface",
        &[("NetworkInterfaceId", &id), ("InstanceId", "i-node-a")],
    );
    assert_eq!(m.eni_status(&id), "Detaching");
    m.wait_status(&id, "Available", SECS10);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(330),
        "Available after only {took:?} (detach_ms 400)"
    );
    assert!(took <= Duration::from_millis(2500), "{took:?}");
    let d = m.eni(&id).unwrap();
    assert_eq!(d["InstanceId"], "", "{d}");
    assert!(
        d.get("Attachment").is_none() || d["Attachment"].is_null(),
        "{d}"
    );

    let t0 = Instant::now();
    m.ok("DeleteNetworkInterface", &[("NetworkInterfaceId", &id)]);
    assert_eq!(m.eni_status(&id), "Deleting");
    // Again while Deleting: accepted.
    m.ok("DeleteNetworkInterface", &[("NetworkInterfaceId", &id)]);
    m.wait_status(&id, "<gone>", SECS10);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(330),
        "gone after only {took:?} (delete_ms 400)"
    );
    assert!(took <= Duration::from_millis(2500), "{took:?}");
    m.err(
        "DescribeNetworkInterfaceAttribute",
        &[("NetworkInterfaceId", &id)],
        404,
        "InvalidEniId.NotFound",
    );
    m.err(
        "DeleteNetworkInterface",
        &[("NetworkInterfaceId", &id)],
        404,
        "InvalidEniId.NotFound",
    );
    assert!(m.state_eni(&id).is_none());
    // Its address is free again.
    assert_eq!(
        m.create_eni("vsw-h1", &[])["PrivateIpAddress"],
        "192.168.1.1"
    );
}

#[test]
fn attach_delay_range() {
    let m = Mock::start(&with_timing(
        default_world(),
        "attach_ms",
        json!([200, 400]),
    ));
    let id = m.create_eni_id("vsw-h1", &[]);
    let t0 = Instant::now();
    m.ok(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &id), ("InstanceId", "i-node-a")],
    );
    m.wait_status(&id, "InUse", SECS10);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(170), "{took:?}");
    assert!(took <= Duration::from_millis(2000), "{took:?}");
}

#[test]
fn device_indexes() {
    let m = Mock::start_default();
    let e1 = m.attached_eni("vsw-h1", "i-node-a", &[]);
    let e2 = m.attached_eni("vsw-h1", "i-node-a", &[]);
    assert_eq!(m.eni(&e1).unwrap()["Attachment"]["DeviceIndex"], 1);
    assert_eq!(m.eni(&e2).unwrap()["Attachment"]["DeviceIndex"], 2);
    m.ok(
        "DetachNetworkInterface",
        &[("NetworkInterfaceId", &e1), ("InstanceId", "i-node-a")],
    );
    m.wait_status(&e1, "Available", SECS10);
    let e3 = m.attached_eni("vsw-h1", "i-node-a", &[]);
    assert_eq!(
        m.eni(&e3).unwrap()["Attachment"]["DeviceIndex"],
        1,
        "next free device index"
    );
    // The primary ENI is device 0 in /_admin/state.
    let p = m.state_eni("eni-node-a-primary").unwrap();
    assert_eq!(p["device_index"], 0, "{p}");
    let st = m.state_eni(&e3).unwrap();
    assert_eq!(st["device_index"], 1, "{st}");
    assert_eq!(st["instance"], "i-node-a", "{st}");
}

#[test]
fn invalid_state_and_mismatch_errors() {
    let m = Mock::start(&with_timing(default_world(), "attach_ms", json!(600)));
    let e = m.create_eni_id("vsw-h1", &[]);
    let other = m.create_eni_id("vsw-h1", &[]);
    m.ok(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &e), ("InstanceId", "i-node-a")],
    );
    // While Attaching.
    let v = m.err(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &e), ("InstanceId", "i-node-a")],
        400,
        "InvalidOperation.InvalidEniState",
    );
    assert!(
        s(&v, "Message").contains("current status is Attaching"),
        "{v}"
    );
    m.err(
        "DeleteNetworkInterface",
        &[("NetworkInterfaceId", &e)],
        400,
        "InvalidOperation.InvalidEniState",
    );
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("SecondaryPrivateIpAddressCount", "1"),
        ],
        400,
        "InvalidOperation.InvalidEniState",
    );
    m.err(
        "DetachNetworkInterface",
        &[("NetworkInterfaceId", &e), ("InstanceId", "i-node-a")],
        400,
        "InvalidOperation.InvalidEniState",
    );
    m.wait_status(&e, "InUse", SECS10);
    // InUse: cannot delete, cannot attach again.
    let v = m.err(
        "DeleteNetworkInterface",
        &[("NetworkInterfaceId", &e)],
        400,
        "InvalidOperation.InvalidEniState",
    );
    let msg = s(&v, "Message");
    assert!(
        msg.contains("Expecting status is Available") && msg.contains("current status is InUse"),
        "{v}"
    );
    m.err(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &e), ("InstanceId", "i-node-b")],
        400,
        "InvalidOperation.InvalidEniState",
    );
    // Available: cannot detach.
    let v = m.err(
        "DetachNetworkInterface",
        &[("NetworkInterfaceId", &other), ("InstanceId", "i-node-a")],
        400,
        "InvalidOperation.InvalidEniState",
    );
    assert!(
        s(&v, "Message").contains("current status is Available"),
        "{v}"
    );
    // Primary ENI.
    m.err(
        "DetachNetworkInterface",
        &[
            ("NetworkInterfaceId", "eni-node-a-primary"),
            ("InstanceId", "i-node-a"),
        ],
        400,
        "InvalidOperation.DetachPrimaryEniNotAllowed",
    );
    // Zone: vsw-h1 is in zone h, i-node-i in zone i.
    m.err(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &other), ("InstanceId", "i-node-i")],
        400,
        "InvalidOperation.EniZoneMismatch",
    );
    assert_eq!(m.eni_status(&other), "Available");
    // Detach from an instance it is not attached to.
    m.err(
        "DetachNetworkInterface",
        &[("NetworkInterfaceId", &e), ("InstanceId", "i-node-b")],
        400,
        "InvalidOperation.EniInstanceMismatch",
    );
    assert_eq!(m.eni_status(&e), "InUse");
    // Unknown instance.
    m.err(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &other), ("InstanceId", "i-nope")],
        404,
        "InvalidEcsId.NotFound",
    );
    // Unknown ENI, every action.
    let nf = "eni-doesnotexist";
    m.err(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", nf), ("InstanceId", "i-node-a")],
        404,
        "InvalidEniId.NotFound",
    );
    m.err(
        "DetachNetworkInterface",
        &[("NetworkInterfaceId", nf), ("InstanceId", "i-node-a")],
        404,
        "InvalidEniId.NotFound",
    );
    m.err(
        "DeleteNetworkInterface",
        &[("NetworkInterfaceId", nf)],
        404,
        "InvalidEniId.NotFound",
    );
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", nf),
            ("SecondaryPrivateIpAddressCount", "1"),
        ],
        404,
        "InvalidEniId.NotFound",
    );
    m.err(
        "UnassignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", nf),
            ("PrivateIpAddress.1", "192.168.1.1"),
        ],
        404,
        "InvalidEniId.NotFound",
    );
    m.err(
        "DescribeNetworkInterfaceAttribute",
        &[("NetworkInterfaceId", nf)],
        404,
        "InvalidEniId.NotFound",
    );
    // Missing parameters.
    for (action, params) in [
        ("AttachNetworkInterface", vec![("InstanceId", "i-node-a")]),
        (
            "AttachNetworkInterface",
            vec![("NetworkInterfaceId", other.as_str())],
        ),
        ("DetachNetworkInterface", vec![("InstanceId", "i-node-a")]),
        (
            "DetachNetworkInterface",
            vec![("NetworkInterfaceId", e.as_str())],
        ),
        ("DeleteNetworkInterface", vec![]),
        (
            "AssignPrivateIpAddresses",
            vec![("SecondaryPrivateIpAddressCount", "1")],
        ),
        (
            "UnassignPrivateIpAddresses",
            vec![("PrivateIpAddress.1", "192.168.1.1")],
        ),
        ("DescribeNetworkInterfaceAttribute", vec![]),
    ] {
        m.err(action, &params, 400, "MissingParameter");
    }
    assert_eq!(m.eni_status(&e), "InUse");
    assert_eq!(m.eni_status(&other), "Available");
}

#[test]
fn detach_again_restarts_the_wait() {
    let m = Mock::start(&with_timing(default_world(), "detach_ms", json!(800)));
    let e = m.attached_eni("vsw-h1", "i-node-a", &[]);
    let t0 = Instant::now();
    m.ok(
        "DetachNetworkInterface",
        &[("NetworkInterfaceId", &e), ("InstanceId", "i-node-a")],
    );
    sleep_ms(500);
    assert_eq!(m.eni_status(&e), "Detaching");
    m.ok(
        "DetachNetworkInterface",
        &[("NetworkInterfaceId", &e), ("InstanceId", "i-node-a")],
    );
    let t1 = Instant::now();
    // The first wait would end at 800 ms; the restarted one at ~1300 ms.
    let until = Duration::from_millis(1050);
    while t0.elapsed() < until {
        assert_eq!(
            m.eni_status(&e),
            "Detaching",
            "at {:?}: the second detach did not restart the wait",
            t0.elapsed()
        );
        sleep_ms(30);
    }
    m.wait_status(&e, "Available", SECS10);
    assert!(
        t1.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t1.elapsed()
    );
}

#[test]
fn attach_failure_rate_one_falls_back_to_available() {
    let world = with_timing(default_world(), "attach_failure_rate", json!(1.0));
    let world = with_timing(world, "attach_ms", json!(200));
    let m = Mock::start(&world);
    let e = m.create_eni_id("vsw-h1", &[]);
    m.ok(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &e), ("InstanceId", "i-node-a")],
    );
    assert_eq!(m.eni_status(&e), "Attaching");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1200) {
        let st = m.eni_status(&e);
        assert_ne!(
            st, "InUse",
            "attach_failure_rate 1.0 but the ENI became InUse"
        );
        if st == "Available" {
            break;
        }
        sleep_ms(20);
    }
    let d = m.eni(&e).unwrap();
    assert_eq!(d["Status"], "Available", "{d}");
    assert_eq!(d["InstanceId"], "", "{d}");
}

// ------------------------------------------------------------------------------------------
// Limits
// ------------------------------------------------------------------------------------------

#[test]
fn eni_per_instance_limit_counts_attaching() {
    let m = Mock::start(&with_timing(default_world(), "attach_ms", json!(800)));
    let a: Vec<String> = (0..3).map(|_| m.create_eni_id("vsw-h1", &[])).collect();
    m.ok(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &a[0]), ("InstanceId", "i-node-a")],
    );
    m.ok(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &a[1]), ("InstanceId", "i-node-a")],
    );
    assert_eq!(m.eni_status(&a[1]), "Attaching");
    // Primary + 2 attaching = eni_quantity 3.
    m.err(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &a[2]), ("InstanceId", "i-node-a")],
        403,
        "EniPerInstanceLimitExceeded",
    );
    assert_eq!(m.eni_status(&a[2]), "Available");
    m.wait_status(&a[0], "InUse", SECS10);
    m.wait_status(&a[1], "InUse", SECS10);
    m.err(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &a[2]), ("InstanceId", "i-node-a")],
        403,
        "EniPerInstanceLimitExceeded",
    );
    // Another instance is not affected.
    m.ok(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &a[2]), ("InstanceId", "i-node-b")],
    );
}

#[test]
fn eni_per_instance_limit_small_type_and_after_detach() {
    let m = Mock::start_default();
    // ecs.t5.small: 2 ENIs, the primary included.
    let x = m.attached_eni("vsw-h1", "i-node-c", &[]);
    let y = m.create_eni_id("vsw-h1", &[]);
    m.err(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &y), ("InstanceId", "i-node-c")],
        403,
        "EniPerInstanceLimitExceeded",
    );
    m.ok(
        "DetachNetworkInterface",
        &[("NetworkInterfaceId", &x), ("InstanceId", "i-node-c")],
    );
    m.wait_status(&x, "Available", SECS10);
    m.attach(&y, "i-node-c");
}

#[test]
fn ips_per_eni_limit() {
    let m = Mock::start_default();
    // 10 addresses, the primary included.
    let full = m.attached_eni(
        "vsw-h1",
        "i-node-a",
        &[("SecondaryPrivateIpAddressCount", "9")],
    );
    assert_eq!(eni_ips(&m.eni(&full).unwrap()).len(), 10);
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &full),
            ("SecondaryPrivateIpAddressCount", "1"),
        ],
        403,
        "InvalidOperation.Ipv4CountExceeded",
    );
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &full),
            ("PrivateIpAddress.1", "192.168.1.200"),
        ],
        403,
        "InvalidOperation.Ipv4CountExceeded",
    );
    let seven = m.attached_eni(
        "vsw-h1",
        "i-node-a",
        &[("SecondaryPrivateIpAddressCount", "6")],
    );
    let before = m.vswitch_available("vsw-h1");
    // 7 + 5 > 10: all or nothing.
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &seven),
            ("SecondaryPrivateIpAddressCount", "5"),
        ],
        403,
        "InvalidOperation.Ipv4CountExceeded",
    );
    assert_eq!(eni_ips(&m.eni(&seven).unwrap()).len(), 7);
    assert_eq!(m.vswitch_available("vsw-h1"), before);
    let v = m.ok(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &seven),
            ("SecondaryPrivateIpAddressCount", "3"),
        ],
    );
    assert_eq!(assigned_ips(&v).len(), 3, "{v}");
    assert_eq!(eni_ips(&m.eni(&seven).unwrap()).len(), 10);
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &seven),
            ("SecondaryPrivateIpAddressCount", "1"),
        ],
        403,
        "InvalidOperation.Ipv4CountExceeded",
    );
}

#[test]
fn attach_refused_when_eni_holds_too_many_addresses() {
    let m = Mock::start_default();
    // 11 addresses > 10 of ecs.g7.large.
    let big = m.create_eni_id("vsw-h1", &[("SecondaryPrivateIpAddressCount", "10")]);
    m.err(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &big), ("InstanceId", "i-node-a")],
        403,
        "InvalidOperation.Ipv4CountExceeded",
    );
    assert_eq!(m.eni_status(&big), "Available");
    // ecs.t5.small: 3 addresses per ENI.
    let four = m.create_eni_id("vsw-h1", &[("SecondaryPrivateIpAddressCount", "3")]);
    m.err(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &four), ("InstanceId", "i-node-c")],
        403,
        "InvalidOperation.Ipv4CountExceeded",
    );
    let three = m.attached_eni(
        "vsw-h1",
        "i-node-c",
        &[("SecondaryPrivateIpAddressCount", "2")],
    );
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &three),
            ("SecondaryPrivateIpAddressCount", "1"),
        ],
        403,
        "InvalidOperation.Ipv4CountExceeded",
    );
}

#[test]
fn prefix_takes_one_slot() {
    let m = Mock::start_default();
    let e = m.attached_eni(
        "vsw-h1",
        "i-node-a",
        &[("SecondaryPrivateIpAddressCount", "8")],
    );
    let v = m.ok(
        "AssignPrivateIpAddresses",
        &[("NetworkInterfaceId", &e), ("Ipv4PrefixCount", "1")],
    );
    assert_eq!(assigned_prefixes(&v).len(), 1, "{v}");
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
        403,
        "InvalidOperation.Ipv4CountExceeded",
    );
}

#[test]
fn vswitch_runs_out_29() {
    let m = Mock::start_default();
    assert_eq!(m.vswitch_available("vsw-h4"), 4);
    let a = m.create_eni("vsw-h4", &[("SecondaryPrivateIpAddressCount", "3")]);
    assert_eq!(
        eni_ip_list(&a),
        vec!["192.168.4.1", "192.168.4.2", "192.168.4.3", "192.168.4.4"],
        "{a}"
    );
    assert_eq!(m.vswitch_available("vsw-h4"), 0);
    m.err(
        "CreateNetworkInterface",
        &[("VSwitchId", "vsw-h4"), ("SecurityGroupId", "sg-nodes")],
        403,
        "InvalidVSwitchId.IpNotEnough",
    );
    let a_id = s(&a, "NetworkInterfaceId").to_string();
    m.ok("DeleteNetworkInterface", &[("NetworkInterfaceId", &a_id)]);
    m.wait_status(&a_id, "<gone>", SECS10);
    assert_eq!(m.vswitch_available("vsw-h4"), 4);
    // Freed addresses are handed out again, lowest first.
    let b = m.create_eni("vsw-h4", &[]);
    assert_eq!(b["PrivateIpAddress"], "192.168.4.1", "{b}");
    let b_id = s(&b, "NetworkInterfaceId").to_string();
    assert_eq!(m.vswitch_available("vsw-h4"), 3);
    // Asking for more than is free: refused, nothing taken.
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &b_id),
            ("SecondaryPrivateIpAddressCount", "4"),
        ],
        403,
        "InvalidVSwitchId.IpNotEnough",
    );
    assert_eq!(eni_ips(&m.eni(&b_id).unwrap()).len(), 1);
    assert_eq!(m.vswitch_available("vsw-h4"), 3);
    let v = m.ok(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &b_id),
            ("SecondaryPrivateIpAddressCount", "3"),
        ],
    );
    assert_eq!(
        sorted(assigned_ips(&v)),
        vec!["192.168.4.2", "192.168.4.3", "192.168.4.4"],
        "{v}"
    );
    assert_eq!(m.vswitch_available("vsw-h4"), 0);
}

#[test]
fn vswitch_runs_out_28_and_unassigned_addresses_are_reused() {
    let m = Mock::start_default();
    assert_eq!(m.vswitch_available("vsw-h2"), 12);
    let a = m.create_eni("vsw-h2", &[("SecondaryPrivateIpAddressCount", "11")]);
    let ips = eni_ip_list(&a);
    let want: Vec<String> = (1..=12).map(|i| format!("192.168.2.{i}")).collect();
    assert_eq!(
        ips, want,
        "the 12 usable addresses of 192.168.2.0/28 (gateway .13): {a}"
    );
    assert_eq!(m.vswitch_available("vsw-h2"), 0);
    m.err(
        "CreateNetworkInterface",
        &[("VSwitchId", "vsw-h2"), ("SecurityGroupId", "sg-nodes")],
        403,
        "InvalidVSwitchId.IpNotEnough",
    );
    let a_id = s(&a, "NetworkInterfaceId").to_string();
    m.ok(
        "UnassignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &a_id),
            ("PrivateIpAddress.1", "192.168.2.5"),
            ("PrivateIpAddress.2", "192.168.2.9"),
        ],
    );
    assert_eq!(m.vswitch_available("vsw-h2"), 2);
    let b = m.create_eni("vsw-h2", &[]);
    assert_eq!(b["PrivateIpAddress"], "192.168.2.5", "{b}");
    let c = m.create_eni("vsw-h2", &[]);
    assert_eq!(c["PrivateIpAddress"], "192.168.2.9", "{c}");
    m.err(
        "CreateNetworkInterface",
        &[("VSwitchId", "vsw-h2"), ("SecurityGroupId", "sg-nodes")],
        403,
        "InvalidVSwitchId.IpNotEnough",
    );
}

#[test]
fn addresses_never_handed_out_twice_under_concurrency() {
    let m = Mock::start_default();
    std::thread::scope(|sc| {
        for t in 0..6 {
            let m = &m;
            sc.spawn(move || {
                for i in 0..4 {
                    let e = m.create_eni_id(
                        if (t + i) % 2 == 0 { "vsw-h1" } else { "vsw-i1" },
                        &[("SecondaryPrivateIpAddressCount", "2")],
                    );
                    m.ok(
                        "AssignPrivateIpAddresses",
                        &[
                            ("NetworkInterfaceId", &e),
                            ("SecondaryPrivateIpAddressCount", "2"),
                        ],
                    );
                }
            });
        }
    });
    let ips = m.all_held_ips();
    assert_eq!(ips.len(), 4 + 6 * 4 * 5);
    let set: HashSet<&String> = ips.iter().collect();
    assert_eq!(
        set.len(),
        ips.len(),
        "an address was handed out twice: {ips:?}"
    );
    for ip in &ips {
        assert!(
            ip_in(ip, "192.168.1.0/24") || ip_in(ip, "192.168.3.0/24"),
            "{ip}"
        );
        assert!(
            !ip.ends_with(".0")
                && !ip.ends_with(".253")
                && !ip.ends_with(".254")
                && !ip.ends_with(".255"),
            "reserved {ip}"
        );
    }
    // Every answer agrees with /_admin/state.
    let (items, total, _) = describe_all(&m, &[], Some("500"));
    assert_eq!(total as usize, 4 + 24);
    let mut from_api: Vec<String> = items
        .iter()
        .flat_map(|e| eni_ips(e).into_iter().map(|x| x.0))
        .collect();
    from_api.sort();
    let mut st = ips.clone();
    st.sort();
    assert_eq!(from_api, st);
    // AvailableIpAddressCount agrees.
    let used_h1 = ips.iter().filter(|ip| ip_in(ip, "192.168.1.0/24")).count() as u64;
    assert_eq!(m.vswitch_available("vsw-h1"), 252 - used_h1);
}

// ------------------------------------------------------------------------------------------
// Assign / Unassign
// ------------------------------------------------------------------------------------------

#[test]
fn assign_shape_and_validation() {
    let m = Mock::start_default();
    let e = m.attached_eni("vsw-h1", "i-node-a", &[]);
    let other = m.create_eni_id("vsw-h1", &[]); // .2
    let v = m.ok(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("SecondaryPrivateIpAddressCount", "2"),
        ],
    );
    assert_eq!(
        v["AssignedPrivateIpAddressesSet"]["NetworkInterfaceId"],
        e.as_str(),
        "{v}"
    );
    assert_eq!(
        sorted(assigned_ips(&v)),
        vec!["192.168.1.3", "192.168.1.4"],
        "only the new ones: {v}"
    );
    assert_eq!(assigned_prefixes(&v).len(), 0, "{v}");
    let v = m.ok(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("PrivateIpAddress.1", "192.168.1.77"),
        ],
    );
    assert_eq!(assigned_ips(&v), vec!["192.168.1.77"], "{v}");
    let d = m.eni(&e).unwrap();
    assert_eq!(
        eni_ip_list(&d),
        vec!["192.168.1.1", "192.168.1.3", "192.168.1.4", "192.168.1.77"]
    );
    assert_eq!(
        eni_ips(&d).iter().filter(|x| x.1).count(),
        1,
        "one primary: {d}"
    );
    // In use elsewhere.
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("PrivateIpAddress.1", "192.168.1.2"),
        ],
        403,
        "InvalidIp.IpAssigned",
    );
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &other),
            ("PrivateIpAddress.1", "192.168.1.77"),
        ],
        403,
        "InvalidIp.IpAssigned",
    );
    // Out of range / mixed.
    for c in ["0", "11", "zz"] {
        m.err(
            "AssignPrivateIpAddresses",
            &[
                ("NetworkInterfaceId", &e),
                ("SecondaryPrivateIpAddressCount", c),
            ],
            400,
            "InvalidParameter",
        );
    }
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("SecondaryPrivateIpAddressCount", "1"),
            ("PrivateIpAddress.1", "192.168.1.90"),
        ],
        400,
        "InvalidParameter",
    );
    let eleven: Vec<(String, String)> = (1..=11)
        .map(|i| {
            (
                format!("PrivateIpAddress.{i}"),
                format!("192.168.1.{}", 100 + i),
            )
        })
        .collect();
    let mut p: Vec<(&str, &str)> = vec![("NetworkInterfaceId", &e)];
    p.extend(eleven.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    m.err("AssignPrivateIpAddresses", &p, 400, "InvalidParameter");
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("Ipv4PrefixCount", "1"),
            ("Ipv4Prefix.1", "192.168.1.64/28"),
        ],
        400,
        "InvalidParameter",
    );
    // Nothing at all to assign.
    let (st, v) = m.call("AssignPrivateIpAddresses", &[("NetworkInterfaceId", &e)]);
    assert_eq!(st, 400, "{v}");
    assert!(
        v["Code"] == "MissingParameter" || v["Code"] == "InvalidParameter",
        "{v}"
    );
    assert_eq!(eni_ips(&m.eni(&e).unwrap()).len(), 4);
    // An Available ENI accepts assigns too.
    let v = m.ok(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &other),
            ("SecondaryPrivateIpAddressCount", "1"),
        ],
    );
    assert_eq!(assigned_ips(&v).len(), 1, "{v}");
}

#[test]
fn unassign_rules() {
    let m = Mock::start_default();
    let e = m.attached_eni(
        "vsw-h1",
        "i-node-a",
        &[("SecondaryPrivateIpAddressCount", "3")],
    ); // .1-.4
    m.err(
        "UnassignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("PrivateIpAddress.1", "192.168.1.1"),
        ],
        400,
        "InvalidIp.PrimaryIp",
    );
    m.err(
        "UnassignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("PrivateIpAddress.1", "192.168.1.200"),
        ],
        403,
        "InvalidIp.IpUnassigned",
    );
    // Held by another ENI (the instance's primary).
    m.err(
        "UnassignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("PrivateIpAddress.1", "192.168.1.10"),
        ],
        403,
        "InvalidIp.IpUnassigned",
    );
    // All or nothing.
    m.err(
        "UnassignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("PrivateIpAddress.1", "192.168.1.2"),
            ("PrivateIpAddress.2", "192.168.1.200"),
        ],
        403,
        "InvalidIp.IpUnassigned",
    );
    assert_eq!(
        eni_ip_list(&m.eni(&e).unwrap()),
        vec!["192.168.1.1", "192.168.1.2", "192.168.1.3", "192.168.1.4"]
    );
    let thirty_three: Vec<(String, String)> = (1..=33)
        .map(|i| {
            (
                format!("PrivateIpAddress.{i}"),
                format!("192.168.1.{}", 100 + i),
            )
        })
        .collect();
    let mut p: Vec<(&str, &str)> = vec![("NetworkInterfaceId", &e)];
    p.extend(thirty_three.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    m.err("UnassignPrivateIpAddresses", &p, 400, "InvalidParameter");
    let (st, v) = m.call("UnassignPrivateIpAddresses", &[("NetworkInterfaceId", &e)]);
    assert_eq!(st, 400, "{v}");
    assert!(
        v["Code"] == "MissingParameter" || v["Code"] == "InvalidParameter",
        "{v}"
    );

    let before = m.vswitch_available("vsw-h1");
    m.ok(
        "UnassignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("PrivateIpAddress.1", "192.168.1.2"),
            ("PrivateIpAddress.2", "192.168.1.4"),
        ],
    );
    assert_eq!(
        eni_ip_list(&m.eni(&e).unwrap()),
        vec!["192.168.1.1", "192.168.1.3"]
    );
    assert_eq!(m.vswitch_available("vsw-h1"), before + 2);
    // Again: no longer held.
    m.err(
        "UnassignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("PrivateIpAddress.1", "192.168.1.2"),
        ],
        403,
        "InvalidIp.IpUnassigned",
    );
    // Reused lowest first.
    let v = m.ok(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("SecondaryPrivateIpAddressCount", "1"),
        ],
    );
    assert_eq!(assigned_ips(&v), vec!["192.168.1.2"], "{v}");
}

// ------------------------------------------------------------------------------------------
// Prefixes
// ------------------------------------------------------------------------------------------

fn check_prefix(p: &str, vsw_cidr: &str) {
    let (net, len) = parse_cidr(p);
    assert_eq!(len, 28, "{p}");
    assert_eq!(net % 16, 0, "{p} is not aligned");
    let (vnet, vlen) = parse_cidr(vsw_cidr);
    let vmask = u32::MAX << (32 - vlen);
    assert_eq!(net & vmask, vnet, "{p} not in {vsw_cidr}");
    // Does not hold the network address or the last four (gateway and reserved).
    let vbcast = vnet | !vmask;
    assert!(net > vnet, "{p} holds the vSwitch's network address");
    assert!(
        net + 15 < vbcast - 3,
        "{p} holds the gateway or reserved addresses"
    );
}

#[test]
fn prefixes_are_aligned_and_exclusive() {
    let m = Mock::start_default();
    let e = m.attached_eni("vsw-h1", "i-node-a", &[]);
    let before = m.vswitch_available("vsw-h1");
    let v = m.ok(
        "AssignPrivateIpAddresses",
        &[("NetworkInterfaceId", &e), ("Ipv4PrefixCount", "2")],
    );
    let ps = assigned_prefixes(&v);
    assert_eq!(ps.len(), 2, "{v}");
    assert_eq!(assigned_ips(&v).len(), 0, "{v}");
    assert_ne!(ps[0], ps[1]);
    for p in &ps {
        check_prefix(p, "192.168.1.0/24");
        for ip in m.all_held_ips() {
            assert!(!ip_in(&ip, p), "{ip} lies in prefix {p}");
        }
    }
    assert_eq!(m.vswitch_available("vsw-h1"), before - 32);
    let d = m.eni(&e).unwrap();
    assert_eq!(sorted(eni_prefixes(&d)), sorted(ps.clone()), "{d}");
    let st = m.state_eni(&e).unwrap();
    let st_prefixes: Vec<String> = st["prefixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert_eq!(sorted(st_prefixes), sorted(ps.clone()), "{st}");

    // Plenty of single addresses later: none inside a prefix.
    let big = m.create_eni("vsw-h1", &[("SecondaryPrivateIpAddressCount", "49")]);
    for (ip, _) in eni_ips(&big) {
        for p in &ps {
            assert!(!ip_in(&ip, p), "{ip} handed out inside prefix {p}");
        }
    }
    // Explicit prefix: aligned and free -> exactly it; misaligned -> InvalidParameter.
    let v = m.ok(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("Ipv4Prefix.1", "192.168.1.192/28"),
        ],
    );
    assert_eq!(assigned_prefixes(&v), vec!["192.168.1.192/28"], "{v}");
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("Ipv4Prefix.1", "192.168.1.200/28"),
        ],
        400,
        "InvalidParameter",
    );
    let (st, v) = m.call(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("Ipv4Prefix.1", "192.168.1.192/28"),
        ],
    );
    assert!((400..500).contains(&st), "the same prefix twice: {v}");
    // Unassign a prefix.
    let before = m.vswitch_available("vsw-h1");
    m.ok(
        "UnassignPrivateIpAddresses",
        &[("NetworkInterfaceId", &e), ("Ipv4Prefix.1", &ps[0])],
    );
    let d = m.eni(&e).unwrap();
    assert!(!eni_prefixes(&d).contains(&ps[0]), "{d}");
    assert_eq!(eni_prefixes(&d).len(), 2, "{d}");
    assert_eq!(m.vswitch_available("vsw-h1"), before + 16);
    m.err(
        "UnassignPrivateIpAddresses",
        &[("NetworkInterfaceId", &e), ("Ipv4Prefix.1", &ps[0])],
        403,
        "InvalidIp.IpUnassigned",
    );
}

#[test]
fn create_with_prefixes() {
    let m = Mock::start_default();
    let v = m.create_eni("vsw-h1", &[("Ipv4PrefixCount", "2")]);
    let ps = eni_prefixes(&v);
    assert_eq!(ps.len(), 2, "{v}");
    for p in &ps {
        check_prefix(p, "192.168.1.0/24");
        assert!(!ip_in(s(&v, "PrivateIpAddress"), p), "{v}");
    }
    assert_eq!(eni_ips(&v).len(), 1, "{v}");
    // A /28 vSwitch has no free aligned /28 (its own block holds the reserved addresses).
    let before = m.vswitch_available("vsw-h2");
    m.err(
        "CreateNetworkInterface",
        &[
            ("VSwitchId", "vsw-h2"),
            ("SecurityGroupId", "sg-nodes"),
            ("Ipv4PrefixCount", "1"),
        ],
        403,
        "InvalidVSwitchId.IpNotEnough",
    );
    assert_eq!(
        m.vswitch_available("vsw-h2"),
        before,
        "a failed create must not keep an address"
    );
}

#[test]
fn prefixes_refused_without_prefix_support() {
    let m = Mock::start_default();
    let e = m.attached_eni("vsw-h1", "i-node-c", &[]); // ecs.t5.small: prefix_support false
    m.err(
        "AssignPrivateIpAddresses",
        &[("NetworkInterfaceId", &e), ("Ipv4PrefixCount", "1")],
        400,
        "InvalidOperation.Ipv4PrefixNotSupported",
    );
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("Ipv4Prefix.1", "192.168.1.64/28"),
        ],
        400,
        "InvalidOperation.Ipv4PrefixNotSupported",
    );
    assert_eq!(eni_prefixes(&m.eni(&e).unwrap()).len(), 0);
}

// ------------------------------------------------------------------------------------------
// Idempotency
// ------------------------------------------------------------------------------------------

#[test]
fn client_token_create() {
    let m = Mock::start_default();
    let p = [
        ("VSwitchId", "vsw-h1"),
        ("SecurityGroupId", "sg-nodes"),
        ("SecondaryPrivateIpAddressCount", "2"),
        ("Description", "d1"),
        ("ClientToken", "tok-create-1"),
    ];
    let a = m.ok("CreateNetworkInterface", &p);
    let b = m.ok("CreateNetworkInterface", &p);
    assert_ne!(
        a["RequestId"], b["RequestId"],
        "a replay has a new RequestId"
    );
    for k in [
        "NetworkInterfaceId",
        "MacAddress",
        "PrivateIpAddress",
        "PrivateIpSets",
        "Status",
    ] {
        assert_eq!(a[k], b[k], "{k}: {a} vs {b}");
    }
    assert_eq!(m.state()["enis"].as_array().unwrap().len(), 5, "one ENI");
    assert_eq!(m.vswitch_available("vsw-h1"), 249 - 3);
    // Same token, other parameters.
    let mut q = p.to_vec();
    q[3] = ("Description", "d2");
    m.err(
        "CreateNetworkInterface",
        &q,
        400,
        "IdempotentParameterMismatch",
    );
    let mut q = p.to_vec();
    q[2] = ("SecondaryPrivateIpAddressCount", "3");
    m.err(
        "CreateNetworkInterface",
        &q,
        400,
        "IdempotentParameterMismatch",
    );
    assert_eq!(m.state()["enis"].as_array().unwrap().len(), 5);
    // Another token: another ENI.
    let mut q = p.to_vec();
    q[4] = ("ClientToken", "tok-create-2");
    let c = m.ok("CreateNetworkInterface", &q);
    assert_ne!(c["NetworkInterfaceId"], a["NetworkInterfaceId"]);
    // 64 characters are fine.
    let t64 = "x".repeat(64);
    let q = [
        ("VSwitchId", "vsw-h1"),
        ("SecurityGroupId", "sg-nodes"),
        ("ClientToken", t64.as_str()),
    ];
    let d1 = m.ok("CreateNetworkInterface", &q);
    let d2 = m.ok("CreateNetworkInterface", &q);
    assert_eq!(d1["NetworkInterfaceId"], d2["NetworkInterfaceId"]);
}

#[test]
fn client_token_assign_and_attach() {
    let m = Mock::start(&with_timing(default_world(), "attach_ms", json!(300)));
    let e = m.create_eni_id("vsw-h1", &[]);
    let p = [
        ("NetworkInterfaceId", e.as_str()),
        ("InstanceId", "i-node-a"),
        ("ClientToken", "tok-att"),
    ];
    m.ok("AttachNetworkInterface", &p);
    // Replayed while Attaching and once InUse: the first answer, not InvalidEniState.
    m.ok("AttachNetworkInterface", &p);
    m.wait_status(&e, "InUse", SECS10);
    m.ok("AttachNetworkInterface", &p);
    m.err(
        "AttachNetworkInterface",
        &[
            ("NetworkInterfaceId", e.as_str()),
            ("InstanceId", "i-node-b"),
            ("ClientToken", "tok-att"),
        ],
        400,
        "IdempotentParameterMismatch",
    );
    let p = [
        ("NetworkInterfaceId", e.as_str()),
        ("SecondaryPrivateIpAddressCount", "2"),
        ("ClientToken", "tok-asg"),
    ];
    let a = m.ok("AssignPrivateIpAddresses", &p);
    let b = m.ok("AssignPrivateIpAddresses", &p);
    assert_eq!(sorted(assigned_ips(&a)), sorted(assigned_ips(&b)));
    assert_ne!(a["RequestId"], b["RequestId"]);
    assert_eq!(
        eni_ips(&m.eni(&e).unwrap()).len(),
        3,
        "the replay assigned nothing"
    );
    m.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", e.as_str()),
            ("SecondaryPrivateIpAddressCount", "3"),
            ("ClientToken", "tok-asg"),
        ],
        400,
        "IdempotentParameterMismatch",
    );
}

#[test]
fn client_token_failed_call_is_not_recorded() {
    let m = Mock::start_default();
    let full = m.create_eni_id("vsw-h4", &[("SecondaryPrivateIpAddressCount", "3")]);
    let p = [
        ("VSwitchId", "vsw-h4"),
        ("SecurityGroupId", "sg-nodes"),
        ("ClientToken", "tok-retry"),
    ];
    m.err(
        "CreateNetworkInterface",
        &p,
        403,
        "InvalidVSwitchId.IpNotEnough",
    );
    m.ok("DeleteNetworkInterface", &[("NetworkInterfaceId", &full)]);
    m.wait_status(&full, "<gone>", SECS10);
    let v = m.ok("CreateNetworkInterface", &p);
    assert_eq!(v["PrivateIpAddress"], "192.168.4.1", "{v}");
}

// ------------------------------------------------------------------------------------------
// DescribeNetworkInterfaces
// ------------------------------------------------------------------------------------------

#[test]
fn describe_network_interfaces_paging_and_filters() {
    let m = Mock::start_default();
    let mut created = Vec::new();
    for i in 0..23 {
        let vsw = if i < 15 { "vsw-h1" } else { "vsw-i1" };
        let env = if i % 3 == 0 { "prod" } else { "dev" };
        created.push(m.create_eni_id(vsw, &[("Tag.1.Key", "env"), ("Tag.1.Value", env)]));
    }
    let all_ids: HashSet<String> = m.state()["enis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(e, "id").to_string())
        .collect();
    assert_eq!(all_ids.len(), 27);

    // Default page size is 10.
    let v = m.ok("DescribeNetworkInterfaces", &[]);
    assert_eq!(
        arr(&v, &["NetworkInterfaceSets", "NetworkInterfaceSet"]).len(),
        10,
        "{v}"
    );
    assert_eq!(v["TotalCount"], 27, "{v}");
    assert!(!s(&v, "NextToken").is_empty(), "{v}");

    let (items, total, sizes) = describe_all(&m, &[], Some("10"));
    assert_eq!(total, 27);
    assert_eq!(sizes, vec![10, 10, 7]);
    let ids = ids_of(&items);
    let set: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(set.len(), ids.len(), "duplicates across pages: {ids:?}");
    assert_eq!(set, all_ids, "pages missed ENIs");
    // Ordered by creation.
    let pos: Vec<usize> = created
        .iter()
        .map(|c| ids.iter().position(|x| x == c).unwrap())
        .collect();
    assert!(
        pos.windows(2).all(|w| w[0] < w[1]),
        "not in creation order: {ids:?}"
    );
    // Items carry the fields.
    let one = items
        .iter()
        .find(|e| e["NetworkInterfaceId"] == created[0].as_str())
        .unwrap();
    for k in [
        "Status",
        "Type",
        "VpcId",
        "VSwitchId",
        "ZoneId",
        "InstanceId",
        "MacAddress",
        "PrivateIpAddress",
        "CreationTime",
    ] {
        assert!(one[k].is_string(), "{k} missing: {one}");
    }
    assert_eq!(
        one["Tags"],
        json!({"Tag": [{"TagKey": "env", "TagValue": "prod"}]})
    );
    arr(one, &["SecurityGroupIds", "SecurityGroupId"]);
    arr(one, &["PrivateIpSets", "PrivateIpSet"]);
    arr(one, &["Ipv4PrefixSets", "Ipv4PrefixSet"]);

    // One page of 500.
    let (items, _, sizes) = describe_all(&m, &[], Some("500"));
    assert_eq!(sizes, vec![27]);
    assert_eq!(items.len(), 27);
    // Out of range.
    for bad in ["9", "501", "0", "ten"] {
        let e = m.err(
            "DescribeNetworkInterfaces",
            &[("MaxResults", bad)],
            400,
            "InvalidParameter",
        );
        assert!(s(&e, "Message").contains("MaxResults"), "{e}");
    }

    // Filters.
    let count = |f: &[(&str, &str)]| -> Vec<String> {
        let (items, total, _) = describe_all(&m, f, Some("10"));
        assert_eq!(total as usize, items.len(), "TotalCount with {f:?}");
        ids_of(&items)
    };
    assert_eq!(count(&[("VSwitchId", "vsw-i1")]).len(), 8 + 1);
    assert_eq!(count(&[("VSwitchId", "vsw-h2")]).len(), 0);
    assert_eq!(count(&[("VpcId", "vpc-mock")]).len(), 27);
    assert_eq!(count(&[("VpcId", "vpc-other")]).len(), 0);
    let prim = count(&[("Type", "Primary")]);
    assert_eq!(prim.len(), 4);
    assert!(prim.contains(&"eni-node-a-primary".to_string()));
    assert_eq!(count(&[("Type", "Secondary")]).len(), 23);
    assert_eq!(count(&[("Status", "Available")]).len(), 23);
    assert_eq!(count(&[("Status", "InUse")]).len(), 4);
    assert_eq!(
        count(&[("InstanceId", "i-node-a")]),
        vec!["eni-node-a-primary".to_string()]
    );
    let two = count(&[
        ("NetworkInterfaceId.1", &created[4]),
        ("NetworkInterfaceId.2", &created[17]),
    ]);
    assert_eq!(
        sorted(two),
        sorted(vec![created[4].clone(), created[17].clone()])
    );
    assert_eq!(count(&[("NetworkInterfaceId.1", "eni-nope")]).len(), 0);
    assert_eq!(
        count(&[("PrivateIpAddress.1", "192.168.1.10")]),
        vec!["eni-node-a-primary".to_string()]
    );
    assert_eq!(
        count(&[("Tag.1.Key", "env"), ("Tag.1.Value", "prod")]).len(),
        8
    );
    assert_eq!(count(&[("Tag.1.Key", "env")]).len(), 23);
    assert_eq!(
        count(&[("Tag.1.Key", "env"), ("Tag.1.Value", "dev")]).len(),
        15
    );
    assert_eq!(count(&[("Tag.1.Key", "nope")]).len(), 0);
    assert_eq!(
        count(&[
            ("VSwitchId", "vsw-h1"),
            ("Tag.1.Key", "env"),
            ("Tag.1.Value", "prod")
        ])
        .len(),
        5
    );
    // Paging through a filtered list.
    let (items, total, sizes) = describe_all(
        &m,
        &[("Tag.1.Key", "env"), ("Tag.1.Value", "dev")],
        Some("10"),
    );
    assert_eq!((total, sizes), (15, vec![10, 5]));
    assert_eq!(ids_of(&items).into_iter().collect::<HashSet<_>>().len(), 15);
    // Empty answers keep the wrapping.
    let v = m.ok("DescribeNetworkInterfaces", &[("VpcId", "vpc-other")]);
    assert_eq!(
        arr(&v, &["NetworkInterfaceSets", "NetworkInterfaceSet"]).len(),
        0
    );
    assert_eq!(v["TotalCount"], 0);
    assert_eq!(v["NextToken"], "");
}

#[test]
fn describe_network_interfaces_secondary_ip_and_attachment() {
    let m = Mock::start_default();
    let e = m.attached_eni(
        "vsw-h1",
        "i-node-a",
        &[("SecondaryPrivateIpAddressCount", "2")],
    ); // .1 .2 .3
    let v = m.ok(
        "DescribeNetworkInterfaces",
        &[("PrivateIpAddress.1", "192.168.1.3")],
    );
    let list = arr(&v, &["NetworkInterfaceSets", "NetworkInterfaceSet"]);
    assert_eq!(ids_of(list), vec![e.clone()], "{v}");
    assert_eq!(list[0]["Attachment"]["InstanceId"], "i-node-a", "{v}");
    assert_eq!(list[0]["Attachment"]["DeviceIndex"], 1, "{v}");
    assert_eq!(list[0]["InstanceId"], "i-node-a", "{v}");
    let v = m.ok(
        "DescribeNetworkInterfaces",
        &[("InstanceId", "i-node-a"), ("MaxResults", "50")],
    );
    let ids = ids_of(arr(&v, &["NetworkInterfaceSets", "NetworkInterfaceSet"]));
    assert_eq!(
        sorted(ids),
        sorted(vec![e, "eni-node-a-primary".to_string()])
    );
}

// ------------------------------------------------------------------------------------------
// Tags
// ------------------------------------------------------------------------------------------

fn tags_of(m: &Mock, id: &str) -> Vec<(String, String)> {
    let d = m.eni(id).unwrap();
    let mut v: Vec<(String, String)> = arr(&d, &["Tags", "Tag"])
        .iter()
        .map(|t| (s(t, "TagKey").to_string(), s(t, "TagValue").to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn tag_and_untag() {
    let m = Mock::start_default();
    let a = m.create_eni_id("vsw-h1", &[]);
    let b = m.create_eni_id("vsw-h1", &[("Tag.1.Key", "keep"), ("Tag.1.Value", "me")]);
    m.ok(
        "TagResources",
        &[
            ("ResourceType", "eni"),
            ("ResourceId.1", &a),
            ("ResourceId.2", &b),
            ("Tag.1.Key", "k1"),
            ("Tag.1.Value", "v1"),
            ("Tag.2.Key", "k2"),
            ("Tag.2.Value", "v2"),
        ],
    );
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(tags_of(&m, &a), vec![kv("k1", "v1"), kv("k2", "v2")]);
    assert_eq!(
        tags_of(&m, &b),
        vec![kv("k1", "v1"), kv("k2", "v2"), kv("keep", "me")]
    );
    let st = m.state_eni(&a).unwrap();
    assert_eq!(st["tags"], json!({"k1": "v1", "k2": "v2"}), "{st}");
    // Tag filter sees them.
    let v = m.ok(
        "DescribeNetworkInterfaces",
        &[("Tag.1.Key", "k1"), ("Tag.1.Value", "v1")],
    );
    assert_eq!(
        sorted(ids_of(arr(
            &v,
            &["NetworkInterfaceSets", "NetworkInterfaceSet"]
        ))),
        sorted(vec![a.clone(), b.clone()])
    );

    m.ok(
        "UntagResources",
        &[
            ("ResourceType", "eni"),
            ("ResourceId.1", &a),
            ("TagKey.1", "k1"),
        ],
    );
    assert_eq!(tags_of(&m, &a), vec![kv("k2", "v2")]);
    m.ok(
        "UntagResources",
        &[
            ("ResourceType", "eni"),
            ("ResourceId.1", &b),
            ("All", "true"),
        ],
    );
    assert_eq!(tags_of(&m, &b), vec![]);
    let v = m.ok("DescribeNetworkInterfaces", &[("Tag.1.Key", "k1")]);
    assert_eq!(
        arr(&v, &["NetworkInterfaceSets", "NetworkInterfaceSet"]).len(),
        0,
        "{v}"
    );

    // Errors.
    m.err(
        "TagResources",
        &[
            ("ResourceId.1", &a),
            ("Tag.1.Key", "x"),
            ("Tag.1.Value", "y"),
        ],
        400,
        "MissingParameter",
    );
    m.err(
        "TagResources",
        &[
            ("ResourceType", "eni"),
            ("Tag.1.Key", "x"),
            ("Tag.1.Value", "y"),
        ],
        400,
        "MissingParameter",
    );
    m.err(
        "TagResources",
        &[("ResourceType", "eni"), ("ResourceId.1", &a)],
        400,
        "MissingParameter",
    );
    m.err(
        "TagResources",
        &[
            ("ResourceType", "instance"),
            ("ResourceId.1", &a),
            ("Tag.1.Key", "x"),
            ("Tag.1.Value", "y"),
        ],
        400,
        "InvalidParameter",
    );
    m.err(
        "TagResources",
        &[
            ("ResourceType", "eni"),
            ("ResourceId.1", "eni-nope"),
            ("Tag.1.Key", "x"),
            ("Tag.1.Value", "y"),
        ],
        404,
        "InvalidEniId.NotFound",
    );
    m.err(
        "UntagResources",
        &[("ResourceId.1", &a), ("TagKey.1", "k2")],
        400,
        "MissingParameter",
    );
    m.err(
        "UntagResources",
        &[("ResourceType", "eni"), ("TagKey.1", "k2")],
        400,
        "MissingParameter",
    );
    m.err(
        "UntagResources",
        &[
            ("ResourceType", "eni"),
            ("ResourceId.1", "eni-nope"),
            ("TagKey.1", "k2"),
        ],
        404,
        "InvalidEniId.NotFound",
    );
    assert_eq!(tags_of(&m, &a), vec![kv("k2", "v2")]);
}

#[test]
fn at_most_20_tags_per_eni() {
    let m = Mock::start_default();
    let a = m.create_eni_id("vsw-h1", &[("Tag.1.Key", "k0"), ("Tag.1.Value", "v")]);
    let tags: Vec<(String, String)> = (1..=19)
        .flat_map(|i| {
            [
                (format!("Tag.{i}.Key"), format!("k{i}")),
                (format!("Tag.{i}.Value"), "v".to_string()),
            ]
        })
        .collect();
    let mut p: Vec<(&str, &str)> = vec![("ResourceType", "eni"), ("ResourceId.1", &a)];
    p.extend(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    m.ok("TagResources", &p);
    assert_eq!(tags_of(&m, &a).len(), 20);
    let (st, v) = m.call(
        "TagResources",
        &[
            ("ResourceType", "eni"),
            ("ResourceId.1", &a),
            ("Tag.1.Key", "k-21"),
            ("Tag.1.Value", "v"),
        ],
    );
    assert!((400..500).contains(&st), "a 21st tag was accepted: {v}");
    check_error_shape(&v);
    assert_eq!(tags_of(&m, &a).len(), 20);
}

// ------------------------------------------------------------------------------------------
// DescribeInstanceTypes / DescribeVSwitches / DescribeInstances
// ------------------------------------------------------------------------------------------

#[test]
fn describe_instance_types() {
    let m = Mock::start_default();
    let v = m.ok(
        "DescribeInstanceTypes",
        &[("InstanceTypes.1", "ecs.g7.large")],
    );
    let list = arr(&v, &["InstanceTypes", "InstanceType"]);
    assert_eq!(list.len(), 1, "{v}");
    let t = &list[0];
    assert_eq!(t["InstanceTypeId"], "ecs.g7.large");
    assert_eq!(t["EniQuantity"], 3, "{t}");
    assert_eq!(t["EniPrivateIpAddressQuantity"], 10, "{t}");
    assert_eq!(t["EniIpv6AddressQuantity"], 10, "{t}");
    assert!(t["EniTotalQuantity"].is_u64(), "{t}");
    assert!(t["EniTrunkSupported"].is_boolean(), "{t}");

    let v = m.ok("DescribeInstanceTypes", &[]);
    let mut ids: Vec<&str> = arr(&v, &["InstanceTypes", "InstanceType"])
        .iter()
        .map(|t| s(t, "InstanceTypeId"))
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["ecs.g7.large", "ecs.t5.small"]);
    let v = m.ok(
        "DescribeInstanceTypes",
        &[
            ("InstanceTypes.1", "ecs.t5.small"),
            ("InstanceTypes.2", "ecs.g7.large"),
        ],
    );
    let list = arr(&v, &["InstanceTypes", "InstanceType"]);
    assert_eq!(list.len(), 2);
    let t5 = list
        .iter()
        .find(|t| t["InstanceTypeId"] == "ecs.t5.small")
        .unwrap();
    assert_eq!(t5["EniQuantity"], 2);
    assert_eq!(t5["EniPrivateIpAddressQuantity"], 3);
    assert_eq!(t5["EniIpv6AddressQuantity"], 0);
    let v = m.ok("DescribeInstanceTypes", &[("InstanceTypes.1", "ecs.nope")]);
    assert_eq!(arr(&v, &["InstanceTypes", "InstanceType"]).len(), 0, "{v}");
}

#[test]
fn describe_vswitches() {
    let m = Mock::start_default();
    let v = m.ok("DescribeVSwitches", &[]);
    let list = arr(&v, &["VSwitches", "VSwitch"]);
    assert_eq!(list.len(), 4, "{v}");
    let get = |id: &str| {
        list.iter()
            .find(|x| x["VSwitchId"] == id)
            .unwrap_or_else(|| panic!("{id}: {v}"))
            .clone()
    };
    let h1 = get("vsw-h1");
    assert_eq!(h1["VpcId"], "vpc-mock");
    assert_eq!(h1["ZoneId"], "cn-hangzhou-h");
    assert_eq!(h1["CidrBlock"], "192.168.1.0/24");
    assert_eq!(h1["Status"], "Available");
    assert_eq!(h1["AvailableIpAddressCount"], 252 - 3, "{h1}");
    assert_eq!(get("vsw-h2")["AvailableIpAddressCount"], 12);
    assert_eq!(get("vsw-i1")["AvailableIpAddressCount"], 251);
    assert_eq!(get("vsw-h4")["AvailableIpAddressCount"], 4);
    assert_eq!(get("vsw-i1")["ZoneId"], "cn-hangzhou-i");

    // The VPC API version answers the same.
    let (st, w) = m.call(
        "DescribeVSwitches",
        &[("Version", "2016-04-28"), ("VSwitchId", "vsw-h1")],
    );
    assert_eq!(st, 200, "{w}");
    assert_eq!(arr(&w, &["VSwitches", "VSwitch"]).len(), 1, "{w}");
    assert_eq!(w["VSwitches"]["VSwitch"][0]["AvailableIpAddressCount"], 249);

    let v = m.ok("DescribeVSwitches", &[("ZoneId", "cn-hangzhou-i")]);
    let ids: Vec<&str> = arr(&v, &["VSwitches", "VSwitch"])
        .iter()
        .map(|x| s(x, "VSwitchId"))
        .collect();
    assert_eq!(ids, vec!["vsw-i1"]);
    let v = m.ok("DescribeVSwitches", &[("VpcId", "vpc-mock")]);
    assert_eq!(arr(&v, &["VSwitches", "VSwitch"]).len(), 4);
    let v = m.ok("DescribeVSwitches", &[("VpcId", "vpc-other")]);
    assert_eq!(arr(&v, &["VSwitches", "VSwitch"]).len(), 0);

    // Paging.
    let p1 = m.ok(
        "DescribeVSwitches",
        &[("PageSize", "3"), ("PageNumber", "1")],
    );
    let p2 = m.ok(
        "DescribeVSwitches",
        &[("PageSize", "3"), ("PageNumber", "2")],
    );
    let mut ids: Vec<String> = arr(&p1, &["VSwitches", "VSwitch"])
        .iter()
        .chain(arr(&p2, &["VSwitches", "VSwitch"]))
        .map(|x| s(x, "VSwitchId").to_string())
        .collect();
    assert_eq!(arr(&p1, &["VSwitches", "VSwitch"]).len(), 3);
    assert_eq!(arr(&p2, &["VSwitches", "VSwitch"]).len(), 1);
    ids.sort();
    assert_eq!(ids, vec!["vsw-h1", "vsw-h2", "vsw-h4", "vsw-i1"]);
    for bad in ["0", "51", "x"] {
        m.err(
            "DescribeVSwitches",
            &[("PageSize", bad)],
            400,
            "InvalidParameter",
        );
    }

    // Available count decreases with allocations.
    m.create_eni("vsw-h1", &[("SecondaryPrivateIpAddressCount", "2")]);
    assert_eq!(m.vswitch_available("vsw-h1"), 249 - 3);
    let st = m.state();
    let vs = st["vswitches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "vsw-h1")
        .unwrap()
        .clone();
    assert_eq!(vs["available"], 249 - 3, "{vs}");
    assert_eq!(vs["cidr"], "192.168.1.0/24", "{vs}");
    assert_eq!(vs["zone"], "cn-hangzhou-h", "{vs}");
}

#[test]
fn describe_instances() {
    let m = Mock::start_default();
    let v = m.ok("DescribeInstances", &[("InstanceIds", r#"["i-node-a"]"#)]);
    let list = arr(&v, &["Instances", "Instance"]);
    assert_eq!(list.len(), 1, "{v}");
    let i = &list[0];
    assert_eq!(i["InstanceId"], "i-node-a");
    assert_eq!(i["InstanceType"], "ecs.g7.large");
    assert_eq!(i["RegionId"], "cn-hangzhou");
    assert_eq!(i["ZoneId"], "cn-hangzhou-h");
    assert!(!s(i, "Status").is_empty());
    assert_eq!(i["VpcAttributes"]["VpcId"], "vpc-mock", "{i}");
    assert_eq!(i["VpcAttributes"]["VSwitchId"], "vsw-h1", "{i}");
    assert_eq!(
        i["VpcAttributes"]["PrivateIpAddress"],
        json!({"IpAddress": ["192.168.1.10"]}),
        "{i}"
    );
    assert_eq!(
        i["SecurityGroupIds"],
        json!({"SecurityGroupId": ["sg-nodes"]}),
        "{i}"
    );
    let nics = arr(i, &["NetworkInterfaces", "NetworkInterface"]);
    assert_eq!(nics.len(), 1, "{i}");
    assert_eq!(nics[0]["NetworkInterfaceId"], "eni-node-a-primary");
    assert_eq!(nics[0]["Type"], "Primary");
    assert_eq!(nics[0]["PrimaryIpAddress"], "192.168.1.10");
    let primary = m.eni("eni-node-a-primary").unwrap();
    assert_eq!(nics[0]["MacAddress"], primary["MacAddress"]);
    assert_eq!(primary["Type"], "Primary");
    assert_eq!(primary["Status"], "InUse");
    assert_eq!(primary["InstanceId"], "i-node-a");

    let e = m.attached_eni("vsw-h1", "i-node-a", &[]);
    let v = m.ok("DescribeInstances", &[("InstanceIds", r#"["i-node-a"]"#)]);
    let nics = arr(
        &v["Instances"]["Instance"][0],
        &["NetworkInterfaces", "NetworkInterface"],
    )
    .clone();
    assert_eq!(nics.len(), 2, "{v}");
    let sec = nics
        .iter()
        .find(|n| n["NetworkInterfaceId"] == e.as_str())
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(sec["Type"], "Secondary");
    assert_eq!(sec["PrimaryIpAddress"], "192.168.1.1");

    let v = m.ok("DescribeInstances", &[]);
    assert_eq!(arr(&v, &["Instances", "Instance"]).len(), 4);
    let v = m.ok(
        "DescribeInstances",
        &[("InstanceIds", r#"["i-node-a","i-node-i","i-nope"]"#)],
    );
    let mut ids: Vec<&str> = arr(&v, &["Instances", "Instance"])
        .iter()
        .map(|x| s(x, "InstanceId"))
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["i-node-a", "i-node-i"]);
    let v = m.ok("DescribeInstances", &[("ZoneId", "cn-hangzhou-i")]);
    let ids: Vec<&str> = arr(&v, &["Instances", "Instance"])
        .iter()
        .map(|x| s(x, "InstanceId"))
        .collect();
    assert_eq!(ids, vec!["i-node-i"]);
    let v = m.ok(
        "DescribeInstances",
        &[
            ("VpcId", "vpc-mock"),
            ("PageSize", "3"),
            ("PageNumber", "2"),
        ],
    );
    assert_eq!(arr(&v, &["Instances", "Instance"]).len(), 1, "{v}");
    for bad in ["0", "101"] {
        m.err(
            "DescribeInstances",
            &[("PageSize", bad)],
            400,
            "InvalidParameter",
        );
    }
    m.err(
        "DescribeInstances",
        &[("InstanceIds", "i-node-a")],
        400,
        "InvalidParameter",
    );
    // The schema's default primary ENI id: eni-<instance id without "i-">-primary.
    let v = m.ok("DescribeInstances", &[("InstanceIds", r#"["i-node-b"]"#)]);
    assert_eq!(
        v["Instances"]["Instance"][0]["NetworkInterfaces"]["NetworkInterface"][0]
            ["NetworkInterfaceId"],
        "eni-node-b-primary",
        "{v}"
    );
}

#[test]
fn unknown_region_for_every_action() {
    let m = Mock::start_default();
    for action in [
        "DescribeInstanceTypes",
        "DescribeVSwitches",
        "DescribeInstances",
        "DescribeNetworkInterfaces",
    ] {
        let (st, v) = m.call(action, &[("RegionId", "cn-beijing")]);
        assert_eq!(v["Code"], "InvalidRegionId.NotFound", "{action}: {v}");
        assert!((400..500).contains(&st), "{action}: {st}");
        check_error_shape(&v);
    }
}

#[test]
fn vpc_version_only_for_describe_vswitches() {
    // "Both ECS and VPC versions are accepted for DescribeVSwitches; every other action is ECS."
    let m = Mock::start_default();
    let (st, v) = m.call("DescribeInstanceTypes", &[("Version", "2016-04-28")]);
    assert!(
        (400..500).contains(&st),
        "DescribeInstanceTypes accepted Version 2016-04-28: {v}"
    );
    check_error_shape(&v);
}
