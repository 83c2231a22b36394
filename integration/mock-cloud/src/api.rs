//! The ECS/VPC actions: parameter parsing, the rules each action enforces, and the JSON
//! shapes of answers and errors.
//!
//! Handlers work on `&mut Cloud` under the server's lock and never block or touch the
//! kernel; signature checks, faults and HTTP live elsewhere.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use crate::state::{now_ms, Cloud, Eni, Held, IdemRecord, Status, Transition};

/// Every action the emulator answers.
pub const ACTIONS: &[&str] = &[
    "CreateNetworkInterface",
    "AttachNetworkInterface",
    "DetachNetworkInterface",
    "DeleteNetworkInterface",
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "DescribeNetworkInterfaces",
    "DescribeNetworkInterfaceAttribute",
    "DescribeInstanceTypes",
    "DescribeVSwitches",
    "DescribeInstances",
    "TagResources",
    "UntagResources",
];

/// Actions whose `ClientToken` makes them idempotent.
const IDEMPOTENT: &[&str] = &[
    "CreateNetworkInterface",
    "AssignPrivateIpAddresses",
    "AttachNetworkInterface",
];

/// Parameters that do not take part in idempotency comparison.
const COMMON: &[&str] = &[
    "Signature",
    "SignatureNonce",
    "SignatureMethod",
    "SignatureVersion",
    "SignatureType",
    "Timestamp",
    "AccessKeyId",
    "SecurityToken",
    "Format",
    "Version",
    "Action",
];

/// An API error: HTTP status, code and message, as the cloud answers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Error code, for example `InvalidEniId.NotFound`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// For throttling: when a call would pass, in milliseconds.
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// A 400 error.
    pub fn bad(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, code, message)
    }

    /// `MissingParameter` for `name`.
    pub fn missing(name: &str) -> ApiError {
        ApiError::bad(
            "MissingParameter",
            format!("The input parameter {name} that is mandatory for processing this request is not supplied."),
        )
    }

    /// `InvalidParameter` naming `name`.
    pub fn invalid(name: &str, why: impl std::fmt::Display) -> ApiError {
        ApiError::bad(
            "InvalidParameter",
            format!("The specified parameter {name} is not valid: {why}"),
        )
    }

    fn eni_not_found(id: &str) -> ApiError {
        ApiError::new(
            404,
            "InvalidEniId.NotFound",
            format!("The specified NetworkInterfaceId {id} does not exist."),
        )
    }

    fn state(expected: &str, current: Status) -> ApiError {
        ApiError::bad(
            "InvalidOperation.InvalidEniState",
            format!(
                "Expecting status is {expected}, while current status is {}.",
                current.as_str()
            ),
        )
    }

    /// The error body.
    pub fn body(&self, request_id: &str) -> Value {
        json!({
            "RequestId": request_id,
            "HostId": "ecs.mock-cloud.local",
            "Code": self.code,
            "Message": self.message,
            "Recommend": format!("https://api.aliyun.com/troubleshoot?q={}", self.code),
        })
    }
}

/// Request parameters, query and form merged, in order.
#[derive(Debug, Clone, Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of a required parameter.
    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        match self.get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::missing(name)),
        }
    }

    /// An optional integer within `lo..=hi`.
    pub fn int(&self, name: &str, lo: u32, hi: u32) -> Result<Option<u32>, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::invalid(
                    name,
                    format!("{v:?} must be an integer from {lo} to {hi}"),
                )),
            },
        }
    }

    /// `name.1`, `name.2`, ... in index order; at most `max` entries.
    pub fn list(&self, name: &str, max: usize) -> Result<Vec<String>, ApiError> {
        let prefix = format!("{name}.");
        let mut items: BTreeMap<u32, String> = BTreeMap::new();
        for (k, v) in &self.0 {
            if let Some(idx) = k.strip_prefix(&prefix) {
                let n: u32 = idx
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| ApiError::invalid(k, "list indexes start at 1"))?;
                items.insert(n, v.clone());
            }
        }
        if items.len() > max {
            return Err(ApiError::invalid(
                name,
                format!("at most {max} items, got {}", items.len()),
            ));
        }
        Ok(items.into_values().collect())
    }

    /// `Tag.N.Key` / `Tag.N.Value` pairs (value optional), in index order.
    pub fn tags(&self, name: &str) -> Result<Vec<(String, Option<String>)>, ApiError> {
        let prefix = format!("{name}.");
        let mut items: BTreeMap<u32, (Option<String>, Option<String>)> = BTreeMap::new();
        for (k, v) in &self.0 {
            let Some(rest) = k.strip_prefix(&prefix) else {
                continue;
            };
            let (idx, field) = rest
                .split_once('.')
                .ok_or_else(|| ApiError::invalid(k, "expected Tag.N.Key or Tag.N.Value"))?;
            let n: u32 = idx
                .parse()
                .ok()
                .filter(|n| (1..=20).contains(n))
                .ok_or_else(|| ApiError::invalid(k, "tag indexes run from 1 to 20"))?;
            let e = items.entry(n).or_default();
            match field {
                "Key" => e.0 = Some(v.clone()),
                "Value" => e.1 = Some(v.clone()),
                _ => return Err(ApiError::invalid(k, "expected Key or Value")),
            }
        }
        items
            .into_iter()
            .map(|(n, (k, v))| match k {
                Some(k) if !k.is_empty() => Ok((k, v)),
                _ => Err(ApiError::missing(&format!("{name}.{n}.Key"))),
            })
            .collect()
    }

    /// A canonical form of the parameters that matter for idempotency.
    pub fn fingerprint(&self) -> String {
        let mut v: Vec<&(String, String)> = self
            .0
            .iter()
            .filter(|(k, _)| !COMMON.contains(&k.as_str()))
            .collect();
        v.sort();
        v.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }
}

