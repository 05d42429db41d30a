//! The netattach node daemon (`netattach daemon`): one per node.
//!
//! It keeps watch caches of this node's pods and of all NetworkAttachmentDefinitions
//! ([`cache`]), answers the shims on a root-only unix socket ([`server`], speaking
//! `netattach_cluster::daemon_api`), writes `k8s.v1.cni.cncf.io/network-status` through
//! `pods/status`, writes a readiness file once the caches are synced, and serves Prometheus
//! metrics on loopback ([`metrics`]). Its token follows the token file ([`client`]), so a
//! rotated service-account token never leaves it stuck on `Unauthorized`.
//!
//! Lifecycle: [`run`] builds a single-threaded Tokio runtime (the work is I/O-bound and tiny;
//! one thread keeps RSS low), binds the socket and the metrics port, starts the reflectors,
//! and serves until SIGTERM or SIGINT. Then it stops accepting, removes the readiness file and
//! the socket, waits for in-flight requests (at most [`SHUTDOWN_GRACE`]) and returns `Ok`.
//! Logs leave through [`logging`]'s queue, written out by a thread of its own, so a stalled
//! reader of stderr never stalls the runtime thread.

pub mod cache;
pub mod client;
pub mod error;
pub mod gc;
pub mod ipam;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod nad;
pub mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use netattach_cluster::daemon_api::DEFAULT_SOCKET;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

pub use error::Error;

/// Default readiness file.
pub const DEFAULT_READY_FILE: &str = "/run/netattach/ready";
/// Default metrics address: loopback only.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
/// How long shutdown waits for in-flight requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// `netattach daemon` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// This node's name (the pods with this `spec.nodeName` are cached). Default: $NODE_NAME,
    /// else the hostname.
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// A kubeconfig file; without it the in-cluster service account is used. (`KUBECONFIG` is
    /// not consulted.)
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The unix socket the shims talk to (mode 0600, in a 0700 directory).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Written when the caches are synced (`node=`, `pid=` and `metrics=`, the address `/metrics`
    /// is served on, one `key=value` per line); removed at shutdown.
    #[arg(long, default_value = DEFAULT_READY_FILE)]
    pub ready_file: PathBuf,
    /// Where `/metrics` and `/readyz` are served (HTTP). Keep it on loopback unless a scraper
    /// needs it elsewhere. Port 0 picks a free one (the ready file names it).
    #[arg(long, default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Server-side timeout of each watch call, seconds; the watch is then re-opened (with the
    /// current token).
    #[arg(long, default_value_t = 290, hide = true)]
    pub watch_timeout: u32,
    /// Upper bound of the one API call of a `PublishStatus`, seconds.
    #[arg(long, default_value_t = 10)]
    pub publish_timeout: u64,
    /// Where IPAM releases wait (durably) while the API server is unreachable.
    #[arg(long, default_value = ipam::DEFAULT_QUEUE_DIR)]
    pub ipam_queue_dir: PathBuf,
    /// The namespace of the whereabouts `IPPool` objects, where the IPAM garbage collector
    /// frees the allocations of pods that are gone (and holds its Lease).
    #[arg(long, default_value = netattach_ippool::DEFAULT_NAMESPACE)]
    pub ipam_namespace: String,
}

