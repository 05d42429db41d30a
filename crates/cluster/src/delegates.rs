//! Delegate resolution: which networks a pod gets, in which order, on which interface, with
//! which config, runtimeConfig and CNI_ARGS — the Multus delegate contract — plus libcni's
//! per-plugin request building (`buildOneConfig`).
//!
//! Order (Multus §3.1): the cluster network first (interface `CNI_IFNAME`; replaced for this
//! pod by the `v1.multus-cni.io/default-network` NAD, looked up in `multusNamespace`), then
//! `defaultNetworks` (not for pods in `systemNamespaces`), then the
//! `k8s.v1.cni.cncf.io/networks` entries in annotation order. Interface names: the requested
//! name, else `CNI_IFNAME` for the cluster network, else `net<index>` where index is the
//! position in the whole list (a named attachment still uses up its index).
//!
//! Config: a NAD's `spec.config` (with its `name` injected when missing); an empty
//! `spec.config` means the file in `confDir` whose CNI `name` is the NAD's name. A missing
//! `cniVersion` is filled from the meta config. Every delegate's config is normalised to a
//! conflist (a single plugin config becomes the only plugin, as libcni's `ConfListFromConf`).
//! The annotation's `cni-args` are merged into every plugin's `args.cni` (annotation wins).
//!
//! This module is pure except for [`DirConfSource`], the one place that reads CNI config files.
//!
//! Deliberate differences from Multus:
//! - runtimeConfig for non-cluster networks carries only the annotation's requests, never the
//!   runtime's (kubelet's `portMappings`/`bandwidth` belong to the cluster network): the CRD
//!   standard §7.5 requires this, Multus violates it. Requests for a capability no plugin of the
//!   delegate declares are dropped (as libcni does) and logged at warn.
//! - duplicate interface names are refused at resolution, before anything runs (Multus finds
//!   out in the netns).
//! - a broken file in `confDir` is skipped (with a warning) while searching by name, instead
//!   of failing every lookup; an explicitly named file must parse.
//! - `clusterNetwork` may be left out (auto-detection); "no cluster network config yet" is a
//!   retryable error (code 11), because at boot flannel writes its config late.
//! - a NAD source error other than "not found" is not papered over by a file lookup.
//! - no device-plugin resources: a NAD's `resourceName` is passed through, the kubelet query
//!   and the `deviceID`/`pciBusID` injection belong to the daemon.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use netattach_cni::CniArgs;
use netattach_cni::error::code;

use crate::annotation::{
    DEFAULT_NETWORK_ANNOTATION, NETWORKS_ANNOTATION, NetworkSelection, parse_default_network, parse_networks,
};
use crate::error::{AnnotationError, ConfigError, Error};
use crate::meta_config::{MetaConfig, PLUGIN_TYPE};
use crate::util::ifname_problem;

/// The pod, as far as resolution needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

/// A NetworkAttachmentDefinition, as far as resolution needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Nad {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.config` (may be empty).
    pub config: String,
    /// The `k8s.v1.cni.cncf.io/resourceName` annotation.
    pub resource_name: Option<String>,
}

/// A NAD or config source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// What happened, with the fix when there is one.
    pub message: String,
    /// Whether trying again later may succeed (cache not synced, API unreachable).
    pub retryable: bool,
}

impl SourceError {
    /// A transient failure (CNI code 11).
    pub fn retryable(message: impl Into<String>) -> Self {
        SourceError {
            message: message.into(),
            retryable: true,
        }
    }

    /// A permanent failure.
    pub fn fatal(message: impl Into<String>) -> Self {
        SourceError {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Where NADs come from: the daemon's watch cache, the API, or files (the lab).
pub trait NadSource {
    /// The NAD `namespace/name`, `Ok(None)` when it does not exist.
    fn get(&self, namespace: &str, name: &str) -> Result<Option<Nad>, SourceError>;
}

/// One CNI config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfFile {
    /// Its path.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Where CNI config files come from.
pub trait ConfSource {
    /// The `.conf`, `.conflist` and `.json` files directly in `dir`, sorted by file name; empty
    /// when `dir` does not exist.
    fn files_in(&self, dir: &Path) -> Result<Vec<ConfFile>, SourceError>;
    /// One file; `Ok(None)` when it does not exist.
    fn file(&self, path: &Path) -> Result<Option<ConfFile>, SourceError>;
    /// Whether `path` is a directory.
    fn is_dir(&self, path: &Path) -> Result<bool, SourceError>;
}

const CONF_EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

fn has_conf_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| CONF_EXTENSIONS.contains(&e))
}

/// [`ConfSource`] on the real filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirConfSource;

impl ConfSource for DirConfSource {
    fn files_in(&self, dir: &Path) -> Result<Vec<ConfFile>, SourceError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(SourceError::fatal(format!(
                    "reading CNI config directory `{}`: {e}",
                    dir.display()
                )));
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| has_conf_extension(p) && p.is_file())
            .collect();
        paths.sort();
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            if let Some(f) = self.file(&path)? {
                out.push(f);
            }
        }
        Ok(out)
    }

    fn file(&self, path: &Path) -> Result<Option<ConfFile>, SourceError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(ConfFile {
                path: path.to_path_buf(),
                bytes,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SourceError::fatal(format!(
                "reading CNI config `{}`: {e}",
                path.display()
            ))),
        }
    }

    fn is_dir(&self, path: &Path) -> Result<bool, SourceError> {
        Ok(path.is_dir())
    }
}

/// [`ConfSource`] in memory: for tests and the lab.
#[derive(Debug, Clone, Default)]
pub struct MemConfSource {
    files: BTreeMap<PathBuf, Vec<u8>>,
}

impl MemConfSource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a file.
    pub fn insert(&mut self, path: impl Into<PathBuf>, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.files.insert(path.into(), bytes.into());
        self
    }
}

impl ConfSource for MemConfSource {
    fn files_in(&self, dir: &Path) -> Result<Vec<ConfFile>, SourceError> {
        Ok(self
            .files
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir) && has_conf_extension(p))
            .map(|(p, b)| ConfFile {
                path: p.clone(),
                bytes: b.clone(),
            })
            .collect())
    }

    fn file(&self, path: &Path) -> Result<Option<ConfFile>, SourceError> {
        Ok(self.files.get(path).map(|b| ConfFile {
            path: path.to_path_buf(),
            bytes: b.clone(),
        }))
    }

    fn is_dir(&self, path: &Path) -> Result<bool, SourceError> {
        Ok(self.files.keys().any(|p| p.parent() == Some(path)))
    }
}

/// [`NadSource`] in memory: for tests.
#[derive(Debug, Clone, Default)]
pub struct MemNadSource {
    nads: BTreeMap<(String, String), Nad>,
}

impl MemNadSource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a NAD.
    pub fn insert(&mut self, nad: Nad) -> &mut Self {
        self.nads.insert((nad.namespace.clone(), nad.name.clone()), nad);
        self
    }
}

impl NadSource for MemNadSource {
    fn get(&self, namespace: &str, name: &str) -> Result<Option<Nad>, SourceError> {
        Ok(self.nads.get(&(namespace.to_string(), name.to_string())).cloned())
    }
}

