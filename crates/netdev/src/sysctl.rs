//! Reading and writing `/proc/sys` keys inside a given network namespace.
//!
//! `/proc/sys/net/*` shows the network namespace of the thread that opens it, so every access
//! runs inside [`Netns::run`]. Keys use the slash form relative to `/proc/sys`
//! (`net/ipv4/conf/net1/arp_notify`), never the dotted form, because interface names may
//! contain dots.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use tracing::debug;

use crate::error::{NetdevError, Result};
use crate::netns::Netns;

const SYSCTL_ROOT: &str = "/proc/sys";

fn key_path(key: &str) -> Result<PathBuf> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\0')
        || key.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(NetdevError::invalid(
            "sysctl key",
            key,
            "must be a relative slash-separated path under /proc/sys without empty, \".\" or \"..\" components",
        ));
    }
    Ok(PathBuf::from(SYSCTL_ROOT).join(key))
}

/// Write `value` to `/proc/sys/<key>` as seen from `ns`.
pub fn set(ns: &Netns, key: &str, value: &str) -> Result<()> {
    set_many(ns, &[(key, value)])
}

/// Write several keys in one visit to `ns` (one thread and one `setns`), in order; stops at the
/// first failure.
pub fn set_many(ns: &Netns, pairs: &[(&str, &str)]) -> Result<()> {
    let paths = pairs
        .iter()
        .map(|(k, v)| Ok((key_path(k)?, *v)))
        .collect::<Result<Vec<_>>>()?;
    debug!(?pairs, netns = %ns.path().display(), "sysctl set");
    ns.run(|| -> Result<()> {
        for (path, value) in &paths {
            let shown = format!("{} in {}", path.display(), ns.path().display());
            let mut f = fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| NetdevError::from_io("open sysctl", shown.clone(), e))?;
            f.write_all(value.as_bytes())
                .map_err(|e| NetdevError::from_io("write sysctl", shown, e))?;
        }
        Ok(())
    })?
}

/// Read `/proc/sys/<key>` as seen from `ns`, without the trailing newline.
pub fn get(ns: &Netns, key: &str) -> Result<String> {
    let path = key_path(key)?;
    let shown = format!("{} in {}", path.display(), ns.path().display());
    ns.run(|| -> Result<String> {
        let s =
            fs::read_to_string(&path).map_err(|e| NetdevError::from_io("read sysctl", shown.clone(), e))?;
        Ok(s.trim_end_matches('\n').to_string())
    })?
}

/// Make the kernel announce `ifname` itself: `net/ipv4/conf/<if>/arp_notify=1` (gratuitous
/// ARP on link-up and address change) and `net/ipv6/conf/<if>/ndisc_notify=1` (unsolicited
/// neighbour advertisements), as the CNI reference plugin does. Call before setting the link
/// up. The IPv6 key is best effort (absent when IPv6 is disabled); the IPv4 one must succeed.
pub fn enable_announcements(ns: &Netns, ifname: &str) -> Result<()> {
    crate::link::validate_ifname(ifname)?;
    set(ns, &format!("net/ipv4/conf/{ifname}/arp_notify"), "1")?;
    if let Err(e) = set(ns, &format!("net/ipv6/conf/{ifname}/ndisc_notify"), "1") {
        debug!(ifname, error = %e, "ndisc_notify not set");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_with_dotdot_or_absolute_paths_are_rejected() {
        for bad in [
            "",
            "/net/ipv4/ip_forward",
            "net/../kernel/x",
            "..",
            "net//x",
            "net/./x",
            "net/x/",
        ] {
            assert!(key_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            key_path("net/ipv4/conf/eth0.100/arp_notify").expect("ok"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/arp_notify")
        );
    }
}
