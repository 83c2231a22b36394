//! Root tests of the real netlink layer, each in namespaces of its own.
//! Skipped, visibly, when not root.

mod common;

use std::os::fd::AsFd;

use common::{root_or_skip, thread_netns_inode, TestNs};
use eni_kernel::netns::{self, NetnsFd};
use eni_kernel::{
    kernel_supports, sysctl, Addr, Error, IpvlanAdd, IpvlanMode, LinkKind, MacAddr, MacvlanAdd,
    MacvlanMode, Neigh, NeighState, Netlink, Route, Rule, Scope, VethAdd,
};

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

/// A veth pair `a_name` (in `a`) <-> `b_name` (created directly in `b`), both up, with
/// `a_ip` and `b_ip` (CIDR) on them. Returns (a index, b index).
fn wire(a: &TestNs, a_name: &str, a_ip: &str, b: &TestNs, b_name: &str, b_ip: &str) -> (u32, u32) {
    let b_fd = b.fd.as_fd();
    let ia = a.with(|h| {
        let i = h.veth_add(&VethAdd::new(a_name, b_name).peer_netns(b_fd))?;
        h.link_set_up(i)?;
        h.addr_add(&Addr::new(i, a_ip.parse().unwrap()))?;
        Ok(i)
    });
    let ib = b.with(|h| {
        let i = h.link_by_name(b_name)?.index;
        h.link_set_up(i)?;
        h.addr_add(&Addr::new(i, b_ip.parse().unwrap()))?;
        Ok(i)
    });
    (ia, ib)
}

#[test]
fn veth_across_namespaces_with_addresses_and_ping() {
    if !root_or_skip("veth_across_namespaces_with_addresses_and_ping") {
        return;
    }
    let a = TestNs::new("va");
    let b = TestNs::new("vb");
    let b_fd = b.fd.as_fd();
    let peer_mac = mac("02:00:0a:63:00:02");
    let local_mac = mac("02:00:0a:63:00:01");
    let ia = a.with(|h| {
        h.veth_add(
            &VethAdd::new("hosta", "poda")
                .peer_netns(b_fd)
                .mtu(1400)
                .mac(local_mac)
                .peer_mac(peer_mac),
        )
    });
    let host = a.with(|h| h.link_by_index(ia));
    assert_eq!(host.name, "hosta");
    assert_eq!(host.kind, Some(LinkKind::Veth));
    assert_eq!(host.mtu, 1400);
    assert_eq!(host.mac, Some(local_mac));
    assert!(
        host.link_netnsid.is_some(),
        "peer lives in another netns: {host:?}"
    );
    assert!(!host.up);

    // The peer was created directly in b, found there by MAC.
    let pod = b.with(|h| h.link_by_mac(peer_mac));
    assert_eq!(pod.name, "poda");
    assert_eq!(pod.mtu, 1400);
    assert!(a
        .try_with(|h| h.link_by_name("poda"))
        .unwrap_err()
        .is_not_found());

    a.with(|h| {
        h.link_set_up(ia)?;
        h.addr_add(&Addr::new(ia, "10.99.0.1/24".parse().unwrap()))
    });
    b.with(|h| {
        h.link_set_up(pod.index)?;
        h.addr_add(
            &Addr::new(pod.index, "10.99.0.2/24".parse().unwrap())
                .broadcast("10.99.0.255".parse().unwrap()),
        )
    });
    let up = a.with(|h| h.link_by_index(ia));
    assert!(up.up && up.lower_up, "{up:?}");

    let addrs = b.with(|h| h.addr_list(Some(pod.index)));
    assert_eq!(addrs.len(), 1);
    assert_eq!(addrs[0].address, "10.99.0.2/24".parse().unwrap());
    assert_eq!(addrs[0].broadcast, Some("10.99.0.255".parse().unwrap()));
    assert_eq!(addrs[0].scope, Scope::Universe);

    // EEXIST on a second add, idempotent helpers agree.
    let dup = a.try_with(|h| h.addr_add(&Addr::new(ia, "10.99.0.1/24".parse().unwrap())));
    let err = dup.unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(matches!(err, Error::Netlink { op: "addr add", errno, .. } if errno == libc::EEXIST));
    let added = a.with(|h| h.addr_ensure(&Addr::new(ia, "10.99.0.1/24".parse().unwrap())));
    assert!(!added);
    a.with(|h| h.addr_replace(&Addr::new(ia, "10.99.0.1/24".parse().unwrap())));

    assert!(a.ping("10.99.0.2", None), "ping across the veth pair");
    assert!(b.ping("10.99.0.1", None), "ping back");

    // Delete: gone, then not found.
    let extra = Addr::new(ia, "10.99.1.1/24".parse().unwrap());
    a.with(|h| h.addr_add(&extra));
    a.with(|h| h.addr_del(&extra));
    let again = a.try_with(|h| h.addr_del(&extra)).unwrap_err();
    assert!(again.is_not_found(), "{again}");
    assert!(!a.with(|h| h.addr_del_if_exists(&extra)));
    assert_eq!(a.with(|h| h.addr_list(Some(ia))).len(), 1);
}

