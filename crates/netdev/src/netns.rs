//! Network namespaces: opening one by path ([`Netns`]), running code inside one on a dedicated
//! thread ([`Netns::run`]), and named namespaces under `/run/netns` managed the way
//! `ip netns add/del/list` does it, without shelling out ([`NamedNetns`]).
//!
//! The calling thread never changes namespace: [`Netns::run`] spawns a fresh scoped thread,
//! `setns(CLONE_NEWNET)` on it, runs the closure and lets the thread exit. A thread that has
//! joined a namespace is therefore never reused for other work.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::statfs::{NSFS_MAGIC, PROC_SUPER_MAGIC};
use tracing::{debug, warn};

use crate::error::{NetdevError, Result};

/// Where named network namespaces live (same as iproute2's `NETNS_RUN_DIR`).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `NS_GET_NSTYPE` = `_IO(0xb7, 0x3)` from `<linux/nsfs.h>`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace (owns the file descriptor of an nsfs inode).
///
/// Holding a `Netns` keeps the namespace alive even if its `/run/netns` entry or process goes
/// away. The descriptor is close-on-exec.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Open the namespace at `path` (`/run/netns/<name>`, `/proc/<pid>/ns/net`, a bind mount of
    /// either) and check that it really is a network namespace: the file must live on nsfs or
    /// procfs, and `ioctl(NS_GET_NSTYPE)` must say `CLONE_NEWNET`.
    pub fn open(path: &Path) -> Result<Netns> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|e| NetdevError::from_io("open netns", shown.clone(), e))?;
        let st = nix::sys::statfs::fstatfs(&file)
            .map_err(|e| NetdevError::from_io("statfs netns", shown.clone(), io::Error::from(e)))?;
        let fs_type = st.filesystem_type();
        if fs_type != NSFS_MAGIC && fs_type != PROC_SUPER_MAGIC {
            return Err(NetdevError::invalid(
                "open netns",
                shown,
                format!(
                    "not a namespace file (filesystem magic {:#x}, want nsfs or proc)",
                    fs_type.0
                ),
            ));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor, which `file`
        // keeps open for the duration of the call.
        let ty = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if ty < 0 {
            let err = io::Error::last_os_error();
            return Err(NetdevError::invalid(
                "open netns",
                shown,
                format!("ioctl(NS_GET_NSTYPE) failed: {err} (not a namespace file?)"),
            ));
        }
        if ty != libc::CLONE_NEWNET {
            return Err(NetdevError::invalid(
                "open netns",
                shown,
                format!("namespace type {ty:#x} is not a network namespace"),
            ));
        }
        debug!(path = %path.display(), "opened netns");
        Ok(Netns {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The network namespace of the calling thread (`/proc/thread-self/ns/net`).
    pub fn current() -> Result<Netns> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `(st_dev, st_ino)` of the nsfs inode: equal for two handles on the same namespace.
    pub fn id(&self) -> Result<(u64, u64)> {
        let md = self
            .file
            .metadata()
            .map_err(|e| NetdevError::from_io("stat netns", self.path.display().to_string(), e))?;
        Ok((md.dev(), md.ino()))
    }

    /// True when both handles refer to the same namespace.
    pub fn same_as(&self, other: &Netns) -> Result<bool> {
        Ok(self.id()? == other.id()?)
    }

    /// A second descriptor for the same namespace.
    pub fn try_clone(&self) -> Result<Netns> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| NetdevError::from_io("dup netns fd", self.path.display().to_string(), e))?;
        Ok(Netns {
            file,
            path: self.path.clone(),
        })
    }

    /// Run `f` inside this namespace on a fresh scoped thread and return its result.
    ///
    /// The new thread calls `setns(fd, CLONE_NEWNET)` and exits after `f`; the caller's thread
    /// never changes namespace. Sockets created in `f` stay bound to this namespace after `f`
    /// returns. `/proc/sys/net` opened inside `f` shows this namespace. A panic in `f` is
    /// propagated to the caller.
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        let fd: BorrowedFd<'_> = self.file.as_fd();
        let shown = self.path.display().to_string();
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name("netns-run".into())
                .spawn_scoped(s, move || -> Result<T> {
                    nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| NetdevError::from_io("setns", shown.clone(), io::Error::from(e)))?;
                    Ok(f())
                })
                .map_err(|e| NetdevError::Io {
                    context: format!("spawn thread for netns {}", self.path.display()),
                    source: e,
                })?;
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A named network namespace at `/run/netns/<name>`, as made by `ip netns add`.
///
/// Dropping it deletes the namespace entry (best effort, errors are logged); call
/// [`NamedNetns::keep`] to leave it in place. The namespace itself lives on while any process,
/// open [`Netns`] or socket still references it.
#[derive(Debug)]
pub struct NamedNetns {
    name: String,
    path: PathBuf,
    armed: bool,
}

/// Serialises the one-time `/run/netns` shared-mount setup within this process (a `flock` on
/// the directory covers other processes).
static RUN_DIR_SETUP: Mutex<()> = Mutex::new(());

fn validate_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name.contains('/')
        || name.contains('\0');
    if bad {
        return Err(NetdevError::invalid(
            "netns name",
            name,
            "must be 1-255 bytes, not \".\" or \"..\", without '/' or NUL",
        ));
    }
    Ok(())
}

