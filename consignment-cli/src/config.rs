//! The command line: every subcommand and flag, with its `SHIPPY_…`
//! environment fallback.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use shippy_proto::consignment;
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
pub struct Cli {
    /// What to do; without one, submit FILE and list every consignment.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Without a subcommand: submit this file, then list every consignment.
    #[command(flatten)]
    pub submit: CreateArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a consignment file and print the created consignment, its
    /// vessel, and the call's request id.
    Create(CreateArgs),
    /// Print every stored consignment.
    List(ListArgs),
    /// Show every service registered in etcd: its instances, their
    /// addresses and metadata, the lease TTL left, and live health.
    Services(ServicesArgs),
}

/// What `create` (and the bare command) needs.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The consignment JSON file to submit.
    #[arg(
        env = "SHIPPY_CONSIGNMENT_FILE",
        default_value = "consignment.json",
        value_name = "FILE"
    )]
    pub file: PathBuf,

    #[allow(missing_docs)]
    #[command(flatten)]
    pub connection: Connection,

    #[allow(missing_docs)]
    #[command(flatten)]
    pub format: Format,
}

/// What `list` needs.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub connection: Connection,

    #[allow(missing_docs)]
    #[command(flatten)]
    pub format: Format,
}

/// What `services` needs.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Seconds each instance's health check may take.
    #[arg(
        long = "health-timeout",
        env = "SHIPPY_HEALTH_TIMEOUT",
        default_value_t = 2,
        value_parser = clap::value_parser!(u64).range(1..=60),
        value_name = "SECONDS"
    )]
    pub health_timeout: u64,

    #[allow(missing_docs)]
    #[command(flatten)]
    pub registry: RegistryArgs,

    #[allow(missing_docs)]
    #[command(flatten)]
    pub format: Format,
}

impl ServicesArgs {
    /// How long each instance's health check may take.
    pub fn health_timeout(&self) -> Duration {
        Duration::from_secs(self.health_timeout)
    }
}

/// How consignment-service is reached.
#[derive(Debug, Args)]
pub struct Connection {
    /// Reach consignment-service at this host:port instead of looking it up in etcd.
    #[arg(long, env = "SHIPPY_CONSIGNMENT_ADDR", value_name = "HOST:PORT")]
    pub address: Option<AdvertiseAddr>,

    /// Name consignment-service is registered under in etcd.
    #[arg(
        long = "service-name",
        env = "SHIPPY_CONSIGNMENT_SERVICE",
        default_value = consignment::SERVICE_NAME,
        value_name = "NAME"
    )]
    pub service_name: String,

    /// Seconds each call may take, passed to the services as the gRPC deadline.
    #[arg(
        long,
        env = "SHIPPY_TIMEOUT",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        value_name = "SECONDS"
    )]
    pub timeout: u64,

    #[allow(missing_docs)]
    #[command(flatten)]
    pub registry: RegistryArgs,
}

impl Connection {
    /// How long each call may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, Args)]
pub struct Format {
    /// Print the result as one JSON document, for scripts.
    #[arg(long, env = "SHIPPY_OUTPUT_JSON")]
    pub json: bool,
}
