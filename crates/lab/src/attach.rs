//! Attaching and detaching pods exactly as containerd does on a K3s node: the primary CNI
//! config is the `netattach` meta-plugin, executed with the CNI environment (`CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME=eth0`, `CNI_ARGS` with the Kubernetes pod keys,
//! `CNI_PATH`) and its config on stdin. The meta-plugin does the rest, as on a node: it runs
//! the cluster network from the node's conf dir on `eth0`, reads the pod's
//! `k8s.v1.cni.cncf.io/networks` annotation, runs the storage NAD on `lhnet1`, and publishes
//! network-status.
//!
//! What a node's Kubernetes would provide comes from files the lab writes first
//! ([`Runtime::prepare`]), in the meta-plugin's local mode (`localSource`):
//! - `<lab>/k8s/nads/longhorn-system-storage.yaml`: the storage NAD (macvlan + whereabouts);
//! - `<lab>/k8s/pods/longhorn-system/<pod>.json`: each pod with Longhorn's exact annotation;
//! - `<lab>/nodes/<node>/net.d/10-lab-cluster.conflist`: the node's cluster network (the part
//!   flannel plays on K3s), netattach's own macvlan on `cluster0` + whereabouts over
//!   10.42.0.0/16, in the same local IPAM store as the storage range (a different pool).
//!
//! The meta-plugin writes `<lab>/k8s/pods/longhorn-system/<pod>.status.json` (network-status)
//! and keeps its attachment records in `<lab>/nodes/<node>/cni/`.
//!
//! With `--kubeconfig` ([`Runtime::with_daemons`]) the meta-plugin runs in Kubernetes mode
//! instead: no `localSource`, `daemonSocket` = the socket of its node's `netattach daemon`,
//! which answers from the API server's NAD and pod and publishes network-status on the pod;
//! no NAD or pod file is written (the lab creates the API objects, see [`crate::api`]).
//!
//! The plugin process is spawned from a thread inside the node's namespace, so it inherits
//! that namespace as its "host": the master NICs it looks up are the node's.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netattach_cni::exec::{exec_plugin, find_plugin};
use netattach_cni::{CniError, CniResult, Version};
use serde_json::{Value, json};
use tracing::debug;

use crate::config::{
    CLUSTER_CONFLIST, CLUSTER_IFNAME, CLUSTER_NETWORK_NAME, CLUSTER_NIC, CLUSTER_RANGE, LONGHORN_ANNOTATION,
    META_NAME, NAD_NAME, NETWORK_NAME, NETWORKS_ANNOTATION, NODE_NIC, NodePlan, POD_K8S_NAMESPACE, Plan,
    STORAGE_IFNAME,
};
use crate::error::LabError;
use crate::topology::{Pod, Topology};

/// How long one meta-plugin call (both networks) may take.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The plugin type the runtime executes: the meta-plugin.
pub const PLUGIN_TYPE: &str = "netattach";
/// The plugin type of both networks under it.
pub const DELEGATE_TYPE: &str = "macvlan";
/// `daemonTimeoutSeconds` of the meta config in Kubernetes mode.
pub const DAEMON_TIMEOUT_SECONDS: u64 = 20;
/// What an attachment's status says until the lab read it from the API server.
pub const STATUS_NOT_READ: &str = "network-status not read from the API server yet";

/// What ADD gave for one pod.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Index into [`Topology::pods`].
    pub pod: usize,
    /// The meta-plugin's result (the cluster network's, on `eth0`), or its CNI error.
    pub outcome: Result<CniResult, CniError>,
    /// The address `lhnet1` carries in the pod, read from the pod namespace after ADD.
    pub storage: Option<IpNet>,
    /// The network-status the meta-plugin published (a JSON list), or why there is none.
    pub status: Result<Vec<Value>, String>,
    /// How long ADD took.
    pub took: Duration,
}

impl Attachment {
    /// The pod's cluster-network (`eth0`) address: the first address of the result.
    pub fn cluster_address(&self) -> Option<IpNet> {
        self.outcome
            .as_ref()
            .ok()
            .and_then(|r| r.ips.first().map(|ip| ip.address))
    }
}

