//! IPVLAN L2 mode: an ipvlan slave of the owning ENI in the pod, and one host-side slave
//! per ENI so the node (kubelet probes, Services) reaches its pods.
//!
//! ```text
//!  pod netns: eth0 (ipvlan L2 of eth1) ip/prefix_len, default via gw,
//!             169.254.2.1/32 dev eth0 scope link (the node, via the host slave)
//!  node:      ipvl<ENI ifindex> (ipvlan L2 of eth1) 169.254.2.1/32, up
//!             ip/32 dev ipvlN src 169.254.2.1            (node -> pod)
//! ```
//!
//! ipvlan slaves of one parent reach each other inside the driver, so node-to-pod traffic
//! never leaves the machine: the node speaks from 169.254.2.1, which the pod reaches on
//! its own link. The host slave is shared by every pod on the ENI and is never removed by
//! a pod's DEL (the manager owns the ENI's life cycle).

use std::net::Ipv4Addr;

use eni_kernel::{Addr, IpvlanAdd, IpvlanMode, LinkKind, Netlink, Route, Scope, TABLE_MAIN};
use ipnet::Ipv4Net;

use super::{
    check_pod_link, configure_pod_link, del_link_by_name, host_route, Journal, Namespaces, PodSpec,
    Step, Undo, WireError, WireResult,
};
use crate::result::Attachment;

/// The node's address on every host-side ipvlan slave; link-local, never leaves the node.
pub const HOST_SLAVE_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 2, 1);

/// The host-side slave of the ENI link with index `eni_index`.
pub fn host_slave_name(eni_index: u32) -> String {
    format!("ipvl{eni_index}")
}

/// The name the pod's slave is created under before it is renamed to `CNI_IFNAME`:
/// `ivt` + the 11 hex digits of [`super::host_veth_name`] (stable, and unlike any name the
/// node's own links have).
pub fn pod_slave_temp_name(container_id: &str, ifname: &str) -> String {
    let hash = super::host_veth_name(container_id, ifname);
    format!("ivt{}", &hash[3..])
}

fn host_addr32() -> Ipv4Net {
    Ipv4Net::new(HOST_SLAVE_ADDR, 32).expect("/32 is valid")
}

/// Ensures the host-side slave of `eni_index` exists, is up and has its address;
/// returns its index.
fn ensure_host_slave(host: &mut dyn Netlink, eni_index: u32, mtu: u32) -> WireResult<u32> {
    let name = host_slave_name(eni_index);
    let link = match host.link_by_name(&name) {
        Ok(link) => link,
        Err(e) if e.is_not_found() => {
            match host.ipvlan_add(&IpvlanAdd::new(&name, eni_index, IpvlanMode::L2).mtu(mtu)) {
                // Another ADD on the same ENI may have just created it.
                Err(e) if !e.is_exists() => {
                    return Err(e).step(|| format!("create the host ipvlan slave {name}"))
                }
                _ => {}
            }
            host.link_by_name(&name)
                .step(|| format!("find the host ipvlan slave {name}"))?
        }
        Err(e) => return Err(e).step(|| format!("find the host ipvlan slave {name}")),
    };
    if link.kind != Some(LinkKind::Ipvlan) || link.parent != Some(eni_index) {
        return Err(WireError {
            what: format!("{name} exists but is not an ipvlan slave of link {eni_index}"),
            source: eni_kernel::Error::InvalidArgument {
                what: "host ipvlan slave".into(),
            },
        });
    }
    host.addr_ensure(&Addr::new(link.index, host_addr32()).scope(Scope::Link))
        .step(|| format!("add {HOST_SLAVE_ADDR}/32 to {name}"))?;
    host.link_set_up(link.index)
        .step(|| format!("bring {name} up"))?;
    Ok(link.index)
}

