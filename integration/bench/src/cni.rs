//! The node side: CNI ADD/DEL latency against the reference plugins, the cold-node burst
//! against the cloud's lower bounds, and memory footprints. Each builds the e2e harness's
//! cluster (mock cloud with its hypervisor, two node namespaces, a manager in each).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::common::{binary, Cluster, ClusterOpts, CniEnv, Netns, Node};
use crate::report::{ms, percentile, Report};

/// Where Debian's `containernetworking-plugins` puts the reference plugins.
const REF_PLUGINS: &str = "/usr/lib/cni";

fn pool(min_idle: usize, max_idle: usize) -> Value {
    json!({
        "min_idle": min_idle, "max_idle": max_idle, "release_cooldown_s": 3600,
        "batch_window_ms": 10, "allocate_timeout_ms": 60000
    })
}

/// Runs a CNI plugin binary inside `node_ns` as a runtime would; returns (time, code,
/// stdout, stderr). The plugin is started with `nsenter --net`, which only joins the
/// node's network namespace: `ip netns exec` also unshares the mount namespace and
/// remounts `/sys`, several milliseconds that a runtime on a real node does not spend and
/// that would hide the plugins' own cost (neither plugin reads `/sys/class/net`).
fn run_plugin(
    node_ns: &str,
    argv: &[&str],
    env: &CniEnv<'_>,
    cni_path: &str,
    conf: &Value,
) -> (Duration, i32, String, String) {
    let started = Instant::now();
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{node_ns}"))
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", env.command)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in [
        ("CNI_CONTAINERID", env.container),
        ("CNI_NETNS", env.netns),
        ("CNI_IFNAME", env.ifname),
        ("CNI_ARGS", env.args),
    ] {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let mut child = cmd.spawn().expect("spawn the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write the netconf");
    let out = child.wait_with_output().expect("wait for the plugin");
    (
        started.elapsed(),
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn env<'a>(command: &'a str, container: &'a str, netns: &'a str) -> CniEnv<'a> {
    CniEnv {
        command,
        container: Some(container),
        netns: Some(netns),
        ifname: Some("eth0"),
        args: Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p"),
    }
}

/// The reference chain a user could run instead: macvlan on the node's NIC, host-local IPAM.
fn reference_conf(dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "bench-ref", "type": "macvlan",
        "master": "eth0", "mode": "bridge",
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.250.0.0/16"}]],
            "dataDir": dir.join("host-local")
        }
    })
}

