//! Running one delegate — always a conflist — with the CNI runtime protocol, the way libcni's
//! `AddNetworkList`/`DelNetworkList`/`CheckNetworkList`/`GetStatusNetworkList`/`GCNetworkList`
//! do.
//!
//! Per plugin, the stdin comes from [`netattach_cluster::plugin_request`] (list `name` and
//! `cniVersion` injected, `prevResult` chained, `runtimeConfig` filtered by the plugin's
//! capabilities); the executable is found on `binDir` + `CNI_PATH`; the environment is the
//! delegate's (`CNI_IFNAME` = the delegate's interface, `CNI_ARGS` = the pod's args plus the
//! delegate's extra pairs). A plugin whose binary is this very program (the usual install: one
//! file linked under every name) runs in-process ([`netattach_cni::exec::run_in_process`]):
//! same environment, stdin, answer and deadline, minus a process start.
//!
//! As in libcni: ADD runs the plugins in order and chains each result into the next; DEL runs
//! them in reverse with the cached ADD result as `prevResult` (0.4.0 and newer); CHECK needs
//! 0.4.0 and honours `disableCheck`; STATUS and GC need 1.1.0 (older lists are skipped) and GC
//! honours `disableGC`. Unlike libcni, DEL does not stop at the first failing plugin: every
//! plugin is tried and every failure is reported, so a broken link never keeps an address
//! allocated.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Map, Value};

use netattach_cluster::record::RecordedDelegate;
use netattach_cluster::{Error as ClusterError, plugin_request};
use netattach_cni::Version;
use netattach_cni::env::{Command, join_path};
use netattach_cni::error::CniError;
use netattach_cni::exec::{DEFAULT_TIMEOUT, exec_plugin, find_plugin, is_this_binary, run_in_process};
use netattach_cni::skel::Plugin;

/// The environment shared by every plugin of one delegate call.
#[derive(Debug, Clone)]
pub struct Env<'a> {
    /// `CNI_CONTAINERID` (empty for STATUS and GC).
    pub container_id: &'a str,
    /// `CNI_NETNS`, when there is one.
    pub netns: Option<&'a Path>,
    /// `CNI_ARGS`, already rendered.
    pub args: String,
    /// `binDir` followed by the runtime's `CNI_PATH`.
    pub path: &'a [PathBuf],
}

/// A delegate's conflist, parsed once.
#[derive(Debug, Clone)]
pub struct Conflist {
    value: Value,
    version: Option<Version>,
}

impl Conflist {
    /// Parses the conflist bytes of a delegate.
    pub fn parse(bytes: &[u8], network: &str) -> Result<Conflist, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::decode(format!(
                "the stored config of network `{network}` is not JSON ({e}); fix: inspect the attachment record"
            ))
        })?;
        let version = value
            .get("cniVersion")
            .and_then(Value::as_str)
            .and_then(|v| Version::from_str(v).ok());
        Ok(Conflist { value, version })
    }

    /// The plugins' types, in order.
    pub fn plugin_types(&self) -> Vec<String> {
        self.value
            .get("plugins")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        p.get("type")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the list's version is at least `v` (an unknown version is let through: the
    /// plugin will say what it thinks of it).
    fn at_least(&self, v: Version) -> bool {
        self.version.is_none_or(|have| have >= v)
    }

    fn flag(&self, key: &str) -> bool {
        self.value.get(key).and_then(Value::as_bool).unwrap_or(false)
    }

    /// The conflist's `name`.
    pub fn name(&self) -> &str {
        self.value.get("name").and_then(Value::as_str).unwrap_or_default()
    }
}

fn request(
    list: &Conflist,
    index: usize,
    runtime_config: &Map<String, Value>,
    prev: Option<&Value>,
) -> Result<Vec<u8>, CniError> {
    plugin_request(&list.value, index, runtime_config, prev).map_err(|e: ClusterError| e.into())
}

fn exec(
    command: Command,
    plugin_type: &str,
    stdin: &[u8],
    ifname: &str,
    env: &Env<'_>,
) -> Result<Vec<u8>, CniError> {
    let exe = find_plugin(plugin_type, env.path)?;
    let mut vars = vec![
        ("CNI_COMMAND".to_string(), command.as_str().to_string()),
        ("CNI_CONTAINERID".to_string(), env.container_id.to_string()),
        ("CNI_IFNAME".to_string(), ifname.to_string()),
        ("CNI_ARGS".to_string(), env.args.clone()),
        ("CNI_PATH".to_string(), join_path(env.path)),
    ];
    if let Some(ns) = env.netns {
        vars.push(("CNI_NETNS".to_string(), ns.display().to_string()));
    }
    let answer = match in_process_face(plugin_type, &exe) {
        Some(face) => {
            tracing::debug!(%command, plugin = plugin_type, ifname, "running delegate plugin in-process");
            run_in_process(face, &exe, &vars, stdin, DEFAULT_TIMEOUT)
        }
        None => {
            tracing::debug!(%command, plugin = plugin_type, ifname, "running delegate plugin");
            exec_plugin(&exe, &vars, stdin, DEFAULT_TIMEOUT)
        }
    };
    answer.map_err(|e| e.context(format!("{plugin_type} {command}")))
}

