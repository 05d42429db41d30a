//! What the daemon's integration tests share: the daemon as a child process of the test binary
//! itself (re-executed into its `daemon_child_process` test, whose body is
//! [`daemon_child_main`]), a free loopback port for its metrics, and the Node objects of the
//! simulated nodes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use netattach_daemon::DaemonArgs;

/// The body of a test file's ignored `daemon_child_process` test: when `env` is set (to a JSON
/// array of `netattach daemon` flags), parse them as `netattach daemon` does and run the daemon
/// until it stops, exiting with its status; otherwise do nothing.
pub fn daemon_child_main(env: &str) {
    let Ok(flags) = std::env::var(env) else {
        return;
    };
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: DaemonArgs,
    }
    let flags: Vec<String> = match serde_json::from_str(&flags) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{env}: {e}");
            std::process::exit(2);
        }
    };
    // The daemon's own logging (queued, lossy); the parent removed `NETATTACH_LOG` from this
    // process's environment, so the filter is this one.
    let log_queue = netattach_daemon::logging::init("info,netattach_daemon=debug");
    let cli = <Cli as clap::Parser>::parse_from(std::iter::once("netattach-daemon".to_string()).chain(flags));
    let status = match netattach_daemon::run(cli.args) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("netattach daemon: {e}");
            1
        }
    };
    drop(log_queue);
    std::process::exit(status);
}

/// A daemon child process (this test binary in its `daemon_child_process` test), its flags and
/// its log. Killed when dropped.
pub struct DaemonProcess {
    child: Option<Child>,
    env: &'static str,
    flags: Vec<String>,
    log: PathBuf,
    exit_wait: Duration,
    /// How many start lines the log held when the running process was spawned.
    starts_before: usize,
}

/// The line the daemon logs once it listens, with `metrics=<address>`.
const STARTED_LINE: &str = "netattach daemon started";

impl DaemonProcess {
    /// Starts the daemon with `flags` (passed in `env`), its stderr appended to `log`;
    /// [`DaemonProcess::wait_exit`] waits at most `exit_wait`.
    pub fn spawn(env: &'static str, flags: Vec<String>, log: &Path, exit_wait: Duration) -> DaemonProcess {
        let mut p = DaemonProcess {
            child: None,
            env,
            flags,
            log: log.to_path_buf(),
            exit_wait,
            starts_before: 0,
        };
        p.respawn();
        p
    }

    /// Starts the daemon with `flags` (passed in `env`), its stderr a pipe that nobody reads:
    /// the read end is returned, to be kept open and left alone. The daemon has no log file
    /// ([`DaemonProcess::log_text`] is empty).
    #[allow(
        dead_code,
        reason = "used by tests/daemon.rs only; tests/gc.rs shares this module"
    )]
    pub fn spawn_with_unread_stderr(
        env: &'static str,
        flags: Vec<String>,
        exit_wait: Duration,
    ) -> (DaemonProcess, std::process::ChildStderr) {
        let mut p = DaemonProcess {
            child: None,
            env,
            flags,
            log: PathBuf::from("/nonexistent/netattach-daemon-test.log"),
            exit_wait,
            starts_before: 0,
        };
        let mut child = p
            .command()
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the daemon");
        let stderr = child.stderr.take().expect("piped stderr");
        p.child = Some(child);
        (p, stderr)
    }

    /// The daemon child's command, without its stderr.
    fn command(&self) -> Command {
        let mut command = Command::new(std::env::current_exe().expect("current exe"));
        command
            .args([
                "daemon_child_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "-q",
            ])
            .env(self.env, serde_json::to_string(&self.flags).expect("flags"))
            .env_remove("NODE_NAME")
            .env_remove(netattach_plugins::logging::ENV_FILTER)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    /// Starts the daemon again with the same flags and log (after it exited).
    pub fn respawn(&mut self) {
        self.starts_before = self.log_text().matches(STARTED_LINE).count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = self.command().stderr(log).spawn().expect("spawning the daemon");
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("running").id()).expect("pid")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where the running process serves `/metrics` and `/readyz`: the tests pass
    /// `--metrics-addr 127.0.0.1:0` (a port picked up front could be taken before the daemon
    /// binds it), and the daemon logs the address it bound, before its caches sync. Waits for
    /// that line of this process.
    pub fn metrics_addr(&self) -> String {
        let deadline = std::time::Instant::now() + self.exit_wait;
        loop {
            let text = self.log_text();
            let addr = text
                .lines()
                .filter(|l| l.contains(STARTED_LINE))
                .nth(self.starts_before)
                .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("metrics=")));
            if let Some(addr) = addr {
                return addr.to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon logged no metrics address within {:?}:\n{text}",
                self.exit_wait
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of our own child process, which has not been reaped (it is
        // still in `self.child`), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits for the process to exit (at most the `exit_wait` it was spawned with).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let wait = self.exit_wait;
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {wait:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_exit()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Node objects for the simulated nodes, so that the pod garbage collector of
/// kube-controller-manager does not delete pods bound to them as orphans (there is no kubelet:
/// they stay Pending).
pub async fn ensure_nodes(admin: &Client, names: &[&str]) {
    let api: Api<Node> = Api::all(admin.clone());
    for name in names {
        let node = Node {
            metadata: ObjectMeta {
                name: Some((*name).into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating node {name}: {e}"),
        }
    }
}
