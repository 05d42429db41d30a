//! Calling the IPAM plugin a config names, the way the spec says: found on `CNI_PATH`, given
//! the same environment and the complete same stdin, only `CNI_COMMAND` replaced.
//!
//! When the `whereabouts` found on `CNI_PATH` is this very binary (the usual install: one file
//! linked under every name), the call runs in-process instead of forking the same program again.
//! The answer is identical — same code, same request — minus a process start. A different
//! binary under that name (upstream whereabouts, a newer netattach renamed into place) is always
//! executed.

use netattach_cni::Command;
use netattach_cni::error::CniError;
use netattach_cni::exec::{DEFAULT_TIMEOUT, delegate, find_plugin, is_this_binary};
use netattach_cni::result::CniResult;
use netattach_cni::skel::{Plugin, Request};

use crate::whereabouts::Whereabouts;

/// Runs `command` on the IPAM plugin `ipam_type` for `req`. ADD returns the result; the other
/// commands return `None`.
pub fn call(command: Command, ipam_type: &str, req: &Request) -> Result<Option<CniResult>, CniError> {
    let plugin = find_plugin(ipam_type, &req.inv.path)?;
    if ipam_type == "whereabouts" && is_this_binary(&plugin) {
        let mut inner = req.clone();
        inner.inv.command = command;
        let ipam = Whereabouts::default();
        let context = |e: CniError| e.context(format!("{ipam_type} {command}"));
        return match command {
            Command::Add => ipam.add(&inner).map(Some).map_err(context),
            Command::Del => ipam.del(&inner).map(|()| None).map_err(context),
            Command::Check => ipam.check(&inner).map(|()| None).map_err(context),
            Command::Status => ipam.status(&inner).map(|()| None).map_err(context),
            Command::Gc => ipam.gc(&inner).map(|()| None).map_err(context),
            Command::Version => Ok(None),
        };
    }
    delegate(command, ipam_type, &req.conf.bytes, &req.inv, DEFAULT_TIMEOUT)
}
