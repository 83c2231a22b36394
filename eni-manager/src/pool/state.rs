//! The pool's durable model: ENIs this node owns, their addresses, the allocations handed to
//! pods and the cloud operations in flight, changed only by applying [`Event`]s.
//!
//! Every event is journaled (and synced) before its effect is visible outside the manager, so
//! replaying the journal after a crash rebuilds exactly what was promised. This module is pure
//! data: no I/O, no clock, no cloud.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Identifies one attachment of a pod: the CNI's container id and interface name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AllocKey {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

impl fmt::Display for AllocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// The pod an allocation belongs to, when the runtime told us.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    #[serde(default)]
    pub uid: Option<String>,
}

/// An address (or a whole ENI) handed to a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocRecord {
    /// Who holds it.
    pub key: AllocKey,
    /// The address.
    pub ip: Ipv4Addr,
    /// The ENI it belongs to.
    pub eni_id: String,
    /// The pod's network namespace path.
    pub netns: String,
    /// The pod.
    #[serde(default)]
    pub pod: Option<PodInfo>,
    /// The whole ENI is the pod's (exclusive mode).
    #[serde(default)]
    pub exclusive: bool,
    /// When (ms since epoch).
    pub at_ms: u64,
    /// The pod's host ports (`hostPort`); absent in records written before host ports
    /// existed, and left out when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<crate::hostports::HostPort>,
}

/// What an ENI is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EniKind {
    /// Its secondary addresses go to pods that share it.
    Shared,
    /// The whole ENI goes to one pod at a time.
    Exclusive,
}

/// Where an ENI is in its life on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EniPhase {
    /// Attached, its link is configured: addresses can be handed out.
    Ready,
    /// Being detached and deleted: nothing new is handed out.
    Leaving,
}

/// An ENI this node owns (attached to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniRecord {
    /// `eni-...`.
    pub id: String,
    /// MAC, lower case.
    pub mac: String,
    /// Shared or exclusive.
    pub kind: EniKind,
    /// Phase.
    pub phase: EniPhase,
    /// vSwitch/subnet id.
    pub subnet_id: String,
    /// The vSwitch/subnet CIDR.
    pub cidr: Ipv4Net,
    /// The gateway of that CIDR.
    pub gateway: Ipv4Addr,
    /// The ENI's own primary address (never handed to a shared pod).
    pub primary_ip: Ipv4Addr,
    /// Device index on the instance.
    #[serde(default)]
    pub device_index: Option<u32>,
    /// AWS attachment id (needed to detach).
    #[serde(default)]
    pub attachment_id: Option<String>,
    /// The link's name on the node, once found.
    #[serde(default)]
    pub host_ifname: Option<String>,
    /// The route table of its addresses.
    pub route_table: u32,
    /// Secondary addresses, including the members of its prefixes.
    pub ips: BTreeSet<Ipv4Addr>,
    /// /28 prefixes.
    #[serde(default)]
    pub prefixes: BTreeSet<Ipv4Net>,
}

impl EniRecord {
    /// Address slots used on the cloud side: the primary, each secondary IP outside a prefix,
    /// and each prefix.
    pub fn slots_used(&self) -> u32 {
        let in_prefix = |ip: &Ipv4Addr| self.prefixes.iter().any(|p| p.contains(ip));
        1 + self.ips.iter().filter(|ip| !in_prefix(ip)).count() as u32 + self.prefixes.len() as u32
    }
}

