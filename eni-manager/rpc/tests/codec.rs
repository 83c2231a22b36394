//! The wire format: round trips of every message through the framing, the exact JSON of
//! the envelopes, malformed input of every kind, and random bytes into the decoders.

use std::io::Cursor;
use std::net::Ipv4Addr;

use eni_rpc::{
    decode_request, decode_response, encode_request, encode_response, read_frame, write_frame,
    AllocateRequest, Allocation, Allocations, AttachmentRef, CheckRequest, EniStatus, ErrorCode,
    FrameError, GcRequest, GcResult, IpStatus, NodeStatus, PodRef, PoolStatus, PortMapping,
    PortProtocol, ReleaseRequest, Released, Request, Response, RpcError, Status, MAX_FRAME_LEN,
};
use rand::{Rng, RngCore, SeedableRng};

fn pod() -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: "web-0".into(),
        uid: Some("9f0c1e2a-0000-4000-8000-000000000001".into()),
    }
}

fn allocation(n: u8) -> Allocation {
    Allocation {
        container_id: format!("c0ffee{n:02}aabbccddeeff00112233445566778899"),
        ifname: "eth0".into(),
        netns: format!("/var/run/netns/pod-{n}"),
        pod: Some(pod()),
        ip: Ipv4Addr::new(10, 0, 1, n),
        prefix_len: 24,
        gateway: Ipv4Addr::new(10, 0, 1, 253),
        subnet: "10.0.1.0/24".parse().unwrap(),
        eni_id: "eni-0123456789abcdef0".into(),
        eni_mac: "00:16:3e:12:34:56".into(),
        host_ifname: "eth1".into(),
        route_table: 1001,
        mtu: 1500,
        exclusive: false,
        allocated_at_ms: 1_700_000_000_000 + u64::from(n),
        policy_pin_dir: None,
    }
}

fn status() -> Status {
    Status {
        node: NodeStatus {
            instance_id: "i-bp1abc".into(),
            instance_type: "ecs.g7.large".into(),
            zone: "cn-hangzhou-h".into(),
            provider: "aliyun".into(),
            max_pods: 30,
            max_enis: 3,
            ipv4_per_eni: 10,
        },
        pool: PoolStatus {
            idle: 1,
            allocated: 1,
            total: 2,
            low_watermark: 1,
            high_watermark: 5,
            enis: vec![EniStatus {
                eni_id: "eni-0123456789abcdef0".into(),
                mac: "00:16:3e:12:34:56".into(),
                host_ifname: Some("eth1".into()),
                device_index: Some(1),
                subnet_id: "vsw-1".into(),
                status: "ready".into(),
                exclusive_to: None,
                ips: vec![
                    IpStatus {
                        ip: Ipv4Addr::new(10, 0, 1, 5),
                        container_id: Some("c0ffee".into()),
                        pod: Some(pod()),
                    },
                    IpStatus {
                        ip: Ipv4Addr::new(10, 0, 1, 6),
                        container_id: None,
                        pod: None,
                    },
                ],
            }],
        },
        degraded: Some("metadata service unreachable".into()),
        cloud_calls: 7,
        version: "0.1.0".into(),
    }
}

fn all_requests() -> Vec<Request> {
    vec![
        Request::Allocate(AllocateRequest {
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/pod-1".into(),
            pod: Some(pod()),
            exclusive: true,
            timeout_ms: 5000,
            port_mappings: vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: PortProtocol::Tcp,
                    host_ip: None,
                },
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: PortProtocol::Udp,
                    host_ip: Some("192.168.1.10".parse().unwrap()),
                },
            ],
        }),
        Request::Allocate(AllocateRequest {
            container_id: "c2".into(),
            ifname: "net1".into(),
            netns: "/proc/1/ns/net".into(),
            pod: None,
            exclusive: false,
            timeout_ms: 0,
            port_mappings: Vec::new(),
        }),
        Request::Release(ReleaseRequest {
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
        }),
        Request::Check(CheckRequest {
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
        }),
        Request::List,
        Request::Status,
        Request::Gc(GcRequest {
            valid: vec![
                AttachmentRef {
                    container_id: "c0ffee".into(),
                    ifname: "eth0".into(),
                },
                AttachmentRef {
                    container_id: "c2".into(),
                    ifname: "net1".into(),
                },
            ],
        }),
        Request::Gc(GcRequest { valid: vec![] }),
    ]
}