/// The capabilities netattach fills from the annotation, as (runtimeConfig key).
pub const ANNOTATION_CAPABILITIES: &[&str] = &[
    "ips",
    "mac",
    "portMappings",
    "bandwidth",
    "infinibandGUID",
    "deviceID",
];

/// One network to attach, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Delegate {
    /// `<ns>/<nad>` for a NAD, the CNI config name for a network from a file.
    pub network_name: String,
    /// The interface name in the pod (`CNI_IFNAME` for the delegate).
    pub ifname: String,
    /// The delegate's config, always a conflist.
    pub conf_bytes: Vec<u8>,
    /// True for the cluster network (the first delegate).
    pub is_default: bool,
    /// The annotation element that asked for it, if any.
    pub selection: Option<NetworkSelection>,
    /// The runtimeConfig, only with capabilities some plugin of the delegate declares.
    pub runtime_config: Map<String, Value>,
    /// Extra CNI_ARGS pairs (`MAC=`, `IP=`), appended to the pod's.
    pub cni_args: Vec<(String, String)>,
    /// Multus `IsFilterV4Gateway`: another network asked for the IPv4 default route.
    pub filter_v4_gateway: bool,
    /// Multus `IsFilterV6Gateway`: another network asked for the IPv6 default route.
    pub filter_v6_gateway: bool,
    /// The NAD's device-plugin resource, if any.
    pub resource_name: Option<String>,
}

impl Delegate {
    /// The conflist as JSON.
    pub fn conflist(&self) -> Result<Value, Error> {
        serde_json::from_slice(&self.conf_bytes).map_err(|e| {
            Error::Config(ConfigError::new(
                format!("delegate {}", self.network_name),
                "(conflist)",
                None,
                format!("is not JSON ({e})"),
                "this is a bug; report it",
            ))
        })
    }
}

/// A config normalised to a conflist, with its name.
struct Loaded {
    name: String,
    conflist: Map<String, Value>,
}

fn cfg_err(
    source: &str,
    field: &str,
    value: Option<&Value>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> Error {
    Error::Config(ConfigError::new(
        source,
        field,
        value.map(Value::to_string),
        problem,
        fix,
    ))
}

/// Normalises a parsed CNI config (single or list) into a conflist: injects `name` when
/// missing (`fallback_name`) and `cniVersion` when missing, checks `type`/`plugins`.
fn normalize(
    source: &str,
    mut obj: Map<String, Value>,
    cni_version: &str,
    fallback_name: Option<&str>,
    force_list: bool,
) -> Result<Loaded, Error> {
    let name_missing = match obj.get("name") {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(other) => {
            return Err(cfg_err(
                source,
                "name",
                Some(other),
                "is not a string",
                "write \"name\" as a JSON string",
            ));
        }
    };
    if name_missing {
        match fallback_name {
            Some(n) => {
                obj.insert("name".into(), Value::from(n));
            }
            None => {
                return Err(cfg_err(
                    source,
                    "name",
                    None,
                    "is missing",
                    "give the network a \"name\"",
                ));
            }
        }
    }
    match obj.get("cniVersion") {
        None | Some(Value::Null) => {
            obj.insert("cniVersion".into(), Value::from(cni_version));
        }
        Some(Value::String(s)) if s.is_empty() => {
            obj.insert("cniVersion".into(), Value::from(cni_version));
        }
        Some(Value::String(_)) => {}
        Some(other) => {
            return Err(cfg_err(
                source,
                "cniVersion",
                Some(other),
                "is not a string",
                "write \"cniVersion\": \"1.0.0\"",
            ));
        }
    }
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let has_type = obj
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    if has_type && !force_list {
        let version = obj.get("cniVersion").cloned().unwrap_or(Value::Null);
        let mut list = Map::new();
        list.insert("cniVersion".into(), version);
        list.insert("name".into(), Value::from(name.clone()));
        list.insert("plugins".into(), Value::Array(vec![Value::Object(obj)]));
        return Ok(Loaded { name, conflist: list });
    }
    let plugins = match obj.get("plugins") {
        Some(Value::Array(p)) if !p.is_empty() => p,
        Some(Value::Array(_)) => {
            return Err(cfg_err(
                source,
                "plugins",
                Some(&Value::Array(Vec::new())),
                "is empty",
                "list at least one plugin",
            ));
        }
        Some(other) => {
            return Err(cfg_err(
                source,
                "plugins",
                Some(other),
                "is not a list",
                "write \"plugins\": [{\"type\": \"macvlan\", …}]",
            ));
        }
        None => {
            return Err(cfg_err(
                source,
                "type",
                obj.get("type"),
                "is missing and there is no \"plugins\" list",
                "set \"type\" to the plugin binary (like \"macvlan\"), or write a conflist with \"plugins\"",
            ));
        }
    };
    for (i, p) in plugins.iter().enumerate() {
        let ok = p
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty());
        if !ok {
            return Err(cfg_err(
                source,
                &format!("plugins[{i}].type"),
                p.get("type"),
                "is missing or empty",
                "set \"type\" to the plugin binary, like \"macvlan\"",
            ));
        }
    }
    Ok(Loaded { name, conflist: obj })
}

fn parse_object(source: &str, field: &str, bytes: &[u8]) -> Result<Map<String, Value>, Error> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(other) => Err(cfg_err(
            source,
            field,
            Some(&other),
            "is not a JSON object",
            "write the CNI config as a JSON object",
        )),
        Err(e) => Err(cfg_err(
            source,
            field,
            None,
            format!("is not valid JSON ({e})"),
            "fix the JSON syntax",
        )),
    }
}

fn load_file(file: &ConfFile, cni_version: &str) -> Result<Loaded, Error> {
    let source = file.path.display().to_string();
    let obj = parse_object(&source, "(file)", &file.bytes)?;
    let is_list = file.path.extension().and_then(|e| e.to_str()) == Some("conflist");
    normalize(&source, obj, cni_version, None, is_list)
}

fn plugin_types(conflist: &Map<String, Value>) -> Vec<&str> {
    conflist
        .get("plugins")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p.get("type").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// Capabilities some plugin of the conflist declares (`capabilities: {cap: true}`).
pub(crate) fn declared_capabilities(conflist: &Map<String, Value>) -> Vec<String> {
    let mut caps: Vec<String> = Vec::new();
    for p in conflist
        .get("plugins")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for (k, v) in p
            .get("capabilities")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if v.as_bool() == Some(true) && !caps.contains(k) {
                caps.push(k.clone());
            }
        }
    }
    caps
}

