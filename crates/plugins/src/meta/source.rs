//! Where the meta-plugin gets the pod and its NADs, and where it publishes network-status.
//!
//! - Kubernetes mode (no `localSource`): the node daemon over its unix socket
//!   ([`netattach_cluster::daemon_api`]); the shim never talks to the API server. An
//!   unreachable or not-ready daemon is retried with backoff for `daemonTimeoutSeconds`, then
//!   ADD fails with code 11 naming the socket and the fix.
//! - Local mode (`localSource: <dir>`, the lab and tests): NADs from `<dir>/nads/*.yaml`, the pod
//!   from `<dir>/pods/<namespace>/<name>.json` (a `PodInfo` object: `namespace`, `name`, `uid`,
//!   `annotations`), network-status written to `<dir>/pods/<namespace>/<name>.status.json` in
//!   exactly the annotation's format.
//!
//! A pod the source does not know is code 11 (retryable), never an empty success: a pod must
//! not come up silently without the networks it asked for (Multus #1387).

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netattach_cluster::daemon_api::{NadKey, Request, Response, read_message, write_message};
use netattach_cluster::delegates::MemNadSource;
use netattach_cluster::local_source::LocalNadSource;
use netattach_cluster::status::{NetworkStatus, to_annotation};
use netattach_cluster::{MetaConfig, NadSource, PodInfo};
use netattach_cni::CniArgs;
use netattach_cni::error::{CniError, code};

