//! Per-pool usage: how big each pool is, how much of it is held and whether it is exhausted,
//! computed purely from pool objects ([`IPPool`]s from a watch cache or a list, or the local
//! store's [`PoolDoc`]s), and rendered as Prometheus gauges for the node daemon's `/metrics`.
//!
//! Sizes are the allocator's: the addresses a dynamic ADD can be handed
//! ([`IpRange::capacity`] and [`IpRange::is_allocatable`]). An `IPPool` records only its CIDR, so
//! without the configuration that made it the range is the whole CIDR's usable addresses (network
//! and broadcast excluded, as in [`netattach_ipam::range`]); with it ([`PoolUsage::of_doc`]'s
//! `configured`), `range_start`, `range_end`, `exclude` and the gateway narrow it down.
//!
//! * `size`: allocatable addresses of the range;
//! * `used`: held addresses among them (a static reservation outside them, e.g. in an `exclude`
//!   block, does not use up the range);
//! * `free`: `size - used`, the number of dynamic ADDs that can still succeed (addresses held
//!   only through another pool's overlapping-range reservation are not seen here);
//! * `exhausted`: `free == 0`.

use std::fmt::Write as _;

use ipnet::IpNet;
use netattach_ipam::error::IpamError;
use netattach_ipam::pool::PoolDoc;
use netattach_ipam::range::IpRange;

use crate::crd::{IPPool, doc_from_pool};

/// The usage of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    /// The pool's namespace (empty for the local store).
    pub namespace: String,
    /// The pool's name (`[<network_name>-]<range>`).
    pub name: String,
    /// The pool's CIDR.
    pub range: IpNet,
    /// Addresses the allocator can hand out.
    pub size: u128,
    /// Of those, the ones held.
    pub used: u128,
    /// Of those, the ones free.
    pub free: u128,
    /// No dynamic ADD can succeed (`free == 0`).
    pub exhausted: bool,
}

/// The range an `IPPool` stands for when its configuration is unknown: its whole CIDR.
fn cidr_range(cidr: IpNet) -> Option<IpRange> {
    IpRange::parse(&cidr.to_string(), None, None, &[], None).ok()
}

impl PoolUsage {
    /// The usage of a loaded pool document. `configured` is the range of the configuration that
    /// uses the pool, when known (it must be the pool's CIDR; otherwise it is ignored and the
    /// whole CIDR counts).
    pub fn of_doc(namespace: &str, name: &str, doc: &PoolDoc, configured: Option<&IpRange>) -> PoolUsage {
        let range = configured
            .filter(|r| r.cidr == doc.range)
            .cloned()
            .or_else(|| cidr_range(doc.range));
        let (size, used) = match &range {
            Some(r) => {
                let used = doc
                    .allocations
                    .keys()
                    .filter(|off| r.ip_at(**off).is_some_and(|ip| r.is_allocatable(ip)))
                    .count();
                (r.capacity(), u128::try_from(used).unwrap_or(u128::MAX))
            }
            // Every CIDR parses as a range; kept total for safety.
            None => (0, 0),
        };
        let free = size.saturating_sub(used);
        PoolUsage {
            namespace: namespace.to_string(),
            name: name.to_string(),
            range: doc.range,
            size,
            used,
            free,
            exhausted: free == 0,
        }
    }

    /// The usage of an `IPPool` object (whole-CIDR range). An object whose range or offsets
    /// cannot be read is an error naming it.
    pub fn of_pool(pool: &IPPool) -> Result<PoolUsage, IpamError> {
        let namespace = pool.metadata.namespace.as_deref().unwrap_or_default();
        let name = pool.metadata.name.as_deref().unwrap_or_default();
        let doc = doc_from_pool(namespace, name, &pool.spec)?;
        Ok(PoolUsage::of_doc(namespace, name, &doc, None))
    }
}

