//! The node daemon's unix-socket API, as the shim and the daemon both speak it.
//!
//! One request per connection: the client writes one JSON object and a newline, the daemon
//! answers with one JSON object and a newline, then closes. The socket is root-only (mode
//! 0600 in a 0700 directory). Everything the shim needs on the hot path comes from the
//! daemon's watch caches: no API read per pod ADD; the only API write is the network-status.
//!
//! The IPAM front (the `whereabouts` face with the kubernetes datastore) sends its allocations
//! and releases here too ([`Request::IpamAllocate`], [`Request::IpamRelease`]): the daemon's
//! engine folds the concurrent requests of its node for one pool into one pool write.

use std::io::{BufRead, BufReader, Read, Write};

use netattach_ipam::error::{ErrorKind, IpamError};
use netattach_ipam::store::{Allocation, AllocationRequest, Owner};
use serde::{Deserialize, Serialize};

use crate::delegates::{Nad, PodInfo};
use crate::status::NetworkStatus;

/// Where the daemon listens by default.
pub const DEFAULT_SOCKET: &str = netattach_ipam::config::DEFAULT_DAEMON_SOCKET;

/// Largest message either side accepts (a pod with many NADs is a few KiB).
pub const MAX_MESSAGE: u64 = 4 << 20;

/// A `namespace/name` reference to a NAD.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NadKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What the shim asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The pod (from the node's pod cache) and every NAD its annotations reference, plus
    /// `extra` NADs the meta config names (`clusterNetwork`, `defaultNetworks`).
    Resolve {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// The pod UID from `K8S_POD_UID`, when the runtime sent it: a cached pod with another
        /// UID is a recreated pod the cache has not caught up with.
        uid: Option<String>,
        /// NADs named by the meta config.
        extra: Vec<NadKey>,
        /// The meta config's `multusNamespace`: where a bare
        /// `v1.multus-cni.io/default-network` name is looked up (kube-system when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        multus_namespace: Option<String>,
    },
    /// Write `k8s.v1.cni.cncf.io/network-status` on the pod (through `pods/status`).
    PublishStatus {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// Pod UID the status belongs to.
        uid: Option<String>,
        /// One entry per interface, cluster network first.
        status: Vec<NetworkStatus>,
    },
    /// Is the daemon ready (caches synced)?
    Ready,
    /// Allocate one address per range of `request` from the `IPPool`s in `pool_namespace`
    /// (idempotent per attachment, as the direct store).
    IpamAllocate {
        /// Namespace of the IPPool objects (the IPAM kubeconfig's context namespace, else
        /// kube-system, as whereabouts).
        pool_namespace: String,
        /// The request, ranges in their whereabouts form (re-validated by the daemon).
        request: AllocationRequest,
    },
    /// Release what `owner` holds in the named pools (whereabouts DEL). When the API server is
    /// unreachable the daemon queues the release durably and answers
    /// [`Response::IpamReleased`] with `queued: true`: the address stays held (never handed out
    /// twice) until the queue is drained.
    IpamRelease {
        /// Namespace of the IPPool objects.
        pool_namespace: String,
        /// The pools of the configuration's ranges.
        pools: Vec<String>,
        /// Whose addresses.
        owner: Owner,
    },
    /// Record a Kubernetes Event (type Warning) on the pod: a failed ADD, so that
    /// `kubectl describe pod` says why (as Multus' `NoNetworkFound`). Best effort on both sides.
    Event {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// Pod UID (`involvedObject.uid`), when known.
        uid: Option<String>,
        /// A CamelCase reason such as `NoNetworkFound` or `InvalidNetworkAnnotation`.
        reason: String,
        /// The message: the CNI error, naming the field, the value and the fix.
        message: String,
    },
}

/// What an IPAM failure is, so the shim maps it to the CNI code the direct path would return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpamFailure {
    /// The configuration or request is invalid (CNI 7).
    InvalidConfig,
    /// A recognised field is not supported (CNI 2).
    UnsupportedField,
    /// Storage I/O (CNI 5).
    Io,
    /// The pool has no free address.
    Exhausted,
    /// A requested static address is held by another attachment.
    RequestedUnavailable,
    /// Retry later: the API server is unreachable or the write budget was spent (CNI 11).
    TryAgain,
    /// A pool object that cannot be read.
    Corrupt,
    /// A bug.
    Internal,
}

impl From<&IpamError> for IpamFailure {
    fn from(err: &IpamError) -> Self {
        match err {
            IpamError::Exhausted { .. } => IpamFailure::Exhausted,
            IpamError::RequestedUnavailable { .. } => IpamFailure::RequestedUnavailable,
            IpamError::Corrupt { .. } => IpamFailure::Corrupt,
            _ => match err.kind() {
                ErrorKind::InvalidConfig => IpamFailure::InvalidConfig,
                ErrorKind::UnsupportedField => IpamFailure::UnsupportedField,
                ErrorKind::Io => IpamFailure::Io,
                ErrorKind::Exhausted => IpamFailure::Exhausted,
                ErrorKind::TryAgain => IpamFailure::TryAgain,
                ErrorKind::Internal => IpamFailure::Internal,
            },
        }
    }
}

