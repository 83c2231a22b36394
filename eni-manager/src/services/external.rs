//! The per-packet path of `services.nodeport`: traffic from outside the node to NodePorts,
//! externalIPs and LoadBalancer ingress IPs, served by tc programs on the node's links
//! (`eni_bpf::NodePortLb`).
//!
//! It owns three things: [`plan`], which turns the configuration and the links the kernel
//! reports into the links to attach to (each with the address clients are SNATed to) and
//! the node addresses NodePorts answer on; [`NodePortPath`], which both sources call
//! around their socket-LB reconcile (add the NodePort/LoadBalancer frontends to the table
//! before it, write the per-packet frontends after it); and the counters. It does not
//! load or attach programs ([`super::start`] does) and writes no socket-LB map itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use eni_bpf::{ExternalFrontends, ServiceKey, ServiceSpec};
use tracing::{info, warn};

use super::desired::{
    desired_external, desired_host_ports, merge_frontends, merge_host_ports, ExternalTable,
    NodeFrontends,
};
use super::reconcile::reconcile_external;
use super::types::{EndpointSlice, Service};
use crate::config::NodePortConfig;
use crate::hostports::HostPorts;

/// Why the NodePort path could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NodePortSetupError {
    /// A configured link does not exist.
    #[error(
        "services.nodeport.links: no link named {link:?} in the manager's network namespace \
         (it has: {have}); fix the name or create the link before the manager starts"
    )]
    UnknownLink {
        /// The configured name.
        link: String,
        /// The links there are.
        have: String,
    },
    /// A link has no IPv4 address to SNAT to and none is configured.
    #[error(
        "services.nodeport.links: {link:?} has no IPv4 address, nor has any other configured \
         link, and services.nodeport.addresses is empty; give the node's address in \
         services.nodeport.addresses"
    )]
    NoAddress {
        /// The link.
        link: String,
    },
    /// The links or addresses could not be read.
    #[error(
        "services.nodeport: reading the links and addresses of the manager's network namespace"
    )]
    Netlink {
        /// Why.
        #[source]
        source: eni_kernel::Error,
    },
}

/// One link to attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLink {
    /// Interface name.
    pub name: String,
    /// The address clients are SNATed to when a backend is reached through this link.
    pub node_ip: Ipv4Addr,
}

/// What the NodePort path will use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePortPlan {
    /// The links, in configuration order.
    pub links: Vec<PlannedLink>,
    /// The node addresses NodePorts answer on.
    pub addresses: Vec<Ipv4Addr>,
}

