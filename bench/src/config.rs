//! The command line: `suite` (what `make bench` runs), `load` (the load
//! generator on its own) and the hidden `echo-server` the suite starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use serde::{Deserialize, Serialize};

/// Benchmarks the shippy services against a raw tonic echo floor.
#[derive(Debug, Parser)]
#[command(name = "shippy-bench", version)]
pub enum Command {
    /// Load one running endpoint and print a summary: throughput, latency
    /// p50/p90/p99/max and errors.
    Load(LoadArgs),
    /// Run the whole benchmark on this machine (etcd, both services and the
    /// echo floor as child processes) and write BENCHMARKS.md and
    /// BENCHMARKS.json.
    Suite(SuiteArgs),
    /// Serve the echo floor on `--listen` until SIGINT or SIGTERM; prints
    /// `listening on ADDRESS` once bound. The suite starts this itself.
    #[command(hide = true)]
    EchoServer(EchoServerArgs),
}

/// Which call the load generator makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// `shippy.bench.v1.Echo/Echo` with a payload the size of the encoded
    /// sample consignment: the floor.
    Echo,
    /// `CreateConsignment` of the sample consignment, against
    /// consignment-service: two hops, end to end.
    Create,
    /// `FindAvailable` for the sample's containers and weight, against
    /// vessel-service: the second hop alone.
    Find,
    /// Echo through a relay: a raw tonic server that answers each call by
    /// making the same call to the echo server over a tonic channel. Two
    /// hops with no shippy code, the floor for a service that calls another.
    Relay,
}

impl TargetKind {
    /// A short name for reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Create => "e2e CreateConsignment",
            Self::Find => "FindAvailable",
            Self::Relay => "echo relay (two hops)",
        }
    }
}

/// `shippy-bench load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The call to make.
    #[arg(long, value_enum)]
    pub target: TargetKind,

    /// Where the service listens, as `host:port` (see `consignment-cli services`).
    #[arg(long, value_name = "HOST:PORT")]
    pub address: String,

    /// Callers running at once, each with one call in flight, all on one
    /// HTTP/2 connection.
    #[arg(long, short = 'c', default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Seconds to measure for, after the warm-up.
    #[arg(long, value_parser = seconds, value_name = "SECONDS", conflicts_with = "requests")]
    pub duration: Option<Duration>,

    /// Requests to measure, after the warm-up, instead of a duration.
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Seconds of load before measuring starts, not counted.
    #[arg(long, value_parser = seconds, default_value = "1", value_name = "SECONDS")]
    pub warmup: Duration,

    /// Seconds each call may take, sent as its gRPC deadline.
    #[arg(long, value_parser = seconds, default_value = "10", value_name = "SECONDS")]
    pub timeout: Duration,

    /// Echo only: the payload size in bytes. Defaults to the size of the
    /// encoded sample consignment.
    #[arg(long, value_name = "BYTES")]
    pub payload_bytes: Option<usize>,

    /// Print the summary as one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// When the suite runs `perf` on the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileMode {
    /// When a latency, throughput or memory target does not hold.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// `shippy-bench suite`.
#[derive(Debug, Clone, Args)]
pub struct SuiteArgs {
    /// Directory to write BENCHMARKS.md and BENCHMARKS.json into.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub out: PathBuf,

    /// Directory holding the vessel-service and consignment-service
    /// binaries. Defaults to this binary's own directory (target/release
    /// after `cargo build --release`).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// How many times each measurement is repeated, interleaved with the others.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,

    /// Seconds each measurement window lasts.
    #[arg(long, value_parser = seconds, default_value = "3", value_name = "SECONDS")]
    pub window: Duration,

    /// Seconds of load before each window, not counted.
    #[arg(long, value_parser = seconds, default_value = "1", value_name = "SECONDS")]
    pub warmup: Duration,

    /// The high concurrency, at which throughput is compared (the low one is 1).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub concurrency: u32,

    /// Start-and-stop samples per service for registration and deregistration latency.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub registration_samples: u32,

    /// When to sample the services with `perf` under load.
    #[arg(long, value_enum, default_value = "auto")]
    pub profile: ProfileMode,

    /// Extra environment for both services, as KEY=VALUE (repeatable), to
    /// measure a configuration other than the default, e.g.
    /// `--service-env RUST_LOG=warn`. The report lists what was set.
    #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
    pub service_env: Vec<(String, String)>,

    /// A quick check that everything runs: a few hundred requests per
    /// measurement instead of timed windows, one round, one registration
    /// sample, no profile. Its numbers mean nothing.
    #[arg(long)]
    pub smoke: bool,
}

/// `shippy-bench echo-server`.
#[derive(Debug, Clone, Args)]
pub struct EchoServerArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// Relay instead: answer each call by making it to the echo server at
    /// this `host:port` and returning its answer.
    #[arg(long, value_name = "HOST:PORT")]
    pub forward: Option<String>,
}

/// Parses `KEY=VALUE`.
fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Parses a positive number of seconds, fractions allowed.
fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(value.is_finite() && (0.0..=86_400.0).contains(&value)) {
        return Err(format!("{text} is not between 0 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_take_fractions_and_refuse_nonsense() {
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        for bad in ["", "-1", "NaN", "inf", "1e9", "abc"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_settings_are_key_value_pairs() {
        assert_eq!(
            key_value("RUST_LOG=warn"),
            Ok(("RUST_LOG".into(), "warn".into()))
        );
        assert_eq!(key_value("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(key_value("=x").is_err());
        assert!(key_value("novalue").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Command::command().debug_assert();
    }
}
