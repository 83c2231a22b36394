//! Host ports (`hostPort`, the CNI `portMappings` capability): what a pod asks for, how it
//! is checked, and the [`HostPorts`] handle through which the pool tells the services loop
//! which host ports to serve.
//!
//! The pool owns the truth (each allocation record keeps its pod's host ports, durably);
//! after every batch it publishes the whole set here. The services loop reads the set on
//! each reconcile, is woken when it changes, and reports which version it has written to
//! the maps, so an ADD can answer once its host ports are served. This module holds no
//! maps and decides nothing about conflicts between pods (the pool does).

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use eni_rpc::{PortMapping, PortProtocol};
use serde::{Deserialize, Serialize};

/// One validated host port of a pod: `host_ip:host_port/protocol` on the node goes to
/// `podIP:container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostPort {
    /// The one node address it is served on; `None`: every node address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
    /// The port on the node.
    pub host_port: u16,
    /// TCP or UDP.
    pub protocol: PortProtocol,
    /// The port in the pod.
    pub container_port: u16,
}

impl HostPort {
    /// Whether `self` and `other` claim a common frontend: same port and protocol, and the
    /// same address or one of them on every address.
    pub fn overlaps(&self, other: &HostPort) -> bool {
        self.host_port == other.host_port
            && self.protocol == other.protocol
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(ip) => write!(f, "{ip}:{}/{}", self.host_port, self.protocol.as_str()),
            None => write!(f, "*:{}/{}", self.host_port, self.protocol.as_str()),
        }
    }
}

/// Checks the port mappings of an allocate request (the plugin checked them too; the wire
/// is not trusted) and returns them in the pool's form, or every problem in one message.
/// `0.0.0.0` as `host_ip` means every node address.
pub fn validate(mappings: &[PortMapping]) -> Result<Vec<HostPort>, String> {
    let mut out: Vec<HostPort> = Vec::with_capacity(mappings.len());
    let mut problems = Vec::new();
    for (i, m) in mappings.iter().enumerate() {
        let field = format!("port_mappings[{i}]");
        if m.host_port == 0 {
            problems.push(format!(
                "{field}.host_port is 0; give a port from 1 to 65535"
            ));
        }
        if m.container_port == 0 {
            problems.push(format!(
                "{field}.container_port is 0; give a port from 1 to 65535"
            ));
        }
        let host_ip = m.host_ip.filter(|ip| !ip.is_unspecified());
        if let Some(ip) = host_ip {
            if ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
                problems.push(format!(
                    "{field}.host_ip {ip} is not a node address; give one of the node's addresses or leave it empty for all"
                ));
            }
        }
        let hp = HostPort {
            host_ip,
            host_port: m.host_port,
            protocol: m.protocol,
            container_port: m.container_port,
        };
        if let Some((j, first)) = out.iter().enumerate().find(|(_, o)| o.overlaps(&hp)) {
            problems.push(format!(
                "{field} ({hp}) claims the same host port as port_mappings[{j}] ({first}); remove one of them"
            ));
        }
        out.push(hp);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.join("; "))
    }
}

/// One host port being served: the mapping, the pod address behind it and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPortEntry {
    /// The mapping.
    pub port: HostPort,
    /// The pod's address.
    pub pod_ip: Ipv4Addr,
    /// The holder, for logs: `container/ifname (namespace/pod)`.
    pub holder: String,
}

#[derive(Debug, Default)]
struct Published {
    generation: u64,
    entries: Arc<Vec<HostPortEntry>>,
}

#[derive(Debug)]
struct Inner {
    published: Mutex<Published>,
    /// Wakes the file source's thread when the set changes.
    cond: Condvar,
    /// Wakes the Kubernetes source's loop when the set changes.
    changed: tokio::sync::Notify,
    /// The newest generation written to the maps.
    applied: tokio::sync::watch::Sender<u64>,
}

/// The host ports the node serves, shared by the pool (which publishes them), the RPC
/// handler (which waits for them to be served) and the services loop (which serves them).
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct HostPorts {
    inner: Arc<Inner>,
}

impl Default for HostPorts {
    fn default() -> Self {
        Self::new()
    }
}

