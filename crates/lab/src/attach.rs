//! Attaching and detaching pods exactly as a container runtime does: the NAD-like network
//! configuration on stdin, the CNI environment (`CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS` with the Kubernetes pod keys, `CNI_PATH`), the plugin
//! found by type on `CNI_PATH` and executed by `netattach_cni::exec`.
//!
//! The plugin process is spawned from a thread inside the node's namespace, so it inherits
//! that namespace as its "host": the master NIC it looks up is the node's storage NIC.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netattach_cni::exec::{exec_plugin, find_plugin};
use netattach_cni::{CniError, CniResult, Version};
use serde_json::{Value, json};
use tracing::debug;

use crate::config::{NETWORK_NAME, NODE_NIC, POD_IFNAME, POD_K8S_NAMESPACE, Plan};
use crate::error::LabError;
use crate::topology::{Pod, Topology};

/// How long one plugin call may take.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The plugin type of the network.
pub const PLUGIN_TYPE: &str = "macvlan";

/// What ADD gave for one pod.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Index into [`Topology::pods`].
    pub pod: usize,
    /// The plugin's result, or its CNI error.
    pub outcome: Result<CniResult, CniError>,
    /// How long ADD took.
    pub took: Duration,
}

impl Attachment {
    /// The first address of the result.
    pub fn address(&self) -> Option<IpNet> {
        self.outcome
            .as_ref()
            .ok()
            .and_then(|r| r.ips.first().map(|ip| ip.address))
    }
}

/// The runtime side for the lab: where the plugins and the IPAM store are.
#[derive(Debug, Clone)]
pub struct Runtime {
    bin_dir: PathBuf,
    ipam_dir: PathBuf,
    plugin: PathBuf,
}

/// The configuration a NetworkAttachmentDefinition for the lab's storage network would carry.
pub fn network_config(plan: &Plan, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": Version::V1_1_0.as_str(),
        "name": NETWORK_NAME,
        "type": PLUGIN_TYPE,
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

/// `CNI_ARGS` as kubelet/containerd pass them.
pub fn cni_args(pod: &Pod) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_K8S_NAMESPACE};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        pod.plan.netns, pod.container_id, pod.uid
    )
}

impl Runtime {
    /// Find the plugin in the lab's bin dir (as `CNI_PATH` lookup would).
    pub fn new(bin_dir: PathBuf, ipam_dir: PathBuf) -> Result<Runtime, LabError> {
        let plugin = find_plugin(PLUGIN_TYPE, std::slice::from_ref(&bin_dir)).map_err(|e| LabError::Io {
            context: "finding the macvlan plugin in the lab's CNI bin dir",
            path: bin_dir.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()),
        })?;
        Ok(Runtime {
            bin_dir,
            ipam_dir,
            plugin,
        })
    }

    /// The IPAM store directory (`local_dir`).
    pub fn ipam_dir(&self) -> &Path {
        &self.ipam_dir
    }

    fn env(&self, command: &str, pod: &Pod) -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), pod.container_id.clone()),
            ("CNI_NETNS".into(), pod.ns.netns().path().display().to_string()),
            ("CNI_IFNAME".into(), POD_IFNAME.into()),
            ("CNI_ARGS".into(), cni_args(pod)),
            ("CNI_PATH".into(), self.bin_dir.display().to_string()),
        ]
    }

    fn call(
        &self,
        topo: &Topology,
        pod: &Pod,
        command: &str,
        conf: &Value,
    ) -> Result<Result<Vec<u8>, CniError>, LabError> {
        let node = topo.node_of(pod).ok_or_else(|| LabError::State {
            path: PathBuf::from(pod.plan.netns.clone()),
            problem: format!("pod refers to node #{} which does not exist", pod.plan.node + 1),
        })?;
        let stdin = serde_json::to_vec(conf).map_err(|e| LabError::State {
            path: PathBuf::from(&pod.plan.netns),
            problem: format!("cannot serialise the network config: {e}"),
        })?;
        let env = self.env(command, pod);
        debug!(pod = %pod.plan.netns, node = %node.plan.netns, command, "executing plugin");
        // The child process inherits the network namespace of the thread that spawns it.
        node.ns
            .netns()
            .run(|| exec_plugin(&self.plugin, &env, &stdin, PLUGIN_TIMEOUT))
            .map_err(LabError::netdev(format!(
                "running the plugin in node namespace {}",
                node.plan.netns
            )))
    }

    /// CNI ADD for pod `index`.
    pub fn add(&self, plan: &Plan, topo: &Topology, index: usize) -> Result<Attachment, LabError> {
        let Some(pod) = topo.pods.get(index) else {
            return Err(LabError::State {
                path: PathBuf::from("pods"),
                problem: format!("no pod #{index}"),
            });
        };
        let started = Instant::now();
        let conf = network_config(plan, &self.ipam_dir);
        let outcome = self
            .call(topo, pod, "ADD", &conf)?
            .and_then(|out| CniResult::from_slice(&out))
            .and_then(|r| {
                if r.ips.is_empty() {
                    Err(CniError::internal("ADD succeeded but the result has no address"))
                } else {
                    Ok(r)
                }
            });
        Ok(Attachment {
            pod: index,
            outcome,
            took: started.elapsed(),
        })
    }

    /// CNI DEL for the pod of `attachment`, with the ADD result as `prevResult` (as libcni
    /// sends it from its cache).
    pub fn del(
        &self,
        plan: &Plan,
        topo: &Topology,
        attachment: &Attachment,
    ) -> Result<Result<(), CniError>, LabError> {
        let Some(pod) = topo.pods.get(attachment.pod) else {
            return Err(LabError::State {
                path: PathBuf::from("pods"),
                problem: format!("no pod #{}", attachment.pod),
            });
        };
        let mut conf = network_config(plan, &self.ipam_dir);
        if let (Ok(prev), Value::Object(map)) = (&attachment.outcome, &mut conf)
            && let Ok(v) = prev.to_value(Version::V1_1_0)
        {
            map.insert("prevResult".into(), v);
        }
        Ok(self.call(topo, pod, "DEL", &conf)?.map(drop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LabConfig;

    #[test]
    fn the_network_config_is_what_a_nad_would_carry() {
        let cfg = LabConfig {
            binary: "/proc/self/exe".into(),
            mode: "vepa".into(),
            mtu: 9000,
            ..LabConfig::default()
        };
        let plan = Plan::from_config(&cfg).expect("plan");
        let v = network_config(&plan, Path::new("/run/netattach-lab/ipam"));
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["name"], "lab-storage");
        assert_eq!(v["type"], "macvlan");
        assert_eq!(v["master"], "storage0");
        assert_eq!(v["mode"], "vepa");
        assert_eq!(v["mtu"], 9000);
        assert_eq!(v["ipam"]["type"], "whereabouts");
        assert_eq!(v["ipam"]["range"], "192.168.4.0/24");
        assert_eq!(v["ipam"]["datastore"], "local");
        assert_eq!(v["ipam"]["local_dir"], "/run/netattach-lab/ipam");
    }
}
