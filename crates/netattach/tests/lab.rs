//! End-to-end tests of `netattach lab` and `netattach lab down`, running the real binary.
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

struct TableRow {
    pod: String,
    node: String,
    address: String,
    reachability: String,
}

fn table(stdout: &str) -> Vec<TableRow> {
    stdout
        .lines()
        .filter(|l| l.starts_with("nalab-n"))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert!(cols.len() >= 5, "short table row: {l}");
            TableRow {
                pod: cols[0].to_string(),
                node: cols[1].to_string(),
                address: cols[3].to_string(),
                reachability: cols[4..].join(" "),
            }
        })
        .collect()
}

fn last_line(stdout: &str) -> &str {
    stdout.lines().last().unwrap_or_default()
}

fn ipv4_of(cidr: &str) -> Ipv4Addr {
    let (ip, prefix) = cidr
        .split_once('/')
        .unwrap_or_else(|| panic!("no prefix in {cidr}"));
    assert_eq!(prefix, "24", "{cidr}");
    ip.parse().unwrap_or_else(|e| panic!("{cidr}: {e}"))
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
    let mut addrs: Vec<Ipv4Addr> = rows.iter().map(|r| ipv4_of(&r.address)).collect();
    for a in &addrs {
        assert_eq!(a.octets()[..3], [198, 18, 4], "{a} outside 198.18.4.0/24");
    }
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 4, "addresses are not distinct");
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
        IpAddr::V4(ipv4_of(&row.address))
    };
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
    let cases: [(&[&str], &[&str]); 4] = [
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
    for r in table(&stdout) {
        assert!(
            r.reachability.contains("same node 1/1 ok"),
            "{}: {}",
            r.pod,
            r.reachability
        );
    }
    assert_eq!(lab_namespaces(), Vec::<String>::new());
}
