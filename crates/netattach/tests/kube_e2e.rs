//! End-to-end tests against the real kube-apiserver of `tools/testenv` (issue 4 item 8).
//!
//! Pods and NetworkAttachmentDefinitions are created through the API with the admin client; a
//! real `netattach daemon` process runs with the restricted node identity of `node-1`; the
//! installed `netattach` shim is invoked exactly as containerd invokes its primary CNI config
//! (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS=/run/netns/<pod ns>`, `CNI_IFNAME=eth0`,
//! `CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..`,
//! `CNI_PATH`, stdin = the `00-netattach.conflist` plugin with `name` and `cniVersion`
//! injected), from inside the simulated node's network namespace.
//!
//! # The node
//!
//! Per test (all in namespaces the test creates; deleted on drop, also on panic):
//!
//! ```text
//!   node netns (the node's host netns)          switch netns
//!   ┌───────────────────────────────┐  veth    ┌──────────┐
//!   │ stor0 (storage NIC, macvlan   │──────────│ stor0p   │
//!   │        master of the NADs)    │          └──────────┘
//!   │ cni0  (flannel's bridge, made │
//!   │        by the first ADD)      │
//!   └───────────────────────────────┘
//!   pod netns per pod: eth0 (flannel: veth on cni0), net1 / lhnet1 / ... (macvlan on stor0)
//! ```
//!
//! The cluster network is the real flannel CNI plugin with K3s's `10-flannel.conflist` and a
//! hand-written `subnet.env`. Two deviations from K3s's file, both forced:
//!
//! - `cniVersion` is `0.4.0`, not `1.0.0`: our `flannel` is the flannel meta-plugin of
//!   containernetworking/plugins v0.9.1 (see tools/README.md), which speaks CNI up to 0.4.0;
//! - the flannel plugin gets `subnetFile`, `dataDir` and `ipam.dataDir` (all keys that plugin
//!   documents), pointing at the test's temp dir: the defaults `/run/flannel/subnet.env`,
//!   `/var/lib/cni/flannel` and `/var/lib/cni/networks` would be shared host paths.
//!
//! Addresses: flannel 198.19.0.0/16 with this node's subnet 198.19.7.0/24; NADs 198.18.4.0/24,
//! 198.18.5.0/24 and 198.18.6.0/24 (whereabouts with `"datastore": "local"` in a temp dir).
//!
//! # Running
//!
//! `tools/test-k8s env CARGO_TARGET_DIR=target/e2e cargo test -p netattach --test kube_e2e`
//! (as root). Without root or without the test cluster every test FAILS with what to do.
//! `api_server_down_during_del_still_removes_everything` starts and stops a control plane of
//! its own (`tools/testenv up --dir <tmp>`), so stopping its apiserver never disturbs the
//! tests that share the cluster of `tools/test-k8s`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use netattach_cluster::daemon_api::{Request, Response};
use netattach_daemon::nad::{NetworkAttachmentDefinition, NetworkAttachmentDefinitionSpec};
use serde_json::{Value, json};
use support::daemon::NodeDaemon;
use support::{Attachment, Ns, Runner, Topology, assert_safe_address};

/// The simulated node (its identity exists in every `tools/testenv` instance).
const NODE: &str = "node-1";
/// flannel's `FLANNEL_NETWORK` and this node's `FLANNEL_SUBNET` (gateway `.1` on `cni0`).
const FLANNEL_NETWORK: &str = "198.19.0.0/16";
const FLANNEL_SUBNET: &str = "198.19.7.1/24";
const FLANNEL_PREFIX: &str = "198.19.7.";
const STORAGE_RANGE: &str = "198.18.4.0/24";
const MACNET_RANGE: &str = "198.18.5.0/24";
const ALTNET_RANGE: &str = "198.18.6.0/24";
const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
const DEFAULT_NETWORK: &str = "v1.multus-cni.io/default-network";
const WAIT: Duration = Duration::from_secs(30);
/// The upstream binaries the bin dir gets next to netattach.
const TOOLS: [&str; 6] = [
    "flannel",
    "bridge",
    "host-local",
    "loopback",
    "portmap",
    "bandwidth",
];

// ---------------------------------------------------------------------------------------------
// Bin dir, daemon process

/// `target/tools/bin` (or `$NETATTACH_TOOLS_BIN`), checked to hold every upstream binary.
fn tools_bin() -> PathBuf {
    let dir = std::env::var_os("NETATTACH_TOOLS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/bin"));
    for t in TOOLS {
        assert!(
            dir.join(t).is_file(),
            "{} has no `{t}`; build it with: tools/build --only peers",
            dir.display()
        );
    }
    dir
}

