//! Reading the scratch cache Multus leaves for DEL (`/var/lib/cni/multus/<containerID>`), so
//! that after the cut-over netattach can DEL pods Multus created without leaking addresses.
//!
//! The file is a JSON array of Multus' `DelegateNetConf` (multus.md §3.6): untagged Go fields
//! `Conf`, `ConfList`, `Name`, `IsFilterV4Gateway`, `IsFilterV6Gateway`, `Bytes` (base64 of
//! the delegate's raw JSON) and tagged `ifnameRequest`, `macRequest`, `infinibandGUIDRequest`,
//! `ipRequest`, `default-route`, `deviceID`, `resourceName`. As Multus' DEL does, the first
//! entry is the master, interface names are re-derived by index (`getIfname`: the request,
//! else `CNI_IFNAME` for the master, else `net<idx>`), conflist-ness comes from the config, and
//! a missing conflist `cniVersion` is back-filled. The runtimeConfig is rebuilt from the cached
//! requests (`ips`, `mac`, `infinibandGUID`, `deviceID`; non-master only), filtered by the
//! capabilities the delegate's plugins declare, as `mergeCNIRuntimeConfig` + libcni do.
//!
//! Deliberate difference: `Bytes` (lossless) is preferred; only when it is absent or unusable
//! is the config rebuilt from the lossy `Conf`/`ConfList` structs, with a warning, because
//! that loses plugin-specific keys (Multus' own #1449 leak).

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::record::RecordedDelegate;
use crate::util::base64_decode;

/// The Multus cache directory on a stock install.
pub const DEFAULT_MULTUS_CACHE_DIR: &str = "/var/lib/cni/multus";

#[derive(Debug, Deserialize)]
struct DelegateNetConf {
    #[serde(rename = "Conf", default)]
    conf: Option<Value>,
    #[serde(rename = "ConfList", default)]
    conf_list: Option<Value>,
    #[serde(rename = "Name", default)]
    name: Option<String>,
    #[serde(rename = "ifnameRequest", default)]
    ifname_request: Option<String>,
    #[serde(rename = "macRequest", default)]
    mac_request: Option<String>,
    #[serde(rename = "infinibandGUIDRequest", default)]
    infiniband_guid_request: Option<String>,
    #[serde(rename = "ipRequest", default)]
    ip_request: Option<Vec<String>>,
    #[serde(rename = "deviceID", default)]
    device_id: Option<String>,
    #[serde(rename = "Bytes", default)]
    bytes: Option<String>,
}

fn corrupt(path: &str, problem: String) -> Error {
    Error::Corrupt {
        path: path.into(),
        problem,
        fix: "inspect the Multus cache file; the pod's secondary addresses may need manual release".into(),
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// A Go `NetConf`/`NetConfList` struct dump with its zero-valued noise removed.
fn strip_go_zero(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                let empty = match val {
                    Value::Null => true,
                    Value::String(s) => s.is_empty(),
                    Value::Object(o) => o.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    Value::Bool(b) => !b,
                    Value::Number(_) => false,
                };
                if !empty {
                    out.insert(k.clone(), strip_go_zero(val));
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(strip_go_zero).collect()),
        other => other.clone(),
    }
}

/// The delegate's config as a conflist, from `Bytes` or (lossy) from `Conf`/`ConfList`.
fn conflist_of(d: &DelegateNetConf, source: &str, cni_version: &str) -> Result<Map<String, Value>, Error> {
    let from_bytes = non_empty(&d.bytes).and_then(|b| {
        let raw = base64_decode(b);
        if raw.is_none() {
            tracing::warn!(
                source,
                "Multus cache `Bytes` is not base64; rebuilding from Conf/ConfList"
            );
        }
        match serde_json::from_slice::<Value>(&raw?) {
            Ok(Value::Object(o)) => Some(o),
            _ => {
                tracing::warn!(
                    source,
                    "Multus cache `Bytes` is not a JSON object; rebuilding from Conf/ConfList"
                );
                None
            }
        }
    });
    let mut obj = match from_bytes {
        Some(o) => o,
        None => {
            tracing::warn!(
                source,
                "rebuilding a delegate config from Multus' lossy Conf/ConfList; plugin-specific keys may be missing"
            );
            let list = d.conf_list.as_ref().map(strip_go_zero);
            let has_plugins = list
                .as_ref()
                .and_then(|l| l.get("plugins"))
                .and_then(Value::as_array)
                .is_some_and(|p| !p.is_empty());
            match (list, d.conf.as_ref().map(strip_go_zero)) {
                (Some(Value::Object(l)), _) if has_plugins => l,
                (_, Some(Value::Object(c))) if c.get("type").and_then(Value::as_str).is_some() => c,
                _ => {
                    return Err(corrupt(
                        source,
                        "a delegate has neither usable Bytes nor a Conf/ConfList with a plugin type".into(),
                    ));
                }
            }
        }
    };
    let version_missing = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    if version_missing {
        obj.insert("cniVersion".into(), Value::from(cni_version));
    }
    if obj
        .get("plugins")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty())
    {
        return Ok(obj);
    }
    if obj
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty())
    {
        let mut list = Map::new();
        list.insert(
            "cniVersion".into(),
            obj.get("cniVersion").cloned().unwrap_or(Value::Null),
        );
        list.insert(
            "name".into(),
            obj.get("name").cloned().unwrap_or_else(|| Value::from("")),
        );
        list.insert("plugins".into(), Value::Array(vec![Value::Object(obj)]));
        return Ok(list);
    }
    Err(corrupt(
        source,
        "a delegate config has neither \"type\" nor \"plugins\"".into(),
    ))
}

