//! The plugin skeleton: environment + stdin in, one command dispatched, result or error out.
//!
//! It enforces the protocol rules every plugin shares: version negotiation (code 1), the
//! CHECK floor (0.4.0) and the STATUS/GC floor (1.1.0), errors as JSON on stdout with a
//! non-zero exit, and results written in exactly the requested version.

use std::io::{Read, Write};

use serde_json::json;

use crate::config::NetConf;
use crate::env::{Command, Invocation};
use crate::error::{CniError, code};
use crate::result::CniResult;
use crate::version::Version;

/// One validated request: environment, configuration and negotiated version.
#[derive(Debug, Clone)]
pub struct Request {
    /// The `CNI_*` environment.
    pub inv: Invocation,
    /// The configuration from stdin.
    pub conf: NetConf,
    /// The negotiated version; results are written in it.
    pub version: Version,
}

/// A CNI plugin: one method per operation. VERSION is answered by the skeleton.
pub trait Plugin {
    /// A one-line description for the "about" text.
    fn about(&self) -> String;
    /// ADD: returns the result to print.
    fn add(&self, req: &Request) -> Result<CniResult, CniError>;
    /// DEL.
    fn del(&self, req: &Request) -> Result<(), CniError>;
    /// CHECK.
    fn check(&self, req: &Request) -> Result<(), CniError>;
    /// STATUS.
    fn status(&self, req: &Request) -> Result<(), CniError>;
    /// GC.
    fn gc(&self, req: &Request) -> Result<(), CniError>;
}

/// What the process should print and exit with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code: 0 on success.
    pub exit_code: i32,
    /// Bytes for stdout: a result, a version answer or an error.
    pub stdout: Vec<u8>,
}

impl Outcome {
    fn success(value: Option<serde_json::Value>) -> Outcome {
        let stdout = value.map(|v| to_pretty(&v)).unwrap_or_default();
        Outcome { exit_code: 0, stdout }
    }

    fn failure(err: &CniError, cni_version: Option<&str>) -> Outcome {
        Outcome {
            exit_code: 1,
            stdout: to_pretty(&err.to_json(cni_version)),
        }
    }
}

fn to_pretty(v: &serde_json::Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Runs one invocation with an explicit environment and stdin; no process-global state.
pub fn dispatch(
    plugin: &dyn Plugin,
    get_env: impl Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> Outcome {
    let inv = match Invocation::from_env(get_env) {
        Ok(inv) => inv,
        Err(e) => return Outcome::failure(&e, None),
    };
    let mut bytes = Vec::new();
    if let Err(e) = stdin.read_to_end(&mut bytes) {
        return Outcome::failure(
            &CniError::io(format!("reading the configuration from stdin: {e}")),
            None,
        );
    }
    if inv.command == Command::Version {
        return version_answer(&bytes);
    }
    let conf = match NetConf::parse(&bytes) {
        Ok(c) => c,
        Err(e) => return Outcome::failure(&e, None),
    };
    let requested_version = conf.cni_version.clone();
    let cni_version = Some(requested_version.as_str());
    let version = match Version::negotiate(&conf.cni_version) {
        Ok(v) => v,
        Err(e) => return Outcome::failure(&e, cni_version),
    };
    let floor_error = match inv.command {
        Command::Check if !version.allows_check() => Some("config version does not allow CHECK"),
        Command::Status if !version.allows_status_and_gc() => Some("config version does not allow STATUS"),
        Command::Gc if !version.allows_status_and_gc() => Some("config version does not allow GC"),
        _ => None,
    };
    if let Some(msg) = floor_error {
        let err = CniError::new(
            code::INCOMPATIBLE_VERSION,
            msg,
            format!("cniVersion is {version}; fix: CHECK needs 0.4.0 or newer, STATUS and GC need 1.1.0"),
        );
        return Outcome::failure(&err, cni_version);
    }
    let req = Request { inv, conf, version };
    tracing::debug!(command = %req.inv.command, container = %req.inv.container_id, ifname = %req.inv.ifname, "dispatching");
    let outcome = match req.inv.command {
        Command::Add => plugin.add(&req).and_then(|r| r.to_value(version)).map(Some),
        Command::Del => plugin.del(&req).map(|()| None),
        Command::Check => plugin.check(&req).map(|()| None),
        Command::Status => plugin.status(&req).map(|()| None),
        Command::Gc => plugin.gc(&req).map(|()| None),
        Command::Version => Ok(None),
    };
    match outcome {
        Ok(v) => Outcome::success(v),
        Err(e) => {
            tracing::debug!(error = %e, "command failed");
            Outcome::failure(&e, cni_version)
        }
    }
}

fn version_answer(stdin: &[u8]) -> Outcome {
    // stdin is {"cniVersion": "<runtime's>"}; answer in that version when we know it.
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_owned))
        .and_then(|s| s.parse::<Version>().ok())
        .filter(|v| v.is_supported())
        .unwrap_or(Version::CURRENT);
    Outcome::success(Some(json!({
        "cniVersion": asked.as_str(),
        "supportedVersions": Version::supported_strings(),
    })))
}