/// The bin dir of this test process: `netattach install` plus links to the upstream flannel,
/// bridge, host-local, loopback, portmap and bandwidth; removed when the process exits.
fn bin_dir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("netattach-e2e-bin-")
            .tempdir()
            .expect("temp bin dir")
            .keep();
        let out = Command::new(env!("CARGO_BIN_EXE_netattach"))
            .arg("install")
            .arg("--bin-dir")
            .arg(&dir)
            .env_remove("CNI_COMMAND")
            .output()
            .expect("run netattach install");
        assert!(
            out.status.success(),
            "netattach install --bin-dir {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let tools = tools_bin();
        for t in TOOLS {
            let target = tools.join(t).canonicalize().expect("canonical tool path");
            std::os::unix::fs::symlink(&target, dir.join(t)).expect("link tool");
        }
        extern "C" fn remove_bin_dir() {
            if let Some(dir) = BIN.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe {
            libc::atexit(remove_bin_dir);
        }
        dir
    })
}

/// The node's daemon, with what these tests ask of it.
struct Daemon(NodeDaemon);

impl std::ops::Deref for Daemon {
    type Target = NodeDaemon;
    fn deref(&self) -> &NodeDaemon {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut NodeDaemon {
        &mut self.0
    }
}

impl Daemon {
    /// Waits until the daemon's caches hold pod `ns/name` with `uid` and every NAD it
    /// references (or, with `expect_missing`, until the pod is there at all).
    fn wait_pod(&self, ns: &str, name: &str, uid: &str, expect_missing: bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let req = Request::Resolve {
                namespace: ns.into(),
                name: name.into(),
                uid: Some(uid.into()),
                extra: Vec::new(),
                multus_namespace: None,
            };
            let last = self.send(&req);
            if let Response::Resolved {
                pod: Some(_),
                missing,
                ..
            } = &last
                && (expect_missing || missing.is_empty())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pod {ns}/{name} (uid {uid}) not in the daemon's caches within {WAIT:?}: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The world of one test

/// A pod created through the API, with its network namespace and the runtime's attachment.
struct KubePod {
    namespace: String,
    name: String,
    uid: String,
    ns: Ns,
    att: Attachment,
}

/// One test's node: topology, CNI dirs, flannel files, the daemon, API clients.
struct World {
    topo: Topology,
    conf_dir: tempfile::TempDir,
    cni_dir: tempfile::TempDir,
    flannel: tempfile::TempDir,
    multus: tempfile::TempDir,
    daemon: Daemon,
    admin: Client,
}

fn tmp(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
}

/// K3s's `10-flannel.conflist` with the deviations the module docs give.
fn flannel_conflist(flannel_dir: &Path) -> Value {
    json!({
        "name": "cbr0",
        "cniVersion": "0.4.0",
        "plugins": [
            {"type": "flannel",
             "delegate": {"hairpinMode": true, "forceAddress": true, "isDefaultGateway": true},
             "subnetFile": flannel_dir.join("subnet.env"),
             "dataDir": flannel_dir.join("data"),
             "ipam": {"dataDir": flannel_dir.join("networks")}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]
    })
}

impl World {
    /// A node with its daemon running against `kubeconfig` (a node identity), ready.
    fn new(admin: Client, kubeconfig: &Path) -> World {
        let topo = Topology::new();
        let mut daemon = Daemon(NodeDaemon::start(NODE, kubeconfig, WAIT));
        let world = World {
            topo,
            conf_dir: tmp("netattach-e2e-conf-"),
            cni_dir: tmp("netattach-e2e-state-"),
            flannel: tmp("netattach-e2e-flannel-"),
            multus: tmp("netattach-e2e-multus-"),
            daemon: {
                daemon.wait_ready();
                daemon
            },
            admin,
        };
        assert_safe_address(FLANNEL_NETWORK);
        assert_safe_address(FLANNEL_SUBNET);
        std::fs::write(
            world.flannel.path().join("subnet.env"),
            format!(
                "FLANNEL_NETWORK={FLANNEL_NETWORK}\nFLANNEL_SUBNET={FLANNEL_SUBNET}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
            ),
        )
        .expect("write subnet.env");
        std::fs::write(
            world.conf_dir.path().join("10-flannel.conflist"),
            serde_json::to_vec_pretty(&flannel_conflist(world.flannel.path())).expect("json"),
        )
        .expect("write 10-flannel.conflist");
        std::fs::write(
            world.conf_dir.path().join("00-netattach.conflist"),
            serde_json::to_vec_pretty(&world.netattach_conflist(&json!({}))).expect("json"),
        )
        .expect("write 00-netattach.conflist");
        world
    }

    /// `00-netattach.conflist`, with `extra` keys merged into the plugin.
    fn netattach_conflist(&self, extra: &Value) -> Value {
        let mut plugin = json!({
            "type": "netattach",
            "daemonSocket": self.daemon.socket(),
            "daemonTimeoutSeconds": 10,
            "confDir": self.conf_dir.path(),
            "cniDir": self.cni_dir.path(),
            "binDir": bin_dir(),
            "multusCacheDir": self.multus.path(),
        });
        if let (Some(p), Some(e)) = (plugin.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        json!({"cniVersion": "1.0.0", "name": "netattach", "plugins": [plugin]})
    }

    /// The stdin containerd builds from the conflist: the plugin with `name` and `cniVersion`.
    fn stdin(&self, extra: &Value) -> Value {
        let list = self.netattach_conflist(extra);
        let mut plugin = list["plugins"][0].clone();
        plugin["name"] = list["name"].clone();
        plugin["cniVersion"] = list["cniVersion"].clone();
        plugin
    }

    fn shim(&self) -> Runner {
        Runner {
            exe: bin_dir().join("netattach"),
            cni_path: bin_dir().to_path_buf(),
            host: self.topo.node.path().to_path_buf(),
        }
    }

    /// A macvlan-on-stor0 + whereabouts (local datastore) NAD, created through the API.
    async fn nad(&self, ns: &str, name: &str, range: &str) {
        assert_safe_address(range);
        let config = json!({
            "cniVersion": "0.3.1", "type": "macvlan", "master": support::MASTER, "mode": "bridge",
            "ipam": {"type": "whereabouts", "datastore": "local",
                     "local_dir": self.topo.local_dir(), "range": range},
        });
        let mut nad = NetworkAttachmentDefinition::new(
            name,
            NetworkAttachmentDefinitionSpec {
                config: Some(config.to_string()),
            },
        );
        nad.metadata.namespace = Some(ns.into());
        Api::<NetworkAttachmentDefinition>::namespaced(self.admin.clone(), ns)
            .create(&PostParams::default(), &nad)
            .await
            .unwrap_or_else(|e| panic!("create NAD {ns}/{name}: {e}"));
    }

    /// A pod on [`NODE`] with `annotations`, created through the API (it stays Pending: there
    /// is no kubelet), plus its network namespace; waits until the daemon has it cached.
    async fn pod(&self, ns: &str, name: &str, annotations: &[(&str, &str)]) -> KubePod {
        let p = self.pod_unwatched(ns, name, annotations).await;
        let expect_missing = true;
        self.daemon
            .wait_pod(&p.namespace, &p.name, &p.uid, expect_missing);
        p
    }

    async fn pod_unwatched(&self, ns: &str, name: &str, annotations: &[(&str, &str)]) -> KubePod {
        let annotations: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "annotations": annotations},
            "spec": {"nodeName": NODE,
                     "containers": [{"name": "c", "image": "registry.invalid/pause:3.10"}]},
        }))
        .expect("pod");
        let created = Api::<Pod>::namespaced(self.admin.clone(), ns)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create pod {ns}/{name}: {e}"));
        let uid = created.metadata.uid.expect("uid");
        let netns = Ns::new();
        let mut att = Attachment::new(netns.path(), name);
        att.ifname = "eth0".into();
        att.pod_namespace = Some(ns.into());
        att.extra_args = vec![
            ("K8S_POD_INFRA_CONTAINER_ID".into(), att.container_id.clone()),
            ("K8S_POD_UID".into(), uid.clone()),
        ];
        KubePod {
            namespace: ns.into(),
            name: name.into(),
            uid,
            ns: netns,
            att,
        }
    }

