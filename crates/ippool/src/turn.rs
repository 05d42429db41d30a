//! Turns between the node daemons that write one pool: an advisory queue, so that under
//! contention the nodes write one after the other, in the order they started waiting, instead
//! of all sending writes of which all but one lose.
//!
//! Without it, ten engines contending for one `IPPool` race every round: one write wins, nine
//! are refused with 409 after the API server has decoded their whole pool (hundreds of ms of its
//! CPU for a pool of a thousand allocations), and which node wins is luck, so a node can lose
//! round after round until its requests run out of time.
//!
//! A node that lost a write (or that sees others waiting) puts itself in line for the pool: a
//! `coordination.k8s.io` Lease of its own per pool (`spec.holderIdentity` = the node,
//! `spec.acquireTime` = when it started waiting), renewed while it waits. Every daemon watches
//! these Leases. A node writes when no live waiter started before it (ties by node name); its
//! write stamps the pool with [`DONE_ANNOTATION`], so the next in line goes on as soon as the
//! watch shows that version, without waiting for the Lease to be cleared.
//!
//! It is advisory only. Every write still carries the resourceVersion it was computed on, so a
//! node that writes out of turn (a clock far off, a daemon without this module, upstream
//! whereabouts) costs at most a 409. A waiter whose Lease has not changed for [`LIVE_FOR`] (its
//! daemon died) is skipped, and a batch near its deadline writes regardless.
//!
//! A waiting node also posts the allocations its batch would write ([`PENDING_ANNOTATION`] on its
//! Lease, whereabouts' own `{id, podref, ifname}` per decimal offset) and the ones it would
//! remove ([`RELEASING_ANNOTATION`], same form), and the node whose turn it is writes them
//! together with its own when they still fit (the engine's carrying,
//! `crate::batch`): under a burst one write then serves every waiting node instead of one, and
//! the mark it leaves names every turn it served. Nodes that compute their batches meanwhile
//! keep off the offsets others posted, so the posted sets rarely collide.
//!
//! Before a write in turn, the node claims the pool's **writer Lease** (one per pool: the node and
//! the pool version it writes on, a resourceVersion-checked update). Nodes that queued at the
//! same moment can each see themselves first for a few milliseconds (their Leases reach the
//! others' watches late, and their clocks decide the order); the claim makes only one of them
//! send the write, which costs the API server hundreds of ms of CPU for a large pool, where a
//! lost claim costs one small refused update.
//!
//! A node leaves the line by deleting its Lease, so the Leases that exist are the nodes waiting
//! now. What a dead daemon or a removed node leaves behind is deleted by [`sweep`] (the IPAM
//! garbage collector's leader runs it with every reconcile), so nodes that come and go do not
//! pile up Leases that every daemon watches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::Store as WatchStore;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use crate::crd::IPAllocation;

/// Allocations by decimal offset, as an `IPPool` and [`PENDING_ANNOTATION`] hold them.
pub type Allocations = BTreeMap<String, IPAllocation>;

/// Label of every turn Lease (the daemons watch Leases with it).
pub const TURN_LABEL: &str = "netattach.io/pool-turn";
/// Annotation of a turn Lease: the pool it queues for.
pub const POOL_ANNOTATION: &str = "netattach.io/pool";
/// Annotation a write made in turn leaves on the pool: `<node> <acquireTime>` of the turn it
/// used up, then, comma-separated, those of the waiters whose allocations it carried.
pub const DONE_ANNOTATION: &str = "netattach.io/last-turn";
/// Annotation of a turn Lease: the allocations the waiting node's batch would add to the pool,
/// as the JSON of whereabouts' `allocations` map (decimal offset → `{id, podref, ifname}`).
pub const PENDING_ANNOTATION: &str = "netattach.io/pending";
/// Annotation of a turn Lease: the allocations the waiting node's batch would remove from the
/// pool (its releases), each exactly as the pool holds it, in the form of [`PENDING_ANNOTATION`].
pub const RELEASING_ANNOTATION: &str = "netattach.io/releasing";
/// A waiter whose Lease has not changed for this long is taken for gone.
pub const LIVE_FOR: Duration = Duration::from_secs(3);
/// How often a waiting node renews its Lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// A turn Lease not renewed for this long belongs to no live waiter (a waiter renews every
/// [`RENEW_EVERY`]); [`sweep`] deletes it.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// Annotation of a pool's writer Lease: the pool.
pub const WRITER_ANNOTATION: &str = "netattach.io/pool-writer";
/// Annotation of a pool's writer Lease: the resourceVersion of the pool the claim writes on.
pub const BASE_ANNOTATION: &str = "netattach.io/base";
/// A claim of the writer Lease older than this no longer holds others back (its node died, or
/// its write failed).
pub const CLAIM_FOR: Duration = Duration::from_secs(2);
/// The field manager of the turn Leases.
const MANAGER: &str = "netattach-pool-turn";

