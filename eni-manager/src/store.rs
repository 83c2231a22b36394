//! The durable store: a snapshot of the pool model plus a journal of events since it.
//!
//! Layout of the state directory:
//! - `snapshot.json`: the model at some point, written atomically (temporary file, fsync,
//!   rename, fsync of the directory).
//! - `journal`: records appended after the snapshot, each `[len u32 LE][crc32 u32 LE][json]`,
//!   in a file preallocated with zeros so that a sync is a data-only `fdatasync`. Replay stops
//!   at the first zero length or bad checksum (a torn tail after a crash) and continues writing
//!   there.
//!
//! `append` returns only after the records are on disk. The store knows nothing about what the
//! events mean beyond `PoolState::apply`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::pool::state::{Event, PoolState};

/// Journal growth step.
const SEGMENT: u64 = 4 << 20;
/// Compact after this many records.
const COMPACT_AFTER: usize = 20_000;
/// Largest record accepted.
const MAX_RECORD: u32 = 1 << 20;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("state store {path}: {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot cannot be read.
    #[error("state store {path}: the snapshot is not valid: {message}")]
    BadSnapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A journaled event contradicts the model (the journal is from another node, or a bug).
    #[error("state store {path}: record {index} does not apply: {message}")]
    Inconsistent {
        /// The journal.
        path: PathBuf,
        /// Record number.
        index: usize,
        /// Why.
        message: String,
    },
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// The open store.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    journal: File,
    offset: u64,
    capacity: u64,
    records: usize,
}

/// What `Store::open` found.
#[derive(Debug)]
pub struct Opened {
    /// The store, positioned after the last good record.
    pub store: Store,
    /// The model: snapshot plus journal.
    pub state: PoolState,
    /// Records replayed from the journal.
    pub replayed: usize,
    /// Bytes of a torn or corrupt tail that were ignored.
    pub discarded_tail: bool,
}

impl Store {
    /// The model the store in `dir` holds, read without changing anything (a missing
    /// store is an empty model; a torn tail is ignored as [`open`](Self::open) would).
    /// For a look before the pool opens the store, e.g. to serve the pods' host ports
    /// while the manager starts; never while the pool runs.
    pub fn read_state(dir: &Path) -> Result<PoolState, StoreError> {
        let mut state = read_snapshot(dir)?;
        let jpath = dir.join("journal");
        let bytes = match std::fs::read(&jpath) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
            Err(e) => return Err(io(&jpath, "read journal")(e)),
        };
        replay(&jpath, &bytes, &mut state)?;
        Ok(state)
    }

    /// Opens (creating if needed) the store in `dir` and replays it.
    pub fn open(dir: &Path) -> Result<Opened, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir, "create directory"))?;
        restrict(dir);
        let mut state = read_snapshot(dir)?;
        let jpath = dir.join("journal");
        let mut journal = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&jpath)
            .map_err(io(&jpath, "open journal"))?;
        let mut bytes = Vec::new();
        journal
            .read_to_end(&mut bytes)
            .map_err(io(&jpath, "read journal"))?;
        let (offset, replayed, discarded_tail) = replay(&jpath, &bytes, &mut state)?;
        if discarded_tail {
            // Zero the rest so a later replay stops at the same place.
            let zeros = vec![0u8; bytes.len() - offset];
            journal
                .seek(SeekFrom::Start(offset as u64))
                .map_err(io(&jpath, "seek journal"))?;
            journal
                .write_all(&zeros)
                .map_err(io(&jpath, "clear torn tail"))?;
            journal.sync_data().map_err(io(&jpath, "sync journal"))?;
        }
        let capacity = bytes.len() as u64;
        let mut store = Store {
            dir: dir.to_path_buf(),
            journal,
            offset: offset as u64,
            capacity,
            records: replayed,
        };
        store.ensure_room(0)?;
        Ok(Opened {
            store,
            state,
            replayed,
            discarded_tail,
        })
    }

    fn jpath(&self) -> PathBuf {
        self.dir.join("journal")
    }

    fn ensure_room(&mut self, need: u64) -> Result<(), StoreError> {
        if self.offset + need + 8 <= self.capacity {
            return Ok(());
        }
        let jpath = self.jpath();
        let mut new_cap = self.capacity.max(SEGMENT);
        while self.offset + need + 8 > new_cap {
            new_cap += SEGMENT;
        }
        // Write real zeros (not a sparse extension) so later syncs touch data only.
        self.journal
            .seek(SeekFrom::Start(self.capacity))
            .map_err(io(&jpath, "seek journal"))?;
        let zeros = vec![0u8; (new_cap - self.capacity) as usize];
        self.journal
            .write_all(&zeros)
            .map_err(io(&jpath, "grow journal"))?;
        self.journal
            .sync_all()
            .map_err(io(&jpath, "sync journal"))?;
        self.capacity = new_cap;
        Ok(())
    }

    /// Appends events and returns once they are on disk. Nothing is written if `events` is
    /// empty.
    pub fn append(&mut self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(256 * events.len());
        for e in events {
            let body = serde_json::to_vec(e).expect("events always serialize");
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            buf.extend_from_slice(&body);
        }
        self.ensure_room(buf.len() as u64)?;
        let jpath = self.jpath();
        self.journal
            .seek(SeekFrom::Start(self.offset))
            .map_err(io(&jpath, "seek journal"))?;
        self.journal
            .write_all(&buf)
            .map_err(io(&jpath, "append to journal"))?;
        self.journal
            .sync_data()
            .map_err(io(&jpath, "sync journal"))?;
        self.offset += buf.len() as u64;
        self.records += events.len();
        Ok(())
    }

    /// Whether the journal is long enough to be worth compacting.
    pub fn wants_compaction(&self) -> bool {
        self.records >= COMPACT_AFTER
    }

    /// Writes `state` as the new snapshot and empties the journal.
    pub fn compact(&mut self, state: &PoolState) -> Result<(), StoreError> {
        let snap = self.dir.join("snapshot.json");
        let tmp = self.dir.join("snapshot.json.tmp");
        {
            let mut f = File::create(&tmp).map_err(io(&tmp, "create snapshot"))?;
            f.write_all(&serde_json::to_vec(state).expect("state serializes"))
                .map_err(io(&tmp, "write snapshot"))?;
            f.sync_all().map_err(io(&tmp, "sync snapshot"))?;
        }
        std::fs::rename(&tmp, &snap).map_err(io(&snap, "install snapshot"))?;
        sync_dir(&self.dir)?;
        // The snapshot now holds every journaled event: start the journal afresh.
        let jpath = self.jpath();
        let fresh = self.dir.join("journal.new");
        {
            let mut f = File::create(&fresh).map_err(io(&fresh, "create journal"))?;
            f.write_all(&vec![0u8; SEGMENT as usize])
                .map_err(io(&fresh, "fill journal"))?;
            f.sync_all().map_err(io(&fresh, "sync journal"))?;
        }
        std::fs::rename(&fresh, &jpath).map_err(io(&jpath, "install journal"))?;
        sync_dir(&self.dir)?;
        self.journal = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&jpath)
            .map_err(io(&jpath, "open journal"))?;
        self.offset = 0;
        self.capacity = SEGMENT;
        self.records = 0;
        Ok(())
    }
}

