//! `pod-bench`: pod ADD+DEL through a meta-plugin, netattach (shim + node daemon) against
//! upstream Multus thin (`multus` v4.3.0), on one `tools/testenv` control plane, interleaved.
//! Both run the same delegates (netattach's `macvlan` + `whereabouts` with the local store) for
//! the same NADs, with 1 and with 3 NADs per pod. It reports ADD/DEL latency, the API requests
//! each system makes per pod (from the apiserver audit log), and the node daemon's RSS idle
//! and during a burst of concurrent ADDs. Needs root. See `bench/README.md`.
//!
//! Network safety: every link lives in namespaces this program creates (`npb-<pid>-<n>`);
//! addresses come only from 198.18.0.0/15; no pre-existing interface is touched. The apiserver
//! listens on the host's loopback; plugins run inside the node namespace, so a small TCP relay
//! (listening on 127.0.0.1:<apiserver port> *inside the node namespace*) carries their API
//! traffic to it. Both systems' API traffic (Multus' and the daemon's) goes through it.
//! Namespaces, the daemon, temp dirs and the Kubernetes objects (or the whole testenv instance
//! when this program started it) are removed on normal exit, on error and on Ctrl-C.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use netattach_netdev::Handle;
use serde_json::{Value, json};

// Shared with the other benches; not every helper is used here.
#[allow(dead_code)]
#[path = "../common.rs"]
mod common;

use common::{Error, INTERRUPTED, Ns, install_faces, percentile, require_file, sweep_stale};

// Shared with the other benches; not every helper is used here.
#[allow(dead_code)]
#[path = "../testenv.rs"]
mod testenv;

use testenv::{ApiRequest, Kubectl, Testenv, now_us, read_audit, repo_root};

/// The Kubernetes namespace of the bench's pods and NADs.
const NS: &str = "pod-bench";
/// The simulated node (its identity's kubeconfig comes from testenv).
const NODE: &str = "node-1";
/// Masters in the node namespace: cluster network and storage network.
const CLUSTER_MASTER: &str = "clu0";
const STORAGE_MASTER: &str = "stor0";
/// The cluster network (eth0) of every pod, for both systems.
const CLUSTER_RANGE: &str = "198.19.0.0/24";
/// The three storage NADs.
const NADS: [(&str, &str); 3] = [
    ("stor-a", "198.18.20.0/24"),
    ("stor-b", "198.18.21.0/24"),
    ("stor-c", "198.18.22.0/24"),
];
/// Bench pods get the networks annotation with this many NADs.
const CONFIGS: [usize; 2] = [1, 3];
const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> Result<(), Error> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

struct Opts {
    netattach: PathBuf,
    multus: PathBuf,
    tools_bin: PathBuf,
    iterations: usize,
    warmup: usize,
    pods: usize,
    burst: usize,
}

fn usage() -> &'static str {
    "usage: pod-bench [--netattach PATH] [--multus PATH] [--tools-bin DIR] [--iterations N]\n\
     \x20                [--warmup N] [--pods N] [--burst N]\n\
     \n\
     Pod ADD+DEL through netattach (shim + daemon) and upstream Multus thin, interleaved, with\n\
     1 and 3 NADs (macvlan + whereabouts local store, netattach's plugins for both), on a\n\
     tools/testenv control plane: the one named by NETATTACH_TESTENV_DIR (tools/test-k8s), or\n\
     a private instance started and torn down by this program. Needs root.\n\
     Defaults: --netattach <dir of this program>/netattach, --multus <tools-bin>/multus,\n\
     --tools-bin <repo>/target/tools/bin, --iterations 50 --warmup 5 --pods 4 --burst 200"
}

