//! The macvlan plugin against real namespaces: modes, MTU, MAC priority, bcqueuelen, L2-only,
//! default master, dns, linkInContainer, IPAM routes, CHECK drift detection, DEL idempotence and
//! cleanup after a failed ADD.
//!
//! Runs as root (creates network namespaces); see `support` for the topology.

mod support;

use netattach_cni::error::code;
use netattach_netdev::{MacvlanMode, Route};
use serde_json::{Value, json};
use support::{IFNAME, MASTER, Pod, Topology, assert_error, result_addresses};

const IFF_UP: u32 = 0x1;
const IFF_BROADCAST: u32 = 0x2;
const IFF_MULTICAST: u32 = 0x1000;
const IFF_LOWER_UP: u32 = 0x10000;

fn master_index(topo: &Topology) -> u32 {
    topo.node.expect_link(MASTER).index
}

fn add_ok(topo: &Topology, pod: &Pod, conf: &Value) -> Value {
    topo.macvlan()
        .add(&pod.att, conf)
        .unwrap_or_else(|e| panic!("ADD failed: {e}"))
}

fn del_ok(topo: &Topology, pod: &Pod, conf: &Value) {
    topo.macvlan()
        .del(&pod.att, conf)
        .unwrap_or_else(|e| panic!("DEL failed: {e}"));
}

fn mode_test(mode: &str, want: MacvlanMode) {
    let topo = Topology::new();
    let pod = topo.pod("mode");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");
    conf["mode"] = json!(mode);
    add_ok(&topo, &pod, &conf);
    let link = pod.ns.expect_link(IFNAME);
    assert_eq!(link.kind.as_deref(), Some("macvlan"));
    assert_eq!(link.macvlan_mode, Some(want), "mode {mode}");
    assert_eq!(
        link.parent,
        Some(master_index(&topo)),
        "lower device should be stor0"
    );
    del_ok(&topo, &pod, &conf);
    assert!(pod.ns.link(IFNAME).is_none());
}

#[test]
fn mode_bridge() {
    mode_test("bridge", MacvlanMode::Bridge);
}

#[test]
fn mode_private() {
    mode_test("private", MacvlanMode::Private);
}

#[test]
fn mode_vepa() {
    mode_test("vepa", MacvlanMode::Vepa);
}

#[test]
fn mode_passthru() {
    mode_test("passthru", MacvlanMode::Passthru);
}

#[test]
fn mode_defaults_to_bridge() {
    let topo = Topology::new();
    let pod = topo.pod("defmode");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");
    conf.as_object_mut().expect("obj").remove("mode");
    add_ok(&topo, &pod, &conf);
    assert_eq!(pod.ns.expect_link(IFNAME).macvlan_mode, Some(MacvlanMode::Bridge));
    del_ok(&topo, &pod, &conf);
}

#[test]
fn mtu_is_applied_and_defaults_to_the_masters() {
    let topo = Topology::new();
    topo.set_master_mtu(1400);
    let conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");

    let pod = topo.pod("mtudef");
    let r = add_ok(&topo, &pod, &conf);
    assert_eq!(pod.ns.expect_link(IFNAME).mtu, 1400, "default MTU = master's");
    assert_eq!(r["interfaces"][0]["mtu"], 1400);
    del_ok(&topo, &pod, &conf);

    let pod = topo.pod("mtuset");
    let mut conf = conf.clone();
    conf["mtu"] = json!(1280);
    let r = add_ok(&topo, &pod, &conf);
    assert_eq!(pod.ns.expect_link(IFNAME).mtu, 1280);
    assert_eq!(r["interfaces"][0]["mtu"], 1280);
    del_ok(&topo, &pod, &conf);
}

