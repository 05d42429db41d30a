//! The Kubernetes store: whereabouts `IPPool` objects read and written unchanged, with the
//! allocator of [`netattach_ipam::pool`] running on the document in between.
//!
//! Protocol (no global lease; safety rests on the apiserver's optimistic concurrency alone):
//! * Read the pool (`GET`). Absent: build it in memory and `create` it with the allocation
//!   already inside (`AlreadyExists` means another writer created it first: read again).
//! * Run the pure transaction (`allocate_in`, `release_in`, `gc_in`) on the document.
//! * Write it back as a JSON merge patch carrying the resourceVersion that was read. A 409 means
//!   someone wrote in between: read again and redo the transaction, after a jittered exponential
//!   backoff, within a bounded total time ([`RetryPolicy`], 10 s by default); then give up with
//!   a retryable error (CNI code 11). A write can therefore never remove or change an allocation
//!   this store did not read.
//! * Allocation runs the batch protocol of [`crate::batch`] with a batch of one, so a plugin
//!   without a daemon and the daemon's engine write pools the same way.
//! * Multi-range (dual-stack) requests are all or nothing: the pools are separate objects, so
//!   each range is committed in turn and, when a later range fails, the addresses the earlier
//!   ranges newly handed out are removed again (an address the attachment already held before
//!   this ADD is kept).
//! * `enable_overlapping_ranges`: an address is also claimed by an `OverlappingRangeIPReservation`
//!   named whereabouts' `NormalizeIP(ip, network_name)`, created with a plain `create` after the
//!   pool write and before the answer (whereabouts' order). `AlreadyExists` held by another
//!   attachment means the address is taken in an overlapping range: it comes out of the pool
//!   again and the request gets another one (a static request fails naming the holder). On
//!   release, a reservation is deleted only when it names the released attachment, with uid and
//!   resourceVersion preconditions: those of this store's own create when it made it (no read;
//!   the daemon's case), else those of a read. The node daemon's engine creates the reservation
//!   *first* for most allocations and writes the pool entry after ([`crate::batch`],
//!   [`crate::claim`]): deleting one of those also removes its finalizer, and a release that
//!   finds no pool entry looks for such a reservation by its attachment label.
//!
//! Objects live in the namespace of the kubeconfig's current context, `kube-system` when that
//! names none (as whereabouts). [`KubeIpam`] is the async API (the node daemon's); [`KubeStore`]
//! wraps it in a private current-thread runtime and implements the sync [`Store`] trait for the
//! short-lived plugin binary.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{GetParams, ListParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{ObjectRef, Store as WatchStore};
use kube::{Api, Client, Config, ResourceExt};
use netattach_ipam::config::IpamConfig;
use netattach_ipam::error::{ConfigError, IpamError};
use netattach_ipam::local::unix_now;
use netattach_ipam::pool::{self, PoolDoc, Reservation};
use netattach_ipam::range::pool_name;
use netattach_ipam::store::{Allocation, AllocationRequest, GcRequest, Owner, Store};
use tokio::time::Instant;

use crate::crd::{
    IPPool, IPPoolSpec, OverlappingRangeIPReservation, OverlappingRangeIPReservationSpec, doc_from_pool,
    orip_name, spec_from_doc,
};
use crate::retry::RetryPolicy;
use crate::turn::Turns;

/// The namespace used when the kubeconfig's context names none (whereabouts' default).
pub const DEFAULT_NAMESPACE: &str = "kube-system";

/// How often [`KubeIpam::wait_watched_newer`] looks at the watch cache.
const WATCH_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// A hook run before every pool write, with the pool name and the attempt number (tests use it
/// to race a writer deterministically).
pub type WriteHook = Arc<dyn Fn(&str, u32) + Send + Sync>;

/// Counters of one store (cumulative; for metrics and tests).
#[derive(Debug, Default)]
pub struct Stats {
    /// Successful pool writes (create or replace).
    pub writes: AtomicU64,
    /// Writes refused because the pool changed since it was read (409).
    pub conflicts: AtomicU64,
    /// Transient API failures that were retried.
    pub transient: AtomicU64,
    /// Candidate addresses skipped because another attachment held their overlapping-range
    /// reservation.
    pub orip_taken: AtomicU64,
    /// Pool reads from the API server (GET; a copy from the watch is not one).
    pub reads: AtomicU64,
    /// Batches recomputed on a newer pool the watch delivered, instead of a write that would
    /// have lost (409) or a read after one that did.
    pub rebases: AtomicU64,
    /// Overlapping-range reservation reads (GET): to see who holds one that exists, or before
    /// deleting one this store did not create (or that changed since).
    pub orip_reads: AtomicU64,
    /// Entries of other nodes' batches (allocations added, releases removed) this store wrote
    /// with its own (in its turn, from what they posted on their turn Leases).
    pub carried: AtomicU64,
    /// Batches of this store that another node's write carried (no write of its own).
    pub carried_in: AtomicU64,
    /// Claims of a pool's writer Lease that another node made first (each saved a write that
    /// would have lost).
    pub claims_lost: AtomicU64,
}

/// A copy of [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// See [`Stats::writes`].
    pub writes: u64,
    /// See [`Stats::conflicts`].
    pub conflicts: u64,
    /// See [`Stats::transient`].
    pub transient: u64,
    /// See [`Stats::orip_taken`].
    pub orip_taken: u64,
    /// See [`Stats::reads`].
    pub reads: u64,
    /// See [`Stats::rebases`].
    pub rebases: u64,
    /// See [`Stats::orip_reads`].
    pub orip_reads: u64,
    /// See [`Stats::carried`].
    pub carried: u64,
    /// See [`Stats::carried_in`].
    pub carried_in: u64,
    /// See [`Stats::claims_lost`].
    pub claims_lost: u64,
}

