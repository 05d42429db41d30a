//! Reachability probes for the lab validator, in Rust (no `ping` binary): [`ping`] sends one
//! ICMP / ICMPv6 echo request from inside a namespace and waits for the matching reply.
//!
//! Socket choice: an unprivileged ICMP datagram socket (`SOCK_DGRAM`, `IPPROTO_ICMP[V6]`) is
//! tried first; when `net.ipv4.ping_group_range` does not admit us (the default in a fresh
//! namespace is "1 0", i.e. nobody) it falls back to `SOCK_RAW`, which needs CAP_NET_RAW. The
//! namespace's sysctls are never changed.
//!
//! Gratuitous ARP / unsolicited neighbour advertisements are not sent from here: as the CNI
//! reference plugin does, set `net/ipv4/conf/<if>/arp_notify=1` and
//! `net/ipv6/conf/<if>/ndisc_notify=1` before the link goes up
//! ([`crate::sysctl::enable_announcements`]), and the kernel announces on link-up and on
//! address changes.

use std::io;
use std::net::{IpAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6};
use tracing::debug;

use crate::error::{NetdevError, Result};
use crate::netns::Netns;

const ICMP_ECHO: u8 = 8;
const ICMP_ECHOREPLY: u8 = 0;
const ICMP6_ECHO: u8 = 128;
const ICMP6_ECHOREPLY: u8 = 129;
/// Largest ICMP payload in one IPv4 datagram (65535 - 20 - 8).
pub const MAX_PAYLOAD_V4: usize = 65507;
/// Largest ICMPv6 payload without jumbograms (65535 - 8).
pub const MAX_PAYLOAD_V6: usize = 65527;

static SEQ: AtomicU16 = AtomicU16::new(1);

fn io_err(dst: IpAddr, what: &str, e: impl Into<io::Error>) -> NetdevError {
    NetdevError::Io {
        context: format!("ping {dst}: {what}"),
        source: e.into(),
    }
}

/// RFC 1071 Internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn set_int_opt(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int on the stack and we pass its exact size; the kernel only
    // reads it. `fd` is an open socket owned by the caller for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Send one echo request to `dst` from inside `ns` with `payload_len` bytes of ICMP data and
/// wait up to `timeout` for the reply with our identifier, sequence number and payload.
///
/// With `dont_fragment`, path-MTU discovery is forced on (`IP_PMTUDISC_DO` /
/// `IPV6_PMTUDISC_DO`): a datagram larger than the route MTU fails at send time with
/// EMSGSIZE ([`NetdevError::Io`], `errno() == Some(EMSGSIZE)`) instead of being fragmented.
/// `payload_len` 1472 (IPv4) or 1452 (IPv6) fills a 1500-byte MTU exactly. Without
/// `dont_fragment` the kernel fragments locally as needed.
///
/// Returns the round-trip time; [`NetdevError::Timeout`] when no matching reply arrived.
pub fn ping(
    ns: &Netns,
    dst: IpAddr,
    payload_len: usize,
    dont_fragment: bool,
    timeout: Duration,
) -> Result<Duration> {
    let max = if dst.is_ipv4() {
        MAX_PAYLOAD_V4
    } else {
        MAX_PAYLOAD_V6
    };
    if payload_len > max {
        return Err(NetdevError::invalid(
            "ping",
            dst.to_string(),
            format!("payload {payload_len} > {max} bytes"),
        ));
    }
    ns.run(|| ping_here(dst, payload_len, dont_fragment, timeout))?
}

fn open_socket(dst: IpAddr) -> Result<(OwnedFd, bool)> {
    let (af, proto) = match dst {
        IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp),
        IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6),
    };
    match nix::sys::socket::socket(af, SockType::Datagram, SockFlag::SOCK_CLOEXEC, proto) {
        Ok(fd) => Ok((fd, false)),
        Err(e @ (Errno::EACCES | Errno::EPERM | Errno::EPROTONOSUPPORT)) => {
            debug!(%dst, error = %e, "ICMP datagram socket refused, using SOCK_RAW");
            let fd = nix::sys::socket::socket(af, SockType::Raw, SockFlag::SOCK_CLOEXEC, proto)
                .map_err(|e| io_err(dst, "open raw ICMP socket", e))?;
            Ok((fd, true))
        }
        Err(e) => Err(io_err(dst, "open ICMP socket", e)),
    }
}

