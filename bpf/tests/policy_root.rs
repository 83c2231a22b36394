//! Root tests of the NetworkPolicy datapath with real traffic. Every test builds its own
//! lab: a "node" network namespace, one namespace per pod joined to the node by a veth pair
//! (the host end in the node namespace, as the CNI's veth mode does), one "external"
//! namespace holding addresses outside the cluster, and a private bpffs for the pins.
//! Nothing is created in the host's namespace or under `/sys/fs/bpf`; guards remove all of
//! it, also on panic. The node forwards with rp_filter off, so without the programs every
//! packet (spoofed ones included) would be delivered: every drop seen is the policy's.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::sleep,
    time::Duration,
};

use eni_bpf::{
    policy::{self, unpin_policy},
    LinkSide, PolicyDatapath,
};
use eni_policy::{compile, types::Namespace, types::NetworkPolicy, types::Pod, PodRef};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn skip_unless_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr(), b"SKIPPED: needs root\n");
    true
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// Ports every server listens on, TCP and UDP.
const PORTS: [u16; 10] = [80, 443, 5353, 5432, 8080, 9000, 30001, 30003, 30005, 30010];

/// `server NAME ADDR...`: TCP and UDP on every port of every address; a TCP connection gets
/// `NAME PORT\n` at once, then `NAME PORT ping` for each line it sends; a UDP datagram gets
/// `NAME PORT` back.
const SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
ports = [int(p) for p in sys.argv[2].split(',')]
def conn(c, port):
    try:
        c.sendall(('%s %d\n' % (name, port)).encode())
        while True:
            d = c.recv(4096)
            if not d: break
            c.sendall(('%s %d %s\n' % (name, port, d.decode().strip())).encode())
    except OSError:
        pass
def tcp(addr, port, ready):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(128); ready.release()
    while True:
        c, _ = s.accept()
        threading.Thread(target=conn, args=(c, port), daemon=True).start()
def udp(addr, port, ready):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((addr, port)); ready.release()
    while True:
        d, src = s.recvfrom(4096)
        s.sendto(('%s %d' % (name, port)).encode(), src)
ready = threading.Semaphore(0)
n = 0
for addr in sys.argv[3:]:
    for port in ports:
        threading.Thread(target=tcp, args=(addr, port, ready), daemon=True).start()
        threading.Thread(target=udp, args=(addr, port, ready), daemon=True).start()
        n += 2
for _ in range(n): ready.acquire()
print('ready', flush=True)
threading.Event().wait()
"#;

/// Line-driven client: `tcp DST PORT SRC`, `udp DST PORT SRC` (SRC `-` = any),
/// `open ID DST PORT`, `echo ID`, `uopen ID DST PORT`, `usend ID`. Prints the reply or
/// `ERR <reason>`.
const CLIENT: &str = r#"
import socket, sys
T = float(sys.argv[1])
socks = {}
def src(a): return None if a == '-' else (a, 0)
for line in sys.stdin:
    p = line.split()
    try:
        if p[0] == 'tcp':
            s = socket.create_connection((p[1], int(p[2])), timeout=T, source_address=src(p[3]))
            out = s.makefile().readline().strip(); s.close()
        elif p[0] == 'udp':
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(T)
            if p[3] != '-': s.bind((p[3], 0))
            s.sendto(b'x', (p[1], int(p[2]))); d, _ = s.recvfrom(4096); out = d.decode(); s.close()
        elif p[0] == 'open':
            s = socket.create_connection((p[2], int(p[3])), timeout=T); f = s.makefile()
            socks[p[1]] = (s, f); out = f.readline().strip()
        elif p[0] == 'echo':
            s, f = socks[p[1]]; s.sendall(b'ping\n'); out = f.readline().strip()
            if not out: out = 'ERR closed'
        elif p[0] == 'uopen':
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(T)
            s.connect((p[2], int(p[3]))); socks[p[1]] = (s, None); s.send(b'x')
            out = s.recv(4096).decode()
        elif p[0] == 'usend':
            s, _ = socks[p[1]]; s.send(b'x'); out = s.recv(4096).decode()
        else:
            out = 'ERR unknown'
    except Exception as e:
        out = 'ERR ' + type(e).__name__
    print(out.replace('\n', ' '), flush=True)
"#;

/// How long a client waits before calling a probe denied.
const PROBE_TIMEOUT_S: &str = "1.0";

/// A process killed and reaped on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client process inside one namespace.
struct Client {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _proc: Proc,
}

impl Client {
    fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("client stdin");
        let mut out = String::new();
        self.stdout.read_line(&mut out).expect("client stdout");
        out.trim().to_owned()
    }
}

