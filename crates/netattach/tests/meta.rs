//! Integration tests of the `netattach` meta-plugin in local mode (NAD YAML files and pod
//! files instead of the node daemon), in real network namespaces. Needs root: the tests FAIL
//! (they do not skip) otherwise.
//!
//! Topology per test (all inside namespaces the test creates and deletes, also on panic):
//! the support topology's node namespace with the storage master `stor0` (veth to a switch
//! namespace), plus a veth pair `clu0`/`clu0p` in the node namespace as the master of the
//! "cluster network" — netattach's own macvlan + whereabouts (local store), in a temp
//! `confDir` as `10-cluster.conflist` with name `cbr0`. Addresses: cluster 198.19.0.0/24,
//! storage 198.18.4.0/24, other NADs 198.18.5.0/24 and 198.18.6.0/24.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Attachment, Ns, Runner, Topology, assert_error, assert_safe_address};

const CLUSTER_MASTER: &str = "clu0";
const CLUSTER_RANGE: &str = "198.19.0.0/24";
const STORAGE_RANGE: &str = "198.18.4.0/24";
const LONGHORN_ANNOTATION: &str =
    r#"[{"namespace":"longhorn-system","name":"storage","interface":"lhnet1"}]"#;
const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";

/// One test's world: topology, dirs and the meta config.
struct Lab {
    topo: Topology,
    conf_dir: tempfile::TempDir,
    cni_dir: tempfile::TempDir,
    local: tempfile::TempDir,
    multus: tempfile::TempDir,
}

/// A pod: its netns and the runtime's description of its `eth0`.
struct Pod {
    ns: Ns,
    att: Attachment,
}

fn tmp(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
}

impl Lab {
    fn new() -> Lab {
        let topo = Topology::new();
        topo.node.add_veth_pair(CLUSTER_MASTER, "clu0p");
        topo.node.set_up(CLUSTER_MASTER);
        topo.node.set_up("clu0p");
        let lab = Lab {
            topo,
            conf_dir: tmp("netattach-meta-conf-"),
            cni_dir: tmp("netattach-meta-state-"),
            local: tmp("netattach-meta-local-"),
            multus: tmp("netattach-meta-multus-"),
        };
        let cluster = json!({
            "cniVersion": "1.1.0",
            "name": "cbr0",
            "plugins": [{"type": "macvlan", "master": CLUSTER_MASTER, "mode": "bridge",
                         "ipam": lab.topo.ipam(CLUSTER_RANGE)}],
        });
        std::fs::write(
            lab.conf_dir.path().join("10-cluster.conflist"),
            cluster.to_string(),
        )
        .expect("write conflist");
        // Longhorn's storage NAD, as a user would `kubectl apply` it.
        lab.nad("longhorn-system", "storage", "stor0", STORAGE_RANGE);
        lab
    }

    fn ipam(&self, range: &str) -> Value {
        self.topo.ipam(range)
    }

    /// Writes a macvlan + whereabouts NAD as YAML into `<local>/nads/`.
    fn nad(&self, ns: &str, name: &str, master: &str, range: &str) {
        let config = json!({"cniVersion": "1.1.0", "type": "macvlan", "master": master, "mode": "bridge",
                            "ipam": self.ipam(range)});
        self.nad_raw(ns, name, &config.to_string());
    }

