//! Masquerade of pod traffic leaving the node (`masquerade` section), with ip-masq-agent
//! semantics, in eBPF ([`eni_bpf::Masquerade`], tc on the uplinks).
//!
//! At start: the uplinks' addresses are read from the kernel (each link's first IPv4
//! address), the pinned maps adopted (translations of a previous run keep working), the
//! non-masquerade list written (before the programs are attached, so no packet ever meets
//! an empty list), the programs attached to every configured uplink and detached from links
//! a previous configuration listed and this one does not. With `masquerade.config_file`, a
//! thread re-reads that ip-masq-agent file every `resync_interval_s` and updates the list
//! diff-wise. When the section is off, programs a previous run attached are detached and
//! the pins removed, so turning it off takes effect.
//!
//! The list: `nonMasqueradeCIDRs` (the file's, else `masquerade.non_masquerade_cidrs`, by
//! default ip-masq-agent's documented list), plus the VPC's CIDR blocks always, plus
//! 169.254.0.0/16 unless `masqLinkLocal`. The VPC's blocks are `masquerade.vpc_cidrs`, or,
//! when that is empty, learned from the instance metadata service ([`learn_vpc_cidrs`]) and
//! kept in the state directory for a start while the service does not answer.

use std::{
    net::Ipv4Addr,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;
use ipnet::Ipv4Net;
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::MasqueradeConfig;

/// The network namespace of the calling thread (the manager's: where `masquerade.links`
/// are). `thread-self`, not `self`: the namespace netlink sees too, also in a test thread
/// that entered another namespace.
const OWN_NETNS: &str = "/proc/thread-self/ns/net";

/// How long [`learn_vpc_cidrs`] waits for the metadata service.
const VPC_CIDRS_TIMEOUT: Duration = Duration::from_secs(30);

/// The VPC's IPv4 CIDR blocks from the instance metadata service of `cloud` (its provider's
/// flavour, `cloud.metadata_endpoint` or the provider's default address), written to
/// `cache` (JSON) once learned. When the service does not answer within 30 s, the blocks a
/// previous start cached are used (the VPC's blocks rarely change); with neither, the error
/// says to set `masquerade.vpc_cidrs`.
pub async fn learn_vpc_cidrs(
    cloud: &crate::config::CloudConfig,
    cache: &Path,
) -> anyhow::Result<Vec<Ipv4Net>> {
    use cloud_providers::metadata::{MetadataClient, MetadataFlavor};
    let flavor = match cloud.provider {
        crate::config::ProviderKind::Aliyun => MetadataFlavor::Aliyun,
        crate::config::ProviderKind::Aws => MetadataFlavor::Aws,
    };
    let endpoint = cloud
        .metadata_endpoint
        .clone()
        .unwrap_or_else(|| flavor.default_endpoint().to_owned());
    let asked = async {
        let md = MetadataClient::new(flavor, &endpoint)?;
        md.vpc_cidrs().await
    };
    let why = match tokio::time::timeout(VPC_CIDRS_TIMEOUT, asked).await {
        Ok(Ok(cidrs)) => {
            let text: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
            let tmp = cache.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&text)?)
                .and_then(|()| std::fs::rename(&tmp, cache))
                .with_context(|| format!("writing {}", cache.display()))?;
            info!(cidrs = ?text, endpoint = %endpoint, "learned the VPC CIDR blocks from the metadata service");
            return Ok(cidrs);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {}s", VPC_CIDRS_TIMEOUT.as_secs()),
    };
    let cached = std::fs::read(cache).ok().and_then(|bytes| {
        let text: Vec<String> = serde_json::from_slice(&bytes).ok()?;
        let cidrs: Vec<Ipv4Net> = text.iter().filter_map(|c| c.parse().ok()).collect();
        (!cidrs.is_empty() && cidrs.len() == text.len()).then_some(cidrs)
    });
    match cached {
        Some(cidrs) => {
            warn!(reason = %why, cidrs = ?cidrs, cache = %cache.display(), "cannot read the VPC CIDR blocks from the metadata service; using the ones learned before");
            Ok(cidrs)
        }
        None => anyhow::bail!(
            "masquerade.vpc_cidrs: empty, and the VPC CIDR blocks cannot be read from the \
             metadata service at {endpoint} ({why}); give them in masquerade.vpc_cidrs"
        ),
    }
}

/// An ip-masq-agent configuration file (the `config` key of its ConfigMap). Fields left out
/// keep the manager's configured values, as ip-masq-agent keeps its defaults.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// Destinations never masqueraded.
    #[serde(rename = "nonMasqueradeCIDRs", default)]
    pub non_masquerade_cidrs: Option<Vec<String>>,
    /// Masquerade link-local (169.254.0.0/16) destinations too.
    #[serde(rename = "masqLinkLocal", default)]
    pub masq_link_local: Option<bool>,
    /// Accepted for compatibility; the datapath is IPv4 only.
    #[serde(rename = "masqLinkLocalIPv6", default)]
    pub masq_link_local_ipv6: Option<bool>,
    /// Accepted for compatibility; `masquerade.resync_interval_s` sets the period.
    #[serde(rename = "resyncInterval", default)]
    pub resync_interval: Option<String>,
}

