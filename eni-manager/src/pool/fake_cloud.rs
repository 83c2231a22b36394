//! An in-memory `CloudProvider` for the pool's unit tests: ENIs, addresses from one subnet,
//! attach limits, call counters and injectable failures. Attaches complete at once.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use async_trait::async_trait;
use cloud_providers::{
    AddressCount, AssignAddressesOptions, AssignedAddresses, AttachEniOptions, Attachment, Cloud,
    CloudProvider, CreateEniOptions, DeleteEniOptions, DetachEniOptions, Eni, EniStatus,
    ListEnisOptions, NodeInfo, NodeLimits, Priority, ProviderError, SubnetCapacity,
    SubnetCapacityOptions, UnassignAddressesOptions, WaitCondition, WaitEniOptions,
};
use ipnet::Ipv4Net;

#[derive(Debug, Default)]
struct Inner {
    enis: BTreeMap<String, Eni>,
    next: u32,
    used: Vec<Ipv4Addr>,
    calls: BTreeMap<&'static str, u32>,
    fail_next: HashMap<&'static str, ProviderError>,
    tokens: HashMap<String, String>,
}

/// The fake.
#[derive(Debug)]
pub struct FakeCloud {
    inner: Mutex<Inner>,
    /// The node.
    pub node: NodeInfo,
    /// Subnets: id -> CIDR (addresses handed out from .1 up, never twice).
    pub subnets: BTreeMap<String, Ipv4Net>,
}