#[test]
fn mac_priority_runtime_config_over_cni_args_over_config() {
    let topo = Topology::new();
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");
    conf["capabilities"] = json!({"mac": true});
    conf["mac"] = json!("02:18:00:00:00:01");
    let args_mac = "02:18:00:00:00:02";
    let rc_mac = "02:18:00:00:00:03";

    let check = |pod: &Pod, conf: &Value, want: &str| {
        let r = add_ok(&topo, pod, conf);
        let link = pod.ns.expect_link(IFNAME);
        assert_eq!(link.mac.expect("mac").to_string().to_lowercase(), want);
        assert_eq!(
            r["interfaces"][0]["mac"].as_str().map(str::to_lowercase),
            Some(want.into())
        );
        del_ok(&topo, pod, conf);
    };

    // config only
    let pod = topo.pod("mac1");
    check(&pod, &conf, "02:18:00:00:00:01");

    // CNI_ARGS MAC beats config
    let mut pod = topo.pod("mac2");
    pod.att.extra_args.push(("MAC".into(), args_mac.into()));
    check(&pod, &conf, args_mac);

    // runtimeConfig.mac beats both
    let mut pod = topo.pod("mac3");
    pod.att.extra_args.push(("MAC".into(), args_mac.into()));
    let mut rc = conf.clone();
    rc["runtimeConfig"] = json!({"mac": rc_mac});
    check(&pod, &rc, rc_mac);
}

#[test]
fn bcqueuelen_is_applied() {
    let topo = Topology::new();
    let pod = topo.pod("bcq");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");
    conf["bcqueuelen"] = json!(333);
    add_ok(&topo, &pod, &conf);
    assert_eq!(pod.ns.expect_link(IFNAME).macvlan_bc_queue_len, Some(333));
    del_ok(&topo, &pod, &conf);
}

#[test]
fn empty_ipam_is_l2_only_with_link_up() {
    let topo = Topology::new();
    let pod = topo.pod("l2");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");
    conf["ipam"] = json!({});
    let r = add_ok(&topo, &pod, &conf);
    assert!(
        r.get("ips")
            .is_none_or(|v| v.as_array().is_some_and(Vec::is_empty)),
        "{r}"
    );
    let link = pod.ns.expect_link(IFNAME);
    assert!(link.up, "L2-only link must be up");
    assert_eq!(pod.ns.address_strings(IFNAME), Vec::<String>::new());
    assert_eq!(topo.allocations(), vec![]);
    del_ok(&topo, &pod, &conf);
    assert!(pod.ns.link(IFNAME).is_none());
}

#[test]
fn master_omitted_uses_the_default_route_interface() {
    let topo = Topology::new();
    topo.node.add_address(MASTER, "198.18.11.2/24");
    {
        let mut h = topo.node.handle();
        let mut route = Route::new("0.0.0.0/0".parse().expect("dst"));
        route.gateway = Some("198.18.11.1".parse().expect("gw"));
        route.oif = Some(master_index(&topo));
        h.add_route(&route).expect("default route in the node netns");
    }
    let pod = topo.pod("defmaster");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");
    conf.as_object_mut().expect("obj").remove("master");
    add_ok(&topo, &pod, &conf);
    assert_eq!(pod.ns.expect_link(IFNAME).parent, Some(master_index(&topo)));
    del_ok(&topo, &pod, &conf);
}

#[test]
fn master_omitted_without_default_route_is_a_clear_error() {
    let topo = Topology::new();
    let pod = topo.pod("nodefault");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");
    conf.as_object_mut().expect("obj").remove("master");
    let err = topo.macvlan().add(&pod.att, &conf).expect_err("no default route");
    assert_error(
        &err,
        code::INVALID_NETWORK_CONFIG,
        &["master", "default route", "fix"],
    );
    assert_eq!(pod.ns.link_names(), Vec::<String>::new());
    assert_eq!(topo.allocations(), vec![]);
}

#[test]
fn dns_is_copied_to_the_result() {
    let topo = Topology::new();
    let pod = topo.pod("dns");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");
    let dns = json!({"nameservers": ["198.18.10.53"], "domain": "itest.example", "search": ["a.itest.example"], "options": ["ndots:2"]});
    conf["dns"] = dns.clone();
    let r = add_ok(&topo, &pod, &conf);
    assert_eq!(r["dns"], dns, "{r}");
    del_ok(&topo, &pod, &conf);
}

