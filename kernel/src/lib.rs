//! The project's one netlink and network-namespace layer.
//!
//! Synchronous and runtime-free, so the CNI plugin starts fast and the manager can call it
//! from `spawn_blocking`. Built directly on `netlink-packet-route` and a blocking
//! `NETLINK_ROUTE` socket; nothing here shells out to `ip`.
//!
//! - [`Handle`]: one netlink socket in the namespace of the thread that opened it.
//! - One module per kernel object, named like the `ip` command: [`link`], [`addr`],
//!   [`route`], [`rule`], [`neigh`]; plus [`netns`] and [`sysctl`].
//! - [`Netlink`]: the operations the upper layers use, implemented by [`Handle`] and by
//!   `FakeNetlink` (feature `fake`, or in this crate's tests) for unit tests without root.
//!
//! To work inside a pod's namespace, open it ([`netns::NetnsFd`]) and use
//! [`netns::with_handle_in`] (or [`netns::run_in_netns`]): the work runs on a short-lived
//! thread that enters the namespace, so the caller's thread never moves.
//!
//! This crate does not decide anything (which table, which address): it only does what it
//! is told and reports the kernel's answer as a typed [`Error`].

#![deny(missing_docs)]

pub mod addr;
mod error;
#[cfg(any(test, feature = "fake"))]
mod fake;
mod handle;
pub mod link;
pub mod neigh;
mod netlink;
pub mod netns;
pub mod route;
pub mod rule;
pub mod sysctl;

pub use addr::Addr;
pub use error::{Error, Result};
#[cfg(any(test, feature = "fake"))]
pub use fake::{FakeNetlink, MovedLink};
pub use handle::Handle;
pub use link::{IpvlanAdd, IpvlanMode, Link, LinkKind, MacAddr, MacvlanAdd, MacvlanMode, VethAdd};
pub use neigh::{Neigh, NeighState};
pub use netlink::Netlink;
pub use netns::{run_in_netns, with_handle_in, NetnsFd};
pub use route::{Protocol, Route, RouteKind, Scope, TABLE_LOCAL, TABLE_MAIN};
pub use rule::Rule;

/// Whether the running kernel can create links of `kind`.
///
/// How: as root ([`probe_kernel_support`]), in a throwaway anonymous namespace (created
/// with `unshare(CLONE_NEWNET)` on a dedicated thread and gone when the probe returns), it
/// tries to create such a link: ipvlan and macvlan on top of a scratch veth pair, other
/// kinds with no options. Creating the link also triggers module autoloading, so a
/// loadable-but-unloaded module counts as supported. Nothing outside the scratch namespace
/// is touched.
///
/// Without the privilege to probe, falls back to a heuristic: `/sys/module/<kind>` exists
/// (a loaded module) or `/proc/kallsyms` has a symbol starting with `<kind>_` (built in or
/// loaded). That fallback cannot see unloaded modules, so it may answer `false` wrongly.
pub fn kernel_supports(kind: &LinkKind) -> bool {
    match probe_kernel_support(kind) {
        Ok(supported) => supported,
        Err(_) => kernel_supports_by_symbols(kind.as_str()),
    }
}

/// The probe behind [`kernel_supports`]: `Ok(false)` when the kernel answered that it does
/// not know the kind, `Err` when the probe itself could not run (e.g. not root).
pub fn probe_kernel_support(kind: &LinkKind) -> Result<bool> {
    let kind = kind.clone();
    netns::run_in_scratch_netns(move || {
        let mut h = Handle::new()?;
        let created = match &kind {
            LinkKind::Veth => h.veth_add(&VethAdd::new("probe0", "probe1")).map(drop),
            LinkKind::Ipvlan | LinkKind::Macvlan => {
                let parent = h.veth_add(&VethAdd::new("probe0", "probe1"))?;
                if kind == LinkKind::Ipvlan {
                    h.ipvlan_add(&IpvlanAdd::new("probe2", parent, IpvlanMode::L2))
                } else {
                    h.macvlan_add(&MacvlanAdd::new("probe2", parent, MacvlanMode::Bridge))
                }
            }
            other => h.link_add_plain("probe2", other),
        };
        match created {
            Ok(()) => Ok(true),
            Err(Error::Unsupported { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    })?
}

fn kernel_supports_by_symbols(kind: &str) -> bool {
    if std::path::Path::new("/sys/module").join(kind).exists() {
        return true;
    }
    let prefix = format!("{kind}_");
    std::fs::read_to_string("/proc/kallsyms")
        .map(|syms| {
            syms.lines()
                .filter_map(|l| l.split_whitespace().nth(2))
                .any(|name| name.starts_with(&prefix))
        })
        .unwrap_or(false)
}
