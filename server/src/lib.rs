//! The serving runtime every shippy service shares: bind, serve, register,
//! and on a stop signal deregister and drain; health, the stop signal, log
//! output, the per-call middleware, and the shared `main`.
//!
//! - [`server`]: [`RegisteredServer`], the bind → serve → register →
//!   deregister → drain lifecycle.
//! - [`config`]: [`ServerArgs`], the flags every service binary shares.
//! - [`runtime`]: the shared body of the service binaries' `main`.
//! - [`health`]: the gRPC health status, following registration and shutdown.
//! - [`call_log`]: the per-call middleware: the call's context, its span,
//!   and one log line per call.
//! - [`shutdown`]: the SIGINT/SIGTERM future.
//! - [`telemetry`]: log output for the binaries.

pub mod call_log;
pub mod config;
pub mod health;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use config::ServerArgs;
pub use server::{RegisteredServer, Services};
