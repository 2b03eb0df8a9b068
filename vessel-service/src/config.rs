//! vessel-service's settings, from flags or `SHIPPY_…` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use shippy_registry::{AdvertiseAddr, LifecycleArgs, RegistryArgs};

/// The name vessel-service registers under unless configured otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "shippy.service.vessel";

/// Finds an available vessel for a consignment. Registers itself in etcd
/// so that consignment-service can find it by name.
#[derive(Debug, Clone, Parser)]
#[command(name = "vessel-service", version)]
pub struct Config {
    /// Address to accept gRPC connections on.
    #[arg(
        long,
        env = "SHIPPY_LISTEN_ADDR",
        default_value = "0.0.0.0:50052",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// host:port that callers use to reach this instance, as registered in
    /// etcd; never 0.0.0.0. Defaults to the listen address with 0.0.0.0
    /// replaced by 127.0.0.1.
    #[arg(long, env = "SHIPPY_ADVERTISE_ADDR", value_name = "HOST:PORT")]
    pub advertise: Option<AdvertiseAddr>,

    /// Name to register under in etcd.
    #[arg(
        long = "service-name",
        env = "SHIPPY_VESSEL_SERVICE",
        default_value = DEFAULT_SERVICE_NAME,
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
    pub lifecycle: LifecycleArgs,
}
