//! The lab's error type, [`LabError`].
//!
//! A `LabError` means the lab itself could not do its job (bad input, not root, a namespace
//! that could not be built, an interrupt). A plugin that fails or a ping that gets no reply is
//! not an error: it is a finding, reported in the table and turned into `FAIL`.

use std::io;
use std::path::PathBuf;

use netattach_ipam::IpamError;
use netattach_netdev::NetdevError;
use netattach_plugins::install::InstallError;

/// Why the lab could not run (or could not be removed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A command-line value is unusable; nothing was built.
    #[error("invalid `--{field}` value `{value}`: {problem}; fix: {fix}")]
    Input {
        /// The option, without dashes.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        problem: String,
        /// What to do instead.
        fix: String,
    },
    /// The lab needs root to create namespaces and links.
    #[error(
        "the lab needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces; fix: run it as root, \
         e.g. `sudo netattach lab`"
    )]
    NotRoot,
    /// A previous lab (kept or crashed) or another running lab is in the way.
    #[error("a lab is already present ({what}); fix: run `netattach lab down` to remove it, then retry")]
    AlreadyPresent {
        /// What was found.
        what: String,
    },
    /// A namespace, link or probe operation failed.
    #[error("{context}: {source}")]
    Netdev {
        /// What the lab was doing.
        context: String,
        /// The netdev error.
        #[source]
        source: NetdevError,
    },
    /// A file operation failed.
    #[error("{context} `{}`: {source}", path.display())]
    Io {
        /// What the lab was doing.
        context: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Installing the binary into the lab's CNI bin dir failed.
    #[error("installing the plugins into the lab's CNI bin dir: {0}")]
    Install(#[from] InstallError),
    /// Reading the lab's IPAM store failed.
    #[error("{context}: {source}")]
    Ipam {
        /// What the lab was doing.
        context: String,
        /// The IPAM error (boxed: it is large).
        #[source]
        source: Box<IpamError>,
    },
    /// The state file could not be written or read.
    #[error("lab state file `{}`: {problem}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// SIGINT or SIGTERM arrived; the lab was torn down.
    #[error("interrupted by {signal}; the lab was torn down")]
    Interrupted {
        /// `SIGINT` or `SIGTERM`.
        signal: &'static str,
    },
    /// A call to the API server (`--kubeconfig`) failed.
    #[error("{context}: {problem}; fix: check the API server and the kubeconfig's rights")]
    Api {
        /// What the lab was doing.
        context: String,
        /// The API server's answer, or why there was none.
        problem: String,
    },
    /// A lab node's `netattach daemon` did not start or did not become ready.
    #[error("the netattach daemon of lab node {node}: {problem}; fix: read its log `{}`", log.display())]
    Daemon {
        /// The lab node.
        node: String,
        /// The daemon's log file.
        log: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// `lab down` could not remove everything.
    #[error("could not remove everything: {}; fix: check the messages, then run `netattach lab down` again", .0.join("; "))]
    Teardown(Vec<String>),
}

impl LabError {
    /// Wrap a netdev error with what the lab was doing.
    pub fn netdev(context: impl Into<String>) -> impl FnOnce(NetdevError) -> LabError {
        let context = context.into();
        move |source| LabError::Netdev { context, source }
    }

    /// Wrap an I/O error with what the lab was doing and the path.
    pub fn io(context: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> LabError {
        let path = path.into();
        move |source| LabError::Io {
            context,
            path,
            source,
        }
    }

    /// Wrap an IPAM error with what the lab was doing.
    pub fn ipam(context: impl Into<String>) -> impl FnOnce(IpamError) -> LabError {
        let context = context.into();
        move |source| LabError::Ipam {
            context,
            source: Box::new(source),
        }
    }
}
