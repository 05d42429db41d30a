//! Unit tests of range parsing, offsets, capacity, first_free and pool names.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::net::IpAddr;

use netattach_ipam::{ErrorKind, IpRange, pool_name};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn r(s: &str) -> IpRange {
    IpRange::parse(s, None, None, &[], None).unwrap()
}

fn err(range: &str, start: Option<&str>, end: Option<&str>, excl: &[&str], gw: Option<&str>) -> String {
    let excl: Vec<String> = excl.iter().map(|s| s.to_string()).collect();
    let e = IpRange::parse(range, start, end, &excl, gw).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    e.to_string()
}

#[test]
fn cidr_form_defaults() {
    let x = r("192.168.4.0/24");
    assert_eq!(x.cidr.to_string(), "192.168.4.0/24");
    assert_eq!(x.start, ip("192.168.4.1"));
    assert_eq!(x.end, ip("192.168.4.254"));
    assert_eq!(x.capacity(), 254);
    assert_eq!(x.first_free(&BTreeSet::new()), Some(ip("192.168.4.1")));
}

#[test]
fn host_bits_dropped() {
    let x = r("192.168.10.1/24");
    assert_eq!(x.cidr.to_string(), "192.168.10.0/24");
    assert_eq!(x.start, ip("192.168.10.1"));
    let y = r("fd00::1234/64");
    assert_eq!(y.cidr.to_string(), "fd00::/64");
}

#[test]
fn dash_form() {
    let x = r("192.168.2.225-192.168.2.230/28");
    assert_eq!(x.cidr.to_string(), "192.168.2.224/28");
    assert_eq!(x.start, ip("192.168.2.225"));
    assert_eq!(x.end, ip("192.168.2.230"));
    assert_eq!(x.capacity(), 6);
    // A outside the CIDR.
    let m = err("192.168.3.1-192.168.2.230/28", None, None, &[], None);
    assert!(
        m.contains("field `range`") && m.contains("192.168.3.1") && m.contains("fix:"),
        "{m}"
    );
    // Explicit range_start agreeing with A is fine; contradicting it is an error.
    IpRange::parse(
        "192.168.2.225-192.168.2.230/28",
        Some("192.168.2.225"),
        None,
        &[],
        None,
    )
    .unwrap();
    let m = err(
        "192.168.2.225-192.168.2.230/28",
        Some("192.168.2.226"),
        None,
        &[],
        None,
    );
    assert!(
        m.contains("field `range_start`") && m.contains("contradicts"),
        "{m}"
    );
    // v6 dash form.
    let v6 = r("fd00::10-fd00::20/64");
    assert_eq!((v6.start, v6.end), (ip("fd00::10"), ip("fd00::20")));
    assert_eq!(v6.capacity(), 17);
}

#[test]
fn sloppy_leading_zeros() {
    let x = r("192.168.004.0/24");
    assert_eq!(x.cidr.to_string(), "192.168.4.0/24");
}

#[test]
fn small_v4_prefixes() {
    let x = r("10.0.0.0/30");
    assert_eq!(
        (x.start, x.end, x.capacity()),
        (ip("10.0.0.1"), ip("10.0.0.2"), 2)
    );
    assert!(!x.is_allocatable(ip("10.0.0.0")));
    assert!(!x.is_allocatable(ip("10.0.0.3")));
    let x = r("10.0.0.0/31");
    assert_eq!(
        (x.start, x.end, x.capacity()),
        (ip("10.0.0.0"), ip("10.0.0.1"), 2)
    );
    let x = r("10.0.0.7/32");
    assert_eq!(
        (x.start, x.end, x.capacity()),
        (ip("10.0.0.7"), ip("10.0.0.7"), 1)
    );
    assert_eq!(x.first_free(&BTreeSet::new()), Some(ip("10.0.0.7")));
    assert_eq!(x.first_free(&[0u128].into()), None);
}

