//! The world file: what the emulated cloud holds when it starts.
//!
//! This module owns the YAML schema and its validation. It does not hold run-time state
//! (see `state`), and nothing here touches the network or the kernel.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The whole world file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct World {
    /// Region id, for example `cn-hangzhou`. Requests must carry the same `RegionId`.
    pub region: String,
    /// Zone ids of the region, for example `[cn-hangzhou-h, cn-hangzhou-i]`.
    pub zones: Vec<String>,
    /// The one VPC of this world.
    pub vpc: Vpc,
    /// vSwitches (subnets). Addresses are allocated from their CIDRs.
    pub vswitches: Vec<VSwitch>,
    /// Security group ids that requests may name.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Instance types and their ENI limits.
    pub instance_types: Vec<InstanceType>,
    /// Instances (the "nodes"), each with its primary ENI.
    pub instances: Vec<Instance>,
    /// Access keys the API accepts.
    pub access_keys: Vec<AccessKey>,
    /// RAM roles whose temporary credentials the metadata service hands out.
    #[serde(default)]
    pub ram_roles: Vec<RamRole>,
    /// Delays of the asynchronous operations and of the metadata service.
    #[serde(default)]
    pub timing: Timing,
    /// Throttling and fault injection; also changeable at run time (`PUT /_admin/faults`).
    #[serde(default)]
    pub faults: Faults,
    /// The hypervisor: links for attached ENIs in the instances' network namespaces.
    #[serde(default)]
    pub hypervisor: HypervisorConfig,
}

/// The VPC.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vpc {
    /// VPC id, for example `vpc-mock`.
    pub id: String,
    /// The VPC's CIDR block; every vSwitch CIDR must lie inside it.
    pub cidr: Ipv4Net,
}

/// A vSwitch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VSwitch {
    /// vSwitch id, for example `vsw-a`.
    pub id: String,
    /// Zone the vSwitch is in; must be one of `zones`.
    pub zone: String,
    /// CIDR block. As in Alibaba Cloud, the first address and the last three are reserved and
    /// the gateway is the fourth-last (`.253` of a /24).
    pub cidr: Ipv4Net,
}

impl VSwitch {
    /// The gateway address: the broadcast address minus two.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.broadcast()) - 2)
    }

    /// Addresses that can be handed out, in order: network+1 .. broadcast-3.
    pub fn usable(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.cidr.network()) + 1;
        let last = u32::from(self.cidr.broadcast()).saturating_sub(3);
        (first..=last).map(Ipv4Addr::from)
    }
}

/// ENI limits of an instance type, named as `DescribeInstanceTypes` names them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    /// Instance type id, for example `ecs.g7.large`.
    pub id: String,
    /// ENIs per instance, the primary ENI included.
    pub eni_quantity: u32,
    /// IPv4 addresses per ENI, the ENI's primary address included.
    pub eni_private_ip_address_quantity: u32,
    /// IPv6 addresses per ENI (reported only).
    #[serde(default)]
    pub eni_ipv6_address_quantity: u32,
    /// Whether ENIs of this type accept /28 IPv4 prefixes. A prefix counts as one address
    /// slot against `eni_private_ip_address_quantity`.
    #[serde(default)]
    pub prefix_support: bool,
}

/// An instance (a node).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Instance id, for example `i-node-a`.
    pub id: String,
    /// Instance type id; must be one of `instance_types`.
    #[serde(rename = "type")]
    pub instance_type: String,
    /// vSwitch of the primary ENI; its zone is the instance's zone.
    pub vswitch: String,
    /// Security groups of the primary ENI.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Primary private IP; allocated from the vSwitch when absent.
    #[serde(default)]
    pub primary_ip: Option<Ipv4Addr>,
    /// Id of the primary ENI; `eni-<instance id without "i-">-primary` when absent.
    #[serde(default)]
    pub primary_eni: Option<String>,
    /// RAM role attached to the instance (name from `ram_roles`).
    #[serde(default)]
    pub ram_role: Option<String>,
    /// Network namespace the hypervisor binds this instance to: a name under
    /// `/var/run/netns` or an absolute path. Needs root; also settable at run time.
    #[serde(default)]
    pub netns: Option<String>,
}

