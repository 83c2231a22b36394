//! veth mode through the whole stack: mock cloud + hypervisor, one eni-manager per node
//! namespace, the eni-cni binary wiring pods. Real TCP pod to pod across nodes (both ways),
//! node to pod (the kubelet probe path), pod to pod on one node, and egress through the ENI
//! that owns the pod's address (its link's packet counter moves, the primary NIC's does not,
//! the receiver sees the pod's address). Needs root: otherwise says SKIPPED and returns.

#![allow(clippy::print_stdout, reason = "the test reports what it measured")]

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use common::*;
use eni_rpc::CheckRequest;
use serde_json::json;

#[test]
fn veth_pods_talk_across_nodes_and_egress_through_their_eni() {
    require_root!();
    let c = Cluster::start();
    let mut a1 = c.add_pod(Node::A, "veth", &json!({}));
    let mut a2 = c.add_pod(Node::A, "veth", &json!({}));
    let mut b1 = c.add_pod(Node::B, "veth", &json!({}));
    let ips: BTreeSet<Ipv4Addr> = [a1.ip, a2.ip, b1.ip].into();
    assert_eq!(ips.len(), 3, "three pods, three addresses: {ips:?}");
    println!("pods: a1 {} a2 {} b1 {}", a1.ip, a2.ip, b1.ip);

    // The result: the host end and the pod's eth0, the address as /32 via 169.254.1.1.
    let r = &a1.result;
    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(r["ips"][0]["address"], format!("{}/32", a1.ip));
    assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
    let pod_if = r["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sandbox"].is_string())
        .expect("the pod interface is listed");
    assert_eq!(pod_if["name"], "eth0");
    assert_eq!(a1.ns.link_with_addr(a1.ip).as_deref(), Some("eth0"));

    // The address belongs to an ENI of node A, in the manager and in the cloud.
    let alloc =
        c.a.client()
            .check(CheckRequest {
                container_id: a1.container.clone(),
                ifname: "eth0".into(),
            })
            .expect("the manager holds a1");
    assert_eq!(alloc.ip, a1.ip);
    assert!(!alloc.exclusive);
    let eni = c.mock.eni(&alloc.eni_id);
    assert_eq!(eni["instance"], "i-node-a", "{eni}");
    assert!(
        eni["private_ips"]
            .as_array()
            .unwrap()
            .iter()
            .any(|ip| *ip == a1.ip.to_string()),
        "the mock's ENI {} holds {}: {eni}",
        alloc.eni_id,
        a1.ip
    );
    let eni_link = alloc.host_ifname.clone();
    assert_eq!(
        c.node_a.links()[&eni_link]["address"],
        eni["mac"],
        "{eni_link} on node A is the ENI {}",
        alloc.eni_id
    );

    // 1. Pod A1 -> pod B1, across nodes; and back, B1 -> A1.
    let srv_b1 = TcpServer::start(&b1.ns, b1.ip, 8080);
    let x = tcp_exchange(&a1.ns, &srv_b1, 5);
    assert_eq!(x.local, a1.ip);
    assert_eq!(x.seen_by_server, [a1.ip].into(), "B1 sees A1's own address");
    let srv_a1 = TcpServer::start(&a1.ns, a1.ip, 8080);
    let x = tcp_exchange(&b1.ns, &srv_a1, 5);
    assert_eq!(x.seen_by_server, [b1.ip].into(), "A1 sees B1's own address");
    println!("a1 <-> b1 across nodes: 5 + 5 round trips");
    // The VPC gateway's MAC is fixed (ENIs joining the vSwitch never change it).
    for node in [&c.node_a, &c.node_b] {
        let neigh = node.ip(&["neigh", "show", &GATEWAY.to_string()]);
        assert!(
            neigh.contains("ee:ff:ff:ff:ff:ff"),
            "{}: {neigh}",
            node.name
        );
    }

    // 2. Node A -> A1: the kubelet's probe path.
    let x = tcp_exchange(&c.node_a, &srv_a1, 3);
    assert_eq!(x.seen_by_server, [x.local].into());
    println!("node A ({}) -> a1: 3 round trips", x.local);

    // 3. A2 -> A1 on the same node.
    let x = tcp_exchange(&a2.ns, &srv_a1, 3);
    assert_eq!(x.seen_by_server, [a2.ip].into());
    println!("a2 -> a1 on node A: 3 round trips");

    // 4. Egress: A1 -> node B's primary address leaves node A through A1's ENI, not eth0.
    let srv_node_b = TcpServer::start(&c.node_b, c.ip_b, 9090);
    let (eni_before, eth0_before) = (c.node_a.tx_packets(&eni_link), c.node_a.tx_packets("eth0"));
    let rounds = 50;
    let x = tcp_exchange(&a1.ns, &srv_node_b, rounds);
    let (eni_after, eth0_after) = (c.node_a.tx_packets(&eni_link), c.node_a.tx_packets("eth0"));
    let (eni_tx, eth0_tx) = (eni_after - eni_before, eth0_after - eth0_before);
    println!(
        "egress a1 -> node B, {rounds} round trips: {eni_link} tx +{eni_tx}, eth0 tx +{eth0_tx}"
    );
    assert_eq!(
        x.seen_by_server,
        [a1.ip].into(),
        "node B sees A1's pod address as the source (no masquerade)"
    );
    assert!(
        eni_tx >= rounds as u64,
        "at least one packet per round trip left through {eni_link}: +{eni_tx}"
    );
    assert!(
        eth0_tx < 5,
        "the pod's traffic did not leave through the primary NIC eth0: +{eth0_tx}"
    );

    // Everything goes away with DEL.
    drop((srv_a1, srv_b1, srv_node_b));
    for pod in [&mut a1, &mut a2, &mut b1] {
        c.del_pod(pod);
    }
    for (node, m) in [(&c.node_a, &c.a), (&c.node_b, &c.b)] {
        assert!(
            m.allocations().is_empty(),
            "{} still holds allocations",
            node.name
        );
        assert_eq!(m.status().pool.allocated, 0);
        let leftovers: Vec<String> = node
            .links()
            .into_keys()
            .filter(|n| n.starts_with("eni"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "host veths left on {}: {leftovers:?}",
            node.name
        );
        let rules = node.ip(&["rule", "show"]);
        for ip in &ips {
            assert!(
                !rules.contains(&format!("{ip} ")),
                "a rule for {ip} is left on {}:\n{rules}",
                node.name
            );
        }
        assert!(node.ip(&["neigh", "show", "proxy"]).trim().is_empty());
    }
    let held = c.mock.assert_no_address_twice();
    println!("mock: {held} addresses, none held twice");
}