#[test]
fn v6_sizes() {
    let x = r("fd00::/64");
    assert_eq!(x.start, ip("fd00::1"));
    assert_eq!(x.end, ip("fd00::ffff:ffff:ffff:ffff"));
    assert_eq!(x.capacity(), (1u128 << 64) - 1);
    let x = r("fd00::/120");
    assert_eq!(
        (x.start, x.end, x.capacity()),
        (ip("fd00::1"), ip("fd00::ff"), 255)
    );
    let x = r("fd00::/48");
    assert_eq!(x.capacity(), (1u128 << 80) - 1);
    let x = r("::/0");
    assert_eq!(x.capacity(), u128::MAX);
    assert_eq!(x.first_free(&[1u128, 2].into()), Some(ip("::3")));
    assert_eq!(
        x.ip_at(u128::MAX),
        Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
    );
    let x = r("fd00::/127");
    assert_eq!(x.capacity(), 2);
    let x = r("fd00::5/128");
    assert_eq!((x.start, x.capacity()), (ip("fd00::5"), 1));
}

#[test]
fn offsets() {
    let x = r("192.168.4.0/24");
    assert_eq!(x.offset_of(ip("192.168.4.5")), Some(5));
    assert_eq!(x.offset_of(ip("192.168.5.5")), None);
    assert_eq!(x.offset_of(ip("fd00::5")), None);
    assert_eq!(x.ip_at(255), Some(ip("192.168.4.255")));
    assert_eq!(x.ip_at(256), None);
    let y = r("fd00::/64");
    assert_eq!(y.offset_of(ip("fd00::1:0:0:0")), Some(1u128 << 48));
    assert!(y.contains(ip("fd00::ffff")));
}

#[test]
fn exclude_and_gateway_are_never_allocated() {
    let ex = vec!["192.168.4.0/29".to_string(), "192.168.4.9".to_string()];
    let x = IpRange::parse("192.168.4.0/24", None, None, &ex, Some("192.168.4.8")).unwrap();
    assert_eq!(x.exclude[1].to_string(), "192.168.4.9/32");
    assert_eq!(x.first_free(&BTreeSet::new()), Some(ip("192.168.4.10")));
    assert!(!x.is_allocatable(ip("192.168.4.8")));
    assert!(!x.is_allocatable(ip("192.168.4.3")));
    // 254 usable minus .1-.7 (7) minus .8 minus .9.
    assert_eq!(x.capacity(), 254 - 9);
    let g = IpRange::parse("10.0.0.0/30", None, None, &[], Some("10.0.0.1")).unwrap();
    assert_eq!(g.capacity(), 1);
    assert_eq!(g.first_free(&BTreeSet::new()), Some(ip("10.0.0.2")));
}

#[test]
fn huge_v6_exclude_skipped_arithmetically() {
    let ex = vec!["fd00::/65".to_string()];
    let x = IpRange::parse("fd00::/64", None, None, &ex, None).unwrap();
    assert_eq!(x.first_free(&BTreeSet::new()), Some(ip("fd00::8000:0:0:0")));
    assert_eq!(x.capacity(), 1u128 << 63);
    let used: BTreeSet<u128> = (0..10_000u128).map(|i| (1u128 << 63) + i).collect();
    assert_eq!(x.first_free(&used), Some(ip("fd00::8000:0:0:2710")));
}

#[test]
fn range_start_end() {
    let x = IpRange::parse(
        "192.168.4.0/24",
        Some("192.168.4.100"),
        Some("192.168.4.110"),
        &[],
        None,
    )
    .unwrap();
    assert_eq!(x.capacity(), 11);
    assert_eq!(x.first_free(&BTreeSet::new()), Some(ip("192.168.4.100")));
    let m = err("192.168.4.0/24", Some("192.168.5.1"), None, &[], None);
    assert!(
        m.contains("field `range_start`: value `192.168.5.1`") && m.contains("192.168.4.1..=192.168.4.254"),
        "{m}"
    );
    let m = err("192.168.4.0/24", None, Some("192.168.4.255"), &[], None);
    assert!(
        m.contains("field `range_end`: value `192.168.4.255`") && m.contains("fix:"),
        "{m}"
    );
    let m = err(
        "192.168.4.0/24",
        Some("192.168.4.50"),
        Some("192.168.4.10"),
        &[],
        None,
    );
    assert!(
        m.contains("field `range_end`") && m.contains("below range_start"),
        "{m}"
    );
    let m = err("192.168.4.0/24", Some("fd00::1"), None, &[], None);
    assert!(m.contains("IPv6") && m.contains("IPv4"), "{m}");
    let m = err("192.168.4.0/24", Some("banana"), None, &[], None);
    assert!(m.contains("is not an IP address"), "{m}");
}

