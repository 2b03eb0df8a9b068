//! consignment-cli: submits consignments to consignment-service, lists
//! them, and shows what is registered in etcd.
//!
//! - `input`: reading and checking the consignment file.
//! - `connect`: finding consignment-service through etcd, or at `--address`.
//! - `commands`: what each subcommand does.
//! - `services`: the registry view behind `services`.
//! - `output`: the terminal and JSON layouts.

// A CLI's results are its standard output.
#![allow(clippy::print_stdout)]

mod commands;
mod connect;
mod input;
mod output;
mod services;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use shippy_registry::{AdvertiseAddr, RegistryArgs};

/// Submits consignments to consignment-service, lists them, and shows the
/// services registered in etcd.
///
/// Without a subcommand it does what the original tutorial's CLI did: submit
/// FILE (default consignment.json), then print the created consignment with
/// its assigned vessel and every stored consignment.
///
/// consignment-service is found by name through etcd, as the services find
/// each other; --address skips etcd.
///
/// Exit status: 0 on success; 2 for bad input or usage (the file cannot be
/// read or parsed, or the service refuses its content: INVALID_ARGUMENT,
/// ALREADY_EXISTS, message too large); 1 when etcd or a service fails or no
/// vessel can carry the consignment.
#[derive(Debug, Parser)]
#[command(
    name = "consignment-cli",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Without a subcommand: submit this file, then list every consignment.
    #[command(flatten)]
    submit: CreateArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit a consignment file and print the created consignment, its
    /// vessel, and the call's request id.
    Create(CreateArgs),
    /// Print every stored consignment.
    List(ListArgs),
    /// Show every service registered in etcd: its instances, their
    /// addresses and metadata, the lease TTL left, and live health.
    Services(ServicesArgs),
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The consignment JSON file to submit.
    #[arg(default_value = "consignment.json", value_name = "FILE")]
    file: PathBuf,

    #[command(flatten)]
    connection: Connection,

    #[command(flatten)]
    format: Format,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    connection: Connection,

    #[command(flatten)]
    format: Format,
}

#[derive(Debug, Args)]
struct ServicesArgs {
    /// Seconds each instance's health check may take.
    #[arg(
        long = "health-timeout",
        default_value_t = 2,
        value_parser = clap::value_parser!(u64).range(1..=60),
        value_name = "SECONDS"
    )]
    health_timeout: u64,

    #[command(flatten)]
    registry: RegistryArgs,

    #[command(flatten)]
    format: Format,
}

/// How consignment-service is reached.
#[derive(Debug, Args)]
struct Connection {
    /// Reach consignment-service at this host:port instead of looking it up in etcd.
    #[arg(long, env = "SHIPPY_CONSIGNMENT_ADDR", value_name = "HOST:PORT")]
    address: Option<AdvertiseAddr>,

    /// Name consignment-service is registered under in etcd.
    #[arg(
        long = "service-name",
        env = "SHIPPY_CONSIGNMENT_SERVICE",
        default_value = "shippy.service.consignment",
        value_name = "NAME"
    )]
    service_name: String,

    /// Seconds each call may take, passed to the services as the gRPC deadline.
    #[arg(
        long,
        env = "SHIPPY_TIMEOUT",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        value_name = "SECONDS"
    )]
    timeout: u64,

    #[command(flatten)]
    registry: RegistryArgs,
}

impl Connection {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, Args)]
struct Format {
    /// Print the result as one JSON document, for scripts.
    #[arg(long)]
    json: bool,
}

/// Why the CLI stopped, which decides the exit status.
#[derive(Debug)]
enum Failure {
    /// The consignment is unusable as written: the file could not be read,
    /// or a service refused its content (exit 2).
    BadInput(String),
    /// etcd or a service failed, or could not place the consignment (exit 1).
    Service(String),
}

impl Failure {
    /// A service's error answer to `call`: a refusal of the consignment's
    /// content is bad input; anything else is a service failure.
    fn from_status(call: &str, status: &tonic::Status) -> Self {
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        None => commands::submit_and_list(&cli.submit).await,
        Some(Command::Create(args)) => commands::create(&args).await,
        Some(Command::List(args)) => commands::list(&args).await,
        Some(Command::Services(args)) => commands::services(&args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Service(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}
