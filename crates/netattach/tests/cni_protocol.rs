//! The CNI protocol as a runtime sees it: VERSION, the result layout of every supported
//! version through ADD → CHECK → DEL, the version floors of CHECK / STATUS / GC, STATUS with and
//! without the master, and GC forwarded from macvlan to IPAM.
//!
//! Runs as root (creates network namespaces); see `support` for the topology.

mod support;

use netattach_cni::error::code;
use serde_json::{Value, json};
use support::{IFNAME, Topology, VERSIONS, assert_error, result_addresses};

#[test]
fn version_answer_lists_exactly_the_supported_versions_for_both_faces() {
    let topo = Topology::new();
    for runner in [topo.macvlan(), topo.whereabouts()] {
        for asked in VERSIONS {
            let v = runner
                .version(asked)
                .unwrap_or_else(|e| panic!("{} VERSION {asked}: {e}", runner.exe.display()));
            assert_eq!(
                v["supportedVersions"],
                json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
                "{}: {v}",
                runner.exe.display()
            );
            assert_eq!(v["cniVersion"], asked, "{}: {v}", runner.exe.display());
        }
    }
}

/// ADD → CHECK (when allowed) → DEL in `version`, asserting the result layout against the link.
fn add_check_del(version: &str) {
    let topo = Topology::new();
    let pod = topo.pod("proto");
    let conf = topo.macvlan_conf(version, "198.18.4.0/24");
    let mv = topo.macvlan();

    let result = mv.add(&pod.att, &conf).expect("ADD");
    assert_eq!(result["cniVersion"], version, "cniVersion not echoed: {result}");

    let link = pod.ns.expect_link(IFNAME);
    let ifaces = result["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifaces.len(), 1, "{result}");
    let iface = &ifaces[0];
    assert_eq!(iface["name"], IFNAME);
    assert_eq!(iface["sandbox"], pod.ns.path_str());
    let mac = link.mac.expect("link MAC").to_string();
    assert_eq!(
        iface["mac"].as_str().expect("interfaces[0].mac").to_lowercase(),
        mac.to_lowercase(),
        "result MAC differs from the link's"
    );
    if version == "1.1.0" {
        assert_eq!(
            iface["mtu"],
            json!(link.mtu),
            "1.1.0 result carries the MTU: {result}"
        );
    } else {
        assert!(
            iface.get("mtu").is_none(),
            "{version} result must not carry mtu: {result}"
        );
    }

    let ips = result["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 1, "{result}");
    let ip = &ips[0];
    assert_eq!(ip["interface"], 0, "{result}");
    let legacy = matches!(version, "0.3.0" | "0.3.1" | "0.4.0");
    if legacy {
        assert_eq!(ip["version"], "4", "{version} needs ips[].version: {result}");
    } else {
        assert!(
            ip.get("version").is_none(),
            "{version} must not have ips[].version: {result}"
        );
    }
    let addr = ip["address"].as_str().expect("address");
    assert!(addr.starts_with("198.18.4.") && addr.ends_with("/24"), "{addr}");
    assert_eq!(pod.ns.address_strings(IFNAME), vec![addr.to_string()]);
    assert_eq!(topo.allocations().len(), 1);

    if version >= "0.4.0" {
        mv.check(&pod.att, &conf, &result).expect("CHECK after ADD");
    }

    mv.del(&pod.att, &conf).expect("DEL");
    assert!(pod.ns.link(IFNAME).is_none(), "DEL left {IFNAME}");
    assert_eq!(topo.allocations(), vec![], "DEL left the allocation");
}

#[test]
fn add_check_del_result_layout_0_3_0() {
    add_check_del("0.3.0");
}

#[test]
fn add_check_del_result_layout_0_3_1() {
    add_check_del("0.3.1");
}

#[test]
fn add_check_del_result_layout_0_4_0() {
    add_check_del("0.4.0");
}

#[test]
fn add_check_del_result_layout_1_0_0() {
    add_check_del("1.0.0");
}

#[test]
fn add_check_del_result_layout_1_1_0() {
    add_check_del("1.1.0");
}

#[test]
fn check_is_refused_below_0_4_0() {
    let topo = Topology::new();
    for version in ["0.3.0", "0.3.1"] {
        let pod = topo.pod("oldcheck");
        let conf = topo.macvlan_conf(version, "198.18.4.0/24");
        let result = topo.macvlan().add(&pod.att, &conf).expect("ADD");
        let err = topo
            .macvlan()
            .check(&pod.att, &conf, &result)
            .expect_err("CHECK must be refused");
        assert_error(&err, code::INCOMPATIBLE_VERSION, &[version, "CHECK"]);
        // The refused CHECK must not have harmed the attachment.
        assert!(pod.ns.link(IFNAME).is_some());
        topo.macvlan().del(&pod.att, &conf).expect("DEL");
    }
    assert_eq!(topo.allocations(), vec![]);
}

#[test]
fn status_and_gc_are_refused_below_1_1_0() {
    let topo = Topology::new();
    for runner in [topo.macvlan(), topo.whereabouts()] {
        for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
            let conf = if runner.exe.ends_with("macvlan") {
                topo.macvlan_conf(version, "198.18.4.0/24")
            } else {
                topo.ipam_conf(version, "198.18.4.0/24")
            };
            let err = runner.status(&conf).expect_err("STATUS must be refused");
            assert_error(&err, code::INCOMPATIBLE_VERSION, &["STATUS", version]);
            let err = runner.gc(&conf, &[]).expect_err("GC must be refused");
            assert_error(&err, code::INCOMPATIBLE_VERSION, &["GC", version]);
        }
    }
}

#[test]
fn status_succeeds_with_master_and_is_code_50_without() {
    let topo = Topology::new();
    let conf = topo.macvlan_conf("1.1.0", "198.18.4.0/24");
    topo.macvlan().status(&conf).expect("STATUS with stor0 present");
    topo.whereabouts()
        .status(&topo.ipam_conf("1.1.0", "198.18.4.0/24"))
        .expect("whereabouts STATUS");
    topo.delete_master();
    let err = topo.macvlan().status(&conf).expect_err("STATUS without master");
    assert_error(&err, code::PLUGIN_NOT_AVAILABLE, &["stor0"]);
}

#[test]
fn gc_through_macvlan_releases_invalid_attachments_and_keeps_valid_ones() {
    let topo = Topology::new();
    let conf = topo.macvlan_conf("1.1.0", "198.18.4.0/24");
    let pods: Vec<_> = (0..3).map(|i| topo.pod(&format!("gc{i}"))).collect();
    let mut addrs = Vec::new();
    for p in &pods {
        let r = topo.macvlan().add(&p.att, &conf).expect("ADD");
        addrs.push(result_addresses(&r)[0].clone());
    }
    assert_eq!(topo.allocations().len(), 3);

    let valid = [
        (pods[0].att.container_id.as_str(), IFNAME),
        (pods[2].att.container_id.as_str(), IFNAME),
    ];
    topo.macvlan().gc(&conf, &valid).expect("GC");

    let mut left: Vec<(String, String)> = topo
        .allocations()
        .into_iter()
        .map(|a| (a.container_id, a.ip.to_string()))
        .collect();
    left.sort();
    let ip_of = |s: &str| s.split('/').next().expect("ip").to_string();
    let mut want = vec![
        (pods[0].att.container_id.clone(), ip_of(&addrs[0])),
        (pods[2].att.container_id.clone(), ip_of(&addrs[2])),
    ];
    want.sort();
    assert_eq!(
        left, want,
        "GC must free exactly the attachment missing from valid-attachments"
    );

    for p in &pods {
        topo.macvlan().del(&p.att, &conf).expect("DEL");
    }
    assert_eq!(topo.allocations(), vec![]);
}

/// A failing command's raw output still carries the request's cniVersion (spec: errors are
/// printed in the requested version).
#[test]
fn error_output_echoes_cni_version() {
    let topo = Topology::new();
    let pod = topo.pod("errver");
    let mut conf = topo.macvlan_conf("1.0.0", "198.18.4.0/24");
    conf["mode"] = json!("nope");
    let out = topo.macvlan().invoke("ADD", &pod.att, &conf);
    assert!(out.code.is_some_and(|c| c != 0));
    let v: Value = out.json();
    assert_eq!(v["cniVersion"], "1.0.0", "{v}");
    assert_eq!(v["code"], 7, "{v}");
    assert!(v["msg"].is_string() && v["details"].is_string(), "{v}");
}
