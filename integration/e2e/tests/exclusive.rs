//! Exclusive ENI mode through the whole stack: the pod's eth0 is the ENI's own link (the MAC
//! the cloud reports), real TCP to and from a pod on the other node, DEL hands the link back
//! to the node and the ENI back to the manager, which gives it to the next exclusive pod. An
//! ADD that fails after the manager handed out an ENI leaves the ENI on the node and idle.
//! Needs root: otherwise says SKIPPED and returns.

#![allow(clippy::print_stdout, reason = "the test reports what it measured")]

mod common;

use std::time::Duration;

use common::*;
use eni_rpc::CheckRequest;
use serde_json::json;

#[test]
fn exclusive_eni_pod_owns_the_nic_and_gives_it_back() {
    require_root!();
    let c = Cluster::start();
    let mut b1 = c.add_pod(Node::B, "veth", &json!({}));

    // An ADD that fails after the allocation: the manager is creating the exclusive ENI
    // (attach slowed down), and meanwhile something takes eth0 in the pod's namespace.
    c.mock
        .set_faults(&json!({"actions": {"AttachNetworkInterface": {"latency_ms": 1500}}}));
    let failed_ns = Netns::create(&format!("pod-x-{}", std::process::id()));
    let failed_id = format!("e2efail{}", std::process::id());
    let failed_path = failed_ns.path();
    let conf = c.netconf(Node::A, "exclusive", &json!({}));
    let child = c.cni_spawn(
        Node::A,
        &CniEnv::add(&failed_id, &failed_path, "eth0", ""),
        &conf,
    );
    assert!(
        wait_for(Duration::from_secs(10), || c
            .a
            .log_has(&["waiting for the pool", &failed_id])),
        "the ADD never waited for an exclusive ENI"
    );
    failed_ns.ip(&["link", "add", "eth0", "type", "bridge"]);
    let out = child.wait_with_output().unwrap();
    let run = Run {
        command: "ADD".into(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: Duration::ZERO,
    };
    let why = run.err(108);
    println!("exclusive ADD failing mid-way: {why}");
    assert!(why.contains("released"), "{why}");
    c.mock.set_faults(&json!({}));
    let st = c.a.status();
    assert_eq!(st.pool.allocated, 0, "nothing is held after the failed ADD");
    let excl: Vec<_> = st
        .pool
        .enis
        .iter()
        .filter(|e| {
            e.ips.len() <= 1 && e.exclusive_to.is_none() && e.status.eq_ignore_ascii_case("ready")
        })
        .collect();
    assert_eq!(
        excl.len(),
        1,
        "the exclusive ENI is idle: {:?}",
        st.pool.enis
    );
    let spare_mac = excl[0].mac.clone();
    assert!(
        c.node_a.link_by_mac(&spare_mac).is_some(),
        "the ENI's link stayed on node A"
    );
    let names: Vec<String> = failed_ns.links().into_keys().collect();
    assert_eq!(names, ["eth0", "lo"], "only the intruder is in the pod");
    drop(failed_ns);

    // The real thing: an exclusive pod, asked for through runtimeConfig.
    let mut x1 = c.add_pod(
        Node::A,
        "auto",
        &json!({"capabilities": {"exclusiveEni": true}, "runtimeConfig": {"exclusiveEni": true}}),
    );
    let alloc =
        c.a.client()
            .check(CheckRequest {
                container_id: x1.container.clone(),
                ifname: "eth0".into(),
            })
            .expect("the manager holds x1");
    assert!(alloc.exclusive);
    let eni = c.mock.eni(&alloc.eni_id);
    let mac = eni["mac"].as_str().unwrap().to_string();
    assert_eq!(mac, spare_mac, "the idle exclusive ENI was used");
    assert_eq!(eni["instance"], "i-node-a");
    assert_eq!(eni["status"], "InUse");
    assert_eq!(eni["primary_ip"], x1.ip.to_string());
    let eth0 = &x1.ns.links()["eth0"];
    assert_eq!(
        eth0["address"], mac,
        "the pod's eth0 is the ENI (MAC {mac})"
    );
    assert!(
        c.node_a.link_by_mac(&mac).is_none(),
        "the ENI's link left node A"
    );
    assert_eq!(x1.result["ips"][0]["address"], format!("{}/24", x1.ip));
    assert_eq!(x1.result["ips"][0]["gateway"], GATEWAY.to_string());
    assert!(x1
        .ns
        .ip(&["route", "show", "default"])
        .contains(&format!("via {GATEWAY} dev eth0")));
    println!(
        "x1 {} on {} (MAC {mac}) as eth0 in its pod",
        x1.ip, alloc.eni_id
    );
    c.check_pod(&x1).ok();

    // TCP both ways with a pod on the other node, and from its own node.
    let srv_b1 = TcpServer::start(&b1.ns, b1.ip, 8080);
    let x = tcp_exchange(&x1.ns, &srv_b1, 5);
    assert_eq!(x.seen_by_server, [x1.ip].into());
    let srv_x1 = TcpServer::start(&x1.ns, x1.ip, 8080);
    let x = tcp_exchange(&b1.ns, &srv_x1, 5);
    assert_eq!(x.seen_by_server, [b1.ip].into());
    let x = tcp_exchange(&c.node_a, &srv_x1, 3);
    assert_eq!(x.seen_by_server, [c.ip_a].into());
    println!("x1 <-> b1 across nodes and node A -> x1: ok");
    drop((srv_b1, srv_x1));

    // DEL: the link goes back to node A under its name, down, no address; the manager has
    // the ENI idle again.
    let name_before = alloc.host_ifname.clone();
    c.del_pod(&mut x1);
    let back = c
        .node_a
        .link_by_mac(&mac)
        .expect("the ENI's link is back on node A");
    assert_eq!(back["ifname"], name_before.as_str());
    assert!(c.node_a.link_with_addr(x1.ip).is_none());
    assert!(!x1.ns.links().contains_key("eth0"));
    let st = c.a.status();
    assert_eq!(st.pool.allocated, 0);
    let e = st
        .pool
        .enis
        .iter()
        .find(|e| e.eni_id == alloc.eni_id)
        .expect("the manager still has the ENI");
    assert!(e.exclusive_to.is_none(), "{e:?}");

    // The next exclusive pod (mode exclusive in the netconf) gets the same ENI, at once.
    let mut x2 = c.add_pod(Node::A, "exclusive", &json!({}));
    assert_eq!(x2.ns.links()["eth0"]["address"], mac);
    let srv_b1 = TcpServer::start(&b1.ns, b1.ip, 8081);
    let x = tcp_exchange(&x2.ns, &srv_b1, 3);
    assert_eq!(x.seen_by_server, [x2.ip].into());
    drop(srv_b1);
    c.del_pod(&mut x2);
    c.del_pod(&mut b1);
    assert!(c.node_a.link_by_mac(&mac).is_some());

    for m in [&c.a, &c.b] {
        assert!(m.allocations().is_empty());
        assert_eq!(m.status().pool.allocated, 0);
    }
    let held = c.mock.assert_no_address_twice();
    println!("mock: {held} addresses, none held twice");
}
