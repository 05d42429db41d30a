//! The checks a user's install guide demands before anything depends on the storage network:
//! every pod has both interfaces, `eth0` (cluster network) and `lhnet1` (storage), each present,
//! up, macvlan in the right mode, right MTU, holding its address; addresses are unique and
//! inside their range; the network-status the meta-plugin published lists both networks,
//! `default: true` only on the cluster network, and Longhorn's own parse of it yields exactly
//! `lhnet1`'s address; every pod reaches every pod on another node over storage, also with a
//! full-MTU datagram that may not be fragmented; same-node pairs behave as the macvlan mode
//! says; and after DEL nothing is left (no link in any pod namespace, no allocation in either
//! pool of the IPAM store, no attachment record in any node's `cniDir`).
//!
//! Checks never fail the lab with an error: each finding is a problem string, and any problem
//! turns the verdict into `FAIL`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netattach_ipam::{FileStore, IpRange, Store};
use netattach_netdev::{Handle, MacvlanMode, probe};
use serde_json::Value;

use crate::attach::{Attachment, Runtime};
use crate::cleanup::check_interrupt;
use crate::config::{
    CLUSTER_IFNAME, CLUSTER_MTU, CLUSTER_NETWORK_NAME, CLUSTER_RANGE, Plan, STORAGE_IFNAME, STORAGE_SETTING,
    SameNode,
};
use crate::error::LabError;
use crate::topology::Topology;

/// ICMP payload of the small probe (like `ping`'s default).
pub const SMALL_PAYLOAD: usize = 56;
/// How long to wait for a reply that should come.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries of the small probe (the first may wait for ARP / neighbour discovery).
pub const SMALL_TRIES: usize = 3;
/// How long to wait before concluding that an isolated pair is isolated.
pub const ISOLATION_TIMEOUT: Duration = Duration::from_millis(400);

/// How long IPv6 addresses may stay tentative (DAD) after ADD.
pub const DAD_WAIT: Duration = Duration::from_secs(5);

/// What one pod interface should be.
struct Expect<'a> {
    ifname: &'static str,
    addr: Option<IpNet>,
    mode: MacvlanMode,
    mtu: u32,
    what: &'a str,
}

/// Check one interface of a pod; adds the problems.
fn check_link(
    h: &mut Handle,
    name: &str,
    want: &Expect<'_>,
    dad_deadline: Instant,
    problems: &mut Vec<String>,
) -> Result<(), LabError> {
    let ifname = want.ifname;
    let link = h
        .link_by_name(ifname)
        .map_err(LabError::netdev(format!("reading {ifname} in {name}")))?;
    let Some(link) = link else {
        problems.push(format!(
            "{name}: interface {ifname} ({}) is missing after a successful ADD",
            want.what
        ));
        return Ok(());
    };
    if link.kind.as_deref() != Some("macvlan") {
        problems.push(format!(
            "{name}: {ifname} is a {} link, not macvlan",
            link.kind.as_deref().unwrap_or("plain")
        ));
    }
    if link.macvlan_mode != Some(want.mode) {
        problems.push(format!(
            "{name}: {ifname} is in macvlan mode {}, expected {}",
            link.macvlan_mode
                .map(|m| m.to_string())
                .unwrap_or_else(|| "none".into()),
            want.mode
        ));
    }
    if !link.up {
        problems.push(format!("{name}: {ifname} is down"));
    }
    if link.mtu != want.mtu {
        problems.push(format!(
            "{name}: {ifname} has MTU {}, expected {}",
            link.mtu, want.mtu
        ));
    }
    let Some(addr) = want.addr else {
        problems.push(format!("{name}: {ifname} ({}) has no address", want.what));
        return Ok(());
    };
    // IPv6: the plugin (like the reference plugin) waits for DAD only when the range has a
    // gateway, so an address may still be tentative right after ADD. Wait for it, within one
    // deadline for the whole step.
    let found = loop {
        let addrs = h
            .addresses(link.index)
            .map_err(LabError::netdev(format!("reading addresses in {name}")))?;
        let found = addrs.into_iter().find(|a| a.addr == addr);
        match &found {
            Some(a) if a.tentative && !a.dadfailed && Instant::now() < dad_deadline => {
                check_interrupt()?;
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => break found,
        }
    };
    match found {
        None => problems.push(format!("{name}: {ifname} does not carry its address {addr}")),
        Some(a) if a.dadfailed => problems.push(format!(
            "{name}: address {addr} failed IPv6 duplicate address detection"
        )),
        Some(a) if a.tentative => problems.push(format!(
            "{name}: address {addr} is still IPv6-tentative {}s after ADD",
            DAD_WAIT.as_secs()
        )),
        Some(_) => {}
    }
    Ok(())
}

/// Check both interfaces of every attached pod: `eth0` (the cluster network) and `lhnet1`
/// (storage); returns the problems.
pub fn check_interfaces(
    plan: &Plan,
    topo: &Topology,
    attachments: &[Attachment],
) -> Result<Vec<String>, LabError> {
    let mut problems = Vec::new();
    let dad_deadline = Instant::now() + DAD_WAIT;
    for att in attachments {
        check_interrupt()?;
        let Some(pod) = topo.pods.get(att.pod) else {
            continue;
        };
        if att.outcome.is_err() {
            continue;
        }
        let name = &pod.plan.netns;
        let mut h = pod.ns.handle()?;
        let cluster = Expect {
            ifname: CLUSTER_IFNAME,
            addr: att.cluster_address(),
            mode: MacvlanMode::Bridge,
            mtu: CLUSTER_MTU,
            what: "cluster network",
        };
        let storage = Expect {
            ifname: STORAGE_IFNAME,
            addr: att.storage,
            mode: plan.mode,
            mtu: plan.mtu,
            what: "storage network",
        };
        check_link(&mut h, name, &cluster, dad_deadline, &mut problems)?;
        check_link(&mut h, name, &storage, dad_deadline, &mut problems)?;
    }
    Ok(problems)
}

/// A network's range, its text, the pod interface and how to get a pod's address on it.
type Network<'a> = (
    &'a IpRange,
    &'a str,
    &'static str,
    fn(&Attachment) -> Option<IpNet>,
);

