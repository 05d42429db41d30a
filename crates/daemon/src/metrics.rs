//! Prometheus metrics (text exposition format 0.0.4) and the tiny HTTP responder that serves
//! them on `--metrics-addr` (loopback by default).
//!
//! Hand-written instead of a metrics crate: a dozen atomics, no allocation on the request path,
//! and no HTTP stack in the binary. The responder answers `GET /metrics` and `GET /readyz`
//! (200 once the caches are synced, else 503), one request per connection.
//!
//! Metrics (all prefixed `netattach_daemon_`):
//! - `requests_total{op}`: socket requests by op (`resolve`, `publish_status`, `ready`, `event`, `invalid`);
//! - `request_duration_seconds{op}`: their latency (histogram);
//! - `errors_total{code}`: error answers by CNI error code;
//! - `in_flight_requests`: socket connections being served;
//! - `cache_objects{cache}`: objects in the `pods` and `nads` caches;
//! - `cache_synced`: 1 once both caches have listed;
//! - `watch_errors_total{cache}`: failed watch or list calls (each is retried with backoff);
//! - `api_unauthorized_total`: API answers 401 (the token was refused);
//! - `token_reloads_total`: times a new token was read from the token file;
//! - `log_lines_dropped_total`: log lines dropped because stderr's reader stalled
//!   ([`crate::logging`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The socket operations, as metric labels.
pub const OPS: [&str; 7] = [
    "resolve",
    "publish_status",
    "ready",
    "event",
    "ipam_allocate",
    "ipam_release",
    "invalid",
];

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// Which cache a watch metric is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    /// This node's pods.
    Pods,
    /// All NetworkAttachmentDefinitions.
    Nads,
}

impl CacheKind {
    fn label(self) -> &'static str {
        match self {
            CacheKind::Pods => "pods",
            CacheKind::Nads => "nads",
        }
    }
}

/// Every metric of the daemon.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [AtomicU64; OPS.len()],
    latency: [Histogram; OPS.len()],
    errors: Mutex<BTreeMap<u32, u64>>,
    in_flight: AtomicU64,
    synced: AtomicBool,
    watch_errors: [AtomicU64; 2],
    unauthorized: AtomicU64,
    token_reloads: AtomicU64,
}

fn op_index(op: &str) -> usize {
    OPS.iter().position(|o| *o == op).unwrap_or(OPS.len() - 1)
}

impl Metrics {
    /// Records one finished request: its op, its latency and, for an error, its CNI code.
    pub fn observe(&self, op: &str, latency: Duration, error_code: Option<u32>) {
        let i = op_index(op);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        self.latency[i].observe(latency);
        if let Some(code) = error_code {
            let mut errors = self
                .errors
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *errors.entry(code).or_default() += 1;
        }
    }