    /// The pod's `network-status`, read back from the API.
    async fn network_status(&self, pod: &KubePod) -> Vec<Value> {
        let p = Api::<Pod>::namespaced(self.admin.clone(), &pod.namespace)
            .get(&pod.name)
            .await
            .expect("get pod");
        let text = p
            .metadata
            .annotations
            .and_then(|a| a.get(NETWORK_STATUS).cloned())
            .unwrap_or_else(|| panic!("pod {}/{} has no {NETWORK_STATUS}", pod.namespace, pod.name));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("network-status is not JSON ({e}): {text}"))
    }

    /// Warning events about `pod`.
    async fn events(&self, pod: &KubePod) -> Vec<Event> {
        Api::<Event>::namespaced(self.admin.clone(), &pod.namespace)
            .list(&ListParams::default().fields(&format!("involvedObject.name={}", pod.name)))
            .await
            .expect("list events")
            .items
    }

    fn record(&self, cid: &str) -> PathBuf {
        self.cni_dir.path().join(format!("{cid}.json"))
    }

    /// Addresses host-local holds for flannel (its `ip` files), and flannel's scratch files.
    fn flannel_state(&self) -> Vec<String> {
        let mut out = Vec::new();
        for dir in [
            self.flannel.path().join("networks/cbr0"),
            self.flannel.path().join("data"),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n != "lock" && !n.starts_with("last_reserved_ip") {
                    out.push(format!("{}/{n}", dir.display()));
                }
            }
        }
        out
    }

    /// Nothing of `pod` is left: no links in its netns, no record, no whereabouts allocation,
    /// no flannel address or scratch file, no veth on the node (only `stor0`, and `cni0` once
    /// flannel made it: the bridge belongs to the node, as on a real one).
    #[track_caller]
    fn assert_clean(&self, pods: &[&KubePod]) {
        for pod in pods {
            assert!(
                pod.ns.link_names().is_empty(),
                "links left in pod {}: {:?}",
                pod.name,
                pod.ns.link_names()
            );
            assert!(
                !self.record(&pod.att.container_id).exists(),
                "record of {} left",
                pod.name
            );
        }
        assert!(
            self.topo.allocations().is_empty(),
            "allocations left: {:?}",
            self.topo.allocations()
        );
        assert!(
            self.flannel_state().is_empty(),
            "flannel state left: {:?}",
            self.flannel_state()
        );
        let node: Vec<String> = self
            .topo
            .node
            .link_names()
            .into_iter()
            .filter(|n| n != "cni0")
            .collect();
        assert_eq!(node, vec![support::MASTER.to_string()], "node links");
    }
}

