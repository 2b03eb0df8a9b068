//! shippy-bench: the load generator and benchmark suite for shippy.
//!
//! - [`load`]: `shippy-bench load`, the load generator, usable on its own
//!   against any running instance.
//! - [`echo`]: the floors the services are held against, a raw tonic echo
//!   server and a relay in front of it (`shippy-bench echo-server`).
//! - [`suite`]: `shippy-bench suite`, what `make bench` runs: etcd, the
//!   services and the floors as child processes ([`processes`]), load
//!   through each, `perf` where a target is missed ([`profile`]), and the
//!   [`report`], written as BENCHMARKS.json and BENCHMARKS.md.

mod echo;
mod load;
mod processes;
mod profile;
mod report;
mod suite;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Benchmarks the shippy services against a raw tonic echo floor.
#[derive(Debug, Parser)]
#[command(name = "shippy-bench", version)]
enum Command {
    /// Load one running endpoint and print a summary: throughput, latency
    /// p50/p90/p99/max and errors.
    Load(load::LoadArgs),
    /// Run the whole benchmark on this machine (etcd, both services and the
    /// echo floor as child processes) and write BENCHMARKS.md and
    /// BENCHMARKS.json.
    Suite(suite::SuiteArgs),
    /// Serve the echo floor on `--listen` until killed; prints `listening on
    /// ADDRESS` once bound. The suite starts this itself.
    #[command(hide = true)]
    EchoServer(echo::EchoServerArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match Command::parse() {
        Command::Load(args) => load::run_command(&args).await,
        Command::Suite(args) => suite::run_command(&args).await,
        Command::EchoServer(args) => echo::run_command(&args).await,
    };
    if let Err(err) = outcome {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Parses a number of seconds, fractions allowed, up to a day.
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
    fn the_command_line_is_consistent_and_a_request_count_replaces_the_duration() {
        use clap::CommandFactory;
        Command::command().debug_assert();
        let load = |extra: &[&str]| {
            let args = [
                "shippy-bench",
                "load",
                "--target",
                "echo",
                "--address",
                "a:1",
            ];
            match Command::try_parse_from(args.iter().chain(extra)) {
                Ok(Command::Load(args)) => Ok(args.options),
                other => Err(format!("{other:?}")),
            }
        };
        assert_eq!(load(&[]).unwrap().duration, Duration::from_secs(10));
        assert_eq!(load(&["-n", "5"]).unwrap().requests, Some(5));
        assert!(load(&["-n", "5", "--duration", "2"]).is_err());
    }
}