/// Addresses must be unique and inside their range, on both networks; returns the problems.
pub fn check_addresses(plan: &Plan, topo: &Topology, attachments: &[Attachment]) -> Vec<String> {
    let mut problems = Vec::new();
    let networks: [Network<'_>; 2] = [
        (&plan.range, plan.range_text.as_str(), STORAGE_IFNAME, |a| {
            a.storage
        }),
        (&plan.cluster_range, CLUSTER_RANGE, CLUSTER_IFNAME, |a| {
            a.cluster_address()
        }),
    ];
    for (range, range_text, ifname, address) in networks {
        let mut seen: BTreeMap<IpAddr, &str> = BTreeMap::new();
        for att in attachments {
            let (Some(pod), Some(addr)) = (topo.pods.get(att.pod), address(att)) else {
                continue;
            };
            let name = pod.plan.netns.as_str();
            if !range.contains(addr.addr()) || addr.prefix_len() != range.prefix_len() {
                problems.push(format!(
                    "{name}: {ifname} address {addr} is outside the range {range_text}"
                ));
            }
            if let Some(other) = seen.insert(addr.addr(), name) {
                problems.push(format!(
                    "DUPLICATE {ifname} address {}: held by {other} and {name}",
                    addr.addr()
                ));
            }
        }
    }
    problems
}

/// Longhorn's `GetIPFromPodByCNISetting` on a parsed network-status: the entry whose `name`
/// equals `setting` exactly, its `ips` sorted as strings, the first one. `None` is Longhorn's
/// silent fallback to the pod IP.
pub fn longhorn_storage_ip(status: &[Value], setting: &str) -> Option<String> {
    let entry = status
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(setting))?;
    let mut ips: Vec<String> = entry
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.as_str().map(str::to_string))
        .collect();
    ips.sort();
    ips.into_iter().next()
}

fn field<'a>(entry: &'a Value, key: &str) -> &'a str {
    entry.get(key).and_then(Value::as_str).unwrap_or("")
}

fn is_default(entry: &Value) -> bool {
    entry.get("default").and_then(Value::as_bool) == Some(true)
}

fn lists_ip(entry: &Value, addr: Option<IpNet>) -> bool {
    let Some(addr) = addr else { return false };
    let want = addr.addr().to_string();
    entry
        .get("ips")
        .and_then(Value::as_array)
        .is_some_and(|ips| ips.iter().any(|ip| ip.as_str() == Some(want.as_str())))
}

