//! Root tests of the per-packet (tc) path: NodePort, externalIPs, externalTrafficPolicy.
//!
//! Each test builds its own little cluster out of network namespaces, named
//! `npt<pid>-<n>-<role>`: a "switch" namespace holding a bridge, two "nodes" A and B plugged
//! into it with a veth each (`eth0`, 10.250.0.1 and .2/24), one "pod" behind each node (a
//! veth, pod address /32, default route via 169.254.1.1 on the node side; A's pod
//! 10.251.1.10, B's 10.251.2.10; each node routes the other's pod /24 via the other node),
//! and a "client" (10.250.0.100) on the same bridge. Servers and clients are std
//! TcpListener/TcpStream/UdpSocket on threads that entered a namespace with setns. Each
//! node has its own pin directory on a private bpffs mount. Nothing of the host's network
//! namespace or `/sys/fs/bpf` is touched; guards remove everything, also on panic.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use eni_bpf::{
    unpin_all, unpin_nodeport, Backend, DatapathMaps, NodePortLb, Protocol, ServiceKey,
    ServiceSpec, SocketLb, TrafficPolicy,
};

static SEQ: AtomicU32 = AtomicU32::new(0);

const NODE_A: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 100);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 251, 1, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 251, 2, 10);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(10, 252, 0, 50);
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const IO_TIMEOUT: Duration = Duration::from_secs(2);

fn skip_unless_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr(), b"SKIPPED: needs root\n");
    true
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("spawn ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Runs `f` on a new thread inside the namespace `ns`; the caller's thread never moves.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(netns_path(ns)).expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread in netns")
}

/// TCP and UDP servers inside a pod namespace. TCP: greets with `<name> <peer>` and then
/// echoes lines as `<name> <line>`; UDP: answers every datagram with `<name> <peer>`.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    fn start(&mut self, ns: &str, name: &str, addr: Ipv4Addr) {
        let (tx, rx) = mpsc::channel();
        let file = File::open(netns_path(ns)).expect("open netns");
        let (stop, name) = (self.stop.clone(), name.to_owned());
        self.threads.push(std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let tcp = TcpListener::bind(SocketAddrV4::new(addr, TCP_PORT)).expect("bind tcp");
            tcp.set_nonblocking(true).expect("nonblocking");
            let udp = UdpSocket::bind(SocketAddrV4::new(addr, UDP_PORT)).expect("bind udp");
            udp.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            tx.send(()).expect("ready");
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::SeqCst) {
                match tcp.accept() {
                    Ok((s, peer)) => {
                        let name = name.clone();
                        std::thread::spawn(move || echo(s, &name, peer));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("accept: {e}"),
                }
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(format!("{name} {peer}").as_bytes(), peer);
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server ready");
    }
}

fn echo(s: TcpStream, name: &str, peer: SocketAddr) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut w = s.try_clone().expect("clone");
    if writeln!(w, "{name} {peer}").is_err() {
        return;
    }
    for line in BufReader::new(s).lines() {
        let Ok(line) = line else { return };
        if writeln!(w, "{name} {line}").is_err() {
            return;
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// (server name, peer address the server saw) of one TCP connection from the client.
fn tcp_once(ns: &str, to: SocketAddrV4) -> Result<(String, SocketAddrV4), String> {
    in_ns(ns, move || {
        let s = TcpStream::connect_timeout(&to.into(), IO_TIMEOUT).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        parse_greeting(&line)
    })
}

fn parse_greeting(line: &str) -> Result<(String, SocketAddrV4), String> {
    let mut it = line.split_whitespace();
    let name = it.next().ok_or(format!("empty answer {line:?}"))?;
    let peer = it
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or(format!("bad answer {line:?}"))?;
    Ok((name.to_owned(), peer))
}

/// (server name, peer the server saw, source of the reply) of one UDP exchange.
fn udp_once(ns: &str, to: SocketAddrV4) -> Result<(String, SocketAddrV4, SocketAddr), String> {
    in_ns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.send_to(b"x", to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1500];
        let (n, src) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        let (name, peer) = parse_greeting(&String::from_utf8_lossy(&buf[..n]))?;
        Ok((name, peer, src))
    })
}

