//! The watch caches (kube-rs reflectors) and the `Resolve` answer built from them.
//!
//! - Pods: only this node's (`spec.nodeName=<node>` field selector), and only their metadata:
//!   `Api<PartialObjectMeta<Pod>>` makes the apiserver send `PartialObjectMetadata`, so specs
//!   and statuses never reach the daemon. The cache then drops managed fields, labels, owner
//!   references, finalizers and the `kubectl.kubernetes.io/last-applied-configuration`
//!   annotation: a cached pod is its namespace, name, uid and annotations.
//! - NADs: all of them, typed, stripped to `spec.config` and the `resourceName` annotation.
//!
//! A watch that fails is retried with kube's default backoff and re-lists when its
//! resourceVersion is too old; the store keeps serving the last state meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};
use netattach_cluster::annotation::{
    DEFAULT_NETWORK_ANNOTATION, NETWORKS_ANNOTATION, parse_default_network, parse_networks,
};
use netattach_cluster::daemon_api::{NadKey, Response};
use netattach_cluster::delegates::{Nad, PodInfo};
use netattach_cni::error::code;

use crate::metrics::{CacheKind, Metrics};
use crate::nad::{self, NetworkAttachmentDefinition};

/// Where `v1.multus-cni.io/default-network` NADs without a namespace live (Multus'
/// `multusNamespace` default).
pub const DEFAULT_NETWORK_NAMESPACE: &str = "kube-system";

/// The annotation `kubectl apply` leaves; never needed, sometimes large.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A cached pod.
pub type CachedPod = PartialObjectMeta<Pod>;

/// Drops what a cached pod does not need.
pub fn strip_pod(pod: &mut CachedPod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// The pod as the shim sees it.
pub fn pod_info(pod: &CachedPod) -> PodInfo {
    let meta = &pod.metadata;
    PodInfo {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
    }
}

/// The readers of both caches.
#[derive(Clone)]
pub struct Caches {
    pods: Store<CachedPod>,
    nads: Store<NetworkAttachmentDefinition>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("pods", &self.pods.len())
            .field("nads", &self.nads.len())
            .finish()
    }
}

/// Watch settings.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// This node's name.
    pub node: String,
    /// Server-side watch timeout, seconds (the watch is re-opened after it).
    pub timeout_secs: u32,
}

impl Caches {
    /// Starts both reflectors on the current runtime. The returned future resolves once both
    /// caches have listed (it never resolves if a writer is dropped, which does not happen
    /// while the runtime runs).
    pub fn start(
        client: &Client,
        opts: &WatchOptions,
        metrics: &Arc<Metrics>,
    ) -> (Caches, impl Future<Output = ()> + use<>) {
        let pods_api: Api<CachedPod> = Api::all(client.clone());
        let pods_cfg = watcher::Config::default()
            .fields(&format!("spec.nodeName={}", opts.node))
            .timeout(opts.timeout_secs);
        let (pods, pods_writer) = reflector::store();
        let pods_stream = reflector::reflector(
            pods_writer,
            watcher(pods_api, pods_cfg).default_backoff().modify(strip_pod),
        );
        let nads_api: Api<NetworkAttachmentDefinition> = Api::all(client.clone());
        let nads_cfg = watcher::Config::default().timeout(opts.timeout_secs);
        let (nads, nads_writer) = reflector::store();
        let nads_stream = reflector::reflector(
            nads_writer,
            watcher(nads_api, nads_cfg).default_backoff().modify(nad::strip),
        );
        spawn_drain(pods_stream, CacheKind::Pods, metrics.clone());
        spawn_drain(nads_stream, CacheKind::Nads, metrics.clone());
        let caches = Caches { pods, nads };
        let ready = {
            let caches = caches.clone();
            async move {
                let (a, b) = futures::join!(caches.pods.wait_until_ready(), caches.nads.wait_until_ready());
                if a.is_err() || b.is_err() {
                    futures::future::pending::<()>().await;
                }
            }
        };
        (caches, ready)
    }

    /// Objects in the pod cache.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Objects in the NAD cache.
    pub fn nad_count(&self) -> usize {
        self.nads.len()
    }

    /// The cached pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        self.pods
            .get(&ObjectRef::new(name).within(namespace))
            .map(|p| pod_info(&p))
    }

    /// The cached NAD `namespace/name`.
    pub fn nad(&self, namespace: &str, name: &str) -> Option<Nad> {
        self.nads
            .get(&ObjectRef::new(name).within(namespace))
            .map(|n| nad::to_nad(&n))
    }
}

fn spawn_drain<S, T>(stream: S, kind: CacheKind, metrics: Arc<Metrics>)
where
    S: futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    T: Send,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                metrics.watch_error(kind);
                tracing::warn!(cache = ?kind, error = %e, "watch failed; retrying with backoff");
            }
        }
    });
}