/// Converts the contents of a Multus cache file into recorded delegates for DEL.
/// `source` names the file in errors; `cni_ifname` is the DEL's `CNI_IFNAME`; `cni_version`
/// back-fills configs without one (Multus uses its own config's version).
pub fn parse(
    bytes: &[u8],
    source: &str,
    cni_ifname: &str,
    cni_version: &str,
) -> Result<Vec<RecordedDelegate>, Error> {
    let entries: Vec<DelegateNetConf> = serde_json::from_slice(bytes)
        .map_err(|e| corrupt(source, format!("is not a Multus delegate list ({e})")))?;
    let mut out = Vec::with_capacity(entries.len());
    for (idx, d) in entries.iter().enumerate() {
        let master = idx == 0;
        let conflist = conflist_of(d, source, cni_version)?;
        let ifname = match non_empty(&d.ifname_request) {
            Some(r) => r.to_string(),
            None if master => cni_ifname.to_string(),
            None => format!("net{idx}"),
        };
        let network_name = match non_empty(&d.name) {
            Some(n) => n.to_string(),
            None => conflist
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        };
        let mut runtime_config = Map::new();
        if !master {
            let caps = crate::delegates::declared_capabilities(&conflist);
            let mut wanted = Map::new();
            if let Some(ips) = d.ip_request.as_ref().filter(|i| !i.is_empty()) {
                wanted.insert("ips".into(), json!(ips));
            }
            if let Some(mac) = non_empty(&d.mac_request) {
                wanted.insert("mac".into(), json!(mac));
            }
            if let Some(guid) = non_empty(&d.infiniband_guid_request) {
                wanted.insert("infinibandGUID".into(), json!(guid));
            }
            if let Some(dev) = non_empty(&d.device_id) {
                wanted.insert("deviceID".into(), json!(dev));
            }
            for (k, v) in wanted {
                if caps.contains(&k) {
                    runtime_config.insert(k, v);
                }
            }
        }
        let conf_bytes = serde_json::to_vec(&Value::Object(conflist))
            .map_err(|e| corrupt(source, format!("config does not re-serialize ({e})")))?;
        out.push(RecordedDelegate {
            network_name,
            ifname,
            conf_bytes,
            is_default: master,
            runtime_config,
            cni_args: Vec::new(),
            result: None,
        });
    }
    Ok(out)
}

