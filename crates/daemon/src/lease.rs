//! Leader election on a `coordination.k8s.io/v1` Lease, client-go's protocol: the holder
//! renews the Lease every [`RENEW_INTERVAL`]; the others look every [`RETRY_INTERVAL`] and take
//! it over once it has not changed for its `leaseDurationSeconds` ([`LEASE_DURATION`]) as
//! measured by their own monotonic clock since they last saw it change (no trust in clocks
//! across machines). Every acquire and renew is an update carrying the resourceVersion that was
//! read, so two candidates can never both win one round. The holder steps down when it has not
//! renewed for [`RENEW_DEADLINE`], before anyone else may take over, and releases the Lease
//! (empty `holderIdentity`) on shutdown so that a successor need not wait for the expiry.
//!
//! Unlike client-go, nobody polls the Lease with reads. Every candidate watches it (one
//! long-lived request per daemon; an event per renewal) and looks at its watched copy every
//! [`RETRY_INTERVAL`]; the holder renews on the object its last write returned. Polling would
//! cost a cluster of N nodes N/2 GETs a second, each through the API server's whole request
//! chain, for a Lease that changes once every [`RENEW_INTERVAL`]. A read is left only where the
//! watched copy cannot answer: before the watch has synced, and after a renewal was refused
//! (the Lease changed under the holder).
//!
//! [`run`] publishes "this process leads" on a `tokio::sync::watch` channel. Whoever acts on it
//! must still make every write safe on its own (the GC's writes are resourceVersion-checked): a
//! process paused longer than the Lease (SIGSTOP, a VM freeze) believes it leads until its next
//! renewal fails.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

use futures::FutureExt as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client};
use netattach_ippool::watch::in_background;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a Lease is valid after its last renewal (`leaseDurationSeconds`).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// The holder steps down when its last successful renewal started this long ago (it must be
/// well under [`LEASE_DURATION`]: [`RETRY_INTERVAL`] + [`ATTEMPT_TIMEOUT`] more may pass before
/// the step-down is noticed).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(8);
/// How often a non-holder looks at the Lease, and how soon a failed renewal is retried.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// Upper bound of one acquire-or-renew round (at most a GET and an update).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);

/// This process's identity in the Lease: `<node>_<random>`, unique per process, so that a
/// restarted daemon waits for its crashed predecessor's Lease to expire like everyone else.
pub fn identity(node: &str) -> String {
    let random = RandomState::new().hash_one(std::process::id());
    format!("{node}_{random:016x}")
}

/// What the candidate last saw of the Lease, and when (its own clock).
#[derive(Debug, Clone)]
struct Observed {
    resource_version: Option<String>,
    at: Instant,
}

/// One candidate for one Lease.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    observed: Option<Observed>,
    /// The Lease as this candidate's last successful write returned it (the holder renews on it).
    written: Option<Lease>,
    /// The watched copy of the Lease, and the task that keeps it (stopped on drop).
    watched: Store<Lease>,
    watch_task: JoinHandle<()>,
}

impl Drop for Elector {
    fn drop(&mut self) {
        self.watch_task.abort();
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn duration_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

impl Elector {
    /// A candidate `identity` for Lease `namespace/name`; starts its watch of the Lease on the
    /// current runtime.
    pub fn new(client: Client, namespace: &str, name: &str, identity: String) -> Elector {
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let (watched, watch_task) = in_background(
            api.clone(),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
            "leader-election Lease",
        );
        Elector {
            api,
            name: name.to_string(),
            identity,
            observed: None,
            written: None,
            watched,
            watch_task,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn observe(&mut self, lease: &Lease) {
        let rv = lease.metadata.resource_version.clone();
        if self.observed.as_ref().is_none_or(|o| o.resource_version != rv) {
            self.observed = Some(Observed {
                resource_version: rv,
                at: Instant::now(),
            });
        }
    }

    /// One round: acquire the Lease if it is free or expired, renew it if this candidate holds
    /// it. `Ok(true)` when this candidate holds it now.
    ///
    /// # Errors
    ///
    /// API failures other than losing the race (a 409 is `Ok(false)`).
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        // The holder renews on its own last write: no read. (Kept when the write fails: one
        // applied without an answer makes the next renewal on it refused, and read afresh.)
        if let Some(written) = self.written.clone()
            && written.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str())
        {
            match self.write(written, true, None).await {
                Ok(true) => return Ok(true),
                // Refused: the Lease changed under the holder. Judge it afresh, read from the API.
                Ok(false) => {}
                Err(e) => return Err(e),
            }
            let current = self.api.get_opt(&self.name).await?;
            return self.acquire_or_renew(current).await;
        }
        let current = match self.watched.wait_until_ready().now_or_never() {
            Some(Ok(())) => self
                .watched
                .get(&ObjectRef::new(&self.name).within(self.api.namespace().unwrap_or_default()))
                .map(|lease| (*lease).clone()),
            // Not synced yet (or the watch is gone): read.
            _ => self.api.get_opt(&self.name).await?,
        };
        self.acquire_or_renew(current).await
    }

    /// The round on `current`, the Lease as last seen (`None`: there is none).
    async fn acquire_or_renew(&mut self, current: Option<Lease>) -> Result<bool, kube::Error> {
        let Some(current) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_secs(LEASE_DURATION)),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    self.written = Some(created);
                    Ok(true)
                }
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        self.observe(&current);
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        if !mine && holder.is_some() {
            let valid_for = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(LEASE_DURATION, Duration::from_secs);
            let unchanged_for = self.observed.as_ref().map_or(Duration::ZERO, |o| o.at.elapsed());
            if unchanged_for < valid_for {
                return Ok(false);
            }
        }
        self.write(current, mine, holder).await
    }

