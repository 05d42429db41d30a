//! Claim-first allocation ([`BatchingIpam::claiming_first`], the node daemon's engine) against
//! a real kube-apiserver: the answer comes once the address's `OverlappingRangeIPReservation`
//! exists, before its pool entry; that reservation survives upstream whereabouts' unconditional
//! delete (finalizer) and keeps the address from a pool-first writer meanwhile; the entry then
//! lands, and a release removes both. A claim's entry replaces a pool entry whose holder does
//! not hold the reservation (a racing upstream ADD that failed); a restarted daemon writes the entries of its node's claims that never
//! landed, and deletes a claim its attachment no longer uses.
//!
//! The engine's pool writes are held in the store's write hook until the test says go, so what
//! exists before the entry lands does not depend on timing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use netattach_ipam::error::IpamError;
use netattach_ipam::range::IpRange;
use netattach_ipam::store::{AllocationRequest, Owner};
use netattach_ippool::claim::{
    ADDRESS_ANNOTATION, ATTACHMENT_LABEL, CLAIM_FINALIZER, NODE_LABEL, POOL_ANNOTATION, attachment_label,
    node_label,
};
use netattach_ippool::crd::orip_name;
use netattach_ippool::turn::{self, Turns};
use netattach_ippool::watch;
use netattach_ippool::{
    BatchingIpam, IPAllocation, IPPool, KubeIpam, OverlappingRangeIPReservation,
    OverlappingRangeIPReservationSpec,
};
use tokio::task::JoinHandle;

const NETWORK: &str = "claims";

fn request(pod: &str, cidr: &str) -> AllocationRequest {
    let range = IpRange::parse(cidr, None, None, &[], None).expect("range");
    AllocationRequest::new(owner(pod), vec![range], Some(NETWORK.to_string()))
}

fn owner(pod: &str) -> Owner {
    Owner::new(format!("ctr-{pod}"), Some(format!("claims/{pod}")), "net1")
}

/// A node's claim-first engine over watches of one namespace's pools and turn Leases, with its
/// pool writes held until [`Node::open`] (or for a minute, to fail).
struct Node {
    engine: BatchingIpam,
    open: Arc<AtomicBool>,
    pools: Store<IPPool>,
    tasks: [JoinHandle<()>; 2],
}

