//! The emulated cloud's run-time state: ENIs, address allocation, asynchronous status
//! transitions, idempotency records, temporary credentials, and persistence to a state file.
//!
//! Everything here is plain data behind one lock held by the server; nothing here does I/O
//! except `save`/`load`, and nothing here touches the kernel (transitions that need the
//! hypervisor are handed out as `Effect`s for the server to carry out).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::api::ApiError;
use crate::world::{InstanceType, Timing, VSwitch, World};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// ENI status, as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Created, not attached.
    Available,
    /// Attach in progress.
    Attaching,
    /// Attached.
    InUse,
    /// Detach in progress.
    Detaching,
    /// Delete in progress.
    Deleting,
}

impl Status {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Available => "Available",
            Status::Attaching => "Attaching",
            Status::InUse => "InUse",
            Status::Detaching => "Detaching",
            Status::Deleting => "Deleting",
        }
    }
}

/// A pending asynchronous transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// When it completes (ms since epoch).
    pub due_ms: u64,
    /// For an attach: whether it will fail.
    pub fails: bool,
    /// Handed to the server for a hypervisor step; not to be handed out again.
    #[serde(skip)]
    pub in_progress: bool,
}

/// An address held by an ENI, with when the metadata service starts showing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held<T> {
    /// The address or prefix.
    pub addr: T,
    /// Visible in metadata from this time (ms since epoch).
    pub visible_ms: u64,
}

/// One ENI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Eni {
    /// `eni-...`.
    pub id: String,
    /// Creation order.
    pub seq: u64,
    /// Status.
    pub status: Status,
    /// True for an instance's primary ENI.
    pub primary: bool,
    /// vSwitch id.
    pub vswitch: String,
    /// Zone id.
    pub zone: String,
    /// MAC address, `00:16:3e:..`.
    pub mac: String,
    /// Primary private IP.
    pub primary_ip: Ipv4Addr,
    /// Secondary private IPs.
    pub secondary: Vec<Held<Ipv4Addr>>,
    /// /28 prefixes.
    pub prefixes: Vec<Held<Ipv4Net>>,
    /// Tags in the order they were set.
    pub tags: Vec<(String, String)>,
    /// Security groups.
    pub security_groups: Vec<String>,
    /// Instance it is attached (or attaching, or detaching) to.
    pub instance: Option<String>,
    /// Device index on that instance.
    pub device_index: Option<u32>,
    /// `yyyy-MM-ddTHH:mm:ssZ`.
    pub creation_time: String,
    /// Description.
    pub description: String,
    /// NetworkInterfaceName.
    pub name: String,
    /// When the metadata service starts showing this ENI's MAC (after it became InUse).
    pub visible_ms: u64,
    /// A pending Attaching/Detaching/Deleting completion.
    pub transition: Option<Transition>,
}

impl Eni {
    /// Address slots used: primary + secondaries + prefixes.
    pub fn slots(&self) -> u32 {
        1 + self.secondary.len() as u32 + self.prefixes.len() as u32
    }

    /// Whether it holds `ip` as primary or secondary.
    pub fn holds_ip(&self, ip: Ipv4Addr) -> bool {
        self.primary_ip == ip || self.secondary.iter().any(|h| h.addr == ip)
    }
}

/// A remembered idempotent answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdemRecord {
    /// The request's parameters that matter, canonicalized.
    pub fingerprint: String,
    /// The answer without `RequestId`.
    pub response: serde_json::Value,
    /// When it was recorded (ms since epoch).
    pub at_ms: u64,
}

/// A temporary key issued through a RAM role.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TempKey {
    /// AccessKeySecret.
    pub secret: String,
    /// SecurityToken.
    pub token: String,
    /// Expiration (ms since epoch).
    pub expires_ms: u64,
}

