//! The Kubernetes watch source against a scripted API server: a small HTTP server in the
//! test answers the watcher's list and watch requests with what each step of the test
//! hands it (lists with a resourceVersion; streamed ADDED/MODIFIED/DELETED/BOOKMARK events;
//! an ERROR event with code 410 the way the API server expires a watch), and the test
//! checks the services a recording fake of the maps holds after each step. No root, no
//! cluster.

#[path = "common/apiserver.rs"]
mod apiserver;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eni_bpf::fake::RecordingMaps;
use eni_bpf::{
    Backend, BackendState, BpfError, DatapathMaps, Protocol, ServiceEntry, ServiceKey, ServiceSpec,
    UpsertOutcome,
};
use eni_manager::hostports::{HostPort, HostPortEntry, HostPorts};
use eni_manager::services::desired::DesiredOptions;
use eni_manager::services::external::NodePortPath;
use eni_manager::services::kube::{self as ksrc, KubeOptions, KubeSourceError, KubeStats};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use apiserver::{ApiServer, WAIT};

const SERVICES: usize = 0;
const SLICES: usize = 1;

/// The collections the watcher reads, in kind order.
const PATHS: &[&str] = &[
    "/api/v1/services",
    "/apis/discovery.k8s.io/v1/endpointslices",
];

/// The recording fake, shared between the loop (which owns a handle) and the test.
#[derive(Debug, Clone, Default)]
struct SharedMaps(Arc<Mutex<RecordingMaps>>);

impl SharedMaps {
    fn lock(&self) -> std::sync::MutexGuard<'_, RecordingMaps> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// frontend -> sorted (backend, state), read back from the fake maps.
    fn table(&self) -> BTreeMap<String, Vec<String>> {
        self.lock()
            .list()
            .unwrap()
            .into_iter()
            .map(|e| {
                let mut b: Vec<String> = e
                    .spec
                    .backends
                    .iter()
                    .map(|b| match b.state {
                        BackendState::Active => b.addr().to_string(),
                        BackendState::Terminating => format!("{} terminating", b.addr()),
                    })
                    .collect();
                b.sort();
                (e.key.to_string(), b)
            })
            .collect()
    }

    fn ops(&self) -> usize {
        self.lock().ops.len()
    }
}

impl DatapathMaps for SharedMaps {
    fn upsert_service(
        &mut self,
        key: ServiceKey,
        spec: &ServiceSpec,
    ) -> Result<UpsertOutcome, BpfError> {
        self.lock().upsert_service(key, spec)
    }
    fn delete_service(&mut self, key: ServiceKey) -> Result<bool, BpfError> {
        self.lock().delete_service(key)
    }
    fn list(&self) -> Result<Vec<ServiceEntry>, BpfError> {
        self.lock().list()
    }
}

fn key(vip: [u8; 4], port: u16, protocol: Protocol) -> ServiceKey {
    ServiceKey {
        vip: Ipv4Addr::from(vip).into(),
        port,
        protocol,
    }
}

/// What `table()` shows for these frontends.
fn expect(rows: &[(ServiceKey, &[&str])]) -> BTreeMap<String, Vec<String>> {
    rows.iter()
        .map(|(k, b)| {
            let mut b: Vec<String> = b.iter().map(|s| s.to_string()).collect();
            b.sort();
            (k.to_string(), b)
        })
        .collect()
}

