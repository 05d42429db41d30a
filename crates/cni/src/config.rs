//! The per-plugin network configuration a plugin reads on stdin.
//!
//! [`NetConf`] keeps the whole JSON object (plugins parse their own keys from it, and IPAM
//! delegates get it unchanged) plus the fields every plugin needs: version, name, type,
//! `ipam`, `dns`, `runtimeConfig`, `prevResult` and the GC attachment list.

use serde_json::{Map, Value};

use crate::env::validate_container_id;
use crate::error::CniError;
use crate::result::{CniResult, Dns};

/// A parsed request configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion` as written (empty when absent).
    pub cni_version: String,
    /// `name`: the network name.
    pub name: String,
    /// `type`: the plugin binary name.
    pub plugin_type: String,
    /// The raw bytes, passed unchanged to delegates.
    pub bytes: Vec<u8>,
    /// The whole object.
    pub raw: Map<String, Value>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    /// Container id.
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

impl NetConf {
    /// Parses stdin. Invalid JSON is code 6; a missing `name` or `type` is code 7.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::decode(format!("network configuration on stdin is not valid JSON: {e}"))
        })?;
        let Value::Object(raw) = value else {
            return Err(CniError::decode(
                "network configuration on stdin must be a JSON object",
            ));
        };
        let cni_version = match raw.get("cniVersion") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(CniError::decode(format!(
                    "field `cniVersion`: value {other} is not a string; fix: write \"cniVersion\": \"1.1.0\""
                )));
            }
        };
        let name = string_field(&raw, "name")?;
        if name.is_empty() {
            return Err(CniError::invalid_config(
                "field `name` is missing or empty; fix: give the network a name, like \"storage\"",
            ));
        }
        validate_container_id(&name).map_err(|_| {
            CniError::invalid_config(format!(
                "field `name`: value `{name}` has invalid characters; fix: it must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
            ))
        })?;
        let plugin_type = string_field(&raw, "type")?;
        if plugin_type.is_empty() {
            return Err(CniError::invalid_config(
                "field `type` is missing or empty; fix: name the plugin binary, like \"macvlan\"",
            ));
        }
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            bytes: bytes.to_vec(),
            raw,
        })
    }

    /// A top-level key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.raw.get(key)
    }

    /// The `ipam` object, when present.
    pub fn ipam(&self) -> Option<&Map<String, Value>> {
        self.raw.get("ipam").and_then(Value::as_object)
    }

    /// `ipam.type` when set and non-empty; `None` means L2 only.
    pub fn ipam_type(&self) -> Result<Option<&str>, CniError> {
        match self.raw.get("ipam") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => match m.get("type") {
                None => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(CniError::invalid_config(format!(
                    "field `ipam.type`: value {other} is not a string; fix: write \"type\": \"whereabouts\""
                ))),
            },
            Some(other) => Err(CniError::invalid_config(format!(
                "field `ipam`: value {other} is not an object; fix: write \"ipam\": {{}} for L2 only, or an IPAM config"
            ))),
        }
    }

    /// `runtimeConfig`, when present.
    pub fn runtime_config(&self) -> Option<&Map<String, Value>> {
        self.raw.get("runtimeConfig").and_then(Value::as_object)
    }

    /// The `dns` key.
    pub fn dns(&self) -> Result<Dns, CniError> {
        match self.raw.get("dns") {
            None | Some(Value::Null) => Ok(Dns::default()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                CniError::invalid_config(format!(
                    "field `dns`: {e}; fix: write {{\"nameservers\": [\"198.18.0.53\"], \"search\": [], \"domain\": \"\", \"options\": []}}"
                ))
            }),
        }
    }

    /// `prevResult`, parsed from whatever layout it is in.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        match self.raw.get("prevResult") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::from_value(v)
                .map(Some)
                .map_err(|e| e.context("field `prevResult`")),
        }
    }

    /// GC's `cni.dev/valid-attachments` (or the spec-bug spelling `cni.dev/attachments`).
    pub fn valid_attachments(&self) -> Result<Vec<Attachment>, CniError> {
        let Some(list) = self
            .raw
            .get("cni.dev/valid-attachments")
            .or_else(|| self.raw.get("cni.dev/attachments"))
        else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = list else {
            return Err(CniError::invalid_config(
                "field `cni.dev/valid-attachments` is not a list",
            ));
        };
        items
            .iter()
            .map(|item| {
                let get = |k: &str| {
                    item.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                let a = Attachment {
                    container_id: get("containerID"),
                    ifname: get("ifname"),
                };
                if a.container_id.is_empty() {
                    return Err(CniError::invalid_config(format!(
                        "field `cni.dev/valid-attachments`: entry {item} has no containerID"
                    )));
                }
                Ok(a)
            })
            .collect()
    }
}

fn string_field(raw: &Map<String, Value>, key: &str) -> Result<String, CniError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(CniError::invalid_config(format!(
            "field `{key}`: value {other} is not a string"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    #[test]
    fn parses_a_macvlan_nad_config() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"storage","type":"macvlan","master":"eth1","mode":"bridge",
                "ipam":{"type":"whereabouts","range":"192.168.4.0/24"}}"#,
        )
        .expect("valid");
        assert_eq!(c.cni_version, "0.3.1");
        assert_eq!(c.ipam_type().expect("ok"), Some("whereabouts"));
        assert_eq!(c.get("master").and_then(Value::as_str), Some("eth1"));
    }

    #[test]
    fn invalid_json_is_code_6_and_missing_name_is_code_7() {
        assert_eq!(
            NetConf::parse(b"{oops").expect_err("bad").code,
            code::DECODING_FAILURE
        );
        assert_eq!(
            NetConf::parse(b"[1]").expect_err("bad").code,
            code::DECODING_FAILURE
        );
        let err = NetConf::parse(br#"{"cniVersion":"1.1.0","type":"macvlan"}"#).expect_err("no name");
        assert_eq!(err.code, code::INVALID_NETWORK_CONFIG);
        assert!(err.details.contains("`name`"));
        let err =
            NetConf::parse(br#"{"cniVersion":"1.1.0","name":"a b","type":"macvlan"}"#).expect_err("bad name");
        assert_eq!(err.code, code::INVALID_NETWORK_CONFIG);
    }

    #[test]
    fn empty_ipam_means_l2() {
        let c =
            NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"macvlan","ipam":{}}"#).expect("ok");
        assert_eq!(c.ipam_type().expect("ok"), None);
    }

    #[test]
    fn gc_attachments_accept_both_spellings() {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let raw = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"macvlan","{key}":[{{"containerID":"c1","ifname":"net1"}}]}}"#
            );
            let c = NetConf::parse(raw.as_bytes()).expect("ok");
            let a = c.valid_attachments().expect("ok");
            assert_eq!(
                a,
                vec![Attachment {
                    container_id: "c1".into(),
                    ifname: "net1".into()
                }]
            );
        }
    }
}
