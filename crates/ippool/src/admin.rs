//! Operator access to the Kubernetes store: who holds each address — the pod, its node, since
//! when — joined from the `IPPool`s, the `OverlappingRangeIPReservation`s and the pods; and
//! freeing one address by hand with the same resourceVersion-checked write as every other
//! change ([`KubeIpam::release_offset`]).
//!
//! The join ([`holdings`]) is pure, so the local file store's documents go through it too (with
//! no reservations, and pods only when a cluster is at hand). Policy — whether a release may go
//! ahead — is the caller's (the `netattach ipam` command); this module only reports facts.
//!
//! API cost of a listing: one LIST of the pools, one LIST of the reservations, and for the pods
//! one GET per namespace that holds a single referenced pod, one LIST per namespace that holds
//! several ([`KubeIpam::pods`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use netattach_ipam::error::IpamError;
use netattach_ipam::pool::{self, OffsetRelease, PoolDoc, Reservation};

use crate::crd::{doc_from_pool, orip_name};
use crate::gc::accounted_reservations;
use crate::store::{KubeIpam, UnreadablePool};

/// Whether the pod an allocation names still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// The pod exists and is not being deleted: it may be using the address.
    Live,
    /// The pod exists but has a deletion timestamp.
    Terminating,
    /// No pod of that namespace and name exists.
    Gone,
}

impl PodState {
    /// `live`, `terminating` or `gone`.
    pub fn as_str(self) -> &'static str {
        match self {
            PodState::Live => "live",
            PodState::Terminating => "terminating",
            PodState::Gone => "gone",
        }
    }
}

/// What the API says about a pod an allocation names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Live, terminating or gone.
    pub state: PodState,
    /// `spec.nodeName` (unscheduled and gone pods have none).
    pub node: Option<String>,
    /// `metadata.creationTimestamp`, unix seconds.
    pub created: Option<u64>,
}

impl PodInfo {
    /// A pod that does not exist.
    pub fn gone() -> PodInfo {
        PodInfo {
            state: PodState::Gone,
            node: None,
            created: None,
        }
    }

    fn of(pod: &Pod) -> PodInfo {
        PodInfo {
            state: if pod.metadata.deletion_timestamp.is_some() {
                PodState::Terminating
            } else {
                PodState::Live
            },
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            created: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| u64::try_from(t.0.as_second()).ok()),
        }
    }
}

/// An `OverlappingRangeIPReservation` as listed (by object name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationSeen {
    /// `spec.podref`.
    pub podref: String,
    /// `spec.ifname`.
    pub ifname: String,
    /// `spec.containerid` (whereabouts never sets it).
    pub container_id: String,
    /// `metadata.creationTimestamp`, unix seconds.
    pub created: Option<u64>,
}

/// Where an allocation's age comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeSource {
    /// The allocation time the store recorded (the local store does; an `IPPool` cannot).
    Allocation,
    /// The creation of the address's `OverlappingRangeIPReservation` (made with the allocation).
    Reservation,
    /// The creation of the holding pod (an upper bound: the pod may have got the address later).
    Pod,
}

impl AgeSource {
    /// `allocation`, `reservation` or `pod`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgeSource::Allocation => "allocation",
            AgeSource::Reservation => "reservation",
            AgeSource::Pod => "pod",
        }
    }
}

/// One held address with everything known about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// The pool's name.
    pub pool: String,
    /// The address.
    pub ip: IpAddr,
    /// Its offset in the pool (the `IPPool` allocation key).
    pub offset: u128,
    /// The reservation as stored (container id, podref, interface, time).
    pub holder: Reservation,
    /// The pod the podref names, when it was looked up (`None`: no podref, or no cluster).
    pub pod: Option<PodInfo>,
    /// Since when the address is held (unix seconds) and how that is known.
    pub since: Option<(u64, AgeSource)>,
}

/// Whether reservation object `seen` was made for the allocation `r` (same pod and interface, or
/// the same container when the allocation names no pod).
fn reservation_is_for(seen: &ReservationSeen, r: &Reservation) -> bool {
    if r.podref.is_empty() {
        !r.id.is_empty() && seen.container_id == r.id && seen.ifname == r.ifname
    } else {
        seen.podref == r.podref && (seen.ifname.is_empty() || seen.ifname == r.ifname)
    }
}

