//! Kubernetes-format `NetworkPolicy` (networking.k8s.io/v1), `Pod` and `Namespace` (v1),
//! reduced to the fields policy enforcement uses, in the same style as the manager's Service
//! types: small serde structs whose field names follow the API exactly, unknown fields
//! ignored, so any manifest `kubectl get -o yaml` prints parses. This module only describes
//! the objects; it does not validate or evaluate them (see [`crate::compile`]).

use std::collections::BTreeMap;

use serde::Deserialize;

/// The `metadata` fields used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ObjectMeta {
    /// `metadata.name`.
    #[serde(default)]
    pub name: String,
    /// `metadata.namespace` (`default` when absent; unused for namespaces).
    #[serde(default)]
    pub namespace: Option<String>,
    /// `metadata.labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// The namespace, `default` when not set.
    pub fn namespace(&self) -> &str {
        self.namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
    }
}

/// A `metav1.LabelSelector`. The empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// `matchLabels`: every pair must be present.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// `matchExpressions`: every requirement must hold.
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values for `In`/`NotIn` (non-empty); must be empty for `Exists`/`DoesNotExist`.
    #[serde(default)]
    pub values: Vec<String>,
}

/// A v1 `NetworkPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct NetworkPolicy {
    /// Name, namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: NetworkPolicySpec,
}

/// `NetworkPolicy.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// `podSelector`: the pods of the policy's namespace it applies to (`{}` = all).
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// `ingress` rules; absent or empty with `Ingress` in the types = deny all ingress.
    #[serde(default)]
    pub ingress: Option<Vec<IngressRule>>,
    /// `egress` rules; absent or empty with `Egress` in the types = deny all egress.
    #[serde(default)]
    pub egress: Option<Vec<EgressRule>>,
    /// `policyTypes`: `Ingress`, `Egress`. When absent: `Ingress`, plus `Egress` if the
    /// policy has at least one egress rule (the API server's default).
    #[serde(default)]
    pub policy_types: Option<Vec<String>>,
}

/// One `spec.ingress[]` rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IngressRule {
    /// `from`: absent or empty = every source.
    #[serde(default)]
    pub from: Option<Vec<NetworkPolicyPeer>>,
    /// `ports`: absent or empty = every port and protocol.
    #[serde(default)]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// One `spec.egress[]` rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EgressRule {
    /// `to`: absent or empty = every destination.
    #[serde(default)]
    pub to: Option<Vec<NetworkPolicyPeer>>,
    /// `ports`: absent or empty = every port and protocol.
    #[serde(default)]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// A `from`/`to` entry: selectors (alone or together) or an `ipBlock`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    /// `podSelector`: pods of the policy's namespace, or of the selected namespaces.
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// `namespaceSelector`: all pods of the selected namespaces (with `podSelector`: those
    /// of them that match it).
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// `ipBlock`: a CIDR with exceptions; not combinable with the selectors.
    #[serde(default)]
    pub ip_block: Option<IpBlock>,
}

/// `ipBlock`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IpBlock {
    /// `cidr`, e.g. `10.0.0.0/8`.
    pub cidr: String,
    /// `except`: CIDRs inside `cidr` that are not part of the block.
    #[serde(default)]
    pub except: Vec<String>,
}

/// A `ports[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// A number or a named container port; absent = every port of the protocol.
    #[serde(default)]
    pub port: Option<IntOrString>,
    /// `endPort`: with a numeric `port`, the range `port..=endPort`.
    #[serde(default)]
    pub end_port: Option<i64>,
}

/// `intstr.IntOrString`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A name (a string holding only digits is taken as a number).
    Str(String),
}

/// A v1 `Pod`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Pod {
    /// Name, namespace, labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: PodSpec,
    /// The status.
    #[serde(default)]
    pub status: PodStatus,
}

/// `Pod.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// `hostNetwork`: such pods are neither policed nor selectable as peers.
    #[serde(default)]
    pub host_network: bool,
    /// `containers`, for their named ports.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// `initContainers` (sidecars declare ports too).
    #[serde(default)]
    pub init_containers: Vec<Container>,
}

/// A container, reduced to its ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Container {
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `ports`.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

/// `containers[].ports[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// `name`: what a policy's named port refers to.
    #[serde(default)]
    pub name: Option<String>,
    /// `containerPort`.
    pub container_port: i64,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// `Pod.status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `podIP`.
    #[serde(rename = "podIP", default)]
    pub pod_ip: Option<String>,
    /// `podIPs`.
    #[serde(rename = "podIPs", default)]
    pub pod_ips: Vec<PodIp>,
}

/// `status.podIPs[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PodIp {
    /// `ip`.
    pub ip: String,
}

/// A v1 `Namespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Namespace {
    /// Name and labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
}
