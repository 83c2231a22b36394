//! The standalone source: a directory of Kubernetes-format YAML files (`*.yaml`, `*.yml`,
//! multi-document allowed) holding `Service` and `EndpointSlice` objects. Other kinds are
//! ignored (debug log); an invalid document is reported with its file and index and
//! skipped, the rest still applies. Hidden files and subdirectories are ignored (so a
//! mounted ConfigMap, whose files are symlinks into `..data/`, works).
//!
//! Changes are found by polling: [`fingerprint`] (names, sizes, mtimes) is compared every
//! second; no inotify.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;
use serde_yaml::Value;
use tracing::debug;

use super::types::{EndpointSlice, Service};

/// One document that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocProblem {
    /// The file.
    pub file: PathBuf,
    /// 0-based index of the document in the file (`None`: the whole file).
    pub index: Option<usize>,
    /// Why.
    pub reason: String,
}

impl std::fmt::Display for DocProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "{} document {i}: {}", self.file.display(), self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

/// What a directory holds.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Services, in file then document order.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// Documents skipped as invalid.
    pub problems: Vec<DocProblem>,
}

fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let path = entry.path();
        if fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Names, sizes and modification times of the YAML files: changes when any file is
/// added, removed, or written.
pub fn fingerprint(dir: &Path) -> std::io::Result<Vec<(PathBuf, u64, Option<SystemTime>)>> {
    Ok(yaml_files(dir)?
        .into_iter()
        .map(|p| {
            let m = fs::metadata(&p).ok();
            let len = m.as_ref().map_or(0, |m| m.len());
            let mtime = m.and_then(|m| m.modified().ok());
            (p, len, mtime)
        })
        .collect())
}

/// Parses one file's text into `out` (documents of other kinds are ignored).
pub fn parse_into(file: &Path, text: &str, out: &mut Loaded) {
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let problem = |reason: String| DocProblem {
            file: file.to_path_buf(),
            index: Some(index),
            reason,
        };
        let value = match Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                // A syntax error ends the stream: nothing after it can be read.
                out.problems.push(problem(format!("not valid YAML: {e}")));
                break;
            }
        };
        if value.is_null() {
            continue; // an empty document (`---` at the end)
        }
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let api = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        match (kind, api) {
            ("Service", "v1") => match serde_yaml::from_value::<Service>(value) {
                Ok(s) if s.metadata.name.is_empty() => out
                    .problems
                    .push(problem("Service without metadata.name".into())),
                Ok(s) => out.services.push(s),
                Err(e) => out.problems.push(problem(format!("invalid Service: {e}"))),
            },
            ("EndpointSlice", "discovery.k8s.io/v1") => {
                match serde_yaml::from_value::<EndpointSlice>(value) {
                    Ok(s) if s.service_name().is_none() => out.problems.push(problem(
                        "EndpointSlice without the kubernetes.io/service-name label".into(),
                    )),
                    Ok(s) => out.slices.push(s),
                    Err(e) => out
                        .problems
                        .push(problem(format!("invalid EndpointSlice: {e}"))),
                }
            }
            ("Service", _) | ("EndpointSlice", _) => out.problems.push(problem(format!(
                "{kind} with apiVersion {api:?}: expected v1 / discovery.k8s.io/v1"
            ))),
            ("", _) => out.problems.push(problem("no kind".into())),
            _ => debug!(file = %file.display(), index, kind, "kind ignored"),
        }
    }
}

/// Reads every YAML file of `dir`. Fails only if the directory cannot be listed.
pub fn load_dir(dir: &Path) -> std::io::Result<Loaded> {
    let mut out = Loaded::default();
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
