//! Upstream whereabouts v0.9.2 (`target/tools/bin/whereabouts`, built by `tools/build --only
//! peers`) and netattach's `whereabouts` face on the SAME `IPPool`, against a real apiserver:
//! both with `datastore: kubernetes`, the admin kubeconfig (`kubernetes.kubeconfig`; its context
//! namespace holds the pool, the reservations and upstream's global Lease `whereabouts`), and
//! `enable_overlapping_ranges` at its default (on).
//!
//! * concurrently: 40 + 40 interleaved ADDs with 8 in flight, then every DEL from the side that
//!   made it: no address twice among the results or in the pool, every result recorded in the
//!   pool under its pod, and afterwards an empty pool and no reservations. Once with netattach
//!   writing directly (pool first, as upstream), once through a node daemon, which claims an
//!   address by its reservation first and writes the pool entry after (so the pool is judged
//!   once every result is in it). A failed ADD is followed by the runtime's DEL before it is
//!   retried, as kubelet does;
//! * one after the other: a pool upstream wrote is read and extended by netattach and vice
//!   versa, the lowest free address is what both hand out, neither hands out what the other
//!   holds, ADD is idempotent per pod and interface across the two, and each side's DEL frees
//!   the other's allocation and its reservation;
//! * CHECK through netattach's face accepts an address only a claim (the daemon's reservation,
//!   ahead of its pool entry) holds for the attachment, and refuses it without the claim.
//!
//! Upstream's ADD needs a network namespace in `CNI_NETNS` that is not its own (the CNI skel
//! checks it), so each test creates an empty one (`support::Ns`, deleted on drop); neither
//! plugin touches it. Upstream also needs a whereabouts flat file: `configuration_path` points
//! at one in a temp dir. Every pool has a `network_name` unique to the test, so tests never share
//! a pool; the pool and any reservation left by a failure are deleted when the test ends.
//! Addresses: 198.18.40.0/24 to 198.18.43.0/24.
//!
//! Run: `tools/test-k8s env CARGO_TARGET_DIR=target/ippool cargo test -p netattach --test
//! whereabouts_coexist` (the tools must include the peers: `tools/build --only peers`).

mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Api;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use netattach_ippool::claim::CLAIM_FINALIZER;
use netattach_ippool::{IPPool, KubeIpam, OverlappingRangeIPReservation};
use serde_json::{Value, json};
use support::daemon::NodeDaemon;
use support::{Ns, Output};

/// The interface every attachment uses.
const IFNAME: &str = "net1";
/// The pod namespace in `CNI_ARGS` (the pods need not exist for either plugin).
const POD_NS: &str = "coexist";
/// How many times a failed ADD is retried, as a runtime would.
const ADD_ATTEMPTS: usize = 10;

/// `target/tools/bin` (or `$NETATTACH_TOOLS_BIN`).
fn upstream_whereabouts() -> PathBuf {
    let dir = std::env::var_os("NETATTACH_TOOLS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/bin"));
    let exe = dir.join("whereabouts");
    assert!(
        exe.is_file(),
        "{} is missing: build upstream whereabouts v0.9.2 with `tools/build --only peers` \
         (or run with TEST_K8S_BUILD=all tools/test-k8s ...)",
        exe.display()
    );
    exe
}

/// Which implementation runs a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Upstream,
    Netattach,
}

/// One attachment: its pod, container id and the implementation that ADDs it.
#[derive(Debug, Clone)]
struct Att {
    side: Side,
    pod: String,
    container: String,
}

impl Att {
    fn new(side: Side, pod: &str) -> Att {
        Att {
            side,
            pod: pod.to_string(),
            container: support::container_id(),
        }
    }

    fn podref(&self) -> String {
        format!("{POD_NS}/{}", self.pod)
    }
}

/// The shared world of one test: both executables, one config, one empty netns.
struct World {
    upstream: PathBuf,
    netattach: PathBuf,
    netns: Ns,
    config: Value,
    network: String,
    range: ipnet::IpNet,
    namespace: String,
    _flat_dir: tempfile::TempDir,
}