/// Searches `dir` for the config whose CNI `name` is `name` (`None`: the first usable one,
/// skipping configs of netattach or Multus themselves and the meta config's own name).
fn find_in_dir(
    confs: &dyn ConfSource,
    dir: &Path,
    name: Option<&str>,
    meta: &MetaConfig,
) -> Result<Result<Loaded, String>, Error> {
    let files = confs.files_in(dir)?;
    let mut seen = Vec::new();
    for f in &files {
        let file_name = f
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let loaded = match load_file(f, meta.cni_version.as_str()) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(file = %f.path.display(), error = %e, "skipping unusable CNI config file");
                seen.push(format!("{file_name} (unusable: {e})"));
                continue;
            }
        };
        let ours = plugin_types(&loaded.conflist)
            .iter()
            .any(|t| matches!(*t, PLUGIN_TYPE | "multus" | "multus-shim"))
            || loaded.name == meta.name;
        let hit = match name {
            Some(n) => loaded.name == n,
            None => !ours,
        };
        if hit {
            return Ok(Ok(loaded));
        }
        seen.push(format!("{file_name} (name `{}`)", loaded.name));
    }
    let searched = if seen.is_empty() {
        format!("`{}` has no .conf/.conflist/.json files", dir.display())
    } else {
        format!("searched `{}`: {}", dir.display(), seen.join(", "))
    };
    Ok(Err(searched))
}

struct Resolved {
    network_name: String,
    loaded: Loaded,
    resource_name: Option<String>,
}

/// Loads a NAD's config (spec.config, or the named file in confDir).
fn nad_config(nad: &Nad, meta: &MetaConfig, confs: &dyn ConfSource) -> Result<Resolved, Error> {
    let qualified = format!("{}/{}", nad.namespace, nad.name);
    let source = format!("NetworkAttachmentDefinition {qualified}");
    let loaded = if nad.config.trim().is_empty() {
        match find_in_dir(confs, &meta.conf_dir, Some(&nad.name), meta)? {
            Ok(l) => l,
            Err(searched) => {
                return Err(Error::NotFound {
                    what: format!("CNI config for {source} (its spec.config is empty)"),
                    wanted: nad.name.clone(),
                    problem: format!("no config file has \"name\": \"{}\"; {searched}", nad.name),
                    fix: format!(
                        "put the CNI config into the NAD's spec.config, or add a config file with \"name\": \"{}\" to {}",
                        nad.name,
                        meta.conf_dir.display()
                    ),
                });
            }
        }
    } else {
        let obj = parse_object(&source, "spec.config", nad.config.as_bytes())?;
        normalize(&source, obj, meta.cni_version.as_str(), Some(&nad.name), false)?
    };
    Ok(Resolved {
        network_name: qualified,
        loaded,
        resource_name: nad.resource_name.clone(),
    })
}

/// Resolves `clusterNetwork`/`defaultNetworks` entries: a NAD in multusNamespace, else a
/// config name in confDir; a path: a directory (its first config) or a file.
fn network_spec(
    spec: Option<&str>,
    wanted_by: &str,
    meta: &MetaConfig,
    nads: &dyn NadSource,
    confs: &dyn ConfSource,
) -> Result<Resolved, Error> {
    let from_file = |loaded: Loaded| Resolved {
        network_name: loaded.name.clone(),
        loaded,
        resource_name: None,
    };
    let Some(spec) = spec else {
        return match find_in_dir(confs, &meta.conf_dir, None, meta)? {
            Ok(l) => Ok(from_file(l)),
            Err(searched) => Err(Error::Source(SourceError::retryable(format!(
                "{wanted_by}: no cluster network config found yet ({searched}); fix: wait for the cluster network (flannel on K3s) to write its config, or set \"clusterNetwork\" in the netattach config"
            )))),
        };
    };
    if !spec.contains('/') {
        if let Some(nad) = nads.get(&meta.multus_namespace, spec)? {
            return nad_config(&nad, meta, confs);
        }
        return match find_in_dir(confs, &meta.conf_dir, Some(spec), meta)? {
            Ok(l) => Ok(from_file(l)),
            Err(searched) => Err(Error::NotFound {
                what: wanted_by.to_string(),
                wanted: spec.to_string(),
                problem: format!(
                    "is neither a NetworkAttachmentDefinition in `{}` nor the \"name\" of a config file; {searched}",
                    meta.multus_namespace
                ),
                fix: "create the NAD, correct the name, or give a config file path".into(),
            }),
        };
    }
    let path = Path::new(spec);
    if confs.is_dir(path)? {
        return match find_in_dir(confs, path, None, meta)? {
            Ok(l) => Ok(from_file(l)),
            Err(searched) => Err(Error::NotFound {
                what: wanted_by.to_string(),
                wanted: spec.to_string(),
                problem: format!("the directory holds no usable config; {searched}"),
                fix: "point it at a directory with the cluster network's config, or at the file itself"
                    .into(),
            }),
        };
    }
    match confs.file(path)? {
        Some(f) => Ok(from_file(load_file(&f, meta.cni_version.as_str())?)),
        None => Err(Error::NotFound {
            what: wanted_by.to_string(),
            wanted: spec.to_string(),
            problem: "no such file or directory".into(),
            fix: "give an existing config file or directory, or a network name".into(),
        }),
    }
}

/// Merges `cni-args` into every plugin's `args.cni` (annotation values win).
fn inject_cni_args(
    source: &str,
    conflist: &mut Map<String, Value>,
    cni_args: &Map<String, Value>,
) -> Result<(), Error> {
    let Some(Value::Array(plugins)) = conflist.get_mut("plugins") else {
        return Ok(());
    };
    for (i, p) in plugins.iter_mut().enumerate() {
        let Value::Object(plugin) = p else { continue };
        let args = plugin.entry("args").or_insert_with(|| json!({}));
        let Value::Object(args) = args else {
            return Err(cfg_err(
                source,
                &format!("plugins[{i}].args"),
                Some(args),
                "is not an object",
                "write \"args\": {\"cni\": {…}}",
            ));
        };
        let cni = args.entry("cni").or_insert_with(|| json!({}));
        let Value::Object(cni) = cni else {
            return Err(cfg_err(
                source,
                &format!("plugins[{i}].args.cni"),
                Some(cni),
                "is not an object",
                "write \"cni\": {…}",
            ));
        };
        for (k, v) in cni_args {
            cni.insert(k.clone(), v.clone());
        }
    }
    Ok(())
}

/// The annotation's capability requests, as runtimeConfig entries.
fn requested_capabilities(sel: &NetworkSelection) -> Map<String, Value> {
    let mut rc = Map::new();
    if !sel.port_mappings.is_empty() {
        rc.insert(
            "portMappings".into(),
            serde_json::to_value(&sel.port_mappings).unwrap_or(Value::Null),
        );
    }
    if let Some(bw) = &sel.bandwidth {
        rc.insert(
            "bandwidth".into(),
            serde_json::to_value(bw).unwrap_or(Value::Null),
        );
    }
    if !sel.ips.is_empty() {
        rc.insert("ips".into(), json!(sel.ips));
    }
    if let Some(mac) = &sel.mac {
        rc.insert("mac".into(), json!(mac));
    }
    if let Some(guid) = &sel.infiniband_guid {
        rc.insert("infinibandGUID".into(), json!(guid));
    }
    if let Some(dev) = &sel.device_id {
        rc.insert("deviceID".into(), json!(dev));
    }
    rc
}

fn filter_capabilities(
    network: &str,
    wanted: Map<String, Value>,
    declared: &[String],
    warn: bool,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in wanted {
        if declared.contains(&k) {
            out.insert(k, v);
        } else if warn {
            tracing::warn!(
                network,
                capability = %k,
                "the annotation requests a capability no plugin of this network declares; it is not passed (add \"capabilities\": {{\"{k}\": true}} to the plugin)"
            );
        }
    }
    out
}

