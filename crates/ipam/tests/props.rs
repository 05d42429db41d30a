//! Property tests: offset round trips, never allocating excluded or gateway addresses, no
//! duplicates and exhaustion exactly at capacity(), first_free is the lowest free address.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netattach_ipam::pool::{PoolDoc, allocate_in};
use netattach_ipam::{AllocationRequest, IpRange, IpamError, Owner};
use proptest::prelude::*;

fn range_of(net: IpNet) -> IpRange {
    IpRange::parse(&net.to_string(), None, None, &[], None).unwrap()
}

/// Reference lowest free offset: the answer is `start`, or right after a used offset, or right
/// after a blocked interval; take the smallest candidate that is free.
fn reference_first_free(r: &IpRange, used: &BTreeSet<u128>) -> Option<u128> {
    let (s, e) = r.bounds();
    let mut cands: BTreeSet<u128> = [s].into();
    cands.extend(used.iter().filter_map(|u| u.checked_add(1)));
    cands.extend(r.blocked().iter().filter_map(|(_, b)| b.checked_add(1)));
    cands
        .into_iter()
        .filter(|c| *c >= s && *c <= e && !used.contains(c))
        .find(|c| r.is_allocatable(r.ip_at(*c).unwrap()))
}

/// A small IPv4 range with random start/end, excludes inside it, and maybe a gateway.
fn small_v4_range() -> impl Strategy<Value = IpRange> {
    (any::<u32>(), 24u8..=30, any::<u64>()).prop_map(|(base, prefix, seed)| {
        let net = IpNet::new(IpAddr::V4(Ipv4Addr::from(base)), prefix)
            .unwrap()
            .trunc();
        let size = 1u32 << (32 - prefix);
        let first = u32::from(match net.network() {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => unreachable!(),
        });
        let mut rng = seed;
        let mut next = |m: u32| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((rng >> 33) as u32) % m
        };
        let a = 1 + next(size - 2);
        let b = 1 + next(size - 2);
        let (lo, hi) = (a.min(b), a.max(b));
        let mut excl = Vec::new();
        for _ in 0..next(4) {
            let p = prefix + 1 + (next(u32::from(32 - prefix)) as u8).min(31 - prefix);
            let p = p.min(32);
            let at = Ipv4Addr::from(first + next(size));
            excl.push(IpNet::new(IpAddr::V4(at), p).unwrap().trunc().to_string());
        }
        let gw = (next(2) == 0).then(|| Ipv4Addr::from(first + 1 + next(size - 2)).to_string());
        let lo = Ipv4Addr::from(first + lo).to_string();
        let hi = Ipv4Addr::from(first + hi).to_string();
        IpRange::parse(&net.to_string(), Some(&lo), Some(&hi), &excl, gw.as_deref()).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn v4_offsets_round_trip(base in any::<u32>(), prefix in 0u8..=32, host in any::<u32>()) {
        let net = IpNet::new(IpAddr::V4(Ipv4Addr::from(base)), prefix).unwrap().trunc();
        let r = range_of(net);
        let mask = if prefix == 0 { u32::MAX } else { (1u64 << (32 - prefix)) as u32 - 1 };
        let ip = IpAddr::V4(Ipv4Addr::from((base & !mask) | (host & mask)));
        let off = r.offset_of(ip).unwrap();
        prop_assert_eq!(r.ip_at(off), Some(ip));
        prop_assert_eq!(r.offset_of(r.ip_at(off).unwrap()), Some(off));
    }

    #[test]
    fn v6_offsets_round_trip(base in any::<u128>(), prefix in 0u8..=128, host in any::<u128>()) {
        let net = IpNet::new(IpAddr::V6(Ipv6Addr::from(base)), prefix).unwrap().trunc();
        let r = range_of(net);
        let mask = if prefix == 0 { u128::MAX } else { (1u128 << (128 - u32::from(prefix))).wrapping_sub(1) };
        let mask = if prefix == 128 { 0 } else { mask };
        let ip = IpAddr::V6(Ipv6Addr::from((base & !mask) | (host & mask)));
        let off = r.offset_of(ip).unwrap();
        prop_assert_eq!(r.ip_at(off), Some(ip));
        // Offsets past the end do not exist.
        if prefix > 0 {
            let size = if prefix == 128 { 1u128 } else { 1u128 << (128 - u32::from(prefix)) };
            prop_assert_eq!(r.ip_at(size), None);
        }
    }

    #[test]
    fn first_free_is_lowest_free_v4(r in small_v4_range(), used in proptest::collection::btree_set(0u128..256, 0..64)) {
        let got = r.first_free_offset(&used);
        prop_assert_eq!(got, reference_first_free(&r, &used));
        if let Some(o) = got {
            prop_assert!(r.is_allocatable(r.ip_at(o).unwrap()));
            // Nothing lower is free.
            let (s, _) = r.bounds();
            for lower in s..o {
                prop_assert!(used.contains(&lower) || !r.is_allocatable(r.ip_at(lower).unwrap()));
            }
        }
    }

    #[test]
    fn first_free_is_lowest_free_huge_v6(
        base in any::<u128>(),
        prefix in 0u8..=64,
        used_rel in proptest::collection::btree_set(0u128..2000, 0..200),
        excl_at in proptest::collection::vec((0u128..3000, 100u8..=128), 0..4),
    ) {
        let net = IpNet::new(IpAddr::V6(Ipv6Addr::from(base)), prefix).unwrap().trunc();
        let r0 = range_of(net);
        let excl: Vec<String> = excl_at
            .iter()
            .map(|(o, p)| IpNet::new(r0.ip_at(*o).unwrap(), *p).unwrap().trunc().to_string())
            .collect();
        let r = IpRange::parse(&net.to_string(), None, None, &excl, None).unwrap();
        let used: BTreeSet<u128> = used_rel.iter().map(|u| u + 1).collect();
        let got = r.first_free_offset(&used);
        prop_assert_eq!(got, reference_first_free(&r, &used));
        let (s, e) = r.bounds();
        let total_excl: u128 =
            r.blocked().iter().map(|(a, b)| ((*a).max(s), (*b).min(e))).filter(|(a, b)| a <= b).map(|(a, b)| b - a + 1).sum();
        let full = if prefix == 0 { u128::MAX } else { (1u128 << (128 - u32::from(prefix))) - 1 };
        prop_assert_eq!(r.capacity(), full - total_excl.min(full));
    }

    #[test]
    fn allocation_never_duplicates_and_exhausts_at_capacity(r in small_v4_range()) {
        let mut docs: BTreeMap<String, PoolDoc> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let cap = r.capacity();
        for i in 0.. {
            let req = AllocationRequest::new(Owner::new(format!("c{i}"), None, "net1"), vec![r.clone()], None);
            match allocate_in(&mut docs, &req, 0) {
                Ok((a, _)) => {
                    let ip = a[0].ip;
                    prop_assert!(r.is_allocatable(ip), "{} not allocatable", ip);
                    prop_assert!(Some(ip) != r.gateway);
                    prop_assert!(!r.exclude.iter().any(|n| n.contains(&ip)));
                    prop_assert!(seen.insert(ip), "duplicate {}", ip);
                }
                Err(IpamError::Exhausted { capacity, held, .. }) => {
                    prop_assert_eq!(capacity, cap);
                    prop_assert_eq!(held as u128, cap);
                    break;
                }
                Err(e) => prop_assert!(false, "unexpected error {}", e),
            }
        }
        prop_assert_eq!(seen.len() as u128, cap);
    }
}
