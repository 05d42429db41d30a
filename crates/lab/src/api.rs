//! `netattach lab --kubeconfig FILE`: what the cluster holds lives in a real API server instead
//! of files. [`ApiLab`] creates (idempotently) the namespace `longhorn-system`, one `Node`
//! object per lab node (without them kube-controller-manager's pod garbage collector deletes
//! pods bound to unknown nodes), the `longhorn-system/storage` NAD (the same `spec.config` as
//! the local YAML) and one Pod per lab pod (`spec.nodeName` = its lab node, Longhorn's
//! annotation, a container that never runs: there is no kubelet). It reads the network-status
//! the node daemons publish, and deletes exactly what it created ([`Created`], also recorded in
//! the lab state so that `lab down` can finish the job after a crash).
//!
//! The calls run on a small single-threaded Tokio runtime owned by [`ApiLab`]; every call is
//! bounded by [`API_TIMEOUT`].

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Namespace, Node, Pod, PodSpec, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use netattach_daemon::nad::{NetworkAttachmentDefinition, NetworkAttachmentDefinitionSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{LONGHORN_ANNOTATION, NAD_NAME, NETWORKS_ANNOTATION, POD_K8S_NAMESPACE};
use crate::error::LabError;

/// Upper bound of one API call.
pub const API_TIMEOUT: Duration = Duration::from_secs(15);
/// How long deleted objects (pods, the namespace) may take to disappear.
pub const GONE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a new namespace may take to get its `default` ServiceAccount (pods need it).
pub const SERVICE_ACCOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// The network-status annotation the daemons write.
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";
/// The image of the lab's pods; it is never pulled (no kubelet).
pub const POD_IMAGE: &str = "registry.invalid/pause";
/// Label on every object the lab creates.
pub const LAB_LABEL: &str = "netattach.io/lab";

const POLL: Duration = Duration::from_millis(100);

/// What the lab created in the API server (and so must delete). Serialised into the lab state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// The kubeconfig used.
    pub kubeconfig: PathBuf,
    /// Whether the namespace `longhorn-system` was created by the lab.
    #[serde(default)]
    pub namespace: bool,
    /// Whether the storage NAD was created by the lab.
    #[serde(default)]
    pub nad: bool,
    /// Node objects the lab created.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Pods (in `longhorn-system`) the lab created.
    #[serde(default)]
    pub pods: Vec<String>,
}

/// A client of the lab's API server, with its own runtime.
pub struct ApiLab {
    rt: tokio::runtime::Runtime,
    client: Client,
    server: String,
    /// What was created so far.
    pub created: Created,
}

impl std::fmt::Debug for ApiLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiLab")
            .field("server", &self.server)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

