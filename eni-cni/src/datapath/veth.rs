//! veth mode: a veth pair per pod and policy routing through the owning ENI's table.
//!
//! ```text
//!  pod netns                    node netns                                  VPC
//!  eth0 ip/32 ──veth── eniXXXXXXXXXXX ── main: ip/32 dev eniXXX (rule 1000: to ip lookup main)
//!  default via 169.254.1.1           └─ rule 2000: from ip lookup T ─ T: default via gw dev eth1 ── gw
//!  169.254.1.1 PERMANENT -> host end MAC     proxy neigh ip on eth1 (answers the VPC's ARP)
//! ```
//!
//! The pod never ARPs for its gateway (a permanent entry points it at the host end), the
//! node delivers traffic to the pod by the `/32` route, and the pod's own traffic leaves
//! through the ENI that owns its address.

use std::net::Ipv4Addr;

use eni_kernel::{Addr, Neigh, Netlink, Route, Rule, Scope, VethAdd, TABLE_MAIN};
use ipnet::Ipv4Net;

use super::{
    del_link_by_name, host_route, host_veth_name, Journal, Namespaces, PodSpec, Step, Undo,
    WireResult, RULE_PRIO_FROM_POD, RULE_PRIO_TO_POD,
};
use crate::result::Attachment;

/// The pod's gateway: link-local, answered by a permanent neighbour entry in the pod.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

fn gateway32() -> Ipv4Net {
    Ipv4Net::new(GATEWAY, 32).expect("/32 is valid")
}

/// The node's rules for a pod address.
pub(crate) fn rules(ip32: Ipv4Net, table: u32) -> [Rule; 2] {
    [
        Rule::new(TABLE_MAIN).priority(RULE_PRIO_TO_POD).to(ip32),
        Rule::new(table).priority(RULE_PRIO_FROM_POD).from(ip32),
    ]
}

/// Wires the pod; every change is recorded in `journal`.
pub fn add(
    ns: &mut Namespaces<'_>,
    spec: &PodSpec<'_>,
    journal: &mut Journal,
) -> WireResult<Attachment> {
    let host_name = host_veth_name(spec.container_id, spec.ifname);
    let ifname = spec.ifname;
    let ip32 = spec.ip32();
    let alloc = spec.alloc;

    // A host end left over by an ADD that died half-way would block the name.
    del_link_by_name(ns.host, &host_name)
        .step(|| format!("remove the stale host link {host_name}"))?;
    let pod_fd = ns.pod_fd()?;
    let host_index = ns
        .host
        .veth_add(
            &VethAdd::new(&host_name, ifname)
                .peer_netns(pod_fd)
                .mtu(spec.mtu),
        )
        .step(|| format!("create veth {host_name} <-> {ifname} (in the pod)"))?;
    journal.push(Undo::HostLink(host_index));
    // Both ends are down: nothing of the pod passes before the programs are there.
    spec.before_up(super::LinkAt::Host, &host_name)?;
    ns.host
        .link_set_up(host_index)
        .step(|| format!("bring {host_name} up"))?;
    let host_link = ns
        .host
        .link_by_index(host_index)
        .step(|| format!("read {host_name}"))?;
    let host_mac = host_link.mac.ok_or_else(|| super::WireError {
        what: format!("the MAC of {host_name}"),
        source: eni_kernel::Error::NotFound {
            what: "MAC address".into(),
        },
    })?;

    // Pod side.
    let pod = ns.pod()?;
    let pod_link = pod
        .link_by_name(ifname)
        .step(|| format!("find {ifname} in the pod"))?;
    pod.addr_ensure(&Addr::new(pod_link.index, ip32))
        .step(|| format!("add {ip32} to {ifname} in the pod"))?;
    pod.link_set_up(pod_link.index)
        .step(|| format!("bring {ifname} up in the pod"))?;
    pod.neigh_replace(&Neigh::permanent(pod_link.index, GATEWAY, host_mac))
        .step(|| format!("add neighbour {GATEWAY} lladdr {host_mac} on {ifname} in the pod"))?;
    pod.route_replace(
        &Route::new(TABLE_MAIN)
            .dst(gateway32())
            .oif(pod_link.index)
            .scope(Scope::Link),
    )
    .step(|| format!("add route {GATEWAY} dev {ifname} scope link in the pod"))?;
    pod.route_replace(&Route::new(TABLE_MAIN).gateway(GATEWAY).oif(pod_link.index))
        .step(|| format!("add default via {GATEWAY} dev {ifname} in the pod"))?;
    let pod_mac = pod_link.mac.map(|m| m.to_string()).unwrap_or_default();

    // Node side: deliver to the pod, send its traffic out through its ENI.
    let route = host_route(ip32, host_index);
    ns.host
        .route_replace(&route)
        .step(|| format!("add route {ip32} dev {host_name}"))?;
    journal.push(Undo::HostRoute(route));
    for rule in rules(ip32, alloc.route_table) {
        journal.push(Undo::HostRule(rule.clone()));
        ns.host
            .rule_ensure(&rule)
            .step(|| format!("add rule {rule:?}"))?;
    }
    let eni = ns.host.link_by_name(&alloc.host_ifname).step(|| {
        format!(
            "find the ENI {} link {:?} on the node",
            alloc.eni_id, alloc.host_ifname
        )
    })?;
    let proxy = Neigh::proxy(eni.index, alloc.ip);
    journal.push(Undo::HostNeigh(proxy));
    ns.host
        .neigh_replace(&proxy)
        .step(|| format!("add proxy neighbour {} on {}", alloc.ip, eni.name))?;

    Ok(Attachment {
        host_if: Some((
            host_name,
            host_link.mac.map(|m| m.to_string()).unwrap_or_default(),
        )),
        pod_if: (ifname.to_string(), pod_mac),
        sandbox: spec.sandbox.to_string(),
        mtu: spec.mtu,
        address: ip32,
        gateway: GATEWAY,
    })
}

