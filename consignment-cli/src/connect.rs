//! Reaching consignment-service: through etcd by service name, as the
//! services find each other, or at an address given on the command line.

use std::time::Duration;

use anyhow::{Context, bail};
use shippy_registry::discovery::read_instances;
use shippy_registry::etcd::EtcdClient;
use shippy_registry::{AdvertiseAddr, RegistryArgs};
use tonic::transport::{Channel, Endpoint};

/// How long dialing one instance may take before trying the next.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// A channel to `address`, or to the first answering instance of `service`
/// registered in etcd.
pub async fn channel(
    address: Option<&AdvertiseAddr>,
    service: &str,
    registry: &RegistryArgs,
) -> anyhow::Result<Channel> {
    if let Some(address) = address {
        return dial(address).await;
    }
    let mut etcd = EtcdClient::connect(&registry.etcd_endpoints).await?;
    let prefix = registry.key_space().service_prefix(service);
    let (instances, _) = read_instances(&mut etcd, &prefix)
        .await
        .with_context(|| format!("cannot reach etcd at {}", registry.etcd_endpoints.join(",")))?;
    if instances.is_empty() {
        bail!(
            "no instance of {service} is registered in etcd at {} (is consignment-service running?)",
            registry.etcd_endpoints.join(",")
        );
    }
    let mut last_error = None;
    for instance in &instances {
        match dial(&instance.record.address).await {
            Ok(channel) => return Ok(channel),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no instance of {service} answered")))
}

async fn dial(address: &AdvertiseAddr) -> anyhow::Result<Channel> {
    Endpoint::from_shared(address.http_uri())
        .with_context(|| format!("{address} is not a valid address"))?
        .connect_timeout(DIAL_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("cannot connect to consignment-service at {address}"))
}