/// One pod of the lab.
struct LabPod {
    /// `namespace/name` in Kubernetes terms.
    key: PodRef,
    ip: Ipv4Addr,
    netns: String,
    host_if: String,
    yaml: String,
}

/// The lab; drops processes, then pins and bpffs, then namespaces.
struct Lab {
    procs: Vec<Proc>,
    clients: BTreeMap<String, Client>,
    dp: Option<PolicyDatapath>,
    pods: Vec<LabPod>,
    namespaces: Vec<Namespace>,
    tag: String,
    node: String,
    ext: String,
    bpffs: PathBuf,
    pins: PathBuf,
    netns_made: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.clients.clear();
        self.procs.clear();
        self.dp = None;
        let _ = unpin_policy(&self.pins);
        let _ = std::fs::remove_dir(self.pins.join("links"));
        let _ = std::fs::remove_dir(&self.pins);
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.bpffs);
        for ns in self.netns_made.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// (namespace, name, address, labels, named ports `name:port/proto`)
type PodDef = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

const PODS: [PodDef; 6] = [
    (
        "prod",
        "web",
        "10.200.1.1",
        &[("app", "web")],
        &["http:8080/TCP", "dns:5353/UDP"],
    ),
    (
        "prod",
        "db",
        "10.200.1.2",
        &[("app", "db")],
        &["pg:5432/TCP"],
    ),
    ("prod", "client", "10.200.1.3", &[("role", "client")], &[]),
    ("prod", "cache", "10.200.1.4", &[("app", "cache")], &[]),
    ("dev", "client", "10.200.2.1", &[("role", "client")], &[]),
    ("dev", "tool", "10.200.2.2", &[("app", "tool")], &[]),
];

/// Addresses of the external namespace: inside the allowed block, and inside its except.
const EXT_IN: &str = "172.20.0.1";
const EXT_EXCEPT: &str = "172.20.0.200";

impl Lab {
    fn new() -> Self {
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = format!("enipol{}-{seq}", std::process::id());
        let bpffs = std::env::temp_dir().join(format!("{tag}-bpffs"));
        let mut lab = Lab {
            procs: Vec::new(),
            clients: BTreeMap::new(),
            dp: None,
            pods: Vec::new(),
            namespaces: Vec::new(),
            node: format!("{tag}-node"),
            ext: format!("{tag}-ext"),
            pins: bpffs.join("eni-net"),
            bpffs,
            tag,
            netns_made: Vec::new(),
        };
        let node = lab.node.clone();
        lab.add_netns(&node);
        run(Command::new("ip").args([
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ]));
        std::fs::create_dir_all(&lab.bpffs).expect("bpffs dir");
        run(Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&lab.bpffs));
        lab.dp = Some(PolicyDatapath::load_or_adopt(&lab.pins).expect("load policy maps"));

        for (i, (ns, name, addr, labels, ports)) in PODS.iter().enumerate() {
            let netns = format!("{}-p{i}", lab.tag);
            let host_if = format!("hv{seq}x{i}");
            lab.add_netns(&netns);
            lab.wire(&netns, &host_if, &[addr]);
            let label_yaml: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let port_yaml: Vec<String> = ports
                .iter()
                .map(|p| {
                    let (n, rest) = p.split_once(':').expect("name:port/proto");
                    let (port, proto) = rest.split_once('/').expect("port/proto");
                    format!("{{name: {n}, containerPort: {port}, protocol: {proto}}}")
                })
                .collect();
            let yaml = format!(
                "metadata: {{name: {name}, namespace: {ns}, labels: {{{}}}}}\n\
                 spec: {{containers: [{{name: c, ports: [{}]}}]}}\n\
                 status: {{podIP: {addr}}}\n",
                label_yaml.join(", "),
                port_yaml.join(", ")
            );
            lab.pods.push(LabPod {
                key: PodRef::new(*ns, *name),
                ip: addr.parse().expect("addr"),
                netns,
                host_if,
                yaml,
            });
        }
        let ext = lab.ext.clone();
        lab.add_netns(&ext);
        lab.wire(&ext, &format!("hv{seq}xe"), &[EXT_IN, EXT_EXCEPT]);
        ip(&[
            "-n",
            &lab.node,
            "route",
            "add",
            "172.20.0.0/24",
            "dev",
            &format!("hv{seq}xe"),
        ]);
        lab.namespaces = vec![
            serde_yaml::from_str("metadata: {name: prod, labels: {team: prod}}").expect("ns"),
            serde_yaml::from_str("metadata: {name: dev, labels: {team: dev}}").expect("ns"),
        ];

