//! Input validation: turns the command-line [`LabConfig`] into a checked [`Plan`] (names of
//! every namespace and interface, the parsed range, the macvlan mode, probe sizes) before
//! anything is built. Every rejection names the option, the value and the fix.
//!
//! Also the lab's fixed names: the two LANs (storage and cluster network), the Kubernetes names
//! Longhorn uses (`longhorn-system/storage`, `lhnet1`) and the cluster network that plays
//! flannel's part (`cbr0` on `eth0`, over K3s's pod CIDR).

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use netattach_ipam::IpRange;
use netattach_netdev::MacvlanMode;
use netattach_netdev::link::validate_ifname;

use crate::error::LabError;

/// Every namespace the lab creates starts with this (so `lab down` can find them).
pub const PREFIX: &str = "nalab-";
/// The switch namespace.
pub const SWITCH_NS: &str = "nalab-sw";
/// The storage LAN bridge inside the switch namespace.
pub const BRIDGE: &str = "lan0";
/// The cluster-network LAN bridge inside the switch namespace.
pub const CLUSTER_BRIDGE: &str = "clusterlan0";
/// Each node's storage NIC (the storage NAD's macvlan master), inside the node namespace.
pub const NODE_NIC: &str = "storage0";
/// Each node's cluster-network NIC (the cluster network's macvlan master).
pub const CLUSTER_NIC: &str = "cluster0";
/// The storage interface in each pod: the name Longhorn asks for in its annotation.
pub const STORAGE_IFNAME: &str = "lhnet1";
/// The cluster-network interface in each pod (`CNI_IFNAME`, as containerd sends it).
pub const CLUSTER_IFNAME: &str = "eth0";
/// The network name inside the storage NAD's config.
pub const NETWORK_NAME: &str = "storage";
/// The Kubernetes namespace of the pods and of the storage NAD (`K8S_POD_NAMESPACE`).
pub const POD_K8S_NAMESPACE: &str = "longhorn-system";
/// The storage NAD's name.
pub const NAD_NAME: &str = "storage";
/// Longhorn's `storage-network` setting: the network-status entry name it looks for.
pub const STORAGE_SETTING: &str = "longhorn-system/storage";
/// The pod annotation Longhorn writes on instance-manager pods, byte for byte.
pub const LONGHORN_ANNOTATION: &str =
    r#"[{"namespace":"longhorn-system","name":"storage","interface":"lhnet1"}]"#;
/// The networks annotation key.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// The cluster network's name (flannel's on K3s, which is what network-status shows there).
pub const CLUSTER_NETWORK_NAME: &str = "cbr0";
/// The cluster network's range: K3s's default pod CIDR (only ever used inside the lab).
pub const CLUSTER_RANGE: &str = "10.42.0.0/16";
/// The cluster network's conflist file in each node's conf dir.
pub const CLUSTER_CONFLIST: &str = "10-lab-cluster.conflist";
/// MTU of the cluster LAN (independent of `--mtu`, which is the storage LAN's).
pub const CLUSTER_MTU: u32 = 1500;
/// The meta-plugin's network name in its own config.
pub const META_NAME: &str = "netattach";

/// Most nodes a lab may have.
pub const MAX_NODES: usize = 64;
/// Most pods per node.
pub const MAX_PODS_PER_NODE: usize = 64;
/// Most pods in total (the ping mesh grows with the square).
pub const MAX_PODS: usize = 256;
/// Smallest MTU accepted (the IPv4 minimum datagram every host must take).
pub const MIN_MTU: u32 = 576;
/// Smallest MTU accepted for an IPv6 range.
pub const MIN_MTU_V6: u32 = 1280;
/// Largest MTU accepted (jumbo frames).
pub const MAX_MTU: u32 = 9000;