fn build(
    resolved: Resolved,
    selection: Option<NetworkSelection>,
    is_default: bool,
    ifname: String,
    runtime_wanted: Map<String, Value>,
) -> Result<Delegate, Error> {
    let Resolved {
        network_name,
        mut loaded,
        resource_name,
    } = resolved;
    if let Some(args) = selection.as_ref().and_then(|s| s.cni_args.as_ref()) {
        inject_cni_args(&network_name, &mut loaded.conflist, args)?;
    }
    let declared = declared_capabilities(&loaded.conflist);
    let (wanted, warn) = match &selection {
        Some(sel) if !is_default => (requested_capabilities(sel), true),
        _ => (runtime_wanted, false),
    };
    let runtime_config = filter_capabilities(&network_name, wanted, &declared, warn);
    let mut cni_args = Vec::new();
    if let Some(sel) = &selection {
        if let Some(mac) = &sel.mac {
            cni_args.push(("MAC".to_string(), mac.clone()));
        }
        if !sel.ips.is_empty() {
            cni_args.push(("IP".to_string(), sel.ips.join(",")));
        }
    }
    let conf_bytes = serde_json::to_vec(&Value::Object(loaded.conflist)).map_err(|e| {
        cfg_err(
            &network_name,
            "(conflist)",
            None,
            format!("does not serialize ({e})"),
            "this is a bug; report it",
        )
    })?;
    Ok(Delegate {
        network_name,
        ifname,
        conf_bytes,
        is_default,
        selection,
        runtime_config,
        cni_args,
        filter_v4_gateway: false,
        filter_v6_gateway: false,
        resource_name,
    })
}

/// Resolves the delegates of a pod. `cni_ifname` is the runtime's `CNI_IFNAME` (usually `eth0`).
pub fn resolve(
    meta: &MetaConfig,
    pod: &PodInfo,
    cni_ifname: &str,
    nads: &dyn NadSource,
    confs: &dyn ConfSource,
) -> Result<Vec<Delegate>, Error> {
    if let Some(problem) = ifname_problem(cni_ifname) {
        return Err(Error::Config(
            ConfigError::new(
                "CNI environment",
                "CNI_IFNAME",
                Some(cni_ifname.to_string()),
                problem,
                "the runtime must pass a valid interface name, like eth0",
            )
            .with_code(code::INVALID_ENVIRONMENT),
        ));
    }
    let mut delegates: Vec<Delegate> = Vec::new();

    // 1. The cluster network, or the pod's default-network NAD.
    let default_sel = match pod.annotations.get(DEFAULT_NETWORK_ANNOTATION) {
        Some(v) => parse_default_network(v, &meta.multus_namespace)?,
        None => None,
    };
    let master = match default_sel {
        Some(sel) => {
            let nad = nads
                .get(&sel.namespace, &sel.name)?
                .ok_or_else(|| Error::NadNotFound {
                    namespace: sel.namespace.clone(),
                    name: sel.name.clone(),
                    wanted_by: format!("pod annotation `{DEFAULT_NETWORK_ANNOTATION}`"),
                })?;
            let resolved = nad_config(&nad, meta, confs)?;
            let ifname = sel.interface.clone().unwrap_or_else(|| cni_ifname.to_string());
            build(resolved, Some(sel), true, ifname, meta.runtime_config.clone())?
        }
        None => {
            let resolved = network_spec(
                meta.cluster_network.as_deref(),
                "clusterNetwork",
                meta,
                nads,
                confs,
            )?;
            build(
                resolved,
                None,
                true,
                cni_ifname.to_string(),
                meta.runtime_config.clone(),
            )?
        }
    };
    delegates.push(master);

    // 2. defaultNetworks, except in systemNamespaces.
    if !meta.is_system_namespace(&pod.namespace) {
        for net in &meta.default_networks {
            let resolved = network_spec(Some(net), "defaultNetworks", meta, nads, confs)?;
            let ifname = format!("net{}", delegates.len());
            delegates.push(build(resolved, None, false, ifname, Map::new())?);
        }
    }

    // 3. The annotation's networks, in order.
    let selections = match pod.annotations.get(NETWORKS_ANNOTATION) {
        Some(v) => parse_networks(v, &pod.namespace)?,
        None => Vec::new(),
    };
    for (index, sel) in selections.into_iter().enumerate() {
        if meta.namespace_isolation
            && sel.namespace != pod.namespace
            && !meta.global_namespaces.contains(&sel.namespace)
        {
            let mut allowed = vec![pod.namespace.clone()];
            allowed.extend(meta.global_namespaces.iter().cloned());
            return Err(Error::NamespaceIsolation {
                annotation: NETWORKS_ANNOTATION.into(),
                index,
                pod_namespace: pod.namespace.clone(),
                namespace: sel.namespace.clone(),
                name: sel.name.clone(),
                allowed,
            });
        }
        let nad = nads
            .get(&sel.namespace, &sel.name)?
            .ok_or_else(|| Error::NadNotFound {
                namespace: sel.namespace.clone(),
                name: sel.name.clone(),
                wanted_by: format!("pod annotation `{NETWORKS_ANNOTATION}` element [{index}]"),
            })?;
        let resolved = nad_config(&nad, meta, confs)?;
        let ifname = sel
            .interface
            .clone()
            .unwrap_or_else(|| format!("net{}", delegates.len()));
        delegates.push(build(resolved, Some(sel), false, ifname, Map::new())?);
    }

    check_unique_ifnames(&delegates)?;
    apply_gateway_config(&mut delegates)?;
    Ok(delegates)
}

fn check_unique_ifnames(delegates: &[Delegate]) -> Result<(), Error> {
    for (i, d) in delegates.iter().enumerate() {
        if let Some(first) = delegates[..i].iter().find(|o| o.ifname == d.ifname) {
            return Err(Error::DuplicateInterface {
                ifname: d.ifname.clone(),
                first: first.network_name.clone(),
                second: d.network_name.clone(),
            });
        }
    }
    Ok(())
}