    fn nad_raw(&self, ns: &str, name: &str, config: &str) {
        let dir = self.local.path().join("nads");
        std::fs::create_dir_all(&dir).expect("nads dir");
        let yaml = format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  config: '{config}'\n"
        );
        std::fs::write(dir.join(format!("{ns}-{name}.yaml")), yaml).expect("write nad");
    }

    fn meta_conf(&self) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "netattach-network",
            "type": "netattach",
            "confDir": self.conf_dir.path(),
            "cniDir": self.cni_dir.path(),
            "binDir": support::bin_dir(),
            "localSource": self.local.path(),
            "multusCacheDir": self.multus.path(),
        })
    }

    fn meta(&self) -> Runner {
        Runner::new("netattach", self.topo.node.path())
    }

    /// A pod `ns/name` with `annotation` as its networks annotation (none when `None`).
    fn pod(&self, ns: &str, name: &str, annotation: Option<&str>) -> Pod {
        let netns = Ns::new();
        let uid = format!("uid-{name}");
        let mut annotations = BTreeMap::new();
        if let Some(a) = annotation {
            annotations.insert(NETWORKS.to_string(), a.to_string());
        }
        let dir = self.local.path().join("pods").join(ns);
        std::fs::create_dir_all(&dir).expect("pods dir");
        let pod = json!({"namespace": ns, "name": name, "uid": uid, "annotations": annotations});
        std::fs::write(dir.join(format!("{name}.json")), pod.to_string()).expect("write pod");
        let mut att = Attachment::new(netns.path(), name);
        att.ifname = "eth0".into();
        att.pod_namespace = Some(ns.into());
        att.extra_args = vec![
            ("K8S_POD_UID".into(), uid),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), att.container_id.clone()),
        ];
        Pod { ns: netns, att }
    }

    fn status_of(&self, ns: &str, name: &str) -> Vec<Value> {
        let path = self
            .local
            .path()
            .join("pods")
            .join(ns)
            .join(format!("{name}.status.json"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).expect("status is a JSON list")
    }

    fn record(&self, cid: &str) -> PathBuf {
        self.cni_dir.path().join(format!("{cid}.json"))
    }

    /// Nothing of `pod` is left: no links in its netns, no record, no allocation at all.
    #[track_caller]
    fn assert_clean(&self, pod: &Pod) {
        if pod.ns.exists() {
            assert!(
                pod.ns.link_names().is_empty(),
                "links left: {:?}",
                pod.ns.link_names()
            );
        }
        assert!(!self.record(&pod.att.container_id).exists(), "record left behind");
        assert!(
            self.topo.allocations().is_empty(),
            "allocations left: {:?}",
            self.topo.allocations()
        );
        let mut node = self.topo.node.link_names();
        node.sort();
        assert_eq!(
            node,
            vec!["clu0", "clu0p", "stor0"],
            "unexpected links in the node namespace"
        );
    }
}

/// Longhorn's `GetIPFromPodByCNISetting`: the entry named exactly `setting`, ips string-sorted,
/// the first one.
fn longhorn_storage_ip(status: &[Value], setting: &str) -> Option<String> {
    let entry = status.iter().find(|e| e["name"] == setting)?;
    let mut ips: Vec<String> = entry["ips"]
        .as_array()?
        .iter()
        .filter_map(|i| i.as_str().map(str::to_string))
        .collect();
    ips.sort();
    ips.into_iter().next()
}

fn in_range(ip: &str, prefix: &str) -> bool {
    ip.starts_with(prefix)
}

