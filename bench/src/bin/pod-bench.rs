//! `pod-bench`: pod ADD+DEL through a meta-plugin, netattach (shim + node daemon) against
//! upstream Multus v4.3.0 thin (`multus`) and thick (`multus-shim` + `multus-daemon`), on one
//! `tools/testenv` control plane, interleaved. All three run the same delegates (netattach's
//! `macvlan` + `whereabouts` with the local store) for the same NADs, with 1 and with 3 NADs per
//! pod. It reports ADD/DEL latency, the API requests each system makes per pod (from the
//! apiserver audit log), and the RSS of both node daemons (netattach's and multus-daemon) idle
//! and during a burst of concurrent ADDs. Needs root. See `bench/README.md`.
//!
//! Network safety: every link lives in namespaces this program creates (`npb-<pid>-<n>`);
//! addresses come only from 198.18.0.0/15; no pre-existing interface is touched. The apiserver
//! listens on the host's loopback; plugins and daemons run inside the node namespace, so a small
//! TCP relay (listening on `127.0.0.1:<apiserver port>` *inside the node namespace*) carries their
//! API traffic to it. multus-daemon only knows in-cluster credentials (a fixed path under
//! /var/run/secrets): it runs in a private mount namespace (slave propagation, so nothing
//! propagates to the host) where a temp dir is bind-mounted over /var. Namespaces, the daemons,
//! temp dirs and the Kubernetes objects (or the whole testenv instance when this program started
//! it) are removed on normal exit, on error and on Ctrl-C.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use netattach_netdev::{Handle, Netns};
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
/// The ServiceAccounts of Multus thin (its kubeconfig) and of the thick daemon (its in-cluster
/// token).
const THIN_SA: &str = "multus";
const THICK_SA: &str = "multus-thick";

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
    multus_shim: PathBuf,
    multus_daemon: PathBuf,
    tools_bin: PathBuf,
    iterations: usize,
    warmup: usize,
    pods: usize,
    burst: usize,
}

fn usage() -> &'static str {
    "usage: pod-bench [--netattach PATH] [--multus PATH] [--multus-shim PATH] [--multus-daemon PATH]\n\
     \x20                [--tools-bin DIR] [--iterations N] [--warmup N] [--pods N] [--burst N]\n\
     \n\
     Pod ADD+DEL through netattach (shim + daemon), upstream Multus thin and Multus thick\n\
     (multus-shim + multus-daemon), interleaved, with 1 and 3 NADs (macvlan + whereabouts local\n\
     store, netattach's plugins for all three), on a tools/testenv control plane: the one named\n\
     by NETATTACH_TESTENV_DIR (tools/test-k8s), or a private instance started and torn down by\n\
     this program. Needs root.\n\
     Defaults: --netattach <dir of this program>/netattach, --multus <tools-bin>/multus,\n\
     --multus-shim <tools-bin>/multus-shim, --multus-daemon <tools-bin>/multus-daemon,\n\
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
        multus_shim: PathBuf::new(),
        multus_daemon: PathBuf::new(),
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
            "--multus-shim" => o.multus_shim = PathBuf::from(val("--multus-shim")?),
            "--multus-daemon" => o.multus_daemon = PathBuf::from(val("--multus-daemon")?),
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
    for (path, name) in [
        (&mut o.multus, "multus"),
        (&mut o.multus_shim, "multus-shim"),
        (&mut o.multus_daemon, "multus-daemon"),
    ] {
        if path.as_os_str().is_empty() {
            *path = o.tools_bin.join(name);
        }
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
            let _ = self.kubectl.force_delete_pods(NS);
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

/// Multus' rights as the rke2-multus chart grants them (ClusterRole `multus`), bound to one
/// ServiceAccount per Multus flavour (`multus` for thin, `multus-thick` for the thick daemon), so
/// the audit log tells them apart.
fn multus_rbac() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": THIN_SA, "namespace": NS}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": THICK_SA, "namespace": NS}}),
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
               "subjects": [{"kind": "ServiceAccount", "name": THIN_SA, "namespace": NS},
                            {"kind": "ServiceAccount", "name": THICK_SA, "namespace": NS}]}),
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
// Multus thick: multus-daemon

