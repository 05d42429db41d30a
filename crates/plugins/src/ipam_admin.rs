//! The operator's IPAM commands — `netattach ipam ls`, `show` and `release` — over either store:
//! the cluster's whereabouts `IPPool`s (`--kubeconfig`, `--namespace`) or the local file store
//! (`--local-dir`). The binary parses arguments into a [`StoreSelection`] and a
//! [`ReleaseTarget`] and prints what these functions return; everything else is here.
//!
//! Release policy (a duplicate address on a storage network corrupts data, a leak only wastes an
//! address — so when in doubt, keep):
//! * an address whose pod exists and is not terminating is **refused**, naming the pod and its
//!   node; `--force` frees it anyway, with a warning;
//! * an address whose pod is gone or terminating is freed;
//! * an address whose holder cannot be checked (no podref, or the local store without
//!   `--kubeconfig`) is refused without `--force`;
//! * the write frees the address only while it is still held exactly as the operator saw it
//!   (container id, podref, interface): an address re-assigned in between is never taken from
//!   its new holder. In the cluster the write is resourceVersion-checked, and the address's
//!   `OverlappingRangeIPReservation` is deleted when it names the freed attachment.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use netattach_ipam::config::DEFAULT_LOCAL_DIR;
use netattach_ipam::error::IpamError;
use netattach_ipam::local::{FileStore, unix_now};
use netattach_ipam::pool::{OffsetRelease, PoolDoc, Reservation};
use netattach_ipam::range::ip_to_u128;
use netattach_ippool::KubeStore;
use netattach_ippool::admin::{
    Holding, OperatorRelease, PodInfo, PodState, ReservationAfter, ReservationSeen, holdings,
    orphaned_reservations, split_podref,
};
use netattach_ippool::usage::PoolUsage;

use crate::ipam_report;

/// An operator command that cannot be carried out; every variant names what, the value and the
/// fix.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The store could not be opened, read or written.
    #[error(transparent)]
    Ipam(#[from] IpamError),

    /// `--namespace` without `--kubeconfig`.
    #[error(
        "--namespace: value `{namespace}` names the namespace of the cluster's IPPools, but no --kubeconfig \
         was given; fix: add --kubeconfig FILE, or drop --namespace to use the local store"
    )]
    NamespaceWithoutCluster {
        /// The value given.
        namespace: String,
    },

    /// The local store directory does not exist (a listing must not create it).
    #[error(
        "--local-dir: value `{}` is not a directory, so there is no local store there; fix: give the \
         `local_dir` of the IPAM config (default {DEFAULT_LOCAL_DIR}), or --kubeconfig FILE for the \
         cluster's IPPools", dir.display()
    )]
    NoLocalStore {
        /// The directory.
        dir: PathBuf,
    },

    /// No such pool.
    #[error("pool `{pool}`: not found in {location}; fix: use one of the pools there: {known}")]
    PoolNotFound {
        /// The pool asked for.
        pool: String,
        /// Where it was looked for.
        location: String,
        /// The pools that exist (or `none`).
        known: String,
    },

    /// The address is not in the pool's range.
    #[error(
        "address `{ip}`: outside pool `{pool}` ({range}); fix: give an address of {range}, or the pool that \
         holds it (see `netattach ipam ls`)"
    )]
    NotInPool {
        /// The address given.
        ip: IpAddr,
        /// The pool.
        pool: String,
        /// Its range.
        range: String,
    },

    /// Nothing holds the address.
    #[error(
        "address `{ip}`: not allocated in pool `{pool}` ({location}), nothing to release; fix: check the \
         address with `netattach ipam show {pool}`"
    )]
    NotAllocated {
        /// The address given.
        ip: IpAddr,
        /// The pool.
        pool: String,
        /// Where the pool lives.
        location: String,
    },

    /// A live pod holds the address.
    #[error(
        "address `{ip}` of pool `{pool}`: held by live pod `{pod}` (interface `{ifname}`, node `{node}`); \
         refusing to free an address a running pod may still use (handed to another pod it becomes a \
         duplicate); fix: delete the pod first, or pass --force if you know it no longer uses the address"
    )]
    LivePod {
        /// The address.
        ip: IpAddr,
        /// The pool.
        pool: String,
        /// The pod, `namespace/name`.
        pod: String,
        /// The interface.
        ifname: String,
        /// Its node (`-` when unscheduled).
        node: String,
    },

    /// Whether the holder is alive cannot be checked.
    #[error(
        "address `{ip}` of pool `{pool}`: held by {holder}, and whether it is still in use cannot be \
         checked: {reason}; fix: {fix}"
    )]
    Unverifiable {
        /// The address.
        ip: IpAddr,
        /// The pool.
        pool: String,
        /// Who holds it.
        holder: String,
        /// Why it cannot be checked.
        reason: String,
        /// What to do.
        fix: String,
    },

    /// The address changed hands between reading and writing.
    #[error(
        "address `{ip}` of pool `{pool}`: now held by {now} instead of {was} (it changed while releasing), \
         nothing freed; fix: look again with `netattach ipam show {pool}` and release again if still wanted"
    )]
    HolderChanged {
        /// The address.
        ip: IpAddr,
        /// The pool.
        pool: String,
        /// The holder the operator saw.
        was: String,
        /// The holder now.
        now: String,
    },

    /// `--pod` holds nothing.
    #[error(
        "--pod: value `{podref}`{iface} holds no address in {location}; fix: check the pod's allocations \
         with `netattach ipam ls`"
    )]
    NoMatch {
        /// The pod given.
        podref: String,
        /// ` --interface X` when given.
        iface: String,
        /// Where it was looked for.
        location: String,
    },

    /// `--pod` is not `namespace/name`.
    #[error(
        "--pod: value `{value}` is not a pod reference; fix: write it as namespace/name, e.g. default/web-0"
    )]
    BadPodRef {
        /// The value given.
        value: String,
    },
}

