//! Property tests of the wire format: the frame reader and the request/response decoders
//! never panic on any bytes, answer bad input with an error, and read back exactly what the
//! encoders wrote.
//!
//! Case counts are kept small enough for a debug build to finish each property in a few
//! seconds; raise them with `PROPTEST_CASES=10000` for a longer hunt.

use std::io::Cursor;
use std::net::Ipv4Addr;

use eni_rpc::{
    decode_request, decode_response, encode_request, encode_response, read_frame, write_frame,
    AllocateRequest, Allocation, Allocations, AttachmentRef, CheckRequest, ErrorCode, FrameError,
    GcRequest, GcResult, PodRef, PortMapping, PortProtocol, ReleaseRequest, Released, Request,
    Response, RpcError, MAX_FRAME_LEN,
};
use ipnet::Ipv4Net;
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings with the characters that stress JSON: quotes, escapes, control characters,
/// non-ASCII, and nothing at all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._-]{0,24}",
        "\\PC{0,16}",
        any::<String>().prop_map(|s| s.chars().take(32).collect()),
        Just(String::new()),
        Just("\"\\\u{0}\u{1f}\u{2028}\u{fffd}".to_string()),
    ]
}

fn pod() -> impl Strategy<Value = Option<PodRef>> {
    proptest::option::of((text(), text(), proptest::option::of(text()))).prop_map(|p| {
        p.map(|(namespace, name, uid)| PodRef {
            namespace,
            name,
            uid,
        })
    })
}

fn attachment() -> impl Strategy<Value = AttachmentRef> {
    (text(), text()).prop_map(|(container_id, ifname)| AttachmentRef {
        container_id,
        ifname,
    })
}

fn port_mappings() -> impl Strategy<Value = Vec<PortMapping>> {
    proptest::collection::vec(
        (
            any::<u16>(),
            any::<u16>(),
            any::<bool>(),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(|(host_port, container_port, udp, ip)| PortMapping {
                host_port,
                container_port,
                protocol: if udp {
                    PortProtocol::Udp
                } else {
                    PortProtocol::Tcp
                },
                host_ip: ip.map(Ipv4Addr::from),
            }),
        0..4,
    )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            text(),
            text(),
            text(),
            pod(),
            any::<bool>(),
            any::<u32>(),
            port_mappings()
        )
            .prop_map(
                |(container_id, ifname, netns, pod, exclusive, timeout_ms, port_mappings)| {
                    Request::Allocate(AllocateRequest {
                        container_id,
                        ifname,
                        netns,
                        pod,
                        exclusive,
                        timeout_ms,
                        port_mappings,
                    })
                }
            ),
        (text(), text()).prop_map(|(container_id, ifname)| Request::Release(ReleaseRequest {
            container_id,
            ifname
        })),
        (text(), text()).prop_map(|(container_id, ifname)| Request::Check(CheckRequest {
            container_id,
            ifname
        })),
        Just(Request::List),
        Just(Request::Status),
        proptest::collection::vec(attachment(), 0..5)
            .prop_map(|valid| Request::Gc(GcRequest { valid })),
    ]
}

fn allocation() -> impl Strategy<Value = Allocation> {
    (
        (text(), text(), text(), pod()),
        (any::<u32>(), 0u8..=32, any::<u32>(), any::<u32>(), 0u8..=32),
        (text(), text(), text()),
        (any::<u32>(), any::<u32>(), any::<bool>(), any::<u64>()),
        proptest::option::of(text()),
    )
        .prop_map(
            |(
                (container_id, ifname, netns, pod),
                (ip, prefix_len, gateway, net, net_len),
                (eni_id, eni_mac, host_ifname),
                (route_table, mtu, exclusive, allocated_at_ms),
                policy_pin_dir,
            )| Allocation {
                container_id,
                ifname,
                netns,
                pod,
                ip: Ipv4Addr::from(ip),
                prefix_len,
                gateway: Ipv4Addr::from(gateway),
                subnet: Ipv4Net::new(Ipv4Addr::from(net), net_len).expect("prefix length <= 32"),
                eni_id,
                eni_mac,
                host_ifname,
                route_table,
                mtu,
                exclusive,
                allocated_at_ms,
                policy_pin_dir,
            },
        )
}

fn response() -> impl Strategy<Value = Result<Response, RpcError>> {
    prop_oneof![
        allocation().prop_map(|a| Ok(Response::Allocation(a))),
        proptest::option::of(allocation())
            .prop_map(|released| Ok(Response::Released(Released { released }))),
        proptest::collection::vec(allocation(), 0..3)
            .prop_map(|allocations| Ok(Response::Allocations(Allocations { allocations }))),
        proptest::collection::vec(allocation(), 0..3)
            .prop_map(|released| Ok(Response::GcResult(GcResult { released }))),
        (proptest::sample::select(ErrorCode::ALL.to_vec()), text())
            .prop_map(|(code, message)| Err(RpcError::new(code, message))),
    ]
}

