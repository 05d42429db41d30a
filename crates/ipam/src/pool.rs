//! The pool document (one per pool, shaped like a whereabouts `IPPool` spec) and the pure
//! transactions over a set of loaded documents: allocate, release, gc. Backends load the
//! documents, run a transaction in memory, and write back the pools it marked dirty (the local
//! store under a file lock; a Kubernetes store with a resourceVersion-checked update). Nothing is
//! written when a transaction fails, which makes multi-range requests all-or-nothing.
//!
//! JSON shape (`network_name` and `time` are netattach additions; whereabouts ignores them):
//! ```json
//! { "range": "192.168.4.0/24", "network_name": "storage",
//!   "allocations": { "5": { "id": "<container id>", "podref": "ns/pod", "ifname": "net1", "time": 1700000000 } } }
//! ```
//! Offsets are decimal strings counted from the network address, as in whereabouts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{ConfigError, IpamError};
use crate::range::{IpRange, ip_to_u128, pool_name};
use crate::store::{Allocation, AllocationRequest, GcRequest, Owner};

/// One reservation (whereabouts `IPAllocation`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reservation {
    /// Container id.
    pub id: String,
    /// `namespace/name`, empty when unknown.
    #[serde(default)]
    pub podref: String,
    /// Interface name.
    #[serde(default)]
    pub ifname: String,
    /// Allocation time, unix seconds (netattach addition).
    #[serde(default)]
    pub time: Option<u64>,
}

/// A pool document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDoc {
    /// The pool's CIDR (normalised).
    pub range: IpNet,
    /// The network name the pool belongs to (netattach addition, for overlap scoping).
    pub network_name: Option<String>,
    /// Offset → reservation.
    pub allocations: BTreeMap<u128, Reservation>,
}

#[derive(Deserialize)]
struct RawPool {
    range: String,
    #[serde(default)]
    network_name: Option<String>,
    #[serde(default)]
    allocations: BTreeMap<String, Reservation>,
}

impl PoolDoc {
    /// An empty pool.
    pub fn new(range: IpNet, network_name: Option<String>) -> Self {
        PoolDoc {
            range: range.trunc(),
            network_name,
            allocations: BTreeMap::new(),
        }
    }

    /// Parse a document; `origin` (a file path) names it in errors.
    pub fn from_json(text: &str, origin: &std::path::Path) -> Result<PoolDoc, IpamError> {
        let corrupt = |reason: String| IpamError::Corrupt {
            path: origin.to_path_buf(),
            reason,
        };
        let raw: RawPool =
            serde_json::from_str(text).map_err(|e| corrupt(format!("not a pool document: {e}")))?;
        let range: IpNet = raw
            .range
            .parse()
            .map_err(|_| corrupt(format!("range `{}` is not a CIDR", raw.range)))?;
        if range.trunc() != range {
            return Err(corrupt(format!("range `{}` has host bits set", raw.range)));
        }
        let mut allocations = BTreeMap::new();
        let span = IpRange {
            cidr: range,
            start: range.network(),
            end: range.broadcast(),
            exclude: vec![],
            gateway: None,
        };
        for (k, v) in raw.allocations {
            let off: u128 = k
                .parse()
                .map_err(|_| corrupt(format!("allocation key `{k}` is not a decimal offset")))?;
            if span.ip_at(off).is_none() {
                return Err(corrupt(format!("allocation offset {off} is outside {range}")));
            }
            allocations.insert(off, v);
        }
        Ok(PoolDoc {
            range,
            network_name: raw.network_name,
            allocations,
        })
    }

    /// Render as pretty JSON with allocations in numeric order.
    pub fn to_json(&self) -> String {
        let mut allocs = Map::new();
        for (off, r) in &self.allocations {
            let mut e = Map::new();
            e.insert("id".into(), Value::String(r.id.clone()));
            e.insert("podref".into(), Value::String(r.podref.clone()));
            e.insert("ifname".into(), Value::String(r.ifname.clone()));
            if let Some(t) = r.time {
                e.insert("time".into(), Value::from(t));
            }
            allocs.insert(off.to_string(), Value::Object(e));
        }
        let mut doc = Map::new();
        doc.insert("range".into(), Value::String(self.range.to_string()));
        if let Some(n) = &self.network_name {
            doc.insert("network_name".into(), Value::String(n.clone()));
        }
        doc.insert("allocations".into(), Value::Object(allocs));
        let mut s = serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_default();
        s.push('\n');
        s
    }

