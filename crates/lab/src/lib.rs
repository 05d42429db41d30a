//! netattach lab: a whole cluster on one machine, in network namespaces, to prove that the
//! storage network works before anything depends on it.
//!
//! `netattach lab` builds a switch namespace (`nalab-sw`) with two LANs (Linux bridges: the
//! storage LAN and a cluster-network LAN), N nodes (`nalab-nN`, each with a storage NIC
//! `storage0` and a cluster NIC `cluster0`) and M pods per node (`nalab-nN-pM`); installs the
//! netattach binary as the `netattach`, `macvlan` and `whereabouts` plugins into a temporary CNI
//! bin dir; writes what a K3s cluster running Longhorn would hold (the `longhorn-system/storage`
//! NAD, each pod with Longhorn's `k8s.v1.cni.cncf.io/networks` annotation, each node's cluster
//! network conflist); attaches every pod by executing the `netattach` meta-plugin exactly as
//! containerd would (`eth0` from the cluster network, `lhnet1` from the NAD); validates
//! interfaces, addresses, the published network-status as Longhorn reads it, and full-MTU
//! reachability over storage; detaches everything; and proves nothing leaked. The last line it
//! prints starts with `PASS` or `FAIL`.
//!
//! With `--kubeconfig FILE` the lab runs its nodes against a real API server: the namespace,
//! the NAD and one Pod per lab pod (bound to its lab node) are API objects ([`api`]), each lab
//! node has its own `netattach daemon` ([`daemons`]), the meta-plugin runs in Kubernetes mode
//! (asking its node's daemon), and network-status is read back from the pod objects. What the
//! lab created in the API server is deleted afterwards, and the daemons are stopped.
//!
//! Modules: [`config`] (input validation and naming), [`topology`] (namespaces, switch,
//! nodes, pods), [`attach`] (the runtime side: ADD/DEL), [`validate`] (the checks),
//! [`report`] (progress, table, verdict), [`cleanup`] (lab directory, signals, `lab down`),
//! [`api`] and [`daemons`] (`--kubeconfig`), [`error`].
//!
//! Network safety: everything is created inside namespaces the lab creates; no pre-existing
//! interface is touched and no packet leaves the lab's namespaces. Everything is deleted
//! afterwards, on success, on failure (Drop guards), on a panic, and on SIGINT/SIGTERM (the run
//! stops at the next step and tears down). `--keep` leaves it for inspection; `netattach lab
//! down` removes it.

pub mod api;
pub mod attach;
pub mod cleanup;
pub mod config;
pub mod daemons;
pub mod error;
pub mod report;
pub mod topology;
pub mod validate;

use std::collections::BTreeMap;
use std::time::Instant;

use tracing::warn;

pub use crate::config::LabConfig;
pub use crate::error::LabError;

use crate::api::ApiLab;
use crate::attach::{Attachment, Runtime};
use crate::cleanup::{LAB_DIR, LabDir, State, check_interrupt};
use crate::config::{
    CLUSTER_CONFLIST, CLUSTER_IFNAME, CLUSTER_NETWORK_NAME, CLUSTER_NIC, CLUSTER_RANGE, NODE_NIC, PREFIX,
    Plan, STORAGE_IFNAME, STORAGE_SETTING, SameNode,
};
use crate::daemons::Daemons;
use crate::report::{Row, step};
use crate::topology::Topology;
use crate::validate::Reach;

const STEPS: usize = 7;

/// Remove a lab left by `--keep` or by a crash: every `nalab-*` namespace and the lab
/// directory. Idempotent.
pub fn down() -> Result<(), LabError> {
    cleanup::down()
}

fn require_root() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 { Ok(()) } else { Err(LabError::NotRoot) }
}

fn settings(config: &LabConfig) -> String {
    format!(
        "--nodes {} --pods-per-node {} --range {} --mode {} --mtu {}{}",
        config.nodes,
        config.pods_per_node,
        config.range,
        config.mode,
        config.mtu,
        if config.keep { " --keep" } else { "" }
    ) + &config
        .kubeconfig
        .as_ref()
        .map(|k| format!(" --kubeconfig {}", k.display()))
        .unwrap_or_default()
}

/// The `--kubeconfig` side of a run: the API client (and what it created) and the node
/// daemons. Dropping it removes both (a panic must not leave them).
#[derive(Debug, Default)]
struct Cluster {
    api: Option<ApiLab>,
    daemons: Daemons,
}

impl Cluster {
    /// Delete the API objects the lab created, then stop the daemons; returns the failures.
    fn teardown(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        if let Some(api) = &mut self.api {
            failures.extend(api.remove_created());
        }
        failures.extend(self.daemons.stop());
        failures
    }

