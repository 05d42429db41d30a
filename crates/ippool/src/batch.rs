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
//! being refused, and no node can lose round after round until its requests time out. A waiting
//! batch posts what it adds and removes, and the node whose turn comes writes that with its own
//! (carrying): a carried batch answers from the watch. A carried release answers with what it
//! freed on the copy it posted from, as the newer copy no longer holds it.
//!
//! Claim first ([`BatchingIpam::claiming_first`], the node daemon's engine): a dynamic
//! single-range allocation with overlapping-range reservations does not wait for the pool
//! write. It picks an address free in the watched pool, not claimed by this node, not posted by
//! another node for carrying, searching from a point of the range that is this node's own;
//! creates that address's reservation ([`crate::claim`]; one that exists already means taken:
//! the next candidate), and answers. The pool entry follows as a queued record, written with
//! the next batch (carried, in turn, as any other). An entry found at the offset for another
//! attachment was written pool-first by an ADD whose reservation create then failed (upstream
//! whereabouts racing the claim, or an attempt that gave up): nobody uses the address through
//! it, and the record replaces it. A record that cannot land (the API server is away; another
//! node posted the offset) is queued again until it lands or its attachment is released; the
//! reservation keeps the address meanwhile. A release queues
//! behind the records of its attachment, and deletes the reservations of those that never
//! landed. A daemon killed between a claim and its entry leaves the claim alone in the
//! cluster: [`BatchingIpam::repair_claims`] writes such entries when the daemon is back, and
//! a release looks for such claims of its attachment until that has run. Requests that already hold an address in the pool (a re-ADD), static requests,
//! dual-stack requests, pools that do not exist yet, and pools without reservations
//! (`enable_overlapping_ranges: false`, where upstream whereabouts would not see the claim)
//! take the pool-first path above.
//!
//! A failure of one request (its pool is exhausted, its static address is held) fails that
//! request only. A failure of the pool write (API down past the retry budget, permission) fails
//! every request of the batch with that error, and nothing was written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::ResourceExt;
use netattach_ipam::error::IpamError;
use netattach_ipam::local::unix_now;
use netattach_ipam::pool::{self, PoolDoc, Reservation};
use netattach_ipam::range::pool_name;
use netattach_ipam::store::{Allocation, AllocationRequest, Owner};
use tokio::sync::{mpsc, oneshot};

use crate::claim::{ADDRESS_ANNOTATION, POOL_ANNOTATION};
use crate::crd::{
    IPPool, OverlappingRangeIPReservation, allocation_of, doc_from_pool, orip_name, pool_origin,
};
use crate::store::{KubeIpam, OripClaim, RangeOutcome, Stats, per_range};
use crate::turn::{Changes, Claim, Posted, RENEW_EVERY, Turns, Waiter};
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

/// A pool where a batch saw other nodes this recently counts as contended for the next batch:
/// it queues for a turn (and posts) instead of racing. Without this memory, every burst round
/// that served the whole line would leave it empty, and the nodes' next batches would all write
/// at once and all but one lose.
const CONTENTION_MEMORY: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a node whose turn came waits for the posts of nodes whose batches started with its
/// own (each post is a Lease write and a watch event away), so that one write carries them too
/// instead of leaving them for another write of the large pool. (Waiting up to 100 ms for
/// every node seen in line moments ago to post again did not save writes: most of them are
/// still claiming the reservations of their last batch by then.)
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);

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
    /// Whether dynamic single-range allocations with overlapping-range reservations are
    /// claim-first ([`BatchingIpam::claiming_first`]).
    claim_first: bool,
    claims: Arc<Mutex<Claims>>,
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
    /// Enter an address its reservation already claims (claim-first) in the pool.
    Record {
        claim: Box<Claimed>,
        reply: oneshot::Sender<Result<RangeOutcome, IpamError>>,
    },
}

/// An address claimed by its overlapping-range reservation, and answered, before its pool entry
/// was written.
#[derive(Debug, Clone)]
struct Claimed {
    owner: Owner,
    cidr: ipnet::IpNet,
    network: Option<String>,
    outcome: RangeOutcome,
    /// Its entry was written; kept among the pending until the pool watch shows it, so that no
    /// check made on the watch in between misses it.
    landed: bool,
    /// Found by [`BatchingIpam::repair_claims`] (left by an earlier run of the daemon), not
    /// made by this one.
    repaired: bool,
}

