//! The configuration of the netattach meta-plugin (CNI `type: "netattach"`), the config the
//! container runtime hands our shim on stdin.
//!
//! Keys follow Multus' config (`docs/configuration.md`) where they mean the same thing:
//! `clusterNetwork`, `defaultNetworks`, `systemNamespaces`, `multusNamespace`,
//! `namespaceIsolation`, `globalNamespaces` (a comma-separated string as in Multus, or a list),
//! `binDir`, `confDir`, `cniDir`, `readinessindicatorfile`, `logLevel`, `logFile`; plus our
//! `daemonSocket`, `daemonTimeoutSeconds`, `readinessTimeoutSeconds`, `multusCacheDir`,
//! `localSource` (the lab's file-backed pod and NAD source, instead of the daemon) and the
//! CNI-reserved keys (`capabilities`, `runtimeConfig`, `prevResult`,
//! `args`, `cni.dev/*`, `cniVersions`, `disableCheck`, `disableGC`).
//!
//! Deliberate differences from Multus:
//! - `confDir` (where CNI configs live, searched for `clusterNetwork`, `defaultNetworks` and
//!   NADs with an empty `spec.config`) defaults to `/etc/cni/net.d`, not
//!   `/etc/cni/multus/net.d`: on K3s the installer sets `/var/lib/rancher/k3s/agent/etc/cni/net.d`.
//! - `cniDir` is our state directory (attachment records), default `/var/lib/cni/netattach`;
//!   the legacy Multus cache in `/var/lib/cni/multus` is read separately.
//! - `clusterNetwork` may be left out: then the first other config file in `confDir` is used
//!   (what Multus' auto-config generator would have wrapped).
//! - An unknown key is an error (code 7) naming the nearest known key; Multus ignores typos.
//!   Multus keys that make no sense for netattach (`kubeconfig`, `delegates`, …) get a specific
//!   error saying what to do instead.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value};

use netattach_cni::Version;
use netattach_cni::error::code;

use crate::error::ConfigError;
use crate::multus_cache::DEFAULT_MULTUS_CACHE_DIR;
use crate::util::nearest;

/// The CNI `type` of the meta-plugin.
pub const PLUGIN_TYPE: &str = "netattach";
/// Default `confDir`.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// `confDir` on K3s.
pub const K3S_CONF_DIR: &str = "/var/lib/rancher/k3s/agent/etc/cni/net.d";
/// Default `cniDir`.
pub const DEFAULT_CNI_DIR: &str = "/var/lib/cni/netattach";
/// Default `binDir`.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// Default `daemonSocket`.
pub const DEFAULT_DAEMON_SOCKET: &str = "/run/netattach/daemon.sock";
/// Default `daemonTimeoutSeconds`: how long ADD retries an unreachable or unready daemon.
pub const DEFAULT_DAEMON_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `readinessTimeoutSeconds`: how long ADD waits for `readinessindicatorfile` (Multus: 45 s).
pub const DEFAULT_READINESS_TIMEOUT: Duration = Duration::from_secs(45);
/// Largest accepted `*TimeoutSeconds` value.
const MAX_TIMEOUT_SECONDS: f64 = 600.0;

const SOURCE: &str = "netattach config";

/// Every key the meta config accepts (besides the `cni.dev/` prefix).
pub const KNOWN_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "clusterNetwork",
    "defaultNetworks",
    "systemNamespaces",
    "multusNamespace",
    "namespaceIsolation",
    "globalNamespaces",
    "binDir",
    "cniDir",
    "confDir",
    "readinessindicatorfile",
    "logLevel",
    "logFile",
    "daemonSocket",
    "daemonTimeoutSeconds",
    "readinessTimeoutSeconds",
    "multusCacheDir",
    "localSource",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "args",
    "cniVersions",
    "disableCheck",
    "disableGC",
];