#[test]
fn longhorn_pod_gets_eth0_and_lhnet1_and_a_status_longhorn_can_read() {
    let lab = Lab::new();
    let pod = lab.pod("longhorn-system", "instance-manager-1", Some(LONGHORN_ANNOTATION));
    let conf = lab.meta_conf();
    let result = lab.meta().add(&pod.att, &conf).expect("ADD");

    // The result is the cluster network's, in the requested version.
    assert_eq!(result["cniVersion"], "1.1.0");
    let addrs = support::result_addresses(&result);
    assert_eq!(addrs.len(), 1, "{result}");
    assert!(in_range(&addrs[0], "198.19.0."), "{addrs:?}");

    assert_eq!(pod.ns.link_names(), vec!["eth0", "lhnet1"]);
    let eth0 = pod.ns.address_strings("eth0");
    let lhnet1 = pod.ns.address_strings("lhnet1");
    assert_eq!(eth0, addrs);
    assert_eq!(lhnet1.len(), 1);
    assert!(in_range(&lhnet1[0], "198.18.4."), "{lhnet1:?}");

    let status = lab.status_of("longhorn-system", "instance-manager-1");
    assert_eq!(status.len(), 2, "{status:?}");
    assert_eq!(status[0]["name"], "cbr0");
    assert_eq!(status[0]["interface"], "eth0");
    assert_eq!(status[0]["default"], true);
    assert_eq!(status[1]["name"], "longhorn-system/storage");
    assert_eq!(status[1]["interface"], "lhnet1");
    assert!(
        status[1].get("default").is_none(),
        "default only on the cluster network"
    );
    let bare = lhnet1[0].split('/').next().expect("addr");
    assert_eq!(status[1]["ips"], json!([bare]), "bare IPs, no prefix");
    let mac = pod.ns.expect_link("lhnet1").mac.expect("mac").to_string();
    assert_eq!(
        status[1]["mac"].as_str().map(str::to_ascii_lowercase),
        Some(mac.to_ascii_lowercase())
    );
    assert!(
        status.iter().all(|s| s.get("dns").is_some()),
        "dns always present"
    );
    assert_eq!(
        longhorn_storage_ip(&status, "longhorn-system/storage").as_deref(),
        Some(bare),
        "Longhorn must find the lhnet1 address"
    );

    // The record exists while attached, and DEL is idempotent.
    assert!(lab.record(&pod.att.container_id).exists());
    assert_eq!(lab.topo.allocations().len(), 2);
    lab.meta().del(&pod.att, &conf).expect("DEL");
    lab.assert_clean(&pod);
    lab.meta().del(&pod.att, &conf).expect("second DEL");
    lab.assert_clean(&pod);
}

/// Delegates whose binary is this netattach (the install's hard links) run in-process;
/// another file under the same name (here a copy of the very same program) is executed. The
/// pod ends up the same either way. `logLevel` and `logFile` make the shim say which it did,
/// in a plain-text file copy of its stderr.
#[test]
fn delegates_of_this_binary_run_in_process_and_others_are_executed_alike() {
    let lab = Lab::new();
    let copies = tmp("netattach-meta-copy-");
    std::fs::copy(env!("CARGO_BIN_EXE_netattach"), copies.path().join("macvlan")).expect("copy macvlan");
    let mut outcomes = Vec::new();
    for (case, bin_dir) in [("hard links", support::bin_dir()), ("a copy", copies.path())] {
        let log = lab.local.path().join(format!("meta-{}.log", outcomes.len()));
        let mut conf = lab.meta_conf();
        conf["binDir"] = json!(bin_dir);
        conf["logLevel"] = json!("debug");
        conf["logFile"] = json!(log);
        let pod = lab.pod("longhorn-system", "instance-manager-1", Some(LONGHORN_ANNOTATION));
        let out = lab.meta().invoke("ADD", &pod.att, &conf);
        assert!(out.success(), "{case}: {out:?}");
        assert_eq!(pod.ns.link_names(), vec!["eth0", "lhnet1"], "{case}");
        let status = lab.status_of("longhorn-system", "instance-manager-1");
        let ip = longhorn_storage_ip(&status, "longhorn-system/storage").expect("storage ip");
        assert!(in_range(&ip, "198.18.4."), "{case}: {ip}");
        outcomes.push((status.len(), out.json()["interfaces"][0]["name"].clone()));

        let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{case}: log file: {e}"));
        let in_process = text.matches("running delegate plugin in-process").count();
        let executed = text.matches("running delegate plugin command").count();
        match case {
            "hard links" => assert_eq!((in_process, executed), (2, 0), "{case}: {text}"),
            _ => assert_eq!((in_process, executed), (0, 2), "{case}: {text}"),
        }
        assert!(
            !text.contains('\u{1b}'),
            "{case}: ANSI escapes in the log file: {text:?}"
        );
        assert!(
            out.stderr.contains("running delegate plugin"),
            "{case}: stderr keeps the logs"
        );

        lab.meta().del(&pod.att, &conf).expect("DEL");
        lab.assert_clean(&pod);
    }
    assert_eq!(outcomes[0], outcomes[1], "the same pod either way");
}

