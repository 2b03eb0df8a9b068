//! A channel to consignment-service: to the instances registered in etcd
//! under its name, as the services find each other, or to an address given
//! on the command line.

use std::time::Duration;

use anyhow::{Context, bail};
use shippy_client::ServiceChannel;
use shippy_registry::discovery::read_instances;
use shippy_registry::{AdvertiseAddr, EtcdClient, InstanceMap, RegistryArgs};

/// A channel to `address`, or to the instances of `service` registered in
/// etcd now, whose calls take `timeout` unless they say otherwise.
pub async fn channel(
    address: Option<&AdvertiseAddr>,
    service: &str,
    registry: &RegistryArgs,
    timeout: Duration,
) -> anyhow::Result<ServiceChannel> {
    let instances = match address {
        Some(address) => InstanceMap::from([("--address".to_owned(), address.clone())]),
        None => registered(service, registry).await?,
    };
    Ok(ServiceChannel::fixed(service, instances, timeout))
}

/// The instances of `service` in etcd; an error when there are none.
async fn registered(service: &str, registry: &RegistryArgs) -> anyhow::Result<InstanceMap> {
    let endpoints = registry.etcd_endpoints.join(",");
    let mut etcd = EtcdClient::connect(&registry.etcd_endpoints).await?;
    let prefix = registry.key_space().service_prefix(service);
    let (instances, _) = read_instances(&mut etcd, &prefix)
        .await
        .with_context(|| format!("cannot reach etcd at {endpoints}"))?;
    if instances.is_empty() {
        bail!(
            "no instance of {service} is registered in etcd at {endpoints} (is consignment-service running?)"
        );
    }
    Ok(instances
        .into_iter()
        .map(|instance| (instance.key, instance.record.address))
        .collect())
}
