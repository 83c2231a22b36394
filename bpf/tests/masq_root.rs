//! Root tests of the eBPF masquerade (`src/bpf/masq.bpf.c`), with addresses checked ON THE
//! WIRE by tcpdump running in the destination's network namespace.
//!
//! Each test builds its own namespaces, named `mqt<pid>-<n>-<role>`:
//! - "pod" (`eth0` 10.251.1.10/32, default route via 169.254.1.1 on the node side),
//! - "node" (the pod's veth `vpod` with 169.254.1.1/32 and a /32 route to the pod; the
//!   uplink `eth0` 10.250.0.1/24, default route via the external side; forwarding on),
//! - "ext" (`eth0` 10.250.0.2/24 — inside the "VPC" 10.250.0.0/16 — plus 1.1.1.10/32, an
//!   address outside every non-masquerade CIDR, and 169.254.169.254/32, a link-local one;
//!   a route back to the pod range via the node, so unmasqueraded replies can return).
//!
//! The masquerade programs are attached to the node's `eth0` with 10.250.0.1, maps pinned on
//! a private bpffs mount. Servers in "ext" answer with the peer address they saw. Nothing of
//! the host's network namespace or `/sys/fs/bpf` is touched; guards remove everything, also
//! on panic.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use eni_bpf::{
    default_nonmasq_cidrs, nonmasq_list, unpin_all, unpin_masq, unpin_nodeport, Backend,
    DatapathMaps, Masquerade, NodePortLb, Protocol, ServiceKey, ServiceSpec, SocketLb,
    TrafficPolicy,
};
use ipnet::Ipv4Net;

static SEQ: AtomicU32 = AtomicU32::new(0);

const POD: Ipv4Addr = Ipv4Addr::new(10, 251, 1, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const EXT_VPC: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const EXT_PUBLIC: Ipv4Addr = Ipv4Addr::new(1, 1, 1, 10);
const EXT_LINK_LOCAL: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
const POD_TCP_PORT: u16 = 7100;
const IO_TIMEOUT: Duration = Duration::from_secs(3);

fn skip_unless_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr(), b"SKIPPED: needs root\n");
    true
}

fn skip_without_tcpdump() -> bool {
    if Command::new("tcpdump").arg("--version").output().is_ok() {
        return false;
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        b"SKIPPED: needs tcpdump (apt-get install tcpdump; scripts/setup.sh installs it)\n",
    );
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

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("cidr literal")
}

/// A running tcpdump in a namespace, started and ready (it printed "listening on").
struct Capture {
    child: Child,
}

impl Capture {
    /// Captures up to `count` packets on `eth0` of `ns` matching `filter`, verbose enough
    /// for tcpdump to check the IP, TCP, UDP and ICMP checksums.
    fn start(ns: &str, count: usize, filter: &str) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-n", "-l", "-vv"])
            .args(["--immediate-mode", "-i", "eth0", "-c", &count.to_string()])
            .args(filter.split_whitespace())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        loop {
            line.clear();
            let n = err.read_line(&mut line).expect("read tcpdump stderr");
            assert!(n > 0, "tcpdump exited before listening");
            if line.contains("listening on") {
                break;
            }
        }
        // Keep draining stderr so tcpdump never blocks on it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = err.read_to_string(&mut sink);
        });
        Self { child }
    }

    /// Waits (at most 5 s) for the packets, then returns tcpdump's lines, one per packet
    /// (verbose continuation lines joined to their packet's).
    fn finish(mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().expect("wait tcpdump").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Still running: fewer packets than expected; stop it and read what it has.
        if self.child.try_wait().expect("wait tcpdump").is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = self.child.wait();
        }
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read tcpdump output");
        let mut packets: Vec<String> = Vec::new();
        for l in out.lines() {
            if l.starts_with(char::is_whitespace) {
                if let Some(last) = packets.last_mut() {
                    last.push(' ');
                    last.push_str(l.trim());
                }
            } else {
                packets.push(l.to_owned());
            }
        }
        packets
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// (source, destination) addresses of a tcpdump packet line (ports stripped).
fn addrs(line: &str) -> (Ipv4Addr, Ipv4Addr) {
    // "... proto UDP (17), length 29) 10.250.0.1.61234 > 1.1.1.10.7001: [udp sum ok] ..."
    let idx = line
        .find(" > ")
        .unwrap_or_else(|| panic!("no ' > ' in {line:?}"));
    let src = line[..idx].rsplit(' ').next().expect("source");
    let dst = line[idx + 3..]
        .split([':', ' '])
        .next()
        .expect("destination");
    let strip = |s: &str| -> Ipv4Addr {
        let parts: Vec<&str> = s.split('.').collect();
        parts[..4]
            .join(".")
            .parse()
            .unwrap_or_else(|_| panic!("address in {line:?}"))
    };
    (strip(src), strip(dst))
}

