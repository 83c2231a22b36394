//! Root tests of the socket-LB datapath for IPv4 Services (and their IPv4-mapped form on
//! AF_INET6 sockets). The harness (namespaces, cgroup, bpffs, backend server, client) is
//! `common/`; backends listen on 127.0.0.x inside the test's namespace.

mod common;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use common::{skip_unless_root, Env};
use eni_bpf::{
    terminate_udp_sockets_in, Backend, DatapathMaps, Protocol, ServiceKey, ServiceSpec, SocketLb,
};

fn vip(last: u8, port: u16, protocol: Protocol) -> ServiceKey {
    ServiceKey::v4(Ipv4Addr::new(10, 96, 0, last), port, protocol)
}

fn be(last: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, last), port)
}

fn active(addrs: &[SocketAddrV4]) -> ServiceSpec {
    ServiceSpec {
        backends: addrs.iter().map(|a| Backend::active(*a)).collect(),
        affinity_timeout: None,
    }
}

const B: [&str; 3] = ["127.0.0.2:8080", "127.0.0.3:8080", "127.0.0.4:8080"];

#[test]
fn tcp_spreads_over_backends_and_getpeername_shows_the_vip() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::new(&B);
    let key = vip(10, 80, Protocol::Tcp);
    let spec = active(&[be(2, 8080), be(3, 8080), be(4, 8080)]);
    env.load().upsert_service(key, &spec).expect("upsert");
    let mut c = env.client();
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        let (backend, peer) = c.pair("tcp 10.96.0.10 80");
        assert_eq!(peer, "10.96.0.10:80", "getpeername must show the ClusterIP");
        seen.insert(backend);
    }
    assert_eq!(seen, B.iter().map(|s| s.to_string()).collect(), "spread");
    // A port that is not a service is left alone (and goes nowhere: only lo exists).
    assert!(c.cmd("tcp 10.96.0.10 81").starts_with("ERR"));
    let listed = env.lb().list().expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, key);
    assert_eq!(listed[0].spec.backends.len(), 3);
}

/// Dual-stack sockets (AF_INET6) reaching an IPv4 Service through `::ffff:ClusterIP`, as
/// the JVM and others do by default: translated like AF_INET ones, the ClusterIP shown back.
#[test]
fn ipv4_mapped_ipv6_sockets_are_translated_too() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::new(&B[..2]);
    let lb = env.load();
    let both = active(&[be(2, 8080), be(3, 8080)]);
    lb.upsert_service(vip(10, 80, Protocol::Tcp), &both)
        .expect("upsert tcp");
    lb.upsert_service(vip(10, 53, Protocol::Udp), &both)
        .expect("upsert udp");
    let mut c = env.client();
    let mut tcp = BTreeSet::new();
    let mut udp = BTreeSet::new();
    for _ in 0..40 {
        let (backend, peer) = c.pair("tcp6 10.96.0.10 80");
        assert_eq!(
            peer, "::ffff:10.96.0.10:80",
            "getpeername6 shows the ClusterIP"
        );
        tcp.insert(backend);
        let (backend, src) = c.pair("udp6 10.96.0.10 53");
        assert_eq!(src, "::ffff:10.96.0.10:53", "recvmsg6 shows the ClusterIP");
        udp.insert(backend);
    }
    let want: BTreeSet<String> = B[..2].iter().map(|s| s.to_string()).collect();
    assert_eq!(tcp, want, "TCP spread");
    assert_eq!(udp, want, "UDP spread");
    // Not a service: untouched (and nothing listens there).
    assert!(c.cmd("tcp6 10.96.0.10 81").starts_with("ERR"));

    // A connected dual-stack UDP socket whose backend leaves is terminated too.
    let (first, peer) = c.pair("uconn6 u1 10.96.0.10 53");
    assert_eq!(peer, "::ffff:10.96.0.10:53");
    assert_eq!(c.pair("usend u1").0, first);
    let gone: SocketAddrV4 = first.parse().expect("addr");
    let keep: Vec<_> = [be(2, 8080), be(3, 8080)]
        .into_iter()
        .filter(|a| *a != gone)
        .collect();
    env.lb()
        .upsert_service(vip(10, 53, Protocol::Udp), &active(&keep))
        .expect("remove");
    let n = terminate_udp_sockets_in(&env.netns_path(), gone).expect("terminate");
    assert_eq!(n, 1, "the mapped socket is terminated");
    assert!(c.cmd("usend u1").starts_with("ERR"));
}