/// Longhorn's `GetIPFromPodByCNISetting`: the entry named exactly `setting`, ips string-sorted,
/// the first.
fn longhorn_storage_ip(status: &[Value], setting: &str) -> Option<String> {
    let entry = status.iter().find(|e| e["name"] == setting)?;
    let mut ips: Vec<String> = entry["ips"]
        .as_array()?
        .iter()
        .filter_map(|i| i.as_str().map(str::to_string))
        .collect();
    ips.sort();
    ips.into_iter().next()
}

/// The one address (without prefix) of `ifname` in the pod, and its MAC.
fn ip_and_mac(pod: &KubePod, ifname: &str) -> (String, String) {
    let addrs = pod.ns.address_strings(ifname);
    assert_eq!(addrs.len(), 1, "{ifname} of {}: {addrs:?}", pod.name);
    let ip = addrs[0].split('/').next().expect("addr").to_string();
    let mac = pod
        .ns
        .expect_link(ifname)
        .mac
        .expect("mac")
        .to_string()
        .to_ascii_lowercase();
    (ip, mac)
}

/// Asserts one status entry against the pod's interface.
#[track_caller]
fn assert_entry(entry: &Value, pod: &KubePod, name: &str, ifname: &str, default: bool) {
    let (ip, mac) = ip_and_mac(pod, ifname);
    assert_eq!(entry["name"], name, "{entry}");
    assert_eq!(entry["interface"], ifname, "{entry}");
    assert_eq!(entry["ips"], json!([ip]), "bare IPs matching {ifname}: {entry}");
    assert_eq!(
        entry["mac"].as_str().map(str::to_ascii_lowercase),
        Some(mac),
        "{entry}"
    );
    if default {
        assert_eq!(entry["default"], true, "{entry}");
    } else {
        assert!(
            entry.get("default").is_none() || entry["default"] == false,
            "{entry}"
        );
    }
    assert!(entry.get("dns").is_some(), "dns always present: {entry}");
}

