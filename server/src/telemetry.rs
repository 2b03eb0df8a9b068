//! Log output for the shippy binaries.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::log_writer::{BatchedStderr, FlushOnDrop};

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
/// Lines are written in batches by a background thread
/// ([`crate::log_writer`]), so a call pays neither for the write nor for
/// waking that thread; no line is dropped. Keep the returned guard until
/// exit: dropping it writes what is still buffered.
pub fn init(format: LogFormat) -> std::io::Result<FlushOnDrop> {
    let (writer, guard) = BatchedStderr::start()?;
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
    Ok(guard)
}
