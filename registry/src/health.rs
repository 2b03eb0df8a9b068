//! The instance's gRPC health (`grpc.health.v1.Health`), following its life:
//! NOT_SERVING until it is registered in etcd, SERVING from then on, and
//! NOT_SERVING again from the stop signal, while it deregisters and drains.
//!
//! The overall status (service name "") and each named service move together.
//! [`check`] asks a running instance for its overall status; [`probe`] turns
//! that into a healthcheck's verdict.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;
use tonic::transport::Endpoint;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
/// A status as an instance reports it over the health protocol.
pub use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

use crate::record::AdvertiseAddr;
use crate::registration::RegistrationState;

/// How long a probe may take in all.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

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

/// Asks the instance at `address` for its overall health; succeeds only if
/// it answers SERVING.
pub async fn probe(address: &AdvertiseAddr) -> anyhow::Result<()> {
    let status = check(address, PROBE_TIMEOUT).await?;
    if status != WireStatus::Serving {
        bail!("{address} is {}", status.as_str_name());
    }
    Ok(())
}

/// The overall health the instance at `address` reports, asked within
/// `timeout`; an error when it cannot be reached or does not answer.
pub async fn check(address: &AdvertiseAddr, timeout: Duration) -> anyhow::Result<WireStatus> {
    let ask = async {
        let channel = Endpoint::from_shared(address.http_uri())
            .with_context(|| format!("{address} is not a valid address"))?
            .connect()
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .with_context(|| format!("{address} did not answer a health check"))?;
        anyhow::Ok(answer.into_inner().status())
    };
    tokio::time::timeout(timeout, ask)
        .await
        .with_context(|| format!("{address} did not answer within {timeout:?}"))?
}
