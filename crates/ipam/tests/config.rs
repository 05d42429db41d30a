//! Unit tests of the whereabouts config: parsing, strict keys, flat-file merge.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;

use netattach_ipam::{ConfigError, Datastore, ErrorKind, FlatFileSearch, IpamConfig};
use serde_json::{Value, json};

fn netconf(ipam: Value) -> Value {
    json!({"cniVersion": "0.3.1", "name": "storage-net", "type": "macvlan", "master": "eth1", "ipam": ipam})
}

fn parse(ipam: Value) -> Result<IpamConfig, ConfigError> {
    IpamConfig::from_netconf_with(&netconf(ipam), &FlatFileSearch::none())
}

fn parse_err(ipam: Value) -> ConfigError {
    parse(ipam).unwrap_err()
}

#[test]
fn longhorn_nad() {
    let c = parse(json!({"type": "whereabouts", "range": "192.168.4.0/24"})).unwrap();
    assert_eq!(c.name.as_deref(), Some("storage-net"));
    assert_eq!(c.network_name, None);
    assert_eq!(c.ranges.len(), 1);
    assert_eq!(c.ranges[0].cidr.to_string(), "192.168.4.0/24");
    assert!(c.enable_overlapping_ranges);
    assert_eq!(c.datastore, Datastore::Kubernetes);
    assert_eq!(c.flat_file, None);
}

#[test]
fn full_config() {
    let c = parse(json!({
        "type": "whereabouts",
        "range": "192.168.2.225-192.168.2.230/28",
        "exclude": ["192.168.2.229/32"],
        "gateway": "192.168.2.226",
        "ipRanges": [{"range": "fd00::/64", "range_start": "fd00::10", "range_end": "fd00::20", "exclude": ["fd00::15"]}],
        "routes": [{"dst": "10.0.0.0/8", "gw": "192.168.2.226"}, {"dst": "fd10::/64"}],
        "dns": {"nameservers": ["1.1.1.1"], "domain": "x.local", "search": ["x.local"], "options": ["ndots:2"]},
        "addresses": [{"address": "10.9.9.9/24", "gateway": "10.9.9.1"}],
        "enable_overlapping_ranges": false,
        "network_name": "storage",
        "kubernetes": {"kubeconfig": "/etc/kc", "k8s_api_root": "https://x"},
        "configuration_path": "/nonexistent/whereabouts.conf",
        "log_file": "/tmp/w.log",
        "log_level": "debug",
        "leader_lease_duration": 1500, "leader_renew_deadline": 1000, "leader_retry_period": 500,
        "sleep_for_race": 0, "reconciler_cron_expression": "30 4 * * *",
        "etcd_host": "x", "node_slice_size": ""
    }))
    .unwrap();
    assert_eq!(c.ranges.len(), 2);
    assert_eq!(c.ranges[0].cidr.to_string(), "192.168.2.224/28");
    assert_eq!(c.ranges[0].gateway, Some("192.168.2.226".parse().unwrap()));
    assert_eq!(c.ranges[0].capacity(), 6 - 2);
    assert_eq!(c.ranges[1].cidr.to_string(), "fd00::/64");
    assert_eq!(c.ranges[1].capacity(), 16);
    assert_eq!(c.ranges[1].gateway, None);
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[1].gw, None);
    assert_eq!(c.dns.as_ref().unwrap().nameservers, vec!["1.1.1.1"]);
    assert_eq!(c.addresses[0].address.to_string(), "10.9.9.9/24");
    assert!(!c.enable_overlapping_ranges);
    assert_eq!(c.network_name.as_deref(), Some("storage"));
    assert_eq!(c.kubeconfig, Some(PathBuf::from("/etc/kc")));
    assert_eq!(c.log_level.as_deref(), Some("debug"));
    assert!(c.ignored_keys.contains(&"leader_lease_duration".to_string()));
    assert!(c.ignored_keys.contains(&"etcd_host".to_string()));
}

#[test]
fn ipranges_only_and_gateway_attaches_to_containing_range() {
    let c = parse(json!({"type": "whereabouts", "gateway": "fd00::1",
        "ipRanges": [{"range": "10.1.0.0/24"}, {"range": "fd00::/64"}]}))
    .unwrap();
    assert_eq!(c.ranges[0].gateway, None);
    assert_eq!(c.ranges[1].gateway, Some("fd00::1".parse().unwrap()));
    let e = parse_err(
        json!({"type": "whereabouts", "gateway": "10.2.0.1", "ipRanges": [{"range": "10.1.0.0/24"}]}),
    );
    assert!(
        e.to_string()
            .contains("field `ipam.gateway`: value `10.2.0.1` is outside every range"),
        "{e}"
    );
}

