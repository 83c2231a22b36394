//! desired table -> diff against what the maps hold -> incremental map updates.
//! Only services whose spec differs are upserted (and `upsert_service` itself writes only
//! the slots that differ); services no longer wanted are deleted. Nothing is rewritten.
//!
//! A long-running source uses a [`Reconciler`]: it reads the maps once (adopting what a
//! previous manager left pinned) and afterwards diffs against the table it applied, kept
//! in memory, so a pass over 10,000 unchanged services costs no syscall at all.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use eni_bpf::{BpfError, DatapathMaps, ServiceKey, ServiceSpec};
use tracing::{info, warn};

use super::desired::normalize;

/// One change to the datapath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or change a service.
    Upsert(ServiceKey, ServiceSpec),
    /// Remove a service.
    Delete(ServiceKey),
}

/// The services the maps hold now, in canonical form.
pub fn current<M: DatapathMaps + ?Sized>(
    maps: &M,
) -> Result<BTreeMap<ServiceKey, ServiceSpec>, BpfError> {
    Ok(maps
        .list()?
        .into_iter()
        .map(|e| (e.key, normalize(e.spec)))
        .collect())
}

/// What must change to go from `current` to `desired`: deletes first (they free ids and
/// slots), then upserts, each in frontend order. Equal specs give no op.
pub fn diff(
    desired: &BTreeMap<ServiceKey, ServiceSpec>,
    current: &BTreeMap<ServiceKey, ServiceSpec>,
) -> Vec<Op> {
    let deletes = current
        .keys()
        .filter(|k| !desired.contains_key(k))
        .map(|k| Op::Delete(*k));
    let upserts = desired.iter().filter_map(|(k, want)| {
        let want = normalize(want.clone());
        let have = current.get(k).map(|c| normalize(c.clone()));
        (have.as_ref() != Some(&want)).then_some(Op::Upsert(*k, want))
    });
    deletes.chain(upserts).collect()
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Services created or changed.
    pub upserted: usize,
    /// Services deleted.
    pub deleted: usize,
    /// Map writes and deletes done (0 when nothing differed).
    pub map_ops: usize,
    /// Backends removed from a service (or with it): connected UDP sockets aimed at them
    /// should be terminated.
    pub removed_backends: Vec<(ServiceKey, SocketAddr)>,
    /// Services that could not be applied (each logged); the others were.
    pub errors: Vec<String>,
}

/// Applies `ops` one by one; a failing op is recorded and the rest still applied.
/// `current` is what `ops` were diffed against (for the backends of deleted services).
pub fn apply<M: DatapathMaps + ?Sized>(
    maps: &mut M,
    ops: &[Op],
    current: &BTreeMap<ServiceKey, ServiceSpec>,
) -> ApplyReport {
    apply_tracked(maps, ops, current, |_, _| {})
}

/// [`apply`], calling `done(op, succeeded)` after each op.
fn apply_tracked<M: DatapathMaps + ?Sized>(
    maps: &mut M,
    ops: &[Op],
    current: &BTreeMap<ServiceKey, ServiceSpec>,
    mut done: impl FnMut(&Op, bool),
) -> ApplyReport {
    let mut r = ApplyReport::default();
    for op in ops {
        let errors_before = r.errors.len();
        match op {
            Op::Delete(k) => {
                let before: Vec<SocketAddr> = current
                    .get(k)
                    .map(|s| s.backends.iter().map(|b| b.addr()).collect())
                    .unwrap_or_default();
                match maps.delete_service(*k) {
                    Ok(_) => {
                        r.deleted += 1;
                        r.map_ops += 1 + before.len();
                        r.removed_backends
                            .extend(before.into_iter().map(|b| (*k, b)));
                        info!(frontend = %k, "service removed");
                    }
                    Err(e) => {
                        warn!(frontend = %k, error = %e, "cannot remove service");
                        r.errors.push(format!("delete {k}: {e}"));
                    }
                }
            }
            Op::Upsert(k, spec) => match maps.upsert_service(*k, spec) {
                Ok(out) => {
                    r.upserted += 1;
                    r.map_ops += out.map_ops;
                    r.removed_backends
                        .extend(out.removed_backends.iter().map(|b| (*k, *b)));
                    info!(
                        frontend = %k,
                        id = out.id,
                        created = out.created,
                        backends = spec.backends.len(),
                        map_ops = out.map_ops,
                        "service applied"
                    );
                }
                Err(e) => {
                    warn!(frontend = %k, error = %e, "cannot apply service");
                    r.errors.push(format!("upsert {k}: {e}"));
                }
            },
        }
        done(op, r.errors.len() == errors_before);
    }
    r
}

/// Reconciles against the table it last applied, kept in memory, instead of reading every
/// map entry back on each pass. The first pass (and the first after any failed write,
/// when what the maps hold is no longer certain) reads the maps. Only this process writes
/// the Service maps, so between passes the copy stays exact.
#[derive(Debug, Default)]
pub struct Reconciler {
    applied: Option<BTreeMap<ServiceKey, ServiceSpec>>,
}

impl Reconciler {
    /// A reconciler that will read the maps on its first pass.
    pub fn new() -> Self {
        Self::default()
    }

