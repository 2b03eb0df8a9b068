//! Building consignment-service from its config and running it until stopped.

use std::future::Future;
use std::sync::Arc;

use shippy_client::ServiceChannel;
use shippy_proto::consignment::v1::shipping_service_server::ShippingServiceServer;
use shippy_registry::{Discovery, EtcdClient, InstanceMap};
use shippy_server::{RegisteredServer, Services};
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::service::Routes;
use tracing::info;

use crate::config::Config;
use crate::listing::HoldShares;
use crate::repository;
use crate::service::ShippingHandler;
use crate::vessels::VesselFinder;

/// A bound consignment-service, ready to serve and register.
pub struct Application {
    /// Owns the listener and the registration.
    server: RegisteredServer,
    /// Shared with the handler; kept here so tests can watch discovery.
    vessels: Arc<VesselFinder>,
    /// The gRPC handler.
    handler: ShippingHandler,
}

impl Application {
    /// Opens the consignment store, binds the listen address (port 0
    /// allowed), starts following vessel-service in etcd and prepares
    /// registration. A missing etcd is not an error: both registration and
    /// discovery retry until it answers. A store that cannot be opened is.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // The store first: a bad data directory or an unreachable database
        // stops the service before it registers anywhere.
        let repository = repository::open(&config.store()?).await?;
        let client = EtcdClient::connect(&config.registry.etcd_endpoints).await?;
        // Bind before discovery, so a busy port is reported before waiting on etcd.
        let server = RegisteredServer::bind(
            &config.service_name,
            &config.server,
            client.clone(),
            &config.registry,
        )
        .await?;
        // Discovery's first read completes before this instance registers
        // (registration starts when serving does), so a caller that finds
        // this instance finds it ready to place consignments.
        let discovery =
            Discovery::start(client, &config.registry.key_space(), &config.vessel_service).await;
        info!(
            vessel_service = %config.vessel_service,
            instances = discovery.instances().borrow().len(),
            "following vessel-service in etcd"
        );
        let vessels = Arc::new(VesselFinder::new(ServiceChannel::following(
            discovery,
            config.vessel_timeout(),
        )));
        let handler = ShippingHandler::new(repository, Arc::clone(&vessels));
        Ok(Self {
            server,
            vessels,
            handler,
        })
    }

    /// The bound server: its address, registry key and registration state.
    pub fn server(&self) -> &RegisteredServer {
        &self.server
    }

    /// The vessel-service instances currently known.
    pub fn vessel_instances(&self) -> watch::Receiver<Arc<InstanceMap>> {
        self.vessels.channel().instances()
    }

    /// Serves until `shutdown` resolves, then deregisters and drains.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let services = Services {
            routes: Routes::new(HoldShares::new(ShippingServiceServer::new(self.handler))),
            names: vec![<ShippingServiceServer<ShippingHandler> as NamedService>::NAME],
            file_descriptor_set: shippy_proto::FILE_DESCRIPTOR_SET,
        };
        self.server.serve(services, shutdown).await
    }
}
