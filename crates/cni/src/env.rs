//! The plugin's environment: `CNI_COMMAND` and the other `CNI_*` variables, validated.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::args::CniArgs;
use crate::error::{CniError, code};

/// The six CNI operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify an attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Report readiness (1.1.0).
    Status,
    /// Remove stale resources (1.1.0).
    Gc,
}

impl Command {
    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    "unknown CNI_COMMAND",
                    format!(
                        "CNI_COMMAND=`{other}` is not a CNI operation; fix: use ADD, DEL, CHECK, VERSION, STATUS or GC"
                    ),
                ));
            }
        })
    }
}

/// Everything a plugin invocation gets from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for VERSION, STATUS and GC).
    pub container_id: String,
    /// `CNI_NETNS`, when given.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (empty for VERSION, STATUS and GC).
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: CniArgs,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
}

impl Invocation {
    /// Reads and validates the `CNI_*` variables through `get` (normally `std::env::var`).
    ///
    /// ADD and CHECK need `CNI_CONTAINERID`, `CNI_NETNS` and `CNI_IFNAME`; DEL needs the
    /// container id and interface name (the namespace may be gone). Errors use code 4 and name
    /// the variable.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let command = match get("CNI_COMMAND").filter(|c| !c.is_empty()) {
            Some(c) => c.parse::<Command>()?,
            None => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    "missing CNI_COMMAND",
                    "CNI_COMMAND is not set; fix: a runtime sets it to ADD, DEL, CHECK, VERSION, STATUS or GC",
                ));
            }
        };
        let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
        let attachment_verb = matches!(command, Command::Add | Command::Del | Command::Check);

        let container_id = non_empty("CNI_CONTAINERID").unwrap_or_default();
        let ifname = non_empty("CNI_IFNAME").unwrap_or_default();
        let netns = non_empty("CNI_NETNS").map(PathBuf::from);
        if attachment_verb {
            let mut missing = Vec::new();
            if container_id.is_empty() {
                missing.push("CNI_CONTAINERID");
            }
            if ifname.is_empty() {
                missing.push("CNI_IFNAME");
            }
            if netns.is_none() && command != Command::Del {
                missing.push("CNI_NETNS");
            }
            if !missing.is_empty() {
                return Err(CniError::invalid_env(format!(
                    "required env variables {missing:?} missing for {command}"
                )));
            }
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        let args = match non_empty("CNI_ARGS") {
            Some(raw) => CniArgs::parse(&raw)?,
            None => CniArgs::default(),
        };
        let path = non_empty("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }

    /// The environment a delegate gets for `command`: ours, with the command replaced.
    pub fn delegate_env(&self, command: Command) -> Vec<(String, String)> {
        let mut env = vec![
            ("CNI_COMMAND".to_string(), command.as_str().to_string()),
            ("CNI_CONTAINERID".to_string(), self.container_id.clone()),
            ("CNI_IFNAME".to_string(), self.ifname.clone()),
            ("CNI_ARGS".to_string(), self.args.to_env_string()),
            ("CNI_PATH".to_string(), join_path(&self.path)),
        ];
        if let Some(ns) = &self.netns {
            env.push(("CNI_NETNS".to_string(), ns.display().to_string()));
        }
        env
    }
}

/// Joins a plugin path list with `:`.
pub fn join_path(path: &[PathBuf]) -> String {
    path.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Checks an interface name the way the kernel and libcni do: 1 to 15 bytes, not `.` or `..`,
/// no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is `.` or `..`")
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(CniError::invalid_env(format!(
            "CNI_IFNAME=`{name}` {p}; fix: use an interface name of 1 to 15 bytes without '/', ':' or spaces, like net1"
        ))),
    }
}

/// Checks a container id: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::invalid_env(format!(
            "CNI_CONTAINERID=`{id}` has invalid characters; fix: it must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let err = Invocation::from_env(env(&[("CNI_COMMAND", "ADD")])).expect_err("missing");
        assert_eq!(err.code, code::INVALID_ENVIRONMENT);
        for var in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
            assert!(err.details.contains(var), "{err}");
        }
    }

    #[test]
    fn del_does_not_need_netns() {
        let inv = Invocation::from_env(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "net1"),
            ("CNI_PATH", "/a:/b"),
        ]))
        .expect("valid");
        assert_eq!(inv.netns, None);
        assert_eq!(inv.path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    }

    #[test]
    fn missing_and_unknown_command_are_code_4() {
        let err = Invocation::from_env(env(&[])).expect_err("missing");
        assert_eq!(err.code, code::INVALID_ENVIRONMENT);
        assert!(err.details.contains("CNI_COMMAND"));
        let err = Invocation::from_env(env(&[("CNI_COMMAND", "FROB")])).expect_err("unknown");
        assert_eq!(err.code, code::INVALID_ENVIRONMENT);
        assert!(err.details.contains("FROB"));
    }

    #[test]
    fn ifname_rules() {
        assert!(validate_ifname("net1").is_ok());
        assert!(validate_ifname("abcdefghijklmno").is_ok());
        for bad in ["", "abcdefghijklmnop", ".", "..", "a/b", "a:b", "a b", "a\tb"] {
            let err = validate_ifname(bad).expect_err(bad);
            assert_eq!(err.code, code::INVALID_ENVIRONMENT);
            assert!(err.details.contains("CNI_IFNAME"));
        }
    }

    #[test]
    fn container_id_rules() {
        assert!(validate_container_id("abc-1_2.3").is_ok());
        assert!(validate_container_id("-abc").is_err());
        assert!(validate_container_id("a/b").is_err());
    }

    #[test]
    fn delegate_env_replaces_the_command() {
        let inv = Invocation::from_env(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "net1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p"),
        ]))
        .expect("valid");
        let denv: HashMap<_, _> = inv.delegate_env(Command::Del).into_iter().collect();
        assert_eq!(denv["CNI_COMMAND"], "DEL");
        assert_eq!(denv["CNI_NETNS"], "/run/netns/x");
        assert_eq!(denv["CNI_ARGS"], "IgnoreUnknown=1;K8S_POD_NAME=p");
    }
}
