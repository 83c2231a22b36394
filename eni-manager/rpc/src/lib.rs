//! The protocol between `eni-manager` (the node daemon) and its clients: the `eni-cni`
//! plugin, which the container runtime executes for every pod, and the `enictl` CLI.
//!
//! What this crate owns:
//! - the message types ([`Request`], [`Response`], [`RpcError`]) and their JSON form;
//! - the framing: a 4-byte big-endian length, then that many bytes of JSON, at most
//!   [`MAX_FRAME_LEN`] bytes, inside a versioned envelope ([`PROTOCOL_VERSION`]);
//! - a blocking [`Client`] built on the standard library only, so the CNI binary links no
//!   async runtime;
//! - with the `server` feature, the tokio server ([`server::serve`]) that `eni-manager` runs.
//!
//! What it must not do: decide anything about addresses. The manager's [`server::Handler`]
//! answers requests; this crate only carries them. The protocol carries no credentials and
//! must never grow any.
//!
//! The wire format is described in `docs/rpc.md`.

#![deny(missing_docs)]

mod client;
mod error;
mod frame;
#[cfg(feature = "server")]
pub mod server;
mod types;

pub use client::{Client, ClientError};
pub use error::{ErrorCode, RpcError, UnknownErrorCode};
pub use frame::{
    decode_request, decode_response, encode_request, encode_response, read_frame, write_frame,
    FrameError,
};
pub use types::{
    AllocateRequest, Allocation, Allocations, AttachmentRef, CheckRequest, EniStatus, GcRequest,
    GcResult, IpStatus, NodeStatus, PodRef, PoolStatus, PortMapping, PortProtocol, ReleaseRequest,
    Released, Request, Response, Status,
};

/// The protocol version this build speaks, carried as `"v"` in every envelope.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame payload (the JSON after the length prefix) either side accepts: 1 MiB.
pub const MAX_FRAME_LEN: u32 = 1024 * 1024;

/// Where `eni-manager` listens unless configured otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/eni-manager/eni-manager.sock";
