//! `ipam-bench`: a burst of IPAM ADDs from many nodes into one cluster-wide pool, upstream
//! whereabouts (v0.9.2, `target/tools/bin/whereabouts`) against netattach's `whereabouts` face,
//! side by side on one `tools/testenv` control plane. N pods (default 100, 500 and 1000) are
//! spread over 10 simulated nodes; each "pod" is one IPAM ADD exactly as a CNI runtime (or the
//! macvlan plugin) invokes an IPAM plugin: the plugin executable with `CNI_COMMAND=ADD`, the
//! pod's `CNI_ARGS` and the macvlan network config (whereabouts `ipam` section, one /20 pool) on
//! stdin. All pods of a node start at once, at most `--per-node-parallel` processes per node.
//! netattach runs twice: through each node's `netattach daemon` (IPAM key `daemon_socket`: the
//! daemon batches a node's concurrent requests into one pool write) and direct (each process
//! writes the pool itself). It reports wall time, allocations per second, ADD latency, failures,
//! duplicate addresses, API requests (from the apiserver audit log), then releases everything
//! (DEL, measured too) and checks nothing leaked. Before the systems, an "API floor" creates N
//! bare OverlappingRangeIPReservations at the same concurrency — the one write every
//! allocation needs — to show the most any whereabouts-compatible IPAM could do here. Needs
//! root. See `bench/README.md`.
//!
//! Network safety: IPAM touches no interface. The only network object this program creates is
//! one empty network namespace (`nib-<pid>-0`, the `CNI_NETNS` of every call, deleted at exit);
//! addresses come only from 198.18.16.0/20 (inside 198.18.0.0/15); the apiserver and the daemons'
//! metrics listen on loopback only. Daemons, temp dirs, the namespace and the Kubernetes objects
//! (or the whole testenv instance when this program started it) are removed on normal exit, on
//! error and on Ctrl-C.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

// Shared with the other benches; not every helper is used here.
#[allow(dead_code)]
#[path = "../common.rs"]
mod common;

#[allow(dead_code)]
#[path = "../testenv.rs"]
mod testenv;

use common::{
    Error, INTERRUPTED, Ns, install_faces, percentile, process_cpu, reaped_children_cpu, require_file,
    sweep_stale,
};
use testenv::{Kubectl, Testenv, now_us, read_audit, repo_root};

/// The Kubernetes namespace of the pool, its reservations and whereabouts' Lease: the context
/// namespace of the per-node kubeconfigs this program writes (whereabouts and netattach both
/// keep their objects in the kubeconfig's namespace). Also the pods' namespace in `CNI_ARGS`.
const NS: &str = "ipam-bench";
/// The one pool: 4094 usable addresses, inside 198.18.0.0/15.
const RANGE: &str = "198.18.16.0/20";
const MAX_PODS: usize = 4000;
const IFNAME: &str = "net1";
/// The network name of the config (`name`).
const NET_NAME: &str = "ipam-bench";
/// What the progress lines print at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

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

/// The compared systems.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Sys {
    /// Upstream whereabouts.
    Whereabouts,
    /// netattach's `whereabouts` face through the node daemon (`daemon_socket`).
    Netattach,
    /// netattach's `whereabouts` face writing the pool itself.
    NetattachDirect,
}

impl Sys {
    const ALL: [Sys; 3] = [Sys::Whereabouts, Sys::Netattach, Sys::NetattachDirect];

    fn arg(self) -> &'static str {
        match self {
            Sys::Whereabouts => "whereabouts",
            Sys::Netattach => "netattach",
            Sys::NetattachDirect => "netattach-direct",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Sys::Whereabouts => "whereabouts",
            Sys::Netattach => "netattach (daemon)",
            Sys::NetattachDirect => "netattach (direct)",
        }
    }
    /// Prefix of pod names and container ids.
    fn prefix(self) -> &'static str {
        match self {
            Sys::Whereabouts => "wb",
            Sys::Netattach => "nd",
            Sys::NetattachDirect => "nx",
        }
    }
}

struct Opts {
    netattach: PathBuf,
    whereabouts: PathBuf,
    tools_bin: PathBuf,
    sizes: Vec<usize>,
    systems: Vec<Sys>,
    nodes: usize,
    per_node_parallel: usize,
    timeout: Duration,
}

fn usage() -> &'static str {
    "usage: ipam-bench [--sizes N,N,..] [--systems whereabouts,netattach,netattach-direct] [--nodes N]\n\
     \x20                 [--per-node-parallel N] [--timeout SECONDS] [--netattach PATH]\n\
     \x20                 [--whereabouts PATH] [--tools-bin DIR]\n\
     \n\
     A burst of N IPAM ADDs spread over --nodes simulated nodes into one whereabouts pool\n\
     (198.18.16.0/20), then N DELs, per system: upstream whereabouts, netattach through its node\n\
     daemons (`daemon_socket`), netattach direct. On a tools/testenv control plane: the one named\n\
     by NETATTACH_TESTENV_DIR (it needs --nodes node identities), or a private instance started\n\
     and torn down by this program. Needs root.\n\
     Defaults: --sizes 100,500,1000 --systems whereabouts,netattach,netattach-direct --nodes 10\n\
     --per-node-parallel 20 --timeout 120 --netattach <dir of this program>/netattach\n\
     --whereabouts <tools-bin>/whereabouts --tools-bin <repo>/target/tools/bin"
}

