//! ENI bring-up on the node: find the NIC of an attached ENI by its MAC, set its MTU and bring
//! it up, and give a shared ENI its own route table and a rule for its primary address, so
//! that traffic from its addresses leaves through it; undo all of that before detach.
//!
//! The pool calls this through the [`NodeNetwork`] trait (blocking; run it on a blocking
//! thread), so the pool's logic is tested with [`FakeNodeNetwork`] without root.

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::pool::state::EniKind;

/// What bring-up needs to know about one ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniNetSpec {
    /// The ENI id (for messages).
    pub eni_id: String,
    /// MAC address, lower case.
    pub mac: String,
    /// Shared or exclusive (an exclusive ENI gets no routes on the node: its pod configures it).
    pub kind: EniKind,
    /// MTU.
    pub mtu: u32,
    /// Route table for its addresses.
    pub route_table: u32,
    /// Priority of its rules.
    pub rule_priority: u32,
    /// Its subnet.
    pub cidr: Ipv4Net,
    /// The subnet's gateway.
    pub gateway: Ipv4Addr,
    /// The ENI's primary address.
    pub primary_ip: Ipv4Addr,
}

/// Why node networking failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeNetError {
    /// No link with the ENI's MAC appeared in time.
    #[error("no network interface with MAC {mac} (ENI {eni_id}) appeared within {waited:?}")]
    LinkNotFound {
        /// ENI id.
        eni_id: String,
        /// MAC.
        mac: String,
        /// How long we looked.
        waited: Duration,
    },
    /// A kernel operation failed.
    #[error("configuring ENI {eni_id} on the node: {op}: {message}")]
    Kernel {
        /// ENI id.
        eni_id: String,
        /// What was being done.
        op: String,
        /// The kernel's answer.
        message: String,
    },
}

/// ENI bring-up and teardown on the node.
pub trait NodeNetwork: Send + Sync + std::fmt::Debug {
    /// Finds the ENI's link (waiting up to `wait` for it to appear), configures it, and
    /// returns its name. Idempotent.
    fn bring_up(&self, spec: &EniNetSpec, wait: Duration) -> Result<String, NodeNetError>;
    /// Removes what `bring_up` added (rules, routes). Idempotent; a missing link is fine.
    fn tear_down(&self, spec: &EniNetSpec) -> Result<(), NodeNetError>;
}

/// A recording fake: links "appear" for MACs it is told about.
#[derive(Debug, Default)]
pub struct FakeNodeNetwork {
    inner: Mutex<FakeInner>,
}

#[derive(Debug, Default)]
struct FakeInner {
    up: Vec<(String, String)>,
    fail_mac: Option<String>,
    calls: Vec<String>,
    next: u32,
}

impl FakeNodeNetwork {
    /// Bring-up of this MAC will fail with `LinkNotFound`.
    pub fn fail_for(&self, mac: &str) {
        self.inner.lock().expect("fake lock").fail_mac = Some(mac.to_string());
    }

    /// Links currently configured: (ENI id, name).
    pub fn configured(&self) -> Vec<(String, String)> {
        self.inner.lock().expect("fake lock").up.clone()
    }

    /// Every call, in order.
    pub fn calls(&self) -> Vec<String> {
        self.inner.lock().expect("fake lock").calls.clone()
    }
}

impl NodeNetwork for FakeNodeNetwork {
    fn bring_up(&self, spec: &EniNetSpec, wait: Duration) -> Result<String, NodeNetError> {
        let mut g = self.inner.lock().expect("fake lock");
        g.calls.push(format!("up {}", spec.eni_id));
        if g.fail_mac.as_deref() == Some(spec.mac.as_str()) {
            return Err(NodeNetError::LinkNotFound {
                eni_id: spec.eni_id.clone(),
                mac: spec.mac.clone(),
                waited: wait,
            });
        }
        if let Some((_, name)) = g.up.iter().find(|(id, _)| *id == spec.eni_id) {
            return Ok(name.clone());
        }
        g.next += 1;
        let name = format!("eth{}", g.next);
        g.up.push((spec.eni_id.clone(), name.clone()));
        Ok(name)
    }

    fn tear_down(&self, spec: &EniNetSpec) -> Result<(), NodeNetError> {
        let mut g = self.inner.lock().expect("fake lock");
        g.calls.push(format!("down {}", spec.eni_id));
        g.up.retain(|(id, _)| *id != spec.eni_id);
        Ok(())
    }
}

/// Configures nothing: for tests against cloud emulators without a hypervisor (moto), where
/// attached ENIs never appear as links (`network.node_network: none`). The ENI's id stands in
/// for its link name.
#[derive(Debug, Default)]
pub struct NoNodeNetwork;

impl NodeNetwork for NoNodeNetwork {
    fn bring_up(&self, spec: &EniNetSpec, _wait: Duration) -> Result<String, NodeNetError> {
        Ok(spec.eni_id.clone())
    }

    fn tear_down(&self, _spec: &EniNetSpec) -> Result<(), NodeNetError> {
        Ok(())
    }
}

/// The real thing, on the node's own network namespace, through `eni-kernel`.
#[derive(Debug, Default)]
pub struct KernelNodeNetwork;

fn kerr(eni: &EniNetSpec, op: impl Into<String>) -> impl FnOnce(eni_kernel::Error) -> NodeNetError {
    let eni_id = eni.eni_id.clone();
    let op = op.into();
    move |e| NodeNetError::Kernel {
        eni_id,
        op,
        message: e.to_string(),
    }
}