#[test]
fn route_table_per_link_and_policy_rules() {
    if !root_or_skip("route_table_per_link_and_policy_rules") {
        return;
    }
    let node = TestNs::new("rn");
    let vpc = TestNs::new("rv");
    let (eni, _) = wire(&node, "eni1", "10.97.0.10/24", &vpc, "gw", "10.97.0.1/24");
    // A "remote" address behind the VPC side, not reachable by the node's main table.
    vpc.with(|h| {
        let lo = h.link_by_name("lo")?.index;
        h.addr_add(&Addr::new(lo, "192.0.2.1/32".parse().unwrap()))
    });
    assert!(
        !node.ping("192.0.2.1", Some("10.97.0.10")),
        "no route yet: must fail"
    );

    let table = 1001; // above 255: travels in RTA_TABLE
    let default = Route::new(table)
        .gateway("10.97.0.1".parse().unwrap())
        .oif(eni)
        .onlink();
    let link_route = Route::new(table)
        .dst("10.97.0.0/24".parse().unwrap())
        .oif(eni)
        .scope(Scope::Link)
        .prefsrc("10.97.0.10".parse().unwrap())
        .metric(10);
    let rule = Rule::new(table)
        .priority(1000)
        .from("10.97.0.10/32".parse().unwrap());
    node.with(|h| {
        h.route_add(&default)?;
        h.route_add(&link_route)?;
        h.rule_add(&rule)
    });

    let routes = node.with(|h| h.route_list(table));
    assert_eq!(routes.len(), 2, "{routes:?}");
    let d = routes.iter().find(|r| r.dst.is_none()).expect("default");
    assert_eq!(d.gateway, Some("10.97.0.1".parse().unwrap()));
    assert_eq!(d.oif, Some(eni));
    assert!(d.onlink);
    assert_eq!(d.table, table);
    let l = routes.iter().find(|r| r.dst.is_some()).expect("link route");
    assert_eq!(l.scope, Scope::Link);
    assert_eq!(l.prefsrc, Some("10.97.0.10".parse().unwrap()));
    assert_eq!(l.metric, Some(10));
    let rules = node.with(|h| h.rule_list());
    let r = rules
        .iter()
        .find(|r| r.priority == Some(1000))
        .expect("rule");
    assert_eq!(r.from, Some("10.97.0.10/32".parse().unwrap()));
    assert_eq!(r.table, table);

    assert!(
        node.ping("192.0.2.1", Some("10.97.0.10")),
        "source-routed through table {table}"
    );

    // EEXIST and the idempotent variants.
    let e = node.try_with(|h| h.route_add(&default)).unwrap_err();
    assert!(e.is_exists(), "{e}");
    assert!(!node.with(|h| h.route_ensure(&default)));
    let e = node.try_with(|h| h.rule_add(&rule)).unwrap_err();
    assert!(e.is_exists(), "{e}");
    assert!(!node.with(|h| h.rule_ensure(&rule)));

    // Replace keeps one route.
    node.with(|h| h.route_replace(&default.metric(0)));
    assert_eq!(node.with(|h| h.route_list(table)).len(), 2);

    // A rule with to/iif/oif in a small table id.
    let rule2 = Rule::new(100)
        .priority(1100)
        .to("10.200.0.0/16".parse().unwrap())
        .iif("eni1");
    let rule3 = Rule::new(100).priority(1200).oif("eni1");
    node.with(|h| {
        h.rule_add(&rule2)?;
        h.rule_add(&rule3)
    });
    let rules = node.with(|h| h.rule_list());
    assert!(rules.contains(&rule2), "{rules:?}");
    assert!(rules.contains(&rule3), "{rules:?}");

    // Deletes, then ENOENT / ESRCH.
    node.with(|h| {
        h.rule_del(&rule)?;
        h.rule_del(&rule2)?;
        h.rule_del(&rule3)?;
        h.route_del(&default)?;
        h.route_del(&link_route)
    });
    let e = node.try_with(|h| h.rule_del(&rule)).unwrap_err();
    assert!(e.is_not_found() && e.errno() == Some(libc::ENOENT), "{e}");
    let e = node.try_with(|h| h.route_del(&default)).unwrap_err();
    assert!(e.is_not_found() && e.errno() == Some(libc::ESRCH), "{e}");
    assert!(!node.with(|h| h.rule_del_if_exists(&rule)));
    assert!(!node.with(|h| h.route_del_if_exists(&default)));
    assert!(node.with(|h| h.route_list(table)).is_empty());
    assert!(!node.ping("192.0.2.1", Some("10.97.0.10")));

    // The main table still has the kernel's connected route.
    let main = node.with(|h| h.route_list(eni_kernel::TABLE_MAIN));
    assert!(main
        .iter()
        .any(|r| r.dst == Some("10.97.0.0/24".parse().unwrap()) && r.oif == Some(eni)));
}

