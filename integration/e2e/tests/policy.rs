//! NetworkPolicy through the whole stack: mock cloud + hypervisor, node A's `eni-manager`
//! with policy on (file source, a private bpffs), pods wired by `eni-cni` in veth mode, real
//! TCP between pod namespaces on both nodes.
//!
//! - A deny-all-ingress policy selecting pod `target` is in the directory before the pod
//!   exists. Its server listens from before ADD; a client pod on node A and one on node B
//!   connect in a loop to every address node A could give it, from before ADD until
//!   after: not one connection reaches the target, not even in its first moment, and the
//!   programs count the drops.
//! - An allow policy for the clients' labels lets both in; the node itself (not a
//!   client) stays out.
//! - DEL leaves no link pin and no map entry for the pod.
//!
//! Needs root: otherwise says SKIPPED and returns.

#![allow(clippy::print_stdout, reason = "the test reports what it measured")]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const PORT: u16 = 8080;

/// Accepts on 0.0.0.0:PORT (bound before the pod has an address), answers `hello <peer>`
/// and prints each peer on stdout.
const SERVER_PY: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(512)
print("ready", flush=True)
while True:
    c, a = s.accept()
    print("accepted " + a[0], flush=True)
    try: c.sendall(('hello %s\n' % a[0]).encode())
    except OSError: pass
    c.close()
"#;

/// Connects to every target in turn (20 ms timeout) until the file argv[1] exists; prints
/// `ok <ip>` for every connection that got the server's greeting.
const PROBER_PY: &str = r#"
import os, socket, sys
stop, port, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print("ready", flush=True)
n = 0
while not os.path.exists(stop):
    for t in targets:
        n += 1
        s = socket.socket(); s.settimeout(0.02)
        try:
            s.connect((t, port)); s.settimeout(1)
            if s.recv(64).startswith(b"hello"): print("ok " + t, flush=True)
        except OSError: pass
        finally: s.close()
print("probes %d" % n, flush=True)
"#;

/// One TCP connection with the greeting read, within 1 s.
const ONCE_PY: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
sys.stdout.write(s.recv(64).decode())
"#;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_in(
    ns: &str,
    script: &str,
    args: &[String],
) -> (Proc, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, python(), "-c", script])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start python3");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "{script} in {ns}");
    (Proc(child), out)
}

fn connects(from: &str, to: Ipv4Addr) -> bool {
    Command::new("ip")
        .args(["netns", "exec", from, python(), "-c", ONCE_PY])
        .arg(to.to_string())
        .arg(PORT.to_string())
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("hello")
        })
}

fn policies(pin_dir: &Path) -> Value {
    let out = Command::new(binary("enictl", "ENICTL_BIN"))
        .arg("--json")
        .arg("policies")
        .arg("--pin-dir")
        .arg(pin_dir)
        .output()
        .expect("run enictl");
    assert!(
        out.status.success(),
        "enictl policies: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("enictl policies --json")
}

fn entry(pin_dir: &Path, ip: Ipv4Addr) -> Option<Value> {
    policies(pin_dir)
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["ip"] == ip.to_string())
        .cloned()
}

const DENY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: { name: e2e }
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: deny-target, namespace: e2e }
spec:
  podSelector: { matchLabels: { app: target } }
  policyTypes: [Ingress]
---
apiVersion: v1
kind: Pod
metadata: { name: target, namespace: e2e, labels: { app: target } }
spec: { containers: [ { name: srv, ports: [ { name: http, containerPort: 8080 } ] } ] }
"#;

