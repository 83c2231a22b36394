//! Unit tests of the compiler: selection, every peer and port form, default deny, adding up,
//! flattening of excepts, and rejection of bad input.

use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::{
    compile,
    types::{
        Container, ContainerPort, Namespace, NetworkPolicy, ObjectMeta, Pod, PodSpec, PodStatus,
    },
    Compiled, DirectionRules, PodRef, MAX_PORT_RANGES,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn pod(ns: &str, name: &str, ip: &str, l: &[(&str, &str)], ports: &[(&str, i64, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: Some(ns.into()),
            labels: labels(l),
        },
        spec: PodSpec {
            host_network: false,
            containers: vec![Container {
                name: "c".into(),
                ports: ports
                    .iter()
                    .map(|(n, p, proto)| ContainerPort {
                        name: Some((*n).into()),
                        container_port: *p,
                        protocol: Some((*proto).into()),
                    })
                    .collect(),
            }],
            init_containers: Vec::new(),
        },
        status: PodStatus {
            pod_ip: Some(ip.into()),
            pod_ips: Vec::new(),
        },
    }
}

fn ns(name: &str, l: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: None,
            labels: labels(l),
        },
    }
}

fn pol(yaml: &str) -> NetworkPolicy {
    serde_yaml::from_str(yaml).expect("policy YAML")
}

/// Two namespaces, `a` (team=a) and `b` (team=b), with a few pods.
fn world() -> (Vec<Pod>, Vec<Namespace>) {
    let pods = vec![
        pod(
            "a",
            "web",
            "10.0.1.1",
            &[("app", "web")],
            &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
        ),
        pod(
            "a",
            "db",
            "10.0.1.2",
            &[("app", "db"), ("tier", "data")],
            &[("http", 9090, "TCP")],
        ),
        pod("a", "client", "10.0.1.3", &[("role", "client")], &[]),
        pod("b", "client", "10.0.2.1", &[("role", "client")], &[]),
        pod(
            "b",
            "web",
            "10.0.2.2",
            &[("app", "web")],
            &[("http", 8081, "TCP")],
        ),
        pod("c", "client", "10.0.3.1", &[("role", "client")], &[]),
    ];
    let nss = vec![
        ns("a", &[("team", "a")]),
        ns("b", &[("team", "b")]),
        ns("c", &[]),
    ];
    (pods, nss)
}

fn run(policies: &[&str]) -> Compiled {
    let (pods, nss) = world();
    let ps: Vec<NetworkPolicy> = policies.iter().map(|y| pol(y)).collect();
    compile(&ps, &pods, &nss)
}

fn rules<'a>(c: &'a Compiled, ns: &str, name: &str) -> &'a crate::PodRules {
    c.pods
        .get(&PodRef::new(ns, name))
        .unwrap_or_else(|| panic!("pod {ns}/{name} compiled"))
}

fn ing(c: &Compiled, pod: (&str, &str), from: &str, proto: u8, port: u16) -> bool {
    rules(c, pod.0, pod.1)
        .ingress
        .permits(from.parse().expect("ip"), proto, port)
}

fn egr(c: &Compiled, pod: (&str, &str), to: &str, proto: u8, port: u16) -> bool {
    rules(c, pod.0, pod.1)
        .egress
        .permits(to.parse().expect("ip"), proto, port)
}

const WEB: (&str, &str) = ("a", "web");
const DB: (&str, &str) = ("a", "db");

#[test]
fn a_pod_selected_by_no_policy_is_open() {
    let c = run(&[]);
    assert!(c.errors.is_empty());
    assert_eq!(c.pods.len(), 6);
    for r in c.pods.values() {
        assert_eq!(r.ingress, DirectionRules::Open);
        assert_eq!(r.egress, DirectionRules::Open);
        assert!(r.closed.is_none());
    }
    assert!(ing(&c, WEB, "1.2.3.4", ICMP, 0));
}

