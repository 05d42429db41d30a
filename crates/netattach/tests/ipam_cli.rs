//! `netattach ipam ls | show | release` against a real apiserver (and the local store with the
//! cluster's pods): pods, nodes and ages listed; a live pod's address refused (the pool left
//! untouched) and freed with `--force`; a gone or terminating pod's address freed without it;
//! reservations deleted with the address; table and JSON output.
//!
//! Per test (deleted afterwards, also on failure): a namespace holding the pools, the
//! reservations and the pods, and a `Node` object the "live" pods are bound to (it keeps the
//! pod garbage collector from removing them as orphans; no kubelet runs, so a deleted pod stays
//! terminating until it is force-deleted). Addresses: 198.18.50.0/24 to 198.18.52.0/24.
//!
//! Run: `tools/test-k8s env CARGO_TARGET_DIR=target/ippool cargo test -p netattach --test ipam_cli`

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use netattach_ipam::local::FileStore;
use netattach_ipam::range::IpRange;
use netattach_ipam::store::{Allocation, AllocationRequest, Owner, Store};
use netattach_ippool::crd::orip_name;
use netattach_ippool::{IPPool, KubeIpam, OverlappingRangeIPReservation, OverlappingRangeIPReservationSpec};
use serde_json::{Value, json};

/// What one `netattach` run printed.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn netattach<S: AsRef<str>>(args: &[S]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_netattach"))
        .args(args.iter().map(AsRef::as_ref))
        .env_remove("CNI_COMMAND")
        .env("NETATTACH_LOG", "warn")
        .output()
        .expect("run netattach");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `args` followed by the store selection flags `sel`.
fn with(args: &[&str], sel: &[&str]) -> Vec<String> {
    args.iter().chain(sel).map(|s| s.to_string()).collect()
}

/// Runs and expects success.
fn ok<S: AsRef<str>>(args: &[S]) -> String {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let args = args.as_slice();
    let r = netattach(args);
    assert!(
        r.ok,
        "netattach {args:?} failed:\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    r.stdout
}

fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn range(cidr: &str) -> IpRange {
    IpRange::parse(cidr, None, None, &[], None).expect("range")
}

/// One allocation through the library (as a plugin would make it).
async fn allocate(ipam: &KubeIpam, cidr: &str, network: &str, podref: &str, reservation: bool) -> Allocation {
    let mut req = AllocationRequest::new(
        Owner::new(format!("ctr-{}", unique("c")), Some(podref.to_string()), "net1"),
        vec![range(cidr)],
        Some(network.to_string()),
    );
    req.overlapping_ranges = reservation;
    ipam.allocate(&req)
        .await
        .expect("allocate")
        .into_iter()
        .next()
        .expect("one address")
}

/// The test's Node object, deleted on drop.
struct TestNode {
    name: String,
    kubeconfig: std::path::PathBuf,
}

impl TestNode {
    async fn create(client: &Client, kubeconfig: &Path) -> TestNode {
        let name = unique("ipamcli-node");
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).expect("node");
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
        TestNode {
            name,
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let name = self.name.clone();
        let kubeconfig = self.kubeconfig.clone();
        // A thread of its own: dropped inside a test's runtime, which must not be blocked on.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                let Ok(kc) = kube::config::Kubeconfig::read_from(&kubeconfig) else {
                    return;
                };
                let Ok(config) =
                    kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                        .await
                else {
                    return;
                };
                let Ok(client) = Client::try_from(config) else {
                    return;
                };
                let _ = Api::<Node>::all(client)
                    .delete(&name, &DeleteParams::default())
                    .await;
            });
        })
        .join();
    }
}

/// A pod that never runs (no kubelet), bound to `node`.
async fn pod(client: &Client, ns: &str, name: &str, node: &str) -> Pod {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/never:1"}]},
    }))
    .expect("pod");
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &p)
        .await
        .expect("create pod")
}