#[test]
fn move_and_rename_link_into_another_netns_and_back() {
    if !root_or_skip("move_and_rename_link_into_another_netns_and_back") {
        return;
    }
    let host = TestNs::new("mh");
    let pod = TestNs::new("mp");
    let m = mac("02:00:00:00:aa:01");
    let (idx, peer) = host.with(|h| {
        let i = h.veth_add(&VethAdd::new("eni7", "eni7p").mac(m))?;
        Ok((i, h.link_by_name("eni7p")?.index))
    });
    // MTU, MAC, rename while down, up/down.
    host.with(|h| {
        h.link_set_mtu(idx, 9000)?;
        h.link_set_mac(idx, mac("02:00:00:00:aa:02"))?;
        h.link_set_mac(idx, m)?;
        h.link_rename(idx, "eni7x")?;
        h.link_rename(idx, "eni7")?;
        h.link_set_up(idx)?;
        h.link_set_down(idx)
    });
    let l = host.with(|h| h.link_by_index(idx));
    assert_eq!(
        (l.name.as_str(), l.mtu, l.mac, l.up),
        ("eni7", 9000, Some(m), false)
    );

    // Move into the pod, renamed eth0 in the same request.
    let pod_fd = pod.fd.as_fd();
    host.with(|h| h.link_set_netns(idx, pod_fd, Some("eth0")));
    assert!(host
        .try_with(|h| h.link_by_name("eni7"))
        .unwrap_err()
        .is_not_found());
    let in_pod = pod.with(|h| h.link_by_name("eth0"));
    assert_eq!(in_pod.mac, Some(m));
    assert_eq!(in_pod.mtu, 9000);
    let peer_link = host.with(|h| h.link_by_index(peer));
    assert!(peer_link.link_netnsid.is_some(), "{peer_link:?}");

    // And back, by MAC, with its old name.
    let host_fd: &NetnsFd = &host.fd;
    pod.with(|h| {
        let l = h.link_by_mac(m)?;
        h.link_set_netns(l.index, host_fd.as_fd(), Some("eni7"))
    });
    let back = host.with(|h| h.link_by_mac(m));
    assert_eq!(back.name, "eni7");
    assert!(pod
        .try_with(|h| h.link_by_name("eth0"))
        .unwrap_err()
        .is_not_found());

    // Deleting one end deletes the pair.
    host.with(|h| h.link_del(back.index));
    assert!(host
        .try_with(|h| h.link_by_index(peer))
        .unwrap_err()
        .is_not_found());
}

