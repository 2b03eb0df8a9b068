//! consignment-cli: submits consignments to consignment-service, lists
//! them, and shows what is registered in etcd.
//!
//! - [`config`]: the command line, every flag with its environment fallback.
//! - [`input`]: reading and checking the consignment file.
//! - [`connect`]: a channel to consignment-service, found through etcd or
//!   at `--address`.
//! - [`commands`]: what each subcommand does.
//! - [`services`]: the registry view behind `services`.
//! - [`output`]: the terminal and JSON layouts.

// A CLI's results are its standard output.
#![allow(clippy::print_stdout)]

pub mod commands;
pub mod config;
pub mod connect;
pub mod input;
pub mod output;
pub mod services;

use std::process::ExitCode;

use config::{Cli, Command};

/// Why the CLI stopped, which decides the exit status.
#[derive(Debug)]
pub enum Failure {
    /// The consignment is unusable as written: the file could not be read,
    /// or a service refused its content (exit 2).
    BadInput(String),
    /// etcd or a service failed, or could not place the consignment (exit 1).
    Service(String),
}

impl Failure {
    /// A service's error answer to `call`: a refusal of the consignment's
    /// content is bad input; anything else is a service failure.
    pub fn from_status(call: &str, status: &tonic::Status) -> Self {
        use tonic::Code;
        let message = output::status(call, status);
        match status.code() {
            Code::InvalidArgument
            | Code::AlreadyExists
            | Code::ResourceExhausted
            | Code::OutOfRange => Self::BadInput(message),
            _ => Self::Service(message),
        }
    }
}

/// Runs what `cli` asks for and says how it went: 0 on success, 2 for bad
/// input or usage, 1 when etcd or a service fails.
pub async fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        None => commands::submit_and_list(&cli.submit).await,
        Some(Command::Create(args)) => commands::create(&args).await,
        Some(Command::List(args)) => commands::list(&args).await,
        Some(Command::Services(args)) => commands::services(&args).await,
    };
    // Messages carry services' answers and file names: escaped, so that
    // the one error line stays one line and inert on a terminal.
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(message)) => {
            eprintln!("error: {}", output::escape(&message));
            ExitCode::from(2)
        }
        Err(Failure::Service(message)) => {
            eprintln!("error: {}", output::escape(&message));
            ExitCode::from(1)
        }
    }
}