fn all_answers() -> Vec<Result<Response, RpcError>> {
    let mut answers = vec![
        Ok(Response::Allocation(allocation(1))),
        Ok(Response::Released(Released {
            released: Some(allocation(2)),
        })),
        Ok(Response::Released(Released { released: None })),
        Ok(Response::Allocations(Allocations {
            allocations: vec![allocation(3), allocation(4)],
        })),
        Ok(Response::Allocations(Allocations {
            allocations: vec![],
        })),
        Ok(Response::Status(status())),
        Ok(Response::GcResult(GcResult {
            released: vec![allocation(5)],
        })),
    ];
    for code in ErrorCode::ALL {
        answers.push(Err(RpcError::new(code, format!("because of {code}"))));
    }
    answers
}

/// Strips the length prefix of a complete frame, checking it.
fn unframe(frame: &[u8]) -> Vec<u8> {
    let mut cursor = Cursor::new(frame);
    let payload = read_frame(&mut cursor).unwrap().expect("one frame");
    assert_eq!(cursor.position() as usize, frame.len(), "trailing bytes");
    assert!(read_frame(&mut cursor).unwrap().is_none());
    payload
}

#[test]
fn every_request_round_trips_through_the_framing() {
    for request in all_requests() {
        let frame = encode_request(&request).unwrap();
        let payload = unframe(&frame);
        assert_eq!(decode_request(&payload).unwrap(), request);
    }
}

#[test]
fn every_response_round_trips_through_the_framing() {
    for answer in all_answers() {
        let frame = encode_response(&answer).unwrap();
        let payload = unframe(&frame);
        assert_eq!(decode_response(&payload).unwrap(), answer);
    }
}

#[test]
fn several_frames_on_one_stream() {
    let mut stream = Vec::new();
    for request in all_requests() {
        stream.extend(encode_request(&request).unwrap());
    }
    let mut cursor = Cursor::new(stream);
    let mut decoded = Vec::new();
    while let Some(payload) = read_frame(&mut cursor).unwrap() {
        decoded.push(decode_request(&payload).unwrap());
    }
    assert_eq!(decoded, all_requests());
}

#[test]
fn wire_form_of_the_envelopes() {
    let frame = encode_request(&Request::Check(CheckRequest {
        container_id: "abc".into(),
        ifname: "eth0".into(),
    }))
    .unwrap();
    assert_eq!(&frame[..4], &(frame.len() as u32 - 4).to_be_bytes());
    assert_eq!(
        std::str::from_utf8(&frame[4..]).unwrap(),
        r#"{"v":1,"req":{"op":"check","container_id":"abc","ifname":"eth0"}}"#
    );
    assert_eq!(
        &encode_request(&Request::List).unwrap()[4..],
        br#"{"v":1,"req":{"op":"list"}}"#
    );

    let ok = encode_response(&Ok(Response::Released(Released { released: None }))).unwrap();
    assert_eq!(
        &ok[4..],
        br#"{"v":1,"ok":{"kind":"released","released":null}}"#
    );
    let err = encode_response(&Err(RpcError::new(
        ErrorCode::VSwitchExhausted,
        "vsw-1 full",
    )))
    .unwrap();
    assert_eq!(
        &err[4..],
        br#"{"v":1,"err":{"code":"VSwitchExhausted","message":"vsw-1 full"}}"#
    );

    let value: serde_json::Value = serde_json::from_slice(
        &encode_response(&Ok(Response::Allocation(allocation(9)))).unwrap()[4..],
    )
    .unwrap();
    assert_eq!(value["ok"]["kind"], "allocation");
    assert_eq!(value["ok"]["subnet"], "10.0.1.0/24");
    assert_eq!(value["ok"]["ip"], "10.0.1.9");
}

#[test]
fn allocate_defaults_optional_fields() {
    let payload =
        br#"{"v":1,"req":{"op":"allocate","container_id":"c","ifname":"eth0","netns":"/n"}}"#;
    assert_eq!(
        decode_request(payload).unwrap(),
        Request::Allocate(AllocateRequest {
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: "/n".into(),
            pod: None,
            exclusive: false,
            timeout_ms: 0,
            port_mappings: Vec::new(),
        })
    );
}

