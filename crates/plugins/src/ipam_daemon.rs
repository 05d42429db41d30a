//! The IPAM front's path through the node daemon: with the kubernetes datastore, the
//! `whereabouts` face sends its allocations and releases to the daemon of its node, whose
//! engine folds a node's concurrent requests for one pool into one write
//! (`netattach_ippool::batch`). Without a daemon (no socket, or nobody listening) the caller
//! writes the IPPools itself with the same protocol.
//!
//! One attempt, no fallback after the request was sent: once the daemon has the request it may
//! have written it, and its answer (or a "try again" error) is the truth. Connecting is the only
//! step whose failure means "no daemon here".

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use netattach_cluster::daemon_api::{Request, Response, read_message, write_message};
use netattach_cni::error::CniError;
use netattach_ipam::store::{Allocation, AllocationRequest, Owner};

use crate::errors::from_ipam_failure;

/// How long the daemon may take to answer one IPAM request: a batch ahead of this one and this
/// one's, each the store's retry budget (10 s) plus time for the overlapping-range reservations
/// of up to 64 allocations.
pub const IPAM_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends `request`; `Ok(None)` when no daemon listens on `socket`.
fn call(socket: &Path, request: &Request) -> Result<Option<Response>, CniError> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            tracing::debug!(socket = %socket.display(), "no node daemon; writing the IPPools directly");
            return Ok(None);
        }
        Err(e) => {
            return Err(CniError::try_again(format!(
                "connecting to the netattach node daemon on `{}`: {e}; fix: check the socket's permissions (the \
                 plugin runs as root), or set \"daemon_socket\": \"\" to write the IPPools directly",
                socket.display()
            )));
        }
    };
    let mut exchange = || -> std::io::Result<Response> {
        stream.set_read_timeout(Some(IPAM_CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(IPAM_CALL_TIMEOUT))?;
        write_message(&mut stream, request)?;
        read_message(&stream)
    };
    exchange().map(Some).map_err(|e| {
        CniError::try_again(format!(
            "the netattach node daemon on `{}` did not answer the IPAM request: {e}; the runtime retries",
            socket.display()
        ))
    })
}

fn unexpected(socket: &Path, resp: &Response) -> CniError {
    CniError::try_again(format!(
        "the node daemon on `{}` answered {resp:?} to an IPAM request; fix: run the same netattach version for \
         daemon and plugin",
        socket.display()
    ))
}

/// Allocate through the daemon; `Ok(None)` when there is none.
///
/// # Errors
///
/// The daemon's failure, with the code the direct path would give.
pub fn allocate(
    socket: &Path,
    pool_namespace: &str,
    request: &AllocationRequest,
) -> Result<Option<Vec<Allocation>>, CniError> {
    let req = Request::IpamAllocate {
        pool_namespace: pool_namespace.to_string(),
        request: request.clone(),
    };
    match call(socket, &req)? {
        None => Ok(None),
        Some(Response::IpamAllocated { allocations }) => Ok(Some(allocations)),
        Some(Response::IpamError { failure, message }) => Err(from_ipam_failure(failure, message)),
        Some(other) => Err(unexpected(socket, &other)),
    }
}

/// What a release through the daemon did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The freed addresses.
    pub freed: Vec<Allocation>,
    /// The API server was unreachable; the release waits in the daemon's durable queue.
    pub queued: bool,
}

/// Release through the daemon; `Ok(None)` when there is none.
///
/// # Errors
///
/// The daemon's failure, with the code the direct path would give.
pub fn release(
    socket: &Path,
    pool_namespace: &str,
    pools: &[String],
    owner: &Owner,
) -> Result<Option<Released>, CniError> {
    let req = Request::IpamRelease {
        pool_namespace: pool_namespace.to_string(),
        pools: pools.to_vec(),
        owner: owner.clone(),
    };
    match call(socket, &req)? {
        None => Ok(None),
        Some(Response::IpamReleased { released, queued }) => Ok(Some(Released {
            freed: released,
            queued,
        })),
        Some(Response::IpamError { failure, message }) => Err(from_ipam_failure(failure, message)),
        Some(other) => Err(unexpected(socket, &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_socket_means_no_daemon() -> Result<(), CniError> {
        let dir = tempfile::tempdir().map_err(|e| CniError::io(e.to_string()))?;
        let req = AllocationRequest::new(Owner::new("c", None, "net1"), Vec::new(), None);
        assert_eq!(
            allocate(&dir.path().join("absent.sock"), "kube-system", &req)?,
            None
        );
        Ok(())
    }

    #[test]
    fn a_socket_nobody_listens_on_means_no_daemon() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("stale.sock");
        // A socket file left behind by a daemon that is gone: connect is refused.
        drop(std::os::unix::net::UnixListener::bind(&path)?);
        let owner = Owner::new("c", None, "net1");
        assert_eq!(release(&path, "kube-system", &["p".into()], &owner)?, None);
        Ok(())
    }
}
