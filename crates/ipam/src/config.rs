//! The whereabouts IPAM configuration, accepted unchanged: parsing the `ipam` object of a CNI
//! network config, merging the whereabouts flat file (`whereabouts.conf`) exactly as
//! whereabouts does, and strict validation.
//!
//! Differences from whereabouts, all on purpose:
//! * Unknown keys are errors naming the nearest known key (whereabouts ignores them, so
//!   `rangeStart` silently does nothing, #601). Go's `encoding/json` matches keys
//!   case-insensitively, so whereabouts accepts `Range_Start` or `ipranges`; so do we (such a
//!   key is read as its canonical spelling, see [`canonicalize_keys`]), to stay drop-in.
//! * Top-level `exclude`, `range_start`, `range_end` without a top-level `range` are errors
//!   (whereabouts drops them).
//! * `configuration_path` may name a directory; `<dir>/whereabouts.conf` is then used (the
//!   whereabouts install script writes the directory form, which whereabouts itself cannot read
//!   as a flat file).
//! * The K3s flat-file path `/var/lib/rancher/k3s/agent/etc/cni/net.d/whereabouts.d/whereabouts.conf`
//!   is searched last, so K3s works without per-NAD paths.
//! * `datastore: "local"` (with optional `local_dir`) selects the single-machine file store;
//!   `datastore: "etcd"` is refused (upstream removed the etcd backend in v0.6).
//! * `node_slice_size` is recognised but refused as not supported yet.
//! * `daemon_socket` (netattach): the node daemon's socket, [`DEFAULT_DAEMON_SOCKET`] unless
//!   set; `""` turns the daemon off (the plugin then writes the IPPools itself, as whereabouts).
//! * The gateway is attached to the first range that contains it and is never allocated.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::ConfigError;
use crate::range::{IpRange, parse_ip_sloppy, parse_net_sloppy};

/// Where the node daemon listens by default: the IPAM front sends the kubernetes datastore's
/// allocations and releases there when it answers (netattach key `daemon_socket`).
pub const DEFAULT_DAEMON_SOCKET: &str = "/run/netattach/daemon.sock";

/// Default directory of the local file store.
pub const DEFAULT_LOCAL_DIR: &str = "/var/lib/netattach/ipam";

/// File name of the whereabouts flat file inside a `whereabouts.d` directory.
pub const FLAT_FILE_NAME: &str = "whereabouts.conf";

/// Keys accepted in the `ipam` object (and in the flat file).
pub const IPAM_KEYS: &[&str] = &[
    "type",
    "range",
    "range_start",
    "range_end",
    "exclude",
    "ipRanges",
    "gateway",
    "routes",
    "dns",
    "addresses",
    "enable_overlapping_ranges",
    "network_name",
    "node_slice_size",
    "kubernetes",
    "configuration_path",
    "datastore",
    "local_dir",
    "daemon_socket",
    "log_file",
    "log_level",
    "leader_lease_duration",
    "leader_renew_deadline",
    "leader_retry_period",
    "sleep_for_race",
    "reconciler_cron_expression",
    "etcd_host",
    "etcd_username",
    "etcd_password",
    "etcd_key_file",
    "etcd_cert_file",
    "etcd_ca_cert_file",
];

/// Keys accepted and ignored (whereabouts tuning for machinery netattach does not have).
pub const IGNORED_KEYS: &[&str] = &[
    "leader_lease_duration",
    "leader_renew_deadline",
    "leader_retry_period",
    "sleep_for_race",
    "reconciler_cron_expression",
    "etcd_host",
    "etcd_username",
    "etcd_password",
    "etcd_key_file",
    "etcd_cert_file",
    "etcd_ca_cert_file",
];

const RANGE_KEYS: &[&str] = &["range", "range_start", "range_end", "exclude"];
const KUBERNETES_KEYS: &[&str] = &["kubeconfig", "k8s_api_root"];
const DNS_KEYS: &[&str] = &["nameservers", "domain", "search", "options"];
const ROUTE_KEYS: &[&str] = &["dst", "gw", "mtu", "advmss", "priority", "table", "scope"];
const ADDRESS_KEYS: &[&str] = &["address", "gateway"];

