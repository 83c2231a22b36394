//! `eni-cni`: the CNI plugin (spec 1.1.0, also 0.4.0 and 1.0.0 netconfs) that gives each pod
//! a VPC address from an ENI, allocated by `eni-manager`, and wires the pod's namespace in
//! one of three datapaths: exclusive ENI, IPVLAN L2, or veth + policy routing.
//!
//! - [`config`]: the `CNI_*` environment and the netconf, validated before anything acts;
//! - [`plugin`]: the commands (ADD, DEL, CHECK, STATUS, GC, VERSION);
//! - [`datapath`]: the kernel work of each mode, over `eni_kernel::Netlink`;
//! - [`result`] and [`version`]: the result JSON per spec version;
//! - [`error`]: the one error type and the CNI codes (the spec's and ours, from 100);
//! - [`log`]: logs to a file or stderr, never stdout.
//!
//! No async runtime, no cloud SDK: the binary is exec'd for every pod. See `docs/cni.md`.

#![deny(missing_docs)]

pub mod config;
pub mod datapath;
pub mod error;
pub mod log;
pub mod plugin;
pub mod result;
pub mod version;

use std::io::Read;

use serde_json::Value;

use crate::error::CniError;

/// What the binary does: reads stdin and the environment, runs the command, and returns
/// the JSON for stdout (a result, or the error object) and whether it failed.
pub fn main_with(
    var: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> (Option<Value>, bool) {
    let mut input = Vec::new();
    let outcome = match stdin.read_to_end(&mut input) {
        Ok(_) => run_input(var, &input),
        Err(e) => Err(plugin::stdin_error(&e)),
    };
    match outcome {
        Ok(json) => (json, false),
        Err(err) => {
            let version = config::requested_version(&input)
                .and_then(|v| version::CniVersion::parse(&v))
                .unwrap_or(version::CniVersion::LATEST);
            log!(
                log::Level::Error,
                "{} (code {}): {}",
                err.msg,
                err.code,
                err.details
            );
            (Some(err.to_json(version.as_str())), true)
        }
    }
}

fn run_input(
    var: &dyn Fn(&str) -> Option<String>,
    input: &[u8],
) -> Result<Option<Value>, CniError> {
    if var("CNI_COMMAND").as_deref() == Some("VERSION") {
        let requested = config::requested_version(input);
        return Ok(Some(version::version_answer(requested.as_deref())));
    }
    let inv = config::parse(var, input)?;
    if let Some(conf) = &inv.conf {
        let env = &inv.env;
        let context = format!(
            "cmd={} container={} ifname={} netns={}{}",
            env.command,
            env.container_id.get(..12).unwrap_or(&env.container_id),
            env.ifname,
            env.netns
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            env.pod
                .as_ref()
                .map(|p| format!(" pod={}/{}", p.namespace, p.name))
                .unwrap_or_default(),
        );
        log::init(conf.log_level, conf.log_file.as_deref(), context).map_err(|e| {
            CniError::new(
                error::IO_FAILURE,
                format!(
                    "cannot open the log file {}: {e}",
                    conf.log_file
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ),
                "fix log_file in the netconf (an absolute path in a writable directory)",
            )
        })?;
        log!(
            log::Level::Debug,
            "netconf {} version {}",
            conf.name,
            conf.cni_version.as_str()
        );
    }
    plugin::run(&inv)
}
