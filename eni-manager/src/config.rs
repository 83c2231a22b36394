//! The manager's configuration: a YAML file, then `ENI_MANAGER__SECTION__FIELD` environment
//! variables, then `--set section.field=value` flags, each overriding the one before; then
//! validation that reports every problem at once, each naming its field and the fix.
//!
//! This module only reads and checks; it builds nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

/// Which cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Alibaba Cloud ECS.
    Aliyun,
    /// AWS EC2.
    Aws,
}

/// Where Alibaba Cloud credentials come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CredentialSource {
    /// Environment, then the credentials file, then the instance's RAM role.
    #[default]
    Chain,
    /// `ALIBABA_CLOUD_ACCESS_KEY_ID` / `_SECRET` (/ `_SECURITY_TOKEN`).
    Env,
    /// The credentials file (`credentials_file`, default `~/.alibabacloud/credentials`).
    File,
    /// The instance's RAM role, from the metadata service.
    RamRole,
}

/// How to choose among a zone's vSwitches/subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubnetSelection {
    /// The one with the most free addresses.
    #[default]
    MostFree,
    /// In the order listed.
    Ordered,
}

impl CloudConfig {
    /// The provider's name, for status and labels.
    pub fn provider_name(&self) -> &'static str {
        match self.provider {
            ProviderKind::Aliyun => "aliyun",
            ProviderKind::Aws => "aws",
        }
    }
}

/// Cloud settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// `aliyun` or `aws`.
    pub provider: ProviderKind,
    /// Region; learned from the metadata service when empty.
    #[serde(default)]
    pub region: Option<String>,
    /// API endpoint override (for example the mock cloud, or a VPC endpoint).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Metadata service override (default: the cloud's link-local address).
    #[serde(default)]
    pub metadata_endpoint: Option<String>,
    /// The node's instance id; learned from the metadata service when empty.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Alibaba Cloud: whether the instance type takes /28 prefixes (its API does not say).
    /// AWS learns it from `DescribeInstanceTypes`.
    #[serde(default)]
    pub prefix_support: bool,
    /// Alibaba Cloud credentials source (AWS always uses its default chain).
    #[serde(default)]
    pub credentials: CredentialSource,
    /// Alibaba Cloud credentials file (for `file` and `chain`).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// API calls per second allowed for each action (token bucket refill rate).
    #[serde(default = "default_rate")]
    pub rate_per_second: f64,
    /// Burst of each action's bucket.
    #[serde(default = "default_burst")]
    pub rate_burst: u32,
    /// How long one API request may take before it counts as failed (and is retried) (ms).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// How long one cloud call keeps retrying transient failures before it fails (ms). Until
    /// then a cloud that does not answer is not reported as degraded.
    #[serde(default = "default_retry_budget")]
    pub retry_budget_ms: u64,
}

fn default_rate() -> f64 {
    8.0
}
fn default_burst() -> u32 {
    10
}
fn default_request_timeout() -> u64 {
    10_000
}
fn default_retry_budget() -> u64 {
    120_000
}

/// How attached ENIs are configured on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NodeNetworkKind {
    /// Find the ENI's link by MAC and configure it (MTU, up, route table, rule).
    #[default]
    Kernel,
    /// Touch nothing on the node. Only for tests against cloud emulators without a
    /// hypervisor (moto), where attached ENIs never appear as links.
    None,
}

/// Identity of this node and cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster id: put on every ENI as a tag, so ENIs of other clusters are never touched.
    pub id: String,
    /// Extra tags put on every ENI created.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// Where ENIs are created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// vSwitch (Alibaba Cloud) or subnet (AWS) ids per zone; the node uses its own zone's.
    pub subnets: BTreeMap<String, Vec<String>>,
    /// How to choose among them.
    #[serde(default)]
    pub subnet_selection: SubnetSelection,
    /// Security groups of created ENIs; the node's own when empty.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// MTU of ENI links.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Route table of an ENI = this + its device index.
    #[serde(default = "default_table_base")]
    pub route_table_base: u32,
    /// Priority of the policy rules that send an ENI's addresses to its table.
    #[serde(default = "default_rule_priority")]
    pub rule_priority: u32,
    /// How long an exhausted vSwitch/subnet is skipped (seconds).
    #[serde(default = "default_block")]
    pub exhausted_block_s: u64,
    /// `kernel` (default) configures attached ENIs on the node; `none` skips that, for tests
    /// against cloud emulators without a hypervisor.
    #[serde(default)]
    pub node_network: NodeNetworkKind,
}

fn default_mtu() -> u32 {
    1500
}
fn default_table_base() -> u32 {
    1000
}
fn default_rule_priority() -> u32 {
    2000
}
fn default_block() -> u64 {
    600
}

/// The warm pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Low watermark: refill when fewer idle addresses than this.
    #[serde(default = "default_min_idle")]
    pub min_idle: u32,
    /// High watermark: release idle addresses above this (after the cool-down).
    #[serde(default = "default_max_idle")]
    pub max_idle: u32,
    /// Keep at least this many addresses in total, idle or not (like `MINIMUM_IP_TARGET`).
    #[serde(default)]
    pub min_total: u32,
    /// Seconds an address stays idle before it may be released.
    #[serde(default = "default_cooldown")]
    pub release_cooldown_s: u64,
    /// Milliseconds to gather concurrent demand into one round of cloud calls.
    #[serde(default = "default_batch")]
    pub batch_window_ms: u64,
    /// Assign /28 prefixes instead of single addresses (where the instance type supports it).
    #[serde(default)]
    pub prefix_mode: bool,
    /// Use at most this many ENIs (primary included); the instance type's limit when absent.
    #[serde(default)]
    pub max_enis: Option<u32>,
    /// Exclusive ENIs to keep ready.
    #[serde(default)]
    pub exclusive_warm: u32,
    /// How long an allocation may wait for the pool before it fails (ms).
    #[serde(default = "default_alloc_timeout")]
    pub allocate_timeout_ms: u64,
    /// Create a shared ENI with every address it can hold when pods are waiting (the AWS
    /// VPC CNI's default): a burst costs one create per ENI and no top-ups. Off: only what
    /// is asked for, then assigns as more pods come (fewer idle addresses on a scarce
    /// vSwitch). Idle addresses above `max_idle` are released after the cool-down either way.
    #[serde(default = "default_true")]
    pub fill_new_enis: bool,
}