async fn wait_for(maps: &SharedMaps, want: &BTreeMap<String, Vec<String>>, step: &str) {
    let start = Instant::now();
    loop {
        let have = maps.table();
        if &have == want {
            return;
        }
        if start.elapsed() > WAIT {
            panic!("{step}: the maps never reached\n{want:#?}\nthey hold\n{have:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn service(ns: &str, name: &str, ip: &str, ports: Value, extra: Value) -> Value {
    let mut spec = json!({"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip]});
    spec["ports"] = ports;
    if let (Some(s), Value::Object(e)) = (spec.as_object_mut(), extra) {
        s.extend(e);
    }
    let mut svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": "1"},
        "status": {"loadBalancer": {}}
    });
    svc["spec"] = spec;
    svc
}

fn slice(ns: &str, name: &str, svc: &str, ports: Value, endpoints: Value) -> Value {
    let mut s = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4"
    });
    s["ports"] = ports;
    s["endpoints"] = endpoints;
    s
}

fn ready(ip: &str, node: &str) -> Value {
    json!({"addresses": [ip], "nodeName": node,
           "conditions": {"ready": true, "serving": true, "terminating": false}})
}

fn terminating(ip: &str, node: &str) -> Value {
    json!({"addresses": [ip], "nodeName": node,
           "conditions": {"ready": false, "serving": true, "terminating": true}})
}

/// A list body as the API server sends it: items without kind/apiVersion.
fn list(kind: &str, api_version: &str, rv: &str, items: &[Value]) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|i| {
            let mut i = i.clone();
            if let Some(o) = i.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            i
        })
        .collect();
    json!({"kind": kind, "apiVersion": api_version,
           "metadata": {"resourceVersion": rv}, "items": items})
}

fn services_list(rv: &str, items: &[Value]) -> Value {
    list("ServiceList", "v1", rv, items)
}

fn slices_list(rv: &str, items: &[Value]) -> Value {
    list("EndpointSliceList", "discovery.k8s.io/v1", rv, items)
}

fn event(ty: &str, mut object: Value, rv: &str) -> Value {
    object["metadata"]["resourceVersion"] = json!(rv);
    json!({"type": ty, "object": object})
}

fn bookmark(kind: &str, api_version: &str, rv: &str) -> Value {
    json!({"type": "BOOKMARK",
           "object": {"kind": kind, "apiVersion": api_version,
                      "metadata": {"resourceVersion": rv, "creationTimestamp": null}}})
}

/// The ERROR event the API server sends when a watch's resourceVersion is too old.
fn gone() -> Value {
    json!({"type": "ERROR",
           "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Failure", "message": "too old resource version: 30 (45)",
                      "reason": "Expired", "code": 410}})
}

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// A running source: the loop on its own task, with a way to stop it.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), KubeSourceError>>,
    stats: Arc<KubeStats>,
}

impl Running {
    async fn start(kubeconfig: &Path, maps: &SharedMaps, opts: KubeOptions) -> Running {
        Running::start_with(kubeconfig, maps, None, opts).await
    }

    /// As [`Running::start`], with a NodePort path.
    async fn start_with(
        kubeconfig: &Path,
        maps: &SharedMaps,
        mut nodeport: Option<NodePortPath>,
        opts: KubeOptions,
    ) -> Running {
        let client = ksrc::client(Some(kubeconfig)).await.expect("client");
        let stats = Arc::new(KubeStats::default());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let mut m = maps.clone();
        let st = stats.clone();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.await;
            };
            ksrc::run(client, &mut m, nodeport.as_mut(), &opts, &st, stop, |_| {}).await
        });
        Running {
            stop: Some(stop_tx),
            task,
            stats,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the loop stops")
            .expect("no panic")
            .expect("no error");
    }
}

fn web_ports() -> Value {
    json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}])
}

fn web_slice_ports() -> Value {
    json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
}

fn dns_ports() -> Value {
    json!([{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}])
}

