//! Throttling and fault injection.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn call_full(m: &Mock, action: &str, params: &[(&str, &str)]) -> Response {
    let r = m
        .call_raw(&Cred::test(), action, params, DEFAULT_TIMEOUT)
        .unwrap();
    check_request_id(&r);
    r
}

fn retry_after_ms(r: &Response) -> u64 {
    r.header("x-acs-retry-after")
        .unwrap_or_else(|| panic!("no x-acs-retry-after on a throttled answer: {}", r.text()))
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "x-acs-retry-after is not a number of ms: {:?}",
                r.header("x-acs-retry-after")
            )
        })
}

fn action_stats(m: &Mock, action: &str) -> Value {
    m.calls()["actions"][action].clone()
}

#[test]
fn throttle_per_second() {
    let m = Mock::start_default();
    m.set_action_faults("DescribeInstanceTypes", json!({"per_second": 5}));
    let t0 = Instant::now();
    let mut results = Vec::new();
    for _ in 0..8 {
        results.push(call_full(&m, "DescribeInstanceTypes", &[]));
    }
    let elapsed = t0.elapsed();
    for (i, r) in results.iter().take(5).enumerate() {
        assert_eq!(r.status, 200, "call {i} of the burst of 5: {}", r.text());
    }
    let ok = results.iter().filter(|r| r.status == 200).count();
    // Refill is 5/s: at most one more token per 200 ms elapsed.
    let allowed = 5 + (elapsed.as_millis() / 200) as usize;
    assert!(
        ok <= allowed,
        "{ok} calls passed in {elapsed:?} with per_second 5"
    );
    let throttled: Vec<&Response> = results.iter().filter(|r| r.status != 200).collect();
    assert!(!throttled.is_empty());
    for r in &throttled {
        assert_eq!(r.status, 400, "{}", r.text());
        let v = r.json();
        assert_eq!(v["Code"], "Throttling.User", "{v}");
        check_error_shape(&v);
        let ra = retry_after_ms(r);
        assert!(
            (1..=1000).contains(&ra),
            "x-acs-retry-after {ra} ms with per_second 5"
        );
    }
    // Waiting as told lets a call pass.
    let ra = retry_after_ms(throttled.last().unwrap());
    sleep_ms(ra + 30);
    let r = call_full(&m, "DescribeInstanceTypes", &[]);
    assert_eq!(
        r.status,
        200,
        "after waiting x-acs-retry-after: {}",
        r.text()
    );
    // Other actions are not limited.
    for _ in 0..8 {
        assert_eq!(call_full(&m, "DescribeVSwitches", &[]).status, 200);
    }
    // Throttled calls count as calls.
    let st = action_stats(&m, "DescribeInstanceTypes");
    assert_eq!(st["count"], 9, "{st}");
    assert_eq!(st["ok"], (ok + 1) as u64, "{st}");
    assert_eq!(
        st["errors"]["Throttling.User"],
        throttled.len() as u64,
        "{st}"
    );
    assert_eq!(action_stats(&m, "DescribeVSwitches")["count"], 8);
}

#[test]
fn throttle_per_minute_and_status_429() {
    let m = Mock::start_default();
    m.set_faults(json!({"faults": {"throttle_status": 429, "default": {},
        "actions": {"DescribeVSwitches": {"per_minute": 3}}}}));
    for i in 0..3 {
        let r = call_full(&m, "DescribeVSwitches", &[]);
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
    }
    let r = call_full(&m, "DescribeVSwitches", &[]);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["Code"], "Throttling.User");
    let ra = retry_after_ms(&r);
    assert!(
        ra > 1000 && ra <= 60_000,
        "x-acs-retry-after {ra} ms with per_minute 3 right after 3 calls"
    );
    // Still refused a second later: the window is 60 s.
    sleep_ms(1100);
    let r = call_full(&m, "DescribeVSwitches", &[]);
    assert_eq!(r.status, 429, "{}", r.text());
    let st = action_stats(&m, "DescribeVSwitches");
    assert_eq!(
        (st["count"].as_u64(), st["ok"].as_u64()),
        (Some(5), Some(3)),
        "{st}"
    );
    assert_eq!(st["errors"]["Throttling.User"], 2, "{st}");
}

