//! Policy cost: what the eBPF NetworkPolicy programs on a pod's link cost the traffic to
//! that pod, with 0, 100 and 1,000 rules selecting it, against the same rules as iptables
//! (a conntrack accept for established flows, then a linear chain, as iptables-based
//! policy agents install them).
//!
//! Two namespaces joined by a veth: a "node" (`10.244.0.1`, the client) and a "pod"
//! (`10.244.0.2`, the servers). The policy programs sit on the node's end of the veth,
//! where `eni-cni` puts them in veth mode. Each rule set allows the client on the two
//! server ports and nothing else; the other rules allow decoy peers one port, so every
//! rule is in the pod's table and the client's rule comes last in the iptables chain. Before each measurement the bench checks that the rules are in force:
//! a SYN to a port no rule allows must go unanswered (dropped), not be refused.
//!
//! Two figures per rule count: short TCP connections per second (each one's first packet
//! goes through the rule lookup) and bulk TCP throughput (per-packet cost: conntrack).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use eni_bpf::policy as dp;
use eni_bpf::{LinkSide, PolicyDatapath};
use eni_policy::types::{Namespace, NetworkPolicy, Pod};
use eni_policy::{compile, PodRef, PodRules};
use serde_json::{json, Value};

use crate::common::Netns;
use crate::report::Report;
use crate::services::{iptables_restore, measure, Rate, ServerProc};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const RR_PORT: u16 = 8080;
const BULK_PORT: u16 = 9000;
/// A port no rule allows: the enforcement check.
const DENIED_PORT: u16 = 7;
const HOST_IF: &str = "bph0";

/// The bulk sink: reads and discards every connection until EOF.
pub fn bulk_server(port: u16) -> anyhow::Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port))?;
    println!("ready");
    std::io::stdout().flush()?;
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// The bulk source: one connection, writes for `duration`; prints `{"bytes":N,"mbit_s":R}`.
pub fn bulk_client(target: SocketAddrV4, duration: Duration) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&target.into(), Duration::from_secs(2))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let buf = vec![0x5au8; 1 << 16];
    let started = Instant::now();
    let mut bytes = 0u64;
    while started.elapsed() < duration {
        s.write_all(&buf)?;
        bytes += buf.len() as u64;
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "bytes": bytes, "mbit_s": bytes as f64 * 8.0 / wall / 1e6 })
    );
    Ok(())
}

/// Bulk throughput from `ns` to `target`, in Mbit/s.
fn bulk(ns: &Netns, target: SocketAddrV4, seconds: u64) -> anyhow::Result<f64> {
    let me = std::env::current_exe()?;
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&me)
        .args([
            "bulk-client",
            "--target",
            &target.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "the bulk client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bulk output {:?}", String::from_utf8_lossy(&out.stdout)))?;
    match v["mbit_s"].as_f64() {
        Some(r) if r > 0.0 => Ok(r),
        _ => bail!("no bulk throughput measured: {v}"),
    }
}

/// The bulk sink in the pod namespace, killed on drop.
struct BulkProc(std::process::Child);