/// Which store a command works on.
#[derive(Debug, Clone, Default)]
pub struct StoreSelection {
    /// The cluster: its `IPPool`s (unless `local_dir` is given) and its pods.
    pub kubeconfig: Option<PathBuf>,
    /// The namespace of the `IPPool`s (default: the kubeconfig context's, else `kube-system`).
    pub namespace: Option<String>,
    /// The local file store; the default store when no kubeconfig is given.
    pub local_dir: Option<PathBuf>,
}

/// What `netattach ipam release` frees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseTarget {
    /// One address of one pool.
    Address {
        /// The pool name.
        pool: String,
        /// The address.
        ip: IpAddr,
    },
    /// Every address a pod holds (optionally only on one interface, or in one pool).
    Pod {
        /// `namespace/name`.
        podref: String,
        /// Only this interface.
        ifname: Option<String>,
        /// Only this pool.
        pool: Option<String>,
    },
}

/// An opened store.
enum Backend {
    Cluster(KubeStore),
    Local {
        store: FileStore,
        /// Where pods are looked up, when a kubeconfig was given.
        cluster: Option<KubeStore>,
    },
}

/// The kubeconfig errors of the library name the NAD field; here it is the flag.
fn flag_error(e: IpamError) -> IpamError {
    match e {
        IpamError::Config(mut c) if c.field == "ipam.kubernetes.kubeconfig" => {
            c.field = "--kubeconfig".into();
            IpamError::Config(c)
        }
        other => other,
    }
}

fn open_cluster(kubeconfig: &Path, namespace: Option<&str>) -> Result<KubeStore, AdminError> {
    KubeStore::from_kubeconfig(kubeconfig, namespace).map_err(|e| AdminError::Ipam(flag_error(e)))
}

