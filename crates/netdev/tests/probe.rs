//! Root tests for `probe::ping`: two namespaces joined through a bridge in a third, full-MTU
//! pings with DF succeed, one byte more fails with EMSGSIZE, over both IPv4 and IPv6.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{TestNs, wait_until};
use netattach_netdev::{NetdevError, probe};

/// Namespaces `a` and `b`, each with one veth end plugged into bridge `br0` in `sw`.
/// a0 = 198.18.0.1/24, fd00:198:18::1/64; b0 = 198.18.0.2/24, fd00:198:18::2/64.
struct Pair {
    a: TestNs,
    b: TestNs,
    _sw: TestNs,
}

fn pair() -> Pair {
    let mut sw = TestNs::new();
    let mut a = TestNs::new();
    let mut b = TestNs::new();
    sw.h.create_bridge("br0").unwrap();
    let br = sw.index("br0");
    sw.h.create_veth("pa", "a0", Some(&a.ns)).unwrap();
    sw.h.create_veth("pb", "b0", Some(&b.ns)).unwrap();
    for p in ["pa", "pb"] {
        let i = sw.index(p);
        sw.h.set_master(i, br).unwrap();
        sw.h.set_up(i).unwrap();
    }
    sw.h.set_up(br).unwrap();
    for (t, n, v4, v6) in [
        (&mut a, "a0", "198.18.0.1/24", "fd00:198:18::1/64"),
        (&mut b, "b0", "198.18.0.2/24", "fd00:198:18::2/64"),
    ] {
        let i = t.index(n);
        t.h.add_address(i, v4.parse().unwrap()).unwrap();
        t.h.add_address(i, v6.parse().unwrap()).unwrap();
        t.h.set_up(i).unwrap();
    }
    Pair { a, b, _sw: sw }
}

fn wait_dad(t: &mut TestNs, name: &str) {
    let i = t.index(name);
    assert!(
        wait_until(Duration::from_secs(8), || t
            .h
            .addresses(i)
            .unwrap()
            .iter()
            .all(|a| !a.tentative)),
        "IPv6 DAD did not finish on {name}"
    );
}

#[test]
fn ping_v4_across_bridge_with_df_full_mtu_succeeds_and_one_byte_more_is_emsgsize() {
    let p = pair();
    let dst: IpAddr = "198.18.0.2".parse().unwrap();
    let t = Duration::from_secs(3);
    let rtt = probe::ping(&p.a.ns, dst, 56, true, t).expect("small ping");
    assert!(rtt < t);
    probe::ping(&p.a.ns, dst, 1472, true, t).expect("1472 + 28 = 1500 fits with DF");
    let e = probe::ping(&p.a.ns, dst, 1473, true, t).expect_err("1501 bytes with DF");
    assert_eq!(e.errno(), Some(libc::EMSGSIZE), "{e}");
    // Without DF the kernel fragments and the reply comes back.
    probe::ping(&p.a.ns, dst, 3000, false, t).expect("fragmented ping");
    // Reverse direction too.
    probe::ping(&p.b.ns, "198.18.0.1".parse().unwrap(), 1472, true, t).expect("b -> a");
}

#[test]
fn ping_v6_across_bridge_with_df_full_mtu_succeeds_and_one_byte_more_is_emsgsize() {
    let mut p = pair();
    wait_dad(&mut p.a, "a0");
    wait_dad(&mut p.b, "b0");
    let dst: IpAddr = "fd00:198:18::2".parse().unwrap();
    let t = Duration::from_secs(3);
    probe::ping(&p.a.ns, dst, 1452, true, t).expect("1452 + 48 = 1500 fits");
    let e = probe::ping(&p.a.ns, dst, 1453, true, t).expect_err("1501 bytes");
    assert_eq!(e.errno(), Some(libc::EMSGSIZE), "{e}");
}

#[test]
fn ping_unanswered_address_times_out() {
    let p = pair();
    let e = probe::ping(
        &p.a.ns,
        "198.18.0.99".parse().unwrap(),
        8,
        true,
        Duration::from_millis(300),
    )
    .expect_err("nobody there");
    assert!(
        matches!(e, NetdevError::Timeout { .. } | NetdevError::Io { .. }),
        "{e:?}"
    );
    assert!(
        matches!(e.errno(), Some(libc::ETIMEDOUT) | Some(libc::EHOSTUNREACH)),
        "{e}"
    );
}

#[test]
fn ping_rejects_oversized_payload() {
    let p = pair();
    let e = probe::ping(
        &p.a.ns,
        "198.18.0.2".parse().unwrap(),
        70_000,
        false,
        Duration::from_millis(100),
    )
    .expect_err("too big");
    assert!(e.is_invalid_argument());
}

#[test]
fn ping_works_over_unprivileged_icmp_datagram_sockets_when_ping_group_range_allows() {
    let mut p = pair();
    // Admit gid 0 to ICMP datagram sockets in namespace a only, so ping() takes the
    // SOCK_DGRAM path (kernel-assigned echo identifier) instead of SOCK_RAW.
    netattach_netdev::sysctl::set(&p.a.ns, "net/ipv4/ping_group_range", "0 0").unwrap();
    let t = Duration::from_secs(3);
    probe::ping(&p.a.ns, "198.18.0.2".parse().unwrap(), 1472, true, t).expect("v4 over dgram socket");
    let e = probe::ping(&p.a.ns, "198.18.0.2".parse().unwrap(), 1473, true, t).expect_err("over MTU");
    assert_eq!(e.errno(), Some(libc::EMSGSIZE), "{e}");
    wait_dad(&mut p.a, "a0");
    wait_dad(&mut p.b, "b0");
    probe::ping(&p.a.ns, "fd00:198:18::2".parse().unwrap(), 1452, true, t).expect("v6 over dgram socket");
}