#[test]
fn throttle_from_world_file_and_default_entry() {
    let mut w = default_world();
    w["faults"] = json!({
        "blackhole": false,
        "default": {"per_second": 2},
        "actions": {"DescribeVSwitches": {"latency_ms": 0}}
    });
    let m = Mock::start(&w);
    let f = m.faults();
    assert_eq!(f["faults"]["default"]["per_second"], 2, "{f}");
    // DescribeInstanceTypes falls back to `default`.
    let codes: Vec<u16> = (0..4)
        .map(|_| call_full(&m, "DescribeInstanceTypes", &[]).status)
        .collect();
    assert_eq!(&codes[..2], &[200, 200], "{codes:?}");
    assert!(
        codes[2..].contains(&400),
        "default per_second 2 not applied: {codes:?}"
    );
    // An action with its own entry (without limits) is not throttled.
    for _ in 0..6 {
        assert_eq!(call_full(&m, "DescribeVSwitches", &[]).status, 200);
    }
}

#[test]
fn error_rate_one_changes_nothing() {
    let m = Mock::start_default();
    let before_avail = m.vswitch_available("vsw-h1");
    m.set_action_faults("CreateNetworkInterface", json!({"error_rate": 1.0}));
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let r = call_full(
            &m,
            "CreateNetworkInterface",
            &[
                ("VSwitchId", "vsw-h1"),
                ("SecurityGroupId", "sg-nodes"),
                ("ClientToken", "tok-err"),
            ],
        );
        let v = r.json();
        check_error_shape(&v);
        let code = s(&v, "Code").to_string();
        match code.as_str() {
            "InternalError" => assert_eq!(r.status, 500, "{v}"),
            "ServiceUnavailable" => assert_eq!(r.status, 503, "{v}"),
            _ => panic!("error_rate 1.0 answered {} {v}", r.status),
        }
        *seen.entry(code).or_insert(0u64) += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "both InternalError and ServiceUnavailable expected (half each): {seen:?}"
    );
    assert_eq!(
        m.state()["enis"].as_array().unwrap().len(),
        4,
        "an injected error created an ENI"
    );
    let st = action_stats(&m, "CreateNetworkInterface");
    assert_eq!(st["count"], 20, "{st}");
    assert_eq!(st["ok"], 0, "{st}");
    assert_eq!(st["errors"]["InternalError"], seen["InternalError"], "{st}");
    assert_eq!(
        st["errors"]["ServiceUnavailable"], seen["ServiceUnavailable"],
        "{st}"
    );
    // Other actions unaffected.
    assert_eq!(m.vswitch_available("vsw-h1"), before_avail);
    // Switched off: the token was never recorded, so the call runs now.
    m.set_faults(json!({"faults": {"default": {}, "actions": {}}}));
    let v = m.ok(
        "CreateNetworkInterface",
        &[
            ("VSwitchId", "vsw-h1"),
            ("SecurityGroupId", "sg-nodes"),
            ("ClientToken", "tok-err"),
        ],
    );
    assert_eq!(v["PrivateIpAddress"], "192.168.1.1", "{v}");
    assert_eq!(m.state()["enis"].as_array().unwrap().len(), 5);
}

#[test]
fn error_rate_on_assign_keeps_addresses() {
    let m = Mock::start_default();
    let e = m.attached_eni("vsw-h1", "i-node-a", &[]);
    let before = m.vswitch_available("vsw-h1");
    m.set_action_faults("AssignPrivateIpAddresses", json!({"error_rate": 1.0}));
    for _ in 0..5 {
        let r = call_full(
            &m,
            "AssignPrivateIpAddresses",
            &[
                ("NetworkInterfaceId", &e),
                ("SecondaryPrivateIpAddressCount", "2"),
            ],
        );
        assert!(r.status == 500 || r.status == 503, "{}", r.text());
    }
    assert_eq!(eni_ips(&m.eni(&e).unwrap()).len(), 1);
    assert_eq!(m.vswitch_available("vsw-h1"), before);
}

