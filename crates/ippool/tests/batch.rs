//! The batching engine ([`BatchingIpam`]) against a real kube-apiserver: requests that queue
//! up while a pool write is in flight go out together in the next single write; a request that
//! cannot be served fails alone; releases and allocations mix in one batch; another node's write
//! that the watch delivered is built on without a read or a lost write; a node that finds
//! another waiting longer for a contended pool waits for that node's turn instead of sending a
//! write to lose, and deletes its place when done; the node whose turn comes writes what the
//! nodes behind it posted (allocations and releases), so they need no write of their own; stale
//! places are swept.
//!
//! The first write of each test is held in the store's write hook until the test has queued
//! the rest (the engine's `submitted` counter says when), so the batch composition does not
//! depend on timing.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use netattach_ipam::error::IpamError;
use netattach_ipam::range::IpRange;
use netattach_ipam::store::{AllocationRequest, Owner};
use netattach_ippool::turn::{self, Turns, Waiter};
use netattach_ippool::watch;
use netattach_ippool::{BatchingIpam, IPPool, KubeIpam};
use tokio::task::JoinHandle;

fn request(pod: &str, cidr: &str, network: &str) -> AllocationRequest {
    let range = IpRange::parse(cidr, None, None, &[], None).expect("range");
    AllocationRequest::new(
        Owner::new(format!("ctr-{pod}"), Some(format!("batch/{pod}")), "net1"),
        vec![range],
        Some(network.to_string()),
    )
}

/// A store whose first pool write waits until `gate` says go.
fn gated_store(client: kube::Client, namespace: &str) -> (KubeIpam, mpsc::Sender<()>) {
    let (go, gate) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(Some(gate)));
    let ipam = KubeIpam::new(client, namespace).with_write_hook(Arc::new(move |_pool, _attempt| {
        let first = gate.lock().map(|mut g| g.take()).unwrap_or(None);
        if let Some(gate) = first {
            // Blocks this task only: block_in_place hands the worker's other tasks to another
            // thread, so the test's tasks keep running.
            tokio::task::block_in_place(|| {
                let _ = gate.recv_timeout(Duration::from_secs(60));
            });
        }
    }));
    (ipam, go)
}