    /// Record what exists now in the state file (for `lab down` after a crash or `--keep`).
    fn record(&self, dir: &LabDir, state: &mut State) -> Result<(), LabError> {
        state.api = self.api.as_ref().map(|a| a.created.clone());
        state.daemons = self.daemons.records();
        dir.write_state(state)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for f in self.teardown() {
            warn!("{f}");
        }
    }
}

/// Everything the steps found, for the table and the verdict.
#[derive(Debug, Default)]
struct Findings {
    attachments: Vec<Attachment>,
    reach: Vec<Reach>,
    problems: Vec<String>,
    notes: Vec<String>,
    detached: bool,
}

/// Build, attach, validate, detach and verify; print progress, the table and the verdict.
/// Returns whether the lab passed. Errors mean the lab could not run (bad input, not root, a
/// lab already present, an interrupt); whatever was built is removed before returning.
pub fn run(config: &LabConfig) -> Result<bool, LabError> {
    let plan = Plan::from_config(config)?;
    require_root()?;
    cleanup::install_signal_handlers();
    let started = Instant::now();
    // Check the API server before building anything.
    let mut cluster = Cluster {
        api: plan.kubeconfig.as_deref().map(ApiLab::connect).transpose()?,
        daemons: Daemons::default(),
    };
    let dir = LabDir::create()?;
    let mut state = State {
        pid: std::process::id(),
        phase: "running".into(),
        settings: settings(config),
        namespaces: plan.namespaces(),
        dirs: vec![dir.root().to_path_buf()],
        ..State::default()
    };
    dir.write_state(&state)?;
    if let Some(api) = &cluster.api {
        println!(
            "API server {}: {} netattach daemon(s), one per lab node (logs in {}/<node>/daemon.log)",
            api.server(),
            plan.nodes.len(),
            dir.daemons_dir().display()
        );
    }

    let mut topo = Topology::default();
    let outcome = run_steps(&plan, &dir, &mut topo, &mut cluster, &mut state);
    let mut findings = match outcome {
        Ok(f) => f,
        Err(e) => {
            // Tear down before reporting; the Drop guards would too, but quietly.
            if matches!(e, LabError::Interrupted { .. }) {
                println!("interrupted: tearing the lab down");
            }
            for f in cluster.teardown() {
                warn!("{f}");
            }
            for f in topo.teardown() {
                warn!("{f}");
            }
            if let Err(err) = dir.remove() {
                warn!("{err}");
            }
            return Err(e);
        }
    };

    let kept = plan.keep && !findings.detached;
    if kept {
        topo.keep();
        state.phase = "kept".into();
        cluster.record(&dir, &mut state)?;
        // Left for `lab down`, which finds them in the state file.
        std::mem::take(&mut cluster.daemons).keep();
        cluster.api = None;
        dir.keep();
    } else {
        findings.problems.extend(cluster.teardown());
        findings.problems.extend(topo.teardown());
        if let Err(e) = dir.remove() {
            findings.problems.push(e.to_string());
        }
        let left: Vec<String> = netattach_netdev::list_named_netns()
            .map_err(LabError::netdev("listing /run/netns"))?
            .into_iter()
            .filter(|n| n.starts_with(PREFIX))
            .collect();
        if !left.is_empty() {
            findings
                .problems
                .push(format!("namespaces left after teardown: {}", left.join(", ")));
        }
    }

    print_results(&plan, &findings, kept, started);
    Ok(findings.problems.is_empty())
}

