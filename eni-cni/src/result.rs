//! The CNI result: what ADD prints, what chained plugins pass on as `prevResult`.
//!
//! Entries are kept as JSON values so a prevResult from another plugin passes through
//! untouched (fields we do not know included); only the version-specific differences are
//! rewritten on output ([`CniResult::to_json`]): 0.4.0 IP entries carry `"version"`,
//! 1.x ones do not; interface `mtu` exists from 1.1.0 on.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde_json::{json, Map, Value};

use crate::version::CniVersion;

/// A CNI result being built or checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    /// `interfaces`.
    pub interfaces: Vec<Value>,
    /// `ips`.
    pub ips: Vec<Value>,
    /// `routes`.
    pub routes: Vec<Value>,
    /// `dns`, passed through.
    pub dns: Option<Value>,
}

/// What one of our attachments contributes to a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// The host-side interface (veth host end), if the mode has one per pod.
    pub host_if: Option<(String, String)>,
    /// The pod interface: name and MAC.
    pub pod_if: (String, String),
    /// The netns path of the pod.
    pub sandbox: String,
    /// The pod interface MTU.
    pub mtu: u32,
    /// The pod's address with its prefix as configured in the pod.
    pub address: Ipv4Net,
    /// The pod's default gateway.
    pub gateway: Ipv4Addr,
}

impl CniResult {
    /// Reads a result (a prevResult) of any supported version.
    pub fn from_value(v: &Value) -> Result<CniResult, String> {
        let obj = v.as_object().ok_or("not a JSON object")?;
        let list = |key: &str| -> Result<Vec<Value>, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => Ok(a.clone()),
                Some(other) => Err(format!("{key} must be a list, got {other}")),
            }
        };
        let ips = list("ips")?;
        for ip in &ips {
            let addr = ip.get("address").and_then(Value::as_str);
            if addr.and_then(|a| a.parse::<IpNet>().ok()).is_none() {
                return Err(format!("ips entry {ip} has no valid \"address\" (CIDR)"));
            }
        }
        Ok(CniResult {
            interfaces: list("interfaces")?,
            ips,
            routes: list("routes")?,
            dns: obj.get("dns").cloned(),
        })
    }

    /// Appends our attachment: its interfaces, address and default route.
    pub fn add_attachment(&mut self, a: &Attachment) {
        if let Some((name, mac)) = &a.host_if {
            self.interfaces.push(json!({"name": name, "mac": mac}));
        }
        let pod_index = self.interfaces.len();
        self.interfaces.push(json!({
            "name": a.pod_if.0, "mac": a.pod_if.1, "mtu": a.mtu, "sandbox": a.sandbox,
        }));
        self.ips.push(json!({
            "address": a.address.to_string(),
            "gateway": a.gateway.to_string(),
            "interface": pod_index,
        }));
        self.routes
            .push(json!({"dst": "0.0.0.0/0", "gw": a.gateway.to_string()}));
    }

    /// The IPv4 addresses (with prefix) listed in `ips`.
    pub fn ipv4_addresses(&self) -> Vec<Ipv4Net> {
        self.ips
            .iter()
            .filter_map(|ip| ip.get("address")?.as_str()?.parse::<Ipv4Net>().ok())
            .collect()
    }

    /// Whether an interface named `name` inside `sandbox` is listed.
    pub fn has_sandbox_interface(&self, name: &str, sandbox: &str) -> bool {
        self.interfaces.iter().any(|i| {
            i.get("name").and_then(Value::as_str) == Some(name)
                && i.get("sandbox").and_then(Value::as_str) == Some(sandbox)
        })
    }

    /// The result as JSON in `version`.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut i = i.clone();
                if version < CniVersion::V110 {
                    if let Some(o) = i.as_object_mut() {
                        o.remove("mtu");
                    }
                }
                i
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut ip = ip.clone();
                if let Some(o) = ip.as_object_mut() {
                    if version == CniVersion::V040 {
                        let v6 = o
                            .get("address")
                            .and_then(Value::as_str)
                            .and_then(|a| a.parse::<IpNet>().ok())
                            .is_some_and(|n| matches!(n.addr(), IpAddr::V6(_)));
                        o.insert("version".into(), json!(if v6 { "6" } else { "4" }));
                    } else {
                        o.remove("version");
                    }
                }
                ip
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        out.insert("interfaces".into(), Value::Array(interfaces));
        out.insert("ips".into(), Value::Array(ips));
        out.insert("routes".into(), Value::Array(self.routes.clone()));
        out.insert("dns".into(), self.dns.clone().unwrap_or_else(|| json!({})));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment() -> Attachment {
        Attachment {
            host_if: Some(("eni0123456789a".into(), "02:00:00:00:00:01".into())),
            pod_if: ("eth0".into(), "02:00:00:00:00:02".into()),
            sandbox: "/var/run/netns/p".into(),
            mtu: 1500,
            address: "10.0.0.7/32".parse().unwrap(),
            gateway: "169.254.1.1".parse().unwrap(),
        }
    }

    #[test]
    fn shape_per_version() {
        let mut r = CniResult::default();
        r.add_attachment(&attachment());
        let v11 = r.to_json(CniVersion::V110);
        assert_eq!(v11["cniVersion"], "1.1.0");
        assert_eq!(v11["interfaces"][1]["mtu"], 1500);
        assert_eq!(v11["ips"][0]["interface"], 1);
        assert!(v11["ips"][0].get("version").is_none());
        let v10 = r.to_json(CniVersion::V100);
        assert!(v10["interfaces"][1].get("mtu").is_none());
        assert!(v10["ips"][0].get("version").is_none());
        let v04 = r.to_json(CniVersion::V040);
        assert_eq!(v04["cniVersion"], "0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["ips"][0]["address"], "10.0.0.7/32");
        assert_eq!(v04["routes"][0]["gw"], "169.254.1.1");
        assert_eq!(v04["dns"], json!({}));
    }

    #[test]
    fn merges_after_a_previous_plugin() {
        let prev = json!({"cniVersion":"0.4.0",
            "interfaces":[{"name":"lo0","sandbox":"/x"}],
            "ips":[{"version":"4","address":"192.168.9.9/24","interface":0}],
            "dns":{"nameservers":["10.0.0.10"]}});
        let mut r = CniResult::from_value(&prev).unwrap();
        r.add_attachment(&attachment());
        let out = r.to_json(CniVersion::V100);
        assert_eq!(out["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(out["ips"][1]["interface"], 2);
        assert!(out["ips"][0].get("version").is_none());
        assert_eq!(out["dns"]["nameservers"][0], "10.0.0.10");
    }

    #[test]
    fn rejects_garbage_prev_results() {
        assert!(CniResult::from_value(&json!({"ips":[{"address":"nope"}]})).is_err());
        assert!(CniResult::from_value(&json!({"interfaces":{}})).is_err());
        assert!(CniResult::from_value(&json!([])).is_err());
    }
}
