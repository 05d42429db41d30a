//! A plugin process's logging: stderr always (plugins own stdout for the protocol), and the
//! level and file copy the network config asks for.
//!
//! Logging starts before the config is read, at `warn` (or `NETATTACH_LOG`, an `EnvFilter`
//! directive, which always wins so an operator can raise it without editing configs). The
//! config's keys then adjust it once per process — the meta-plugin's `logLevel`/`logFile`,
//! whereabouts' `log_level`/`log_file` — the first config read decides, so a delegate running
//! in-process cannot change the meta-plugin's logging. A log file is opened for appending
//! (created 0600); every event is one `write`, so lines of concurrent plugin processes do not
//! interleave. A file that cannot be opened is reported on stderr and never fails the call.
//! No ANSI colours: the runtime stores plugin stderr as plain text.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use tracing::level_filters::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The operator's override: an `EnvFilter` directive.
pub const ENV_FILTER: &str = "NETATTACH_LOG";

/// The level before (and without) a config that names one.
const DEFAULT_LEVEL: LevelFilter = LevelFilter::WARN;

/// The filter the config may change; unset when `NETATTACH_LOG` decides.
static LEVEL: OnceLock<reload::Handle<LevelFilter, Registry>> = OnceLock::new();
/// Set once, by the first config read.
static CONFIGURED: OnceLock<()> = OnceLock::new();
/// The config's log file, when it names one that could be opened.
static FILE: OnceLock<Mutex<File>> = OnceLock::new();

/// Starts logging for a plugin call (before its config is read).
pub fn init() {
    if let Ok(directive) = EnvFilter::try_from_env(ENV_FILTER) {
        let _ = tracing_subscriber::registry()
            .with(directive)
            .with(lines())
            .try_init();
        return;
    }
    let (level, handle) = reload::Layer::new(DEFAULT_LEVEL);
    if tracing_subscriber::registry()
        .with(level)
        .with(lines())
        .try_init()
        .is_ok()
    {
        let _ = LEVEL.set(handle);
    }
}

/// The formatting layer: plain text lines into [`Sink`].
fn lines<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(Sink)
}

/// Applies a config's level and file; only the first call in a process has an effect.
pub fn configure(level: Option<LevelFilter>, file: Option<&Path>) {
    if CONFIGURED.set(()).is_err() {
        return;
    }
    if let (Some(level), Some(handle)) = (level, LEVEL.get())
        && let Err(e) = handle.reload(level)
    {
        eprintln!("netattach: cannot apply log level {level}: {e}");
    }
    if let Some(path) = file {
        match OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
        {
            Ok(f) => {
                let _ = FILE.set(Mutex::new(f));
            }
            Err(e) => tracing::warn!(
                file = %path.display(),
                error = %e,
                "cannot open the configured log file; logging to stderr only"
            ),
        }
    }
}

/// Writes every event to stderr and, when configured, to the log file.
struct Sink;

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter;
    fn make_writer(&'a self) -> SinkWriter {
        SinkWriter
    }
}

struct SinkWriter;

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A full disk must not fail the CNI call; stderr still gets the line.
        if let Some(file) = FILE.get()
            && let Ok(mut f) = file.lock()
        {
            let _ = f.write_all(buf);
        }
        io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
