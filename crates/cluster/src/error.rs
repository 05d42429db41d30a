//! Errors of the cluster crate and their mapping onto CNI error codes.
//!
//! Every error a user can cause names the field, the value and the fix:
//! [`AnnotationError`] for pod annotations (it also names the annotation and the element
//! index), [`ConfigError`] for configuration (the meta-plugin config, a NAD's `spec.config`, a
//! CNI config file), and [`Error`] for everything resolution can hit. [`Error::code`] gives the
//! CNI code; `From<Error> for CniError` does the conversion at the plugin boundary.

use std::fmt;
use std::path::PathBuf;

use netattach_cni::error::{CniError, code};

/// A pod annotation that does not parse or validate.
///
/// Display: ``annotation `A` element [i] field `f`: value `v` <problem>; fix: <fix>``, with
/// the parts that do not apply left out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct AnnotationError {
    /// The annotation key, like `k8s.v1.cni.cncf.io/networks`.
    pub annotation: String,
    /// The element's position in the annotation (0-based), when the error is in one element.
    pub index: Option<usize>,
    /// The field inside the element (`name`, `ips[1]`, …), when there is one.
    pub field: Option<String>,
    /// The offending value as written.
    pub value: Option<String>,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for AnnotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "annotation `{}`", self.annotation)?;
        if let Some(i) = self.index {
            write!(f, " element [{i}]")?;
        }
        if let Some(field) = &self.field {
            write!(f, " field `{field}`")?;
        }
        write!(f, ":")?;
        if let Some(v) = &self.value {
            write!(f, " value `{v}`")?;
        }
        write!(f, " {}; fix: {}", self.problem, self.fix)
    }
}

/// A configuration error: where, which field, which value, what is wrong, how to fix it.
///
/// Display: ``<source>: field `X`: value `Y` <problem>; fix: <fix>``.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Which configuration: `netattach config`, `NAD longhorn-system/storage`, a file path.
    pub source_name: String,
    /// The field, as a path such as `plugins[0].type`.
    pub field: String,
    /// The offending value, if there was one.
    pub value: Option<String>,
    /// What is wrong with it.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
    /// The CNI code (7 unless said otherwise).
    pub code: u32,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: field `{}`:", self.source_name, self.field)?;
        if let Some(v) = &self.value {
            write!(f, " value `{v}`")?;
        }
        write!(f, " {}; fix: {}", self.problem, self.fix)
    }
}

impl ConfigError {
    /// An invalid-config error (code 7).
    pub fn new(
        source_name: impl Into<String>,
        field: impl Into<String>,
        value: Option<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        ConfigError {
            source_name: source_name.into(),
            field: field.into(),
            value,
            problem: problem.into(),
            fix: fix.into(),
            code: code::INVALID_NETWORK_CONFIG,
        }
    }

    /// The same error with another CNI code.
    pub fn with_code(mut self, code: u32) -> Self {
        self.code = code;
        self
    }
}

