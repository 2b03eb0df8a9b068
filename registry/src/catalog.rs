//! Everything registered under a key space, for operators: every service,
//! its instances, and how long each registration outlives its process.
//!
//! Discovery follows one service for calls; this reads all of them once,
//! with each key's lease, as `consignment-cli services` shows them.

use std::collections::BTreeMap;

use etcd_client::GetOptions;

use crate::etcd::EtcdClient;
use crate::record::{KeySpace, RecordError, ServiceRecord, decode_instance};

/// One key found under the key space.
#[derive(Debug)]
pub struct Entry {
    /// The full etcd key.
    pub key: String,
    /// The service name taken from the key.
    pub service: String,
    /// The decoded record, or why it could not be decoded.
    pub record: Result<ServiceRecord, RecordError>,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseState>,
}

/// A registration's lease as etcd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseState {
    /// The lease id.
    pub id: i64,
    /// Seconds left before the key goes, unless renewed; `None` once the
    /// lease has expired.
    pub ttl_left: Option<u64>,
    /// The TTL the lease was granted with, in seconds.
    pub granted: u64,
}

/// Every key under `keys`, grouped by service name in key order, each
/// with its lease.
pub async fn read(
    etcd: &mut EtcdClient,
    keys: &KeySpace,
) -> anyhow::Result<BTreeMap<String, Vec<Entry>>> {
    let prefix = keys.all_services_prefix();
    let response = etcd
        .first_answer(&format!("reading {prefix}"), |mut client| {
            let prefix = prefix.clone();
            async move {
                client
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
            }
        })
        .await?;
    let mut services: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    let mut leases = BTreeMap::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let service = service_of(&prefix, &key).to_owned();
        let lease = match kv.lease() {
            0 => None,
            id => Some(match leases.get(&id) {
                Some(state) => *state,
                None => {
                    let state = lease_state(etcd, id).await?;
                    leases.insert(id, state);
                    state
                }
            }),
        };
        let record = decode_instance(&keys.service_prefix(&service), kv.key(), kv.value())
            .map(|instance| instance.record);
        services.entry(service.clone()).or_default().push(Entry {
            key,
            service,
            record,
            lease,
        });
    }
    Ok(services)
}

/// The service name in `key`: the segment right after `prefix`.
fn service_of<'k>(prefix: &str, key: &'k str) -> &'k str {
    let rest = key.strip_prefix(prefix).unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

/// What etcd says of lease `id` now.
async fn lease_state(etcd: &mut EtcdClient, id: i64) -> anyhow::Result<LeaseState> {
    let answer = etcd
        .first_answer(&format!("reading lease {id:x}"), |mut client| async move {
            client.lease_time_to_live(id, None).await
        })
        .await?;
    Ok(LeaseState {
        id,
        // etcd answers -1 for a lease that has expired.
        ttl_left: u64::try_from(answer.ttl()).ok(),
        granted: u64::try_from(answer.granted_ttl()).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_the_first_segment_after_the_prefix() {
        let prefix = "/shippy/services/";
        assert_eq!(
            service_of(prefix, "/shippy/services/shippy.service.vessel/abc"),
            "shippy.service.vessel"
        );
        assert_eq!(service_of(prefix, "/shippy/services/odd"), "odd");
        assert_eq!(service_of(prefix, "/shippy/services//x"), "");
    }
}
