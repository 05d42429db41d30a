//! Shared harness for the plugin integration tests: drive the installed `macvlan` and
//! `whereabouts` faces exactly as a container runtime does, inside throw-away network
//! namespaces, and read back what they did.
//!
//! # Topology
//!
//! [`Topology::new`] builds, all inside namespaces it creates (nothing on the test host is
//! touched):
//!
//! ```text
//!   switch netns                       node netns ("the host" of the plugin)
//!   ┌──────────────┐   veth            ┌────────────────────────┐
//!   │ stor0p (up)  │───────────────────│ stor0 (up, macvlan      │
//!   └──────────────┘                   │        master)          │
//!                                      └────────────────────────┘
//!   pod netns (Topology::pod) — empty but for `lo`; the plugin puts `net1` here.
//! ```
//!
//! The plugin process is spawned from a thread that joined the node namespace, so the plugin's
//! "host" is the node namespace. `CNI_PATH` is a temp bin dir filled by `netattach install`
//! (once per test process, removed at exit).
//!
//! # Cleanup
//!
//! Every namespace is a [`Ns`] guard: dropping it (also while unwinding from a failed
//! assertion) deletes the namespace, and with it every link the plugins made. The IPAM store is a
//! [`tempfile::TempDir`] owned by the topology. Namespace names are `nat-<pid>-<n>`; stale ones
//! whose pid is gone (a killed test run) are swept when a topology is built.
//!
//! # Safety rules the helpers follow
//!
//! Addresses only from 198.18.0.0/15 (and fd00:198:18::/48); no interface outside a test
//! namespace is ever touched.
//!
//! Everything here is `pub` API for other test files (`mod support;`): keep it stable.

#![allow(dead_code)]

pub mod daemon;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use netattach_cni::error::CniError;
use netattach_ipam::local::FileStore;
use netattach_ipam::store::{Allocation, Store};
use netattach_netdev::{Address, Handle, Link, NamedNetns, Netns, Route};
use serde_json::{Value, json};

/// The macvlan master (veth end) in the node namespace.
pub const MASTER: &str = "stor0";
/// Its peer in the switch namespace.
pub const MASTER_PEER: &str = "stor0p";
/// The interface name tests give the plugins (`CNI_IFNAME`).
pub const IFNAME: &str = "net1";
/// Every CNI version the plugins support, oldest first.
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Prefix of every namespace name the harness creates.
pub const NS_PREFIX: &str = "nat-";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Panics (the test FAILS, it does not skip) unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these integration tests create network namespaces and links and must run as root \
         (euid is {euid}); run them with sudo or in the privileged CI job"
    );
}

/// A fresh namespace name: `nat-<pid>-<n>` (unique in this process and across processes).
pub fn unique_name() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{NS_PREFIX}{}-{n}", std::process::id())
}

/// A fresh container id (unique in this process).
pub fn container_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("ctr{:08x}{n:06}", std::process::id())
}

/// Deletes `nat-<pid>-*` namespaces left by test processes that no longer exist.
pub fn sweep_stale_namespaces() {
    let Ok(names) = netattach_netdev::list_named_netns() else {
        return;
    };
    for name in names {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = netattach_netdev::delete_named_netns(&name);
        }
    }
}

/// A named network namespace that is deleted when dropped (also on panic).
#[derive(Debug)]
pub struct Ns {
    inner: Option<NamedNetns>,
    name: String,
    path: PathBuf,
}

