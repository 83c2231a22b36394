//! The instance metadata service (`/latest/...`), per instance, with the configured lag after
//! attaches and assigns, session tokens and RAM role credentials.
//!
//! Pure functions over the cloud state: the server picks the instance and holds the lock.

use std::net::Ipv4Addr;

use crate::state::{now_ms, random_id, Cloud, Eni, Status, TempKey};

/// A metadata answer: HTTP status and a text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body (text/plain, or JSON text for the JSON documents).
    pub body: String,
}

impl Answer {
    fn ok(body: impl Into<String>) -> Answer {
        Answer {
            status: 200,
            body: body.into(),
        }
    }

    fn not_found(path: &str) -> Answer {
        Answer {
            status: 404,
            body: format!("Not Found: {path}\n"),
        }
    }
}

/// Header naming the instance a metadata request is for.
pub const INSTANCE_HEADER: &str = "x-mock-instance-id";
/// Header carrying a session token.
pub const TOKEN_HEADER: &str = "x-aliyun-ecs-metadata-token";
/// Header asking for a session token's lifetime.
pub const TOKEN_TTL_HEADER: &str = "x-aliyun-ecs-metadata-token-ttl-seconds";

/// Picks the instance: the header, else the caller's address, else the only instance.
pub fn pick_instance(
    cloud: &Cloud,
    header: Option<&str>,
    peer: Option<Ipv4Addr>,
) -> Result<String, Answer> {
    if let Some(id) = header {
        return if cloud.world.instances.iter().any(|i| i.id == id) {
            Ok(id.to_string())
        } else {
            Err(Answer {
                status: 404,
                body: format!("no instance {id} in this world\n"),
            })
        };
    }
    if let Some(ip) = peer {
        if let Some(eni) = cloud
            .enis
            .values()
            .find(|e| e.primary && e.primary_ip == ip)
        {
            return Ok(eni.instance.clone().expect("a primary ENI has an instance"));
        }
    }
    if cloud.world.instances.len() == 1 {
        return Ok(cloud.world.instances[0].id.clone());
    }
    Err(Answer {
        status: 404,
        body: format!("cannot tell which instance is asking: send the {INSTANCE_HEADER} header\n"),
    })
}

/// `PUT /latest/api/token`.
pub fn issue_token(cloud: &mut Cloud, ttl: Option<&str>) -> Answer {
    let ttl: u64 = match ttl.and_then(|t| t.trim().parse().ok()) {
        Some(t) if (1..=21600).contains(&t) => t,
        _ => {
            return Answer {
                status: 400,
                body: format!("{TOKEN_TTL_HEADER} must be an integer from 1 to 21600\n"),
            }
        }
    };
    let token = random_id(40);
    cloud
        .metadata_tokens
        .insert(token.clone(), now_ms() + ttl * 1000);
    Answer::ok(token)
}

/// Whether a presented token is live (no token at all is accepted).
pub fn token_ok(cloud: &Cloud, token: Option<&str>) -> bool {
    match token {
        None => true,
        Some(t) => cloud
            .metadata_tokens
            .get(t)
            .is_some_and(|exp| *exp > now_ms()),
    }
}

fn visible_enis<'a>(cloud: &'a Cloud, instance: &str, now: u64) -> Vec<&'a Eni> {
    let mut v: Vec<&Eni> = cloud
        .enis
        .values()
        .filter(|e| {
            e.instance.as_deref() == Some(instance)
                && e.status == Status::InUse
                && (e.primary || e.visible_ms <= now)
        })
        .collect();
    v.sort_by_key(|e| e.device_index);
    v
}

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0))
}

