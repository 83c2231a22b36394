//! ADD / CHECK / DEL / GC through the real stack (veth mode): CHECK finds what is missing,
//! GC releases what the runtime no longer lists and cleans the node, DEL is idempotent and
//! works after the pod's namespace is gone, and an ADD that fails half-way (or before it
//! starts) leaves the node as it was and the address idle in the manager. At the end no
//! allocation is left and the cloud gave no address twice. Needs root: otherwise says
//! SKIPPED and returns.

#![allow(clippy::print_stdout, reason = "the test reports what it measured")]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use eni_rpc::{AllocateRequest, ReleaseRequest};
use serde_json::json;

#[test]
fn add_check_del_gc_and_failures_leave_nothing_behind() {
    require_root!();
    // One shared ENI per node: a refill is an assign to it, never a new ENI, so the node's
    // kernel state is comparable before and after.
    let mut pool = pool_settings();
    pool["max_enis"] = json!(2);
    let c = Cluster::start_with(&pool);
    let node = &c.node_a;
    let clean = node.snapshot();

    let mut p1 = c.add_pod(Node::A, "veth", &json!({}));
    let mut p2 = c.add_pod(Node::A, "veth", &json!({}));
    let mut p3 = c.add_pod(Node::A, "veth", &json!({}));
    assert_eq!(c.a.allocations().len(), 3);

    // STATUS: the manager answers and has idle addresses.
    c.cni(Node::A, &CniEnv::bare("STATUS"), &p1.conf).ok();

    // CHECK: fine; then finds a missing default route in the pod; fine again once restored.
    c.check_pod(&p1).ok();
    p1.ns.ip(&["route", "del", "default"]);
    let why = c.check_pod(&p1).err(108);
    assert!(why.contains("default route"), "{why}");
    p1.ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    c.check_pod(&p1).ok();
    // CHECK of a container the manager does not know: 3.
    let mut ghost = p1.conf.clone();
    ghost["prevResult"] = p1.result.clone();
    let env = CniEnv {
        container: Some("e2e-ghost"),
        ..p1.env("CHECK")
    };
    c.cni(Node::A, &env, &ghost).err(3);
    println!("CHECK: ok, missing default route found (108), unknown container (3)");

    // GC: the runtime lists p1 and p3 only; p2 is released and its node side removed.
    let host_links = |n: &Netns| -> Vec<String> {
        n.links()
            .into_keys()
            .filter(|l| l.starts_with("eni"))
            .collect()
    };
    assert_eq!(host_links(node).len(), 3);
    let gc_conf = c.netconf(
        Node::A,
        "veth",
        &json!({"cni.dev/valid-attachments": [
            {"containerID": p1.container, "ifname": "eth0"},
            {"containerID": p3.container, "ifname": "eth0"},
        ]}),
    );
    c.cni(Node::A, &CniEnv::bare("GC"), &gc_conf).ok();
    let held: Vec<String> =
        c.a.allocations()
            .into_iter()
            .map(|a| a.container_id)
            .collect();
    assert_eq!(held.len(), 2);
    assert!(!held.contains(&p2.container), "GC released p2: {held:?}");
    assert_eq!(host_links(node).len(), 2, "p2's host veth is gone");
    assert!(!node.ip(&["rule", "show"]).contains(&format!("{} ", p2.ip)));
    assert_eq!(
        c.a.ip_owner(p2.ip).map(|o| o.1),
        Some(None),
        "p2's address is idle"
    );
    c.check_pod(&p1).ok();
    // DEL after GC: nothing left to do, still success.
    c.del_pod(&mut p2);
    println!("GC: released p2 ({}), kept p1 and p3", p2.ip);

    // DEL twice.
    c.del_pod(&mut p1);
    c.del_pod(&mut p1);
    assert_eq!(c.a.ip_owner(p1.ip).map(|o| o.1), Some(None));
    println!("DEL twice: ok");

    // DEL after the pod's namespace is gone (the runtime removed it first).
    p3.ns.delete();
    c.del_pod(&mut p3);
    c.del_pod(&mut p3);
    assert_eq!(c.a.ip_owner(p3.ip).map(|o| o.1), Some(None));
    assert!(c.a.allocations().is_empty());
    println!("DEL after the namespace is gone, twice: ok");
    c.a.wait_settled(MIN_IDLE);
    assert_eq!(node.snapshot(), clean, "node A is as before the pods");

    // ADD with a namespace that is already gone: 3, nothing allocated, nothing changed.
    let mut gone = Netns::create(&format!("pod-gone-{}", std::process::id()));
    let gone_path = gone.path();
    gone.delete();
    let run = c.cni(
        Node::A,
        &CniEnv::add("e2e-gone", &gone_path, "eth0", ""),
        &c.netconf(Node::A, "veth", &json!({})),
    );
    let why = run.err(3);
    println!("ADD into a vanished namespace: {why}");
    assert!(c.a.allocations().is_empty());
    assert_eq!(node.snapshot(), clean);

    // ADD that fails half-way: the pool is empty and refills slowly, so ADD waits for its
    // address; meanwhile eth0 appears in the pod's namespace and the veth cannot be made.
    c.mock
        .set_faults(&json!({"actions": {"AssignPrivateIpAddresses": {"latency_ms": 1500}}}));
    let mut client = c.a.client();
    let mut drained = Vec::new();
    while c.a.status().pool.idle > 0 {
        let id = format!("e2e-drain-{}", drained.len());
        let a = client
            .allocate(AllocateRequest {
                container_id: id.clone(),
                ifname: "eth0".into(),
                netns: "/run/netns/none".into(),
                pod: None,
                exclusive: false,
                timeout_ms: 10_000,
                port_mappings: Vec::new(),
            })
            .expect("drain the pool");
        drained.push((id, a.ip));
        assert!(drained.len() < 20, "the pool never ran dry");
    }
    let before = node.snapshot();
    let pod = Netns::create(&format!("pod-half-{}", std::process::id()));
    let pod_path = pod.path();
    let id = format!("e2ehalf{}", std::process::id());
    let conf = c.netconf(Node::A, "veth", &json!({}));
    let child = c.cni_spawn(Node::A, &CniEnv::add(&id, &pod_path, "eth0", ""), &conf);
    assert!(
        wait_for(Duration::from_secs(10), || c
            .a
            .log_has(&["waiting for the pool", &id])),
        "the ADD never waited for the pool"
    );
    pod.ip(&["link", "add", "eth0", "type", "bridge"]);
    let out = child.wait_with_output().unwrap();
    let run = Run {
        command: "ADD".into(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: Duration::ZERO,
    };
    let why = run.err(108);
    println!("veth ADD failing half-way: {why}");
    let ip: Ipv4Addr = why
        .split("undone and ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("the error names the released address: {why}"));
    assert_eq!(
        c.a.ip_owner(ip).map(|o| o.1),
        Some(None),
        "{ip} is idle in the manager"
    );
    assert!(c.a.allocations().iter().all(|a| a.container_id != id));
    let names: Vec<String> = pod.links().into_keys().collect();
    assert_eq!(names, ["eth0", "lo"], "only the intruder is in the pod");
    c.mock.set_faults(&json!({}));
    c.a.wait_settled(MIN_IDLE);
    assert_eq!(
        node.snapshot(),
        before,
        "the failed ADD left nothing on node A"
    );
    drop(pod);
    for (id, _) in &drained {
        client
            .release(ReleaseRequest {
                container_id: id.clone(),
                ifname: "eth0".into(),
            })
            .expect("release");
    }

    // At the end: nothing allocated, node A as clean as at the start, no address twice.
    let st = c.a.status();
    assert_eq!(st.pool.allocated, 0);
    assert!(c.a.allocations().is_empty());
    assert_eq!(node.snapshot(), clean);
    let held = c.mock.assert_no_address_twice();
    println!(
        "end: 0 allocations, {} idle, mock holds {held} addresses, none twice",
        st.pool.idle
    );
}