#[test]
fn drop_rate_one_carries_out_the_call() {
    let m = Mock::start_default();
    m.set_action_faults("CreateNetworkInterface", json!({"drop_rate": 1.0}));
    let params = [
        ("VSwitchId", "vsw-h1"),
        ("SecurityGroupId", "sg-nodes"),
        ("ClientToken", "tok-drop"),
    ];
    match m.call_raw(
        &Cred::test(),
        "CreateNetworkInterface",
        &params,
        Duration::from_secs(10),
    ) {
        Err(HttpError::Closed) => {}
        other => panic!("drop_rate 1.0: want the connection closed unanswered, got {other:?}"),
    }
    // It took effect.
    let enis = m.state()["enis"].as_array().unwrap().clone();
    assert_eq!(enis.len(), 5, "the dropped call was not carried out");
    let created = enis.iter().find(|e| e["type"] == "Secondary").unwrap();
    let id = s(created, "id").to_string();
    // Retried (still dropping): no second ENI.
    assert!(matches!(
        m.call_raw(
            &Cred::test(),
            "CreateNetworkInterface",
            &params,
            Duration::from_secs(10)
        ),
        Err(HttpError::Closed)
    ));
    assert_eq!(m.state()["enis"].as_array().unwrap().len(), 5);
    // Switched off, the retry with the same token answers the same ENI.
    m.set_faults(json!({"faults": {"default": {}, "actions": {}}}));
    let v = m.ok("CreateNetworkInterface", &params);
    assert_eq!(v["NetworkInterfaceId"], id.as_str(), "{v}");
    assert_eq!(m.state()["enis"].as_array().unwrap().len(), 5);
    // Dropped calls count as calls.
    let st = action_stats(&m, "CreateNetworkInterface");
    assert_eq!(st["count"], 3, "{st}");
}

#[test]
fn latency() {
    let m = Mock::start_default();
    m.set_action_faults("DescribeInstanceTypes", json!({"latency_ms": 400}));
    let t0 = Instant::now();
    m.ok("DescribeInstanceTypes", &[]);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(390), "{took:?}");
    assert!(took < Duration::from_millis(3000), "{took:?}");
    m.set_action_faults("DescribeInstanceTypes", json!({"latency_ms": [200, 300]}));
    let t0 = Instant::now();
    m.ok("DescribeInstanceTypes", &[]);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(190), "{took:?}");
    assert!(took < Duration::from_millis(3000), "{took:?}");
    // Latency applies to errors too.
    m.set_action_faults("DescribeInstanceTypes", json!({"latency_ms": 300}));
    let t0 = Instant::now();
    let (st, _) = m.call("DescribeInstanceTypes", &[("RegionId", "cn-nowhere")]);
    assert_ne!(st, 200);
    assert!(
        t0.elapsed() >= Duration::from_millis(290),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn blackhole() {
    let m = Mock::start_default();
    m.set_faults(json!({"faults": {"blackhole": true, "default": {}, "actions": {}}}));
    let t0 = Instant::now();
    match m.call_raw(
        &Cred::test(),
        "DescribeInstanceTypes",
        &[],
        Duration::from_millis(700),
    ) {
        Err(HttpError::Timeout) => {}
        other => panic!("blackhole: want a timeout, got {other:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(650));
    match m.http(
        "GET",
        "/latest/meta-data/instance-id",
        &pairs(&[("X-Mock-Instance-Id", "i-node-a")]),
        b"",
        Duration::from_millis(700),
    ) {
        Err(HttpError::Timeout) => {}
        other => panic!("blackhole: metadata should hang too, got {other:?}"),
    }
    // A call hanging now is answered once the blackhole is switched off.
    std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            m.call_raw(
                &Cred::test(),
                "DescribeInstanceTypes",
                &[],
                Duration::from_secs(10),
            )
        });
        sleep_ms(400);
        assert!(!h.is_finished(), "call answered during blackhole");
        // The admin API is not blackholed.
        assert_eq!(m.faults()["faults"]["blackhole"], true);
        m.set_faults(json!({"faults": {"blackhole": false, "default": {}, "actions": {}}}));
        let r = h.join().unwrap().expect("the hanging call");
        assert_eq!(r.status, 200, "{}", r.text());
    });
    let (st, v) = m.call("DescribeInstanceTypes", &[]);
    assert_eq!(st, 200, "{v}");
    assert_eq!(m.md_ok("i-node-a", "instance-id"), "i-node-a");
}
