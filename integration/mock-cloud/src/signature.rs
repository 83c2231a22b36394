//! Server-side verification of Alibaba Cloud OpenAPI signatures V1 (HMAC-SHA1) and V3
//! (ACS3-HMAC-SHA256), the timestamp window and nonce reuse.
//!
//! This module is the emulator's own implementation, independent of the production client's
//! signer, so that a mistake in one shows up against the other. It knows nothing of actions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Digest;
use time::OffsetDateTime;

use crate::api::ApiError;

/// How far a request's timestamp may be from the server clock, and how long nonces are kept.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// What the verifier needs to know about an access key.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// AccessKeySecret.
    pub secret: String,
    /// The security token the key requires (STS), if any.
    pub token: Option<String>,
    /// When a temporary key stops working.
    pub expires: Option<OffsetDateTime>,
}

/// A request as the verifier sees it.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// HTTP method, upper case.
    pub method: &'a str,
    /// Parameters of the query string, decoded, in order.
    pub query: &'a [(String, String)],
    /// Parameters of a form body, decoded, in order.
    pub form: &'a [(String, String)],
    /// Headers as (lower-case name, value), repeated names repeated.
    pub headers: &'a [(String, String)],
    /// The raw body.
    pub body: &'a [u8],
}

impl Incoming<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .chain(self.form.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Who signed a request that passed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The access key id.
    pub access_key_id: String,
    /// `1` or `3`.
    pub version: u8,
    /// The action, from `Action` (V1) or `x-acs-action` (V3).
    pub action: String,
}

/// Remembers nonces for the window.
#[derive(Debug, Default)]
pub struct NonceCache {
    seen: HashMap<String, Instant>,
}

impl NonceCache {
    /// Records `nonce`; false when it was seen within the window.
    pub fn insert(&mut self, nonce: &str, now: Instant) -> bool {
        if self.seen.len() > 4096 {
            self.seen.retain(|_, t| now.duration_since(*t) < WINDOW);
        }
        match self.seen.get(nonce) {
            Some(t) if now.duration_since(*t) < WINDOW => false,
            _ => {
                self.seen.insert(nonce.to_string(), now);
                true
            }
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.seen.clear();
    }
}

/// Percent-encoding as the Alibaba Cloud signers define it: `A-Z a-z 0-9 - _ . ~` literal,
/// every other byte `%XX` upper case.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// V1 string to sign over `params` (which must not include `Signature`).
pub fn v1_string_to_sign(method: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (percent_encode(k), percent_encode(v)))
        .collect();
    sorted.sort();
    let canonical = sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!("{method}&%2F&{}", percent_encode(&canonical))
}