/// Reads `<dir>/<containerID>`; `Ok(None)` when Multus left no cache for it.
pub fn read(
    dir: &Path,
    container_id: &str,
    cni_ifname: &str,
    cni_version: &str,
) -> Result<Option<Vec<RecordedDelegate>>, Error> {
    crate::util::container_file_name("Multus cache", container_id)?;
    let path = dir.join(container_id);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading Multus cache", &path, e)),
    };
    parse(&bytes, &path.display().to_string(), cni_ifname, cni_version).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::base64_encode;

    const FIXTURE: &str = include_str!("../tests/fixtures/multus-cache-k3s-longhorn.json");

    #[test]
    fn fixture_bytes_are_what_they_claim() {
        // The fixture was built by hand: check its Bytes decode to the configs it describes.
        let v: Value = serde_json::from_str(FIXTURE).expect("json");
        let b0 = v[0]["Bytes"].as_str().expect("bytes");
        let flannel: Value = serde_json::from_slice(&base64_decode(b0).expect("b64")).expect("json");
        assert_eq!(flannel["name"], "cbr0");
        let b1 = v[1]["Bytes"].as_str().expect("bytes");
        let storage: Value = serde_json::from_slice(&base64_decode(b1).expect("b64")).expect("json");
        assert_eq!(storage["ipam"]["type"], "whereabouts");
        assert_eq!(base64_encode(&base64_decode(b1).expect("b64")), b1);
    }

    #[test]
    fn k3s_longhorn_cache_converts() {
        let ds = parse(FIXTURE.as_bytes(), "fixture", "eth0", "1.0.0").expect("parse");
        assert_eq!(ds.len(), 2);
        assert_eq!(ds[0].network_name, "cbr0");
        assert_eq!(ds[0].ifname, "eth0");
        assert!(ds[0].is_default);
        let flannel: Value = serde_json::from_slice(&ds[0].conf_bytes).expect("json");
        assert_eq!(flannel["plugins"][0]["type"], "flannel");
        assert_eq!(flannel["plugins"][1]["type"], "portmap");
        assert!(ds[0].runtime_config.is_empty());

        assert_eq!(ds[1].network_name, "longhorn-system/storage");
        assert_eq!(ds[1].ifname, "lhnet1");
        assert!(!ds[1].is_default);
        let storage: Value = serde_json::from_slice(&ds[1].conf_bytes).expect("json");
        // A single conf, normalised to a conflist, plugin-specific keys intact.
        assert_eq!(storage["name"], "storage");
        assert_eq!(storage["plugins"][0]["type"], "macvlan");
        assert_eq!(storage["plugins"][0]["master"], "eth1");
        assert_eq!(storage["plugins"][0]["ipam"]["range"], "192.168.4.0/24");
        assert_eq!(storage["plugins"][0]["ipam"]["exclude"][0], "192.168.4.0/28");
        // ipRequest is passed on because macvlan declares the `ips` capability.
        assert_eq!(ds[1].runtime_config.get("ips"), Some(&json!(["192.168.4.50/24"])));
        assert!(!ds[1].runtime_config.contains_key("mac"), "mac not declared");
    }

    #[test]
    fn ifnames_by_index_and_lossy_fallback() {
        let cache = json!([
            {"Conf": {"cniVersion": "", "ipam": {}, "dns": {}}, "ConfList": {"cniVersion": "0.3.1", "name": "cbr0",
              "plugins": [{"type": "flannel", "ipam": {}, "dns": {}}]}, "Name": "", "IsFilterV4Gateway": false,
              "IsFilterV6Gateway": false, "Bytes": null},
            {"Conf": {"cniVersion": "0.3.1", "name": "a", "type": "macvlan", "ipam": {"type": "whereabouts"}, "dns": {}},
             "ConfList": {}, "Name": "pods/a", "IsFilterV4Gateway": false, "IsFilterV6Gateway": false},
            {"Conf": {"name": "b", "type": "macvlan", "ipam": {}, "dns": {}}, "ConfList": {}, "Name": "pods/b",
             "ifnameRequest": "foo", "IsFilterV4Gateway": false, "IsFilterV6Gateway": false, "Bytes": "!!"}
        ]);
        let ds = parse(cache.to_string().as_bytes(), "t", "eth0", "1.1.0").expect("parse");
        let names: Vec<&str> = ds.iter().map(|d| d.ifname.as_str()).collect();
        assert_eq!(names, vec!["eth0", "net1", "foo"]);
        assert_eq!(ds[0].network_name, "cbr0");
        let c0: Value = serde_json::from_slice(&ds[0].conf_bytes).expect("json");
        assert_eq!(c0["plugins"][0], json!({"type": "flannel"}));
        let c2: Value = serde_json::from_slice(&ds[2].conf_bytes).expect("json");
        // cniVersion back-filled.
        assert_eq!(c2["cniVersion"], "1.1.0");
        assert_eq!(c2["plugins"][0]["type"], "macvlan");
        assert!(parse(b"{}", "t", "eth0", "1.0.0").is_err());
        assert!(parse(br#"[{"Conf":{},"ConfList":{}}]"#, "t", "eth0", "1.0.0").is_err());
        assert!(parse(b"[]", "t", "eth0", "1.0.0").expect("ok").is_empty());
    }

    #[test]
    fn read_from_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("0123abcd"), FIXTURE).expect("write");
        let ds = read(dir.path(), "0123abcd", "eth0", "1.0.0")
            .expect("read")
            .expect("some");
        assert_eq!(ds.len(), 2);
        assert!(
            read(dir.path(), "missing", "eth0", "1.0.0")
                .expect("read")
                .is_none()
        );
        assert!(read(dir.path(), "../x", "eth0", "1.0.0").is_err());
    }
}