impl Ns {
    /// Creates `/run/netns/nat-<pid>-<n>` with `lo` up.
    pub fn new() -> Ns {
        require_root();
        let name = unique_name();
        let inner = NamedNetns::create(&name).unwrap_or_else(|e| panic!("create netns {name}: {e}"));
        let path = inner.path().to_path_buf();
        Ns {
            inner: Some(inner),
            name,
            path,
        }
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>` (what `CNI_NETNS` gets).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a string.
    pub fn path_str(&self) -> String {
        self.path.display().to_string()
    }

    /// Opens the namespace.
    pub fn netns(&self) -> Netns {
        Netns::open(&self.path).unwrap_or_else(|e| panic!("open netns {}: {e}", self.name))
    }

    /// A netlink handle bound to this namespace.
    pub fn handle(&self) -> Handle {
        Handle::in_netns(&self.netns()).unwrap_or_else(|e| panic!("netlink in {}: {e}", self.name))
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.netns()
            .run(f)
            .unwrap_or_else(|e| panic!("run in netns {}: {e}", self.name))
    }

    /// Deletes the namespace now (like `ip netns del`).
    pub fn delete(&mut self) {
        if let Some(ns) = self.inner.take() {
            ns.delete()
                .unwrap_or_else(|e| panic!("delete netns {}: {e}", self.name));
        }
    }

    /// Whether the namespace still exists.
    pub fn exists(&self) -> bool {
        self.inner.is_some() && self.path.exists()
    }

    /// Every link (including `lo`).
    pub fn links(&self) -> Vec<Link> {
        self.handle().links().expect("list links")
    }

    /// Link names other than `lo`, sorted.
    pub fn link_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .links()
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n != "lo")
            .collect();
        v.sort();
        v
    }

    /// The link called `name`, if any.
    pub fn link(&self, name: &str) -> Option<Link> {
        self.handle().link_by_name(name).expect("look up link")
    }

    /// The link called `name`; panics when absent.
    pub fn expect_link(&self, name: &str) -> Link {
        self.link(name)
            .unwrap_or_else(|| panic!("no link {name} in {}: have {:?}", self.name, self.link_names()))
    }

    /// Addresses on link `name` (all scopes, including IPv6 link-local).
    pub fn addresses(&self, name: &str) -> Vec<Address> {
        let mut h = self.handle();
        let idx = h.link_index(name).expect("link index");
        h.addresses(idx).expect("list addresses")
    }

    /// Addresses on link `name` as `addr/prefix` strings, without IPv6 link-local ones.
    pub fn address_strings(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .addresses(name)
            .into_iter()
            .filter(|a| !is_link_local(a.addr.addr()))
            .map(|a| a.addr.to_string())
            .collect();
        v.sort();
        v
    }

    /// Every route in the main and other tables of both families.
    pub fn routes(&self) -> Vec<Route> {
        self.handle().routes(None).expect("list routes")
    }

    /// Creates a dummy-like placeholder: a veth pair `a`/`b` both in this namespace (used to
    /// occupy an interface name with a non-macvlan link).
    pub fn add_veth_pair(&self, a: &str, b: &str) {
        let mut h = self.handle();
        h.create_veth(a, b, None)
            .unwrap_or_else(|e| panic!("create veth {a}/{b} in {}: {e}", self.name));
    }

    /// Sets link `name` up.
    pub fn set_up(&self, name: &str) {
        let mut h = self.handle();
        let idx = h.link_index(name).expect("link index");
        h.set_up(idx).expect("set up");
    }

    /// Adds an address to link `name`.
    pub fn add_address(&self, name: &str, cidr: &str) {
        assert_safe_address(cidr);
        let mut h = self.handle();
        let idx = h.link_index(name).expect("link index");
        h.add_address(idx, cidr.parse().expect("cidr"))
            .expect("add address");
    }
}

impl Default for Ns {
    fn default() -> Self {
        Ns::new()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Some(ns) = self.inner.take()
            && let Err(e) = ns.delete()
        {
            eprintln!("warning: could not delete test netns {}: {e}", self.name);
        }
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(v4) => v4.is_link_local(),
    }
}

/// Panics unless `cidr` lies in the test ranges 198.18.0.0/15 or fd00:198:18::/48.
pub fn assert_safe_address(cidr: &str) {
    let ip: IpAddr = cidr
        .split('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an address: {cidr}"));
    let ok = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 198 && (o[1] == 18 || o[1] == 19)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            s[0] == 0xfd00 && s[1] == 0x198 && s[2] == 0x18
        }
    };
    assert!(
        ok,
        "test address {cidr} is outside 198.18.0.0/15 and fd00:198:18::/48"
    );
}

/// The bin dir `netattach install` filled, shared by every topology of this test process and
/// removed when the process exits.
pub fn bin_dir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("netattach-itest-bin-")
            .tempdir()
            .expect("temp bin dir")
            .keep();
        let out = Command::new(env!("CARGO_BIN_EXE_netattach"))
            .arg("install")
            .arg("--bin-dir")
            .arg(&dir)
            .env_remove("CNI_COMMAND")
            .output()
            .expect("run netattach install");
        assert!(
            out.status.success(),
            "netattach install --bin-dir {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        for face in ["macvlan", "whereabouts"] {
            assert!(dir.join(face).exists(), "install did not create {face}");
        }
        extern "C" fn remove_bin_dir() {
            if let Some(dir) = BIN.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe {
            libc::atexit(remove_bin_dir);
        }
        dir
    })
}

/// What one plugin execution printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Raw stdout.
    pub stdout: Vec<u8>,
    /// Raw stderr (logs).
    pub stderr: String,
}

impl Output {
    /// Whether the plugin exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout as text.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stdout parsed as JSON (panics with the output when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// `Ok(stdout JSON or Null when empty)` on exit 0; `Err(CniError)` parsed from stdout
    /// otherwise (panics if a failing plugin printed no CNI error: that is a bug too).
    pub fn result(&self) -> Result<Value, CniError> {
        if self.success() {
            if self.stdout.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return Ok(self.json());
        }
        assert!(self.code.is_some(), "plugin was killed by a signal: {self:?}");
        let err: CniError = serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("failing plugin printed no CNI error ({e}): {self:?}"));
        Err(err)
    }

    /// The CNI error; panics if the plugin succeeded.
    pub fn error(&self) -> CniError {
        match self.result() {
            Ok(v) => panic!("expected the plugin to fail, it succeeded with {v}"),
            Err(e) => e,
        }
    }
}

/// One attachment as the runtime describes it: container id, netns, ifname and CNI_ARGS.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (`None` leaves it unset).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` (with `K8S_POD_NAME` forms the podref).
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// Extra `CNI_ARGS` pairs (e.g. `("MAC", "02:..")`, `("IP", "198.18.0.9")`).
    pub extra_args: Vec<(String, String)>,
}

impl Attachment {
    /// An attachment of `IFNAME` in `netns` with a fresh container id and pod `default/<name>`.
    pub fn new(netns: &Path, pod_name: &str) -> Attachment {
        Attachment {
            container_id: container_id(),
            netns: Some(netns.to_path_buf()),
            ifname: IFNAME.to_string(),
            pod_namespace: Some("default".into()),
            pod_name: Some(pod_name.into()),
            extra_args: Vec::new(),
        }
    }

