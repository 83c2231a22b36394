//! The compiler: NetworkPolicies + Pods + Namespaces -> [`PodRules`] for every pod with an
//! IPv4 address. Validates each policy first (a bad one is reported with the field and the
//! fix, and the pods it would select are closed, never opened); then, per pod, adds up the
//! rules of every policy selecting it, resolves selectors to pod addresses and named ports
//! to numbers, and flattens the (CIDR, except) sets into longest-prefix entries.
//! It does no I/O and knows nothing of maps or programs.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;

use crate::{
    rules::{Allowed, CidrRule, DirectionRules, PodRules, PortRange, Protocol, MAX_PORT_RANGES},
    types::{
        IntOrString, LabelSelector, Namespace, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
        Pod,
    },
};

/// The label the API server puts on every namespace, holding its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A pod, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl PodRef {
    /// `PodRef { namespace, name }`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A policy the compiler rejected: which, where in it, and why (with the fix).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("NetworkPolicy {policy}: {field}: {reason}")]
pub struct PolicyError {
    /// `namespace/name`.
    pub policy: String,
    /// The field path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

/// The result of one compilation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Every pod with an IPv4 address and not on the host network.
    pub pods: BTreeMap<PodRef, PodRules>,
    /// Every rejected policy (the pods they select are closed).
    pub errors: Vec<PolicyError>,
}

/// What a rule's `ports` entry means once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PortSpec {
    /// A number, a range or every port of a protocol.
    Range(PortRange),
    /// A named container port, resolved on the pod that listens.
    Named { name: String, protocol: Protocol },
}

/// A validated peer.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Peer {
    /// Pods chosen by selectors; `ns: None` = the policy's own namespace.
    Pods {
        pods: Option<LabelSelector>,
        namespaces: Option<LabelSelector>,
    },
    /// An `ipBlock`.
    Block { cidr: Ipv4Net, except: Vec<Ipv4Net> },
}

/// A validated rule: `peers: None` = everyone, `ports: None` = everything.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    peers: Option<Vec<Peer>>,
    ports: Option<Vec<PortSpec>>,
}