#[test]
fn errors_name_the_path() {
    let e = parse_err(json!({"type": "whereabouts", "range": "192.168.4.0/33"}));
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(
        e.to_string()
            .starts_with("field `ipam.range`: value `192.168.4.0/33` is not a CIDR"),
        "{e}"
    );
    let e = parse_err(
        json!({"type": "whereabouts", "ipRanges": [{"range": "10.0.0.0/24"}, {"range": "10.1.0.0/24", "range_end": "10.2.0.1"}]}),
    );
    assert!(
        e.to_string()
            .starts_with("field `ipam.ipRanges[1].range_end`: value `10.2.0.1`"),
        "{e}"
    );
    let e = parse_err(json!({"type": "whereabouts", "ipRanges": [{"range_start": "10.0.0.1"}]}));
    assert!(
        e.to_string()
            .starts_with("field `ipam.ipRanges[0].range`: is missing"),
        "{e}"
    );
    let e = parse_err(json!({"type": "whereabouts", "range": 5}));
    assert!(e.to_string().contains("is a number, not a string"), "{e}");
    let e = parse_err(json!({"type": "whereabouts"}));
    assert!(e.to_string().contains("field `ipam.range`: is missing"), "{e}");
    let e = parse_err(json!({"type": "host-local", "range": "10.0.0.0/24"}));
    assert!(
        e.to_string().contains("field `ipam.type`: value `host-local`"),
        "{e}"
    );
    let e = IpamConfig::from_netconf_with(&json!({"name": "x"}), &FlatFileSearch::none()).unwrap_err();
    assert!(e.to_string().contains("field `ipam`: is missing"), "{e}");
    let e = parse_err(
        json!({"type": "whereabouts", "exclude": ["10.0.0.1"], "ipRanges": [{"range": "10.0.0.0/24"}]}),
    );
    assert!(
        e.to_string().contains("field `ipam.exclude`") && e.to_string().contains("top-level `range`"),
        "{e}"
    );
    let e = parse_err(json!({"type": "whereabouts", "range": "10.0.0.0/24", "network_name": "Storage_Net"}));
    assert!(e.to_string().contains("field `ipam.network_name`"), "{e}");
    let e = parse_err(
        json!({"type": "whereabouts", "range": "10.0.0.0/24", "routes": [{"dst": "10.0.0.0/8", "gw": "fd00::1"}]}),
    );
    assert!(e.to_string().contains("field `ipam.routes[0].gw`"), "{e}");
    let e = parse_err(
        json!({"type": "whereabouts", "range": "10.0.0.0/24", "addresses": [{"address": "10.0.0.5"}]}),
    );
    assert!(
        e.to_string()
            .contains("field `ipam.addresses[0].address`: value `10.0.0.5`"),
        "{e}"
    );
}

fn unknown(ipam: Value, path: &str, key: &str, suggestion: &str) {
    let e = parse_err(ipam).to_string();
    let want = format!(
        "field `{path}`: unknown key `{key}`; did you mean `{suggestion}`? (whereabouts ignores unknown keys \
         silently; netattach refuses them so a typo cannot go unnoticed); fix: rename `{key}` to `{suggestion}`"
    );
    assert_eq!(e, want);
}

#[test]
fn unknown_keys_with_suggestions() {
    let base = |k: &str, v: Value| {
        let mut m = json!({"type": "whereabouts", "range": "192.168.4.0/24"});
        m.as_object_mut().unwrap().insert(k.into(), v);
        m
    };
    unknown(
        base("rangeStart", json!("192.168.4.10")),
        "ipam",
        "rangeStart",
        "range_start",
    );
    unknown(
        base("rangeEnd", json!("192.168.4.10")),
        "ipam",
        "rangeEnd",
        "range_end",
    );
    unknown(
        base("networkName", json!("x")),
        "ipam",
        "networkName",
        "network_name",
    );
    unknown(base("exlude", json!([])), "ipam", "exlude", "exclude");
    unknown(base("gatway", json!("192.168.4.1")), "ipam", "gatway", "gateway");
    unknown(
        json!({"type": "whereabouts", "ipRanges": [{"range": "10.0.0.0/24", "rangeStart": "10.0.0.5"}]}),
        "ipam.ipRanges[0]",
        "rangeStart",
        "range_start",
    );
    unknown(
        json!({"type": "whereabouts", "range": "10.0.0.0/24", "kubernetes": {"kube_config": "/x"}}),
        "ipam.kubernetes",
        "kube_config",
        "kubeconfig",
    );
    unknown(
        json!({"type": "whereabouts", "range": "10.0.0.0/24", "dns": {"nameserver": ["1.1.1.1"]}}),
        "ipam.dns",
        "nameserver",
        "nameservers",
    );
    // No near key: list the known ones.
    let e = parse_err(base("zzzzzzzzzzzz", json!(1))).to_string();
    assert!(
        e.contains("unknown key `zzzzzzzzzzzz`") && e.contains("fix: remove `zzzzzzzzzzzz`"),
        "{e}"
    );
}

