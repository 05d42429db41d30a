//! End-to-end tests of `netattach lab` and `netattach lab down`, running the real binary.
//! The lab attaches every pod through the `netattach` meta-plugin (cluster network on `eth0`,
//! Longhorn's storage NAD on `lhnet1`), so these also test that path end to end.
//!
//! They need root (network namespaces) and fail, never skip, without it. They share the
//! `nalab-` namespace prefix and `/run/netattach-lab`, so they run one at a time under
//! [`SERIAL`]; each leaves the machine as it found it (a guard runs `lab down` on failure).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::new(());

const BIN: &str = env!("CARGO_BIN_EXE_netattach");

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .expect("Uid line");
    assert_eq!(
        euid, "0",
        "the lab tests need root (network namespaces); run them as root, they do not skip"
    );
}

fn lab_namespaces() -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir("/run/netns") {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.starts_with("nalab-"))
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn netattach(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().expect("run netattach");
    eprintln!(
        "$ netattach {}\n--- stdout\n{}--- stderr\n{}--- {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status
    );
    out
}

/// Runs `lab down` when dropped, so a failing test does not leave a lab for the next one.
struct DownOnDrop;

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if !lab_namespaces().is_empty() || Path::new("/run/netattach-lab").exists() {
            let _ = Command::new(BIN).args(["lab", "down"]).output();
        }
    }
}

fn start() -> (MutexGuard<'static, ()>, DownOnDrop) {
    let guard = serial();
    require_root();
    assert_eq!(
        lab_namespaces(),
        Vec::<String>::new(),
        "a lab is already present before the test"
    );
    (guard, DownOnDrop)
}

/// One row of the results table, cut at the header's column offsets (cells may hold spaces).
#[derive(Debug)]
struct TableRow {
    pod: String,
    node: String,
    eth0: String,
    lhnet1: String,
    longhorn: String,
    reachability: String,
}

const HEADERS: [&str; 6] = [
    "POD",
    "NODE",
    "ETH0 (CLUSTER)",
    "LHNET1 (STORAGE)",
    "LONGHORN IP",
    "REACHABILITY",
];

fn table(stdout: &str) -> Vec<TableRow> {
    let header = stdout
        .lines()
        .find(|l| l.starts_with("POD "))
        .unwrap_or_else(|| panic!("no table header in:\n{stdout}"));
    let starts: Vec<usize> = HEADERS
        .iter()
        .map(|h| {
            header
                .find(h)
                .unwrap_or_else(|| panic!("no column {h} in {header}"))
        })
        .collect();
    stdout
        .lines()
        .filter(|l| l.starts_with("nalab-n"))
        .map(|l| {
            let cell = |i: usize| -> String {
                let from = starts[i].min(l.len());
                let to = starts.get(i + 1).map_or(l.len(), |&e| e.min(l.len()));
                l[from..to].trim().to_string()
            };
            let row = TableRow {
                pod: cell(0),
                node: cell(1),
                eth0: cell(2),
                lhnet1: cell(3),
                longhorn: cell(4),
                reachability: cell(5),
            };
            assert!(!row.reachability.is_empty(), "short table row: {l}");
            row
        })
        .collect()
}

fn last_line(stdout: &str) -> &str {
    stdout.lines().last().unwrap_or_default()
}

fn ipv4_with_prefix(cidr: &str, want_prefix: &str) -> Ipv4Addr {
    let (ip, prefix) = cidr
        .split_once('/')
        .unwrap_or_else(|| panic!("no prefix in {cidr}"));
    assert_eq!(prefix, want_prefix, "{cidr}");
    ip.parse().unwrap_or_else(|e| panic!("{cidr}: {e}"))
}

/// A storage (`lhnet1`) address from the table: in 198.18.4.0/24.
fn ipv4_of(cidr: &str) -> Ipv4Addr {
    ipv4_with_prefix(cidr, "24")
}

