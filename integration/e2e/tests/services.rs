//! eBPF Services through the whole stack: mock cloud + hypervisor, node A's `eni-manager` with
//! the Service datapath on (file source), pods wired by `eni-cni` in veth mode, real TCP and
//! UDP from a pod process in node A's cgroup.
//!
//! - A ClusterIP spreads over a backend on node A and one on node B (no SNAT: the backends
//!   see the client pod's address), `getpeername` shows the ClusterIP, UDP replies come from
//!   the ClusterIP.
//! - A pod reaches itself through its own Service.
//! - The manager is SIGKILLed while a client connects in a loop: not one connection fails,
//!   through the kill, the time without a manager, and the restart (which adopts the pinned
//!   maps); the restarted manager then applies a change of the YAML files.
//!
//! - NodePorts and an externalIP reached from node B's own namespace (another "node",
//!   outside node A's Service cgroup), through the tc programs `services.nodeport` attaches
//!   to node A's links: `externalTrafficPolicy: Cluster` spreads over both nodes' backends
//!   and SNATs to node A's address towards node B's backend; `Local` keeps the client's
//!   address and uses node A's backend only. The manager is SIGKILLed: the NodePort keeps
//!   answering from the pins; the restarted manager adopts them (nothing newly attached).
//!
//! The tests share fixed ports (the managers' metrics): they take [`CLUSTER`] in turn.
//!
//! Needs root: otherwise says SKIPPED and returns.

#![allow(clippy::print_stdout, reason = "the test reports what it measured")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A TCP and UDP server on 0.0.0.0:8080 that answers `<name> <peer address>`.
const SERVER_PY: &str = r#"
import socket, sys, threading
name = sys.argv[1]
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', 8080)); s.listen(512); ready.release()
    while True:
        c, a = s.accept()
        try: c.sendall(('%s %s\n' % (name, a[0])).encode())
        except OSError: pass
        c.close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 8080)); ready.release()
    while True:
        d, a = s.recvfrom(100)
        s.sendto(('%s %s' % (name, a[0])).encode(), a)