/// Multus `CheckGatewayConfig`: at most one IPv4 and one IPv6 `default-route` over all
/// networks; when any is asked for, every other network filters that family's gateway.
fn apply_gateway_config(delegates: &mut [Delegate]) -> Result<(), Error> {
    let gws = |d: &Delegate| -> Vec<IpAddr> {
        d.selection
            .as_ref()
            .map(|s| s.default_route.clone())
            .unwrap_or_default()
    };
    if delegates.iter().all(|d| gws(d).is_empty()) {
        return Ok(());
    }
    let all: Vec<IpAddr> = delegates.iter().flat_map(gws).collect();
    let v4 = all.iter().filter(|ip| ip.is_ipv4()).count();
    let v6 = all.len() - v4;
    if v4 > 1 || v6 > 1 {
        return Err(Error::Annotation(AnnotationError {
            annotation: NETWORKS_ANNOTATION.into(),
            index: None,
            field: Some("default-route".into()),
            value: Some(all.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
            problem: format!(
                "asks for {v4} IPv4 and {v6} IPv6 default-route gateways over all networks; at most one per address family is supported (no ECMP)"
            ),
            fix: "set \"default-route\" on one network only".into(),
        }));
    }
    for d in delegates.iter_mut() {
        let own = gws(d);
        d.filter_v4_gateway = !own.iter().any(IpAddr::is_ipv4);
        d.filter_v6_gateway = !own.iter().any(IpAddr::is_ipv6);
    }
    Ok(())
}

fn args_err(key: &str, value: &str) -> Error {
    Error::Config(
        ConfigError::new(
            "CNI_ARGS",
            key,
            Some(value.to_string()),
            "contains ';' or '=', which CNI_ARGS cannot carry",
            "use a value without ';' and '='",
        )
        .with_code(code::INVALID_ENVIRONMENT),
    )
}

fn build_args(pairs: &[(String, String)]) -> Result<CniArgs, Error> {
    for (k, v) in pairs {
        if k.is_empty() || k.contains([';', '=']) {
            return Err(args_err(k, k));
        }
        if v.contains([';', '=']) {
            return Err(args_err(k, v));
        }
    }
    let raw = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";");
    CniArgs::parse(&raw).map_err(|e| {
        Error::Config(
            ConfigError::new(
                "CNI_ARGS",
                "(all)",
                Some(raw.clone()),
                e.details,
                "this is a bug; report it",
            )
            .with_code(e.code),
        )
    })
}

/// The CNI_ARGS every delegate of the pod gets (Multus `createRuntimeConf`):
/// `IgnoreUnknown=true;K8S_POD_NAMESPACE;K8S_POD_NAME;K8S_POD_INFRA_CONTAINER_ID;K8S_POD_UID`,
/// then the runtime's own pairs merged in (an empty value of ours is filled, a key we lack is
/// appended, a value of ours wins).
pub fn cni_args_for(pod: &PodInfo, container_id: &str, runtime_args: &CniArgs) -> Result<CniArgs, Error> {
    let mut pairs: Vec<(String, String)> = vec![
        ("IgnoreUnknown".into(), "true".into()),
        ("K8S_POD_NAMESPACE".into(), pod.namespace.clone()),
        ("K8S_POD_NAME".into(), pod.name.clone()),
        ("K8S_POD_INFRA_CONTAINER_ID".into(), container_id.to_string()),
        ("K8S_POD_UID".into(), pod.uid.clone()),
    ];
    for (k, v) in runtime_args.pairs() {
        match pairs.iter_mut().find(|(pk, _)| pk == k) {
            Some((_, pv)) if pv.is_empty() => *pv = v.clone(),
            Some(_) => {}
            None => pairs.push((k.clone(), v.clone())),
        }
    }
    build_args(&pairs)
}

/// The pod's CNI_ARGS plus a delegate's extra pairs (`MAC=`, `IP=`): an extra pair replaces a
/// pair with the same key, otherwise it is appended.
pub fn delegate_cni_args(pod_args: &CniArgs, extra: &[(String, String)]) -> Result<CniArgs, Error> {
    let mut pairs: Vec<(String, String)> = pod_args.pairs().to_vec();
    for (k, v) in extra {
        match pairs.iter_mut().find(|(pk, _)| pk == k) {
            Some((_, pv)) => *pv = v.clone(),
            None => pairs.push((k.clone(), v.clone())),
        }
    }
    build_args(&pairs)
}

