//! `desired(services, slices)`: the pure translation from Kubernetes objects to the table
//! the datapath should hold, one [`ServiceSpec`] per frontend (IP, port, protocol).

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use eni_bpf::{Backend, Protocol, ServiceKey, ServiceSpec};
use tracing::{debug, warn};

use super::types::{EndpointSlice, IntOrString, Service, ServicePort};

/// The affinity timeout when `sessionAffinity: ClientIP` gives none (the API's default).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u64 = 10_800;

fn protocol(p: Option<&str>) -> Result<Protocol, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        other => Err(other.to_string()),
    }
}

fn same_name(a: Option<&str>, b: Option<&str>) -> bool {
    a.unwrap_or("") == b.unwrap_or("")
}

/// The backend port of `sp` in `slice`: the slice port carrying the service port's name
/// (what the EndpointSlice controller writes, with a named `targetPort` already resolved);
/// for hand-written slices, a slice port named like a named `targetPort`; else a numeric
/// `targetPort` (or `port`). `None`: this slice serves no port for it.
fn backend_port(sp: &ServicePort, proto: Protocol, slice: &EndpointSlice) -> Option<u16> {
    let in_slice = |name: Option<&str>| {
        slice
            .ports
            .iter()
            .filter(|p| protocol(p.protocol.as_deref()).ok() == Some(proto))
            .find(|p| same_name(p.name.as_deref(), name))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
    };
    if let Some(p) = in_slice(sp.name.as_deref()) {
        return Some(p);
    }
    match &sp.target_port {
        Some(IntOrString::String(name)) => in_slice(Some(name)),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|p| *p != 0),
        None => u16::try_from(sp.port).ok().filter(|p| *p != 0),
    }
}

/// The frontend addresses: IPv4 cluster IPs, then IPv4 external IPs. IPv6 ones are skipped
/// (no IPv6 hooks yet).
fn frontends(svc: &Service, id: &str) -> Vec<Ipv4Addr> {
    let mut ips: Vec<&str> = Vec::new();
    if svc.spec.cluster_ips.is_empty() {
        ips.extend(svc.spec.cluster_ip.as_deref());
    } else {
        ips.extend(svc.spec.cluster_ips.iter().map(String::as_str));
    }
    ips.extend(svc.spec.external_ips.iter().map(String::as_str));
    let mut out = Vec::new();
    for ip in ips {
        match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(v4)) if !v4.is_unspecified() => {
                if !out.contains(&v4) {
                    out.push(v4);
                }
            }
            Ok(_) => debug!(service = id, ip, "IPv6 or unspecified frontend skipped"),
            Err(_) => warn!(service = id, ip, "not an IP address; frontend skipped"),
        }
    }
    out
}