impl BulkProc {
    fn start(ns: &Netns) -> anyhow::Result<BulkProc> {
        use std::io::BufRead;
        let me = std::env::current_exe()?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(me)
            .args(["bulk-server", "--port", &BULK_PORT.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("the bulk server did not start: {line:?}");
        }
        Ok(BulkProc(child))
    }
}

impl Drop for BulkProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One measured configuration's namespaces, veth and servers. Every configuration gets a
/// fresh pair: tens of thousands of short connections leave TIME_WAIT sockets (and, with
/// iptables, conntrack entries) that would slow the next configuration's run.
struct Pair {
    node: Netns,
    pod: Netns,
    _servers: (ServerProc, BulkProc),
}

impl Pair {
    fn new(tag: &str) -> anyhow::Result<Pair> {
        let pid = std::process::id();
        let node = Netns::create(&format!("bpol-{tag}-n-{pid}"));
        let pod = Netns::create(&format!("bpol-{tag}-p-{pid}"));
        node.ip(&[
            "link", "add", HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ]);
        node.ip(&["addr", "add", "10.244.0.1/24", "dev", HOST_IF]);
        node.ip(&["link", "set", HOST_IF, "up"]);
        pod.ip(&["addr", "add", "10.244.0.2/24", "dev", "eth0"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        let servers = (ServerProc::start(&pod)?, BulkProc::start(&pod)?);
        Ok(Pair {
            node,
            pod,
            _servers: servers,
        })
    }
}

/// A private bpffs with the policy maps; removed on drop.
struct Pins {
    bpffs: PathBuf,
    dp: Option<PolicyDatapath>,
}

impl Pins {
    fn new() -> anyhow::Result<Pins> {
        let bpffs =
            std::env::temp_dir().join(format!("eni-bench-pol-{}-bpffs", std::process::id()));
        std::fs::create_dir_all(&bpffs)?;
        let mut pins = Pins { bpffs, dp: None };
        if !Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&pins.bpffs)
            .status()?
            .success()
        {
            bail!("mounting a bpffs on {}", pins.bpffs.display());
        }
        pins.dp = Some(PolicyDatapath::load_or_adopt(pins.dir())?);
        Ok(pins)
    }

    fn dir(&self) -> PathBuf {
        self.bpffs.join("eni-net")
    }

    fn attach(&self, pair: &Pair) -> anyhow::Result<()> {
        dp::attach(
            self.dir(),
            pair.node.path(),
            HOST_IF,
            POD_IP,
            LinkSide::HostVeth,
        )?;
        Ok(())
    }

    fn detach(&self, pair: &Pair) -> anyhow::Result<()> {
        dp::detach(self.dir(), pair.node.path(), HOST_IF)?;
        Ok(())
    }

    fn write(&mut self, rules: &PodRules) -> anyhow::Result<()> {
        self.dp.as_mut().expect("loaded").write_pod(rules)?;
        Ok(())
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        self.dp = None;
        let _ = dp::unpin_policy(self.dir());
        let _ = std::fs::remove_dir_all(self.dir().join("links"));
        let _ = std::fs::remove_dir(self.dir());
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.bpffs);
    }
}

/// Decoy peer `i`: an address nobody sends from.
fn decoy(i: usize) -> Ipv4Addr {
    let n = u32::try_from(i).expect("rule index");
    Ipv4Addr::new(172, 16 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

/// A NetworkPolicy selecting the pod with `n` ingress rules: `n - 1` decoys, then the
/// client's, each allowing the two server ports.
fn policy_yaml(n: usize) -> String {
    let mut y = String::from(
        "metadata: {name: bench, namespace: bench}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n  ingress:\n",
    );
    for peer in (0..n.saturating_sub(1)).map(decoy) {
        y.push_str(&format!(
            "  - from: [{{ipBlock: {{cidr: {peer}/32}}}}]\n    ports: [{{port: {RR_PORT}}}]\n"
        ));
    }
    y.push_str(&format!(
        "  - from: [{{ipBlock: {{cidr: {NODE_IP}/32}}}}]\n    ports: [{{port: {RR_PORT}}}, {{port: {BULK_PORT}}}]\n"
    ));
    y
}

/// The pod's compiled rules for `n` rules (0: no policy selects it, it is open).
fn rules(n: usize) -> anyhow::Result<PodRules> {
    if n == 0 {
        return Ok(PodRules::open(POD_IP));
    }
    let pod: Pod = serde_yaml::from_str(&format!(
        "metadata: {{name: server, namespace: bench, labels: {{app: server}}}}\nstatus: {{podIP: {POD_IP}}}"
    ))?;
    let ns: Namespace = serde_yaml::from_str("metadata: {name: bench}")?;
    let pol: NetworkPolicy = serde_yaml::from_str(&policy_yaml(n))?;
    let c = compile(&[pol], &[pod], &[ns]);
    if !c.errors.is_empty() {
        bail!("the bench policy does not compile: {:?}", c.errors);
    }
    c.pods
        .get(&PodRef::new("bench", "server"))
        .cloned()
        .context("the bench pod is not in the compiled set")
}

/// The same rules as iptables in the pod's namespace.
fn iptables_rules(n: usize) -> String {
    let mut r = String::from("*filter\n:INPUT ACCEPT [0:0]\n:BENCH-POL - [0:0]\n");
    if n > 0 {
        r.push_str("-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
        r.push_str("-A INPUT -i lo -j ACCEPT\n-A INPUT -j BENCH-POL\n");
        // Native matches only: `-m multiport` goes through the xtables compatibility layer
        // of iptables-nft (Debian 12's iptables) and costs ~10 us per rule per new flow,
        // which would make the baseline look worse than a careful agent's rules.
        for peer in (0..n - 1).map(decoy) {
            r.push_str(&format!(
                "-A BENCH-POL -s {peer}/32 -p tcp --dport {RR_PORT} -j ACCEPT\n"
            ));
        }
        for port in [RR_PORT, BULK_PORT] {
            r.push_str(&format!(
                "-A BENCH-POL -s {NODE_IP}/32 -p tcp --dport {port} -j ACCEPT\n"
            ));
        }
        r.push_str("-A BENCH-POL -j DROP\n");
    }
    r.push_str("COMMIT\n");
    r
}

/// Whether a SYN from the node to `port` on the pod is dropped (no answer within the
/// timeout) rather than refused.
fn syn_dropped(node: &Netns, port: u16) -> anyhow::Result<bool> {
    let target = format!("{POD_IP}:{port}");
    let script = format!(
        "import socket,sys\ns=socket.socket()\ns.settimeout(0.5)\ntry:\n    s.connect(('{POD_IP}',{port}))\n    print('connected')\nexcept socket.timeout:\n    print('dropped')\nexcept OSError as e:\n    print('refused' if e.errno==111 else 'error %d' % e.errno)\n"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &node.name, crate::common::python(), "-c"])
        .arg(&script)
        .output()
        .with_context(|| format!("probing {target}"))?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match said.as_str() {
        "dropped" => Ok(true),
        "refused" | "connected" => Ok(false),
        other => bail!(
            "probing {target}: {other:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

struct Figures {
    rate: Rate,
    mbit_s: f64,
}

fn figures(pair: &Pair, seconds: u64) -> anyhow::Result<Figures> {
    // Unmeasured warm-up: first-use costs of the path.
    measure(&pair.node, None, SocketAddrV4::new(POD_IP, RR_PORT), 1)?;
    let rate = measure(
        &pair.node,
        None,
        SocketAddrV4::new(POD_IP, RR_PORT),
        seconds,
    )?;
    let mbit_s = bulk(&pair.node, SocketAddrV4::new(POD_IP, BULK_PORT), seconds)?;
    Ok(Figures { rate, mbit_s })
}

fn rows(report: &mut Report, what: &str, ours: &Figures, base_name: &str, base: &Figures) {
    report.add(
        &format!("{what}: connections/s"),
        "conn/s",
        ours.rate.per_s,
        base_name,
        base.rate.per_s,
        true,
    );
    report.add(
        &format!("{what}: connection p50"),
        "us",
        ours.rate.p50_us,
        base_name,
        base.rate.p50_us,
        false,
    );
    report.add(
        &format!("{what}: bulk TCP"),
        "Mbit/s",
        ours.mbit_s,
        base_name,
        base.mbit_s,
        true,
    );
}

/// The rule counts measured.
const COUNTS: [usize; 3] = [0, 100, 1000];

/// Runs the policy cost benchmark.
pub fn run(report: &mut Report, seconds: u64) -> anyhow::Result<()> {
    println!("\n== Policy cost: traffic to a pod with 0, 100 and 1,000 rules selecting it, {seconds} s per run ==");
    // No policy at all: the reference for the 0-rule row.
    let none = figures(&Pair::new("none")?, seconds)?;

    let mut pins = Pins::new()?;
    let mut ours = Vec::new();
    for n in COUNTS {
        let pair = Pair::new(&format!("e{n}"))?;
        let r = rules(n)?;
        let entries = match &r.ingress {
            eni_policy::DirectionRules::Open => 0,
            eni_policy::DirectionRules::Enforced(e) => e.len(),
        };
        pins.write(&r)?;
        pins.attach(&pair)?;
        let dropped = syn_dropped(&pair.node, DENIED_PORT)?;
        if dropped != (n > 0) {
            bail!("{n} rules: a SYN to a port no rule allows was dropped={dropped}");
        }
        println!("  eBPF policy, {n} rules ({entries} table entries): in force");
        ours.push((n, figures(&pair, seconds)?));
        pins.detach(&pair)?;
    }
    drop(pins);

    let mut ipt = Vec::new();
    for n in COUNTS {
        let pair = Pair::new(&format!("i{n}"))?;
        let took = iptables_restore(&pair.pod, &iptables_rules(n))?;
        let dropped = syn_dropped(&pair.node, DENIED_PORT)?;
        if dropped != (n > 0) {
            bail!("iptables, {n} rules: a SYN to a port no rule allows was dropped={dropped}");
        }
        println!("  iptables, {n} rules: in force (restored in {took:?})");
        ipt.push((n, figures(&pair, seconds)?));
    }

    for ((n, o), (_, i)) in ours.iter().zip(&ipt) {
        if *n == 0 {
            rows(
                report,
                "policy programs, pod selected by no policy",
                o,
                "no policy programs",
                &none,
            );
        } else {
            rows(
                report,
                &format!("eBPF policy, {n} rules"),
                o,
                &format!("iptables, {n} rules"),
                i,
            );
        }
    }
    // The target: the cost must not grow with the rule count.
    if let (Some((_, zero)), Some((n, most))) = (ours.first(), ours.last()) {
        rows(
            report,
            &format!("eBPF policy, {n} rules"),
            most,
            "eBPF policy, 0 rules (pod open)",
            zero,
        );
    }
    let flat = |f: &[(usize, Figures)]| {
        let first = f[0].1.rate.per_s;
        let last = f[f.len() - 1].1.rate.per_s;
        last / first
    };
    println!(
        "  connection rate at 1,000 rules relative to 0: {}",
        json!({ "eBPF": flat(&ours), "iptables": flat(&ipt) })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_policy_compiles_to_one_entry_per_rule() {
        for n in [1, 100, 1000] {
            let r = rules(n).expect("rules");
            let eni_policy::DirectionRules::Enforced(e) = &r.ingress else {
                panic!("{n} rules: ingress not enforced");
            };
            assert_eq!(e.len(), n, "{n} rules");
            assert!(r.ingress.permits(NODE_IP, 6, RR_PORT));
            assert!(r.ingress.permits(NODE_IP, 6, BULK_PORT));
            assert!(!r.ingress.permits(NODE_IP, 6, DENIED_PORT));
            assert!(!r.ingress.permits(Ipv4Addr::new(10, 244, 0, 9), 6, RR_PORT));
            assert!(!r.egress.is_enforced());
        }
        assert_eq!(rules(0).expect("open"), PodRules::open(POD_IP));
    }

    #[test]
    fn the_iptables_baseline_has_the_same_rules() {
        let r = iptables_rules(1000);
        // 999 decoys, the client on two ports, established flows, loopback.
        assert_eq!(r.matches("-j ACCEPT\n").count(), 999 + 2 + 2);
        assert!(r.contains(&format!("-s {NODE_IP}/32")));
        assert_eq!(iptables_rules(0).matches("-A ").count(), 0);
    }
}
