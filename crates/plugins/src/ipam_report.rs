//! Rendering for `netattach ipam ls` and `netattach ipam show`: held addresses — pool, address,
//! pod, interface, container id, node, age — as an aligned table for people or as JSON for
//! scripts, and a pool's usage (range, size, used, free) above its allocations.
//!
//! Table cells never lie about what is unknown: a pod that no longer exists shows `gone` as its
//! node, an unknown node or age shows `-`. JSON carries the same facts as explicit fields
//! (`null` when unknown). The current time is a parameter, so the output is deterministic.

use netattach_ippool::admin::{Holding, PodState};
use netattach_ippool::usage::PoolUsage;
use serde_json::{Value, json};

/// The table header, in column order.
pub const COLUMNS: [&str; 7] = ["POOL", "IP", "POD", "INTERFACE", "CONTAINER", "NODE", "AGE"];

/// A count as JSON: a number when it fits in 64 bits (every IPv4 and most IPv6 pools), else a
/// decimal string (JSON numbers beyond that lose precision in most readers).
fn count(n: u128) -> Value {
    match u64::try_from(n) {
        Ok(v) => json!(v),
        Err(_) => json!(n.to_string()),
    }
}

/// How long ago `since` was, for people: `42s`, `17m`, `5h`, `3d`.
pub fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn node_cell(h: &Holding) -> String {
    match &h.pod {
        None => "-".into(),
        Some(p) => match p.state {
            PodState::Gone => "gone".into(),
            PodState::Live => p.node.clone().unwrap_or_else(|| "-".into()),
            PodState::Terminating => format!("{} (terminating)", p.node.as_deref().unwrap_or("-")),
        },
    }
}

fn dash_if_empty(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.to_string() }
}

fn row(h: &Holding, now: u64) -> [String; 7] {
    [
        h.pool.clone(),
        h.ip.to_string(),
        dash_if_empty(&h.holder.podref),
        dash_if_empty(&h.holder.ifname),
        dash_if_empty(short(&h.holder.id)),
        node_cell(h),
        h.since
            .map_or_else(|| "-".into(), |(t, _)| human_age(now.saturating_sub(t))),
    ]
}

/// One held address as a JSON object.
pub fn holding_json(h: &Holding, now: u64) -> Value {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    json!({
        "pool": h.pool,
        "address": h.ip.to_string(),
        "podref": non_empty(&h.holder.podref),
        "ifname": h.holder.ifname,
        "containerID": h.holder.id,
        "node": h.pod.as_ref().and_then(|p| p.node.clone()),
        "podState": h.pod.as_ref().map(|p| p.state.as_str()),
        "allocatedAt": h.since.map(|(t, _)| t),
        "ageSource": h.since.map(|(_, s)| s.as_str()),
        "ageSeconds": h.since.map(|(t, _)| now.saturating_sub(t)),
    })
}

