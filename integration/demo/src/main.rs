//! `eni-demo`: the whole system on one machine, narrated. An emulated Alibaba Cloud
//! (`mock-cloud`) whose two instances are network namespaces, an `eni-manager` on each, pods
//! as network namespaces wired by the real `eni-cni` binary, a Service from YAML through
//! the eBPF socket load balancer, a NetworkPolicy from YAML enforced in eBPF on the pod
//! links; then everything is removed. Root only. Run it with
//! `sudo scripts/demo.sh`, which installs and builds what it needs first.

#![allow(clippy::print_stdout, reason = "the demo narrates on stdout")]

#[path = "../../e2e/tests/common/mod.rs"]
#[allow(
    unused_macros,
    unused_imports,
    missing_debug_implementations,
    reason = "the e2e harness, shared: the demo uses part of it"
)]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use common::{Cluster, ClusterOpts, Node, Pod, SvcNode};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Every pod of namespace `e2e` (the harness's pods) selected, no ingress allowed.
const DENY_INGRESS: &str = "apiVersion: v1
kind: Namespace
metadata: { name: e2e }
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: deny-ingress, namespace: e2e }
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => return serve(&args[2]),
        Some("get") => return get(args[2].parse()?),
        Some(other) => bail!("unknown argument {other:?}; run eni-demo without arguments"),
        None => {}
    }
    if !common::is_root() {
        bail!("the demo needs root (network namespaces, eBPF); run: sudo scripts/demo.sh");
    }
    demo()
}

/// In a pod: answers every connection on :8080 with `<name> <client address>`.
fn serve(name: &str) -> anyhow::Result<()> {
    let l = TcpListener::bind(("0.0.0.0", 8080))?;
    println!("ready");
    std::io::stdout().flush()?;
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        let peer = c
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let _ = c.write_all(format!("{name} {peer}\n").as_bytes());
    }
    Ok(())
}

/// In a pod: one connection, prints the answer and the address `getpeername` shows.
fn get(target: SocketAddrV4) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&target.into(), Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut line = String::new();
    s.read_to_string(&mut line)?;
    println!("{} {}", line.trim(), s.peer_addr()?);
    Ok(())
}

struct Server(Child);

impl Server {
    fn start(pod: &Pod, name: &str) -> anyhow::Result<Server> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &pod.ns.name])
            .arg(std::env::current_exe()?)
            .args(["serve", name])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("the server in {name} did not start");
        }
        Ok(Server(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `get` from inside `pod`, in node A's Service cgroup when `svc` is given. Returns
/// (backend, address the backend saw, address getpeername shows).
fn request(
    pod: &Pod,
    svc: Option<&SvcNode>,
    target: SocketAddrV4,
) -> anyhow::Result<(String, String, String)> {
    let me = std::env::current_exe()?;
    let join = svc.map_or(String::new(), |s| format!("{} && ", s.join_cgroup()));
    let out = Command::new("sh")
        .args([
            "-c",
            &format!(
                "{join}exec ip netns exec {} \"$0\" get {target}",
                pod.ns.name
            ),
        ])
        .arg(me)
        .env("RUST_BACKTRACE", "0")
        .output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{}",
            err.lines()
                .next()
                .unwrap_or("no answer")
                .trim_start_matches("Error: ")
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    if f.len() != 3 {
        bail!("unexpected answer {text:?}");
    }
    Ok((f[0].into(), f[1].into(), f[2].into()))
}

fn service_yaml(backends: &[&Pod]) -> String {
    let endpoints: String = backends
        .iter()
        .map(|p| format!("  - addresses: [\"{}\"]\n", p.ip))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: demo }}\n\
         spec:\n  clusterIP: {CLUSTER_IP}\n  ports: [{{ name: http, port: 80, targetPort: 8080 }}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{ name: web-1, namespace: demo, labels: {{ kubernetes.io/service-name: web }} }}\n\
         addressType: IPv4\nports: [{{ name: http, port: 8080 }}]\nendpoints:\n{endpoints}"
    )
}

fn node_summary(c: &Cluster, node: Node) -> String {
    let st = c.manager(node).status();
    let enis: Vec<String> = st
        .pool
        .enis
        .iter()
        .map(|e| {
            format!(
                "{} ({}, table {})",
                e.eni_id,
                e.host_ifname.as_deref().unwrap_or("?"),
                e.device_index.map_or(0, |i| 1000 + i)
            )
        })
        .collect();
    format!(
        "{} idle / {} allocated address(es) on {} ENI(s): {}",
        st.pool.idle,
        st.pool.allocated,
        enis.len(),
        enis.join(", ")
    )
}