#[test]
fn datastores() {
    let c = parse(json!({"type": "whereabouts", "range": "10.0.0.0/24", "datastore": "local"})).unwrap();
    assert_eq!(
        c.datastore,
        Datastore::Local {
            dir: "/var/lib/netattach/ipam".into()
        }
    );
    let c = parse(
        json!({"type": "whereabouts", "range": "10.0.0.0/24", "datastore": "local", "local_dir": "/tmp/x"}),
    )
    .unwrap();
    assert_eq!(c.datastore, Datastore::Local { dir: "/tmp/x".into() });
    let c = parse(json!({"type": "whereabouts", "range": "10.0.0.0/24", "datastore": "kubernetes"})).unwrap();
    assert_eq!(c.datastore, Datastore::Kubernetes);
    let e = parse_err(json!({"type": "whereabouts", "range": "10.0.0.0/24", "datastore": "etcd"}));
    assert_eq!(e.kind(), ErrorKind::UnsupportedField);
    assert!(e.to_string().contains("removed in v0.6"), "{e}");
    let e = parse_err(json!({"type": "whereabouts", "range": "10.0.0.0/24", "datastore": "kubernets"}));
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("did you mean `kubernetes`?"), "{e}");
    let e = parse_err(json!({"type": "whereabouts", "range": "10.0.0.0/24", "local_dir": "/tmp/x"}));
    assert!(e.to_string().contains("field `ipam.local_dir`"), "{e}");
}

#[test]
fn node_slice_size_unsupported() {
    let e = parse_err(json!({"type": "whereabouts", "range": "10.0.0.0/16", "node_slice_size": "/22"}));
    assert_eq!(e.kind(), ErrorKind::UnsupportedField);
    assert!(
        e.to_string()
            .contains("field `ipam.node_slice_size`: value `/22`")
            && e.to_string().contains("not support yet"),
        "{e}"
    );
}

fn write(path: &std::path::Path, v: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string(v).unwrap()).unwrap();
}

#[test]
fn flat_file_fills_missing_inline_wins() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("etc/cni/net.d/whereabouts.d/whereabouts.conf");
    write(
        &f,
        &json!({"datastore": "kubernetes", "configuration_path": "/etc/cni/net.d/whereabouts.d",
            "kubernetes": {"kubeconfig": "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"},
            "reconciler_cron_expression": "30 4 * * *", "log_level": "error", "enable_overlapping_ranges": false,
            "range": "10.99.0.0/16"}),
    );
    let search = FlatFileSearch {
        paths: vec![t.path().join("missing.conf"), f.clone()],
    };
    let nc = netconf(
        json!({"type": "whereabouts", "range": "192.168.4.0/24", "log_level": "debug",
        "kubernetes": {"k8s_api_root": "https://api"}}),
    );
    let c = IpamConfig::from_netconf_with(&nc, &search).unwrap();
    assert_eq!(c.flat_file, Some(f));
    assert_eq!(
        c.kubeconfig,
        Some(PathBuf::from(
            "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"
        ))
    );
    assert_eq!(c.k8s_api_root.as_deref(), Some("https://api"));
    assert_eq!(c.log_level.as_deref(), Some("debug"), "inline wins");
    assert_eq!(c.ranges.len(), 1);
    assert_eq!(
        c.ranges[0].cidr.to_string(),
        "192.168.4.0/24",
        "inline range wins"
    );
    assert!(
        c.enable_overlapping_ranges,
        "flat file never sets enable_overlapping_ranges"
    );
    assert_eq!(
        c.configuration_path,
        Some(PathBuf::from("/etc/cni/net.d/whereabouts.d"))
    );
    assert!(c.ignored_keys.contains(&"reconciler_cron_expression".to_string()));
}

