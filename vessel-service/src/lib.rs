//! vessel-service: knows the fleet and answers FindAvailable.
//!
//! - [`config`]: flags and `SHIPPY_…` environment variables.
//! - [`domain`]: vessels, the specification, and the matching rule.
//! - [`error`]: failures and their gRPC statuses.
//! - [`service`]: the thin tonic handler.
//! - [`startup`]: [`Application::build`] and [`Application::run_until_stopped`].

pub mod config;
pub mod domain;
pub mod error;
pub mod service;
pub mod startup;

pub use config::Config;
pub use startup::Application;
