//! Drop-in compatibility with upstream Multus thin (v4.3.0): the same pod and the same NADs,
//! created through the API of the `tools/testenv` control plane, attached once by Multus and
//! once by netattach (meta-plugin + node daemon), each in its own pod network namespace, with
//! the SAME delegate plugins (the reference `bridge`, `macvlan` and `host-local` v1.10.0 in one
//! bin dir). Then the two results are compared, values masked:
//!
//! - the `k8s.v1.cni.cncf.io/network-status` annotation each wrote on the pod: entries in order,
//!   keys, names, interfaces, `default` flags, `ips` count, family and prefix-less form, `mac`
//!   present (and equal to the interface's MAC), `dns`;
//! - the CNI result each printed (interfaces, IP families, gateways);
//! - the pod netns: interfaces, kinds, macvlan modes, MTU, flags, address families and
//!   prefixes, routes.
//!
//! Then both are DELeted and must leave nothing: no link in either pod netns, no host-local
//! reservation, no Multus scratch cache or libcni result, no netattach record.
//!
//! Differences the two implementations have on purpose are listed in [`ALLOWED`], each with the
//! reason; anything else fails the test and is printed side by side.
//!
//! Topology (all in namespaces this test creates): a node namespace with the storage veth
//! `stor0` (peer `stor0p` beside it), the bridge `cni0` the cluster network's `bridge` plugin
//! creates, and two empty pod namespaces. The cluster network is `cbr0` (bridge +
//! host-local 198.19.0.0/24, one conflist per side in its own `confDir` with its own `dataDir`),
//! the NADs are macvlan on `stor0` + host-local (198.18.30.0/24, 198.18.31.0/24). The apiserver
//! listens on the host's loopback while the plugins run in the node namespace, so a TCP relay
//! on 127.0.0.1:<apiserver port> *inside* the node namespace forwards to it (Multus and the
//! daemon use it alike).
//!
//! Needs root and a test cluster (`NETATTACH_TESTENV_DIR`); without either it FAILS. Run:
//! `tools/test-k8s cargo test -p netattach --test multus_compat`
//! (`tools/build --only control-plane,peers` first).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Ns, require_root, sweep_stale_namespaces};

const NODE: &str = "node-1";
const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
const CLUSTER_RANGE: &str = "198.19.0.0/24";
const STORAGE_RANGE: &str = "198.18.30.0/24";
const AUX_RANGE: &str = "198.18.31.0/24";
/// Longhorn's form for the storage network plus a plain second NAD (gets `net2`).
const ANNOTATION: &str = r#"[{"name":"storage","interface":"lhnet1"},{"name":"aux"}]"#;
const REFERENCE_PLUGINS: [&str; 4] = ["bridge", "macvlan", "host-local", "loopback"];

/// Known, intentional differences (netattach vs Multus), as the `what` strings [`compare`]
/// produces. Each is documented; everything else is a compatibility bug.
const ALLOWED: &[(&str, &str)] = &[
    (
        "pod events Warning",
        "Multus resolves `clusterNetwork: cbr0` by trying it as a NAD in `multusNamespace` first and \
         emits `Warning NoNetworkFound` before falling back to the confDir file; netattach resolves the \
         name from the daemon's cache / confDir without a spurious warning (intentional).",
    ),
    (
        "pod events Normal",
        "Multus writes one `Normal AddedInterface` event per interface on every ADD; netattach writes \
         only the network-status (issue 4's budget: no API read and at most one write per ADD), and a \
         `Warning` event when an ADD fails (intentional).",
    ),
];

// ---------------------------------------------------------------------------------------------
// Test cluster and tools

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn tools_bin() -> PathBuf {
    repo_root().join("target/tools/bin")
}

