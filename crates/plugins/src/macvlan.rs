//! The `macvlan` CNI plugin, config-compatible with the reference plugin.
//!
//! ADD creates the link directly in the pod's namespace under its final name (no rename, which
//! would wait for an RCU grace period), turns on `arp_notify` when IPAM is configured, runs IPAM,
//! assigns addresses and routes, turns on `ndisc_notify` for IPv6 (the kernel then announces
//! the addresses with a gratuitous ARP / unsolicited NA when the link comes up) and brings the
//! link up. Any failure removes the link and releases the IPAM allocation:
//! nothing is left behind. DEL releases IPAM first, then deletes the link, and succeeds when
//! the namespace, the link or the master is already gone.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use netattach_cni::Command;
use netattach_cni::error::{CniError, code};
use netattach_cni::result::{CniResult, Dns, Interface};
use netattach_cni::skel::{Plugin, Request};
use netattach_netdev::{Handle, Link, MacAddr, MacvlanMode, MacvlanSpec, Netns, sysctl};
use serde_json::Value;

use crate::errors::{collect, from_netdev};
use crate::ipam_delegate;

/// The macvlan plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct Macvlan;

/// Keys the reference plugin and the CNI spec define for a macvlan config.
const KNOWN_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "master",
    "mode",
    "mtu",
    "mac",
    "linkInContainer",
    "bcqueuelen",
    "ipam",
    "dns",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "args",
    "disableCheck",
    "disableGC",
    "loadOnlyInlinedPlugins",
];

/// The macvlan part of the configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacvlanConf {
    /// `master`; `None` means the interface of the default route.
    pub master: Option<String>,
    /// `mode` (default bridge).
    pub mode: MacvlanMode,
    /// `mtu`; `None` (or 0) inherits the master's.
    pub mtu: Option<u32>,
    /// The MAC after applying `runtimeConfig.mac` > `CNI_ARGS MAC` > `mac`.
    pub mac: Option<MacAddr>,
    /// `linkInContainer`: the master lives in the pod's namespace.
    pub link_in_container: bool,
    /// `bcqueuelen`.
    pub bc_queue_len: Option<u32>,
    /// `dns`, copied into the result.
    pub dns: Dns,
}

impl MacvlanConf {
    /// Reads and validates the macvlan keys of a request. Unknown top-level keys are logged,
    /// not refused: NADs in the wild carry extra keys and the spec lets plugins ignore them.
    pub fn from_request(req: &Request) -> Result<MacvlanConf, CniError> {
        let raw = &req.conf.raw;
        for key in raw.keys() {
            if !KNOWN_KEYS.contains(&key.as_str()) && !key.starts_with("cni.dev/") {
                tracing::warn!(key = %key, "ignoring unknown macvlan config key");
            }
        }
        let master = opt_str(raw.get("master"), "master")?.filter(|m| !m.is_empty());
        let mode = match opt_str(raw.get("mode"), "mode")?.as_deref() {
            None | Some("") => MacvlanMode::Bridge,
            Some(m @ ("bridge" | "private" | "vepa" | "passthru")) => {
                MacvlanMode::from_str(m).map_err(|_| {
                    CniError::invalid_config(format!("field `mode`: value `{m}` could not be parsed"))
                })?
            }
            Some(other) => {
                return Err(CniError::invalid_config(format!(
                    "field `mode`: value `{other}` is not a macvlan mode; fix: use bridge, private, vepa or passthru"
                )));
            }
        };
        let mtu = opt_u32(raw.get("mtu"), "mtu")?.filter(|m| *m != 0);
        let bc_queue_len = opt_u32(raw.get("bcqueuelen"), "bcqueuelen")?.filter(|q| *q != 0);
        let link_in_container = match raw.get("linkInContainer") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(CniError::invalid_config(format!(
                    "field `linkInContainer`: value {other} is not a boolean; fix: write true or false"
                )));
            }
        };
        let runtime_mac = req
            .conf
            .runtime_config()
            .and_then(|rc| rc.get("mac"))
            .map(|v| (v, "runtimeConfig.mac"))
            .filter(|(v, _)| !v.is_null());
        let args_mac = req.inv.args.mac().map(|m| m.to_string());
        let mac = if let Some((v, field)) = runtime_mac {
            Some(parse_mac(
                opt_str(Some(v), field)?.unwrap_or_default().as_str(),
                field,
                code::INVALID_NETWORK_CONFIG,
            )?)
        } else if let Some(m) = args_mac {
            Some(parse_mac(&m, "CNI_ARGS MAC", code::INVALID_ENVIRONMENT)?)
        } else {
            match opt_str(raw.get("mac"), "mac")?.filter(|m| !m.is_empty()) {
                Some(m) => Some(parse_mac(&m, "mac", code::INVALID_NETWORK_CONFIG)?),
                None => None,
            }
        };
        Ok(MacvlanConf {
            master,
            mode,
            mtu,
            mac,
            link_in_container,
            bc_queue_len,
            dns: req.conf.dns()?,
        })
    }
}

