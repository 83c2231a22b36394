//! Unit tests of every mode's ADD, DEL, CHECK and undo-on-failure, against two linked
//! `FakeNetlink`s (node and pod).

use std::net::Ipv4Addr;

use eni_kernel::{FakeNetlink, LinkKind, NeighState, Netlink, Scope, TABLE_MAIN};
use eni_rpc::Allocation;

use super::testing::World;
use super::*;

fn alloc(exclusive: bool) -> Allocation {
    Allocation {
        container_id: "c0ffee".into(),
        ifname: "eth0".into(),
        netns: "/var/run/netns/pod".into(),
        pod: None,
        ip: Ipv4Addr::new(10, 0, 0, 7),
        prefix_len: 24,
        gateway: Ipv4Addr::new(10, 0, 0, 1),
        subnet: "10.0.0.0/24".parse().unwrap(),
        eni_id: "eni-1".into(),
        eni_mac: "02:00:00:00:00:e1".into(),
        host_ifname: "eth1".into(),
        route_table: 1001,
        mtu: 9001,
        exclusive,
        allocated_at_ms: 0,
        policy_pin_dir: None,
    }
}

fn spec(a: &Allocation) -> PodSpec<'_> {
    PodSpec {
        container_id: "c0ffee",
        ifname: "eth0",
        sandbox: "/var/run/netns/pod",
        alloc: a,
        mtu: 1500,
        before_up: None,
    }
}

/// What a namespace holds, independent of link indexes.
fn snapshot(f: &FakeNetlink) -> String {
    let mut links: Vec<String> = f
        .links
        .values()
        .map(|l| format!("{}:{:?}:{:?}", l.name, l.kind, l.mac))
        .collect();
    links.sort();
    format!(
        "links={links:?} addrs={} routes={:?} rules={:?} neighs={:?}",
        f.addrs.len(),
        f.routes,
        f.rules,
        f.neighs
    )
}

fn add(
    w: &mut World,
    dp: Datapath,
    a: &Allocation,
) -> (WireResult<crate::result::Attachment>, Vec<String>) {
    let s = spec(a);
    let mut ns = w.namespaces(true);
    let mut journal = Journal::default();
    let r = match dp {
        Datapath::Veth => veth::add(&mut ns, &s, &mut journal),
        Datapath::Ipvlan => ipvlan::add(&mut ns, &s, &mut journal),
        Datapath::Exclusive => exclusive::add(&mut ns, &s, &mut journal),
    };
    let undo_errors = if r.is_err() {
        journal.rollback(&mut ns)
    } else {
        Vec::new()
    };
    (r, undo_errors)
}

#[test]
fn veth_add_builds_the_whole_datapath() {
    let mut w = World::new();
    let a = alloc(false);
    let (r, _) = add(&mut w, Datapath::Veth, &a);
    let att = r.unwrap();
    let host_name = host_veth_name("c0ffee", "eth0");
    assert_eq!(att.host_if.as_ref().unwrap().0, host_name);
    assert_eq!(att.address.to_string(), "10.0.0.7/32");
    assert_eq!(att.gateway, veth::GATEWAY);

    let host = w.host_fake();
    let hl = host.links.values().find(|l| l.name == host_name).unwrap();
    assert!(hl.up);
    assert_eq!(hl.mtu, 1500);
    assert!(host.routes.iter().any(|r| r.table == TABLE_MAIN
        && r.dst == Some("10.0.0.7/32".parse().unwrap())
        && r.oif == Some(hl.index)
        && r.scope == Scope::Link));
    let to = host
        .rules
        .iter()
        .find(|r| r.priority == Some(1000))
        .unwrap();
    assert_eq!(
        (to.to, to.table),
        (Some("10.0.0.7/32".parse().unwrap()), TABLE_MAIN)
    );
    let from = host
        .rules
        .iter()
        .find(|r| r.priority == Some(2000))
        .unwrap();
    assert_eq!(
        (from.from, from.table),
        (Some("10.0.0.7/32".parse().unwrap()), 1001)
    );
    let eth1 = host
        .links
        .values()
        .find(|l| l.name == "eth1")
        .unwrap()
        .index;
    assert!(host
        .neighs
        .iter()
        .any(|n| n.proxy && n.index == eth1 && n.ip == a.ip));
    let host_mac = hl.mac;
    drop(host);

    let pod = w.pod_fake();
    let pl = pod.links.values().find(|l| l.name == "eth0").unwrap();
    assert!(pl.up);
    assert!(pod
        .addrs
        .iter()
        .any(|x| x.index == pl.index && x.address.to_string() == "10.0.0.7/32"));
    let gw = pod.neighs.iter().find(|n| n.ip == veth::GATEWAY).unwrap();
    assert_eq!(
        (gw.mac, gw.state, gw.proxy),
        (host_mac, NeighState::Permanent, false)
    );
    assert!(pod
        .routes
        .iter()
        .any(|r| r.dst.is_none() && r.gateway == Some(veth::GATEWAY) && r.oif == Some(pl.index)));
    assert!(pod
        .routes
        .iter()
        .any(|r| r.dst == Some("169.254.1.1/32".parse().unwrap()) && r.scope == Scope::Link));
}