fn default_min_idle() -> u32 {
    2
}
fn default_max_idle() -> u32 {
    10
}
fn default_cooldown() -> u64 {
    300
}
fn default_batch() -> u64 {
    20
}
fn default_alloc_timeout() -> u64 {
    30_000
}
fn default_true() -> bool {
    true
}

/// Garbage collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// Seconds between passes.
    #[serde(default = "default_gc_interval")]
    pub interval_s: u64,
    /// An allocation whose network namespace is gone is released after this many seconds.
    #[serde(default = "default_gc_grace")]
    pub grace_s: u64,
    /// A detached ENI of this cluster (created by any node) is deleted once it has been seen
    /// detached for this long: the node that made it is gone or crashed between create and
    /// attach.
    #[serde(default = "default_orphan_grace")]
    pub orphan_eni_grace_s: u64,
}

fn default_gc_interval() -> u64 {
    60
}
fn default_gc_grace() -> u64 {
    120
}
fn default_orphan_grace() -> u64 {
    600
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval_s: default_gc_interval(),
            grace_s: default_gc_grace(),
            orphan_eni_grace_s: default_orphan_grace(),
        }
    }
}

/// Where the manager listens and keeps state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// The CNI's unix socket (mode 0600).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// The durable state directory.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Prometheus metrics and health endpoints (`/metrics`, `/healthz`, `/readyz`).
    #[serde(default = "default_metrics")]
    pub metrics_address: SocketAddr,
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/eni-manager/eni-manager.sock")
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/eni-manager")
}
fn default_metrics() -> SocketAddr {
    "127.0.0.1:9410".parse().expect("valid literal")
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            socket: default_socket(),
            state_dir: default_state_dir(),
            metrics_address: default_metrics(),
        }
    }
}

/// Where Service definitions come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ServiceSourceKind {
    /// A directory of Kubernetes-format YAML files (`services.dir`).
    #[default]
    Files,
    /// The Kubernetes API: Services and EndpointSlices watched (list + watch), from the
    /// in-cluster service account or `services.kubeconfig`.
    Kubernetes,
}

/// eBPF Service load balancing (socket level). See `docs/services.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesConfig {
    /// Off by default.
    #[serde(default)]
    pub enabled: bool,
    /// `files` (default) or `kubernetes`.
    #[serde(default)]
    pub source: ServiceSourceKind,
    /// Source `kubernetes`: the kubeconfig file to use (its current context), an absolute
    /// path. Unset: the in-cluster configuration (`KUBERNETES_SERVICE_HOST`/`_PORT` and the
    /// pod's service account).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's Kubernetes name (the DaemonSet sets it from `spec.nodeName`, for example
    /// `ENI_MANAGER__SERVICES__NODE_NAME`). With it, `internalTrafficPolicy: Local` services
    /// use only this node's endpoints; without it they are treated as `Cluster`.
    /// A value that reads as a number (a node named `12345`) is taken as the name.
    #[serde(default, deserialize_with = "name_like")]
    pub node_name: Option<String>,
    /// The directory of Service and EndpointSlice YAML files (source `files`).
    #[serde(default = "default_services_dir")]
    pub dir: PathBuf,
    /// Where the maps and links are pinned; must be on a bpf filesystem.
    #[serde(default = "default_bpf_pin_dir")]
    pub bpf_pin_dir: PathBuf,
    /// The cgroup v2 directory the socket hooks attach to (the node's root cgroup).
    #[serde(default = "default_services_cgroup")]
    pub cgroup: PathBuf,
    /// Per-packet load balancing on the node's links: NodePorts, externalIPs and
    /// LoadBalancer ingress IPs reached from outside the node.
    #[serde(default)]
    pub nodeport: NodePortConfig,
}

/// `services.nodeport`: the tc datapath on the node's links (see `docs/services.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePortConfig {
    /// Off by default; needs `services.enabled`.
    #[serde(default)]
    pub enabled: bool,
    /// The links (interface names in the manager's network namespace, e.g. `eth0` and the
    /// secondary ENIs) whose traffic from outside is load balanced. Replies of flows to
    /// local backends must leave through one of them too.
    #[serde(default)]
    pub links: Vec<String>,
    /// The node addresses NodePorts answer on (IPv4). Empty (default): the IPv4 addresses
    /// the `links` hold when the manager starts.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// An optional name that may arrive typed: environment overrides are read as YAML scalars,
/// so `ENI_MANAGER__SERVICES__NODE_NAME=12345` is a number and `=true` a boolean. Both are
/// valid node names and are kept as written.
fn name_like<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(D::Error::custom(format!(
            "expected a node name, got {other:?}"
        ))),
    }
}

fn default_services_dir() -> PathBuf {
    PathBuf::from("/etc/eni-manager/services")
}
fn default_bpf_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/eni-net")
}
fn default_services_cgroup() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup/unified")
}

impl Default for ServicesConfig {
    fn default() -> Self {
        ServicesConfig {
            enabled: false,
            source: ServiceSourceKind::Files,
            kubeconfig: None,
            node_name: None,
            dir: default_services_dir(),
            bpf_pin_dir: default_bpf_pin_dir(),
            cgroup: default_services_cgroup(),
            nodeport: NodePortConfig::default(),
        }
    }
}

/// Where NetworkPolicies, Pods and Namespaces come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PolicySourceKind {
    /// A directory of Kubernetes-format YAML files (`policy.dir`).
    #[default]
    Files,
    /// NetworkPolicies, Pods and Namespaces watched on the API server (the in-cluster
    /// service account, or `policy.kubeconfig`).
    Kubernetes,
}

