//! The daemon's IPAM service: the shims' `IpamAllocate` / `IpamRelease` requests, served by one
//! batching engine ([`BatchingIpam`]) per IPPool namespace, and the durable queue of releases
//! that could not reach the API server.
//!
//! A release that fails for a transient reason (API server down, write budget spent) is written
//! to the queue directory (one JSON file per release:
//! temp + fsync + rename + directory fsync) and the shim's DEL succeeds: the address stays held,
//! so it is never handed out twice, and a kubelet is not left retrying a DEL against a dead API
//! server. The queue is drained at start-up and every [`DRAIN_INTERVAL`]. Draining late is
//! safe: a release matches (container id, interface), and an attachment that was re-added since
//! carries a new container id, so an old release cannot free it.
//!
//! The engines claim addresses first (their reservation) and write the pool entries after. With
//! each drain, the daemon also writes the entries of its node's claims that never landed
//! because an earlier run of it was killed in between ([`IpamService::repair_claims`]).
//!
//! A watch cache of every IPPool feeds the per-pool gauges on `/metrics` (size, used, free,
//! exhausted).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client};
use netattach_cluster::daemon_api::{IpamFailure, Response};
use netattach_ipam::error::{ErrorKind, IpamError};
use netattach_ipam::store::{AllocationRequest, Owner};
use netattach_ippool::claim::{NODE_LABEL, node_label};
use netattach_ippool::turn::{TURN_LABEL, Turns};
use netattach_ippool::watch;
use netattach_ippool::{BatchingIpam, IPPool, KubeIpam, OverlappingRangeIPReservation, RetryPolicy};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The engine's retry policy: a batch gets 25 s (plus 50 ms per request) to land its write
/// against the other nodes' writers, so that a request waiting behind one batch and then in its
/// own stays within the shim's 60 s (`netattach_plugins::ipam_daemon::IPAM_CALL_TIMEOUT`).
/// Ten nodes releasing a thousand addresses at once need more than the plugin's 10 s.
pub const ENGINE_RETRY: RetryPolicy = RetryPolicy {
    budget: Duration::from_secs(25),
    base: Duration::from_millis(4),
    cap: Duration::from_secs(1),
};

/// How often the release queue is drained.
pub const DRAIN_INTERVAL: Duration = Duration::from_secs(15);
/// Default directory of the durable release queue.
pub const DEFAULT_QUEUE_DIR: &str = "/var/lib/netattach/ipam-release-queue";

/// One queued release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRelease {
    /// Namespace of the IPPools.
    pub pool_namespace: String,
    /// The pools to release in.
    pub pools: Vec<String>,
    /// Whose addresses.
    pub owner: Owner,
    /// When it was queued (unix seconds).
    pub queued_at: u64,
}

/// The IPAM side of the daemon.
pub struct IpamService {
    client: Client,
    engines: Mutex<HashMap<String, BatchingIpam>>,
    queue_dir: PathBuf,
    /// Every IPPool (for the per-pool gauges).
    pools: Store<IPPool>,
    /// This node's turns at contended pools, over a watch of every node's turn Leases.
    turns: Turns,
    /// Serialises drains (the periodic one and one triggered by a success).
    draining: tokio::sync::Mutex<()>,
    /// Whether a repair pass has listed this node's claims ([`IpamService::repair_claims`]).
    repaired: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for IpamService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpamService")
            .field("queue_dir", &self.queue_dir)
            .finish_non_exhaustive()
    }
}

fn failure(err: &IpamError) -> Response {
    Response::IpamError {
        failure: IpamFailure::from(err),
        message: err.to_string(),
    }
}

