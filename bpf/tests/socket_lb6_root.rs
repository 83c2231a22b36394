//! Root tests of the socket-LB datapath for native IPv6 Services (the `lb6_*` tables): the
//! clients' namespace is joined by a veth pair to a namespace holding the backends, both
//! sides with IPv4 and ULA IPv6 addresses (`common::Env::with_peer`). The ClusterIPs
//! (fd00:96::/64, 10.96.0.0/16) are routed nowhere: only the hooks make them reachable.

mod common;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    thread::sleep,
    time::Duration,
};

use common::{skip_unless_root, Env};
use eni_bpf::{
    terminate_udp_sockets_in, Backend, DatapathMaps, Protocol, ServiceKey, ServiceSpec, SocketLb,
};

fn vip6(last: u16, port: u16, protocol: Protocol) -> ServiceKey {
    ServiceKey {
        vip: IpAddr::V6(format!("fd00:96::{last:x}").parse().expect("vip")),
        port,
        protocol,
    }
}

/// fd00:200::`last` (the peer side of the veth), port.
fn be6(last: u8, port: u16) -> SocketAddr {
    format!("[fd00:200::{last}]:{port}")
        .parse()
        .expect("backend")
}

/// 10.200.0.`last`, port.
fn be4(last: u8, port: u16) -> SocketAddr {
    format!("10.200.0.{last}:{port}").parse().expect("backend")
}

fn active(addrs: &[SocketAddr]) -> ServiceSpec {
    ServiceSpec {
        backends: addrs.iter().map(|a| Backend::active(*a)).collect(),
        affinity_timeout: None,
    }
}

fn names(addrs: &[SocketAddr]) -> BTreeSet<String> {
    addrs.iter().map(|a| a.to_string()).collect()
}

const B6: [&str; 3] = [
    "[fd00:200::2]:8080",
    "[fd00:200::3]:8080",
    "[fd00:200::4]:8080",
];

#[test]
fn tcp_to_an_ipv6_clusterip_spreads_and_getpeername_shows_the_vip() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::with_peer(&B6[..2]);
    let key = vip6(0x10, 80, Protocol::Tcp);
    let two = [be6(2, 8080), be6(3, 8080)];
    env.load()
        .upsert_service(key, &active(&two))
        .expect("upsert");
    let mut c = env.client();
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let (backend, peer) = c.pair("tcpn fd00:96::10 80");
        assert_eq!(
            peer, "[fd00:96::10]:80",
            "getpeername must show the ClusterIP"
        );
        seen.insert(backend);
    }
    assert_eq!(seen, names(&two), "spread over both backends");
    // A port that is not a service is left alone (and is routed nowhere).
    assert!(c.cmd("tcpn fd00:96::10 81").starts_with("ERR"));
    // Backends are reachable directly too: the hook only touches service addresses.
    assert_eq!(c.pair("tcpn fd00:200::2 8080").0, "[fd00:200::2]:8080");
    let listed = env.lb().list().expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, key);
    assert_eq!(
        names(
            &listed[0]
                .spec
                .backends
                .iter()
                .map(|b| b.addr())
                .collect::<Vec<_>>()
        ),
        names(&two)
    );
}

#[test]
fn udp_replies_come_from_the_ipv6_clusterip() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::with_peer(&["[fd00:200::2]:5353", "[fd00:200::3]:5353"]);
    let key = vip6(0x11, 53, Protocol::Udp);
    let two = [be6(2, 5353), be6(3, 5353)];
    env.load()
        .upsert_service(key, &active(&two))
        .expect("upsert");
    let mut c = env.client();
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let (backend, src) = c.pair("udpn fd00:96::11 53");
        assert_eq!(
            src, "[fd00:96::11]:53",
            "recvfrom source must be the ClusterIP"
        );
        seen.insert(backend);
    }
    assert_eq!(seen, names(&two), "unconnected UDP spreads per message");
    let out = c.cmd("uconnn u fd00:96::11 53");
    let f: Vec<_> = out.split_whitespace().collect();
    assert_eq!(f.len(), 3, "{out}");
    assert_eq!(
        f[1], "[fd00:96::11]:53",
        "connected UDP reply source: {out}"
    );
    assert_eq!(f[2], "[fd00:96::11]:53", "connected UDP getpeername: {out}");
    // TCP on the same VIP and port is another frontend: not configured.
    assert!(c.cmd("tcpn fd00:96::11 53").starts_with("ERR"));
    // Service deleted: recvmsg6 drops the stale reverse entry and shows the real source.
    assert!(env.lb().delete_service(key).expect("delete"));
    let (backend, src) = c.pair("usendn u");
    assert_eq!(
        src, backend,
        "reply after deletion comes from the backend itself"
    );
}

