//! The cluster-wide IPAM garbage collector: frees the whereabouts `IPPool` allocations of pods
//! that are gone, wherever their node is (also when it is dead).
//!
//! Every daemon is a candidate in the Lease election of [`crate::lease`] (Lease [`LEASE_NAME`] in
//! the IPAM namespace); only the holder collects. The leader watches the metadata of every pod
//! in the cluster. Once that watch has listed, it reconciles every pool (the startup
//! reconcile: allocations of pods deleted while no daemon ran), then again every
//! [`RECONCILE_INTERVAL`] and after every re-list of the watch (deletions during the gap were
//! not seen); in between it acts on each pod deletion (a batch of the deletions that arrived
//! together).
//!
//! An allocation is freed only on positive evidence that its pod is gone ([`judge`]):
//! * the pod `namespace/name` of its podref does not exist: a quorum GET answers 404 (never a
//!   cache miss or a list that lacks it);
//! * or a pod of that name exists but is a different one (not the UID that was deleted), its
//!   sandbox network is up (condition `PodReadyToStartContainers` is `True`; without that
//!   condition, phase `Running`), it carries a readable, non-empty
//!   `k8s.v1.cni.cncf.io/network-status`, and that does not list the address. A pod that has not
//!   attached yet is looked at again when it changes. The reconcile, which knows no deleted
//!   UID, frees on this evidence only when the previous reconcile saw exactly the same
//!   (allocation, pod UID) too: a sandbox being re-created can briefly show a stale
//!   network-status.
//!
//! Never because an annotation is missing, empty or unreadable (whereabouts #162 and the
//! missing-annotation duplicates), and never an allocation without a podref. Allocations are
//! matched by podref and address (whereabouts #176 / PR #467). The pools are read before the
//! pods (whereabouts #207), and the free itself ([`KubeIpam::free_unchanged`]) is a
//! resourceVersion-checked write that removes a reservation only if it still has the observed
//! container id, podref and interface: an address re-taken since (an ADD rewrites the
//! container id) is never freed. The address's `OverlappingRangeIPReservation` goes too when it
//! names the freed attachment.
//!
//! Each reconcile also deletes the overlapping-range reservations that no pool allocation
//! accounts for and whose pod is gone (the same quorum GET answering 404), each with the uid and
//! resourceVersion it was listed with as preconditions (see [`netattach_ippool::gc`] for where
//! they come from and why listing them before the pools makes "no allocation" a fact). One whose
//! pod exists is kept: freed once the pod is gone.
//!
//! Each reconcile also deletes the pool-turn Leases no live waiter holds ([`turn::sweep`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use netattach_cluster::annotation::NETWORK_STATUS_ANNOTATION;
use netattach_cluster::status::parse_annotation;
use netattach_ipam::error::IpamError;
use netattach_ippool::KubeIpam;
use netattach_ippool::gc::{HeldAddress, OrphanReservation};
use netattach_ippool::turn;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::lease::{self, Elector};

/// The Lease the daemons elect the collector with (in the IPAM namespace).
pub const LEASE_NAME: &str = "netattach-ipam-gc";
/// How often the leader reconciles every pool.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(300);
/// How soon a pass that failed (API unreachable) is tried again.
pub const FAILED_PASS_RETRY: Duration = Duration::from_secs(5);
/// The pod condition that says the sandbox and its network are up.
pub const READY_TO_START_CONDITION: &str = "PodReadyToStartContainers";
/// At most this many deleted pods are remembered while their replacements attach.
const MAX_AWAITING: usize = 4096;
/// Deletions arriving within this time of the first are handled together (one pool read for a
/// scale-down instead of one per pod).
const BATCH_DELAY: Duration = Duration::from_millis(200);

/// What the collector needs to know.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// This node (the Lease identity starts with it).
    pub node: String,
    /// Where the `IPPool` objects and the Lease live.
    pub ipam_namespace: String,
    /// Server-side timeout of the pod watch, seconds.
    pub watch_timeout_secs: u32,
}

/// Why the collector could not finish a pass (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Reading or writing the pools failed.
    #[error("IPAM store: {0}")]
    Store(#[from] IpamError),
    /// Reading pods failed.
    #[error("reading pods: {0}")]
    Pods(#[from] kube::Error),
}

/// Why an allocation is freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FreeReason {
    /// No pod of that name exists (quorum GET: 404).
    PodGone,
    /// A pod of that name is up and its network-status does not list the address.
    NotAttached,
}

