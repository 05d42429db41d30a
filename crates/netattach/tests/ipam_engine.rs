//! The node daemons' IPAM engine on the real kube-apiserver (issue 5 §2 and §6): ten
//! `netattach daemon` processes, one per simulated node identity, and the IPAM front of the
//! `whereabouts` face (`netattach_plugins::whereabouts::allocate` / `release`, the very code a
//! CNI ADD and DEL run) sending them concurrent requests for one pool.
//!
//! * 1000 concurrent allocations: 0 duplicates, every result stored exactly as returned, and
//!   0 leaks (pool and overlapping-range reservations empty) after 1000 concurrent releases.
//! * The same while daemons are SIGKILLed mid-burst and restarted: a shim that finds its daemon
//!   gone writes the pool itself; one that loses its daemon mid-request gets code 11 and retries,
//!   as a kubelet does.
//! * The same while the kube-apiserver is stopped and restarted (a control plane of the test's
//!   own), and a DEL while the API server is down is queued durably by the daemon and completed
//!   after the restart.
//!
//! Every request is retried on code 11 (what the runtime does); any other error fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use kube::api::ListParams;
use kube::{Api, Client};
use netattach_cni::error::code;
use netattach_ipam::config::{FlatFileSearch, IpamConfig};
use netattach_ipam::store::{AllocationRequest, Owner};
use netattach_ippool::crd::orip_name;
use netattach_ippool::{IPPool, OverlappingRangeIPReservation};
use netattach_plugins::whereabouts;
use serde_json::json;

mod support;
use support::daemon::NodeDaemon;

/// The pool of these tests (2046 usable addresses).
const RANGE: &str = "198.18.64.0/21";
/// Its IPPool name without the network prefix.
const RANGE_NAME: &str = "198.18.64.0-21";
/// How long one request may keep failing with code 11 before the test gives up.
const RETRY_FOR: Duration = Duration::from_secs(180);
/// How long a daemon may take to start.
const WAIT: Duration = Duration::from_secs(60);

/// The daemon of `node`, serving: its socket accepts (the IPAM engine needs no cache).
fn serving(node: &str, kubeconfig: &Path) -> NodeDaemon {
    let mut d = NodeDaemon::start(node, kubeconfig, WAIT);
    d.wait_socket();
    d
}

/// The IPAM configuration a NAD on `daemon`'s node would carry.
fn config(network: &str, daemon: &NodeDaemon) -> IpamConfig {
    let netconf = json!({
        "cniVersion": "1.0.0",
        "name": network,
        "type": "macvlan",
        "ipam": {
            "type": "whereabouts",
            "range": RANGE,
            "network_name": network,
            "kubernetes": {"kubeconfig": daemon.kubeconfig()},
            "daemon_socket": daemon.socket(),
        }
    });
    IpamConfig::from_netconf_with(&netconf, &FlatFileSearch { paths: Vec::new() }).expect("IPAM config")
}

fn owner(network: &str, i: usize) -> Owner {
    Owner::new(
        format!("ctr-{network}-{i:05}"),
        Some(format!("ipam-engine/{network}-pod-{i}")),
        "net1",
    )
}

/// ADD attempts that failed (and were retried) since the process started.
static FAILED_ADD_ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

/// One ADD through the IPAM front, retried on code 11 as a runtime does.
fn allocate_retrying(cfg: &IpamConfig, who: &Owner) -> IpAddr {
    let mut req = AllocationRequest::new(who.clone(), cfg.ranges.clone(), cfg.network_name.clone());
    req.overlapping_ranges = cfg.enable_overlapping_ranges;
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        match whereabouts::allocate(cfg, &req) {
            Ok(a) => {
                assert_eq!(a.len(), 1, "{who}: one address per range");
                return a[0].ip;
            }
            Err(e) if e.code == code::TRY_AGAIN_LATER && Instant::now() < deadline => {
                FAILED_ADD_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50 + fastrand_ms()));
            }
            Err(e) => panic!("{who}: ADD failed: {e}"),
        }
    }
}

/// One DEL through the IPAM front, retried on code 11.
fn release_retrying(cfg: &IpamConfig, who: &Owner) {
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        match whereabouts::release(cfg, who) {
            Ok(_) => return,
            Err(e) if e.code == code::TRY_AGAIN_LATER && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50 + fastrand_ms()));
            }
            Err(e) => panic!("{who}: DEL failed: {e}"),
        }
    }
}