#[test]
fn ingress_only_default_deny_leaves_egress_open() {
    let c = run(&["
metadata: {name: deny-in, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"]);
    let web = rules(&c, "a", "web");
    assert_eq!(web.ingress, DirectionRules::Enforced(vec![]));
    assert_eq!(web.egress, DirectionRules::Open);
    assert_eq!(web.policies, vec!["a/deny-in".to_owned()]);
    assert!(!ing(&c, WEB, "10.0.1.3", TCP, 8080));
    assert!(egr(&c, WEB, "8.8.8.8", UDP, 53));
    // Another namespace is untouched.
    assert_eq!(rules(&c, "b", "web").ingress, DirectionRules::Open);
}

#[test]
fn policy_types_default_without_egress_rules_is_ingress_only() {
    let c = run(&["
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
"]);
    let web = rules(&c, "a", "web");
    assert!(web.ingress.is_enforced());
    assert!(!web.egress.is_enforced());
    // Not selected: open.
    assert!(!rules(&c, "a", "db").ingress.is_enforced());
}

#[test]
fn egress_default_deny_leaves_ingress_open() {
    let c = run(&["
metadata: {name: deny-out, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Egress]
"]);
    assert!(!egr(&c, WEB, "10.0.1.2", TCP, 80));
    assert!(ing(&c, WEB, "10.0.1.2", TCP, 80));
}

#[test]
fn egress_rules_without_policy_types_isolate_both_directions() {
    let c = run(&["
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
"]);
    let web = rules(&c, "a", "web");
    assert!(web.ingress.is_enforced() && web.egress.is_enforced());
    assert!(egr(&c, WEB, "10.0.1.2", TCP, 1));
    assert!(
        egr(&c, WEB, "10.0.1.2", ICMP, 0),
        "no ports = every protocol"
    );
    assert!(!egr(&c, WEB, "10.0.1.3", TCP, 1));
    assert!(!ing(&c, WEB, "10.0.1.2", TCP, 8080));
}

#[test]
fn pod_selector_with_ports_and_protocols() {
    let c = run(&["
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 80}, {protocol: UDP, port: 53}]
"]);
    assert!(ing(&c, WEB, "10.0.1.3", TCP, 80));
    assert!(!ing(&c, WEB, "10.0.1.3", TCP, 81));
    assert!(!ing(&c, WEB, "10.0.1.3", UDP, 80));
    assert!(ing(&c, WEB, "10.0.1.3", UDP, 53));
    assert!(!ing(&c, WEB, "10.0.1.3", ICMP, 0));
    // podSelector alone means the policy's own namespace only.
    assert!(!ing(&c, WEB, "10.0.2.1", TCP, 80));
    assert!(!ing(&c, WEB, "10.0.1.2", TCP, 80));
}

#[test]
fn match_expressions_all_operators() {
    let c = run(&["
metadata: {name: p, namespace: a}
spec:
  podSelector:
    matchExpressions:
    - {key: app, operator: In, values: [web, db]}
    - {key: tier, operator: DoesNotExist}
  ingress:
  - from:
    - podSelector:
        matchExpressions:
        - {key: role, operator: Exists}
        - {key: app, operator: NotIn, values: [web]}
"]);
    // web selected (app=web, no tier); db not (tier exists).
    assert!(rules(&c, "a", "web").ingress.is_enforced());
    assert!(!rules(&c, "a", "db").ingress.is_enforced());
    assert!(ing(&c, WEB, "10.0.1.3", TCP, 1), "client has role, no app");
    assert!(!ing(&c, WEB, "10.0.1.2", TCP, 1), "db has no role");
}

#[test]
fn namespace_selector_alone_takes_every_pod_of_the_namespaces() {
    let c = run(&["
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: b}}}]
"]);
    assert!(ing(&c, WEB, "10.0.2.1", TCP, 1));
    assert!(ing(&c, WEB, "10.0.2.2", UDP, 9));
    assert!(
        !ing(&c, WEB, "10.0.1.3", TCP, 1),
        "own namespace not selected"
    );
    assert!(!ing(&c, WEB, "10.0.3.1", TCP, 1));
}

#[test]
fn namespace_and_pod_selector_together_is_an_and() {
    let c = run(&["
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [b]}]}
      podSelector: {matchLabels: {role: client}}
"]);
    assert!(ing(&c, WEB, "10.0.2.1", TCP, 1));
    assert!(!ing(&c, WEB, "10.0.2.2", TCP, 1), "b/web is not a client");
    assert!(
        !ing(&c, WEB, "10.0.1.3", TCP, 1),
        "a/client is in the wrong namespace"
    );
}

#[test]
fn namespace_name_label_is_implicit() {
    let c = run(&["
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: c}}}]
"]);
    assert!(ing(&c, WEB, "10.0.3.1", TCP, 1));
    assert!(!ing(&c, WEB, "10.0.2.1", TCP, 1));
}

#[test]
fn ip_block_except_is_a_longer_deny_entry() {
    let c = run(&["
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 172.16.0.0/12, except: [172.17.0.0/16, 172.18.1.0/24]}}]
    ports: [{port: 443}]
"]);
    assert!(ing(&c, WEB, "172.16.0.9", TCP, 443));
    assert!(ing(&c, WEB, "172.31.255.255", TCP, 443));
    assert!(!ing(&c, WEB, "172.17.3.4", TCP, 443));
    assert!(ing(&c, WEB, "172.18.0.1", TCP, 443));
    assert!(!ing(&c, WEB, "172.18.1.1", TCP, 443));
    assert!(!ing(&c, WEB, "172.32.0.1", TCP, 443));
    let DirectionRules::Enforced(entries) = &rules(&c, "a", "web").ingress else {
        panic!("enforced");
    };
    let shown: Vec<String> = entries
        .iter()
        .map(|e| format!("{} {}", e.cidr, e.allowed))
        .collect();
    assert_eq!(
        shown,
        [
            "172.16.0.0/12 TCP/443",
            "172.17.0.0/16 deny",
            "172.18.1.0/24 deny"
        ]
    );
}

#[test]
fn overlapping_prefixes_carry_the_union() {
    let c = run(&["
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.2.0/24]}}]
    ports: [{port: 80}]
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 443}]
  - from: [{namespaceSelector: {matchLabels: {team: b}}}]
    ports: [{port: 8443}]
"]);
    // a/client: inside the /8 (80) and selected (443).
    assert!(ing(&c, WEB, "10.0.1.3", TCP, 80));
    assert!(ing(&c, WEB, "10.0.1.3", TCP, 443));
    assert!(!ing(&c, WEB, "10.0.1.3", TCP, 8443));
    // b/client: inside the except (no 80) but selected by the namespace rule.
    assert!(!ing(&c, WEB, "10.0.2.1", TCP, 80));
    assert!(ing(&c, WEB, "10.0.2.1", TCP, 8443));
    // Another address in the except: nothing.
    assert!(!ing(&c, WEB, "10.0.2.99", TCP, 8443));
    assert!(ing(&c, WEB, "10.9.9.9", TCP, 80));
}

#[test]
fn named_ports_ingress_resolve_on_the_selected_pod() {
    let c = run(&["
metadata: {name: p, namespace: a}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: http}, {port: dns, protocol: UDP}]
"]);
    assert!(ing(&c, WEB, "1.1.1.1", TCP, 8080));
    assert!(ing(&c, WEB, "1.1.1.1", UDP, 5353));
    assert!(!ing(&c, WEB, "1.1.1.1", TCP, 5353), "dns is a UDP name");
    assert!(ing(&c, DB, "1.1.1.1", TCP, 9090));
    assert!(!ing(&c, DB, "1.1.1.1", TCP, 8080));
    // A pod without the name: isolated, nothing allowed.
    let client = rules(&c, "a", "client");
    assert_eq!(client.ingress, DirectionRules::Enforced(vec![]));
}

#[test]
fn named_ports_egress_resolve_on_each_destination() {
    let c = run(&["
metadata: {name: p, namespace: c}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]
  - to: [{ipBlock: {cidr: 10.0.1.0/24}}]
    ports: [{port: http}, {port: 22}]
"]);
    let me = ("c", "client");
    assert!(egr(&c, me, "10.0.1.1", TCP, 8080));
    assert!(!egr(&c, me, "10.0.1.1", TCP, 8081));
    assert!(egr(&c, me, "10.0.2.2", TCP, 8081));
    assert!(!egr(&c, me, "10.0.2.2", TCP, 8080));
    // Named port through an ipBlock: the pods known inside it.
    assert!(egr(&c, me, "10.0.1.2", TCP, 9090));
    assert!(egr(&c, me, "10.0.1.2", TCP, 22));
    assert!(egr(&c, me, "10.0.1.77", TCP, 22));
    assert!(!egr(&c, me, "10.0.1.77", TCP, 9090));
}

#[test]
fn end_port_ranges_and_protocol_wide_ports() {
    let c = run(&["
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: 30000, endPort: 30010}, {protocol: UDP}, {protocol: SCTP, port: 9}]
"]);
    assert!(!ing(&c, WEB, "1.2.3.4", TCP, 29999));
    assert!(ing(&c, WEB, "1.2.3.4", TCP, 30000));
    assert!(ing(&c, WEB, "1.2.3.4", TCP, 30010));
    assert!(!ing(&c, WEB, "1.2.3.4", TCP, 30011));
    assert!(ing(&c, WEB, "1.2.3.4", UDP, 1));
    assert!(ing(&c, WEB, "1.2.3.4", UDP, 65535));
    assert!(ing(&c, WEB, "1.2.3.4", SCTP, 9));
    assert!(!ing(&c, WEB, "1.2.3.4", SCTP, 10));
}

#[test]
fn policies_add_up_and_ranges_merge() {
    let c = run(&[
        "
metadata: {name: one, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 80}, {port: 81}]}]
",
        "
metadata: {name: two, namespace: a}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 82, endPort: 90}]}]
  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0}}], ports: [{port: 53, protocol: UDP}]}]
