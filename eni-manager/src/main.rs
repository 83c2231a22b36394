//! `eni-manager --config <file>`: the node daemon. See `docs/configuration.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use cloud_providers::{CallStats, NodeInfo, NodeLimits};
use eni_manager::config::{Config, NodeNetworkKind, ProviderKind, SubnetSelection};
use eni_manager::metrics::{self, Metrics};
use eni_manager::node::{KernelNodeNetwork, NoNodeNetwork, NodeNetwork};
use eni_manager::pool::manager::{Manager, ManagerSettings};
use eni_manager::pool::ops::OpContext;
use eni_manager::pool::planner::{Limits, PoolTargets};
use eni_manager::rpc::RpcHandler;
use tracing::{error, info, warn};

/// The node daemon: warm pool of ENIs and addresses, durable state, RPC for the CNI.
#[derive(Debug, Parser)]
#[command(name = "eni-manager", version)]
struct Args {
    /// The configuration file (YAML).
    #[arg(long, env = "ENI_MANAGER_CONFIG")]
    config: Option<PathBuf>,
    /// Override one field: `--set pool.min_idle=4` (repeatable; after the file and the
    /// `ENI_MANAGER__SECTION__FIELD` environment variables).
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    sets: Vec<String>,
    /// Shorthand for `--set daemon.socket=PATH`.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Shorthand for `--set daemon.state_dir=PATH`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Shorthand for `--set daemon.metrics_address=ADDR`.
    #[arg(long)]
    metrics_address: Option<String>,
    /// Check the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
}

