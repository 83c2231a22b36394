//! Service load balancing: short TCP connections (connect, one request, one response,
//! close) through a ClusterIP with the socket LB, straight to the backend, and through
//! kube-proxy-style iptables DNAT rules, with 1 and with N Services installed; and the time
//! to program N Services x 10 endpoints, and one endpoint change at that size, against
//! `iptables-restore` of the equivalent kube-proxy rules.
//!
//! Two namespaces with only `lo`: one for the socket LB (its client joins the bench's own
//! cgroup, where the hooks are attached), one for iptables (the rules live in that
//! namespace's tables only). Backends: one server listening on `0.0.0.0:8080`, reached as
//! `127.0.0.2..=11`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use eni_bpf::SocketLb;
use eni_manager::services::incremental::{service_id, DesiredCache};
use eni_manager::services::types::{EndpointSlice, Service};
use eni_manager::services::{desired, Reconciler};
use serde_json::{json, Value};

use crate::common::Netns;
use crate::report::{ms, Report};

const BACKENDS: usize = 10;
/// Endpoint changes measured one by one at the large size.
const CHANGES: usize = 200;
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// The server: one thread per connection, reads the request, answers, closes.
pub fn server(port: u16) -> anyhow::Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port))?;
    println!("ready");
    std::io::stdout().flush()?;
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut got = 0;
            while got < REQUEST.len() {
                match c.read(&mut buf[got..]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
            let _ = c.write_all(RESPONSE);
        });
    }
    Ok(())
}

/// The client: one connection after the other for `duration`; prints
/// `{"conns":N,"per_s":R,"p50_us":..,"p99_us":..,"errors":E}`.
pub fn client(target: SocketAddrV4, duration: Duration) -> anyhow::Result<()> {
    let mut lat = Vec::new();
    let mut errors = 0u64;
    let started = Instant::now();
    let mut buf = [0u8; 256];
    while started.elapsed() < duration {
        let t = Instant::now();
        let ok = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&target.into(), Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(REQUEST)?;
            let mut got = 0;
            while got < RESPONSE.len() {
                match s.read(&mut buf[got..])? {
                    0 => break,
                    n => got += n,
                }
            }
            if got == RESPONSE.len() {
                Ok(())
            } else {
                Err(std::io::Error::other("short response"))
            }
        })();
        match ok {
            Ok(()) => lat.push(t.elapsed()),
            Err(_) => errors += 1,
        }
    }
    let wall = started.elapsed();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        lat[rank.clamp(1, lat.len()) - 1].as_secs_f64() * 1e6
    };
    println!(
        "{}",
        json!({
            "conns": lat.len(), "per_s": lat.len() as f64 / wall.as_secs_f64(),
            "p50_us": pct(50.0), "p99_us": pct(99.0), "errors": errors
        })
    );
    Ok(())
}

/// A server process in a namespace, killed on drop.
pub(crate) struct ServerProc(Child);

impl ServerProc {
    pub(crate) fn start(ns: &Netns) -> anyhow::Result<ServerProc> {
        let me = std::env::current_exe()?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(me)
            .args(["svc-server", "--port", "8080"])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("the bench server did not start: {line:?}");
        }
        Ok(ServerProc(child))
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bench's cgroup and bpffs; removed on drop (the pins first, so the hooks detach).
struct Datapath {
    lb: Option<SocketLb>,
    bpffs: PathBuf,
    cgroup: PathBuf,
}

impl Datapath {
    fn new() -> anyhow::Result<Datapath> {
        let tag = format!("eni-bench-{}", std::process::id());
        let mut d = Datapath {
            lb: None,
            bpffs: std::env::temp_dir().join(format!("{tag}-bpffs")),
            cgroup: PathBuf::from("/sys/fs/cgroup/unified").join(&tag),
        };
        std::fs::create_dir_all(&d.bpffs)?;
        let ok = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&d.bpffs)
            .status()?;
        if !ok.success() {
            bail!("mounting a bpffs on {}", d.bpffs.display());
        }
        std::fs::create_dir(&d.cgroup)
            .with_context(|| format!("creating the cgroup {}", d.cgroup.display()))?;
        let mut lb = SocketLb::load_or_adopt(d.bpffs.join("eni-net"))?;
        lb.attach(&d.cgroup)?;
        d.lb = Some(lb);
        Ok(d)
    }