#[test]
fn flat_file_search_order_and_k3s_path() {
    let t = tempfile::tempdir().unwrap();
    let std_paths: Vec<PathBuf> = FlatFileSearch::default().paths;
    assert_eq!(std_paths.len(), 4);
    assert!(std_paths[3].starts_with("/var/lib/rancher/k3s"));
    // Re-root the default list in the tempdir.
    let rooted: Vec<PathBuf> = std_paths
        .iter()
        .map(|p| t.path().join(p.strip_prefix("/").unwrap()))
        .collect();
    write(&rooted[3], &json!({"kubernetes": {"kubeconfig": "/k3s/kc"}}));
    let search = FlatFileSearch {
        paths: rooted.clone(),
    };
    let nc = netconf(json!({"type": "whereabouts", "range": "192.168.4.0/24"}));
    let c = IpamConfig::from_netconf_with(&nc, &search).unwrap();
    assert_eq!(c.kubeconfig, Some(PathBuf::from("/k3s/kc")));
    assert_eq!(c.flat_file.as_ref(), Some(&rooted[3]));
    // An earlier path wins.
    write(&rooted[1], &json!({"kubernetes": {"kubeconfig": "/etc/kc"}}));
    let c = IpamConfig::from_netconf_with(&nc, &search).unwrap();
    assert_eq!(c.kubeconfig, Some(PathBuf::from("/etc/kc")));
}

#[test]
fn configuration_path_file_or_directory() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("custom.d");
    write(
        &dir.join("whereabouts.conf"),
        &json!({"kubernetes": {"kubeconfig": "/dir/kc"}}),
    );
    let other = t.path().join("other.conf");
    write(&other, &json!({"kubernetes": {"kubeconfig": "/search/kc"}}));
    let search = FlatFileSearch {
        paths: vec![other.clone()],
    };
    // Directory form.
    let nc = netconf(json!({"type": "whereabouts", "range": "10.0.0.0/24", "configuration_path": dir}));
    let c = IpamConfig::from_netconf_with(&nc, &search).unwrap();
    assert_eq!(c.kubeconfig, Some(PathBuf::from("/dir/kc")));
    // File form.
    let nc = netconf(
        json!({"type": "whereabouts", "range": "10.0.0.0/24", "configuration_path": dir.join("whereabouts.conf")}),
    );
    let c = IpamConfig::from_netconf_with(&nc, &search).unwrap();
    assert_eq!(c.kubeconfig, Some(PathBuf::from("/dir/kc")));
    // Missing: fall through to the search list.
    let nc = netconf(
        json!({"type": "whereabouts", "range": "10.0.0.0/24", "configuration_path": t.path().join("nope.conf")}),
    );
    let c = IpamConfig::from_netconf_with(&nc, &search).unwrap();
    assert_eq!(c.kubeconfig, Some(PathBuf::from("/search/kc")));
}

#[test]
fn flat_file_errors() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("whereabouts.conf");
    write(
        &f,
        &json!({"kubernetes": {"kubeconfig": "/kc"}, "rangeStart": "1.2.3.4"}),
    );
    let search = FlatFileSearch {
        paths: vec![f.clone()],
    };
    let nc = netconf(json!({"type": "whereabouts", "range": "10.0.0.0/24"}));
    let e = IpamConfig::from_netconf_with(&nc, &search)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("flat file {}", f.display())) && e.contains("did you mean `range_start`?"),
        "{e}"
    );
    std::fs::write(&f, "{not json").unwrap();
    let e = IpamConfig::from_netconf_with(&nc, &search).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("is not valid JSON"), "{e}");
    // A directory where a file is expected is an I/O error (it exists but cannot be read).
    let d = t.path().join("adir");
    std::fs::create_dir(&d).unwrap();
    let e = IpamConfig::from_netconf_with(&nc, &FlatFileSearch { paths: vec![d] }).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
}

/// Go's encoding/json matches keys case-insensitively, so whereabouts reads `Range_Start` as
/// `range_start`; a NAD relying on that must keep working.
#[test]
fn keys_in_another_letter_case_are_read_like_go_does() {
    let netconf = json!({"name": "n", "ipam": {
        "type": "whereabouts", "Range": "192.168.4.0/24", "Range_Start": "192.168.4.10",
        "kubernetes": {"KubeConfig": "/etc/k"},
        "ipranges": [{"RANGE": "fd00::/64"}]
    }});
    let cfg = IpamConfig::from_netconf_with(&netconf, &FlatFileSearch::none()).expect("case-folded keys");
    assert_eq!(cfg.ranges.len(), 2);
    assert_eq!(cfg.ranges[0].start.to_string(), "192.168.4.10");
    assert_eq!(cfg.ranges[1].cidr.to_string(), "fd00::/64");
    assert_eq!(cfg.kubeconfig.as_deref(), Some(std::path::Path::new("/etc/k")));

    let both =
        json!({"name": "n", "ipam": {"type": "whereabouts", "range": "10.0.0.0/24", "Range": "10.0.1.0/24"}});
    let e = IpamConfig::from_netconf_with(&both, &FlatFileSearch::none())
        .expect_err("two spellings")
        .to_string();
    assert!(e.contains("`Range`") && e.contains("`range`"), "{e}");
}
