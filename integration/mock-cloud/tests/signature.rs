//! Signature verification: V1 and V3, timestamps, nonces, keys, STS tokens.

mod common;

use common::*;
use serde_json::Value;

const T: std::time::Duration = DEFAULT_TIMEOUT;

fn send(m: &Mock, method: &str, in_body: bool, p: &[(String, String)]) -> (u16, Value) {
    let r = m.send_v1(method, in_body, p, T).unwrap();
    check_request_id(&r);
    (r.status, r.json())
}

fn expect_code(sv: (u16, Value), status: Option<u16>, code: &str) -> Value {
    let (st, v) = sv;
    assert_eq!(v["Code"], code, "status {st}: {v}");
    match status {
        Some(want) => assert_eq!(st, want, "{v}"),
        None => assert!((400..500).contains(&st), "want a 4xx, got {st}: {v}"),
    }
    check_error_shape(&v);
    v
}

fn eni_count(m: &Mock) -> usize {
    m.state()["enis"].as_array().unwrap().len()
}

// ------------------------------------------------------------------------------------------
// V1
// ------------------------------------------------------------------------------------------

#[test]
fn v1_get_with_query() {
    let m = Mock::start_default();
    let mut p = m.v1_params(&Cred::test(), "DescribeInstanceTypes", "2014-05-26", &[]);
    sign_v1("testsecret", "GET", &mut p);
    let (st, v) = send(&m, "GET", false, &p);
    assert_eq!(st, 200, "{v}");
    assert!(v["InstanceTypes"]["InstanceType"].is_array(), "{v}");
}

#[test]
fn v1_post_with_form_body() {
    let m = Mock::start_default();
    let mut p = m.v1_params(
        &Cred::test(),
        "CreateNetworkInterface",
        "2014-05-26",
        &[
            ("VSwitchId", "vsw-h1"),
            ("SecurityGroupIds.1", "sg-nodes"),
            ("Tag.1.Key", "owner"),
            ("Tag.1.Value", "a b*~+/&="),
        ],
    );
    sign_v1("testsecret", "POST", &mut p);
    let (st, v) = send(&m, "POST", true, &p);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["Tags"]["Tag"][0]["TagValue"], "a b*~+/&=", "{v}");
}

#[test]
fn v1_post_with_query() {
    let m = Mock::start_default();
    let mut p = m.v1_params(
        &Cred::test(),
        "DescribeVSwitches",
        "2014-05-26",
        &[("VSwitchId", "vsw-h1")],
    );
    sign_v1("testsecret", "POST", &mut p);
    let (st, v) = send(&m, "POST", false, &p);
    assert_eq!(st, 200, "{v}");
}

#[test]
fn v1_post_split_between_query_and_body() {
    let m = Mock::start_default();
    let mut p = m.v1_params(
        &Cred::test(),
        "CreateNetworkInterface",
        "2014-05-26",
        &[
            ("VSwitchId", "vsw-h1"),
            ("SecurityGroupId", "sg-nodes"),
            ("Description", "split"),
        ],
    );
    sign_v1("testsecret", "POST", &mut p);
    let (q, b): (Vec<_>, Vec<_>) = p
        .iter()
        .cloned()
        .partition(|(k, _)| k.starts_with('S') || k == "Action");
    let enc = |v: &[(String, String)]| {
        v.iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    };
    let r = m
        .http(
            "POST",
            &format!("/?{}", enc(&q)),
            &pairs(&[("Content-Type", "application/x-www-form-urlencoded")]),
            enc(&b).as_bytes(),
            T,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["Description"], "split");
}

#[test]
fn v1_method_must_match() {
    let m = Mock::start_default();
    let mut p = m.v1_params(&Cred::test(), "DescribeInstanceTypes", "2014-05-26", &[]);
    sign_v1("testsecret", "GET", &mut p);
    expect_code(send(&m, "POST", false, &p), None, "SignatureDoesNotMatch");
}