fn node_name(arg: Option<&str>) -> Result<String, Error> {
    if let Some(n) = arg.map(str::trim).filter(|n| !n.is_empty()) {
        return Ok(n.to_string());
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .ok_or(Error::NoNodeName)
}

/// Runs the daemon until SIGTERM or SIGINT.
///
/// # Errors
///
/// When it cannot start (config, socket, metrics address); each error names the fix.
pub fn run(args: DaemonArgs) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Runtime {
            what: "starting the Tokio runtime",
            source,
        })?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: DaemonArgs) -> Result<(), Error> {
    let node = node_name(args.node.as_deref())?;
    let metrics = Arc::new(metrics::Metrics::default());
    let config = client::load_config(args.kubeconfig.as_deref()).await?;
    let client = client::build_client(config, metrics.clone())?;

    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| Error::Runtime {
        what: "installing the SIGTERM handler",
        source,
    })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| Error::Runtime {
        what: "installing the SIGINT handler",
        source,
    })?;

    remove_ready_file(&args.ready_file)?;
    let listener = server::bind(&args.socket)?;
    if !args.metrics_addr.ip().is_loopback() {
        tracing::warn!(addr = %args.metrics_addr, "metrics are served beyond loopback");
    }
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|source| Error::Metrics {
            addr: args.metrics_addr,
            source,
        })?;
    let metrics_addr = metrics_listener.local_addr().map_err(|source| Error::Metrics {
        addr: args.metrics_addr,
        source,
    })?;

    let gc = gc::start(
        client.clone(),
        gc::GcOptions {
            node: node.clone(),
            ipam_namespace: args.ipam_namespace.clone(),
            watch_timeout_secs: args.watch_timeout,
        },
    );
    let gc_metrics = gc.metrics();

    let watch = cache::WatchOptions {
        node: node.clone(),
        timeout_secs: args.watch_timeout,
    };
    let (caches, synced) = cache::Caches::start(&client, &watch, &metrics);
    let ipam = Arc::new(ipam::IpamService::new(
        client.clone(),
        &node,
        &args.ipam_queue_dir,
    )?);
    let drain_task = tokio::spawn(ipam::drain_forever(ipam.clone()));
    let metrics_task = {
        let caches = caches.clone();
        let metrics = metrics.clone();
        let ipam = ipam.clone();
        tokio::spawn(metrics::serve(metrics_listener, move || {
            (
                metrics.render(caches.pod_count(), caches.nad_count())
                    + &gc_metrics.render()
                    + &ipam.render_metrics(),
                metrics.synced(),
            )
        }))
    };
    let state = Arc::new(server::State {
        caches: caches.clone(),
        client,
        node: node.clone(),
        metrics: metrics.clone(),
        publish_timeout: Duration::from_secs(args.publish_timeout),
        ipam,
    });
    tracing::info!(
        %node,
        socket = %args.socket.display(),
        metrics = %metrics_addr,
        "netattach daemon started; waiting for the caches to sync"
    );

    let mut synced = std::pin::pin!(synced);
    let mut is_synced = false;
    let mut connections = JoinSet::new();
    let reason = loop {
        tokio::select! {
            () = &mut synced, if !is_synced => {
                is_synced = true;
                metrics.set_synced(true);
                write_ready_file(&args.ready_file, &node, metrics_addr)?;
                tracing::info!(pods = caches.pod_count(), nads = caches.nad_count(), ready_file = %args.ready_file.display(), "caches synced; ready");
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(server::serve_connection(state.clone(), stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
        }
    };

    tracing::info!(signal = reason, in_flight = connections.len(), "shutting down");
    // In-flight requests are still answered from the (still valid) caches; only new
    // connections are refused, and the readiness file goes first.
    drop(listener);
    let ready_removed = remove_ready_file(&args.ready_file);
    if let Err(e) = std::fs::remove_file(&args.socket)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(socket = %args.socket.display(), error = %e, "removing the socket");
    }
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "in-flight requests did not finish within {SHUTDOWN_GRACE:?}"
        );
        connections.abort_all();
    }
    gc.shutdown().await;
    metrics_task.abort();
    drain_task.abort();
    ready_removed?;
    tracing::info!("stopped");
    Ok(())
}

fn write_ready_file(path: &Path, node: &str, metrics: SocketAddr) -> Result<(), Error> {
    let fail = |source| Error::ReadyFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    let text = format!("node={node}\npid={}\nmetrics={metrics}\n", std::process::id());
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

fn remove_ready_file(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::ReadyFile {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_name_comes_from_the_flag_else_the_hostname() -> Result<(), Error> {
        assert_eq!(node_name(Some(" node-1 "))?, "node-1");
        assert!(!node_name(None)?.is_empty());
        assert!(!node_name(Some(""))?.is_empty());
        Ok(())
    }
}