/// A persistent TCP connection from the client namespace: greeting, then `rounds` echoes.
fn tcp_session(ns: &str, to: SocketAddrV4, rounds: usize) -> Result<String, String> {
    in_ns(ns, move || {
        let s = TcpStream::connect_timeout(&to.into(), IO_TIMEOUT).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let (name, _) = parse_greeting(&line)?;
        for i in 0..rounds {
            let msg = format!("ping{i}-{}", "x".repeat(i * 300));
            writeln!(w, "{msg}").map_err(|e| e.to_string())?;
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            if line.trim() != format!("{name} {msg}") {
                return Err(format!("echo {i}: {line:?}"));
            }
        }
        Ok(name)
    })
}

/// One TCP connection that moves `size` bytes each way (large, GSO-sized segments on
/// veths): returns the server's name.
fn tcp_bulk(ns: &str, to: SocketAddrV4, size: usize) -> Result<String, String> {
    in_ns(ns, move || {
        let s = TcpStream::connect_timeout(&to.into(), IO_TIMEOUT).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let (name, _) = parse_greeting(&line)?;
        let payload = "y".repeat(size);
        let writer = std::thread::spawn(move || writeln!(w, "{payload}").map(|_| w));
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        writer
            .join()
            .map_err(|_| "writer panicked".to_owned())?
            .map_err(|e| e.to_string())?;
        let want = name.len() + 1 + size;
        if line.trim_end().len() != want {
            return Err(format!(
                "echo of {} bytes, want {want}",
                line.trim_end().len()
            ));
        }
        Ok(name)
    })
}

/// One node's loaders, over its own pin directory.
struct NodeDp {
    np: NodePortLb,
    lb: SocketLb,
}

/// The whole test cluster. Drop order: servers, loaders, pins, bpffs, namespaces.
struct Cluster {
    servers: Servers,
    dp: Vec<NodeDp>,
    pins: Vec<PathBuf>,
    bpffs: PathBuf,
    mounted: bool,
    namespaces: Vec<String>,
    tag: String,
}

