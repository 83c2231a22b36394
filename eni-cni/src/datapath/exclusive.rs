//! Exclusive ENI mode: the ENI's own link moves into the pod.
//!
//! ```text
//!  node netns                          pod netns
//!  eth2 (ENI, by MAC) ── moved ──▶     eth0 = the ENI: ip/prefix_len, default via gw
//!                     ◀── DEL ───      back as eth2, down, no addresses
//! ```

use eni_kernel::LinkKind;

use super::{
    check_pod_link, configure_pod_link, return_link, Journal, Namespaces, PodSpec, Step, Undo,
    WireError, WireResult,
};
use crate::result::Attachment;

/// Moves the ENI into the pod and configures it; every change is recorded in `journal`.
pub fn add(
    ns: &mut Namespaces<'_>,
    spec: &PodSpec<'_>,
    journal: &mut Journal,
) -> WireResult<Attachment> {
    let alloc = spec.alloc;
    let mac = spec.eni_mac()?;
    let ifname = spec.ifname;
    let eni = ns.host.link_by_mac(mac).step(|| {
        format!(
            "find the exclusive ENI {} (MAC {mac}) on the node",
            alloc.eni_id
        )
    })?;
    // A NIC has no link kind; a veth plays the NIC in tests and in the mock cloud.
    if let Some(kind) = eni.kind.as_ref().filter(|k| **k != LinkKind::Veth) {
        return Err(WireError {
            what: format!(
                "the link {} with the ENI's MAC {mac} is a {kind} link, not the ENI",
                eni.name
            ),
            source: eni_kernel::Error::InvalidArgument {
                what: "exclusive ENI link".into(),
            },
        });
    }
    let pod_fd = ns.pod_fd()?;
    // Back under the name the node knows, whatever the manager reported.
    journal.push(Undo::ReturnLink {
        mac,
        name: eni.name.clone(),
    });
    ns.host
        .link_set_netns(eni.index, pod_fd, Some(ifname))
        .step(|| format!("move {} into the pod as {ifname}", eni.name))?;
    let pod = ns.pod()?;
    let link = pod
        .link_by_mac(mac)
        .step(|| format!("find {ifname} (MAC {mac}) in the pod"))?;
    // Moving a link to another namespace takes it down: it is down here.
    spec.before_up(super::LinkAt::Pod, ifname)?;
    configure_pod_link(pod, &link, spec)?;
    Ok(Attachment {
        host_if: None,
        pod_if: (ifname.to_string(), mac.to_string()),
        sandbox: spec.sandbox.to_string(),
        mtu: spec.mtu,
        address: spec.ip_prefix()?,
        gateway: alloc.gateway,
    })
}

/// Moves the ENI back to the node as `alloc.host_ifname`, down and without addresses.
/// Without the pod's namespace there is nothing to do here: when a namespace dies, the
/// kernel returns its physical links to the initial namespace.
pub fn del(ns: &mut Namespaces<'_>, spec: &PodSpec<'_>) -> Vec<String> {
    let mac = match spec.eni_mac() {
        Ok(m) => m,
        Err(e) => return vec![e.to_string()],
    };
    let host_fd = ns.host_fd;
    let Some(pod) = ns.pod.as_deref_mut() else {
        return Vec::new();
    };
    match return_link(pod, host_fd, mac, &spec.alloc.host_ifname) {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!(
            "move the ENI {} (MAC {mac}) back to the node as {}: {e}",
            spec.alloc.eni_id, spec.alloc.host_ifname
        )],
    }
}

/// Checks that the ENI is in the pod, named, addressed and routed.
pub fn check(ns: &mut Namespaces<'_>, spec: &PodSpec<'_>) -> Vec<String> {
    let mut missing = Vec::new();
    let Ok(pod) = ns.pod() else {
        return vec!["the pod's network namespace".into()];
    };
    if let Ok(mac) = spec.eni_mac() {
        match pod.link_by_mac(mac) {
            Ok(l) if l.name == spec.ifname => {}
            Ok(l) => missing.push(format!(
                "the ENI (MAC {mac}) is in the pod as {}, not {}",
                l.name, spec.ifname
            )),
            Err(e) => missing.push(format!("the ENI (MAC {mac}) in the pod: {e}")),
        }
    }
    missing.extend(check_pod_link(pod, spec));
    missing
}
