//! whereabouts IPAM, directly (the `whereabouts` face) and through macvlan: attachment identity,
//! gateway / exclude / range_start..range_end, dual stack, static requests, and
//! `netattach ipam ls`.
//!
//! The whereabouts flat-file merge needs files under /etc and is unit-tested in the ipam crate.
//!
//! Runs as root (creates network namespaces); see `support` for the topology.

mod support;

use std::collections::HashSet;
use std::process::Command;

use netattach_cni::error::code;
use serde_json::{Value, json};
use support::{Attachment, IFNAME, Topology, assert_error, result_addresses};

/// ADD through the whereabouts face; returns the single address (`a.b.c.d/len`).
fn ipam_add(topo: &Topology, att: &Attachment, conf: &Value) -> String {
    let r = topo
        .whereabouts()
        .add(att, conf)
        .unwrap_or_else(|e| panic!("whereabouts ADD failed: {e}"));
    let addrs = result_addresses(&r);
    assert_eq!(addrs.len(), 1, "{r}");
    addrs[0].clone()
}

#[test]
fn add_is_idempotent_per_podref_and_ifname() {
    let topo = Topology::new();
    let pod = topo.pod("idem");
    let conf = topo.ipam_conf("1.1.0", "198.18.20.0/24");
    let first = ipam_add(&topo, &pod.att, &conf);
    // Same container again: same address.
    assert_eq!(ipam_add(&topo, &pod.att, &conf), first);
    // The pod restarted: same pod name, new sandbox (container id): still the same address.
    let mut again = pod.att.clone();
    again.container_id = support::container_id();
    assert_eq!(ipam_add(&topo, &again, &conf), first);
    let held = topo.allocations();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        held[0].container_id, again.container_id,
        "holder's container id is updated"
    );
    assert_eq!(held[0].podref.as_deref(), Some("default/idem"));
    // Another interface of the same pod is another attachment.
    let mut net2 = pod.att.clone();
    net2.ifname = "net2".into();
    assert_ne!(ipam_add(&topo, &net2, &conf), first);
    // Another pod gets another address.
    let other = topo.pod("idem2");
    assert_ne!(ipam_add(&topo, &other.att, &conf), first);
    assert_eq!(topo.allocations().len(), 3);
}