/// Work for the hypervisor that a transition needs before it completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Plug the ENI into its instance's namespace, then complete the attach.
    Plug {
        /// ENI id.
        eni: String,
        /// Instance id.
        instance: String,
    },
    /// Unplug the ENI, then complete the detach.
    Unplug {
        /// ENI id.
        eni: String,
    },
}

/// What is written to the state file.
#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    seq: u64,
    enis: Vec<Eni>,
    idempotency: Vec<((String, String), IdemRecord)>,
    temp_keys: Vec<(String, TempKey)>,
    bindings: BTreeMap<String, String>,
}

/// The cloud.
#[derive(Debug)]
pub struct Cloud {
    /// The world as loaded (the reset target).
    pub world: World,
    /// Instance types in force (the admin API can change them).
    pub instance_types: Vec<InstanceType>,
    /// Timing in force.
    pub timing: Timing,
    /// ENIs by id.
    pub enis: BTreeMap<String, Eni>,
    /// Addresses in use per vSwitch (as u32), primary, secondary and prefix members.
    used: HashMap<String, BTreeSet<u32>>,
    /// Id/MAC counter.
    pub seq: u64,
    /// Idempotency records by (action, ClientToken).
    pub idempotency: HashMap<(String, String), IdemRecord>,
    /// Temporary keys by AccessKeyId.
    pub temp_keys: HashMap<String, TempKey>,
    /// Metadata tokens and their expiry (ms since epoch).
    pub metadata_tokens: HashMap<String, u64>,
    /// Instance -> network namespace the hypervisor binds it to.
    pub bindings: BTreeMap<String, String>,
}