fn parse_ips(name: &str, values: &[String]) -> Result<Vec<Ipv4Addr>, ApiError> {
    values
        .iter()
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::invalid(name, format!("{v:?} is not an IPv4 address")))
        })
        .collect()
}

fn parse_prefixes(name: &str, values: &[String]) -> Result<Vec<Ipv4Net>, ApiError> {
    values
        .iter()
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::invalid(name, format!("{v:?} is not an IPv4 prefix")))
        })
        .collect()
}

/// The ECS API version.
pub const ECS_VERSION: &str = "2014-05-26";
/// The VPC API version (`DescribeVSwitches` only).
pub const VPC_VERSION: &str = "2016-04-28";

fn check_version(action: &str, version: Option<&str>) -> Result<(), ApiError> {
    let Some(v) = version.filter(|v| !v.is_empty()) else {
        return Err(ApiError::missing("Version"));
    };
    let ok = v == ECS_VERSION || (action == "DescribeVSwitches" && v == VPC_VERSION);
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            "InvalidVersion",
            format!(
                "Specified parameter Version {v} is not valid for {action}; use {ECS_VERSION}{}.",
                if action == "DescribeVSwitches" {
                    format!(" or {VPC_VERSION}")
                } else {
                    String::new()
                }
            ),
        ))
    }
}

/// Runs an action. Returns the answer without `RequestId` and whether state changed.
pub fn dispatch(cloud: &mut Cloud, action: &str, p: &Params) -> Result<(Value, bool), ApiError> {
    check_version(action, p.get("Version"))?;
    if let Some(region) = p.get("RegionId") {
        if region != cloud.world.region {
            return Err(ApiError::new(
                404,
                "InvalidRegionId.NotFound",
                format!(
                    "The specified RegionId {region} does not exist; this cloud is {}.",
                    cloud.world.region
                ),
            ));
        }
    }
    let token = match p.get("ClientToken") {
        Some(t) if IDEMPOTENT.contains(&action) => {
            if t.len() > 64 || !t.is_ascii() {
                return Err(ApiError::invalid(
                    "ClientToken",
                    "at most 64 ASCII characters",
                ));
            }
            Some(t.to_string())
        }
        _ => None,
    };
    if let Some(t) = &token {
        if let Some(rec) = cloud.idempotency.get(&(action.to_string(), t.clone())) {
            if rec.fingerprint == p.fingerprint() {
                return Ok((rec.response.clone(), false));
            }
            return Err(ApiError::bad(
                "IdempotentParameterMismatch",
                format!("The ClientToken {t} was used before with different parameters."),
            ));
        }
    }
    let now = now_ms();
    let (answer, changed) = match action {
        "CreateNetworkInterface" => (create(cloud, p, now)?, true),
        "AttachNetworkInterface" => (attach(cloud, p, now)?, true),
        "DetachNetworkInterface" => (detach(cloud, p, now)?, true),
        "DeleteNetworkInterface" => (delete(cloud, p, now)?, true),
        "AssignPrivateIpAddresses" => (assign(cloud, p, now)?, true),
        "UnassignPrivateIpAddresses" => (unassign(cloud, p)?, true),
        "DescribeNetworkInterfaces" => (describe_enis(cloud, p)?, false),
        "DescribeNetworkInterfaceAttribute" => {
            let id = p.required("NetworkInterfaceId")?;
            let eni = cloud
                .enis
                .get(id)
                .ok_or_else(|| ApiError::eni_not_found(id))?;
            (eni_json(cloud, eni), false)
        }
        "DescribeInstanceTypes" => (describe_types(cloud, p)?, false),
        "DescribeVSwitches" => (describe_vswitches(cloud, p)?, false),
        "DescribeInstances" => (describe_instances(cloud, p)?, false),
        "TagResources" => (tag(cloud, p)?, true),
        "UntagResources" => (untag(cloud, p)?, true),
        "" => return Err(ApiError::missing("Action")),
        other => {
            return Err(ApiError::new(
                404,
                "InvalidAction.NotFound",
                format!(
                    "Specified api {other} is not found; this emulator answers {}.",
                    ACTIONS.join(", ")
                ),
            ))
        }
    };
    if let Some(t) = token {
        cloud.idempotency.insert(
            (action.to_string(), t),
            IdemRecord {
                fingerprint: p.fingerprint(),
                response: answer.clone(),
                at_ms: now,
            },
        );
    }
    Ok((answer, changed))
}