#[test]
fn link_errors_are_typed() {
    if !root_or_skip("link_errors_are_typed") {
        return;
    }
    let ns = TestNs::new("le");
    let e = ns.try_with(|h| h.link_by_name("nope0")).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    let e = ns.try_with(|h| h.link_by_index(999_999)).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    let e = ns
        .try_with(|h| h.link_by_mac(mac("02:ff:ff:ff:ff:ff")))
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    let e = ns.try_with(|h| h.link_del(999_999)).unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    assert!(!ns.with(|h| h.link_del_if_exists(999_999)));
    let e = ns.try_with(|h| h.link_set_up(999_999)).unwrap_err();
    assert!(e.is_not_found(), "{e:?}");

    ns.with(|h| h.veth_add(&VethAdd::new("dup0", "dup1")));
    let e = ns
        .try_with(|h| h.veth_add(&VethAdd::new("dup0", "dup2")))
        .unwrap_err();
    assert!(e.is_exists(), "{e:?}");
    let Error::Netlink { op, subject, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(*op, "link add veth");
    assert!(subject.contains("dup0"));

    let e = ns
        .try_with(|h| h.veth_add(&VethAdd::new("name-that-is-too-long", "x")))
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");

    // Renaming onto a taken name: EEXIST.
    let e = ns
        .try_with(|h| {
            let i = h.link_by_name("dup0")?.index;
            h.link_rename(i, "dup1")
        })
        .unwrap_err();
    assert!(e.is_exists(), "{e:?}");
}

#[test]
fn ipvlan_is_reported_unsupported_when_the_kernel_lacks_it() {
    if !root_or_skip("ipvlan_is_reported_unsupported_when_the_kernel_lacks_it") {
        return;
    }
    let supported = kernel_supports(&LinkKind::Ipvlan);
    eprintln!("kernel supports ipvlan: {supported}");
    let ns = TestNs::new("iv");
    let pod = TestNs::new("ivp");
    let pod_fd = pod.fd.as_fd();
    let result = ns.try_with(|h| {
        let parent = h.veth_add(&VethAdd::new("par0", "par1"))?;
        h.ipvlan_add(&IpvlanAdd::new("ipv0", parent, IpvlanMode::L2))?;
        h.ipvlan_add(&IpvlanAdd::new("ipv1", parent, IpvlanMode::L3S).netns(pod_fd))?;
        h.link_by_name("ipv0")
    });
    if supported {
        let l = result.expect("ipvlan on a kernel that has it");
        assert_eq!(l.kind, Some(LinkKind::Ipvlan));
        assert_eq!(
            pod.with(|h| h.link_by_name("ipv1")).kind,
            Some(LinkKind::Ipvlan)
        );
    } else {
        let e = result.unwrap_err();
        assert!(matches!(e, Error::Unsupported { kind: "ipvlan" }), "{e:?}");
        assert_eq!(e.to_string(), "the kernel does not support ipvlan links");
    }
}

#[test]
fn kernel_support_probe() {
    if !root_or_skip("kernel_support_probe") {
        return;
    }
    let before = thread_netns_inode();
    for kind in [LinkKind::Veth, LinkKind::Macvlan, LinkKind::Bridge] {
        assert!(
            kernel_supports(&kind),
            "{kind} is on every kernel we run on"
        );
    }
    assert!(!kernel_supports(&LinkKind::Other("no-such-kind".into())));
    // Informational: this machine's kernel lacks both; a VM kernel has them.
    eprintln!(
        "ipvlan: {}, dummy: {}",
        kernel_supports(&LinkKind::Ipvlan),
        kernel_supports(&LinkKind::Dummy)
    );
    assert_eq!(
        before,
        thread_netns_inode(),
        "probing never moves the caller"
    );
}

#[test]
fn macvlan_in_place_and_in_another_netns() {
    if !root_or_skip("macvlan_in_place_and_in_another_netns") {
        return;
    }
    let ns = TestNs::new("mv");
    let pod = TestNs::new("mvp");
    let pod_fd = pod.fd.as_fd();
    let m = mac("02:00:00:00:bb:01");
    let parent = ns.with(|h| {
        let parent = h.veth_add(&VethAdd::new("up0", "up1"))?;
        h.macvlan_add(&MacvlanAdd::new("mvl0", parent, MacvlanMode::Bridge).mtu(1400))?;
        h.macvlan_add(
            &MacvlanAdd::new("mvl1", parent, MacvlanMode::Private)
                .netns(pod_fd)
                .mac(m),
        )?;
        Ok(parent)
    });
    let here = ns.with(|h| h.link_by_name("mvl0"));
    assert_eq!(here.kind, Some(LinkKind::Macvlan));
    assert_eq!(here.parent, Some(parent));
    assert_eq!(here.mtu, 1400);
    let there = pod.with(|h| h.link_by_name("mvl1"));
    assert_eq!(there.kind, Some(LinkKind::Macvlan));
    assert_eq!(there.mac, Some(m));

    // link list shows kinds.
    let all = ns.with(|h| h.link_list());
    let kinds: Vec<_> = all
        .iter()
        .map(|l| (l.name.as_str(), l.kind.clone()))
        .collect();
    assert!(kinds.contains(&("lo", None)), "{kinds:?}");
    assert!(kinds.contains(&("up0", Some(LinkKind::Veth))), "{kinds:?}");
    assert!(
        kinds.contains(&("mvl0", Some(LinkKind::Macvlan))),
        "{kinds:?}"
    );
}

#[test]
fn neighbours_permanent_and_proxy() {
    if !root_or_skip("neighbours_permanent_and_proxy") {
        return;
    }
    let ns = TestNs::new("nb");
    let gw: std::net::Ipv4Addr = "169.254.1.1".parse().unwrap();
    let (idx, n) = ns.with(|h| {
        let i = h.veth_add(&VethAdd::new("nb0", "nb1"))?;
        h.link_set_up(i)?;
        let n = Neigh::permanent(i, gw, mac("02:00:00:00:cc:01"));
        h.neigh_add(&n)?;
        Ok((i, n))
    });
    let list = ns.with(|h| h.neigh_list(Some(idx), false));
    assert!(list.contains(&n), "{list:?}");
    assert_eq!(
        list.iter().find(|x| x.ip == gw).unwrap().state,
        NeighState::Permanent
    );
    let e = ns.try_with(|h| h.neigh_add(&n)).unwrap_err();
    assert!(e.is_exists(), "{e}");

    let n2 = Neigh::permanent(idx, gw, mac("02:00:00:00:cc:02"));
    ns.with(|h| h.neigh_replace(&n2));
    let list = ns.with(|h| h.neigh_list(Some(idx), false));
    assert!(list.contains(&n2), "{list:?}");

    ns.with(|h| h.neigh_del(&n2));
    let e = ns.try_with(|h| h.neigh_del(&n2)).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(!ns.with(|h| h.neigh_del_if_exists(&n2)));

    let p = Neigh::proxy(idx, "10.0.0.9".parse().unwrap());
    ns.with(|h| h.neigh_add(&p));
    let proxies = ns.with(|h| h.neigh_list(Some(idx), true));
    assert_eq!(proxies.len(), 1, "{proxies:?}");
    assert_eq!(proxies[0].ip, p.ip);
    assert!(proxies[0].proxy);
    ns.with(|h| h.neigh_del(&p));
    assert!(ns.with(|h| h.neigh_list(Some(idx), true)).is_empty());
}

#[test]
fn sysctls_are_per_namespace() {
    if !root_or_skip("sysctls_are_per_namespace") {
        return;
    }
    let root_forwarding = sysctl::read("net/ipv4/ip_forward").unwrap();
    let ns = TestNs::new("sc");
    ns.with(|h| h.veth_add(&VethAdd::new("sc0", "sc1")).map(drop));
    let (fwd, parp, rpf) = netns::run_in_netns(&ns.fd, || {
        sysctl::set_ipv4_forwarding(true)?;
        sysctl::set_proxy_arp("sc0", true)?;
        sysctl::set_rp_filter("sc0", sysctl::RpFilter::Loose)?;
        Ok::<_, Error>((
            sysctl::read("net/ipv4/ip_forward")?,
            sysctl::ipv4_conf("sc0", "proxy_arp")?,
            sysctl::ipv4_conf("sc0", "rp_filter")?,
        ))
    })
    .unwrap()
    .unwrap();
    assert_eq!((fwd.as_str(), parp.as_str(), rpf.as_str()), ("1", "1", "2"));
    assert_eq!(
        sysctl::read("net/ipv4/ip_forward").unwrap(),
        root_forwarding,
        "the root namespace is untouched"
    );
    let e = netns::run_in_netns(&ns.fd, || sysctl::ipv4_conf("nosuch0", "proxy_arp"))
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(e, Error::Sysctl { .. }) && e.is_not_found(),
        "{e:?}"
    );
}

