//! Every error a user can cause: the plugin exits non-zero, prints a CNI error with the right
//! code whose message names the field / variable / value (and the fix where there is one), and
//! leaves nothing behind (no link in the pod namespace besides `lo`, no allocation).
//!
//! Runs as root (creates network namespaces); see `support` for the topology.

mod support;

use netattach_cni::error::{CniError, code};
use serde_json::{Value, json};
use support::{MASTER, Pod, Topology, assert_error};

/// Runs ADD through the macvlan face and returns its CNI error, asserting a non-zero exit.
fn add_fails(topo: &Topology, pod: &Pod, conf: &Value) -> CniError {
    let out = topo.macvlan().invoke("ADD", &pod.att, conf);
    assert!(
        out.code.is_some_and(|c| c != 0),
        "ADD should exit non-zero, got {:?}; stdout {}",
        out.code,
        out.stdout_str()
    );
    out.error()
}

/// Nothing in the pod namespace but `lo`, nothing in the node but the master, no allocation.
#[track_caller]
fn assert_nothing_left(topo: &Topology, pod: &Pod) {
    assert_eq!(
        pod.ns.link_names(),
        Vec::<String>::new(),
        "links left in the pod netns"
    );
    assert_eq!(
        topo.node.link_names(),
        vec![MASTER.to_string()],
        "links left in the node netns"
    );
    assert_eq!(topo.allocations(), vec![], "allocations left in the store");
}

#[test]
fn invalid_json_is_code_6() {
    let topo = Topology::new();
    let pod = topo.pod("badjson");
    let r = topo.macvlan();
    let out = r.raw(
        &r.env_for("ADD", &pod.att),
        br#"{"cniVersion": "1.1.0", "name": "x", "type": "macvlan",,}"#,
    );
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    let err = out.error();
    assert_eq!(err.code, code::DECODING_FAILURE, "{err:?}");
    assert!(
        !err.details.is_empty(),
        "the error should say where the JSON is broken: {err:?}"
    );
    assert_nothing_left(&topo, &pod);
}

#[test]
fn missing_cni_command_is_code_4() {
    let topo = Topology::new();
    let pod = topo.pod("nocmd");
    let r = topo.macvlan();
    let env: Vec<(String, String)> = r
        .env_for("ADD", &pod.att)
        .into_iter()
        .filter(|(k, _)| k != "CNI_COMMAND")
        .collect();
    let conf = topo.macvlan_conf("1.1.0", "198.18.1.0/24");
    let out = r.raw(&env, conf.to_string().as_bytes());
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert_error(&out.error(), code::INVALID_ENVIRONMENT, &["CNI_COMMAND"]);
    assert_nothing_left(&topo, &pod);
}

#[test]
fn unknown_cni_command_is_code_4() {
    let topo = Topology::new();
    let pod = topo.pod("badcmd");
    let conf = topo.macvlan_conf("1.1.0", "198.18.1.0/24");
    let out = topo.macvlan().invoke("FROBNICATE", &pod.att, &conf);
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert_error(
        &out.error(),
        code::INVALID_ENVIRONMENT,
        &["CNI_COMMAND", "FROBNICATE"],
    );
    assert_nothing_left(&topo, &pod);
}

#[test]
fn unsupported_cni_version_is_code_1() {
    let topo = Topology::new();
    let pod = topo.pod("badver");
    let conf = topo.macvlan_conf("9.9.9", "198.18.1.0/24");
    let err = add_fails(&topo, &pod, &conf);
    assert_error(&err, code::INCOMPATIBLE_VERSION, &["9.9.9"]);
    assert_nothing_left(&topo, &pod);
}

