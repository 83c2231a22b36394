//! Reading and validating one invocation: the `CNI_*` environment and the netconf on stdin.
//!
//! [`parse`] checks everything before anything acts and reports every problem it finds in
//! one [`CniError`] (the first problem's class picks the code). It does no networking and
//! never talks to the manager; the only I/O is a check that `CNI_NETNS` exists.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use eni_rpc::{AttachmentRef, PodRef, PortMapping, PortProtocol};
use serde_json::{Map, Value};

use crate::error::{
    CniError, DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_ENV, INVALID_NETCONF,
    UNKNOWN_CONTAINER, UNSUPPORTED_FIELD,
};
use crate::log::Level;
use crate::version::{self, CniVersion};

/// The netconf `type` this plugin answers to.
pub const PLUGIN_TYPE: &str = "eni-cni";
/// The longest path a unix socket address can hold (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The longest allocation wait a netconf may ask for.
const MAX_TIMEOUT_MS: u64 = 600_000;

/// The CNI operation (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Wire a container into the network.
    Add,
    /// Unwire it and give its address back.
    Del,
    /// Verify that the container's networking is as ADD left it.
    Check,
    /// Say whether the plugin is ready for ADD.
    Status,
    /// Release everything not among the valid attachments.
    Gc,
    /// Report the supported spec versions.
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The name as in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// Whether the command concerns one container's interface (needs container id, ifname).
    fn per_container(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The datapath mode asked for in the netconf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// IPVLAN L2 where the kernel has ipvlan, veth otherwise.
    Auto,
    /// Every pod gets a whole ENI.
    Exclusive,
    /// Shared ENI, an ipvlan L2 slave per pod.
    Ipvlan,
    /// Shared ENI, a veth pair per pod and policy routing.
    Veth,
}

impl Mode {
    /// The netconf spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Exclusive => "exclusive",
            Mode::Ipvlan => "ipvlan",
            Mode::Veth => "veth",
        }
    }
}

/// The validated netconf.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// `cniVersion`, one of [`version::SUPPORTED`].
    pub cni_version: CniVersion,
    /// `name`, the network's name.
    pub name: String,
    /// `socket`: the manager's unix socket.
    pub socket: PathBuf,
    /// `mode`: the datapath.
    pub mode: Mode,
    /// `mtu`: the pod interface MTU; `None` = the allocation's.
    pub mtu: Option<u32>,
    /// `log_file`: where logs go; `None` = stderr.
    pub log_file: Option<PathBuf>,
    /// `log_level`.
    pub log_level: Level,
    /// `timeout_ms`: how long the manager may wait for the pool (0 = its default).
    pub timeout_ms: u32,
    /// `runtimeConfig.exclusiveEni`.
    pub runtime_exclusive: bool,
    /// `runtimeConfig.portMappings` (the `portMappings` capability), checked; only read
    /// for ADD (DEL and CHECK ignore them: the manager knows what the pod holds).
    pub port_mappings: Vec<PortMapping>,
    /// `prevResult`, when chained after another plugin (or for CHECK/DEL).
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Vec<AttachmentRef>,
}

/// The validated environment.
#[derive(Debug, Clone)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for STATUS, GC, VERSION).
    pub container_id: String,
    /// `CNI_NETNS`; `None` when absent (DEL may come without it).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (empty for STATUS, GC, VERSION).
    pub ifname: String,
    /// The pod, from `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`).
    pub pod: Option<PodRef>,
    /// `ENI_EXCLUSIVE=true` in `CNI_ARGS`.
    pub args_exclusive: bool,
}

/// One validated invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The environment.
    pub env: Env,
    /// The netconf (`None` only for VERSION).
    pub conf: Option<NetConf>,
}

impl Invocation {
    /// Whether this pod asks for a whole ENI.
    pub fn wants_exclusive(&self, conf: &NetConf) -> bool {
        conf.mode == Mode::Exclusive || conf.runtime_exclusive || self.env.args_exclusive
    }
}

