//! What the node daemon's cluster-wide IPAM garbage collector needs from the store, and nothing
//! of its policy: a snapshot of every held address with its exact reservation
//! ([`KubeIpam::held_addresses`]), and a free that removes a reservation only while it is still
//! exactly the one observed ([`KubeIpam::free_unchanged`]).
//!
//! The free is a resourceVersion-checked pool write (the store's merge patch carrying the
//! resourceVersion that was read, retried on conflict), and the check that the reservation at
//! the offset still has the same container id, podref and interface runs inside it, on the
//! document that is written: an attachment that re-took the address since the snapshot (an ADD
//! rewrites the container id) is never freed. Afterwards the address's
//! `OverlappingRangeIPReservation` is deleted when it names the freed attachment.
//!
//! It also finds the overlapping-range reservations that no pool allocation accounts for
//! ([`KubeIpam::reservation_snapshot`]): left behind when a release removed the pool entry but
//! not the reservation (the API server went away in between; upstream whereabouts leaves them
//! the same way), or when a claim's create was applied with no answer and its cleanup could not
//! run. Such a reservation keeps its address from every overlapping range for good. The
//! reservations are listed before the pools, so one in the first list whose entry is missing
//! from the second either lost its entry before the pools were read, or is a claim whose entry
//! is still on its way (the node daemon's claim-first allocation, [`crate::claim`]): the
//! collector deletes one only once its pod is gone. It is deleted
//! ([`KubeIpam::delete_orphan`]) only with the uid and resourceVersion that were listed as
//! preconditions: a holder that adopted it since (a re-ADD rewrites it) keeps it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use kube::api::{ListParams, Preconditions};
use netattach_ipam::error::IpamError;

use netattach_ipam::pool::PoolDoc;

use crate::crd::{IPPool, orip_name};
use crate::store::{ApiFailure, KubeIpam, classify};

/// One held address as read from its pool: where it is and exactly who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeldAddress {
    /// The `IPPool` name.
    pub pool: String,
    /// The pool's `network_name` (the overlapping-range reservation's name prefix).
    pub network_name: Option<String>,
    /// The offset key in the pool.
    pub offset: u128,
    /// The address.
    pub ip: IpAddr,
    /// The holder's container id.
    pub id: String,
    /// The holder's pod, `namespace/name` (empty when unknown).
    pub podref: String,
    /// The holder's interface.
    pub ifname: String,
}

impl fmt::Display for HeldAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in IPPool {} (pod {}, interface {}, container {})",
            self.ip, self.pool, self.podref, self.ifname, self.id
        )
    }
}

impl HeldAddress {
    /// Whether a reservation is still exactly this one.
    fn is(&self, id: &str, podref: &str, ifname: &str) -> bool {
        self.id == id && self.podref == podref && self.ifname == ifname
    }
}

/// An overlapping-range reservation that no pool allocation accounts for, as it was listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanReservation {
    /// The object's name (whereabouts' `NormalizeIP(ip, network_name)`).
    pub name: String,
    /// The holder's pod, `namespace/name`.
    pub podref: String,
    /// The holder's interface.
    pub ifname: String,
    /// The holder's container id (empty when upstream whereabouts made it).
    pub containerid: String,
    uid: Option<String>,
    resource_version: Option<String>,
}

impl fmt::Display for OrphanReservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OverlappingRangeIPReservation {} (pod {}, interface {})",
            self.name, self.podref, self.ifname
        )
    }
}

/// The held addresses of every pool and the reservations none of them accounts for.
#[derive(Debug, Default)]
pub struct ReservationSnapshot {
    /// Every held address of the pools that could be understood.
    pub held: Vec<HeldAddress>,
    /// The reservations without a pool allocation; empty when a pool could not be understood
    /// (its entries are unknown, so no reservation can be called an orphan).
    pub orphans: Vec<OrphanReservation>,
}

impl KubeIpam {
    /// Every held address in the namespace's pools (a quorum list).
    ///
    /// # Errors
    ///
    /// When the pools cannot be listed. A pool that cannot be understood is left out with a
    /// warning: collection goes on for every other pool.
    pub async fn held_addresses(&self) -> Result<Vec<HeldAddress>, IpamError> {
        let listed = self.list_pools().await?;
        Ok(held_in(listed.readable(self.namespace(), "garbage collection")))
    }

