//! Terminating UDP sockets that are connected to a backend that is gone, through the
//! kernel's sock_diag `SOCK_DESTROY` (needs `CONFIG_INET_DIAG_DESTROY` and `CAP_NET_ADMIN`).
//!
//! A connected UDP socket is translated once, at `connect()`; later `send()` calls carry no
//! address and run no cgroup hook, so the eBPF side cannot move it. Like Cilium, the
//! control plane destroys such sockets when their backend leaves: the application sees
//! `ECONNABORTED` and the socket is disconnected, so it must connect again — and that
//! connect goes through `connect4` (or `connect6`) and picks a live backend. IPv4
//! backends are looked for among AF_INET sockets and AF_INET6 ones using the IPv4-mapped
//! form; IPv6 backends among AF_INET6 sockets. Sockets live in network
//! namespaces: this works on the calling thread's namespace, or on one given by path (a
//! short-lived thread enters it, so no caller thread is ever left in another namespace).

use std::{
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use crate::error::BpfError;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_sockid`: sport, dport, src[4], dst[4], if, cookie[2].
const SOCKID_LEN: usize = 48;
const REQ_LEN: usize = 8 + SOCKID_LEN;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_UDP: u8 = 17;

fn diag_err(op: &'static str) -> impl Fn(nix::Error) -> BpfError {
    move |e| BpfError::SockDiag {
        op,
        source: io::Error::from(e),
    }
}

fn message(kind: u16, flags: u16, seq: u32, family: u8, sockid: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // struct inet_diag_req_v2
    m.extend_from_slice(&[family, IPPROTO_UDP, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    m.extend_from_slice(sockid);
    m
}

fn open() -> Result<OwnedFd, BpfError> {
    socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(diag_err("socket"))
}

/// Walks netlink messages in `buf`; returns `Ok(true)` at `NLMSG_DONE`.
fn walk(
    buf: &[u8],
    mut each: impl FnMut(u16, &[u8]) -> Result<(), BpfError>,
) -> Result<bool, BpfError> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let payload = &buf[off + NLMSG_HDRLEN..off + len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = i32::from_ne_bytes(payload[..4].try_into().unwrap_or_default());
                if code != 0 {
                    return Err(BpfError::SockDiag {
                        op: "dump",
                        source: io::Error::from_raw_os_error(-code),
                    });
                }
            }
            _ => each(kind, payload)?,
        }
        off += (len + 3) & !3;
    }
    Ok(false)
}

/// Destroys every UDP socket of the calling thread's network namespace whose peer is
/// `backend`. For an IPv4 backend: AF_INET sockets, and AF_INET6 ones connected to its
/// IPv4-mapped form (`::ffff:a.b.c.d`, which the socket hooks translate too); for an IPv6
/// backend: AF_INET6 sockets. Returns how many were destroyed.
pub fn terminate_udp_sockets_to(backend: impl Into<SocketAddr>) -> Result<usize, BpfError> {
    let backend = backend.into();
    let families: &[u8] = match backend {
        SocketAddr::V4(_) => &[AF_INET, AF_INET6],
        SocketAddr::V6(_) => &[AF_INET6],
    };
    let mut destroyed = 0;
    let mut seq = 1;
    for family in families {
        destroyed += terminate_family(*family, backend, &mut seq)?;
    }
    Ok(destroyed)
}

/// The peer address as `struct inet_diag_sockid` holds it for `family` (16 bytes, IPv4 in
/// the first 4 for AF_INET; an IPv4 address in its mapped form for AF_INET6).
fn diag_dst(family: u8, backend: SocketAddr) -> Vec<u8> {
    match backend.ip() {
        IpAddr::V4(ip) if family == AF_INET => ip.octets().to_vec(),
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

fn terminate_family(family: u8, backend: SocketAddr, seq: &mut u32) -> Result<usize, BpfError> {
    let fd = open()?;
    let kernel = NetlinkAddr::new(0, 0);
    sendto(
        fd.as_raw_fd(),
        &message(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            *seq,
            family,
            &[0; SOCKID_LEN],
        ),
        &kernel,
        MsgFlags::empty(),
    )
    .map_err(diag_err("dump request"))?;
    *seq += 1;

    let dport = backend.port().to_be_bytes();
    let dst = diag_dst(family, backend);
    let mut victims: Vec<[u8; SOCKID_LEN]> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(diag_err("dump"))?;
        let done = walk(&buf[..n], |_, p| {
            // struct inet_diag_msg: family, state, timer, retrans, then the sockid
            // (sport, dport, src[16], dst[16], ...).
            if p.len() >= 4 + SOCKID_LEN {
                let id = &p[4..4 + SOCKID_LEN];
                if id[2..4] == dport && id[20..20 + dst.len()] == dst[..] {
                    let mut v = [0u8; SOCKID_LEN];
                    v.copy_from_slice(id);
                    victims.push(v);
                }
            }
            Ok(())
        })?;
        if done || n == 0 {
            break;
        }
    }

    let mut destroyed = 0;
    for id in &victims {
        let fd = open()?;
        sendto(
            fd.as_raw_fd(),
            &message(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, *seq, family, id),
            &kernel,
            MsgFlags::empty(),
        )
        .map_err(diag_err("destroy request"))?;
        *seq += 1;
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(diag_err("destroy"))?;
        match walk(&buf[..n], |_, _| Ok(())) {
            Ok(_) => destroyed += 1,
            // Gone meanwhile: nothing to do.
            Err(BpfError::SockDiag { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(destroyed)
}

/// [`terminate_udp_sockets_to`] inside the network namespace at `netns` (e.g.
/// `/run/netns/NAME` or `/proc/PID/ns/net`), from a short-lived thread.
pub fn terminate_udp_sockets_in(
    netns: &Path,
    backend: impl Into<SocketAddr>,
) -> Result<usize, BpfError> {
    let backend = backend.into();
    let ns = File::open(netns).map_err(|e| BpfError::io("open netns", netns, e))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(diag_err("setns"))?;
            terminate_udp_sockets_to(backend)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(BpfError::SockDiag {
                op: "thread",
                source: io::Error::other("panicked"),
            })
        })
    })
}
