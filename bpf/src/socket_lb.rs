//! `SocketLb`: loads the embedded socket-LB object with its maps pinned (adopting maps a
//! previous loader pinned), attaches the eight hooks (four for AF_INET sockets, four for
//! AF_INET6 ones: native IPv6 Services and IPv4-mapped addresses of IPv4 ones) to a cgroup
//! with pinned bpf_links, and applies service plans to the maps, writing the IPv4 or the
//! IPv6 tables by the frontend's family. It owns the kernel side of this crate; the
//! planning lives in [`crate::service`].
//!
//! Pin layout under `pin_dir` (default [`DEFAULT_PIN_DIR`]):
//! `lb4_services`, `lb4_backends`, `lb4_affinity`, `lb4_rev_nat`, `lb6_services`,
//! `lb6_backends`, `lb6_affinity`, `lb6_rev_nat` (maps; a pin dir written by a loader
//! from before IPv6 gets the `lb6_*` maps created next to the adopted IPv4 ones) and
//! `links/cgroup-<inode>/<program>` (one bpf_link per hook and cgroup; the inode is the
//! cgroup directory's, `stat -c %i <cgroup dir>`; bpffs holds no plain files).

use std::{
    collections::BTreeSet,
    fs::{self, File},
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    include_bytes_aligned,
    maps::{HashMap, Map, MapData, MapError, MapInfo},
    programs::{links::FdLink, links::PinnedLink, CgroupAttachMode, CgroupSockAddr},
    Ebpf, EbpfLoader,
};

use crate::{
    error::BpfError,
    maps::{
        expected_sizes, ip6_to_map, ip_to_map, port_to_map, Be6Val, BeKey, BeVal, Svc6Key, SvcKey,
        SvcVal, ALL_MAPS, BACKENDS6_MAP, BACKENDS_MAP, SERVICES6_MAP, SERVICES_MAP,
    },
    service::{
        self, Backend, DatapathMaps, IpFamily, MapOp, RawTables, ServiceEntry, ServiceKey,
        ServiceSpec,
    },
    UpsertOutcome,
};

/// Where maps and links are pinned unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/eni-net";

/// The programs of the object (function names in `socket_lb.bpf.c`).
pub const PROGRAMS: [&str; 8] = [
    "sock4_connect",
    "sock4_sendmsg",
    "sock4_recvmsg",
    "sock4_getpeername",
    "sock6_connect",
    "sock6_sendmsg",
    "sock6_recvmsg",
    "sock6_getpeername",
];

static SOCKET_LB_OBJ: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socket_lb.bpf.o"));

/// The loaded socket-LB datapath and its (pinned) maps.
#[derive(Debug)]
pub struct SocketLb {
    bpf: Ebpf,
    pin_dir: PathBuf,
    tables: Tables,
    ids: BTreeSet<u32>,
}

/// The services and backends maps of both families, as the loader holds them or as opened
/// from their pins. The IPv6 ones are `None` only when [`read_pinned`] finds a pin dir
/// written before IPv6 existed (read as no IPv6 services).
#[derive(Debug)]
struct Tables {
    services: HashMap<MapData, SvcKey, SvcVal>,
    backends: HashMap<MapData, BeKey, BeVal>,
    services6: Option<HashMap<MapData, Svc6Key, SvcVal>>,
    backends6: Option<HashMap<MapData, BeKey, Be6Val>>,
}