const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut sets = args.sets.clone();
    if let Some(s) = &args.socket {
        sets.push(format!("daemon.socket={}", s.display()));
    }
    if let Some(s) = &args.state_dir {
        sets.push(format!("daemon.state_dir={}", s.display()));
    }
    if let Some(s) = &args.metrics_address {
        sets.push(format!("daemon.metrics_address={s}"));
    }
    let cfg = match Config::load(args.config.as_deref(), std::env::vars(), &sets) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("eni-manager: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if args.check_config {
        let mut out = std::io::stdout().lock();
        let _ = std::io::Write::write_all(
            &mut out,
            serde_yaml::to_string(&cfg).unwrap_or_default().as_bytes(),
        );
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("eni-manager: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            eprintln!("eni-manager: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The node as last learned, so a restart while the cloud is down can still serve the pool.
#[derive(serde::Serialize, serde::Deserialize)]
struct CachedNode {
    instance_id: String,
    instance_type: String,
    region: String,
    zone: String,
    vpc_id: String,
    primary_subnet_id: String,
    security_group_ids: Vec<String>,
    primary_eni_id: String,
    primary_mac: String,
    primary_ip: std::net::Ipv4Addr,
    max_enis: u32,
    ipv4_per_eni: u32,
    prefix_support: bool,
}

impl From<&NodeInfo> for CachedNode {
    fn from(n: &NodeInfo) -> Self {
        CachedNode {
            instance_id: n.instance_id.clone(),
            instance_type: n.instance_type.clone(),
            region: n.region.clone(),
            zone: n.zone.clone(),
            vpc_id: n.vpc_id.clone(),
            primary_subnet_id: n.primary_subnet_id.clone(),
            security_group_ids: n.security_group_ids.clone(),
            primary_eni_id: n.primary_eni_id.clone(),
            primary_mac: n.primary_mac.clone(),
            primary_ip: n.primary_ip,
            max_enis: n.limits.max_enis,
            ipv4_per_eni: n.limits.ipv4_per_eni,
            prefix_support: n.limits.prefix_support,
        }
    }
}

impl From<CachedNode> for NodeInfo {
    fn from(c: CachedNode) -> Self {
        NodeInfo {
            instance_id: c.instance_id,
            instance_type: c.instance_type,
            region: c.region,
            zone: c.zone,
            vpc_id: c.vpc_id,
            primary_subnet_id: c.primary_subnet_id,
            security_group_ids: c.security_group_ids,
            primary_eni_id: c.primary_eni_id,
            primary_mac: c.primary_mac,
            primary_ip: c.primary_ip,
            limits: NodeLimits {
                max_enis: c.max_enis,
                ipv4_per_eni: c.ipv4_per_eni,
                prefix_support: c.prefix_support,
            },
        }
    }
}

async fn learn_node(
    provider: &dyn cloud_providers::CloudProvider,
    cache: &std::path::Path,
) -> anyhow::Result<NodeInfo> {
    match tokio::time::timeout(Duration::from_secs(60), provider.node_info()).await {
        Ok(Ok(node)) => {
            let text = serde_json::to_vec_pretty(&CachedNode::from(&node))?;
            let tmp = cache.with_extension("tmp");
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, cache))
                .with_context(|| format!("writing {}", cache.display()))?;
            Ok(node)
        }
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer within 60 s".to_string(),
            };
            match std::fs::read(cache) {
                Ok(bytes) => {
                    let c: CachedNode = serde_json::from_slice(&bytes)
                        .with_context(|| format!("reading {}", cache.display()))?;
                    warn!(reason = %why, "cannot learn the node from the cloud; using what was learned before");
                    Ok(c.into())
                }
                Err(_) => anyhow::bail!("cannot learn the node from the cloud: {why}"),
            }
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&cfg.daemon.state_dir).with_context(|| {
        format!(
            "creating daemon.state_dir {}",
            cfg.daemon.state_dir.display()
        )
    })?;
    // Services first: the socket load balancer does not depend on the cloud, and pinned
    // maps adopted here keep serving while the rest starts.
    // The pods' host ports, when the node serves them (they ride on services.nodeport's
    // per-packet path): filled from the store before the services loop adopts the pinned
    // maps, so its first reconcile keeps serving them while the pool starts.
    let host_ports = (cfg.services.enabled && cfg.services.nodeport.enabled).then(|| {
        let hp = eni_manager::hostports::HostPorts::new();
        match eni_manager::store::Store::read_state(&cfg.daemon.state_dir) {
            Ok(state) => {
                hp.set(eni_manager::pool::manager::Manager::host_port_entries(&state));
            }
            Err(e) => {
                warn!(error = %e, "cannot read the stored host ports before the pool starts; they are served once the pool has opened the store")
            }
        }
        hp
    });
    let services = if cfg.services.enabled {
        let c = cfg.services.clone();
        let hp = host_ports.clone();
        Some(
            tokio::task::spawn_blocking(move || eni_manager::services::start(&c, hp))
                .await
                .context("starting services")??,
        )
    } else {
        None
    };
    // Masquerade does not depend on the cloud either (the pins keep it working meanwhile).
    let masquerade = {
        let mut c = cfg.masquerade.clone();
        if c.enabled && c.vpc_cidrs.is_empty() {
            let cache = cfg.daemon.state_dir.join("vpc-cidrs.json");
            c.vpc_cidrs = eni_manager::masquerade::learn_vpc_cidrs(&cfg.cloud, &cache)
                .await?
                .iter()
                .map(ToString::to_string)
                .collect();
        }
        let pins = cfg.masquerade_pin_dir();
        tokio::task::spawn_blocking(move || eni_manager::masquerade::start(&c, &pins))
            .await
            .context("starting masquerade")??
    };
    let stats = Arc::new(CallStats::new());
    let metrics = Arc::new(Metrics::new(stats.clone()));
    for source in services.iter().flat_map(|s| s.metrics_sources()) {
        metrics.add_source(source);
    }
    if let Some(m) = &masquerade {
        metrics.add_source(m.metrics_source());
    }
    let provider = eni_manager::provider::build(&cfg.cloud, stats)
        .await
        .context("building the cloud client")?;
    let node = learn_node(provider.as_ref(), &cfg.daemon.state_dir.join("node.json")).await?;
    info!(
        instance = %node.instance_id,
        r#type = %node.instance_type,
        zone = %node.zone,
        max_enis = node.limits.max_enis,
        ipv4_per_eni = node.limits.ipv4_per_eni,
        "node learned"
    );
    let Some(subnets) = cfg
        .network
        .subnets
        .get(&node.zone)
        .filter(|s| !s.is_empty())
    else {
        eprintln!(
            "eni-manager: network.subnets has no vSwitch/subnet for this node's zone {}; add {}: [<id>, ...]",
            node.zone, node.zone
        );
        return Ok(ExitCode::from(EX_USAGE));
    };
    if cfg.pool.prefix_mode && !node.limits.prefix_support {
        eprintln!(
            "eni-manager: pool.prefix_mode is on but instance type {} does not take /28 prefixes{}",
            node.instance_type,
            if cfg.cloud.provider == ProviderKind::Aliyun {
                " (set cloud.prefix_support: true if it does)"
            } else {
                ""
            }
        );
        return Ok(ExitCode::from(EX_USAGE));
    }
    let limits = Limits {
        max_enis: cfg
            .pool
            .max_enis
            .map_or(node.limits.max_enis, |m| m.min(node.limits.max_enis)),
        ipv4_per_eni: node.limits.ipv4_per_eni,
    };
    let security_groups = if cfg.network.security_groups.is_empty() {
        node.security_group_ids.clone()
    } else {
        cfg.network.security_groups.clone()
    };
    let ctx = Arc::new(OpContext {
        provider: provider.clone(),
        net: match cfg.network.node_network {
            NodeNetworkKind::Kernel => Arc::new(KernelNodeNetwork) as Arc<dyn NodeNetwork>,
            NodeNetworkKind::None => {
                warn!("network.node_network is none: attached ENIs are not configured on this node (for tests against emulators only)");
                Arc::new(NoNodeNetwork)
            }
        },
        node: node.clone(),
        cluster_id: cfg.cluster.id.clone(),
        extra_tags: cfg.cluster.tags.clone(),
        security_groups,
        mtu: cfg.network.mtu,
        route_table_base: cfg.network.route_table_base,
        rule_priority: cfg.network.rule_priority,
        attach_timeout: Duration::from_secs(120),
        link_timeout: Duration::from_secs(30),
    });
    let settings = ManagerSettings {
        targets: PoolTargets {
            min_idle: cfg.pool.min_idle,
            max_idle: cfg.pool.max_idle,
            min_total: cfg.pool.min_total,
            release_cooldown_ms: cfg.pool.release_cooldown_s * 1000,
            prefix_mode: cfg.pool.prefix_mode,
            exclusive_warm: cfg.pool.exclusive_warm,
            fill_new_enis: cfg.pool.fill_new_enis,
        },
        max_enis: cfg.pool.max_enis,
        batch_window: Duration::from_millis(cfg.pool.batch_window_ms),
        allocate_timeout: Duration::from_millis(cfg.pool.allocate_timeout_ms),
        subnets: subnets.clone(),
        most_free: cfg.network.subnet_selection == SubnetSelection::MostFree,
        exhausted_block: Duration::from_secs(cfg.network.exhausted_block_s),
        gc_interval: Duration::from_secs(cfg.gc.interval_s),
        gc_grace: Duration::from_secs(cfg.gc.grace_s),
        orphan_grace: Duration::from_secs(cfg.gc.orphan_eni_grace_s),
    };
    let metrics_listener = tokio::net::TcpListener::bind(cfg.daemon.metrics_address)
        .await
        .with_context(|| format!("daemon.metrics_address {}", cfg.daemon.metrics_address))?;
    tokio::spawn(metrics::serve(metrics_listener, metrics.clone()));
    let (manager, pool) = Manager::start(
        settings,
        ctx,
        limits,
        &cfg.daemon.state_dir,
        metrics.clone(),
    )
    .await
    .context("opening the state store")?;
    let manager = match &host_ports {
        Some(hp) => manager.with_host_ports(hp.clone()),
        None => manager,
    };
    let actor = tokio::spawn(manager.run());
    let mut handler = RpcHandler::new(
        pool.clone(),
        metrics.clone(),
        cfg.cloud.provider_name(),
        cfg.network.mtu,
    );
    if let Some(hp) = host_ports {
        handler = handler.with_host_ports(hp);
    }
    if cfg.policy.enabled {
        // Before the socket is served: no pod is answered before its rules can be written.
        let policy = eni_manager::policy::start(&cfg.policy, cfg.policy_pin_dir(), pool)
            .await
            .context("starting policy")?;
        for source in policy.metrics_sources() {
            metrics.add_source(source);
        }
        handler = handler.with_policy(policy);
    }
    let handler = Arc::new(handler);
    let server = eni_rpc::server::Server::bind(&cfg.daemon.socket, Default::default())
        .with_context(|| format!("daemon.socket {}", cfg.daemon.socket.display()))?;
    metrics.set_ready(true);
    info!(socket = %cfg.daemon.socket.display(), metrics = %cfg.daemon.metrics_address, "serving");
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("signal handler");
        let mut int = signal(SignalKind::interrupt()).expect("signal handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        info!("shutting down");
    };
    tokio::select! {
        r = server.run(handler, shutdown) => {
            r.context("serving the CNI socket")?;
        }
        r = actor => {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(anyhow::Error::new(e).context("the state store failed")),
                Err(e) => return Err(anyhow::anyhow!("the pool task failed: {e}")),
            }
        }
    }
    metrics.set_ready(false);
    if let Some(m) = masquerade {
        // The programs and pins stay: pod traffic keeps being masqueraded while we are down.
        tokio::task::spawn_blocking(move || m.stop()).await.ok();
    }
    if let Some(s) = services {
        // The maps and links stay pinned: Service traffic keeps flowing while we are down.
        tokio::task::spawn_blocking(move || s.stop()).await.ok();
    }
    Ok(ExitCode::SUCCESS)
}