impl Stats {
    fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            writes: self.writes.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            transient: self.transient.load(Ordering::Relaxed),
            orip_taken: self.orip_taken.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            rebases: self.rebases.load(Ordering::Relaxed),
            orip_reads: self.orip_reads.load(Ordering::Relaxed),
            carried: self.carried.load(Ordering::Relaxed),
            carried_in: self.carried_in.load(Ordering::Relaxed),
            claims_lost: self.claims_lost.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The async Kubernetes IPAM store (whereabouts `IPPool` objects in one namespace).
#[derive(Clone)]
pub struct KubeIpam {
    pub(crate) client: Client,
    namespace: String,
    pub(crate) retry: RetryPolicy,
    pub(crate) stats: Arc<Stats>,
    hook: Option<WriteHook>,
    /// A watch cache of the IPPools (the node daemon's), to learn of other nodes' writes
    /// without reading.
    view: Option<WatchStore<IPPool>>,
    /// The nodes' turns at contended pools (the node daemon's).
    turns: Option<Turns>,
    /// The overlapping-range reservations this store created or adopted, by name, exactly as
    /// the API server answered the write: releasing one deletes it with that uid and
    /// resourceVersion as preconditions instead of reading it first.
    claimed: Arc<Mutex<HashMap<String, ClaimedOrip>>>,
}

/// An overlapping-range reservation as this store last wrote it.
#[derive(Debug, Clone)]
struct ClaimedOrip {
    uid: Option<String>,
    resource_version: Option<String>,
    spec: OverlappingRangeIPReservationSpec,
}

/// At most this many reservations are remembered (a long-lived daemon whose reservations are
/// deleted elsewhere, by the GC leader, would otherwise grow the map forever); past it the map
/// starts over, and releases of the forgotten ones read before they delete, as without it.
const CLAIMED_MAX: usize = 8192;

/// Whether the reservation `s` is the one of attachment `(id, podref, ifname)`: the same pod
/// and interface (not also the same container: a pod re-added by a peer that does not adopt
/// reservations, upstream whereabouts, leaves the old container's id in it, and its release
/// must still free it), or without a podref the same container and interface.
pub(crate) fn names_attachment(
    s: &OverlappingRangeIPReservationSpec,
    id: &str,
    podref: &str,
    ifname: &str,
) -> bool {
    (!podref.is_empty() && s.podref == podref && (s.ifname.is_empty() || s.ifname == ifname))
        || (podref.is_empty() && !id.is_empty() && s.containerid == id && s.ifname == ifname)
}

impl fmt::Debug for KubeIpam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeIpam")
            .field("namespace", &self.namespace)
            .field("retry", &self.retry)
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

/// How a Kubernetes API error is handled.
pub(crate) enum ApiFailure {
    /// 409: the object changed (Conflict) or was created meanwhile (AlreadyExists).
    Conflict,
    /// Worth retrying: 429, 5xx, connection failures.
    Transient(IpamError),
    /// Retrying cannot help.
    Fatal(IpamError),
}

pub(crate) fn classify(err: kube::Error, what: &str, namespace: &str) -> ApiFailure {
    match &err {
        kube::Error::Api(s) if s.code == 409 => ApiFailure::Conflict,
        kube::Error::Api(s) if s.code == 401 => ApiFailure::Fatal(IpamError::NotAvailable {
            what: format!(
                "{what} (namespace `{namespace}`): the API server does not accept the kubeconfig's credentials: {}",
                s.message
            ),
            fix: "the token or certificate in `kubernetes.kubeconfig` has expired or was revoked: write a \
                  kubeconfig with valid credentials there (with the node daemon running, ADD and DEL go \
                  through it and do not use this kubeconfig)"
                .into(),
        }),
        // The NamespaceLifecycle admission refuses creations in a namespace being deleted with a
        // 403 too: no role can fix that.
        kube::Error::Api(s) if s.code == 403 && s.message.contains("being terminated") => {
            ApiFailure::Fatal(IpamError::NotAvailable {
                what: format!("{what}: the IPAM namespace `{namespace}` is being deleted: {}", s.message),
                fix: "wait until it is gone and create it again, or keep the IPAM objects in another namespace (the \
                      kubeconfig context's namespace; the daemon's --ipam-namespace)"
                    .into(),
            })
        }
        kube::Error::Api(s) if s.code == 403 => ApiFailure::Fatal(IpamError::NotAvailable {
            what: format!("{what} (namespace `{namespace}`): the API server refused it: {}", s.message),
            fix: "give the kubeconfig's identity get/list/create/update on whereabouts.cni.cncf.io ippools and \
                  get/create/delete on overlappingrangeipreservations in that namespace (the netattach-node or \
                  whereabouts ClusterRole), or point `kubernetes.kubeconfig` at a kubeconfig that has them"
                .into(),
        }),
        kube::Error::Api(s) if s.code == 404 => ApiFailure::Fatal(IpamError::NotAvailable {
            what: format!("{what} (namespace `{namespace}`): {}", s.message),
            fix: "create the namespace and install the whereabouts CRDs (deploy/crds/), or set the namespace of \
                  the kubeconfig's current context"
                .into(),
        }),
        kube::Error::Api(s) if s.code == 429 || s.code >= 500 => ApiFailure::Transient(unavailable(what, &err)),
        kube::Error::Api(_) => ApiFailure::Fatal(unavailable(what, &err)),
        kube::Error::HyperError(_) | kube::Error::Service(_) => ApiFailure::Transient(unavailable(what, &err)),
        _ => ApiFailure::Fatal(unavailable(what, &err)),
    }
}

fn unavailable(what: &str, err: &kube::Error) -> IpamError {
    IpamError::NotAvailable {
        what: format!("{what}: {err}"),
        fix: "check that the API server named in `kubernetes.kubeconfig` is reachable and healthy; the runtime \
              retries the operation"
            .into(),
    }
}

pub(crate) fn gave_up(what: &str, conflicts: u32, budget: std::time::Duration) -> IpamError {
    IpamError::NotAvailable {
        what: format!(
            "{what}: a write that does not conflict with other writers ({conflicts} attempts in {} s lost)",
            budget.as_secs_f32()
        ),
        fix:
            "retry (the runtime does); if this persists, too many writers share one pool: split the range or \
              run the node daemon, which batches a node's requests"
                .into(),
    }
}

fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// `base` carrying `spec`, for a replace (PUT) the API server only accepts while `base`'s
/// resourceVersion is current. `None` when `base` has no resourceVersion (the write would be
/// unconditional).
///
/// A replace rather than a patch: the API server compares the resourceVersion right after
/// decoding the request, before validating it or tracking its fields, so a lost race costs it
/// little, and a won one skips applying a patch to the whole pool (for a pool of a thousand
/// allocations, a merge patch's read-modify-encode was a quarter of the API server's CPU under
/// contention). Nothing is lost by sending the whole object: the CRD's structural schema prunes
/// every field IPPoolSpec does not have. `managedFields` is left out: the API server keeps the
/// stored ones when a request carries none.
pub fn replacement(base: &IPPool, spec: IPPoolSpec) -> Option<IPPool> {
    base.metadata
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty())?;
    let mut obj = base.clone();
    obj.spec = spec;
    obj.metadata.managed_fields = None;
    Some(obj)
}