    /// The address at an offset.
    pub fn ip_at(&self, off: u128) -> Option<IpAddr> {
        let net = ip_to_u128(self.range.network());
        let v = net.checked_add(off)?;
        let ip = match self.range {
            IpNet::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(v).ok()?)),
            IpNet::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(v)),
        };
        self.range.contains(&ip).then_some(ip)
    }

    fn allocation(
        &self,
        name: &str,
        off: u128,
        r: &Reservation,
        gateway: Option<IpAddr>,
    ) -> Option<Allocation> {
        let ip = self.ip_at(off)?;
        Some(Allocation {
            ip,
            cidr: IpNet::new(ip, self.range.prefix_len()).ok()?,
            gateway,
            pool: name.to_string(),
            container_id: r.id.clone(),
            podref: (!r.podref.is_empty()).then(|| r.podref.clone()),
            ifname: r.ifname.clone(),
            allocated_at: r.time.unwrap_or(0),
        })
    }
}

/// Pool names the request touches, in range order.
pub fn request_pools(req: &AllocationRequest) -> Vec<String> {
    req.ranges
        .iter()
        .map(|r| pool_name(req.network_name.as_deref(), &r.cidr))
        .collect()
}

fn holder_text(r: &Reservation) -> String {
    let pod = if r.podref.is_empty() {
        String::new()
    } else {
        format!("pod {} ", r.podref)
    };
    format!("{pod}interface {} (container {})", r.ifname, r.id)
}

/// Run an allocation over loaded documents. `docs` must hold every pool of the request that
/// exists, and (for overlap checking) every other pool of the same network name. Returns the
/// allocations and the names of pools to write.
pub fn allocate_in(
    docs: &mut BTreeMap<String, PoolDoc>,
    req: &AllocationRequest,
    now: u64,
) -> Result<(Vec<Allocation>, BTreeSet<String>), IpamError> {
    let names = request_pools(req);
    // Map each requested address to the first range containing it.
    let mut requested: Vec<Option<IpAddr>> = vec![None; req.ranges.len()];
    for ip in &req.requested {
        let Some(i) = req.ranges.iter().position(|r| r.contains(*ip)) else {
            let pools: Vec<String> = req
                .ranges
                .iter()
                .zip(&names)
                .map(|(r, n)| format!("`{n}` {}", r.cidr))
                .collect();
            return Err(IpamError::RequestedOutOfRange {
                ip: *ip,
                pools: pools.join(", "),
            });
        };
        if let Some(prev) = requested[i] {
            return Err(ConfigError::invalid(
                "requested",
                Some(ip.to_string()),
                format!(
                    "is a second address for range {} (already requested {prev})",
                    req.ranges[i].cidr
                ),
                "request at most one address per range",
            )
            .into());
        }
        requested[i] = Some(*ip);
    }

    let mut dirty = BTreeSet::new();
    let mut claimed: BTreeSet<(String, u128)> = BTreeSet::new();
    let mut out = Vec::with_capacity(req.ranges.len());
    for ((range, name), want) in req.ranges.iter().zip(&names).zip(requested) {
        let doc = docs
            .entry(name.clone())
            .or_insert_with(|| PoolDoc::new(range.cidr, req.network_name.clone()));
        if doc.range != range.cidr {
            return Err(IpamError::Corrupt {
                path: name.into(),
                reason: format!("pool holds range {} but is named for {}", doc.range, range.cidr),
            });
        }
        // Idempotent ADD: the owner's existing reservation in this pool.
        let existing = doc
            .allocations
            .iter()
            .find(|(off, r)| {
                !claimed.contains(&(name.clone(), **off))
                    && req.owner.is_attachment_of(&r.id, &r.podref, &r.ifname)
            })
            .map(|(off, _)| *off);
        let off = if let Some(off) = existing {
            if let Some(w) = want
                && range.offset_of(w) != Some(off)
            {
                return Err(IpamError::OwnerHoldsOther {
                    owner: req.owner.to_string(),
                    held: doc.ip_at(off).unwrap_or(w),
                    requested: w,
                    pool: name.clone(),
                });
            }
            if let Some(r) = doc.allocations.get_mut(&off) {
                let mut changed = false;
                if !req.owner.container_id.is_empty() && r.id != req.owner.container_id {
                    tracing::info!(pool = %name, offset = %off, old = %r.id, new = %req.owner.container_id,
                        "attachment re-added: keeping its address, updating the container id");
                    r.id = req.owner.container_id.clone();
                    changed = true;
                }
                if let Some(p) = &req.owner.podref
                    && r.podref != *p
                {
                    r.podref = p.clone();
                    changed = true;
                }
                if changed {
                    dirty.insert(name.clone());
                }
            }
            off
        } else {
            let overlap_used = if req.overlapping_ranges {
                overlapping_used(docs, name, range, &req.network_name)
            } else {
                BTreeSet::new()
            };
            let Some(doc) = docs.get_mut(name) else {
                return Err(IpamError::Corrupt {
                    path: name.into(),
                    reason: "pool vanished during allocation".into(),
                });
            };
            let off = match want {
                Some(w) => {
                    let off = range.offset_of(w).ok_or_else(|| IpamError::RequestedOutOfRange {
                        ip: w,
                        pools: format!("`{name}` {}", range.cidr),
                    })?;
                    if let Some(reason) = range.reserved_reason(w) {
                        return Err(IpamError::RequestedReserved {
                            ip: w,
                            pool: name.clone(),
                            reason: reason.into(),
                        });
                    }
                    if let Some(r) = doc.allocations.get(&off) {
                        return Err(IpamError::RequestedUnavailable {
                            ip: w,
                            pool: name.clone(),
                            holder: holder_text(r),
                        });
                    }
                    if overlap_used.contains(&off) || claimed.contains(&(name.clone(), off)) {
                        return Err(IpamError::RequestedUnavailable {
                            ip: w,
                            pool: name.clone(),
                            holder: format!(
                                "an attachment in an overlapping range of network `{}`",
                                req.network_name.as_deref().unwrap_or("")
                            ),
                        });
                    }
                    off
                }
                None => {
                    let mut used: BTreeSet<u128> = doc.allocations.keys().copied().collect();
                    used.extend(overlap_used);
                    used.extend(claimed.iter().filter(|(n, _)| n == name).map(|(_, o)| *o));
                    match range.first_free_offset(&used) {
                        Some(off) => off,
                        None => {
                            let held = doc
                                .allocations
                                .keys()
                                .filter(|o| range.ip_at(**o).is_some_and(|ip| range.is_allocatable(ip)))
                                .count();
                            return Err(IpamError::Exhausted {
                                pool: name.clone(),
                                range: range.cidr,
                                capacity: range.capacity(),
                                held,
                            });
                        }
                    }
                }
            };
            doc.allocations.insert(
                off,
                Reservation {
                    id: req.owner.container_id.clone(),
                    podref: req.owner.podref.clone().unwrap_or_default(),
                    ifname: req.owner.ifname.clone(),
                    time: Some(now),
                },
            );
            dirty.insert(name.clone());
            off
        };
        claimed.insert((name.clone(), off));
        let Some(doc) = docs.get(name) else {
            return Err(IpamError::Corrupt {
                path: name.into(),
                reason: "pool vanished during allocation".into(),
            });
        };
        let alloc = doc
            .allocations
            .get(&off)
            .and_then(|r| doc.allocation(name, off, r, range.gateway));
        match alloc {
            Some(a) => out.push(a),
            None => {
                return Err(IpamError::Corrupt {
                    path: name.into(),
                    reason: format!("offset {off} outside the pool"),
                });
            }
        }
    }
    Ok((out, dirty))
}

