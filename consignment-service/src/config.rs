//! consignment-service's settings, from flags or `SHIPPY_…` environment variables.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use shippy_proto::{consignment, vessel};
use shippy_registry::RegistryArgs;
use shippy_server::ServerArgs;

use crate::repository::sqlite::FILE_NAME;
use crate::repository::{DatabaseUrl, StoreLocation};

/// Stores consignments, each with a vessel chosen by vessel-service. Finds
/// vessel-service by name through etcd and registers itself there too.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "consignment-service",
    version,
    mut_arg("listen", |arg| arg.default_value("0.0.0.0:50051").required(false))
)]
pub struct Config {
    /// Name to register under in etcd.
    #[arg(
        long = "service-name",
        env = "SHIPPY_CONSIGNMENT_SERVICE",
        default_value = consignment::SERVICE_NAME,
        value_name = "NAME"
    )]
    pub service_name: String,

    /// Name vessel-service is registered under in etcd.
    #[arg(
        long = "vessel-service",
        env = "SHIPPY_VESSEL_SERVICE",
        default_value = vessel::SERVICE_NAME,
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

    /// Directory of the embedded SQLite store (consignments.sqlite3),
    /// created if missing. Not used with --database-url.
    #[arg(
        long = "data-dir",
        env = "SHIPPY_DATA_DIR",
        default_value = "data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Store consignments here instead: postgres://USER:PASSWORD@HOST:PORT/DB
    /// (replicas can share it), sqlite://PATH, or memory:// (lost on exit).
    #[arg(
        long = "database-url",
        env = "SHIPPY_DATABASE_URL",
        value_name = "URL",
        // It may hold a password: never echo it in --help or errors.
        hide_env_values = true,
        value_parser = |url: &str| anyhow::Ok(DatabaseUrl(url.to_owned()))
    )]
    pub database_url: Option<DatabaseUrl>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub server: ServerArgs,
}

impl Config {
    /// Where consignments are stored: `--database-url`, or else the SQLite
    /// file in `--data-dir`.
    pub fn store(&self) -> anyhow::Result<StoreLocation> {
        match &self.database_url {
            Some(DatabaseUrl(url)) => StoreLocation::from_url(url)
                .map_err(|problem| anyhow::anyhow!("invalid --database-url: {problem}")),
            None => Ok(StoreLocation::Sqlite(self.data_dir.join(FILE_NAME))),
        }
    }

    /// The FindAvailable timeout used when the caller set no deadline.
    pub fn vessel_timeout(&self) -> Duration {
        Duration::from_secs(self.vessel_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_database_url_is_refused_without_echoing_it() {
        let config = Config::try_parse_from([
            "consignment-service",
            "--database-url=postgress://shippy:hunter2@db/shippy",
        ])
        .unwrap();
        let err = config.store().unwrap_err().to_string();
        assert!(err.starts_with("invalid --database-url: expected"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn the_default_store_is_sqlite_in_the_data_dir() {
        let config = Config::try_parse_from(["consignment-service", "--data-dir=/srv/x"]).unwrap();
        assert_eq!(
            config.store().unwrap(),
            StoreLocation::Sqlite("/srv/x/consignments.sqlite3".into())
        );
    }
}
