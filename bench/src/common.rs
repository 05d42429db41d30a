//! What both benchmarks share: the error type, the interrupt flag, throw-away named network
//! namespaces (deleted on drop; those of dead earlier runs swept at start), percentiles and
//! the check for a required file.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use netattach_netdev::{NamedNetns, Netns};

/// Errors of a benchmark run: printed, then exit 1.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Set by SIGINT/SIGTERM: the run stops at the next step and tears down.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named namespace deleted on drop (the links inside go with it).
pub struct Ns(Option<NamedNetns>);

impl Ns {
    /// A new namespace `<prefix>-<pid>-<n>`.
    pub fn new(prefix: &str) -> Result<Ns, Error> {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Ok(Ns(Some(
            NamedNetns::create(&name).map_err(|e| format!("create netns {name}: {e}"))?,
        )))
    }
    pub fn named(&self) -> &NamedNetns {
        self.0.as_ref().expect("namespace is live until drop")
    }
    pub fn path(&self) -> &Path {
        self.named().path()
    }
    pub fn netns(&self) -> Result<Netns, Error> {
        Ok(self.named().netns()?)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Some(ns) = self.0.take() {
            let name = ns.name().to_string();
            if let Err(e) = ns.delete() {
                eprintln!("warning: could not delete netns {name}: {e}");
            }
        }
    }
}

/// Deletes `<prefix>-<pid>-*` namespaces whose process is gone (a killed earlier run).
pub fn sweep_stale(prefix: &str) {
    let Ok(names) = netattach_netdev::list_named_netns() else {
        return;
    };
    for name in names {
        let pid = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = netattach_netdev::delete_named_netns(&name);
        }
    }
}

pub fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[idx.min(s.len() - 1)]
}

/// `netattach install --bin-dir DIR`: the binary's plugin faces in a throw-away CNI bin dir.
pub fn install_faces(netattach: &Path, bin_dir: &Path) -> Result<(), Error> {
    let out = std::process::Command::new(netattach)
        .arg("install")
        .arg("--bin-dir")
        .arg(bin_dir)
        .env_remove("CNI_COMMAND")
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "netattach install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into())
    }
}

pub fn require_file(p: &Path, fix: &str) -> Result<(), Error> {
    if p.is_file() {
        Ok(())
    } else {
        Err(format!("{} not found; fix: {fix}", p.display()).into())
    }
}