/// How often the readiness indicator file is polled.
const READINESS_POLL: Duration = Duration::from_millis(100);
/// First and largest pause between daemon connection attempts.
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// I/O timeout on an established daemon connection.
const DAEMON_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The pod named by `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodKey {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// `K8S_POD_UID`, when sent.
    pub uid: Option<String>,
}

/// The pod from `CNI_ARGS`: `None` when neither `K8S_POD_NAMESPACE` nor `K8S_POD_NAME` is set
/// (not a Kubernetes pod: only the cluster network runs, as in Multus); code 4 when only one
/// of them is.
pub fn pod_key(args: &CniArgs) -> Result<Option<PodKey>, CniError> {
    let ns = args.pod_namespace().filter(|s| !s.is_empty());
    let name = args.pod_name().filter(|s| !s.is_empty());
    match (ns, name) {
        (None, None) => Ok(None),
        (Some(namespace), Some(name)) => Ok(Some(PodKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: args.pod_uid().filter(|s| !s.is_empty()).map(str::to_string),
        })),
        (ns, name) => Err(CniError::invalid_env(format!(
            "CNI_ARGS has K8S_POD_NAMESPACE={:?} and K8S_POD_NAME={:?}; fix: the runtime must send both or neither",
            ns.unwrap_or(""),
            name.unwrap_or("")
        ))),
    }
}

/// Waits up to `readinessTimeoutSeconds` for `readinessindicatorfile`; code 11 when it does not
/// appear.
pub fn wait_readiness(meta: &MetaConfig) -> Result<(), CniError> {
    let Some(file) = meta.readiness_indicator_file.as_deref() else {
        return Ok(());
    };
    let deadline = Instant::now() + meta.readiness_timeout;
    loop {
        if file.exists() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CniError::try_again(format!(
                "readinessindicatorfile `{}` did not appear within {:.1}s: the cluster network is not ready; fix: check the cluster network (flannel on K3s) on this node; the runtime retries",
                file.display(),
                meta.readiness_timeout.as_secs_f64()
            )));
        }
        std::thread::sleep(READINESS_POLL);
    }
}

/// The pod (when there is one) and the NADs resolution may look up.
pub struct Lookup {
    /// The pod, `None` when `CNI_ARGS` named none.
    pub pod: Option<PodInfo>,
    /// NADs.
    pub nads: Box<dyn NadSource>,
}

/// Looks the pod and its NADs up in the configured source.
pub fn lookup(meta: &MetaConfig, key: Option<&PodKey>) -> Result<Lookup, CniError> {
    match &meta.local_source {
        Some(dir) => local_lookup(dir, key),
        None => daemon_lookup(meta, key),
    }
}

/// NADs (and no pod) for the verbs that have no pod: STATUS and GC.
pub fn nads_only(meta: &MetaConfig) -> Result<Box<dyn NadSource>, CniError> {
    match &meta.local_source {
        Some(dir) => Ok(Box::new(local_nads(dir)?)),
        // The daemon API resolves NADs per pod; the cluster network is normally a file.
        None => Ok(Box::new(MemNadSource::new())),
    }
}

fn local_nads(dir: &Path) -> Result<LocalNadSource, CniError> {
    let nads = dir.join("nads");
    if !nads.is_dir() {
        return Ok(LocalNadSource::new());
    }
    LocalNadSource::load_dir(&nads).map_err(CniError::from)
}

/// `<dir>/pods/<namespace>/<name>.json`.
pub fn local_pod_path(dir: &Path, namespace: &str, name: &str) -> PathBuf {
    dir.join("pods").join(namespace).join(format!("{name}.json"))
}

/// The pod file's format: [`PodInfo`] with every field but `name` optional.
#[derive(serde::Deserialize)]
struct PodFile {
    #[serde(default)]
    namespace: Option<String>,
    name: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn local_lookup(dir: &Path, key: Option<&PodKey>) -> Result<Lookup, CniError> {
    let nads = Box::new(local_nads(dir)?);
    let Some(key) = key else {
        return Ok(Lookup { pod: None, nads });
    };
    let path = local_pod_path(dir, &key.namespace, &key.name);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(CniError::try_again(format!(
                "pod {}/{} is not known: `{}` does not exist; fix: write the pod file (localSource), the runtime retries",
                key.namespace,
                key.name,
                path.display()
            )));
        }
        Err(e) => {
            return Err(CniError::io(format!(
                "reading pod file `{}`: {e}",
                path.display()
            )));
        }
    };
    let file: PodFile = serde_json::from_slice(&bytes).map_err(|e| {
        CniError::invalid_config(format!(
            "pod file `{}` does not parse ({e}); fix: write {{\"name\": \"…\", \"namespace\": \"…\", \"uid\": \"…\", \"annotations\": {{…}}}}",
            path.display()
        ))
    })?;
    let pod = PodInfo {
        namespace: file.namespace.unwrap_or_else(|| key.namespace.clone()),
        name: file.name,
        uid: file.uid,
        annotations: file.annotations,
    };
    if pod.namespace != key.namespace || pod.name != key.name {
        return Err(CniError::invalid_config(format!(
            "pod file `{}` describes pod {}/{}, not {}/{}; fix: correct the file",
            path.display(),
            pod.namespace,
            pod.name,
            key.namespace,
            key.name
        )));
    }
    if let Some(uid) = &key.uid
        && !pod.uid.is_empty()
        && &pod.uid != uid
    {
        return Err(CniError::try_again(format!(
            "pod {}/{} has UID {} in `{}`, the runtime asks for UID {uid}: the pod was recreated; fix: update the pod file, the runtime retries",
            pod.namespace,
            pod.name,
            pod.uid,
            path.display()
        )));
    }
    Ok(Lookup { pod: Some(pod), nads })
}

/// Writes the status next to the pod file, atomically (temp file + rename).
fn local_publish(dir: &Path, pod: &PodInfo, statuses: &[NetworkStatus]) -> Result<(), CniError> {
    let text = to_annotation(statuses)
        .map_err(|e| CniError::internal(format!("network-status does not serialize: {e}")))?;
    let pod_dir = dir.join("pods").join(&pod.namespace);
    let target = pod_dir.join(format!("{}.status.json", pod.name));
    let tmp = pod_dir.join(format!(".{}.status.json.tmp.{}", pod.name, std::process::id()));
    std::fs::create_dir_all(&pod_dir)
        .and_then(|()| std::fs::write(&tmp, text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &target))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CniError::try_again(format!(
                "writing network-status `{}`: {e}; fix: make the localSource directory writable",
                target.display()
            ))
        })
}

/// Publishes the pod's network-status: to the daemon (Kubernetes mode) or next to the pod
/// file (local mode). Any failure is code 11.
pub fn publish(meta: &MetaConfig, pod: &PodInfo, statuses: &[NetworkStatus]) -> Result<(), CniError> {
    if let Some(dir) = &meta.local_source {
        return local_publish(dir, pod, statuses);
    }
    let req = Request::PublishStatus {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: (!pod.uid.is_empty()).then(|| pod.uid.clone()),
        status: statuses.to_vec(),
    };
    match call(&meta.daemon_socket, &req, meta.daemon_timeout)? {
        Response::Ok => Ok(()),
        Response::Error { message, .. } => Err(CniError::try_again(format!(
            "the node daemon could not publish the network-status of pod {}/{}: {message}",
            pod.namespace, pod.name
        ))),
        other => Err(unexpected(&meta.daemon_socket, &other)),
    }
}

/// I/O timeout of the one attempt to record an Event: short, it must never delay the error.
const EVENT_IO_TIMEOUT: Duration = Duration::from_secs(3);

/// After a failed ADD in Kubernetes mode: asks the daemon to record a Warning Event with
/// `reason` and the error on the pod named by `CNI_ARGS`. One attempt, best effort: a failure
/// is only logged, and the caller returns its CNI error unchanged. Nothing in local mode or
/// without a pod.
pub fn report_add_failure(meta: &MetaConfig, args: &CniArgs, reason: &str, error: &CniError) {
    if meta.local_source.is_some() {
        return;
    }
    let Ok(Some(key)) = pod_key(args) else {
        return;
    };
    let req = Request::Event {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        uid: key.uid,
        reason: reason.to_string(),
        message: format!("netattach: {error}"),
    };
    let sent = UnixStream::connect(&meta.daemon_socket).and_then(|mut stream| {
        stream.set_read_timeout(Some(EVENT_IO_TIMEOUT))?;
        stream.set_write_timeout(Some(EVENT_IO_TIMEOUT))?;
        write_message(&mut stream, &req)?;
        read_message::<Response>(&stream)
    });
    match sent {
        Ok(Response::Ok) => {}
        Ok(other) => tracing::warn!(response = ?other, "the daemon did not record the pod event"),
        Err(e) => {
            tracing::warn!(error = %e, socket = %meta.daemon_socket.display(), "could not ask the daemon to record the pod event")
        }
    }
}

/// STATUS in Kubernetes mode: the daemon must answer `Ready` (one attempt; code 50 otherwise).
pub fn daemon_ready(meta: &MetaConfig) -> Result<(), CniError> {
    if meta.local_source.is_some() {
        return Ok(());
    }
    let not_available =
        |why: String| CniError::new(code::PLUGIN_NOT_AVAILABLE, "netattach daemon not ready", why);
    match call(&meta.daemon_socket, &Request::Ready, Duration::ZERO) {
        Ok(Response::Ok) => Ok(()),
        Ok(Response::Error { message, .. }) => Err(not_available(message)),
        Ok(other) => Err(not_available(unexpected(&meta.daemon_socket, &other).details)),
        Err(e) => Err(not_available(e.details)),
    }
}

fn extra_nads(meta: &MetaConfig) -> Vec<NadKey> {
    meta.cluster_network
        .iter()
        .chain(meta.default_networks.iter())
        .filter(|n| !n.contains('/'))
        .map(|n| NadKey {
            namespace: meta.multus_namespace.clone(),
            name: n.clone(),
        })
        .collect()
}

fn daemon_lookup(meta: &MetaConfig, key: Option<&PodKey>) -> Result<Lookup, CniError> {
    let Some(key) = key else {
        return Ok(Lookup {
            pod: None,
            nads: Box::new(MemNadSource::new()),
        });
    };
    let req = Request::Resolve {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        uid: key.uid.clone(),
        extra: extra_nads(meta),
        multus_namespace: Some(meta.multus_namespace.clone()),
    };
    match call(&meta.daemon_socket, &req, meta.daemon_timeout)? {
        Response::Resolved {
            pod: Some(pod),
            nads,
            missing,
        } => {
            if !missing.is_empty() {
                tracing::debug!(?missing, "the daemon reports referenced NADs that do not exist");
            }
            let mut src = MemNadSource::new();
            for nad in nads {
                src.insert(nad);
            }
            Ok(Lookup {
                pod: Some(pod),
                nads: Box::new(src),
            })
        }
        Response::Resolved { pod: None, .. } => Err(CniError::try_again(format!(
            "pod {}/{} is not in the node daemon's pod cache (yet); fix: nothing if it was just created, the runtime retries; otherwise check the daemon's logs",
            key.namespace, key.name
        ))),
        Response::Error { code, message } => Err(CniError::new(code, "node daemon error", message)),
        other => Err(unexpected(&meta.daemon_socket, &other)),
    }
}

fn unexpected(socket: &Path, resp: &Response) -> CniError {
    CniError::try_again(format!(
        "the node daemon on `{}` answered {resp:?}, which does not fit the request; fix: run the same netattach version for daemon and shim",
        socket.display()
    ))
}

fn retryable(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::NotFound
            | ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
            | ErrorKind::WouldBlock
            | ErrorKind::TimedOut
            | ErrorKind::Interrupted
    )
}

fn once(socket: &Path, req: &Request) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(DAEMON_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(DAEMON_IO_TIMEOUT))?;
    write_message(&mut stream, req)?;
    read_message(&stream)
}

/// One request to the daemon, retried with backoff while the daemon is unreachable or answers
/// "try again later", for at most `budget`. The final failure is code 11 naming the socket.
fn call(socket: &Path, req: &Request, budget: Duration) -> Result<Response, CniError> {
    let started = Instant::now();
    let deadline = started + budget;
    let mut pause = BACKOFF_START;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match once(socket, req) {
            Ok(Response::Error { code: c, message }) if c == code::TRY_AGAIN_LATER => {
                format!("the daemon is not ready: {message}")
            }
            Ok(resp) => return Ok(resp),
            Err(e) if retryable(e.kind()) => e.to_string(),
            Err(e) => {
                return Err(CniError::try_again(format!(
                    "talking to the netattach node daemon on `{}`: {e}; fix: check the daemon is running on this node and the socket is its",
                    socket.display()
                )));
            }
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(CniError::try_again(format!(
                "the netattach node daemon on `{}` did not answer within {:.1}s ({attempts} attempts; last: {last}); fix: check that the netattach daemon pod on this node is running and ready (its logs say why not), or correct \"daemonSocket\"; the runtime retries this ADD",
                socket.display(),
                started.elapsed().as_secs_f64()
            )));
        }
        tracing::debug!(socket = %socket.display(), error = %last, "daemon not answering; retrying");
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(raw: &str) -> CniArgs {
        CniArgs::parse(raw).expect("args")
    }

    #[test]
    fn pod_key_needs_both_or_neither() {
        assert_eq!(pod_key(&args("IgnoreUnknown=1")).expect("none"), None);
        let k = pod_key(&args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u",
        ))
        .expect("ok")
        .expect("some");
        assert_eq!(
            (k.namespace.as_str(), k.name.as_str(), k.uid.as_deref()),
            ("ns", "p", Some("u"))
        );
        let e = pod_key(&args("IgnoreUnknown=1;K8S_POD_NAME=p")).expect_err("half");
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn a_missing_daemon_is_code_11_naming_the_socket_within_the_budget() {
        let dir = tempfile::tempdir().expect("tmp");
        let socket = dir.path().join("none.sock");
        let started = Instant::now();
        let e = call(&socket, &Request::Ready, Duration::from_millis(120)).expect_err("no daemon");
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        assert!(e.details.contains(&socket.display().to_string()), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn readiness_times_out_with_code_11() {
        let dir = tempfile::tempdir().expect("tmp");
        let meta = MetaConfig {
            readiness_indicator_file: Some(dir.path().join("ready")),
            readiness_timeout: Duration::from_millis(150),
            ..MetaConfig::default()
        };
        assert_eq!(
            wait_readiness(&meta).expect_err("absent").code,
            code::TRY_AGAIN_LATER
        );
        std::fs::write(dir.path().join("ready"), "").expect("write");
        wait_readiness(&meta).expect("present");
    }
}