/// Reads an ip-masq-agent file: `Ok(None)` when it does not exist, an empty file is all
/// defaults. Errors name the file and the field.
pub fn read_agent_file(path: &Path) -> Result<Option<AgentFile>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "masquerade.config_file {}: cannot read it: {e}",
                path.display()
            ))
        }
    };
    if text.trim().is_empty() {
        return Ok(Some(AgentFile::default()));
    }
    serde_yaml::from_str(&text).map(Some).map_err(|e| {
        format!(
            "masquerade.config_file {}: {e} (the fields are nonMasqueradeCIDRs, masqLinkLocal, \
             masqLinkLocalIPv6, resyncInterval)",
            path.display()
        )
    })
}

/// The non-masquerade list the datapath gets from the configuration and (if any) the
/// ip-masq-agent file. Errors name the bad entry.
pub fn desired_list(
    cfg: &MasqueradeConfig,
    file: Option<&AgentFile>,
    file_path: Option<&Path>,
) -> Result<Vec<Ipv4Net>, String> {
    let (cidrs, field) = match file.and_then(|f| f.non_masquerade_cidrs.as_ref()) {
        Some(list) => (
            list,
            format!(
                "masquerade.config_file {}: nonMasqueradeCIDRs",
                file_path
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        ),
        None => (
            &cfg.non_masquerade_cidrs,
            "masquerade.non_masquerade_cidrs".to_owned(),
        ),
    };
    let mut parsed = Vec::with_capacity(cidrs.len());
    for (i, c) in cidrs.iter().enumerate() {
        parsed.push(c.parse::<Ipv4Net>().map_err(|_| {
            format!("{field}[{i}]: {c:?} is not an IPv4 CIDR; write it as a.b.c.d/n")
        })?);
    }
    let link_local = file
        .and_then(|f| f.masq_link_local)
        .unwrap_or(cfg.masq_link_local);
    let list = eni_bpf::nonmasq_list(&parsed, link_local, &cfg.parsed_vpc_cidrs());
    if list.len() > eni_bpf::masq::MAX_NONMASQ_CIDRS {
        return Err(format!(
            "{field}: {} entries with the VPC and link-local ones, at most {} fit",
            list.len(),
            eni_bpf::masq::MAX_NONMASQ_CIDRS
        ));
    }
    Ok(list)
}

/// Whether `entry` of `masquerade.links` is a pattern (`*` any run of characters, `?` one).
pub fn is_pattern(entry: &str) -> bool {
    entry.contains(['*', '?'])
}

/// Whether `name` matches the shell-style `pattern` (`*` and `?`; no escapes).
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

/// The links to masquerade on, each with the address pods are masqueraded to there (its
/// first non-loopback IPv4 address in the kernel's order), given `masquerade.links`, the
/// namespace's links (name, index) and addresses (index, address); and the links a pattern
/// matched that have no IPv4 address yet (left out until they have one).
///
/// A name must exist and have an address: otherwise the error names the entry. A pattern
/// (`eth*`) takes every matching link that has an address, in the kernel's order, and may
/// match none; `lo` is never taken.
pub fn plan_links(
    links: &[String],
    have: &[(String, u32)],
    addrs: &[(u32, Ipv4Addr)],
) -> Result<LinkPlan, String> {
    plan_links_with(links, have, addrs, true)
}

/// [`plan_links`]; not `strict` (the rescans after start): a named link that is missing or
/// has no address is only left out (listed with the waiting ones), not an error.
fn plan_links_with(
    links: &[String],
    have: &[(String, u32)],
    addrs: &[(u32, Ipv4Addr)],
    strict: bool,
) -> Result<LinkPlan, String> {
    let first_addr = |index: u32| {
        addrs
            .iter()
            .find(|(idx, a)| *idx == index && !a.is_loopback())
            .map(|(_, a)| *a)
    };
    let mut out: Vec<(String, Ipv4Addr)> = Vec::new();
    let mut waiting = Vec::new();
    for (i, entry) in links.iter().enumerate() {
        if is_pattern(entry) {
            for (name, index) in have {
                if name == "lo" || !matches(entry, name) || out.iter().any(|(n, _)| n == name) {
                    continue;
                }
                match first_addr(*index) {
                    Some(a) => out.push((name.clone(), a)),
                    None if !waiting.contains(name) => waiting.push(name.clone()),
                    None => {}
                }
            }
            continue;
        }
        let Some((_, index)) = have.iter().find(|(n, _)| n == entry) else {
            if !strict {
                waiting.push(entry.clone());
                continue;
            }
            return Err(format!(
                "masquerade.links[{i}]: no link {entry:?} on this node; the links are {}",
                have.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let Some(addr) = first_addr(*index) else {
            if !strict {
                waiting.push(entry.clone());
                continue;
            }
            return Err(format!(
                "masquerade.links[{i}]: {entry:?} has no IPv4 address to masquerade to; \
                 configure its address first or remove it from the list"
            ));
        };
        if !out.iter().any(|(n, _)| n == entry) {
            out.push((entry.clone(), addr));
        }
    }
    waiting.retain(|w| !out.iter().any(|(n, _)| n == w));
    Ok((out, waiting))
}

/// The links to attach to, each with its address, and the links left out for now.
pub type LinkPlan = (Vec<(String, Ipv4Addr)>, Vec<String>);

fn plan_from_kernel(links: &[String], strict: bool) -> anyhow::Result<LinkPlan> {
    let mut h = eni_kernel::Handle::new().context("opening netlink")?;
    let have: Vec<(String, u32)> = h
        .link_list()
        .context("listing links")?
        .into_iter()
        .map(|l| (l.name, l.index))
        .collect();
    let addrs: Vec<(u32, Ipv4Addr)> = h
        .addr_list(None)
        .context("listing addresses")?
        .into_iter()
        .map(|a| (a.index, a.address.addr()))
        .collect();
    plan_links_with(links, &have, &addrs, strict).map_err(anyhow::Error::msg)
}

/// The masquerade metrics (`eni_masquerade_*`).
#[derive(Debug)]
pub struct MasqueradeMetrics {
    dp: Arc<Mutex<eni_bpf::Masquerade>>,
    links: AtomicU64,
    cidrs: AtomicU64,
    resyncs: AtomicU64,
    resync_failures: AtomicU64,
    link_updates: AtomicU64,
}

impl crate::metrics::MetricsSource for MasqueradeMetrics {
    fn render(&self) -> String {
        let mut o = String::new();
        let mut put = |name: &str, help: &str, ty: &str, v: u64| {
            o.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {ty}\n{name} {v}\n"
            ));
        };
        put(
            "eni_masquerade_links",
            "Uplinks the masquerade programs are attached to.",
            "gauge",
            self.links.load(Ordering::Relaxed),
        );
        put(
            "eni_masquerade_link_updates_total",
            "Attachments, detachments and forgotten links done by the rescans for the patterns of masquerade.links.",
            "counter",
            self.link_updates.load(Ordering::Relaxed),
        );
        put(
            "eni_masquerade_non_masquerade_cidrs",
            "Entries in the non-masquerade list.",
            "gauge",
            self.cidrs.load(Ordering::Relaxed),
        );
        put(
            "eni_masquerade_resyncs_total",
            "Re-reads of masquerade.config_file.",
            "counter",
            self.resyncs.load(Ordering::Relaxed),
        );
        put(
            "eni_masquerade_resync_failures_total",
            "Re-reads of masquerade.config_file, or link rescans, that failed (what was in force was kept).",
            "counter",
            self.resync_failures.load(Ordering::Relaxed),
        );
        let counters = self.dp.lock().unwrap_or_else(|p| p.into_inner()).counters();
        if let Ok(c) = counters {
            for (name, help, v) in [
                (
                    "eni_masquerade_flows_total",
                    "Flows given a translation.",
                    c.new_flows,
                ),
                (
                    "eni_masquerade_snat_packets_total",
                    "Packets masqueraded at egress.",
                    c.snat_packets,
                ),
                (
                    "eni_masquerade_reverse_packets_total",
                    "Replies translated back to pods.",
                    c.reverse_packets,
                ),
                (
                    "eni_masquerade_exempt_packets_total",
                    "Pod packets to a non-masquerade destination.",
                    c.exempt_packets,
                ),
                (
                    "eni_masquerade_no_port_drops_total",
                    "Packets dropped: no free port for the destination.",
                    c.no_port_drops,
                ),
                (
                    "eni_masquerade_error_drops_total",
                    "Packets dropped: a rewrite failed.",
                    c.error_drops,
                ),
                (
                    "eni_masquerade_unsupported_packets_total",
                    "Pod packets to outside that cannot be translated (left untranslated).",
                    c.unsupported_packets,
                ),
                (
                    "eni_masquerade_inbound_flows_total",
                    "Flows opened from outside straight to a pod address.",
                    c.inbound_flows,
                ),
            ] {
                put(name, help, "counter", v);
            }
        }
        o
    }
}

/// The running masquerade: the resync thread and the metrics.
#[derive(Debug)]
pub struct MasqueradeHandle {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
    metrics: Arc<MasqueradeMetrics>,
}

impl MasqueradeHandle {
    /// The metrics source to register.
    pub fn metrics_source(&self) -> Arc<dyn crate::metrics::MetricsSource> {
        self.metrics.clone()
    }

    /// Stops the resync thread. The programs and pins stay: pod traffic keeps being
    /// masqueraded while the manager is down.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sets masquerade up as `cfg` says, maps pinned in `pin_dir` (blocking: netlink and bpf
/// syscalls). `None` when the section is off (after removing what a previous run left).
pub fn start(cfg: &MasqueradeConfig, pin_dir: &Path) -> anyhow::Result<Option<MasqueradeHandle>> {
    if !cfg.enabled {
        disable_leftovers(pin_dir);
        return Ok(None);
    }
    let (links, waiting) = plan_from_kernel(&cfg.links, true)?;
    for w in &waiting {
        info!(link = %w, "masquerade: link matches masquerade.links but has no IPv4 address yet; attached once it has one");
    }
    let file = match &cfg.config_file {
        Some(p) => read_agent_file(p).map_err(anyhow::Error::msg)?,
        None => None,
    };
    let list =
        desired_list(cfg, file.as_ref(), cfg.config_file.as_deref()).map_err(anyhow::Error::msg)?;
    let mut dp = eni_bpf::Masquerade::load_or_adopt(pin_dir).with_context(|| {
        format!(
            "loading the masquerade programs (masquerade.bpf_pin_dir {})",
            pin_dir.display()
        )
    })?;
    let changes = dp
        .set_nonmasq_cidrs(&list)
        .context("writing the non-masquerade list")?;
    info!(cidrs = ?list, added = changes.added.len(), removed = changes.removed.len(), "non-masquerade list written");
    for (name, addr) in &links {
        let n = dp.attach(OWN_NETNS, name, *addr).with_context(|| {
            format!("attaching the masquerade programs to masquerade.links {name}")
        })?;
        info!(link = %name, address = %addr, newly_attached = n, "masquerade programs attached");
    }
    match dp.links(OWN_NETNS) {
        Ok(recorded) => {
            prune(&mut dp, recorded, &links);
        }
        Err(e) => {
            warn!(error = %e, "cannot list the links the masquerade programs were attached to")
        }
    }
    let metrics = Arc::new(MasqueradeMetrics {
        dp: Arc::new(Mutex::new(dp)),
        links: AtomicU64::new(links.len() as u64),
        cidrs: AtomicU64::new(list.len() as u64),
        resyncs: AtomicU64::new(0),
        resync_failures: AtomicU64::new(0),
        link_updates: AtomicU64::new(0),
    });
    let (stop, stopped) = mpsc::channel::<()>();
    let patterns = cfg.links.iter().any(|l| is_pattern(l));
    let thread = if cfg.config_file.is_some() || patterns {
        let (cfg, m) = (cfg.clone(), metrics.clone());
        let every = Duration::from_secs(cfg.resync_interval_s.max(1));
        Some(
            std::thread::Builder::new()
                .name("masq-resync".into())
                .spawn(move || {
                    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                        if let Some(path) = &cfg.config_file {
                            resync(&cfg, path, &m);
                        }
                        if patterns {
                            relink(&cfg, &m);
                        }
                    }
                })
                .context("starting the masquerade resync thread")?,
        )
    } else {
        None
    };
    Ok(Some(MasqueradeHandle {
        stop,
        thread,
        metrics,
    }))
}

/// Detaches from the `recorded` links that are not `planned` any more, and forgets the
/// records of links that no longer exist (their filters went with them). Returns how many
/// it changed.
fn prune(
    dp: &mut eni_bpf::Masquerade,
    recorded: Vec<eni_bpf::MasqLink>,
    planned: &[(String, Ipv4Addr)],
) -> u64 {
    let mut changed = 0;
    for old in recorded {
        let Some(name) = old.name else {
            match dp.forget(old.ifindex) {
                Ok(()) => {
                    changed += 1;
                    info!(
                        ifindex = old.ifindex,
                        "masquerade: a link it was attached to is gone; record removed"
                    );
                }
                Err(e) => {
                    warn!(ifindex = old.ifindex, error = %e, "masquerade: cannot remove the record of a link that is gone")
                }
            }
            continue;
        };
        if planned.iter().any(|(n, _)| *n == name) {
            continue;
        }
        match dp.detach(OWN_NETNS, &name) {
            Ok(()) => {
                changed += 1;
                info!(link = %name, "masquerade programs detached (the link is not in masquerade.links, or lost its address)");
            }
            Err(e) => {
                warn!(link = %name, error = %e, "cannot detach the masquerade programs from a link no longer configured");
            }
        }
    }
    changed
}

/// One rescan of the links for the patterns of `masquerade.links`: attaches to links that
/// appeared (or whose address changed), detaches from links that went away or stopped
/// matching. A failure is logged and counted; the next rescan tries again.
fn relink(cfg: &MasqueradeConfig, m: &MasqueradeMetrics) {
    let (links, _) = match plan_from_kernel(&cfg.links, false) {
        Ok(p) => p,
        Err(e) => {
            m.resync_failures.fetch_add(1, Ordering::Relaxed);
            warn!(error = %format!("{e:#}"), "masquerade: cannot read the links; will retry");
            return;
        }
    };
    let mut dp = m.dp.lock().unwrap_or_else(|p| p.into_inner());
    let recorded = match dp.links(OWN_NETNS) {
        Ok(r) => r,
        Err(e) => {
            m.resync_failures.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "masquerade: cannot list the links it is attached to; will retry");
            return;
        }
    };
    let mut changed = 0;
    for (name, addr) in &links {
        if recorded
            .iter()
            .any(|r| r.name.as_deref() == Some(name.as_str()) && r.addr == *addr)
        {
            continue;
        }
        match dp.attach(OWN_NETNS, name, *addr) {
            Ok(n) => {
                changed += 1;
                info!(link = %name, address = %addr, newly_attached = n, "masquerade programs attached (a link matching masquerade.links appeared, or its address changed)");
            }
            Err(e) => {
                m.resync_failures.fetch_add(1, Ordering::Relaxed);
                warn!(link = %name, error = %e, "masquerade: cannot attach to a link matching masquerade.links; will retry");
            }
        }
    }
    changed += prune(&mut dp, recorded, &links);
    m.link_updates.fetch_add(changed, Ordering::Relaxed);
    if let Ok(now) = dp.links(OWN_NETNS) {
        m.links.store(now.len() as u64, Ordering::Relaxed);
    }
}

/// One re-read of the ip-masq-agent file; a bad file keeps the list in force.
fn resync(cfg: &MasqueradeConfig, path: &Path, m: &MasqueradeMetrics) {
    m.resyncs.fetch_add(1, Ordering::Relaxed);
    let list = read_agent_file(path).and_then(|f| desired_list(cfg, f.as_ref(), Some(path)));
    let list = match list {
        Ok(l) => l,
        Err(e) => {
            m.resync_failures.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "masquerade: keeping the non-masquerade list in force");
            return;
        }
    };
    let mut dp = m.dp.lock().unwrap_or_else(|p| p.into_inner());
    match dp.set_nonmasq_cidrs(&list) {
        Ok(ch) if ch.added.is_empty() && ch.removed.is_empty() => {}
        Ok(ch) => {
            m.cidrs.store(list.len() as u64, Ordering::Relaxed);
            info!(added = ?ch.added, removed = ?ch.removed, "masquerade: non-masquerade list updated");
        }
        Err(e) => {
            m.resync_failures.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "masquerade: cannot update the non-masquerade list");
        }
    }
}