/// Join pool documents with the reservations (by object name) and the pods (by podref):
/// one [`Holding`] per allocation, ordered by pool and address.
///
/// The age is the allocation time when the store recorded one, else the creation of the
/// address's reservation when it was made for this allocation, else the creation of the pod when
/// it exists, else unknown.
pub fn holdings(
    docs: &BTreeMap<String, PoolDoc>,
    reservations: &BTreeMap<String, ReservationSeen>,
    pods: &BTreeMap<String, PodInfo>,
) -> Vec<Holding> {
    let mut out = Vec::new();
    for (name, doc) in docs {
        for (offset, r) in &doc.allocations {
            let Some(ip) = doc.ip_at(*offset) else { continue };
            let pod = pods.get(&r.podref).cloned();
            let reservation = reservations
                .get(&orip_name(ip, doc.network_name.as_deref()))
                .filter(|seen| reservation_is_for(seen, r));
            let since = r
                .time
                .filter(|t| *t > 0)
                .map(|t| (t, AgeSource::Allocation))
                .or_else(|| {
                    reservation
                        .and_then(|s| s.created)
                        .map(|t| (t, AgeSource::Reservation))
                })
                .or_else(|| pod.as_ref().and_then(|p| p.created).map(|t| (t, AgeSource::Pod)));
            out.push(Holding {
                pool: name.clone(),
                ip,
                offset: *offset,
                holder: r.clone(),
                pod,
                since,
            });
        }
    }
    out.sort_by(|a, b| (&a.pool, a.ip).cmp(&(&b.pool, b.ip)));
    out
}

/// The reservations (by object name) that no allocation of `docs` accounts for: an address
/// kept from every overlapping range with nothing in any pool behind it (see
/// [`crate::gc`] for how they come about). Meaningful only when `docs` are all the namespace's
/// pools.
pub fn orphaned_reservations<'a>(
    docs: &BTreeMap<String, PoolDoc>,
    reservations: &'a BTreeMap<String, ReservationSeen>,
) -> Vec<(&'a str, &'a ReservationSeen)> {
    let accounted = accounted_reservations(docs.values());
    reservations
        .iter()
        .filter(|(name, _)| !accounted.contains(name.as_str()))
        .map(|(name, seen)| (name.as_str(), seen))
        .collect()
}

/// `namespace/name` split, when both parts are there.
pub fn split_podref(podref: &str) -> Option<(&str, &str)> {
    podref
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
}

/// What happened to the address's `OverlappingRangeIPReservation` after an operator's release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReservationAfter {
    /// There was none (overlapping ranges off, or already gone).
    Absent {
        /// The object name.
        name: String,
    },
    /// It named the freed attachment and was deleted.
    Deleted {
        /// The object name.
        name: String,
    },
    /// It is still there: it names another attachment, or deleting it failed (logged).
    Kept {
        /// The object name.
        name: String,
        /// Its `spec.podref`.
        podref: String,
        /// Its `spec.ifname`.
        ifname: String,
    },
}

/// The result of [`KubeIpam::release_offset`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRelease {
    /// Freed, not held, or held by another attachment now (kept).
    pub outcome: OffsetRelease,
    /// The reservation's fate, when the address was freed.
    pub reservation: Option<ReservationAfter>,
}

fn api_error(what: &str, err: &kube::Error, fix: &str) -> IpamError {
    IpamError::NotAvailable {
        what: format!("{what}: {err}"),
        fix: fix.to_string(),
    }
}

const POD_READ_FIX: &str = "give the kubeconfig's identity get/list on pods (the netattach-node ClusterRole \
                            has them), or check that the API server is reachable and retry";

impl KubeIpam {
    /// Every pool of the namespace, as documents by name (one LIST), and the pools that cannot
    /// be understood.
    pub async fn read_pools(&self) -> Result<(BTreeMap<String, PoolDoc>, Vec<UnreadablePool>), IpamError> {
        let listed = self.list_pools().await?;
        let docs = listed
            .pools
            .into_iter()
            .map(|(p, d)| (p.metadata.name.unwrap_or_default(), d))
            .collect();
        Ok((docs, listed.unreadable))
    }

    /// One pool as a document (a quorum GET); `None` when it does not exist.
    pub async fn read_pool(&self, name: &str) -> Result<Option<PoolDoc>, IpamError> {
        match self.get_pool(name, false, self.retry.deadline()).await? {
            Some(p) => Ok(Some(doc_from_pool(self.namespace(), name, &p.spec)?)),
            None => Ok(None),
        }
    }

