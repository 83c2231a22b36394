//! The instance metadata service at `/latest/`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn json_list(s: &str) -> Vec<String> {
    let v: Value =
        serde_json::from_str(s).unwrap_or_else(|e| panic!("not a JSON array ({e}): {s:?}"));
    let mut l: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {s}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    l.sort();
    l
}

fn mac_of(m: &Mock, eni: &str) -> String {
    s(&m.eni(eni).unwrap(), "MacAddress").to_string()
}

#[test]
fn instance_fields() {
    let m = Mock::start_default();
    let a = "i-node-a";
    assert_eq!(m.md_ok(a, "instance-id"), "i-node-a");
    assert_eq!(m.md_ok(a, "instance/instance-type"), "ecs.g7.large");
    assert_eq!(m.md_ok(a, "region-id"), "cn-hangzhou");
    assert_eq!(m.md_ok(a, "zone-id"), "cn-hangzhou-h");
    assert_eq!(m.md_ok(a, "vpc-id"), "vpc-mock");
    assert_eq!(m.md_ok(a, "vpc-cidr-block"), "192.168.0.0/16");
    assert_eq!(m.md_ok(a, "vswitch-id"), "vsw-h1");
    assert_eq!(m.md_ok(a, "vswitch-cidr-block"), "192.168.1.0/24");
    assert_eq!(m.md_ok(a, "private-ipv4"), "192.168.1.10");
    let mac = m.md_ok(a, "mac");
    assert!(is_mac(&mac), "{mac}");
    assert_eq!(mac, mac_of(&m, "eni-node-a-primary"));
    // The macs list: one `<mac>/` a line.
    let body = m.md_ok(a, "network/interfaces/macs/");
    assert_eq!(
        body.lines().map(str::trim).collect::<Vec<_>>(),
        vec![format!("{mac}/")],
        "{body:?}"
    );
    let base = format!("network/interfaces/macs/{mac}/");
    assert_eq!(
        m.md_ok(a, &format!("{base}network-interface-id")),
        "eni-node-a-primary"
    );
    assert_eq!(
        m.md_ok(a, &format!("{base}primary-ip-address")),
        "192.168.1.10"
    );
    assert_eq!(m.md_ok(a, &format!("{base}netmask")), "255.255.255.0");
    assert_eq!(m.md_ok(a, &format!("{base}gateway")), "192.168.1.253");
    assert_eq!(m.md_ok(a, &format!("{base}vpc-id")), "vpc-mock");
    assert_eq!(
        m.md_ok(a, &format!("{base}vpc-cidr-block")),
        "192.168.0.0/16"
    );
    assert_eq!(m.md_ok(a, &format!("{base}vswitch-id")), "vsw-h1");
    assert_eq!(
        m.md_ok(a, &format!("{base}vswitch-cidr-block")),
        "192.168.1.0/24"
    );
    assert_eq!(
        json_list(&m.md_ok(a, &format!("{base}private-ipv4s"))),
        vec!["192.168.1.10"]
    );
    assert_eq!(
        json_list(&m.md_ok(a, &format!("{base}ipv4-prefixes"))),
        Vec::<String>::new()
    );
    // Another instance, another zone.
    let i = "i-node-i";
    assert_eq!(m.md_ok(i, "instance-id"), "i-node-i");
    assert_eq!(m.md_ok(i, "zone-id"), "cn-hangzhou-i");
    assert_eq!(m.md_ok(i, "vswitch-cidr-block"), "192.168.3.0/24");
    let mac_i = m.md_ok(i, "mac");
    assert_ne!(mac_i, mac);
    assert_eq!(
        m.md_ok(i, &format!("network/interfaces/macs/{mac_i}/gateway")),
        "192.168.3.253"
    );
    // A MAC of another instance is not this instance's.
    assert_eq!(m.md(i, &format!("{base}network-interface-id")).status, 404);
    // Unknown paths and instances.
    assert_eq!(m.md(a, "no-such-thing").status, 404);
    assert_eq!(m.md("i-nope", "instance-id").status, 404);
}

