//! The `netattach` meta-plugin (CNI type `netattach`): Multus' job, run in the shim.
//!
//! The container runtime calls it as its primary CNI config. It finds the pod and its NADs (the
//! node daemon, or files in local mode: [`source`]), resolves the delegates with
//! [`netattach_cluster::resolve`] — cluster network on `CNI_IFNAME`, then `defaultNetworks`,
//! then the `k8s.v1.cni.cncf.io/networks` annotation — and runs each delegate itself with the
//! CNI runtime protocol (`runner`).
//!
//! - ADD waits for `readinessindicatorfile`, writes the durable attachment record *before* the
//!   first delegate runs, runs the delegates in order, and on a failure tears down everything
//!   it added in reverse — the failing delegate included — and names the network and interface
//!   that failed, keeping that delegate's CNI code. After all succeed it records their results
//!   (once, durably) while it publishes network-status (a failure of either is torn down too:
//!   Longhorn silently falls back to the pod IP when the status is missing) and returns the
//!   cluster network's result.
//! - DEL works from the record alone (the daemon and the API may be down), falls back to a
//!   legacy Multus scratch cache, runs every delegate's DEL in reverse, continues past errors,
//!   reports all of them, and removes the record only when everything succeeded.
//! - CHECK checks every recorded attachment, secondary ones included.
//! - GC DELs records the runtime no longer lists, then forwards GC to every delegate network
//!   with the valid attachments expanded to the delegates' own interfaces.
//! - STATUS forwards to the cluster network and `defaultNetworks`, and in Kubernetes mode asks
//!   the daemon whether it is ready.
//!
//! Deliberate differences from Multus:
//! - a pod the source does not know fails ADD with code 11 (Multus returns an empty success);
//! - the record is written atomically and durably; ADD with an old record for the same
//!   container first tears the old attachments down (Multus overwrites its cache and leaks);
//! - after a failed ADD whose teardown fully succeeded, the record is removed (nothing is left);
//! - CHECK covers secondary networks; GC covers secondary networks (Multus only the cluster
//!   network), and refuses to forward GC to secondary networks when a live container's
//!   interfaces are unknown, so a lost record can never free a live address.
//!
//! `default-route` in the annotation is applied after each delegate as Multus does
//! (`default_route`): the other interfaces lose their default routes of that family, the
//! asking one gets a default route via the requested gateway, and the results say so.

mod default_route;
mod runner;
pub mod source;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use netattach_cluster::daemon_api::EVENT_REASON_ADD_FAILED;
use netattach_cluster::delegates::{DirConfSource, cni_args_for, delegate_cni_args};
use netattach_cluster::record::{self, AttachmentRecord, PodRef, RecordedDelegate};
use netattach_cluster::status::{NetworkStatus, statuses_from_result};
use netattach_cluster::{Delegate, MetaConfig, NadSource, PodInfo, multus_cache, resolve};
use netattach_cni::CniArgs;
use netattach_cni::error::{CniError, code};
use netattach_cni::result::CniResult;
use netattach_cni::skel::{Plugin, Request};

use crate::errors::collect;
use runner::{Conflist, Env};

/// The meta-plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct Meta;

/// Parses the config and applies its `logLevel` and `logFile`.
fn parse_meta(req: &Request) -> Result<MetaConfig, CniError> {
    let meta =
        MetaConfig::parse(&req.conf.bytes).map_err(|e| CniError::from(netattach_cluster::Error::from(e)))?;
    crate::logging::configure(meta.log_level.map(|l| l.filter()), meta.log_file.as_deref());
    Ok(meta)
}

/// `binDir` then the runtime's `CNI_PATH` (Multus' `binDirs`).
fn plugin_path(meta: &MetaConfig, runtime: &[PathBuf]) -> Vec<PathBuf> {
    let mut path = vec![meta.bin_dir.clone()];
    path.extend(runtime.iter().filter(|p| **p != meta.bin_dir).cloned());
    path
}

/// Who a record or error is about: `ns/name` or the container id.
fn pod_label(pod: &PodInfo, container_id: &str) -> String {
    if pod.name.is_empty() {
        format!("container {container_id}")
    } else {
        format!("pod {}/{}", pod.namespace, pod.name)
    }
}