impl IpamService {
    /// The service of node `node` over `client`, queueing failed releases in `queue_dir`
    /// (created 0700), with its IPPool and turn-Lease watches started on the current runtime.
    ///
    /// # Errors
    ///
    /// When the queue directory cannot be created.
    pub fn new(client: Client, node: &str, queue_dir: &Path) -> Result<IpamService, Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(queue_dir)
            .map_err(|source| Error::QueueDir {
                path: queue_dir.to_path_buf(),
                source,
            })?;
        // The watch tasks run as long as the daemon.
        let (pools, _) = watch::in_background(
            Api::<IPPool>::all(client.clone()),
            watcher::Config::default(),
            "IPPool",
        );
        let (leases, _) = watch::in_background(
            Api::<Lease>::all(client.clone()),
            watcher::Config::default().labels(&format!("{TURN_LABEL}=true")),
            "turn Lease",
        );
        Ok(IpamService {
            client,
            engines: Mutex::default(),
            queue_dir: queue_dir.to_path_buf(),
            pools,
            turns: Turns::new(leases, node),
            draining: tokio::sync::Mutex::new(()),
            repaired: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn engine(&self, namespace: &str) -> BatchingIpam {
        let mut engines = self
            .engines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        engines
            .entry(namespace.to_string())
            .or_insert_with(|| {
                let engine = BatchingIpam::new(
                    KubeIpam::new(self.client.clone(), namespace)
                        .with_retry(ENGINE_RETRY)
                        .with_pool_view(self.pools.clone())
                        .with_turns(self.turns.clone()),
                )
                .claiming_first();
                // A repair pass listed every claim of this node, and none in this namespace
                // (it would have made this engine).
                if self.repaired.load(Ordering::SeqCst) {
                    engine.mark_claims_repaired();
                }
                engine
            })
            .clone()
    }

    /// Serve `IpamAllocate`.
    pub async fn allocate(&self, namespace: &str, request: &AllocationRequest) -> Response {
        match self.engine(namespace).allocate(request).await {
            Ok(allocations) => Response::IpamAllocated { allocations },
            Err(e) => {
                tracing::warn!(owner = %request.owner, error = %e, "allocation failed");
                failure(&e)
            }
        }
    }

    /// Serve `IpamRelease`: release, or queue the release when the API server does not answer.
    pub async fn release(&self, namespace: &str, pools: &[String], owner: &Owner) -> Response {
        let err = match self.engine(namespace).release(owner, pools).await {
            Ok(released) => {
                return Response::IpamReleased {
                    released,
                    queued: false,
                };
            }
            Err(e) if e.kind() != ErrorKind::TryAgain => return failure(&e),
            Err(e) => e.to_string(),
        };
        let entry = QueuedRelease {
            pool_namespace: namespace.to_string(),
            pools: pools.to_vec(),
            owner: owner.clone(),
            queued_at: netattach_ipam::local::unix_now(),
        };
        match self.enqueue(&entry) {
            Ok(path) => {
                tracing::warn!(%owner, queue = %path.display(), reason = %err,
                    "release queued: the address stays held until the API server is back");
                Response::IpamReleased {
                    released: Vec::new(),
                    queued: true,
                }
            }
            Err(e) => Response::IpamError {
                failure: IpamFailure::TryAgain,
                message: format!(
                    "releasing {owner}: {err}; queueing the release in {} failed too: {e}",
                    self.queue_dir.display()
                ),
            },
        }
    }

    /// Queue the pool entries of this node's claims that never landed (a daemon killed between
    /// an address's reservation and its pool entry; [`BatchingIpam::repair_claims`]), once the
    /// IPPool watch has listed (waiting up to [`DRAIN_INTERVAL`] for it). Returns how many.
    pub async fn repair_claims(&self) -> usize {
        if tokio::time::timeout(DRAIN_INTERVAL, self.pools.wait_until_ready())
            .await
            .is_err()
        {
            return 0;
        }
        let api: Api<OverlappingRangeIPReservation> = Api::all(self.client.clone());
        let lp = ListParams::default()
            .labels(&format!("{NODE_LABEL}={}", node_label(self.turns.node())))
            .match_any();
        let listed = match api.list(&lp).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list this node's claims; tried again with the next drain");
                return 0;
            }
        };
        let mut by_namespace: HashMap<String, Vec<OverlappingRangeIPReservation>> = HashMap::new();
        for orip in listed {
            by_namespace
                .entry(orip.metadata.namespace.clone().unwrap_or_default())
                .or_default()
                .push(orip);
        }
        let known: Vec<String> = self
            .engines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        for namespace in known {
            by_namespace.entry(namespace).or_default();
        }
        let mut queued = 0;
        for (namespace, claims) in by_namespace {
            queued += self.engine(&namespace).repair_claims(claims).await;
        }
        self.repaired.store(true, Ordering::SeqCst);
        queued
    }