/// The claim-first state of an engine.
#[derive(Debug, Default)]
struct Claims {
    /// Claimed addresses whose pool entry the watch does not show yet, by pool and offset.
    pending: HashMap<String, BTreeMap<u128, Claimed>>,
    /// Offsets whose reservation was found to exist already, by pool, with when: kept off until
    /// the pool view shows them or [`TAKEN_FOR`] passed.
    taken: HashMap<String, HashMap<u128, tokio::time::Instant>>,
    /// The last pool version a candidate was picked on, parsed.
    views: HashMap<String, (Option<String>, PoolDoc)>,
    /// Candidates whose reservation create is in flight, by pool: kept off the other
    /// candidates of this node meanwhile.
    trying: HashMap<String, BTreeSet<u128>>,
    /// The claims the last [`BatchingIpam::repair_claims`] found without their entry, by
    /// reservation name, with the uid and resourceVersion it saw.
    unlanded: HashMap<String, (Option<String>, Option<String>)>,
    /// The attachment labels of those claims.
    unlanded_attachments: BTreeSet<String>,
    /// Whether a repair pass has run: until then, any claim of an earlier run of this daemon
    /// may be without its entry.
    repaired: bool,
    /// Attachments released lately, by attachment label: a repair pass that listed one of
    /// their claims before the release deleted it does not write its entry back.
    released: HashMap<String, tokio::time::Instant>,
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
            claim_first: false,
            claims: Arc::default(),
        }
    }

    /// Claim first: a dynamic single-range allocation with overlapping-range reservations
    /// (`enable_overlapping_ranges`, whereabouts' default) creates the reservation of a
    /// candidate free in the watched pool and answers once that create succeeded; the pool entry
    /// is written after, batched as any other ([`crate::claim`] for the reservation's marks).
    /// Needs the store's pool view (without one, or before the pool exists, it is pool-first).
    /// The node daemon's engine.
    pub fn claiming_first(mut self) -> BatchingIpam {
        self.claim_first = true;
        self
    }

    /// Say that this node has no claims of an earlier run without their entry here (a repair
    /// pass over all of the node's claims found none in this namespace): releases stop looking
    /// for stray claims unless they find nothing in the pools.
    pub fn mark_claims_repaired(&self) {
        self.lock_claims().repaired = true;
    }

    fn lock_claims(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
                    Job::Allocate { reply, .. } | Job::Record { reply, .. } => {
                        drop(reply.send(Err(stopped())))
                    }
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
        // Claim-first only for one range: a later range's failure rolls the earlier ones back
        // with pool writes, which an entry still on its way could outrun.
        let single = req.ranges.len() == 1;
        for sub in per_range(req)? {
            let Some(range) = sub.ranges.first() else { continue };
            let name = pool_name(sub.network_name.as_deref(), &range.cidr);
            if single && let Some(o) = self.claim_first(&name, &sub).await? {
                tracing::info!(pool = %o.alloc.pool, ip = %o.alloc.ip, owner = %req.owner, "claimed");
                return Ok(vec![o.alloc]);
            }
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
        // The attachment's claims whose pool entry has not landed stop landing, and the release
        // queues behind any entry already on its way (both under the claims' lock, which a
        // landing retry takes to queue again): a release never runs before an entry it must
        // remove.
        let (answers, unlanded) = {
            let mut claims = self.lock_claims();
            if self.claim_first {
                claims.released.retain(|_, at| at.elapsed() < RELEASED_FOR);
                claims
                    .released
                    .insert(crate::claim::attachment_label(owner), tokio::time::Instant::now());
            }
            let mut unlanded: Vec<Claimed> = Vec::new();
            for pool in pools {
                if let Some(pending) = claims.pending.get_mut(pool) {
                    let mine: Vec<u128> = pending
                        .iter()
                        .filter(|(_, c)| {
                            owner.releases(
                                &c.owner.container_id,
                                c.owner.podref.as_deref().unwrap_or(""),
                                &c.owner.ifname,
                            )
                        })
                        .map(|(o, _)| *o)
                        .collect();
                    unlanded.extend(mine.iter().filter_map(|o| pending.remove(o)));
                }
            }
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
            (answers, unlanded)
        };
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
        if first_error.is_none() && self.claim_first {
            // Claims whose entry never made it into the pool: their reservation goes here.
            for c in unlanded {
                if !freed.iter().any(|a| a.ip == c.outcome.alloc.ip) {
                    self.ipam
                        .delete_orip_of(c.outcome.alloc.ip, c.network.as_deref(), &c.owner)
                        .await;
                    freed.push(c.outcome.alloc);
                }
            }
            // A claim left by an earlier run of this daemon, killed before its entry landed (or
            // before its ADD was answered, and the runtime's retry got another address): it
            // goes with its attachment, or the repair would write its entry back. Such claims
            // are looked for (one list by the attachment's label) when nothing was in the
            // pools, before the first repair pass, and when that pass found one of this
            // attachment.
            let stray_possible = {
                let claims = self.lock_claims();
                !claims.repaired
                    || claims
                        .unlanded_attachments
                        .contains(&crate::claim::attachment_label(owner))
            };
            if freed.is_empty() || stray_possible {
                self.ipam.release_claims_of(owner).await;
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

impl BatchingIpam {
    /// Claim-first allocation of `req` (one range) in pool `name`: `Ok(None)` when this request
    /// takes the pool-first path instead (see [`BatchingIpam::claiming_first`]; also when the
    /// attachment already holds, or is getting, an address here: the queue answers that one).
    async fn claim_first(
        &self,
        name: &str,
        req: &AllocationRequest,
    ) -> Result<Option<RangeOutcome>, IpamError> {
        if !self.claim_first || !req.overlapping_ranges || !req.requested.is_empty() {
            return Ok(None);
        }
        let Some(range) = req.ranges.first() else {
            return Ok(None);
        };
        // The watched pool, parsed only when it changed since the last claim here (no copy
        // of the pool either way).
        let cached = self.lock_claims().views.get(name).and_then(|v| v.0.clone());
        let Some(fresh) = self.ipam.inspect_watched(name, |p| {
            let rv = &p.metadata.resource_version;
            if rv.is_some() && *rv == cached {
                return Ok(None);
            }
            doc_from_pool(self.ipam.namespace(), name, &p.spec).map(|doc| Some((rv.clone(), doc)))
        }) else {
            return Ok(None);
        };
        let Ok(mut fresh) = fresh else {
            // The pool-first path reports what is wrong with the pool.
            return Ok(None);
        };
        // Other nodes' addresses on their way into the pool, as they posted them for carrying.
        let posted: BTreeSet<u128> = self
            .ipam
            .turns()
            .map(|t| t.posted_by_others(self.ipam.namespace(), name))
            .unwrap_or_default()
            .iter()
            .flat_map(|p| p.changes.adds.keys().filter_map(|k| k.parse::<u128>().ok()))
            .collect();
        // Each node starts its search at its own point of the range, so that nodes rarely
        // reach for the same address.
        let seed = self
            .ipam
            .turns()
            .map_or(0, |t| crate::turn::stable_hash(t.node()));
        let deadline = tokio::time::Instant::now() + self.ipam.retry.budget;
        for _ in 0..CLAIM_TRIES {
            let picked = {
                let mut claims = self.lock_claims();
                let Claims {
                    pending,
                    taken,
                    views,
                    trying,
                    ..
                } = &mut *claims;
                if let Some(newer) = fresh.take() {
                    views.insert(name.to_string(), newer);
                }
                let Some((_, doc)) = views.get_mut(name) else {
                    return Ok(None);
                };
                let pending = pending.entry(name.to_string()).or_default();
                // Landed ones the watch shows now (the pool keeps no allocation time: compare
                // the holder).
                pending.retain(|o, c| {
                    let want = &c.outcome.reservation;
                    !(c.landed
                        && doc.allocations.get(o).is_some_and(|r| {
                            r.id == want.id && r.podref == want.podref && r.ifname == want.ifname
                        }))
                });
                let held = |r: &Reservation| req.owner.is_attachment_of(&r.id, &r.podref, &r.ifname);
                if doc.allocations.values().any(held)
                    || pending.values().any(|c| held(&c.outcome.reservation))
                {
                    return Ok(None);
                }
                let taken = taken.entry(name.to_string()).or_default();
                taken.retain(|o, at| at.elapsed() < TAKEN_FOR && !doc.allocations.contains_key(o));
                let trying = trying.entry(name.to_string()).or_default();
                let avoid: BTreeSet<u128> = pending
                    .keys()
                    .chain(taken.keys())
                    .chain(trying.iter())
                    .chain(posted.iter())
                    .copied()
                    .collect();
                let picked = pick(name, doc, req, &avoid, seed);
                if let Some(o) = &picked {
                    trying.insert(o.offset);
                }
                picked
            };
            // Short of addresses in this view: the pool-first path decides (and says so).
            let Some(outcome) = picked else {
                return Ok(None);
            };
            let ip = outcome.alloc.ip;
            let created = self
                .ipam
                .create_claim(name, ip, req.network_name.as_deref(), &req.owner, deadline)
                .await;
            let done_trying = |claims: &mut Claims| {
                if let Some(t) = claims.trying.get_mut(name) {
                    t.remove(&outcome.offset);
                }
            };
            let created = match created {
                Ok(c) => c,
                Err(e) => {
                    done_trying(&mut self.lock_claims());
                    return Err(e);
                }
            };
            if created {
                let claim = Claimed {
                    owner: req.owner.clone(),
                    cidr: range.cidr,
                    network: req.network_name.clone(),
                    outcome: outcome.clone(),
                    landed: false,
                    repaired: false,
                };
                let recorded = self.record(name, claim);
                done_trying(&mut self.lock_claims());
                if recorded {
                    return Ok(Some(outcome));
                }
                // A claim of the same attachment was recorded meanwhile (the repair of one
                // whose ADD went unanswered): this one goes, and the queue answers with that.
                self.ipam
                    .delete_orip_of(ip, req.network_name.as_deref(), &req.owner)
                    .await;
                return Ok(None);
            }
            let mut claims = self.lock_claims();
            done_trying(&mut claims);
            claims
                .taken
                .entry(name.to_string())
                .or_default()
                .insert(outcome.offset, tokio::time::Instant::now());
        }
        Ok(None)
    }

    /// Write the entries of this node's claims that never landed: `claims` are the reservations
    /// labelled with this node ([`crate::claim::NODE_LABEL`]), listed by the caller
    /// periodically (the daemon: every 15 s). A claim is acted on only when the call before found it without its entry
    /// too, unchanged (same uid and resourceVersion): a release removes the entry before it
    /// deletes the reservation, and one seen in between must not be written back. A claim
    /// whose attachment holds, or is getting, another address in its pool was superseded (its
    /// ADD went unanswered when the daemon was killed, and the runtime's retry got that other
    /// address): its reservation is deleted. A claim marked for deletion, or whose pool is not
    /// in the watch yet, is left alone. Returns how many entries were queued.
    pub async fn repair_claims(&self, claims: Vec<OverlappingRangeIPReservation>) -> usize {
        let mut queued = 0;
        let mut docs: HashMap<String, Option<PoolDoc>> = HashMap::new();
        let seen_before = std::mem::take(&mut self.lock_claims().unlanded);
        let mut seen_now: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
        let mut attachments_now: BTreeSet<String> = BTreeSet::new();
        for orip in claims {
            if orip.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let annotations = orip.annotations();
            let (Some(pool_name), Some(ip)) = (
                annotations.get(POOL_ANNOTATION).cloned(),
                annotations
                    .get(ADDRESS_ANNOTATION)
                    .and_then(|a| a.parse::<IpAddr>().ok()),
            ) else {
                continue;
            };
            let Some(doc) = docs
                .entry(pool_name.clone())
                .or_insert_with(|| {
                    self.ipam
                        .inspect_watched(&pool_name, |p| {
                            doc_from_pool(self.ipam.namespace(), &pool_name, &p.spec).ok()
                        })
                        .flatten()
                })
                .as_ref()
            else {
                continue;
            };
            let s = &orip.spec;
            let owner = Owner::new(
                s.containerid.clone(),
                Some(s.podref.clone()).filter(|p| !p.is_empty()),
                s.ifname.clone(),
            );
            let Some(offset) = offset_in(doc, ip) else {
                continue;
            };
            let same =
                |r: &Reservation| r.id == s.containerid && r.podref == s.podref && r.ifname == s.ifname;
            if doc.allocations.get(&offset).is_some_and(same) {
                continue;
            }
            let name = orip.name_any();
            let version = (orip.metadata.uid.clone(), orip.metadata.resource_version.clone());
            if let Some(label) = orip.labels().get(crate::claim::ATTACHMENT_LABEL) {
                attachments_now.insert(label.clone());
            }
            if seen_before.get(&name) != Some(&version) {
                seen_now.insert(name, version);
                continue;
            }
            let held = |r: &Reservation| owner.is_attachment_of(&r.id, &r.podref, &r.ifname);
            let pending_other = {
                let claims = self.lock_claims();
                let pending = claims.pending.get(&pool_name);
                if pending.is_some_and(|p| p.contains_key(&offset)) {
                    continue;
                }
                pending.is_some_and(|p| p.values().any(|c| held(&c.outcome.reservation)))
            };
            if pending_other || doc.allocations.values().any(held) {
                self.delete_superseded(&orip).await;
                continue;
            }
            self.ipam.remember_claim(&orip);
            let reservation = Reservation {
                id: s.containerid.clone(),
                podref: s.podref.clone(),
                ifname: s.ifname.clone(),
                time: None,
            };
            let alloc = Allocation {
                ip,
                cidr: ipnet::IpNet::new(ip, doc.range.prefix_len()).unwrap_or(doc.range),
                gateway: None,
                pool: pool_name.clone(),
                container_id: s.containerid.clone(),
                podref: owner.podref.clone(),
                ifname: s.ifname.clone(),
                allocated_at: 0,
            };
            let claim = Claimed {
                owner: owner.clone(),
                cidr: doc.range,
                network: doc.network_name.clone(),
                outcome: RangeOutcome {
                    alloc,
                    new: true,
                    offset,
                    reservation,
                    orip_created: true,
                },
                landed: false,
                repaired: true,
            };
            if self.record(&pool_name, claim) {
                tracing::info!(pool = %pool_name, %ip, %owner, "writing the pool entry of a claim that never landed");
                queued += 1;
            } else {
                self.delete_superseded(&orip).await;
            }
        }
        let mut state = self.lock_claims();
        state.unlanded = seen_now;
        state.unlanded_attachments = attachments_now;
        state.repaired = true;
        queued
    }

    /// Delete a claim whose attachment holds, or is getting, another address in its pool.
    async fn delete_superseded(&self, orip: &OverlappingRangeIPReservation) {
        let name = orip.name_any();
        let pre = kube::api::Preconditions {
            uid: orip.metadata.uid.clone(),
            resource_version: orip.metadata.resource_version.clone(),
        };
        match self.ipam.delete_reservation(&name, pre).await {
            Ok(_) => {
                tracing::info!(orip = %name, holder = %orip.spec.podref, "deleted a claim its attachment no longer uses")
            }
            Err(e) => tracing::warn!(orip = %name, error = %e, "cannot delete a superseded claim"),
        }
    }

    /// Queue the pool entry of a claimed address, and keep queueing it until it lands or the
    /// attachment is released. `false` (nothing queued) when another claim of the same
    /// attachment in this pool is pending (an attachment gets one address per range), or when a
    /// repaired claim's attachment was released lately.
    fn record(&self, name: &str, claim: Claimed) -> bool {
        let answer = {
            let mut claims = self.lock_claims();
            if claim.repaired
                && claims
                    .released
                    .get(&crate::claim::attachment_label(&claim.owner))
                    .is_some_and(|at| at.elapsed() < RELEASED_FOR)
            {
                return false;
            }
            let pending = claims.pending.entry(name.to_string()).or_default();
            let owner = &claim.owner;
            if pending.iter().any(|(o, c)| {
                *o != claim.outcome.offset
                    && owner.is_attachment_of(
                        &c.outcome.reservation.id,
                        &c.outcome.reservation.podref,
                        &c.outcome.reservation.ifname,
                    )
            }) {
                return false;
            }
            pending.insert(claim.outcome.offset, claim.clone());
            let (reply, answer) = oneshot::channel();
            self.submit(
                name,
                Job::Record {
                    claim: Box::new(claim.clone()),
                    reply,
                },
            );
            answer
        };
        let engine = self.clone();
        let name = name.to_string();
        tokio::spawn(async move { engine.land(name, claim, answer).await });
        true
    }

    async fn land(
        self,
        name: String,
        claim: Claimed,
        mut answer: oneshot::Receiver<Result<RangeOutcome, IpamError>>,
    ) {
        let offset = claim.outcome.offset;
        let ip = claim.outcome.alloc.ip;
        let mut attempt: u32 = 0;
        loop {
            let failure = match answer.await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e),
                // The engine stopped.
                Err(_) => return,
            };
            let still_pending = |claims: &Claims| {
                claims
                    .pending
                    .get(&name)
                    .and_then(|p| p.get(&offset))
                    .is_some_and(|c| c.outcome.reservation == claim.outcome.reservation)
            };
            let Some(e) = failure else {
                let mut claims = self.lock_claims();
                if still_pending(&claims)
                    && let Some(c) = claims.pending.get_mut(&name).and_then(|p| p.get_mut(&offset))
                {
                    c.landed = true;
                }
                return;
            };
            attempt += 1;
            tracing::warn!(pool = %name, %ip, owner = %claim.owner, attempt, error = %e,
                "a claimed address is not in its pool yet; its reservation keeps it, and the entry is tried again");
            tokio::time::sleep(LANDING_RETRY.saturating_mul(attempt.min(60))).await;
            let claims = self.lock_claims();
            if !still_pending(&claims) {
                return;
            }
            let (reply, next) = oneshot::channel();
            self.submit(
                &name,
                Job::Record {
                    claim: Box::new(claim.clone()),
                    reply,
                },
            );
            answer = next;
        }
    }
}

/// How many candidates a claim-first allocation tries before it leaves the request to the
/// pool-first path.
const CLAIM_TRIES: usize = 8;

/// How long an offset whose reservation was found to exist is kept off claim-first candidates
/// while the pool view does not show it.
const TAKEN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a released attachment's claims are not written back by a repair pass (more than
/// two passes of the daemon's: the release deleted them long before).
const RELEASED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// The wait before queueing a claimed address's pool entry again, times the attempt (up to 60).
const LANDING_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// A claim-first candidate in `doc`: the address the pure allocator picks for `req` with
/// `avoid` taken, searching from `seed`'s point of the range (from its start when that finds
/// none). `None`: no free address.
fn pick(
    name: &str,
    doc: &mut PoolDoc,
    req: &AllocationRequest,
    avoid: &BTreeSet<u128>,
    seed: u64,
) -> Option<RangeOutcome> {
    let placeholders = hold_off(doc, avoid);
    let mut docs = BTreeMap::from([(
        name.to_string(),
        std::mem::replace(doc, PoolDoc::new(doc.range, None)),
    )]);
    let mut pure = req.clone();
    pure.overlapping_ranges = false;
    let mut picked = None;
    for from in [Some(seed), None] {
        let mut attempt = pure.clone();
        if let (Some(seed), Some(range)) = (from, attempt.ranges.first_mut()) {
            search_from(range, seed);
        }
        if let Ok((allocs, _)) = pool::allocate_in(&mut docs, &attempt, unix_now()) {
            picked = allocs.into_iter().next();
            break;
        }
    }
    let mut back = docs.remove(name).unwrap_or_else(|| PoolDoc::new(doc.range, None));
    let outcome = picked.and_then(|alloc| {
        let offset = req.ranges.first()?.offset_of(alloc.ip)?;
        let reservation = back.allocations.remove(&offset)?;
        Some(RangeOutcome {
            alloc,
            new: true,
            offset,
            reservation,
            orip_created: true,
        })
    });
    for o in &placeholders {
        back.allocations.remove(o);
    }
    *doc = back;
    outcome
}

/// The offset of `ip` in `doc`'s range.
fn offset_in(doc: &PoolDoc, ip: IpAddr) -> Option<u128> {
    use netattach_ipam::range::ip_to_u128;
    doc.range
        .contains(&ip)
        .then(|| ip_to_u128(ip).checked_sub(ip_to_u128(doc.range.network())))
        .flatten()
}

/// Move `range`'s start to `seed`'s point of it (taken modulo its size).
fn search_from(range: &mut netattach_ipam::range::IpRange, seed: u64) {
    let (start, end) = range.bounds();
    if let Some(from) = end
        .checked_sub(start)
        .and_then(|span| span.checked_add(1))
        .and_then(|len| range.ip_at(start + u128::from(seed) % len))
    {
        range.start = from;
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
    // When a batch last saw other nodes at this pool.
    let mut contended_at: Option<tokio::time::Instant> = None;
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        let hot = contended_at.is_some_and(|at| at.elapsed() < CONTENTION_MEMORY);
        let (result, written, contended) =
            settle(&ipam, &pool, last_written.take(), hot, &mut jobs, &mut queue).await;
        if contended {
            contended_at = Some(tokio::time::Instant::now());
        }
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
    let (result, _, _) = settle(ipam, &name, None, false, &mut jobs, &mut queue).await;
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
            (Job::Allocate { reply, .. } | Job::Record { reply, .. }, Outcome::Allocated(o)) => {
                drop(reply.send(Ok(o)))
            }
            (Job::Release { reply, .. }, Outcome::Released(a)) => drop(reply.send(Ok(a))),
            (Job::Allocate { reply, .. } | Job::Record { reply, .. }, Outcome::Failed(e)) => {
                drop(reply.send(Err(e)))
            }
            (Job::Release { reply, .. }, Outcome::Failed(e)) => drop(reply.send(Err(e))),
            (Job::Allocate { reply, .. } | Job::Record { reply, .. }, Outcome::Released(_)) => {
                drop(reply.send(Err(mismatch())))
            }
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
    Record(&'a Claimed),
}

impl<'a> JobRequest<'a> {
    fn of(job: &'a Job) -> JobRequest<'a> {
        match job {
            Job::Allocate { req, .. } => JobRequest::Allocate(req),
            Job::Release { owner, .. } => JobRequest::Release(owner),
            Job::Record { claim, .. } => JobRequest::Record(claim),
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

/// Put a [`placeholder`] at every offset of `avoid` that `doc` leaves free, so the allocator
/// keeps off it; returns those offsets (to take the placeholders out again).
fn hold_off(doc: &mut PoolDoc, avoid: &BTreeSet<u128>) -> Vec<u128> {
    let placeholders: Vec<u128> = avoid
        .iter()
        .copied()
        .filter(|o| !doc.allocations.contains_key(o))
        .collect();
    for o in &placeholders {
        doc.allocations.insert(*o, placeholder());
    }
    placeholders
}

/// Where a batch looks for new addresses.
#[derive(Debug, Default)]
struct Search {
    /// Offsets to leave alone (placeholders while the batch is computed): those whose
    /// overlapping-range reservation another attachment holds, and those other waiting nodes
    /// posted.
    avoid: BTreeSet<u128>,
    /// New dynamic addresses are searched from this point of the range on (taken modulo its
    /// size) instead of from its start, so that nodes computing batches at the same moment pick
    /// different addresses to post.
    from: Option<u64>,
}

/// An attachment as a map key.
type OwnerKey = (String, Option<String>, String);

fn owner_key(o: &Owner) -> OwnerKey {
    (o.container_id.clone(), o.podref.clone(), o.ifname.clone())
}

/// Run the requests in order on `doc`. Jobs with a final failure (`failed`) are skipped
/// (`None`). Returns the outcomes, the document to write and whether it changed.
///
/// `published` maps the offsets this batch posted for carrying to their jobs: an attachment
/// found at an offset its own job posted got it from this batch (carried by another node), so
/// it does not count as held before. `freed_before` holds what each release freed in an earlier
/// computation of this batch: a release answers with those too, as their entries are gone now
/// (another node's write carried the release, or this batch's own write made them go).
fn compute(
    name: &str,
    doc: PoolDoc,
    requests: &[JobRequest<'_>],
    search: &Search,
    failed: &[Option<IpamError>],
    held_before: &mut [Option<bool>],
    (published, freed_before): (&HashMap<u128, usize>, &HashMap<usize, Vec<Allocation>>),
) -> (Vec<Option<Outcome>>, PoolDoc, bool) {
    let mut doc = doc;
    let placeholders = hold_off(&mut doc, &search.avoid);
    let mut docs = BTreeMap::from([(name.to_string(), doc)]);
    let now = unix_now();
    let mut dirty = false;
    let mut outcomes = Vec::with_capacity(requests.len());
    for (job, ((request, failure), held)) in requests
        .iter()
        .zip(failed)
        .zip(held_before.iter_mut())
        .enumerate()
    {
        if failure.is_some() {
            outcomes.push(None);
            continue;
        }
        let outcome = match request {
            JobRequest::Release(owner) => {
                let (mut freed, changed) = pool::release_in(&mut docs, owner);
                dirty |= !changed.is_empty();
                for before in freed_before.get(&job).into_iter().flatten() {
                    if !freed.iter().any(|f| f.ip == before.ip) {
                        freed.push(before.clone());
                    }
                }
                Outcome::Released(freed)
            }
            JobRequest::Record(claim) => {
                let (offset, want) = (claim.outcome.offset, &claim.outcome.reservation);
                match docs.get_mut(name) {
                    Some(doc) => match doc.allocations.get(&offset) {
                        None => {
                            doc.allocations.insert(offset, want.clone());
                            dirty = true;
                            Outcome::Allocated(claim.outcome.clone())
                        }
                        Some(r) if claim.owner.is_attachment_of(&r.id, &r.podref, &r.ifname) => {
                            Outcome::Allocated(claim.outcome.clone())
                        }
                        // Another node's pending add, posted for carrying: its reservation
                        // create fails (the claim holds it) and it takes the address out again.
                        Some(r) if r.ifname.starts_with('\0') => {
                            Outcome::Failed(IpamError::RequestedUnavailable {
                                ip: claim.outcome.alloc.ip,
                                pool: name.to_string(),
                                holder: "an attachment on its way into the pool".to_string(),
                            })
                        }
                        // An entry whose holder does not hold the address's reservation (the
                        // claim does): written pool-first by an ADD whose reservation create
                        // then failed (upstream whereabouts racing the claim, or an attempt
                        // that gave up), so nobody uses the address through it. The claim's
                        // entry replaces it.
                        Some(r) => {
                            tracing::warn!(pool = name, ip = %claim.outcome.alloc.ip, stale = %r.podref,
                                holder = %claim.owner, "a pool entry without the address's reservation is replaced by the claim's");
                            doc.allocations.insert(offset, want.clone());
                            dirty = true;
                            Outcome::Allocated(claim.outcome.clone())
                        }
                    },
                    None => Outcome::Failed(mismatch()),
                }
            }
            JobRequest::Allocate(req) => {
                // Whether the attachment held an address here before this batch: decided on the
                // first document the batch sees that it did not write itself.
                let held_before = *held.get_or_insert_with(|| {
                    docs.get(name).is_some_and(|d| {
                        d.allocations.iter().any(|(offset, r)| {
                            req.owner.is_attachment_of(&r.id, &r.podref, &r.ifname)
                                && published.get(offset) != Some(&job)
                        })
                    })
                });
                let mut pure = (*req).clone();
                pure.overlapping_ranges = false;
                if let Some(seed) = search.from
                    && pure.requested.is_empty()
                    && let Some(range) = pure.ranges.first_mut()
                {
                    search_from(range, seed);
                }
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

/// What `doc` changes in `current`, the pool it was computed on, in the pool's own form: the
/// entries it adds and the ones it removes. `None` when it changes an entry in place or there
/// is no pool yet: only additions and removals can be carried by another node's write.
fn changes(current: Option<&IPPool>, doc: &PoolDoc) -> Option<Changes> {
    let held = &current?.spec.allocations;
    let mut out = Changes::default();
    let mut kept = 0_usize;
    for (offset, r) in &doc.allocations {
        let key = offset.to_string();
        let entry = allocation_of(r);
        match held.get(&key) {
            Some(e) if *e == entry => kept += 1,
            Some(_) => return None,
            None => {
                out.adds.insert(key, entry);
            }
        }
    }
    if kept < held.len() {
        for (key, e) in held {
            if !doc.allocations.contains_key(&key.parse::<u128>().ok()?) {
                out.removes.insert(key.clone(), e.clone());
            }
        }
    }
    Some(out)
}

/// An attachment as the pool stores it, for the lookups of [`carry`].
type EntryKey = (String, String);

/// Applies to `doc` what other waiting nodes posted, in line order, each node's changes all or
/// none: every offset it adds inside the range and free (or holding that very entry already),
/// and no attachment it adds holding another address of the pool (unless that address is one
/// it removes). An entry it removes goes only while it is exactly the one posted: one that is
/// gone or changed already is not the waiter's to remove any more. Returns the marks of the
/// turns it served (for [`crate::turn::DONE_ANNOTATION`]) and how many entries it added or
/// removed.
fn carry(doc: &mut PoolDoc, posted: &[Posted], now: u64) -> (Vec<String>, u64) {
    let mut marks = Vec::new();
    let mut carried = 0;
    if posted.iter().all(|p| p.changes.is_empty()) {
        return (marks, carried);
    }
    // Where each attachment is, by (podref, ifname) and by (container id, ifname): the two ways
    // an owner recognises its entry (`Owner::is_attachment_of`).
    let mut by_pod: HashMap<EntryKey, u128> = HashMap::new();
    let mut by_id: HashMap<EntryKey, u128> = HashMap::new();
    for (offset, r) in &doc.allocations {
        if !r.podref.is_empty() {
            by_pod.insert((r.podref.clone(), r.ifname.clone()), *offset);
        }
        by_id.insert((r.id.clone(), r.ifname.clone()), *offset);
    }
    'waiters: for p in posted.iter().filter(|p| !p.changes.is_empty()) {
        let mut removing = BTreeSet::new();
        for (key, e) in &p.changes.removes {
            let Ok(offset) = key.parse::<u128>() else {
                continue 'waiters;
            };
            if doc
                .allocations
                .get(&offset)
                .is_some_and(|r| allocation_of(r) == *e)
            {
                removing.insert(offset);
            }
        }
        let mut entries = Vec::with_capacity(p.changes.adds.len());
        for (key, e) in &p.changes.adds {
            let Ok(offset) = key.parse::<u128>() else {
                continue 'waiters;
            };
            if doc.ip_at(offset).is_none() {
                continue 'waiters;
            }
            let free = doc
                .allocations
                .get(&offset)
                .is_none_or(|r| allocation_of(r) == *e);
            let elsewhere = |at: Option<&u128>| at.is_some_and(|at| *at != offset && !removing.contains(at));
            let pod = (e.podref.clone(), e.ifname.clone());
            let id = (e.id.clone(), e.ifname.clone());
            if !free || (!e.podref.is_empty() && elsewhere(by_pod.get(&pod))) || elsewhere(by_id.get(&id)) {
                continue 'waiters;
            }
            entries.push((offset, e, pod, id));
        }
        for offset in &removing {
            if let Some(r) = doc.allocations.remove(offset) {
                for (index, key) in [
                    (&mut by_pod, (r.podref, r.ifname.clone())),
                    (&mut by_id, (r.id, r.ifname)),
                ] {
                    if index.get(&key) == Some(offset) {
                        index.remove(&key);
                    }
                }
                carried += 1;
            }
        }
        for (offset, e, pod, id) in entries {
            if doc.allocations.contains_key(&offset) {
                continue;
            }
            doc.allocations.insert(
                offset,
                Reservation {
                    id: e.id.clone(),
                    podref: e.podref.clone(),
                    ifname: e.ifname.clone(),
                    time: Some(now),
                },
            );
            if !e.podref.is_empty() {
                by_pod.insert(pod, offset);
            }
            by_id.insert(id, offset);
            carried += 1;
        }
        marks.push(p.waiter.mark());
    }
    (marks, carried)
}

/// Where a newer pool leaves what a waiting batch posted.
#[derive(Debug, PartialEq, Eq)]
enum Posting {
    /// Every posted addition is in it and every posted removal gone: another node's write
    /// carried the batch.
    Carried,
    /// One of the posted offsets holds someone else now: the batch must be redone (and posted
    /// again).
    Collided,
    /// Not written yet, still free.
    Open,
}

fn judge(pool: &IPPool, posted: &Changes) -> Posting {
    let mut all = true;
    for (key, entry) in &posted.adds {
        match pool.spec.allocations.get(key) {
            Some(held) if held == entry => {}
            Some(_) => return Posting::Collided,
            None => all = false,
        }
    }
    if posted
        .removes
        .iter()
        .any(|(key, entry)| pool.spec.allocations.get(key) == Some(entry))
    {
        all = false;
    }
    if all { Posting::Carried } else { Posting::Open }
}

/// Whether a batch that has nothing to write was settled by writes seen since it started: every
/// job got an address that it posted itself (a pool that shows them all was written, with them,
/// after they were posted: another node carried the batch), or is a release whose entries this
/// batch saw held on an earlier copy and finds gone on this newer one (only those give a release
/// something freed without a write of its own).
fn all_carried(outcomes: &[Option<Outcome>], published: &HashMap<u128, usize>) -> bool {
    !outcomes.is_empty()
        && outcomes.iter().enumerate().all(|(i, o)| match o {
            Some(Outcome::Allocated(out)) => published.get(&out.offset) == Some(&i),
            Some(Outcome::Released(freed)) => !freed.is_empty(),
            _ => false,
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

/// A batch's place in line for its pool.
struct Place {
    me: Waiter,
    /// When the Lease was last written.
    renewed: tokio::time::Instant,
    /// Whether that write went through (if not, the watch may never show the place).
    queued: bool,
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
/// [`RENEW_EVERY`] meanwhile, with `pending`, what the batch posted. The versions the others
/// write meanwhile are only looked at for the posted offsets: when one carried them all or gave
/// one to someone else, the batch is redone on it right away; otherwise only when the turn
/// comes, once, on the newest one.
async fn wait_for_turn(
    ipam: &KubeIpam,
    turns: &Turns,
    name: &str,
    place: &mut Place,
    current_rv: Option<&str>,
    until: tokio::time::Instant,
    pending: &Changes,
) -> TurnWait {
    loop {
        if !pending.is_empty()
            && ipam
                .inspect_watched_newer(name, current_rv, |p| judge(p, pending))
                .is_some_and(|posting| posting != Posting::Open)
            && let Some(newer) = ipam.watched_newer(name, current_rv)
        {
            return TurnWait::Newer(Box::new(newer));
        }
        let done = ipam.watched_annotation(name, crate::turn::DONE_ANNOTATION);
        // Only once the watch shows this node's own place: nodes that queued at the same
        // moment then see each other, and only the first of them writes.
        if turns.my_turn(ipam.namespace(), name, &place.me, done.as_deref(), place.queued) {
            if let Some(newer) = ipam.watched_newer(name, current_rv) {
                return TurnWait::Newer(Box::new(newer));
            }
            // One writer per pool version: claim it, unless another node's claim on this version
            // is under way (its write will show in the watch) or the copy here is behind.
            match current_rv.map(|rv| (rv, turns.claim_of(ipam.namespace(), name, rv))) {
                None => return TurnWait::Mine,
                Some((_, Claim::Taken | Claim::Behind)) => {}
                Some((rv, Claim::Open(seen))) => {
                    match tokio::time::timeout(RENEW_EVERY, turns.claim(&ipam.leases(), name, rv, seen)).await
                    {
                        Ok(Ok(true)) => return TurnWait::Mine,
                        Ok(Ok(false)) => Stats::bump(&ipam.stats.claims_lost),
                        // Advisory: the write's resourceVersion still decides.
                        Ok(Err(e)) => {
                            tracing::debug!(pool = %name, error = %e, "could not claim the pool's writer Lease");
                            return TurnWait::Mine;
                        }
                        Err(_) => return TurnWait::Mine,
                    }
                }
            }
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return TurnWait::TimeUp;
        }
        if now.duration_since(place.renewed) >= RENEW_EVERY {
            place.renewed = now;
            place.queued = match bounded(turns.queue(&ipam.leases(), name, &place.me, pending)).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(pool = %name, error = %e, "could not renew the place in line");
                    false
                }
            };
        }
        tokio::time::sleep_until((tokio::time::Instant::now() + TURN_POLL).min(until)).await;
    }
}

/// What a batch holds, and must account for, across its attempts.
#[derive(Default)]
struct Ledger {
    /// Offsets whose overlapping-range reservation another attachment holds.
    blocked: BTreeSet<u128>,
    /// Reservations this batch wrote that must go again (their overlapping-range reservation is
    /// taken), by offset → the job that got it.
    evict: BTreeMap<u128, usize>,
    /// Final failures of single jobs (their claim failed for good).
    failed: Vec<Option<IpamError>>,
    /// Overlapping-range reservations this batch holds, by (address, attachment) → created by us.
    claimed: HashMap<(IpAddr, OwnerKey), bool>,
}

/// Where a batch claims reservations.
struct Scope<'a> {
    ipam: &'a KubeIpam,
    pool: &'a str,
    network: Option<&'a str>,
    deadline: tokio::time::Instant,
}

impl Ledger {
    /// Claims the overlapping-range reservations of the addresses `outcomes` hand out that the
    /// batch does not hold yet, and books the answers.
    /// Returns whether the batch must be redone: a reservation another attachment holds (the
    /// address goes; its request gets another, or fails if it asked for this one), or one that
    /// could not be claimed (its request fails).
    async fn claim(
        &mut self,
        scope: &Scope<'_>,
        requests: &[JobRequest<'_>],
        outcomes: &[Option<Outcome>],
    ) -> bool {
        let Scope {
            ipam,
            pool: name,
            network,
            deadline,
        } = *scope;
        let to_claim: Vec<(usize, IpAddr, &Owner, bool, u128)> = outcomes
            .iter()
            .zip(requests)
            .enumerate()
            .filter_map(|(i, (o, r))| match (o, r) {
                (Some(Outcome::Allocated(out)), JobRequest::Allocate(req))
                    if req.overlapping_ranges
                        && !self.claimed.contains_key(&(out.alloc.ip, owner_key(&req.owner))) =>
                {
                    Some((i, out.alloc.ip, &req.owner, out.new, out.offset))
                }
                _ => None,
            })
            .collect();
        if to_claim.is_empty() {
            return false;
        }
        let claiming: Vec<_> = to_claim
            .iter()
            .map(|(_, ip, owner, _, _)| ipam.claim_orip(*ip, network, owner, deadline))
            .collect();
        let claims: Vec<_> = futures::stream::iter(claiming)
            .buffered(ORIP_CONCURRENCY)
            .collect()
            .await;
        let mut redo = false;
        for ((i, ip, owner, new, offset), claim) in to_claim.iter().zip(claims) {
            match claim {
                Ok(OripClaim::Mine(created)) => {
                    self.claimed.insert((*ip, owner_key(owner)), created);
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
                        orip_name(*ip, network)
                    );
                    if matches!(&requests[*i], JobRequest::Allocate(r) if !r.requested.is_empty()) {
                        self.failed[*i] = Some(IpamError::RequestedUnavailable {
                            ip: *ip,
                            pool: name.to_string(),
                            holder,
                        });
                    } else {
                        Stats::bump(&ipam.stats.orip_taken);
                        self.blocked.insert(*offset);
                    }
                    self.evict.insert(*offset, *i);
                    redo = true;
                }
                Err(e) => {
                    self.failed[*i] = Some(e);
                    if *new {
                        self.evict.insert(*offset, *i);
                        // The create may have been applied with no answer coming back (the API
                        // server went away mid-request): it goes again when the batch ends,
                        // if it names this attachment (read first), unless the address is kept.
                        self.claimed.entry((*ip, owner_key(owner))).or_insert(true);
                    }
                    redo = true;
                }
            }
        }
        redo
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
///
/// `hot`: an earlier batch saw other nodes at this pool moments ago, so this one takes a turn
/// from the start. The last value returned says whether this batch saw them.
async fn settle(
    ipam: &KubeIpam,
    name: &str,
    cached: Option<IPPool>,
    hot: bool,
    jobs: &mut Vec<Job>,
    queue: &mut mpsc::UnboundedReceiver<Job>,
) -> (BatchResult, Option<IPPool>, bool) {
    let started_at = tokio::time::Instant::now();
    let what = format!("writing IPPool `{}/{name}`", ipam.namespace());
    let mut ledger = Ledger::default();
    let mut held_before: Vec<Option<bool>> = Vec::new();
    let mut network: Option<String> = None;
    let mut base = cached;
    // Whether `base` is known to be the current pool (a quorum read, or this batch's own write).
    let mut fresh = false;
    let mut attempt: u32 = 0;
    let mut conflicts: u32 = 0;
    // Whether other nodes were seen at this pool (a lost write, a rebase, a turn, a carried
    // batch), now or by a batch moments ago.
    let mut contended = hot;
    // This batch's place in line for the pool (crate::turn).
    let mut place: Option<Place> = None;
    // What the batch posted on its turn Lease for another node to carry, and every offset it
    // ever posted to add → the job it was for.
    let mut posted = Changes::default();
    let mut published: HashMap<u128, usize> = HashMap::new();
    // What each release freed in an earlier computation, by job (`compute`).
    let mut freed_before: HashMap<usize, Vec<Allocation>> = HashMap::new();
    // Where this batch searches for new addresses under contention (`Search::from`).
    let mut spread: Option<u64> = None;

    let (result, written) = loop {
        // Take in what was queued meanwhile, unless this batch already holds reservations it
        // must account for.
        if ledger.claimed.is_empty() && ledger.evict.is_empty() {
            while jobs.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        ledger.failed.resize_with(jobs.len(), || None);
        held_before.resize(jobs.len(), None);
        let requests: Vec<JobRequest<'_>> = jobs.iter().map(JobRequest::of).collect();
        let requests = requests.as_slice();
        // The range and network of the pool, from the first allocation (to create an absent pool).
        let template = requests.iter().find_map(|r| match r {
            JobRequest::Allocate(req) => req
                .ranges
                .first()
                .map(|range| (range.cidr, req.network_name.clone())),
            JobRequest::Record(c) => Some((c.cidr, c.network.clone())),
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
        for (offset, i) in &ledger.evict {
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
        // Keep off the offsets other waiting nodes posted (the next write in turn carries them),
        // unless that leaves this batch without addresses.
        let others: BTreeSet<u128> = ipam
            .turns()
            .map(|t| t.posted_by_others(ipam.namespace(), name))
            .unwrap_or_default()
            .iter()
            .flat_map(|p| p.changes.adds.keys().filter_map(|k| k.parse::<u128>().ok()))
            .collect();
        // Under contention, new addresses are searched from a point of the range drawn once per
        // batch, so that batches computed at the same moment post different ones.
        if spread.is_none()
            && let Some(turns) = ipam.turns()
            && (contended || !others.is_empty() || turns.others_waiting(ipam.namespace(), name))
        {
            spread = Some(fastrand::u64(..));
        }
        let plain = Search {
            avoid: ledger.blocked.clone(),
            from: None,
        };
        let spread_out = Search {
            avoid: ledger.blocked.union(&others).copied().collect(),
            from: spread,
        };
        let unspread = (!others.is_empty() || spread.is_some()).then(|| doc.clone());
        let (mut outcomes, mut doc, mut computed_dirty) = compute(
            name,
            doc,
            requests,
            &spread_out,
            &ledger.failed,
            &mut held_before,
            (&published, &freed_before),
        );
        if let Some(unspread) = unspread
            && outcomes
                .iter()
                .any(|o| matches!(o, Some(Outcome::Failed(IpamError::Exhausted { .. }))))
        {
            // Short of addresses past the point or beside the posted ones: from the start, and
            // regardless of what others posted.
            (outcomes, doc, computed_dirty) = compute(
                name,
                unspread,
                requests,
                &plain,
                &ledger.failed,
                &mut held_before,
                (&published, &freed_before),
            );
        }
        let dirty = computed_dirty || evicted;
        for (i, o) in outcomes.iter().enumerate() {
            if let Some(Outcome::Released(freed)) = o
                && !freed.is_empty()
            {
                freed_before.insert(i, freed.clone());
            }
        }

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
        let mut carried = 0;
        if dirty && let Some(turns) = ipam.turns() {
            let join = place.is_none() && (contended || turns.others_waiting(ipam.namespace(), name));
            if join || place.is_some() {
                // Post what this batch adds and removes, for the node whose turn comes first to
                // carry (not while it takes back addresses it wrote: those writes are its own).
                let pending = if ledger.evict.is_empty() {
                    changes(current.as_ref(), &doc).unwrap_or_default()
                } else {
                    Changes::default()
                };
                if join || pending != posted {
                    for (i, o) in outcomes.iter().enumerate() {
                        if let Some(Outcome::Allocated(out)) = o
                            && pending.adds.contains_key(&out.offset.to_string())
                        {
                            published.insert(out.offset, i);
                        }
                    }
                    let me = match &place {
                        Some(p) => p.me.clone(),
                        None => Waiter {
                            since: Timestamp::now(),
                            node: turns.node().to_string(),
                        },
                    };
                    let queued = match bounded(turns.queue(&ipam.leases(), name, &me, &pending)).await {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::debug!(pool = %name, error = %e, "could not queue for a turn");
                            false
                        }
                    };
                    place = Some(Place {
                        me,
                        renewed: tokio::time::Instant::now(),
                        queued,
                    });
                    posted = pending;
                }
            }
            if let Some(place) = &mut place {
                let until = deadline
                    .checked_sub((ipam.retry.budget / 4).min(TURN_MARGIN))
                    .unwrap_or(deadline);
                let waited =
                    wait_for_turn(ipam, turns, name, place, current_rv.as_deref(), until, &posted).await;
                let me = &place.me;
                match waited {
                    TurnWait::Mine => {
                        // The others' posted batches ride on this write. Nodes whose batches
                        // started with this one post a few ms later: give them that long (the
                        // claim keeps every other writer back meanwhile).
                        if place.queued {
                            tokio::time::sleep(GATHER).await;
                        }
                        let others = turns.posted_by_others(ipam.namespace(), name);
                        let (served, added) = carry(&mut doc, &others, unix_now());
                        tracing::debug!(pool = %name, in_line = others.len(),
                            posted = others.iter().filter(|p| !p.changes.is_empty()).count(),
                            served = served.len(), carried = added, own = outcomes.len(),
                            base = current_rv.as_deref().unwrap_or(""), "writing in turn");
                        carried = added;
                        turn_used = Some(
                            std::iter::once(me.mark())
                                .chain(served)
                                .collect::<Vec<_>>()
                                .join(","),
                        );
                    }
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
            let in_turn = turn_used.is_some();
            match ipam
                .write_pool(name, current.as_ref(), &doc, attempt, turn_used)
                .await
            {
                Ok(w) => {
                    ipam.stats.carried.fetch_add(carried, Ordering::Relaxed);
                    Some(w)
                }
                Err(e) => {
                    let lost = matches!(&e, kube::Error::Api(s) if s.code == 409);
                    if lost {
                        tracing::debug!(pool = %name, attempt, in_turn, queued = place.is_some(), carried,
                            base = current_rv.as_deref().unwrap_or(""), "pool write lost");
                    }
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
        } else if !fresh && !all_carried(&outcomes, &published) {
            // Nothing to write, decided on a copy that may be stale (the last write's answer or
            // the API server's cache): an answer that is not validated by a write must come from
            // a quorum read, or a release could report "nothing held" and an idempotent ADD
            // return an address that was freed meanwhile. (Not so when every address is one the
            // batch posted: that copy holds another node's write made after the post.)
            fresh = true;
            base = None;
            held_before.iter_mut().for_each(|h| *h = None);
            attempt += 1;
            continue;
        } else {
            if !fresh {
                Stats::bump(&ipam.stats.carried_in);
            }
            current
        };
        // What we just wrote is the current pool (the redo below starts from it).
        fresh = true;

        // Claim the overlapping-range reservations of the addresses handed out.
        let scope = Scope {
            ipam,
            pool: name,
            network: network.as_deref(),
            deadline,
        };
        let redo = ledger.claim(&scope, requests, &outcomes).await;
        if redo {
            // Again from what was just written: the taken addresses come out of the pool and
            // their requests get others.
            base = written;
            attempt += 1;
            continue;
        }
        let outs = outcomes
            .into_iter()
            .zip(ledger.failed.iter_mut())
            .map(|(o, f)| match (o, f.take()) {
                (_, Some(e)) => Outcome::Failed(e),
                (Some(o), None) => o,
                (None, None) => Outcome::Failed(mismatch()),
            })
            .collect();
        break (BatchResult::PerJob(outs), written);
    };

    let place_taken = place.is_some();
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
    let stale: Vec<&(IpAddr, OwnerKey)> = ledger
        .claimed
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
                    out.orip_created = ledger
                        .claimed
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
    (result, written, contended || place_taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{IPAllocation, IPPoolSpec};
    use crate::turn::Allocations;
    use netattach_ipam::range::IpRange;

    fn entry(pod: &str) -> IPAllocation {
        IPAllocation {
            id: format!("ctr-{pod}"),
            podref: format!("ns/{pod}"),
            ifname: "net1".into(),
        }
    }

    fn allocations(entries: &[(u128, &str)]) -> Allocations {
        entries
            .iter()
            .map(|(offset, pod)| (offset.to_string(), entry(pod)))
            .collect()
    }

    fn pool(entries: &[(u128, &str)]) -> IPPool {
        IPPool::new(
            "net-198.18.7.0-24",
            IPPoolSpec {
                range: "198.18.7.0/24".into(),
                allocations: allocations(entries),
            },
        )
    }

    fn doc(entries: &[(u128, &str)]) -> PoolDoc {
        let p = pool(entries);
        doc_from_pool("ns", "net-198.18.7.0-24", &p.spec).expect("doc")
    }

    fn posted(node: &str, secs: i64, entries: &[(u128, &str)]) -> Posted {
        releasing(node, secs, entries, &[])
    }

    /// A waiter that posted `adds` and `removes`.
    fn releasing(node: &str, secs: i64, adds: &[(u128, &str)], removes: &[(u128, &str)]) -> Posted {
        Posted {
            waiter: Waiter {
                since: Timestamp::from_second(1_700_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH),
                node: node.into(),
            },
            changes: Changes {
                adds: allocations(adds),
                removes: allocations(removes),
            },
        }
    }

    #[test]
    fn additions_and_removals_can_be_carried_but_not_an_entry_changing_hands() {
        let base = pool(&[(1, "a"), (2, "b")]);
        assert_eq!(
            changes(Some(&base), &doc(&[(1, "a"), (2, "b"), (3, "c"), (9, "d")])),
            Some(Changes {
                adds: allocations(&[(3, "c"), (9, "d")]),
                removes: Allocations::new(),
            })
        );
        assert_eq!(
            changes(Some(&base), &doc(&[(2, "b"), (3, "c")])),
            Some(Changes {
                adds: allocations(&[(3, "c")]),
                removes: allocations(&[(1, "a")]),
            }),
            "a release and an allocation"
        );
        assert_eq!(
            changes(Some(&base), &doc(&[(1, "a"), (2, "x"), (3, "c")])),
            None,
            "an entry changed hands"
        );
        assert_eq!(changes(None, &doc(&[(3, "c")])), None, "the pool is created");
    }

    #[test]
    fn a_posted_release_removes_only_the_entry_it_names() {
        let mut d = doc(&[(1, "a"), (2, "b"), (3, "x")]);
        let (served, carried) = carry(
            &mut d,
            &[
                // Releases a and re-adds it elsewhere in one batch: both go through.
                releasing("node-2", 1, &[(5, "a")], &[(1, "a")]),
                // Offset 3 holds x now, not the c it posted: x stays, the turn is served.
                releasing("node-3", 2, &[], &[(3, "c")]),
                releasing("node-4", 3, &[], &[(2, "b")]),
            ],
            42,
        );
        assert_eq!(carried, 3, "a out, a in, b out");
        assert_eq!(served.len(), 3);
        let held: Vec<(u128, String)> = d.allocations.iter().map(|(o, r)| (*o, r.id.clone())).collect();
        assert_eq!(held, vec![(3, "ctr-x".to_string()), (5, "ctr-a".to_string())]);
    }

    #[test]
    fn a_release_freed_earlier_in_the_batch_still_answers_once_its_entry_is_gone() {
        let owner = Owner::new("ctr-b", Some("ns/b".into()), "net1");
        let requests = [JobRequest::Release(&owner)];
        let run = |d: PoolDoc, freed_before: &HashMap<usize, Vec<Allocation>>| {
            let (outcomes, _, dirty) = compute(
                "net-198.18.7.0-24",
                d,
                &requests,
                &Search::default(),
                &[None],
                &mut [None],
                (&HashMap::new(), freed_before),
            );
            let freed: Vec<IpAddr> = match outcomes.first() {
                Some(Some(Outcome::Released(a))) => a.iter().map(|a| a.ip).collect(),
                _ => Vec::new(),
            };
            (freed, dirty, all_carried(&outcomes, &HashMap::new()))
        };
        let ip: IpAddr = "198.18.7.2".parse().expect("ip");
        // Held: freed, a write to make.
        let (freed, dirty, _) = run(doc(&[(1, "a"), (2, "b")]), &HashMap::new());
        assert_eq!((freed.clone(), dirty), (vec![ip], true));
        // Gone on a newer copy, after this batch saw it held (another node's write carried the
        // release): the same answer, nothing to write, no read needed.
        // What the first computation freed, as `settle` keeps it.
        let mut docs = BTreeMap::from([("net-198.18.7.0-24".to_string(), doc(&[(1, "a"), (2, "b")]))]);
        let (before, _) = pool::release_in(&mut docs, &owner);
        let freed_before = HashMap::from([(0, before)]);
        assert_eq!(run(doc(&[(1, "a")]), &freed_before), (vec![ip], false, true));
        // Never seen held: nothing freed, and an answer from a copy that may be stale needs a read.
        assert_eq!(run(doc(&[(1, "a")]), &HashMap::new()), (Vec::new(), false, false));
    }

    #[test]
    fn a_waiters_allocations_are_carried_all_or_none_in_line_order() {
        let mut d = doc(&[(1, "a")]);
        let (served, added) = carry(
            &mut d,
            &[
                posted("node-2", 1, &[(2, "b"), (3, "c")]),
                // Collides with node-2 on offset 3: not carried at all, not even offset 4.
                posted("node-3", 2, &[(3, "x"), (4, "y")]),
                // Its attachment already holds offset 1: not carried.
                posted("node-4", 3, &[(5, "a")]),
                // Out of the /24.
                posted("node-5", 4, &[(256, "z")]),
                posted("node-6", 5, &[(7, "g")]),
                posted("node-7", 6, &[]),
            ],
            42,
        );
        assert_eq!(added, 3);
        assert_eq!(
            served,
            vec![
                posted("node-2", 1, &[]).waiter.mark(),
                posted("node-6", 5, &[]).waiter.mark()
            ]
        );
        let held: Vec<u128> = d.allocations.keys().copied().collect();
        assert_eq!(held, vec![1, 2, 3, 7]);
        assert_eq!(d.allocations.get(&3).map(|r| r.id.as_str()), Some("ctr-c"));
    }

    #[test]
    fn a_waiter_already_in_the_pool_is_served_without_adding_twice() {
        let mut d = doc(&[(1, "a"), (2, "b")]);
        let (served, added) = carry(&mut d, &[posted("node-2", 1, &[(2, "b")])], 42);
        assert_eq!((served.len(), added), (1, 0));
        assert_eq!(d.allocations.len(), 2);
    }

    #[test]
    fn a_newer_pool_carried_collided_or_left_open_what_was_posted() {
        let pending = Changes {
            adds: allocations(&[(2, "b"), (3, "c")]),
            removes: allocations(&[(1, "a")]),
        };
        assert_eq!(judge(&pool(&[(2, "b"), (3, "c")]), &pending), Posting::Carried);
        assert_eq!(
            judge(&pool(&[(1, "x"), (2, "b"), (3, "c")]), &pending),
            Posting::Carried,
            "the entry posted for removal is gone, whatever holds its offset now"
        );
        assert_eq!(
            judge(&pool(&[(1, "a"), (2, "b"), (3, "c")]), &pending),
            Posting::Open,
            "added, but not removed yet"
        );
        assert_eq!(judge(&pool(&[(1, "a"), (2, "b")]), &pending), Posting::Open);
        assert_eq!(judge(&pool(&[(2, "b"), (3, "x")]), &pending), Posting::Collided);
    }

    #[test]
    fn an_address_the_batch_posted_and_got_carried_counts_as_new() {
        let range = IpRange::parse("198.18.7.0/24", None, None, &[], None).expect("range");
        let req = AllocationRequest::new(
            Owner::new("ctr-b", Some("ns/b".into()), "net1"),
            vec![range],
            Some("net".into()),
        );
        let requests = [JobRequest::Allocate(&req)];
        let carried_pool = doc(&[(1, "a"), (2, "b")]);
        let run = |published: &HashMap<u128, usize>| {
            let mut held = vec![None];
            let (outcomes, _, dirty) = compute(
                "net-198.18.7.0-24",
                carried_pool.clone(),
                &requests,
                &Search::default(),
                &[None],
                &mut held,
                (published, &HashMap::new()),
            );
            let new = match outcomes.first() {
                Some(Some(Outcome::Allocated(o))) => Some((o.offset, o.new)),
                _ => None,
            };
            (new, dirty, all_carried(&outcomes, published))
        };
        // Posted by this batch (job 0): the same address, new, and nothing to write.
        assert_eq!(run(&HashMap::from([(2, 0)])), (Some((2, true)), false, true));
        // Not posted by it: the attachment held it before (an idempotent ADD).
        assert_eq!(run(&HashMap::new()), (Some((2, false)), false, false));
    }

    #[test]
    fn a_spread_search_starts_at_its_point_and_keeps_off_what_others_posted() {
        let range = IpRange::parse("198.18.7.0/24", None, None, &[], None).expect("range");
        let req = |pod: &str| {
            AllocationRequest::new(
                Owner::new(format!("ctr-{pod}"), Some(format!("ns/{pod}")), "net1"),
                vec![range.clone()],
                Some("net".into()),
            )
        };
        let (x, y) = (req("x"), req("y"));
        let requests = [JobRequest::Allocate(&x), JobRequest::Allocate(&y)];
        let offsets = |search: &Search| {
            let mut held = vec![None, None];
            let (outcomes, doc, _) = compute(
                "net-198.18.7.0-24",
                doc(&[(1, "a"), (101, "b")]),
                &requests,
                search,
                &[None, None],
                &mut held,
                (&HashMap::new(), &HashMap::new()),
            );
            let got: Vec<Option<u128>> = outcomes
                .iter()
                .map(|o| match o {
                    Some(Outcome::Allocated(o)) => Some(o.offset),
                    _ => None,
                })
                .collect();
            (got, doc.allocations.len())
        };
        assert_eq!(offsets(&Search::default()), (vec![Some(2), Some(3)], 4));
        // The usable offsets are 1..=254: point 100 is offset 101 (held), then 102; 103 was posted.
        let spread = Search {
            avoid: BTreeSet::from([103]),
            from: Some(100 + 254 * 7),
        };
        assert_eq!(
            offsets(&spread),
            (vec![Some(102), Some(104)], 4),
            "no placeholder is left behind"
        );
    }
}
