//! The consignment-service binary: parse config, run until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use consignment_service::{Application, Config};
use shippy_registry::{shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    let config = Config::parse();
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
