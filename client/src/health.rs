//! Asking an instance for its gRPC health (`grpc.health.v1.Health`), as
//! `consignment-cli services` and the services' `--probe` do.

use std::time::Duration;

use anyhow::{Context, bail};
use shippy_registry::AdvertiseAddr;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
/// A status as an instance reports it over the health protocol.
pub use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a probe may take in all.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

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
