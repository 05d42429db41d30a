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

/// CPU time (user + system) a live process has used so far, from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|h| *h > 0)?;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// CPU time (user + system) of this process's children that were reaped so far.
pub fn reaped_children_cpu() -> Duration {
    // SAFETY: getrusage writes one rusage struct, which we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
