//! The unix-socket API for the shims (`netattach_cluster::daemon_api`): one request per
//! connection, one newline-terminated JSON message each way.
//!
//! - `Resolve` is answered from the caches only;
//! - `PublishStatus` makes exactly one API call: a JSON merge patch of the network-status
//!   annotation through `pods/status` (as Multus does), with `metadata.uid` in the patch as a
//!   precondition when the uid is known (the apiserver refuses a patch whose uid differs);
//! - `Ready` is `Ok` once both caches have synced;
//! - `IpamAllocate` / `IpamRelease` go to the IPAM engine ([`crate::ipam`]): one pool write per
//!   batch of concurrent requests; releases that cannot reach the API server are queued durably;
//! - `Event` creates one core/v1 Warning Event about the pod (a failed ADD), so that
//!   `kubectl describe pod` shows why; best effort, bounded like `PublishStatus`.
//!
//! Every transient failure is CNI code 11 ("try again later"); a request that does not parse
//! is code 6 (decoding failure).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use netattach_cluster::annotation::NETWORK_STATUS_ANNOTATION;
use netattach_cluster::daemon_api::{MAX_MESSAGE, Request, Response, read_message, write_message};
use netattach_cluster::status::{NetworkStatus, to_annotation};
use netattach_cni::error::code;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::cache::{self, Caches};
use crate::error::Error;
use crate::metrics::Metrics;

/// How long a client may take to send its request.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the request handlers share.
pub struct State {
    /// The watch caches.
    pub caches: Caches,
    /// The API client (for `PublishStatus` and `Event` only).
    pub client: Client,
    /// This node's name (`source.host` of the Events).
    pub node: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Upper bound of one `PublishStatus` API call.
    pub publish_timeout: Duration,
    /// The IPAM engine and its release queue.
    pub ipam: Arc<crate::ipam::IpamService>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("caches", &self.caches)
            .field("publish_timeout", &self.publish_timeout)
            .finish_non_exhaustive()
    }
}