/// The plan for `cfg`, given the namespace's links (`name`, index) and IPv4 addresses
/// (link index, address), in the kernel's order.
///
/// Each link's SNAT address: a configured address the link holds, else the link's first
/// address, else the first configured address, else the first address of the other
/// configured links (a secondary ENI often has none of its own). The NodePort addresses:
/// the configured ones, else every address of the links (deduplicated, in link order).
pub fn plan(
    cfg: &NodePortConfig,
    links: &[(String, u32)],
    addrs: &[(u32, Ipv4Addr)],
) -> Result<NodePortPlan, NodePortSetupError> {
    let configured = cfg.parsed_addresses();
    let mut found: Vec<(&String, Vec<Ipv4Addr>)> = Vec::new();
    let mut own = Vec::new();
    for name in &cfg.links {
        let Some((_, index)) = links.iter().find(|(n, _)| n == name) else {
            return Err(NodePortSetupError::UnknownLink {
                link: name.clone(),
                have: links
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let on_link: Vec<Ipv4Addr> = addrs
            .iter()
            .filter(|(i, a)| i == index && !a.is_loopback())
            .map(|(_, a)| *a)
            .collect();
        for a in &on_link {
            if !own.contains(a) {
                own.push(*a);
            }
        }
        found.push((name, on_link));
    }
    let mut planned = Vec::new();
    for (name, on_link) in found {
        let node_ip = on_link
            .iter()
            .find(|a| configured.contains(a))
            .or(on_link.first())
            .or(configured.first())
            .or(own.first())
            .copied()
            .ok_or_else(|| NodePortSetupError::NoAddress { link: name.clone() })?;
        planned.push(PlannedLink {
            name: name.clone(),
            node_ip,
        });
    }
    Ok(NodePortPlan {
        links: planned,
        addresses: if configured.is_empty() {
            own
        } else {
            configured
        },
    })
}

/// [`plan`] with the links and addresses of the calling thread's network namespace.
pub fn plan_from_kernel(cfg: &NodePortConfig) -> Result<NodePortPlan, NodePortSetupError> {
    let err = |source| NodePortSetupError::Netlink { source };
    let mut h = eni_kernel::Handle::new().map_err(err)?;
    let links: Vec<(String, u32)> = h
        .link_list()
        .map_err(err)?
        .into_iter()
        .map(|l| (l.name, l.index))
        .collect();
    let addrs: Vec<(u32, Ipv4Addr)> = h
        .addr_list(None)
        .map_err(err)?
        .into_iter()
        .map(|a| (a.index, a.address.addr()))
        .collect();
    plan(cfg, &links, &addrs)
}

/// Counters of the NodePort path, in the manager's metrics format.
#[derive(Debug, Default)]
pub struct NodePortStats {
    links: AtomicU64,
    reconciles: AtomicU64,
    failures: AtomicU64,
    set: AtomicU64,
    removed: AtomicU64,
    frontends: AtomicU64,
}

impl NodePortStats {
    /// Records how many links the programs are attached to.
    pub fn set_links(&self, n: usize) {
        self.links.store(n as u64, Ordering::Relaxed);
    }

    /// Reconciles of the per-packet frontends done.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }

    /// Per-packet frontends wanted at the last reconcile.
    pub fn frontends(&self) -> u64 {
        self.frontends.load(Ordering::Relaxed)
    }

    /// The text exposition of these counters.
    pub fn render(&self) -> String {
        let mut o = String::new();
        for (name, help, ty, v) in [
            (
                "eni_services_nodeport_links",
                "Links the NodePort programs are attached to.",
                "gauge",
                &self.links,
            ),
            (
                "eni_services_nodeport_frontends",
                "Frontends served per packet (NodePorts, externalIPs, LoadBalancer IPs) wanted at the last reconcile.",
                "gauge",
                &self.frontends,
            ),
            (
                "eni_services_nodeport_reconciles_total",
                "Reconciles of the per-packet frontends.",
                "counter",
                &self.reconciles,
            ),
            (
                "eni_services_nodeport_reconcile_failures_total",
                "Reconciles of the per-packet frontends that could not read the map or left a frontend unwritten.",
                "counter",
                &self.failures,
            ),
            (
                "eni_services_nodeport_frontends_set_total",
                "Per-packet frontends added or changed.",
                "counter",
                &self.set,
            ),
            (
                "eni_services_nodeport_frontends_removed_total",
                "Per-packet frontends removed.",
                "counter",
                &self.removed,
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {ty}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        o
    }
}

impl crate::metrics::MetricsSource for NodePortStats {
    fn render(&self) -> String {
        NodePortStats::render(self)
    }
}

/// The per-packet frontends table and what the sources need to fill it.
pub struct NodePortPath {
    frontends: Box<dyn ExternalFrontends + Send>,
    node: NodeFrontends,
    stats: Arc<NodePortStats>,
    /// The pods' host ports, when the node serves them.
    host_ports: Option<HostPorts>,
    /// The host-port generation the last [`extend`](NodePortPath::extend) read.
    host_ports_read: AtomicU64,
}

impl std::fmt::Debug for NodePortPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePortPath")
            .field("node", &self.node)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl NodePortPath {
    /// A path writing `frontends` (the loaded `NodePortLb`, or an in-memory table in
    /// tests), serving NodePorts on `addresses`.
    pub fn new(frontends: Box<dyn ExternalFrontends + Send>, addresses: Vec<Ipv4Addr>) -> Self {
        Self {
            frontends,
            node: NodeFrontends { addresses },
            stats: Arc::default(),
            host_ports: None,
            host_ports_read: AtomicU64::new(0),
        }
    }

    /// Also serves the pods' host ports from `hp` (read at every [`extend`](Self::extend);
    /// [`apply`](Self::apply) reports the generation written back to `hp`).
    pub fn with_host_ports(mut self, hp: HostPorts) -> Self {
        self.host_ports = Some(hp);
        self
    }

    /// The host ports served, when there are any.
    pub fn host_ports(&self) -> Option<&HostPorts> {
        self.host_ports.as_ref()
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<NodePortStats> {
        &self.stats
    }

    /// The node addresses NodePorts answer on.
    pub fn addresses(&self) -> &[Ipv4Addr] {
        &self.node.addresses
    }

    /// Adds the NodePort and LoadBalancer-IP frontends of `services` to the socket-LB
    /// `table` (so they get backends like any frontend) and returns the per-packet table
    /// to [`apply`](Self::apply) once `table` is reconciled.
    pub fn extend(
        &self,
        services: &[Service],
        slices: &[EndpointSlice],
        table: &mut BTreeMap<ServiceKey, ServiceSpec>,
    ) -> ExternalTable {
        let d = desired_external(services, slices, &self.node);
        merge_frontends(table, d.extra);
        // A frontend another Service already owns in `table` keeps that Service's backends;
        // serving it per packet is still right (it is a frontend either way).
        let mut external = d.external;
        if let Some(hp) = &self.host_ports {
            let (generation, entries) = hp.snapshot();
            let host = desired_host_ports(&entries, &self.node);
            merge_host_ports(table, &mut external, host);
            self.host_ports_read.store(generation, Ordering::Relaxed);
        }
        external
    }

    /// Makes the per-packet frontends equal `want` (after the socket-LB reconcile, so the
    /// backends exist first); logs and counts what changed.
    pub fn apply(&mut self, want: &ExternalTable) {
        self.stats
            .frontends
            .store(want.len() as u64, Ordering::Relaxed);
        match reconcile_external(self.frontends.as_mut(), want) {
            Ok(r) => {
                self.stats.reconciles.fetch_add(1, Ordering::Relaxed);
                self.stats.set.fetch_add(r.set as u64, Ordering::Relaxed);
                self.stats
                    .removed
                    .fetch_add(r.removed as u64, Ordering::Relaxed);
                if !r.errors.is_empty() {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(hp) = self.host_ports.as_ref().filter(|_| r.errors.is_empty()) {
                    hp.mark_applied(self.host_ports_read.load(Ordering::Relaxed));
                }
                if r.set + r.removed > 0 || !r.errors.is_empty() {
                    info!(
                        frontends = want.len(),
                        set = r.set,
                        removed = r.removed,
                        errors = r.errors.len(),
                        "per-packet frontends reconciled"
                    );
                }
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "cannot read the per-packet frontends; will retry at the next reconcile");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eni_bpf::{Protocol, TrafficPolicy};

    fn cfg(links: &[&str], addresses: &[&str]) -> NodePortConfig {
        NodePortConfig {
            enabled: true,
            links: links.iter().map(|s| s.to_string()).collect(),
            addresses: addresses.iter().map(|s| s.to_string()).collect(),
        }
    }

    const A: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
    const A2: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 20);
    const B: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 12);

    /// Links (name, index) and addresses (index, address), as netlink lists them.
    type Kernel = (Vec<(String, u32)>, Vec<(u32, Ipv4Addr)>);

    fn kernel() -> Kernel {
        (
            vec![
                ("lo".into(), 1),
                ("eth0".into(), 2),
                ("eth1".into(), 3),
                ("eth2".into(), 4),
            ],
            vec![(1, Ipv4Addr::LOCALHOST), (2, A), (2, A2), (3, B)],
        )
    }

    #[test]
    fn plan_defaults_to_the_links_own_addresses() {
        let (l, a) = kernel();
        let p = plan(&cfg(&["eth0", "eth1"], &[]), &l, &a).unwrap();
        assert_eq!(
            p.links,
            vec![
                PlannedLink {
                    name: "eth0".into(),
                    node_ip: A
                },
                PlannedLink {
                    name: "eth1".into(),
                    node_ip: B
                }
            ]
        );
        assert_eq!(p.addresses, vec![A, A2, B]);
    }

    #[test]
    fn plan_prefers_configured_addresses_and_names_what_is_wrong() {
        let (l, a) = kernel();
        let p = plan(&cfg(&["eth0", "eth2"], &["192.168.1.20"]), &l, &a).unwrap();
        assert_eq!(
            p.links[0].node_ip, A2,
            "the configured address the link holds"
        );
        assert_eq!(
            p.links[1].node_ip, A2,
            "a link without address SNATs to the first configured one"
        );
        assert_eq!(p.addresses, vec![A2]);
        let e = plan(&cfg(&["eth0", "eth9"], &[]), &l, &a).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("services.nodeport.links: no link named \"eth9\"")
                && msg.contains("lo, eth0, eth1, eth2"),
            "{msg}"
        );
        let p = plan(&cfg(&["eth2", "eth1"], &[]), &l, &a).unwrap();
        assert_eq!(
            p.links[0].node_ip, B,
            "a link without address SNATs to another link's"
        );
        let e = plan(&cfg(&["eth2"], &[]), &l, &a).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("services.nodeport.links: \"eth2\" has no IPv4 address"),
            "{e}"
        );
        let e = plan(&cfg(&["lo"], &[]), &l, &a).unwrap_err();
        assert!(matches!(e, NodePortSetupError::NoAddress { .. }), "{e}");
    }

    #[test]
    fn plan_from_kernel_reads_this_namespace() {
        // Every namespace has `lo` with 127.0.0.1 only: no usable address there.
        let e = plan_from_kernel(&cfg(&["lo"], &[])).unwrap_err();
        assert!(matches!(e, NodePortSetupError::NoAddress { .. }), "{e}");
        let p = plan_from_kernel(&cfg(&["lo"], &["10.9.9.9"])).unwrap();
        assert_eq!(p.links[0].node_ip, Ipv4Addr::new(10, 9, 9, 9));
        let e = plan_from_kernel(&cfg(&["no-such-link0"], &[])).unwrap_err();
        assert!(matches!(e, NodePortSetupError::UnknownLink { .. }), "{e}");
    }

    const NODEPORT_YAML: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalIPs: [192.0.2.7]
  externalTrafficPolicy: Local
  ports:
    - { name: http, port: 80, targetPort: 8080, nodePort: 30080 }
status:
  loadBalancer: { ingress: [ { ip: 203.0.113.9 } ] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-1, namespace: shop, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [ { name: http, port: 8080 } ]
endpoints: [ { addresses: [10.0.0.1] } ]
"#;

    fn key(ip: Ipv4Addr, port: u16) -> ServiceKey {
        ServiceKey {
            vip: ip.into(),
            port,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn host_ports_ride_on_the_path_and_their_generation_is_reported_applied() {
        use crate::hostports::{HostPort, HostPortEntry, HostPorts};
        let hp = HostPorts::new();
        let pod = Ipv4Addr::new(10, 0, 0, 9);
        let g = hp.set(vec![HostPortEntry {
            port: HostPort {
                host_ip: None,
                host_port: 8080,
                protocol: eni_rpc::PortProtocol::Tcp,
                container_port: 80,
            },
            pod_ip: pod,
            holder: "c1/eth0".into(),
        }]);
        let frontends = BTreeMap::<ServiceKey, TrafficPolicy>::new();
        let mut path =
            NodePortPath::new(Box::new(frontends), vec![A, B]).with_host_ports(hp.clone());
        let mut table = BTreeMap::new();
        let want = path.extend(&[], &[], &mut table);
        assert_eq!(
            want.iter().map(|(k, p)| (*k, *p)).collect::<Vec<_>>(),
            vec![
                (key(A, 8080), TrafficPolicy::Local),
                (key(B, 8080), TrafficPolicy::Local)
            ]
        );
        assert_eq!(
            table[&key(B, 8080)].backends[0].addr(),
            std::net::SocketAddrV4::new(pod, 80).into()
        );
        assert_eq!(hp.applied(), 0, "nothing is applied before the write");
        path.apply(&want);
        assert_eq!(hp.applied(), g);
        // Removed from the set: gone from both tables at the next pass.
        let g2 = hp.set(Vec::new());
        let mut table = BTreeMap::new();
        let want = path.extend(&[], &[], &mut table);
        assert!(want.is_empty() && table.is_empty());
        path.apply(&want);
        assert_eq!(hp.applied(), g2);
    }

    #[test]
    fn the_path_extends_the_table_then_writes_the_frontends_and_counts() {
        let mut loaded = super::super::files::Loaded::default();
        super::super::files::parse_into(std::path::Path::new("t.yaml"), NODEPORT_YAML, &mut loaded);
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let mut path = NodePortPath::new(
            Box::new(BTreeMap::<ServiceKey, TrafficPolicy>::new()),
            vec![A],
        );
        let mut table = super::super::desired(&loaded.services, &loaded.slices);
        assert_eq!(table.len(), 2, "cluster IP and external IP");
        let want = path.extend(&loaded.services, &loaded.slices, &mut table);
        assert!(table.contains_key(&key(A, 30080)), "{table:?}");
        assert!(table.contains_key(&key(Ipv4Addr::new(203, 0, 113, 9), 80)));
        assert_eq!(table.len(), 4);
        assert_eq!(
            want.keys().copied().collect::<Vec<_>>(),
            vec![
                key(Ipv4Addr::new(192, 0, 2, 7), 80),
                key(A, 30080),
                key(Ipv4Addr::new(203, 0, 113, 9), 80)
            ]
        );
        assert!(want.values().all(|p| *p == TrafficPolicy::Local));
        path.apply(&want);
        path.apply(&want);
        assert_eq!(path.stats().reconciles(), 2);
        assert_eq!(path.stats().frontends(), 3);
        let text = path.stats().render();
        assert!(
            text.contains("eni_services_nodeport_frontends_set_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("eni_services_nodeport_frontends_removed_total 0\n"),
            "{text}"
        );
        path.apply(&ExternalTable::new());
        assert!(path
            .stats()
            .render()
            .contains("eni_services_nodeport_frontends_removed_total 3\n"));
    }
}