impl StoreSelection {
    fn open(&self) -> Result<Backend, AdminError> {
        match (&self.kubeconfig, &self.local_dir) {
            (Some(kc), None) => Ok(Backend::Cluster(open_cluster(kc, self.namespace.as_deref())?)),
            (kc, dir) => {
                if let (None, Some(ns)) = (kc, &self.namespace) {
                    return Err(AdminError::NamespaceWithoutCluster {
                        namespace: ns.clone(),
                    });
                }
                let dir = dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_LOCAL_DIR));
                if !dir.is_dir() {
                    return Err(AdminError::NoLocalStore { dir });
                }
                let cluster = match kc {
                    Some(kc) => Some(open_cluster(kc, self.namespace.as_deref())?),
                    None => None,
                };
                Ok(Backend::Local {
                    store: FileStore::new(dir)?,
                    cluster,
                })
            }
        }
    }
}

impl Backend {
    fn location(&self) -> String {
        match self {
            Backend::Cluster(k) => format!("namespace `{}`", k.ipam().namespace()),
            Backend::Local { store, .. } => format!("local store `{}`", store.dir().display()),
        }
    }

    fn namespace(&self) -> &str {
        match self {
            Backend::Cluster(k) => k.ipam().namespace(),
            Backend::Local { .. } => "",
        }
    }

    /// The pools understood, by name, and a description of each one that is not (cluster
    /// objects only: a corrupt local store file fails the whole store).
    fn docs_and_unreadable(&self) -> Result<(BTreeMap<String, PoolDoc>, Vec<String>), AdminError> {
        Ok(match self {
            Backend::Cluster(k) => {
                let (docs, unreadable) = k.block_on(k.ipam().read_pools())?;
                let unreadable = unreadable
                    .into_iter()
                    .map(|u| {
                        format!(
                            "IPPool `{}/{}` is left out: {}",
                            self.namespace(),
                            u.name,
                            u.error
                        )
                    })
                    .collect();
                (docs, unreadable)
            }
            Backend::Local { store, .. } => (store.pools()?, Vec::new()),
        })
    }

    /// The pools understood, by name; each one that is not gets a warning.
    fn docs(&self) -> Result<BTreeMap<String, PoolDoc>, AdminError> {
        let (docs, unreadable) = self.docs_and_unreadable()?;
        for u in unreadable {
            tracing::warn!("{u}");
        }
        Ok(docs)
    }