",
    ]);
    let web = rules(&c, "a", "web");
    assert_eq!(web.policies, vec!["a/one".to_owned(), "a/two".to_owned()]);
    let DirectionRules::Enforced(entries) = &web.ingress else {
        panic!("enforced");
    };
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].allowed.to_string(), "TCP/80-90");
    assert!(egr(&c, WEB, "9.9.9.9", UDP, 53));
    assert!(!egr(&c, WEB, "9.9.9.9", TCP, 53));
    // db only has `two`.
    assert!(!ing(&c, DB, "1.1.1.1", TCP, 80));
    assert!(ing(&c, DB, "1.1.1.1", TCP, 85));
}

#[test]
fn an_allow_all_rule_and_empty_from_mean_everyone() {
    let c = run(&["
metadata: {name: p, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{}]
  egress: [{to: [], ports: []}]
"]);
    assert!(ing(&c, WEB, "203.0.113.1", ICMP, 0));
    assert!(egr(&c, WEB, "203.0.113.1", UDP, 7));
}

#[test]
fn invalid_policy_closes_the_pods_it_selects_and_names_the_field() {
    let c = run(&["
metadata: {name: bad, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/33}}]
"]);
    assert_eq!(c.errors.len(), 1);
    let e = &c.errors[0];
    assert_eq!(e.policy, "a/bad");
    assert_eq!(e.field, "spec.ingress[0].from[0].ipBlock.cidr");
    assert!(e.to_string().contains("10.0.0.0/8"), "{e}");
    let web = rules(&c, "a", "web");
    assert!(web.closed.is_some());
    assert!(!ing(&c, WEB, "10.0.1.3", TCP, 80));
    assert!(!egr(&c, WEB, "10.0.1.3", TCP, 80));
    // Not selected by the broken policy: untouched.
    assert!(rules(&c, "a", "db").closed.is_none());
    assert!(ing(&c, DB, "10.0.1.3", TCP, 80));
}

#[test]
fn invalid_pod_selector_closes_the_whole_namespace() {
    let c = run(&["
metadata: {name: bad, namespace: b}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Equals, values: [x]}]}
"]);
    assert_eq!(
        c.errors[0].field,
        "spec.podSelector.matchExpressions[0].operator"
    );
    assert!(rules(&c, "b", "web").closed.is_some());
    assert!(rules(&c, "b", "client").closed.is_some());
    assert!(rules(&c, "a", "web").closed.is_none());
}

#[test]
fn bad_inputs_are_rejected_with_the_field() {
    let cases = [
        ("ingress: [{ports: [{port: 90, endPort: 80}]}]", "spec.ingress[0].ports[0].endPort"),
        ("ingress: [{ports: [{port: http, endPort: 80}]}]", "spec.ingress[0].ports[0].endPort"),
        ("ingress: [{ports: [{endPort: 80}]}]", "spec.ingress[0].ports[0].endPort"),
        ("ingress: [{ports: [{port: 0}]}]", "spec.ingress[0].ports[0].port"),
        ("ingress: [{ports: [{port: 70000}]}]", "spec.ingress[0].ports[0].port"),
        ("ingress: [{ports: [{protocol: ICMP}]}]", "spec.ingress[0].ports[0].protocol"),
        ("ingress: [{from: [{}]}]", "spec.ingress[0].from[0]"),
        (
            "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]",
            "spec.ingress[0].from[0]",
        ),
        (
            "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "egress: [{to: [{podSelector: {matchExpressions: [{key: a, operator: In}]}}]}]",
            "spec.egress[0].to[0].podSelector.matchExpressions[0].values",
        ),
        (
            "ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}]}]",
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
        ),
        ("policyTypes: [Sideways]", "spec.policyTypes[0]"),
    ];
    for (spec, field) in cases {
        let y = format!(
            "metadata: {{name: bad, namespace: a}}\nspec:\n  podSelector: {{}}\n  {spec}\n"
        );
        let c = run(&[&y]);
        assert_eq!(c.errors.len(), 1, "{spec}");
        assert_eq!(c.errors[0].field, field, "{spec}: {}", c.errors[0]);
        assert!(rules(&c, "a", "web").closed.is_some(), "{spec}");
    }
}

#[test]
fn host_network_pods_and_pods_without_address_are_left_out() {
    let (mut pods, nss) = world();
    pods[0].spec.host_network = true;
    pods[1].status.pod_ip = None;
    pods[2].status.pod_ip = Some("fd00::1".into());
    pods[2].status.pod_ips = vec![crate::types::PodIp {
        ip: "10.0.1.3".into(),
    }];
    let p = pol("
metadata: {name: p, namespace: b}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}}]}]
");
    let c = compile(&[p], &pods, &nss);
    assert_eq!(c.pods.len(), 4);
    assert!(!c.pods.contains_key(&PodRef::new("a", "web")));
    assert_eq!(rules(&c, "a", "client").ip, Ipv4Addr::new(10, 0, 1, 3));
    assert!(
        !ing(&c, ("b", "web"), "10.0.1.1", TCP, 1),
        "host-network pod is no peer"
    );
    assert!(
        ing(&c, ("b", "web"), "10.0.1.3", TCP, 1),
        "address from podIPs"
    );
}

