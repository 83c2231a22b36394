//! Alibaba Cloud credentials: static keys (with an optional STS token), the environment, the
//! credentials file, and the ECS RAM role from the metadata service, refreshed before expiry.
//!
//! The chain is environment -> credentials file -> RAM role. Secrets never appear in `Debug`
//! output or logs. This module signs nothing; the client asks it for keys before each attempt.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::error::ProviderError;
use crate::metadata::MetadataClient;

const API: &str = "credentials";

/// An access key pair, with an STS security token for temporary keys.
#[derive(Clone, PartialEq, Eq)]
pub struct AliyunCredentials {
    /// `AccessKeyId`.
    pub access_key_id: String,
    /// `AccessKeySecret`.
    pub access_key_secret: String,
    /// `SecurityToken` of temporary (STS / RAM role) keys.
    pub security_token: Option<String>,
    /// When temporary keys stop working.
    pub expiration: Option<OffsetDateTime>,
}

impl fmt::Debug for AliyunCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AliyunCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expiration", &self.expiration)
            .finish()
    }
}

impl AliyunCredentials {
    /// Long-lived keys.
    pub fn new(access_key_id: impl Into<String>, access_key_secret: impl Into<String>) -> Self {
        AliyunCredentials {
            access_key_id: access_key_id.into(),
            access_key_secret: access_key_secret.into(),
            security_token: None,
            expiration: None,
        }
    }

    /// These keys with an STS security token.
    pub fn with_security_token(mut self, token: impl Into<String>) -> Self {
        self.security_token = Some(token.into());
        self
    }
}

/// Where credentials come from.
#[derive(Debug)]
enum Source {
    Static(AliyunCredentials),
    RamRole {
        metadata: Arc<MetadataClient>,
        role: Option<String>,
    },
}

/// Hands out valid credentials, fetching and refreshing RAM role keys as needed. Shared by
/// every call of a provider.
#[derive(Debug)]
pub struct CredentialProvider {
    source: Source,
    refresh_before: Duration,
    cache: Mutex<Option<AliyunCredentials>>,
}

/// The RAM role answer of the metadata service.
#[derive(Debug, Deserialize)]
struct RoleCredentials {
    #[serde(rename = "AccessKeyId", default)]
    access_key_id: String,
    #[serde(rename = "AccessKeySecret", default)]
    access_key_secret: String,
    #[serde(rename = "SecurityToken", default)]
    security_token: String,
    #[serde(rename = "Expiration", default)]
    expiration: String,
    #[serde(rename = "Code", default)]
    code: String,
}

impl CredentialProvider {
    /// Fixed keys (tests, or keys injected by the operator).
    pub fn fixed(credentials: AliyunCredentials) -> Self {
        CredentialProvider {
            source: Source::Static(credentials),
            refresh_before: Duration::from_secs(180),
            cache: Mutex::new(None),
        }
    }

    /// The instance's RAM role, through the metadata service. With `role: None` the role name
    /// is read from the service. Keys are refreshed when fewer than 180 s remain.
    pub fn ram_role(metadata: Arc<MetadataClient>, role: Option<String>) -> Self {
        CredentialProvider {
            source: Source::RamRole { metadata, role },
            refresh_before: Duration::from_secs(180),
            cache: Mutex::new(None),
        }
    }

    /// Refresh temporary keys when fewer than this remain (default 180 s).
    pub fn refresh_before(mut self, margin: Duration) -> Self {
        self.refresh_before = margin;
        self
    }

    /// Keys from `ALIBABA_CLOUD_ACCESS_KEY_ID`, `ALIBABA_CLOUD_ACCESS_KEY_SECRET` and the
    /// optional `ALIBABA_CLOUD_SECURITY_TOKEN`, when both keys are set.
    pub fn from_env() -> Option<Self> {
        Self::from_vars(&|k| std::env::var(k).ok())
    }

    fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Option<Self> {
        let id = var("ALIBABA_CLOUD_ACCESS_KEY_ID").filter(|s| !s.is_empty())?;
        let secret = var("ALIBABA_CLOUD_ACCESS_KEY_SECRET").filter(|s| !s.is_empty())?;
        let mut c = AliyunCredentials::new(id, secret);
        c.security_token = var("ALIBABA_CLOUD_SECURITY_TOKEN").filter(|s| !s.is_empty());
        Some(Self::fixed(c))
    }

