//! The blocking client, on the standard library alone, for `eni-cni` and `enictl`.
//!
//! One [`Client`] holds one connection, which carries any number of requests one after
//! the other. After a failure that may leave the stream mid-frame (timeout, i/o error,
//! garbled reply) the connection is dropped and the next call reconnects; a failed call
//! is never retried behind the caller's back.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::frame::{decode_response, encode_request, read_frame, FrameError};
use crate::{
    AllocateRequest, Allocation, CheckRequest, GcRequest, ReleaseRequest, Request, Response,
    RpcError, Status,
};

/// How much longer than an allocate's own deadline the client waits for the answer.
const ALLOCATE_REPLY_MARGIN: Duration = Duration::from_secs(2);

/// A call to the manager failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected to.
    #[error("cannot connect to eni-manager at {}: {hint}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// What that most likely means (the manager is not running, permissions, ...).
        hint: String,
        /// The error from `connect`.
        #[source]
        source: io::Error,
    },
    /// The manager did not answer (or take the request) in time.
    #[error("eni-manager at {} did not answer within {after:?}", path.display())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The timeout that expired.
        after: Duration,
    },
    /// The manager closed the connection before answering.
    #[error(
        "eni-manager at {} closed the connection without answering (it may be shutting \
         down or restarting, or it refused this user: only root and the manager's own user \
         may connect)",
        path.display()
    )]
    Disconnected {
        /// The socket path.
        path: PathBuf,
    },
    /// Another socket error.
    #[error("i/o error talking to eni-manager at {}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The manager's reply is not a valid frame or message.
    #[error("invalid reply from eni-manager at {}", path.display())]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What is wrong with the reply.
        #[source]
        source: FrameError,
    },
    /// The manager answered with a response of the wrong kind for the request.
    #[error("eni-manager answered `{op}` with a `{got}` response, expected `{expected}`")]
    UnexpectedResponse {
        /// The request's op.
        op: &'static str,
        /// The kind of response expected.
        expected: &'static str,
        /// The kind of response received.
        got: &'static str,
    },
    /// The manager answered with an error.
    #[error("eni-manager answered: {0}")]
    Remote(RpcError),
}

impl ClientError {
    /// Whether the manager could not be reached or did not answer at all (as opposed to
    /// answering with an error or with garbage).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::Timeout { .. }
                | ClientError::Disconnected { .. }
                | ClientError::Io { .. }
        )
    }

    /// The manager's error, when it answered with one.
    pub fn remote(&self) -> Option<&RpcError> {
        match self {
            ClientError::Remote(error) => Some(error),
            _ => None,
        }
    }
}

/// A connection to `eni-manager`'s socket.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
    /// `None` after a failure that may have left the stream mid-frame.
    stream: Option<UnixStream>,
}