/// whereabouts' `log_level` and `log_file` are honoured: debug lines, in plain text, in the
/// file as well as on stderr; an unknown level is a warning, never a failed ADD.
#[test]
fn log_level_and_log_file_are_honoured() {
    let topo = Topology::new();
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("whereabouts.log");
    let pod = topo.pod("logged");
    let mut conf = topo.ipam_conf("1.1.0", "198.18.20.0/24");
    conf["ipam"]["log_level"] = json!("debug");
    conf["ipam"]["log_file"] = json!(log);
    let out = topo.whereabouts().invoke("ADD", &pod.att, &conf);
    assert!(out.success(), "{out:?}");
    let text = std::fs::read_to_string(&log).expect("the log file was written");
    // "allocated" is an info line: below the default (warn), so the level was raised.
    assert!(text.contains("INFO") && text.contains("allocated"), "{text}");
    assert!(!text.contains('\u{1b}'), "ANSI escapes in the log file: {text:?}");
    assert!(
        out.stderr.contains("allocated"),
        "stderr keeps the logs: {}",
        out.stderr
    );

    let other = topo.pod("quiet");
    let mut conf = topo.ipam_conf("1.1.0", "198.18.20.0/24");
    conf["ipam"]["log_level"] = json!("chatty");
    let out = topo.whereabouts().invoke("ADD", &other.att, &conf);
    assert!(out.success(), "{out:?}");
    assert!(out.stderr.contains("unknown ipam.log_level"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("allocated"),
        "default level is warn: {}",
        out.stderr
    );
}

#[test]
fn without_pod_identity_is_the_container_id() {
    let topo = Topology::new();
    let pod = topo.pod("nopod");
    let conf = topo.ipam_conf("1.1.0", "198.18.20.0/24");
    let att = Attachment::without_pod(pod.ns.path());
    let first = ipam_add(&topo, &att, &conf);
    assert_eq!(
        ipam_add(&topo, &att, &conf),
        first,
        "same container id: same address"
    );
    let other = Attachment::without_pod(pod.ns.path());
    assert_ne!(other.container_id, att.container_id);
    assert_ne!(
        ipam_add(&topo, &other, &conf),
        first,
        "new container id: new address"
    );
    assert!(topo.allocations().iter().all(|a| a.podref.is_none()));
    topo.whereabouts().del(&att, &conf).expect("DEL");
    topo.whereabouts().del(&other, &conf).expect("DEL");
    assert_eq!(topo.allocations(), vec![]);
}

/// Fills `conf`'s range with fresh attachments until it is exhausted; returns the addresses.
fn fill(topo: &Topology, conf: &Value, expect: usize) -> HashSet<String> {
    let pod = topo.pod("fill");
    let mut got = HashSet::new();
    for _ in 0..expect {
        let att = Attachment::without_pod(pod.ns.path());
        let a = ipam_add(topo, &att, conf);
        assert!(got.insert(a.clone()), "{a} handed out twice");
    }
    let att = Attachment::without_pod(pod.ns.path());
    let err = topo
        .whereabouts()
        .add(&att, conf)
        .expect_err("range should be exhausted");
    assert_error(&err, code::POOL_EXHAUSTED, &[&format!("{expect} allocatable")]);
    got
}

fn set(items: &[&str]) -> HashSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn gateway_is_never_allocated() {
    let topo = Topology::new();
    let mut conf = topo.ipam_conf("1.1.0", "198.18.21.0/29");
    conf["ipam"]["gateway"] = json!("198.18.21.1");
    let got = fill(&topo, &conf, 5);
    assert_eq!(
        got,
        set(&[
            "198.18.21.2/29",
            "198.18.21.3/29",
            "198.18.21.4/29",
            "198.18.21.5/29",
            "198.18.21.6/29"
        ])
    );
}

#[test]
fn exclude_is_honoured() {
    let topo = Topology::new();
    let mut conf = topo.ipam_conf("1.1.0", "198.18.22.0/29");
    conf["ipam"]["exclude"] = json!(["198.18.22.0/30", "198.18.22.5/32"]);
    let got = fill(&topo, &conf, 2);
    assert_eq!(got, set(&["198.18.22.4/29", "198.18.22.6/29"]));
}

#[test]
fn range_start_and_range_end_are_honoured() {
    let topo = Topology::new();
    let mut conf = topo.ipam_conf("1.1.0", "198.18.23.0/24");
    conf["ipam"]["range_start"] = json!("198.18.23.10");
    conf["ipam"]["range_end"] = json!("198.18.23.12");
    let got = fill(&topo, &conf, 3);
    assert_eq!(
        got,
        set(&["198.18.23.10/24", "198.18.23.11/24", "198.18.23.12/24"])
    );
}

#[test]
fn ip_ranges_dual_stack_through_macvlan() {
    let topo = Topology::new();
    let pod = topo.pod("dual");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.24.0/24");
    let ipam = conf["ipam"].as_object_mut().expect("ipam");
    ipam.remove("range");
    ipam.insert(
        "ipRanges".into(),
        json!([{"range": "198.18.24.0/24"}, {"range": "fd00:198:18:24::/64"}]),
    );
    let r = topo.macvlan().add(&pod.att, &conf).expect("ADD");
    let addrs = result_addresses(&r);
    assert_eq!(addrs.len(), 2, "{r}");
    let v4 = addrs
        .iter()
        .find(|a| a.starts_with("198.18.24."))
        .expect("v4 in result");
    let v6 = addrs
        .iter()
        .find(|a| a.starts_with("fd00:198:18:24:"))
        .expect("v6 in result");
    assert!(v4.ends_with("/24") && v6.ends_with("/64"), "{addrs:?}");
    for ip in r["ips"].as_array().expect("ips") {
        assert_eq!(ip["interface"], 0);
    }
    let mut want = addrs.clone();
    want.sort();
    assert_eq!(pod.ns.address_strings(IFNAME), want, "both addresses on the link");
    assert_eq!(topo.allocations().len(), 2);
    topo.macvlan().check(&pod.att, &conf, &r).expect("CHECK");
    topo.macvlan().del(&pod.att, &conf).expect("DEL");
    assert_eq!(topo.allocations(), vec![]);
}

#[test]
fn static_address_via_runtime_config_ips() {
    let topo = Topology::new();
    let pod = topo.pod("static1");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.25.0/24");
    conf["capabilities"] = json!({"ips": true});
    conf["runtimeConfig"] = json!({"ips": ["198.18.25.77/24"]});
    let r = topo.macvlan().add(&pod.att, &conf).expect("ADD");
    assert_eq!(result_addresses(&r), vec!["198.18.25.77/24".to_string()]);
    assert_eq!(
        pod.ns.address_strings(IFNAME),
        vec!["198.18.25.77/24".to_string()]
    );
    let held = topo.allocations();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].ip.to_string(), "198.18.25.77");

    // Held: another pod asking for it is refused with 103 naming the holder.
    let other = topo.pod("static1b");
    let err = topo.macvlan().add(&other.att, &conf).expect_err("address held");
    assert_error(
        &err,
        code::ADDRESS_UNAVAILABLE,
        &["198.18.25.77", "default/static1"],
    );
    assert_eq!(other.ns.link_names(), Vec::<String>::new());

    topo.macvlan().del(&pod.att, &conf).expect("DEL");
    assert_eq!(topo.allocations(), vec![]);
}