impl Cluster {
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.tag)
    }

    fn add_ns(&mut self, role: &str) -> String {
        let name = self.ns(role);
        ip(&["netns", "add", &name]);
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Plugs `ns` into the switch with `eth0` = `addr`/24.
    fn plug(&mut self, ns: &str, port: &str, addr: Ipv4Addr) {
        let sw = self.ns("sw");
        ip(&[
            "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &sw,
        ]);
        ip(&["-n", &sw, "link", "set", port, "master", "br0", "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
    }

    /// A pod namespace behind `node`, /32 style.
    fn pod(&mut self, role: &str, node: &str, addr: Ipv4Addr) -> String {
        let pod = self.add_ns(role);
        let host = format!("v{role}");
        ip(&[
            "-n", node, "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &pod,
        ]);
        ip(&[
            "-n",
            &pod,
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &pod, "link", "set", "eth0", "up"]);
        ip(&["-n", &pod, "route", "add", "169.254.1.1", "dev", "eth0"]);
        ip(&["-n", &pod, "route", "add", "default", "via", "169.254.1.1"]);
        ip(&["-n", node, "link", "set", &host, "up"]);
        ip(&["-n", node, "addr", "add", "169.254.1.1/32", "dev", &host]);
        ip(&[
            "-n",
            node,
            "route",
            "add",
            &format!("{addr}/32"),
            "dev",
            &host,
        ]);
        pod
    }

    fn new() -> Self {
        let tag = format!(
            "npt{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let bpffs = std::env::temp_dir().join(format!("{tag}-bpffs"));
        let mut c = Cluster {
            servers: Servers::new(),
            dp: Vec::new(),
            pins: Vec::new(),
            bpffs,
            mounted: false,
            namespaces: Vec::new(),
            tag,
        };
        let sw = c.add_ns("sw");
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        let a = c.add_ns("a");
        let b = c.add_ns("b");
        let client = c.add_ns("c");
        c.plug(&a, "pa", NODE_A);
        c.plug(&b, "pb", NODE_B);
        c.plug(&client, "pc", CLIENT);
        for node in [&a, &b] {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    node,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                ])
                .output()
                .expect("sysctl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ip(&[
            "-n",
            &a,
            "route",
            "add",
            "10.251.2.0/24",
            "via",
            &NODE_B.to_string(),
        ]);
        ip(&[
            "-n",
            &b,
            "route",
            "add",
            "10.251.1.0/24",
            "via",
            &NODE_A.to_string(),
        ]);
        ip(&[
            "-n",
            &client,
            "route",
            "add",
            &format!("{EXTERNAL_IP}/32"),
            "via",
            &NODE_A.to_string(),
        ]);
        let pa = c.pod("pa1", &a, POD_A);
        let pb = c.pod("pb1", &b, POD_B);
        c.servers.start(&pa, "pod-a1", POD_A);
        c.servers.start(&pb, "pod-b1", POD_B);

        std::fs::create_dir_all(&c.bpffs).expect("bpffs dir");
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&c.bpffs)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        c.mounted = true;
        for (node, addr) in [(a, NODE_A), (b, NODE_B)] {
            let pins = c.bpffs.join(&node);
            c.pins.push(pins.clone());
            let lb = SocketLb::load_or_adopt(&pins).expect("load socket lb maps");
            let mut np = NodePortLb::load_or_adopt(&pins).expect("load nodeport");
            assert_eq!(
                np.attach(netns_path(&node), "eth0", addr).expect("attach"),
                2,
                "ingress and egress newly attached"
            );
            c.dp.push(NodeDp { np, lb });
        }
        c
    }

    fn client(&self) -> String {
        self.ns("c")
    }

    fn node_a(&mut self) -> &mut NodeDp {
        &mut self.dp[0]
    }

    /// Programs a frontend on node A: backends in the shared maps, then the policy.
    fn frontend(&mut self, key: ServiceKey, backends: &[SocketAddrV4], policy: TrafficPolicy) {
        let spec = ServiceSpec {
            backends: backends.iter().map(|b| Backend::active(*b)).collect(),
            affinity_timeout: None,
        };
        let dp = self.node_a();
        dp.lb.upsert_service(key, &spec).expect("upsert");
        dp.np.set_frontend(key, policy).expect("set frontend");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.servers.stop.store(true, Ordering::SeqCst);
        for t in self.servers.threads.drain(..) {
            let _ = t.join();
        }
        self.dp.clear();
        for p in &self.pins {
            let _ = unpin_nodeport(p);
            let _ = unpin_all(p);
        }
        if self.mounted {
            let _ = Command::new("umount").arg(&self.bpffs).status();
        }
        let _ = std::fs::remove_dir(&self.bpffs);
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn key(vip: Ipv4Addr, port: u16, protocol: Protocol) -> ServiceKey {
    ServiceKey {
        vip: vip.into(),
        port,
        protocol,
    }
}

fn both(port: u16) -> [SocketAddrV4; 2] {
    [
        SocketAddrV4::new(POD_A, port),
        SocketAddrV4::new(POD_B, port),
    ]
}

#[test]
fn nodeport_cluster_policy_reaches_local_and_remote_backends_tcp_and_udp() {
    if skip_unless_root() {
        return;
    }
    let mut c = Cluster::new();
    c.frontend(
        key(NODE_A, 30080, Protocol::Tcp),
        &both(TCP_PORT),
        TrafficPolicy::Cluster,
    );
    c.frontend(
        key(NODE_A, 30053, Protocol::Udp),
        &both(UDP_PORT),
        TrafficPolicy::Cluster,
    );
    let client = c.client();
    let np_tcp = SocketAddrV4::new(NODE_A, 30080);

    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let (name, peer) = tcp_once(&client, np_tcp).expect("tcp via NodePort");
        match name.as_str() {
            // Remote backend: the client is SNATed to node A, from the SNAT port range.
            "pod-b1" => {
                assert_eq!(*peer.ip(), NODE_A, "remote backend must see node A (SNAT)");
                assert!(peer.port() >= eni_bpf::maps::SNAT_PORT_MIN, "{peer}");
            }
            // Backend behind node A: the reply passes node A anyway, no SNAT needed.
            "pod-a1" => assert_eq!(*peer.ip(), CLIENT, "local backend sees the client"),
            other => panic!("unexpected server {other}"),
        }
        seen.insert(name);
    }
    assert_eq!(seen.len(), 2, "both backends used: {seen:?}");

    // Long-lived connections keep their backend and translation in both directions.
    let mut sessions = BTreeSet::new();
    for _ in 0..30 {
        sessions.insert(tcp_session(&client, np_tcp, 5).expect("session"));
        if sessions.len() == 2 {
            break;
        }
    }
    assert_eq!(sessions.len(), 2, "sessions to both backends: {sessions:?}");
    // Bulk transfers (checksums of large offloaded segments, SNAT + redirect both ways).
    let mut bulk = BTreeSet::new();
    for _ in 0..30 {
        bulk.insert(tcp_bulk(&client, np_tcp, 2 << 20).expect("bulk"));
        if bulk.len() == 2 {
            break;
        }
    }
    assert_eq!(bulk.len(), 2, "bulk to both backends: {bulk:?}");

    let np_udp = SocketAddrV4::new(NODE_A, 30053);
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let (name, peer, src) = udp_once(&client, np_udp).expect("udp via NodePort");
        assert_eq!(
            src,
            SocketAddr::V4(np_udp),
            "UDP reply must come from the NodePort"
        );
        if name == "pod-b1" {
            assert_eq!(*peer.ip(), NODE_A, "remote UDP backend must see node A");
        } else {
            assert_eq!(*peer.ip(), CLIENT);
        }
        seen.insert(name);
    }
    assert_eq!(seen.len(), 2, "both UDP backends used: {seen:?}");
    assert!(c.node_a().np.tracked_entries().expect("ct") >= 4);

    // A port that is no frontend is left to the stack (node A listens on nothing there).
    assert!(tcp_once(&client, SocketAddrV4::new(NODE_A, 30081)).is_err());
}