/// The row of `ip` in a table, split into cells.
fn row<'a>(table: &'a str, ip: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.get(1) == Some(&ip))
        .unwrap_or_else(|| panic!("no row for {ip} in:\n{table}"))
}

/// The JSON object of `ip`.
fn item<'a>(items: &'a Value, ip: &str) -> &'a Value {
    items
        .as_array()
        .expect("array")
        .iter()
        .find(|i| i["address"] == ip)
        .unwrap_or_else(|| panic!("no item for {ip} in {items}"))
}

#[tokio::test]
async fn ls_and_show_list_pod_node_and_age() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("ipam-cli-ls").await;
    let admin = cluster.admin_client();
    let kc = cluster.admin_kubeconfig();
    let kc = kc.to_str().expect("utf8 path");
    let node = TestNode::create(&admin, Path::new(kc)).await;
    let ipam = KubeIpam::new(admin.clone(), ns.name());
    let cidr = "198.18.50.0/24";
    let network = "cli";
    pod(&admin, ns.name(), "web", &node.name).await;
    pod(&admin, ns.name(), "db", &node.name).await;
    let podref = |p: &str| format!("{}/{p}", ns.name());
    // With a reservation (its creation is the age) / without one (the pod's creation is).
    let web = allocate(&ipam, cidr, network, &podref("web"), true).await;
    let ghost = allocate(&ipam, cidr, network, &podref("ghost"), true).await;
    let db = allocate(&ipam, cidr, network, &podref("db"), false).await;
    let old = allocate(&ipam, cidr, network, &podref("old"), false).await;
    let pool = web.pool.clone();
    let sel = ["--kubeconfig", kc, "--namespace", ns.name()];

    // A reservation no allocation accounts for (a release that lost its reservation delete).
    let orips: Api<OverlappingRangeIPReservation> = Api::namespaced(admin.clone(), ns.name());
    let orphan_name = orip_name("198.18.50.200".parse().expect("ip"), Some(network));
    let mut orphan = OverlappingRangeIPReservation::new(
        &orphan_name,
        OverlappingRangeIPReservationSpec {
            containerid: String::new(),
            podref: podref("left"),
            ifname: "net1".into(),
        },
    );
    orphan.metadata.namespace = Some(ns.name().to_string());
    orips
        .create(&PostParams::default(), &orphan)
        .await
        .expect("orphaned reservation");

    let listed = netattach(&with(&["ipam", "ls"], &sel));
    assert!(listed.ok, "{}", listed.stderr);
    let note = listed
        .stderr
        .lines()
        .find(|l| l.contains(&orphan_name))
        .unwrap_or_else(|| panic!("no note on the orphaned reservation:\n{}", listed.stderr));
    for want in [
        "netattach: note: OverlappingRangeIPReservation".to_string(),
        format!("pod {} gone, interface net1", podref("left")),
        "no IPPool allocation accounts for it".to_string(),
        format!(
            "kubectl -n {} delete overlappingrangeipreservation {orphan_name}",
            ns.name()
        ),
    ] {
        assert!(note.contains(&want), "{want:?} not in {note}");
    }
    assert_eq!(
        listed.stderr.lines().filter(|l| l.contains("note:")).count(),
        1,
        "only the orphan gets a note (every other reservation has its allocation):\n{}",
        listed.stderr
    );
    let table = listed.stdout;
    let header: Vec<&str> = table.lines().next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        ["POOL", "IP", "POD", "INTERFACE", "CONTAINER", "NODE", "AGE"]
    );
    let container = |a: &Allocation| a.container_id.get(..12).unwrap_or(&a.container_id).to_string();
    for (a, pod, node_cell) in [
        (&web, "web", node.name.as_str()),
        (&ghost, "ghost", "gone"),
        (&db, "db", node.name.as_str()),
        (&old, "old", "gone"),
    ] {
        let cells = row(&table, &a.ip.to_string());
        assert_eq!(cells[0], pool);
        assert_eq!(cells[2], podref(pod));
        assert_eq!(cells[3], "net1");
        assert_eq!(cells[4], container(a));
        assert_eq!(cells[5], node_cell, "node of {pod}");
        if pod == "old" {
            assert_eq!(cells[6], "-", "no reservation, no pod: age unknown");
        } else {
            assert!(
                cells[6].ends_with('s') || cells[6].ends_with('m'),
                "age of {pod}: {}",
                cells[6]
            );
        }
    }
    assert!(table.contains("4 allocation(s)"), "{table}");

    let items: Value =
        serde_json::from_str(&ok(&with(&["ipam", "ls", "--json"], &sel))).expect("ls --json parses");
    assert_eq!(items.as_array().map(Vec::len), Some(4), "{items}");
    let w = item(&items, &web.ip.to_string());
    assert_eq!(w["pool"], pool);
    assert_eq!(w["podref"], podref("web"));
    assert_eq!(w["containerID"], web.container_id);
    assert_eq!(w["node"], node.name);
    assert_eq!(w["podState"], "live");
    assert_eq!(w["ageSource"], "reservation");
    let web_orip = orips
        .get(&orip_name(web.ip, Some(network)))
        .await
        .expect("web's reservation");
    let created = web_orip
        .metadata
        .creation_timestamp
        .expect("creation timestamp")
        .0
        .as_second();
    assert_eq!(w["allocatedAt"], created, "the age is the reservation's");
    let g = item(&items, &ghost.ip.to_string());
    assert_eq!(g["podState"], "gone");
    assert_eq!(g["node"], Value::Null);
    assert_eq!(g["ageSource"], "reservation");
    let d = item(&items, &db.ip.to_string());
    assert_eq!(d["ageSource"], "pod");
    let db_pod = Api::<Pod>::namespaced(admin.clone(), ns.name())
        .get("db")
        .await
        .expect("db");
    assert_eq!(
        d["allocatedAt"],
        db_pod.metadata.creation_timestamp.expect("created").0.as_second()
    );
    let o = item(&items, &old.ip.to_string());
    assert_eq!(o["allocatedAt"], Value::Null);
    assert_eq!(o["ageSource"], Value::Null);

    let text = ok(&with(&["ipam", "show", &pool], &sel));
    for want in [
        format!("pool:      {pool}"),
        format!("location:  namespace `{}`", ns.name()),
        format!("range:     {cidr}"),
        "size:      254 usable address(es)".to_string(),
        "used:      4".to_string(),
        "free:      250".to_string(),
        "4 allocation(s)".to_string(),
    ] {
        assert!(text.contains(&want), "show lacks {want:?}:\n{text}");
    }
    assert_eq!(row(&text, &web.ip.to_string())[5], node.name);
    let shown: Value = serde_json::from_str(&ok(&with(&["ipam", "show", &pool, "--json"], &sel)))
        .expect("show --json parses");
    assert_eq!(shown["range"], cidr);
    assert_eq!(shown["namespace"], ns.name());
    assert_eq!(
        (shown["size"].clone(), shown["used"].clone()),
        (json!(254), json!(4))
    );
    assert_eq!(shown["free"], 250);
    assert_eq!(shown["exhausted"], false);
    assert_eq!(shown["allocations"].as_array().map(Vec::len), Some(4));

    // A pool that does not exist: the error names it and the pools there.
    let r = netattach(&with(&["ipam", "show", "nope"], &sel));
    assert!(!r.ok);
    assert!(
        r.stderr.contains("pool `nope`: not found") && r.stderr.contains(&pool),
        "{}",
        r.stderr
    );
}