/// The NADs a pod references, in order, without duplicates: the default-network NAD, then the
/// networks annotation's, then `extra`. An annotation that does not parse contributes nothing:
/// the shim parses it again and reports the error with field and fix.
pub fn referenced_nads(
    pod: Option<&PodInfo>,
    extra: &[NadKey],
    default_network_namespace: &str,
) -> Vec<NadKey> {
    let mut keys: Vec<NadKey> = Vec::new();
    let mut push = |k: NadKey| {
        if !keys.contains(&k) {
            keys.push(k);
        }
    };
    if let Some(pod) = pod {
        let annotations: &BTreeMap<String, String> = &pod.annotations;
        if let Some(value) = annotations.get(DEFAULT_NETWORK_ANNOTATION) {
            match parse_default_network(value, default_network_namespace) {
                Ok(Some(sel)) => push(NadKey {
                    namespace: sel.namespace,
                    name: sel.name,
                }),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(pod = %pod.name, error = %e, "unparsable default-network annotation")
                }
            }
        }
        if let Some(value) = annotations.get(NETWORKS_ANNOTATION) {
            match parse_networks(value, &pod.namespace) {
                Ok(sels) => {
                    for sel in sels {
                        push(NadKey {
                            namespace: sel.namespace,
                            name: sel.name,
                        });
                    }
                }
                Err(e) => tracing::debug!(pod = %pod.name, error = %e, "unparsable networks annotation"),
            }
        }
    }
    for k in extra {
        push(k.clone());
    }
    keys
}

/// The answer to `Resolve`, from lookups only (`pod` and `nad` read the caches).
pub fn resolve(
    pod: Option<PodInfo>,
    uid: Option<&str>,
    extra: &[NadKey],
    default_network_namespace: &str,
    nad: impl Fn(&str, &str) -> Option<Nad>,
) -> Response {
    if let (Some(cached), Some(want)) = (&pod, uid.filter(|u| !u.is_empty()))
        && cached.uid != want
    {
        return Response::Error {
            code: code::TRY_AGAIN_LATER,
            message: format!(
                "pod {}/{}: the daemon's cache has uid {} but the runtime asks for uid {want}: the cache is \
                 behind a recreated pod; retry",
                cached.namespace, cached.name, cached.uid
            ),
        };
    }
    let mut nads = Vec::new();
    let mut missing = Vec::new();
    for key in referenced_nads(pod.as_ref(), extra, default_network_namespace) {
        match nad(&key.namespace, &key.name) {
            Some(n) => nads.push(n),
            None => missing.push(key),
        }
    }
    Response::Resolved { pod, nads, missing }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> NadKey {
        NadKey {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn pod(annotations: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: "app".into(),
            name: "p".into(),
            uid: "u1".into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn nads(known: &[(&str, &str)]) -> impl Fn(&str, &str) -> Option<Nad> {
        let known: Vec<(String, String)> = known
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        move |ns, name| {
            known.iter().any(|(a, b)| a == ns && b == name).then(|| Nad {
                namespace: ns.into(),
                name: name.into(),
                config: "{}".into(),
                resource_name: None,
            })
        }
    }

    #[test]
    fn both_annotation_forms_and_namespace_defaults() {
        let p = pod(&[
            (DEFAULT_NETWORK_ANNOTATION, "cluster-net"),
            (
                NETWORKS_ANNOTATION,
                r#"[{"name":"a"},{"name":"b","namespace":"other"}]"#,
            ),
        ]);
        assert_eq!(
            referenced_nads(
                Some(&p),
                &[key("kube-system", "extra"), key("app", "a")],
                DEFAULT_NETWORK_NAMESPACE
            ),
            vec![
                key("kube-system", "cluster-net"),
                key("app", "a"),
                key("other", "b"),
                key("kube-system", "extra")
            ]
        );
        let p = pod(&[(NETWORKS_ANNOTATION, "a@lhnet1, other/b")]);
        assert_eq!(
            referenced_nads(Some(&p), &[], DEFAULT_NETWORK_NAMESPACE),
            vec![key("app", "a"), key("other", "b")]
        );
    }

    #[test]
    fn an_unparsable_annotation_contributes_nothing() {
        let p = pod(&[(NETWORKS_ANNOTATION, "a,,b")]);
        assert_eq!(
            referenced_nads(Some(&p), &[key("x", "y")], DEFAULT_NETWORK_NAMESPACE),
            vec![key("x", "y")]
        );
    }

    #[test]
    fn resolve_splits_found_and_missing() {
        let p = pod(&[(NETWORKS_ANNOTATION, "a,b")]);
        let r = resolve(
            Some(p.clone()),
            Some("u1"),
            &[],
            DEFAULT_NETWORK_NAMESPACE,
            nads(&[("app", "a")]),
        );
        let Response::Resolved { pod, nads, missing } = r else {
            panic!("not resolved: {r:?}");
        };
        assert_eq!(pod, Some(p));
        assert_eq!(nads.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(missing, vec![key("app", "b")]);
    }

    #[test]
    fn a_bare_default_network_is_looked_up_in_the_multus_namespace_the_shim_sends() {
        let p = pod(&[(DEFAULT_NETWORK_ANNOTATION, "cluster-net")]);
        assert_eq!(
            referenced_nads(Some(&p), &[], "netattach-system"),
            vec![key("netattach-system", "cluster-net")]
        );
    }

    #[test]
    fn a_uid_mismatch_is_retryable_and_an_absent_pod_is_none() {
        let r = resolve(
            Some(pod(&[])),
            Some("u2"),
            &[],
            DEFAULT_NETWORK_NAMESPACE,
            nads(&[]),
        );
        assert!(
            matches!(r, Response::Error { code: 11, ref message } if message.contains("u2")),
            "{r:?}"
        );
        let r = resolve(Some(pod(&[])), None, &[], DEFAULT_NETWORK_NAMESPACE, nads(&[]));
        assert!(matches!(r, Response::Resolved { pod: Some(_), .. }));
        let r = resolve(
            None,
            Some("u2"),
            &[key("k", "n")],
            DEFAULT_NETWORK_NAMESPACE,
            nads(&[("k", "n")]),
        );
        assert!(
            matches!(r, Response::Resolved { pod: None, ref nads, .. } if nads.len() == 1),
            "{r:?}"
        );
    }
}
