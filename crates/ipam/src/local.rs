//! The local file store: one pretty JSON file per pool, `<dir>/<pool name>.json`, shaped like a
//! whereabouts `IPPool` spec (see [`crate::pool`]), for single-machine use and tests.
//!
//! * Concurrency: every read-modify-write holds an exclusive `flock` on `<dir>/.lock` (reads a
//!   shared one), so it is safe across threads and processes. One lock for the directory keeps
//!   multi-pool (dual-stack) transactions atomic with respect to each other.
//! * Crash safety: a pool file is replaced by writing `<dir>/.<pool>.json.tmp`, fsyncing it and
//!   renaming it over the pool file. A reader sees the old or the new file, never a torn one,
//!   also after a power loss (the fsync before the rename keeps the new file's data from
//!   arriving after its name). The directory is deliberately not fsynced: this store serves one
//!   machine, so every attachment it records dies with that machine; a rename lost in a power
//!   failure can only forget an allocation whose pod is gone too, or keep one that was being
//!   released (a leak, never a duplicate). That saves one synchronous disk flush per ADD and DEL. A multi-pool transaction writes its files one after the other; a
//!   crash in between can leave an address held in the first pool only (a leak the runtime's
//!   DEL or GC frees), never a duplicate.
//! * A corrupt pool file is an error naming the file; it is never reset.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{ConfigError, IpamError};
use crate::pool::{self, PoolDoc};
use crate::store::{Allocation, AllocationRequest, GcRequest, Owner, Store};