fn table(rows: &[[String; 7]]) -> String {
    let header = COLUMNS.map(str::to_string);
    let all: Vec<&[String; 7]> = std::iter::once(&header).chain(rows).collect();
    let widths: Vec<usize> = (0..COLUMNS.len())
        .map(|i| all.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in all {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `netattach ipam ls`: every held address, ordered by pool and address; a table with a count
/// line, or a JSON array.
pub fn render_holdings(holdings: &[Holding], now: u64, as_json: bool) -> String {
    let mut sorted: Vec<&Holding> = holdings.iter().collect();
    sorted.sort_by(|a, b| (&a.pool, a.ip).cmp(&(&b.pool, b.ip)));
    if as_json {
        let items: Vec<Value> = sorted.iter().map(|h| holding_json(h, now)).collect();
        return serde_json::to_string_pretty(&items).unwrap_or_default() + "\n";
    }
    let rows: Vec<[String; 7]> = sorted.iter().map(|h| row(h, now)).collect();
    let mut out = table(&rows);
    out.push_str(&format!("{} allocation(s)\n", sorted.len()));
    out
}

/// `netattach ipam show`: one pool's range and usage, then its allocations. `location` says
/// where the pool lives (`namespace kube-system`, `local store /var/lib/netattach/ipam`).
pub fn render_pool(
    usage: &PoolUsage,
    location: &str,
    holdings: &[Holding],
    now: u64,
    as_json: bool,
) -> String {
    if as_json {
        let mut sorted: Vec<&Holding> = holdings.iter().collect();
        sorted.sort_by_key(|h| h.ip);
        let v = json!({
            "pool": usage.name,
            "namespace": (!usage.namespace.is_empty()).then(|| usage.namespace.clone()),
            "location": location,
            "range": usage.range.to_string(),
            "size": count(usage.size),
            "used": count(usage.used),
            "free": count(usage.free),
            "exhausted": usage.exhausted,
            "allocations": sorted.iter().map(|h| holding_json(h, now)).collect::<Vec<_>>(),
        });
        return serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    }
    let mut out = format!(
        "pool:      {}\nlocation:  {location}\nrange:     {}\nsize:      {} usable address(es)\n\
         used:      {}\nfree:      {}{}\n\n",
        usage.name,
        usage.range,
        usage.size,
        usage.used,
        usage.free,
        if usage.exhausted { " (exhausted)" } else { "" },
    );
    out.push_str(&render_holdings(holdings, now, false));
    out
}

#[cfg(test)]
mod tests {
    use netattach_ipam::pool::Reservation;
    use netattach_ippool::admin::{AgeSource, PodInfo};

    use super::*;

    fn holding(ip: &str, podref: &str, pod: Option<PodInfo>, since: Option<(u64, AgeSource)>) -> Holding {
        Holding {
            pool: "198.18.0.0-24".into(),
            ip: ip.parse().expect("ip"),
            offset: 0,
            holder: Reservation {
                id: "0123456789abcdef".into(),
                podref: podref.into(),
                ifname: "net1".into(),
                time: None,
            },
            pod,
            since,
        }
    }

    fn live(node: &str) -> Option<PodInfo> {
        Some(PodInfo {
            state: PodState::Live,
            node: Some(node.into()),
            created: Some(1),
        })
    }

    #[test]
    fn table_has_the_columns_aligned_and_marks_the_unknown() {
        let out = render_holdings(
            &[
                holding("198.18.0.10", "", None, None),
                holding(
                    "198.18.0.2",
                    "default/web",
                    live("node-1"),
                    Some((9_910, AgeSource::Reservation)),
                ),
                holding(
                    "198.18.0.3",
                    "default/old",
                    Some(PodInfo::gone()),
                    Some((10_000 - 7_200, AgeSource::Allocation)),
                ),
            ],
            10_000,
            false,
        );
        let lines: Vec<&str> = out.lines().collect();
        let cells = |i: usize| -> Vec<&str> { lines[i].split_whitespace().collect() };
        assert_eq!(cells(0), COLUMNS);
        assert_eq!(
            cells(1),
            [
                "198.18.0.0-24",
                "198.18.0.2",
                "default/web",
                "net1",
                "0123456789ab",
                "node-1",
                "90s"
            ]
        );
        assert_eq!(
            cells(2),
            [
                "198.18.0.0-24",
                "198.18.0.3",
                "default/old",
                "net1",
                "0123456789ab",
                "gone",
                "2h"
            ]
        );
        assert_eq!(
            cells(3),
            [
                "198.18.0.0-24",
                "198.18.0.10",
                "-",
                "net1",
                "0123456789ab",
                "-",
                "-"
            ]
        );
        assert_eq!(lines[4], "3 allocation(s)");
        // Aligned: every column starts at the same character position on every row.
        let starts = |l: &str| -> Vec<usize> {
            let mut v = vec![0];
            let b = l.as_bytes();
            for i in 1..b.len() {
                if b[i] != b' ' && b[i - 1] == b' ' && i >= 2 && b[i - 2] == b' ' {
                    v.push(i);
                }
            }
            v
        };
        assert_eq!(starts(lines[0]), starts(lines[1]));
        assert_eq!(starts(lines[0]), starts(lines[3]));
    }

    #[test]
    fn terminating_pods_are_marked() {
        let mut h = holding("198.18.0.2", "ns/p", live("n1"), None);
        if let Some(p) = h.pod.as_mut() {
            p.state = PodState::Terminating;
        }
        assert_eq!(node_cell(&h), "n1 (terminating)");
    }

    #[test]
    fn json_carries_every_fact_with_null_for_unknown() {
        let out = render_holdings(
            &[
                holding("198.18.0.2", "ns/p", live("n1"), Some((40, AgeSource::Pod))),
                holding("198.18.0.3", "", None, None),
            ],
            100,
            true,
        );
        let v: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v[0]["address"], "198.18.0.2");
        assert_eq!(v[0]["podref"], "ns/p");
        assert_eq!(v[0]["node"], "n1");
        assert_eq!(v[0]["podState"], "live");
        assert_eq!(v[0]["allocatedAt"], 40);
        assert_eq!(v[0]["ageSource"], "pod");
        assert_eq!(v[0]["ageSeconds"], 60);
        assert_eq!(v[0]["containerID"], "0123456789abcdef");
        assert_eq!(v[1]["podref"], Value::Null);
        assert_eq!(v[1]["node"], Value::Null);
        assert_eq!(v[1]["allocatedAt"], Value::Null);
    }

    #[test]
    fn pool_view_shows_usage_then_allocations() {
        let usage = PoolUsage {
            namespace: "kube-system".into(),
            name: "198.18.0.0-24".into(),
            range: "198.18.0.0/24".parse().expect("cidr"),
            size: 254,
            used: 1,
            free: 253,
            exhausted: false,
        };
        let hs = [holding("198.18.0.2", "ns/p", live("n1"), None)];
        let text = render_pool(&usage, "namespace kube-system", &hs, 0, false);
        assert!(text.starts_with("pool:      198.18.0.0-24\n"), "{text}");
        for want in [
            "range:     198.18.0.0/24",
            "size:      254",
            "used:      1",
            "free:      253",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        assert!(text.contains("1 allocation(s)"), "{text}");
        let v: Value =
            serde_json::from_str(&render_pool(&usage, "namespace kube-system", &hs, 0, true)).expect("json");
        assert_eq!(v["size"], 254);
        assert_eq!(v["free"], 253);
        assert_eq!(v["exhausted"], false);
        assert_eq!(v["allocations"][0]["address"], "198.18.0.2");
        // Sizes beyond 64 bits stay exact, as strings.
        assert_eq!(count(1u128 << 70), json!("1180591620717411303424"));
    }
}
