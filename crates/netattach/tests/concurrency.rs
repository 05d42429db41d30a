//! Many pods at once on one node: 50 concurrent ADDs through macvlan (bridge mode, one master,
//! one shared local store) get 50 distinct addresses, each on its own link; 50 concurrent DELs
//! then leave no allocation and no link.
//!
//! Runs as root (creates network namespaces); see `support` for the topology.

mod support;

use std::collections::HashSet;

use netattach_cni::error::CniError;
use serde_json::Value;
use support::{IFNAME, Topology, result_addresses};

const PODS: usize = 50;

#[test]
fn fifty_concurrent_adds_get_distinct_addresses_and_fifty_dels_free_everything() {
    let topo = Topology::new();
    let conf = topo.macvlan_conf("1.1.0", "198.18.8.0/24");
    let pods: Vec<_> = (0..PODS).map(|i| topo.pod(&format!("conc{i}"))).collect();

    let results: Vec<Result<Value, CniError>> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|p| {
                let runner = topo.macvlan();
                let conf = &conf;
                s.spawn(move || runner.add(&p.att, conf))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread panicked"))
            .collect()
    });

    let mut seen = HashSet::new();
    for (pod, result) in pods.iter().zip(&results) {
        let result = result
            .as_ref()
            .unwrap_or_else(|e| panic!("ADD of {} failed: {e}", pod.att.container_id));
        let addrs = result_addresses(result);
        assert_eq!(addrs.len(), 1, "{result}");
        let addr = &addrs[0];
        assert!(
            addr.starts_with("198.18.8.") && addr.ends_with("/24"),
            "out of range: {addr}"
        );
        assert!(seen.insert(addr.clone()), "address {addr} handed out twice");
        let link = pod.ns.expect_link(IFNAME);
        assert_eq!(link.kind.as_deref(), Some("macvlan"));
        assert_eq!(
            pod.ns.address_strings(IFNAME),
            vec![addr.clone()],
            "link lacks its address"
        );
    }
    assert_eq!(seen.len(), PODS);
    let held = topo.allocations();
    assert_eq!(held.len(), PODS, "store should hold exactly {PODS} allocations");
    let held_ips: HashSet<String> = held.iter().map(|a| format!("{}/24", a.ip)).collect();
    assert_eq!(held_ips, seen, "store and results disagree");

    let dels: Vec<Result<(), CniError>> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|p| {
                let runner = topo.macvlan();
                let conf = &conf;
                s.spawn(move || runner.del(&p.att, conf))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("DEL thread panicked"))
            .collect()
    });
    for (pod, r) in pods.iter().zip(dels) {
        r.unwrap_or_else(|e| panic!("DEL of {} failed: {e}", pod.att.container_id));
        assert_eq!(pod.ns.link_names(), Vec::<String>::new(), "link left after DEL");
    }
    assert_eq!(topo.allocations(), vec![], "allocations left after 50 DELs");
}