#[test]
fn port_mappings_are_left_out_when_empty_and_checked_when_present() {
    // An older manager refuses unknown request fields: a request without host ports must
    // not carry the field at all.
    let req = Request::Allocate(AllocateRequest {
        container_id: "c".into(),
        ifname: "eth0".into(),
        netns: "/n".into(),
        pod: None,
        exclusive: false,
        timeout_ms: 0,
        port_mappings: Vec::new(),
    });
    let bytes = encode_request(&req).unwrap();
    assert!(
        !String::from_utf8_lossy(&bytes).contains("port_mappings"),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let payload = br#"{"v":1,"req":{"op":"allocate","container_id":"c","ifname":"eth0","netns":"/n",
        "port_mappings":[{"host_port":8080,"container_port":80,"protocol":"udp","host_ip":"10.0.0.1"}]}}"#;
    let Request::Allocate(a) = decode_request(payload).unwrap() else {
        panic!("not an allocate");
    };
    assert_eq!(
        a.port_mappings,
        vec![PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: PortProtocol::Udp,
            host_ip: Some("10.0.0.1".parse().unwrap()),
        }]
    );
    for bad in [
        r#"{"host_port":8080,"container_port":80,"protocol":"sctp"}"#,
        r#"{"host_port":70000,"container_port":80,"protocol":"tcp"}"#,
        r#"{"host_port":8080,"container_port":80,"protocol":"tcp","host_ip":"fd00::1"}"#,
        r#"{"host_port":8080,"container_port":80,"protocol":"tcp","extra":1}"#,
    ] {
        let payload = format!(
            r#"{{"v":1,"req":{{"op":"allocate","container_id":"c","ifname":"eth0","netns":"/n","port_mappings":[{bad}]}}}}"#
        );
        assert!(
            decode_request(payload.as_bytes()).is_err(),
            "{bad} was accepted"
        );
    }
}

#[test]
fn error_codes_are_pascal_case_strings() {
    let names = [
        "BadRequest",
        "VersionMismatch",
        "NotFound",
        "PoolExhausted",
        "VSwitchExhausted",
        "EniLimit",
        "CloudThrottled",
        "CloudUnavailable",
        "Timeout",
        "ShuttingDown",
        "Internal",
        "Refused",
    ];
    for (code, name) in ErrorCode::ALL.into_iter().zip(names) {
        assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{name}\""));
        assert_eq!(code.to_string(), name);
        assert_eq!(name.parse::<ErrorCode>().unwrap(), code);
        let back: ErrorCode = serde_json::from_str(&format!("\"{name}\"")).unwrap();
        assert_eq!(back, code);
    }
    assert!("Nope".parse::<ErrorCode>().is_err());
    let error = RpcError::new(ErrorCode::EniLimit, "3 of 3 ENIs attached");
    assert_eq!(error.to_string(), "EniLimit: 3 of 3 ENIs attached");
}

#[test]
fn unknown_error_code_from_a_newer_manager_reads_as_internal() {
    let payload = br#"{"v":1,"err":{"code":"QuotaExceeded","message":"m"}}"#;
    let answer = decode_response(payload).unwrap();
    assert_eq!(answer, Err(RpcError::new(ErrorCode::Internal, "m")));
}

#[test]
fn responses_tolerate_unknown_fields() {
    let payload = br#"{"v":1,"ok":{"kind":"released","released":null,"new_field":3},"trace":"x"}"#;
    assert_eq!(
        decode_response(payload).unwrap(),
        Ok(Response::Released(Released { released: None }))
    );
}

#[test]
fn truncated_length_prefix() {
    for len in 1..4 {
        let bytes = vec![0u8; len];
        match read_frame(&mut Cursor::new(bytes)) {
            Err(FrameError::Truncated { expected: 4, got }) => assert_eq!(got, len),
            other => panic!("expected Truncated, got {other:?}"),
        }
    }
}

