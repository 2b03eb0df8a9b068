//! Building vessel-service from its config and running it until stopped.

use std::future::Future;
use std::net::SocketAddr;

use shippy_proto::vessel::v1::vessel_service_server::VesselServiceServer;
use shippy_registry::{RegisteredServer, RegistrationState, etcd};
use tokio::sync::watch;
use tonic::service::Routes;
use tracing::info;

use crate::config::Config;
use crate::domain::Fleet;
use crate::service::VesselHandler;

/// A bound vessel-service, ready to serve and register.
pub struct Application {
    /// Owns the listener and the registration.
    server: RegisteredServer,
    /// The gRPC handler.
    handler: VesselHandler,
}

impl Application {
    /// Loads the fleet, binds the listen address (port 0 allowed) and
    /// prepares registration. Fails on a bad fleet file or a busy port; a
    /// missing etcd is not an error, since registration retries until it answers.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let fleet = match &config.fleet_file {
            Some(path) => Fleet::load(path)?,
            None => Fleet::builtin(),
        };
        info!(vessels = fleet.len(), "fleet loaded");
        let client = etcd::connect(&config.registry.etcd_endpoints).await?;
        let server = RegisteredServer::bind(
            &config.service_name,
            config.listen,
            config.advertise.clone(),
            client,
            &config.registry,
            &config.lifecycle,
        )
        .await?;
        Ok(Self {
            server,
            handler: VesselHandler::new(fleet),
        })
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.server.local_addr()
    }

    /// The etcd key this instance registers under.
    pub fn registry_key(&self) -> &str {
        self.server.key()
    }

    /// Follows the registration state once running.
    pub fn registration_state(&self) -> watch::Receiver<RegistrationState> {
        self.server.registration_state()
    }

    /// Serves until `shutdown` resolves, then deregisters and drains.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let routes = Routes::new(VesselServiceServer::new(self.handler));
        self.server.serve(routes, shutdown).await
    }
}