/// `default-route` as Multus applies it: the cluster network (whose IPAM gives it a default
/// route) loses its IPv4 default route, the asking attachment gets one via the requested
/// gateway, and the results — the ADD's own, the record, the network-status `gateway` — say
/// so. A pod without the key keeps the cluster network's default route.
#[test]
fn default_route_moves_the_default_route_to_the_asking_interface() {
    let lab = Lab::new();
    // The cluster network hands out a default route via 198.19.0.254.
    let mut cluster_ipam = lab.ipam(CLUSTER_RANGE);
    cluster_ipam["gateway"] = json!("198.19.0.254");
    cluster_ipam["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    let cluster = json!({
        "cniVersion": "1.1.0",
        "name": "cbr0",
        "plugins": [{"type": "macvlan", "master": CLUSTER_MASTER, "mode": "bridge", "ipam": cluster_ipam}],
    });
    std::fs::write(
        lab.conf_dir.path().join("10-cluster.conflist"),
        cluster.to_string(),
    )
    .expect("conflist");
    lab.nad("default", "a", "stor0", "198.18.5.0/24");
    lab.nad("default", "b", "stor0", "198.18.6.0/24");
    let conf = lab.meta_conf();
    let defaults = |pod: &Pod| -> Vec<(String, Option<std::net::IpAddr>)> {
        let names: BTreeMap<u32, String> = pod
            .ns
            .link_names()
            .into_iter()
            .map(|n| (pod.ns.expect_link(&n).index, n))
            .collect();
        pod.ns
            .routes()
            .into_iter()
            .filter(|r| r.dst.prefix_len() == 0 && r.table == Some(254))
            .map(|r| {
                (
                    r.oif.and_then(|i| names.get(&i).cloned()).unwrap_or_default(),
                    r.gateway,
                )
            })
            .collect()
    };

    let plain = lab.pod("default", "plain", Some("a"));
    lab.meta()
        .add(&plain.att, &conf)
        .expect("ADD without default-route");
    assert_eq!(
        defaults(&plain),
        vec![("eth0".to_string(), Some("198.19.0.254".parse().expect("ip")))]
    );

    let asking = r#"[{"name":"a"},{"name":"b","default-route":["198.18.6.254"]}]"#;
    let pod = lab.pod("default", "routed", Some(asking));
    let result = lab.meta().add(&pod.att, &conf).expect("ADD with default-route");
    assert_eq!(
        defaults(&pod),
        vec![("net2".to_string(), Some("198.18.6.254".parse().expect("ip")))],
        "only net2 carries the default route"
    );
    let result_defaults: Vec<&Value> = result["routes"]
        .as_array()
        .map(|r| r.iter().filter(|r| r["dst"] == "0.0.0.0/0").collect())
        .unwrap_or_default();
    assert!(
        result_defaults.is_empty(),
        "the cluster network's result lost its default route: {result}"
    );
    let status = lab.status_of("default", "routed");
    let gateways: Vec<(&str, &Value)> = status
        .iter()
        .map(|s| (s["interface"].as_str().unwrap_or(""), &s["gateway"]))
        .collect();
    assert_eq!(
        gateways
            .iter()
            .find(|(i, _)| *i == "net2")
            .map(|(_, g)| (*g).clone()),
        Some(json!(["198.18.6.254"])),
        "{status:?}"
    );
    assert!(
        gateways
            .iter()
            .filter(|(i, _)| *i != "net2")
            .all(|(_, g)| g.is_null() || **g == json!([])),
        "no other interface names a gateway: {status:?}"
    );
    // CHECK compares the pod with the patched results.
    assert!(lab.meta().invoke("CHECK", &pod.att, &conf).success());

    lab.meta().del(&plain.att, &conf).expect("DEL");
    lab.meta().del(&pod.att, &conf).expect("DEL");
    lab.assert_clean(&plain);
    lab.assert_clean(&pod);
}