impl FreeReason {
    /// The metric label and log value.
    pub fn label(self) -> &'static str {
        match self {
            FreeReason::PodGone => "pod_gone",
            FreeReason::NotAttached => "not_attached",
        }
    }
}

/// Why an allocation is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepReason {
    /// The pod that was deleted exists again with the same UID (a stale event).
    SamePod,
    /// The pod's sandbox network is not up (yet).
    NotUp,
    /// The pod has no network-status annotation.
    NoNetworkStatus,
    /// The network-status annotation cannot be read, or an address in it does not parse.
    UnreadableNetworkStatus,
    /// The network-status annotation lists no network.
    EmptyNetworkStatus,
    /// The network-status lists the address: the pod holds it.
    Listed,
}

/// The decision about one allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Free it.
    Free(FreeReason),
    /// Keep it.
    Keep(KeepReason),
}

fn sandbox_up(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    let condition = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == READY_TO_START_CONDITION);
    match condition {
        Some(c) => c.status == "True",
        None => status.phase.as_deref() == Some("Running"),
    }
}

/// Whether a network-status annotation value lists `ip`; `Err` when it is no evidence either way.
pub fn network_status_lists(ip: IpAddr, annotation: Option<&str>) -> Result<bool, KeepReason> {
    let value = annotation.ok_or(KeepReason::NoNetworkStatus)?;
    let entries = parse_annotation(value).map_err(|_| KeepReason::UnreadableNetworkStatus)?;
    if entries.is_empty() {
        return Err(KeepReason::EmptyNetworkStatus);
    }
    let mut listed = false;
    for text in entries.iter().flat_map(|e| &e.ips) {
        let bare = text.split_once('/').map_or(text.as_str(), |(a, _)| a);
        let parsed: IpAddr = bare
            .trim()
            .parse()
            .map_err(|_| KeepReason::UnreadableNetworkStatus)?;
        listed |= parsed.to_canonical() == ip.to_canonical();
    }
    Ok(listed)
}

fn network_status_of(meta: &kube::api::ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(NETWORK_STATUS_ANNOTATION))
        .map(String::as_str)
}

/// The decision for an allocation of address `ip` whose podref names `pod` as a quorum read
/// returned it (`None`: 404). `deleted_uids` are the UIDs of that name seen deleted (empty in a
/// reconcile, which knows none).
pub fn judge(ip: IpAddr, pod: Option<&Pod>, deleted_uids: &BTreeSet<String>) -> Verdict {
    let Some(pod) = pod else {
        return Verdict::Free(FreeReason::PodGone);
    };
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    if deleted_uids.contains(uid) {
        return Verdict::Keep(KeepReason::SamePod);
    }
    if !sandbox_up(pod) {
        return Verdict::Keep(KeepReason::NotUp);
    }
    match network_status_lists(ip, network_status_of(&pod.metadata)) {
        Ok(true) => Verdict::Keep(KeepReason::Listed),
        Ok(false) => Verdict::Free(FreeReason::NotAttached),
        Err(reason) => Verdict::Keep(reason),
    }
}

/// `namespace/name` of a podref, if it is one.
fn split_podref(podref: &str) -> Option<(&str, &str)> {
    let (ns, name) = podref.split_once('/')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then_some((ns, name))
}

fn podref_of(meta: &kube::api::ObjectMeta) -> Option<String> {
    Some(format!(
        "{}/{}",
        meta.namespace.as_deref()?,
        meta.name.as_deref()?
    ))
}

/// The collector's metrics (rendered into the daemon's `/metrics`).
#[derive(Debug, Default)]
pub struct GcMetrics {
    leader: AtomicBool,
    /// Completed passes: reconciles, deletion batches.
    runs: [AtomicU64; 2],
    /// Freed allocations, by [`FreeReason`].
    freed: [AtomicU64; 2],
    /// Deleted overlapping-range reservations without an allocation.
    orphans_deleted: AtomicU64,
    errors: AtomicU64,
}

