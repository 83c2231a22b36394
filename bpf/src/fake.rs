//! `RecordingMaps`: an in-memory [`DatapathMaps`] that plans exactly like the real maps and
//! records every map operation, for unit tests of callers (reconcilers) without root.
//! It also asserts, at every operation, the invariants the eBPF reader relies on: every
//! counted slot exists and every slot in the active range holds an active backend.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    error::BpfError,
    maps::{BeKey, BeVal, SvcKey, SvcVal, BACKEND_ACTIVE},
    service::{self, DatapathMaps, MapOp, RawTables, ServiceEntry, ServiceKey, ServiceSpec},
    UpsertOutcome,
};

/// A recording fake of the socket-LB maps.
#[derive(Debug, Default)]
pub struct RecordingMaps {
    services: BTreeMap<SvcKey, SvcVal>,
    backends: BTreeMap<BeKey, BeVal>,
    ids: BTreeSet<u32>,
    /// Every map operation applied, in order.
    pub ops: Vec<MapOp>,
}

impl RecordingMaps {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of backend slots stored (all services).
    pub fn backend_slots(&self) -> usize {
        self.backends.len()
    }
}

impl RawTables for RecordingMaps {
    fn get_service(&self, key: &SvcKey) -> Result<Option<SvcVal>, BpfError> {
        Ok(self.services.get(key).copied())
    }
    fn get_backend(&self, key: &BeKey) -> Result<Option<BeVal>, BpfError> {
        Ok(self.backends.get(key).copied())
    }
    fn all_services(&self) -> Result<Vec<(SvcKey, SvcVal)>, BpfError> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn apply(&mut self, op: &MapOp) -> Result<(), BpfError> {
        match *op {
            MapOp::PutService(k, v) => {
                // The invariant the datapath relies on: every counted slot exists.
                for slot in 0..u32::from(v.backend_count) {
                    let b = self.backends.get(&BeKey { svc_id: v.id, slot });
                    assert!(
                        b.is_some(),
                        "service {k:?} counts slot {slot} before it was written"
                    );
                    if slot < u32::from(v.active_count) {
                        assert_eq!(
                            b.map(|b| b.state),
                            Some(BACKEND_ACTIVE),
                            "service {k:?}: slot {slot} in the active range is not active"
                        );
                    }
                }
                self.services.insert(k, v);
            }
            MapOp::DeleteService(k) => {
                self.services.remove(&k);
            }
            MapOp::PutBackend(k, v) => {
                if let Some(s) = self.services.values().find(|s| s.id == k.svc_id) {
                    assert!(
                        k.slot >= u32::from(s.active_count) || v.state == BACKEND_ACTIVE,
                        "slot {} in the active range overwritten by a non-active backend",
                        k.slot
                    );
                }
                self.backends.insert(k, v);
            }
            MapOp::DeleteBackend(k) => {
                if let Some(s) = self.services.values().find(|s| s.id == k.svc_id) {
                    assert!(
                        k.slot >= u32::from(s.backend_count),
                        "slot {} deleted while still counted",
                        k.slot
                    );
                }
                self.backends.remove(&k);
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
