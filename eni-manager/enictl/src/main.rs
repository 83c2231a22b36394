//! `enictl`: shows what `eni-manager` on this node holds: the node and pool status, the
//! ENIs and their addresses, and the allocations, as aligned tables or as the manager's raw
//! JSON answer.
//!
//! It only reads (status and list); it never allocates or releases. The protocol carries
//! no credentials, so nothing secret can reach the terminal.
//!
//! Exit codes: 0 ok, 1 the manager answered with an error (or an invalid answer),
//! 2 the manager cannot be reached, 64 usage error.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};

mod policies;
mod services;
use eni_rpc::{Allocation, Client, ClientError, EniStatus, Request, Response, Status};

/// Inspect eni-manager, the node daemon that gives pods addresses from cloud ENIs.
#[derive(Debug, Parser)]
#[command(name = "enictl", version)]
struct Cli {
    /// The manager's unix socket.
    #[arg(
        long,
        global = true,
        env = "ENI_MANAGER_SOCKET",
        default_value = eni_rpc::DEFAULT_SOCKET_PATH,
        value_name = "PATH"
    )]
    socket: PathBuf,
    /// Print the manager's raw JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// How long to wait for the manager: `5`, `5s` or `500ms`.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_timeout, value_name = "DURATION")]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Subcommand)]