/// With the section off: detaches what a previous run attached and removes its pins.
fn disable_leftovers(pin_dir: &Path) {
    if !pin_dir.join(eni_bpf::maps::MASQ_LINKS_MAP).exists() {
        return;
    }
    let mut dp = match eni_bpf::Masquerade::load_or_adopt(pin_dir) {
        Ok(dp) => dp,
        Err(e) => {
            warn!(error = %e, "masquerade is off but its pins could not be opened; remove them by hand");
            return;
        }
    };
    match dp.links(OWN_NETNS) {
        Ok(links) => {
            for l in links {
                if let Some(name) = l.name {
                    match dp.detach(OWN_NETNS, &name) {
                        Ok(()) => info!(link = %name, "masquerade is off: programs detached"),
                        Err(e) => {
                            warn!(link = %name, error = %e, "masquerade is off but its programs could not be detached")
                        }
                    }
                }
            }
        }
        Err(e) => warn!(error = %e, "masquerade is off but its links could not be listed"),
    }
    drop(dp);
    if let Err(e) = eni_bpf::unpin_masq(pin_dir) {
        warn!(error = %e, "masquerade is off but its pins could not be removed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metadata service of the Alibaba Cloud flavour that answers `vpc-cidr-block` with
    /// `body` (404 when `None`), one request per connection.
    async fn metadata_service(body: Option<&'static str>) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let (status, text) = if line.starts_with("PUT /latest/api/token") {
                    ("200 OK", "token")
                } else if line.starts_with("GET /latest/meta-data/vpc-cidr-block") {
                    body.map_or(("404 Not Found", ""), |b| ("200 OK", b))
                } else {
                    ("404 Not Found", "")
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = sock.write_all(answer.as_bytes()).await;
            }
        });
        (url, task)
    }

    fn cloud(url: &str) -> crate::config::CloudConfig {
        serde_yaml::from_str(&format!("{{provider: aliyun, metadata_endpoint: '{url}'}}"))
            .expect("cloud config")
    }

    #[tokio::test]
    async fn vpc_cidrs_come_from_the_metadata_service_then_from_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("vpc-cidrs.json");
        let (url, server) = metadata_service(Some("172.16.0.0/12\n")).await;
        let got = learn_vpc_cidrs(&cloud(&url), &cache)
            .await
            .expect("learned");
        assert_eq!(got, vec![net("172.16.0.0/12")]);
        assert!(cache.exists());
        server.abort();
        let _ = server.await;

        // The service is gone: the cached blocks are used.
        let got = learn_vpc_cidrs(&cloud(&url), &cache).await.expect("cached");
        assert_eq!(got, vec![net("172.16.0.0/12")]);

        // Neither service nor cache: the error names the field to set.
        std::fs::remove_file(&cache).expect("rm");
        let err = learn_vpc_cidrs(&cloud(&url), &cache)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("masquerade.vpc_cidrs: empty"), "{err}");
        assert!(err.contains(&url), "{err}");

        // A service that does not know the path, or answers garbage: an error, no cache.
        for body in [None, Some("not a cidr")] {
            let (url, server) = metadata_service(body).await;
            let err = learn_vpc_cidrs(&cloud(&url), &cache)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("give them in masquerade.vpc_cidrs"), "{err}");
            assert!(!cache.exists());
            server.abort();
        }
    }

    fn cfg() -> MasqueradeConfig {
        MasqueradeConfig {
            enabled: true,
            links: vec!["eth0".into()],
            vpc_cidrs: vec!["172.31.0.0/16".into()],
            ..MasqueradeConfig::default()
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn default_list_is_ip_masq_agent_plus_vpc_plus_link_local() {
        let l = desired_list(&cfg(), None, None).unwrap();
        assert_eq!(l.len(), 13);
        for c in eni_bpf::masq::IP_MASQ_AGENT_DEFAULT_CIDRS {
            assert!(l.contains(&net(c)), "{c}");
        }
        assert!(l.contains(&net("172.31.0.0/16")));
        assert!(l.contains(&net("169.254.0.0/16")));
        let mut c = cfg();
        c.masq_link_local = true;
        assert!(!desired_list(&c, None, None)
            .unwrap()
            .contains(&net("169.254.0.0/16")));
    }

    #[test]
    fn the_file_replaces_the_configured_fields_it_sets_and_the_vpc_stays() {
        let f: AgentFile =
            serde_yaml::from_str("nonMasqueradeCIDRs: [10.0.0.0/8]\nmasqLinkLocal: true\n")
                .unwrap();
        let l = desired_list(&cfg(), Some(&f), Some(Path::new("/f"))).unwrap();
        assert_eq!(l, vec![net("10.0.0.0/8"), net("172.31.0.0/16")]);
        // Only masqLinkLocal: the configured CIDRs stay.
        let f: AgentFile = serde_yaml::from_str("masqLinkLocal: false\n").unwrap();
        assert_eq!(desired_list(&cfg(), Some(&f), None).unwrap().len(), 13);
        // An empty nonMasqueradeCIDRs list: only the VPC (and link-local).
        let f: AgentFile = serde_yaml::from_str("nonMasqueradeCIDRs: []\n").unwrap();
        assert_eq!(
            desired_list(&cfg(), Some(&f), None).unwrap(),
            vec![net("169.254.0.0/16"), net("172.31.0.0/16")]
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let f: AgentFile =
            serde_yaml::from_str("nonMasqueradeCIDRs: [10.0.0.0/8, 1.2.3/24]\n").unwrap();
        let e = desired_list(&cfg(), Some(&f), Some(Path::new("/etc/m/config"))).unwrap_err();
        assert!(
            e.starts_with(
                "masquerade.config_file /etc/m/config: nonMasqueradeCIDRs[1]: \"1.2.3/24\""
            ),
            "{e}"
        );
        let mut c = cfg();
        c.non_masquerade_cidrs = vec!["x".into()];
        let e = desired_list(&c, None, None).unwrap_err();
        assert!(
            e.starts_with("masquerade.non_masquerade_cidrs[0]: \"x\""),
            "{e}"
        );
    }

    #[test]
    fn agent_files_missing_empty_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        assert_eq!(read_agent_file(&p).unwrap(), None);
        std::fs::write(&p, "\n").unwrap();
        assert_eq!(read_agent_file(&p).unwrap(), Some(AgentFile::default()));
        std::fs::write(
            &p,
            "nonMasqueradeCIDRs: [10.0.0.0/8]\nresyncInterval: 60s\n",
        )
        .unwrap();
        assert_eq!(
            read_agent_file(&p).unwrap().unwrap().non_masquerade_cidrs,
            Some(vec!["10.0.0.0/8".to_owned()])
        );
        std::fs::write(&p, "nonMasqueradeCidrs: [10.0.0.0/8]\n").unwrap();
        let e = read_agent_file(&p).unwrap_err();
        assert!(
            e.contains("masquerade.config_file") && e.contains("nonMasqueradeCidrs"),
            "{e}"
        );
    }

    #[test]
    fn link_patterns_match_like_a_shell() {
        for (p, n, want) in [
            ("eth*", "eth0", true),
            ("eth*", "eth", true),
            ("eth*", "ens5", false),
            ("e*5", "ens5", true),
            ("e*5", "ens56", false),
            ("eth?", "eth1", true),
            ("eth?", "eth10", false),
            ("*", "anything", true),
            ("*x*y", "axbxcy", true),
            ("*x*y", "axbxc", false),
            ("eth0", "eth0", true),
        ] {
            assert_eq!(matches(p, n), want, "{p} ~ {n}");
        }
        assert!(is_pattern("eth*") && is_pattern("eth?") && !is_pattern("eth0"));
    }

    #[test]
    fn patterns_take_every_matching_link_with_an_address() {
        let have = vec![
            ("lo".to_owned(), 1),
            ("eth0".to_owned(), 2),
            ("eth1".to_owned(), 3),
            ("eth2".to_owned(), 4),
            ("veth1234".to_owned(), 5),
        ];
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let addrs = vec![
            (1, a("127.0.0.1")),
            (2, a("10.0.0.5")),
            (3, a("10.0.1.7")),
            (5, a("169.254.1.1")),
        ];
        // eth2 has no address yet: waiting. lo and veth1234 do not match.
        let (links, waiting) =
            plan_links(&["eth0".to_owned(), "eth*".to_owned()], &have, &addrs).unwrap();
        assert_eq!(
            links,
            vec![
                ("eth0".to_owned(), a("10.0.0.5")),
                ("eth1".to_owned(), a("10.0.1.7"))
            ]
        );
        assert_eq!(waiting, vec!["eth2".to_owned()]);
        // A pattern may match nothing; "*" never takes lo.
        let (links, waiting) = plan_links(&["ens*".to_owned()], &have, &addrs).unwrap();
        assert!(links.is_empty() && waiting.is_empty());
        let (links, _) = plan_links(&["*".to_owned()], &have, &addrs).unwrap();
        assert!(links.iter().all(|(n, _)| n != "lo"), "{links:?}");
        // After start, a named link that went away is waited for, not an error.
        let (links, waiting) = plan_links_with(
            &["eth9".to_owned(), "eth*".to_owned()],
            &have,
            &addrs,
            false,
        )
        .unwrap();
        assert_eq!(links.len(), 2);
        assert_eq!(waiting, vec!["eth9".to_owned(), "eth2".to_owned()]);
    }

    #[test]
    fn links_get_their_first_address_and_problems_are_named() {
        let have = vec![
            ("lo".to_owned(), 1),
            ("eth0".to_owned(), 2),
            ("eth1".to_owned(), 3),
        ];
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let addrs = vec![
            (1, a("127.0.0.1")),
            (2, a("10.0.0.5")),
            (2, a("10.0.0.6")),
            (3, a("10.0.1.7")),
        ];
        let links = vec!["eth1".to_owned(), "eth0".to_owned()];
        assert_eq!(
            plan_links(&links, &have, &addrs).unwrap(),
            (
                vec![
                    ("eth1".to_owned(), a("10.0.1.7")),
                    ("eth0".to_owned(), a("10.0.0.5"))
                ],
                vec![]
            )
        );
        let e = plan_links(&["eth9".to_owned()], &have, &addrs).unwrap_err();
        assert!(
            e.starts_with("masquerade.links[0]: no link \"eth9\""),
            "{e}"
        );
        let e = plan_links(&["eth0".to_owned(), "lo".to_owned()], &have, &addrs).unwrap_err();
        assert!(
            e.starts_with("masquerade.links[1]: \"lo\" has no IPv4 address"),
            "{e}"
        );
    }

    #[test]
    fn off_without_leftovers_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = MasqueradeConfig::default();
        assert!(start(&c, dir.path()).unwrap().is_none());
    }

    /// As root, in a network namespace and on a bpffs this test creates: start attaches
    /// and writes the list, the ip-masq-agent file is re-read, and turning the section
    /// off detaches the programs and removes the pins.
    #[test]
    fn start_resync_and_off_in_a_test_namespace() {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if !root {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), b"SKIPPED: needs root\n");
            return;
        }
        struct Env {
            ns: String,
            bpffs: tempfile::TempDir,
            mounted: bool,
        }
        impl Drop for Env {
            fn drop(&mut self) {
                if self.mounted {
                    let _ = std::process::Command::new("umount")
                        .arg(self.bpffs.path())
                        .status();
                }
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.ns])
                    .status();
            }
        }
        let run = |args: &[&str]| {
            let out = std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let ns = format!("mqm{}", std::process::id());
        run(&["ip", "netns", "add", &ns]);
        let mut env = Env {
            ns: ns.clone(),
            bpffs: tempfile::tempdir().unwrap(),
            mounted: false,
        };
        run(&[
            "ip", "-n", &ns, "link", "add", "up0", "type", "veth", "peer", "name", "pe0",
        ]);
        run(&["ip", "-n", &ns, "addr", "add", "10.77.0.1/24", "dev", "up0"]);
        run(&["ip", "-n", &ns, "link", "set", "up0", "up"]);
        run(&[
            "mount",
            "-t",
            "bpf",
            "bpf",
            env.bpffs.path().to_str().unwrap(),
        ]);
        env.mounted = true;
        let pins = env.bpffs.path().join("pins");
        let filedir = tempfile::tempdir().unwrap();
        let file = filedir.path().join("agent-config");
        let cfg = MasqueradeConfig {
            enabled: true,
            links: vec!["up0".into(), "up*".into()],
            vpc_cidrs: vec!["10.77.0.0/16".into()],
            config_file: None, // set below, to a file that appears later
            resync_interval_s: 1,
            ..MasqueradeConfig::default()
        };
        let netns = eni_kernel::netns::NetnsFd::by_name(&ns).unwrap();
        let pins2 = pins.clone();
        eni_kernel::netns::run_in_netns(&netns, move || {
            let mut c = cfg.clone();
            c.config_file = Some(file.clone());
            let h = start(&c, &pins2).unwrap().expect("enabled");
            let dp = eni_bpf::Masquerade::load_or_adopt(&pins2).unwrap();
            let links = dp.links(OWN_NETNS).unwrap();
            assert_eq!(links.len(), 1);
            assert_eq!(links[0].name.as_deref(), Some("up0"));
            assert_eq!(links[0].addr, Ipv4Addr::new(10, 77, 0, 1));
            assert_eq!(
                dp.nonmasq_cidrs().unwrap().len(),
                13,
                "defaults + VPC + link-local"
            );
            let text = h.metrics_source().render();
            assert!(text.contains("eni_masquerade_links 1"), "{text}");
            assert!(
                text.contains("eni_masquerade_non_masquerade_cidrs 13"),
                "{text}"
            );

            // The file appears: the next resync makes it the list (plus VPC, link-local).
            std::fs::write(&file, "nonMasqueradeCIDRs: [1.2.3.0/24]\n").unwrap();
            let want = vec![
                net("1.2.3.0/24"),
                net("10.77.0.0/16"),
                net("169.254.0.0/16"),
            ];
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while dp.nonmasq_cidrs().unwrap() != want && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            assert_eq!(dp.nonmasq_cidrs().unwrap(), want);
            // A broken file keeps the list in force.
            std::fs::write(&file, "nonMasqueradeCIDRs: [nope]\n").unwrap();
            std::thread::sleep(Duration::from_millis(2500));
            assert_eq!(dp.nonmasq_cidrs().unwrap(), want);
            assert!(h
                .metrics_source()
                .render()
                .contains("eni_masquerade_resync_failures_total"));

            // A link matching `up*` appears: a rescan attaches to it with its address; it
            // goes away: its record goes too.
            let ip = |args: &[&str]| {
                let out = std::process::Command::new("ip")
                    .args(args)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            ip(&["link", "add", "up1", "type", "veth", "peer", "name", "pe1"]);
            ip(&["addr", "add", "10.77.1.1/24", "dev", "up1"]);
            let names = |dp: &eni_bpf::Masquerade| -> Vec<(Option<String>, Ipv4Addr)> {
                dp.links(OWN_NETNS)
                    .unwrap()
                    .into_iter()
                    .map(|l| (l.name, l.addr))
                    .collect()
            };
            let wait_for = |want: &[(Option<String>, Ipv4Addr)]| {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while names(&dp) != want && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                assert_eq!(names(&dp), want);
            };
            let up0 = (Some("up0".to_owned()), Ipv4Addr::new(10, 77, 0, 1));
            wait_for(&[
                up0.clone(),
                (Some("up1".to_owned()), Ipv4Addr::new(10, 77, 1, 1)),
            ]);
            let tc = std::process::Command::new("tc")
                .args(["filter", "show", "dev", "up1", "egress"])
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&tc.stdout).contains("masq4"),
                "{tc:?}"
            );
            ip(&["link", "del", "up1"]);
            wait_for(&[up0]);
            let text = h.metrics_source().render();
            assert!(text.contains("eni_masquerade_links 1"), "{text}");
            assert!(
                text.contains("eni_masquerade_link_updates_total 2"),
                "{text}"
            );
            h.stop();
            drop(dp);

            // Off: detached, pins gone.
            let off = MasqueradeConfig::default();
            assert!(start(&off, &pins2).unwrap().is_none());
        })
        .expect("enter the test namespace");
        assert!(!pins.join(eni_bpf::maps::MASQ_LINKS_MAP).exists());
        for dir in ["ingress", "egress"] {
            let out = run(&[
                "ip", "netns", "exec", &ns, "tc", "filter", "show", "dev", "up0", dir,
            ]);
            assert!(!out.contains("masq4"), "{dir}: {out}");
        }
    }
}
