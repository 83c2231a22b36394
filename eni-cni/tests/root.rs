//! Root black-box tests: the built binary runs inside a "node" namespace (`ip netns exec`)
//! against a fake eni-manager, and wires real pods (namespaces). The node's ENI links are
//! veth ends whose peers sit on a bridge in a "vpc" namespace holding the gateway, set up
//! the way eni-manager sets an ENI up (up, sysctls, table T, rule). Traffic only flows
//! between the namespaces these tests create; every namespace is deleted by a Drop guard.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{
    cni_env, plugin_path, root_or_skip, run_plugin, ManagerHandle, ManagerSetup, Run, TempDir,
    TestNs,
};
use eni_kernel::netns::run_in_netns;
use serde_json::{json, Value};

/// A node on the test VPC 10.77.0.0/24: primary NIC eth0 (10.77.0.5, the main table's
/// default route), shared ENI eth1 (primary 10.77.0.10, table 1001), exclusive ENI eth2.
struct Lab {
    vpc: TestNs,
    node: TestNs,
    manager: ManagerHandle,
    run_dir: TempDir,
}

impl Lab {
    fn new(setup: ManagerSetup) -> Lab {
        let vpc = TestNs::new("vpc");
        let node = TestNs::new("node");
        let v = &vpc.name;
        vpc.ip(&["link", "add", "br0", "type", "bridge"]);
        vpc.ip(&["addr", "add", "10.77.0.1/24", "dev", "br0"]);
        vpc.ip(&["link", "set", "br0", "up"]);
        for (nic, mac, peer) in [
            ("eth0", "02:aa:00:00:00:00", "n0"),
            ("eth1", "02:aa:00:00:00:01", "n1"),
            ("eth2", "02:aa:00:00:00:02", "n2"),
        ] {
            node.ip(&[
                "link", "add", nic, "address", mac, "type", "veth", "peer", "name", peer, "netns",
                v,
            ]);
            vpc.ip(&["link", "set", peer, "master", "br0", "up"]);
        }
        node.ip(&["addr", "add", "10.77.0.5/24", "dev", "eth0"]);
        node.ip(&["link", "set", "eth0", "up"]);
        node.ip(&["route", "add", "default", "via", "10.77.0.1", "dev", "eth0"]);
        // As eni-manager sets up an attached ENI.
        for eni in ["eth1", "eth2"] {
            node.ip(&["link", "set", eni, "mtu", "1500", "up"]);
        }
        node.ip(&["addr", "add", "10.77.0.10/32", "dev", "eth1"]);
        node.sh("echo 1 > /proc/sys/net/ipv4/ip_forward; \
             echo 2 > /proc/sys/net/ipv4/conf/eth1/rp_filter; \
             echo 1 > /proc/sys/net/ipv4/conf/eth1/arp_ignore; \
             echo 2 > /proc/sys/net/ipv4/conf/eth1/arp_announce; \
             echo 0 > /proc/sys/net/ipv4/neigh/eth1/proxy_delay");
        node.ip(&[
            "route",
            "add",
            "10.77.0.0/24",
            "dev",
            "eth1",
            "scope",
            "link",
            "table",
            "1001",
        ]);
        node.ip(&[
            "route",
            "add",
            "default",
            "via",
            "10.77.0.1",
            "dev",
            "eth1",
            "table",
            "1001",
        ]);
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
            manager: ManagerHandle::start(setup),
            run_dir: TempDir::new(),
        }
    }

    fn conf(&self, extra: &Value) -> String {
        let mut v = json!({"cniVersion":"1.1.0","name":"eni","type":"eni-cni","mode":"veth",
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

    /// Everything in the node's namespace that a pod's wiring could leave behind.
    fn node_state(&self) -> String {
        let n = &self.node;
        format!(
            "links:\n{}\nroutes:\n{}\nrules:\n{}\nproxies:\n{}\nneigh perm:\n{}",
            n.ip(&["-o", "link", "show"])
                .lines()
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
                .collect::<Vec<_>>()
                .join(","),
            n.ip(&["route", "show", "table", "all"]),
            n.ip(&["rule", "show"]),
            n.ip(&["neigh", "show", "proxy"]),
            n.ip(&["neigh", "show", "nud", "permanent"]),
        )
    }

    fn tx_packets(&self, link: &str) -> u64 {
        let v: Value =
            serde_json::from_str(&self.node.ip(&["-s", "-j", "link", "show", link])).unwrap();
        v[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
    }
}

/// A TCP listener inside `ns` on `addr`; accepts one connection, answers with the peer's
/// address as text.
fn serve_once(ns: &TestNs, addr: SocketAddr) -> std::thread::JoinHandle<SocketAddr> {
    let listener = run_in_netns(&ns.fd, move || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.write_all(peer.to_string().as_bytes()).unwrap();
        peer
    })
}

/// Connects from inside `ns` and returns what the server said (its view of our address).
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

fn pod_ip(result: &Value) -> Ipv4Addr {
    let addr = result["ips"][0]["address"].as_str().unwrap();
    addr.split('/').next().unwrap().parse().unwrap()
}

#[test]
fn veth_mode_add_traffic_check_del() {
    if !root_or_skip("veth_mode_add_traffic_check_del") {
        return;
    }
    let lab = Lab::new(ManagerSetup::vpc());
    let clean = lab.node_state();
    let pod_a = TestNs::new("poda");
    let mut pod_b = TestNs::new("podb");
    let conf = lab.conf(&json!({}));

    let add_a = lab.cni("ADD", "ca", &pod_a.path(), &conf).ok();
    let ra = add_a.json();
    assert_eq!(ra["cniVersion"], "1.1.0");
    let ip_a = pod_ip(&ra);
    assert_eq!(ra["ips"][0]["address"], format!("{ip_a}/32"));
    assert_eq!(ra["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(ra["interfaces"][1]["sandbox"], pod_a.path());
    assert_eq!(ra["interfaces"][1]["mtu"], 1500);
    // Pod B asks in 0.4.0 and gets a 0.4.0 result.
    let conf04 = lab.conf(&json!({"cniVersion": "0.4.0"}));
    let rb = lab.cni("ADD", "cb", &pod_b.path(), &conf04).ok().json();
    assert_eq!(rb["cniVersion"], "0.4.0");
    assert_eq!(rb["ips"][0]["version"], "4");
    let ip_b = pod_ip(&rb);

    // Pod -> VPC: arrives with the pod's address, leaves through the ENI eth1.
    let tx_before = lab.tx_packets("eth1");
    let tx0_before = lab.tx_packets("eth0");
    let server = serve_once(&lab.vpc, "10.77.0.1:8080".parse().unwrap());
    let seen = connect_from(&pod_a, "10.77.0.1:8080".parse().unwrap());
    assert_eq!(server.join().unwrap().ip(), std::net::IpAddr::V4(ip_a));
    assert!(seen.starts_with(&ip_a.to_string()), "{seen}");
    let tx_after = lab.tx_packets("eth1");
    assert!(
        tx_after >= tx_before + 3,
        "egress not via eth1: {tx_before} -> {tx_after}"
    );
    assert!(
        lab.tx_packets("eth0") <= tx0_before + 2,
        "pod traffic left through the primary NIC"
    );

    // Node -> pod (kubelet probes).
    let server = serve_once(&pod_a, SocketAddr::new(ip_a.into(), 8081));
    connect_from(&lab.node, SocketAddr::new(ip_a.into(), 8081));
    server.join().unwrap();
    // Pod -> pod on the same node, with the source address intact.
    let server = serve_once(&pod_b, SocketAddr::new(ip_b.into(), 8082));
    connect_from(&pod_a, SocketAddr::new(ip_b.into(), 8082));
    assert_eq!(server.join().unwrap().ip(), std::net::IpAddr::V4(ip_a));

    // CHECK, with the ADD result as prevResult.
    let check_conf = lab.conf(&json!({"prevResult": ra}));
    lab.cni("CHECK", "ca", &pod_a.path(), &check_conf).ok();
    // CHECK notices a missing rule.
    lab.node.ip(&[
        "rule",
        "del",
        "from",
        &format!("{ip_a}/32"),
        "lookup",
        "1001",
        "pref",
        "2000",
    ]);
    let bad = lab.cni("CHECK", "ca", &pod_a.path(), &check_conf);
    assert_ne!(bad.code, 0);
    assert!(
        bad.json()["msg"].as_str().unwrap().contains("rule"),
        "{}",
        bad.stdout
    );

    // DEL removes everything and releases; twice is fine.
    lab.cni("DEL", "ca", &pod_a.path(), &conf).ok();
    lab.cni("DEL", "ca", &pod_a.path(), &conf).ok();
    assert!(!lab.manager.holds("ca"));
    assert!(
        lab.manager
            .calls()
            .iter()
            .filter(|c| *c == "release ca")
            .count()
            >= 2
    );
    assert!(
        pod_a.ip(&["-o", "link", "show"]).lines().count() == 1,
        "pod a keeps only lo"
    );
    // CHECK after DEL: the manager knows nothing.
    let gone = lab.cni("CHECK", "ca", &pod_a.path(), &check_conf);
    assert_eq!(gone.json()["code"], 3, "{}", gone.stdout);

    // DEL after the pod's namespace is gone cleans the node side.
    let b_path = pod_b.path();
    pod_b.delete();
    lab.cni("DEL", "cb", &b_path, &conf).ok();
    lab.cni("DEL", "cb", &b_path, &conf).ok();
    assert!(!lab.manager.holds("cb"));
    assert_eq!(clean, lab.node_state(), "leftovers on the node");
}

#[test]
fn add_failure_half_way_leaves_nothing_and_releases() {
    if !root_or_skip("add_failure_half_way_leaves_nothing_and_releases") {
        return;
    }
    // The manager names an ENI link the node does not have: ADD gets as far as the proxy
    // entry (veth, pod side, routes and rules are built) before it fails.
    let mut setup = ManagerSetup::vpc();
    setup.shared.host_ifname = "eth9".into();
    let lab = Lab::new(setup);
    let clean = lab.node_state();
    let pod = TestNs::new("podf");
    let out = lab.cni("ADD", "cf", &pod.path(), &lab.conf(&json!({})));
    assert_ne!(out.code, 0);
    let v = out.json();
    assert_eq!(v["code"], 108, "{}", out.stdout);
    assert!(
        v["msg"].as_str().unwrap().contains("eth9"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("ADD failed, undoing"), "{}", out.stderr);
    assert_eq!(clean, lab.node_state());
    assert_eq!(
        pod.ip(&["-o", "link", "show"]).lines().count(),
        1,
        "pod keeps only lo"
    );
    assert_eq!(
        lab.manager.calls(),
        vec!["allocate cf".to_string(), "release cf".to_string()]
    );
    assert!(!lab.manager.holds("cf"));
}

#[test]
fn exclusive_mode_moves_the_eni_in_and_back() {
    if !root_or_skip("exclusive_mode_moves_the_eni_in_and_back") {
        return;
    }
    let lab = Lab::new(ManagerSetup::vpc());
    let pod = TestNs::new("podx");
    // Asked for through runtimeConfig, in a veth-mode network.
    let conf = lab.conf(&json!({"runtimeConfig": {"exclusiveEni": true}}));
    let r = lab.cni("ADD", "cx", &pod.path(), &conf).ok().json();
    assert_eq!(r["ips"][0]["address"], "10.77.0.50/24");
    assert_eq!(
        r["interfaces"].as_array().unwrap().len(),
        1,
        "no host interface"
    );
    assert_eq!(r["interfaces"][0]["mac"], "02:aa:00:00:00:02");
    assert!(
        lab.node.ip(&["-o", "link", "show"]).find("eth2").is_none(),
        "eth2 left the node"
    );
    let link = pod.ip(&["-o", "link", "show", "eth0"]);
    assert!(link.contains("02:aa:00:00:00:02"), "{link}");
    assert!(pod
        .ip(&["route"])
        .contains("default via 10.77.0.1 dev eth0"));

    let server = serve_once(&lab.vpc, "10.77.0.1:8090".parse().unwrap());
    connect_from(&pod, "10.77.0.1:8090".parse().unwrap());
    assert_eq!(server.join().unwrap().ip().to_string(), "10.77.0.50");
    lab.cni(
        "CHECK",
        "cx",
        &pod.path(),
        &lab.conf(&json!({"prevResult": r})),
    )
    .ok();

    lab.cni("DEL", "cx", &pod.path(), &conf).ok();
    lab.cni("DEL", "cx", &pod.path(), &conf).ok();
    let back = lab.node.ip(&["-o", "link", "show", "eth2"]);
    assert!(
        back.contains("02:aa:00:00:00:02") && back.contains("state DOWN"),
        "{back}"
    );
    assert!(lab
        .node
        .ip(&["-o", "addr", "show", "eth2"])
        .trim()
        .is_empty());
    assert!(pod.ip(&["-o", "link", "show"]).lines().count() == 1);
    assert!(!lab.manager.holds("cx"));
}

#[test]
fn gc_releases_what_is_not_listed() {
    if !root_or_skip("gc_releases_what_is_not_listed") {
        return;
    }
    let lab = Lab::new(ManagerSetup::vpc());
    let pod_a = TestNs::new("pga");
    let pod_b = TestNs::new("pgb");
    let conf = lab.conf(&json!({}));
    let ra = lab.cni("ADD", "ga", &pod_a.path(), &conf).ok().json();
    let rb = lab.cni("ADD", "gb", &pod_b.path(), &conf).ok().json();
    let ip_b = pod_ip(&rb);
    let gc_conf =
        lab.conf(&json!({"cni.dev/valid-attachments": [{"containerID": "ga", "ifname": "eth0"}]}));
    let env = vec![
        ("CNI_COMMAND", "GC".to_string()),
        ("CNI_PATH", "/usr/lib/cni".to_string()),
        ("ENI_CNI_RUN_DIR", lab.run_dir.0.display().to_string()),
    ];
    let out = run_plugin(plugin_path(), Some(&lab.node.name), &env, &gc_conf).ok();
    assert!(out.stdout.trim().is_empty());
    assert!(lab.manager.holds("ga") && !lab.manager.holds("gb"));
    let state = lab.node_state();
    assert!(
        !state.contains(&ip_b.to_string()),
        "leftovers of the released pod:\n{state}"
    );
    assert!(
        state.contains(&pod_ip(&ra).to_string()),
        "the valid pod lost its wiring:\n{state}"
    );
    lab.cni(
        "CHECK",
        "ga",
        &pod_a.path(),
        &lab.conf(&json!({"prevResult": ra})),
    )
    .ok();
}

/// Runs a conflist the way a runtime does: each plugin in order with the previous result
/// as prevResult (ADD), the final result for CHECK, reverse order for DEL.
fn run_conflist(
    lab: &Lab,
    conflist: &Value,
    command: &str,
    container: &str,
    pod: &str,
    prev: Option<&Value>,
) -> Option<Value> {
    let mut plugins: Vec<Value> = conflist["plugins"].as_array().unwrap().clone();
    if command == "DEL" {
        plugins.reverse();
    }
    let mut result = prev.cloned();
    for p in plugins {
        let mut conf = p.clone();
        conf["name"] = conflist["name"].clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        if let Some(r) = &result {
            conf["prevResult"] = r.clone();
        }
        let ty = conf["type"].as_str().unwrap().to_string();
        let binary = if ty == "eni-cni" {
            plugin_path().to_string()
        } else {
            format!("/usr/lib/cni/{ty}")
        };
        let mut env = cni_env(command, container, pod, "eth0", &lab.run_dir.0);
        env.push(("PATH", path_without_ip6tables(lab)));
        let out = run_plugin(&binary, Some(&lab.node.name), &env, &conf.to_string());
        assert_eq!(out.code, 0, "{command} {ty}: {} {}", out.stdout, out.stderr);
        if command == "ADD" {
            result = Some(out.json());
        }
    }
    result
}

/// A PATH holding `ip` and the IPv4 iptables tools only. Debian 12's portmap (CNI plugins
/// 1.1) fails CHECK on IPv4-only attachments whenever ip6tables exists: it looks for IPv6
/// DNAT chains that ADD never made (containernetworking/plugins#819, fixed upstream).
fn path_without_ip6tables(lab: &Lab) -> String {
    let bin = lab.run_dir.0.join("bin");
    if !bin.exists() {
        std::fs::create_dir_all(&bin).unwrap();
        for tool in ["ip", "iptables", "iptables-save", "iptables-restore"] {
            let target = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("{tool} not found"));
            std::os::unix::fs::symlink(target, bin.join(tool)).unwrap();
        }
    }
    bin.display().to_string()
}

#[test]
fn conflist_with_portmap_and_bandwidth() {
    if !root_or_skip("conflist_with_portmap_and_bandwidth") {
        return;
    }
    if !Path::new("/usr/lib/cni/portmap").exists() || !Path::new("/usr/lib/cni/bandwidth").exists()
    {
        panic!("install the reference plugins: apt-get install -y containernetworking-plugins");
    }
    let lab = Lab::new(ManagerSetup::vpc());
    let clean_rules = lab.node.ip(&["rule", "show"]);
    let pod = TestNs::new("podc");
    // The reference plugins speak up to 1.0.0.
    let conflist = json!({
        "cniVersion": "1.0.0", "name": "eni",
        "plugins": [
            {"type": "eni-cni", "mode": "veth", "socket": lab.manager.socket},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true,
             "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true},
             "runtimeConfig": {"bandwidth": {"ingressRate": 100000000, "ingressBurst": 1000000}}}
        ]
    });
    let result = run_conflist(&lab, &conflist, "ADD", "cc", &pod.path(), None).unwrap();
    assert_eq!(result["cniVersion"], "1.0.0");
    let ip = pod_ip(&result);
    // portmap's DNAT and bandwidth's qdisc are on the node, on our host veth.
    let host_if = result["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let qdisc = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.node.name,
            "tc",
            "qdisc",
            "show",
            "dev",
            &host_if,
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&qdisc.stdout).contains("tbf"),
        "{}",
        String::from_utf8_lossy(&qdisc.stdout)
    );
    // Traffic still flows: pod -> vpc.
    let server = serve_once(&lab.vpc, "10.77.0.1:8085".parse().unwrap());
    connect_from(&pod, "10.77.0.1:8085".parse().unwrap());
    assert_eq!(server.join().unwrap().ip().to_string(), ip.to_string());

    run_conflist(&lab, &conflist, "CHECK", "cc", &pod.path(), Some(&result));
    run_conflist(&lab, &conflist, "DEL", "cc", &pod.path(), Some(&result));
    assert!(!lab.manager.holds("cc"));
    assert_eq!(clean_rules, lab.node.ip(&["rule", "show"]));
    assert!(lab
        .node
        .ip(&["-o", "link", "show"])
        .find(&host_if)
        .is_none());
}
