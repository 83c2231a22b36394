//! `eni-bench`: the project's figures next to the baseline a user would run instead, measured
//! in the same run on the same machine, with their ratio. Root only (namespaces, eBPF,
//! iptables inside a namespace of its own). See `docs/benchmarks.md`.
//!
//! ```text
//! eni-bench all            # everything below, in order
//! eni-bench cni            # CNI ADD/DEL latency: eni-cni (veth, warm pool) vs macvlan + host-local
//! eni-bench burst          # 100 pods at once on a cold node vs the cloud's lower bounds
//! eni-bench services       # connection rate/latency: socket LB vs direct vs iptables DNAT, 1 and 10k Services;
//!                          # programming 10k x 10 and one endpoint change vs iptables-restore
//! eni-bench policy         # traffic to a pod with 0/100/1,000 eBPF policy rules vs the same as iptables
//! eni-bench footprint      # manager RSS with 250 pods, CNI peak RSS vs the reference plugins
//! ```
//!
//! Everything runs in network namespaces, a cgroup and a bpffs that the bench creates and
//! removes; nothing touches the machine's own network, root cgroup or `/sys/fs/bpf`.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

#[path = "../../e2e/tests/common/mod.rs"]
#[allow(
    unused_macros,
    unused_imports,
    missing_debug_implementations,
    reason = "the e2e harness, shared: the bench uses part of it"
)]
mod common;

mod cni;
mod policy;
mod report;
mod services;

use std::time::Duration;

use clap::{Parser, Subcommand};

use report::Report;

#[derive(Debug, Parser)]
#[command(
    name = "eni-bench",
    about = "Benchmarks against the baselines (root only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Also write the results as JSON here.
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every benchmark, in order.
    All {
        /// Pods for the CNI latency benchmark.
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Services for the Service benchmarks.
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        /// Seconds per connection-rate run.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// CNI ADD and DEL latency, warm pool, veth mode, against macvlan + host-local.
    Cni {
        #[arg(long, default_value_t = 100)]
        pods: usize,
    },
    /// A burst of pods on a node with an empty pool, realistic cloud latencies.
    Burst {
        #[arg(long, default_value_t = 100)]
        pods: usize,
    },
    /// Service connection rate and programming time against iptables.
    Services {
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// Traffic to a pod with 0, 100 and 1,000 policy rules selecting it, against iptables.
    Policy {
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// Manager RSS with many pods; CNI binary peak RSS.
    Footprint {
        #[arg(long, default_value_t = 250)]
        pods: usize,
    },
    /// (internal) A TCP request/response server for the Service benchmark.
    #[command(hide = true)]
    SvcServer {
        #[arg(long)]
        port: u16,
    },
    /// (internal) Short connections to `target` for `seconds`; prints JSON.
    #[command(hide = true)]
    SvcClient {
        #[arg(long)]
        target: std::net::SocketAddrV4,
        #[arg(long)]
        seconds: f64,
    },
    /// (internal) A TCP sink for the policy benchmark.
    #[command(hide = true)]
    BulkServer {
        #[arg(long)]
        port: u16,
    },
    /// (internal) Writes to `target` for `seconds`; prints JSON.
    #[command(hide = true)]
    BulkClient {
        #[arg(long)]
        target: std::net::SocketAddrV4,
        #[arg(long)]
        seconds: f64,
    },
    /// (internal) Runs a command and prints its peak RSS in KiB.
    #[command(hide = true)]
    PeakRss {
        #[arg(trailing_var_arg = true, required = true)]
        argv: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::SvcServer { port } => return services::server(port),
        Cmd::SvcClient { target, seconds } => {
            return services::client(target, Duration::from_secs_f64(seconds))
        }
        Cmd::PeakRss { argv } => return cni::peak_rss_child(&argv),
        Cmd::BulkServer { port } => return policy::bulk_server(port),
        Cmd::BulkClient { target, seconds } => {
            return policy::bulk_client(target, Duration::from_secs_f64(seconds))
        }
        _ => {}
    }
    if !common::is_root() {
        anyhow::bail!("eni-bench needs root (network namespaces, eBPF, iptables in a namespace)");
    }
    let mut report = Report::default();
    match cli.cmd {
        Cmd::All {
            pods,
            services,
            seconds,
        } => {
            cni::latency(&mut report, pods)?;
            cni::burst(&mut report, 100)?;
            services::run(&mut report, services, seconds)?;
            policy::run(&mut report, seconds)?;
            cni::footprint(&mut report, 250)?;
        }
        Cmd::Cni { pods } => cni::latency(&mut report, pods)?,
        Cmd::Burst { pods } => cni::burst(&mut report, pods)?,
        Cmd::Services { services, seconds } => services::run(&mut report, services, seconds)?,
        Cmd::Policy { seconds } => policy::run(&mut report, seconds)?,
        Cmd::Footprint { pods } => cni::footprint(&mut report, pods)?,
        Cmd::SvcServer { .. }
        | Cmd::SvcClient { .. }
        | Cmd::BulkServer { .. }
        | Cmd::BulkClient { .. }
        | Cmd::PeakRss { .. } => unreachable!(),
    }
    report.print_summary();
    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report.to_json())?)?;
        println!("results written to {}", path.display());
    }
    Ok(())
}
