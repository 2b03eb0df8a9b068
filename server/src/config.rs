//! How a serving instance listens, advertises itself, keeps its
//! registration, logs and stops: the flags every service binary shares.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use shippy_registry::AdvertiseAddr;

use crate::telemetry::LogFormat;

/// How a serving instance listens, advertises itself, keeps its registration
/// and stops. Each service sets its own default for `--listen` with
/// `#[command(mut_arg("listen", ...))]`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address to accept gRPC connections on.
    #[arg(long, env = "SHIPPY_LISTEN_ADDR", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// host:port that callers use to reach this instance, as registered in
    /// etcd; never 0.0.0.0. Defaults to the listen address with 0.0.0.0
    /// replaced by 127.0.0.1.
    #[arg(long, env = "SHIPPY_ADVERTISE_ADDR", value_name = "HOST:PORT")]
    pub advertise: Option<AdvertiseAddr>,

    /// Instead of serving, ask the instance at HOST:PORT for its gRPC health
    /// and exit 0 if it is SERVING, 1 otherwise: a healthcheck for images
    /// without grpcurl. (No environment variable, so it cannot switch a
    /// service into probe mode by accident.)
    #[arg(long, value_name = "HOST:PORT")]
    pub probe: Option<AdvertiseAddr>,

    /// Seconds the registration outlives the process if it dies without
    /// deregistering; the lease is renewed every third of this.
    #[arg(
        long = "lease-ttl",
        env = "SHIPPY_LEASE_TTL",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(2..=3600),
        value_name = "SECONDS"
    )]
    pub lease_ttl_secs: u64,

    /// Seconds in-flight calls may take to finish once, after a stop
    /// signal, the instance has deregistered and stopped accepting calls.
    #[arg(
        long = "shutdown-grace",
        env = "SHIPPY_SHUTDOWN_GRACE",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(0..=3600),
        value_name = "SECONDS"
    )]
    pub shutdown_grace_secs: u64,

    /// Log lines as human-readable text or as one JSON object per line.
    #[arg(
        long = "log-format",
        env = "SHIPPY_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

impl ServerArgs {
    /// The lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }

    /// The drain period after a stop signal.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}