fn parse_args() -> Result<Opts, Error> {
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut o = Opts {
        netattach: exe_dir.join("netattach"),
        whereabouts: PathBuf::new(),
        tools_bin: repo_root().join("target/tools/bin"),
        sizes: vec![100, 500, 1000],
        systems: Sys::ALL.to_vec(),
        nodes: 10,
        per_node_parallel: 20,
        timeout: Duration::from_secs(120),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()))
        };
        match a.as_str() {
            "--netattach" => o.netattach = PathBuf::from(val("--netattach")?),
            "--whereabouts" => o.whereabouts = PathBuf::from(val("--whereabouts")?),
            "--tools-bin" => o.tools_bin = PathBuf::from(val("--tools-bin")?),
            "--sizes" => {
                o.sizes = val("--sizes")?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--sizes: {e}; fix: a list like 100,500,1000"))?;
            }
            "--systems" => {
                let list = val("--systems")?;
                o.systems = Vec::new();
                for s in list.split(',').map(str::trim) {
                    let sys = Sys::ALL.into_iter().find(|x| x.arg() == s).ok_or_else(|| {
                        format!(
                            "--systems: unknown system {s:?}; fix: whereabouts, netattach, netattach-direct"
                        )
                    })?;
                    if !o.systems.contains(&sys) {
                        o.systems.push(sys);
                    }
                }
                o.systems.sort();
            }
            "--nodes" => o.nodes = val("--nodes")?.parse()?,
            "--per-node-parallel" => o.per_node_parallel = val("--per-node-parallel")?.parse()?,
            "--timeout" => o.timeout = Duration::from_secs_f64(val("--timeout")?.parse::<f64>()?),
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{}", usage()).into()),
        }
    }
    if o.whereabouts.as_os_str().is_empty() {
        o.whereabouts = o.tools_bin.join("whereabouts");
    }
    if o.sizes.is_empty() || o.sizes.iter().any(|&n| n == 0 || n > MAX_PODS) {
        return Err(format!("--sizes: every size must be 1..={MAX_PODS} (the pool is a /20)").into());
    }
    if o.systems.is_empty() {
        return Err("--systems: name at least one system".into());
    }
    if o.nodes == 0 || o.per_node_parallel == 0 || o.timeout.is_zero() {
        return Err("--nodes, --per-node-parallel and --timeout must be positive".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipam-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

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

/// Up to 4 descriptors per running plugin (pidfd, 3 pipes) and hundreds of them at once: raise
/// the soft limit of open files to the hard one.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running a plugin with a deadline

/// One plugin execution, timed from spawn to reap.
struct Exec {
    elapsed: Duration,
    ok: bool,
    /// Killed by this program after `--timeout`.
    timed_out: bool,
    stdout: String,
    stderr: String,
}

impl Exec {
    fn failed(msg: String) -> Exec {
        Exec {
            elapsed: Duration::ZERO,
            ok: false,
            timed_out: false,
            stdout: String::new(),
            stderr: msg,
        }
    }

    /// The error in a few words: the CNI error's `msg` (and `details`), else stderr.
    fn error(&self, timeout: Duration) -> String {
        if self.timed_out {
            return format!("killed by ipam-bench after --timeout {} s", timeout.as_secs_f64());
        }
        if let Ok(v) = serde_json::from_str::<Value>(&self.stdout)
            && let Some(msg) = v["msg"].as_str()
        {
            return match v["details"].as_str().filter(|d| !d.is_empty()) {
                Some(d) => format!("{msg}: {d}"),
                None => msg.to_string(),
            };
        }
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        text.trim().lines().last().unwrap_or("(no output)").to_string()
    }

    /// The IPv4 address of a successful ADD's result.
    fn address(&self) -> Option<Ipv4Addr> {
        let v: Value = serde_json::from_str(&self.stdout).ok()?;
        v["ips"][0]["address"].as_str()?.split('/').next()?.parse().ok()
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open(2) with a pid and no flags returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// SIGKILL through a pidfd: never hits a recycled pid.
fn pidfd_kill(fd: &OwnedFd) {
    // SAFETY: pidfd_send_signal(2) on a descriptor we own, no siginfo, no flags.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// Runs `cmd` with `stdin`, collecting stdout and stderr; killed after `timeout`.
fn exec_with_deadline(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Result<Exec, Error> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pidfd = match pidfd_open(child.id()) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("pidfd_open: {e}").into());
        }
    };
    if let Some(mut si) = child.stdin.take() {
        // A few hundred bytes: fits the pipe; a plugin that exits early gives EPIPE, ignored.
        let _ = si.write_all(stdin);
    }
    let mut outs: [Option<File>; 2] = [
        child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
        child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
    ];
    let mut bufs: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let deadline = start + timeout;
    let (mut exited, mut timed_out) = (false, false);
    while !exited || outs.iter().any(Option::is_some) {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
        if !exited {
            fds.push(libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        for f in outs.iter().flatten() {
            fds.push(libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let wait_ms: libc::c_int = if exited {
            // Pipes still open after exit: only a grandchild could hold them; give it a second.
            1000
        } else if timed_out {
            -1
        } else {
            let left = deadline.saturating_duration_since(Instant::now()).as_millis();
            libc::c_int::try_from(left).unwrap_or(libc::c_int::MAX)
        };
        let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
        // SAFETY: poll(2) on a live, correctly sized array of pollfd.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), nfds, wait_ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            pidfd_kill(&pidfd);
            let _ = child.wait();
            return Err(format!("poll: {e}").into());
        }
        if r == 0 {
            if exited {
                break;
            }
            pidfd_kill(&pidfd);
            timed_out = true;
            continue;
        }
        for p in &fds {
            if p.revents == 0 {
                continue;
            }
            if p.fd == pidfd.as_raw_fd() {
                exited = true;
                continue;
            }
            for (slot, buf) in outs.iter_mut().zip(bufs.iter_mut()) {
                if let Some(f) = slot
                    && f.as_raw_fd() == p.fd
                {
                    let mut chunk = [0u8; 8192];
                    match f.read(&mut chunk) {
                        Ok(0) => *slot = None,
                        Ok(m) => buf.extend_from_slice(&chunk[..m]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => *slot = None,
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    let [out, err] = bufs;
    Ok(Exec {
        elapsed: start.elapsed(),
        ok: status.success() && !timed_out,
        timed_out,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// The plugins and the pods

/// A pod as the runtime knows it.
struct Pod {
    name: String,
    uid: String,
    container_id: String,
    /// Index of its node.
    node: usize,
}

impl Pod {
    fn new(sys: Sys, n: usize, i: usize, node: usize) -> Pod {
        Pod {
            name: format!("{}-{n}-{i}", sys.prefix()),
            uid: format!("00000000-0000-4000-8000-{:04x}{:08x}", n, i),
            container_id: format!("ipambench{}{n:04}x{i:04}", sys.prefix()),
            node,
        }
    }

    fn podref(&self) -> String {
        format!("{NS}/{}", self.name)
    }

    /// The Pod object: bound to its node (there is no kubelet), tolerating the taints the
    /// node lifecycle controller puts on nodes that never report.
    fn object(&self, node: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": self.name, "namespace": NS},
            "spec": {"nodeName": node, "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "c", "image": "registry.invalid/pause:1"}]}
        })
    }
}

/// Creates the pods (in chunks) and fills in their UIDs.
fn create_pods(kubectl: &Kubectl, nodes: &[(String, PathBuf)], pods: &mut [&mut Pod]) -> Result<(), Error> {
    for chunk in pods.chunks(250) {
        kubectl.apply(
            chunk
                .iter()
                .map(|p| p.object(nodes.get(p.node).map_or("", |(n, _)| n.as_str())))
                .collect(),
        )?;
    }
    let v: Value = serde_json::from_str(&kubectl.run(&["get", "pods", "-n", NS, "-o", "json"], None)?)?;
    let uids: BTreeMap<&str, &str> = v["items"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|p| Some((p["metadata"]["name"].as_str()?, p["metadata"]["uid"].as_str()?)))
        .collect();
    for p in pods.iter_mut() {
        p.uid = uids
            .get(p.name.as_str())
            .ok_or_else(|| format!("pod {NS}/{} was not created", p.name))?
            .to_string();
    }
    Ok(())
}

/// Deletes every pod of `NS` (no kubelet: forced) and waits until they are gone, so the next
/// run does not share the API server with the deletions. (`kubectl delete --wait` waits for
/// one pod after the other: minutes for a thousand.)
fn delete_pods(kubectl: &Kubectl) -> Result<(), Error> {
    kubectl.force_delete_pods(NS)?;
    wait_none_left(kubectl, "pods")
}

/// Waits until `NS` holds no object of `resource` (60 s at most). Polled: `kubectl delete
/// --wait` can miss the last deletion and wait for good.
fn wait_none_left(kubectl: &Kubectl, resource: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kubectl
        .run(&["get", resource, "-n", NS, "-o", "name"], None)?
        .trim()
        .is_empty()
    {
        if Instant::now() > deadline {
            return Err(format!("the {resource} of {NS} were not gone 60 s after their deletion").into());
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// An IPAM plugin executable and its network config per node.
struct Plugin {
    exe: PathBuf,
    cni_path: String,
    /// The network config on stdin, per node (each names its node's kubeconfig or daemon).
    confs: Vec<Vec<u8>>,
}

impl Plugin {
    /// Runs `verb` for `pod` as a runtime does.
    fn exec(&self, verb: &str, pod: &Pod, netns: &Path, timeout: Duration) -> Exec {
        let conf = self.confs.get(pod.node).map_or(&[][..], Vec::as_slice);
        let mut cmd = Command::new(&self.exe);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                    pod.name, pod.container_id, pod.uid
                ),
            );
        exec_with_deadline(&mut cmd, conf, timeout)
            .unwrap_or_else(|e| Exec::failed(format!("running {}: {e}", self.exe.display())))
    }
}

/// The macvlan network config whose `ipam` section an IPAM plugin gets (the NAD's config). The
/// kubeconfig comes from the node's flat file (`configuration_path`), as K3s NADs name it.
fn net_conf(flat_file: &Path, daemon_socket: Option<String>) -> Value {
    let mut ipam = json!({"type": "whereabouts", "range": RANGE,
                          "configuration_path": flat_file.display().to_string()});
    if let Some(s) = daemon_socket {
        ipam["daemon_socket"] = json!(s);
    }
    json!({"cniVersion": "1.0.0", "name": NET_NAME, "type": "macvlan", "master": "stor0",
           "mode": "bridge", "ipam": ipam})
}

/// The whereabouts flat file of a node, as whereabouts' install script writes it
/// (`whereabouts.d/whereabouts.conf`). Upstream v0.9.2 fails every call with "config file not
/// found" without one.
fn write_flat_file(dir: &Path, kubeconfig: &Path) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("whereabouts.conf");
    let conf = json!({"datastore": "kubernetes", "configuration_path": dir.display().to_string(),
                      "kubernetes": {"kubeconfig": kubeconfig.display().to_string()},
                      "reconciler_cron_expression": "30 4 * * *"});
    std::fs::write(&path, serde_json::to_vec_pretty(&conf)?)?;
    Ok(path)
}

/// The node's kubeconfig with `NS` as its context namespace (written 0600 to `dst`).
fn namespaced_kubeconfig(src: &Path, dst: &Path) -> Result<(), Error> {
    let text = std::fs::read_to_string(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let from = "    namespace: default\n";
    if !text.contains(from) {
        return Err(format!(
            "{}: no `namespace: default` line in its context (not a tools/testenv kubeconfig?)",
            src.display()
        )
        .into());
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dst)?;
    f.write_all(text.replace(from, &format!("    namespace: {NS}\n")).as_bytes())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The node daemons

struct Daemons {
    procs: Vec<(Child, PathBuf)>,
    /// Each daemon's metrics address.
    metrics: Vec<String>,
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Daemons {
    fn socket(dir: &Path, node: &str) -> PathBuf {
        dir.join(format!("{node}.sock"))
    }

    /// Starts `netattach daemon` for every node (socket, ready file and log in `dir`) and
    /// waits until each is ready.
    fn start(netattach: &Path, dir: &Path, nodes: &[(String, PathBuf)]) -> Result<Daemons, Error> {
        let mut d = Daemons {
            procs: Vec::new(),
            metrics: Vec::new(),
        };
        let t0 = Instant::now();
        for (node, kubeconfig) in nodes {
            let ready = dir.join(format!("{node}.ready"));
            let socket = Daemons::socket(dir, node);
            let _ = std::fs::remove_file(&ready);
            let _ = std::fs::remove_file(&socket);
            let log_path = dir.join(format!("{node}.log"));
            let log = File::create(&log_path)?;
            let child = Command::new(netattach)
                .arg("daemon")
                .args(["--node", node, "--kubeconfig"])
                .arg(kubeconfig)
                .arg("--socket")
                .arg(&socket)
                .arg("--ready-file")
                .arg(&ready)
                .args(["--metrics-addr", "127.0.0.1:0"])
                .args(["--ipam-namespace", NS, "--ipam-queue-dir"])
                .arg(dir.join(format!("{node}.queue")))
                .env_remove("CNI_COMMAND")
                .env_remove("KUBECONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("spawn {} daemon: {e}", netattach.display()))?;
            d.procs.push((child, log_path));
        }
        for ((node, _), (child, log)) in nodes.iter().zip(d.procs.iter_mut()) {
            let ready = dir.join(format!("{node}.ready"));
            while !ready.exists() {
                if let Some(status) = child.try_wait()? {
                    return Err(format!("the daemon of {node} exited ({status}):\n{}", log_tail(log)).into());
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    return Err(
                        format!("the daemon of {node} was not ready in 30 s:\n{}", log_tail(log)).into(),
                    );
                }
                check_interrupted()?;
                std::thread::sleep(Duration::from_millis(20));
            }
            // The metrics port the daemon picked (port 0: no race for a port chosen up front).
            let text = std::fs::read_to_string(&ready)?;
            let metrics = text
                .lines()
                .find_map(|l| l.strip_prefix("metrics="))
                .ok_or_else(|| format!("the ready file of {node} names no metrics address:\n{text}"))?;
            d.metrics.push(metrics.to_string());
        }
        Ok(d)
    }
}

impl Daemons {
    /// CPU time the daemons used so far.
    fn cpu(&self) -> Duration {
        self.procs.iter().filter_map(|(c, _)| process_cpu(c.id())).sum()
    }

    /// The IPAM engine counters of every daemon's /metrics, summed over the daemons (the
    /// `largest_batch` gauge: the largest); unreachable daemons are left out.
    fn engine_counters(&self) -> BTreeMap<String, u64> {
        let mut sum: BTreeMap<String, u64> = BTreeMap::new();
        for addr in &self.metrics {
            let Ok(body) = http_get(addr, "/metrics") else {
                continue;
            };
            for line in body.lines().filter(|l| l.starts_with("netattach_ipam_")) {
                let (Some(name), Some(value)) = (
                    line.split(['{', ' ']).next(),
                    line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
                ) else {
                    continue;
                };
                let name = name.trim_start_matches("netattach_ipam_").to_string();
                // Counters are whole numbers; the float parse only accepts "1e3"-style output.
                let value = value as u64;
                let slot = sum.entry(name.clone()).or_default();
                *slot = if name == "largest_batch" {
                    (*slot).max(value)
                } else {
                    *slot + value
                };
            }
        }
        sum
    }
}

/// A plain HTTP/1.0 GET on loopback; the body.
fn http_get(addr: &str, path: &str) -> Result<String, Error> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// CPU time of the control plane, the daemons and the plugin processes, for a phase.
struct CpuSample {
    apiserver: Option<Duration>,
    etcd: Option<Duration>,
    daemons: Duration,
    plugins: Duration,
}

impl CpuSample {
    fn take(env: &Env, daemons: Option<&Daemons>) -> CpuSample {
        CpuSample {
            apiserver: env.apiserver_pid.and_then(process_cpu),
            etcd: env.etcd_pid.and_then(process_cpu),
            daemons: daemons.map(Daemons::cpu).unwrap_or_default(),
            plugins: reaped_children_cpu(),
        }
    }

    /// "kube-apiserver 3.1 s, etcd 0.4 s, ..." for the time since `before`.
    fn since(&self, before: &CpuSample) -> String {
        let d = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.1} s", a.saturating_sub(b).as_secs_f64()),
            _ => "?".into(),
        };
        format!(
            "kube-apiserver {}, etcd {}, node daemons {:.1} s, plugin processes {:.1} s",
            d(self.apiserver, before.apiserver),
            d(self.etcd, before.etcd),
            self.daemons.saturating_sub(before.daemons).as_secs_f64(),
            self.plugins.saturating_sub(before.plugins).as_secs_f64()
        )
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for (child, _) in &self.procs {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) on our own, not yet reaped child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (child, _) in &mut self.procs {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pool as the API server holds it

/// The whereabouts objects of `NS`.
#[derive(Default)]
struct PoolState {
    /// (address, container id, podref) of every allocation in every pool.
    allocations: Vec<(Ipv4Addr, String, String)>,
    /// (name, podref) of every OverlappingRangeIPReservation.
    reservations: Vec<(String, String)>,
    /// Names of the pools with allocations.
    busy_pools: Vec<String>,
}

fn pool_state(kubectl: &Kubectl) -> Result<PoolState, Error> {
    let pools: Value = serde_json::from_str(&kubectl.run(
        &["get", "ippools.whereabouts.cni.cncf.io", "-n", NS, "-o", "json"],
        None,
    )?)?;
    let mut st = PoolState::default();
    for p in pools["items"].as_array().map_or(&[][..], Vec::as_slice) {
        let range = p["spec"]["range"].as_str().unwrap_or_default();
        let base: Ipv4Addr = range
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("IPPool with range {range:?}: not IPv4"))?;
        let Some(allocs) = p["spec"]["allocations"].as_object() else {
            continue;
        };
        if !allocs.is_empty() {
            st.busy_pools
                .push(p["metadata"]["name"].as_str().unwrap_or_default().to_string());
        }
        for (off, a) in allocs {
            let off: u32 = off.parse().map_err(|_| format!("IPPool offset {off:?}"))?;
            st.allocations.push((
                Ipv4Addr::from(u32::from(base).wrapping_add(off)),
                a["id"].as_str().unwrap_or_default().to_string(),
                a["podref"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    let orips: Value = serde_json::from_str(&kubectl.run(
        &[
            "get",
            "overlappingrangeipreservations.whereabouts.cni.cncf.io",
            "-n",
            NS,
            "-o",
            "json",
        ],
        None,
    )?)?;
    for o in orips["items"].as_array().map_or(&[][..], Vec::as_slice) {
        st.reservations.push((
            o["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            o["spec"]["podref"].as_str().unwrap_or_default().to_string(),
        ));
    }
    Ok(st)
}

/// Empties every pool and deletes every reservation of `NS` (after a leak, before the next run).
fn clear_pools(kubectl: &Kubectl, st: &PoolState) -> Result<(), Error> {
    for name in &st.busy_pools {
        kubectl.run(
            &[
                "patch",
                "ippools.whereabouts.cni.cncf.io",
                name,
                "-n",
                NS,
                "--type",
                "json",
                "-p",
                r#"[{"op":"replace","path":"/spec/allocations","value":{}}]"#,
            ],
            None,
        )?;
    }
    if !st.reservations.is_empty() {
        kubectl.run(
            &[
                "delete",
                "overlappingrangeipreservations.whereabouts.cni.cncf.io",
                "--all",
                "-n",
                NS,
            ],
            None,
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A burst

/// What a burst is run with.
struct Ctx<'a> {
    netns: &'a Path,
    nodes: usize,
    per_node_parallel: usize,
    timeout: Duration,
}

/// One burst of one verb.
struct Phase {
    wall: Duration,
    /// Per pod, in pod order (`None`: never started, after Ctrl-C).
    execs: Vec<Option<Exec>>,
    start_us: i64,
    end_us: i64,
    /// API requests of the node identities inside [start_us, end_us], by "verb resource".
    api: BTreeMap<String, usize>,
}

impl Phase {
    fn done(&self) -> impl Iterator<Item = &Exec> {
        self.execs.iter().flatten()
    }
    fn ok(&self) -> usize {
        self.done().filter(|e| e.ok).count()
    }
    fn failed(&self) -> usize {
        self.done().filter(|e| !e.ok).count()
    }
    fn latencies(&self) -> Vec<Duration> {
        self.done().map(|e| e.elapsed).collect()
    }
    fn api_total(&self) -> usize {
        self.api.values().sum()
    }
    /// Distinct errors with their counts, most frequent first.
    fn errors(&self, timeout: Duration) -> Vec<(String, usize)> {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for e in self.done().filter(|e| !e.ok) {
            let mut msg = if e.timed_out {
                e.error(timeout)
            } else {
                mask_details(&e.error(timeout))
            };
            if msg.len() > 240 {
                let mut cut = 240;
                while !msg.is_char_boundary(cut) {
                    cut -= 1;
                }
                msg.truncate(cut);
                msg.push('…');
            }
            *m.entry(msg).or_default() += 1;
        }
        let mut v: Vec<(String, usize)> = m.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }
}

/// `msg` with the details that differ between otherwise equal errors masked: IPv4 addresses
/// (not pool names like `198.18.16.0-20`) become `<ip>`, standalone numbers `N`.
fn mask_details(msg: &str) -> String {
    let chars: Vec<char> = msg.chars().collect();
    let mut out = String::with_capacity(msg.len());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
            i += 1;
        }
        let mut token: String = chars[start..i].iter().collect();
        let mut tail = String::new();
        while token.ends_with('.') {
            token.pop();
            tail.push('.');
        }
        let (prev, next) = (start.checked_sub(1).map(|p| chars[p]), chars.get(i).copied());
        let standalone = prev.is_none_or(|c| c == ' ' || c == '(') && next.is_none_or(|c| c == ' ');
        if token.parse::<Ipv4Addr>().is_ok() && next != Some('-') {
            out.push_str("<ip>");
        } else if standalone && token.chars().all(|c| c.is_ascii_digit()) {
            out.push('N');
        } else {
            out.push_str(&token);
        }
        out.push_str(&tail);
    }
    out
}

/// Runs `verb` for every pod: per node, all of its pods at once, at most `per_node_parallel`
/// processes at a time; every node at once.
fn burst(ctx: &Ctx, plugin: &Plugin, label: &str, verb: &str, pods: &[Pod]) -> Phase {
    let refs: Vec<&Pod> = pods.iter().collect();
    burst_refs(ctx, plugin, label, verb, &refs)
}

fn burst_refs(ctx: &Ctx, plugin: &Plugin, label: &str, verb: &str, pods: &[&Pod]) -> Phase {
    let by_node: Vec<Vec<usize>> = (0..ctx.nodes)
        .map(|k| (0..pods.len()).filter(|&i| pods[i].node == k).collect())
        .collect();
    let next: Vec<AtomicUsize> = (0..ctx.nodes).map(|_| AtomicUsize::new(0)).collect();
    let workers: usize = by_node.iter().map(|l| l.len().min(ctx.per_node_parallel)).sum();
    let barrier = Barrier::new(workers + 1);
    let results: Mutex<Vec<Option<Exec>>> = Mutex::new((0..pods.len()).map(|_| None).collect());
    let (done, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let finished = AtomicBool::new(false);
    let (start, start_us) = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (k, list) in by_node.iter().enumerate() {
            for _ in 0..list.len().min(ctx.per_node_parallel) {
                let (next, barrier, results, done, failed) = (&next[k], &barrier, &results, &done, &failed);
                handles.push(s.spawn(move || {
                    barrier.wait();
                    loop {
                        if INTERRUPTED.load(Ordering::SeqCst) {
                            break;
                        }
                        let j = next.fetch_add(1, Ordering::SeqCst);
                        let Some(&i) = list.get(j) else { break };
                        let e = plugin.exec(verb, pods[i], ctx.netns, ctx.timeout);
                        if !e.ok {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                        if let Ok(mut r) = results.lock() {
                            r[i] = Some(e);
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                }));
            }
        }
        let (start, start_us) = (Instant::now(), now_us());
        barrier.wait();
        let (finished, done, failed) = (&finished, &done, &failed);
        let progress = s.spawn(move || {
            let mut last = Instant::now();
            while !finished.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() >= PROGRESS_EVERY && !finished.load(Ordering::SeqCst) {
                    last = Instant::now();
                    println!(
                        "    [{:>6.1}s] {label} {verb} {}/{} done, {} failed",
                        start.elapsed().as_secs_f64(),
                        done.load(Ordering::SeqCst),
                        pods.len(),
                        failed.load(Ordering::SeqCst)
                    );
                }
            }
        });
        for h in handles {
            let _ = h.join();
        }
        finished.store(true, Ordering::SeqCst);
        let _ = progress.join();
        (start, start_us)
    });
    let wall = start.elapsed();
    let end_us = now_us();
    Phase {
        wall,
        execs: results.into_inner().unwrap_or_else(|p| p.into_inner()),
        start_us,
        end_us,
        api: BTreeMap::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// One system at one size

struct SysRun {
    sys: Sys,
    n: usize,
    /// Why the system was not measured.
    skipped: Option<String>,
    add: Option<Phase>,
    del: Option<Phase>,
    /// Addresses handed to two live pods, or held in the pool for another pod than the one
    /// they were returned to.
    duplicates: usize,
    /// Allocations and reservations left after every DEL.
    leaks: usize,
    notes: Vec<String>,
}

/// What every run shares.
struct Env<'a> {
    opts: &'a Opts,
    kubectl: &'a Kubectl,
    audit_log: PathBuf,
    users: Vec<String>,
    netns: PathBuf,
    daemon_dir: PathBuf,
    /// (node name, kubeconfig with context namespace `NS`).
    nodes: Vec<(String, PathBuf)>,
    plugins: BTreeMap<Sys, Plugin>,
    /// Why the daemon mode cannot run with this netattach binary (`None`: it can).
    daemon_unsupported: Option<String>,
    apiserver_pid: Option<u32>,
    etcd_pid: Option<u32>,
    /// The API server's URL (`https://127.0.0.1:<port>`).
    server: String,
}

/// Deletes the run's pods.
struct PodsGuard<'a>(&'a Kubectl);

impl Drop for PodsGuard<'_> {
    fn drop(&mut self) {
        // After Ctrl-C the namespace (shared testenv) or the whole instance goes anyway.
        if INTERRUPTED.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = delete_pods(self.0) {
            eprintln!("warning: deleting the pods: {e}");
        }
    }
}

fn ms(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn ensure_clean(env: &Env, what: &str) -> Result<(), Error> {
    let st = pool_state(env.kubectl)?;
    if !st.allocations.is_empty() || !st.reservations.is_empty() {
        println!(
            "    note: {} allocation(s) and {} reservation(s) left {what}; cleared",
            st.allocations.len(),
            st.reservations.len()
        );
        clear_pools(env.kubectl, &st)?;
    }
    Ok(())
}

fn run_system(env: &Env, sys: Sys, n: usize) -> Result<SysRun, Error> {
    let label = sys.label();
    let mut run = SysRun {
        sys,
        n,
        skipped: None,
        add: None,
        del: None,
        duplicates: 0,
        leaks: 0,
        notes: Vec::new(),
    };
    let plugin = env
        .plugins
        .get(&sys)
        .ok_or_else(|| format!("no plugin for {label}"))?;
    let ctx = Ctx {
        netns: &env.netns,
        nodes: env.nodes.len(),
        per_node_parallel: env.opts.per_node_parallel,
        timeout: env.opts.timeout,
    };
    if sys == Sys::Netattach
        && let Some(why) = &env.daemon_unsupported
    {
        println!("  {label}: skipped: {why}");
        run.skipped = Some(why.clone());
        return Ok(run);
    }

    // The pods exist, as under a kubelet (netattach's IPAM garbage collector frees the
    // addresses of pods that do not); whereabouts does not read them.
    let t = Instant::now();
    let mut pods: Vec<Pod> = (0..n).map(|i| Pod::new(sys, n, i, i % env.nodes.len())).collect();
    let mut warm = Pod {
        name: format!("{}-{n}-warmup", sys.prefix()),
        uid: String::new(),
        container_id: format!("ipambench{}{n:04}warmup", sys.prefix()),
        node: 0,
    };
    {
        let mut all: Vec<&mut Pod> = pods.iter_mut().collect();
        all.push(&mut warm);
        create_pods(env.kubectl, &env.nodes, &mut all)?;
    }
    let _pods_guard = PodsGuard(env.kubectl);
    println!("  {label}: {} pods created ({})", n + 1, ms(t.elapsed()));

    let _daemons = if sys == Sys::Netattach {
        let t = Instant::now();
        let d = Daemons::start(&env.opts.netattach, &env.daemon_dir, &env.nodes)?;
        println!(
            "  {label}: {} node daemons ready after {}",
            env.nodes.len(),
            ms(t.elapsed())
        );
        Some(d)
    } else {
        None
    };

    // Warm-up: creates the pool (and whereabouts' Lease) on the first run; not measured.
    let t = Instant::now();
    let add = plugin.exec("ADD", &warm, &env.netns, env.opts.timeout);
    let del = plugin.exec("DEL", &warm, &env.netns, env.opts.timeout);
    if !add.ok {
        return Err(format!(
            "{label}: warm-up ADD failed: {}\n{}",
            add.error(env.opts.timeout),
            add.stderr.trim()
        )
        .into());
    }
    if !del.ok {
        return Err(format!("{label}: warm-up DEL failed: {}", del.error(env.opts.timeout)).into());
    }
    ensure_clean(env, "after the warm-up")?;
    println!("  {label}: warm-up ADD+DEL ok ({})", ms(t.elapsed()));

    // --- ADD ---------------------------------------------------------------------------------
    println!(
        "  {label}: {n} ADDs on {} nodes ({} per node, at most {} at once per node)",
        env.nodes.len(),
        n.div_ceil(env.nodes.len()),
        env.opts.per_node_parallel
    );
    let cpu_before = CpuSample::take(env, _daemons.as_ref());
    let engine_before = _daemons.as_ref().map(Daemons::engine_counters);
    let add = burst(&ctx, plugin, label, "ADD", &pods);
    check_interrupted()?;
    let cpu = CpuSample::take(env, _daemons.as_ref()).since(&cpu_before);
    println!("    CPU during the ADDs: {cpu}");
    run.notes.push(format!("CPU during the ADD burst: {cpu}"));
    if let (Some(d), Some(before)) = (_daemons.as_ref(), engine_before) {
        let after = d.engine_counters();
        let delta = |k: &str| {
            after
                .get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(before.get(k).copied().unwrap_or(0))
        };
        let engine = format!(
            "{} batches of {} requests (largest {}), {} pool writes, {} conflicts (409), {} pool reads, {} rebases \
             on the watch's copy, {} entries carried in {} batches by other nodes' writes, {} writer claims \
             lost, {} transient errors",
            delta("batches_total"),
            delta("batched_requests_total"),
            after.get("largest_batch").copied().unwrap_or(0),
            delta("pool_writes_total"),
            delta("pool_conflicts_total"),
            delta("pool_reads_total"),
            delta("pool_rebases_total"),
            delta("carried_entries_total"),
            delta("carried_batches_total"),
            delta("writer_claims_lost_total"),
            delta("api_transient_errors_total"),
        );
        println!("    IPAM engines during the ADDs: {engine}");
        run.notes
            .push(format!("IPAM engines during the ADD burst: {engine}"));
    }
    let lat = add.latencies();
    println!(
        "    ADD: {}/{n} ok in {:.2} s ({:.1}/s), p50 {}, p99 {}, {} failed",
        add.ok(),
        add.wall.as_secs_f64(),
        add.ok() as f64 / add.wall.as_secs_f64().max(1e-9),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        add.failed()
    );

    // Duplicates: an address returned to two pods, or held in the pool for another pod (or not
    // at all) than the one it was returned to. netattach's daemon answers once an address's
    // reservation is created and writes the pool entry just after: the pool is read once it
    // holds an entry per successful ADD (or after 30 s), and how long after the last answer
    // that was is reported.
    let settling = Instant::now();
    let mut st = pool_state(env.kubectl)?;
    while st.allocations.len() < add.ok() && settling.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
        st = pool_state(env.kubectl)?;
    }
    let settled = settling.elapsed();
    println!(
        "    pool complete within {} after the last ADD answered ({} of {} entries)",
        ms(settled),
        st.allocations.len(),
        add.ok()
    );
    let in_pool: BTreeMap<Ipv4Addr, &str> = st
        .allocations
        .iter()
        .map(|(ip, _, podref)| (*ip, podref.as_str()))
        .collect();
    let mut returned: BTreeMap<Ipv4Addr, Vec<&Pod>> = BTreeMap::new();
    for (pod, e) in pods.iter().zip(&add.execs) {
        let Some(e) = e.as_ref().filter(|e| e.ok) else {
            continue;
        };
        match e.address() {
            Some(ip) => returned.entry(ip).or_default().push(pod),
            None => run.notes.push(format!(
                "{}: ADD succeeded without an IPv4 address: {}",
                pod.name,
                e.stdout.trim()
            )),
        }
    }
    for (ip, holders) in &returned {
        if holders.len() > 1 {
            run.duplicates += holders.len() - 1;
            let names: Vec<&str> = holders.iter().map(|p| p.name.as_str()).collect();
            run.notes
                .push(format!("DUPLICATE: {ip} returned to {}", names.join(", ")));
        }
        for p in holders {
            let want = p.podref();
            match in_pool.get(ip) {
                Some(r) if *r == want => {}
                other => {
                    run.duplicates += 1;
                    run.notes.push(format!(
                        "DUPLICATE RISK: {ip} returned to {want}, the pool holds it for {}",
                        other.map_or("nobody", |r| r)
                    ));
                }
            }
        }
    }
    let returned_count: usize = returned.values().map(Vec::len).sum();
    if st.allocations.len() != returned_count {
        run.notes.push(format!(
            "after the ADDs the pool held {} allocation(s) for {returned_count} successful ADD(s)",
            st.allocations.len()
        ));
    }
    println!(
        "    pool after the ADDs: {} allocation(s), {} reservation(s); {} duplicate(s)",
        st.allocations.len(),
        st.reservations.len(),
        run.duplicates
    );

    // --- DEL (every pod, as a runtime DELs after a failed ADD too) -----------------------------
    println!("  {label}: {n} DELs");
    let del = burst(&ctx, plugin, label, "DEL", &pods);
    check_interrupted()?;
    let lat = del.latencies();
    println!(
        "    DEL: {}/{n} ok in {:.2} s, p50 {}, p99 {}, {} failed",
        del.ok(),
        del.wall.as_secs_f64(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        del.failed()
    );
    // A runtime retries a failed DEL until it succeeds: up to 3 more rounds (not timed).
    let mut retry: Vec<usize> = (0..n)
        .filter(|&i| del.execs[i].as_ref().is_none_or(|e| !e.ok))
        .collect();
    for round in 1..=3 {
        if retry.is_empty() {
            break;
        }
        check_interrupted()?;
        let subset: Vec<&Pod> = retry.iter().map(|&i| &pods[i]).collect();
        let again = burst_refs(&ctx, plugin, label, "DEL", &subset);
        let still: Vec<usize> = retry
            .iter()
            .zip(&again.execs)
            .filter(|(_, e)| e.as_ref().is_none_or(|e| !e.ok))
            .map(|(&i, _)| i)
            .collect();
        println!(
            "    DEL retry {round}: {} of {} ok",
            retry.len() - still.len(),
            retry.len()
        );
        run.notes.push(format!(
            "DEL retry round {round} (as a runtime retries): {} of {} ok",
            retry.len() - still.len(),
            retry.len()
        ));
        retry = still;
    }
    let mut st = pool_state(env.kubectl)?;
    // The daemon queues a release that takes too long and answers the DEL at once; the queue
    // drains in the background. Give it a minute.
    let t = Instant::now();
    while sys == Sys::Netattach
        && (!st.allocations.is_empty() || !st.reservations.is_empty())
        && t.elapsed() < Duration::from_secs(60)
    {
        check_interrupted()?;
        std::thread::sleep(Duration::from_secs(2));
        st = pool_state(env.kubectl)?;
        if st.allocations.is_empty() && st.reservations.is_empty() {
            run.notes.push(format!(
                "the daemons' release queue emptied the pool {} after the last DEL",
                ms(t.elapsed())
            ));
        }
    }
    run.leaks = st.allocations.len() + st.reservations.len();
    if run.leaks > 0 {
        run.notes.push(format!(
            "LEAKED after every DEL: {} allocation(s) ({}), {} reservation(s)",
            st.allocations.len(),
            st.allocations
                .iter()
                .take(5)
                .map(|(ip, _, p)| format!("{ip} {p}"))
                .collect::<Vec<_>>()
                .join(", "),
            st.reservations.len()
        ));
        clear_pools(env.kubectl, &st)?;
    }
    println!(
        "    left after the DELs: {} allocation(s), {} reservation(s)",
        st.allocations.len(),
        st.reservations.len()
    );

    // --- API requests --------------------------------------------------------------------------
    std::thread::sleep(Duration::from_secs(1));
    let users: Vec<&str> = env.users.iter().map(String::as_str).collect();
    let requests = read_audit(&env.audit_log, &users, add.start_us)?;
    let mut phases = [add, del];
    for p in &mut phases {
        for r in requests
            .iter()
            .filter(|r| p.start_us <= r.at_us && r.at_us <= p.end_us)
        {
            *p.api.entry(r.what.clone()).or_default() += 1;
        }
    }
    let [add, del] = phases;
    run.add = Some(add);
    run.del = Some(del);
    Ok(run)
}

// ---------------------------------------------------------------------------------------------
// The report

/// The API server's ceiling for a burst of `n` allocations on this machine.
struct Floor {
    /// Reservations created (HTTP 201).
    created: usize,
    /// Requests in flight at once.
    parallel: usize,
    wall: Duration,
}

impl Floor {
    fn rate(&self) -> f64 {
        self.created as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Measures what no allocation can avoid: with `enable_overlapping_ranges` (whereabouts'
/// default, and this bench's config) every allocation creates one
/// OverlappingRangeIPReservation. `n` of them are created as a node identity, as many at a
/// time as the burst has plugins in flight (`nodes × per-node-parallel`), over HTTP/2 from a
/// single `curl --parallel` process — no pool read or write, no plugin process, no daemon.
/// Then they are deleted. The rate is an upper bound for any whereabouts-compatible IPAM
/// here.
fn api_floor(env: &Env, n: usize) -> Result<Floor, Error> {
    ensure_clean(env, "before the API floor")?;
    let (_, kubeconfig) = env.nodes.first().ok_or("no node identities")?;
    let text = std::fs::read_to_string(kubeconfig)?;
    let token = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .ok_or_else(|| format!("{}: no token", kubeconfig.display()))?
        .trim_matches('"');
    let parallel = env.nodes.len() * env.opts.per_node_parallel;
    let url = format!(
        "{}/apis/whereabouts.cni.cncf.io/v1alpha1/namespaces/{NS}/overlappingrangeipreservations",
        env.server
    );
    let first: Ipv4Addr = RANGE
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or("RANGE is not IPv4")?;
    let dir = tempfile::Builder::new().prefix("ipam-bench-floor-").tempdir()?;
    let config = dir.path().join("curl.conf");
    let mut conf = String::new();
    for k in 1..=n {
        let ip = Ipv4Addr::from(u32::from(first) + u32::try_from(k)?);
        let body = json!({
            "apiVersion": "whereabouts.cni.cncf.io/v1alpha1",
            "kind": "OverlappingRangeIPReservation",
            "metadata": {"name": ip.to_string()},
            "spec": {"containerid": format!("floor-{k}"), "podref": format!("{NS}/floor-{k}"), "ifname": IFNAME},
        });
        if k > 1 {
            conf.push_str("next\n");
        }
        conf.push_str(&format!(
            // Per-transfer options: `next` resets them.
            "url = \"{url}\"\ninsecure\nhttp2\nheader = \"Authorization: Bearer {token}\"\nheader = \"Content-Type: application/json\"\ndata = {}\noutput = \"/dev/null\"\nwrite-out = \"%{{http_code}}\\n\"\n",
            serde_json::to_string(&body.to_string())?
        ));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&config)?
        .write_all(conf.as_bytes())?;
    println!("  API floor: {n} reservation creates, {parallel} at a time (curl --parallel, HTTP/2)");
    let before = CpuSample::take(env, None);
    let started = Instant::now();
    let out = Command::new("curl")
        .args(["--silent", "--parallel", "--parallel-max"])
        .arg(parallel.to_string())
        .arg("--config")
        .arg(&config)
        .output()
        .map_err(|e| format!("curl (apt-get install curl): {e}"))?;
    let wall = started.elapsed();
    let cpu = CpuSample::take(env, None).since(&before);
    let codes = String::from_utf8_lossy(&out.stdout);
    let created = codes.lines().filter(|c| c.trim() == "201").count();
    println!(
        "    {created}/{n} created in {:.2} s ({:.1}/s); CPU: {cpu}",
        wall.as_secs_f64(),
        created as f64 / wall.as_secs_f64().max(1e-9)
    );
    env.kubectl.run(
        &[
            "delete",
            "overlappingrangeipreservations",
            "--all",
            "-n",
            NS,
            "--wait=false",
        ],
        None,
    )?;
    wait_none_left(env.kubectl, "overlappingrangeipreservations")?;
    if created != n {
        let mut other: BTreeMap<&str, usize> = BTreeMap::new();
        for c in codes.lines().map(str::trim).filter(|c| *c != "201") {
            *other.entry(c).or_default() += 1;
        }
        return Err(format!(
            "the API floor created {created} of {n} reservations (other HTTP codes: {other:?})"
        )
        .into());
    }
    Ok(Floor {
        created,
        parallel,
        wall,
    })
}

fn print_report(runs: &[SysRun], floor: &Floor, opts: &Opts) {
    let Some(first) = runs.first() else { return };
    let n = first.n;
    println!();
    println!(
        "N = {n}: {} pods per node on {} nodes (at most {} concurrent per node), one pool {RANGE}",
        n.div_ceil(opts.nodes),
        opts.nodes,
        opts.per_node_parallel
    );
    for (verb, rate) in [("ADD", "allocs/s"), ("DEL", "DELs/s")] {
        println!(
            "{:<20} {:>10} {:>9} {:>10} {:>10} {:>7} {:>6} {:>21}",
            "system",
            format!("{verb} wall"),
            rate,
            format!("{verb} p50"),
            format!("{verb} p99"),
            "failed",
            if verb == "ADD" { "dup" } else { "leaks" },
            "API requests"
        );
        for r in runs {
            let phase = if verb == "ADD" { &r.add } else { &r.del };
            let Some(p) = phase else {
                println!(
                    "{:<20} {}",
                    r.sys.label(),
                    r.skipped.as_deref().unwrap_or("not run")
                );
                continue;
            };
            let lat = p.latencies();
            let api = p.api_total();
            println!(
                "{:<20} {:>10} {:>9.1} {:>10} {:>10} {:>7} {:>6} {:>21}",
                r.sys.label(),
                format!("{:.2} s", p.wall.as_secs_f64()),
                p.ok() as f64 / p.wall.as_secs_f64().max(1e-9),
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.99)),
                p.failed(),
                if verb == "ADD" { r.duplicates } else { r.leaks },
                format!("{api} ({:.2}/pod)", api as f64 / n.max(1) as f64)
            );
        }
    }
    let rate = |s: Sys| {
        runs.iter()
            .find(|r| r.sys == s)
            .and_then(|r| r.add.as_ref())
            .map(|p| p.ok() as f64 / p.wall.as_secs_f64().max(1e-9))
    };
    println!(
        "{:<20} {:>10} {:>9.1}   (API floor: {} bare reservation creates, {} at a time, no pool write, no plugin)",
        "floor",
        format!("{:.2} s", floor.wall.as_secs_f64()),
        floor.rate(),
        floor.created,
        floor.parallel
    );
    if let Some(wb) = rate(Sys::Whereabouts).filter(|wb| *wb > 0.0) {
        println!(
            "floor / whereabouts: {:.1}x — no whereabouts-compatible IPAM with enable_overlapping_ranges allocates faster on this API server",
            floor.rate() / wb
        );
    }
    if let Some(wb) = rate(Sys::Whereabouts) {
        for s in [Sys::Netattach, Sys::NetattachDirect] {
            if let Some(na) = rate(s) {
                if wb > 0.0 {
                    println!(
                        "throughput {} / whereabouts: {:.1}x ({na:.1} vs {wb:.2} allocs/s)",
                        s.label(),
                        na / wb
                    );
                } else {
                    println!(
                        "throughput {} / whereabouts: n/a (whereabouts allocated nothing)",
                        s.label()
                    );
                }
            }
        }
    }
    println!("API requests by verb (node identities, inside the burst's window):");
    for r in runs {
        for (verb, phase) in [("ADD", &r.add), ("DEL", &r.del)] {
            let Some(p) = phase else { continue };
            let list: Vec<String> = p.api.iter().map(|(w, c)| format!("{w} {c}")).collect();
            println!(
                "  {:<20} {verb}: {}",
                r.sys.label(),
                if list.is_empty() {
                    "none".to_string()
                } else {
                    list.join(", ")
                }
            );
        }
    }
    for r in runs {
        for (verb, phase) in [("ADD", &r.add), ("DEL", &r.del)] {
            let Some(p) = phase else { continue };
            for (msg, count) in p.errors(opts.timeout).iter().take(4) {
                println!("  {} {verb} failed ×{count}: {msg}", r.sys.label());
            }
        }
        for note in r.notes.iter().take(10) {
            println!("  {}: {note}", r.sys.label());
        }
        if r.notes.len() > 10 {
            println!("  {}: ... {} more notes", r.sys.label(), r.notes.len() - 10);
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Whether this netattach can run the daemon mode: its `whereabouts` face accepts
/// `"daemon_socket": ""` (one direct ADD+DEL with `direct`'s config), and its daemon has the
/// IPAM flags. `Some(reason)` when not.
fn netattach_support(netattach: &Path, direct: &Plugin, netns: &Path) -> Result<Option<String>, Error> {
    let probe = Pod {
        name: "probe".into(),
        uid: String::new(),
        container_id: "ipambenchprobe".into(),
        node: 0,
    };
    let add = direct.exec("ADD", &probe, netns, Duration::from_secs(60));
    if !add.ok {
        let err = add.error(Duration::from_secs(60));
        if err.contains("daemon_socket") {
            return Ok(Some(
                "this netattach does not know the IPAM key `daemon_socket` (unknown key)".into(),
            ));
        }
        return Err(format!("probing netattach's whereabouts face (direct ADD): {err}").into());
    }
    let del = direct.exec("DEL", &probe, netns, Duration::from_secs(60));
    if !del.ok {
        return Err(format!(
            "probing netattach's whereabouts face (direct DEL): {}",
            del.error(Duration::from_secs(60))
        )
        .into());
    }
    let help = Command::new(netattach)
        .args(["daemon", "--help"])
        .env_remove("CNI_COMMAND")
        .output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    if !help.contains("--ipam-queue-dir") || !help.contains("--ipam-namespace") {
        return Ok(Some(
            "this `netattach daemon` has no --ipam-queue-dir/--ipam-namespace (it would queue releases \
             in /var/lib/netattach)"
                .into(),
        ));
    }
    Ok(None)
}

/// Deletes the bench's namespace from a borrowed testenv.
struct ApiObjects<'a> {
    kubectl: &'a Kubectl,
    shared: bool,
}

impl Drop for ApiObjects<'_> {
    fn drop(&mut self) {
        if self.shared {
            let _ = self.kubectl.run(
                &["delete", "namespace", NS, "--wait=false", "--ignore-not-found"],
                None,
            );
        }
    }
}

/// The first line whereabouts prints about itself (its version), if any.
fn plugin_about(exe: &Path) -> String {
    Command::new(exe)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or_default().trim().to_string()
        })
        .unwrap_or_default()
}

fn run() -> Result<(), Error> {
    let opts = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("must run as root (it creates a network namespace): \
                    sudo <target dir>/<host triple>/release/ipam-bench"
            .into());
    }
    require_file(
        &opts.netattach,
        "scripts/build-release -p netattach -p netattach-bench, or pass --netattach PATH",
    )?;
    for (p, what) in [
        (&opts.whereabouts, "whereabouts"),
        (&opts.tools_bin.join("kubectl"), "control-plane"),
    ] {
        require_file(p, &format!("tools/build --only {what}"))?;
    }
    install_signal_handlers();
    raise_nofile_limit();
    let about = plugin_about(&opts.whereabouts);
    println!(
        "ipam-bench: whereabouts {}{}",
        opts.whereabouts.display(),
        if about.is_empty() {
            String::new()
        } else {
            format!(" ({about})")
        }
    );
    println!(
        "            netattach   {} (its `whereabouts` face, through `netattach daemon` and direct)",
        opts.netattach.display()
    );
    let sizes: Vec<String> = opts.sizes.iter().map(usize::to_string).collect();
    let systems: Vec<&str> = opts.systems.iter().map(|s| s.label()).collect();
    println!(
        "            N = {} pods on {} nodes, at most {} concurrent per node, --timeout {} s; {}",
        sizes.join(", "),
        opts.nodes,
        opts.per_node_parallel,
        opts.timeout.as_secs_f64(),
        systems.join(", ")
    );

    let testenv = Testenv::get("ipam-bench", opts.nodes)?;
    let kubectl = Kubectl {
        exe: opts.tools_bin.join("kubectl"),
        kubeconfig: PathBuf::from(testenv.var("KUBECONFIG")?),
    };
    let _objects = ApiObjects {
        kubectl: &kubectl,
        shared: testenv.is_shared(),
    };
    let mut objects = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})];
    for k in 1..=opts.nodes {
        objects.push(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{k}")}}));
    }
    kubectl.apply(objects)?;

    let tmp = tempfile::Builder::new().prefix("ipam-bench-").tempdir()?;
    let bin = tmp.path().join("bin");
    install_faces(&opts.netattach, &bin)?;
    let kc_dir = tmp.path().join("kubeconfig");
    let daemon_dir = tmp.path().join("run");
    std::fs::create_dir_all(&kc_dir)?;
    // The daemons refuse a socket directory others can enter.
    std::fs::DirBuilder::new().mode(0o700).create(&daemon_dir)?;
    let mut nodes = Vec::new();
    let mut flat_files = Vec::new();
    for k in 1..=opts.nodes {
        let node = format!("node-{k}");
        let kc = kc_dir.join(format!("{node}.kubeconfig"));
        namespaced_kubeconfig(&testenv.node_kubeconfig(&node)?, &kc)?;
        flat_files.push(write_flat_file(
            &tmp.path().join(&node).join("whereabouts.d"),
            &kc,
        )?);
        nodes.push((node, kc));
    }
    let users: Vec<String> = nodes.iter().map(|(n, _)| format!("netattach:node:{n}")).collect();

    sweep_stale("nib");
    let netns = Ns::new("nib")?;

    // `daemon_socket`: the node's daemon (daemon mode); "" for none (direct mode; without the
    // key a netattach that knows it would try its default socket); absent for a netattach
    // that does not know the key yet (always direct).
    let confs = |socket: &dyn Fn(&str) -> Option<String>| -> Result<Vec<Vec<u8>>, Error> {
        nodes
            .iter()
            .zip(&flat_files)
            .map(|((node, _), flat)| Ok(serde_json::to_vec(&net_conf(flat, socket(node)))?))
            .collect()
    };
    let whereabouts = Plugin {
        exe: opts.whereabouts.clone(),
        cni_path: opts
            .whereabouts
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        confs: confs(&|_| None)?,
    };
    let na_plugin = |socket: &dyn Fn(&str) -> Option<String>| -> Result<Plugin, Error> {
        Ok(Plugin {
            exe: bin.join("whereabouts"),
            cni_path: bin.display().to_string(),
            confs: confs(socket)?,
        })
    };
    let direct = na_plugin(&|_| Some(String::new()))?;
    let daemon_unsupported = if !opts.systems.iter().any(|s| *s != Sys::Whereabouts) {
        None
    } else {
        netattach_support(&opts.netattach, &direct, netns.path())?
    };
    let direct = if daemon_unsupported.is_some() {
        na_plugin(&|_| None)?
    } else {
        direct
    };
    let daemon = na_plugin(&|node| Some(Daemons::socket(&daemon_dir, node).display().to_string()))?;
    let plugins = BTreeMap::from([
        (Sys::Whereabouts, whereabouts),
        (Sys::Netattach, daemon),
        (Sys::NetattachDirect, direct),
    ]);
    let env = Env {
        opts: &opts,
        kubectl: &kubectl,
        audit_log: PathBuf::from(testenv.var("NETATTACH_TESTENV_AUDIT_LOG")?),
        users,
        netns: netns.path().to_path_buf(),
        daemon_dir,
        nodes,
        plugins,
        daemon_unsupported,
        apiserver_pid: testenv.component_pid("kube-apiserver"),
        etcd_pid: testenv.component_pid("etcd"),
        server: testenv
            .var("NETATTACH_TESTENV_SERVER")?
            .trim_end_matches('/')
            .to_string(),
    };

    let mut all: Vec<(Vec<SysRun>, Floor)> = Vec::new();
    let mut problems = 0;
    for &n in &opts.sizes {
        println!();
        println!("== N = {n} ==");
        check_interrupted()?;
        let floor = api_floor(&env, n)?;
        let mut runs = Vec::new();
        for &sys in &opts.systems {
            check_interrupted()?;
            let r = run_system(&env, sys, n)?;
            // The product's invariants; upstream's duplicates and leaks are reported, not fatal.
            if sys != Sys::Whereabouts {
                problems += r.duplicates + r.leaks;
            }
            runs.push(r);
        }
        print_report(&runs, &floor, &opts);
        all.push((runs, floor));
    }
    if all.len() > 1 {
        println!();
        println!("==================== all sizes ====================");
        for (runs, floor) in &all {
            print_report(runs, floor, &opts);
        }
    }
    drop(netns);
    if problems > 0 {
        return Err(format!("netattach: {problems} duplicate(s) or leak(s); see the notes above").into());
    }
    Ok(())
}
