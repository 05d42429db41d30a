//! Why the daemon could not start (or stopped): each variant names the thing and the fix.

use std::path::PathBuf;

/// A daemon failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node name could not be determined.
    #[error("no node name: pass --node or set NODE_NAME (the pod's spec.nodeName via the downward API)")]
    NoNodeName,
    /// The Kubernetes config could not be loaded.
    #[error("loading the Kubernetes config from {source_name}: {message}")]
    Config {
        /// Where it came from.
        source_name: String,
        /// What failed.
        message: String,
    },
    /// The token file could not be read.
    #[error("reading the service-account token file {}: {message}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The Kubernetes client could not be built.
    #[error("building the Kubernetes client: {0}")]
    Client(String),
    /// The socket could not be set up.
    #[error("socket {}: {message}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What failed, with the fix.
        message: String,
    },
    /// The readiness file could not be written or removed.
    #[error("readiness file {}: {source}", path.display())]
    ReadyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The metrics listener could not be bound.
    #[error("metrics address {addr}: {source} (fix: choose a free --metrics-addr)")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The IPAM release queue directory could not be created.
    #[error("IPAM release queue {}: {source} (fix: pass a writable --ipam-queue-dir)", path.display())]
    QueueDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The Tokio runtime or the signal handlers could not be set up.
    #[error("{what}: {source}")]
    Runtime {
        /// What was being set up.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
}
