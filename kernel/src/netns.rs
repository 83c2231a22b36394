//! Network namespaces: open one as an owned fd, run code inside one on a short-lived
//! dedicated thread, and create/delete named namespaces like `ip netns add/del`.
//!
//! The calling thread never changes namespace: [`run_in_netns`] spawns a thread, moves
//! only that thread (`setns(CLONE_NEWNET)`), runs the closure and lets the thread die.
//! A [`Handle`] created inside the closure is bound to that namespace for its lifetime.
//! The one exception, for single-threaded programs: [`handle_in_this_thread`] moves the
//! calling thread in and back out just to open a socket.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{Error, Result};
use crate::handle::Handle;

/// Where named namespaces are bind-mounted, as iproute2 does.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// An open network namespace (a file under `/proc/<pid>/ns/net` or `/var/run/netns`).
#[derive(Debug)]
pub struct NetnsFd {
    fd: OwnedFd,
    path: PathBuf,
}

impl NetnsFd {
    /// Opens the namespace file at `path` (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| Error::Netns {
            op: "open",
            path: path.clone(),
            source,
        })?;
        Ok(NetnsFd {
            fd: file.into(),
            path,
        })
    }

    /// Opens the named namespace `/var/run/netns/NAME`.
    pub fn by_name(name: &str) -> Result<Self> {
        validate_netns_name(name)?;
        Self::open(Path::new(NETNS_RUN_DIR).join(name))
    }

    /// Opens the namespace of process `pid`.
    pub fn by_pid(pid: u32) -> Result<Self> {
        Self::open(format!("/proc/{pid}/ns/net"))
    }

    /// Opens the calling thread's own namespace.
    pub fn current() -> Result<Self> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsFd for NetnsFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn netns_err(op: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> Error {
    let path = path.to_path_buf();
    move |errno| Error::Netns {
        op,
        path,
        source: io::Error::from(errno),
    }
}

/// Runs `f` on a new thread that first joins the namespace `ns`, and returns its result.
///
/// The calling thread is never moved, so this is safe to call from `spawn_blocking` or any
/// thread pool. Create sockets (a [`Handle`]) inside `f`: they belong to the namespace they
/// are created in. A panic in `f` is resumed on the calling thread.
pub fn run_in_netns<T, F>(ns: &NetnsFd, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let fd = ns.as_fd();
    let path = ns.path();
    on_fresh_thread(path, move || {
        setns(fd, CloneFlags::CLONE_NEWNET).map_err(netns_err("setns", path))?;
        Ok(f())
    })
}

/// [`run_in_netns`] with a [`Handle`] opened inside the namespace, for the common case.
pub fn with_handle_in<T, F>(ns: &NetnsFd, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(&mut Handle) -> Result<T> + Send,
{
    run_in_netns(ns, || f(&mut Handle::new()?))?
}

/// Opens a netlink [`Handle`] bound to `ns` without a thread: the calling thread joins
/// `ns`, opens the socket and goes back to the namespace it was in. The socket stays bound
/// to `ns`. Cheaper than [`with_handle_in`] (starting a thread costs milliseconds on a busy
/// node), but the calling thread is in `ns` for that moment, so use it only on a thread no
/// other code shares, such as the main thread of a single-threaded program like the CNI
/// plugin; never on a pool thread. If the thread cannot go back, the error says so and the
/// program should stop: the thread is still in `ns`.
pub fn handle_in_this_thread(ns: &NetnsFd) -> Result<Handle> {
    let home = NetnsFd::current()?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(netns_err("setns", ns.path()))?;
    let handle = Handle::new();
    setns(home.as_fd(), CloneFlags::CLONE_NEWNET).map_err(netns_err(
        "setns back (the thread is still in the namespace)",
        home.path(),
    ))?;
    handle
}

/// Runs `f` on a new thread inside a brand-new, anonymous namespace that disappears when
/// `f` returns (unless something in it, like a moved link's peer, keeps it). Needs
/// `CAP_SYS_ADMIN`. Used by [`crate::kernel_supports`] to probe without touching anything.
pub fn run_in_scratch_netns<T, F>(f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = Path::new("(new namespace)");
    on_fresh_thread(path, move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(netns_err("unshare", path))?;
        Ok(f())
    })
}

fn on_fresh_thread<T, F>(path: &Path, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("eni-netns".into())
            .spawn_scoped(scope, f)
            .map_err(|source| Error::Netns {
                op: "spawn thread",
                path: path.to_path_buf(),
                source,
            })?;
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn validate_netns_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.len() > 255 {
        return Err(Error::InvalidArgument {
            what: format!("netns name {name:?}"),
        });
    }
    Ok(())
}

/// Makes `NETNS_RUN_DIR` a shared mount point, as iproute2 does, so that namespaces
/// mounted later are seen by other mount namespaces (`ip netns exec`, containers).
fn prepare_run_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Netns {
        op: "create directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let shared = || {
        mount::<str, Path, str, str>(None, dir, None, MsFlags::MS_SHARED | MsFlags::MS_REC, None)
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then retry.
            mount::<Path, Path, str, str>(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .map_err(netns_err("bind mount", dir))?;
            shared().map_err(netns_err("make shared", dir))
        }
        Err(e) => Err(netns_err("make shared", dir)(e)),
    }
}

/// `ip netns add NAME`: creates a new namespace and bind-mounts it on
/// `/var/run/netns/NAME`, so it lives on without any process in it. Its `lo` is down.
/// Fails with `EEXIST` if the name is taken.
pub fn add_named(name: &str) -> Result<NetnsFd> {
    validate_netns_name(name)?;
    let dir = Path::new(NETNS_RUN_DIR);
    prepare_run_dir(dir)?;
    let path = dir.join(name);
    File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| Error::Netns {
            op: "create",
            path: path.clone(),
            source,
        })?;
    let mounted = run_in_scratch_netns(|| {
        mount::<str, Path, str, str>(
            Some("/proc/thread-self/ns/net"),
            &path,
            Some("none"),
            MsFlags::MS_BIND,
            None,
        )
        .map_err(netns_err("bind mount", &path))
    })
    .and_then(|r| r);
    if let Err(e) = mounted {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    NetnsFd::open(&path)
}

/// `ip netns del NAME`: unmounts and removes `/var/run/netns/NAME`. The namespace itself
/// goes away once no process, fd or socket holds it. [`Error::NotFound`] if no such name.
pub fn del_named(name: &str) -> Result<()> {
    validate_netns_name(name)?;
    let path = Path::new(NETNS_RUN_DIR).join(name);
    if !path.exists() {
        return Err(Error::NotFound {
            what: format!("netns {name}"),
        });
    }
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) => {}
        Err(e) => return Err(netns_err("unmount", &path)(e)),
    }
    std::fs::remove_file(&path).map_err(|source| Error::Netns {
        op: "remove",
        path: path.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names() {
        for bad in ["", ".", "..", "a/b"] {
            assert!(validate_netns_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_netns_name("cni-1234").is_ok());
    }

    #[test]
    fn missing_namespace_file_is_an_error_with_its_path() {
        let err = NetnsFd::open("/nonexistent/ns").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ns"));
        assert_eq!(err.errno(), Some(libc::ENOENT));
    }
}