        // Servers and clients everywhere.
        let ports: Vec<String> = PORTS.iter().map(ToString::to_string).collect();
        let ports = ports.join(",");
        let mut targets: Vec<(String, String, Vec<&str>)> = lab
            .pods
            .iter()
            .map(|p| (p.key.to_string(), p.netns.clone(), vec!["0.0.0.0"]))
            .collect();
        targets.push(("ext".into(), lab.ext.clone(), vec![EXT_IN, EXT_EXCEPT]));
        for (name, netns, addrs) in targets {
            let mut server = Command::new("ip")
                .args([
                    "netns", "exec", &netns, "python3", "-u", "-c", SERVER, &name, &ports,
                ])
                .args(addrs)
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn server");
            let mut line = String::new();
            BufReader::new(server.stdout.take().expect("server stdout"))
                .read_line(&mut line)
                .expect("server ready");
            lab.procs.push(Proc(server));
            assert_eq!(line.trim(), "ready", "server {name}");
            let mut child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &netns,
                    "python3",
                    "-u",
                    "-c",
                    CLIENT,
                    PROBE_TIMEOUT_S,
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn client");
            let client = Client {
                stdin: child.stdin.take().expect("stdin"),
                stdout: BufReader::new(child.stdout.take().expect("stdout")),
                _proc: Proc(child),
            };
            lab.clients.insert(name, client);
        }
        lab
    }

    fn add_netns(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.netns_made.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    /// A veth between the node and `netns` (`eth0` inside, `host_if` on the node), the
    /// addresses on `eth0`, a default route via 169.254.1.1 (on the host end), host routes
    /// on the node.
    fn wire(&self, netns: &str, host_if: &str, addrs: &[&str]) {
        ip(&[
            "-n", &self.node, "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
            "netns", netns,
        ]);
        ip(&[
            "-n",
            &self.node,
            "addr",
            "add",
            "169.254.1.1/32",
            "dev",
            host_if,
        ]);
        ip(&["-n", &self.node, "link", "set", host_if, "up"]);
        for a in addrs {
            ip(&[
                "-n",
                netns,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                "eth0",
            ]);
            ip(&[
                "-n",
                &self.node,
                "route",
                "add",
                &format!("{a}/32"),
                "dev",
                host_if,
            ]);
        }
        ip(&["-n", netns, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            netns,
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        ip(&[
            "-n",
            netns,
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ]);
    }

    fn node_netns(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.node)
    }

    fn pod(&self, key: &str) -> &LabPod {
        self.pods
            .iter()
            .find(|p| p.key.to_string() == key)
            .unwrap_or_else(|| panic!("pod {key}"))
    }

    fn dp(&mut self) -> &mut PolicyDatapath {
        self.dp.as_mut().expect("datapath")
    }

    /// Compiles `policies` over the lab's pods and writes every pod's rules.
    fn apply(&mut self, policies: &[&str]) {
        let policies: Vec<NetworkPolicy> = policies
            .iter()
            .map(|y| serde_yaml::from_str(y).expect("policy yaml"))
            .collect();
        let pods: Vec<Pod> = self
            .pods
            .iter()
            .map(|p| serde_yaml::from_str(&p.yaml).expect("pod yaml"))
            .collect();
        let compiled = compile(&policies, &pods, &self.namespaces);
        assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
        assert_eq!(compiled.pods.len(), self.pods.len());
        for rules in compiled.pods.values() {
            self.dp().write_pod(rules).expect("write pod rules");
        }
    }

    /// Attaches the programs of every pod to its host veth.
    fn attach_all(&self) {
        for p in &self.pods {
            policy::attach(
                &self.pins,
                self.node_netns(),
                &p.host_if,
                p.ip,
                LinkSide::HostVeth,
            )
            .expect("attach");
        }
    }

    /// Address of a probe target: a pod key, `ext` (the allowed address) or `ext!` (the
    /// excepted one).
    fn addr(&self, who: &str) -> String {
        match who {
            "ext" => EXT_IN.into(),
            "ext!" => EXT_EXCEPT.into(),
            k => self.pod(k).ip.to_string(),
        }
    }

    /// One probe; `Ok(())` when the server named `to` answered on `port`.
    fn probe(&mut self, proto: &str, from: &str, to: &str, port: u16) -> Result<(), String> {
        let (client, src) = match from {
            "ext" => ("ext", EXT_IN),
            "ext!" => ("ext", EXT_EXCEPT),
            k => (k, "-"),
        };
        let dst = self.addr(to);
        let server = if to.starts_with("ext") { "ext" } else { to };
        let out = self
            .clients
            .get_mut(client)
            .unwrap_or_else(|| panic!("client {client}"))
            .cmd(&format!("{proto} {dst} {port} {src}"));
        if out == format!("{server} {port}") {
            Ok(())
        } else {
            Err(out)
        }
    }
}

/// The policies of the truth table (namespaces `prod`, `dev`).
const WEB_INGRESS: &str = "
metadata: {name: web-ingress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: http}]
  - from:
    - namespaceSelector: {matchLabels: {team: dev}}
      podSelector: {matchExpressions: [{key: role, operator: In, values: [client]}]}
    ports: [{port: 80}, {protocol: UDP, port: dns}]
  - from: [{ipBlock: {cidr: 172.20.0.0/24, except: [172.20.0.128/25]}}]
    ports: [{port: 30001, endPort: 30005}, {protocol: UDP, port: 30001, endPort: 30005}]