/// A cloud operation that was started and may not have finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Intent {
    /// Create an ENI (with `ips` secondary IPs or `prefixes` prefixes), attach it, bring it up.
    CreateEni {
        /// Idempotency token of the create.
        token: String,
        /// vSwitch/subnet.
        subnet_id: String,
        /// Shared or exclusive.
        kind: EniKind,
        /// Secondary IPs asked for.
        ips: u32,
        /// Prefixes asked for.
        prefixes: u32,
    },
    /// Add addresses to an ENI.
    Assign {
        /// The ENI.
        eni_id: String,
        /// Idempotency token.
        token: String,
        /// Secondary IPs asked for.
        ips: u32,
        /// Prefixes asked for.
        prefixes: u32,
    },
    /// Remove addresses from an ENI; they are not handed out meanwhile.
    Unassign {
        /// The ENI.
        eni_id: String,
        /// The addresses.
        ips: BTreeSet<Ipv4Addr>,
        /// The prefixes.
        #[serde(default)]
        prefixes: BTreeSet<Ipv4Net>,
    },
    /// Detach and delete an ENI.
    RemoveEni {
        /// The ENI.
        eni_id: String,
    },
}

impl Intent {
    /// The ENI the intent works on, if it exists already.
    pub fn eni_id(&self) -> Option<&str> {
        match self {
            Intent::CreateEni { .. } => None,
            Intent::Assign { eni_id, .. }
            | Intent::Unassign { eni_id, .. }
            | Intent::RemoveEni { eni_id } => Some(eni_id),
        }
    }

    /// Addresses this intent will add when it succeeds.
    pub fn incoming(&self, prefix_size: u32) -> u32 {
        match self {
            Intent::CreateEni {
                kind: EniKind::Shared,
                ips,
                prefixes,
                ..
            }
            | Intent::Assign { ips, prefixes, .. } => ips + prefixes * prefix_size,
            _ => 0,
        }
    }
}

/// A change to the model; the journal's record type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// An address was handed to a pod.
    Allocated(AllocRecord),
    /// A pod's address came back.
    Freed {
        /// Whose.
        key: AllocKey,
    },
    /// A cloud operation starts (written before the first call).
    IntentStarted {
        /// Operation id.
        op: u64,
        /// What.
        intent: Intent,
    },
    /// A cloud operation is over (its effects are recorded by the events before this one).
    IntentFinished {
        /// Operation id.
        op: u64,
    },
    /// An ENI is attached and configured (or adopted after a restart).
    EniReady(EniRecord),
    /// Addresses were added to an ENI.
    AddressesAdded {
        /// The ENI.
        eni_id: String,
        /// Secondary IPs (prefix members included).
        ips: BTreeSet<Ipv4Addr>,
        /// Prefixes.
        #[serde(default)]
        prefixes: BTreeSet<Ipv4Net>,
    },
    /// Addresses were removed from an ENI.
    AddressesRemoved {
        /// The ENI.
        eni_id: String,
        /// Secondary IPs (prefix members included).
        ips: BTreeSet<Ipv4Addr>,
        /// Prefixes.
        #[serde(default)]
        prefixes: BTreeSet<Ipv4Net>,
    },
    /// An ENI starts leaving (nothing more is handed out from it).
    EniLeaving {
        /// The ENI.
        eni_id: String,
    },
    /// An ENI is no longer this node's.
    EniGone {
        /// The ENI.
        eni_id: String,
    },
    /// The link of an ENI was found under this name.
    EniLinked {
        /// The ENI.
        eni_id: String,
        /// Link name.
        host_ifname: String,
    },
}

/// Everything the manager has promised or started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolState {
    /// ENIs by id.
    pub enis: BTreeMap<String, EniRecord>,
    /// Allocations by holder. (Serialized as a list: JSON keys must be strings.)
    #[serde(with = "alloc_list")]
    pub allocations: BTreeMap<AllocKey, AllocRecord>,
    /// Cloud operations in flight, by id.
    pub intents: BTreeMap<u64, Intent>,
    /// The next operation id.
    pub next_op: u64,
}

mod alloc_list {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<AllocKey, AllocRecord>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<AllocKey, AllocRecord>, D::Error> {
        let v: Vec<AllocRecord> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|r| (r.key.clone(), r)).collect())
    }
}

/// An event that does not fit the model (a bug, or a journal from another node).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event does not apply: {0}")]
pub struct Inconsistent(pub String);

