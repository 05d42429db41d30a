//! The node daemon's unix-socket API, as the shim and the daemon both speak it.
//!
//! One request per connection: the client writes one JSON object and a newline, the daemon
//! answers with one JSON object and a newline, then closes. The socket is root-only (mode
//! 0600 in a 0700 directory). Everything the shim needs on the hot path comes from the
//! daemon's watch caches: no API read per pod ADD; the only API write is the network-status.

use std::io::{BufRead, BufReader, Read, Write};

use serde::{Deserialize, Serialize};

use crate::delegates::{Nad, PodInfo};
use crate::status::NetworkStatus;

/// Where the daemon listens by default.
pub const DEFAULT_SOCKET: &str = "/run/netattach/daemon.sock";

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
    fn an_empty_connection_is_an_error() {
        assert!(read_message::<Request>(&b""[..]).is_err());
    }
}