/// One node in line for a pool.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Waiter {
    /// When it started waiting (RFC 3339, as the Lease carries it; compared as a timestamp).
    pub since: Timestamp,
    /// The node.
    pub node: String,
}

impl Waiter {
    /// The [`DONE_ANNOTATION`] value of a write made in this turn. The time is written to the
    /// microsecond, as the Lease stores it (`MicroTime`), so that the mark a node makes of its
    /// own place (nanoseconds) is the one the others make of its Lease.
    pub fn mark(&self) -> String {
        let since = k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%.6fZ", self.since)
            .unwrap_or_else(|_| self.since.to_string());
        format!("{} {since}", self.node)
    }
}

/// The first of `waiters` that is ahead of `me` (started waiting earlier; ties by node name),
/// not counting those whose turns `done` (the pool's [`DONE_ANNOTATION`]) says were served.
/// `None`: it is `me`'s turn.
pub fn ahead_of<'a>(me: &Waiter, waiters: &'a [Waiter], done: Option<&str>) -> Option<&'a Waiter> {
    let served = |w: &Waiter| {
        let mark = w.mark();
        done.is_some_and(|d| d.split(',').any(|m| m == mark))
    };
    waiters
        .iter()
        .filter(|w| w.node != me.node && !served(w))
        .filter(|w| *w < me)
        .min()
}

/// Where a pool's writer Lease stands for a write on one pool version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Free to claim: the Lease's resourceVersion as watched (`None`: there is none yet).
    Open(Option<String>),
    /// Another node claimed it for a write on this very version, moments ago: its write is
    /// under way.
    Taken,
    /// Claimed for a newer version than the one given: the caller's copy of the pool is behind.
    Behind,
}

/// What a waiting batch posts for the node whose turn comes first to write with its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Allocations it would add ([`PENDING_ANNOTATION`]).
    pub adds: Allocations,
    /// Allocations it would remove, as the pool holds them ([`RELEASING_ANNOTATION`]).
    pub removes: Allocations,
}

impl Changes {
    /// Whether there is nothing to carry.
    pub fn is_empty(&self) -> bool {
        self.adds.is_empty() && self.removes.is_empty()
    }
}

/// Another node in line, with what it posted.
#[derive(Debug, Clone)]
pub struct Posted {
    /// Its place.
    pub waiter: Waiter,
    /// What its batch would add and remove; empty when it posted nothing.
    pub changes: Changes,
}