/// Problems found so far; the most fundamental class decides the code.
#[derive(Debug, Default)]
struct Problems(Vec<(u32, String)>);

impl Problems {
    fn add(&mut self, code: u32, msg: impl Into<String>) {
        self.0.push((code, msg.into()));
    }

    fn into_result(self) -> Result<(), CniError> {
        if self.0.is_empty() {
            return Ok(());
        }
        const ORDER: [u32; 6] = [
            DECODE_FAILURE,
            INCOMPATIBLE_VERSION,
            UNSUPPORTED_FIELD,
            INVALID_NETCONF,
            INVALID_ENV,
            UNKNOWN_CONTAINER,
        ];
        let code = ORDER
            .into_iter()
            .find(|c| self.0.iter().any(|(code, _)| code == c))
            .unwrap_or(self.0[0].0);
        let list: Vec<&str> = self.0.iter().map(|(_, m)| m.as_str()).collect();
        let msg = if list.len() == 1 {
            list[0].to_string()
        } else {
            format!("{} problems: {}", list.len(), list.join("; "))
        };
        Err(CniError::new(
            code,
            msg,
            "nothing was changed on the node; fix the netconf or the runtime's CNI_* environment",
        ))
    }
}

/// Reads the version a netconf asks for without validating anything else, for error
/// objects and VERSION. `None` if stdin is not a JSON object with a string `cniVersion`.
pub fn requested_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

/// Validates the environment (`var` looks a variable up) and the netconf bytes.
pub fn parse(var: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Invocation, CniError> {
    let mut problems = Problems::default();
    let command = match var("CNI_COMMAND") {
        None => {
            problems.add(
                INVALID_ENV,
                "CNI_COMMAND is not set (expected ADD, DEL, CHECK, STATUS, GC or VERSION)",
            );
            None
        }
        Some(c) => match Command::parse(&c) {
            Some(cmd) => Some(cmd),
            None => {
                problems.add(
                    INVALID_ENV,
                    format!("CNI_COMMAND={c:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
                );
                None
            }
        },
    };
    if command == Some(Command::Version) {
        // VERSION needs nothing else; a netconf, if any, only names the version to answer in.
        return Ok(Invocation {
            env: Env {
                command: Command::Version,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                pod: None,
                args_exclusive: false,
            },
            conf: None,
        });
    }
    let env = parse_env(var, command.unwrap_or(Command::Status), &mut problems);
    let conf = parse_netconf(stdin, command, &mut problems);
    problems.into_result()?;
    let (Some(command), Some(conf)) = (command, conf) else {
        // Unreachable: a missing command or netconf always leaves a problem behind.
        return Err(CniError::new(INVALID_ENV, "invalid invocation", ""));
    };
    Ok(Invocation {
        env: Env { command, ..env },
        conf: Some(conf),
    })
}

fn parse_env(var: &dyn Fn(&str) -> Option<String>, command: Command, p: &mut Problems) -> Env {
    let nonempty = |name: &str| var(name).filter(|v| !v.is_empty());
    let mut env = Env {
        command,
        container_id: String::new(),
        netns: None,
        ifname: String::new(),
        pod: None,
        args_exclusive: false,
    };
    if command.per_container() {
        match nonempty("CNI_CONTAINERID") {
            None => p.add(INVALID_ENV, "CNI_CONTAINERID is not set"),
            Some(id) => {
                if id.len() > 1024
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                {
                    p.add(INVALID_ENV, format!("CNI_CONTAINERID={id:?} is invalid (letters, digits, '_', '.', '-' only)"));
                } else {
                    env.container_id = id;
                }
            }
        }
        match nonempty("CNI_IFNAME") {
            None => p.add(INVALID_ENV, "CNI_IFNAME is not set"),
            Some(name) => match eni_kernel::link::validate_link_name(&name) {
                Ok(()) => env.ifname = name,
                Err(_) => p.add(INVALID_ENV, format!("CNI_IFNAME={name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)")),
            },
        }
        match nonempty("CNI_NETNS") {
            None if command != Command::Del => {
                p.add(INVALID_ENV, "CNI_NETNS is not set");
            }
            None => {}
            Some(ns) => {
                let path = PathBuf::from(&ns);
                if !path.is_absolute() {
                    p.add(
                        INVALID_ENV,
                        format!("CNI_NETNS={ns:?} is not an absolute path"),
                    );
                } else {
                    if command != Command::Del && !path.exists() {
                        p.add(UNKNOWN_CONTAINER, format!("CNI_NETNS={ns:?} does not exist: the container's network namespace is gone"));
                    }
                    env.netns = Some(path);
                }
            }
        }
    }
    if let Some(args) = nonempty("CNI_ARGS") {
        parse_args(&args, &mut env, p);
    }
    env
}

/// `CNI_ARGS`: `K=V;K=V`. Unknown keys are ignored (as `IgnoreUnknown=1` asks).
fn parse_args(args: &str, env: &mut Env, p: &mut Problems) {
    let mut kv = BTreeMap::new();
    for item in args.split(';').filter(|s| !s.is_empty()) {
        match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                kv.insert(k.to_string(), v.to_string());
            }
            _ => p.add(
                INVALID_ENV,
                format!("CNI_ARGS item {item:?} is not KEY=VALUE"),
            ),
        }
    }
    if let Some(v) = kv.get("ENI_EXCLUSIVE") {
        match v.to_ascii_lowercase().as_str() {
            "true" | "1" => env.args_exclusive = true,
            "false" | "0" | "" => {}
            _ => p.add(
                INVALID_ENV,
                format!("CNI_ARGS ENI_EXCLUSIVE={v:?} is not true or false"),
            ),
        }
    }
    match (kv.get("K8S_POD_NAMESPACE"), kv.get("K8S_POD_NAME")) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
            env.pod = Some(PodRef {
                namespace: ns.clone(),
                name: name.clone(),
                uid: kv.get("K8S_POD_UID").filter(|u| !u.is_empty()).cloned(),
            });
        }
        _ => {}
    }
}