async fn wait_submitted(engine: &BatchingIpam, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.batch_stats().submitted.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "only {:?} requests were queued",
            engine.batch_stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The watches an engine takes turns with: the pools and the turn Leases of one namespace. The
/// watch tasks stop when this is dropped.
struct TurnWatches {
    pools: Store<IPPool>,
    leases: Store<Lease>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for TurnWatches {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl TurnWatches {
    /// Both watches of `namespace`, as `client` sees it.
    fn start(client: kube::Client, namespace: &str) -> TurnWatches {
        let (pools, pool_watching) = watch::in_background(
            Api::<IPPool>::namespaced(client.clone(), namespace),
            watcher::Config::default(),
            "IPPool",
        );
        let (leases, lease_watching) = watch::in_background(
            Api::<Lease>::namespaced(client, namespace),
            watcher::Config::default().labels(&format!("{}=true", turn::TURN_LABEL)),
            "turn Lease",
        );
        TurnWatches {
            pools,
            leases,
            tasks: [pool_watching, lease_watching],
        }
    }

    /// The engine of `node` over these watches.
    fn engine(&self, client: kube::Client, namespace: &str, node: &str) -> BatchingIpam {
        BatchingIpam::new(
            KubeIpam::new(client, namespace)
                .with_pool_view(self.pools.clone())
                .with_turns(Turns::new(self.leases.clone(), node)),
        )
    }

    /// Waits until the pool watch holds `pool` at resourceVersion `rv`.
    async fn wait_for_pool(&self, pool: &str, rv: &Option<String>) {
        wait_for("the pool in the watch", || {
            self.pools
                .state()
                .iter()
                .any(|p| p.name_any() == pool && p.resource_version() == *rv)
                .then_some(())
        })
        .await;
    }

    /// What `node` posted under annotation `key` of its turn Lease, as the watch has it.
    fn posted(&self, node: &str, key: &str) -> Option<turn::Allocations> {
        self.place_of(node)
            .and_then(|l| l.annotations().get(key).cloned())
            .and_then(|text| serde_json::from_str::<turn::Allocations>(&text).ok())
    }

    /// Waits until no node is in line for any pool (every turn Lease left).
    async fn wait_line_empty(&self, what: &str) {
        wait_for(what, || {
            let in_line = self
                .leases
                .state()
                .iter()
                .any(|l| l.annotations().contains_key(turn::POOL_ANNOTATION));
            (!in_line).then_some(())
        })
        .await;
    }

    /// `node`'s place in line (its turn Lease), as the watch has it.
    fn place_of(&self, node: &str) -> Option<Lease> {
        self.leases.state().into_iter().map(|l| (*l).clone()).find(|l| {
            l.annotations().contains_key(turn::POOL_ANNOTATION)
                && l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(node)
        })
    }
}

/// Polls `found` every 5 ms until it gives a value; fails the test after 30 s, naming `what`.
async fn wait_for<T>(what: &str, mut found: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = found() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_during_a_write_go_out_in_one_write() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("batch-one-write").await;
    let (ipam, go) = gated_store(cluster.node_client("node-1"), ns.name());
    let engine = BatchingIpam::new(ipam);
    let network = "batched";
    let cidr = "198.18.96.0/24";

    let first = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.allocate(&request("p0", cidr, network)).await })
    };
    wait_submitted(&engine, 1).await;
    let rest: Vec<_> = (1..=20)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.allocate(&request(&format!("p{i}"), cidr, network)).await })
        })
        .collect();
    wait_submitted(&engine, 21).await;
    go.send(()).expect("open the gate");

    let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
    for h in std::iter::once(first).chain(rest) {
        let a = h.await.expect("task").expect("allocation");
        assert_eq!(a.len(), 1);
        assert!(ips.insert(a[0].ip), "{} handed out twice", a[0].ip);
    }
    assert_eq!(ips.len(), 21);
    let stats = engine.ipam().stats();
    assert_eq!(
        stats.writes, 2,
        "21 requests in 2 writes (the first alone, then the 20 queued): {stats:?}"
    );
    assert_eq!(engine.batch_stats().largest.load(Ordering::SeqCst), 20);
    // Every address is stored for its pod, with its overlapping-range reservation.
    let pool = Api::<IPPool>::namespaced(cluster.admin_client(), ns.name())
        .get(&format!("{network}-198.18.96.0-24"))
        .await
        .expect("pool");
    assert_eq!(pool.spec.allocations.len(), 21);
    let pods: BTreeSet<&str> = pool
        .spec
        .allocations
        .values()
        .map(|a| a.podref.as_str())
        .collect();
    assert_eq!(pods.len(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_request_fails_alone_and_releases_mix_with_allocations() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("batch-mixed").await;
    // A /30: two usable addresses.
    let cidr = "198.18.97.0/30";
    let network = "tiny";
    let warmup = BatchingIpam::new(KubeIpam::new(cluster.node_client("node-2"), ns.name()));
    let held = warmup
        .allocate(&request("holder", cidr, network))
        .await
        .expect("first address");

    let (ipam, go) = gated_store(cluster.node_client("node-2"), ns.name());
    let engine = BatchingIpam::new(ipam);
    // Batch 1 (held at the gate): release the holder. Batch 2: three allocations for the two
    // addresses, so exactly one is refused as exhausted and the others succeed.
    let release = {
        let engine = engine.clone();
        let pools = vec![format!("{network}-198.18.97.0-30")];
        tokio::spawn(async move {
            engine
                .release(&request("holder", cidr, network).owner, &pools)
                .await
        })
    };
    wait_submitted(&engine, 1).await;
    let adds: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|p| {
            let engine = engine.clone();
            let req = request(p, cidr, network);
            tokio::spawn(async move { engine.allocate(&req).await })
        })
        .collect();
    wait_submitted(&engine, 4).await;
    go.send(()).expect("open the gate");

    let freed = release.await.expect("task").expect("release");
    assert_eq!(freed.iter().map(|a| a.ip).collect::<Vec<_>>(), vec![held[0].ip]);
    let mut ok = Vec::new();
    let mut exhausted = 0;
    for h in adds {
        match h.await.expect("task") {
            Ok(a) => ok.push(a[0].ip),
            Err(IpamError::Exhausted { .. }) => exhausted += 1,
            Err(e) => panic!("unexpected failure: {e}"),
        }
    }
    ok.sort();
    assert_eq!(
        exhausted, 1,
        "exactly one of three requests for two addresses fails"
    );
    assert_eq!(
        ok,
        vec![
            "198.18.97.1".parse::<IpAddr>().expect("ip"),
            "198.18.97.2".parse().expect("ip")
        ]
    );
    assert_eq!(engine.ipam().stats().writes, 2, "one write per batch");
}