/// Where the IPAM state lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Datastore {
    /// whereabouts `IPPool` objects in Kubernetes (the default, as in whereabouts).
    #[default]
    Kubernetes,
    /// netattach's local file store (single machine). `"datastore": "local"`.
    Local {
        /// Directory of the pool files (`local_dir`, default [`DEFAULT_LOCAL_DIR`]).
        dir: PathBuf,
    },
}

/// A static route to put in the result (CNI `route`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteConfig {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; `None` means the interface's gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Route MTU (CNI 1.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (CNI 1.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route priority (CNI 1.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (CNI 1.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Route scope (CNI 1.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

/// DNS settings to put in the result (CNI `dns`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Dns {
    /// Name servers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A static address to add to the result, like the CNI `static` plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticAddress {
    /// Address with prefix length (host bits kept).
    pub address: IpNet,
    /// Its gateway.
    pub gateway: Option<IpAddr>,
}

/// The flat-file search list (without the inline `configuration_path`, which is always tried
/// first). Injectable so tests never touch `/etc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatFileSearch {
    /// Files tried in order; the first that exists wins.
    pub paths: Vec<PathBuf>,
}

impl Default for FlatFileSearch {
    /// whereabouts' list, then the K3s path.
    fn default() -> Self {
        FlatFileSearch {
            paths: [
                "/etc/kubernetes/cni/net.d/whereabouts.d/whereabouts.conf",
                "/etc/cni/net.d/whereabouts.d/whereabouts.conf",
                "/host/etc/cni/net.d/whereabouts.d/whereabouts.conf",
                "/var/lib/rancher/k3s/agent/etc/cni/net.d/whereabouts.d/whereabouts.conf",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        }
    }
}

impl FlatFileSearch {
    /// No flat file at all.
    pub fn none() -> Self {
        FlatFileSearch { paths: Vec::new() }
    }
}

/// The parsed, merged and validated whereabouts IPAM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// The CNI network config's `name` (whereabouts `IPAMConfig.Name`). Not used in pool names.
    pub name: Option<String>,
    /// `ipam.network_name`: prefixes pool names (see [`crate::pool_name`]).
    pub network_name: Option<String>,
    /// The ranges: top-level `range` first, then `ipRanges`. One address is allocated per range.
    pub ranges: Vec<IpRange>,
    /// `gateway` as written (also set on the range that contains it).
    pub gateway: Option<IpAddr>,
    /// `enable_overlapping_ranges` (default true; the inline value always wins over the flat file).
    pub enable_overlapping_ranges: bool,
    /// `routes`.
    pub routes: Vec<RouteConfig>,
    /// `dns`.
    pub dns: Option<Dns>,
    /// `addresses`: static addresses added to the result.
    pub addresses: Vec<StaticAddress>,
    /// `kubernetes.kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `kubernetes.k8s_api_root` (parsed and unused, as in whereabouts).
    pub k8s_api_root: Option<String>,
    /// `configuration_path` (after the merge).
    pub configuration_path: Option<PathBuf>,
    /// `datastore` (+ `local_dir`).
    pub datastore: Datastore,
    /// `daemon_socket`: the node daemon that batches the kubernetes datastore's writes; `None`
    /// when set to `""` (always write directly).
    pub daemon_socket: Option<PathBuf>,
    /// `log_file`.
    pub log_file: Option<PathBuf>,
    /// `log_level`.
    pub log_level: Option<String>,
    /// The flat file that was merged, if any.
    pub flat_file: Option<PathBuf>,
    /// Accepted-and-ignored keys that were present (after the merge).
    pub ignored_keys: Vec<String>,
}

impl IpamConfig {
    /// Parse the whole CNI network config (the `ipam` object inside it), merging the flat file
    /// from the default search list.
    pub fn from_netconf(netconf: &Value) -> Result<IpamConfig, ConfigError> {
        Self::from_netconf_with(netconf, &FlatFileSearch::default())
    }