/// Top-level netconf keys the spec defines (or a runtime inserts) that we accept.
const STANDARD_KEYS: [&str; 8] = [
    "cniVersion",
    "name",
    "type",
    "args",
    "dns",
    "capabilities",
    "runtimeConfig",
    "prevResult",
];
/// Our own keys.
const OWN_KEYS: [&str; 6] = [
    "socket",
    "mode",
    "mtu",
    "log_file",
    "log_level",
    "timeout_ms",
];

fn parse_netconf(stdin: &[u8], command: Option<Command>, p: &mut Problems) -> Option<NetConf> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        p.add(
            DECODE_FAILURE,
            "the network configuration on stdin is empty",
        );
        return None;
    }
    let value: Value = match serde_json::from_slice(stdin) {
        Ok(v) => v,
        Err(e) => {
            p.add(
                DECODE_FAILURE,
                format!("the network configuration on stdin is not valid JSON: {e}"),
            );
            return None;
        }
    };
    let Some(obj) = value.as_object() else {
        p.add(
            DECODE_FAILURE,
            "the network configuration on stdin is not a JSON object",
        );
        return None;
    };

    let cni_version = match obj.get("cniVersion") {
        None => {
            p.add(
                INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion is missing (supported: {})",
                    version::SUPPORTED.join(", ")
                ),
            );
            None
        }
        Some(Value::String(v)) => match CniVersion::parse(v) {
            Some(v) => Some(v),
            None => {
                p.add(
                    INCOMPATIBLE_VERSION,
                    format!(
                        "cniVersion {v:?} is not supported (supported: {})",
                        version::SUPPORTED.join(", ")
                    ),
                );
                None
            }
        },
        Some(other) => {
            p.add(
                INCOMPATIBLE_VERSION,
                format!("cniVersion must be a string, got {other}"),
            );
            None
        }
    };

    for key in obj.keys() {
        if key == "ipam" {
            p.add(UNSUPPORTED_FIELD, "field \"ipam\" is not supported: eni-cni gets addresses from eni-manager; remove it");
        } else if key == "ipMasq" {
            if obj.get(key) == Some(&Value::Bool(true)) {
                p.add(UNSUPPORTED_FIELD, "field \"ipMasq\": true is not supported: pods egress with their own VPC address");
            }
        } else if key != "cni.dev/valid-attachments"
            && !STANDARD_KEYS.contains(&key.as_str())
            && !OWN_KEYS.contains(&key.as_str())
        {
            p.add(
                UNSUPPORTED_FIELD,
                format!(
                    "unknown field {key:?} (eni-cni's fields: {})",
                    OWN_KEYS.join(", ")
                ),
            );
        }
    }

    let name = match obj.get("name") {
        Some(Value::String(n)) if valid_network_name(n) => n.clone(),
        Some(Value::String(n)) => {
            p.add(INVALID_NETCONF, format!("name {n:?} is invalid (letters, digits, '_', '.', '-', starting with a letter or digit)"));
            String::new()
        }
        None => {
            p.add(INVALID_NETCONF, "name is missing");
            String::new()
        }
        Some(other) => {
            p.add(
                INVALID_NETCONF,
                format!("name must be a string, got {other}"),
            );
            String::new()
        }
    };
    match obj.get("type") {
        Some(Value::String(t)) if t == PLUGIN_TYPE => {}
        Some(t) => p.add(
            INVALID_NETCONF,
            format!("type is {t}, expected \"{PLUGIN_TYPE}\""),
        ),
        None => p.add(
            INVALID_NETCONF,
            format!("type is missing (expected \"{PLUGIN_TYPE}\")"),
        ),
    }

    let socket = match obj.get("socket") {
        None => PathBuf::from(eni_rpc::DEFAULT_SOCKET_PATH),
        Some(Value::String(s)) => {
            let path = PathBuf::from(s);
            if !path.is_absolute() {
                p.add(
                    INVALID_NETCONF,
                    format!("socket {s:?} is not an absolute path"),
                );
            } else if s.len() > MAX_SOCKET_PATH {
                p.add(INVALID_NETCONF, format!("socket path is {} bytes long; a unix socket path holds at most {MAX_SOCKET_PATH}", s.len()));
            } else if s.ends_with('/') {
                p.add(
                    INVALID_NETCONF,
                    format!("socket {s:?} names a directory, not a socket"),
                );
            }
            path
        }
        Some(other) => {
            p.add(
                INVALID_NETCONF,
                format!("socket must be a string path, got {other}"),
            );
            PathBuf::new()
        }
    };

    let mode = match obj.get("mode") {
        None => Mode::Auto,
        Some(Value::String(m)) => match m.as_str() {
            "auto" => Mode::Auto,
            "exclusive" => Mode::Exclusive,
            "ipvlan" => Mode::Ipvlan,
            "veth" => Mode::Veth,
            _ => {
                p.add(
                    INVALID_NETCONF,
                    format!("mode {m:?} is unknown (auto, exclusive, ipvlan or veth)"),
                );
                Mode::Auto
            }
        },
        Some(other) => {
            p.add(
                INVALID_NETCONF,
                format!("mode must be a string (auto, exclusive, ipvlan or veth), got {other}"),
            );
            Mode::Auto
        }
    };

    let mtu = match obj.get("mtu") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(m @ 68..=65535) => u32::try_from(m).ok(),
            _ => {
                p.add(INVALID_NETCONF, format!("mtu {v} is invalid (an integer from 68 to 65535, or leave it out to use the ENI's)"));
                None
            }
        },
    };

    let log_file = match obj.get("log_file") {
        None | Some(Value::Null) => None,
        Some(Value::String(f)) if Path::new(f).is_absolute() && !f.ends_with('/') => {
            Some(PathBuf::from(f))
        }
        Some(other) => {
            p.add(
                INVALID_NETCONF,
                format!("log_file {other} is not an absolute file path"),
            );
            None
        }
    };
    let log_level = match obj.get("log_level") {
        None | Some(Value::Null) => Level::Info,
        Some(Value::String(l)) => match Level::parse(l) {
            Some(level) => level,
            None => {
                p.add(
                    INVALID_NETCONF,
                    format!("log_level {l:?} is unknown (error, warn, info or debug)"),
                );
                Level::Info
            }
        },
        Some(other) => {
            p.add(
                INVALID_NETCONF,
                format!("log_level must be a string, got {other}"),
            );
            Level::Info
        }
    };
    let timeout_ms = match obj.get("timeout_ms") {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_u64() {
            Some(t) if t <= MAX_TIMEOUT_MS => u32::try_from(t).unwrap_or(0),
            _ => {
                p.add(INVALID_NETCONF, format!("timeout_ms {v} is invalid (milliseconds, 0 to {MAX_TIMEOUT_MS}; 0 = the manager's default)"));
                0
            }
        },
    };

    let port_mappings = match (command, obj.get("runtimeConfig")) {
        (Some(Command::Add), Some(Value::Object(rc))) => parse_port_mappings(rc, p),
        _ => Vec::new(),
    };
    let runtime_exclusive = match obj.get("runtimeConfig") {
        None | Some(Value::Null) => false,
        Some(Value::Object(rc)) => match rc.get("exclusiveEni") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                p.add(
                    INVALID_NETCONF,
                    format!("runtimeConfig.exclusiveEni must be true or false, got {other}"),
                );
                false
            }
        },
        Some(other) => {
            p.add(
                INVALID_NETCONF,
                format!("runtimeConfig must be an object, got {other}"),
            );
            false
        }
    };
    for key in ["capabilities", "args"] {
        if let Some(v) = obj.get(key) {
            if !v.is_object() && !v.is_null() {
                p.add(INVALID_NETCONF, format!("{key} must be an object, got {v}"));
            }
        }
    }

    let prev_result = match obj.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => {
            if let Err(e) = crate::result::CniResult::from_value(v) {
                p.add(DECODE_FAILURE, format!("prevResult cannot be decoded: {e}"));
            }
            Some(v.clone())
        }
        Some(other) => {
            p.add(
                DECODE_FAILURE,
                format!("prevResult must be an object, got {other}"),
            );
            None
        }
    };

    let valid_attachments = parse_valid_attachments(obj, command, p);

    Some(NetConf {
        cni_version: cni_version?,
        name,
        socket,
        mode,
        mtu,
        log_file,
        log_level,
        timeout_ms,
        runtime_exclusive,
        port_mappings,
        prev_result,
        valid_attachments,
    })
}