#[test]
fn local_policy_keeps_the_client_address_and_never_uses_remote_backends() {
    if skip_unless_root() {
        return;
    }
    let mut c = Cluster::new();
    c.frontend(
        key(NODE_A, 30080, Protocol::Tcp),
        &both(TCP_PORT),
        TrafficPolicy::Local,
    );
    c.frontend(
        key(NODE_A, 30053, Protocol::Udp),
        &both(UDP_PORT),
        TrafficPolicy::Local,
    );
    let remote_only = key(NODE_A, 30090, Protocol::Tcp);
    c.frontend(
        remote_only,
        &[SocketAddrV4::new(POD_B, TCP_PORT)],
        TrafficPolicy::Local,
    );
    let client = c.client();

    for _ in 0..30 {
        let (name, peer) = tcp_once(&client, SocketAddrV4::new(NODE_A, 30080)).expect("tcp Local");
        assert_eq!(name, "pod-a1", "Local policy must not use node B's backend");
        assert_eq!(*peer.ip(), CLIENT, "Local policy keeps the client address");
    }
    let np_udp = SocketAddrV4::new(NODE_A, 30053);
    for _ in 0..20 {
        let (name, peer, src) = udp_once(&client, np_udp).expect("udp Local");
        assert_eq!((name.as_str(), *peer.ip()), ("pod-a1", CLIENT));
        assert_eq!(src, SocketAddr::V4(np_udp));
    }
    assert_eq!(
        tcp_session(&client, SocketAddrV4::new(NODE_A, 30080), 5).expect("session"),
        "pod-a1"
    );

    // No backend behind node A: dropped, never sent to node B.
    let err = tcp_once(&client, SocketAddrV4::new(NODE_A, 30090));
    assert!(
        err.is_err(),
        "Local with only remote backends must not answer: {err:?}"
    );
    // The same frontend with Cluster policy reaches node B's backend.
    assert!(c
        .node_a()
        .np
        .set_frontend(remote_only, TrafficPolicy::Cluster)
        .expect("set"));
    let (name, peer) =
        tcp_once(&client, SocketAddrV4::new(NODE_A, 30090)).expect("tcp after Cluster");
    assert_eq!((name.as_str(), *peer.ip()), ("pod-b1", NODE_A));
    assert_eq!(
        c.node_a().np.frontends().expect("list"),
        vec![
            (key(NODE_A, 30053, Protocol::Udp), TrafficPolicy::Local),
            (key(NODE_A, 30080, Protocol::Tcp), TrafficPolicy::Local),
            (remote_only, TrafficPolicy::Cluster),
        ]
    );
}