fn reason_index(r: FreeReason) -> usize {
    usize::from(r == FreeReason::NotAttached)
}

impl GcMetrics {
    /// Whether this daemon leads the collector.
    pub fn leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// The text exposition of the collector's metrics.
    pub fn render(&self) -> String {
        let p = "netattach_daemon_gc";
        let mut out = String::with_capacity(1024);
        let _ = writeln!(
            out,
            "# HELP {p}_leader 1 while this daemon holds the Lease of the IPAM garbage collector."
        );
        let _ = writeln!(out, "# TYPE {p}_leader gauge");
        let _ = writeln!(out, "{p}_leader {}", u8::from(self.leader()));
        let _ = writeln!(
            out,
            "# HELP {p}_runs_total Completed garbage-collection passes, by trigger."
        );
        let _ = writeln!(out, "# TYPE {p}_runs_total counter");
        for (trigger, n) in ["reconcile", "pod_deleted"].iter().zip(&self.runs) {
            let _ = writeln!(
                out,
                "{p}_runs_total{{trigger=\"{trigger}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {p}_freed_total Allocations freed because their pod is gone, by reason."
        );
        let _ = writeln!(out, "# TYPE {p}_freed_total counter");
        for reason in [FreeReason::PodGone, FreeReason::NotAttached] {
            let _ = writeln!(
                out,
                "{p}_freed_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.freed[reason_index(reason)].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {p}_orphaned_reservations_deleted_total OverlappingRangeIPReservations that no pool \
             allocation accounted for, deleted because their pod is gone."
        );
        let _ = writeln!(out, "# TYPE {p}_orphaned_reservations_deleted_total counter");
        let _ = writeln!(
            out,
            "{p}_orphaned_reservations_deleted_total {}",
            self.orphans_deleted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP {p}_errors_total Garbage-collection passes that failed (retried)."
        );
        let _ = writeln!(out, "# TYPE {p}_errors_total counter");
        let _ = writeln!(out, "{p}_errors_total {}", self.errors.load(Ordering::Relaxed));
        out
    }
}

/// Which pass ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Reconcile,
    PodDeleted,
}

/// The leader's state.
struct Collector {
    ipam: KubeIpam,
    client: Client,
    metrics: Arc<GcMetrics>,
    watch_timeout_secs: u32,
    /// Not-attached evidence one reconcile saw: (allocation, pod UID). Freed when the next
    /// reconcile sees it again.
    suspects: BTreeSet<(HeldAddress, String)>,
    /// Deleted pods (podref -> deleted UIDs) some of whose allocations were kept because a pod
    /// of that name had not attached yet: looked at again when a pod of that name changes.
    awaiting: BTreeMap<String, BTreeSet<String>>,
}

impl Collector {
    async fn get_pod(&self, podref: &str) -> Result<Option<Pod>, kube::Error> {
        let Some((ns, name)) = split_podref(podref) else {
            return Ok(None);
        };
        // No resourceVersion: a quorum read, never a cache's view.
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
    }

    /// Free what the decisions say, each only if unchanged since it was read; log and count.
    async fn free(&self, decided: Vec<(HeldAddress, FreeReason)>) -> Result<(), GcError> {
        if decided.is_empty() {
            return Ok(());
        }
        let reasons: BTreeMap<HeldAddress, FreeReason> = decided.iter().cloned().collect();
        let held: Vec<HeldAddress> = decided.into_iter().map(|(h, _)| h).collect();
        let freed = self.ipam.free_unchanged(&held).await?;
        for h in &freed {
            let reason = reasons.get(h).copied().unwrap_or(FreeReason::PodGone);
            self.metrics.freed[reason_index(reason)].fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                pool = %h.pool,
                ip = %h.ip,
                podref = %h.podref,
                ifname = %h.ifname,
                container = %h.id,
                reason = reason.label(),
                "freed an allocation whose pod is gone"
            );
        }
        for h in held.iter().filter(|h| !freed.contains(h)) {
            tracing::info!(pool = %h.pool, ip = %h.ip, podref = %h.podref,
                "allocation changed since it was read (re-taken or released); kept");
        }
        Ok(())
    }