/// An `IPPool` object this program cannot understand: its range, or an allocation's offset,
/// does not parse (a hand edit, another tool's bug).
#[derive(Debug)]
pub struct UnreadablePool {
    /// The object's name.
    pub name: String,
    /// What is wrong with it (names the object and the field).
    pub error: IpamError,
}

/// The pools of a namespace as one LIST returned them.
#[derive(Debug, Default)]
pub struct ListedPools {
    /// The pools understood, each with its document.
    pub pools: Vec<(IPPool, PoolDoc)>,
    /// The pools that are not.
    pub unreadable: Vec<UnreadablePool>,
}

impl ListedPools {
    /// The pools understood; each one that is not gets a warning saying what it is left out of
    /// and how to repair it.
    pub fn readable(self, namespace: &str, left_out_of: &str) -> Vec<(IPPool, PoolDoc)> {
        for u in &self.unreadable {
            tracing::warn!(
                pool = %format!("{namespace}/{}", u.name),
                error = %u.error,
                "IPPool left out of {left_out_of}: it cannot be understood; fix: repair or delete the object \
                 (`netattach ipam ls` lists every such pool)"
            );
        }
        self.pools
    }
}

/// The namespace whereabouts keeps its objects in: the current context's, else `kube-system`.
fn context_namespace(kc: &Kubeconfig) -> String {
    kc.current_context
        .as_deref()
        .and_then(|cur| kc.contexts.iter().find(|c| c.name == cur))
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.namespace.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

/// The IPPool namespace an IPAM configuration means: its kubeconfig's context namespace, else
/// `kube-system` (also without a kubeconfig: the node daemon brings its own credentials).
///
/// # Errors
///
/// When the kubeconfig is named but cannot be read.
pub fn pool_namespace(cfg: &IpamConfig) -> Result<String, IpamError> {
    let Some(path) = &cfg.kubeconfig else {
        return Ok(DEFAULT_NAMESPACE.to_string());
    };
    let kc = Kubeconfig::read_from(path).map_err(|e| {
        IpamError::from(ConfigError::invalid(
            "ipam.kubernetes.kubeconfig",
            Some(path.display().to_string()),
            format!("cannot be read as a kubeconfig: {e}"),
            "point it at a valid kubeconfig (whereabouts' install writes whereabouts.d/whereabouts.kubeconfig)",
        ))
    })?;
    Ok(context_namespace(&kc))
}

/// Load a kubeconfig file: the client config and the namespace whereabouts would use (the
/// current context's, else `kube-system`).
pub async fn load_kubeconfig(path: &Path) -> Result<(Config, String), IpamError> {
    const FIELD: &str = "ipam.kubernetes.kubeconfig";
    if let Err(e) = std::fs::metadata(path) {
        return Err(ConfigError::io(FIELD, path, e).into());
    }
    let bad = |problem: String| -> IpamError {
        ConfigError::invalid(
            FIELD,
            Some(path.display().to_string()),
            problem,
            "point it at a valid kubeconfig (whereabouts' install writes whereabouts.d/whereabouts.kubeconfig)",
        )
        .into()
    };
    let kc = Kubeconfig::read_from(path).map_err(|e| bad(format!("cannot be read as a kubeconfig: {e}")))?;
    let namespace = context_namespace(&kc);
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(format!("is not usable: {e}")))?;
    Ok((config, namespace))
}

/// Validate a request as a whole (requested addresses map to ranges, at most one per range,
/// none reserved) with the pure allocator on empty documents — the same errors as every other
/// store, before anything is written — and split it into one single-range request per range.
/// A requested address belongs to the first range containing it (as in `allocate_in`).
pub(crate) fn per_range(req: &AllocationRequest) -> Result<Vec<AllocationRequest>, IpamError> {
    let mut dry = req.clone();
    dry.overlapping_ranges = false;
    pool::allocate_in(&mut BTreeMap::new(), &dry, 0)?;
    Ok(req
        .ranges
        .iter()
        .enumerate()
        .map(|(i, range)| {
            let mut sub = req.clone();
            sub.ranges = vec![range.clone()];
            sub.requested = req
                .requested
                .iter()
                .copied()
                .filter(|ip| req.ranges.iter().position(|r| r.contains(*ip)) == Some(i))
                .collect();
            sub
        })
        .collect())
}

/// The state of one range's allocation while it is being retried.
#[derive(Debug, Clone)]
pub(crate) struct RangeOutcome {
    pub(crate) alloc: Allocation,
    /// The attachment did not hold this address before (roll it back if a later range fails).
    pub(crate) new: bool,
    /// Offset in the pool.
    pub(crate) offset: u128,
    /// The reservation written (to remove exactly it on rollback).
    pub(crate) reservation: Reservation,
    /// The overlapping-range reservation this call created, if any.
    pub(crate) orip_created: bool,
}

/// Result of claiming an overlapping-range reservation.
pub(crate) enum OripClaim {
    /// We hold it; `true` when this call created it.
    Mine(bool),
    /// Someone else does.
    Taken(OverlappingRangeIPReservationSpec),
}

