//! A scripted Kubernetes API server for the watch-source tests: every list and watch request
//! a watcher makes is handed to the test, which answers it (a list body; watch event lines
//! streamed until it drops the sender). Paths not scripted get a 404 `Status`.
//!
//! Included with `#[path = "common/apiserver.rs"] mod apiserver;` by the tests that need it.

#![allow(dead_code, reason = "each test binary uses part of it")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

/// How long the test waits for a watcher's next request.
pub const WAIT: Duration = Duration::from_secs(15);

/// One request of a watcher, for the test to answer.
#[derive(Debug)]
pub enum Call {
    /// A list: answer with the body.
    List {
        query: String,
        reply: oneshot::Sender<Value>,
    },
    /// A watch: send event lines; dropping the sender ends the response.
    Watch {
        query: String,
        events: mpsc::UnboundedSender<Value>,
    },
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("valid response")
}

async fn handle(
    req: Request<Incoming>,
    paths: &'static [&'static str],
    calls: Vec<mpsc::UnboundedSender<Call>>,
) -> Result<Response<Body>, Infallible> {
    let query = req.uri().query().unwrap_or("").to_string();
    let Some(kind) = paths.iter().position(|p| *p == req.uri().path()) else {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "message": format!("{} not scripted", req.uri().path()), "code": 404});
        return Ok(json_response(404, &body));
    };
    if query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1")
    {
        let (tx, rx) = mpsc::unbounded_channel::<Value>();
        let _ = calls[kind].send(Call::Watch { query, events: tx });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            let ev = rx.recv().await?;
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{ev}\n")))),
                rx,
            ))
        });
        Ok(Response::builder()
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed())
            .expect("valid response"))
    } else {
        let (tx, rx) = oneshot::channel();
        let _ = calls[kind].send(Call::List { query, reply: tx });
        Ok(match rx.await {
            Ok(v) => json_response(200, &v),
            Err(_) => json_response(
                500,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "test dropped the list", "code": 500}),
            ),
        })
    }
}

/// The scripted API server; kind `i` is the collection at `paths[i]`.
pub struct ApiServer {
    addr: SocketAddr,
    calls: Vec<mpsc::UnboundedReceiver<Call>>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Serves the collections at `paths` (e.g. `/api/v1/services`) on a loopback port.
    pub async fn start(paths: &'static [&'static str]) -> ApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (txs, calls): (Vec<_>, Vec<_>) =
            paths.iter().map(|_| mpsc::unbounded_channel()).unzip();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let txs = txs.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, paths, txs.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        ApiServer { addr, calls, task }
    }

    /// The next request for kind `kind`.
    pub async fn next(&mut self, kind: usize) -> Call {
        tokio::time::timeout(WAIT, self.calls[kind].recv())
            .await
            .unwrap_or_else(|_| panic!("no request for kind {kind} within {WAIT:?}"))
            .expect("server running")
    }

    /// The next request for `kind`, which must be a list: its query and where to answer.
    pub async fn list(&mut self, kind: usize) -> (String, oneshot::Sender<Value>) {
        match self.next(kind).await {
            Call::List { query, reply } => (query, reply),
            other => panic!("expected a list of kind {kind}, got {other:?}"),
        }
    }

    /// The next request for `kind`, which must be a watch: its query and the event sender.
    pub async fn watch(&mut self, kind: usize) -> (String, mpsc::UnboundedSender<Value>) {
        match self.next(kind).await {
            Call::Watch { query, events } => (query, events),
            other => panic!("expected a watch of kind {kind}, got {other:?}"),
        }
    }

    /// A kubeconfig file in `dir` pointing at this server over plain http.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
                 users:\n- name: nobody\n  user: {{}}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: nobody\n\
                 current-context: fake\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