/// Multus keys netattach refuses, with the reason and the fix.
const MULTUS_ONLY_KEYS: &[(&str, &str)] = &[
    (
        "kubeconfig",
        "the node daemon holds the cluster credentials; remove the key",
    ),
    (
        "delegates",
        "set \"clusterNetwork\" to the cluster network's name or config file instead",
    ),
    (
        "logToStderr",
        "logs always go to stderr; use \"logFile\" for a file copy",
    ),
    (
        "logOptions",
        "log rotation is not done by the plugin; remove the key",
    ),
    (
        "retryDeleteOnError",
        "DEL always keeps its record until every delegate succeeded; remove the key",
    ),
    ("auxiliaryCNIChainName", "not supported; remove the key"),
    ("cniConf", "the key is `confDir`"),
];

/// Log level of the shim (`logLevel`); without the key the shim logs warnings and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Multus' default, "only panics": errors here (a panic is printed anyway).
    Panic,
    /// Errors.
    Error,
    /// Warnings.
    Warn,
    /// Informational.
    Info,
    /// Multus' `verbose`: treated as debug.
    Verbose,
    /// Debug.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The `tracing` filter this level stands for.
    pub fn filter(self) -> tracing::level_filters::LevelFilter {
        use tracing::level_filters::LevelFilter;
        match self {
            LogLevel::Panic | LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Verbose | LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }
}

impl FromStr for LogLevel {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "panic" => LogLevel::Panic,
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "verbose" => LogLevel::Verbose,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return Err(()),
        })
    }
}

/// The parsed meta-plugin configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaConfig {
    /// `cniVersion`.
    pub cni_version: Version,
    /// `name`.
    pub name: String,
    /// `clusterNetwork`: a network (NAD in `multusNamespace`, else a config `name` in
    /// `confDir`), a config file path, or a directory. `None`: auto-detect in `confDir`.
    pub cluster_network: Option<String>,
    /// `defaultNetworks`, resolved like `clusterNetwork`.
    pub default_networks: Vec<String>,
    /// `systemNamespaces`: pods here get no `defaultNetworks`.
    pub system_namespaces: Vec<String>,
    /// `multusNamespace`: where `clusterNetwork`, `defaultNetworks` and the default-network
    /// annotation's NADs live.
    pub multus_namespace: String,
    /// `namespaceIsolation`.
    pub namespace_isolation: bool,
    /// `globalNamespaces`: namespaces any pod may use under isolation.
    pub global_namespaces: Vec<String>,
    /// `binDir`.
    pub bin_dir: PathBuf,
    /// `cniDir`: netattach's state.
    pub cni_dir: PathBuf,
    /// `confDir`: CNI config files.
    pub conf_dir: PathBuf,
    /// `readinessindicatorfile`.
    pub readiness_indicator_file: Option<PathBuf>,
    /// `logLevel`, when given.
    pub log_level: Option<LogLevel>,
    /// `logFile`.
    pub log_file: Option<PathBuf>,
    /// `daemonSocket`.
    pub daemon_socket: PathBuf,
    /// `daemonTimeoutSeconds`: how long ADD retries a daemon that is unreachable or not ready.
    pub daemon_timeout: Duration,
    /// `readinessTimeoutSeconds`: how long ADD waits for `readinessindicatorfile`.
    pub readiness_timeout: Duration,
    /// `multusCacheDir`: where DEL looks for a legacy Multus scratch cache.
    pub multus_cache_dir: PathBuf,
    /// `localSource`: a directory with `nads/*.yaml` and `pods/<ns>/<name>.json` used instead
    /// of the node daemon (the lab and tests). `None`: Kubernetes mode (the daemon).
    pub local_source: Option<PathBuf>,
    /// `capabilities` (the runtime decides what to pass from these).
    pub capabilities: Map<String, Value>,
    /// `runtimeConfig` as the runtime passed it (goes to the cluster network only).
    pub runtime_config: Map<String, Value>,
    /// The whole object, as given.
    pub raw: Map<String, Value>,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            cni_version: Version::CURRENT,
            name: "netattach".into(),
            cluster_network: None,
            default_networks: Vec::new(),
            system_namespaces: vec!["kube-system".into()],
            multus_namespace: "kube-system".into(),
            namespace_isolation: false,
            global_namespaces: vec!["default".into()],
            bin_dir: DEFAULT_BIN_DIR.into(),
            cni_dir: DEFAULT_CNI_DIR.into(),
            conf_dir: DEFAULT_CONF_DIR.into(),
            readiness_indicator_file: None,
            log_level: None,
            log_file: None,
            daemon_socket: DEFAULT_DAEMON_SOCKET.into(),
            daemon_timeout: DEFAULT_DAEMON_TIMEOUT,
            readiness_timeout: DEFAULT_READINESS_TIMEOUT,
            multus_cache_dir: DEFAULT_MULTUS_CACHE_DIR.into(),
            local_source: None,
            capabilities: Map::new(),
            runtime_config: Map::new(),
            raw: Map::new(),
        }
    }
}

