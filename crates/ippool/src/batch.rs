//! The node daemon's IPAM engine: every concurrent request of one node for one pool is folded
//! into one pool write.
//!
//! Each pool has a worker task and a queue. The worker takes everything queued (up to
//! [`MAX_BATCH`]), runs the requests in arrival order on one in-memory copy of the pool with the
//! pure allocator (releases and allocations mixed, so an attachment released and re-added in one
//! batch ends up as it would one by one), writes the pool once (a replace carrying the
//! resourceVersion it computed on), then claims the overlapping-range reservations of the new
//! addresses concurrently; the answers go out only after both, so no caller ever sees an address
//! that is not stored. While a batch is in flight the next one fills up: under load, one write
//! carries many allocations, and ten nodes hammering one pool make ten writers instead of a
//! thousand.
//!
//! The worker keeps the object its last write returned and starts the next batch from it: no
//! read at all while this node is the only writer. With the daemon's IPPool watch
//! ([`KubeIpam::with_pool_view`]) it also learns of other nodes' writes without reading: a batch
//! computed on a version the watch shows outdated is redone on the newer one before it is sent,
//! and after a lost write (409) the winner's version comes from the watch (a quorum read only
//! when it does not arrive in time). A stale copy costs one refused write, never a wrong one.
//!
//! When other nodes contend for the pool, the daemon's engines take turns ([`crate::turn`]): a
//! node that lost a write, or sees others waiting, queues and sends its write only when no node
//! that started waiting earlier is still in line, redoing the batch once on the newest version
//! when its turn comes. Ten nodes then write one after the other instead of nine writes in ten
//! being refused, and no node can lose round after round until its requests time out.
//!
//! A failure of one request (its pool is exhausted, its static address is held) fails that
//! request only. A failure of the pool write (API down past the retry budget, permission) fails
//! every request of the batch with that error, and nothing was written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use netattach_ipam::error::IpamError;
use netattach_ipam::local::unix_now;
use netattach_ipam::pool::{self, PoolDoc, Reservation};
use netattach_ipam::range::pool_name;
use netattach_ipam::store::{Allocation, AllocationRequest, Owner};
use tokio::sync::{mpsc, oneshot};

use crate::crd::{IPPool, doc_from_pool, orip_name, pool_origin};
use crate::store::{KubeIpam, OripClaim, RangeOutcome, Stats, per_range};
use crate::turn::{RENEW_EVERY, Turns, Waiter};
use k8s_openapi::jiff::Timestamp;

/// Most requests folded into one pool write (bounds the patch size and the time a batch holds
/// its callers).
pub const MAX_BATCH: usize = 64;

/// Overlapping-range reservations claimed (or deleted) at once: enough to hide the API
/// server's latency, few enough to reuse a handful of pooled connections instead of opening
/// (and TLS-handshaking) one per request.
pub const ORIP_CONCURRENCY: usize = 16;

/// Extra time a batch gets per request in it, on top of the store's retry budget (each claims
/// or deletes an overlapping-range reservation).
const PER_REQUEST: std::time::Duration = std::time::Duration::from_millis(50);

/// How often a batch waiting for its turn looks at the watches (in-memory lookups).
const TURN_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// A batch stops waiting for its turn this long before its deadline (or a quarter of the
/// budget, if less) and writes regardless.
const TURN_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// After a lost write, how long to wait for the winner's version to arrive through the watch
/// before reading it (quorum) instead.
const WATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The engine's counters (cumulative).
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Requests queued so far.
    pub submitted: AtomicU64,
    /// Batches written (or found to need no write).
    pub batches: AtomicU64,
    /// Requests answered through batches.
    pub requests: AtomicU64,
    /// The largest batch so far.
    pub largest: AtomicU64,
}

/// The batching front of a [`KubeIpam`]: same semantics, one write per pool per batch.
#[derive(Clone)]
pub struct BatchingIpam {
    ipam: KubeIpam,
    workers: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Job>>>>,
    stats: Arc<BatchStats>,
}

impl std::fmt::Debug for BatchingIpam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchingIpam")
            .field("ipam", &self.ipam)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// One queued request.