/// The `reason` of the Event for a failed ADD that has no more specific one.
pub const EVENT_REASON_ADD_FAILED: &str = "ErrorAddingNetwork";

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Resolve`].
    Resolved {
        /// The pod; `None` when the cache has no such pod.
        pod: Option<PodInfo>,
        /// The referenced NADs that exist.
        nads: Vec<Nad>,
        /// Referenced NADs that do not exist.
        missing: Vec<NadKey>,
    },
    /// Answer to [`Request::IpamAllocate`]: one allocation per range, in request order.
    IpamAllocated {
        /// The addresses.
        allocations: Vec<Allocation>,
    },
    /// Answer to [`Request::IpamRelease`].
    IpamReleased {
        /// What was freed (empty when nothing was held, or when queued).
        released: Vec<Allocation>,
        /// The API server was unreachable: the release waits in the daemon's durable queue.
        queued: bool,
    },
    /// An IPAM request failed.
    IpamError {
        /// What kind of failure (the shim maps it to the CNI code).
        failure: IpamFailure,
        /// The error, naming pool, value and fix.
        message: String,
    },
    /// Success without data.
    Ok,
    /// A failure, with the CNI code the shim should return (11 for anything transient).
    Error {
        /// CNI error code.
        code: u32,
        /// What went wrong, naming the object and the fix.
        message: String,
    },
}

/// Writes one message and a newline.
pub fn write_message<T: Serialize>(w: &mut impl Write, msg: &T) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes)?;
    w.flush()
}

/// Reads one newline-terminated message of at most [`MAX_MESSAGE`] bytes.
pub fn read_message<T: for<'de> Deserialize<'de>>(r: impl Read) -> std::io::Result<T> {
    let mut line = Vec::new();
    BufReader::new(r.take(MAX_MESSAGE)).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed without a message",
        ));
    }
    serde_json::from_slice(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip_as_one_line_each() {
        let req = Request::Resolve {
            namespace: "longhorn-system".into(),
            name: "im-1".into(),
            uid: Some("u1".into()),
            extra: vec![NadKey {
                namespace: "kube-system".into(),
                name: "storage".into(),
            }],
            multus_namespace: None,
        };
        let mut buf = Vec::new();
        write_message(&mut buf, &req).expect("write");
        assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1);
        let back: Request = read_message(buf.as_slice()).expect("read");
        assert_eq!(back, req);
        let resp = Response::Error {
            code: 11,
            message: "caches not synced".into(),
        };
        let mut buf = Vec::new();
        write_message(&mut buf, &resp).expect("write");
        assert!(String::from_utf8_lossy(&buf).contains(r#""result":"error""#));
        assert_eq!(read_message::<Response>(buf.as_slice()).expect("read"), resp);
    }

    #[test]
    fn the_event_request_is_tagged_event() {
        let req = Request::Event {
            namespace: "ns".into(),
            name: "p".into(),
            uid: None,
            reason: "NoNetworkFound".into(),
            message: "m".into(),
        };
        let mut buf = Vec::new();
        write_message(&mut buf, &req).expect("write");
        assert!(String::from_utf8_lossy(&buf).contains(r#""op":"event""#));
        assert_eq!(read_message::<Request>(buf.as_slice()).expect("read"), req);
    }

    #[test]
    fn an_ipam_request_round_trips_with_its_ranges_revalidated() -> Result<(), Box<dyn std::error::Error>> {
        let range = netattach_ipam::range::IpRange::parse(
            "198.18.4.0/24",
            Some("198.18.4.10"),
            None,
            &["198.18.4.32/30".into(), "198.18.4.40".into()],
            Some("198.18.4.1"),
        )?;
        let mut request = AllocationRequest::new(
            Owner::new("c1", Some("ns/p".into()), "net1"),
            vec![range],
            Some("storage".into()),
        );
        request.requested = vec!["198.18.4.77".parse()?];
        let req = Request::IpamAllocate {
            pool_namespace: "kube-system".into(),
            request,
        };
        let mut buf = Vec::new();
        write_message(&mut buf, &req)?;
        let back: Request = read_message(buf.as_slice())?;
        assert_eq!(back, req);
        // A range that does not validate is refused on arrival.
        let text = String::from_utf8(buf)?.replace("198.18.4.10", "198.18.5.10");
        assert!(read_message::<Request>(text.as_bytes()).is_err());
        Ok(())
    }

    #[test]
    fn an_empty_connection_is_an_error() {
        assert!(read_message::<Request>(&b""[..]).is_err());
    }
}
