//! One `netattach daemon` per lab node (`netattach lab --kubeconfig`): the lab's own binary,
//! `--node <lab node>`, the given kubeconfig, its socket, ready file and log inside the lab
//! directory (`daemons/<node>/`), metrics on a loopback port the daemon picks. Each runs in the host's
//! network namespace (it talks to the API server on loopback) in its own process group (a
//! Ctrl-C reaches the lab, which stops the daemons in order).
//!
//! [`Daemons`] stops them (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]) when told or when
//! dropped; their pids are recorded in the lab state so that `lab down` can stop daemons left
//! by `--keep` or a crash ([`stop_recorded`]), after checking that the pid still is that
//! daemon.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::LabError;

/// How long a daemon may take to sync its caches and write its ready file.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon may take to exit after SIGTERM before it gets SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_millis(50);

/// A started daemon, as recorded in the lab state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonRecord {
    /// Its process id.
    pub pid: u32,
    /// The lab node it serves.
    pub node: String,
    /// Its unix socket (the meta-plugin's `daemonSocket`).
    pub socket: PathBuf,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
}

/// One running daemon.
#[derive(Debug)]
struct Running {
    record: DaemonRecord,
    ready_file: PathBuf,
    child: Option<Child>,
}

/// The lab's daemons. Dropping stops them.
#[derive(Debug, Default)]
pub struct Daemons {
    running: Vec<Running>,
}

fn daemon_error(node: &str, log: &Path, problem: String) -> LabError {
    let tail = fs::read_to_string(log)
        .map(|t| {
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(5)..].join("\n  ")
        })
        .unwrap_or_default();
    LabError::Daemon {
        node: node.to_string(),
        log: log.to_path_buf(),
        problem: if tail.is_empty() {
            problem
        } else {
            format!("{problem}; last log lines:\n  {tail}")
        },
    }
}

impl Daemons {
    /// Start one daemon for `node`: `binary daemon --node <node> --kubeconfig <kubeconfig>`,
    /// everything else under `dir/<node>/`.
    pub fn start(
        &mut self,
        binary: &Path,
        kubeconfig: &Path,
        node: &str,
        dir: &Path,
    ) -> Result<(), LabError> {
        let home = dir.join(node);
        fs::create_dir_all(&home).map_err(LabError::io("creating a daemon directory", &home))?;
        let socket = home.join("run").join("daemon.sock");
        let ready_file = home.join("ready");
        let log = home.join("daemon.log");
        let out = File::create(&log).map_err(LabError::io("creating a daemon log", &log))?;
        let err = out
            .try_clone()
            .map_err(LabError::io("creating a daemon log", &log))?;
        let child = Command::new(binary)
            .arg("daemon")
            .arg("--node")
            .arg(node)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--socket")
            .arg(&socket)
            .arg("--ready-file")
            .arg(&ready_file)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| daemon_error(node, &log, format!("cannot start {}: {e}", binary.display())))?;
        self.running.push(Running {
            record: DaemonRecord {
                pid: child.id(),
                node: node.to_string(),
                socket,
                log,
            },
            ready_file,
            child: Some(child),
        });
        Ok(())
    }

    /// The records of the started daemons (for the lab state).
    pub fn records(&self) -> Vec<DaemonRecord> {
        self.running.iter().map(|r| r.record.clone()).collect()
    }

    /// The socket of `node`'s daemon.
    pub fn socket(&self, node: &str) -> Option<&Path> {
        self.running
            .iter()
            .find(|r| r.record.node == node)
            .map(|r| r.record.socket.as_path())
    }

    /// How many were started.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether none was started.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Wait (at most [`READY_TIMEOUT`] in all) for every ready file; an exited daemon or the
    /// timeout is an error naming the daemon's log.
    pub fn wait_ready(&mut self) -> Result<(), LabError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for r in &mut self.running {
            loop {
                crate::cleanup::check_interrupt()?;
                if r.ready_file.exists() {
                    break;
                }
                if let Some(child) = r.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    r.child = None;
                    return Err(daemon_error(
                        &r.record.node,
                        &r.record.log,
                        format!("exited ({status}) before it was ready"),
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(daemon_error(
                        &r.record.node,
                        &r.record.log,
                        format!(
                            "not ready within {READY_TIMEOUT:?} (no {})",
                            r.ready_file.display()
                        ),
                    ));
                }
                std::thread::sleep(POLL);
            }
        }
        Ok(())
    }

    /// Leave them running (`--keep`): `lab down` stops them from the recorded pids.
    pub fn keep(mut self) {
        for r in &mut self.running {
            r.child = None;
        }
        self.running.clear();
    }

    /// Stop every daemon (SIGTERM, SIGKILL after [`STOP_TIMEOUT`]); returns the failures.
    pub fn stop(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        for r in &self.running {
            if r.child.is_some() {
                signal(r.record.pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for r in &mut self.running {
            let Some(child) = r.child.as_mut() else {
                continue;
            };
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                    Ok(None) => {
                        warn!(node = %r.record.node, pid = r.record.pid, "daemon ignored SIGTERM; killing it");
                        let _ = child.kill();
                        if let Err(e) = child.wait() {
                            failures.push(format!("waiting for the daemon of {}: {e}", r.record.node));
                        }
                        break;
                    }
                    Err(e) => {
                        failures.push(format!("waiting for the daemon of {}: {e}", r.record.node));
                        break;
                    }
                }
            }
            r.child = None;
        }
        self.running.clear();
        failures
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for f in self.stop() {
            warn!("{f}");
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory preconditions; the pid is one we started (or, in
    // `stop_recorded`, checked to still be that daemon).
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Whether `pid` is still the daemon of `record`: its command line says `daemon` and names
/// the recorded socket (so a recycled pid is never signalled).
fn is_that_daemon(record: &DaemonRecord) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{}/cmdline", record.pid)) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let socket = record.socket.as_os_str().as_encoded_bytes();
    args.get(1).is_some_and(|a| *a == b"daemon") && args.contains(&socket)
}

/// `lab down`: stop daemons left by `--keep` or a crash (SIGTERM, SIGKILL after
/// [`STOP_TIMEOUT`]). Returns how many were stopped and the failures.
pub fn stop_recorded(records: &[DaemonRecord]) -> (usize, Vec<String>) {
    let alive: Vec<&DaemonRecord> = records.iter().filter(|r| is_that_daemon(r)).collect();
    for r in &alive {
        signal(r.pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while alive.iter().any(|r| is_that_daemon(r)) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    let mut failures = Vec::new();
    for r in alive.iter().filter(|r| is_that_daemon(r)) {
        signal(r.pid, libc::SIGKILL);
        std::thread::sleep(POLL);
        if is_that_daemon(r) {
            failures.push(format!("the daemon of {} (pid {}) does not stop", r.node, r.pid));
        }
    }
    (alive.len(), failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_that_is_not_the_daemon_is_never_signalled() {
        let me = DaemonRecord {
            pid: std::process::id(),
            node: "nalab-n1".into(),
            socket: "/run/netattach-lab/daemons/nalab-n1/run/daemon.sock".into(),
            log: "/dev/null".into(),
        };
        assert!(!is_that_daemon(&me));
        assert_eq!(stop_recorded(&[me]), (0, Vec::new()));
    }
}
