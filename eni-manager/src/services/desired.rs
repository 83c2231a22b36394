//! `desired(services, slices)`: the pure translation from Kubernetes objects to the table
//! the datapath should hold, one [`ServiceSpec`] per frontend (IP, port, protocol).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use eni_bpf::{Backend, IpFamily, Protocol, ServiceKey, ServiceSpec};
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

/// The frontend addresses: cluster IPs (IPv4 and IPv6, as a dual-stack service has one of
/// each), then IPv4 external IPs, each with whether it is a cluster IP. IPv6 external IPs
/// are skipped (the per-packet path is IPv4 only), and so are IPv4-mapped IPv6 addresses
/// (the IPv6 socket hooks serve an IPv4 service's mapped form from its IPv4 address).
fn frontends(svc: &Service, id: &str) -> Vec<(IpAddr, bool)> {
    let mut ips: Vec<(&str, bool)> = Vec::new();
    if svc.spec.cluster_ips.is_empty() {
        ips.extend(svc.spec.cluster_ip.as_deref().map(|ip| (ip, true)));
    } else {
        ips.extend(svc.spec.cluster_ips.iter().map(|ip| (ip.as_str(), true)));
    }
    ips.extend(svc.spec.external_ips.iter().map(|ip| (ip.as_str(), false)));
    let mut out: Vec<(IpAddr, bool)> = Vec::new();
    for (ip, cluster) in ips {
        let usable = match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) if !v4.is_unspecified() => Some(IpAddr::V4(v4)),
            Ok(IpAddr::V6(v6))
                if cluster && !v6.is_unspecified() && v6.to_ipv4_mapped().is_none() =>
            {
                Some(IpAddr::V6(v6))
            }
            Ok(_) => {
                debug!(
                    service = id,
                    ip, "unspecified, IPv4-mapped or IPv6 external frontend skipped"
                );
                None
            }
            Err(_) => {
                warn!(service = id, ip, "not an IP address; frontend skipped");
                None
            }
        };
        if let Some(a) = usable {
            if !out.iter().any(|(b, _)| *b == a) {
                out.push((a, cluster));
            }
        }
    }
    out
}

/// The table the datapath should hold for these services and slices.
///
/// - Frontends: every `clusterIP(s)` address (IPv4 and IPv6) and IPv4 `externalIPs`
///   address x every TCP/UDP port,
///   for `ClusterIP`, `NodePort` and `LoadBalancer` services (the socket hooks serve the
///   ClusterIP of all three). Headless (`clusterIP: None`) and `ExternalName` services
///   are skipped; SCTP ports are skipped with a log line.
/// - Backends: from the slices labelled `kubernetes.io/service-name: <name>` in the same
///   namespace whose `addressType` is the frontend's family (`IPv4` slices for an IPv4
///   frontend, `IPv6` slices for an IPv6 one; `FQDN` slices are ignored); `ready` endpoints are active, `serving` + `terminating` ones terminating
///   (no new connections), the others left out.
/// - `sessionAffinity: ClientIP`: `timeoutSeconds`, default 10800.
/// - `internalTrafficPolicy: Local`: see [`DesiredOptions::node_name`].
///
/// Two services claiming one frontend: the first by namespace/name wins, the other is logged.
pub fn desired(
    services: &[Service],
    slices: &[EndpointSlice],
) -> BTreeMap<ServiceKey, ServiceSpec> {
    desired_with(services, slices, &DesiredOptions::default())
}

/// What [`desired_with`] needs besides the objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredOptions {
    /// This node's Kubernetes name. With it, the cluster IPs of an
    /// `internalTrafficPolicy: Local` service get only the endpoints whose `nodeName` is
    /// this node (none there: no backend, as with kube-proxy); its external IPs keep every
    /// endpoint. Without it, `Local` is treated as `Cluster` (logged).
    pub node_name: Option<String>,
}

