//! Connected UDP sockets aimed at a backend that left: found in every network namespace of
//! the node (the host's and each pod's) and terminated, so the application's next
//! `connect()` goes through the socket hook again and gets a live backend.
//!
//! Namespaces are found the way `lsns` does: every process's `/proc/PID/ns/net` and every
//! bind mount in `/run/netns`, one path per namespace (by device and inode). A pod namespace
//! with no process left has no socket to terminate.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use eni_bpf::ServiceKey;
use tracing::{info, warn};

/// One path per network namespace of the node: the caller's own first, then the named ones
/// (`/run/netns`, where container runtimes put pods' namespaces: readable names in logs),
/// then those only a process holds.
pub fn network_namespaces(proc_dir: &Path, run_netns: &Path) -> Vec<PathBuf> {
    let mut seen: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut out = Vec::new();
    let mut add = |p: PathBuf| {
        if let Ok(m) = std::fs::metadata(&p) {
            if seen.insert((m.dev(), m.ino())) {
                out.push(p);
            }
        }
    };
    add(proc_dir.join("self/ns/net"));
    if let Ok(rd) = std::fs::read_dir(run_netns) {
        let mut names: Vec<PathBuf> = rd.filter_map(|e| Some(e.ok()?.path())).collect();
        names.sort();
        for p in names {
            add(p);
        }
    }
    if let Ok(rd) = std::fs::read_dir(proc_dir) {
        let mut pids: Vec<u32> = rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        for pid in pids {
            add(proc_dir.join(pid.to_string()).join("ns/net"));
        }
    }
    out
}

/// Terminates, in every namespace of the node, the connected UDP sockets aimed at one of
/// `removed` (only UDP frontends count). Returns how many sockets went. Errors are logged
/// per namespace; a namespace that vanished meanwhile is not an error.
pub fn terminate_removed(removed: &[(ServiceKey, SocketAddr)]) -> usize {
    let mut backends: BTreeMap<SocketAddr, ServiceKey> = BTreeMap::new();
    for (key, backend) in removed {
        if key.protocol == eni_bpf::Protocol::Udp {
            backends.entry(*backend).or_insert(*key);
        }
    }
    if backends.is_empty() {
        return 0;
    }
    let mut total = 0;
    for ns in network_namespaces(Path::new("/proc"), Path::new("/run/netns")) {
        for (backend, key) in &backends {
            match eni_bpf::terminate_udp_sockets_in(&ns, *backend) {
                Ok(0) => {}
                Ok(n) => {
                    total += n;
                    info!(frontend = %key, %backend, netns = %ns.display(), sockets = n, "connected UDP sockets to a removed backend terminated");
                }
                Err(e) if !ns.exists() => {
                    tracing::debug!(netns = %ns.display(), error = %e, "namespace gone meanwhile");
                    break;
                }
                Err(e) => {
                    warn!(frontend = %key, %backend, netns = %ns.display(), error = %e, "cannot terminate UDP sockets to a removed backend");
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_namespace_once_the_own_first() {
        let all = network_namespaces(Path::new("/proc"), Path::new("/nonexistent"));
        assert_eq!(all[0], Path::new("/proc/self/ns/net"));
        let inodes: BTreeSet<u64> = all
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().ino())
            .collect();
        assert_eq!(inodes.len(), all.len(), "one path per namespace: {all:?}");
        // Our own process's namespace is the one of /proc/self.
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert!(inodes.contains(&own));
    }

    #[test]
    fn tcp_removals_walk_nothing() {
        let key = ServiceKey {
            vip: std::net::Ipv4Addr::new(10, 96, 0, 1).into(),
            port: 80,
            protocol: eni_bpf::Protocol::Tcp,
        };
        assert_eq!(
            terminate_removed(&[(key, "10.0.0.1:80".parse().unwrap())]),
            0
        );
    }
}