/// Every service with its backends, read from the maps pinned under `pin_dir` without
/// loading any program (for `enictl services`). Only reads. Needs the rights to open the
/// pins (root).
pub fn read_pinned(pin_dir: impl AsRef<Path>) -> Result<Vec<ServiceEntry>, BpfError> {
    fn open<K: aya::Pod, V: aya::Pod>(
        pin_dir: &Path,
        name: &'static str,
    ) -> Result<HashMap<MapData, K, V>, BpfError> {
        let path = pin_dir.join(name);
        if !path.exists() {
            return Err(BpfError::io(
                "open pin",
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no map is pinned there"),
            ));
        }
        let data = MapData::from_pin(&path).map_err(map_err(name, "open pin"))?;
        HashMap::try_from(Map::from_map_data(data).map_err(map_err(name, "open"))?)
            .map_err(map_err(name, "open"))
    }
    let pin_dir = pin_dir.as_ref();
    let (services6, backends6) = if pin_dir.join(SERVICES6_MAP).exists() {
        (
            Some(open(pin_dir, SERVICES6_MAP)?),
            Some(open(pin_dir, BACKENDS6_MAP)?),
        )
    } else {
        (None, None)
    };
    let tables = Tables {
        services: open(pin_dir, SERVICES_MAP)?,
        backends: open(pin_dir, BACKENDS_MAP)?,
        services6,
        backends6,
    };
    service::list(&tables)
}

fn map_err(map: &'static str, op: &'static str) -> impl Fn(MapError) -> BpfError {
    move |e| BpfError::map(map, op, e)
}