/// Wires the pod; every change is recorded in `journal`.
pub fn add(
    ns: &mut Namespaces<'_>,
    spec: &PodSpec<'_>,
    journal: &mut Journal,
) -> WireResult<Attachment> {
    let alloc = spec.alloc;
    let ifname = spec.ifname;
    let eni = ns.host.link_by_name(&alloc.host_ifname).step(|| {
        format!(
            "find the ENI {} link {:?} on the node",
            alloc.eni_id, alloc.host_ifname
        )
    })?;
    let pod_fd = ns.pod_fd()?;
    // The kernel looks the new link's name up in the namespace of the request (the
    // node's) before it creates it in the pod's: created as `eth0` directly, it would
    // clash (EEXIST) with the node's own `eth0`. So: a temporary name, then a rename
    // inside the pod.
    let tmp = pod_slave_temp_name(spec.container_id, ifname);
    journal.push(Undo::PodLink(tmp.clone()));
    ns.host
        .ipvlan_add(
            &IpvlanAdd::new(&tmp, eni.index, IpvlanMode::L2)
                .netns(pod_fd)
                .mtu(spec.mtu),
        )
        .step(|| format!("create ipvlan {tmp} of {} in the pod", eni.name))?;
    let pod = ns.pod()?;
    let tmp_link = pod
        .link_by_name(&tmp)
        .step(|| format!("find {tmp} in the pod"))?;
    journal.push(Undo::PodLink(ifname.to_string()));
    pod.link_rename(tmp_link.index, ifname)
        .step(|| format!("rename {tmp} to {ifname} in the pod"))?;
    let link = pod
        .link_by_name(ifname)
        .step(|| format!("find {ifname} in the pod"))?;
    spec.before_up(super::LinkAt::Pod, ifname)?;
    configure_pod_link(pod, &link, spec)?;
    pod.route_replace(
        &Route::new(TABLE_MAIN)
            .dst(host_addr32())
            .oif(link.index)
            .scope(Scope::Link),
    )
    .step(|| format!("add route {HOST_SLAVE_ADDR} dev {ifname} in the pod"))?;
    let pod_mac = link.mac.map(|m| m.to_string()).unwrap_or_default();

    // The host slave is shared by all pods of the ENI: not journalled, never removed here.
    let slave = ensure_host_slave(ns.host, eni.index, eni.mtu)?;
    let route = host_route(spec.ip32(), slave).prefsrc(HOST_SLAVE_ADDR);
    journal.push(Undo::HostRoute(route));
    ns.host.route_replace(&route).step(|| {
        format!(
            "add route {} dev {}",
            spec.ip32(),
            host_slave_name(eni.index)
        )
    })?;

    Ok(Attachment {
        host_if: None,
        pod_if: (ifname.to_string(), pod_mac),
        sandbox: spec.sandbox.to_string(),
        mtu: spec.mtu,
        address: spec.ip_prefix()?,
        gateway: alloc.gateway,
    })
}

/// Removes the pod's slave (when the namespace is still there) and the node's route to
/// the pod. Keeps going; returns every error.
pub fn del(ns: &mut Namespaces<'_>, spec: &PodSpec<'_>) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(pod) = ns.pod.as_deref_mut() {
        if let Err(e) = del_link_by_name(pod, spec.ifname) {
            errors.push(format!("delete {} in the pod: {e}", spec.ifname));
        }
    }
    if let Ok(eni) = ns.host.link_by_name(&spec.alloc.host_ifname) {
        if let Ok(slave) = ns.host.link_by_name(&host_slave_name(eni.index)) {
            let route = Route::new(TABLE_MAIN).dst(spec.ip32()).oif(slave.index);
            if let Err(e) = ns.host.route_del_if_exists(&route) {
                errors.push(format!("delete route {}: {e}", spec.ip32()));
            }
        }
    }
    errors
}

/// Checks the pod's slave and the node's route to the pod.
pub fn check(ns: &mut Namespaces<'_>, spec: &PodSpec<'_>) -> Vec<String> {
    let mut missing = Vec::new();
    match ns.host.link_by_name(&spec.alloc.host_ifname) {
        Ok(eni) => match ns.host.link_by_name(&host_slave_name(eni.index)) {
            Ok(slave) => match ns.host.route_list(TABLE_MAIN) {
                Ok(routes)
                    if routes
                        .iter()
                        .any(|r| r.dst == Some(spec.ip32()) && r.oif == Some(slave.index)) => {}
                Ok(_) => missing.push(format!(
                    "route {} dev {} on the node",
                    spec.ip32(),
                    slave.name
                )),
                Err(e) => missing.push(format!("list routes on the node: {e}")),
            },
            Err(e) => missing.push(format!("host ipvlan slave: {e}")),
        },
        Err(e) => missing.push(format!("the ENI link {}: {e}", spec.alloc.host_ifname)),
    }
    match ns.pod() {
        Ok(pod) => missing.extend(check_pod_link(pod, spec)),
        Err(e) => missing.push(e.to_string()),
    }
    missing
}