    /// The allocations of the deleted pods (`podref` -> deleted UIDs).
    async fn collect_deleted(&mut self, deleted: &BTreeMap<String, BTreeSet<String>>) -> Result<(), GcError> {
        // The pools first, then the pods: an allocation made after the pod read cannot be judged
        // by it.
        let held = self.ipam.held_addresses().await?;
        let mut by_pod: BTreeMap<&str, Vec<&HeldAddress>> = BTreeMap::new();
        for h in &held {
            if deleted.contains_key(&h.podref) {
                by_pod.entry(h.podref.as_str()).or_default().push(h);
            }
        }
        let mut decided = Vec::new();
        for podref in deleted.keys() {
            let Some(addrs) = by_pod.get(podref.as_str()) else {
                self.awaiting.remove(podref);
                continue;
            };
            let Some(uids) = deleted.get(podref) else { continue };
            let pod = self.get_pod(podref).await?;
            let mut undecided = false;
            for h in addrs {
                match judge(h.ip, pod.as_ref(), uids) {
                    Verdict::Free(reason) => decided.push(((*h).clone(), reason)),
                    Verdict::Keep(KeepReason::Listed | KeepReason::SamePod) => {}
                    Verdict::Keep(reason) => {
                        undecided = true;
                        tracing::debug!(pool = %h.pool, ip = %h.ip, %podref, ?reason,
                            "a pod of that name exists and has not attached yet; kept for now");
                    }
                }
            }
            if undecided && (self.awaiting.len() < MAX_AWAITING || self.awaiting.contains_key(podref)) {
                self.awaiting.insert(podref.clone(), uids.clone());
            } else {
                self.awaiting.remove(podref);
            }
        }
        self.free(decided).await
    }

    /// Delete the orphaned reservations whose pod is gone (each only if unchanged since it was
    /// listed); log and count.
    async fn delete_orphans(&self, orphans: &[OrphanReservation]) -> Result<(), GcError> {
        let mut pods: BTreeMap<&str, bool> = BTreeMap::new();
        for o in orphans {
            if split_podref(&o.podref).is_none() {
                tracing::debug!(reservation = %o.name, podref = %o.podref,
                    "orphaned overlapping-range reservation without a podref; left alone");
                continue;
            }
            let exists = match pods.get(o.podref.as_str()) {
                Some(exists) => *exists,
                None => {
                    let exists = self.get_pod(&o.podref).await?.is_some();
                    pods.insert(&o.podref, exists);
                    exists
                }
            };
            if exists {
                tracing::info!(reservation = %o.name, podref = %o.podref, ifname = %o.ifname,
                    "overlapping-range reservation without a pool allocation; its pod exists, so it is kept");
                continue;
            }
            if self.ipam.delete_orphan(o).await? {
                self.metrics.orphans_deleted.fetch_add(1, Ordering::Relaxed);
                tracing::info!(reservation = %o.name, podref = %o.podref, ifname = %o.ifname,
                    container = %o.containerid,
                    "deleted an overlapping-range reservation that no pool allocation accounted for; its pod is gone");
            } else {
                tracing::info!(reservation = %o.name, podref = %o.podref,
                    "orphaned overlapping-range reservation changed since it was read (adopted or deleted); kept");
            }
        }
        Ok(())
    }