#[test]
fn affinity_holds_within_the_timeout_then_expires() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::new(&B);
    let key = vip(10, 80, Protocol::Tcp);
    let mut spec = active(&[be(2, 8080), be(3, 8080), be(4, 8080)]);
    spec.affinity_timeout = Some(Duration::from_secs(1));
    env.load().upsert_service(key, &spec).expect("upsert");
    let mut c = env.client();
    let (first, _) = c.pair("tcp 10.96.0.10 80");
    for _ in 0..30 {
        assert_eq!(c.pair("tcp 10.96.0.10 80").0, first, "affinity must hold");
    }
    // After the timeout a fresh pick happens; with 3 backends one differs soon.
    let mut moved = false;
    for _ in 0..15 {
        sleep(Duration::from_millis(1200));
        if c.pair("tcp 10.96.0.10 80").0 != first {
            moved = true;
            break;
        }
    }
    assert!(moved, "affinity never expired");
}

#[test]
fn terminating_backend_gets_no_new_connections_but_keeps_existing_ones() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::new(&B);
    let key = vip(10, 80, Protocol::Tcp);
    let all = [be(2, 8080), be(3, 8080), be(4, 8080)];
    env.load()
        .upsert_service(key, &active(&all))
        .expect("upsert");
    let mut c = env.client();
    let (victim, _) = c.pair("open keep 10.96.0.10 80");
    let victim_addr: SocketAddrV4 = victim.parse().expect("addr");
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
            c.pair("tcp 10.96.0.10 80").0,
            victim,
            "terminating got a new connection"
        );
    }
    assert_eq!(
        c.cmd("echo keep"),
        format!("{victim} ping"),
        "existing connection broke"
    );
    // Removed entirely: the established connection still works (no per-packet NAT).
    let rest: Vec<_> = all.iter().copied().filter(|a| *a != victim_addr).collect();
    env.lb()
        .upsert_service(key, &active(&rest))
        .expect("remove");
    assert_eq!(c.cmd("echo keep"), format!("{victim} ping"));
    for _ in 0..20 {
        assert_ne!(c.pair("tcp 10.96.0.10 80").0, victim);
    }
}

#[test]
fn udp_replies_come_from_the_vip() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::new(&["127.0.0.2:5353", "127.0.0.3:5353"]);
    let key = vip(11, 53, Protocol::Udp);
    env.load()
        .upsert_service(key, &active(&[be(2, 5353), be(3, 5353)]))
        .expect("upsert");
    let mut c = env.client();
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let (backend, src) = c.pair("udp 10.96.0.11 53");
        assert_eq!(
            src, "10.96.0.11:53",
            "recvfrom source must be the ClusterIP"
        );
        seen.insert(backend);
    }
    assert_eq!(seen.len(), 2, "unconnected UDP spreads per message");
    let out = c.cmd("uconn u 10.96.0.11 53");
    let f: Vec<_> = out.split_whitespace().collect();
    assert_eq!(f.len(), 3, "{out}");
    assert_eq!(f[1], "10.96.0.11:53", "connected UDP reply source: {out}");
    assert_eq!(f[2], "10.96.0.11:53", "connected UDP getpeername: {out}");
    // A TCP service on the same VIP and port is a different frontend: not configured.
    assert!(c.cmd("tcp 10.96.0.11 53").starts_with("ERR"));
    // Service deleted: recvmsg4 drops the stale reverse entry and shows the real source.
    assert!(env.lb().delete_service(key).expect("delete"));
    let (backend, src) = c.pair("usend u");
    assert_eq!(
        src, backend,
        "reply after service deletion comes from the backend itself"
    );
}

#[test]
fn connected_udp_socket_leaves_a_removed_backend() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::new(&["127.0.0.2:5353", "127.0.0.3:5353"]);
    let key = vip(11, 53, Protocol::Udp);
    let both = [be(2, 5353), be(3, 5353)];
    env.load()
        .upsert_service(key, &active(&both))
        .expect("upsert");
    let mut c = env.client();
    let (first, _) = c.pair("uconn u1 10.96.0.11 53");
    assert_eq!(c.pair("usend u1").0, first);
    let gone: SocketAddrV4 = first.parse().expect("addr");
    let keep: Vec<_> = both.iter().copied().filter(|a| *a != gone).collect();
    let out = env
        .lb()
        .upsert_service(key, &active(&keep))
        .expect("remove");
    assert_eq!(out.removed_backends, vec![gone.into()]);
    let n = terminate_udp_sockets_in(&env.netns_path(), gone).expect("terminate");
    assert!(n >= 1, "no socket terminated");
    // The old backend still listens: only the termination keeps the socket off it.
    let after = c.cmd("usend u1");
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("after termination: {after}\n").as_bytes(),
    );
    assert!(
        after.starts_with("ERR"),
        "socket still sends to the removed backend: {after}"
    );
    let (again, src) = c.pair("uconn u2 10.96.0.11 53");
    assert_eq!(again, keep[0].to_string());
    assert_eq!(src, "10.96.0.11:53");
}

