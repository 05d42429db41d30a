//! Differential test against the reference plugins (Debian 12 `containernetworking-plugins`
//! 1.1.1 in `/usr/lib/cni`): one macvlan config runs through netattach (`macvlan` +
//! `whereabouts`, local store) and through `/usr/lib/cni/macvlan` + `host-local` (same range, own
//! `dataDir`), each into its own pod namespace, both on the same master `stor0` of one node
//! namespace. The resulting namespace state and the CNI result must be the same once the
//! MAC, the exact address and the sandbox path are masked.
//!
//! Known, allowed divergences (each is normalised below, with the reason):
//!
//! * `dns`: Debian's 1.1.1 prints `"dns":{}` even when the config has no `dns`, in 1.0.0 too.
//!   netattach omits an empty `dns` in 1.x results (both print `"dns":{}` for 0.4.0, whose
//!   Go type has a non-pointer DNS). An empty `dns` object is treated as absent on both sides.
//! * The exact address: host-local hands out the next address after its last reservation
//!   (`last_reserved_ip`), whereabouts the lowest free one; only family and prefix length are
//!   compared.
//! * cniVersion 1.1.0 is not compared: Debian's 1.1.1 does not support it ("incompatible CNI
//!   versions").
//! * IPv6 link-local addresses and `fe80::/64` routes are ignored: they appear asynchronously
//!   (kernel autoconf after link-up) on both sides and say nothing about the plugins.

mod support;

use std::path::{Path, PathBuf};

use netattach_netdev::{Family, sysctl};
use serde_json::{Map, Value, json};
use support::{IFNAME, MASTER, Ns, Runner, Topology};

const REF_DIR: &str = "/usr/lib/cni";
const RANGE: &str = "198.18.7.0/24";
const GATEWAY: &str = "198.18.7.1";
const ROUTE_DST: &str = "198.18.100.0/24";
/// The two result versions Debian's reference plugins and netattach both speak.
const VERSIONS: [&str; 2] = ["0.4.0", "1.0.0"];

const IFF_UP: u32 = 0x1;
const IFF_BROADCAST: u32 = 0x2;
const IFF_MULTICAST: u32 = 0x1000;
const IFF_LOWER_UP: u32 = 0x10000;
const FLAG_MASK: u32 = IFF_UP | IFF_BROADCAST | IFF_MULTICAST | IFF_LOWER_UP;

fn reference(node: &Ns) -> Runner {
    for p in ["macvlan", "host-local"] {
        let exe = Path::new(REF_DIR).join(p);
        assert!(
            exe.is_file(),
            "reference plugin {} is missing; fix: apt-get install containernetworking-plugins",
            exe.display()
        );
    }
    Runner {
        exe: Path::new(REF_DIR).join("macvlan"),
        cni_path: PathBuf::from(REF_DIR),
        host: node.path().to_path_buf(),
    }
}

/// One config of the matrix.
#[derive(Debug, Clone, Copy)]
struct Case {
    mode: &'static str,
    mtu: Option<u32>,
    /// `false` = L2 only (`"ipam": {}`).
    ipam: bool,
}

const CASES: [Case; 5] = [
    Case {
        mode: "bridge",
        mtu: None,
        ipam: true,
    },
    Case {
        mode: "private",
        mtu: None,
        ipam: true,
    },
    Case {
        mode: "vepa",
        mtu: Some(1400),
        ipam: true,
    },
    Case {
        mode: "bridge",
        mtu: None,
        ipam: false,
    },
    Case {
        mode: "private",
        mtu: Some(1280),
        ipam: false,
    },
];

fn config(case: Case, version: &str, ipam: Value) -> Value {
    let mut c = json!({
        "cniVersion": version,
        "name": "difftest",
        "type": "macvlan",
        "master": MASTER,
        "mode": case.mode,
        "ipam": if case.ipam { ipam } else { json!({}) },
    });
    if let Some(mtu) = case.mtu {
        c["mtu"] = json!(mtu);
    }
    c
}

/// (dst, gateway, scope, table) of a route.
type RouteKey = (String, Option<String>, Option<u8>, Option<u32>);

/// The namespace state that must match, with MAC and exact address masked.
#[derive(Debug, PartialEq, Eq)]
struct State {
    kind: Option<String>,
    mode: Option<String>,
    mtu: u32,
    /// UP / BROADCAST / MULTICAST / LOWER_UP.
    flags: u32,
    /// (family, prefix length) of each non-link-local address.
    addrs: Vec<(String, u8)>,
    /// (dst, gateway, scope, table) of each unicast route, except fe80::/64.
    routes: Vec<RouteKey>,
    /// `net/ipv4/conf/<if>/arp_notify` (gratuitous ARP on link-up: both set it when IPAM gave
    /// addresses).
    arp_notify: String,
}