";
const DB_INGRESS: &str = "
metadata: {name: db-ingress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: pg}]
";
const CLIENT_EGRESS: &str = "
metadata: {name: client-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}, {port: 80}]
  - to: [{namespaceSelector: {}}]
    ports: [{protocol: UDP, port: 5353}]
  - to: [{ipBlock: {cidr: 172.20.0.0/24, except: [172.20.0.128/25]}}]
";
const DEV_DENY_INGRESS: &str = "
metadata: {name: default-deny-ingress, namespace: dev}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

/// (from, to, port, TCP passes, UDP passes)
const TRUTH: [(&str, &str, u16, bool, bool); 45] = [
    // Pod selector in the own namespace with a named port (http = 8080 on web).
    ("prod/client", "prod/web", 8080, true, false),
    ("prod/client", "prod/web", 80, false, false),
    ("prod/client", "prod/web", 443, false, false),
    ("prod/client", "prod/web", 5353, false, false),
    ("prod/client", "prod/db", 5432, false, false),
    // Namespace + pod selector together; named UDP port dns = 5353.
    ("dev/client", "prod/web", 80, true, false),
    ("dev/client", "prod/web", 5353, false, true),
    ("dev/client", "prod/web", 8080, false, false),
    ("dev/tool", "prod/web", 80, false, false),
    ("dev/tool", "prod/web", 5353, false, false),
    // Ingress from a pod selector with a named port (pg = 5432 on db), TCP only.
    ("prod/web", "prod/db", 5432, true, false),
    ("prod/web", "prod/db", 443, false, false),
    ("dev/client", "prod/db", 5432, false, false),
    // Ingress default deny in dev, also inside dev.
    ("prod/web", "dev/tool", 80, false, false),
    ("dev/tool", "dev/client", 9000, false, false),
    // prod/client: ingress open, egress isolated; replies of incoming flows still pass.
    ("dev/client", "prod/client", 80, true, true),
    ("dev/client", "prod/client", 9000, true, true),
    // ipBlock with except and an endPort range, TCP and UDP.
    ("ext", "prod/web", 30001, true, true),
    ("ext", "prod/web", 30005, true, true),
    ("ext", "prod/web", 30003, true, true),
    ("ext", "prod/web", 30010, false, false),
    ("ext!", "prod/web", 30001, false, false),
    ("ext!", "prod/web", 30003, false, false),
    ("ext", "prod/web", 8080, false, false),
    ("ext", "prod/db", 5432, false, false),
    ("ext", "prod/client", 80, true, true),
    ("ext!", "prod/client", 80, true, true),
    ("ext", "dev/client", 80, false, false),
    // Egress to an ipBlock with except, every port.
    ("prod/client", "ext", 443, true, true),
    ("prod/client", "ext", 9000, true, true),
    ("prod/client", "ext!", 443, false, false),
    ("prod/client", "ext!", 9000, false, false),
    // Pods without egress policy reach out freely.
    ("prod/web", "ext!", 443, true, true),
    ("prod/db", "ext", 80, true, true),
    ("dev/tool", "ext", 9000, true, true),
    ("ext", "dev/tool", 9000, false, false),
    // Egress allowed but the peer's ingress denies, and the reverse.
    ("prod/client", "dev/tool", 80, false, false),
    ("prod/client", "dev/client", 5353, false, false),
    // Egress UDP-only port to any pod: cache has no policy.
    ("prod/client", "prod/cache", 5353, false, true),
    ("prod/client", "prod/cache", 9000, false, false),
    ("prod/cache", "prod/web", 8080, false, false),
    ("dev/client", "prod/cache", 443, true, true),
    ("prod/cache", "dev/client", 443, false, false),
    ("prod/web", "prod/cache", 9000, true, true),
    ("prod/cache", "prod/client", 80, true, true),
];

