//! Where the daemon's logs go: stderr, through a bounded queue that a thread of its own drains.
//!
//! The daemon answers every shim from one runtime thread. Written directly, a log line blocks
//! that thread whenever stderr does: a log collector that stalls (the container runtime's pipe
//! fills up) would stall every pod ADD on the node. Through the queue, a line costs the request
//! path one formatting and one channel send. When the queue is full ([`QUEUED_LINES`]: a
//! stalled reader), the line is dropped and counted, `netattach_daemon_log_lines_dropped_total`
//! in `/metrics`; the queue bounds the memory a stalled reader can cost (a few hundred KiB).

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// Lines the queue holds before it drops new ones.
pub const QUEUED_LINES: usize = 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped because the queue was full.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
}

/// Installs the daemon's subscriber: `NETATTACH_LOG` (an `EnvFilter`) or `default`, plain text
/// unless stderr is a terminal. Keep the guard until the daemon returns: dropping it flushes
/// the queue (waiting at most a second for a stalled reader). `None` when a subscriber was
/// already installed.
pub fn init(default: &str) -> Option<WorkerGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_env(netattach_plugins::logging::ENV_FILTER)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("netattach-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .ok()?;
    let _ = DROPPED.set(dropped);
    Some(guard)
}