enum Job {
    /// A single-range allocation.
    Allocate {
        req: AllocationRequest,
        reply: oneshot::Sender<Result<RangeOutcome, IpamError>>,
    },
    /// Release the owner's reservations in this pool.
    Release {
        owner: Owner,
        reply: oneshot::Sender<Result<Vec<Allocation>, IpamError>>,
    },
}

/// What one job came to in one attempt of a batch.
enum Outcome {
    Allocated(RangeOutcome),
    Released(Vec<Allocation>),
    Failed(IpamError),
}

fn stopped() -> IpamError {
    IpamError::NotAvailable {
        what: "the IPAM engine stopped while the request was queued".into(),
        fix: "retry (the runtime does)".into(),
    }
}

impl BatchingIpam {
    /// The engine over `ipam` (its namespace, client and retry policy). Workers are spawned on
    /// the current Tokio runtime as pools are first used.
    pub fn new(ipam: KubeIpam) -> BatchingIpam {
        BatchingIpam {
            ipam,
            workers: Arc::default(),
            stats: Arc::default(),
        }
    }

    /// The store underneath (for the operations that are not batched: listing, CHECK, GC).
    pub fn ipam(&self) -> &KubeIpam {
        &self.ipam
    }

    /// The engine's counters.
    pub fn batch_stats(&self) -> &BatchStats {
        &self.stats
    }