/// [`desired`] with options.
pub fn desired_with(
    services: &[Service],
    slices: &[EndpointSlice],
    opts: &DesiredOptions,
) -> BTreeMap<ServiceKey, ServiceSpec> {
    let mut order: Vec<&Service> = services.iter().collect();
    order.sort_by(|a, b| {
        (a.metadata.namespace(), &a.metadata.name).cmp(&(b.metadata.namespace(), &b.metadata.name))
    });
    // The slices of each service, found once (a scan per service would be quadratic:
    // 10,000 services took seconds).
    let mut slices_of: HashMap<(&str, &str, IpFamily), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        let family = match s.address_type.as_deref() {
            None | Some("IPv4") => IpFamily::V4,
            Some("IPv6") => IpFamily::V6,
            Some(_) => continue,
        };
        if let Some(name) = s.service_name() {
            slices_of
                .entry((s.metadata.namespace(), name, family))
                .or_default()
                .push(s);
        }
    }
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
        let local_node = match (
            svc.spec.internal_traffic_policy.as_deref(),
            opts.node_name.as_deref(),
        ) {
            (Some("Local"), Some(node)) => Some(node),
            (Some("Local"), None) => {
                warn!(service = %id, "internalTrafficPolicy: Local needs services.node_name; treated as Cluster");
                None
            }
            _ => None,
        };
        let vips = frontends(svc, &id);
        if vips.is_empty() {
            debug!(service = %id, "no usable frontend address; skipped");
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
        let families: BTreeSet<IpFamily> = vips.iter().map(|(ip, _)| IpFamily::of(*ip)).collect();
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
            // Per family: every backend, and (internalTrafficPolicy: Local) this node's.
            let mut specs: BTreeMap<IpFamily, (ServiceSpec, Option<ServiceSpec>)> = BTreeMap::new();
            for family in &families {
                let my_slices: &[&EndpointSlice] = slices_of
                    .get(&(ns, svc.metadata.name.as_str(), *family))
                    .map_or(&[], Vec::as_slice);
                let mut backends = Vec::new();
                let mut local_backends = Vec::new();
                let mut seen = HashSet::new();
                for slice in my_slices {
                    let Some(bport) = backend_port(sp, proto, slice) else {
                        continue;
                    };
                    for ep in &slice.endpoints {
                        let c = &ep.conditions;
                        let ready = c.ready.unwrap_or(true);
                        let serving = c.serving.unwrap_or(ready);
                        let terminating = c.terminating.unwrap_or(false);
                        for a in &ep.addresses {
                            let ip = match a.parse::<IpAddr>() {
                                Ok(ip) if IpFamily::of(ip) == *family => ip,
                                _ => {
                                    debug!(service = %id, address = %a, %family, "not an endpoint address of the slice's family; skipped");
                                    continue;
                                }
                            };
                            let addr = SocketAddr::new(ip, bport);
                            let b = if ready && !terminating {
                                Backend::active(addr)
                            } else if serving && terminating {
                                Backend::terminating(addr)
                            } else {
                                continue;
                            };
                            if seen.insert(addr) {
                                if local_node.is_some() && ep.node_name.as_deref() == local_node {
                                    local_backends.push(b);
                                }
                                backends.push(b);
                            }
                        }
                    }
                }
                let spec = normalize(ServiceSpec {
                    backends,
                    affinity_timeout: affinity,
                });
                let local_spec = local_node.map(|_| {
                    normalize(ServiceSpec {
                        backends: local_backends,
                        affinity_timeout: affinity,
                    })
                });
                specs.insert(*family, (spec, local_spec));
            }
            for (vip, cluster) in &vips {
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
                let Some((spec, local_spec)) = specs.get(&IpFamily::of(*vip)) else {
                    continue;
                };
                let spec = match local_spec {
                    Some(local) if *cluster => local,
                    _ => spec,
                };
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

/// The per-packet frontends (tc on the node's links) with their `externalTrafficPolicy`.
pub type ExternalTable = BTreeMap<ServiceKey, eni_bpf::TrafficPolicy>;

/// What the node adds to the Service table for traffic from outside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFrontends {
    /// The node's IPv4 addresses that NodePorts are served on.
    pub addresses: Vec<Ipv4Addr>,
}

/// What [`desired_external`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalDesired {
    /// Frontends [`desired`] does not produce: `nodeIP:nodePort` for `NodePort` and
    /// `LoadBalancer` services, `ingressIP:port` for `LoadBalancer` ones; same backends as
    /// the service port. Merge into the socket-LB table with [`merge_frontends`].
    pub extra: BTreeMap<ServiceKey, ServiceSpec>,
    /// Every frontend served per packet, with its policy: the ones of `extra` plus the
    /// `externalIPs` ones (which [`desired`] already has).
    pub external: ExternalTable,
}

