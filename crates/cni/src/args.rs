//! `CNI_ARGS`: the `K=V;K2=V2` string runtimes pass, and the keys netattach understands.

use std::net::IpAddr;

use crate::error::CniError;

/// Keys netattach understands in `CNI_ARGS`. Anything else needs `IgnoreUnknown`.
pub const KNOWN_KEYS: &[&str] = &[
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "MAC",
    "IP",
    "GATEWAY",
];

/// Parsed `CNI_ARGS`, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    /// Parses `K=V;K2=V2`. Every pair needs exactly one `=`; an unknown key is an error unless
    /// `IgnoreUnknown` is true, as in libcni.
    pub fn parse(raw: &str) -> Result<CniArgs, CniError> {
        let mut pairs = Vec::new();
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let mut parts = pair.split('=');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(k), Some(v), None) if !k.is_empty() => pairs.push((k.to_string(), v.to_string())),
                _ => {
                    return Err(CniError::invalid_env(format!(
                        "CNI_ARGS: invalid pair `{pair}`; fix: write pairs as KEY=VALUE separated by ';'"
                    )));
                }
            }
        }
        let args = CniArgs { pairs };
        let ignore_unknown = match args.get("IgnoreUnknown") {
            None => false,
            Some(v) => parse_bool(v).ok_or_else(|| {
                CniError::invalid_env(format!(
                    "CNI_ARGS: IgnoreUnknown=`{v}` is not a boolean; fix: use 1, true, 0 or false"
                ))
            })?,
        };
        if !ignore_unknown
            && let Some((k, _)) = args.pairs.iter().find(|(k, _)| !KNOWN_KEYS.contains(&k.as_str()))
        {
            return Err(CniError::invalid_env(format!(
                "CNI_ARGS: unknown key `{k}`; fix: add IgnoreUnknown=1 or remove the key (known: {})",
                KNOWN_KEYS.join(", ")
            )));
        }
        Ok(args)
    }

    /// The value of the first occurrence of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// All pairs in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// `K8S_POD_NAMESPACE`.
    pub fn pod_namespace(&self) -> Option<&str> {
        self.get("K8S_POD_NAMESPACE").filter(|v| !v.is_empty())
    }

    /// `K8S_POD_NAME`.
    pub fn pod_name(&self) -> Option<&str> {
        self.get("K8S_POD_NAME").filter(|v| !v.is_empty())
    }

    /// `K8S_POD_UID`.
    pub fn pod_uid(&self) -> Option<&str> {
        self.get("K8S_POD_UID").filter(|v| !v.is_empty())
    }

    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub fn infra_container_id(&self) -> Option<&str> {
        self.get("K8S_POD_INFRA_CONTAINER_ID").filter(|v| !v.is_empty())
    }

    /// `namespace/name` when both pod keys are present: whereabouts' `podref`.
    pub fn podref(&self) -> Option<String> {
        Some(format!("{}/{}", self.pod_namespace()?, self.pod_name()?))
    }

    /// `MAC`, as the reference macvlan plugin reads it (not validated here).
    pub fn mac(&self) -> Option<&str> {
        self.get("MAC").filter(|v| !v.is_empty())
    }

    /// `IP`: a comma-separated list of addresses (a `/prefix` suffix is dropped).
    pub fn ips(&self) -> Result<Vec<IpAddr>, CniError> {
        let Some(raw) = self.get("IP").filter(|v| !v.is_empty()) else {
            return Ok(Vec::new());
        };
        raw.split(',')
            .map(|s| {
                let ip = s.trim().split('/').next().unwrap_or_default();
                ip.parse::<IpAddr>().map_err(|_| {
                    CniError::invalid_env(format!(
                        "CNI_ARGS: IP=`{s}` is not an IP address; fix: write IP=192.168.4.10 (comma-separate several)"
                    ))
                })
            })
            .collect()
    }

    /// Serializes back to `K=V;…`.
    pub fn to_env_string(&self) -> String {
        self.pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    #[test]
    fn parses_kubernetes_args() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=longhorn-system;K8S_POD_NAME=im-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1",
        )
        .expect("valid");
        assert_eq!(a.podref().as_deref(), Some("longhorn-system/im-1"));
        assert_eq!(a.pod_uid(), Some("u-1"));
        assert_eq!(a.infra_container_id(), Some("abc"));
    }

    #[test]
    fn unknown_key_needs_ignore_unknown() {
        let err = CniArgs::parse("FOO=bar").expect_err("unknown");
        assert_eq!(err.code, code::INVALID_ENVIRONMENT);
        assert!(err.details.contains("FOO"), "{err}");
        assert!(err.details.contains("IgnoreUnknown"), "{err}");
        assert!(CniArgs::parse("IgnoreUnknown=true;FOO=bar").is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=TRUE;FOO=bar").is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=0;FOO=bar").is_err());
    }

    #[test]
    fn malformed_pairs_are_refused() {
        for raw in ["A", "A=b=c", "=x"] {
            let err = CniArgs::parse(raw).expect_err(raw);
            assert_eq!(err.code, code::INVALID_ENVIRONMENT);
        }
        assert!(CniArgs::parse("").expect("empty").pairs().is_empty());
        assert!(CniArgs::parse("IgnoreUnknown=maybe").is_err());
    }

    #[test]
    fn mac_and_ips() {
        let a = CniArgs::parse("IgnoreUnknown=1;MAC=c2:11:22:33:44:55;IP=198.18.0.5/24,fd00::5").expect("ok");
        assert_eq!(a.mac(), Some("c2:11:22:33:44:55"));
        let ips = a.ips().expect("ips");
        assert_eq!(ips.len(), 2);
        assert_eq!(ips[0].to_string(), "198.18.0.5");
        assert!(CniArgs::parse("IP=nope").expect("parses").ips().is_err());
    }

    #[test]
    fn round_trips() {
        let raw = "IgnoreUnknown=1;K8S_POD_NAME=a";
        assert_eq!(CniArgs::parse(raw).expect("ok").to_env_string(), raw);
    }
}