/// multus-daemon as the upstream thick DaemonSet runs it (`multusConfigFile: auto`), with every
/// path in the bench's temp dir `dir` and no `chrootDir` (we are not in a container).
struct ThickSetup<'a> {
    exe: &'a Path,
    /// `<tmp>/thick`.
    dir: PathBuf,
    /// The CNI bin dir with netattach's faces (the same delegates as the other systems).
    bin: &'a Path,
    /// The cluster network conflist (`cbr0`): copied into the daemon's own conf dir, where auto
    /// mode finds it, and given to the daemon as `delegates` (see `start`).
    cluster: &'a Value,
    /// A token of the `multus-thick` ServiceAccount and the apiserver's CA.
    token: &'a str,
    ca: &'a Path,
    api_port: u16,
}

impl ThickSetup<'_> {
    /// `cniConfigDir` = `multusAutoconfigDir`: the daemon finds the master conflist here and
    /// writes `00-multus.conf` (the shim's config) beside it.
    fn conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }
    /// `socketDir` (the daemon removes and recreates it at start) = the shim's `daemonSocketDir`.
    fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    /// `cniDir`: Multus' scratch cache and libcni's results.
    fn cni_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// Bind-mounted over /var in the daemon's mount namespace: it holds only
    /// `run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}`, where client-go's
    /// in-cluster config reads them (multus-daemon has no kubeconfig option: `NewCNIServer`
    /// calls `k8sclient.InClusterK8sClient()`).
    fn var_dir(&self) -> PathBuf {
        self.dir.join("var")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// Writes the daemon's config and credentials, starts it in `node_netns` (and a private
    /// mount namespace), and waits until it answers `/healthz` and has written `00-multus.conf`.
    /// Returns the daemon and that file: the shim's stdin config, as a runtime would read it.
    fn start(&self, node_netns: &Netns) -> Result<(Daemon, Vec<u8>), Error> {
        let sa = self.var_dir().join("run/secrets/kubernetes.io/serviceaccount");
        for d in [&self.conf_dir(), &self.cni_dir(), &sa] {
            std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        std::fs::write(sa.join("token"), self.token)?;
        std::fs::copy(self.ca, sa.join("ca.crt")).map_err(|e| format!("copy {}: {e}", self.ca.display()))?;
        std::fs::write(sa.join("namespace"), NS)?;
        std::fs::write(
            self.conf_dir().join("10-cluster.conflist"),
            serde_json::to_vec_pretty(self.cluster)?,
        )?;
        let config = self.dir.join("daemon-config.json");
        // The keys of the upstream thick DaemonSet's daemon-config.json, minus chrootDir, plus
        // the paths the defaults would put on the host. No metricsPort: the daemon would listen
        // on all addresses of the node namespace. logLevel error (default: panic) makes the shim
        // and the daemon print the errors they otherwise drop; nothing is logged on success.
        //
        // The cluster network: auto mode puts `clusterNetwork: <path of the master conflist>`
        // into 00-multus.conf, and v4.3.0 loads such a delegate through a typed struct that
        // keeps only cniVersion/name/type/ipam.type (`LoadDelegateNetConfFromConfList`): ADD
        // still gets the whole conflist, DEL gets the stripped one, so the cluster network's
        // IPAM never releases (multus-cni #1449, fixed after v4.3.0 by #1521). The daemon's
        // config overrides the shim's key by key, so `clusterNetwork: ""` + `delegates` give
        // it the master conflist as thin gets it (what the thin entrypoint generates) and
        // every system releases what it allocated.
        let conf_dir = self.conf_dir().display().to_string();
        let socket_dir = self.socket_dir().display().to_string();
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&json!({
                "cniVersion": "1.0.0",
                "logLevel": "error",
                "logToStderr": true,
                "cniConfigDir": conf_dir,
                "multusAutoconfigDir": conf_dir,
                "multusConfigFile": "auto",
                "confDir": conf_dir,
                "socketDir": socket_dir,
                "daemonSocketDir": socket_dir,
                "cniDir": self.cni_dir().display().to_string(),
                "binDir": self.bin.display().to_string(),
                "clusterNetwork": "",
                "delegates": [self.cluster],
            }))?,
        )?;
        let log = std::fs::File::create(self.log())?;
        let mut cmd = Command::new(self.exe);
        cmd.arg("-config")
            .arg(&config)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            // The pod informer's field selector spec.nodeName=node-1 (`newPodInformer`).
            .env("MULTUS_NODE_NAME", NODE)
            // client-go's in-cluster config: the relay inside the node namespace.
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", self.api_port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let var_src = CString::new(self.var_dir().into_os_string().into_vec())?;
        // SAFETY: the hook runs in the forked child before exec; it makes only raw system calls
        // (unshare, mount) on memory prepared before the fork, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                // A mount namespace of its own; every mount in it a slave: the host's new mounts
                // (pod namespaces under /run/netns) propagate in, nothing propagates out.
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        c"none".as_ptr(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_SLAVE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        var_src.as_ptr(),
                        c"/var".as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = node_netns
            .run(|| cmd.spawn())?
            .map_err(|e| format!("spawn {}: {e}", self.exe.display()))?;
        let mut daemon = Daemon {
            child,
            log: self.log(),
        };
        let socket = self.socket_dir().join("multus.sock");
        let shim_conf = self.conf_dir().join("00-multus.conf");
        let t0 = Instant::now();
        loop {
            if let Some(status) = daemon.child.try_wait()? {
                return Err(format!("multus-daemon exited ({status}):\n{}", daemon.log_tail()).into());
            }
            if healthz(&socket)
                && let Ok(bytes) = std::fs::read(&shim_conf)
                && serde_json::from_slice::<Value>(&bytes).is_ok_and(|v| v["type"] == "multus-shim")
            {
                return Ok((daemon, bytes));
            }
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "multus-daemon was not ready in 60 s (healthz on {}, {}):\n{}",
                    socket.display(),
                    shim_conf.display(),
                    daemon.log_tail()
                )
                .into());
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `GET /healthz` on multus-daemon's socket answered 200 (the shim's readiness check).
fn healthz(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: dummy\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.split_whitespace().nth(1) == Some("200")
}