/// The per-packet part of the table for these services: NodePorts on `node.addresses`,
/// LoadBalancer ingress IPs (`status.loadBalancer.ingress[].ip`) and externalIPs, with `externalTrafficPolicy` (`Local`: only
/// backends behind this node, client address kept; otherwise `Cluster`). Backends are
/// computed exactly as by [`desired`] (the frontends are presented to it as external IPs,
/// so `internalTrafficPolicy` never narrows them). `ExternalName` and headless services
/// and ports without a `nodePort` get no NodePort frontend.
pub fn desired_external(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeFrontends,
) -> ExternalDesired {
    let mut derived: Vec<Service> = Vec::new();
    let mut external = ExternalTable::new();
    let mut mark = |ip: Ipv4Addr, sp: &ServicePort, port: i32, policy| {
        if let (Ok(proto), Some(port)) = (
            protocol(sp.protocol.as_deref()),
            u16::try_from(port).ok().filter(|p| *p != 0),
        ) {
            external
                .entry(ServiceKey {
                    vip: ip.into(),
                    port,
                    protocol: proto,
                })
                .or_insert(policy);
        }
    };
    let mut order: Vec<&Service> = services.iter().collect();
    order.sort_by(|a, b| {
        (a.metadata.namespace(), &a.metadata.name).cmp(&(b.metadata.namespace(), &b.metadata.name))
    });
    for svc in order {
        let ty = svc.spec.type_.as_deref().unwrap_or("ClusterIP");
        if ty == "ExternalName" || matches!(svc.spec.cluster_ip.as_deref(), Some("None")) {
            continue;
        }
        let policy = match svc.spec.external_traffic_policy.as_deref() {
            Some("Local") => eni_bpf::TrafficPolicy::Local,
            _ => eni_bpf::TrafficPolicy::Cluster,
        };
        for ip in &svc.spec.external_ips {
            if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                for sp in &svc.spec.ports {
                    mark(ip, sp, sp.port, policy);
                }
            }
        }
        // A copy of the service whose only frontends are `ips` (as external IPs) and whose
        // ports are renumbered by `port_of`; backends resolve as for the original.
        let mut derive = |ips: &[Ipv4Addr], port_of: &dyn Fn(&ServicePort) -> Option<i32>| {
            let ports: Vec<ServicePort> = svc
                .spec
                .ports
                .iter()
                .filter_map(|sp| {
                    let port = port_of(sp)?;
                    for ip in ips {
                        mark(*ip, sp, port, policy);
                    }
                    Some(ServicePort {
                        port,
                        target_port: Some(
                            sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port)),
                        ),
                        ..sp.clone()
                    })
                })
                .collect();
            if ips.is_empty() || ports.is_empty() {
                return;
            }
            let mut d = svc.clone();
            d.spec.cluster_ip = None;
            d.spec.cluster_ips = Vec::new();
            d.spec.external_ips = ips.iter().map(Ipv4Addr::to_string).collect();
            d.spec.ports = ports;
            derived.push(d);
        };
        if matches!(ty, "NodePort" | "LoadBalancer") {
            derive(&node.addresses, &|sp: &ServicePort| {
                sp.node_port.filter(|p| *p > 0)
            });
        }
        if ty == "LoadBalancer" {
            derive(&svc.load_balancer_ips(), &|sp: &ServicePort| Some(sp.port));
        }
    }
    let extra = desired(&derived, slices);
    external
        .retain(|k, _| extra.contains_key(k) || services.iter().any(|s| serves_external_ip(s, k)));
    ExternalDesired { extra, external }
}

fn serves_external_ip(svc: &Service, k: &ServiceKey) -> bool {
    svc.spec
        .external_ips
        .iter()
        .any(|ip| ip.parse::<Ipv4Addr>().ok().map(IpAddr::V4) == Some(k.vip))
        && svc.spec.ports.iter().any(|sp| {
            u16::try_from(sp.port).ok() == Some(k.port)
                && protocol(sp.protocol.as_deref()).ok() == Some(k.protocol)
        })
}