#[test]
fn link_in_container_uses_a_master_inside_the_pod_netns() {
    let topo = Topology::new();
    let pod = topo.pod("lic");
    // The pod's own "NIC": a veth end moved into the pod netns, peer in the switch.
    {
        let mut h = topo.switch.handle();
        h.create_veth("swlic0", "podnic0", Some(&pod.ns.netns()))
            .expect("veth into pod");
    }
    topo.switch.set_up("swlic0");
    pod.ns.set_up("podnic0");
    let nic = pod.ns.expect_link("podnic0");

    let mut conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");
    conf["master"] = json!("podnic0");
    conf["linkInContainer"] = json!(true);
    let r = add_ok(&topo, &pod, &conf);
    let link = pod.ns.expect_link(IFNAME);
    assert_eq!(link.kind.as_deref(), Some("macvlan"));
    assert_eq!(
        link.parent,
        Some(nic.index),
        "lower device should be the pod's podnic0"
    );
    assert_eq!(link.link_netnsid, None, "master is in the same netns");
    assert_eq!(pod.ns.address_strings(IFNAME), result_addresses(&r));
    topo.macvlan().check(&pod.att, &conf, &r).expect("CHECK");
    del_ok(&topo, &pod, &conf);
    assert!(pod.ns.link(IFNAME).is_none());
    assert!(pod.ns.link("podnic0").is_some(), "DEL must not touch the master");
    assert_eq!(topo.allocations(), vec![]);
}

fn routed_conf(topo: &Topology) -> Value {
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.12.0/24");
    conf["ipam"]["gateway"] = json!("198.18.12.1");
    conf["ipam"]["routes"] = json!([
        {"dst": "198.19.0.0/16"},
        {"dst": "198.19.100.0/24", "gw": "198.18.12.254"}
    ]);
    conf
}

#[test]
fn ipam_routes_are_installed_with_their_gateway() {
    let topo = Topology::new();
    let pod = topo.pod("routes");
    let conf = routed_conf(&topo);
    let r = add_ok(&topo, &pod, &conf);
    assert_eq!(r["ips"][0]["gateway"], "198.18.12.1", "{r}");
    let idx = pod.ns.expect_link(IFNAME).index;
    let routes = pod.ns.routes();
    let find = |dst: &str| {
        routes
            .iter()
            .find(|rt| rt.dst.to_string() == dst)
            .unwrap_or_else(|| panic!("no route to {dst} in {routes:?}"))
            .clone()
    };
    let a = find("198.19.0.0/16");
    assert_eq!(
        a.gateway,
        Some("198.18.12.1".parse().expect("ip")),
        "route without gw uses the range gateway"
    );
    assert_eq!(a.oif, Some(idx));
    let b = find("198.19.100.0/24");
    assert_eq!(b.gateway, Some("198.18.12.254".parse().expect("ip")));
    assert_eq!(b.oif, Some(idx));
    topo.macvlan().check(&pod.att, &conf, &r).expect("CHECK");
    del_ok(&topo, &pod, &conf);
}

/// ADD, apply `drift` to the pod, and expect CHECK to fail with 106 mentioning `needles`.
fn check_drift(conf_for_check: impl Fn(&Value) -> Value, drift: impl Fn(&Pod), needles: &[&str]) {
    let topo = Topology::new();
    let pod = topo.pod("drift");
    let conf = routed_conf(&topo);
    let r = add_ok(&topo, &pod, &conf);
    topo.macvlan()
        .check(&pod.att, &conf, &r)
        .expect("CHECK right after ADD");
    drift(&pod);
    let err = topo
        .macvlan()
        .check(&pod.att, &conf_for_check(&conf), &r)
        .expect_err("CHECK must notice the drift");
    assert_error(&err, code::CHECK_FAILED, needles);
    del_ok(&topo, &pod, &conf);
    assert_eq!(topo.allocations(), vec![]);
}

