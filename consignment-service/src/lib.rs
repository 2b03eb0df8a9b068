//! consignment-service: stores consignments, each with a vessel that
//! vessel-service (found by name through etcd) chose.
//!
//! - [`config`]: flags and `SHIPPY_…` environment variables.
//! - [`domain`]: validated consignments, parsed from the wire at the edge.
//! - [`repository`]: the store behind a trait: SQLite (default),
//!   PostgreSQL, or memory.
//! - [`listing`]: GetConsignments' pages, bounded by rows and bytes, and
//!   the memory listings in flight share.
//! - [`vessels`]: the discovery-backed vessel-service client and deadline passing.
//! - [`error`]: failures and their gRPC statuses, in one place.
//! - [`service`]: the thin tonic handler.
//! - [`startup`]: [`Application::build`] and [`Application::run_until_stopped`].

pub mod config;
pub mod domain;
pub mod error;
pub mod listing;
pub mod repository;
pub mod service;
pub mod startup;
pub mod vessels;

pub use config::Config;
pub use startup::Application;