/// The turn Leases seen by the daemon's watch, and this node's place in them.
#[derive(Clone)]
pub struct Turns {
    node: String,
    view: WatchStore<Lease>,
    /// Per Lease (namespace/name): its resourceVersion and when this process first saw it.
    seen: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl std::fmt::Debug for Turns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turns")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Turns {
    /// Turns of node `node`, over a watch of the Leases labelled [`TURN_LABEL`].
    pub fn new(view: WatchStore<Lease>, node: impl Into<String>) -> Turns {
        Turns {
            node: node.into(),
            view,
            seen: Arc::default(),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The name of this node's turn Lease for `pool` (by an FNV-1a hash of the pool's name).
    pub fn lease_name(&self, pool: &str) -> String {
        let mut name = format!("netattach-turn-{:016x}-{}", stable_hash(pool), self.node);
        name.truncate(253);
        name
    }

    /// The name of the writer Lease of `pool` ([`WRITER_ANNOTATION`]).
    pub fn writer_lease_name(pool: &str) -> String {
        format!("netattach-writer-{:016x}", stable_hash(pool))
    }

    /// Where the writer Lease of `pool` stands for a write on pool version `base`, as the watch
    /// has it.
    pub fn claim_of(&self, namespace: &str, pool: &str, base: &str) -> Claim {
        let name = Turns::writer_lease_name(pool);
        let Some(lease) = self.view.get(&ObjectRef::new(&name).within(namespace)) else {
            return Claim::Open(None);
        };
        let rv = lease.resource_version();
        let spec = lease.spec.as_ref();
        let holder = spec.and_then(|s| s.holder_identity.as_deref());
        let claimed_on = lease
            .annotations()
            .get(BASE_ANNOTATION)
            .and_then(|b| b.parse::<u64>().ok());
        let fresh = spec
            .and_then(|s| s.renew_time.as_ref())
            .is_some_and(|MicroTime(t)| {
                let age = Timestamp::now().duration_since(*t);
                age < SignedDuration::try_from(CLAIM_FOR).unwrap_or(SignedDuration::MAX)
            });
        match (base.parse::<u64>().ok(), claimed_on) {
            (Some(base), Some(on)) if fresh && on > base => Claim::Behind,
            (Some(base), Some(on)) if fresh && on == base && holder != Some(self.node.as_str()) => {
                Claim::Taken
            }
            _ => Claim::Open(rv),
        }
    }

    /// Claim the writer Lease of `pool` for a write on pool version `base`: an update carrying
    /// the Lease's resourceVersion `seen` (a create when there was none). `Ok(false)`: another
    /// node claimed it first.
    pub async fn claim(
        &self,
        api: &Api<Lease>,
        pool: &str,
        base: &str,
        seen: Option<String>,
    ) -> Result<bool, kube::Error> {
        let name = Turns::writer_lease_name(pool);
        let now = MicroTime(Timestamp::now());
        let mut lease: Lease = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "labels": {TURN_LABEL: "true"},
                "annotations": {WRITER_ANNOTATION: pool, BASE_ANNOTATION: base},
            },
            "spec": {"holderIdentity": self.node, "leaseDurationSeconds": CLAIM_FOR.as_secs()},
        }))
        .map_err(kube::Error::SerdeError)?;
        if let Some(spec) = lease.spec.as_mut() {
            spec.acquire_time = Some(now.clone());
            spec.renew_time = Some(now);
        }
        let res = match seen {
            Some(rv) => {
                lease.metadata.resource_version = Some(rv);
                api.replace(&name, &PostParams::default(), &lease).await
            }
            None => api.create(&PostParams::default(), &lease).await,
        };
        match res {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The live waiters of `pool` in `namespace`, this node's included.
    pub fn waiters(&self, namespace: &str, pool: &str) -> Vec<Waiter> {
        self.live(namespace, pool, |_| ())
            .into_iter()
            .map(|(w, ())| w)
            .collect()
    }

    /// The other live waiters of `pool` in `namespace`, in line order, with what they posted (a
    /// post that does not parse counts as none).
    pub fn posted_by_others(&self, namespace: &str, pool: &str) -> Vec<Posted> {
        let posted = |lease: &Lease, key: &str| {
            lease
                .annotations()
                .get(key)
                .and_then(|text| serde_json::from_str::<Allocations>(text).ok())
                .unwrap_or_default()
        };
        let mut out: Vec<Posted> = self
            .live(namespace, pool, |lease| Changes {
                adds: posted(lease, PENDING_ANNOTATION),
                removes: posted(lease, RELEASING_ANNOTATION),
            })
            .into_iter()
            .filter(|(w, _)| w.node != self.node)
            .map(|(waiter, changes)| Posted { waiter, changes })
            .collect();
        out.sort_by(|a, b| a.waiter.cmp(&b.waiter));
        out
    }

    /// The live waiters of `pool` in `namespace`, each with `extra` of its Lease.
    fn live<T>(&self, namespace: &str, pool: &str, extra: impl Fn(&Lease) -> T) -> Vec<(Waiter, T)> {
        let now = Instant::now();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        let leases = self.view.state();
        // Forget Leases that are gone (left or swept) once the map holds more keys than there
        // are Leases: it stays within twice the line, without a pass on every poll.
        if seen.len() > leases.len() {
            let present: HashSet<String> = leases
                .iter()
                .map(|l| format!("{}/{}", l.namespace().unwrap_or_default(), l.name_any()))
                .collect();
            seen.retain(|key, _| present.contains(key));
        }
        for lease in leases {
            if lease.namespace().as_deref() != Some(namespace)
                || lease.annotations().get(POOL_ANNOTATION).map(String::as_str) != Some(pool)
            {
                continue;
            }
            let key = format!("{namespace}/{}", lease.name_any());
            let rv = lease.resource_version().unwrap_or_default();
            let first_seen = match seen.get(&key) {
                Some((known, at)) if *known == rv => *at,
                _ => {
                    seen.insert(key, (rv, now));
                    now
                }
            };
            let Some(spec) = &lease.spec else { continue };
            let (Some(node), Some(MicroTime(since))) = (&spec.holder_identity, &spec.acquire_time) else {
                continue;
            };
            if now.duration_since(first_seen) < LIVE_FOR {
                let waiter = Waiter {
                    since: *since,
                    node: node.clone(),
                };
                out.push((waiter, extra(&lease)));
            }
        }
        out
    }

    /// Whether another node is waiting for `pool`.
    pub fn others_waiting(&self, namespace: &str, pool: &str) -> bool {
        self.waiters(namespace, pool).iter().any(|w| w.node != self.node)
    }

    /// Whether `me` may write `pool` now, given the [`DONE_ANNOTATION`] of the pool as the watch
    /// has it: no live waiter is ahead, and, when `me` queued (its Lease write went through),
    /// the watch shows `me`'s own place. Then every Lease written before it is in the view too
    /// (a watch delivers in order), so no node that queued earlier can be missing from the
    /// comparison.
    pub fn my_turn(
        &self,
        namespace: &str,
        pool: &str,
        me: &Waiter,
        done: Option<&str>,
        queued: bool,
    ) -> bool {
        let waiters = self.waiters(namespace, pool);
        let mark = me.mark();
        (!queued || waiters.iter().any(|w| w.mark() == mark)) && ahead_of(me, &waiters, done).is_none()
    }

    /// Put this node in line for `pool` as `me` (or renew its place), posting `changes` (what its
    /// batch would add and remove; empty: nothing to carry): one server-side apply of its Lease.
    pub async fn queue(
        &self,
        api: &Api<Lease>,
        pool: &str,
        me: &Waiter,
        changes: &Changes,
    ) -> Result<(), kube::Error> {
        self.apply(api, pool, (me.since, Timestamp::now()), changes).await
    }

    /// Leave the line for `pool`: delete this node's Lease (already gone is fine).
    pub async fn leave(&self, api: &Api<Lease>, pool: &str) -> Result<(), kube::Error> {
        match api.delete(&self.lease_name(pool), &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn apply(
        &self,
        api: &Api<Lease>,
        pool: &str,
        (since, renewed): (Timestamp, Timestamp),
        changes: &Changes,
    ) -> Result<(), kube::Error> {
        let name = self.lease_name(pool);
        let mut annotations = serde_json::Map::new();
        annotations.insert(POOL_ANNOTATION.into(), pool.into());
        // Server-side apply: leaving a key out removes what the last apply posted.
        for (key, posted) in [
            (PENDING_ANNOTATION, &changes.adds),
            (RELEASING_ANNOTATION, &changes.removes),
        ] {
            if !posted.is_empty() {
                let text = serde_json::to_string(posted).unwrap_or_default();
                annotations.insert(key.into(), text.into());
            }
        }
        let spec = json!({
            "holderIdentity": self.node,
            "leaseDurationSeconds": LIVE_FOR.as_secs(),
            "acquireTime": MicroTime(since),
            "renewTime": MicroTime(renewed),
        });
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "labels": {TURN_LABEL: "true"},
                "annotations": annotations,
            },
            "spec": spec,
        });
        api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&lease))
            .await
            .map(drop)
    }
}