/// A network name no other test (or test process) uses.
fn unique_network(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl World {
    /// The world of one test; netattach's side goes through the node daemon listening on
    /// `daemon_socket` when there is one.
    fn new(
        admin_kubeconfig: &Path,
        namespace: &str,
        range: &str,
        prefix: &str,
        daemon_socket: Option<&Path>,
    ) -> World {
        support::assert_safe_address(range);
        let flat_dir = tempfile::Builder::new()
            .prefix("netattach-coexist-")
            .tempdir()
            .expect("temp dir");
        // Upstream refuses to run without a flat file; both read the same one.
        let flat = flat_dir.path().join("whereabouts.conf");
        std::fs::write(
            &flat,
            json!({"datastore": "kubernetes",
                   "kubernetes": {"kubeconfig": admin_kubeconfig.display().to_string()}})
            .to_string(),
        )
        .expect("write flat file");
        let network = unique_network(prefix);
        let mut config = json!({
            "cniVersion": "1.0.0",
            "name": "coexist",
            "type": "whereabouts",
            "ipam": {
                "type": "whereabouts",
                "range": range,
                "network_name": network,
                "configuration_path": flat.display().to_string(),
                "kubernetes": {"kubeconfig": admin_kubeconfig.display().to_string()},
            },
        });
        if let Some(socket) = daemon_socket {
            // Upstream ignores keys it does not know.
            config["ipam"]["daemon_socket"] = json!(socket.display().to_string());
        }
        World {
            upstream: upstream_whereabouts(),
            netattach: support::bin_dir().join("whereabouts"),
            netns: Ns::new(),
            config,
            network,
            range: range.parse().expect("range"),
            namespace: namespace.to_string(),
            _flat_dir: flat_dir,
        }
    }

    fn pool_name(&self) -> String {
        netattach_ipam::range::pool_name(Some(&self.network), &self.range)
    }

    /// Runs `command` for `att` with `side`'s executable, in this process's network namespace
    /// (where the loopback apiserver is); `CNI_NETNS` is the test's empty namespace.
    fn exec(&self, side: Side, command: &str, att: &Att) -> Output {
        self.exec_with(side, command, att, &self.config)
    }

    /// [`World::exec`] with `config` on stdin instead of the world's.
    fn exec_with(&self, side: Side, command: &str, att: &Att, config: &Value) -> Output {
        let exe = match side {
            Side::Upstream => &self.upstream,
            Side::Netattach => &self.netattach,
        };
        let mut child = Command::new(exe)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container)
            .env("CNI_NETNS", self.netns.path())
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", support::bin_dir())
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NS};K8S_POD_NAME={}",
                    att.pod
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", exe.display()));
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            let _ = stdin.write_all(config.to_string().as_bytes());
        }
        let out = child.wait_with_output().expect("wait for plugin");
        Output {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// ADD `att` on its own side, retried like a runtime retries a failed sandbox; returns the
    /// address and the number of failed attempts (with the last failure).
    fn add(&self, att: &Att) -> (IpAddr, usize, Option<String>) {
        let mut failures = 0;
        let mut last = None;
        for _ in 0..ADD_ATTEMPTS {
            let out = self.exec(att.side, "ADD", att);
            match out.result() {
                Ok(r) => {
                    let ips = r["ips"].as_array().cloned().unwrap_or_default();
                    assert_eq!(ips.len(), 1, "{:?} ADD of {} gave {r}", att.side, att.pod);
                    let cidr: ipnet::IpNet = ips[0]["address"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("{:?} result without an address: {r}", att.side));
                    assert_eq!(cidr.prefix_len(), self.range.prefix_len(), "{r}");
                    return (cidr.addr(), failures, last);
                }
                Err(e) => {
                    failures += 1;
                    last = Some(format!(
                        "{:?} ADD {}: {e:?}\n{}",
                        att.side,
                        att.pod,
                        tail(&out.stderr)
                    ));
                    // The runtime's DEL after a failed ADD, then the retry.
                    self.del(att.side, att);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        panic!(
            "{:?} ADD of {} failed {ADD_ATTEMPTS} times; last: {}",
            att.side,
            att.pod,
            last.unwrap_or_default()
        );
    }

    /// DEL `att` with `side`'s executable (which may be the other one).
    fn del(&self, side: Side, att: &Att) {
        let out = self.exec(side, "DEL", att);
        if let Err(e) = out.result() {
            panic!("{side:?} DEL of {}: {e:?}\n{}", att.pod, tail(&out.stderr));
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The pool as stored: offset → (id, podref, ifname); empty when the pool does not exist.
async fn pool_allocations(w: &World, client: &kube::Client) -> BTreeMap<u128, (String, String, String)> {
    let api: Api<IPPool> = Api::namespaced(client.clone(), &w.namespace);
    let Some(pool) = api.get_opt(&w.pool_name()).await.expect("get pool") else {
        return BTreeMap::new();
    };
    assert_eq!(pool.spec.range, w.range.to_string());
    pool.spec
        .allocations
        .into_iter()
        .map(|(k, a)| {
            let off: u128 = k.parse().expect("decimal offset");
            (off, (a.id, a.podref, a.ifname))
        })
        .collect()
}

/// The network's reservations (those named `<network>-...`), by the part of the name after
/// that prefix (the address).
async fn network_reservations(
    w: &World,
    client: &kube::Client,
) -> Vec<(String, OverlappingRangeIPReservation)> {
    let api: Api<OverlappingRangeIPReservation> = Api::namespaced(client.clone(), &w.namespace);
    let prefix = format!("{}-", w.network);
    api.list(&ListParams::default())
        .await
        .expect("list reservations")
        .items
        .into_iter()
        .filter_map(|o| {
            let ip = o.metadata.name.as_deref()?.strip_prefix(&prefix)?.to_string();
            Some((ip, o))
        })
        .collect()
}

/// How many of the network's reservations are netattach claims (with its finalizer).
async fn claims(w: &World, client: &kube::Client) -> usize {
    network_reservations(w, client)
        .await
        .iter()
        .filter(|(_, o)| o.finalizers().iter().any(|f| f == CLAIM_FINALIZER))
        .count()
}

/// The network's reservations: address → podref.
async fn reservations(w: &World, client: &kube::Client) -> BTreeMap<String, String> {
    network_reservations(w, client)
        .await
        .into_iter()
        .map(|(ip, o)| (ip, o.spec.podref))
        .collect()
}

fn offset_of(w: &World, ip: IpAddr) -> u128 {
    use netattach_ipam::range::ip_to_u128;
    assert!(w.range.contains(&ip), "{ip} outside {}", w.range);
    ip_to_u128(ip) - ip_to_u128(w.range.network())
}

/// Deletes the test's pool and reservations when dropped (also when the test failed).
struct Cleanup {
    kubeconfig: PathBuf,
    namespace: String,
    pool: String,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let Ok(kc) = kube::config::Kubeconfig::read_from(&self.kubeconfig) else {
                return;
            };
            let Ok(config) =
                kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await
            else {
                return;
            };
            let Ok(client) = kube::Client::try_from(config) else {
                return;
            };
            let pools: Api<IPPool> = Api::namespaced(client.clone(), &self.namespace);
            let _ = pools.delete(&self.pool, &DeleteParams::default()).await;
            let orips: Api<OverlappingRangeIPReservation> = Api::namespaced(client, &self.namespace);
            if let Ok(list) = orips.list(&ListParams::default()).await {
                let prefix = format!("{}-", self.network);
                for o in list.items {
                    if let Some(name) = o.metadata.name.filter(|n| n.starts_with(&prefix)) {
                        // A claim's finalizer first (netattach's daemon sets one).
                        let unfinalize = json!({"metadata": {"finalizers": null}});
                        let _ = orips
                            .patch(&name, &PatchParams::default(), &Patch::Merge(&unfinalize))
                            .await;
                        let _ = orips.delete(&name, &DeleteParams::default()).await;
                    }
                }
            }
        });
    }
}

/// The world, its cleanup guard and an admin client, on a runtime of the caller's.
fn setup(rt: &tokio::runtime::Runtime, range: &str, prefix: &str) -> (World, Cleanup, kube::Client) {
    setup_with(rt, range, prefix, None)
}

/// [`setup`], with netattach's side through the daemon listening on `daemon_socket`.
fn setup_with(
    rt: &tokio::runtime::Runtime,
    range: &str,
    prefix: &str,
    daemon_socket: Option<&Path>,
) -> (World, Cleanup, kube::Client) {
    support::require_root();
    support::sweep_stale_namespaces();
    let cluster = rt.block_on(netattach_testenv::cluster());
    let admin_kc = cluster.admin_kubeconfig();
    // The namespace both implementations use: the admin kubeconfig context's (else kube-system).
    let namespace = rt
        .block_on(KubeIpam::from_kubeconfig(&admin_kc, None))
        .expect("admin kubeconfig")
        .namespace()
        .to_string();
    let w = World::new(&admin_kc, &namespace, range, prefix, daemon_socket);
    let guard = Cleanup {
        kubeconfig: admin_kc,
        namespace,
        pool: w.pool_name(),
        network: w.network.clone(),
    };
    let client = rt.block_on(async { cluster.admin_client() });
    (w, guard, client)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs `jobs` on `workers` threads (a shared queue, so up to `workers` calls are in flight).
fn in_parallel<T: Send + 'static>(
    jobs: Vec<Att>,
    workers: usize,
    f: impl Fn(&Att) -> T + Send + Sync + 'static,
) -> Vec<(Att, T)> {
    let queue = Arc::new(Mutex::new(VecDeque::from(jobs)));
    let f = Arc::new(f);
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let queue = Arc::clone(&queue);
            let f = Arc::clone(&f);
            std::thread::spawn(move || {
                let mut done = Vec::new();
                loop {
                    let Some(job) = queue.lock().expect("queue").pop_front() else {
                        return done;
                    };
                    let out = f(&job);
                    done.push((job, out));
                }
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("worker panicked"))
        .collect()
}

#[test]
fn concurrent_adds_from_upstream_and_netattach_never_duplicate_and_dels_empty_the_pool() {
    let rt = runtime();
    let (w, _cleanup, client) = setup(&rt, "198.18.40.0/24", "coexist");
    concurrent_adds_and_dels(&rt, w, &client, false);
}

#[test]
fn concurrent_adds_from_upstream_and_netattachs_daemon_claiming_first_never_duplicate() {
    let rt = runtime();
    let admin_kc = rt.block_on(netattach_testenv::cluster()).admin_kubeconfig();
    let mut daemon = NodeDaemon::start("node-1", &admin_kc, Duration::from_secs(60));
    daemon.wait_socket();
    let (w, _cleanup, client) = setup_with(&rt, "198.18.42.0/24", "coexist-daemon", Some(&daemon.socket()));
    concurrent_adds_and_dels(&rt, w, &client, true);
}

/// 40 + 40 interleaved ADDs (8 in flight), then every DEL from the side that made it.
/// `claiming`: netattach's side goes through a daemon, whose reservations are claims once its
/// watch has the pool (the first ones, before that, are pool-first).
fn concurrent_adds_and_dels(rt: &tokio::runtime::Runtime, w: World, client: &kube::Client, claiming: bool) {
    const PER_SIDE: usize = 40;
    const IN_FLIGHT: usize = 8;
    let w = Arc::new(w);

    // Interleaved: upstream, netattach, upstream, ...
    let jobs: Vec<Att> = (0..PER_SIDE)
        .flat_map(|i| {
            [
                Att::new(Side::Upstream, &format!("up-{i}")),
                Att::new(Side::Netattach, &format!("na-{i}")),
            ]
        })
        .collect();
    let world = Arc::clone(&w);
    let results = in_parallel(jobs, IN_FLIGHT, move |att| world.add(att));

    // Failed attempts (each retried): report them; netattach's own ADD must never fail.
    let mut failed: BTreeMap<Side, usize> = BTreeMap::new();
    for (att, (_, failures, last)) in &results {
        if *failures > 0 {
            *failed.entry(att.side).or_default() += failures;
            eprintln!(
                "note: {failures} failed attempt(s) before success; last: {}",
                last.as_deref().unwrap_or("")
            );
        }
    }
    eprintln!("failed ADD attempts (retried): {failed:?}");
    assert_eq!(
        failed.get(&Side::Netattach),
        None,
        "netattach's ADD failed under contention with upstream"
    );

    // No address twice among the results.
    let mut by_ip: BTreeMap<IpAddr, &Att> = BTreeMap::new();
    for (att, (ip, _, _)) in &results {
        if let Some(other) = by_ip.insert(*ip, att) {
            panic!(
                "{ip} handed out twice: to {:?} {} and {:?} {}",
                other.side, other.pod, att.side, att.pod
            );
        }
    }
    assert_eq!(by_ip.len(), 2 * PER_SIDE);

    // The pool holds exactly these, each under the pod that got it, once (a claim's entry
    // follows its answer: judged once every address is in, or after a minute).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut pool = rt.block_on(pool_allocations(&w, client));
    while by_ip.keys().any(|ip| !pool.contains_key(&offset_of(&w, *ip)))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
        pool = rt.block_on(pool_allocations(&w, client));
    }
    assert_eq!(pool.len(), 2 * PER_SIDE, "pool: {pool:?}");
    for (ip, att) in &by_ip {
        let (id, podref, ifname) = pool
            .get(&offset_of(&w, *ip))
            .unwrap_or_else(|| panic!("{ip} of {:?} {} is not in the pool", att.side, att.pod));
        assert_eq!(
            (podref.as_str(), ifname.as_str()),
            (att.podref().as_str(), IFNAME),
            "{ip}"
        );
        assert_eq!(id, &att.container, "{ip}");
    }
    // Every address has its reservation, naming its holder.
    let orips = rt.block_on(reservations(&w, client));
    for (ip, att) in &by_ip {
        assert_eq!(
            orips.get(&ip.to_string()),
            Some(&att.podref()),
            "reservation of {ip}"
        );
    }
    assert_eq!(orips.len(), 2 * PER_SIDE, "{orips:?}");
    let claims = rt.block_on(claims(&w, client));
    if claiming {
        // Those ADDed before the daemon's watch had the pool went pool-first.
        assert!(
            claims >= PER_SIDE / 2,
            "only {claims} of {PER_SIDE} netattach reservations are claims"
        );
    } else {
        assert_eq!(claims, 0, "pool-first netattach made claims");
    }

    // Every DEL from the side that made the allocation, interleaved and concurrent.
    let atts: Vec<Att> = results.into_iter().map(|(a, _)| a).collect();
    let world = Arc::clone(&w);
    in_parallel(atts, IN_FLIGHT, move |att| world.del(att.side, att));
    let pool = rt.block_on(pool_allocations(&w, client));
    assert!(pool.is_empty(), "left in the pool: {pool:?}");
    let orips = rt.block_on(reservations(&w, client));
    assert!(orips.is_empty(), "reservations left: {orips:?}");
}

#[test]
fn each_reads_extends_and_frees_what_the_other_wrote() {
    let rt = runtime();
    let (w, _cleanup, client) = setup(&rt, "198.18.41.0/24", "crossover");
    let ip = |last: u8| IpAddr::from([198, 18, 41, last]);

    // Upstream creates the pool.
    let u1 = Att::new(Side::Upstream, "u1");
    let u2 = Att::new(Side::Upstream, "u2");
    assert_eq!(w.add(&u1).0, ip(1));
    assert_eq!(w.add(&u2).0, ip(2));
    // netattach reads upstream's pool and extends it with the lowest free address.
    let n1 = Att::new(Side::Netattach, "n1");
    assert_eq!(w.add(&n1).0, ip(3));
    // Upstream frees .1; netattach hands it out again.
    w.del(Side::Upstream, &u1);
    let n2 = Att::new(Side::Netattach, "n2");
    assert_eq!(w.add(&n2).0, ip(1));
    // Upstream sees netattach's .1 and .3 and does not hand them out.
    let u3 = Att::new(Side::Upstream, "u3");
    assert_eq!(w.add(&u3).0, ip(4));

    let expect = |atts: &[(&Att, u8)]| -> BTreeMap<u128, (String, String, String)> {
        atts.iter()
            .map(|(a, last)| {
                (
                    u128::from(*last),
                    (a.container.clone(), a.podref(), IFNAME.to_string()),
                )
            })
            .collect()
    };
    assert_eq!(
        rt.block_on(pool_allocations(&w, &client)),
        expect(&[(&n2, 1), (&u2, 2), (&n1, 3), (&u3, 4)]),
        "the pool in whereabouts' format, both sides' entries alike"
    );
    let orips = rt.block_on(reservations(&w, &client));
    let want: BTreeMap<String, String> = [(1, &n2), (2, &u2), (3, &n1), (4, &u3)]
        .into_iter()
        .map(|(last, a)| (ip(last).to_string(), a.podref()))
        .collect();
    assert_eq!(orips, want, "one reservation per address, naming its pod");

    // ADD is idempotent per pod and interface across the two: a pod restarted (new sandbox)
    // under the other implementation keeps its address.
    let mut n2_again = Att::new(Side::Upstream, "n2");
    n2_again.container = support::container_id();
    assert_eq!(
        w.add(&n2_again).0,
        ip(1),
        "upstream returns netattach's allocation"
    );
    let mut u3_again = Att::new(Side::Netattach, "u3");
    u3_again.container = support::container_id();
    assert_eq!(
        w.add(&u3_again).0,
        ip(4),
        "netattach returns upstream's allocation"
    );
    assert_eq!(
        rt.block_on(pool_allocations(&w, &client)),
        expect(&[(&n2_again, 1), (&u2, 2), (&n1, 3), (&u3_again, 4)]),
        "the container ids follow the new sandboxes"
    );

    // Each side's DEL frees the other's allocation and its reservation.
    w.del(Side::Netattach, &u2);
    w.del(Side::Upstream, &n1);
    assert_eq!(
        rt.block_on(pool_allocations(&w, &client)),
        expect(&[(&n2_again, 1), (&u3_again, 4)])
    );
    let left: BTreeSet<String> = rt.block_on(reservations(&w, &client)).into_keys().collect();
    assert_eq!(left, BTreeSet::from([ip(1).to_string(), ip(4).to_string()]));

    w.del(Side::Netattach, &n2_again);
    w.del(Side::Upstream, &u3_again);
    assert!(rt.block_on(pool_allocations(&w, &client)).is_empty());
    assert!(rt.block_on(reservations(&w, &client)).is_empty());
}

/// CNI CHECK through netattach's face accepts an address that only its reservation holds (a
/// node daemon's claim whose pool entry is still on its way), and refuses it once no
/// reservation names the attachment.
#[test]
fn check_accepts_an_address_its_claim_holds_before_its_pool_entry() {
    use kube::api::PostParams;
    use netattach_ippool::OverlappingRangeIPReservationSpec;
    use netattach_ippool::crd::orip_name;

    let rt = runtime();
    let (w, _cleanup, client) = setup(&rt, "198.18.43.0/24", "coexist-check");
    // A first allocation creates the pool, so CHECK reads one.
    w.add(&Att::new(Side::Netattach, "other"));
    let att = Att::new(Side::Netattach, "claimed");
    let ip: IpAddr = "198.18.43.77".parse().expect("ip");
    let name = orip_name(ip, Some(&w.network));
    let mut claim = OverlappingRangeIPReservation::new(
        &name,
        OverlappingRangeIPReservationSpec {
            containerid: att.container.clone(),
            podref: att.podref(),
            ifname: IFNAME.to_string(),
        },
    );
    claim.metadata.finalizers = Some(vec![CLAIM_FINALIZER.to_string()]);
    let orips: Api<OverlappingRangeIPReservation> = Api::namespaced(client.clone(), &w.namespace);
    rt.block_on(orips.create(&PostParams::default(), &claim))
        .expect("the claim, as the daemon creates it");
    let mut conf = w.config.clone();
    conf["prevResult"] = json!({"cniVersion": "1.0.0", "ips": [{"address": "198.18.43.77/24"}]});

    let out = w.exec_with(Side::Netattach, "CHECK", &att, &conf);
    assert!(
        out.success(),
        "CHECK of a claimed address: {:?}\n{}",
        out.result(),
        tail(&out.stderr)
    );
    assert!(
        !rt.block_on(pool_allocations(&w, &client))
            .contains_key(&offset_of(&w, ip)),
        "the address is in no pool entry"
    );

    // Without the claim, the attachment holds nothing.
    let unfinalize = json!({"metadata": {"finalizers": null}});
    rt.block_on(orips.patch(&name, &PatchParams::default(), &Patch::Merge(&unfinalize)))
        .expect("remove the finalizer");
    rt.block_on(orips.delete(&name, &DeleteParams::default()))
        .expect("delete the claim");
    let out = w.exec_with(Side::Netattach, "CHECK", &att, &conf);
    let err = out.result().expect_err("CHECK without the claim");
    assert_eq!(err.code, netattach_cni::error::code::CHECK_FAILED, "{err:?}");
}