fn dns_slice_ports() -> Value {
    json!([{"name": "dns", "port": 5353, "protocol": "UDP"}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_then_watches_and_relists_after_410_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = ApiServer::start(PATHS).await;
    let kubeconfig = api.kubeconfig(dir.path());

    let web = key([10, 96, 0, 10], 80, Protocol::Tcp);
    let dns = key([10, 96, 0, 53], 53, Protocol::Udp);
    let api_fe = key([10, 96, 0, 20], 80, Protocol::Tcp);
    let stale = key([10, 96, 0, 99], 80, Protocol::Tcp);

    // Maps adopted from a previous run: a service the cluster no longer has, and web with
    // an old backend. Both must survive until both kinds have been listed.
    let maps = SharedMaps::default();
    {
        let mut m = maps.clone();
        let one = |ip: [u8; 4]| ServiceSpec {
            backends: vec![Backend::active(SocketAddrV4::new(ip.into(), 8080))],
            affinity_timeout: None,
        };
        m.upsert_service(stale, &one([10, 0, 9, 9])).unwrap();
        m.upsert_service(web, &one([10, 0, 9, 1])).unwrap();
    }
    let adopted = maps.table();
    let ops_before = maps.ops();

    let run = Running::start(&kubeconfig, &maps, KubeOptions::default()).await;

    // 1. Services are listed first; EndpointSlices' list is held back.
    let (q, reply) = api.list(SERVICES).await;
    assert_eq!(
        param(&q, "resourceVersion"),
        Some("0"),
        "list from the cache: {q}"
    );
    reply
        .send(services_list(
            "10",
            &[
                service("shop", "web", "10.96.0.10", web_ports(), json!({})),
                service("kube-system", "dns", "10.96.0.53", dns_ports(), json!({})),
            ],
        ))
        .unwrap();
    let (q, svc_events) = api.watch(SERVICES).await;
    assert_eq!(param(&q, "resourceVersion"), Some("10"), "{q}");
    assert_eq!(param(&q, "allowWatchBookmarks"), Some("true"), "{q}");
    let (_, slices_reply) = api.list(SLICES).await;
    // An event on the services watch while the slices are still unknown: still nothing.
    svc_events
        .send(event(
            "MODIFIED",
            service("shop", "web", "10.96.0.10", web_ports(), json!({})),
            "11",
        ))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        maps.table(),
        adopted,
        "nothing may change before both lists"
    );
    assert_eq!(maps.ops(), ops_before, "no map write before both lists");
    assert_eq!(run.stats.reconciles(), 0);
    assert!(!run.stats.synced());

    // 2. The slices list completes: one reconcile to exactly what the cluster has.
    slices_reply
        .send(slices_list(
            "20",
            &[
                slice(
                    "shop",
                    "web-abc",
                    "web",
                    web_slice_ports(),
                    json!([ready("10.0.0.1", "node-a"), ready("10.0.0.2", "node-b")]),
                ),
                slice(
                    "kube-system",
                    "dns-xyz",
                    "dns",
                    dns_slice_ports(),
                    json!([ready("10.0.0.5", "node-a")]),
                ),
            ],
        ))
        .unwrap();
    wait_for(
        &maps,
        &expect(&[
            (web, &["10.0.0.1:8080", "10.0.0.2:8080"]),
            (dns, &["10.0.0.5:5353"]),
        ]),
        "after the first lists",
    )
    .await;
    assert!(run.stats.synced());
    let (q, slice_events) = api.watch(SLICES).await;
    assert_eq!(param(&q, "resourceVersion"), Some("20"), "{q}");

    // 3. Watch events: a new service and its slice; a backend of web terminating and a
    //    new one ready.
    svc_events
        .send(event(
            "ADDED",
            service("shop", "api", "10.96.0.20", web_ports(), json!({})),
            "21",
        ))
        .unwrap();
    slice_events
        .send(event(
            "ADDED",
            slice(
                "shop",
                "api-1",
                "api",
                web_slice_ports(),
                json!([ready("10.0.1.1", "node-a")]),
            ),
            "22",
        ))
        .unwrap();
    slice_events
        .send(event(
            "MODIFIED",
            slice(
                "shop",
                "web-abc",
                "web",
                web_slice_ports(),
                json!([
                    ready("10.0.0.1", "node-a"),
                    terminating("10.0.0.2", "node-b"),
                    ready("10.0.0.3", "node-b")
                ]),
            ),
            "23",
        ))
        .unwrap();
    wait_for(
        &maps,
        &expect(&[
            (
                web,
                &[
                    "10.0.0.1:8080",
                    "10.0.0.2:8080 terminating",
                    "10.0.0.3:8080",
                ],
            ),
            (dns, &["10.0.0.5:5353"]),
            (api_fe, &["10.0.1.1:8080"]),
        ]),
        "after ADDED and MODIFIED",
    )
    .await;

    // 4. A bookmark, then the watch ends the way the API server ends one at its timeout:
    //    the watcher watches again from the bookmark's version, without a list.
    svc_events.send(bookmark("Service", "v1", "30")).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(svc_events);
    let (q, svc_events) = api.watch(SERVICES).await;
    assert_eq!(
        param(&q, "resourceVersion"),
        Some("30"),
        "from the bookmark: {q}"
    );
    assert_eq!(run.stats.lists(0), 1, "no re-list after a bookmark");

    // 5. DELETED.
    svc_events
        .send(event(
            "DELETED",
            service("kube-system", "dns", "10.96.0.53", dns_ports(), json!({})),
            "31",
        ))
        .unwrap();
    wait_for(
        &maps,
        &expect(&[
            (
                web,
                &[
                    "10.0.0.1:8080",
                    "10.0.0.2:8080 terminating",
                    "10.0.0.3:8080",
                ],
            ),
            (api_fe, &["10.0.1.1:8080"]),
        ]),
        "after DELETED",
    )
    .await;

    // 6. The watch expires (ERROR 410 Gone). Meanwhile `api` was deleted and its DELETED
    //    event is lost to us: only the re-list can tell. Until that list completes the
    //    maps keep what they have.
    svc_events.send(gone()).unwrap();
    let (q, reply) = api.list(SERVICES).await;
    assert_eq!(param(&q, "resourceVersion"), Some("0"), "{q}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        maps.table().contains_key(&api_fe.to_string()),
        "nothing removed while re-listing"
    );
    reply
        .send(services_list(
            "45",
            &[service("shop", "web", "10.96.0.10", web_ports(), json!({}))],
        ))
        .unwrap();
    wait_for(
        &maps,
        &expect(&[(
            web,
            &[
                "10.0.0.1:8080",
                "10.0.0.2:8080 terminating",
                "10.0.0.3:8080",
            ],
        )]),
        "after the re-list dropped api",
    )
    .await;
    let (q, _svc_events) = api.watch(SERVICES).await;
    assert_eq!(param(&q, "resourceVersion"), Some("45"), "{q}");
    assert_eq!(run.stats.lists(0), 2, "one re-list");
    assert_eq!(run.stats.lists(1), 1);
    assert!(run.stats.watch_errors(0) >= 1, "the 410 is counted");
    let metrics = run.stats.render();
    assert!(
        metrics.contains("eni_services_kube_lists_total{kind=\"Service\"} 2"),
        "{metrics}"
    );
    drop(slice_events);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_traffic_policy_local_keeps_this_nodes_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = ApiServer::start(PATHS).await;
    let kubeconfig = api.kubeconfig(dir.path());
    let maps = SharedMaps::default();
    let opts = KubeOptions {
        desired: DesiredOptions {
            node_name: Some("node-a".into()),
        },
        ..KubeOptions::default()
    };
    let run = Running::start(&kubeconfig, &maps, opts).await;
    let local = json!({"internalTrafficPolicy": "Local", "externalIPs": ["192.0.2.7"]});
    let (_, reply) = api.list(SERVICES).await;
    reply
        .send(services_list(
            "5",
            &[
                service("shop", "web", "10.96.0.10", web_ports(), local),
                service("shop", "all", "10.96.0.11", web_ports(), json!({})),
            ],
        ))
        .unwrap();
    let (_, reply) = api.list(SLICES).await;
    let endpoints = json!([
        ready("10.0.0.1", "node-a"),
        ready("10.0.0.2", "node-b"),
        terminating("10.0.0.3", "node-a")
    ]);
    reply
        .send(slices_list(
            "6",
            &[
                slice("shop", "web-1", "web", web_slice_ports(), endpoints.clone()),
                slice("shop", "all-1", "all", web_slice_ports(), endpoints),
            ],
        ))
        .unwrap();
    let all: &[&str] = &[
        "10.0.0.1:8080",
        "10.0.0.2:8080",
        "10.0.0.3:8080 terminating",
    ];
    wait_for(
        &maps,
        &expect(&[
            // The ClusterIP of a Local service: this node's endpoints only.
            (
                key([10, 96, 0, 10], 80, Protocol::Tcp),
                &["10.0.0.1:8080", "10.0.0.3:8080 terminating"],
            ),
            // Its external IP follows externalTrafficPolicy, not the internal one.
            (key([192, 0, 2, 7], 80, Protocol::Tcp), all),
            (key([10, 96, 0, 11], 80, Protocol::Tcp), all),
        ]),
        "Local",
    )
    .await;
    run.stop().await;
}

/// The per-packet frontends table, shared between the loop's NodePort path and the test.
#[derive(Debug, Clone, Default)]
struct SharedExternal(Arc<Mutex<BTreeMap<ServiceKey, eni_bpf::TrafficPolicy>>>);

impl eni_bpf::ExternalFrontends for SharedExternal {
    fn external_frontends(&self) -> Result<Vec<(ServiceKey, eni_bpf::TrafficPolicy)>, BpfError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, p)| (*k, *p))
            .collect())
    }
    fn set_external(
        &mut self,
        key: ServiceKey,
        policy: eni_bpf::TrafficPolicy,
    ) -> Result<bool, BpfError> {
        Ok(self.0.lock().unwrap().insert(key, policy) != Some(policy))
    }
    fn remove_external(&mut self, key: ServiceKey) -> Result<bool, BpfError> {
        Ok(self.0.lock().unwrap().remove(&key).is_some())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodeports_and_load_balancer_ips_follow_the_watch() {
    use eni_bpf::TrafficPolicy::{Cluster, Local};
    let dir = tempfile::tempdir().unwrap();
    let mut api = ApiServer::start(PATHS).await;
    let kubeconfig = api.kubeconfig(dir.path());
    let maps = SharedMaps::default();
    let ext = SharedExternal::default();
    let node = Ipv4Addr::new(192, 168, 1, 10);
    let host_ports = HostPorts::new();
    let path =
        NodePortPath::new(Box::new(ext.clone()), vec![node]).with_host_ports(host_ports.clone());
    let run = Running::start_with(&kubeconfig, &maps, Some(path), KubeOptions::default()).await;
    let ports = json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http",
                        "nodePort": 30080}]);
    let mut lb = service(
        "shop",
        "web",
        "10.96.0.10",
        ports,
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local"}),
    );
    lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}});
    let (_, reply) = api.list(SERVICES).await;
    reply.send(services_list("5", &[lb.clone()])).unwrap();
    let (_, reply) = api.list(SLICES).await;
    reply
        .send(slices_list(
            "6",
            &[slice(
                "shop",
                "web-1",
                "web",
                web_slice_ports(),
                json!([ready("10.0.0.1", "node-a")]),
            )],
        ))
        .unwrap();
    let (_, svc_events) = api.watch(SERVICES).await;
    let b: &[&str] = &["10.0.0.1:8080"];
    wait_for(
        &maps,
        &expect(&[
            (key([10, 96, 0, 10], 80, Protocol::Tcp), b),
            (key([192, 168, 1, 10], 30080, Protocol::Tcp), b),
            (key([203, 0, 113, 9], 80, Protocol::Tcp), b),
        ]),
        "NodePort and LoadBalancer frontends in the socket-LB table",
    )
    .await;
    let external = |want: &[(ServiceKey, eni_bpf::TrafficPolicy)]| {
        let want: BTreeMap<ServiceKey, eni_bpf::TrafficPolicy> = want.iter().copied().collect();
        let ext = ext.clone();
        async move {
            let start = Instant::now();
            loop {
                let have = ext.0.lock().unwrap().clone();
                if have == want {
                    return;
                }
                assert!(
                    start.elapsed() < WAIT,
                    "the per-packet table never reached {want:?}; it holds {have:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    external(&[
        (key([192, 168, 1, 10], 30080, Protocol::Tcp), Local),
        (key([203, 0, 113, 9], 80, Protocol::Tcp), Local),
    ])
    .await;
    // The load balancer's address goes from the status, the policy becomes Cluster.
    lb["status"] = json!({"loadBalancer": {}});
    lb["spec"]["externalTrafficPolicy"] = json!("Cluster");
    svc_events.send(event("MODIFIED", lb, "7")).unwrap();
    external(&[(key([192, 168, 1, 10], 30080, Protocol::Tcp), Cluster)]).await;
    wait_for(
        &maps,
        &expect(&[
            (key([10, 96, 0, 10], 80, Protocol::Tcp), b),
            (key([192, 168, 1, 10], 30080, Protocol::Tcp), b),
        ]),
        "the LoadBalancer IP removed",
    )
    .await;
    // A pod's host port: no API event; the handle wakes the loop, which serves it per
    // packet (Local) and through the socket LB, and reports the generation written.
    let g = host_ports.set(vec![HostPortEntry {
        port: HostPort {
            host_ip: None,
            host_port: 8088,
            protocol: eni_rpc::PortProtocol::Tcp,
            container_port: 80,
        },
        pod_ip: Ipv4Addr::new(10, 0, 0, 9),
        holder: "c1/eth0 (pod shop/hp)".into(),
    }]);
    external(&[
        (key([192, 168, 1, 10], 30080, Protocol::Tcp), Cluster),
        (key([192, 168, 1, 10], 8088, Protocol::Tcp), Local),
    ])
    .await;
    let pod: &[&str] = &["10.0.0.9:80"];
    wait_for(
        &maps,
        &expect(&[
            (key([10, 96, 0, 10], 80, Protocol::Tcp), b),
            (key([192, 168, 1, 10], 30080, Protocol::Tcp), b),
            (key([192, 168, 1, 10], 8088, Protocol::Tcp), pod),
        ]),
        "the host port in the socket-LB table",
    )
    .await;
    assert!(
        host_ports.wait_applied(g, WAIT).await,
        "generation {g} never reported written"
    );
    host_ports.set(Vec::new());
    external(&[(key([192, 168, 1, 10], 30080, Protocol::Tcp), Cluster)]).await;
    drop(svc_events);
    run.stop().await;
}

#[tokio::test]
async fn a_bad_kubeconfig_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = ksrc::client(Some(&missing))
        .await
        .err()
        .expect("the client must be refused");
    assert!(matches!(err, KubeSourceError::Kubeconfig { .. }), "{err:?}");
    let text = format!("{err}");
    assert!(text.contains("services.kubeconfig"), "{text}");
    assert!(text.contains(&missing.display().to_string()), "{text}");

    let garbled = dir.path().join("garbled");
    std::fs::write(&garbled, "clusters: [ {").unwrap();
    let err = ksrc::client(Some(&garbled))
        .await
        .err()
        .expect("the client must be refused");
    assert!(matches!(err, KubeSourceError::Kubeconfig { .. }), "{err:?}");

    // A kubeconfig whose current context names no cluster.
    let empty = dir.path().join("empty");
    std::fs::write(
        &empty,
        "apiVersion: v1\nkind: Config\ncurrent-context: missing\n",
    )
    .unwrap();
    let err = ksrc::client(Some(&empty))
        .await
        .err()
        .expect("the client must be refused");
    assert!(matches!(err, KubeSourceError::Kubeconfig { .. }), "{err:?}");

    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        let err = ksrc::client(None)
            .await
            .err()
            .expect("the client must be refused");
        assert!(matches!(err, KubeSourceError::InCluster { .. }), "{err:?}");
        assert!(
            format!("{err}").contains("set services.kubeconfig"),
            "{err}"
        );
    }
}