#[test]
fn v1_wrong_secret_shows_string_to_sign() {
    let m = Mock::start_default();
    let mut p = m.v1_params(
        &Cred::test(),
        "DescribeInstanceTypes",
        "2014-05-26",
        &[("InstanceTypes.1", "ecs.g7.large")],
    );
    sign_v1("not-the-secret", "POST", &mut p);
    let v = expect_code(send(&m, "POST", false, &p), None, "SignatureDoesNotMatch");
    let ours = v1_string_to_sign("POST", &p);
    let msg = s(&v, "Message");
    assert!(msg.contains("server string to sign is:"), "{v}");
    assert!(
        msg.contains(&ours),
        "the server's string to sign differs from ours.\nours:   {ours}\nserver: {msg}"
    );
}

#[test]
fn v1_tampered_parameter() {
    let m = Mock::start_default();
    let mut p = m.v1_params(
        &Cred::test(),
        "CreateNetworkInterface",
        "2014-05-26",
        &[("VSwitchId", "vsw-h1"), ("SecurityGroupId", "sg-nodes")],
    );
    sign_v1("testsecret", "POST", &mut p);
    set_param(&mut p, "VSwitchId", "vsw-i1");
    expect_code(send(&m, "POST", false, &p), None, "SignatureDoesNotMatch");
    assert_eq!(eni_count(&m), 4);
}

#[test]
fn v1_unknown_access_key() {
    let m = Mock::start_default();
    let c = Cred::new("nobody", "testsecret", None);
    let (st, v) = m.call_as(&c, "DescribeInstanceTypes", &[]);
    expect_code((st, v), Some(404), "InvalidAccessKeyId.NotFound");
}

#[test]
fn v1_timestamps() {
    let m = Mock::start_default();
    for (offset, code) in [
        (-20 * 60, "InvalidTimeStamp.Expired"),
        (20 * 60, "InvalidTimeStamp.Expired"),
    ] {
        let mut p = m.v1_params(&Cred::test(), "DescribeInstanceTypes", "2014-05-26", &[]);
        set_param(&mut p, "Timestamp", &timestamp(offset));
        sign_v1("testsecret", "POST", &mut p);
        expect_code(send(&m, "POST", false, &p), None, code);
    }
    for bad in ["yesterday", "2024-13-45T99:00:00Z", "2024/01/01 00:00:00"] {
        let mut p = m.v1_params(&Cred::test(), "DescribeInstanceTypes", "2014-05-26", &[]);
        set_param(&mut p, "Timestamp", bad);
        sign_v1("testsecret", "POST", &mut p);
        expect_code(send(&m, "POST", false, &p), None, "InvalidTimeStamp.Format");
    }
    // Within 15 minutes either way is fine.
    for offset in [-14 * 60, 14 * 60] {
        let mut p = m.v1_params(&Cred::test(), "DescribeInstanceTypes", "2014-05-26", &[]);
        set_param(&mut p, "Timestamp", &timestamp(offset));
        sign_v1("testsecret", "POST", &mut p);
        let (st, v) = send(&m, "POST", false, &p);
        assert_eq!(st, 200, "offset {offset}: {v}");
    }
}

#[test]
fn v1_nonce_reuse() {
    let m = Mock::start_default();
    let n = nonce();
    let mut p = m.v1_params(
        &Cred::test(),
        "DescribeInstanceTypes",
        "2014-05-26",
        &[("SignatureNonce", &n)],
    );
    sign_v1("testsecret", "POST", &mut p);
    let (st, v) = send(&m, "POST", false, &p);
    assert_eq!(st, 200, "{v}");
    // The very same request again.
    expect_code(send(&m, "POST", false, &p), Some(400), "SignatureNonceUsed");
    // Same nonce, other action, fresh signature.
    let mut p = m.v1_params(
        &Cred::test(),
        "DescribeVSwitches",
        "2014-05-26",
        &[("SignatureNonce", &n)],
    );
    sign_v1("testsecret", "POST", &mut p);
    expect_code(send(&m, "POST", false, &p), Some(400), "SignatureNonceUsed");
    // A nonce that was refused for a bad signature... and a fresh nonce works.
    let (st, v) = m.call("DescribeVSwitches", &[]);
    assert_eq!(st, 200, "{v}");
}