impl FakeCloud {
    /// A node `i-test` with `max_enis` ENIs of `ipv4_per_eni` addresses.
    pub fn new(max_enis: u32, ipv4_per_eni: u32, subnets: &[(&str, &str)]) -> FakeCloud {
        FakeCloud {
            inner: Mutex::new(Inner::default()),
            node: NodeInfo {
                instance_id: "i-test".into(),
                instance_type: "t.test".into(),
                region: "r".into(),
                zone: "z".into(),
                vpc_id: "vpc-1".into(),
                primary_subnet_id: subnets[0].0.into(),
                security_group_ids: vec!["sg-1".into()],
                primary_eni_id: "eni-primary".into(),
                primary_mac: "00:16:3e:ff:ff:ff".into(),
                primary_ip: "10.255.0.1".parse().expect("valid"),
                limits: NodeLimits {
                    max_enis,
                    ipv4_per_eni,
                    prefix_support: false,
                },
            },
            subnets: subnets
                .iter()
                .map(|(id, c)| (id.to_string(), c.parse().expect("valid CIDR")))
                .collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next call of `api` fails with `e`.
    pub fn fail_next(&self, api: &'static str, e: ProviderError) {
        self.lock().fail_next.insert(api, e);
    }

    /// Calls of `api` so far.
    pub fn calls(&self, api: &str) -> u32 {
        self.lock().calls.get(api).copied().unwrap_or(0)
    }

    /// Every ENI.
    pub fn enis(&self) -> Vec<Eni> {
        self.lock().enis.values().cloned().collect()
    }

    /// Creates an ENI behind the manager's back (as a crash after the create would leave).
    pub fn insert(&self, eni: Eni) {
        self.lock().enis.insert(eni.id.clone(), eni);
    }

    fn enter(&self, api: &'static str) -> Result<(), ProviderError> {
        let mut g = self.lock();
        *g.calls.entry(api).or_default() += 1;
        match g.fail_next.remove(api) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn take_ips(
        &self,
        g: &mut Inner,
        subnet: &str,
        n: u32,
    ) -> Result<Vec<Ipv4Addr>, ProviderError> {
        let cidr = self
            .subnets
            .get(subnet)
            .ok_or_else(|| ProviderError::NotFound {
                api: "CreateNetworkInterface",
                code: "InvalidVSwitchId.NotFound".into(),
                message: subnet.into(),
                request_id: None,
            })?;
        let free: Vec<Ipv4Addr> = cidr
            .hosts()
            .filter(|a| !g.used.contains(a))
            .take(n as usize)
            .collect();
        if free.len() < n as usize {
            return Err(ProviderError::IpExhausted {
                api: "AssignPrivateIpAddresses",
                vswitch: Some(subnet.into()),
                code: "InvalidVSwitchId.IpNotEnough".into(),
                message: "no addresses".into(),
                request_id: None,
            });
        }
        g.used.extend(free.iter().copied());
        Ok(free)
    }

    /// Takes `n` free aligned /28s of the subnet (all 16 members marked used).
    fn take_prefixes(
        &self,
        g: &mut Inner,
        subnet: &str,
        n: u32,
    ) -> Result<Vec<Ipv4Net>, ProviderError> {
        let cidr = self
            .subnets
            .get(subnet)
            .copied()
            .ok_or_else(|| ProviderError::NotFound {
                api: "AssignPrivateIpAddresses",
                code: "InvalidVSwitchId.NotFound".into(),
                message: subnet.into(),
                request_id: None,
            })?;
        let mut out = Vec::new();
        for p in cidr.subnets(28).into_iter().flatten() {
            if out.len() == n as usize {
                break;
            }
            let members: Vec<Ipv4Addr> = (u32::from(p.network())..=u32::from(p.broadcast()))
                .map(Ipv4Addr::from)
                .collect();
            // Skip the subnet's first /28 (its network address) and any with a member in use.
            if p.network() == cidr.network() || members.iter().any(|a| g.used.contains(a)) {
                continue;
            }
            g.used.extend(members);
            out.push(p);
        }
        if out.len() < n as usize {
            return Err(ProviderError::IpExhausted {
                api: "AssignPrivateIpAddresses",
                vswitch: Some(subnet.into()),
                code: "InvalidVSwitchId.IpNotEnough".into(),
                message: "no free /28".into(),
                request_id: None,
            });
        }
        Ok(out)
    }

    fn not_found(api: &'static str, id: &str) -> ProviderError {
        ProviderError::NotFound {
            api,
            code: "InvalidEniId.NotFound".into(),
            message: id.into(),
            request_id: None,
        }
    }
}

#[async_trait]
impl CloudProvider for FakeCloud {
    fn cloud(&self) -> Cloud {
        Cloud::Aliyun
    }

    async fn node_info(&self) -> Result<NodeInfo, ProviderError> {
        self.enter("DescribeInstances")?;
        Ok(self.node.clone())
    }

    async fn list_enis(&self, opts: &ListEnisOptions) -> Result<Vec<Eni>, ProviderError> {
        self.enter("DescribeNetworkInterfaces")?;
        Ok(self
            .lock()
            .enis
            .values()
            .filter(|e| opts.tags.iter().all(|(k, v)| e.tags.get(k) == Some(v)))
            .cloned()
            .collect())
    }

    async fn describe_eni(&self, eni_id: &str, _p: Priority) -> Result<Eni, ProviderError> {
        self.enter("DescribeNetworkInterfaces")?;
        self.lock()
            .enis
            .get(eni_id)
            .cloned()
            .ok_or_else(|| Self::not_found("DescribeNetworkInterfaces", eni_id))
    }

    async fn create_eni(&self, opts: &CreateEniOptions) -> Result<Eni, ProviderError> {
        self.enter("CreateNetworkInterface")?;
        let mut g = self.lock();
        if let Some(id) = g.tokens.get(opts.idempotency_token.as_str()) {
            if let Some(e) = g.enis.get(id) {
                return Ok(e.clone());
            }
        }
        let n = match opts.addresses {
            AddressCount::Ips(n) => n,
            _ => 0,
        };
        let ips = self.take_ips(&mut g, &opts.subnet_id, 1 + n)?;
        let prefixes = match opts.addresses {
            AddressCount::Prefixes(p) => self.take_prefixes(&mut g, &opts.subnet_id, p)?,
            _ => Vec::new(),
        };
        g.next += 1;
        let id = format!("eni-fake{}", g.next);
        let eni = Eni {
            id: id.clone(),
            status: EniStatus::Available,
            is_primary: false,
            mac: format!("00:16:3e:00:00:{:02x}", g.next),
            subnet_id: opts.subnet_id.clone(),
            zone: "z".into(),
            vpc_id: "vpc-1".into(),
            instance_id: None,
            device_index: None,
            attachment_id: None,
            primary_ip: Some(ips[0]),
            secondary_ips: ips[1..].to_vec(),
            prefixes,
            security_group_ids: opts.security_group_ids.clone(),
            tags: opts.tags.clone(),
        };
        g.tokens
            .insert(opts.idempotency_token.as_str().to_string(), id.clone());
        g.enis.insert(id, eni.clone());
        Ok(eni)
    }

    async fn attach_eni(&self, opts: &AttachEniOptions) -> Result<Attachment, ProviderError> {
        self.enter("AttachNetworkInterface")?;
        let mut g = self.lock();
        let attached = g
            .enis
            .values()
            .filter(|e| e.instance_id.as_deref() == Some(opts.instance_id.as_str()))
            .count() as u32;
        if attached + 1 >= self.node.limits.max_enis {
            return Err(ProviderError::EniLimit {
                api: "AttachNetworkInterface",
                code: "EniPerInstanceLimitExceeded".into(),
                message: "full".into(),
                request_id: None,
            });
        }
        let eni = g
            .enis
            .get_mut(&opts.eni_id)
            .ok_or_else(|| Self::not_found("AttachNetworkInterface", &opts.eni_id))?;
        eni.status = EniStatus::InUse;
        eni.instance_id = Some(opts.instance_id.clone());
        eni.device_index = Some(attached + 1);
        Ok(Attachment {
            attachment_id: None,
        })
    }

    async fn wait_for_eni(&self, opts: &WaitEniOptions) -> Result<Option<Eni>, ProviderError> {
        let e = self.lock().enis.get(&opts.eni_id).cloned();
        match (opts.until, e) {
            (WaitCondition::Deleted, None) => Ok(None),
            (_, Some(e)) => Ok(Some(e)),
            (_, None) => Err(Self::not_found("DescribeNetworkInterfaces", &opts.eni_id)),
        }
    }

    async fn detach_eni(&self, opts: &DetachEniOptions) -> Result<(), ProviderError> {
        self.enter("DetachNetworkInterface")?;
        if let Some(e) = self.lock().enis.get_mut(&opts.eni_id) {
            e.status = EniStatus::Available;
            e.instance_id = None;
            e.device_index = None;
        }
        Ok(())
    }

    async fn delete_eni(&self, opts: &DeleteEniOptions) -> Result<(), ProviderError> {
        self.enter("DeleteNetworkInterface")?;
        let mut g = self.lock();
        if let Some(e) = g.enis.remove(&opts.eni_id) {
            let mut gone = e.secondary_ips.clone();
            gone.extend(e.primary_ip);
            g.used.retain(|a| !gone.contains(a));
        }
        Ok(())
    }

    async fn assign_addresses(
        &self,
        opts: &AssignAddressesOptions,
    ) -> Result<AssignedAddresses, ProviderError> {
        self.enter("AssignPrivateIpAddresses")?;
        let mut g = self.lock();
        let subnet = g
            .enis
            .get(&opts.eni_id)
            .ok_or_else(|| Self::not_found("AssignPrivateIpAddresses", &opts.eni_id))?
            .subnet_id
            .clone();
        let (ips, prefixes) = match opts.addresses {
            AddressCount::Ips(n) => (self.take_ips(&mut g, &subnet, n)?, Vec::new()),
            AddressCount::Prefixes(n) => (Vec::new(), self.take_prefixes(&mut g, &subnet, n)?),
            AddressCount::None => {
                return Err(ProviderError::InvalidInput {
                    message: "assign needs a count".into(),
                })
            }
        };
        let e = g.enis.get_mut(&opts.eni_id).expect("checked above");
        e.secondary_ips.extend(ips.iter().copied());
        e.prefixes.extend(prefixes.iter().copied());
        Ok(AssignedAddresses { ips, prefixes })
    }

    async fn unassign_addresses(
        &self,
        opts: &UnassignAddressesOptions,
    ) -> Result<(), ProviderError> {
        self.enter("UnassignPrivateIpAddresses")?;
        let mut g = self.lock();
        if let Some(e) = g.enis.get_mut(&opts.eni_id) {
            e.secondary_ips.retain(|a| !opts.ips.contains(a));
            e.prefixes.retain(|p| !opts.prefixes.contains(p));
        }
        g.used
            .retain(|a| !opts.ips.contains(a) && !opts.prefixes.iter().any(|p| p.contains(a)));
        Ok(())
    }

    async fn subnet_capacity(
        &self,
        opts: &SubnetCapacityOptions,
    ) -> Result<Vec<SubnetCapacity>, ProviderError> {
        self.enter("DescribeVSwitches")?;
        let g = self.lock();
        Ok(opts
            .subnet_ids
            .iter()
            .filter_map(|id| {
                let cidr = self.subnets.get(id)?;
                let used = g.used.iter().filter(|a| cidr.contains(*a)).count() as u64;
                Some(SubnetCapacity {
                    subnet_id: id.clone(),
                    zone: "z".into(),
                    cidr: *cidr,
                    available_ips: cidr.hosts().count() as u64 - used,
                })
            })
            .collect())
    }
}