impl KubeIpam {
    /// A store over an existing client, keeping its objects in `namespace`.
    pub fn new(client: Client, namespace: impl Into<String>) -> KubeIpam {
        KubeIpam {
            client,
            namespace: namespace.into(),
            retry: RetryPolicy::default(),
            stats: Arc::new(Stats::default()),
            hook: None,
            view: None,
            turns: None,
            claimed: Arc::default(),
        }
    }

    pub(crate) fn remember_claim(&self, orip: &OverlappingRangeIPReservation) {
        let Some(name) = orip.metadata.name.clone() else {
            return;
        };
        let mut claimed = self.claimed.lock().unwrap_or_else(PoisonError::into_inner);
        if claimed.len() >= CLAIMED_MAX && !claimed.contains_key(&name) {
            claimed.clear();
        }
        claimed.insert(
            name,
            ClaimedOrip {
                uid: orip.metadata.uid.clone(),
                resource_version: orip.metadata.resource_version.clone(),
                spec: orip.spec.clone(),
            },
        );
    }

    fn forget_claim(&self, name: &str) -> Option<ClaimedOrip> {
        self.claimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
    }

    /// A store from a kubeconfig file, in `namespace` or else the namespace of its current
    /// context, else `kube-system` (as whereabouts).
    pub async fn from_kubeconfig(path: &Path, namespace: Option<&str>) -> Result<KubeIpam, IpamError> {
        let (config, context_ns) = load_kubeconfig(path).await?;
        let client = Client::try_from(config).map_err(|e| {
            IpamError::from(ConfigError::invalid(
                "ipam.kubernetes.kubeconfig",
                Some(path.display().to_string()),
                format!("gives no usable client: {e}"),
                "fix the kubeconfig's server and credentials",
            ))
        })?;
        Ok(KubeIpam::new(
            client,
            namespace.map_or(context_ns, str::to_string),
        ))
    }

