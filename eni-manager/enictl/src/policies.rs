//! `enictl policies`: per pod, the NetworkPolicy rules in force and the drop counters, read
//! from the pinned policy maps themselves (not from the manager). Pod names come from the
//! manager's allocation list when it answers; the maps only know addresses. Needs the
//! rights to open the pins (root) and only reads: it never writes a map.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use eni_bpf::maps::{PolRuleVal, POL_DIR_INGRESS, POL_F_EGRESS, POL_F_INGRESS};
use eni_bpf::policy::PodPolicyState;
use eni_bpf::PolicyDatapath;

/// Every pod with a policy entry, read from the maps pinned in `pin_dir`, by address.
pub fn read_pinned(pin_dir: &Path) -> Result<Vec<PodPolicyState>, String> {
    let chain = |e: &dyn std::error::Error| {
        let mut why = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            why.push_str(&format!(": {c}"));
            cause = c.source();
        }
        format!(
            "cannot read the policy maps pinned in {}: {why} (is policy enforcement on, and are you root?)",
            pin_dir.display()
        )
    };
    let dp = PolicyDatapath::open_pinned(pin_dir).map_err(|e| chain(&e))?;
    dp.list().map_err(|e| chain(&e))
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        n => format!("proto-{n}"),
    }
}

/// What one rule entry allows, e.g. `TCP/80,UDP/5353-5360`, `any` or `deny`.
pub fn allowed(v: &PolRuleVal) -> String {
    if v.any != 0 {
        return "any".into();
    }
    let n = usize::from(v.count).min(v.ranges.len());
    if n == 0 {
        return "deny".into();
    }
    v.ranges[..n]
        .iter()
        .map(|r| {
            let p = proto_name(r.proto);
            if r.start == 0 && r.end == u16::MAX {
                format!("{p}/*")
            } else if r.start == r.end {
                format!("{p}/{}", r.start)
            } else {
                format!("{p}/{}-{}", r.start, r.end)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn mode(s: &PodPolicyState, flag: u8) -> &'static str {
    if s.pod.flags & flag != 0 {
        "isolated"
    } else {
        "open"
    }
}

fn dir_name(d: u8) -> &'static str {
    if d == POL_DIR_INGRESS {
        "ingress"
    } else {
        "egress"
    }
}

/// The table: one row per pod, then its rules indented below it. `names` maps addresses
/// to `namespace/name` where known.
pub fn render(pods: &[PodPolicyState], names: &BTreeMap<Ipv4Addr, String>) -> String {
    if pods.is_empty() {
        return "No pods with policy entries.\n".to_owned();
    }
    let mut out = String::new();
    for s in pods {
        let st = &s.stats;
        let _ = writeln!(
            out,
            "{}  {}  ingress {}  egress {}  flows in/out {}/{}  drops in/out/spoofed/other {}/{}/{}/{}",
            names.get(&s.ip).map_or("-", String::as_str),
            s.ip,
            mode(s, POL_F_INGRESS),
            mode(s, POL_F_EGRESS),
            st.new_ingress,
            st.new_egress,
            st.drop_ingress,
            st.drop_egress,
            st.drop_spoofed,
            st.drop_other,
        );
        for (flag, dir) in [(POL_F_INGRESS, 0u8), (POL_F_EGRESS, 1u8)] {
            if s.pod.flags & flag == 0 {
                continue;
            }
            let rules: Vec<_> = s.rules.iter().filter(|(d, _, _)| *d == dir).collect();
            if rules.is_empty() {
                let _ = writeln!(out, "    {:<7}  (none: default deny)", dir_name(dir));
            }
            for (d, net, v) in rules {
                let _ = writeln!(
                    out,
                    "    {:<7}  {:<18}  {}",
                    dir_name(*d),
                    net.to_string(),
                    allowed(v)
                );
            }
        }
    }
    out
}

/// The JSON form: one object per pod.
pub fn to_json(pods: &[PodPolicyState], names: &BTreeMap<Ipv4Addr, String>) -> serde_json::Value {
    serde_json::Value::Array(
        pods.iter()
            .map(|s| {
                let rules: Vec<serde_json::Value> = s
                    .rules
                    .iter()
                    .map(|(d, net, v)| {
                        serde_json::json!({
                            "direction": dir_name(*d),
                            "cidr": net.to_string(),
                            "allowed": allowed(v),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "pod": names.get(&s.ip),
                    "ip": s.ip.to_string(),
                    "ingress": mode(s, POL_F_INGRESS),
                    "egress": mode(s, POL_F_EGRESS),
                    "revision": s.pod.rev,
                    "rules": rules,
                    "counters": {
                        "new_ingress": s.stats.new_ingress,
                        "new_egress": s.stats.new_egress,
                        "drop_ingress": s.stats.drop_ingress,
                        "drop_egress": s.stats.drop_egress,
                        "drop_spoofed": s.stats.drop_spoofed,
                        "drop_other": s.stats.drop_other,
                    },
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use eni_bpf::maps::{PolPodVal, PolPortRange, PolStats};

    fn state() -> PodPolicyState {
        let mut v = PolRuleVal {
            count: 2,
            ..PolRuleVal::default()
        };
        v.ranges[0] = PolPortRange {
            start: 80,
            end: 80,
            proto: 6,
            pad: [0; 3],
        };
        v.ranges[1] = PolPortRange {
            start: 30001,
            end: 30005,
            proto: 17,
            pad: [0; 3],
        };
        PodPolicyState {
            ip: Ipv4Addr::new(10, 0, 0, 5),
            pod: PolPodVal {
                rev: 7,
                slot: 1,
                flags: POL_F_INGRESS | POL_F_EGRESS,
                pad: 0,
            },
            rules: vec![
                (0, "10.0.0.0/8".parse().expect("net"), v),
                (
                    0,
                    "10.1.0.0/16".parse().expect("net"),
                    PolRuleVal::default(),
                ),
            ],
            stats: PolStats {
                drop_ingress: 3,
                drop_spoofed: 1,
                ..PolStats::default()
            },
        }
    }

    #[test]
    fn renders_rules_modes_and_counters() {
        let names = BTreeMap::from([(Ipv4Addr::new(10, 0, 0, 5), "prod/web".to_owned())]);
        let out = render(&[state()], &names);
        assert_eq!(
            out,
            "prod/web  10.0.0.5  ingress isolated  egress isolated  flows in/out 0/0  drops in/out/spoofed/other 3/0/1/0\n\
             \x20   ingress  10.0.0.0/8          TCP/80,UDP/30001-30005\n\
             \x20   ingress  10.1.0.0/16         deny\n\
             \x20   egress   (none: default deny)\n"
        );
        assert_eq!(render(&[], &names), "No pods with policy entries.\n");
        let json = to_json(&[state()], &BTreeMap::new());
        assert_eq!(json[0]["pod"], serde_json::Value::Null);
        assert_eq!(json[0]["rules"][0]["allowed"], "TCP/80,UDP/30001-30005");
        assert_eq!(json[0]["counters"]["drop_spoofed"], 1);
    }

    #[test]
    fn allowed_covers_any_and_protocol_wide_ranges() {
        let any = PolRuleVal {
            any: 1,
            ..PolRuleVal::default()
        };
        assert_eq!(allowed(&any), "any");
        let mut wide = PolRuleVal {
            count: 1,
            ..PolRuleVal::default()
        };
        wide.ranges[0] = PolPortRange {
            start: 0,
            end: u16::MAX,
            proto: 132,
            pad: [0; 3],
        };
        assert_eq!(allowed(&wide), "SCTP/*");
    }
}