fn ping_here(dst: IpAddr, payload_len: usize, dont_fragment: bool, timeout: Duration) -> Result<Duration> {
    let (fd, raw) = open_socket(dst)?;
    let (level, opt, val) = match (dst, dont_fragment) {
        (IpAddr::V4(_), true) => (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO),
        (IpAddr::V4(_), false) => (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DONT),
        (IpAddr::V6(_), true) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        ),
        (IpAddr::V6(_), false) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
        ),
    };
    set_int_opt(&fd, level, opt, val).map_err(|e| io_err(dst, "set MTU discovery", e))?;

    // Connect: send() then reports EMSGSIZE synchronously, and replies are filtered by source.
    match dst {
        IpAddr::V4(a) => {
            nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(a, 0)))
        }
        IpAddr::V6(a) => {
            nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrIn6::from(SocketAddrV6::new(a, 0, 0, 0)))
        }
    }
    .map_err(|e| io_err(dst, "connect", e))?;

    // Identifier: a datagram socket's is its local "port" (the kernel rewrites it); for a raw
    // socket we pick one.
    let id: u16 = if raw {
        (std::process::id() as u16) ^ 0x5a5a
    } else {
        match dst {
            IpAddr::V4(_) => nix::sys::socket::getsockname::<SockaddrIn>(fd.as_raw_fd()).map(|a| a.port()),
            IpAddr::V6(_) => nix::sys::socket::getsockname::<SockaddrIn6>(fd.as_raw_fd()).map(|a| a.port()),
        }
        .map_err(|e| io_err(dst, "getsockname", e))?
    };
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let cookie = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()).rotate_left(32);

    let mut pkt = vec![0u8; 8 + payload_len];
    pkt[0] = if dst.is_ipv4() { ICMP_ECHO } else { ICMP6_ECHO };
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    pkt[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in pkt[8..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_add(0x20);
    }
    let ck = cookie.to_be_bytes();
    let n = payload_len.min(8);
    pkt[8..8 + n].copy_from_slice(&ck[..n]);
    if dst.is_ipv4() {
        // The kernel fills the ICMPv6 checksum itself; the IPv4 one is ours on a raw socket.
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    }

    let start = Instant::now();
    nix::sys::socket::send(fd.as_raw_fd(), &pkt, MsgFlags::empty())
        .map_err(|e| io_err(dst, &format!("send {} byte echo request", pkt.len()), e))?;
    debug!(%dst, id, seq, len = pkt.len(), dont_fragment, raw, "echo request sent");

    let mut buf = vec![0u8; 65536];
    loop {
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Err(NetdevError::Timeout {
                op: "ping",
                target: dst.to_string(),
                after: timeout,
            });
        }
        let remaining = timeout - elapsed;
        let ms = u32::try_from(remaining.as_millis().max(1)).unwrap_or(u32::MAX);
        let pt = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, pt) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io_err(dst, "poll", e)),
        }
        let got = match nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            // An ICMP error for our request (e.g. "fragmentation needed") on a connected socket.
            Err(e) => return Err(io_err(dst, "receive reply", e)),
        };
        let mut icmp = &buf[..got];
        if raw && dst.is_ipv4() {
            // Raw IPv4 sockets deliver the IP header too.
            let ihl = icmp.first().map(|b| usize::from(b & 0x0f) * 4).unwrap_or(0);
            if ihl < 20 || icmp.len() < ihl {
                continue;
            }
            icmp = &icmp[ihl..];
        }
        if icmp.len() < 8 {
            continue;
        }
        let want_type = if dst.is_ipv4() {
            ICMP_ECHOREPLY
        } else {
            ICMP6_ECHOREPLY
        };
        let r_id = u16::from_be_bytes([icmp[4], icmp[5]]);
        let r_seq = u16::from_be_bytes([icmp[6], icmp[7]]);
        if icmp[0] != want_type || r_id != id || r_seq != seq {
            debug!(%dst, kind = icmp[0], r_id, r_seq, "ignoring unrelated ICMP message");
            continue;
        }
        if icmp[8..] != pkt[8..] {
            debug!(%dst, "ignoring echo reply with foreign payload");
            continue;
        }
        let rtt = start.elapsed();
        debug!(%dst, ?rtt, "echo reply");
        return Ok(rtt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internet_checksum_matches_rfc1071_example() {
        // RFC 1071 section 3 example bytes: 00 01 f2 03 f4 f5 f6 f7 -> sum 0xddf2, checksum 0x220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        // A packet containing its own checksum sums to zero.
        let mut p = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1, 0xaa, 0xbb, 0xcc];
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&p), 0);
    }
}
