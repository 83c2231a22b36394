//! The standalone policy source: a directory of Kubernetes-format YAML files (`*.yaml`,
//! `*.yml`, multi-document allowed) holding `NetworkPolicy` (networking.k8s.io/v1), `Pod`
//! and `Namespace` (v1) objects. Other kinds are ignored; an invalid document is reported
//! with its file and index and skipped. Listing and change detection are the services
//! source's ([`crate::services::files::fingerprint`]): hidden files and subdirectories are
//! ignored, changes are found by polling names, sizes and mtimes.
//!
//! A skipped NetworkPolicy document is a policy the node does not know: its problem is
//! logged as a warning every time the directory changes.

use std::fs;
use std::path::{Path, PathBuf};

use eni_policy::types::{Namespace, NetworkPolicy, Pod};
use serde::Deserialize;
use serde_yaml::Value;
use tracing::debug;

pub use crate::services::files::{fingerprint, DocProblem};

/// What a policy directory holds.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// NetworkPolicies, in file then document order.
    pub policies: Vec<NetworkPolicy>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Namespaces.
    pub namespaces: Vec<Namespace>,
    /// Documents skipped as invalid.
    pub problems: Vec<DocProblem>,
}

fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(fingerprint(dir)?.into_iter().map(|(p, _, _)| p).collect())
}

/// Parses one file's text into `out` (documents of other kinds are ignored).
pub fn parse_into(file: &Path, text: &str, out: &mut Objects) {
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let problem = |reason: String| DocProblem {
            file: file.to_path_buf(),
            index: Some(index),
            reason,
        };
        let value = match Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                out.problems.push(problem(format!("not valid YAML: {e}")));
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let api = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let name_missing = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        match (kind, api) {
            ("NetworkPolicy" | "Pod" | "Namespace", _) if name_missing => {
                out.problems
                    .push(problem(format!("{kind} without metadata.name")));
            }
            ("NetworkPolicy", "networking.k8s.io/v1") => {
                match serde_yaml::from_value::<NetworkPolicy>(value) {
                    Ok(p) => out.policies.push(p),
                    Err(e) => out
                        .problems
                        .push(problem(format!("invalid NetworkPolicy: {e}"))),
                }
            }
            ("Pod", "v1") => match serde_yaml::from_value::<Pod>(value) {
                Ok(p) => out.pods.push(p),
                Err(e) => out.problems.push(problem(format!("invalid Pod: {e}"))),
            },
            ("Namespace", "v1") => match serde_yaml::from_value::<Namespace>(value) {
                Ok(n) => out.namespaces.push(n),
                Err(e) => out
                    .problems
                    .push(problem(format!("invalid Namespace: {e}"))),
            },
            ("NetworkPolicy" | "Pod" | "Namespace", _) => out.problems.push(problem(format!(
                "{kind} with apiVersion {api:?}: expected networking.k8s.io/v1 for NetworkPolicy, v1 for Pod and Namespace"
            ))),
            ("", _) => out.problems.push(problem("no kind".into())),
            _ => debug!(file = %file.display(), index, kind, "kind ignored"),
        }
    }
}

/// Reads every YAML file of `dir`. Fails only if the directory cannot be listed.
pub fn load_dir(dir: &Path) -> std::io::Result<Objects> {
    let mut out = Objects::default();
    for file in yaml_files(dir)? {
        match fs::read_to_string(&file) {
            Ok(text) => parse_into(&file, &text, &mut out),
            Err(e) => out.problems.push(DocProblem {
                file,
                index: None,
                reason: format!("cannot read: {e}"),
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_three_kinds_and_reports_bad_documents() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: deny, namespace: prod }
spec: { podSelector: { matchLabels: { app: db } }, policyTypes: [Ingress] }
---
apiVersion: v1
kind: Pod
metadata: { name: db-0, namespace: prod, labels: { app: db } }
spec: { containers: [ { name: db, ports: [ { name: pg, containerPort: 5432 } ] } ] }
---
apiVersion: v1
kind: Namespace
metadata: { name: prod, labels: { team: a } }
---
apiVersion: v1
kind: Service
metadata: { name: ignored }
---
apiVersion: networking.k8s.io/v1beta1
kind: NetworkPolicy
metadata: { name: old }
---
apiVersion: v1
kind: Pod
metadata: { namespace: prod }
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: bad }
spec: { podSelector: 7 }
"#;
        let mut out = Objects::default();
        parse_into(Path::new("/p/a.yaml"), text, &mut out);
        assert_eq!(out.policies.len(), 1);
        assert_eq!(out.policies[0].metadata.namespace(), "prod");
        assert_eq!(out.pods.len(), 1);
        assert_eq!(out.pods[0].metadata.labels["app"], "db");
        assert_eq!(out.namespaces.len(), 1);
        let problems: Vec<String> = out.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("/p/a.yaml document 4: NetworkPolicy with apiVersion"));
        assert_eq!(
            problems[1],
            "/p/a.yaml document 5: Pod without metadata.name"
        );
        assert!(problems[2].starts_with("/p/a.yaml document 6: invalid NetworkPolicy"));
    }

    #[test]
    fn a_missing_directory_is_an_error_not_an_empty_set() {
        assert!(load_dir(Path::new("/nonexistent/eni-policy-dir")).is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ns.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: { name: a }\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "not: [valid").unwrap();
        let o = load_dir(dir.path()).unwrap();
        assert_eq!(o.namespaces.len(), 1);
        assert!(o.problems.is_empty());
    }
}
