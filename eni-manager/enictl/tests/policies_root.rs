//! Root test of `enictl policies` against real pinned policy maps in a private bpffs (no
//! manager running: pod names show as `-`).

use std::{net::Ipv4Addr, process::Command};

use eni_bpf::{policy::unpin_policy, PolicyDatapath};
use eni_policy::{Allowed, CidrRule, DirectionRules, PodRules};

#[test]
fn lists_rules_and_counters_from_the_pins() {
    if !nix::unistd::geteuid().is_root() {
        let _ = std::io::Write::write_all(&mut std::io::stderr(), b"SKIPPED: needs root\n");
        return;
    }
    let bpffs = std::env::temp_dir().join(format!("enictl-pol-{}", std::process::id()));
    std::fs::create_dir_all(&bpffs).expect("dir");
    struct Guard(std::path::PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = unpin_policy(self.0.join("pins"));
            let _ = std::fs::remove_dir(self.0.join("pins"));
            let _ = Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let ok = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(&bpffs)
        .status()
        .expect("mount");
    assert!(ok.success());
    let guard = Guard(bpffs);
    let pins = guard.0.join("pins");
    let mut dp = PolicyDatapath::load_or_adopt(&pins).expect("load");
    let mut rules = PodRules::open(Ipv4Addr::new(10, 9, 0, 1));
    rules.ingress = DirectionRules::Enforced(vec![CidrRule {
        cidr: "10.0.0.0/8".parse().expect("net"),
        allowed: Allowed::everything(),
    }]);
    dp.write_pod(&rules).expect("write");
    dp.write_pod(&PodRules::closed(Ipv4Addr::new(10, 9, 0, 2), "x"))
        .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_enictl"))
        .args([
            "--socket",
            "/nonexistent/eni.sock",
            "--timeout",
            "100ms",
            "policies",
            "--pin-dir",
        ])
        .arg(&pins)
        .output()
        .expect("run enictl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("-  10.9.0.1  ingress isolated  egress open"),
        "{text}"
    );
    assert!(
        text.contains("    ingress  10.0.0.0/8          any"),
        "{text}"
    );
    assert!(
        text.contains("-  10.9.0.2  ingress isolated  egress isolated"),
        "{text}"
    );
    assert!(text.contains("egress   (none: default deny)"), "{text}");
    let missing = Command::new(env!("CARGO_BIN_EXE_enictl"))
        .args(["policies", "--pin-dir"])
        .arg(guard.0.join("nothing-here"))
        .output()
        .expect("run enictl");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read the policy maps"));
    drop(dp);
}