#[test]
fn truth_table_with_tcp_and_udp() {
    if skip_unless_root() {
        return;
    }
    let mut lab = Lab::new();
    // Without any policy every probe passes, programs attached: each denial below is the
    // policy's, not the lab's.
    lab.apply(&[]);
    lab.attach_all();
    for (from, to, port, _, _) in TRUTH {
        for proto in ["tcp", "udp"] {
            if let Err(e) = lab.probe(proto, from, to, port) {
                panic!("open lab: {from} -> {to} {proto}/{port}: {e}");
            }
        }
    }
    lab.apply(&[WEB_INGRESS, DB_INGRESS, CLIENT_EGRESS, DEV_DENY_INGRESS]);
    let mut wrong = Vec::new();
    for (from, to, port, tcp, udp) in TRUTH {
        for (proto, want) in [("tcp", tcp), ("udp", udp)] {
            let got = lab.probe(proto, from, to, port);
            if got.is_ok() != want {
                wrong.push(format!(
                    "{from} -> {to} {proto}/{port}: want {want}, got {got:?}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Counters saw the drops on both sides.
    let web = lab.pod("prod/web").ip;
    let client = lab.pod("prod/client").ip;
    let dp = lab.dp();
    let ws = dp.stats(web).expect("stats").expect("web stats");
    assert!(ws.drop_ingress > 0 && ws.new_ingress > 0, "{ws:?}");
    let cs = dp.stats(client).expect("stats").expect("client stats");
    assert!(cs.drop_egress > 0 && cs.new_egress > 0, "{cs:?}");
    let listed = dp.list().expect("list");
    assert_eq!(listed.len(), PODS.len());
}

#[test]
fn spoofed_source_is_dropped() {
    if skip_unless_root() {
        return;
    }
    let mut lab = Lab::new();
    lab.apply(&[]);
    let cache = lab.pod("prod/cache");
    let (netns, host_if, cache_ip) = (cache.netns.clone(), cache.host_if.clone(), cache.ip);
    // A second address in the pod, routed back to it by the node: without the program a
    // datagram from it gets its answer.
    let spoof = "10.200.1.99";
    ip(&[
        "-n",
        &netns,
        "addr",
        "add",
        &format!("{spoof}/32"),
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        &lab.node,
        "route",
        "add",
        &format!("{spoof}/32"),
        "dev",
        &host_if,
    ]);
    let out = lab
        .clients
        .get_mut("prod/cache")
        .expect("client")
        .cmd(&format!("udp 10.200.1.3 9000 {spoof}"));
    assert_eq!(
        out, "prod/client 9000",
        "without the program the path works"
    );

    lab.attach_all();
    for proto in ["udp", "tcp"] {
        let out = lab
            .clients
            .get_mut("prod/cache")
            .expect("client")
            .cmd(&format!("{proto} 10.200.1.3 9000 {spoof}"));
        assert!(out.starts_with("ERR"), "spoofed {proto} passed: {out}");
    }
    lab.probe("udp", "prod/cache", "prod/client", 9000)
        .expect("own address passes");
    let st = lab.dp().stats(cache_ip).expect("stats").expect("present");
    assert!(st.drop_spoofed >= 2, "{st:?}");
}

#[test]
fn policy_change_cuts_what_it_no_longer_allows_and_keeps_the_rest() {
    if skip_unless_root() {
        return;
    }
    let mut lab = Lab::new();
    lab.apply(&[WEB_INGRESS]);
    lab.attach_all();
    let web = lab.addr("prod/web");
    let pc = lab.clients.get_mut("prod/client").expect("client");
    assert_eq!(pc.cmd(&format!("open a {web} 8080")), "prod/web 8080");
    assert_eq!(pc.cmd("echo a"), "prod/web 8080 ping");
    let dc = lab.clients.get_mut("dev/client").expect("client");
    assert_eq!(dc.cmd(&format!("open b {web} 80")), "prod/web 80");
    assert_eq!(dc.cmd(&format!("uopen u {web} 5353")), "prod/web 5353");

    // Drop the same-namespace rule; keep the dev rule.
    let narrowed = "
metadata: {name: web-ingress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: dev}}
      podSelector: {matchLabels: {role: client}}
    ports: [{port: 80}, {protocol: UDP, port: dns}]
";
    lab.apply(&[narrowed]);
    let pc = lab.clients.get_mut("prod/client").expect("client");
    assert!(pc.cmd("echo a").starts_with("ERR"), "a cut flow must stop");
    let dc = lab.clients.get_mut("dev/client").expect("client");
    assert_eq!(
        dc.cmd("echo b"),
        "prod/web 80 ping",
        "an allowed flow survives"
    );
    assert_eq!(
        dc.cmd("usend u"),
        "prod/web 5353",
        "allowed UDP flow survives"
    );
    assert!(lab.probe("tcp", "prod/client", "prod/web", 8080).is_err());

    // Removing the policy entirely opens the pod again; the old flows were dropped from
    // conntrack, new ones pass.
    lab.apply(&[]);
    lab.probe("tcp", "prod/client", "prod/web", 8080)
        .expect("open again");
    let dc = lab.clients.get_mut("dev/client").expect("client");
    assert_eq!(dc.cmd("echo b"), "prod/web 80 ping");
}

#[test]
fn a_pod_is_closed_until_its_rules_are_written_and_attach_is_idempotent() {
    if skip_unless_root() {
        return;
    }
    let mut lab = Lab::new();
    // Programs on the links before any rule: nothing passes, in either direction.
    lab.attach_all();
    assert!(lab.probe("udp", "prod/cache", "prod/client", 9000).is_err());
    assert!(lab.probe("tcp", "ext", "prod/cache", 80).is_err());
    lab.apply(&[]);
    lab.probe("udp", "prod/cache", "prod/client", 9000)
        .expect("open after the write");
    // Attaching again replaces the programs in place: still one per hook, still enforcing.
    lab.attach_all();
    lab.attach_all();
    let node = lab.node_netns();
    let host_if = lab.pod("prod/cache").host_if.clone();
    let counts = std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::File::open(&node).expect("netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            [
                aya::programs::TcAttachType::Ingress,
                aya::programs::TcAttachType::Egress,
            ]
            .map(|t| {
                aya::programs::SchedClassifier::query_tcx(&host_if, t)
                    .expect("query")
                    .1
                    .len()
            })
        })
        .join()
        .expect("thread")
    });
    assert_eq!(counts, [1, 1]);
    lab.apply(&[DEV_DENY_INGRESS]);
    assert!(lab.probe("tcp", "prod/cache", "dev/tool", 80).is_err());
    lab.probe("tcp", "dev/tool", "prod/cache", 80)
        .expect("dev egress is open");
    // Detach: the pod is open again whatever its rules say.
    let tool = lab.pod("dev/tool").host_if.clone();
    policy::detach(&lab.pins, lab.node_netns(), &tool).expect("detach");
    policy::detach(&lab.pins, lab.node_netns(), &tool).expect("detach twice");
    lab.probe("tcp", "prod/cache", "dev/tool", 80)
        .expect("no program, no policy");
}