/// An access key the API accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    /// AccessKeyId.
    pub id: String,
    /// AccessKeySecret.
    pub secret: String,
    /// When set, requests with this key must carry this `SecurityToken` (STS).
    #[serde(default)]
    pub sts_token: Option<String>,
}

/// A RAM role: the metadata service issues temporary credentials for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RamRole {
    /// Role name, as listed by `/latest/meta-data/ram/security-credentials/`.
    pub name: String,
    /// Lifetime of each issued credential, in seconds (default 3600).
    #[serde(default = "default_credential_ttl")]
    pub credential_ttl_s: u64,
}

fn default_credential_ttl() -> u64 {
    3600
}

/// A delay in milliseconds: a fixed number, or `[min, max]` picked uniformly per operation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Millis {
    /// Always this many milliseconds.
    Fixed(u64),
    /// Uniformly between the two bounds, inclusive.
    Range([u64; 2]),
}

impl Default for Millis {
    fn default() -> Self {
        Millis::Fixed(0)
    }
}

impl Millis {
    /// Picks one delay.
    pub fn pick(&self) -> std::time::Duration {
        use rand::Rng;
        let ms = match *self {
            Millis::Fixed(ms) => ms,
            Millis::Range([lo, hi]) => rand::thread_rng().gen_range(lo.min(hi)..=hi.max(lo)),
        };
        std::time::Duration::from_millis(ms)
    }
}

/// Delays of the asynchronous operations.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// `Attaching` -> `InUse`.
    #[serde(default)]
    pub attach_ms: Millis,
    /// `Detaching` -> `Available`.
    #[serde(default)]
    pub detach_ms: Millis,
    /// `Deleting` -> gone.
    #[serde(default)]
    pub delete_ms: Millis,
    /// How long after an attach or an assign the metadata service shows the change.
    #[serde(default)]
    pub metadata_lag_ms: Millis,
    /// Fraction (0..=1) of attaches that fail: the ENI goes back to `Available`.
    #[serde(default)]
    pub attach_failure_rate: f64,
}

/// Faults for one action (or for every action, as `default`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ActionFaults {
    /// Calls allowed per second (token bucket, burst = the same number); over it: throttled.
    #[serde(default)]
    pub per_second: Option<u32>,
    /// Calls allowed per rolling minute; over it: throttled.
    #[serde(default)]
    pub per_minute: Option<u32>,
    /// Fraction (0..=1) of calls answered `InternalError` (500) or `ServiceUnavailable` (503),
    /// half each. The call changes nothing.
    #[serde(default)]
    pub error_rate: f64,
    /// Fraction (0..=1) of calls whose connection is closed without an answer. The call is
    /// carried out first (as when a reply is lost on the way), so a retry must be idempotent.
    #[serde(default)]
    pub drop_rate: f64,
    /// Added latency before the answer.
    #[serde(default)]
    pub latency_ms: Millis,
}

/// Throttling and faults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// While true, every API and metadata call hangs until it is switched off (admin API).
    #[serde(default)]
    pub blackhole: bool,
    /// Faults for actions without an entry in `actions`.
    #[serde(default)]
    pub default: ActionFaults,
    /// Faults per action name (`AssignPrivateIpAddresses`, ...).
    #[serde(default)]
    pub actions: BTreeMap<String, ActionFaults>,
    /// HTTP status of a throttling error (default 400; some clouds use 429).
    #[serde(default)]
    pub throttle_status: Option<u16>,
}

impl Faults {
    /// The faults that apply to `action`.
    pub fn for_action(&self, action: &str) -> &ActionFaults {
        self.actions.get(action).unwrap_or(&self.default)
    }
}