fn demo() -> anyhow::Result<()> {
    println!("eni-net demo: an emulated Alibaba Cloud (mock-cloud) whose two ECS instances are");
    println!("network namespaces on this machine, an eni-manager on each, pods as network");
    println!("namespaces wired by the real eni-cni binary. Nothing outside those namespaces is touched.\n");

    println!("[1/6] The cloud and the nodes");
    let started = Instant::now();
    let c = Cluster::start_opts(&ClusterOpts {
        services: true,
        policy: true,
        ..ClusterOpts::default()
    });
    println!(
        "  mock cloud: region cn-hangzhou, VPC 192.168.0.0/16, vSwitch 192.168.1.0/24; API and metadata at 100.100.100.200"
    );
    println!(
        "  both managers ready in {:.1} s (node metadata, instance type limits, a warm pool made)",
        started.elapsed().as_secs_f64()
    );
    println!("  node-a ({}): {}", c.ip_a, node_summary(&c, Node::A));
    println!("  node-b ({}): {}", c.ip_b, node_summary(&c, Node::B));

    println!(
        "\n[2/6] Pods (CNI ADD, veth mode: the pod's /32 from an ENI, egress through that ENI)"
    );
    let mut pods = Vec::new();
    for (name, node) in [("web-a", Node::A), ("web-b", Node::B), ("client", Node::A)] {
        let t = Instant::now();
        let pod = c.add_pod(node, "veth", &json!({}));
        let took = t.elapsed();
        let eni = c
            .manager(node)
            .ip_owner(pod.ip)
            .map_or("?".into(), |(eni, _)| eni);
        println!(
            "  {name:<7} on node-{}  {:<15} ENI {eni}  ADD took {} ms",
            node.tag(),
            pod.ip,
            took.as_millis()
        );
        pods.push((name, pod));
    }
    let _servers = [
        Server::start(&pods[0].1, "web-a")?,
        Server::start(&pods[1].1, "web-b")?,
    ];
    let (web_a, web_b, client) = (&pods[0].1, &pods[1].1, &pods[2].1);

    println!("\n[3/6] Pod to pod across nodes, VPC addresses end to end");
    let (who, saw, _) = request(client, None, SocketAddrV4::new(web_b.ip, 8080))?;
    println!(
        "  client -> {}:8080 answered by {who}, which saw the client as {saw} (no NAT)",
        web_b.ip
    );

    println!("\n[4/6] A Service from YAML through the eBPF socket load balancer on node-a");
    let svc = c
        .svc_a
        .as_ref()
        .context("node A runs the Service datapath")?;
    svc.write("web.yaml", &service_yaml(&[web_a, web_b]));
    println!(
        "  wrote Service web (ClusterIP {CLUSTER_IP}:80) and its EndpointSlice (web-a, web-b :8080) to {}",
        svc.dir.display()
    );
    let vip = SocketAddrV4::new(CLUSTER_IP, 80);
    let t = Instant::now();
    while request(client, Some(svc), vip).is_err() {
        if t.elapsed() > Duration::from_secs(15) {
            bail!(
                "the Service never answered; see the manager log {}",
                c.a.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "  the manager programmed it in {} ms (it polls the directory every second)",
        t.elapsed().as_millis()
    );
    let mut by: BTreeMap<String, u32> = BTreeMap::new();
    let mut peer_shown = String::new();
    for _ in 0..20 {
        let (who, saw, peer) = request(client, Some(svc), vip)?;
        if saw != client.ip.to_string() {
            bail!("{who} saw {saw}, not the client's address");
        }
        peer_shown = peer;
        *by.entry(who).or_default() += 1;
    }
    println!("  20 connections from the client pod to {vip}: {by:?}");
    println!(
        "  the backends saw the client's own address; getpeername() in the client shows {peer_shown}"
    );
    println!("  (connect() was rewritten in the kernel before any packet existed: no DNAT, no conntrack)");

    println!("\n[5/6] NetworkPolicy in eBPF on node-a's pod links (from YAML)");
    let pol = c.pol_a.as_ref().context("node A enforces NetworkPolicy")?;
    pol.write("deny.yaml", DENY_INGRESS);
    println!(
        "  wrote a NetworkPolicy selecting every pod of namespace e2e, allowing no ingress, to {}",
        pol.dir.display()
    );
    let direct_a = SocketAddrV4::new(web_a.ip, 8080);
    let t = Instant::now();
    while request(client, None, direct_a).is_ok() {
        if t.elapsed() > Duration::from_secs(15) {
            bail!(
                "the policy never took effect; see the manager log {}",
                c.a.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "  in force after {} ms (probes time out after 1 s): client -> web-a ({}) is dropped at web-a's link: {}",
        t.elapsed().as_millis(),
        web_a.ip,
        request(client, None, direct_a)
            .err()
            .map_or("answered (unexpected)".to_string(), |e| e.to_string())
    );
    let (who, _, _) = request(client, None, SocketAddrV4::new(web_b.ip, 8080))?;
    println!(
        "  client -> web-b still answered by {who}: node-b enforces nothing in this demo, and the reply to the client's own connection passes (stateful)"
    );
    std::fs::remove_file(pol.dir.join("deny.yaml"))?;
    let t = Instant::now();
    while request(client, None, direct_a).is_err() {
        if t.elapsed() > Duration::from_secs(15) {
            bail!("removing the policy did not reopen web-a");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "  policy file removed: web-a answers again after {} ms",
        t.elapsed().as_millis()
    );

    println!("\n[6/6] Cloud API calls the two managers made");
    let calls = c.mock.admin("calls");
    let actions: BTreeMap<String, u64> = calls["actions"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v["count"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    for (action, n) in &actions {
        println!("  {action:<28} {n}");
    }
    println!(
        "  total {} (ENIs are created with their addresses in one call; attaches are polled)",
        calls["total"]
    );

    println!(
        "\nCleaning up: CNI DEL of every pod, then the managers, the cloud and the namespaces"
    );
    for (name, pod) in &mut pods {
        let run = c.del_pod(pod);
        println!("  DEL {name}: {} ms", run.took.as_millis());
    }
    println!("  node-a: {}", node_summary(&c, Node::A));
    let state: Value = c.mock.state();
    let enis = state["enis"].as_array().map_or(0, Vec::len);
    println!(
        "  the cloud holds {enis} ENI(s), primaries included: the addresses went back to the warm pools, kept for the next pods"
    );
    drop(pods);
    drop(c);
    println!("done: every namespace, process and mount the demo made is gone.");
    Ok(())
}