/// flannel's eth0: an address of this node's subnet, a default route via the bridge.
#[track_caller]
fn assert_flannel_eth0(w: &World, pod: &KubePod) {
    let (ip, _) = ip_and_mac(pod, "eth0");
    assert!(
        ip.starts_with(FLANNEL_PREFIX),
        "eth0 {ip} not in {FLANNEL_SUBNET}"
    );
    let gw = FLANNEL_SUBNET.split('/').next().expect("gw");
    let routes = pod.ns.routes();
    assert!(
        routes
            .iter()
            .any(|r| r.gateway.map(|g| g.to_string()).as_deref() == Some(gw)),
        "no route via {gw} in {}: {routes:?}",
        pod.name
    );
    assert_eq!(
        w.topo.node.address_strings("cni0"),
        vec![FLANNEL_SUBNET.to_string()],
        "flannel's bridge cni0 in the node namespace"
    );
}

async fn cluster() -> &'static netattach_testenv::Cluster {
    support::require_root();
    netattach_testenv::cluster().await
}

fn node_kubeconfig(dir: &Path) -> PathBuf {
    dir.join("kubeconfig").join(format!("{NODE}.kubeconfig"))
}

// ---------------------------------------------------------------------------------------------
// (1) Happy path: every annotation form, network-status read back from the API

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_annotation_form_gets_flannel_eth0_the_nads_and_a_network_status() {
    let c = cluster().await;
    let app = c.namespace("e2e-app").await;
    let nets = c.namespace("e2e-nets").await;
    let (app_ns, nets_ns) = (app.name().to_string(), nets.name().to_string());
    let w = World::new(c.admin_client(), &node_kubeconfig(c.dir()));
    w.nad(&nets_ns, "storage", STORAGE_RANGE).await;
    w.nad(&app_ns, "macnet", MACNET_RANGE).await;
    w.nad(&nets_ns, "altnet", ALTNET_RANGE).await;
    let conf = w.stdin(&json!({"multusNamespace": nets_ns}));
    let storage = format!("{nets_ns}/storage");
    let macnet = format!("{app_ns}/macnet");

    // Longhorn's JSON form, byte for byte as Longhorn writes it.
    let longhorn = format!(r#"[{{"namespace": "{nets_ns}", "name": "storage", "interface": "lhnet1"}}]"#);
    let lh = w.pod(&app_ns, "instance-manager", &[(NETWORKS, &longhorn)]).await;
    w.daemon.wait_pod(&lh.namespace, &lh.name, &lh.uid, false);
    let result = w.shim().add(&lh.att, &conf).expect("ADD (JSON form)");
    assert_eq!(result["cniVersion"], "1.0.0", "{result}");
    let eth0 = support::result_addresses(&result);
    assert_eq!(eth0.len(), 1, "{result}");
    assert!(eth0[0].starts_with(FLANNEL_PREFIX), "{result}");
    assert_eq!(lh.ns.link_names(), vec!["eth0", "lhnet1"]);
    assert_flannel_eth0(&w, &lh);
    let (lh_ip, _) = ip_and_mac(&lh, "lhnet1");
    assert!(lh_ip.starts_with("198.18.4."), "{lh_ip}");
    let status = w.network_status(&lh).await;
    assert_eq!(status.len(), 2, "{status:?}");
    assert_entry(&status[0], &lh, "cbr0", "eth0", true);
    assert_entry(&status[1], &lh, &storage, "lhnet1", false);
    assert_eq!(
        longhorn_storage_ip(&status, &storage).as_deref(),
        Some(lh_ip.as_str()),
        "Longhorn finds the lhnet1 address"
    );

    // Comma form: a NAD of the pod's namespace on net1, another namespace's with a name.
    let comma = format!("macnet, {nets_ns}/storage@stor1");
    let cp = w.pod(&app_ns, "comma", &[(NETWORKS, &comma)]).await;
    w.daemon.wait_pod(&cp.namespace, &cp.name, &cp.uid, false);
    w.shim().add(&cp.att, &conf).expect("ADD (comma form)");
    assert_eq!(cp.ns.link_names(), vec!["eth0", "net1", "stor1"]);
    assert_flannel_eth0(&w, &cp);
    let status = w.network_status(&cp).await;
    assert_eq!(status.len(), 3, "{status:?}");
    assert_entry(&status[0], &cp, "cbr0", "eth0", true);
    assert_entry(&status[1], &cp, &macnet, "net1", false);
    assert_entry(&status[2], &cp, &storage, "stor1", false);
    assert!(ip_and_mac(&cp, "net1").0.starts_with("198.18.5."));

    // The default-network annotation replaces flannel on eth0 with a NAD. (`<ns>/<name>`: a
    // bare name is looked up by the daemon in kube-system whatever the shim's multusNamespace
    // says; see the report.)
    let altnet = format!("{nets_ns}/altnet");
    let dp = w
        .pod(
            &app_ns,
            "default-net",
            &[(DEFAULT_NETWORK, &altnet), (NETWORKS, "macnet")],
        )
        .await;
    w.daemon.wait_pod(&dp.namespace, &dp.name, &dp.uid, false);
    let result = w.shim().add(&dp.att, &conf).expect("ADD (default-network)");
    let eth0 = support::result_addresses(&result);
    assert!(eth0.len() == 1 && eth0[0].starts_with("198.18.6."), "{result}");
    assert_eq!(dp.ns.link_names(), vec!["eth0", "net1"]);
    let status = w.network_status(&dp).await;
    assert_eq!(status.len(), 2, "{status:?}");
    assert_entry(&status[0], &dp, &format!("{nets_ns}/altnet"), "eth0", true);
    assert_entry(&status[1], &dp, &macnet, "net1", false);

    // Five macvlan attachments, two flannel addresses.
    assert_eq!(w.topo.allocations().len(), 5, "{:?}", w.topo.allocations());
    assert_eq!(w.flannel_state().len(), 4, "{:?}", w.flannel_state());

    for p in [&lh, &cp, &dp] {
        w.shim().del(&p.att, &conf).expect("DEL");
        w.shim().del(&p.att, &conf).expect("DEL again (idempotent)");
    }
    w.assert_clean(&[&lh, &cp, &dp]);
}

// ---------------------------------------------------------------------------------------------
// (2) Bad annotations: a clear CNI error, a Warning event, nothing left

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_annotations_fail_with_a_clear_error_and_a_pod_event_and_leave_nothing() {
    let c = cluster().await;
    let app = c.namespace("e2e-bad").await;
    let nets = c.namespace("e2e-bad-nets").await;
    let (app_ns, nets_ns) = (app.name().to_string(), nets.name().to_string());
    let w = World::new(c.admin_client(), &node_kubeconfig(c.dir()));
    w.nad(&nets_ns, "storage", STORAGE_RANGE).await;
    w.nad(&app_ns, "macnet", MACNET_RANGE).await;
    let isolated = json!({"namespaceIsolation": true});

    struct Case {
        pod: &'static str,
        annotation: String,
        conf: Value,
        reason: &'static str,
        needles: Vec<String>,
    }
    let cases = [
        Case {
            pod: "unknown-nad",
            annotation: "macnet, does-not-exist".into(),
            conf: json!({}),
            reason: "NoNetworkFound",
            needles: vec![
                format!("{app_ns}/does-not-exist"),
                "not found".into(),
                "fix:".into(),
            ],
        },
        Case {
            pod: "malformed-json",
            annotation: r#"[{"name": "macnet", "interface": "lhnet1""#.into(),
            conf: json!({}),
            reason: "InvalidNetworkAnnotation",
            needles: vec![NETWORKS.into(), "fix:".into()],
        },
        Case {
            pod: "bad-ifname",
            annotation: r#"[{"name": "macnet", "interface": "a/b"}]"#.into(),
            conf: json!({}),
            reason: "InvalidNetworkAnnotation",
            needles: vec![NETWORKS.into(), "a/b".into(), "fix:".into()],
        },
        Case {
            pod: "forbidden-ns",
            annotation: format!(
                r#"[{{"namespace": "{nets_ns}", "name": "storage", "interface": "lhnet1"}}]"#
            ),
            conf: isolated,
            reason: "NetworkNotAllowed",
            needles: vec![
                format!("{nets_ns}/storage"),
                "namespaceIsolation".into(),
                "fix:".into(),
            ],
        },
    ];
    let mut pods = Vec::new();
    for case in &cases {
        let pod = w.pod(&app_ns, case.pod, &[(NETWORKS, &case.annotation)]).await;
        let err = w.shim().add(&pod.att, &w.stdin(&case.conf)).expect_err(case.pod);
        let needles: Vec<&str> = case.needles.iter().map(String::as_str).collect();
        support::assert_error(&err, 7, &needles);
        let events = w.events(&pod).await;
        let ours: Vec<&Event> = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some(case.reason))
            .collect();
        assert_eq!(
            ours.len(),
            1,
            "{}: want one {} event, have {events:?}",
            case.pod,
            case.reason
        );
        let e = ours[0];
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.involved_object.kind.as_deref(), Some("Pod"));
        assert_eq!(e.involved_object.uid.as_deref(), Some(pod.uid.as_str()));
        let msg = e.message.clone().unwrap_or_default();
        assert!(
            msg.contains(&err.details) || msg.contains(needles[0]),
            "{}: event message {msg:?} vs error {err:?}",
            case.pod
        );
        w.assert_clean(&[&pod]);
        pods.push(pod);
    }
    // The same pod with the annotation corrected comes up (nothing stale blocks it).
    let ok = w.pod(&app_ns, "corrected", &[(NETWORKS, "macnet")]).await;
    w.daemon.wait_pod(&ok.namespace, &ok.name, &ok.uid, false);
    w.shim().add(&ok.att, &w.stdin(&json!({}))).expect("ADD");
    assert_eq!(ok.ns.link_names(), vec!["eth0", "net1"]);
    w.shim().del(&ok.att, &w.stdin(&json!({}))).expect("DEL");
    pods.push(ok);
    w.assert_clean(&pods.iter().collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------------
// (3) The API server stopped during DEL (a control plane of this test's own)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_during_del_still_removes_everything() {
    support::require_root();
    let mut env = netattach_testenv::PrivateTestenv::up(1);
    let admin = env.admin_client().await;
    let ns_name = "e2e-apidown";
    let mut ns = Namespace::default();
    ns.metadata.name = Some(ns_name.into());
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    // Pods are admitted once the namespace's default ServiceAccount exists.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(admin.clone(), ns_name);
    let deadline = Instant::now() + WAIT;
    while sas.get_opt("default").await.ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "no default ServiceAccount");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let w = World::new(admin, &env.node_kubeconfig(NODE));
    w.nad(ns_name, "storage", STORAGE_RANGE).await;
    let longhorn = r#"[{"namespace": "e2e-apidown", "name": "storage", "interface": "lhnet1"}]"#;
    let pod = w.pod(ns_name, "im-apidown", &[(NETWORKS, longhorn)]).await;
    w.daemon.wait_pod(&pod.namespace, &pod.name, &pod.uid, false);
    let conf = w.stdin(&json!({}));
    w.shim().add(&pod.att, &conf).expect("ADD");
    assert_eq!(pod.ns.link_names(), vec!["eth0", "lhnet1"]);
    assert_eq!(w.network_status(&pod).await.len(), 2);
    assert!(w.record(&pod.att.container_id).exists());

    env.stop_apiserver();
    assert!(
        w.admin.apiserver_version().await.is_err(),
        "the apiserver still answers"
    );
    let started = Instant::now();
    w.shim()
        .del(&pod.att, &conf)
        .expect("DEL with the apiserver down");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "DEL waited for the API: {:?}",
        started.elapsed()
    );
    w.assert_clean(&[&pod]);
    w.shim().del(&pod.att, &conf).expect("DEL again");
    // The namespace goes with the instance (`down` on drop).
}