/// A validated policy: `None` for a direction the policy does not cover.
#[derive(Clone, Debug)]
struct Policy {
    name: String,
    namespace: String,
    selector: LabelSelector,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

/// A pod as the compiler sees it.
#[derive(Clone, Debug)]
struct PodInfo {
    key: PodRef,
    ip: Ipv4Addr,
    labels: BTreeMap<String, String>,
    /// (name, protocol) -> port.
    named: BTreeMap<(String, Protocol), u16>,
}

/// One contribution before flattening: peers in `cidr` but in no `except` get `allowed`.
#[derive(Clone, Debug)]
struct Contribution {
    cidr: Ipv4Net,
    except: Vec<Ipv4Net>,
    allowed: Allowed,
}

/// Whether `labels` satisfy a selector that [`validate_selector`] accepted.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    sel.match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && sel.match_expressions.iter().all(|req| {
            let value = labels.get(&req.key);
            match req.operator.as_str() {
                "In" => value.is_some_and(|v| req.values.contains(v)),
                "NotIn" => value.is_none_or(|v| !req.values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

fn validate_selector(sel: &LabelSelector, field: &str) -> Result<(), (String, String)> {
    for (i, req) in sel.match_expressions.iter().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        if req.key.is_empty() {
            return Err((format!("{f}.key"), "must not be empty".into()));
        }
        match req.operator.as_str() {
            "In" | "NotIn" if req.values.is_empty() => {
                return Err((
                    format!("{f}.values"),
                    format!("operator {} needs at least one value", req.operator),
                ))
            }
            "Exists" | "DoesNotExist" if !req.values.is_empty() => {
                return Err((
                    format!("{f}.values"),
                    format!("operator {} takes no values; remove them", req.operator),
                ))
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err((
                    format!("{f}.operator"),
                    format!("unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"),
                ))
            }
        }
    }
    Ok(())
}

fn parse_cidr(s: &str, field: &str) -> Result<Option<Ipv4Net>, (String, String)> {
    if let Ok(net) = s.parse::<Ipv4Net>() {
        return Ok(Some(net.trunc()));
    }
    if s.parse::<ipnet::Ipv6Net>().is_ok() {
        // The datapath is IPv4 only; an IPv6 block can never match an IPv4 peer.
        return Ok(None);
    }
    Err((
        field.to_owned(),
        format!("{s:?} is not a CIDR; write it as address/prefix, e.g. 10.0.0.0/8"),
    ))
}

fn validate_port(p: &NetworkPolicyPort, field: &str) -> Result<PortSpec, (String, String)> {
    let protocol = Protocol::parse(p.protocol.as_deref()).ok_or_else(|| {
        (
            format!("{field}.protocol"),
            format!(
                "unknown protocol {:?}; use TCP, UDP or SCTP",
                p.protocol.as_deref().unwrap_or_default()
            ),
        )
    })?;
    let number = |n: i64, f: &str| -> Result<u16, (String, String)> {
        u16::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| (f.to_owned(), format!("{n} is not a port; use 1-65535")))
    };
    let start = match &p.port {
        None => {
            if p.end_port.is_some() {
                return Err((
                    format!("{field}.endPort"),
                    "endPort needs a numeric port; set port".into(),
                ));
            }
            return Ok(PortSpec::Range(PortRange::all(protocol)));
        }
        Some(IntOrString::Int(n)) => number(*n, &format!("{field}.port"))?,
        Some(IntOrString::Str(s)) => {
            if let Ok(n) = s.parse::<i64>() {
                number(n, &format!("{field}.port"))?
            } else {
                if p.end_port.is_some() {
                    return Err((
                        format!("{field}.endPort"),
                        "endPort cannot be used with a named port; use a number".into(),
                    ));
                }
                if s.is_empty() || s.len() > 15 {
                    return Err((
                        format!("{field}.port"),
                        format!("{s:?} is not a port name (1-15 characters)"),
                    ));
                }
                return Ok(PortSpec::Named {
                    name: s.clone(),
                    protocol,
                });
            }
        }
    };
    let end = match p.end_port {
        None => start,
        Some(e) => {
            let e = number(e, &format!("{field}.endPort"))?;
            if e < start {
                return Err((
                    format!("{field}.endPort"),
                    format!("{e} is below port {start}; endPort must be >= port"),
                ));
            }
            e
        }
    };
    Ok(PortSpec::Range(PortRange {
        protocol,
        start,
        end,
    }))
}

fn validate_peer(p: &NetworkPolicyPeer, field: &str) -> Result<Option<Peer>, (String, String)> {
    if let Some(block) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err((
                field.to_owned(),
                "ipBlock cannot be combined with podSelector or namespaceSelector; \
                 write them as separate peers"
                    .into(),
            ));
        }
        let Some(cidr) = parse_cidr(&block.cidr, &format!("{field}.ipBlock.cidr"))? else {
            return Ok(None);
        };
        let mut except = Vec::new();
        for (i, e) in block.except.iter().enumerate() {
            let f = format!("{field}.ipBlock.except[{i}]");
            let Some(e) = parse_cidr(e, &f)? else {
                continue;
            };
            if !cidr.contains(&e) || e == cidr {
                return Err((f, format!("{e} is not strictly inside cidr {cidr}")));
            }
            except.push(e);
        }
        return Ok(Some(Peer::Block { cidr, except }));
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        return Err((
            field.to_owned(),
            "a peer needs podSelector, namespaceSelector or ipBlock".into(),
        ));
    }
    if let Some(s) = &p.pod_selector {
        validate_selector(s, &format!("{field}.podSelector"))?;
    }
    if let Some(s) = &p.namespace_selector {
        validate_selector(s, &format!("{field}.namespaceSelector"))?;
    }
    Ok(Some(Peer::Pods {
        pods: p.pod_selector.clone(),
        namespaces: p.namespace_selector.clone(),
    }))
}

