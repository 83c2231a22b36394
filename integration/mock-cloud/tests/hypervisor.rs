//! The hypervisor against the real kernel: node namespaces, the VPC namespace, veth pairs,
//! bridges, and TCP between them. Needs root; without it each test prints
//! `SKIPPED: needs root` and passes.
//!
//! Every namespace is made here, named with the test's tag and the process id, and deleted
//! by a guard even when a test fails. Traffic only flows between these namespaces.
//! Connectivity is checked with TCP from threads that entered a namespace (`setns`), so no
//! `ping` or other tool is needed besides iproute2's `ip`.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use mock_cloud::hypervisor::{Hypervisor, HypervisorError, NicSpec};
use mock_cloud::world::{HypervisorConfig, VSwitch};
use nix::sched::CloneFlags;
use serde_json::Value;

const API: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

macro_rules! require_root {
    () => {
        if !is_root() {
            std::io::Write::write_all(
                &mut std::io::stderr(),
                b"SKIPPED: needs root (the hypervisor makes network namespaces and links)\n",
            )
            .ok();
            return Ok(());
        }
    };
}

fn ip_bin() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip")
}

/// Runs `ip args...`; its stdout, or an error with its stderr.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new(ip_bin())
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n ns -j addr show [dev]`, parsed.
fn addrs(ns: &str) -> Result<Vec<Value>> {
    let out = ip(&["-n", ns, "-j", "addr", "show"])?;
    Ok(serde_json::from_str(&out)?)
}

/// `ip -n ns -j link show`, parsed (it has the aliases that `addr show` lacks).
fn link_list(ns: &str) -> Result<Vec<Value>> {
    let out = ip(&["-n", ns, "-j", "link", "show"])?;
    Ok(serde_json::from_str(&out)?)
}

/// A link of a namespace, with its addresses (`ip -j addr show` shape), if it exists.
fn link(ns: &str, name: &str) -> Result<Option<Value>> {
    Ok(addrs(ns)?.into_iter().find(|l| l["ifname"] == name))
}

fn ipv4s(link: &Value) -> Vec<String> {
    link["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["family"] == "inet")
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap_or(""), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

fn is_up(link: &Value) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"))
}

fn mac(link: &Value) -> &str {
    link["address"].as_str().unwrap_or("")
}

/// Runs `f` on a thread that entered the network namespace `ns` (a name or a path).
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = if ns.contains('/') {
        ns.to_string()
    } else {
        format!("/var/run/netns/{ns}")
    };
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    let file = &file;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            nix::sched::setns(file, CloneFlags::CLONE_NEWNET).context("setns")?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn read_in_ns(ns: &str, file: &str) -> Result<String> {
    Ok(in_ns(ns, || std::fs::read_to_string(file))??
        .trim()
        .to_string())
}

fn write_in_ns(ns: &str, file: &str, value: &str) -> Result<()> {
    in_ns(ns, || std::fs::write(file, value))?.with_context(|| format!("writing {file} in {ns}"))
}

/// Connects from `from_ns` to `to` and answers the peer address `listener` saw.
fn tcp_probe(from_ns: &str, listener: &TcpListener, to: SocketAddrV4) -> Result<Ipv4Addr> {
    let stream: TcpStream = in_ns(from_ns, move || -> Result<TcpStream> {
        let mut last = None;
        for _ in 0..10 {
            match TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(1)) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        Err(anyhow::anyhow!("connect to {to}: {last:?}"))
    })??;
    let source = match stream.local_addr()? {
        SocketAddr::V4(a) => *a.ip(),
        other => bail!("unexpected local address {other}"),
    };
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match listener.accept() {
            Ok((_conn, SocketAddr::V4(peer))) => {
                ensure!(
                    *peer.ip() == source,
                    "listener saw {peer}, the client bound {source}"
                );
                return Ok(*peer.ip());
            }
            Ok((_conn, other)) => bail!("unexpected peer {other}"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context(format!("accept for {to}")),
        }
    }
}

/// A TCP listener on 0.0.0.0 (ephemeral port) inside `ns`.
fn listen_in(ns: &str) -> Result<(TcpListener, u16)> {
    let l = in_ns(ns, || TcpListener::bind("0.0.0.0:0"))??;
    let port = l.local_addr()?.port();
    Ok((l, port))
}

/// Progress on stderr (shown with `--nocapture` or when a test fails).
fn step(t0: &Instant, what: &str) {
    eprintln!("[{:>7.3}s] {what}", t0.elapsed().as_secs_f64());
}

/// Namespaces and processes of one test, removed on drop whatever happened.
#[derive(Default)]
struct Lab {
    netns: Vec<String>,
    children: Vec<Child>,
}

impl Lab {
    /// A fresh namespace `name` with lo up.
    fn netns(&mut self, name: &str) -> Result<String> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        self.netns.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(name.to_string())
    }

    /// Deleted on drop, if it exists then (the VPC namespace of a test).
    fn remember(&mut self, name: &str) {
        self.netns.push(name.to_string());
    }

    /// A process sleeping inside `ns`: its /proc/<pid>/ns/net is a path naming `ns`.
    fn sleeper(&mut self, ns: &str) -> Result<String> {
        let child = Command::new(ip_bin())
            .args(["netns", "exec", ns, "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()?;
        let path = format!("/proc/{}/ns/net", child.id());
        self.children.push(child);
        // `ip netns exec` enters the namespace, then execs sleep: wait for the former.
        let want = std::fs::metadata(format!("/var/run/netns/{ns}"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            use std::os::unix::fs::MetadataExt;
            if let Ok(m) = std::fs::metadata(&path) {
                if m.ino() == want.ino() && m.dev() == want.dev() {
                    return Ok(path);
                }
            }
            ensure!(Instant::now() < deadline, "{path} never entered {ns}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.netns.iter().rev() {
            if Path::new("/var/run/netns").join(ns).exists() {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
}

fn names(tag: &str) -> (String, String, String, String) {
    let pid = std::process::id();
    (
        format!("hv{tag}-vpc-{pid}"),
        format!("hv{tag}-a-{pid}"),
        format!("hv{tag}-b-{pid}"),
        format!("hv{tag}-pod-{pid}"),
    )
}

fn vswitches() -> Vec<VSwitch> {
    vec![
        VSwitch {
            id: "vsw-t1".into(),
            zone: "z".into(),
            cidr: "192.168.1.0/24".parse().expect("cidr"),
        },
        VSwitch {
            id: "vsw-t2".into(),
            zone: "z".into(),
            cidr: "192.168.2.0/24".parse().expect("cidr"),
        },
    ]
}

fn hypervisor(vpc: &str) -> Hypervisor {
    let cfg = HypervisorConfig {
        vpc_netns: Some(vpc.to_string()),
        api_address: API,
        mtu: 1500,
    };
    Hypervisor::new(&cfg, &vswitches())
}

fn nic(eni: &str, mac: &str, vsw: usize, primary_ip: Option<Ipv4Addr>) -> NicSpec {
    let v = &vswitches()[vsw];
    NicSpec {
        eni_id: eni.to_string(),
        mac: mac.to_string(),
        vswitch_id: v.id.clone(),
        vswitch_cidr: v.cidr,
        gateway: v.gateway(),
        primary_ip,
    }
}

const A_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const B_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 10);
const SEC_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 20);

fn check_primary(ns: &str, mac_want: &str, cidr: &str, gateway: &str) -> Result<()> {
    let eth0 = link(ns, "eth0")?.with_context(|| format!("no eth0 in {ns}"))?;
    ensure!(mac(&eth0) == mac_want, "eth0 MAC {}", mac(&eth0));
    ensure!(is_up(&eth0), "eth0 is down: {eth0}");
    ensure!(eth0["mtu"] == 1500, "eth0 mtu {}", eth0["mtu"]);
    ensure!(ipv4s(&eth0) == [cidr], "eth0 addresses {:?}", ipv4s(&eth0));
    let routes = ip(&["-n", ns, "route", "show", "default"])?;
    ensure!(
        routes.contains(&format!("default via {gateway} dev eth0")),
        "default route in {ns}: {routes}"
    );
    Ok(())
}

#[test]
fn hypervisor_wires_nodes_through_the_vpc() -> Result<()> {
    require_root!();
    let t0 = Instant::now();
    let mut lab = Lab::default();
    let (vpc, a, b, pod) = names("e2e");
    lab.remember(&vpc);
    let a = lab.netns(&a)?;
    let b = lab.netns(&b)?;
    let pod = lab.netns(&pod)?;
    let b_path = lab.sleeper(&b)?;

    let hv = hypervisor(&vpc);
    assert_eq!(hv.vpc_netns(), vpc);
    ensure!(
        !Path::new("/var/run/netns").join(&vpc).exists(),
        "nothing may touch the kernel before the first bind"
    );
    ensure!(!hv.is_bound("i-a"));

    // Bind A by name and B by a /proc path.
    step(&t0, "bind");
    let a0 = nic("eni-a0", "00:16:3e:00:0a:00", 0, Some(A_IP));
    let b0 = nic("eni-b0", "00:16:3e:00:0b:00", 1, Some(B_IP));
    hv.bind("i-a", &a, &a0)?;
    hv.bind("i-b", &b_path, &b0)?;
    ensure!(hv.is_bound("i-a") && hv.is_bound("i-b"));
    assert_eq!(hv.netns_of("i-a").as_deref(), Some(a.as_str()));
    assert_eq!(hv.netns_of("i-b").as_deref(), Some(b_path.as_str()));
    assert_eq!(hv.netns_of("i-none"), None);

    // The VPC namespace: bridges with gateways, the API address, forwarding.
    step(&t0, "vpc namespace");
    let br1 = link(&vpc, "br-vsw-t1")?.context("no br-vsw-t1")?;
    ensure!(is_up(&br1) && ipv4s(&br1) == ["192.168.1.253/24"], "{br1}");
    let br2 = link(&vpc, "br-vsw-t2")?.context("no br-vsw-t2")?;
    ensure!(is_up(&br2) && ipv4s(&br2) == ["192.168.2.253/24"], "{br2}");
    let lo = link(&vpc, "lo")?.context("no lo")?;
    ensure!(is_up(&lo), "lo down");
    ensure!(
        ipv4s(&lo).contains(&"100.100.100.200/32".to_string()),
        "{lo}"
    );
    assert_eq!(read_in_ns(&vpc, "/proc/sys/net/ipv4/ip_forward")?, "1");

    // The primaries, configured as DHCP would.
    step(&t0, "primaries");
    check_primary(&a, "00:16:3e:00:0a:00", "192.168.1.10/24", "192.168.1.253")?;
    check_primary(&b, "00:16:3e:00:0b:00", "192.168.2.10/24", "192.168.2.253")?;
    assert_eq!(
        hv.links("i-a").into_iter().collect::<Vec<_>>(),
        [("eni-a0".to_string(), "eth0".to_string())]
    );

    // Binding again: a no-op for the same namespace, under any of its names.
    step(&t0, "bind again");
    hv.bind("i-a", &a, &a0)?;
    hv.bind("i-a", &format!("/var/run/netns/{a}"), &a0)?;
    hv.bind("i-b", &b, &b0)?;
    match hv.bind("i-a", &b, &a0) {
        Err(HypervisorError::AlreadyBound { .. }) => {}
        other => bail!("binding i-a to another namespace: {other:?}"),
    }
    ensure!(link(&a, "eth1")?.is_none(), "a second bind made a link");

    // Across vSwitches, through the VPC router, both ways.
    step(&t0, "cross-vswitch tcp");
    let (lb, pb) = listen_in(&b)?;
    assert_eq!(tcp_probe(&a, &lb, SocketAddrV4::new(B_IP, pb))?, A_IP);
    let (la, pa) = listen_in(&a)?;
    assert_eq!(tcp_probe(&b, &la, SocketAddrV4::new(A_IP, pa))?, B_IP);

    // A secondary ENI: eth1, its MAC, down, no address; the VPC end on vSwitch 1's bridge.
    step(&t0, "plug");
    let a1 = nic("eni-a1", "00:16:3e:00:0a:01", 0, None);
    assert_eq!(hv.plug("i-a", &a1)?, "eth1");
    let eth1 = link(&a, "eth1")?.context("no eth1 after plug")?;
    ensure!(mac(&eth1) == "00:16:3e:00:0a:01", "{eth1}");
    ensure!(!is_up(&eth1), "eth1 must be left down: {eth1}");
    ensure!(ipv4s(&eth1).is_empty(), "eth1 must have no address: {eth1}");
    ensure!(eth1["mtu"] == 1500, "{eth1}");
    let vpc_end = link_list(&vpc)?
        .into_iter()
        .find(|l| {
            l["ifalias"]
                .as_str()
                .is_some_and(|s| s.contains("eni=eni-a1"))
        })
        .context("no VPC end for eni-a1")?;
    ensure!(
        vpc_end["master"] == "br-vsw-t1" && is_up(&vpc_end),
        "{vpc_end}"
    );
    ensure!(vpc_end["ifname"].as_str().is_some_and(|n| n.len() <= 15));

    // Idempotent; refused for another instance or an unbound one.
    step(&t0, "plug again");
    assert_eq!(hv.plug("i-a", &a1)?, "eth1");
    ensure!(link(&a, "eth2")?.is_none(), "a second plug made a link");
    match hv.plug("i-b", &a1) {
        Err(HypervisorError::PluggedElsewhere { .. }) => {}
        other => bail!("plugging eni-a1 into i-b: {other:?}"),
    }
    match hv.plug("i-unbound", &nic("eni-x", "00:16:3e:00:0f:01", 0, None)) {
        Err(HypervisorError::NotBound { .. }) => {}
        other => bail!("plugging into an unbound instance: {other:?}"),
    }

    // Configured by hand, as the node would, it answers from the other vSwitch.
    // Two NICs of one node in one subnet: like a real node agent, answer ARP only on the
    // NIC that holds the address, or the VPC router may learn eth0's address at eth1's MAC
    // (ARP flux) and lose it for seconds once eth1 moves away.
    step(&t0, "secondary in node");
    write_in_ns(&a, "/proc/sys/net/ipv4/conf/all/arp_ignore", "1")?;
    write_in_ns(&a, "/proc/sys/net/ipv4/conf/all/arp_announce", "2")?;
    ip(&["-n", &a, "addr", "add", "192.168.1.20/24", "dev", "eth1"])?;
    ip(&["-n", &a, "link", "set", "eth1", "up"])?;
    assert_eq!(tcp_probe(&b, &la, SocketAddrV4::new(SEC_IP, pa))?, B_IP);

    // Moved into a pod namespace (where only this link leads), it still carries traffic.
    step(&t0, "secondary in pod");
    ip(&["-n", &a, "link", "set", "eth1", "netns", &pod])?;
    ip(&["-n", &pod, "addr", "add", "192.168.1.20/24", "dev", "eth1"])?;
    ip(&["-n", &pod, "link", "set", "eth1", "up"])?;
    ip(&[
        "-n",
        &pod,
        "route",
        "add",
        "default",
        "via",
        "192.168.1.253",
    ])?;
    let (lp, pp) = listen_in(&pod)?;
    assert_eq!(tcp_probe(&b, &lp, SocketAddrV4::new(SEC_IP, pp))?, B_IP);
    assert_eq!(
        hv.links("i-a").get("eni-a1").map(String::as_str),
        Some("eth1")
    );

    // The next ENI does not take the name of one that moved away.
    step(&t0, "next name");
    let a2 = nic("eni-a2", "00:16:3e:00:0a:02", 1, None);
    assert_eq!(hv.plug("i-a", &a2)?, "eth2");
    let vpc_end2 = link_list(&vpc)?
        .into_iter()
        .find(|l| {
            l["ifalias"]
                .as_str()
                .is_some_and(|s| s.contains("eni=eni-a2"))
        })
        .context("no VPC end for eni-a2")?;
    ensure!(vpc_end2["master"] == "br-vsw-t2", "{vpc_end2}");

    // Unplug removes the pair wherever the node end is; again is fine.
    step(&t0, "unplug");
    hv.unplug("eni-a1")?;
    ensure!(
        link(&pod, "eth1")?.is_none(),
        "eth1 survived unplug in the pod"
    );
    ensure!(!hv.links("i-a").contains_key("eni-a1"));
    hv.unplug("eni-a1")?;
    hv.unplug("eni-never-plugged")?;
    hv.unplug("eni-a2")?;
    ensure!(link(&a, "eth2")?.is_none(), "eth2 survived unplug");
    assert_eq!(hv.links("i-a").len(), 1);

    // The API listener in the VPC namespace: nodes reach it at the API address, and it sees
    // their primary addresses.
    step(&t0, "api listener");
    let api = hv.listen_in_vpc(0)?;
    let api_port = api.local_addr()?.port();
    assert_eq!(api.local_addr()?.ip().to_string(), API.to_string());
    assert_eq!(tcp_probe(&a, &api, SocketAddrV4::new(API, api_port))?, A_IP);
    assert_eq!(tcp_probe(&b, &api, SocketAddrV4::new(API, api_port))?, B_IP);
    // Shutdown: the VPC namespace and every link are gone (even with the listener open).
    step(&t0, "shutdown");
    hv.shutdown();
    ensure!(
        !Path::new("/var/run/netns").join(&vpc).exists(),
        "VPC ns left"
    );
    ensure!(link(&a, "eth0")?.is_none(), "eth0 left in A");
    ensure!(link(&b, "eth0")?.is_none(), "eth0 left in B");
    ensure!(!hv.is_bound("i-a") && hv.links("i-a").is_empty());
    hv.shutdown();
    drop(api);
    Ok(())
}

#[test]
fn hypervisor_refuses_what_it_must_not_touch() -> Result<()> {
    require_root!();
    let mut lab = Lab::default();
    let (vpc, a, _, _) = names("ref");
    lab.remember(&vpc);
    let a = lab.netns(&a)?;
    let hv = hypervisor(&vpc);
    let a0 = nic("eni-r0", "00:16:3e:00:0c:00", 0, Some(A_IP));

    match hv.bind("i-a", &format!("hvref-missing-{}", std::process::id()), &a0) {
        Err(e @ HypervisorError::NetnsNotFound { .. }) => {
            ensure!(e.to_string().contains("does not exist"), "{e}");
        }
        other => bail!("binding to a missing namespace: {other:?}"),
    }
    match hv.bind("i-a", "/proc/self/ns/net", &a0) {
        Err(HypervisorError::NetnsRefused { .. }) => {}
        other => bail!("binding to the host namespace: {other:?}"),
    }
    ensure!(
        !Path::new("/var/run/netns").join(&vpc).exists(),
        "a refused bind created the VPC namespace"
    );
    let bad_mac = NicSpec {
        mac: "00:16:3e:00:0c".into(),
        ..a0.clone()
    };
    match hv.bind("i-a", &a, &bad_mac) {
        Err(HypervisorError::Invalid { .. }) => {}
        other => bail!("binding with a bad MAC: {other:?}"),
    }
    match hv.plug("i-a", &a0) {
        Err(HypervisorError::NotBound { .. }) => {}
        other => bail!("plugging into an unbound instance: {other:?}"),
    }
    // The VPC namespace itself is no node.
    let _api = hv.listen_in_vpc(0)?;
    match hv.bind("i-a", &vpc, &a0) {
        Err(HypervisorError::NetnsRefused { .. }) => {}
        other => bail!("binding to the VPC namespace: {other:?}"),
    }
    hv.bind("i-a", &a, &a0)?;
    check_primary(&a, "00:16:3e:00:0c:00", "192.168.1.10/24", "192.168.1.253")?;
    assert_eq!(
        hv.plug("i-a", &nic("eni-r1", "00:16:3e:00:0c:01", 1, None))?,
        "eth1"
    );

    // The node namespace is deleted and made again under the same name: binding again
    // starts over instead of keeping the dead links.
    ip(&["netns", "del", &a])?;
    ip(&["netns", "add", &a])?;
    match hv.bind("i-a", &a, &a0) {
        Ok(()) => {}
        Err(e) => bail!("binding again to a re-made namespace: {e}"),
    }
    check_primary(&a, "00:16:3e:00:0c:00", "192.168.1.10/24", "192.168.1.253")?;
    assert_eq!(hv.links("i-a").len(), 1, "{:?}", hv.links("i-a"));
    assert_eq!(
        hv.plug("i-a", &nic("eni-r1", "00:16:3e:00:0c:01", 1, None))?,
        "eth1"
    );
    ensure!(link(&a, "eth1")?.is_some(), "no eth1 after plugging again");
    hv.shutdown();
    ensure!(link(&a, "eth0")?.is_none(), "eth0 left in A");
    Ok(())
}

#[test]
fn hypervisor_adopts_links_left_by_a_killed_mock() -> Result<()> {
    require_root!();
    let mut lab = Lab::default();
    let (vpc, a, _, pod) = names("adopt");
    lab.remember(&vpc);
    let a = lab.netns(&a)?;
    let pod = lab.netns(&pod)?;
    let a0 = nic("eni-k0", "00:16:3e:00:0d:00", 0, Some(A_IP));
    let a1 = nic("eni-k1", "00:16:3e:00:0d:01", 0, None);
    let a2 = nic("eni-k2", "00:16:3e:00:0d:02", 1, None);

    let first = hypervisor(&vpc);
    first.bind("i-a", &a, &a0)?;
    assert_eq!(first.plug("i-a", &a1)?, "eth1");
    assert_eq!(first.plug("i-a", &a2)?, "eth2");
    ip(&["-n", &a, "link", "set", "eth2", "netns", &pod])?;
    let index_before = link(&vpc, "br-vsw-t1")?.context("no bridge")?["ifindex"].clone();
    let eth1_before = link(&a, "eth1")?.context("no eth1")?["ifindex"].clone();
    // "kill -9": the first mock goes away without shutdown; its namespace stays.
    drop(first);

    let second = hypervisor(&vpc);
    ensure!(!second.is_bound("i-a"));
    second.bind("i-a", &a, &a0)?;
    check_primary(&a, "00:16:3e:00:0d:00", "192.168.1.10/24", "192.168.1.253")?;
    assert_eq!(second.plug("i-a", &a1)?, "eth1");
    assert_eq!(
        link(&a, "eth1")?.context("no eth1")?["ifindex"],
        eth1_before,
        "eth1 was re-created instead of reused"
    );
    // Its node end now lives in the pod: the name it was given is kept.
    assert_eq!(second.plug("i-a", &a2)?, "eth2");
    ensure!(link(&a, "eth3")?.is_none(), "adoption made new links");
    ensure!(link(&pod, "eth2")?.is_some(), "the pod's link was replaced");
    assert_eq!(
        link(&vpc, "br-vsw-t1")?.context("no bridge")?["ifindex"],
        index_before,
        "the bridge was re-created"
    );
    assert_eq!(second.links("i-a").len(), 3);

    // Still wired: the node reaches the API address through the adopted links.
    let api = second.listen_in_vpc(0)?;
    let port = api.local_addr()?.port();
    assert_eq!(tcp_probe(&a, &api, SocketAddrV4::new(API, port))?, A_IP);

    second.unplug("eni-k2")?;
    ensure!(
        link(&pod, "eth2")?.is_none(),
        "eth2 survived unplug in the pod"
    );
    second.shutdown();
    ensure!(
        !Path::new("/var/run/netns").join(&vpc).exists(),
        "VPC ns left"
    );
    ensure!(link(&a, "eth1")?.is_none(), "eth1 left in A");
    Ok(())
}
