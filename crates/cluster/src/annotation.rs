//! The pod annotations that select networks: `k8s.v1.cni.cncf.io/networks` (comma form and
//! JSON form) and `v1.multus-cni.io/default-network`, parsed into [`NetworkSelection`]s.
//!
//! Follows Multus' `parsePodNetworkAnnotation` / `parsePodNetworkObjectName`:
//! - JSON form when the string contains `[`, `{` or `"`; otherwise the comma form
//!   `[<ns>/]<name>[@<ifname>]`, items trimmed, ns and name matching the DNS-1123 label regex;
//! - the namespace defaults to the pod's;
//! - `interfaceRequest` is the deprecated alias of `interface` (`interface` wins);
//! - `mac` and `infiniband-guid` are validated with Go's `net.ParseMAC` rules, `ips` as IP or
//!   CIDR;
//! - keys match case-insensitively (Go's `encoding/json`); unknown keys are ignored (logged at
//!   debug).
//!
//! Deliberate differences, all "fail earlier with a better message" (Multus would fail later,
//! at the NAD GET or in the netns, or silently do something else):
//! - an empty (or whitespace-only) annotation is "no networks" rather than an error;
//! - an empty comma item (`a,,b`), an element without `name`, and a JSON `namespace`/`name`
//!   that is not a valid Kubernetes name are errors here (the JSON form checks `name` as a
//!   DNS-1123 subdomain, the form Kubernetes allows for NAD names; the comma form keeps Multus'
//!   stricter label regex);
//! - the interface name is checked against the kernel rules (≤15 bytes, no `/`, `:` or
//!   whitespace, not `.`/`..`) in both forms (Multus checks the comma form only);
//! - `mac` without `interface` is refused, as the de-facto standard (§5.3.4) requires;
//! - `default-route` entries must be IP addresses (Go's `net.IP` unmarshal refuses others too);
//! - port numbers must be 0–65535 and bandwidth values non-negative.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::AnnotationError;
use crate::util::{ifname_problem, is_dns1123_label, is_dns1123_subdomain, matches_label_regex, parse_mac};

/// Pod annotation selecting extra networks.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// Pod annotation replacing the cluster network.
pub const DEFAULT_NETWORK_ANNOTATION: &str = "v1.multus-cni.io/default-network";
/// Pod annotation with the attachment results (written by the daemon).
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";
/// The deprecated spelling of the status annotation (Longhorn still falls back to it).
pub const OLD_NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks-status";
/// NAD annotation naming a device-plugin resource.
pub const RESOURCE_NAME_ANNOTATION: &str = "k8s.v1.cni.cncf.io/resourceName";

/// One requested port mapping (`portMappings[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Host port.
    pub host_port: u16,
    /// Container port.
    pub container_port: u16,
    /// `tcp`, `udp`, `sctp` (empty: plugin default).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Host IP (empty: all).
    #[serde(default, rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Requested bandwidth limits (`bandwidth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    /// Ingress rate, bits per second.
    pub ingress_rate: u64,
    /// Ingress burst, bits.
    pub ingress_burst: u64,
    /// Egress rate, bits per second.
    pub egress_rate: u64,
    /// Egress burst, bits.
    pub egress_burst: u64,
}

/// One selected network: an element of the annotation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NetworkSelection {
    /// The NAD name.
    pub name: String,
    /// The NAD namespace (the pod's when not given).
    pub namespace: String,
    /// Requested interface name.
    pub interface: Option<String>,
    /// Requested addresses, as written (IP or CIDR; validated).
    pub ips: Vec<String>,
    /// Requested MAC (validated).
    pub mac: Option<String>,
    /// Requested default-route gateways.
    pub default_route: Vec<IpAddr>,
    /// Extra args merged into the delegate config's `args.cni`.
    pub cni_args: Option<Map<String, Value>>,
    /// Requested port mappings.
    pub port_mappings: Vec<PortMapping>,
    /// Requested bandwidth.
    pub bandwidth: Option<Bandwidth>,
    /// Requested InfiniBand GUID (validated like a MAC).
    pub infiniband_guid: Option<String>,
    /// Requested device id.
    pub device_id: Option<String>,
}