/// Random lower-case alphanumerics.
pub fn random_id(len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

fn now_string() -> String {
    crate::signature::format_timestamp(time::OffsetDateTime::now_utc())
}

impl Cloud {
    /// A fresh cloud from the world file.
    pub fn new(world: World) -> Cloud {
        let mut cloud = Cloud {
            instance_types: world.instance_types.clone(),
            timing: world.timing.clone(),
            world,
            enis: BTreeMap::new(),
            used: HashMap::new(),
            seq: 0,
            idempotency: HashMap::new(),
            temp_keys: HashMap::new(),
            metadata_tokens: HashMap::new(),
            bindings: BTreeMap::new(),
        };
        cloud.populate();
        cloud
    }

    /// Back to the world file's state.
    pub fn reset(&mut self) {
        *self = Cloud::new(self.world.clone());
    }

    fn populate(&mut self) {
        // Fixed primary IPs first, so allocated ones cannot take them.
        for inst in &self.world.instances {
            if let Some(ip) = inst.primary_ip {
                self.used
                    .entry(inst.vswitch.clone())
                    .or_default()
                    .insert(u32::from(ip));
            }
        }
        let instances = self.world.instances.clone();
        for inst in instances {
            let vsw = self.vswitch(&inst.vswitch).cloned().expect("validated");
            let ip = match inst.primary_ip {
                Some(ip) => ip,
                None => self
                    .take_ips(&vsw, 1)
                    .expect("a validated world has room for its primary IPs")[0],
            };
            self.seq += 1;
            let id = inst
                .primary_eni
                .clone()
                .unwrap_or_else(|| format!("eni-{}-primary", inst.id.trim_start_matches("i-")));
            let eni = Eni {
                id: id.clone(),
                seq: self.seq,
                status: Status::InUse,
                primary: true,
                vswitch: vsw.id.clone(),
                zone: vsw.zone.clone(),
                mac: mac_for(self.seq),
                primary_ip: ip,
                secondary: Vec::new(),
                prefixes: Vec::new(),
                tags: Vec::new(),
                security_groups: inst.security_groups.clone(),
                instance: Some(inst.id.clone()),
                device_index: Some(0),
                creation_time: now_string(),
                description: String::new(),
                name: String::new(),
                visible_ms: 0,
                transition: None,
            };
            self.enis.insert(id, eni);
            if let Some(ns) = &inst.netns {
                self.bindings.insert(inst.id.clone(), ns.clone());
            }
        }
    }

    /// The vSwitch with this id.
    pub fn vswitch(&self, id: &str) -> Option<&VSwitch> {
        self.world.vswitches.iter().find(|v| v.id == id)
    }

    /// The instance type of an instance.
    pub fn instance_type(&self, instance: &str) -> Option<&InstanceType> {
        let inst = self.world.instances.iter().find(|i| i.id == instance)?;
        self.instance_types
            .iter()
            .find(|t| t.id == inst.instance_type)
    }

    /// Free addresses in a vSwitch.
    pub fn available(&self, vsw: &VSwitch) -> u32 {
        let lo = u32::from(vsw.cidr.network()) + 1;
        let hi = u32::from(vsw.cidr.broadcast()).saturating_sub(3);
        let used = self
            .used
            .get(&vsw.id)
            .map_or(0, |s| s.range(lo..=hi).count() as u32);
        (hi + 1).saturating_sub(lo) - used
    }

    /// Takes the `n` lowest free addresses of a vSwitch, or fails without taking any.
    pub fn take_ips(&mut self, vsw: &VSwitch, n: u32) -> Result<Vec<Ipv4Addr>, ApiError> {
        let used = self.used.entry(vsw.id.clone()).or_default();
        let picked: Vec<Ipv4Addr> = vsw
            .usable()
            .filter(|a| !used.contains(&u32::from(*a)))
            .take(n as usize)
            .collect();
        if picked.len() < n as usize {
            return Err(ip_not_enough(vsw, n));
        }
        used.extend(picked.iter().map(|a| u32::from(*a)));
        Ok(picked)
    }

    /// Takes the given addresses, or fails without taking any.
    pub fn take_exact(&mut self, vsw: &VSwitch, ips: &[Ipv4Addr]) -> Result<(), ApiError> {
        for ip in ips {
            if !vsw.usable().any(|u| u == *ip) {
                return Err(ApiError::bad(
                    "InvalidParameter",
                    format!(
                        "PrivateIpAddress {ip} is not a usable address of vSwitch {} ({}).",
                        vsw.id, vsw.cidr
                    ),
                ));
            }
        }
        let used = self.used.entry(vsw.id.clone()).or_default();
        let mut seen = BTreeSet::new();
        for ip in ips {
            if used.contains(&u32::from(*ip)) || !seen.insert(*ip) {
                return Err(ApiError::new(
                    403,
                    "InvalidIp.IpAssigned",
                    format!("The specified IP address {ip} is already in use."),
                ));
            }
        }
        used.extend(ips.iter().map(|a| u32::from(*a)));
        Ok(())
    }

    /// Takes `n` free, aligned /28 prefixes, or fails without taking any.
    pub fn take_prefixes(&mut self, vsw: &VSwitch, n: u32) -> Result<Vec<Ipv4Net>, ApiError> {
        let mut picked = Vec::new();
        let used = self.used.entry(vsw.id.clone()).or_default();
        if vsw.cidr.prefix_len() <= 28 {
            if let Ok(subnets) = vsw.cidr.subnets(28) {
                for p in subnets {
                    if picked.len() == n as usize {
                        break;
                    }
                    if prefix_free(vsw, used, &p) {
                        picked.push(p);
                    }
                }
            }
        }
        if picked.len() < n as usize {
            return Err(ApiError::new(
                403,
                "InvalidVSwitchId.IpNotEnough",
                format!(
                    "The vSwitch {} has no {n} free aligned /28 prefixes.",
                    vsw.id
                ),
            ));
        }
        for p in &picked {
            used.extend(p.hosts().chain([p.network(), p.broadcast()]).map(u32::from));
        }
        Ok(picked)
    }

    /// Takes the given prefixes, or fails without taking any.
    pub fn take_exact_prefixes(
        &mut self,
        vsw: &VSwitch,
        prefixes: &[Ipv4Net],
    ) -> Result<(), ApiError> {
        let used = self.used.entry(vsw.id.clone()).or_default();
        for p in prefixes {
            if p.prefix_len() != 28 || p.network() != p.addr() || !vsw.cidr.contains(p) {
                return Err(ApiError::bad(
                    "InvalidParameter",
                    format!(
                        "Ipv4Prefix {p} must be an aligned /28 inside vSwitch {} ({}).",
                        vsw.id, vsw.cidr
                    ),
                ));
            }
            if !prefix_free(vsw, used, p) {
                return Err(ApiError::new(
                    403,
                    "InvalidIp.IpAssigned",
                    format!("The prefix {p} overlaps addresses in use or reserved."),
                ));
            }
        }
        for p in prefixes {
            used.extend(p.hosts().chain([p.network(), p.broadcast()]).map(u32::from));
        }
        Ok(())
    }

    /// Returns addresses to the vSwitch.
    pub fn free_ips(&mut self, vswitch: &str, ips: &[Ipv4Addr]) {
        if let Some(used) = self.used.get_mut(vswitch) {
            for ip in ips {
                used.remove(&u32::from(*ip));
            }
        }
    }

    /// Returns prefixes to the vSwitch.
    pub fn free_prefixes(&mut self, vswitch: &str, prefixes: &[Ipv4Net]) {
        if let Some(used) = self.used.get_mut(vswitch) {
            for p in prefixes {
                for a in p.hosts().chain([p.network(), p.broadcast()]) {
                    used.remove(&u32::from(a));
                }
            }
        }
    }

    /// The next id counter value, for ids and MACs.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A new ENI id.
    pub fn new_eni_id(&self) -> String {
        loop {
            let id = format!("eni-{}", random_id(20));
            if !self.enis.contains_key(&id) {
                return id;
            }
        }
    }

    /// Completes due transitions that need no hypervisor work and hands out the rest as
    /// effects (marked in progress so they are handed out once).
    pub fn advance(&mut self, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let due: Vec<String> = self
            .enis
            .values()
            .filter(|e| {
                e.transition
                    .is_some_and(|t| t.due_ms <= now && !t.in_progress)
            })
            .map(|e| e.id.clone())
            .collect();
        for id in due {
            let eni = self.enis.get(&id).expect("listed above");
            let t = eni.transition.expect("filtered above");
            let bound = eni
                .instance
                .as_ref()
                .is_some_and(|i| self.bindings.contains_key(i));
            match eni.status {
                Status::Attaching if !t.fails && bound => {
                    let instance = eni.instance.clone().expect("attaching has an instance");
                    self.mark_in_progress(&id);
                    effects.push(Effect::Plug { eni: id, instance });
                }
                Status::Detaching if bound => {
                    self.mark_in_progress(&id);
                    effects.push(Effect::Unplug { eni: id });
                }
                _ => self.complete(&id, now),
            }
        }
        effects
    }

    fn mark_in_progress(&mut self, id: &str) {
        if let Some(t) = self.enis.get_mut(id).and_then(|e| e.transition.as_mut()) {
            t.in_progress = true;
        }
    }

    /// Clears an in-progress mark so the transition is handed out again (after a failed
    /// hypervisor step).
    pub fn retry_later(&mut self, id: &str, now: u64) {
        if let Some(t) = self.enis.get_mut(id).and_then(|e| e.transition.as_mut()) {
            t.in_progress = false;
            t.due_ms = now + 500;
        }
    }

    /// Completes the pending transition of an ENI.
    pub fn complete(&mut self, id: &str, now: u64) {
        let lag = self.timing.metadata_lag_ms.pick().as_millis() as u64;
        let Some(eni) = self.enis.get_mut(id) else {
            return;
        };
        let Some(t) = eni.transition.take() else {
            return;
        };
        match eni.status {
            Status::Attaching if t.fails => {
                eni.status = Status::Available;
                eni.instance = None;
                eni.device_index = None;
            }
            Status::Attaching => {
                eni.status = Status::InUse;
                eni.visible_ms = now + lag;
            }
            Status::Detaching => {
                eni.status = Status::Available;
                eni.instance = None;
                eni.device_index = None;
            }
            Status::Deleting => {
                let eni = self.enis.remove(id).expect("present above");
                let mut ips: Vec<Ipv4Addr> = eni.secondary.iter().map(|h| h.addr).collect();
                ips.push(eni.primary_ip);
                self.free_ips(&eni.vswitch, &ips);
                let prefixes: Vec<Ipv4Net> = eni.prefixes.iter().map(|h| h.addr).collect();
                self.free_prefixes(&eni.vswitch, &prefixes);
            }
            Status::Available | Status::InUse => {}
        }
    }

    /// The earliest pending, not in-progress transition.
    pub fn next_due(&self) -> Option<u64> {
        self.enis
            .values()
            .filter_map(|e| e.transition.filter(|t| !t.in_progress).map(|t| t.due_ms))
            .min()
    }

    /// Drops idempotency records older than 24 hours and expired temporary keys and tokens.
    pub fn expire(&mut self, now: u64) {
        self.idempotency
            .retain(|_, r| now.saturating_sub(r.at_ms) < 24 * 3600 * 1000);
        self.temp_keys
            .retain(|_, k| k.expires_ms + 3600 * 1000 > now);
        self.metadata_tokens.retain(|_, exp| *exp > now);
    }

    /// Writes the state file atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut enis: Vec<Eni> = self.enis.values().cloned().collect();
        enis.sort_by_key(|e| e.seq);
        let persisted = Persisted {
            seq: self.seq,
            enis,
            idempotency: self
                .idempotency
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            temp_keys: self
                .temp_keys
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            bindings: self.bindings.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&persisted).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Reads a state file written by `save` over a fresh cloud of the same world. Addresses
    /// in use are rebuilt from the ENIs; bindings of the world file win over saved ones.
    pub fn load(&mut self, path: &Path) -> Result<(), String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let p: Persisted = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a mock-cloud state file: {e}", path.display()))?;
        let mut used: HashMap<String, BTreeSet<u32>> = HashMap::new();
        for eni in &p.enis {
            if self.vswitch(&eni.vswitch).is_none() {
                return Err(format!(
                    "{}: ENI {} is in vSwitch {} which the world file does not have",
                    path.display(),
                    eni.id,
                    eni.vswitch
                ));
            }
            let set = used.entry(eni.vswitch.clone()).or_default();
            set.insert(u32::from(eni.primary_ip));
            set.extend(eni.secondary.iter().map(|h| u32::from(h.addr)));
            for pfx in &eni.prefixes {
                set.extend(
                    pfx.addr
                        .hosts()
                        .chain([pfx.addr.network(), pfx.addr.broadcast()])
                        .map(u32::from),
                );
            }
        }
        // Fixed primary IPs of the world stay reserved even if their ENI is absent.
        for inst in &self.world.instances {
            if let Some(ip) = inst.primary_ip {
                used.entry(inst.vswitch.clone())
                    .or_default()
                    .insert(u32::from(ip));
            }
        }
        self.used = used;
        self.enis = p.enis.into_iter().map(|e| (e.id.clone(), e)).collect();
        self.seq = p.seq.max(self.seq);
        self.idempotency = p.idempotency.into_iter().collect();
        self.temp_keys = p.temp_keys.into_iter().collect();
        for (inst, ns) in p.bindings {
            self.bindings.entry(inst).or_insert(ns);
        }
        Ok(())
    }
}

