//! The CNI spec versions this plugin speaks, and the VERSION answer.

use serde_json::{json, Value};

/// The versions accepted in a netconf and listed by VERSION, oldest first.
pub const SUPPORTED: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// A supported `cniVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    /// 0.4.0: IP entries carry `"version"`; no STATUS/GC.
    V040,
    /// 1.0.0.
    V100,
    /// 1.1.0: adds STATUS, GC and interface `mtu`.
    V110,
}

impl CniVersion {
    /// The newest supported version.
    pub const LATEST: CniVersion = CniVersion::V110;

    /// Parses one of [`SUPPORTED`].
    pub fn parse(s: &str) -> Option<CniVersion> {
        Some(match s {
            "0.4.0" => CniVersion::V040,
            "1.0.0" => CniVersion::V100,
            "1.1.0" => CniVersion::V110,
            _ => return None,
        })
    }

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V040 => "0.4.0",
            CniVersion::V100 => "1.0.0",
            CniVersion::V110 => "1.1.0",
        }
    }
}

/// The VERSION answer, in the netconf's version when it names a supported one.
pub fn version_answer(requested: Option<&str>) -> Value {
    let v = requested
        .and_then(CniVersion::parse)
        .unwrap_or(CniVersion::LATEST);
    json!({"cniVersion": v.as_str(), "supportedVersions": SUPPORTED})
}
