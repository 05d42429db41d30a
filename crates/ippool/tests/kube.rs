//! The Kubernetes store against a real kube-apiserver (tools/testenv): whereabouts-format pools
//! read and extended, idempotent ADD, static requests, exhaustion, overlapping-range
//! reservations, conflict retries and 200 concurrent allocations from 10 simulated nodes (1000
//! through the node daemons: crates/netattach/tests/ipam_engine.rs).
//!
//! Run: `tools/test-k8s env CARGO_TARGET_DIR=target/ippool cargo test -p netattach-ippool -- --nocapture`

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Client};
use netattach_ipam::config::IpamConfig;
use netattach_ipam::error::{ErrorKind, IpamError};
use netattach_ipam::range::IpRange;
use netattach_ipam::store::{AllocationRequest, Owner, Store};
use netattach_ippool::crd::orip_name;
use netattach_ippool::{IPPool, KubeIpam, KubeStore, OverlappingRangeIPReservation};
use serde_json::json;

fn range(cidr: &str) -> IpRange {
    IpRange::parse(cidr, None, None, &[], None).expect("range")
}

fn owner(pod: &str, ifname: &str, container: &str) -> Owner {
    Owner::new(container, Some(pod.to_string()), ifname)
}

fn request(o: Owner, cidrs: &[&str], network: Option<&str>, overlapping: bool) -> AllocationRequest {
    let mut r = AllocationRequest::new(
        o,
        cidrs.iter().map(|c| range(c)).collect(),
        network.map(str::to_string),
    );
    r.overlapping_ranges = overlapping;
    r
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// The kubeconfig of a simulated node (restricted RBAC: the node daemon's ClusterRole).
fn node_kubeconfig(n: usize) -> PathBuf {
    let pairs = std::env::var(netattach_testenv::ENV_NODE_KUBECONFIGS).expect("testenv node kubeconfigs");
    let paths: Vec<PathBuf> = pairs
        .split(',')
        .filter_map(|p| p.split_once('=').map(|(_, path)| PathBuf::from(path)))
        .collect();
    assert!(!paths.is_empty(), "no node kubeconfigs in the test environment");
    paths[n % paths.len()].clone()
}

fn pool_resource() -> ApiResource {
    ApiResource::erase::<IPPool>(&())
}

/// The pool exactly as stored (untyped).
async fn raw_pool(client: &Client, ns: &str, name: &str) -> serde_json::Value {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &pool_resource());
    let obj = api.get(name).await.expect("get pool");
    serde_json::to_value(&obj).expect("json")["spec"].clone()
}

