//! Address ranges: parsing the whereabouts range forms (`CIDR` and `A-B/prefix`), `range_start`,
//! `range_end`, `exclude` and `gateway`; offset arithmetic (offsets from the network address, as
//! whereabouts stores them in `IPPool`s, but as `u128` so IPv6 ranges of any size work); the
//! lowest-free-address search; and whereabouts' `IPPoolName` ([`pool_name`]).
//!
//! Usable addresses by default:
//! * IPv4 up to /30: network+1 ..= broadcast−1 (network and broadcast are never allocated).
//! * IPv4 /31 and /32: every address (RFC 3021 point-to-point links, host routes). whereabouts
//!   allocates nothing in these; we allocate all of them.
//! * IPv6 up to /126: network+1 ..= last address (the subnet-router anycast address, offset 0,
//!   is never allocated; IPv6 has no broadcast).
//! * IPv6 /127 and /128: every address (RFC 6164).
//!
//! Stricter than whereabouts: a `range_start`/`range_end` outside the usable range, an end
//! below the start, an `exclude` entry outside the range, and a gateway outside the range are
//! errors instead of being silently ignored. The gateway is never allocated.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::error::ConfigError;

/// One configured address range (one entry of whereabouts' `ipRanges`).
///
/// Serialized in its whereabouts form ([`IpRangeSpec`]) and parsed back through
/// [`IpRange::parse`], so a range that crosses a process boundary (the node daemon's socket) is
/// validated again on arrival.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "IpRangeSpec", into = "IpRangeSpec")]
pub struct IpRange {
    /// The CIDR, normalised (host bits dropped).
    pub cidr: IpNet,
    /// First allocatable address (inclusive).
    pub start: IpAddr,
    /// Last allocatable address (inclusive).
    pub end: IpAddr,
    /// Excluded subnets (normalised; bare IPs become /32 or /128).
    pub exclude: Vec<IpNet>,
    /// The gateway: reported to callers, never allocated.
    pub gateway: Option<IpAddr>,
}

/// The whereabouts keys of one range, as written in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IpRangeSpec {
    /// `range`: a CIDR.
    pub range: String,
    /// `range_start`.
    pub range_start: String,
    /// `range_end`.
    pub range_end: String,
    /// `exclude`: CIDRs.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

impl From<IpRange> for IpRangeSpec {
    fn from(r: IpRange) -> Self {
        IpRangeSpec {
            range: r.cidr.to_string(),
            range_start: r.start.to_string(),
            range_end: r.end.to_string(),
            exclude: r.exclude.iter().map(ToString::to_string).collect(),
            gateway: r.gateway.map(|g| g.to_string()),
        }
    }
}

impl TryFrom<IpRangeSpec> for IpRange {
    type Error = ConfigError;

    fn try_from(s: IpRangeSpec) -> Result<Self, ConfigError> {
        IpRange::parse(
            &s.range,
            Some(&s.range_start),
            Some(&s.range_end),
            &s.exclude,
            s.gateway.as_deref(),
        )
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}..={})", self.cidr, self.start, self.end)
    }
}

