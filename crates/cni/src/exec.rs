//! The runtime side: find a plugin by type on a path list, execute it with environment and
//! stdin under a timeout, and parse its result or error. Used by macvlan to call its IPAM and
//! by anything that drives plugins the way a container runtime does.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::env::{Command, Invocation, join_path};
use crate::error::{CniError, code};
use crate::result::CniResult;

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
    if status.success() {
        return Ok(stdout);
    }
    if let Ok(err) = serde_json::from_slice::<CniError>(&stdout) {
        return Err(err);
    }
    Err(CniError::new(
        code::DELEGATE_FAILED,
        "delegated plugin failed",
        format!(
            "{name} exited with {status} and printed no CNI error (stdout: {:?}); see its stderr",
            String::from_utf8_lossy(&stdout).trim()
        ),
    ))
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
}