fn run_steps(
    plan: &Plan,
    dir: &LabDir,
    topo: &mut Topology,
    cluster: &mut Cluster,
    state: &mut State,
) -> Result<Findings, LabError> {
    let mut f = Findings::default();
    let n_nodes = plan.nodes.len();
    let n_pods = plan.pods.len();

    // 1. The LANs.
    let s = step(
        1,
        STEPS,
        &format!(
            "building the LANs: switch + {n_nodes} node(s) with storage NIC {NODE_NIC} (MTU {}) and cluster NIC {CLUSTER_NIC} + {n_pods} pod namespace(s)",
            plan.mtu
        ),
    );
    let built = topo.build_lan(plan).and_then(|()| topo.build_pods(plan));
    match &built {
        Ok(()) if topo.hairpin => s.done("hairpin on the storage switch ports (vepa)"),
        Ok(()) => s.done(""),
        Err(LabError::Interrupted { .. }) => drop(s),
        Err(e) => s.failed(&e.to_string()),
    }
    built?;
    check_interrupt()?;

    // 2. The plugins and what the cluster would hold.
    let bin_dir = dir.bin_dir();
    let holder = match &cluster.api {
        Some(api) => format!(
            "creating in {}: NAD {STORAGE_SETTING}, {n_pods} pod(s) with Longhorn's annotation; starting {n_nodes} netattach daemon(s); writing {n_nodes} x {CLUSTER_CONFLIST}",
            api.server()
        ),
        None => format!(
            "writing NAD {STORAGE_SETTING}, {n_pods} pod(s) with Longhorn's annotation, {n_nodes} x {CLUSTER_CONFLIST}"
        ),
    };
    let s = step(
        2,
        STEPS,
        &format!(
            "installing {} as netattach + macvlan + whereabouts into {}; {holder}",
            plan.binary.display(),
            bin_dir.display()
        ),
    );
    let installed = netattach_plugins::install::install(&plan.binary, &bin_dir, false)
        .map_err(LabError::from)
        .and_then(|_| Runtime::new(bin_dir.clone(), dir.ipam_dir(), dir.local_dir(), dir.nodes_dir()))
        .and_then(|r| match cluster.api.is_some() {
            true => start_cluster(plan, dir, topo, cluster, state).map(|sockets| r.with_daemons(sockets)),
            false => Ok(r),
        })
        .and_then(|r| r.prepare(plan, topo).map(|()| r));
    let runtime = match installed {
        Ok(r) if r.kubernetes_mode() => {
            s.done(&format!("{} daemon(s) ready", cluster.daemons.len()));
            r
        }
        Ok(r) => {
            s.done("");
            r
        }
        Err(e) => {
            if matches!(e, LabError::Interrupted { .. }) {
                drop(s);
            } else {
                s.failed(&e.to_string());
            }
            return Err(e);
        }
    };
    check_interrupt()?;

    // 3. ADD.
    let s = step(
        3,
        STEPS,
        &format!(
            "attaching {n_pods} pod(s): CNI ADD netattach -> {CLUSTER_IFNAME} {CLUSTER_NETWORK_NAME} ({CLUSTER_RANGE}), {STORAGE_IFNAME} {STORAGE_SETTING} (macvlan {} on {NODE_NIC}, whereabouts {})",
            plan.mode, plan.range_text
        ),
    );
    for i in 0..topo.pods.len() {
        check_interrupt()?;
        let att = runtime.add(topo, i)?;
        if let (Err(e), Some(pod)) = (&att.outcome, topo.pods.get(i)) {
            f.problems
                .push(format!("{}: CNI ADD failed: {e}", pod.plan.netns));
        }
        f.attachments.push(att);
    }
    let ok = f.attachments.iter().filter(|a| a.outcome.is_ok()).count();
    if ok == n_pods {
        s.done(&format!("{ok}/{n_pods} attached"));
    } else {
        s.failed(&format!("{ok}/{n_pods} attached"));
    }

    // 4. Interfaces and addresses.
    let s = step(
        4,
        STEPS,
        &format!(
            "checking interfaces ({CLUSTER_IFNAME}: up, macvlan bridge; {STORAGE_IFNAME}: up, macvlan {}, MTU {}) and addresses",
            plan.mode, plan.mtu
        ),
    );
    let mut found = validate::check_interfaces(plan, topo, &f.attachments)?;
    found.extend(validate::check_addresses(plan, topo, &f.attachments));
    if found.is_empty() {
        s.done(&format!(
            "{} interface(s) ok, {ok} unique address(es) in {CLUSTER_RANGE} and {ok} in {}",
            2 * ok,
            plan.range_text
        ));
    } else {
        s.failed(&format!("{} problem(s)", found.len()));
    }
    f.problems.extend(found);
    check_interrupt()?;

    // 5. network-status, as Longhorn reads it.
    let from = match &cluster.api {
        Some(api) => format!(", from the pod objects in {}", api.server()),
        None => String::new(),
    };
    let s = step(
        5,
        STEPS,
        &format!(
            "reading network-status as Longhorn does (entry `{STORAGE_SETTING}`, ips string-sorted, first){from}"
        ),
    );
    if let Some(api) = &cluster.api {
        for att in f.attachments.iter_mut().filter(|a| a.outcome.is_ok()) {
            if let Some(pod) = topo.pods.get(att.pod) {
                att.status = api.network_status(&pod.plan.netns);
            }
        }
    }
    let found = validate::check_status(topo, &f.attachments);
    if found.is_empty() {
        s.done(&format!(
            "{ok}/{n_pods}: 2 entries, default only on {CLUSTER_NETWORK_NAME}, Longhorn's storage IP = {STORAGE_IFNAME}"
        ));
    } else {
        s.failed(&format!("{} problem(s)", found.len()));
    }
    f.problems.extend(found);

    // 6. Reachability.
    let cross_pairs: usize = plan
        .pods
        .iter()
        .map(|p| plan.pods.iter().filter(|q| q.node != p.node).count())
        .sum();
    let same_pairs = n_pods * (n_pods / n_nodes).saturating_sub(1);
    let mut what = format!(
        "pinging the full mesh over {STORAGE_IFNAME}: {cross_pairs} cross-node pair(s) at {}B and {}B with DF",
        validate::SMALL_PAYLOAD,
        plan.full_payload()
    );
    if same_pairs > 0 {
        what.push_str(&format!(
            ", {same_pairs} same-node pair(s) {}",
            match plan.same_node_expectation() {
                SameNode::Isolated => "expected isolated (private)",
                SameNode::ReachViaHairpin => "via the switch (vepa hairpin)",
                SameNode::Reach => "direct (bridge)",
            }
        ));
    }
    let s = step(6, STEPS, &what);
    let (reach, found) = validate::ping_mesh(plan, topo, &f.attachments)?;
    if found.is_empty() {
        s.done("");
    } else {
        s.failed(&format!("{} problem(s)", found.len()));
    }
    f.reach = reach;
    f.problems.extend(found);
    if n_nodes < 2 {
        f.notes.push(
            "only 1 node: traffic between nodes was not tested (cross-node ping needs --nodes 2 or more)"
                .into(),
        );
    }
    check_interrupt()?;

    // 7. DEL and leaks.
    if plan.keep {
        let s = step(7, STEPS, "detaching");
        s.done("skipped: --keep leaves the pods attached");
        return Ok(f);
    }
    let s = step(
        7,
        STEPS,
        "detaching (CNI DEL netattach, reverse order) and checking for leaks",
    );
    let mut del_failed = 0;
    for att in f.attachments.iter().rev() {
        if let (Err(e), Some(pod)) = (runtime.del(topo, att)?, topo.pods.get(att.pod)) {
            del_failed += 1;
            f.problems
                .push(format!("{}: CNI DEL failed: {e}", pod.plan.netns));
        }
    }
    let mut leaks = validate::check_leaks(plan, topo, &runtime)?;
    let mut removed = String::new();
    if cluster.api.is_some() {
        let daemons = cluster.daemons.len();
        let failures = cluster.teardown();
        state.api = cluster.api.as_ref().map(|a| a.created.clone());
        state.daemons = cluster.daemons.records();
        dir.write_state(state)?;
        if failures.is_empty() {
            removed = format!(
                "; {n_pods} pod(s) and what else the lab created deleted from the API server, {daemons} daemon(s) stopped"
            );
        }
        leaks.extend(failures);
    }
    if del_failed == 0 && leaks.is_empty() {
        s.done(&format!(
            "no link left in any pod, 0 allocations in both pools ({CLUSTER_RANGE}, {}), no attachment record left{removed}",
            plan.range_text
        ));
    } else {
        s.failed(&format!("{del_failed} DEL failure(s), {} leak(s)", leaks.len()));
    }
    f.problems.extend(leaks);
    f.detached = true;
    Ok(f)
}

