//! Root black-box tests of the IPVLAN L2 datapath: the built binary runs inside a "node"
//! namespace (`ip netns exec`) against a fake eni-manager (the real `eni_rpc` server) and
//! wires real pods (namespaces) as ipvlan slaves of the node's ENI link. The ENI link is a
//! veth end whose peer sits on a bridge in a "vpc" namespace holding the gateway
//! (10.77.0.1) and a "remote host" (10.77.0.200).
//!
//! The build machines' kernel has no ipvlan: there these tests print
//! `SKIPPED: kernel has no ipvlan ...` and return (never a silent pass), and
//! `integration/vm/tests.sh` runs them inside a VM booting Debian's stock kernel, where the
//! serial log must show that they did not skip. `mode: auto` is checked on both kernels:
//! it must pick ipvlan in the VM and veth on the build machine.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use common::{
    cni_env, plugin_path, root_or_skip, run_plugin, ManagerHandle, ManagerSetup, Run, TempDir,
    TestNs,
};
use eni_kernel::netns::run_in_netns;
use eni_kernel::LinkKind;
use serde_json::{json, Value};

const ENI_MAC: &str = "02:aa:00:00:00:01";
const GATEWAY: &str = "10.77.0.1";
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 200);
/// The node's address on the host-side ipvlan slave (`ipvlan::HOST_SLAVE_ADDR`).
const HOST_SLAVE_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 2, 1);

/// One line on stderr, in one write (libtest does not capture direct writes; one write
/// keeps the line whole next to libtest's own output).
fn note(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Whether this kernel has ipvlan (probed once, in a scratch namespace).
fn kernel_has_ipvlan() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| eni_kernel::kernel_supports(&LinkKind::Ipvlan))
}

/// True when the kernel has ipvlan; otherwise prints the skip visibly.
fn ipvlan_or_skip(test: &str) -> bool {
    let has = kernel_has_ipvlan();
    if !has {
        note(&format!(
            "SKIPPED: kernel has no ipvlan (runs in the VM: integration/vm/tests.sh) ({test})"
        ));
    }
    has
}

/// A node on the test VPC 10.77.0.0/24: primary NIC eth0 (10.77.0.5, the main table's
/// default route) and the shared ENI eth1 (primary 10.77.0.10, table 1001), set up the way
/// eni-manager sets up an attached ENI. The VPC (a bridge) holds the gateway and a remote
/// host.
struct Lab {
    vpc: TestNs,
    node: TestNs,
    manager: ManagerHandle,
    run_dir: TempDir,
}

impl Lab {
    fn new() -> Lab {
        let vpc = TestNs::new("ivpc");
        let node = TestNs::new("inode");
        let v = &vpc.name;
        vpc.ip(&["link", "add", "br0", "type", "bridge"]);
        vpc.ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", "br0"]);
        vpc.ip(&["addr", "add", &format!("{REMOTE}/24"), "dev", "br0"]);
        vpc.ip(&["link", "set", "br0", "up"]);
        for (nic, mac, peer) in [("eth0", "02:aa:00:00:00:00", "n0"), ("eth1", ENI_MAC, "n1")] {
            node.ip(&[
                "link", "add", nic, "address", mac, "type", "veth", "peer", "name", peer, "netns",
                v,
            ]);
            vpc.ip(&["link", "set", peer, "master", "br0", "up"]);
        }
        node.ip(&["addr", "add", "10.77.0.5/24", "dev", "eth0"]);
        node.ip(&["link", "set", "eth0", "up"]);
        node.ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"]);
        node.ip(&["link", "set", "eth1", "mtu", "1500", "up"]);
        node.ip(&["addr", "add", "10.77.0.10/32", "dev", "eth1"]);
        node.sh("echo 1 > /proc/sys/net/ipv4/ip_forward; \
             echo 2 > /proc/sys/net/ipv4/conf/eth1/rp_filter; \
             echo 1 > /proc/sys/net/ipv4/conf/eth1/arp_ignore; \
             echo 2 > /proc/sys/net/ipv4/conf/eth1/arp_announce; \
             echo 0 > /proc/sys/net/ipv4/neigh/eth1/proxy_delay");
        for route in [
            &[
                "10.77.0.0/24",
                "dev",
                "eth1",
                "scope",
                "link",
                "table",
                "1001",
            ][..],
            &["default", "via", GATEWAY, "dev", "eth1", "table", "1001"][..],
        ] {
            let mut args = vec!["route", "add"];
            args.extend_from_slice(route);
            node.ip(&args);
        }
        node.ip(&[
            "rule",
            "add",
            "from",
            "10.77.0.10",
            "lookup",
            "1001",
            "pref",
            "2000",
        ]);
        Lab {
            vpc,
            node,
            manager: ManagerHandle::start(ManagerSetup::vpc()),
            run_dir: TempDir::new(),
        }
    }

