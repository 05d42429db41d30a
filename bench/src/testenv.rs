//! What the Kubernetes benchmarks (`pod-bench`, `ipam-bench`) share: a `tools/testenv` control
//! plane (the one named by `NETATTACH_TESTENV_DIR`, or a private instance started here and torn
//! down on drop), `kubectl` with its admin kubeconfig, and the apiserver audit log.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::common::Error;

/// The repository root (the parent of `bench/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Wall clock in microseconds since the epoch (the audit log's clock: same machine).
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A `tools/testenv` instance: borrowed from the environment or started (and stopped) here.
pub struct Testenv {
    env: BTreeMap<String, String>,
    /// `Some(dir)` when this program started the instance.
    owned: Option<PathBuf>,
}

fn parse_exports(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.split(":\"$PATH\"").next().unwrap_or(v);
            (k.to_string(), v.trim_matches('\'').to_string())
        })
        .collect()
}

impl Testenv {
    /// The running instance of `NETATTACH_TESTENV_DIR`, else a private one in
    /// `<tmp>/<bench>-testenv-<pid>` with `nodes` node identities. Either must have at least
    /// `nodes` node identities.
    pub fn get(bench: &str, nodes: usize) -> Result<Testenv, Error> {
        let te = if let Ok(dir) = std::env::var("NETATTACH_TESTENV_DIR") {
            let text = std::fs::read_to_string(Path::new(&dir).join("env"))
                .map_err(|e| format!("NETATTACH_TESTENV_DIR={dir}: reading env: {e}"))?;
            println!("  using the running testenv in {dir}");
            Testenv {
                env: parse_exports(&text),
                owned: None,
            }
        } else {
            let dir = std::env::temp_dir().join(format!("{bench}-testenv-{}", std::process::id()));
            println!(
                "  starting a private testenv with {nodes} node identities in {} (tools/testenv up)",
                dir.display()
            );
            let mut te = Testenv {
                env: BTreeMap::new(),
                owned: Some(dir.clone()),
            };
            let out = Command::new(repo_root().join("tools/testenv"))
                .args(["up", "--nodes", &nodes.max(1).to_string(), "--dir"])
                .arg(&dir)
                .stderr(Stdio::inherit())
                .output()?;
            if !out.status.success() {
                return Err(format!("tools/testenv up --dir {} failed", dir.display()).into());
            }
            te.env = parse_exports(&String::from_utf8_lossy(&out.stdout));
            te
        };
        let have = te.var("NETATTACH_TESTENV_NODES")?.split_whitespace().count();
        if have < nodes {
            return Err(format!(
                "the testenv has {have} node identities, {bench} needs {nodes}: start it with \
                 tools/testenv up --nodes {nodes}"
            )
            .into());
        }
        Ok(te)
    }

    /// Whether the instance belongs to someone else (objects must be deleted, not the instance).
    pub fn is_shared(&self) -> bool {
        self.owned.is_none()
    }

    /// A variable `tools/testenv up` exported.
    pub fn var(&self, k: &str) -> Result<&str, Error> {
        self.env
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| format!("testenv did not export {k}").into())
    }

    /// The pid of a running control-plane component (`etcd`, `kube-apiserver`, ...), from the
    /// instance's `run/<component>.pid`.
    pub fn component_pid(&self, component: &str) -> Option<u32> {
        let dir = self.var("NETATTACH_TESTENV_DIR").ok()?;
        let path = Path::new(dir).join("run").join(format!("{component}.pid"));
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// The kubeconfig of `node`'s identity (`netattach:node:<node>`).
    pub fn node_kubeconfig(&self, node: &str) -> Result<PathBuf, Error> {
        self.var("NETATTACH_TESTENV_NODE_KUBECONFIGS")?
            .split(',')
            .filter_map(|e| e.split_once('='))
            .find(|(n, _)| *n == node)
            .map(|(_, p)| PathBuf::from(p))
            .ok_or_else(|| format!("testenv has no kubeconfig for {node}").into())
    }
}