/// JSON-ish payloads: envelopes with plausible and implausible pieces, so the decoders get
/// past the first byte of the parser more often than random bytes do.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let atom = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("1".to_string()),
        Just("-1".to_string()),
        Just("1e999".to_string()),
        Just("18446744073709551616".to_string()),
        Just("\"\"".to_string()),
        Just("\"allocate\"".to_string()),
        Just("\"10.0.0.1\"".to_string()),
        Just("\"10.0.0.0/33\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        "[a-z_]{0,10}".prop_map(|s| format!("\"{s}\"")),
    ];
    let key = prop_oneof![
        Just("v"),
        Just("req"),
        Just("ok"),
        Just("err"),
        Just("op"),
        Just("kind"),
        Just("code"),
        Just("message"),
        Just("container_id"),
        Just("ifname"),
        Just("netns"),
        Just("timeout_ms"),
        Just("ip"),
        Just("subnet"),
        Just("valid"),
        Just("released"),
        Just("allocations"),
    ];
    let field = (key, atom).prop_map(|(k, v)| format!("\"{k}\":{v}"));
    let object =
        proptest::collection::vec(field, 0..6).prop_map(|f| format!("{{{}}}", f.join(",")));
    let nested = (
        object.clone(),
        object,
        proptest::sample::select(vec!["req", "ok", "err", "x"]),
        prop_oneof![Just(1u64), Just(0), Just(2), Just(u64::MAX)],
    )
        .prop_map(|(inner, other, k, v)| {
            format!("{{\"v\":{v},\"{k}\":{inner},\"extra\":{other}}}").into_bytes()
        });
    prop_oneof![nested, proptest::collection::vec(any::<u8>(), 0..64)]
}

proptest! {
    #![proptest_config(config(1024))]

    /// Any request survives encode -> decode unchanged.
    #[test]
    fn request_round_trip(req in request()) {
        let frame = encode_request(&req).expect("encode");
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len, frame.len() - 4);
        let payload = read_frame(&mut Cursor::new(&frame)).expect("read").expect("a frame");
        prop_assert_eq!(decode_request(&payload).expect("decode"), req);
    }

    /// Any answer survives encode -> decode unchanged.
    #[test]
    fn response_round_trip(resp in response()) {
        let frame = encode_response(&resp).expect("encode");
        let payload = read_frame(&mut Cursor::new(&frame)).expect("read").expect("a frame");
        prop_assert_eq!(decode_response(&payload).expect("decode"), resp);
    }

    /// The decoders take any bytes without panicking; a refused request is `BadRequest` or
    /// `VersionMismatch`, nothing else.
    #[test]
    fn decoders_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = decode_request(&bytes) {
            prop_assert!(matches!(e.code, ErrorCode::BadRequest | ErrorCode::VersionMismatch), "{e:?}");
        }
        let _ = decode_response(&bytes);
    }

    /// The same for JSON-shaped envelopes with wrong, missing and extra pieces.
    #[test]
    fn decoders_never_panic_on_jsonish(bytes in jsonish()) {
        if let Err(e) = decode_request(&bytes) {
            prop_assert!(matches!(e.code, ErrorCode::BadRequest | ErrorCode::VersionMismatch), "{e:?}");
        }
        let _ = decode_response(&bytes);
    }

    /// A stream of arbitrary bytes is read as frames until it ends or fails, never
    /// panicking or allocating beyond the limit; a length over the limit is `TooLarge`
    /// and a short stream `Truncated`.
    #[test]
    fn frame_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        let mut cursor = Cursor::new(&bytes);
        for _ in 0..bytes.len() + 1 {
            let at = cursor.position() as usize;
            match read_frame(&mut cursor) {
                Ok(None) => {
                    prop_assert_eq!(at, bytes.len());
                    break;
                }
                Ok(Some(payload)) => prop_assert!(payload.len() <= MAX_FRAME_LEN as usize),
                Err(FrameError::TooLarge { len, .. }) => {
                    prop_assert!(len > u64::from(MAX_FRAME_LEN));
                    break;
                }
                Err(FrameError::Truncated { expected, got }) => {
                    prop_assert!(got < expected);
                    break;
                }
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }

    /// A payload written by `write_frame` is read back whole, however it is followed.
    #[test]
    fn write_then_read_frame(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        trailer in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut buf = Vec::new();
        write_frame(&mut buf, &payload).expect("write");
        buf.extend_from_slice(&trailer);
        let mut cursor = Cursor::new(&buf);
        prop_assert_eq!(read_frame(&mut cursor).expect("read"), Some(payload));
    }
}
