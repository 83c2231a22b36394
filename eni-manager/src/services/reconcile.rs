//! desired table -> diff against what the maps hold -> incremental map updates.
//! Only services whose spec differs are upserted (and `upsert_service` itself writes only
//! the slots that differ); services no longer wanted are deleted. Nothing is rewritten.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

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
    pub removed_backends: Vec<(ServiceKey, SocketAddrV4)>,
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
    let mut r = ApplyReport::default();
    for op in ops {
        match op {
            Op::Delete(k) => {
                let before: Vec<SocketAddrV4> = current
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
    }
    r
}

/// Reads the maps, diffs against `desired`, applies the difference.
pub fn reconcile<M: DatapathMaps + ?Sized>(
    maps: &mut M,
    desired: &BTreeMap<ServiceKey, ServiceSpec>,
) -> Result<ApplyReport, BpfError> {
    let now = current(maps)?;
    let ops = diff(desired, &now);
    Ok(apply(maps, &ops, &now))
}