ready = threading.Semaphore(0)
threading.Thread(target=tcp, daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
ready.acquire(); ready.acquire()
print('ready', flush=True)
threading.Event().wait()
"#;

/// Commands on stdin, one answer line each:
/// `tcp IP PORT` -> `<backend> <address it saw> <getpeername>`;
/// `udp IP PORT` -> `<backend> <address it saw> <reply source>`;
/// `uconn ID IP PORT` opens a connected UDP socket -> `<backend> <address it saw> <getpeername>`;
/// `usend ID` sends on it again -> `<backend> <address it saw> <reply source>`;
/// `loop IP PORT` starts connecting in a loop (every 10 ms) -> `started`;
/// `stop` -> `<connections that worked> <failures> <first failure>`.
const CLIENT_PY: &str = r#"
import socket, sys, threading, time
def fmt(a): return '%s:%d' % a
def tcp(ip, port):
    s = socket.create_connection((ip, port), timeout=3)
    line = s.makefile().readline().strip(); peer = fmt(s.getpeername()); s.close()
    return line + ' ' + peer
state = {'ok': 0, 'fail': 0, 'first': '-', 'run': False}
def loop(ip, port):
    while state['run']:
        try:
            tcp(ip, port); state['ok'] += 1
        except Exception as e:
            state['fail'] += 1
            if state['first'] == '-': state['first'] = type(e).__name__
        time.sleep(0.01)
worker = None
socks = {}
for line in sys.stdin:
    p = line.split()
    try:
        if p[0] == 'tcp':
            out = tcp(p[1], int(p[2]))
        elif p[0] == 'udp':
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
            s.sendto(b'x', (p[1], int(p[2]))); d, src = s.recvfrom(100); s.close()
            out = d.decode() + ' ' + fmt(src)
        elif p[0] == 'uconn':
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
            s.connect((p[2], int(p[3]))); socks[p[1]] = s; s.send(b'x')
            d, src = s.recvfrom(100); out = d.decode() + ' ' + fmt(s.getpeername())
        elif p[0] == 'usend':
            s = socks[p[1]]; s.send(b'x'); d, src = s.recvfrom(100)
            out = d.decode() + ' ' + fmt(src)
        elif p[0] == 'loop':
            state['run'] = True
            worker = threading.Thread(target=loop, args=(p[1], int(p[2])), daemon=True)
            worker.start(); out = 'started'
        elif p[0] == 'stop':
            state['run'] = False; worker.join()
            out = '%d %d %s' % (state['ok'], state['fail'], state['first'])
        else:
            out = 'ERR unknown'
    except Exception as e:
        out = 'ERR ' + type(e).__name__ + ' ' + str(e)
    print(out.replace('\n', ' '), flush=True)
"#;

struct Server(Child);

impl Server {
    fn start(pod: &Pod, name: &str) -> Server {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod.ns.name,
                "python3",
                "-u",
                "-c",
                SERVER_PY,
                name,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "server {name}");
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One cluster at a time in this test binary (fixed metrics ports, one mock).
static CLUSTER: Mutex<()> = Mutex::new(());

/// A client process in `pod`'s namespace and in node A's Service cgroup.
struct PodClient {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    child: Child,
}

impl PodClient {
    fn start(svc: &SvcNode, pod: &Pod) -> PodClient {
        let script = format!(
            "{} && exec ip netns exec {} python3 -u -c \"$0\"",
            svc.join_cgroup(),
            pod.ns.name
        );
        PodClient::spawn(&script)
    }

    /// A client in namespace `ns` and outside node A's Service cgroup: what a client on
    /// another machine sees.
    fn outside(ns: &Netns) -> PodClient {
        PodClient::spawn(&format!(
            "exec ip netns exec {} python3 -u -c \"$0\"",
            ns.name
        ))
    }

    fn spawn(script: &str) -> PodClient {
        let mut child = Command::new("sh")
            .args(["-c", script, CLIENT_PY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn client");
        PodClient {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        let mut out = String::new();
        self.stdout.read_line(&mut out).unwrap();
        out.trim().to_string()
    }

    /// The three fields of an answer; panics on an error.
    fn fields(&mut self, line: &str) -> [String; 3] {
        let out = self.cmd(line);
        assert!(!out.starts_with("ERR"), "{line}: {out}");
        let f: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(f.len(), 3, "{line}: {out}");
        [f[0].to_string(), f[1].to_string(), f[2].to_string()]
    }
}

impl Drop for PodClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn services_yaml(backends: &[Ipv4Addr], self_ip: Ipv4Addr) -> String {
    let endpoints: String = backends
        .iter()
        .map(|ip| format!("  - addresses: [\"{ip}\"]\n    conditions: {{ ready: true }}\n"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{ name: web, namespace: e2e }}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {{ name: http, port: 80, protocol: TCP, targetPort: 8080 }}
  - {{ name: dns, port: 53, protocol: UDP, targetPort: 8080 }}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{ name: web-1, namespace: e2e, labels: {{ kubernetes.io/service-name: web }} }}
addressType: IPv4
ports: [{{ name: http, port: 8080, protocol: TCP }}, {{ name: dns, port: 8080, protocol: UDP }}]
endpoints:
{endpoints}---
apiVersion: v1
kind: Service
metadata: {{ name: me, namespace: e2e }}
spec:
  clusterIP: 10.96.0.11
  ports: [{{ name: http, port: 80, targetPort: 8080 }}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{ name: me-1, namespace: e2e, labels: {{ kubernetes.io/service-name: me }} }}
addressType: IPv4
ports: [{{ name: http, port: 8080 }}]
endpoints:
  - addresses: ["{self_ip}"]
"#
    )
}

/// Backends that answered `n` connections (TCP) or datagrams (UDP), with what they saw.
fn spread(client: &mut PodClient, proto: &str, n: usize) -> BTreeMap<String, (String, String)> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let port = if proto == "tcp" { 80 } else { 53 };
        let [backend, saw, peer] = client.fields(&format!("{proto} 10.96.0.10 {port}"));
        seen.insert(backend, (saw, peer));
    }
    seen
}

#[test]
fn cluster_ip_services_from_yaml_survive_a_manager_crash() {
    require_root!();
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start_with_services();
    let a1 = c.add_pod(Node::A, "veth", &json!({}));
    let a2 = c.add_pod(Node::A, "veth", &json!({}));
    let b1 = c.add_pod(Node::B, "veth", &json!({}));
    println!("pods: a1 {} a2 {} b1 {}", a1.ip, a2.ip, b1.ip);
    let _servers = [
        Server::start(&a1, "a1"),
        Server::start(&a2, "a2"),
        Server::start(&b1, "b1"),
    ];
    let svc = c.svc_a.as_ref().expect("node A runs the Service datapath");
    svc.write("web.yaml", &services_yaml(&[a2.ip, b1.ip], a1.ip));
    let mut client = PodClient::start(svc, &a1);

    // The manager reads the directory within a second or so.
    assert!(
        wait_for(Duration::from_secs(15), || !client
            .cmd("tcp 10.96.0.10 80")
            .starts_with("ERR")),
        "10.96.0.10:80 never answered; manager log:\n{}",
        std::fs::read_to_string(&c.a.log).unwrap_or_default()
    );

    // TCP over both backends, one per node; no SNAT; getpeername shows the ClusterIP.
    let tcp = spread(&mut client, "tcp", 40);
    assert_eq!(
        tcp.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a2", "b1"],
        "{tcp:?}"
    );
    for (backend, (saw, peer)) in &tcp {
        assert_eq!(saw, &a1.ip.to_string(), "{backend} saw the pod's address");
        assert_eq!(peer, "10.96.0.10:80", "getpeername");
    }
    // UDP likewise, the reply from the ClusterIP.
    let udp = spread(&mut client, "udp", 40);
    assert_eq!(udp.len(), 2, "{udp:?}");
    for (saw, src) in udp.values() {
        assert_eq!(saw, &a1.ip.to_string());
        assert_eq!(src, "10.96.0.10:53", "UDP reply source");
    }
    // A pod through its own Service.
    let [me, saw, peer] = client.fields("tcp 10.96.0.11 80");
    assert_eq!((me.as_str(), peer.as_str()), ("a1", "10.96.0.11:80"));
    assert_eq!(saw, a1.ip.to_string());

    // Crash the manager while connecting in a loop; restart it; no connection fails.
    assert_eq!(client.cmd("loop 10.96.0.10 80"), "started");
    std::thread::sleep(Duration::from_millis(300));
    c.a.kill();
    std::thread::sleep(Duration::from_secs(2));
    let node_a = c.node_a.name.clone();
    c.a = Manager::start_with(
        &c.dir.path().join("node-a"),
        &node_a,
        19410,
        &pool_settings(),
        &svc.config(),
    );
    c.a.wait_ready(MIN_IDLE, Duration::from_secs(30));
    assert!(
        wait_for(Duration::from_secs(10), || c
            .a
            .log_has(&["socket load balancer ready", "newly_attached=0"])),
        "the restarted manager did not adopt the pinned datapath"
    );
    std::thread::sleep(Duration::from_millis(500));
    let stop = client.cmd("stop");
    let f: Vec<&str> = stop.split_whitespace().collect();
    let (ok, failed): (u64, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
    println!(
        "through the crash and restart: {ok} connections, {failed} failed ({})",
        f[2]
    );
    assert!(ok >= 50, "the loop barely ran: {stop}");
    assert_eq!(failed, 0, "connections failed across the crash: {stop}");

    // A connected UDP socket on b1, which then leaves the Service: the manager terminates
    // the socket in the pod's namespace (b1 still listens: only that keeps it off b1).
    let on_b1 = (0..40)
        .map(|i| {
            let [backend, ..] = client.fields(&format!("uconn u{i} 10.96.0.10 53"));
            (i, backend)
        })
        .find(|(_, b)| b == "b1")
        .map(|(i, _)| format!("u{i}"))
        .expect("no connected UDP socket landed on b1 in 40 tries");
    assert_eq!(client.fields(&format!("usend {on_b1}"))[0], "b1");

    // The restarted manager owns the table: b1 leaves the Service.
    svc.write("web.yaml", &services_yaml(&[a2.ip], a1.ip));
    assert!(
        wait_for(Duration::from_secs(10), || {
            spread(&mut client, "tcp", 10).keys().collect::<Vec<_>>() == ["a2"]
        }),
        "b1 still gets connections after it left the EndpointSlice"
    );
    let after = client.cmd(&format!("usend {on_b1}"));
    assert!(
        after.starts_with("ERR"),
        "the connected UDP socket still sends to the removed backend: {after}"
    );
    assert!(
        c.a.log_has(&[
            "connected UDP sockets to a removed backend terminated",
            &a1.ns.name
        ]),
        "the manager did not log the termination in a1's namespace"
    );
    let [backend, _, peer] = client.fields("uconn again 10.96.0.10 53");
    assert_eq!((backend.as_str(), peer.as_str()), ("a2", "10.96.0.10:53"));
}

/// NodePort (Cluster and Local) and externalIP Services; `a_node` is node A's `nodeName`.
fn nodeport_yaml(a2: Ipv4Addr, b1: Ipv4Addr, external_ip: Ipv4Addr) -> String {
    let slice = |name: &str, svc: &str| {
        format!(
            r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{ name: {name}, namespace: e2e, labels: {{ kubernetes.io/service-name: {svc} }} }}
addressType: IPv4
ports: [{{ name: http, port: 8080, protocol: TCP }}, {{ name: dns, port: 8080, protocol: UDP }}]
endpoints:
  - {{ addresses: ["{a2}"], nodeName: node-a, conditions: {{ ready: true }} }}
  - {{ addresses: ["{b1}"], nodeName: node-b, conditions: {{ ready: true }} }}
"#
        )
    };
    let service = |name: &str, ip: &str, policy: &str, tcp: u16, udp: u16| {
        format!(
            r#"---
apiVersion: v1
kind: Service
metadata: {{ name: {name}, namespace: e2e }}
spec:
  type: NodePort
  clusterIP: {ip}
  externalTrafficPolicy: {policy}
  ports:
  - {{ name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: {tcp} }}
  - {{ name: dns, port: 53, protocol: UDP, targetPort: 8080, nodePort: {udp} }}
"#
        )
    };
    [
        service("np-cluster", "10.96.0.20", "Cluster", 30080, 30053),
        slice("np-cluster-1", "np-cluster"),
        service("np-local", "10.96.0.21", "Local", 30081, 30054),
        slice("np-local-1", "np-local"),
        format!(
            r#"---
apiVersion: v1
kind: Service
metadata: {{ name: ext, namespace: e2e }}
spec:
  clusterIP: 10.96.0.22
  externalIPs: ["{external_ip}"]
  ports:
  - {{ name: http, port: 80, protocol: TCP, targetPort: 8080 }}
  - {{ name: dns, port: 53, protocol: UDP, targetPort: 8080 }}
"#
        ),
        slice("ext-1", "ext"),
    ]
    .concat()
}

/// Node A's `services` section with `services.nodeport` on node A's NICs (the primary and
/// the ENIs the pool attached: pod replies leave through the ENI holding the pod's
/// address; the NodePort addresses default to the links' own), and those links.
fn nodeport_config(c: &Cluster) -> (serde_json::Value, Vec<String>) {
    let svc = c.svc_a.as_ref().expect("node A runs the Service datapath");
    let links: Vec<String> = c
        .node_a
        .links()
        .into_keys()
        .filter(|n| n.starts_with("eth"))
        .collect();
    println!("node A links: {links:?}");
    let mut config = svc.config();
    config["nodeport"] = json!({ "enabled": true, "links": links });
    (config, links)
}

/// SIGKILLs node A's manager `m` and starts it again with `services` as its services
/// section; waits until its pool is warm.
fn restart_manager_a(
    m: &mut Manager,
    dir_a: &std::path::Path,
    node_a: &str,
    services: &serde_json::Value,
) {
    m.kill();
    *m = Manager::start_with(dir_a, node_a, 19410, &pool_settings(), services);
    m.wait_ready(MIN_IDLE, Duration::from_secs(30));
}

/// Node A's manager's `/metrics` (served in node A's namespace).
fn metrics_a(c: &Cluster) -> String {
    c.node_a.exec(&[
        "python3",
        "-c",
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:19410/metrics').read().decode())",
    ])
}

/// The value of the unlabelled series `name` in a metrics text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
}

/// Backends that answered `n` TCP connections or UDP datagrams to `ip:port`, with the
/// client address each saw and the address the answer came from.
fn spread_to(
    client: &mut PodClient,
    proto: &str,
    ip: Ipv4Addr,
    port: u16,
    n: usize,
) -> BTreeMap<String, (String, String)> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let [backend, saw, from] = client.fields(&format!("{proto} {ip} {port}"));
        seen.insert(backend, (saw, from));
    }
    seen
}

