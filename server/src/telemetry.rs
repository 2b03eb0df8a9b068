//! Log output for the shippy binaries.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Sends logs to stderr in `format`. `RUST_LOG` sets the filter; without it,
/// shippy's own crates log at info and everything else at warn.
///
/// Lines are written by a background thread, so a call does not pay for
/// the write itself; only when that thread's queue is full does a caller
/// wait, rather than a line being dropped. Keep the returned guard until
/// exit: dropping it flushes what is still queued.
#[must_use = "dropping the guard stops log output"]
pub fn init(format: LogFormat) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(
            "warn,shippy_registry=info,shippy_server=info,shippy_client=info,vessel_service=info,consignment_service=info",
        )
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // Event fields at the top level, and every enclosing span under
        // "spans", outermost first, so the call's request_id is on each line.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
    guard
}