/// The usage of every readable pool, ordered by namespace and name. A pool that cannot be read
/// is left out with a warning (one corrupt object must not blank the metrics of the others).
pub fn pool_usages<'a>(pools: impl IntoIterator<Item = &'a IPPool>) -> Vec<PoolUsage> {
    let mut out: Vec<PoolUsage> = pools
        .into_iter()
        .filter_map(|p| match PoolUsage::of_pool(p) {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::warn!(error = %e, "IPPool left out of the usage metrics");
                None
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// Escape a Prometheus label value (text format: backslash, double quote and newline).
fn label_value(s: &str) -> String {
    s.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// The usage as Prometheus text exposition (format 0.0.4): four gauge families, each with its
/// `# HELP` and `# TYPE` lines and one sample per pool labelled `pool` and `namespace`:
///
/// ```text
/// netattach_ipam_pool_size{pool="storage-192.168.4.0-24",namespace="kube-system"} 254
/// netattach_ipam_pool_used{...} 3
/// netattach_ipam_pool_free{...} 251
/// netattach_ipam_pool_exhausted{...} 0
/// ```
///
/// Values are integers (an IPv6 pool's size can exceed 2^53; Prometheus reads the digits as a
/// float). No pools: the headers only, so the families are always announced.
pub fn render_prometheus(usages: &[PoolUsage]) -> String {
    type Value = fn(&PoolUsage) -> u128;
    let families: [(&str, &str, Value); 4] = [
        (
            "netattach_ipam_pool_size",
            "Addresses the allocator can hand out in the IPAM pool.",
            |u| u.size,
        ),
        (
            "netattach_ipam_pool_used",
            "Addresses of the IPAM pool that are allocated.",
            |u| u.used,
        ),
        (
            "netattach_ipam_pool_free",
            "Addresses of the IPAM pool that are free (dynamic allocations that can still succeed).",
            |u| u.free,
        ),
        (
            "netattach_ipam_pool_exhausted",
            "1 when the IPAM pool has no free address left, else 0.",
            |u| u128::from(u.exhausted),
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for u in usages {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\",namespace=\"{}\"}} {}",
                label_value(&u.name),
                label_value(&u.namespace),
                value(u)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::crd::{IPAllocation, IPPoolSpec};

    fn pool(namespace: &str, name: &str, range: &str, offsets: &[u32]) -> IPPool {
        let mut p = IPPool::new(
            name,
            IPPoolSpec {
                range: range.into(),
                allocations: offsets
                    .iter()
                    .map(|o| {
                        (
                            o.to_string(),
                            IPAllocation {
                                id: format!("c{o}"),
                                podref: format!("ns/p{o}"),
                                ifname: "net1".into(),
                            },
                        )
                    })
                    .collect::<BTreeMap<_, _>>(),
            },
        );
        p.metadata.namespace = Some(namespace.into());
        p
    }

    #[test]
    fn size_used_free_follow_the_allocator() {
        let u = PoolUsage::of_pool(&pool("kube-system", "198.18.0.0-24", "198.18.0.0/24", &[1, 2, 9]))
            .expect("usage");
        assert_eq!((u.size, u.used, u.free, u.exhausted), (254, 3, 251, false));
        assert_eq!(u.range.to_string(), "198.18.0.0/24");
        assert_eq!(
            (u.namespace.as_str(), u.name.as_str()),
            ("kube-system", "198.18.0.0-24")
        );

        // A /30 has two usable addresses; both held: exhausted.
        let u = PoolUsage::of_pool(&pool("ns", "198.18.0.0-30", "198.18.0.0/30", &[1, 2])).expect("usage");
        assert_eq!((u.size, u.used, u.free, u.exhausted), (2, 2, 0, true));

        // /31 and /32: every address is usable (RFC 3021), as the allocator sees it.
        let u = PoolUsage::of_pool(&pool("ns", "198.18.0.0-31", "198.18.0.0/31", &[0])).expect("usage");
        assert_eq!((u.size, u.used, u.free), (2, 1, 1));

        // IPv6: the subnet-router anycast address is not usable; sizes beyond u64 are exact.
        let u = PoolUsage::of_pool(&pool("ns", "fd00---64", "fd00::/64", &[1])).expect("usage");
        assert_eq!(u.size, (1u128 << 64) - 1);
        assert_eq!(u.free, (1u128 << 64) - 2);
    }

    #[test]
    fn configured_range_narrows_the_size_and_ignores_reservations_outside_it() {
        let p = pool("ns", "198.18.0.0-24", "198.18.0.0/24", &[1, 10, 11]);
        let doc = doc_from_pool("ns", "198.18.0.0-24", &p.spec).expect("doc");
        let configured = IpRange::parse(
            "198.18.0.0/24",
            Some("198.18.0.10"),
            Some("198.18.0.19"),
            &["198.18.0.15".to_string()],
            Some("198.18.0.10"),
        )
        .expect("range");
        let u = PoolUsage::of_doc("ns", "198.18.0.0-24", &doc, Some(&configured));
        // .10..=.19 minus the gateway .10 and the excluded .15: 8; .11 held (.1 is outside, a
        // static reservation; .10 is the gateway).
        assert_eq!((u.size, u.used, u.free, u.exhausted), (8, 1, 7, false));

        // A configuration of another CIDR is not this pool's: the whole CIDR counts.
        let other = IpRange::parse("198.19.0.0/24", None, None, &[], None).expect("range");
        let u = PoolUsage::of_doc("ns", "198.18.0.0-24", &doc, Some(&other));
        assert_eq!((u.size, u.used), (254, 3));
    }

    #[test]
    fn unreadable_pools_are_left_out_and_the_rest_sorted() {
        let bad = pool("ns", "bad", "not-a-cidr", &[]);
        let b = pool("ns", "b-198.18.1.0-24", "198.18.1.0/24", &[]);
        let a = pool("ns", "a-198.18.2.0-24", "198.18.2.0/24", &[3]);
        assert!(PoolUsage::of_pool(&bad).is_err());
        let all = pool_usages([&bad, &b, &a]);
        let names: Vec<&str> = all.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["a-198.18.2.0-24", "b-198.18.1.0-24"]);
    }

    #[test]
    fn prometheus_text_has_headers_and_one_sample_per_pool_and_family() {
        let usages = pool_usages([
            &pool("kube-system", "198.18.0.0-30", "198.18.0.0/30", &[1, 2]),
            &pool("kube-system", "storage-198.18.4.0-24", "198.18.4.0/24", &[5]),
        ]);
        let text = render_prometheus(&usages);
        let want = [
            "# HELP netattach_ipam_pool_size ",
            "# TYPE netattach_ipam_pool_size gauge",
            "netattach_ipam_pool_size{pool=\"198.18.0.0-30\",namespace=\"kube-system\"} 2",
            "netattach_ipam_pool_size{pool=\"storage-198.18.4.0-24\",namespace=\"kube-system\"} 254",
            "# TYPE netattach_ipam_pool_used gauge",
            "netattach_ipam_pool_used{pool=\"198.18.0.0-30\",namespace=\"kube-system\"} 2",
            "netattach_ipam_pool_used{pool=\"storage-198.18.4.0-24\",namespace=\"kube-system\"} 1",
            "# TYPE netattach_ipam_pool_free gauge",
            "netattach_ipam_pool_free{pool=\"198.18.0.0-30\",namespace=\"kube-system\"} 0",
            "netattach_ipam_pool_free{pool=\"storage-198.18.4.0-24\",namespace=\"kube-system\"} 253",
            "# TYPE netattach_ipam_pool_exhausted gauge",
            "netattach_ipam_pool_exhausted{pool=\"198.18.0.0-30\",namespace=\"kube-system\"} 1",
            "netattach_ipam_pool_exhausted{pool=\"storage-198.18.4.0-24\",namespace=\"kube-system\"} 0",
        ];
        // In this order, families contiguous (the exposition format requires it).
        let mut rest = text.as_str();
        for w in want {
            let at = rest
                .find(w)
                .unwrap_or_else(|| panic!("missing or out of order: {w}\n{text}"));
            rest = &rest[at + w.len()..];
        }
        assert_eq!(text.lines().count(), 4 * 2 + 4 * 2, "{text}");
        // Every sample line is `name{labels} integer`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().expect("value");
            assert!(value.parse::<u128>().is_ok(), "{line}");
        }
    }

    #[test]
    fn no_pools_still_announce_the_families_and_labels_are_escaped() {
        let text = render_prometheus(&[]);
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 4);
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 0);
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