fn validate_rule(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
    field: &str,
    peer_word: &str,
) -> Result<Rule, (String, String)> {
    let peers = match peers {
        None => None,
        Some(v) if v.is_empty() => None,
        Some(v) => {
            let mut out = Vec::new();
            for (i, p) in v.iter().enumerate() {
                if let Some(p) = validate_peer(p, &format!("{field}.{peer_word}[{i}]"))? {
                    out.push(p);
                }
            }
            // Only IPv6 blocks: matches no IPv4 peer at all.
            Some(out)
        }
    };
    let ports = match ports {
        None => None,
        Some(v) if v.is_empty() => None,
        Some(v) => Some(
            v.iter()
                .enumerate()
                .map(|(i, p)| validate_port(p, &format!("{field}.ports[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Rule { peers, ports })
}

fn validate(np: &NetworkPolicy) -> Result<Policy, (String, String)> {
    let spec = &np.spec;
    validate_selector(&spec.pod_selector, "spec.podSelector")?;
    let (mut has_ingress, mut has_egress) = (false, false);
    match &spec.policy_types {
        None => {
            has_ingress = true;
            has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        Some(types) => {
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => has_ingress = true,
                    "Egress" => has_egress = true,
                    other => {
                        return Err((
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?}; use Ingress or Egress"),
                        ))
                    }
                }
            }
        }
    }
    let ingress = if has_ingress {
        let mut rules = Vec::new();
        for (i, r) in spec.ingress.iter().flatten().enumerate() {
            rules.push(validate_rule(
                r.from.as_ref(),
                r.ports.as_ref(),
                &format!("spec.ingress[{i}]"),
                "from",
            )?);
        }
        Some(rules)
    } else {
        None
    };
    let egress = if has_egress {
        let mut rules = Vec::new();
        for (i, r) in spec.egress.iter().flatten().enumerate() {
            rules.push(validate_rule(
                r.to.as_ref(),
                r.ports.as_ref(),
                &format!("spec.egress[{i}]"),
                "to",
            )?);
        }
        Some(rules)
    } else {
        None
    };
    Ok(Policy {
        name: np.metadata.name.clone(),
        namespace: np.metadata.namespace().to_owned(),
        selector: spec.pod_selector.clone(),
        ingress,
        egress,
    })
}

/// The first IPv4 address of a pod, if it has one.
pub fn pod_ipv4(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status
        .pod_ip
        .iter()
        .chain(pod.status.pod_ips.iter().map(|p| &p.ip))
        .find_map(|s| s.parse::<Ipv4Addr>().ok())
}

fn pod_info(pod: &Pod) -> Option<PodInfo> {
    if pod.spec.host_network {
        return None;
    }
    let ip = pod_ipv4(pod)?;
    let mut named = BTreeMap::new();
    for c in pod.spec.containers.iter().chain(&pod.spec.init_containers) {
        for p in &c.ports {
            let (Some(name), Some(proto), Ok(port)) = (
                p.name.as_ref(),
                Protocol::parse(p.protocol.as_deref()),
                u16::try_from(p.container_port),
            ) else {
                continue;
            };
            named.entry((name.clone(), proto)).or_insert(port);
        }
    }
    Some(PodInfo {
        key: PodRef::new(pod.metadata.namespace(), pod.metadata.name.clone()),
        ip,
        labels: pod.metadata.labels.clone(),
        named,
    })
}

/// The inputs of one compilation, indexed.
struct World<'a> {
    pods: Vec<PodInfo>,
    ns_labels: BTreeMap<&'a str, BTreeMap<String, String>>,
}

impl<'a> World<'a> {
    fn new(pods: &'a [Pod], namespaces: &'a [Namespace]) -> Self {
        let mut ns_labels: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
        for ns in namespaces {
            let mut labels = ns.metadata.labels.clone();
            labels.insert(NAMESPACE_NAME_LABEL.into(), ns.metadata.name.clone());
            ns_labels.insert(&ns.metadata.name, labels);
        }
        Self {
            pods: pods.iter().filter_map(pod_info).collect(),
            ns_labels,
        }
    }

    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.ns_labels
            .get(ns)
            .cloned()
            .unwrap_or_else(|| BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), ns.to_owned())]))
    }

    /// The pods a selector peer of a policy in `policy_ns` chooses.
    fn peer_pods(
        &self,
        policy_ns: &str,
        pods: Option<&LabelSelector>,
        namespaces: Option<&LabelSelector>,
    ) -> Vec<&PodInfo> {
        self.pods
            .iter()
            .filter(|p| match namespaces {
                None => p.key.namespace == policy_ns,
                Some(sel) => selector_matches(sel, &self.namespace_labels(&p.key.namespace)),
            })
            .filter(|p| pods.is_none_or(|sel| selector_matches(sel, &p.labels)))
            .collect()
    }
}

/// The ranges `ports` allow on a listener `target` (for named ports); `None` = everything.
fn resolve_ports(ports: Option<&Vec<PortSpec>>, target: Option<&PodInfo>) -> Allowed {
    let Some(ports) = ports else {
        return Allowed::everything();
    };
    let mut allowed = Allowed::nothing();
    for p in ports {
        match p {
            PortSpec::Range(r) => allowed.ranges.push(*r),
            PortSpec::Named { name, protocol } => {
                if let Some(port) =
                    target.and_then(|t| t.named.get(&(name.clone(), *protocol)).copied())
                {
                    allowed.ranges.push(PortRange {
                        protocol: *protocol,
                        start: port,
                        end: port,
                    });
                }
            }
        }
    }
    allowed.normalise();
    allowed
}