/// Resolves the delegates; without a pod only the cluster network runs (as Multus). On a
/// failure `reason` gets the reason of the pod Event it deserves.
fn delegates_for(
    meta: &MetaConfig,
    pod: Option<&PodInfo>,
    ifname: &str,
    nads: &dyn NadSource,
    reason: &mut &'static str,
) -> Result<Vec<Delegate>, CniError> {
    let result = match pod {
        Some(p) => resolve(meta, p, ifname, nads, &DirConfSource),
        None => {
            let bare = MetaConfig {
                default_networks: Vec::new(),
                ..meta.clone()
            };
            resolve(&bare, &PodInfo::default(), ifname, nads, &DirConfSource)
        }
    };
    result.map_err(|e| {
        *reason = e.event_reason();
        CniError::from(e)
    })
}

fn args_string(pod_args: &CniArgs, d: &RecordedDelegate) -> Result<String, CniError> {
    delegate_cni_args(pod_args, &d.cni_args)
        .map(|a| a.to_env_string())
        .map_err(CniError::from)
}

/// Names the network and interface a delegate error belongs to, keeping its code.
fn about_delegate(e: CniError, verb: &str, who: &str, d: &RecordedDelegate) -> CniError {
    e.context(format!(
        "{who}: {verb} network `{}` (interface `{}`)",
        d.network_name, d.ifname
    ))
}

/// DELs `delegates[..=last]` in reverse; returns every failure, each naming its network.
fn teardown(
    delegates: &[RecordedDelegate],
    last: usize,
    pod_args: &CniArgs,
    container_id: &str,
    netns: Option<&Path>,
    path: &[PathBuf],
    who: &str,
) -> Vec<CniError> {
    let mut errors = Vec::new();
    for d in delegates.iter().take(last.saturating_add(1)).rev() {
        let args = match args_string(pod_args, d) {
            Ok(a) => a,
            Err(e) => {
                errors.push(about_delegate(e, "DEL of", who, d));
                continue;
            }
        };
        let env = Env {
            container_id,
            netns,
            args,
            path,
        };
        for e in runner::del(d, &env) {
            errors.push(about_delegate(e, "DEL of", who, d));
        }
    }
    errors
}

fn pod_ref(pod: &PodInfo) -> PodRef {
    PodRef {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
    }
}

fn pod_from_ref(r: &PodRef) -> PodInfo {
    PodInfo {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        uid: r.uid.clone(),
        ..PodInfo::default()
    }
}

/// The status entries of every delegate (cluster network `default: true`).
fn statuses(delegates: &[RecordedDelegate]) -> Result<Vec<NetworkStatus>, CniError> {
    let mut out = Vec::new();
    for d in delegates {
        let Some(raw) = &d.result else { continue };
        let result =
            CniResult::from_value(raw).map_err(|e| e.context(format!("result of `{}`", d.network_name)))?;
        let all = statuses_from_result(&d.network_name, &result, d.is_default, None);
        if all.iter().any(|s| !s.interface.is_empty()) {
            out.extend(all);
        } else {
            out.push(NetworkStatus::from_result(
                &d.network_name,
                &result,
                d.is_default,
                &d.ifname,
            ));
        }
    }
    Ok(out)
}

fn combine(what: &str, errors: Vec<CniError>) -> Result<(), CniError> {
    collect(what, errors)
}