/// Removes the node side of a pod whose address is known (the pod side goes with the
/// pod's namespace, or was removed before). Keeps going; returns every error.
pub fn del_host_side(
    host: &mut dyn Netlink,
    container_id: &str,
    ifname: &str,
    ip: Ipv4Addr,
    table: u32,
    eni_ifname: &str,
) -> Vec<String> {
    let mut errors = Vec::new();
    let host_name = host_veth_name(container_id, ifname);
    let ip32 = Ipv4Net::new(ip, 32).expect("/32 is valid");
    if let Err(e) = del_link_by_name(host, &host_name) {
        errors.push(format!("delete {host_name}: {e}"));
    }
    // The /32 route to the pod went with the link.
    for rule in rules(ip32, table) {
        if let Err(e) = host.rule_del_if_exists(&rule) {
            errors.push(format!("delete rule {rule:?}: {e}"));
        }
    }
    match host.link_by_name(eni_ifname) {
        Ok(eni) => {
            if let Err(e) = host.neigh_del_if_exists(&Neigh::proxy(eni.index, ip)) {
                errors.push(format!("delete proxy neighbour {ip} on {eni_ifname}: {e}"));
            }
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => errors.push(format!("find {eni_ifname}: {e}")),
    }
    errors
}

/// Checks the node and pod sides; returns what is missing.
pub fn check(ns: &mut Namespaces<'_>, spec: &PodSpec<'_>) -> Vec<String> {
    let mut missing = Vec::new();
    let host_name = host_veth_name(spec.container_id, spec.ifname);
    let ip32 = spec.ip32();
    match ns.host.link_by_name(&host_name) {
        Ok(host_link) => {
            if !host_link.up {
                missing.push(format!("host link {host_name} is down"));
            }
            match ns.host.route_list(TABLE_MAIN) {
                Ok(routes)
                    if routes
                        .iter()
                        .any(|r| r.dst == Some(ip32) && r.oif == Some(host_link.index)) => {}
                Ok(_) => missing.push(format!("route {ip32} dev {host_name} on the node")),
                Err(e) => missing.push(format!("list routes on the node: {e}")),
            }
        }
        Err(e) => missing.push(format!("host link {host_name}: {e}")),
    }
    match ns.host.rule_list() {
        Ok(list) => {
            for rule in rules(ip32, spec.alloc.route_table) {
                if !list.contains(&rule) {
                    missing.push(format!("rule {rule:?} on the node"));
                }
            }
        }
        Err(e) => missing.push(format!("list rules on the node: {e}")),
    }
    if let Err(e) = ns.host.link_by_name(&spec.alloc.host_ifname) {
        missing.push(format!("the ENI link {}: {e}", spec.alloc.host_ifname));
    }
    match ns.pod() {
        Ok(pod) => match pod.link_by_name(spec.ifname) {
            Ok(link) => {
                if !link.up {
                    missing.push(format!("interface {} in the pod is down", spec.ifname));
                }
                super::check_addr(pod, &link, ip32, &mut missing);
                super::check_default_route(pod, &link, GATEWAY, &mut missing);
            }
            Err(e) => missing.push(format!("interface {} in the pod: {e}", spec.ifname)),
        },
        Err(e) => missing.push(e.to_string()),
    }
    missing
}