/// Hypervisor settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HypervisorConfig {
    /// Name of the network namespace the mock creates for the VPC (one bridge per vSwitch).
    /// Default: `mockvpc-<pid>`.
    #[serde(default)]
    pub vpc_netns: Option<String>,
    /// Address the mock also serves the API and metadata on, inside the VPC namespace, port
    /// 80, so bound instances reach it through their primary NIC as on a real cloud.
    #[serde(default = "default_api_address")]
    pub api_address: Ipv4Addr,
    /// MTU of the links the hypervisor creates.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            vpc_netns: None,
            api_address: default_api_address(),
            mtu: default_mtu(),
        }
    }
}

fn default_api_address() -> Ipv4Addr {
    Ipv4Addr::new(100, 100, 100, 200)
}

fn default_mtu() -> u32 {
    1500
}

/// Why a world file was refused.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// The file could not be read.
    #[error("cannot read world file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not match the schema.
    #[error("world file {path} is not valid YAML for the schema: {source}")]
    Parse {
        /// The path.
        path: String,
        /// The parser's error, with line and column.
        #[source]
        source: serde_yaml::Error,
    },
    /// The file parses but is inconsistent; every problem is listed.
    #[error("world file {path} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        /// The path.
        path: String,
        /// One line per problem, naming the field.
        problems: Vec<String>,
    },
}