    /// Like [`IpamConfig::from_netconf`] with an explicit flat-file search list.
    pub fn from_netconf_with(netconf: &Value, search: &FlatFileSearch) -> Result<IpamConfig, ConfigError> {
        let conf = netconf.as_object().ok_or_else(|| {
            ConfigError::invalid(
                "(network config)",
                Some(type_name(netconf).into()),
                "is not a JSON object",
                "pass the whole CNI network configuration object",
            )
        })?;
        let name = match conf.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => return Err(wrong_type("name", v, "a string")),
        };
        let mut ipam = match conf.get("ipam") {
            Some(Value::Object(m)) => m.clone(),
            None | Some(Value::Null) => {
                return Err(ConfigError::invalid(
                    "ipam",
                    None,
                    "is missing",
                    r#"add "ipam": {"type": "whereabouts", "range": "192.168.4.0/24"}"#,
                ));
            }
            Some(v) => return Err(wrong_type("ipam", v, "an object")),
        };
        match ipam.get("type") {
            Some(Value::String(t)) if t == "whereabouts" => {}
            Some(Value::String(t)) => {
                return Err(ConfigError::invalid(
                    "ipam.type",
                    Some(t.clone()),
                    "is not `whereabouts`",
                    r#"set "type": "whereabouts" (this plugin answers to that type only)"#,
                ));
            }
            None | Some(Value::Null) => {
                return Err(ConfigError::invalid(
                    "ipam.type",
                    None,
                    "is missing",
                    r#"set "type": "whereabouts""#,
                ));
            }
            Some(v) => return Err(wrong_type("ipam.type", v, "a string")),
        }
        canonicalize_keys(&mut ipam, "ipam")?;
        check_keys(&ipam, "ipam", IPAM_KEYS)?;

        // Flat file: inline configuration_path first, then the search list.
        let mut candidates = Vec::new();
        if let Some(Value::String(p)) = ipam.get("configuration_path")
            && !p.is_empty()
        {
            let p = PathBuf::from(p);
            if p.is_dir() {
                candidates.push(p.join(FLAT_FILE_NAME));
            } else {
                candidates.push(p);
            }
        }
        candidates.extend(search.paths.iter().cloned());
        let mut flat_file = None;
        for path in candidates {
            if !path_exists(&path) {
                continue;
            }
            let flat = read_flat_file(&path)?;
            merge_missing(&mut ipam, &flat, true);
            tracing::debug!(path = %path.display(), "merged whereabouts flat file");
            flat_file = Some(path);
            break;
        }

        let mut cfg = parse_ipam(&ipam)?;
        cfg.name = name;
        cfg.flat_file = flat_file;
        // Only the inline value counts (whereabouts restores it around the merge).
        cfg.enable_overlapping_ranges =
            match conf.get("ipam").and_then(|i| i.get("enable_overlapping_ranges")) {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(v) => return Err(wrong_type("ipam.enable_overlapping_ranges", v, "true or false")),
            };
        Ok(cfg)
    }
}

/// Like Go's `pathExists`: anything but "not found" counts as existing (so a permission
/// problem is reported instead of silently skipping the file).
fn path_exists(p: &Path) -> bool {
    match std::fs::metadata(p) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

fn read_flat_file(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let label = format!("flat file {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(label.clone(), path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        ConfigError::invalid(
            label.clone(),
            None,
            format!("is not valid JSON ({e})"),
            r#"write a JSON object like {"datastore": "kubernetes", "kubernetes": {"kubeconfig": "..."}}"#,
        )
    })?;
    let Value::Object(mut map) = v else {
        return Err(ConfigError::invalid(
            label,
            Some(type_name(&v).into()),
            "is not a JSON object",
            r#"write a JSON object like {"datastore": "kubernetes"}"#,
        ));
    };
    canonicalize_keys(&mut map, &label)?;
    check_keys(&map, &label, IPAM_KEYS)?;
    Ok(map)
}

