//! The cluster-wide IPAM garbage collector of the node daemon, as real daemon processes against
//! the real kube-apiserver of `tools/testenv`.
//!
//! Each test has its own namespace, which holds its pods, its `IPPool` objects (written
//! directly, as whereabouts or our store would have left them), its overlapping-range
//! reservations and the collector's Lease: the daemons run with `--ipam-namespace <it>` and the
//! restricted identity of a simulated node, so tests running side by side never see each
//! other's pools. Pods are API objects only (no kubelet): `spec.nodeName` names a simulated
//! node, and the test plays kubelet through `pods/status` (phase, `PodReadyToStartContainers`)
//! and Multus (the network-status annotation). "A dead node" is `node-3`: no daemon runs for
//! it, and its pods are force-deleted through the API, as an operator does.
//!
//! Every negative assertion ("kept") is made after a later deletion was collected (a
//! sentinel): the leader handles deletions in watch order, so everything before it was judged.
//!
//! Run: `tools/test-k8s env CARGO_TARGET_DIR=target/daemon cargo test -p netattach-daemon --test gc`.
//! Without a test cluster every test fails with the command to run (netattach-testenv).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use netattach_cluster::annotation::NETWORK_STATUS_ANNOTATION;
use netattach_daemon::gc::{LEASE_NAME, READY_TO_START_CONDITION};
use netattach_ippool::{
    IPAllocation, IPPool, IPPoolSpec, OverlappingRangeIPReservation, OverlappingRangeIPReservationSpec,
};
use serde_json::json;

mod support;
use support::{DaemonProcess, ensure_nodes};

/// Set (to a JSON array of flags) when this binary is the daemon child.
const CHILD_ENV: &str = "NETATTACH_GC_TEST_CHILD";
/// Nodes with a daemon in some test, and the dead one (never a daemon).
const NODE_1: &str = "node-1";
const NODE_2: &str = "node-2";
const DEAD_NODE: &str = "node-3";
/// Upper bound for something that must happen (a failure detector, not a performance claim).
const WAIT: Duration = Duration::from_secs(60);
/// A takeover waits for the Lease to expire first (15 s).
const TAKEOVER_WAIT: Duration = Duration::from_secs(120);

const POOL_A: &str = "10.77.0.0-24";
const POOL_B: &str = "10.79.0.0-24";
const POOL_STORAGE: &str = "storage-10.78.0.0-24";

#[test]
#[ignore = "helper: the daemon process the other tests start (runs only with NETATTACH_GC_TEST_CHILD)"]
fn daemon_child_process() {
    support::daemon_child_main(CHILD_ENV);
}

/// A daemon process and its files.
struct Daemon {
    node: String,
    process: DaemonProcess,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for Daemon {
    type Target = DaemonProcess;
    fn deref(&self) -> &DaemonProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut DaemonProcess {
        &mut self.process
    }
}

impl Daemon {
    /// Starts the daemon of `node` (its own identity), collecting in `ipam_namespace`.
    fn start(cluster: &netattach_testenv::Cluster, node: &str, ipam_namespace: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = cluster
            .dir()
            .join("kubeconfig")
            .join(format!("{node}.kubeconfig"));
        let flags: Vec<String> = vec![
            "--node".into(),
            node.into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--socket".into(),
            dir.path().join("run").join("daemon.sock").display().to_string(),
            "--ready-file".into(),
            dir.path().join("ready").display().to_string(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            "--ipam-namespace".into(),
            ipam_namespace.into(),
        ];
        Daemon {
            node: node.into(),
            process: DaemonProcess::spawn(CHILD_ENV, flags, &dir.path().join("daemon.log"), WAIT),
            dir,
        }
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!(
                "the daemon of {} exited with {status}:\n{}",
                self.node,
                self.log_text()
            );
        }
    }

    /// The value of one series (`name` with its labels), `None` while `/metrics` does not answer.
    fn metric(&self, series: &str) -> Option<f64> {
        let mut s = std::net::TcpStream::connect(self.metrics_addr()).ok()?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let value = text.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|r| r.strip_prefix(' '))
                .map(str::to_string)
        });
        match value {
            Some(v) => v.trim().parse().ok(),
            None => panic!("metric {series} not found in\n{text}"),
        }
    }

    /// Waits until `series` satisfies `ok`.
    async fn wait_metric(&mut self, series: &str, ok: impl Fn(f64) -> bool, wait: Duration) -> f64 {
        let deadline = Instant::now() + wait;
        loop {
            self.assert_running();
            if let Some(v) = self.metric(series)
                && ok(v)
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} = {:?} on {} after {wait:?}:\n{}",
                self.metric(series),
                self.node,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn leads(&self) -> bool {
        self.metric("netattach_daemon_gc_leader") == Some(1.0)
    }

    /// The log line that says `ip` was freed, if any.
    fn freed_line(&self, ip: &str) -> Option<String> {
        let needle = format!("ip={ip} ");
        self.log_text()
            .lines()
            .find(|l| l.contains("freed an allocation whose pod is gone") && l.contains(&needle))
            .map(str::to_string)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- daemon log of {} ({}) ----\n{}",
                self.node,
                self.dir.path().display(),
                self.log_text()
            );
        }
    }
}