fn err(
    field: &str,
    value: Option<&Value>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::new(SOURCE, field, value.map(|v| v.to_string()), problem, fix)
}

fn string(field: &str, v: &Value) -> Result<String, ConfigError> {
    v.as_str().map(str::to_string).ok_or_else(|| {
        err(
            field,
            Some(v),
            "is not a string",
            format!("write \"{field}\" as a JSON string"),
        )
    })
}

fn path(field: &str, v: &Value) -> Result<PathBuf, ConfigError> {
    let s = string(field, v)?;
    if s.is_empty() || !s.starts_with('/') {
        return Err(err(
            field,
            Some(v),
            "is not an absolute path",
            "write an absolute path, like \"/var/lib/cni/netattach\"",
        ));
    }
    Ok(PathBuf::from(s))
}

fn string_list(field: &str, v: &Value) -> Result<Vec<String>, ConfigError> {
    let items = v.as_array().ok_or_else(|| {
        err(
            field,
            Some(v),
            "is not a list of strings",
            format!("write \"{field}\": [\"a\", \"b\"]"),
        )
    })?;
    items
        .iter()
        .map(|i| {
            i.as_str().map(str::to_string).ok_or_else(|| {
                err(
                    field,
                    Some(i),
                    "is not a string",
                    format!("write \"{field}\": [\"a\", \"b\"]"),
                )
            })
        })
        .collect()
}

fn seconds(field: &str, v: &Value) -> Result<Duration, ConfigError> {
    v.as_f64()
        .filter(|s| s.is_finite() && (0.0..=MAX_TIMEOUT_SECONDS).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            err(
                field,
                Some(v),
                "is not a number of seconds from 0 to 600",
                format!("write \"{field}\": 10 (fractions like 0.5 are allowed)"),
            )
        })
}

fn boolean(field: &str, v: &Value) -> Result<bool, ConfigError> {
    v.as_bool().ok_or_else(|| {
        err(
            field,
            Some(v),
            "is not a boolean",
            format!("write \"{field}\": true or false"),
        )
    })
}