#[test]
fn run_in_netns_never_moves_the_calling_thread() {
    if !root_or_skip("run_in_netns_never_moves_the_calling_thread") {
        return;
    }
    let ns = TestNs::new("th");
    let before = thread_netns_inode();
    let target = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(ns.fd.path()).unwrap().ino()
    };
    let inside = netns::run_in_netns(&ns.fd, thread_netns_inode).unwrap();
    assert_eq!(inside, target);
    assert_ne!(inside, before);
    assert_eq!(thread_netns_inode(), before);

    // A Handle made inside sees only that namespace's links.
    let names: Vec<String> = ns.with(|h| Ok(h.link_list()?.into_iter().map(|l| l.name).collect()));
    assert_eq!(names, vec!["lo".to_string()]);

    // A panic inside is resumed here, and the thread is still home.
    let caught = std::panic::catch_unwind(|| {
        let _ = netns::run_in_netns(&ns.fd, || panic!("boom"));
    });
    assert!(caught.is_err());
    assert_eq!(thread_netns_inode(), before);
}

#[test]
fn named_netns_add_and_del() {
    if !root_or_skip("named_netns_add_and_del") {
        return;
    }
    let name = format!("ekt-{}-named", std::process::id());
    let fd = netns::add_named(&name).unwrap();
    assert!(std::path::Path::new("/var/run/netns").join(&name).exists());
    let e = netns::add_named(&name).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EEXIST), "{e:?}");
    let reopened = NetnsFd::by_name(&name).unwrap();
    let ino = |f: &NetnsFd| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(f.path()).unwrap().ino()
    };
    assert_eq!(ino(&fd), ino(&reopened));
    netns::del_named(&name).unwrap();
    assert!(!std::path::Path::new("/var/run/netns").join(&name).exists());
    let e = netns::del_named(&name).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert!(NetnsFd::by_name(&name).unwrap_err().is_not_found());
}