const SERIES_LEADER: &str = "netattach_daemon_gc_leader";
const SERIES_RECONCILES: &str = "netattach_daemon_gc_runs_total{trigger=\"reconcile\"}";
const SERIES_FREED_GONE: &str = "netattach_daemon_gc_freed_total{reason=\"pod_gone\"}";
const SERIES_FREED_NOT_ATTACHED: &str = "netattach_daemon_gc_freed_total{reason=\"not_attached\"}";
const SERIES_ERRORS: &str = "netattach_daemon_gc_errors_total";
const SERIES_ORPHANS_DELETED: &str = "netattach_daemon_gc_orphaned_reservations_deleted_total";

/// The network-status annotation Multus (or our daemon) writes for a pod whose storage
/// interface got `ips`.
fn network_status(ns: &str, ips: &[&str]) -> String {
    json!([
        {"name": "cbr0", "interface": "eth0", "ips": ["10.42.0.7"], "default": true, "dns": {}},
        {"name": format!("{ns}/storage"), "interface": "net1", "ips": ips, "dns": {}}
    ])
    .to_string()
}

struct World {
    admin: Client,
    ns: String,
}

impl World {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn pools(&self) -> Api<IPPool> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn orips(&self) -> Api<OverlappingRangeIPReservation> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn podref(&self, name: &str) -> String {
        format!("{}/{name}", self.ns)
    }