    /// Every `OverlappingRangeIPReservation` of the namespace, by object name (one LIST).
    pub async fn reservations(&self) -> Result<BTreeMap<String, ReservationSeen>, IpamError> {
        let list = self.orips().list(&ListParams::default()).await.map_err(|e| {
            api_error(
                &format!(
                    "listing OverlappingRangeIPReservations in namespace `{}`",
                    self.namespace()
                ),
                &e,
                "give the kubeconfig's identity list on whereabouts.cni.cncf.io \
                 overlappingrangeipreservations, \
                 or check that the API server is reachable and retry",
            )
        })?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|o| {
                let name = o.metadata.name.clone()?;
                let created = o
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .and_then(|t| u64::try_from(t.0.as_second()).ok());
                Some((
                    name,
                    ReservationSeen {
                        podref: o.spec.podref,
                        ifname: o.spec.ifname,
                        container_id: o.spec.containerid,
                        created,
                    },
                ))
            })
            .collect())
    }

    /// The pods named by `podrefs` (`namespace/name`; malformed ones are left out), by podref.
    /// A namespace with one referenced pod costs a GET, one with several a LIST of its pods
    /// (whichever is fewer requests; a LIST returns every pod of the namespace, so it is only
    /// worth it when more than one is needed). Pods that do not exist are [`PodState::Gone`].
    pub async fn pods<'a>(
        &self,
        podrefs: impl IntoIterator<Item = &'a str>,
    ) -> Result<BTreeMap<String, PodInfo>, IpamError> {
        let mut by_ns: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for podref in podrefs {
            if let Some((ns, name)) = split_podref(podref) {
                by_ns.entry(ns).or_default().insert(name);
            }
        }
        let mut out = BTreeMap::new();
        for (ns, names) in by_ns {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            if names.len() == 1 {
                for name in names {
                    let pod = api
                        .get_opt(name)
                        .await
                        .map_err(|e| api_error(&format!("reading pod `{ns}/{name}`"), &e, POD_READ_FIX))?;
                    out.insert(
                        format!("{ns}/{name}"),
                        pod.as_ref().map_or_else(PodInfo::gone, PodInfo::of),
                    );
                }
                continue;
            }
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| api_error(&format!("listing pods of namespace `{ns}`"), &e, POD_READ_FIX))?;
            let mut found: BTreeMap<String, PodInfo> = list
                .items
                .iter()
                .filter_map(|p| Some((p.metadata.name.clone()?, PodInfo::of(p))))
                .collect();
            for name in names {
                out.insert(
                    format!("{ns}/{name}"),
                    found.remove(name).unwrap_or_else(PodInfo::gone),
                );
            }
        }
        Ok(out)
    }

    /// Free the address at `offset` of pool `name` if `expected` still holds it — an operator's
    /// release. The pool write is resourceVersion-checked and retried on conflict like every
    /// other (a concurrent ADD or DEL is never overwritten); if another attachment holds the
    /// address by the time of the write, nothing is changed ([`OffsetRelease::HeldByOther`]).
    /// After a release the address's `OverlappingRangeIPReservation` is deleted when it names
    /// the freed attachment. `Ok(None)` when the pool does not exist.
    pub async fn release_offset(
        &self,
        name: &str,
        offset: u128,
        expected: &Reservation,
    ) -> Result<Option<OperatorRelease>, IpamError> {
        let out = self
            .update_pool(name, None, self.retry.deadline(), |doc| {
                let network = doc.network_name.clone();
                let outcome = pool::release_offset_in(doc, name, offset, expected);
                let changed = matches!(outcome, OffsetRelease::Released(_));
                Ok(((outcome, network), changed))
            })
            .await?;
        let Some((outcome, network)) = out else {
            return Ok(None);
        };
        let reservation = match &outcome {
            OffsetRelease::Released(a) => {
                tracing::info!(pool = %name, ip = %a.ip, container = %expected.id, podref = %expected.podref,
                    ifname = %expected.ifname, "released by an operator");
                Some(
                    self.release_reservation(a.ip, network.as_deref(), expected)
                        .await?,
                )
            }
            OffsetRelease::NotHeld | OffsetRelease::HeldByOther(_) => None,
        };
        Ok(Some(OperatorRelease { outcome, reservation }))
    }

    /// Delete the reservation of a freed address when it names the freed attachment, and say
    /// what became of it.
    async fn release_reservation(
        &self,
        ip: IpAddr,
        network: Option<&str>,
        freed: &Reservation,
    ) -> Result<ReservationAfter, IpamError> {
        let name = orip_name(ip, network);
        let read = |e: kube::Error| {
            api_error(
                &format!(
                    "reading OverlappingRangeIPReservation `{}/{name}` (the address itself was released)",
                    self.namespace()
                ),
                &e,
                "check that the API server is reachable; a leftover reservation only keeps the address from \
                 being handed out again: delete it with kubectl if it names the released pod",
            )
        };
        if self.orips().get_opt(&name).await.map_err(read)?.is_none() {
            return Ok(ReservationAfter::Absent { name });
        }
        self.delete_orip_if(ip, network, &freed.id, &freed.podref, &freed.ifname)
            .await;
        Ok(match self.orips().get_opt(&name).await.map_err(read)? {
            None => ReservationAfter::Deleted { name },
            Some(o) => ReservationAfter::Kept {
                name,
                podref: o.spec.podref,
                ifname: o.spec.ifname,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(id: &str, podref: &str, time: Option<u64>) -> Reservation {
        Reservation {
            id: id.into(),
            podref: podref.into(),
            ifname: "net1".into(),
            time,
        }
    }

    fn seen(podref: &str, created: u64) -> ReservationSeen {
        ReservationSeen {
            podref: podref.into(),
            ifname: "net1".into(),
            container_id: String::new(),
            created: Some(created),
        }
    }

    fn live(node: &str, created: u64) -> PodInfo {
        PodInfo {
            state: PodState::Live,
            node: Some(node.into()),
            created: Some(created),
        }
    }

    #[test]
    fn age_comes_from_allocation_then_reservation_then_pod() {
        let mut doc = PoolDoc::new("198.18.0.0/24".parse().expect("cidr"), Some("stor".into()));
        doc.allocations.insert(1, res("c1", "ns/a", Some(100)));
        doc.allocations.insert(2, res("c2", "ns/b", None));
        doc.allocations.insert(3, res("c3", "ns/c", None));
        doc.allocations.insert(4, res("c4", "ns/d", None));
        // A reservation of another pod says nothing about .4's age.
        doc.allocations.insert(5, res("c5", "ns/e", None));
        let docs = BTreeMap::from([("stor-198.18.0.0-24".to_string(), doc)]);
        let orips = BTreeMap::from([
            ("stor-198.18.0.1".to_string(), seen("ns/a", 200)),
            ("stor-198.18.0.2".to_string(), seen("ns/b", 300)),
            ("stor-198.18.0.5".to_string(), seen("ns/other", 400)),
        ]);
        let pods = BTreeMap::from([
            ("ns/a".to_string(), live("n1", 50)),
            ("ns/b".to_string(), live("n2", 60)),
            ("ns/c".to_string(), live("n3", 70)),
            ("ns/d".to_string(), PodInfo::gone()),
        ]);
        let h = holdings(&docs, &orips, &pods);
        let got: Vec<(String, Option<(u64, AgeSource)>)> =
            h.iter().map(|h| (h.ip.to_string(), h.since)).collect();
        assert_eq!(
            got,
            vec![
                ("198.18.0.1".into(), Some((100, AgeSource::Allocation))),
                ("198.18.0.2".into(), Some((300, AgeSource::Reservation))),
                ("198.18.0.3".into(), Some((70, AgeSource::Pod))),
                ("198.18.0.4".into(), None),
                ("198.18.0.5".into(), None),
            ]
        );
        assert_eq!(h[0].pod.as_ref().and_then(|p| p.node.as_deref()), Some("n1"));
        assert_eq!(h[3].pod.as_ref().map(|p| p.state), Some(PodState::Gone));
        assert_eq!(h[4].pod, None, "not looked up");
        assert!(h.iter().all(|h| h.pool == "stor-198.18.0.0-24"));
    }

    #[test]
    fn orphaned_reservations_are_those_no_allocation_names() {
        let mut stor = PoolDoc::new("198.18.0.0/24".parse().expect("cidr"), Some("stor".into()));
        stor.allocations.insert(1, res("c1", "ns/a", None));
        let mut plain = PoolDoc::new("198.18.1.0/24".parse().expect("cidr"), None);
        plain.allocations.insert(7, res("c7", "ns/b", None));
        let docs = BTreeMap::from([
            ("stor-198.18.0.0-24".to_string(), stor),
            ("198.18.1.0-24".to_string(), plain),
        ]);
        let orips = BTreeMap::from([
            ("stor-198.18.0.1".to_string(), seen("ns/a", 1)),
            ("198.18.1.7".to_string(), seen("ns/b", 1)),
            // The same address in another network, a free address, another network's.
            ("198.18.0.1".to_string(), seen("ns/x", 1)),
            ("stor-198.18.0.2".to_string(), seen("ns/y", 1)),
            ("other-198.18.1.7".to_string(), seen("ns/z", 1)),
        ]);
        let names: Vec<&str> = orphaned_reservations(&docs, &orips)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["198.18.0.1", "other-198.18.1.7", "stor-198.18.0.2"]);
        assert!(orphaned_reservations(&docs, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn reservation_without_pod_matches_by_container() {
        let r = res("c9", "", None);
        let mut s = seen("", 1);
        assert!(!reservation_is_for(&s, &r));
        s.container_id = "c9".into();
        assert!(reservation_is_for(&s, &r));
        // whereabouts writes no container id but always the podref.
        assert!(reservation_is_for(&seen("ns/a", 1), &res("", "ns/a", None)));
    }

    #[test]
    fn podrefs_split_only_when_whole() {
        assert_eq!(split_podref("ns/p"), Some(("ns", "p")));
        for bad in ["", "ns", "/p", "ns/", "a/b/c"] {
            assert_eq!(split_podref(bad), None, "{bad}");
        }
    }
}