    /// The default credentials file: `ALIBABA_CLOUD_CREDENTIALS_FILE`, else
    /// `~/.alibabacloud/credentials`.
    pub fn default_file_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("ALIBABA_CLOUD_CREDENTIALS_FILE") {
            return Some(PathBuf::from(p));
        }
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".alibabacloud/credentials"))
    }

    /// Credentials from an INI credentials file's `profile` section. Types: `access_key`
    /// (`access_key_id`, `access_key_secret`), `sts` (plus `security_token`), and
    /// `ecs_ram_role` (`role_name`, read through `metadata`). `Ok(None)` when the file or
    /// profile does not exist.
    pub fn from_file(
        path: &Path,
        profile: &str,
        metadata: Option<Arc<MetadataClient>>,
    ) -> Result<Option<Self>, ProviderError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(config(format!("reading {}: {e}", path.display()))),
        };
        let sections = parse_ini(&text);
        let Some(s) = sections.get(profile) else {
            return Ok(None);
        };
        let get = |k: &str| s.get(k).cloned().filter(|v| !v.is_empty());
        let need = |k: &str| {
            get(k)
                .ok_or_else(|| config(format!("{}: profile [{profile}] lacks {k}", path.display())))
        };
        let kind = get("type").unwrap_or_else(|| "access_key".into());
        match kind.as_str() {
            "access_key" => Ok(Some(Self::fixed(AliyunCredentials::new(
                need("access_key_id")?,
                need("access_key_secret")?,
            )))),
            "sts" => Ok(Some(Self::fixed(
                AliyunCredentials::new(need("access_key_id")?, need("access_key_secret")?)
                    .with_security_token(need("security_token")?),
            ))),
            "ecs_ram_role" => {
                let metadata = metadata.ok_or_else(|| {
                    config(format!(
                        "{}: profile [{profile}] is an ecs_ram_role but no metadata client was given",
                        path.display()
                    ))
                })?;
                Ok(Some(Self::ram_role(metadata, get("role_name"))))
            }
            other => Err(config(format!(
                "{}: profile [{profile}] has unsupported type {other:?}",
                path.display()
            ))),
        }
    }

    /// The default chain: environment keys; `ALIBABA_CLOUD_ECS_METADATA` (a RAM role name);
    /// the credentials file (`ALIBABA_CLOUD_PROFILE` or `default`); else the instance's RAM
    /// role through `metadata`.
    pub fn default_chain(metadata: Arc<MetadataClient>) -> Result<Self, ProviderError> {
        if let Some(p) = Self::from_env() {
            return Ok(p);
        }
        if let Some(role) = std::env::var("ALIBABA_CLOUD_ECS_METADATA")
            .ok()
            .filter(|s| !s.is_empty())
        {
            return Ok(Self::ram_role(metadata, Some(role)));
        }
        if let Some(path) = Self::default_file_path() {
            let profile =
                std::env::var("ALIBABA_CLOUD_PROFILE").unwrap_or_else(|_| "default".into());
            if let Some(p) = Self::from_file(&path, &profile, Some(metadata.clone()))? {
                return Ok(p);
            }
        }
        Ok(Self::ram_role(metadata, None))
    }

    /// Valid credentials, fetching or refreshing temporary ones when needed.
    pub async fn get(&self) -> Result<AliyunCredentials, ProviderError> {
        let (metadata, role) = match &self.source {
            Source::Static(c) => return Ok(c.clone()),
            Source::RamRole { metadata, role } => (metadata, role),
        };
        let mut cache = self.cache.lock().await;
        if let Some(c) = &*cache {
            if !needs_refresh(c, OffsetDateTime::now_utc(), self.refresh_before) {
                return Ok(c.clone());
            }
        }
        let role = match role {
            Some(r) => r.clone(),
            None => metadata.ram_role().await?,
        };
        let text = metadata
            .get(&format!("meta-data/ram/security-credentials/{role}"))
            .await?;
        let fresh = parse_role_credentials(&text)?;
        tracing::debug!(role, access_key_id = %fresh.access_key_id, expiration = ?fresh.expiration, "fetched RAM role credentials");
        *cache = Some(fresh.clone());
        Ok(fresh)
    }
}

fn config(message: String) -> ProviderError {
    ProviderError::Config { message }
}

fn needs_refresh(c: &AliyunCredentials, now: OffsetDateTime, margin: Duration) -> bool {
    match c.expiration {
        None => false,
        Some(exp) => exp - now < margin,
    }
}

