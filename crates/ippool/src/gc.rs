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

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use netattach_ipam::error::IpamError;

use crate::store::KubeIpam;

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

impl KubeIpam {
    /// Every held address in the namespace's pools (a quorum list).
    ///
    /// # Errors
    ///
    /// When the pools cannot be listed. A pool that cannot be understood is left out with a
    /// warning: collection goes on for every other pool.
    pub async fn held_addresses(&self) -> Result<Vec<HeldAddress>, IpamError> {
        let mut out = Vec::new();
        for (pool, doc) in self
            .list_pools()
            .await?
            .readable(self.namespace(), "garbage collection")
        {
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
        Ok(out)
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
