//! The manager's side of the socket (feature `server`): binds the unix socket safely,
//! admits only root and the manager's own user, and feeds each request to a [`Handler`].
//!
//! It owns the socket file, connections, framing, timeouts and shutdown; it must not
//! decide anything about addresses (that is the handler's job), and it never cancels a
//! handler that is working on a request, except when the shutdown grace period runs out.
//!
//! Security: the socket file is made mode 0600 right after `bind` and before the first
//! `accept`; on top of that every connection's peer credentials (`SO_PEERCRED`) are checked,
//! so a peer that slipped in between `bind` and `chmod`, or a socket whose mode someone
//! widened, still cannot talk to the manager unless it is root or the manager's own user.

use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::frame::{check_len, decode_request, encode_response, FrameError};
use crate::{ErrorCode, Request, Response, RpcError};

/// Answers requests. Implemented by the manager; the server calls it once per request,
/// from many connections at once.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. The future runs to completion even if the client goes away, so
    /// an allocation is never left half done by a disconnect.
    fn handle(&self, request: Request) -> impl Future<Output = Result<Response, RpcError>> + Send;
}

/// Tunables of the server; [`ServeOptions::default`] suits the manager.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long a connection may take to deliver a whole request frame, including the wait
    /// for it to start; an idle or stalled client is disconnected after this.
    pub read_timeout: Duration,
    /// How long writing an answer may take before the connection is dropped.
    pub write_timeout: Duration,
    /// Connections served at once; more are closed at once, with a warning.
    pub max_connections: usize,
    /// After shutdown is signalled, how long requests in progress may take to finish before
    /// they are abandoned.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A bound socket, ready to serve. Binding separately from serving lets the manager
/// report bind errors (and readiness) before it starts answering.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    listener: std::os::unix::net::UnixListener,
    /// Device and inode of the socket file we created, so shutdown removes only our own.
    identity: (u64, u64),
    options: ServeOptions,
}

impl Server {
    /// Binds the socket at `path`: creates the parent directory if missing, removes a stale
    /// socket (a socket file nobody listens on), refuses to remove anything else, and sets
    /// the socket file's mode to 0600. Needs no runtime; [`Server::run`] does.
    pub fn bind(path: &Path, options: ServeOptions) -> io::Result<Server> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| with_path(&e, "cannot create the directory of", parent))?;
        }
        remove_stale_socket(path)?;
        let listener = std::os::unix::net::UnixListener::bind(path)
            .map_err(|e| with_path(&e, "cannot bind", path))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| with_path(&e, "cannot set mode 0600 on", path))?;
        let meta = fs::symlink_metadata(path).map_err(|e| with_path(&e, "cannot stat", path))?;
        listener.set_nonblocking(true)?;
        info!(path = %path.display(), "RPC socket bound");
        Ok(Server {
            path: path.to_owned(),
            listener,
            identity: (meta.dev(), meta.ino()),
            options,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `shutdown` completes, then stops accepting, removes the
    /// socket file, lets requests in progress finish (up to the grace period) and returns.
    /// Must be called within a tokio runtime.
    pub async fn run<H: Handler>(
        self,
        handler: Arc<H>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let Server {
            path,
            listener,
            identity,
            options,
        } = self;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let own_uid = nix::unistd::geteuid().as_raw();
        let options = Arc::new(options);
        let slots = Arc::new(Semaphore::new(options.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);

        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(joined) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(err) = joined {
                        error!(?err, "RPC connection task failed");
                    }
                }
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(err) => {
                            // Out of file descriptors and the like: keep serving.
                            warn!(?err, "accept on the RPC socket failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        warn!(max = options.max_connections, "too many RPC connections; closing a new one");
                        continue;
                    };
                    let handler = Arc::clone(&handler);
                    let options = Arc::clone(&options);
                    let stop = stop_rx.clone();
                    connections.spawn(async move {
                        serve_connection(stream, handler.as_ref(), &options, stop, own_uid).await;
                        drop(slot);
                    });
                }
            }
        }

        info!(path = %path.display(), "RPC server shutting down");
        drop(listener);
        remove_own_socket(&path, identity);
        // Wakes idle connections so they close; requests in progress finish first.
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(options.shutdown_grace, async {
            while let Some(joined) = connections.join_next().await {
                if let Err(err) = joined {
                    error!(?err, "RPC connection task failed");
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                left = connections.len(),
                grace = ?options.shutdown_grace,
                "RPC requests still in progress after the grace period; abandoning them"
            );
            connections.abort_all();
        }
        Ok(())
    }
}

/// Binds `path` with default options and serves until `shutdown` completes.
pub async fn serve<H: Handler>(
    path: &Path,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    Server::bind(path, ServeOptions::default())?
        .run(handler, shutdown)
        .await
}

fn with_path(err: &io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

/// Removes a socket file nobody listens on; refuses to touch a live socket or a
/// non-socket.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(with_path(&err, "cannot stat", path)),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to remove it (move it away or \
                 configure another socket path)",
                path.display()
            ),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another server is already listening on {}; is another eni-manager running?",
                path.display()
            ),
        )),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            info!(path = %path.display(), "removing stale RPC socket");
            fs::remove_file(path).map_err(|e| with_path(&e, "cannot remove stale socket", path))
        }
        Err(err) => Err(with_path(&err, "cannot probe existing socket", path)),
    }
}

