//! Alibaba Cloud request signatures: V1 (RPC, HMAC-SHA1) and V3 (ACS3-HMAC-SHA256).
//!
//! Pure functions over already-collected parameters and headers; no I/O, no clock, no nonce
//! generation (the client supplies those), so every published test vector is a unit test here.

use std::collections::BTreeMap;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Hex SHA-256 of an empty body.
pub const EMPTY_BODY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Alibaba's percentEncode: `A-Z a-z 0-9 - _ . ~` literal, every other UTF-8 byte `%XX` with
/// upper-case hex (so space is `%20` and `*` is `%2A`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
        }
    }
    out
}

/// The canonicalized query: parameters sorted by name (byte order), names and values
/// percent-encoded, `k=v` joined by `&`. Also the wire form of the query string.
pub fn canonical_query(params: &BTreeMap<String, String>) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The V1 string to sign over every parameter except `Signature`.
pub fn v1_string_to_sign(method: &str, params: &BTreeMap<String, String>) -> String {
    let mut params = params.clone();
    params.remove("Signature");
    format!(
        "{}&{}&{}",
        method,
        percent_encode("/"),
        percent_encode(&canonical_query(&params))
    )
}

/// The V1 signature: `Base64(HMAC-SHA1(secret + "&", string_to_sign))` (not yet URL-encoded).
pub fn v1_signature(method: &str, params: &BTreeMap<String, String>, secret: &str) -> String {
    let sts = v1_string_to_sign(method, params);
    let mut mac = Hmac::<Sha1>::new_from_slice(format!("{secret}&").as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(sts.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Hex SHA-256 of a request body, for `x-acs-content-sha256`.
pub fn sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// A V3 signature and what goes into the `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3Signature {
    /// The canonical request that was hashed.
    pub canonical_request: String,
    /// Signed header names, `;`-joined.
    pub signed_headers: String,
    /// Hex HMAC-SHA256.
    pub signature: String,
}

impl V3Signature {
    /// The `Authorization` header value.
    pub fn authorization(&self, access_key_id: &str) -> String {
        format!(
            "ACS3-HMAC-SHA256 Credential={access_key_id},SignedHeaders={},Signature={}",
            self.signed_headers, self.signature
        )
    }
}

/// The V3 signature of a request. `headers` may repeat a name (in any case); every `host`,
/// `content-type` and `x-acs-*` header is signed. An empty `path` is `/`.
pub fn v3_sign(
    method: &str,
    path: &str,
    query: &BTreeMap<String, String>,
    headers: &[(String, String)],
    payload_sha256_hex: &str,
    secret: &str,
) -> V3Signature {
    let mut signed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if name == "host" || name == "content-type" || name.starts_with("x-acs-") {
            signed
                .entry(name)
                .or_default()
                .push(value.trim().to_string());
        }
    }
    let mut canonical_headers = String::new();
    for (name, values) in &mut signed {
        values.sort();
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        canonical_headers.push_str(&values.join(","));
        canonical_headers.push('\n');
    }
    let signed_headers = signed.keys().cloned().collect::<Vec<_>>().join(";");
    let path = if path.is_empty() { "/" } else { path };
    let canonical_request = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{signed_headers}\n{payload_sha256_hex}",
        canonical_query(query)
    );
    let string_to_sign = format!(
        "ACS3-HMAC-SHA256\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(string_to_sign.as_bytes());
    V3Signature {
        canonical_request,
        signed_headers,
        signature: hex::encode(mac.finalize().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn hdrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn percent_encoding_rules() {
        assert_eq!(percent_encode("a b*~"), "a%20b%2A~");
        assert_eq!(percent_encode("A-z_0.9~"), "A-z_0.9~");
        assert_eq!(percent_encode("12:46+/="), "12%3A46%2B%2F%3D");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn v1_official_doc_vector() {
        let p = map(&[
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
            v1_string_to_sign("GET", &p),
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
        );
        assert_eq!(
            v1_signature("GET", &p, "testsecret"),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
        // A Signature parameter already present is not signed.
        let mut with_sig = p;
        with_sig.insert("Signature".into(), "whatever".into());
        assert_eq!(
            v1_signature("GET", &with_sig, "testsecret"),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
    }

    #[test]
    fn v1_sdk_vectors_with_and_without_sts() {
        let mut p = map(&[
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
            v1_signature("GET", &p, "accessKeySecret"),
            "7loPmFjvDnzOVnQeQNj85S6nFGY="
        );
        p.insert("SecurityToken".into(), "accessKeyStsToken".into());
        assert_eq!(
            v1_signature("GET", &p, "accessKeySecret"),
            "5Nxdcler+ihqWqv0Hr2On4PsBf4="
        );
    }

    #[test]
    fn v1_eni_vector_post() {
        let p = map(&[
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
        assert!(canonical_query(&p).contains("Tag.1.Value=a%20b%2A~"));
        // Byte order: VSwitchId sorts before Version.
        let q = canonical_query(&p);
        assert!(q.find("&VSwitchId=").unwrap() < q.find("&Version=").unwrap());
        assert_eq!(
            v1_signature("POST", &p, "testsecret"),
            "QrRUT9pvvISP4g2ampuKV0h2YFk="
        );
    }

    #[test]
    fn v3_official_doc_vector() {
        let q = map(&[
            (
                "ImageId",
                "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
            ),
            ("RegionId", "cn-shanghai"),
        ]);
        let h = hdrs(&[
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            ("x-acs-content-sha256", EMPTY_BODY_SHA256),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-version", "2014-05-26"),
        ]);
        let s = v3_sign(
            "POST",
            "/",
            &q,
            &h,
            EMPTY_BODY_SHA256,
            "YourAccessKeySecret",
        );
        assert_eq!(
            sha256_hex(s.canonical_request.as_bytes()),
            "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
        );
        assert_eq!(
            s.signature,
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
        assert_eq!(
            s.signed_headers,
            "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
        );
        assert!(s
            .authorization("AK")
            .starts_with("ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=host;"));
    }

    #[test]
    fn v3_sdk_vector_merges_repeated_headers() {
        let q = map(&[("test", "ok"), ("empty", "")]);
        let h = hdrs(&[("x-acs-test", "http"), ("x-acs-TEST", "https")]);
        let s = v3_sign(
            "",
            "",
            &q,
            &h,
            "55e12e91650d2fec56ec74e1d3e4ddbfce2ef3a65890c2a19ecf88a307e76a23",
            "secret",
        );
        assert!(s.canonical_request.contains("x-acs-test:http,https\n"));
        assert!(s.canonical_request.contains("\nempty=&test=ok\n"));
        assert_eq!(
            s.signature,
            "4ab59fffe3c5738ff8a2729f90cc04fe18b02a4b15b2102cbaf92f9ff3df2ea3"
        );
        assert_eq!(
            s.authorization("acesskey"),
            "ACS3-HMAC-SHA256 Credential=acesskey,SignedHeaders=x-acs-test,Signature=4ab59fffe3c5738ff8a2729f90cc04fe18b02a4b15b2102cbaf92f9ff3df2ea3"
        );
    }

    #[test]
    fn v3_eni_vectors_with_and_without_sts() {
        let q = map(&[
            ("MaxResults", "500"),
            ("NetworkInterfaceId.1", "eni-abc"),
            ("NetworkInterfaceId.2", "eni-def"),
            ("RegionId", "cn-hangzhou"),
        ]);
        let mut h = hdrs(&[
            ("host", "ecs.cn-hangzhou.aliyuncs.com"),
            ("x-acs-action", "DescribeNetworkInterfaces"),
            ("x-acs-content-sha256", EMPTY_BODY_SHA256),
            ("x-acs-date", "2024-01-01T00:00:00Z"),
            ("x-acs-signature-nonce", "c0ffee000000400080000000000000002"),
            ("x-acs-version", "2014-05-26"),
        ]);
        let s = v3_sign("POST", "/", &q, &h, EMPTY_BODY_SHA256, "testsecret");
        assert_eq!(
            s.signature,
            "f49f90d250315360fc910bcf0899fd8d34ff697fd05e254bf4af8b4f11a194f5"
        );
        h.push(("x-acs-security-token".into(), "sts-token-xyz".into()));
        let s = v3_sign("POST", "/", &q, &h, EMPTY_BODY_SHA256, "testsecret");
        assert_eq!(
            s.signature,
            "fd293c8bc045617e0e1b1f45e49c8fd4026a04cc3391ae69de6818219848ea3b"
        );
        assert!(s.signed_headers.contains("x-acs-security-token"));
    }

    #[test]
    fn empty_body_hash() {
        assert_eq!(sha256_hex(b""), EMPTY_BODY_SHA256);
    }
}