    /// A pod bound to `node`, with the network-status `status` (none when `None`).
    async fn create_pod(&self, name: &str, node: &str, status: Option<&str>) -> Pod {
        let mut annotations = serde_json::Map::new();
        if let Some(s) = status {
            annotations.insert(NETWORK_STATUS_ANNOTATION.into(), json!(s));
        }
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c", "image": "registry.invalid/pause:3.10"}]
            }
        }))
        .expect("pod json");
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("creating pod {}/{name}: {e}", self.ns))
    }

    /// What kubelet reports once the sandbox and its network are up.
    async fn set_up(&self, name: &str) {
        let status = json!({"status": {
            "phase": "Running",
            "conditions": [{"type": READY_TO_START_CONDITION, "status": "True"}]
        }});
        self.pods()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("pods/status of {name}: {e}"));
    }

    /// What Multus (or our daemon) writes after an attachment.
    async fn set_network_status(&self, name: &str, status: &str) {
        let patch = json!({"metadata": {"annotations": {NETWORK_STATUS_ANNOTATION: status}}});
        self.pods()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("annotating {name}: {e}"));
    }

    /// A running, attached pod: created, annotated, up.
    async fn live_pod(&self, name: &str, node: &str, status: Option<&str>) -> Pod {
        let pod = self.create_pod(name, node, status).await;
        self.set_up(name).await;
        pod
    }

    /// Force-deletes a pod (grace period 0: what an operator does for a pod of a dead node) and
    /// waits until it is gone.
    async fn force_delete(&self, name: &str) {
        self.pods()
            .delete(name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap_or_else(|e| panic!("deleting pod {name}: {e}"));
        let deadline = Instant::now() + WAIT;
        while self.pods().get_opt(name).await.expect("get pod").is_some() {
            assert!(Instant::now() < deadline, "pod {name} not gone after {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An `IPPool` as whereabouts writes it: `(offset, container id, podref, ifname)`.
    async fn seed_pool(&self, name: &str, range: &str, allocations: &[(u32, &str, &str, &str)]) {
        let spec = IPPoolSpec {
            range: range.into(),
            allocations: allocations
                .iter()
                .map(|(off, id, podref, ifname)| {
                    (
                        off.to_string(),
                        IPAllocation {
                            id: (*id).into(),
                            podref: (*podref).into(),
                            ifname: (*ifname).into(),
                        },
                    )
                })
                .collect(),
        };
        let mut pool = IPPool::new(name, spec);
        pool.metadata.namespace = Some(self.ns.clone());
        self.pools()
            .create(&PostParams::default(), &pool)
            .await
            .unwrap_or_else(|e| panic!("creating IPPool {name}: {e}"));
    }

    async fn seed_orip(&self, name: &str, podref: &str, ifname: &str) {
        self.seed_reservation(name, podref, ifname, None).await;
    }

    /// A reservation as the node daemon's claim-first allocation creates it (with its
    /// finalizer): deleting it takes removing that too.
    async fn seed_claim(&self, name: &str, podref: &str, ifname: &str) {
        self.seed_reservation(
            name,
            podref,
            ifname,
            Some(netattach_ippool::claim::CLAIM_FINALIZER),
        )
        .await;
    }

    async fn seed_reservation(&self, name: &str, podref: &str, ifname: &str, finalizer: Option<&str>) {
        let mut orip = OverlappingRangeIPReservation::new(
            name,
            OverlappingRangeIPReservationSpec {
                containerid: String::new(),
                podref: podref.into(),
                ifname: ifname.into(),
            },
        );
        orip.metadata.namespace = Some(self.ns.clone());
        orip.metadata.finalizers = finalizer.map(|f| vec![f.to_string()]);
        self.orips()
            .create(&PostParams::default(), &orip)
            .await
            .unwrap_or_else(|e| panic!("creating ORIP {name}: {e}"));
    }

    async fn orip_exists(&self, name: &str) -> bool {
        self.orips().get_opt(name).await.expect("get ORIP").is_some()
    }

    /// The allocations of a pool, offset -> podref.
    async fn allocations(&self, pool: &str) -> BTreeMap<u32, String> {
        let pool = self
            .pools()
            .get(pool)
            .await
            .unwrap_or_else(|e| panic!("get IPPool {pool}: {e}"));
        pool.spec
            .allocations
            .into_iter()
            .map(|(off, a)| (off.parse().expect("decimal offset"), a.podref))
            .collect()
    }

    /// Waits until none of `offsets` is allocated in `pool`.
    async fn wait_freed(&self, d: &mut Daemon, pool: &str, offsets: &[u32]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let held = self.allocations(pool).await;
            if offsets.iter().all(|o| !held.contains_key(o)) {
                return;
            }
            d.assert_running();
            assert!(
                Instant::now() < deadline,
                "{pool}: {offsets:?} not freed after {WAIT:?}; held: {held:?}\n{}",
                d.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn lease(&self) -> Option<Lease> {
        Api::<Lease>::namespaced(self.admin.clone(), &self.ns)
            .get_opt(LEASE_NAME)
            .await
            .expect("get lease")
    }

    async fn lease_holder(&self) -> Option<String> {
        self.lease()
            .await
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty())
    }
}

/// How many requests with one of `verbs` `user` has made for the collector's Lease in `ns` (from
/// the apiserver's audit log).
fn lease_requests(cluster: &netattach_testenv::Cluster, user: &str, ns: &str, verbs: &[&str]) -> usize {
    let audit = std::fs::read(cluster.audit_log()).expect("audit log");
    String::from_utf8_lossy(&audit)
        .lines()
        .filter(|l| l.contains(LEASE_NAME) && l.contains(user))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["user"]["username"] == user
                && verbs.iter().any(|v| e["verb"] == *v)
                && e["objectRef"]["resource"] == "leases"
                && e["objectRef"]["namespace"] == ns
                && e["objectRef"]["name"] == LEASE_NAME
        })
        .count()
}

fn offsets(held: &BTreeMap<u32, String>) -> Vec<u32> {
    held.keys().copied().collect()
}

/// Waits for `d` to lead and to have finished its startup reconcile (which starts only once its
/// pod watch has listed, so every later deletion reaches it as an event).
async fn wait_leading_and_reconciled(d: &mut Daemon) {
    d.wait_metric(SERIES_LEADER, |v| v == 1.0, WAIT).await;
    d.wait_metric(SERIES_RECONCILES, |v| v >= 1.0, WAIT).await;
}

#[tokio::test]
async fn deleted_pods_lose_exactly_their_addresses_also_on_a_dead_node() {
    let cluster = netattach_testenv::cluster().await;
    let admin = cluster.admin_client();
    ensure_nodes(&admin, &[NODE_1, NODE_2, DEAD_NODE]).await;
    let ns = cluster.namespace("gc-deleted").await;
    let w = World {
        admin,
        ns: ns.name().to_string(),
    };
    let status = |ips: &[&str]| network_status(&w.ns, ips);

    // Live pods: attached (its addresses listed), without any network-status (never evidence),
    // with an unreadable one (never evidence).
    w.live_pod("live-listed", NODE_1, Some(&status(&["10.77.0.2", "10.78.0.9"])))
        .await;
    w.live_pod("live-unannotated", NODE_2, None).await;
    w.live_pod("live-unreadable", NODE_1, Some("{not json")).await;
    // To be deleted: one on a node with a daemon, two on the dead node (one never came up).
    w.live_pod("gone", NODE_1, Some(&status(&["10.77.0.5", "10.78.0.5"])))
        .await;
    w.live_pod("dead-up", DEAD_NODE, Some(&status(&["10.77.0.6"])))
        .await;
    w.create_pod("dead-pending", DEAD_NODE, None).await;
    // The sentinel: deleted last; once it is collected, everything before was judged.
    w.live_pod("sentinel", NODE_2, Some(&status(&["10.77.0.30"])))
        .await;

    let (listed, unannotated, unreadable) = (
        w.podref("live-listed"),
        w.podref("live-unannotated"),
        w.podref("live-unreadable"),
    );
    let (gone, dead_up, dead_pending, sentinel) = (
        w.podref("gone"),
        w.podref("dead-up"),
        w.podref("dead-pending"),
        w.podref("sentinel"),
    );
    w.seed_pool(
        POOL_A,
        "10.77.0.0/24",
        &[
            (2, "c-listed", &listed, "net1"),
            (3, "c-unannotated", &unannotated, "net1"),
            (4, "c-unreadable", &unreadable, "net1"),
            (5, "c-gone", &gone, "net1"),
            (6, "c-dead-up", &dead_up, "net1"),
            (7, "c-dead-pending", &dead_pending, "net1"),
            (8, "c-no-podref", "", "net1"),
            (30, "c-sentinel", &sentinel, "net1"),
        ],
    )
    .await;
    // A second network (named, so its reservations are prefixed) for two of them.
    w.seed_pool(
        POOL_STORAGE,
        "10.78.0.0/24",
        &[(5, "c-gone-2", &gone, "net2"), (9, "c-listed-2", &listed, "net2")],
    )
    .await;
    w.seed_orip("10.77.0.5", &gone, "net1").await;
    w.seed_orip("storage-10.78.0.5", &gone, "net2").await;
    w.seed_orip("10.77.0.2", &listed, "net1").await;

    let mut d = Daemon::start(cluster, NODE_1, &w.ns);
    wait_leading_and_reconciled(&mut d).await;
    // Every pod exists: the startup reconcile freed nothing.
    assert_eq!(offsets(&w.allocations(POOL_A).await), [2, 3, 4, 5, 6, 7, 8, 30]);
    assert_eq!(offsets(&w.allocations(POOL_STORAGE).await), [5, 9]);

    for pod in ["gone", "dead-up", "dead-pending", "sentinel"] {
        w.force_delete(pod).await;
    }
    w.wait_freed(&mut d, POOL_A, &[30]).await;
    w.wait_freed(&mut d, POOL_A, &[5, 6, 7]).await;
    w.wait_freed(&mut d, POOL_STORAGE, &[5]).await;
    d.wait_metric(SERIES_FREED_GONE, |v| v >= 5.0, WAIT).await;

    assert_eq!(
        w.allocations(POOL_A).await,
        BTreeMap::from([
            (2, listed.clone()),
            (3, unannotated),
            (4, unreadable),
            (8, String::new())
        ]),
        "only the deleted pods' addresses go"
    );
    assert_eq!(
        w.allocations(POOL_STORAGE).await,
        BTreeMap::from([(9, listed.clone())])
    );
    assert_eq!(d.metric(SERIES_FREED_GONE), Some(5.0), "{}", d.log_text());
    assert_eq!(d.metric(SERIES_FREED_NOT_ATTACHED), Some(0.0));
    assert_eq!(d.metric(SERIES_ERRORS), Some(0.0), "{}", d.log_text());
    // The freed addresses' overlapping-range reservations went with them; a live one stays.
    assert!(!w.orip_exists("10.77.0.5").await);
    assert!(!w.orip_exists("storage-10.78.0.5").await);
    assert!(w.orip_exists("10.77.0.2").await);
    // One structured log line per freed address.
    for (ip, podref) in [
        ("10.77.0.5", &gone),
        ("10.78.0.5", &gone),
        ("10.77.0.6", &dead_up),
        ("10.77.0.7", &dead_pending),
    ] {
        let line = d
            .freed_line(ip)
            .unwrap_or_else(|| panic!("no log line for {ip}:\n{}", d.log_text()));
        for field in [
            format!("podref={podref} "),
            "reason=\"pod_gone\"".to_string(),
            "pool=".to_string(),
        ] {
            assert!(line.contains(&field), "`{field}` missing in: {line}");
        }
    }
}

#[tokio::test]
async fn a_recreated_pod_keeps_an_address_only_if_it_attached_with_it() {
    let cluster = netattach_testenv::cluster().await;
    let admin = cluster.admin_client();
    ensure_nodes(&admin, &[NODE_1, NODE_2, DEAD_NODE]).await;
    let ns = cluster.namespace("gc-recreated").await;
    let w = World {
        admin,
        ns: ns.name().to_string(),
    };
    let status = |ips: &[&str]| network_status(&w.ns, ips);

    // StatefulSet-style pods, each attached with its address.
    w.live_pod("sts-0", NODE_1, Some(&status(&["10.77.0.10"]))).await;
    w.live_pod("sts-1", NODE_1, Some(&status(&["10.77.0.11"]))).await;
    w.live_pod("sts-2", NODE_1, Some(&status(&["10.77.0.12"]))).await;
    w.live_pod("sts-3", NODE_1, Some(&status(&["10.77.0.13"]))).await;
    w.live_pod("sentinel-1", NODE_2, Some(&status(&["10.77.0.30"])))
        .await;
    w.live_pod("sentinel-2", NODE_2, Some(&status(&["10.77.0.31"])))
        .await;
    let p = |n: &str| w.podref(n);
    w.seed_pool(
        POOL_A,
        "10.77.0.0/24",
        &[
            (10, "c-sts-0", &p("sts-0"), "net1"),
            (11, "c-sts-1", &p("sts-1"), "net1"),
            (12, "c-sts-2", &p("sts-2"), "net1"),
            (13, "c-sts-3", &p("sts-3"), "net1"),
            (30, "c-sentinel-1", &p("sentinel-1"), "net1"),
            (31, "c-sentinel-2", &p("sentinel-2"), "net1"),
        ],
    )
    .await;
    // The address sts-1's replacement got (another pool: same podref, another address).
    w.seed_pool(
        POOL_B,
        "10.79.0.0/24",
        &[(21, "c-sts-1-new", &p("sts-1"), "net1")],
    )
    .await;

    let mut d = Daemon::start(cluster, NODE_1, &w.ns);
    wait_leading_and_reconciled(&mut d).await;

    // The leader is paused while the pods are deleted and re-created under the same names, so
    // that it judges each deletion with the replacement already there (as when a StatefulSet
    // controller is faster than the collector). Its watch delivers the events on SIGCONT.
    d.signal(libc::SIGSTOP);
    for pod in ["sts-0", "sts-1", "sts-2", "sts-3"] {
        w.force_delete(pod).await;
    }
    // sts-0 re-attached with its old address (idempotent ADD by podref + interface).
    w.live_pod("sts-0", NODE_1, Some(&status(&["10.77.0.10"]))).await;
    // sts-1 is up with another address: its old one is no longer used.
    w.live_pod("sts-1", NODE_1, Some(&status(&["10.79.0.21"]))).await;
    // sts-2 has not come up yet; sts-3 is up but has no network-status (never evidence).
    w.create_pod("sts-2", NODE_1, None).await;
    w.live_pod("sts-3", NODE_1, None).await;
    d.signal(libc::SIGCONT);

    w.wait_freed(&mut d, POOL_A, &[11]).await;
    w.force_delete("sentinel-1").await;
    w.wait_freed(&mut d, POOL_A, &[30]).await;
    assert_eq!(offsets(&w.allocations(POOL_A).await), [10, 12, 13, 31]);
    assert_eq!(
        offsets(&w.allocations(POOL_B).await),
        [21],
        "the new address stays"
    );
    let line = d
        .freed_line("10.77.0.11")
        .unwrap_or_else(|| panic!("no log line for 10.77.0.11:\n{}", d.log_text()));
    assert!(line.contains("reason=\"not_attached\""), "{line}");
    // The counter moves just after the write that freed the entry.
    d.wait_metric(SERIES_FREED_NOT_ATTACHED, |v| v == 1.0, WAIT).await;

    // sts-2 comes up without its old address: freed as soon as the leader sees it (the deletion
    // was remembered). sts-3's network-status appears and lists its address: kept for good.
    w.set_network_status("sts-2", &status(&["10.77.0.40"])).await;
    w.set_up("sts-2").await;
    w.set_network_status("sts-3", &status(&["10.77.0.13"])).await;
    w.wait_freed(&mut d, POOL_A, &[12]).await;
    w.force_delete("sentinel-2").await;
    w.wait_freed(&mut d, POOL_A, &[31]).await;
    assert_eq!(offsets(&w.allocations(POOL_A).await), [10, 13]);
    assert_eq!(offsets(&w.allocations(POOL_B).await), [21]);
    d.wait_metric(SERIES_FREED_NOT_ATTACHED, |v| v == 2.0, WAIT).await;
    // The sentinels only.
    d.wait_metric(SERIES_FREED_GONE, |v| v == 2.0, WAIT).await;
    assert_eq!(d.metric(SERIES_ERRORS), Some(0.0), "{}", d.log_text());
}

#[tokio::test]
async fn the_startup_reconcile_frees_what_was_deleted_while_no_daemon_ran() {
    let cluster = netattach_testenv::cluster().await;
    let admin = cluster.admin_client();
    ensure_nodes(&admin, &[NODE_1, NODE_2, DEAD_NODE]).await;
    let ns = cluster.namespace("gc-startup").await;
    let w = World {
        admin,
        ns: ns.name().to_string(),
    };
    let status = |ips: &[&str]| network_status(&w.ns, ips);

    // While no daemon runs: pods come and go, one on the dead node.
    w.create_pod("live-pending", NODE_1, None).await;
    w.live_pod("was-here", NODE_2, Some(&status(&["10.77.0.3"])))
        .await;
    w.live_pod("dead-node", DEAD_NODE, Some(&status(&["10.77.0.4"])))
        .await;
    w.live_pod("recreated", NODE_1, Some(&status(&["10.77.0.8"])))
        .await;
    let p = |n: &str| w.podref(n);
    w.seed_pool(
        POOL_A,
        "10.77.0.0/24",
        &[
            (2, "c-live", &p("live-pending"), "net1"),
            (3, "c-was-here", &p("was-here"), "net1"),
            (4, "c-dead-node", &p("dead-node"), "net1"),
            (5, "c-never", &p("never-existed"), "net1"),
            (6, "c-no-podref", "", "net1"),
            (7, "c-not-a-podref", "not-a-podref", "net1"),
            (8, "c-recreated", &p("recreated"), "net1"),
        ],
    )
    .await;
    w.seed_claim("10.77.0.3", &p("was-here"), "net1").await;
    // Overlapping-range reservations: those of pool allocations, and orphans (no allocation
    // accounts for them: a release that lost its reservation delete, as whereabouts leaves
    // them; or a claim whose daemon died before its pool entry landed) of pods that are gone,
    // of a pod that exists, and without a podref. Two carry a claim's finalizer: they must go
    // entirely.
    w.seed_orip("10.77.0.2", &p("live-pending"), "net1").await;
    w.seed_pool(
        POOL_STORAGE,
        "10.78.0.0/24",
        &[(5, "c-live-storage", &p("live-pending"), "net2")],
    )
    .await;
    w.seed_orip("storage-10.78.0.5", &p("live-pending"), "net2").await;
    w.seed_claim("10.77.0.20", &p("never-existed"), "net1").await;
    w.seed_orip("10.78.0.5", &p("was-here"), "net1").await;
    w.seed_orip("storage-10.78.0.6", &p("never-existed"), "net2")
        .await;
    w.seed_orip("10.77.0.21", &p("live-pending"), "net1").await;
    w.seed_orip("10.77.0.22", "not-a-podref", "net1").await;
    w.force_delete("was-here").await;
    w.force_delete("dead-node").await;
    // Re-created and up with another address: without the deleted UID, one reconcile is not
    // enough evidence (the next one, 5 minutes later, would free it).
    w.force_delete("recreated").await;
    w.live_pod("recreated", NODE_1, Some(&status(&["10.77.0.9"])))
        .await;

    // A place in line for a contended pool that a daemon of the dead node held when it died.
    let leases: Api<Lease> = Api::namespaced(w.admin.clone(), &w.ns);
    let stale = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "netattach-turn-0000000000000001-dead-node",
                     "labels": {netattach_ippool::turn::TURN_LABEL: "true"},
                     "annotations": {netattach_ippool::turn::POOL_ANNOTATION: POOL_A}},
        "spec": {"holderIdentity": DEAD_NODE,
                 "acquireTime": "2026-01-01T00:00:00.000000Z",
                 "renewTime": "2026-01-01T00:00:01.000000Z"},
    });
    leases
        .patch(
            "netattach-turn-0000000000000001-dead-node",
            &PatchParams::apply("test"),
            &Patch::Apply(&stale),
        )
        .await
        .expect("stale turn Lease");

    let mut d = Daemon::start(cluster, NODE_1, &w.ns);
    wait_leading_and_reconciled(&mut d).await;
    assert!(
        leases
            .get_opt("netattach-turn-0000000000000001-dead-node")
            .await
            .expect("get")
            .is_none(),
        "the reconcile swept the dead node's turn Lease:\n{}",
        d.log_text()
    );
    assert_eq!(
        w.allocations(POOL_A).await,
        BTreeMap::from([
            (2, p("live-pending")),
            (6, String::new()),
            (7, "not-a-podref".to_string()),
            (8, p("recreated")),
        ])
    );
    assert_eq!(d.metric(SERIES_FREED_GONE), Some(3.0), "{}", d.log_text());
    assert_eq!(d.metric(SERIES_FREED_NOT_ATTACHED), Some(0.0));
    assert!(!w.orip_exists("10.77.0.3").await);
    // The orphans of pods that are gone went (the unprefixed 10.78.0.5 is not the storage
    // network's reservation of that address); the rest stayed.
    for (orip, kept) in [
        ("10.77.0.2", true),
        ("storage-10.78.0.5", true),
        ("10.77.0.21", true),
        ("10.77.0.22", true),
        ("10.77.0.20", false),
        ("10.78.0.5", false),
        ("storage-10.78.0.6", false),
    ] {
        assert_eq!(
            w.orip_exists(orip).await,
            kept,
            "OverlappingRangeIPReservation {orip}:\n{}",
            d.log_text()
        );
    }
    assert_eq!(d.metric(SERIES_ORPHANS_DELETED), Some(3.0), "{}", d.log_text());
    for ip in ["10.77.0.3", "10.77.0.4", "10.77.0.5"] {
        assert!(
            d.freed_line(ip).is_some(),
            "no log line for {ip}:\n{}",
            d.log_text()
        );
    }

    // Graceful shutdown releases the Lease.
    let holder = w.lease_holder().await.expect("the leader holds the lease");
    assert!(holder.starts_with("node-1_"), "{holder}");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success(), "{}", d.log_text());
    assert_eq!(w.lease_holder().await, None, "{}", d.log_text());
}