    /// Replace the retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> KubeIpam {
        self.retry = retry;
        self
    }

    /// Learn of other writers' pool versions from `view`, a watch cache of the IPPools (of this
    /// namespace or all): a batch whose base the watch shows outdated is recomputed on the newer
    /// copy instead of being sent to lose with a 409, and after a 409 the winner's version is
    /// taken from the watch instead of a quorum read. Only an optimisation: every write still
    /// carries the resourceVersion it was computed on, and answers that need no write are still
    /// only taken from a quorum read.
    #[must_use]
    pub fn with_pool_view(mut self, view: WatchStore<IPPool>) -> KubeIpam {
        self.view = Some(view);
        self
    }

    /// Take turns with the other nodes at contended pools ([`crate::turn`]). Needs the pool
    /// view too: the next in line learns from the watch that a turn was used.
    #[must_use]
    pub fn with_turns(mut self, turns: Turns) -> KubeIpam {
        self.turns = Some(turns);
        self
    }

    pub(crate) fn turns(&self) -> Option<&Turns> {
        self.turns.as_ref().filter(|_| self.view.is_some())
    }

    pub(crate) fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The watch's copy of pool `name` when it is newer than resourceVersion `than` (both
    /// parsed as etcd revisions; an unparsable one compares as not newer).
    pub(crate) fn watched_newer(&self, name: &str, than: Option<&str>) -> Option<IPPool> {
        self.inspect_watched_newer(name, than, IPPool::clone)
    }

    /// Annotation `key` of the watch's copy of pool `name` (without copying the pool).
    pub(crate) fn watched_annotation(&self, name: &str, key: &str) -> Option<String> {
        let view = self.view.as_ref()?;
        let p = view.get(&ObjectRef::new(name).within(&self.namespace))?;
        p.annotations().get(key).cloned()
    }

    /// `look` at the watch's copy of pool `name` when it is newer than resourceVersion `than`,
    /// without copying it (see [`KubeIpam::watched_newer`]).
    pub(crate) fn inspect_watched_newer<T>(
        &self,
        name: &str,
        than: Option<&str>,
        look: impl FnOnce(&IPPool) -> T,
    ) -> Option<T> {
        let than: u64 = than?.parse().ok()?;
        let view = self.view.as_ref()?;
        let p = view.get(&ObjectRef::new(name).within(&self.namespace))?;
        let rv: u64 = p.metadata.resource_version.as_deref()?.parse().ok()?;
        (rv > than).then(|| look(&p))
    }

    /// `look` at the watch's copy of pool `name` without copying it (`None` without a view, or
    /// when it does not hold one).
    pub(crate) fn inspect_watched<T>(&self, name: &str, look: impl FnOnce(&IPPool) -> T) -> Option<T> {
        let view = self.view.as_ref()?;
        view.get(&ObjectRef::new(name).within(&self.namespace))
            .map(|p| look(&p))
    }

    /// The watch's copy of pool `name` (`None` without a view, or when it does not hold one).
    pub(crate) fn watched(&self, name: &str) -> Option<IPPool> {
        let view = self.view.as_ref()?;
        view.get(&ObjectRef::new(name).within(&self.namespace))
            .map(|p| (*p).clone())
    }

    /// Waits until the watch holds a copy of pool `name` newer than `than` (polled: the copy is
    /// an in-memory lookup), up to `until`. `None` without a view or when none came in time.
    pub(crate) async fn wait_watched_newer(
        &self,
        name: &str,
        than: Option<&str>,
        until: Instant,
    ) -> Option<IPPool> {
        self.view.as_ref()?;
        loop {
            if let Some(p) = self.watched_newer(name, than) {
                return Some(p);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep_until((Instant::now() + WATCH_POLL).min(until)).await;
        }
    }

    /// Run `hook` before every pool write (testing aid: race a writer deterministically).
    #[doc(hidden)]
    #[must_use]
    pub fn with_write_hook(mut self, hook: WriteHook) -> KubeIpam {
        self.hook = Some(hook);
        self
    }

    /// The namespace of the objects.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    pub(crate) fn pools(&self) -> Api<IPPool> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub(crate) fn orips(&self) -> Api<OverlappingRangeIPReservation> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// GET a pool, retrying transient failures until `deadline`. `cached` reads from the API
    /// server's watch cache (`resourceVersion=0`: cheap, possibly a little stale — a stale read
    /// only costs a refused write, never a wrong one); otherwise a quorum read.
    pub(crate) async fn get_pool(
        &self,
        name: &str,
        cached: bool,
        deadline: Instant,
    ) -> Result<Option<IPPool>, IpamError> {
        let mut attempt = 0;
        let params = if cached {
            GetParams::any()
        } else {
            GetParams::default()
        };
        loop {
            let started = Instant::now();
            Stats::bump(&self.stats.reads);
            let res = match self.pools().get_with(name, &params).await {
                Ok(p) => Ok(Some(p)),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                Err(e) => Err(e),
            };
            match res {
                Ok(p) => return Ok(p),
                Err(e) if is_transient(&e) => {
                    Stats::bump(&self.stats.transient);
                    if !self.retry.wait(attempt, started, deadline).await {
                        return Err(unavailable(&format!("reading IPPool `{name}`"), &e));
                    }
                    attempt += 1;
                }
                Err(e) => {
                    return Err(
                        match classify(e, &format!("reading IPPool `{name}`"), &self.namespace) {
                            ApiFailure::Conflict => IpamError::NotAvailable {
                                what: format!("reading IPPool `{name}`: unexpected conflict"),
                                fix: "retry".into(),
                            },
                            ApiFailure::Transient(e) | ApiFailure::Fatal(e) => e,
                        },
                    );
                }
            }
        }
    }

    /// After a failed pool write: `Ok(())` once the backoff has passed and the write should be
    /// tried again (a 409 or a transient failure), `Err` when it must give up (fatal, or the
    /// budget is spent). Counts conflicts for the give-up message.
    pub(crate) async fn retry_after_write_failure(
        &self,
        err: kube::Error,
        what: &str,
        attempt: u32,
        started: Instant,
        deadline: Instant,
        conflicts: &mut u32,
    ) -> Result<(), IpamError> {
        match classify(err, what, &self.namespace) {
            ApiFailure::Conflict => {
                *conflicts += 1;
                if self.retry.wait(attempt, started, deadline).await {
                    Ok(())
                } else {
                    Err(gave_up(what, *conflicts, self.retry.budget))
                }
            }
            ApiFailure::Transient(e) => {
                if self.retry.wait(attempt, started, deadline).await {
                    Ok(())
                } else {
                    Err(e)
                }
            }
            ApiFailure::Fatal(e) => Err(e),
        }
    }

    /// All pools of the namespace, as documents; those that cannot be understood are set apart
    /// (one such object must not stop listing, CHECK, DEL or GC for every other pool).
    pub(crate) async fn list_pools(&self) -> Result<ListedPools, IpamError> {
        let deadline = self.retry.deadline();
        let mut attempt = 0;
        let list = loop {
            let started = Instant::now();
            match self.pools().list(&ListParams::default()).await {
                Ok(l) => break l,
                Err(e) if is_transient(&e) => {
                    Stats::bump(&self.stats.transient);
                    if !self.retry.wait(attempt, started, deadline).await {
                        return Err(unavailable("listing IPPools", &e));
                    }
                    attempt += 1;
                }
                Err(e) => {
                    return Err(match classify(e, "listing IPPools", &self.namespace) {
                        ApiFailure::Conflict => IpamError::NotAvailable {
                            what: "listing IPPools: unexpected conflict".into(),
                            fix: "retry".into(),
                        },
                        ApiFailure::Transient(e) | ApiFailure::Fatal(e) => e,
                    });
                }
            }
        };
        let mut out = ListedPools::default();
        for p in list.items {
            let name = p.metadata.name.clone().unwrap_or_default();
            match doc_from_pool(&self.namespace, &name, &p.spec) {
                Ok(doc) => out.pools.push((p, doc)),
                Err(error) => out.unreadable.push(UnreadablePool { name, error }),
            }
        }
        Ok(out)
    }

    /// Write a pool: a replace carrying the resourceVersion `base` was read at (the API server
    /// refuses it with 409 Conflict when the pool changed since; see [`replacement`] for why not
    /// a patch). `create` when it was absent.
    /// `turn_used` is the [`crate::turn::DONE_ANNOTATION`] of a write made in turn.
    pub(crate) async fn write_pool(
        &self,
        name: &str,
        base: Option<&IPPool>,
        doc: &PoolDoc,
        attempt: u32,
        turn_used: Option<String>,
    ) -> Result<IPPool, kube::Error> {
        if let Some(hook) = &self.hook {
            hook(name, attempt);
        }
        let res = match base {
            Some(p) => {
                // An object read from the API always has a resourceVersion; without one, fall
                // back to a create, which cannot overwrite anything.
                match replacement(p, spec_from_doc(doc)) {
                    Some(mut obj) => {
                        if let Some(mark) = turn_used {
                            obj.annotations_mut()
                                .insert(crate::turn::DONE_ANNOTATION.to_string(), mark);
                        }
                        self.pools().replace(name, &PostParams::default(), &obj).await
                    }
                    None => {
                        let mut obj = IPPool::new(name, spec_from_doc(doc));
                        obj.metadata.namespace = Some(self.namespace.clone());
                        self.pools().create(&PostParams::default(), &obj).await
                    }
                }
            }
            None => {
                let mut obj = IPPool::new(name, spec_from_doc(doc));
                obj.metadata.namespace = Some(self.namespace.clone());
                self.pools().create(&PostParams::default(), &obj).await
            }
        };
        match res {
            Ok(written) => {
                Stats::bump(&self.stats.writes);
                Ok(written)
            }
            Err(e) => {
                if matches!(&e, kube::Error::Api(s) if s.code == 409) {
                    Stats::bump(&self.stats.conflicts);
                } else if is_transient(&e) {
                    Stats::bump(&self.stats.transient);
                }
                Err(e)
            }
        }
    }

    /// Allocate one address per range of `req` (or return what the attachment already holds).
    pub async fn allocate(&self, req: &AllocationRequest) -> Result<Vec<Allocation>, IpamError> {
        let mut done: Vec<RangeOutcome> = Vec::with_capacity(req.ranges.len());
        for sub in per_range(req)? {
            match crate::batch::allocate_one(self, sub).await {
                Ok(o) => done.push(o),
                Err(e) => {
                    self.rollback(&req.owner, req.network_name.as_deref(), &done)
                        .await;
                    return Err(e);
                }
            }
        }
        for o in &done {
            tracing::info!(pool = %o.alloc.pool, ip = %o.alloc.ip, owner = %req.owner, new = o.new, "allocated");
        }
        Ok(done.into_iter().map(|o| o.alloc).collect())
    }

    /// Claim the overlapping-range reservation of `ip` for `owner`.
    pub(crate) async fn claim_orip(
        &self,
        ip: IpAddr,
        network: Option<&str>,
        owner: &Owner,
        deadline: Instant,
    ) -> Result<OripClaim, IpamError> {
        let name = orip_name(ip, network);
        let what = format!(
            "reserving {ip} (OverlappingRangeIPReservation `{}/{name}`)",
            self.namespace
        );
        let mut obj = OverlappingRangeIPReservation::new(
            &name,
            OverlappingRangeIPReservationSpec {
                containerid: owner.container_id.clone(),
                podref: owner.podref.clone().unwrap_or_default(),
                ifname: owner.ifname.clone(),
            },
        );
        obj.metadata.namespace = Some(self.namespace.clone());
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let failure = match self.orips().create(&PostParams::default(), &obj).await {
                Ok(created) => {
                    tracing::debug!(orip = %name, %owner, "overlapping-range reservation created");
                    self.remember_claim(&created);
                    return Ok(OripClaim::Mine(true));
                }
                Err(e) => classify(e, &what, &self.namespace),
            };
            match failure {
                ApiFailure::Conflict => match self.read_orip(&name).await {
                    Ok(Some(existing)) => {
                        let s = &existing.spec;
                        let mine = owner.is_attachment_of(&s.containerid, &s.podref, &s.ifname)
                            || (s.ifname.is_empty() && owner.podref.as_deref() == Some(s.podref.as_str()));
                        if !mine {
                            return Ok(OripClaim::Taken(existing.spec));
                        }
                        if s.containerid == owner.container_id && s.ifname == owner.ifname {
                            self.remember_claim(&existing);
                            return Ok(OripClaim::Mine(false));
                        }
                        // Adopted by a new container of the same pod (a re-ADD): say so in the
                        // object (resourceVersion-checked), as a fresh claim would have: a
                        // delete that read the old holder then fails its precondition.
                        let mut adopted = existing.clone();
                        adopted.spec = obj.spec.clone();
                        match self
                            .orips()
                            .replace(&name, &PostParams::default(), &adopted)
                            .await
                        {
                            Ok(replaced) => {
                                self.remember_claim(&replaced);
                                return Ok(OripClaim::Mine(false));
                            }
                            Err(e) => match classify(e, &what, &self.namespace) {
                                ApiFailure::Fatal(e) => return Err(e),
                                // Changed or deleted meanwhile: look again.
                                ApiFailure::Conflict | ApiFailure::Transient(_) => {}
                            },
                        }
                    }
                    // Deleted in between: create again.
                    Ok(None) => {}
                    Err(e) => match classify(e, &what, &self.namespace) {
                        ApiFailure::Fatal(e) => return Err(e),
                        ApiFailure::Conflict | ApiFailure::Transient(_) => {}
                    },
                },
                ApiFailure::Transient(e) => {
                    if !self.retry.wait(attempt, started, deadline).await {
                        return Err(e);
                    }
                }
                ApiFailure::Fatal(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(gave_up(&what, attempt + 1, self.retry.budget));
            }
            attempt += 1;
        }
    }

    /// Delete the overlapping-range reservation of `ip` if it names `(id, podref, ifname)`
    /// ([`names_attachment`]). One this store created or adopted and that still names the
    /// attachment is deleted with the uid and resourceVersion of that write as preconditions,
    /// without a read; any other (or one that changed since: the preconditions fail) is read,
    /// judged, and deleted with the uid and resourceVersion that were read. Best effort: a
    /// leftover reservation only keeps an address from being reused, it never duplicates one.
    pub(crate) async fn delete_orip_if(
        &self,
        ip: IpAddr,
        network: Option<&str>,
        id: &str,
        podref: &str,
        ifname: &str,
    ) {
        let name = orip_name(ip, network);
        if let Some(known) = self.forget_claim(&name)
            && names_attachment(&known.spec, id, podref, ifname)
        {
            let pre = Preconditions {
                resource_version: known.resource_version,
                uid: known.uid,
            };
            match self.delete_reservation(&name, pre).await {
                Ok(true) => {
                    tracing::debug!(orip = %name, holder = %known.spec.podref, "overlapping-range reservation deleted");
                    return;
                }
                // Gone, or changed since this store wrote it: judge what it is now.
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(orip = %name, error = %e, "cannot delete overlapping-range reservation");
                    return;
                }
            }
        }
        let existing = match self.read_orip(&name).await {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(orip = %name, error = %e, "cannot read overlapping-range reservation; leaving it");
                return;
            }
        };
        let s = &existing.spec;
        if !names_attachment(s, id, podref, ifname) {
            tracing::debug!(orip = %name, holder = %s.podref, "overlapping-range reservation held by another attachment; kept");
            return;
        }
        let pre = Preconditions {
            resource_version: existing.metadata.resource_version.clone(),
            uid: existing.metadata.uid.clone(),
        };
        match self.delete_reservation(&name, pre).await {
            Ok(true) => {
                tracing::debug!(orip = %name, holder = %s.podref, "overlapping-range reservation deleted")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(orip = %name, error = %e, "cannot delete overlapping-range reservation"),
        }
    }

    pub(crate) async fn delete_orip_of(&self, ip: IpAddr, network: Option<&str>, owner: &Owner) {
        self.delete_orip_if(
            ip,
            network,
            &owner.container_id,
            owner.podref.as_deref().unwrap_or(""),
            &owner.ifname,
        )
        .await;
    }

    /// A quorum read of the overlapping-range reservation `name` (counted in [`Stats`]).
    pub(crate) async fn read_orip(
        &self,
        name: &str,
    ) -> Result<Option<OverlappingRangeIPReservation>, kube::Error> {
        Stats::bump(&self.stats.orip_reads);
        self.orips().get_opt(name).await
    }

    /// Undo the ranges of a failed multi-range ADD that were newly allocated.
    pub(crate) async fn rollback(&self, owner: &Owner, network: Option<&str>, done: &[RangeOutcome]) {
        for o in done.iter().rev().filter(|o| o.new) {
            let (offset, want) = (o.offset, o.reservation.clone());
            let res = self
                .update_pool(&o.alloc.pool, None, self.retry.deadline(), |doc| {
                    let ours = doc.allocations.get(&offset).is_some_and(|r| {
                        r.id == want.id && r.podref == want.podref && r.ifname == want.ifname
                    });
                    if ours {
                        doc.allocations.remove(&offset);
                    }
                    Ok(((), ours))
                })
                .await;
            match res {
                Ok(_) => tracing::info!(pool = %o.alloc.pool, ip = %o.alloc.ip, %owner, "rolled back"),
                Err(e) => tracing::error!(pool = %o.alloc.pool, ip = %o.alloc.ip, %owner, error = %e,
                    "cannot roll back a partial allocation; the runtime's DEL releases it"),
            }
            if o.orip_created {
                self.delete_orip_of(o.alloc.ip, network, owner).await;
            }
        }
    }

    /// Read-modify-write an existing pool with `f` until the write is not refused; `first` is an
    /// already-read copy to start from. `f` returns its result and whether the document changed.
    /// An absent pool yields `Ok(None)`.
    pub(crate) async fn update_pool<T>(
        &self,
        name: &str,
        mut first: Option<IPPool>,
        deadline: Instant,
        mut f: impl FnMut(&mut PoolDoc) -> Result<(T, bool), IpamError>,
    ) -> Result<Option<T>, IpamError> {
        let what = format!("updating IPPool `{}/{name}`", self.namespace);
        let mut attempt = 0;
        let mut conflicts = 0;
        loop {
            let started = Instant::now();
            let current = match first.take() {
                Some(p) => p,
                None => match self.get_pool(name, false, deadline).await? {
                    Some(p) => p,
                    None => return Ok(None),
                },
            };
            let mut doc = doc_from_pool(&self.namespace, name, &current.spec)?;
            let (out, changed) = f(&mut doc)?;
            if !changed {
                return Ok(Some(out));
            }
            match self.write_pool(name, Some(&current), &doc, attempt, None).await {
                Ok(_) => return Ok(Some(out)),
                Err(e) => {
                    self.retry_after_write_failure(e, &what, attempt, started, deadline, &mut conflicts)
                        .await?;
                }
            }
            attempt += 1;
        }
    }

    /// Run a removing transaction over the given pools, then delete the freed addresses'
    /// overlapping-range reservations.
    async fn remove_from(
        &self,
        pools: Vec<(String, Option<IPPool>)>,
        f: impl Fn(&mut BTreeMap<String, PoolDoc>) -> (Vec<Allocation>, BTreeSet<String>),
    ) -> Result<Vec<Allocation>, IpamError> {
        let deadline = self.retry.deadline();
        let mut freed = Vec::new();
        for (name, first) in pools {
            let out = self
                .update_pool(&name, first, deadline, |doc| {
                    let network = doc.network_name.clone();
                    let mut docs = BTreeMap::from([(name.clone(), doc.clone())]);
                    let (out, dirty) = f(&mut docs);
                    if let Some(d) = docs.remove(&name) {
                        *doc = d;
                    }
                    Ok(((out, network), !dirty.is_empty()))
                })
                .await?;
            let Some((out, network)) = out else { continue };
            for a in out {
                self.delete_orip_if(
                    a.ip,
                    network.as_deref(),
                    &a.container_id,
                    a.podref.as_deref().unwrap_or(""),
                    &a.ifname,
                )
                .await;
                freed.push(a);
            }
        }
        Ok(freed)
    }

    /// Release the attachment's addresses in every pool of the namespace.
    pub async fn release(&self, owner: &Owner) -> Result<Vec<Allocation>, IpamError> {
        let pools: Vec<(String, Option<IPPool>)> = self
            .list_pools()
            .await?
            .readable(&self.namespace, "this release")
            .into_iter()
            .filter(|(_, doc)| {
                doc.allocations
                    .values()
                    .any(|r| owner.releases(&r.id, &r.podref, &r.ifname))
            })
            .map(|(p, _)| (p.metadata.name.clone().unwrap_or_default(), Some(p)))
            .collect();
        let freed = self
            .remove_from(pools, |docs| pool::release_in(docs, owner))
            .await?;
        for a in &freed {
            tracing::info!(pool = %a.pool, ip = %a.ip, %owner, "released");
        }
        // Reservations claimed ahead of their pool entry by a node daemon that was killed
        // before the entry landed (this path runs while no daemon listens) go with the
        // attachment, or the daemon's repair would write their entries back.
        let deleted = self.release_claims_of(owner).await;
        if freed.is_empty() {
            tracing::debug!(%owner, claims_deleted = deleted, "release: nothing held in the pools");
        }
        Ok(freed)
    }

    /// Every allocation in the namespace's pools.
    pub async fn allocations(&self) -> Result<Vec<Allocation>, IpamError> {
        let docs: BTreeMap<String, PoolDoc> = self
            .list_pools()
            .await?
            .readable(&self.namespace, "the allocation list")
            .into_iter()
            .map(|(p, d)| (p.metadata.name.unwrap_or_default(), d))
            .collect();
        Ok(pool::list(&docs))
    }

    /// Release allocations of the request's pools whose attachment is not valid. Reservations
    /// read from Kubernetes carry no allocation time (the CRD has no field for it), so
    /// `min_age_secs` cannot protect them: every invalid one is collected.
    pub async fn gc(&self, req: &GcRequest<'_>) -> Result<Vec<Allocation>, IpamError> {
        let names: BTreeSet<String> = req
            .ranges
            .iter()
            .map(|r| pool_name(req.network_name, &r.cidr))
            .collect();
        let now = unix_now();
        let freed = self
            .remove_from(names.into_iter().map(|n| (n, None)).collect(), |docs| {
                pool::gc_in(docs, req, now)
            })
            .await?;
        for a in &freed {
            tracing::info!(pool = %a.pool, ip = %a.ip, container = %a.container_id, ifname = %a.ifname, "garbage-collected");
        }
        Ok(freed)
    }

    /// The addresses the attachment holds (CNI CHECK), by ADD identity.
    pub async fn check(&self, owner: &Owner) -> Result<Vec<Allocation>, IpamError> {
        let docs: BTreeMap<String, PoolDoc> = self
            .list_pools()
            .await?
            .readable(&self.namespace, "this CHECK")
            .into_iter()
            .map(|(p, d)| (p.metadata.name.unwrap_or_default(), d))
            .collect();
        Ok(pool::check_in(&docs, owner))
    }
}

