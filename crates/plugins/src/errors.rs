//! Library errors to CNI errors: the single mapping onto spec and netattach codes.
//!
//! netdev and ipam keep their own error types and know nothing of CNI; every conversion to a
//! `{code, msg, details}` happens here so that codes stay consistent across plugins.

use netattach_cluster::daemon_api::IpamFailure;
use netattach_cni::error::{CniError, code};
use netattach_ipam::error::IpamError;
use netattach_netdev::NetdevError;

/// A netlink or namespace failure during `what` (e.g. "create macvlan net1 on eth1").
pub fn from_netdev(what: &str, err: &NetdevError) -> CniError {
    let c = if err.is_permission_denied() {
        code::INTERNAL
    } else {
        code::LINK_SETUP_FAILED
    };
    CniError::new(c, "link setup failed", format!("{what}: {err}"))
}

/// An IPAM failure.
pub fn from_ipam(err: &IpamError) -> CniError {
    from_ipam_failure(IpamFailure::from(err), err.to_string())
}

/// An IPAM failure as the node daemon reports it (its kind and its message) as a CNI error: the
/// same code the plugin returns when it talks to the API server itself.
pub fn from_ipam_failure(failure: IpamFailure, details: String) -> CniError {
    match failure {
        IpamFailure::Exhausted => CniError::new(code::POOL_EXHAUSTED, "IP pool exhausted", details),
        IpamFailure::RequestedUnavailable => CniError::new(
            code::ADDRESS_UNAVAILABLE,
            "requested address unavailable",
            details,
        ),
        IpamFailure::Corrupt => CniError::new(code::STORE_CORRUPT, "IPAM store corrupt", details),
        IpamFailure::InvalidConfig => CniError::invalid_config(details),
        IpamFailure::UnsupportedField => CniError::new(
            code::UNSUPPORTED_FIELD,
            "unsupported field in network configuration",
            details,
        ),
        IpamFailure::Io => CniError::io(details),
        IpamFailure::TryAgain => CniError::try_again(details),
        IpamFailure::Internal => CniError::internal(details),
    }
}

/// Folds the errors of a best-effort teardown into one: `Ok` when there were none, the single
/// error when there was one, otherwise the first error's code with every message listed.
pub fn collect(what: &str, errors: Vec<CniError>) -> Result<(), CniError> {
    let mut iter = errors.into_iter();
    let Some(first) = iter.next() else {
        return Ok(());
    };
    let rest: Vec<CniError> = iter.collect();
    if rest.is_empty() {
        return Err(first);
    }
    let mut details = format!("{what}: {} errors: {}", rest.len() + 1, first);
    for e in rest {
        details.push_str("; ");
        details.push_str(&e.to_string());
    }
    Err(CniError::new(first.code, first.msg, details))
}
