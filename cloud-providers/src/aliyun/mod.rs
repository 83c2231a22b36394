//! Alibaba Cloud ECS behind [`CloudProvider`]: the ENI actions of ECS 2014-05-26 and
//! `DescribeVSwitches` of VPC 2016-04-28, signed with V1 or V3, over reqwest + rustls.
//!
//! The provider composes actions (paging, splitting large assigns, the treat-as-success
//! rules); signing is in `sign`, code mapping in `errors`, JSON shapes in `model`, keys in
//! `credentials`.

mod client;
pub mod credentials;
mod errors;
mod model;
pub mod sign;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::Ipv4Net;

pub use client::SignatureVersion;
pub use credentials::{AliyunCredentials, CredentialProvider};

use client::{RpcClient, Service};
use model::{parse, parse_ip, parse_net};

use crate::error::ProviderError;
use crate::metadata::MetadataClient;
use crate::provider::{
    validate_count, wait_for_eni_with, AddressCount, AssignAddressesOptions, AssignedAddresses,
    AttachEniOptions, Attachment, Cloud, CloudProvider, CreateEniOptions, DeleteEniOptions,
    DetachEniOptions, Eni, ListEnisOptions, NodeInfo, NodeLimits, SubnetCapacity,
    SubnetCapacityOptions, UnassignAddressesOptions, WaitEniOptions,
};
use crate::ratelimit::Priority;
use crate::retry::CallRunner;
use crate::CallSettings;

/// Most secondary IPs or prefixes per `AssignPrivateIpAddresses`.
const MAX_ASSIGN_PER_CALL: u32 = 10;
/// Most IPs per `UnassignPrivateIpAddresses`.
const MAX_UNASSIGN_IPS: usize = 32;
/// Most prefixes per `UnassignPrivateIpAddresses`.
const MAX_UNASSIGN_PREFIXES: usize = 10;

/// Settings of the Alibaba Cloud provider.
#[derive(Debug, Clone)]
pub struct AliyunConfig {
    /// Region id (`cn-hangzhou`).
    pub region: String,
    /// ECS API endpoint, `scheme://host[:port]`. Default `https://ecs-vpc.<region>.aliyuncs.com`
    /// (the in-VPC endpoint); `ALIBABA_CLOUD_ECS_ENDPOINT` overrides it in [`AliyunConfig::new`].
    pub ecs_endpoint: String,
    /// VPC API endpoint. Default `https://vpc-vpc.<region>.aliyuncs.com`;
    /// `ALIBABA_CLOUD_VPC_ENDPOINT` overrides it in [`AliyunConfig::new`].
    pub vpc_endpoint: String,
    /// Signature version (default V3).
    pub signature: SignatureVersion,
    /// The node's instance id; `None` reads it from the metadata service.
    pub instance_id: Option<String>,
    /// Whether the node's instance type takes /28 prefixes. `DescribeInstanceTypes` does not
    /// say, so the operator does.
    pub prefix_support: bool,
    /// Timeout of one HTTP attempt.
    pub request_timeout: Duration,
}