/// `runtimeConfig.portMappings`: `[{"hostPort", "containerPort", "protocol", "hostIP"}]`, as
/// the runtime fills it for a pod's `hostPort`s when the conflist gives this plugin the
/// `portMappings` capability. Every entry is checked before anything is asked for: ports
/// 1-65535, protocol `tcp` or `udp` (any case; absent or empty: `tcp`), `hostIP` absent,
/// empty, `0.0.0.0` (every node address) or one IPv4 address, and no two entries on the
/// same host port, protocol and address.
fn parse_port_mappings(rc: &Map<String, Value>, p: &mut Problems) -> Vec<PortMapping> {
    let items = match rc.get("portMappings") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            p.add(
                INVALID_NETCONF,
                format!("runtimeConfig.portMappings must be a list of {{hostPort, containerPort, protocol, hostIP}}, got {other}"),
            );
            return Vec::new();
        }
    };
    let mut out: Vec<PortMapping> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = format!("runtimeConfig.portMappings[{i}]");
        let Some(m) = item.as_object() else {
            p.add(
                INVALID_NETCONF,
                format!("{field} must be an object {{hostPort, containerPort, protocol, hostIP}}, got {item}"),
            );
            continue;
        };
        let port = |name: &str, p: &mut Problems| -> Option<u16> {
            match m.get(name) {
                Some(v) => match v.as_u64().and_then(|n| u16::try_from(n).ok()) {
                    Some(n) if n > 0 => Some(n),
                    _ => {
                        p.add(
                            INVALID_NETCONF,
                            format!("{field}.{name} {v} is invalid; give a port from 1 to 65535"),
                        );
                        None
                    }
                },
                None => {
                    p.add(
                        INVALID_NETCONF,
                        format!("{field}.{name} is missing; give a port from 1 to 65535"),
                    );
                    None
                }
            }
        };
        let host_port = port("hostPort", p);
        let container_port = port("containerPort", p);
        let protocol = match m.get("protocol") {
            None | Some(Value::Null) => Some(PortProtocol::Tcp),
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "" | "tcp" => Some(PortProtocol::Tcp),
                "udp" => Some(PortProtocol::Udp),
                "sctp" => {
                    p.add(
                        UNSUPPORTED_FIELD,
                        format!("{field}.protocol \"{s}\" is not supported: eni-cni serves TCP and UDP host ports only; use tcp or udp, or chain the reference portmap plugin for SCTP"),
                    );
                    None
                }
                _ => {
                    p.add(
                        INVALID_NETCONF,
                        format!("{field}.protocol {s:?} is unknown; use tcp or udp"),
                    );
                    None
                }
            },
            Some(other) => {
                p.add(
                    INVALID_NETCONF,
                    format!("{field}.protocol must be a string (tcp or udp), got {other}"),
                );
                None
            }
        };
        let host_ip = match m.get("hostIP") {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) if s.is_empty() => Some(None),
            Some(Value::String(s)) => match s.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) if ip.is_unspecified() => Some(None),
                Ok(std::net::IpAddr::V4(ip)) => Some(Some(ip)),
                Ok(std::net::IpAddr::V6(_)) => {
                    p.add(
                        UNSUPPORTED_FIELD,
                        format!("{field}.hostIP {s} is IPv6, which eni-cni does not support for host ports; leave hostIP empty or give an IPv4 address of the node"),
                    );
                    None
                }
                Err(_) => {
                    p.add(
                        INVALID_NETCONF,
                        format!("{field}.hostIP {s:?} is not an IP address; leave it empty (every node address) or give an IPv4 address of the node"),
                    );
                    None
                }
            },
            Some(other) => {
                p.add(
                    INVALID_NETCONF,
                    format!("{field}.hostIP must be a string, got {other}"),
                );
                None
            }
        };
        let (Some(host_port), Some(container_port), Some(protocol), Some(host_ip)) =
            (host_port, container_port, protocol, host_ip)
        else {
            continue;
        };
        let mapping = PortMapping {
            host_port,
            container_port,
            protocol,
            host_ip,
        };
        if let Some(j) = out.iter().position(|o| {
            o.host_port == host_port
                && o.protocol == protocol
                && (o.host_ip.is_none() || host_ip.is_none() || o.host_ip == host_ip)
        }) {
            p.add(
                INVALID_NETCONF,
                format!(
                    "{field} uses host port {host_port}/{} again (already in entry {j} of runtimeConfig.portMappings); give each hostPort, protocol and hostIP once",
                    protocol.as_str()
                ),
            );
            continue;
        }
        out.push(mapping);
    }
    out
}