    /// Every pool against the pods of the cluster; then the reservations without a pool
    /// allocation.
    async fn reconcile(&mut self) -> Result<(), GcError> {
        let snapshot = self.ipam.reservation_snapshot().await?;
        let held = snapshot.held;
        let mut by_pod: BTreeMap<&str, Vec<&HeldAddress>> = BTreeMap::new();
        for h in &held {
            if split_podref(&h.podref).is_some() {
                by_pod.entry(h.podref.as_str()).or_default().push(h);
            } else if !h.podref.is_empty() {
                tracing::debug!(pool = %h.pool, ip = %h.ip, podref = %h.podref, "podref is not namespace/name; left alone");
            }
        }
        // One metadata list per namespace that has allocations, to find the candidates; each is
        // then read whole with a quorum GET.
        let namespaces: BTreeSet<&str> = by_pod
            .keys()
            .filter_map(|p| split_podref(p))
            .map(|(ns, _)| ns)
            .collect();
        let mut present: BTreeMap<String, PartialObjectMeta<Pod>> = BTreeMap::new();
        for ns in namespaces {
            let api: Api<PartialObjectMeta<Pod>> = Api::namespaced(self.client.clone(), ns);
            for pod in api.list(&ListParams::default()).await?.items {
                if let Some(podref) = podref_of(&pod.metadata) {
                    present.insert(podref, pod);
                }
            }
        }
        let mut decided = Vec::new();
        let mut suspects = BTreeSet::new();
        for (podref, addrs) in &by_pod {
            let candidate = match present.get(*podref) {
                None => true,
                Some(meta) => addrs.iter().any(|h| {
                    matches!(
                        network_status_lists(h.ip, network_status_of(&meta.metadata)),
                        Ok(false)
                    )
                }),
            };
            if !candidate {
                continue;
            }
            let pod = self.get_pod(podref).await?;
            let uid = pod
                .as_ref()
                .and_then(|p| p.metadata.uid.clone())
                .unwrap_or_default();
            // A deletion of this name was seen: the same evidence as on the event.
            let deleted = self
                .awaiting
                .get(*podref)
                .filter(|uids| !uids.contains(&uid))
                .cloned();
            for h in addrs {
                match judge(h.ip, pod.as_ref(), deleted.as_ref().unwrap_or(&BTreeSet::new())) {
                    Verdict::Free(FreeReason::NotAttached) if deleted.is_none() => {
                        let key = ((*h).clone(), uid.clone());
                        if self.suspects.contains(&key) {
                            decided.push(((*h).clone(), FreeReason::NotAttached));
                        } else {
                            tracing::info!(pool = %h.pool, ip = %h.ip, %podref, pod_uid = %uid,
                                "the pod is up and its network-status does not list the address; freed if the next reconcile sees the same");
                            suspects.insert(key);
                        }
                    }
                    Verdict::Free(reason) => decided.push(((*h).clone(), reason)),
                    Verdict::Keep(_) => {}
                }
            }
        }
        self.suspects = suspects;
        self.awaiting
            .retain(|podref, _| by_pod.contains_key(podref.as_str()));
        self.free(decided).await?;
        self.delete_orphans(&snapshot.orphans).await?;
        // Turn Leases of daemons that died waiting or of removed nodes (best effort: they
        // cost only watch memory, and the next reconcile tries again).
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), self.ipam.namespace());
        match turn::sweep(&leases).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "deleted stale pool-turn Leases"),
            Err(e) => tracing::warn!(error = %e, "could not list the pool-turn Leases to sweep them"),
        }
        Ok(())
    }

    fn count(&self, trigger: Trigger, result: &Result<(), GcError>) {
        match result {
            Ok(()) => {
                let i = usize::from(trigger == Trigger::PodDeleted);
                self.metrics.runs[i].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?trigger, error = %e, "garbage collection failed; retrying in {FAILED_PASS_RETRY:?}");
            }
        }
    }

    /// The leader's work, until the future is dropped (leadership lost or shutdown).
    async fn lead(&mut self) {
        let pods: Api<PartialObjectMeta<Pod>> = Api::all(self.client.clone());
        let config = watcher::Config::default().timeout(self.watch_timeout_secs);
        let stream = watcher(pods, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut listed = false;
        let mut reconcile_at: Option<Instant> = None;
        let mut pending: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut pending_at = Instant::now();
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(Event::Delete(pod))) => {
                        if let (Some(podref), Some(uid)) = (podref_of(&pod.metadata), pod.metadata.uid.clone()) {
                            if pending.is_empty() {
                                pending_at = Instant::now() + BATCH_DELAY;
                            }
                            pending.entry(podref).or_default().insert(uid);
                        }
                    }
                    Some(Ok(Event::Apply(pod) | Event::InitApply(pod))) => {
                        let Some(podref) = podref_of(&pod.metadata) else { continue };
                        let uid = pod.metadata.uid.unwrap_or_default();
                        if let Some(uids) = self.awaiting.get(&podref).filter(|u| !u.contains(&uid)) {
                            if pending.is_empty() {
                                pending_at = Instant::now() + BATCH_DELAY;
                            }
                            pending.entry(podref).or_default().extend(uids.iter().cloned());
                        }
                    }
                    Some(Ok(Event::Init)) => {}
                    Some(Ok(Event::InitDone)) => {
                        if !listed {
                            tracing::info!("watching every pod; reconciling every pool");
                        }
                        listed = true;
                        reconcile_at = Some(Instant::now());
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying with backoff"),
                    None => return,
                },
                () = tokio::time::sleep_until(reconcile_at.unwrap_or_else(Instant::now)), if reconcile_at.is_some() => {
                    let result = self.reconcile().await;
                    self.count(Trigger::Reconcile, &result);
                    let next = if result.is_ok() { RECONCILE_INTERVAL } else { FAILED_PASS_RETRY };
                    reconcile_at = Some(Instant::now() + next);
                }
                () = tokio::time::sleep_until(pending_at), if !pending.is_empty() => {
                    let batch = std::mem::take(&mut pending);
                    let result = self.collect_deleted(&batch).await;
                    self.count(Trigger::PodDeleted, &result);
                    if result.is_err() {
                        // Keep them (with whatever arrived meanwhile) for the retry.
                        for (podref, uids) in batch {
                            pending.entry(podref).or_default().extend(uids);
                        }
                        pending_at = Instant::now() + FAILED_PASS_RETRY;
                    }
                }
            }
        }
    }
}