#[test]
fn external_ip_from_outside_works_like_a_cluster_ip() {
    if skip_unless_root() {
        return;
    }
    let mut c = Cluster::new();
    c.frontend(
        key(EXTERNAL_IP, 80, Protocol::Tcp),
        &both(TCP_PORT),
        TrafficPolicy::Cluster,
    );
    c.frontend(
        key(EXTERNAL_IP, 53, Protocol::Udp),
        &both(UDP_PORT),
        TrafficPolicy::Cluster,
    );
    let client = c.client();
    let ext = SocketAddrV4::new(EXTERNAL_IP, 80);
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        seen.insert(tcp_once(&client, ext).expect("tcp to externalIP").0);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let ext_udp = SocketAddrV4::new(EXTERNAL_IP, 53);
    for _ in 0..10 {
        let (_, _, src) = udp_once(&client, ext_udp).expect("udp to externalIP");
        assert_eq!(
            src,
            SocketAddr::V4(ext_udp),
            "UDP reply from the externalIP"
        );
    }
    // Another port of that address is no frontend: node A has no route for it.
    assert!(tcp_once(&client, SocketAddrV4::new(EXTERNAL_IP, 81)).is_err());
    // Removing the frontend stops the translation.
    assert!(c
        .node_a()
        .np
        .remove_frontend(key(EXTERNAL_IP, 80, Protocol::Tcp))
        .expect("rm"));
    assert!(tcp_once(&client, ext).is_err());
}

#[test]
fn attach_is_idempotent_survives_the_loader_and_detach_stops_it() {
    if skip_unless_root() {
        return;
    }
    let mut c = Cluster::new();
    let k = key(NODE_A, 30080, Protocol::Tcp);
    c.frontend(k, &both(TCP_PORT), TrafficPolicy::Cluster);
    let a = netns_path(&c.ns("a"));
    assert_eq!(
        c.node_a().np.attach(&a, "eth0", NODE_A).expect("re-attach"),
        0
    );
    let links = c.node_a().np.attachments(&a).expect("list");
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0].name.as_deref(), Some("eth0"));
    assert_eq!(links[0].node_ip, NODE_A);
    assert!(links[0].ingress && links[0].egress);
    let client = c.client();
    let np = SocketAddrV4::new(NODE_A, 30080);
    tcp_once(&client, np).expect("before");

    // Every loader fd closed, as at process exit: filters and pinned maps keep working.
    c.dp.clear();
    for _ in 0..10 {
        tcp_once(&client, np).expect("after the loader exited");
    }
    let pins = c.pins[0].clone();
    let mut again = NodePortLb::load_or_adopt(&pins).expect("adopt");
    assert_eq!(
        again.frontends().expect("list"),
        vec![(k, TrafficPolicy::Cluster)]
    );
    assert_eq!(
        again.attach(&a, "eth0", NODE_A).expect("attach"),
        0,
        "replaced in place"
    );
    tcp_once(&client, np).expect("after re-attach");

    // A link that does not exist is named in the error.
    let err = again.attach(&a, "nope0", NODE_A).expect_err("no such link");
    assert!(err.to_string().contains("nope0"), "{err}");

    again.detach(&a, "eth0").expect("detach");
    again.detach(&a, "eth0").expect("detach twice");
    assert!(again.attachments(&a).expect("list").is_empty());
    assert!(
        tcp_once(&client, np).is_err(),
        "still translated after detach"
    );
}

