//! The one error type of this crate: every variant names the map, program, path or
//! operation that failed and keeps the underlying error as its source.

use std::{io, path::PathBuf};

use crate::service::ServiceKey;

/// Errors of the socket-LB loader and its map operations.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The embedded eBPF object could not be loaded (or a pinned map could not be opened).
    #[error("loading the socket-LB object with maps pinned under {pin_dir}")]
    Load {
        /// The pin directory.
        pin_dir: PathBuf,
        /// What aya reported.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// An embedded eBPF object other than the socket LB's could not be loaded.
    #[error("loading the {object} object with maps pinned under {pin_dir}")]
    LoadObject {
        /// Which object (`"nodeport"`).
        object: &'static str,
        /// The pin directory.
        pin_dir: PathBuf,
        /// What aya reported.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A tc (clsact qdisc or filter) operation on a link failed.
    #[error("link {link}: tc {op} failed")]
    Tc {
        /// The link name (in the network namespace it was looked up in).
        link: String,
        /// The operation (`"add clsact"`, `"detach"`).
        op: &'static str,
        /// What aya reported.
        #[source]
        source: Box<aya::programs::tc::TcError>,
    },
    /// A filesystem operation on a pin directory, link pin or cgroup failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done (`"create pin dir"`, `"open cgroup"`, ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The pin directory is not on a bpf filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`).
    #[error("{path} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs {
        /// The pin directory.
        path: PathBuf,
    },
    /// The object lacks a map this crate expects (the C and Rust sides disagree).
    #[error("map {map} is missing from the eBPF object")]
    MissingMap {
        /// The map name.
        map: &'static str,
    },
    /// A map operation failed.
    #[error("map {map}: {op} failed")]
    Map {
        /// The map name.
        map: &'static str,
        /// `"lookup"`, `"update"`, `"delete"`, `"iterate"`, `"open"`, `"info"`.
        op: &'static str,
        /// What aya reported.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A pinned map exists but its layout differs from the one this build uses.
    #[error(
        "pinned map {path} has key/value sizes {found:?}, this build expects {expected:?}; \
         detach and remove the pin to recreate it"
    )]
    IncompatiblePin {
        /// The pin path.
        path: PathBuf,
        /// (key size, value size) found.
        found: (u32, u32),
        /// (key size, value size) expected.
        expected: (u32, u32),
    },
    /// A program operation (load, attach, take link) failed.
    #[error("program {program}: {op} failed")]
    Program {
        /// The program (function) name.
        program: &'static str,
        /// The operation.
        op: &'static str,
        /// What aya reported.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// Pinning a bpf_link failed.
    #[error("program {program}: pinning its link at {path} failed")]
    LinkPin {
        /// The program name.
        program: &'static str,
        /// The pin path.
        path: PathBuf,
        /// What aya reported.
        #[source]
        source: Box<aya::pin::PinError>,
    },
    /// Converting or opening a bpf_link failed.
    #[error("program {program}: link {op} failed")]
    Link {
        /// The program name.
        program: &'static str,
        /// The operation.
        op: &'static str,
        /// What aya reported.
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    /// A service spec was rejected before any map was touched.
    #[error("service {key}: {reason}")]
    InvalidService {
        /// The service.
        key: ServiceKey,
        /// Why.
        reason: String,
    },
    /// Every service id is in use.
    #[error("no free service id")]
    IdsExhausted,
    /// A sock_diag (socket termination) request failed.
    #[error("sock_diag {op} failed")]
    SockDiag {
        /// The operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl BpfError {
    pub(crate) fn map(map: &'static str, op: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map {
            map,
            op,
            source: Box::new(source),
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