#[test]
fn pinned_maps_and_links_outlive_the_loader_and_are_adopted() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::new(&B);
    let key = vip(10, 80, Protocol::Tcp);
    let id = env
        .load()
        .upsert_service(key, &active(&[be(2, 8080)]))
        .expect("upsert")
        .id;
    let udp_key = vip(11, 53, Protocol::Udp);
    env.lb()
        .upsert_service(udp_key, &active(&[be(3, 8080)]))
        .expect("upsert udp");
    let before = env.lb().list().expect("list");
    env.lb = None; // every fd of the loader is closed, as at process exit
    let mut c = env.client();
    assert_eq!(
        c.pair("tcp 10.96.0.10 80").0,
        "127.0.0.2:8080",
        "traffic after loader exit"
    );

    let cg = env.cgroup.clone();
    let lb = env.load(); // adopts the maps; attach finds the pinned links
    assert_eq!(
        lb.list().expect("list"),
        before,
        "adopted maps keep their services"
    );
    assert_eq!(
        lb.attach(&cg).expect("re-attach"),
        0,
        "links were pinned: nothing new"
    );
    let out = lb
        .upsert_service(key, &active(&[be(4, 8080)]))
        .expect("change after adopt");
    assert_eq!(out.id, id);
    assert!(!out.created);
    assert_eq!(c.pair("tcp 10.96.0.10 80").0, "127.0.0.4:8080");
    // A new service gets a fresh id, not one in use.
    let other = lb
        .upsert_service(vip(12, 80, Protocol::Tcp), &active(&[be(2, 8080)]))
        .expect("new");
    assert!(other.id != id && other.created);
}

const HELPER_ENV: &str = "ENI_BPF_TEST_LOADER";

/// Not a test on its own: when re-executed with `ENI_BPF_TEST_LOADER=<pins>:<cgroup>` it is
/// a separate loader process that loads, attaches, programs one service and exits without
/// running any destructor.
#[test]
fn helper_loader_process() {
    let Ok(arg) = std::env::var(HELPER_ENV) else {
        return;
    };
    let (pins, cgroup) = arg.split_once(':').expect("pins:cgroup");
    let mut lb = SocketLb::load_or_adopt(pins).expect("helper load");
    lb.attach(cgroup).expect("helper attach");
    lb.upsert_service(vip(10, 80, Protocol::Tcp), &active(&[be(3, 8080)]))
        .expect("helper upsert");
    std::process::exit(0);
}

#[test]
fn datapath_keeps_working_after_the_loader_process_exits() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::new(&B);
    let status = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "helper_loader_process", "--test-threads=1"])
        .env(
            HELPER_ENV,
            format!("{}:{}", env.pins.display(), env.cgroup.display()),
        )
        .stdout(Stdio::null())
        .status()
        .expect("run helper");
    assert!(status.success());
    let mut c = env.client();
    for _ in 0..5 {
        let (backend, peer) = c.pair("tcp 10.96.0.10 80");
        assert_eq!(
            (backend.as_str(), peer.as_str()),
            ("127.0.0.3:8080", "10.96.0.10:80")
        );
    }
    // The next loader process adopts what the first one left.
    let lb = env.load();
    let l = lb.list().expect("list");
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].spec.backends, vec![Backend::active(be(3, 8080))]);
}

#[test]
fn a_pinned_map_of_another_layout_is_refused() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::new(&B);
    env.load();
    env.lb = None;
    // Put the backends map (8-byte values) where the services map (16-byte values) goes.
    let svc = env.pins.join("lb4_services");
    std::fs::rename(env.pins.join("lb4_backends"), &svc).expect("rename pin");
    let err = SocketLb::load_or_adopt(&env.pins).expect_err("must refuse");
    assert!(
        matches!(err, eni_bpf::BpfError::IncompatiblePin { ref path, .. } if *path == svc),
        "{err:?}"
    );
}

#[test]
fn detach_stops_translation() {
    if skip_unless_root() {
        return;
    }
    let mut env = Env::new(&B);
    let key = vip(10, 80, Protocol::Tcp);
    env.load()
        .upsert_service(key, &active(&[be(2, 8080)]))
        .expect("upsert");
    let mut c = env.client();
    assert_eq!(c.pair("tcp 10.96.0.10 80").0, "127.0.0.2:8080");
    let cg = env.cgroup.clone();
    env.lb().detach(&cg).expect("detach");
    env.lb = None;
    assert!(
        c.cmd("tcp 10.96.0.10 80").starts_with("ERR"),
        "still translated after detach"
    );
    // Re-attach from a new loader: translation is back, same maps.
    let lb = env.load();
    assert_eq!(lb.list().expect("list").len(), 1);
    assert_eq!(c.pair("tcp 10.96.0.10 80").0, "127.0.0.2:8080");
}