#[test]
fn check_detects_a_removed_address() {
    check_drift(
        Value::clone,
        |pod| {
            let mut h = pod.ns.handle();
            let idx = h.link_index(IFNAME).expect("idx");
            let addr = h
                .addresses(idx)
                .expect("addrs")
                .into_iter()
                .find(|a| a.addr.addr().is_ipv4())
                .expect("v4 address");
            h.delete_address(idx, addr.addr).expect("delete address");
        },
        &["net1", "address", "198.18.12."],
    );
}

#[test]
fn check_detects_a_deleted_link() {
    check_drift(
        Value::clone,
        |pod| {
            let mut h = pod.ns.handle();
            assert!(h.delete_link_by_name(IFNAME).expect("delete"));
        },
        &["net1", "missing"],
    );
}

#[test]
fn check_detects_a_changed_mac() {
    check_drift(
        Value::clone,
        |pod| {
            let mut h = pod.ns.handle();
            let idx = h.link_index(IFNAME).expect("idx");
            h.set_mac(idx, "02:18:00:00:99:99".parse().expect("mac"))
                .expect("set mac");
        },
        &["net1", "MAC", "02:18:00:00:99:99"],
    );
}

#[test]
fn check_detects_a_mode_mismatch() {
    check_drift(
        |c| {
            let mut c = c.clone();
            c["mode"] = json!("private");
            c
        },
        |_| {},
        &["net1", "mode", "private"],
    );
}

#[test]
fn check_detects_a_removed_route() {
    check_drift(
        Value::clone,
        |pod| {
            let mut h = pod.ns.handle();
            let route = h
                .routes(None)
                .expect("routes")
                .into_iter()
                .find(|r| r.dst.to_string() == "198.19.100.0/24")
                .expect("route present");
            h.delete_route(&route).expect("delete route");
        },
        &["route", "198.19.100.0/24"],
    );
}

#[test]
fn del_twice_succeeds() {
    let topo = Topology::new();
    let pod = topo.pod("deltwice");
    let conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");
    add_ok(&topo, &pod, &conf);
    del_ok(&topo, &pod, &conf);
    del_ok(&topo, &pod, &conf);
    assert!(pod.ns.link(IFNAME).is_none());
    assert_eq!(topo.allocations(), vec![]);
}

#[test]
fn del_with_the_netns_gone_succeeds_and_releases_the_address() {
    let topo = Topology::new();
    let mut pod = topo.pod("nsgone");
    let conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");
    add_ok(&topo, &pod, &conf);
    assert_eq!(topo.allocations().len(), 1);
    pod.ns.delete();
    assert!(!pod.ns.path().exists());
    del_ok(&topo, &pod, &conf);
    assert_eq!(
        topo.allocations(),
        vec![],
        "DEL without netns must still release IPAM"
    );
}

#[test]
fn del_with_the_master_gone_succeeds() {
    let topo = Topology::new();
    let pod = topo.pod("mastergone");
    let conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");
    add_ok(&topo, &pod, &conf);
    topo.delete_master();
    del_ok(&topo, &pod, &conf);
    assert!(pod.ns.link(IFNAME).is_none());
    assert_eq!(topo.allocations(), vec![]);
}

#[test]
fn del_leaves_a_non_macvlan_interface_of_the_same_name_alone() {
    let topo = Topology::new();
    let pod = topo.pod("notours");
    pod.ns.add_veth_pair(IFNAME, "peer1");
    let before = pod.ns.expect_link(IFNAME);
    let conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");
    del_ok(&topo, &pod, &conf);
    let after = pod.ns.expect_link(IFNAME);
    assert_eq!(after.index, before.index);
    assert_eq!(after.kind.as_deref(), Some("veth"));
}