#[test]
fn instance_selection_without_header() {
    // Several instances, request from 127.0.0.1 (no instance's primary IP): 404.
    let m = Mock::start_default();
    let r = m.get("/latest/meta-data/instance-id", &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    // Exactly one instance: that one.
    let mut w = default_world();
    let first = w["instances"][0].clone();
    w["instances"] = json!([first]);
    let m = Mock::start(&w);
    let r = m.get("/latest/meta-data/instance-id", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().trim(), "i-node-a");
}

#[test]
fn tokens() {
    let m = Mock::start_default();
    let put = |ttl: Option<&str>| {
        let h: Vec<(&str, &str)> = match ttl {
            Some(t) => vec![
                ("X-Mock-Instance-Id", "i-node-a"),
                ("X-aliyun-ecs-metadata-token-ttl-seconds", t),
            ],
            None => vec![("X-Mock-Instance-Id", "i-node-a")],
        };
        m.http("PUT", "/latest/api/token", &pairs(&h), b"", DEFAULT_TIMEOUT)
            .unwrap()
    };
    let r = put(Some("21600"));
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.text().trim().to_string();
    assert!(!token.is_empty());
    let get = |tok: &str| {
        m.get(
            "/latest/meta-data/instance-id",
            &[
                ("X-Mock-Instance-Id", "i-node-a"),
                ("X-aliyun-ecs-metadata-token", tok),
            ],
        )
    };
    let r = get(&token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().trim(), "i-node-a");
    assert_eq!(get("not-a-token").status, 401);
    assert_eq!(get("").status, 401);
    // Without the token header at all: still fine.
    assert_eq!(m.md_ok("i-node-a", "instance-id"), "i-node-a");
    // TTL out of range.
    for bad in ["0", "21601", "abc"] {
        let r = put(Some(bad));
        assert!(
            (400..500).contains(&r.status),
            "ttl {bad}: {} {}",
            r.status,
            r.text()
        );
    }
    // A token with a 1 s TTL dies.
    let r = put(Some("1"));
    assert_eq!(r.status, 200);
    let short = r.text().trim().to_string();
    assert_eq!(get(&short).status, 200);
    sleep_ms(2100);
    assert_eq!(get(&short).status, 401, "a token past its TTL");
    assert_eq!(get(&token).status, 200);
}

#[test]
fn attach_shows_after_lag_and_detach_at_once() {
    let mut w = with_timing(default_world(), "metadata_lag_ms", json!(500));
    w = with_timing(w, "attach_ms", json!(100));
    w = with_timing(w, "detach_ms", json!(100));
    let m = Mock::start(&w);
    let a = "i-node-a";
    let e = m.create_eni_id("vsw-h1", &[("SecondaryPrivateIpAddressCount", "2")]);
    let mac = mac_of(&m, &e);
    m.ok(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &e), ("InstanceId", a)],
    );
    m.wait_status(&e, "InUse", Duration::from_secs(10));
    let t_inuse = Instant::now();
    assert!(
        !m.md_macs(a).contains(&mac),
        "the new MAC shows before metadata_lag_ms"
    );
    let appeared = loop {
        if m.md_macs(a).contains(&mac) {
            break t_inuse.elapsed();
        }
        assert!(
            t_inuse.elapsed() < Duration::from_secs(5),
            "the MAC never showed"
        );
        sleep_ms(15);
    };
    assert!(
        appeared >= Duration::from_millis(380),
        "shown {appeared:?} after InUse, lag is 500 ms"
    );
    assert!(
        appeared <= Duration::from_millis(1500),
        "shown {appeared:?} after InUse, lag is 500 ms"
    );
    let base = format!("network/interfaces/macs/{mac}/");
    assert_eq!(m.md_ok(a, &format!("{base}network-interface-id")), e);
    assert_eq!(
        m.md_ok(a, &format!("{base}primary-ip-address")),
        "192.168.1.1"
    );
    assert_eq!(
        json_list(&m.md_ok(a, &format!("{base}private-ipv4s"))),
        vec!["192.168.1.1", "192.168.1.2", "192.168.1.3"]
    );
    assert_eq!(m.md_ok(a, &format!("{base}netmask")), "255.255.255.0");
    assert_eq!(m.md_ok(a, &format!("{base}gateway")), "192.168.1.253");
    assert_eq!(m.md_ok(a, &format!("{base}vswitch-id")), "vsw-h1");
    assert_eq!(m.md_macs(a).len(), 2);
    // Another instance does not see it.
    assert_eq!(m.md_macs("i-node-b").len(), 1);

    // Detach: gone at once (by the time the ENI is Available at the latest).
    m.ok(
        "DetachNetworkInterface",
        &[("NetworkInterfaceId", &e), ("InstanceId", a)],
    );
    m.wait_status(&e, "Available", Duration::from_secs(10));
    assert!(!m.md_macs(a).contains(&mac), "a detached ENI still shows");
    assert_eq!(m.md(a, &format!("{base}private-ipv4s")).status, 404);
}