impl MetaConfig {
    /// Parses the config bytes the runtime passed on stdin.
    pub fn parse(bytes: &[u8]) -> Result<MetaConfig, ConfigError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ConfigError::new(
                SOURCE,
                "(document)",
                None,
                format!("is not valid JSON ({e})"),
                "fix the JSON syntax",
            )
            .with_code(code::DECODING_FAILURE)
        })?;
        let Value::Object(raw) = value else {
            return Err(ConfigError::new(
                SOURCE,
                "(document)",
                None,
                "is not a JSON object",
                "write the config as a JSON object",
            )
            .with_code(code::DECODING_FAILURE));
        };
        Self::from_map(raw)
    }

    /// Builds the config from an already parsed object.
    pub fn from_map(raw: Map<String, Value>) -> Result<MetaConfig, ConfigError> {
        let mut c = MetaConfig::default();
        let mut saw_version = false;
        let mut saw_name = false;
        let mut saw_type = false;
        for (k, v) in &raw {
            if k.starts_with("cni.dev/") {
                continue;
            }
            let key = if k == "readinessIndicatorFile" {
                "readinessindicatorfile"
            } else {
                k.as_str()
            };
            if v.is_null() && !matches!(key, "cniVersion" | "name" | "type") {
                continue;
            }
            match key {
                "cniVersion" => {
                    saw_version = true;
                    let s = string(k, v)?;
                    c.cni_version = Version::from_str(&s)
                        .ok()
                        .filter(|ver| ver.is_supported())
                        .ok_or_else(|| {
                            err(
                                k,
                                Some(v),
                                "is not a supported CNI version",
                                format!("use one of {}", Version::supported_strings().join(", ")),
                            )
                            .with_code(code::INCOMPATIBLE_VERSION)
                        })?;
                }
                "name" => {
                    saw_name = true;
                    c.name = string(k, v)?;
                }
                "type" => {
                    saw_type = true;
                    let t = string(k, v)?;
                    if t != PLUGIN_TYPE {
                        return Err(err(
                            k,
                            Some(v),
                            "is not the netattach meta-plugin",
                            "write \"type\": \"netattach\"",
                        ));
                    }
                }
                "clusterNetwork" => {
                    let s = string(k, v)?;
                    c.cluster_network = (!s.is_empty()).then_some(s);
                }
                "defaultNetworks" => c.default_networks = string_list(k, v)?,
                "systemNamespaces" => c.system_namespaces = string_list(k, v)?,
                "multusNamespace" => c.multus_namespace = string(k, v)?,
                "namespaceIsolation" => c.namespace_isolation = boolean(k, v)?,
                "globalNamespaces" => {
                    c.global_namespaces = match v {
                        Value::String(s) if s.trim().is_empty() => vec!["default".into()],
                        Value::String(s) => s
                            .split(',')
                            .map(|n| n.trim().to_string())
                            .filter(|n| !n.is_empty())
                            .collect(),
                        other => string_list(k, other)?,
                    }
                }
                "binDir" => c.bin_dir = path(k, v)?,
                "cniDir" => c.cni_dir = path(k, v)?,
                "confDir" => c.conf_dir = path(k, v)?,
                "readinessindicatorfile" => {
                    let s = string(k, v)?;
                    c.readiness_indicator_file = if s.is_empty() { None } else { Some(path(k, v)?) };
                }
                "logLevel" => {
                    let s = string(k, v)?;
                    c.log_level = Some(s.parse().map_err(|()| {
                        err(
                            k,
                            Some(v),
                            "is not a log level",
                            "use one of panic, error, warn, info, verbose, debug, trace",
                        )
                    })?);
                }
                "logFile" => {
                    let s = string(k, v)?;
                    c.log_file = if s.is_empty() { None } else { Some(path(k, v)?) };
                }
                "daemonSocket" => c.daemon_socket = path(k, v)?,
                "daemonTimeoutSeconds" => c.daemon_timeout = seconds(k, v)?,
                "readinessTimeoutSeconds" => c.readiness_timeout = seconds(k, v)?,
                "multusCacheDir" => c.multus_cache_dir = path(k, v)?,
                "localSource" => {
                    let s = string(k, v)?;
                    c.local_source = if s.is_empty() { None } else { Some(path(k, v)?) };
                }
                "capabilities" => {
                    c.capabilities = v.as_object().cloned().ok_or_else(|| {
                        err(
                            k,
                            Some(v),
                            "is not an object",
                            "write \"capabilities\": {\"portMappings\": true}",
                        )
                    })?;
                }
                "runtimeConfig" => {
                    c.runtime_config = v.as_object().cloned().ok_or_else(|| {
                        err(
                            k,
                            Some(v),
                            "is not an object",
                            "let the runtime fill \"runtimeConfig\"",
                        )
                    })?;
                }
                "prevResult" | "args" => {}
                "cniVersions" => {
                    string_list(k, v)?;
                }
                "disableCheck" | "disableGC" => {
                    boolean(k, v)?;
                }
                other => {
                    if let Some((_, fix)) = MULTUS_ONLY_KEYS.iter().find(|(m, _)| *m == other) {
                        return Err(err(
                            other,
                            Some(v),
                            "is a Multus setting netattach does not use",
                            *fix,
                        ));
                    }
                    let hint = nearest(other, KNOWN_KEYS).unwrap_or("name");
                    return Err(err(
                        other,
                        Some(v),
                        "is not a netattach setting",
                        format!("did you mean `{hint}`? (known keys: {})", KNOWN_KEYS.join(", ")),
                    ));
                }
            }
        }
        if !saw_version {
            return Err(err(
                "cniVersion",
                None,
                "is missing",
                format!("add \"cniVersion\": \"{}\"", Version::CURRENT.as_str()),
            ));
        }
        if !saw_name || c.name.is_empty() {
            return Err(err(
                "name",
                None,
                "is missing or empty",
                "add \"name\": \"netattach\"",
            ));
        }
        if !saw_type {
            return Err(err("type", None, "is missing", "add \"type\": \"netattach\""));
        }
        if c.multus_namespace.is_empty() {
            return Err(err(
                "multusNamespace",
                raw.get("multusNamespace"),
                "is empty",
                "leave it out (default kube-system) or name a namespace",
            ));
        }
        c.raw = raw;
        Ok(c)
    }

    /// Whether `namespace` is one of `systemNamespaces`.
    pub fn is_system_namespace(&self, namespace: &str) -> bool {
        self.system_namespaces.iter().any(|n| n == namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<MetaConfig, ConfigError> {
        MetaConfig::parse(s.as_bytes())
    }

    #[test]
    fn minimal_gets_defaults() {
        let c = parse(r#"{"cniVersion":"1.0.0","name":"netattach-network","type":"netattach"}"#).expect("ok");
        assert_eq!(c.cni_version, Version::V1_0_0);
        assert_eq!(c.conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(c.cni_dir, PathBuf::from("/var/lib/cni/netattach"));
        assert_eq!(c.daemon_socket, PathBuf::from("/run/netattach/daemon.sock"));
        assert_eq!(c.daemon_timeout, DEFAULT_DAEMON_TIMEOUT);
        assert_eq!(c.readiness_timeout, Duration::from_secs(45));
        assert_eq!(c.multus_cache_dir, PathBuf::from("/var/lib/cni/multus"));
        assert!(c.local_source.is_none());
        assert_eq!(c.system_namespaces, vec!["kube-system"]);
        assert_eq!(c.global_namespaces, vec!["default"]);
        assert_eq!(c.multus_namespace, "kube-system");
        assert!(c.cluster_network.is_none());
        assert!(c.is_system_namespace("kube-system"));
    }

    #[test]
    fn full_k3s_config() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"netattach-network","type":"netattach",
                "clusterNetwork":"/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist",
                "defaultNetworks":["extra"],"systemNamespaces":["kube-system","longhorn-system"],
                "multusNamespace":"netattach","namespaceIsolation":true,"globalNamespaces":"default, kube-system",
                "binDir":"/var/lib/rancher/k3s/data/cni","confDir":"/var/lib/rancher/k3s/agent/etc/cni/net.d",
                "cniDir":"/var/lib/cni/netattach","readinessindicatorfile":"/run/flannel/subnet.env",
                "logLevel":"verbose","logFile":"/var/log/netattach.log","daemonSocket":"/run/netattach/d.sock",
                "capabilities":{"portMappings":true,"bandwidth":true},
                "runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":8080,"protocol":"tcp"}]},
                "prevResult":null,"args":{"cni":{}},"cni.dev/attachments":[],"cniVersions":["1.0.0"],
                "disableCheck":false,"disableGC":false}"#,
        )
        .expect("ok");
        assert_eq!(c.global_namespaces, vec!["default", "kube-system"]);
        assert!(c.namespace_isolation);
        assert_eq!(c.log_level, Some(LogLevel::Verbose));
        assert_eq!(c.conf_dir, PathBuf::from(K3S_CONF_DIR));
        assert!(c.runtime_config.contains_key("portMappings"));
        assert_eq!(
            c.readiness_indicator_file,
            Some(PathBuf::from("/run/flannel/subnet.env"))
        );
        let list =
            parse(r#"{"cniVersion":"1.1.0","name":"n","type":"netattach","globalNamespaces":["a","b"]}"#)
                .expect("ok");
        assert_eq!(list.global_namespaces, vec!["a", "b"]);
        let camel =
            parse(r#"{"cniVersion":"1.1.0","name":"n","type":"netattach","readinessIndicatorFile":"/x"}"#)
                .expect("ok");
        assert_eq!(camel.readiness_indicator_file, Some(PathBuf::from("/x")));
    }

    #[test]
    fn netattach_keys() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n","type":"netattach","localSource":"/tmp/lab",
                "multusCacheDir":"/tmp/multus","daemonTimeoutSeconds":0.5,"readinessTimeoutSeconds":2}"#,
        )
        .expect("ok");
        assert_eq!(c.local_source, Some(PathBuf::from("/tmp/lab")));
        assert_eq!(c.multus_cache_dir, PathBuf::from("/tmp/multus"));
        assert_eq!(c.daemon_timeout, Duration::from_millis(500));
        assert_eq!(c.readiness_timeout, Duration::from_secs(2));
        let empty =
            parse(r#"{"cniVersion":"1.1.0","name":"n","type":"netattach","localSource":""}"#).expect("ok");
        assert!(empty.local_source.is_none());
        for bad in [
            r#""daemonTimeoutSeconds":-1"#,
            r#""daemonTimeoutSeconds":"10""#,
            r#""readinessTimeoutSeconds":601"#,
            r#""localSource":"relative""#,
            r#""multusCacheDir":3"#,
        ] {
            let e = parse(&format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"netattach",{bad}}}"#
            ))
            .expect_err(bad);
            assert_eq!(e.code, code::INVALID_NETWORK_CONFIG, "{e}");
            assert!(e.to_string().contains("fix:"), "{e}");
        }
    }

    #[test]
    fn unknown_key_names_the_nearest() {
        let e = parse(r#"{"cniVersion":"1.1.0","name":"n","type":"netattach","clusterNetwrok":"cbr0"}"#)
            .expect_err("typo");
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
        assert_eq!(e.field, "clusterNetwrok");
        assert!(e.fix.contains("`clusterNetwork`"), "{e}");
        let e = parse(r#"{"cniVersion":"1.1.0","name":"n","type":"netattach","confdir":"/x"}"#)
            .expect_err("case");
        assert!(e.fix.contains("`confDir`"), "{e}");
        let e = parse(r#"{"cniVersion":"1.1.0","name":"n","type":"netattach","kubeconfig":"/x"}"#)
            .expect_err("multus");
        assert!(e.problem.contains("Multus"), "{e}");
        assert_eq!(e.code, 7);
    }

    #[test]
    fn invalid_values() {
        let base = r#""cniVersion":"1.1.0","name":"n","type":"netattach""#;
        for (extra, field) in [
            (r#""namespaceIsolation":"yes""#, "namespaceIsolation"),
            (r#""defaultNetworks":"a""#, "defaultNetworks"),
            (r#""systemNamespaces":[1]"#, "systemNamespaces"),
            (r#""cniDir":"relative""#, "cniDir"),
            (r#""logLevel":"loud""#, "logLevel"),
            (r#""capabilities":[]"#, "capabilities"),
            (r#""globalNamespaces":5"#, "globalNamespaces"),
            (r#""disableGC":"no""#, "disableGC"),
        ] {
            let e = parse(&format!("{{{base},{extra}}}")).expect_err(extra);
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains("fix:"));
        }
        assert_eq!(
            parse(r#"{"name":"n","type":"netattach"}"#).expect_err("v").field,
            "cniVersion"
        );
        let e = parse(r#"{"cniVersion":"0.2.0","name":"n","type":"netattach"}"#).expect_err("old");
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert_eq!(
            parse(r#"{"cniVersion":"1.1.0","type":"netattach"}"#)
                .expect_err("n")
                .field,
            "name"
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.1.0","name":"n"}"#)
                .expect_err("t")
                .field,
            "type"
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.1.0","name":"n","type":"multus"}"#)
                .expect_err("t")
                .field,
            "type"
        );
        assert_eq!(parse("{").expect_err("json").code, code::DECODING_FAILURE);
        assert_eq!(parse("[]").expect_err("json").code, code::DECODING_FAILURE);
    }
}