/// The running collector: its election and its work.
#[derive(Debug)]
pub struct Gc {
    metrics: Arc<GcMetrics>,
    shutdown: watch::Sender<bool>,
    election: JoinHandle<()>,
    work: JoinHandle<()>,
}

/// Starts the election and the collector on the current runtime.
pub fn start(client: Client, opts: GcOptions) -> Gc {
    let metrics = Arc::new(GcMetrics::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (leading_tx, leading) = watch::channel(false);
    let identity = lease::identity(&opts.node);
    tracing::info!(lease = %format!("{}/{LEASE_NAME}", opts.ipam_namespace), %identity,
        "IPAM garbage collector: candidate for the lease");
    let elector = Elector::new(client.clone(), &opts.ipam_namespace, LEASE_NAME, identity);
    let election = tokio::spawn(lease::run(elector, leading_tx, shutdown_rx));
    let collector = Collector {
        ipam: KubeIpam::new(client.clone(), opts.ipam_namespace.clone()),
        client,
        metrics: metrics.clone(),
        watch_timeout_secs: opts.watch_timeout_secs,
        suspects: BTreeSet::new(),
        awaiting: BTreeMap::new(),
    };
    let work = tokio::spawn(follow(collector, leading));
    Gc {
        metrics,
        shutdown,
        election,
        work,
    }
}

/// Collects while this daemon leads.
async fn follow(mut collector: Collector, mut leading: watch::Receiver<bool>) {
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        collector.metrics.leader.store(true, Ordering::Relaxed);
        tokio::select! {
            () = collector.lead() => {}
            _ = leading.wait_for(|l| !*l) => {}
        }
        collector.metrics.leader.store(false, Ordering::Relaxed);
    }
}

impl Gc {
    /// The collector's metrics.
    pub fn metrics(&self) -> Arc<GcMetrics> {
        self.metrics.clone()
    }

    /// Stops collecting and releases the Lease if this daemon holds it (bounded in time).
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        let bound = lease::ATTEMPT_TIMEOUT + Duration::from_secs(1);
        if tokio::time::timeout(bound, self.election).await.is_err() {
            tracing::warn!("the lease election did not stop in time");
        }
        self.work.abort();
        self.metrics.leader.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const IP: &str = "10.77.0.5";