impl NetworkSelection {
    /// `<namespace>/<name>`: the network name in status and events.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for NetworkSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if let Some(i) = &self.interface {
            write!(f, "@{i}")?;
        }
        Ok(())
    }
}

struct Ctx<'a> {
    annotation: &'a str,
    index: Option<usize>,
}

impl Ctx<'_> {
    fn err(
        &self,
        field: Option<&str>,
        value: Option<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> AnnotationError {
        AnnotationError {
            annotation: self.annotation.to_string(),
            index: self.index,
            field: field.map(str::to_string),
            value,
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// Parses `k8s.v1.cni.cncf.io/networks`. `pod_namespace` fills in missing namespaces.
pub fn parse_networks(
    annotation: &str,
    pod_namespace: &str,
) -> Result<Vec<NetworkSelection>, AnnotationError> {
    parse_selection(NETWORKS_ANNOTATION, annotation, pod_namespace)
}

/// Parses `v1.multus-cni.io/default-network`: exactly one network; its namespace defaults to
/// `default_namespace` (Multus: `multusNamespace`, not the pod's). Both forms are accepted, as
/// Multus runs the same parser.
pub fn parse_default_network(
    annotation: &str,
    default_namespace: &str,
) -> Result<Option<NetworkSelection>, AnnotationError> {
    let mut nets = parse_selection(DEFAULT_NETWORK_ANNOTATION, annotation, default_namespace)?;
    match nets.len() {
        0 => Ok(None),
        1 => Ok(nets.pop()),
        n => Err(Ctx {
            annotation: DEFAULT_NETWORK_ANNOTATION,
            index: None,
        }
        .err(
            None,
            Some(annotation.to_string()),
            format!("names {n} networks, but only one default network is allowed"),
            "name exactly one NetworkAttachmentDefinition, like `kube-system/my-cluster-net`",
        )),
    }
}

fn parse_selection(
    key: &str,
    annotation: &str,
    default_namespace: &str,
) -> Result<Vec<NetworkSelection>, AnnotationError> {
    if annotation.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut nets = if annotation.contains(['[', '{', '"']) {
        parse_json_form(key, annotation)?
    } else {
        parse_comma_form(key, annotation)?
    };
    for n in &mut nets {
        if n.namespace.is_empty() {
            n.namespace = default_namespace.to_string();
        }
    }
    Ok(nets)
}

fn parse_comma_form(key: &str, annotation: &str) -> Result<Vec<NetworkSelection>, AnnotationError> {
    let mut out = Vec::new();
    for (index, raw) in annotation.split(',').enumerate() {
        let ctx = Ctx {
            annotation: key,
            index: Some(index),
        };
        let item = raw.trim();
        if item.is_empty() {
            return Err(ctx.err(
                None,
                Some(annotation.to_string()),
                "has an empty item (a stray comma)",
                "remove the extra comma; items are `[<namespace>/]<name>[@<ifname>]` separated by commas",
            ));
        }
        let (namespace, rest) = match item.split('/').collect::<Vec<_>>().as_slice() {
            [rest] => ("", *rest),
            [ns, rest] => (ns.trim(), *rest),
            _ => {
                return Err(ctx.err(
                    None,
                    Some(item.to_string()),
                    "has more than one '/'",
                    "write `<namespace>/<name>`, like `longhorn-system/storage`",
                ));
            }
        };
        let (name, ifname) = match rest.split('@').collect::<Vec<_>>().as_slice() {
            [name] => (name.trim(), None),
            [name, ifname] => (name.trim(), Some(ifname.trim())),
            _ => {
                return Err(ctx.err(
                    None,
                    Some(item.to_string()),
                    "has more than one '@'",
                    "write `<name>@<ifname>`, like `storage@lhnet1`",
                ));
            }
        };
        if !namespace.is_empty() && !matches_label_regex(namespace) {
            return Err(ctx.err(
                Some("namespace"),
                Some(namespace.to_string()),
                "is not a DNS-1123 label (lower-case letters, digits and '-', starting and ending alphanumeric)",
                "use the namespace's exact name, like `longhorn-system`",
            ));
        }
        if name.is_empty() {
            return Err(ctx.err(
                Some("name"),
                Some(item.to_string()),
                "has no network name",
                "write `[<namespace>/]<name>[@<ifname>]`, like `storage`",
            ));
        }
        if !matches_label_regex(name) {
            return Err(ctx.err(
                Some("name"),
                Some(name.to_string()),
                "is not a DNS-1123 label (lower-case letters, digits and '-', starting and ending alphanumeric)",
                "use the NetworkAttachmentDefinition's exact name, or the JSON form for names with dots",
            ));
        }
        let interface = match ifname {
            None => None,
            Some(i) => {
                if let Some(problem) = ifname_problem(i) {
                    return Err(ctx.err(
                        Some("interface"),
                        Some(i.to_string()),
                        problem,
                        "use a Linux interface name of at most 15 bytes, like `lhnet1`",
                    ));
                }
                Some(i.to_string())
            }
        };
        out.push(NetworkSelection {
            name: name.to_string(),
            namespace: namespace.to_string(),
            interface,
            ..NetworkSelection::default()
        });
    }
    Ok(out)
}

/// The keys of a JSON element, lower-cased for Go-style case-insensitive matching.
const JSON_KEYS: &[&str] = &[
    "name",
    "namespace",
    "interface",
    "interfacerequest",
    "ips",
    "mac",
    "default-route",
    "cni-args",
    "portmappings",
    "bandwidth",
    "infiniband-guid",
    "deviceid",
];

fn parse_json_form(key: &str, annotation: &str) -> Result<Vec<NetworkSelection>, AnnotationError> {
    let top = Ctx {
        annotation: key,
        index: None,
    };
    let value: Value = serde_json::from_str(annotation).map_err(|e| {
        top.err(
            None,
            Some(annotation.to_string()),
            format!("is not valid JSON ({e})"),
            r#"write a JSON list like [{"namespace":"longhorn-system","name":"storage","interface":"lhnet1"}], or the comma form `ns/name@ifname`"#,
        )
    })?;
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => {
            return Err(top.err(
                None,
                Some(other.to_string()),
                "is JSON but not a list",
                r#"wrap the object in a list: [{"name":"storage"}]"#,
            ));
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            parse_element(
                &Ctx {
                    annotation: key,
                    index: Some(index),
                },
                item,
            )
        })
        .collect()
}

fn parse_element(ctx: &Ctx<'_>, item: Value) -> Result<NetworkSelection, AnnotationError> {
    let obj = match item {
        Value::Object(o) => o,
        other => {
            return Err(ctx.err(
                None,
                Some(other.to_string()),
                "is not a JSON object",
                r#"write each element as an object, like {"name":"storage","interface":"lhnet1"}"#,
            ));
        }
    };
    // Go matches keys case-insensitively and a later key overwrites an earlier one; an exact
    // match is preferred over a folded one only for picking the field, which is the same here.
    let mut fields: Map<String, Value> = Map::new();
    for (k, v) in obj {
        let folded = k.to_ascii_lowercase();
        if JSON_KEYS.contains(&folded.as_str()) {
            if !v.is_null() {
                fields.insert(folded, v);
            }
        } else {
            tracing::debug!(
                annotation = ctx.annotation,
                index = ctx.index,
                key = %k,
                "ignoring unknown key in network selection element"
            );
        }
    }
    let mut sel = NetworkSelection::default();
    let string = |field: &str, v: &Value| -> Result<String, AnnotationError> {
        v.as_str().map(str::to_string).ok_or_else(|| {
            ctx.err(
                Some(field),
                Some(v.to_string()),
                "is not a string",
                format!("write \"{field}\" as a JSON string"),
            )
        })
    };
    for (k, v) in &fields {
        match k.as_str() {
            "name" => sel.name = string("name", v)?,
            "namespace" => sel.namespace = string("namespace", v)?,
            "interface" => {
                let s = string("interface", v)?;
                if !s.is_empty() {
                    sel.interface = Some(s);
                }
            }
            "interfacerequest" => {
                let s = string("interfaceRequest", v)?;
                let has_interface = fields
                    .get("interface")
                    .and_then(Value::as_str)
                    .is_some_and(|i| !i.is_empty());
                if !s.is_empty() && !has_interface {
                    sel.interface = Some(s);
                }
            }
            "ips" => sel.ips = parse_ips(ctx, v)?,
            "mac" => {
                let s = string("mac", v)?;
                if !s.is_empty() {
                    if parse_mac(&s).is_none() {
                        return Err(ctx.err(
                            Some("mac"),
                            Some(s),
                            "is not a MAC address",
                            "write six hex pairs separated by ':', like \"c2:11:22:33:44:55\"",
                        ));
                    }
                    sel.mac = Some(s);
                }
            }
            "infiniband-guid" => {
                let s = string("infiniband-guid", v)?;
                if !s.is_empty() {
                    if parse_mac(&s).is_none() {
                        return Err(ctx.err(
                            Some("infiniband-guid"),
                            Some(s),
                            "is not an InfiniBand GUID",
                            "write eight hex pairs separated by ':', like \"00:11:22:33:44:55:66:77\"",
                        ));
                    }
                    sel.infiniband_guid = Some(s);
                }
            }
            "deviceid" => {
                let s = string("deviceID", v)?;
                if !s.is_empty() {
                    sel.device_id = Some(s);
                }
            }
            "default-route" => sel.default_route = parse_default_route(ctx, v)?,
            "cni-args" => match v {
                Value::Object(m) => sel.cni_args = Some(m.clone()),
                other => {
                    return Err(ctx.err(
                        Some("cni-args"),
                        Some(other.to_string()),
                        "is not a JSON object",
                        r#"write "cni-args": {"key": "value"}"#,
                    ));
                }
            },
            "portmappings" => sel.port_mappings = parse_port_mappings(ctx, v)?,
            "bandwidth" => sel.bandwidth = Some(parse_bandwidth(ctx, v)?),
            _ => {}
        }
    }
    if sel.name.is_empty() {
        return Err(ctx.err(
            Some("name"),
            None,
            "is missing or empty",
            r#"name the NetworkAttachmentDefinition: {"name":"storage"}"#,
        ));
    }
    if !is_dns1123_subdomain(&sel.name) {
        return Err(ctx.err(
            Some("name"),
            Some(sel.name.clone()),
            "is not a valid Kubernetes object name (DNS-1123 subdomain)",
            "use the NetworkAttachmentDefinition's exact name",
        ));
    }
    if !sel.namespace.is_empty() && !is_dns1123_label(&sel.namespace) {
        return Err(ctx.err(
            Some("namespace"),
            Some(sel.namespace.clone()),
            "is not a valid namespace name (DNS-1123 label)",
            "use the namespace's exact name, like \"longhorn-system\"",
        ));
    }
    if let Some(i) = &sel.interface
        && let Some(problem) = ifname_problem(i)
    {
        return Err(ctx.err(
            Some("interface"),
            Some(i.clone()),
            problem,
            "use a Linux interface name of at most 15 bytes, like \"lhnet1\"",
        ));
    }
    if let Some(mac) = &sel.mac
        && sel.interface.is_none()
    {
        return Err(ctx.err(
            Some("mac"),
            Some(mac.clone()),
            "is set without \"interface\" (the network CRD standard requires both)",
            "add \"interface\": \"<name>\" to this element",
        ));
    }
    Ok(sel)
}

fn list<'v>(
    ctx: &Ctx<'_>,
    field: &str,
    v: &'v Value,
    example: &str,
) -> Result<&'v Vec<Value>, AnnotationError> {
    v.as_array().ok_or_else(|| {
        ctx.err(
            Some(field),
            Some(v.to_string()),
            "is not a JSON list",
            format!("write \"{field}\": {example}"),
        )
    })
}