fn parse_args() -> Result<Opts, Error> {
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let tools_bin = repo_root().join("target/tools/bin");
    let mut o = Opts {
        netattach: exe_dir.join("netattach"),
        multus: PathBuf::new(),
        tools_bin,
        iterations: 50,
        warmup: 5,
        pods: 4,
        burst: 200,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()))
        };
        match a.as_str() {
            "--netattach" => o.netattach = PathBuf::from(val("--netattach")?),
            "--multus" => o.multus = PathBuf::from(val("--multus")?),
            "--tools-bin" => o.tools_bin = PathBuf::from(val("--tools-bin")?),
            "--iterations" => o.iterations = val("--iterations")?.parse()?,
            "--warmup" => o.warmup = val("--warmup")?.parse()?,
            "--pods" => o.pods = val("--pods")?.parse()?,
            "--burst" => o.burst = val("--burst")?.parse()?,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{}", usage()).into()),
        }
    }
    if o.multus.as_os_str().is_empty() {
        o.multus = o.tools_bin.join("multus");
    }
    if o.iterations == 0 || o.pods == 0 {
        return Err("--iterations and --pods must be at least 1".into());
    }
    if o.burst > 250 {
        return Err("--burst must be at most 250 (one /24 per network)".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pod-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Namespaces

fn set_up(h: &mut Handle, name: &str) -> Result<(), Error> {
    let i = h.link_index(name)?;
    h.set_up(i)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The control plane

/// The apiserver's port on the host's loopback.
fn api_port(testenv: &Testenv) -> Result<u16, Error> {
    let server = testenv.var("NETATTACH_TESTENV_SERVER")?;
    let port = server
        .rsplit(':')
        .next()
        .ok_or("NETATTACH_TESTENV_SERVER has no port")?;
    Ok(port.trim_end_matches('/').parse()?)
}

/// Deletes the bench's objects from a borrowed testenv.
struct ApiObjects<'a> {
    kubectl: &'a Kubectl,
    shared: bool,
}

impl Drop for ApiObjects<'_> {
    fn drop(&mut self) {
        if self.shared {
            // No kubelet confirms the deletion of a pod bound to a node: without a forced
            // delete the namespace would stay Terminating and the next run could not start.
            let _ = self.kubectl.run(
                &[
                    "delete",
                    "pods",
                    "--all",
                    "-n",
                    NS,
                    "--grace-period=0",
                    "--force",
                    "--wait=false",
                ],
                None,
            );
            let _ = self.kubectl.run(
                &["delete", "namespace", NS, "--wait=false", "--ignore-not-found"],
                None,
            );
            let _ = self.kubectl.run(
                &[
                    "delete",
                    "clusterrole,clusterrolebinding",
                    "pod-bench-multus",
                    "--ignore-not-found",
                ],
                None,
            );
        }
    }
}

fn pod_object(name: &str, nads: usize) -> Value {
    let networks: Vec<&str> = NADS.iter().take(nads).map(|(n, _)| *n).collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS,
                     "annotations": {NETWORKS_ANNOTATION: networks.join(",")}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "registry.invalid/pause:1"}]}
    })
}

/// The whereabouts IPAM section both systems use (netattach's plugin, local store).
fn ipam(range: &str, store: &Path) -> Value {
    json!({"type": "whereabouts", "range": range, "datastore": "local",
           "local_dir": store.display().to_string()})
}

/// Multus' rights as the rke2-multus chart grants them (ClusterRole `multus`).
fn multus_rbac() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "multus", "namespace": NS}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "pod-bench-multus"},
               "rules": [
                   {"apiGroups": ["k8s.cni.cncf.io"], "resources": ["*"], "verbs": ["*"]},
                   {"apiGroups": [""], "resources": ["pods", "pods/status"],
                    "verbs": ["get", "list", "update", "watch"]},
                   {"apiGroups": ["", "events.k8s.io"], "resources": ["events"],
                    "verbs": ["create", "patch", "update"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "pod-bench-multus"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "pod-bench-multus"},
               "subjects": [{"kind": "ServiceAccount", "name": "multus", "namespace": NS}]}),
    ]
}

// ---------------------------------------------------------------------------------------------
// The relay from the node namespace's loopback to the apiserver on the host's loopback

/// Accepts on `listener` (bound inside the node namespace) and relays each connection to
/// 127.0.0.1:`port` of this thread's namespace (the host's). Runs until the process exits.
fn spawn_relay(listener: TcpListener, port: u16) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(down) = conn else { continue };
            let Ok(up) = TcpStream::connect(("127.0.0.1", port)) else {
                let _ = down.shutdown(Shutdown::Both);
                continue;
            };
            let _ = down.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let (Ok(down2), Ok(up2)) = (down.try_clone(), up.try_clone()) else {
                continue;
            };
            let pipe = |mut from: TcpStream, mut to: TcpStream| {
                move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                }
            };
            std::thread::spawn(pipe(down, up));
            std::thread::spawn(pipe(up2, down2));
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The node daemon

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// VmRSS and VmHWM in KiB.
    fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Running the meta-plugins

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Sys {
    Netattach,
    Multus,
}

impl Sys {
    fn label(self) -> &'static str {
        match self {
            Sys::Netattach => "netattach",
            Sys::Multus => "multus-thin",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            Sys::Netattach => "na",
            Sys::Multus => "mu",
        }
    }
}

/// One meta-plugin: executable and stdin config.
struct Meta {
    exe: PathBuf,
    conf: Vec<u8>,
    cni_path: String,
}

/// A pod as the runtime knows it.
#[derive(Clone)]
struct PodRef {
    name: String,
    uid: String,
    netns: PathBuf,
}

struct Exec {
    elapsed: Duration,
    start_us: i64,
    end_us: i64,
    ok: bool,
    output: String,
}