impl PoolState {
    /// Applies one event. Events are checked so that a bug cannot silently hand one address
    /// to two pods: an `Allocated` for an address already held is refused.
    pub fn apply(&mut self, e: &Event) -> Result<(), Inconsistent> {
        match e {
            Event::Allocated(rec) => {
                if self.allocations.contains_key(&rec.key) {
                    return Err(Inconsistent(format!(
                        "{} already holds an address",
                        rec.key
                    )));
                }
                if let Some(other) = self.holder_of(rec.ip) {
                    return Err(Inconsistent(format!(
                        "{} is already held by {other}",
                        rec.ip
                    )));
                }
                let eni = self
                    .enis
                    .get(&rec.eni_id)
                    .ok_or_else(|| Inconsistent(format!("no ENI {}", rec.eni_id)))?;
                let owns = if rec.exclusive {
                    eni.primary_ip == rec.ip
                } else {
                    eni.ips.contains(&rec.ip)
                };
                if !owns {
                    return Err(Inconsistent(format!(
                        "{} is not an address of {}",
                        rec.ip, rec.eni_id
                    )));
                }
                self.allocations.insert(rec.key.clone(), rec.clone());
            }
            Event::Freed { key } => {
                self.allocations.remove(key);
            }
            Event::IntentStarted { op, intent } => {
                self.intents.insert(*op, intent.clone());
                self.next_op = self.next_op.max(op + 1);
            }
            Event::IntentFinished { op } => {
                self.intents.remove(op);
            }
            Event::EniReady(rec) => {
                self.enis.insert(rec.id.clone(), rec.clone());
            }
            Event::AddressesAdded {
                eni_id,
                ips,
                prefixes,
            } => {
                let eni = self
                    .enis
                    .get_mut(eni_id)
                    .ok_or_else(|| Inconsistent(format!("no ENI {eni_id}")))?;
                eni.ips.extend(ips.iter().copied());
                eni.prefixes.extend(prefixes.iter().copied());
            }
            Event::AddressesRemoved {
                eni_id,
                ips,
                prefixes,
            } => {
                if let Some(eni) = self.enis.get_mut(eni_id) {
                    for ip in ips {
                        eni.ips.remove(ip);
                    }
                    for p in prefixes {
                        eni.prefixes.remove(p);
                    }
                }
            }
            Event::EniLeaving { eni_id } => {
                if let Some(eni) = self.enis.get_mut(eni_id) {
                    eni.phase = EniPhase::Leaving;
                }
            }
            Event::EniGone { eni_id } => {
                self.enis.remove(eni_id);
            }
            Event::EniLinked {
                eni_id,
                host_ifname,
            } => {
                if let Some(eni) = self.enis.get_mut(eni_id) {
                    eni.host_ifname = Some(host_ifname.clone());
                }
            }
        }
        Ok(())
    }

    /// Who holds `ip`, if anyone.
    pub fn holder_of(&self, ip: Ipv4Addr) -> Option<&AllocKey> {
        self.allocations
            .values()
            .find(|a| a.ip == ip)
            .map(|a| &a.key)
    }