#[test]
fn ipv6_affinity_holds_within_the_timeout_then_expires() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::with_peer(&B6);
    let key = vip6(0x10, 80, Protocol::Tcp);
    let mut spec = active(&[be6(2, 8080), be6(3, 8080), be6(4, 8080)]);
    spec.affinity_timeout = Some(Duration::from_secs(1));
    env.load().upsert_service(key, &spec).expect("upsert");
    let mut c = env.client();
    // First contact with each backend waits for neighbour discovery (a lost SYN is resent
    // after a second, the whole timeout): warm the neighbour entries up first.
    for b in B6 {
        let (ip, port) = b.trim_start_matches('[').split_once("]:").expect("addr");
        assert_eq!(c.pair(&format!("tcpn {ip} {port}")).0, b);
    }
    let (first, _) = c.pair("tcpn fd00:96::10 80");
    for _ in 0..30 {
        assert_eq!(c.pair("tcpn fd00:96::10 80").0, first, "affinity must hold");
    }
    let mut moved = false;
    for _ in 0..15 {
        sleep(Duration::from_millis(1200));
        if c.pair("tcpn fd00:96::10 80").0 != first {
            moved = true;
            break;
        }
    }
    assert!(moved, "affinity never expired");
}

#[test]
fn terminating_ipv6_backend_gets_no_new_connections_but_keeps_existing_ones() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::with_peer(&B6);
    let key = vip6(0x10, 80, Protocol::Tcp);
    let all = [be6(2, 8080), be6(3, 8080), be6(4, 8080)];
    env.load()
        .upsert_service(key, &active(&all))
        .expect("upsert");
    let mut c = env.client();
    let (victim, peer) = c.pair("openn keep fd00:96::10 80");
    assert_eq!(peer, "[fd00:96::10]:80");
    let victim_addr: SocketAddr = victim.parse().expect("addr");
    let spec = ServiceSpec {
        backends: all
            .iter()
            .map(|a| {
                if *a == victim_addr {
                    Backend::terminating(*a)
                } else {
                    Backend::active(*a)
                }
            })
            .collect(),
        affinity_timeout: None,
    };
    let out = env
        .lb()
        .upsert_service(key, &spec)
        .expect("mark terminating");
    assert!(out.removed_backends.is_empty());
    for _ in 0..40 {
        assert_ne!(
            c.pair("tcpn fd00:96::10 80").0,
            victim,
            "terminating got a new connection"
        );
    }
    assert_eq!(
        c.cmd("echo keep"),
        format!("{victim} ping"),
        "existing connection broke"
    );
}

#[test]
fn connected_udp_socket_to_a_removed_ipv6_backend_is_terminated() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::with_peer(&["[fd00:200::2]:5353", "[fd00:200::3]:5353"]);
    let key = vip6(0x11, 53, Protocol::Udp);
    let both = [be6(2, 5353), be6(3, 5353)];
    env.load()
        .upsert_service(key, &active(&both))
        .expect("upsert");
    let mut c = env.client();
    let out = c.cmd("uconnn u1 fd00:96::11 53");
    let first = out.split_whitespace().next().unwrap_or_default().to_owned();
    assert!(!out.starts_with("ERR"), "{out}");
    assert_eq!(c.pair("usendn u1").0, first);
    let gone: SocketAddr = first.parse().expect("addr");
    let keep: Vec<_> = both.iter().copied().filter(|a| *a != gone).collect();
    let out = env
        .lb()
        .upsert_service(key, &active(&keep))
        .expect("remove");
    assert_eq!(out.removed_backends, vec![gone]);
    let n = terminate_udp_sockets_in(&env.netns_path(), gone).expect("terminate");
    assert_eq!(n, 1, "the AF_INET6 socket is terminated");
    // The old backend still listens: only the termination keeps the socket off it.
    assert!(
        c.cmd("usendn u1").starts_with("ERR"),
        "socket still sends to the removed backend"
    );
    let out = c.cmd("uconnn u2 fd00:96::11 53");
    assert!(out.starts_with(&keep[0].to_string()), "{out}");
}