/// Offsets (in `range`) held by other pools of the same network whose ranges overlap it.
fn overlapping_used(
    docs: &BTreeMap<String, PoolDoc>,
    this: &str,
    range: &IpRange,
    network: &Option<String>,
) -> BTreeSet<u128> {
    let mut used = BTreeSet::new();
    for (name, doc) in docs {
        if name == this || doc.network_name != *network || !nets_overlap(&doc.range, &range.cidr) {
            continue;
        }
        for off in doc.allocations.keys() {
            if let Some(o) = doc.ip_at(*off).and_then(|ip| range.offset_of(ip)) {
                used.insert(o);
            }
        }
    }
    used
}

fn nets_overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// Remove the owner's reservations (release rule of [`Owner::releases`]) from every document.
pub fn release_in(
    docs: &mut BTreeMap<String, PoolDoc>,
    owner: &Owner,
) -> (Vec<Allocation>, BTreeSet<String>) {
    remove_where(docs, |_, r| owner.releases(&r.id, &r.podref, &r.ifname))
}

/// Remove reservations not among the valid attachments from the request's pools.
pub fn gc_in(
    docs: &mut BTreeMap<String, PoolDoc>,
    req: &GcRequest<'_>,
    now: u64,
) -> (Vec<Allocation>, BTreeSet<String>) {
    let pools: BTreeSet<String> = req
        .ranges
        .iter()
        .map(|r| pool_name(req.network_name, &r.cidr))
        .collect();
    remove_where(docs, |name, r| {
        pools.contains(name)
            && !req
                .valid
                .iter()
                .any(|(id, ifname)| *id == r.id && *ifname == r.ifname)
            && now.saturating_sub(r.time.unwrap_or(0)) >= req.min_age_secs
    })
}