// ---------------------------------------------------------------------------------------------
// Running the meta-plugins

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Sys {
    Netattach,
    Thin,
    Thick,
}

/// The three systems, in the order of the first round (later rounds rotate it).
const SYSTEMS: [Sys; 3] = [Sys::Netattach, Sys::Thin, Sys::Thick];

impl Sys {
    fn label(self) -> &'static str {
        match self {
            Sys::Netattach => "netattach",
            Sys::Thin => "multus-thin",
            Sys::Thick => "multus-thick",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            Sys::Netattach => "na",
            Sys::Thin => "mu",
            Sys::Thick => "mt",
        }
    }
    /// The API identity its requests carry in the audit log.
    fn user(self) -> &'static str {
        match self {
            Sys::Netattach => "netattach:node:node-1",
            Sys::Thin => "system:serviceaccount:pod-bench:multus",
            Sys::Thick => "system:serviceaccount:pod-bench:multus-thick",
        }
    }
}

/// One meta-plugin: executable and stdin config.
struct Meta {
    exe: PathBuf,
    conf: Vec<u8>,
    cni_path: String,
    /// multus-shim: DEL exits 0 whatever happened (`pkg/server/api/shim.go` `CmdDel` only logs
    /// the error). With `logLevel: error` the log goes to its stderr: a DEL that printed
    /// anything there counts as failed.
    del_swallows_errors: bool,
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
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let swallowed = self.del_swallows_errors && cmd == "DEL" && !stderr.is_empty();
        Ok(Exec {
            elapsed,
            start_us,
            end_us: now_us(),
            ok: out.status.success() && !swallowed,
            output: format!(
                "{}{}; stdout {}; stderr {}",
                out.status,
                if swallowed {
                    " (multus-shim DEL always exits 0; it logged an error)"
                } else {
                    ""
                },
                String::from_utf8_lossy(&out.stdout).trim(),
                stderr
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
// The burst

/// One system's burst: its daemon's RSS and the outcome.
struct Burst {
    /// VmRSS and VmHWM (KiB) just before the ADDs.
    before: (u64, u64),
    /// The highest VmRSS sampled (every 2 ms) during the ADDs and the DELs.
    peak: u64,
    /// VmRSS and VmHWM after the DELs.
    after: (u64, u64),
    /// Wall time of all ADDs, then of all DELs.
    wall: Vec<Duration>,
    failures: Vec<String>,
}

/// `pods.len()` concurrent ADDs through `meta` (released together by a barrier), then as many
/// concurrent DELs, while `daemon`'s VmRSS is sampled. Each operation goes into `ops` under
/// scenario "burst"; a failed DEL is retried once afterwards (a failed ADD is DELed anyway).
fn burst(
    sys: Sys,
    meta: &Meta,
    daemon: &Daemon,
    node_netns: &Netns,
    pods: &[PodRef],
    ops: &mut Vec<Op>,
) -> Result<Burst, Error> {
    // Wait until the daemon's cache holds the last pod (the watch delivers in order).
    let last = pods.last().cloned().ok_or("no burst pods")?;
    let probe_id = format!("{}-burst-probe", sys.prefix());
    let probe_start = now_us();
    node_netns.run(|| -> Result<(), Error> {
        meta.add_until_ok(&probe_id, &last, Duration::from_secs(30))?;
        let d = meta.exec("DEL", &probe_id, &last)?;
        if d.ok {
            Ok(())
        } else {
            Err(format!("{} burst probe DEL: {}", sys.label(), d.output).into())
        }
    })??;
    ops.push(Op {
        sys,
        scenario: "setup".into(),
        verb: "ADD",
        elapsed: Duration::ZERO,
        start_us: probe_start,
        end_us: now_us(),
    });
    std::thread::sleep(Duration::from_secs(1));
    let before = daemon.rss();
    let peak = Arc::new(AtomicU64::new(before.0));
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
    let id = |k: usize| format!("{}-burst-{k}", sys.prefix());
    let results: Mutex<Vec<(usize, &'static str, Exec)>> = Mutex::new(Vec::new());
    let mut wall = Vec::new();
    for verb in ["ADD", "DEL"] {
        let barrier = Barrier::new(pods.len());
        let t = Instant::now();
        let phase = node_netns.run(|| {
            std::thread::scope(|s| {
                for (k, p) in pods.iter().enumerate() {
                    let (barrier, results, id) = (&barrier, &results, &id);
                    s.spawn(move || {
                        barrier.wait();
                        match meta.exec(verb, &id(k), p) {
                            Ok(e) => results.lock().expect("results").push((k, verb, e)),
                            Err(e) => eprintln!("{} burst {verb} {k}: {e}", sys.label()),
                        }
                    });
                }
            });
        });
        if phase.is_err() {
            sampling.store(false, Ordering::SeqCst);
        }
        phase?;
        wall.push(t.elapsed());
    }
    sampling.store(false, Ordering::SeqCst);
    let _ = sampler.join();
    let after = daemon.rss();
    let results = results.into_inner().expect("results");
    let mut failures: Vec<String> = Vec::new();
    for (k, verb, e) in &results {
        if !e.ok {
            failures.push(format!("{} {verb}: {}", id(*k), e.output));
        }
        ops.push(Op {
            sys,
            scenario: "burst".into(),
            verb,
            elapsed: e.elapsed,
            start_us: e.start_us,
            end_us: e.end_us,
        });
    }
    for (k, verb, e) in &results {
        if *verb == "DEL" && !e.ok {
            let _ = node_netns.run(|| meta.exec("DEL", &id(*k), &pods[*k]));
        }
    }
    Ok(Burst {
        before,
        peak: peak.load(Ordering::SeqCst),
        after,
        wall,
        failures,
    })
}

// ---------------------------------------------------------------------------------------------
// The audit log

/// Requests by "verb resource".
type Counts = BTreeMap<String, usize>;
/// (system, scenario, CNI verb).
type OpKind = (Sys, String, &'static str);

/// Per (system, scenario, verb): the API requests made inside the operations' windows, per
/// operation; plus the requests of each user outside every window.
fn attribute(ops: &[Op], requests: &[ApiRequest]) -> (BTreeMap<OpKind, Counts>, BTreeMap<String, Counts>) {
    let mut inside: BTreeMap<OpKind, Counts> = BTreeMap::new();
    let mut outside: BTreeMap<String, Counts> = BTreeMap::new();
    for r in requests {
        let op = ops
            .iter()
            .find(|o| o.sys.user() == r.user && o.start_us <= r.at_us && r.at_us <= o.end_us);
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
                    sudo tools/test-k8s <target dir>/<host triple>/release/pod-bench"
            .into());
    }
    require_file(
        &opts.netattach,
        "scripts/build-release -p netattach -p netattach-bench, or pass --netattach PATH",
    )?;
    for (p, what) in [
        (&opts.multus, "multus"),
        (&opts.multus_shim, "multus-shim"),
        (&opts.multus_daemon, "multus-daemon"),
        (&opts.tools_bin.join("kubectl"), "control-plane"),
    ] {
        require_file(p, &format!("tools/build --only {what}"))?;
    }
    install_signal_handlers();
    println!("pod-bench: netattach {}", opts.netattach.display());
    println!("           multus    {} (thin)", opts.multus.display());
    println!(
        "           multus    {} + {} (thick)",
        opts.multus_shim.display(),
        opts.multus_daemon.display()
    );

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
    println!("  creating node {NODE}, namespace {NS}, NADs, pods and Multus' service accounts");
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
        for sys in SYSTEMS {
            for j in 0..opts.pods {
                objects.push(pod_object(&pod_name(sys, nads, j), nads));
            }
        }
    }
    kubectl.apply(objects)?;
    let token = |sa: &str| -> Result<String, Error> {
        Ok(kubectl
            .run(&["create", "token", sa, "-n", NS, "--duration", "2h"], None)?
            .trim()
            .to_string())
    };
    let thick_token = token(THICK_SA)?;
    let token = token(THIN_SA)?;
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
    let thick_setup = ThickSetup {
        exe: &opts.multus_daemon,
        dir: tmp.path().join("thick"),
        bin: &bin,
        cluster: &cluster,
        token: &thick_token,
        ca: &testenv_dir.join("pki/ca.crt"),
        api_port,
    };
    let t0 = Instant::now();
    let (thick_daemon, thick_conf) = thick_setup.start(&node_netns)?;
    println!(
        "  multus-daemon pid {} ready after {} ms (healthz answered, 00-multus.conf written)",
        thick_daemon.pid(),
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
        del_swallows_errors: false,
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
        cni_path: cni_path.clone(),
        del_swallows_errors: false,
    };
    // Multus thick: the shim gets the 00-multus.conf the daemon generated (what a runtime reads);
    // the daemon overrides it key by key with its daemon-config.json and runs the delegates.
    let thick = Meta {
        exe: opts.multus_shim.clone(),
        conf: thick_conf,
        cni_path,
        del_swallows_errors: true,
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
        Sys::Thin => &multus,
        Sys::Thick => &thick,
    };

    let mut ops: Vec<Op> = Vec::new();
    let rss_idle = daemon.rss();
    let thick_rss_idle = thick_daemon.rss();

    // --- interleaved sequential ADD+DEL --------------------------------------------------------
    let pods: BTreeMap<(Sys, usize), Vec<PodRef>> = {
        let mut m = BTreeMap::new();
        for nads in CONFIGS {
            for sys in SYSTEMS {
                let v = (0..opts.pods)
                    .map(|j| pod_ref(&mut pod_ns, &pod_name(sys, nads, j)))
                    .collect::<Result<Vec<_>, _>>()?;
                m.insert((sys, nads), v);
            }
        }
        m
    };
    node_netns.run(|| -> Result<(), Error> {
        // The daemons' caches must hold the pods first (netattach's shim returns code 11 until
        // it does; multus-daemon would fall back to a GET after 2.5 s of polling its cache).
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
                // Each system goes first, second and third equally often.
                let mut order = SYSTEMS;
                order.rotate_left(i % SYSTEMS.len());
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
                        "    [{:>5.1}s] {}/{}: ADD p50 {} / {} / {}, DEL p50 {} / {} / {} \
                         (netattach / thin / thick)",
                        started.elapsed().as_secs_f64(),
                        done - opts.warmup,
                        opts.iterations,
                        p50(Sys::Netattach, "ADD"),
                        p50(Sys::Thin, "ADD"),
                        p50(Sys::Thick, "ADD"),
                        p50(Sys::Netattach, "DEL"),
                        p50(Sys::Thin, "DEL"),
                        p50(Sys::Thick, "DEL"),
                    );
                }
            }
        }
        Ok(())
    })??;
    let rss_after_seq = daemon.rss();
    let thick_rss_after_seq = thick_daemon.rss();

