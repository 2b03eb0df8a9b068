//! Log output for the shippy binaries.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Sends human-readable logs to stderr, coloured only on a terminal. `RUST_LOG` sets the filter; without
/// it, shippy's own crates log at info and everything else at warn.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("warn,shippy_registry=info,vessel_service=info,consignment_service=info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
