//! `RecordingMaps`: an in-memory [`DatapathMaps`] that plans exactly like the real maps and
//! records every map operation, for unit tests of callers (reconcilers) without root.
//! It holds both families' tables, as the real object does, and asserts, at every
//! operation, the invariants the eBPF reader relies on: every counted slot exists, every
//! slot in the active range holds an active backend, and a slot is of its service's family.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    error::BpfError,
    maps::{BeKey, SvcVal},
    service::{
        self, Backend, BackendState, DatapathMaps, IpFamily, MapOp, RawTables, ServiceEntry,
        ServiceKey, ServiceSpec,
    },
    UpsertOutcome,
};

/// A recording fake of the socket-LB maps (IPv4 and IPv6 tables).
#[derive(Debug, Default)]
pub struct RecordingMaps {
    services: BTreeMap<ServiceKey, SvcVal>,
    backends: BTreeMap<(IpFamily, BeKey), Backend>,
    ids: BTreeSet<u32>,
    /// Every map operation applied, in order.
    pub ops: Vec<MapOp>,
}

impl RecordingMaps {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of backend slots stored (all services, both families).
    pub fn backend_slots(&self) -> usize {
        self.backends.len()
    }

    /// The service (and its family) owning a service id.
    fn owner(&self, id: u32) -> Option<(&ServiceKey, &SvcVal)> {
        self.services.iter().find(|(_, s)| s.id == id)
    }
}

impl RawTables for RecordingMaps {
    fn get_service(&self, key: &ServiceKey) -> Result<Option<SvcVal>, BpfError> {
        Ok(self.services.get(key).copied())
    }
    fn get_backend(&self, family: IpFamily, key: &BeKey) -> Result<Option<Backend>, BpfError> {
        Ok(self.backends.get(&(family, *key)).copied())
    }
    fn all_services(&self) -> Result<Vec<(ServiceKey, SvcVal)>, BpfError> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn apply(&mut self, op: &MapOp) -> Result<(), BpfError> {
        match *op {
            MapOp::PutService(k, v) => {
                // The invariant the datapath relies on: every counted slot exists, in the
                // table of the service's family.
                for slot in 0..u32::from(v.backend_count) {
                    let b = self
                        .backends
                        .get(&(k.family(), BeKey { svc_id: v.id, slot }));
                    assert!(
                        b.is_some(),
                        "service {k} counts slot {slot} before it was written"
                    );
                    if slot < u32::from(v.active_count) {
                        assert_eq!(
                            b.map(|b| b.state),
                            Some(BackendState::Active),
                            "service {k}: slot {slot} in the active range is not active"
                        );
                    }
                }
                if let Some((other, _)) = self.owner(v.id) {
                    assert_eq!(*other, k, "service id {} used by two services", v.id);
                }
                self.services.insert(k, v);
            }
            MapOp::DeleteService(k) => {
                self.services.remove(&k);
            }
            MapOp::PutBackend(k, v) => {
                if let Some((key, s)) = self.owner(k.svc_id) {
                    assert_eq!(
                        key.family(),
                        IpFamily::of(v.ip),
                        "service {key}: slot {} written with a backend of the other family",
                        k.slot
                    );
                    assert!(
                        k.slot >= u32::from(s.active_count) || v.state == BackendState::Active,
                        "slot {} in the active range overwritten by a non-active backend",
                        k.slot
                    );
                }
                self.backends.insert((IpFamily::of(v.ip), k), v);
            }
            MapOp::DeleteBackend(family, k) => {
                if let Some((_, s)) = self.owner(k.svc_id) {
                    assert!(
                        k.slot >= u32::from(s.backend_count),
                        "slot {} deleted while still counted",
                        k.slot
                    );
                }
                self.backends.remove(&(family, k));
            }
        }
        self.ops.push(*op);
        Ok(())
    }
}

impl DatapathMaps for RecordingMaps {
    fn upsert_service(
        &mut self,
        key: ServiceKey,
        spec: &ServiceSpec,
    ) -> Result<UpsertOutcome, BpfError> {
        let mut ids = std::mem::take(&mut self.ids);
        let r = service::upsert(self, &mut ids, key, spec);
        self.ids = ids;
        r
    }

    fn delete_service(&mut self, key: ServiceKey) -> Result<bool, BpfError> {
        let mut ids = std::mem::take(&mut self.ids);
        let r = service::delete(self, &mut ids, key);
        self.ids = ids;
        r
    }

    fn list(&self) -> Result<Vec<ServiceEntry>, BpfError> {
        service::list(self)
    }
}
