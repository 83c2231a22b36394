//! HTTP: one service answering the API at `/`, metadata at `/latest/` and the admin API at
//! `/_admin/`, on the main listener and (with the hypervisor) inside the VPC namespace; the
//! ticker that completes asynchronous transitions; persistence after each change.
//!
//! This module wires the parts together; the rules live in `api`, `signature`, `faults`,
//! `metadata` and `state`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming as Body;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::api::{self, ApiError, Params};
use crate::faults::FaultState;
use crate::hypervisor::{Hypervisor, NicSpec};
use crate::metadata;
use crate::signature::{self, Incoming, KeyInfo, NonceCache};
use crate::state::{now_ms, Cloud, Effect, Status};
use crate::world::World;

const MAX_BODY: usize = 1 << 20;

/// Everything the handlers share.
#[derive(Debug)]
pub struct Shared {
    cloud: Mutex<Cloud>,
    faults: Mutex<FaultState>,
    nonces: Mutex<NonceCache>,
    blackhole: watch::Sender<bool>,
    hypervisor: Arc<Hypervisor>,
    vpc_listening: Mutex<bool>,
    state_path: Option<PathBuf>,
    wake: Notify,
}

/// Why the connection is closed without an answer (an injected drop).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Builds the shared state from a world, loading `state_path` when it exists.
    pub fn new(world: World, state_path: Option<PathBuf>) -> Result<Arc<Shared>, String> {
        let hypervisor = Arc::new(Hypervisor::new(&world.hypervisor, &world.vswitches));
        let faults = FaultState::new(world.faults.clone());
        let blackhole = world.faults.blackhole;
        let mut cloud = Cloud::new(world);
        if let Some(p) = &state_path {
            if p.exists() {
                cloud.load(p)?;
                info!(path = %p.display(), enis = cloud.enis.len(), "state loaded");
            }
        }
        Ok(Arc::new(Shared {
            cloud: Mutex::new(cloud),
            faults: Mutex::new(faults),
            nonces: Mutex::new(NonceCache::default()),
            blackhole: watch::Sender::new(blackhole),
            hypervisor,
            vpc_listening: Mutex::new(false),
            state_path,
            wake: Notify::new(),
        }))
    }

    /// The hypervisor.
    pub fn hypervisor(&self) -> &Hypervisor {
        &self.hypervisor
    }

    fn save(&self, cloud: &Cloud) {
        if let Some(p) = &self.state_path {
            if let Err(e) = cloud.save(p) {
                warn!(error = %e, path = %p.display(), "cannot write the state file");
            }
        }
    }

    fn nic_spec(cloud: &Cloud, eni_id: &str) -> Option<NicSpec> {
        let eni = cloud.enis.get(eni_id)?;
        let vsw = cloud.vswitch(&eni.vswitch)?;
        Some(NicSpec {
            eni_id: eni.id.clone(),
            mac: eni.mac.clone(),
            vswitch_id: vsw.id.clone(),
            vswitch_cidr: vsw.cidr,
            gateway: vsw.gateway(),
            primary_ip: eni.primary.then_some(eni.primary_ip),
        })
    }

    /// Binds an instance to a namespace (hypervisor), plugs its primary NIC and its InUse
    /// ENIs, and starts the listener inside the VPC namespace if it is not running yet.
    pub async fn bind(self: &Arc<Self>, instance: &str, netns: &str) -> Result<(), String> {
        let (primary, others) = {
            let cloud = lock(&self.cloud);
            if !cloud.world.instances.iter().any(|i| i.id == instance) {
                return Err(format!("instance: no instance {instance} in this world"));
            }
            let primary = cloud
                .enis
                .values()
                .find(|e| e.primary && e.instance.as_deref() == Some(instance))
                .and_then(|e| Shared::nic_spec(&cloud, &e.id))
                .ok_or_else(|| format!("instance {instance} has no primary ENI"))?;
            let others: Vec<NicSpec> = cloud
                .enis
                .values()
                .filter(|e| {
                    !e.primary
                        && e.status == Status::InUse
                        && e.instance.as_deref() == Some(instance)
                })
                .filter_map(|e| Shared::nic_spec(&cloud, &e.id))
                .collect();
            (primary, others)
        };
        let hv = self.hypervisor.clone();
        let (inst, ns) = (instance.to_string(), netns.to_string());
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            hv.bind(&inst, &ns, &primary).map_err(|e| e.to_string())?;
            for nic in &others {
                hv.plug(&inst, nic).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())??;
        {
            let mut cloud = lock(&self.cloud);
            cloud
                .bindings
                .insert(instance.to_string(), netns.to_string());
            self.save(&cloud);
        }
        self.start_vpc_listener().await
    }

    async fn start_vpc_listener(self: &Arc<Self>) -> Result<(), String> {
        if *lock(&self.vpc_listening) {
            return Ok(());
        }
        let hv = self.hypervisor.clone();
        let std_listener = tokio::task::spawn_blocking(move || hv.listen_in_vpc(80))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let listener = TcpListener::from_std(std_listener).map_err(|e| e.to_string())?;
        *lock(&self.vpc_listening) = true;
        info!(netns = %self.hypervisor.vpc_netns(), "also serving inside the VPC namespace on port 80");
        tokio::spawn(serve(listener, self.clone()));
        Ok(())
    }

    /// Carries out the hypervisor work of due transitions, forever.
    pub async fn run_ticker(self: Arc<Self>) {
        loop {
            let (effects, next) = {
                let mut cloud = lock(&self.cloud);
                let before = cloud.enis.len();
                let statuses: Vec<(String, Status)> = cloud
                    .enis
                    .values()
                    .map(|e| (e.id.clone(), e.status))
                    .collect();
                let effects = cloud.advance(now_ms());
                let changed = cloud.enis.len() != before
                    || statuses
                        .iter()
                        .any(|(id, s)| cloud.enis.get(id).map(|e| e.status) != Some(*s));
                if changed {
                    self.save(&cloud);
                }
                cloud.expire(now_ms());
                (effects, cloud.next_due())
            };
            for effect in effects {
                self.carry_out(effect).await;
            }
            let wait = next
                .map(|due| Duration::from_millis(due.saturating_sub(now_ms())))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    async fn carry_out(&self, effect: Effect) {
        let hv = self.hypervisor.clone();
        match effect {
            Effect::Plug { eni, instance } => {
                let spec = Shared::nic_spec(&lock(&self.cloud), &eni);
                let Some(spec) = spec else { return };
                let id = eni.clone();
                let res = tokio::task::spawn_blocking(move || hv.plug(&instance, &spec)).await;
                let mut cloud = lock(&self.cloud);
                match res {
                    Ok(Ok(ifname)) => {
                        debug!(eni = %id, %ifname, "plugged");
                        cloud.complete(&id, now_ms());
                        self.save(&cloud);
                    }
                    Ok(Err(e)) => {
                        warn!(eni = %id, error = %e, "hypervisor could not plug the ENI; will retry");
                        cloud.retry_later(&id, now_ms());
                    }
                    Err(e) => {
                        warn!(eni = %id, error = %e, "plug task failed; will retry");
                        cloud.retry_later(&id, now_ms());
                    }
                }
            }
            Effect::Unplug { eni } => {
                let id = eni.clone();
                let res = tokio::task::spawn_blocking(move || hv.unplug(&eni)).await;
                let mut cloud = lock(&self.cloud);
                match res {
                    Ok(Ok(())) => {
                        cloud.complete(&id, now_ms());
                        self.save(&cloud);
                    }
                    Ok(Err(e)) => {
                        warn!(eni = %id, error = %e, "hypervisor could not unplug the ENI; will retry");
                        cloud.retry_later(&id, now_ms());
                    }
                    Err(e) => {
                        warn!(eni = %id, error = %e, "unplug task failed; will retry");
                        cloud.retry_later(&id, now_ms());
                    }
                }
            }
        }
    }

    /// Binds the instances the world (or the state file) binds. Errors are reported, not fatal.
    pub async fn bind_initial(self: &Arc<Self>) -> Vec<String> {
        let bindings: Vec<(String, String)> = lock(&self.cloud)
            .bindings
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect();
        let mut errors = Vec::new();
        for (inst, ns) in bindings {
            if let Err(e) = self.bind(&inst, &ns).await {
                errors.push(format!("binding {inst} to {ns}: {e}"));
            }
        }
        errors
    }

    async fn wait_blackhole(&self) {
        let mut rx = self.blackhole.subscribe();
        let _ = rx.wait_for(|on| !*on).await;
    }
}

/// Accepts connections forever. (Boxed: the admin API's bind can start a listener, so the
/// future type would otherwise contain itself.)
pub fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(accept_loop(listener, shared))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { handle(shared, req, peer).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static headers are valid")
}

fn json_response(status: u16, v: &Value) -> Response<Full<Bytes>> {
    respond(status, "application/json;charset=utf-8", v.to_string())
}

fn new_request_id() -> String {
    let r: u128 = rand::random();
    let h = format!("{r:032X}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn parse_form(s: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(s.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Body>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let path = req.uri().path().to_string();
    if path.starts_with("/_admin/") || path == "/_admin" {
        return Ok(handle_admin(shared, req).await);
    }
    shared.wait_blackhole().await;
    if path.starts_with("/latest/") || path == "/latest" {
        return Ok(handle_metadata(&shared, &req, peer));
    }
    handle_api(shared, req).await
}

fn handle_metadata(
    shared: &Shared,
    req: &Request<Body>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let path = req.uri().path();
    let mut cloud = lock(&shared.cloud);
    let peer_ip = match peer.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    };
    let answer = if path == "/latest/api/token" {
        if req.method() != Method::PUT {
            metadata::Answer {
                status: 405,
                body: "use PUT for /latest/api/token\n".into(),
            }
        } else {
            metadata::issue_token(&mut cloud, header(metadata::TOKEN_TTL_HEADER))
        }
    } else if !metadata::token_ok(&cloud, header(metadata::TOKEN_HEADER)) {
        metadata::Answer {
            status: 401,
            body: "the metadata token is unknown or expired\n".into(),
        }
    } else if let Some(rest) = path.strip_prefix("/latest/meta-data") {
        match metadata::pick_instance(&cloud, header(metadata::INSTANCE_HEADER), peer_ip) {
            Ok(inst) => {
                let issued_before = cloud.temp_keys.len();
                let a = metadata::get(&mut cloud, &inst, rest);
                if cloud.temp_keys.len() != issued_before {
                    shared.save(&cloud);
                }
                a
            }
            Err(a) => a,
        }
    } else {
        metadata::Answer {
            status: 404,
            body: format!("Not Found: {path}\n"),
        }
    };
    debug!(path, status = answer.status, "metadata");
    respond(answer.status, "text/plain", answer.body)
}

async fn handle_api(
    shared: Arc<Shared>,
    req: Request<Body>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let started = Instant::now();
    let request_id = new_request_id();
    let method = req.method().as_str().to_ascii_uppercase();
    let query = req.uri().query().map(parse_form).unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let is_form = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let e = ApiError::invalid("body", "larger than 1 MiB or unreadable");
            return Ok(error_response(&e, &request_id));
        }
    };
    let form = if is_form {
        parse_form(&String::from_utf8_lossy(&body))
    } else {
        Vec::new()
    };
    let incoming = Incoming {
        method: &method,
        query: &query,
        form: &form,
        headers: &headers,
        body: &body,
    };
    let mut params = Params(query.clone());
    params.0.extend(form.iter().cloned());
    if let Some((_, v)) = headers.iter().find(|(k, _)| k == "x-acs-version") {
        if params.get("Version").is_none() {
            params.0.push(("Version".into(), v.clone()));
        }
    }
    let action_hint = headers
        .iter()
        .find(|(k, _)| k == "x-acs-action")
        .map(|(_, v)| v.clone())
        .or_else(|| params.get("Action").map(str::to_string))
        .unwrap_or_default();
    let counted_action = if api::ACTIONS.contains(&action_hint.as_str()) {
        action_hint.clone()
    } else {
        "(unknown)".to_string()
    };

    let plan = lock(&shared.faults).plan(&counted_action, Instant::now());
    if !plan.latency.is_zero() {
        tokio::time::sleep(plan.latency).await;
    }

    let verified = {
        let cloud = lock(&shared.cloud);
        let lookup = |id: &str| -> Option<KeyInfo> {
            if let Some(k) = cloud.world.access_keys.iter().find(|k| k.id == id) {
                return Some(KeyInfo {
                    secret: k.secret.clone(),
                    token: k.sts_token.clone(),
                    expires: None,
                });
            }
            cloud.temp_keys.get(id).map(|k| KeyInfo {
                secret: k.secret.clone(),
                token: Some(k.token.clone()),
                expires: time::OffsetDateTime::from_unix_timestamp_nanos(
                    k.expires_ms as i128 * 1_000_000,
                )
                .ok(),
            })
        };
        let mut nonces = lock(&shared.nonces);
        signature::verify(
            &incoming,
            lookup,
            &mut nonces,
            time::OffsetDateTime::now_utc(),
        )
    };
    let outcome: Result<(Value, bool), ApiError> = match verified {
        Err(e) => Err(e),
        Ok(v) => {
            if params
                .get("Format")
                .is_some_and(|f| !f.eq_ignore_ascii_case("JSON"))
            {
                Err(ApiError::invalid(
                    "Format",
                    "this emulator answers JSON only (Format=JSON)",
                ))
            } else if let Some(e) = plan.fail.clone() {
                Err(e)
            } else {
                let mut cloud = lock(&shared.cloud);
                let r = api::dispatch(&mut cloud, &v.action, &params);
                if let Ok((_, true)) = &r {
                    shared.save(&cloud);
                    shared.wake.notify_one();
                }
                r.map(|(answer, changed)| {
                    if changed {
                        debug!(key = %v.access_key_id, "state changed");
                    }
                    (answer, changed)
                })
            }
        }
    };
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let key_id = params
        .get("AccessKeyId")
        .map(str::to_string)
        .or_else(|| {
            headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .and_then(|(_, v)| {
                    v.split("Credential=")
                        .nth(1)
                        .map(|s| s.split(',').next().unwrap_or("").to_string())
                })
        })
        .unwrap_or_default();
    match outcome {
        Ok((mut answer, _)) => {
            lock(&shared.faults).record(&counted_action, Ok(()), plan.drop);
            info!(action = %action_hint, key = %key_id, outcome = "ok", dropped = plan.drop, ms = format!("{elapsed_ms:.1}"), "api");
            if plan.drop {
                return Err(Dropped);
            }
            if let Value::Object(m) = &mut answer {
                m.insert("RequestId".into(), Value::String(request_id.clone()));
            }
            let mut resp = json_response(200, &answer);
            resp.headers_mut().insert(
                "x-acs-request-id",
                request_id.parse().expect("hex and dashes"),
            );
            Ok(resp)
        }
        Err(e) => {
            lock(&shared.faults).record(&counted_action, Err(&e.code), false);
            info!(action = %action_hint, key = %key_id, outcome = %e.code, status = e.status, ms = format!("{elapsed_ms:.1}"), "api");
            Ok(error_response(&e, &request_id))
        }
    }
}