fn parse_ips(ctx: &Ctx<'_>, v: &Value) -> Result<Vec<String>, AnnotationError> {
    let items = list(ctx, "ips", v, r#"["192.168.4.10/24"]"#)?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("ips[{i}]");
            let s = item.as_str().ok_or_else(|| {
                ctx.err(
                    Some(&field),
                    Some(item.to_string()),
                    "is not a string",
                    "write the address as a string, like \"192.168.4.10/24\"",
                )
            })?;
            let ok = if s.contains('/') {
                s.parse::<IpNet>().is_ok()
            } else {
                s.parse::<IpAddr>().is_ok()
            };
            if !ok {
                return Err(ctx.err(
                    Some(&field),
                    Some(s.to_string()),
                    "is not an IP address or CIDR",
                    "write an address like \"192.168.4.10\" or \"192.168.4.10/24\"",
                ));
            }
            Ok(s.to_string())
        })
        .collect()
}

fn parse_default_route(ctx: &Ctx<'_>, v: &Value) -> Result<Vec<IpAddr>, AnnotationError> {
    let items = list(ctx, "default-route", v, r#"["192.168.4.1"]"#)?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("default-route[{i}]");
            item.as_str()
                .and_then(|s| s.parse::<IpAddr>().ok())
                .ok_or_else(|| {
                    ctx.err(
                        Some(&field),
                        Some(item.to_string()),
                        "is not an IP address",
                        "write the gateway address, like \"192.168.4.1\"",
                    )
                })
        })
        .collect()
}