#[test]
fn comma_form_named_attachment_uses_up_its_index() {
    let lab = Lab::new();
    lab.nad("default", "a", "stor0", "198.18.5.0/24");
    lab.nad("default", "b", "stor0", "198.18.6.0/24");
    let pod = lab.pod("default", "web", Some("a@foo, b"));
    let conf = lab.meta_conf();
    lab.meta().add(&pod.att, &conf).expect("ADD");
    assert_eq!(pod.ns.link_names(), vec!["eth0", "foo", "net2"]);
    assert!(in_range(&pod.ns.address_strings("foo")[0], "198.18.5."));
    assert!(in_range(&pod.ns.address_strings("net2")[0], "198.18.6."));
    let status = lab.status_of("default", "web");
    let names: Vec<(&str, &str)> = status
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or(""),
                s["interface"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![("cbr0", "eth0"), ("default/a", "foo"), ("default/b", "net2")]
    );
    lab.meta().del(&pod.att, &conf).expect("DEL");
    lab.assert_clean(&pod);
}

#[test]
fn a_failing_second_network_leaves_nothing_behind() {
    let lab = Lab::new();
    lab.nad("default", "good", "stor0", "198.18.5.0/24");
    lab.nad("default", "bad", "nosuch0", "198.18.6.0/24");
    let pod = lab.pod("default", "web", Some("good, bad"));
    let err = lab
        .meta()
        .add(&pod.att, &lab.meta_conf())
        .expect_err("bad master");
    assert!(err.details.contains("`default/bad`"), "{err:?}");
    assert!(err.details.contains("`net2`"), "{err:?}");
    assert!(err.details.contains("nosuch0"), "{err:?}");
    assert_ne!(err.code, 0);
    lab.assert_clean(&pod);
    assert!(!lab.local.path().join("pods/default/web.status.json").exists());
}