/// The sync [`Store`] over [`KubeIpam`], driving it on a private current-thread runtime (the
/// plugin binary is sync and short-lived; the runtime costs microseconds to build).
pub struct KubeStore {
    rt: tokio::runtime::Runtime,
    ipam: KubeIpam,
}

impl fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeStore")
            .field("ipam", &self.ipam)
            .finish_non_exhaustive()
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, IpamError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| IpamError::NotAvailable {
            what: format!("an async runtime for the Kubernetes client: {e}"),
            fix: "check the process limits (threads, file descriptors)".into(),
        })
}

impl KubeStore {
    /// A store from a kubeconfig file, in `namespace` or else the namespace of its current
    /// context, else `kube-system` (as whereabouts).
    pub fn from_kubeconfig(path: &Path, namespace: Option<&str>) -> Result<KubeStore, IpamError> {
        let rt = runtime()?;
        let ipam = rt.block_on(KubeIpam::from_kubeconfig(path, namespace))?;
        Ok(KubeStore { rt, ipam })
    }

    /// The store an IPAM configuration names (`kubernetes.kubeconfig`, required as in whereabouts).
    pub fn open(cfg: &IpamConfig) -> Result<KubeStore, IpamError> {
        match &cfg.kubeconfig {
            Some(path) => KubeStore::from_kubeconfig(path, None),
            None => Err(ConfigError::invalid(
                "ipam.kubernetes.kubeconfig",
                None,
                "is missing: the kubernetes datastore (the default) needs a kubeconfig, inline or from the \
                 whereabouts flat file",
                r#"set "kubernetes": {"kubeconfig": "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"} (on K3s \
                   /var/lib/rancher/k3s/agent/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig), or use "datastore": "local""#,
            )
            .into()),
        }
    }

    /// Adjust the inner async store (retry policy, hooks).
    #[must_use]
    pub fn map_ipam(mut self, f: impl FnOnce(KubeIpam) -> KubeIpam) -> KubeStore {
        self.ipam = f(self.ipam);
        self
    }

    /// The async store inside.
    pub fn ipam(&self) -> &KubeIpam {
        &self.ipam
    }

    /// Run a future of this store's client on its runtime.
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }
}