#[test]
fn ifname_of_16_bytes_is_code_4() {
    let topo = Topology::new();
    let mut pod = topo.pod("longif");
    pod.att.ifname = "abcdefghijklmnop".into();
    assert_eq!(pod.att.ifname.len(), 16);
    let conf = topo.macvlan_conf("1.1.0", "198.18.1.0/24");
    let err = add_fails(&topo, &pod, &conf);
    assert_error(
        &err,
        code::INVALID_ENVIRONMENT,
        &["CNI_IFNAME", "abcdefghijklmnop", "fix"],
    );
    assert_nothing_left(&topo, &pod);
}

#[test]
fn ifname_already_in_netns_is_code_101_and_existing_link_untouched() {
    let topo = Topology::new();
    let pod = topo.pod("dupif");
    pod.ns.add_veth_pair("net1", "other1");
    let before = pod.ns.expect_link("net1");
    let conf = topo.macvlan_conf("1.1.0", "198.18.1.0/24");
    let err = add_fails(&topo, &pod, &conf);
    assert_error(&err, code::INTERFACE_EXISTS, &["CNI_IFNAME", "net1", "fix"]);
    let after = pod.ns.expect_link("net1");
    assert_eq!(after.index, before.index, "net1 was replaced");
    assert_eq!(after.kind.as_deref(), Some("veth"));
    assert_eq!(after.mac, before.mac);
    assert_eq!(
        pod.ns.link_names(),
        vec!["net1".to_string(), "other1".to_string()]
    );
    assert_eq!(topo.allocations(), vec![]);
    assert_eq!(topo.node.link_names(), vec![MASTER.to_string()]);
}

#[test]
fn master_missing_is_code_7_naming_master() {
    let topo = Topology::new();
    let pod = topo.pod("nomaster");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.1.0/24");
    conf["master"] = json!("nosuch0");
    let err = add_fails(&topo, &pod, &conf);
    assert_error(&err, code::INVALID_NETWORK_CONFIG, &["master", "nosuch0", "fix"]);
    assert_nothing_left(&topo, &pod);
}

#[test]
fn mtu_above_master_is_code_7_naming_mtu() {
    let topo = Topology::new();
    let pod = topo.pod("bigmtu");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.1.0/24");
    conf["mtu"] = json!(9000);
    let err = add_fails(&topo, &pod, &conf);
    assert_error(
        &err,
        code::INVALID_NETWORK_CONFIG,
        &["mtu", "9000", "1500", "fix"],
    );
    assert_nothing_left(&topo, &pod);
}

#[test]
fn invalid_mac_is_code_7_naming_mac() {
    let topo = Topology::new();
    let pod = topo.pod("badmac");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.1.0/24");
    conf["mac"] = json!("02:00:00:00:00:zz");
    let err = add_fails(&topo, &pod, &conf);
    assert_error(
        &err,
        code::INVALID_NETWORK_CONFIG,
        &["mac", "02:00:00:00:00:zz", "fix"],
    );
    assert_nothing_left(&topo, &pod);
}

#[test]
fn invalid_mode_is_code_7_naming_mode() {
    let topo = Topology::new();
    let pod = topo.pod("badmode");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.1.0/24");
    conf["mode"] = json!("bridgy");
    let err = add_fails(&topo, &pod, &conf);
    assert_error(
        &err,
        code::INVALID_NETWORK_CONFIG,
        &["mode", "bridgy", "fix", "passthru"],
    );
    assert_nothing_left(&topo, &pod);
}

#[test]
fn malformed_range_is_code_7_naming_range() {
    let topo = Topology::new();
    let pod = topo.pod("badrange");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.1.0/24");
    conf["ipam"]["range"] = json!("198.18.1.0/33");
    let err = add_fails(&topo, &pod, &conf);
    assert_error(&err, code::INVALID_NETWORK_CONFIG, &["range", "198.18.1.0/33"]);
    assert_nothing_left(&topo, &pod);
}

#[test]
fn malformed_gateway_is_code_7() {
    let topo = Topology::new();
    let pod = topo.pod("badgw");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.1.0/24");
    conf["ipam"]["gateway"] = json!("198.18.1.x");
    let err = add_fails(&topo, &pod, &conf);
    assert_error(&err, code::INVALID_NETWORK_CONFIG, &["gateway", "198.18.1.x"]);
    assert_nothing_left(&topo, &pod);
}