#[test]
fn nodeports_and_external_ips_from_another_node_survive_a_manager_crash() {
    require_root!();
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start_with_services();
    let a1 = c.add_pod(Node::A, "veth", &json!({}));
    let a2 = c.add_pod(Node::A, "veth", &json!({}));
    let b1 = c.add_pod(Node::B, "veth", &json!({}));
    println!("pods: a1 {} a2 {} b1 {}", a1.ip, a2.ip, b1.ip);
    let _servers = [Server::start(&a2, "a2"), Server::start(&b1, "b1")];
    let svc = c.svc_a.as_ref().expect("node A runs the Service datapath");
    // An address no link holds, routed to node A by node B (a LoadBalancer or a router
    // would do that for an externalIP).
    let external_ip = Ipv4Addr::new(198, 51, 100, 50);
    c.node_b.ip(&[
        "route",
        "add",
        &format!("{external_ip}/32"),
        "via",
        &c.ip_a.to_string(),
    ]);
    svc.write("np.yaml", &nodeport_yaml(a2.ip, b1.ip, external_ip));

    let (config, links) = nodeport_config(&c);
    let node_a = c.node_a.name.clone();
    let dir_a = c.dir.path().join("node-a");
    let restart = |m: &mut Manager| restart_manager_a(m, &dir_a, &node_a, &config);
    restart(&mut c.a);
    assert!(
        c.a.log_has(&["NodePort datapath ready", &format!("links={}", links.len())]),
        "the manager did not attach the NodePort programs; log:\n{}",
        std::fs::read_to_string(&c.a.log).unwrap_or_default()
    );
    let mut client = PodClient::outside(&c.node_b);
    let ip_a = c.ip_a;
    assert!(
        wait_for(Duration::from_secs(15), || !client
            .cmd(&format!("tcp {ip_a} 30080"))
            .starts_with("ERR")),
        "{ip_a}:30080 never answered from node B; manager log:\n{}",
        std::fs::read_to_string(&c.a.log).unwrap_or_default()
    );

    // Cluster: both nodes' backends; node B's backend sees node A's address (SNAT), node
    // A's the client; the answers come from the NodePort.
    let node_b_addr = c.ip_b.to_string();
    for (proto, port) in [("tcp", 30080), ("udp", 30053)] {
        let seen = spread_to(&mut client, proto, ip_a, port, 40);
        assert_eq!(
            seen.keys().map(String::as_str).collect::<Vec<_>>(),
            ["a2", "b1"],
            "{proto} NodePort Cluster: {seen:?}"
        );
        assert_eq!(
            seen["b1"].0,
            ip_a.to_string(),
            "{proto}: b1 is reached SNATed"
        );
        assert_eq!(seen["a2"].0, node_b_addr, "{proto}: a2 sees the client");
        for (_, from) in seen.values() {
            assert_eq!(from, &format!("{ip_a}:{port}"), "{proto} answer source");
        }
    }
    // Local: only node A's backend, and it sees the client's own address.
    for (proto, port) in [("tcp", 30081), ("udp", 30054)] {
        let seen = spread_to(&mut client, proto, ip_a, port, 20);
        assert_eq!(
            seen.keys().map(String::as_str).collect::<Vec<_>>(),
            ["a2"],
            "{proto} NodePort Local: {seen:?}"
        );
        assert_eq!(
            seen["a2"].0, node_b_addr,
            "{proto} Local keeps the client address"
        );
        assert_eq!(seen["a2"].1, format!("{ip_a}:{port}"));
    }
    // The externalIP (Cluster): both backends, answers from the external IP.
    for (proto, port) in [("tcp", 80), ("udp", 53)] {
        let seen = spread_to(&mut client, proto, external_ip, port, 40);
        assert_eq!(seen.len(), 2, "{proto} externalIP: {seen:?}");
        for (_, from) in seen.values() {
            assert_eq!(from, &format!("{external_ip}:{port}"));
        }
    }
    // The counters are on /metrics (served in node A's namespace).
    let text = metrics_a(&c);
    assert!(
        text.contains(&format!("eni_services_nodeport_links {}\n", links.len())),
        "{text}"
    );
    assert!(
        !text.contains("eni_services_nodeport_reconciles_total 0\n")
            && text.contains("eni_services_nodeport_reconciles_total"),
        "{text}"
    );

    // SIGKILL the manager while node B connects in a loop; the pins keep the NodePort up;
    // the restarted manager adopts them without attaching anything anew.
    assert_eq!(client.cmd(&format!("loop {ip_a} 30080")), "started");
    std::thread::sleep(Duration::from_millis(300));
    c.a.kill();
    std::thread::sleep(Duration::from_secs(2));
    let [backend, ..] = PodClient::outside(&c.node_b).fields(&format!("tcp {ip_a} 30081"));
    assert_eq!(
        backend, "a2",
        "the Local NodePort answers without a manager"
    );
    restart(&mut c.a);
    assert!(
        wait_for(Duration::from_secs(10), || c
            .a
            .log_has(&["NodePort datapath ready", "newly_attached=0"])),
        "the restarted manager did not adopt the attached NodePort programs; log:\n{}",
        std::fs::read_to_string(&c.a.log).unwrap_or_default()
    );
    std::thread::sleep(Duration::from_millis(500));
    let stop = client.cmd("stop");
    let f: Vec<&str> = stop.split_whitespace().collect();
    let (ok, failed): (u64, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
    println!(
        "NodePort through the crash and restart: {ok} connections, {failed} failed ({})",
        f[2]
    );
    assert!(ok >= 50, "the loop barely ran: {stop}");
    assert_eq!(
        failed, 0,
        "NodePort connections failed across the crash: {stop}"
    );

    // The restarted manager owns the per-packet table: the Cluster NodePort goes away.
    let yaml = nodeport_yaml(a2.ip, b1.ip, external_ip).replace(", nodePort: 30080", "");
    svc.write("np.yaml", &yaml);
    assert!(
        wait_for(Duration::from_secs(10), || client
            .cmd(&format!("tcp {ip_a} 30080"))
            .starts_with("ERR")),
        "{ip_a}:30080 still answers after its nodePort was removed"
    );
    let [backend, ..] = client.fields(&format!("tcp {ip_a} 30081"));
    assert_eq!(backend, "a2");
}

/// A pod's `hostPort`s as the runtime passes them to a plugin with the `portMappings`
/// capability.
fn host_ports_netconf(mappings: &serde_json::Value) -> serde_json::Value {
    json!({
        "capabilities": { "portMappings": true },
        "runtimeConfig": { "portMappings": mappings }
    })
}

#[test]
fn host_ports_through_eni_cni_from_another_node_survive_a_manager_crash() {
    require_root!();
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start_with_services();
    let (config, links) = nodeport_config(&c);
    let node_a = c.node_a.name.clone();
    let dir_a = c.dir.path().join("node-a");
    let restart = |m: &mut Manager| restart_manager_a(m, &dir_a, &node_a, &config);
    restart(&mut c.a);
    assert!(
        c.a.log_has(&["NodePort datapath ready", &format!("links={}", links.len())]),
        "the manager did not attach the NodePort programs; log:\n{}",
        std::fs::read_to_string(&c.a.log).unwrap_or_default()
    );
    let baseline = metric(&metrics_a(&c), "eni_services_nodeport_frontends");

    // A pod with hostPort 8088 (TCP and UDP) -> its port 8080, through the real plugin.
    let mappings = json!([
        {"hostPort": 8088, "containerPort": 8080, "protocol": "tcp", "hostIP": ""},
        {"hostPort": 8088, "containerPort": 8080, "protocol": "UDP"}
    ]);
    let mut a1 = c.add_pod(Node::A, "veth", &host_ports_netconf(&mappings));
    println!("pod a1 {} ({})", a1.ip, a1.container);
    // The ADD answered once the host ports were in the maps.
    let served = metric(&metrics_a(&c), "eni_services_nodeport_frontends");
    assert!(
        served >= baseline + 2,
        "the host ports are not among the per-packet frontends: {baseline} -> {served}"
    );
    let _server = Server::start(&a1, "a1");
    let ip_a = c.ip_a;
    let node_b_addr = c.ip_b.to_string();
    let mut client = PodClient::outside(&c.node_b);
    // From node B: the pod answers, sees node B's own address, and the answers come from
    // the host port.
    for proto in ["tcp", "udp"] {
        for _ in 0..5 {
            let [backend, saw, from] = client.fields(&format!("{proto} {ip_a} 8088"));
            assert_eq!(backend, "a1", "{proto}");
            assert_eq!(saw, node_b_addr, "{proto}: the client address is kept");
            assert_eq!(from, format!("{ip_a}:8088"), "{proto}: answer source");
        }
    }

    // A second pod asking for the same host port is refused, naming the holder; nothing
    // is allocated to it.
    let clash_ns = Netns::create(&format!("pod-a-clash-{}", std::process::id()));
    let clash_id = format!("e2eclash{:08x}", std::process::id());
    let clash_conf = c.netconf(
        Node::A,
        "veth",
        &host_ports_netconf(&json!([{"hostPort": 8088, "containerPort": 80, "protocol": "tcp"}])),
    );
    let run = c.cni(
        Node::A,
        &CniEnv::add(
            &clash_id,
            &clash_ns.path(),
            "eth0",
            "K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=clash",
        ),
        &clash_conf,
    );
    let msg = run.err(109);
    assert!(
        msg.contains("host port *:8088/tcp is taken") && msg.contains(&a1.container),
        "{msg}"
    );
    assert!(
        c.a.allocations().iter().all(|a| a.container_id != clash_id),
        "the refused pod holds an address"
    );
    // Node B's manager runs without services.nodeport: host ports are refused there with
    // what to do.
    let b_ns = Netns::create(&format!("pod-b-hp-{}", std::process::id()));
    let b_conf = c.netconf(Node::B, "veth", &host_ports_netconf(&mappings));
    let run = c.cni(
        Node::B,
        &CniEnv::add(
            "e2ehpnodeportoff",
            &b_ns.path(),
            "eth0",
            "K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=b",
        ),
        &b_conf,
    );
    let msg = run.err(109);
    assert!(
        msg.contains("services.nodeport") && msg.contains("portmap"),
        "{msg}"
    );
    // A bad mapping never reaches the manager.
    let bad = c.netconf(
        Node::A,
        "veth",
        &host_ports_netconf(&json!([{"hostPort": 8089, "containerPort": 80, "protocol": "sctp"}])),
    );
    let run = c.cni(
        Node::A,
        &CniEnv::add(
            &clash_id,
            &clash_ns.path(),
            "eth0",
            "K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=clash",
        ),
        &bad,
    );
    let msg = run.err(2);
    assert!(
        msg.contains("runtimeConfig.portMappings[0].protocol"),
        "{msg}"
    );

    // SIGKILL: the pinned maps keep the host port answering with no manager at all.
    c.a.kill();
    std::thread::sleep(Duration::from_millis(500));
    for proto in ["tcp", "udp"] {
        let [backend, saw, _] = client.fields(&format!("{proto} {ip_a} 8088"));
        assert_eq!(
            (backend.as_str(), saw.as_str()),
            ("a1", node_b_addr.as_str()),
            "{proto} without a manager"
        );
    }
    // The restarted manager reconciles from the store: the host port stays.
    restart(&mut c.a);
    assert!(
        c.a.log_has(&["NodePort datapath ready", "newly_attached=0"]),
        "the restarted manager did not adopt the NodePort programs; log:\n{}",
        std::fs::read_to_string(&c.a.log).unwrap_or_default()
    );
    // A full pass of the file source after the pool published its host ports.
    svc_touch(&c);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        metric(&metrics_a(&c), "eni_services_nodeport_frontends"),
        served,
        "the restarted manager serves the same per-packet frontends"
    );
    for proto in ["tcp", "udp"] {
        let [backend, saw, _] = client.fields(&format!("{proto} {ip_a} 8088"));
        assert_eq!(
            (backend.as_str(), saw.as_str()),
            ("a1", node_b_addr.as_str()),
            "{proto} after the restart"
        );
    }
    // The port is still a1's after the restart.
    let run = c.cni(
        Node::A,
        &CniEnv::add(
            &clash_id,
            &clash_ns.path(),
            "eth0",
            "K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=clash",
        ),
        &clash_conf,
    );
    assert!(run.err(109).contains(&a1.container));

    // DEL: the host port is gone from the maps when DEL answers.
    c.del_pod(&mut a1);
    assert_eq!(
        metric(&metrics_a(&c), "eni_services_nodeport_frontends"),
        baseline,
        "the host ports left the per-packet frontends"
    );
    let out = client.cmd(&format!("tcp {ip_a} 8088"));
    assert!(
        out.starts_with("ERR"),
        "the host port still answers after DEL: {out}"
    );
    // And the port is free for another pod.
    let run = c.cni(
        Node::A,
        &CniEnv::add(
            &clash_id,
            &clash_ns.path(),
            "eth0",
            "K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=clash",
        ),
        &clash_conf,
    );
    run.ok();
    let del = CniEnv {
        command: "DEL",
        container: Some(&clash_id),
        netns: Some(&clash_ns.path()),
        ifname: Some("eth0"),
        args: None,
    };
    c.cni(Node::A, &del, &clash_conf).ok();
}

/// Makes node A's file source see a change (a new, empty YAML file), so it reconciles.
fn svc_touch(c: &Cluster) {
    c.svc_a
        .as_ref()
        .expect("node A runs the Service datapath")
        .write("touch.yaml", "# nothing here\n");
}