impl Node {
    /// Let the engine's pool writes go from now on.
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

fn node(client: kube::Client, namespace: &str, name: &str) -> Node {
    let (pools, pool_watching) = watch::in_background(
        Api::<IPPool>::namespaced(client.clone(), namespace),
        watcher::Config::default(),
        "IPPool",
    );
    let (leases, lease_watching) = watch::in_background(
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), namespace),
        watcher::Config::default().labels(&format!("{}=true", turn::TURN_LABEL)),
        "turn Lease",
    );
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    let ipam = KubeIpam::new(client, namespace)
        .with_pool_view(pools.clone())
        .with_turns(Turns::new(leases, name))
        .with_write_hook(Arc::new(move |_pool, _attempt| {
            // Blocks this task only (block_in_place hands the worker's other tasks on).
            tokio::task::block_in_place(|| {
                let until = Instant::now() + Duration::from_secs(60);
                while !gate.load(Ordering::SeqCst) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }));
    Node {
        engine: BatchingIpam::new(ipam).claiming_first(),
        open,
        pools,
        tasks: [pool_watching, lease_watching],
    }
}

/// Polls `found` every 10 ms until it gives a value; fails the test after 30 s, naming `what`.
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut found: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = found().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The pool's entries: address offset → podref.
async fn entries(api: &Api<IPPool>, pool: &str) -> BTreeMap<u128, String> {
    api.get_opt(pool)
        .await
        .expect("read the pool")
        .map(|p| {
            p.spec
                .allocations
                .iter()
                .map(|(k, a)| (k.parse().expect("offset"), a.podref.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn offset(ip: IpAddr, base: &str) -> u128 {
    let base: IpAddr = base.parse().expect("base");
    match (ip, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => u128::from(u32::from(a) - u32::from(b)),
        _ => panic!("{ip} is not IPv4"),
    }
}

/// Creates the pool with one allocation (pool-first: a claim needs the pool in the watch) and
/// waits until `node`'s watch holds it.
async fn seed_pool(cluster: &netattach_testenv::Cluster, ns: &str, node: &Node, cidr: &str, pool: &str) {
    KubeIpam::new(cluster.admin_client(), ns)
        .allocate(&request("seed", cidr))
        .await
        .expect("seed allocation");
    wait_for("the pool in the watch", || async {
        node.pools
            .state()
            .iter()
            .any(|p| p.name_any() == pool)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_answers_before_its_pool_entry_and_keeps_its_address_until_released() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("claim-first").await;
    let (cidr, base) = ("198.18.112.0/24", "198.18.112.0");
    let pool_name = format!("{NETWORK}-198.18.112.0-24");
    let node1 = node(cluster.node_client("node-1"), ns.name(), "node-1");
    seed_pool(cluster, ns.name(), &node1, cidr, &pool_name).await;
    let pools = Api::<IPPool>::namespaced(cluster.admin_client(), ns.name());
    let orips = Api::<OverlappingRangeIPReservation>::namespaced(cluster.admin_client(), ns.name());

    // Answered while every pool write of the engine is held: the reservation is the claim.
    let got = node1
        .engine
        .allocate(&request("a", cidr))
        .await
        .expect("claim-first allocation");
    let ip = got[0].ip;
    assert!(
        !entries(&pools, &pool_name).await.contains_key(&offset(ip, base)),
        "{ip} answered before its pool entry"
    );
    let name = orip_name(ip, Some(NETWORK));
    let orip = orips.get(&name).await.expect("the claim's reservation");
    assert_eq!(orip.spec.podref, "claims/a");
    assert_eq!(orip.finalizers(), [CLAIM_FINALIZER.to_string()]);
    assert_eq!(
        orip.labels().get(ATTACHMENT_LABEL),
        Some(&attachment_label(&owner("a")))
    );
    assert_eq!(orip.labels().get(NODE_LABEL), Some(&node_label("node-1")));

    // Upstream whereabouts' DEL deletes an address's reservation by name, unconditionally: the
    // finalizer turns that into a mark, and the reservation still keeps the address.
    orips
        .delete(&name, &DeleteParams::default())
        .await
        .expect("whereabouts-style delete");
    let marked = orips.get(&name).await.expect("still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    // A pool-first writer that asks for the address meanwhile is refused, naming the holder.
    let mut stat = request("b", cidr);
    stat.requested = vec![ip];
    match KubeIpam::new(cluster.admin_client(), ns.name())
        .allocate(&stat)
        .await
    {
        Err(IpamError::RequestedUnavailable { holder, .. }) => {
            assert!(holder.contains("claims/a"), "{holder}");
        }
        other => panic!("a pool-first request for a claimed address: {other:?}"),
    }

    // The entry lands once the writes go.
    node1.open();
    wait_for("the claim's pool entry", || async {
        (entries(&pools, &pool_name).await.get(&offset(ip, base)) == Some(&"claims/a".to_string()))
            .then_some(())
    })
    .await;

    // The release removes the entry and the reservation (its finalizer too).
    let freed = node1
        .engine
        .release(&owner("a"), std::slice::from_ref(&pool_name))
        .await
        .expect("release");
    assert_eq!(freed.iter().map(|a| a.ip).collect::<Vec<_>>(), vec![ip]);
    assert!(!entries(&pools, &pool_name).await.contains_key(&offset(ip, base)));
    assert!(
        orips.get_opt(&name).await.expect("read").is_none(),
        "{name} left after the release"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_entry_replaces_a_pool_entry_whose_holder_has_no_reservation() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("claim-replaces").await;
    let (cidr, base) = ("198.18.113.0/24", "198.18.113.0");
    let pool_name = format!("{NETWORK}-198.18.113.0-24");
    let node2 = node(cluster.node_client("node-2"), ns.name(), "node-2");
    seed_pool(cluster, ns.name(), &node2, cidr, &pool_name).await;
    let pools = Api::<IPPool>::namespaced(cluster.admin_client(), ns.name());
    let orips = Api::<OverlappingRangeIPReservation>::namespaced(cluster.admin_client(), ns.name());

    let got = node2.engine.allocate(&request("a", cidr)).await.expect("claim");
    let ip = got[0].ip;
    // An upstream whereabouts ADD that read the reservation before ours existed writes the
    // address into the pool for its pod; its own reservation create then fails, so its pod
    // never uses the address.
    let mut pool = pools.get(&pool_name).await.expect("pool");
    pool.spec.allocations.insert(
        offset(ip, base).to_string(),
        IPAllocation {
            id: "ctr-upstream".into(),
            podref: "claims/upstream".into(),
            ifname: "net1".into(),
        },
    );
    pools
        .replace(&pool_name, &PostParams::default(), &pool)
        .await
        .expect("the racing pool write");
    node2.open();
    wait_for("the claim's entry in place of the racing one", || async {
        (entries(&pools, &pool_name).await.get(&offset(ip, base)) == Some(&"claims/a".to_string()))
            .then_some(())
    })
    .await;

    let freed = node2
        .engine
        .release(&owner("a"), std::slice::from_ref(&pool_name))
        .await
        .expect("release");
    assert_eq!(freed.iter().map(|a| a.ip).collect::<Vec<_>>(), vec![ip]);
    let name = orip_name(ip, Some(NETWORK));
    assert!(
        orips.get_opt(&name).await.expect("read").is_none(),
        "{name} left after the release"
    );
    assert!(!entries(&pools, &pool_name).await.contains_key(&offset(ip, base)));
}

/// A claim as a daemon killed between the reservation and the pool entry leaves it.
fn left_claim(ns: &str, pool: &str, ip: IpAddr, who: &Owner, node: &str) -> OverlappingRangeIPReservation {
    let mut orip = OverlappingRangeIPReservation::new(
        &orip_name(ip, Some(NETWORK)),
        OverlappingRangeIPReservationSpec {
            containerid: who.container_id.clone(),
            podref: who.podref.clone().unwrap_or_default(),
            ifname: who.ifname.clone(),
        },
    );
    orip.metadata.namespace = Some(ns.to_string());
    orip.metadata.finalizers = Some(vec![CLAIM_FINALIZER.to_string()]);
    orip.metadata.labels = Some(BTreeMap::from([
        (ATTACHMENT_LABEL.to_string(), attachment_label(who)),
        (NODE_LABEL.to_string(), node_label(node)),
    ]));
    orip.metadata.annotations = Some(BTreeMap::from([
        (POOL_ANNOTATION.to_string(), pool.to_string()),
        (ADDRESS_ANNOTATION.to_string(), ip.to_string()),
    ]));
    orip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_writes_the_entries_of_claims_that_never_landed() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("claim-repair").await;
    let (cidr, base) = ("198.18.114.0/24", "198.18.114.0");
    let pool_name = format!("{NETWORK}-198.18.114.0-24");
    let node3 = node(cluster.node_client("node-3"), ns.name(), "node-3");
    node3.open();
    seed_pool(cluster, ns.name(), &node3, cidr, &pool_name).await;
    let pools = Api::<IPPool>::namespaced(cluster.admin_client(), ns.name());
    let orips = Api::<OverlappingRangeIPReservation>::namespaced(cluster.admin_client(), ns.name());

    // "landing": a claim whose ADD was answered. "superseded": a claim whose ADD went
    // unanswered; the runtime's retry got another address, which is in the pool.
    let landing: IpAddr = "198.18.114.50".parse().expect("ip");
    let superseded: IpAddr = "198.18.114.60".parse().expect("ip");
    let mut pool = pools.get(&pool_name).await.expect("pool");
    pool.spec.allocations.insert(
        "61".into(),
        IPAllocation {
            id: "ctr-retried".into(),
            podref: "claims/retried".into(),
            ifname: "net1".into(),
        },
    );
    pools
        .replace(&pool_name, &PostParams::default(), &pool)
        .await
        .expect("the retried ADD's entry");
    for (ip, pod) in [(landing, "landing"), (superseded, "retried")] {
        orips
            .create(
                &PostParams::default(),
                &left_claim(ns.name(), &pool_name, ip, &owner(pod), "node-3"),
            )
            .await
            .expect("a claim left behind");
    }
    let pool_rv = pools.get(&pool_name).await.expect("pool").resource_version();
    wait_for("the watch to hold the pool", || async {
        node3
            .pools
            .state()
            .iter()
            .any(|p| p.name_any() == pool_name && p.resource_version() == pool_rv)
            .then_some(())
    })
    .await;

    let listed = orips
        .list(&kube::api::ListParams::default().labels(&format!("{NODE_LABEL}={}", node_label("node-3"))))
        .await
        .expect("list")
        .items;
    assert_eq!(listed.len(), 2);
    // The first pass only notes them (a release between its pool write and its reservation
    // delete looks the same for a moment); the second acts.
    assert_eq!(
        node3.engine.repair_claims(listed.clone()).await,
        0,
        "nothing queued on first sight"
    );
    assert!(
        !entries(&pools, &pool_name)
            .await
            .contains_key(&offset(landing, base))
    );
    assert!(
        orips
            .get_opt(&orip_name(superseded, Some(NETWORK)))
            .await
            .expect("read")
            .is_some()
    );
    assert_eq!(node3.engine.repair_claims(listed).await, 1, "one entry queued");
    wait_for("the landing claim's pool entry", || async {
        (entries(&pools, &pool_name).await.get(&offset(landing, base)) == Some(&"claims/landing".to_string()))
            .then_some(())
    })
    .await;
    let superseded_name = orip_name(superseded, Some(NETWORK));
    assert!(
        orips.get_opt(&superseded_name).await.expect("read").is_none(),
        "the superseded claim {superseded_name} is deleted"
    );
    assert!(
        !entries(&pools, &pool_name)
            .await
            .contains_key(&offset(superseded, base))
    );
    // The repaired claim releases as any other.
    let freed = node3
        .engine
        .release(&owner("landing"), std::slice::from_ref(&pool_name))
        .await
        .expect("release");
    assert_eq!(freed.iter().map(|a| a.ip).collect::<Vec<_>>(), vec![landing]);
    assert!(
        orips
            .get_opt(&orip_name(landing, Some(NETWORK)))
            .await
            .expect("read")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_takes_the_stray_claims_of_its_attachment_with_it() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("claim-stray").await;
    let (cidr, base) = ("198.18.115.0/24", "198.18.115.0");
    let pool_name = format!("{NETWORK}-198.18.115.0-24");
    let node4 = node(cluster.node_client("node-4"), ns.name(), "node-4");
    node4.open();
    seed_pool(cluster, ns.name(), &node4, cidr, &pool_name).await;
    let pools = Api::<IPPool>::namespaced(cluster.admin_client(), ns.name());
    let orips = Api::<OverlappingRangeIPReservation>::namespaced(cluster.admin_client(), ns.name());

    // The ADD that made this claim went unanswered (the daemon was killed); the runtime's retry
    // got another address, through this engine.
    let stray: IpAddr = "198.18.115.70".parse().expect("ip");
    orips
        .create(
            &PostParams::default(),
            &left_claim(ns.name(), &pool_name, stray, &owner("pod"), "node-4"),
        )
        .await
        .expect("a claim left behind");
    let got = node4
        .engine
        .allocate(&request("pod", cidr))
        .await
        .expect("the retried ADD");
    assert_ne!(got[0].ip, stray);

    // Released before any repair pass: the stray claim goes too.
    let freed = node4
        .engine
        .release(&owner("pod"), std::slice::from_ref(&pool_name))
        .await
        .expect("release");
    assert_eq!(freed.iter().map(|a| a.ip).collect::<Vec<_>>(), vec![got[0].ip]);
    let name = orip_name(stray, Some(NETWORK));
    assert!(
        orips.get_opt(&name).await.expect("read").is_none(),
        "the stray claim {name} is left"
    );
    let listed = orips
        .list(&kube::api::ListParams::default().labels(&format!("{NODE_LABEL}={}", node_label("node-4"))))
        .await
        .expect("list")
        .items;
    assert!(listed.is_empty(), "{} claims of node 4 left", listed.len());

    // A repair pass that listed the claim before the release deleted it does not write it
    // back: the attachment was released moments ago.
    let listed_before = vec![left_claim(ns.name(), &pool_name, stray, &owner("pod"), "node-4")];
    assert_eq!(node4.engine.repair_claims(listed_before.clone()).await, 0);
    assert_eq!(node4.engine.repair_claims(listed_before).await, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !entries(&pools, &pool_name)
            .await
            .contains_key(&offset(stray, base)),
        "a released attachment's claim was written back"
    );
}