fn nix_io(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// Make `/run/netns` a shared mount point, as iproute2 does, so that namespace bind mounts
/// propagate to other mount namespaces (e.g. containers started later).
fn make_run_dir_shared(dir: &Path) -> Result<()> {
    let _guard = RUN_DIR_SETUP.lock().unwrap_or_else(|p| p.into_inner());
    let dir_file = File::open(dir).map_err(|e| NetdevError::from_io("open", dir.display().to_string(), e))?;
    let _flock = Flock::lock(dir_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| NetdevError::from_io("flock", dir.display().to_string(), nix_io(e)))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match nix::mount::mount(None::<&str>, dir, Some("none"), shared, None::<&str>) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then make it shared.
            debug!(dir = %dir.display(), "bind-mounting netns run dir onto itself");
            nix::mount::mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| NetdevError::from_io("bind mount", dir.display().to_string(), nix_io(e)))?;
            nix::mount::mount(None::<&str>, dir, Some("none"), shared, None::<&str>)
                .map_err(|e| NetdevError::from_io("make shared mount", dir.display().to_string(), nix_io(e)))
        }
        Err(e) => Err(NetdevError::from_io(
            "make shared mount",
            dir.display().to_string(),
            nix_io(e),
        )),
    }
}

impl NamedNetns {
    /// Create `/run/netns/<name>` holding a new, empty network namespace with `lo` up.
    ///
    /// Fails with [`NetdevError::AlreadyExists`] if the name is taken.
    pub fn create(name: &str) -> Result<NamedNetns> {
        validate_name(name)?;
        let dir = Path::new(NETNS_RUN_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| NetdevError::from_io("create dir", NETNS_RUN_DIR, e))?;
        make_run_dir_shared(dir)?;

        let path = dir.join(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .map_err(|e| NetdevError::from_io("create netns", path.display().to_string(), e))?;
        // From here on the Drop guard removes the file if anything fails.
        let mut ns = NamedNetns {
            name: name.to_string(),
            path,
            armed: true,
        };

        let target = ns.path.clone();
        let made = std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name("netns-create".into())
                .spawn_scoped(s, move || -> Result<()> {
                    nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                        NetdevError::from_io("unshare(CLONE_NEWNET)", target.display().to_string(), nix_io(e))
                    })?;
                    nix::mount::mount(
                        Some("/proc/thread-self/ns/net"),
                        &target,
                        Some("none"),
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(|e| {
                        NetdevError::from_io("bind netns", target.display().to_string(), nix_io(e))
                    })?;
                    let mut h = crate::link::Handle::new()?;
                    h.set_up(1)
                })
                .map_err(|e| NetdevError::Io {
                    context: "spawn netns-create thread".into(),
                    source: e,
                })?;
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        });
        if let Err(e) = made {
            ns.armed = false;
            let _ = remove_entry(&ns.path);
            return Err(e);
        }
        debug!(name, "created named netns");
        Ok(ns)
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open the namespace.
    pub fn netns(&self) -> Result<Netns> {
        Netns::open(&self.path)
    }

    /// Unmount (lazily) and remove the entry. Sockets and open [`Netns`] handles keep the
    /// namespace itself alive until they are closed.
    pub fn delete(mut self) -> Result<()> {
        self.armed = false;
        remove_entry(&self.path)
    }

    /// Disarm the Drop guard and return the path (the namespace stays).
    pub fn keep(mut self) -> PathBuf {
        self.armed = false;
        std::mem::take(&mut self.path)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = remove_entry(&self.path)
        {
            warn!(name = %self.name, error = %e, "failed to delete named netns");
        }
    }
}

/// `umount2(MNT_DETACH)` + unlink. Absent entry = Ok.
fn remove_entry(path: &Path) -> Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => {
            return Err(NetdevError::from_io(
                "umount netns",
                path.display().to_string(),
                nix_io(e),
            ));
        }
    }
    match fs::remove_file(path) {
        Ok(()) => {
            debug!(path = %path.display(), "deleted named netns");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetdevError::from_io(
            "remove netns",
            path.display().to_string(),
            e,
        )),
    }
}

/// Delete `/run/netns/<name>` like `ip netns del`; an absent namespace is `Ok(())`.
pub fn delete_named_netns(name: &str) -> Result<()> {
    validate_name(name)?;
    remove_entry(&Path::new(NETNS_RUN_DIR).join(name))
}

/// Names under `/run/netns`, sorted. An absent directory gives an empty list.
pub fn list_named_netns() -> Result<Vec<String>> {
    let rd = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NetdevError::from_io("list", NETNS_RUN_DIR, e)),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| NetdevError::from_io("list", NETNS_RUN_DIR, e))?;
        if !entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            continue;
        }
        match entry.file_name().into_string() {
            Ok(n) => names.push(n),
            Err(raw) => warn!(name = ?raw, "skipping non-UTF-8 netns name"),
        }
    }
    names.sort();
    Ok(names)
}

/// Whether `/run/netns/<name>` exists.
pub fn named_netns_exists(name: &str) -> bool {
    validate_name(name).is_ok() && Path::new(NETNS_RUN_DIR).join(name).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_names_reject_slash_dots_and_empty() {
        for bad in ["", ".", "..", "a/b", "x\0y"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name("nat-1-2").is_ok());
    }
}