/// The face to run in-process for a delegate plugin `plugin_type` found at `exe`: only when
/// `exe` is this very binary and the face is one of the plugins (`macvlan`, `whereabouts`).
/// Anything else — another program under the name, a different netattach build renamed into
/// place, the meta-plugin itself — is executed.
fn in_process_face(plugin_type: &str, exe: &Path) -> Option<Box<dyn Plugin + Send>> {
    if !matches!(plugin_type, "macvlan" | "whereabouts") || !is_this_binary(exe) {
        return None;
    }
    crate::plugin_for(plugin_type)
}

/// ADD: every plugin in order, each result chained into the next; returns the last result as
/// the plugin printed it.
pub fn add(d: &RecordedDelegate, env: &Env<'_>) -> Result<Value, CniError> {
    let list = Conflist::parse(&d.conf_bytes, &d.network_name)?;
    let mut prev: Option<Value> = None;
    for (i, t) in list.plugin_types().iter().enumerate() {
        let stdin = request(&list, i, &d.runtime_config, prev.as_ref())?;
        let out = exec(Command::Add, t, &stdin, &d.ifname, env)?;
        let result: Value = serde_json::from_slice(&out).map_err(|e| {
            CniError::decode(format!(
                "{t} ADD printed no JSON result ({e}): {:?}",
                String::from_utf8_lossy(&out).trim()
            ))
        })?;
        prev = Some(result);
    }
    prev.ok_or_else(|| CniError::invalid_config(format!("network `{}` has no plugins", d.network_name)))
}

/// DEL: every plugin in reverse, `prevResult` = the recorded result (0.4.0 and newer). Every
/// plugin is tried; all failures are returned.
pub fn del(d: &RecordedDelegate, env: &Env<'_>) -> Vec<CniError> {
    let list = match Conflist::parse(&d.conf_bytes, &d.network_name) {
        Ok(l) => l,
        Err(e) => return vec![e],
    };
    let prev = d.result.as_ref().filter(|_| list.at_least(Version::V0_4_0));
    let mut errors = Vec::new();
    for (i, t) in list.plugin_types().iter().enumerate().rev() {
        let outcome = request(&list, i, &d.runtime_config, prev)
            .and_then(|stdin| exec(Command::Del, t, &stdin, &d.ifname, env));
        if let Err(e) = outcome {
            errors.push(e);
        }
    }
    errors
}

/// CHECK: every plugin in order with the recorded result; skipped below 0.4.0 or with
/// `disableCheck`.
pub fn check(d: &RecordedDelegate, env: &Env<'_>) -> Result<(), CniError> {
    let list = Conflist::parse(&d.conf_bytes, &d.network_name)?;
    if !list.at_least(Version::V0_4_0) || list.flag("disableCheck") {
        tracing::debug!(network = %d.network_name, "CHECK skipped (version below 0.4.0 or disableCheck)");
        return Ok(());
    }
    let prev = d.result.as_ref().ok_or_else(|| {
        CniError::new(
            netattach_cni::code::CHECK_FAILED,
            "attachment differs from ADD",
            format!(
                "network `{}` (interface `{}`) has no recorded ADD result: its ADD never finished; fix: delete the pod so it is recreated",
                d.network_name, d.ifname
            ),
        )
    })?;
    for (i, t) in list.plugin_types().iter().enumerate() {
        let stdin = request(&list, i, &d.runtime_config, Some(prev))?;
        exec(Command::Check, t, &stdin, &d.ifname, env)?;
    }
    Ok(())
}

/// STATUS: every plugin in order; lists below 1.1.0 are skipped.
pub fn status(list: &Conflist, env: &Env<'_>) -> Result<(), CniError> {
    if !list.at_least(Version::V1_1_0) {
        tracing::debug!(network = list.name(), "STATUS skipped (version below 1.1.0)");
        return Ok(());
    }
    for (i, t) in list.plugin_types().iter().enumerate() {
        let stdin = request(list, i, &Map::new(), None)?;
        exec(Command::Status, t, &stdin, "", env)?;
    }
    Ok(())
}

/// GC: every plugin with `cni.dev/valid-attachments` = `valid`; lists below 1.1.0 or with
/// `disableGC` are skipped. Every plugin is tried; all failures are returned.
pub fn gc(list: &Conflist, valid: &[Value], env: &Env<'_>) -> Vec<CniError> {
    if !list.at_least(Version::V1_1_0) || list.flag("disableGC") {
        tracing::debug!(
            network = list.name(),
            "GC skipped (version below 1.1.0 or disableGC)"
        );
        return Vec::new();
    }
    let mut errors = Vec::new();
    for (i, t) in list.plugin_types().iter().enumerate() {
        let outcome = request(list, i, &Map::new(), None).and_then(|stdin| {
            let mut v: Value = serde_json::from_slice(&stdin)
                .map_err(|e| CniError::internal(format!("GC request does not re-parse: {e}")))?;
            if let Value::Object(o) = &mut v {
                o.insert("cni.dev/valid-attachments".into(), Value::Array(valid.to_vec()));
            }
            let bytes = serde_json::to_vec(&v)
                .map_err(|e| CniError::internal(format!("GC request does not serialize: {e}")))?;
            exec(Command::Gc, t, &bytes, "", env)
        });
        if let Err(e) = outcome {
            errors.push(e.context(format!("network `{}`", list.name())));
        }
    }
    errors
}