#[tokio::test]
async fn exactly_one_daemon_leads_and_a_killed_leader_is_taken_over() {
    let cluster = netattach_testenv::cluster().await;
    let admin = cluster.admin_client();
    ensure_nodes(&admin, &[NODE_1, NODE_2, DEAD_NODE]).await;
    let ns = cluster.namespace("gc-election").await;
    let w = World {
        admin,
        ns: ns.name().to_string(),
    };
    let status = |ips: &[&str]| network_status(&w.ns, ips);
    w.live_pod("before", DEAD_NODE, Some(&status(&["10.77.0.2"])))
        .await;
    w.live_pod("after", DEAD_NODE, Some(&status(&["10.77.0.3"])))
        .await;
    w.live_pod("stays", NODE_2, Some(&status(&["10.77.0.4"]))).await;
    let p = |n: &str| w.podref(n);
    w.seed_pool(
        POOL_A,
        "10.77.0.0/24",
        &[
            (2, "c-before", &p("before"), "net1"),
            (3, "c-after", &p("after"), "net1"),
            (4, "c-stays", &p("stays"), "net1"),
        ],
    )
    .await;

    let mut daemons = [
        Daemon::start(cluster, NODE_1, &w.ns),
        Daemon::start(cluster, NODE_2, &w.ns),
    ];
    // One of them wins and reconciles; the other stays a candidate and never collects.
    let deadline = Instant::now() + WAIT;
    let leader = loop {
        for d in &mut daemons {
            d.assert_running();
        }
        if let Some(i) = daemons.iter().position(Daemon::leads) {
            break i;
        }
        assert!(Instant::now() < deadline, "no leader after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let follower = 1 - leader;
    wait_leading_and_reconciled(&mut daemons[leader]).await;
    w.force_delete("before").await;
    w.wait_freed(&mut daemons[leader], POOL_A, &[2]).await;
    assert!(daemons[leader].leads());
    assert_eq!(daemons[follower].metric(SERIES_LEADER), Some(0.0));
    assert_eq!(daemons[follower].metric(SERIES_RECONCILES), Some(0.0));
    let holder = w.lease_holder().await.expect("held");
    assert!(
        holder.starts_with(&format!("{}_", daemons[leader].node)),
        "holder {holder}, leader {}",
        daemons[leader].node
    );
    let transitions = w
        .lease()
        .await
        .and_then(|l| l.spec)
        .and_then(|s| s.lease_transitions)
        .unwrap_or_default();

    // While the leader renews, the Lease costs one update per renewal and nothing else: the
    // leader renews on its last write without reading, and the follower watches instead of
    // polling (client-go's protocol reads it every 2 s on every node). Two more renewals (every
    // 5 s) pass without a request from the follower or a read from the leader, and nothing
    // changes hands.
    // (Its watch is a request too, but a long-lived one: renewed every few minutes.)
    const ONE_SHOT: &[&str] = &["get", "create", "update", "patch"];
    let leader_user = format!("netattach:node:{}", daemons[leader].node);
    let follower_user = format!("netattach:node:{}", daemons[follower].node);
    let renewals = lease_requests(cluster, &leader_user, &w.ns, &["update"]);
    let leader_reads = lease_requests(cluster, &leader_user, &w.ns, &["get"]);
    let follower_requests = lease_requests(cluster, &follower_user, &w.ns, ONE_SHOT);
    let deadline = Instant::now() + WAIT;
    while lease_requests(cluster, &leader_user, &w.ns, &["update"]) < renewals + 2 {
        daemons[follower].assert_running();
        assert!(Instant::now() < deadline, "the leader stopped renewing the lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        lease_requests(cluster, &follower_user, &w.ns, ONE_SHOT),
        follower_requests,
        "the follower polled the lease"
    );
    assert_eq!(
        lease_requests(cluster, &leader_user, &w.ns, &["get"]),
        leader_reads,
        "the leader read the lease to renew it"
    );
    assert_eq!(w.lease_holder().await.as_deref(), Some(holder.as_str()));
    assert_eq!(
        w.lease()
            .await
            .and_then(|l| l.spec)
            .and_then(|s| s.lease_transitions),
        Some(transitions)
    );
    assert!(daemons[leader].leads());
    assert_eq!(daemons[follower].metric(SERIES_LEADER), Some(0.0));
    assert_eq!(daemons[follower].metric(SERIES_RECONCILES), Some(0.0));

    // The leader dies without a word: the other takes over once the Lease expired, and the
    // collection goes on.
    let status_of_killed = daemons[leader].kill();
    assert!(!status_of_killed.success());
    let last_renewal = w
        .lease()
        .await
        .and_then(|l| l.spec)
        .and_then(|s| s.renew_time)
        .expect("renew time");
    daemons[follower]
        .wait_metric(SERIES_LEADER, |v| v == 1.0, TAKEOVER_WAIT)
        .await;
    daemons[follower]
        .wait_metric(SERIES_RECONCILES, |v| v >= 1.0, WAIT)
        .await;
    let holder = w.lease_holder().await.expect("held");
    assert!(
        holder.starts_with(&format!("{}_", daemons[follower].node)),
        "holder {holder}"
    );
    let lease = w.lease().await.and_then(|l| l.spec).expect("lease spec");
    assert_eq!(lease.lease_transitions, Some(transitions + 1));
    assert_eq!(lease.lease_duration_seconds, Some(15));
    // Not before the dead leader's Lease expired (both wrote these times with this machine's
    // clock; a later in-flight renewal only moves the expiry further out).
    let acquired = lease.acquire_time.expect("acquire time");
    let waited_ms = acquired.0.as_millisecond() - last_renewal.0.as_millisecond();
    assert!(
        waited_ms >= 15_000,
        "taken over {waited_ms} ms after the last renewal"
    );

    w.force_delete("after").await;
    w.wait_freed(&mut daemons[follower], POOL_A, &[3]).await;
    assert_eq!(w.allocations(POOL_A).await, BTreeMap::from([(4, p("stays"))]));
    daemons[follower]
        .wait_metric(SERIES_FREED_GONE, |v| v == 1.0, WAIT)
        .await;
}

/// The free the collector decided on removes a reservation only while it is exactly the one it
/// read: one re-taken by a new container meanwhile (an ADD rewrites the container id), or
/// released and handed to another pod, stays, and so does its overlapping-range reservation.
/// Runs with a node's restricted identity (the daemon's RBAC).
#[tokio::test]
async fn a_free_never_removes_a_reservation_that_changed_since_it_was_read() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("gc-unchanged").await;
    let w = World {
        admin: cluster.admin_client(),
        ns: ns.name().to_string(),
    };
    let p = |n: &str| w.podref(n);
    w.seed_pool(
        POOL_A,
        "10.77.0.0/24",
        &[
            (5, "c-old", &p("a"), "net1"),
            (6, "c-b", &p("b"), "net1"),
            (7, "c-c", &p("c"), "net1"),
        ],
    )
    .await;
    for (orip, pod) in [("10.77.0.5", "a"), ("10.77.0.6", "other"), ("10.77.0.7", "c")] {
        w.seed_orip(orip, &p(pod), "net1").await;
    }
    let ipam = netattach_ippool::KubeIpam::new(cluster.node_client(NODE_1), w.ns.clone());
    let held = ipam.held_addresses().await.expect("held addresses");
    assert_eq!(held.len(), 3, "{held:?}");

    // After the snapshot: `a` is re-added by a new sandbox (same podref and interface, new
    // container id), and offset 6 is released and taken by another pod.
    let patch = json!({"spec": {"allocations": {
        "5": {"id": "c-new", "podref": p("a"), "ifname": "net1"},
        "6": {"id": "c-other", "podref": p("other"), "ifname": "net1"},
    }}});
    w.pools()
        .patch(POOL_A, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch pool");

    let freed = ipam.free_unchanged(&held).await.expect("free");
    assert_eq!(
        freed.iter().map(|h| h.ip.to_string()).collect::<Vec<_>>(),
        ["10.77.0.7"]
    );
    assert_eq!(
        w.allocations(POOL_A).await,
        BTreeMap::from([(5, p("a")), (6, p("other"))])
    );
    assert!(
        w.orip_exists("10.77.0.5").await,
        "the re-added attachment keeps its reservation"
    );
    assert!(
        w.orip_exists("10.77.0.6").await,
        "another pod's reservation stays"
    );
    assert!(
        !w.orip_exists("10.77.0.7").await,
        "the freed attachment's reservation goes"
    );
    // Freeing again finds nothing.
    assert!(ipam.free_unchanged(&held).await.expect("free").is_empty());
}

/// The daemon's own flags include `--ipam-namespace` with whereabouts' default.
#[test]
fn the_ipam_namespace_defaults_to_kube_system() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: netattach_daemon::DaemonArgs,
    }
    let cli = <Cli as clap::Parser>::parse_from(["netattach-daemon", "--node", "n"]);
    assert_eq!(cli.args.ipam_namespace, "kube-system");
}