impl Meta {
    /// ADD; `reason` is set to the Event reason of a resolution failure.
    fn add_with(
        &self,
        meta: &MetaConfig,
        req: &Request,
        reason: &mut &'static str,
    ) -> Result<CniResult, CniError> {
        let cid = req.inv.container_id.as_str();
        let netns = req.inv.netns.as_deref();
        let started = std::time::Instant::now();
        source::wait_readiness(meta)?;
        let key = source::pod_key(&req.inv.args)?;
        let lookup = source::lookup(meta, key.as_ref())?;
        let looked_up = started.elapsed();
        let delegates = delegates_for(
            meta,
            lookup.pod.as_ref(),
            &req.inv.ifname,
            lookup.nads.as_ref(),
            reason,
        )?;
        let pod = lookup.pod.clone().unwrap_or_default();
        let who = pod_label(&pod, cid);
        let pod_args = cni_args_for(&pod, cid, &req.inv.args)?;
        let path = plugin_path(meta, &req.inv.path);

        // An old record for this container: an earlier ADD that was not DELeted. Undo it first
        // so nothing it holds is forgotten when the record is overwritten.
        if let Some(old) = record::read(&meta.cni_dir, cid)? {
            tracing::warn!(
                container = cid,
                "ADD found an earlier attachment record; tearing it down first"
            );
            let old_args = cni_args_for(&pod_from_ref(&old.pod), cid, &req.inv.args)?;
            let last = old.delegates.len().saturating_sub(1);
            let errors = teardown(&old.delegates, last, &old_args, cid, netns, &path, &who);
            if !errors.is_empty() {
                let e = combine("tearing down the earlier attachments", errors)
                    .err()
                    .unwrap_or_else(|| CniError::internal("teardown failed"));
                return Err(CniError::try_again(format!(
                    "{who}: the earlier attachments of container {cid} could not be removed ({e}); fix: see the error, the runtime retries"
                )));
            }
            record::remove(&meta.cni_dir, cid)?;
        }

        let netns_str = netns.map(|p| p.display().to_string()).unwrap_or_default();
        let mut rec = AttachmentRecord::new(
            cid,
            &netns_str,
            pod_ref(&pod),
            delegates.iter().map(RecordedDelegate::from).collect(),
        );
        record::write_atomic(&meta.cni_dir, &rec)?;
        let recorded_first = started.elapsed();

        for (i, delegate) in delegates.iter().enumerate() {
            let outcome = args_string(&pod_args, &rec.delegates[i])
                .and_then(|args| {
                    let env = Env {
                        container_id: cid,
                        netns,
                        args,
                        path: &path,
                    };
                    runner::add(&rec.delegates[i], &env)
                })
                .and_then(|result| default_route::apply(delegate, netns, result));
            // Results go into the record once, after the last delegate: a DEL that finds the
            // record from before that write still undoes everything (prevResult is optional).
            let failure = match outcome {
                Ok(result) => {
                    rec.delegates[i].result = Some(result);
                    None
                }
                Err(e) => Some(e),
            };
            if let Some(e) = failure {
                let e = about_delegate(e, "adding", &who, &rec.delegates[i]);
                tracing::error!(error = %e, "delegate ADD failed; tearing down");
                return Err(self.abort(meta, &rec, i, &pod_args, netns, &path, &who, e));
            }
            tracing::info!(
                network = %rec.delegates[i].network_name,
                ifname = %rec.delegates[i].ifname,
                "{who}: added interface"
            );
        }

        let last = rec.delegates.len().saturating_sub(1);
        let delegated = started.elapsed();
        // The results are recorded (two fsyncs) while the daemon publishes the status (an API
        // round trip): neither waits for the other. Should the record fail after the status
        // went out, the teardown below leaves a status naming interfaces that are gone, on a
        // sandbox the runtime discards; its next ADD writes the status again.
        let (recorded, published) = std::thread::scope(|scope| {
            let recording = scope.spawn(|| {
                record::write_atomic(&meta.cni_dir, &rec)
                    .map(|_| ())
                    .map_err(CniError::from)
            });
            let published = match (&lookup.pod, statuses(&rec.delegates)) {
                (Some(p), Ok(st)) => source::publish(meta, p, &st),
                (None, Ok(_)) => Ok(()),
                (_, Err(e)) => Err(e),
            };
            let recorded = match recording.join() {
                Ok(written) => written,
                Err(_) => Err(CniError::internal("recording the results panicked")),
            };
            (recorded, published)
        });
        tracing::debug!(
            lookup = ?looked_up,
            first_record = ?recorded_first,
            delegates = ?delegated,
            published = ?started.elapsed(),
            "ADD phases (time since the meta-plugin took the request)"
        );
        if let Err(e) = recorded {
            tracing::error!(error = %e, "recording the results failed; tearing down");
            return Err(self.abort(meta, &rec, last, &pod_args, netns, &path, &who, e));
        }
        if let Err(e) = published {
            let e = CniError::try_again(format!(
                "{who}: every network was attached but the network-status could not be published ({}); everything was torn down so the pod never runs without its status",
                e.details
            ));
            return Err(self.abort(meta, &rec, last, &pod_args, netns, &path, &who, e));
        }

        let master = rec
            .delegates
            .first()
            .and_then(|d| d.result.as_ref())
            .ok_or_else(|| CniError::internal("the cluster network has no result"))?;
        CniResult::from_value(master).map_err(|e| e.context("the cluster network's result"))
    }