impl KernelNodeNetwork {
    fn find(
        h: &mut eni_kernel::Handle,
        spec: &EniNetSpec,
        wait: Duration,
    ) -> Result<Option<eni_kernel::Link>, NodeNetError> {
        let mac: eni_kernel::MacAddr =
            spec.mac
                .parse()
                .map_err(|e: eni_kernel::Error| NodeNetError::Kernel {
                    eni_id: spec.eni_id.clone(),
                    op: "parse MAC".into(),
                    message: e.to_string(),
                })?;
        let start = std::time::Instant::now();
        loop {
            match eni_kernel::Netlink::link_by_mac(h, mac) {
                Ok(l) => return Ok(Some(l)),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(kerr(spec, "find link by MAC")(e)),
            }
            if start.elapsed() >= wait {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn table_routes(spec: &EniNetSpec, index: u32) -> [eni_kernel::Route; 2] {
        use eni_kernel::{Route, Scope};
        [
            Route::new(spec.route_table)
                .dst(spec.cidr)
                .oif(index)
                .scope(Scope::Link)
                .prefsrc(spec.primary_ip),
            Route::new(spec.route_table)
                .gateway(spec.gateway)
                .oif(index)
                .onlink(),
        ]
    }

    fn rule(spec: &EniNetSpec) -> eni_kernel::Rule {
        eni_kernel::Rule::new(spec.route_table)
            .priority(spec.rule_priority)
            .from(Ipv4Net::new(spec.primary_ip, 32).expect("/32 is valid"))
    }
}

impl NodeNetwork for KernelNodeNetwork {
    fn bring_up(&self, spec: &EniNetSpec, wait: Duration) -> Result<String, NodeNetError> {
        use eni_kernel::{sysctl, Addr, Netlink};
        let mut h = eni_kernel::Handle::new().map_err(kerr(spec, "open netlink"))?;
        let link = Self::find(&mut h, spec, wait)?.ok_or_else(|| NodeNetError::LinkNotFound {
            eni_id: spec.eni_id.clone(),
            mac: spec.mac.clone(),
            waited: wait,
        })?;
        if link.mtu != spec.mtu {
            h.link_set_mtu(link.index, spec.mtu)
                .map_err(kerr(spec, format!("set MTU {} on {}", spec.mtu, link.name)))?;
        }
        if spec.kind == EniKind::Exclusive {
            // Its pod configures it; on the node it only needs the right MTU.
            return Ok(link.name);
        }
        // Several NICs share one subnet: each answers ARP only for its own addresses, and
        // traffic arriving on one NIC for an address routed via another is not dropped.
        sysctl::set_ipv4_forwarding(true).map_err(kerr(spec, "enable IPv4 forwarding"))?;
        for (k, v) in [
            ("rp_filter", "2"),
            ("arp_ignore", "1"),
            ("arp_announce", "2"),
        ] {
            sysctl::set_ipv4_conf(&link.name, k, v)
                .map_err(kerr(spec, format!("sysctl {k} on {}", link.name)))?;
        }
        // Answer the VPC's ARP for pod addresses (proxy entries) at once, not after a random
        // delay of up to 0.8 s.
        sysctl::write(&format!("net/ipv4/neigh/{}/proxy_delay", link.name), "0")
            .map_err(kerr(spec, format!("sysctl proxy_delay on {}", link.name)))?;
        if !link.up {
            h.link_set_up(link.index)
                .map_err(kerr(spec, format!("set {} up", link.name)))?;
        }
        // The primary address as /32: no subnet route in the main table to fight the
        // primary NIC's.
        h.addr_ensure(&Addr::new(
            link.index,
            Ipv4Net::new(spec.primary_ip, 32).expect("/32 is valid"),
        ))
        .map_err(kerr(
            spec,
            format!("add {} to {}", spec.primary_ip, link.name),
        ))?;
        for r in Self::table_routes(spec, link.index) {
            h.route_replace(&r)
                .map_err(kerr(spec, format!("route in table {}", spec.route_table)))?;
        }
        h.rule_ensure(&Self::rule(spec)).map_err(kerr(
            spec,
            format!("rule from {} lookup {}", spec.primary_ip, spec.route_table),
        ))?;
        Ok(link.name)
    }

    fn tear_down(&self, spec: &EniNetSpec) -> Result<(), NodeNetError> {
        use eni_kernel::{Addr, Netlink};
        let mut h = eni_kernel::Handle::new().map_err(kerr(spec, "open netlink"))?;
        let mut errors = Vec::new();
        if let Err(e) = h.rule_del_if_exists(&Self::rule(spec)) {
            errors.push(format!("delete rule: {e}"));
        }
        match h.route_list(spec.route_table) {
            Ok(routes) => {
                for r in routes {
                    if let Err(e) = h.route_del_if_exists(&r) {
                        errors.push(format!("delete route: {e}"));
                    }
                }
            }
            Err(e) => errors.push(format!("list table {}: {e}", spec.route_table)),
        }
        if let Some(link) = Self::find(&mut h, spec, Duration::ZERO)? {
            if let Err(e) = h.addr_del_if_exists(&Addr::new(
                link.index,
                Ipv4Net::new(spec.primary_ip, 32).expect("/32 is valid"),
            )) {
                errors.push(format!("delete address: {e}"));
            }
            let _ = h.link_set_down(link.index);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NodeNetError::Kernel {
                eni_id: spec.eni_id.clone(),
                op: "tear down".into(),
                message: errors.join("; "),
            })
        }
    }
}