fn security_groups(cloud: &Cloud, p: &Params) -> Result<Vec<String>, ApiError> {
    let mut sgs = p.list("SecurityGroupIds", 5)?;
    if let Some(one) = p.get("SecurityGroupId") {
        if !one.is_empty() && !sgs.iter().any(|s| s == one) {
            sgs.insert(0, one.to_string());
        }
    }
    if sgs.is_empty() {
        return Err(ApiError::missing("SecurityGroupId"));
    }
    for sg in &sgs {
        if !cloud.world.security_groups.contains(sg) {
            return Err(ApiError::new(
                404,
                "InvalidSecurityGroupId.NotFound",
                format!("The specified SecurityGroupId {sg} does not exist."),
            ));
        }
    }
    Ok(sgs)
}

fn create(cloud: &mut Cloud, p: &Params, now: u64) -> Result<Value, ApiError> {
    let vsw_id = p.required("VSwitchId")?;
    let vsw = cloud.vswitch(vsw_id).cloned().ok_or_else(|| {
        ApiError::new(
            404,
            "InvalidVSwitchId.NotFound",
            format!("The specified VSwitchId {vsw_id} does not exist."),
        )
    })?;
    let sgs = security_groups(cloud, p)?;
    let explicit = parse_ips("PrivateIpAddress", &p.list("PrivateIpAddress", 49)?)?;
    let count = p.int("SecondaryPrivateIpAddressCount", 1, 49)?;
    let prefix_count = p.int("Ipv4PrefixCount", 1, 10)?;
    let primary: Option<Ipv4Addr> = match p.get("PrimaryIpAddress") {
        Some(v) if !v.is_empty() => Some(v.parse().map_err(|_| {
            ApiError::invalid("PrimaryIpAddress", format!("{v:?} is not an IPv4 address"))
        })?),
        _ => None,
    };
    if count.is_some() && !explicit.is_empty() {
        return Err(ApiError::invalid(
            "SecondaryPrivateIpAddressCount",
            "give either a count or PrivateIpAddress.N, not both",
        ));
    }
    if prefix_count.is_some() && (count.is_some() || !explicit.is_empty()) {
        return Err(ApiError::invalid(
            "Ipv4PrefixCount",
            "secondary IPs and prefixes cannot be mixed in one request",
        ));
    }
    let tags = p.tags("Tag")?;
    // Take everything or nothing.
    let mut taken_ips: Vec<Ipv4Addr> = Vec::new();
    let result = (|| -> Result<(Ipv4Addr, Vec<Ipv4Addr>, Vec<Ipv4Net>), ApiError> {
        let primary_ip = match primary {
            Some(ip) => {
                cloud.take_exact(&vsw, &[ip])?;
                ip
            }
            None => cloud.take_ips(&vsw, 1)?[0],
        };
        taken_ips.push(primary_ip);
        let secondary = if !explicit.is_empty() {
            cloud.take_exact(&vsw, &explicit)?;
            explicit.clone()
        } else if let Some(n) = count {
            cloud.take_ips(&vsw, n)?
        } else {
            Vec::new()
        };
        taken_ips.extend(&secondary);
        let prefixes = match prefix_count {
            Some(n) => cloud.take_prefixes(&vsw, n)?,
            None => Vec::new(),
        };
        Ok((primary_ip, secondary, prefixes))
    })();
    let (primary_ip, secondary, prefixes) = match result {
        Ok(v) => v,
        Err(e) => {
            cloud.free_ips(&vsw.id, &taken_ips);
            return Err(e);
        }
    };
    let seq = cloud.next_seq();
    let id = cloud.new_eni_id();
    let eni = Eni {
        id: id.clone(),
        seq,
        status: Status::Available,
        primary: false,
        vswitch: vsw.id.clone(),
        zone: vsw.zone.clone(),
        mac: crate::state::mac_for(seq),
        primary_ip,
        secondary: secondary
            .into_iter()
            .map(|addr| Held {
                addr,
                visible_ms: now,
            })
            .collect(),
        prefixes: prefixes
            .into_iter()
            .map(|addr| Held {
                addr,
                visible_ms: now,
            })
            .collect(),
        tags: tags
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
        security_groups: sgs,
        instance: None,
        device_index: None,
        creation_time: crate::signature::format_timestamp(time::OffsetDateTime::now_utc()),
        description: p.get("Description").unwrap_or_default().to_string(),
        name: p
            .get("NetworkInterfaceName")
            .unwrap_or_default()
            .to_string(),
        visible_ms: 0,
        transition: None,
    };
    let answer = eni_json(cloud, &eni);
    cloud.enis.insert(id, eni);
    Ok(answer)
}