#[tokio::test]
async fn whereabouts_pool_is_read_and_extended() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("ippool-migrate").await;
    let admin = cluster.admin_client();
    // Written the way whereabouts v0.9 writes it: decimal offsets from the network address,
    // {id, podref, ifname}; an entry from before v0.8 has no ifname.
    let raw: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "whereabouts.cni.cncf.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": "storage-192.168.4.0-24", "namespace": ns.name()},
        "spec": {
            "range": "192.168.4.0/24",
            "allocations": {
                "1": {"id": "c-old-a", "podref": "longhorn-system/im-a", "ifname": "lhnet1"},
                "2": {"id": "c-old-b", "podref": "longhorn-system/im-b"},
                "10": {"id": "c-old-c", "podref": "longhorn-system/im-c", "ifname": "lhnet1"}
            }
        }
    }))
    .expect("object");
    let dyn_api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), ns.name(), &pool_resource());
    dyn_api
        .create(&PostParams::default(), &raw)
        .await
        .expect("create whereabouts pool");

    let ipam = KubeIpam::new(cluster.node_client("node-1"), ns.name());
    // Listing sees the live allocations.
    let all = ipam.allocations().await.expect("list");
    let ips: BTreeSet<IpAddr> = all.iter().map(|a| a.ip).collect();
    assert_eq!(
        ips,
        [ip("192.168.4.1"), ip("192.168.4.2"), ip("192.168.4.10")].into()
    );

    // A new pod gets the lowest free address.
    let got = ipam
        .allocate(&request(
            owner("default/new", "net1", "c-new"),
            &["192.168.4.0/24"],
            Some("storage"),
            false,
        ))
        .await
        .expect("allocate");
    assert_eq!(got[0].ip, ip("192.168.4.3"));
    assert_eq!(got[0].cidr.to_string(), "192.168.4.3/24");
    assert_eq!(got[0].pool, "storage-192.168.4.0-24");

    // A pod recreated under its old name gets its address back (container id updated).
    let again = ipam
        .allocate(&request(
            owner("longhorn-system/im-a", "lhnet1", "c-recreated"),
            &["192.168.4.0/24"],
            Some("storage"),
            false,
        ))
        .await
        .expect("re-add");
    assert_eq!(again[0].ip, ip("192.168.4.1"));

    let spec = raw_pool(&admin, ns.name(), "storage-192.168.4.0-24").await;
    assert_eq!(
        spec,
        json!({
            "range": "192.168.4.0/24",
            "allocations": {
                "1": {"id": "c-recreated", "podref": "longhorn-system/im-a", "ifname": "lhnet1"},
                "2": {"id": "c-old-b", "podref": "longhorn-system/im-b"},
                "3": {"id": "c-new", "podref": "default/new", "ifname": "net1"},
                "10": {"id": "c-old-c", "podref": "longhorn-system/im-c", "ifname": "lhnet1"}
            }
        }),
        "the pool must stay in whereabouts' exact format"
    );

    // DEL by the old sandbox's container id is a no-op (whereabouts' rule), by the new one frees.
    let none = ipam
        .release(&owner("longhorn-system/im-a", "lhnet1", "c-old-a"))
        .await
        .expect("stale release");
    assert!(none.is_empty(), "{none:?}");
    let freed = ipam
        .release(&owner("longhorn-system/im-a", "lhnet1", "c-recreated"))
        .await
        .expect("release");
    assert_eq!(freed.len(), 1);
    assert_eq!(freed[0].ip, ip("192.168.4.1"));
    let spec = raw_pool(&admin, ns.name(), "storage-192.168.4.0-24").await;
    let keys: Vec<&String> = spec["allocations"].as_object().expect("map").keys().collect();
    assert_eq!(keys, ["10", "2", "3"]);
}

#[tokio::test]
async fn add_is_idempotent_per_podref_and_ifname() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("ippool-idem").await;
    let ipam = KubeIpam::new(cluster.node_client("node-2"), ns.name());
    let cidrs = ["198.19.20.0/24", "fd20::/120"];
    let first = ipam
        .allocate(&request(owner("ns/sts-0", "net1", "c1"), &cidrs, None, true))
        .await
        .expect("first");
    assert_eq!(first.len(), 2);
    // Same pod name, new sandbox: same addresses.
    let second = ipam
        .allocate(&request(owner("ns/sts-0", "net1", "c2"), &cidrs, None, true))
        .await
        .expect("second");
    assert_eq!(
        first.iter().map(|a| a.ip).collect::<Vec<_>>(),
        second.iter().map(|a| a.ip).collect::<Vec<_>>()
    );
    assert!(second.iter().all(|a| a.container_id == "c2"));
    // Another interface of the same pod: different addresses.
    let other_if = ipam
        .allocate(&request(owner("ns/sts-0", "net2", "c2"), &cidrs, None, true))
        .await
        .expect("net2");
    assert_ne!(other_if[0].ip, first[0].ip);
    assert_ne!(other_if[1].ip, first[1].ip);
    // CHECK by ADD identity.
    let held = ipam.check(&owner("ns/sts-0", "net1", "c2")).await.expect("check");
    assert_eq!(held.len(), 2);
    // The reservations exist under whereabouts' names.
    let orips: Api<OverlappingRangeIPReservation> = Api::namespaced(cluster.admin_client(), ns.name());
    for a in &second {
        let o = orips.get(&orip_name(a.ip, None)).await.expect("orip");
        assert_eq!(o.spec.podref, "ns/sts-0");
        assert_eq!(o.spec.ifname, "net1");
        // Adopted by the new sandbox: the reservation names it, as a fresh claim would.
        assert_eq!(o.spec.containerid, "c2");
    }
    // The old sandbox's DEL: nothing is freed, the reservations stay.
    assert!(
        ipam.release(&owner("ns/sts-0", "net1", "c1"))
            .await
            .expect("old sandbox's release")
            .is_empty()
    );
    for a in &second {
        assert!(
            orips
                .get_opt(&orip_name(a.ip, None))
                .await
                .expect("get")
                .is_some()
        );
    }
    let freed = ipam
        .release(&owner("ns/sts-0", "net1", "c2"))
        .await
        .expect("release");
    assert_eq!(freed.len(), 2);
    for a in &second {
        assert!(
            orips
                .get_opt(&orip_name(a.ip, None))
                .await
                .expect("get")
                .is_none()
        );
    }
    // Releasing again is a no-op.
    assert!(
        ipam.release(&owner("ns/sts-0", "net1", "c2"))
            .await
            .expect("again")
            .is_empty()
    );
}