#[test]
fn v1_no_signature() {
    let m = Mock::start_default();
    let p = m.v1_params(&Cred::test(), "DescribeInstanceTypes", "2014-05-26", &[]);
    expect_code(send(&m, "POST", false, &p), None, "IncompleteSignature");
    // Nothing at all but the action.
    let r = m
        .http(
            "GET",
            "/?Action=DescribeInstanceTypes&Version=2014-05-26&Format=JSON",
            &[],
            b"",
            T,
        )
        .unwrap();
    check_request_id(&r);
    expect_code((r.status, r.json()), None, "IncompleteSignature");
}

#[test]
fn v1_sts_key_needs_its_token() {
    let m = Mock::start_default();
    let (st, v) = m.call_as(&Cred::sts(), "DescribeInstanceTypes", &[]);
    assert_eq!(st, 200, "{v}");
    let (st, v) = m.call_as(
        &Cred::new("stsid", "stssecret", None),
        "DescribeInstanceTypes",
        &[],
    );
    expect_code((st, v), None, "InvalidSecurityToken.MismatchWithAccessKey");
    let (st, v) = m.call_as(
        &Cred::new("stsid", "stssecret", Some("wrong-token")),
        "DescribeInstanceTypes",
        &[],
    );
    expect_code((st, v), None, "InvalidSecurityToken.MismatchWithAccessKey");
}

#[test]
fn v1_format_and_region() {
    let m = Mock::start_default();
    let (st, v) = m.call("DescribeInstanceTypes", &[("Format", "XML")]);
    expect_code((st, v), Some(400), "InvalidParameter");
    let (st, v) = m.call("DescribeInstanceTypes", &[("RegionId", "cn-nowhere")]);
    expect_code((st, v), None, "InvalidRegionId.NotFound");
    // RegionId may be left out.
    let mut p = m.v1_params(&Cred::test(), "DescribeInstanceTypes", "2014-05-26", &[]);
    remove_param(&mut p, "RegionId");
    sign_v1("testsecret", "POST", &mut p);
    let (st, v) = send(&m, "POST", false, &p);
    assert_eq!(st, 200, "{v}");
}

// ------------------------------------------------------------------------------------------
// V3
// ------------------------------------------------------------------------------------------

fn v3(m: &Mock, r: &V3Request) -> (u16, Value) {
    let resp = m.send_v3(r, T).unwrap();
    check_request_id(&resp);
    (resp.status, resp.json())
}

#[test]
fn v3_ok() {
    let m = Mock::start_default();
    let (st, v) = m.call_v3(
        &Cred::test(),
        "DescribeInstanceTypes",
        &[("InstanceTypes.1", "ecs.g7.large")],
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["InstanceTypes"]["InstanceType"][0]["EniQuantity"], 3,
        "{v}"
    );
    let (st, v) = m.call_v3(
        &Cred::test(),
        "CreateNetworkInterface",
        &[
            ("VSwitchId", "vsw-h1"),
            ("SecurityGroupId", "sg-nodes"),
            ("Tag.1.Key", "k"),
            ("Tag.1.Value", "a b*"),
        ],
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["Tags"]["Tag"][0]["TagValue"], "a b*", "{v}");
    // The VPC version for DescribeVSwitches.
    let mut r = m.v3_request(&Cred::test(), "DescribeVSwitches", "2016-04-28", &[], b"");
    r.sign(&Cred::test(), None);
    let (st, v) = v3(&m, &r);
    assert_eq!(st, 200, "{v}");
}

#[test]
fn v3_parameters_in_form_body() {
    let m = Mock::start_default();
    let body = b"VSwitchId=vsw-h1&SecurityGroupId=sg-nodes&Description=in%20body";
    let mut r = m.v3_request(
        &Cred::test(),
        "CreateNetworkInterface",
        "2014-05-26",
        &[],
        body,
    );
    r.sign(&Cred::test(), None);
    let (st, v) = v3(&m, &r);
    assert_eq!(st, 200, "{v}");
    let id = s(&v, "NetworkInterfaceId").to_string();
    assert_eq!(m.eni(&id).unwrap()["Description"], "in body");
}

