//! A `netattach daemon` process (the real binary, `CARGO_BIN_EXE_netattach`) for the tests that
//! run against a Kubernetes API server: its socket, readiness file, release queue and log in a
//! private temp dir, its metrics on a loopback port it picks (named in its ready file), a node's identity.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netattach_cluster::daemon_api::{Request, Response, read_message, write_message};

/// How long a stopping daemon (SIGTERM on drop) may take before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// One node's daemon. Stopped with SIGTERM (then SIGKILL) when dropped.
pub struct NodeDaemon {
    node: String,
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
    /// Upper bound of [`NodeDaemon::wait_socket`] and [`NodeDaemon::wait_ready`].
    wait: Duration,
    child: Option<Child>,
}

impl NodeDaemon {
    /// Starts the daemon of `node` with `kubeconfig` (it does not wait for it: see
    /// [`NodeDaemon::wait_socket`] and [`NodeDaemon::wait_ready`], which wait at most `wait`).
    pub fn start(node: &str, kubeconfig: &Path, wait: Duration) -> NodeDaemon {
        let mut d = NodeDaemon {
            node: node.to_string(),
            kubeconfig: kubeconfig.to_path_buf(),
            dir: tempfile::Builder::new()
                .prefix("netattach-test-daemon-")
                .tempdir()
                .expect("daemon dir"),
            wait,
            child: None,
        };
        d.spawn();
        d
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run").join("daemon.sock")
    }

    pub fn ready_file(&self) -> PathBuf {
        self.dir.path().join("ready")
    }

    /// Its durable IPAM release queue (`--ipam-queue-dir`).
    pub fn queue_dir(&self) -> PathBuf {
        self.dir.path().join("queue")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Starts the process (again, after [`NodeDaemon::kill`]), with the same files.
    pub fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "{}: the daemon is already running",
            self.node
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("daemon log");
        let child = Command::new(env!("CARGO_BIN_EXE_netattach"))
            .arg("daemon")
            .arg("--node")
            .arg(&self.node)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--socket")
            .arg(self.socket())
            .arg("--ready-file")
            .arg(self.ready_file())
            .args(["--metrics-addr", "127.0.0.1:0"])
            .arg("--ipam-queue-dir")
            .arg(self.queue_dir())
            .env_remove("CNI_COMMAND")
            .env_remove("NODE_NAME")
            .env("NETATTACH_LOG", "info,netattach_daemon=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn netattach daemon");
        self.child = Some(child);
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("daemon running").id()).expect("pid")
    }

    /// Panics with the log when the process has exited.
    fn assert_running(&mut self) {
        if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("{}: the daemon exited with {st}:\n{}", self.node, self.log());
        }
    }

    /// Waits until the socket accepts connections (the IPAM engine serves from then on: it
    /// needs no cache).
    pub fn wait_socket(&mut self) {
        let deadline = Instant::now() + self.wait;
        while UnixStream::connect(self.socket()).is_err() {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{}: no socket within {:?}:\n{}",
                self.node,
                self.wait,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until this process (not a killed predecessor) wrote its readiness file.
    pub fn wait_ready(&mut self) {
        let mine = format!("pid={}\n", self.pid());
        let deadline = Instant::now() + self.wait;
        while !std::fs::read_to_string(self.ready_file()).is_ok_and(|t| t.contains(&mine)) {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{}: daemon not ready within {:?}:\n{}",
                self.node,
                self.wait,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One request, as the shim sends it.
    pub fn send(&self, req: &Request) -> Response {
        let mut s = UnixStream::connect(self.socket())
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.socket().display()));
        write_message(&mut s, req).expect("write request");
        read_message(&mut s).expect("read response")
    }

    /// The sum of the series of metric `name` on `/metrics` whose labels contain `labels`
    /// (0 when there are none).
    pub fn metric_with(&self, name: &str, labels: &str) -> u64 {
        // The port the daemon picked, from its ready file (so: only once it is ready).
        let ready = std::fs::read_to_string(self.ready_file()).expect("ready file (wait_ready first)");
        let addr = ready
            .lines()
            .find_map(|l| l.strip_prefix("metrics="))
            .expect("metrics= in the ready file");
        let mut s = std::net::TcpStream::connect(addr).expect("metrics port");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .expect("request metrics");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read metrics");
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The sum of every series of metric `name`.
    pub fn metric(&self, name: &str) -> u64 {
        self.metric_with(name, "")
    }

    /// SIGKILL (a crash: the socket file stays behind) and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NodeDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill(2) on our own child's pid, not reaped yet (still in `c`).
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + STOP_WAIT;
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