/// eBPF NetworkPolicy on pod links. See `docs/network-policy.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Off by default. When on, every pod this manager allocates an address to gets the
    /// policy programs on its link (attached by `eni-cni`) and an entry in the maps before
    /// ADD returns.
    #[serde(default)]
    pub enabled: bool,
    /// `files` (a directory of YAML files) or `kubernetes` (watches on the API server).
    #[serde(default)]
    pub source: PolicySourceKind,
    /// The directory of NetworkPolicy, Pod and Namespace YAML files (source `files`).
    #[serde(default = "default_policy_dir")]
    pub dir: PathBuf,
    /// Source `kubernetes`: the kubeconfig file to use (its current context), an absolute
    /// path. Unset: the in-cluster service account. Same meaning as `services.kubeconfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// Where the policy maps and link pins live; must be on a bpf filesystem. Unset: the
    /// same directory as `services.bpf_pin_dir` (see [`Config::policy_pin_dir`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_pin_dir: Option<PathBuf>,
}

fn default_policy_dir() -> PathBuf {
    PathBuf::from("/etc/eni-manager/policy")
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            enabled: false,
            source: PolicySourceKind::Files,
            dir: default_policy_dir(),
            kubeconfig: None,
            bpf_pin_dir: None,
        }
    }
}

/// `masquerade`: eBPF source NAT of pod traffic leaving the node, with ip-masq-agent
/// semantics. See `docs/network-policy.md` (Masquerade).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasqueradeConfig {
    /// Off by default.
    #[serde(default)]
    pub enabled: bool,
    /// The uplinks (interface names in the manager's network namespace, e.g. `eth0` and the
    /// secondary ENIs' links, or shell-style patterns such as `eth*`, rescanned every
    /// `resync_interval_s`): pod traffic leaving through one of them is masqueraded to that
    /// link's primary (first) IPv4 address.
    #[serde(default)]
    pub links: Vec<String>,
    /// ip-masq-agent's `nonMasqueradeCIDRs`: destinations never masqueraded. Default: its
    /// documented list (RFC 1918, 100.64.0.0/10 and the reserved/documentation ranges).
    #[serde(default = "default_non_masquerade_cidrs")]
    pub non_masquerade_cidrs: Vec<String>,
    /// ip-masq-agent's `masqLinkLocal`: masquerade traffic to 169.254.0.0/16 too. Off:
    /// 169.254.0.0/16 is added to the non-masquerade list.
    #[serde(default)]
    pub masq_link_local: bool,
    /// The VPC's CIDR blocks, always added to the non-masquerade list so traffic inside the
    /// VPC keeps the pod's address. Empty: learned at start from the instance metadata
    /// service (`vpc-cidr-block`; on AWS `vpc-ipv4-cidr-blocks`), cached in
    /// `daemon.state_dir` for a start while it does not answer.
    #[serde(default)]
    pub vpc_cidrs: Vec<String>,
    /// An ip-masq-agent configuration file (`nonMasqueradeCIDRs`, `masqLinkLocal`, e.g. a
    /// mounted ConfigMap), re-read every `resync_interval_s`; its fields replace the two
    /// above. Absent file: the two above apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<PathBuf>,
    /// Seconds between re-reads of `config_file` (ip-masq-agent's `resyncInterval`).
    #[serde(default = "default_masq_resync")]
    pub resync_interval_s: u64,
    /// Where the maps are pinned; must be on a bpf filesystem. Unset: the same directory as
    /// `services.bpf_pin_dir` (see [`Config::masquerade_pin_dir`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_pin_dir: Option<PathBuf>,
}

fn default_non_masquerade_cidrs() -> Vec<String> {
    eni_bpf::masq::IP_MASQ_AGENT_DEFAULT_CIDRS
        .iter()
        .map(|c| (*c).to_owned())
        .collect()
}
fn default_masq_resync() -> u64 {
    60
}

impl Default for MasqueradeConfig {
    fn default() -> Self {
        MasqueradeConfig {
            enabled: false,
            links: Vec::new(),
            non_masquerade_cidrs: default_non_masquerade_cidrs(),
            masq_link_local: false,
            vpc_cidrs: Vec::new(),
            config_file: None,
            resync_interval_s: default_masq_resync(),
            bpf_pin_dir: None,
        }
    }
}

impl MasqueradeConfig {
    /// The configuration problems of this section (none when it is off).
    fn problems(&self, pin_dir: &Path) -> Vec<String> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        if self.links.is_empty() {
            p.push(
                "masquerade.links: empty; list the node's uplinks pod traffic leaves through \
                 (for example [eth0])"
                    .into(),
            );
        }
        for (i, link) in self.links.iter().enumerate() {
            if eni_kernel::link::validate_link_name(link).is_err() {
                p.push(format!(
                    "masquerade.links[{i}]: {link:?} is not an interface name (1-15 bytes, no \
                     '/', ':' or spaces); use the name `ip link` shows"
                ));
            } else if self.links[..i].contains(link) {
                p.push(format!(
                    "masquerade.links[{i}]: {link:?} is listed twice; remove one"
                ));
            }
        }
        for (field, list) in [
            (
                "masquerade.non_masquerade_cidrs",
                &self.non_masquerade_cidrs,
            ),
            ("masquerade.vpc_cidrs", &self.vpc_cidrs),
        ] {
            for (i, c) in list.iter().enumerate() {
                if c.parse::<ipnet::Ipv4Net>().is_err() {
                    p.push(format!(
                        "{field}[{i}]: {c:?} is not an IPv4 CIDR; write it as a.b.c.d/n \
                         (for example 10.0.0.0/8)"
                    ));
                }
            }
        }
        let total = self.non_masquerade_cidrs.len() + self.vpc_cidrs.len() + 1;
        if total > eni_bpf::masq::MAX_NONMASQ_CIDRS {
            p.push(format!(
                "masquerade.non_masquerade_cidrs: {} entries with the VPC and link-local ones, \
                 at most {} fit; merge adjacent ranges",
                total,
                eni_bpf::masq::MAX_NONMASQ_CIDRS
            ));
        }
        if let Some(f) = &self.config_file {
            if !f.is_absolute() {
                p.push(format!(
                    "masquerade.config_file: {} must be an absolute path",
                    f.display()
                ));
            }
        }
        if self.resync_interval_s == 0 {
            p.push("masquerade.resync_interval_s: 0; give at least 1 (seconds)".into());
        }
        if !pin_dir.is_absolute() {
            p.push(format!(
                "masquerade.bpf_pin_dir: {} must be an absolute path",
                pin_dir.display()
            ));
        }
        p
    }

    /// `non_masquerade_cidrs` parsed (the invalid ones were reported by validation).
    pub fn parsed_non_masquerade_cidrs(&self) -> Vec<ipnet::Ipv4Net> {
        parse_cidrs(&self.non_masquerade_cidrs)
    }

    /// `vpc_cidrs` parsed (the invalid ones were reported by validation).
    pub fn parsed_vpc_cidrs(&self) -> Vec<ipnet::Ipv4Net> {
        parse_cidrs(&self.vpc_cidrs)
    }
}