fn eni_mut<'a>(cloud: &'a mut Cloud, id: &str) -> Result<&'a mut Eni, ApiError> {
    cloud
        .enis
        .get_mut(id)
        .ok_or_else(|| ApiError::eni_not_found(id))
}

fn instance_exists(cloud: &Cloud, id: &str) -> Result<(), ApiError> {
    if cloud.world.instances.iter().any(|i| i.id == id) {
        Ok(())
    } else {
        Err(ApiError::new(
            404,
            "InvalidEcsId.NotFound",
            format!("The specified InstanceId {id} does not exist."),
        ))
    }
}

fn attach(cloud: &mut Cloud, p: &Params, now: u64) -> Result<Value, ApiError> {
    let id = p.required("NetworkInterfaceId")?.to_string();
    let instance = p.required("InstanceId")?.to_string();
    instance_exists(cloud, &instance)?;
    let eni = cloud
        .enis
        .get(&id)
        .ok_or_else(|| ApiError::eni_not_found(&id))?;
    if eni.status != Status::Available {
        return Err(ApiError::state("Available", eni.status));
    }
    let inst = cloud
        .world
        .instances
        .iter()
        .find(|i| i.id == instance)
        .expect("checked above");
    let inst_zone = cloud
        .vswitch(&inst.vswitch)
        .map(|v| v.zone.clone())
        .unwrap_or_default();
    if eni.zone != inst_zone {
        return Err(ApiError::bad(
            "InvalidOperation.EniZoneMismatch",
            format!(
                "The ENI {id} is in zone {} but instance {instance} is in zone {inst_zone}.",
                eni.zone
            ),
        ));
    }
    let itype = cloud
        .instance_type(&instance)
        .cloned()
        .expect("validated world");
    if eni.slots() > itype.eni_private_ip_address_quantity {
        return Err(ApiError::new(
            403,
            "InvalidOperation.Ipv4CountExceeded",
            format!(
                "The ENI {id} holds {} addresses; instance type {} allows {} per ENI.",
                eni.slots(),
                itype.id,
                itype.eni_private_ip_address_quantity
            ),
        ));
    }
    let on_instance: Vec<&Eni> = cloud
        .enis
        .values()
        .filter(|e| e.instance.as_deref() == Some(instance.as_str()))
        .collect();
    if on_instance.len() as u32 >= itype.eni_quantity {
        return Err(ApiError::new(
            403,
            "EniPerInstanceLimitExceeded",
            format!(
                "The instance {instance} already has {} ENIs; instance type {} allows {}.",
                on_instance.len(),
                itype.id,
                itype.eni_quantity
            ),
        ));
    }
    let used: Vec<u32> = on_instance.iter().filter_map(|e| e.device_index).collect();
    let index = (1..).find(|i| !used.contains(i)).expect("unbounded");
    let delay = cloud.timing.attach_ms.pick().as_millis() as u64;
    let fails = rand::random::<f64>() < cloud.timing.attach_failure_rate;
    let eni = eni_mut(cloud, &id)?;
    eni.status = Status::Attaching;
    eni.instance = Some(instance);
    eni.device_index = Some(index);
    eni.transition = Some(Transition {
        due_ms: now + delay,
        fails,
        in_progress: false,
    });
    Ok(json!({}))
}

fn detach(cloud: &mut Cloud, p: &Params, now: u64) -> Result<Value, ApiError> {
    let id = p.required("NetworkInterfaceId")?.to_string();
    let instance = p.required("InstanceId")?.to_string();
    instance_exists(cloud, &instance)?;
    let delay = cloud.timing.detach_ms.pick().as_millis() as u64;
    let eni = eni_mut(cloud, &id)?;
    if eni.primary {
        return Err(ApiError::bad(
            "InvalidOperation.DetachPrimaryEniNotAllowed",
            format!("The ENI {id} is the primary ENI of its instance and cannot be detached."),
        ));
    }
    if eni.instance.as_deref() != Some(instance.as_str()) {
        if eni.status == Status::Available {
            return Err(ApiError::state("InUse", eni.status));
        }
        return Err(ApiError::bad(
            "InvalidOperation.EniInstanceMismatch",
            format!(
                "The ENI {id} is not attached to instance {instance} (it is on {}).",
                eni.instance.as_deref().unwrap_or("no instance")
            ),
        ));
    }
    match eni.status {
        Status::InUse => {}
        Status::Detaching if eni.transition.is_some_and(|t| t.in_progress) => return Ok(json!({})),
        Status::Detaching => {}
        other => return Err(ApiError::state("InUse", other)),
    }
    eni.status = Status::Detaching;
    eni.transition = Some(Transition {
        due_ms: now + delay,
        fails: false,
        in_progress: false,
    });
    Ok(json!({}))
}