fn host(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("/32 is a valid prefix")
}

fn any_net() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is a valid prefix")
}

/// Contributions of one ingress rule to the pod `me`.
fn ingress_contributions(
    world: &World<'_>,
    policy: &Policy,
    rule: &Rule,
    me: &PodInfo,
) -> Vec<Contribution> {
    // Named ports of an ingress rule name the selected (listening) pod's ports.
    let allowed = resolve_ports(rule.ports.as_ref(), Some(me));
    if allowed.is_nothing() {
        return Vec::new();
    }
    let Some(peers) = &rule.peers else {
        return vec![Contribution {
            cidr: any_net(),
            except: Vec::new(),
            allowed,
        }];
    };
    let mut out = Vec::new();
    for peer in peers {
        match peer {
            Peer::Block { cidr, except } => out.push(Contribution {
                cidr: *cidr,
                except: except.clone(),
                allowed: allowed.clone(),
            }),
            Peer::Pods { pods, namespaces } => {
                for p in world.peer_pods(&policy.namespace, pods.as_ref(), namespaces.as_ref()) {
                    out.push(Contribution {
                        cidr: host(p.ip),
                        except: Vec::new(),
                        allowed: allowed.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Contributions of one egress rule (named ports resolve on each destination pod).
fn egress_contributions(world: &World<'_>, policy: &Policy, rule: &Rule) -> Vec<Contribution> {
    let numeric = resolve_ports(rule.ports.as_ref(), None);
    let has_named = rule
        .ports
        .iter()
        .flatten()
        .any(|p| matches!(p, PortSpec::Named { .. }));
    let mut out = Vec::new();
    let block = |cidr: Ipv4Net, except: &[Ipv4Net], out: &mut Vec<Contribution>| {
        if !numeric.is_nothing() {
            out.push(Contribution {
                cidr,
                except: except.to_vec(),
                allowed: numeric.clone(),
            });
        }
        if has_named {
            // Named ports of a block resolve on the pods known to be inside it.
            for p in &world.pods {
                if cidr.contains(&p.ip) && !except.iter().any(|e| e.contains(&p.ip)) {
                    let a = resolve_ports(rule.ports.as_ref(), Some(p));
                    if !a.is_nothing() {
                        out.push(Contribution {
                            cidr: host(p.ip),
                            except: Vec::new(),
                            allowed: a,
                        });
                    }
                }
            }
        }
    };
    match &rule.peers {
        None => block(any_net(), &[], &mut out),
        Some(peers) => {
            for peer in peers {
                match peer {
                    Peer::Block { cidr, except } => block(*cidr, except, &mut out),
                    Peer::Pods { pods, namespaces } => {
                        for p in
                            world.peer_pods(&policy.namespace, pods.as_ref(), namespaces.as_ref())
                        {
                            let a = resolve_ports(rule.ports.as_ref(), Some(p));
                            if !a.is_nothing() {
                                out.push(Contribution {
                                    cidr: host(p.ip),
                                    except: Vec::new(),
                                    allowed: a,
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Turns contributions into longest-prefix entries: every CIDR and except boundary becomes
/// an entry carrying the union of the contributions that cover it and do not except it;
/// entries that change nothing against their parent are left out.
fn flatten(contributions: &[Contribution]) -> Result<Vec<CidrRule>, String> {
    let mut bounds: BTreeSet<Ipv4Net> = BTreeSet::new();
    for c in contributions {
        bounds.insert(c.cidr);
        bounds.extend(c.except.iter().copied());
    }
    let mut full: Vec<CidrRule> = Vec::with_capacity(bounds.len());
    for b in &bounds {
        let mut allowed = Allowed::nothing();
        for c in contributions {
            if c.cidr.contains(b) && !c.except.iter().any(|e| e.contains(b)) {
                allowed.add(&c.allowed);
            }
        }
        if allowed.ranges.len() > MAX_PORT_RANGES {
            return Err(format!(
                "peers in {b} need {} distinct port ranges, more than the datapath's {MAX_PORT_RANGES}; \
                 merge ports into ranges (endPort) or split the policy by peer",
                allowed.ranges.len()
            ));
        }
        full.push(CidrRule { cidr: *b, allowed });
    }
    let parent_allowed = |r: &CidrRule| -> Allowed {
        full.iter()
            .filter(|p| p.cidr != r.cidr && p.cidr.contains(&r.cidr))
            .max_by_key(|p| p.cidr.prefix_len())
            .map(|p| p.allowed.clone())
            .unwrap_or_default()
    };
    let mut out: Vec<CidrRule> = full
        .iter()
        .filter(|r| r.allowed != parent_allowed(r))
        .cloned()
        .collect();
    out.sort_by_key(|r| (r.cidr.prefix_len(), r.cidr.network()));
    Ok(out)
}

/// Compiles the rules of every pod. Never fails as a whole: a rejected policy is listed in
/// [`Compiled::errors`] and closes the pods it would select (all pods of its namespace when
/// even its `podSelector` is bad).
pub fn compile(policies: &[NetworkPolicy], pods: &[Pod], namespaces: &[Namespace]) -> Compiled {
    compile_only(policies, pods, namespaces, &|_| true)
}

/// [`compile`] for the pods `only` accepts: every pod still counts as a peer (selectors
/// resolve over all of `pods`), but rules are computed, and returned, only for the
/// accepted ones. What a caller uses to compile one new pod, or only the pods of its node,
/// without paying for every other pod's rules.
pub fn compile_only(
    policies: &[NetworkPolicy],
    pods: &[Pod],
    namespaces: &[Namespace],
    only: &dyn Fn(&PodRef) -> bool,
) -> Compiled {
    let world = World::new(pods, namespaces);
    let mut errors = Vec::new();
    let mut valid: Vec<Policy> = Vec::new();
    // (namespace, selector or None = whole namespace, reason)
    let mut broken: Vec<(String, Option<LabelSelector>, String)> = Vec::new();
    for np in policies {
        let ns = np.metadata.namespace().to_owned();
        match validate(np) {
            Ok(p) => valid.push(p),
            Err((field, reason)) => {
                let err = PolicyError {
                    policy: format!("{ns}/{}", np.metadata.name),
                    field,
                    reason,
                };
                let selector = validate_selector(&np.spec.pod_selector, "spec.podSelector")
                    .ok()
                    .map(|()| np.spec.pod_selector.clone());
                broken.push((ns, selector, err.to_string()));
                errors.push(err);
            }
        }
    }

    let mut out = BTreeMap::new();
    for me in world.pods.iter().filter(|p| only(&p.key)) {
        let ns_of = &me.key.namespace;
        if let Some((_, _, reason)) = broken.iter().find(|(ns, sel, _)| {
            ns == ns_of && sel.as_ref().is_none_or(|s| selector_matches(s, &me.labels))
        }) {
            out.insert(me.key.clone(), PodRules::closed(me.ip, reason.clone()));
            continue;
        }
        let selecting: Vec<&Policy> = valid
            .iter()
            .filter(|p| &p.namespace == ns_of && selector_matches(&p.selector, &me.labels))
            .collect();
        let mut rules = PodRules::open(me.ip);
        rules.policies = selecting
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let mut ingress: Option<Vec<Contribution>> = None;
        let mut egress: Option<Vec<Contribution>> = None;
        for p in &selecting {
            if let Some(rs) = &p.ingress {
                let acc = ingress.get_or_insert_with(Vec::new);
                for r in rs {
                    acc.extend(ingress_contributions(&world, p, r, me));
                }
            }
            if let Some(rs) = &p.egress {
                let acc = egress.get_or_insert_with(Vec::new);
                for r in rs {
                    acc.extend(egress_contributions(&world, p, r));
                }
            }
        }
        let mut fail = None;
        if let Some(c) = ingress {
            match flatten(&c) {
                Ok(v) => rules.ingress = DirectionRules::Enforced(v),
                Err(e) => fail = Some(format!("ingress: {e}")),
            }
        }
        if let Some(c) = egress {
            match flatten(&c) {
                Ok(v) => rules.egress = DirectionRules::Enforced(v),
                Err(e) => fail = Some(format!("egress: {e}")),
            }
        }
        if let Some(reason) = fail {
            let policies = rules.policies.clone();
            rules = PodRules::closed(me.ip, reason);
            rules.policies = policies;
        }
        out.insert(me.key.clone(), rules);
    }
    Compiled { pods: out, errors }
}