#[test]
fn ipv6_blocks_are_ignored_by_the_ipv4_datapath() {
    let c = run(&["
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 'fd00::/8'}}]}]
"]);
    assert!(c.errors.is_empty());
    assert_eq!(
        rules(&c, "a", "web").ingress,
        DirectionRules::Enforced(vec![])
    );
}

#[test]
fn too_many_port_ranges_close_the_pod() {
    let ports: Vec<String> = (0..=MAX_PORT_RANGES)
        .map(|i| format!("{{port: {}}}", 1000 + 2 * i))
        .collect();
    let y = format!(
        "metadata: {{name: p, namespace: a}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress: [{{ports: [{}]}}]\n",
        ports.join(", ")
    );
    let c = run(&[&y]);
    let web = rules(&c, "a", "web");
    let reason = web.closed.as_deref().expect("closed");
    assert!(reason.contains("endPort"), "{reason}");
    assert!(!ing(&c, WEB, "1.1.1.1", TCP, 1000));
}

#[test]
fn redundant_entries_are_pruned() {
    let c = run(&["
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8}}, {ipBlock: {cidr: 10.1.0.0/16}}, {podSelector: {}}]
"]);
    let DirectionRules::Enforced(entries) = &rules(&c, "a", "web").ingress else {
        panic!("enforced");
    };
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].cidr.to_string(), "10.0.0.0/8");
}

