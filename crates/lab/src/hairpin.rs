//! Bridge-port hairpin mode (`IFLA_BRPORT_MODE`), which the netdev crate does not offer yet.
//!
//! VEPA-mode macvlans send traffic for a sibling on the same master out to the switch; the
//! switch must send it back out of the port it came in on, which a Linux bridge does only for
//! ports in hairpin mode. This is the `RTM_SETLINK` (family `AF_BRIDGE`) with a nested
//! `IFLA_PROTINFO { IFLA_BRPORT_MODE = 1 }` that `bridge link set dev X hairpin on` sends. It
//! belongs in `netattach_netdev::Handle` (as `set_bridge_port_hairpin`); until then it lives
//! here, for the lab's own switch namespace only.

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkProtoInfoBridge};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use netattach_netdev::Netns;

use crate::error::LabError;

/// `IFLA_BRPORT_MODE` from `<linux/if_link.h>`: hairpin on/off.
const IFLA_BRPORT_MODE: u16 = 4;

fn io(context: String) -> impl FnOnce(std::io::Error) -> LabError {
    move |source| LabError::Netlink { context, source }
}

/// Turn hairpin mode on for the bridge port with `index` in `ns`.
pub fn set_hairpin(ns: &Netns, index: u32, port_name: &str) -> Result<(), LabError> {
    let context = format!("setting hairpin mode on switch port {port_name}");
    ns.run(|| set_hairpin_here(index, &context)).map_err(LabError::netdev(context.clone()))?
}

fn set_hairpin_here(index: u32, context: &str) -> Result<(), LabError> {
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(io(context.to_string()))?;
    sock.bind_auto().map_err(io(context.to_string()))?;
    sock.connect(&SocketAddr::new(0, 0)).map_err(io(context.to_string()))?;

    let mut link = LinkMessage::default();
    link.header.interface_family = AddressFamily::Bridge;
    link.header.index = index;
    link.attributes.push(LinkAttribute::ProtoInfoBridge(vec![LinkProtoInfoBridge::Other(DefaultNla::new(
        IFLA_BRPORT_MODE,
        vec![1],
    ))]));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(RouteNetlinkMessage::SetLink(link)));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send(&buf, 0).map_err(io(context.to_string()))?;

    let mut reply = Vec::with_capacity(8192);
    sock.recv(&mut reply, 0).map_err(io(context.to_string()))?;
    let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply).map_err(|e| {
        io(context.to_string())(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad ack: {e}")))
    })?;
    match parsed.payload {
        NetlinkPayload::Error(err) => match err.code {
            None => Ok(()),
            Some(code) => Err(io(context.to_string())(std::io::Error::from_raw_os_error(-code.get()))),
        },
        other => Err(io(context.to_string())(std::io::Error::other(format!("unexpected reply {other:?}")))),
    }
}