impl AliyunConfig {
    /// Defaults for `region`, with endpoint overrides from the environment.
    pub fn new(region: impl Into<String>) -> Self {
        let region = region.into();
        let env = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        AliyunConfig {
            ecs_endpoint: env("ALIBABA_CLOUD_ECS_ENDPOINT")
                .unwrap_or_else(|| format!("https://ecs-vpc.{region}.aliyuncs.com")),
            vpc_endpoint: env("ALIBABA_CLOUD_VPC_ENDPOINT")
                .unwrap_or_else(|| format!("https://vpc-vpc.{region}.aliyuncs.com")),
            region,
            signature: SignatureVersion::default(),
            instance_id: None,
            prefix_support: false,
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Point both APIs at one endpoint (a mock).
    pub fn with_endpoint(mut self, endpoint: &str) -> Self {
        self.ecs_endpoint = endpoint.to_string();
        self.vpc_endpoint = endpoint.to_string();
        self
    }
}

/// The Alibaba Cloud [`CloudProvider`].
#[derive(Debug)]
pub struct AliyunProvider {
    rpc: RpcClient,
    config: AliyunConfig,
    metadata: Option<Arc<MetadataClient>>,
}

fn put_list<'a>(
    params: &mut BTreeMap<String, String>,
    prefix: &str,
    items: impl IntoIterator<Item = &'a str>,
) {
    for (i, v) in items.into_iter().enumerate() {
        params.insert(format!("{prefix}.{}", i + 1), v.to_string());
    }
}

fn put_tags(params: &mut BTreeMap<String, String>, tags: &BTreeMap<String, String>) {
    for (i, (k, v)) in tags.iter().enumerate() {
        params.insert(format!("Tag.{}.Key", i + 1), k.clone());
        params.insert(format!("Tag.{}.Value", i + 1), v.clone());
    }
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl AliyunProvider {
    /// A provider with these settings. `metadata` is needed when `config.instance_id` is
    /// `None` (to learn the node).
    pub fn new(
        config: AliyunConfig,
        credentials: Arc<CredentialProvider>,
        metadata: Option<Arc<MetadataClient>>,
        settings: CallSettings,
    ) -> Result<Self, ProviderError> {
        let runner = CallRunner {
            cloud: Cloud::Aliyun,
            limiter: settings.limiter,
            retry: settings.retry,
            observer: settings.observer,
        };
        let rpc = RpcClient::new(
            config.request_timeout,
            &config.ecs_endpoint,
            &config.vpc_endpoint,
            config.region.clone(),
            config.signature,
            credentials,
            runner,
        )?;
        Ok(AliyunProvider {
            rpc,
            config,
            metadata,
        })
    }

    async fn instance_id(&self) -> Result<String, ProviderError> {
        match (&self.config.instance_id, &self.metadata) {
            (Some(id), _) => Ok(id.clone()),
            (None, Some(md)) => md.instance_id().await,
            (None, None) => Err(ProviderError::Config {
                message: "no instance id configured and no metadata client to ask".into(),
            }),
        }
    }

    async fn describe_enis(
        &self,
        filter: &BTreeMap<String, String>,
        priority: Priority,
    ) -> Result<Vec<Eni>, ProviderError> {
        const API: &str = "DescribeNetworkInterfaces";
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut p = filter.clone();
            p.insert("MaxResults".into(), "100".into());
            if let Some(t) = &next {
                p.insert("NextToken".into(), t.clone());
            }
            let answer = self.rpc.call(Service::Ecs, API, priority, &p, None).await?;
            let page: model::DescribeEnisResponse = parse(API, &answer.body)?;
            for item in page.sets.items {
                out.push(item.into_eni(API)?);
            }
            match page.next_token.filter(|t| !t.is_empty()) {
                Some(t) if Some(&t) != next.as_ref() => next = Some(t),
                _ => return Ok(out),
            }
        }
    }

    async fn assign_chunk(
        &self,
        opts: &AssignAddressesOptions,
        part: usize,
        count: AddressCount,
    ) -> Result<AssignedAddresses, ProviderError> {
        const API: &str = "AssignPrivateIpAddresses";
        let mut p = params(&[
            ("NetworkInterfaceId", &opts.eni_id),
            ("ClientToken", opts.idempotency_token.part(part).as_str()),
        ]);
        match count {
            AddressCount::Ips(n) => {
                p.insert("SecondaryPrivateIpAddressCount".into(), n.to_string())
            }
            AddressCount::Prefixes(n) => p.insert("Ipv4PrefixCount".into(), n.to_string()),
            AddressCount::None => None,
        };
        let answer = match self
            .rpc
            .call(Service::Ecs, API, opts.priority, &p, None)
            .await
        {
            Ok(a) => a,
            Err(ProviderError::IpExhausted {
                api,
                vswitch: None,
                code,
                message,
                request_id,
            }) => {
                // Name the exhausted vSwitch: it is the ENI's.
                let vswitch = self
                    .describe_eni(&opts.eni_id, opts.priority)
                    .await
                    .ok()
                    .map(|e| e.subnet_id);
                return Err(ProviderError::IpExhausted {
                    api,
                    vswitch,
                    code,
                    message,
                    request_id,
                });
            }
            Err(e) => return Err(e),
        };
        let r: model::AssignResponse = parse(API, &answer.body)?;
        Ok(AssignedAddresses {
            ips: r
                .set
                .ips
                .unwrap_or_default()
                .items
                .iter()
                .map(|s| parse_ip(API, s))
                .collect::<Result<_, _>>()?,
            prefixes: r
                .set
                .prefixes
                .unwrap_or_default()
                .items
                .iter()
                .map(|s| parse_net(API, s))
                .collect::<Result<_, _>>()?,
        })
    }

    async fn unassign_batch(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Net],
        priority: Priority,
    ) -> Result<(), ProviderError> {
        const API: &str = "UnassignPrivateIpAddresses";
        let mut p = params(&[("NetworkInterfaceId", eni_id)]);
        let ip_strings: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        let prefix_strings: Vec<String> = prefixes.iter().map(|n| n.to_string()).collect();
        put_list(
            &mut p,
            "PrivateIpAddress",
            ip_strings.iter().map(String::as_str),
        );
        put_list(
            &mut p,
            "Ipv4Prefix",
            prefix_strings.iter().map(String::as_str),
        );
        let answer = self.rpc.call(Service::Ecs, API, priority, &p, None).await?;
        if answer.treated_as_success && ips.len() + prefixes.len() > 1 {
            // The call is all-or-nothing: one address already gone failed the whole batch.
            // Unassign what the ENI still holds of it.
            let eni = self.describe_eni(eni_id, priority).await?;
            let still_ips: Vec<Ipv4Addr> = ips
                .iter()
                .copied()
                .filter(|ip| eni.secondary_ips.contains(ip))
                .collect();
            let still_prefixes: Vec<Ipv4Net> = prefixes
                .iter()
                .copied()
                .filter(|n| eni.prefixes.contains(n))
                .collect();
            if !still_ips.is_empty() || !still_prefixes.is_empty() {
                let mut p = params(&[("NetworkInterfaceId", eni_id)]);
                let ip_strings: Vec<String> = still_ips.iter().map(|i| i.to_string()).collect();
                let prefix_strings: Vec<String> =
                    still_prefixes.iter().map(|n| n.to_string()).collect();
                put_list(
                    &mut p,
                    "PrivateIpAddress",
                    ip_strings.iter().map(String::as_str),
                );
                put_list(
                    &mut p,
                    "Ipv4Prefix",
                    prefix_strings.iter().map(String::as_str),
                );
                self.rpc.call(Service::Ecs, API, priority, &p, None).await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl CloudProvider for AliyunProvider {
    fn cloud(&self) -> Cloud {
        Cloud::Aliyun
    }

    async fn node_info(&self) -> Result<NodeInfo, ProviderError> {
        let instance_id = self.instance_id().await?;
        const API: &str = "DescribeInstances";
        let p = params(&[("InstanceIds", &format!("[\"{instance_id}\"]"))]);
        let answer = self
            .rpc
            .call(Service::Ecs, API, Priority::Refill, &p, None)
            .await?;
        let r: model::InstancesResponse = parse(API, &answer.body)?;
        let inst = r
            .instances
            .items
            .into_iter()
            .find(|i| i.id == instance_id)
            .ok_or_else(|| ProviderError::NotFound {
                api: API,
                code: "InvalidInstanceId.NotFound".into(),
                message: format!("instance {instance_id} not found"),
                request_id: None,
            })?;
        let primary = inst
            .enis
            .items
            .iter()
            .find(|e| e.kind == "Primary")
            .or(inst.enis.items.first())
            .ok_or_else(|| ProviderError::malformed(API, "instance without network interfaces"))?;
        const TYPES: &str = "DescribeInstanceTypes";
        let p = params(&[("InstanceTypes.1", &inst.instance_type)]);
        let answer = self
            .rpc
            .call(Service::Ecs, TYPES, Priority::Refill, &p, None)
            .await?;
        let t: model::InstanceTypesResponse = parse(TYPES, &answer.body)?;
        let ty = t
            .types
            .items
            .into_iter()
            .find(|t| t.id == inst.instance_type)
            .ok_or_else(|| {
                ProviderError::malformed(
                    TYPES,
                    format!("instance type {} not described", inst.instance_type),
                )
            })?;
        Ok(NodeInfo {
            instance_type: inst.instance_type.clone(),
            region: if inst.region_id.is_empty() {
                self.config.region.clone()
            } else {
                inst.region_id.clone()
            },
            zone: inst.zone_id.clone(),
            vpc_id: inst.vpc.vpc_id.clone(),
            primary_subnet_id: inst.vpc.vswitch_id.clone(),
            security_group_ids: inst.security_groups.items.clone(),
            primary_eni_id: primary.id.clone(),
            primary_mac: primary.mac.to_ascii_lowercase(),
            primary_ip: parse_ip(API, &primary.primary_ip)?,
            limits: NodeLimits {
                max_enis: ty.eni_quantity,
                ipv4_per_eni: ty.eni_private_ip_address_quantity,
                prefix_support: self.config.prefix_support,
            },
            instance_id,
        })
    }

    async fn list_enis(&self, opts: &ListEnisOptions) -> Result<Vec<Eni>, ProviderError> {
        let mut p = BTreeMap::new();
        put_tags(&mut p, &opts.tags);
        if let Some(i) = &opts.instance_id {
            p.insert("InstanceId".into(), i.clone());
        }
        if opts.eni_ids.is_empty() {
            return self.describe_enis(&p, opts.priority).await;
        }
        let mut out = Vec::new();
        for chunk in opts.eni_ids.chunks(100) {
            let mut p = p.clone();
            put_list(
                &mut p,
                "NetworkInterfaceId",
                chunk.iter().map(String::as_str),
            );
            out.extend(self.describe_enis(&p, opts.priority).await?);
        }
        Ok(out)
    }

    async fn describe_eni(&self, eni_id: &str, priority: Priority) -> Result<Eni, ProviderError> {
        let p = params(&[("NetworkInterfaceId.1", eni_id)]);
        self.describe_enis(&p, priority)
            .await?
            .into_iter()
            .find(|e| e.id == eni_id)
            .ok_or_else(|| ProviderError::NotFound {
                api: "DescribeNetworkInterfaces",
                code: "InvalidEniId.NotFound".into(),
                message: format!("ENI {eni_id} not found"),
                request_id: None,
            })
    }

    async fn create_eni(&self, opts: &CreateEniOptions) -> Result<Eni, ProviderError> {
        const API: &str = "CreateNetworkInterface";
        validate_count(opts.addresses, true)?;
        if opts.security_group_ids.is_empty() {
            return Err(ProviderError::invalid_input(
                "an ENI needs at least one security group",
            ));
        }
        let mut p = params(&[
            ("VSwitchId", &opts.subnet_id),
            ("ClientToken", opts.idempotency_token.as_str()),
        ]);
        put_list(
            &mut p,
            "SecurityGroupIds",
            opts.security_group_ids.iter().map(String::as_str),
        );
        put_tags(&mut p, &opts.tags);
        if let Some(d) = &opts.description {
            p.insert("Description".into(), d.clone());
        }
        match opts.addresses {
            AddressCount::None => {}
            AddressCount::Ips(n) => {
                p.insert("SecondaryPrivateIpAddressCount".into(), n.to_string());
            }
            AddressCount::Prefixes(n) => {
                p.insert("Ipv4PrefixCount".into(), n.to_string());
            }
        }
        let answer = self
            .rpc
            .call(Service::Ecs, API, opts.priority, &p, Some(&opts.subnet_id))
            .await?;
        let item: model::EniItem = parse(API, &answer.body)?;
        item.into_eni(API)
    }

    async fn attach_eni(&self, opts: &AttachEniOptions) -> Result<Attachment, ProviderError> {
        let p = params(&[
            ("NetworkInterfaceId", &opts.eni_id),
            ("InstanceId", &opts.instance_id),
            ("ClientToken", opts.idempotency_token.as_str()),
        ]);
        self.rpc
            .call(
                Service::Ecs,
                "AttachNetworkInterface",
                opts.priority,
                &p,
                None,
            )
            .await?;
        Ok(Attachment {
            attachment_id: None,
        })
    }

    async fn wait_for_eni(&self, opts: &WaitEniOptions) -> Result<Option<Eni>, ProviderError> {
        wait_for_eni_with(opts, || self.describe_eni(&opts.eni_id, opts.priority)).await
    }

    async fn detach_eni(&self, opts: &DetachEniOptions) -> Result<(), ProviderError> {
        let p = params(&[
            ("NetworkInterfaceId", &opts.eni_id),
            ("InstanceId", &opts.instance_id),
        ]);
        self.rpc
            .call(
                Service::Ecs,
                "DetachNetworkInterface",
                opts.priority,
                &p,
                None,
            )
            .await?;
        Ok(())
    }

    async fn delete_eni(&self, opts: &DeleteEniOptions) -> Result<(), ProviderError> {
        let p = params(&[("NetworkInterfaceId", &opts.eni_id)]);
        self.rpc
            .call(
                Service::Ecs,
                "DeleteNetworkInterface",
                opts.priority,
                &p,
                None,
            )
            .await?;
        Ok(())
    }

    async fn assign_addresses(
        &self,
        opts: &AssignAddressesOptions,
    ) -> Result<AssignedAddresses, ProviderError> {
        validate_count(opts.addresses, false)?;
        let (total, make): (u32, fn(u32) -> AddressCount) = match opts.addresses {
            AddressCount::Ips(n) => (n, AddressCount::Ips),
            AddressCount::Prefixes(n) => (n, AddressCount::Prefixes),
            AddressCount::None => (0, |_| AddressCount::None),
        };
        let mut out = AssignedAddresses::default();
        let mut left = total;
        let mut part = 0;
        while left > 0 {
            let n = left.min(MAX_ASSIGN_PER_CALL);
            match self.assign_chunk(opts, part, make(n)).await {
                Ok(got) => {
                    out.ips.extend(got.ips);
                    out.prefixes.extend(got.prefixes);
                }
                // Keep what earlier parts added; the caller sees fewer than it asked for and
                // learns the reason on its next request.
                Err(e) if part > 0 => {
                    tracing::warn!(eni = %opts.eni_id, error = %e, assigned = out.ips.len() + out.prefixes.len(), "assign stopped part-way");
                    return Ok(out);
                }
                Err(e) => return Err(e),
            }
            left -= n;
            part += 1;
        }
        Ok(out)
    }

    async fn unassign_addresses(
        &self,
        opts: &UnassignAddressesOptions,
    ) -> Result<(), ProviderError> {
        if opts.ips.is_empty() && opts.prefixes.is_empty() {
            return Ok(());
        }
        let ip_chunks: Vec<&[Ipv4Addr]> = opts.ips.chunks(MAX_UNASSIGN_IPS).collect();
        let prefix_chunks: Vec<&[Ipv4Net]> = opts.prefixes.chunks(MAX_UNASSIGN_PREFIXES).collect();
        for i in 0..ip_chunks.len().max(prefix_chunks.len()) {
            self.unassign_batch(
                &opts.eni_id,
                ip_chunks.get(i).copied().unwrap_or(&[]),
                prefix_chunks.get(i).copied().unwrap_or(&[]),
                opts.priority,
            )
            .await?;
        }
        Ok(())
    }

    async fn subnet_capacity(
        &self,
        opts: &SubnetCapacityOptions,
    ) -> Result<Vec<SubnetCapacity>, ProviderError> {
        const API: &str = "DescribeVSwitches";
        let mut out = Vec::new();
        for id in &opts.subnet_ids {
            let p = params(&[("VSwitchId", id)]);
            let answer = self
                .rpc
                .call(Service::Vpc, API, opts.priority, &p, None)
                .await?;
            let r: model::VSwitchesResponse = parse(API, &answer.body)?;
            let item = r
                .vswitches
                .items
                .into_iter()
                .find(|v| &v.id == id)
                .ok_or_else(|| ProviderError::NotFound {
                    api: API,
                    code: "InvalidVSwitchId.NotFound".into(),
                    message: format!("vSwitch {id} not found"),
                    request_id: None,
                })?;
            out.push(item.into_capacity(API)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_tag_params() {
        let mut p = BTreeMap::new();
        put_list(&mut p, "SecurityGroupIds", ["sg-1", "sg-2"]);
        let tags: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        put_tags(&mut p, &tags);
        assert_eq!(p["SecurityGroupIds.1"], "sg-1");
        assert_eq!(p["SecurityGroupIds.2"], "sg-2");
        assert_eq!(p["Tag.1.Key"], "a");
        assert_eq!(p["Tag.1.Value"], "1");
    }

    #[test]
    fn config_defaults() {
        let c = AliyunConfig::new("cn-hangzhou").with_endpoint("http://127.0.0.1:1");
        assert_eq!(c.ecs_endpoint, "http://127.0.0.1:1");
        assert_eq!(c.signature, SignatureVersion::V3);
    }
}
