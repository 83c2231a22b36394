//! Kubernetes-format `Service` (v1) and `EndpointSlice` (discovery.k8s.io/v1), reduced to
//! the fields the datapath uses. Unknown fields are ignored (real manifests carry many), so
//! any manifest `kubectl get -o yaml` prints parses. We chose these small serde structs over
//! `k8s-openapi`: ~20 fields instead of the whole API surface, nothing to compile for
//! minutes on the node daemon, and no Kubernetes-version feature to pick; the field names
//! follow the API exactly, so a later watch source can map `k8s-openapi` objects onto them.

use serde::Deserialize;

/// The `metadata` fields used (name, namespace, labels): the same reduced type the policy
/// compiler reads.
pub use eni_policy::types::ObjectMeta;

/// A v1 `Service`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Service {
    /// Name, namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: ServiceSpec,
    /// The status (only `status.loadBalancer.ingress[].ip` is used).
    #[serde(default)]
    pub status: ServiceStatus,
}

impl Service {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.metadata.namespace(), self.metadata.name)
    }

    /// The IPv4 `status.loadBalancer.ingress[].ip` addresses (a `hostname`-only ingress,
    /// an IPv6 or an unparsable address is skipped).
    pub fn load_balancer_ips(&self) -> Vec<std::net::Ipv4Addr> {
        let mut out: Vec<std::net::Ipv4Addr> = Vec::new();
        for ip in self
            .status
            .load_balancer
            .iter()
            .flat_map(|lb| lb.ingress.iter())
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
        {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        out
    }
}

/// `Service.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP` (default), `NodePort`, `LoadBalancer` or `ExternalName`.
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    /// `clusterIP`; `None` (the string) for a headless service.
    #[serde(rename = "clusterIP", default)]
    pub cluster_ip: Option<String>,
    /// `clusterIPs` (dual stack); the first equals `clusterIP`.
    #[serde(rename = "clusterIPs", default)]
    pub cluster_ips: Vec<String>,
    /// `externalIPs`.
    #[serde(rename = "externalIPs", default)]
    pub external_ips: Vec<String>,
    /// `ports`.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `None` (default) or `ClientIP`.
    #[serde(default)]
    pub session_affinity: Option<String>,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds`.
    #[serde(default)]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// `Cluster` (default) or `Local`.
    #[serde(default)]
    pub internal_traffic_policy: Option<String>,
    /// `externalTrafficPolicy`: `Cluster` (default) or `Local`, for NodePorts, externalIPs
    /// and LoadBalancer IPs reached from outside the node.
    #[serde(default)]
    pub external_traffic_policy: Option<String>,
}

/// `Service.spec.sessionAffinityConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SessionAffinityConfig {
    /// `clientIP`.
    #[serde(rename = "clientIP", default)]
    pub client_ip: Option<ClientIpConfig>,
}

/// `sessionAffinityConfig.clientIP`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    /// Affinity timeout (default 10800).
    #[serde(default)]
    pub timeout_seconds: Option<i64>,
}

/// `Service.spec.ports[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name (required when there are several ports).
    #[serde(default)]
    pub name: Option<String>,
    /// The service port.
    pub port: i32,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Number or name of the pods' port (default: `port`).
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    /// `nodePort` of a `NodePort` or `LoadBalancer` service (the API server allocates it).
    #[serde(default)]
    pub node_port: Option<i32>,
}

/// An int-or-string field (`targetPort`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i32),
    /// A name.
    String(String),
}

/// A discovery.k8s.io/v1 `EndpointSlice`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// Name, namespace, and the `kubernetes.io/service-name` label.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `IPv4`, `IPv6` or `FQDN`.
    #[serde(default)]
    pub address_type: Option<String>,
    /// The endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The ports every endpoint of the slice serves.
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

/// The label naming a slice's service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl EndpointSlice {
    /// The service this slice belongs to (its `kubernetes.io/service-name` label).
    pub fn service_name(&self) -> Option<&str> {
        self.metadata
            .labels
            .get(SERVICE_NAME_LABEL)
            .map(String::as_str)
    }
}

/// `EndpointSlice.endpoints[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Endpoint {
    /// Addresses (one for IPv4 slices in practice).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Readiness.
    #[serde(default)]
    pub conditions: EndpointConditions,
    /// `nodeName`: the node the endpoint runs on (for `internalTrafficPolicy: Local`).
    #[serde(rename = "nodeName", default)]
    pub node_name: Option<String>,
}

/// `EndpointSlice.endpoints[].conditions`; absent values follow the API's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EndpointConditions {
    /// Ready; absent means ready.
    #[serde(default)]
    pub ready: Option<bool>,
    /// Serving regardless of termination; absent means the value of `ready`.
    #[serde(default)]
    pub serving: Option<bool>,
    /// Terminating; absent means not.
    #[serde(default)]
    pub terminating: Option<bool>,
}

/// `EndpointSlice.ports[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EndpointPort {
    /// The name of the service port this is (empty/absent for an unnamed one).
    #[serde(default)]
    pub name: Option<String>,
    /// The pods' port number.
    #[serde(default)]
    pub port: Option<i32>,
    /// `TCP` (default), `UDP`, `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// `Service.status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// `status.loadBalancer`.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerStatus>,
}

/// `Service.status.loadBalancer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LoadBalancerStatus {
    /// `ingress`: the load balancer's addresses.
    #[serde(default)]
    pub ingress: Vec<LoadBalancerIngress>,
}

/// `Service.status.loadBalancer.ingress[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LoadBalancerIngress {
    /// An IP address (a `hostname`-only ingress has none and is not served).
    #[serde(default)]
    pub ip: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_load_balancer_ips_parse_with_the_service() {
        let s: Service = serde_yaml::from_str(
            r#"
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { type: LoadBalancer, clusterIP: 10.96.0.10, ports: [{ port: 80, nodePort: 30080 }] }
status:
  loadBalancer:
    ingress:
      - ip: 203.0.113.9
      - hostname: lb.example.com
      - ip: 2001:db8::1
      - ip: 203.0.113.9
      - ip: 198.51.100.4
"#,
        )
        .unwrap();
        assert_eq!(s.id(), "shop/web");
        assert_eq!(
            s.load_balancer_ips(),
            vec![
                std::net::Ipv4Addr::new(203, 0, 113, 9),
                std::net::Ipv4Addr::new(198, 51, 100, 4)
            ]
        );
        let none: Service =
            serde_yaml::from_str("metadata: { name: x }\nspec: { clusterIP: 10.96.0.1 }\n")
                .unwrap();
        assert!(none.load_balancer_ips().is_empty());
        assert_eq!(none.id(), "default/x");
    }
}
