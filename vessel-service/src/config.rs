//! vessel-service's settings, from flags or `SHIPPY_…` environment variables.

use std::path::PathBuf;

use clap::Parser;
use shippy_proto::vessel::SERVICE_NAME;
use shippy_registry::RegistryArgs;
use shippy_server::ServerArgs;

/// Finds an available vessel for a consignment. Registers itself in etcd
/// so that consignment-service can find it by name.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "vessel-service",
    version,
    mut_arg("listen", |arg| arg.default_value("0.0.0.0:50052").required(false))
)]
pub struct Config {
    /// Name to register under in etcd.
    #[arg(
        long = "service-name",
        env = "SHIPPY_VESSEL_SERVICE",
        default_value = SERVICE_NAME,
        value_name = "NAME"
    )]
    pub service_name: String,

    /// JSON file listing the fleet (an array of vessels with id, name,
    /// capacity, max_weight, available, owner_id); the built-in fleet when absent.
    #[arg(long = "fleet-file", env = "SHIPPY_FLEET_FILE", value_name = "FILE")]
    pub fleet_file: Option<PathBuf>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub server: ServerArgs,
}