#[test]
fn assign_shows_after_lag_and_unassign_at_once() {
    let m = Mock::start(&with_timing(default_world(), "metadata_lag_ms", json!(0)));
    let a = "i-node-a";
    let e = m.attached_eni("vsw-h1", a, &[]);
    let mac = mac_of(&m, &e);
    let path = format!("network/interfaces/macs/{mac}/private-ipv4s");
    // lag 0 at start; raise it at run time.
    assert_eq!(json_list(&m.md_ok(a, &path)), vec!["192.168.1.1"]);
    m.set_faults(json!({"timing": {"attach_ms": 50, "detach_ms": 50, "delete_ms": 50, "metadata_lag_ms": 500}}));
    let t0 = Instant::now();
    m.ok(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("PrivateIpAddress.1", "192.168.1.50"),
        ],
    );
    assert_eq!(
        json_list(&m.md_ok(a, &path)),
        vec!["192.168.1.1"],
        "assigned address showed before the lag"
    );
    let appeared = loop {
        if json_list(&m.md_ok(a, &path)).contains(&"192.168.1.50".to_string()) {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "never showed");
        sleep_ms(15);
    };
    assert!(appeared >= Duration::from_millis(450), "{appeared:?}");
    assert!(appeared <= Duration::from_millis(1500), "{appeared:?}");
    m.ok(
        "UnassignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e),
            ("PrivateIpAddress.1", "192.168.1.50"),
        ],
    );
    assert_eq!(
        json_list(&m.md_ok(a, &path)),
        vec!["192.168.1.1"],
        "an unassigned address must disappear at once"
    );
}

#[test]
fn small_vswitch_netmask_and_prefixes() {
    let m = Mock::start_default();
    let a = "i-node-a";
    let e = m.attached_eni("vsw-h4", a, &[]);
    let mac = mac_of(&m, &e);
    let base = format!("network/interfaces/macs/{mac}/");
    assert_eq!(m.md_ok(a, &format!("{base}netmask")), "255.255.255.248");
    assert_eq!(m.md_ok(a, &format!("{base}gateway")), "192.168.4.5");
    assert_eq!(
        m.md_ok(a, &format!("{base}vswitch-cidr-block")),
        "192.168.4.0/29"
    );
    let e2 = m.attached_eni("vsw-h1", a, &[]);
    let v = m.ok(
        "AssignPrivateIpAddresses",
        &[("NetworkInterfaceId", &e2), ("Ipv4PrefixCount", "1")],
    );
    let p = v["AssignedPrivateIpAddressesSet"]["Ipv4PrefixSet"]["Ipv4Prefixes"][0]
        .as_str()
        .unwrap()
        .to_string();
    let mac2 = mac_of(&m, &e2);
    assert_eq!(
        json_list(&m.md_ok(a, &format!("network/interfaces/macs/{mac2}/ipv4-prefixes"))),
        vec![p]
    );
}

// ------------------------------------------------------------------------------------------
// RAM role credentials
// ------------------------------------------------------------------------------------------

fn fetch_creds(m: &Mock, instance: &str) -> Value {
    let role = m.md_ok(instance, "ram/security-credentials/");
    assert_eq!(
        role.lines().map(str::trim).collect::<Vec<_>>(),
        vec!["node-role"]
    );
    let r = m.md(instance, "ram/security-credentials/node-role");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    for k in [
        "AccessKeyId",
        "AccessKeySecret",
        "SecurityToken",
        "Expiration",
        "LastUpdated",
    ] {
        assert!(v[k].as_str().is_some_and(|x| !x.is_empty()), "{k}: {v}");
    }
    assert_eq!(v["Code"], "Success", "{v}");
    assert!(s(&v, "AccessKeyId").starts_with("STS."), "{v}");
    v
}