fn parse_role_credentials(text: &str) -> Result<AliyunCredentials, ProviderError> {
    let r: RoleCredentials = serde_json::from_str(text)
        .map_err(|e| ProviderError::malformed(API, format!("RAM role credentials: {e}")))?;
    if r.code != "Success" {
        return Err(ProviderError::Auth {
            api: API,
            code: if r.code.is_empty() {
                "NoCode".into()
            } else {
                r.code
            },
            message: "the metadata service did not hand out RAM role credentials".into(),
            request_id: None,
        });
    }
    let expiration = OffsetDateTime::parse(
        &r.expiration,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|e| ProviderError::malformed(API, format!("Expiration {:?}: {e}", r.expiration)))?;
    if r.access_key_id.is_empty() || r.access_key_secret.is_empty() {
        return Err(ProviderError::malformed(
            API,
            "RAM role credentials without keys",
        ));
    }
    Ok(AliyunCredentials {
        access_key_id: r.access_key_id,
        access_key_secret: r.access_key_secret,
        security_token: Some(r.security_token).filter(|s| !s.is_empty()),
        expiration: Some(expiration),
    })
}

/// `[section]` + `key = value` lines; `#` and `;` start comments.
fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_string();
            out.entry(current.clone()).or_default();
        } else if let Some((k, v)) = line.split_once('=') {
            out.entry(current.clone())
                .or_default()
                .insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_vars() {
        let vars: HashMap<&str, &str> = [
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "id"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "secret"),
            ("ALIBABA_CLOUD_SECURITY_TOKEN", "tok"),
        ]
        .into();
        let p = CredentialProvider::from_vars(&|k| vars.get(k).map(|s| s.to_string())).unwrap();
        match p.source {
            Source::Static(c) => {
                assert_eq!(c.access_key_id, "id");
                assert_eq!(c.security_token.as_deref(), Some("tok"));
                let dbg = format!("{c:?}");
                assert!(
                    !dbg.contains("\"secret\"") && !dbg.contains("\"tok\""),
                    "{dbg}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(CredentialProvider::from_vars(&|_| None).is_none());
    }

    #[test]
    fn credentials_file() {
        let dir = std::env::temp_dir().join(format!("cp-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("credentials");
        std::fs::write(
            &path,
            "# comment\n[default]\ntype = access_key\naccess_key_id = AK1\naccess_key_secret = S1\n\n\
             [temp]\ntype = sts\naccess_key_id = AK2\naccess_key_secret = S2\nsecurity_token = T2\n\
             [role]\ntype = ecs_ram_role\nrole_name = node-role\n[broken]\ntype = access_key\n",
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let p = CredentialProvider::from_file(&path, "default", None)
            .unwrap()
            .unwrap();
        let c = rt.block_on(p.get()).unwrap();
        assert_eq!((c.access_key_id.as_str(), c.security_token), ("AK1", None));
        let p = CredentialProvider::from_file(&path, "temp", None)
            .unwrap()
            .unwrap();
        let c = rt.block_on(p.get()).unwrap();
        assert_eq!(c.security_token.as_deref(), Some("T2"));
        assert!(CredentialProvider::from_file(&path, "missing", None)
            .unwrap()
            .is_none());
        assert!(CredentialProvider::from_file(&path, "broken", None).is_err());
        // A RAM role profile needs a metadata client.
        assert!(CredentialProvider::from_file(&path, "role", None).is_err());
        let md = Arc::new(MetadataClient::aliyun().unwrap());
        match CredentialProvider::from_file(&path, "role", Some(md))
            .unwrap()
            .unwrap()
            .source
        {
            Source::RamRole { role, .. } => assert_eq!(role.as_deref(), Some("node-role")),
            other => panic!("{other:?}"),
        }
        assert!(
            CredentialProvider::from_file(&dir.join("nope"), "default", None)
                .unwrap()
                .is_none()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn role_answer_and_refresh() {
        let c = parse_role_credentials(
            r#"{"AccessKeyId":"STS.1","AccessKeySecret":"s","SecurityToken":"t",
                "Expiration":"2030-01-01T00:00:00Z","LastUpdated":"2029-12-31T18:00:00Z","Code":"Success"}"#,
        )
        .unwrap();
        assert_eq!(c.access_key_id, "STS.1");
        assert_eq!(c.security_token.as_deref(), Some("t"));
        let exp = c.expiration.unwrap();
        let margin = Duration::from_secs(180);
        assert!(!needs_refresh(&c, exp - Duration::from_secs(181), margin));
        assert!(needs_refresh(&c, exp - Duration::from_secs(179), margin));
        assert!(needs_refresh(&c, exp + Duration::from_secs(1), margin));
        assert!(matches!(
            parse_role_credentials(r#"{"Code":"Failed"}"#),
            Err(ProviderError::Auth { .. })
        ));
        assert!(parse_role_credentials("not json").is_err());
    }
}