/// The export lines of the running testenv (`NETATTACH_TESTENV_DIR/env`); panics with the
/// command to run when there is none.
fn testenv() -> BTreeMap<String, String> {
    let dir = std::env::var("NETATTACH_TESTENV_DIR").unwrap_or_else(|_| {
        panic!(
            "NETATTACH_TESTENV_DIR is not set: this test needs a test cluster; run it with \
             `tools/test-k8s cargo test -p netattach --test multus_compat` \
             (after `tools/build --only control-plane,peers`)"
        )
    });
    let text = std::fs::read_to_string(Path::new(&dir).join("env"))
        .unwrap_or_else(|e| panic!("{dir}/env: {e}; is the testenv running (tools/testenv status)?"));
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.split(":\"$PATH\"").next().unwrap_or(v);
            (k.to_string(), v.trim_matches('\'').to_string())
        })
        .collect()
}

fn kubectl(env: &BTreeMap<String, String>, args: &[&str], stdin: Option<&Value>) -> String {
    let mut child = Command::new(tools_bin().join("kubectl"))
        .env("KUBECONFIG", &env["KUBECONFIG"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl (tools/build --only control-plane)");
    if let (Some(v), Some(mut si)) = (stdin, child.stdin.take()) {
        si.write_all(v.to_string().as_bytes()).expect("kubectl stdin");
    }
    let out = child.wait_with_output().expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes the test's Kubernetes namespace on drop.
struct KubeNamespace<'a> {
    env: &'a BTreeMap<String, String>,
    name: String,
}

impl Drop for KubeNamespace<'_> {
    fn drop(&mut self) {
        let _ = Command::new(tools_bin().join("kubectl"))
            .env("KUBECONFIG", &self.env["KUBECONFIG"])
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .output();
    }
}

/// Relays connections accepted on `listener` (bound inside the node namespace) to
/// 127.0.0.1:`port` in this thread's namespace (the host's).
fn spawn_relay(listener: TcpListener, port: u16) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(down) = conn else { continue };
            let Ok(up) = TcpStream::connect(("127.0.0.1", port)) else {
                let _ = down.shutdown(Shutdown::Both);
                continue;
            };
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

/// The node daemon, stopped (SIGTERM, then SIGKILL) on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
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
// Running a meta-plugin

struct Side {
    label: &'static str,
    exe: PathBuf,
    conf: Value,
    bin: PathBuf,
    netns: Ns,
    container_id: String,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Side {
    /// Runs `cmd` from the calling thread (the node namespace).
    fn exec(&self, cmd: &str, pod: &str, uid: &str, ns: &str) -> Out {
        let mut child = Command::new(&self.exe)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_NETNS", self.netns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.bin)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={uid}",
                    self.container_id
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.exe.display()));
        if let Some(mut si) = child.stdin.take() {
            si.write_all(self.conf.to_string().as_bytes()).expect("stdin");
        }
        let out = child.wait_with_output().expect("wait");
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Masked views

/// A masked, comparable description: `what` -> value.
type View = BTreeMap<String, String>;

fn family(ip: &str) -> &'static str {
    if ip.contains(':') { "v6" } else { "v4" }
}

/// The network-status annotation, masked. Also checks each `mac` against the netns.
fn status_view(status: &Value, links: &Value) -> View {
    let mut v = View::new();
    let entries = status.as_array().expect("network-status is a JSON array");
    v.insert("status entries".into(), entries.len().to_string());
    for (i, e) in entries.iter().enumerate() {
        let obj = e.as_object().expect("entry is an object");
        let p = format!("status[{i}]");
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        v.insert(format!("{p} keys"), keys.join(","));
        v.insert(format!("{p} name"), e["name"].to_string());
        v.insert(format!("{p} interface"), e["interface"].to_string());
        v.insert(format!("{p} default"), e["default"].to_string());
        let ips: Vec<String> = e["ips"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|ip| {
                        let s = ip.as_str().unwrap_or("?");
                        format!("{}{}", family(s), if s.contains('/') { "/prefix" } else { "" })
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.insert(format!("{p} ips"), ips.join(","));
        v.insert(format!("{p} dns"), e["dns"].to_string());
        v.insert(format!("{p} mtu present"), (!e["mtu"].is_null()).to_string());
        v.insert(
            format!("{p} gateway"),
            e["gateway"]
                .as_array()
                .map(|g| {
                    g.iter()
                        .map(|x| family(x.as_str().unwrap_or("?")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| e["gateway"].to_string()),
        );
        // The mac must be the interface's.
        let mac = e["mac"].as_str().unwrap_or_default();
        let ifname = e["interface"].as_str().unwrap_or_default();
        let actual = links
            .as_array()
            .and_then(|l| l.iter().find(|l| l["ifname"] == ifname))
            .and_then(|l| l["address"].as_str())
            .unwrap_or_default();
        v.insert(
            format!("{p} mac"),
            if mac.is_empty() {
                "absent".into()
            } else if mac.eq_ignore_ascii_case(actual) {
                "present, = the interface's".into()
            } else {
                format!("present, != the interface's ({mac} vs {actual})")
            },
        );
    }
    v
}

/// The CNI result printed on ADD, masked.
fn result_view(result: &Value) -> View {
    let mut v = View::new();
    v.insert("result cniVersion".into(), result["cniVersion"].to_string());
    let ifaces: Vec<String> = result["interfaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    let name = i["name"].as_str().unwrap_or("?");
                    // The host-side veth name is random (bridge plugin): mask it.
                    let name = if name.starts_with("veth") { "veth*" } else { name };
                    format!(
                        "{}{}",
                        name,
                        if i["sandbox"].is_string() { "(sandbox)" } else { "" }
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.insert("result interfaces".into(), ifaces.join(","));
    let ips: Vec<String> = result["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|ip| {
                    let addr = ip["address"].as_str().unwrap_or("?");
                    let prefix = addr.split('/').nth(1).unwrap_or("-");
                    format!(
                        "{}/{} gw:{} if:{}",
                        family(addr),
                        prefix,
                        ip["gateway"].is_string(),
                        ip["interface"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.insert("result ips".into(), ips.join(" "));
    let routes: Vec<String> = result["routes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["dst"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default();
    v.insert("result routes".into(), routes.join(","));
    v.insert("result dns".into(), result["dns"].to_string());
    v
}

fn ip_json(ns: &Ns, args: &[&str]) -> Value {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns.name())
        .arg("-j")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()))
}

/// The pod netns, masked: links (kind, macvlan mode, MTU, flags), addresses (family/prefix,
/// scope), routes (destination, gateway family, device, scope, protocol).
fn netns_view(ns: &Ns) -> View {
    let mut v = View::new();
    let links = ip_json(ns, &["-d", "link", "show"]);
    for l in links.as_array().cloned().unwrap_or_default() {
        let name = l["ifname"].as_str().unwrap_or("?").to_string();
        let p = format!("link {name}");
        let kind = l["linkinfo"]["info_kind"].as_str().unwrap_or("-");
        v.insert(format!("{p} kind"), kind.into());
        if kind == "macvlan" {
            v.insert(
                format!("{p} mode"),
                l["linkinfo"]["info_data"]["mode"].to_string(),
            );
        }
        v.insert(format!("{p} mtu"), l["mtu"].to_string());
        let mut flags: Vec<String> = l["flags"]
            .as_array()
            .map(|a| a.iter().map(|f| f.as_str().unwrap_or("?").to_string()).collect())
            .unwrap_or_default();
        flags.sort();
        v.insert(format!("{p} flags"), flags.join(","));
        v.insert(format!("{p} operstate"), l["operstate"].to_string());
    }
    let addrs = ip_json(ns, &["addr", "show"]);
    for l in addrs.as_array().cloned().unwrap_or_default() {
        let name = l["ifname"].as_str().unwrap_or("?");
        let mut list: Vec<String> = l["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|ai| {
                        format!(
                            "{}/{} {}",
                            ai["family"].as_str().unwrap_or("?"),
                            ai["prefixlen"],
                            ai["scope"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        list.sort();
        v.insert(format!("addrs {name}"), list.join(", "));
    }
    for fam in ["-4", "-6"] {
        let routes = ip_json(ns, &[fam, "route", "show"]);
        let mut list: Vec<String> = routes
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                format!(
                    "{} via:{} dev {} scope {} proto {}",
                    r["dst"].as_str().unwrap_or("?"),
                    r["gateway"].is_string(),
                    r["dev"].as_str().unwrap_or("?"),
                    r["scope"].as_str().unwrap_or("-"),
                    r["protocol"].as_str().unwrap_or("-")
                )
            })
            .collect();
        list.sort();
        v.insert(format!("routes {fam}"), list.join("; "));
    }
    v
}

/// Every `what` whose value differs, as "what: multus=<a> netattach=<b>".
fn compare(multus: &View, netattach: &View) -> Vec<(String, String)> {
    let keys: BTreeSet<&String> = multus.keys().chain(netattach.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (a, b) = (multus.get(k), netattach.get(k));
            (a != b).then(|| {
                (
                    k.clone(),
                    format!(
                        "multus={} netattach={}",
                        a.map_or("<absent>", String::as_str),
                        b.map_or("<absent>", String::as_str)
                    ),
                )
            })
        })
        .collect()
}

fn pod_annotations(env: &BTreeMap<String, String>, ns: &str, pod: &str) -> Value {
    let pod: Value = serde_json::from_str(&kubectl(env, &["get", "pod", "-n", ns, pod, "-o", "json"], None))
        .expect("pod json");
    pod["metadata"]["annotations"].clone()
}

/// The pod's network-status, parsed, and a masked description of its text layout.
fn status_of(env: &BTreeMap<String, String>, ns: &str, pod: &str) -> (Value, String) {
    let ann = pod_annotations(env, ns, pod);
    let raw = ann[NETWORK_STATUS]
        .as_str()
        .unwrap_or_else(|| panic!("no {NETWORK_STATUS} on pod {ns}/{pod}: {ann}"));
    let layout = match raw.lines().nth(1) {
        Some(l) => format!("multi-line, indent {}", l.len() - l.trim_start().len()),
        None => "one line".to_string(),
    };
    (
        serde_json::from_str(raw).unwrap_or_else(|e| panic!("{NETWORK_STATUS} is not JSON ({e}): {raw}")),
        layout,
    )
}

/// Events on the pod, as "reason (component)" with counts, and the messages.
fn pod_events(env: &BTreeMap<String, String>, ns: &str) -> Vec<String> {
    let list: Value = serde_json::from_str(&kubectl(env, &["get", "events", "-n", ns, "-o", "json"], None))
        .expect("events json");
    let mut out: Vec<String> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            format!(
                "{} {} ({}/{}): {}",
                e["type"].as_str().unwrap_or("?"),
                e["reason"].as_str().unwrap_or("?"),
                e["source"]["component"].as_str().unwrap_or("-"),
                e["reportingComponent"].as_str().unwrap_or("-"),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    out.sort();
    out
}

/// Files (not directories) in `dir`, recursively, that are not lock files.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn multus_thin_and_netattach_attach_the_same_pod_the_same_way() {
    require_root();
    let env = testenv();
    sweep_stale_namespaces();
    let tools = tools_bin();
    for p in std::iter::once("multus").chain(REFERENCE_PLUGINS) {
        assert!(
            tools.join(p).is_file(),
            "{} missing: run tools/build --only peers",
            tools.join(p).display()
        );
    }
    let api_port: u16 = env["NETATTACH_TESTENV_SERVER"]
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("NETATTACH_TESTENV_SERVER has a port");
    let node_kubeconfig = env["NETATTACH_TESTENV_NODE_KUBECONFIGS"]
        .split(',')
        .filter_map(|e| e.split_once('='))
        .find(|(n, _)| *n == NODE)
        .map(|(_, p)| PathBuf::from(p))
        .expect("node-1 kubeconfig");

    let tmp = tempfile::Builder::new()
        .prefix("multus-compat-")
        .tempdir()
        .expect("tempdir");
    let t = tmp.path();
    // The same delegate plugins for both: the reference plugins, in one bin dir.
    let bin = t.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    for p in REFERENCE_PLUGINS {
        std::fs::copy(tools.join(p), bin.join(p)).expect("copy plugin");
    }
    // The cluster network, one confDir and host-local dataDir per side.
    let conf_dir = |side: &str| {
        let dir = t.join(format!("{side}-net.d"));
        std::fs::create_dir_all(&dir).expect("conf dir");
        let conflist = json!({
            "cniVersion": "1.0.0", "name": "cbr0",
            "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": CLUSTER_RANGE}]],
                                  "dataDir": t.join(format!("{side}-cluster-ipam")).display().to_string()}}],
        });
        std::fs::write(dir.join("10-cbr0.conflist"), conflist.to_string()).expect("conflist");
        dir
    };
    let (multus_conf, netattach_conf) = (conf_dir("multus"), conf_dir("netattach"));

    // --- API objects ------------------------------------------------------------------------
    let kns = format!("multus-compat-{}", std::process::id());
    let _kns_guard = KubeNamespace {
        env: &env,
        name: kns.clone(),
    };
    let nad = |name: &str, range: &str| {
        let config = json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "stor0",
                            "mode": "bridge",
                            "ipam": {"type": "host-local", "ranges": [[{"subnet": range}]],
                                     "dataDir": t.join("nad-ipam").display().to_string()}});
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
               "metadata": {"name": name, "namespace": kns},
               "spec": {"config": config.to_string()}})
    };
    let pod_name = "compat";
    kubectl(
        &env,
        &["apply", "--server-side", "-f", "-"],
        Some(&json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": kns}},
        ]})),
    );
    kubectl(
        &env,
        &["apply", "--server-side", "-f", "-"],
        Some(&json!({"apiVersion": "v1", "kind": "List", "items": [
            nad("storage", STORAGE_RANGE),
            nad("aux", AUX_RANGE),
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": pod_name, "namespace": kns, "annotations": {NETWORKS: ANNOTATION}},
             "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "registry.invalid/pause:1"}]}},
        ]})),
    );
    let uid = kubectl(
        &env,
        &[
            "get",
            "pod",
            "-n",
            &kns,
            pod_name,
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    );

    // --- topology, relay, daemon ------------------------------------------------------------
    let node = Ns::new();
    node.add_veth_pair("stor0", "stor0p");
    node.set_up("stor0");
    node.set_up("stor0p");
    let listener = node
        .run(|| TcpListener::bind(("127.0.0.1", api_port)))
        .expect("relay listener in the node namespace");
    spawn_relay(listener, api_port);
    let socket = t.join("run/daemon.sock");
    let ready = t.join("run/ready");
    let daemon_log = t.join("daemon.log");
    let daemon = {
        let log = std::fs::File::create(&daemon_log).expect("daemon log");
        let child = node
            .run(|| {
                Command::new(env!("CARGO_BIN_EXE_netattach"))
                    .arg("daemon")
                    .args(["--node", NODE, "--kubeconfig"])
                    .arg(&node_kubeconfig)
                    .arg("--socket")
                    .arg(&socket)
                    .arg("--ready-file")
                    .arg(&ready)
                    .args(["--metrics-addr", "127.0.0.1:9464"])
                    .env_remove("CNI_COMMAND")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
            })
            .expect("spawn the daemon");
        Daemon {
            child,
            log: daemon_log,
        }
    };
    let t0 = Instant::now();
    while !ready.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the daemon was not ready in 30 s:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let multus = Side {
        label: "multus",
        exe: tools.join("multus"),
        conf: json!({
            "cniVersion": "1.0.0", "name": "multus-cni-network", "type": "multus",
            "kubeconfig": env["KUBECONFIG"], "clusterNetwork": "cbr0",
            "confDir": multus_conf.display().to_string(),
            "cniDir": t.join("multus-cni").display().to_string(),
            "binDir": bin.display().to_string(),
        }),
        bin: bin.clone(),
        netns: Ns::new(),
        container_id: "compatmultus0001".into(),
    };
    let netattach = Side {
        label: "netattach",
        exe: PathBuf::from(env!("CARGO_BIN_EXE_netattach")),
        conf: json!({
            "cniVersion": "1.0.0", "name": "netattach-cni-network", "type": "netattach",
            "clusterNetwork": "cbr0", "confDir": netattach_conf.display().to_string(),
            "cniDir": t.join("netattach-state").display().to_string(),
            "multusCacheDir": t.join("netattach-legacy").display().to_string(),
            "binDir": bin.display().to_string(), "daemonSocket": socket.display().to_string(),
        }),
        bin: bin.clone(),
        netns: Ns::new(),
        container_id: "compatnetattach01".into(),
    };

    // --- ADD: Multus first, then netattach (retried until the daemon's cache has the pod) ---
    let (multus_add, (multus_status, multus_layout)) = node.run(|| {
        let out = multus.exec("ADD", pod_name, &uid, &kns);
        assert!(out.ok, "multus ADD failed: {}\n{}", out.stdout, out.stderr);
        (out, status_of(&env, &kns, pod_name))
    });
    // Multus sends its events asynchronously; give them a moment to land.
    std::thread::sleep(Duration::from_millis(500));
    let multus_events = pod_events(&env, &kns);
    // Remove Multus' status so that what we read next is certainly netattach's.
    kubectl(
        &env,
        &[
            "annotate",
            "pod",
            "-n",
            &kns,
            pod_name,
            &format!("{NETWORK_STATUS}-"),
        ],
        None,
    );
    let (netattach_add, (netattach_status, netattach_layout)) = node.run(|| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let out = loop {
            let out = netattach.exec("ADD", pod_name, &uid, &kns);
            let retryable = out.stdout.contains("\"code\": 11") || out.stdout.contains("\"code\":11");
            if out.ok || Instant::now() > deadline || !retryable {
                break out;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            out.ok,
            "netattach ADD failed: {}\n{}\ndaemon log:\n{}",
            out.stdout,
            out.stderr,
            daemon.log()
        );
        (out, status_of(&env, &kns, pod_name))
    });

    // --- compare -----------------------------------------------------------------------------
    let parse = |o: &Out| -> Value { serde_json::from_str(&o.stdout).expect("ADD result JSON") };
    let multus_links = ip_json(&multus.netns, &["link", "show"]);
    let netattach_links = ip_json(&netattach.netns, &["link", "show"]);
    let mut mv = status_view(&multus_status, &multus_links);
    let mut nv = status_view(&netattach_status, &netattach_links);
    mv.insert("status text layout".into(), multus_layout);
    nv.insert("status text layout".into(), netattach_layout);
    // Events: Multus' are those present after its ADD; netattach's are the ones added since.
    std::thread::sleep(Duration::from_millis(500));
    let all_events = pod_events(&env, &kns);
    let netattach_events: Vec<String> = all_events
        .iter()
        .filter(|e| !multus_events.contains(e))
        .cloned()
        .collect();
    // Masked: "Normal AddedInterface: Add lhnet1 [<ips>] from <ns>/storage".
    let event_view = |evs: &[String], kind: &str| {
        let mut r: Vec<String> = evs
            .iter()
            .filter(|e| e.starts_with(kind))
            .map(|e| {
                let (head, msg) = e.split_once(": ").unwrap_or((e, ""));
                let reason = head.split(' ').nth(1).unwrap_or("?");
                let masked = match (msg.split_once('['), msg.split_once(']')) {
                    (Some((a, _)), Some((_, b))) => format!("{a}[<ips>]{b}"),
                    _ => msg.to_string(),
                };
                if kind == "Normal" {
                    format!("{reason}: {masked}")
                } else {
                    reason.to_string()
                }
            })
            .collect();
        r.sort();
        r.join("; ")
    };
    eprintln!("--- events after multus ADD ---\n{}", multus_events.join("\n"));
    eprintln!(
        "--- events added by netattach ADD ---\n{}",
        netattach_events.join("\n")
    );
    for kind in ["Normal", "Warning"] {
        mv.insert(format!("pod events {kind}"), event_view(&multus_events, kind));
        nv.insert(format!("pod events {kind}"), event_view(&netattach_events, kind));
    }
    mv.extend(result_view(&parse(&multus_add)));
    nv.extend(result_view(&parse(&netattach_add)));
    mv.extend(netns_view(&multus.netns));
    nv.extend(netns_view(&netattach.netns));
    let diffs = compare(&mv, &nv);
    eprintln!(
        "--- multus network-status ---\n{}",
        serde_json::to_string_pretty(&multus_status).unwrap_or_default()
    );
    eprintln!(
        "--- netattach network-status ---\n{}",
        serde_json::to_string_pretty(&netattach_status).unwrap_or_default()
    );
    eprintln!("--- masked views (multus | netattach) ---");
    for (k, a) in &mv {
        eprintln!(
            "{k:<40} {a:<50} | {}",
            nv.get(k).map_or("<absent>", String::as_str)
        );
    }
    for (k, b) in nv.iter().filter(|(k, _)| !mv.contains_key(*k)) {
        eprintln!("{k:<40} {:<50} | {b}", "<absent>");
    }
    let unexpected: Vec<String> = diffs
        .iter()
        .filter(|(what, _)| !ALLOWED.iter().any(|(w, _)| w == what))
        .map(|(what, d)| format!("{what}: {d}"))
        .collect();
    for (what, d) in &diffs {
        eprintln!("DIFF {what}: {d}");
    }

    // --- DEL both, nothing left ---------------------------------------------------------------
    node.run(|| {
        for side in [&multus, &netattach] {
            let out = side.exec("DEL", pod_name, &uid, &kns);
            assert!(
                out.ok,
                "{} DEL failed: {}\n{}",
                side.label, out.stdout, out.stderr
            );
        }
    });
    let mut leftovers = Vec::new();
    for side in [&multus, &netattach] {
        let links: Vec<String> = side
            .netns
            .link_names()
            .into_iter()
            .filter(|n| n != "lo")
            .collect();
        if !links.is_empty() {
            leftovers.push(format!("{}: links {links:?} in the pod netns", side.label));
        }
    }
    for dir in ["multus-cluster-ipam", "netattach-cluster-ipam", "nad-ipam"] {
        let reserved: Vec<String> = files_under(&t.join(dir))
            .into_iter()
            .filter(|f| {
                Path::new(f)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
            })
            .collect();
        if !reserved.is_empty() {
            leftovers.push(format!("host-local reservations left in {dir}: {reserved:?}"));
        }
    }
    for dir in ["multus-cni", "netattach-state"] {
        let left = files_under(&t.join(dir));
        if !left.is_empty() {
            leftovers.push(format!("files left in {dir}: {left:?}"));
        }
    }
    // Only the node's own links may remain: stor0/stor0p, and the bridge cni0 (the bridge
    // plugin never deletes its bridge, for either meta-plugin).
    let node_links: Vec<String> = node
        .link_names()
        .into_iter()
        .filter(|n| !["lo", "stor0", "stor0p", "cni0"].contains(&n.as_str()))
        .collect();
    if !node_links.is_empty() {
        leftovers.push(format!("links left in the node namespace: {node_links:?}"));
    }
    drop(daemon);
    assert!(
        unexpected.is_empty() && leftovers.is_empty(),
        "netattach differs from Multus thin:\n  {}\nafter DEL (leftovers, status handling):\n  {}",
        unexpected.join("\n  "),
        leftovers.join("\n  ")
    );
}