fn parse_mac(raw: &str, field: &str, err_code: u32) -> Result<MacAddr, CniError> {
    let bad = |why: &str| {
        CniError::new(
            err_code,
            "invalid MAC address",
            format!("field `{field}`: value `{raw}` {why}; fix: use a unicast MAC like 02:11:22:33:44:55"),
        )
    };
    let mac = MacAddr::from_str(raw).map_err(|_| bad("is not a MAC address"))?;
    if !mac.is_unicast() {
        return Err(bad("is a multicast address"));
    }
    Ok(mac)
}

fn opt_str(v: Option<&Value>, field: &str) -> Result<Option<String>, CniError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CniError::invalid_config(format!(
            "field `{field}`: value {other} is not a string"
        ))),
    }
}

fn opt_u32(v: Option<&Value>, field: &str) -> Result<Option<u32>, CniError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                CniError::invalid_config(format!(
                    "field `{field}`: value {n} is not a whole number from 0 to 4294967295"
                ))
            }),
        Some(other) => Err(CniError::invalid_config(format!(
            "field `{field}`: value {other} is not a number"
        ))),
    }
}

fn netns_path(req: &Request) -> Result<&std::path::Path, CniError> {
    req.inv
        .netns
        .as_deref()
        .ok_or_else(|| CniError::invalid_env("CNI_NETNS is required"))
}

fn open_netns(req: &Request) -> Result<Netns, CniError> {
    let path = netns_path(req)?;
    Netns::open(path).map_err(|e| {
        if e.is_not_found() {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                "container network namespace not found",
                format!("CNI_NETNS=`{}`: {e}", path.display()),
            )
        } else {
            CniError::invalid_env(format!(
                "CNI_NETNS=`{}` is not a usable network namespace: {e}",
                path.display()
            ))
        }
    })
}

fn resolve_master(h: &mut Handle, master: Option<&str>, where_: &str) -> Result<Link, CniError> {
    match master {
        Some(name) => h
            .link_by_name(name)
            .map_err(|e| from_netdev(&format!("look up master {name}"), &e))?
            .ok_or_else(|| {
                CniError::invalid_config(format!(
                    "field `master`: value `{name}`: no such interface in the {where_} network namespace; fix: set \"master\" to an existing NIC (see `ip link`)"
                ))
            }),
        None => h
            .default_route_interface()
            .map_err(|e| from_netdev("find the default route interface", &e))?
            .ok_or_else(|| {
                CniError::invalid_config(format!(
                    "field `master` is not set and the {where_} network namespace has no default route to take it from; fix: set \"master\" to the storage NIC, like \"eth1\""
                ))
            }),
    }
}

/// `CNI_IFNAME` is taken in the container (`what` says how).
fn interface_exists(ifname: &str, what: &str) -> CniError {
    CniError::new(
        code::INTERFACE_EXISTS,
        "interface already exists",
        format!(
            "CNI_IFNAME=`{ifname}` {what}; fix: pick another interface name, or DEL the previous attachment"
        ),
    )
}