fn delete(cloud: &mut Cloud, p: &Params, now: u64) -> Result<Value, ApiError> {
    let id = p.required("NetworkInterfaceId")?.to_string();
    let delay = cloud.timing.delete_ms.pick().as_millis() as u64;
    let eni = eni_mut(cloud, &id)?;
    match eni.status {
        Status::Available => {}
        Status::Deleting => return Ok(json!({})),
        other => return Err(ApiError::state("Available", other)),
    }
    eni.status = Status::Deleting;
    eni.transition = Some(Transition {
        due_ms: now + delay,
        fails: false,
        in_progress: false,
    });
    Ok(json!({}))
}

fn assign(cloud: &mut Cloud, p: &Params, now: u64) -> Result<Value, ApiError> {
    let id = p.required("NetworkInterfaceId")?.to_string();
    let count = p.int("SecondaryPrivateIpAddressCount", 1, 10)?;
    let explicit = parse_ips("PrivateIpAddress", &p.list("PrivateIpAddress", 10)?)?;
    let prefix_count = p.int("Ipv4PrefixCount", 1, 10)?;
    let explicit_prefixes = parse_prefixes("Ipv4Prefix", &p.list("Ipv4Prefix", 10)?)?;
    let wants_ips = count.is_some() || !explicit.is_empty();
    let wants_prefixes = prefix_count.is_some() || !explicit_prefixes.is_empty();
    if count.is_some() && !explicit.is_empty() {
        return Err(ApiError::invalid(
            "SecondaryPrivateIpAddressCount",
            "give either a count or PrivateIpAddress.N, not both",
        ));
    }
    if prefix_count.is_some() && !explicit_prefixes.is_empty() {
        return Err(ApiError::invalid(
            "Ipv4PrefixCount",
            "give either a count or Ipv4Prefix.N, not both",
        ));
    }
    if wants_ips && wants_prefixes {
        return Err(ApiError::invalid(
            "Ipv4PrefixCount",
            "secondary IPs and prefixes cannot be mixed in one request",
        ));
    }
    if !wants_ips && !wants_prefixes {
        return Err(ApiError::missing("SecondaryPrivateIpAddressCount"));
    }
    let eni = cloud
        .enis
        .get(&id)
        .ok_or_else(|| ApiError::eni_not_found(&id))?;
    if !matches!(eni.status, Status::Available | Status::InUse) {
        return Err(ApiError::state("Available or InUse", eni.status));
    }
    // The cap: the instance type of the instance it is on; 50 (the API's own cap) when detached.
    let (cap, prefix_ok, type_name) =
        match eni.instance.as_deref().and_then(|i| cloud.instance_type(i)) {
            Some(t) => (
                t.eni_private_ip_address_quantity,
                t.prefix_support,
                t.id.clone(),
            ),
            None => (50, true, "(detached)".to_string()),
        };
    if wants_prefixes && !prefix_ok {
        return Err(ApiError::bad(
            "InvalidOperation.Ipv4PrefixNotSupported",
            format!("Instance type {type_name} does not support IPv4 prefixes."),
        ));
    }
    let adding = count
        .or(prefix_count)
        .unwrap_or((explicit.len() + explicit_prefixes.len()) as u32);
    if eni.slots() + adding > cap {
        return Err(ApiError::new(
            403,
            "InvalidOperation.Ipv4CountExceeded",
            format!(
                "The ENI {id} holds {} addresses; {adding} more would exceed {cap} allowed by {type_name}.",
                eni.slots()
            ),
        ));
    }
    let vsw = cloud.vswitch(&eni.vswitch).cloned().expect("valid");
    let lag = cloud.timing.metadata_lag_ms.pick().as_millis() as u64;
    let mut ips = Vec::new();
    let mut prefixes = Vec::new();
    if let Some(n) = count {
        ips = cloud.take_ips(&vsw, n)?;
    } else if !explicit.is_empty() {
        cloud.take_exact(&vsw, &explicit)?;
        ips = explicit;
    } else if let Some(n) = prefix_count {
        prefixes = cloud.take_prefixes(&vsw, n)?;
    } else {
        cloud.take_exact_prefixes(&vsw, &explicit_prefixes)?;
        prefixes = explicit_prefixes;
    }
    let eni = eni_mut(cloud, &id)?;
    eni.secondary.extend(ips.iter().map(|a| Held {
        addr: *a,
        visible_ms: now + lag,
    }));
    eni.prefixes.extend(prefixes.iter().map(|a| Held {
        addr: *a,
        visible_ms: now + lag,
    }));
    Ok(json!({
        "AssignedPrivateIpAddressesSet": {
            "NetworkInterfaceId": id,
            "PrivateIpSet": { "PrivateIpAddress": ips.iter().map(|a| a.to_string()).collect::<Vec<_>>() },
            "Ipv4PrefixSet": { "Ipv4Prefixes": prefixes.iter().map(|a| a.to_string()).collect::<Vec<_>>() },
        }
    }))
}

