//! The registry as `services` shows it: each registered instance with its
//! lease and its live health, checked on all instances at once.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use shippy_client::health::{self, WireStatus};
use shippy_registry::catalog::{self, Entry, LeaseState};
use shippy_registry::{EtcdClient, KeySpace};

/// One registered instance, or one unreadable record.
#[derive(Debug)]
pub struct InstanceView {
    /// Its etcd key.
    pub key: String,
    /// The instance id (the key's last segment).
    pub id: String,
    /// Where callers reach it; `None` when the record is unreadable.
    pub address: Option<String>,
    /// The record's metadata.
    pub metadata: BTreeMap<String, String>,
    /// The lease that keeps the key, if any.
    pub lease: Option<LeaseState>,
    /// What a health check found.
    pub health: Health,
}

/// What a live health check of an instance found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The instance answered with this status.
    Reported(WireStatus),
    /// It could not be reached or did not answer; why.
    Unreachable(String),
    /// Not checked: the record could not be read; why.
    UnreadableRecord(String),
}

impl Health {
    /// SERVING, NOT_SERVING, UNREACHABLE, …
    pub fn label(&self) -> &'static str {
        match self {
            Self::Reported(status) => status.as_str_name(),
            Self::Unreachable(_) => "UNREACHABLE",
            Self::UnreadableRecord(_) => "UNREADABLE_RECORD",
        }
    }

    /// Why the health is not a reported status, if it is not.
    pub fn problem(&self) -> Option<&str> {
        match self {
            Self::Reported(_) => None,
            Self::Unreachable(why) | Self::UnreadableRecord(why) => Some(why),
        }
    }
}

/// Every service under `keys` with its instances, health-checked within
/// `health_timeout` each.
pub async fn gather(
    etcd: &mut EtcdClient,
    keys: &KeySpace,
    health_timeout: Duration,
) -> anyhow::Result<BTreeMap<String, Vec<InstanceView>>> {
    let services = catalog::read(etcd, keys).await?;
    let mut views = BTreeMap::new();
    for (service, entries) in services {
        let checked = join_all(entries.into_iter().map(|entry| view(entry, health_timeout))).await;
        views.insert(service, checked);
    }
    Ok(views)
}

async fn view(entry: Entry, health_timeout: Duration) -> InstanceView {
    let id = entry
        .key
        .rsplit('/')
        .next()
        .unwrap_or(&entry.key)
        .to_owned();
    let (address, metadata, health) = match entry.record {
        Ok(record) => {
            let health = match health::check(&record.address, health_timeout).await {
                Ok(status) => Health::Reported(status),
                Err(err) => Health::Unreachable(format!("{err:#}")),
            };
            (Some(record.address.to_string()), record.metadata, health)
        }
        Err(err) => (
            None,
            BTreeMap::new(),
            Health::UnreadableRecord(err.to_string()),
        ),
    };
    InstanceView {
        key: entry.key,
        id,
        address,
        metadata,
        lease: entry.lease,
        health,
    }
}