fn prefix_free(vsw: &VSwitch, used: &BTreeSet<u32>, p: &Ipv4Net) -> bool {
    let usable_lo = u32::from(vsw.cidr.network()) + 1;
    let usable_hi = u32::from(vsw.cidr.broadcast()).saturating_sub(3);
    let lo = u32::from(p.network());
    let hi = u32::from(p.broadcast());
    lo >= usable_lo && hi <= usable_hi && used.range(lo..=hi).next().is_none()
}

fn ip_not_enough(vsw: &VSwitch, n: u32) -> ApiError {
    ApiError::new(
        403,
        "InvalidVSwitchId.IpNotEnough",
        format!(
            "The specified vSwitch {} does not have enough IP addresses ({n} requested).",
            vsw.id
        ),
    )
}

/// The MAC of the ENI with counter value `seq`.
pub fn mac_for(seq: u64) -> String {
    format!(
        "00:16:3e:{:02x}:{:02x}:{:02x}",
        (seq >> 16) & 0xff,
        (seq >> 8) & 0xff,
        seq & 0xff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        World::parse(
            r#"
region: r
zones: [z]
vpc: { id: vpc-1, cidr: 10.0.0.0/16 }
vswitches:
  - { id: vsw-1, zone: z, cidr: 10.0.1.0/28 }
  - { id: vsw-2, zone: z, cidr: 10.0.2.0/26 }
instance_types: [{ id: t, eni_quantity: 3, eni_private_ip_address_quantity: 10 }]
instances: [{ id: i-a, type: t, vswitch: vsw-1 }]
access_keys: [{ id: k, secret: s }]
"#,
            "test",
        )
        .unwrap()
    }

    #[test]
    fn addresses_are_lowest_first_never_twice_and_reused() {
        let mut c = Cloud::new(world());
        let vsw = c.vswitch("vsw-1").unwrap().clone();
        // /28: 16 addresses, 4 reserved -> 12 usable, one taken by the primary.
        assert_eq!(c.available(&vsw), 11);
        let a = c.take_ips(&vsw, 3).unwrap();
        assert_eq!(
            a,
            vec![
                "10.0.1.2".parse::<Ipv4Addr>().unwrap(),
                "10.0.1.3".parse().unwrap(),
                "10.0.1.4".parse().unwrap()
            ]
        );
        let err = c.take_ips(&vsw, 9).unwrap_err();
        assert_eq!(err.code, "InvalidVSwitchId.IpNotEnough");
        assert_eq!(c.available(&vsw), 8, "a failed take takes nothing");
        c.free_ips("vsw-1", &a[1..2]);
        assert_eq!(c.take_ips(&vsw, 1).unwrap(), vec![a[1]]);
        let b = c.take_ips(&vsw, 8).unwrap();
        assert!(b.iter().all(|x| !a.contains(x)));
        assert_eq!(*b.last().unwrap(), "10.0.1.12".parse::<Ipv4Addr>().unwrap());
        assert!(c.take_ips(&vsw, 1).is_err(), ".13-.15 are reserved");
        assert_eq!(vsw.gateway(), "10.0.1.13".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn prefixes_are_aligned_and_exclusive() {
        let mut c = Cloud::new(world());
        let vsw = c.vswitch("vsw-2").unwrap().clone();
        // /26 = four /28s; the first holds .0 (reserved), the last holds .61-.63 (reserved).
        let p = c.take_prefixes(&vsw, 2).unwrap();
        assert_eq!(p[0].to_string(), "10.0.2.16/28");
        assert_eq!(p[1].to_string(), "10.0.2.32/28");
        assert_eq!(
            c.take_prefixes(&vsw, 1).unwrap_err().code,
            "InvalidVSwitchId.IpNotEnough"
        );
        let ip = c.take_ips(&vsw, 1).unwrap()[0];
        assert_eq!(ip.to_string(), "10.0.2.1");
        c.free_prefixes("vsw-2", &p[..1]);
        assert_eq!(c.take_ips(&vsw, 1).unwrap()[0].to_string(), "10.0.2.2");
        assert_eq!(
            c.take_prefixes(&vsw, 1).unwrap()[0].to_string(),
            "10.0.2.16/28",
            "a freed prefix is handed out again; .0/28 stays blocked by .1 and .2"
        );
    }
}
