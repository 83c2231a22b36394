//! `enictl services` against maps pinned by `eni_bpf::SocketLb` in a private bpffs mount
//! (root; prints SKIPPED otherwise), and its error when nothing is pinned (any user).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use eni_bpf::{Backend, DatapathMaps, Protocol, ServiceKey, ServiceSpec, SocketLb};

fn is_root() -> bool {
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

fn enictl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_enictl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn services_without_pins_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("none");
    let (ok, _, err) = enictl(&["services", "--pin-dir", d.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("cannot read the Service maps"), "{err}");
    assert!(err.contains("no map is pinned there"), "{err}");
    assert!(err.contains("lb4_services"), "{err}");
}

#[test]
fn services_lists_the_pinned_maps() {
    if !is_root() {
        let _ = std::io::Write::write_all(&mut std::io::stderr(), b"SKIPPED: needs root\n");
        return;
    }
    let bpffs = Bpffs(std::env::temp_dir().join(format!("enictl-svc-{}", std::process::id())));
    std::fs::create_dir_all(&bpffs.0).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(&bpffs.0)
        .status()
        .unwrap()
        .success());
    let pins = bpffs.0.join("eni-net");
    let mut lb = SocketLb::load_or_adopt(&pins).unwrap();
    let be = |l| SocketAddrV4::new(Ipv4Addr::new(10, 2, 0, l), 5353);
    lb.upsert_service(
        ServiceKey {
            vip: Ipv4Addr::new(10, 96, 9, 9).into(),
            port: 53,
            protocol: Protocol::Udp,
        },
        &ServiceSpec {
            backends: vec![Backend::active(be(1)), Backend::terminating(be(2))],
            affinity_timeout: Some(Duration::from_secs(60)),
        },
    )
    .unwrap();
    // An IPv6 service lives in the lb6 tables: listed from them too.
    lb.upsert_service(
        ServiceKey {
            vip: "fd00:96::9".parse::<std::net::IpAddr>().unwrap(),
            port: 53,
            protocol: Protocol::Udp,
        },
        &ServiceSpec {
            backends: vec![Backend::active(
                "[fd00:2::1]:5353".parse::<std::net::SocketAddr>().unwrap(),
            )],
            affinity_timeout: None,
        },
    )
    .unwrap();
    let p = pins.to_str().unwrap();
    let (ok, out, err) = enictl(&["services", "--pin-dir", p]);
    assert!(ok, "{err}");
    assert!(out.starts_with("ID  FRONTEND"), "{out}");
    assert!(out.contains("[fd00:96::9]:53/UDP"), "{out}");
    assert!(out.contains("1 => [fd00:2::1]:5353/UDP (active)"), "{out}");
    assert!(out.contains("10.96.9.9:53/UDP     ClientIP 60s"), "{out}");
    assert!(out.contains("1 => 10.2.0.1:5353/UDP (active)"), "{out}");
    assert!(
        out.contains("2 => 10.2.0.2:5353/UDP (terminating)"),
        "{out}"
    );
    let (ok, out, err) = enictl(&["services", "--pin-dir", p, "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["frontend"]["ip"], "10.96.9.9");
    assert_eq!(v[0]["backends"].as_array().unwrap().len(), 2);
    assert_eq!(v[1]["frontend"]["ip"], "fd00:96::9");
}