    fn doc(&self, pool: &str) -> Result<PoolDoc, AdminError> {
        let found = match self {
            Backend::Cluster(k) => k.block_on(k.ipam().read_pool(pool))?,
            Backend::Local { store, .. } => store.pools()?.remove(pool),
        };
        match found {
            Some(d) => Ok(d),
            None => {
                let names: Vec<String> = self.docs()?.into_keys().collect();
                Err(AdminError::PoolNotFound {
                    pool: pool.to_string(),
                    location: self.location(),
                    known: if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    },
                })
            }
        }
    }

    fn reservations(&self) -> Result<BTreeMap<String, ReservationSeen>, AdminError> {
        Ok(match self {
            Backend::Cluster(k) => k.block_on(k.ipam().reservations())?,
            Backend::Local { .. } => BTreeMap::new(),
        })
    }

    fn pod_client(&self) -> Option<&KubeStore> {
        match self {
            Backend::Cluster(k) => Some(k),
            Backend::Local { cluster, .. } => cluster.as_ref(),
        }
    }

    /// The pods of these docs' podrefs, when a cluster is at hand (else none are known).
    fn pods<'a>(
        &self,
        podrefs: impl IntoIterator<Item = &'a str>,
    ) -> Result<BTreeMap<String, PodInfo>, AdminError> {
        match self.pod_client() {
            Some(k) => Ok(k.block_on(k.ipam().pods(podrefs))?),
            None => Ok(BTreeMap::new()),
        }
    }

    fn holdings_of(&self, docs: &BTreeMap<String, PoolDoc>) -> Result<Vec<Holding>, AdminError> {
        self.holdings_with(docs, &self.reservations()?)
    }

    fn holdings_with(
        &self,
        docs: &BTreeMap<String, PoolDoc>,
        reservations: &BTreeMap<String, ReservationSeen>,
    ) -> Result<Vec<Holding>, AdminError> {
        let pods = self.pods(
            docs.values()
                .flat_map(|d| d.allocations.values().map(|r| r.podref.as_str())),
        )?;
        Ok(holdings(docs, reservations, &pods))
    }

    /// One note per reservation that no allocation of `docs` (all the namespace's pools)
    /// accounts for, with its pod's state and what to do about it.
    fn orphan_notes(
        &self,
        docs: &BTreeMap<String, PoolDoc>,
        reservations: &BTreeMap<String, ReservationSeen>,
    ) -> Result<Vec<String>, AdminError> {
        let orphans = orphaned_reservations(docs, reservations);
        if orphans.is_empty() {
            return Ok(Vec::new());
        }
        let pods = self.pods(orphans.iter().map(|(_, seen)| seen.podref.as_str()))?;
        let ns = self.namespace();
        Ok(orphans
            .into_iter()
            .map(|(name, seen)| {
                let state = pods.get(&seen.podref).map_or("unknown", |p| p.state.as_str());
                format!(
                    "OverlappingRangeIPReservation `{ns}/{name}` (pod {} {state}, interface {}) keeps its \
                     address from every overlapping range, but no IPPool allocation accounts for it; the \
                     IPAM garbage collector deletes it once its pod is gone, or delete it by hand: \
                     kubectl -n {ns} delete overlappingrangeipreservation {name}",
                    if seen.podref.is_empty() { "-" } else { &seen.podref },
                    if seen.ifname.is_empty() { "-" } else { &seen.ifname },
                )
            })
            .collect())
    }

    fn release(
        &self,
        pool: &str,
        offset: u128,
        expected: &Reservation,
    ) -> Result<OperatorRelease, AdminError> {
        let out = match self {
            Backend::Cluster(k) => k.block_on(k.ipam().release_offset(pool, offset, expected))?,
            Backend::Local { store, .. } => {
                store
                    .release_offset(pool, offset, expected)?
                    .map(|outcome| OperatorRelease {
                        outcome,
                        reservation: None,
                    })
            }
        };
        // The pool was read a moment ago; deleted since, the address is no longer held.
        Ok(out.unwrap_or(OperatorRelease {
            outcome: OffsetRelease::NotHeld,
            reservation: None,
        }))
    }
}

/// What `netattach ipam ls` found.
#[derive(Debug)]
pub struct Listing {
    /// The table (or JSON) of every held address of the pools that could be read.
    pub report: String,
    /// One line per pool that could not be understood and is missing from the report, saying
    /// what is wrong with it and how to repair it.
    pub unreadable: Vec<String>,
    /// One line per overlapping-range reservation that no allocation accounts for (only when
    /// every pool could be read).
    pub orphaned: Vec<String>,
}

/// `netattach ipam ls`: every held address of the selected store with its pod, node and age.
/// A pool that cannot be understood does not hide the others: it is named in
/// [`Listing::unreadable`]. Reservations without an allocation are named in
/// [`Listing::orphaned`].
pub fn ls(sel: &StoreSelection, as_json: bool) -> Result<Listing, AdminError> {
    let backend = sel.open()?;
    let (docs, unreadable) = backend.docs_and_unreadable()?;
    let reservations = backend.reservations()?;
    let held = backend.holdings_with(&docs, &reservations)?;
    let orphaned = if unreadable.is_empty() {
        backend.orphan_notes(&docs, &reservations)?
    } else {
        Vec::new()
    };
    Ok(Listing {
        report: ipam_report::render_holdings(&held, unix_now(), as_json),
        unreadable,
        orphaned,
    })
}

/// `netattach ipam show POOL`: the pool's range and usage, then its allocations.
pub fn show(sel: &StoreSelection, pool: &str, as_json: bool) -> Result<String, AdminError> {
    let backend = sel.open()?;
    let doc = backend.doc(pool)?;
    let usage = PoolUsage::of_doc(backend.namespace(), pool, &doc, None);
    let docs = BTreeMap::from([(pool.to_string(), doc)]);
    let held = backend.holdings_of(&docs)?;
    Ok(ipam_report::render_pool(
        &usage,
        &backend.location(),
        &held,
        unix_now(),
        as_json,
    ))
}