fn read_snapshot(dir: &Path) -> Result<PoolState, StoreError> {
    let snap_path = dir.join("snapshot.json");
    if !snap_path.exists() {
        return Ok(PoolState::default());
    }
    let bytes = std::fs::read(&snap_path).map_err(io(&snap_path, "read snapshot"))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::BadSnapshot {
        path: snap_path.clone(),
        message: e.to_string(),
    })
}

/// Applies the journal's good records to `state`: returns the offset after the last one,
/// how many there were, and whether a torn or corrupt tail follows.
fn replay(
    jpath: &Path,
    bytes: &[u8],
    state: &mut PoolState,
) -> Result<(usize, usize, bool), StoreError> {
    let mut offset = 0usize;
    let mut replayed = 0usize;
    let mut discarded_tail = false;
    while offset + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
        if len == 0 {
            break;
        }
        let crc = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().expect("4 bytes"));
        let end = offset + 8 + len as usize;
        if len > MAX_RECORD || end > bytes.len() {
            discarded_tail = true;
            break;
        }
        let body = &bytes[offset + 8..end];
        if crc32fast::hash(body) != crc {
            discarded_tail = true;
            break;
        }
        let event: Event = match serde_json::from_slice(body) {
            Ok(e) => e,
            Err(_) => {
                discarded_tail = true;
                break;
            }
        };
        state.apply(&event).map_err(|e| StoreError::Inconsistent {
            path: jpath.to_path_buf(),
            index: replayed,
            message: e.0,
        })?;
        replayed += 1;
        offset = end;
    }
    Ok((offset, replayed, discarded_tail))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "sync directory"))
}

