//! Test support for code that talks to Kubernetes: a real kube-apiserver (with etcd and
//! kube-controller-manager) started by `tools/testenv`, never a mock.
//!
//! ```no_run
//! # async fn t() {
//! let cluster = netattach_testenv::cluster().await;     // shared by every test of the binary
//! let ns = cluster.namespace("nad").await;              // a fresh namespace for this test
//! let admin = cluster.admin_client();                   // system:masters
//! let node = cluster.node_client("node-1");             // what the node daemon may do
//! # let _ = (ns.name(), admin, node);
//! # }
//! ```
//!
//! The environment comes from `eval "$(tools/testenv up)"` (or `tools/test-k8s`, which also
//! builds the control plane and tears it down). When it is missing, [`cluster`] panics with the
//! command to run: a Kubernetes test never passes silently without a cluster.

pub mod private;

pub use private::PrivateTestenv;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::sync::OnceCell;

/// Environment variable set by `tools/testenv up`: the instance's state directory.
pub const ENV_DIR: &str = "NETATTACH_TESTENV_DIR";
/// Environment variable set by `tools/testenv up`: `node=kubeconfig` pairs, comma separated.
pub const ENV_NODE_KUBECONFIGS: &str = "NETATTACH_TESTENV_NODE_KUBECONFIGS";
/// Label put on every namespace made by [`Cluster::namespace`].
pub const NAMESPACE_LABEL: &str = "netattach.test/testenv";

/// What to run when no test environment is available.
pub const HOW_TO_START: &str = "tools/build --only control-plane && eval \"$(tools/testenv up)\"  \
     (from the repository root; or run everything with tools/test-k8s)";

/// A running test control plane. Get it with [`cluster`].
///
/// It holds configurations, not clients: a `kube::Client` is tied to the Tokio runtime it was
/// made on, and every `#[tokio::test]` has its own runtime. Make clients per test with
/// [`Cluster::admin_client`] and [`Cluster::node_client`]; they are cheap.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    admin: Config,
    nodes: BTreeMap<String, Config>,
}

static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();

/// The shared test cluster of this test binary, checked to be reachable.
///
/// # Panics
///
/// When the environment of `tools/testenv up` is missing or the apiserver does not answer; the
/// message says what to run.
pub async fn cluster() -> &'static Cluster {
    let cluster = match CLUSTER.get_or_try_init(Cluster::from_env).await {
        Ok(c) => c,
        Err(e) => panic!("netattach-testenv: {e}\n  start the test cluster with: {HOW_TO_START}"),
    };
    // Checked on every call, on the caller's runtime: a stopped instance fails loudly.
    if let Err(e) = cluster.admin_client().apiserver_version().await {
        panic!(
            "netattach-testenv: the test apiserver at {} does not answer: {e}\n  \
             restart it with: tools/testenv down && {HOW_TO_START}",
            cluster.admin.cluster_url
        );
    }
    cluster
}

async fn load_config(path: &Path) -> Result<Config, String> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("loading {}: {e}", path.display()))
}

impl Cluster {
    async fn from_env() -> Result<Cluster, String> {
        let dir = std::env::var_os(ENV_DIR)
            .map(PathBuf::from)
            .ok_or_else(|| format!("{ENV_DIR} is not set: no test cluster in this environment"))?;
        let admin_path = dir.join("kubeconfig").join("admin.kubeconfig");
        if !admin_path.exists() {
            return Err(format!(
                "{ENV_DIR}={} has no kubeconfig/admin.kubeconfig (was it torn down?)",
                dir.display()
            ));
        }
        let admin = load_config(&admin_path).await?;
        let mut nodes = BTreeMap::new();
        let pairs = std::env::var(ENV_NODE_KUBECONFIGS).unwrap_or_default();
        for pair in pairs.split(',').filter(|p| !p.is_empty()) {
            let (name, path) = pair
                .split_once('=')
                .ok_or_else(|| format!("{ENV_NODE_KUBECONFIGS}: '{pair}' is not node=path"))?;
            nodes.insert(name.to_string(), load_config(Path::new(path)).await?);
        }
        Ok(Cluster { dir, admin, nodes })
    }

