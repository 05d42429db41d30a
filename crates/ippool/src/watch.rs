//! The watch caches the store's pool view and the turns are read from: a kube-rs reflector
//! driven by a task of its own.
//!
//! Objects are cached without their `managedFields`: nothing here reads them, and a pool's are
//! as large as its allocations (one field set per offset), so every copy the engine takes of a
//! watched pool would clone them too. Writes never carry them either ([`crate::store::replacement`]).

use futures::StreamExt;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use tokio::task::JoinHandle;

/// A reflector over `api` with `config`, driven by a spawned task (watch failures are logged,
/// naming `what`, and retried with backoff). Dropping the handle leaves the task running;
/// aborting it stops the watch.
pub fn in_background<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
) -> (Store<K>, JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, config)
            .default_backoff()
            .modify(|o| o.meta_mut().managed_fields = None),
    );
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                tracing::warn!(error = %e, "{what} watch failed; retrying with backoff");
            }
        }
    });
    (store, task)
}
