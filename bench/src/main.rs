//! shippy-bench: the load generator and benchmark suite for shippy.
//!
//! `make bench` runs [`suite`]: a real etcd, the release service binaries
//! and a raw tonic echo server (the floor) as child processes on free
//! loopback ports, load through each, and a report written to
//! BENCHMARKS.md and BENCHMARKS.json. `shippy-bench load` runs the load
//! generator alone against any running instance; `shippy-bench
//! echo-server` is the floor the suite starts.
//!
//! - [`config`]: the command line.
//! - [`load`]: the load generator: concurrent callers on one tonic channel,
//!   for a duration or a request count after a warm-up, latency in an HDR
//!   histogram, a progress bar and a summary; and the sample it sends.
//! - [`echo`]: the floors, a unary echo service that does no work and a
//!   relay in front of it.
//! - [`processes`]: the service binaries and the floors as child processes,
//!   and their registration and deregistration timed through an etcd watch.
//! - [`system`]: what is read off the machine: resident memory and CPU time
//!   from `/proc`, etcd's `/metrics`, core count, date.
//! - [`profile`]: `perf` samples of the services under load, grouped by
//!   where the time goes.
//! - [`suite`]: the whole run.
//! - [`report`]: the results and the targets they are held to, which are
//!   BENCHMARKS.json; [`markdown`]: their BENCHMARKS.md form.

mod config;
mod echo;
mod load;
mod markdown;
mod processes;
mod profile;
mod report;
mod suite;
mod system;

use std::process::ExitCode;

use clap::Parser;
use config::Command;

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match Command::parse() {
        Command::Load(args) => load::run_command(&args).await,
        Command::Suite(args) => suite::run_command(&args).await,
        Command::EchoServer(args) => echo::run_command(&args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