fn unassign(cloud: &mut Cloud, p: &Params) -> Result<Value, ApiError> {
    let id = p.required("NetworkInterfaceId")?.to_string();
    let ips = parse_ips("PrivateIpAddress", &p.list("PrivateIpAddress", 32)?)?;
    let prefixes = parse_prefixes("Ipv4Prefix", &p.list("Ipv4Prefix", 10)?)?;
    if ips.is_empty() && prefixes.is_empty() {
        return Err(ApiError::missing("PrivateIpAddress.1"));
    }
    let eni = cloud
        .enis
        .get(&id)
        .ok_or_else(|| ApiError::eni_not_found(&id))?;
    if !matches!(eni.status, Status::Available | Status::InUse) {
        return Err(ApiError::state("Available or InUse", eni.status));
    }
    for ip in &ips {
        if *ip == eni.primary_ip {
            return Err(ApiError::bad(
                "InvalidIp.PrimaryIp",
                format!("{ip} is the primary address of {id} and cannot be unassigned."),
            ));
        }
        if !eni.secondary.iter().any(|h| h.addr == *ip) {
            return Err(ApiError::new(
                403,
                "InvalidIp.IpUnassigned",
                format!("The IP address {ip} is not assigned to {id}."),
            ));
        }
    }
    for pfx in &prefixes {
        if !eni.prefixes.iter().any(|h| h.addr == *pfx) {
            return Err(ApiError::new(
                403,
                "InvalidIp.IpUnassigned",
                format!("The prefix {pfx} is not assigned to {id}."),
            ));
        }
    }
    let vswitch = eni.vswitch.clone();
    let eni = eni_mut(cloud, &id)?;
    eni.secondary.retain(|h| !ips.contains(&h.addr));
    eni.prefixes.retain(|h| !prefixes.contains(&h.addr));
    cloud.free_ips(&vswitch, &ips);
    cloud.free_prefixes(&vswitch, &prefixes);
    Ok(json!({}))
}

/// An ENI as `DescribeNetworkInterfaces` shows it.
pub fn eni_json(cloud: &Cloud, e: &Eni) -> Value {
    let mut ips = vec![json!({"PrivateIpAddress": e.primary_ip.to_string(), "Primary": true})];
    ips.extend(
        e.secondary
            .iter()
            .map(|h| json!({"PrivateIpAddress": h.addr.to_string(), "Primary": false})),
    );
    let mut v = json!({
        "NetworkInterfaceId": e.id,
        "Status": e.status.as_str(),
        "Type": if e.primary { "Primary" } else { "Secondary" },
        "VpcId": cloud.world.vpc.id,
        "VSwitchId": e.vswitch,
        "ZoneId": e.zone,
        "InstanceId": e.instance.clone().unwrap_or_default(),
        "MacAddress": e.mac,
        "PrivateIpAddress": e.primary_ip.to_string(),
        "CreationTime": e.creation_time,
        "Description": e.description,
        "NetworkInterfaceName": e.name,
        "SecurityGroupIds": { "SecurityGroupId": e.security_groups },
        "PrivateIpSets": { "PrivateIpSet": ips },
        "Ipv4PrefixSets": { "Ipv4PrefixSet": e.prefixes.iter().map(|h| json!({"Ipv4Prefix": h.addr.to_string()})).collect::<Vec<_>>() },
        "Ipv6Sets": { "Ipv6Set": [] },
        "Tags": { "Tag": e.tags.iter().map(|(k, v)| json!({"TagKey": k, "TagValue": v})).collect::<Vec<_>>() },
    });
    if let (Some(inst), Some(idx)) = (&e.instance, e.device_index) {
        v["Attachment"] = json!({"InstanceId": inst, "DeviceIndex": idx});
    }
    v
}