/// mergo-style merge: fill keys that are absent or zero-valued in `dst` from `src`, recursing
/// into objects. `enable_overlapping_ranges` is never taken from the flat file.
pub fn merge_missing(dst: &mut Map<String, Value>, src: &Map<String, Value>, top: bool) {
    for (k, sv) in src {
        if top && k == "enable_overlapping_ranges" {
            continue;
        }
        match dst.get_mut(k) {
            None => {
                dst.insert(k.clone(), sv.clone());
            }
            Some(Value::Object(dm)) => {
                if let Value::Object(sm) = sv {
                    merge_missing(dm, sm, false);
                }
            }
            Some(dv) => {
                if is_zero(dv) {
                    *dv = sv.clone();
                }
            }
        }
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(field: &str, v: &Value, want: &str) -> ConfigError {
    ConfigError::invalid(
        field,
        Some(v.to_string()),
        format!("is {}, not {want}", type_name(v)),
        format!("write {want}"),
    )
}

/// Fold case and separators for "did you mean" matching.
fn fold(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '_' | '-' | ' ' | '.'))
        .flat_map(char::to_lowercase)
        .collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The known key nearest to `key`: equal after folding case and separators, else the smallest
/// edit distance within a third of the length (at least 2).
pub fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let f = fold(key);
    if let Some(k) = known.iter().find(|k| fold(k) == f) {
        return Some(k);
    }
    let limit = (key.chars().count() / 3).max(2);
    known
        .iter()
        .map(|k| {
            (
                levenshtein(&f, &fold(k)).min(levenshtein(&key.to_lowercase(), &k.to_lowercase())),
                *k,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Renames keys that equal a known key up to ASCII case to the known spelling, in the `ipam`
/// object and its nested objects, as Go's case-insensitive `encoding/json` matching reads them
/// (`Range_Start` is `range_start`). Two spellings of one key in one object are an error.
pub fn canonicalize_keys(ipam: &mut Map<String, Value>, path: &str) -> Result<(), ConfigError> {
    rename_to_known(ipam, path, IPAM_KEYS)?;
    for (key, known) in [
        ("ipRanges", RANGE_KEYS),
        ("routes", ROUTE_KEYS),
        ("addresses", ADDRESS_KEYS),
    ] {
        if let Some(Value::Array(items)) = ipam.get_mut(key) {
            for (i, item) in items.iter_mut().enumerate() {
                if let Value::Object(m) = item {
                    rename_to_known(m, &format!("{path}.{key}[{i}]"), known)?;
                }
            }
        }
    }
    for (key, known) in [("dns", DNS_KEYS), ("kubernetes", KUBERNETES_KEYS)] {
        if let Some(Value::Object(m)) = ipam.get_mut(key) {
            rename_to_known(m, &format!("{path}.{key}"), known)?;
        }
    }
    Ok(())
}

fn rename_to_known(map: &mut Map<String, Value>, path: &str, known: &[&str]) -> Result<(), ConfigError> {
    let renames: Vec<(String, &str)> = map
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .filter_map(|k| {
            known
                .iter()
                .find(|want| want.eq_ignore_ascii_case(k))
                .map(|want| (k.clone(), *want))
        })
        .collect();
    for (from, to) in renames {
        if map.contains_key(to) {
            return Err(ConfigError::invalid(
                path,
                None,
                format!("has both `{from}` and `{to}`, which name the same key"),
                format!("keep only `{to}`"),
            ));
        }
        if let Some(v) = map.remove(&from) {
            tracing::warn!(key = %from, canonical = to, "reading a key written in another letter case");
            map.insert(to.to_string(), v);
        }
    }
    Ok(())
}

fn check_keys(map: &Map<String, Value>, path: &str, known: &[&str]) -> Result<(), ConfigError> {
    for key in map.keys() {
        if known.contains(&key.as_str()) {
            continue;
        }
        const WHY: &str = "(whereabouts ignores unknown keys silently; netattach refuses them so a typo cannot go unnoticed)";
        return Err(match suggest(key, known) {
            Some(s) => ConfigError::invalid(
                path,
                None,
                format!("unknown key `{key}`; did you mean `{s}`? {WHY}"),
                format!("rename `{key}` to `{s}`"),
            ),
            None => ConfigError::invalid(
                path,
                None,
                format!("unknown key `{key}` {WHY}"),
                format!("remove `{key}`; known keys are: {}", known.join(", ")),
            ),
        });
    }
    Ok(())
}

type JsonObject = Map<String, Value>;

/// Typed accessors over one JSON object, naming fields by their path.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    fn field(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// A string; empty strings count as absent (Go zero value).
    fn str(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong_type(&self.field(key), v, "a string")),
        }
    }

    fn str_list(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(wrong_type(&format!("{}[{i}]", self.field(key)), v, "a string")),
                })
                .collect(),
            Some(v) => Err(wrong_type(&self.field(key), v, "a list of strings")),
        }
    }

    fn u32(&self, key: &str) -> Result<Option<u32>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(v) => Ok(Some(v)),
                None => Err(wrong_type(
                    &self.field(key),
                    &Value::Number(n.clone()),
                    "a non-negative integer",
                )),
            },
            Some(v) => Err(wrong_type(&self.field(key), v, "a non-negative integer")),
        }
    }

    fn ip(&self, key: &str) -> Result<Option<IpAddr>, ConfigError> {
        match self.str(key)? {
            None => Ok(None),
            Some(s) => parse_ip_sloppy(s).map(Some).ok_or_else(|| {
                ConfigError::invalid(
                    self.field(key),
                    Some(s.into()),
                    "is not an IP address",
                    "write an IP address",
                )
            }),
        }
    }

    fn objects(&self, key: &str) -> Result<Vec<(String, &'a JsonObject)>, ConfigError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let p = format!("{}[{i}]", self.field(key));
                    match v {
                        Value::Object(m) => Ok((p, m)),
                        v => Err(wrong_type(&p, v, "an object")),
                    }
                })
                .collect(),
            Some(v) => Err(wrong_type(&self.field(key), v, "a list of objects")),
        }
    }
}

