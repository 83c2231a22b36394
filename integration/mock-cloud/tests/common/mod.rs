//! Black-box test harness for the `mock-cloud` binary.
//!
//! Written from `docs/mock-cloud.md` and `shared/reference/aliyun-ecs-api.md` only: it starts
//! the built binary, talks to it over plain HTTP/1.1 (std `TcpStream`), and signs requests with
//! its own V1 (HMAC-SHA1) and V3 (ACS3-HMAC-SHA256) signer.
#![allow(dead_code, clippy::print_stdout, clippy::needless_pass_by_value)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Digest as _;

// ---------------------------------------------------------------------------------------------
// Signing (from shared/reference/aliyun-ecs-api.md)
// ---------------------------------------------------------------------------------------------

/// percentEncode: `A-Z a-z 0-9 - _ . ~` literal, every other byte `%XX` (uppercase hex).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// V1 CanonicalizedQuery: every parameter but `Signature`, sorted by name (byte order),
/// `percentEncode(k)=percentEncode(v)` joined with `&`.
pub fn v1_canonical_query(params: &[(String, String)]) -> String {
    let mut p: Vec<&(String, String)> = params.iter().filter(|(k, _)| k != "Signature").collect();
    p.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(&b.1)));
    p.iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// V1 StringToSign = METHOD & %2F & percentEncode(CanonicalizedQuery).
pub fn v1_string_to_sign(method: &str, params: &[(String, String)]) -> String {
    format!(
        "{method}&%2F&{}",
        percent_encode(&v1_canonical_query(params))
    )
}

