//! The vessel-service binary: parse config, then serve until SIGINT/SIGTERM, or
//! with `--probe` check another instance's health and exit.

use std::process::ExitCode;

use clap::Parser;
use shippy_server::{runtime, shutdown};
use vessel_service::{Application, Config};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let server = config.server.clone();
    runtime::run(&server, || async {
        Application::build(config)
            .await?
            .run_until_stopped(shutdown::signal())
            .await
    })
    .await
}
