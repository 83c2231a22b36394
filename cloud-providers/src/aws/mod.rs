//! AWS EC2 behind [`CloudProvider`], through aws-sdk-ec2 (built with minimal features and a
//! rustls/ring HTTP client).
//!
//! The SDK's own retries are off: every attempt goes through this crate's rate limiter,
//! retry policy and observer like the Alibaba Cloud calls. Production uses the SDK's default
//! credential chain (environment, profile, web identity, IMDS role); tests and LocalStack set
//! an endpoint and static keys. Code mapping lives in `errors`.

mod errors;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{Credentials, Region};
use aws_sdk_ec2::types::{
    AttachmentStatus, Filter, InstanceType, InstanceTypeHypervisor, NetworkInterface,
    NetworkInterfaceStatus, ResourceType, Tag, TagSpecification,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use ipnet::Ipv4Net;

use errors::{map_sdk_error, Mapped};

use crate::error::ProviderError;
use crate::metadata::MetadataClient;
use crate::provider::{
    validate_count, wait_for_eni_with, AddressCount, AssignAddressesOptions, AssignedAddresses,
    AttachEniOptions, Attachment, Cloud, CloudProvider, CreateEniOptions, DeleteEniOptions,
    DetachEniOptions, Eni, EniStatus, ListEnisOptions, NodeInfo, NodeLimits, SubnetCapacity,
    SubnetCapacityOptions, UnassignAddressesOptions, WaitEniOptions,
};
use crate::ratelimit::Priority;
use crate::retry::CallRunner;
use crate::CallSettings;

/// Settings of the AWS provider.
#[derive(Clone, Default)]
pub struct AwsConfig {
    /// Region; `None` takes the SDK's (environment, profile, IMDS).
    pub region: Option<String>,
    /// EC2 endpoint URL (moto, LocalStack). `None` takes the SDK's, which honours
    /// `AWS_ENDPOINT_URL_EC2` and `AWS_ENDPOINT_URL`.
    pub endpoint_url: Option<String>,
    /// Static keys (access key id, secret); `None` uses the SDK's default credential chain.
    pub static_credentials: Option<(String, String)>,
    /// The node's instance id; `None` reads it from IMDSv2.
    pub instance_id: Option<String>,
    /// Timeout of one HTTP attempt (default 10 s when zero).
    pub request_timeout: Duration,
}

impl std::fmt::Debug for AwsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsConfig")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field(
                "static_credentials",
                &self
                    .static_credentials
                    .as_ref()
                    .map(|(id, _)| (id, "<redacted>")),
            )
            .field("instance_id", &self.instance_id)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// The AWS EC2 [`CloudProvider`].
#[derive(Debug)]
pub struct AwsProvider {
    client: aws_sdk_ec2::Client,
    region: String,
    instance_id: Option<String>,
    metadata: Option<Arc<MetadataClient>>,
    runner: CallRunner,
}

/// Run one SDK call under the runner; `$subnet` names the subnet for `IpExhausted`.
/// Evaluates to `Result<Option<Output>, ProviderError>`; `None` when an error was treated as
/// success.
macro_rules! call {
    ($self:expr, $api:expr, $prio:expr, $subnet:expr, $make:expr) => {
        $self
            .runner
            .run($api, $prio, || async {
                match $make.send().await {
                    Ok(out) => Ok(Some(out)),
                    Err(e) => match map_sdk_error($api, &e, $subnet) {
                        Mapped::Success => Ok(None),
                        Mapped::Error(e) => Err(e),
                    },
                }
            })
            .await
    };
}

fn parse_ip(api: &'static str, s: &str) -> Result<Ipv4Addr, ProviderError> {
    s.parse()
        .map_err(|_| ProviderError::malformed(api, format!("not an IPv4 address: {s:?}")))
}

fn parse_net(api: &'static str, s: &str) -> Result<Ipv4Net, ProviderError> {
    s.parse()
        .map_err(|_| ProviderError::malformed(api, format!("not an IPv4 CIDR: {s:?}")))
}

fn missing(api: &'static str, what: &str) -> ProviderError {
    ProviderError::malformed(api, format!("answer lacks {what}"))
}