/// Runs the plugin against the real process environment, stdin and stdout; returns the
/// exit code for `std::process::exit`.
pub fn run(plugin: &dyn Plugin) -> i32 {
    if std::env::var_os("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
        eprintln!(
            "{}\nCNI protocol versions supported: {}",
            plugin.about(),
            Version::supported_strings().join(", ")
        );
    }
    let outcome = dispatch(plugin, |k| std::env::var(k).ok(), &mut std::io::stdin().lock());
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(&outcome.stdout)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return 1;
    }
    outcome.exit_code
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;
    use crate::result::{IpConfig, Route};

    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<Command>>,
    }

    impl Plugin for Recorder {
        fn about(&self) -> String {
            "test plugin".into()
        }
        fn add(&self, req: &Request) -> Result<CniResult, CniError> {
            self.calls.borrow_mut().push(req.inv.command);
            Ok(CniResult {
                ips: vec![IpConfig {
                    address: "198.18.0.9/24".parse().expect("cidr"),
                    gateway: None,
                    interface: None,
                }],
                routes: vec![Route::new("0.0.0.0/0".parse().expect("cidr"), None)],
                ..Default::default()
            })
        }
        fn del(&self, req: &Request) -> Result<(), CniError> {
            self.calls.borrow_mut().push(req.inv.command);
            Ok(())
        }
        fn check(&self, req: &Request) -> Result<(), CniError> {
            self.calls.borrow_mut().push(req.inv.command);
            Err(CniError::new(code::CHECK_FAILED, "drift", "net1 is gone"))
        }
        fn status(&self, req: &Request) -> Result<(), CniError> {
            self.calls.borrow_mut().push(req.inv.command);
            Ok(())
        }
        fn gc(&self, req: &Request) -> Result<(), CniError> {
            self.calls.borrow_mut().push(req.inv.command);
            Ok(())
        }
    }

    fn run_with(p: &Recorder, command: &str, version: &str) -> (Outcome, serde_json::Value) {
        let env: HashMap<&str, String> = [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", "c1".into()),
            ("CNI_NETNS", "/run/netns/x".into()),
            ("CNI_IFNAME", "net1".into()),
        ]
        .into_iter()
        .collect();
        let stdin = format!(r#"{{"cniVersion":"{version}","name":"n","type":"t"}}"#);
        let out = dispatch(p, |k| env.get(k).cloned(), &mut stdin.as_bytes());
        let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out, v)
    }

    #[test]
    fn add_answers_in_the_requested_version() {
        let p = Recorder::default();
        for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let (out, v) = run_with(&p, "ADD", version);
            assert_eq!(out.exit_code, 0);
            assert_eq!(v["cniVersion"], version);
            assert_eq!(
                v["ips"][0].get("version").is_some(),
                version.starts_with("0."),
                "{version}"
            );
        }
    }

    #[test]
    fn unsupported_version_is_code_1_and_never_reaches_the_plugin() {
        let p = Recorder::default();
        let (out, v) = run_with(&p, "ADD", "9.9.9");
        assert_eq!(out.exit_code, 1);
        assert_eq!(v["code"], 1);
        assert!(p.calls.borrow().is_empty());
    }

    #[test]
    fn verb_floors_are_enforced() {
        let p = Recorder::default();
        let (_, v) = run_with(&p, "CHECK", "0.3.1");
        assert_eq!(v["code"], 1);
        assert_eq!(v["msg"], "config version does not allow CHECK");
        for verb in ["STATUS", "GC"] {
            let (_, v) = run_with(&p, verb, "1.0.0");
            assert_eq!(v["code"], 1, "{verb}");
        }
        assert!(p.calls.borrow().is_empty());
        let (out, _) = run_with(&p, "STATUS", "1.1.0");
        assert_eq!(out.exit_code, 0);
        let (out, v) = run_with(&p, "CHECK", "1.1.0");
        assert_eq!(out.exit_code, 1);
        assert_eq!(v["code"], code::CHECK_FAILED);
        assert_eq!(v["cniVersion"], "1.1.0");
    }

    #[test]
    fn version_reports_supported_versions() {
        let p = Recorder::default();
        let env = |k: &str| (k == "CNI_COMMAND").then(|| "VERSION".to_string());
        let out = dispatch(&p, env, &mut &br#"{"cniVersion":"0.4.0"}"#[..]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }

    #[test]
    fn invalid_json_is_code_6() {
        let p = Recorder::default();
        let env = |k: &str| match k {
            "CNI_COMMAND" => Some("ADD".to_string()),
            "CNI_CONTAINERID" => Some("c".into()),
            "CNI_NETNS" => Some("/x".into()),
            "CNI_IFNAME" => Some("net1".into()),
            _ => None,
        };
        let out = dispatch(&p, env, &mut &b"{nope"[..]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["code"], 6);
        assert_eq!(out.exit_code, 1);
    }
}
