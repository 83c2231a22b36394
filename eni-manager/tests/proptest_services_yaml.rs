//! Property tests of the standalone Services source (`services::files`): any bytes and any
//! YAML-ish document stream are read without a panic, every document ends as a Service, an
//! EndpointSlice, a reported problem or an ignored kind; a well-formed Service is read as
//! written; and the translation to the datapath table (`services::desired`) takes whatever
//! was read without a panic.
//!
//! Case counts keep each property to a few seconds in a debug build; raise them with
//! `PROPTEST_CASES=5000` for a longer hunt.

use std::path::Path;

use eni_manager::services::files::{parse_into, Loaded};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Parses `text` as one file and runs the datapath translation on the result.
fn load(text: &str) -> Loaded {
    let mut out = Loaded::default();
    parse_into(Path::new("/svc/test.yaml"), text, &mut out);
    let _ = eni_manager::services::desired(&out.services, &out.slices);
    out
}

/// Every problem names the file and, for a document, an index within the stream; every
/// Service read has a name.
fn check(out: &Loaded, docs_at_most: usize) -> Result<(), TestCaseError> {
    for p in &out.problems {
        prop_assert_eq!(p.file.as_path(), Path::new("/svc/test.yaml"));
        prop_assert!(!p.reason.is_empty());
        if let Some(i) = p.index {
            prop_assert!(
                i < docs_at_most.max(1),
                "index {} of {} documents",
                i,
                docs_at_most
            );
        }
        prop_assert!(p.to_string().contains("/svc/test.yaml"));
    }
    for s in &out.services {
        prop_assert!(!s.metadata.name.is_empty());
    }
    for s in &out.slices {
        prop_assert!(s.service_name().is_some());
    }
    prop_assert!(out.services.len() + out.slices.len() + out.problems.len() <= docs_at_most.max(1));
    Ok(())
}

/// Scalars that YAML reads in surprising ways.
fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9-]{1,12}",
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u32>().prop_map(|n| std::net::Ipv4Addr::from(n).to_string()),
        1 => proptest::sample::select(vec![
            "~", "null", "yes", "no", "on", "0x1F", "0o17", "1e400", ".nan", "-.inf", "''",
            "\"\"", "[]", "{}", "*alias", "&anchor x", "!!binary aGVsbG8=", "!!int x", "|",
            ">-", "- a", "? k", ": v", "'unterminated", "\"\\u00e9\"", "65536", "-1",
            "2147483648", "None", "10.0.0.1/24", "TCP", "UDP", "SCTP", "ClientIP",
            "\"\\x00\"", "!custom {a: 1}", "<<: *base",
        ]).prop_map(str::to_string),
        1 => "\\PC{0,10}",
    ]
}

/// A Service or EndpointSlice document whose values come from [`scalar`], with keys dropped
/// or doubled now and then.
fn document() -> impl Strategy<Value = String> {
    let service = (
        proptest::collection::vec(scalar(), 12),
        proptest::collection::vec(any::<bool>(), 6),
    )
        .prop_map(|(v, keep)| {
            let mut d = String::new();
            if keep[0] {
                d.push_str(&format!("apiVersion: {}\n", if keep[5] { "v1" } else { &v[0] }));
            }
            d.push_str(&format!("kind: {}\n", if keep[1] { "Service" } else { &v[1] }));
            d.push_str(&format!("metadata:\n  name: {}\n  namespace: {}\n", v[2], v[3]));
            d.push_str("spec:\n");
            if keep[2] {
                d.push_str(&format!("  clusterIP: {}\n", v[4]));
            }
            if keep[3] {
                d.push_str(&format!("  externalIPs: [{}, {}]\n", v[5], v[6]));
            }
            d.push_str(&format!(
                "  sessionAffinity: {}\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {}\n",
                v[7], v[8]
            ));
            d.push_str(&format!(
                "  ports:\n  - name: {}\n    port: {}\n    protocol: {}\n    targetPort: {}\n",
                v[9], v[10], v[11], v[10]
            ));
            if keep[4] {
                d.push_str(&format!("  - port: {}\n    nodePort: {}\n", v[8], v[4]));
            }
            d
        });
    let slice = (
        proptest::collection::vec(scalar(), 9),
        proptest::collection::vec(any::<bool>(), 4),
    )
        .prop_map(|(v, keep)| {
            let mut d = String::new();
            d.push_str(&format!(
                "apiVersion: {}\nkind: EndpointSlice\n",
                if keep[0] { "discovery.k8s.io/v1" } else { &v[0] }
            ));
            d.push_str(&format!("metadata:\n  name: {}\n", v[1]));
            if keep[1] {
                d.push_str(&format!("  labels:\n    kubernetes.io/service-name: {}\n", v[2]));
            }
            d.push_str(&format!("addressType: {}\n", v[3]));
            d.push_str(&format!(
                "endpoints:\n- addresses: [{}, {}]\n  conditions:\n    ready: {}\n    serving: {}\n",
                v[4], v[5], v[6], v[7]
            ));
            if keep[2] {
                d.push_str(&format!("  nodeName: {}\n", v[8]));
            }
            d.push_str(&format!("ports:\n- name: {}\n  port: {}\n  protocol: {}\n", v[1], v[6], v[3]));
            if keep[3] {
                d.push_str("- {}\n");
            }
            d
        });
    prop_oneof![
        4 => service,
        4 => slice,
        1 => (scalar(), scalar()).prop_map(|(k, v)| format!("kind: {k}\napiVersion: {v}\n")),
        1 => scalar().prop_map(|s| format!("{s}\n")),
        1 => Just(String::new()),
    ]
}