#[test]
fn v3_wrong_secret() {
    let m = Mock::start_default();
    let mut r = m.v3_request(
        &Cred::test(),
        "DescribeInstanceTypes",
        "2014-05-26",
        &[],
        b"",
    );
    r.sign(&Cred::new("testid", "wrong", None), None);
    expect_code(v3(&m, &r), None, "SignatureDoesNotMatch");
}

#[test]
fn v3_tampered_query() {
    let m = Mock::start_default();
    let mut r = m.v3_request(
        &Cred::test(),
        "CreateNetworkInterface",
        "2014-05-26",
        &[("VSwitchId", "vsw-h1"), ("SecurityGroupId", "sg-nodes")],
        b"",
    );
    r.sign(&Cred::test(), None);
    r.query.retain(|(k, _)| k != "VSwitchId");
    r.query.push(("VSwitchId".into(), "vsw-i1".into()));
    expect_code(v3(&m, &r), None, "SignatureDoesNotMatch");
    assert_eq!(eni_count(&m), 4);
}

#[test]
fn v3_unknown_key() {
    let m = Mock::start_default();
    let c = Cred::new("nobody", "x", None);
    let (st, v) = m.call_v3(&c, "DescribeInstanceTypes", &[]);
    expect_code((st, v), Some(404), "InvalidAccessKeyId.NotFound");
}

#[test]
fn v3_body_hash_mismatch() {
    let m = Mock::start_default();
    // The body says one thing, the (signed) hash header another: refused, nothing done.
    let mut r = m.v3_request(
        &Cred::test(),
        "CreateNetworkInterface",
        "2014-05-26",
        &[("VSwitchId", "vsw-h1"), ("SecurityGroupId", "sg-nodes")],
        b"Description=signed",
    );
    r.sign(&Cred::test(), None);
    r.body = b"Description=evil".to_vec();
    let (st, v) = v3(&m, &r);
    assert!(
        (400..500).contains(&st),
        "a body not matching x-acs-content-sha256 was accepted: {st} {v}"
    );
    check_error_shape(&v);
    // Also when the header was computed over nothing while a body is sent.
    let mut r = m.v3_request(
        &Cred::test(),
        "CreateNetworkInterface",
        "2014-05-26",
        &[("VSwitchId", "vsw-h1"), ("SecurityGroupId", "sg-nodes")],
        b"Description=x",
    );
    r.set_header("x-acs-content-sha256", EMPTY_SHA256);
    r.sign(&Cred::test(), None);
    let (st, v) = v3(&m, &r);
    assert!((400..500).contains(&st), "{st} {v}");
    assert_eq!(eni_count(&m), 4);
}

#[test]
fn v3_required_headers_must_be_signed() {
    let m = Mock::start_default();
    // host not signed.
    let mut r = m.v3_request(
        &Cred::test(),
        "DescribeInstanceTypes",
        "2014-05-26",
        &[],
        b"",
    );
    r.sign(
        &Cred::test(),
        Some(&[
            "x-acs-action",
            "x-acs-version",
            "x-acs-date",
            "x-acs-signature-nonce",
            "x-acs-content-sha256",
        ]),
    );
    let (st, v) = v3(&m, &r);
    assert!((400..500).contains(&st), "host unsigned but accepted: {v}");
    check_error_shape(&v);
    // x-acs-date not signed.
    let mut r = m.v3_request(
        &Cred::test(),
        "DescribeInstanceTypes",
        "2014-05-26",
        &[],
        b"",
    );
    r.sign(
        &Cred::test(),
        Some(&[
            "host",
            "x-acs-action",
            "x-acs-version",
            "x-acs-signature-nonce",
            "x-acs-content-sha256",
        ]),
    );
    let (st, v) = v3(&m, &r);
    assert!(
        (400..500).contains(&st),
        "x-acs-date unsigned but accepted: {v}"
    );
    // x-acs-content-sha256 missing altogether.
    let mut r = m.v3_request(
        &Cred::test(),
        "DescribeInstanceTypes",
        "2014-05-26",
        &[],
        b"",
    );
    r.remove_header("x-acs-content-sha256");
    r.sign(&Cred::test(), None);
    let (st, v) = v3(&m, &r);
    assert!(
        (400..500).contains(&st),
        "x-acs-content-sha256 missing but accepted: {v}"
    );
}