#[tokio::test]
async fn static_request_reserves_or_fails_clearly() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("ippool-static").await;
    let ipam = KubeIpam::new(cluster.node_client("node-1"), ns.name());
    let mut req = request(owner("ns/a", "net1", "ca"), &["198.19.30.0/24"], None, true);
    req.requested = vec![ip("198.19.30.77")];
    let got = ipam.allocate(&req).await.expect("static");
    assert_eq!(got[0].ip, ip("198.19.30.77"));

    let mut other = request(owner("ns/b", "net1", "cb"), &["198.19.30.0/24"], None, true);
    other.requested = vec![ip("198.19.30.77")];
    let err = ipam.allocate(&other).await.expect_err("conflict");
    assert!(matches!(err, IpamError::RequestedUnavailable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("198.19.30.77") && msg.contains("198.19.30.0-24") && msg.contains("ns/a"),
        "{msg}"
    );

    // Outside every range: a config error naming the pools.
    other.requested = vec![ip("198.19.31.1")];
    let err = ipam.allocate(&other).await.expect_err("out of range");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");

    // The failed requests wrote nothing for ns/b.
    assert!(
        ipam.check(&owner("ns/b", "net1", "cb"))
            .await
            .expect("check")
            .is_empty()
    );
}

#[tokio::test]
async fn exhaustion_is_reported_with_pool_size_and_held() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("ippool-full").await;
    let ipam = KubeIpam::new(cluster.node_client("node-3"), ns.name());
    for (i, want) in ["198.19.40.1", "198.19.40.2"].iter().enumerate() {
        let got = ipam
            .allocate(&request(
                owner(&format!("ns/p{i}"), "net1", "c"),
                &["198.19.40.0/30"],
                None,
                false,
            ))
            .await
            .expect("allocate");
        assert_eq!(got[0].ip, ip(want));
    }
    let err = ipam
        .allocate(&request(
            owner("ns/p9", "net1", "c"),
            &["198.19.40.0/30"],
            None,
            false,
        ))
        .await
        .expect_err("exhausted");
    assert_eq!(err.kind(), ErrorKind::Exhausted);
    let msg = err.to_string();
    assert!(
        msg.contains("198.19.40.0-30") && msg.contains("2 allocatable addresses, 2 held"),
        "{msg}"
    );
}

#[tokio::test]
async fn overlapping_ranges_use_reservations() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("ippool-orip").await;
    let ipam = KubeIpam::new(cluster.node_client("node-1"), ns.name());
    let orips: Api<OverlappingRangeIPReservation> = Api::namespaced(cluster.admin_client(), ns.name());

    // Someone (e.g. upstream whereabouts) holds .2 of network `ovl` through a reservation only.
    let foreign: OverlappingRangeIPReservation = serde_json::from_value(json!({
        "apiVersion": "whereabouts.cni.cncf.io/v1alpha1",
        "kind": "OverlappingRangeIPReservation",
        "metadata": {"name": "ovl-198.19.50.2"},
        "spec": {"podref": "other/pod", "ifname": "net1"}
    }))
    .expect("orip");
    orips
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create foreign orip");

    let a = ipam
        .allocate(&request(
            owner("ns/a", "net1", "ca"),
            &["198.19.50.0/24"],
            Some("ovl"),
            true,
        ))
        .await
        .expect("a");
    assert_eq!(a[0].ip, ip("198.19.50.1"));
    // The /28 overlaps the /24 (another pool, same network): .1 and .2 are taken.
    let b = ipam
        .allocate(&request(
            owner("ns/b", "net1", "cb"),
            &["198.19.50.0/28"],
            Some("ovl"),
            true,
        ))
        .await
        .expect("b");
    assert_eq!(b[0].ip, ip("198.19.50.3"));
    assert!(ipam.stats().orip_taken >= 2, "{:?}", ipam.stats());
    let held_b = orips.get("ovl-198.19.50.3").await.expect("orip of b");
    assert_eq!(held_b.spec.podref, "ns/b");
    assert_eq!(held_b.spec.containerid, "cb");
    // No reservation was left behind for a candidate that was skipped.
    let names: BTreeSet<String> = orips
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect();
    assert_eq!(
        names,
        ["ovl-198.19.50.1", "ovl-198.19.50.2", "ovl-198.19.50.3"]
            .map(String::from)
            .into()
    );

    // A static request for a reserved address fails naming the holder.
    let mut c = request(
        owner("ns/c", "net1", "cc"),
        &["198.19.50.0/28"],
        Some("ovl"),
        true,
    );
    c.requested = vec![ip("198.19.50.2")];
    let err = ipam.allocate(&c).await.expect_err("held elsewhere");
    assert!(err.to_string().contains("other/pod"), "{err}");

    // Without a network name the reservations are a different namespace of names.
    let d = ipam
        .allocate(&request(
            owner("ns/d", "net1", "cd"),
            &["198.19.50.0/24"],
            None,
            true,
        ))
        .await
        .expect("d");
    assert_eq!(d[0].ip, ip("198.19.50.1"));
    assert!(orips.get_opt("198.19.50.1").await.expect("get").is_some());

    // Release deletes our reservations, never the foreign one.
    for o in [
        owner("ns/a", "net1", "ca"),
        owner("ns/b", "net1", "cb"),
        owner("ns/d", "net1", "cd"),
    ] {
        assert_eq!(ipam.release(&o).await.expect("release").len(), 1);
    }
    let left: Vec<String> = orips
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect();
    assert_eq!(left, ["ovl-198.19.50.2"]);
}

