//! Errors of the IPAM crate: [`ConfigError`] for anything a user wrote, [`IpamError`] for
//! allocation and storage, and [`ErrorKind`], the stable classification callers map to CNI
//! error codes (the CNI crate owns the numbers; this crate knows nothing of CNI types).
//!
//! Every user-caused error names the field, the value and the fix.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

/// Stable classification of an error, for mapping to CNI error codes.
///
/// Suggested mapping (owned by the CNI layer): `InvalidConfig` → 7, `UnsupportedField` → 2,
/// `Io` → 5, `TryAgain` → 11, `Exhausted` and `Internal` → plugin-specific codes (≥ 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The configuration (or a request derived from it) is invalid.
    InvalidConfig,
    /// A field is recognised but not supported by netattach.
    UnsupportedField,
    /// Reading or writing a file failed.
    Io,
    /// No free address is left in a pool.
    Exhausted,
    /// A transient condition; retrying later may succeed.
    TryAgain,
    /// Corrupt state or a bug; needs an operator.
    Internal,
}

/// A configuration error: which field, which value, what is wrong, how to fix it.
///
/// Display: ``field `X`: value `Y` <problem>; fix: <fix>`` (the value part is left out when
/// the field is missing altogether).
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    kind: ErrorKind,
    /// The field, as a path such as `ipam.ipRanges[1].range_start`.
    pub field: String,
    /// The offending value as written, if there was one.
    pub value: Option<String>,
    /// What is wrong with it.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
    #[source]
    source: Option<std::io::Error>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: ", self.field)?;
        if let Some(v) = &self.value {
            write!(f, "value `{v}` ")?;
        }
        write!(f, "{}; fix: {}", self.problem, self.fix)?;
        if let Some(src) = &self.source {
            write!(f, " ({src})")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// An invalid value (CNI "invalid network config").
    pub fn invalid(
        field: impl Into<String>,
        value: Option<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        ConfigError {
            kind: ErrorKind::InvalidConfig,
            field: field.into(),
            value,
            problem: problem.into(),
            fix: fix.into(),
            source: None,
        }
    }

    /// A recognised but unsupported field or value (CNI "unsupported field").
    pub fn unsupported(
        field: impl Into<String>,
        value: Option<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        ConfigError {
            kind: ErrorKind::UnsupportedField,
            ..Self::invalid(field, value, problem, fix)
        }
    }

    /// Reading a configuration file failed (CNI "I/O error").
    pub fn io(field: impl Into<String>, path: &std::path::Path, source: std::io::Error) -> Self {
        ConfigError {
            kind: ErrorKind::Io,
            field: field.into(),
            value: Some(path.display().to_string()),
            problem: "could not be read".into(),
            fix: "make the file readable by the CNI plugin (root) or remove it".into(),
            source: Some(source),
        }
    }

    /// The classification of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Prefix the field path, e.g. `ipam.` or `ipam.ipRanges[1].`.
    #[must_use]
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}{}", self.field);
        self
    }
}

/// An error from allocation or storage.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// No free address left.
    #[error(
        "pool `{pool}` ({range}) is exhausted: {capacity} allocatable addresses, {held} held; fix: widen the \
         range, or find leaked allocations with `netattach ipam show {pool}` and free them with `netattach ipam \
         release {pool} IP`"
    )]
    Exhausted {
        /// Pool name.
        pool: String,
        /// The pool's CIDR.
        range: IpNet,
        /// Allocatable addresses in the range.
        capacity: u128,
        /// Allocatable addresses currently held.
        held: usize,
    },

    /// A specifically requested address is held by someone else.
    #[error(
        "requested address {ip} in pool `{pool}` is already held by {holder}; fix: request another address, \
         or release it first (`netattach ipam ls` shows the holder)"
    )]
    RequestedUnavailable {
        /// The requested address.
        ip: IpAddr,
        /// Pool name.
        pool: String,
        /// Who holds it (`podref`/container id and interface).
        holder: String,
    },

    /// A specifically requested address lies in none of the configured ranges.
    #[error(
        "requested address {ip} is outside every configured range ({pools}); fix: request an address inside \
         one of the ranges, or add a range that contains it"
    )]
    RequestedOutOfRange {
        /// The requested address.
        ip: IpAddr,
        /// The configured pools (names and CIDRs).
        pools: String,
    },

    /// A specifically requested address is in range but reserved (network, broadcast, gateway).
    #[error(
        "requested address {ip} in pool `{pool}` cannot be allocated: {reason}; fix: request another address"
    )]
    RequestedReserved {
        /// The requested address.
        ip: IpAddr,
        /// Pool name.
        pool: String,
        /// Why not.
        reason: String,
    },

    /// The attachment already holds a different address than the one it requests.
    #[error(
        "attachment {owner} already holds {held} in pool `{pool}` but requests {requested}; fix: release the \
         attachment (CNI DEL) before requesting a different address"
    )]
    OwnerHoldsOther {
        /// The attachment.
        owner: String,
        /// What it holds.
        held: IpAddr,
        /// What it asks for.
        requested: IpAddr,
        /// Pool name.
        pool: String,
    },

    /// A file operation failed.
    #[error("{context} `{}`: {source}", path.display())]
    Io {
        /// What was being done.
        context: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A store file could not be understood. It is never reset automatically: that could hand out
    /// addresses that are in use.
    #[error(
        "store file `{}` is corrupt: {reason}; fix: repair or restore the file by hand (netattach never resets \
         it, that could duplicate addresses)", path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A backend or feature is not available (yet).
    #[error("{what} is not available; fix: {fix}")]
    NotAvailable {
        /// What is missing.
        what: String,
        /// How to fix it.
        fix: String,
    },
}

impl IpamError {
    /// The classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            IpamError::Config(c) => c.kind(),
            IpamError::Exhausted { .. } => ErrorKind::Exhausted,
            // The holder may release soon (e.g. a StatefulSet pod being replaced).
            IpamError::RequestedUnavailable { .. } => ErrorKind::TryAgain,
            IpamError::RequestedOutOfRange { .. }
            | IpamError::RequestedReserved { .. }
            | IpamError::OwnerHoldsOther { .. } => ErrorKind::InvalidConfig,
            IpamError::Io { .. } => ErrorKind::Io,
            IpamError::Corrupt { .. } => ErrorKind::Internal,
            IpamError::NotAvailable { .. } => ErrorKind::TryAgain,
        }
    }

    pub(crate) fn io(context: impl Into<String>, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IpamError::Io {
            context: context.into(),
            path: path.into(),
            source,
        }
    }
}
