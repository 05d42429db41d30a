//! Reservations that claim an address ahead of its pool entry: the store side of the node
//! daemon's claim-first allocation ([`crate::batch`]).
//!
//! An `OverlappingRangeIPReservation` is a cluster-wide, all-or-nothing claim on one address:
//! its name is the address, so of two creates only one succeeds. Every participant that uses
//! reservations (this store, upstream whereabouts with `enable_overlapping_ranges`) uses an
//! address only once its own create succeeded or the reservation already named it. The engine
//! therefore answers an ADD as soon as its create succeeded and writes the pool entry after.
//!
//! Such a reservation carries two marks:
//! * the finalizer [`CLAIM_FINALIZER`]. Upstream whereabouts checks reservations before its
//!   pool write but creates its own after it; in the window before our pool entry lands, its ADD
//!   can write the address into the pool, fail its create (ours exists), and its runtime's DEL
//!   then deletes the reservation *by name, unconditionally*: ours. The finalizer turns that
//!   delete into a mark, and the reservation keeps excluding the address until this store,
//!   releasing the attachment, deletes it and removes the finalizer
//!   (`KubeIpam::delete_reservation`).
//! * the label [`ATTACHMENT_LABEL`], a hash of the attachment: a release whose pool entry never
//!   landed (the daemon was killed in between) finds the reservation by it
//!   (`KubeIpam::release_claims_of`).
//! * the label [`NODE_LABEL`], a hash of the claiming node, and the annotations
//!   [`POOL_ANNOTATION`] and [`ADDRESS_ANNOTATION`]: a daemon restarted after being killed
//!   finds its node's claims whose entry never landed, and writes them
//!   ([`crate::batch::BatchingIpam::repair_claims`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use netattach_ipam::error::IpamError;
use netattach_ipam::store::Owner;
use tokio::time::Instant;

use crate::crd::{OverlappingRangeIPReservation, OverlappingRangeIPReservationSpec, orip_name};
use crate::store::{ApiFailure, KubeIpam, Stats, classify, gave_up, names_attachment};
use crate::turn::stable_hash;

/// The finalizer of a reservation created ahead of its pool entry.
pub const CLAIM_FINALIZER: &str = "netattach.io/claim";

/// The label naming the attachment of a reservation created ahead of its pool entry
/// ([`attachment_label`]).
pub const ATTACHMENT_LABEL: &str = "netattach.io/attachment";

/// The label naming the node whose daemon created a reservation ahead of its pool entry
/// ([`node_label`]).
pub const NODE_LABEL: &str = "netattach.io/node";

/// The annotation naming the `IPPool` a claim's entry goes to.
pub const POOL_ANNOTATION: &str = "netattach.io/pool";

/// The annotation holding a claim's address.
pub const ADDRESS_ANNOTATION: &str = "netattach.io/address";

/// The value of [`NODE_LABEL`] for `node` (a hash: node names can be longer than a label).
pub fn node_label(node: &str) -> String {
    format!("{:016x}", stable_hash(node))
}

/// The value of [`ATTACHMENT_LABEL`] for `owner`: a hash of its pod and interface (of its
/// container and interface when it has no pod), the identity a release matches by.
pub fn attachment_label(owner: &Owner) -> String {
    let key = match owner.podref.as_deref().filter(|p| !p.is_empty()) {
        Some(pod) => format!("pod\0{pod}\0{}", owner.ifname),
        None => format!("container\0{}\0{}", owner.container_id, owner.ifname),
    };
    format!("{:016x}", stable_hash(&key))
}