enum Command {
    /// The node, the pool's counts, degraded mode and cloud calls.
    Status,
    /// The pool's counts and watermarks, and one row per ENI.
    Pool,
    /// One row per ENI, then one row per address on them.
    Enis,
    /// One row per allocation (container, interface, pod, address, ENI, age).
    Allocations,
    /// The eBPF Service load balancer's frontends and backends, read from its pinned maps
    /// (not from the manager; needs root).
    Services {
        /// Where the maps are pinned (`services.bpf_pin_dir`).
        #[arg(long, default_value = eni_bpf::DEFAULT_PIN_DIR, value_name = "DIR")]
        pin_dir: PathBuf,
    },
    /// Per pod, the NetworkPolicy rules in force and the drop counters, read from the
    /// pinned policy maps (pod names from the manager when it answers; needs root).
    Policies {
        /// Where the maps are pinned.
        #[arg(long, default_value = eni_bpf::DEFAULT_PIN_DIR, value_name = "DIR")]
        pin_dir: PathBuf,
    },
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let (number, unit_ms) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1.0)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1000.0)
    } else {
        (text, 1000.0)
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n * unit_ms < 86_400_000.0 => {
            Ok(Duration::from_secs_f64(n * unit_ms / 1000.0))
        }
        _ => Err(format!(
            "invalid duration {text:?}: expected e.g. 5, 5s or 500ms"
        )),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    if let Command::Services { pin_dir } = &cli.command {
        return match services::read_pinned(pin_dir) {
            Ok(entries) => {
                let text = if cli.json {
                    let mut t = serde_json::to_string_pretty(&services::to_json(&entries))
                        .unwrap_or_default();
                    t.push('\n');
                    t
                } else {
                    services::render(&entries)
                };
                let mut stdout = io::stdout().lock();
                let _ = stdout
                    .write_all(text.as_bytes())
                    .and_then(|()| stdout.flush());
                ExitCode::SUCCESS
            }
            Err(e) => {
                let _ = writeln!(io::stderr(), "enictl: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Command::Policies { pin_dir } = &cli.command {
        return match policies::read_pinned(pin_dir) {
            Ok(pods) => {
                let names = pod_names(&cli);
                let text = if cli.json {
                    let mut t = serde_json::to_string_pretty(&policies::to_json(&pods, &names))
                        .unwrap_or_default();
                    t.push('\n');
                    t
                } else {
                    policies::render(&pods, &names)
                };
                let mut stdout = io::stdout().lock();
                let _ = stdout
                    .write_all(text.as_bytes())
                    .and_then(|()| stdout.flush());
                ExitCode::SUCCESS
            }
            Err(e) => {
                let _ = writeln!(io::stderr(), "enictl: {e}");
                ExitCode::from(1)
            }
        };
    }
    match run(&cli) {
        Ok(text) => {
            let mut stdout = io::stdout().lock();
            // A closed pipe (`enictl ... | head`) is not an error worth reporting.
            let _ = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(err) => {
            let mut message = format!("enictl: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                let _ = write!(message, ": {cause}");
                source = cause.source();
            }
            let _ = writeln!(io::stderr(), "{message}");
            ExitCode::from(if err.is_unreachable() { 2 } else { 1 })
        }
    }
}

/// Pod names by address from the manager's allocations; empty when it does not answer
/// (the policy maps are read without it).
fn pod_names(cli: &Cli) -> std::collections::BTreeMap<std::net::Ipv4Addr, String> {
    let Ok(mut client) = Client::connect(&cli.socket, cli.timeout) else {
        return Default::default();
    };
    match client.call(&Request::List) {
        Ok(Response::Allocations(list)) => list
            .allocations
            .iter()
            .filter_map(|a| {
                a.pod
                    .as_ref()
                    .map(|p| (a.ip, format!("{}/{}", p.namespace, p.name)))
            })
            .collect(),
        _ => Default::default(),
    }
}

/// Asks the manager and renders its answer.
fn run(cli: &Cli) -> Result<String, ClientError> {
    let mut client = Client::connect(&cli.socket, cli.timeout)?;
    let request = match cli.command {
        Command::Status | Command::Pool | Command::Enis => Request::Status,
        Command::Allocations | Command::Services { .. } | Command::Policies { .. } => Request::List,
    };
    let response = client.call(&request)?;
    if cli.json {
        let mut text =
            serde_json::to_string_pretty(&response).map_err(|err| ClientError::Protocol {
                path: cli.socket.clone(),
                source: eni_rpc::FrameError::Json(err),
            })?;
        text.push('\n');
        return Ok(text);
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    match (&cli.command, response) {
        (Command::Status, Response::Status(status)) => Ok(render_status(&status)),
        (Command::Pool, Response::Status(status)) => Ok(render_pool(&status)),
        (Command::Enis, Response::Status(status)) => Ok(render_enis(&status)),
        (Command::Allocations, Response::Allocations(list)) => {
            Ok(render_allocations(&list.allocations, now_ms))
        }
        (_, other) => Err(ClientError::UnexpectedResponse {
            op: request.op(),
            expected: if matches!(request, Request::List) {
                "allocations"
            } else {
                "status"
            },
            got: other.kind(),
        }),
    }
}

/// Left-aligned columns separated by two spaces, with a header row.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `label: value` lines with the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let _ = writeln!(out, "{:<width$} {value}", format!("{key}:"));
    }
    out
}

fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

fn or_dash(value: Option<&str>) -> String {
    value.map_or_else(|| "-".to_owned(), str::to_owned)
}

fn age(now_ms: u64, then_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

fn pool_line(status: &Status) -> String {
    let pool = &status.pool;
    format!(
        "{} idle, {} allocated, {} total (low watermark {}, high watermark {})",
        pool.idle, pool.allocated, pool.total, pool.low_watermark, pool.high_watermark
    )
}

fn render_status(status: &Status) -> String {
    let node = &status.node;
    fields(&[
        (
            "Node",
            format!(
                "{} ({}, {}, {})",
                node.instance_id, node.instance_type, node.zone, node.provider
            ),
        ),
        (
            "Limits",
            format!(
                "{} pods, {} ENIs, {} IPv4 per ENI",
                node.max_pods, node.max_enis, node.ipv4_per_eni
            ),
        ),
        ("Pool", pool_line(status)),
        ("ENIs", status.pool.enis.len().to_string()),
        (
            "Degraded",
            status
                .degraded
                .as_deref()
                .map_or_else(|| "no".to_owned(), |why| format!("yes: {why}")),
        ),
        ("Cloud calls", status.cloud_calls.to_string()),
        ("Version", status.version.clone()),
    ])
}

fn eni_rows(enis: &[EniStatus]) -> String {
    let rows: Vec<Vec<String>> = enis
        .iter()
        .map(|eni| {
            vec![
                eni.eni_id.clone(),
                eni.mac.clone(),
                or_dash(eni.host_ifname.as_deref()),
                eni.device_index
                    .map_or_else(|| "-".to_owned(), |i| i.to_string()),
                eni.subnet_id.clone(),
                eni.status.clone(),
                format!("{}/{}", eni.used_ips(), eni.ips.len()),
                eni.exclusive_to
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), short_id),
            ]
        })
        .collect();
    table(
        &[
            "ENI",
            "MAC",
            "IFNAME",
            "INDEX",
            "SUBNET",
            "STATUS",
            "IPS",
            "EXCLUSIVE",
        ],
        &rows,
    )
}

fn render_pool(status: &Status) -> String {
    let mut out = fields(&[("Pool", pool_line(status))]);
    out.push('\n');
    if status.pool.enis.is_empty() {
        out.push_str("No ENIs.\n");
    } else {
        out.push_str(&eni_rows(&status.pool.enis));
    }
    out
}

fn render_enis(status: &Status) -> String {
    if status.pool.enis.is_empty() {
        return "No ENIs.\n".to_owned();
    }
    let mut out = eni_rows(&status.pool.enis);
    let ips: Vec<Vec<String>> = status
        .pool
        .enis
        .iter()
        .flat_map(|eni| {
            eni.ips.iter().map(|ip| {
                vec![
                    eni.eni_id.clone(),
                    ip.ip.to_string(),
                    ip.container_id
                        .as_deref()
                        .map_or_else(|| "-".to_owned(), short_id),
                    ip.pod.as_ref().map_or_else(
                        || "-".to_owned(),
                        |pod| format!("{}/{}", pod.namespace, pod.name),
                    ),
                ]
            })
        })
        .collect();
    if !ips.is_empty() {
        out.push('\n');
        out.push_str(&table(&["ENI", "IP", "CONTAINER", "POD"], &ips));
    }
    out
}

fn render_allocations(allocations: &[Allocation], now_ms: u64) -> String {
    if allocations.is_empty() {
        return "No allocations.\n".to_owned();
    }
    let rows: Vec<Vec<String>> = allocations
        .iter()
        .map(|a| {
            vec![
                short_id(&a.container_id),
                a.ifname.clone(),
                a.pod.as_ref().map_or_else(
                    || "-".to_owned(),
                    |pod| format!("{}/{}", pod.namespace, pod.name),
                ),
                format!("{}/{}", a.ip, a.prefix_len),
                if a.exclusive {
                    format!("{} (exclusive)", a.eni_id)
                } else {
                    a.eni_id.clone()
                },
                age(now_ms, a.allocated_at_ms),
            ]
        })
        .collect();
    table(&["CONTAINER", "IFNAME", "POD", "IP", "ENI", "AGE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_trims_trailing_space() {
        let out = table(
            &["A", "LONG HEADER", "C"],
            &[
                vec!["xxxxx".into(), "y".into(), "".into()],
                vec!["x".into(), "yy".into(), "z".into()],
            ],
        );
        assert_eq!(
            out,
            "A      LONG HEADER  C\nxxxxx  y\nx      yy           z\n"
        );
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(10_000, 10_000), "0s");
        assert_eq!(age(5_000, 10_000), "0s");
        assert_eq!(age(75_000, 0), "1m15s");
        assert_eq!(age(2 * 3_600_000 + 5 * 60_000, 0), "2h5m");
        assert_eq!(age(3 * 86_400_000 + 4 * 3_600_000, 0), "3d4h");
    }

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_timeout("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_timeout("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1s").is_err());
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("NaN").is_err());
    }

    #[test]
    fn container_ids_are_shortened_to_12() {
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }
}
