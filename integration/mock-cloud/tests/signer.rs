//! The test harness's own signer against every vector of `shared/reference/aliyun-ecs-api.md`.

mod common;

use common::*;

fn p(v: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs(v)
}

#[test]
fn percent_encode_rules() {
    assert_eq!(percent_encode("AZaz09-_.~"), "AZaz09-_.~");
    assert_eq!(percent_encode("a b*~"), "a%20b%2A~");
    assert_eq!(percent_encode("a+b/c=d&e:f"), "a%2Bb%2Fc%3Dd%26e%3Af");
    assert_eq!(percent_encode("é"), "%C3%A9");
}

#[test]
fn v1_official_doc_vector() {
    let params = p(&[
        ("AccessKeyId", "testid"),
        ("Action", "DescribeRegions"),
        ("Format", "XML"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
        ("SignatureVersion", "1.0"),
        ("Timestamp", "2016-02-23T12:46:24Z"),
        ("Version", "2014-05-26"),
    ]);
    assert_eq!(
        v1_string_to_sign("GET", &params),
        "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
    );
    assert_eq!(
        v1_signature("testsecret", "GET", &params),
        "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
    );
    // Order of input does not matter, and a Signature parameter is ignored.
    let mut rev = params.clone();
    rev.reverse();
    rev.push(("Signature".into(), "whatever".into()));
    assert_eq!(
        v1_signature("testsecret", "GET", &rev),
        "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
    );
    // The method is part of what is signed.
    assert_ne!(
        v1_signature("testsecret", "POST", &params),
        "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
    );
}

#[test]
fn v1_sdk_vectors() {
    let mut params = p(&[
        ("AccessKeyId", "accessKeyId"),
        ("Action", ""),
        ("Format", "JSON"),
        ("RegionId", "regionId"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", "MOCK_UUID"),
        ("SignatureType", ""),
        ("SignatureVersion", "1.0"),
        ("Timestamp", "mock date"),
        ("Version", ""),
    ]);
    assert_eq!(
        v1_signature("accessKeySecret", "GET", &params),
        "7loPmFjvDnzOVnQeQNj85S6nFGY="
    );
    params.push(("SecurityToken".into(), "accessKeyStsToken".into()));
    assert_eq!(
        v1_signature("accessKeySecret", "GET", &params),
        "5Nxdcler+ihqWqv0Hr2On4PsBf4="
    );
}

#[test]
fn v1_eni_vector() {
    let params = p(&[
        ("AccessKeyId", "testid"),
        ("Action", "CreateNetworkInterface"),
        ("ClientToken", "tok-1"),
        ("Format", "JSON"),
        ("RegionId", "cn-hangzhou"),
        ("SecondaryPrivateIpAddressCount", "9"),
        ("SecurityGroupIds.1", "sg-1"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", "c0ffee00-0000-4000-8000-000000000001"),
        ("SignatureVersion", "1.0"),
        ("Tag.1.Key", "owner"),
        ("Tag.1.Value", "a b*~"),
        ("Timestamp", "2024-01-01T00:00:00Z"),
        ("VSwitchId", "vsw-1"),
        ("Version", "2014-05-26"),
    ]);
    assert!(v1_canonical_query(&params).contains("Tag.1.Value=a%20b%2A~"));
    // Byte order: VSwitchId before Version.
    let cq = v1_canonical_query(&params);
    assert!(cq.find("&VSwitchId=").unwrap() < cq.find("&Version=").unwrap());
    assert_eq!(
        v1_signature("testsecret", "POST", &params),
        "QrRUT9pvvISP4g2ampuKV0h2YFk="
    );
}

#[test]
fn v3_official_doc_vector() {
    let query = p(&[
        (
            "ImageId",
            "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
        ),
        ("RegionId", "cn-shanghai"),
    ]);
    let headers = p(&[
        ("host", "ecs.cn-shanghai.aliyuncs.com"),
        ("x-acs-action", "RunInstances"),
        ("x-acs-content-sha256", EMPTY_SHA256),
        ("x-acs-date", "2023-10-26T10:22:32Z"),
        ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
        ("x-acs-version", "2014-05-26"),
    ]);
    let (cr, signed) = v3_canonical_request("POST", "/", &query, &headers, EMPTY_SHA256);
    assert_eq!(
        signed,
        "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
    );
    assert_eq!(
        sha256_hex(cr.as_bytes()),
        "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
    );
    assert_eq!(
        v3_string_to_sign(&cr),
        "ACS3-HMAC-SHA256\n7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
    );
    assert_eq!(
        v3_signature("YourAccessKeySecret", &cr),
        "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    );
    assert_eq!(sha256_hex(b""), EMPTY_SHA256);
}

#[test]
fn v3_sdk_vector() {
    let query = p(&[("test", "ok"), ("empty", "")]);
    let headers = p(&[("x-acs-test", "http"), ("x-acs-TEST", "https")]);
    let (cr, signed) = v3_canonical_request(
        "",
        "",
        &query,
        &headers,
        "55e12e91650d2fec56ec74e1d3e4ddbfce2ef3a65890c2a19ecf88a307e76a23",
    );
    assert_eq!(signed, "x-acs-test");
    assert!(cr.contains("\nempty=&test=ok\n"), "{cr}");
    assert!(cr.contains("\nx-acs-test:http,https\n"), "{cr}");
    assert_eq!(
        v3_signature("secret", &cr),
        "4ab59fffe3c5738ff8a2729f90cc04fe18b02a4b15b2102cbaf92f9ff3df2ea3"
    );
    assert!(v3_authorization("acesskey", &signed, "x")
        .starts_with("ACS3-HMAC-SHA256 Credential=acesskey,SignedHeaders=x-acs-test,Signature="));
}

#[test]
fn v3_eni_vectors() {
    let query = p(&[
        ("MaxResults", "500"),
        ("NetworkInterfaceId.1", "eni-abc"),
        ("NetworkInterfaceId.2", "eni-def"),
        ("RegionId", "cn-hangzhou"),
    ]);
    let mut headers = p(&[
        ("host", "ecs.cn-hangzhou.aliyuncs.com"),
        ("x-acs-action", "DescribeNetworkInterfaces"),
        ("x-acs-content-sha256", EMPTY_SHA256),
        ("x-acs-date", "2024-01-01T00:00:00Z"),
        ("x-acs-signature-nonce", "c0ffee000000400080000000000000002"),
        ("x-acs-version", "2014-05-26"),
    ]);
    let (cr, _) = v3_canonical_request("POST", "/", &query, &headers, EMPTY_SHA256);
    assert_eq!(
        v3_signature("testsecret", &cr),
        "f49f90d250315360fc910bcf0899fd8d34ff697fd05e254bf4af8b4f11a194f5"
    );
    headers.push(("x-acs-security-token".into(), "sts-token-xyz".into()));
    let (cr, signed) = v3_canonical_request("POST", "/", &query, &headers, EMPTY_SHA256);
    assert!(signed.contains("x-acs-security-token"));
    assert_eq!(
        v3_signature("testsecret", &cr),
        "fd293c8bc045617e0e1b1f45e49c8fd4026a04cc3391ae69de6818219848ea3b"
    );
}

#[test]
fn timestamp_format() {
    let t = timestamp(0);
    assert_eq!(t.len(), 20, "{t}");
    assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
}
