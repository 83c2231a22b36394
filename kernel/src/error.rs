//! The one error type of this crate.
//!
//! Every kernel refusal becomes [`Error::Netlink`] with the errno and the kernel's own
//! extended-ack message, tagged with what was being done. Callers decide on variants and on
//! [`Error::is_exists`] / [`Error::is_not_found`], never on message strings.

use std::io;
use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between this process and the kernel's network stack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel answered a netlink request with an error.
    #[error("{op} {subject}: {message} (errno {errno})")]
    Netlink {
        /// What was being done, named like the `ip` command (`"link add veth"`).
        op: &'static str,
        /// The object concerned (`"veth0"`, `"10.0.0.0/24 table 100"`).
        subject: String,
        /// The positive errno the kernel returned (`libc::EEXIST`, ...).
        errno: i32,
        /// The kernel's extended-ack message when it gave one, else `strerror(errno)`.
        message: String,
    },
    /// A looked-up object does not exist.
    #[error("not found: {what}")]
    NotFound {
        /// What was looked for (`"link with MAC 02:00:00:00:00:01"`).
        what: String,
    },
    /// The running kernel has no support for a link kind (no module, not built in).
    #[error("the kernel does not support {kind} links")]
    Unsupported {
        /// The link kind, as `ip link add type KIND` names it.
        kind: &'static str,
    },
    /// The netlink socket itself failed (open, bind, send, receive).
    #[error("netlink socket: {op}")]
    Socket {
        /// What was being done with the socket.
        op: &'static str,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A reply from the kernel could not be parsed.
    #[error("{op}: cannot parse the kernel's reply: {message}")]
    Decode {
        /// The request whose reply failed to parse.
        op: &'static str,
        /// The parser's description of the problem.
        message: String,
    },
    /// A network-namespace operation failed.
    #[error("netns {op} {path}")]
    Netns {
        /// What was being done (`"open"`, `"setns"`, `"bind mount"`, ...).
        op: &'static str,
        /// The namespace file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading or writing a sysctl under `/proc/sys/net` failed.
    #[error("sysctl {op} {path}")]
    Sysctl {
        /// `"read"` or `"write"`.
        op: &'static str,
        /// The file under `/proc/sys`.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// An argument was rejected before anything was sent to the kernel.
    #[error("invalid argument: {what}")]
    InvalidArgument {
        /// What was wrong.
        what: String,
    },
}

impl Error {
    /// The kernel errno behind this error, if the kernel (or the fake) gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { errno, .. } => Some(*errno),
            Error::Socket { source, .. }
            | Error::Netns { source, .. }
            | Error::Sysctl { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the object to be created already exists (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// True when the object does not exist: [`Error::NotFound`], or one of the errnos the
    /// kernel uses for that depending on the object (`ENOENT` for rules and neighbours,
    /// `ESRCH` for routes, `EADDRNOTAVAIL` for addresses, `ENODEV` for links).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
            || matches!(
                self.errno(),
                Some(libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL | libc::ENODEV)
            )
    }

    /// True when the kernel lacks what was asked for ([`Error::Unsupported`]).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported { .. })
    }

    /// A kernel-style error with `strerror(errno)` as its message (for fakes and tests).
    pub fn netlink(op: &'static str, subject: impl Into<String>, errno: i32) -> Self {
        Error::Netlink {
            op,
            subject: subject.into(),
            errno,
            message: strerror(errno),
        }
    }
}

/// `strerror(errno)` without unsafe code.
pub(crate) fn strerror(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    // io::Error renders "Message (os error N)"; keep the message.
    match text.rfind(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_errnos() {
        assert!(Error::netlink("addr add", "x", libc::EEXIST).is_exists());
        for errno in [libc::ENOENT, libc::ESRCH, libc::EADDRNOTAVAIL, libc::ENODEV] {
            assert!(Error::netlink("del", "x", errno).is_not_found());
        }
        assert!(Error::NotFound { what: "x".into() }.is_not_found());
        assert!(!Error::netlink("del", "x", libc::EPERM).is_not_found());
        assert!(Error::Unsupported { kind: "ipvlan" }.is_unsupported());
    }

    #[test]
    fn message_names_op_subject_and_errno() {
        let err = Error::netlink("link add veth", "veth0", libc::EEXIST);
        assert_eq!(
            err.to_string(),
            "link add veth veth0: File exists (errno 17)"
        );
    }
}