fn remove_where(
    docs: &mut BTreeMap<String, PoolDoc>,
    pred: impl Fn(&str, &Reservation) -> bool,
) -> (Vec<Allocation>, BTreeSet<String>) {
    let mut out = Vec::new();
    let mut dirty = BTreeSet::new();
    for (name, doc) in docs.iter_mut() {
        let gone: Vec<u128> = doc
            .allocations
            .iter()
            .filter(|(_, r)| pred(name, r))
            .map(|(o, _)| *o)
            .collect();
        for off in gone {
            if let Some(r) = doc.allocations.remove(&off)
                && let Some(a) = doc.allocation(name, off, &r, None)
            {
                out.push(a);
            }
            dirty.insert(name.clone());
        }
    }
    (out, dirty)
}

/// What freeing one address by hand ([`release_offset_in`]) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetRelease {
    /// The address was held by the expected attachment and is now free.
    Released(Allocation),
    /// Nothing holds the address (any more).
    NotHeld,
    /// Another attachment holds it now (the pool changed since the operator looked): kept.
    HeldByOther(Reservation),
}

/// Whether two reservations name the same attachment: container id, podref and interface (the
/// allocation time is not part of the identity).
pub fn same_holder(a: &Reservation, b: &Reservation) -> bool {
    a.id == b.id && a.podref == b.podref && a.ifname == b.ifname
}

/// Free the address at `offset` of pool `name`, but only while `expected` still holds it: an
/// operator decides on what they saw, and an address handed to someone else in between must not
/// be taken from its new holder.
pub fn release_offset_in(
    doc: &mut PoolDoc,
    name: &str,
    offset: u128,
    expected: &Reservation,
) -> OffsetRelease {
    let freed = match doc.allocations.get(&offset) {
        None => return OffsetRelease::NotHeld,
        Some(r) if !same_holder(r, expected) => return OffsetRelease::HeldByOther(r.clone()),
        // Offsets of a loaded document lie inside its range, so this is always `Some`.
        Some(r) => doc.allocation(name, offset, r, None),
    };
    match freed {
        Some(a) => {
            doc.allocations.remove(&offset);
            OffsetRelease::Released(a)
        }
        None => OffsetRelease::NotHeld,
    }
}

/// All reservations as allocations.
pub fn list(docs: &BTreeMap<String, PoolDoc>) -> Vec<Allocation> {
    docs.iter()
        .flat_map(|(name, doc)| {
            doc.allocations
                .iter()
                .filter_map(move |(o, r)| doc.allocation(name, *o, r, None))
        })
        .collect()
}

/// The owner's reservations by ADD identity.
pub fn check_in(docs: &BTreeMap<String, PoolDoc>, owner: &Owner) -> Vec<Allocation> {
    list(docs)
        .into_iter()
        .filter(|a| owner.is_attachment_of(&a.container_id, a.podref.as_deref().unwrap_or(""), &a.ifname))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(id: &str, podref: &str) -> Reservation {
        Reservation {
            id: id.into(),
            podref: podref.into(),
            ifname: "net1".into(),
            time: Some(7),
        }
    }

    fn doc_with(offset: u128, r: Reservation) -> PoolDoc {
        let mut doc = PoolDoc::new("198.18.0.0/24".parse().expect("cidr"), None);
        doc.allocations.insert(offset, r);
        doc
    }

    #[test]
    fn release_offset_frees_only_the_expected_holder() {
        let mut doc = doc_with(5, holder("c1", "ns/a"));
        // The time is not part of the identity.
        let seen = Reservation {
            time: None,
            ..holder("c1", "ns/a")
        };
        match release_offset_in(&mut doc, "p", 5, &seen) {
            OffsetRelease::Released(a) => {
                assert_eq!(a.ip.to_string(), "198.18.0.5");
                assert_eq!(a.podref.as_deref(), Some("ns/a"));
                assert_eq!(a.pool, "p");
            }
            other => panic!("expected a release, got {other:?}"),
        }
        assert!(doc.allocations.is_empty());
        assert_eq!(release_offset_in(&mut doc, "p", 5, &seen), OffsetRelease::NotHeld);
    }

    #[test]
    fn release_offset_keeps_an_address_that_changed_hands() {
        let mut doc = doc_with(5, holder("c2", "ns/b"));
        let out = release_offset_in(&mut doc, "p", 5, &holder("c1", "ns/a"));
        assert_eq!(out, OffsetRelease::HeldByOther(holder("c2", "ns/b")));
        assert_eq!(doc.allocations.len(), 1, "the new holder keeps its address");
        // Same pod, new sandbox: another attachment instance, also kept.
        let out = release_offset_in(&mut doc, "p", 5, &holder("c1", "ns/b"));
        assert!(matches!(out, OffsetRelease::HeldByOther(_)), "{out:?}");
    }
}
