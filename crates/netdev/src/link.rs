//! Links, addresses and routes over synchronous rtnetlink: the [`Handle`] (one
//! `NETLINK_ROUTE` socket bound to one network namespace) and the value types it reads and
//! writes ([`Link`], [`MacvlanSpec`], [`MacvlanMode`], [`Address`], [`Route`], [`Family`]).
//!
//! A `Handle` made with [`Handle::in_netns`] creates its socket inside that namespace (on a
//! short-lived thread, see [`Netns::run`]); the socket stays bound there, so later calls need
//! no `setns` and can run on any thread.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::str::FromStr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, InfoData, InfoKind, InfoMacVlan, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage, LinkProtoInfoBridge, MacVlanMode as NlMacVlanMode, State,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tracing::debug;

use crate::error::{NetdevError, Result};
pub use crate::mac::MacAddr;
use crate::netns::Netns;
use crate::nl::NlSocket;

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const IFNAMSIZ_MAX: usize = 15;
/// The main routing table.
pub const RT_TABLE_MAIN: u32 = 254;

/// Check a name the way the kernel's `dev_valid_name` does: 1-15 bytes, not `.`/`..`, no `/`,
/// `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= IFNAMSIZ_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(NetdevError::invalid(
            "interface name",
            name,
            "must be 1-15 bytes, not \".\" or \"..\", without '/', ':' or whitespace",
        ))
    }
}

/// macvlan modes (`IFLA_MACVLAN_MODE`).
///
/// `FromStr` accepts the four names the CNI macvlan plugin accepts: `private`, `vepa`,
/// `bridge`, `passthru`. `source` is representable (and shown by `Display`) but is rejected by
/// `FromStr` with the reference plugin's message, because the CNI plugin does not support it.
/// An empty string is rejected too: defaulting (to `bridge`) is the caller's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MacvlanMode {
    /// No traffic between macvlans on the same master.
    Private,
    /// Traffic between macvlans goes out to the switch (needs hairpin).
    Vepa,
    /// Macvlans on one master talk directly.
    #[default]
    Bridge,
    /// One macvlan takes over the master (only one per master).
    Passthru,
    /// Source-MAC filtered mode (not offered by the CNI plugin).
    Source,
}

impl MacvlanMode {
    /// The CNI / iproute2 name.
    pub fn as_str(&self) -> &'static str {
        match self {
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Passthru => "passthru",
            MacvlanMode::Source => "source",
        }
    }

    fn to_nl(self) -> NlMacVlanMode {
        match self {
            MacvlanMode::Private => NlMacVlanMode::Private,
            MacvlanMode::Vepa => NlMacVlanMode::Vepa,
            MacvlanMode::Bridge => NlMacVlanMode::Bridge,
            MacvlanMode::Passthru => NlMacVlanMode::Passthrough,
            MacvlanMode::Source => NlMacVlanMode::Source,
        }
    }

    fn from_nl(m: NlMacVlanMode) -> Option<Self> {
        Some(match m {
            NlMacVlanMode::Private => MacvlanMode::Private,
            NlMacVlanMode::Vepa => MacvlanMode::Vepa,
            NlMacVlanMode::Bridge => MacvlanMode::Bridge,
            NlMacVlanMode::Passthrough => MacvlanMode::Passthru,
            NlMacVlanMode::Source => MacvlanMode::Source,
            _ => return None,
        })
    }
}

/// An unknown macvlan mode name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown macvlan mode: {0:?}")]
pub struct MacvlanModeParseError(pub String);

impl FromStr for MacvlanMode {
    type Err = MacvlanModeParseError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "private" => Ok(MacvlanMode::Private),
            "vepa" => Ok(MacvlanMode::Vepa),
            "bridge" => Ok(MacvlanMode::Bridge),
            "passthru" => Ok(MacvlanMode::Passthru),
            other => Err(MacvlanModeParseError(other.to_string())),
        }
    }
}