    /// A connection is being served; the returned guard ends it.
    pub fn start_request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Marks both caches as synced (or not).
    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Release);
    }

    /// Whether both caches have synced.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// A watch or list call failed.
    pub fn watch_error(&self, cache: CacheKind) {
        let i = usize::from(cache == CacheKind::Nads);
        self.watch_errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The API answered 401.
    pub fn unauthorized(&self) {
        self.unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    /// A new token was read from the token file.
    pub fn token_reloaded(&self) {
        self.token_reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition, with the current cache sizes.
    pub fn render(&self, pods: usize, nads: usize) -> String {
        let mut out = String::with_capacity(4096);
        let p = "netattach_daemon";
        let _ = writeln!(
            out,
            "# HELP {p}_requests_total Socket requests served, by operation."
        );
        let _ = writeln!(out, "# TYPE {p}_requests_total counter");
        for (op, n) in OPS.iter().zip(&self.requests) {
            let _ = writeln!(
                out,
                "{p}_requests_total{{op=\"{op}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {p}_request_duration_seconds Socket request latency, by operation."
        );
        let _ = writeln!(out, "# TYPE {p}_request_duration_seconds histogram");
        for (op, h) in OPS.iter().zip(&self.latency) {
            for (bound, bucket) in BUCKETS.iter().zip(&h.buckets) {
                let _ = writeln!(
                    out,
                    "{p}_request_duration_seconds_bucket{{op=\"{op}\",le=\"{bound}\"}} {}",
                    bucket.load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{p}_request_duration_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {count}"
            );
            #[allow(clippy::cast_precision_loss, reason = "a latency sum in seconds")]
            let sum = h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{p}_request_duration_seconds_sum{{op=\"{op}\"}} {sum}");
            let _ = writeln!(out, "{p}_request_duration_seconds_count{{op=\"{op}\"}} {count}");
        }
        let _ = writeln!(out, "# HELP {p}_errors_total Error answers, by CNI error code.");
        let _ = writeln!(out, "# TYPE {p}_errors_total counter");
        {
            let errors = self
                .errors
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (code, n) in errors.iter() {
                let _ = writeln!(out, "{p}_errors_total{{code=\"{code}\"}} {n}");
            }
        }
        scalar(
            &mut out,
            "in_flight_requests",
            "gauge",
            "Socket connections being served.",
            self.in_flight.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP {p}_cache_objects Objects in the watch caches.");
        let _ = writeln!(out, "# TYPE {p}_cache_objects gauge");
        let _ = writeln!(out, "{p}_cache_objects{{cache=\"pods\"}} {pods}");
        let _ = writeln!(out, "{p}_cache_objects{{cache=\"nads\"}} {nads}");
        scalar(
            &mut out,
            "cache_synced",
            "gauge",
            "1 once both watch caches have synced.",
            u8::from(self.synced()),
        );
        let _ = writeln!(
            out,
            "# HELP {p}_watch_errors_total Failed watch or list calls (retried with backoff)."
        );
        let _ = writeln!(out, "# TYPE {p}_watch_errors_total counter");
        for kind in [CacheKind::Pods, CacheKind::Nads] {
            let n = self.watch_errors[usize::from(kind == CacheKind::Nads)].load(Ordering::Relaxed);
            let _ = writeln!(out, "{p}_watch_errors_total{{cache=\"{}\"}} {n}", kind.label());
        }
        scalar(
            &mut out,
            "api_unauthorized_total",
            "counter",
            "API answers 401 Unauthorized.",
            self.unauthorized.load(Ordering::Relaxed),
        );
        scalar(
            &mut out,
            "token_reloads_total",
            "counter",
            "New tokens read from the token file.",
            self.token_reloads.load(Ordering::Relaxed),
        );
        scalar(
            &mut out,
            "log_lines_dropped_total",
            "counter",
            "Log lines dropped because stderr's reader stalled.",
            crate::logging::dropped_lines(),
        );
        out
    }
}

/// One unlabelled series `netattach_daemon_<name>` with its `HELP` and `TYPE` lines.
fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP netattach_daemon_{name} {help}");
    let _ = writeln!(out, "# TYPE netattach_daemon_{name} {kind}");
    let _ = writeln!(out, "netattach_daemon_{name} {value}");
}

/// Guard of one in-flight request.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Largest HTTP request head the responder reads.
const MAX_HEAD: usize = 8192;

/// Serves `/metrics` and `/readyz` on `listener` until the task is dropped. `render` produces
/// the metrics text.
pub async fn serve(listener: TcpListener, render: impl Fn() -> (String, bool) + Clone + Send + 'static) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            if let Err(e) = respond(stream, render).await {
                tracing::debug!(error = %e, "metrics: connection failed");
            }
        });
    }
}

async fn respond(mut stream: TcpStream, render: impl Fn() -> (String, bool)) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    match read {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", render().0),
        ("GET", "/readyz") => {
            if render().1 {
                ("200 OK", "ok\n".to_string())
            } else {
                ("503 Service Unavailable", "caches not synced\n".to_string())
            }
        }
        ("GET", _) => ("404 Not Found", "not found; try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric() {
        let m = Metrics::default();
        m.observe("resolve", Duration::from_micros(300), None);
        m.observe("publish_status", Duration::from_millis(20), Some(11));
        m.observe("bogus", Duration::from_millis(1), Some(6));
        m.set_synced(true);
        let text = m.render(3, 2);
        for needle in [
            "netattach_daemon_requests_total{op=\"resolve\"} 1",
            "netattach_daemon_requests_total{op=\"invalid\"} 1",
            "netattach_daemon_request_duration_seconds_bucket{op=\"resolve\",le=\"0.0005\"} 1",
            "netattach_daemon_request_duration_seconds_bucket{op=\"resolve\",le=\"0.00025\"} 0",
            "netattach_daemon_request_duration_seconds_count{op=\"publish_status\"} 1",
            "netattach_daemon_errors_total{code=\"11\"} 1",
            "netattach_daemon_errors_total{code=\"6\"} 1",
            "netattach_daemon_cache_objects{cache=\"pods\"} 3",
            "netattach_daemon_cache_objects{cache=\"nads\"} 2",
            "netattach_daemon_cache_synced 1",
            "netattach_daemon_api_unauthorized_total 0",
            "netattach_daemon_log_lines_dropped_total 0",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in\n{text}");
        }
    }

    #[test]
    fn in_flight_is_a_guard() {
        let m = Metrics::default();
        {
            let _g = m.start_request();
            assert!(m.render(0, 0).contains("netattach_daemon_in_flight_requests 1"));
        }
        assert!(m.render(0, 0).contains("netattach_daemon_in_flight_requests 0"));
    }
}