/// Adds `extra` frontends to a socket-LB table; a frontend already there keeps its spec
/// (logged), like two services claiming one frontend in [`desired`].
pub fn merge_frontends(
    table: &mut BTreeMap<ServiceKey, ServiceSpec>,
    extra: BTreeMap<ServiceKey, ServiceSpec>,
) {
    for (k, spec) in extra {
        if table.contains_key(&k) {
            warn!(frontend = %k, "NodePort/LoadBalancer frontend already used by a Service; skipped");
            continue;
        }
        table.insert(k, spec);
    }
}

/// The frontends of the pods' host ports: `nodeAddress:hostPort/protocol` for every node
/// address in `node` (only `hostIP` when the mapping names one, and only if it is one of
/// them), each with the one backend `podIP:containerPort`. Served per packet with the
/// `Local` policy: the pod is on this node and sees the client's address. A `hostIP` that
/// is not a node address is skipped (logged): serving it would hijack the node's own
/// connections to another host.
pub fn desired_host_ports(
    entries: &[crate::hostports::HostPortEntry],
    node: &NodeFrontends,
) -> BTreeMap<ServiceKey, (ServiceSpec, String)> {
    let mut out: BTreeMap<ServiceKey, (ServiceSpec, String)> = BTreeMap::new();
    for e in entries {
        let addresses: Vec<Ipv4Addr> = match e.port.host_ip {
            None => node.addresses.clone(),
            Some(ip) if node.addresses.contains(&ip) => vec![ip],
            Some(ip) => {
                warn!(host_port = %e.port, holder = %e.holder, %ip, nodeport_addresses = ?node.addresses, "host port on an address that is not one of services.nodeport's node addresses; not served");
                continue;
            }
        };
        let protocol = match e.port.protocol {
            eni_rpc::PortProtocol::Tcp => Protocol::Tcp,
            eni_rpc::PortProtocol::Udp => Protocol::Udp,
        };
        for vip in addresses {
            let key = ServiceKey {
                vip: vip.into(),
                port: e.port.host_port,
                protocol,
            };
            if let Some((_, first)) = out.get(&key) {
                // The pool refuses overlapping host ports; two here is a bug upstream.
                warn!(frontend = %key, holder = %e.holder, owner = %first, "host port already served for another pod; skipped");
                continue;
            }
            let spec = ServiceSpec {
                backends: vec![Backend::active(SocketAddrV4::new(
                    e.pod_ip,
                    e.port.container_port,
                ))],
                affinity_timeout: None,
            };
            out.insert(key, (spec, e.holder.clone()));
        }
    }
    out
}

/// Adds host-port frontends to the socket-LB `table` and the per-packet `external` table
/// (policy `Local`). A frontend a Service already has (NodePort, externalIP, LoadBalancer
/// or cluster IP) stays the Service's: the host port is skipped and logged. Returns the
/// skipped frontends.
pub fn merge_host_ports(
    table: &mut BTreeMap<ServiceKey, ServiceSpec>,
    external: &mut ExternalTable,
    host: BTreeMap<ServiceKey, (ServiceSpec, String)>,
) -> Vec<ServiceKey> {
    let mut skipped = Vec::new();
    for (k, (spec, holder)) in host {
        if table.contains_key(&k) || external.contains_key(&k) {
            warn!(frontend = %k, holder = %holder, "host port collides with a Service frontend (NodePort, externalIP or LoadBalancer IP); the Service keeps it and the host port is not served");
            skipped.push(k);
            continue;
        }
        table.insert(k, spec);
        external.insert(k, eni_bpf::TrafficPolicy::Local);
    }
    skipped
}

#[cfg(test)]
mod host_port_tests {
    use super::*;
    use crate::hostports::{HostPort, HostPortEntry};
    use eni_bpf::TrafficPolicy;
    use eni_rpc::PortProtocol;

