//! The hypervisor end to end, through the built binary: instances bound to network
//! namespaces get their primary NIC at start; an ENI attached through the API appears as a
//! link with its MAC; packets flow between two "nodes" over those links; the metadata service
//! answers inside the VPC by the caller's source address; detach removes the link; SIGTERM
//! removes the VPC namespace. Needs root: without it each test says SKIPPED and returns.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            std::io::Write::write_all(
                &mut std::io::stderr(),
                b"SKIPPED: needs root (creates network namespaces)\n",
            )
            .ok();
            return;
        }
    };
}

/// Network namespaces made by a test, deleted on drop (also on failure).
struct Netns {
    names: Vec<String>,
}

impl Netns {
    /// Fresh namespaces, set up as a cloud VM's network stack is: a NIC answers ARP only for
    /// its own addresses (several NICs share one vSwitch).
    fn create(names: &[String]) -> Netns {
        for n in names {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(std::process::Stdio::null())
                .status();
            sh(&["ip", "netns", "add", n]);
            for (k, v) in [
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
                ("net.ipv4.conf.default.arp_ignore", "1"),
                ("net.ipv4.conf.default.arp_announce", "2"),
            ] {
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    n,
                    "sysctl",
                    "-qw",
                    &format!("{k}={v}"),
                ]);
            }
        }
        Netns {
            names: names.to_vec(),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn try_sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn links(ns: &str) -> Vec<Value> {
    serde_json::from_str(&sh(&["ip", "-n", ns, "-j", "link", "show"])).unwrap()
}

fn link_by_mac(ns: &str, mac: &str) -> Option<Value> {
    links(ns)
        .into_iter()
        .find(|l| l["address"].as_str() == Some(mac))
}

fn wait_status(mock: &Mock, eni: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = mock.ok(
            "DescribeNetworkInterfaceAttribute",
            &[("NetworkInterfaceId", eni)],
        );
        if v["Status"] == want {
            return;
        }
        assert!(Instant::now() < deadline, "{eni} never became {want}: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn world(tag: &str, a: &str, b: &str) -> Value {
    let mut w = default_world();
    w["instances"][0]["netns"] = json!(a);
    w["instances"][1]["netns"] = json!(b);
    w["hypervisor"] = json!({ "vpc_netns": format!("mcvpc-{tag}") });
    w["timing"]["attach_ms"] = json!(200);
    w["timing"]["detach_ms"] = json!(100);
    w
}

#[test]
fn attached_enis_become_links_that_carry_traffic() {
    require_root!();
    let tag = format!("{}", std::process::id());
    let (a, b) = (format!("hva-{tag}"), format!("hvb-{tag}"));
    let _ns = Netns::create(&[a.clone(), b.clone()]);
    let vpc = format!("mcvpc-{tag}");
    let mut mock = Mock::start(&world(&tag, &a, &b));
    struct VpcGuard(String);
    impl Drop for VpcGuard {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.0])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    let _vpc = VpcGuard(vpc.clone());

    // Primary NICs: eth0 with the primary IP, up, and a default route via the gateway.
    let state = mock.state();
    let mac_a = state["enis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "eni-node-a-primary")
        .unwrap()["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let eth0 = link_by_mac(&a, &mac_a).expect("node a has its primary NIC");
    assert_eq!(eth0["ifname"], "eth0");
    assert!(sh(&["ip", "-n", &a, "-4", "addr", "show", "eth0"]).contains("192.168.1.10/24"));
    assert!(sh(&["ip", "-n", &a, "route", "show", "default"]).contains("via 192.168.1.253"));
    assert!(try_sh(&[
        "ip",
        "netns",
        "exec",
        &a,
        "ping",
        "-c1",
        "-W2",
        "192.168.1.11"
    ]));

    // Create and attach an ENI to node a: a new link with its MAC, down, no address.
    let eni = mock.ok(
        "CreateNetworkInterface",
        &[
            ("VSwitchId", "vsw-h1"),
            ("SecurityGroupId", "sg-nodes"),
            ("SecondaryPrivateIpAddressCount", "1"),
        ],
    );
    let eni_id = eni["NetworkInterfaceId"].as_str().unwrap().to_string();
    let eni_mac = eni["MacAddress"].as_str().unwrap().to_string();
    let eni_ip = eni["PrivateIpAddress"].as_str().unwrap().to_string();
    assert!(link_by_mac(&a, &eni_mac).is_none());
    mock.ok(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &eni_id), ("InstanceId", "i-node-a")],
    );
    wait_status(&mock, &eni_id, "InUse");
    let link = link_by_mac(&a, &eni_mac).expect("the attached ENI is a link in node a");
    let ifname = link["ifname"].as_str().unwrap().to_string();
    assert_eq!(ifname, "eth1");
    assert!(
        !link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "a new NIC is down until the node brings it up: {link}"
    );
    let state = mock.state();
    let inst = state["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "i-node-a")
        .unwrap()
        .clone();
    assert_eq!(inst["links"][&eni_id], "eth1", "{inst}");

    // Configure it as a node would, in a route table of its own, and reach it from node b.
    sh(&[
        "ip",
        "-n",
        &a,
        "addr",
        "add",
        &format!("{eni_ip}/24"),
        "dev",
        &ifname,
    ]);
    sh(&["ip", "-n", &a, "link", "set", &ifname, "up"]);
    sh(&[
        "ip", "-n", &a, "rule", "add", "from", &eni_ip, "table", "1001",
    ]);
    sh(&[
        "ip",
        "-n",
        &a,
        "route",
        "add",
        "default",
        "via",
        "192.168.1.253",
        "dev",
        &ifname,
        "table",
        "1001",
    ]);
    assert!(
        try_sh(&["ip", "netns", "exec", &b, "ping", "-c1", "-W2", &eni_ip]),
        "node b reaches the ENI's address on node a"
    );

    // The metadata service answers inside the VPC, by the caller's source address.
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &b,
        "python3",
        "-c",
        "import urllib.request;print(urllib.request.urlopen('http://100.100.100.200/latest/meta-data/instance-id',timeout=5).read().decode())",
    ]);
    assert_eq!(out.trim(), "i-node-b");
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &a,
        "python3",
        "-c",
        "import urllib.request;print(urllib.request.urlopen('http://100.100.100.200/latest/meta-data/network/interfaces/macs/',timeout=5).read().decode())",
    ]);
    assert!(out.contains(&format!("{eni_mac}/")), "{out}");

    // Detach: the link goes away.
    mock.ok(
        "DetachNetworkInterface",
        &[("NetworkInterfaceId", &eni_id), ("InstanceId", "i-node-a")],
    );
    wait_status(&mock, &eni_id, "Available");
    assert!(
        link_by_mac(&a, &eni_mac).is_none(),
        "detached ENI's link is gone"
    );

    // SIGTERM: the VPC namespace (and every link) is removed.
    let st = mock
        .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10))
        .expect("mock exits on SIGTERM");
    assert!(st.success(), "{st:?}");
    let list = sh(&["ip", "netns", "list"]);
    assert!(!list.contains(&vpc), "VPC namespace removed: {list}");
    assert!(link_by_mac(&a, &mac_a).is_none(), "eth0 went with it");
}