/// V1 signature: Base64(HMAC-SHA1(secret + "&", StringToSign)).
pub fn v1_signature(secret: &str, method: &str, params: &[(String, String)]) -> String {
    let sts = v1_string_to_sign(method, params);
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(format!("{secret}&").as_bytes()).unwrap();
    mac.update(sts.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// V3 canonical request and the signed header list.
///
/// `headers` may hold repeated names and any case; only `host`, `content-type` and `x-acs-*`
/// are canonicalized (lowercased, trimmed, sorted; repeated values sorted and joined by `,`).
pub fn v3_canonical_request(
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    payload_hash: &str,
) -> (String, String) {
    let path = if path.is_empty() { "/" } else { path };
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (percent_encode(k), percent_encode(v)))
        .collect();
    q.sort();
    let canonical_query = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut hs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (k, v) in headers {
        let k = k.to_ascii_lowercase();
        if k == "host" || k == "content-type" || k.starts_with("x-acs-") {
            hs.entry(k).or_default().push(v.trim().to_string());
        }
    }
    let mut canonical_headers = String::new();
    for (k, vs) in hs.iter_mut() {
        vs.sort();
        canonical_headers.push_str(&format!("{k}:{}\n", vs.join(",")));
    }
    let signed = hs.keys().cloned().collect::<Vec<_>>().join(";");
    let cr = format!(
        "{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed}\n{payload_hash}"
    );
    (cr, signed)
}

/// V3 StringToSign.
pub fn v3_string_to_sign(canonical_request: &str) -> String {
    format!(
        "ACS3-HMAC-SHA256\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// V3 signature: hex(HMAC-SHA256(secret, StringToSign)).
pub fn v3_signature(secret: &str, canonical_request: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(v3_string_to_sign(canonical_request).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// `Authorization` header value.
pub fn v3_authorization(key_id: &str, signed_headers: &str, signature: &str) -> String {
    format!(
        "ACS3-HMAC-SHA256 Credential={key_id},SignedHeaders={signed_headers},Signature={signature}"
    )
}

/// `yyyy-MM-ddTHH:mm:ssZ` for now + `offset_s`.
pub fn timestamp(offset_s: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_s);
    t.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap()
}

/// A random nonce (32 hex characters).
pub fn nonce() -> String {
    use rand::Rng;
    let n: u128 = rand::thread_rng().gen();
    format!("{n:032x}")
}

pub fn pairs(params: &[(&str, &str)]) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Cred {
    pub id: String,
    pub secret: String,
    pub token: Option<String>,
}

impl Cred {
    pub fn new(id: &str, secret: &str, token: Option<&str>) -> Cred {
        Cred {
            id: id.to_string(),
            secret: secret.to_string(),
            token: token.map(str::to_string),
        }
    }
    /// `testid`/`testsecret` of the default world.
    pub fn test() -> Cred {
        Cred::new("testid", "testsecret", None)
    }
    /// `stsid`/`stssecret` with token `sts-token-xyz` of the default world.
    pub fn sts() -> Cred {
        Cred::new("stsid", "stssecret", Some("sts-token-xyz"))
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer (status {}) is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
}

#[derive(Debug)]
pub enum HttpError {
    /// The connection was closed (FIN or RST) before any byte of an answer arrived.
    Closed,
    /// No (complete) answer within the timeout.
    Timeout,
    /// Anything else (connect refused, malformed answer, closed mid-answer).
    Other(String),
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// One request over a fresh connection (`Connection: close`).
/// `target` is the request target (`/?a=b`). A `Host` header is added unless given.
pub fn http(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + timeout;
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| HttpError::Other(format!("{e}")))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout)
        .map_err(|e| HttpError::Other(format!("connect {addr}: {e}")))?;
    s.set_nodelay(true).ok();
    s.set_write_timeout(Some(timeout)).ok();
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes)
        .map_err(|e| HttpError::Other(format!("write: {e}")))?;

    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut head_end: Option<usize> = None;
    let mut parsed: Option<(u16, Vec<(String, String)>)> = None;
    loop {
        // Is the answer complete?
        if head_end.is_none() {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                head_end = Some(i + 4);
                parsed = Some(parse_head(&buf[..i])?);
            }
        }
        if let (Some(he), Some((status, hs))) = (head_end, parsed.as_ref()) {
            let body = &buf[he..];
            let get = |n: &str| {
                hs.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.trim().to_string())
            };
            if let Some(cl) = get("content-length") {
                let cl: usize = cl
                    .parse()
                    .map_err(|_| HttpError::Other("bad content-length".into()))?;
                if body.len() >= cl {
                    return Ok(Response {
                        status: *status,
                        headers: hs.clone(),
                        body: body[..cl].to_vec(),
                    });
                }
            } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
                if let Some(b) = dechunk(body) {
                    return Ok(Response {
                        status: *status,
                        headers: hs.clone(),
                        body: b,
                    });
                }
            } else if *status == 204 || *status == 304 {
                return Ok(Response {
                    status: *status,
                    headers: hs.clone(),
                    body: vec![],
                });
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(HttpError::Timeout);
        }
        s.set_read_timeout(Some(deadline - now)).ok();
        match s.read(&mut chunk) {
            Ok(0) => {
                // EOF.
                if buf.is_empty() {
                    return Err(HttpError::Closed);
                }
                if let (Some(he), Some((status, hs))) = (head_end, parsed) {
                    let has_len = hs.iter().any(|(k, _)| {
                        k.eq_ignore_ascii_case("content-length")
                            || k.eq_ignore_ascii_case("transfer-encoding")
                    });
                    if !has_len {
                        return Ok(Response {
                            status,
                            headers: hs,
                            body: buf[he..].to_vec(),
                        });
                    }
                }
                return Err(HttpError::Other(format!(
                    "connection closed mid-answer after {} bytes: {}",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                )));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err(HttpError::Timeout)
            }
            Err(e)
                if buf.is_empty()
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::UnexpectedEof
                    ) =>
            {
                return Err(HttpError::Closed)
            }
            Err(e) => return Err(HttpError::Other(format!("read: {e}"))),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), HttpError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Other(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((status, headers))
}

/// Decodes a complete chunked body; `None` while incomplete.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = find(b, b"\r\n")?;
        let size_str = String::from_utf8_lossy(&b[..i]);
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[i + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------------
// Temp dirs
// ---------------------------------------------------------------------------------------------

static COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "mock-cloud-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TestDir { path }
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept test dir {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The world file
// ---------------------------------------------------------------------------------------------

/// The default test world (as JSON; written out as YAML).
///
/// - vsw-h1 192.168.1.0/24 (zone h): usable .1-.252, gateway .253; instances a (.10), b (.11),
///   c (.12) live there, so fresh ENIs get .1, .2, ... first.
/// - vsw-h2 192.168.2.0/28 (zone h): 12 usable (.1-.12), gateway .13, no instance.
/// - vsw-i1 192.168.3.0/24 (zone i): instance i (.10).
/// - vsw-h4 192.168.4.0/29 (zone h): 4 usable (.1-.4), no instance.
/// - ecs.g7.large: 3 ENIs, 10 IPv4/ENI, prefixes. ecs.t5.small: 2 ENIs, 3 IPv4/ENI, no prefixes.
/// - Timing: attach 50 ms, detach 50 ms, delete 50 ms, metadata lag 0; no faults.
pub fn default_world() -> Value {
    json!({
        "region": "cn-hangzhou",
        "zones": ["cn-hangzhou-h", "cn-hangzhou-i"],
        "vpc": {"id": "vpc-mock", "cidr": "192.168.0.0/16"},
        "vswitches": [
            {"id": "vsw-h1", "zone": "cn-hangzhou-h", "cidr": "192.168.1.0/24"},
            {"id": "vsw-h2", "zone": "cn-hangzhou-h", "cidr": "192.168.2.0/28"},
            {"id": "vsw-i1", "zone": "cn-hangzhou-i", "cidr": "192.168.3.0/24"},
            {"id": "vsw-h4", "zone": "cn-hangzhou-h", "cidr": "192.168.4.0/29"}
        ],
        "security_groups": ["sg-nodes", "sg-other"],
        "instance_types": [
            {"id": "ecs.g7.large", "eni_quantity": 3, "eni_private_ip_address_quantity": 10,
             "eni_ipv6_address_quantity": 10, "prefix_support": true},
            {"id": "ecs.t5.small", "eni_quantity": 2, "eni_private_ip_address_quantity": 3,
             "eni_ipv6_address_quantity": 0, "prefix_support": false}
        ],
        "instances": [
            {"id": "i-node-a", "type": "ecs.g7.large", "vswitch": "vsw-h1",
             "security_groups": ["sg-nodes"], "primary_ip": "192.168.1.10",
             "primary_eni": "eni-node-a-primary", "ram_role": "node-role"},
            {"id": "i-node-b", "type": "ecs.g7.large", "vswitch": "vsw-h1",
             "security_groups": ["sg-nodes"], "primary_ip": "192.168.1.11"},
            {"id": "i-node-c", "type": "ecs.t5.small", "vswitch": "vsw-h1",
             "security_groups": ["sg-nodes"], "primary_ip": "192.168.1.12",
             "primary_eni": "eni-node-c-primary"},
            {"id": "i-node-i", "type": "ecs.g7.large", "vswitch": "vsw-i1",
             "security_groups": ["sg-nodes"], "primary_ip": "192.168.3.10",
             "primary_eni": "eni-node-i-primary"}
        ],
        "access_keys": [
            {"id": "testid", "secret": "testsecret"},
            {"id": "stsid", "secret": "stssecret", "sts_token": "sts-token-xyz"}
        ],
        "ram_roles": [{"name": "node-role", "credential_ttl_s": 3600}],
        "timing": {"attach_ms": 50, "detach_ms": 50, "delete_ms": 50, "metadata_lag_ms": 0,
                   "attach_failure_rate": 0.0},
        "faults": {"blackhole": false, "default": {}, "actions": {}}
    })
}

/// Sets `world.timing.<key> = value`.
pub fn with_timing(mut world: Value, key: &str, value: Value) -> Value {
    world["timing"][key] = value;
    world
}

pub fn write_world(path: &Path, world: &Value) {
    let yaml = serde_yaml::to_string(world).unwrap();
    std::fs::write(path, yaml).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The mock process
// ---------------------------------------------------------------------------------------------

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mock-cloud")
}

#[derive(Debug)]
pub struct Mock {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub dir: TestDir,
    pub world_path: PathBuf,
    pub state_path: Option<PathBuf>,
    starts: u32,
}

impl Mock {
    /// Starts the mock on the default world.
    pub fn start_default() -> Mock {
        Mock::start(&default_world())
    }

    pub fn start(world: &Value) -> Mock {
        Mock::launch(world, false)
    }

    /// Starts the mock with `--state <dir>/state.json`.
    pub fn start_with_state(world: &Value) -> Mock {
        Mock::launch(world, true)
    }

    fn launch(world: &Value, state: bool) -> Mock {
        let dir = TestDir::new("mock");
        let world_path = dir.file("world.yaml");
        write_world(&world_path, world);
        let state_path = state.then(|| dir.file("state.json"));
        let mut m = Mock {
            child: None,
            addr: String::new(),
            dir,
            world_path,
            state_path,
            starts: 0,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let stderr_path = self.dir.file(&format!("stderr-{}.log", self.starts));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("--world")
            .arg(&self.world_path)
            .arg("--listen")
            .arg("127.0.0.1:0");
        if let Some(s) = &self.state_path {
            cmd.arg("--state").arg(s);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().expect("spawn mock-cloud");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            let _ = tx.send(first);
            // Keep draining so the mock never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "mock-cloud printed no first line within 30 s; stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        let prefix = "mock-cloud listening on http://";
        let line = line.trim_end();
        if !line.starts_with(prefix) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "unexpected first stdout line {line:?}; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        self.addr = line[prefix.len()..].trim_end_matches('/').to_string();
        assert!(
            self.addr.starts_with("127.0.0.1:"),
            "listen address {}",
            self.addr
        );
        self.child = Some(child);
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the mock again with the same world (and state) file.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal and waits (up to `timeout`) for the exit.
    pub fn signal_and_wait(
        &mut self,
        sig: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig).unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the mock wrote to stderr (all runs).
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        for i in 1..=self.starts {
            s.push_str(
                &std::fs::read_to_string(self.dir.file(&format!("stderr-{i}.log")))
                    .unwrap_or_default(),
            );
        }
        s
    }

    // ------------------------------------------------------------------ raw HTTP

    pub fn http(
        &self,
        method: &str,
        target: &str,
        headers: &[(String, String)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        http(&self.addr, method, target, headers, body, timeout)
    }

    pub fn get(&self, target: &str, headers: &[(&str, &str)]) -> Response {
        self.http("GET", target, &pairs(headers), b"", DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {target}: {e:?}"))
    }

    // ------------------------------------------------------------------ V1

    /// Every V1 parameter but `Signature`: common ones (with `Version`), then `params`.
    pub fn v1_params(
        &self,
        cred: &Cred,
        action: &str,
        version: &str,
        params: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let mut p = pairs(&[
            ("Action", action),
            ("Version", version),
            ("Format", "JSON"),
            ("AccessKeyId", &cred.id),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", &nonce()),
            ("Timestamp", &timestamp(0)),
            ("RegionId", "cn-hangzhou"),
        ]);
        if let Some(t) = &cred.token {
            p.push(("SecurityToken".into(), t.clone()));
        }
        // Explicit parameters override common ones.
        for (k, v) in params {
            p.retain(|(pk, _)| pk != k);
            p.push((k.to_string(), v.to_string()));
        }
        p
    }

    /// Sends already complete V1 parameters (sign them yourself with `sign_v1`).
    /// `method` is GET or POST; `in_body`: POST them as a form body, else in the query.
    pub fn send_v1(
        &self,
        method: &str,
        in_body: bool,
        params: &[(String, String)],
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let q = params
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        if in_body {
            self.http(
                method,
                "/",
                &pairs(&[("Content-Type", "application/x-www-form-urlencoded")]),
                q.as_bytes(),
                timeout,
            )
        } else {
            self.http(method, &format!("/?{q}"), &[], b"", timeout)
        }
    }

    /// Signs with V1 as `method` and sends as `method` (params in the query string).
    pub fn call_raw(
        &self,
        cred: &Cred,
        action: &str,
        params: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let mut p = self.v1_params(cred, action, "2014-05-26", params);
        sign_v1(&cred.secret, "POST", &mut p);
        self.send_v1("POST", false, &p, timeout)
    }

    /// A V1-signed call (POST, parameters in the query, like the SDKs) with `testid`.
    pub fn call(&self, action: &str, params: &[(&str, &str)]) -> (u16, Value) {
        self.call_as(&Cred::test(), action, params)
    }

    pub fn call_as(&self, cred: &Cred, action: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .call_raw(cred, action, params, DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{action}: {e:?}"));
        check_request_id(&r);
        (r.status, r.json())
    }

    /// A call that must succeed; answers its JSON.
    pub fn ok(&self, action: &str, params: &[(&str, &str)]) -> Value {
        let (s, v) = self.call(action, params);
        assert_eq!(s, 200, "{action} {params:?} failed: {v}");
        v
    }

    /// A call that must fail with `code` and HTTP `status`; answers the error JSON.
    pub fn err(&self, action: &str, params: &[(&str, &str)], status: u16, code: &str) -> Value {
        let (s, v) = self.call(action, params);
        assert_eq!(
            (s, v["Code"].as_str().unwrap_or("<none>")),
            (status, code),
            "{action} {params:?}: {v}"
        );
        check_error_shape(&v);
        v
    }

    // ------------------------------------------------------------------ V3

    /// Builds a V3 request (RPC parameters in the query, `body` as given), unsigned.
    pub fn v3_request(
        &self,
        cred: &Cred,
        action: &str,
        version: &str,
        query: &[(&str, &str)],
        body: &[u8],
    ) -> V3Request {
        let mut headers = pairs(&[
            ("host", &self.addr),
            ("x-acs-action", action),
            ("x-acs-version", version),
            ("x-acs-date", &timestamp(0)),
            ("x-acs-signature-nonce", &nonce()),
            ("x-acs-content-sha256", &sha256_hex(body)),
        ]);
        if let Some(t) = &cred.token {
            headers.push(("x-acs-security-token".into(), t.clone()));
        }
        if !body.is_empty() {
            headers.push((
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
        }
        let mut q = pairs(query);
        if !q.iter().any(|(k, _)| k == "RegionId") {
            q.push(("RegionId".into(), "cn-hangzhou".into()));
        }
        V3Request {
            method: "POST".into(),
            query: q,
            headers,
            body: body.to_vec(),
        }
    }

    pub fn send_v3(&self, r: &V3Request, timeout: Duration) -> Result<Response, HttpError> {
        let q = r
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let target = if q.is_empty() {
            "/".to_string()
        } else {
            format!("/?{q}")
        };
        self.http(&r.method, &target, &r.headers, &r.body, timeout)
    }

    /// A V3-signed call (POST, parameters in the query, empty body).
    pub fn call_v3(&self, cred: &Cred, action: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let mut r = self.v3_request(cred, action, "2014-05-26", params, b"");
        r.sign(cred, None);
        let resp = self
            .send_v3(&r, DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{action} (V3): {e:?}"));
        check_request_id(&resp);
        (resp.status, resp.json())
    }

    // ------------------------------------------------------------------ admin

    pub fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Response) {
        let b = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        let headers = if body.is_some() {
            pairs(&[("Content-Type", "application/json")])
        } else {
            vec![]
        };
        let r = self
            .http(method, path, &headers, &b, DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
        (r.status, r)
    }

    pub fn state(&self) -> Value {
        let (s, r) = self.admin("GET", "/_admin/state", None);
        assert_eq!(s, 200, "{}", r.text());
        r.json()
    }

    pub fn calls(&self) -> Value {
        let (s, r) = self.admin("GET", "/_admin/calls", None);
        assert_eq!(s, 200, "{}", r.text());
        r.json()
    }

    pub fn faults(&self) -> Value {
        let (s, r) = self.admin("GET", "/_admin/faults", None);
        assert_eq!(s, 200, "{}", r.text());
        r.json()
    }

    /// `PUT /_admin/faults`; answers status and body text.
    pub fn put_faults(&self, body: &Value) -> (u16, String) {
        let (s, r) = self.admin("PUT", "/_admin/faults", Some(body));
        (s, r.text())
    }

    /// `PUT /_admin/faults` that must succeed.
    pub fn set_faults(&self, body: Value) {
        let (s, t) = self.put_faults(&body);
        assert!(
            (200..300).contains(&s),
            "PUT /_admin/faults {body}: {s} {t}"
        );
    }

    /// Sets the faults of one action (everything else default).
    pub fn set_action_faults(&self, action: &str, f: Value) {
        self.set_faults(
            json!({"faults": {"blackhole": false, "default": {}, "actions": {action: f}}}),
        );
    }

    pub fn reset(&self) {
        let (s, r) = self.admin("POST", "/_admin/reset", None);
        assert!((200..300).contains(&s), "reset: {s} {}", r.text());
    }

    pub fn bind(&self, instance: &str, netns: &str) -> (u16, String) {
        let (s, r) = self.admin(
            "POST",
            "/_admin/bind",
            Some(&json!({"instance": instance, "netns": netns})),
        );
        (s, r.text())
    }

    /// The `enis` entry of `/_admin/state` with this id.
    pub fn state_eni(&self, id: &str) -> Option<Value> {
        self.state()["enis"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
    }

    // ------------------------------------------------------------------ metadata

    /// GET `/latest/meta-data/<path>` as `instance`.
    pub fn md(&self, instance: &str, path: &str) -> Response {
        self.get(
            &format!("/latest/meta-data/{path}"),
            &[("X-Mock-Instance-Id", instance)],
        )
    }

    /// GET that must be 200; answers the body, trimmed.
    pub fn md_ok(&self, instance: &str, path: &str) -> String {
        let r = self.md(instance, path);
        assert_eq!(
            r.status,
            200,
            "metadata {path} for {instance}: {}",
            r.text()
        );
        r.text().trim().to_string()
    }

    /// The MACs listed by `network/interfaces/macs/`.
    pub fn md_macs(&self, instance: &str) -> Vec<String> {
        self.md_ok(instance, "network/interfaces/macs/")
            .lines()
            .map(|l| l.trim().trim_end_matches('/').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    // ------------------------------------------------------------------ ENI helpers

    /// Creates an ENI on `vswitch` with `sg-nodes` and extra parameters; answers the JSON.
    pub fn create_eni(&self, vswitch: &str, extra: &[(&str, &str)]) -> Value {
        let mut p: Vec<(&str, &str)> =
            vec![("VSwitchId", vswitch), ("SecurityGroupId", "sg-nodes")];
        p.extend_from_slice(extra);
        self.ok("CreateNetworkInterface", &p)
    }

    /// Creates an ENI and answers its id.
    pub fn create_eni_id(&self, vswitch: &str, extra: &[(&str, &str)]) -> String {
        self.create_eni(vswitch, extra)["NetworkInterfaceId"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// DescribeNetworkInterfaceAttribute: `Some(json)` or `None` when InvalidEniId.NotFound.
    pub fn eni(&self, id: &str) -> Option<Value> {
        let (s, v) = self.call(
            "DescribeNetworkInterfaceAttribute",
            &[("NetworkInterfaceId", id)],
        );
        if s == 404 && v["Code"] == "InvalidEniId.NotFound" {
            return None;
        }
        assert_eq!(s, 200, "DescribeNetworkInterfaceAttribute {id}: {v}");
        Some(v)
    }

    pub fn eni_status(&self, id: &str) -> String {
        self.eni(id)
            .map(|v| v["Status"].as_str().unwrap_or("<none>").to_string())
            .unwrap_or_else(|| "<gone>".to_string())
    }

    /// Polls until the ENI has `status` ("<gone>" for deleted); answers the time it took.
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let s = self.eni_status(id);
            if s == status {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < timeout,
                "{id} still {s} after {:?}, want {status}",
                t0.elapsed()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Attaches and waits for InUse.
    pub fn attach(&self, eni: &str, instance: &str) {
        self.ok(
            "AttachNetworkInterface",
            &[("NetworkInterfaceId", eni), ("InstanceId", instance)],
        );
        self.wait_status(eni, "InUse", Duration::from_secs(10));
    }

    /// Creates an ENI on `vswitch`, attaches it to `instance` and waits for InUse.
    pub fn attached_eni(&self, vswitch: &str, instance: &str, extra: &[(&str, &str)]) -> String {
        let id = self.create_eni_id(vswitch, extra);
        self.attach(&id, instance);
        id
    }

    /// Every private IPv4 address held by any ENI (from `/_admin/state`: `primary_ip` plus
    /// `private_ips`, which may or may not repeat the primary).
    pub fn all_held_ips(&self) -> Vec<String> {
        let mut v = Vec::new();
        for e in self.state()["enis"].as_array().unwrap() {
            let mut mine: Vec<String> = vec![e["primary_ip"]
                .as_str()
                .unwrap_or_else(|| panic!("primary_ip: {e}"))
                .to_string()];
            for ip in e["private_ips"].as_array().unwrap() {
                let ip = ip.as_str().unwrap().to_string();
                if !mine.contains(&ip) {
                    mine.push(ip);
                }
            }
            v.extend(mine);
        }
        v
    }

    pub fn vswitch_available(&self, vsw: &str) -> u64 {
        let v = self.ok("DescribeVSwitches", &[("VSwitchId", vsw)]);
        let list = v["VSwitches"]["VSwitch"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{v}");
        list[0]["AvailableIpAddressCount"].as_u64().unwrap()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- mock-cloud stderr ({}) ----\n{}",
                self.addr,
                tail(&self.stderr(), 6000)
            );
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        s
    } else {
        let mut i = s.len() - n;
        while !s.is_char_boundary(i) {
            i += 1;
        }
        &s[i..]
    }
}

/// Signs V1 parameters for `method`, replacing any `Signature`.
pub fn sign_v1(secret: &str, method: &str, params: &mut Vec<(String, String)>) {
    params.retain(|(k, _)| k != "Signature");
    let sig = v1_signature(secret, method, params);
    params.push(("Signature".into(), sig));
}

pub fn set_param(params: &mut Vec<(String, String)>, k: &str, v: &str) {
    params.retain(|(pk, _)| pk != k);
    params.push((k.into(), v.into()));
}

pub fn remove_param(params: &mut Vec<(String, String)>, k: &str) {
    params.retain(|(pk, _)| pk != k);
}

/// Every answer carries `x-acs-request-id`; JSON answers carry the same `RequestId`.
pub fn check_request_id(r: &Response) {
    let h = r.header("x-acs-request-id").unwrap_or_else(|| {
        panic!(
            "no x-acs-request-id header (status {}): {}",
            r.status,
            r.text()
        )
    });
    assert!(!h.is_empty());
    if let Ok(v) = serde_json::from_slice::<Value>(&r.body) {
        if let Some(id) = v.get("RequestId") {
            assert_eq!(id.as_str(), Some(h), "RequestId vs header: {v}");
        }
    }
}

/// `{"RequestId","HostId","Code","Message","Recommend"}`.
pub fn check_error_shape(v: &Value) {
    for k in ["RequestId", "HostId", "Code", "Message", "Recommend"] {
        assert!(
            v.get(k).is_some_and(|x| x.is_string()),
            "error body lacks string {k}: {v}"
        );
    }
    assert!(!v["Code"].as_str().unwrap().is_empty());
}

/// A V3 request under construction.
#[derive(Debug, Clone)]
pub struct V3Request {
    pub method: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl V3Request {
    pub fn set_header(&mut self, k: &str, v: &str) {
        self.headers.retain(|(hk, _)| !hk.eq_ignore_ascii_case(k));
        self.headers.push((k.into(), v.into()));
    }
    pub fn remove_header(&mut self, k: &str) {
        self.headers.retain(|(hk, _)| !hk.eq_ignore_ascii_case(k));
    }
    /// Adds `Authorization`. `only`: sign just these headers (default: host, content-type
    /// and every x-acs-* header present). The payload hash signed is the
    /// `x-acs-content-sha256` header as set.
    pub fn sign(&mut self, cred: &Cred, only: Option<&[&str]>) {
        self.remove_header("authorization");
        let hs: Vec<(String, String)> = match only {
            None => self.headers.clone(),
            Some(names) => self
                .headers
                .iter()
                .filter(|(k, _)| names.iter().any(|n| n.eq_ignore_ascii_case(k)))
                .cloned()
                .collect(),
        };
        let ph = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-acs-content-sha256"))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| sha256_hex(&self.body));
        let (cr, signed) = v3_canonical_request(&self.method, "/", &self.query, &hs, &ph);
        let sig = v3_signature(&cred.secret, &cr);
        self.headers.push((
            "Authorization".into(),
            v3_authorization(&cred.id, &signed, &sig),
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers for assertions
// ---------------------------------------------------------------------------------------------

/// `v[a][b]...` as an array (panics with the JSON otherwise).
pub fn arr<'a>(v: &'a Value, path: &[&str]) -> &'a Vec<Value> {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_array()
        .unwrap_or_else(|| panic!("{path:?} is not an array in {v}"))
}

pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

/// The ENI's private IPs from a Describe* item: (address, primary).
pub fn eni_ips(eni: &Value) -> Vec<(String, bool)> {
    arr(eni, &["PrivateIpSets", "PrivateIpSet"])
        .iter()
        .map(|x| {
            (
                s(x, "PrivateIpAddress").to_string(),
                x["Primary"]
                    .as_bool()
                    .unwrap_or_else(|| panic!("Primary not a bool: {x}")),
            )
        })
        .collect()
}

pub fn eni_ip_list(eni: &Value) -> Vec<String> {
    let mut v: Vec<String> = eni_ips(eni).into_iter().map(|x| x.0).collect();
    v.sort_by_key(|a| a.parse::<std::net::Ipv4Addr>().unwrap());
    v
}

pub fn eni_prefixes(eni: &Value) -> Vec<String> {
    arr(eni, &["Ipv4PrefixSets", "Ipv4PrefixSet"])
        .iter()
        .map(|x| s(x, "Ipv4Prefix").to_string())
        .collect()
}

/// Parses `a.b.c.d/n` into (u32 address, prefix length).
pub fn parse_cidr(c: &str) -> (u32, u32) {
    let (a, n) = c
        .split_once('/')
        .unwrap_or_else(|| panic!("not a CIDR: {c}"));
    let a: std::net::Ipv4Addr = a.parse().unwrap();
    (u32::from(a), n.parse().unwrap())
}

pub fn ip_u32(a: &str) -> u32 {
    u32::from(
        a.parse::<std::net::Ipv4Addr>()
            .unwrap_or_else(|_| panic!("not an IPv4: {a}")),
    )
}

pub fn ip_in(a: &str, cidr: &str) -> bool {
    let (net, n) = parse_cidr(cidr);
    let mask = if n == 0 { 0 } else { u32::MAX << (32 - n) };
    ip_u32(a) & mask == net & mask
}

pub fn is_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

pub fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}