    const N1: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 5);
    const N2: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 6);
    const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);

    fn entry(ip: Option<Ipv4Addr>, port: u16, protocol: PortProtocol) -> HostPortEntry {
        HostPortEntry {
            port: HostPort {
                host_ip: ip,
                host_port: port,
                protocol,
                container_port: 80,
            },
            pod_ip: POD,
            holder: "c1/eth0".into(),
        }
    }

    fn k(vip: Ipv4Addr, port: u16, protocol: Protocol) -> ServiceKey {
        ServiceKey {
            vip: vip.into(),
            port,
            protocol,
        }
    }

    #[test]
    fn host_ports_are_served_on_every_node_address_or_only_on_their_host_ip() {
        let node = NodeFrontends {
            addresses: vec![N1, N2],
        };
        let d = desired_host_ports(
            &[
                entry(None, 8080, PortProtocol::Tcp),
                entry(None, 8080, PortProtocol::Udp),
                entry(Some(N2), 9090, PortProtocol::Tcp),
                entry(Some(Ipv4Addr::new(192, 0, 2, 1)), 9191, PortProtocol::Tcp),
            ],
            &node,
        );
        assert_eq!(
            d.keys().copied().collect::<Vec<_>>(),
            vec![
                k(N1, 8080, Protocol::Tcp),
                k(N1, 8080, Protocol::Udp),
                k(N2, 8080, Protocol::Tcp),
                k(N2, 8080, Protocol::Udp),
                k(N2, 9090, Protocol::Tcp),
            ],
            "a hostIP that is not a node address is not served"
        );
        let (spec, holder) = &d[&k(N1, 8080, Protocol::Udp)];
        assert_eq!(
            spec.backends,
            vec![Backend::active(SocketAddrV4::new(POD, 80))]
        );
        assert_eq!(holder, "c1/eth0");
    }

    #[test]
    fn a_service_frontend_wins_over_a_host_port() {
        let node = NodeFrontends {
            addresses: vec![N1],
        };
        let service_spec = ServiceSpec {
            backends: vec![Backend::active(SocketAddrV4::new(
                Ipv4Addr::new(10, 0, 0, 1),
                8080,
            ))],
            affinity_timeout: None,
        };
        // A NodePort Service on 30080/tcp.
        let mut table = BTreeMap::from([(k(N1, 30080, Protocol::Tcp), service_spec.clone())]);
        let mut external =
            ExternalTable::from([(k(N1, 30080, Protocol::Tcp), TrafficPolicy::Cluster)]);
        let host = desired_host_ports(
            &[
                entry(None, 30080, PortProtocol::Tcp),
                entry(None, 30080, PortProtocol::Udp),
            ],
            &node,
        );
        let skipped = merge_host_ports(&mut table, &mut external, host);
        assert_eq!(skipped, vec![k(N1, 30080, Protocol::Tcp)]);
        assert_eq!(table[&k(N1, 30080, Protocol::Tcp)], service_spec);
        assert_eq!(
            external[&k(N1, 30080, Protocol::Tcp)],
            TrafficPolicy::Cluster
        );
        assert_eq!(
            external[&k(N1, 30080, Protocol::Udp)],
            TrafficPolicy::Local,
            "host ports keep the client address and only ever go to the local pod"
        );
        assert_eq!(
            table[&k(N1, 30080, Protocol::Udp)].backends,
            vec![Backend::active(SocketAddrV4::new(POD, 80))]
        );
    }
}

#[cfg(test)]
mod external_tests {
    use super::*;
    use crate::services::types::{
        EndpointConditions, EndpointPort, LoadBalancerIngress, LoadBalancerStatus, ObjectMeta,
        ServiceSpec as Spec, ServiceStatus,
    };
    use eni_bpf::TrafficPolicy;