    // --- burst -------------------------------------------------------------------------------
    let mut bursts: Vec<(Sys, Burst)> = Vec::new();
    if opts.burst > 0 {
        println!(
            "  burst: {} pods (1 NAD) created; for each daemon (netattach, then multus-thick) {} concurrent \
             ADDs, then {} concurrent DELs",
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
        for (sys, d) in [(Sys::Netattach, &daemon), (Sys::Thick, &thick_daemon)] {
            check_interrupted()?;
            let b = burst(sys, meta_of(sys), d, &node_netns, &burst_pods, &mut ops)?;
            println!(
                "    {}: ADD wall {:.2} s, DEL wall {:.2} s, {} failed",
                sys.label(),
                b.wall.first().copied().unwrap_or_default().as_secs_f64(),
                b.wall.get(1).copied().unwrap_or_default().as_secs_f64(),
                b.failures.len()
            );
            bursts.push((sys, b));
        }
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
    let thick_cni_dir = thick_setup.cni_dir();
    for (what, dir) in [
        ("multus scratch cache", multus_cni_dir.clone()),
        ("multus libcni results", multus_cni_dir.join("results")),
        ("multus-thick scratch cache", thick_cni_dir.clone()),
        ("multus-thick libcni results", thick_cni_dir.join("results")),
        ("netattach records", tmp.path().join("netattach-state")),
    ] {
        let left = files(&dir);
        if !left.is_empty() {
            leftovers.push(format!("{what}: {left:?}"));
        }
    }

    // --- API requests --------------------------------------------------------------------------
    std::thread::sleep(Duration::from_secs(1));
    let users: Vec<&str> = SYSTEMS.iter().map(|s| s.user()).collect();
    let requests = read_audit(&audit_log, &users, 0)?;
    let (inside, outside) = attribute(&ops, &requests);

    // --- report ------------------------------------------------------------------------------
    println!();
    println!(
        "{:<7} {:<4} {:>13} {:>10} {:>10} {:>13} {:>10} {:>10} {:>7} {:>7} {:>8} {:>8}",
        "pods",
        "op",
        "netattach p50",
        "thin p50",
        "thick p50",
        "netattach p90",
        "thin p90",
        "thick p90",
        "ratio50",
        "ratio90",
        "rthick50",
        "rthick90"
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
            let p = |sys: Sys, q: f64| percentile(&durations(sys, &scenario, verb), q);
            let (n50, t50, k50) = (p(Sys::Netattach, 0.5), p(Sys::Thin, 0.5), p(Sys::Thick, 0.5));
            let (n90, t90, k90) = (p(Sys::Netattach, 0.9), p(Sys::Thin, 0.9), p(Sys::Thick, 0.9));
            println!(
                "{:<7} {:<4} {:>13} {:>10} {:>10} {:>13} {:>10} {:>10} {:>7.2} {:>7.2} {:>8.2} {:>8.2}",
                scenario,
                verb,
                ms(n50),
                ms(t50),
                ms(k50),
                ms(n90),
                ms(t90),
                ms(k90),
                ratio(n50, t50),
                ratio(n90, t90),
                ratio(n50, k50),
                ratio(n90, k90)
            );
        }
    }
    println!(
        "  ({} measured ADD+DEL per system and pod shape; ratio = netattach / multus thin, target ADD \
         ratio50 <= 0.30; rthick = netattach / multus thick)",
        opts.iterations
    );
    println!();
    println!(
        "{:<7} {:<4} {:>13} {:>18} {:>13} {:>14} {:>7} {:>7}",
        "pods",
        "op",
        "delegates p50",
        "netattach overhead",
        "thin overhead",
        "thick overhead",
        "ratio",
        "rthick"
    );
    for nads in CONFIGS {
        let scenario = format!("{nads} NAD");
        for verb in ["ADD", "DEL"] {
            let floor = percentile(bare_times.get(&(nads, verb)).map_or(&[][..], Vec::as_slice), 0.5);
            let over = |sys: Sys| percentile(&durations(sys, &scenario, verb), 0.5).saturating_sub(floor);
            let (a, b, c) = (over(Sys::Netattach), over(Sys::Thin), over(Sys::Thick));
            println!(
                "{:<7} {:<4} {:>13} {:>18} {:>13} {:>14} {:>7.2} {:>7.2}",
                scenario,
                verb,
                ms(floor),
                ms(a),
                ms(b),
                ms(c),
                ratio(a, b),
                ratio(a, c)
            );
        }
    }
    println!(
        "  (delegates = the same macvlan + whereabouts processes run directly, without a meta-plugin; \
         overhead = meta p50 - delegates p50)"
    );
    println!();
    println!(
        "API requests per pod operation (apiserver audit log; users {}):",
        users.join(", ")
    );
    let count_ops = |sys: Sys, scenario: &str, verb: &str| {
        ops.iter()
            .filter(|o| o.sys == sys && o.scenario == scenario && o.verb == verb)
            .count()
    };
    for nads in CONFIGS {
        let scenario = format!("{nads} NAD");
        for verb in ["ADD", "DEL"] {
            for sys in SYSTEMS {
                println!(
                    "  {:<6} {:<4} {:<12} {}",
                    scenario,
                    verb,
                    sys.label(),
                    describe_counts(
                        inside.get(&(sys, scenario.clone(), verb)),
                        count_ops(sys, &scenario, verb)
                    )
                );
            }
        }
    }
    for (sys, _) in &bursts {
        for verb in ["ADD", "DEL"] {
            println!(
                "  {:<6} {:<4} {:<12} {}",
                "burst",
                verb,
                sys.label(),
                describe_counts(
                    inside.get(&(*sys, "burst".to_string(), verb)),
                    count_ops(*sys, "burst", verb)
                )
            );
        }
    }
    for (user, counts) in &outside {
        let list: Vec<String> = counts.iter().map(|(w, n)| format!("{w} ×{n}")).collect();
        println!("  outside any operation, {user}: {}", list.join(", "));
    }
    println!("  (target for netattach: no API read and at most 1 write per ADD)");
    println!();
    println!("daemon RSS (VmRSS; the daemon process alone, not the delegates it runs):");
    for (label, idle, seq) in [
        ("netattach daemon", rss_idle, rss_after_seq),
        ("multus-daemon", thick_rss_idle, thick_rss_after_seq),
    ] {
        println!(
            "  {label:<16} idle after sync {}, after the sequential runs {} (VmHWM so far {})",
            mib(idle.0),
            mib(seq.0),
            mib(seq.1)
        );
    }
    if !bursts.is_empty() {
        println!(
            "burst of {} concurrent ADDs, then as many concurrent DELs:",
            opts.burst
        );
    }
    for (sys, b) in &bursts {
        let adds = durations(*sys, "burst", "ADD");
        let dels = durations(*sys, "burst", "DEL");
        let label = match sys {
            Sys::Thick => "multus-daemon",
            _ => "netattach daemon",
        };
        println!(
            "  {label:<16} VmRSS before {}, peak sampled {}, VmHWM {} (after DELs: VmRSS {})",
            mib(b.before.0),
            mib(b.peak),
            mib(b.after.1),
            mib(b.after.0)
        );
        println!(
            "  {:<16} ADD wall {:.2} s, per-ADD p50 {} p90 {} max {}; DEL wall {:.2} s, p50 {} p90 {}; \
             failures {}",
            "",
            b.wall.first().copied().unwrap_or_default().as_secs_f64(),
            ms(percentile(&adds, 0.5)),
            ms(percentile(&adds, 0.9)),
            ms(percentile(&adds, 1.0)),
            b.wall.get(1).copied().unwrap_or_default().as_secs_f64(),
            ms(percentile(&dels, 0.5)),
            ms(percentile(&dels, 0.9)),
            b.failures.len()
        );
        for f in b.failures.iter().take(5) {
            println!("    {f}");
        }
    }
    println!("  (targets for netattach's daemon: idle <= 20 MiB, burst <= 40 MiB)");
    // What multus-daemon logged at level error (it answers some failures with success: DEL).
    let thick_errors: Vec<String> = std::fs::read_to_string(thick_setup.log())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("[error]") || l.contains("[panic]"))
        .map(str::to_string)
        .collect();
    if !thick_errors.is_empty() {
        println!();
        println!(
            "multus-daemon logged {} errors ({}), the first:",
            thick_errors.len(),
            thick_setup.log().display()
        );
        for l in thick_errors.iter().take(5) {
            println!("    {l}");
        }
    }
    if !leftovers.is_empty() {
        println!();
        for l in &leftovers {
            println!("LEFT BEHIND: {l}");
        }
        return Err(format!("{} kinds of leftovers after DEL", leftovers.len()).into());
    }
    let failed: usize = bursts.iter().map(|(_, b)| b.failures.len()).sum();
    if failed > 0 {
        return Err(format!("{failed} burst operations failed").into());
    }
    drop(pod_ns);
    drop(thick_daemon);
    drop(daemon);
    drop(switch);
    drop(node);
    Ok(())
}
