//! Everything about leaving nothing behind: the lab directory (`/run/netattach-lab`, holding
//! the lock, the state file, the CNI bin dir, the IPAM store, the meta-plugin's local source
//! `k8s/`, each node's `nodes/<node>/` conf and record dirs and, with `--kubeconfig`, each node
//! daemon's `daemons/<node>/`) with its Drop guard, the
//! SIGINT/SIGTERM flag that makes a run stop at the next step, and `netattach lab down`, which
//! removes a lab left by `--keep` or by a crash.
//!
//! `down` only ever deletes namespaces whose name starts with [`PREFIX`], the lab directory,
//! the daemons and API objects the state file records (`--kubeconfig`): nothing that the lab
//! did not create.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use netattach_netdev::{delete_named_netns, list_named_netns};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::api::Created;
use crate::config::{PREFIX, SWITCH_NS};
use crate::daemons::DaemonRecord;
use crate::error::LabError;

/// Where the lab keeps its state, CNI bin dir and IPAM store.
pub const LAB_DIR: &str = "/run/netattach-lab";

/// The signal that asked us to stop, 0 for none.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

/// Install SIGINT and SIGTERM handlers that only record the signal; the run checks
/// [`interrupted`] between steps (and between pods and probes) and tears the lab down.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed `sigaction` is a valid "no flags, empty mask" value; we then set a
        // handler that is async-signal-safe (one atomic store) and pass valid pointers. The
        // old action is not needed.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            warn!(sig, error = %std::io::Error::last_os_error(), "could not install signal handler");
        }
    }
}

/// The signal that asked the run to stop, if any.
pub fn interrupted() -> Option<&'static str> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        _ => Some("a signal"),
    }
}

/// Return `Err(Interrupted)` when a stop signal arrived.
pub fn check_interrupt() -> Result<(), LabError> {
    match interrupted() {
        Some(signal) => Err(LabError::Interrupted { signal }),
        None => Ok(()),
    }
}

/// What a lab leaves in `state.json`, for `lab down` and for people.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The process that built it.
    pub pid: u32,
    /// `running` while a run works, `kept` after `--keep`.
    pub phase: String,
    /// The command-line settings, for people.
    pub settings: String,
    /// Namespaces (created or planned), in creation order.
    pub namespaces: Vec<String>,
    /// Directories the lab made.
    pub dirs: Vec<PathBuf>,
    /// `--kubeconfig`: the API objects the lab created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<Created>,
    /// `--kubeconfig`: the node daemons the lab started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub daemons: Vec<DaemonRecord>,
}

/// The lab directory, locked for the run. Dropping it removes the directory unless
/// [`LabDir::keep`] was called.
#[derive(Debug)]
pub struct LabDir {
    root: PathBuf,
    _lock: File,
    armed: bool,
}

fn lab_namespaces() -> Result<Vec<String>, LabError> {
    Ok(list_named_netns()
        .map_err(LabError::netdev("listing /run/netns"))?
        .into_iter()
        .filter(|n| n.starts_with(PREFIX))
        .collect())
}

impl LabDir {
    /// Create and lock `/run/netattach-lab`. Refuses when a lab is already there: `nalab-*`
    /// namespaces, a state file, or another run holding the lock.
    pub fn create() -> Result<LabDir, LabError> {
        let found = lab_namespaces()?;
        if !found.is_empty() {
            let shown = if found.len() > 4 {
                format!("{} and {} more", found[..4].join(", "), found.len() - 4)
            } else {
                found.join(", ")
            };
            return Err(LabError::AlreadyPresent {
                what: format!("namespaces {shown}"),
            });
        }
        let root = PathBuf::from(LAB_DIR);
        fs::create_dir_all(&root).map_err(LabError::io("creating the lab directory", &root))?;
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(LabError::io("opening the lab lock", &lock_path))?;
        if lock.try_lock().is_err() {
            return Err(LabError::AlreadyPresent {
                what: format!("another lab run holds {}", lock_path.display()),
            });
        }
        let state = root.join("state.json");
        if state.exists() {
            return Err(LabError::AlreadyPresent {
                what: format!("state file {}", state.display()),
            });
        }
        Ok(LabDir {
            root,
            _lock: lock,
            armed: true,
        })
    }

    /// `/run/netattach-lab`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The lab's CNI bin dir.
    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// The lab's IPAM store (`local_dir`), shared by all lab nodes.
    pub fn ipam_dir(&self) -> PathBuf {
        self.root.join("ipam")
    }

    /// The meta-plugin's `localSource`: NAD files, pod files and their network-status.
    pub fn local_dir(&self) -> PathBuf {
        self.root.join("k8s")
    }

    /// One directory per node daemon (`--kubeconfig`): socket, ready file, log.
    pub fn daemons_dir(&self) -> PathBuf {
        self.root.join("daemons")
    }

    /// One directory per node (conf dir, attachment records).
    pub fn nodes_dir(&self) -> PathBuf {
        self.root.join("nodes")
    }