/// V1 signature: Base64(HMAC-SHA1(secret + "&", string_to_sign)).
pub fn v1_sign(secret: &str, string_to_sign: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(format!("{secret}&").as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// V3 canonical request.
pub fn v3_canonical_request(
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    signed: &[String],
    payload_hash: &str,
) -> String {
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (percent_encode(k), percent_encode(v)))
        .collect();
    q.sort();
    let query = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut canon_headers = String::new();
    for name in signed {
        let mut values: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect();
        values.sort_unstable();
        canon_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let path = if path.is_empty() { "/" } else { path };
    format!(
        "{method}\n{path}\n{query}\n{canon_headers}\n{}\n{payload_hash}",
        signed.join(";")
    )
}

/// V3 string to sign for a canonical request.
pub fn v3_string_to_sign(canonical_request: &str) -> String {
    format!(
        "ACS3-HMAC-SHA256\n{}",
        hex::encode(sha2::Sha256::digest(canonical_request.as_bytes()))
    )
}

/// V3 signature: hex(HMAC-SHA256(secret, string_to_sign)).
pub fn v3_sign(secret: &str, string_to_sign: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(string_to_sign.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Parses `yyyy-MM-ddTHH:mm:ssZ`.
pub fn parse_timestamp(s: &str) -> Option<OffsetDateTime> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::PrimitiveDateTime::parse(s, fmt)
        .ok()
        .map(|t| t.assume_utc())
}

/// Formats `yyyy-MM-ddTHH:mm:ssZ`.
pub fn format_timestamp(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.to_offset(time::UtcOffset::UTC)
        .format(fmt)
        .expect("a UTC time always formats")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies a request. `lookup` gives the key's details; `nonces` is updated only for a
/// request whose signature is right.
pub fn verify(
    req: &Incoming<'_>,
    lookup: impl Fn(&str) -> Option<KeyInfo>,
    nonces: &mut NonceCache,
    now: OffsetDateTime,
) -> Result<Verified, ApiError> {
    if let Some(auth) = req.header("authorization") {
        if let Some(rest) = auth.strip_prefix("ACS3-HMAC-SHA256 ") {
            return verify_v3(req, rest, lookup, nonces, now);
        }
        return Err(ApiError::bad(
            "IncompleteSignature",
            "The Authorization header is not of the form 'ACS3-HMAC-SHA256 Credential=..,SignedHeaders=..,Signature=..'.",
        ));
    }
    if req.param("Signature").is_some() {
        return verify_v1(req, lookup, nonces, now);
    }
    Err(ApiError::bad(
        "IncompleteSignature",
        "The request carries neither a Signature parameter (V1) nor an ACS3-HMAC-SHA256 Authorization header (V3).",
    ))
}

fn check_time_and_key(
    key_id: &str,
    timestamp: Option<&str>,
    lookup: &impl Fn(&str) -> Option<KeyInfo>,
    now: OffsetDateTime,
    timestamp_name: &str,
) -> Result<KeyInfo, ApiError> {
    let key = lookup(key_id).ok_or_else(|| {
        ApiError::new(
            404,
            "InvalidAccessKeyId.NotFound",
            format!("Specified access key is not found: {key_id}"),
        )
    })?;
    let ts = timestamp.ok_or_else(|| ApiError::missing(timestamp_name))?;
    let t = parse_timestamp(ts).ok_or_else(|| {
        ApiError::bad(
            "InvalidTimeStamp.Format",
            format!("Specified {timestamp_name} {ts:?} is not in the format yyyy-MM-ddTHH:mm:ssZ."),
        )
    })?;
    let skew = (now - t).abs();
    if skew > time::Duration::try_from(WINDOW).expect("15 minutes fits") {
        return Err(ApiError::bad(
            "InvalidTimeStamp.Expired",
            format!(
                "Specified time stamp or date value is expired: {ts} is {} s from the server time {}.",
                skew.whole_seconds(),
                format_timestamp(now)
            ),
        ));
    }
    Ok(key)
}

fn check_token(key: &KeyInfo, given: Option<&str>, now: OffsetDateTime) -> Result<(), ApiError> {
    if let Some(expected) = &key.token {
        if given != Some(expected.as_str()) {
            return Err(ApiError::bad(
                "InvalidSecurityToken.MismatchWithAccessKey",
                "Specified SecurityToken mismatch with the AccessKey.",
            ));
        }
    }
    if let Some(exp) = key.expires {
        if now >= exp {
            return Err(ApiError::bad(
                "InvalidSecurityToken.Expired",
                format!(
                    "Specified SecurityToken is expired (at {}).",
                    format_timestamp(exp)
                ),
            ));
        }
    }
    Ok(())
}

fn verify_v1(
    req: &Incoming<'_>,
    lookup: impl Fn(&str) -> Option<KeyInfo>,
    nonces: &mut NonceCache,
    now: OffsetDateTime,
) -> Result<Verified, ApiError> {
    let key_id = req
        .param("AccessKeyId")
        .ok_or_else(|| ApiError::missing("AccessKeyId"))?;
    if req.param("SignatureMethod") != Some("HMAC-SHA1") {
        return Err(ApiError::bad(
            "InvalidParameter",
            "SignatureMethod must be HMAC-SHA1 for signature version 1.0.",
        ));
    }
    if req.param("SignatureVersion") != Some("1.0") {
        return Err(ApiError::bad(
            "InvalidParameter",
            "SignatureVersion must be 1.0 with a Signature parameter.",
        ));
    }
    let nonce = req
        .param("SignatureNonce")
        .ok_or_else(|| ApiError::missing("SignatureNonce"))?;
    let key = check_time_and_key(key_id, req.param("Timestamp"), &lookup, now, "Timestamp")?;
    let params: Vec<(String, String)> = req
        .query
        .iter()
        .chain(req.form.iter())
        .filter(|(k, _)| k != "Signature")
        .cloned()
        .collect();
    let sts = v1_string_to_sign(req.method, &params);
    let expected = v1_sign(&key.secret, &sts);
    let given = req.param("Signature").unwrap_or_default();
    if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
        return Err(ApiError::bad(
            "SignatureDoesNotMatch",
            format!(
                "Specified signature is not matched with our calculation. server string to sign is:{sts}"
            ),
        ));
    }
    check_token(&key, req.param("SecurityToken"), now)?;
    if !nonces.insert(nonce, Instant::now()) {
        return Err(nonce_used(nonce));
    }
    Ok(Verified {
        access_key_id: key_id.to_string(),
        version: 1,
        action: req.param("Action").unwrap_or_default().to_string(),
    })
}

fn nonce_used(nonce: &str) -> ApiError {
    ApiError::bad(
        "SignatureNonceUsed",
        format!("Specified signature nonce was used already: {nonce}"),
    )
}

fn verify_v3(
    req: &Incoming<'_>,
    auth: &str,
    lookup: impl Fn(&str) -> Option<KeyInfo>,
    nonces: &mut NonceCache,
    now: OffsetDateTime,
) -> Result<Verified, ApiError> {
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in auth.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (Some(key_id), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(ApiError::bad(
            "IncompleteSignature",
            "The Authorization header lacks Credential, SignedHeaders or Signature.",
        ));
    };
    let signed: Vec<String> = signed_headers
        .split(';')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for (name, _) in req.headers {
        if (name == "host" || name.starts_with("x-acs-")) && !signed.contains(name) {
            return Err(ApiError::bad(
                "IncompleteSignature",
                format!("Header {name} must be listed in SignedHeaders."),
            ));
        }
    }
    let nonce = req
        .header("x-acs-signature-nonce")
        .ok_or_else(|| ApiError::missing("x-acs-signature-nonce"))?;
    let key = check_time_and_key(key_id, req.header("x-acs-date"), &lookup, now, "x-acs-date")?;
    let payload_hash = req
        .header("x-acs-content-sha256")
        .ok_or_else(|| ApiError::missing("x-acs-content-sha256"))?;
    let actual = hex::encode(sha2::Sha256::digest(req.body));
    if !payload_hash.eq_ignore_ascii_case(&actual) {
        return Err(ApiError::bad(
            "InvalidParameter",
            format!("x-acs-content-sha256 {payload_hash} does not match the body, whose SHA-256 is {actual}."),
        ));
    }
    let canonical = v3_canonical_request(
        req.method,
        "/",
        req.query,
        req.headers,
        &signed,
        payload_hash,
    );
    let sts = v3_string_to_sign(&canonical);
    let expected = v3_sign(&key.secret, &sts);
    if !constant_time_eq(
        expected.as_bytes(),
        signature.to_ascii_lowercase().as_bytes(),
    ) {
        return Err(ApiError::bad(
            "SignatureDoesNotMatch",
            format!(
                "Specified signature is not matched with our calculation. server string to sign is:{sts}"
            ),
        ));
    }
    check_token(&key, req.header("x-acs-security-token"), now)?;
    if !nonces.insert(nonce, Instant::now()) {
        return Err(nonce_used(nonce));
    }
    Ok(Verified {
        access_key_id: key_id.to_string(),
        version: 3,
        action: req.header("x-acs-action").unwrap_or_default().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn v1_official_vector() {
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
        let sts = v1_string_to_sign("GET", &params);
        assert_eq!(sts, "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26");
        assert_eq!(v1_sign("testsecret", &sts), "OLeaidS1JvxuMvnyHOwuJ+uX5qY=");
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
        let sts = v1_string_to_sign("GET", &params);
        assert_eq!(
            v1_sign("accessKeySecret", &sts),
            "7loPmFjvDnzOVnQeQNj85S6nFGY="
        );
        params.push(("SecurityToken".into(), "accessKeyStsToken".into()));
        let sts = v1_string_to_sign("GET", &params);
        assert_eq!(
            v1_sign("accessKeySecret", &sts),
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
        let sts = v1_string_to_sign("POST", &params);
        assert!(sts.contains("a%2520b%252A~"), "{sts}");
        assert_eq!(v1_sign("testsecret", &sts), "QrRUT9pvvISP4g2ampuKV0h2YFk=");
    }

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn v3_official_vector() {
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
            ("x-acs-content-sha256", EMPTY),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-version", "2014-05-26"),
        ]);
        let signed: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
        let canon = v3_canonical_request("POST", "/", &query, &headers, &signed, EMPTY);
        assert_eq!(
            hex::encode(sha2::Sha256::digest(canon.as_bytes())),
            "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
        );
        assert_eq!(
            v3_sign("YourAccessKeySecret", &v3_string_to_sign(&canon)),
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }

    #[test]
    fn v3_sdk_vector_merges_repeated_headers() {
        let query = p(&[("test", "ok"), ("empty", "")]);
        let headers = p(&[("x-acs-test", "http"), ("x-acs-test", "https")]);
        let signed = vec!["x-acs-test".to_string()];
        let canon = v3_canonical_request(
            "",
            "",
            &query,
            &headers,
            &signed,
            "55e12e91650d2fec56ec74e1d3e4ddbfce2ef3a65890c2a19ecf88a307e76a23",
        );
        assert!(canon.contains("x-acs-test:http,https\n"), "{canon}");
        assert_eq!(
            v3_sign("secret", &v3_string_to_sign(&canon)),
            "4ab59fffe3c5738ff8a2729f90cc04fe18b02a4b15b2102cbaf92f9ff3df2ea3"
        );
    }

    fn eni_v3_headers(token: Option<&str>) -> Vec<(String, String)> {
        let mut h = p(&[
            ("host", "ecs.cn-hangzhou.aliyuncs.com"),
            ("x-acs-action", "DescribeNetworkInterfaces"),
            ("x-acs-content-sha256", EMPTY),
            ("x-acs-date", "2024-01-01T00:00:00Z"),
            ("x-acs-signature-nonce", "c0ffee000000400080000000000000002"),
            ("x-acs-version", "2014-05-26"),
        ]);
        if let Some(t) = token {
            h.push(("x-acs-security-token".into(), t.into()));
            h.sort();
        }
        h
    }

    fn eni_v3_query() -> Vec<(String, String)> {
        p(&[
            ("MaxResults", "500"),
            ("NetworkInterfaceId.1", "eni-abc"),
            ("NetworkInterfaceId.2", "eni-def"),
            ("RegionId", "cn-hangzhou"),
        ])
    }

    #[test]
    fn v3_eni_vectors() {
        for (token, want) in [
            (
                None,
                "f49f90d250315360fc910bcf0899fd8d34ff697fd05e254bf4af8b4f11a194f5",
            ),
            (
                Some("sts-token-xyz"),
                "fd293c8bc045617e0e1b1f45e49c8fd4026a04cc3391ae69de6818219848ea3b",
            ),
        ] {
            let headers = eni_v3_headers(token);
            let signed: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
            let canon =
                v3_canonical_request("POST", "/", &eni_v3_query(), &headers, &signed, EMPTY);
            assert_eq!(v3_sign("testsecret", &v3_string_to_sign(&canon)), want);
        }
    }

    fn key(token: Option<&str>) -> impl Fn(&str) -> Option<KeyInfo> + '_ {
        move |id| {
            (id == "testid").then(|| KeyInfo {
                secret: "testsecret".into(),
                token: token.map(str::to_string),
                expires: None,
            })
        }
    }

    #[test]
    fn verify_v3_end_to_end_with_token_and_nonce_reuse() {
        let headers = eni_v3_headers(Some("sts-token-xyz"));
        let signed: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
        let mut all = headers;
        all.push((
            "authorization".into(),
            format!(
                "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders={},Signature=fd293c8bc045617e0e1b1f45e49c8fd4026a04cc3391ae69de6818219848ea3b",
                signed.join(";")
            ),
        ));
        let query = eni_v3_query();
        let req = Incoming {
            method: "POST",
            query: &query,
            form: &[],
            headers: &all,
            body: b"",
        };
        let now = parse_timestamp("2024-01-01T00:05:00Z").unwrap();
        let mut nonces = NonceCache::default();
        let v = verify(&req, key(Some("sts-token-xyz")), &mut nonces, now).unwrap();
        assert_eq!(v.action, "DescribeNetworkInterfaces");
        assert_eq!(v.version, 3);
        let again = verify(&req, key(Some("sts-token-xyz")), &mut nonces, now).unwrap_err();
        assert_eq!(again.code, "SignatureNonceUsed");
        let late = parse_timestamp("2024-01-01T00:16:00Z").unwrap();
        let expired = verify(
            &req,
            key(Some("sts-token-xyz")),
            &mut NonceCache::default(),
            late,
        )
        .unwrap_err();
        assert_eq!(expired.code, "InvalidTimeStamp.Expired");
        let wrong = verify(&req, key(Some("other")), &mut NonceCache::default(), now).unwrap_err();
        assert_eq!(wrong.code, "InvalidSecurityToken.MismatchWithAccessKey");
    }

    #[test]
    fn verify_v1_rejects_tampering_and_unknown_keys() {
        let mut query = p(&[
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
            ("Signature", "QrRUT9pvvISP4g2ampuKV0h2YFk="),
        ]);
        let now = parse_timestamp("2024-01-01T00:10:00Z").unwrap();
        let req = |q: &[(String, String)], m: &'static str| -> Result<Verified, ApiError> {
            let r = Incoming {
                method: m,
                query: q,
                form: &[],
                headers: &[],
                body: b"",
            };
            verify(&r, key(None), &mut NonceCache::default(), now)
        };
        assert_eq!(
            req(&query, "POST").unwrap().action,
            "CreateNetworkInterface"
        );
        assert_eq!(
            req(&query, "GET").unwrap_err().code,
            "SignatureDoesNotMatch"
        );
        query[5].1 = "10".into();
        let err = req(&query, "POST").unwrap_err();
        assert_eq!(err.code, "SignatureDoesNotMatch");
        assert!(err.message.contains("server string to sign is:POST&%2F&"));
        query[0].1 = "nobody".into();
        let err = req(&query, "POST").unwrap_err();
        assert_eq!(
            (err.status, err.code.as_str()),
            (404, "InvalidAccessKeyId.NotFound")
        );
    }
}