/// The network-status the meta-plugin published for each pod: exactly two entries, the cluster
/// network on `eth0` (the only one with `default: true`, listing eth0's address) and
/// `longhorn-system/storage` on `lhnet1`; and Longhorn's own parse yields the address `lhnet1`
/// carries. Returns the problems.
pub fn check_status(topo: &Topology, attachments: &[Attachment]) -> Vec<String> {
    let mut problems = Vec::new();
    for att in attachments {
        let Some(pod) = topo.pods.get(att.pod) else {
            continue;
        };
        if att.outcome.is_err() {
            continue;
        }
        let name = pod.plan.netns.as_str();
        let status = match &att.status {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!(
                    "{name}: no network-status ({e}); Longhorn would silently use the pod IP"
                ));
                continue;
            }
        };
        if status.len() != 2 {
            problems.push(format!(
                "{name}: network-status has {} entries, expected 2 (cluster network + storage)",
                status.len()
            ));
        }
        let cluster = status.iter().find(|e| field(e, "interface") == CLUSTER_IFNAME);
        match cluster {
            None => problems.push(format!("{name}: network-status has no {CLUSTER_IFNAME} entry")),
            Some(e) => {
                if field(e, "name") != CLUSTER_NETWORK_NAME {
                    problems.push(format!(
                        "{name}: the {CLUSTER_IFNAME} entry of network-status is named `{}`, expected `{CLUSTER_NETWORK_NAME}`",
                        field(e, "name")
                    ));
                }
                if !is_default(e) {
                    problems.push(format!(
                        "{name}: the cluster network entry of network-status lacks `default: true`"
                    ));
                }
                if !lists_ip(e, att.cluster_address()) {
                    problems.push(format!(
                        "{name}: the cluster network entry of network-status does not list eth0's address"
                    ));
                }
            }
        }
        let storage = status.iter().find(|e| field(e, "name") == STORAGE_SETTING);
        match storage {
            None => problems.push(format!(
                "{name}: network-status has no entry named `{STORAGE_SETTING}`; Longhorn would silently use the pod IP"
            )),
            Some(e) => {
                if field(e, "interface") != STORAGE_IFNAME {
                    problems.push(format!(
                        "{name}: the `{STORAGE_SETTING}` entry of network-status has interface `{}`, expected `{STORAGE_IFNAME}`",
                        field(e, "interface")
                    ));
                }
            }
        }
        let defaults = status.iter().filter(|e| is_default(e)).count();
        if defaults != 1 || cluster.is_some_and(|c| !is_default(c)) {
            problems.push(format!(
                "{name}: network-status has {defaults} entries with `default: true`; only the cluster network may"
            ));
        }
        let longhorn = longhorn_storage_ip(status, STORAGE_SETTING);
        let lhnet1 = att.storage.map(|a| a.addr().to_string());
        if longhorn.is_none() || longhorn != lhnet1 {
            problems.push(format!(
                "{name}: Longhorn reads storage IP {} from network-status, but {STORAGE_IFNAME} has {}",
                longhorn.as_deref().unwrap_or("(none)"),
                lhnet1.as_deref().unwrap_or("(none)")
            ));
        }
    }
    problems
}

/// The Longhorn cell of the results table: the storage IP Longhorn reads from network-status
/// and whether it is `lhnet1`'s.
pub fn describe_longhorn(att: &Attachment) -> String {
    let Ok(status) = &att.status else {
        return if att.outcome.is_ok() {
            "no network-status".into()
        } else {
            "-".into()
        };
    };
    match longhorn_storage_ip(status, STORAGE_SETTING) {
        None => "none (pod IP fallback)".into(),
        Some(ip) if Some(ip.as_str()) == att.storage.map(|a| a.addr().to_string()).as_deref() => {
            format!("{ip} ok")
        }
        Some(ip) => format!("{ip} MISMATCH"),
    }
}

/// What one pod's probes found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// Pods on other nodes reached (small and full-MTU).
    pub cross_ok: usize,
    /// Pods on other nodes.
    pub cross_total: usize,
    /// Same-node pods reached.
    pub same_ok: usize,
    /// Same-node pods confirmed isolated (private mode).
    pub same_isolated: usize,
    /// Same-node pods.
    pub same_total: usize,
}