fn parse_port_mappings(ctx: &Ctx<'_>, v: &Value) -> Result<Vec<PortMapping>, AnnotationError> {
    let items = list(
        ctx,
        "portMappings",
        v,
        r#"[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]"#,
    )?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let base = format!("portMappings[{i}]");
        let obj = item.as_object().ok_or_else(|| {
            ctx.err(
                Some(&base),
                Some(item.to_string()),
                "is not an object",
                r#"write {"hostPort":8080,"containerPort":80}"#,
            )
        })?;
        let mut pm = PortMapping {
            host_port: 0,
            container_port: 0,
            protocol: String::new(),
            host_ip: String::new(),
        };
        for (k, val) in obj {
            if val.is_null() {
                continue;
            }
            let field = format!("{base}.{k}");
            match k.to_ascii_lowercase().as_str() {
                "hostport" | "containerport" => {
                    let port = val.as_u64().and_then(|n| u16::try_from(n).ok()).ok_or_else(|| {
                        ctx.err(
                            Some(&field),
                            Some(val.to_string()),
                            "is not a port number (0-65535)",
                            "write a whole number like 8080",
                        )
                    })?;
                    if k.eq_ignore_ascii_case("hostport") {
                        pm.host_port = port;
                    } else {
                        pm.container_port = port;
                    }
                }
                "protocol" | "hostip" => {
                    let s = val.as_str().ok_or_else(|| {
                        ctx.err(
                            Some(&field),
                            Some(val.to_string()),
                            "is not a string",
                            "write a string like \"tcp\"",
                        )
                    })?;
                    if k.eq_ignore_ascii_case("protocol") {
                        pm.protocol = s.to_string();
                    } else {
                        if !s.is_empty() && s.parse::<IpAddr>().is_err() {
                            return Err(ctx.err(
                                Some(&field),
                                Some(s.to_string()),
                                "is not an IP address",
                                "write an address like \"0.0.0.0\" or leave it out",
                            ));
                        }
                        pm.host_ip = s.to_string();
                    }
                }
                _ => tracing::debug!(field = %field, "ignoring unknown key in portMappings entry"),
            }
        }
        out.push(pm);
    }
    Ok(out)
}