#[test]
fn veth_add_undoes_everything_when_any_step_fails() {
    // (side, op): every kernel step of veth ADD, failed in turn.
    let steps: [(bool, &'static str); 8] = [
        (true, "link add veth"),
        (true, "link set up"),
        (false, "addr add"),
        (false, "link set up"),
        (false, "neigh replace"),
        (false, "route replace"),
        (true, "route replace"),
        (true, "rule add"),
    ];
    for (on_host, op) in steps {
        let mut w = World::new();
        let before = (snapshot(&w.host_fake()), snapshot(&w.pod_fake()));
        if on_host {
            w.host_fake().fail_next(op, libc::EPERM);
        } else {
            w.pod_fake().fail_next(op, libc::EPERM);
        }
        let a = alloc(false);
        let (r, undo_errors) = add(&mut w, Datapath::Veth, &a);
        let err = r.unwrap_err();
        assert!(undo_errors.is_empty(), "{op}: {undo_errors:?}");
        assert_eq!(err.source.errno(), Some(libc::EPERM), "{op}: {err}");
        let after = (snapshot(&w.host_fake()), snapshot(&w.pod_fake()));
        assert_eq!(
            before, after,
            "leftovers after a failed {op} (host side {on_host})"
        );
    }
    // The last step, the proxy entry, with an ENI link that is not there.
    let mut w = World::new();
    let before = (snapshot(&w.host_fake()), snapshot(&w.pod_fake()));
    let mut a = alloc(false);
    a.host_ifname = "eth9".into();
    let (r, undo_errors) = add(&mut w, Datapath::Veth, &a);
    let err = r.unwrap_err();
    assert!(err.what.contains("eth9"), "{err}");
    assert!(undo_errors.is_empty());
    assert_eq!(before, (snapshot(&w.host_fake()), snapshot(&w.pod_fake())));
}

#[test]
fn veth_del_is_idempotent_and_works_without_the_pod() {
    for pod_present in [true, false] {
        let mut w = World::new();
        let before_host = snapshot(&w.host_fake());
        let a = alloc(false);
        add(&mut w, Datapath::Veth, &a).0.unwrap();
        for _ in 0..2 {
            let mut ns = w.namespaces(pod_present);
            if let Some(pod) = ns.pod.as_deref_mut() {
                del_link_by_name(pod, "eth0").unwrap();
            }
            let errors = veth::del_host_side(ns.host, "c0ffee", "eth0", a.ip, 1001, "eth1");
            assert!(errors.is_empty(), "{errors:?}");
        }
        assert_eq!(
            before_host,
            snapshot(&w.host_fake()),
            "pod present: {pod_present}"
        );
    }
}

#[test]
fn veth_check_finds_what_is_missing() {
    let mut w = World::new();
    let a = alloc(false);
    add(&mut w, Datapath::Veth, &a).0.unwrap();
    let s = spec(&a);
    assert_eq!(
        veth::check(&mut w.namespaces(true), &s),
        Vec::<String>::new()
    );
    w.host_fake().rules.retain(|r| r.priority != Some(2000));
    let pl = w.pod_fake().link_by_name("eth0").unwrap().index;
    w.pod_fake()
        .routes
        .retain(|r| !(r.dst.is_none() && r.oif == Some(pl)));
    let missing = veth::check(&mut w.namespaces(true), &s);
    assert_eq!(missing.len(), 2, "{missing:?}");
    assert!(missing[0].contains("rule"), "{missing:?}");
    assert!(
        missing[1].contains("default route via 169.254.1.1"),
        "{missing:?}"
    );
}

#[test]
fn exclusive_moves_the_eni_in_and_back() {
    let mut w = World::new();
    let before_host = snapshot(&w.host_fake());
    let a = alloc(true);
    let att = add(&mut w, Datapath::Exclusive, &a).0.unwrap();
    assert_eq!(att.address.to_string(), "10.0.0.7/24");
    assert_eq!(att.gateway, a.gateway);
    assert!(att.host_if.is_none());
    assert!(
        w.host_fake().link_by_name("eth1").is_err(),
        "moved out of the node"
    );
    {
        let pod = w.pod_fake();
        let l = pod.links.values().find(|l| l.name == "eth0").unwrap();
        assert_eq!(l.mac, Some("02:00:00:00:00:e1".parse().unwrap()));
        assert!(l.up);
        assert_eq!(l.mtu, 1500);
        assert!(pod
            .addrs
            .iter()
            .any(|x| x.address.to_string() == "10.0.0.7/24"));
        assert!(pod
            .routes
            .iter()
            .any(|r| r.dst.is_none() && r.gateway == Some(a.gateway) && !r.onlink));
    }
    let s = spec(&a);
    assert_eq!(
        exclusive::check(&mut w.namespaces(true), &s),
        Vec::<String>::new()
    );
    assert!(exclusive::del(&mut w.namespaces(true), &s).is_empty());
    assert!(
        exclusive::del(&mut w.namespaces(true), &s).is_empty(),
        "DEL twice"
    );
    let back = w.host_fake().link_by_name("eth1").unwrap();
    assert!(!back.up);
    assert!(w.host_fake().addrs.is_empty());
    assert_eq!(before_host, snapshot(&w.host_fake()));
    assert!(w.pod_fake().link_by_name("eth0").is_err());
}

#[test]
fn exclusive_add_failure_returns_the_eni() {
    for op in ["link set mtu", "addr add", "route replace", "link set up"] {
        let mut w = World::new();
        let before = (snapshot(&w.host_fake()), snapshot(&w.pod_fake()));
        w.pod_fake().fail_next(op, libc::EINVAL);
        let a = alloc(true);
        let (r, undo_errors) = add(&mut w, Datapath::Exclusive, &a);
        assert!(r.is_err(), "{op}");
        assert!(undo_errors.is_empty(), "{op}: {undo_errors:?}");
        assert_eq!(
            before,
            (snapshot(&w.host_fake()), snapshot(&w.pod_fake())),
            "{op}"
        );
    }
    // An ENI the node does not have: nothing moves.
    let mut w = World::new();
    let mut a = alloc(true);
    a.eni_mac = "02:00:00:00:00:99".into();
    let err = add(&mut w, Datapath::Exclusive, &a).0.unwrap_err();
    assert!(err.what.contains("02:00:00:00:00:99"), "{err}");
}

#[test]
fn ipvlan_builds_pod_slave_host_slave_and_route() {
    let mut w = World::new();
    let a = alloc(false);
    let att = add(&mut w, Datapath::Ipvlan, &a).0.unwrap();
    assert_eq!(att.address.to_string(), "10.0.0.7/24");
    let eth1 = w.host_fake().link_by_name("eth1").unwrap().index;
    let slave_name = ipvlan::host_slave_name(eth1);
    {
        let host = w.host_fake();
        let slave = host.links.values().find(|l| l.name == slave_name).unwrap();
        assert_eq!(
            (slave.kind.clone(), slave.parent),
            (Some(LinkKind::Ipvlan), Some(eth1))
        );
        assert!(slave.up);
        assert!(host
            .addrs
            .iter()
            .any(|x| x.index == slave.index && x.address.addr() == ipvlan::HOST_SLAVE_ADDR));
        assert!(host
            .routes
            .iter()
            .any(|r| r.dst == Some("10.0.0.7/32".parse().unwrap())
                && r.oif == Some(slave.index)
                && r.prefsrc == Some(ipvlan::HOST_SLAVE_ADDR)));
    }
    {
        let pod = w.pod_fake();
        let l = pod.links.values().find(|l| l.name == "eth0").unwrap();
        assert_eq!(l.kind, Some(LinkKind::Ipvlan));
        assert!(pod
            .addrs
            .iter()
            .any(|x| x.address.to_string() == "10.0.0.7/24"));
        assert!(pod
            .routes
            .iter()
            .any(|r| r.dst.is_none() && r.gateway == Some(a.gateway)));
        assert!(pod
            .routes
            .iter()
            .any(|r| r.dst == Some("169.254.2.1/32".parse().unwrap())));
    }
    let s = spec(&a);
    assert_eq!(
        ipvlan::check(&mut w.namespaces(true), &s),
        Vec::<String>::new()
    );
    // A second pod on the same ENI reuses the host slave.
    let mut b = alloc(false);
    b.ip = Ipv4Addr::new(10, 0, 0, 8);
    let s2 = PodSpec {
        container_id: "beef",
        ..spec(&b)
    };
    // The pod namespace of the first pod already holds eth0: use another name.
    let s2 = PodSpec {
        ifname: "eth1x",
        ..s2
    };
    ipvlan::add(&mut w.namespaces(true), &s2, &mut Journal::default()).unwrap();
    assert_eq!(
        w.host_fake()
            .links
            .values()
            .filter(|l| l.name == slave_name)
            .count(),
        1
    );
    // DEL removes the pod's slave and route, keeps the shared host slave.
    assert!(ipvlan::del(&mut w.namespaces(true), &s).is_empty());
    assert!(
        ipvlan::del(&mut w.namespaces(true), &s).is_empty(),
        "DEL twice"
    );
    assert!(w.pod_fake().link_by_name("eth0").is_err());
    assert!(!w
        .host_fake()
        .routes
        .iter()
        .any(|r| r.dst == Some("10.0.0.7/32".parse().unwrap())));
    assert!(w.host_fake().link_by_name(&slave_name).is_ok());
}

#[test]
fn ipvlan_add_failure_undoes_the_pod_side_and_route() {
    for (on_host, op) in [
        (false, "addr add"),
        (false, "route replace"),
        (true, "route replace"),
        (true, "link add ipvlan"),
        (false, "link set name"),
    ] {
        let mut w = World::new();
        let before_pod = snapshot(&w.pod_fake());
        if on_host {
            w.host_fake().fail_next(op, libc::EPERM);
        } else {
            w.pod_fake().fail_next(op, libc::EPERM);
        }
        let a = alloc(false);
        let (r, undo_errors) = add(&mut w, Datapath::Ipvlan, &a);
        assert!(r.is_err(), "{op}");
        assert!(undo_errors.is_empty(), "{op}: {undo_errors:?}");
        assert_eq!(before_pod, snapshot(&w.pod_fake()), "{op}");
        assert!(
            !w.host_fake()
                .routes
                .iter()
                .any(|r| r.dst == Some("10.0.0.7/32".parse().unwrap())),
            "{op}"
        );
    }
}

#[test]
fn ipvlan_without_kernel_support_says_so() {
    let mut w = World::new();
    w.host_fake().without_kind(&LinkKind::Ipvlan);
    let a = alloc(false);
    let err = add(&mut w, Datapath::Ipvlan, &a).0.unwrap_err();
    assert!(err.source.is_unsupported(), "{err}");
    assert!(err.to_string().contains("ipvlan"), "{err}");
}

#[test]
fn ipvlan_works_when_the_node_has_a_link_named_like_the_pod_interface() {
    // Nodes usually have an eth0 and so do pods: the kernel checks a new link's name in
    // the requesting (node's) namespace, so the slave is created under a temporary name
    // and renamed inside the pod.
    let mut w = World::new();
    w.host_fake()
        .add_nic("eth0", "02:00:00:00:00:e0".parse().unwrap(), 9001);
    let a = alloc(false);
    add(&mut w, Datapath::Ipvlan, &a).0.unwrap();
    let mut pod = w.pod_fake();
    let names: Vec<&str> = pod.links.values().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["lo", "eth0"],
        "no temporary name left in the pod"
    );
    assert_eq!(
        pod.link_by_name("eth0").unwrap().kind,
        Some(LinkKind::Ipvlan)
    );
    drop(pod);
    assert!(
        w.host_fake().link_by_name("eth0").is_ok(),
        "the node keeps its eth0"
    );
    let tmp = ipvlan::pod_slave_temp_name("c0ffee", "eth0");
    assert!(tmp.starts_with("ivt") && tmp.len() == 14, "{tmp}");
    assert!(eni_kernel::link::validate_link_name(&tmp).is_ok());
}