impl fmt::Display for MacvlanMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MacvlanMode {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MacvlanMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A network interface as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// ifindex (namespace-local).
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `IFLA_INFO_KIND`: "macvlan", "veth", "bridge", ... (`None` for e.g. `lo` or physical NICs).
    pub kind: Option<String>,
    /// Hardware address (`None` if absent or not 6 bytes).
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Operationally up: `IFLA_OPERSTATE` is `UP`, or `UNKNOWN` with `IFF_LOWER_UP` (as for `lo`).
    pub oper_up: bool,
    /// `IFLA_MASTER` (bridge/bond the link is enslaved to).
    pub master: Option<u32>,
    /// `IFLA_LINK`: the lower device (macvlan master, veth peer). With `link_netnsid` set it is
    /// an index in that other namespace.
    pub parent: Option<u32>,
    /// macvlan mode, for macvlan links.
    pub macvlan_mode: Option<MacvlanMode>,
    /// `IFLA_MACVLAN_BC_QUEUE_LEN`, for macvlan links.
    pub macvlan_bc_queue_len: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the peer/lower device lives in another namespace with this id.
    pub link_netnsid: Option<i32>,
    /// Raw `IFF_*` flags.
    pub flags: u32,
}

impl Link {
    fn from_msg(m: &LinkMessage) -> Link {
        let flags = m.header.flags;
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: 0,
            up: flags.contains(LinkFlags::Up),
            oper_up: false,
            master: None,
            parent: None,
            macvlan_mode: None,
            macvlan_bc_queue_len: None,
            link_netnsid: None,
            flags: flags.bits(),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(b) => link.mac = MacAddr::from_slice(b),
                LinkAttribute::Mtu(v) => link.mtu = *v,
                LinkAttribute::OperState(s) => {
                    link.oper_up =
                        *s == State::Up || (*s == State::Unknown && flags.contains(LinkFlags::LowerUp))
                }
                LinkAttribute::Controller(v) if *v != 0 => link.master = Some(*v),
                LinkAttribute::Link(v) if *v != 0 => link.parent = Some(*v),
                LinkAttribute::LinkNetNsId(v) => link.link_netnsid = Some(*v),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::MacVlan(d)) => {
                                for x in d {
                                    match x {
                                        InfoMacVlan::Mode(mode) => {
                                            link.macvlan_mode = MacvlanMode::from_nl(*mode)
                                        }
                                        InfoMacVlan::BcQueueLen(q) => link.macvlan_bc_queue_len = Some(*q),
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// What [`Handle::create_macvlan`] creates.
///
/// `target_netns` borrows the namespace the link is created in (sent as `IFLA_NET_NS_FD`; the
/// kernel creates the link there in one step). `None` creates it in the handle's namespace.
/// The master is always resolved by index in the handle's namespace.
#[derive(Debug, Clone)]
pub struct MacvlanSpec<'a> {
    /// Name of the new link (1-15 bytes).
    pub name: String,
    /// ifindex of the master (lower) device, in the handle's namespace.
    pub master_index: u32,
    /// macvlan mode.
    pub mode: MacvlanMode,
    /// MTU; `None` inherits the master's. Above the master's MTU the kernel says EINVAL.
    pub mtu: Option<u32>,
    /// MAC; `None` lets the kernel pick a random one. Must be unicast.
    pub mac: Option<MacAddr>,
    /// `IFLA_MACVLAN_BC_QUEUE_LEN`; `None` keeps the kernel default (1000).
    pub bc_queue_len: Option<u32>,
    /// Namespace to create the link in.
    pub target_netns: Option<&'a Netns>,
}

impl<'a> MacvlanSpec<'a> {
    /// A bridge-mode spec with kernel defaults for everything else.
    pub fn new(name: impl Into<String>, master_index: u32) -> Self {
        MacvlanSpec {
            name: name.into(),
            master_index,
            mode: MacvlanMode::Bridge,
            mtu: None,
            mac: None,
            bc_queue_len: None,
            target_netns: None,
        }
    }
}

/// IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn af(self) -> AddressFamily {
        match self {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        }
    }
}

/// An address on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// ifindex it is on.
    pub index: u32,
    /// Address and prefix length.
    pub addr: IpNet,
    /// Raw `IFA_F_*` flags (from `IFA_FLAGS`, else the header).
    pub flags: u32,
    /// `IFA_F_TENTATIVE`: IPv6 DAD still running.
    pub tentative: bool,
    /// `IFA_F_DADFAILED`: IPv6 DAD found a duplicate.
    pub dadfailed: bool,
    /// `IFA_F_PERMANENT`: configured (not autoconf).
    pub permanent: bool,
    /// Scope (`RT_SCOPE_*`: 0 universe, 253 link, 254 host).
    pub scope: u8,
}

