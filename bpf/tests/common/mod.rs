//! The harness the socket-LB root tests share (`socket_lb_root.rs`, `socket_lb6_root.rs`).
//! Each test makes its own network namespace (with only `lo`, or joined by a veth pair to a
//! second namespace holding the backends), its own child cgroup under
//! `/sys/fs/cgroup/unified`, and its own bpffs instance for pins; clients run inside both
//! the namespace and the cgroup. Nothing of the host's network, root cgroup or
//! `/sys/fs/bpf` is touched. Guards remove everything, also on panic.
#![allow(
    dead_code,
    reason = "each test binary uses its own part of the shared harness"
)]

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::sleep,
    time::Duration,
};

use eni_bpf::{unpin_all, SocketLb};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";
static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn skip_unless_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr(), b"SKIPPED: needs root\n");
    true
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const SERVER: &str = r#"
import socket, sys, threading
def split(name):
    h, p = name.rsplit(':', 1)
    h = h.strip('[]')
    return (socket.AF_INET6 if ':' in h else socket.AF_INET), h, int(p)
def conn(c, name):
    c.sendall((name + '\n').encode())
    while True:
        d = c.recv(4096)
        if not d: break
        c.sendall((name + ' ' + d.decode().strip() + '\n').encode())
def tcp(name):
    f, h, p = split(name)
    s = socket.socket(f); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((h, p)); s.listen(128)
    ready.release()
    while True:
        c, _ = s.accept()
        threading.Thread(target=conn, args=(c, name), daemon=True).start()
def udp(name):
    f, h, p = split(name)
    s = socket.socket(f, socket.SOCK_DGRAM); s.bind((h, p))
    ready.release()
    while True:
        d, src = s.recvfrom(4096)
        s.sendto(name.encode(), src)
ready = threading.Semaphore(0)
for a in sys.argv[1:]:
    threading.Thread(target=tcp, args=(a,), daemon=True).start()
    threading.Thread(target=udp, args=(a,), daemon=True).start()
for _ in range(2 * len(sys.argv[1:])): ready.acquire()
print('ready', flush=True)
threading.Event().wait()
"#;

const CLIENT: &str = r#"
import socket, sys
socks = {}
def fmt(a): return '%s:%d' % a
# The commands ending in 'n' take either family (native IPv6 included) and print IPv6
# socket addresses as [addr]:port.
def fam(h): return socket.AF_INET6 if ':' in h else socket.AF_INET
def fmtn(a): return ('[%s]:%d' if ':' in a[0] else '%s:%d') % a[:2]
for line in sys.stdin:
    p = line.split()
    try:
        if p[0] == 'tcp':
            s = socket.create_connection((p[1], int(p[2])), timeout=3)
            out = s.makefile().readline().strip() + ' ' + fmt(s.getpeername()); s.close()
        elif p[0] == 'tcp6':
            s = socket.socket(socket.AF_INET6); s.settimeout(3); s.connect(('::ffff:' + p[1], int(p[2])))
            out = s.makefile().readline().strip() + ' ' + fmt(s.getpeername()[:2]); s.close()
        elif p[0] == 'udp6':
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(3)
            s.sendto(b'x', ('::ffff:' + p[1], int(p[2]))); d, src = s.recvfrom(4096)
            out = d.decode() + ' ' + fmt(src[:2]); s.close()
        elif p[0] == 'uconn6':
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(3)
            s.connect(('::ffff:' + p[2], int(p[3]))); socks[p[1]] = (s, None); s.send(b'x')
            d, src = s.recvfrom(4096); out = d.decode() + ' ' + fmt(s.getpeername()[:2])
        elif p[0] == 'open':
            s = socket.create_connection((p[2], int(p[3])), timeout=3); f = s.makefile()
            socks[p[1]] = (s, f); out = f.readline().strip() + ' ' + fmt(s.getpeername())
        elif p[0] == 'echo':
            s, f = socks[p[1]]; s.sendall(b'ping\n'); out = f.readline().strip()
        elif p[0] == 'udp':
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
            s.sendto(b'x', (p[1], int(p[2]))); d, src = s.recvfrom(4096)
            out = d.decode() + ' ' + fmt(src); s.close()
        elif p[0] == 'uconn':
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
            s.connect((p[2], int(p[3]))); socks[p[1]] = (s, None); s.send(b'x')
            d, src = s.recvfrom(4096); out = d.decode() + ' ' + fmt(src) + ' ' + fmt(s.getpeername())
        elif p[0] == 'usend':
            s, _ = socks[p[1]]; s.send(b'x'); d, src = s.recvfrom(4096)
            out = d.decode() + ' ' + fmt(src[:2])
        elif p[0] == 'tcpn':
            s = socket.socket(fam(p[1])); s.settimeout(3); s.connect((p[1], int(p[2])))
            out = s.makefile().readline().strip() + ' ' + fmtn(s.getpeername()); s.close()
        elif p[0] == 'openn':
            s = socket.socket(fam(p[2])); s.settimeout(3); s.connect((p[2], int(p[3])))
            f = s.makefile(); socks[p[1]] = (s, f)
            out = f.readline().strip() + ' ' + fmtn(s.getpeername())
        elif p[0] == 'udpn':
            s = socket.socket(fam(p[1]), socket.SOCK_DGRAM); s.settimeout(3)
            s.sendto(b'x', (p[1], int(p[2]))); d, src = s.recvfrom(4096)
            out = d.decode() + ' ' + fmtn(src); s.close()
        elif p[0] == 'uconnn':
            s = socket.socket(fam(p[2]), socket.SOCK_DGRAM); s.settimeout(3)
            s.connect((p[2], int(p[3]))); socks[p[1]] = (s, None); s.send(b'x')
            d, src = s.recvfrom(4096)
            out = d.decode() + ' ' + fmtn(src) + ' ' + fmtn(s.getpeername())
        elif p[0] == 'usendn':
            s, _ = socks[p[1]]; s.send(b'x'); d, src = s.recvfrom(4096)
            out = d.decode() + ' ' + fmtn(src)
        else:
            out = 'ERR unknown'
    except Exception as e:
        out = 'ERR ' + type(e).__name__ + ' ' + str(e)
    print(out.replace('\n', ' '), flush=True)