impl Plugin for Macvlan {
    fn about(&self) -> String {
        format!("netattach macvlan plugin {}", env!("CARGO_PKG_VERSION"))
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let conf = MacvlanConf::from_request(req)?;
        let ipam_type = req.conf.ipam_type()?.map(str::to_owned);
        let ifname = req.inv.ifname.as_str();
        let target = open_netns(req)?;
        let mut ctr =
            Handle::in_netns(&target).map_err(|e| from_netdev("open netlink in the container", &e))?;
        let mut host = if conf.link_in_container {
            None
        } else {
            Some(Handle::new().map_err(|e| from_netdev("open netlink in the host", &e))?)
        };
        let (master_handle, where_) = match host.as_mut() {
            Some(h) => (h, "host"),
            None => (&mut ctr, "container"),
        };
        let master = resolve_master(master_handle, conf.master.as_deref(), where_)?;
        if let Some(mtu) = conf.mtu
            && mtu > master.mtu
        {
            return Err(CniError::invalid_config(format!(
                "field `mtu`: value {mtu} is above the MTU of master {} ({}); fix: use a value from 0 to {}, or raise the master's MTU",
                master.name, master.mtu, master.mtu
            )));
        }
        if ctr
            .link_by_name(ifname)
            .map_err(|e| from_netdev("look up CNI_IFNAME", &e))?
            .is_some()
        {
            return Err(interface_exists(
                ifname,
                &format!("already exists in {}", target.path().display()),
            ));
        }

        // 1. Create under its final name straight into the pod's namespace: no rename, which
        //    would wait for an RCU grace period (`synchronize_net` under RTNL) per attachment.
        let spec = MacvlanSpec {
            name: ifname.to_string(),
            master_index: master.index,
            mode: conf.mode,
            mtu: conf.mtu,
            mac: conf.mac,
            bc_queue_len: conf.bc_queue_len,
            target_netns: if conf.link_in_container {
                None
            } else {
                Some(&target)
            },
        };
        let creator = match host.as_mut() {
            Some(h) => h,
            None => &mut ctr,
        };
        creator.create_macvlan(&spec).map_err(|e| {
            if e.is_exists() {
                interface_exists(ifname, "appeared in the container while attaching")
            } else {
                from_netdev(&format!("create macvlan on master {}", master.name), &e)
            }
        })?;
        let link = match ctr.link_by_name(ifname) {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Err(CniError::new(
                    code::LINK_SETUP_FAILED,
                    "link setup failed",
                    format!("macvlan {ifname} vanished right after creation"),
                ));
            }
            Err(e) => {
                let _ = ctr.delete_link_by_name(ifname);
                return Err(from_netdev("look up the new macvlan", &e));
            }
        };