/// The pool exactly as stored (resourceVersion and allocations).
async fn stored(client: &Client, ns: &str, pool: &str) -> (String, BTreeMap<String, String>) {
    let p = Api::<IPPool>::namespaced(client.clone(), ns)
        .get(pool)
        .await
        .expect("pool");
    (
        p.metadata.resource_version.unwrap_or_default(),
        p.spec
            .allocations
            .into_iter()
            .map(|(k, a)| (k, a.podref))
            .collect(),
    )
}

async fn has_orip(client: &Client, ns: &str, ip: IpAddr, network: &str) -> bool {
    Api::<OverlappingRangeIPReservation>::namespaced(client.clone(), ns)
        .get_opt(&orip_name(ip, Some(network)))
        .await
        .expect("get reservation")
        .is_some()
}

#[tokio::test]
async fn release_refuses_a_live_pod_and_frees_gone_terminating_and_forced() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("ipam-cli-rel").await;
    let admin = cluster.admin_client();
    let kc = cluster.admin_kubeconfig();
    let kc = kc.to_str().expect("utf8 path");
    let node = TestNode::create(&admin, Path::new(kc)).await;
    let ipam = KubeIpam::new(admin.clone(), ns.name());
    let (cidr, network) = ("198.18.51.0/24", "rel");
    let podref = |p: &str| format!("{}/{p}", ns.name());
    pod(&admin, ns.name(), "web", &node.name).await;
    pod(&admin, ns.name(), "stop", &node.name).await;
    let web = allocate(&ipam, cidr, network, &podref("web"), true).await;
    let ghost = allocate(&ipam, cidr, network, &podref("ghost"), true).await;
    let stop = allocate(&ipam, cidr, network, &podref("stop"), true).await;
    let pool = web.pool.clone();
    let sel = ["--kubeconfig", kc, "--namespace", ns.name()];
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns.name());
    // No kubelet: a graceful delete leaves the pod terminating.
    pods.delete("stop", &DeleteParams::default())
        .await
        .expect("delete stop");
    let terminating = pods.get("stop").await.expect("stop still there");
    assert!(terminating.metadata.deletion_timestamp.is_some());

    // A live pod's address: refused, naming the pod, its node and --force; nothing written.
    let before = stored(&admin, ns.name(), &pool).await;
    let web_ip = web.ip.to_string();
    let r = netattach(&with(&["ipam", "release", &pool, &web_ip], &sel));
    assert!(!r.ok, "released a live pod's address: {}", r.stdout);
    for want in [
        podref("web").as_str(),
        node.name.as_str(),
        "--force",
        web_ip.as_str(),
        "live pod",
    ] {
        assert!(r.stderr.contains(want), "refusal lacks {want:?}: {}", r.stderr);
    }
    assert_eq!(
        stored(&admin, ns.name(), &pool).await,
        before,
        "a refused release leaves the pool as it was (same resourceVersion)"
    );
    assert!(has_orip(&admin, ns.name(), web.ip, network).await);
    // The same for --pod.
    let r = netattach(&with(&["ipam", "release", "--pod", &podref("web")], &sel));
    assert!(!r.ok && r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(stored(&admin, ns.name(), &pool).await, before);

    // A gone pod's address: freed without --force, with its reservation.
    let out = ok(&with(&["ipam", "release", &pool, &ghost.ip.to_string()], &sel));
    assert!(
        out.contains(&format!("released {}", ghost.ip)) && out.contains("pod gone"),
        "{out}"
    );
    assert!(
        out.contains("OverlappingRangeIPReservation") && out.contains("deleted"),
        "{out}"
    );
    assert!(!has_orip(&admin, ns.name(), ghost.ip, network).await);
    // Released already: an error naming the address, the pool unchanged.
    let r = netattach(&with(&["ipam", "release", &pool, &ghost.ip.to_string()], &sel));
    assert!(!r.ok && r.stderr.contains("not allocated"), "{}", r.stderr);

    // A terminating pod's addresses (by --pod): freed without --force.
    let out = ok(&with(
        &["ipam", "release", "--pod", &podref("stop"), "--interface", "net1"],
        &sel,
    ));
    assert!(out.contains(&format!("released {}", stop.ip)), "{out}");
    assert!(!has_orip(&admin, ns.name(), stop.ip, network).await);

    // --force frees the live pod's address, with a warning.
    let out = ok(&with(&["ipam", "release", &pool, &web_ip, "--force"], &sel));
    assert!(
        out.contains("warning: --force") && out.contains(&format!("released {web_ip}")),
        "{out}"
    );
    assert!(!has_orip(&admin, ns.name(), web.ip, network).await);
    let (_, left) = stored(&admin, ns.name(), &pool).await;
    assert!(left.is_empty(), "{left:?}");

    // Bad input names the value and the fix.
    let r = netattach(&with(&["ipam", "release", "--pod", "no-slash"], &sel));
    assert!(
        !r.ok && r.stderr.contains("`no-slash`") && r.stderr.contains("namespace/name"),
        "{}",
        r.stderr
    );
    let r = netattach(&with(&["ipam", "release", &pool, "198.18.99.1"], &sel));
    assert!(!r.ok && r.stderr.contains("outside pool"), "{}", r.stderr);

    // No kubelet will finish the deletion.
    pods.delete("stop", &DeleteParams::background().grace_period(0))
        .await
        .expect("force-delete stop");
}