fn error_response(e: &ApiError, request_id: &str) -> Response<Full<Bytes>> {
    let mut resp = json_response(e.status, &e.body(request_id));
    resp.headers_mut().insert(
        "x-acs-request-id",
        request_id.parse().expect("hex and dashes"),
    );
    if let Some(ms) = e.retry_after_ms {
        resp.headers_mut()
            .insert("x-acs-retry-after", ms.to_string().parse().expect("digits"));
    }
    resp
}

async fn handle_admin(shared: Arc<Shared>, req: Request<Body>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_response(400, &serde_json::json!({"error": "body too large"})),
    };
    let err =
        |status: u16, msg: String| json_response(status, &serde_json::json!({ "error": msg }));
    match (method, path.as_str()) {
        (Method::GET, "/_admin/state") => {
            let cloud = lock(&shared.cloud);
            let v = crate::admin::state_json(&cloud, |i| shared.hypervisor.links(i));
            json_response(200, &v)
        }
        (Method::GET, "/_admin/calls") => json_response(200, &lock(&shared.faults).calls_json()),
        (Method::GET, "/_admin/faults") => {
            let cloud = lock(&shared.cloud);
            let faults = lock(&shared.faults);
            json_response(200, &crate::admin::faults_json(&cloud, &faults))
        }
        (Method::PUT, "/_admin/faults") => {
            let result = {
                let mut cloud = lock(&shared.cloud);
                let mut faults = lock(&shared.faults);
                crate::admin::apply_faults(&mut cloud, &mut faults, &body)
                    .map(|()| faults.faults.blackhole)
            };
            match result {
                Ok(blackhole) => {
                    shared.blackhole.send_replace(blackhole);
                    info!(blackhole, "faults replaced");
                    json_response(200, &serde_json::json!({"ok": true}))
                }
                Err(problems) => json_response(
                    400,
                    &serde_json::json!({ "error": "invalid faults update", "problems": problems }),
                ),
            }
        }
        (Method::POST, "/_admin/bind") => {
            let req: crate::admin::BindRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return err(
                        400,
                        format!("body: expected {{\"instance\":..,\"netns\":..}}: {e}"),
                    )
                }
            };
            match shared.bind(&req.instance, &req.netns).await {
                Ok(()) => json_response(
                    200,
                    &serde_json::json!({"ok": true, "links": shared.hypervisor.links(&req.instance)}),
                ),
                Err(e) => err(400, e),
            }
        }
        (Method::POST, "/_admin/reset") => {
            let (unplug, bound) = {
                let cloud = lock(&shared.cloud);
                let ids: Vec<String> = cloud
                    .enis
                    .values()
                    .filter(|e| !e.primary)
                    .map(|e| e.id.clone())
                    .collect();
                (ids, !cloud.bindings.is_empty())
            };
            if bound {
                let hv = shared.hypervisor.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    for id in unplug {
                        if let Err(e) = hv.unplug(&id) {
                            warn!(eni = %id, error = %e, "reset: unplug failed");
                        }
                    }
                })
                .await;
            }
            {
                let mut cloud = lock(&shared.cloud);
                let bindings = cloud.bindings.clone();
                cloud.reset();
                cloud.bindings.extend(bindings);
                let mut faults = lock(&shared.faults);
                *faults = FaultState::new(cloud.world.faults.clone());
                shared.blackhole.send_replace(cloud.world.faults.blackhole);
                lock(&shared.nonces).clear();
                shared.save(&cloud);
            }
            info!("reset to the world file");
            json_response(200, &serde_json::json!({"ok": true}))
        }
        (
            _,
            "/_admin/state" | "/_admin/calls" | "/_admin/faults" | "/_admin/bind" | "/_admin/reset",
        ) => err(
            405,
            "method not allowed here; see docs/mock-cloud.md".into(),
        ),
        _ => err(
            404,
            format!("no admin endpoint {path}; see docs/mock-cloud.md"),
        ),
    }
}

/// A future that completes on SIGINT or SIGTERM. Create it before announcing the listener,
/// so that a signal sent right after the announcement is handled.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Serves until `shutdown` completes, then cleans up the hypervisor.
pub async fn run(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    tokio::spawn(shared.clone().run_ticker());
    tokio::spawn(serve(listener, shared.clone()));
    shutdown.await;
    info!("shutting down");
    let hv = shared.hypervisor.clone();
    let _ = tokio::task::spawn_blocking(move || hv.shutdown()).await;
    Ok(())
}