    fn svc(ty: &str, etp: Option<&str>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: "web".into(),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Spec {
                type_: Some(ty.into()),
                cluster_ip: Some("10.96.0.10".into()),
                external_ips: vec!["192.0.2.7".into()],
                external_traffic_policy: etp.map(Into::into),
                ports: vec![
                    ServicePort {
                        name: Some("http".into()),
                        port: 80,
                        node_port: Some(30080),
                        target_port: Some(IntOrString::String("web".into())),
                        ..Default::default()
                    },
                    ServicePort {
                        name: Some("dns".into()),
                        port: 53,
                        protocol: Some("UDP".into()),
                        node_port: Some(30053),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
            status: ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: vec![
                        LoadBalancerIngress {
                            ip: Some("203.0.113.9".into()),
                        },
                        LoadBalancerIngress { ip: None },
                    ],
                }),
            },
        }
    }

    fn slice() -> EndpointSlice {
        let mut s = EndpointSlice {
            metadata: ObjectMeta {
                name: "web-1".into(),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            address_type: Some("IPv4".into()),
            ports: vec![
                EndpointPort {
                    name: Some("http".into()),
                    port: Some(8080),
                    protocol: Some("TCP".into()),
                },
                EndpointPort {
                    name: Some("dns".into()),
                    port: Some(5353),
                    protocol: Some("UDP".into()),
                },
            ],
            ..Default::default()
        };
        s.metadata.labels.insert(
            crate::services::types::SERVICE_NAME_LABEL.into(),
            "web".into(),
        );
        s.endpoints.push(crate::services::types::Endpoint {
            addresses: vec!["10.0.0.1".into()],
            conditions: EndpointConditions::default(),
            ..Default::default()
        });
        s
    }

    fn k(ip: [u8; 4], port: u16, protocol: Protocol) -> ServiceKey {
        ServiceKey {
            vip: Ipv4Addr::from(ip).into(),
            port,
            protocol,
        }
    }

    fn node() -> NodeFrontends {
        NodeFrontends {
            addresses: vec![Ipv4Addr::new(172, 16, 0, 5)],
        }
    }

    #[test]
    fn load_balancer_gets_nodeports_ingress_ips_and_external_ips() {
        let d = desired_external(&[svc("LoadBalancer", Some("Local"))], &[slice()], &node());
        let extra: Vec<_> = d.extra.keys().copied().collect();
        assert_eq!(
            extra,
            vec![
                k([172, 16, 0, 5], 30053, Protocol::Udp),
                k([172, 16, 0, 5], 30080, Protocol::Tcp),
                k([203, 0, 113, 9], 53, Protocol::Udp),
                k([203, 0, 113, 9], 80, Protocol::Tcp),
            ]
        );
        // Backends resolve through the slice port named like the service port.
        let be = &d.extra[&k([172, 16, 0, 5], 30080, Protocol::Tcp)].backends;
        assert_eq!(be.len(), 1);
        assert_eq!(
            be[0].addr(),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 8080).into()
        );
        let udp = &d.extra[&k([203, 0, 113, 9], 53, Protocol::Udp)].backends;
        assert_eq!(udp[0].port, 5353);
        // externalIPs are served per packet too (their socket-LB entry comes from desired).
        let ext: Vec<_> = d.external.iter().map(|(k, p)| (*k, *p)).collect();
        assert_eq!(ext.len(), 6, "{ext:?}");
        assert!(ext.iter().all(|(_, p)| *p == TrafficPolicy::Local));
        assert!(d
            .external
            .contains_key(&k([192, 0, 2, 7], 80, Protocol::Tcp)));
        let base = desired(&[svc("LoadBalancer", Some("Local"))], &[slice()]);
        assert!(base.contains_key(&k([192, 0, 2, 7], 80, Protocol::Tcp)));
        let mut table = base.clone();
        merge_frontends(&mut table, d.extra.clone());
        assert_eq!(table.len(), base.len() + 4);
    }

    #[test]
    fn cluster_ip_services_only_serve_external_ips_and_default_policy_is_cluster() {
        let d = desired_external(&[svc("ClusterIP", None)], &[slice()], &node());
        assert!(d.extra.is_empty(), "{:?}", d.extra);
        assert_eq!(
            d.external,
            [
                (k([192, 0, 2, 7], 53, Protocol::Udp), TrafficPolicy::Cluster),
                (k([192, 0, 2, 7], 80, Protocol::Tcp), TrafficPolicy::Cluster),
            ]
            .into_iter()
            .collect()
        );
        // NodePort: node addresses, no load balancer IPs; no nodePort -> no frontend.
        let mut s = svc("NodePort", None);
        s.spec.ports[1].node_port = None;
        let d = desired_external(&[s], &[slice()], &node());
        assert_eq!(
            d.extra.keys().copied().collect::<Vec<_>>(),
            vec![k([172, 16, 0, 5], 30080, Protocol::Tcp)]
        );
    }

    #[test]
    fn headless_and_external_name_get_nothing() {
        let mut h = svc("NodePort", None);
        h.spec.cluster_ip = Some("None".into());
        let x = svc("ExternalName", None);
        let d = desired_external(&[h, x], &[slice()], &node());
        assert!(d.extra.is_empty() && d.external.is_empty());
    }
}
