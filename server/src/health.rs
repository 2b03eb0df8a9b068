//! The instance's gRPC health (`grpc.health.v1.Health`), following its life:
//! NOT_SERVING until it is registered in etcd, SERVING from then on, and
//! NOT_SERVING again from the stop signal, while it deregisters and drains.
//!
//! The overall status (service name "") and each named service move
//! together. Asking an instance for its health is the client side's
//! (`shippy_client::health`).

use shippy_registry::RegistrationState;
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

/// Sets the health of every service an instance serves.
#[derive(Debug, Clone)]
pub struct HealthStatus {
    /// Feeds the health service's answers and watch streams.
    reporter: HealthReporter,
    /// "" (the whole server) and each served gRPC service.
    names: Vec<String>,
}

impl HealthStatus {
    /// Health for `services`, NOT_SERVING to begin with, and the gRPC
    /// service that reports it.
    pub async fn new(services: &[&str]) -> (Self, HealthServer<impl Health>) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let names = std::iter::once("")
            .chain(services.iter().copied())
            .map(str::to_owned)
            .collect();
        let health = Self { reporter, names };
        health.set(ServingStatus::NotServing).await;
        (health, service)
    }

    /// Reports `status` for the server and every service.
    pub async fn set(&self, status: ServingStatus) {
        for name in &self.names {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Ends every open Watch stream (after the last status it reported), so
    /// that a draining server does not wait for watchers that never hang
    /// up. Check answers NOT_FOUND from then on.
    pub async fn end_watches(&self) {
        let mut reporter = self.reporter.clone();
        for name in &self.names {
            reporter.clear_service_status(name).await;
        }
    }

    /// Reports SERVING once `registration` first reaches
    /// [`RegistrationState::Registered`].
    pub async fn serving_once_registered(
        &self,
        mut registration: watch::Receiver<RegistrationState>,
    ) {
        if registration
            .wait_for(|state| *state == RegistrationState::Registered)
            .await
            .is_ok()
        {
            self.set(ServingStatus::Serving).await;
        }
    }
}
