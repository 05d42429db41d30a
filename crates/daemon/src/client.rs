//! The daemon's Kubernetes client: a kubeconfig or the in-cluster config, and a bearer token
//! that follows its token file.
//!
//! Why not kube's own `tokenFile` handling: kube-client 5.0 (`client/auth/mod.rs`, `TokenFile`)
//! caches the file's token and re-reads it only when the cached copy is older than 50 s
//! (`expires_at = read + 60 s`, reloaded when `now + 10 s > expires_at`). A token that is
//! rotated *and* revoked (its bound Secret or Pod deleted, or a short-lived token past its
//! expiry) is therefore sent for up to 50 s more, and every call fails with 401 meanwhile.
//! Multus' thick daemon is worse: it reads the token once and keeps it until it is restarted
//! ("Unauthorized" with stuck pods, research/multus.md §5).
//!
//! Here, when the config names a token file and no inline token, the file is taken out of the
//! config and [`TokenFileLayer`] sets `Authorization` on every request itself. It stats the
//! file on each request (a `stat` is ~1 µs; the hot path makes no API call at all) and re-reads
//! it when its identity changes (device, inode, size, mtime — kubelet's projected volumes swap
//! a `..data` symlink, which changes the inode), when the last read is older than 60 s, and after
//! any 401. A file that cannot be read keeps the last good token (as client-go does).

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::AUTHORIZATION;
use http::{HeaderValue, StatusCode};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tower::{Layer, Service};

use crate::error::Error;
use crate::metrics::Metrics;

/// The longest a token read from the file is used without looking at the file again.
pub const MAX_TOKEN_AGE: Duration = Duration::from_secs(60);

/// Loads the config from `kubeconfig`, or the in-cluster config when `None`. `KUBECONFIG` and
/// `~/.kube/config` are deliberately not consulted: a node daemon that silently picked up an
/// admin's kubeconfig would run with the wrong identity.
pub async fn load_config(kubeconfig: Option<&Path>) -> Result<Config, Error> {
    match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| Error::Config {
                source_name: path.display().to_string(),
                message: e.to_string(),
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Config {
                    source_name: path.display().to_string(),
                    message: e.to_string(),
                })
        }
        None => Config::incluster().map_err(|e| Error::Config {
            source_name: "the in-cluster service account (fix: run in a pod, or pass --kubeconfig)".into(),
            message: e.to_string(),
        }),
    }
}

/// Builds the client: kube's stack, wrapped in [`TokenFileLayer`] (which also counts 401s).
pub fn build_client(mut config: Config, metrics: Arc<Metrics>) -> Result<Client, Error> {
    let token_file = if config.auth_info.token.is_none() {
        config.auth_info.token_file.take().map(PathBuf::from)
    } else {
        None
    };
    let token = token_file
        .map(|path| TokenFile::open(path, metrics.clone()).map(Arc::new))
        .transpose()?;
    let builder = ClientBuilder::try_from(config).map_err(|e| Error::Client(e.to_string()))?;
    Ok(builder.with_layer(&TokenFileLayer { token, metrics }).build())
}

/// What identifies one version of the token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

#[derive(Debug)]
struct TokenState {
    header: HeaderValue,
    stamp: Option<Stamp>,
    read_at: Instant,
    stale: bool,
}

/// A bearer token that follows its file.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    state: Mutex<TokenState>,
    metrics: Arc<Metrics>,
}

fn read_header(path: &Path) -> Result<HeaderValue, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::TokenFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::TokenFile {
            path: path.to_path_buf(),
            message: "the file is empty".into(),
        });
    }
    let mut header = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Error::TokenFile {
        path: path.to_path_buf(),
        message: "the token has characters not allowed in an HTTP header".into(),
    })?;
    header.set_sensitive(true);
    Ok(header)
}

impl TokenFile {
    /// Reads the token from `path` (it must be readable now).
    pub fn open(path: PathBuf, metrics: Arc<Metrics>) -> Result<TokenFile, Error> {
        let stamp = Stamp::of(&path);
        let header = read_header(&path)?;
        Ok(TokenFile {
            path,
            state: Mutex::new(TokenState {
                header,
                stamp,
                read_at: Instant::now(),
                stale: false,
            }),
            metrics,
        })
    }

    /// The `Authorization` value to send now, re-reading the file when it changed.
    pub fn header(&self) -> HeaderValue {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stamp = Stamp::of(&self.path);
        if st.stale || stamp != st.stamp || st.read_at.elapsed() >= MAX_TOKEN_AGE {
            match read_header(&self.path) {
                Ok(header) => {
                    if header != st.header {
                        self.metrics.token_reloaded();
                        tracing::info!(path = %self.path.display(), "read a new token from the token file");
                    }
                    st.header = header;
                }
                Err(e) => tracing::warn!(error = %e, "keeping the last token"),
            }
            st.stamp = stamp;
            st.read_at = Instant::now();
            st.stale = false;
        }
        st.header.clone()
    }

    /// The API refused the token: read the file again before the next request.
    fn refused(&self) {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.stale = true;
    }
}

/// Tower layer: sets the bearer token from a [`TokenFile`] (when there is one) and counts
/// 401 answers.
#[derive(Debug, Clone)]
pub struct TokenFileLayer {
    token: Option<Arc<TokenFile>>,
    metrics: Arc<Metrics>,
}

impl<S> Layer<S> for TokenFileLayer {
    type Service = TokenFileService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenFileService {
            inner,
            token: self.token.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`TokenFileLayer`].
#[derive(Debug, Clone)]
pub struct TokenFileService<S> {
    inner: S,
    token: Option<Arc<TokenFile>>,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for TokenFileService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        if let Some(token) = &self.token {
            req.headers_mut().insert(AUTHORIZATION, token.header());
        }
        let fut = self.inner.call(req);
        let token = self.token.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let resp = fut.await?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                metrics.unauthorized();
                tracing::warn!("the API refused the token (401)");
                if let Some(token) = token {
                    token.refused();
                }
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_file_is_read_on_the_next_request() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("token");
        std::fs::write(&path, "one\n")?;
        let metrics = Arc::new(Metrics::default());
        let tf = TokenFile::open(path.clone(), metrics.clone())?;
        assert_eq!(tf.header(), "Bearer one");
        // Same size, maybe same mtime tick: a rename gives a new inode, as kubelet does.
        let tmp = dir.path().join("token.new");
        std::fs::write(&tmp, "two\n")?;
        std::fs::rename(&tmp, &path)?;
        assert_eq!(tf.header(), "Bearer two");
        assert!(
            metrics
                .render(0, 0)
                .contains("netattach_daemon_token_reloads_total 1")
        );
        Ok(())
    }

    #[test]
    fn an_unreadable_file_keeps_the_last_token() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("token");
        std::fs::write(&path, "one")?;
        let tf = TokenFile::open(path.clone(), Arc::new(Metrics::default()))?;
        std::fs::remove_file(&path)?;
        assert_eq!(tf.header(), "Bearer one");
        std::fs::write(&path, "")?;
        assert_eq!(tf.header(), "Bearer one");
        Ok(())
    }

    #[test]
    fn a_missing_file_at_start_is_an_error_naming_it() {
        let err = TokenFile::open("/nonexistent/token".into(), Arc::new(Metrics::default()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/token"), "{err}");
    }
}