/// `GET /latest/meta-data/<path>` for `instance`.
pub fn get(cloud: &mut Cloud, instance: &str, path: &str) -> Answer {
    let now = now_ms();
    let inst = cloud
        .world
        .instances
        .iter()
        .find(|i| i.id == instance)
        .cloned()
        .expect("picked from the world");
    let vsw = cloud.vswitch(&inst.vswitch).cloned().expect("validated");
    let enis = visible_enis(cloud, instance, now);
    let primary = enis.iter().find(|e| e.primary).copied();
    let path = path.trim_start_matches('/');
    let simple = match path {
        "" => Some(
            "instance-id\ninstance/\nregion-id\nzone-id\nvpc-id\nvpc-cidr-block\nvswitch-id\nvswitch-cidr-block\nprivate-ipv4\nmac\nnetwork/\nram/\n"
                .to_string(),
        ),
        "instance-id" => Some(inst.id.clone()),
        "instance/" | "instance" => Some("instance-type\n".into()),
        "instance/instance-type" => Some(inst.instance_type.clone()),
        "region-id" => Some(cloud.world.region.clone()),
        "zone-id" => Some(vsw.zone),
        "vpc-id" => Some(cloud.world.vpc.id.clone()),
        "vpc-cidr-block" => Some(cloud.world.vpc.cidr.to_string()),
        "vswitch-id" => Some(vsw.id),
        "vswitch-cidr-block" => Some(vsw.cidr.to_string()),
        "private-ipv4" => primary.map(|e| e.primary_ip.to_string()),
        "mac" => primary.map(|e| e.mac.clone()),
        "network/" | "network" => Some("interfaces/\n".into()),
        "network/interfaces/" | "network/interfaces" => Some("macs/\n".into()),
        "network/interfaces/macs/" | "network/interfaces/macs" => Some(
            enis.iter()
                .map(|e| format!("{}/\n", e.mac))
                .collect::<String>(),
        ),
        "ram/" | "ram" => Some("security-credentials/\n".into()),
        "ram/security-credentials/" | "ram/security-credentials" => {
            inst.ram_role.clone()
        }
        _ => None,
    };
    if let Some(body) = simple {
        return Answer::ok(body);
    }
    if let Some(rest) = path.strip_prefix("network/interfaces/macs/") {
        let (mac, field) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(eni) = enis.iter().find(|e| e.mac.eq_ignore_ascii_case(mac)) else {
            return Answer::not_found(path);
        };
        let evsw = cloud.vswitch(&eni.vswitch).cloned().expect("valid");
        let body = match field {
            "" => "network-interface-id\nprimary-ip-address\nnetmask\ngateway\nvpc-id\nvpc-cidr-block\nvswitch-id\nvswitch-cidr-block\nprivate-ipv4s\nipv4-prefixes\n".to_string(),
            "network-interface-id" => eni.id.clone(),
            "primary-ip-address" => eni.primary_ip.to_string(),
            "netmask" => netmask(evsw.cidr.prefix_len()).to_string(),
            "gateway" => evsw.gateway().to_string(),
            "vpc-id" => cloud.world.vpc.id.clone(),
            "vpc-cidr-block" => cloud.world.vpc.cidr.to_string(),
            "vswitch-id" => evsw.id,
            "vswitch-cidr-block" => evsw.cidr.to_string(),
            "private-ipv4s" => {
                let mut ips = vec![eni.primary_ip.to_string()];
                ips.extend(
                    eni.secondary
                        .iter()
                        .filter(|h| h.visible_ms <= now)
                        .map(|h| h.addr.to_string()),
                );
                serde_json::to_string(&ips).expect("strings serialize")
            }
            "ipv4-prefixes" => {
                let p: Vec<String> = eni
                    .prefixes
                    .iter()
                    .filter(|h| h.visible_ms <= now)
                    .map(|h| h.addr.to_string())
                    .collect();
                serde_json::to_string(&p).expect("strings serialize")
            }
            _ => return Answer::not_found(path),
        };
        return Answer::ok(body);
    }
    if let Some(role) = path.strip_prefix("ram/security-credentials/") {
        if inst.ram_role.as_deref() != Some(role) {
            return Answer::not_found(path);
        }
        let ttl = cloud
            .world
            .ram_roles
            .iter()
            .find(|r| r.name == role)
            .map_or(3600, |r| r.credential_ttl_s);
        let id = format!("STS.{}", random_id(24));
        let key = TempKey {
            secret: random_id(30),
            token: format!("CAIS{}", random_id(60)),
            expires_ms: now + ttl * 1000,
        };
        let fmt = |ms: u64| {
            crate::signature::format_timestamp(
                time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
                    .expect("a current time is in range"),
            )
        };
        let body = serde_json::json!({
            "AccessKeyId": id,
            "AccessKeySecret": key.secret,
            "SecurityToken": key.token,
            "Expiration": fmt(key.expires_ms),
            "LastUpdated": fmt(now),
            "Code": "Success",
        });
        cloud.temp_keys.insert(id, key);
        return Answer::ok(body.to_string());
    }
    Answer::not_found(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmask_from_prefix() {
        assert_eq!(netmask(24).to_string(), "255.255.255.0");
        assert_eq!(netmask(20).to_string(), "255.255.240.0");
        assert_eq!(netmask(0).to_string(), "0.0.0.0");
    }
}
