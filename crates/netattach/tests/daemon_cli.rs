//! `netattach daemon` as the real binary, without a cluster: flags, start-up errors, the
//! not-ready answer while the API is unreachable, a clean SIGTERM exit and a plain-text log. The
//! daemon's behaviour against a real apiserver is tested in crates/daemon/tests/daemon.rs.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_netattach");

#[test]
fn help_lists_the_daemon_flags() {
    let out = Command::new(BIN)
        .args(["daemon", "--help"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--node",
        "--kubeconfig",
        "--socket",
        "--ready-file",
        "--metrics-addr",
    ] {
        assert!(text.contains(flag), "{flag} missing in\n{text}");
    }
    assert!(
        text.contains("/run/netattach/daemon.sock") && text.contains("127.0.0.1:9464"),
        "{text}"
    );
}

#[test]
fn a_missing_kubeconfig_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args([
            "daemon",
            "--node",
            "n1",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ])
        .arg("--socket")
        .arg(dir.path().join("s/d.sock"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
    assert!(!dir.path().join("s/d.sock").exists());
}

fn ask(socket: &Path, request: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut s = UnixStream::connect(socket).expect("connect");
    s.write_all(request.as_bytes()).expect("write");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("read");
    line
}

/// The daemon child: killed and reaped if the test ends first (a failed assertion), so a
/// failure leaves no daemon behind.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn unreachable_api_means_not_ready_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "t0k3n").expect("token");
    let kubeconfig = dir.path().join("kubeconfig");
    // Port 9 on loopback: nothing listens, every API call is refused locally.
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:9\n\
             users:\n- name: u\n  user:\n    tokenFile: {}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    \
             user: u\ncurrent-context: x\n",
            token.display()
        ),
    )
    .expect("kubeconfig");
    let socket = dir.path().join("run/daemon.sock");
    let ready = dir.path().join("ready");
    let mut running = Running(Some(
        Command::new(BIN)
            .args(["daemon", "--node", "node-x", "--metrics-addr", "127.0.0.1:0"])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--socket")
            .arg(&socket)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        let child = running.0.as_mut().expect("running");
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("exited early: {status}");
        }
        assert!(Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::metadata(&socket).expect("stat").permissions().mode() & 0o777,
        0o600
    );
    let answer = ask(&socket, "{\"op\":\"ready\"}\n");
    assert!(answer.contains("\"code\":11"), "{answer}");
    assert!(!ready.exists());

    let child = running.0.take().expect("running");
    // SAFETY: kill(2) on our own child.
    let rc = unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), libc::SIGTERM) };
    assert_eq!(rc, 0);
    let out = child.wait_with_output().expect("wait");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {log}", out.status);
    assert!(!socket.exists(), "socket left behind");
    assert!(log.contains("shutting down"), "{log}");
    // A log that is not a terminal (a file, the journal, a pod's log) is plain text.
    assert!(!log.contains('\u{1b}'), "ANSI escapes in the log: {log:?}");
    assert!(log.contains(" metrics=127.0.0.1:"), "{log}");
}