#[test]
fn real_manifests_with_extra_fields_parse() {
    let p: NetworkPolicy = serde_json::from_str(
        r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
            "metadata":{"name":"x","namespace":"a","uid":"u","resourceVersion":"1"},
            "spec":{"podSelector":{},"policyTypes":["Ingress"],
                    "ingress":[{"from":[{"podSelector":{"matchLabels":{"role":"client"}}}],
                                "ports":[{"protocol":"TCP","port":"8080"},{"port":"http"}]}]}}"#,
    )
    .expect("parse");
    let pod: Pod = serde_json::from_str(
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"a","labels":{"app":"web"}},
            "spec":{"nodeName":"n","containers":[{"name":"c","image":"i","ports":[{"name":"http","containerPort":8080}]}]},
            "status":{"phase":"Running","podIP":"10.0.1.1","podIPs":[{"ip":"10.0.1.1"}]}}"#,
    )
    .expect("parse");
    let (pods, nss) = world();
    let mut pods: Vec<Pod> = pods
        .into_iter()
        .filter(|p| p.metadata.name != "web" || p.metadata.namespace.as_deref() != Some("a"))
        .collect();
    pods.push(pod);
    let c = compile(&[p], &pods, &nss);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert!(ing(&c, WEB, "10.0.1.3", TCP, 8080));
    assert!(!ing(&c, WEB, "10.0.1.2", TCP, 8080));
}

#[test]
fn compile_only_computes_the_chosen_pods_with_every_pod_as_a_peer() {
    let (pods, nss) = world();
    let ps = vec![pol(
        "metadata: { name: p, namespace: a }\n\
         spec: { podSelector: { matchLabels: { app: web } },\n\
                 ingress: [ { from: [ { podSelector: { matchLabels: { role: client } } } ] } ] }",
    )];
    let all = compile(&ps, &pods, &nss);
    let one = crate::compile_only(&ps, &pods, &nss, &|k: &PodRef| {
        k == &PodRef::new("a", "web")
    });
    assert_eq!(one.pods.len(), 1, "only a/web: {:?}", one.pods.keys());
    assert_eq!(
        one.pods[&PodRef::new("a", "web")],
        all.pods[&PodRef::new("a", "web")]
    );
    assert!(
        ing(&one, WEB, "10.0.1.3", TCP, 80),
        "a/client is still a peer"
    );
    let none = crate::compile_only(&ps, &pods, &nss, &|_: &PodRef| false);
    assert!(none.pods.is_empty());
}