/// What `netattach lab` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabConfig {
    /// Number of node namespaces.
    pub nodes: usize,
    /// Pod namespaces per node.
    pub pods_per_node: usize,
    /// The storage range handed to whereabouts (`192.168.4.0/24`).
    pub range: String,
    /// macvlan mode: bridge, private, vepa or passthru.
    pub mode: String,
    /// MTU of the LAN, the node NICs and the pod interfaces.
    pub mtu: u32,
    /// Leave the lab running after validation.
    pub keep: bool,
    /// The netattach executable to install as the plugins.
    pub binary: PathBuf,
    /// Run against this API server (kubeconfig file), with one `netattach daemon` per lab
    /// node, instead of the local file source.
    pub kubeconfig: Option<PathBuf>,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            nodes: 3,
            pods_per_node: 2,
            range: "192.168.4.0/24".into(),
            mode: "bridge".into(),
            mtu: 1500,
            keep: false,
            binary: PathBuf::from("netattach"),
            kubeconfig: None,
        }
    }
}

/// One node of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// 1-based node number.
    pub number: usize,
    /// Namespace name, `nalab-n1`.
    pub netns: String,
    /// The storage switch port (veth end in the switch namespace), `sw-n1`.
    pub switch_port: String,
    /// The cluster-network switch port, `cl-n1`.
    pub cluster_port: String,
}

/// One pod of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    /// Index into [`Plan::nodes`].
    pub node: usize,
    /// Namespace name, also the pod name: `nalab-n1-p1`.
    pub netns: String,
}

/// A validated lab: everything [`crate::run`] needs, nothing built yet.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The range as given.
    pub range_text: String,
    /// The parsed range.
    pub range: IpRange,
    /// The cluster network's range ([`CLUSTER_RANGE`]), parsed.
    pub cluster_range: IpRange,
    /// The macvlan mode.
    pub mode: MacvlanMode,
    /// MTU.
    pub mtu: u32,
    /// Keep the lab after validation.
    pub keep: bool,
    /// The executable to install.
    pub binary: PathBuf,
    /// The API server's kubeconfig (absolute), when the lab runs against one.
    pub kubeconfig: Option<PathBuf>,
    /// Nodes, in order.
    pub nodes: Vec<NodePlan>,
    /// Pods, node by node.
    pub pods: Vec<PodPlan>,
}