    /// Tears an ADD down after `failure`, and builds the error to return.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site, all plain borrowed state"
    )]
    fn abort(
        &self,
        meta: &MetaConfig,
        rec: &AttachmentRecord,
        last: usize,
        pod_args: &CniArgs,
        netns: Option<&Path>,
        path: &[PathBuf],
        who: &str,
        failure: CniError,
    ) -> CniError {
        let errors = teardown(
            &rec.delegates,
            last,
            pod_args,
            &rec.container_id,
            netns,
            path,
            who,
        );
        if errors.is_empty() {
            if let Err(e) = record::remove(&meta.cni_dir, &rec.container_id) {
                tracing::warn!(error = %e, "could not remove the attachment record after a clean teardown");
            }
            return failure;
        }
        let listed: Vec<String> = errors.iter().map(ToString::to_string).collect();
        tracing::error!(errors = ?listed, "teardown after a failed ADD was incomplete; the record is kept for DEL");
        let mut failure = failure;
        failure.details = format!(
            "{}; the teardown also failed ({}); the attachment record is kept so the runtime's DEL retries it",
            failure.details,
            listed.join("; ")
        );
        failure
    }
}

impl Plugin for Meta {
    fn about(&self) -> String {
        format!("netattach meta-plugin {}", env!("CARGO_PKG_VERSION"))
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let meta = parse_meta(req)?;
        let mut reason = EVENT_REASON_ADD_FAILED;
        let outcome = self.add_with(&meta, req, &mut reason);
        if let Err(e) = &outcome {
            // Kubernetes mode: a Warning Event on the pod says why (best effort; the CNI error
            // is returned unchanged whatever happens to the event).
            source::report_add_failure(&meta, &req.inv.args, reason, e);
        }
        outcome
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let meta = parse_meta(req)?;
        let cid = req.inv.container_id.as_str();
        let (delegates, pod, from_multus) = match record::read(&meta.cni_dir, cid)? {
            Some(rec) => (rec.delegates, pod_from_ref(&rec.pod), false),
            None => {
                match multus_cache::read(
                    &meta.multus_cache_dir,
                    cid,
                    &req.inv.ifname,
                    meta.cni_version.as_str(),
                )? {
                    Some(d) => {
                        tracing::info!(container = cid, "DEL from a legacy Multus cache");
                        let key = source::pod_key(&req.inv.args).ok().flatten();
                        let pod = key
                            .map(|k| PodInfo {
                                namespace: k.namespace,
                                name: k.name,
                                uid: k.uid.unwrap_or_default(),
                                ..PodInfo::default()
                            })
                            .unwrap_or_default();
                        (d, pod, true)
                    }
                    None => {
                        tracing::debug!(
                            container = cid,
                            "DEL: no attachment record and no Multus cache; nothing to do"
                        );
                        return Ok(());
                    }
                }
            }
        };
        let who = pod_label(&pod, cid);
        let pod_args = cni_args_for(&pod, cid, &req.inv.args)?;
        let path = plugin_path(&meta, &req.inv.path);
        let last = delegates.len().saturating_sub(1);
        let errors = teardown(
            &delegates,
            last,
            &pod_args,
            cid,
            req.inv.netns.as_deref(),
            &path,
            &who,
        );
        combine(&format!("{who}: DEL"), errors)?;
        if from_multus {
            let file = meta.multus_cache_dir.join(cid);
            if let Err(e) = std::fs::remove_file(&file)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(CniError::io(format!(
                    "removing Multus cache `{}` after DEL: {e}",
                    file.display()
                )));
            }
        } else {
            record::remove(&meta.cni_dir, cid)?;
        }
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let meta = parse_meta(req)?;
        let cid = req.inv.container_id.as_str();
        let rec = record::read(&meta.cni_dir, cid)?.ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                "container unknown",
                format!(
                    "no attachment record for container {cid} in `{}`; fix: the container was not added by netattach (or its record was lost): recreate the pod",
                    meta.cni_dir.display()
                ),
            )
        })?;
        let pod = pod_from_ref(&rec.pod);
        let who = pod_label(&pod, cid);
        let pod_args = cni_args_for(&pod, cid, &req.inv.args)?;
        let path = plugin_path(&meta, &req.inv.path);
        let mut errors = Vec::new();
        for d in &rec.delegates {
            let outcome = args_string(&pod_args, d).and_then(|args| {
                let env = Env {
                    container_id: cid,
                    netns: req.inv.netns.as_deref(),
                    args,
                    path: &path,
                };
                runner::check(d, &env)
            });
            if let Err(e) = outcome {
                errors.push(about_delegate(e, "checking", &who, d));
            }
        }
        combine(&format!("{who}: CHECK"), errors)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let meta = parse_meta(req)?;
        source::daemon_ready(&meta)?;
        let nads = source::nads_only(&meta)?;
        let delegates =
            resolve(&meta, &PodInfo::default(), "eth0", nads.as_ref(), &DirConfSource).map_err(|e| {
                let e = CniError::from(e);
                if e.code == code::TRY_AGAIN_LATER {
                    CniError::new(
                        code::PLUGIN_NOT_AVAILABLE,
                        "cluster network not available",
                        e.details,
                    )
                } else {
                    e
                }
            })?;
        let path = plugin_path(&meta, &req.inv.path);
        let env = Env {
            container_id: "",
            netns: None,
            args: String::new(),
            path: &path,
        };
        for d in &delegates {
            let list = Conflist::parse(&d.conf_bytes, &d.network_name)?;
            runner::status(&list, &env).map_err(|e| e.context(format!("network `{}`", d.network_name)))?;
        }
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let meta = parse_meta(req)?;
        let path = plugin_path(&meta, &req.inv.path);
        let mut errors = Vec::new();
        let listed = req.conf.raw.contains_key("cni.dev/valid-attachments")
            || req.conf.raw.contains_key("cni.dev/attachments");
        if !listed {
            tracing::warn!("GC without cni.dev/valid-attachments: nothing is collected");
            return Ok(());
        }
        let valid = req.conf.valid_attachments()?;
        let valid_ids: BTreeSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();

        // 1. DEL every record the runtime no longer lists.
        let mut lists: Vec<Vec<u8>> = Vec::new();
        let mut expanded: BTreeSet<(String, String)> = valid
            .iter()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        let mut complete = true;
        for id in record::list(&meta.cni_dir)? {
            let rec = match record::read(&meta.cni_dir, &id) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    complete = false;
                    errors.push(CniError::from(e));
                    continue;
                }
            };
            for d in &rec.delegates {
                if !lists.contains(&d.conf_bytes) {
                    lists.push(d.conf_bytes.clone());
                }
            }
            if valid_ids.contains(id.as_str()) {
                for d in &rec.delegates {
                    expanded.insert((id.clone(), d.ifname.clone()));
                }
                continue;
            }
            let pod = pod_from_ref(&rec.pod);
            let who = pod_label(&pod, &id);
            tracing::info!(container = %id, "GC: the runtime no longer lists this container; removing its attachments");
            let pod_args = cni_args_for(&pod, &id, &CniArgs::default())?;
            let netns = Path::new(&rec.netns);
            let netns = (!rec.netns.is_empty() && netns.exists()).then_some(netns);
            let last = rec.delegates.len().saturating_sub(1);
            let failed = teardown(&rec.delegates, last, &pod_args, &id, netns, &path, &who);
            if failed.is_empty() {
                record::remove(&meta.cni_dir, &id)?;
            } else {
                errors.extend(failed);
            }
        }

        // Live containers without a record of ours: a Multus cache names their interfaces;
        // otherwise their secondary interfaces are unknown.
        for a in &valid {
            if record::read(&meta.cni_dir, &a.container_id)
                .ok()
                .flatten()
                .is_some()
            {
                continue;
            }
            match multus_cache::read(
                &meta.multus_cache_dir,
                &a.container_id,
                &a.ifname,
                meta.cni_version.as_str(),
            ) {
                Ok(Some(ds)) => {
                    for d in ds {
                        expanded.insert((a.container_id.clone(), d.ifname.clone()));
                    }
                }
                _ => complete = false,
            }
        }

        // 2. Forward GC to the cluster network, defaultNetworks and every recorded network.
        let nads = source::nads_only(&meta)?;
        let mut primaries: Vec<Vec<u8>> = Vec::new();
        match resolve(&meta, &PodInfo::default(), "eth0", nads.as_ref(), &DirConfSource) {
            Ok(ds) => primaries.extend(ds.into_iter().map(|d| d.conf_bytes)),
            Err(e) => {
                tracing::warn!(error = %e, "GC: cannot resolve the cluster network; not forwarding GC to it")
            }
        }
        let valid_json: Vec<Value> = expanded
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
        let env = Env {
            container_id: "",
            netns: None,
            args: String::new(),
            path: &path,
        };
        let mut done: Vec<Vec<u8>> = Vec::new();
        for (bytes, primary) in primaries
            .iter()
            .map(|b| (b, true))
            .chain(lists.iter().map(|b| (b, false)))
        {
            if done.contains(bytes) {
                continue;
            }
            done.push(bytes.clone());
            let list = match Conflist::parse(bytes, "(recorded)") {
                Ok(l) => l,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if !primary && !complete {
                tracing::warn!(
                    network = list.name(),
                    "GC: not forwarded: a live container's interfaces are unknown (no record), so its addresses could be freed"
                );
                continue;
            }
            errors.extend(runner::gc(&list, &valid_json, &env));
        }
        combine("GC", errors)
    }
}