#[test]
fn bad_annotations_are_clear_errors_and_leave_nothing() {
    let lab = Lab::new();
    lab.nad("default", "good", "stor0", "198.18.5.0/24");
    lab.nad("other", "foreign", "stor0", "198.18.6.0/24");
    let cases: [(&str, bool, &[&str]); 4] = [
        ("good, missing", false, &["default/missing", "not found"]),
        (r#"[{"name":"good""#, false, &[NETWORKS]),
        (
            "good@this-name-is-far-too-long",
            false,
            &["this-name-is-far-too-long"],
        ),
        ("other/foreign", true, &["namespaceIsolation", "other/foreign"]),
    ];
    for (i, (annotation, isolation, needles)) in cases.into_iter().enumerate() {
        let pod = lab.pod("default", &format!("bad{i}"), Some(annotation));
        let mut conf = lab.meta_conf();
        conf["namespaceIsolation"] = json!(isolation);
        let err = lab.meta().add(&pod.att, &conf).expect_err(annotation);
        assert_error(&err, 7, needles);
        assert!(err.details.contains("fix"), "{err:?}");
        lab.assert_clean(&pod);
    }
}

#[test]
fn del_with_the_netns_gone_still_releases_the_addresses() {
    let lab = Lab::new();
    let mut pod = lab.pod("longhorn-system", "im-gone", Some(LONGHORN_ANNOTATION));
    let conf = lab.meta_conf();
    lab.meta().add(&pod.att, &conf).expect("ADD");
    assert_eq!(lab.topo.allocations().len(), 2);
    pod.ns.delete();
    lab.meta().del(&pod.att, &conf).expect("DEL without netns");
    lab.assert_clean(&pod);
    lab.meta().del(&pod.att, &conf).expect("DEL again");
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn del_from_a_legacy_multus_cache_removes_links_and_addresses() {
    let lab = Lab::new();
    let pod = lab.pod("longhorn-system", "im-multus", Some(LONGHORN_ANNOTATION));
    // What Multus would have done: the cluster network on eth0, the storage NAD on lhnet1,
    // each run directly with the plugins.
    let macvlan = lab.topo.macvlan();
    let cluster = json!({"cniVersion": "1.1.0", "name": "cbr0", "type": "macvlan", "master": CLUSTER_MASTER,
                         "mode": "bridge", "ipam": lab.ipam(CLUSTER_RANGE)});
    let storage = json!({"cniVersion": "0.3.1", "name": "storage", "type": "macvlan", "master": "stor0",
                         "mode": "bridge", "ipam": lab.ipam(STORAGE_RANGE)});
    macvlan.add(&pod.att, &cluster).expect("cluster ADD");
    let mut lh = pod.att.clone();
    lh.ifname = "lhnet1".into();
    macvlan.add(&lh, &storage).expect("storage ADD");
    assert_eq!(pod.ns.link_names(), vec!["eth0", "lhnet1"]);
    assert_eq!(lab.topo.allocations().len(), 2);

    // The scratch cache as Multus writes it (format of crates/cluster/tests/fixtures).
    let cluster_list = json!({"cniVersion": "1.1.0", "name": "cbr0", "plugins": [
        {"type": "macvlan", "master": CLUSTER_MASTER, "mode": "bridge", "ipam": lab.ipam(CLUSTER_RANGE)}]});
    let cache = json!([
        {"Conf": {"cniVersion": "1.1.0", "name": "cbr0", "ipam": {}, "dns": {}},
         "ConfList": {"cniVersion": "1.1.0", "name": "cbr0", "plugins": [{"type": "macvlan", "ipam": {}, "dns": {}}]},
         "Name": "", "IsFilterV4Gateway": false, "IsFilterV6Gateway": false,
         "Bytes": base64(cluster_list.to_string().as_bytes())},
        {"Conf": {"cniVersion": "0.3.1", "name": "storage", "type": "macvlan", "ipam": {"type": "whereabouts"}, "dns": {}},
         "ConfList": {}, "Name": "longhorn-system/storage", "ifnameRequest": "lhnet1",
         "IsFilterV4Gateway": false, "IsFilterV6Gateway": false,
         "Bytes": base64(storage.to_string().as_bytes())},
    ]);
    let cache_file = lab.multus.path().join(&pod.att.container_id);
    std::fs::write(&cache_file, cache.to_string()).expect("write Multus cache");

    lab.meta()
        .del(&pod.att, &lab.meta_conf())
        .expect("DEL from the Multus cache");
    lab.assert_clean(&pod);
    assert!(
        !cache_file.exists(),
        "the Multus cache is removed after a successful DEL"
    );
    lab.meta().del(&pod.att, &lab.meta_conf()).expect("DEL again");
}

#[test]
fn check_covers_the_secondary_interface() {
    let lab = Lab::new();
    let pod = lab.pod("longhorn-system", "im-check", Some(LONGHORN_ANNOTATION));
    let conf = lab.meta_conf();
    let result = lab.meta().add(&pod.att, &conf).expect("ADD");
    lab.meta()
        .check(&pod.att, &conf, &result)
        .expect("CHECK right after ADD");
    let lhnet1 = pod.ns.address_strings("lhnet1");
    {
        let mut h = pod.ns.handle();
        let idx = h.link_index("lhnet1").expect("lhnet1");
        let addr = lhnet1[0].parse().expect("cidr");
        h.delete_address(idx, addr).expect("remove the address");
    }
    let err = lab.meta().check(&pod.att, &conf, &result).expect_err("drift");
    assert_error(&err, 106, &["longhorn-system/storage", "lhnet1"]);
    lab.meta().del(&pod.att, &conf).expect("DEL");
    lab.assert_clean(&pod);
}

#[test]
fn gc_removes_stale_records_and_keeps_live_secondary_addresses() {
    let lab = Lab::new();
    let stale = lab.pod("longhorn-system", "im-stale", Some(LONGHORN_ANNOTATION));
    let live = lab.pod("longhorn-system", "im-live", Some(LONGHORN_ANNOTATION));
    let conf = lab.meta_conf();
    lab.meta().add(&stale.att, &conf).expect("ADD stale");
    lab.meta().add(&live.att, &conf).expect("ADD live");
    assert_eq!(lab.topo.allocations().len(), 4);

    lab.meta()
        .gc(&conf, &[(live.att.container_id.as_str(), "eth0")])
        .expect("GC");
    assert!(stale.ns.link_names().is_empty(), "{:?}", stale.ns.link_names());
    assert!(!lab.record(&stale.att.container_id).exists());
    assert!(lab.record(&live.att.container_id).exists());
    let owners: Vec<String> = lab.topo.allocations().iter().map(|a| format!("{a:?}")).collect();
    assert_eq!(owners.len(), 2, "the live pod keeps eth0 AND lhnet1: {owners:?}");
    assert!(
        owners.iter().all(|o| o.contains(&live.att.container_id)),
        "{owners:?}"
    );
    assert_eq!(live.ns.link_names(), vec!["eth0", "lhnet1"]);

    lab.meta().del(&live.att, &conf).expect("DEL live");
    lab.assert_clean(&live);
}

#[test]
fn without_pod_args_only_the_cluster_network_runs() {
    let lab = Lab::new();
    let ns = Ns::new();
    let mut att = Attachment::without_pod(ns.path());
    att.ifname = "eth0".into();
    let conf = lab.meta_conf();
    lab.meta().add(&att, &conf).expect("ADD");
    assert_eq!(ns.link_names(), vec!["eth0"]);
    lab.meta().del(&att, &conf).expect("DEL");
    assert!(ns.link_names().is_empty());
    assert!(lab.topo.allocations().is_empty());

    // Only one of the two K8S args is an environment error.
    att.pod_namespace = Some("default".into());
    let err = lab.meta().add(&att, &conf).expect_err("half a pod");
    assert_error(&err, 4, &["K8S_POD_NAME"]);
}

#[test]
fn unknown_pod_and_missing_readiness_file_are_retryable() {
    let lab = Lab::new();
    let pod = lab.pod("default", "web", None);
    std::fs::remove_file(lab.local.path().join("pods/default/web.json")).expect("rm pod");
    let err = lab
        .meta()
        .add(&pod.att, &lab.meta_conf())
        .expect_err("unknown pod");
    assert_error(&err, 11, &["default/web"]);
    lab.assert_clean(&pod);

    let pod = lab.pod("default", "web2", None);
    let ready = lab.local.path().join("ready");
    let mut conf = lab.meta_conf();
    conf["readinessindicatorfile"] = json!(ready);
    conf["readinessTimeoutSeconds"] = json!(0.3);
    let err = lab.meta().add(&pod.att, &conf).expect_err("not ready");
    assert_error(&err, 11, &["readinessindicatorfile"]);
    lab.assert_clean(&pod);
    std::fs::write(&ready, "").expect("ready");
    lab.meta().add(&pod.att, &conf).expect("ADD once ready");
    lab.meta().del(&pod.att, &conf).expect("DEL");
    lab.assert_clean(&pod);
}

#[test]
fn config_errors_and_status() {
    let lab = Lab::new();
    let pod = lab.pod("default", "web", None);
    let mut conf = lab.meta_conf();
    conf["clusterNetwrok"] = json!("cbr0");
    let err = lab.meta().add(&pod.att, &conf).expect_err("typo");
    assert_error(&err, 7, &["clusterNetwrok", "clusterNetwork"]);
    lab.meta()
        .status(&lab.meta_conf())
        .expect("STATUS forwards to the cluster network");
    let mut k8s = lab.meta_conf();
    k8s.as_object_mut().expect("obj").remove("localSource");
    k8s["daemonSocket"] = json!(lab.local.path().join("no-daemon.sock"));
    let err = lab.meta().status(&k8s).expect_err("no daemon");
    assert_eq!(err.code, 50, "{err:?}");
    lab.assert_clean(&pod);
}

#[test]
fn kubernetes_mode_without_a_daemon_is_retryable_and_bounded() {
    let lab = Lab::new();
    let pod = lab.pod("longhorn-system", "im-k8s", Some(LONGHORN_ANNOTATION));
    let socket = lab.local.path().join("daemon.sock");
    let mut conf = lab.meta_conf();
    conf.as_object_mut().expect("obj").remove("localSource");
    conf["daemonSocket"] = json!(socket);
    conf["daemonTimeoutSeconds"] = json!(0.5);
    let started = Instant::now();
    let err = lab.meta().add(&pod.att, &conf).expect_err("no daemon");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_error(&err, 11, &[socket.to_str().expect("utf8"), "fix"]);
    lab.assert_clean(&pod);
}

/// A stand-in for the node daemon: answers `resolve` from `pods` and the lab's NAD, records
/// `publish_status`.
fn fake_daemon(
    socket: &Path,
    pods: Vec<Value>,
    nads: Vec<Value>,
    connections: usize,
) -> std::thread::JoinHandle<Vec<Value>> {
    let listener = UnixListener::bind(socket).expect("bind fake daemon");
    std::thread::spawn(move || {
        let mut published = Vec::new();
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { break };
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).is_err() {
                continue;
            }
            let req: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            let resp = match req["op"].as_str() {
                Some("resolve") => {
                    let pod = pods
                        .iter()
                        .find(|p| p["namespace"] == req["namespace"] && p["name"] == req["name"])
                        .cloned()
                        .unwrap_or(Value::Null);
                    json!({"result": "resolved", "pod": pod, "nads": nads, "missing": []})
                }
                Some("publish_status") => {
                    published.push(req.clone());
                    json!({"result": "ok"})
                }
                Some("ready") => json!({"result": "ok"}),
                _ => json!({"result": "error", "code": 7, "message": "bad request"}),
            };
            let _ = writeln!(stream, "{resp}");
        }
        published
    })
}