#[test]
fn truncated_payload() {
    let mut frame = encode_request(&Request::Status).unwrap();
    let full = frame.len() - 4;
    frame.truncate(frame.len() - 3);
    match read_frame(&mut Cursor::new(frame)) {
        Err(FrameError::Truncated { expected, got }) => {
            assert_eq!(expected, full);
            assert_eq!(got, full - 3);
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn empty_stream_is_a_clean_end() {
    assert!(read_frame(&mut Cursor::new(Vec::new())).unwrap().is_none());
}

/// A reader that yields a header and then fails the test if anything more is read.
struct HeaderOnly {
    header: [u8; 4],
    pos: usize,
}

impl std::io::Read for HeaderOnly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        assert!(self.pos < 4, "the decoder read past an oversized length");
        let n = buf.len().min(4 - self.pos);
        buf[..n].copy_from_slice(&self.header[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn oversized_length_is_refused_without_reading_the_payload() {
    for len in [MAX_FRAME_LEN + 1, 16 * 1024 * 1024, u32::MAX] {
        let mut reader = HeaderOnly {
            header: len.to_be_bytes(),
            pos: 0,
        };
        match read_frame(&mut reader) {
            Err(FrameError::TooLarge { len: got, max }) => {
                assert_eq!(got, u64::from(len));
                assert_eq!(max, MAX_FRAME_LEN);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
    let message = FrameError::TooLarge {
        len: 2 * 1024 * 1024,
        max: MAX_FRAME_LEN,
    }
    .to_string();
    assert!(
        message.contains("2097152") && message.contains("1048576"),
        "{message}"
    );
}

#[test]
fn frame_of_exactly_the_limit_is_accepted_and_one_more_byte_is_not() {
    let payload = vec![b' '; MAX_FRAME_LEN as usize];
    let mut out = Vec::new();
    write_frame(&mut out, &payload).unwrap();
    assert_eq!(
        read_frame(&mut Cursor::new(out)).unwrap().unwrap().len(),
        payload.len()
    );

    let payload = vec![b' '; MAX_FRAME_LEN as usize + 1];
    let mut out = Vec::new();
    assert!(matches!(
        write_frame(&mut out, &payload),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(out.is_empty(), "nothing is written for a refused frame");
}

fn bad_request(payload: &[u8]) -> RpcError {
    let error = decode_request(payload).expect_err("must be refused");
    assert_eq!(
        error.code,
        ErrorCode::BadRequest,
        "{}: {error}",
        String::from_utf8_lossy(payload)
    );
    error
}

#[test]
fn bad_json_is_a_bad_request() {
    bad_request(b"");
    bad_request(b"{");
    bad_request(b"not json");
    bad_request(b"[1,2,3]");
    bad_request(b"null");
    bad_request(b"\xff\xfe");
    bad_request(br#"{"v":1}"#);
    bad_request(br#"{"req":{"op":"list"}}"#);
    bad_request(br#"{"v":"1","req":{"op":"list"}}"#);
    bad_request(br#"{"v":1,"req":{"op":"list"}} trailing"#);
    bad_request(br#"{"v":1,"req":{"op":"allocate","container_id":"c"}}"#);
    bad_request(br#"{"v":1,"req":{"op":"allocate","container_id":"c","ifname":"eth0","netns":"/n","timeout_ms":-1}}"#);
}

#[test]
fn unknown_op_is_a_bad_request_naming_it() {
    let error = bad_request(br#"{"v":1,"req":{"op":"explode"}}"#);
    assert!(error.message.contains("explode"), "{}", error.message);
    bad_request(br#"{"v":1,"req":{}}"#);
    bad_request(br#"{"v":1,"req":{"op":7}}"#);
}

#[test]
fn unknown_fields_are_bad_requests() {
    let error = bad_request(
        br#"{"v":1,"req":{"op":"release","container_id":"c","ifname":"eth0","force":true}}"#,
    );
    assert!(error.message.contains("force"), "{}", error.message);
    bad_request(br#"{"v":1,"req":{"op":"list","extra":1}}"#);
    bad_request(br#"{"v":1,"req":{"op":"status","extra":1}}"#);
    bad_request(br#"{"v":1,"req":{"op":"list"},"extra":1}"#);
    bad_request(br#"{"v":1,"req":{"op":"gc","valid":[{"container_id":"c","ifname":"e","x":1}]}}"#);
    bad_request(br#"{"v":1,"req":{"op":"allocate","container_id":"c","ifname":"eth0","netns":"/n","pod":{"namespace":"a","name":"b","labels":{}}}}"#);
}

#[test]
fn wrong_version_names_both_versions() {
    for payload in [
        &br#"{"v":2,"req":{"op":"list"}}"#[..],
        br#"{"v":2,"req":{"op":"teleport","anything":true}}"#,
        br#"{"v":0,"req":{"op":"list"}}"#,
        br#"{"v":99}"#,
    ] {
        let error = decode_request(payload).expect_err("must be refused");
        assert_eq!(error.code, ErrorCode::VersionMismatch, "{error}");
        let v = serde_json::from_slice::<serde_json::Value>(payload).unwrap()["v"].clone();
        assert!(error.message.contains(&format!("version {v}")), "{error}");
        assert!(error.message.contains("version 1"), "{error}");
    }
}

#[test]
fn malformed_responses_are_protocol_errors() {
    for payload in [
        &b""[..],
        b"{",
        br#"{"v":1}"#,
        br#"{"v":1,"ok":{"kind":"released","released":null},"err":{"code":"Internal","message":""}}"#,
        br#"{"v":1,"ok":{"kind":"teleported"}}"#,
        br#"{"v":1,"ok":{"kind":"allocation","container_id":"c"}}"#,
        br#"{"v":2,"ok":{"kind":"released","released":null}}"#,
        br#"{"v":2,"something":"else"}"#,
    ] {
        assert!(
            decode_response(payload).is_err(),
            "{}",
            String::from_utf8_lossy(payload)
        );
    }
    let error = decode_response(br#"{"v":2,"ok":{}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("version 2") && error.contains("version 1"),
        "{error}"
    );
}

/// Feeds the decoders random bytes, and valid frames with random damage, to show that no
/// input makes them panic.
#[test]
fn random_bytes_never_panic_the_decoders() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_e41c);
    let mut valid: Vec<Vec<u8>> = all_requests()
        .iter()
        .map(|r| encode_request(r).unwrap())
        .collect();
    valid.extend(all_answers().iter().map(|a| encode_response(a).unwrap()));

    for round in 0..20_000 {
        let bytes = if round % 2 == 0 {
            let len = rng.gen_range(0..256);
            let mut bytes = vec![0u8; len];
            rng.fill_bytes(&mut bytes);
            // Keep some lengths plausible so the payload path is exercised too.
            if len >= 4 && rng.gen_bool(0.5) {
                let claimed = rng.gen_range(0..=(len as u32 - 4) + 8);
                bytes[..4].copy_from_slice(&claimed.to_be_bytes());
            }
            bytes
        } else {
            let mut bytes = valid[rng.gen_range(0..valid.len())].clone();
            for _ in 0..rng.gen_range(1..4) {
                match rng.gen_range(0..3) {
                    0 if !bytes.is_empty() => {
                        let i = rng.gen_range(0..bytes.len());
                        bytes[i] = rng.gen();
                    }
                    1 if !bytes.is_empty() => {
                        let cut = rng.gen_range(0..bytes.len());
                        bytes.truncate(cut);
                    }
                    _ => {
                        let i = rng.gen_range(0..=bytes.len());
                        bytes.insert(i, rng.gen());
                    }
                }
            }
            bytes
        };
        let mut cursor = Cursor::new(&bytes[..]);
        while let Ok(Some(payload)) = read_frame(&mut cursor) {
            let _ = decode_request(&payload);
            let _ = decode_response(&payload);
        }
        // The payload decoders also see the raw bytes, length prefix or not.
        let _ = decode_request(&bytes);
        let _ = decode_response(&bytes);
        if bytes.len() > 4 {
            let _ = decode_request(&bytes[4..]);
            let _ = decode_response(&bytes[4..]);
        }
    }
}

#[test]
fn helpers_name_ops_and_kinds() {
    let ops: Vec<&str> = all_requests().iter().map(Request::op).collect();
    assert_eq!(
        ops,
        ["allocate", "allocate", "release", "check", "list", "status", "gc", "gc"]
    );
    for answer in all_answers().into_iter().flatten() {
        let frame = encode_response(&Ok(answer.clone())).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&frame[4..]).unwrap();
        assert_eq!(value["ok"]["kind"], answer.kind());
    }
    assert_eq!(status().pool.enis[0].used_ips(), 1);
    assert!(ErrorCode::PoolExhausted.is_transient());
    assert!(!ErrorCode::EniLimit.is_transient());
    assert!(!ErrorCode::BadRequest.is_transient());
}
