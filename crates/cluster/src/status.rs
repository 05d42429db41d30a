//! The `k8s.v1.cni.cncf.io/network-status` pod annotation, byte-compatible with Multus.
//!
//! [`NetworkStatus`] has the fields, order and omission rules of the network-attachment-
//! definition client's Go type (`name`, `interface`, `ips`, `mac`, `mtu`, `default`, `dns`,
//! `device-info`, `gateway`; `dns` always present, possibly `{}`). [`statuses_from_result`] is
//! `CreateNetworkStatuses`: one entry per sandbox interface of a delegate's result (a result
//! with exactly one interface takes the single-interface path, where every IP belongs to it).
//! [`NetworkStatus::from_result`] picks the entry of the interface we asked for.
//! [`to_annotation`] writes the list the way Multus does: each entry `MarshalIndent`ed with
//! four spaces, joined by `,` inside `[` `]`, with Go's HTML-safe escaping.
//!
//! Deliberate differences: a default route without a gateway is left out of `gateway` (Go
//! writes the string `<nil>`), and [`NetworkStatus::from_result`] still produces an entry when
//! a result has no sandbox interface (Multus writes none; Longhorn then silently falls back to
//! the pod IP), naming the interface we created and carrying every IP of the result.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use netattach_cni::CniResult;

use crate::util::go_html_escape;

/// DNS settings in a status entry (the Go client's `DNS`, every field omitted when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// One entry of the network-status annotation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// `<ns>/<nad>` for a NAD, the CNI config name for the cluster network (`cbr0` on K3s).
    pub name: String,
    /// The interface name in the pod.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    /// Bare IP addresses (no prefix length).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Hardware address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU, when the plugin reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// True for the cluster network only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    /// DNS from the result; always written.
    #[serde(default)]
    pub dns: StatusDns,
    /// Device information (opaque here).
    #[serde(default, rename = "device-info", skip_serializing_if = "Option::is_none")]
    pub device_info: Option<Value>,
    /// Gateways of the result's default routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway: Vec<String>,
}

fn dns_of(result: &CniResult) -> StatusDns {
    StatusDns {
        nameservers: result.dns.nameservers.clone(),
        domain: result.dns.domain.clone().unwrap_or_default(),
        search: result.dns.search.clone(),
        options: result.dns.options.clone(),
    }
}

fn default_gateways(result: &CniResult) -> Vec<String> {
    result
        .routes
        .iter()
        .filter(|r| r.dst.addr().is_unspecified())
        .filter_map(|r| r.gw.map(|g| g.to_string()))
        .collect()
}

fn sandboxed(i: &netattach_cni::Interface) -> bool {
    i.sandbox.as_deref().is_some_and(|s| !s.is_empty())
}

/// `CreateNetworkStatuses`: the status entries Multus writes for one delegate's result.
pub fn statuses_from_result(
    name: &str,
    result: &CniResult,
    is_default: bool,
    device_info: Option<&Value>,
) -> Vec<NetworkStatus> {
    let dns = dns_of(result);
    let gateway = default_gateways(result);
    if result.interfaces.len() == 1 {
        // CreateNetworkStatus (singular): every IP belongs to the one interface.
        let mut st = NetworkStatus {
            name: name.to_string(),
            default: is_default,
            dns,
            gateway,
            device_info: device_info.cloned(),
            ips: result
                .ips
                .iter()
                .map(|ip| ip.address.addr().to_string())
                .collect(),
            ..NetworkStatus::default()
        };
        if let Some(i) = result.interfaces.first().filter(|i| sandboxed(i)) {
            st.interface = i.name.clone();
            st.mac = i.mac.clone().unwrap_or_default();
            st.mtu = i.mtu.filter(|m| *m != 0);
        }
        return vec![st];
    }
    let gw_iface = if is_default {
        result
            .ips
            .iter()
            .find(|ip| ip.gateway.is_some() && ip.interface.is_some())
            .and_then(|ip| ip.interface)
    } else {
        None
    };
    let mut out: Vec<NetworkStatus> = Vec::new();
    let mut index_map = std::collections::HashMap::new();
    let mut did_set_default = false;
    let mut found_first = false;
    for (i, iface) in result.interfaces.iter().enumerate() {
        if !sandboxed(iface) {
            continue;
        }
        let mut default = false;
        if is_default && gw_iface == Some(i) && !did_set_default {
            default = true;
            did_set_default = true;
        }
        if is_default && gw_iface.is_none() && !found_first {
            default = true;
            found_first = true;
        }
        index_map.insert(i, out.len());
        out.push(NetworkStatus {
            name: name.to_string(),
            interface: iface.name.clone(),
            ips: Vec::new(),
            mac: iface.mac.clone().unwrap_or_default(),
            mtu: iface.mtu.filter(|m| *m != 0),
            default,
            dns: dns.clone(),
            device_info: device_info.cloned(),
            gateway: gateway.clone(),
        });
    }
    let last = out.len().checked_sub(1);
    for ip in &result.ips {
        let target = match ip.interface {
            Some(orig) => index_map.get(&orig).copied(),
            None => last,
        };
        if let Some(st) = target.and_then(|t| out.get_mut(t)) {
            st.ips.push(ip.address.addr().to_string());
        }
    }
    out
}