#[test]
fn a_denied_pod_is_closed_from_its_first_moment_then_allowed_clients_get_in_and_del_cleans_up() {
    if !is_root() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"SKIPPED: policy e2e needs root (namespaces, bpffs, tc programs)\n",
        );
        return;
    }
    let started = Instant::now();
    let c = Cluster::start_opts(&ClusterOpts {
        policy: true,
        ..ClusterOpts::default()
    });
    let pol = c.pol_a.as_ref().expect("policy on node A");
    pol.write("deny.yaml", DENY);

    let client_a = c.add_pod(Node::A, "veth", &json!({}));
    let client_b = c.add_pod(Node::B, "veth", &json!({}));
    // Node A's client got an open entry from its manager; node B enforces nothing.
    let e = entry(&pol.pin_dir(), client_a.ip).expect("client A has an entry");
    assert_eq!(e["ingress"], "open", "{e}");

    // Every address node A could give the next pod.
    let candidates: BTreeSet<Ipv4Addr> =
        c.a.status()
            .pool
            .enis
            .iter()
            .flat_map(|e| e.ips.iter())
            .filter(|i| i.container_id.is_none())
            .map(|i| i.ip)
            .collect();
    assert!(!candidates.is_empty(), "node A has idle addresses");

    // The target's namespace and server exist before ADD, as with a real runtime.
    let target_ns = Netns::create(&format!("pod-target-{}", std::process::id()));
    let (_server, mut server_out) = spawn_in(&target_ns.name, SERVER_PY, &[PORT.to_string()]);
    let stop = c.dir.path().join("stop-probing");
    let mut args = vec![stop.display().to_string(), PORT.to_string()];
    args.extend(candidates.iter().map(ToString::to_string));
    let (mut probe_a, out_a) = spawn_in(&client_a.ns.name, PROBER_PY, &args);
    let (mut probe_b, out_b) = spawn_in(&client_b.ns.name, PROBER_PY, &args);

    let container = format!("e2etarget{:08x}", std::process::id());
    let conf = c.netconf(Node::A, "veth", &json!({}));
    let add = c
        .cni(
            Node::A,
            &CniEnv::add(
                &container,
                &target_ns.path(),
                "eth0",
                "K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=target",
            ),
            &conf,
        )
        .ok();
    let result = add.json();
    let target_ip = pod_ip(&result);
    println!("target {target_ip} added in {:?}", add.took);
    assert!(
        candidates.contains(&target_ip),
        "the target got {target_ip}, which the probers did not aim at ({candidates:?})"
    );
    let host_if = result["interfaces"][0]["name"]
        .as_str()
        .expect("the host veth in the result")
        .to_string();
    let mut target = Pod {
        node: Node::A,
        netns: target_ns.path(),
        ns: target_ns,
        container,
        ifname: "eth0".into(),
        ip: target_ip,
        result,
        conf,
        deleted: false,
    };

    // Keep probing a while after ADD returned, then stop.
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&stop, "").unwrap();
    for (name, p, out) in [("A", &mut probe_a, out_a), ("B", &mut probe_b, out_b)] {
        let lines: Vec<String> = out.lines().map_while(Result::ok).collect();
        let _ = p.0.wait();
        let reached: Vec<&String> = lines.iter().filter(|l| l.starts_with("ok ")).collect();
        println!("prober on node {name}: {:?}", lines.last());
        assert!(
            !reached.iter().any(|l| **l == format!("ok {target_ip}")),
            "client on node {name} reached the denied target: {reached:?}"
        );
        assert!(
            lines.last().is_some_and(|l| l.starts_with("probes ")),
            "prober on node {name} ran to the end: {lines:?}"
        );
    }
    let e = entry(&pol.pin_dir(), target_ip).expect("the target has an entry");
    assert_eq!(e["ingress"], "isolated", "{e}");
    assert!(
        e["counters"]["drop_ingress"].as_u64().unwrap_or(0) > 0,
        "the program dropped the probes: {e}"
    );
    let links = pol.pin_dir().join("links");
    let pinned = |ifname: &str| {
        std::fs::read_dir(&links)
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .ends_with(&format!("-{ifname}"))
                })
            })
            .unwrap_or(false)
    };
    assert!(pinned(&host_if), "the programs are pinned on {host_if}");

    // Allow the clients (labels from Pod objects: node A's client by its name, node B's as
    // a remote pod with its address).
    let name_a =
        c.a.allocations()
            .into_iter()
            .find(|a| a.container_id == client_a.container)
            .and_then(|a| a.pod)
            .expect("client A's allocation names its pod")
            .name;
    pol.write(
        "allow.yaml",
        &format!(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{ name: allow-clients, namespace: e2e }}
spec:
  podSelector: {{ matchLabels: {{ app: target }} }}
  ingress: [ {{ from: [ {{ podSelector: {{ matchLabels: {{ role: client }} }} }} ], ports: [ {{ port: http }} ] }} ]
---
apiVersion: v1
kind: Pod
metadata: {{ name: {name_a}, namespace: e2e, labels: {{ role: client }} }}
---
apiVersion: v1
kind: Pod
metadata: {{ name: remote-client, namespace: e2e, labels: {{ role: client }} }}
status: {{ podIP: {ip_b} }}
"#,
            ip_b = client_b.ip
        ),
    );
    for (name, ns) in [("A", &client_a.ns.name), ("B", &client_b.ns.name)] {
        assert!(
            wait_for(Duration::from_secs(10), || connects(ns, target_ip)),
            "client on node {name} is let in by the allow policy"
        );
    }
    assert!(
        !connects(&c.node_a.name, target_ip),
        "node A itself is no client: still denied"
    );
    // The server's first two connections (both clients got in): nobody came before.
    let mut accepted = Vec::new();
    let mut line = String::new();
    while accepted.len() < 2 {
        line.clear();
        assert!(
            server_out.read_line(&mut line).unwrap() > 0,
            "the server ended"
        );
        accepted.push(line.trim().to_string());
    }
    println!("target accepted: {accepted:?}");
    assert!(
        accepted
            .iter()
            .all(|l| l == &format!("accepted {}", client_a.ip)
                || l == &format!("accepted {}", client_b.ip)),
        "only the clients ever reached the target: {accepted:?}"
    );

    // DEL: no attachment, no entry.
    c.del_pod(&mut target);
    assert!(!pinned(&host_if), "DEL removed the link pins of {host_if}");
    assert!(
        entry(&pol.pin_dir(), target_ip).is_none(),
        "DEL removed the map entry of {target_ip}"
    );
    // Idempotent.
    c.del_pod(&mut target);
    println!("policy e2e took {:?}", started.elapsed());
}