#[test]
fn runtime_bind_and_restart_with_state_replugs() {
    require_root!();
    let tag = format!("r{}", std::process::id());
    let a = format!("hva-{tag}");
    // Node b stays unbound: it is there to show a runtime bind touches only node a.
    let _ns = Netns::create(&[a.clone(), format!("hvb-{tag}")]);
    let vpc = format!("mcvpc-{tag}");
    struct VpcGuard(String);
    impl Drop for VpcGuard {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.0])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    let _vpc = VpcGuard(vpc.clone());
    let mut w = default_world();
    w["hypervisor"] = json!({ "vpc_netns": vpc });
    w["timing"]["attach_ms"] = json!(100);
    let mut mock = Mock::start_with_state(&w);

    // Bind at run time.
    let (st, resp) = mock.admin(
        "POST",
        "/_admin/bind",
        Some(&json!({"instance": "i-node-a", "netns": a})),
    );
    assert_eq!(st, 200, "{}", resp.text());
    assert!(sh(&["ip", "-n", &a, "-4", "addr", "show", "eth0"]).contains("192.168.1.10/24"));
    let (st, resp) = mock.admin(
        "POST",
        "/_admin/bind",
        Some(&json!({"instance": "i-nope", "netns": a})),
    );
    assert_eq!(st, 400, "{}", resp.text());

    let eni = mock.ok(
        "CreateNetworkInterface",
        &[("VSwitchId", "vsw-h1"), ("SecurityGroupId", "sg-nodes")],
    );
    let eni_id = eni["NetworkInterfaceId"].as_str().unwrap().to_string();
    let eni_mac = eni["MacAddress"].as_str().unwrap().to_string();
    mock.ok(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", &eni_id), ("InstanceId", "i-node-a")],
    );
    wait_status(&mock, &eni_id, "InUse");
    assert!(link_by_mac(&a, &eni_mac).is_some());

    // kill -9, remove the link behind the mock's back, restart: the link is plugged again.
    mock.kill9();
    let name = link_by_mac(&a, &eni_mac).unwrap()["ifname"]
        .as_str()
        .unwrap()
        .to_string();
    sh(&["ip", "-n", &a, "link", "del", &name]);
    mock.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while link_by_mac(&a, &eni_mac).is_none() {
        assert!(
            Instant::now() < deadline,
            "link not re-plugged after restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = mock.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
}