/// One node's directories, as a node has them (`confDir`, `cniDir`, Multus' cache dir).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDirs {
    /// The CNI conf dir holding the cluster network's conflist.
    pub conf_dir: PathBuf,
    /// The meta-plugin's attachment records.
    pub cni_dir: PathBuf,
    /// Where a legacy Multus cache would be (kept inside the lab so DEL never looks at the
    /// host's `/var/lib/cni/multus`).
    pub multus_cache_dir: PathBuf,
}

/// The runtime side for the lab: where the plugins, the IPAM store, the local "Kubernetes" and
/// the nodes' directories are.
#[derive(Debug, Clone)]
pub struct Runtime {
    bin_dir: PathBuf,
    ipam_dir: PathBuf,
    local_dir: PathBuf,
    nodes_dir: PathBuf,
    plugin: PathBuf,
    /// Kubernetes mode: each node's daemon socket, by node namespace name.
    daemon_sockets: Option<BTreeMap<String, PathBuf>>,
}

/// The storage network's CNI config: what the `longhorn-system/storage` NAD carries.
pub fn network_config(plan: &Plan, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": Version::V1_1_0.as_str(),
        "name": NETWORK_NAME,
        "type": DELEGATE_TYPE,
        "master": NODE_NIC,
        "mode": plan.mode.as_str(),
        "mtu": plan.mtu,
        "ipam": {
            "type": "whereabouts",
            "range": plan.range_text,
            "datastore": "local",
            "local_dir": ipam_dir.display().to_string(),
        }
    })
}

/// The storage NAD as a user would `kubectl apply` it.
pub fn nad_yaml(plan: &Plan, ipam_dir: &Path) -> Result<String, LabError> {
    let config =
        serde_json::to_string_pretty(&network_config(plan, ipam_dir)).map_err(|e| LabError::State {
            path: PathBuf::from("nads"),
            problem: format!("cannot serialise the storage NAD config: {e}"),
        })?;
    let mut yaml = format!(
        "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: {NAD_NAME}\n  namespace: {POD_K8S_NAMESPACE}\nspec:\n  config: |\n"
    );
    for line in config.lines() {
        yaml.push_str("    ");
        yaml.push_str(line);
        yaml.push('\n');
    }
    Ok(yaml)
}

/// A node's cluster network (flannel's part on K3s): macvlan on `cluster0`, whereabouts over
/// [`CLUSTER_RANGE`] in the lab's local store.
pub fn cluster_conflist(ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": Version::V1_1_0.as_str(),
        "name": CLUSTER_NETWORK_NAME,
        "plugins": [{
            "type": DELEGATE_TYPE,
            "master": CLUSTER_NIC,
            "mode": "bridge",
            "ipam": {
                "type": "whereabouts",
                "range": CLUSTER_RANGE,
                "datastore": "local",
                "local_dir": ipam_dir.display().to_string(),
            }
        }]
    })
}

/// The pod as the meta-plugin's local source reads it: a `PodInfo` with Longhorn's annotation.
pub fn pod_info(pod: &Pod) -> Value {
    json!({
        "namespace": POD_K8S_NAMESPACE,
        "name": pod.plan.netns,
        "uid": pod.uid,
        "annotations": { NETWORKS_ANNOTATION: LONGHORN_ANNOTATION },
    })
}

/// `CNI_ARGS` as kubelet/containerd pass them.
pub fn cni_args(pod: &Pod) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_K8S_NAMESPACE};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        pod.plan.netns, pod.container_id, pod.uid
    )
}

fn write_json(path: &Path, value: &Value) -> Result<(), LabError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| LabError::State {
        path: path.to_path_buf(),
        problem: format!("cannot serialise: {e}"),
    })?;
    fs::write(path, text).map_err(LabError::io("writing a lab file", path))
}

fn create_dir(path: &Path) -> Result<(), LabError> {
    fs::create_dir_all(path).map_err(LabError::io("creating a lab directory", path))
}