"#;

/// A process killed and reaped on drop.
pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client shell inside the test cgroup and namespace, driven line by line.
pub struct Client {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _proc: Proc,
}

impl Client {
    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("client stdin");
        let mut out = String::new();
        self.stdout.read_line(&mut out).expect("client stdout");
        out.trim().to_owned()
    }

    /// (backend that answered, second field: peer name or reply source)
    pub fn pair(&mut self, line: &str) -> (String, String) {
        let out = self.cmd(line);
        assert!(!out.starts_with("ERR"), "{line}: {out}");
        let mut it = out.split_whitespace();
        (
            it.next().unwrap_or_default().to_owned(),
            it.next().unwrap_or_default().to_owned(),
        )
    }
}

/// Everything one test owns; fields drop in order: processes, loader, pins, bpffs, cgroup,
/// namespaces.
pub struct Env {
    pub clients: Vec<Proc>,
    pub server: Option<Proc>,
    pub lb: Option<SocketLb>,
    pub pins: PathBuf,
    pub bpffs: PathBuf,
    pub cgroup: PathBuf,
    /// The clients' namespace (and the backends' too, without a peer namespace).
    pub netns: String,
    /// The backends' namespace of [`Env::with_peer`].
    pub peer: Option<String>,
}

/// Addresses of the veth pair of [`Env::with_peer`]: the client side.
pub const CLIENT4: &str = "10.200.0.1/24";
/// The client side's IPv6 address (ULA).
pub const CLIENT6: &str = "fd00:200::1/64";
/// Backend addresses on the peer side: 10.200.0.2-4 and fd00:200::2-4.
pub const PEER4: [&str; 3] = ["10.200.0.2/24", "10.200.0.3/24", "10.200.0.4/24"];
/// Backend IPv6 addresses on the peer side.
pub const PEER6: [&str; 3] = ["fd00:200::2/64", "fd00:200::3/64", "fd00:200::4/64"];

impl Env {
    /// Backends listen on `backends` (127.0.0.x) in the clients' own namespace.
    pub fn new(backends: &[&str]) -> Self {
        Self::build(backends, false)
    }