fn parse_cidrs(list: &[String]) -> Vec<ipnet::Ipv4Net> {
    list.iter().filter_map(|c| c.parse().ok()).collect()
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Cloud.
    pub cloud: CloudConfig,
    /// Cluster identity.
    pub cluster: ClusterConfig,
    /// Subnets, security groups, links.
    pub network: NetworkConfig,
    /// Warm pool.
    pub pool: PoolConfig,
    /// Garbage collection.
    pub gc: GcConfig,
    /// Socket, state, metrics.
    pub daemon: DaemonConfig,
    /// eBPF Service load balancing.
    #[serde(default)]
    pub services: ServicesConfig,
    /// eBPF NetworkPolicy.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// eBPF masquerade of pod traffic leaving the node.
    #[serde(default)]
    pub masquerade: MasqueradeConfig,
}

/// Why the configuration was refused: every problem, each naming its field.
#[derive(Debug, thiserror::Error)]
#[error("configuration has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
pub struct ConfigError {
    /// One line per problem.
    pub problems: Vec<String>,
}

/// The environment variable prefix; `__` separates path segments:
/// `ENI_MANAGER__POOL__MIN_IDLE=4`.
pub const ENV_PREFIX: &str = "ENI_MANAGER__";

const SECTIONS: &[&str] = &[
    "cloud",
    "cluster",
    "network",
    "pool",
    "gc",
    "daemon",
    "services",
    "policy",
    "masquerade",
];