/// Convert an address to its integer value.
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Convert an integer to an address of the given family (IPv4 keeps the low 32 bits).
fn u128_to_ip(v: u128, v4: bool) -> IpAddr {
    if v4 {
        // Callers only pass values inside an IPv4 network; truncation cannot lose information.
        IpAddr::V4(Ipv4Addr::from((v & u128::from(u32::MAX)) as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// Parse an IP address like Go's `ParseIPSloppy`: also accepts IPv4 octets with leading zeros
/// (`192.168.004.1`, read as decimal).
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// Parse `ip/prefix` (host bits kept) sloppily, see [`parse_ip_sloppy`].
pub fn parse_net_sloppy(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(n);
    }
    let (ip, prefix) = s.split_once('/')?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    match parse_ip_sloppy(ip)? {
        IpAddr::V4(a) => Ipv4Net::new(a, prefix).ok().map(IpNet::V4),
        IpAddr::V6(a) => Ipv6Net::new(a, prefix).ok().map(IpNet::V6),
    }
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// whereabouts' `IPPoolName`: `normalize(cidr)` or `<network_name>-normalize(cidr)`, where
/// `normalize` appends `0` if the string ends in `:` and then replaces `:` and `/` with `-`.
///
/// `192.168.4.0/24` → `192.168.4.0-24`; `caa5::/64` → `caa5---64`; with network name
/// `storage` → `storage-192.168.4.0-24`. An empty network name counts as none.
pub fn pool_name(network_name: Option<&str>, cidr: &IpNet) -> String {
    let normalized = normalize_range(&cidr.to_string());
    match network_name {
        Some(n) if !n.is_empty() => format!("{n}-{normalized}"),
        _ => normalized,
    }
}

/// whereabouts' `normalizeRange`.
pub fn normalize_range(range: &str) -> String {
    let mut s = range.to_string();
    if s.ends_with(':') {
        s.push('0');
    }
    s.replace([':', '/'], "-")
}

impl IpRange {
    /// Parse a range as whereabouts does, but strictly (see the module doc).
    ///
    /// `range` is `192.168.4.0/24` (host bits dropped) or `192.168.2.225-192.168.2.230/28`
    /// (start `A`, end `B`, CIDR `B/prefix`). Field names in errors are `range`, `range_start`,
    /// `range_end`, `exclude[i]` and `gateway`; callers prefix them with their path.
    pub fn parse(
        range: &str,
        range_start: Option<&str>,
        range_end: Option<&str>,
        exclude: &[String],
        gateway: Option<&str>,
    ) -> Result<IpRange, ConfigError> {
        let bad_range = || {
            ConfigError::invalid(
                "range",
                Some(range.to_string()),
                "is not a CIDR or a-b/prefix range",
                "write it like 192.168.4.0/24 or 192.168.4.10-192.168.4.50/24",
            )
        };
        let trimmed = range.trim();
        if trimmed.is_empty() {
            return Err(ConfigError::invalid(
                "range",
                Some(range.to_string()),
                "is empty",
                "write it like 192.168.4.0/24",
            ));
        }
        let (cidr, dash_start, dash_end) = match trimmed.split_once('-') {
            Some((a, b)) => {
                let a_ip = parse_ip_sloppy(a).ok_or_else(bad_range)?;
                let b_net = parse_net_sloppy(b).ok_or_else(bad_range)?;
                let cidr = b_net.trunc();
                if !cidr.contains(&a_ip) {
                    return Err(ConfigError::invalid(
                        "range",
                        Some(range.to_string()),
                        format!("has its start {a_ip} outside the CIDR {cidr}"),
                        format!("make the part before `-` an address inside {cidr}"),
                    ));
                }
                (cidr, Some(a_ip), Some(b_net.addr()))
            }
            None => (
                parse_net_sloppy(trimmed).ok_or_else(bad_range)?.trunc(),
                None,
                None,
            ),
        };
        let v4 = matches!(cidr, IpNet::V4(_));
        let net = ip_to_u128(cidr.network());
        let last = size_minus_one(&cidr);
        let (umin, umax) = usable_bounds(&cidr);
        let first_usable = u128_to_ip(net + umin, v4);
        let last_usable = u128_to_ip(net + umax, v4);
        let usable_text = format!("{first_usable}..={last_usable}");
        debug_assert!(umax <= last);

        let parse_bound = |field: &str, given: Option<&str>, dash: Option<IpAddr>, default: u128| {
            let given = given.map(str::trim).filter(|s| !s.is_empty());
            let ip = match (given, dash) {
                (Some(s), dash) => {
                    let ip = parse_ip_sloppy(s).ok_or_else(|| {
                        ConfigError::invalid(
                            field,
                            Some(s.to_string()),
                            "is not an IP address",
                            format!("write an address in {usable_text}"),
                        )
                    })?;
                    if let Some(d) = dash
                        && d != ip
                    {
                        return Err(ConfigError::invalid(
                            field,
                            Some(s.to_string()),
                            format!("contradicts the range `{range}`, which sets it to {d}"),
                            format!("remove `{field}` or use the plain CIDR form in `range`"),
                        ));
                    }
                    ip
                }
                (None, Some(d)) => d,
                (None, None) => return Ok(net + default),
            };
            if ip.is_ipv4() != v4 {
                return Err(ConfigError::invalid(
                    field,
                    Some(ip.to_string()),
                    format!(
                        "is {} but the range {cidr} is {}",
                        family(&ip),
                        family(&cidr.addr())
                    ),
                    format!("use an address in {usable_text}"),
                ));
            }
            let v = ip_to_u128(ip);
            if !cidr.contains(&ip) || v < net + umin || v > net + umax {
                return Err(ConfigError::invalid(
                    field,
                    Some(ip.to_string()),
                    format!("is outside the usable addresses {usable_text} of {cidr}"),
                    format!("use an address in {usable_text} (whereabouts would silently ignore it)"),
                ));
            }
            Ok(v)
        };
        let start = parse_bound("range_start", range_start, dash_start, umin)?;
        let end = parse_bound("range_end", range_end, dash_end, umax)?;
        if end < start {
            return Err(ConfigError::invalid(
                "range_end",
                Some(u128_to_ip(end, v4).to_string()),
                format!("is below range_start {}", u128_to_ip(start, v4)),
                "make range_end greater than or equal to range_start",
            ));
        }

        let mut excl = Vec::with_capacity(exclude.len());
        for (i, e) in exclude.iter().enumerate() {
            let field = format!("exclude[{i}]");
            let n = if e.contains('/') {
                parse_net_sloppy(e).map(|n| n.trunc())
            } else {
                parse_ip_sloppy(e).map(IpNet::from)
            }
            .ok_or_else(|| {
                ConfigError::invalid(
                    field.clone(),
                    Some(e.clone()),
                    "is not a CIDR or an IP address",
                    format!(
                        "write a subnet of {cidr} like {} or a single address",
                        cidr.network()
                    ),
                )
            })?;
            if !cidr.contains(&n) {
                return Err(ConfigError::invalid(
                    field,
                    Some(e.clone()),
                    format!("is outside the range {cidr}"),
                    format!("exclude only subnets or addresses inside {cidr}, or remove the entry"),
                ));
            }
            excl.push(n);
        }

        let gateway = match gateway.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(g) => {
                let ip = parse_ip_sloppy(g).ok_or_else(|| {
                    ConfigError::invalid(
                        "gateway",
                        Some(g.to_string()),
                        "is not an IP address",
                        format!("write the router's address inside {cidr}, or remove `gateway`"),
                    )
                })?;
                if ip.is_ipv4() != v4 {
                    return Err(ConfigError::invalid(
                        "gateway",
                        Some(g.to_string()),
                        format!(
                            "is {} but the range {cidr} is {}",
                            family(&ip),
                            family(&cidr.addr())
                        ),
                        "give the gateway of the same address family as the range",
                    ));
                }
                if !cidr.contains(&ip) {
                    return Err(ConfigError::invalid(
                        "gateway",
                        Some(g.to_string()),
                        format!("is outside the range {cidr}"),
                        format!("use the router's address inside {cidr}, or remove `gateway`"),
                    ));
                }
                Some(ip)
            }
        };

        Ok(IpRange {
            cidr,
            start: u128_to_ip(start, v4),
            end: u128_to_ip(end, v4),
            exclude: excl,
            gateway,
        })
    }

    fn is_v4(&self) -> bool {
        matches!(self.cidr, IpNet::V4(_))
    }

    fn net_u128(&self) -> u128 {
        ip_to_u128(self.cidr.network())
    }

    /// Offset of `ip` from the network address, if `ip` is in the CIDR.
    pub fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        if ip.is_ipv4() != self.is_v4() || !self.cidr.contains(&ip) {
            return None;
        }
        Some(ip_to_u128(ip) - self.net_u128())
    }

    /// The address at `offset` from the network address, if it is in the CIDR.
    pub fn ip_at(&self, offset: u128) -> Option<IpAddr> {
        if offset > size_minus_one(&self.cidr) {
            return None;
        }
        Some(u128_to_ip(self.net_u128() + offset, self.is_v4()))
    }

    /// Whether `ip` is inside the CIDR.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.offset_of(ip).is_some()
    }

    /// Offsets of `start` and `end`, clamped to the usable addresses of the CIDR (so a
    /// hand-built `IpRange` cannot hand out the network or broadcast address).
    pub fn bounds(&self) -> (u128, u128) {
        let net = self.net_u128();
        let (umin, umax) = usable_bounds(&self.cidr);
        let s = if self.start.is_ipv4() == self.is_v4() {
            ip_to_u128(self.start).saturating_sub(net)
        } else {
            umin
        };
        let e = if self.end.is_ipv4() == self.is_v4() {
            ip_to_u128(self.end).saturating_sub(net)
        } else {
            umax
        };
        (s.max(umin), e.min(umax))
    }

    /// Whether the address is one that is never handed out whatever the bounds: the network or
    /// broadcast address (IPv4 ≤ /30), the IPv6 subnet-router anycast address (≤ /126), or the
    /// gateway. Returns the reason.
    pub fn reserved_reason(&self, ip: IpAddr) -> Option<&'static str> {
        let off = self.offset_of(ip)?;
        let (umin, umax) = usable_bounds(&self.cidr);
        if off < umin {
            return Some(if self.is_v4() {
                "it is the network address"
            } else {
                "it is the subnet-router anycast address"
            });
        }
        if off > umax {
            return Some("it is the broadcast address");
        }
        if self.gateway == Some(ip) {
            return Some("it is the gateway");
        }
        None
    }

    /// Whether `ip` may be handed out dynamically: inside `[start, end]`, not excluded, not the
    /// gateway, not the network or broadcast address.
    pub fn is_allocatable(&self, ip: IpAddr) -> bool {
        let Some(off) = self.offset_of(ip) else {
            return false;
        };
        let (s, e) = self.bounds();
        off >= s && off <= e && self.reserved_reason(ip).is_none() && !self.blocked_offset(off)
    }

    fn blocked_offset(&self, off: u128) -> bool {
        self.blocked().iter().any(|&(a, b)| a <= off && off <= b)
    }

    /// Sorted, merged offset intervals that are never allocated (exclude entries and the
    /// gateway), clipped to the CIDR.
    pub fn blocked(&self) -> Vec<(u128, u128)> {
        let net = self.net_u128();
        let mut iv: Vec<(u128, u128)> = self
            .exclude
            .iter()
            .filter(|n| self.cidr.contains(*n))
            .map(|n| {
                let a = ip_to_u128(n.network()) - net;
                (a, a + size_minus_one(n))
            })
            .collect();
        if let Some(g) = self.gateway.and_then(|g| self.offset_of(g)) {
            iv.push((g, g));
        }
        iv.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(iv.len());
        for (a, b) in iv {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }

    /// Number of allocatable addresses, computed arithmetically (no iteration).
    pub fn capacity(&self) -> u128 {
        let (s, e) = self.bounds();
        if e < s {
            return 0;
        }
        // e - s + 1 cannot overflow: s >= 1 whenever e == u128::MAX (IPv6 /0 keeps offset 0 out).
        let total = (e - s).saturating_add(1);
        let blocked: u128 = self
            .blocked()
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.max(s), b.min(e));
                if b < a { 0 } else { (b - a).saturating_add(1) }
            })
            .sum();
        total - blocked
    }

    /// The lowest allocatable address whose offset is not in `used`.
    pub fn first_free(&self, used: &BTreeSet<u128>) -> Option<IpAddr> {
        self.first_free_offset(used).and_then(|o| self.ip_at(o))
    }

    /// Offset form of [`IpRange::first_free`]. Runs of used offsets are skipped in one step
    /// through the ordered set, excluded blocks arithmetically: the cost is O(used + excludes),
    /// independent of the range size.
    pub fn first_free_offset(&self, used: &BTreeSet<u128>) -> Option<u128> {
        let (s, e) = self.bounds();
        let blocked = self.blocked();
        let mut cand = s;
        let mut bi = 0;
        loop {
            if cand > e {
                return None;
            }
            while bi < blocked.len() && blocked[bi].1 < cand {
                bi += 1;
            }
            if let Some(&(a, b)) = blocked.get(bi)
                && a <= cand
            {
                cand = b.checked_add(1)?;
                continue;
            }
            // Skip the run of consecutive used offsets starting at `cand`.
            let mut next = cand;
            for &u in used.range(cand..) {
                if u != next {
                    break;
                }
                match next.checked_add(1) {
                    Some(n) => next = n,
                    None => return None,
                }
            }
            if next == cand {
                return Some(cand);
            }
            cand = next;
        }
    }

    /// The prefix length of the CIDR.
    pub fn prefix_len(&self) -> u8 {
        self.cidr.prefix_len()
    }

    /// `ip` with this range's prefix length (the form a CNI result carries).
    pub fn with_prefix(&self, ip: IpAddr) -> Option<IpNet> {
        IpNet::new(ip, self.prefix_len()).ok()
    }
}

/// Largest offset in a network: 2^(host bits) − 1.
fn size_minus_one(net: &IpNet) -> u128 {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

/// Offsets of the first and last usable addresses by default (see the module doc).
fn usable_bounds(net: &IpNet) -> (u128, u128) {
    let last = size_minus_one(net);
    match net {
        IpNet::V4(n) if n.prefix_len() <= 30 => (1, last - 1),
        IpNet::V4(_) => (0, last),
        IpNet::V6(n) if n.prefix_len() <= 126 => (1, last),
        IpNet::V6(_) => (0, last),
    }
}