#[test]
fn kubernetes_mode_resolves_through_the_daemon_and_publishes_status() {
    let lab = Lab::new();
    let socket = lab.local.path().join("daemon.sock");
    let pod = lab.pod("longhorn-system", "im-d", Some(LONGHORN_ANNOTATION));
    let pod_json: Value = serde_json::from_slice(
        &std::fs::read(lab.local.path().join("pods/longhorn-system/im-d.json")).expect("pod"),
    )
    .expect("json");
    let storage = json!({"cniVersion": "1.1.0", "type": "macvlan", "master": "stor0", "mode": "bridge",
                         "ipam": lab.ipam(STORAGE_RANGE)});
    let nads = vec![
        json!({"namespace": "longhorn-system", "name": "storage", "config": storage.to_string(),
                           "resource_name": null}),
    ];
    // resolve + publish_status for the first pod; resolve (unknown) for the second.
    let daemon = fake_daemon(&socket, vec![pod_json], nads, 3);
    let mut conf = lab.meta_conf();
    conf.as_object_mut().expect("obj").remove("localSource");
    conf["daemonSocket"] = json!(socket);
    conf["daemonTimeoutSeconds"] = json!(0.5);
    lab.meta().add(&pod.att, &conf).expect("ADD through the daemon");
    assert_eq!(pod.ns.link_names(), vec!["eth0", "lhnet1"]);

    let unknown = lab.pod("longhorn-system", "not-cached", None);
    let err = lab
        .meta()
        .add(&unknown.att, &conf)
        .expect_err("pod not in the cache");
    assert_error(&err, 11, &["longhorn-system/not-cached", "cache"]);

    let published = daemon.join().expect("daemon thread");
    assert_eq!(published.len(), 1, "{published:?}");
    let status = published[0]["status"].as_array().expect("status list");
    assert_eq!(status[1]["name"], "longhorn-system/storage");
    assert_eq!(status[1]["interface"], "lhnet1");
    assert_eq!(published[0]["uid"], "uid-im-d");

    // DEL needs no daemon.
    lab.meta().del(&pod.att, &conf).expect("DEL with the daemon gone");
    lab.assert_clean(&pod);
    lab.assert_clean(&unknown);
}

#[test]
fn test_addresses_are_safe() {
    for r in [CLUSTER_RANGE, STORAGE_RANGE, "198.18.5.0/24", "198.18.6.0/24"] {
        assert_safe_address(r);
    }
}