fn describe_enis(cloud: &Cloud, p: &Params) -> Result<Value, ApiError> {
    let ids = p.list("NetworkInterfaceId", 100)?;
    let ips = parse_ips("PrivateIpAddress", &p.list("PrivateIpAddress", 100)?)?;
    let tags = p.tags("Tag")?;
    let max = p.int("MaxResults", 10, 500)?.unwrap_or(10) as usize;
    if let Some(t) = p.get("Type") {
        if !t.is_empty() && t != "Primary" && t != "Secondary" {
            return Err(ApiError::invalid("Type", "must be Primary or Secondary"));
        }
    }
    if let Some(s) = p.get("Status") {
        if !s.is_empty()
            && !["Available", "Attaching", "InUse", "Detaching", "Deleting"].contains(&s)
        {
            return Err(ApiError::invalid(
                "Status",
                "must be Available, Attaching, InUse, Detaching or Deleting",
            ));
        }
    }
    let start_seq: u64 = match p.get("NextToken") {
        None | Some("") => 0,
        Some(t) => t
            .strip_prefix("nt-")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::invalid("NextToken", "not a token this API returned"))?,
    };
    let filter_eq = |name: &str, value: &str| match p.get(name) {
        None | Some("") => true,
        Some(want) => want == value,
    };
    let mut matching: Vec<&Eni> = cloud
        .enis
        .values()
        .filter(|_| filter_eq("VpcId", &cloud.world.vpc.id))
        .filter(|e| filter_eq("VSwitchId", &e.vswitch))
        .filter(|e| filter_eq("InstanceId", e.instance.as_deref().unwrap_or("")))
        .filter(|e| filter_eq("Type", if e.primary { "Primary" } else { "Secondary" }))
        .filter(|e| filter_eq("Status", e.status.as_str()))
        .filter(|e| ids.is_empty() || ids.contains(&e.id))
        .filter(|e| ips.is_empty() || ips.iter().any(|ip| e.holds_ip(*ip)))
        .filter(|e| {
            tags.iter().all(|(k, v)| {
                e.tags
                    .iter()
                    .any(|(ek, ev)| ek == k && v.as_ref().is_none_or(|v| v == ev))
            })
        })
        .collect();
    matching.sort_by_key(|e| e.seq);
    let total = matching.len();
    let page: Vec<&Eni> = matching
        .iter()
        .filter(|e| e.seq > start_seq)
        .take(max)
        .copied()
        .collect();
    let next = match page.last() {
        Some(last) if matching.iter().any(|e| e.seq > last.seq) => format!("nt-{}", last.seq),
        _ => String::new(),
    };
    Ok(json!({
        "NetworkInterfaceSets": { "NetworkInterfaceSet": page.iter().map(|e| eni_json(cloud, e)).collect::<Vec<_>>() },
        "TotalCount": total,
        "NextToken": next,
        "MaxResults": max,
    }))
}

fn describe_types(cloud: &Cloud, p: &Params) -> Result<Value, ApiError> {
    let wanted = p.list("InstanceTypes", 100)?;
    let types: Vec<Value> = cloud
        .instance_types
        .iter()
        .filter(|t| wanted.is_empty() || wanted.contains(&t.id))
        .map(|t| {
            json!({
                "InstanceTypeId": t.id,
                "EniQuantity": t.eni_quantity,
                "EniPrivateIpAddressQuantity": t.eni_private_ip_address_quantity,
                "EniIpv6AddressQuantity": t.eni_ipv6_address_quantity,
                "EniTotalQuantity": t.eni_quantity,
                "EniTrunkSupported": false,
            })
        })
        .collect();
    Ok(json!({ "InstanceTypes": { "InstanceType": types } }))
}

fn page_params(p: &Params, max_size: u32) -> Result<(usize, usize), ApiError> {
    let number = p.int("PageNumber", 1, u32::MAX)?.unwrap_or(1) as usize;
    let size = p.int("PageSize", 1, max_size)?.unwrap_or(10) as usize;
    Ok((number, size))
}

fn describe_vswitches(cloud: &Cloud, p: &Params) -> Result<Value, ApiError> {
    let (number, size) = page_params(p, 50)?;
    let want = |name: &str, value: &str| match p.get(name) {
        None | Some("") => true,
        Some(w) => w.split(',').any(|x| x.trim() == value),
    };
    let all: Vec<Value> = cloud
        .world
        .vswitches
        .iter()
        .filter(|v| want("VSwitchId", &v.id))
        .filter(|_| want("VpcId", &cloud.world.vpc.id))
        .filter(|v| want("ZoneId", &v.zone))
        .map(|v| {
            json!({
                "VSwitchId": v.id,
                "VpcId": cloud.world.vpc.id,
                "ZoneId": v.zone,
                "CidrBlock": v.cidr.to_string(),
                "AvailableIpAddressCount": cloud.available(v),
                "Status": "Available",
                "VSwitchName": v.id,
            })
        })
        .collect();
    let total = all.len();
    let page: Vec<Value> = all
        .into_iter()
        .skip((number - 1) * size)
        .take(size)
        .collect();
    Ok(json!({
        "VSwitches": { "VSwitch": page },
        "TotalCount": total,
        "PageNumber": number,
        "PageSize": size,
    }))
}

