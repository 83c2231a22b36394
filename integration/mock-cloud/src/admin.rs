//! The test-only admin API at `/_admin/`: state, call counters, faults at run time,
//! hypervisor bindings and reset.
//!
//! It reads and replaces settings; it never runs cloud actions.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::faults::{FaultState, FaultUpdate};
use crate::state::Cloud;

/// The body of `POST /_admin/bind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindRequest {
    /// Instance id.
    pub instance: String,
    /// Network namespace name or path.
    pub netns: String,
}

/// `GET /_admin/state`. `links` gives a bound instance's links (ENI id -> ifname).
pub fn state_json(
    cloud: &Cloud,
    links: impl Fn(&str) -> std::collections::BTreeMap<String, String>,
) -> Value {
    let mut enis: Vec<_> = cloud.enis.values().collect();
    enis.sort_by_key(|e| e.seq);
    json!({
        "enis": enis.iter().map(|e| json!({
            "id": e.id,
            "status": e.status.as_str(),
            "type": if e.primary { "Primary" } else { "Secondary" },
            "instance": e.instance,
            "device_index": e.device_index,
            "vswitch": e.vswitch,
            "zone": e.zone,
            "mac": e.mac,
            "primary_ip": e.primary_ip.to_string(),
            "private_ips": e.secondary.iter().map(|h| h.addr.to_string()).collect::<Vec<_>>(),
            "prefixes": e.prefixes.iter().map(|h| h.addr.to_string()).collect::<Vec<_>>(),
            "tags": e.tags.iter().cloned().collect::<std::collections::BTreeMap<String, String>>(),
            "security_groups": e.security_groups,
        })).collect::<Vec<_>>(),
        "vswitches": cloud.world.vswitches.iter().map(|v| json!({
            "id": v.id,
            "zone": v.zone,
            "cidr": v.cidr.to_string(),
            "available": cloud.available(v),
        })).collect::<Vec<_>>(),
        "instances": cloud.world.instances.iter().map(|i| json!({
            "id": i.id,
            "type": i.instance_type,
            "zone": cloud.vswitch(&i.vswitch).map(|v| v.zone.clone()),
            "netns": cloud.bindings.get(&i.id),
            "links": links(&i.id),
        })).collect::<Vec<_>>(),
    })
}

/// `GET /_admin/faults`.
pub fn faults_json(cloud: &Cloud, faults: &FaultState) -> Value {
    json!({
        "faults": faults.faults,
        "timing": cloud.timing,
        "instance_types": cloud.instance_types,
    })
}

/// `PUT /_admin/faults`: validates everything, then applies it. Errors list every problem.
pub fn apply_faults(
    cloud: &mut Cloud,
    faults: &mut FaultState,
    body: &[u8],
) -> Result<(), Vec<String>> {
    let update: FaultUpdate = serde_json::from_slice(body)
        .map_err(|e| vec![format!("body: not a valid faults update: {e}")])?;
    let mut problems = Vec::new();
    if let Some(f) = &update.faults {
        problems.extend(f.problems("faults"));
    }
    if let Some(t) = &update.timing {
        if !(0.0..=1.0).contains(&t.attach_failure_rate) {
            problems.push("timing.attach_failure_rate: must be between 0 and 1".to_string());
        }
    }
    if let Some(types) = &update.instance_types {
        for inst in &cloud.world.instances {
            if !types.iter().any(|t| t.id == inst.instance_type) {
                problems.push(format!(
                    "instance_types: instance {} needs type {}",
                    inst.id, inst.instance_type
                ));
            }
        }
        for (i, t) in types.iter().enumerate() {
            if t.eni_quantity < 1 || t.eni_private_ip_address_quantity < 1 {
                problems.push(format!(
                    "instance_types[{i}]: eni_quantity and eni_private_ip_address_quantity must be at least 1"
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    if let Some(f) = update.faults {
        faults.replace(f);
    }
    if let Some(t) = update.timing {
        cloud.timing = t;
    }
    if let Some(types) = update.instance_types {
        cloud.instance_types = types;
    }
    Ok(())
}