fn state(ns: &Ns) -> State {
    let link = ns.expect_link(IFNAME);
    let mut addrs: Vec<(String, u8)> = ns
        .addresses(IFNAME)
        .into_iter()
        .filter(
            |a| !matches!(a.addr.addr(), std::net::IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80),
        )
        .map(|a| (format!("{:?}", Family::of(&a.addr.addr())), a.addr.prefix_len()))
        .collect();
    addrs.sort();
    let mut routes: Vec<_> = ns
        .routes()
        .into_iter()
        .filter(|r| r.oif == Some(link.index))
        .filter(|r| r.dst.to_string() != "fe80::/64")
        .map(|r| {
            (
                r.dst.to_string(),
                r.gateway.map(|g| g.to_string()),
                r.scope,
                r.table,
            )
        })
        .collect();
    routes.sort();
    let arp_notify = sysctl::get(&ns.netns(), &format!("net/ipv4/conf/{IFNAME}/arp_notify"))
        .unwrap_or_else(|e| panic!("reading arp_notify of {IFNAME}: {e}"));
    State {
        kind: link.kind.clone(),
        mode: link.macvlan_mode.map(|m| m.as_str().to_string()),
        mtu: link.mtu,
        flags: link.flags & FLAG_MASK,
        addrs,
        routes,
        arp_notify,
    }
}

/// The result with mac, exact address and sandbox masked and the documented divergences
/// normalised (see module docs).
fn mask(result: &Value) -> Value {
    let mut r = result.clone();
    if let Some(ifs) = r.get_mut("interfaces").and_then(Value::as_array_mut) {
        for i in ifs {
            for (k, v) in [("mac", "<mac>"), ("sandbox", "<sandbox>")] {
                if i.get(k).is_some() {
                    i[k] = json!(v);
                }
            }
        }
    }
    if let Some(ips) = r.get_mut("ips").and_then(Value::as_array_mut) {
        for ip in ips {
            if let Some(a) = ip.get("address").and_then(Value::as_str) {
                let len = a.split('/').nth(1).unwrap_or("?").to_string();
                ip["address"] = json!(format!("<ip>/{len}"));
            }
        }
    }
    // Debian 1.1.1 prints "dns":{} when no dns was configured; netattach omits it in 1.x.
    if let Some(o) = r.as_object_mut()
        && o.get("dns")
            .is_some_and(|d| d.as_object().is_some_and(Map::is_empty))
    {
        o.remove("dns");
    }
    r
}

#[test]
fn netattach_matches_reference_macvlan_and_host_local() {
    support::require_root();
    let topo = Topology::new();
    let na = topo.macvlan();
    let rf = reference(&topo.node);
    let hl_dir = tempfile::Builder::new()
        .prefix("netattach-difftest-hostlocal-")
        .tempdir()
        .expect("temp host-local dir");

    let mut wa_ipam = topo.ipam(RANGE);
    wa_ipam["gateway"] = json!(GATEWAY);
    wa_ipam["routes"] = json!([{ "dst": ROUTE_DST }]);
    let hl_ipam = json!({
        "type": "host-local",
        "ranges": [[{ "subnet": RANGE, "gateway": GATEWAY }]],
        "routes": [{ "dst": ROUTE_DST }],
        "dataDir": hl_dir.path().display().to_string(),
    });

    let mut failures = Vec::new();
    for case in CASES {
        for version in VERSIONS {
            let what = format!("{case:?} cniVersion {version}");
            let na_conf = config(case, version, wa_ipam.clone());
            let rf_conf = config(case, version, hl_ipam.clone());
            let na_pod = topo.pod("diff-na");
            let rf_pod = topo.pod("diff-ref");

            let na_res = na
                .add(&na_pod.att, &na_conf)
                .unwrap_or_else(|e| panic!("netattach ADD {what}: {e:?}"));
            let rf_res = rf
                .add(&rf_pod.att, &rf_conf)
                .unwrap_or_else(|e| panic!("reference ADD {what}: {e:?}"));

            let (na_state, rf_state) = (state(&na_pod.ns), state(&rf_pod.ns));
            if na_state != rf_state {
                failures.push(format!(
                    "{what}: netns state differs\n  netattach: {na_state:?}\n  reference: {rf_state:?}"
                ));
            }
            // Sanity: the matrix really exercised what it says.
            assert_eq!(rf_state.mode.as_deref(), Some(case.mode), "{what}");
            assert_eq!(rf_state.mtu, case.mtu.unwrap_or(1500), "{what}");
            assert_eq!(rf_state.addrs.len(), usize::from(case.ipam), "{what}");
            assert_eq!(rf_state.arp_notify, if case.ipam { "1" } else { "0" }, "{what}");

            let (na_m, rf_m) = (mask(&na_res), mask(&rf_res));
            // `--nocapture` shows what was compared.
            println!("{what}:\n  state {rf_state:?}\n  netattach raw {na_res}\n  reference raw {rf_res}");
            if na_m != rf_m {
                failures.push(format!(
                    "{what}: CNI result differs\n  netattach: {na_m}\n  reference: {rf_m}"
                ));
            }

            na.del(&na_pod.att, &na_conf)
                .unwrap_or_else(|e| panic!("netattach DEL {what}: {e:?}"));
            rf.del(&rf_pod.att, &rf_conf)
                .unwrap_or_else(|e| panic!("reference DEL {what}: {e:?}"));
            assert!(
                na_pod.ns.link(IFNAME).is_none(),
                "netattach DEL left {IFNAME}: {what}"
            );
            assert!(
                rf_pod.ns.link(IFNAME).is_none(),
                "reference DEL left {IFNAME}: {what}"
            );
        }
    }
    assert!(
        topo.allocations().is_empty(),
        "whereabouts allocations left: {:?}",
        topo.allocations()
    );
    let hl_left: Vec<String> = std::fs::read_dir(hl_dir.path().join("difftest"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(hl_left.is_empty(), "host-local allocations left: {hl_left:?}");
    assert!(
        failures.is_empty(),
        "{} divergence(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
