//! The blocking `NETLINK_ROUTE` socket under [`crate::link::Handle`]: request framing,
//! sequence-number checks, multipart dumps, ACK/NACK handling and extended-ack decoding.
//!
//! A socket is bound to the network namespace it was created in for its whole life.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_MULTIPART, NLM_F_REQUEST,
    NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NetlinkBuffer, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tracing::{debug, trace, warn};

use crate::error::{NetdevError, Result};

/// Receive buffer size. The kernel caps one dump datagram at 32 KiB, so 64 KiB never truncates.
const RECV_BUF: usize = 64 * 1024;
/// `NLMSGERR_ATTR_MSG` from `<linux/netlink.h>`.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// How often a dump interrupted by a concurrent change (`NLM_F_DUMP_INTR`) is retried.
const DUMP_RETRIES: usize = 5;
const NLMSG_HDRLEN: usize = 16;

/// One blocking rtnetlink socket.
#[derive(Debug)]
pub(crate) struct NlSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn io_err(op: &'static str, what: &str, e: io::Error) -> NetdevError {
    NetdevError::Io {
        context: format!("netlink {op} {what}"),
        source: e,
    }
}

/// Find `NLMSGERR_ATTR_MSG` in extended-ack TLVs.
fn extack_message(tlvs: &[u8]) -> Option<String> {
    let mut off = 0;
    while off + 4 <= tlvs.len() {
        let len = u16::from_ne_bytes([tlvs[off], tlvs[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[off + 2], tlvs[off + 3]]) & 0x3fff;
        if len < 4 || off + len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let v = &tlvs[off + 4..off + len];
            let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
            return Some(String::from_utf8_lossy(&v[..end]).into_owned());
        }
        off += align4(len);
    }
    None
}

/// Decode an `NLMSG_ERROR` payload: (negative errno or 0, extended-ack message).
fn parse_error(payload: &[u8], msg_flags: u16) -> Option<(i32, Option<String>)> {
    let code = i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?);
    let mut msg = None;
    if msg_flags & NLM_F_ACK_TLVS != 0 {
        let orig_len = if msg_flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?) as usize
        };
        if let Some(tlvs) = payload.get(4 + align4(orig_len)..) {
            msg = extack_message(tlvs);
        }
    }
    Some((code, msg))
}