/// With the daemon's IPPool watch, a node learns of another node's write without reading or
/// losing: the batch it computed on its own last write is redone on the watch's newer copy
/// before it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_write_seen_by_the_watch_is_built_on_without_a_read_or_a_conflict() {
    use kube::runtime::reflector;

    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("batch-watch").await;
    let cidr = "198.18.98.0/24";
    let network = "watched";
    let pool_name = format!("{network}-198.18.98.0-24");
    let client = cluster.node_client("node-3");
    let (view, watching) = watch::in_background(
        Api::<IPPool>::namespaced(client.clone(), ns.name()),
        watcher::Config::default(),
        "IPPool",
    );
    let engine = BatchingIpam::new(KubeIpam::new(client, ns.name()).with_pool_view(view.clone()));
    let other_node = BatchingIpam::new(KubeIpam::new(cluster.node_client("node-4"), ns.name()));
    let rv_in_view = || {
        view.get(&reflector::ObjectRef::new(&pool_name).within(ns.name()))
            .and_then(|p| p.metadata.resource_version.clone())
    };

    // This node creates the pool; its worker keeps the version it wrote.
    let first = engine
        .allocate(&request("w0", cidr, network))
        .await
        .expect("first");
    // Another node writes next; wait until the watch has its version.
    let second = other_node
        .allocate(&request("w1", cidr, network))
        .await
        .expect("second");
    let written = Api::<IPPool>::namespaced(cluster.admin_client(), ns.name())
        .get(&pool_name)
        .await
        .expect("pool");
    let deadline = Instant::now() + Duration::from_secs(30);
    while rv_in_view() != written.metadata.resource_version {
        assert!(
            Instant::now() < deadline,
            "the watch never saw the other node's write"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let before = engine.ipam().stats();
    let third = engine
        .allocate(&request("w2", cidr, network))
        .await
        .expect("third");
    let after = engine.ipam().stats();
    assert_eq!(after.rebases - before.rebases, 1, "{before:?} -> {after:?}");
    assert_eq!(
        after.conflicts, before.conflicts,
        "no write was sent to lose: {after:?}"
    );
    assert_eq!(
        after.reads, before.reads,
        "the newer copy came from the watch: {after:?}"
    );
    assert_eq!(after.writes - before.writes, 1, "{after:?}");
    let ips: BTreeSet<IpAddr> = [&first, &second, &third].iter().map(|a| a[0].ip).collect();
    assert_eq!(ips.len(), 3, "three distinct addresses: {ips:?}");
    let pool = Api::<IPPool>::namespaced(cluster.admin_client(), ns.name())
        .get(&pool_name)
        .await
        .expect("pool");
    assert_eq!(pool.spec.allocations.len(), 3, "both nodes' allocations are kept");
    watching.abort();
}

/// The place in line of node 4, which has been waiting for 10 s.
fn node4_waiting_long() -> Waiter {
    Waiter {
        since: Timestamp::now()
            .checked_sub(SignedDuration::from_secs(10))
            .expect("timestamp"),
        node: "node-4".into(),
    }
}

/// `place` uses its turn: a write of the pool that carries its mark.
async fn use_turn(pool_api: &Api<IPPool>, pool_name: &str, place: &Waiter) {
    let mut pool = pool_api.get(pool_name).await.expect("pool");
    pool.annotations_mut()
        .insert(turn::DONE_ANNOTATION.to_string(), place.mark());
    pool_api
        .replace(pool_name, &Default::default(), &pool)
        .await
        .expect("the write in turn");
}

/// Node 4, waiting for 10 s, in line for `pool` and kept there (renewed) by the returned task
/// until [`node4_uses_turn_and_leaves`]; returns once the watch shows its place.
async fn node4_in_line(watches: &TurnWatches, api: &Api<Lease>, pool: &str) -> (Waiter, JoinHandle<()>) {
    let place = node4_waiting_long();
    let renewing = tokio::spawn({
        let (turns, api, pool, place) = (
            Turns::new(watches.leases.clone(), "node-4"),
            api.clone(),
            pool.to_string(),
            place.clone(),
        );
        async move {
            loop {
                turns
                    .queue(&api, &pool, &place, &Default::default())
                    .await
                    .expect("node 4 queues (the node RBAC allows it)");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    wait_for("node 4's place in the watch", || watches.place_of("node-4")).await;
    (place, renewing)
}

/// Node 4 stops renewing, uses its turn (a write of `pool` with its mark) and leaves the line.
async fn node4_uses_turn_and_leaves(
    watches: &TurnWatches,
    (lease_api, pool_api): (&Api<Lease>, &Api<IPPool>),
    pool: &str,
    (place, renewing): (Waiter, JoinHandle<()>),
) {
    renewing.abort();
    drop(renewing.await);
    use_turn(pool_api, pool, &place).await;
    Turns::new(watches.leases.clone(), "node-4")
        .leave(lease_api, pool)
        .await
        .expect("node 4 leaves");
}

/// Node 3 finds node 4 in line for a contended pool, started before it: node 3 queues behind
/// it and sends nothing until the pool says node 4's turn was used, then writes in its own
/// turn. No write is sent to lose, and node 3 leaves the line afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_waits_for_the_turn_of_a_node_that_waited_longer() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("batch-turns").await;
    let cidr = "198.18.99.0/24";
    let network = "turns";
    let pool_name = format!("{network}-198.18.99.0-24");
    let watches = TurnWatches::start(cluster.node_client("node-3"), ns.name());
    let leases = &watches.leases;
    let engine = watches.engine(cluster.node_client("node-3"), ns.name(), "node-3");
    let pool_api = Api::<IPPool>::namespaced(cluster.admin_client(), ns.name());
    let lease_api = Api::<Lease>::namespaced(cluster.node_client("node-4"), ns.name());
    let lease_of = |node: &str| watches.place_of(node);

    // Uncontended: a write without a turn.
    let first = engine
        .allocate(&request("t0", cidr, network))
        .await
        .expect("first");
    assert!(lease_of("node-3").is_none(), "no queue without contention");
    let rv_first = pool_api.get(&pool_name).await.expect("pool").resource_version();

    // Node 4 has been waiting for 10 s.
    let node4_turns = Turns::new(leases.clone(), "node-4");
    let node4_place = node4_waiting_long();
    node4_turns
        .queue(&lease_api, &pool_name, &node4_place, &Default::default())
        .await
        .expect("node 4 queues (the node RBAC allows it)");
    wait_for("node 4's place in the watch", || lease_of("node-4")).await;

    let waiting = tokio::spawn({
        let engine = engine.clone();
        async move { engine.allocate(&request("t1", cidr, network)).await }
    });
    // Node 3 queues behind node 4.
    wait_for("node 3 to queue", || {
        lease_of("node-3")
            .and_then(|l| l.spec)
            .and_then(|s| s.acquire_time)
    })
    .await;
    node4_turns
        .queue(&lease_api, &pool_name, &node4_place, &Default::default())
        .await
        .expect("node 4 renews its place");
    let queued = lease_of("node-3")
        .and_then(|l| l.spec.clone())
        .and_then(|s| s.acquire_time);
    assert!(
        queued.as_ref().is_some_and(|t| t.0 > node4_place.since),
        "node 3 is behind node 4: {queued:?}"
    );
    assert_eq!(
        pool_api.get(&pool_name).await.expect("pool").resource_version(),
        rv_first,
        "node 3 did not write while node 4 was ahead"
    );
    assert!(!waiting.is_finished());

    // Node 4 uses its turn: a write that carries its mark.
    use_turn(&pool_api, &pool_name, &node4_place).await;

    let second = waiting
        .await
        .expect("join")
        .expect("node 3 allocates in its turn");
    assert_ne!(first[0].ip, second[0].ip);
    let stats = engine.ipam().stats();
    assert_eq!(stats.conflicts, 0, "no write was sent to lose: {stats:?}");
    let pool = pool_api.get(&pool_name).await.expect("pool");
    assert_eq!(pool.spec.allocations.len(), 2);
    let node3_mark = pool
        .annotations()
        .get(turn::DONE_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    assert!(
        node3_mark.starts_with("node-3 "),
        "node 3 wrote in its turn: {node3_mark}"
    );
    // Leaving the line deletes the Lease: the Leases that exist are the nodes waiting now.
    wait_for("node 3 to leave the line", || {
        lease_of("node-3").is_none().then_some(())
    })
    .await;
    let node3_lease = Turns::new(leases.clone(), "node-3").lease_name(&pool_name);
    assert!(
        lease_api.get_opt(&node3_lease).await.expect("get").is_none(),
        "node 3's Lease {node3_lease} was deleted, not left behind"
    );
}

/// The pool is still at `rv` (nobody wrote while node 4 was ahead in line).
async fn assert_unwritten_since(pool_api: &Api<IPPool>, pool_name: &str, rv: &Option<String>) {
    assert_eq!(
        &pool_api.get(pool_name).await.expect("pool").resource_version(),
        rv,
        "nobody wrote while node 4 was ahead"
    );
}

/// The pool's mark names node 3's turn, then the node 5 turn its write served.
fn assert_marks_node3_serving_node5(pool: &IPPool) {
    let mark = pool
        .annotations()
        .get(turn::DONE_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    let marks: Vec<&str> = mark.split(',').collect();
    assert!(
        marks.len() == 2 && marks[0].starts_with("node-3 ") && marks[1].starts_with("node-5 "),
        "the write names node 3's turn and the node 5 turn it served: {mark}"
    );
}

/// Two engines (nodes 3 and 5) queue behind a node that waited longer. Each posts what its batch
/// would add; node 5 keeps off the offset node 3 posted. When node 3's turn comes, its one write
/// carries node 5's allocation too: node 5 answers from the watch without a write or a read, with
/// its overlapping-range reservation claimed, and the pool's mark names both turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_in_turn_carries_what_the_nodes_behind_it_posted() {
    use netattach_ippool::OverlappingRangeIPReservation;

    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("batch-carry").await;
    let cidr = "198.18.97.0/24";
    let network = "carry";
    let pool_name = format!("{network}-198.18.97.0-24");
    let watches = TurnWatches::start(cluster.node_client("node-3"), ns.name());
    let leases = &watches.leases;
    let engine_of = |node: &str| watches.engine(cluster.node_client(node), ns.name(), node);
    let (node3, node5) = (engine_of("node-3"), engine_of("node-5"));
    let pool_api = Api::<IPPool>::namespaced(cluster.admin_client(), ns.name());
    let lease_api = Api::<Lease>::namespaced(cluster.node_client("node-4"), ns.name());
    let posted_by = |node: &str| watches.posted(node, turn::PENDING_ANNOTATION);

    let first = node3
        .allocate(&request("c0", cidr, network))
        .await
        .expect("uncontended first allocation");
    let rv_first = pool_api.get(&pool_name).await.expect("pool").resource_version();
    // Node 5's engine reads the pool from the watch; under load the watch can still be
    // listing. Its batch starts only once the watch holds the pool node 3 wrote.
    watches.wait_for_pool(&pool_name, &rv_first).await;

    // Node 4 has been waiting for 10 s and stays in line (renewed) until it uses its turn.
    let node4 = node4_in_line(&watches, &lease_api, &pool_name).await;

    let at_node3 = tokio::spawn({
        let node3 = node3.clone();
        async move { node3.allocate(&request("c1", cidr, network)).await }
    });
    let node3_posted = wait_for("node 3 to post its batch", || posted_by("node-3")).await;
    let at_node5 = tokio::spawn({
        let node5 = node5.clone();
        async move { node5.allocate(&request("c2", cidr, network)).await }
    });
    let node5_posted = wait_for("node 5 to post its batch", || posted_by("node-5")).await;
    assert_eq!(node3_posted.len(), 1, "{node3_posted:?}");
    assert_eq!(node5_posted.len(), 1, "{node5_posted:?}");
    assert!(
        node5_posted.keys().all(|k| !node3_posted.contains_key(k)),
        "node 5 kept off the offset node 3 posted: {node3_posted:?} {node5_posted:?}"
    );
    assert_unwritten_since(&pool_api, &pool_name, &rv_first).await;

    // Node 4 uses its turn and leaves.
    node4_uses_turn_and_leaves(&watches, (&lease_api, &pool_api), &pool_name, node4).await;

    let c1 = at_node3
        .await
        .expect("join")
        .expect("node 3 allocates in its turn");
    let c2 = at_node5.await.expect("join").expect("node 5 allocates, carried");
    let ips: BTreeSet<IpAddr> = [first[0].ip, c1[0].ip, c2[0].ip].into_iter().collect();
    assert_eq!(ips.len(), 3, "three distinct addresses: {ips:?}");

    let (s3, s5) = (node3.ipam().stats(), node5.ipam().stats());
    assert_eq!(
        (s3.writes, s3.carried, s3.conflicts),
        (2, 1, 0),
        "node 3 wrote its first and, in turn, both: {s3:?}"
    );
    assert_eq!(
        (s5.writes, s5.conflicts, s5.reads, s5.carried_in),
        (0, 0, 0, 1),
        "node 5 neither wrote nor read the pool: {s5:?}"
    );

    let pool = pool_api.get(&pool_name).await.expect("pool");
    assert_eq!(pool.spec.allocations.len(), 3);
    let range = IpRange::parse(cidr, None, None, &[], None).expect("range");
    let holder_of = |ip: IpAddr| {
        let offset = range.offset_of(ip)?.to_string();
        pool.spec.allocations.get(&offset).map(|a| a.podref.clone())
    };
    assert_eq!(holder_of(c2[0].ip).as_deref(), Some("batch/c2"));
    assert_marks_node3_serving_node5(&pool);
    let orips = Api::<OverlappingRangeIPReservation>::namespaced(cluster.admin_client(), ns.name());
    let reservation = orips
        .get(&netattach_ippool::crd::orip_name(c2[0].ip, Some(network)))
        .await
        .expect("node 5 claimed the carried address's reservation");
    assert_eq!(reservation.spec.podref, "batch/c2");

    // Both left the line; the pool's writer Lease names node 3's claim on the version it wrote.
    let writer = leases
        .state()
        .into_iter()
        .find(|l| l.name_any() == Turns::writer_lease_name(&pool_name))
        .expect("node 3 claimed the pool's writer Lease before its write");
    assert_eq!(
        writer.spec.as_ref().and_then(|s| s.holder_identity.as_deref()),
        Some("node-3")
    );
    watches.wait_line_empty("nodes 3 and 5 to leave the line").await;
}

/// A release is carried like an allocation. Node 5 releases an address while it waits behind
/// node 3 and posts the entry it removes; node 3's write in turn removes it along with adding
/// its own allocation. Node 5 answers from the watch without a write or a read of its own,
/// reports the address freed and deletes its overlapping-range reservation; the pool's mark
/// names node 5's turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_in_turn_carries_a_release_posted_behind_it() {
    use netattach_ippool::OverlappingRangeIPReservation;

    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("batch-carry-release").await;
    let cidr = "198.18.96.0/24";
    let network = "carryrel";
    let pool_name = format!("{network}-198.18.96.0-24");
    let watches = TurnWatches::start(cluster.node_client("node-3"), ns.name());
    let engine_of = |node: &str| watches.engine(cluster.node_client(node), ns.name(), node);
    let (node3, node5) = (engine_of("node-3"), engine_of("node-5"));
    let pool_api = Api::<IPPool>::namespaced(cluster.admin_client(), ns.name());
    let lease_api = Api::<Lease>::namespaced(cluster.node_client("node-4"), ns.name());
    let orips = Api::<OverlappingRangeIPReservation>::namespaced(cluster.admin_client(), ns.name());

    // Node 5 holds r0 (an uncontended write, its reservation claimed).
    let r0 = node5
        .allocate(&request("r0", cidr, network))
        .await
        .expect("uncontended allocation");
    let before5 = node5.ipam().stats();
    let r0_orip = netattach_ippool::crd::orip_name(r0[0].ip, Some(network));
    assert!(orips.get_opt(&r0_orip).await.expect("get").is_some());
    let rv_first = pool_api.get(&pool_name).await.expect("pool").resource_version();

    // Node 4 has been waiting for 10 s and stays in line (renewed) until it uses its turn.
    let node4 = node4_in_line(&watches, &lease_api, &pool_name).await;

    let at_node3 = tokio::spawn({
        let node3 = node3.clone();
        async move { node3.allocate(&request("r1", cidr, network)).await }
    });
    wait_for("node 3 to post its batch", || {
        watches.posted("node-3", turn::PENDING_ANNOTATION)
    })
    .await;
    let r0_owner = Owner::new("ctr-r0", Some("batch/r0".to_string()), "net1");
    let at_node5 = tokio::spawn({
        let (node5, owner, pools) = (node5.clone(), r0_owner.clone(), vec![pool_name.clone()]);
        async move { node5.release(&owner, &pools).await }
    });
    let removing = wait_for("node 5 to post its release", || {
        watches.posted("node-5", turn::RELEASING_ANNOTATION)
    })
    .await;
    let range = IpRange::parse(cidr, None, None, &[], None).expect("range");
    let r0_offset = range.offset_of(r0[0].ip).expect("offset").to_string();
    assert_eq!(
        removing.keys().collect::<Vec<_>>(),
        vec![&r0_offset],
        "node 5 posted r0's entry for removal: {removing:?}"
    );
    assert!(watches.posted("node-5", turn::PENDING_ANNOTATION).is_none());
    assert_unwritten_since(&pool_api, &pool_name, &rv_first).await;

    // Node 4 uses its turn and leaves.
    node4_uses_turn_and_leaves(&watches, (&lease_api, &pool_api), &pool_name, node4).await;

    let r1 = at_node3
        .await
        .expect("join")
        .expect("node 3 allocates in its turn");
    let freed = at_node5.await.expect("join").expect("node 5 releases, carried");
    assert_eq!(
        freed.iter().map(|a| a.ip).collect::<Vec<_>>(),
        vec![r0[0].ip],
        "the carried release reports what it freed"
    );

    let (s3, s5) = (node3.ipam().stats(), node5.ipam().stats());
    assert_eq!(
        (s3.writes, s3.carried, s3.conflicts),
        (1, 1, 0),
        "node 3 wrote once, in turn, with node 5's release: {s3:?}"
    );
    assert_eq!(
        (
            s5.writes - before5.writes,
            s5.conflicts - before5.conflicts,
            s5.reads - before5.reads,
            s5.carried_in - before5.carried_in
        ),
        (0, 0, 0, 1),
        "node 5's release took neither a write nor a read: {before5:?} -> {s5:?}"
    );

    let pool = pool_api.get(&pool_name).await.expect("pool");
    let held: Vec<(String, String)> = pool
        .spec
        .allocations
        .iter()
        .map(|(offset, a)| (offset.clone(), a.podref.clone()))
        .collect();
    let r1_offset = range.offset_of(r1[0].ip).expect("offset").to_string();
    assert_eq!(held, vec![(r1_offset, "batch/r1".to_string())]);
    assert_marks_node3_serving_node5(&pool);
    assert!(
        orips.get_opt(&r0_orip).await.expect("get").is_none(),
        "node 5 deleted the freed address's reservation"
    );
    let r1_orip = orips
        .get(&netattach_ippool::crd::orip_name(r1[0].ip, Some(network)))
        .await
        .expect("node 3 claimed its address's reservation");
    assert_eq!(r1_orip.spec.podref, "batch/r1");
    watches.wait_line_empty("nodes 3 and 5 to leave the line").await;
}

/// The sweep the GC leader runs deletes the turn Leases no live waiter holds (a daemon that
/// died waiting, a Lease an earlier release left when its node left the line) and keeps a
/// waiter's that is being renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_turn_leases_are_swept_and_live_ones_kept() {
    use kube::api::{Patch, PatchParams};

    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("batch-turn-sweep").await;
    let api = Api::<Lease>::namespaced(cluster.node_client("node-2"), ns.name());
    let (view, _) = kube::runtime::reflector::store::<Lease>();
    let pool = "sweep-198.18.98.0-24";
    let ago = |secs: i64| {
        Timestamp::now()
            .checked_sub(SignedDuration::from_secs(secs))
            .expect("timestamp")
    };

    // node-1 is waiting and renewing; node-2 died waiting 5 minutes ago.
    let live = Turns::new(view.clone(), "node-1");
    live.queue(
        &api,
        pool,
        &Waiter {
            since: ago(30),
            node: "node-1".into(),
        },
        &Default::default(),
    )
    .await
    .expect("node-1 queues");
    let dead = Turns::new(view.clone(), "node-2");
    let dead_name = dead.lease_name(pool);
    let apply = |name: &str, spec: serde_json::Value| {
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "labels": {turn::TURN_LABEL: "true"},
                         "annotations": {turn::POOL_ANNOTATION: pool}},
            "spec": spec,
        });
        let api = api.clone();
        let name = name.to_string();
        async move {
            api.patch(&name, &PatchParams::apply("test").force(), &Patch::Apply(&lease))
                .await
                .expect("apply")
        }
    };
    apply(
        &dead_name,
        serde_json::json!({"holderIdentity": "node-2",
            "acquireTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(ago(400)),
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(ago(300))}),
    )
    .await;
    // node-3's Lease as a release that cleared it on leaving left it: not waiting.
    let left_name = Turns::new(view.clone(), "node-3").lease_name(pool);
    apply(&left_name, serde_json::json!({"holderIdentity": "node-3"})).await;
    // Not a turn Lease at all (no label): never touched.
    let other = serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "someone-elses"}, "spec": {"holderIdentity": "x"}});
    api.patch(
        "someone-elses",
        &PatchParams::apply("test"),
        &Patch::Apply(&other),
    )
    .await
    .expect("apply");

    let deleted = turn::sweep(&api).await.expect("sweep");
    assert_eq!(deleted, 2, "the dead waiter's and the left-behind Lease");
    assert!(api.get_opt(&dead_name).await.expect("get").is_none());
    assert!(api.get_opt(&left_name).await.expect("get").is_none());
    assert!(
        api.get_opt(&live.lease_name(pool)).await.expect("get").is_some(),
        "the live waiter keeps its place"
    );
    assert!(api.get_opt("someone-elses").await.expect("get").is_some());
    assert_eq!(
        turn::sweep(&api).await.expect("sweep"),
        0,
        "nothing stale is left"
    );
}