impl Drop for Testenv {
    fn drop(&mut self) {
        if let Some(dir) = self.owned.take() {
            println!("  tools/testenv down --dir {}", dir.display());
            let _ = Command::new(repo_root().join("tools/testenv"))
                .args(["down", "--dir"])
                .arg(&dir)
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// `kubectl` with the admin kubeconfig.
pub struct Kubectl {
    pub exe: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String, Error> {
        let mut child = Command::new(&self.exe)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.exe.display()))?;
        if let (Some(data), Some(mut si)) = (stdin, child.stdin.take()) {
            si.write_all(data)?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Deletes every pod of `namespace` at once, forced: there is no kubelet to confirm a
    /// graceful delete, so without it the pods (and their namespace) stay Terminating.
    pub fn force_delete_pods(&self, namespace: &str) -> Result<String, Error> {
        self.run(
            &[
                "delete",
                "pods",
                "--all",
                "-n",
                namespace,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ],
            None,
        )
    }

    pub fn apply(&self, objects: Vec<Value>) -> Result<(), Error> {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        self.run(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&serde_json::to_vec(&list)?),
        )?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The audit log

/// `2026-08-20T08:15:32.123456Z` as microseconds since the epoch.
pub fn parse_ts_us(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, dd) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let rest = rest.strip_suffix('Z')?;
    let (hms, frac) = rest.split_once('.').unwrap_or((rest, ""));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, se) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let mut micros = String::from(frac);
    micros.truncate(6);
    while micros.len() < 6 {
        micros.push('0');
    }
    let us: i64 = micros.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3_600 + mi * 60 + se) * 1_000_000) + us)
}

/// One API request from the audit log.
pub struct ApiRequest {
    pub user: String,
    pub at_us: i64,
    /// "get pods", "update pods/status", "watch network-attachment-definitions", ...
    pub what: String,
}

/// The audit log and the files the apiserver rotated it to (`<stem>-<time>.<ext>` beside it;
/// without `--audit-log-maxsize` it rotates at 100 MB), skipping those last written before
/// `since_us`.
fn audit_files(path: &Path, since_us: i64) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    let (Some(dir), Some(stem), Some(ext)) = (
        path.parent(),
        path.file_stem().and_then(|s| s.to_str()),
        path.extension().and_then(|s| s.to_str()),
    ) else {
        return files;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(&format!("{stem}-")) && name.ends_with(&format!(".{ext}"))) {
            continue;
        }
        let written_us = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_micros()).ok())
            .unwrap_or(i64::MAX);
        if written_us >= since_us {
            files.push(e.path());
        }
    }
    files
}

/// The requests of `users` received at or after `since_us` (microseconds since the epoch),
/// each once (a watch logs two stages), from the audit log and its rotated files.
pub fn read_audit(path: &Path, users: &[&str], since_us: i64) -> Result<Vec<ApiRequest>, Error> {
    let mut text = String::new();
    for f in audit_files(path, since_us) {
        let mut file = std::fs::File::open(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        file.read_to_string(&mut text)
            .map_err(|e| format!("{}: {e}", f.display()))?;
        text.push('\n');
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        // Most lines are other users' (and parsing is the cost): a substring test first.
        if !users.iter().any(|u| line.contains(u)) {
            continue;
        }
        let Ok(ev) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let user = ev["user"]["username"].as_str().unwrap_or_default();
        if !users.contains(&user) {
            continue;
        }
        let id = ev["auditID"].as_str().unwrap_or_default().to_string();
        if !seen.insert(id) {
            continue;
        }
        let Some(at_us) = ev["requestReceivedTimestamp"].as_str().and_then(parse_ts_us) else {
            continue;
        };
        if at_us < since_us {
            continue;
        }
        let obj = &ev["objectRef"];
        let mut resource = obj["resource"].as_str().unwrap_or("?").to_string();
        if let Some(sub) = obj["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let verb = ev["verb"].as_str().unwrap_or("?");
        out.push(ApiRequest {
            user: user.to_string(),
            at_us,
            what: format!("{verb} {resource}"),
        });
    }
    Ok(out)
}
