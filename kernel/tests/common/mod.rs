//! Shared helpers for the root tests: skip-unless-root, and named namespaces that are
//! always deleted (a Drop guard, so also on panic). Tests only ever touch namespaces they
//! created; the root namespace is read, never changed.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use eni_kernel::netns::{self, NetnsFd};
use eni_kernel::{Handle, Result};

/// True when running as root; otherwise prints the skip visibly.
pub fn root_or_skip(test: &str) -> bool {
    let euid_is_root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false);
    if !euid_is_root {
        // Straight to stderr: libtest captures eprintln! of passing tests, and a skip must
        // be seen.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED: needs root ({test})");
    }
    euid_is_root
}

/// A fresh named namespace, deleted on drop.
pub struct TestNs {
    /// Its name under /var/run/netns.
    pub name: String,
    /// An open fd on it.
    pub fd: NetnsFd,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestNs {
    /// Creates `ekt-<pid>-<tag>-<n>` and brings its `lo` up.
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("ekt-{}-{tag}-{n}", std::process::id());
        let fd = netns::add_named(&name).expect("create test namespace");
        let ns = TestNs { name, fd };
        ns.with(|h| {
            let lo = h.link_by_name("lo")?;
            h.link_set_up(lo.index)
        });
        ns
    }

    /// Runs `f` with a Handle inside this namespace; panics on error.
    pub fn with<T: Send>(&self, f: impl FnOnce(&mut Handle) -> Result<T> + Send) -> T {
        netns::with_handle_in(&self.fd, f).expect("netlink in test namespace")
    }

    /// Same, returning the result for tests of error paths.
    pub fn try_with<T: Send>(&self, f: impl FnOnce(&mut Handle) -> Result<T> + Send) -> Result<T> {
        netns::with_handle_in(&self.fd, f)
    }

    /// `ip netns exec NAME ARGS...`; true on exit status 0.
    pub fn exec(&self, args: &[&str]) -> bool {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec");
        if !out.status.success() {
            eprintln!(
                "ip netns exec {} {:?} failed: {}{}",
                self.name,
                args,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status.success()
    }

    /// One ping with a short timeout, optionally from a source address.
    pub fn ping(&self, dst: &str, src: Option<&str>) -> bool {
        let mut args = vec!["ping", "-c", "1", "-W", "2"];
        if let Some(s) = src {
            args.extend(["-I", s]);
        }
        args.push(dst);
        self.exec(&args)
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        if let Err(e) = netns::del_named(&self.name) {
            eprintln!("cleanup of netns {} failed: {e}", self.name);
        }
    }
}

/// The inode of the calling thread's network namespace.
pub fn thread_netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat own netns")
        .ino()
}