    /// Backends listen on `backends` in a second namespace joined to the clients' by a veth
    /// pair holding IPv4 and IPv6 (ULA, `nodad`) addresses: [`CLIENT4`], [`CLIENT6`] on the
    /// client side, [`PEER4`] and [`PEER6`] on the backends' side.
    pub fn with_peer(backends: &[&str]) -> Self {
        Self::build(backends, true)
    }

    fn build(backends: &[&str], with_peer: bool) -> Self {
        let tag = format!(
            "eni-bpf-t{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let bpffs = std::env::temp_dir().join(format!("{tag}-bpffs"));
        let mut env = Env {
            clients: Vec::new(),
            server: None,
            lb: None,
            pins: bpffs.join("eni-net"),
            bpffs,
            cgroup: Path::new(CGROUP_ROOT).join(&tag),
            netns: tag,
            peer: None,
        };
        // Register each resource before creating the next, so Drop cleans what exists.
        run(Command::new("ip").args(["netns", "add", &env.netns]));
        run(Command::new("ip").args(["-n", &env.netns, "link", "set", "lo", "up"]));
        if with_peer {
            env.add_peer();
        }
        let server_ns = env.peer.clone().unwrap_or_else(|| env.netns.clone());
        std::fs::create_dir(&env.cgroup).expect("create test cgroup");
        std::fs::create_dir_all(&env.bpffs).expect("bpffs dir");
        run(Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&env.bpffs));
        let mut server = Command::new("ip")
            .args(["netns", "exec", &server_ns, "python3", "-u", "-c", SERVER])
            .args(backends)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let mut line = String::new();
        BufReader::new(server.stdout.take().expect("server stdout"))
            .read_line(&mut line)
            .expect("server ready");
        env.server = Some(Proc(server));
        assert_eq!(line.trim(), "ready");
        env
    }

    fn add_peer(&mut self) {
        let peer = format!("{}-be", self.netns);
        run(Command::new("ip").args(["netns", "add", &peer]));
        self.peer = Some(peer.clone());
        for ns in [&self.netns, &peer] {
            // A fresh namespace may start with IPv6 off when the host defaults so.
            for key in ["all", "default", "lo"] {
                run(Command::new("ip")
                    .args(["netns", "exec", ns, "sysctl", "-qw"])
                    .arg(format!("net.ipv6.conf.{key}.disable_ipv6=0")));
            }
        }
        run(Command::new("ip").args([
            "-n",
            &self.netns,
            "link",
            "add",
            "v0",
            "type",
            "veth",
            "peer",
            "name",
            "v1",
            "netns",
            &peer,
        ]));
        let addr = |ns: &str, a: &str| {
            let mut c = Command::new("ip");
            c.args(["-n", ns, "addr", "add", a, "dev"]);
            if a.contains(':') {
                c.args([if ns == peer { "v1" } else { "v0" }, "nodad"]);
            } else {
                c.arg(if ns == peer { "v1" } else { "v0" });
            }
            run(&mut c);
        };
        addr(&self.netns, CLIENT4);
        addr(&self.netns, CLIENT6);
        for a in PEER4.iter().chain(PEER6.iter()) {
            addr(&peer, a);
        }
        for (ns, dev) in [(&self.netns, "v0"), (&peer, "v1")] {
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]));
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
    }

    pub fn load(&mut self) -> &mut SocketLb {
        let mut lb = SocketLb::load_or_adopt(&self.pins).expect("load");
        lb.attach(&self.cgroup).expect("attach");
        self.lb.insert(lb)
    }

    pub fn lb(&mut self) -> &mut SocketLb {
        self.lb.as_mut().expect("loaded")
    }

    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// A client that moves itself into the test cgroup, then enters the test namespace.
    pub fn client(&mut self) -> Client {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec ip netns exec {} python3 -u -c \"$0\"",
            self.cgroup.display(),
            self.netns
        );
        let mut child = Command::new("sh")
            .args(["-c", &script, CLIENT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Client {
            stdin,
            stdout,
            _proc: Proc(child),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.clients.clear();
        self.server = None;
        self.lb = None;
        let _ = unpin_all(&self.pins);
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.bpffs);
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            sleep(Duration::from_millis(100));
        }
        for ns in std::iter::once(&self.netns).chain(self.peer.as_ref()) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