impl KubeIpam {
    /// Create the reservation of `ip` in pool `pool` for `owner`, with the marks of a claim (the
    /// module doc). `Ok(true)`: this call holds it now. `Ok(false)`: it exists already
    /// (another attachment's, or a leftover: either way not this address), without a read,
    /// unless an earlier attempt of this call went unanswered and may have created it: then it
    /// is read, and if it names exactly this attachment it is this call's.
    pub(crate) async fn create_claim(
        &self,
        pool: &str,
        ip: IpAddr,
        network: Option<&str>,
        owner: &Owner,
        deadline: Instant,
    ) -> Result<bool, IpamError> {
        let name = orip_name(ip, network);
        let what = format!(
            "reserving {ip} (OverlappingRangeIPReservation `{}/{name}`)",
            self.namespace()
        );
        let mut obj = OverlappingRangeIPReservation::new(
            &name,
            OverlappingRangeIPReservationSpec {
                containerid: owner.container_id.clone(),
                podref: owner.podref.clone().unwrap_or_default(),
                ifname: owner.ifname.clone(),
            },
        );
        obj.metadata.namespace = Some(self.namespace().to_string());
        obj.metadata.finalizers = Some(vec![CLAIM_FINALIZER.to_string()]);
        let mut labels = BTreeMap::from([(ATTACHMENT_LABEL.to_string(), attachment_label(owner))]);
        if let Some(turns) = self.turns() {
            labels.insert(NODE_LABEL.to_string(), node_label(turns.node()));
        }
        obj.metadata.labels = Some(labels);
        obj.metadata.annotations = Some(BTreeMap::from([
            (POOL_ANNOTATION.to_string(), pool.to_string()),
            (ADDRESS_ANNOTATION.to_string(), ip.to_string()),
        ]));
        let mut unanswered = false;
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let failure = match self.orips().create(&PostParams::default(), &obj).await {
                Ok(created) => {
                    self.remember_claim(&created);
                    return Ok(true);
                }
                Err(e) => classify(e, &what, self.namespace()),
            };
            match failure {
                ApiFailure::Conflict if !unanswered => {
                    Stats::bump(&self.stats.orip_taken);
                    return Ok(false);
                }
                ApiFailure::Conflict => match self.read_orip(&name).await {
                    Ok(Some(existing)) => {
                        let s = &existing.spec;
                        let ours = s.containerid == owner.container_id
                            && s.ifname == owner.ifname
                            && s.podref.as_str() == owner.podref.as_deref().unwrap_or("");
                        if ours {
                            self.remember_claim(&existing);
                        } else {
                            Stats::bump(&self.stats.orip_taken);
                        }
                        return Ok(ours);
                    }
                    // Deleted in between: create again.
                    Ok(None) => unanswered = false,
                    Err(e) => match classify(e, &what, self.namespace()) {
                        ApiFailure::Fatal(e) => return Err(e),
                        ApiFailure::Conflict | ApiFailure::Transient(_) => {}
                    },
                },
                ApiFailure::Transient(e) => {
                    unanswered = true;
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

    /// Delete the reservation `name` with `preconditions`, then remove [`CLAIM_FINALIZER`] if it
    /// carries it (the delete only marked it). `Ok(false)`: it is gone already, or changed since
    /// the preconditions were taken (kept).
    pub(crate) async fn delete_reservation(
        &self,
        name: &str,
        preconditions: Preconditions,
    ) -> Result<bool, kube::Error> {
        let dp = DeleteParams {
            preconditions: Some(preconditions),
            ..DeleteParams::default()
        };
        let marked = match self.orips().delete(name, &dp).await {
            Ok(answer) => answer.left(),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(mut marked) = marked else {
            return Ok(true);
        };
        // Marked for deletion, kept by finalizers: remove ours (resourceVersion-checked; a
        // change in between is read and the removal tried again).
        for _ in 0..3 {
            if !marked.finalizers().iter().any(|f| f == CLAIM_FINALIZER) {
                return Ok(true);
            }
            let rest: Vec<&String> = marked
                .finalizers()
                .iter()
                .filter(|f| *f != CLAIM_FINALIZER)
                .collect();
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": marked.metadata.resource_version,
                    "finalizers": if rest.is_empty() { serde_json::Value::Null } else { serde_json::json!(rest) },
                }
            });
            match self
                .orips()
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => match self.read_orip(name).await? {
                    Some(now) if now.metadata.deletion_timestamp.is_some() => marked = now,
                    _ => return Ok(true),
                },
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Delete the reservations created ahead of a pool entry that `owner` releases (its
    /// container and interface), found by their [`ATTACHMENT_LABEL`] (from the API server's
    /// cache): for a release that found no pool
    /// entry, as when the daemon that claimed the address was killed before the entry landed.
    /// Returns how many were deleted. Best effort: a leftover reservation only keeps its
    /// address from being reused, and the garbage collector deletes it once its pod is gone.
    pub(crate) async fn release_claims_of(&self, owner: &Owner) -> usize {
        let lp = ListParams::default()
            .labels(&format!("{ATTACHMENT_LABEL}={}", attachment_label(owner)))
            .match_any();
        let listed = match self.orips().list(&lp).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(%owner, error = %e, "cannot list the attachment's reservations; the garbage collector deletes them once its pod is gone");
                return 0;
            }
        };
        let mut deleted = 0;
        for orip in listed {
            // By container and interface, as a DEL releases: a pod recreated under the same
            // name (the same label) has claims of its own, which this release must not take.
            let s = &orip.spec;
            if !owner.releases(&s.containerid, &s.podref, &s.ifname) {
                continue;
            }
            let name = orip.name_any();
            let pre = Preconditions {
                uid: orip.metadata.uid.clone(),
                resource_version: orip.metadata.resource_version.clone(),
            };
            match self.delete_reservation(&name, pre).await {
                Ok(true) => {
                    deleted += 1;
                    tracing::info!(orip = %name, %owner, "released a reservation whose pool entry never landed");
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(orip = %name, %owner, error = %e, "cannot delete reservation"),
            }
        }
        deleted
    }

    /// Whether the reservation of `ip` names `owner` (CNI CHECK of an address whose pool entry
    /// may not have landed yet; a quorum read).
    ///
    /// # Errors
    ///
    /// When the API server refuses or does not answer.
    pub async fn reservation_names(
        &self,
        ip: IpAddr,
        network: Option<&str>,
        owner: &Owner,
    ) -> Result<bool, IpamError> {
        let name = orip_name(ip, network);
        match self.read_orip(&name).await {
            Ok(found) => Ok(found.is_some_and(|o| {
                names_attachment(
                    &o.spec,
                    &owner.container_id,
                    owner.podref.as_deref().unwrap_or(""),
                    &owner.ifname,
                )
            })),
            Err(e) => match classify(e, &format!("reading {name}"), self.namespace()) {
                ApiFailure::Transient(e) | ApiFailure::Fatal(e) => Err(e),
                ApiFailure::Conflict => Ok(false),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attachment_label_is_a_valid_label_value_that_names_the_pod_and_interface() {
        let a = Owner::new("c1", Some("ns/pod".into()), "net1");
        let recreated = Owner::new("c2", Some("ns/pod".into()), "net1");
        let other_if = Owner::new("c1", Some("ns/pod".into()), "net2");
        let no_pod = Owner::new("c1", None, "net1");
        assert_eq!(attachment_label(&a), attachment_label(&recreated));
        assert_ne!(attachment_label(&a), attachment_label(&other_if));
        assert_ne!(attachment_label(&a), attachment_label(&no_pod));
        let v = attachment_label(&a);
        assert_eq!(v.len(), 16);
        assert!(v.bytes().all(|b| b.is_ascii_hexdigit()), "{v}");
    }
}