/// A little jitter from the clock (no RNG dependency needed for spreading retries).
fn fastrand_ms() -> u64 {
    u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
            % 100,
    )
}

/// Runs `f(i)` for every i in 0..n, all released at once, on n threads.
/// Sets its flag when dropped, also while a panic unwinds (so a helper thread waiting on
/// progress stops instead of keeping the scope, and the test, from ever ending).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn burst<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let start = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (start, f) = (&start, &f);
                std::thread::Builder::new()
                    .stack_size(4 << 20)
                    .spawn_scoped(s, move || {
                        start.wait();
                        f(i)
                    })
                    .expect("spawn a request thread")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    })
}

/// Where the pools are: the namespace of the node kubeconfigs' context (as whereabouts).
fn pool_ns(cfg: &IpamConfig) -> String {
    netattach_ippool::pool_namespace(cfg).expect("pool namespace")
}

/// One test's pool: the admin client, the namespace of its objects, its network name.
struct PoolView {
    admin: Client,
    namespace: String,
    network: String,
}

/// The pool's allocations: offset → (container id, podref).
async fn pool_allocations(view: &PoolView) -> BTreeMap<u128, (String, String)> {
    let (admin, network) = (&view.admin, view.network.as_str());
    let pools: Api<IPPool> = Api::namespaced(admin.clone(), &view.namespace);
    let Some(pool) = pools
        .get_opt(&format!("{network}-{RANGE_NAME}"))
        .await
        .expect("read the IPPool")
    else {
        return BTreeMap::new();
    };
    pool.spec
        .allocations
        .iter()
        .map(|(k, a)| {
            (
                k.parse::<u128>().expect("decimal offset"),
                (a.id.clone(), a.podref.clone()),
            )
        })
        .collect()
}

/// The overlapping-range reservations of the pool's network.
async fn orips(view: &PoolView) -> Vec<String> {
    let network = view.network.as_str();
    let api: Api<OverlappingRangeIPReservation> = Api::namespaced(view.admin.clone(), &view.namespace);
    api.list(&ListParams::default())
        .await
        .expect("list ORIPs")
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .filter(|n| n.starts_with(&format!("{network}-")))
        .collect()
}

fn offset_of(ip: IpAddr) -> u128 {
    let base: IpAddr = "198.18.64.0".parse().expect("base");
    match (ip, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => u128::from(u32::from(a) - u32::from(b)),
        _ => panic!("{ip} is not IPv4"),
    }
}