#[test]
fn range_start_outside_range_is_code_7() {
    let topo = Topology::new();
    let pod = topo.pod("badstart");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.1.0/24");
    conf["ipam"]["range_start"] = json!("198.18.2.5");
    let err = add_fails(&topo, &pod, &conf);
    assert_error(&err, code::INVALID_NETWORK_CONFIG, &["range_start", "198.18.2.5"]);
    assert_nothing_left(&topo, &pod);
}

#[test]
fn exhausted_range_is_code_102_with_pool_size_and_held() {
    let topo = Topology::new();
    // A /30 has two usable addresses (.1 and .2).
    let conf = topo.macvlan_conf("1.1.0", "198.18.3.0/30");
    let first = topo.pod("full1");
    let second = topo.pod("full2");
    let third = topo.pod("full3");
    topo.macvlan().add(&first.att, &conf).expect("first ADD");
    topo.macvlan().add(&second.att, &conf).expect("second ADD");
    let err = add_fails(&topo, &third, &conf);
    assert_error(
        &err,
        code::POOL_EXHAUSTED,
        &["pool `", "198.18.3.0/30", "2 allocatable", "2 held", "fix"],
    );
    assert_eq!(
        third.ns.link_names(),
        Vec::<String>::new(),
        "link left in the third pod"
    );
    let held = topo.allocations();
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(
        held.iter().all(|a| a.container_id != third.att.container_id),
        "the failed pod holds an address: {held:?}"
    );
    let pool = &held[0].pool;
    assert!(
        err.details.contains(pool.as_str()),
        "message should name pool {pool}: {err:?}"
    );
    topo.macvlan().del(&first.att, &conf).expect("DEL first");
    topo.macvlan().del(&second.att, &conf).expect("DEL second");
    assert_nothing_left(&topo, &first);
}

#[test]
fn unknown_ipam_key_range_start_camel_case_suggests_range_start() {
    let topo = Topology::new();
    let pod = topo.pod("camel");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.1.0/24");
    conf["ipam"]["rangeStart"] = json!("198.18.1.10");
    let err = add_fails(&topo, &pod, &conf);
    assert_error(
        &err,
        code::INVALID_NETWORK_CONFIG,
        &["rangeStart", "`range_start`"],
    );
    assert_nothing_left(&topo, &pod);
}

#[test]
fn ipam_type_with_a_path_is_code_7_and_nothing_is_executed() {
    let topo = Topology::new();
    let pod = topo.pod("pathtype");

    // The literal case from the issue.
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.1.0/24");
    conf["ipam"]["type"] = json!("../../bin/sh");
    let err = add_fails(&topo, &pod, &conf);
    assert_error(&err, code::INVALID_NETWORK_CONFIG, &["../../bin/sh", "fix"]);
    assert_nothing_left(&topo, &pod);

    // A path that WOULD resolve from CNI_PATH to an executable that leaves a marker.
    let evil_dir = tempfile::Builder::new()
        .prefix("netattach-itest-evil-")
        .tempdir()
        .expect("tmp");
    let marker = evil_dir.path().join("ran");
    let script = evil_dir.path().join("evil");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch {}\necho '{{}}'\n", marker.display()),
    )
    .expect("write script");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let rel = format!(
        "../{}/evil",
        evil_dir.path().file_name().expect("name").to_string_lossy()
    );
    assert!(
        support::bin_dir().join(&rel).exists(),
        "test setup: {rel} should resolve from CNI_PATH"
    );
    conf["ipam"]["type"] = json!(rel);
    let err = add_fails(&topo, &pod, &conf);
    assert_error(&err, code::INVALID_NETWORK_CONFIG, &[rel.as_str()]);
    assert!(!marker.exists(), "the plugin executed {rel}");
    assert_nothing_left(&topo, &pod);
}