/// File store rooted at a directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a pool name is safe as a file name: `[A-Za-z0-9._-]`, not starting with `.`.
pub fn valid_pool_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 240
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl FileStore {
    /// Open (and create, mode 0700, if missing) a store directory.
    pub fn new(dir: impl Into<PathBuf>) -> Result<FileStore, IpamError> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| IpamError::io("cannot create the IPAM store directory", &dir, e))?;
        Ok(FileStore { dir })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a pool's file.
    pub fn pool_path(&self, name: &str) -> Result<PathBuf, IpamError> {
        if !valid_pool_file_name(name) {
            return Err(ConfigError::invalid(
                "ipam.network_name",
                Some(name.to_string()),
                "gives a pool name that is not a safe file name",
                "use a network_name of lowercase letters, digits, `-` and `.`",
            )
            .into());
        }
        Ok(self.dir.join(format!("{name}.json")))
    }

    fn lock(&self, exclusive: bool) -> Result<File, IpamError> {
        let path = self.dir.join(".lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| IpamError::io("cannot open the IPAM store lock", &path, e))?;
        let res = if exclusive { f.lock() } else { f.lock_shared() };
        res.map_err(|e| IpamError::io("cannot lock the IPAM store", &path, e))?;
        Ok(f)
    }

    fn load(&self, name: &str) -> Result<Option<PoolDoc>, IpamError> {
        let path = self.pool_path(name)?;
        match fs::read_to_string(&path) {
            Ok(text) => {
                let mut doc = PoolDoc::from_json(&text, &path)?;
                // A spec copied from a whereabouts IPPool has no `network_name`: recover it from
                // the pool name (`<network_name>-<normalised range>`).
                if doc.network_name.is_none() {
                    let suffix = format!("-{}", crate::range::normalize_range(&doc.range.to_string()));
                    doc.network_name = name
                        .strip_suffix(&suffix)
                        .filter(|n| !n.is_empty())
                        .map(str::to_string);
                }
                Ok(Some(doc))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IpamError::io("cannot read pool file", &path, e)),
        }
    }

    fn load_all(&self) -> Result<BTreeMap<String, PoolDoc>, IpamError> {
        let mut docs = BTreeMap::new();
        let rd =
            fs::read_dir(&self.dir).map_err(|e| IpamError::io("cannot list the IPAM store", &self.dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| IpamError::io("cannot list the IPAM store", &self.dir, e))?;
            let fname = entry.file_name();
            let Some(fname) = fname.to_str() else { continue };
            let Some(name) = fname.strip_suffix(".json") else {
                continue;
            };
            if !valid_pool_file_name(name) {
                continue;
            }
            if let Some(doc) = self.load(name)? {
                docs.insert(name.to_string(), doc);
            }
        }
        Ok(docs)
    }

    fn write(&self, name: &str, doc: &PoolDoc) -> Result<(), IpamError> {
        let path = self.pool_path(name)?;
        let tmp = self.dir.join(format!(".{name}.json.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| IpamError::io("cannot create temporary pool file", &tmp, e))?;
        f.write_all(doc.to_json().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| IpamError::io("cannot write temporary pool file", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| IpamError::io("cannot replace pool file", &path, e))?;
        Ok(())
    }

    /// Every pool document of the store, by pool name (under the shared lock: a consistent
    /// snapshot). For operator listings; allocation goes through [`Store`].
    pub fn pools(&self) -> Result<BTreeMap<String, PoolDoc>, IpamError> {
        let _lock = self.lock(false)?;
        self.load_all()
    }

    /// Free the address at `offset` of pool `name` if `expected` still holds it (an operator's
    /// release; see [`pool::release_offset_in`]). `Ok(None)` when the pool does not exist.
    pub fn release_offset(
        &self,
        name: &str,
        offset: u128,
        expected: &pool::Reservation,
    ) -> Result<Option<pool::OffsetRelease>, IpamError> {
        let _lock = self.lock(true)?;
        let Some(mut doc) = self.load(name)? else {
            return Ok(None);
        };
        let out = pool::release_offset_in(&mut doc, name, offset, expected);
        if let pool::OffsetRelease::Released(a) = &out {
            self.write(name, &doc)?;
            tracing::info!(pool = %name, ip = %a.ip, container = %a.container_id, ifname = %a.ifname,
                "released by an operator");
        }
        Ok(Some(out))
    }

    fn commit(&self, docs: &BTreeMap<String, PoolDoc>, dirty: &BTreeSet<String>) -> Result<(), IpamError> {
        if dirty.is_empty() {
            return Ok(());
        }
        for name in dirty {
            if let Some(doc) = docs.get(name) {
                self.write(name, doc)?;
            }
        }
        Ok(())
    }
}

impl Store for FileStore {
    fn allocate(&self, req: &AllocationRequest) -> Result<Vec<Allocation>, IpamError> {
        let names = pool::request_pools(req);
        for n in &names {
            self.pool_path(n)?;
        }
        let _lock = self.lock(true)?;
        let mut docs = if req.overlapping_ranges {
            self.load_all()?
        } else {
            let mut docs = BTreeMap::new();
            for n in &names {
                if let Some(d) = self.load(n)? {
                    docs.insert(n.clone(), d);
                }
            }
            docs
        };
        let (allocs, dirty) = pool::allocate_in(&mut docs, req, unix_now())?;
        self.commit(&docs, &dirty)?;
        for a in &allocs {
            tracing::info!(pool = %a.pool, ip = %a.ip, owner = %req.owner, "allocated");
        }
        Ok(allocs)
    }

    fn release(&self, owner: &Owner) -> Result<Vec<Allocation>, IpamError> {
        let _lock = self.lock(true)?;
        let mut docs = self.load_all()?;
        let (freed, dirty) = pool::release_in(&mut docs, owner);
        self.commit(&docs, &dirty)?;
        for a in &freed {
            tracing::info!(pool = %a.pool, ip = %a.ip, %owner, "released");
        }
        if freed.is_empty() {
            tracing::debug!(%owner, "release: nothing held");
        }
        Ok(freed)
    }

    fn allocations(&self) -> Result<Vec<Allocation>, IpamError> {
        let _lock = self.lock(false)?;
        Ok(pool::list(&self.load_all()?))
    }

    fn gc(&self, req: &GcRequest<'_>) -> Result<Vec<Allocation>, IpamError> {
        let _lock = self.lock(true)?;
        let mut docs = self.load_all()?;
        let (freed, dirty) = pool::gc_in(&mut docs, req, unix_now());
        self.commit(&docs, &dirty)?;
        for a in &freed {
            tracing::info!(pool = %a.pool, ip = %a.ip, container = %a.container_id, ifname = %a.ifname, "garbage-collected");
        }
        Ok(freed)
    }

    fn check(&self, owner: &Owner) -> Result<Vec<Allocation>, IpamError> {
        let _lock = self.lock(false)?;
        Ok(pool::check_in(&self.load_all()?, owner))
    }
}