/// libcni `buildOneConfig`: the stdin for plugin `plugin_index` of a conflist. Injects the
/// list's `name` and `cniVersion`, `prevResult` when given, and `runtimeConfig` with only the
/// capabilities this plugin declares (replacing any `runtimeConfig` in the file; left alone
/// when nothing applies).
pub fn plugin_request(
    conflist: &Value,
    plugin_index: usize,
    runtime_config: &Map<String, Value>,
    prev_result: Option<&Value>,
) -> Result<Vec<u8>, Error> {
    let name = conflist.get("name").and_then(Value::as_str).unwrap_or_default();
    let src = format!("conflist {name}");
    let version = conflist
        .get("cniVersion")
        .cloned()
        .unwrap_or_else(|| Value::from(""));
    let plugin = conflist
        .get("plugins")
        .and_then(Value::as_array)
        .and_then(|p| p.get(plugin_index))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            cfg_err(
                &src,
                &format!("plugins[{plugin_index}]"),
                None,
                "does not exist or is not an object",
                "pass a normalised conflist and a valid plugin index",
            )
        })?;
    let mut out = plugin.clone();
    out.insert("name".into(), Value::from(name));
    out.insert("cniVersion".into(), version);
    if let Some(prev) = prev_result {
        out.insert("prevResult".into(), prev.clone());
    }
    let mut rc = Map::new();
    for (cap, on) in plugin
        .get("capabilities")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if on.as_bool() == Some(true)
            && let Some(v) = runtime_config.get(cap)
        {
            rc.insert(cap.clone(), v.clone());
        }
    }
    if !rc.is_empty() {
        out.insert("runtimeConfig".into(), Value::Object(rc));
    }
    serde_json::to_vec(&Value::Object(out)).map_err(|e| {
        cfg_err(
            &src,
            "(plugin)",
            None,
            format!("does not serialize ({e})"),
            "this is a bug; report it",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF_DIR: &str = "/etc/cni/net.d";

    const FLANNEL: &str = r#"{"name":"cbr0","cniVersion":"1.0.0","plugins":[
        {"type":"flannel","delegate":{"hairpinMode":true,"forceAddress":true,"isDefaultGateway":true}},
        {"type":"portmap","capabilities":{"portMappings":true}},
        {"type":"bandwidth","capabilities":{"bandwidth":true}}]}"#;

    const STORAGE: &str = r#"{"cniVersion":"0.3.1","type":"macvlan","master":"eth1","mode":"bridge",
        "capabilities":{"ips":true,"mac":true},
        "ipam":{"type":"whereabouts","range":"192.168.4.0/24"}}"#;

    fn meta() -> MetaConfig {
        MetaConfig {
            cni_version: netattach_cni::Version::V1_0_0,
            ..MetaConfig::default()
        }
    }

    fn confs() -> MemConfSource {
        let mut c = MemConfSource::new();
        c.insert(
            format!("{CONF_DIR}/00-netattach.conflist"),
            r#"{"cniVersion":"1.0.0","name":"netattach","plugins":[{"type":"netattach"}]}"#,
        );
        c.insert(format!("{CONF_DIR}/10-flannel.conflist"), FLANNEL);
        c
    }

    fn nad(ns: &str, name: &str, config: &str) -> Nad {
        Nad {
            namespace: ns.into(),
            name: name.into(),
            config: config.into(),
            resource_name: None,
        }
    }

    fn nads() -> MemNadSource {
        let mut n = MemNadSource::new();
        n.insert(nad("longhorn-system", "storage", STORAGE));
        for name in ["a", "b", "c"] {
            n.insert(nad(
                "pods",
                name,
                &format!(r#"{{"cniVersion":"1.0.0","name":"{name}","type":"macvlan","master":"eth1"}}"#),
            ));
        }
        n
    }

    fn pod(ns: &str, networks: Option<&str>) -> PodInfo {
        let mut annotations = BTreeMap::new();
        if let Some(n) = networks {
            annotations.insert(NETWORKS_ANNOTATION.to_string(), n.to_string());
        }
        PodInfo {
            namespace: ns.into(),
            name: "p".into(),
            uid: "u-1".into(),
            annotations,
        }
    }

    fn ifnames(ds: &[Delegate]) -> Vec<&str> {
        ds.iter().map(|d| d.ifname.as_str()).collect()
    }

    #[test]
    fn cluster_network_auto_detected_skipping_ourselves() {
        let ds = resolve(&meta(), &pod("pods", None), "eth0", &nads(), &confs()).expect("ok");
        assert_eq!(ds.len(), 1);
        assert_eq!(ds[0].network_name, "cbr0");
        assert_eq!(ds[0].ifname, "eth0");
        assert!(ds[0].is_default);
        let v = ds[0].conflist().expect("json");
        assert_eq!(v["plugins"][0]["type"], "flannel");
    }

    #[test]
    fn longhorn_annotation_resolves() {
        let p = pod(
            "longhorn-system",
            Some(r#"[{"namespace":"longhorn-system","name":"storage","interface":"lhnet1"}]"#),
        );
        let ds = resolve(&meta(), &p, "eth0", &nads(), &confs()).expect("ok");
        assert_eq!(ifnames(&ds), vec!["eth0", "lhnet1"]);
        assert_eq!(ds[1].network_name, "longhorn-system/storage");
        assert!(!ds[1].is_default);
        let v = ds[1].conflist().expect("json");
        // Normalised into a conflist; name injected (spec.config had none); cniVersion kept.
        assert_eq!(v["name"], "storage");
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["plugins"][0]["name"], "storage");
        assert_eq!(v["plugins"][0]["ipam"]["type"], "whereabouts");
        assert!(ds[1].runtime_config.is_empty());
        assert!(ds[1].cni_args.is_empty());
    }

    #[test]
    fn index_naming_counts_named_attachments() {
        let ds = resolve(&meta(), &pod("pods", Some("a@foo, b")), "eth0", &nads(), &confs()).expect("ok");
        assert_eq!(ifnames(&ds), vec!["eth0", "foo", "net2"]);
        let ds = resolve(
            &meta(),
            &pod("pods", Some("a, b@x, c")),
            "eth0",
            &nads(),
            &confs(),
        )
        .expect("ok");
        assert_eq!(ifnames(&ds), vec!["eth0", "net1", "x", "net3"]);
        // The same network twice is two attachments.
        let ds = resolve(&meta(), &pod("pods", Some("a, a")), "eth0", &nads(), &confs()).expect("ok");
        assert_eq!(ifnames(&ds), vec!["eth0", "net1", "net2"]);
    }

    #[test]
    fn duplicate_interface_names_are_refused() {
        let e = resolve(&meta(), &pod("pods", Some("a@x, b@x")), "eth0", &nads(), &confs()).expect_err("dup");
        assert!(
            matches!(&e, Error::DuplicateInterface { ifname, .. } if ifname == "x"),
            "{e}"
        );
        assert_eq!(e.code(), 7);
        let e = resolve(&meta(), &pod("pods", Some("a@eth0")), "eth0", &nads(), &confs()).expect_err("dup");
        assert!(e.to_string().contains("cbr0"), "{e}");
        // A requested name colliding with a generated one.
        let e = resolve(
            &meta(),
            &pod("pods", Some("a@net2, b")),
            "eth0",
            &nads(),
            &confs(),
        )
        .expect_err("dup");
        assert!(matches!(e, Error::DuplicateInterface { .. }));
    }

    #[test]
    fn default_networks_skipped_in_system_namespaces() {
        let mut m = meta();
        m.default_networks = vec!["c".into()];
        let mut n = nads();
        n.insert(nad(
            "kube-system",
            "c",
            r#"{"cniVersion":"1.0.0","type":"macvlan","master":"eth2"}"#,
        ));
        let ds = resolve(&m, &pod("pods", Some("a")), "eth0", &n, &confs()).expect("ok");
        assert_eq!(ifnames(&ds), vec!["eth0", "net1", "net2"]);
        assert_eq!(ds[1].network_name, "kube-system/c");
        assert_eq!(ds[2].network_name, "pods/a");
        let ds = resolve(&m, &pod("kube-system", None), "eth0", &n, &confs()).expect("ok");
        assert_eq!(ds.len(), 1);
        // A defaultNetworks entry may also be the name of a config file.
        let mut c = confs();
        c.insert(
            format!("{CONF_DIR}/20-extra.conf"),
            r#"{"cniVersion":"1.0.0","name":"extra","type":"bridge"}"#,
        );
        m.default_networks = vec!["extra".into()];
        let ds = resolve(&m, &pod("pods", None), "eth0", &n, &c).expect("ok");
        assert_eq!(ds[1].network_name, "extra");
        m.default_networks = vec!["nope".into()];
        let e = resolve(&m, &pod("pods", None), "eth0", &n, &c).expect_err("missing");
        assert!(e.to_string().contains("20-extra.conf (name `extra`)"), "{e}");
    }

    #[test]
    fn namespace_isolation() {
        let mut m = meta();
        m.namespace_isolation = true;
        let mut n = nads();
        n.insert(nad("kube-system", "shared", STORAGE));
        n.insert(nad("default", "d", STORAGE));
        // Own namespace: fine.
        assert!(resolve(&m, &pod("pods", Some("a")), "eth0", &n, &confs()).is_ok());
        // `default` is global by default.
        assert!(resolve(&m, &pod("pods", Some("default/d")), "eth0", &n, &confs()).is_ok());
        // The common Longhorn setup breaks, with a clear error.
        let e = resolve(
            &m,
            &pod("longhorn-system", Some("kube-system/shared@lhnet1")),
            "eth0",
            &n,
            &confs(),
        )
        .expect_err("isolated");
        let msg = e.to_string();
        assert!(
            msg.contains("`kube-system/shared`") && msg.contains("globalNamespaces"),
            "{msg}"
        );
        assert_eq!(e.code(), 7);
        m.global_namespaces = vec!["kube-system".into()];
        assert!(
            resolve(
                &m,
                &pod("longhorn-system", Some("kube-system/shared@lhnet1")),
                "eth0",
                &n,
                &confs()
            )
            .is_ok()
        );
    }

    #[test]
    fn default_network_annotation_replaces_the_cluster_network() {
        let mut n = nads();
        n.insert(nad(
            "kube-system",
            "alt",
            r#"{"cniVersion":"1.0.0","type":"bridge","bridge":"br9"}"#,
        ));
        let mut p = pod("pods", Some("a"));
        p.annotations
            .insert(DEFAULT_NETWORK_ANNOTATION.into(), "alt".into());
        let ds = resolve(&meta(), &p, "eth0", &n, &confs()).expect("ok");
        assert_eq!(ds[0].network_name, "kube-system/alt");
        assert_eq!(ds[0].ifname, "eth0");
        assert!(ds[0].is_default);
        assert_eq!(ifnames(&ds), vec!["eth0", "net1"]);
        p.annotations
            .insert(DEFAULT_NETWORK_ANNOTATION.into(), "missing".into());
        let e = resolve(&meta(), &p, "eth0", &n, &confs()).expect_err("missing");
        assert!(
            matches!(&e, Error::NadNotFound { namespace, name, .. } if namespace == "kube-system" && name == "missing")
        );
        assert!(e.to_string().contains(DEFAULT_NETWORK_ANNOTATION));
    }

    #[test]
    fn missing_nad_names_namespace_and_name() {
        let e = resolve(
            &meta(),
            &pod("pods", Some("a, other/nope")),
            "eth0",
            &nads(),
            &confs(),
        )
        .expect_err("missing");
        let msg = e.to_string();
        assert!(
            msg.contains("`other/nope`") && msg.contains("element [1]"),
            "{msg}"
        );
    }

    #[test]
    fn empty_spec_config_uses_the_conf_dir_file() {
        let mut n = nads();
        n.insert(nad("pods", "filenet", ""));
        let mut c = confs();
        c.insert(format!("{CONF_DIR}/30-broken.conf"), "{not json");
        c.insert(
            format!("{CONF_DIR}/40-filenet.conf"),
            r#"{"name":"filenet","type":"macvlan","master":"eth3"}"#,
        );
        let ds = resolve(&meta(), &pod("pods", Some("filenet")), "eth0", &n, &c).expect("ok");
        assert_eq!(ds[1].network_name, "pods/filenet");
        let v = ds[1].conflist().expect("json");
        assert_eq!(v["plugins"][0]["master"], "eth3");
        // cniVersion injected from the meta config.
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["plugins"][0]["cniVersion"], "1.0.0");
        n.insert(nad("pods", "nofile", "  "));
        let e = resolve(&meta(), &pod("pods", Some("nofile")), "eth0", &n, &c).expect_err("none");
        let msg = e.to_string();
        assert!(
            msg.contains("spec.config is empty") && msg.contains("30-broken.conf (unusable"),
            "{msg}"
        );
    }

    #[test]
    fn name_injection_and_bad_nad_configs() {
        let mut n = MemNadSource::new();
        n.insert(nad(
            "pods",
            "list",
            r#"{"plugins":[{"type":"macvlan"},{"type":"tuning"}]}"#,
        ));
        n.insert(nad("pods", "named", r#"{"name":"other-name","type":"macvlan"}"#));
        n.insert(nad("pods", "badjson", "{"));
        n.insert(nad("pods", "notype", r#"{"name":"x"}"#));
        n.insert(nad("pods", "badplugin", r#"{"plugins":[{"type":""}]}"#));
        let ds = resolve(&meta(), &pod("pods", Some("list, named")), "eth0", &n, &confs()).expect("ok");
        let v = ds[1].conflist().expect("json");
        assert_eq!(v["name"], "list");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["plugins"].as_array().map(Vec::len), Some(2));
        // A name in spec.config is kept (the network name stays ns/nad).
        assert_eq!(ds[2].conflist().expect("json")["name"], "other-name");
        assert_eq!(ds[2].network_name, "pods/named");
        for (net, field) in [
            ("badjson", "spec.config"),
            ("notype", "type"),
            ("badplugin", "plugins[0].type"),
        ] {
            let e = resolve(&meta(), &pod("pods", Some(net)), "eth0", &n, &confs()).expect_err(net);
            match &e {
                Error::Config(c) => {
                    assert_eq!(c.field, field, "{e}");
                    assert!(c.source_name.contains(&format!("pods/{net}")), "{e}");
                }
                other => panic!("{net}: {other}"),
            }
        }
    }

    #[test]
    fn capability_filtering() {
        let mut n = MemNadSource::new();
        n.insert(nad(
            "pods",
            "caps",
            r#"{"cniVersion":"1.0.0","plugins":[
                {"type":"macvlan","capabilities":{"ips":true,"mac":true,"deviceID":false}},
                {"type":"tuning","capabilities":{"mac":true}}]}"#,
        ));
        let p = pod(
            "pods",
            Some(
                r#"[{"name":"caps","interface":"net7","ips":["192.168.4.20/24"],"mac":"c2:11:22:33:44:55",
                     "deviceID":"0000:03:00.1","portMappings":[{"hostPort":1,"containerPort":2}],
                     "bandwidth":{"ingressRate":1,"ingressBurst":2,"egressRate":3,"egressBurst":4},
                     "cni-args":{"foo":"bar"}}]"#,
            ),
        );
        let mut m = meta();
        m.runtime_config.insert(
            "portMappings".into(),
            json!([{"hostPort": 80, "containerPort": 8080}]),
        );
        m.runtime_config.insert("ips".into(), json!(["10.0.0.1/24"]));
        let ds = resolve(&m, &p, "eth0", &n, &confs()).expect("ok");
        let rc = &ds[1].runtime_config;
        assert_eq!(
            rc.keys().collect::<Vec<_>>(),
            vec!["ips", "mac"],
            "only declared caps"
        );
        assert_eq!(rc["ips"], json!(["192.168.4.20/24"]));
        assert_eq!(
            ds[1].cni_args,
            vec![
                ("MAC".into(), "c2:11:22:33:44:55".into()),
                ("IP".into(), "192.168.4.20/24".into())
            ]
        );
        let v = ds[1].conflist().expect("json");
        assert_eq!(v["plugins"][0]["args"]["cni"]["foo"], "bar");
        assert_eq!(v["plugins"][1]["args"]["cni"]["foo"], "bar");
        // The cluster network gets the runtime's runtimeConfig, filtered by its caps
        // (flannel's portmap declares portMappings; nothing declares ips).
        assert_eq!(
            ds[0].runtime_config.keys().collect::<Vec<_>>(),
            vec!["portMappings"]
        );
        // Per plugin: tuning only gets mac.
        let req: Value =
            serde_json::from_slice(&plugin_request(&v, 1, rc, None).expect("req")).expect("json");
        assert_eq!(req["runtimeConfig"], json!({"mac": "c2:11:22:33:44:55"}));
        assert_eq!(req["name"], "caps");
        assert_eq!(req["cniVersion"], "1.0.0");
    }

    #[test]
    fn cni_args_merge_in_multus_order() {
        let p = pod("pods", None);
        let rt =
            CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=ignored;K8S_POD_UID=;EXTRA=x").expect("ok");
        let args = cni_args_for(&p, "ctr1", &rt).expect("ok");
        assert_eq!(
            args.to_env_string(),
            "IgnoreUnknown=true;K8S_POD_NAMESPACE=pods;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=ctr1;K8S_POD_UID=u-1;EXTRA=x"
        );
        let mut empty_uid = p.clone();
        empty_uid.uid = String::new();
        let rt = CniArgs::parse("IgnoreUnknown=1;K8S_POD_UID=from-runtime").expect("ok");
        assert_eq!(
            cni_args_for(&empty_uid, "c", &rt).expect("ok").pod_uid(),
            Some("from-runtime")
        );
        let with = delegate_cni_args(
            &args,
            &[
                ("MAC".into(), "c2:11:22:33:44:55".into()),
                ("EXTRA".into(), "y".into()),
            ],
        )
        .expect("ok");
        assert!(
            with.to_env_string().ends_with("EXTRA=y;MAC=c2:11:22:33:44:55"),
            "{}",
            with.to_env_string()
        );
        assert!(cni_args_for(&p, "bad;id", &CniArgs::default()).is_err());
    }

    #[test]
    fn plugin_request_like_libcni() {
        let list: Value = serde_json::from_str(FLANNEL).expect("json");
        let mut rc = Map::new();
        rc.insert(
            "portMappings".into(),
            json!([{"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}]),
        );
        rc.insert("bandwidth".into(), json!({"ingressRate": 1}));
        let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/ns"}]});
        let flannel: Value =
            serde_json::from_slice(&plugin_request(&list, 0, &rc, None).expect("ok")).expect("json");
        assert_eq!(flannel["name"], "cbr0");
        assert_eq!(flannel["cniVersion"], "1.0.0");
        assert!(flannel.get("runtimeConfig").is_none());
        assert!(flannel.get("prevResult").is_none());
        let portmap: Value =
            serde_json::from_slice(&plugin_request(&list, 1, &rc, Some(&prev)).expect("ok")).expect("json");
        assert_eq!(
            portmap["runtimeConfig"],
            json!({"portMappings": rc["portMappings"]})
        );
        assert_eq!(portmap["prevResult"], prev);
        assert!(plugin_request(&list, 3, &rc, None).is_err());
        assert!(plugin_request(&json!({"name": "x"}), 0, &rc, None).is_err());
    }

    #[test]
    fn default_route_ecmp_is_refused_and_filters_are_set() {
        let p = pod(
            "pods",
            Some(r#"[{"name":"a","default-route":["192.168.4.1"]},{"name":"b"}]"#),
        );
        let ds = resolve(&meta(), &p, "eth0", &nads(), &confs()).expect("ok");
        assert!(ds[0].filter_v4_gateway && ds[0].filter_v6_gateway);
        assert!(!ds[1].filter_v4_gateway && ds[1].filter_v6_gateway);
        assert!(ds[2].filter_v4_gateway);
        let p = pod(
            "pods",
            Some(
                r#"[{"name":"a","default-route":["192.168.4.1"]},{"name":"b","default-route":["10.0.0.1"]}]"#,
            ),
        );
        let e = resolve(&meta(), &p, "eth0", &nads(), &confs()).expect_err("ecmp");
        assert!(e.to_string().contains("ECMP"), "{e}");
        let ds = resolve(&meta(), &pod("pods", Some("a")), "eth0", &nads(), &confs()).expect("ok");
        assert!(!ds[0].filter_v4_gateway && !ds[1].filter_v4_gateway);
    }

    #[test]
    fn cluster_network_by_name_path_dir_and_nad() {
        let mut m = meta();
        m.cluster_network = Some("cbr0".into());
        assert_eq!(
            resolve(&m, &pod("pods", None), "eth0", &nads(), &confs()).expect("ok")[0].network_name,
            "cbr0"
        );
        m.cluster_network = Some(format!("{CONF_DIR}/10-flannel.conflist"));
        assert_eq!(
            resolve(&m, &pod("pods", None), "eth0", &nads(), &confs()).expect("ok")[0].network_name,
            "cbr0"
        );
        let mut c = confs();
        c.insert(
            "/etc/cni/alt/50-calico.conflist",
            r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"calico"}]}"#,
        );
        m.cluster_network = Some("/etc/cni/alt".into());
        assert_eq!(
            resolve(&m, &pod("pods", None), "eth0", &nads(), &c).expect("ok")[0].network_name,
            "k8s-pod-network"
        );
        let mut n = nads();
        n.insert(nad(
            "kube-system",
            "cbr0",
            r#"{"cniVersion":"1.0.0","type":"bridge"}"#,
        ));
        m.cluster_network = Some("cbr0".into());
        assert_eq!(
            resolve(&m, &pod("pods", None), "eth0", &n, &c).expect("ok")[0].network_name,
            "kube-system/cbr0"
        );
        m.cluster_network = Some("/nonexistent.conf".into());
        assert!(matches!(
            resolve(&m, &pod("pods", None), "eth0", &n, &c),
            Err(Error::NotFound { .. })
        ));
        // Nothing installed yet: retryable.
        let e = resolve(&meta(), &pod("pods", None), "eth0", &n, &MemConfSource::new()).expect_err("none");
        assert_eq!(e.code(), code::TRY_AGAIN_LATER, "{e}");
        // A bad CNI_IFNAME.
        assert_eq!(
            resolve(&meta(), &pod("pods", None), "", &n, &c)
                .expect_err("ifname")
                .code(),
            code::INVALID_ENVIRONMENT
        );
    }

    #[test]
    fn single_conf_file_is_normalised_to_a_conflist() {
        let mut c = MemConfSource::new();
        c.insert(
            format!("{CONF_DIR}/10-bridge.conf"),
            r#"{"cniVersion":"0.4.0","name":"br","type":"bridge","capabilities":{"portMappings":true}}"#,
        );
        let mut m = meta();
        m.runtime_config.insert("portMappings".into(), json!([]));
        let ds = resolve(&m, &pod("pods", None), "eth0", &nads(), &c).expect("ok");
        let v = ds[0].conflist().expect("json");
        assert_eq!(
            v,
            json!({"cniVersion":"0.4.0","name":"br","plugins":[{"cniVersion":"0.4.0","name":"br","type":"bridge","capabilities":{"portMappings":true}}]})
        );
        assert_eq!(
            ds[0].runtime_config.keys().collect::<Vec<_>>(),
            vec!["portMappings"]
        );
    }

    #[test]
    fn source_errors_propagate() {
        struct Down;
        impl NadSource for Down {
            fn get(&self, _: &str, _: &str) -> Result<Option<Nad>, SourceError> {
                Err(SourceError::retryable("NAD cache not synced yet"))
            }
        }
        let e = resolve(&meta(), &pod("pods", Some("a")), "eth0", &Down, &confs()).expect_err("down");
        assert_eq!(e.code(), code::TRY_AGAIN_LATER);
        assert!(e.to_string().contains("not synced"));
    }

    #[test]
    fn dir_conf_source_reads_sorted_conf_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("20-b.conflist"), FLANNEL).expect("write");
        std::fs::write(dir.path().join("10-a.conf"), STORAGE).expect("write");
        std::fs::write(dir.path().join("05-x.json"), "{}").expect("write");
        std::fs::write(dir.path().join("README"), "no").expect("write");
        std::fs::create_dir(dir.path().join("sub.conf")).expect("mkdir");
        let files = DirConfSource.files_in(dir.path()).expect("ok");
        let names: Vec<String> = files
            .iter()
            .filter_map(|f| f.path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(names, vec!["05-x.json", "10-a.conf", "20-b.conflist"]);
        assert!(
            DirConfSource
                .files_in(&dir.path().join("missing"))
                .expect("ok")
                .is_empty()
        );
        assert!(
            DirConfSource
                .file(&dir.path().join("missing"))
                .expect("ok")
                .is_none()
        );
        assert!(DirConfSource.is_dir(dir.path()).expect("ok"));
    }
}