/// The table the datapath should hold for these services and slices.
///
/// - Frontends: every IPv4 `clusterIP(s)` and `externalIPs` address x every TCP/UDP port,
///   for `ClusterIP`, `NodePort` and `LoadBalancer` services (the socket hooks serve the
///   ClusterIP of all three). Headless (`clusterIP: None`) and `ExternalName` services
///   are skipped; SCTP ports are skipped with a log line.
/// - Backends: from the slices labelled `kubernetes.io/service-name: <name>` in the same
///   namespace; `ready` endpoints are active, `serving` + `terminating` ones terminating
///   (no new connections), the others left out.
/// - `sessionAffinity: ClientIP`: `timeoutSeconds`, default 10800.
///
/// Two services claiming one frontend: the first by namespace/name wins, the other is logged.
pub fn desired(
    services: &[Service],
    slices: &[EndpointSlice],
) -> BTreeMap<ServiceKey, ServiceSpec> {
    let mut order: Vec<&Service> = services.iter().collect();
    order.sort_by(|a, b| {
        (a.metadata.namespace(), &a.metadata.name).cmp(&(b.metadata.namespace(), &b.metadata.name))
    });
    let mut out: BTreeMap<ServiceKey, ServiceSpec> = BTreeMap::new();
    let mut owner: BTreeMap<ServiceKey, String> = BTreeMap::new();
    for svc in order {
        let ns = svc.metadata.namespace();
        let id = format!("{ns}/{}", svc.metadata.name);
        let ty = svc.spec.type_.as_deref().unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            debug!(service = %id, "ExternalName service skipped (DNS only)");
            continue;
        }
        if matches!(svc.spec.cluster_ip.as_deref(), Some("None")) {
            debug!(service = %id, "headless service skipped");
            continue;
        }
        if matches!(svc.spec.internal_traffic_policy.as_deref(), Some("Local")) {
            warn!(service = %id, "internalTrafficPolicy: Local is not supported yet; treated as Cluster");
        }
        let vips = frontends(svc, &id);
        if vips.is_empty() {
            debug!(service = %id, "no IPv4 frontend address; skipped");
            continue;
        }
        let affinity = match svc.spec.session_affinity.as_deref() {
            Some("ClientIP") => {
                let t = svc
                    .spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|t| u64::try_from(t).ok())
                    .filter(|t| *t > 0)
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S);
                Some(Duration::from_secs(t.min(86_400)))
            }
            _ => None,
        };
        let my_slices: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| s.metadata.namespace() == ns)
            .filter(|s| s.service_name() == Some(svc.metadata.name.as_str()))
            .filter(|s| s.address_type.as_deref().is_none_or(|t| t == "IPv4"))
            .collect();
        for sp in &svc.spec.ports {
            let proto = match protocol(sp.protocol.as_deref()) {
                Ok(p) => p,
                Err(other) => {
                    warn!(service = %id, port = sp.port, protocol = %other, "protocol not supported by the socket datapath; port skipped");
                    continue;
                }
            };
            let Some(port) = u16::try_from(sp.port).ok().filter(|p| *p != 0) else {
                warn!(service = %id, port = sp.port, "invalid service port; skipped");
                continue;
            };
            let mut backends = Vec::new();
            let mut seen = HashSet::new();
            for slice in &my_slices {
                let Some(bport) = backend_port(sp, proto, slice) else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let c = &ep.conditions;
                    let ready = c.ready.unwrap_or(true);
                    let serving = c.serving.unwrap_or(ready);
                    let terminating = c.terminating.unwrap_or(false);
                    for a in &ep.addresses {
                        let Ok(ip) = a.parse::<Ipv4Addr>() else {
                            debug!(service = %id, address = %a, "not an IPv4 endpoint; skipped");
                            continue;
                        };
                        let addr = SocketAddrV4::new(ip, bport);
                        let b = if ready && !terminating {
                            Backend::active(addr)
                        } else if serving && terminating {
                            Backend::terminating(addr)
                        } else {
                            continue;
                        };
                        if seen.insert(addr) {
                            backends.push(b);
                        }
                    }
                }
            }
            let spec = normalize(ServiceSpec {
                backends,
                affinity_timeout: affinity,
            });
            for vip in &vips {
                let key = ServiceKey {
                    vip: *vip,
                    port,
                    protocol: proto,
                };
                if let Some(first) = owner.get(&key) {
                    warn!(frontend = %key, service = %id, owner = %first, "frontend already used by another service; skipped");
                    continue;
                }
                owner.insert(key, id.clone());
                out.insert(key, spec.clone());
            }
        }
    }
    out
}

/// A spec in canonical form, so specs compare equal whatever the backends' order: one
/// entry per address (active wins), active first, then by address.
pub fn normalize(mut spec: ServiceSpec) -> ServiceSpec {
    spec.backends
        .sort_by_key(|b| (b.state != eni_bpf::BackendState::Active, b.ip, b.port));
    let mut seen = HashSet::new();
    spec.backends.retain(|b| seen.insert(b.addr()));
    spec
}