fn parse_valid_attachments(
    obj: &Map<String, Value>,
    command: Option<Command>,
    p: &mut Problems,
) -> Vec<AttachmentRef> {
    let mut out = Vec::new();
    match obj.get("cni.dev/valid-attachments") {
        None | Some(Value::Null) => {
            if command == Some(Command::Gc) {
                p.add(
                    INVALID_NETCONF,
                    "GC needs cni.dev/valid-attachments (an empty list releases everything)",
                );
            }
        }
        Some(Value::Array(items)) => {
            for item in items {
                let id = item.get("containerID").and_then(Value::as_str);
                let ifname = item.get("ifname").and_then(Value::as_str);
                match (id, ifname) {
                    (Some(id), Some(ifname)) if !id.is_empty() && !ifname.is_empty() => {
                        out.push(AttachmentRef {
                            container_id: id.to_string(),
                            ifname: ifname.to_string(),
                        });
                    }
                    _ => p.add(
                        INVALID_NETCONF,
                        format!(
                            "cni.dev/valid-attachments entry {item} needs containerID and ifname"
                        ),
                    ),
                }
            }
        }
        Some(other) => p.add(
            INVALID_NETCONF,
            format!("cni.dev/valid-attachments must be a list, got {other}"),
        ),
    }
    out
}