/// Every row: eth0 from the cluster network (10.42.0.0/16, unique), lhnet1 from the storage
/// range (198.18.4.0/24, unique), and the storage IP Longhorn reads from network-status is
/// exactly lhnet1's address.
#[track_caller]
fn assert_both_networks(rows: &[TableRow]) {
    let mut cluster: Vec<Ipv4Addr> = Vec::new();
    let mut storage: Vec<Ipv4Addr> = Vec::new();
    for r in rows {
        let eth0 = ipv4_with_prefix(&r.eth0, "16");
        assert_eq!(
            eth0.octets()[..2],
            [10, 42],
            "{}: eth0 {eth0} outside 10.42.0.0/16",
            r.pod
        );
        let lhnet1 = ipv4_of(&r.lhnet1);
        assert_eq!(
            lhnet1.octets()[..3],
            [198, 18, 4],
            "{}: lhnet1 {lhnet1} outside 198.18.4.0/24",
            r.pod
        );
        assert_eq!(
            r.longhorn,
            format!("{lhnet1} ok"),
            "{}: Longhorn's parse of network-status must give lhnet1's address",
            r.pod
        );
        cluster.push(eth0);
        storage.push(lhnet1);
    }
    for addrs in [&mut cluster, &mut storage] {
        let n = addrs.len();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), n, "addresses are not distinct: {rows:?}");
    }
}

/// The detach step reports no link, no allocation in either pool and no record left.
#[track_caller]
fn assert_detached_clean(stdout: &str) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("[7/7] detaching"))
        .unwrap_or_else(|| panic!("no detach step in:\n{stdout}"));
    for want in [
        "done",
        "no link left in any pod",
        "0 allocations in both pools (10.42.0.0/16, 198.18.4.0/24)",
        "no attachment record left",
    ] {
        assert!(line.contains(want), "detach line lacks {want:?}: {line}");
    }
}

