//! The shared body of the service binaries' `main`: probe another
//! instance's health, or log, raise the open-files limit and serve until
//! the service's future ends.

// A probe's verdict is its standard output.
#![allow(clippy::print_stdout)]

use std::future::Future;
use std::process::ExitCode;

use shippy_client::health;

use crate::config::ServerArgs;
use crate::{connection, telemetry};

/// With `--probe`, checks that instance's health and returns its verdict;
/// otherwise starts logging in the configured format, raises the soft
/// open-files limit to the hard one (so the connection cap can follow it)
/// and runs `serve`, logging its error if it fails.
pub async fn run<F, Fut>(args: &ServerArgs, serve: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if let Some(address) = &args.probe {
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
    let _flush_on_exit = match telemetry::init(args.log_format) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("cannot start the log writer: {err}");
            return ExitCode::FAILURE;
        }
    };
    connection::raise_open_files_limit();
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
