//! The serving runtime every shippy service shares: bind, serve, register,
//! and on a stop signal deregister and drain; health, the stop signal, log
//! output, the per-call middleware, and the shared `main`.
//!
//! - [`server`]: [`RegisteredServer`], the bind → serve → register →
//!   deregister → drain lifecycle.
//! - [`config`]: [`ServerArgs`], the flags every service binary shares.
//! - [`runtime`]: the shared body of the service binaries' `main`.
//! - [`health`]: the gRPC health status, following registration and shutdown.
//! - [`connection`]: which connections are accepted and kept: the
//!   connection cap, the handshake timeout, the open-files limit.
//! - [`call_guard`]: what a request must be to reach a handler (a gRPC
//!   content-type), and the default deadline of calls without one.
//! - [`call_log`]: the per-call middleware: the call's context, its span,
//!   and one log line per call.
//! - [`log_budget`]: rate-limited log lines for what clients cause cheaply.
//! - [`shutdown`]: the SIGINT/SIGTERM/SIGHUP future, and the second signal.
//! - [`telemetry`]: log output for the binaries; [`log_writer`]: the
//!   batched writer behind it.

pub mod call_guard;
pub mod call_log;
#[cfg(test)]
mod captured_log;
pub mod config;
pub mod connection;
pub mod health;
pub mod log_budget;
pub mod log_writer;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use config::ServerArgs;
pub use server::{RegisteredServer, Services};