/// What is known about whether an address's holder still uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderCheck {
    /// The holder's pod, as the API reports it.
    Pod(PodInfo),
    /// The allocation names no pod (only a container id).
    NoPodref,
    /// No cluster to ask (the local store without `--kubeconfig`).
    NoCluster,
}

fn holder_text(r: &Reservation) -> String {
    let pod = if r.podref.is_empty() {
        "no pod".to_string()
    } else {
        format!("pod `{}`", r.podref)
    };
    format!("{pod}, interface `{}`, container `{}`", r.ifname, r.id)
}

/// Whether an address held by `holder` may be freed (the policy in the module doc). `Ok` carries
/// the warning to print when `--force` overrides a refusal.
pub fn may_release(
    pool: &str,
    ip: IpAddr,
    holder: &Reservation,
    check: &HolderCheck,
    force: bool,
) -> Result<Option<String>, AdminError> {
    let refusal = match check {
        HolderCheck::Pod(p) => match p.state {
            PodState::Gone | PodState::Terminating => return Ok(None),
            PodState::Live => AdminError::LivePod {
                ip,
                pool: pool.to_string(),
                pod: holder.podref.clone(),
                ifname: holder.ifname.clone(),
                node: p.node.clone().unwrap_or_else(|| "-".into()),
            },
        },
        HolderCheck::NoPodref => AdminError::Unverifiable {
            ip,
            pool: pool.to_string(),
            holder: holder_text(holder),
            reason: "the allocation names no pod".into(),
            fix: "make sure the container is gone (e.g. `crictl ps -a` on its node), then pass --force"
                .into(),
        },
        HolderCheck::NoCluster => AdminError::Unverifiable {
            ip,
            pool: pool.to_string(),
            holder: holder_text(holder),
            reason: "no --kubeconfig to look the pod up with".into(),
            fix: "pass --kubeconfig FILE so the pod can be checked, or --force if you know it is gone".into(),
        },
    };
    if force {
        Ok(Some(format!(
            "warning: --force: {refusal}; freeing it anyway — until its holder stops using it, another pod \
             may get the same address"
        )))
    } else {
        Err(refusal)
    }
}

fn holder_check(backend: &Backend, holder: &Reservation) -> Result<HolderCheck, AdminError> {
    if holder.podref.is_empty() || split_podref(&holder.podref).is_none() {
        return Ok(HolderCheck::NoPodref);
    }
    if backend.pod_client().is_none() {
        return Ok(HolderCheck::NoCluster);
    }
    let pods = backend.pods([holder.podref.as_str()])?;
    Ok(HolderCheck::Pod(
        pods.get(&holder.podref).cloned().unwrap_or_else(PodInfo::gone),
    ))
}

fn check_text(check: &HolderCheck) -> String {
    match check {
        HolderCheck::Pod(p) => match (&p.state, &p.node) {
            (PodState::Gone, _) => "pod gone".into(),
            (state, Some(node)) => format!("pod {} on node {node}", state.as_str()),
            (state, None) => format!("pod {}", state.as_str()),
        },
        HolderCheck::NoPodref => "no pod to check".into(),
        HolderCheck::NoCluster => "pod not checked".into(),
    }
}