// ---------------------------------------------------------------------------------------------
// (4) The daemon restarting mid-stream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_restarting_between_two_adds_is_waited_for_and_a_down_daemon_fails_cleanly() {
    let c = cluster().await;
    let app = c.namespace("e2e-restart").await;
    let app_ns = app.name().to_string();
    let mut w = World::new(c.admin_client(), &node_kubeconfig(c.dir()));
    w.nad(&app_ns, "macnet", MACNET_RANGE).await;
    let conf = w.stdin(&json!({}));

    let first = w.pod(&app_ns, "first", &[(NETWORKS, "macnet")]).await;
    w.daemon
        .wait_pod(&first.namespace, &first.name, &first.uid, false);
    w.shim().add(&first.att, &conf).expect("ADD before the restart");

    // The daemon crashes; a pod created meanwhile.
    w.daemon.kill();
    let second = w.pod_unwatched(&app_ns, "second", &[(NETWORKS, "macnet")]).await;

    // ADD while it is down: code 11 after the bounded wait, nothing left.
    let short = w.stdin(&json!({"daemonTimeoutSeconds": 2}));
    let started = Instant::now();
    let err = w.shim().add(&second.att, &short).expect_err("daemon down");
    let took = started.elapsed();
    support::assert_error(&err, 11, &["daemon", "daemonSocket"]);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "bounded wait: {took:?}"
    );
    assert!(second.ns.link_names().is_empty(), "{:?}", second.ns.link_names());
    assert!(!w.record(&second.att.container_id).exists());

    // Restart it and ADD at once: the shim retries until the new daemon is ready.
    w.daemon.spawn();
    let result = w.shim().add(&second.att, &conf).expect("ADD across the restart");
    assert!(
        support::result_addresses(&result)[0].starts_with(FLANNEL_PREFIX),
        "{result}"
    );
    assert_eq!(second.ns.link_names(), vec!["eth0", "net1"]);
    let status = w.network_status(&second).await;
    assert_eq!(status.len(), 2, "{status:?}");
    assert_entry(&status[1], &second, &format!("{app_ns}/macnet"), "net1", false);

    // DEL needs no daemon.
    w.daemon.kill();
    for p in [&first, &second] {
        w.shim().del(&p.att, &conf).expect("DEL with the daemon down");
    }
    w.assert_clean(&[&first, &second]);
}