    fn ip() -> IpAddr {
        IP.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    fn pod(uid: &str, status: Option<&str>, phase: &str, ready_to_start: Option<&str>) -> Pod {
        let mut annotations = serde_json::Map::new();
        if let Some(s) = status {
            annotations.insert(NETWORK_STATUS_ANNOTATION.into(), json!(s));
        }
        let conditions: Vec<serde_json::Value> = ready_to_start
            .map(|s| json!({"type": READY_TO_START_CONDITION, "status": s}))
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": uid, "annotations": annotations},
            "status": {"phase": phase, "conditions": conditions}
        }))
        .unwrap_or_default()
    }

    fn status_listing(ips: &[&str]) -> String {
        json!([{"name": "cbr0", "interface": "eth0", "ips": ["10.42.0.3"], "default": true},
               {"name": "ns/storage", "interface": "net1", "ips": ips}])
        .to_string()
    }

    fn deleted(uids: &[&str]) -> BTreeSet<String> {
        uids.iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn a_missing_pod_is_gone() {
        assert_eq!(
            judge(ip(), None, &deleted(&["u1"])),
            Verdict::Free(FreeReason::PodGone)
        );
        assert_eq!(
            judge(ip(), None, &deleted(&[])),
            Verdict::Free(FreeReason::PodGone)
        );
    }

    #[test]
    fn a_replacement_that_is_up_and_does_not_list_the_address_frees_it() {
        let other = status_listing(&["10.77.0.9"]);
        let p = pod("u2", Some(&other), "Running", Some("True"));
        assert_eq!(
            judge(ip(), Some(&p), &deleted(&["u1"])),
            Verdict::Free(FreeReason::NotAttached)
        );
        // Without the condition (older kubelets), phase Running is the evidence.
        let p = pod("u2", Some(&other), "Running", None);
        assert_eq!(
            judge(ip(), Some(&p), &deleted(&["u1"])),
            Verdict::Free(FreeReason::NotAttached)
        );
    }

    #[test]
    fn no_evidence_keeps_the_address() {
        let listed = status_listing(&[IP]);
        let other = status_listing(&["10.77.0.9"]);
        let cases = [
            (
                pod("u2", Some(&listed), "Running", Some("True")),
                KeepReason::Listed,
            ),
            (
                pod("u2", None, "Running", Some("True")),
                KeepReason::NoNetworkStatus,
            ),
            (
                pod("u2", Some(""), "Running", Some("True")),
                KeepReason::UnreadableNetworkStatus,
            ),
            (
                pod("u2", Some("{not json"), "Running", Some("True")),
                KeepReason::UnreadableNetworkStatus,
            ),
            (
                pod("u2", Some("[]"), "Running", Some("True")),
                KeepReason::EmptyNetworkStatus,
            ),
            (
                pod("u2", Some(&status_listing(&["bogus"])), "Running", Some("True")),
                KeepReason::UnreadableNetworkStatus,
            ),
            // Not up: the condition wins over the phase, and Pending is never up.
            (
                pod("u2", Some(&other), "Running", Some("False")),
                KeepReason::NotUp,
            ),
            (pod("u2", Some(&other), "Pending", None), KeepReason::NotUp),
            // The deleted pod itself.
            (
                pod("u1", Some(&other), "Running", Some("True")),
                KeepReason::SamePod,
            ),
        ];
        for (p, want) in cases {
            assert_eq!(
                judge(ip(), Some(&p), &deleted(&["u1"])),
                Verdict::Keep(want),
                "{:?}",
                p.metadata.annotations
            );
        }
    }

    #[test]
    fn addresses_compare_as_addresses() {
        let v6: IpAddr = "fd00::5".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let s = status_listing(&["fd00:0:0::5", "10.77.0.5/24"]);
        assert_eq!(network_status_lists(v6, Some(&s)), Ok(true));
        assert_eq!(network_status_lists(ip(), Some(&s)), Ok(true));
        let mapped = status_listing(&["::ffff:10.77.0.5"]);
        assert_eq!(network_status_lists(ip(), Some(&mapped)), Ok(true));
    }

    #[test]
    fn podrefs_are_namespace_slash_name() {
        assert_eq!(split_podref("ns/p"), Some(("ns", "p")));
        for bad in ["", "p", "/p", "ns/", "a/b/c"] {
            assert_eq!(split_podref(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_metrics_name_every_series() {
        let m = GcMetrics::default();
        m.freed[reason_index(FreeReason::NotAttached)].fetch_add(2, Ordering::Relaxed);
        let text = m.render();
        for needle in [
            "netattach_daemon_gc_leader 0",
            "netattach_daemon_gc_runs_total{trigger=\"reconcile\"} 0",
            "netattach_daemon_gc_runs_total{trigger=\"pod_deleted\"} 0",
            "netattach_daemon_gc_freed_total{reason=\"pod_gone\"} 0",
            "netattach_daemon_gc_freed_total{reason=\"not_attached\"} 2",
            "netattach_daemon_gc_errors_total 0",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in\n{text}");
        }
    }
}