impl Meta {
    /// Runs `cmd` for `pod` from the calling thread (and so in its network namespace).
    fn exec(&self, cmd: &str, id: &str, pod: &PodRef) -> Result<Exec, Error> {
        let start_us = now_us();
        let start = Instant::now();
        let mut child = Command::new(&self.exe)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", &pod.netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID={}",
                    pod.name, pod.uid
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.exe.display()))?;
        if let Some(mut si) = child.stdin.take() {
            let _ = si.write_all(&self.conf);
        }
        let out = child.wait_with_output()?;
        let elapsed = start.elapsed();
        Ok(Exec {
            elapsed,
            start_us,
            end_us: now_us(),
            ok: out.status.success(),
            output: format!(
                "{}; stdout {}; stderr {}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }

    /// ADD retried (after a DEL) until it succeeds or `budget` passes: for pods the daemon's
    /// cache may not hold yet.
    fn add_until_ok(&self, id: &str, pod: &PodRef, budget: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + budget;
        loop {
            let r = self.exec("ADD", id, pod)?;
            if r.ok {
                return Ok(());
            }
            let _ = self.exec("DEL", id, pod)?;
            if Instant::now() > deadline {
                return Err(format!("ADD of {} never succeeded: {}", pod.name, r.output).into());
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The delegates alone, run directly as the meta-plugins would run them (cluster network on
/// `eth0`, then NAD `i` on `net<i+1>`; DEL in reverse): the floor both meta-plugins build on.
struct Bare {
    macvlan: PathBuf,
    cni_path: String,
    /// `(ifname, config)`, cluster network first.
    delegates: Vec<(String, Vec<u8>)>,
}

impl Bare {
    fn exec(&self, cmd: &str, id: &str, netns: &Path, ifname: &str, conf: &[u8]) -> Result<(), Error> {
        let mut child = Command::new(&self.macvlan)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME=bare"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut si) = child.stdin.take() {
            let _ = si.write_all(conf);
        }
        let out = child.wait_with_output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "bare {cmd} {ifname}: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .into())
        }
    }

    /// ADD of the first `1 + nads` delegates, then DEL in reverse: (ADD, DEL) wall time.
    fn cycle(&self, nads: usize, id: &str, netns: &Path) -> Result<(Duration, Duration), Error> {
        let list = &self.delegates[..=nads];
        let t = Instant::now();
        for (ifname, conf) in list {
            self.exec("ADD", id, netns, ifname, conf)?;
        }
        let add = t.elapsed();
        let t = Instant::now();
        for (ifname, conf) in list.iter().rev() {
            self.exec("DEL", id, netns, ifname, conf)?;
        }
        Ok((add, t.elapsed()))
    }
}

/// One timed operation, for latency and for attributing audit events.
struct Op {
    sys: Sys,
    /// e.g. "1 NAD" or "burst".
    scenario: String,
    verb: &'static str,
    elapsed: Duration,
    start_us: i64,
    end_us: i64,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// The audit log

/// Requests by "verb resource".
type Counts = BTreeMap<String, usize>;
/// (system, scenario, CNI verb).
type OpKind = (Sys, String, &'static str);

/// Per (system, scenario, verb): the API requests made inside the operations' windows, per
/// operation; plus the requests of each user outside every window.
fn attribute(
    ops: &[Op],
    requests: &[ApiRequest],
    user_of: &dyn Fn(Sys) -> &'static str,
) -> (BTreeMap<OpKind, Counts>, BTreeMap<String, Counts>) {
    let mut inside: BTreeMap<OpKind, Counts> = BTreeMap::new();
    let mut outside: BTreeMap<String, Counts> = BTreeMap::new();
    for r in requests {
        let op = ops
            .iter()
            .find(|o| user_of(o.sys) == r.user && o.start_us <= r.at_us && r.at_us <= o.end_us);
        match op {
            Some(o) => {
                *inside
                    .entry((o.sys, o.scenario.clone(), o.verb))
                    .or_default()
                    .entry(r.what.clone())
                    .or_default() += 1;
            }
            None => {
                *outside
                    .entry(r.user.clone())
                    .or_default()
                    .entry(r.what.clone())
                    .or_default() += 1;
            }
        }
    }
    (inside, outside)
}

fn describe_counts(counts: Option<&Counts>, per: usize) -> String {
    let Some(counts) = counts.filter(|c| !c.is_empty()) else {
        return "none".to_string();
    };
    let total: usize = counts.values().sum();
    let parts: Vec<String> = counts
        .iter()
        .map(|(w, n)| {
            let v = *n as f64 / per.max(1) as f64;
            if (v - v.round()).abs() < 1e-9 {
                format!("{w} ×{}", v.round())
            } else {
                format!("{w} ×{v:.2}")
            }
        })
        .collect();
    format!(
        "{:.2} requests: {}",
        total as f64 / per.max(1) as f64,
        parts.join(", ")
    )
}

// ---------------------------------------------------------------------------------------------

fn install_signal_handlers() {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
        );
    }
}

fn run() -> Result<(), Error> {
    let opts = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("must run as root (it creates network namespaces): \
                    sudo tools/test-k8s target/release/pod-bench"
            .into());
    }
    require_file(
        &opts.netattach,
        "cargo build --release -p netattach, or pass --netattach PATH",
    )?;
    for (p, what) in [
        (&opts.multus, "multus"),
        (&opts.tools_bin.join("kubectl"), "control-plane"),
    ] {
        require_file(p, &format!("tools/build --only {what}"))?;
    }
    install_signal_handlers();
    println!("pod-bench: netattach {}", opts.netattach.display());
    println!("           multus    {} (thin)", opts.multus.display());

    let testenv = Testenv::get("pod-bench", 1)?;
    let kubectl = Kubectl {
        exe: opts.tools_bin.join("kubectl"),
        kubeconfig: PathBuf::from(testenv.var("KUBECONFIG")?),
    };
    let audit_log = PathBuf::from(testenv.var("NETATTACH_TESTENV_AUDIT_LOG")?);
    let node_kubeconfig = testenv.node_kubeconfig(NODE)?;
    let api_port = api_port(&testenv)?;
    let testenv_dir = PathBuf::from(testenv.var("NETATTACH_TESTENV_DIR")?);

    let tmp = tempfile::Builder::new().prefix("pod-bench-").tempdir()?;
    let bin = tmp.path().join("bin");
    install_faces(&opts.netattach, &bin)?;
    let store = tmp.path().join("store");
    let conf_dir = tmp.path().join("net.d");
    std::fs::create_dir_all(&conf_dir)?;
    let cluster = json!({
        "cniVersion": "1.0.0", "name": "cbr0",
        "plugins": [{"type": "macvlan", "master": CLUSTER_MASTER, "mode": "bridge",
                     "ipam": ipam(CLUSTER_RANGE, &store)}],
    });
    std::fs::write(
        conf_dir.join("10-cluster.conflist"),
        serde_json::to_vec_pretty(&cluster)?,
    )?;

    // --- API objects ----------------------------------------------------------------------
    println!("  creating node {NODE}, namespace {NS}, NADs, pods and Multus' service account");
    let _objects = ApiObjects {
        kubectl: &kubectl,
        shared: testenv.is_shared(),
    };
    kubectl.apply(vec![
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    ])?;
    let mut objects = multus_rbac();
    for (name, range) in NADS {
        let config = json!({"cniVersion": "1.0.0", "type": "macvlan", "master": STORAGE_MASTER,
                            "mode": "bridge", "ipam": ipam(range, &store)});
        objects.push(json!({
            "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"config": config.to_string()}
        }));
    }
    let pod_name = |sys: Sys, nads: usize, j: usize| format!("{}-{nads}-{j}", sys.prefix());
    for nads in CONFIGS {
        for sys in [Sys::Netattach, Sys::Multus] {
            for j in 0..opts.pods {
                objects.push(pod_object(&pod_name(sys, nads, j), nads));
            }
        }
    }
    kubectl.apply(objects)?;
    let token = kubectl
        .run(&["create", "token", "multus", "-n", NS, "--duration", "2h"], None)?
        .trim()
        .to_string();
    let multus_kubeconfig = tmp.path().join("multus.kubeconfig");
    std::fs::write(
        &multus_kubeconfig,
        serde_json::to_vec_pretty(&json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "testenv", "cluster": {
                "server": format!("https://127.0.0.1:{api_port}"),
                "certificate-authority": testenv_dir.join("pki/ca.crt").display().to_string()}}],
            "users": [{"name": "multus", "user": {"token": token}}],
            "contexts": [{"name": "multus", "context": {"cluster": "testenv", "user": "multus"}}],
            "current-context": "multus"
        }))?,
    )?;
    let uids: BTreeMap<String, String> = {
        let v: Value = serde_json::from_str(&kubectl.run(&["get", "pods", "-n", NS, "-o", "json"], None)?)?;
        v["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|p| {
                        (
                            p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                            p["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };

    // --- topology ----------------------------------------------------------------------------
    sweep_stale("npb");
    let node = Ns::new("npb")?;
    let switch = Ns::new("npb")?;
    {
        let mut h = Handle::in_netns(&node.netns()?)?;
        set_up(&mut h, "lo")?;
        let mut hs = Handle::in_netns(&switch.netns()?)?;
        for (m, peer) in [(CLUSTER_MASTER, "clu0p"), (STORAGE_MASTER, "stor0p")] {
            h.create_veth(m, peer, Some(&switch.netns()?))?;
            set_up(&mut h, m)?;
            set_up(&mut hs, peer)?;
        }
    }
    let node_netns = node.netns()?;
    let listener = node_netns.run(|| TcpListener::bind(("127.0.0.1", api_port)))??;
    spawn_relay(listener, api_port);

    let mut pod_ns: BTreeMap<String, Ns> = BTreeMap::new();
    let pod_ref = |pod_ns: &mut BTreeMap<String, Ns>, name: &str| -> Result<PodRef, Error> {
        if !pod_ns.contains_key(name) {
            pod_ns.insert(name.to_string(), Ns::new("npb")?);
        }
        Ok(PodRef {
            name: name.to_string(),
            uid: uids.get(name).cloned().unwrap_or_default(),
            netns: pod_ns[name].path().to_path_buf(),
        })
    };

    // --- the daemon --------------------------------------------------------------------------
    let socket = tmp.path().join("run/daemon.sock");
    let ready = tmp.path().join("run/ready");
    let daemon_log = tmp.path().join("daemon.log");
    let mut daemon = {
        let log = std::fs::File::create(&daemon_log)?;
        let child = node_netns.run(|| {
            Command::new(&opts.netattach)
                .arg("daemon")
                .args(["--node", NODE, "--kubeconfig"])
                .arg(&node_kubeconfig)
                .arg("--socket")
                .arg(&socket)
                .arg("--ready-file")
                .arg(&ready)
                .args(["--metrics-addr", "127.0.0.1:9464"])
                .env_remove("CNI_COMMAND")
                .env_remove("KUBECONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
        })??;
        Daemon {
            child,
            log: daemon_log,
        }
    };
    let t0 = Instant::now();
    while !ready.exists() {
        if let Some(status) = daemon.child.try_wait()? {
            return Err(format!("the daemon exited ({status}):\n{}", daemon.log_tail()).into());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!("the daemon was not ready in 30 s:\n{}", daemon.log_tail()).into());
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "  daemon pid {} ready after {} ms",
        daemon.pid(),
        t0.elapsed().as_millis()
    );

    let cni_path = bin.display().to_string();
    let netattach = Meta {
        exe: bin.join("netattach"),
        conf: serde_json::to_vec(&json!({
            "cniVersion": "1.0.0", "name": "netattach-cni-network", "type": "netattach",
            "clusterNetwork": "cbr0", "confDir": conf_dir.display().to_string(),
            "cniDir": tmp.path().join("netattach-state").display().to_string(),
            "multusCacheDir": tmp.path().join("netattach-legacy").display().to_string(),
            "binDir": cni_path, "daemonSocket": socket.display().to_string(),
        }))?,
        cni_path: cni_path.clone(),
    };
    // What Multus' thin entrypoint generates on K3s (`delegates: [<master conflist>]`), with a
    // kubeconfig of the chart's `multus` service account.
    let multus_cni_dir = tmp.path().join("multus-state");
    let multus = Meta {
        exe: opts.multus.clone(),
        conf: serde_json::to_vec(&json!({
            "cniVersion": "1.0.0", "name": "multus-cni-network", "type": "multus",
            "kubeconfig": multus_kubeconfig.display().to_string(),
            "confDir": conf_dir.display().to_string(),
            "cniDir": multus_cni_dir.display().to_string(),
            "binDir": cni_path, "delegates": [cluster],
        }))?,
        cni_path,
    };
    let mut bare_delegates = vec![(
        "eth0".to_string(),
        serde_json::to_vec(&{
            let mut c = cluster["plugins"][0].clone();
            c["cniVersion"] = json!("1.0.0");
            c["name"] = json!("cbr0");
            c
        })?,
    )];
    for (i, (name, range)) in NADS.iter().enumerate() {
        bare_delegates.push((
            format!("net{}", i + 1),
            serde_json::to_vec(&json!({"cniVersion": "1.0.0", "name": name, "type": "macvlan",
                "master": STORAGE_MASTER, "mode": "bridge", "ipam": ipam(range, &store)}))?,
        ));
    }
    let bare = Bare {
        macvlan: bin.join("macvlan"),
        cni_path: bin.display().to_string(),
        delegates: bare_delegates,
    };
    let bare_netns: Vec<PathBuf> = (0..opts.pods)
        .map(|j| pod_ref(&mut pod_ns, &format!("bare-{j}")).map(|p| p.netns))
        .collect::<Result<_, _>>()?;
    let mut bare_times: BTreeMap<(usize, &'static str), Vec<Duration>> = BTreeMap::new();
    let meta_of = |s: Sys| match s {
        Sys::Netattach => &netattach,
        Sys::Multus => &multus,
    };
    let user_of = |s: Sys| match s {
        Sys::Netattach => "netattach:node:node-1",
        Sys::Multus => "system:serviceaccount:pod-bench:multus",
    };

    let mut ops: Vec<Op> = Vec::new();
    let rss_idle = daemon.rss();

    // --- interleaved sequential ADD+DEL --------------------------------------------------------
    let pods: BTreeMap<(Sys, usize), Vec<PodRef>> = {
        let mut m = BTreeMap::new();
        for nads in CONFIGS {
            for sys in [Sys::Netattach, Sys::Multus] {
                let v = (0..opts.pods)
                    .map(|j| pod_ref(&mut pod_ns, &pod_name(sys, nads, j)))
                    .collect::<Result<Vec<_>, _>>()?;
                m.insert((sys, nads), v);
            }
        }
        m
    };
    node_netns.run(|| -> Result<(), Error> {
        // The daemon's cache must hold the pods first (the shim returns code 11 until it does).
        for ((sys, _), list) in &pods {
            for p in list {
                let id = format!("probe-{}", p.name);
                let t_start = now_us();
                meta_of(*sys).add_until_ok(&id, p, Duration::from_secs(20))?;
                let d = meta_of(*sys).exec("DEL", &id, p)?;
                ops.push(Op {
                    sys: *sys,
                    scenario: "setup".into(),
                    verb: "ADD",
                    elapsed: Duration::ZERO,
                    start_us: t_start,
                    end_us: now_us(),
                });
                if !d.ok {
                    return Err(format!("probe DEL {}: {}", p.name, d.output).into());
                }
            }
        }
        for nads in CONFIGS {
            let scenario = format!("{nads} NAD");
            println!(
                "  {scenario}: {} warmup + {} measured ADD+DEL per system, interleaved",
                opts.warmup, opts.iterations
            );
            let started = Instant::now();
            let total = opts.warmup + opts.iterations;
            for i in 0..total {
                check_interrupted()?;
                let order = if i % 2 == 0 {
                    [Sys::Netattach, Sys::Multus]
                } else {
                    [Sys::Multus, Sys::Netattach]
                };
                for sys in order {
                    let list = &pods[&(sys, nads)];
                    let pod = &list[i % list.len()];
                    let id = format!("{}-{nads}-{i}", sys.prefix());
                    let m = meta_of(sys);
                    let add = m.exec("ADD", &id, pod)?;
                    if !add.ok {
                        let _ = m.exec("DEL", &id, pod);
                        return Err(format!("{} ADD {id}: {}", sys.label(), add.output).into());
                    }
                    let del = m.exec("DEL", &id, pod)?;
                    if !del.ok {
                        return Err(format!("{} DEL {id}: {}", sys.label(), del.output).into());
                    }
                    {
                        for (verb, r) in [("ADD", add), ("DEL", del)] {
                            ops.push(Op {
                                sys,
                                scenario: if i >= opts.warmup {
                                    scenario.clone()
                                } else {
                                    "setup".into()
                                },
                                verb,
                                elapsed: r.elapsed,
                                start_us: r.start_us,
                                end_us: r.end_us,
                            });
                        }
                    }
                }
                let (badd, bdel) = bare.cycle(
                    nads,
                    &format!("bare-{nads}-{i}"),
                    &bare_netns[i % bare_netns.len()],
                )?;
                if i >= opts.warmup {
                    bare_times.entry((nads, "ADD")).or_default().push(badd);
                    bare_times.entry((nads, "DEL")).or_default().push(bdel);
                }
                let done = i + 1;
                if done > opts.warmup && ((done - opts.warmup) % 25 == 0 || done == total) {
                    let p50 = |s: Sys, v: &str| {
                        let d: Vec<Duration> = ops
                            .iter()
                            .filter(|o| o.sys == s && o.scenario == scenario && o.verb == v)
                            .map(|o| o.elapsed)
                            .collect();
                        ms(percentile(&d, 0.5))
                    };
                    println!(
                        "    [{:>5.1}s] {}/{}: ADD p50 {} vs {}, DEL p50 {} vs {}",
                        started.elapsed().as_secs_f64(),
                        done - opts.warmup,
                        opts.iterations,
                        p50(Sys::Netattach, "ADD"),
                        p50(Sys::Multus, "ADD"),
                        p50(Sys::Netattach, "DEL"),
                        p50(Sys::Multus, "DEL"),
                    );
                }
            }
        }
        Ok(())
    })??;
    let rss_after_seq = daemon.rss();

    // --- burst -------------------------------------------------------------------------------
    let mut burst_summary = None;
    if opts.burst > 0 {
        println!(
            "  burst: {} pods (1 NAD) created; {} concurrent netattach ADDs, then {} concurrent DELs",
            opts.burst, opts.burst, opts.burst
        );
        let names: Vec<String> = (0..opts.burst).map(|n| format!("burst-{n}")).collect();
        kubectl.apply(names.iter().map(|n| pod_object(n, 1)).collect())?;
        let v: Value = serde_json::from_str(&kubectl.run(&["get", "pods", "-n", NS, "-o", "json"], None)?)?;
        let burst_uids: BTreeMap<String, String> = v["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|p| {
                        (
                            p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                            p["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut burst_pods = Vec::new();
        for n in &names {
            pod_ns.insert(n.clone(), Ns::new("npb")?);
            burst_pods.push(PodRef {
                name: n.clone(),
                uid: burst_uids.get(n).cloned().unwrap_or_default(),
                netns: pod_ns[n].path().to_path_buf(),
            });
        }
        // Wait until the daemon's cache holds the last pod (the watch delivers in order).
        let last = burst_pods.last().cloned().ok_or("no burst pods")?;
        ops.push(Op {
            sys: Sys::Netattach,
            scenario: "setup".into(),
            verb: "ADD",
            elapsed: Duration::ZERO,
            start_us: now_us(),
            end_us: now_us() + 3_600_000_000,
        });
        let probe_op = ops.len() - 1;
        node_netns.run(|| -> Result<(), Error> {
            netattach.add_until_ok("burst-probe", &last, Duration::from_secs(30))?;
            let d = netattach.exec("DEL", "burst-probe", &last)?;
            if d.ok {
                Ok(())
            } else {
                Err(format!("burst probe DEL: {}", d.output).into())
            }
        })??;
        ops[probe_op].end_us = now_us();
        std::thread::sleep(Duration::from_secs(1));
        let rss_before_burst = daemon.rss();
        let peak = Arc::new(AtomicU64::new(rss_before_burst.0));
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let (peak, sampling) = (peak.clone(), sampling.clone());
            let path = format!("/proc/{}/status", daemon.pid());
            std::thread::spawn(move || {
                while sampling.load(Ordering::SeqCst) {
                    let rss = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| {
                            s.lines()
                                .find_map(|l| l.strip_prefix("VmRSS:"))
                                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                        })
                        .unwrap_or(0);
                    peak.fetch_max(rss, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let results: Mutex<Vec<(usize, &'static str, Exec)>> = Mutex::new(Vec::new());
        let mut phase_wall = Vec::new();
        for verb in ["ADD", "DEL"] {
            let barrier = Barrier::new(burst_pods.len());
            let t = Instant::now();
            node_netns.run(|| {
                std::thread::scope(|s| {
                    for (k, p) in burst_pods.iter().enumerate() {
                        let (barrier, results, netattach) = (&barrier, &results, &netattach);
                        s.spawn(move || {
                            barrier.wait();
                            let r = netattach.exec(verb, &format!("burst-{k}"), p);
                            match r {
                                Ok(e) => results.lock().expect("results").push((k, verb, e)),
                                Err(e) => eprintln!("burst {verb} {k}: {e}"),
                            }
                        });
                    }
                });
            })?;
            phase_wall.push(t.elapsed());
        }
        sampling.store(false, Ordering::SeqCst);
        let _ = sampler.join();
        let rss_after_burst = daemon.rss();
        let results = results.into_inner().expect("results");
        let mut failures: Vec<String> = Vec::new();
        for (k, verb, e) in &results {
            if !e.ok {
                failures.push(format!("burst-{k} {verb}: {}", e.output));
            }
            ops.push(Op {
                sys: Sys::Netattach,
                scenario: "burst".into(),
                verb,
                elapsed: e.elapsed,
                start_us: e.start_us,
                end_us: e.end_us,
            });
        }
        // A failed ADD is still DELed above (every pod gets a DEL); retry failed DELs once.
        for (k, verb, e) in &results {
            if *verb == "DEL" && !e.ok {
                let _ = node_netns.run(|| netattach.exec("DEL", &format!("burst-{k}"), &burst_pods[*k]));
            }
        }
        burst_summary = Some((
            rss_before_burst,
            peak.load(Ordering::SeqCst),
            rss_after_burst,
            phase_wall,
            failures,
        ));
    }

    // --- nothing left --------------------------------------------------------------------------
    let mut leftovers = Vec::new();
    for (name, ns) in &pod_ns {
        let links = Handle::in_netns(&ns.netns()?)?.links()?;
        let extra: Vec<String> = links
            .iter()
            .filter(|l| l.name != "lo")
            .map(|l| l.name.clone())
            .collect();
        if !extra.is_empty() {
            leftovers.push(format!("pod {name}: links {extra:?}"));
        }
    }
    if let Ok(rd) = std::fs::read_dir(&store) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".json") && !n.starts_with('.') {
                let doc: Value = serde_json::from_slice(&std::fs::read(e.path())?)?;
                if doc["allocations"].as_object().is_some_and(|a| !a.is_empty()) {
                    leftovers.push(format!("whereabouts allocations in {n}: {}", doc["allocations"]));
                }
            }
        }
    }
    let files = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for (what, dir) in [
        ("multus scratch cache", multus_cni_dir.clone()),
        ("multus libcni results", multus_cni_dir.join("results")),
        ("netattach records", tmp.path().join("netattach-state")),
    ] {
        let left = files(&dir);
        if !left.is_empty() {
            leftovers.push(format!("{what}: {left:?}"));
        }
    }

    // --- API requests --------------------------------------------------------------------------
    std::thread::sleep(Duration::from_secs(1));
    let requests = read_audit(&audit_log, &[user_of(Sys::Netattach), user_of(Sys::Multus)], 0)?;
    let (inside, outside) = attribute(&ops, &requests, &user_of);

    // --- report ------------------------------------------------------------------------------
    println!();
    println!(
        "{:<7} {:<4} {:>14} {:>14} {:>14} {:>14} {:>7} {:>7}",
        "pods", "op", "netattach p50", "multus p50", "netattach p90", "multus p90", "ratio50", "ratio90"
    );
    let durations = |sys: Sys, scenario: &str, verb: &str| -> Vec<Duration> {
        ops.iter()
            .filter(|o| o.sys == sys && o.scenario == scenario && o.verb == verb)
            .map(|o| o.elapsed)
            .collect()
    };
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    for nads in CONFIGS {
        let scenario = format!("{nads} NAD");
        for verb in ["ADD", "DEL"] {
            let a = durations(Sys::Netattach, &scenario, verb);
            let b = durations(Sys::Multus, &scenario, verb);
            let (a50, b50, a90, b90) = (
                percentile(&a, 0.5),
                percentile(&b, 0.5),
                percentile(&a, 0.9),
                percentile(&b, 0.9),
            );
            println!(
                "{:<7} {:<4} {:>14} {:>14} {:>14} {:>14} {:>7.2} {:>7.2}",
                scenario,
                verb,
                ms(a50),
                ms(b50),
                ms(a90),
                ms(b90),
                ratio(a50, b50),
                ratio(a90, b90)
            );
        }
    }
    println!(
        "  ({} measured ADD+DEL per system and pod shape; ratio = netattach / multus; target ADD ratio <= 0.30)",
        opts.iterations
    );
    println!();
    println!(
        "{:<7} {:<4} {:>14} {:>19} {:>19} {:>7}",
        "pods", "op", "delegates p50", "netattach overhead", "multus overhead", "ratio"
    );
    for nads in CONFIGS {
        let scenario = format!("{nads} NAD");
        for verb in ["ADD", "DEL"] {
            let floor = percentile(bare_times.get(&(nads, verb)).map_or(&[][..], Vec::as_slice), 0.5);
            let over = |sys: Sys| percentile(&durations(sys, &scenario, verb), 0.5).saturating_sub(floor);
            let (a, b) = (over(Sys::Netattach), over(Sys::Multus));
            println!(
                "{:<7} {:<4} {:>14} {:>19} {:>19} {:>7.2}",
                scenario,
                verb,
                ms(floor),
                ms(a),
                ms(b),
                ratio(a, b)
            );
        }
    }
    println!(
        "  (delegates = the same macvlan + whereabouts processes run directly, without a meta-plugin; \
         overhead = meta p50 - delegates p50)"
    );
    println!();
    println!(
        "API requests per pod operation (apiserver audit log; users {} and {}):",
        user_of(Sys::Netattach),
        user_of(Sys::Multus)
    );
    for nads in CONFIGS {
        let scenario = format!("{nads} NAD");
        for verb in ["ADD", "DEL"] {
            for sys in [Sys::Netattach, Sys::Multus] {
                let n = ops
                    .iter()
                    .filter(|o| o.sys == sys && o.scenario == scenario && o.verb == verb)
                    .count();
                println!(
                    "  {:<6} {:<4} {:<12} {}",
                    scenario,
                    verb,
                    sys.label(),
                    describe_counts(inside.get(&(sys, scenario.clone(), verb)), n)
                );
            }
        }
    }
    if let Some((_, _, _, _, _)) = &burst_summary {
        for verb in ["ADD", "DEL"] {
            let n = ops
                .iter()
                .filter(|o| o.scenario == "burst" && o.verb == verb)
                .count();
            println!(
                "  {:<6} {:<4} {:<12} {}",
                "burst",
                verb,
                "netattach",
                describe_counts(inside.get(&(Sys::Netattach, "burst".to_string(), verb)), n)
            );
        }
    }
    for (user, counts) in &outside {
        let list: Vec<String> = counts.iter().map(|(w, n)| format!("{w} ×{n}")).collect();
        println!("  outside any operation, {user}: {}", list.join(", "));
    }
    println!("  (target for netattach: no API read and at most 1 write per ADD)");
    println!();
    println!(
        "daemon RSS (VmRSS): idle after sync {}, after the sequential runs {} (VmHWM so far {})",
        mib(rss_idle.0),
        mib(rss_after_seq.0),
        mib(rss_after_seq.1)
    );
    if let Some((before, peak, after, wall, failures)) = &burst_summary {
        let adds = durations(Sys::Netattach, "burst", "ADD");
        let dels = durations(Sys::Netattach, "burst", "DEL");
        println!(
            "burst of {} concurrent ADDs: VmRSS before {}, peak sampled {}, VmHWM {} (after DELs: VmRSS {})",
            opts.burst,
            mib(before.0),
            mib(*peak),
            mib(after.1),
            mib(after.0)
        );
        println!(
            "  ADD wall {:.2} s, per-ADD p50 {} p90 {} max {}; DEL wall {:.2} s, p50 {} p90 {}; failures {}",
            wall.first().copied().unwrap_or_default().as_secs_f64(),
            ms(percentile(&adds, 0.5)),
            ms(percentile(&adds, 0.9)),
            ms(percentile(&adds, 1.0)),
            wall.get(1).copied().unwrap_or_default().as_secs_f64(),
            ms(percentile(&dels, 0.5)),
            ms(percentile(&dels, 0.9)),
            failures.len()
        );
        for f in failures.iter().take(5) {
            println!("    {f}");
        }
        println!("  (targets: idle <= 20 MiB, burst <= 40 MiB)");
    }
    if !leftovers.is_empty() {
        println!();
        for l in &leftovers {
            println!("LEFT BEHIND: {l}");
        }
        return Err(format!("{} kinds of leftovers after DEL", leftovers.len()).into());
    }
    if let Some((_, _, _, _, failures)) = &burst_summary
        && !failures.is_empty()
    {
        return Err(format!("{} burst operations failed", failures.len()).into());
    }
    drop(pod_ns);
    drop(daemon);
    drop(switch);
    drop(node);
    Ok(())
}