    /// Same, without K8S_POD_* (identity is the container id).
    pub fn without_pod(netns: &Path) -> Attachment {
        Attachment {
            pod_namespace: None,
            pod_name: None,
            ..Attachment::new(netns, "")
        }
    }

    /// The `CNI_ARGS` string.
    pub fn cni_args(&self) -> String {
        let mut pairs = vec!["IgnoreUnknown=1".to_string()];
        if let Some(ns) = &self.pod_namespace {
            pairs.push(format!("K8S_POD_NAMESPACE={ns}"));
        }
        if let Some(n) = &self.pod_name {
            pairs.push(format!("K8S_POD_NAME={n}"));
        }
        for (k, v) in &self.extra_args {
            pairs.push(format!("{k}={v}"));
        }
        pairs.join(";")
    }

    /// `default/<pod_name>` when the pod is set.
    pub fn podref(&self) -> Option<String> {
        Some(format!(
            "{}/{}",
            self.pod_namespace.as_ref()?,
            self.pod_name.as_ref()?
        ))
    }
}

/// Runs one plugin face (`macvlan` or `whereabouts`) as a runtime does, from inside the node
/// namespace.
#[derive(Debug, Clone)]
pub struct Runner {
    /// The executable (`<bin_dir>/<face>`).
    pub exe: PathBuf,
    /// `CNI_PATH`.
    pub cni_path: PathBuf,
    /// The namespace the plugin runs in (its "host").
    pub host: PathBuf,
}

impl Runner {
    /// A runner for `face` from the shared bin dir, run inside `host`.
    pub fn new(face: &str, host: &Path) -> Runner {
        let bin = bin_dir();
        Runner {
            exe: bin.join(face),
            cni_path: bin.to_path_buf(),
            host: host.to_path_buf(),
        }
    }

