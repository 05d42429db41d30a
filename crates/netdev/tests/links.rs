//! Root tests for links, addresses and routes: veth across namespaces, bridges, macvlan in every
//! mode created directly in a target namespace, read-back of link attributes, and the errors
//! callers must be able to tell apart.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{TestNs, wait_until};
use ipnet::IpNet;
use netattach_netdev::{Family, MacAddr, MacvlanMode, MacvlanSpec, NetdevError, Route, sysctl};

/// A "host" namespace with a veth pair `m0`/`m0p` (the master candidates) and an empty "pod"
/// namespace.
fn host_and_pod() -> (TestNs, TestNs) {
    let mut host = TestNs::new();
    let pod = TestNs::new();
    host.h.create_veth("m0", "m0p", None).expect("veth in host ns");
    host.up("m0");
    host.up("m0p");
    (host, pod)
}

#[test]
fn veth_pair_spans_two_namespaces_and_deleting_one_end_removes_both() {
    let mut a = TestNs::new();
    let mut b = TestNs::new();
    a.h.create_veth("va", "vb", Some(&b.ns)).expect("create veth");
    let va = a.h.link_by_name("va").unwrap().expect("va in a");
    let vb = b.h.link_by_name("vb").unwrap().expect("vb in b");
    assert_eq!(va.kind.as_deref(), Some("veth"));
    assert_eq!(vb.kind.as_deref(), Some("veth"));
    assert!(va.link_netnsid.is_some(), "peer lives in another netns");
    assert!(a.h.link_by_name("vb").unwrap().is_none(), "peer must not be in a");
    assert_eq!(va.mtu, 1500);
    assert!(va.mac.unwrap().is_unicast());

    a.h.delete_link(va.index).expect("delete");
    assert!(a.h.link_by_name("va").unwrap().is_none());
    assert!(wait_until(Duration::from_secs(2), || b
        .h
        .link_by_name("vb")
        .unwrap()
        .is_none()));
    assert!(!a.h.delete_link_by_name("va").unwrap(), "absent link => false");
}

#[test]
fn bridge_set_master_enslaves_and_releases_a_port() {
    let mut t = TestNs::new();
    t.h.create_bridge("br0").unwrap();
    t.h.create_veth("p0", "p1", None).unwrap();
    let br = t.h.link_by_name("br0").unwrap().unwrap();
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    let p0 = t.index("p0");
    t.h.set_master(p0, br.index).unwrap();
    assert_eq!(t.h.link_by_index(p0).unwrap().unwrap().master, Some(br.index));
    t.h.set_master(p0, 0).unwrap();
    assert_eq!(t.h.link_by_index(p0).unwrap().unwrap().master, None);
    assert!(t.h.links().unwrap().iter().any(|l| l.name == "br0"));
}

#[test]
fn macvlan_in_target_netns_reads_back_kind_mode_mac_mtu_and_bcqueuelen_for_each_mode() {
    let (mut host, mut pod) = host_and_pod();
    let master = host.index("m0");
    for (i, mode) in [MacvlanMode::Private, MacvlanMode::Vepa, MacvlanMode::Bridge]
        .into_iter()
        .enumerate()
    {
        let name = format!("mv{i}");
        let mac: MacAddr = format!("02:42:c6:12:00:0{i}").parse().unwrap();
        let spec = MacvlanSpec {
            name: name.clone(),
            master_index: master,
            mode,
            mtu: Some(1400),
            mac: Some(mac),
            bc_queue_len: Some(321),
            target_netns: Some(&pod.ns),
        };
        host.h
            .create_macvlan(&spec)
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(
            host.h.link_by_name(&name).unwrap().is_none(),
            "must not appear in the host ns"
        );
        let l = pod.h.link_by_name(&name).unwrap().expect("link in pod ns");
        assert_eq!(l.kind.as_deref(), Some("macvlan"));
        assert_eq!(l.macvlan_mode, Some(mode));
        assert_eq!(l.mac, Some(mac));
        assert_eq!(l.mtu, 1400);
        assert_eq!(l.macvlan_bc_queue_len, Some(321));
        assert_eq!(
            l.parent,
            Some(master),
            "IFLA_LINK names the master's index in the host ns"
        );
        assert!(l.link_netnsid.is_some());
        assert!(!l.up);
    }
}

