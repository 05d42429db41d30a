//! The CNI error result: spec error codes, netattach's plugin codes, and the JSON form.
//!
//! Every failure a netattach plugin reports ends up as one [`CniError`]. Library crates keep
//! their own error types; the mapping onto these codes happens once, at the plugin boundary.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Error codes: the spec's (below 100) and netattach's own (100 and up).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration (the message names key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (the message names them).
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later: a transient condition.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing containers may have limited connectivity.
    pub const PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY: u32 = 51;

    /// netattach: the kernel refused a link, address or route operation.
    pub const LINK_SETUP_FAILED: u32 = 100;
    /// netattach: `CNI_IFNAME` is already taken in the container's namespace.
    pub const INTERFACE_EXISTS: u32 = 101;
    /// netattach: no free address is left in the pool.
    pub const POOL_EXHAUSTED: u32 = 102;
    /// netattach: a requested static address is held by someone else or not in any range.
    pub const ADDRESS_UNAVAILABLE: u32 = 103;
    /// netattach: a delegated plugin failed without a CNI error of its own.
    pub const DELEGATE_FAILED: u32 = 104;
    /// netattach: stored IPAM state is unreadable; refusing to guess.
    pub const STORE_CORRUPT: u32 = 105;
    /// netattach: CHECK found the attachment differs from what ADD made.
    pub const CHECK_FAILED: u32 = 106;
    /// Anything unexpected (libcni's `ErrInternal`).
    pub const INTERNAL: u32 = 999;
}

/// A CNI error result: `{"code", "msg", "details"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct CniError {
    /// The spec or plugin error code.
    pub code: u32,
    /// A short description.
    pub msg: String,
    /// What went wrong in detail: the field, the value and the fix.
    #[serde(default)]
    pub details: String,
}

impl CniError {
    /// Builds an error with a code, a short message and details.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Invalid network config (code 7).
    pub fn invalid_config(details: impl Into<String>) -> Self {
        Self::new(
            code::INVALID_NETWORK_CONFIG,
            "invalid network configuration",
            details,
        )
    }

    /// Invalid environment (code 4).
    pub fn invalid_env(details: impl Into<String>) -> Self {
        Self::new(
            code::INVALID_ENVIRONMENT,
            "invalid environment variables",
            details,
        )
    }

    /// Failed to decode (code 6).
    pub fn decode(details: impl Into<String>) -> Self {
        Self::new(code::DECODING_FAILURE, "failed to decode content", details)
    }

    /// I/O failure (code 5).
    pub fn io(details: impl Into<String>) -> Self {
        Self::new(code::IO_FAILURE, "I/O failure", details)
    }

    /// Try again later (code 11).
    pub fn try_again(details: impl Into<String>) -> Self {
        Self::new(code::TRY_AGAIN_LATER, "try again later", details)
    }

    /// Internal error (code 999).
    pub fn internal(details: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, "internal error", details)
    }

    /// Prefixes the details with context, keeping code and message.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.details = if self.details.is_empty() {
            format!("{context}: {}", self.msg)
        } else {
            format!("{context}: {}", self.details)
        };
        self
    }

    /// The JSON the spec wants on stdout, with the request's `cniVersion` when known.
    pub fn to_json(&self, cni_version: Option<&str>) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        if let Some(v) = cni_version.filter(|v| !v.is_empty()) {
            out.insert("cniVersion".into(), v.into());
        }
        out.insert("code".into(), self.code.into());
        out.insert("msg".into(), self.msg.clone().into());
        out.insert("details".into(), self.details.clone().into());
        serde_json::Value::Object(out)
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{} (code {})", self.msg, self.code)
        } else {
            write!(f, "{}: {} (code {})", self.msg, self.details, self.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_code_msg_details_and_version() {
        let e = CniError::invalid_config("field `mode`: value `x`");
        let v = e.to_json(Some("1.1.0"));
        assert_eq!(v["code"], 7);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["msg"], "invalid network configuration");
        assert_eq!(v["details"], "field `mode`: value `x`");
    }

    #[test]
    fn context_prefixes_details() {
        let e = CniError::io("disk full").context("writing pool");
        assert_eq!(e.details, "writing pool: disk full");
        assert_eq!(e.code, code::IO_FAILURE);
    }
}