fn parse_ipam(ipam: &Map<String, Value>) -> Result<IpamConfig, ConfigError> {
    let o = Obj {
        map: ipam,
        path: "ipam".into(),
    };

    if let Some(size) = o.str("node_slice_size")? {
        return Err(ConfigError::unsupported(
            "ipam.node_slice_size",
            Some(size.into()),
            "selects whereabouts Fast IPAM (node slices), which netattach does not support yet",
            "remove `node_slice_size`; netattach allocates without a global lease, so node slices are not needed",
        ));
    }

    let network_name = o.str("network_name")?.map(str::to_string);
    if let Some(n) = &network_name
        && !valid_network_name(n)
    {
        return Err(ConfigError::invalid(
            "ipam.network_name",
            Some(n.clone()),
            "is not a valid name (it prefixes IPPool object names)",
            "use lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit",
        ));
    }

    // Ranges: top-level first.
    let mut ranges = Vec::new();
    let top_exclude = o.str_list("exclude")?;
    let top_start = o.str("range_start")?;
    let top_end = o.str("range_end")?;
    match o.str("range")? {
        Some(r) => ranges.push(
            IpRange::parse(r, top_start, top_end, &top_exclude, None).map_err(|e| e.prefixed("ipam."))?,
        ),
        None => {
            for (key, present) in [
                ("exclude", !top_exclude.is_empty()),
                ("range_start", top_start.is_some()),
                ("range_end", top_end.is_some()),
            ] {
                if present {
                    return Err(ConfigError::invalid(
                        format!("ipam.{key}"),
                        None,
                        "applies only to the top-level `range`, which is not set (whereabouts would silently ignore it)",
                        format!("move `{key}` into the `ipRanges` entry it belongs to, or set `range`"),
                    ));
                }
            }
        }
    }
    for (path, m) in o.objects("ipRanges")? {
        check_keys(m, &path, RANGE_KEYS)?;
        let e = Obj {
            map: m,
            path: path.clone(),
        };
        let r = e.str("range")?.ok_or_else(|| {
            ConfigError::invalid(
                format!("{path}.range"),
                None,
                "is missing",
                r#"give every ipRanges entry a range, like {"range": "fd00::/64"}"#,
            )
        })?;
        let excl = e.str_list("exclude")?;
        let pfx = format!("{path}.");
        ranges.push(
            IpRange::parse(r, e.str("range_start")?, e.str("range_end")?, &excl, None)
                .map_err(|e| e.prefixed(&pfx))?,
        );
    }

    let gateway = o.ip("gateway")?;
    if let Some(g) = gateway
        && !ranges.is_empty()
    {
        match ranges.iter_mut().find(|r| r.cidr.contains(&g)) {
            Some(r) => r.gateway = Some(g),
            None => {
                let list: Vec<String> = ranges.iter().map(|r| r.cidr.to_string()).collect();
                return Err(ConfigError::invalid(
                    "ipam.gateway",
                    Some(g.to_string()),
                    format!("is outside every range ({})", list.join(", ")),
                    "use the router's address inside the range, or remove `gateway`",
                ));
            }
        }
    }

    let mut routes = Vec::new();
    for (path, m) in o.objects("routes")? {
        check_keys(m, &path, ROUTE_KEYS)?;
        let r = Obj {
            map: m,
            path: path.clone(),
        };
        let dst_s = r.str("dst")?.ok_or_else(|| {
            ConfigError::invalid(
                format!("{path}.dst"),
                None,
                "is missing",
                r#"write {"dst": "10.0.0.0/8"}"#,
            )
        })?;
        let dst = parse_net_sloppy(dst_s).map(|n| n.trunc()).ok_or_else(|| {
            ConfigError::invalid(
                format!("{path}.dst"),
                Some(dst_s.into()),
                "is not a CIDR",
                "write it like 10.0.0.0/8 or 0.0.0.0/0",
            )
        })?;
        let gw = r.ip("gw")?;
        if let Some(g) = gw
            && g.is_ipv4() != dst.addr().is_ipv4()
        {
            return Err(ConfigError::invalid(
                format!("{path}.gw"),
                Some(g.to_string()),
                format!("is not of the same address family as dst {dst}"),
                "use a next hop of the destination's family",
            ));
        }
        routes.push(RouteConfig {
            dst,
            gw,
            mtu: r.u32("mtu")?,
            advmss: r.u32("advmss")?,
            priority: r.u32("priority")?,
            table: r.u32("table")?,
            scope: r.u32("scope")?,
        });
    }

    let dns = match o.get("dns") {
        None => None,
        Some(Value::Object(m)) => {
            check_keys(m, "ipam.dns", DNS_KEYS)?;
            let d = Obj {
                map: m,
                path: "ipam.dns".into(),
            };
            let dns = Dns {
                nameservers: d.str_list("nameservers")?,
                domain: d.str("domain")?.map(str::to_string),
                search: d.str_list("search")?,
                options: d.str_list("options")?,
            };
            (dns != Dns::default()).then_some(dns)
        }
        Some(v) => return Err(wrong_type("ipam.dns", v, "an object")),
    };

    let mut addresses = Vec::new();
    for (path, m) in o.objects("addresses")? {
        check_keys(m, &path, ADDRESS_KEYS)?;
        let a = Obj {
            map: m,
            path: path.clone(),
        };
        let s = a.str("address")?.ok_or_else(|| {
            ConfigError::invalid(
                format!("{path}.address"),
                None,
                "is missing",
                r#"write {"address": "10.1.2.3/24"}"#,
            )
        })?;
        let address = parse_net_sloppy(s).ok_or_else(|| {
            ConfigError::invalid(
                format!("{path}.address"),
                Some(s.into()),
                "is not an address with prefix length",
                "write it like 10.1.2.3/24",
            )
        })?;
        let gw = a.ip("gateway")?;
        if let Some(g) = gw
            && g.is_ipv4() != address.addr().is_ipv4()
        {
            return Err(ConfigError::invalid(
                format!("{path}.gateway"),
                Some(g.to_string()),
                format!("is not of the same address family as {address}"),
                "use a gateway of the address's family",
            ));
        }
        addresses.push(StaticAddress { address, gateway: gw });
    }

    if ranges.is_empty() && addresses.is_empty() {
        return Err(ConfigError::invalid(
            "ipam.range",
            None,
            "is missing (and there are no `ipRanges` or `addresses`)",
            r#"set "range": "192.168.4.0/24" or "ipRanges": [{"range": "..."}]"#,
        ));
    }

    let (kubeconfig, k8s_api_root) = match o.get("kubernetes") {
        None => (None, None),
        Some(Value::Object(m)) => {
            check_keys(m, "ipam.kubernetes", KUBERNETES_KEYS)?;
            let k = Obj {
                map: m,
                path: "ipam.kubernetes".into(),
            };
            (
                k.str("kubeconfig")?.map(PathBuf::from),
                k.str("k8s_api_root")?.map(str::to_string),
            )
        }
        Some(v) => return Err(wrong_type("ipam.kubernetes", v, "an object")),
    };

    let local_dir = o.str("local_dir")?;
    let datastore = match o.str("datastore")? {
        None | Some("kubernetes") => Datastore::Kubernetes,
        Some("local") => Datastore::Local {
            dir: PathBuf::from(local_dir.unwrap_or(DEFAULT_LOCAL_DIR)),
        },
        Some("etcd") => {
            return Err(ConfigError::unsupported(
                "ipam.datastore",
                Some("etcd".into()),
                "selects the etcd datastore, which whereabouts removed in v0.6",
                r#"use "datastore": "kubernetes" (IPPool objects, the default) or "local""#,
            ));
        }
        Some(other) => {
            let hint = suggest(other, &["kubernetes", "local", "etcd"])
                .map(|s| format!("did you mean `{s}`? "))
                .unwrap_or_default();
            return Err(ConfigError::invalid(
                "ipam.datastore",
                Some(other.into()),
                "is not a known datastore",
                format!("{hint}use `kubernetes` (default) or `local`"),
            ));
        }
    };
    let daemon_socket = match o.str("daemon_socket")? {
        None if matches!(datastore, Datastore::Kubernetes) => Some(PathBuf::from(DEFAULT_DAEMON_SOCKET)),
        None => None,
        Some("") => None,
        Some(p) if matches!(datastore, Datastore::Local { .. }) => {
            return Err(ConfigError::invalid(
                "ipam.daemon_socket",
                Some(p.into()),
                "applies only to the kubernetes datastore (the local store has no daemon)",
                r#"remove `daemon_socket`, or use "datastore": "kubernetes""#,
            ));
        }
        Some(p) if !p.starts_with('/') => {
            return Err(ConfigError::invalid(
                "ipam.daemon_socket",
                Some(p.into()),
                "is not an absolute path",
                r#"write the daemon's --socket path, e.g. "/run/netattach/daemon.sock", or "" for none"#,
            ));
        }
        Some(p) => Some(PathBuf::from(p)),
    };
    if let Some(dir) = local_dir
        && !matches!(datastore, Datastore::Local { .. })
    {
        return Err(ConfigError::invalid(
            "ipam.local_dir",
            Some(dir.into()),
            "applies only to the local datastore",
            r#"add "datastore": "local", or remove `local_dir`"#,
        ));
    }

    let ignored_keys: Vec<String> = IGNORED_KEYS
        .iter()
        .filter(|k| o.get(k).is_some())
        .map(|k| k.to_string())
        .collect();
    if !ignored_keys.is_empty() {
        tracing::debug!(keys = ?ignored_keys, "ignoring whereabouts keys that netattach does not need");
    }

    Ok(IpamConfig {
        name: None,
        network_name,
        ranges,
        gateway,
        enable_overlapping_ranges: true,
        routes,
        dns,
        addresses,
        kubeconfig,
        k8s_api_root,
        configuration_path: o.str("configuration_path")?.map(PathBuf::from),
        datastore,
        daemon_socket,
        log_file: o.str("log_file")?.map(PathBuf::from),
        log_level: o.str("log_level")?.map(str::to_string),
        flat_file: None,
        ignored_keys,
    })
}

/// A DNS-1123 subdomain-ish name: it prefixes `IPPool` object names (and local file names).
pub fn valid_network_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 200
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}