    /// Addresses that an unassign in flight is taking away.
    pub fn leaving_ips(&self) -> BTreeSet<Ipv4Addr> {
        self.intents
            .values()
            .filter_map(|i| match i {
                Intent::Unassign { ips, .. } => Some(ips.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Shared addresses free to hand out: on a ready shared ENI, not allocated, not leaving.
    pub fn idle_ips(&self) -> Vec<(Ipv4Addr, &EniRecord)> {
        let taken: BTreeSet<Ipv4Addr> = self.allocations.values().map(|a| a.ip).collect();
        let leaving = self.leaving_ips();
        self.enis
            .values()
            .filter(|e| e.kind == EniKind::Shared && e.phase == EniPhase::Ready)
            .flat_map(|e| e.ips.iter().map(move |ip| (*ip, e)))
            .filter(|(ip, _)| !taken.contains(ip) && !leaving.contains(ip))
            .collect()
    }

    /// Exclusive ENIs ready and not held by a pod.
    pub fn idle_exclusive(&self) -> Vec<&EniRecord> {
        let held: BTreeSet<&str> = self
            .allocations
            .values()
            .filter(|a| a.exclusive)
            .map(|a| a.eni_id.as_str())
            .collect();
        self.enis
            .values()
            .filter(|e| {
                e.kind == EniKind::Exclusive
                    && e.phase == EniPhase::Ready
                    && !held.contains(e.id.as_str())
                    && !self.intents.values().any(|i| i.eni_id() == Some(&e.id))
            })
            .collect()
    }

    /// Shared addresses handed to pods.
    pub fn allocated_shared(&self) -> usize {
        self.allocations.values().filter(|a| !a.exclusive).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn eni(id: &str, ips: &[&str]) -> EniRecord {
        EniRecord {
            id: id.into(),
            mac: "00:16:3e:00:00:01".into(),
            kind: EniKind::Shared,
            phase: EniPhase::Ready,
            subnet_id: "vsw-1".into(),
            cidr: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.253".parse().unwrap(),
            primary_ip: "10.0.0.100".parse().unwrap(),
            device_index: Some(1),
            attachment_id: None,
            host_ifname: Some("eth1".into()),
            route_table: 1001,
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            prefixes: BTreeSet::new(),
        }
    }

    fn alloc(c: &str, ip: &str, eni: &str) -> AllocRecord {
        AllocRecord {
            key: AllocKey {
                container_id: c.into(),
                ifname: "eth0".into(),
            },
            ip: ip.parse().unwrap(),
            eni_id: eni.into(),
            netns: "/var/run/netns/x".into(),
            pod: None,
            exclusive: false,
            at_ms: 1,
            host_ports: Vec::new(),
        }
    }

    #[test]
    fn an_address_is_never_held_twice() {
        let mut s = PoolState::default();
        s.apply(&Event::EniReady(eni("eni-1", &["10.0.0.1", "10.0.0.2"])))
            .unwrap();
        s.apply(&Event::Allocated(alloc("c1", "10.0.0.1", "eni-1")))
            .unwrap();
        assert!(s
            .apply(&Event::Allocated(alloc("c2", "10.0.0.1", "eni-1")))
            .is_err());
        assert!(s
            .apply(&Event::Allocated(alloc("c1", "10.0.0.2", "eni-1")))
            .is_err());
        assert!(s
            .apply(&Event::Allocated(alloc("c3", "10.0.0.9", "eni-1")))
            .is_err());
        assert_eq!(s.idle_ips().len(), 1);
        s.apply(&Event::Freed {
            key: alloc("c1", "10.0.0.1", "eni-1").key,
        })
        .unwrap();
        assert_eq!(s.idle_ips().len(), 2);
    }

    #[test]
    fn leaving_addresses_are_not_idle() {
        let mut s = PoolState::default();
        s.apply(&Event::EniReady(eni("eni-1", &["10.0.0.1", "10.0.0.2"])))
            .unwrap();
        s.apply(&Event::IntentStarted {
            op: 7,
            intent: Intent::Unassign {
                eni_id: "eni-1".into(),
                ips: ["10.0.0.2".parse().unwrap()].into(),
                prefixes: BTreeSet::new(),
            },
        })
        .unwrap();
        assert_eq!(s.idle_ips().len(), 1);
        assert_eq!(s.next_op, 8);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = PoolState::default();
        s.apply(&Event::EniReady(eni("eni-1", &["10.0.0.1"])))
            .unwrap();
        s.apply(&Event::Allocated(alloc("c1", "10.0.0.1", "eni-1")))
            .unwrap();
        let text = serde_json::to_string(&s).unwrap();
        let back: PoolState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }
}
