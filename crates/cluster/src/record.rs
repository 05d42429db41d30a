//! The durable local record of what ADD did, so DEL can undo exactly that.
//!
//! One JSON file per sandbox, `<dir>/<containerID>.json`, mode 0600, written before the first
//! delegate runs and updated as results arrive. Writes are atomic and durable: a temp file in
//! the same directory, fsync, rename over the target, fsync the directory; a crash leaves the
//! old record or the new one, never a torn one. The delegate configs are stored as embedded
//! JSON (not base64), so an operator can read the file.
//!
//! Compared with Multus' scratch cache (`os.WriteFile`, no temp file, no fsync, base64 bytes),
//! this is the deliberate difference: the record is the only thing that lets DEL release an
//! address after a node reboot, so it must survive one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use netattach_cni::env::validate_container_id;

use crate::delegates::Delegate;
use crate::error::Error;

/// The record's format version.
pub const RECORD_VERSION: u32 = 1;

/// The pod a record belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// One delegate as ADD ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedDelegate {
    /// `<ns>/<nad>` or the cluster network's config name.
    pub network_name: String,
    /// Interface name in the pod.
    pub ifname: String,
    /// The conflist, exactly as passed (stored as embedded JSON).
    #[serde(
        rename = "conf",
        serialize_with = "ser_raw_json",
        deserialize_with = "de_raw_json"
    )]
    pub conf_bytes: Vec<u8>,
    /// The cluster network.
    #[serde(default)]
    pub is_default: bool,
    /// The runtimeConfig passed.
    #[serde(default)]
    pub runtime_config: Map<String, Value>,
    /// Extra CNI_ARGS pairs passed.
    #[serde(default)]
    pub cni_args: Vec<(String, String)>,
    /// The delegate's ADD result, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl From<&Delegate> for RecordedDelegate {
    fn from(d: &Delegate) -> Self {
        RecordedDelegate {
            network_name: d.network_name.clone(),
            ifname: d.ifname.clone(),
            conf_bytes: d.conf_bytes.clone(),
            is_default: d.is_default,
            runtime_config: d.runtime_config.clone(),
            cni_args: d.cni_args.clone(),
            result: None,
        }
    }
}

fn ser_raw_json<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    let v: Value = serde_json::from_slice(bytes).map_err(serde::ser::Error::custom)?;
    v.serialize(s)
}

fn de_raw_json<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let v = Value::deserialize(d)?;
    serde_json::to_vec(&v).map_err(serde::de::Error::custom)
}

/// What ADD did for one sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// The pod.
    pub pod: PodRef,
    /// The delegates, in ADD order.
    pub delegates: Vec<RecordedDelegate>,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
}

impl AttachmentRecord {
    /// A new record stamped with the current time.
    pub fn new(container_id: &str, netns: &str, pod: PodRef, delegates: Vec<RecordedDelegate>) -> Self {
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        AttachmentRecord {
            version: RECORD_VERSION,
            container_id: container_id.to_string(),
            netns: netns.to_string(),
            pod,
            delegates,
            created_at,
        }
    }
}

fn record_path(dir: &Path, container_id: &str) -> Result<PathBuf, Error> {
    crate::util::container_file_name("attachment record", container_id)?;
    Ok(dir.join(format!("{container_id}.json")))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing directory", dir, e))
}

/// Writes the record atomically and durably to `<dir>/<containerID>.json` (mode 0600).
pub fn write_atomic(dir: &Path, record: &AttachmentRecord) -> Result<PathBuf, Error> {
    let target = record_path(dir, &record.container_id)?;
    fs::create_dir_all(dir).map_err(|e| Error::io("creating record directory", dir, e))?;
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Corrupt {
        path: target.clone(),
        problem: format!("record does not serialize ({e})"),
        fix: "this is a bug; report it".into(),
    })?;
    let tmp = dir.join(format!(
        ".{}.json.tmp.{}",
        record.container_id,
        std::process::id()
    ));
    let write = || -> Result<(), Error> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io("creating temp record", &tmp, e))?;
        f.write_all(&bytes)
            .map_err(|e| Error::io("writing temp record", &tmp, e))?;
        f.sync_all()
            .map_err(|e| Error::io("syncing temp record", &tmp, e))?;
        fs::rename(&tmp, &target).map_err(|e| Error::io("renaming record into place", &target, e))?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)?;
    Ok(target)
}

/// Reads the record for `container_id`; `Ok(None)` when there is none.
pub fn read(dir: &Path, container_id: &str) -> Result<Option<AttachmentRecord>, Error> {
    let path = record_path(dir, container_id)?;
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading record", &path, e)),
    };
    let record: AttachmentRecord = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.clone(),
        problem: format!("does not parse ({e})"),
        fix: "inspect the file; the attachments it lists may need manual cleanup before it is removed".into(),
    })?;
    if record.version != RECORD_VERSION {
        return Err(Error::Corrupt {
            path,
            problem: format!(
                "has format version {} but this netattach reads {RECORD_VERSION}",
                record.version
            ),
            fix: "run the netattach version that wrote it, or upgrade".into(),
        });
    }
    if record.container_id != container_id {
        return Err(Error::Corrupt {
            path,
            problem: format!("belongs to container `{}`", record.container_id),
            fix: "remove the misplaced file after checking which sandbox it describes".into(),
        });
    }
    Ok(Some(record))
}