impl Runtime {
    /// Find the meta-plugin in the lab's bin dir (as `CNI_PATH` lookup would). `local_dir` is the
    /// meta-plugin's `localSource`; `nodes_dir` holds one directory per node.
    pub fn new(
        bin_dir: PathBuf,
        ipam_dir: PathBuf,
        local_dir: PathBuf,
        nodes_dir: PathBuf,
    ) -> Result<Runtime, LabError> {
        let plugin = find_plugin(PLUGIN_TYPE, std::slice::from_ref(&bin_dir)).map_err(|e| LabError::Io {
            context: "finding the netattach meta-plugin in the lab's CNI bin dir",
            path: bin_dir.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()),
        })?;
        Ok(Runtime {
            bin_dir,
            ipam_dir,
            local_dir,
            nodes_dir,
            plugin,
            daemon_sockets: None,
        })
    }

    /// Kubernetes mode: the meta-plugin asks the node's daemon (`sockets`: node namespace name
    /// to socket) instead of reading the local source.
    pub fn with_daemons(mut self, sockets: BTreeMap<String, PathBuf>) -> Runtime {
        self.daemon_sockets = Some(sockets);
        self
    }

    /// Whether the meta-plugin runs in Kubernetes mode (node daemons).
    pub fn kubernetes_mode(&self) -> bool {
        self.daemon_sockets.is_some()
    }

    /// The IPAM store directory (`local_dir`), shared by both networks and all nodes.
    pub fn ipam_dir(&self) -> &Path {
        &self.ipam_dir
    }

    /// The meta-plugin's `localSource`.
    pub fn local_dir(&self) -> &Path {
        &self.local_dir
    }

    /// The directories of `node`.
    pub fn node_dirs(&self, node: &NodePlan) -> NodeDirs {
        let root = self.nodes_dir.join(&node.netns);
        NodeDirs {
            conf_dir: root.join("net.d"),
            cni_dir: root.join("cni"),
            multus_cache_dir: root.join("multus"),
        }
    }

    /// The storage NAD file.
    pub fn nad_path(&self) -> PathBuf {
        self.local_dir
            .join("nads")
            .join(format!("{POD_K8S_NAMESPACE}-{NAD_NAME}.yaml"))
    }

    /// The pod file of the pod named `name`.
    pub fn pod_path(&self, name: &str) -> PathBuf {
        self.local_dir
            .join("pods")
            .join(POD_K8S_NAMESPACE)
            .join(format!("{name}.json"))
    }

    /// The network-status file the meta-plugin writes for the pod named `name`.
    pub fn status_path(&self, name: &str) -> PathBuf {
        self.local_dir
            .join("pods")
            .join(POD_K8S_NAMESPACE)
            .join(format!("{name}.status.json"))
    }

    /// Write what the cluster would hold: the storage NAD, every pod with Longhorn's annotation
    /// and every node's cluster-network conflist (and create the nodes' record dirs).
    /// In Kubernetes mode only the conflists and dirs are written: the NAD and the pods are
    /// API objects.
    pub fn prepare(&self, plan: &Plan, topo: &Topology) -> Result<(), LabError> {
        if !self.kubernetes_mode() {
            let nad = self.nad_path();
            if let Some(dir) = nad.parent() {
                create_dir(dir)?;
            }
            fs::write(&nad, nad_yaml(plan, &self.ipam_dir)?)
                .map_err(LabError::io("writing the storage NAD", &nad))?;
        }
        for node in &plan.nodes {
            let dirs = self.node_dirs(node);
            create_dir(&dirs.conf_dir)?;
            create_dir(&dirs.cni_dir)?;
            write_json(
                &dirs.conf_dir.join(CLUSTER_CONFLIST),
                &cluster_conflist(&self.ipam_dir),
            )?;
        }
        for pod in topo.pods.iter().filter(|_| !self.kubernetes_mode()) {
            let path = self.pod_path(&pod.plan.netns);
            if let Some(dir) = path.parent() {
                create_dir(dir)?;
            }
            write_json(&path, &pod_info(pod))?;
        }
        Ok(())
    }

    /// The meta-plugin config of `node`: the primary CNI config a node's containerd runs.
    pub fn meta_config(&self, node: &NodePlan) -> Value {
        let dirs = self.node_dirs(node);
        let mut conf = json!({
            "cniVersion": Version::V1_1_0.as_str(),
            "name": META_NAME,
            "type": PLUGIN_TYPE,
            "confDir": dirs.conf_dir,
            "cniDir": dirs.cni_dir,
            "binDir": self.bin_dir,
            "multusCacheDir": dirs.multus_cache_dir,
        });
        if let Value::Object(map) = &mut conf {
            match &self.daemon_sockets {
                None => {
                    map.insert("localSource".into(), json!(self.local_dir));
                }
                Some(sockets) => {
                    map.insert("daemonSocket".into(), json!(sockets.get(&node.netns)));
                    map.insert("daemonTimeoutSeconds".into(), json!(DAEMON_TIMEOUT_SECONDS));
                }
            }
        }
        conf
    }

    fn env(&self, command: &str, pod: &Pod) -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), pod.container_id.clone()),
            ("CNI_NETNS".into(), pod.ns.netns().path().display().to_string()),
            ("CNI_IFNAME".into(), CLUSTER_IFNAME.into()),
            ("CNI_ARGS".into(), cni_args(pod)),
            ("CNI_PATH".into(), self.bin_dir.display().to_string()),
        ]
    }

    fn call(
        &self,
        topo: &Topology,
        pod: &Pod,
        command: &str,
        prev: Option<&CniResult>,
    ) -> Result<Result<Vec<u8>, CniError>, LabError> {
        let node = topo.node_of(pod).ok_or_else(|| LabError::State {
            path: PathBuf::from(pod.plan.netns.clone()),
            problem: format!("pod refers to node #{} which does not exist", pod.plan.node + 1),
        })?;
        let mut conf = self.meta_config(&node.plan);
        // libcni sends the cached ADD result as prevResult on DEL.
        if let (Some(prev), Value::Object(map)) = (prev, &mut conf)
            && let Ok(v) = prev.to_value(Version::V1_1_0)
        {
            map.insert("prevResult".into(), v);
        }
        let stdin = serde_json::to_vec(&conf).map_err(|e| LabError::State {
            path: PathBuf::from(&pod.plan.netns),
            problem: format!("cannot serialise the meta-plugin config: {e}"),
        })?;
        let env = self.env(command, pod);
        debug!(pod = %pod.plan.netns, node = %node.plan.netns, command, "executing the meta-plugin");
        // The child process inherits the network namespace of the thread that spawns it.
        node.ns
            .netns()
            .run(|| exec_plugin(&self.plugin, &env, &stdin, PLUGIN_TIMEOUT))
            .map_err(LabError::netdev(format!(
                "running the meta-plugin in node namespace {}",
                node.plan.netns
            )))
    }

    /// The address `lhnet1` carries in `pod` (global scope), if the link is there.
    fn storage_address(pod: &Pod) -> Result<Option<IpNet>, LabError> {
        let name = &pod.plan.netns;
        let mut h = pod.ns.handle()?;
        let Some(link) = h
            .link_by_name(STORAGE_IFNAME)
            .map_err(LabError::netdev(format!("reading {STORAGE_IFNAME} in {name}")))?
        else {
            return Ok(None);
        };
        let addrs = h.addresses(link.index).map_err(LabError::netdev(format!(
            "reading addresses of {STORAGE_IFNAME} in {name}"
        )))?;
        Ok(addrs.into_iter().find(|a| a.scope == 0).map(|a| a.addr))
    }

    fn read_status(&self, name: &str) -> Result<Vec<Value>, String> {
        let path = self.status_path(name);
        let text = fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{} is not a JSON list: {e}", path.display()))
    }

    /// CNI ADD for pod `index`.
    pub fn add(&self, topo: &Topology, index: usize) -> Result<Attachment, LabError> {
        let Some(pod) = topo.pods.get(index) else {
            return Err(LabError::State {
                path: PathBuf::from("pods"),
                problem: format!("no pod #{index}"),
            });
        };
        let started = Instant::now();
        let outcome = self
            .call(topo, pod, "ADD", None)?
            .and_then(|out| CniResult::from_slice(&out))
            .and_then(|r| {
                if r.ips.is_empty() {
                    Err(CniError::internal("ADD succeeded but the result has no address"))
                } else {
                    Ok(r)
                }
            });
        let took = started.elapsed();
        let (storage, status) = if outcome.is_ok() {
            let status = if self.kubernetes_mode() {
                Err(STATUS_NOT_READ.to_string())
            } else {
                self.read_status(&pod.plan.netns)
            };
            (Self::storage_address(pod)?, status)
        } else {
            (None, Err("ADD failed".into()))
        };
        Ok(Attachment {
            pod: index,
            outcome,
            storage,
            status,
            took,
        })
    }

    /// CNI DEL for the pod of `attachment`, with the ADD result as `prevResult` (as libcni
    /// sends it from its cache).
    pub fn del(&self, topo: &Topology, attachment: &Attachment) -> Result<Result<(), CniError>, LabError> {
        let Some(pod) = topo.pods.get(attachment.pod) else {
            return Err(LabError::State {
                path: PathBuf::from("pods"),
                problem: format!("no pod #{}", attachment.pod),
            });
        };
        Ok(self
            .call(topo, pod, "DEL", attachment.outcome.as_ref().ok())?
            .map(drop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LabConfig;
    use netattach_cluster::NadSource;
    use netattach_cluster::local_source::LocalNadSource;

    fn plan() -> Plan {
        let cfg = LabConfig {
            binary: "/proc/self/exe".into(),
            mode: "vepa".into(),
            mtu: 9000,
            ..LabConfig::default()
        };
        Plan::from_config(&cfg).expect("plan")
    }

    #[test]
    fn the_storage_config_is_macvlan_and_whereabouts() {
        let v = network_config(&plan(), Path::new("/run/netattach-lab/ipam"));
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["name"], "storage");
        assert_eq!(v["type"], "macvlan");
        assert_eq!(v["master"], "storage0");
        assert_eq!(v["mode"], "vepa");
        assert_eq!(v["mtu"], 9000);
        assert_eq!(v["ipam"]["type"], "whereabouts");
        assert_eq!(v["ipam"]["range"], "192.168.4.0/24");
        assert_eq!(v["ipam"]["datastore"], "local");
        assert_eq!(v["ipam"]["local_dir"], "/run/netattach-lab/ipam");
    }

    #[test]
    fn the_nad_file_parses_as_the_meta_plugin_reads_it() {
        let yaml = nad_yaml(&plan(), Path::new("/run/netattach-lab/ipam")).expect("yaml");
        let mut src = LocalNadSource::new();
        src.add_yaml(&yaml, "test").expect("valid NAD YAML");
        let nad = src
            .get("longhorn-system", "storage")
            .expect("get")
            .expect("the NAD is there");
        let config: Value = serde_json::from_str(&nad.config).expect("spec.config is JSON");
        assert_eq!(
            config,
            network_config(&plan(), Path::new("/run/netattach-lab/ipam"))
        );
    }

    #[test]
    fn the_cluster_network_is_macvlan_over_the_k3s_pod_cidr() {
        let v = cluster_conflist(Path::new("/run/netattach-lab/ipam"));
        assert_eq!(v["name"], "cbr0");
        assert_eq!(v["plugins"][0]["type"], "macvlan");
        assert_eq!(v["plugins"][0]["master"], "cluster0");
        assert_eq!(v["plugins"][0]["ipam"]["range"], "10.42.0.0/16");
        assert_eq!(v["plugins"][0]["ipam"]["local_dir"], "/run/netattach-lab/ipam");
    }
}
