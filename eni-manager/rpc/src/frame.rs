//! Framing and envelopes: turning messages into bytes on the socket and back.
//!
//! A frame is a 4-byte big-endian payload length followed by the payload, a JSON envelope:
//! `{"v":1,"req":{...}}` from the client, `{"v":1,"ok":{...}}` or `{"v":1,"err":{...}}`
//! from the manager. A length over [`MAX_FRAME_LEN`] is refused before anything is
//! allocated. Nothing here panics on any input.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Request, Response, RpcError, MAX_FRAME_LEN, PROTOCOL_VERSION};

/// A frame could not be read, written or understood.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the limit; the payload was not read.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced (or attempted) payload length.
        len: u64,
        /// The limit, [`MAX_FRAME_LEN`].
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame: {got} of {expected} bytes read")]
    Truncated {
        /// How many bytes the frame part needed (4 for the length prefix).
        expected: usize,
        /// How many arrived before the end of the stream.
        got: usize,
    },
    /// The socket failed (including read and write timeouts).
    #[error("socket i/o failed")]
    Io(#[source] io::Error),
    /// The payload is not the JSON message expected.
    #[error("invalid JSON message")]
    Json(#[source] serde_json::Error),
    /// The payload is JSON but not a valid envelope (wrong version, both or neither of
    /// `ok` and `err`, ...).
    #[error("invalid envelope: {message}")]
    Envelope {
        /// What is wrong with it.
        message: String,
    },
}

/// Reads exactly `buf.len()` bytes unless the stream ends first; returns how many were read.
fn read_full<R: Read + ?Sized>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Checks an announced payload length against the limit.
pub(crate) fn check_len(len: u32) -> Result<usize, FrameError> {
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max: MAX_FRAME_LEN,
        });
    }
    usize::try_from(len).map_err(|_| FrameError::TooLarge {
        len: u64::from(len),
        max: MAX_FRAME_LEN,
    })
}

/// Reads one frame's payload. `Ok(None)` when the stream ends cleanly before a frame
/// starts; [`FrameError::Truncated`] when it ends inside one; [`FrameError::TooLarge`]
/// (without reading or allocating the payload) when the length is over the limit.
pub fn read_frame<R: Read + ?Sized>(reader: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    let got = read_full(reader, &mut header).map_err(FrameError::Io)?;
    if got == 0 {
        return Ok(None);
    }
    if got < header.len() {
        return Err(FrameError::Truncated {
            expected: header.len(),
            got,
        });
    }
    let len = check_len(u32::from_be_bytes(header))?;
    let mut payload = vec![0u8; len];
    let got = read_full(reader, &mut payload).map_err(FrameError::Io)?;
    if got < len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    Ok(Some(payload))
}

/// Prefixes a payload with its length, refusing payloads over the limit.
pub(crate) fn frame_payload(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let too_large = || FrameError::TooLarge {
        len: payload.len() as u64,
        max: MAX_FRAME_LEN,
    };
    let len = u32::try_from(payload.len()).map_err(|_| too_large())?;
    if len > MAX_FRAME_LEN {
        return Err(too_large());
    }
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Writes one frame (length prefix and payload in a single write).
pub fn write_frame<W: Write + ?Sized>(writer: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    let frame = frame_payload(payload)?;
    writer.write_all(&frame).map_err(FrameError::Io)?;
    writer.flush().map_err(FrameError::Io)
}

/// The client's envelope, borrowed for encoding.
#[derive(Serialize)]
struct RequestEnvelopeRef<'a> {
    v: u32,
    req: &'a Request,
}

/// The client's envelope, owned for decoding.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestEnvelope {
    v: u32,
    req: Request,
}

/// Just the version of an envelope, to tell a version mismatch from a malformed message.
#[derive(Deserialize)]
struct VersionOnly {
    v: u64,
}

/// The manager's envelope, borrowed for encoding.
#[derive(Serialize)]
struct ResponseEnvelopeRef<'a> {
    v: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<&'a Response>,
    #[serde(skip_serializing_if = "Option::is_none")]
    err: Option<&'a RpcError>,
}