/// An EC2 network interface in the vendor-neutral form.
fn to_eni(api: &'static str, ni: &NetworkInterface) -> Result<Eni, ProviderError> {
    let attachment = ni.attachment();
    let attach_status = attachment.and_then(|a| a.status());
    let status = match (ni.status(), attach_status) {
        (_, Some(AttachmentStatus::Attaching)) => EniStatus::Attaching,
        (_, Some(AttachmentStatus::Detaching)) => EniStatus::Detaching,
        (Some(NetworkInterfaceStatus::Available), _) => EniStatus::Available,
        (Some(NetworkInterfaceStatus::InUse), _) => EniStatus::InUse,
        (Some(NetworkInterfaceStatus::Attaching), _) => EniStatus::Attaching,
        (Some(NetworkInterfaceStatus::Detaching), _) => EniStatus::Detaching,
        (Some(other), _) => EniStatus::Unknown(other.as_str().to_string()),
        (None, _) => EniStatus::Unknown(String::new()),
    };
    let attached = matches!(
        attach_status,
        Some(AttachmentStatus::Attached | AttachmentStatus::Attaching)
    ) || (attach_status.is_none() && attachment.is_some());
    let mut primary_ip = ni
        .private_ip_address()
        .map(|s| parse_ip(api, s))
        .transpose()?;
    let mut secondary_ips = Vec::new();
    for a in ni.private_ip_addresses() {
        let Some(ip) = a.private_ip_address() else {
            continue;
        };
        let ip = parse_ip(api, ip)?;
        if a.primary().unwrap_or(false) {
            primary_ip = Some(ip);
        } else if Some(ip) != primary_ip {
            secondary_ips.push(ip);
        }
    }
    let prefixes = ni
        .ipv4_prefixes()
        .iter()
        .filter_map(|p| p.ipv4_prefix())
        .map(|p| parse_net(api, p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Eni {
        id: ni
            .network_interface_id()
            .ok_or_else(|| missing(api, "networkInterfaceId"))?
            .to_string(),
        status,
        is_primary: attachment.and_then(|a| a.device_index()) == Some(0),
        mac: ni.mac_address().unwrap_or_default().to_ascii_lowercase(),
        subnet_id: ni.subnet_id().unwrap_or_default().to_string(),
        zone: ni.availability_zone().unwrap_or_default().to_string(),
        vpc_id: ni.vpc_id().unwrap_or_default().to_string(),
        instance_id: if attached {
            attachment.and_then(|a| a.instance_id()).map(str::to_string)
        } else {
            None
        },
        device_index: if attached {
            attachment
                .and_then(|a| a.device_index())
                .and_then(|d| u32::try_from(d).ok())
        } else {
            None
        },
        attachment_id: if attached {
            attachment
                .and_then(|a| a.attachment_id())
                .map(str::to_string)
        } else {
            None
        },
        primary_ip,
        secondary_ips,
        prefixes,
        security_group_ids: ni
            .groups()
            .iter()
            .filter_map(|g| g.group_id())
            .map(str::to_string)
            .collect(),
        tags: ni
            .tag_set()
            .iter()
            .filter_map(|t| {
                Some((
                    t.key()?.to_string(),
                    t.value().unwrap_or_default().to_string(),
                ))
            })
            .collect(),
    })
}

fn count_i32(n: u32) -> Result<i32, ProviderError> {
    i32::try_from(n).map_err(|_| ProviderError::invalid_input(format!("count {n} too large")))
}

impl AwsProvider {
    /// A provider with these settings. `metadata` (IMDSv2) is needed when
    /// `config.instance_id` is `None`.
    pub async fn new(
        config: AwsConfig,
        metadata: Option<Arc<MetadataClient>>,
        settings: CallSettings,
    ) -> Result<Self, ProviderError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let timeout = if config.request_timeout.is_zero() {
            Duration::from_secs(10)
        } else {
            config.request_timeout
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(timeout.min(Duration::from_secs(5)))
                    .operation_attempt_timeout(timeout)
                    .build(),
            );
        if let Some(r) = &config.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        if let Some((id, secret)) = &config.static_credentials {
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "cloud-providers-static",
            ));
        }
        let sdk = loader.load().await;
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .ok_or_else(|| ProviderError::Config {
                message: "no AWS region: set it in the configuration, AWS_REGION or the profile"
                    .into(),
            })?;
        Ok(AwsProvider {
            client: aws_sdk_ec2::Client::new(&sdk),
            region,
            instance_id: config.instance_id,
            metadata,
            runner: CallRunner {
                cloud: Cloud::Aws,
                limiter: settings.limiter,
                retry: settings.retry,
                observer: settings.observer,
            },
        })
    }

    /// The SDK client, for callers that need an EC2 call this trait does not cover.
    pub fn sdk_client(&self) -> &aws_sdk_ec2::Client {
        &self.client
    }

    async fn instance_id(&self) -> Result<String, ProviderError> {
        match (&self.instance_id, &self.metadata) {
            (Some(id), _) => Ok(id.clone()),
            (None, Some(md)) => md.instance_id().await,
            (None, None) => Err(ProviderError::Config {
                message: "no instance id configured and no metadata client to ask".into(),
            }),
        }
    }

    async fn describe(
        &self,
        filters: Vec<Filter>,
        ids: Vec<String>,
        priority: Priority,
    ) -> Result<Vec<Eni>, ProviderError> {
        const API: &str = "DescribeNetworkInterfaces";
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let req = self
                .client
                .describe_network_interfaces()
                .set_filters((!filters.is_empty()).then(|| filters.clone()))
                .set_network_interface_ids((!ids.is_empty()).then(|| ids.clone()))
                .set_next_token(next.clone());
            let req = if ids.is_empty() {
                req.max_results(100)
            } else {
                req
            };
            let page = call!(self, API, priority, None, req.clone())?
                .ok_or_else(|| missing(API, "a result"))?;
            for ni in page.network_interfaces() {
                out.push(to_eni(API, ni)?);
            }
            match page.next_token().filter(|t| !t.is_empty()) {
                Some(t) if Some(t) != next.as_deref() => next = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    async fn free_device_index(
        &self,
        instance_id: &str,
        priority: Priority,
    ) -> Result<i32, ProviderError> {
        let enis = self
            .describe(
                vec![Filter::builder()
                    .name("attachment.instance-id")
                    .values(instance_id)
                    .build()],
                vec![],
                priority,
            )
            .await?;
        let used: BTreeSet<u32> = enis.iter().filter_map(|e| e.device_index).collect();
        let free = (1u32..).find(|i| !used.contains(i)).unwrap_or(1);
        count_i32(free)
    }
}

#[async_trait]
impl CloudProvider for AwsProvider {
    fn cloud(&self) -> Cloud {
        Cloud::Aws
    }

    async fn node_info(&self) -> Result<NodeInfo, ProviderError> {
        const API: &str = "DescribeInstances";
        let instance_id = self.instance_id().await?;
        let out = call!(
            self,
            API,
            Priority::Refill,
            None,
            self.client.describe_instances().instance_ids(&instance_id)
        )?
        .ok_or_else(|| missing(API, "a result"))?;
        let inst = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance_id.as_str()))
            .ok_or_else(|| ProviderError::NotFound {
                api: API,
                code: "InvalidInstanceID.NotFound".into(),
                message: format!("instance {instance_id} not found"),
                request_id: None,
            })?;
        let instance_type = inst
            .instance_type()
            .ok_or_else(|| missing(API, "instanceType"))?
            .as_str()
            .to_string();
        let primary = inst
            .network_interfaces()
            .iter()
            .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
            .or(inst.network_interfaces().first())
            .ok_or_else(|| missing(API, "networkInterfaceSet"))?;
        let primary_ip = parse_ip(
            API,
            primary
                .private_ip_address()
                .or(inst.private_ip_address())
                .ok_or_else(|| missing(API, "privateIpAddress"))?,
        )?;

        const TYPES: &str = "DescribeInstanceTypes";
        let types = call!(
            self,
            TYPES,
            Priority::Refill,
            None,
            self.client
                .describe_instance_types()
                .instance_types(InstanceType::from(instance_type.as_str()))
        )?
        .ok_or_else(|| missing(TYPES, "a result"))?;
        let info = types
            .instance_types()
            .iter()
            .find(|t| t.instance_type().map(|t| t.as_str()) == Some(instance_type.as_str()))
            .ok_or_else(|| missing(TYPES, "the instance type"))?;
        let net = info
            .network_info()
            .ok_or_else(|| missing(TYPES, "networkInfo"))?;
        let limit = |v: Option<i32>, what: &str| {
            v.and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| missing(TYPES, what))
        };
        Ok(NodeInfo {
            instance_type,
            region: self.region.clone(),
            zone: inst
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap_or_default()
                .to_string(),
            vpc_id: inst.vpc_id().unwrap_or_default().to_string(),
            primary_subnet_id: primary
                .subnet_id()
                .or(inst.subnet_id())
                .unwrap_or_default()
                .to_string(),
            security_group_ids: primary
                .groups()
                .iter()
                .filter_map(|g| g.group_id())
                .map(str::to_string)
                .collect(),
            primary_eni_id: primary
                .network_interface_id()
                .ok_or_else(|| missing(API, "networkInterfaceId"))?
                .to_string(),
            primary_mac: primary
                .mac_address()
                .unwrap_or_default()
                .to_ascii_lowercase(),
            primary_ip,
            limits: NodeLimits {
                max_enis: limit(net.maximum_network_interfaces(), "maximumNetworkInterfaces")?,
                ipv4_per_eni: limit(
                    net.ipv4_addresses_per_interface(),
                    "ipv4AddressesPerInterface",
                )?,
                prefix_support: info.hypervisor() == Some(&InstanceTypeHypervisor::Nitro),
            },
            instance_id,
        })
    }

    async fn list_enis(&self, opts: &ListEnisOptions) -> Result<Vec<Eni>, ProviderError> {
        let mut filters: Vec<Filter> = opts
            .tags
            .iter()
            .map(|(k, v)| Filter::builder().name(format!("tag:{k}")).values(v).build())
            .collect();
        if let Some(i) = &opts.instance_id {
            filters.push(
                Filter::builder()
                    .name("attachment.instance-id")
                    .values(i)
                    .build(),
            );
        }
        if opts.eni_ids.is_empty() {
            return self.describe(filters, vec![], opts.priority).await;
        }
        let mut out = Vec::new();
        for chunk in opts.eni_ids.chunks(100) {
            out.extend(
                self.describe(filters.clone(), chunk.to_vec(), opts.priority)
                    .await?,
            );
        }
        Ok(out)
    }

    async fn describe_eni(&self, eni_id: &str, priority: Priority) -> Result<Eni, ProviderError> {
        self.describe(vec![], vec![eni_id.to_string()], priority)
            .await?
            .into_iter()
            .find(|e| e.id == eni_id)
            .ok_or_else(|| ProviderError::NotFound {
                api: "DescribeNetworkInterfaces",
                code: "InvalidNetworkInterfaceID.NotFound".into(),
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
        let mut req = self
            .client
            .create_network_interface()
            .subnet_id(&opts.subnet_id)
            .set_groups(Some(opts.security_group_ids.clone()))
            .client_token(opts.idempotency_token.as_str())
            .set_description(opts.description.clone());
        match opts.addresses {
            AddressCount::None => {}
            AddressCount::Ips(n) => req = req.secondary_private_ip_address_count(count_i32(n)?),
            AddressCount::Prefixes(n) => req = req.ipv4_prefix_count(count_i32(n)?),
        }
        if !opts.tags.is_empty() {
            req = req.tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::NetworkInterface)
                    .set_tags(Some(
                        opts.tags
                            .iter()
                            .map(|(k, v)| Tag::builder().key(k).value(v).build())
                            .collect(),
                    ))
                    .build(),
            );
        }
        let out = call!(self, API, opts.priority, Some(&opts.subnet_id), req.clone())?
            .ok_or_else(|| missing(API, "a result"))?;
        let ni = out
            .network_interface()
            .ok_or_else(|| missing(API, "networkInterface"))?;
        to_eni(API, ni)
    }

    async fn attach_eni(&self, opts: &AttachEniOptions) -> Result<Attachment, ProviderError> {
        const API: &str = "AttachNetworkInterface";
        let index = match opts.device_index {
            Some(i) => count_i32(i)?,
            None => {
                self.free_device_index(&opts.instance_id, opts.priority)
                    .await?
            }
        };
        let out = call!(
            self,
            API,
            opts.priority,
            None,
            self.client
                .attach_network_interface()
                .network_interface_id(&opts.eni_id)
                .instance_id(&opts.instance_id)
                .device_index(index)
        )?
        .ok_or_else(|| missing(API, "a result"))?;
        Ok(Attachment {
            attachment_id: out.attachment_id().map(str::to_string),
        })
    }

    async fn wait_for_eni(&self, opts: &WaitEniOptions) -> Result<Option<Eni>, ProviderError> {
        wait_for_eni_with(opts, || self.describe_eni(&opts.eni_id, opts.priority)).await
    }

    async fn detach_eni(&self, opts: &DetachEniOptions) -> Result<(), ProviderError> {
        const API: &str = "DetachNetworkInterface";
        let attachment_id = match &opts.attachment_id {
            Some(a) => a.clone(),
            None => match self.describe_eni(&opts.eni_id, opts.priority).await {
                Ok(eni) => match eni.attachment_id {
                    Some(a) => a,
                    // Not attached: nothing to do.
                    None => return Ok(()),
                },
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        call!(
            self,
            API,
            opts.priority,
            None,
            self.client
                .detach_network_interface()
                .attachment_id(&attachment_id)
        )?;
        Ok(())
    }

    async fn delete_eni(&self, opts: &DeleteEniOptions) -> Result<(), ProviderError> {
        call!(
            self,
            "DeleteNetworkInterface",
            opts.priority,
            None,
            self.client
                .delete_network_interface()
                .network_interface_id(&opts.eni_id)
        )?;
        Ok(())
    }

    async fn assign_addresses(
        &self,
        opts: &AssignAddressesOptions,
    ) -> Result<AssignedAddresses, ProviderError> {
        const API: &str = "AssignPrivateIpAddresses";
        validate_count(opts.addresses, false)?;
        // What the ENI holds before, so only new addresses are reported even from servers
        // that echo the ENI's whole list (moto does), and to name the subnet on exhaustion.
        let before = self.describe_eni(&opts.eni_id, opts.priority).await?;
        let mut req = self
            .client
            .assign_private_ip_addresses()
            .network_interface_id(&opts.eni_id);
        match opts.addresses {
            AddressCount::Ips(n) => req = req.secondary_private_ip_address_count(count_i32(n)?),
            AddressCount::Prefixes(n) => req = req.ipv4_prefix_count(count_i32(n)?),
            AddressCount::None => {}
        }
        let out = call!(
            self,
            API,
            opts.priority,
            Some(before.subnet_id.as_str()),
            req.clone()
        )?
        .ok_or_else(|| missing(API, "a result"))?;
        let mut assigned = AssignedAddresses::default();
        for a in out.assigned_private_ip_addresses() {
            if let Some(ip) = a.private_ip_address() {
                let ip = parse_ip(API, ip)?;
                if Some(ip) != before.primary_ip && !before.secondary_ips.contains(&ip) {
                    assigned.ips.push(ip);
                }
            }
        }
        for p in out.assigned_ipv4_prefixes() {
            if let Some(p) = p.ipv4_prefix() {
                let p = parse_net(API, p)?;
                if !before.prefixes.contains(&p) {
                    assigned.prefixes.push(p);
                }
            }
        }
        Ok(assigned)
    }

    async fn unassign_addresses(
        &self,
        opts: &UnassignAddressesOptions,
    ) -> Result<(), ProviderError> {
        if opts.ips.is_empty() && opts.prefixes.is_empty() {
            return Ok(());
        }
        let ips: Vec<String> = opts.ips.iter().map(|i| i.to_string()).collect();
        let prefixes: Vec<String> = opts.prefixes.iter().map(|p| p.to_string()).collect();
        call!(
            self,
            "UnassignPrivateIpAddresses",
            opts.priority,
            None,
            self.client
                .unassign_private_ip_addresses()
                .network_interface_id(&opts.eni_id)
                .set_private_ip_addresses((!ips.is_empty()).then(|| ips.clone()))
                .set_ipv4_prefixes((!prefixes.is_empty()).then(|| prefixes.clone()))
        )?;
        Ok(())
    }

    async fn subnet_capacity(
        &self,
        opts: &SubnetCapacityOptions,
    ) -> Result<Vec<SubnetCapacity>, ProviderError> {
        const API: &str = "DescribeSubnets";
        if opts.subnet_ids.is_empty() {
            return Ok(Vec::new());
        }
        let out = call!(
            self,
            API,
            opts.priority,
            None,
            self.client
                .describe_subnets()
                .set_subnet_ids(Some(opts.subnet_ids.clone()))
        )?
        .ok_or_else(|| missing(API, "a result"))?;
        let by_id: BTreeMap<&str, _> = out
            .subnets()
            .iter()
            .filter_map(|s| Some((s.subnet_id()?, s)))
            .collect();
        opts.subnet_ids
            .iter()
            .map(|id| {
                let s = by_id
                    .get(id.as_str())
                    .ok_or_else(|| ProviderError::NotFound {
                        api: API,
                        code: "InvalidSubnetID.NotFound".into(),
                        message: format!("subnet {id} not found"),
                        request_id: None,
                    })?;
                Ok(SubnetCapacity {
                    subnet_id: id.clone(),
                    zone: s.availability_zone().unwrap_or_default().to_string(),
                    cidr: parse_net(API, s.cidr_block().unwrap_or_default())?,
                    available_ips: s
                        .available_ip_address_count()
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(0),
                })
            })
            .collect()
    }
}