fn restrict(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::state::{AllocKey, AllocRecord, EniKind, EniPhase, EniRecord};

    fn eni() -> Event {
        Event::EniReady(EniRecord {
            id: "eni-1".into(),
            mac: "00:16:3e:00:00:01".into(),
            kind: EniKind::Shared,
            phase: EniPhase::Ready,
            subnet_id: "vsw-1".into(),
            cidr: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.253".parse().unwrap(),
            primary_ip: "10.0.0.100".parse().unwrap(),
            device_index: Some(1),
            attachment_id: None,
            host_ifname: None,
            route_table: 1001,
            ips: (1..=9)
                .map(|i| format!("10.0.0.{i}").parse().unwrap())
                .collect(),
            prefixes: Default::default(),
        })
    }

    fn alloc(i: u32) -> Event {
        Event::Allocated(AllocRecord {
            key: AllocKey {
                container_id: format!("c{i}"),
                ifname: "eth0".into(),
            },
            ip: format!("10.0.0.{i}").parse().unwrap(),
            eni_id: "eni-1".into(),
            netns: "/proc/1/ns/net".into(),
            pod: None,
            exclusive: false,
            at_ms: 5,
            host_ports: Vec::new(),
        })
    }

    #[test]
    fn replays_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Store::open(dir.path()).unwrap();
        let mut state = o.state.clone();
        for e in [eni(), alloc(1), alloc(2)] {
            state.apply(&e).unwrap();
            o.store.append(&[e]).unwrap();
        }
        drop(o);
        let o = Store::open(dir.path()).unwrap();
        assert_eq!(o.state, state);
        assert_eq!(o.replayed, 3);
        assert!(!o.discarded_tail);
    }

    #[test]
    fn a_torn_tail_is_ignored_and_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Store::open(dir.path()).unwrap();
        o.store.append(&[eni(), alloc(1)]).unwrap();
        let end = o.store.offset;
        drop(o);
        // A half-written third record.
        let mut f = OpenOptions::new()
            .write(true)
            .open(dir.path().join("journal"))
            .unwrap();
        f.seek(SeekFrom::Start(end)).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
        drop(f);
        let mut o = Store::open(dir.path()).unwrap();
        assert!(o.discarded_tail);
        assert_eq!(o.replayed, 2);
        o.store.append(&[alloc(2)]).unwrap();
        drop(o);
        let o = Store::open(dir.path()).unwrap();
        assert!(!o.discarded_tail);
        assert_eq!(o.state.allocations.len(), 2);
    }

    #[test]
    fn compaction_keeps_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Store::open(dir.path()).unwrap();
        let mut state = PoolState::default();
        for e in [eni(), alloc(1), alloc(2), alloc(3)] {
            state.apply(&e).unwrap();
            o.store.append(&[e]).unwrap();
        }
        o.store.compact(&state).unwrap();
        let e = alloc(4);
        state.apply(&e).unwrap();
        o.store.append(&[e]).unwrap();
        drop(o);
        let o = Store::open(dir.path()).unwrap();
        assert_eq!(o.state, state);
        assert_eq!(o.replayed, 1);
    }

    #[test]
    fn host_ports_round_trip_and_old_records_without_them_load() {
        use crate::hostports::HostPort;
        let dir = tempfile::tempdir().unwrap();
        let mut o = Store::open(dir.path()).unwrap();
        let Event::Allocated(mut rec) = alloc(1) else {
            unreachable!()
        };
        rec.host_ports = vec![
            HostPort {
                host_ip: None,
                host_port: 8080,
                protocol: eni_rpc::PortProtocol::Tcp,
                container_port: 80,
            },
            HostPort {
                host_ip: Some("192.168.1.10".parse().unwrap()),
                host_port: 5353,
                protocol: eni_rpc::PortProtocol::Udp,
                container_port: 53,
            },
        ];
        let with_ports = Event::Allocated(rec.clone());
        // A record as written before host ports existed: no `host_ports` key at all.
        let old: Event = serde_json::from_str(
            r#"{"event":"allocated","key":{"container_id":"c2","ifname":"eth0"},
                "ip":"10.0.0.2","eni_id":"eni-1","netns":"/proc/1/ns/net","pod":null,
                "exclusive":false,"at_ms":5}"#,
        )
        .unwrap();
        assert_eq!(old, alloc(2));
        assert!(
            !serde_json::to_string(&old).unwrap().contains("host_ports"),
            "empty host ports are left out of the record"
        );
        o.store.append(&[eni(), with_ports, old]).unwrap();
        drop(o);
        // The read-only look sees what open() replays, and changes nothing.
        let peek = Store::read_state(dir.path()).unwrap();
        let o = Store::open(dir.path()).unwrap();
        assert_eq!(peek, o.state);
        assert_eq!(o.state.allocations[&rec.key].host_ports, rec.host_ports);
        let entries = crate::pool::manager::Manager::host_port_entries(&o.state);
        assert_eq!(entries.len(), 2);
        assert!(entries
            .iter()
            .all(|e| e.pod_ip == rec.ip && e.holder == "c1/eth0"));
        // Through a snapshot too.
        let mut o = o;
        let state = o.state.clone();
        o.store.compact(&state).unwrap();
        drop(o);
        assert_eq!(Store::open(dir.path()).unwrap().state, state);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            Store::read_state(&empty.path().join("none")).unwrap(),
            PoolState::default()
        );
    }

    #[test]
    fn a_contradicting_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Store::open(dir.path()).unwrap();
        // An allocation on an ENI the model never saw.
        o.store.append(&[alloc(1)]).unwrap();
        drop(o);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::Inconsistent { index: 0, .. }),
            "{err}"
        );
    }
}