impl NetworkStatus {
    /// The status entry for the interface `ifname_hint` of a delegate's result: the sandbox
    /// interface with that name if there is one, else the first sandbox interface, else (no
    /// sandbox interface at all) an entry naming `ifname_hint` with every IP of the result.
    pub fn from_result(name: &str, result: &CniResult, is_default: bool, ifname_hint: &str) -> NetworkStatus {
        let mut all = statuses_from_result(name, result, is_default, None);
        if let Some(pos) = all.iter().position(|s| s.interface == ifname_hint) {
            return all.swap_remove(pos);
        }
        if let Some(first) = all.into_iter().find(|s| !s.interface.is_empty()) {
            return first;
        }
        NetworkStatus {
            name: name.to_string(),
            interface: ifname_hint.to_string(),
            ips: result
                .ips
                .iter()
                .map(|ip| ip.address.addr().to_string())
                .collect(),
            default: is_default,
            dns: dns_of(result),
            gateway: default_gateways(result),
            ..NetworkStatus::default()
        }
    }
}

/// The annotation value, exactly as Multus writes it.
pub fn to_annotation(statuses: &[NetworkStatus]) -> Result<String, serde_json::Error> {
    let mut parts = Vec::with_capacity(statuses.len());
    for st in statuses {
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        st.serialize(&mut ser)?;
        parts.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Ok(go_html_escape(&format!("[{}]", parts.join(","))))
}

/// Parses an annotation value (ours, Multus', or anyone's in this format).
pub fn parse_annotation(value: &str) -> Result<Vec<NetworkStatus>, serde_json::Error> {
    serde_json::from_str(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flannel_result() -> CniResult {
        CniResult::from_value(&serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:aa:aa:aa:aa:01"},
                {"name": "veth1234", "mac": "aa:aa:aa:aa:aa:02"},
                {"name": "eth0", "mac": "0a:58:0a:2a:00:05", "sandbox": "/var/run/netns/cni-1"}
            ],
            "ips": [{"address": "10.42.0.5/24", "gateway": "10.42.0.1", "interface": 2}],
            "routes": [{"dst": "10.42.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.42.0.1"}],
            "dns": {}
        }))
        .expect("result")
    }

    fn macvlan_result() -> CniResult {
        CniResult::from_value(&serde_json::json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "lhnet1", "mac": "c2:11:22:33:44:55", "mtu": 1500, "sandbox": "/var/run/netns/cni-1"}],
            "ips": [
                {"address": "192.168.4.9/24", "interface": 0},
                {"address": "fd00:4::9/64", "interface": 0}
            ]
        }))
        .expect("result")
    }

    const EXPECTED: &str = r#"[{
    "name": "cbr0",
    "interface": "eth0",
    "ips": [
        "10.42.0.5"
    ],
    "mac": "0a:58:0a:2a:00:05",
    "default": true,
    "dns": {},
    "gateway": [
        "10.42.0.1"
    ]
},{
    "name": "longhorn-system/storage",
    "interface": "lhnet1",
    "ips": [
        "192.168.4.9",
        "fd00:4::9"
    ],
    "mac": "c2:11:22:33:44:55",
    "mtu": 1500,
    "dns": {}
}]"#;

    fn both() -> Vec<NetworkStatus> {
        vec![
            NetworkStatus::from_result("cbr0", &flannel_result(), true, "eth0"),
            NetworkStatus::from_result("longhorn-system/storage", &macvlan_result(), false, "lhnet1"),
        ]
    }

    #[test]
    fn byte_for_byte_multus_shape() {
        assert_eq!(to_annotation(&both()).expect("json"), EXPECTED);
        assert_eq!(to_annotation(&[]).expect("json"), "[]");
    }

    /// Longhorn's `GetIPFromPodByCNISetting`: entry with name == setting, string-sort the
    /// ips, take [0].
    #[test]
    fn longhorn_finds_the_lhnet1_address() {
        let annotation = to_annotation(&both()).expect("json");
        #[derive(Deserialize)]
        struct LonghornView {
            name: String,
            #[allow(dead_code)]
            interface: String,
            ips: Vec<String>,
        }
        let parsed: Vec<LonghornView> = serde_json::from_str(&annotation).expect("longhorn parses it");
        let entry = parsed
            .iter()
            .find(|e| e.name == "longhorn-system/storage")
            .expect("entry present");
        let mut ips = entry.ips.clone();
        ips.sort();
        assert_eq!(ips[0], "192.168.4.9");
        // And the round trip through our own type.
        assert_eq!(parse_annotation(&annotation).expect("parse"), both());
    }

    #[test]
    fn ips_without_interface_index_go_to_the_last_sandbox_interface() {
        let r = CniResult::from_value(&serde_json::json!({
            "interfaces": [
                {"name": "host0"},
                {"name": "a", "sandbox": "/ns"},
                {"name": "b", "sandbox": "/ns"}
            ],
            "ips": [{"address": "10.0.0.2/24"}, {"address": "10.0.1.2/24", "interface": 1}]
        }))
        .expect("result");
        let all = statuses_from_result("n", &r, false, None);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].ips, vec!["10.0.1.2"]);
        assert_eq!(all[1].ips, vec!["10.0.0.2"]);
        let b = NetworkStatus::from_result("n", &r, false, "b");
        assert_eq!(b.interface, "b");
        let first = NetworkStatus::from_result("n", &r, false, "zzz");
        assert_eq!(first.interface, "a");
    }

    #[test]
    fn default_marks_the_gateway_interface_only() {
        let r = CniResult::from_value(&serde_json::json!({
            "interfaces": [{"name": "a", "sandbox": "/ns"}, {"name": "b", "sandbox": "/ns"}],
            "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 1}]
        }))
        .expect("result");
        let all = statuses_from_result("n", &r, true, None);
        assert!(!all[0].default);
        assert!(all[1].default);
    }

    #[test]
    fn no_sandbox_interface_still_yields_an_entry() {
        let r = CniResult::from_value(&serde_json::json!({
            "ips": [{"address": "192.168.4.7/24"}],
            "dns": {"nameservers": ["198.18.0.53"], "domain": "lab"}
        }))
        .expect("result");
        assert!(statuses_from_result("ns/n", &r, false, None).is_empty());
        let st = NetworkStatus::from_result("ns/n", &r, false, "net1");
        assert_eq!(st.interface, "net1");
        assert_eq!(st.ips, vec!["192.168.4.7"]);
        assert_eq!(st.dns.nameservers, vec!["198.18.0.53"]);
        assert_eq!(st.dns.domain, "lab");
    }

    #[test]
    fn single_interface_without_sandbox_has_no_interface_name() {
        let r = CniResult::from_value(&serde_json::json!({
            "interfaces": [{"name": "host0"}],
            "ips": [{"address": "10.0.0.2/24"}],
            "routes": [{"dst": "0.0.0.0/0"}]
        }))
        .expect("result");
        let all = statuses_from_result("n", &r, false, None);
        assert_eq!(all[0].interface, "");
        assert_eq!(all[0].ips, vec!["10.0.0.2"]);
        assert!(all[0].gateway.is_empty(), "no <nil> gateway");
    }

    #[test]
    fn go_escaping_and_device_info() {
        let st = NetworkStatus {
            name: "a<b>&c".into(),
            device_info: Some(serde_json::json!({"type": "pci", "version": "1.1.0"})),
            ..NetworkStatus::default()
        };
        let s = to_annotation(&[st]).expect("json");
        assert!(s.contains(r#""name": "a\u003cb\u003e\u0026c""#), "{s}");
        assert!(s.contains(r#""device-info": {"#), "{s}");
        assert_eq!(parse_annotation(&s).expect("parse")[0].name, "a<b>&c");
    }
}