#[test]
fn macvlan_passthru_allows_only_one_per_master() {
    let (mut host, mut pod) = host_and_pod();
    let master = host.index("m0");
    let mut spec = MacvlanSpec::new("pt0", master);
    spec.mode = MacvlanMode::Passthru;
    spec.target_netns = Some(&pod.ns);
    host.h.create_macvlan(&spec).expect("first passthru");
    let l = pod.h.link_by_name("pt0").unwrap().unwrap();
    assert_eq!(l.macvlan_mode, Some(MacvlanMode::Passthru));
    spec.name = "pt1".into();
    let e = host
        .h
        .create_macvlan(&spec)
        .expect_err("second passthru on the same master");
    assert!(e.is_invalid_argument(), "{e}");
    spec.name = "pt2".into();
    spec.mode = MacvlanMode::Bridge;
    let e = host
        .h
        .create_macvlan(&spec)
        .expect_err("any macvlan on a passthru master");
    assert!(e.is_invalid_argument(), "{e}");
}

#[test]
fn macvlan_default_spec_inherits_master_mtu_and_gets_random_unicast_mac() {
    let (mut host, mut pod) = host_and_pod();
    let master = host.index("m0");
    let mut spec = MacvlanSpec::new("net1", master);
    spec.target_netns = Some(&pod.ns);
    host.h.create_macvlan(&spec).unwrap();
    let l = pod.h.link_by_name("net1").unwrap().unwrap();
    assert_eq!(l.mtu, 1500);
    assert_eq!(l.macvlan_mode, Some(MacvlanMode::Bridge));
    assert_eq!(l.macvlan_bc_queue_len, Some(1000), "kernel default bcqueuelen");
    assert!(l.mac.unwrap().is_unicast());
}

#[test]
fn macvlan_rename_up_mtu_mac_and_down_in_pod_namespace() {
    let (mut host, mut pod) = host_and_pod();
    let master = host.index("m0");
    let mut spec = MacvlanSpec::new("tmp5f3a", master);
    spec.target_netns = Some(&pod.ns);
    host.h.create_macvlan(&spec).unwrap();
    let i = pod.index("tmp5f3a");
    pod.h.rename(i, "lhnet1").expect("rename");
    assert!(pod.h.link_by_name("tmp5f3a").unwrap().is_none());
    let l = pod.h.link_by_name("lhnet1").unwrap().unwrap();
    assert_eq!(l.index, i, "rename keeps the index");
    pod.h.set_mtu(i, 1280).unwrap();
    let mac: MacAddr = "c2:11:22:33:44:55".parse().unwrap();
    pod.h.set_mac(i, mac).unwrap();
    pod.h.set_up(i).unwrap();
    let l = pod.h.link_by_index(i).unwrap().unwrap();
    assert!(l.up);
    assert_eq!(l.mtu, 1280);
    assert_eq!(l.mac, Some(mac));
    assert!(wait_until(Duration::from_secs(2), || pod
        .h
        .link_by_index(i)
        .unwrap()
        .unwrap()
        .oper_up));
    pod.h.set_down(i).unwrap();
    assert!(!pod.h.link_by_index(i).unwrap().unwrap().up);
    let e = pod
        .h
        .set_mac(i, "01:00:5e:00:00:01".parse().unwrap())
        .expect_err("multicast");
    assert!(e.is_invalid_argument());
    pod.h.delete_link(i).unwrap();
    assert!(pod.h.link_by_index(i).unwrap().is_none());
}

#[test]
fn macvlan_duplicate_name_in_target_netns_is_already_exists() {
    let (mut host, pod) = host_and_pod();
    let master = host.index("m0");
    let mut spec = MacvlanSpec::new("net1", master);
    spec.target_netns = Some(&pod.ns);
    host.h.create_macvlan(&spec).unwrap();
    let e = host.h.create_macvlan(&spec).expect_err("duplicate");
    assert!(e.is_exists(), "{e}");
    assert_eq!(e.errno(), Some(libc::EEXIST));
}

#[test]
fn macvlan_missing_master_index_is_not_found() {
    let (mut host, pod) = host_and_pod();
    let mut spec = MacvlanSpec::new("net1", 999_999);
    spec.target_netns = Some(&pod.ns);
    let e = host.h.create_macvlan(&spec).expect_err("no such master");
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains("create macvlan net1"), "{e}");
}