#[tokio::test]
async fn local_store_release_checks_the_pod_in_the_cluster() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("ipam-cli-local").await;
    let admin = cluster.admin_client();
    let kc = cluster.admin_kubeconfig();
    let kc = kc.to_str().expect("utf8 path");
    let node = TestNode::create(&admin, Path::new(kc)).await;
    pod(&admin, ns.name(), "web", &node.name).await;
    let dir = tempfile::tempdir().expect("store dir");
    let store = FileStore::new(dir.path()).expect("store");
    let alloc = |pod: &str| {
        store
            .allocate(&AllocationRequest::new(
                Owner::new(unique("ctr"), Some(format!("{}/{pod}", ns.name())), "net1"),
                vec![range("198.18.52.0/24")],
                None,
            ))
            .expect("allocate")
            .remove(0)
    };
    let web = alloc("web");
    let ghost = alloc("ghost");
    let local = dir.path().to_str().expect("utf8 path");

    // Without a cluster the pods cannot be checked: refused.
    let r = netattach(&[
        "ipam",
        "release",
        &ghost.pool,
        &ghost.ip.to_string(),
        "--local-dir",
        local,
    ]);
    assert!(!r.ok && r.stderr.contains("--kubeconfig"), "{}", r.stderr);
    assert_eq!(store.allocations().expect("list").len(), 2);

    // With the cluster: the live pod is refused, the gone one freed.
    let with_cluster = ["--local-dir", local, "--kubeconfig", kc];
    let r = netattach(&with(
        &["ipam", "release", &web.pool, &web.ip.to_string()],
        &with_cluster,
    ));
    assert!(!r.ok && r.stderr.contains("live pod"), "{}", r.stderr);
    let out = ok(&with(
        &["ipam", "release", &ghost.pool, &ghost.ip.to_string()],
        &with_cluster,
    ));
    assert!(out.contains("pod gone"), "{out}");

    // ls over the local store: the node from the cluster, the age from the allocation time.
    let items: Value =
        serde_json::from_str(&ok(&with(&["ipam", "ls", "--json"], &with_cluster))).expect("json");
    assert_eq!(items.as_array().map(Vec::len), Some(1), "{items}");
    let w = item(&items, &web.ip.to_string());
    assert_eq!(w["node"], node.name);
    assert_eq!(w["podState"], "live");
    assert_eq!(w["ageSource"], "allocation");
    assert_eq!(w["allocatedAt"], web.allocated_at);
    let shown = ok(&["ipam", "show", &web.pool, "--local-dir", local]);
    assert!(
        shown.contains("used:      1") && shown.contains("free:      253"),
        "{shown}"
    );
    assert!(shown.contains(&format!("local store `{local}`")), "{shown}");
}