    /// The overlapping-range reservations of the namespace (a quorum list), then every held
    /// address (see the module documentation for why in this order).
    ///
    /// # Errors
    ///
    /// When the reservations or the pools cannot be listed.
    pub async fn reservation_snapshot(&self) -> Result<ReservationSnapshot, IpamError> {
        let reservations = self.orips().list(&ListParams::default()).await.map_err(|e| {
            match classify(e, "listing OverlappingRangeIPReservations", self.namespace()) {
                ApiFailure::Transient(e) | ApiFailure::Fatal(e) => e,
                ApiFailure::Conflict => IpamError::NotAvailable {
                    what: "listing OverlappingRangeIPReservations: unexpected conflict".into(),
                    fix: "retry".into(),
                },
            }
        })?;
        let listed = self.list_pools().await?;
        let complete = listed.unreadable.is_empty();
        let pools = listed.readable(self.namespace(), "garbage collection");
        let accounted = accounted_reservations(pools.iter().map(|(_, doc)| doc));
        let held = held_in(pools);
        if !complete {
            tracing::warn!("an IPPool cannot be understood: no overlapping-range reservation is collected");
            return Ok(ReservationSnapshot {
                held,
                orphans: Vec::new(),
            });
        }
        let orphans = reservations
            .items
            .into_iter()
            .filter_map(|o| {
                let name = o.metadata.name?;
                if accounted.contains(&name) {
                    return None;
                }
                Some(OrphanReservation {
                    name,
                    podref: o.spec.podref,
                    ifname: o.spec.ifname,
                    containerid: o.spec.containerid,
                    uid: o.metadata.uid,
                    resource_version: o.metadata.resource_version,
                })
            })
            .collect();
        Ok(ReservationSnapshot { held, orphans })
    }

    /// Delete an orphaned reservation if it is still exactly as listed (uid and resourceVersion
    /// preconditions). Returns whether it was deleted (`false`: gone or changed since).
    ///
    /// # Errors
    ///
    /// When the API server refuses or does not answer.
    pub async fn delete_orphan(&self, orphan: &OrphanReservation) -> Result<bool, IpamError> {
        let pre = Preconditions {
            uid: orphan.uid.clone(),
            resource_version: orphan.resource_version.clone(),
        };
        match self.delete_reservation(&orphan.name, pre).await {
            Ok(deleted) => Ok(deleted),
            Err(e) => match classify(e, &format!("deleting {orphan}"), self.namespace()) {
                ApiFailure::Transient(e) | ApiFailure::Fatal(e) => Err(e),
                ApiFailure::Conflict => Ok(false),
            },
        }
    }

    /// Free those of `held` whose reservation is still exactly the observed one, one
    /// resourceVersion-checked write per pool; then delete each freed address's
    /// overlapping-range reservation if it names the freed attachment. Returns what was freed
    /// (an address whose reservation changed, or whose pool is gone, is left out).
    ///
    /// # Errors
    ///
    /// When a pool cannot be read or written within the retry budget; pools written before
    /// the failure stay written.
    pub async fn free_unchanged(&self, held: &[HeldAddress]) -> Result<Vec<HeldAddress>, IpamError> {
        let mut by_pool: BTreeMap<&str, Vec<&HeldAddress>> = BTreeMap::new();
        for h in held {
            by_pool.entry(h.pool.as_str()).or_default().push(h);
        }
        let mut freed = Vec::new();
        for (pool, wanted) in by_pool {
            let out = self
                .update_pool(pool, None, self.retry.deadline(), |doc| {
                    let mut gone = Vec::new();
                    for h in &wanted {
                        let same = doc
                            .allocations
                            .get(&h.offset)
                            .is_some_and(|r| h.is(&r.id, &r.podref, &r.ifname));
                        if same {
                            doc.allocations.remove(&h.offset);
                            gone.push((*h).clone());
                        }
                    }
                    let changed = !gone.is_empty();
                    Ok((gone, changed))
                })
                .await?;
            for h in out.unwrap_or_default() {
                self.delete_orip_if(h.ip, h.network_name.as_deref(), &h.id, &h.podref, &h.ifname)
                    .await;
                freed.push(h);
            }
        }
        Ok(freed)
    }
}

/// The names of the overlapping-range reservations the allocations of `docs` account for
/// (whereabouts' `NormalizeIP(ip, network_name)` of each held address).
pub fn accounted_reservations<'a>(docs: impl IntoIterator<Item = &'a PoolDoc>) -> BTreeSet<String> {
    docs.into_iter()
        .flat_map(|doc| {
            doc.allocations
                .keys()
                .filter_map(|offset| doc.ip_at(*offset))
                .map(|ip| orip_name(ip, doc.network_name.as_deref()))
        })
        .collect()
}

/// Every held address of `pools`.
fn held_in(pools: Vec<(IPPool, PoolDoc)>) -> Vec<HeldAddress> {
    let mut out = Vec::new();
    for (pool, doc) in pools {
        let name = pool.metadata.name.unwrap_or_default();
        for (offset, r) in &doc.allocations {
            let Some(ip) = doc.ip_at(*offset) else { continue };
            out.push(HeldAddress {
                pool: name.clone(),
                network_name: doc.network_name.clone(),
                offset: *offset,
                ip,
                id: r.id.clone(),
                podref: r.podref.clone(),
                ifname: r.ifname.clone(),
            });
        }
    }
    out
}