    fn lb(&mut self) -> &mut SocketLb {
        self.lb.as_mut().expect("loaded")
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.lb = None;
        let _ = eni_bpf::unpin_all(self.bpffs.join("eni-net"));
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.bpffs);
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Rate {
    pub(crate) per_s: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

/// Runs the client in `ns` (and in `cgroup`, when given) against `target`.
pub(crate) fn measure(
    ns: &Netns,
    cgroup: Option<&PathBuf>,
    target: SocketAddrV4,
    seconds: u64,
) -> anyhow::Result<Rate> {
    let me = std::env::current_exe()?;
    let join = cgroup.map_or(String::new(), |c| {
        format!("echo $$ > {}/cgroup.procs && ", c.display())
    });
    let script = format!(
        "{join}exec ip netns exec {} \"$0\" svc-client --target {target} --seconds {seconds}",
        ns.name
    );
    let out = Command::new("sh").args(["-c", &script]).arg(&me).output()?;
    if !out.status.success() {
        bail!(
            "the bench client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("client output {:?}", String::from_utf8_lossy(&out.stdout)))?;
    let errors = v["errors"].as_u64().unwrap_or(0);
    if errors > 0 || v["conns"].as_u64().unwrap_or(0) == 0 {
        bail!("connections to {target} failed: {v}");
    }
    Ok(Rate {
        per_s: v["per_s"].as_f64().unwrap_or(0.0),
        p50_us: v["p50_us"].as_f64().unwrap_or(0.0),
        p99_us: v["p99_us"].as_f64().unwrap_or(0.0),
    })
}

fn cluster_ip(i: usize) -> Ipv4Addr {
    // 10.96.0.1 .. 10.96.255.254, then on into 10.97 (a /12 holds a million).
    let n = 0x0a60_0001u32 + u32::try_from(i).expect("service index");
    Ipv4Addr::from(n)
}

/// Backend `j` of service `i`: service 0 has the real ones (127.0.0.2..), the others
/// addresses nobody connects to.
fn backend(i: usize, j: usize) -> Ipv4Addr {
    if i == 0 {
        Ipv4Addr::new(127, 0, 0, 2 + j as u8)
    } else {
        let n = u32::try_from(i).expect("service index");
        Ipv4Addr::new(10, 128 + j as u8, (n >> 8) as u8, n as u8)
    }
}

/// Service `i` and its EndpointSlice, as the API server would serve them; `changed`: its
/// first endpoint replaced.
fn objects(i: usize, changed: bool) -> (Service, EndpointSlice) {
    let name = format!("svc-{i}");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"clusterIP": cluster_ip(i).to_string(),
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    }))
    .expect("service");
    let endpoints: Vec<Value> = (0..BACKENDS)
        .map(|j| {
            let ip = if changed && j == 0 {
                Ipv4Addr::new(10, 250, 0, 1)
            } else {
                backend(i, j)
            };
            json!({"addresses": [ip.to_string()], "conditions": {"ready": true}})
        })
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-1"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .expect("slice");
    (svc, slice)
}

/// kube-proxy's iptables layout for these services: `KUBE-SERVICES` (one rule per service,
/// walked in order), a `KUBE-SVC-*` chain per service picking an endpoint with `statistic`
/// probabilities, a `KUBE-SEP-*` chain per endpoint doing the DNAT. Service 0 (the one the
/// client uses) is placed in the middle of `KUBE-SERVICES`: an average walk.
fn iptables_rules(n: usize, changed: Option<usize>) -> String {
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::from(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    let mut order: Vec<usize> = (1..n).collect();
    order.insert(order.len() / 2, 0);
    for &i in &order {
        let svc_chain = format!("KUBE-SVC-{i:012X}");
        chains.push_str(&format!(":{svc_chain} - [0:0]\n"));
        rules.push_str(&format!(
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"bench/svc-{i}:http cluster IP\" -m tcp --dport 80 -j {svc_chain}\n",
            cluster_ip(i)
        ));
        for j in 0..BACKENDS {
            let sep = format!("KUBE-SEP-{i:08X}{j:04X}");
            chains.push_str(&format!(":{sep} - [0:0]\n"));
            let left = BACKENDS - j;
            if left > 1 {
                rules.push_str(&format!(
                    "-A {svc_chain} -m statistic --mode random --probability {:.11} -j {sep}\n",
                    1.0 / left as f64
                ));
            } else {
                rules.push_str(&format!("-A {svc_chain} -j {sep}\n"));
            }
            let ip = if changed == Some(i) && j == 0 {
                Ipv4Addr::new(10, 250, 0, 1)
            } else {
                backend(i, j)
            };
            rules.push_str(&format!(
                "-A {sep} -p tcp -m tcp -j DNAT --to-destination {ip}:8080\n"
            ));
        }
    }
    chains.push_str(&rules);
    chains.push_str("COMMIT\n");
    chains
}

/// `iptables-restore` (the whole nat table, as a kube-proxy full sync) in `ns`; its time.
pub(crate) fn iptables_restore(ns: &Netns, rules: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "iptables-restore"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("iptables-restore (apt-get install iptables)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(started.elapsed())
}

fn rate_rows(report: &mut Report, what: &str, ours: Rate, base: Rate, base_name: &str) {
    report.add(
        &format!("{what}: connections/s"),
        "conn/s",
        ours.per_s,
        base_name,
        base.per_s,
        true,
    );
    report.add(
        &format!("{what}: latency p50"),
        "us",
        ours.p50_us,
        base_name,
        base.p50_us,
        false,
    );
    report.add(
        &format!("{what}: latency p99"),
        "us",
        ours.p99_us,
        base_name,
        base.p99_us,
        false,
    );
}

/// The Service benchmarks with `n` Services.
pub fn run(report: &mut Report, n: usize, seconds: u64) -> anyhow::Result<()> {
    println!("\n== Services: short TCP connections, {seconds} s per run; programming {n} Services x {BACKENDS} endpoints ==");
    let vip = SocketAddrV4::new(cluster_ip(0), 80);
    let direct = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 8080);

    let lb_ns = Netns::create(&format!("bsvc-{}", std::process::id()));
    let _lb_server = ServerProc::start(&lb_ns)?;
    let mut dp = Datapath::new()?;
    let ipt_ns = Netns::create(&format!("bipt-{}", std::process::id()));
    // A route for the ClusterIP range, so connect() gets to the OUTPUT hook (DNAT); the
    // source must be a real local address (by default lo would give 0.0.0.0).
    ipt_ns.ip(&[
        "route",
        "add",
        "10.96.0.0/12",
        "dev",
        "lo",
        "src",
        "127.0.0.1",
    ]);
    let _ipt_server = ServerProc::start(&ipt_ns)?;

    let all: Vec<(Service, EndpointSlice)> = (0..n).map(|i| objects(i, false)).collect();
    let (svcs, slices): (Vec<Service>, Vec<EndpointSlice>) = all.iter().cloned().unzip();

    // One reconciler across the passes, as the manager's sources keep one: it reads the
    // maps on its first pass and then diffs against what it applied.
    let mut rec = Reconciler::new();
    // 1 Service.
    rec.reconcile(dp.lb(), &desired(&svcs[..1], &slices[..1]))?;
    iptables_restore(&ipt_ns, &iptables_rules(1, None))?;
    // Unmeasured first rounds: page cache, first-use costs of each path.
    for (ns, cg, target) in [
        (&lb_ns, None, direct),
        (&lb_ns, Some(&dp.cgroup), vip),
        (&ipt_ns, None, vip),
    ] {
        measure(ns, cg, target, 1)?;
    }
    let straight = measure(&lb_ns, None, direct, seconds)?;
    let lb1 = measure(&lb_ns, Some(&dp.cgroup), vip, seconds)?;
    let ipt1 = measure(&ipt_ns, None, vip, seconds)?;
    rate_rows(
        report,
        "ClusterIP, 1 Service, socket LB",
        lb1,
        straight,
        "straight to the backend",
    );
    rate_rows(
        report,
        "ClusterIP, 1 Service, socket LB",
        lb1,
        ipt1,
        "iptables DNAT, 1 Service",
    );

    // N Services: programming time.
    let started = Instant::now();
    let want = desired(&svcs, &slices);
    let r = rec.reconcile(dp.lb(), &want)?;
    let ours_program = started.elapsed();
    if !r.errors.is_empty() {
        bail!(
            "programming {n} services: {:?}",
            &r.errors[..r.errors.len().min(3)]
        );
    }
    let rules = iptables_rules(n, None);
    let ipt_program = iptables_restore(&ipt_ns, &rules)?;
    println!(
        "  programmed {} frontends, {} map operations; iptables: {} lines",
        want.len(),
        r.map_ops,
        rules.lines().count()
    );
    report.add(
        &format!("program {n} Services x {BACKENDS} endpoints"),
        "ms",
        ms(ours_program),
        "iptables-restore, kube-proxy rules",
        ms(ipt_program),
        false,
    );

    // One endpoint change at that size, as the file source does it: the whole wanted table
    // recomputed, diffed against the applied one kept in memory.
    let k = n / 2;
    let mut slices = slices;
    slices[k] = objects(k, true).1;
    let started = Instant::now();
    let r = rec.reconcile(dp.lb(), &desired(&svcs, &slices))?;
    let ours_change = started.elapsed();
    if r.upserted != 1 {
        bail!("one endpoint change upserted {} services", r.upserted);
    }
    let ipt_change = iptables_restore(&ipt_ns, &iptables_rules(n, Some(k)))?;
    report.add(
        &format!("one endpoint change among {n} Services, full recompute"),
        "ms",
        ms(ours_change),
        "iptables-restore (full sync)",
        ms(ipt_change),
        false,
    );

    // The same as the Kubernetes source does it: only the changed Service's frontends
    // recomputed (DesiredCache) and written. Many changes, for a p99.
    let mut cache = DesiredCache::new(Default::default());
    for (svc, slice) in svcs.iter().zip(&slices) {
        cache.update(&service_id(svc), Some(svc), std::slice::from_ref(slice));
    }
    let mut per_change = Vec::with_capacity(CHANGES);
    for c in 0..CHANGES {
        let i = 1 + (c * 7919) % (n - 1).max(1);
        let flipped = slices[i].endpoints[0].addresses[0] == backend(i, 0).to_string();
        slices[i] = objects(i, flipped).1;
        let started = Instant::now();
        let touched = cache.update(
            &service_id(&svcs[i]),
            Some(&svcs[i]),
            std::slice::from_ref(&slices[i]),
        );
        let r = rec.reconcile_changes(dp.lb(), &cache.changes(&touched))?;
        per_change.push(started.elapsed());
        if r.upserted != 1 || !r.errors.is_empty() {
            bail!("an incremental endpoint change: {r:?}");
        }
    }
    per_change.sort_unstable();
    let pct =
        |p: f64| per_change[((p / 100.0 * CHANGES as f64).ceil() as usize).clamp(1, CHANGES) - 1];
    for (label, p) in [("p50", 50.0), ("p99", 99.0)] {
        report.add(
            &format!("one endpoint change among {n} Services, incremental {label}"),
            "ms",
            ms(pct(p)),
            "iptables-restore (full sync)",
            ms(ipt_change),
            false,
        );
    }

    // Connection rate with N Services installed; the straight run again first, so both
    // find the namespace in the same state (the earlier runs' TIME_WAIT sockets).
    let straight_n = measure(&lb_ns, None, direct, seconds)?;
    let lbn = measure(&lb_ns, Some(&dp.cgroup), vip, seconds)?;
    let iptn = measure(&ipt_ns, None, vip, seconds)?;
    let label = format!("ClusterIP, {n} Services, socket LB");
    rate_rows(report, &label, lbn, straight_n, "straight to the backend");
    rate_rows(
        report,
        &label,
        lbn,
        iptn,
        &format!("iptables DNAT, {n} Services"),
    );
    let flat: BTreeMap<&str, f64> = [
        ("socket LB", lbn.per_s / lb1.per_s),
        ("iptables", iptn.per_s / ipt1.per_s),
    ]
    .into();
    println!("  connection rate at {n} Services relative to 1 Service: {flat:?}");
    Ok(())
}