fn api_err(context: impl Into<String>) -> impl FnOnce(kube::Error) -> LabError {
    let context = context.into();
    move |source| LabError::Api {
        context,
        problem: source.to_string(),
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

fn labels() -> BTreeMap<String, String> {
    [(LAB_LABEL.to_string(), "true".to_string())].into()
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(labels()),
        ..ObjectMeta::default()
    }
}

impl ApiLab {
    /// Load `kubeconfig`, build a client and check that the API server answers.
    pub fn connect(kubeconfig: &Path) -> Result<ApiLab, LabError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LabError::io("starting the lab's Tokio runtime", kubeconfig))?;
        let bad = |problem: String| {
            LabError::Input {
            field: "kubeconfig",
            value: kubeconfig.display().to_string(),
            problem,
            fix: "pass a readable kubeconfig of a running API server (e.g. the one `tools/testenv up` exports as KUBECONFIG)".into(),
        }
        };
        let config = rt.block_on(async {
            let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| bad(format!("cannot be read: {e}")))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(format!("cannot be loaded: {e}")))
        })?;
        let server = config.cluster_url.to_string();
        // The client spawns its request buffer on the current runtime.
        let client = {
            let _entered = rt.enter();
            Client::try_from(config).map_err(|e| bad(format!("gives no client: {e}")))?
        };
        let lab = ApiLab {
            rt,
            client,
            server,
            created: Created {
                kubeconfig: kubeconfig.to_path_buf(),
                ..Created::default()
            },
        };
        let version = lab.call("asking the API server for its version", {
            let c = lab.client.clone();
            async move { c.apiserver_version().await }
        });
        version.map_err(|e| bad(format!("the API server {} does not answer: {e}", lab.server)))?;
        Ok(lab)
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// One bounded API call: `Err` on timeout, `Ok(Err)` with the API's own error.
    fn attempt<T>(
        &self,
        context: &str,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, LabError> {
        self.rt
            .block_on(async { tokio::time::timeout(API_TIMEOUT, fut).await })
            .map_err(|_| LabError::Api {
                context: context.to_string(),
                problem: format!("no answer from {} within {API_TIMEOUT:?}", self.server),
            })
    }

    fn call<T>(
        &self,
        context: &str,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LabError> {
        self.attempt(context, fut)?.map_err(api_err(context))
    }

    /// A call whose "not found" (404) is success.
    fn delete_call<T>(
        &self,
        context: &str,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<(), LabError> {
        match self.attempt(context, fut)? {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(api_err(context)(e)),
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), POD_K8S_NAMESPACE)
    }

    /// Create the namespace `longhorn-system` unless it exists, and wait for its `default`
    /// ServiceAccount (pod admission needs it).
    pub fn ensure_namespace(&mut self) -> Result<(), LabError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let what = format!("reading namespace {POD_K8S_NAMESPACE}");
        if self.call(&what, api.get_opt(POD_K8S_NAMESPACE))?.is_none() {
            let ns = Namespace {
                metadata: meta(POD_K8S_NAMESPACE),
                ..Namespace::default()
            };
            let what = format!("creating namespace {POD_K8S_NAMESPACE}");
            self.created.namespace = true;
            match self.attempt(&what, api.create(&PostParams::default(), &ns))? {
                Ok(_) => {}
                Err(e) if is_status(&e, 409) => self.created.namespace = false,
                Err(e) => return Err(api_err(what)(e)),
            }
        }
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), POD_K8S_NAMESPACE);
        let deadline = Instant::now() + SERVICE_ACCOUNT_TIMEOUT;
        loop {
            if self
                .call("reading the default ServiceAccount", sas.get_opt("default"))?
                .is_some()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Api {
                    context: format!("waiting for ServiceAccount {POD_K8S_NAMESPACE}/default"),
                    problem: format!(
                        "not created within {SERVICE_ACCOUNT_TIMEOUT:?}; fix: check that kube-controller-manager runs"
                    ),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Create a Node object per name unless it exists (no kubelet: they are only names, so
    /// that pods bound to them are not garbage-collected as orphans).
    pub fn ensure_nodes(&mut self, names: &[String]) -> Result<(), LabError> {
        let api: Api<Node> = Api::all(self.client.clone());
        for name in names {
            let node = Node {
                metadata: meta(name),
                ..Node::default()
            };
            let what = format!("creating node {name}");
            match self.attempt(&what, api.create(&PostParams::default(), &node))? {
                Ok(_) => self.created.nodes.push(name.clone()),
                Err(e) if is_status(&e, 409) => {}
                Err(e) => return Err(api_err(what)(e)),
            }
        }
        Ok(())
    }

    /// Create the storage NAD with `config` as `spec.config`, or set `spec.config` of the one
    /// that exists.
    pub fn apply_nad(&mut self, config: &str) -> Result<(), LabError> {
        let api: Api<NetworkAttachmentDefinition> = Api::namespaced(self.client.clone(), POD_K8S_NAMESPACE);
        let what = format!("reading NAD {POD_K8S_NAMESPACE}/{NAD_NAME}");
        if self.call(&what, api.get_opt(NAD_NAME))?.is_some() {
            let patch = serde_json::json!({ "spec": { "config": config } });
            self.call(
                &format!("updating NAD {POD_K8S_NAMESPACE}/{NAD_NAME}"),
                api.patch(NAD_NAME, &PatchParams::default(), &Patch::Merge(&patch)),
            )?;
            return Ok(());
        }
        let mut nad = NetworkAttachmentDefinition::new(
            NAD_NAME,
            NetworkAttachmentDefinitionSpec {
                config: Some(config.to_string()),
            },
        );
        nad.metadata.labels = Some(labels());
        self.created.nad = true;
        self.call(
            &format!("creating NAD {POD_K8S_NAMESPACE}/{NAD_NAME}"),
            api.create(&PostParams::default(), &nad),
        )?;
        Ok(())
    }

    /// Create pod `name` bound to `node` with Longhorn's annotation (replacing a stale one of
    /// the same name); returns its UID.
    pub fn create_pod(&mut self, name: &str, node: &str) -> Result<String, LabError> {
        let api = self.pods();
        let mut metadata = meta(name);
        metadata.annotations =
            Some([(NETWORKS_ANNOTATION.to_string(), LONGHORN_ANNOTATION.to_string())].into());
        let pod = Pod {
            metadata,
            spec: Some(PodSpec {
                node_name: Some(node.to_string()),
                containers: vec![Container {
                    name: "pause".into(),
                    image: Some(POD_IMAGE.into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        if !self.created.pods.iter().any(|p| p == name) {
            self.created.pods.push(name.to_string());
        }
        let what = format!("creating pod {POD_K8S_NAMESPACE}/{name}");
        let made = match self.attempt(&what, api.create(&PostParams::default(), &pod))? {
            Ok(p) => p,
            Err(e) if is_status(&e, 409) => {
                // A stale pod from an earlier run: replace it.
                self.delete_pods(std::slice::from_ref(&name.to_string()))?;
                self.call(&what, api.create(&PostParams::default(), &pod))?
            }
            Err(e) => return Err(api_err(what)(e)),
        };
        made.metadata.uid.ok_or_else(|| LabError::Api {
            context: what,
            problem: "the created pod has no UID".into(),
        })
    }

    /// The pod's network-status annotation, parsed, or why there is none.
    pub fn network_status(&self, name: &str) -> Result<Vec<Value>, String> {
        let api = self.pods();
        let pod = self
            .call(&format!("reading pod {POD_K8S_NAMESPACE}/{name}"), api.get(name))
            .map_err(|e| e.to_string())?;
        let text = pod
            .metadata
            .annotations
            .and_then(|mut a| a.remove(NETWORK_STATUS_ANNOTATION))
            .ok_or_else(|| {
                format!("pod {POD_K8S_NAMESPACE}/{name} has no {NETWORK_STATUS_ANNOTATION} annotation")
            })?;
        serde_json::from_str(&text).map_err(|e| {
            format!("the {NETWORK_STATUS_ANNOTATION} annotation of {name} is not a JSON list: {e}")
        })
    }

    /// Delete pods immediately (grace period 0: there is no kubelet to confirm) and wait until
    /// they are gone.
    fn delete_pods(&self, names: &[String]) -> Result<(), LabError> {
        let api = self.pods();
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        for name in names {
            let what = format!("deleting pod {POD_K8S_NAMESPACE}/{name}");
            self.delete_call(&what, api.delete(name, &dp))?;
        }
        let deadline = Instant::now() + GONE_TIMEOUT;
        for name in names {
            loop {
                let what = format!("reading pod {POD_K8S_NAMESPACE}/{name}");
                if self.call(&what, api.get_opt(name))?.is_none() {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(LabError::Api {
                        context: format!("deleting pod {POD_K8S_NAMESPACE}/{name}"),
                        problem: format!("still present after {GONE_TIMEOUT:?}"),
                    });
                }
                std::thread::sleep(POLL);
            }
        }
        Ok(())
    }

    /// The pods the lab created that still exist.
    pub fn pods_left(&self) -> Result<Vec<String>, LabError> {
        let api = self.pods();
        let mut left = Vec::new();
        for name in &self.created.pods {
            let what = format!("reading pod {POD_K8S_NAMESPACE}/{name}");
            if self.call(&what, api.get_opt(name))?.is_some() {
                left.push(name.clone());
            }
        }
        Ok(left)
    }

    /// Delete everything [`ApiLab::created`] lists: pods, the NAD, the nodes and the namespace
    /// (waiting for the pods and the namespace to be gone). Returns the failures.
    pub fn remove_created(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        let pods = self.created.pods.clone();
        match self.delete_pods(&pods) {
            Ok(()) => self.created.pods.clear(),
            Err(e) => failures.push(e.to_string()),
        }
        let mut note = |r: Result<(), LabError>| {
            if let Err(e) = r {
                failures.push(e.to_string());
            }
        };
        if self.created.nad {
            let api: Api<NetworkAttachmentDefinition> =
                Api::namespaced(self.client.clone(), POD_K8S_NAMESPACE);
            note(self.delete_call(
                &format!("deleting NAD {POD_K8S_NAMESPACE}/{NAD_NAME}"),
                api.delete(NAD_NAME, &DeleteParams::default()),
            ));
            self.created.nad = false;
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        for name in std::mem::take(&mut self.created.nodes) {
            note(self.delete_call(
                &format!("deleting node {name}"),
                nodes.delete(&name, &DeleteParams::default()),
            ));
        }
        if self.created.namespace {
            let api: Api<Namespace> = Api::all(self.client.clone());
            let what = format!("deleting namespace {POD_K8S_NAMESPACE}");
            note(self.delete_call(&what, api.delete(POD_K8S_NAMESPACE, &DeleteParams::default())));
            let deadline = Instant::now() + GONE_TIMEOUT;
            loop {
                match self.call(&what, api.get_opt(POD_K8S_NAMESPACE)) {
                    Ok(None) => break,
                    Ok(Some(_)) if Instant::now() < deadline => std::thread::sleep(POLL),
                    Ok(Some(_)) => {
                        failures.push(format!(
                            "namespace {POD_K8S_NAMESPACE} still terminating after {GONE_TIMEOUT:?}"
                        ));
                        break;
                    }
                    Err(e) => {
                        failures.push(e.to_string());
                        break;
                    }
                }
            }
            self.created.namespace = false;
        }
        failures
    }
}

/// `lab down`: delete what a previous run recorded as created.
pub fn remove_recorded(created: &Created) -> Vec<String> {
    match ApiLab::connect(&created.kubeconfig) {
        Ok(mut lab) => {
            lab.created = created.clone();
            lab.remove_created()
        }
        Err(e) => vec![format!("cannot remove the lab's API objects: {e}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_round_trips_and_defaults() {
        let c = Created {
            kubeconfig: PathBuf::from("/k"),
            namespace: true,
            nad: true,
            nodes: vec!["nalab-n1".into()],
            pods: vec!["nalab-n1-p1".into()],
        };
        let text = serde_json::to_string(&c).expect("json");
        assert_eq!(serde_json::from_str::<Created>(&text).expect("parse"), c);
        let bare: Created = serde_json::from_str(r#"{"kubeconfig":"/k"}"#).expect("parse");
        assert!(!bare.namespace && bare.pods.is_empty());
    }
}