    /// Runs the plugin with exactly `env` (plus `PATH`, and `NETATTACH_LOG` when set) and
    /// `stdin`; nothing else of the test's environment leaks in.
    pub fn raw(&self, env: &[(String, String)], stdin: &[u8]) -> Output {
        let host = Netns::open(&self.host).unwrap_or_else(|e| panic!("open host netns: {e}"));
        let exe = self.exe.clone();
        let env = env.to_vec();
        let input = stdin.to_vec();
        host.run(move || {
            let mut cmd = Command::new(&exe);
            cmd.env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Ok(log) = std::env::var("NETATTACH_LOG") {
                cmd.env("NETATTACH_LOG", log);
            }
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", exe.display()));
            {
                use std::io::Write;
                let mut si = child.stdin.take().expect("stdin");
                // A plugin that exits early closes the pipe: not a test failure by itself.
                let _ = si.write_all(&input);
            }
            let out = child.wait_with_output().expect("wait for plugin");
            Output {
                code: out.status.code(),
                stdout: out.stdout,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .unwrap_or_else(|e| panic!("run in host netns: {e}"))
    }

    /// The runtime's environment for `command` on `att`.
    pub fn env_for(&self, command: &str, att: &Attachment) -> Vec<(String, String)> {
        let mut env = vec![
            ("CNI_COMMAND".to_string(), command.to_string()),
            ("CNI_CONTAINERID".to_string(), att.container_id.clone()),
            ("CNI_IFNAME".to_string(), att.ifname.clone()),
            ("CNI_PATH".to_string(), self.cni_path.display().to_string()),
            ("CNI_ARGS".to_string(), att.cni_args()),
        ];
        if let Some(ns) = &att.netns {
            env.push(("CNI_NETNS".to_string(), ns.display().to_string()));
        }
        env
    }

    /// Runs `command` for `att` with `config` on stdin.
    pub fn invoke(&self, command: &str, att: &Attachment, config: &Value) -> Output {
        let stdin = serde_json::to_vec(config).expect("serialize config");
        self.raw(&self.env_for(command, att), &stdin)
    }

    /// ADD: the parsed result or the CNI error.
    pub fn add(&self, att: &Attachment, config: &Value) -> Result<Value, CniError> {
        self.invoke("ADD", att, config).result()
    }

    /// DEL.
    pub fn del(&self, att: &Attachment, config: &Value) -> Result<(), CniError> {
        self.invoke("DEL", att, config).result().map(|_| ())
    }

    /// CHECK with `prev_result` inserted as `prevResult`.
    pub fn check(&self, att: &Attachment, config: &Value, prev_result: &Value) -> Result<(), CniError> {
        let mut c = config.clone();
        c["prevResult"] = prev_result.clone();
        self.invoke("CHECK", att, &c).result().map(|_| ())
    }

    /// STATUS (no container env, as the spec says).
    pub fn status(&self, config: &Value) -> Result<(), CniError> {
        let env = vec![
            ("CNI_COMMAND".to_string(), "STATUS".to_string()),
            ("CNI_PATH".to_string(), self.cni_path.display().to_string()),
        ];
        let stdin = serde_json::to_vec(config).expect("serialize");
        self.raw(&env, &stdin).result().map(|_| ())
    }

    /// GC with `cni.dev/valid-attachments` set to `valid` (container id, ifname) pairs.
    pub fn gc(&self, config: &Value, valid: &[(&str, &str)]) -> Result<(), CniError> {
        let mut c = config.clone();
        c["cni.dev/valid-attachments"] = Value::Array(
            valid
                .iter()
                .map(|(id, ifn)| json!({"containerID": id, "ifname": ifn}))
                .collect(),
        );
        let env = vec![
            ("CNI_COMMAND".to_string(), "GC".to_string()),
            ("CNI_PATH".to_string(), self.cni_path.display().to_string()),
        ];
        let stdin = serde_json::to_vec(&c).expect("serialize");
        self.raw(&env, &stdin).result().map(|_| ())
    }

    /// VERSION with stdin `{"cniVersion": version}`.
    pub fn version(&self, version: &str) -> Result<Value, CniError> {
        let env = vec![("CNI_COMMAND".to_string(), "VERSION".to_string())];
        self.raw(&env, json!({ "cniVersion": version }).to_string().as_bytes())
            .result()
    }
}

/// A pod: its namespace plus the attachment the runtime would describe.
#[derive(Debug)]
pub struct Pod {
    /// The pod's network namespace.
    pub ns: Ns,
    /// `CNI_*` identity for its `net1`.
    pub att: Attachment,
}

/// The node + switch namespaces, the veth master and a private IPAM store (see module docs).
#[derive(Debug)]
pub struct Topology {
    /// The plugin's host namespace; holds [`MASTER`].
    pub node: Ns,
    /// The other end of the veth.
    pub switch: Ns,
    /// The local IPAM store directory (`local_dir`).
    pub store: tempfile::TempDir,
}

impl Topology {
    /// Builds node + switch namespaces joined by a veth (`stor0` in the node, `stor0p` in the
    /// switch), both ends up, MTU 1500.
    pub fn new() -> Topology {
        require_root();
        sweep_stale_namespaces();
        let node = Ns::new();
        let switch = Ns::new();
        {
            let mut h = node.handle();
            h.create_veth(MASTER, MASTER_PEER, Some(&switch.netns()))
                .expect("create veth stor0/stor0p");
            let idx = h.link_index(MASTER).expect("stor0 index");
            h.set_up(idx).expect("stor0 up");
        }
        switch.set_up(MASTER_PEER);
        let store = tempfile::Builder::new()
            .prefix("netattach-itest-ipam-")
            .tempdir()
            .expect("temp ipam dir");
        Topology { node, switch, store }
    }

    /// The IPAM store directory.
    pub fn local_dir(&self) -> &Path {
        self.store.path()
    }

    /// The `macvlan` face, run in the node namespace.
    pub fn macvlan(&self) -> Runner {
        Runner::new("macvlan", self.node.path())
    }

    /// The `whereabouts` face, run in the node namespace.
    pub fn whereabouts(&self) -> Runner {
        Runner::new("whereabouts", self.node.path())
    }

    /// A new pod namespace with an attachment of pod `default/<pod_name>`.
    pub fn pod(&self, pod_name: &str) -> Pod {
        let ns = Ns::new();
        let att = Attachment::new(ns.path(), pod_name);
        Pod { ns, att }
    }

    /// The whereabouts `ipam` object for `range` in this topology's local store.
    pub fn ipam(&self, range: &str) -> Value {
        assert_safe_address(range);
        json!({
            "type": "whereabouts",
            "datastore": "local",
            "local_dir": self.local_dir().display().to_string(),
            "range": range,
        })
    }

    /// A macvlan network config (`master` stor0, mode bridge) with whereabouts IPAM on `range`.
    pub fn macvlan_conf(&self, version: &str, range: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "itest",
            "type": "macvlan",
            "master": MASTER,
            "mode": "bridge",
            "ipam": self.ipam(range),
        })
    }

    /// A config for the whereabouts face alone (a network config whose `ipam` is whereabouts).
    pub fn ipam_conf(&self, version: &str, range: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "itest",
            "type": "whereabouts",
            "ipam": self.ipam(range),
        })
    }