/// Everything this crate can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A pod annotation is invalid.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// A configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A referenced NetworkAttachmentDefinition does not exist.
    #[error(
        "network-attachment-definition `{namespace}/{name}` not found (wanted by {wanted_by}); fix: create the NetworkAttachmentDefinition `{name}` in namespace `{namespace}`, or correct the reference"
    )]
    NadNotFound {
        /// Namespace looked in.
        namespace: String,
        /// NAD name.
        name: String,
        /// What referred to it: the annotation, `clusterNetwork`, `defaultNetworks`.
        wanted_by: String,
    },
    /// `namespaceIsolation` forbids the reference.
    #[error(
        "annotation `{annotation}` element [{index}]: pod in namespace `{pod_namespace}` refers to network `{namespace}/{name}`, but namespaceIsolation is on and only namespaces {allowed:?} are allowed; fix: put the NetworkAttachmentDefinition in `{pod_namespace}`, add `{namespace}` to globalNamespaces, or turn namespaceIsolation off"
    )]
    NamespaceIsolation {
        /// The annotation key.
        annotation: String,
        /// Element index.
        index: usize,
        /// The pod's namespace.
        pod_namespace: String,
        /// The NAD's namespace.
        namespace: String,
        /// The NAD's name.
        name: String,
        /// Allowed namespaces (the pod's own plus globalNamespaces).
        allowed: Vec<String>,
    },
    /// Two delegates would get the same interface name.
    #[error(
        "interface name `{ifname}` is used by both `{first}` and `{second}`; fix: give each attachment its own interface name (`@ifname` or \"interface\" in the annotation)"
    )]
    DuplicateInterface {
        /// The interface name.
        ifname: String,
        /// The first network using it.
        first: String,
        /// The second network using it.
        second: String,
    },
    /// No CNI config matched a name or path.
    #[error("{what} `{wanted}`: {problem}; fix: {fix}")]
    NotFound {
        /// What was looked for: `clusterNetwork`, `CNI config for NAD x/y`, …
        what: String,
        /// The name or path.
        wanted: String,
        /// What was searched and found.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// A NAD or config source failed (API, cache, disk).
    #[error("{0}")]
    Source(#[from] crate::delegates::SourceError),
    /// Reading or writing a file failed.
    #[error("{op} `{}`: {source}", path.display())]
    Io {
        /// What was being done.
        op: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Stored state does not parse; refusing to guess.
    #[error("`{}` is corrupt: {problem}; fix: {fix}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// What an operator can do.
        fix: String,
    },
}

impl Error {
    /// The CNI error code for this error.
    pub fn code(&self) -> u32 {
        match self {
            Error::Annotation(_)
            | Error::NadNotFound { .. }
            | Error::NamespaceIsolation { .. }
            | Error::DuplicateInterface { .. }
            | Error::NotFound { .. } => code::INVALID_NETWORK_CONFIG,
            Error::Config(c) => c.code,
            Error::Source(s) if s.retryable => code::TRY_AGAIN_LATER,
            Error::Source(_) => code::INTERNAL,
            Error::Io { .. } => code::IO_FAILURE,
            Error::Corrupt { .. } => code::STORE_CORRUPT,
        }
    }

    /// The `reason` of the Kubernetes Event a failed ADD with this error raises on the pod:
    /// `NoNetworkFound` (as Multus) for a missing NAD or CNI config, `InvalidNetworkAnnotation`
    /// for an annotation that does not parse or names a bad interface, `NetworkNotAllowed` under
    /// namespaceIsolation, `InvalidNetworkConfig` for a bad NAD or config, and
    /// `ErrorAddingNetwork` for the rest.
    pub fn event_reason(&self) -> &'static str {
        match self {
            Error::NadNotFound { .. } | Error::NotFound { .. } => "NoNetworkFound",
            Error::Annotation(_) | Error::DuplicateInterface { .. } => "InvalidNetworkAnnotation",
            Error::NamespaceIsolation { .. } => "NetworkNotAllowed",
            Error::Config(_) => "InvalidNetworkConfig",
            Error::Source(_) | Error::Io { .. } | Error::Corrupt { .. } => {
                crate::daemon_api::EVENT_REASON_ADD_FAILED
            }
        }
    }

    pub(crate) fn io(op: impl Into<String>, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op: op.into(),
            path: path.into(),
            source,
        }
    }
}

impl From<Error> for CniError {
    fn from(e: Error) -> CniError {
        let code = e.code();
        let msg = match code {
            code::INVALID_NETWORK_CONFIG => "invalid network configuration",
            code::TRY_AGAIN_LATER => "try again later",
            code::IO_FAILURE => "I/O failure",
            code::STORE_CORRUPT => "stored state is corrupt",
            code::UNSUPPORTED_FIELD => "unsupported field",
            code::INCOMPATIBLE_VERSION => "incompatible CNI version",
            _ => "internal error",
        };
        CniError::new(code, msg, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_error_names_everything() {
        let e = AnnotationError {
            annotation: "k8s.v1.cni.cncf.io/networks".into(),
            index: Some(2),
            field: Some("mac".into()),
            value: Some("zz".into()),
            problem: "is not a MAC address".into(),
            fix: "write c2:11:22:33:44:55".into(),
        };
        assert_eq!(
            e.to_string(),
            "annotation `k8s.v1.cni.cncf.io/networks` element [2] field `mac`: value `zz` is not a MAC address; fix: write c2:11:22:33:44:55"
        );
        let cni: CniError = Error::from(e).into();
        assert_eq!(cni.code, code::INVALID_NETWORK_CONFIG);
        assert!(cni.details.contains("element [2]"));
    }

    #[test]
    fn codes() {
        let nf = Error::NadNotFound {
            namespace: "a".into(),
            name: "b".into(),
            wanted_by: "x".into(),
        };
        assert_eq!(nf.code(), 7);
        assert_eq!(nf.event_reason(), "NoNetworkFound");
        assert!(nf.to_string().contains("`a/b`"));
        let retry = Error::Source(crate::delegates::SourceError::retryable("cache not synced"));
        assert_eq!(retry.code(), code::TRY_AGAIN_LATER);
        let cfg = ConfigError::new("s", "f", None, "p", "x").with_code(2);
        assert_eq!(Error::from(cfg).code(), 2);
    }
}