#[test]
fn static_address_via_cni_args_ip() {
    let topo = Topology::new();
    let mut pod = topo.pod("static2");
    pod.att.extra_args.push(("IP".into(), "198.18.25.88".into()));
    let conf = topo.macvlan_conf("1.1.0", "198.18.25.0/24");
    let r = topo.macvlan().add(&pod.att, &conf).expect("ADD");
    assert_eq!(result_addresses(&r), vec!["198.18.25.88/24".to_string()]);
    assert_eq!(
        pod.ns.address_strings(IFNAME),
        vec!["198.18.25.88/24".to_string()]
    );
    topo.macvlan().del(&pod.att, &conf).expect("DEL");
    assert_eq!(topo.allocations(), vec![]);
}

#[test]
fn ipam_ls_lists_the_allocation_as_table_and_json() {
    let topo = Topology::new();
    let pod = topo.pod("lsme");
    let conf = topo.macvlan_conf("1.1.0", "198.18.26.0/24");
    let r = topo.macvlan().add(&pod.att, &conf).expect("ADD");
    let addr = result_addresses(&r)[0].split('/').next().expect("ip").to_string();
    let pool = topo.allocations()[0].pool.clone();

    let ls = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_netattach"));
        cmd.args(["ipam", "ls", "--local-dir"])
            .arg(topo.local_dir())
            .env_remove("CNI_COMMAND");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("run netattach ipam ls");
        assert!(
            out.status.success(),
            "ipam ls failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    };

    let table = ls(false);
    let row = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(addr.as_str()))
        .unwrap_or_else(|| panic!("no row for {addr} in:\n{table}"));
    for field in [pool.as_str(), "default/lsme", IFNAME] {
        assert!(row.contains(field), "row lacks {field}: {row}");
    }
    assert!(table.contains("1 allocation(s)"), "{table}");

    let v: Value = serde_json::from_str(&ls(true)).expect("--json output parses");
    let items = v.as_array().expect("array");
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["address"], addr);
    assert_eq!(items[0]["pool"], pool);
    assert_eq!(items[0]["podref"], "default/lsme");
    assert_eq!(items[0]["ifname"], IFNAME);
    assert_eq!(items[0]["containerID"], pod.att.container_id);

    topo.macvlan().del(&pod.att, &conf).expect("DEL");
    let v: Value = serde_json::from_str(&ls(true)).expect("json");
    assert_eq!(v, json!([]));
}

#[test]
fn whereabouts_check_and_del_directly() {
    let topo = Topology::new();
    let pod = topo.pod("direct");
    let conf = topo.ipam_conf("1.1.0", "198.18.27.0/24");
    let r = topo.whereabouts().add(&pod.att, &conf).expect("ADD");
    assert!(
        r.get("interfaces").is_none(),
        "IPAM result has no interfaces: {r}"
    );
    topo.whereabouts().check(&pod.att, &conf, &r).expect("CHECK");
    topo.whereabouts().del(&pod.att, &conf).expect("DEL");
    assert_eq!(topo.allocations(), vec![]);
    let err = topo
        .whereabouts()
        .check(&pod.att, &conf, &r)
        .expect_err("CHECK after DEL");
    assert_error(&err, code::CHECK_FAILED, &["default/direct"]);
    topo.whereabouts().del(&pod.att, &conf).expect("second DEL");
}