/// A route. Construct with a struct literal and `..Default::default()` or [`Route::new`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// Destination (`0.0.0.0/0` / `::/0` for a default route).
    pub dst: IpNet,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Metric (`RTA_PRIORITY`).
    pub metric: Option<u32>,
    /// Table; `None` = main when adding.
    pub table: Option<u32>,
    /// Scope (`RT_SCOPE_*`); `None` when adding = link without gateway, universe with one
    /// (as iproute2 does).
    pub scope: Option<u8>,
    /// `RTAX_MTU`.
    pub mtu: Option<u32>,
    /// `RTAX_ADVMSS`.
    pub advmss: Option<u32>,
}

impl Route {
    /// A route to `dst` with everything else unset.
    pub fn new(dst: IpNet) -> Route {
        Route {
            dst,
            ..Default::default()
        }
    }

    /// Address family of the destination.
    pub fn family(&self) -> Family {
        Family::of(&self.dst.addr())
    }

    fn from_msg(m: &RouteMessage) -> Option<Route> {
        let h = &m.header;
        if h.kind != RouteType::Unicast {
            return None;
        }
        let family = match h.address_family {
            AddressFamily::Inet => Family::V4,
            AddressFamily::Inet6 => Family::V6,
            _ => return None,
        };
        let mut dst_ip: IpAddr = match family {
            Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
            Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
        };
        let mut r = Route {
            table: Some(u32::from(h.table)),
            scope: Some(u8::from(h.scope)),
            ..Default::default()
        };
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(d) => {
                    if let Some(ip) = route_ip(d) {
                        dst_ip = ip;
                    }
                }
                RouteAttribute::Gateway(g) => r.gateway = route_ip(g),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                RouteAttribute::Priority(p) => r.metric = Some(*p),
                RouteAttribute::Table(t) => r.table = Some(*t),
                RouteAttribute::Metrics(ms) => {
                    for x in ms {
                        match x {
                            RouteMetric::Mtu(v) => r.mtu = Some(*v),
                            RouteMetric::Advmss(v) => r.advmss = Some(*v),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        r.dst = IpNet::new(dst_ip, h.destination_prefix_length).ok()?;
        Some(r)
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some((*v).into()),
        RouteAddress::Inet6(v) => Some((*v).into()),
        _ => None,
    }
}

/// One blocking rtnetlink socket bound to one network namespace.
#[derive(Debug)]
pub struct Handle {
    sock: NlSocket,
}

const ACK_CREATE: u16 = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;

fn idx(index: u32) -> String {
    format!("index {index}")
}

impl Handle {
    /// A socket in the calling thread's namespace.
    pub fn new() -> Result<Handle> {
        Ok(Handle {
            sock: NlSocket::new()?,
        })
    }

    /// A socket in `ns` (created on a thread inside `ns`, usable from any thread afterwards).
    pub fn in_netns(ns: &Netns) -> Result<Handle> {
        ns.run(Handle::new)?
    }

    fn link_req(&mut self, msg: LinkMessage, flags: u16, op: &'static str, target: &str) -> Result<()> {
        self.sock
            .request(RouteNetlinkMessage::SetLink(msg), flags, op, target)
            .map(drop)
    }

    fn get_link(&mut self, msg: LinkMessage, target: &str) -> Result<Option<Link>> {
        match self
            .sock
            .request(RouteNetlinkMessage::GetLink(msg), 0, "get link", target)
        {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(Link::from_msg(m)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Look a link up by name; `Ok(None)` if there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        if validate_ifname(name).is_err() {
            // No link can have this name.
            return Ok(None);
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg, name)
    }

    /// Look a link up by index; `Ok(None)` if there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        if index == 0 {
            return Ok(None);
        }
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, &idx(index))
    }

    /// The index of `name`, or [`NetdevError::NotFound`].
    pub fn link_index(&mut self, name: &str) -> Result<u32> {
        self.link_by_name(name)?
            .map(|l| l.index)
            .ok_or_else(|| NetdevError::NotFound {
                op: "find link",
                target: name.to_string(),
                errno: None,
                message: None,
            })
    }

    /// All links in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self.sock.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            "dump links",
            "",
        )?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(Link::from_msg(m)),
                _ => None,
            })
            .collect())
    }

    /// Create a macvlan link (`RTM_NEWLINK`, `NLM_F_CREATE|NLM_F_EXCL|NLM_F_ACK`) on
    /// `spec.master_index`, directly in `spec.target_netns` when given.
    ///
    /// Errors: [`NetdevError::AlreadyExists`] when the name is taken in the target namespace,
    /// [`NetdevError::NotFound`] when the master index does not exist,
    /// [`NetdevError::InvalidArgument`] for an MTU above the master's or a second macvlan on a
    /// passthru master.
    pub fn create_macvlan(&mut self, spec: &MacvlanSpec<'_>) -> Result<()> {
        validate_ifname(&spec.name)?;
        if let Some(mac) = spec.mac
            && !mac.is_unicast()
        {
            return Err(NetdevError::invalid(
                "create macvlan",
                &spec.name,
                format!("MAC {mac} is not unicast"),
            ));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(spec.name.clone()));
        msg.attributes.push(LinkAttribute::Link(spec.master_index));
        if let Some(ns) = spec.target_netns {
            msg.attributes
                .push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
        }
        if let Some(mac) = spec.mac {
            msg.attributes.push(LinkAttribute::Address(mac.octets().to_vec()));
        }
        if let Some(mtu) = spec.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut data = vec![InfoMacVlan::Mode(spec.mode.to_nl())];
        if let Some(q) = spec.bc_queue_len {
            data.push(InfoMacVlan::BcQueueLen(q));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::MacVlan),
            LinkInfo::Data(InfoData::MacVlan(data)),
        ]));
        debug!(name = %spec.name, master = spec.master_index, mode = %spec.mode, netns = ?spec.target_netns.map(|n| n.path()), "create macvlan");
        self.sock
            .request(
                RouteNetlinkMessage::NewLink(msg),
                ACK_CREATE,
                "create macvlan",
                &spec.name,
            )
            .map(drop)
    }

    /// Create a veth pair `name` <-> `peer`; the peer is created in `peer_netns` if given.
    pub fn create_veth(&mut self, name: &str, peer: &str, peer_netns: Option<&Netns>) -> Result<()> {
        validate_ifname(name)?;
        validate_ifname(peer)?;
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes.push(LinkAttribute::IfName(peer.to_string()));
        if let Some(ns) = peer_netns {
            peer_msg
                .attributes
                .push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        debug!(name, peer, "create veth");
        self.sock
            .request(RouteNetlinkMessage::NewLink(msg), ACK_CREATE, "create veth", name)
            .map(drop)
    }

    /// Create a bridge.
    pub fn create_bridge(&mut self, name: &str) -> Result<()> {
        validate_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
        debug!(name, "create bridge");
        self.sock
            .request(
                RouteNetlinkMessage::NewLink(msg),
                ACK_CREATE,
                "create bridge",
                name,
            )
            .map(drop)
    }

    fn set_msg(index: u32) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg
    }

    /// Enslave `index` to `master` (a bridge); `master == 0` releases it.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        let mut msg = Self::set_msg(index);
        msg.attributes.push(LinkAttribute::Controller(master));
        self.link_req(msg, NLM_F_ACK, "set master", &idx(index))
    }

    /// Turn hairpin mode on or off for the bridge port `index` (`IFLA_BRPORT_MODE`, what
    /// `bridge link set dev X hairpin on` sends). A bridge forwards a frame back out of the port
    /// it came in on only in hairpin mode, which VEPA-mode macvlans behind that port need to
    /// reach each other.
    pub fn set_bridge_port_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        /// `IFLA_BRPORT_MODE` from `<linux/if_link.h>`.
        const IFLA_BRPORT_MODE: u16 = 4;
        let mut msg = Self::set_msg(index);
        msg.header.interface_family = AddressFamily::Bridge;
        msg.attributes
            .push(LinkAttribute::ProtoInfoBridge(vec![LinkProtoInfoBridge::Other(
                netlink_packet_core::DefaultNla::new(IFLA_BRPORT_MODE, vec![u8::from(on)]),
            )]));
        self.link_req(msg, NLM_F_ACK, "set bridge port hairpin", &idx(index))
    }

    /// Move a link into another namespace (`IFLA_NET_NS_FD`). Its index may change there.
    pub fn move_to_netns(&mut self, index: u32, ns: &Netns) -> Result<()> {
        let mut msg = Self::set_msg(index);
        msg.attributes
            .push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
        self.link_req(msg, NLM_F_ACK, "move link to netns", &idx(index))
    }

    /// Rename a link (the kernel refuses while it is up: EBUSY).
    pub fn rename(&mut self, index: u32, new_name: &str) -> Result<()> {
        validate_ifname(new_name)?;
        let mut msg = Self::set_msg(index);
        msg.attributes.push(LinkAttribute::IfName(new_name.to_string()));
        self.link_req(
            msg,
            NLM_F_ACK,
            "rename link",
            &format!("index {index} to {new_name}"),
        )
    }

    /// Turn on a link's IPv4 `arp_notify` (`RTM_SETLINK` with `IFLA_AF_SPEC` / `AF_INET` /
    /// `IFLA_INET_CONF`): the same setting as writing `net/ipv4/conf/<if>/arp_notify=1` (a
    /// gratuitous ARP when the link comes up and when an address changes), without a thread
    /// entering the link's namespace to write `/proc/sys`. The kernel refuses `IFLA_AF_SPEC` in
    /// the request that creates a link (`EAFNOSUPPORT`), and applies it after `IFF_UP` in one
    /// that also sets the link up, so this is a request of its own, made before the link is up.
    pub fn set_arp_notify(&mut self, index: u32) -> Result<()> {
        let mut msg = Self::set_msg(index);
        let mut conf = InetDevConf::default();
        conf.arp_notify = 1;
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(conf),
            ])]));
        self.link_req(msg, NLM_F_ACK, "set arp_notify", &idx(index))
    }

    fn set_updown(&mut self, index: u32, up: bool) -> Result<()> {
        let mut msg = Self::set_msg(index);
        msg.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
        msg.header.change_mask = LinkFlags::Up;
        self.link_req(
            msg,
            NLM_F_ACK,
            if up { "set link up" } else { "set link down" },
            &idx(index),
        )
    }

    /// Set `IFF_UP`.
    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.set_updown(index, true)
    }

    /// Clear `IFF_UP`.
    pub fn set_down(&mut self, index: u32) -> Result<()> {
        self.set_updown(index, false)
    }

    /// Set the MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut msg = Self::set_msg(index);
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.link_req(msg, NLM_F_ACK, "set mtu", &format!("index {index} to {mtu}"))
    }

    /// Set the hardware address (must be unicast).
    pub fn set_mac(&mut self, index: u32, mac: MacAddr) -> Result<()> {
        if !mac.is_unicast() {
            return Err(NetdevError::invalid(
                "set mac",
                idx(index),
                format!("MAC {mac} is not unicast"),
            ));
        }
        let mut msg = Self::set_msg(index);
        msg.attributes.push(LinkAttribute::Address(mac.octets().to_vec()));
        self.link_req(msg, NLM_F_ACK, "set mac", &format!("index {index} to {mac}"))
    }

    /// Delete a link (a veth deletes its peer too).
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let msg = Self::set_msg(index);
        self.sock
            .request(
                RouteNetlinkMessage::DelLink(msg),
                NLM_F_ACK,
                "delete link",
                &idx(index),
            )
            .map(drop)
    }

    /// Delete a link by name; `Ok(false)` if there was none.
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<bool> {
        if validate_ifname(name).is_err() {
            return Ok(false);
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self
            .sock
            .request(RouteNetlinkMessage::DelLink(msg), NLM_F_ACK, "delete link", name)
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn addr_msg(index: u32, addr: IpNet) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = Family::of(&addr.addr()).af();
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        msg.header.scope = AddressScope::Universe;
        msg.attributes.push(AddressAttribute::Local(addr.addr()));
        msg.attributes.push(AddressAttribute::Address(addr.addr()));
        msg
    }

    /// Add an address (`IFA_LOCAL` + `IFA_ADDRESS`; IPv4 also gets `IFA_BROADCAST` for
    /// prefixes up to /30). IPv6 addresses keep DAD (no `IFA_F_NODAD`): poll
    /// [`Handle::addresses`] for `tentative` / `dadfailed`.
    pub fn add_address(&mut self, index: u32, addr: IpNet) -> Result<()> {
        let mut msg = Self::addr_msg(index, addr);
        if let IpNet::V4(v4) = addr
            && v4.prefix_len() <= 30
        {
            msg.attributes.push(AddressAttribute::Broadcast(v4.broadcast()));
        }
        debug!(index, %addr, "add address");
        self.sock
            .request(
                RouteNetlinkMessage::NewAddress(msg),
                ACK_CREATE,
                "add address",
                &format!("{addr} on index {index}"),
            )
            .map(drop)
    }

    /// Remove an address.
    pub fn delete_address(&mut self, index: u32, addr: IpNet) -> Result<()> {
        let msg = Self::addr_msg(index, addr);
        self.sock
            .request(
                RouteNetlinkMessage::DelAddress(msg),
                NLM_F_ACK,
                "delete address",
                &format!("{addr} on index {index}"),
            )
            .map(drop)
    }

    /// Addresses on `index` (all links if `index == 0`).
    pub fn addresses(&mut self, index: u32) -> Result<Vec<Address>> {
        let mut req = AddressMessage::default();
        req.header.index = index;
        let replies = self.sock.request(
            RouteNetlinkMessage::GetAddress(req),
            NLM_F_DUMP,
            "dump addresses",
            &idx(index),
        )?;
        let mut out = Vec::new();
        for r in &replies {
            let RouteNetlinkMessage::NewAddress(m) = r else {
                continue;
            };
            if index != 0 && m.header.index != index {
                continue;
            }
            let mut local = None;
            let mut address = None;
            let mut flags = u32::from(m.header.flags.bits());
            for a in &m.attributes {
                match a {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    AddressAttribute::Flags(f) => flags = f.bits(),
                    _ => {}
                }
            }
            let Some(ip) = local.or(address) else { continue };
            let Ok(addr) = IpNet::new(ip, m.header.prefix_len) else {
                continue;
            };
            let f = AddressFlags::from_bits_retain(flags);
            out.push(Address {
                index: m.header.index,
                addr,
                flags,
                tentative: f.contains(AddressFlags::Tentative),
                dadfailed: f.contains(AddressFlags::Dadfailed),
                permanent: f.contains(AddressFlags::Permanent),
                scope: u8::from(m.header.scope),
            });
        }
        Ok(out)
    }

    fn route_msg(route: &Route, for_delete: bool) -> Result<RouteMessage> {
        let family = route.family();
        if let Some(gw) = route.gateway
            && Family::of(&gw) != family
        {
            return Err(NetdevError::invalid(
                "route",
                route.dst.to_string(),
                format!("gateway {gw} is not the same family as the destination"),
            ));
        }
        let mut msg = RouteMessage::default();
        let table = route.table.unwrap_or(RT_TABLE_MAIN);
        msg.header.address_family = family.af();
        msg.header.destination_prefix_length = route.dst.prefix_len();
        msg.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        msg.header.protocol = if for_delete {
            RouteProtocol::Unspec
        } else {
            RouteProtocol::Boot
        };
        msg.header.kind = RouteType::Unicast;
        let scope = match route.scope {
            Some(s) => RouteScope::from(s),
            None if for_delete => RouteScope::NoWhere,
            None if route.gateway.is_none() => RouteScope::Link,
            None => RouteScope::Universe,
        };
        msg.header.scope = scope;
        if route.dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    route.dst.network(),
                )));
        }
        if let Some(gw) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(m) = route.metric {
            msg.attributes.push(RouteAttribute::Priority(m));
        }
        msg.attributes.push(RouteAttribute::Table(table));
        let mut metrics = Vec::new();
        if let Some(v) = route.mtu {
            metrics.push(RouteMetric::Mtu(v));
        }
        if let Some(v) = route.advmss {
            metrics.push(RouteMetric::Advmss(v));
        }
        if !metrics.is_empty() {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
        Ok(msg)
    }

    /// Add a route (`NLM_F_CREATE|NLM_F_EXCL`: an identical route gives AlreadyExists).
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        let msg = Self::route_msg(route, false)?;
        debug!(?route, "add route");
        self.sock
            .request(
                RouteNetlinkMessage::NewRoute(msg),
                ACK_CREATE,
                "add route",
                &route.dst.to_string(),
            )
            .map(drop)
    }

    /// Delete a route matching `route` (dst, table, and gateway/oif/metric when set).
    pub fn delete_route(&mut self, route: &Route) -> Result<()> {
        let msg = Self::route_msg(route, true)?;
        self.sock
            .request(
                RouteNetlinkMessage::DelRoute(msg),
                NLM_F_ACK,
                "delete route",
                &route.dst.to_string(),
            )
            .map(drop)
    }

    /// Unicast routes of all tables (`table` is filled in; main is 254), optionally of one
    /// family. Local, broadcast, multicast, blackhole etc. entries are left out.
    pub fn routes(&mut self, family: Option<Family>) -> Result<Vec<Route>> {
        let mut req = RouteMessage::default();
        req.header.address_family = family.map(Family::af).unwrap_or(AddressFamily::Unspec);
        let replies = self
            .sock
            .request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP, "dump routes", "")?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(m) => Route::from_msg(m),
                _ => None,
            })
            .collect())
    }

    /// The link of the first default route (zero-length destination) in the main table, IPv4
    /// first, then IPv6, as the CNI macvlan plugin picks its default master.
    pub fn default_route_interface(&mut self) -> Result<Option<Link>> {
        for fam in [Family::V4, Family::V6] {
            let routes = self.routes(Some(fam))?;
            let oif = routes
                .iter()
                .filter(|r| r.dst.prefix_len() == 0 && r.table == Some(RT_TABLE_MAIN))
                .find_map(|r| r.oif);
            if let Some(oif) = oif {
                return self.link_by_index(oif);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macvlan_mode_parses_the_four_cni_names_and_round_trips() {
        for (s, m) in [
            ("private", MacvlanMode::Private),
            ("vepa", MacvlanMode::Vepa),
            ("bridge", MacvlanMode::Bridge),
            ("passthru", MacvlanMode::Passthru),
        ] {
            assert_eq!(s.parse::<MacvlanMode>().expect("valid"), m);
            assert_eq!(m.to_string(), s);
            assert_eq!(MacvlanMode::from_nl(m.to_nl()), Some(m));
        }
        assert_eq!(MacvlanMode::Source.to_string(), "source");
        assert_eq!(
            MacvlanMode::from_nl(MacvlanMode::Source.to_nl()),
            Some(MacvlanMode::Source)
        );
    }

    #[test]
    fn macvlan_mode_rejects_source_empty_and_wrong_case_like_the_reference_plugin() {
        let e = "source"
            .parse::<MacvlanMode>()
            .expect_err("source is not a CNI mode");
        assert_eq!(e.to_string(), "unknown macvlan mode: \"source\"");
        for bad in ["", "Bridge", "passthrough", "l2"] {
            assert!(bad.parse::<MacvlanMode>().is_err(), "{bad:?}");
        }
        assert_eq!(MacvlanMode::default(), MacvlanMode::Bridge);
    }

    #[test]
    fn macvlan_mode_serde_uses_cni_names() {
        let j = serde_json::to_string(&MacvlanMode::Passthru).expect("ser");
        assert_eq!(j, "\"passthru\"");
        let m: MacvlanMode = serde_json::from_str("\"vepa\"").expect("de");
        assert_eq!(m, MacvlanMode::Vepa);
        assert!(serde_json::from_str::<MacvlanMode>("\"source\"").is_err());
    }

    #[test]
    fn ifname_validation_matches_kernel_rules() {
        for ok in ["eth0", "net1", "a", "123456789012345", "lhnet1", "br-x.y"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "1234567890123456", "a/b", "a:b", "a b", "a\tb"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn route_message_defaults_scope_and_table_like_iproute2() {
        let r = Route::new("198.18.5.0/24".parse().expect("net"));
        let m = Handle::route_msg(&r, false).expect("msg");
        assert_eq!(m.header.scope, RouteScope::Link);
        assert_eq!(m.header.table, 254);
        let r = Route {
            dst: "0.0.0.0/0".parse().expect("net"),
            gateway: Some("198.18.0.1".parse().expect("ip")),
            ..Default::default()
        };
        let m = Handle::route_msg(&r, false).expect("msg");
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(_)))
        );
        let bad = Route {
            gateway: Some("fd00::1".parse().expect("ip")),
            ..r
        };
        assert!(
            Handle::route_msg(&bad, false)
                .expect_err("family mismatch")
                .is_invalid_argument()
        );
    }
}
