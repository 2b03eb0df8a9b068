//! consignment-cli: submits a consignment file to consignment-service and
//! prints the created consignment and the full list.
//!
//! - `input`: reading and checking the file.
//! - `connect`: finding consignment-service through etcd, or at `--address`.
//! - `output`: the terminal layout.

// A CLI's results are its standard output.
#![allow(clippy::print_stdout)]

mod connect;
mod input;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shippy_proto::consignment::v1 as pb;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_registry::{AdvertiseAddr, RegistryArgs};

/// Submits a consignment to consignment-service and prints it with its
/// assigned vessel, then every stored consignment.
///
/// consignment-service is found by name through etcd, as the services find
/// each other; --address skips etcd.
///
/// Exit status: 0 on success; 2 for bad input or usage (the file cannot be
/// read or parsed, or the service refuses its content: INVALID_ARGUMENT,
/// ALREADY_EXISTS, message too large); 1 when etcd or a service fails or no
/// vessel can carry the consignment.
#[derive(Debug, Parser)]
#[command(name = "consignment-cli", version)]
struct Cli {
    /// The consignment JSON file to submit.
    #[arg(default_value = "consignment.json", value_name = "FILE")]
    file: PathBuf,

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

/// Why the CLI stopped, which decides the exit status.
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
    match run(cli).await {
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

async fn run(cli: Cli) -> Result<(), Failure> {
    let consignment =
        input::read_consignment(&cli.file).map_err(|err| Failure::BadInput(format!("{err:#}")))?;
    let channel = connect::channel(cli.address.as_ref(), &cli.service_name, &cli.registry)
        .await
        .map_err(|err| Failure::Service(format!("{err:#}")))?;
    let mut client = ShippingServiceClient::new(channel);
    let timeout = Duration::from_secs(cli.timeout);

    let mut request = tonic::Request::new(consignment);
    request.set_timeout(timeout);
    let response = client
        .create_consignment(request)
        .await
        .map_err(|status| Failure::from_status("CreateConsignment", &status))?
        .into_inner();
    let created = response
        .consignment
        .filter(|_| response.created)
        .ok_or_else(|| {
            Failure::Service("consignment-service answered without creating the consignment".into())
        })?;
    println!("{}", output::created(&created));

    let mut request = tonic::Request::new(pb::GetRequest {});
    request.set_timeout(timeout);
    let all = client
        .get_consignments(request)
        .await
        .map_err(|status| Failure::from_status("GetConsignments", &status))?
        .into_inner();
    print!("{}", output::listing(&all.consignments));
    Ok(())
}