impl HostPorts {
    /// An empty set at generation 0.
    pub fn new() -> Self {
        HostPorts {
            inner: Arc::new(Inner {
                published: Mutex::default(),
                cond: Condvar::new(),
                changed: tokio::sync::Notify::new(),
                applied: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        self.inner
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the set; the generation moves (and the services loop is woken) only when
    /// the set differs. Returns the generation now current.
    pub fn set(&self, mut entries: Vec<HostPortEntry>) -> u64 {
        entries.sort();
        let mut p = self.lock();
        if *p.entries == entries {
            return p.generation;
        }
        p.generation += 1;
        p.entries = Arc::new(entries);
        let g = p.generation;
        drop(p);
        self.inner.cond.notify_all();
        self.inner.changed.notify_one();
        g
    }

    /// The current generation and set.
    pub fn snapshot(&self) -> (u64, Arc<Vec<HostPortEntry>>) {
        let p = self.lock();
        (p.generation, p.entries.clone())
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Blocks until the generation differs from `seen` or `timeout` passes; returns whether
    /// it changed. For the file source's thread.
    pub fn wait_changed(&self, seen: u64, timeout: Duration) -> bool {
        let p = self.lock();
        let (p, _) = self
            .inner
            .cond
            .wait_timeout_while(p, timeout, |p| p.generation == seen)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        p.generation != seen
    }

    /// Completes after the next change (or at once if one happened since the last call).
    /// For the Kubernetes source's loop, its only waiter.
    pub async fn changed(&self) {
        self.inner.changed.notified().await;
    }

    /// Records that generation `g` is written to the maps.
    pub fn mark_applied(&self, g: u64) {
        self.inner.applied.send_if_modified(|a| {
            if g > *a {
                *a = g;
                true
            } else {
                false
            }
        });
    }

    /// The newest generation written to the maps.
    pub fn applied(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// Waits until generation `g` (or a newer one) is written to the maps, at most
    /// `timeout`; returns whether it was.
    pub async fn wait_applied(&self, g: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.applied.subscribe();
        let done = tokio::time::timeout(timeout, rx.wait_for(|a| *a >= g))
            .await
            .is_ok_and(|r| r.is_ok());
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host_port: u16, container_port: u16, udp: bool, ip: Option<&str>) -> PortMapping {
        PortMapping {
            host_port,
            container_port,
            protocol: if udp {
                PortProtocol::Udp
            } else {
                PortProtocol::Tcp
            },
            host_ip: ip.map(|s| s.parse().unwrap()),
        }
    }

    #[test]
    fn validation_normalizes_and_names_every_problem() {
        let ok = validate(&[
            m(8080, 80, false, None),
            m(8080, 80, true, Some("0.0.0.0")),
            m(9090, 90, false, Some("10.0.0.5")),
            m(9090, 90, false, Some("10.0.0.6")),
        ])
        .unwrap();
        assert_eq!(ok.len(), 4);
        assert_eq!(ok[1].host_ip, None, "0.0.0.0 means every node address");
        assert_eq!(ok[2].to_string(), "10.0.0.5:9090/tcp");
        assert_eq!(ok[0].to_string(), "*:8080/tcp");

        let e = validate(&[
            m(0, 80, false, None),
            m(81, 0, false, None),
            m(82, 80, false, Some("127.0.0.1")),
            m(8080, 80, false, Some("10.0.0.5")),
            m(8080, 81, false, None),
        ])
        .unwrap_err();
        for needle in [
            "port_mappings[0].host_port is 0",
            "port_mappings[1].container_port is 0",
            "port_mappings[2].host_ip 127.0.0.1 is not a node address",
            "port_mappings[4] (*:8080/tcp) claims the same host port as port_mappings[3] (10.0.0.5:8080/tcp)",
        ] {
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
    }

    #[test]
    fn overlap_needs_port_protocol_and_a_common_address() {
        let a = |ip: Option<&str>, port, udp| HostPort {
            host_ip: ip.map(|s| s.parse().unwrap()),
            host_port: port,
            protocol: if udp {
                PortProtocol::Udp
            } else {
                PortProtocol::Tcp
            },
            container_port: 1,
        };
        assert!(a(None, 80, false).overlaps(&a(Some("10.0.0.1"), 80, false)));
        assert!(a(Some("10.0.0.1"), 80, false).overlaps(&a(Some("10.0.0.1"), 80, false)));
        assert!(!a(Some("10.0.0.1"), 80, false).overlaps(&a(Some("10.0.0.2"), 80, false)));
        assert!(!a(None, 80, false).overlaps(&a(None, 80, true)));
        assert!(!a(None, 80, false).overlaps(&a(None, 81, false)));
    }

    #[tokio::test]
    async fn the_handle_moves_only_on_change_wakes_waiters_and_tracks_what_is_applied() {
        let hp = HostPorts::new();
        let e = HostPortEntry {
            port: validate(&[m(8080, 80, false, None)]).unwrap()[0],
            pod_ip: Ipv4Addr::new(10, 0, 0, 9),
            holder: "c1/eth0".into(),
        };
        assert_eq!(hp.set(Vec::new()), 0, "no change: no new generation");
        let t = {
            let hp = hp.clone();
            std::thread::spawn(move || hp.wait_changed(0, Duration::from_secs(10)))
        };
        let g = hp.set(vec![e.clone()]);
        assert_eq!(g, 1);
        assert!(t.join().unwrap(), "the waiting thread saw the change");
        tokio::time::timeout(Duration::from_secs(5), hp.changed())
            .await
            .expect("the async waiter is woken by a change made before it waited");
        assert_eq!(hp.set(vec![e.clone()]), 1);
        assert!(!hp.wait_changed(1, Duration::from_millis(20)));
        assert!(!hp.wait_applied(1, Duration::from_millis(20)).await);
        let waiter = {
            let hp = hp.clone();
            tokio::spawn(async move { hp.wait_applied(1, Duration::from_secs(10)).await })
        };
        hp.mark_applied(1);
        assert!(waiter.await.unwrap());
        hp.mark_applied(0);
        assert_eq!(hp.applied(), 1, "applied never goes back");
        assert_eq!(hp.snapshot().1.as_slice(), &[e]);
    }
}