struct Sample {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

/// ADD then DEL of `pods` pods, one at a time, with `argv` (the plugin, via `nsenter`).
fn add_del_series(
    node_ns: &str,
    argv: &[&str],
    cni_path: &str,
    conf: &Value,
    pods: usize,
    tag: &str,
) -> anyhow::Result<Sample> {
    let mut nss = Vec::with_capacity(pods);
    let mut add = Vec::with_capacity(pods);
    for i in 0..pods {
        let ns = Netns::create(&format!("bp-{tag}-{}-{i}", std::process::id()));
        let container = format!("bench{tag}{i:05}");
        let path = ns.path();
        let (took, code, out, err) = run_plugin(
            node_ns,
            argv,
            &env("ADD", &container, &path),
            cni_path,
            conf,
        );
        if code != 0 {
            bail!("{tag} ADD of pod {i} failed ({code}): {out} {err}");
        }
        add.push(took);
        nss.push((ns, container));
    }
    let mut del = Vec::with_capacity(pods);
    for (ns, container) in &nss {
        let path = ns.path();
        let (took, code, out, err) =
            run_plugin(node_ns, argv, &env("DEL", container, &path), cni_path, conf);
        if code != 0 {
            bail!("{tag} DEL of {container} failed ({code}): {out} {err}");
        }
        del.push(took);
    }
    Ok(Sample { add, del })
}

/// CNI ADD and DEL latency, median and p99, eni-cni (veth mode, warm pool) against
/// macvlan + host-local, both run the same way in the same node namespace.
pub fn latency(report: &mut Report, pods: usize) -> anyhow::Result<()> {
    println!("\n== CNI ADD/DEL latency: {pods} pods, one at a time, warm pool ==");
    let per_eni = (pods + 10).div_ceil(7) + 1;
    let c = Cluster::start_opts(&ClusterOpts {
        pool: pool(pods + 10, pods + 40),
        eni_quantity: 8,
        ips_per_eni: u32::try_from(per_eni)?,
        ready_within: Duration::from_secs(180),
        vswitch_cidr: "192.168.0.0/20",
        ..ClusterOpts::default()
    });
    let node = c.node(Node::A).name.clone();
    let ours_bin = binary("eni-cni", "ENI_CNI_BIN");
    let ours_bin = ours_bin.to_string_lossy();
    let mut conf = c.netconf(Node::A, "veth", &json!({}));
    conf["log_level"] = json!("info");
    let refconf = reference_conf(c.dir.path());
    let macvlan = format!("{REF_PLUGINS}/macvlan");
    if !Path::new(&macvlan).is_file() {
        bail!("{macvlan} not found: apt-get install containernetworking-plugins");
    }
    // A few unmeasured rounds of each first (page cache, first-use costs).
    add_del_series(&node, &[&ours_bin], "/opt/cni/bin", &conf, 3, "warm")?;
    add_del_series(&node, &[&macvlan], REF_PLUGINS, &refconf, 3, "warmref")?;
    let mut ours = add_del_series(&node, &[&ours_bin], "/opt/cni/bin", &conf, pods, "ours")?;
    let mut base = add_del_series(&node, &[&macvlan], REF_PLUGINS, &refconf, pods, "ref")?;
    // What starting any program this way costs, part of both figures (`cat` reads the
    // netconf from stdin like a plugin, so the write cannot race its exit).
    let mut floor: Vec<Duration> = (0..pods)
        .map(|_| {
            run_plugin(
                &node,
                &["/bin/cat"],
                &env("VERSION", "floor", "/proc/self/ns/net"),
                "/opt/cni/bin",
                &json!({}),
            )
            .0
        })
        .collect();
    println!(
        "  floor: starting /bin/cat (reads the netconf, exits) the same way takes {:.2} ms (p50), {:.2} ms (p99); it is part of every figure below",
        ms(percentile(&mut floor, 50.0)),
        ms(percentile(&mut floor, 99.0))
    );
    let reference = "macvlan + host-local";
    for (what, o, b) in [
        ("ADD", &mut ours.add, &mut base.add),
        ("DEL", &mut ours.del, &mut base.del),
    ] {
        for p in [50.0, 99.0] {
            report.add(
                &format!("CNI {what} latency p{p}"),
                "ms",
                ms(percentile(o, p)),
                reference,
                ms(percentile(b, p)),
                false,
            );
        }
    }
    Ok(())
}

/// `mock-cloud` settings for the burst: attach 2-5 s, assign and the other mutations 200 ms,
/// every action rate limited.
pub fn realistic_cloud() -> (Value, Value) {
    let timing = json!({
        "attach_ms": [2000, 5000], "detach_ms": 1000, "delete_ms": 500, "metadata_lag_ms": 300
    });
    let mutation = json!({"per_second": 10, "per_minute": 300, "latency_ms": 200});
    let faults = json!({
        "default": {"per_second": 20, "latency_ms": 50},
        "actions": {
            "CreateNetworkInterface": mutation,
            "AttachNetworkInterface": mutation,
            "AssignPrivateIpAddresses": mutation
        }
    });
    (timing, faults)
}

fn mutations(calls: &Value) -> u64 {
    [
        "CreateNetworkInterface",
        "AttachNetworkInterface",
        "AssignPrivateIpAddresses",
    ]
    .iter()
    .map(|a| calls["actions"][a]["count"].as_u64().unwrap_or(0))
    .sum()
}

/// `pods` CNI ADDs at once on a node whose pool is empty; the time until every one has its
/// address and the cloud calls made, against the lower bounds the cloud's latencies imply.
pub fn burst(report: &mut Report, pods: usize) -> anyhow::Result<()> {
    println!("\n== Cold-node burst: {pods} pods at once, empty pool, attach 2-5 s, mutations 200 ms and 10/s ==");
    let (timing, faults) = realistic_cloud();
    let ips_per_eni = 20u32;
    let c = Cluster::start_opts(&ClusterOpts {
        pool: pool(0, 10),
        eni_quantity: 8,
        ips_per_eni,
        timing,
        faults,
        ready_within: Duration::from_secs(60),
        vswitch_cidr: "192.168.0.0/20",
        ..ClusterOpts::default()
    });
    let conf = c.netconf(Node::A, "veth", &json!({"timeout_ms": 60000}));
    let before = c.mock.admin("calls");
    let nss: Vec<Netns> = (0..pods)
        .map(|i| Netns::create(&format!("bb-{}-{i}", std::process::id())))
        .collect();
    let containers: Vec<String> = (0..pods).map(|i| format!("burst{i:05}")).collect();
    let paths: Vec<String> = nss.iter().map(Netns::path).collect();
    let started = Instant::now();
    let children: Vec<_> = (0..pods)
        .map(|i| c.cni_spawn(Node::A, &env("ADD", &containers[i], &paths[i]), &conf))
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().context("wait for eni-cni")?;
        if !out.status.success() {
            bail!(
                "burst ADD {i} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let wall = started.elapsed();
    let after = c.mock.admin("calls");
    let calls = mutations(&after) - mutations(&before);
    let total = after["total"].as_u64().unwrap_or(0) - before["total"].as_u64().unwrap_or(0);
    // Lower bounds: ENIs enough for the pods, each created with its addresses (one create,
    // one attach); the creates fit in one rate-limit burst, so the fastest possible is one
    // create, one attach call and the shortest attach.
    let enis = pods.div_ceil(ips_per_eni as usize - 1) as u64;
    let bound_ms = 200.0 + 200.0 + 2000.0;
    let per_action: Vec<String> = [
        "CreateNetworkInterface",
        "AttachNetworkInterface",
        "AssignPrivateIpAddresses",
    ]
    .iter()
    .map(|a| {
        let n = |v: &Value| v["actions"][a]["count"].as_u64().unwrap_or(0);
        format!("{a} {}", n(&after) - n(&before))
    })
    .collect();
    println!(
        "  {pods} pods: {wall:?}; mutating calls {calls} ({}), all calls {total}",
        per_action.join(", ")
    );
    report.add(
        &format!("cold burst: {pods} pods addressed (wall)"),
        "ms",
        ms(wall),
        "lower bound: create + attach + 2 s",
        bound_ms,
        false,
    );
    report.add(
        &format!("cold burst: {pods} pods, mutating cloud calls"),
        "calls",
        calls as f64,
        "lower bound: create + attach per ENI",
        (2 * enis) as f64,
        false,
    );
    Ok(())
}

/// In the child: runs `argv`, passes its stdin/stdout through, then prints the peak RSS of
/// it (KiB) on stderr as `eni-bench-peak-rss-kib N`. The only child of this process, so
/// `RUSAGE_CHILDREN` is exactly its figure (with `ip netns exec`, which execs into the plugin:
/// the figure is the larger of the two).
pub fn peak_rss_child(argv: &[String]) -> anyhow::Result<()> {
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .with_context(|| format!("running {argv:?}"))?;
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    eprintln!("eni-bench-peak-rss-kib {}", usage.max_rss());
    std::process::exit(status.code().unwrap_or(1));
}

fn peak_rss(
    node_ns: &str,
    plugin: &str,
    env: &CniEnv<'_>,
    cni_path: &str,
    conf: &Value,
) -> anyhow::Result<f64> {
    let me = std::env::current_exe()?;
    let me = me.to_string_lossy();
    let argv = ["peak-rss", "--", "ip", "netns", "exec", node_ns, plugin];
    let mut cmd = Command::new(&*me);
    cmd.args(argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", env.command)
        .env("CNI_PATH", cni_path)
        .env("CNI_CONTAINERID", env.container.unwrap_or_default())
        .env("CNI_NETNS", env.netns.unwrap_or_default())
        .env("CNI_IFNAME", env.ifname.unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{plugin} {} failed: {err}", env.command);
    }
    err.lines()
        .find_map(|l| l.strip_prefix("eni-bench-peak-rss-kib "))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .with_context(|| format!("no peak RSS line in {err}"))
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .context("no VmRSS")
}

/// The manager's RSS with `pods` pods against itself before them, and the CNI binary's peak
/// RSS for one ADD against the reference plugins'.
pub fn footprint(report: &mut Report, pods: usize) -> anyhow::Result<()> {
    println!("\n== Footprint: manager RSS with {pods} pods, CNI peak RSS ==");
    let per_eni = (pods + 10).div_ceil(9) + 1;
    let c = Cluster::start_opts(&ClusterOpts {
        pool: pool(10, 40),
        eni_quantity: 10,
        ips_per_eni: u32::try_from(per_eni)?,
        ready_within: Duration::from_secs(120),
        vswitch_cidr: "192.168.0.0/20",
        ..ClusterOpts::default()
    });
    let node = c.node(Node::A).name.clone();
    let mut conf = c.netconf(Node::A, "veth", &json!({"timeout_ms": 60000}));
    conf["log_level"] = json!("info");
    let idle_rss = rss_mib(c.a.pid())?;
    let ours_bin = binary("eni-cni", "ENI_CNI_BIN");
    let ours_bin = ours_bin.to_string_lossy().into_owned();
    // One ADD measured for peak RSS; the rest plain.
    let first = Netns::create(&format!("bf-{}-first", std::process::id()));
    let first_path = first.path();
    let ours_peak = peak_rss(
        &node,
        &ours_bin,
        &env("ADD", "footprint00000", &first_path),
        "/opt/cni/bin",
        &conf,
    )?;
    let mut nss = vec![first];
    for i in 1..pods {
        let ns = Netns::create(&format!("bf-{}-{i}", std::process::id()));
        let path = ns.path();
        let (_, code, _, err) = run_plugin(
            &node,
            &[&ours_bin],
            &env("ADD", &format!("footprint{i:05}"), &path),
            "/opt/cni/bin",
            &conf,
        );
        if code != 0 {
            bail!("ADD {i} failed: {err}");
        }
        nss.push(ns);
    }
    c.a.wait_settled(10);
    let busy_rss = rss_mib(c.a.pid())?;
    let refconf = reference_conf(c.dir.path());
    let ref_ns = Netns::create(&format!("bf-{}-ref", std::process::id()));
    let ref_path = ref_ns.path();
    let macvlan = format!("{REF_PLUGINS}/macvlan");
    let ref_peak = peak_rss(
        &node,
        &macvlan,
        &env("ADD", "footprintref", &ref_path),
        REF_PLUGINS,
        &refconf,
    )?;
    report.add(
        &format!("eni-manager RSS with {pods} pods"),
        "MiB",
        busy_rss,
        "the same manager before the pods",
        idle_rss,
        false,
    );
    report.add(
        "CNI ADD peak RSS (eni-cni)",
        "MiB",
        ours_peak,
        "macvlan (host-local runs apart)",
        ref_peak,
        false,
    );
    Ok(())
}