fn parse_scalar(s: &str) -> Value {
    serde_yaml::from_str::<Value>(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

fn set_path(root: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let mut cur = root;
    for (i, seg) in path.iter().enumerate() {
        if !cur.is_mapping() {
            if cur.is_null() {
                *cur = Value::Mapping(Default::default());
            } else {
                return Err(format!("{} is not a section", path[..i].join(".")));
            }
        }
        let map = cur.as_mapping_mut().expect("checked above");
        let key = Value::String(seg.clone());
        if i + 1 == path.len() {
            map.insert(key, value);
            return Ok(());
        }
        cur = map.entry(key).or_insert(Value::Null);
    }
    Ok(())
}

impl Config {
    /// Reads `file` (if given), applies environment overrides from `env` and `--set`
    /// overrides, and validates. `env` is passed in (not read here) so tests control it.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut root = match file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => match serde_yaml::from_str::<Value>(&text) {
                    Ok(Value::Null) => Value::Mapping(Default::default()),
                    Ok(v) => v,
                    Err(e) => {
                        return Err(ConfigError {
                            problems: vec![format!("{}: not valid YAML: {e}", path.display())],
                        })
                    }
                },
                Err(e) => {
                    return Err(ConfigError {
                        problems: vec![format!("--config {}: cannot read: {e}", path.display())],
                    })
                }
            },
            None => Value::Mapping(Default::default()),
        };
        for (k, v) in env {
            if let Some(rest) = k.strip_prefix(ENV_PREFIX) {
                let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
                if let Err(e) = set_path(&mut root, &path, parse_scalar(&v)) {
                    problems.push(format!("{k}: {e}"));
                }
            }
        }
        for s in sets {
            match s.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    let path: Vec<String> = k.split('.').map(str::to_string).collect();
                    if let Err(e) = set_path(&mut root, &path, parse_scalar(v)) {
                        problems.push(format!("--set {s}: {e}"));
                    }
                }
                _ => problems.push(format!(
                    "--set {s}: expected section.field=value, like --set pool.min_idle=4"
                )),
            }
        }
        let map = match root.as_mapping() {
            Some(m) => m.clone(),
            None => {
                return Err(ConfigError {
                    problems: vec!["the configuration must be a YAML mapping of sections".into()],
                })
            }
        };
        for k in map.keys() {
            let name = k.as_str().unwrap_or("?");
            if !SECTIONS.contains(&name) {
                problems.push(format!(
                    "{name}: unknown section; the sections are {}",
                    SECTIONS.join(", ")
                ));
            }
        }
        fn section<T: serde::de::DeserializeOwned>(
            map: &serde_yaml::Mapping,
            name: &str,
            default: Option<T>,
            problems: &mut Vec<String>,
        ) -> Option<T> {
            match map.get(name) {
                None | Some(Value::Null) => match default {
                    Some(d) => Some(d),
                    None => {
                        problems.push(format!("{name}: required section is missing"));
                        None
                    }
                },
                Some(v) => match serde_yaml::from_value::<T>(v.clone()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        problems.push(format!("{name}: {e}"));
                        None
                    }
                },
            }
        }
        let empty = || Value::Mapping(Default::default());
        let cloud = section::<CloudConfig>(&map, "cloud", None, &mut problems);
        let cluster = section::<ClusterConfig>(&map, "cluster", None, &mut problems);
        let network = section::<NetworkConfig>(&map, "network", None, &mut problems);
        let pool = section::<PoolConfig>(
            &map,
            "pool",
            serde_yaml::from_value(empty()).ok(),
            &mut problems,
        );
        let gc = section::<GcConfig>(&map, "gc", Some(GcConfig::default()), &mut problems);
        let daemon =
            section::<DaemonConfig>(&map, "daemon", Some(DaemonConfig::default()), &mut problems);
        let services = section::<ServicesConfig>(
            &map,
            "services",
            Some(ServicesConfig::default()),
            &mut problems,
        );
        let policy =
            section::<PolicyConfig>(&map, "policy", Some(PolicyConfig::default()), &mut problems);
        let masquerade = section::<MasqueradeConfig>(
            &map,
            "masquerade",
            Some(MasqueradeConfig::default()),
            &mut problems,
        );
        let (
            Some(cloud),
            Some(cluster),
            Some(network),
            Some(pool),
            Some(gc),
            Some(daemon),
            Some(services),
            Some(policy),
        ) = (cloud, cluster, network, pool, gc, daemon, services, policy)
        else {
            return Err(ConfigError { problems });
        };
        let Some(masquerade) = masquerade else {
            return Err(ConfigError { problems });
        };
        let cfg = Config {
            cloud,
            cluster,
            network,
            pool,
            gc,
            daemon,
            services,
            policy,
            masquerade,
        };
        problems.extend(cfg.problems());
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The policy pin directory: `policy.bpf_pin_dir`, else `services.bpf_pin_dir`.
    pub fn policy_pin_dir(&self) -> PathBuf {
        self.policy
            .bpf_pin_dir
            .clone()
            .unwrap_or_else(|| self.services.bpf_pin_dir.clone())
    }

    /// The masquerade pin directory: `masquerade.bpf_pin_dir`, else `services.bpf_pin_dir`.
    pub fn masquerade_pin_dir(&self) -> PathBuf {
        self.masquerade
            .bpf_pin_dir
            .clone()
            .unwrap_or_else(|| self.services.bpf_pin_dir.clone())
    }

    /// Semantic problems.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.cluster.id.trim().is_empty() {
            p.push("cluster.id: must not be empty; it tags every ENI this cluster owns".into());
        }
        if self.cluster.id.len() > 128 {
            p.push("cluster.id: at most 128 characters (it is a tag value)".into());
        }
        for k in self.cluster.tags.keys() {
            if k.starts_with("eni-net.io/") {
                p.push(format!(
                    "cluster.tags.{k}: the eni-net.io/ prefix is reserved for the manager's own tags"
                ));
            }
        }
        if self.network.subnets.is_empty() || self.network.subnets.values().all(Vec::is_empty) {
            p.push(
                "network.subnets: list the vSwitch/subnet ids per zone, like {cn-hangzhou-h: [vsw-1]}"
                    .into(),
            );
        }
        if !(576..=9001).contains(&self.network.mtu) {
            p.push(format!(
                "network.mtu: {} is outside 576..9001",
                self.network.mtu
            ));
        }
        if self.network.route_table_base < 100 || self.network.route_table_base > 0x7fff_0000 {
            p.push(format!(
                "network.route_table_base: {} must be between 100 and 2147418112 (tables below 100 are the system's)",
                self.network.route_table_base
            ));
        }
        if self.network.rule_priority == 0 || self.network.rule_priority >= 32766 {
            p.push(format!(
                "network.rule_priority: {} must be between 1 and 32765 (before the main table's rule)",
                self.network.rule_priority
            ));
        }
        if self.pool.max_idle < self.pool.min_idle {
            p.push(format!(
                "pool.max_idle: {} is below pool.min_idle {}; the high watermark must be at least the low one",
                self.pool.max_idle, self.pool.min_idle
            ));
        }
        if self.pool.max_enis == Some(0) || self.pool.max_enis == Some(1) {
            p.push("pool.max_enis: must be at least 2 (the primary ENI plus one)".into());
        }
        if self.pool.batch_window_ms > 5_000 {
            p.push("pool.batch_window_ms: at most 5000".into());
        }
        if self.pool.allocate_timeout_ms < 100 {
            p.push("pool.allocate_timeout_ms: at least 100".into());
        }
        if !(self.cloud.rate_per_second > 0.0 && self.cloud.rate_per_second <= 1000.0) {
            p.push(format!(
                "cloud.rate_per_second: {} must be above 0 and at most 1000",
                self.cloud.rate_per_second
            ));
        }
        if !(100..=600_000).contains(&self.cloud.request_timeout_ms) {
            p.push(format!(
                "cloud.request_timeout_ms: {} must be between 100 and 600000",
                self.cloud.request_timeout_ms
            ));
        }
        if self.cloud.retry_budget_ms > 3_600_000 {
            p.push(format!(
                "cloud.retry_budget_ms: {} must be at most 3600000",
                self.cloud.retry_budget_ms
            ));
        }
        if self.cloud.rate_burst == 0 {
            p.push("cloud.rate_burst: must be at least 1".into());
        }
        if let Some(ep) = &self.cloud.endpoint {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                p.push(format!(
                    "cloud.endpoint: {ep:?} must start with http:// or https://"
                ));
            }
        }
        if let Some(ep) = &self.cloud.metadata_endpoint {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                p.push(format!(
                    "cloud.metadata_endpoint: {ep:?} must start with http:// or https://"
                ));
            }
        }
        if self.cloud.provider == ProviderKind::Aws
            && self.cloud.credentials != CredentialSource::Chain
        {
            p.push("cloud.credentials: AWS always uses its default credential chain; leave it as chain".into());
        }
        if self.gc.interval_s == 0 {
            p.push("gc.interval_s: must be at least 1".into());
        }
        if !self.daemon.socket.is_absolute() {
            p.push(format!(
                "daemon.socket: {} must be an absolute path",
                self.daemon.socket.display()
            ));
        }
        if !self.daemon.state_dir.is_absolute() {
            p.push(format!(
                "daemon.state_dir: {} must be an absolute path",
                self.daemon.state_dir.display()
            ));
        }
        if self.services.enabled {
            if let Some(kc) = &self.services.kubeconfig {
                if !kc.is_absolute() {
                    p.push(format!(
                        "services.kubeconfig: {} must be an absolute path (or leave it unset for the in-cluster configuration)",
                        kc.display()
                    ));
                }
                if self.services.source != ServiceSourceKind::Kubernetes {
                    p.push("services.kubeconfig: only used with services.source: kubernetes; remove it or set the source".into());
                }
            }
            if let Some(n) = &self.services.node_name {
                if !is_dns_subdomain(n) {
                    p.push(format!(
                        "services.node_name: {n:?} is not a Kubernetes node name (lowercase letters, digits, '-' and '.', at most 253); set it from the pod's spec.nodeName"
                    ));
                }
            }
            for (field, path) in [
                ("services.dir", &self.services.dir),
                ("services.bpf_pin_dir", &self.services.bpf_pin_dir),
                ("services.cgroup", &self.services.cgroup),
            ] {
                if !path.is_absolute() {
                    p.push(format!(
                        "{field}: {} must be an absolute path",
                        path.display()
                    ));
                }
            }
        }
        p.extend(self.services.nodeport.problems(self.services.enabled));
        p.extend(self.masquerade.problems(&self.masquerade_pin_dir()));
        if self.policy.enabled {
            if let Some(kc) = &self.policy.kubeconfig {
                if !kc.is_absolute() {
                    p.push(format!(
                        "policy.kubeconfig: {} must be an absolute path (or leave it unset for the in-cluster configuration)",
                        kc.display()
                    ));
                }
                if self.policy.source != PolicySourceKind::Kubernetes {
                    p.push("policy.kubeconfig: only used with policy.source: kubernetes; remove it or set the source".into());
                }
            }
            for (field, path) in [
                ("policy.dir", &self.policy.dir),
                ("policy.bpf_pin_dir", &self.policy_pin_dir()),
            ] {
                if !path.is_absolute() {
                    p.push(format!(
                        "{field}: {} must be an absolute path",
                        path.display()
                    ));
                }
            }
        }
        p
    }
}