fn input(
    field: &'static str,
    value: impl ToString,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> LabError {
    LabError::Input {
        field,
        value: value.to_string(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Parse the macvlan mode the way the CNI plugin does, with a lab-specific message for the
/// modes it cannot run.
pub fn parse_mode(mode: &str) -> Result<MacvlanMode, LabError> {
    let fix = "use one of bridge, private, vepa, passthru";
    match MacvlanMode::from_str(mode) {
        Ok(m) => Ok(m),
        Err(_) if mode == "source" => Err(input(
            "mode",
            mode,
            "is not offered by the CNI macvlan plugin (it needs a per-MAC source list)",
            fix,
        )),
        Err(_) => Err(input("mode", mode, "is not a macvlan mode", fix)),
    }
}

impl Plan {
    /// Check every input; build no namespace. The order of checks is the order of the
    /// options on the command line, so the first message is about the first bad option.
    pub fn from_config(config: &LabConfig) -> Result<Plan, LabError> {
        if config.nodes == 0 || config.nodes > MAX_NODES {
            return Err(input(
                "nodes",
                config.nodes,
                format!("must be between 1 and {MAX_NODES}"),
                "use --nodes 3 (at least 2 to test traffic between nodes)",
            ));
        }
        if config.pods_per_node == 0 || config.pods_per_node > MAX_PODS_PER_NODE {
            return Err(input(
                "pods-per-node",
                config.pods_per_node,
                format!("must be between 1 and {MAX_PODS_PER_NODE}"),
                "use --pods-per-node 2",
            ));
        }
        let total = config.nodes * config.pods_per_node;
        if total > MAX_PODS {
            return Err(input(
                "pods-per-node",
                config.pods_per_node,
                format!(
                    "gives {total} pods with --nodes {}, more than the lab's {MAX_PODS}",
                    config.nodes
                ),
                "use fewer nodes or fewer pods per node",
            ));
        }
        let range = IpRange::parse(&config.range, None, None, &[], None).map_err(|e| {
            input(
                "range",
                &config.range,
                format!("is not usable: {e}"),
                "write a CIDR like 192.168.4.0/24",
            )
        })?;
        let cluster = IpRange::parse(CLUSTER_RANGE, None, None, &[], None).map_err(|e| {
            input(
                "range",
                CLUSTER_RANGE,
                format!("the lab's own cluster range does not parse: {e}"),
                "report this bug",
            )
        })?;
        if range.cidr.contains(&cluster.cidr.network()) || cluster.cidr.contains(&range.cidr.network()) {
            return Err(input(
                "range",
                &config.range,
                format!("overlaps the lab's cluster network {CLUSTER_RANGE} (the pods' eth0)"),
                "use a range outside 10.42.0.0/16, like 192.168.4.0/24",
            ));
        }
        let capacity = range.capacity();
        if capacity < total as u128 {
            return Err(input(
                "range",
                &config.range,
                format!(
                    "has room for {capacity} addresses, but {} nodes x {} pods need {total}",
                    config.nodes, config.pods_per_node
                ),
                "use a larger range (e.g. a /24) or fewer pods",
            ));
        }
        let mode = parse_mode(&config.mode)?;
        if mode == MacvlanMode::Passthru && config.pods_per_node > 1 {
            return Err(input(
                "mode",
                &config.mode,
                format!(
                    "allows only one macvlan per master NIC, but --pods-per-node is {}",
                    config.pods_per_node
                ),
                "use --pods-per-node 1 with --mode passthru",
            ));
        }
        let min_mtu = match range.cidr.addr() {
            IpAddr::V4(_) => MIN_MTU,
            IpAddr::V6(_) => MIN_MTU_V6,
        };
        if !(min_mtu..=MAX_MTU).contains(&config.mtu) {
            return Err(input(
                "mtu",
                config.mtu,
                format!("must be between {min_mtu} and {MAX_MTU} for this range"),
                "use --mtu 1500 (or 9000 for jumbo frames)",
            ));
        }
        if !config.binary.is_file() {
            return Err(input(
                "binary",
                config.binary.display(),
                "is not a file",
                "run the lab from the installed netattach binary",
            ));
        }
        let kubeconfig = match &config.kubeconfig {
            None => None,
            Some(path) if path.is_file() => Some(std::path::absolute(path).map_err(|e| {
                input(
                    "kubeconfig",
                    path.display(),
                    format!("has no absolute form: {e}"),
                    "pass an absolute path",
                )
            })?),
            Some(path) => {
                return Err(input(
                    "kubeconfig",
                    path.display(),
                    "is not a file",
                    "pass the kubeconfig of a running API server (e.g. $KUBECONFIG after `eval \"$(tools/testenv up)\"`)",
                ));
            }
        };

        let nodes: Vec<NodePlan> = (1..=config.nodes)
            .map(|n| NodePlan {
                number: n,
                netns: format!("{PREFIX}n{n}"),
                switch_port: format!("sw-n{n}"),
                cluster_port: format!("cl-n{n}"),
            })
            .collect();
        let pods = nodes
            .iter()
            .enumerate()
            .flat_map(|(i, node)| {
                (1..=config.pods_per_node).map(move |p| PodPlan {
                    node: i,
                    netns: format!("{}-p{p}", node.netns),
                })
            })
            .collect();
        let plan = Plan {
            range_text: config.range.clone(),
            range,
            cluster_range: cluster,
            mode,
            mtu: config.mtu,
            keep: config.keep,
            binary: config.binary.clone(),
            kubeconfig,
            nodes,
            pods,
        };
        for name in plan.interface_names() {
            validate_ifname(&name).map_err(|e| {
                input(
                    "nodes",
                    config.nodes,
                    format!("gives interface name `{name}`: {e}"),
                    "use fewer nodes",
                )
            })?;
        }
        Ok(plan)
    }

    /// Every interface name the lab creates.
    pub fn interface_names(&self) -> Vec<String> {
        let mut names: Vec<String> = [
            BRIDGE,
            CLUSTER_BRIDGE,
            NODE_NIC,
            CLUSTER_NIC,
            STORAGE_IFNAME,
            CLUSTER_IFNAME,
        ]
        .map(String::from)
        .to_vec();
        names.extend(
            self.nodes
                .iter()
                .flat_map(|n| [n.switch_port.clone(), n.cluster_port.clone()]),
        );
        names
    }

    /// Every namespace the lab creates, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names = vec![SWITCH_NS.to_string()];
        names.extend(self.nodes.iter().map(|n| n.netns.clone()));
        names.extend(self.pods.iter().map(|p| p.netns.clone()));
        names
    }

    /// Whether the range is IPv6.
    pub fn is_ipv6(&self) -> bool {
        self.range.cidr.addr().is_ipv6()
    }

    /// ICMP payload that fills the MTU exactly: MTU - 20 (IPv4) - 8 (ICMP), or MTU - 40 - 8.
    pub fn full_payload(&self) -> usize {
        let headers = if self.is_ipv6() { 48 } else { 28 };
        (self.mtu as usize).saturating_sub(headers)
    }

    /// Whether two pods on the same node are expected to reach each other.
    pub fn same_node_expectation(&self) -> SameNode {
        match self.mode {
            MacvlanMode::Private => SameNode::Isolated,
            MacvlanMode::Vepa => SameNode::ReachViaHairpin,
            _ => SameNode::Reach,
        }
    }
}

/// What traffic between two pods on one node should do in the chosen mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameNode {
    /// bridge: the macvlans talk directly.
    Reach,
    /// vepa: via the switch, which hairpins the frame back out of the node's port.
    ReachViaHairpin,
    /// private: no traffic between them, even via the switch.
    Isolated,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LabConfig {
        // Any existing file will do as the "binary".
        LabConfig {
            binary: PathBuf::from("/proc/self/exe"),
            ..LabConfig::default()
        }
    }

    fn field_of(err: LabError) -> &'static str {
        match err {
            LabError::Input { field, .. } => field,
            other => panic!("not an input error: {other}"),
        }
    }

    #[test]
    fn the_defaults_mirror_the_users_setup() {
        let plan = Plan::from_config(&cfg()).expect("valid");
        assert_eq!(plan.nodes.len(), 3);
        assert_eq!(plan.pods.len(), 6);
        assert_eq!(plan.mode, MacvlanMode::Bridge);
        assert_eq!(plan.range.cidr.to_string(), "192.168.4.0/24");
        assert_eq!(plan.full_payload(), 1472);
        assert_eq!(plan.pods[0].netns, "nalab-n1-p1");
        assert_eq!(plan.pods[5].netns, "nalab-n3-p2");
        assert_eq!(plan.pods[5].node, 2);
        assert_eq!(plan.namespaces().len(), 1 + 3 + 6);
        assert!(plan.namespaces().iter().all(|n| n.starts_with(PREFIX)));
        assert_eq!(plan.same_node_expectation(), SameNode::Reach);
    }

    #[test]
    fn counts_out_of_bounds_are_refused() {
        assert_eq!(
            field_of(Plan::from_config(&LabConfig { nodes: 0, ..cfg() }).expect_err("0")),
            "nodes"
        );
        assert_eq!(
            field_of(Plan::from_config(&LabConfig { nodes: 65, ..cfg() }).expect_err("65")),
            "nodes"
        );
        assert_eq!(
            field_of(
                Plan::from_config(&LabConfig {
                    pods_per_node: 0,
                    ..cfg()
                })
                .expect_err("0")
            ),
            "pods-per-node"
        );
        let err = Plan::from_config(&LabConfig {
            nodes: 64,
            pods_per_node: 64,
            ..cfg()
        })
        .expect_err("too many");
        assert!(err.to_string().contains("4096 pods"), "{err}");
        Plan::from_config(&LabConfig {
            nodes: 1,
            pods_per_node: 1,
            ..cfg()
        })
        .expect("1x1 is fine");
    }

    #[test]
    fn a_range_without_room_is_refused_with_the_numbers() {
        let err = Plan::from_config(&LabConfig {
            range: "198.18.4.0/30".into(),
            ..cfg()
        })
        .expect_err("/30");
        let text = err.to_string();
        assert!(text.contains("--range"), "{text}");
        assert!(text.contains("room for 2 addresses"), "{text}");
        assert!(text.contains("need 6"), "{text}");
        Plan::from_config(&LabConfig {
            range: "198.18.4.0/29".into(),
            ..cfg()
        })
        .expect("6 fit in a /29");
        for bad in ["", "banana", "192.168.4.0/33", "300.1.1.1/24"] {
            let err = Plan::from_config(&LabConfig {
                range: bad.into(),
                ..cfg()
            })
            .expect_err(bad);
            assert_eq!(field_of(err), "range", "{bad}");
        }
    }

    #[test]
    fn a_range_overlapping_the_cluster_network_is_refused() {
        for bad in ["10.42.0.0/24", "10.0.0.0/8", "10.42.255.0/24"] {
            let err = Plan::from_config(&LabConfig {
                range: bad.into(),
                ..cfg()
            })
            .expect_err(bad);
            assert!(err.to_string().contains("overlaps"), "{err}");
            assert_eq!(field_of(err), "range", "{bad}");
        }
        Plan::from_config(&LabConfig {
            range: "10.43.0.0/24".into(),
            ..cfg()
        })
        .expect("next to the pod CIDR is fine");
    }

    #[test]
    fn modes_are_checked_and_passthru_takes_one_pod_per_node() {
        for (mode, want) in [
            ("bridge", MacvlanMode::Bridge),
            ("private", MacvlanMode::Private),
            ("vepa", MacvlanMode::Vepa),
        ] {
            let plan = Plan::from_config(&LabConfig {
                mode: mode.into(),
                ..cfg()
            })
            .expect(mode);
            assert_eq!(plan.mode, want);
        }
        let err = Plan::from_config(&LabConfig {
            mode: "source".into(),
            ..cfg()
        })
        .expect_err("source");
        assert!(err.to_string().contains("not offered"), "{err}");
        let err = Plan::from_config(&LabConfig {
            mode: "Bridge".into(),
            ..cfg()
        })
        .expect_err("case");
        assert!(
            err.to_string().contains("bridge, private, vepa, passthru"),
            "{err}"
        );
        let err = Plan::from_config(&LabConfig {
            mode: "passthru".into(),
            ..cfg()
        })
        .expect_err("2 pods");
        assert!(err.to_string().contains("only one macvlan per master"), "{err}");
        Plan::from_config(&LabConfig {
            mode: "passthru".into(),
            pods_per_node: 1,
            ..cfg()
        })
        .expect("1 pod");
    }

    #[test]
    fn mtu_bounds_depend_on_the_family() {
        for bad in [0, 575, 9001] {
            let err = Plan::from_config(&LabConfig { mtu: bad, ..cfg() }).expect_err("mtu");
            assert_eq!(field_of(err), "mtu");
        }
        let plan = Plan::from_config(&LabConfig { mtu: 9000, ..cfg() }).expect("jumbo");
        assert_eq!(plan.full_payload(), 8972);
        let v6 = LabConfig {
            range: "fd00:4::/64".into(),
            mtu: 1000,
            ..cfg()
        };
        assert_eq!(field_of(Plan::from_config(&v6).expect_err("v6 1000")), "mtu");
        let plan = Plan::from_config(&LabConfig { mtu: 1500, ..v6 }).expect("v6 1500");
        assert_eq!(plan.full_payload(), 1452);
    }

    #[test]
    fn a_missing_kubeconfig_is_refused() {
        let err = Plan::from_config(&LabConfig {
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            ..cfg()
        })
        .expect_err("missing");
        assert_eq!(field_of(err), "kubeconfig");
        let plan = Plan::from_config(&cfg()).expect("without");
        assert_eq!(plan.kubeconfig, None);
    }

    #[test]
    fn a_missing_binary_is_refused() {
        let err = Plan::from_config(&LabConfig {
            binary: "/nonexistent/netattach".into(),
            ..cfg()
        })
        .expect_err("missing");
        assert_eq!(field_of(err), "binary");
    }

    #[test]
    fn the_largest_lab_still_has_valid_interface_names() {
        let plan = Plan::from_config(&LabConfig {
            nodes: 64,
            pods_per_node: 4,
            range: "10.0.0.0/16".into(),
            ..cfg()
        })
        .expect("64 nodes");
        assert!(plan.interface_names().iter().all(|n| n.len() <= 15));
    }
}
