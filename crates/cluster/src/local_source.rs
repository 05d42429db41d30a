//! A [`NadSource`] backed by NetworkAttachmentDefinition YAML files, for the lab (no API
//! server): every `*.yaml`/`*.yml` in a directory, multi-document files allowed, `kind: List`
//! wrappers unpacked. Documents of other kinds are skipped. The files are read once, at
//! [`LocalNadSource::load_dir`]; lookups are in memory.
//!
//! The manifests are the ones users `kubectl apply`: `apiVersion: k8s.cni.cncf.io/v1`,
//! `kind: NetworkAttachmentDefinition`, `metadata.name`/`namespace` (default `default`),
//! `metadata.annotations["k8s.v1.cni.cncf.io/resourceName"]`, `spec.config` (may be empty).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::annotation::RESOURCE_NAME_ANNOTATION;
use crate::delegates::{Nad, NadSource, SourceError};
use crate::error::{ConfigError, Error};
use crate::util::{is_dns1123_label, is_dns1123_subdomain};

/// The NAD API version.
pub const NAD_API_VERSION: &str = "k8s.cni.cncf.io/v1";
/// The NAD kind.
pub const NAD_KIND: &str = "NetworkAttachmentDefinition";

#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct Spec {
    #[serde(default)]
    config: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Doc {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: Option<Spec>,
    #[serde(default)]
    items: Vec<Doc>,
}

/// NADs loaded from YAML files.
#[derive(Debug, Clone, Default)]
pub struct LocalNadSource {
    nads: BTreeMap<(String, String), (Nad, String)>,
}

impl LocalNadSource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads every `*.yaml`/`*.yml` file in `dir` (sorted by name; not recursive).
    pub fn load_dir(dir: &Path) -> Result<Self, Error> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io("reading NAD directory", dir, e))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        paths.sort();
        let mut src = Self::new();
        for p in paths {
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io("reading NAD file", &p, e))?;
            src.add_yaml(&text, &p.display().to_string())?;
        }
        Ok(src)
    }

    /// Adds the NADs in a YAML text; `source` names it in errors.
    pub fn add_yaml(&mut self, text: &str, source: &str) -> Result<(), Error> {
        for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let doc_source = format!("{source} (document {})", i + 1);
            let doc: Option<Doc> = Option::deserialize(de).map_err(|e| {
                ConfigError::new(
                    &doc_source,
                    "(document)",
                    None,
                    format!("is not valid YAML for a Kubernetes object ({e})"),
                    "fix the YAML",
                )
            })?;
            let Some(doc) = doc else { continue };
            self.add_doc(doc, &doc_source)?;
        }
        Ok(())
    }

    fn add_doc(&mut self, doc: Doc, source: &str) -> Result<(), Error> {
        if doc.kind == "List" || doc.kind == format!("{NAD_KIND}List") {
            for item in doc.items {
                self.add_doc(item, source)?;
            }
            return Ok(());
        }
        if doc.kind != NAD_KIND {
            tracing::debug!(source, kind = %doc.kind, "skipping a document that is not a NetworkAttachmentDefinition");
            return Ok(());
        }
        let err = |field: &str, value: Option<String>, problem: &str, fix: &str| -> Error {
            Error::Config(ConfigError::new(source, field, value, problem, fix))
        };
        if doc.api_version != NAD_API_VERSION {
            return Err(err(
                "apiVersion",
                Some(doc.api_version),
                "is not the NAD API version",
                "write `apiVersion: k8s.cni.cncf.io/v1`",
            ));
        }
        let name = doc.metadata.name;
        if !is_dns1123_subdomain(&name) {
            return Err(err(
                "metadata.name",
                Some(name),
                "is not a valid object name (DNS-1123 subdomain)",
                "use lower-case letters, digits, '-' and '.'",
            ));
        }
        let namespace = doc
            .metadata
            .namespace
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        if !is_dns1123_label(&namespace) {
            return Err(err(
                "metadata.namespace",
                Some(namespace),
                "is not a valid namespace (DNS-1123 label)",
                "use lower-case letters, digits and '-'",
            ));
        }
        let nad = Nad {
            namespace: namespace.clone(),
            name: name.clone(),
            config: doc.spec.and_then(|s| s.config).unwrap_or_default(),
            resource_name: doc.metadata.annotations.get(RESOURCE_NAME_ANNOTATION).cloned(),
        };
        let key = (namespace, name);
        if let Some((_, first)) = self.nads.get(&key) {
            return Err(err(
                "metadata.name",
                Some(format!("{}/{}", key.0, key.1)),
                &format!("is defined twice (first in {first})"),
                "keep one definition",
            ));
        }
        self.nads.insert(key, (nad, source.to_string()));
        Ok(())
    }

    /// Number of NADs loaded.
    pub fn len(&self) -> usize {
        self.nads.len()
    }

    /// Whether none were loaded.
    pub fn is_empty(&self) -> bool {
        self.nads.is_empty()
    }
}

impl NadSource for LocalNadSource {
    fn get(&self, namespace: &str, name: &str) -> Result<Option<Nad>, SourceError> {
        Ok(self
            .nads
            .get(&(namespace.to_string(), name.to_string()))
            .map(|(n, _)| n.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_fixture_dir() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nads");
        let src = LocalNadSource::load_dir(&dir).expect("load");
        assert_eq!(src.len(), 3);
        let storage = src.get("longhorn-system", "storage").expect("ok").expect("some");
        assert!(storage.config.contains("whereabouts"));
        let sriov = src.get("default", "sriov-net").expect("ok").expect("some");
        assert_eq!(sriov.resource_name.as_deref(), Some("intel.com/sriov_vf"));
        assert_eq!(sriov.config, "");
        assert!(src.get("pods", "listed").expect("ok").is_some());
        assert!(src.get("default", "storage").expect("ok").is_none());
    }

    #[test]
    fn errors_name_file_and_field() {
        let mut s = LocalNadSource::new();
        let e = s
            .add_yaml(
                "apiVersion: v1\nkind: NetworkAttachmentDefinition\nmetadata: {name: a}\n",
                "x.yaml",
            )
            .expect_err("api");
        assert!(
            e.to_string().contains("x.yaml (document 1): field `apiVersion`"),
            "{e}"
        );
        let e = s
            .add_yaml("---\nkind: ConfigMap\n---\napiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {name: Bad}\n", "y.yaml")
            .expect_err("name");
        assert!(
            e.to_string().contains("document 2") && e.to_string().contains("metadata.name"),
            "{e}"
        );
        let doc = "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {name: a, namespace: n}\nspec: {config: '{}'}\n";
        s.add_yaml(doc, "a.yaml").expect("ok");
        let e = s.add_yaml(doc, "b.yaml").expect_err("dup");
        assert!(e.to_string().contains("first in a.yaml"), "{e}");
        assert!(s.add_yaml("a: [", "z.yaml").is_err());
        assert!(LocalNadSource::load_dir(Path::new("/nonexistent-netattach")).is_err());
    }
}