impl NlSocket {
    /// Open, bind and connect a route socket in the calling thread's network namespace, with
    /// strict dump checking and extended acks enabled where the kernel supports them.
    pub(crate) fn new() -> Result<NlSocket> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| io_err("open", "socket", e))?;
        sock.bind_auto().map_err(|e| io_err("bind", "socket", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| io_err("connect", "socket", e))?;
        if let Err(e) = sock.set_netlink_get_strict_chk(true) {
            debug!(error = %e, "NETLINK_GET_STRICT_CHK not supported");
        }
        if let Err(e) = sock.set_ext_ack(true) {
            debug!(error = %e, "NETLINK_EXT_ACK not supported");
        }
        if let Err(e) = sock.set_cap_ack(true) {
            debug!(error = %e, "NETLINK_CAP_ACK not supported");
        }
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(NlSocket {
            sock,
            seq: seed | 1,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Send one request and collect the replies. A dump (`NLM_F_DUMP`) returns every message up
    /// to `NLMSG_DONE` and is retried when the kernel flags it as interrupted. Other requests
    /// return the reply messages up to the ACK (when `NLM_F_ACK` is set) or the single reply.
    /// A NACK becomes the matching [`NetdevError`] variant, with the extended-ack text.
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &'static str,
        target: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (replies, interrupted) = self.request_once(msg.clone(), flags, op, target)?;
            if !(dump && interrupted) {
                return Ok(replies);
            }
            if attempt >= DUMP_RETRIES {
                warn!(
                    op,
                    target, "dump still interrupted after {DUMP_RETRIES} tries; using last result"
                );
                return Ok(replies);
            }
            debug!(op, target, attempt, "dump interrupted, retrying");
        }
    }

    fn request_once(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &'static str,
        target: &str,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool)> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let want_ack = flags & NLM_F_ACK != 0;

        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_REQUEST | flags;
        nl.header.sequence_number = seq;
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        trace!(op, target, seq, len = out.len(), "netlink send");
        loop {
            match self.sock.send(&out, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(op, target, e)),
            }
        }

        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            self.buf.clear();
            if self.buf.capacity() < RECV_BUF {
                self.buf.reserve(RECV_BUF);
            }
            let n = match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(op, target, e)),
            };
            if n > self.buf.len() {
                return Err(NetdevError::Protocol {
                    op,
                    target: target.to_string(),
                    message: format!("reply of {n} bytes truncated to {}", self.buf.len()),
                });
            }
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let rest = &self.buf[off..n];
                let hdr = NetlinkBuffer::new_checked(rest).map_err(|e| NetdevError::Protocol {
                    op,
                    target: target.to_string(),
                    message: format!("bad netlink header: {e}"),
                })?;
                let len = hdr.length() as usize;
                let mtype = hdr.message_type();
                let mflags = hdr.flags();
                let mseq = hdr.sequence_number();
                let whole = &rest[..len];
                let payload = &whole[NLMSG_HDRLEN..];
                off += align4(len);

                if mseq != seq {
                    debug!(
                        op,
                        got = mseq,
                        want = seq,
                        mtype,
                        "skipping netlink message with stale sequence"
                    );
                    continue;
                }
                if mflags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match mtype {
                    NLMSG_NOOP => continue,
                    NLMSG_OVERRUN => {
                        return Err(NetdevError::Protocol {
                            op,
                            target: target.to_string(),
                            message: "NLMSG_OVERRUN".into(),
                        });
                    }
                    NLMSG_DONE => {
                        // A dump may end with an error code (and ext-ack TLVs) in NLMSG_DONE.
                        let code = payload
                            .get(0..4)
                            .and_then(|b| b.try_into().ok())
                            .map(i32::from_ne_bytes)
                            .unwrap_or(0);
                        if code < 0 {
                            let m = if mflags & NLM_F_ACK_TLVS != 0 {
                                payload.get(4..).and_then(extack_message)
                            } else {
                                None
                            };
                            return Err(NetdevError::from_errno(op, target, -code, m));
                        }
                        return Ok((replies, interrupted));
                    }
                    NLMSG_ERROR => {
                        let (code, m) =
                            parse_error(payload, mflags).ok_or_else(|| NetdevError::Protocol {
                                op,
                                target: target.to_string(),
                                message: "short NLMSG_ERROR".into(),
                            })?;
                        if code == 0 {
                            if !dump {
                                return Ok((replies, interrupted));
                            }
                            continue;
                        }
                        debug!(op, target, errno = -code, extack = ?m, "netlink NACK");
                        return Err(NetdevError::from_errno(op, target, code.saturating_neg(), m));
                    }
                    _ => {
                        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(whole) {
                            Ok(m) => {
                                if let NetlinkPayload::InnerMessage(inner) = m.payload {
                                    replies.push(inner);
                                }
                            }
                            Err(e) if dump => {
                                warn!(op, target, mtype, error = %e, "skipping undecodable dump entry");
                            }
                            Err(e) => {
                                return Err(NetdevError::Protocol {
                                    op,
                                    target: target.to_string(),
                                    message: format!("cannot decode reply type {mtype}: {e}"),
                                });
                            }
                        }
                        if !dump && !want_ack && mflags & NLM_F_MULTIPART == 0 {
                            return Ok((replies, interrupted));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extack_message_is_extracted_from_capped_nlmsgerr() {
        // errno -22, then a 16-byte original header (capped), then NLMSGERR_ATTR_MSG "Invalid MTU".
        let mut p = Vec::new();
        p.extend_from_slice(&(-22i32).to_ne_bytes());
        p.extend_from_slice(&[0u8; 16]);
        let text = b"Invalid MTU\0";
        let nla_len = 4 + text.len();
        p.extend_from_slice(&(nla_len as u16).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        while p.len() % 4 != 0 {
            p.push(0);
        }
        let (code, msg) = parse_error(&p, NLM_F_ACK_TLVS | NLM_F_CAPPED).expect("parse");
        assert_eq!(code, -22);
        assert_eq!(msg.as_deref(), Some("Invalid MTU"));
        // Without the TLV flag the trailing bytes are ignored.
        let (_, none) = parse_error(&p, NLM_F_CAPPED).expect("parse");
        assert!(none.is_none());
    }

    #[test]
    fn malformed_extack_tlvs_are_ignored() {
        assert_eq!(extack_message(&[2, 0, 1, 0]), None);
        assert_eq!(extack_message(&[200, 0, 1, 0, b'x']), None);
    }
}