/// One IPPool that cannot be understood (an allocation key that is not an offset, as a hand
/// edit leaves it) must not blind the tools to the others: `ipam ls` lists every readable pool
/// and names the bad one on stderr with a failing exit status; garbage collection's view, CHECK
/// and a release across the namespace's pools all go on without it.
#[tokio::test]
async fn an_unreadable_pool_is_named_and_hides_no_other_pool() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("ipam-cli-corrupt").await;
    let admin = cluster.admin_client();
    let kc = cluster.admin_kubeconfig();
    let kc = kc.to_str().expect("utf8 path");
    let ipam = KubeIpam::new(admin.clone(), ns.name());
    let podref = format!("{}/web", ns.name());
    let good = allocate(&ipam, "198.18.53.0/24", "good", &podref, true).await;

    let bad_name = "bad-198.18.54.0-24";
    let bad: IPPool = serde_json::from_value(json!({
        "apiVersion": "whereabouts.cni.cncf.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": bad_name},
        "spec": {
            "range": "198.18.54.0/24",
            "allocations": {"not-an-offset": {"id": "c0", "podref": format!("{}/x", ns.name()), "ifname": "net1"}},
        },
    }))
    .expect("pool");
    Api::<IPPool>::namespaced(admin.clone(), ns.name())
        .create(&PostParams::default(), &bad)
        .await
        .expect("the CRD's schema accepts any allocation key");
    let (version, _) = stored(&admin, ns.name(), bad_name).await;

    let sel = ["--kubeconfig", kc, "--namespace", ns.name()];
    let ls = netattach(&with(&["ipam", "ls"], &sel));
    assert!(!ls.ok, "a listing with a pool left out must fail:\n{}", ls.stdout);
    assert_eq!(row(&ls.stdout, &good.ip.to_string())[2], podref, "{}", ls.stdout);
    assert!(ls.stdout.contains("1 allocation(s)"), "{}", ls.stdout);
    assert!(
        ls.stderr
            .contains(&format!("IPPool `{}/{bad_name}` is left out", ns.name()))
            && ls.stderr.contains("`not-an-offset` is not a decimal offset"),
        "stderr names the pool and what is wrong: {}",
        ls.stderr
    );
    let json = netattach(&with(&["ipam", "ls", "--json"], &sel));
    let items: Value = serde_json::from_str(&json.stdout).expect("ls --json still prints JSON");
    assert_eq!(items.as_array().map(Vec::len), Some(1), "{items}");
    assert!(!json.ok && json.stderr.contains(bad_name), "{}", json.stderr);

    // Garbage collection's view, CHECK and a namespace-wide release (the plugin's direct DEL).
    let held = ipam.held_addresses().await.expect("GC lists the readable pools");
    assert_eq!(held.iter().map(|h| h.ip).collect::<Vec<_>>(), vec![good.ip]);
    let owner = Owner::new(
        good.container_id.clone(),
        good.podref.clone(),
        good.ifname.clone(),
    );
    let checked = ipam.check(&owner).await.expect("CHECK");
    assert_eq!(checked.iter().map(|a| a.ip).collect::<Vec<_>>(), vec![good.ip]);
    let freed = ipam.release(&owner).await.expect("release");
    assert_eq!(freed.iter().map(|a| a.ip).collect::<Vec<_>>(), vec![good.ip]);
    assert!(ipam.held_addresses().await.expect("GC view").is_empty());
    assert!(
        !has_orip(&admin, ns.name(), good.ip, "good").await,
        "the reservation went with it"
    );
    // The unreadable pool itself is never rewritten.
    let (version_after, allocations) = stored(&admin, ns.name(), bad_name).await;
    assert_eq!(version_after, version);
    assert_eq!(allocations.keys().collect::<Vec<_>>(), ["not-an-offset"]);
}