    fn submit(&self, pool: &str, job: Job) {
        let mut workers = match self.workers.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        let sender = workers.entry(pool.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_pool(
                self.ipam.clone(),
                pool.to_string(),
                rx,
                self.stats.clone(),
            ));
            tx
        });
        match sender.send(job) {
            Ok(()) => {
                self.stats.submitted.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::SendError(job)) => {
                // The worker is gone (its runtime is shutting down): answer right away.
                match job {
                    Job::Allocate { reply, .. } => drop(reply.send(Err(stopped()))),
                    Job::Release { reply, .. } => drop(reply.send(Err(stopped()))),
                }
                workers.remove(pool);
            }
        }
    }

    /// Allocate one address per range of `req` (or return what the attachment already holds);
    /// all or nothing across ranges, as [`KubeIpam::allocate`].
    pub async fn allocate(&self, req: &AllocationRequest) -> Result<Vec<Allocation>, IpamError> {
        let mut done: Vec<RangeOutcome> = Vec::with_capacity(req.ranges.len());
        for sub in per_range(req)? {
            let Some(range) = sub.ranges.first() else { continue };
            let name = pool_name(sub.network_name.as_deref(), &range.cidr);
            let (reply, answer) = oneshot::channel();
            self.submit(&name, Job::Allocate { req: sub, reply });
            match answer.await.unwrap_or_else(|_| Err(stopped())) {
                Ok(o) => done.push(o),
                Err(e) => {
                    self.ipam
                        .rollback(&req.owner, req.network_name.as_deref(), &done)
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

    /// Release what `owner` holds in `pools` (whereabouts DEL over the configuration's pools).
    /// Every pool is tried; the first error is returned after all of them ran.
    pub async fn release(&self, owner: &Owner, pools: &[String]) -> Result<Vec<Allocation>, IpamError> {
        let answers: Vec<_> = pools
            .iter()
            .map(|pool| {
                let (reply, answer) = oneshot::channel();
                self.submit(
                    pool,
                    Job::Release {
                        owner: owner.clone(),
                        reply,
                    },
                );
                answer
            })
            .collect();
        let mut freed = Vec::new();
        let mut first_error = None;
        for answer in answers {
            match answer.await.unwrap_or_else(|_| Err(stopped())) {
                Ok(mut a) => freed.append(&mut a),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => {
                for a in &freed {
                    tracing::info!(pool = %a.pool, ip = %a.ip, %owner, "released");
                }
                Ok(freed)
            }
        }
    }
}

/// The worker of one pool: one batch at a time, each made of everything queued meanwhile.
async fn run_pool(
    ipam: KubeIpam,
    pool: String,
    mut queue: mpsc::UnboundedReceiver<Job>,
    stats: Arc<BatchStats>,
) {
    let mut last_written: Option<IPPool> = None;
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        let (result, written) = settle(&ipam, &pool, last_written.take(), &mut jobs, &mut queue).await;
        last_written = written;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.requests.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        stats.largest.fetch_max(jobs.len() as u64, Ordering::Relaxed);
        tracing::debug!(%pool, requests = jobs.len(), "batch done");
        answer(jobs, result);
    }
}

/// One single-range allocation with the batch protocol, without a queue: the store's direct
/// path (a plugin without a daemon) and the engine write pools the same way.
pub(crate) async fn allocate_one(ipam: &KubeIpam, req: AllocationRequest) -> Result<RangeOutcome, IpamError> {
    let Some(range) = req.ranges.first() else {
        return Err(mismatch());
    };
    let name = pool_name(req.network_name.as_deref(), &range.cidr);
    let (reply, _unused) = oneshot::channel();
    let mut jobs = vec![Job::Allocate { req, reply }];
    // Nobody else sends on this queue: the batch is exactly this one request.
    let (_sender, mut queue) = mpsc::unbounded_channel();
    let (result, _) = settle(ipam, &name, None, &mut jobs, &mut queue).await;
    match result.into_outcomes(1).into_iter().next() {
        Some(Outcome::Allocated(o)) => Ok(o),
        Some(Outcome::Failed(e)) => Err(e),
        _ => Err(mismatch()),
    }
}

/// Send every job its outcome.
fn answer(jobs: Vec<Job>, result: BatchResult) {
    let outcomes = result.into_outcomes(jobs.len());
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        match (job, outcome) {
            (Job::Allocate { reply, .. }, Outcome::Allocated(o)) => drop(reply.send(Ok(o))),
            (Job::Release { reply, .. }, Outcome::Released(a)) => drop(reply.send(Ok(a))),
            (Job::Allocate { reply, .. }, Outcome::Failed(e)) => drop(reply.send(Err(e))),
            (Job::Release { reply, .. }, Outcome::Failed(e)) => drop(reply.send(Err(e))),
            (Job::Allocate { reply, .. }, Outcome::Released(_)) => drop(reply.send(Err(mismatch()))),
            (Job::Release { reply, .. }, Outcome::Allocated(_)) => drop(reply.send(Err(mismatch()))),
        }
    }
}

fn mismatch() -> IpamError {
    IpamError::Corrupt {
        path: "batch".into(),
        reason: "a batch answered a request with the wrong kind of outcome".into(),
    }
}

/// A borrowed view of a job's request.
enum JobRequest<'a> {
    Allocate(&'a AllocationRequest),
    Release(&'a Owner),
}

impl<'a> JobRequest<'a> {
    fn of(job: &'a Job) -> JobRequest<'a> {
        match job {
            Job::Allocate { req, .. } => JobRequest::Allocate(req),
            Job::Release { owner, .. } => JobRequest::Release(owner),
        }
    }
}

/// Per-job outcomes, or one error for the whole batch.
enum BatchResult {
    PerJob(Vec<Outcome>),
    Whole(IpamError),
}

impl BatchResult {
    fn into_outcomes(self, n: usize) -> Vec<Outcome> {
        match self {
            BatchResult::PerJob(v) => v,
            BatchResult::Whole(e) => {
                // IpamError is not Clone: the first caller gets the error itself, the rest its
                // text with the same retryability.
                let text = e.to_string();
                let fix = "retry (the runtime does)".to_string();
                let mut out = Vec::with_capacity(n);
                out.push(Outcome::Failed(e));
                out.extend((1..n).map(|_| {
                    Outcome::Failed(IpamError::NotAvailable {
                        what: text.clone(),
                        fix: fix.clone(),
                    })
                }));
                out
            }
        }
    }
}

/// The placeholder reservation that keeps the allocator off an offset whose overlapping-range
/// reservation another attachment holds (removed before the pool is written).
fn placeholder() -> Reservation {
    Reservation {
        id: String::new(),
        podref: String::new(),
        ifname: "\0overlapping-range reservation".into(),
        time: None,
    }
}

/// An attachment as a map key.
type OwnerKey = (String, Option<String>, String);

fn owner_key(o: &Owner) -> OwnerKey {
    (o.container_id.clone(), o.podref.clone(), o.ifname.clone())
}

/// Run the requests in order on `doc`. Jobs with a final failure (`failed`) are skipped
/// (`None`). Returns the outcomes, the document to write and whether it changed.
fn compute(
    name: &str,
    doc: PoolDoc,
    requests: &[JobRequest<'_>],
    blocked: &BTreeSet<u128>,
    failed: &[Option<IpamError>],
    held_before: &mut [Option<bool>],
) -> (Vec<Option<Outcome>>, PoolDoc, bool) {
    let mut doc = doc;
    let placeholders: Vec<u128> = blocked
        .iter()
        .copied()
        .filter(|o| !doc.allocations.contains_key(o))
        .collect();
    for o in &placeholders {
        doc.allocations.insert(*o, placeholder());
    }
    let mut docs = BTreeMap::from([(name.to_string(), doc)]);
    let now = unix_now();
    let mut dirty = false;
    let mut outcomes = Vec::with_capacity(requests.len());
    for ((request, failure), held) in requests.iter().zip(failed).zip(held_before.iter_mut()) {
        if failure.is_some() {
            outcomes.push(None);
            continue;
        }
        let outcome = match request {
            JobRequest::Release(owner) => {
                let (freed, changed) = pool::release_in(&mut docs, owner);
                dirty |= !changed.is_empty();
                Outcome::Released(freed)
            }
            JobRequest::Allocate(req) => {
                // Whether the attachment held an address here before this batch: decided on the
                // first document the batch sees that it did not write itself.
                let held_before = *held.get_or_insert_with(|| {
                    docs.get(name).is_some_and(|d| {
                        d.allocations
                            .values()
                            .any(|r| req.owner.is_attachment_of(&r.id, &r.podref, &r.ifname))
                    })
                });
                let mut pure = (*req).clone();
                pure.overlapping_ranges = false;
                match pool::allocate_in(&mut docs, &pure, now) {
                    Ok((allocs, changed)) => {
                        dirty |= !changed.is_empty();
                        match range_outcome(name, &docs, req, allocs, held_before) {
                            Ok(o) => Outcome::Allocated(o),
                            Err(e) => Outcome::Failed(e),
                        }
                    }
                    Err(e) => Outcome::Failed(e),
                }
            }
        };
        outcomes.push(Some(outcome));
    }
    let mut doc = docs
        .remove(name)
        .unwrap_or_else(|| PoolDoc::new(ipnet::IpNet::V4(ipnet::Ipv4Net::default()), None));
    for o in &placeholders {
        doc.allocations.remove(o);
    }
    (outcomes, doc, dirty)
}

/// The [`RangeOutcome`] of a single-range allocation that `allocate_in` just made.
fn range_outcome(
    name: &str,
    docs: &BTreeMap<String, PoolDoc>,
    req: &AllocationRequest,
    allocs: Vec<Allocation>,
    held_before: bool,
) -> Result<RangeOutcome, IpamError> {
    let corrupt = |reason: String| IpamError::Corrupt {
        path: pool_origin("", name),
        reason,
    };
    let alloc = allocs
        .into_iter()
        .next()
        .ok_or_else(|| corrupt("the allocator returned no address".into()))?;
    let range = req
        .ranges
        .first()
        .ok_or_else(|| corrupt("a range allocation without a range".into()))?;
    let offset = range
        .offset_of(alloc.ip)
        .ok_or_else(|| corrupt(format!("allocated {} outside {}", alloc.ip, range.cidr)))?;
    let reservation = docs
        .get(name)
        .and_then(|d| d.allocations.get(&offset))
        .cloned()
        .ok_or_else(|| corrupt(format!("offset {offset} not in the document after allocation")))?;
    Ok(RangeOutcome {
        alloc,
        new: !held_before,
        offset,
        reservation,
        orip_created: false,
    })
}

/// A turn-Lease write, given at most [`RENEW_EVERY`]: the queue is advisory, and a batch must
/// not hang on it while the API server does not answer.
async fn bounded(write: impl std::future::Future<Output = Result<(), kube::Error>>) -> Result<(), String> {
    match tokio::time::timeout(RENEW_EVERY, write).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {RENEW_EVERY:?}")),
    }
}

/// How a wait for a turn ended.
enum TurnWait {
    /// No live waiter is ahead: write.
    Mine,
    /// The pool changed meanwhile: recompute on this version first.
    Newer(Box<IPPool>),
    /// The batch is close to its deadline: write regardless.
    TimeUp,
}

/// Wait until it is `me`'s turn at pool `name` (or `until`); the place in line is renewed every
/// [`RENEW_EVERY`] meanwhile. The versions the others write meanwhile are not looked at: only
/// when the turn comes is the batch redone, once, on the newest one.
async fn wait_for_turn(
    ipam: &KubeIpam,
    turns: &Turns,
    name: &str,
    me: &Waiter,
    renewed: &mut tokio::time::Instant,
    current_rv: Option<&str>,
    until: tokio::time::Instant,
) -> TurnWait {
    loop {
        let done = ipam.watched_annotation(name, crate::turn::DONE_ANNOTATION);
        if turns.my_turn(ipam.namespace(), name, me, done.as_deref()) {
            return match ipam.watched_newer(name, current_rv) {
                Some(newer) => TurnWait::Newer(Box::new(newer)),
                None => TurnWait::Mine,
            };
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return TurnWait::TimeUp;
        }
        if now.duration_since(*renewed) >= RENEW_EVERY {
            *renewed = now;
            if let Err(e) = bounded(turns.queue(&ipam.leases(), name, me)).await {
                tracing::debug!(pool = %name, error = %e, "could not renew the place in line");
            }
        }
        tokio::time::sleep_until((tokio::time::Instant::now() + TURN_POLL).min(until)).await;
    }
}

/// Run the batch until its write lands and its overlapping-range reservations are claimed (or
/// it fails for good). Returns the outcomes and the pool as written.
///
/// The pool is written first and the reservations are claimed after: the pool's
/// resourceVersion serialises the daemons of all nodes cheaply (a 409 and a re-read), where
/// claiming first would have every node race for the same lowest addresses' reservations. No
/// answer leaves before its reservation is held, so no caller sees an address another pool of
/// the same network holds; an address whose reservation turns out to be taken is removed from
/// the pool again (the next write) and the request gets another one.
///
/// Before every attempt that starts afresh (the first, and each after a 409), the requests
/// queued meanwhile join the batch (up to [`MAX_BATCH`]): under contention a node then writes
/// once per round with everything it has, instead of once per request.
async fn settle(
    ipam: &KubeIpam,
    name: &str,
    cached: Option<IPPool>,
    jobs: &mut Vec<Job>,
    queue: &mut mpsc::UnboundedReceiver<Job>,
) -> (BatchResult, Option<IPPool>) {
    let started_at = tokio::time::Instant::now();
    let what = format!("writing IPPool `{}/{name}`", ipam.namespace());
    // Offsets whose overlapping-range reservation another attachment holds.
    let mut blocked: BTreeSet<u128> = BTreeSet::new();
    // Reservations this batch wrote that must go again (their overlapping-range reservation is
    // taken), by offset → the job that got it.
    let mut evict: BTreeMap<u128, usize> = BTreeMap::new();
    // Final failures of single jobs (their claim failed for good).
    let mut failed: Vec<Option<IpamError>> = Vec::new();
    let mut held_before: Vec<Option<bool>> = Vec::new();
    // Overlapping-range reservations this batch holds, by (address, attachment) → created by us.
    let mut claimed: HashMap<(IpAddr, OwnerKey), bool> = HashMap::new();
    let mut network: Option<String> = None;
    let mut base = cached;
    // Whether `base` is known to be the current pool (a quorum read, or this batch's own write).
    let mut fresh = false;
    let mut attempt: u32 = 0;
    let mut conflicts: u32 = 0;
    // Whether other nodes were seen writing this pool (a lost write, or a rebase).
    let mut contended = false;
    // This batch's place in line for the pool (crate::turn) and when it was last renewed.
    let mut place: Option<(Waiter, tokio::time::Instant)> = None;

    let (result, written) = loop {
        // Take in what was queued meanwhile, unless this batch already holds reservations it
        // must account for.
        if claimed.is_empty() && evict.is_empty() {
            while jobs.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        failed.resize_with(jobs.len(), || None);
        held_before.resize(jobs.len(), None);
        let requests: Vec<JobRequest<'_>> = jobs.iter().map(JobRequest::of).collect();
        let requests = requests.as_slice();
        // The range and network of the pool, from the first allocation (to create an absent pool).
        let template = requests.iter().find_map(|r| match r {
            JobRequest::Allocate(req) => req
                .ranges
                .first()
                .map(|range| (range.cidr, req.network_name.clone())),
            JobRequest::Release(_) => None,
        });
        if network.is_none() {
            network = template.as_ref().and_then(|(_, n)| n.clone());
        }
        // The store's budget, plus time for each request's overlapping-range reservation.
        let deadline =
            started_at + ipam.retry.budget + PER_REQUEST * u32::try_from(jobs.len()).unwrap_or(u32::MAX);
        if tokio::time::Instant::now() >= deadline {
            break (
                BatchResult::Whole(crate::store::gave_up(&what, conflicts, ipam.retry.budget)),
                None,
            );
        }
        let started = tokio::time::Instant::now();
        // The first read may come from the watch or the API server's cache; after a conflict,
        // quorum.
        if base.is_none() && attempt == 0 && !fresh {
            base = ipam.watched(name);
        }
        let current = match base.take() {
            Some(p) => Some(p),
            None => {
                let cached_read = attempt == 0 && !fresh;
                match ipam.get_pool(name, cached_read, deadline).await {
                    Ok(p) => {
                        fresh = !cached_read;
                        p
                    }
                    Err(e) => break (BatchResult::Whole(e), None),
                }
            }
        };
        let mut doc = match &current {
            Some(p) => match doc_from_pool(ipam.namespace(), name, &p.spec) {
                Ok(d) => d,
                Err(e) => break (BatchResult::Whole(e), None),
            },
            None => match &template {
                Some((cidr, network)) => PoolDoc::new(*cidr, network.clone()),
                // Only releases, and the pool does not exist: nothing is held.
                None => {
                    let outs = requests.iter().map(|_| Outcome::Released(Vec::new())).collect();
                    break (BatchResult::PerJob(outs), None);
                }
            },
        };
        if network.is_none() {
            network.clone_from(&doc.network_name);
        }
        let mut evicted = false;
        for (offset, i) in &evict {
            let ours = match (&requests[*i], doc.allocations.get(offset)) {
                (JobRequest::Allocate(req), Some(r)) => {
                    req.owner.is_attachment_of(&r.id, &r.podref, &r.ifname)
                }
                _ => false,
            };
            if ours {
                doc.allocations.remove(offset);
                evicted = true;
            }
        }
        let (outcomes, doc, computed_dirty) =
            compute(name, doc, requests, &blocked, &failed, &mut held_before);
        let dirty = computed_dirty || evicted;

        let current_rv = current.as_ref().and_then(|p| p.metadata.resource_version.clone());
        if dirty && let Some(newer) = ipam.watched_newer(name, current_rv.as_deref()) {
            // Another node wrote since: this write would only lose. Redo on its version.
            Stats::bump(&ipam.stats.rebases);
            contended = true;
            base = Some(newer);
            fresh = false;
            held_before.iter_mut().for_each(|h| *h = None);
            continue;
        }
        // Under contention, wait for this node's turn instead of sending a write that would
        // most likely lose (crate::turn; advisory: the resourceVersion still decides).
        let mut turn_used = None;
        if dirty && let Some(turns) = ipam.turns() {
            if place.is_none() && (contended || turns.others_waiting(ipam.namespace(), name)) {
                let me = Waiter {
                    since: Timestamp::now(),
                    node: turns.node().to_string(),
                };
                if let Err(e) = bounded(turns.queue(&ipam.leases(), name, &me)).await {
                    tracing::debug!(pool = %name, error = %e, "could not queue for a turn");
                }
                place = Some((me, tokio::time::Instant::now()));
            }
            if let Some((me, renewed)) = &mut place {
                let until = deadline
                    .checked_sub((ipam.retry.budget / 4).min(TURN_MARGIN))
                    .unwrap_or(deadline);
                match wait_for_turn(ipam, turns, name, me, renewed, current_rv.as_deref(), until).await {
                    TurnWait::Mine => turn_used = Some(me.mark()),
                    TurnWait::Newer(newer) => {
                        Stats::bump(&ipam.stats.rebases);
                        base = Some(*newer);
                        fresh = false;
                        held_before.iter_mut().for_each(|h| *h = None);
                        continue;
                    }
                    TurnWait::TimeUp => {
                        tracing::debug!(pool = %name, "no turn before the deadline; writing regardless");
                    }
                }
            }
        }
        let written = if dirty {
            match ipam
                .write_pool(name, current.as_ref(), &doc, attempt, turn_used)
                .await
            {
                Ok(w) => Some(w),
                Err(e) => {
                    let lost = matches!(&e, kube::Error::Api(s) if s.code == 409);
                    if let Err(e) = ipam
                        .retry_after_write_failure(e, &what, attempt, started, deadline, &mut conflicts)
                        .await
                    {
                        break (BatchResult::Whole(e), None);
                    }
                    // Redo the whole batch on what is there now: the winner's version from
                    // the watch when it comes in time, else read afresh (quorum).
                    contended |= lost;
                    base = if lost {
                        let until = (tokio::time::Instant::now() + WATCH_WAIT).min(deadline);
                        ipam.wait_watched_newer(name, current_rv.as_deref(), until).await
                    } else {
                        None
                    };
                    if base.is_some() {
                        Stats::bump(&ipam.stats.rebases);
                    }
                    fresh = false;
                    held_before.iter_mut().for_each(|h| *h = None);
                    attempt += 1;
                    continue;
                }
            }
        } else if !fresh {
            // Nothing to write, decided on a copy that may be stale (the last write's answer or
            // the API server's cache): an answer that is not validated by a write must come from
            // a quorum read, or a release could report "nothing held" and an idempotent ADD
            // return an address that was freed meanwhile.
            fresh = true;
            base = None;
            held_before.iter_mut().for_each(|h| *h = None);
            attempt += 1;
            continue;
        } else {
            current
        };
        // What we just wrote is the current pool (the redo below starts from it).
        fresh = true;

        // Claim the overlapping-range reservations of the addresses handed out.
        let to_claim: Vec<(usize, IpAddr, &Owner, bool, u128)> = outcomes
            .iter()
            .zip(requests)
            .enumerate()
            .filter_map(|(i, (o, r))| match (o, r) {
                (Some(Outcome::Allocated(out)), JobRequest::Allocate(req))
                    if req.overlapping_ranges
                        && !claimed.contains_key(&(out.alloc.ip, owner_key(&req.owner))) =>
                {
                    Some((i, out.alloc.ip, &req.owner, out.new, out.offset))
                }
                _ => None,
            })
            .collect();
        let claiming: Vec<_> = to_claim
            .iter()
            .map(|(_, ip, owner, _, _)| ipam.claim_orip(*ip, network.as_deref(), owner, deadline))
            .collect();
        let claims: Vec<_> = futures::stream::iter(claiming)
            .buffered(ORIP_CONCURRENCY)
            .collect()
            .await;
        let mut redo = false;
        for ((i, ip, owner, new, offset), claim) in to_claim.iter().zip(claims) {
            match claim {
                Ok(OripClaim::Mine(created)) => {
                    claimed.insert((*ip, owner_key(owner)), created);
                }
                Ok(OripClaim::Taken(spec)) => {
                    // Also when the attachment held the address before this batch: the
                    // reservation is what keeps overlapping pools apart, so the address moves.
                    if !new {
                        tracing::warn!(%ip, holder = %spec.podref, %owner,
                            "the attachment held this address in its pool, but its overlapping-range \
                             reservation names another holder: it gets another address");
                    }
                    let holder = format!(
                        "pod {} interface {} (OverlappingRangeIPReservation `{}/{}`)",
                        spec.podref,
                        spec.ifname,
                        ipam.namespace(),
                        orip_name(*ip, network.as_deref())
                    );
                    if matches!(&requests[*i], JobRequest::Allocate(r) if !r.requested.is_empty()) {
                        failed[*i] = Some(IpamError::RequestedUnavailable {
                            ip: *ip,
                            pool: name.to_string(),
                            holder,
                        });
                    } else {
                        Stats::bump(&ipam.stats.orip_taken);
                        blocked.insert(*offset);
                    }
                    evict.insert(*offset, *i);
                    redo = true;
                }
                Err(e) => {
                    failed[*i] = Some(e);
                    if *new {
                        evict.insert(*offset, *i);
                    }
                    redo = true;
                }
            }
        }
        if redo {
            // Again from what was just written: the taken addresses come out of the pool and
            // their requests get others.
            base = written;
            attempt += 1;
            continue;
        }
        let outs = outcomes
            .into_iter()
            .zip(failed.iter_mut())
            .map(|(o, f)| match (o, f.take()) {
                (_, Some(e)) => Outcome::Failed(e),
                (Some(o), None) => o,
                (None, None) => Outcome::Failed(mismatch()),
            })
            .collect();
        break (BatchResult::PerJob(outs), written);
    };

    if let (Some(turns), Some(_)) = (ipam.turns(), &place) {
        // Out of line before this worker's next batch can queue again, so that a late "leave"
        // never clears the next batch's place. (The next in line does not wait for this: it goes
        // on when the watch shows this batch's write.)
        // Bounded: with the API server unreachable the place simply expires (turn::LIVE_FOR).
        if let Err(e) = bounded(turns.leave(&ipam.leases(), name)).await {
            tracing::debug!(pool = %name, error = %e, "could not leave the line for a turn (it expires)");
        }
    }

    let requests: Vec<JobRequest<'_>> = jobs.iter().map(JobRequest::of).collect();
    let requests = requests.as_slice();
    // Overlapping-range reservations created for addresses that were not used in the end go
    // again (the attachment's own reservation of a kept address stays).
    let kept: BTreeSet<(IpAddr, OwnerKey)> = match &result {
        BatchResult::PerJob(outs) => outs
            .iter()
            .zip(requests)
            .filter_map(|(o, r)| match (o, r) {
                (Outcome::Allocated(o), JobRequest::Allocate(req)) => {
                    Some((o.alloc.ip, owner_key(&req.owner)))
                }
                _ => None,
            })
            .collect(),
        BatchResult::Whole(_) => BTreeSet::new(),
    };
    let stale: Vec<&(IpAddr, OwnerKey)> = claimed
        .iter()
        .filter(|(k, created)| **created && !kept.contains(*k))
        .map(|(k, _)| k)
        .collect();
    let deleting: Vec<_> = stale
        .iter()
        .map(|(ip, (id, podref, ifname))| {
            ipam.delete_orip_if(
                *ip,
                network.as_deref(),
                id,
                podref.as_deref().unwrap_or(""),
                ifname,
            )
        })
        .collect();
    futures::stream::iter(deleting)
        .buffer_unordered(ORIP_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;

    let result = match result {
        BatchResult::PerJob(mut outs) => {
            for (o, r) in outs.iter_mut().zip(requests) {
                if let (Outcome::Allocated(out), JobRequest::Allocate(req)) = (o, r) {
                    out.orip_created = claimed
                        .get(&(out.alloc.ip, owner_key(&req.owner)))
                        .copied()
                        .unwrap_or(false);
                }
            }
            // The freed addresses' overlapping-range reservations, when they name the freed one.
            let freed: Vec<&Allocation> = outs
                .iter()
                .filter_map(|o| match o {
                    Outcome::Released(a) => Some(a),
                    _ => None,
                })
                .flatten()
                .collect();
            let deleting: Vec<_> = freed
                .iter()
                .map(|a| {
                    ipam.delete_orip_if(
                        a.ip,
                        network.as_deref(),
                        &a.container_id,
                        a.podref.as_deref().unwrap_or(""),
                        &a.ifname,
                    )
                })
                .collect();
            futures::stream::iter(deleting)
                .buffer_unordered(ORIP_CONCURRENCY)
                .collect::<Vec<()>>()
                .await;
            BatchResult::PerJob(outs)
        }
        whole => whole,
    };
    (result, written)
}
