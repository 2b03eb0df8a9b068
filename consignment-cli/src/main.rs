//! The consignment-cli binary: parse the command line and run it.

use std::process::ExitCode;

use clap::Parser;
use consignment_cli::config::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    consignment_cli::run(Cli::parse()).await
}
