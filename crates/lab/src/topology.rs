//! The lab's cluster in network namespaces: a switch namespace (`nalab-sw`) with two LANs (Linux
//! bridges: `lan0` for storage, `clusterlan0` for the cluster network), nodes (`nalab-nN`, each
//! with a storage NIC `storage0` and a cluster NIC `cluster0`, whose veth peers are ports of the
//! two bridges) and empty pod namespaces (`nalab-nN-pM`) for the plugins to attach.
//!
//! Nothing is created outside these namespaces: every netlink socket is opened inside the
//! namespace it changes, and veth pairs are created from the switch namespace with their peer
//! placed directly in the node namespace. [`Topology`] owns the namespaces; dropping it (on an
//! error or a panic) deletes them, [`Topology::teardown`] does so with error reporting and
//! [`Topology::keep`] leaves them for `--keep`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use netattach_netdev::{Handle, MacvlanMode, NamedNetns, Netns};
use tracing::debug;

use crate::config::{
    BRIDGE, CLUSTER_BRIDGE, CLUSTER_MTU, CLUSTER_NIC, NODE_NIC, NodePlan, Plan, PodPlan, SWITCH_NS,
};
use crate::error::LabError;

/// A namespace the lab made: its `/run/netns` entry (deleted on drop) and an open handle.
#[derive(Debug)]
pub struct LabNs {
    named: NamedNetns,
    netns: Netns,
}

impl LabNs {
    fn create(name: &str) -> Result<LabNs, LabError> {
        let named =
            NamedNetns::create(name).map_err(LabError::netdev(format!("creating namespace {name}")))?;
        let netns = named
            .netns()
            .map_err(LabError::netdev(format!("opening namespace {name}")))?;
        Ok(LabNs { named, netns })
    }

    /// The open namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// `nalab-...`.
    pub fn name(&self) -> &str {
        self.named.name()
    }

    /// A netlink handle bound to this namespace.
    pub fn handle(&self) -> Result<Handle, LabError> {
        Handle::in_netns(&self.netns).map_err(LabError::netdev(format!("netlink socket in {}", self.name())))
    }

    fn delete(self) -> Result<(), String> {
        let name = self.named.name().to_string();
        drop(self.netns);
        self.named
            .delete()
            .map_err(|e| format!("deleting namespace {name}: {e}"))
    }

    fn keep(self) {
        drop(self.netns);
        self.named.keep();
    }
}

/// A node: its namespace holds the storage NIC, the macvlan master.
#[derive(Debug)]
pub struct Node {
    /// The plan entry.
    pub plan: NodePlan,
    /// The node namespace.
    pub ns: LabNs,
}

/// A pod sandbox: an empty namespace plus the ids a runtime would give it.
#[derive(Debug)]
pub struct Pod {
    /// The plan entry.
    pub plan: PodPlan,
    /// The pod namespace.
    pub ns: LabNs,
    /// `CNI_CONTAINERID` (64 hex digits, like a containerd sandbox id).
    pub container_id: String,
    /// `K8S_POD_UID` (UUID-shaped).
    pub uid: String,
}

/// The whole lab network.
#[derive(Debug, Default)]
pub struct Topology {
    /// Pods, node by node (same order as [`Plan::pods`]).
    pub pods: Vec<Pod>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// The switch namespace.
    pub switch: Option<LabNs>,
    /// Whether the switch ports are in hairpin mode (vepa).
    pub hairpin: bool,
}

/// Create bridge `name` in the switch namespace, set its MTU and bring it up; its index.
fn make_bridge(sw: &mut Handle, name: &str, mtu: u32) -> Result<u32, LabError> {
    sw.create_bridge(name)
        .map_err(LabError::netdev(format!("creating bridge {name} in {SWITCH_NS}")))?;
    let br = sw
        .link_index(name)
        .map_err(LabError::netdev(format!("finding bridge {name}")))?;
    sw.set_mtu(br, mtu)
        .map_err(LabError::netdev(format!("setting MTU {mtu} on {name}")))?;
    sw.set_up(br)
        .map_err(LabError::netdev(format!("bringing {name} up")))?;
    Ok(br)
}

/// One node NIC and its switch port.
struct Port<'a> {
    bridge: u32,
    port: &'a str,
    nic: &'static str,
    mtu: u32,
    hairpin: bool,
    what: &'static str,
}