        let outcome = attach(req, &conf, &target, &mut ctr, &link, ipam_type.as_deref());
        if outcome.is_err()
            && let Err(e) = ctr.delete_link(link.index)
        {
            tracing::error!(error = %e, "cleanup: could not delete macvlan after failed ADD");
        }
        outcome
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let mut errors = Vec::new();
        match req.conf.ipam_type() {
            Ok(Some(t)) => {
                if let Err(e) = ipam_delegate::call(Command::Del, t, req) {
                    errors.push(e);
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        if let Some(path) = req.inv.netns.as_deref()
            && let Err(e) = delete_link_in(path, &req.inv.ifname)
        {
            errors.push(e);
        }
        collect("macvlan DEL", errors)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let conf = MacvlanConf::from_request(req)?;
        let prev = req.conf.prev_result()?.ok_or_else(|| {
            CniError::invalid_config(
                "field `prevResult` is required for CHECK; fix: pass the cached ADD result",
            )
        })?;
        if let Some(t) = req.conf.ipam_type()? {
            ipam_delegate::call(Command::Check, t, req)?;
        }
        let target = open_netns(req)?;
        let ns_path = target.path().display().to_string();
        let ifname = req.inv.ifname.as_str();
        let drift = |what: String| CniError::new(code::CHECK_FAILED, "attachment differs from ADD", what);
        let Some(iface_index) = prev
            .interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.as_deref() == Some(ns_path.as_str()))
        else {
            return Err(drift(format!(
                "prevResult has no interface {ifname} in sandbox {ns_path}"
            )));
        };
        let mut ctr =
            Handle::in_netns(&target).map_err(|e| from_netdev("open netlink in the container", &e))?;
        if !conf.link_in_container {
            let mut host = Handle::new().map_err(|e| from_netdev("open netlink in the host", &e))?;
            resolve_master(&mut host, conf.master.as_deref(), "host")?;
        }
        let link = ctr
            .link_by_name(ifname)
            .map_err(|e| from_netdev("look up CNI_IFNAME", &e))?
            .ok_or_else(|| drift(format!("interface {ifname} is missing from {ns_path}")))?;
        if link.kind.as_deref() != Some("macvlan") {
            return Err(drift(format!("{ifname} is a {:?} link, not macvlan", link.kind)));
        }
        if link.macvlan_mode != Some(conf.mode) {
            return Err(drift(format!(
                "{ifname} has mode {:?}, config says {}",
                link.macvlan_mode, conf.mode
            )));
        }
        if let Some(want) = prev.interfaces[iface_index].mac.as_deref() {
            let have = link.mac.map(|m| m.to_string()).unwrap_or_default();
            if !have.eq_ignore_ascii_case(want) {
                return Err(drift(format!("{ifname} has MAC {have}, prevResult says {want}")));
            }
        }
        let addrs = ctr
            .addresses(link.index)
            .map_err(|e| from_netdev("list addresses", &e))?;
        for ip in prev.ips.iter().filter(|ip| ip.interface == Some(iface_index)) {
            if !addrs.iter().any(|a| a.addr == ip.address) {
                return Err(drift(format!("{ifname} lacks address {}", ip.address)));
            }
        }
        let routes = ctr.routes(None).map_err(|e| from_netdev("list routes", &e))?;
        for r in &prev.routes {
            let gw = r.gw.or_else(|| family_gateway(&prev, r.dst.addr()));
            let present = routes
                .iter()
                .any(|have| have.dst == r.dst && (gw.is_none() || have.gateway == gw));
            if !present {
                return Err(drift(format!("route to {} via {:?} is missing", r.dst, gw)));
            }
        }
        Ok(())
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let conf = MacvlanConf::from_request(req)?;
        if !conf.link_in_container {
            let mut host = Handle::new().map_err(|e| from_netdev("open netlink in the host", &e))?;
            resolve_master(&mut host, conf.master.as_deref(), "host").map_err(|e| {
                CniError::new(
                    code::PLUGIN_NOT_AVAILABLE,
                    "macvlan master not available",
                    e.details,
                )
            })?;
        }
        if let Some(t) = req.conf.ipam_type()? {
            ipam_delegate::call(Command::Status, t, req)?;
        }
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        // The reference plugin does not forward GC; the spec says it MUST, and whereabouts-style
        // IPAM relies on it.
        if let Some(t) = req.conf.ipam_type()? {
            ipam_delegate::call(Command::Gc, t, req)?;
        }
        Ok(())
    }
}

fn family_gateway(result: &CniResult, dst: IpAddr) -> Option<IpAddr> {
    result
        .ips
        .iter()
        .filter_map(|ip| ip.gateway)
        .find(|gw| gw.is_ipv4() == dst.is_ipv4())
}

/// Steps 1b–4 of ADD once the link exists: rename, IPAM, addresses, announcements, up, routes.
/// On failure after IPAM succeeded, IPAM is released here; the caller deletes the link.
fn attach(
    req: &Request,
    conf: &MacvlanConf,
    target: &Netns,
    ctr: &mut Handle,
    link: &Link,
    ipam_type: Option<&str>,
) -> Result<CniResult, CniError> {
    let ifname = req.inv.ifname.as_str();
    // Step 3 for IPv4, when IPAM will give addresses: with arp_notify the kernel sends a
    // gratuitous ARP for them when the link comes up (an L2-only link has none to announce,
    // and the reference plugin leaves it alone).
    if ipam_type.is_some() {
        ctr.set_arp_notify(link.index)
            .map_err(|e| from_netdev(&format!("set arp_notify on {ifname}"), &e))?;
    }
    let mut result = CniResult {
        interfaces: vec![Interface {
            name: ifname.to_string(),
            mac: link.mac.map(|m| m.to_string()),
            mtu: Some(link.mtu),
            sandbox: Some(target.path().display().to_string()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let Some(ipam_type) = ipam_type else {
        ctr.set_up(link.index)
            .map_err(|e| from_netdev(&format!("set {ifname} up"), &e))?;
        result.dns = conf.dns.clone();
        return Ok(result);
    };

    // 2. IPAM.
    let ipam = ipam_delegate::call(Command::Add, ipam_type, req)?
        .ok_or_else(|| CniError::internal("IPAM ADD returned no result"))?;
    let configured = configure_addresses(conf, target, ctr, link, ifname, ipam, &mut result);
    if let Err(e) = configured {
        if let Err(del) = ipam_delegate::call(Command::Del, ipam_type, req) {
            tracing::error!(error = %del, "cleanup: IPAM DEL after failed ADD failed");
            return Err(CniError::new(
                e.code,
                e.msg,
                format!("{}; and releasing the address failed: {del}", e.details),
            ));
        }
        return Err(e);
    }
    Ok(result)
}

fn configure_addresses(
    conf: &MacvlanConf,
    target: &Netns,
    ctr: &mut Handle,
    link: &Link,
    ifname: &str,
    ipam: CniResult,
    result: &mut CniResult,
) -> Result<(), CniError> {
    if ipam.ips.is_empty() {
        return Err(CniError::new(
            code::DELEGATE_FAILED,
            "IPAM plugin returned missing IP config",
            "no ips in the IPAM result",
        ));
    }
    let has_v6 = ipam.ips.iter().any(|ip| ip.address.addr().is_ipv6());
    // 3. Announcements, IPv6 (arp_notify was set with the rename): with ndisc_notify the kernel
    // sends an unsolicited NA for the addresses when the link comes up. IPv6 has no netlink
    // form of these keys, so they go through /proc/sys inside the pod's namespace.
    if has_v6 {
        let ipv6 = [
            (format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0"),
            (format!("net/ipv6/conf/{ifname}/keep_addr_on_down"), "1"),
            (format!("net/ipv6/conf/{ifname}/ndisc_notify"), "1"),
        ];
        let pairs: Vec<(&str, &str)> = ipv6.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        sysctl::set_many(target, &pairs).map_err(|e| from_netdev("set announcement sysctls", &e))?;
    }
    for ip in &ipam.ips {
        ctr.add_address(link.index, ip.address)
            .map_err(|e| from_netdev(&format!("add address {} to {ifname}", ip.address), &e))?;
    }
    // 4. Up.
    ctr.set_up(link.index)
        .map_err(|e| from_netdev(&format!("set {ifname} up"), &e))?;
    if ipam
        .ips
        .iter()
        .any(|ip| ip.address.addr().is_ipv6() && ip.gateway.is_some())
    {
        settle_ipv6(ctr, link.index, ifname)?;
    }
    for r in &ipam.routes {
        let gateway = r.gw.or_else(|| family_gateway(&ipam, r.dst.addr()));
        let route = netattach_netdev::Route {
            dst: r.dst,
            gateway,
            oif: Some(link.index),
            metric: r.priority,
            table: r.table,
            scope: r.scope,
            mtu: r.mtu,
            advmss: r.advmss,
        };
        ctr.add_route(&route)
            .map_err(|e| from_netdev(&format!("add route to {} via {gateway:?}", r.dst), &e))?;
    }
    result.ips = ipam
        .ips
        .into_iter()
        .map(|mut ip| {
            ip.interface = Some(0);
            ip
        })
        .collect();
    result.routes = ipam.routes;
    result.dns = if conf.dns.is_empty() {
        ipam.dns
    } else {
        conf.dns.clone()
    };
    Ok(())
}

/// Waits (up to 5 s) until no IPv6 address is tentative, so a default route via an IPv6
/// gateway can be added; a failed duplicate address detection is an error at once.
fn settle_ipv6(ctr: &mut Handle, index: u32, ifname: &str) -> Result<(), CniError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let addrs = ctr
            .addresses(index)
            .map_err(|e| from_netdev("list addresses", &e))?;
        if let Some(a) = addrs.iter().find(|a| a.dadfailed) {
            return Err(CniError::new(
                code::LINK_SETUP_FAILED,
                "duplicate address detected",
                format!(
                    "{} on {ifname} failed duplicate address detection: another host uses it",
                    a.addr
                ),
            ));
        }
        if !addrs.iter().any(|a| a.tentative) || Instant::now() >= deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deletes `ifname` in the namespace at `path` if it is a macvlan. A missing namespace or link
/// is success; a link of another kind is left alone (it is not ours).
fn delete_link_in(path: &std::path::Path, ifname: &str) -> Result<(), CniError> {
    let ns = match Netns::open(path) {
        Ok(ns) => ns,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(from_netdev(&format!("open netns {}", path.display()), &e)),
    };
    let mut h = Handle::in_netns(&ns).map_err(|e| from_netdev("open netlink in the container", &e))?;
    match h.link_by_name(ifname) {
        Ok(Some(link)) if link.kind.as_deref() == Some("macvlan") => match h.delete_link(link.index) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(from_netdev(&format!("delete {ifname}"), &e)),
        },
        Ok(Some(link)) => {
            tracing::warn!(ifname, kind = ?link.kind, "DEL: leaving a non-macvlan interface alone");
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(from_netdev(&format!("look up {ifname}"), &e)),
    }
}
