//! `netattach ipam ls`: the allocations of a store as a table or JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use netattach_ipam::store::Allocation;
use serde_json::json;

/// Renders allocations as an aligned table (address order), or as JSON lines' array.
pub fn render(allocations: &[Allocation], as_json: bool) -> String {
    let mut sorted: Vec<&Allocation> = allocations.iter().collect();
    sorted.sort_by(|a, b| (a.pool.as_str(), a.ip).cmp(&(b.pool.as_str(), b.ip)));
    if as_json {
        let items: Vec<_> = sorted
            .iter()
            .map(|a| {
                json!({
                    "address": a.ip.to_string(),
                    "pool": a.pool,
                    "containerID": a.container_id,
                    "podref": a.podref,
                    "ifname": a.ifname,
                    "allocatedAt": a.allocated_at,
                })
            })
            .collect();
        return serde_json::to_string_pretty(&items).unwrap_or_default() + "\n";
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut rows = vec![[
        "ADDRESS".to_string(),
        "POOL".into(),
        "OWNER".into(),
        "IFNAME".into(),
        "AGE".into(),
    ]];
    for a in &sorted {
        let owner = a
            .podref
            .clone()
            .unwrap_or_else(|| format!("container {}", short(&a.container_id)));
        let age = if a.allocated_at == 0 {
            "?".to_string()
        } else {
            human_age(now.saturating_sub(a.allocated_at))
        };
        rows.push([a.ip.to_string(), a.pool.clone(), owner, a.ifname.clone(), age]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!("{} allocation(s)\n", sorted.len()));
    out
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(ip: &str, podref: Option<&str>) -> Allocation {
        Allocation {
            ip: ip.parse().expect("ip"),
            cidr: format!("{ip}/24").parse().expect("cidr"),
            gateway: None,
            pool: "198.18.0.0-24".into(),
            container_id: "0123456789abcdef".into(),
            podref: podref.map(str::to_owned),
            ifname: "net1".into(),
            allocated_at: 0,
        }
    }

    #[test]
    fn table_lists_address_pool_owner_ifname_and_age() {
        let out = render(
            &[
                alloc("198.18.0.3", None),
                alloc("198.18.0.2", Some("default/web")),
            ],
            false,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("ADDRESS"));
        assert!(lines[1].starts_with("198.18.0.2") && lines[1].contains("default/web"));
        assert!(lines[2].contains("container 0123456789ab"));
        assert_eq!(lines[3], "2 allocation(s)");
    }

    #[test]
    fn json_is_an_array_of_objects() {
        let out = render(&[alloc("198.18.0.2", Some("ns/p"))], true);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v[0]["address"], "198.18.0.2");
        assert_eq!(v[0]["podref"], "ns/p");
    }
}
