//! The whereabouts custom resources, typed: `IPPool` and `OverlappingRangeIPReservation`
//! (group `whereabouts.cni.cncf.io`, version `v1alpha1`, namespaced), field for field as
//! whereabouts v0.9.x declares them (`pkg/api/whereabouts.cni.cncf.io/v1alpha1`) and as
//! `deploy/crds/` installs them; the tests write every object through a real apiserver that validates it against those files' schemas.
//!
//! Also the conversions between an `IPPool` and the pure [`PoolDoc`] the allocator works on, and
//! whereabouts' object naming ([`orip_name`], whose pool-name twin is
//! [`netattach_ipam::range::pool_name`]).
//!
//! What the CRD schema cannot hold is not stored: the pure document's allocation `time` is
//! pruned by the apiserver, so reservations read back from Kubernetes have `time: None`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use kube::CustomResource;
use netattach_ipam::error::IpamError;
use netattach_ipam::pool::{PoolDoc, Reservation};
use netattach_ipam::range::normalize_range;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The allocations of one IP range (whereabouts `IPPoolSpec`).
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "whereabouts.cni.cncf.io",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools",
    singular = "ippool",
    namespaced,
    doc = "IPPool holds the allocations of one IP range (cluster-wide IPAM)."
)]
pub struct IPPoolSpec {
    /// The range in CIDR notation (RFC 4632 / RFC 4291).
    pub range: String,
    /// Allocated addresses, keyed by the decimal offset of the address from the network address
    /// of the range.
    pub allocations: BTreeMap<String, IPAllocation>,
}

/// The owner of one allocated address (whereabouts `IPAllocation`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct IPAllocation {
    /// The container ID.
    pub id: String,
    /// The owning pod, as "namespace/name".
    pub podref: String,
    /// The interface name inside the pod (Go `omitempty`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ifname: String,
}

/// The reservation of one IP address across overlapping ranges of one network
/// (whereabouts `OverlappingRangeIPReservationSpec`).
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "whereabouts.cni.cncf.io",
    version = "v1alpha1",
    kind = "OverlappingRangeIPReservation",
    plural = "overlappingrangeipreservations",
    singular = "overlappingrangeipreservation",
    namespaced,
    doc = "The reservation of one IP address across overlapping ranges."
)]
pub struct OverlappingRangeIPReservationSpec {
    /// The container ID (whereabouts never sets it; netattach does).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub containerid: String,
    /// The owning pod, as "namespace/name".
    pub podref: String,
    /// The interface name inside the pod.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ifname: String,
}

/// whereabouts' `NormalizeIP(ip, networkName)`: the name of an address's
/// `OverlappingRangeIPReservation`. Go prints the address (IPv4 and IPv4-mapped IPv6 as dotted
/// quad, IPv6 compressed per RFC 5952), appends `0` if it ends in `:`, replaces `:` with `-`, and
/// prefixes `<network_name>-` when the network is named.
///
/// `192.168.4.5` → `192.168.4.5`; `fd00::` → `fd00--0`; `fd00::5` with `storage` → `storage-fd00--5`.
pub fn orip_name(ip: IpAddr, network_name: Option<&str>) -> String {
    let mut s = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    };
    if s.ends_with(':') {
        s.push('0');
    }
    let s = s.replace(':', "-");
    match network_name {
        Some(n) if !n.is_empty() => format!("{n}-{s}"),
        _ => s,
    }
}

/// The `network_name` a pool belongs to, recovered from its object name
/// (`<network_name>-<normalised range>`; whereabouts keeps it nowhere else).
pub fn network_of_pool(pool_name: &str, range: &ipnet::IpNet) -> Option<String> {
    let suffix = format!("-{}", normalize_range(&range.to_string()));
    pool_name
        .strip_suffix(&suffix)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// How an object is named in errors: `IPPool <namespace>/<name>`.
pub fn pool_origin(namespace: &str, name: &str) -> PathBuf {
    PathBuf::from(format!("IPPool {namespace}/{name}"))
}

/// Read an `IPPool` into the allocator's document. Offsets are validated (decimal, inside the
/// range); a pool that cannot be understood is an error naming it and is never reset.
pub fn doc_from_pool(namespace: &str, name: &str, spec: &IPPoolSpec) -> Result<PoolDoc, IpamError> {
    let origin = pool_origin(namespace, name);
    let text = serde_json::to_string(spec).map_err(|e| IpamError::Corrupt {
        path: origin.clone(),
        reason: format!("cannot be rendered: {e}"),
    })?;
    let mut doc = PoolDoc::from_json(&text, &origin)?;
    doc.network_name = network_of_pool(name, &doc.range);
    Ok(doc)
}

/// The `IPPool` spec of a document (whereabouts' exact shape: decimal offsets, `{id, podref,
/// ifname}`).
pub fn spec_from_doc(doc: &PoolDoc) -> IPPoolSpec {
    IPPoolSpec {
        range: doc.range.to_string(),
        allocations: doc
            .allocations
            .iter()
            .map(|(off, r)| (off.to_string(), allocation_of(r)))
            .collect(),
    }
}

/// The `IPPool` entry of a reservation.
pub(crate) fn allocation_of(r: &Reservation) -> IPAllocation {
    IPAllocation {
        id: r.id.clone(),
        podref: r.podref.clone(),
        ifname: r.ifname.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orip_names_match_whereabouts() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(orip_name(ip("192.168.4.5"), None), "192.168.4.5");
        assert_eq!(orip_name(ip("192.168.4.5"), Some("")), "192.168.4.5");
        assert_eq!(
            orip_name(ip("192.168.4.5"), Some("storage")),
            "storage-192.168.4.5"
        );
        assert_eq!(orip_name(ip("fd00::5"), None), "fd00--5");
        assert_eq!(orip_name(ip("fd00::"), None), "fd00--0");
        assert_eq!(orip_name(ip("caa5::1:0"), Some("n")), "n-caa5--1-0");
        assert_eq!(orip_name(ip("::ffff:10.0.0.1"), None), "10.0.0.1");
    }

    #[test]
    fn network_recovered_from_pool_name() {
        let net: ipnet::IpNet = "192.168.4.0/24".parse().unwrap_or_default();
        assert_eq!(
            network_of_pool("storage-192.168.4.0-24", &net).as_deref(),
            Some("storage")
        );
        assert_eq!(network_of_pool("192.168.4.0-24", &net), None);
    }

    #[test]
    fn spec_round_trips() {
        let spec: IPPoolSpec = serde_json::from_str(
            r#"{"range":"10.0.0.0/29","allocations":{"1":{"id":"c","podref":"ns/p","ifname":"net1"},"6":{"id":"d","podref":"ns/q"}}}"#,
        )
        .unwrap_or_default();
        let doc = doc_from_pool("kube-system", "10.0.0.0-29", &spec);
        assert!(doc.is_ok(), "{doc:?}");
        if let Ok(doc) = doc {
            assert_eq!(doc.allocations.len(), 2);
            assert_eq!(spec_from_doc(&doc), spec);
        }
    }
}
