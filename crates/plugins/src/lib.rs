//! The CNI faces of netattach and the operator commands that sit directly on them.
//!
//! * [`macvlan`]: the `macvlan` plugin, config-compatible with the reference plugin.
//! * [`whereabouts`]: the `whereabouts` IPAM plugin, config-compatible with whereabouts.
//! * [`meta`]: the `netattach` meta-plugin (Multus-compatible delegation).
//! * [`errors`]: the one place where library errors become CNI error codes.
//! * [`ipam_delegate`]: calling the IPAM plugin (in-process when it is this binary).
//! * [`ipam_daemon`]: the `whereabouts` face's path through the node daemon's IPAM engine.
//! * [`logging`]: the plugin process's log level and file, from the network config.
//! * [`install`]: installing the multi-call binary into a CNI bin dir, atomically.
//! * [`ipam_admin`]: `netattach ipam ls | show | release` over the cluster's pools or the local store.
//! * [`ipam_report`]: their table and JSON rendering.
//!
//! [`plugin_for`] picks the face by the name the binary was invoked as.

pub mod errors;
pub mod install;
pub mod ipam_admin;
pub mod ipam_daemon;
pub mod ipam_delegate;
pub mod ipam_report;
pub mod logging;
pub mod macvlan;
pub mod meta;
pub mod whereabouts;

use netattach_cni::skel::Plugin;

/// The plugin a binary invoked as `name` speaks, if it is one of ours.
pub fn plugin_for(name: &str) -> Option<Box<dyn Plugin + Send>> {
    match name {
        "macvlan" => Some(Box::new(macvlan::Macvlan)),
        "whereabouts" => Some(Box::new(whereabouts::Whereabouts::default())),
        "netattach" => Some(Box::new(meta::Meta)),
        _ => None,
    }
}