/// Asserts that every captured packet has source `src`, that there were `n`, and that
/// tcpdump found no bad IP header or ICMP checksum in them.
fn assert_sources(packets: &[String], n: usize, src: Ipv4Addr, what: &str) {
    assert_eq!(packets.len(), n, "{what}: packets captured: {packets:#?}");
    for p in packets {
        assert_eq!(addrs(p).0, src, "{what}: source on the wire in {p:?}");
        // TCP/UDP from ordinary sockets leave their checksum to offload on veth (tcpdump
        // calls it incorrect even untranslated); those are checked with full checksums in
        // `checksums_stay_correct_both_ways_on_the_wire`.
        for bad in ["bad cksum", "wrong icmp cksum"] {
            assert!(!p.contains(bad), "{what}: {bad} in {p:?}");
        }
    }
}

/// Servers in "ext" (bound to any address) and in the pod: TCP greets with the peer it saw,
/// UDP answers with it.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// TCP on any address of `ns`; UDP on each of `udp` (bound to the address, so the reply
    /// leaves from the address the request went to).
    fn start(&mut self, ns: &str, tcp_port: u16, udp: Vec<SocketAddrV4>) {
        let (tx, rx) = mpsc::channel();
        let file = File::open(netns_path(ns)).expect("open netns");
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let tcp = TcpListener::bind(("0.0.0.0", tcp_port)).expect("bind tcp");
            tcp.set_nonblocking(true).expect("nonblocking");
            let udp: Vec<UdpSocket> = udp
                .into_iter()
                .map(|a| {
                    let u = UdpSocket::bind(a).expect("bind udp");
                    u.set_nonblocking(true).expect("nonblocking");
                    u
                })
                .collect();
            tx.send(()).expect("ready");
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::SeqCst) {
                let mut idle = true;
                match tcp.accept() {
                    Ok((s, peer)) => {
                        idle = false;
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                            let mut w = s.try_clone().expect("clone");
                            if writeln!(w, "{peer}").is_err() {
                                return;
                            }
                            for line in BufReader::new(s).lines() {
                                let Ok(line) = line else { return };
                                if writeln!(w, "echo {line}").is_err() {
                                    return;
                                }
                            }
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("accept: {e}"),
                }
                for u in &udp {
                    if let Ok((_, peer)) = u.recv_from(&mut buf) {
                        idle = false;
                        let _ = u.send_to(peer.to_string().as_bytes(), peer);
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server ready");
    }
}

/// The peer address the server at `to` saw for one TCP connection from `ns`.
fn tcp_peer(ns: &str, to: SocketAddrV4) -> Result<SocketAddrV4, String> {
    in_ns(ns, move || {
        let s = TcpStream::connect_timeout(&to.into(), IO_TIMEOUT).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim()
            .parse()
            .map_err(|_| format!("bad answer {line:?}"))
    })
}

/// The peer address the UDP server at `to` saw, from its reply to one datagram from `ns`.
fn udp_peer(ns: &str, to: SocketAddrV4) -> Result<SocketAddrV4, String> {
    in_ns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.send_to(b"x", to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1500];
        let (n, src) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        if src != std::net::SocketAddr::V4(to) {
            return Err(format!("reply from {src}, expected {to}"));
        }
        String::from_utf8_lossy(&buf[..n])
            .parse()
            .map_err(|_| "bad answer".to_owned())
    })
}

fn ping(ns: &str, to: Ipv4Addr) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "2"])
        .arg(to.to_string())
        .output()
        .expect("spawn ping")
        .status
        .success()
}

struct Lab {
    servers: Servers,
    masq: Option<Masquerade>,
    pins: PathBuf,
    bpffs: PathBuf,
    mounted: bool,
    namespaces: Vec<String>,
    tag: String,
}

impl Lab {
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