/// A store deletes a reservation it created with the preconditions of that create, without
/// reading it first; one that changed since (here: re-pointed at another pod) is read, judged,
/// and kept.
#[tokio::test]
async fn a_release_deletes_its_own_reservation_without_a_read_unless_it_changed() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("ippool-orip-own").await;
    let ipam = KubeIpam::new(cluster.node_client("node-1"), ns.name());
    let orips: Api<OverlappingRangeIPReservation> = Api::namespaced(cluster.admin_client(), ns.name());
    let cidr = ["198.19.52.0/24"];

    let a = owner("ns/a", "net1", "ca");
    let got = ipam
        .allocate(&request(a.clone(), &cidr, Some("own"), true))
        .await
        .expect("a");
    assert!(orips.get_opt("own-198.19.52.1").await.expect("get").is_some());
    assert_eq!(ipam.release(&a).await.expect("release").len(), 1);
    assert!(
        orips.get_opt("own-198.19.52.1").await.expect("get").is_none(),
        "released {} and its reservation",
        got[0].ip
    );
    assert_eq!(ipam.stats().orip_reads, 0, "{:?}", ipam.stats());

    // b's reservation is taken over by someone else after b got it.
    let b = owner("ns/b", "net1", "cb");
    ipam.allocate(&request(b.clone(), &cidr, Some("own"), true))
        .await
        .expect("b");
    let mut taken = orips.get("own-198.19.52.1").await.expect("orip of b");
    taken.spec.podref = "other/thief".into();
    taken.spec.containerid = "ct".into();
    orips
        .replace("own-198.19.52.1", &PostParams::default(), &taken)
        .await
        .expect("re-point");
    assert_eq!(ipam.release(&b).await.expect("release").len(), 1);
    let kept = orips.get_opt("own-198.19.52.1").await.expect("get");
    assert_eq!(
        kept.map(|o| o.spec.podref).as_deref(),
        Some("other/thief"),
        "a reservation that no longer names b is kept"
    );
    assert_eq!(ipam.stats().orip_reads, 1, "read once its preconditions failed");
}