/// Removes the record; succeeds when it is already gone.
pub fn remove(dir: &Path, container_id: &str) -> Result<(), Error> {
    let path = record_path(dir, container_id)?;
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing record", &path, e)),
    }
}

/// Container ids with a record in `dir` (for garbage collection).
pub fn list(dir: &Path) -> Result<Vec<String>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing records", dir, e)),
    };
    let mut ids: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".json")?;
            validate_container_id(id).ok()?;
            Some(id.to_string())
        })
        .collect();
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn sample() -> AttachmentRecord {
        let mut rc = Map::new();
        rc.insert("ips".into(), serde_json::json!(["192.168.4.20/24"]));
        AttachmentRecord::new(
            "abc123",
            "/var/run/netns/cni-1",
            PodRef {
                namespace: "longhorn-system".into(),
                name: "instance-manager-1".into(),
                uid: "u-1".into(),
            },
            vec![
                RecordedDelegate {
                    network_name: "cbr0".into(),
                    ifname: "eth0".into(),
                    conf_bytes: br#"{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"flannel"}]}"#
                        .to_vec(),
                    is_default: true,
                    runtime_config: Map::new(),
                    cni_args: Vec::new(),
                    result: Some(
                        serde_json::json!({"cniVersion": "1.0.0", "ips": [{"address": "10.42.0.5/24"}]}),
                    ),
                },
                RecordedDelegate {
                    network_name: "longhorn-system/storage".into(),
                    ifname: "lhnet1".into(),
                    conf_bytes: br#"{"cniVersion":"0.3.1","name":"storage","plugins":[{"type":"macvlan"}]}"#
                        .to_vec(),
                    is_default: false,
                    runtime_config: rc,
                    cni_args: vec![("IP".into(), "192.168.4.20/24".into())],
                    result: None,
                },
            ],
        )
    }

    #[test]
    fn write_read_remove_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = dir.path().join("records");
        let rec = sample();
        let path = write_atomic(&records, &rec).expect("write");
        assert_eq!(path, records.join("abc123.json"));
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = read(&records, "abc123").expect("read").expect("some");
        assert_eq!(back, rec);
        // Embedded JSON, not base64.
        let text = fs::read_to_string(&path).expect("text");
        assert!(text.contains("\"conf\": {"), "{text}");
        // Overwrite with a result.
        let mut rec2 = rec.clone();
        rec2.delegates[1].result = Some(serde_json::json!({"ips": []}));
        write_atomic(&records, &rec2).expect("rewrite");
        assert_eq!(read(&records, "abc123").expect("read"), Some(rec2));
        let names: Vec<String> = fs::read_dir(&records)
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        assert_eq!(names, vec!["abc123.json"], "no temp files left");
        assert_eq!(list(&records).expect("list"), vec!["abc123"]);
        remove(&records, "abc123").expect("remove");
        remove(&records, "abc123").expect("remove is idempotent");
        assert_eq!(read(&records, "abc123").expect("read"), None);
        assert_eq!(fs::read_dir(&records).expect("dir").count(), 0);
        assert!(list(&dir.path().join("nope")).expect("list").is_empty());
    }

    #[test]
    fn refuses_unsafe_ids_and_corrupt_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rec = sample();
        rec.container_id = "../evil".into();
        assert!(write_atomic(dir.path(), &rec).is_err());
        assert!(read(dir.path(), "../evil").is_err());
        fs::write(dir.path().join("bad.json"), "{").expect("write");
        let e = read(dir.path(), "bad").expect_err("corrupt");
        assert_eq!(e.code(), netattach_cni::code::STORE_CORRUPT);
        let mut other = sample();
        other.container_id = "x1".into();
        write_atomic(dir.path(), &other).expect("write");
        fs::rename(dir.path().join("x1.json"), dir.path().join("x2.json")).expect("mv");
        assert!(matches!(read(dir.path(), "x2"), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn from_delegate() {
        let d = Delegate {
            network_name: "ns/n".into(),
            ifname: "net1".into(),
            conf_bytes: b"{}".to_vec(),
            is_default: false,
            selection: None,
            runtime_config: Map::new(),
            cni_args: vec![("MAC".into(), "c2:11:22:33:44:55".into())],
            filter_v4_gateway: false,
            filter_v6_gateway: false,
            resource_name: None,
        };
        let r = RecordedDelegate::from(&d);
        assert_eq!(r.ifname, "net1");
        assert_eq!(r.cni_args, d.cni_args);
        assert!(r.result.is_none());
    }
}
