//! The runtime side: find a plugin by type on a path list, execute it with environment and
//! stdin under a timeout (or, when the binary is this program, run its face in-process), and
//! parse its result or error. Used by macvlan to call its IPAM and by anything that drives
//! plugins the way a container runtime does.

use std::io::{ErrorKind, Read, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::env::{Command, Invocation, join_path};
use crate::error::{CniError, code};
use crate::result::CniResult;
use crate::skel::{Plugin, dispatch};

/// How long a delegated plugin may take before it is killed (whereabouts allows 2 min for ADD;
/// a healthy local call takes milliseconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Finds the executable for a plugin `type` on `path`, as libcni's `FindInPath` does (first
/// match wins). A type containing `/` or `..` is refused so a config cannot name an arbitrary
/// binary.
pub fn find_plugin(plugin_type: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin_type.is_empty() || plugin_type.contains('/') || plugin_type.contains("..") {
        return Err(CniError::invalid_config(format!(
            "plugin type `{plugin_type}` is not a plain binary name; fix: name a plugin in CNI_PATH, like \"whereabouts\", without '/' or '..'"
        )));
    }
    if path.is_empty() {
        return Err(CniError::invalid_env(format!(
            "CNI_PATH is empty, so plugin `{plugin_type}` cannot be found; fix: set CNI_PATH to the CNI bin dir"
        )));
    }
    path.iter().map(|dir| dir.join(plugin_type)).find(|p| is_executable(p)).ok_or_else(|| {
        CniError::invalid_config(format!(
            "plugin type `{plugin_type}` not found in CNI_PATH `{}`; fix: install the plugin there or correct the type",
            join_path(path)
        ))
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Executes `plugin` with `env` added to the inherited environment and `stdin` as its input.
/// Returns stdout on exit 0. A failure becomes the plugin's own CNI error when it printed one,
/// code 104 otherwise; a timeout kills the plugin and is code 11 (try again later).
///
/// The caller blocks on the plugin's stdout (which closes when it exits), so there is no
/// polling delay on the hot path; a watchdog thread kills the plugin at the deadline.
pub fn exec_plugin(
    plugin: &Path,
    env: &[(String, String)],
    stdin: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CniError> {
    let name = plugin.display().to_string();
    let mut child = spawn_with_retry(plugin, env)?;
    let mut child_stdin = child.stdin.take();
    let mut child_stdout = child.stdout.take();
    let child = Arc::new(Mutex::new(child));
    let (done, deadline) = mpsc::channel::<()>();
    let watchdog = {
        let child = Arc::clone(&child);
        std::thread::spawn(move || match deadline.recv_timeout(timeout) {
            Err(RecvTimeoutError::Timeout) => {
                if let Ok(mut c) = child.lock() {
                    // Child::kill is a no-op once the child has been reaped.
                    let _ = c.kill();
                }
                true
            }
            _ => false,
        })
    };
    // A plugin reads its whole config before it answers; a config larger than the pipe buffer
    // only blocks until it does. A plugin that exits without reading closes the pipe: not our
    // failure.
    if let Some(mut s) = child_stdin.take() {
        let _ = s.write_all(stdin);
    }
    let mut stdout = Vec::new();
    if let Some(s) = child_stdout.as_mut() {
        let _ = s.read_to_end(&mut stdout);
    }
    let reaped = wait_after_eof(&child, timeout, &name);
    let _ = done.send(());
    let killed_by_watchdog = watchdog.join().unwrap_or(false);
    let (status, killed_lingering) = reaped?;
    if killed_by_watchdog || killed_lingering {
        return Err(CniError::try_again(format!(
            "plugin {name} did not finish within {}s and was killed; fix: check what it waits for (its log), then retry",
            timeout.as_secs()
        )));
    }
    answer(&name, status.success(), stdout, &format!("exited with {status}"))
}

/// A plugin's answer as the caller gets it: stdout on success; on failure the CNI error it
/// printed, else code 104 naming how it ended.
fn answer(name: &str, success: bool, stdout: Vec<u8>, ending: &str) -> Result<Vec<u8>, CniError> {
    if success {
        return Ok(stdout);
    }
    if let Ok(err) = serde_json::from_slice::<CniError>(&stdout) {
        return Err(err);
    }
    Err(CniError::new(
        code::DELEGATE_FAILED,
        "delegated plugin failed",
        format!(
            "{name} {ending} and printed no CNI error (stdout: {:?}); see its stderr",
            String::from_utf8_lossy(&stdout).trim()
        ),
    ))
}

/// Whether `path` is the executable this process runs from (same device and inode): the
/// usual install links one netattach binary under every plugin name.
pub fn is_this_binary(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), std::fs::metadata("/proc/self/exe")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Runs `plugin` — the face the binary at `exe` would run, which is this very program — in
/// this process instead of executing `exe`: the same environment (`env` over this process's
/// own, as a child inherits it), the same stdin, the same [`dispatch`] a child's `main` runs,
/// and its stdout and exit status read as [`exec_plugin`] reads a child's. It saves a process
/// start (2–3 ms on a small VM) per plugin.
///
/// The call runs on a thread of its own so the deadline still holds: at `timeout` the caller
/// gets code 11 as from a killed child, and the abandoned thread ends with the process (which
/// is about to report the failure and exit). A panic is reported as a crashed plugin.
pub fn run_in_process(
    plugin: Box<dyn Plugin + Send>,
    exe: &Path,
    env: &[(String, String)],
    stdin: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CniError> {
    let name = exe.display().to_string();
    let env = env.to_vec();
    let stdin = stdin.to_vec();
    let (answer_tx, answer_rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("in-process-plugin".into())
        .spawn(move || {
            let get_env = |key: &str| {
                env.iter()
                    .rev()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
                    .or_else(|| std::env::var(key).ok())
            };
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                dispatch(plugin.as_ref(), get_env, &mut &stdin[..])
            }));
            let _ = answer_tx.send(outcome.ok());
        });
    if let Err(e) = spawned {
        return Err(CniError::io(format!("starting a thread for plugin {name}: {e}")));
    }
    match answer_rx.recv_timeout(timeout) {
        Ok(Some(outcome)) => answer(
            &name,
            outcome.exit_code == 0,
            outcome.stdout,
            &format!("(run in-process) ended with exit code {}", outcome.exit_code),
        ),
        Ok(None) | Err(RecvTimeoutError::Disconnected) => Err(CniError::new(
            code::DELEGATE_FAILED,
            "delegated plugin failed",
            format!("{name} (run in-process) panicked; see the stderr for the panic message"),
        )),
        Err(RecvTimeoutError::Timeout) => Err(CniError::try_again(format!(
            "plugin {name} (run in-process) did not finish within {}s; fix: check what it waits for (its log), then retry",
            timeout.as_secs()
        ))),
    }
}

/// Reaps the plugin once its stdout has closed. It normally exits right then; one that closed
/// stdout and lingers is waited for until the deadline and then killed (`true`).
fn wait_after_eof(
    child: &Mutex<Child>,
    timeout: Duration,
    name: &str,
) -> Result<(std::process::ExitStatus, bool), CniError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(20);
    loop {
        let mut c = child
            .lock()
            .map_err(|_| CniError::internal(format!("plugin {name}: lock poisoned")))?;
        match c.try_wait() {
            Ok(Some(status)) => return Ok((status, false)),
            Ok(None) if Instant::now() >= deadline => {
                let _ = c.kill();
                let status = c
                    .wait()
                    .map_err(|e| CniError::io(format!("waiting for plugin {name}: {e}")))?;
                return Ok((status, true));
            }
            Ok(None) => {}
            Err(e) => return Err(CniError::io(format!("waiting for plugin {name}: {e}"))),
        }
        drop(c);
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

fn spawn_with_retry(plugin: &Path, env: &[(String, String)]) -> Result<Child, CniError> {
    let mut delay = Duration::from_millis(20);
    for attempt in 0.. {
        let spawned = std::process::Command::new(plugin)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        match spawned {
            Ok(c) => return Ok(c),
            // A plugin being replaced on disk: libcni retries 5 times too.
            Err(e) if e.kind() == ErrorKind::ExecutableFileBusy && attempt < 5 => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            Err(e) => {
                return Err(CniError::io(format!(
                    "executing plugin {}: {e}",
                    plugin.display()
                )));
            }
        }
    }
    Err(CniError::internal("unreachable retry loop"))
}

/// Calls a delegated plugin (normally IPAM) the way the spec says: same stdin, same
/// environment, only `CNI_COMMAND` replaced. ADD returns the parsed result; the other commands
/// return `None`.
pub fn delegate(
    command: Command,
    plugin_type: &str,
    conf_bytes: &[u8],
    inv: &Invocation,
    timeout: Duration,
) -> Result<Option<CniResult>, CniError> {
    let plugin = find_plugin(plugin_type, &inv.path)?;
    let stdout = exec_plugin(&plugin, &inv.delegate_env(command), conf_bytes, timeout)
        .map_err(|e| e.context(format!("{plugin_type} {command}")))?;
    if command != Command::Add {
        return Ok(None);
    }
    CniResult::from_slice(&stdout)
        .map(Some)
        .map_err(|e| e.context(format!("{plugin_type} ADD result")))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    #[test]
    fn refuses_types_with_paths() {
        for t in ["../bin/sh", "/bin/sh", "a/b", "..", ""] {
            let err = find_plugin(t, &[PathBuf::from("/usr/bin")]).expect_err(t);
            assert_eq!(err.code, code::INVALID_NETWORK_CONFIG, "{t}");
        }
    }

    #[test]
    fn finds_the_first_executable_match() {
        let a = tempfile::tempdir().expect("tmp");
        let b = tempfile::tempdir().expect("tmp");
        std::fs::write(a.path().join("p"), "not executable").expect("write");
        let want = script(b.path(), "p", "exit 0");
        let found = find_plugin("p", &[a.path().into(), b.path().into()]).expect("found");
        assert_eq!(found, want);
        let err = find_plugin("missing", &[a.path().into()]).expect_err("missing");
        assert!(err.details.contains("missing"));
        assert!(err.details.contains(&a.path().display().to_string()));
    }

    #[test]
    fn passes_env_and_stdin_and_returns_stdout() {
        let d = tempfile::tempdir().expect("tmp");
        let p = script(
            d.path(),
            "echoer",
            r#"printf '{"cmd":"%s",' "$CNI_COMMAND"; printf '"in":'; cat; printf '}'"#,
        );
        let out = exec_plugin(
            &p,
            &[("CNI_COMMAND".into(), "ADD".into())],
            br#"{"a":1}"#,
            DEFAULT_TIMEOUT,
        )
        .expect("ok");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["cmd"], "ADD");
        assert_eq!(v["in"]["a"], 1);
    }

    #[test]
    fn propagates_the_plugins_cni_error() {
        let d = tempfile::tempdir().expect("tmp");
        let p = script(
            d.path(),
            "fails",
            r#"echo '{"code":7,"msg":"bad","details":"field x"}'; exit 1"#,
        );
        let err = exec_plugin(&p, &[], b"{}", DEFAULT_TIMEOUT).expect_err("fails");
        assert_eq!(err, CniError::new(7, "bad", "field x"));
        let p = script(d.path(), "crashes", "echo boom >&2; exit 3");
        let err = exec_plugin(&p, &[], b"{}", DEFAULT_TIMEOUT).expect_err("fails");
        assert_eq!(err.code, code::DELEGATE_FAILED);
    }

    #[test]
    fn kills_a_plugin_that_closes_stdout_and_lingers() {
        let d = tempfile::tempdir().expect("tmp");
        let p = script(d.path(), "lingers", "exec >&-; exec sleep 30");
        let started = Instant::now();
        let err = exec_plugin(&p, &[], b"{}", Duration::from_millis(200)).expect_err("killed");
        assert_eq!(err.code, code::TRY_AGAIN_LATER);
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn kills_a_plugin_that_hangs() {
        let d = tempfile::tempdir().expect("tmp");
        let p = script(d.path(), "hangs", "exec sleep 30");
        let started = Instant::now();
        let err = exec_plugin(&p, &[], b"{}", Duration::from_millis(200)).expect_err("timeout");
        assert_eq!(err.code, code::TRY_AGAIN_LATER);
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    /// A face for the in-process tests: ADD answers with the container id and ifname it was
    /// given (as an address-less interface), DEL fails with code 7, CHECK panics, STATUS hangs.
    struct Face;

    impl Plugin for Face {
        fn about(&self) -> String {
            "test face".into()
        }
        fn add(&self, req: &crate::skel::Request) -> Result<CniResult, CniError> {
            Ok(CniResult {
                interfaces: vec![crate::result::Interface {
                    name: format!("{}-{}", req.inv.container_id, req.inv.ifname),
                    ..Default::default()
                }],
                ..Default::default()
            })
        }
        fn del(&self, _: &crate::skel::Request) -> Result<(), CniError> {
            Err(CniError::new(7, "bad", "field x"))
        }
        fn check(&self, _: &crate::skel::Request) -> Result<(), CniError> {
            panic!("check is broken")
        }
        fn status(&self, _: &crate::skel::Request) -> Result<(), CniError> {
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        }
        fn gc(&self, _: &crate::skel::Request) -> Result<(), CniError> {
            Ok(())
        }
    }

    fn face_env(command: &str) -> Vec<(String, String)> {
        [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "net1"),
            ("CNI_NETNS", "/var/run/netns/test"),
            ("CNI_PATH", "/nonexistent"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
    }

    const FACE_CONF: &[u8] = br#"{"cniVersion":"1.0.0","name":"n","type":"face"}"#;

    #[test]
    fn in_process_answers_as_a_child_would() {
        let exe = Path::new("/opt/cni/bin/face");
        let out = run_in_process(Box::new(Face), exe, &face_env("ADD"), FACE_CONF, DEFAULT_TIMEOUT)
            .expect("ADD answers");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["cniVersion"], "1.0.0", "printed in the config's version: {v}");
        assert_eq!(v["interfaces"][0]["name"], "c1-net1", "env reached the face: {v}");

        // The face's own CNI error, exactly as exec_plugin returns a child's.
        let err = run_in_process(Box::new(Face), exe, &face_env("DEL"), FACE_CONF, DEFAULT_TIMEOUT)
            .expect_err("DEL fails");
        assert_eq!(
            (err.code, err.msg.as_str(), err.details.as_str()),
            (7, "bad", "field x")
        );

        // A config the skeleton refuses fails before the face runs, as in a child.
        let err = run_in_process(
            Box::new(Face),
            exe,
            &face_env("ADD"),
            b"not json",
            DEFAULT_TIMEOUT,
        )
        .expect_err("bad stdin");
        assert_eq!(err.code, code::DECODING_FAILURE);
    }

    #[test]
    fn in_process_panic_and_deadline_are_reported_like_a_crashed_or_killed_child() {
        let exe = Path::new("/opt/cni/bin/face");
        let err = run_in_process(
            Box::new(Face),
            exe,
            &face_env("CHECK"),
            FACE_CONF,
            DEFAULT_TIMEOUT,
        )
        .expect_err("CHECK panics");
        assert_eq!(err.code, code::DELEGATE_FAILED);
        assert!(
            err.details.contains("panicked") && err.details.contains("/opt/cni/bin/face"),
            "{err}"
        );

        let started = Instant::now();
        let err = run_in_process(
            Box::new(Face),
            exe,
            &face_env("STATUS"),
            br#"{"cniVersion":"1.1.0","name":"n","type":"face"}"#,
            Duration::from_millis(200),
        )
        .expect_err("STATUS outlives the deadline");
        assert_eq!(err.code, code::TRY_AGAIN_LATER, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the caller did not wait for the face"
        );
    }

    #[test]
    fn only_the_running_executable_is_this_binary() {
        let me = std::fs::read_link("/proc/self/exe").expect("exe");
        assert!(is_this_binary(&me));
        let d = tempfile::tempdir().expect("tmp");
        let copy = d.path().join("copy");
        std::fs::copy(&me, &copy).expect("copy");
        assert!(!is_this_binary(&copy), "a copy is another file");
        let link = d.path().join("link");
        if std::fs::hard_link(&me, &link).is_ok() {
            assert!(is_this_binary(&link), "a hard link is the same file");
        }
        assert!(!is_this_binary(&d.path().join("missing")));
    }
}