fn describe_instances(cloud: &Cloud, p: &Params) -> Result<Value, ApiError> {
    let (number, size) = page_params(p, 100)?;
    let ids: Option<Vec<String>> = match p.get("InstanceIds") {
        None | Some("") => None,
        Some(v) => Some(serde_json::from_str(v).map_err(|_| {
            ApiError::invalid(
                "InstanceIds",
                "must be a JSON array of strings, like [\"i-1\"]",
            )
        })?),
    };
    let want = |name: &str, value: &str| match p.get(name) {
        None | Some("") => true,
        Some(w) => w == value,
    };
    let all: Vec<Value> = cloud
        .world
        .instances
        .iter()
        .filter(|i| ids.as_ref().is_none_or(|ids| ids.contains(&i.id)))
        .filter(|_| want("VpcId", &cloud.world.vpc.id))
        .filter_map(|i| {
            let vsw = cloud.vswitch(&i.vswitch)?;
            if !want("ZoneId", &vsw.zone) {
                return None;
            }
            let mut enis: Vec<&Eni> = cloud
                .enis
                .values()
                .filter(|e| e.instance.as_deref() == Some(i.id.as_str()) && e.status == Status::InUse)
                .collect();
            enis.sort_by_key(|e| e.device_index);
            let primary = enis.iter().find(|e| e.primary);
            Some(json!({
                "InstanceId": i.id,
                "InstanceType": i.instance_type,
                "RegionId": cloud.world.region,
                "ZoneId": vsw.zone,
                "Status": "Running",
                "VpcAttributes": {
                    "VpcId": cloud.world.vpc.id,
                    "VSwitchId": i.vswitch,
                    "PrivateIpAddress": { "IpAddress": primary.map(|e| vec![e.primary_ip.to_string()]).unwrap_or_default() },
                },
                "NetworkInterfaces": { "NetworkInterface": enis.iter().map(|e| json!({
                    "NetworkInterfaceId": e.id,
                    "MacAddress": e.mac,
                    "PrimaryIpAddress": e.primary_ip.to_string(),
                    "Type": if e.primary { "Primary" } else { "Secondary" },
                })).collect::<Vec<_>>() },
                "SecurityGroupIds": { "SecurityGroupId": i.security_groups },
            }))
        })
        .collect();
    let total = all.len();
    let page: Vec<Value> = all
        .into_iter()
        .skip((number - 1) * size)
        .take(size)
        .collect();
    Ok(json!({
        "Instances": { "Instance": page },
        "TotalCount": total,
        "PageNumber": number,
        "PageSize": size,
    }))
}

fn tag_targets(cloud: &Cloud, p: &Params) -> Result<Vec<String>, ApiError> {
    let rtype = p.required("ResourceType")?;
    if !rtype.eq_ignore_ascii_case("eni") {
        return Err(ApiError::invalid(
            "ResourceType",
            format!("{rtype:?}: this emulator tags only ENIs (ResourceType=eni)"),
        ));
    }
    let ids = p.list("ResourceId", 50)?;
    if ids.is_empty() {
        return Err(ApiError::missing("ResourceId.1"));
    }
    for id in &ids {
        if !cloud.enis.contains_key(id) {
            return Err(ApiError::eni_not_found(id));
        }
    }
    Ok(ids)
}

fn tag(cloud: &mut Cloud, p: &Params) -> Result<Value, ApiError> {
    let ids = tag_targets(cloud, p)?;
    let tags = p.tags("Tag")?;
    if tags.is_empty() {
        return Err(ApiError::missing("Tag.1.Key"));
    }
    for id in &ids {
        let eni = &cloud.enis[id];
        let new_keys = tags
            .iter()
            .filter(|(k, _)| !eni.tags.iter().any(|(ek, _)| ek == k))
            .count();
        if eni.tags.len() + new_keys > 20 {
            return Err(ApiError::bad(
                "InvalidTagCount",
                format!("The ENI {id} would have more than 20 tags."),
            ));
        }
    }
    for id in &ids {
        let eni = eni_mut(cloud, id)?;
        for (k, v) in &tags {
            let v = v.clone().unwrap_or_default();
            match eni.tags.iter_mut().find(|(ek, _)| ek == k) {
                Some(existing) => existing.1 = v,
                None => eni.tags.push((k.clone(), v)),
            }
        }
    }
    Ok(json!({}))
}

fn untag(cloud: &mut Cloud, p: &Params) -> Result<Value, ApiError> {
    let ids = tag_targets(cloud, p)?;
    let keys = p.list("TagKey", 20)?;
    let all = p.get("All") == Some("true");
    if keys.is_empty() && !all {
        return Err(ApiError::missing("TagKey.1"));
    }
    for id in &ids {
        let eni = eni_mut(cloud, id)?;
        eni.tags.retain(|(k, _)| !all && !keys.contains(k));
    }
    Ok(json!({}))
}
