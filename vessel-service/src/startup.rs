//! Building vessel-service from its config and running it until stopped.

use std::future::Future;

use shippy_proto::vessel::v1::vessel_service_server::VesselServiceServer;
use shippy_registry::EtcdClient;
use shippy_server::{RegisteredServer, Services};
use tonic::server::NamedService;
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
        let client = EtcdClient::connect(&config.registry.etcd_endpoints).await?;
        let server = RegisteredServer::bind(
            &config.service_name,
            &config.server,
            client,
            &config.registry,
        )
        .await?;
        Ok(Self {
            server,
            handler: VesselHandler::new(fleet),
        })
    }

    /// The bound server: its address, registry key and registration state.
    pub fn server(&self) -> &RegisteredServer {
        &self.server
    }

    /// Serves until `shutdown` resolves, then deregisters and drains.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let services = Services {
            routes: Routes::new(VesselServiceServer::new(self.handler)),
            names: vec![<VesselServiceServer<VesselHandler> as NamedService>::NAME],
            file_descriptor_set: shippy_proto::FILE_DESCRIPTOR_SET,
        };
        self.server.serve(services, shutdown).await
    }
}