/// A veth pair from the switch namespace: `port` on `bridge`, its peer `nic` created directly
/// in the node namespace; both ends at `mtu` and up.
fn wire(sw: &mut Handle, node: &LabNs, p: Port<'_>) -> Result<(), LabError> {
    let ctx = |what: &str| format!("{what} ({} LAN) for node {}", p.what, node.name());
    sw.create_veth(p.port, p.nic, Some(node.netns()))
        .map_err(LabError::netdev(ctx(&format!(
            "creating veth {} <-> {}",
            p.port, p.nic
        ))))?;
    let port_index = sw
        .link_index(p.port)
        .map_err(LabError::netdev(ctx("finding the switch port")))?;
    sw.set_mtu(port_index, p.mtu)
        .map_err(LabError::netdev(ctx("setting the switch port MTU")))?;
    sw.set_master(port_index, p.bridge)
        .map_err(LabError::netdev(ctx("attaching the port to the switch")))?;
    if p.hairpin {
        sw.set_bridge_port_hairpin(port_index, true)
            .map_err(LabError::netdev(ctx("setting hairpin mode on the switch port")))?;
    }
    sw.set_up(port_index)
        .map_err(LabError::netdev(ctx("bringing the switch port up")))?;
    let mut nh = node.handle()?;
    let nic = nh
        .link_index(p.nic)
        .map_err(LabError::netdev(ctx(&format!("finding {}", p.nic))))?;
    nh.set_mtu(nic, p.mtu)
        .map_err(LabError::netdev(ctx(&format!("setting the MTU of {}", p.nic))))?;
    nh.set_up(nic)
        .map_err(LabError::netdev(ctx(&format!("bringing {} up", p.nic))))
}

fn random_u64() -> u64 {
    // RandomState is seeded from the OS once per thread and then stepped per instance.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

fn container_id() -> String {
    (0..4).map(|_| format!("{:016x}", random_u64())).collect()
}

fn pod_uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    // Version 4 / variant 1 bits, so it is a well-formed random UUID.
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

impl Topology {
    /// Build the switch (both LAN bridges) and the nodes, each wired into both LANs (step 1).
    /// On error whatever was made is deleted when `self` is dropped by the caller.
    pub fn build_lan(&mut self, plan: &Plan) -> Result<(), LabError> {
        let switch = LabNs::create(SWITCH_NS)?;
        let mut sw = switch.handle()?;
        self.switch = Some(switch);
        let storage_br = make_bridge(&mut sw, BRIDGE, plan.mtu)?;
        let cluster_br = make_bridge(&mut sw, CLUSTER_BRIDGE, CLUSTER_MTU)?;

        for node in &plan.nodes {
            let ns = LabNs::create(&node.netns)?;
            // Record the node before wiring it, so a failure below still deletes it.
            self.nodes.push(Node {
                plan: node.clone(),
                ns,
            });
            let Some(node_ns) = self.nodes.last().map(|n| &n.ns) else {
                continue;
            };
            let hairpin = plan.mode == MacvlanMode::Vepa;
            wire(
                &mut sw,
                node_ns,
                Port {
                    bridge: storage_br,
                    port: &node.switch_port,
                    nic: NODE_NIC,
                    mtu: plan.mtu,
                    hairpin,
                    what: "storage",
                },
            )?;
            self.hairpin |= hairpin;
            wire(
                &mut sw,
                node_ns,
                Port {
                    bridge: cluster_br,
                    port: &node.cluster_port,
                    nic: CLUSTER_NIC,
                    mtu: CLUSTER_MTU,
                    hairpin: false,
                    what: "cluster-network",
                },
            )?;
            debug!(node = %node.netns, "node wired to both LANs");
        }
        Ok(())
    }

    /// Create the empty pod namespaces (part of step 1).
    pub fn build_pods(&mut self, plan: &Plan) -> Result<(), LabError> {
        for pod in &plan.pods {
            crate::cleanup::check_interrupt()?;
            let ns = LabNs::create(&pod.netns)?;
            self.pods.push(Pod {
                plan: pod.clone(),
                ns,
                container_id: container_id(),
                uid: pod_uid(),
            });
        }
        Ok(())
    }

    /// The node a pod lives on.
    pub fn node_of(&self, pod: &Pod) -> Option<&Node> {
        self.nodes.get(pod.plan.node)
    }

    /// Names of every namespace made so far.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.switch.iter().map(|s| s.name().to_string()).collect();
        names.extend(self.nodes.iter().map(|n| n.ns.name().to_string()));
        names.extend(self.pods.iter().map(|p| p.ns.name().to_string()));
        names
    }

    /// Delete everything: pods in reverse order, then nodes, then the switch. Returns the
    /// failures (empty when all went).
    pub fn teardown(mut self) -> Vec<String> {
        let mut failures = Vec::new();
        while let Some(pod) = self.pods.pop() {
            failures.extend(pod.ns.delete().err());
        }
        while let Some(node) = self.nodes.pop() {
            failures.extend(node.ns.delete().err());
        }
        if let Some(sw) = self.switch.take() {
            failures.extend(sw.delete().err());
        }
        failures
    }

    /// Leave every namespace in place (`--keep`).
    pub fn keep(mut self) {
        for pod in self.pods.drain(..) {
            pod.ns.keep();
        }
        for node in self.nodes.drain(..) {
            node.ns.keep();
        }
        if let Some(sw) = self.switch.take() {
            sw.keep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_a_runtimes() {
        let id = container_id();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, container_id());
        let uid = pod_uid();
        let parts: Vec<&str> = uid.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{uid}"
        );
        assert!(parts[2].starts_with('4'), "{uid}");
    }
}