fn prog_err(
    program: &'static str,
    op: &'static str,
) -> impl Fn(aya::programs::ProgramError) -> BpfError {
    move |e| BpfError::Program {
        program,
        op,
        source: Box::new(e),
    }
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    bpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, BpfError> {
    let map: Map = bpf
        .take_map(name)
        .ok_or(BpfError::MissingMap { map: name })?;
    HashMap::try_from(map).map_err(map_err(name, "open"))
}

impl SocketLb {
    /// Loads the programs, re-using maps already pinned under `pin_dir` (their contents
    /// are kept: the datapath never sees an empty table across a manager restart) or
    /// creating and pinning them. Programs are loaded but not attached; see [`Self::attach`].
    pub fn load_or_adopt(pin_dir: impl AsRef<Path>) -> Result<Self, BpfError> {
        let pin_dir = pin_dir.as_ref().to_path_buf();
        fs::create_dir_all(&pin_dir).map_err(|e| BpfError::io("create pin dir", &pin_dir, e))?;
        let fs = nix::sys::statfs::statfs(&pin_dir)
            .map_err(|e| BpfError::io("statfs", &pin_dir, e.into()))?;
        if fs.filesystem_type() != nix::sys::statfs::BPF_FS_MAGIC {
            return Err(BpfError::NotBpffs { path: pin_dir });
        }

        // A pinned map of another layout would be silently adopted by the loader: refuse.
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&'static str, PathBuf)> =
            ALL_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
        for (name, path) in &paths {
            if path.exists() {
                let info = MapInfo::from_pin(path).map_err(map_err(name, "info"))?;
                let found = (info.key_size(), info.value_size());
                let expected = expected_sizes(name).unwrap_or(found);
                if found != expected {
                    return Err(BpfError::IncompatiblePin {
                        path: path.clone(),
                        found,
                        expected,
                    });
                }
            }
            loader.map_pin_path(name, path.as_path());
        }
        let mut bpf = loader.load(SOCKET_LB_OBJ).map_err(|e| BpfError::Load {
            pin_dir: pin_dir.clone(),
            source: Box::new(e),
        })?;

        for name in PROGRAMS {
            let prog: &mut CgroupSockAddr = bpf
                .program_mut(name)
                .ok_or_else(|| {
                    prog_err(name, "find")(aya::programs::ProgramError::UnexpectedProgramType)
                })?
                .try_into()
                .map_err(prog_err(name, "convert"))?;
            prog.load().map_err(prog_err(name, "load"))?;
        }

        let tables = Tables {
            services: take_hash(&mut bpf, SERVICES_MAP)?,
            backends: take_hash(&mut bpf, BACKENDS_MAP)?,
            services6: Some(take_hash(&mut bpf, SERVICES6_MAP)?),
            backends6: Some(take_hash(&mut bpf, BACKENDS6_MAP)?),
        };
        let ids = service::used_ids(&tables)?;
        Ok(Self {
            bpf,
            pin_dir,
            tables,
            ids,
        })
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn link_dir(&self, cgroup: &Path) -> Result<PathBuf, BpfError> {
        let meta = fs::metadata(cgroup).map_err(|e| BpfError::io("stat cgroup", cgroup, e))?;
        Ok(self
            .pin_dir
            .join("links")
            .join(format!("cgroup-{}", meta.ino())))
    }

    /// Attaches the eight hooks to the cgroup v2 directory `cgroup` as bpf_links and pins
    /// the links under `pin_dir/links/cgroup-<inode>/`, so they stay attached after this
    /// process exits. Idempotent: hooks whose link pin exists are left as they are.
    /// Returns how many hooks were newly attached.
    pub fn attach(&mut self, cgroup: impl AsRef<Path>) -> Result<usize, BpfError> {
        let cgroup = cgroup.as_ref();
        let dir = self.link_dir(cgroup)?;
        fs::create_dir_all(&dir).map_err(|e| BpfError::io("create link dir", &dir, e))?;
        let cg = File::open(cgroup).map_err(|e| BpfError::io("open cgroup", cgroup, e))?;
        let mut attached = 0;
        for name in PROGRAMS {
            let pin = dir.join(name);
            if pin.exists() && PinnedLink::from_pin(&pin).is_ok() {
                continue;
            }
            let _ = fs::remove_file(&pin);
            let prog: &mut CgroupSockAddr = self
                .bpf
                .program_mut(name)
                .ok_or_else(|| {
                    prog_err(name, "find")(aya::programs::ProgramError::UnexpectedProgramType)
                })?
                .try_into()
                .map_err(prog_err(name, "convert"))?;
            // bpf_link attachments always allow other programs on the cgroup.
            let id = prog
                .attach(&cg, CgroupAttachMode::Single)
                .map_err(prog_err(name, "attach"))?;
            let link = prog.take_link(id).map_err(prog_err(name, "take link"))?;
            let fd: FdLink = link.try_into().map_err(|e| BpfError::Link {
                program: name,
                op: "into fd link",
                source: Box::new(e),
            })?;
            fd.pin(&pin).map_err(|e| BpfError::LinkPin {
                program: name,
                path: pin.clone(),
                source: Box::new(e),
            })?;
            attached += 1;
        }
        Ok(attached)
    }

    /// Detaches the hooks from `cgroup` by removing their link pins (a bpf_link with no pin
    /// and no open file descriptor is released by the kernel), and returns once the kernel
    /// has released them (`rm -r <pin_dir>/links/cgroup-<inode>` does the same, but the hooks
    /// may stay a moment longer). Keeps going past errors, returns the first.
    pub fn detach(&self, cgroup: impl AsRef<Path>) -> Result<(), BpfError> {
        let dir = self.link_dir(cgroup.as_ref())?;
        remove_link_dir(&dir)
    }
}

/// Waits (up to a second) until none of the link ids is loaded any more.
fn wait_released(ids: &[u32]) {
    if ids.is_empty() {
        return;
    }
    for _ in 0..100 {
        let live = aya::programs::loaded_links()
            .filter_map(Result::ok)
            .any(|l| ids.contains(&l.id()));
        if !live {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn remove_link_dir(dir: &Path) -> Result<(), BpfError> {
    if !dir.exists() {
        return Ok(());
    }
    let mut first = None;
    let mut released = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| BpfError::io("read link dir", dir, e))?;
    for entry in entries.flatten() {
        let p = entry.path();
        // Open the link before removing its pin, and close it last: the kernel releases a
        // link synchronously when its last file descriptor closes, but only later (from a
        // work queue) when the last reference was a pin. So when this returns, the hook is
        // off the cgroup.
        match PinnedLink::from_pin(&p).map(PinnedLink::unpin) {
            Ok(Ok(fd)) => {
                if let Ok(info) = fd.info() {
                    released.push(info.id());
                }
                drop(fd);
            }
            Ok(Err(e)) => {
                first.get_or_insert(BpfError::io("unpin", p, e));
            }
            Err(_) => {
                if let Err(e) = fs::remove_file(&p) {
                    first.get_or_insert(BpfError::io("unpin", p, e));
                }
            }
        }
    }
    wait_released(&released);
    if let Err(e) = fs::remove_dir(dir) {
        first.get_or_insert(BpfError::io("remove link dir", dir, e));
    }
    first.map_or(Ok(()), Err)
}

/// Removes everything pinned under `pin_dir`: every link (detaching the hooks from every
/// cgroup) and every map (their contents are lost once no program uses them). For
/// uninstall and tests; a running [`SocketLb`] keeps its own references.
pub fn unpin_all(pin_dir: impl AsRef<Path>) -> Result<(), BpfError> {
    let pin_dir = pin_dir.as_ref();
    let mut first = None;
    let links = pin_dir.join("links");
    if let Ok(entries) = fs::read_dir(&links) {
        for entry in entries.flatten() {
            if let Err(e) = remove_link_dir(&entry.path()) {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = fs::remove_dir(&links) {
            first.get_or_insert(BpfError::io("remove", &links, e));
        }
    }
    for m in ALL_MAPS {
        let p = pin_dir.join(m);
        if p.exists() {
            if let Err(e) = fs::remove_file(&p) {
                first.get_or_insert(BpfError::io("unpin", p, e));
            }
        }
    }
    if pin_dir.exists() {
        if let Err(e) = fs::remove_dir(pin_dir) {
            first.get_or_insert(BpfError::io("remove", pin_dir, e));
        }
    }
    first.map_or(Ok(()), Err)
}

fn absent_is_none<V>(r: Result<V, MapError>) -> Result<Option<V>, MapError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Tables {
    fn services6(&self) -> Result<&HashMap<MapData, Svc6Key, SvcVal>, BpfError> {
        self.services6
            .as_ref()
            .ok_or(BpfError::MissingMap { map: SERVICES6_MAP })
    }

    fn backends6(&self) -> Result<&HashMap<MapData, BeKey, Be6Val>, BpfError> {
        self.backends6
            .as_ref()
            .ok_or(BpfError::MissingMap { map: BACKENDS6_MAP })
    }

    fn services6_mut(&mut self) -> Result<&mut HashMap<MapData, Svc6Key, SvcVal>, BpfError> {
        self.services6
            .as_mut()
            .ok_or(BpfError::MissingMap { map: SERVICES6_MAP })
    }

    fn backends6_mut(&mut self) -> Result<&mut HashMap<MapData, BeKey, Be6Val>, BpfError> {
        self.backends6
            .as_mut()
            .ok_or(BpfError::MissingMap { map: BACKENDS6_MAP })
    }
}

/// The map key of a service, in its family's layout.
enum FamilyKey {
    V4(SvcKey),
    V6(Svc6Key),
}

fn family_key(key: &ServiceKey) -> FamilyKey {
    let (port, proto) = (port_to_map(key.port), key.protocol.number());
    match key.vip {
        IpAddr::V4(vip) => FamilyKey::V4(SvcKey {
            vip: ip_to_map(vip),
            port,
            proto,
            pad: 0,
        }),
        IpAddr::V6(vip) => FamilyKey::V6(Svc6Key {
            vip: ip6_to_map(vip),
            port,
            proto,
            pad: 0,
        }),
    }
}

impl RawTables for Tables {
    fn get_service(&self, key: &ServiceKey) -> Result<Option<SvcVal>, BpfError> {
        match family_key(key) {
            FamilyKey::V4(k) => {
                absent_is_none(self.services.get(&k, 0)).map_err(map_err(SERVICES_MAP, "lookup"))
            }
            FamilyKey::V6(k) => absent_is_none(self.services6()?.get(&k, 0))
                .map_err(map_err(SERVICES6_MAP, "lookup")),
        }
    }

    fn get_backend(&self, family: IpFamily, key: &BeKey) -> Result<Option<Backend>, BpfError> {
        match family {
            IpFamily::V4 => absent_is_none(self.backends.get(key, 0))
                .map(|v| v.map(Backend::from_map))
                .map_err(map_err(BACKENDS_MAP, "lookup")),
            IpFamily::V6 => absent_is_none(self.backends6()?.get(key, 0))
                .map(|v| v.map(Backend::from_map6))
                .map_err(map_err(BACKENDS6_MAP, "lookup")),
        }
    }

    fn all_services(&self) -> Result<Vec<(ServiceKey, SvcVal)>, BpfError> {
        let mut out = Vec::new();
        for kv in self.services.iter() {
            let (k, v) = kv.map_err(map_err(SERVICES_MAP, "iterate"))?;
            // A protocol this crate does not know is not one of its entries.
            if let Some(key) = ServiceKey::from_map(k) {
                out.push((key, v));
            }
        }
        if let Some(services6) = &self.services6 {
            for kv in services6.iter() {
                let (k, v) = kv.map_err(map_err(SERVICES6_MAP, "iterate"))?;
                if let Some(key) = ServiceKey::from_map6(k) {
                    out.push((key, v));
                }
            }
        }
        Ok(out)
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), BpfError> {
        match *op {
            MapOp::PutService(k, v) => match family_key(&k) {
                FamilyKey::V4(k) => self
                    .services
                    .insert(k, v, 0)
                    .map_err(map_err(SERVICES_MAP, "update")),
                FamilyKey::V6(k) => self
                    .services6_mut()?
                    .insert(k, v, 0)
                    .map_err(map_err(SERVICES6_MAP, "update")),
            },
            MapOp::DeleteService(k) => match family_key(&k) {
                FamilyKey::V4(k) => absent_is_none(self.services.remove(&k))
                    .map(|_| ())
                    .map_err(map_err(SERVICES_MAP, "delete")),
                FamilyKey::V6(k) => absent_is_none(self.services6_mut()?.remove(&k))
                    .map(|_| ())
                    .map_err(map_err(SERVICES6_MAP, "delete")),
            },
            MapOp::PutBackend(k, b) => match (b.to_map(), b.to_map6()) {
                (Some(v), _) => self
                    .backends
                    .insert(k, v, 0)
                    .map_err(map_err(BACKENDS_MAP, "update")),
                (_, Some(v)) => self
                    .backends6_mut()?
                    .insert(k, v, 0)
                    .map_err(map_err(BACKENDS6_MAP, "update")),
                // A backend is IPv4 (to_map) or IPv6 (to_map6): never both None.
                (None, None) => Ok(()),
            },
            MapOp::DeleteBackend(IpFamily::V4, k) => absent_is_none(self.backends.remove(&k))
                .map(|_| ())
                .map_err(map_err(BACKENDS_MAP, "delete")),
            MapOp::DeleteBackend(IpFamily::V6, k) => {
                absent_is_none(self.backends6_mut()?.remove(&k))
                    .map(|_| ())
                    .map_err(map_err(BACKENDS6_MAP, "delete"))
            }
        }
    }
}

impl DatapathMaps for SocketLb {
    fn upsert_service(
        &mut self,
        key: ServiceKey,
        spec: &ServiceSpec,
    ) -> Result<UpsertOutcome, BpfError> {
        service::upsert(&mut self.tables, &mut self.ids, key, spec)
    }

    fn delete_service(&mut self, key: ServiceKey) -> Result<bool, BpfError> {
        service::delete(&mut self.tables, &mut self.ids, key)
    }

    fn list(&self) -> Result<Vec<ServiceEntry>, BpfError> {
        service::list(&self.tables)
    }
}