fn parse_time(t: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("not an RFC 3339 time {t:?}: {e}"))
}

fn cred_of(v: &Value) -> Cred {
    Cred::new(
        s(v, "AccessKeyId"),
        s(v, "AccessKeySecret"),
        Some(s(v, "SecurityToken")),
    )
}

#[test]
fn ram_role_credentials_work() {
    let m = Mock::start_default();
    let v = fetch_creds(&m, "i-node-a");
    let exp = parse_time(s(&v, "Expiration"));
    let now = time::OffsetDateTime::now_utc();
    let ttl = (exp - now).whole_seconds();
    assert!(
        (3500..=3610).contains(&ttl),
        "Expiration {} is {ttl} s away, credential_ttl_s 3600",
        s(&v, "Expiration")
    );
    let c = cred_of(&v);
    let (st, r) = m.call_as(&c, "DescribeInstanceTypes", &[]);
    assert_eq!(st, 200, "V1 with the role's temporary key: {r}");
    let (st, r) = m.call_v3(&c, "DescribeVSwitches", &[]);
    assert_eq!(st, 200, "V3 with the role's temporary key: {r}");
    // A fresh key each fetch; both work.
    let v2 = fetch_creds(&m, "i-node-a");
    assert_ne!(v2["AccessKeyId"], v["AccessKeyId"]);
    let (st, r) = m.call_as(&cred_of(&v2), "DescribeInstanceTypes", &[]);
    assert_eq!(st, 200, "{r}");
    // The token is required and must match.
    let no_token = Cred::new(&c.id, &c.secret, None);
    let (st, r) = m.call_as(&no_token, "DescribeInstanceTypes", &[]);
    assert!((400..500).contains(&st), "{r}");
    assert_eq!(
        r["Code"], "InvalidSecurityToken.MismatchWithAccessKey",
        "{r}"
    );
    let wrong = Cred::new(&c.id, &c.secret, Some(s(&v2, "SecurityToken")));
    let (_, r) = m.call_as(&wrong, "DescribeInstanceTypes", &[]);
    assert_eq!(
        r["Code"], "InvalidSecurityToken.MismatchWithAccessKey",
        "{r}"
    );
    // The secret matters.
    let bad = Cred::new(&c.id, "nope", c.token.as_deref());
    let (_, r) = m.call_as(&bad, "DescribeInstanceTypes", &[]);
    assert_eq!(r["Code"], "SignatureDoesNotMatch", "{r}");
    // An instance without a role has none to list.
    let r = m.md("i-node-b", "ram/security-credentials/node-role");
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn ram_role_credentials_expire() {
    let mut w = default_world();
    w["ram_roles"] = json!([{"name": "node-role", "credential_ttl_s": 1}]);
    let m = Mock::start(&w);
    let v = fetch_creds(&m, "i-node-a");
    let c = cred_of(&v);
    let (st, r) = m.call_as(&c, "DescribeInstanceTypes", &[]);
    assert_eq!(st, 200, "a fresh temporary key: {r}");
    let exp = parse_time(s(&v, "Expiration"));
    let now = time::OffsetDateTime::now_utc();
    assert!(
        (exp - now).whole_seconds() <= 2,
        "Expiration {exp} for credential_ttl_s 1"
    );
    // Wait until safely past Expiration.
    let wait = (exp - now).whole_milliseconds().max(0) as u64 + 1200;
    sleep_ms(wait);
    let (st, r) = m.call_as(&c, "DescribeInstanceTypes", &[]);
    assert!((400..500).contains(&st), "{st} {r}");
    assert_eq!(r["Code"], "InvalidSecurityToken.Expired", "{r}");
    check_error_shape(&r);
    let (_, r) = m.call_v3(&c, "DescribeInstanceTypes", &[]);
    assert_eq!(r["Code"], "InvalidSecurityToken.Expired", "{r}");
    // A new fetch works again.
    let (st, r) = m.call_as(
        &cred_of(&fetch_creds(&m, "i-node-a")),
        "DescribeInstanceTypes",
        &[],
    );
    assert_eq!(st, 200, "{r}");
}