#[test]
fn v3_timestamp_and_nonce() {
    let m = Mock::start_default();
    let mut r = m.v3_request(
        &Cred::test(),
        "DescribeInstanceTypes",
        "2014-05-26",
        &[],
        b"",
    );
    r.set_header("x-acs-date", &timestamp(-20 * 60));
    r.sign(&Cred::test(), None);
    expect_code(v3(&m, &r), None, "InvalidTimeStamp.Expired");
    let mut r = m.v3_request(
        &Cred::test(),
        "DescribeInstanceTypes",
        "2014-05-26",
        &[],
        b"",
    );
    r.set_header("x-acs-date", "not-a-date");
    r.sign(&Cred::test(), None);
    expect_code(v3(&m, &r), None, "InvalidTimeStamp.Format");

    let mut r = m.v3_request(
        &Cred::test(),
        "DescribeInstanceTypes",
        "2014-05-26",
        &[],
        b"",
    );
    r.sign(&Cred::test(), None);
    assert_eq!(v3(&m, &r).0, 200);
    expect_code(v3(&m, &r), Some(400), "SignatureNonceUsed");
}

#[test]
fn v3_sts_token() {
    let m = Mock::start_default();
    let (st, v) = m.call_v3(&Cred::sts(), "DescribeInstanceTypes", &[]);
    assert_eq!(st, 200, "{v}");
    let (st, v) = m.call_v3(
        &Cred::new("stsid", "stssecret", None),
        "DescribeInstanceTypes",
        &[],
    );
    expect_code((st, v), None, "InvalidSecurityToken.MismatchWithAccessKey");
    let (st, v) = m.call_v3(
        &Cred::new("stsid", "stssecret", Some("nope")),
        "DescribeInstanceTypes",
        &[],
    );
    expect_code((st, v), None, "InvalidSecurityToken.MismatchWithAccessKey");
}

#[test]
fn v3_no_authorization() {
    let m = Mock::start_default();
    let r = m.v3_request(
        &Cred::test(),
        "DescribeInstanceTypes",
        "2014-05-26",
        &[],
        b"",
    );
    expect_code(v3(&m, &r), None, "IncompleteSignature");
}

// ------------------------------------------------------------------------------------------
// Logging
// ------------------------------------------------------------------------------------------

#[test]
fn requests_are_logged_without_secrets() {
    let m = Mock::start_default();
    let mut p = m.v1_params(&Cred::sts(), "DescribeInstanceTypes", "2014-05-26", &[]);
    sign_v1("stssecret", "POST", &mut p);
    let sig = p.iter().find(|(k, _)| k == "Signature").unwrap().1.clone();
    assert_eq!(send(&m, "POST", false, &p).0, 200);
    let (_, v) = m.call_as(
        &Cred::new("testid", "wrongsecret", None),
        "DescribeVSwitches",
        &[],
    );
    assert_eq!(v["Code"], "SignatureDoesNotMatch");
    let mut r = m.v3_request(&Cred::test(), "DescribeInstances", "2014-05-26", &[], b"");
    r.sign(&Cred::test(), None);
    let auth_sig = r
        .headers
        .iter()
        .find(|(k, _)| k == "Authorization")
        .unwrap()
        .1
        .rsplit('=')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(v3(&m, &r).0, 200);
    sleep_ms(300);
    let log = m.stderr();
    assert!(
        log.contains("DescribeInstanceTypes"),
        "request not logged:\n{log}"
    );
    assert!(
        log.contains("SignatureDoesNotMatch"),
        "outcome not logged:\n{log}"
    );
    assert!(log.contains("stsid"), "access key id not logged:\n{log}");
    for secret in [
        "stssecret",
        "testsecret",
        "sts-token-xyz",
        sig.as_str(),
        percent_encode(&sig).as_str(),
        auth_sig.as_str(),
    ] {
        assert!(
            !log.contains(secret),
            "{secret:?} appears in the log:\n{log}"
        );
    }
}