#[tokio::test]
async fn multi_range_is_all_or_nothing() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("ippool-dual").await;
    let ipam = KubeIpam::new(cluster.node_client("node-2"), ns.name());
    let cidrs = ["198.19.60.0/24", "fd60::/120"];
    // Someone holds fd60::5.
    let mut x = request(owner("ns/x", "net1", "cx"), &["fd60::/120"], None, true);
    x.requested = vec![ip("fd60::5")];
    ipam.allocate(&x).await.expect("x");
    // A dual-stack request for fd60::5 fails in the second range: the first is rolled back.
    let mut y = request(owner("ns/y", "net1", "cy"), &cidrs, None, true);
    y.requested = vec![ip("fd60::5")];
    ipam.allocate(&y).await.expect_err("second range fails");
    assert!(
        ipam.check(&owner("ns/y", "net1", "cy"))
            .await
            .expect("check")
            .is_empty()
    );
    let orips: Api<OverlappingRangeIPReservation> = Api::namespaced(cluster.admin_client(), ns.name());
    assert!(
        orips.get_opt("198.19.60.1").await.expect("get").is_none(),
        "rolled-back reservation left"
    );

    // An address held before the failing ADD is kept.
    let z = ipam
        .allocate(&request(
            owner("ns/z", "net1", "cz"),
            &["198.19.60.0/24"],
            None,
            true,
        ))
        .await
        .expect("z v4");
    let mut z2 = request(owner("ns/z", "net1", "cz"), &cidrs, None, true);
    z2.requested = vec![ip("fd60::5")];
    ipam.allocate(&z2).await.expect_err("z dual fails");
    let held = ipam.check(&owner("ns/z", "net1", "cz")).await.expect("check");
    assert_eq!(held.iter().map(|a| a.ip).collect::<Vec<_>>(), [z[0].ip]);
}

#[tokio::test]
async fn stale_resource_version_is_retried() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("ippool-race").await;
    let admin_kubeconfig = cluster.admin_kubeconfig();
    let ns_name = ns.name().to_string();
    // Armed, the hook makes another writer (a different client on its own runtime) add offset
    // 200 just before our first write attempt: the resourceVersion we read is stale by then.
    let armed = Arc::new(AtomicBool::new(false));
    let armed2 = armed.clone();
    let hook = Arc::new(move |pool: &str, attempt: u32| {
        if attempt != 0 || !armed2.swap(false, Ordering::SeqCst) {
            return;
        }
        let (path, ns, pool) = (admin_kubeconfig.clone(), ns_name.clone(), pool.to_string());
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let kc = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
                let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .expect("config");
                let api: Api<IPPool> = Api::namespaced(Client::try_from(config).expect("client"), &ns);
                let mut p = api.get(&pool).await.expect("racer get");
                p.spec.allocations.insert(
                    "200".into(),
                    netattach_ippool::IPAllocation {
                        id: "racer".into(),
                        podref: "ns/racer".into(),
                        ifname: "net1".into(),
                    },
                );
                api.replace(&pool, &PostParams::default(), &p)
                    .await
                    .expect("racer write");
            });
        })
        .join();
        assert!(joined.is_ok(), "racer failed");
    });
    let ipam = KubeIpam::new(cluster.node_client("node-1"), ns.name()).with_write_hook(hook);
    let first = ipam
        .allocate(&request(
            owner("ns/first", "net1", "c0"),
            &["198.19.70.0/24"],
            None,
            false,
        ))
        .await
        .expect("first");
    assert_eq!(first[0].ip, ip("198.19.70.1"));
    assert_eq!(ipam.stats().conflicts, 0);
    armed.store(true, Ordering::SeqCst);
    let got = ipam
        .allocate(&request(
            owner("ns/a", "net1", "ca"),
            &["198.19.70.0/24"],
            None,
            false,
        ))
        .await
        .expect("allocate despite the race");
    assert!(!armed.load(Ordering::SeqCst), "the racer did not run");
    assert_eq!(got[0].ip, ip("198.19.70.2"));
    let stats = ipam.stats();
    assert!(stats.conflicts >= 1, "{stats:?}");
    // Both writes survived: ours and the racer's.
    let all: BTreeMap<IpAddr, String> = ipam
        .allocations()
        .await
        .expect("list")
        .into_iter()
        .map(|a| (a.ip, a.container_id))
        .collect();
    assert_eq!(all.get(&ip("198.19.70.200")).map(String::as_str), Some("racer"));
    assert_eq!(all.get(&ip("198.19.70.2")).map(String::as_str), Some("ca"));
    assert_eq!(all.len(), 3);
}