impl Client {
    /// Connects to the manager's socket. `timeout` bounds every read and write of a call
    /// (an allocate waits at least its own `timeout_ms` plus a margin).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let timeout = timeout.max(Duration::from_millis(1));
        let stream = open(path, timeout)?;
        Ok(Client {
            path: path.to_owned(),
            timeout,
            stream: Some(stream),
        })
    }

    /// The socket path this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request and waits for its answer.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let frame = encode_request(request).map_err(|source| ClientError::Protocol {
            path: self.path.clone(),
            source,
        })?;
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => open(&self.path, self.timeout)?,
        };
        let read_timeout = match request {
            Request::Allocate(req) if req.timeout_ms > 0 => self
                .timeout
                .max(Duration::from_millis(u64::from(req.timeout_ms)) + ALLOCATE_REPLY_MARGIN),
            _ => self.timeout,
        };
        stream
            .set_read_timeout(Some(read_timeout))
            .map_err(|source| self.io_error(source, read_timeout))?;

        io::Write::write_all(&mut stream, &frame)
            .map_err(|source| self.io_error(source, self.timeout))?;
        let payload = match read_frame(&mut stream) {
            Ok(Some(payload)) => payload,
            Ok(None) | Err(FrameError::Truncated { .. }) => {
                return Err(ClientError::Disconnected {
                    path: self.path.clone(),
                })
            }
            Err(FrameError::Io(source)) => return Err(self.io_error(source, read_timeout)),
            Err(source) => {
                return Err(ClientError::Protocol {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let answer = decode_response(&payload).map_err(|source| ClientError::Protocol {
            path: self.path.clone(),
            source,
        })?;
        // The frame was read whole: the connection is in step and can be reused.
        self.stream = Some(stream);
        answer.map_err(ClientError::Remote)
    }

    /// Allocates an address (CNI ADD); idempotent per container id and interface.
    pub fn allocate(&mut self, request: AllocateRequest) -> Result<Allocation, ClientError> {
        match self.call(&Request::Allocate(request))? {
            Response::Allocation(allocation) => Ok(allocation),
            other => Err(unexpected("allocate", "allocation", &other)),
        }
    }

    /// Releases what the interface holds (CNI DEL); `None` when it held nothing.
    pub fn release(&mut self, request: ReleaseRequest) -> Result<Option<Allocation>, ClientError> {
        match self.call(&Request::Release(request))? {
            Response::Released(released) => Ok(released.released),
            other => Err(unexpected("release", "released", &other)),
        }
    }

    /// Returns the interface's allocation (CNI CHECK); a `NotFound` remote error if none.
    pub fn check(&mut self, request: CheckRequest) -> Result<Allocation, ClientError> {
        match self.call(&Request::Check(request))? {
            Response::Allocation(allocation) => Ok(allocation),
            other => Err(unexpected("check", "allocation", &other)),
        }
    }

    /// Returns every allocation on the node.
    pub fn list(&mut self) -> Result<Vec<Allocation>, ClientError> {
        match self.call(&Request::List)? {
            Response::Allocations(list) => Ok(list.allocations),
            other => Err(unexpected("list", "allocations", &other)),
        }
    }

    /// Returns the node's, the pool's and the manager's status.
    pub fn status(&mut self) -> Result<Status, ClientError> {
        match self.call(&Request::Status)? {
            Response::Status(status) => Ok(status),
            other => Err(unexpected("status", "status", &other)),
        }
    }

    /// Releases every allocation not listed as valid (CNI GC); returns what was released.
    pub fn gc(&mut self, request: GcRequest) -> Result<Vec<Allocation>, ClientError> {
        match self.call(&Request::Gc(request))? {
            Response::GcResult(result) => Ok(result.released),
            other => Err(unexpected("gc", "gc_result", &other)),
        }
    }

    /// Classifies a socket error of a call.
    fn io_error(&self, source: io::Error, after: Duration) -> ClientError {
        let path = self.path.clone();
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::Timeout { path, after }
            }
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof => ClientError::Disconnected { path },
            _ => ClientError::Io { path, source },
        }
    }
}

fn unexpected(op: &'static str, expected: &'static str, got: &Response) -> ClientError {
    ClientError::UnexpectedResponse {
        op,
        expected,
        got: got.kind(),
    }
}

/// Connects and sets the socket timeouts.
fn open(path: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    let stream = UnixStream::connect(path).map_err(|source| {
        let hint = match source.kind() {
            io::ErrorKind::NotFound => {
                "the socket does not exist: is eni-manager running on this node?".to_owned()
            }
            io::ErrorKind::ConnectionRefused => {
                "nothing is listening on the socket: eni-manager is not running (the socket \
                 file is stale)"
                    .to_owned()
            }
            io::ErrorKind::PermissionDenied => {
                "permission denied: only root and the manager's own user may connect".to_owned()
            }
            _ => "connect failed".to_owned(),
        };
        ClientError::Connect {
            path: path.to_owned(),
            hint,
            source,
        }
    })?;
    let set = |result: io::Result<()>| {
        result.map_err(|source| ClientError::Io {
            path: path.to_owned(),
            source,
        })
    };
    set(stream.set_read_timeout(Some(timeout)))?;
    set(stream.set_write_timeout(Some(timeout)))?;
    Ok(stream)
}