/// Free one held address after the policy allowed it; one report line (plus warnings).
fn release_one(
    backend: &Backend,
    h: &Holding,
    check: &HolderCheck,
    force: bool,
    out: &mut String,
) -> Result<(), AdminError> {
    if let Some(warning) = may_release(&h.pool, h.ip, &h.holder, check, force)? {
        tracing::warn!(pool = %h.pool, ip = %h.ip, "{warning}");
        let _ = writeln!(out, "{warning}");
    }
    let done = backend.release(&h.pool, h.offset, &h.holder)?;
    match done.outcome {
        OffsetRelease::Released(_) => {
            let _ = write!(
                out,
                "released {} from pool `{}` (was {}; {})",
                h.ip,
                h.pool,
                holder_text(&h.holder),
                check_text(check)
            );
            match done.reservation {
                None => {}
                Some(ReservationAfter::Absent { .. }) => {}
                Some(ReservationAfter::Deleted { name }) => {
                    let _ = write!(out, "; OverlappingRangeIPReservation `{name}` deleted");
                }
                Some(ReservationAfter::Kept { name, podref, ifname }) => {
                    let _ = write!(
                        out,
                        "; OverlappingRangeIPReservation `{name}` kept (it names pod `{podref}` interface \
                         `{ifname}`)"
                    );
                }
            }
            out.push('\n');
            Ok(())
        }
        OffsetRelease::NotHeld => {
            let _ = writeln!(
                out,
                "{} in pool `{}` was released meanwhile by someone else: nothing to do",
                h.ip, h.pool
            );
            Ok(())
        }
        OffsetRelease::HeldByOther(now) => Err(AdminError::HolderChanged {
            ip: h.ip,
            pool: h.pool.clone(),
            was: holder_text(&h.holder),
            now: holder_text(&now),
        }),
    }
}