/// One Service with an IPv4 and an IPv6 ClusterIP (a dual-stack Service: one frontend per
/// family, each with its family's endpoints) served by the same backend processes.
#[test]
fn dual_stack_service_answers_on_both_clusterips() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::with_peer(&[
        "10.200.0.2:8080",
        "10.200.0.3:8080",
        "[fd00:200::2]:8080",
        "[fd00:200::3]:8080",
    ]);
    let v4 = ServiceKey::v4("10.96.0.20".parse().expect("v4"), 80, Protocol::Tcp);
    let v6 = vip6(0x20, 80, Protocol::Tcp);
    let u4 = ServiceKey {
        protocol: Protocol::Udp,
        ..v4
    };
    let u6 = ServiceKey {
        protocol: Protocol::Udp,
        ..v6
    };
    let (b4, b6) = ([be4(2, 8080), be4(3, 8080)], [be6(2, 8080), be6(3, 8080)]);
    let lb = env.load();
    for (k, b) in [(v4, &b4), (u4, &b4), (v6, &b6), (u6, &b6)] {
        lb.upsert_service(k, &active(b)).expect("upsert");
    }
    // Mixing families in one frontend is refused, naming the frontend and the fix.
    let err = lb
        .upsert_service(v4, &active(&b6))
        .expect_err("mixed")
        .to_string();
    assert!(
        err.contains("10.96.0.20:80/tcp") && err.contains("IPv6"),
        "{err}"
    );
    let mut c = env.client();
    let (mut t4, mut t6, mut m4) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for _ in 0..30 {
        let (b, peer) = c.pair("tcpn 10.96.0.20 80");
        assert_eq!(peer, "10.96.0.20:80");
        t4.insert(b);
        let (b, peer) = c.pair("tcpn fd00:96::20 80");
        assert_eq!(peer, "[fd00:96::20]:80");
        t6.insert(b);
        // The IPv4 ClusterIP through an AF_INET6 socket (mapped form): IPv4 backends.
        let (b, peer) = c.pair("tcp6 10.96.0.20 80");
        assert_eq!(peer, "::ffff:10.96.0.20:80");
        m4.insert(b);
        let (b, src) = c.pair("udpn fd00:96::20 80");
        assert_eq!(src, "[fd00:96::20]:80");
        assert!(names(&b6).contains(&b), "{b}");
        let (b, src) = c.pair("udpn 10.96.0.20 80");
        assert_eq!(src, "10.96.0.20:80");
        assert!(names(&b4).contains(&b), "{b}");
    }
    assert_eq!(t4, names(&b4));
    assert_eq!(t6, names(&b6));
    assert_eq!(m4, names(&b4));
    let listed = env.lb().list().expect("list");
    assert_eq!(listed.len(), 4);
    let ids: BTreeSet<u32> = listed.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 4, "one id space: every frontend has its own id");
}

#[test]
fn a_second_loader_adopts_the_ipv6_tables() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::with_peer(&B6);
    let key = vip6(0x10, 80, Protocol::Tcp);
    let v4 = ServiceKey::v4("10.96.0.10".parse().expect("v4"), 80, Protocol::Tcp);
    let lb = env.load();
    let id = lb
        .upsert_service(key, &active(&[be6(2, 8080)]))
        .expect("upsert")
        .id;
    lb.upsert_service(v4, &active(&[be4(3, 8080)]))
        .expect("upsert v4");
    let mut spec = active(&[be6(3, 8080)]);
    spec.affinity_timeout = Some(Duration::from_secs(60));
    lb.upsert_service(vip6(0x11, 80, Protocol::Tcp), &spec)
        .expect("upsert affinity");
    let before = env.lb().list().expect("list");
    for m in [
        "lb6_services",
        "lb6_backends",
        "lb6_affinity",
        "lb6_rev_nat",
    ] {
        assert!(
            env.pins.join(m).exists(),
            "{m} pinned next to the IPv4 maps"
        );
    }
    env.lb = None; // every fd of the loader is closed, as at process exit
    let mut c = env.client();
    assert_eq!(
        c.pair("tcpn fd00:96::10 80").0,
        "[fd00:200::2]:8080",
        "after loader exit"
    );

    let lb = env.load();
    assert_eq!(
        lb.list().expect("list"),
        before,
        "adopted maps keep their services"
    );
    let out = lb
        .upsert_service(key, &active(&[be6(4, 8080)]))
        .expect("change after adopt");
    assert_eq!((out.id, out.created), (id, false));
    assert_eq!(out.removed_backends, vec![be6(2, 8080)]);
    assert_eq!(c.pair("tcpn fd00:96::10 80").0, "[fd00:200::4]:8080");
    // Ids of both families were read back: a new service gets an id in use by neither.
    let other = lb
        .upsert_service(vip6(0x12, 80, Protocol::Tcp), &active(&[be6(2, 8080)]))
        .expect("new");
    assert!(other.created && before.iter().all(|e| e.id != other.id));
    // The pins read without a loader (what `enictl services` does) show the IPv6 entries.
    let read = eni_bpf::read_pinned(&env.pins).expect("read pinned");
    assert!(read
        .iter()
        .any(|e| e.key == key && e.spec.backends == vec![Backend::active(be6(4, 8080))]));
    drop(SocketLb::load_or_adopt(&env.pins).expect("a third loader adopts too"));
}