    /// Every allocation in this topology's store.
    pub fn allocations(&self) -> Vec<Allocation> {
        allocations(self.local_dir())
    }

    /// Sets the master's MTU (in the node namespace).
    pub fn set_master_mtu(&self, mtu: u32) {
        let mut h = self.node.handle();
        let idx = h.link_index(MASTER).expect("stor0");
        h.set_mtu(idx, mtu).expect("set mtu");
    }

    /// Deletes the master (and so its veth peer).
    pub fn delete_master(&self) {
        let mut h = self.node.handle();
        assert!(
            h.delete_link_by_name(MASTER).expect("delete stor0"),
            "stor0 was not there"
        );
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new()
    }
}

/// Every allocation in the local store at `local_dir` (empty when the dir has no pools).
pub fn allocations(local_dir: &Path) -> Vec<Allocation> {
    FileStore::new(local_dir)
        .and_then(|s| s.allocations())
        .unwrap_or_else(|e| panic!("read store {}: {e}", local_dir.display()))
}

/// Addresses (`addr/prefix`) of a CNI result's `ips`, in order.
pub fn result_addresses(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .map(|ip| ip["address"].as_str().expect("ips[].address").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts an error has `code` and that its details (or msg) contain every needle.
#[track_caller]
pub fn assert_error(err: &CniError, code: u32, needles: &[&str]) {
    assert_eq!(err.code, code, "wrong CNI error code: {err:?}");
    let text = format!("{} {}", err.msg, err.details);
    for n in needles {
        assert!(text.contains(n), "error does not mention {n:?}: {err:?}");
    }
}
