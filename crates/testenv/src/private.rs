//! A control plane of one test's own ([`PrivateTestenv`]), for tests that stop and restart the
//! kube-apiserver: they must not take the shared instance of [`crate::cluster`] away from the
//! other tests of their binary.
//!
//! `tools/testenv up --dir <tempdir>` starts it; dropping the value runs `tools/testenv down`.
//! [`PrivateTestenv::stop_apiserver`] kills the apiserver (SIGKILL: a crash) and
//! remembers its exact command line and environment; [`PrivateTestenv::start_apiserver`]
//! starts it again the same way (own session, same log file, pid file updated, so `down` still
//! finds it) and waits until it answers.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube::Client;

use crate::{load_config, make_client};

/// How long a start or a stop may take.
const WAIT: Duration = Duration::from_secs(60);

/// A kube-apiserver as it was started: argv and environment.
#[derive(Debug, Clone)]
struct ApiserverCommand {
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

/// A test's own control plane (etcd, kube-apiserver, kube-controller-manager).
#[derive(Debug)]
pub struct PrivateTestenv {
    dir: tempfile::TempDir,
    stopped: Option<ApiserverCommand>,
}

fn testenv_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/testenv")
}

fn split_nul(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn is_gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

impl PrivateTestenv {
    /// Start an instance with `nodes` simulated node identities.
    ///
    /// # Panics
    ///
    /// When `tools/testenv up` fails (its output is in the message).
    pub fn up(nodes: u32) -> PrivateTestenv {
        let dir = tempfile::Builder::new()
            .prefix("netattach-private-testenv-")
            .tempdir()
            .unwrap_or_else(|e| panic!("a temporary directory for a private testenv: {e}"));
        let env = PrivateTestenv { dir, stopped: None };
        let out = Command::new(testenv_script())
            .arg("up")
            .arg("--dir")
            .arg(env.state())
            .arg("--nodes")
            .arg(nodes.to_string())
            .env_remove(crate::ENV_DIR)
            .env_remove("TESTENV_DIR")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running tools/testenv up: {e}"));
        assert!(
            out.status.success(),
            "tools/testenv up --dir {}: {}",
            env.state().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    /// The instance's state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("env")
    }

    /// The admin kubeconfig.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.state().join("kubeconfig").join("admin.kubeconfig")
    }

    /// The kubeconfig of simulated node `node` (`node-1`, ...).
    pub fn node_kubeconfig(&self, node: &str) -> PathBuf {
        self.state().join("kubeconfig").join(format!("{node}.kubeconfig"))
    }

    /// The audit log.
    pub fn audit_log(&self) -> PathBuf {
        self.state().join("logs").join("audit.log")
    }

    /// An admin client (on the caller's runtime).
    ///
    /// # Panics
    ///
    /// When the kubeconfig cannot be loaded.
    pub async fn admin_client(&self) -> Client {
        let config = load_config(&self.admin_kubeconfig())
            .await
            .unwrap_or_else(|e| panic!("admin kubeconfig of the private testenv: {e}"));
        make_client(config)
    }

    fn pid_file(&self) -> PathBuf {
        self.state().join("run").join("kube-apiserver.pid")
    }

    /// Stop the kube-apiserver and wait until it is gone. SIGKILL, a crash: on SIGTERM it kept
    /// answering its open connections for the 3 s its graceful shutdown was given, so a burst
    /// the test meant to interrupt could finish meanwhile (a thousand allocations did).
    ///
    /// # Panics
    ///
    /// When it is not running or does not stop.
    pub fn stop_apiserver(&mut self) {
        assert!(self.stopped.is_none(), "the apiserver is already stopped");
        let pid: i32 = std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}", self.pid_file().display()));
        let argv = split_nul(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default());
        assert!(
            argv.iter().any(|a| a.contains(&*self.state().to_string_lossy())),
            "pid {pid} is not this instance's kube-apiserver: {argv:?}"
        );
        let env = split_nul(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default())
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        // SAFETY: kill(2) on the apiserver this instance started (checked by its command line).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + WAIT;
        while !is_gone(pid) {
            assert!(Instant::now() < deadline, "kube-apiserver {pid} did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stopped = Some(ApiserverCommand { argv, env });
    }

    /// Start the kube-apiserver stopped by [`PrivateTestenv::stop_apiserver`] again, exactly as
    /// it ran, and wait until it answers.
    ///
    /// # Panics
    ///
    /// When it was not stopped, cannot be started, or does not answer within a minute.
    pub async fn start_apiserver(&mut self) {
        let cmd = self
            .stopped
            .take()
            .expect("start_apiserver without stop_apiserver");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state().join("logs").join("kube-apiserver.log"))
            .unwrap_or_else(|e| panic!("apiserver log: {e}"));
        let (program, args) = cmd.argv.split_first().expect("an argv");
        let child = Command::new(program)
            .args(args)
            .env_clear()
            .envs(cmd.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("apiserver log: {e}")))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        std::fs::write(self.pid_file(), format!("{}\n", child.id()))
            .unwrap_or_else(|e| panic!("writing the apiserver pid file: {e}"));
        // The child is left to run (testenv `down` stops it by the pid file); not waited for here.
        drop(child);
        let admin = self.admin_client().await;
        let deadline = Instant::now() + WAIT;
        while admin.apiserver_version().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the restarted kube-apiserver does not answer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PrivateTestenv {
    fn drop(&mut self) {
        let out = Command::new(testenv_script())
            .arg("down")
            .arg("--dir")
            .arg(self.state())
            .stdin(Stdio::null())
            .output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("tools/testenv down --dir {}: {out:?}", self.state().display());
        }
    }
}