fn reach(ns: &netattach_netdev::Netns, dst: IpAddr, full: usize) -> Result<(), String> {
    let mut last = String::new();
    let mut small_ok = false;
    for _ in 0..SMALL_TRIES {
        match probe::ping(ns, dst, SMALL_PAYLOAD, false, REPLY_TIMEOUT) {
            Ok(_) => {
                small_ok = true;
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    if !small_ok {
        return Err(format!("no reply from {dst} ({SMALL_PAYLOAD}B): {last}"));
    }
    probe::ping(ns, dst, full, true, REPLY_TIMEOUT)
        .map(drop)
        .map_err(|e| format!("{dst} answers small pings but not a full-MTU {full}B datagram with DF: {e}"))
}

/// One echo request from inside the lab namespace `netns` (e.g. `nalab-n1-p1` of a lab kept
/// with `--keep`) to `dst`, `payload` bytes of ICMP data, optionally with DF; the round trip.
pub fn ping_from(
    netns: &str,
    dst: IpAddr,
    payload: usize,
    dont_fragment: bool,
) -> Result<Duration, LabError> {
    if !netns.starts_with(crate::config::PREFIX) {
        return Err(LabError::State {
            path: std::path::Path::new(netattach_netdev::netns::NETNS_RUN_DIR).join(netns),
            problem: format!(
                "`{netns}` is not a lab namespace (they start with {})",
                crate::config::PREFIX
            ),
        });
    }
    let path = std::path::Path::new(netattach_netdev::netns::NETNS_RUN_DIR).join(netns);
    let ns = netattach_netdev::Netns::open(&path).map_err(LabError::netdev(format!("opening {netns}")))?;
    probe::ping(&ns, dst, payload, dont_fragment, REPLY_TIMEOUT)
        .map_err(LabError::netdev(format!("ping {dst} from {netns} ({payload}B)")))
}

/// Ping every pod from every pod; returns per-pod results (indexed like `topo.pods`) and the
/// problems.
pub fn ping_mesh(
    plan: &Plan,
    topo: &Topology,
    attachments: &[Attachment],
) -> Result<(Vec<Reach>, Vec<String>), LabError> {
    let addr_of: BTreeMap<usize, IpAddr> = attachments
        .iter()
        .filter_map(|a| a.storage.map(|n| (a.pod, n.addr())))
        .collect();
    let full = plan.full_payload();
    let same = plan.same_node_expectation();
    let mut results = vec![Reach::default(); topo.pods.len()];
    let mut problems = Vec::new();
    for (si, src) in topo.pods.iter().enumerate() {
        for (di, dst) in topo.pods.iter().enumerate() {
            if si == di {
                continue;
            }
            check_interrupt()?;
            let same_node = src.plan.node == dst.plan.node;
            let r = &mut results[si];
            if same_node {
                r.same_total += 1;
            } else {
                r.cross_total += 1;
            }
            // A pod without an address already failed at ADD; it counts as unreached.
            let (Some(&src_ip), Some(&dst_ip)) = (addr_of.get(&si), addr_of.get(&di)) else {
                continue;
            };
            let pair = format!("{} ({src_ip}) -> {} ({dst_ip})", src.plan.netns, dst.plan.netns);
            if same_node && same == SameNode::Isolated {
                match probe::ping(src.ns.netns(), dst_ip, SMALL_PAYLOAD, false, ISOLATION_TIMEOUT) {
                    Ok(_) => problems.push(format!(
                        "{pair}: reachable, but private mode must isolate same-node pods"
                    )),
                    Err(_) => r.same_isolated += 1,
                }
                continue;
            }
            match reach(src.ns.netns(), dst_ip, full) {
                Ok(()) if same_node => r.same_ok += 1,
                Ok(()) => r.cross_ok += 1,
                Err(why) => problems.push(format!("{pair}: {why}")),
            }
        }
    }
    Ok((results, problems))
}

/// After DEL: no link left in any pod namespace (but `lo`), no allocation left in the store
/// (either pool), no attachment record left in any node's `cniDir`. Returns the problems.
pub fn check_leaks(plan: &Plan, topo: &Topology, runtime: &Runtime) -> Result<Vec<String>, LabError> {
    let mut problems = Vec::new();
    for pod in &topo.pods {
        let mut h = pod.ns.handle()?;
        let links = h
            .links()
            .map_err(LabError::netdev(format!("listing links in {}", pod.plan.netns)))?;
        for l in links.iter().filter(|l| l.name != "lo") {
            problems.push(format!(
                "{}: link {} ({}) still present after DEL",
                pod.plan.netns,
                l.name,
                l.kind.as_deref().unwrap_or("?")
            ));
        }
    }
    let store = FileStore::new(runtime.ipam_dir()).map_err(LabError::ipam("opening the lab's IPAM store"))?;
    let left = store
        .allocations()
        .map_err(LabError::ipam("listing the lab's IPAM allocations"))?;
    for a in left {
        problems.push(format!(
            "address {} still allocated after DEL (pool {}, owner {} {})",
            a.ip,
            a.pool,
            a.podref.as_deref().unwrap_or("-"),
            a.ifname
        ));
    }
    for node in &plan.nodes {
        let dir = runtime.node_dirs(node).cni_dir;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(LabError::io("listing attachment records", &dir)(e)),
        };
        for entry in entries.filter_map(Result::ok) {
            problems.push(format!(
                "{}: attachment record {} left in {} after DEL",
                node.netns,
                entry.file_name().to_string_lossy(),
                dir.display()
            ));
        }
    }
    Ok(problems)
}

/// The reachability cell of the results table.
pub fn describe(plan: &Plan, r: &Reach) -> String {
    let mut parts = Vec::new();
    if r.cross_total > 0 {
        parts.push(format!(
            "{}/{} ok ({}B DF)",
            r.cross_ok,
            r.cross_total,
            plan.full_payload()
        ));
    }
    if r.same_total > 0 {
        let mut same = match plan.same_node_expectation() {
            SameNode::Isolated if r.same_isolated == r.same_total => {
                "same node isolated (private)".to_string()
            }
            SameNode::Isolated => format!(
                "same node {}/{} isolated (private)",
                r.same_isolated, r.same_total
            ),
            SameNode::ReachViaHairpin => format!("same node {}/{} ok (hairpin)", r.same_ok, r.same_total),
            SameNode::Reach => format!("same node {}/{} ok", r.same_ok, r.same_total),
        };
        if r.cross_total == 0 && plan.same_node_expectation() != SameNode::Isolated {
            same.push_str(&format!(" ({}B DF)", plan.full_payload()));
        }
        parts.push(same);
    }
    if parts.is_empty() {
        "n/a (no other pod)".to_string()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LabConfig;

    fn plan(mode: &str, nodes: usize, pods: usize) -> Plan {
        let cfg = LabConfig {
            binary: "/proc/self/exe".into(),
            mode: mode.into(),
            nodes,
            pods_per_node: pods,
            ..LabConfig::default()
        };
        Plan::from_config(&cfg).expect("plan")
    }

    #[test]
    fn longhorns_parse_takes_the_exact_name_and_the_first_string_sorted_ip() {
        let status = serde_json::json!([
            {"name": "cbr0", "interface": "eth0", "ips": ["10.42.0.1"], "default": true},
            {"name": "storage", "interface": "net1", "ips": ["192.168.4.1"]},
            {"name": "longhorn-system/storage", "interface": "lhnet1", "ips": ["192.168.4.9", "192.168.4.10"]},
        ]);
        let list = status.as_array().expect("list");
        assert_eq!(
            longhorn_storage_ip(list, "longhorn-system/storage").as_deref(),
            Some("192.168.4.10"),
            "a string sort, not a numeric one"
        );
        assert_eq!(longhorn_storage_ip(list, "kube-system/storage"), None);
        assert_eq!(longhorn_storage_ip(&[], "longhorn-system/storage"), None);
    }

    #[test]
    fn reachability_cells_say_what_was_proven() {
        let r = Reach {
            cross_ok: 4,
            cross_total: 4,
            same_ok: 1,
            same_isolated: 0,
            same_total: 1,
        };
        assert_eq!(
            describe(&plan("bridge", 3, 2), &r),
            "4/4 ok (1472B DF), same node 1/1 ok"
        );
        let r = Reach {
            cross_ok: 3,
            cross_total: 4,
            same_ok: 0,
            same_isolated: 1,
            same_total: 1,
        };
        assert_eq!(
            describe(&plan("private", 3, 2), &r),
            "3/4 ok (1472B DF), same node isolated (private)"
        );
        let r = Reach {
            cross_ok: 2,
            cross_total: 2,
            same_ok: 1,
            same_isolated: 0,
            same_total: 1,
        };
        assert_eq!(
            describe(&plan("vepa", 2, 2), &r),
            "2/2 ok (1472B DF), same node 1/1 ok (hairpin)"
        );
        assert_eq!(
            describe(&plan("bridge", 1, 1), &Reach::default()),
            "n/a (no other pod)"
        );
    }
}