/// Removes the socket file at shutdown if it is still the one this server created.
fn remove_own_socket(path: &Path, identity: (u64, u64)) {
    match fs::symlink_metadata(path) {
        Ok(meta) if (meta.dev(), meta.ino()) == identity => {
            if let Err(err) = fs::remove_file(path) {
                warn!(?err, path = %path.display(), "cannot remove the RPC socket");
            }
        }
        Ok(_) => debug!(path = %path.display(), "RPC socket replaced by someone else; leaving it"),
        Err(_) => {}
    }
}

/// Reads one frame's payload; `Ok(None)` on a clean end of stream before a frame.
async fn read_frame_async<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < header.len() {
        match reader
            .read(&mut header[got..])
            .await
            .map_err(FrameError::Io)?
        {
            0 if got == 0 => return Ok(None),
            0 => {
                return Err(FrameError::Truncated {
                    expected: header.len(),
                    got,
                })
            }
            n => got += n,
        }
    }
    let len = check_len(u32::from_be_bytes(header))?;
    let mut payload = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match reader
            .read(&mut payload[got..])
            .await
            .map_err(FrameError::Io)?
        {
            0 => return Err(FrameError::Truncated { expected: len, got }),
            n => got += n,
        }
    }
    Ok(Some(payload))
}

/// Serves one connection: checks the peer, then answers its requests one after the other.
async fn serve_connection<H: Handler>(
    mut stream: UnixStream,
    handler: &H,
    options: &ServeOptions,
    mut stop: watch::Receiver<bool>,
    own_uid: u32,
) {
    let peer = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(err) => {
            warn!(?err, "cannot read the RPC peer's credentials; closing");
            return;
        }
    };
    if peer.uid() != 0 && peer.uid() != own_uid {
        warn!(
            uid = peer.uid(),
            gid = peer.gid(),
            pid = ?peer.pid(),
            "refusing RPC connection: the peer is neither root nor the manager's own user"
        );
        return;
    }
    loop {
        let read = tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => return,
            read = tokio::time::timeout(options.read_timeout, read_frame_async(&mut stream)) => read,
        };
        let payload = match read {
            Err(_elapsed) => {
                debug!(pid = ?peer.pid(), "RPC connection idle or stalled; closing");
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Ok(Some(payload))) => payload,
            Ok(Err(err @ FrameError::TooLarge { .. })) => {
                // The rest of the stream cannot be trusted: answer, then close.
                warn!(pid = ?peer.pid(), %err, "oversized RPC frame; closing");
                let answer = Err(RpcError::bad_request(err.to_string()));
                write_answer(&mut stream, &answer, options).await;
                return;
            }
            Ok(Err(err)) => {
                debug!(pid = ?peer.pid(), %err, "RPC connection ended mid-frame");
                return;
            }
        };
        let answer = match decode_request(&payload) {
            Ok(request) => {
                let op = request.op();
                let answer = handler.handle(request).await;
                if let Err(err) = &answer {
                    debug!(op, code = %err.code, message = %err.message, "RPC request failed");
                }
                answer
            }
            Err(err) => {
                debug!(pid = ?peer.pid(), code = %err.code, message = %err.message, "bad RPC request");
                Err(err)
            }
        };
        if !write_answer(&mut stream, &answer, options).await {
            return;
        }
    }
}

/// Writes one answer; false when the connection is no longer usable.
async fn write_answer(
    stream: &mut UnixStream,
    answer: &Result<Response, RpcError>,
    options: &ServeOptions,
) -> bool {
    let frame = match encode_response(answer) {
        Ok(frame) => frame,
        Err(err) => {
            error!(%err, "cannot encode an RPC answer");
            let fallback = Err(RpcError::new(
                ErrorCode::Internal,
                format!("the answer could not be encoded: {err}"),
            ));
            match encode_response(&fallback) {
                Ok(frame) => frame,
                Err(_) => return false,
            }
        }
    };
    match tokio::time::timeout(options.write_timeout, stream.write_all(&frame)).await {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            debug!(?err, "cannot write an RPC answer");
            false
        }
        Err(_elapsed) => {
            debug!("writing an RPC answer timed out");
            false
        }
    }
}