impl NodePortConfig {
    /// The configuration problems of this section (none when it is off).
    fn problems(&self, services_enabled: bool) -> Vec<String> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        if !services_enabled {
            p.push(
                "services.nodeport.enabled: needs services.enabled: true (the NodePort path \
                 uses the socket load balancer's maps); enable services or turn it off"
                    .into(),
            );
        }
        if self.links.is_empty() {
            p.push(
                "services.nodeport.links: empty; list the node's links NodePorts arrive on \
                 (for example [eth0])"
                    .into(),
            );
        }
        for (i, link) in self.links.iter().enumerate() {
            if eni_kernel::link::validate_link_name(link).is_err() {
                p.push(format!(
                    "services.nodeport.links[{i}]: {link:?} is not an interface name (1-15 \
                     bytes, no '/', ':' or spaces); use the name `ip link` shows"
                ));
            } else if self.links[..i].contains(link) {
                p.push(format!(
                    "services.nodeport.links[{i}]: {link:?} is listed twice; remove one"
                ));
            }
        }
        for (i, a) in self.addresses.iter().enumerate() {
            match a.parse::<std::net::Ipv4Addr>() {
                Ok(ip) if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() => {
                    p.push(format!(
                        "services.nodeport.addresses[{i}]: {a} is not a unicast address; \
                         give one of the node's IPv4 addresses"
                    ))
                }
                Ok(_) => {}
                Err(_) => p.push(format!(
                    "services.nodeport.addresses[{i}]: {a:?} is not an IPv4 address; give one \
                     of the node's IPv4 addresses (or leave the list empty for the links' own)"
                )),
            }
        }
        p
    }

    /// The configured addresses, parsed (the invalid ones were reported by validation).
    pub fn parsed_addresses(&self) -> Vec<std::net::Ipv4Addr> {
        self.addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }
}