/// A pod whose deny policy is in the maps and whose programs are on its link before the
/// link comes up (the CNI's order) never gets a packet through: a sender inside starts
/// before the link is up and keeps sending; the receiver counts nothing.
#[test]
fn a_denied_pod_gets_no_packet_through_from_its_first_moment() {
    if skip_unless_root() {
        return;
    }
    let mut lab = Lab::new();
    lab.apply(&[]);
    lab.attach_all();
    let seq = SEQ.fetch_add(1, Ordering::SeqCst);
    let netns = format!("{}-late", lab.tag);
    let host_if = format!("hv{seq}late");
    let pod_ip: Ipv4Addr = "10.200.1.50".parse().expect("ip");
    lab.add_netns(&netns);
    // Link pair and addresses, both ends still down.
    ip(&[
        "-n", &lab.node, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
        &netns,
    ]);
    ip(&[
        "-n",
        &lab.node,
        "addr",
        "add",
        "169.254.1.1/32",
        "dev",
        &host_if,
    ]);
    ip(&["-n", &netns, "addr", "add", "10.200.1.50/32", "dev", "eth0"]);
    // The rules (egress denied, via a closed pod) and the programs, before any link is up.
    lab.dp()
        .write_pod(&eni_policy::PodRules::closed(pod_ip, "test: deny all"))
        .expect("write");
    policy::attach(
        &lab.pins,
        lab.node_netns(),
        &host_if,
        pod_ip,
        LinkSide::HostVeth,
    )
    .expect("attach");
    // A sender that fires UDP at prod/client as fast as it can, from before the link is up.
    let mut sender = Command::new("ip")
        .args([
            "netns", "exec", &netns, "python3", "-c",
            "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nend=time.time()+3\nn=0\nwhile time.time()<end:\n  try:\n    s.sendto(b'x',('10.200.1.3',9000)); n+=1\n  except OSError: pass\nprint(n)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sender");
    sleep(Duration::from_millis(200));
    ip(&["-n", &lab.node, "link", "set", &host_if, "up"]);
    ip(&[
        "-n",
        &lab.node,
        "route",
        "add",
        "10.200.1.50/32",
        "dev",
        &host_if,
    ]);
    ip(&["-n", &netns, "link", "set", "lo", "up"]);
    ip(&["-n", &netns, "link", "set", "eth0", "up"]);
    ip(&[
        "-n",
        &netns,
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    ip(&[
        "-n",
        &netns,
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    let status = sender.wait().expect("sender");
    assert!(status.success());
    let st = lab.dp().stats(pod_ip).expect("stats").expect("present");
    assert!(
        st.drop_egress > 0,
        "the sender's packets reached the program: {st:?}"
    );
    // prod/client has no policy, so it would have counted a new ingress flow from the
    // denied pod had any datagram passed.
    let client_ip = lab.pod("prod/client").ip;
    assert_eq!(lab.dp().flow_count(client_ip), 0, "a packet got through");
    policy::detach(&lab.pins, lab.node_netns(), &host_if).expect("detach");
}

/// Map bookkeeping without traffic: a rewrite leaves only the active slot's entries and
/// bumps the revision, `list` reads back what was written, `remove_pod` leaves nothing.
#[test]
fn rewrites_keep_one_slot_and_remove_clears_everything() {
    if skip_unless_root() {
        return;
    }
    let tag = format!(
        "enipol{}-m{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    );
    let bpffs = std::env::temp_dir().join(format!("{tag}-bpffs"));
    std::fs::create_dir_all(&bpffs).expect("bpffs dir");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = unpin_policy(self.0.join("eni-net"));
            let _ = std::fs::remove_dir(self.0.join("eni-net"));
            let _ = Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs));
    let guard = Unmount(bpffs);
    let pins = guard.0.join("eni-net");
    let mut dp = PolicyDatapath::load_or_adopt(&pins).expect("load");
    let pod: Vec<Pod> = vec![serde_yaml::from_str(
        "metadata: {name: a, namespace: x, labels: {app: a}}\nstatus: {podIP: 10.9.0.1}",
    )
    .expect("pod")];
    let policy = |cidrs: &str| -> NetworkPolicy {
        serde_yaml::from_str(&format!(
            "metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{cidrs}], ports: [{{port: 80}}]}}]\n"
        ))
        .expect("policy")
    };
    let ip: Ipv4Addr = "10.9.0.1".parse().expect("ip");
    let first = compile(
        &[policy(
            "{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}",
        )],
        &pod,
        &[],
    );
    dp.write_pod(&first.pods[&PodRef::new("x", "a")])
        .expect("write");
    let one = dp.list().expect("list");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].rules.len(), 2);
    let rev1 = one[0].pod.rev;
    let second = compile(&[policy("{ipBlock: {cidr: 192.168.0.0/16}}")], &pod, &[]);
    dp.write_pod(&second.pods[&PodRef::new("x", "a")])
        .expect("rewrite");
    let two = dp.list().expect("list");
    assert_eq!(two[0].rules.len(), 1);
    assert_eq!(two[0].rules[0].1.to_string(), "192.168.0.0/16");
    assert_ne!(two[0].pod.rev, rev1);
    assert_ne!(two[0].pod.slot, one[0].pod.slot);
    assert_eq!(
        dp.rule_entries().expect("count"),
        1,
        "the old slot was cleared"
    );
    // Adopting the pins from another loader sees the same state.
    let other = PolicyDatapath::open_pinned(&pins).expect("open pinned");
    assert_eq!(other.list().expect("list"), two);
    // A restarted manager (a new loader, its key index built from the map) writes and
    // removes exactly what is there: no entry of either slot is left behind.
    drop(dp);
    let mut dp = PolicyDatapath::load_or_adopt(&pins).expect("adopt");
    dp.write_pod(&first.pods[&PodRef::new("x", "a")])
        .expect("rewrite after adoption");
    assert_eq!(dp.list().expect("list")[0].rules.len(), 2);
    assert_eq!(dp.rule_entries().expect("count"), 2);
    dp.remove_pod(ip).expect("remove");
    dp.remove_pod(ip).expect("remove twice");
    assert!(dp.list().expect("list").is_empty());
    assert!(dp.stats(ip).expect("stats").is_none());
    assert_eq!(dp.rule_entries().expect("count"), 0);
    drop(other);
    drop(dp);
    drop(guard);
}

/// The in-pod attachment (ipvlan slave or exclusive ENI: the programs on the pod's own
/// `eth0`, directions swapped) enforces the same rules as the host-veth one.
#[test]
fn in_pod_attachment_enforces_the_same_rules() {
    if skip_unless_root() {
        return;
    }
    let mut lab = Lab::new();
    lab.apply(&[CLIENT_EGRESS, DEV_DENY_INGRESS]);
    for p in &lab.pods {
        if p.key.to_string() == "dev/tool" || p.key.to_string() == "prod/client" {
            let netns = Path::new("/run/netns").join(&p.netns);
            policy::attach(&lab.pins, &netns, "eth0", p.ip, LinkSide::InPod).expect("attach");
        } else {
            policy::attach(
                &lab.pins,
                lab.node_netns(),
                &p.host_if,
                p.ip,
                LinkSide::HostVeth,
            )
            .expect("attach");
        }
    }
    let cases: [(&str, &str, u16, bool, bool); 8] = [
        ("prod/web", "dev/tool", 80, false, false),
        ("dev/tool", "ext", 9000, true, true),
        ("prod/client", "ext", 443, true, true),
        ("prod/client", "ext!", 443, false, false),
        ("prod/client", "prod/cache", 5353, false, true),
        ("ext", "prod/client", 80, true, true),
        ("ext!", "prod/client", 9000, true, true),
        ("prod/client", "prod/web", 8080, true, false),
    ];
    let mut wrong = Vec::new();
    for (from, to, port, tcp, udp) in cases {
        for (proto, want) in [("tcp", tcp), ("udp", udp)] {
            let got = lab.probe(proto, from, to, port);
            if got.is_ok() != want {
                wrong.push(format!(
                    "{from} -> {to} {proto}/{port}: want {want}, got {got:?}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let tool = lab.pod("dev/tool").ip;
    let st = lab.dp().stats(tool).expect("stats").expect("present");
    assert!(st.drop_ingress > 0 && st.new_egress > 0, "{st:?}");
}

#[test]
fn links_of_interfaces_that_died_with_their_namespace_are_swept() {
    if skip_unless_root() {
        return;
    }
    let mut lab = Lab::new();
    lab.apply(&[]);
    // A pod with no process in its namespace, attached inside it and on its host veth,
    // next to a lab pod attached inside its namespace.
    let gone = format!("{}-gone", lab.tag);
    let gone_host = format!("{}g", &lab.tag[lab.tag.len().saturating_sub(8)..]);
    lab.add_netns(&gone);
    lab.wire(&gone, &gone_host, &["10.200.9.9"]);
    let gone_ip: Ipv4Addr = "10.200.9.9".parse().expect("ip");
    let gone_netns = Path::new("/run/netns").join(&gone);
    policy::attach(&lab.pins, &gone_netns, "eth0", gone_ip, LinkSide::InPod).expect("attach");
    policy::attach(
        &lab.pins,
        lab.node_netns(),
        &gone_host,
        gone_ip,
        LinkSide::HostVeth,
    )
    .expect("attach");
    let db = lab.pod("prod/db");
    let (db_netns, db_ip) = (Path::new("/run/netns").join(&db.netns), db.ip);
    policy::attach(&lab.pins, &db_netns, "eth0", db_ip, LinkSide::InPod).expect("attach");
    let link_dirs = |lab: &Lab| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(lab.pins.join("links"))
            .expect("links dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let ino = |p: &Path| {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(p).expect("netns").ino()
    };
    let dead = [
        format!("tc-{}-eth0", ino(&gone_netns)),
        format!("tc-{}-{gone_host}", ino(&lab.node_netns())),
    ];
    let before = link_dirs(&lab);
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(dead.iter().all(|d| before.contains(d)), "{before:?}");
    // Nothing is dead yet: nothing is swept.
    let sweep = policy::sweep_defunct_links(&lab.pins).expect("sweep");
    assert_eq!((sweep.removed.len(), sweep.kept), (0, 3), "{sweep:?}");

    // The runtime destroys the pod's namespace (and with it both ends of the veth) before,
    // or without, a DEL that could name it. The kernel tears the namespace down
    // asynchronously.
    ip(&["netns", "del", &gone]);
    lab.netns_made.retain(|n| n != &gone);
    let mut removed = Vec::new();
    let mut sweep = policy::LinkSweep::default();
    for _ in 0..300 {
        sweep = policy::sweep_defunct_links(&lab.pins).expect("sweep");
        removed.extend(sweep.removed.iter().cloned());
        if removed.len() >= 2 {
            break;
        }
        sleep(Duration::from_millis(10));
    }
    let mut removed: Vec<String> = removed
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    removed.sort();
    let mut want = dead.to_vec();
    want.sort();
    assert_eq!(removed, want, "{sweep:?}");
    assert_eq!(sweep.kept, 1, "{sweep:?}");
    let after = link_dirs(&lab);
    assert_eq!(after.len(), 1, "{after:?}");

    // The survivor is untouched: swept again, nothing goes; re-attaching adopts its pins.
    let again = policy::sweep_defunct_links(&lab.pins).expect("sweep");
    assert_eq!((again.removed.len(), again.kept), (0, 1), "{again:?}");
    policy::attach(&lab.pins, &db_netns, "eth0", db_ip, LinkSide::InPod).expect("re-attach");
    assert_eq!(link_dirs(&lab), after);
}
