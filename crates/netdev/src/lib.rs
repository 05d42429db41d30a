//! netattach-netdev: the Linux side of netattach. Network namespaces (open by path, run a
//! closure inside one, named namespaces like `ip netns`), synchronous rtnetlink for links,
//! addresses and routes (macvlan created directly in a target namespace, veth, bridge, rename,
//! MAC, MTU, up/down), per-namespace sysctls, and ICMP reachability probes.
//!
//! Everything is blocking and thread-based; no async runtime. The calling thread never changes
//! its network namespace: work that must happen "inside" a namespace runs on a short-lived
//! thread via [`Netns::run`], and netlink sockets made there stay bound to that namespace.
//!
//! This crate knows nothing of CNI or Kubernetes.

pub mod error;
pub mod link;
pub mod mac;
pub mod netns;
mod nl;
pub mod probe;
pub mod sysctl;

pub use error::NetdevError;
pub use link::{Address, Family, Handle, Link, MacvlanMode, MacvlanModeParseError, MacvlanSpec, Route};
pub use mac::{MacAddr, MacParseError};
pub use netns::{NamedNetns, Netns, delete_named_netns, list_named_netns};