    /// Writes `current` (as last seen) renewed by this candidate, or taken over from `holder`
    /// unless `mine`. `Ok(false)` when the write was refused because the Lease changed since.
    async fn write(
        &mut self,
        current: Lease,
        mine: bool,
        holder: Option<String>,
    ) -> Result<bool, kube::Error> {
        let spec = current.spec.clone().unwrap_or_default();
        let mut next = current;
        next.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(duration_secs(LEASE_DURATION)),
            acquire_time: if mine { spec.acquire_time } else { Some(now()) },
            renew_time: Some(now()),
            lease_transitions: if mine {
                spec.lease_transitions
            } else {
                Some(spec.lease_transitions.unwrap_or(0).saturating_add(1))
            },
            ..spec
        });
        // `next` carries the resourceVersion it was seen with: the update is refused (409) if
        // anyone wrote the Lease since.
        match self.api.replace(&self.name, &PostParams::default(), &next).await {
            Ok(written) => {
                self.observe(&written);
                self.written = Some(written);
                if !mine {
                    tracing::info!(lease = %self.name, identity = %self.identity, previous = ?holder, "acquired the lease");
                }
                Ok(true)
            }
            Err(e) if is_conflict(&e) => {
                self.written = None;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up if this candidate holds it (empty holder, resourceVersion-checked), so
    /// that another candidate takes over at its next look instead of after the expiry.
    ///
    /// # Errors
    ///
    /// API failures; a Lease that changed meanwhile or is held by someone else is `Ok`.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(current) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let mut next = current;
        next.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(now()),
            ..spec
        });
        match self.api.replace(&self.name, &PostParams::default(), &next).await {
            Ok(_) => {
                tracing::info!(lease = %self.name, identity = %self.identity, "released the lease");
                Ok(())
            }
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Runs the election until `shutdown` turns true, publishing leadership on `leading`; then
/// steps down (publishes `false` first, so that the leader's work stops) and releases the
/// Lease if it is held.
pub async fn run(mut elector: Elector, leading: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
    // When the last successful round started (the write it made happened after that).
    let mut renewed_at: Option<Instant> = None;
    loop {
        let round_started = Instant::now();
        let outcome = tokio::select! {
            r = tokio::time::timeout(ATTEMPT_TIMEOUT, elector.try_acquire_or_renew()) => r,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let was_leading = *leading.borrow();
        let now_leading = match outcome {
            Ok(Ok(true)) => {
                renewed_at = Some(round_started);
                true
            }
            Ok(Ok(false)) => false,
            Ok(Err(e)) => {
                tracing::warn!(lease = %elector.name, error = %e, "lease round failed");
                was_leading && renewed_at.is_some_and(|t| t.elapsed() < RENEW_DEADLINE)
            }
            Err(_) => {
                tracing::warn!(lease = %elector.name, timeout = ?ATTEMPT_TIMEOUT, "lease round timed out");
                was_leading && renewed_at.is_some_and(|t| t.elapsed() < RENEW_DEADLINE)
            }
        };
        if now_leading != was_leading {
            if now_leading {
                tracing::info!(lease = %elector.name, identity = %elector.identity, "leading");
            } else {
                tracing::info!(lease = %elector.name, identity = %elector.identity, "no longer leading");
            }
            leading.send_replace(now_leading);
        }
        let pause = if now_leading && renewed_at.is_some_and(|t| t.elapsed() < RENEW_INTERVAL) {
            RENEW_INTERVAL.saturating_sub(renewed_at.map_or(Duration::ZERO, |t| t.elapsed()))
        } else {
            RETRY_INTERVAL
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    leading.send_replace(false);
    match tokio::time::timeout(ATTEMPT_TIMEOUT, elector.release()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(lease = %elector.name, error = %e, "releasing the lease; it expires on its own")
        }
        Err(_) => {
            tracing::warn!(lease = %elector.name, "releasing the lease timed out; it expires on its own")
        }
    }
}