/// A DNS-1123 subdomain: what a Kubernetes node name must be.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
cloud: { provider: aliyun, endpoint: "http://127.0.0.1:8640" }
cluster: { id: prod-1 }
network: { subnets: { cn-hangzhou-h: [vsw-1, vsw-2] } }
"#;

    fn load(text: &str, env: &[(&str, &str)], sets: &[&str]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, text).unwrap();
        Config::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn defaults_fill_the_rest() {
        let c = load(MINIMAL, &[], &[]).unwrap();
        assert_eq!(c.pool.min_idle, 2);
        assert_eq!(c.pool.max_idle, 10);
        assert_eq!(c.network.mtu, 1500);
        assert_eq!(c.daemon.metrics_address.port(), 9410);
        assert_eq!(c.network.subnet_selection, SubnetSelection::MostFree);
    }

    #[test]
    fn env_then_flags_override_the_file() {
        let c = load(
            MINIMAL,
            &[
                ("ENI_MANAGER__POOL__MIN_IDLE", "4"),
                ("ENI_MANAGER__POOL__MAX_IDLE", "8"),
                ("OTHER", "x"),
            ],
            &["pool.min_idle=5", "daemon.socket=/tmp/s.sock"],
        )
        .unwrap();
        assert_eq!(c.pool.min_idle, 5);
        assert_eq!(c.pool.max_idle, 8);
        assert_eq!(c.daemon.socket, PathBuf::from("/tmp/s.sock"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load(
            r#"
cloud: { provider: aliyun, endpoint: "ftp://x", rate_burst: 0 }
cluster: { id: "", tags: { "eni-net.io/node": x } }
network: { subnets: {}, mtu: 100 }
pool: { min_idle: 5, max_idle: 2 }
extra: 1
"#,
            &[],
            &["nonsense"],
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "extra: unknown section",
            "cluster.id",
            "eni-net.io/ prefix",
            "network.subnets",
            "network.mtu",
            "pool.max_idle",
            "cloud.endpoint",
            "cloud.rate_burst",
            "--set nonsense",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn type_errors_name_the_section_and_others_still_show() {
        let err = load(
            r#"
cloud: { provider: gcp }
cluster: { id: x }
network: { subnets: { z: [a] } }
pool: { min_idle: "many" }
"#,
            &[],
            &[],
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{:?}", err.problems);
        assert!(err.problems[0].starts_with("cloud:"));
        assert!(err.problems[1].starts_with("pool:"));
    }

    #[test]
    fn policy_default_off_shares_the_services_pin_dir_and_is_checked_when_on() {
        let c = load(MINIMAL, &[], &[]).unwrap();
        assert!(!c.policy.enabled);
        assert_eq!(c.policy.source, PolicySourceKind::Files);
        assert_eq!(c.policy.dir, PathBuf::from("/etc/eni-manager/policy"));
        assert_eq!(c.policy_pin_dir(), PathBuf::from("/sys/fs/bpf/eni-net"));
        let c = load(
            &format!("{MINIMAL}services: {{ bpf_pin_dir: /sys/fs/bpf/x }}\npolicy: {{ enabled: true, dir: /srv/pol }}\n"),
            &[],
            &[],
        )
        .unwrap();
        assert!(c.policy.enabled);
        assert_eq!(c.policy.dir, PathBuf::from("/srv/pol"));
        assert_eq!(c.policy_pin_dir(), PathBuf::from("/sys/fs/bpf/x"));
        let c = load(MINIMAL, &[], &["policy.bpf_pin_dir=/sys/fs/bpf/p"]).unwrap();
        assert_eq!(c.policy_pin_dir(), PathBuf::from("/sys/fs/bpf/p"));
        let err = load(
            &format!("{MINIMAL}policy: {{ enabled: true, dir: rel, bpf_pin_dir: pins }}\n"),
            &[],
            &[],
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.problems[0].starts_with("policy.dir: rel must be an absolute path"));
        assert!(err.problems[1].starts_with("policy.bpf_pin_dir: pins must be an absolute path"));
        let err = load(&format!("{MINIMAL}policy: {{ source: etcd }}\n"), &[], &[]).unwrap_err();
        assert!(err.problems[0].starts_with("policy:"), "{err}");
    }

    #[test]
    fn policy_kubernetes_source_and_its_kubeconfig() {
        let c = load(
            &format!("{MINIMAL}policy: {{ enabled: true, source: kubernetes }}\n"),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(c.policy.source, PolicySourceKind::Kubernetes);
        assert_eq!(c.policy.kubeconfig, None);
        let c = load(
            &format!(
                "{MINIMAL}policy: {{ enabled: true, source: kubernetes, kubeconfig: /etc/kc }}\n"
            ),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(c.policy.kubeconfig, Some(PathBuf::from("/etc/kc")));
        let err = load(
            &format!("{MINIMAL}policy: {{ enabled: true, kubeconfig: kc }}\n"),
            &[],
            &[],
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.problems[0].starts_with("policy.kubeconfig: kc must be an absolute path"));
        assert!(err.problems[1]
            .starts_with("policy.kubeconfig: only used with policy.source: kubernetes"));
    }

    #[test]
    fn services_default_off_and_checked_when_on() {
        let c = load(MINIMAL, &[], &[]).unwrap();
        assert!(!c.services.enabled);
        assert_eq!(c.services.source, ServiceSourceKind::Files);
        assert_eq!(c.services.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/eni-net"));
        let c = load(
            &format!("{MINIMAL}services: {{ enabled: true, dir: /srv/svc }}\n"),
            &[],
            &[],
        )
        .unwrap();
        assert!(c.services.enabled);
        assert_eq!(c.services.dir, PathBuf::from("/srv/svc"));
        let err = load(
            &format!(
                "{MINIMAL}services: {{ enabled: true, source: kubernetes, dir: rel, cgroup: cg, kubeconfig: kc.yaml, node_name: Node_A }}\n"
            ),
            &[],
            &["network.mtu=1"],
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "services.kubeconfig: kc.yaml must be an absolute path",
            "services.node_name: \"Node_A\" is not a Kubernetes node name",
            "services.dir: rel must be an absolute path",
            "services.cgroup: cg must be an absolute path",
            "network.mtu",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let err = load(
            &format!("{MINIMAL}services: {{ source: etcd }}\n"),
            &[],
            &[],
        )
        .unwrap_err();
        assert!(
            err.problems[0].starts_with("services:"),
            "{:?}",
            err.problems
        );
    }

    #[test]
    fn services_nodeport_default_off_and_every_problem_named() {
        let c = load(MINIMAL, &[], &[]).unwrap();
        assert_eq!(c.services.nodeport, NodePortConfig::default());
        let c = load(
            &format!(
                "{MINIMAL}services: {{ enabled: true, nodeport: {{ enabled: true, links: [eth0, eth1], addresses: [192.168.1.10] }} }}\n"
            ),
            &[],
            &[],
        )
        .unwrap();
        assert!(c.services.nodeport.enabled);
        assert_eq!(c.services.nodeport.links, ["eth0", "eth1"]);
        assert_eq!(
            c.services.nodeport.parsed_addresses(),
            [std::net::Ipv4Addr::new(192, 168, 1, 10)]
        );
        let err = load(
            &format!(
                "{MINIMAL}services: {{ nodeport: {{ enabled: true, links: [eth0, \"a/b\", eth0], addresses: [10.0.0.300, 0.0.0.0, \"::1\"] }} }}\n"
            ),
            &[],
            &[],
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "services.nodeport.enabled: needs services.enabled: true",
            "services.nodeport.links[1]: \"a/b\" is not an interface name",
            "services.nodeport.links[2]: \"eth0\" is listed twice",
            "services.nodeport.addresses[0]: \"10.0.0.300\" is not an IPv4 address",
            "services.nodeport.addresses[1]: 0.0.0.0 is not a unicast address",
            "services.nodeport.addresses[2]: \"::1\" is not an IPv4 address",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let err = load(
            &format!("{MINIMAL}services: {{ enabled: true, nodeport: {{ enabled: true }} }}\n"),
            &[],
            &[],
        )
        .unwrap_err();
        assert!(
            err.problems[0].starts_with("services.nodeport.links: empty"),
            "{:?}",
            err.problems
        );
        let err = load(
            &format!("{MINIMAL}services: {{ nodeport: {{ link: [eth0] }} }}\n"),
            &[],
            &[],
        )
        .unwrap_err();
        assert!(
            err.problems[0].starts_with("services:"),
            "{:?}",
            err.problems
        );
        // Environment overrides reach the sub-section.
        let c = load(
            &format!("{MINIMAL}services: {{ enabled: true }}\n"),
            &[
                ("ENI_MANAGER__SERVICES__NODEPORT__ENABLED", "true"),
                ("ENI_MANAGER__SERVICES__NODEPORT__LINKS", "[eth0]"),
            ],
            &[],
        )
        .unwrap();
        assert!(c.services.nodeport.enabled);
        assert_eq!(c.services.nodeport.links, ["eth0"]);
    }

    #[test]
    fn services_kubernetes_source_fields() {
        // In-cluster: no kubeconfig; the node name from the environment (downward API).
        let c = load(
            &format!("{MINIMAL}services: {{ enabled: true, source: kubernetes }}\n"),
            &[(
                "ENI_MANAGER__SERVICES__NODE_NAME",
                "ip-10-0-1-7.ec2.internal",
            )],
            &[],
        )
        .unwrap();
        assert_eq!(c.services.source, ServiceSourceKind::Kubernetes);
        assert_eq!(c.services.kubeconfig, None);
        assert_eq!(
            c.services.node_name.as_deref(),
            Some("ip-10-0-1-7.ec2.internal")
        );
        // A numeric node name survives the environment override's YAML reading.
        let c = load(
            &format!("{MINIMAL}services: {{ enabled: true, source: kubernetes }}\n"),
            &[("ENI_MANAGER__SERVICES__NODE_NAME", "12345")],
            &[],
        )
        .unwrap();
        assert_eq!(c.services.node_name.as_deref(), Some("12345"));
        let c = load(
            &format!(
                "{MINIMAL}services: {{ enabled: true, source: kubernetes, kubeconfig: /etc/eni-manager/kubeconfig }}\n"
            ),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(
            c.services.kubeconfig,
            Some(PathBuf::from("/etc/eni-manager/kubeconfig"))
        );
        // A kubeconfig with the file source is a mistake worth naming.
        let err = load(
            &format!("{MINIMAL}services: {{ enabled: true, kubeconfig: /k }}\n"),
            &[],
            &[],
        )
        .unwrap_err();
        assert!(
            err.problems[0]
                .starts_with("services.kubeconfig: only used with services.source: kubernetes"),
            "{:?}",
            err.problems
        );
        for bad in ["", "-a", "a..b", "UPPER", &"x".repeat(254)] {
            let err = load(
                &format!("{MINIMAL}services: {{ enabled: true, source: kubernetes }}\n"),
                &[],
                &[&format!("services.node_name=\"{bad}\"")],
            )
            .unwrap_err();
            assert!(
                err.problems[0].starts_with("services.node_name:"),
                "{bad:?}: {:?}",
                err.problems
            );
        }
        // Unknown fields are still refused (a misspelt kubeconfig is not ignored).
        let err = load(
            &format!("{MINIMAL}services: {{ kube_config: /k }}\n"),
            &[],
            &[],
        )
        .unwrap_err();
        assert!(
            err.problems[0].contains("kube_config"),
            "{:?}",
            err.problems
        );
    }

    #[test]
    fn missing_sections_are_named() {
        let err = load("pool: {}\n", &[], &[]).unwrap_err();
        assert_eq!(err.problems.len(), 3, "{:?}", err.problems);
    }
}

#[cfg(test)]
mod masquerade_tests {
    use super::*;

    const MINIMAL: &str = r#"
cloud: { provider: aliyun, endpoint: "http://127.0.0.1:8640" }
cluster: { id: prod-1 }
network: { subnets: { cn-hangzhou-h: [vsw-1] } }
"#;

    fn load(text: &str, sets: &[&str]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, text).unwrap();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::load(Some(&path), std::iter::empty(), &sets)
    }

    #[test]
    fn off_by_default_with_ip_masq_agent_defaults() {
        let c = load(MINIMAL, &[]).unwrap();
        let m = &c.masquerade;
        assert!(!m.enabled);
        assert!(!m.masq_link_local);
        assert_eq!(m.resync_interval_s, 60);
        assert_eq!(m.non_masquerade_cidrs.len(), 11);
        assert_eq!(m.non_masquerade_cidrs[0], "10.0.0.0/8");
        assert!(m.non_masquerade_cidrs.contains(&"240.0.0.0/4".to_owned()));
        assert_eq!(c.masquerade_pin_dir(), c.services.bpf_pin_dir);
    }

    #[test]
    fn enabled_section_parses_and_env_style_sets_apply() {
        let c = load(
            &format!(
                "{MINIMAL}masquerade: {{ enabled: true, links: [eth0, eth1], vpc_cidrs: [172.31.0.0/16], non_masquerade_cidrs: [10.0.0.0/8], bpf_pin_dir: /sys/fs/bpf/m }}\n"
            ),
            &["masquerade.masq_link_local=true"],
        )
        .unwrap();
        let m = &c.masquerade;
        assert!(m.enabled && m.masq_link_local);
        assert_eq!(m.links, ["eth0", "eth1"]);
        assert_eq!(m.parsed_vpc_cidrs(), vec!["172.31.0.0/16".parse().unwrap()]);
        assert_eq!(
            m.parsed_non_masquerade_cidrs(),
            vec!["10.0.0.0/8".parse().unwrap()]
        );
        assert_eq!(c.masquerade_pin_dir(), PathBuf::from("/sys/fs/bpf/m"));
    }

    #[test]
    fn every_problem_names_its_field() {
        let err = load(
            &format!(
                "{MINIMAL}masquerade: {{ enabled: true, links: [eth0, \"a/b\", eth0], non_masquerade_cidrs: [10.0.0.0/33, nope], config_file: rel.yaml, resync_interval_s: 0, bpf_pin_dir: pins }}\n"
            ),
            &[],
        )
        .unwrap_err();
        let want = [
            "masquerade.links[1]: \"a/b\" is not an interface name",
            "masquerade.links[2]: \"eth0\" is listed twice",
            "masquerade.non_masquerade_cidrs[0]: \"10.0.0.0/33\" is not an IPv4 CIDR",
            "masquerade.non_masquerade_cidrs[1]: \"nope\" is not an IPv4 CIDR",
            "masquerade.config_file: rel.yaml must be an absolute path",
            "masquerade.resync_interval_s: 0",
            "masquerade.bpf_pin_dir: pins must be an absolute path",
        ];
        for w in want {
            assert!(
                err.problems.iter().any(|p| p.starts_with(w)),
                "missing {w:?} in {:#?}",
                err.problems
            );
        }
        assert_eq!(err.problems.len(), want.len(), "{:#?}", err.problems);

        let err = load(
            &format!("{MINIMAL}masquerade: {{ enabled: true, vpc_cidrs: [10.0.0.0/16] }}\n"),
            &[],
        )
        .unwrap_err();
        assert!(
            err.problems[0].starts_with("masquerade.links: empty"),
            "{err}"
        );
        let err = load(&format!("{MINIMAL}masquerade: {{ link: [eth0] }}\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("link"), "{err}");
    }

    #[test]
    fn a_disabled_section_is_not_checked() {
        let c = load(
            &format!("{MINIMAL}masquerade: {{ enabled: false, vpc_cidrs: [bad] }}\n"),
            &[],
        )
        .unwrap();
        assert!(!c.masquerade.enabled);
    }
}