    fn conf(&self, mode: &str, extra: &Value) -> String {
        let mut v = json!({"cniVersion":"1.1.0","name":"eni","type":"eni-cni","mode": mode,
                           "socket": self.manager.socket, "log_level": "debug"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string()
    }

    fn cni(&self, command: &str, container: &str, pod: &str, conf: &str) -> Run {
        let env = cni_env(command, container, pod, "eth0", &self.run_dir.0);
        run_plugin(plugin_path(), Some(&self.node.name), &env, conf)
    }

    /// The ENI link's index in the node.
    fn eni_index(&self) -> u64 {
        link_json(&self.node, "eth1")["ifindex"].as_u64().unwrap()
    }

    /// Everything in the node's namespace that a pod's wiring could leave behind, minus
    /// whatever mentions `keep` (the host-side ipvlan slave, which outlives the pods).
    fn node_state_without(&self, keep: &str) -> String {
        let n = &self.node;
        let links = n
            .ip(&["-o", "link", "show"])
            .lines()
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            .filter(|l| !l.starts_with(keep))
            .collect::<Vec<_>>()
            .join(",");
        // IPv4 only: IPv6 link-local routes come and go with DAD, which takes seconds under
        // the VM's emulation (and has nothing to do with the pods).
        let routes = n
            .ip(&["-4", "route", "show", "table", "all"])
            .lines()
            .filter(|l| !l.contains(keep))
            .collect::<Vec<_>>()
            .join("\n");
        format!(
            "links:\n{links}\nroutes:\n{routes}\nrules:\n{}\nproxies:\n{}\nneigh perm:\n{}",
            n.ip(&["rule", "show"]),
            n.ip(&["neigh", "show", "proxy"]),
            n.ip(&["neigh", "show", "nud", "permanent"]),
        )
    }

    fn tx_packets(&self, link: &str) -> u64 {
        link_json(&self.node, link)["stats64"]["tx"]["packets"]
            .as_u64()
            .unwrap()
    }
}

/// `ip -d -s -j link show DEV` in `ns`, the one object.
fn link_json(ns: &TestNs, dev: &str) -> Value {
    let v: Value =
        serde_json::from_str(&ns.ip(&["-d", "-s", "-j", "link", "show", "dev", dev])).unwrap();
    v[0].clone()
}

/// The interfaces in `ns` other than `lo`.
fn links_but_lo(ns: &TestNs) -> Vec<String> {
    ns.ip(&["-o", "link", "show"])
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .filter(|l| l != "lo")
        .collect()
}

/// A TCP listener inside `ns` on `addr`; accepts one connection, answers with the peer's
/// address as text, and returns the peer's address.
fn serve_once(ns: &TestNs, addr: SocketAddr) -> std::thread::JoinHandle<SocketAddr> {
    let listener = run_in_netns(&ns.fd, move || TcpListener::bind(addr))
        .unwrap()
        .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name));
    std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.write_all(peer.to_string().as_bytes()).unwrap();
        peer
    })
}