/// FNV-1a of a name (a pool's, for the names of its Leases; an attachment's, for the label of
/// its claims): valid in a name or label whatever it hashes, and the same in every release of
/// this program (std's hasher promises no such thing).
pub(crate) fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether a turn Lease belongs to no live waiter at `now`: renewed (or, never renewed,
/// created) more than [`STALE_AFTER`] ago, or not waiting at all (no `acquireTime`: a Lease an
/// earlier release left in place when its node left the line).
pub fn is_stale(lease: &Lease, now: Timestamp) -> bool {
    let spec = lease.spec.as_ref();
    if spec.and_then(|s| s.acquire_time.as_ref()).is_none() {
        return true;
    }
    let last = spec
        .and_then(|s| s.renew_time.as_ref())
        .map(|MicroTime(t)| *t)
        .or_else(|| lease.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let stale_after = SignedDuration::try_from(STALE_AFTER).unwrap_or(SignedDuration::MAX);
    last.is_none_or(|t| now.duration_since(t) > stale_after)
}

/// Deletes the turn Leases of `api`'s namespace that belong to no live waiter ([`is_stale`]):
/// those of daemons that died waiting and of nodes that were removed. Each delete carries the
/// resourceVersion that was judged, so a Lease renewed in between is kept. Returns how many
/// were deleted.
///
/// # Errors
/// The list failing; a delete that fails is logged and left for the next sweep.
pub async fn sweep(api: &Api<Lease>) -> Result<usize, kube::Error> {
    let now = Timestamp::now();
    let listed = api
        .list(&ListParams::default().labels(&format!("{TURN_LABEL}=true")))
        .await?;
    let mut deleted = 0;
    for lease in listed.items.iter().filter(|l| is_stale(l, now)) {
        let name = lease.name_any();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: lease.resource_version(),
                uid: lease.uid(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => tracing::warn!(lease = %name, error = %e, "could not delete a stale turn Lease"),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(node: &str, secs: i64) -> Waiter {
        Waiter {
            since: Timestamp::from_second(1_700_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH),
            node: node.into(),
        }
    }

    #[test]
    fn the_earliest_waiter_goes_first_and_ties_go_by_node_name() {
        let (a, b, c) = (w("node-a", 5), w("node-b", 3), w("node-c", 3));
        let all = [a.clone(), b.clone(), c.clone()];
        assert_eq!(ahead_of(&a, &all, None), Some(&b));
        assert_eq!(ahead_of(&c, &all, None), Some(&b));
        assert_eq!(
            ahead_of(&b, &all, None),
            None,
            "earliest, and first by name on the tie"
        );
        // Not in line at all (the waiters are someone else's view): everyone before counts.
        assert_eq!(ahead_of(&w("node-z", 4), &all, None), Some(&b));
    }

    #[test]
    fn a_turn_the_pool_says_was_used_no_longer_blocks() {
        let (a, b) = (w("node-a", 5), w("node-b", 3));
        let all = [a.clone(), b.clone()];
        assert_eq!(ahead_of(&a, &all, Some(&b.mark())), None);
        // A mark of an older turn of b does not count for its current one.
        assert_eq!(ahead_of(&a, &all, Some(&w("node-b", 1).mark())), Some(&b));
        // A write that carried b's allocations names its turn after the writer's.
        let served = format!("{},{}", w("node-c", 1).mark(), b.mark());
        assert_eq!(ahead_of(&a, &all, Some(&served)), None);
    }

    #[test]
    fn the_mark_of_a_place_is_the_mark_of_its_lease() {
        let since = Timestamp::from_nanosecond(1_700_000_000_123_456_789).unwrap_or(Timestamp::UNIX_EPOCH);
        let mine = Waiter {
            since,
            node: "node-1".into(),
        };
        let stored: MicroTime =
            serde_json::from_value(serde_json::to_value(MicroTime(since)).unwrap_or_default())
                .unwrap_or(MicroTime(Timestamp::UNIX_EPOCH));
        let seen = Waiter {
            since: stored.0,
            node: "node-1".into(),
        };
        assert_ne!(seen.since, mine.since, "the Lease keeps microseconds");
        assert_eq!(seen.mark(), mine.mark());
        assert_eq!(mine.mark(), "node-1 2023-11-14T22:13:20.123456Z");
    }

    #[test]
    fn a_lease_is_stale_when_not_waiting_or_not_renewed_for_a_minute() {
        use k8s_openapi::api::coordination::v1::LeaseSpec;
        let now = Timestamp::from_second(1_700_000_100).unwrap_or(Timestamp::UNIX_EPOCH);
        let lease = |acquired: Option<i64>, renewed: Option<i64>| Lease {
            spec: Some(LeaseSpec {
                acquire_time: acquired.map(|s| MicroTime(w("n", s).since)),
                renew_time: renewed.map(|s| MicroTime(w("n", s).since)),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        assert!(!is_stale(&lease(Some(90), Some(99)), now), "renewed a second ago");
        assert!(
            !is_stale(&lease(Some(0), Some(41)), now),
            "59 s since the renewal"
        );
        assert!(is_stale(&lease(Some(0), Some(30)), now), "70 s since the renewal");
        assert!(
            is_stale(&lease(None, None), now),
            "left the line (an earlier release)"
        );
        assert!(
            is_stale(&lease(Some(99), None), now),
            "waiting but never renewed nor created: nothing says it is alive"
        );
    }

    #[test]
    fn lease_names_are_valid_and_distinct_per_pool_and_node() {
        let view = kube::runtime::reflector::store::<Lease>().0;
        let t = Turns::new(view, "node-1");
        let a = t.lease_name("storage-192.168.4.0-24");
        let b = t.lease_name("storage-192.168.5.0-24");
        assert_ne!(a, b);
        // FNV-1a of the pool name: the same in every release.
        assert_eq!(t.lease_name(""), "netattach-turn-cbf29ce484222325-node-1");
        assert!(a.starts_with("netattach-turn-") && a.ends_with("-node-1"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
            "{a}"
        );
    }
}
