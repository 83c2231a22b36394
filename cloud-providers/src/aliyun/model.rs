//! Alibaba Cloud response shapes (JSON, lists wrapped by their singular name) and their
//! conversion into the crate's vendor-neutral types. No I/O here.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::error::ProviderError;
use crate::provider::{Eni, EniStatus, SubnetCapacity};

/// `{"SecurityGroupId":[..]}`
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SecurityGroupIds {
    #[serde(rename = "SecurityGroupId", default)]
    pub items: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PrivateIpSet {
    #[serde(rename = "PrivateIpAddress")]
    pub address: String,
    #[serde(rename = "Primary", default)]
    pub primary: bool,
}

/// `{"PrivateIpSet":[{"PrivateIpAddress","Primary"}]}`
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PrivateIpSets {
    #[serde(rename = "PrivateIpSet", default)]
    pub items: Vec<PrivateIpSet>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Ipv4PrefixSet {
    #[serde(rename = "Ipv4Prefix")]
    pub prefix: String,
}

/// `{"Ipv4PrefixSet":[{"Ipv4Prefix"}]}`
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Ipv4PrefixSets {
    #[serde(rename = "Ipv4PrefixSet", default)]
    pub items: Vec<Ipv4PrefixSet>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Tag {
    #[serde(rename = "TagKey")]
    pub key: String,
    #[serde(rename = "TagValue", default)]
    pub value: String,
}

/// `{"Tag":[{"TagKey","TagValue"}]}`
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Tags {
    #[serde(rename = "Tag", default)]
    pub items: Vec<Tag>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Attachment {
    #[serde(rename = "InstanceId", default)]
    pub instance_id: String,
    #[serde(rename = "DeviceIndex", default)]
    pub device_index: Option<u32>,
}

/// One ENI, as in `DescribeNetworkInterfaces` items, `DescribeNetworkInterfaceAttribute` and
/// the `CreateNetworkInterface` answer.
#[derive(Debug, Deserialize)]
pub(crate) struct EniItem {
    #[serde(rename = "NetworkInterfaceId")]
    pub id: String,
    #[serde(rename = "Status", default)]
    pub status: String,
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(rename = "VpcId", default)]
    pub vpc_id: String,
    #[serde(rename = "VSwitchId", default)]
    pub vswitch_id: String,
    #[serde(rename = "ZoneId", default)]
    pub zone_id: String,
    #[serde(rename = "InstanceId", default)]
    pub instance_id: String,
    #[serde(rename = "MacAddress", default)]
    pub mac: String,
    #[serde(rename = "PrivateIpAddress", default)]
    pub private_ip: String,
    #[serde(rename = "SecurityGroupIds", default)]
    pub security_groups: SecurityGroupIds,
    #[serde(rename = "PrivateIpSets", default)]
    pub private_ips: PrivateIpSets,
    #[serde(rename = "Ipv4PrefixSets", default)]
    pub prefixes: Ipv4PrefixSets,
    #[serde(rename = "Tags", default)]
    pub tags: Tags,
    #[serde(rename = "Attachment", default)]
    pub attachment: Option<Attachment>,
}

/// `DescribeNetworkInterfaces` answer.
#[derive(Debug, Deserialize)]
pub(crate) struct DescribeEnisResponse {
    #[serde(rename = "NetworkInterfaceSets", default)]
    pub sets: EniSets,
    #[serde(rename = "NextToken", default)]
    pub next_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct EniSets {
    #[serde(rename = "NetworkInterfaceSet", default)]
    pub items: Vec<EniItem>,
}

/// `AssignPrivateIpAddresses` answer.
#[derive(Debug, Deserialize)]
pub(crate) struct AssignResponse {
    #[serde(rename = "AssignedPrivateIpAddressesSet")]
    pub set: AssignedSet,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AssignedSet {
    #[serde(rename = "PrivateIpSet", default)]
    pub ips: Option<AssignedIps>,
    #[serde(rename = "Ipv4PrefixSet", default)]
    pub prefixes: Option<AssignedPrefixes>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AssignedIps {
    #[serde(rename = "PrivateIpAddress", default)]
    pub items: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AssignedPrefixes {
    #[serde(rename = "Ipv4Prefixes", default)]
    pub items: Vec<String>,
}

/// `DescribeInstanceTypes` answer.
#[derive(Debug, Deserialize)]
pub(crate) struct InstanceTypesResponse {
    #[serde(rename = "InstanceTypes", default)]
    pub types: InstanceTypeList,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct InstanceTypeList {
    #[serde(rename = "InstanceType", default)]
    pub items: Vec<InstanceTypeItem>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InstanceTypeItem {
    #[serde(rename = "InstanceTypeId")]
    pub id: String,
    #[serde(rename = "EniQuantity", default)]
    pub eni_quantity: u32,
    #[serde(rename = "EniPrivateIpAddressQuantity", default)]
    pub eni_private_ip_address_quantity: u32,
}

/// `DescribeInstances` answer.
#[derive(Debug, Deserialize)]
pub(crate) struct InstancesResponse {
    #[serde(rename = "Instances", default)]
    pub instances: InstanceList,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct InstanceList {
    #[serde(rename = "Instance", default)]
    pub items: Vec<InstanceItem>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InstanceItem {
    #[serde(rename = "InstanceId")]
    pub id: String,
    #[serde(rename = "InstanceType", default)]
    pub instance_type: String,
    #[serde(rename = "RegionId", default)]
    pub region_id: String,
    #[serde(rename = "ZoneId", default)]
    pub zone_id: String,
    #[serde(rename = "VpcAttributes", default)]
    pub vpc: VpcAttributes,
    #[serde(rename = "NetworkInterfaces", default)]
    pub enis: InstanceEnis,
    #[serde(rename = "SecurityGroupIds", default)]
    pub security_groups: SecurityGroupIds,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct VpcAttributes {
    #[serde(rename = "VpcId", default)]
    pub vpc_id: String,
    #[serde(rename = "VSwitchId", default)]
    pub vswitch_id: String,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct InstanceEnis {
    #[serde(rename = "NetworkInterface", default)]
    pub items: Vec<InstanceEni>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InstanceEni {
    #[serde(rename = "NetworkInterfaceId")]
    pub id: String,
    #[serde(rename = "MacAddress", default)]
    pub mac: String,
    #[serde(rename = "PrimaryIpAddress", default)]
    pub primary_ip: String,
    #[serde(rename = "Type", default)]
    pub kind: String,
}

/// `DescribeVSwitches` answer.
#[derive(Debug, Deserialize)]
pub(crate) struct VSwitchesResponse {
    #[serde(rename = "VSwitches", default)]
    pub vswitches: VSwitchList,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct VSwitchList {
    #[serde(rename = "VSwitch", default)]
    pub items: Vec<VSwitchItem>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct VSwitchItem {
    #[serde(rename = "VSwitchId")]
    pub id: String,
    #[serde(rename = "ZoneId", default)]
    pub zone_id: String,
    #[serde(rename = "CidrBlock", default)]
    pub cidr: String,
    #[serde(rename = "AvailableIpAddressCount", default)]
    pub available: u64,
}

/// Parse a JSON answer of `api` into `T`.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    api: &'static str,
    body: &serde_json::Value,
) -> Result<T, ProviderError> {
    T::deserialize(body).map_err(|e| ProviderError::malformed(api, e.to_string()))
}

pub(crate) fn parse_ip(api: &'static str, s: &str) -> Result<Ipv4Addr, ProviderError> {
    s.parse()
        .map_err(|_| ProviderError::malformed(api, format!("not an IPv4 address: {s:?}")))
}

pub(crate) fn parse_net(api: &'static str, s: &str) -> Result<Ipv4Net, ProviderError> {
    s.parse()
        .map_err(|_| ProviderError::malformed(api, format!("not an IPv4 CIDR: {s:?}")))
}

fn status(s: &str) -> EniStatus {
    match s {
        "Available" => EniStatus::Available,
        "Attaching" => EniStatus::Attaching,
        "InUse" => EniStatus::InUse,
        "Detaching" => EniStatus::Detaching,
        "Deleting" => EniStatus::Deleting,
        other => EniStatus::Unknown(other.to_string()),
    }
}

fn non_empty(s: String) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

impl EniItem {
    /// The vendor-neutral form.
    pub(crate) fn into_eni(self, api: &'static str) -> Result<Eni, ProviderError> {
        let mut primary_ip = if self.private_ip.is_empty() {
            None
        } else {
            Some(parse_ip(api, &self.private_ip)?)
        };
        let mut secondary_ips = Vec::new();
        for ip in &self.private_ips.items {
            let addr = parse_ip(api, &ip.address)?;
            if ip.primary {
                primary_ip = Some(addr);
            } else {
                secondary_ips.push(addr);
            }
        }
        let prefixes = self
            .prefixes
            .items
            .iter()
            .map(|p| parse_net(api, &p.prefix))
            .collect::<Result<Vec<_>, _>>()?;
        let (att_instance, device_index) = match self.attachment {
            Some(a) => (non_empty(a.instance_id), a.device_index),
            None => (None, None),
        };
        Ok(Eni {
            status: status(&self.status),
            is_primary: self.kind == "Primary",
            mac: self.mac.to_ascii_lowercase(),
            subnet_id: self.vswitch_id,
            zone: self.zone_id,
            vpc_id: self.vpc_id,
            instance_id: non_empty(self.instance_id).or(att_instance),
            device_index,
            attachment_id: None,
            primary_ip,
            secondary_ips,
            prefixes,
            security_group_ids: self.security_groups.items,
            tags: self
                .tags
                .items
                .into_iter()
                .map(|t| (t.key, t.value))
                .collect::<BTreeMap<_, _>>(),
            id: self.id,
        })
    }
}

impl VSwitchItem {
    pub(crate) fn into_capacity(self, api: &'static str) -> Result<SubnetCapacity, ProviderError> {
        Ok(SubnetCapacity {
            cidr: parse_net(api, &self.cidr)?,
            subnet_id: self.id,
            zone: self.zone_id,
            available_ips: self.available,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eni_json() -> serde_json::Value {
        json!({
            "NetworkInterfaceId": "eni-1",
            "Status": "InUse",
            "Type": "Secondary",
            "VpcId": "vpc-mock",
            "VSwitchId": "vsw-h1",
            "ZoneId": "cn-hangzhou-h",
            "InstanceId": "i-node-a",
            "MacAddress": "00:16:3E:00:00:01",
            "PrivateIpAddress": "192.168.1.20",
            "CreationTime": "2024-01-01T00:00:00Z",
            "SecurityGroupIds": {"SecurityGroupId": ["sg-nodes"]},
            "PrivateIpSets": {"PrivateIpSet": [
                {"PrivateIpAddress": "192.168.1.20", "Primary": true},
                {"PrivateIpAddress": "192.168.1.21", "Primary": false}
            ]},
            "Ipv4PrefixSets": {"Ipv4PrefixSet": [{"Ipv4Prefix": "192.168.1.32/28"}]},
            "Tags": {"Tag": [{"TagKey": "cluster", "TagValue": "c1"}]},
            "Attachment": {"InstanceId": "i-node-a", "DeviceIndex": 1}
        })
    }

    #[test]
    fn eni_item_full() {
        let item: EniItem = parse("X", &eni_json()).unwrap();
        let eni = item.into_eni("X").unwrap();
        assert_eq!(eni.id, "eni-1");
        assert_eq!(eni.status, EniStatus::InUse);
        assert!(!eni.is_primary);
        assert_eq!(eni.mac, "00:16:3e:00:00:01");
        assert_eq!(eni.primary_ip, Some(Ipv4Addr::new(192, 168, 1, 20)));
        assert_eq!(eni.secondary_ips, vec![Ipv4Addr::new(192, 168, 1, 21)]);
        assert_eq!(eni.prefixes, vec!["192.168.1.32/28".parse().unwrap()]);
        assert_eq!(eni.security_group_ids, vec!["sg-nodes".to_string()]);
        assert_eq!(eni.tags.get("cluster").map(String::as_str), Some("c1"));
        assert_eq!(eni.instance_id.as_deref(), Some("i-node-a"));
        assert_eq!(eni.device_index, Some(1));
        assert_eq!(eni.subnet_id, "vsw-h1");
    }

    #[test]
    fn eni_item_minimal_and_detached() {
        let item: EniItem = parse(
            "X",
            &json!({"NetworkInterfaceId": "eni-2", "Status": "Available", "InstanceId": "",
                    "PrivateIpSets": {"PrivateIpSet": []}, "Type": "Primary"}),
        )
        .unwrap();
        let eni = item.into_eni("X").unwrap();
        assert_eq!(eni.instance_id, None);
        assert!(eni.is_primary);
        assert_eq!(eni.primary_ip, None);
        assert!(eni.tags.is_empty());
        let weird: EniItem =
            parse("X", &json!({"NetworkInterfaceId": "e", "Status": "Frozen"})).unwrap();
        assert_eq!(
            weird.into_eni("X").unwrap().status,
            EniStatus::Unknown("Frozen".into())
        );
        let bad: EniItem = parse(
            "X",
            &json!({"NetworkInterfaceId": "e", "PrivateIpAddress": "nope"}),
        )
        .unwrap();
        assert!(matches!(
            bad.into_eni("X"),
            Err(ProviderError::Malformed { .. })
        ));
    }

    #[test]
    fn describe_enis_page() {
        let body = json!({
            "RequestId": "r", "TotalCount": 2, "NextToken": "tok2",
            "NetworkInterfaceSets": {"NetworkInterfaceSet": [eni_json(), eni_json()]}
        });
        let r: DescribeEnisResponse = parse("X", &body).unwrap();
        assert_eq!(r.sets.items.len(), 2);
        assert_eq!(r.next_token.as_deref(), Some("tok2"));
        let empty: DescribeEnisResponse = parse("X", &json!({"RequestId": "r"})).unwrap();
        assert!(empty.sets.items.is_empty());
        assert_eq!(empty.next_token, None);
    }

    #[test]
    fn assign_answer() {
        let r: AssignResponse = parse(
            "X",
            &json!({"RequestId": "r", "AssignedPrivateIpAddressesSet": {
                "NetworkInterfaceId": "eni-1",
                "PrivateIpSet": {"PrivateIpAddress": ["192.168.1.30", "192.168.1.31"]}}}),
        )
        .unwrap();
        assert_eq!(r.set.ips.unwrap().items.len(), 2);
        assert!(r.set.prefixes.is_none());
        let r: AssignResponse = parse(
            "X",
            &json!({"AssignedPrivateIpAddressesSet": {
                "NetworkInterfaceId": "eni-1",
                "Ipv4PrefixSet": {"Ipv4Prefixes": ["192.168.1.48/28"]}}}),
        )
        .unwrap();
        assert_eq!(r.set.prefixes.unwrap().items, vec!["192.168.1.48/28"]);
        assert!(parse::<AssignResponse>("X", &json!({})).is_err());
    }

    #[test]
    fn instance_types_instances_vswitches() {
        let t: InstanceTypesResponse = parse(
            "X",
            &json!({"InstanceTypes": {"InstanceType": [{"InstanceTypeId": "ecs.g7.large",
                "EniQuantity": 3, "EniPrivateIpAddressQuantity": 10, "EniIpv6AddressQuantity": 10,
                "EniTotalQuantity": 3, "EniTrunkSupported": false}]}}),
        )
        .unwrap();
        assert_eq!(t.types.items[0].eni_quantity, 3);
        assert_eq!(t.types.items[0].eni_private_ip_address_quantity, 10);

        let i: InstancesResponse = parse(
            "X",
            &json!({"Instances": {"Instance": [{
                "InstanceId": "i-node-a", "InstanceType": "ecs.g7.large", "RegionId": "cn-hangzhou",
                "ZoneId": "cn-hangzhou-h", "Status": "Running",
                "VpcAttributes": {"VpcId": "vpc-mock", "VSwitchId": "vsw-h1",
                                  "PrivateIpAddress": {"IpAddress": ["192.168.1.10"]}},
                "NetworkInterfaces": {"NetworkInterface": [{"NetworkInterfaceId": "eni-p",
                    "MacAddress": "00:16:3e:aa:bb:cc", "PrimaryIpAddress": "192.168.1.10", "Type": "Primary"}]},
                "SecurityGroupIds": {"SecurityGroupId": ["sg-nodes"]}}]}}),
        )
        .unwrap();
        let inst = &i.instances.items[0];
        assert_eq!(inst.vpc.vswitch_id, "vsw-h1");
        assert_eq!(inst.enis.items[0].kind, "Primary");
        assert_eq!(inst.security_groups.items, vec!["sg-nodes"]);

        let v: VSwitchesResponse = parse(
            "X",
            &json!({"TotalCount": 1, "VSwitches": {"VSwitch": [{"VSwitchId": "vsw-h1",
                "VpcId": "vpc-mock", "ZoneId": "cn-hangzhou-h", "CidrBlock": "192.168.1.0/24",
                "AvailableIpAddressCount": 250, "Status": "Available"}]}}),
        )
        .unwrap();
        let cap = v
            .vswitches
            .items
            .into_iter()
            .next()
            .unwrap()
            .into_capacity("X")
            .unwrap();
        assert_eq!(cap.available_ips, 250);
        assert_eq!(cap.cidr, "192.168.1.0/24".parse::<Ipv4Net>().unwrap());
    }
}
