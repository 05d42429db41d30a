//! CNI results: one canonical (1.1.0) model, parsed from and written to every layout.
//!
//! Layouts: 1.1.0 (extra interface and route fields), 1.0.0, 0.3.0–0.4.0 (with
//! `ips[].version`), and the legacy 0.1.0/0.2.0 `ip4`/`ip6` form. Parsing accepts any of them;
//! writing produces exactly the layout of the requested version.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::CniError;
use crate::version::Version;

/// An interface a plugin created or touched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path, or empty/absent for a host interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Socket path (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// PCI id (1.1.0).
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length.
    pub address: IpNet,
    /// Gateway for this address' subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`; IPAM plugins leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; absent means the address family's gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Metric (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Scope (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    /// A plain route with destination and optional gateway.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A success result in the canonical 1.1.0 model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS.
    pub dns: Dns,
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Option<Dns>,
    #[serde(default)]
    ip4: Option<LegacyIp>,
    #[serde(default)]
    ip6: Option<LegacyIp>,
}

#[derive(Deserialize)]
struct LegacyIp {
    ip: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
}

impl CniResult {
    /// Parses a result in any layout. Unknown fields (like `ips[].version`) are ignored.
    pub fn from_value(value: &Value) -> Result<CniResult, CniError> {
        let wire: WireResult = serde_json::from_value(value.clone())
            .map_err(|e| CniError::decode(format!("result does not parse: {e}")))?;
        let mut result = CniResult {
            interfaces: wire.interfaces,
            ips: wire.ips,
            routes: wire.routes,
            dns: wire.dns.unwrap_or_default(),
        };
        for legacy in [wire.ip4, wire.ip6].into_iter().flatten() {
            result.ips.push(IpConfig {
                address: legacy.ip,
                gateway: legacy.gateway,
                interface: None,
            });
            result.routes.extend(legacy.routes);
        }
        Ok(result)
    }