/// Prepares the socket: a 0700 directory (created if missing; an existing one must not be
/// accessible to group or others), no stale socket, a fresh socket that appears with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    let fail = |message: String| Error::Socket {
        path: path.to_path_buf(),
        message,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| fail("the path has no directory".into()))?;
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => return Err(fail(format!("{} is not a directory", dir.display()))),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            return Err(fail(format!(
                "directory {} has mode {:o}, so others could reach the socket; fix: chmod 0700 {0} or choose \
                 another --socket",
                dir.display(),
                m.permissions().mode() & 0o7777
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail(format!("creating directory {}: {e}", dir.display())))?;
            // `mode` is filtered by the umask; make it exact.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| fail(format!("chmod 0700 {}: {e}", dir.display())))?;
        }
        Err(e) => return Err(fail(format!("reading directory {}: {e}", dir.display()))),
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail(
                    "another daemon is listening on it; fix: stop it, or choose another --socket".into(),
                ));
            }
            std::fs::remove_file(path).map_err(|e| fail(format!("removing the stale socket: {e}")))?;
            tracing::info!(socket = %path.display(), "removed a stale socket");
        }
        Ok(_) => {
            return Err(fail(
                "exists and is not a socket; fix: remove it or choose another --socket".into(),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    // Bound under a staging name, made 0600, then renamed into place: the socket never shows at
    // `path` with the mode the umask gave it (a client or a check could see it in between).
    let staging = path.with_file_name(format!(
        ".{}.binding",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    match std::fs::remove_file(&staging) {
        // A daemon that died while binding left it.
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(format!("removing {}: {e}", staging.display()))),
    }
    let listener = UnixListener::bind(&staging).map_err(|e| fail(format!("bind: {e}")))?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail(format!("chmod 0600 {}: {e}", staging.display())))
        .and_then(|()| {
            std::fs::rename(&staging, path)
                .map_err(|e| fail(format!("renaming {} into place: {e}", staging.display())))
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    Ok(listener)
}

/// Serves one connection: reads a request, answers, closes.
pub async fn serve_connection(state: Arc<State>, stream: UnixStream) {
    let _guard = state.metrics.start_request();
    // Failures to read are timed from the accept; answers from the moment the request is in.
    let mut started = Instant::now();
    let (read_half, mut write_half) = stream.into_split();
    let mut line = Vec::new();
    let read = tokio::time::timeout(
        REQUEST_READ_TIMEOUT,
        BufReader::new(read_half.take(MAX_MESSAGE)).read_until(b'\n', &mut line),
    )
    .await;
    let (op, response) = match read {
        Err(_) => {
            state
                .metrics
                .observe("invalid", started.elapsed(), Some(code::DECODING_FAILURE));
            tracing::debug!("a client sent no request within {REQUEST_READ_TIMEOUT:?}");
            return;
        }
        Ok(Err(e)) => {
            state
                .metrics
                .observe("invalid", started.elapsed(), Some(code::IO_FAILURE));
            tracing::debug!(error = %e, "reading a request failed");
            return;
        }
        Ok(Ok(_)) => {
            started = Instant::now();
            match read_message::<Request>(line.as_slice()) {
                Ok(request) => handle(&state, request).await,
                Err(e) => (
                    "invalid",
                    Response::Error {
                        code: code::DECODING_FAILURE,
                        message: format!(
                            "the daemon could not decode the request: {e}; fix: use a shim of the same netattach version"
                        ),
                    },
                ),
            }
        }
    };
    let error_code = match &response {
        Response::Error { code, .. } => Some(*code),
        Response::IpamError { failure, message } => {
            Some(netattach_plugins::errors::from_ipam_failure(*failure, message.clone()).code)
        }
        _ => None,
    };
    let mut bytes = Vec::new();
    let written = match write_message(&mut bytes, &response) {
        Ok(()) => write_half.write_all(&bytes).await,
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        tracing::debug!(error = %e, "writing a response failed (client gone?)");
    }
    let _ = write_half.shutdown().await;
    state.metrics.observe(op, started.elapsed(), error_code);
}

async fn handle(state: &State, request: Request) -> (&'static str, Response) {
    match request {
        Request::Ready => (
            "ready",
            if state.metrics.synced() {
                Response::Ok
            } else {
                not_synced()
            },
        ),
        Request::Resolve {
            namespace,
            name,
            uid,
            extra,
            multus_namespace,
        } => {
            if !state.metrics.synced() {
                return ("resolve", not_synced());
            }
            let pod = state.caches.pod(&namespace, &name);
            let response = cache::resolve(
                pod,
                uid.as_deref(),
                &extra,
                multus_namespace
                    .as_deref()
                    .unwrap_or(cache::DEFAULT_NETWORK_NAMESPACE),
                |ns, n| state.caches.nad(ns, n),
            );
            tracing::debug!(%namespace, %name, ?response, "resolve");
            ("resolve", response)
        }
        Request::PublishStatus {
            namespace,
            name,
            uid,
            status,
        } => (
            "publish_status",
            publish_status(state, &namespace, &name, uid.as_deref(), &status).await,
        ),
        Request::IpamAllocate {
            pool_namespace,
            request,
        } => (
            "ipam_allocate",
            state.ipam.allocate(&pool_namespace, &request).await,
        ),
        Request::IpamRelease {
            pool_namespace,
            pools,
            owner,
        } => (
            "ipam_release",
            state.ipam.release(&pool_namespace, &pools, &owner).await,
        ),
        Request::Event {
            namespace,
            name,
            uid,
            reason,
            message,
        } => {
            let event = pod_event(&state.node, &namespace, &name, uid.as_deref(), &reason, &message);
            ("event", create_event(state, &namespace, &name, &event).await)
        }
    }
}

/// Longest Event message the daemon sends (the apiserver refuses longer notes on the
/// events.k8s.io API; core/v1 keeps the same bound here to stay readable).
pub const EVENT_MESSAGE_MAX: usize = 1024;

/// The core/v1 Warning Event about pod `namespace/name` that [`Request::Event`] creates.
pub fn pod_event(
    node: &str,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    reason: &str,
    message: &str,
) -> Event {
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut note = message.to_string();
    if note.len() > EVENT_MESSAGE_MAX {
        let mut cut = EVENT_MESSAGE_MAX - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace.to_string()),
            name: Some(name.to_string()),
            uid: uid.filter(|u| !u.is_empty()).map(str::to_string),
            ..ObjectReference::default()
        },
        reason: Some(reason.to_string()),
        message: Some(note),
        type_: Some("Warning".into()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: None::<MicroTime>,
        source: Some(EventSource {
            component: Some("netattach".into()),
            host: Some(node.to_string()),
        }),
        reporting_component: Some("netattach".into()),
        reporting_instance: Some(node.to_string()),
        ..Event::default()
    }
}

async fn create_event(state: &State, namespace: &str, name: &str, event: &Event) -> Response {
    let api: Api<Event> = Api::namespaced(state.client.clone(), namespace);
    let params = PostParams::default();
    let result = tokio::time::timeout(state.publish_timeout, api.create(&params, event)).await;
    let message = match result {
        Ok(Ok(_)) => {
            tracing::info!(%namespace, %name, reason = ?event.reason, "recorded an event on the pod");
            return Response::Ok;
        }
        Ok(Err(kube::Error::Api(s))) => format!("{} ({}, HTTP {})", s.message, s.reason, s.code),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer from the API within {:?}", state.publish_timeout),
    };
    tracing::warn!(%namespace, %name, error = %message, "recording an event failed");
    Response::Error {
        code: code::TRY_AGAIN_LATER,
        message: format!("creating an event about pod {namespace}/{name}: {message}"),
    }
}

fn not_synced() -> Response {
    Response::Error {
        code: code::TRY_AGAIN_LATER,
        message: "the netattach daemon's watch caches have not synced yet; retry".into(),
    }
}

/// The merge patch `PublishStatus` sends.
pub fn status_patch(
    uid: Option<&str>,
    status: &[NetworkStatus],
) -> Result<serde_json::Value, serde_json::Error> {
    let mut meta = serde_json::Map::new();
    if let Some(uid) = uid.filter(|u| !u.is_empty()) {
        meta.insert("uid".into(), uid.into());
    }
    meta.insert(
        "annotations".into(),
        serde_json::json!({ NETWORK_STATUS_ANNOTATION: to_annotation(status)? }),
    );
    Ok(serde_json::json!({ "metadata": meta }))
}

/// What `PublishStatus` asks the API server to answer with: the patched pod's metadata only
/// (`PartialObjectMetadata`), not the whole pod. Nobody reads the answer beyond its status
/// code, so the server need not encode the spec and status, nor the daemon decode them; an
/// error still comes back as a JSON `Status`.
pub const PUBLISH_ACCEPT: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// The `PATCH pods/<name>/status` request `PublishStatus` sends: a JSON merge patch, answered
/// with [`PUBLISH_ACCEPT`].
pub fn status_patch_request(
    namespace: &str,
    name: &str,
    patch: &serde_json::Value,
) -> Result<http::Request<Vec<u8>>, kube::core::request::Error> {
    let pods = kube::core::Request::new(format!("/api/v1/namespaces/{namespace}/pods"));
    let mut request =
        pods.patch_subresource("status", name, &PatchParams::default(), &Patch::Merge(patch))?;
    request.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(PUBLISH_ACCEPT),
    );
    Ok(request)
}

async fn publish_status(
    state: &State,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    status: &[NetworkStatus],
) -> Response {
    let patch = match status_patch(uid, status) {
        Ok(p) => p,
        Err(e) => {
            return Response::Error {
                code: code::DECODING_FAILURE,
                message: format!("encoding the network-status of pod {namespace}/{name}: {e}"),
            };
        }
    };
    let request = match status_patch_request(namespace, name, &patch) {
        Ok(r) => r,
        Err(e) => {
            return Response::Error {
                code: code::DECODING_FAILURE,
                message: format!("building the network-status patch of pod {namespace}/{name}: {e}"),
            };
        }
    };
    let call = state.client.request_text(request);
    let result = tokio::time::timeout(state.publish_timeout, call).await;
    let message = match result {
        Ok(Ok(_)) => {
            tracing::info!(%namespace, %name, interfaces = status.len(), "published network-status");
            return Response::Ok;
        }
        Ok(Err(kube::Error::Api(s))) => format!("{} ({}, HTTP {})", s.message, s.reason, s.code),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer from the API within {:?}", state.publish_timeout),
    };
    tracing::warn!(%namespace, %name, error = %message, "publishing network-status failed");
    Response::Error {
        code: code::TRY_AGAIN_LATER,
        message: format!("writing the network-status annotation of pod {namespace}/{name}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_carries_the_uid_precondition_and_the_exact_annotation() -> Result<(), serde_json::Error> {
        let status: Vec<NetworkStatus> = serde_json::from_str(
            r#"[{"name":"cbr0","interface":"eth0","ips":["10.42.0.5"],"default":true}]"#,
        )?;
        let p = status_patch(Some("u1"), &status)?;
        assert_eq!(p["metadata"]["uid"], "u1");
        assert_eq!(
            p["metadata"]["annotations"][NETWORK_STATUS_ANNOTATION],
            to_annotation(&status)?
        );
        let p = status_patch(None, &status)?;
        assert!(p["metadata"].get("uid").is_none());
        Ok(())
    }

    #[test]
    fn the_publish_request_patches_the_status_and_asks_for_metadata_only()
    -> Result<(), Box<dyn std::error::Error>> {
        let patch = serde_json::json!({"metadata": {"annotations": {"a": "b"}}});
        let r = status_patch_request("ns1", "pod-1", &patch)?;
        assert_eq!(r.method(), http::Method::PATCH);
        assert_eq!(r.uri().path(), "/api/v1/namespaces/ns1/pods/pod-1/status");
        assert_eq!(
            r.headers()[http::header::CONTENT_TYPE],
            "application/merge-patch+json"
        );
        assert_eq!(r.headers()[http::header::ACCEPT], PUBLISH_ACCEPT);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(r.body())?, patch);
        Ok(())
    }

    #[test]
    fn the_event_is_a_warning_about_the_pod_with_a_bounded_message() {
        let long = "é".repeat(EVENT_MESSAGE_MAX);
        let e = pod_event("node-1", "ns", "p", Some("u1"), "NoNetworkFound", &long);
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("NoNetworkFound"));
        assert_eq!(e.involved_object.kind.as_deref(), Some("Pod"));
        assert_eq!(e.involved_object.name.as_deref(), Some("p"));
        assert_eq!(e.involved_object.uid.as_deref(), Some("u1"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(e.source.and_then(|s| s.host).as_deref(), Some("node-1"));
        let msg = e.message.unwrap_or_default();
        assert!(
            msg.len() <= EVENT_MESSAGE_MAX && msg.ends_with("..."),
            "{}",
            msg.len()
        );
        let short = pod_event("n", "ns", "p", None, "r", "short");
        assert_eq!(short.message.as_deref(), Some("short"));
        assert!(short.involved_object.uid.is_none());
    }

    #[tokio::test]
    async fn the_socket_appears_with_mode_0600_and_listening() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let path = dir.path().join("d.sock");
        // A leftover of a daemon that died while binding is replaced.
        std::fs::write(dir.path().join(".d.sock.binding"), "x")?;
        let listener = bind(&path)?;
        assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        let names: Vec<String> = std::fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names, vec!["d.sock".to_string()], "no staging name left");
        let (client, accepted) = tokio::join!(tokio::net::UnixStream::connect(&path), listener.accept());
        client?;
        accepted?;
        Ok(())
    }

    #[test]
    fn bind_refuses_an_open_directory_and_a_regular_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let err = bind(&dir.path().join("d.sock"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("chmod 0700"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        std::fs::write(dir.path().join("f"), "x")?;
        let err = bind(&dir.path().join("f"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not a socket"), "{err}");
        Ok(())
    }
}
