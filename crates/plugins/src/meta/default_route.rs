//! `default-route` in the networks annotation, applied the way Multus applies it after each
//! delegate's ADD.
//!
//! When an attachment asks for `"default-route": ["<gw>"]`, resolution marks every *other*
//! network to filter that address family's gateway ([`netattach_cluster::Delegate`]'s
//! `filter_v4_gateway`/`filter_v6_gateway`). After a delegate succeeds, its interface in the pod
//! then loses its default routes of a filtered family, and the asking interface gets a default
//! route via the requested gateway. The delegate's result is patched to match — its `routes`
//! lose the removed defaults and gain the added one — so the record, CHECK and the
//! network-status `gateway` field describe the pod as it is.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::IpNet;
use serde_json::{Value, json};

use netattach_cluster::Delegate;
use netattach_cni::error::CniError;
use netattach_netdev::{Family, Handle, Netns, Route};

use crate::errors::from_netdev;

/// The main routing table.
const RT_TABLE_MAIN: u32 = 254;

/// The default-route work `d` needs: families to filter, gateways to add.
struct Plan {
    filter: Vec<Family>,
    gateways: Vec<IpAddr>,
}

fn plan(d: &Delegate) -> Plan {
    let mut filter = Vec::new();
    if d.filter_v4_gateway {
        filter.push(Family::V4);
    }
    if d.filter_v6_gateway {
        filter.push(Family::V6);
    }
    let gateways = d
        .selection
        .as_ref()
        .map(|s| s.default_route.clone())
        .unwrap_or_default();
    Plan { filter, gateways }
}

fn default_dst(family: Family) -> IpNet {
    match family {
        Family::V4 => IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        Family::V6 => IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
    .unwrap_or_default()
}

/// Applies `d`'s default-route filtering and request to its interface in `netns`, and returns
/// `result` patched to match. Nothing to do (the common case) returns `result` unchanged
/// without touching the namespace.
pub fn apply(d: &Delegate, netns: Option<&Path>, result: Value) -> Result<Value, CniError> {
    let plan = plan(d);
    if plan.filter.is_empty() && plan.gateways.is_empty() {
        return Ok(result);
    }
    let path = netns.ok_or_else(|| {
        CniError::invalid_env("CNI_NETNS is required to apply `default-route`; fix: the runtime must send it")
    })?;
    let ns = Netns::open(path).map_err(|e| from_netdev("open the pod's network namespace", &e))?;
    let mut nl = Handle::in_netns(&ns).map_err(|e| from_netdev("open netlink in the pod", &e))?;
    let link = nl
        .link_by_name(&d.ifname)
        .map_err(|e| from_netdev("look up the interface", &e))?
        .ok_or_else(|| {
            CniError::internal(format!(
                "interface `{}` is not in the pod after its ADD, so `default-route` cannot be applied",
                d.ifname
            ))
        })?;
    let mut result = result;
    for family in &plan.filter {
        let defaults: Vec<Route> = nl
            .routes(Some(*family))
            .map_err(|e| from_netdev("list the pod's routes", &e))?
            .into_iter()
            .filter(|r| {
                r.dst.prefix_len() == 0 && r.oif == Some(link.index) && r.table == Some(RT_TABLE_MAIN)
            })
            .collect();
        for route in &defaults {
            if let Err(e) = nl.delete_route(route)
                && !e.is_not_found()
            {
                return Err(from_netdev(
                    &format!(
                        "remove the default route of `{}` (another network asked for it)",
                        d.ifname
                    ),
                    &e,
                ));
            }
        }
        retain_routes(&mut result, |dst| dst != Some(default_dst(*family)));
    }
    for gw in &plan.gateways {
        let family = Family::of(gw);
        let route = Route {
            gateway: Some(*gw),
            oif: Some(link.index),
            ..Route::new(default_dst(family))
        };
        match nl.add_route(&route) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => {
                return Err(from_netdev(
                    &format!(
                        "add the default route via {gw} on `{}` (`default-route`)",
                        d.ifname
                    ),
                    &e,
                ));
            }
        }
        retain_routes(&mut result, |dst| dst != Some(default_dst(family)));
        if let Some(routes) = routes_mut(&mut result) {
            routes.push(json!({"dst": default_dst(family).to_string(), "gw": gw.to_string()}));
        }
    }
    Ok(result)
}

/// The result's `routes` array, created when missing.
fn routes_mut(result: &mut Value) -> Option<&mut Vec<Value>> {
    let obj = result.as_object_mut()?;
    obj.entry("routes")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
}

/// Keeps the result's routes whose destination passes `keep` (an unparsable one is kept).
fn retain_routes(result: &mut Value, keep: impl Fn(Option<IpNet>) -> bool) {
    if let Some(routes) = result.get_mut("routes").and_then(Value::as_array_mut) {
        routes.retain(|r| {
            let dst = r
                .get("dst")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<IpNet>().ok());
            dst.is_none() || keep(dst)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_routes_lose_the_filtered_default_and_keep_the_rest() {
        let mut r = json!({"routes": [
            {"dst": "0.0.0.0/0", "gw": "198.19.0.1"},
            {"dst": "198.18.0.0/15"},
            {"dst": "::/0", "gw": "fd00::1"},
        ]});
        retain_routes(&mut r, |dst| dst != Some(default_dst(Family::V4)));
        assert_eq!(
            r["routes"],
            json!([{"dst": "198.18.0.0/15"}, {"dst": "::/0", "gw": "fd00::1"}])
        );
        let mut empty = json!({"cniVersion": "1.0.0"});
        routes_mut(&mut empty)
            .expect("routes")
            .push(json!({"dst": "0.0.0.0/0", "gw": "198.18.5.1"}));
        assert_eq!(empty["routes"][0]["gw"], "198.18.5.1");
    }
}