/// Connects from inside `ns` (a thread that joined it) and returns what the server said
/// (its view of our address).
fn connect_from(ns: &TestNs, addr: SocketAddr) -> String {
    let mut stream = run_in_netns(&ns.fd, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("connect to {addr} from {}: {e}", ns.name));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// One TCP exchange from `client` to `server_ns` at `addr`; returns the source address the
/// server saw (and checks the client was told the same).
fn tcp(client: &TestNs, server_ns: &TestNs, addr: SocketAddr) -> IpAddr {
    let server = serve_once(server_ns, addr);
    let said = connect_from(client, addr);
    let peer = server.join().unwrap();
    assert_eq!(said, peer.to_string());
    peer.ip()
}

fn pod_ip(result: &Value) -> Ipv4Addr {
    let addr = result["ips"][0]["address"].as_str().unwrap();
    addr.split('/').next().unwrap().parse().unwrap()
}

/// Asserts that `dev` in `ns` is an ipvlan L2 slave of the ENI (same MAC as the ENI).
fn assert_ipvlan_l2_of_eni(ns: &TestNs, dev: &str, eni_index: u64) {
    let l = link_json(ns, dev);
    assert_eq!(
        l["linkinfo"]["info_kind"], "ipvlan",
        "{dev} in {}: {l}",
        ns.name
    );
    assert_eq!(l["linkinfo"]["info_data"]["mode"], "l2", "{l}");
    assert_eq!(
        l["address"], ENI_MAC,
        "ipvlan slaves share the ENI's MAC: {l}"
    );
    // Same namespace: "link": "eth1"; another one: "link_index" (+ "link_netnsid").
    match l.get("link_index") {
        Some(i) => assert_eq!(i.as_u64(), Some(eni_index), "{l}"),
        None => assert_eq!(l["link"], "eth1", "{l}"),
    }
    assert!(
        l["operstate"] != "DOWN" && l["flags"].to_string().contains("\"UP\""),
        "{dev} is not up: {l}"
    );
}

#[test]
fn ipvlan_mode_add_traffic_check_del() {
    const TEST: &str = "ipvlan_mode_add_traffic_check_del";
    if !root_or_skip(TEST) || !ipvlan_or_skip(TEST) {
        return;
    }
    let lab = Lab::new();
    let eni_index = lab.eni_index();
    let slave = format!("ipvl{eni_index}");
    let clean = lab.node_state_without(&slave);
    let pod_a = TestNs::new("piva");
    let mut pod_b = TestNs::new("pivb");
    let conf = lab.conf("ipvlan", &json!({}));

    // ADD: the pod gets an ipvlan L2 slave of eth1 with the allocated address.
    let add_a = lab.cni("ADD", "ia", &pod_a.path(), &conf).ok();
    let ra = add_a.json();
    let ip_a = pod_ip(&ra);
    assert_eq!(ra["cniVersion"], "1.1.0");
    assert_eq!(ra["ips"][0]["address"], format!("{ip_a}/24"), "{ra}");
    assert_eq!(ra["ips"][0]["gateway"], GATEWAY);
    let ifs = ra["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 1, "no host interface in ipvlan mode: {ra}");
    assert_eq!(ifs[0]["name"], "eth0");
    assert_eq!(ifs[0]["mac"], ENI_MAC);
    assert_eq!(ifs[0]["sandbox"], pod_a.path());
    assert!(
        add_a.stderr.contains("ipvlan"),
        "the log names the mode: {}",
        add_a.stderr
    );
    assert_ipvlan_l2_of_eni(&pod_a, "eth0", eni_index);
    let pod_links = links_but_lo(&pod_a);
    assert!(
        pod_links.len() == 1 && pod_links[0].starts_with("eth0"),
        "{pod_links:?}"
    );
    let addrs = pod_a.ip(&["-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("inet {ip_a}/24")), "{addrs}");
    let routes = pod_a.ip(&["route"]);
    assert!(
        routes.contains(&format!("default via {GATEWAY} dev eth0")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("{HOST_SLAVE_ADDR} dev eth0 scope link")),
        "{routes}"
    );
    // The node: the host-side slave of eth1 with 169.254.2.1, and the /32 to the pod.
    assert_ipvlan_l2_of_eni(&lab.node, &slave, eni_index);
    let slave_addr = lab.node.ip(&["-o", "-4", "addr", "show", "dev", &slave]);
    assert!(
        slave_addr.contains(&format!("inet {HOST_SLAVE_ADDR}/32")),
        "{slave_addr}"
    );
    let to_a = lab
        .node
        .ip(&["route", "show", "exact", &format!("{ip_a}/32")]);
    assert!(
        to_a.contains(&format!("dev {slave}")) && to_a.contains(&format!("src {HOST_SLAVE_ADDR}")),
        "node route to the pod: {to_a:?}"
    );

    let rb = lab.cni("ADD", "ib", &pod_b.path(), &conf).ok().json();
    let ip_b = pod_ip(&rb);
    assert_ne!(ip_a, ip_b);
    assert_ipvlan_l2_of_eni(&pod_b, "eth0", eni_index);
    assert_eq!(
        lab.node.ip(&["-o", "link", "show"]).matches("ipvl").count(),
        1,
        "one host slave per ENI, shared by its pods"
    );

    // Pod -> remote host in the VPC: TCP with the pod's own address, out through eth1.
    let tx1 = lab.tx_packets("eth1");
    let tx0 = lab.tx_packets("eth0");
    let seen = tcp(&pod_a, &lab.vpc, SocketAddr::new(REMOTE.into(), 8080));
    assert_eq!(
        seen,
        IpAddr::V4(ip_a),
        "the remote host sees the pod's address"
    );
    let (tx1_after, tx0_after) = (lab.tx_packets("eth1"), lab.tx_packets("eth0"));
    assert!(
        tx1_after >= tx1 + 3,
        "egress not via eth1: {tx1} -> {tx1_after}"
    );
    assert!(
        tx0_after <= tx0 + 2,
        "pod traffic left through the primary NIC: {tx0} -> {tx0_after}"
    );
    let seen = tcp(&pod_b, &lab.vpc, SocketAddr::new(REMOTE.into(), 8081));
    assert_eq!(seen, IpAddr::V4(ip_b));

    // Node -> pod (the kubelet probe path): through the host-side slave, from 169.254.2.1.
    let slave_tx = lab.tx_packets(&slave);
    let seen = tcp(&lab.node, &pod_a, SocketAddr::new(ip_a.into(), 8082));
    assert_eq!(seen, IpAddr::V4(HOST_SLAVE_ADDR), "node -> pod source");
    assert!(
        lab.tx_packets(&slave) >= slave_tx + 3,
        "node -> pod did not go through {slave}"
    );
    let seen = tcp(&lab.node, &pod_b, SocketAddr::new(ip_b.into(), 8083));
    assert_eq!(seen, IpAddr::V4(HOST_SLAVE_ADDR));

    // Pod <-> pod on the same ENI, source addresses intact.
    let seen = tcp(&pod_a, &pod_b, SocketAddr::new(ip_b.into(), 8084));
    assert_eq!(seen, IpAddr::V4(ip_a));
    let seen = tcp(&pod_b, &pod_a, SocketAddr::new(ip_a.into(), 8085));
    assert_eq!(seen, IpAddr::V4(ip_b));

    // CHECK, with the ADD result as prevResult.
    let check_a = lab.conf("ipvlan", &json!({"prevResult": ra}));
    lab.cni("CHECK", "ia", &pod_a.path(), &check_a).ok();
    let check_b = lab.conf("ipvlan", &json!({"prevResult": rb}));
    lab.cni("CHECK", "ib", &pod_b.path(), &check_b).ok();
    // CHECK notices the node's route to the pod is missing; and the pod's default route.
    let ip_a32 = format!("{ip_a}/32");
    lab.node.ip(&["route", "del", &ip_a32, "dev", &slave]);
    let bad = lab.cni("CHECK", "ia", &pod_a.path(), &check_a);
    assert_ne!(bad.code, 0);
    assert_eq!(bad.json()["code"], 108, "{}", bad.stdout);
    assert!(
        bad.json()["msg"].as_str().unwrap().contains(&ip_a32),
        "{}",
        bad.stdout
    );
    let src = HOST_SLAVE_ADDR.to_string();
    lab.node.ip(&[
        "route", "add", &ip_a32, "dev", &slave, "scope", "link", "src", &src,
    ]);
    pod_b.ip(&["route", "del", "default"]);
    let bad = lab.cni("CHECK", "ib", &pod_b.path(), &check_b);
    assert!(
        bad.code != 0
            && bad.json()["msg"]
                .as_str()
                .unwrap()
                .contains("default route"),
        "{}",
        bad.stdout
    );
    pod_b.ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"]);
    lab.cni("CHECK", "ib", &pod_b.path(), &check_b).ok();

    // DEL A: its slave and the node's route go, twice is fine; the host slave stays for B.
    lab.cni("DEL", "ia", &pod_a.path(), &conf).ok();
    lab.cni("DEL", "ia", &pod_a.path(), &conf).ok();
    assert!(!lab.manager.holds("ia"));
    assert!(links_but_lo(&pod_a).is_empty(), "pod a keeps only lo");
    let all = lab.node.ip(&["route", "show", "table", "all"]);
    assert!(!all.contains(&ip_a.to_string()), "route to A left:\n{all}");
    assert_ipvlan_l2_of_eni(&lab.node, &slave, eni_index);
    let seen = tcp(&lab.node, &pod_b, SocketAddr::new(ip_b.into(), 8086));
    assert_eq!(
        seen,
        IpAddr::V4(HOST_SLAVE_ADDR),
        "B still reachable from the node"
    );
    let seen = tcp(&pod_b, &lab.vpc, SocketAddr::new(REMOTE.into(), 8087));
    assert_eq!(seen, IpAddr::V4(ip_b), "B still reaches the VPC");
    // CHECK after DEL: the manager knows nothing.
    let gone = lab.cni("CHECK", "ia", &pod_a.path(), &check_a);
    assert_eq!(gone.json()["code"], 3, "{}", gone.stdout);

    // DEL B after its namespace is gone: the node side goes, twice is fine.
    let b_path = pod_b.path();
    pod_b.delete();
    lab.cni("DEL", "ib", &b_path, &conf).ok();
    lab.cni("DEL", "ib", &b_path, &conf).ok();
    assert!(!lab.manager.holds("ib"));
    assert_eq!(
        clean,
        lab.node_state_without(&slave),
        "leftovers on the node (besides the host slave {slave}, which the ENI keeps)"
    );
    note(&format!(
        "ipvlan-cni: ipvlan mode OK: pods {ip_a} {ip_b} on ipvlan l2 of eth1 ({slave} on the node): \
         pod->remote, node->pod, pod<->pod, CHECK, DEL x2"
    ));
}

#[test]
fn mode_auto_picks_ipvlan_where_the_kernel_has_it_else_veth() {
    const TEST: &str = "mode_auto_picks_ipvlan_where_the_kernel_has_it_else_veth";
    if !root_or_skip(TEST) {
        return;
    }
    let has = kernel_has_ipvlan();
    let (want, kind) = if has {
        ("ipvlan", "ipvlan")
    } else {
        ("veth", "veth")
    };
    let lab = Lab::new();
    let eni_index = lab.eni_index();
    let slave = format!("ipvl{eni_index}");
    let clean = lab.node_state_without(&slave);
    let pod = TestNs::new("pauto");
    let pod2 = TestNs::new("pauto2");
    let conf = lab.conf("auto", &json!({}));

    let add = lab.cni("ADD", "au", &pod.path(), &conf).ok();
    let said = format!(
        "mode auto: kernel ipvlan {} (probed now), using {want}",
        if has { "available" } else { "unavailable" }
    );
    assert!(add.stderr.contains(&said), "{}", add.stderr);
    let l = link_json(&pod, "eth0");
    assert_eq!(l["linkinfo"]["info_kind"], kind, "{l}");
    let r = add.json();
    let ip = pod_ip(&r);
    let seen = tcp(&pod, &lab.vpc, SocketAddr::new(REMOTE.into(), 8090));
    assert_eq!(seen, IpAddr::V4(ip));
    // The second ADD uses the cached probe.
    let add2 = lab.cni("ADD", "au2", &pod2.path(), &conf).ok();
    assert!(
        add2.stderr
            .contains(&format!("(cached probe), using {want}")),
        "{}",
        add2.stderr
    );
    lab.cni(
        "CHECK",
        "au",
        &pod.path(),
        &lab.conf("auto", &json!({"prevResult": r})),
    )
    .ok();
    for (c, p) in [("au", &pod), ("au2", &pod2)] {
        lab.cni("DEL", c, &p.path(), &conf).ok();
        assert!(links_but_lo(p).is_empty());
    }
    assert_eq!(
        clean,
        lab.node_state_without(&slave),
        "leftovers on the node"
    );
    note(&format!("ipvlan-cni: mode auto chose {want}"));
}

#[test]
fn ipvlan_mode_without_kernel_support_fails_cleanly() {
    const TEST: &str = "ipvlan_mode_without_kernel_support_fails_cleanly";
    if !root_or_skip(TEST) {
        return;
    }
    if kernel_has_ipvlan() {
        // Nothing to show here: this is the build machine's case.
        return;
    }
    let lab = Lab::new();
    let clean = lab.node_state_without("ipvl");
    let pod = TestNs::new("pnoiv");
    let out = lab.cni("ADD", "nv", &pod.path(), &lab.conf("ipvlan", &json!({})));
    assert_ne!(out.code, 0);
    let v = out.json();
    assert_eq!(v["code"], 108, "{}", out.stdout);
    assert!(
        v["msg"].as_str().unwrap().contains("ipvlan"),
        "{}",
        out.stdout
    );
    assert!(links_but_lo(&pod).is_empty(), "pod keeps only lo");
    assert_eq!(clean, lab.node_state_without("ipvl"));
    assert!(
        lab.node.ip(&["-o", "link", "show"]).find("ipvl").is_none(),
        "no host slave"
    );
    assert_eq!(
        lab.manager.calls(),
        vec!["allocate nv".to_string(), "release nv".to_string()]
    );
}