#[test]
fn handle_works_through_the_trait_object() {
    if !root_or_skip("handle_works_through_the_trait_object") {
        return;
    }
    let ns = TestNs::new("tr");
    let got = ns.with(|h| {
        let nl: &mut dyn Netlink = h;
        let i = nl.veth_add(&VethAdd::new("t0", "t1"))?;
        nl.link_set_up(i)?;
        Ok(nl.link_by_name("t0")?.up)
    });
    assert!(got);
}

#[test]
fn handle_in_this_thread_binds_the_socket_there_and_comes_back() {
    if !root_or_skip("handle_in_this_thread_binds_the_socket_there_and_comes_back") {
        return;
    }
    let ns = TestNs::new("ht");
    let before = thread_netns_inode();
    let mut h = netns::handle_in_this_thread(&ns.fd).unwrap();
    // Back home at once, and the socket still speaks for the namespace it was opened in.
    assert_eq!(thread_netns_inode(), before);
    let names: Vec<String> = h.link_list().unwrap().into_iter().map(|l| l.name).collect();
    assert_eq!(names, vec!["lo".to_string()]);
    let i = h.veth_add(&VethAdd::new("hta", "htb")).unwrap();
    let seen: Vec<String> = ns.with(|h| Ok(h.link_list()?.into_iter().map(|l| l.name).collect()));
    assert!(seen.contains(&"hta".to_string()), "{seen:?}");
    h.link_del(i).unwrap();
    assert_eq!(thread_netns_inode(), before);
}
