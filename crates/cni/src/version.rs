//! CNI specification versions: parsing, what each version allows, and what we support.

use std::fmt;
use std::str::FromStr;

use crate::error::{CniError, code};

/// A CNI specification version this crate knows the layout of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// 0.1.0: `ip4`/`ip6` result layout.
    V0_1_0,
    /// 0.2.0: `ip4`/`ip6` result layout.
    V0_2_0,
    /// 0.3.0: `interfaces`/`ips` layout with `ips[].version`.
    V0_3_0,
    /// 0.3.1: as 0.3.0.
    V0_3_1,
    /// 0.4.0: adds CHECK and `prevResult` on DEL.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds STATUS, GC and the extra interface and route fields.
    V1_1_0,
}

/// The versions a netattach plugin answers to, oldest first.
pub const SUPPORTED: [Version; 5] = [
    Version::V0_3_0,
    Version::V0_3_1,
    Version::V0_4_0,
    Version::V1_0_0,
    Version::V1_1_0,
];

impl Version {
    /// The newest version this crate implements.
    pub const CURRENT: Version = Version::V1_1_0;

    /// The version string as it appears in `cniVersion`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_1_0 => "0.1.0",
            Version::V0_2_0 => "0.2.0",
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Whether a netattach plugin accepts a request in this version.
    pub fn is_supported(self) -> bool {
        SUPPORTED.contains(&self)
    }

    /// CHECK exists from 0.4.0 on.
    pub fn allows_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn allows_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Results carry `ips[].version` in 0.3.0 to 0.4.0.
    pub fn has_ip_version_field(self) -> bool {
        (Version::V0_3_0..=Version::V0_4_0).contains(&self)
    }

    /// Results use the legacy `ip4`/`ip6` layout before 0.3.0.
    pub fn is_legacy_layout(self) -> bool {
        self < Version::V0_3_0
    }

    /// The list of supported version strings, as VERSION prints them.
    pub fn supported_strings() -> Vec<&'static str> {
        SUPPORTED.iter().map(|v| v.as_str()).collect()
    }

    /// Parses a request's `cniVersion` and checks that we support it (error code 1 otherwise).
    pub fn negotiate(requested: &str) -> Result<Version, CniError> {
        match requested.parse::<Version>() {
            Ok(v) if v.is_supported() => Ok(v),
            _ => Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI versions",
                format!(
                    "config is \"{requested}\", plugin supports {:?}; fix: set \"cniVersion\" to one of them",
                    Version::supported_strings()
                ),
            )),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A version string that is not one of the known CNI versions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CNI version \"{0}\"")]
pub struct UnknownVersion(pub String);

impl FromStr for Version {
    type Err = UnknownVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            // libcni treats a missing version as 0.1.0.
            "" | "0.1.0" => Version::V0_1_0,
            "0.2.0" => Version::V0_2_0,
            "0.3.0" => Version::V0_3_0,
            "0.3.1" => Version::V0_3_1,
            "0.4.0" => Version::V0_4_0,
            "1.0.0" => Version::V1_0_0,
            "1.1.0" => Version::V1_1_0,
            other => return Err(UnknownVersion(other.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_versions_are_exactly_the_five_from_0_3_0() {
        assert_eq!(
            Version::supported_strings(),
            vec!["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        );
    }

    #[test]
    fn negotiate_refuses_unknown_and_legacy_versions_with_code_1() {
        for v in ["9.9.9", "0.2.0", "1.0", "banana"] {
            let err = Version::negotiate(v).expect_err(v);
            assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
            assert!(err.details.contains(v), "{err:?}");
            assert!(err.details.contains("1.1.0"), "{err:?}");
        }
        assert_eq!(Version::negotiate("0.3.1").ok(), Some(Version::V0_3_1));
    }

    #[test]
    fn verb_floors() {
        assert!(!Version::V0_3_1.allows_check());
        assert!(Version::V0_4_0.allows_check());
        assert!(!Version::V1_0_0.allows_status_and_gc());
        assert!(Version::V1_1_0.allows_status_and_gc());
        assert!(Version::V0_4_0.has_ip_version_field());
        assert!(!Version::V1_0_0.has_ip_version_field());
    }

    #[test]
    fn round_trips_through_strings() {
        for v in SUPPORTED {
            assert_eq!(v.as_str().parse::<Version>().ok(), Some(v));
        }
    }
}