/// `--kubeconfig`: create the API objects, start one daemon per lab node and wait for them;
/// returns each node's daemon socket. Pods exist before the daemons start, so a ready daemon
/// (caches listed) already knows them.
fn start_cluster(
    plan: &Plan,
    dir: &LabDir,
    topo: &mut Topology,
    cluster: &mut Cluster,
    state: &mut State,
) -> Result<BTreeMap<String, std::path::PathBuf>, LabError> {
    let Some(api) = cluster.api.as_mut() else {
        return Ok(BTreeMap::new());
    };
    let nad_config =
        serde_json::to_string_pretty(&attach::network_config(plan, &dir.ipam_dir())).map_err(|e| {
            LabError::State {
                path: dir.root().to_path_buf(),
                problem: format!("cannot serialise the storage NAD config: {e}"),
            }
        })?;
    let nodes: Vec<String> = plan.nodes.iter().map(|n| n.netns.clone()).collect();
    let made = api
        .ensure_namespace()
        .and_then(|()| api.ensure_nodes(&nodes))
        .and_then(|()| api.apply_nad(&nad_config));
    cluster.record(dir, state)?;
    made?;
    let Some(api) = cluster.api.as_mut() else {
        return Ok(BTreeMap::new());
    };
    let mut made = Ok(());
    for pod in &mut topo.pods {
        check_interrupt()?;
        let node = plan
            .nodes
            .get(pod.plan.node)
            .map(|n| n.netns.clone())
            .unwrap_or_default();
        match api.create_pod(&pod.plan.netns, &node) {
            Ok(uid) => pod.uid = uid,
            Err(e) => {
                made = Err(e);
                break;
            }
        }
    }
    cluster.record(dir, state)?;
    made?;
    let kubeconfig = plan.kubeconfig.clone().unwrap_or_default();
    let mut started = Ok(());
    for node in &nodes {
        started = cluster
            .daemons
            .start(&plan.binary, &kubeconfig, node, &dir.daemons_dir());
        if started.is_err() {
            break;
        }
    }
    cluster.record(dir, state)?;
    started?;
    cluster.daemons.wait_ready()?;
    Ok(nodes
        .iter()
        .filter_map(|n| cluster.daemons.socket(n).map(|s| (n.clone(), s.to_path_buf())))
        .collect())
}

