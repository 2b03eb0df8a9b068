//! The vessel-service binary: parse config, then run until SIGINT/SIGTERM, or
//! with `--probe` check another instance's health and exit.

// A probe's verdict is its standard output.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use clap::Parser;
use shippy_registry::{health, shutdown, telemetry};
use vessel_service::{Application, Config};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Some(address) = &config.server.probe {
        return match health::probe(address).await {
            Ok(()) => {
                println!("{address} is SERVING");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err:#}");
                ExitCode::FAILURE
            }
        };
    }
    telemetry::init();
    let run = async {
        Application::build(config)
            .await?
            .run_until_stopped(shutdown::signal())
            .await
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