/// Longhorn's `GetIPFromPodByCNISetting`, done here independently of the lab: the entry named
/// exactly `setting`, its ips string-sorted, the first.
fn longhorn_storage_ip(status: &serde_json::Value, setting: &str) -> Option<String> {
    let entry = status
        .as_array()?
        .iter()
        .find(|e| e["name"].as_str() == Some(setting))?;
    let mut ips: Vec<String> = entry["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip.as_str().map(str::to_string))
        .collect();
    ips.sort();
    ips.into_iter().next()
}

/// The global-scope addresses of `ifname` in the lab namespace `netns`; `None` when the link
/// is missing.
fn addresses_in(netns: &str, ifname: &str) -> Option<Vec<String>> {
    let ns = netattach_netdev::Netns::open(&Path::new("/run/netns").join(netns))
        .unwrap_or_else(|e| panic!("open {netns}: {e}"));
    let mut h = netattach_netdev::Handle::in_netns(&ns).unwrap_or_else(|e| panic!("netlink in {netns}: {e}"));
    let link = h
        .link_by_name(ifname)
        .unwrap_or_else(|e| panic!("{ifname} in {netns}: {e}"))?;
    let addrs = h
        .addresses(link.index)
        .unwrap_or_else(|e| panic!("addresses in {netns}: {e}"));
    Some(
        addrs
            .into_iter()
            .filter(|a| a.scope == 0)
            .map(|a| a.addr.to_string())
            .collect(),
    )
}

#[test]
fn lab_passes_with_distinct_addresses_and_leaves_nothing() {
    let _serial = start();
    let out = netattach(&[
        "lab",
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
        "--range",
        "198.18.4.0/24",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {}", out.status);
    assert!(
        last_line(&stdout).starts_with("PASS"),
        "last line: {}",
        last_line(&stdout)
    );

    let rows = table(&stdout);
    assert_eq!(rows.len(), 4, "table rows");
    assert_both_networks(&rows);
    assert_detached_clean(&stdout);
    assert!(
        stdout.contains("[5/7] reading network-status as Longhorn does"),
        "no network-status step"
    );
    let pods: Vec<&str> = rows.iter().map(|r| r.pod.as_str()).collect();
    assert_eq!(pods, ["nalab-n1-p1", "nalab-n1-p2", "nalab-n2-p1", "nalab-n2-p2"]);
    assert!(rows.iter().all(|r| r.pod.starts_with(&r.node)));
    for r in &rows {
        assert!(
            r.reachability.starts_with("2/2 ok (1472B DF)"),
            "{}: {}",
            r.pod,
            r.reachability
        );
        assert!(
            r.reachability.contains("same node 1/1 ok"),
            "{}: {}",
            r.pod,
            r.reachability
        );
    }

    assert_eq!(lab_namespaces(), Vec::<String>::new(), "namespaces left behind");
    assert!(
        !Path::new("/run/netattach-lab").exists(),
        "lab directory left behind"
    );
}

#[test]
fn keep_leaves_a_working_lab_until_down() {
    let _serial = start();
    let out = netattach(&[
        "lab",
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
        "--range",
        "198.18.4.0/24",
        "--keep",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {}", out.status);
    assert!(
        last_line(&stdout).starts_with("PASS"),
        "last line: {}",
        last_line(&stdout)
    );
    assert!(
        stdout.contains("nsenter --net=/run/netns/nalab-n1-p1"),
        "no way in printed"
    );
    assert!(stdout.contains("netattach lab down"), "no way out printed");

    let expected = [
        "nalab-n1",
        "nalab-n1-p1",
        "nalab-n1-p2",
        "nalab-n2",
        "nalab-n2-p1",
        "nalab-n2-p2",
        "nalab-sw",
    ];
    assert_eq!(lab_namespaces(), expected);
    assert!(Path::new("/run/netattach-lab/state.json").exists());

    // The pods still reach each other across nodes, at full MTU with DF.
    let rows = table(&stdout);
    let addr = |pod: &str| -> IpAddr {
        let row = rows
            .iter()
            .find(|r| r.pod == pod)
            .unwrap_or_else(|| panic!("{pod} not in the table"));
        IpAddr::V4(ipv4_of(&row.lhnet1))
    };
    assert_both_networks(&rows);

    // What the meta-plugin left while attached: in each pod eth0 and lhnet1 with the table's
    // addresses; a network-status whose Longhorn parse is lhnet1's address, `default` only on
    // the cluster network; and one attachment record per pod in its node's cniDir.
    for r in &rows {
        let eth0 = addresses_in(&r.pod, "eth0").unwrap_or_else(|| panic!("{}: no eth0", r.pod));
        assert_eq!(eth0, std::slice::from_ref(&r.eth0), "{}: eth0", r.pod);
        let lhnet1 = addresses_in(&r.pod, "lhnet1").unwrap_or_else(|| panic!("{}: no lhnet1", r.pod));
        assert_eq!(lhnet1, std::slice::from_ref(&r.lhnet1), "{}: lhnet1", r.pod);
        let path = format!(
            "/run/netattach-lab/k8s/pods/longhorn-system/{}.status.json",
            r.pod
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let status: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let lhnet1_ip = r.lhnet1.split('/').next().map(str::to_string);
        assert_eq!(
            longhorn_storage_ip(&status, "longhorn-system/storage"),
            lhnet1_ip,
            "{path}: {status}"
        );
        let entries = status.as_array().unwrap_or_else(|| panic!("{path}: not a list"));
        assert_eq!(entries.len(), 2, "{path}: {status}");
        let defaults: Vec<&str> = entries
            .iter()
            .filter(|e| e["default"] == serde_json::json!(true))
            .filter_map(|e| e["interface"].as_str())
            .collect();
        assert_eq!(defaults, ["eth0"], "{path}: default only on the cluster network");
    }
    for node in ["nalab-n1", "nalab-n2"] {
        let dir = format!("/run/netattach-lab/nodes/{node}/cni");
        let records = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count();
        assert_eq!(records, 2, "{dir}: one attachment record per attached pod");
    }
    for (src, dst) in [
        ("nalab-n1-p1", "nalab-n2-p2"),
        ("nalab-n2-p1", "nalab-n1-p2"),
        ("nalab-n1-p1", "nalab-n1-p2"),
    ] {
        netattach_lab::validate::ping_from(src, addr(dst), 1472, true)
            .unwrap_or_else(|e| panic!("{src} -> {dst} after --keep: {e}"));
    }

    // A second lab refuses to start on top of the kept one, and creates nothing.
    let again = netattach(&["lab", "--nodes", "1"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("lab down"));
    assert_eq!(lab_namespaces(), expected);

    let down = netattach(&["lab", "down"]);
    assert!(down.status.success(), "lab down: {}", down.status);
    assert_eq!(lab_namespaces(), Vec::<String>::new());
    assert!(!Path::new("/run/netattach-lab").exists());

    // Idempotent.
    let down = netattach(&["lab", "down"]);
    assert!(down.status.success(), "second lab down: {}", down.status);
    assert!(String::from_utf8_lossy(&down.stdout).contains("nothing to remove"));
}

#[test]
fn bad_input_is_refused_before_anything_is_built() {
    let _serial = start();
    let cases: [(&[&str], &[&str]); 5] = [
        (&["lab", "--mode", "source"], &["--mode", "source", "fix:"]),
        (
            &[
                "lab",
                "--nodes",
                "2",
                "--pods-per-node",
                "2",
                "--range",
                "198.18.4.0/30",
            ],
            &["--range", "198.18.4.0/30", "room for 2", "need 4", "fix:"],
        ),
        (
            &["lab", "--mode", "passthru", "--pods-per-node", "2"],
            &["--mode", "one macvlan per master", "fix:"],
        ),
        (&["lab", "--mtu", "100"], &["--mtu", "100", "fix:"]),
        (
            &["lab", "--range", "10.42.0.0/24"],
            &["--range", "10.42.0.0/24", "overlaps", "cluster network", "fix:"],
        ),
    ];
    for (args, wants) in cases {
        let out = netattach(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for want in wants {
            assert!(stderr.contains(want), "{args:?}: stderr lacks {want:?}: {stderr}");
        }
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("[1/"),
            "{args:?} started building"
        );
        assert_eq!(
            lab_namespaces(),
            Vec::<String>::new(),
            "{args:?} created namespaces"
        );
        assert!(
            !Path::new("/run/netattach-lab").exists(),
            "{args:?} created the lab directory"
        );
    }
}

#[test]
fn private_mode_passes_with_same_node_pairs_isolated() {
    let _serial = start();
    let out = netattach(&[
        "lab",
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
        "--range",
        "198.18.4.0/24",
        "--mode",
        "private",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {}", out.status);
    assert!(
        last_line(&stdout).starts_with("PASS"),
        "last line: {}",
        last_line(&stdout)
    );
    let rows = table(&stdout);
    assert_eq!(rows.len(), 4);
    assert_both_networks(&rows);
    assert_detached_clean(&stdout);
    for r in &rows {
        assert!(
            r.reachability.starts_with("2/2 ok"),
            "{}: {}",
            r.pod,
            r.reachability
        );
        assert!(
            r.reachability.contains("same node isolated (private)"),
            "{}: {}",
            r.pod,
            r.reachability
        );
    }
    assert_eq!(lab_namespaces(), Vec::<String>::new());
}

/// VEPA sends same-node traffic out to the switch, which must hairpin it back: the lab turns
/// hairpin on for its switch ports, so same-node pairs reach each other through the switch.
#[test]
fn vepa_mode_reaches_same_node_pods_through_the_switch() {
    let _serial = start();
    let out = netattach(&[
        "lab",
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
        "--range",
        "198.18.4.0/24",
        "--mode",
        "vepa",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {}\n{stdout}", out.status);
    assert!(
        last_line(&stdout).starts_with("PASS"),
        "last line: {}",
        last_line(&stdout)
    );
    let rows = table(&stdout);
    assert_both_networks(&rows);
    assert_detached_clean(&stdout);
    for r in rows {
        assert!(
            r.reachability.contains("same node 1/1 ok"),
            "{}: {}",
            r.pod,
            r.reachability
        );
    }
    assert_eq!(lab_namespaces(), Vec::<String>::new());
}

/// How to run the test that needs an API server.
const HOW_TO_RUN_WITH_K8S: &str =
    "tools/test-k8s env CARGO_TARGET_DIR=target/labk cargo test -p netattach --test lab";

/// `netattach daemon` processes serving a lab node (their socket is under the lab directory).
fn lab_daemons() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(" daemon ") && c.contains("/run/netattach-lab/daemons/"))
        .collect()
}

/// With `--kubeconfig`, the NAD and the pods are API objects, each lab node has its own
/// `netattach daemon`, the meta-plugin asks it (Kubernetes mode), and Longhorn's parse of the
/// network-status on the pod object is lhnet1's address. Afterwards no namespace, no daemon
/// and no API object of the lab is left.
#[test]
fn lab_against_the_api_server_with_one_daemon_per_node() {
    let kubeconfig = std::env::var("KUBECONFIG").ok().filter(|k| !k.is_empty());
    let (Some(kubeconfig), Some(_)) = (kubeconfig, std::env::var_os("NETATTACH_TESTENV_DIR")) else {
        panic!(
            "this test needs the test API server (KUBECONFIG and NETATTACH_TESTENV_DIR are not set); run: {HOW_TO_RUN_WITH_K8S}"
        );
    };
    let _serial = start();
    assert_eq!(lab_daemons(), Vec::<String>::new(), "lab daemons before the test");
    let out = netattach(&[
        "lab",
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
        "--range",
        "198.18.4.0/24",
        "--kubeconfig",
        &kubeconfig,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {}", out.status);
    assert!(
        last_line(&stdout).starts_with("PASS"),
        "last line: {}",
        last_line(&stdout)
    );
    let server_line = stdout
        .lines()
        .find(|l| l.starts_with("API server "))
        .unwrap_or_else(|| panic!("no API server line in:\n{stdout}"));
    assert!(server_line.contains("https://127.0.0.1:"), "{server_line}");
    assert!(server_line.contains("2 netattach daemon(s)"), "{server_line}");
    assert!(stdout.contains("2 daemon(s) ready"), "daemons not reported ready");
    assert!(
        stdout.contains("from the pod objects in https://127.0.0.1:"),
        "network-status not read from the API server"
    );

    let rows = table(&stdout);
    assert_eq!(rows.len(), 4, "table rows");
    assert_both_networks(&rows);
    assert_detached_clean(&stdout);
    assert!(
        stdout.contains("2 daemon(s) stopped"),
        "daemons not reported stopped"
    );

    assert_eq!(lab_namespaces(), Vec::<String>::new(), "namespaces left behind");
    assert!(
        !Path::new("/run/netattach-lab").exists(),
        "lab directory left behind"
    );
    assert_eq!(lab_daemons(), Vec::<String>::new(), "daemons left behind");

    // Nothing of the lab is left in the API server.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
        let cluster = netattach_testenv::cluster().await;
        let client = cluster.admin_client();
        let pods: kube::Api<Pod> = kube::Api::all(client.clone());
        let left: Vec<String> = pods
            .list(&Default::default())
            .await
            .expect("list pods")
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .filter(|n| n.starts_with("nalab-"))
            .collect();
        assert_eq!(left, Vec::<String>::new(), "lab pods left in the API server");
        let nodes: kube::Api<Node> = kube::Api::all(client.clone());
        let left: Vec<String> = nodes
            .list(&Default::default())
            .await
            .expect("list nodes")
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .filter(|n| n.starts_with("nalab-"))
            .collect();
        assert_eq!(left, Vec::<String>::new(), "lab nodes left in the API server");
        let namespaces: kube::Api<Namespace> = kube::Api::all(client);
        assert!(
            namespaces
                .get_opt("longhorn-system")
                .await
                .expect("get namespace")
                .is_none(),
            "the lab created longhorn-system and must delete it"
        );
    });
}