    /// The namespaces, servers and bpffs; the datapath loaded and attached with the
    /// ip-masq-agent defaults, the "VPC" 10.250.0.0/16 and link-local exempt.
    fn new() -> Self {
        let tag = format!(
            "mqt{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let bpffs = std::env::temp_dir().join(format!("{tag}-bpffs"));
        let mut lab = Lab {
            servers: Servers {
                stop: Arc::new(AtomicBool::new(false)),
                threads: Vec::new(),
            },
            masq: None,
            pins: bpffs.join("pins"),
            bpffs,
            mounted: false,
            namespaces: Vec::new(),
            tag,
        };
        let pod = lab.add_ns("pod");
        let node = lab.add_ns("node");
        let ext = lab.add_ns("ext");

        ip(&[
            "-n", &node, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns",
            &pod,
        ]);
        ip(&[
            "-n",
            &pod,
            "addr",
            "add",
            &format!("{POD}/32"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &pod, "link", "set", "eth0", "up"]);
        ip(&["-n", &pod, "route", "add", "169.254.1.1", "dev", "eth0"]);
        ip(&["-n", &pod, "route", "add", "default", "via", "169.254.1.1"]);
        ip(&["-n", &node, "link", "set", "vpod", "up"]);
        ip(&["-n", &node, "addr", "add", "169.254.1.1/32", "dev", "vpod"]);
        ip(&[
            "-n",
            &node,
            "route",
            "add",
            &format!("{POD}/32"),
            "dev",
            "vpod",
        ]);

        ip(&[
            "-n", &node, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            &ext,
        ]);
        ip(&[
            "-n",
            &node,
            "addr",
            "add",
            &format!("{NODE}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &node, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &node,
            "route",
            "add",
            "default",
            "via",
            &EXT_VPC.to_string(),
        ]);
        ip(&[
            "-n",
            &ext,
            "addr",
            "add",
            &format!("{EXT_VPC}/24"),
            "dev",
            "eth0",
        ]);
        for a in [EXT_PUBLIC, EXT_LINK_LOCAL] {
            ip(&["-n", &ext, "addr", "add", &format!("{a}/32"), "dev", "eth0"]);
        }
        ip(&["-n", &ext, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &ext,
            "route",
            "add",
            "10.251.0.0/16",
            "via",
            &NODE.to_string(),
        ]);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node,
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

        let udp = [EXT_VPC, EXT_PUBLIC, EXT_LINK_LOCAL]
            .map(|a| SocketAddrV4::new(a, UDP_PORT))
            .to_vec();
        lab.servers.start(&ext, TCP_PORT, udp);
        lab.servers.start(&pod, POD_TCP_PORT, Vec::new());

        std::fs::create_dir_all(&lab.bpffs).expect("bpffs dir");
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&lab.bpffs)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab.mounted = true;

        let mut m = Masquerade::load_or_adopt(&lab.pins).expect("load masq");
        m.set_nonmasq_cidrs(&Self::list(false, &[]))
            .expect("write list");
        assert_eq!(
            m.attach(netns_path(&node), "eth0", NODE).expect("attach"),
            2,
            "ingress and egress newly attached"
        );
        lab.masq = Some(m);
        lab
    }

    /// ip-masq-agent's defaults + `extra`, the VPC, link-local unless `masq_link_local`.
    fn list(masq_link_local: bool, extra: &[Ipv4Net]) -> Vec<Ipv4Net> {
        let mut cidrs = default_nonmasq_cidrs();
        cidrs.extend_from_slice(extra);
        nonmasq_list(&cidrs, masq_link_local, &[net("10.250.0.0/16")])
    }

    fn masq(&mut self) -> &mut Masquerade {
        self.masq.as_mut().expect("loaded")
    }

    /// Source addresses of a TCP connection, a UDP exchange and a ping from the pod to
    /// `dst`, as seen on ext's wire (the packets towards `dst`) and by the servers. Asserts
    /// that each got its reply back to the pod.
    fn sources_towards(&mut self, dst: Ipv4Addr) -> [Ipv4Addr; 3] {
        let (pod, ext) = (self.ns("pod"), self.ns("ext"));
        let cap = Capture::start(&ext, 1, &format!("tcp and dst host {dst} and tcp[13] = 2"));
        let peer = tcp_peer(&pod, SocketAddrV4::new(dst, TCP_PORT))
            .unwrap_or_else(|e| panic!("TCP pod -> {dst}: {e}"));
        let tcp = cap.finish();
        assert_sources(&tcp, 1, *peer.ip(), &format!("TCP SYN to {dst}"));

        let cap = Capture::start(&ext, 1, &format!("udp and dst host {dst}"));
        let upeer = udp_peer(&pod, SocketAddrV4::new(dst, UDP_PORT))
            .unwrap_or_else(|e| panic!("UDP pod -> {dst}: {e}"));
        let udp = cap.finish();
        assert_sources(&udp, 1, *upeer.ip(), &format!("UDP to {dst}"));

        let cap = Capture::start(&ext, 1, &format!("icmp and dst host {dst}"));
        assert!(ping(&pod, dst), "ping pod -> {dst} got no reply");
        let icmp = cap.finish();
        assert_eq!(icmp.len(), 1, "{icmp:#?}");
        assert_sources(&icmp, 1, addrs(&icmp[0]).0, &format!("ICMP to {dst}"));
        [*peer.ip(), *upeer.ip(), addrs(&icmp[0]).0]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers.stop.store(true, Ordering::SeqCst);
        for t in self.servers.threads.drain(..) {
            let _ = t.join();
        }
        if let (Some(m), Some(node)) = (self.masq.as_mut(), self.namespaces.get(1)) {
            let _ = m.detach(netns_path(node), "eth0");
        }
        self.masq = None;
        let _ = unpin_masq(&self.pins);
        let _ = std::fs::remove_dir(&self.pins);
        if self.mounted {
            let _ = Command::new("umount").arg(&self.bpffs).status();
        }
        let _ = std::fs::remove_dir(&self.bpffs);
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn outside_destinations_are_masqueraded_and_replies_reach_the_pod() {
    if skip_unless_root() || skip_without_tcpdump() {
        return;
    }
    let mut lab = Lab::new();
    assert_eq!(
        lab.sources_towards(EXT_PUBLIC),
        [NODE; 3],
        "TCP, UDP and ICMP to an outside address leave as the uplink's address"
    );
    let c = lab.masq().counters().expect("counters");
    assert!(c.new_flows >= 3, "{c:?}");
    assert!(c.snat_packets >= 3 && c.reverse_packets >= 3, "{c:?}");
    assert_eq!((c.no_port_drops, c.error_drops), (0, 0), "{c:?}");
    assert!(lab.masq().tracked_entries().expect("ct") >= 6);
    // The node's own traffic keeps its address (and is not tracked as a pod flow).
    let node = lab.ns("node");
    assert_eq!(
        *tcp_peer(&node, SocketAddrV4::new(EXT_PUBLIC, TCP_PORT))
            .expect("node -> outside")
            .ip(),
        NODE
    );
}

#[test]
fn destinations_in_the_list_keep_the_pod_address() {
    if skip_unless_root() || skip_without_tcpdump() {
        return;
    }
    let mut lab = Lab::new();
    // 10.250.0.2: in the VPC CIDR (and in 10.0.0.0/8, an ip-masq-agent default).
    assert_eq!(lab.sources_towards(EXT_VPC), [POD; 3]);
    let c = lab.masq().counters().expect("counters");
    assert_eq!((c.new_flows, c.snat_packets), (0, 0), "{c:?}");
    assert!(c.exempt_packets >= 3, "{c:?}");
}

#[test]
fn link_local_is_masqueraded_only_with_masq_link_local() {
    if skip_unless_root() || skip_without_tcpdump() {
        return;
    }
    let mut lab = Lab::new();
    assert_eq!(
        lab.sources_towards(EXT_LINK_LOCAL),
        [POD; 3],
        "169.254.0.0/16 is exempt by default"
    );
    let changes = lab
        .masq()
        .set_nonmasq_cidrs(&Lab::list(true, &[]))
        .expect("masqLinkLocal list");
    assert_eq!(
        (changes.added, changes.removed),
        (vec![], vec![net("169.254.0.0/16")])
    );
    assert_eq!(
        lab.sources_towards(EXT_LINK_LOCAL),
        [NODE; 3],
        "masqLinkLocal: link-local destinations are masqueraded"
    );
}

#[test]
fn a_list_change_takes_effect() {
    if skip_unless_root() || skip_without_tcpdump() {
        return;
    }
    let mut lab = Lab::new();
    assert_eq!(lab.sources_towards(EXT_PUBLIC), [NODE; 3]);
    let before = lab.masq().nonmasq_cidrs().expect("list");
    let changes = lab
        .masq()
        .set_nonmasq_cidrs(&Lab::list(false, &[net("1.1.1.0/24")]))
        .expect("add");
    assert_eq!(
        (changes.added, changes.removed),
        (vec![net("1.1.1.0/24")], vec![]),
        "only the difference is written"
    );
    // New flows (the ports differ from the ones used above) now keep the pod address.
    assert_eq!(lab.sources_towards(EXT_PUBLIC), [POD; 3]);
    let changes = lab
        .masq()
        .set_nonmasq_cidrs(&Lab::list(false, &[]))
        .expect("remove");
    assert_eq!(changes.removed, vec![net("1.1.1.0/24")]);
    assert_eq!(lab.masq().nonmasq_cidrs().expect("list"), before);
    assert_eq!(lab.sources_towards(EXT_PUBLIC), [NODE; 3]);
}

/// A raw UDP datagram from `src`:`sport` to `dst`:`dport` with a checksum computed here, so
/// the bytes on the wire carry a full checksum (ordinary sockets on veth leave it to
/// offload, and tcpdump cannot judge those).
fn raw_udp(ns: &str, src: Ipv4Addr, sport: u16, dst: SocketAddrV4, payload: &'static [u8]) {
    in_ns(ns, move || {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        #[expect(unsafe_code, reason = "raw socket for a hand-made UDP datagram")]
        let fd = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            OwnedFd::from_raw_fd(fd)
        };
        let len = 8 + payload.len();
        let mut pkt = Vec::with_capacity(len);
        pkt.extend_from_slice(&sport.to_be_bytes());
        pkt.extend_from_slice(&dst.port().to_be_bytes());
        pkt.extend_from_slice(&(len as u16).to_be_bytes());
        pkt.extend_from_slice(&[0, 0]);
        pkt.extend_from_slice(payload);
        let mut sum: u32 = 0;
        let mut add = |b: &[u8]| {
            for c in b.chunks(2) {
                sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
        };
        add(&src.octets());
        add(&dst.ip().octets());
        add(&[0, 17]);
        add(&(len as u16).to_be_bytes());
        add(&pkt);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let csum = match !(sum as u16) {
            0 => 0xffff,
            c => c,
        };
        pkt[6..8].copy_from_slice(&csum.to_be_bytes());
        let bind = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(src.octets()),
            },
            sin_zero: [0; 8],
        };
        let to = libc::sockaddr_in {
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.ip().octets()),
            },
            ..bind
        };
        let sl = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: valid descriptor, pointers to live locals of the given lengths.
        #[expect(unsafe_code, reason = "bind/sendto on the raw socket")]
        unsafe {
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&bind as *const libc::sockaddr_in).cast(),
                sl,
            );
            assert_eq!(rc, 0, "bind raw: {}", std::io::Error::last_os_error());
            let n = libc::sendto(
                fd.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                sl,
            );
            assert_eq!(
                n,
                pkt.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

#[test]
fn checksums_stay_correct_both_ways_on_the_wire() {
    if skip_unless_root() || skip_without_tcpdump() {
        return;
    }
    let lab = Lab::new();
    let (pod, ext) = (lab.ns("pod"), lab.ns("ext"));
    const POD_PORT: u16 = 40000;
    const EXT_PORT: u16 = 7002;

    // The pod listens for the reply on an ordinary socket; ext listens for the request.
    let pod_sock = in_ns(&pod, || UdpSocket::bind((POD, POD_PORT)).expect("bind pod"));
    pod_sock
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("timeout");
    let ext_sock = in_ns(&ext, || {
        UdpSocket::bind(("0.0.0.0", EXT_PORT)).expect("bind ext")
    });
    ext_sock
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("timeout");

    let cap = Capture::start(&ext, 1, &format!("udp and dst port {EXT_PORT}"));
    raw_udp(
        &pod,
        POD,
        POD_PORT,
        SocketAddrV4::new(EXT_PUBLIC, EXT_PORT),
        b"request",
    );
    let mut buf = [0u8; 64];
    let (n, peer) = ext_sock.recv_from(&mut buf).expect("ext got the request");
    assert_eq!(&buf[..n], b"request");
    let out = cap.finish();
    assert_sources(&out, 1, NODE, "request on ext's wire");
    assert!(out[0].contains("udp sum ok"), "{out:?}");
    let std::net::SocketAddr::V4(peer) = peer else {
        panic!("v4 peer")
    };
    assert_eq!(*peer.ip(), NODE);
    assert!(peer.port() >= eni_bpf::masq::MASQ_PORT_MIN, "{peer}");

    // The reply, also with a full checksum, is translated back to the pod's address/port.
    let cap = Capture::start(&pod, 1, &format!("udp and src port {EXT_PORT}"));
    raw_udp(&ext, EXT_PUBLIC, EXT_PORT, peer, b"reply");
    let (n, from) = pod_sock.recv_from(&mut buf).expect("pod got the reply");
    assert_eq!(
        (&buf[..n], from),
        (&b"reply"[..], (EXT_PUBLIC, EXT_PORT).into())
    );
    let out = cap.finish();
    assert_sources(&out, 1, EXT_PUBLIC, "reply on the pod's wire");
    assert_eq!(addrs(&out[0]).1, POD);
    assert!(out[0].contains(&format!("{POD}.{POD_PORT}")), "{out:?}");
    assert!(out[0].contains("udp sum ok"), "{out:?}");
}

#[test]
fn flows_survive_a_loader_restart_and_inbound_flows_keep_the_pod_address() {
    if skip_unless_root() || skip_without_tcpdump() {
        return;
    }
    let mut lab = Lab::new();
    let (pod, ext, node) = (lab.ns("pod"), lab.ns("ext"), lab.ns("node"));

    // A TCP connection masqueraded before the loader goes away keeps working after a new
    // loader adopts the pins (the filters stayed attached).
    let (tx, rx) = mpsc::channel::<&'static str>();
    let (back_tx, back_rx) = mpsc::channel::<Result<String, String>>();
    let session = std::thread::spawn(move || {
        in_ns(&pod, move || {
            let s = TcpStream::connect_timeout(
                &SocketAddrV4::new(EXT_PUBLIC, TCP_PORT).into(),
                IO_TIMEOUT,
            )
            .map_err(|e| e.to_string());
            let s = match s {
                Ok(s) => s,
                Err(e) => {
                    let _ = back_tx.send(Err(e));
                    return;
                }
            };
            s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let mut w = s.try_clone().expect("clone");
            let mut r = BufReader::new(s);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = back_tx.send(Ok(line.trim().to_owned()));
            while let Ok(msg) = rx.recv() {
                line.clear();
                let res = writeln!(w, "{msg}")
                    .map_err(|e| e.to_string())
                    .and_then(|_| r.read_line(&mut line).map_err(|e| e.to_string()))
                    .map(|_| line.trim().to_owned());
                let _ = back_tx.send(res);
            }
        })
    });
    let greeting = back_rx.recv_timeout(IO_TIMEOUT * 2).expect("greeting");
    assert!(
        greeting
            .as_deref()
            .is_ok_and(|g| g.starts_with(&format!("{NODE}:"))),
        "{greeting:?}"
    );
    tx.send("before").expect("send");
    assert_eq!(
        back_rx.recv_timeout(IO_TIMEOUT * 2).expect("echo"),
        Ok("echo before".into())
    );

    lab.masq = None; // the manager goes away; the filters and pins stay
    let mut again = Masquerade::load_or_adopt(&lab.pins).expect("adopt");
    assert_eq!(
        again
            .attach(netns_path(&node), "eth0", NODE)
            .expect("re-attach"),
        0,
        "the filters were still attached: replaced in place"
    );
    assert_eq!(again.nonmasq_cidrs().expect("list"), Lab::list(false, &[]));
    lab.masq = Some(again);
    tx.send("after").expect("send");
    assert_eq!(
        back_rx.recv_timeout(IO_TIMEOUT * 2).expect("echo"),
        Ok("echo after".into())
    );
    drop(tx);
    session.join().expect("session");

    // A connection opened from outside straight to the pod address: the pod's replies
    // must keep its address (a masqueraded SYN-ACK would reset the handshake).
    let cap = Capture::start(&ext, 1, &format!("tcp and src port {POD_TCP_PORT}"));
    let peer = in_ns(&ext, move || {
        let sock = socket2_connect_from(EXT_PUBLIC, SocketAddrV4::new(POD, POD_TCP_PORT));
        let mut line = String::new();
        BufReader::new(sock).read_line(&mut line).expect("greeting");
        line.trim().to_owned()
    });
    assert!(peer.starts_with(&format!("{EXT_PUBLIC}:")), "{peer}");
    assert_sources(
        &cap.finish(),
        1,
        POD,
        "pod's reply to an inbound connection",
    );
    assert!(lab.masq().counters().expect("counters").inbound_flows >= 1);
}

#[test]
fn nodeport_replies_from_a_local_pod_are_not_masqueraded() {
    if skip_unless_root() || skip_without_tcpdump() {
        return;
    }
    let lab = Lab::new();
    let (ext, node) = (lab.ns("ext"), lab.ns("node"));
    // NodePort on the same uplink: NODE:30080 -> the pod's TCP server. Its egress program
    // (between masquerade's ingress and egress in tc order) restores the frontend as the
    // source of the pod's replies; masquerade must not touch them.
    let pins = lab.pins.clone();
    struct Np {
        lb: Option<SocketLb>,
        np: Option<NodePortLb>,
        node: String,
        pins: PathBuf,
    }
    impl Drop for Np {
        fn drop(&mut self) {
            if let Some(np) = self.np.as_mut() {
                let _ = np.detach(netns_path(&self.node), "eth0");
            }
            self.np = None;
            self.lb = None;
            let _ = unpin_nodeport(&self.pins);
            let _ = unpin_all(&self.pins);
        }
    }
    let mut np = Np {
        lb: Some(SocketLb::load_or_adopt(&pins).expect("socket lb maps")),
        np: Some(NodePortLb::load_or_adopt(&pins).expect("nodeport")),
        node: node.clone(),
        pins,
    };
    let key = ServiceKey {
        vip: NODE.into(),
        port: 30080,
        protocol: Protocol::Tcp,
    };
    let spec = ServiceSpec {
        backends: vec![Backend::active(SocketAddrV4::new(POD, POD_TCP_PORT))],
        affinity_timeout: None,
    };
    let (lb, npl) = (np.lb.as_mut().expect("lb"), np.np.as_mut().expect("np"));
    lb.upsert_service(key, &spec).expect("upsert");
    npl.set_frontend(key, TrafficPolicy::Cluster)
        .expect("frontend");
    assert_eq!(
        npl.attach(netns_path(&node), "eth0", NODE).expect("attach"),
        2
    );

    let cap = Capture::start(&ext, 1, "tcp and src port 30080 and tcp[13] = 18");
    let greeting = in_ns(&ext, move || {
        let s = socket2_connect_from(EXT_PUBLIC, SocketAddrV4::new(NODE, 30080));
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("greeting");
        line.trim().to_owned()
    });
    assert!(
        greeting.starts_with(&format!("{EXT_PUBLIC}:")),
        "the pod saw the client: {greeting}"
    );
    let syn_ack = cap.finish();
    assert_sources(&syn_ack, 1, NODE, "NodePort SYN-ACK");
    assert!(
        syn_ack[0].contains(&format!("{NODE}.30080 >")),
        "{syn_ack:?}"
    );
    drop(np);
    let c = lab
        .masq
        .as_ref()
        .expect("loaded")
        .counters()
        .expect("counters");
    assert_eq!(c.new_flows, 0, "nothing was masqueraded: {c:?}");
}

/// A TCP connection from `from` (bound first) to `to`.
fn socket2_connect_from(from: Ipv4Addr, to: SocketAddrV4) -> TcpStream {
    // SAFETY: plain socket(2)/bind(2)/connect(2) on a descriptor owned right away.
    #[expect(unsafe_code, reason = "bind a TCP client socket to a chosen source")]
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let sa = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip.octets()),
            },
            sin_zero: [0; 8],
        };
        let sl = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // Bounded connect: a handshake the datapath breaks must fail, not hang.
        let tv = libc::timeval {
            tv_sec: IO_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let b = sa(from, 0);
        assert_eq!(
            libc::bind(fd.as_raw_fd(), (&b as *const libc::sockaddr_in).cast(), sl),
            0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        let t = sa(*to.ip(), to.port());
        assert_eq!(
            libc::connect(fd.as_raw_fd(), (&t as *const libc::sockaddr_in).cast(), sl),
            0,
            "connect {to}: {}",
            std::io::Error::last_os_error()
        );
        let s = TcpStream::from(fd);
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s
    }
}