impl World {
    /// Reads and validates a world file.
    pub fn load(path: &Path) -> Result<World, WorldError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| WorldError::Read {
            path: shown.clone(),
            source,
        })?;
        World::parse(&text, &shown)
    }

    /// Parses and validates world YAML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<World, WorldError> {
        let world: World = serde_yaml::from_str(text).map_err(|source| WorldError::Parse {
            path: origin.to_string(),
            source,
        })?;
        let problems = world.problems();
        if problems.is_empty() {
            Ok(world)
        } else {
            Err(WorldError::Invalid {
                path: origin.to_string(),
                problems,
            })
        }
    }

    /// Every consistency problem, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.region.trim().is_empty() {
            p.push("region: must not be empty".to_string());
        }
        if self.zones.is_empty() {
            p.push("zones: list at least one zone".to_string());
        }
        let zones: HashSet<&str> = self.zones.iter().map(String::as_str).collect();
        let mut vsw_ids = HashSet::new();
        for (i, v) in self.vswitches.iter().enumerate() {
            if !vsw_ids.insert(v.id.as_str()) {
                p.push(format!("vswitches[{i}].id: duplicate id {}", v.id));
            }
            if !zones.contains(v.zone.as_str()) {
                p.push(format!(
                    "vswitches[{i}].zone: {} is not in zones {:?}",
                    v.zone, self.zones
                ));
            }
            if !self.vpc.cidr.contains(&v.cidr) {
                p.push(format!(
                    "vswitches[{i}].cidr: {} is not inside the VPC CIDR {}",
                    v.cidr, self.vpc.cidr
                ));
            }
            if v.cidr.prefix_len() > 29 {
                p.push(format!(
                    "vswitches[{i}].cidr: {} is too small; use /29 or larger (4 addresses are reserved)",
                    v.cidr
                ));
            }
            if v.cidr.network() != v.cidr.addr() {
                p.push(format!(
                    "vswitches[{i}].cidr: {} has host bits set; write {}",
                    v.cidr,
                    v.cidr.trunc()
                ));
            }
        }
        for (i, a) in self.vswitches.iter().enumerate() {
            for b in self.vswitches.iter().skip(i + 1) {
                if a.cidr.contains(&b.cidr.network()) || b.cidr.contains(&a.cidr.network()) {
                    p.push(format!(
                        "vswitches: {} ({}) overlaps {} ({})",
                        a.id, a.cidr, b.id, b.cidr
                    ));
                }
            }
        }
        let mut type_ids = HashSet::new();
        for (i, t) in self.instance_types.iter().enumerate() {
            if !type_ids.insert(t.id.as_str()) {
                p.push(format!("instance_types[{i}].id: duplicate id {}", t.id));
            }
            if t.eni_quantity < 1 {
                p.push(format!(
                    "instance_types[{i}].eni_quantity: must be at least 1 (the primary ENI)"
                ));
            }
            if t.eni_private_ip_address_quantity < 1 {
                p.push(format!(
                    "instance_types[{i}].eni_private_ip_address_quantity: must be at least 1"
                ));
            }
        }
        let sgs: HashSet<&str> = self.security_groups.iter().map(String::as_str).collect();
        let roles: HashSet<&str> = self.ram_roles.iter().map(|r| r.name.as_str()).collect();
        let mut inst_ids = HashSet::new();
        let mut primary_ips = HashSet::new();
        for (i, inst) in self.instances.iter().enumerate() {
            if !inst_ids.insert(inst.id.as_str()) {
                p.push(format!("instances[{i}].id: duplicate id {}", inst.id));
            }
            if !type_ids.contains(inst.instance_type.as_str()) {
                p.push(format!(
                    "instances[{i}].type: {} is not one of instance_types",
                    inst.instance_type
                ));
            }
            match self.vswitches.iter().find(|v| v.id == inst.vswitch) {
                None => p.push(format!(
                    "instances[{i}].vswitch: {} is not one of vswitches",
                    inst.vswitch
                )),
                Some(v) => {
                    if let Some(ip) = inst.primary_ip {
                        if !v.usable().any(|u| u == ip) {
                            p.push(format!(
                                "instances[{i}].primary_ip: {ip} is not a usable address of {} ({})",
                                v.id, v.cidr
                            ));
                        }
                        if !primary_ips.insert(ip) {
                            p.push(format!("instances[{i}].primary_ip: {ip} is used twice"));
                        }
                    }
                }
            }
            for sg in &inst.security_groups {
                if !sgs.contains(sg.as_str()) {
                    p.push(format!(
                        "instances[{i}].security_groups: {sg} is not one of security_groups"
                    ));
                }
            }
            if let Some(role) = &inst.ram_role {
                if !roles.contains(role.as_str()) {
                    p.push(format!(
                        "instances[{i}].ram_role: {role} is not one of ram_roles"
                    ));
                }
            }
        }
        if self.access_keys.is_empty() && self.ram_roles.is_empty() {
            p.push("access_keys: list at least one key (or a ram_role)".to_string());
        }
        let mut key_ids = HashSet::new();
        for (i, k) in self.access_keys.iter().enumerate() {
            if !key_ids.insert(k.id.as_str()) {
                p.push(format!("access_keys[{i}].id: duplicate id {}", k.id));
            }
            if k.secret.is_empty() {
                p.push(format!("access_keys[{i}].secret: must not be empty"));
            }
        }
        p.extend(self.faults.problems("faults"));
        if !(0.0..=1.0).contains(&self.timing.attach_failure_rate) {
            p.push("timing.attach_failure_rate: must be between 0 and 1".to_string());
        }
        p
    }
}

impl Faults {
    /// Consistency problems, with field names under `prefix`.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        fn check(p: &mut Vec<String>, name: &str, f: &ActionFaults) {
            for (field, v) in [("error_rate", f.error_rate), ("drop_rate", f.drop_rate)] {
                if !(0.0..=1.0).contains(&v) {
                    p.push(format!("{name}.{field}: {v} must be between 0 and 1"));
                }
            }
            if f.per_second == Some(0) || f.per_minute == Some(0) {
                p.push(format!(
                    "{name}: a rate limit of 0 would refuse everything; use error_rate or blackhole"
                ));
            }
        }
        check(&mut p, &format!("{prefix}.default"), &self.default);
        for (action, f) in &self.actions {
            if !crate::api::ACTIONS.contains(&action.as_str()) {
                p.push(format!(
                    "{prefix}.actions.{action}: unknown action; known: {}",
                    crate::api::ACTIONS.join(", ")
                ));
            }
            check(&mut p, &format!("{prefix}.actions.{action}"), f);
        }
        if let Some(s) = self.throttle_status {
            if !(400..=599).contains(&s) {
                p.push(format!(
                    "{prefix}.throttle_status: {s} is not an HTTP error status"
                ));
            }
        }
        p
    }
}