#[tokio::test]
async fn plugin_store_uses_kubeconfig_context_namespace() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("ippool-ctx").await;
    // A kubeconfig whose context names the namespace, as whereabouts' install writes it.
    let dir = std::env::temp_dir().join(format!("netattach-ippool-{}", ns.name()));
    std::fs::create_dir_all(&dir).expect("dir");
    let src = std::fs::read_to_string(node_kubeconfig(0)).expect("read kubeconfig");
    let mut kc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&src).expect("yaml");
    if let Some(ctxs) = kc.get_mut("contexts").and_then(|c| c.as_sequence_mut()) {
        for c in ctxs {
            if let Some(ctx) = c.get_mut("context").and_then(|c| c.as_mapping_mut()) {
                ctx.insert("namespace".into(), ns.name().into());
            }
        }
    }
    let path = dir.join("whereabouts.kubeconfig");
    std::fs::write(&path, serde_yaml_ng::to_string(&kc).expect("yaml")).expect("write");
    let netconf = json!({
        "cniVersion": "1.0.0", "name": "storage", "type": "macvlan",
        "ipam": {"type": "whereabouts", "range": "192.168.90.0/24", "kubernetes": {"kubeconfig": path}}
    });
    let cfg = IpamConfig::from_netconf_with(
        &netconf,
        &netattach_ipam::config::FlatFileSearch { paths: vec![] },
    )
    .expect("config");
    let got = tokio::task::spawn_blocking(move || {
        let store = KubeStore::open(&cfg).expect("open");
        assert_eq!(store.ipam().namespace(), cfg_namespace(&store));
        let mut req = AllocationRequest::new(
            owner("ns/p", "net1", "c"),
            cfg.ranges.clone(),
            cfg.network_name.clone(),
        );
        req.overlapping_ranges = cfg.enable_overlapping_ranges;
        let got = store.allocate(&req).expect("allocate");
        assert_eq!(store.check(&owner("ns/p", "net1", "c")).expect("check").len(), 1);
        assert_eq!(
            store.release(&owner("ns/p", "net1", "c")).expect("release").len(),
            1
        );
        got
    })
    .await
    .expect("join");
    assert_eq!(got[0].ip, ip("192.168.90.1"));
    let pools: Api<IPPool> = Api::namespaced(cluster.admin_client(), ns.name());
    assert!(pools.get_opt("192.168.90.0-24").await.expect("get").is_some());
    let _ = std::fs::remove_dir_all(&dir);

    // Without a kubeconfig: a config error naming the field.
    let netconf = json!({"cniVersion": "1.0.0", "name": "n", "type": "macvlan",
        "ipam": {"type": "whereabouts", "range": "192.168.90.0/24"}});
    let cfg = IpamConfig::from_netconf_with(
        &netconf,
        &netattach_ipam::config::FlatFileSearch { paths: vec![] },
    )
    .expect("config");
    let err = tokio::task::spawn_blocking(move || KubeStore::open(&cfg).map(|_| ()))
        .await
        .expect("join")
        .expect_err("no kubeconfig");
    assert!(err.to_string().contains("ipam.kubernetes.kubeconfig"), "{err}");
}