/// A stream of documents, with a line cut or an indentation broken now and then.
fn stream() -> impl Strategy<Value = (String, usize)> {
    (
        proptest::collection::vec(document(), 1..5),
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(docs, mangle, at)| {
            let n = docs.len();
            let mut text = docs.join("---\n");
            if mangle && !text.is_empty() {
                let mut i = at.index(text.len());
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                text.insert(i, '\t');
            }
            (text, n)
        })
}

proptest! {
    #![proptest_config(config(256))]

    /// Any bytes (as the file's text, lossily): no panic, and problems point into the file.
    #[test]
    fn any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let text = String::from_utf8_lossy(&bytes);
        // A document per `---` at most, plus one.
        let docs = text.matches("---").count() + 1;
        let out = load(&text);
        check(&out, docs + text.matches("...").count())?;
    }

    /// Service and EndpointSlice documents with surprising values: each is read, refused
    /// with its index, or ignored.
    #[test]
    fn yamlish_documents((text, docs) in stream()) {
        let out = load(&text);
        // Scalars may carry their own `---`; count those as documents too.
        check(&out, docs + text.matches("---").count() + text.matches("...").count())?;
    }

    /// A well-formed Service is read as written, with no problem reported.
    #[test]
    fn well_formed_service_reads_as_written(
        name in "[a-z][a-z0-9-]{0,20}",
        ns in "[a-z][a-z0-9-]{0,10}",
        ip in any::<u32>(),
        ports in proptest::collection::btree_set(1u16..=65535, 1..4),
        udp in any::<bool>(),
    ) {
        let ip = std::net::Ipv4Addr::from(ip);
        let proto = if udp { "UDP" } else { "TCP" };
        let mut text = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  clusterIP: {ip}\n  ports:\n"
        );
        for (i, p) in ports.iter().enumerate() {
            text.push_str(&format!("  - name: p{i}\n    port: {p}\n    protocol: {proto}\n    targetPort: {p}\n"));
        }
        let out = load(&text);
        prop_assert!(out.problems.is_empty(), "{:?}", out.problems);
        prop_assert_eq!(out.services.len(), 1);
        let s = &out.services[0];
        prop_assert_eq!(&s.metadata.name, &name);
        prop_assert_eq!(s.metadata.namespace.as_deref(), Some(ns.as_str()));
        let ip = ip.to_string();
        prop_assert_eq!(s.spec.cluster_ip.as_deref(), Some(ip.as_str()));
        let read: Vec<i32> = s.spec.ports.iter().map(|p| p.port).collect();
        let want: Vec<i32> = ports.iter().map(|p| i32::from(*p)).collect();
        prop_assert_eq!(read, want);
        for p in &s.spec.ports {
            prop_assert_eq!(p.protocol.as_deref(), Some(proto));
        }
    }
}