/// A private bpffs mount, removed on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "npt{}-{}-bpffs",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("bpffs dir");
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        for d in ["np-first", "lb-first"] {
            let _ = unpin_nodeport(self.0.join(d));
            let _ = unpin_all(self.0.join(d));
        }
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn shared_maps_are_declared_alike_whichever_object_creates_them() {
    if skip_unless_root() {
        return;
    }
    let fs = Bpffs::new();
    let (np_first, lb_first) = (fs.0.join("np-first"), fs.0.join("lb-first"));
    {
        let _np = NodePortLb::load_or_adopt(&np_first).expect("nodeport creates");
        let _lb = SocketLb::load_or_adopt(&np_first).expect("socket lb adopts");
    }
    {
        let _lb = SocketLb::load_or_adopt(&lb_first).expect("socket lb creates");
        let _np = NodePortLb::load_or_adopt(&lb_first).expect("nodeport adopts");
    }
    for m in [eni_bpf::maps::SERVICES_MAP, eni_bpf::maps::BACKENDS_MAP] {
        let a = aya::maps::MapInfo::from_pin(np_first.join(m)).expect("info");
        let b = aya::maps::MapInfo::from_pin(lb_first.join(m)).expect("info");
        assert_eq!(
            (
                a.map_type().ok(),
                a.key_size(),
                a.value_size(),
                a.max_entries(),
                a.map_flags()
            ),
            (
                b.map_type().ok(),
                b.key_size(),
                b.value_size(),
                b.max_entries(),
                b.map_flags()
            ),
            "{m}: nodeport.bpf.c and socket_lb.bpf.c must declare it alike"
        );
    }
}

#[test]
fn client_ip_affinity_holds_for_clients_outside_the_node() {
    if skip_unless_root() {
        return;
    }
    let mut c = Cluster::new();
    let k = key(NODE_A, 30080, Protocol::Tcp);
    let spec = ServiceSpec {
        backends: both(TCP_PORT).iter().map(|b| Backend::active(*b)).collect(),
        affinity_timeout: Some(Duration::from_secs(60)),
    };
    let dp = c.node_a();
    dp.lb.upsert_service(k, &spec).expect("upsert");
    dp.np
        .set_frontend(k, TrafficPolicy::Cluster)
        .expect("frontend");
    let client = c.client();
    let np = SocketAddrV4::new(NODE_A, 30080);
    let (first, _) = tcp_once(&client, np).expect("first");
    for _ in 0..20 {
        assert_eq!(tcp_once(&client, np).expect("again").0, first, "affinity");
    }
    // Without affinity the same client spreads again.
    let spec = ServiceSpec {
        affinity_timeout: None,
        ..spec
    };
    c.node_a().lb.upsert_service(k, &spec).expect("upsert");
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        seen.insert(tcp_once(&client, np).expect("spread").0);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// One UDP socket in the client namespace, kept across exchanges (one flow).
struct UdpFlow {
    tx: mpsc::Sender<SocketAddrV4>,
    rx: mpsc::Receiver<Result<(String, SocketAddr), String>>,
}

impl UdpFlow {
    fn new(ns: &str) -> Self {
        let (tx, cmd) = mpsc::channel::<SocketAddrV4>();
        let (res, rx) = mpsc::channel();
        let file = File::open(netns_path(ns)).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let mut buf = [0u8; 1500];
            for to in cmd {
                let r = s
                    .send_to(b"x", to)
                    .and_then(|_| s.recv_from(&mut buf))
                    .map_err(|e| e.to_string())
                    .and_then(|(n, src)| {
                        let (name, _) = parse_greeting(&String::from_utf8_lossy(&buf[..n]))?;
                        Ok((name, src))
                    });
                if res.send(r).is_err() {
                    return;
                }
            }
        });
        Self { tx, rx }
    }

    fn exchange(&self, to: SocketAddrV4) -> Result<(String, SocketAddr), String> {
        self.tx.send(to).expect("udp flow thread");
        self.rx.recv().expect("udp flow answer")
    }
}