fn valid_network_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(env: &[(&str, &str)], conf: &str) -> Result<Invocation, CniError> {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        parse(&|k| map.get(k).cloned(), conf.as_bytes())
    }

    const ADD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_IFNAME", "eth0"),
    ];
    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"eni","type":"eni-cni","mode":"veth"}"#;

    #[test]
    fn a_good_invocation_parses_with_defaults() {
        let inv = run(&ADD, GOOD).unwrap();
        let conf = inv.conf.unwrap();
        assert_eq!(conf.socket, Path::new(eni_rpc::DEFAULT_SOCKET_PATH));
        assert_eq!(conf.mode, Mode::Veth);
        assert_eq!(conf.mtu, None);
        assert_eq!(conf.timeout_ms, 0);
        assert_eq!(inv.env.ifname, "eth0");
    }

    #[test]
    fn pod_and_exclusive_come_from_cni_args() {
        let mut env = ADD.to_vec();
        env.push((
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=u1;ENI_EXCLUSIVE=true",
        ));
        let inv = run(&env, GOOD).unwrap();
        let pod = inv.env.pod.clone().unwrap();
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str()),
            ("shop", "cart-0")
        );
        assert_eq!(pod.uid.as_deref(), Some("u1"));
        assert!(inv.wants_exclusive(inv.conf.as_ref().unwrap()));
    }

    #[test]
    fn runtime_config_asks_for_exclusive() {
        let conf = r#"{"cniVersion":"1.1.0","name":"eni","type":"eni-cni","runtimeConfig":{"exclusiveEni":true}}"#;
        let inv = run(&ADD, conf).unwrap();
        assert!(inv.wants_exclusive(inv.conf.as_ref().unwrap()));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let env = [("CNI_COMMAND", "ADD")];
        let conf = r#"{"cniVersion":"1.0.0","name":"eni","type":"bridge","mode":"fast","mtu":10}"#;
        let e = run(&env, conf).unwrap_err();
        assert_eq!(e.code, INVALID_NETCONF);
        for needle in [
            "CNI_CONTAINERID",
            "CNI_IFNAME",
            "CNI_NETNS",
            "type",
            "mode",
            "mtu",
        ] {
            assert!(e.msg.contains(needle), "{needle} missing from {}", e.msg);
        }
        assert!(e.msg.starts_with("6 problems"), "{}", e.msg);
    }

    #[test]
    fn del_without_netns_is_fine() {
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ];
        let inv = run(&env, GOOD).unwrap();
        assert!(inv.env.netns.is_none());
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/gone-already"),
        ];
        assert!(run(&env, GOOD).is_ok());
    }

    fn add_with_mappings(mappings: &str) -> Result<Vec<PortMapping>, CniError> {
        let conf = format!(
            r#"{{"cniVersion":"1.1.0","name":"eni","type":"eni-cni","capabilities":{{"portMappings":true}},"runtimeConfig":{{"portMappings":{mappings}}}}}"#
        );
        run(&ADD, &conf).map(|inv| inv.conf.unwrap().port_mappings)
    }

    #[test]
    fn port_mappings_are_read_from_runtime_config() {
        let got = add_with_mappings(
            r#"[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},
                {"hostPort":8080,"containerPort":80,"protocol":"UDP","hostIP":""},
                {"hostPort":9090,"containerPort":90,"hostIP":"192.168.1.10"},
                {"hostPort":9091,"containerPort":91,"protocol":"Tcp","hostIP":"0.0.0.0"}]"#,
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: PortProtocol::Tcp,
                    host_ip: None
                },
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: PortProtocol::Udp,
                    host_ip: None
                },
                PortMapping {
                    host_port: 9090,
                    container_port: 90,
                    protocol: PortProtocol::Tcp,
                    host_ip: Some("192.168.1.10".parse().unwrap())
                },
                PortMapping {
                    host_port: 9091,
                    container_port: 91,
                    protocol: PortProtocol::Tcp,
                    host_ip: None
                },
            ]
        );
        assert!(add_with_mappings("[]").unwrap().is_empty());
        assert!(add_with_mappings("null").unwrap().is_empty());
        assert!(run(&ADD, GOOD)
            .unwrap()
            .conf
            .unwrap()
            .port_mappings
            .is_empty());
    }

    #[test]
    fn bad_port_mappings_are_refused_naming_the_field() {
        let e = add_with_mappings(
            r#"[{"hostPort":0,"containerPort":80},
                {"hostPort":70000,"containerPort":80},
                {"hostPort":81,"containerPort":"80"},
                {"hostPort":82,"containerPort":80,"protocol":"icmp"},
                {"hostPort":83,"containerPort":80,"hostIP":"not-an-ip"},
                {"containerPort":80},
                {"hostPort":84,"containerPort":80,"hostIP":"10.0.0.1"},
                {"hostPort":84,"containerPort":81}]"#,
        )
        .unwrap_err();
        assert_eq!(e.code, INVALID_NETCONF);
        for needle in [
            "runtimeConfig.portMappings[0].hostPort 0 is invalid; give a port from 1 to 65535",
            "runtimeConfig.portMappings[1].hostPort 70000 is invalid",
            "runtimeConfig.portMappings[2].containerPort \"80\" is invalid",
            "runtimeConfig.portMappings[3].protocol \"icmp\" is unknown; use tcp or udp",
            "runtimeConfig.portMappings[4].hostIP \"not-an-ip\" is not an IP address",
            "runtimeConfig.portMappings[5].hostPort is missing",
            "runtimeConfig.portMappings[7] uses host port 84/tcp again (already in entry 0",
        ] {
            assert!(e.msg.contains(needle), "{needle:?} not in {}", e.msg);
        }
        let e = add_with_mappings(r#"[{"hostPort":80,"containerPort":80,"protocol":"SCTP"}]"#)
            .unwrap_err();
        assert_eq!(e.code, UNSUPPORTED_FIELD);
        assert!(
            e.msg
                .contains("runtimeConfig.portMappings[0].protocol \"SCTP\" is not supported"),
            "{}",
            e.msg
        );
        let e = add_with_mappings(
            r#"[{"hostPort":80,"containerPort":80,"protocol":"tcp","hostIP":"fd00::1"}]"#,
        )
        .unwrap_err();
        assert_eq!(e.code, UNSUPPORTED_FIELD);
        assert!(
            e.msg
                .contains("runtimeConfig.portMappings[0].hostIP fd00::1 is IPv6"),
            "{}",
            e.msg
        );
        let e = add_with_mappings(r#"{"hostPort":80}"#).unwrap_err();
        assert!(
            e.msg.contains("runtimeConfig.portMappings must be a list"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn del_ignores_port_mappings() {
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ];
        let conf = r#"{"cniVersion":"1.1.0","name":"eni","type":"eni-cni",
            "runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80,"protocol":"sctp"}]}}"#;
        let inv = run(&env, conf).expect("DEL must not fail on what only ADD uses");
        assert!(inv.conf.unwrap().port_mappings.is_empty());
    }

    #[test]
    fn gc_reads_valid_attachments() {
        let env = [("CNI_COMMAND", "GC")];
        let conf = r#"{"cniVersion":"1.1.0","name":"eni","type":"eni-cni",
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#;
        let inv = run(&env, conf).unwrap();
        assert_eq!(inv.conf.unwrap().valid_attachments.len(), 1);
        let conf = r#"{"cniVersion":"1.1.0","name":"eni","type":"eni-cni"}"#;
        assert_eq!(run(&env, conf).unwrap_err().code, INVALID_NETCONF);
    }
}