// ---------------------------------------------------------------------------------------------
// (5) Migration from a legacy Multus cache file

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_of_a_pod_multus_attached_uses_its_cache_and_removes_links_and_addresses() {
    let c = cluster().await;
    let app = c.namespace("e2e-migrate").await;
    let app_ns = app.name().to_string();
    let w = World::new(c.admin_client(), &node_kubeconfig(c.dir()));
    w.nad(&app_ns, "storage", STORAGE_RANGE).await;
    let longhorn = format!(r#"[{{"namespace": "{app_ns}", "name": "storage", "interface": "lhnet1"}}]"#);
    let pod = w.pod(&app_ns, "im-multus", &[(NETWORKS, &longhorn)]).await;

    // What Multus did on this node: flannel's conflist on eth0 (its first plugin does the
    // work; portmap and bandwidth pass through without capabilities), the NAD on lhnet1.
    let cluster_list = flannel_conflist(w.flannel.path());
    let mut flannel = cluster_list["plugins"][0].clone();
    flannel["name"] = json!("cbr0");
    flannel["cniVersion"] = json!("0.4.0");
    let run_flannel = Runner {
        exe: bin_dir().join("flannel"),
        cni_path: bin_dir().to_path_buf(),
        host: w.topo.node.path().to_path_buf(),
    };
    run_flannel.add(&pod.att, &flannel).expect("flannel ADD");
    let storage = json!({"cniVersion": "0.3.1", "name": "storage", "type": "macvlan",
        "master": support::MASTER, "mode": "bridge",
        "ipam": {"type": "whereabouts", "datastore": "local", "local_dir": w.topo.local_dir(),
                 "range": STORAGE_RANGE}});
    let mut lh = pod.att.clone();
    lh.ifname = "lhnet1".into();
    w.topo.macvlan().add(&lh, &storage).expect("macvlan ADD");
    assert_eq!(pod.ns.link_names(), vec!["eth0", "lhnet1"]);
    assert_eq!(w.topo.allocations().len(), 1);
    assert_eq!(w.flannel_state().len(), 2, "{:?}", w.flannel_state());

    // Multus' scratch cache (/var/lib/cni/multus/<containerID>), v4.3.0 format.
    let cache = json!([
        {"Conf": {"cniVersion": "0.4.0", "name": "cbr0", "ipam": {}, "dns": {}},
         "ConfList": {"cniVersion": "0.4.0", "name": "cbr0",
                      "plugins": [{"type": "flannel", "ipam": {}, "dns": {}},
                                  {"type": "portmap", "ipam": {}, "dns": {}},
                                  {"type": "bandwidth", "ipam": {}, "dns": {}}]},
         "Name": "", "IsFilterV4Gateway": false, "IsFilterV6Gateway": false,
         "Bytes": base64(cluster_list.to_string().as_bytes())},
        {"Conf": {"cniVersion": "0.3.1", "name": "storage", "type": "macvlan",
                  "ipam": {"type": "whereabouts"}, "dns": {}},
         "ConfList": {}, "Name": format!("{app_ns}/storage"), "ifnameRequest": "lhnet1",
         "IsFilterV4Gateway": false, "IsFilterV6Gateway": false,
         "Bytes": base64(storage.to_string().as_bytes())},
    ]);
    let cache_file = w.multus.path().join(&pod.att.container_id);
    std::fs::write(&cache_file, cache.to_string()).expect("write the Multus cache");

    let conf = w.stdin(&json!({}));
    w.shim().del(&pod.att, &conf).expect("DEL from the Multus cache");
    w.assert_clean(&[&pod]);
    assert!(!cache_file.exists(), "the Multus cache is removed after DEL");
    w.shim().del(&pod.att, &conf).expect("DEL again");
}