impl Store for KubeStore {
    fn allocate(&self, req: &AllocationRequest) -> Result<Vec<Allocation>, IpamError> {
        self.rt.block_on(self.ipam.allocate(req))
    }

    fn release(&self, owner: &Owner) -> Result<Vec<Allocation>, IpamError> {
        self.rt.block_on(self.ipam.release(owner))
    }

    fn allocations(&self) -> Result<Vec<Allocation>, IpamError> {
        self.rt.block_on(self.ipam.allocations())
    }

    fn gc(&self, req: &GcRequest<'_>) -> Result<Vec<Allocation>, IpamError> {
        self.rt.block_on(self.ipam.gc(req))
    }

    fn check(&self, owner: &Owner) -> Result<Vec<Allocation>, IpamError> {
        self.rt.block_on(self.ipam.check(owner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, reason)
                .with_code(code)
                .boxed(),
        )
    }

    fn fatal_fix(e: kube::Error) -> (String, String) {
        match classify(e, "writing IPPool `ns/p`", "ns") {
            ApiFailure::Fatal(IpamError::NotAvailable { what, fix }) => (what, fix),
            _ => panic!("not a fatal NotAvailable"),
        }
    }

    #[test]
    fn refusals_name_their_cause_and_the_fix_that_helps() {
        let (what, fix) = fatal_fix(api(401, "Unauthorized", "Unauthorized"));
        assert!(what.contains("credentials"), "{what}");
        assert!(fix.contains("expired"), "{fix}");

        let (what, fix) = fatal_fix(api(
            403,
            "Forbidden",
            "overlappingrangeipreservations.whereabouts.cni.cncf.io \"198.18.16.1\" is forbidden: unable to \
             create new content in namespace ns because it is being terminated",
        ));
        assert!(what.contains("namespace `ns` is being deleted"), "{what}");
        assert!(!fix.contains("ClusterRole"), "{fix}");

        let (what, fix) = fatal_fix(api(
            403,
            "Forbidden",
            "ippools.whereabouts.cni.cncf.io is forbidden: User \"x\" cannot update resource",
        ));
        assert!(what.contains("refused"), "{what}");
        assert!(fix.contains("ClusterRole"), "{fix}");
    }

    #[test]
    fn conflicts_and_server_errors_are_retried() {
        assert!(matches!(
            classify(api(409, "Conflict", "changed"), "w", "ns"),
            ApiFailure::Conflict
        ));
        assert!(matches!(
            classify(api(503, "ServiceUnavailable", "down"), "w", "ns"),
            ApiFailure::Transient(_)
        ));
        assert!(matches!(
            classify(api(429, "TooManyRequests", "slow down"), "w", "ns"),
            ApiFailure::Transient(_)
        ));
    }
}