    /// Write one queue entry durably.
    fn enqueue(&self, entry: &QueuedRelease) -> std::io::Result<PathBuf> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!("{:020}-{:08x}.json", now.as_nanos(), fastrand::u32(..));
        let path = self.queue_dir.join(&name);
        let tmp = self.queue_dir.join(format!(".{name}.tmp"));
        let bytes = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.queue_dir)?.sync_all()?;
        Ok(path)
    }

    /// The queued releases, oldest first.
    pub fn queued(&self) -> Vec<(PathBuf, QueuedRelease)> {
        let Ok(dir) = std::fs::read_dir(&self.queue_dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .filter_map(|p| match std::fs::read(&p).map(|b| serde_json::from_slice::<QueuedRelease>(&b)) {
                Ok(Ok(entry)) => Some((p, entry)),
                Ok(Err(e)) => {
                    tracing::error!(file = %p.display(), error = %e, "unreadable release queue entry; left for an operator");
                    None
                }
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "reading a release queue entry");
                    None
                }
            })
            .collect()
    }

    /// Retry the queued releases (all at once); those that still cannot reach the API server
    /// stay queued. Returns how many were completed.
    pub async fn drain(&self) -> usize {
        let _one_at_a_time = self.draining.lock().await;
        let entries = self.queued();
        // All at once: the engine folds them into one write per pool.
        let outcomes = futures::future::join_all(entries.iter().map(|(_, entry)| {
            let engine = self.engine(&entry.pool_namespace);
            async move { engine.release(&entry.owner, &entry.pools).await }
        }))
        .await;
        let mut done = 0;
        for ((path, entry), outcome) in entries.iter().zip(outcomes) {
            match outcome {
                Ok(released) => {
                    if let Err(e) = std::fs::remove_file(path) {
                        tracing::warn!(file = %path.display(), error = %e, "removing a drained queue entry");
                    }
                    tracing::info!(owner = %entry.owner, released = released.len(), "queued release completed");
                    done += 1;
                }
                Err(e) if e.kind() != ErrorKind::TryAgain => {
                    tracing::error!(owner = %entry.owner, file = %path.display(), error = %e,
                        "a queued release fails for good; it stays queued for an operator");
                }
                Err(e) => {
                    tracing::debug!(owner = %entry.owner, error = %e, "API server still unreachable; the release stays queued");
                }
            }
        }
        done
    }

    /// Prometheus text of the pools, the engine and the queue.
    pub fn render_metrics(&self) -> String {
        let pools = self.pools.state();
        let mut out = netattach_ippool::render_prometheus(&netattach_ippool::pool_usages(
            pools.iter().map(AsRef::as_ref),
        ));
        let p = "netattach_ipam";
        let engines: Vec<(String, BatchingIpam)> = self
            .engines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        type Value = fn(&BatchingIpam) -> u64;
        let series: [(&str, &str, &str, Value); 12] = [
            (
                "batches_total",
                "counter",
                "Pool writes (batches) of the engine.",
                |e| e.batch_stats().batches.load(Ordering::Relaxed),
            ),
            (
                "batched_requests_total",
                "counter",
                "Requests answered through batches.",
                |e| e.batch_stats().requests.load(Ordering::Relaxed),
            ),
            (
                "largest_batch",
                "gauge",
                "The most requests folded into one batch.",
                |e| e.batch_stats().largest.load(Ordering::Relaxed),
            ),
            ("pool_writes_total", "counter", "Successful IPPool writes.", |e| {
                e.ipam().stats().writes
            }),
            (
                "pool_conflicts_total",
                "counter",
                "IPPool writes refused with 409 (retried).",
                |e| e.ipam().stats().conflicts,
            ),
            (
                "pool_reads_total",
                "counter",
                "IPPool reads (GET) from the API server.",
                |e| e.ipam().stats().reads,
            ),
            (
                "pool_rebases_total",
                "counter",
                "Batches redone on a newer IPPool from the watch instead of a losing write or a read.",
                |e| e.ipam().stats().rebases,
            ),
            (
                "reservation_reads_total",
                "counter",
                "OverlappingRangeIPReservation reads (GET): to see who holds one, or before deleting one the engine did not create.",
                |e| e.ipam().stats().orip_reads,
            ),
            (
                "carried_entries_total",
                "counter",
                "Entries of other nodes' waiting batches (allocations added, releases removed) written with this node's own, in its turn.",
                |e| e.ipam().stats().carried,
            ),
            (
                "carried_batches_total",
                "counter",
                "Batches of this node that another node's write carried (no write of its own).",
                |e| e.ipam().stats().carried_in,
            ),
            (
                "writer_claims_lost_total",
                "counter",
                "Claims of a pool's writer Lease another node made first (a write that would have lost, not sent).",
                |e| e.ipam().stats().claims_lost,
            ),
            (
                "api_transient_errors_total",
                "counter",
                "Transient API failures (retried).",
                |e| e.ipam().stats().transient,
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {p}_{name} {help}\n# TYPE {p}_{name} {kind}");
            for (ns, e) in &engines {
                let v = value(e);
                let _ = writeln!(out, "{p}_{name}{{namespace=\"{ns}\"}} {v}");
            }
        }
        let queued = std::fs::read_dir(&self.queue_dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "# HELP {p}_release_queue_length Releases waiting for the API server.\n# TYPE {p}_release_queue_length gauge\n{p}_release_queue_length {queued}"
        );
        out
    }
}

/// Periodically drain the queue (first right away).
pub async fn drain_forever(service: Arc<IpamService>) {
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = service.drain().await;
        if n > 0 {
            tracing::info!(completed = n, "release queue drained");
        }
        let n = service.repair_claims().await;
        if n > 0 {
            tracing::info!(queued = n, "pool entries of claims that never landed queued");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_entry_round_trips() -> Result<(), serde_json::Error> {
        let e = QueuedRelease {
            pool_namespace: "kube-system".into(),
            pools: vec!["storage-198.18.4.0-24".into()],
            owner: Owner::new("c1", Some("ns/p".into()), "net1"),
            queued_at: 7,
        };
        let back: QueuedRelease = serde_json::from_slice(&serde_json::to_vec(&e)?)?;
        assert_eq!(back, e);
        Ok(())
    }
}