#[test]
fn add_failing_after_ipam_leaves_no_link_and_no_allocation() {
    let topo = Topology::new();
    let pod = topo.pod("failafter");
    let mut conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");
    // The gateway is not on-link (not in 198.18.10.0/24): the route add fails after IPAM
    // already allocated.
    conf["ipam"]["routes"] = json!([{"dst": "198.19.200.0/24", "gw": "198.19.99.1"}]);
    let out = topo.macvlan().invoke("ADD", &pod.att, &conf);
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    let err = out.error();
    assert_error(&err, code::LINK_SETUP_FAILED, &["198.19.200.0/24"]);
    assert_eq!(
        pod.ns.link_names(),
        Vec::<String>::new(),
        "link left after failed ADD"
    );
    assert_eq!(topo.allocations(), vec![], "allocation left after failed ADD");
}

#[test]
fn link_flags_up_and_lower_up_follow_the_master() {
    let topo = Topology::new();
    let conf = topo.macvlan_conf("1.1.0", "198.18.10.0/24");

    let pod = topo.pod("flags");
    add_ok(&topo, &pod, &conf);
    let link = pod.ns.expect_link(IFNAME);
    let want = IFF_UP | IFF_BROADCAST | IFF_MULTICAST | IFF_LOWER_UP;
    assert_eq!(link.flags & want, want, "flags {:#x}", link.flags);
    assert!(link.up && link.oper_up, "{link:?}");
    del_ok(&topo, &pod, &conf);

    // Master without carrier (its veth peer down): the macvlan is UP but not LOWER_UP.
    {
        let mut h = topo.switch.handle();
        let idx = h.link_index(support::MASTER_PEER).expect("peer");
        h.set_down(idx).expect("peer down");
    }
    let pod = topo.pod("flagsdown");
    add_ok(&topo, &pod, &conf);
    let link = pod.ns.expect_link(IFNAME);
    assert_eq!(link.flags & IFF_UP, IFF_UP, "flags {:#x}", link.flags);
    assert_eq!(
        link.flags & IFF_LOWER_UP,
        0,
        "LOWER_UP without carrier: {:#x}",
        link.flags
    );
    assert!(!link.oper_up);
    del_ok(&topo, &pod, &conf);
}

/// An IPAM plugin that is not this binary is executed as the spec says (same stdin, same
/// environment, CNI_COMMAND replaced): here our macvlan with the reference host-local. The
/// in-process shortcut applies only to `whereabouts` when it is this very file.
#[test]
fn executes_an_ipam_plugin_that_is_not_itself() {
    let reference = std::path::Path::new("/usr/lib/cni/host-local");
    assert!(
        reference.exists(),
        "this test needs the reference plugins: apt-get install containernetworking-plugins"
    );
    let topo = Topology::new();
    let pod = topo.pod("p-hostlocal");
    let data = tempfile::tempdir().expect("host-local data dir");
    let mut mv = topo.macvlan();
    mv.cni_path = format!("{}:/usr/lib/cni", mv.cni_path.display()).into();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "hl", "type": "macvlan", "master": MASTER,
        "ipam": {"type": "host-local", "dataDir": data.path().display().to_string(),
                 "ranges": [[{"subnet": "198.18.9.0/24"}]]}
    });
    let result = mv
        .add(&pod.att, &conf)
        .unwrap_or_else(|e| panic!("ADD failed: {e}"));
    let addrs = result_addresses(&result);
    assert_eq!(addrs.len(), 1, "{result}");
    assert!(addrs[0].starts_with("198.18.9."), "{addrs:?}");
    assert!(
        pod.ns.address_strings(IFNAME).contains(&addrs[0]),
        "address not on {IFNAME}"
    );
    let held = std::fs::read_dir(data.path().join("hl"))
        .expect("host-local wrote its network dir")
        .count();
    assert!(held >= 1, "host-local holds no reservation");
    mv.del(&pod.att, &conf)
        .unwrap_or_else(|e| panic!("DEL failed: {e}"));
    assert!(pod.ns.link(IFNAME).is_none());
    let left: Vec<String> = std::fs::read_dir(data.path().join("hl"))
        .expect("read data dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(left.is_empty(), "host-local still holds {left:?}");
}