    /// Parses result bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<CniResult, CniError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode(format!("result is not JSON: {e}")))?;
        Self::from_value(&value)
    }

    /// Writes the result in exactly the layout of `version`.
    ///
    /// The legacy 0.1.0/0.2.0 layout keeps only the first address of each family and fails
    /// ("cannot convert: no valid IP addresses") when there is none, as libcni does.
    pub fn to_value(&self, version: Version) -> Result<Value, CniError> {
        if version.is_legacy_layout() {
            return self.to_legacy_value(version);
        }
        let v1_1 = version >= Version::V1_1_0;
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            let ifaces: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    if !v1_1 {
                        i.mtu = None;
                        i.socket_path = None;
                        i.pci_id = None;
                    }
                    serde_json::to_value(i).unwrap_or(Value::Null)
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifaces));
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|ip| {
                    let mut m = Map::new();
                    if version.has_ip_version_field() {
                        let family = if ip.address.addr().is_ipv4() { "4" } else { "6" };
                        m.insert("version".into(), json!(family));
                    }
                    if let Some(i) = ip.interface {
                        m.insert("interface".into(), json!(i));
                    }
                    m.insert("address".into(), json!(ip.address.to_string()));
                    if let Some(gw) = ip.gateway {
                        m.insert("gateway".into(), json!(gw.to_string()));
                    }
                    Value::Object(m)
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    let r = if v1_1 { r.clone() } else { Route::new(r.dst, r.gw) };
                    serde_json::to_value(r).unwrap_or(Value::Null)
                })
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        // 0.x always prints "dns":{}; 1.x omits an empty one.
        if !self.dns.is_empty() || version < Version::V1_0_0 {
            out.insert(
                "dns".into(),
                serde_json::to_value(&self.dns).unwrap_or_else(|_| json!({})),
            );
        }
        Ok(Value::Object(out))
    }

    fn to_legacy_value(&self, version: Version) -> Result<Value, CniError> {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        let mut found = false;
        for (key, want_v4) in [("ip4", true), ("ip6", false)] {
            let Some(ip) = self.ips.iter().find(|ip| ip.address.addr().is_ipv4() == want_v4) else {
                continue;
            };
            found = true;
            let mut m = Map::new();
            m.insert("ip".into(), json!(ip.address.to_string()));
            if let Some(gw) = ip.gateway {
                m.insert("gateway".into(), json!(gw.to_string()));
            }
            let routes: Vec<Value> = self
                .routes
                .iter()
                .filter(|r| r.dst.addr().is_ipv4() == want_v4)
                .map(|r| serde_json::to_value(Route::new(r.dst, r.gw)).unwrap_or(Value::Null))
                .collect();
            if !routes.is_empty() {
                m.insert("routes".into(), Value::Array(routes));
            }
            out.insert(key.into(), Value::Object(m));
        }
        if !found {
            return Err(CniError::internal("cannot convert: no valid IP addresses"));
        }
        out.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).unwrap_or_else(|_| json!({})),
        );
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "net1".into(),
                mac: Some("22:21:dd:14:d1:f5".into()),
                mtu: Some(1500),
                sandbox: Some("/run/netns/x".into()),
                ..Default::default()
            }],
            ips: vec![
                IpConfig {
                    address: "198.18.0.2/24".parse().expect("cidr"),
                    gateway: Some("198.18.0.1".parse().expect("ip")),
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00::2/64".parse().expect("cidr"),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![Route {
                priority: Some(10),
                ..Route::new("0.0.0.0/0".parse().expect("cidr"), None)
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn v1_1_keeps_extra_fields_and_has_no_ip_version() {
        let v = sample().to_value(Version::V1_1_0).expect("ok");
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][0]["mtu"], 1500);
        assert_eq!(v["routes"][0]["priority"], 10);
        assert!(v["ips"][0].get("version").is_none());
        assert!(v.get("dns").is_none());
    }

    #[test]
    fn v1_0_drops_1_1_fields() {
        let v = sample().to_value(Version::V1_0_0).expect("ok");
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert!(v["routes"][0].get("priority").is_none());
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn v0_x_has_ip_version_and_dns() {
        for version in [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0] {
            let v = sample().to_value(version).expect("ok");
            assert_eq!(v["cniVersion"], version.as_str());
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][1]["version"], "6");
            assert_eq!(v["dns"], json!({}));
            assert!(v["interfaces"][0].get("mtu").is_none());
        }
    }

    #[test]
    fn legacy_layout_keeps_first_ip_per_family() {
        let v = sample().to_value(Version::V0_2_0).expect("ok");
        assert_eq!(v["ip4"]["ip"], "198.18.0.2/24");
        assert_eq!(v["ip4"]["gateway"], "198.18.0.1");
        assert_eq!(v["ip6"]["ip"], "fd00::2/64");
        let err = CniResult::default()
            .to_value(Version::V0_2_0)
            .expect_err("no ips");
        assert_eq!(err.details, "cannot convert: no valid IP addresses");
    }

    #[test]
    fn parses_every_layout_back() {
        let s = sample();
        for version in [Version::V0_3_0, Version::V0_4_0, Version::V1_0_0, Version::V1_1_0] {
            let back = CniResult::from_value(&s.to_value(version).expect("ok")).expect("parse");
            assert_eq!(back.ips, s.ips, "{version}");
            assert_eq!(back.interfaces[0].name, "net1");
        }
        let legacy = json!({"cniVersion":"0.2.0","ip4":{"ip":"10.77.0.4/24","gateway":"10.77.0.1","routes":[{"dst":"0.0.0.0/0"}]},"dns":{}});
        let r = CniResult::from_value(&legacy).expect("legacy");
        assert_eq!(r.ips[0].address.to_string(), "10.77.0.4/24");
        assert_eq!(r.routes.len(), 1);
    }

    #[test]
    fn parses_the_observed_reference_output() {
        let raw = br#"{"cniVersion":"0.4.0","interfaces":[{"name":"net1","mac":"22:21:dd:14:d1:f5","sandbox":"/var/run/netns/X"}],
 "ips":[{"version":"4","interface":0,"address":"10.77.0.2/24","gateway":"10.77.0.1"}],
 "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;
        let r = CniResult::from_slice(raw).expect("parse");
        assert_eq!(r.ips[0].interface, Some(0));
        assert!(r.dns.is_empty());
    }

    #[test]
    fn bad_results_are_decode_errors() {
        let err = CniResult::from_slice(b"{not json").expect_err("bad");
        assert_eq!(err.code, crate::error::code::DECODING_FAILURE);
        let err = CniResult::from_value(&json!({"ips":[{"address":"nope"}]})).expect_err("bad");
        assert_eq!(err.code, crate::error::code::DECODING_FAILURE);
    }
}