fn print_results(plan: &Plan, f: &Findings, kept: bool, started: Instant) {
    let rows: Vec<Row> = f
        .attachments
        .iter()
        .filter_map(|att| {
            let pod = plan.pods.get(att.pod)?;
            let node = plan.nodes.get(pod.node)?;
            let reach = f.reach.get(att.pod).cloned().unwrap_or_default();
            let dash = || "-".to_string();
            Some(Row {
                pod: pod.netns.clone(),
                node: node.netns.clone(),
                eth0: match &att.outcome {
                    Ok(_) => att.cluster_address().map(|a| a.to_string()).unwrap_or_else(dash),
                    Err(e) => format!("ADD failed (code {})", e.code),
                },
                lhnet1: att.storage.map(|a| a.to_string()).unwrap_or_else(dash),
                longhorn: validate::describe_longhorn(att),
                reachability: if att.outcome.is_ok() {
                    validate::describe(plan, &reach)
                } else {
                    "-".into()
                },
            })
        })
        .collect();
    println!();
    print!("{}", report::render_table(&rows));
    println!();
    for note in &f.notes {
        println!("note: {note}");
    }
    for p in &f.problems {
        println!("problem: {p}");
    }
    if kept {
        let first = plan
            .pods
            .first()
            .map(|p| p.netns.as_str())
            .unwrap_or("nalab-n1-p1");
        println!("the lab is still running (--keep); state in {LAB_DIR}/state.json");
        println!("  enter a pod:    nsenter --net=/run/netns/{first} ip addr");
        if plan.kubeconfig.is_some() {
            println!(
                "  network-status: annotation k8s.v1.cni.cncf.io/network-status of pod longhorn-system/{first} in the API server"
            );
            println!(
                "  node daemons:   still running (pids in {LAB_DIR}/state.json; logs in {LAB_DIR}/daemons/<node>/daemon.log)"
            );
        } else {
            println!("  network-status: {LAB_DIR}/k8s/pods/longhorn-system/{first}.status.json");
        }
        println!("  remove the lab: netattach lab down");
    }

    let n_pods = plan.pods.len();
    let cross_ok: usize = f.reach.iter().map(|r| r.cross_ok).sum();
    let cross_total: usize = f.reach.iter().map(|r| r.cross_total).sum();
    let same_ok: usize = f.reach.iter().map(|r| r.same_ok + r.same_isolated).sum();
    let same_total: usize = f.reach.iter().map(|r| r.same_total).sum();
    let longhorn_ok = f
        .attachments
        .iter()
        .filter(|a| validate::describe_longhorn(a).ends_with(" ok"))
        .count();
    let mut summary = format!(
        "{n_pods} pod(s) on {} node(s) attached by the netattach meta-plugin: {CLUSTER_IFNAME} on {CLUSTER_NETWORK_NAME}, {STORAGE_IFNAME} macvlan {} with unique addresses in {}, Longhorn reads {STORAGE_IFNAME} from network-status {longhorn_ok}/{n_pods}",
        plan.nodes.len(),
        plan.mode,
        plan.range_text
    );
    if cross_total > 0 {
        summary.push_str(&format!(
            ", {cross_ok}/{cross_total} cross-node paths ok at full MTU ({}B DF)",
            plan.full_payload()
        ));
    }
    if same_total > 0 {
        let how = if plan.same_node_expectation() == SameNode::Isolated {
            "isolated as expected"
        } else {
            "ok"
        };
        summary.push_str(&format!(", same-node {same_ok}/{same_total} {how}"));
    }
    if kept {
        summary.push_str(", lab kept");
    } else {
        summary.push_str(", detached with nothing leaked");
    }
    summary.push_str(&format!(" ({})", report::format_duration(started.elapsed())));
    println!("{}", report::verdict(&f.problems, &summary));
}