/// The manager's envelope, owned for decoding. Unknown fields are tolerated so a newer
/// manager may add some.
#[derive(Deserialize)]
struct ResponseEnvelope {
    v: u32,
    #[serde(default)]
    ok: Option<Response>,
    #[serde(default)]
    err: Option<RpcError>,
}

/// The version named in a payload that failed to decode, if it is a different one.
fn foreign_version(payload: &[u8]) -> Option<u64> {
    serde_json::from_slice::<VersionOnly>(payload)
        .ok()
        .map(|only| only.v)
        .filter(|v| *v != u64::from(PROTOCOL_VERSION))
}

/// Encodes a request as a complete frame (length prefix included).
pub fn encode_request(request: &Request) -> Result<Vec<u8>, FrameError> {
    let payload = serde_json::to_vec(&RequestEnvelopeRef {
        v: PROTOCOL_VERSION,
        req: request,
    })
    .map_err(FrameError::Json)?;
    frame_payload(&payload)
}

/// Decodes a request payload (without its length prefix), as the manager does. The error
/// is what the manager answers: [`ErrorCode::VersionMismatch`] for another version,
/// [`ErrorCode::BadRequest`] for anything malformed.
pub fn decode_request(payload: &[u8]) -> Result<Request, RpcError> {
    match serde_json::from_slice::<RequestEnvelope>(payload) {
        Ok(envelope) if envelope.v == PROTOCOL_VERSION => Ok(envelope.req),
        Ok(envelope) => Err(version_mismatch(u64::from(envelope.v))),
        Err(err) => match foreign_version(payload) {
            Some(v) => Err(version_mismatch(v)),
            None => Err(RpcError::bad_request(format!("malformed request: {err}"))),
        },
    }
}

fn version_mismatch(theirs: u64) -> RpcError {
    RpcError::new(
        ErrorCode::VersionMismatch,
        format!(
            "the client speaks protocol version {theirs}, this eni-manager speaks version \
             {PROTOCOL_VERSION}; upgrade eni-cni and eni-manager together"
        ),
    )
}

/// Encodes the manager's answer as a complete frame (length prefix included).
pub fn encode_response(result: &Result<Response, RpcError>) -> Result<Vec<u8>, FrameError> {
    let envelope = match result {
        Ok(response) => ResponseEnvelopeRef {
            v: PROTOCOL_VERSION,
            ok: Some(response),
            err: None,
        },
        Err(error) => ResponseEnvelopeRef {
            v: PROTOCOL_VERSION,
            ok: None,
            err: Some(error),
        },
    };
    let payload = serde_json::to_vec(&envelope).map_err(FrameError::Json)?;
    frame_payload(&payload)
}

/// Decodes a response payload (without its length prefix), as the client does: the outer
/// `Result` is about the frame, the inner one is the manager's answer.
pub fn decode_response(payload: &[u8]) -> Result<Result<Response, RpcError>, FrameError> {
    let envelope = match serde_json::from_slice::<ResponseEnvelope>(payload) {
        Ok(envelope) => envelope,
        Err(err) => {
            return Err(match foreign_version(payload) {
                Some(v) => FrameError::Envelope {
                    message: format!(
                        "eni-manager answered in protocol version {v}, this client speaks \
                         version {PROTOCOL_VERSION}"
                    ),
                },
                None => FrameError::Json(err),
            })
        }
    };
    if envelope.v != PROTOCOL_VERSION {
        return Err(FrameError::Envelope {
            message: format!(
                "eni-manager answered in protocol version {}, this client speaks version \
                 {PROTOCOL_VERSION}",
                envelope.v
            ),
        });
    }
    match (envelope.ok, envelope.err) {
        (Some(response), None) => Ok(Ok(response)),
        (None, Some(error)) => Ok(Err(error)),
        (Some(_), Some(_)) => Err(FrameError::Envelope {
            message: "response carries both `ok` and `err`".to_owned(),
        }),
        (None, None) => Err(FrameError::Envelope {
            message: "response carries neither `ok` nor `err`".to_owned(),
        }),
    }
}
