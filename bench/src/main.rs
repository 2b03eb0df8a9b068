//! The shippy-bench binary: run the whole benchmark, load one endpoint, or
//! serve the echo floor for the benchmark to measure.

use std::process::ExitCode;

use clap::Parser;
use shippy_bench::config::{Cli, Command};
use shippy_bench::{echo, load, suite};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
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