#[test]
fn udp_flow_moves_off_a_removed_backend_and_tcp_keeps_a_terminating_one() {
    if skip_unless_root() {
        return;
    }
    let mut c = Cluster::new();
    let ku = key(NODE_A, 30053, Protocol::Udp);
    c.frontend(ku, &both(UDP_PORT), TrafficPolicy::Cluster);
    let client = c.client();
    let to = SocketAddrV4::new(NODE_A, 30053);
    let flow = UdpFlow::new(&client);
    let (first, src) = flow.exchange(to).expect("first datagram");
    assert_eq!(src, SocketAddr::V4(to));
    for _ in 0..5 {
        assert_eq!(
            flow.exchange(to).expect("same flow").0,
            first,
            "flow keeps its backend"
        );
    }
    let (gone, keep) = if first == "pod-a1" {
        (POD_A, POD_B)
    } else {
        (POD_B, POD_A)
    };
    // The old backend still listens: only the datapath can move the flow.
    c.frontend(
        ku,
        &[SocketAddrV4::new(keep, UDP_PORT)],
        TrafficPolicy::Cluster,
    );
    let (now, src) = flow.exchange(to).expect("after removal");
    assert_ne!(
        now, first,
        "UDP flow still sent to the removed backend {gone}"
    );
    assert_eq!(src, SocketAddr::V4(to));

    // TCP: a backend marked terminating keeps its established connection.
    let kt = key(NODE_A, 30080, Protocol::Tcp);
    c.frontend(kt, &both(TCP_PORT), TrafficPolicy::Cluster);
    let np = SocketAddrV4::new(NODE_A, 30080);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (name_tx, name_rx) = mpsc::channel::<String>();
    let file = File::open(netns_path(&client)).expect("netns");
    let session = std::thread::spawn(move || -> Result<Vec<String>, String> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let s = TcpStream::connect_timeout(&np.into(), IO_TIMEOUT).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let (name, _) = parse_greeting(&line)?;
        name_tx.send(name).map_err(|e| e.to_string())?;
        done_rx.recv().map_err(|e| e.to_string())?;
        let mut echoes = Vec::new();
        for i in 0..3 {
            writeln!(w, "after{i}").map_err(|e| e.to_string())?;
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            echoes.push(line.trim().to_owned());
        }
        Ok(echoes)
    });
    let name = name_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("connected");
    let victim = if name == "pod-a1" { POD_A } else { POD_B };
    let spec = ServiceSpec {
        backends: both(TCP_PORT)
            .iter()
            .map(|b| {
                if *b.ip() == victim {
                    Backend::terminating(*b)
                } else {
                    Backend::active(*b)
                }
            })
            .collect(),
        affinity_timeout: None,
    };
    c.node_a()
        .lb
        .upsert_service(kt, &spec)
        .expect("terminating");
    for _ in 0..15 {
        assert_ne!(tcp_once(&client, np).expect("new connection").0, name);
    }
    done_tx.send(()).expect("go");
    let echoes = session.join().expect("session thread").expect("session");
    assert_eq!(
        echoes,
        (0..3)
            .map(|i| format!("{name} after{i}"))
            .collect::<Vec<_>>()
    );
}