fn parse_bandwidth(ctx: &Ctx<'_>, v: &Value) -> Result<Bandwidth, AnnotationError> {
    let obj = v.as_object().ok_or_else(|| {
        ctx.err(
            Some("bandwidth"),
            Some(v.to_string()),
            "is not an object",
            r#"write "bandwidth": {"ingressRate":1000000,"ingressBurst":1000000,"egressRate":1000000,"egressBurst":1000000}"#,
        )
    })?;
    let mut bw = Bandwidth {
        ingress_rate: 0,
        ingress_burst: 0,
        egress_rate: 0,
        egress_burst: 0,
    };
    for (k, val) in obj {
        if val.is_null() {
            continue;
        }
        let field = format!("bandwidth.{k}");
        let slot = match k.to_ascii_lowercase().as_str() {
            "ingressrate" => &mut bw.ingress_rate,
            "ingressburst" => &mut bw.ingress_burst,
            "egressrate" => &mut bw.egress_rate,
            "egressburst" => &mut bw.egress_burst,
            _ => {
                tracing::debug!(field = %field, "ignoring unknown key in bandwidth");
                continue;
            }
        };
        *slot = val.as_u64().ok_or_else(|| {
            ctx.err(
                Some(&field),
                Some(val.to_string()),
                "is not a non-negative whole number",
                "write bits (per second) as a whole number, like 1000000",
            )
        })?;
    }
    Ok(bw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(annotation: &str) -> AnnotationError {
        parse_networks(annotation, "pods").expect_err(annotation)
    }

    #[test]
    fn comma_form() {
        let nets = parse_networks(" net-a, other-ns/net-b@eth7 ,c@ lh1 ", "pods").expect("valid");
        assert_eq!(nets.len(), 3);
        assert_eq!(
            (
                nets[0].namespace.as_str(),
                nets[0].name.as_str(),
                nets[0].interface.as_deref()
            ),
            ("pods", "net-a", None)
        );
        assert_eq!(
            (
                nets[1].namespace.as_str(),
                nets[1].name.as_str(),
                nets[1].interface.as_deref()
            ),
            ("other-ns", "net-b", Some("eth7"))
        );
        assert_eq!(nets[2].interface.as_deref(), Some("lh1"));
        assert_eq!(nets[1].to_string(), "other-ns/net-b@eth7");
        assert_eq!(nets[1].qualified_name(), "other-ns/net-b");
    }

    #[test]
    fn comma_form_errors() {
        let e = err("a/b/c");
        assert_eq!(e.index, Some(0));
        assert!(e.problem.contains("more than one '/'"), "{e}");
        let e = err("ok, a@b@c");
        assert_eq!(e.index, Some(1));
        assert!(e.problem.contains("'@'"));
        let e = err("Net-A");
        assert_eq!(e.field.as_deref(), Some("name"));
        assert_eq!(e.value.as_deref(), Some("Net-A"));
        assert!(e.to_string().contains("fix:"), "{e}");
        let e = err("Bad_NS/net");
        assert_eq!(e.field.as_deref(), Some("namespace"));
        let e = err("a,,b");
        assert_eq!(e.index, Some(1));
        let e = err("ns/@eth1");
        assert_eq!(e.field.as_deref(), Some("name"));
        let e = err("a@this-is-way-too-long");
        assert_eq!(e.field.as_deref(), Some("interface"));
        assert!(e.problem.contains("15"));
        assert!(err("a@et:h1").problem.contains("':'"));
        assert!(err("a@").problem.contains("empty"));
        assert!(err("a.b").to_string().contains("JSON form"));
    }

    #[test]
    fn empty_is_none() {
        assert!(parse_networks("", "pods").expect("ok").is_empty());
        assert!(parse_networks("  ", "pods").expect("ok").is_empty());
        // No `[`, `{` or `"`: comma form, so `null` is a network name.
        assert_eq!(parse_networks("null", "pods").expect("ok")[0].name, "null");
    }

    #[test]
    fn longhorn_exact_annotation() {
        let nets = parse_networks(
            r#"[{"namespace":"longhorn-system","name":"storage","interface":"lhnet1"}]"#,
            "longhorn-system",
        )
        .expect("valid");
        assert_eq!(nets.len(), 1);
        assert_eq!(nets[0].qualified_name(), "longhorn-system/storage");
        assert_eq!(nets[0].interface.as_deref(), Some("lhnet1"));
        // Longhorn's own builder puts spaces after the colons.
        let nets = parse_networks(
            r#"[{"namespace": "kube-system", "name": "demo-192-168-0-0", "interface": "lhnet1"}]"#,
            "longhorn-system",
        )
        .expect("valid");
        assert_eq!(nets[0].qualified_name(), "kube-system/demo-192-168-0-0");
    }

    #[test]
    fn json_form_all_fields() {
        let nets = parse_networks(
            r#"[{"name":"a.v1","namespace":"ns1","interface":"net9","ips":["192.168.4.10/24","fd00::1"],
                 "mac":"c2:11:22:33:44:55","default-route":["192.168.4.1"],"cni-args":{"k":"v","n":1},
                 "portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"0.0.0.0"}],
                 "bandwidth":{"ingressRate":1000,"ingressBurst":2000,"egressRate":3000,"egressBurst":4000},
                 "infiniband-guid":"00:11:22:33:44:55:66:77","deviceID":"0000:03:00.1","future-key":true},
                {"name":"b","interfaceRequest":"old1"},
                {"NAME":"c","Interface":"x1","interfaceRequest":"ignored"}]"#,
            "pods",
        )
        .expect("valid");
        let a = &nets[0];
        assert_eq!(a.qualified_name(), "ns1/a.v1");
        assert_eq!(a.ips, vec!["192.168.4.10/24", "fd00::1"]);
        assert_eq!(a.mac.as_deref(), Some("c2:11:22:33:44:55"));
        assert_eq!(
            a.default_route,
            vec!["192.168.4.1".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(
            a.cni_args.as_ref().and_then(|m| m.get("k")),
            Some(&Value::from("v"))
        );
        assert_eq!(a.port_mappings[0].host_port, 8080);
        assert_eq!(a.port_mappings[0].host_ip, "0.0.0.0");
        assert_eq!(a.bandwidth.map(|b| b.egress_burst), Some(4000));
        assert_eq!(a.infiniband_guid.as_deref(), Some("00:11:22:33:44:55:66:77"));
        assert_eq!(a.device_id.as_deref(), Some("0000:03:00.1"));
        assert_eq!(nets[1].interface.as_deref(), Some("old1"));
        assert_eq!(nets[1].namespace, "pods");
        assert_eq!(nets[2].name, "c");
        assert_eq!(nets[2].interface.as_deref(), Some("x1"));
        // null means "absent", as in Go.
        let n = parse_networks(r#"[{"name":"a","mac":null,"ips":null}]"#, "p").expect("ok");
        assert!(n[0].mac.is_none() && n[0].ips.is_empty());
        assert!(parse_networks("[]", "p").expect("ok").is_empty());
        assert!(parse_networks(r#"{"a":1}"#, "p").is_err());
    }

    #[test]
    fn json_form_errors() {
        let cases: &[(&str, Option<usize>, Option<&str>)] = &[
            (r#"[{"name":"a"}"#, None, None),
            (r#"{"name":"a"}"#, None, None),
            (r#"["a"]"#, Some(0), None),
            (r#"[{"namespace":"x"}]"#, Some(0), Some("name")),
            (r#"[{"name":""}]"#, Some(0), Some("name")),
            (r#"[{"name":5}]"#, Some(0), Some("name")),
            (r#"[{"name":"Bad"}]"#, Some(0), Some("name")),
            (r#"[{"name":"a","namespace":"a.b"}]"#, Some(0), Some("namespace")),
            (
                r#"[{"name":"a"},{"name":"b","interface":"much-too-long-name"}]"#,
                Some(1),
                Some("interface"),
            ),
            (r#"[{"name":"a","interface":"a b"}]"#, Some(0), Some("interface")),
            (r#"[{"name":"a","ips":"1.2.3.4"}]"#, Some(0), Some("ips")),
            (
                r#"[{"name":"a","ips":["1.2.3.4","1.2.3"]}]"#,
                Some(0),
                Some("ips[1]"),
            ),
            (r#"[{"name":"a","ips":["1.2.3.4/33"]}]"#, Some(0), Some("ips[0]")),
            (r#"[{"name":"a","ips":[5]}]"#, Some(0), Some("ips[0]")),
            (
                r#"[{"name":"a","interface":"e1","mac":"zz:11:22:33:44:55"}]"#,
                Some(0),
                Some("mac"),
            ),
            (
                r#"[{"name":"a","mac":"c2:11:22:33:44:55"}]"#,
                Some(0),
                Some("mac"),
            ),
            (
                r#"[{"name":"a","infiniband-guid":"nope"}]"#,
                Some(0),
                Some("infiniband-guid"),
            ),
            (
                r#"[{"name":"a","default-route":["x"]}]"#,
                Some(0),
                Some("default-route[0]"),
            ),
            (
                r#"[{"name":"a","default-route":"1.1.1.1"}]"#,
                Some(0),
                Some("default-route"),
            ),
            (r#"[{"name":"a","cni-args":[1]}]"#, Some(0), Some("cni-args")),
            (
                r#"[{"name":"a","portMappings":{}}]"#,
                Some(0),
                Some("portMappings"),
            ),
            (
                r#"[{"name":"a","portMappings":[5]}]"#,
                Some(0),
                Some("portMappings[0]"),
            ),
            (
                r#"[{"name":"a","portMappings":[{"hostPort":70000}]}]"#,
                Some(0),
                Some("portMappings[0].hostPort"),
            ),
            (
                r#"[{"name":"a","portMappings":[{"protocol":6}]}]"#,
                Some(0),
                Some("portMappings[0].protocol"),
            ),
            (
                r#"[{"name":"a","portMappings":[{"hostIP":"x"}]}]"#,
                Some(0),
                Some("portMappings[0].hostIP"),
            ),
            (r#"[{"name":"a","bandwidth":5}]"#, Some(0), Some("bandwidth")),
            (
                r#"[{"name":"a","bandwidth":{"ingressRate":-1}}]"#,
                Some(0),
                Some("bandwidth.ingressRate"),
            ),
            (r#"[{"name":"a","deviceID":1}]"#, Some(0), Some("deviceID")),
        ];
        for (input, index, field) in cases {
            let e = err(input);
            assert_eq!(e.index, *index, "{input}: {e}");
            assert_eq!(e.field.as_deref(), *field, "{input}: {e}");
            assert_eq!(e.annotation, NETWORKS_ANNOTATION);
            assert!(e.to_string().contains("; fix: "), "{e}");
        }
    }

    #[test]
    fn default_network_annotation() {
        let d = parse_default_network("my-net", "kube-system")
            .expect("ok")
            .expect("some");
        assert_eq!(d.qualified_name(), "kube-system/my-net");
        let d = parse_default_network("other/my-net", "kube-system")
            .expect("ok")
            .expect("some");
        assert_eq!(d.qualified_name(), "other/my-net");
        let d = parse_default_network(r#"[{"name":"x"}]"#, "kube-system")
            .expect("ok")
            .expect("some");
        assert_eq!(d.qualified_name(), "kube-system/x");
        assert!(parse_default_network("", "kube-system").expect("ok").is_none());
        let e = parse_default_network("a,b", "kube-system").expect_err("two");
        assert_eq!(e.annotation, DEFAULT_NETWORK_ANNOTATION);
        assert!(e.problem.contains("only one"));
    }
}