    /// The state directory of the instance (logs, audit log, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kube-apiserver audit log (JSON lines, request metadata for every API request).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("logs").join("audit.log")
    }

    /// The admin kubeconfig file (the `KUBECONFIG` that `tools/testenv up` exports).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig").join("admin.kubeconfig")
    }

    /// The names of the simulated nodes that have an identity (`node-1`, `node-2`, ...).
    pub fn nodes(&self) -> Vec<&str> {
        self.nodes.keys().map(String::as_str).collect()
    }

    /// A client with full rights (group `system:masters`).
    pub fn admin_client(&self) -> Client {
        make_client(self.admin.clone())
    }

    /// A client with exactly the rights of the netattach node daemon on `node` (ClusterRole
    /// `netattach-node`: pods read + status patch, NADs read, whereabouts CRDs read/write, leases,
    /// events; no Secrets).
    ///
    /// # Panics
    ///
    /// When `node` has no identity in this instance (see [`Cluster::nodes`]).
    pub fn node_client(&self, node: &str) -> Client {
        match self.nodes.get(node) {
            Some(config) => make_client(config.clone()),
            None => panic!(
                "netattach-testenv: no identity for node '{node}'; this instance has {:?} \
                 (start more with: tools/testenv up --nodes N)",
                self.nodes()
            ),
        }
    }

    /// A fresh namespace for one test, named `<prefix>-<unique>`, ready for pods (its `default`
    /// ServiceAccount exists). It is deleted when the returned value is dropped.
    ///
    /// # Panics
    ///
    /// When the namespace cannot be created or does not become ready within 30 s.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let name = unique_name(prefix);
        let client = self.admin_client();
        let api: Api<Namespace> = Api::all(client.clone());
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some([(NAMESPACE_LABEL.to_string(), "true".to_string())].into());
        if let Err(e) = api.create(&PostParams::default(), &ns).await {
            panic!("netattach-testenv: creating namespace {name}: {e}");
        }
        let guard = TestNamespace {
            name,
            config: Some(self.admin.clone()),
        };
        // Pods are admitted only once kube-controller-manager made the default ServiceAccount.
        let sas: Api<ServiceAccount> = Api::namespaced(client, &guard.name);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match sas.get_opt("default").await {
                Ok(Some(_)) => break,
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(None) => panic!(
                    "netattach-testenv: namespace {}: ServiceAccount 'default' not created within 30s; \
                     is kube-controller-manager running? see {}/logs/kube-controller-manager.log",
                    guard.name,
                    self.dir.display()
                ),
                Err(e) => panic!("netattach-testenv: namespace {}: {e}", guard.name),
            }
        }
        guard
    }
}

fn make_client(config: Config) -> Client {
    match Client::try_from(config) {
        Ok(c) => c,
        Err(e) => panic!("netattach-testenv: building a client: {e}"),
    }
}

/// A DNS-1123 label unique to this process and call: `<prefix>-<pid>-<time>-<counter>`.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
        % 1_000_000_000;
    let mut prefix: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(30)
        .collect();
    while prefix.ends_with('-') {
        prefix.pop();
    }
    if prefix.is_empty() || !prefix.starts_with(|c: char| c.is_ascii_lowercase()) {
        prefix.insert(0, 't');
    }
    format!("{prefix}-{}-{t}-{n}", std::process::id())
}

/// A namespace owned by one test; deleted on [`TestNamespace::delete`] or on drop.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    config: Option<Config>,
}

impl TestNamespace {
    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Delete the namespace now (the namespace controller removes its contents).
    ///
    /// # Errors
    ///
    /// When the apiserver refuses the deletion (a missing namespace is not an error).
    pub async fn delete(mut self) -> Result<(), kube::Error> {
        let Some(config) = self.config.take() else {
            return Ok(());
        };
        delete_namespace(config, &self.name).await
    }
}

async fn delete_namespace(config: Config, name: &str) -> Result<(), kube::Error> {
    let api: Api<Namespace> = Api::all(Client::try_from(config)?);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let Some(config) = self.config.take() else { return };
        let name = std::mem::take(&mut self.name);
        // Drop cannot await, and may run on (or after) the test's runtime: delete on a private
        // runtime in a thread of our own. Best effort: a leftover namespace carries the label
        // NAMESPACE_LABEL and goes away with `tools/testenv down`.
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt
                && let Err(e) = rt.block_on(delete_namespace(config, &name))
            {
                eprintln!("netattach-testenv: deleting namespace {name}: {e}");
            }
        })
        .join();
        if joined.is_err() {
            eprintln!("netattach-testenv: the namespace cleanup thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unique_name;

    #[test]
    fn unique_names_are_dns_labels() {
        for prefix in [
            "nad",
            "Pod_Patch",
            "",
            "-x-",
            "9lives",
            "a-very-long-prefix-that-goes-on-and-on-and-on",
        ] {
            let a = unique_name(prefix);
            let b = unique_name(prefix);
            assert_ne!(a, b);
            assert!(a.len() <= 63, "{a}");
            assert!(a.starts_with(|c: char| c.is_ascii_lowercase()), "{a}");
            assert!(
                a.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{a}"
            );
            assert!(!a.ends_with('-'), "{a}");
        }
    }
}
