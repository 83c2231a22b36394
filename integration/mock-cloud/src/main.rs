//! `mock-cloud --world <file> --listen <addr> [--state <file>]`: see `docs/mock-cloud.md`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mock_cloud::server::{run, shutdown_signal, Shared};
use mock_cloud::world::World;

/// An Alibaba Cloud ECS/VPC OpenAPI emulator with instance metadata and a netns hypervisor.
#[derive(Debug, Parser)]
#[command(name = "mock-cloud", version)]
struct Args {
    /// The world file (YAML): region, VPC, vSwitches, instance types, instances, keys, faults.
    #[arg(long, env = "MOCK_CLOUD_WORLD")]
    world: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed on the first stdout line).
    #[arg(long, env = "MOCK_CLOUD_LISTEN", default_value = "127.0.0.1:8640")]
    listen: String,
    /// State file: read at start when it exists, rewritten after every change.
    #[arg(long, env = "MOCK_CLOUD_STATE")]
    state: Option<PathBuf>,
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
    let world = match World::load(&args.world) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("mock-cloud: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mock-cloud: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shared = match Shared::new(world, args.state.clone()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("mock-cloud: --state: {e}");
                return ExitCode::from(EX_USAGE);
            }
        };
        let listener = match tokio::net::TcpListener::bind(&args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("mock-cloud: --listen {}: {e}", args.listen);
                return ExitCode::from(EX_USAGE);
            }
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("mock-cloud: {e}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = match shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("mock-cloud: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        for problem in shared.bind_initial().await {
            tracing::error!("hypervisor: {problem}");
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "mock-cloud listening on http://{addr}");
        let _ = out.flush();
        drop(out);
        match run(shared, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mock-cloud: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