#[test]
fn macvlan_mtu_above_master_is_einval_with_context() {
    let (mut host, pod) = host_and_pod();
    let master = host.index("m0");
    let mut spec = MacvlanSpec::new("net1", master);
    spec.target_netns = Some(&pod.ns);
    spec.mtu = Some(9000);
    let e = host.h.create_macvlan(&spec).expect_err("mtu > master");
    assert!(e.is_invalid_argument(), "{e}");
    assert_eq!(e.errno(), Some(libc::EINVAL));
    assert!(
        matches!(
            e,
            NetdevError::InvalidArgument {
                op: "create macvlan",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn macvlan_rejects_bad_names_and_multicast_mac_before_the_kernel() {
    let (mut host, _pod) = host_and_pod();
    let master = host.index("m0");
    let e = host
        .h
        .create_macvlan(&MacvlanSpec::new("this-name-is-too-long", master))
        .expect_err("long");
    assert!(e.is_invalid_argument() && e.errno().is_none(), "{e}");
    let mut spec = MacvlanSpec::new("net1", master);
    spec.mac = Some("ff:ff:ff:ff:ff:ff".parse().unwrap());
    assert!(
        host.h
            .create_macvlan(&spec)
            .expect_err("broadcast mac")
            .is_invalid_argument()
    );
}

#[test]
fn move_to_netns_moves_a_link() {
    let mut a = TestNs::new();
    let mut b = TestNs::new();
    a.h.create_veth("mv0", "mv1", None).unwrap();
    let i = a.index("mv1");
    a.h.move_to_netns(i, &b.ns).unwrap();
    assert!(a.h.link_by_name("mv1").unwrap().is_none());
    assert!(b.h.link_by_name("mv1").unwrap().is_some());
    // Bridges are netns-local: the kernel refuses, and its extended-ack text is surfaced.
    a.h.create_bridge("brm").unwrap();
    let br = a.index("brm");
    let e =
        a.h.move_to_netns(br, &b.ns)
            .expect_err("bridge is netns-immutable");
    assert!(e.is_invalid_argument(), "{e}");
    assert!(
        e.extack().is_some_and(|m| !m.is_empty()),
        "extended ack expected: {e:?}"
    );
}

#[test]
fn lookups_of_missing_links_return_none_and_missing_index_ops_are_not_found() {
    let mut t = TestNs::new();
    assert!(t.h.link_by_name("nat-nope").unwrap().is_none());
    assert!(t.h.link_by_index(987_654).unwrap().is_none());
    assert!(t.h.link_by_name("way-too-long-interface-name").unwrap().is_none());
    assert!(t.h.set_up(987_654).expect_err("missing").is_not_found());
    assert!(t.h.link_index("nat-nope").expect_err("missing").is_not_found());
}

#[test]
fn addresses_v4_and_v6_are_added_and_read_back_with_flags() {
    let mut t = TestNs::new();
    t.h.create_veth("a0", "a1", None).unwrap();
    let i = t.index("a0");
    let v4: IpNet = "198.18.0.10/24".parse().unwrap();
    let v6: IpNet = "fd00:198:18::10/64".parse().unwrap();
    t.h.add_address(i, v4).unwrap();
    t.h.add_address(i, v6).unwrap();
    let addrs = t.h.addresses(i).unwrap();
    let a4 = addrs.iter().find(|a| a.addr == v4).expect("v4 present");
    assert!(a4.permanent && !a4.tentative && !a4.dadfailed);
    let a6 = addrs.iter().find(|a| a.addr == v6).expect("v6 present");
    assert!(a6.permanent);
    assert!(addrs.iter().all(|a| a.index == i));
    let e = t.h.add_address(i, v4).expect_err("duplicate");
    assert!(e.is_exists(), "{e}");
    // DAD is kept: once both ends are up the v6 address is tentative until DAD completes.
    t.up("a1");
    t.up("a0");
    assert!(wait_until(Duration::from_secs(5), || {
        t.h.addresses(i)
            .unwrap()
            .iter()
            .any(|a| a.addr == v6 && !a.tentative)
    }));
    t.h.delete_address(i, v4).unwrap();
    assert!(!t.h.addresses(i).unwrap().iter().any(|a| a.addr == v4));
    // index 0 lists every link's addresses (lo has 127.0.0.1).
    assert!(
        t.h.addresses(0)
            .unwrap()
            .iter()
            .any(|a| a.addr.addr() == IpAddr::from([127, 0, 0, 1]))
    );
}

#[test]
fn routes_with_gateway_metric_table_and_metrics_read_back_and_delete() {
    let mut t = TestNs::new();
    t.h.create_veth("r0", "r1", None).unwrap();
    let i = t.index("r0");
    t.up("r1");
    t.up("r0");
    t.h.add_address(i, "198.18.1.2/24".parse().unwrap()).unwrap();
    t.h.add_address(i, "fd00:198:18:1::2/64".parse().unwrap())
        .unwrap();

    let gw: IpAddr = "198.18.1.1".parse().unwrap();
    let r = Route {
        dst: "198.18.100.0/24".parse().unwrap(),
        gateway: Some(gw),
        oif: Some(i),
        metric: Some(50),
        mtu: Some(1400),
        advmss: Some(1360),
        ..Default::default()
    };
    t.h.add_route(&r).unwrap();
    assert!(t.h.add_route(&r).expect_err("same route twice").is_exists());
    let other_table = Route {
        dst: "198.18.101.0/24".parse().unwrap(),
        table: Some(1000),
        oif: Some(i),
        ..Default::default()
    };
    t.h.add_route(&other_table).unwrap();
    let v6 = Route {
        dst: "fd00:198:18:99::/64".parse().unwrap(),
        gateway: Some("fd00:198:18:1::1".parse().unwrap()),
        oif: Some(i),
        metric: Some(7),
        ..Default::default()
    };
    t.h.add_route(&v6).unwrap();

    let v4s = t.h.routes(Some(Family::V4)).unwrap();
    let got = v4s.iter().find(|x| x.dst == r.dst).expect("v4 route");
    assert_eq!(got.gateway, Some(gw));
    assert_eq!(got.oif, Some(i));
    assert_eq!(got.metric, Some(50));
    assert_eq!(got.table, Some(254));
    assert_eq!(got.mtu, Some(1400));
    assert_eq!(got.advmss, Some(1360));
    let got = v4s
        .iter()
        .find(|x| x.dst == other_table.dst)
        .expect("table 1000 route");
    assert_eq!(got.table, Some(1000));
    assert_eq!(got.scope, Some(253), "no gateway => link scope");
    // The connected route the kernel made for the address is listed too.
    assert!(
        v4s.iter()
            .any(|x| x.dst == "198.18.1.0/24".parse::<IpNet>().unwrap() && x.oif == Some(i))
    );
    assert!(v4s.iter().all(|x| x.family() == Family::V4));

    let all = t.h.routes(None).unwrap();
    let got6 = all.iter().find(|x| x.dst == v6.dst).expect("v6 route");
    assert_eq!(got6.gateway, v6.gateway);
    assert_eq!(got6.metric, Some(7));

    t.h.delete_route(&r).unwrap();
    assert!(
        !t.h.routes(Some(Family::V4))
            .unwrap()
            .iter()
            .any(|x| x.dst == r.dst)
    );
    assert!(t.h.delete_route(&r).is_err(), "deleting twice fails");
}

#[test]
fn default_route_interface_prefers_v4_then_falls_back_to_v6() {
    let mut t = TestNs::new();
    assert!(
        t.h.default_route_interface().unwrap().is_none(),
        "fresh netns has no default route"
    );
    t.h.create_veth("d4", "d4p", None).unwrap();
    t.h.create_veth("d6", "d6p", None).unwrap();
    for n in ["d4", "d4p", "d6", "d6p"] {
        t.up(n);
    }
    let i4 = t.index("d4");
    let i6 = t.index("d6");
    t.h.add_address(i6, "fd00:198:18:6::2/64".parse().unwrap())
        .unwrap();
    t.h.add_route(&Route {
        dst: "::/0".parse().unwrap(),
        oif: Some(i6),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        t.h.default_route_interface().unwrap().map(|l| l.name),
        Some("d6".to_string())
    );

    t.h.add_address(i4, "198.18.4.2/24".parse().unwrap()).unwrap();
    t.h.add_route(&Route {
        dst: "0.0.0.0/0".parse().unwrap(),
        gateway: Some("198.18.4.1".parse().unwrap()),
        ..Default::default()
    })
    .unwrap();
    let l =
        t.h.default_route_interface()
            .unwrap()
            .expect("default route link");
    assert_eq!(l.name, "d4");
    assert_eq!(l.index, i4);
}

#[test]
fn set_arp_notify_turns_it_on_for_one_link_only() {
    let (mut host, mut pod) = host_and_pod();
    let master = host.index("m0");
    for name in ["net1", "net2"] {
        let mut spec = MacvlanSpec::new(name, master);
        spec.target_netns = Some(&pod.ns);
        host.h.create_macvlan(&spec).unwrap();
    }
    let net1 = pod.h.link_by_name("net1").unwrap().expect("link in pod ns");
    let arp_notify = |name: &str| sysctl::get(&pod.ns, &format!("net/ipv4/conf/{name}/arp_notify")).unwrap();
    assert_eq!(arp_notify("net1"), "0");
    pod.h.set_arp_notify(net1.index).unwrap();
    assert_eq!(arp_notify("net1"), "1");
    assert_eq!(arp_notify("net2"), "0");
    let e = pod.h.set_arp_notify(9999).expect_err("no such link");
    assert!(e.is_not_found(), "{e}");
}