fn cfg_namespace(store: &KubeStore) -> &str {
    store.ipam().namespace()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// 10 simulated nodes (threads, each with its own client and runtime, using the restricted node
/// identities) allocate `per_node` addresses each from one pool at the same time.
fn concurrent_allocations(
    ns: &str,
    overlapping: bool,
    cidr: &'static str,
    per_node: usize,
) -> (Vec<Duration>, Duration) {
    const NODES: usize = 10;
    let barrier = Arc::new(std::sync::Barrier::new(NODES));
    let start = Instant::now();
    let handles: Vec<_> = (0..NODES)
        .map(|n| {
            let (ns, barrier) = (ns.to_string(), barrier.clone());
            std::thread::spawn(move || {
                let store = KubeStore::from_kubeconfig(&node_kubeconfig(n), Some(&ns)).expect("store");
                barrier.wait();
                let mut out = Vec::with_capacity(per_node);
                let mut retries = 0u64;
                for i in 0..per_node {
                    let o = owner(&format!("ns/pod-{n}-{i}"), "net1", &format!("c-{n}-{i}"));
                    let t = Instant::now();
                    // A retryable failure (the 10 s budget lost to other writers) is retried, as
                    // the runtime retries a failed sandbox; the ADD is idempotent.
                    let got = loop {
                        match store.allocate(&request(o.clone(), &[cidr], None, overlapping)) {
                            Ok(got) => break got,
                            Err(e) if e.kind() == ErrorKind::TryAgain => {
                                eprintln!("node {n} allocation {i}: retrying: {e}");
                                retries += 1;
                            }
                            Err(e) => panic!("node {n} allocation {i}: {e}"),
                        }
                    };
                    out.push((got[0].ip, t.elapsed()));
                }
                (out, store.ipam().stats(), retries)
            })
        })
        .collect();
    let mut ips = BTreeSet::new();
    let mut lat = Vec::new();
    let (mut conflicts, mut writes, mut taken, mut retried) = (0, 0, 0, 0);
    for h in handles {
        let (out, stats, retries) = h.join().expect("node thread");
        retried += retries;
        conflicts += stats.conflicts;
        writes += stats.writes;
        taken += stats.orip_taken;
        for (ip, d) in out {
            assert!(ips.insert(ip), "duplicate address {ip}");
            lat.push(d);
        }
    }
    let wall = start.elapsed();
    assert_eq!(ips.len(), NODES * per_node);
    lat.sort();
    eprintln!(
        "ippool throughput (overlapping_ranges={overlapping}): {} allocations in {:.2} s = {:.0}/s; \
         per allocation p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {writes} writes, {conflicts} conflicts, \
         {taken} reservation skips, {retried} ADDs retried after the 10 s budget",
        lat.len(),
        wall.as_secs_f64(),
        lat.len() as f64 / wall.as_secs_f64(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    (lat, wall)
}

fn release_all(ns: &str, cidr: &str, per_node: usize) {
    const NODES: usize = 10;
    let start = Instant::now();
    let handles: Vec<_> = (0..NODES)
        .map(|n| {
            let ns = ns.to_string();
            std::thread::spawn(move || {
                let store = KubeStore::from_kubeconfig(&node_kubeconfig(n), Some(&ns)).expect("store");
                for i in 0..per_node {
                    let o = owner(&format!("ns/pod-{n}-{i}"), "net1", &format!("c-{n}-{i}"));
                    // Retried on a retryable failure, as the runtime retries DEL.
                    let freed = loop {
                        match store.release(&o) {
                            Ok(f) => break f,
                            Err(e) if e.kind() == ErrorKind::TryAgain => {
                                eprintln!("release {n}/{i}: retrying: {e}");
                            }
                            Err(e) => panic!("release {n}/{i}: {e}"),
                        }
                    };
                    // An attempt that ran out of budget may already have freed it (its write
                    // landed, a later step did not): the retry then frees nothing. That every
                    // address is released exactly once is checked on the pool afterwards.
                    assert!(freed.len() <= 1, "release {n}/{i} freed {}", freed.len());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("release thread");
    }
    eprintln!(
        "ippool release of {} in {cidr}: {:.2} s",
        NODES * per_node,
        start.elapsed().as_secs_f64()
    );
}

async fn concurrent_scenario(prefix: &str, cidr: &'static str, per_node: usize, overlapping: bool) {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace(prefix).await;
    let ns_name = ns.name().to_string();
    let n2 = ns_name.clone();
    tokio::task::spawn_blocking(move || concurrent_allocations(&n2, overlapping, cidr, per_node))
        .await
        .expect("allocations");

    // The pool object itself: one distinct offset per allocation, whereabouts format.
    let pools: Api<IPPool> = Api::namespaced(cluster.admin_client(), &ns_name);
    let name = netattach_ipam::range::pool_name(None, &range(cidr).cidr);
    let pool = pools.get(&name).await.expect("pool");
    assert_eq!(pool.spec.allocations.len(), 10 * per_node);
    let owners: BTreeSet<&str> = pool
        .spec
        .allocations
        .values()
        .map(|a| a.podref.as_str())
        .collect();
    assert_eq!(owners.len(), 10 * per_node);
    for k in pool.spec.allocations.keys() {
        let off: u128 = k.parse().expect("decimal offset");
        assert!(range(cidr).ip_at(off).is_some(), "{k}");
    }
    let orips: Api<OverlappingRangeIPReservation> = Api::namespaced(cluster.admin_client(), &ns_name);
    let n = orips.list(&Default::default()).await.expect("list").items.len();
    assert_eq!(n, if overlapping { 10 * per_node } else { 0 }, "reservations");

    let n2 = ns_name.clone();
    tokio::task::spawn_blocking(move || release_all(&n2, cidr, per_node))
        .await
        .expect("release");
    let pool = pools.get(&name).await.expect("pool");
    assert!(
        pool.spec.allocations.is_empty(),
        "{} left",
        pool.spec.allocations.len()
    );
    assert!(
        orips
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

/// 200 allocations (10 nodes x 20) with overlapping-range reservations on (the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocations_from_ten_nodes() {
    concurrent_scenario("ippool-conc", "198.19.80.0/24", 20, true).await;
}