    /// Write `state.json` atomically.
    pub fn write_state(&self, state: &State) -> Result<(), LabError> {
        let path = self.root.join("state.json");
        let tmp = self.root.join(".state.json.tmp");
        let text = serde_json::to_string_pretty(state).map_err(|e| LabError::State {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        let mut f = File::create(&tmp).map_err(LabError::io("writing the lab state", &tmp))?;
        f.write_all(text.as_bytes())
            .map_err(LabError::io("writing the lab state", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(LabError::io("writing the lab state", &path))
    }

    /// Disarm the Drop guard: the directory stays for `lab down`.
    pub fn keep(mut self) {
        self.armed = false;
    }

    /// Remove the directory now.
    pub fn remove(mut self) -> Result<(), LabError> {
        self.armed = false;
        remove_lab_dir(&self.root)
    }
}

impl Drop for LabDir {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = remove_lab_dir(&self.root)
        {
            warn!(error = %e, "could not remove the lab directory");
        }
    }
}

fn remove_lab_dir(root: &Path) -> Result<(), LabError> {
    match fs::remove_dir_all(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LabError::io("removing the lab directory", root)(e)),
    }
}

/// Order namespace names for deletion: pods (more dashes: `nalab-n1-p1`) before nodes, the
/// switch last.
pub fn sort_for_teardown(names: &mut [String]) {
    names.sort_by_key(|n| {
        (
            n.as_str() == SWITCH_NS,
            std::cmp::Reverse(n.matches('-').count()),
            n.clone(),
        )
    });
}

/// Delete namespaces by name (pods first, then nodes, then the switch: the reverse of
/// creation), collecting failures instead of stopping at the first.
pub fn delete_namespaces(names: &[String], failures: &mut Vec<String>) {
    let mut ordered: Vec<String> = names.iter().filter(|n| n.starts_with(PREFIX)).cloned().collect();
    sort_for_teardown(&mut ordered);
    for name in &ordered {
        match delete_named_netns(name) {
            Ok(()) => debug!(name, "deleted lab namespace"),
            Err(e) => failures.push(format!("deleting namespace {name}: {e}")),
        }
    }
}

/// `netattach lab down`: remove every `nalab-*` namespace and the lab directory. Idempotent:
/// with nothing there it succeeds and says so.
pub fn down() -> Result<(), LabError> {
    let root = PathBuf::from(LAB_DIR);
    let lock_path = root.join("lock");
    if let Ok(lock) = File::open(&lock_path)
        && lock.try_lock().is_err()
    {
        return Err(LabError::AlreadyPresent {
            what: format!(
                "a lab run is still in progress ({} is locked); stop it with Ctrl-C",
                lock_path.display()
            ),
        });
    }
    let state_path = root.join("state.json");
    let mut names = lab_namespaces()?;
    let mut failures = Vec::new();
    let mut stopped = 0;
    let mut api_removed = false;
    if let Ok(text) = fs::read_to_string(&state_path) {
        match serde_json::from_str::<State>(&text) {
            Ok(state) => {
                for n in state.namespaces {
                    if n.starts_with(PREFIX) && !names.contains(&n) {
                        names.push(n);
                    }
                }
                // Daemons first (they watch the API objects), then the objects.
                let (n, f) = crate::daemons::stop_recorded(&state.daemons);
                stopped = n;
                failures.extend(f);
                if let Some(api) = &state.api {
                    failures.extend(crate::api::remove_recorded(api));
                    api_removed = true;
                }
            }
            Err(e) => warn!(path = %state_path.display(), error = %e, "ignoring unreadable lab state"),
        }
    }
    let had_dir = root.exists();
    let present: Vec<String> = names
        .into_iter()
        .filter(|n| Path::new("/run/netns").join(n).exists())
        .collect();
    delete_namespaces(&present, &mut failures);
    if let Err(e) = remove_lab_dir(&root) {
        failures.push(e.to_string());
    }
    let left = lab_namespaces()?;
    if !left.is_empty() {
        failures.push(format!("namespaces still present: {}", left.join(", ")));
    }
    if !failures.is_empty() {
        return Err(LabError::Teardown(failures));
    }
    if present.is_empty() && !had_dir {
        println!("no lab found: nothing to remove");
    } else {
        if stopped > 0 {
            println!("stopped {stopped} node daemon(s)");
        }
        if api_removed {
            println!("deleted the lab's API objects");
        }
        println!(
            "lab removed: {} namespace(s){}",
            present.len(),
            if had_dir {
                format!(" and {}", root.display())
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_deleted_deepest_first_and_the_switch_last() {
        let mut names: Vec<String> = ["nalab-sw", "nalab-n1", "nalab-n1-p1", "nalab-n2", "nalab-n1-p2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        sort_for_teardown(&mut names);
        assert_eq!(
            names,
            ["nalab-n1-p1", "nalab-n1-p2", "nalab-n1", "nalab-n2", "nalab-sw"]
        );
    }

    #[test]
    fn state_round_trips() {
        let s = State {
            pid: 7,
            phase: "kept".into(),
            settings: "--nodes 2".into(),
            namespaces: vec!["nalab-sw".into()],
            dirs: vec![PathBuf::from(LAB_DIR)],
            ..State::default()
        };
        let text = serde_json::to_string(&s).expect("json");
        assert_eq!(serde_json::from_str::<State>(&text).expect("parse"), s);
    }
}
