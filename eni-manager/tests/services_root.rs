//! As root: the manager's file source and reconciler against the real pinned maps, in a
//! private bpffs mount. No cgroup is attached: this checks the control plane (maps), the
//! datapath itself is tested in `bpf/tests`, `enictl services` in `enictl/tests`.
//! Without root: prints SKIPPED.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use eni_bpf::{BackendState, DatapathMaps, Protocol, ServiceKey, SocketLb};
use eni_manager::services::FileSource;

fn skip_unless_root() -> bool {
    if nix_is_root() {
        return false;
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr(), b"SKIPPED: needs root\n");
    true
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

struct Bpffs(PathBuf);

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = eni_bpf::unpin_all(self.0.join("eni-net"));
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

const FILE: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: web, namespace: t }
spec:
  clusterIP: 10.96.7.1
  ports: [{ name: http, port: 80, targetPort: http }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-1, namespace: t, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ name: http, port: 8080 }]
endpoints:
  - addresses: [10.1.0.1]
    conditions: { ready: true }
  - addresses: [10.1.0.2]
    conditions: { ready: true }
"#;

#[test]
fn file_source_drives_the_pinned_maps_incrementally() {
    if skip_unless_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bpffs = Bpffs(std::env::temp_dir().join(format!("eni-svc-root-{}", std::process::id())));
    std::fs::create_dir_all(&bpffs.0).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(&bpffs.0)
        .status()
        .unwrap();
    assert!(ok.success(), "mount bpffs");
    let pins = bpffs.0.join("eni-net");
    let dir = tmp.path().join("services");
    std::fs::create_dir(&dir).unwrap();
    let key = ServiceKey {
        vip: Ipv4Addr::new(10, 96, 7, 1).into(),
        port: 80,
        protocol: Protocol::Tcp,
    };

    let mut lb = SocketLb::load_or_adopt(&pins).unwrap();
    let mut src = FileSource::new(&dir, Duration::from_secs(3600));
    assert_eq!(src.poll(&mut lb).unwrap().map_ops, 0);

    // Add.
    std::fs::write(dir.join("web.yaml"), FILE).unwrap();
    let r = src.poll(&mut lb).unwrap();
    assert_eq!((r.upserted, r.map_ops), (1, 3), "2 slots + the service");
    let l = lb.list().unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].key, key);
    assert!(l[0]
        .spec
        .backends
        .iter()
        .all(|b| b.port == 8080 && b.state == BackendState::Active));

    // One endpoint terminating: one slot moves, the service count changes; nothing else.
    std::fs::write(
        dir.join("web.yaml"),
        FILE.replacen(
            "conditions: { ready: true }\n  - addresses: [10.1.0.2]",
            "conditions: { ready: false, serving: true, terminating: true }\n  - addresses: [10.1.0.2]",
            1,
        ),
    )
    .unwrap();
    let r = src.poll(&mut lb).unwrap();
    assert_eq!(r.upserted, 1);
    assert!(r.map_ops <= 4, "incremental, got {}", r.map_ops);
    let l = lb.list().unwrap();
    let states: Vec<_> = l[0].spec.backends.iter().map(|b| (b.ip, b.state)).collect();
    assert_eq!(
        states,
        vec![
            (Ipv4Addr::new(10, 1, 0, 2).into(), BackendState::Active),
            (Ipv4Addr::new(10, 1, 0, 1).into(), BackendState::Terminating),
        ]
    );

    // A restarted manager adopts the pinned maps and writes nothing.
    drop(lb);
    let mut lb = SocketLb::load_or_adopt(&pins).unwrap();
    let mut src = FileSource::new(&dir, Duration::from_secs(3600));
    let r = src.poll(&mut lb).unwrap();
    assert_eq!((r.upserted, r.deleted, r.map_ops), (0, 0, 0));

    // A dual-stack service: one frontend per family, each in its family's tables, with that
    // family's endpoints; a restart adopts both without a write.
    std::fs::write(dir.join("dual.yaml"), DUAL).unwrap();
    let r = src.poll(&mut lb).unwrap();
    assert_eq!(r.upserted, 2, "{r:?}");
    let v6: std::net::IpAddr = "fd00:96::7".parse().unwrap();
    let l = lb.list().unwrap();
    let e6 = l.iter().find(|e| e.key.vip == v6).expect("IPv6 frontend");
    assert_eq!(
        e6.spec
            .backends
            .iter()
            .map(|b| b.addr().to_string())
            .collect::<Vec<_>>(),
        vec!["[fd00:1::1]:8080"]
    );
    let e4 = l
        .iter()
        .find(|e| e.key.vip == std::net::IpAddr::from(Ipv4Addr::new(10, 96, 7, 2)))
        .expect("IPv4 frontend");
    assert_eq!(e4.spec.backends[0].addr().to_string(), "10.1.0.9:8080");
    drop(lb);
    let mut lb = SocketLb::load_or_adopt(&pins).unwrap();
    let mut src = FileSource::new(&dir, Duration::from_secs(3600));
    let r = src.poll(&mut lb).unwrap();
    assert_eq!((r.upserted, r.deleted, r.map_ops), (0, 0, 0));
    std::fs::remove_file(dir.join("dual.yaml")).unwrap();
    let r = src.poll(&mut lb).unwrap();
    assert_eq!(r.deleted, 2);

    // Delete the file: the service is gone.
    std::fs::remove_file(dir.join("web.yaml")).unwrap();
    let r = src.poll(&mut lb).unwrap();
    assert_eq!(r.deleted, 1);
    assert!(lb.list().unwrap().is_empty());
}

const DUAL: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: dual, namespace: shop }
spec:
  clusterIPs: [10.96.7.2, "fd00:96::7"]
  ports: [{ name: http, port: 80, targetPort: 8080 }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: dual-4, namespace: shop, labels: { kubernetes.io/service-name: dual } }
addressType: IPv4
ports: [{ name: http, port: 8080 }]
endpoints: [{ addresses: [10.1.0.9] }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: dual-6, namespace: shop, labels: { kubernetes.io/service-name: dual } }
addressType: IPv6
ports: [{ name: http, port: 8080 }]
endpoints: [{ addresses: ["fd00:1::1"] }]
"#;
