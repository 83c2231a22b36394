//! [`Handle`]: one `NETLINK_ROUTE` socket and the request/ack/dump exchange over it.
//!
//! Owns sequence numbers, the reading of multi-part dumps, `NLMSG_ERROR` (errno plus the
//! kernel's extended-ack message) and acks. It knows nothing about links or routes: the
//! object modules build messages and call [`Handle::change`] or [`Handle::dump`].

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{strerror, Error, Result};

/// `NLM_F_CAPPED`: the error payload carries only the request's header.
const NLM_F_CAPPED: u16 = 0x100;
/// `NLM_F_ACK_TLVS`: extended-ack attributes follow the request in the error payload.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: a human-readable error string.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Size of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

/// One `NETLINK_ROUTE` socket, bound in the network namespace of the thread that created it.
///
/// The socket stays in that namespace for its whole life, whatever the thread does later:
/// create it inside [`crate::netns::run_in_netns`] to work on another namespace.
/// Every change is sent with `NLM_F_ACK` and waits for the kernel's answer.
#[derive(Debug)]
pub struct Handle {
    socket: Socket,
    seq: u32,
    port: u32,
}

impl Handle {
    /// Opens a netlink socket in the current thread's network namespace.
    pub fn new() -> Result<Self> {
        let sock_err = |op| move |source| Error::Socket { op, source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(sock_err("open"))?;
        let addr = socket.bind_auto().map_err(sock_err("bind"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(sock_err("connect"))?;
        // Best effort: older kernels lack these and then we simply get no message text.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Handle {
            socket,
            seq: 0,
            port: addr.port_number(),
        })
    }

    /// Sends a change request (`flags` are `NLM_F_CREATE`, `NLM_F_EXCL`, `NLM_F_REPLACE`, ...)
    /// and waits for the ack. Returns any messages the kernel sent before the ack (a `get`).
    pub(crate) fn change(
        &mut self,
        op: &'static str,
        subject: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.exchange(op, subject, msg, NLM_F_REQUEST | NLM_F_ACK | flags)
    }

    /// Sends a dump request and collects every part until `NLMSG_DONE`.
    pub(crate) fn dump(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.exchange(op, &String::new, msg, NLM_F_REQUEST | NLM_F_DUMP)
    }

    fn exchange(
        &mut self,
        op: &'static str,
        subject: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let buf = encode(msg, flags, seq);
        self.socket
            .send(&buf, 0)
            .map_err(|source| Error::Socket { op: "send", source })?;

        let mut replies = Vec::new();
        loop {
            let (datagram, _) = self
                .socket
                .recv_from_full()
                .map_err(|source| Error::Socket {
                    op: "receive",
                    source,
                })?;
            let mut offset = 0;
            while offset + NLMSG_HDRLEN <= datagram.len() {
                let bytes = &datagram[offset..];
                let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
                if len < NLMSG_HDRLEN || len > bytes.len() {
                    return Err(Error::Decode {
                        op,
                        message: format!("bad message length {len}"),
                    });
                }
                offset += align4(len);
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len])
                    .map_err(|e| Error::Decode {
                        op,
                        message: e.to_string(),
                    })?;
                if parsed.header.sequence_number != seq
                    || (parsed.header.port_number != 0 && parsed.header.port_number != self.port)
                {
                    continue; // a late answer to an earlier request
                }
                let header_flags = parsed.header.flags;
                match parsed.payload {
                    // A dump's parts, or a `get`'s answer (its ack follows).
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(code) => {
                            let errno = code.get().abs();
                            let message = extack_message(header_flags, &e.header)
                                .unwrap_or_else(|| strerror(errno));
                            return Err(Error::Netlink {
                                op,
                                subject: subject(),
                                errno,
                                message,
                            });
                        }
                    },
                    NetlinkPayload::Done(done) => {
                        if done.code != 0 {
                            let errno = done.code.abs();
                            return Err(Error::Netlink {
                                op,
                                subject: subject(),
                                errno,
                                message: strerror(errno),
                            });
                        }
                        return Ok(replies);
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(Error::Netlink {
                            op,
                            subject: subject(),
                            errno: libc::ENOBUFS,
                            message: "netlink overrun".into(),
                        })
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Serializes a request with the given flags and sequence number.
pub(crate) fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Extracts `NLMSGERR_ATTR_MSG` from an `NLMSG_ERROR` payload (after the errno):
/// the echoed request (only its header when `NLM_F_CAPPED`), then attributes.
pub(crate) fn extack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < NLMSG_HDRLEN {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        u32::from_ne_bytes(payload[0..4].try_into().ok()?) as usize
    };
    let mut attrs = payload.get(align4(echoed)..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let value = &attrs[4..len];
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            let text = String::from_utf8_lossy(&value[..end]).trim().to_string();
            return (!text.is_empty()).then_some(text);
        }
        attrs = attrs.get(align4(len)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkMessage;

    #[test]
    fn encodes_header_flags_and_sequence() {
        let buf = encode(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
            7,
        );
        assert_eq!(
            u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize,
            buf.len()
        );
        assert_eq!(u16::from_ne_bytes([buf[4], buf[5]]), 18); // RTM_GETLINK
        assert_eq!(
            u16::from_ne_bytes([buf[6], buf[7]]),
            NLM_F_REQUEST | NLM_F_DUMP
        );
        assert_eq!(u32::from_ne_bytes(buf[8..12].try_into().unwrap()), 7);
    }

    #[test]
    fn parses_extack_message_after_capped_header() {
        let mut payload = vec![0u8; NLMSG_HDRLEN];
        payload[0..4].copy_from_slice(&64u32.to_ne_bytes()); // original length, ignored when capped
        let text = b"Unknown device type\0";
        let attr_len = 4 + text.len();
        payload.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        assert_eq!(
            extack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload).as_deref(),
            Some("Unknown device type")
        );
        assert_eq!(extack_message(NLM_F_CAPPED, &payload), None);
    }
}