    /// Diffs `desired` against what was applied (read from the maps on the first pass),
    /// applies the difference and records it.
    pub fn reconcile<M: DatapathMaps + ?Sized>(
        &mut self,
        maps: &mut M,
        desired: &BTreeMap<ServiceKey, ServiceSpec>,
    ) -> Result<ApplyReport, BpfError> {
        let mut applied = match self.applied.take() {
            Some(a) => a,
            None => current(maps)?,
        };
        let ops = diff(desired, &applied);
        let mut failed = false;
        let mut changes: Vec<(ServiceKey, Option<ServiceSpec>)> = Vec::with_capacity(ops.len());
        let report = apply_tracked(maps, &ops, &applied, |op, ok| {
            failed |= !ok;
            match op {
                Op::Upsert(k, spec) if ok => changes.push((*k, Some(spec.clone()))),
                Op::Delete(k) if ok => changes.push((*k, None)),
                _ => {}
            }
        });
        if failed {
            // Re-read on the next pass rather than guess what a failed write left.
            return Ok(report);
        }
        for (k, spec) in changes {
            match spec {
                Some(spec) => applied.insert(k, spec),
                None => applied.remove(&k),
            };
        }
        self.applied = Some(applied);
        Ok(report)
    }

    /// Applies only `changes` (frontend -> wanted spec, `None`: not wanted), for a source
    /// that knows what changed ([`super::incremental::DesiredCache`]): the cost depends on
    /// the size of the change, not of the table. Reads the maps first if nothing is held
    /// in memory yet.
    pub fn reconcile_changes<M: DatapathMaps + ?Sized>(
        &mut self,
        maps: &mut M,
        changes: &BTreeMap<ServiceKey, Option<ServiceSpec>>,
    ) -> Result<ApplyReport, BpfError> {
        let mut applied = match self.applied.take() {
            Some(a) => a,
            None => current(maps)?,
        };
        let want: BTreeMap<ServiceKey, ServiceSpec> = changes
            .iter()
            .filter_map(|(k, s)| s.clone().map(|s| (*k, s)))
            .collect();
        let have: BTreeMap<ServiceKey, ServiceSpec> = changes
            .keys()
            .filter_map(|k| applied.get(k).map(|s| (*k, s.clone())))
            .collect();
        let ops = diff(&want, &have);
        let mut failed = false;
        let report = apply_tracked(maps, &ops, &have, |op, ok| {
            failed |= !ok;
            match op {
                Op::Upsert(k, spec) if ok => {
                    applied.insert(*k, spec.clone());
                }
                Op::Delete(k) if ok => {
                    applied.remove(k);
                }
                _ => {}
            }
        });
        if !failed {
            self.applied = Some(applied);
        }
        Ok(report)
    }

    /// Forgets the in-memory table: the next pass reads the maps again.
    pub fn invalidate(&mut self) {
        self.applied = None;
    }
}

/// Reads the maps, diffs against `desired`, applies the difference. One-shot; a
/// long-running source keeps a [`Reconciler`] instead.
pub fn reconcile<M: DatapathMaps + ?Sized>(
    maps: &mut M,
    desired: &BTreeMap<ServiceKey, ServiceSpec>,
) -> Result<ApplyReport, BpfError> {
    let now = current(maps)?;
    let ops = diff(desired, &now);
    Ok(apply(maps, &ops, &now))
}

/// What one reconcile of the per-packet frontends did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalReport {
    /// Frontends newly served or whose policy changed.
    pub set: usize,
    /// Frontends no longer served per packet.
    pub removed: usize,
    /// Frontends that could not be written (each logged); the others were.
    pub errors: Vec<String>,
}

/// Makes the per-packet frontends table equal `want`: removes what is not wanted, then sets
/// what is missing or differs; writes nothing when they are equal. Run it after
/// [`reconcile`] so a frontend's backends exist before it is served per packet.
pub fn reconcile_external<M: eni_bpf::ExternalFrontends + ?Sized>(
    maps: &mut M,
    want: &super::desired::ExternalTable,
) -> Result<ExternalReport, BpfError> {
    let have: super::desired::ExternalTable = maps.external_frontends()?.into_iter().collect();
    let mut r = ExternalReport::default();
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        match maps.remove_external(*k) {
            Ok(_) => {
                r.removed += 1;
                info!(frontend = %k, "no longer served per packet");
            }
            Err(e) => {
                warn!(frontend = %k, error = %e, "cannot remove per-packet frontend");
                r.errors.push(format!("remove {k}: {e}"));
            }
        }
    }
    for (k, policy) in want.iter().filter(|(k, p)| have.get(k) != Some(p)) {
        match maps.set_external(*k, *policy) {
            Ok(_) => {
                r.set += 1;
                info!(frontend = %k, ?policy, "served per packet");
            }
            Err(e) => {
                warn!(frontend = %k, error = %e, "cannot set per-packet frontend");
                r.errors.push(format!("set {k}: {e}"));
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod external_tests {
    use super::*;
    use eni_bpf::{Protocol, TrafficPolicy};
    use std::net::Ipv4Addr;

    fn k(last: u8) -> ServiceKey {
        ServiceKey {
            vip: Ipv4Addr::new(172, 16, 0, last).into(),
            port: 30080,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn external_reconcile_sets_changes_removes_and_is_idempotent() {
        let mut maps: super::super::desired::ExternalTable = [
            (k(1), TrafficPolicy::Cluster),
            (k(2), TrafficPolicy::Cluster),
        ]
        .into_iter()
        .collect();
        let want: super::super::desired::ExternalTable =
            [(k(2), TrafficPolicy::Local), (k(3), TrafficPolicy::Cluster)]
                .into_iter()
                .collect();
        let r = reconcile_external(&mut maps, &want).expect("reconcile");
        assert_eq!((r.set, r.removed, r.errors.len()), (2, 1, 0));
        assert_eq!(maps, want);
        let again = reconcile_external(&mut maps, &want).expect("again");
        assert_eq!(again, ExternalReport::default());
    }
}
