//! Load generator and benchmark suite for shippy.
//!
//! `make bench` runs [`suite`]: a real etcd, the release service binaries
//! and a raw tonic echo server (the floor) as child processes on free
//! loopback ports, load through each, and a report written to
//! BENCHMARKS.md and BENCHMARKS.json. `shippy-bench load` runs the load
//! generator alone against any running instance.
//!
//! - [`config`]: the command line.
//! - [`load`]: the load generator: concurrent callers on one tonic channel,
//!   for a duration or a request count after a warm-up, latency in an HDR
//!   histogram, a progress bar and a summary.
//! - [`echo`]: the floor, a unary echo service that does no work.
//! - [`sample`]: the sample consignment and the requests built from it.
//! - [`processes`]: etcd and the service binaries as child processes, and
//!   their registration and deregistration timed through an etcd watch.
//! - [`system`]: what is read off the machine: resident memory from
//!   `/proc`, etcd's `/metrics`, core count, date.
//! - [`profile`]: `perf` samples of the services under load, grouped by
//!   where the time goes.
//! - [`suite`]: the whole run.
//! - [`report`]: the results, the targets they are held to, and their JSON
//!   and Markdown forms.

pub mod config;
pub mod echo;
pub mod load;
pub mod processes;
pub mod profile;
pub mod report;
pub mod sample;
pub mod suite;
pub mod system;
