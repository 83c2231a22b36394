//! Network sysctls: read and write `/proc/sys/net/...` in the calling thread's namespace.
//!
//! `/proc/sys/net` shows the namespace of the thread that opens the file, so call these
//! inside [`crate::netns::run_in_netns`] to act on another namespace. Keys are paths below
//! `/proc/sys` with `/` separators (`net/ipv4/conf/eth0.100/rp_filter`): the dotted form is
//! ambiguous with interface names that contain dots.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn key_path(key: &str) -> Result<PathBuf> {
    let ok = key.starts_with("net/")
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !ok {
        return Err(Error::InvalidArgument {
            what: format!("sysctl key {key:?} (expected net/...)"),
        });
    }
    Ok(Path::new("/proc/sys").join(key))
}

/// Reads a sysctl below `/proc/sys/net`, trimmed (`read("net/ipv4/ip_forward")`).
pub fn read(key: &str) -> Result<String> {
    let path = key_path(key)?;
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::Sysctl {
            op: "read",
            path,
            source,
        })
}

/// Writes a sysctl below `/proc/sys/net`.
pub fn write(key: &str, value: &str) -> Result<()> {
    let path = key_path(key)?;
    std::fs::write(&path, value).map_err(|source| Error::Sysctl {
        op: "write",
        path,
        source,
    })
}

/// Reverse-path filtering mode (`net/ipv4/conf/IF/rp_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpFilter {
    /// 0: no source validation.
    Off,
    /// 1: strict (RFC 3704).
    Strict,
    /// 2: loose (any route back is enough).
    Loose,
}

/// `net/ipv4/ip_forward`.
pub fn set_ipv4_forwarding(on: bool) -> Result<()> {
    write("net/ipv4/ip_forward", bool_str(on))
}

/// `net/ipv4/conf/IFNAME/SETTING` (IFNAME may be `all` or `default`).
pub fn set_ipv4_conf(ifname: &str, setting: &str, value: &str) -> Result<()> {
    crate::link::validate_link_name(ifname)?;
    write(&format!("net/ipv4/conf/{ifname}/{setting}"), value)
}

/// Reads `net/ipv4/conf/IFNAME/SETTING`.
pub fn ipv4_conf(ifname: &str, setting: &str) -> Result<String> {
    crate::link::validate_link_name(ifname)?;
    read(&format!("net/ipv4/conf/{ifname}/{setting}"))
}

/// `net/ipv4/conf/IFNAME/proxy_arp`.
pub fn set_proxy_arp(ifname: &str, on: bool) -> Result<()> {
    set_ipv4_conf(ifname, "proxy_arp", bool_str(on))
}

/// `net/ipv4/conf/IFNAME/rp_filter`.
pub fn set_rp_filter(ifname: &str, mode: RpFilter) -> Result<()> {
    let v = match mode {
        RpFilter::Off => "0",
        RpFilter::Strict => "1",
        RpFilter::Loose => "2",
    };
    set_ipv4_conf(ifname, "rp_filter", v)
}

fn bool_str(on: bool) -> &'static str {
    if on {
        "1"
    } else {
        "0"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_confined_to_net() {
        assert_eq!(
            key_path("net/ipv4/conf/eth0.100/rp_filter").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        for bad in ["kernel/hostname", "net/../kernel/x", "net//x", "/net/x"] {
            assert!(key_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_a_net_sysctl() {
        // Readable without privileges in any namespace.
        let v = read("net/ipv4/ip_forward").unwrap();
        assert!(v == "0" || v == "1");
    }
}