/// `netattach ipam release`: free an address (or a pod's addresses) by hand, under the policy in
/// the module doc. Returns the report to print.
pub fn release(sel: &StoreSelection, target: &ReleaseTarget, force: bool) -> Result<String, AdminError> {
    let backend = sel.open()?;
    let mut out = String::new();
    match target {
        ReleaseTarget::Address { pool, ip } => {
            let doc = backend.doc(pool)?;
            if !doc.range.contains(ip) {
                return Err(AdminError::NotInPool {
                    ip: *ip,
                    pool: pool.clone(),
                    range: doc.range.to_string(),
                });
            }
            let offset = ip_to_u128(*ip) - ip_to_u128(doc.range.network());
            let Some(holder) = doc.allocations.get(&offset).cloned() else {
                return Err(AdminError::NotAllocated {
                    ip: *ip,
                    pool: pool.clone(),
                    location: backend.location(),
                });
            };
            let check = holder_check(&backend, &holder)?;
            let h = Holding {
                pool: pool.clone(),
                ip: *ip,
                offset,
                holder,
                pod: None,
                since: None,
            };
            release_one(&backend, &h, &check, force, &mut out)?;
        }
        ReleaseTarget::Pod { podref, ifname, pool } => {
            if split_podref(podref).is_none() {
                return Err(AdminError::BadPodRef {
                    value: podref.clone(),
                });
            }
            let docs = match pool {
                Some(p) => BTreeMap::from([(p.clone(), backend.doc(p)?)]),
                None => backend.docs()?,
            };
            let mine: Vec<Holding> = holdings(&docs, &BTreeMap::new(), &BTreeMap::new())
                .into_iter()
                .filter(|h| {
                    h.holder.podref == *podref && ifname.as_ref().is_none_or(|i| *i == h.holder.ifname)
                })
                .collect();
            let Some(first) = mine.first() else {
                return Err(AdminError::NoMatch {
                    podref: podref.clone(),
                    iface: ifname
                        .as_ref()
                        .map(|i| format!(" --interface `{i}`"))
                        .unwrap_or_default(),
                    location: match pool {
                        Some(p) => format!("pool `{p}` of {}", backend.location()),
                        None => backend.location(),
                    },
                });
            };
            // One pod: one check for all its addresses, so a refusal comes before anything is
            // freed.
            let check = holder_check(&backend, &first.holder)?;
            for h in &mine {
                release_one(&backend, h, &check, force, &mut out)?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(podref: &str) -> Reservation {
        Reservation {
            id: "c1".into(),
            podref: podref.into(),
            ifname: "net1".into(),
            time: None,
        }
    }

    fn pod(state: PodState) -> HolderCheck {
        HolderCheck::Pod(PodInfo {
            state,
            node: Some("node-1".into()),
            created: None,
        })
    }

    fn ip() -> IpAddr {
        "198.18.0.5".parse().expect("ip")
    }

    #[test]
    fn a_live_pod_is_refused_naming_pod_node_and_force() {
        let err =
            may_release("p", ip(), &holder("ns/web"), &pod(PodState::Live), false).expect_err("refused");
        let msg = err.to_string();
        for want in ["198.18.0.5", "`p`", "ns/web", "node-1", "--force"] {
            assert!(msg.contains(want), "{want} in {msg}");
        }
        let warning = may_release("p", ip(), &holder("ns/web"), &pod(PodState::Live), true)
            .expect("forced")
            .expect("a warning");
        assert!(
            warning.starts_with("warning: --force:") && warning.contains("ns/web"),
            "{warning}"
        );
    }

    #[test]
    fn gone_and_terminating_pods_are_released_without_force() {
        for state in [PodState::Gone, PodState::Terminating] {
            let ok = may_release("p", ip(), &holder("ns/web"), &pod(state), false).expect("allowed");
            assert_eq!(ok, None, "{state:?}");
        }
    }

    #[test]
    fn an_unverifiable_holder_needs_force() {
        for check in [HolderCheck::NoPodref, HolderCheck::NoCluster] {
            let err = may_release("p", ip(), &holder(""), &check, false).expect_err("refused");
            assert!(matches!(err, AdminError::Unverifiable { .. }), "{err:?}");
            assert!(err.to_string().contains("--force"), "{err}");
            assert!(may_release("p", ip(), &holder(""), &check, true).is_ok());
        }
    }

    #[test]
    fn a_missing_local_store_is_an_error_and_not_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let sel = StoreSelection {
            local_dir: Some(missing.clone()),
            ..StoreSelection::default()
        };
        let err = ls(&sel, false).expect_err("no store");
        assert!(err.to_string().contains("--local-dir: value"), "{err}");
        assert!(!missing.exists(), "a listing created the store directory");
    }

    #[test]
    fn namespace_needs_a_kubeconfig() {
        let sel = StoreSelection {
            namespace: Some("kube-system".into()),
            local_dir: Some(std::env::temp_dir()),
            ..StoreSelection::default()
        };
        let err = ls(&sel, false).expect_err("refused");
        assert!(
            err.to_string().contains("--namespace: value `kube-system`"),
            "{err}"
        );
    }

    #[test]
    fn local_store_release_refuses_unverifiable_then_frees_with_force() {
        use netattach_ipam::range::IpRange;
        use netattach_ipam::store::{AllocationRequest, Owner, Store};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path()).expect("store");
        let range = IpRange::parse("198.18.0.0/24", None, None, &[], None).expect("range");
        let got = store
            .allocate(&AllocationRequest::new(
                Owner::new("c1", Some("ns/web".into()), "net1"),
                vec![range],
                None,
            ))
            .expect("allocate");
        let sel = StoreSelection {
            local_dir: Some(dir.path().to_path_buf()),
            ..StoreSelection::default()
        };
        let target = ReleaseTarget::Address {
            pool: got[0].pool.clone(),
            ip: got[0].ip,
        };
        let err = release(&sel, &target, false).expect_err("unverifiable");
        assert!(err.to_string().contains("--kubeconfig"), "{err}");
        assert_eq!(store.allocations().expect("list").len(), 1, "nothing freed");

        let out = release(&sel, &target, true).expect("forced");
        assert!(out.contains("released 198.18.0.1"), "{out}");
        assert!(store.allocations().expect("list").is_empty());

        let err = release(&sel, &target, true).expect_err("now free");
        assert!(matches!(err, AdminError::NotAllocated { .. }), "{err:?}");
        let err = release(
            &sel,
            &ReleaseTarget::Address {
                pool: got[0].pool.clone(),
                ip: "198.19.0.1".parse().expect("ip"),
            },
            true,
        )
        .expect_err("outside");
        assert!(matches!(err, AdminError::NotInPool { .. }), "{err:?}");
        let err = show(&sel, "nope", false).expect_err("no pool");
        assert!(
            err.to_string()
                .contains(&format!("use one of the pools there: {}", got[0].pool)),
            "{err}"
        );
    }
}
