//! `enictl services`: the socket load balancer's frontends and backends, read from the
//! pinned maps themselves (not from the manager), like `cilium service list`. Needs the
//! rights to open the pins (root) and only reads: it never writes a map.

use std::fmt::Write as _;
use std::path::Path;

use eni_bpf::{BackendState, Protocol, ServiceEntry};

/// Every service with its backends, read from the maps pinned in `pin_dir`, by id.
pub fn read_pinned(pin_dir: &Path) -> Result<Vec<ServiceEntry>, String> {
    let mut out = eni_bpf::read_pinned(pin_dir).map_err(|e| {
        // The error's causes carry the OS's answer: show the whole chain.
        let mut why = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            why.push_str(&format!(": {c}"));
            cause = c.source();
        }
        format!(
            "cannot read the Service maps pinned in {}: {why} (is services.enabled on, and are you root?)",
            pin_dir.display()
        )
    })?;
    out.sort_by_key(|e| (e.id, e.key));
    Ok(out)
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

fn state(s: BackendState) -> &'static str {
    match s {
        BackendState::Active => "active",
        BackendState::Terminating => "terminating",
    }
}

fn affinity(e: &ServiceEntry) -> String {
    e.spec
        .affinity_timeout
        .map_or_else(|| "-".to_owned(), |t| format!("ClientIP {}s", t.as_secs()))
}

/// The table: one row per backend, the service columns only on its first row.
pub fn render(entries: &[ServiceEntry]) -> String {
    if entries.is_empty() {
        return "No services.\n".to_owned();
    }
    let mut sorted: Vec<&ServiceEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| (e.id, e.key));
    let mut rows: Vec<[String; 4]> = Vec::new();
    for e in sorted {
        let head = [
            e.id.to_string(),
            // `[v6]:port` for an IPv6 frontend, like a socket address.
            format!(
                "{}/{}",
                std::net::SocketAddr::new(e.key.vip, e.key.port),
                proto(e.key.protocol)
            ),
            affinity(e),
        ];
        if e.spec.backends.is_empty() {
            rows.push([
                head[0].clone(),
                head[1].clone(),
                head[2].clone(),
                "(none: connections refused)".into(),
            ]);
        }
        for (i, b) in e.spec.backends.iter().enumerate() {
            let be = format!(
                "{} => {}/{} ({})",
                i + 1,
                b.addr(),
                proto(e.key.protocol),
                state(b.state)
            );
            if i == 0 {
                rows.push([head[0].clone(), head[1].clone(), head[2].clone(), be]);
            } else {
                rows.push([String::new(), String::new(), String::new(), be]);
            }
        }
    }
    let header = ["ID", "FRONTEND", "AFFINITY", "BACKENDS"];
    let mut w = header.map(str::len);
    for r in &rows {
        for (w, c) in w.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_owned);
    for r in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// The JSON form: a list of services with their backends.
pub fn to_json(entries: &[ServiceEntry]) -> serde_json::Value {
    let mut sorted: Vec<&ServiceEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| (e.id, e.key));
    serde_json::Value::Array(
        sorted
            .into_iter()
            .map(|e| {
                serde_json::json!({
                    "id": e.id,
                    "frontend": {
                        "ip": e.key.vip.to_string(),
                        "port": e.key.port,
                        "protocol": proto(e.key.protocol),
                    },
                    "affinity_timeout_s": e.spec.affinity_timeout.map(|t| t.as_secs()),
                    "backends": e.spec.backends.iter().map(|b| serde_json::json!({
                        "ip": b.ip.to_string(),
                        "port": b.port,
                        "state": state(b.state),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use eni_bpf::fake::RecordingMaps;
    use eni_bpf::{Backend, DatapathMaps, ServiceKey, ServiceSpec};
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::time::Duration;

    #[test]
    fn renders_what_the_maps_hold() {
        let mut m = RecordingMaps::new();
        let a = |l| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, l), 8080);
        m.upsert_service(
            ServiceKey {
                vip: Ipv4Addr::new(10, 96, 0, 10).into(),
                port: 80,
                protocol: Protocol::Tcp,
            },
            &ServiceSpec {
                backends: vec![Backend::active(a(1)), Backend::terminating(a(2))],
                affinity_timeout: Some(Duration::from_secs(10_800)),
            },
        )
        .unwrap();
        m.upsert_service(
            ServiceKey {
                vip: Ipv4Addr::new(10, 96, 0, 11).into(),
                port: 53,
                protocol: Protocol::Udp,
            },
            &ServiceSpec::default(),
        )
        .unwrap();
        let l = m.list().unwrap();
        let want = "ID  FRONTEND           AFFINITY         BACKENDS\n\
            1   10.96.0.10:80/TCP  ClientIP 10800s  1 => 10.0.0.1:8080/TCP (active)\n\
            \x20                                       2 => 10.0.0.2:8080/TCP (terminating)\n\
            2   10.96.0.11:53/UDP  -                (none: connections refused)\n";
        assert_eq!(render(&l), want);
        let j = to_json(&l);
        assert_eq!(j[0]["backends"][1]["state"], "terminating");
        assert_eq!(j[0]["affinity_timeout_s"], 10_800);
        assert_eq!(render(&[]), "No services.\n");
    }

    #[test]
    fn renders_ipv6_frontends_and_backends_in_brackets() {
        let mut m = RecordingMaps::new();
        let vip: std::net::Ipv6Addr = "fd00:96::10".parse().unwrap();
        let be: std::net::SocketAddr = "[fd00:200::2]:8080".parse().unwrap();
        m.upsert_service(
            ServiceKey {
                vip: vip.into(),
                port: 80,
                protocol: Protocol::Tcp,
            },
            &ServiceSpec {
                backends: vec![Backend::active(be)],
                affinity_timeout: None,
            },
        )
        .unwrap();
        let text = render(&m.list().unwrap());
        assert!(
            text.contains("[fd00:96::10]:80/TCP  -         1 => [fd00:200::2]:8080/TCP (active)"),
            "{text}"
        );
        let j = to_json(&m.list().unwrap());
        assert_eq!(j[0]["frontend"]["ip"], "fd00:96::10", "{j}");
    }
}
