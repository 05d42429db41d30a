//! The checks a user's install guide demands before anything depends on the storage network:
//! every pod has its interface (present, up, macvlan in the right mode, right MTU, holding its
//! address); addresses are unique and inside the range; every pod reaches every pod on another
//! node, also with a full-MTU datagram that may not be fragmented; same-node pairs behave as
//! the macvlan mode says; and after DEL nothing is left (no macvlan in any pod namespace, no
//! allocation in the IPAM store).
//!
//! Checks never fail the lab with an error: each finding is a problem string, and any problem
//! turns the verdict into `FAIL`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use netattach_ipam::{FileStore, Store};
use netattach_netdev::probe;

use crate::attach::Attachment;
use crate::cleanup::check_interrupt;
use crate::config::{POD_IFNAME, Plan, SameNode};
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

/// Check the interface of every attached pod; returns the problems.
pub fn check_interfaces(
    plan: &Plan,
    topo: &Topology,
    attachments: &[Attachment],
) -> Result<Vec<String>, LabError> {
    let mut problems = Vec::new();
    let dad_deadline = Instant::now() + DAD_WAIT;
    for att in attachments {
        check_interrupt()?;
        let (Some(pod), Some(addr)) = (topo.pods.get(att.pod), att.address()) else {
            continue;
        };
        let name = &pod.plan.netns;
        let mut h = pod.ns.handle()?;
        let link = h
            .link_by_name(POD_IFNAME)
            .map_err(LabError::netdev(format!("reading {POD_IFNAME} in {name}")))?;
        let Some(link) = link else {
            problems.push(format!(
                "{name}: interface {POD_IFNAME} is missing after a successful ADD"
            ));
            continue;
        };
        if link.kind.as_deref() != Some("macvlan") {
            problems.push(format!(
                "{name}: {POD_IFNAME} is a {} link, not macvlan",
                link.kind.as_deref().unwrap_or("plain")
            ));
        }
        if link.macvlan_mode != Some(plan.mode) {
            problems.push(format!(
                "{name}: {POD_IFNAME} is in macvlan mode {}, expected {}",
                link.macvlan_mode
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "none".into()),
                plan.mode
            ));
        }
        if !link.up {
            problems.push(format!("{name}: {POD_IFNAME} is down"));
        }
        if link.mtu != plan.mtu {
            problems.push(format!(
                "{name}: {POD_IFNAME} has MTU {}, expected {}",
                link.mtu, plan.mtu
            ));
        }
        // IPv6: the plugin (like the reference plugin) waits for DAD only when the range has a
        // gateway, so an address may still be tentative right after ADD. Wait for it, within
        // one deadline for the whole step.
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
            None => problems.push(format!("{name}: {POD_IFNAME} does not carry its address {addr}")),
            Some(a) if a.dadfailed => problems.push(format!(
                "{name}: address {addr} failed IPv6 duplicate address detection"
            )),
            Some(a) if a.tentative => problems.push(format!(
                "{name}: address {addr} is still IPv6-tentative {}s after ADD",
                DAD_WAIT.as_secs()
            )),
            Some(_) => {}
        }
    }
    Ok(problems)
}

/// Addresses must be unique and inside the range; returns the problems.
pub fn check_addresses(plan: &Plan, topo: &Topology, attachments: &[Attachment]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for att in attachments {
        let (Some(pod), Some(addr)) = (topo.pods.get(att.pod), att.address()) else {
            continue;
        };
        let name = pod.plan.netns.as_str();
        if !plan.range.contains(addr.addr()) || addr.prefix_len() != plan.range.prefix_len() {
            problems.push(format!(
                "{name}: address {addr} is outside the range {}",
                plan.range_text
            ));
        }
        if let Some(other) = seen.insert(addr.addr(), name) {
            problems.push(format!(
                "DUPLICATE address {}: held by {other} and {name}",
                addr.addr()
            ));
        }
    }
    problems
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
        .filter_map(|a| a.address().map(|n| (a.pod, n.addr())))
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

/// After DEL: no macvlan (and no `net1`) left in any pod namespace, no allocation left in the
/// store. Returns the problems and the number of allocations found.
pub fn check_leaks(topo: &Topology, store_dir: &std::path::Path) -> Result<Vec<String>, LabError> {
    let mut problems = Vec::new();
    for pod in &topo.pods {
        let mut h = pod.ns.handle()?;
        let links = h
            .links()
            .map_err(LabError::netdev(format!("listing links in {}", pod.plan.netns)))?;
        for l in links
            .iter()
            .filter(|l| l.kind.as_deref() == Some("macvlan") || l.name == POD_IFNAME)
        {
            problems.push(format!(
                "{}: link {} ({}) still present after DEL",
                pod.plan.netns,
                l.name,
                l.kind.as_deref().unwrap_or("?")
            ));
        }
    }
    let store = FileStore::new(store_dir).map_err(LabError::ipam("opening the lab's IPAM store"))?;
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
