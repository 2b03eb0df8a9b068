//! consignment-service's settings, from flags or `SHIPPY_…` environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shippy_registry::{AdvertiseAddr, LifecycleArgs, RegistryArgs};

/// The name consignment-service registers under unless configured otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "shippy.service.consignment";
/// The name vessel-service is looked up by unless configured otherwise.
pub const DEFAULT_VESSEL_SERVICE: &str = "shippy.service.vessel";

/// Stores consignments, each with a vessel chosen by vessel-service. Finds
/// vessel-service by name through etcd and registers itself there too.
#[derive(Debug, Clone, Parser)]
#[command(name = "consignment-service", version)]
pub struct Config {
    /// Address to accept gRPC connections on.
    #[arg(
        long,
        env = "SHIPPY_LISTEN_ADDR",
        default_value = "0.0.0.0:50051",
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
        env = "SHIPPY_CONSIGNMENT_SERVICE",
        default_value = DEFAULT_SERVICE_NAME,
        value_name = "NAME"
    )]
    pub service_name: String,

    /// Name vessel-service is registered under in etcd.
    #[arg(
        long = "vessel-service",
        env = "SHIPPY_VESSEL_SERVICE",
        default_value = DEFAULT_VESSEL_SERVICE,
        value_name = "NAME"
    )]
    pub vessel_service: String,

    /// Seconds a FindAvailable call may take when the caller set no deadline;
    /// a caller's deadline, when set, is passed on instead.
    #[arg(
        long = "vessel-timeout",
        env = "SHIPPY_VESSEL_TIMEOUT",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=300),
        value_name = "SECONDS"
    )]
    pub vessel_timeout_secs: u64,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub lifecycle: LifecycleArgs,
}

impl Config {
    /// The FindAvailable timeout used when the caller set no deadline.
    pub fn vessel_timeout(&self) -> Duration {
        Duration::from_secs(self.vessel_timeout_secs)
    }
}