#[test]
fn malformed_range() {
    let m = err("192.168.4.0/33", None, None, &[], None);
    assert_eq!(
        m,
        "field `range`: value `192.168.4.0/33` is not a CIDR or a-b/prefix range; fix: write it like \
         192.168.4.0/24 or 192.168.4.10-192.168.4.50/24"
    );
    for bad in ["", "192.168.4.0", "hello/24", "1.2.3.4-5.6.7.8", "fd00::/129"] {
        err(bad, None, None, &[], None);
    }
}

#[test]
fn exclude_errors() {
    let m = err("192.168.4.0/24", None, None, &["192.168.5.0/28"], None);
    assert!(
        m.contains("field `exclude[0]`: value `192.168.5.0/28` is outside the range 192.168.4.0/24"),
        "{m}"
    );
    let m = err("192.168.4.0/24", None, None, &["192.168.4.0/28", "nope"], None);
    assert!(
        m.contains("field `exclude[1]`: value `nope` is not a CIDR or an IP address"),
        "{m}"
    );
    let m = err("192.168.4.0/24", None, None, &["192.168.0.0/16"], None);
    assert!(m.contains("outside"), "{m}");
}

#[test]
fn gateway_errors() {
    let m = err("192.168.4.0/24", None, None, &[], Some("192.168.4.300"));
    assert!(
        m.contains("field `gateway`: value `192.168.4.300` is not an IP address"),
        "{m}"
    );
    let m = err("192.168.4.0/24", None, None, &[], Some("192.168.5.1"));
    assert!(
        m.contains("field `gateway`: value `192.168.5.1` is outside the range"),
        "{m}"
    );
    let m = err("192.168.4.0/24", None, None, &[], Some("fd00::1"));
    assert!(m.contains("field `gateway`") && m.contains("IPv6"), "{m}");
}

#[test]
fn pool_names() {
    assert_eq!(
        pool_name(None, &"192.168.4.0/24".parse().unwrap()),
        "192.168.4.0-24"
    );
    assert_eq!(pool_name(None, &"caa5::/64".parse().unwrap()), "caa5---64");
    assert_eq!(
        pool_name(Some("storage"), &"192.168.4.0/24".parse().unwrap()),
        "storage-192.168.4.0-24"
    );
    assert_eq!(
        pool_name(Some(""), &"192.168.4.0/24".parse().unwrap()),
        "192.168.4.0-24"
    );
    assert_eq!(
        pool_name(None, &"2001:db8:480:603d:304:403::/96".parse().unwrap()),
        "2001-db8-480-603d-304-403---96"
    );
    assert_eq!(netattach_ipam::range::normalize_range("fd00::"), "fd00--0");
    // The pool name is built from the normalised CIDR of a dash-form range.
    let x = r("192.168.2.225-192.168.2.230/28");
    assert_eq!(pool_name(None, &x.cidr), "192.168.2.224-28");
}

#[test]
fn hand_built_range_is_clamped() {
    let x = IpRange {
        cidr: "10.0.0.0/24".parse().unwrap(),
        start: ip("10.0.0.0"),
        end: ip("10.0.1.200"),
        exclude: vec![],
        gateway: None,
    };
    assert_eq!(x.bounds(), (1, 254));
    assert_eq!(x.first_free(&BTreeSet::new()), Some(ip("10.0.0.1")));
    assert_eq!(x.capacity(), 254);
}