/// The whole-burst assertions: every address distinct, in the range, and stored in the pool
/// exactly for the attachment it was returned to; and the ORIP of each exists. The daemons
/// answer once an address's ORIP is created and write its pool entry just after (a daemon
/// killed in between writes it when it is back, on its second repair pass, 15 s apart): the
/// pool is judged once it holds every returned address for its attachment (or after two
/// minutes, to fail).
///
/// `failed_attempts`: ADD attempts that failed and were retried during the burst. Each may
/// leave its attachment a second entry until the attachment is released: one written
/// pool-first before the attempt failed, which a claim made while the daemon's watch did not
/// show it yet (after an API server restart) does not see; or a claim whose entry was on its
/// way when its daemon was killed before answering. Any other entry is a failure.
async fn assert_no_duplicates(view: &PoolView, results: &[(Owner, IpAddr)], failed_attempts: usize) {
    let network = view.network.as_str();
    let distinct: BTreeSet<IpAddr> = results.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(
        distinct.len(),
        results.len(),
        "duplicate addresses were handed out"
    );
    let complete = |stored: &BTreeMap<u128, (String, String)>| {
        results.iter().all(|(who, ip)| {
            stored
                .get(&offset_of(*ip))
                .is_some_and(|(id, podref)| *id == who.container_id && who.podref.as_ref() == Some(podref))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stored = pool_allocations(view).await;
    while !complete(&stored) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        stored = pool_allocations(view).await;
    }
    let returned: BTreeSet<u128> = results.iter().map(|(_, ip)| offset_of(*ip)).collect();
    let extra: Vec<_> = stored.iter().filter(|(o, _)| !returned.contains(o)).collect();
    eprintln!("failed ADD attempts: {failed_attempts}; entries besides the returned addresses: {extra:?}");
    assert!(
        extra.len() <= failed_attempts,
        "the pool holds {} allocations for {} attachments after {failed_attempts} failed ADD attempts",
        stored.len(),
        results.len()
    );
    for (offset, (id, podref)) in &extra {
        assert!(
            results
                .iter()
                .any(|(who, _)| who.container_id == *id && who.podref.as_ref() == Some(podref)),
            "offset {offset} is held for {podref} ({id}), not an attachment of this burst"
        );
    }
    for (who, ip) in results {
        let entry = stored
            .get(&offset_of(*ip))
            .unwrap_or_else(|| panic!("{ip} of {who} is not in the pool"));
        assert_eq!(
            (&entry.0, Some(&entry.1)),
            (&who.container_id, who.podref.as_ref()),
            "{ip} is stored for another attachment"
        );
    }
    let reservations: BTreeSet<String> = orips(view).await.into_iter().collect();
    for (_, ip) in results {
        assert!(
            reservations.contains(&orip_name(*ip, Some(network))),
            "{ip} has no OverlappingRangeIPReservation"
        );
    }
}

/// The bursts are heavy (1000 threads, ten daemons, thousands of API writes): one at a time,
/// so each measures its own engine and not the other tests' load.
static ONE_BURST_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Releases every owner concurrently (owner i through daemon i % n) and asserts that nothing is
/// left: no allocation, no overlapping-range reservation. A release whose batch could not land
/// its write within the engine's budget (a loaded machine, ten nodes on one pool) waits in its
/// daemon's durable queue: the daemons must have drained their queues before the check.
async fn release_all_and_assert_clean(
    view: &PoolView,
    daemons: &[NodeDaemon],
    configs: &[IpamConfig],
    owners: &[Owner],
) {
    tokio::task::block_in_place(|| {
        burst(owners.len(), |i| {
            release_retrying(&configs[i % configs.len()], &owners[i])
        })
    });
    let queued = |d: &NodeDaemon| std::fs::read_dir(d.queue_dir()).expect("queue dir").count();
    let at_first: usize = daemons.iter().map(queued).sum();
    let deadline = Instant::now() + Duration::from_secs(180);
    for d in daemons {
        while queued(d) > 0 {
            assert!(
                Instant::now() < deadline,
                "{}: the release queue was not drained:\n{}",
                d.node(),
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    eprintln!("releases that waited in a daemon's queue: {at_first}");
    let left = pool_allocations(view).await;
    assert!(
        left.is_empty(),
        "{} allocations leaked after releasing everything: {:?}",
        left.len(),
        left.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        orips(view).await,
        Vec::<String>::new(),
        "overlapping-range reservations leaked"
    );
}

fn network_name(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

/// Starts one daemon per node identity of the shared cluster.
fn daemons_of(cluster: &netattach_testenv::Cluster, n: usize) -> Vec<NodeDaemon> {
    let nodes = cluster.nodes();
    assert!(
        nodes.len() >= n,
        "the test environment has {} node identities, this test needs {n} (tools/test-k8s starts 10)",
        nodes.len()
    );
    nodes[..n]
        .iter()
        .map(|node| {
            serving(
                node,
                &cluster
                    .dir()
                    .join("kubeconfig")
                    .join(format!("{node}.kubeconfig")),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_allocations_from_ten_daemons_give_no_duplicates_and_no_leaks() {
    let _one = ONE_BURST_AT_A_TIME.lock().await;
    let failed_before = FAILED_ADD_ATTEMPTS.load(Ordering::SeqCst);
    let cluster = netattach_testenv::cluster().await;
    let admin = cluster.admin_client();
    let network = network_name("engine");
    let daemons = daemons_of(cluster, 10);
    let configs: Vec<IpamConfig> = daemons.iter().map(|d| config(&network, d)).collect();
    let view = PoolView {
        admin,
        namespace: pool_ns(&configs[0]),
        network: network.clone(),
    };
    let owners: Vec<Owner> = (0..1000).map(|i| owner(&network, i)).collect();

    let started = Instant::now();
    let results = tokio::task::block_in_place(|| {
        burst(owners.len(), |i| {
            (
                owners[i].clone(),
                allocate_retrying(&configs[i % configs.len()], &owners[i]),
            )
        })
    });
    let total = |name: &str| daemons.iter().map(|d| d.metric(name)).sum::<u64>();
    eprintln!(
        "1000 allocations through 10 daemons in {:.2}s: {} requests in {} batches, {} pool writes, {} conflicts",
        started.elapsed().as_secs_f64(),
        total("netattach_ipam_batched_requests_total"),
        total("netattach_ipam_batches_total"),
        total("netattach_ipam_pool_writes_total"),
        total("netattach_ipam_pool_conflicts_total"),
    );
    let failed_attempts = FAILED_ADD_ATTEMPTS.load(Ordering::SeqCst) - failed_before;
    assert_no_duplicates(&view, &results, failed_attempts).await;
    // Every daemon's /metrics shows the pool from its IPPool watch: 2046 addresses, 1000 used.
    let pool_label = format!("pool=\"{network}-{RANGE_NAME}\"");
    let deadline = Instant::now() + Duration::from_secs(30);
    for d in &daemons {
        while d.metric_with("netattach_ipam_pool_used", &pool_label) != 1000 {
            assert!(
                Instant::now() < deadline,
                "{}: the pool gauges do not show 1000 used",
                d.node()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(d.metric_with("netattach_ipam_pool_size", &pool_label), 2046);
        assert_eq!(d.metric_with("netattach_ipam_pool_free", &pool_label), 1046);
        assert_eq!(d.metric_with("netattach_ipam_pool_exhausted", &pool_label), 0);
    }

    // The same requests again: idempotent, the same addresses, nothing new written.
    let again = tokio::task::block_in_place(|| {
        burst(100, |i| {
            allocate_retrying(&configs[(i + 3) % configs.len()], &owners[i])
        })
    });
    for (i, ip) in again.iter().enumerate() {
        assert_eq!(
            *ip, results[i].1,
            "{}: a repeated ADD got another address",
            owners[i]
        );
    }
    assert_eq!(pool_allocations(&view).await.len(), 1000);

    release_all_and_assert_clean(&view, &daemons, &configs, &owners).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_killed_mid_burst_and_restarted_give_no_duplicates_and_no_leaked_addresses() {
    let _one = ONE_BURST_AT_A_TIME.lock().await;
    let failed_before = FAILED_ADD_ATTEMPTS.load(Ordering::SeqCst);
    let cluster = netattach_testenv::cluster().await;
    let admin = cluster.admin_client();
    let network = network_name("engine-kill");
    let mut daemons = daemons_of(cluster, 10);
    let configs: Vec<IpamConfig> = daemons.iter().map(|d| config(&network, d)).collect();
    let view = PoolView {
        admin,
        namespace: pool_ns(&configs[0]),
        network: network.clone(),
    };
    let owners: Vec<Owner> = (0..1000).map(|i| owner(&network, i)).collect();
    let done = Arc::new(AtomicUsize::new(0));
    let burst_over = AtomicBool::new(false);
    // Kill points: a daemon goes down (SIGKILL) when the burst has completed this many
    // requests, and is restarted right away.
    let kill_points = [(100, 0), (250, 3), (400, 7), (550, 1), (700, 9), (850, 4)];

    let results = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let chaos = s.spawn(|| {
                let mut kills = 0;
                for (at, which) in kill_points {
                    while done.load(Ordering::SeqCst) < at {
                        if burst_over.load(Ordering::SeqCst) {
                            // A request failed (its panic ends the burst short of `at`).
                            return kills;
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    daemons[which].kill();
                    kills += 1;
                    std::thread::sleep(Duration::from_millis(100));
                    daemons[which].spawn();
                    daemons[which].wait_socket();
                }
                kills
            });
            let results = {
                let _over = SetOnDrop(&burst_over);
                burst(owners.len(), |i| {
                    let ip = allocate_retrying(&configs[i % configs.len()], &owners[i]);
                    done.fetch_add(1, Ordering::SeqCst);
                    (owners[i].clone(), ip)
                })
            };
            assert_eq!(chaos.join().expect("chaos thread"), kill_points.len());
            results
        })
    });
    let failed_attempts = FAILED_ADD_ATTEMPTS.load(Ordering::SeqCst) - failed_before;
    assert_no_duplicates(&view, &results, failed_attempts).await;
    // A release frees every entry of its attachment, and its claims: a daemon killed at any
    // point leaves nothing behind.
    release_all_and_assert_clean(&view, &daemons, &configs, &owners).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_restarting_mid_burst_and_a_del_while_it_is_down() {
    let _one = ONE_BURST_AT_A_TIME.lock().await;
    let failed_before = FAILED_ADD_ATTEMPTS.load(Ordering::SeqCst);
    let mut env = netattach_testenv::PrivateTestenv::up(10);
    let admin = env.admin_client().await;
    let network = network_name("engine-apiserver");
    let daemons: Vec<NodeDaemon> = (1..=10)
        .map(|i| {
            let node = format!("node-{i}");
            serving(&node, &env.node_kubeconfig(&node))
        })
        .collect();
    let configs: Vec<IpamConfig> = daemons.iter().map(|d| config(&network, d)).collect();
    let view = PoolView {
        admin,
        namespace: pool_ns(&configs[0]),
        network: network.clone(),
    };
    let owners: Vec<Owner> = (0..300).map(|i| owner(&network, i)).collect();
    let done = AtomicUsize::new(0);
    let burst_over = AtomicBool::new(false);

    // The apiserver goes down after 100 allocations and comes back 2 s later.
    let results = tokio::task::block_in_place(|| {
        let handle = tokio::runtime::Handle::current();
        std::thread::scope(|s| {
            let env = &mut env;
            let done = &done;
            let burst_over = &burst_over;
            let restarter = s.spawn(move || {
                while done.load(Ordering::SeqCst) < 100 {
                    if burst_over.load(Ordering::SeqCst) {
                        // A request failed (its panic ends the burst short of 100).
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                env.stop_apiserver();
                let completed_while_down = done.load(Ordering::SeqCst);
                std::thread::sleep(Duration::from_secs(2));
                handle.block_on(env.start_apiserver());
                Some(completed_while_down)
            });
            let results = {
                let _over = SetOnDrop(burst_over);
                burst(owners.len(), |i| {
                    let ip = allocate_retrying(&configs[i % configs.len()], &owners[i]);
                    done.fetch_add(1, Ordering::SeqCst);
                    (owners[i].clone(), ip)
                })
            };
            let at_stop = restarter
                .join()
                .expect("restarter")
                .expect("100 allocations before the burst ended");
            assert!(
                at_stop < owners.len(),
                "the burst ended before the apiserver stopped"
            );
            results
        })
    });
    let failed_attempts = FAILED_ADD_ATTEMPTS.load(Ordering::SeqCst) - failed_before;
    assert_no_duplicates(&view, &results, failed_attempts).await;
    release_all_and_assert_clean(&view, &daemons, &configs, &owners).await;

    // A DEL while the API server is down: the daemon queues it and the DEL succeeds; the
    // address stays held (never handed out twice) until the server is back and the queue drains.
    let late: Vec<Owner> = (1000..1005).map(|i| owner(&network, i)).collect();
    let cfg = &configs[0];
    let held: Vec<IpAddr> =
        tokio::task::block_in_place(|| late.iter().map(|o| allocate_retrying(cfg, o)).collect());
    env.stop_apiserver();
    tokio::task::block_in_place(|| {
        for o in &late {
            whereabouts::release(cfg, o).unwrap_or_else(|e| panic!("DEL with the API server down: {e}"));
        }
    });
    let queued = std::fs::read_dir(daemons[0].queue_dir())
        .expect("queue dir")
        .count();
    assert_eq!(queued, late.len(), "each DEL is queued durably");
    env.start_apiserver().await;
    assert_eq!(held.len(), late.len());
    let deadline = Instant::now() + Duration::from_secs(90);
    while !pool_allocations(&view).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the release queue was not drained:\n{}",
            daemons[0].log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(daemons[0].queue_dir())
        .expect("queue dir")
        .next()
        .is_some()
    {
        assert!(Instant::now() < deadline, "drained entries were not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(orips(&view).await, Vec::<String>::new());
}
