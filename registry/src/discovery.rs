//! Following one service's instances in etcd.
//!
//! [`Discovery::start`] reads the service's instances once, then follows a
//! watch from that read's revision + 1, so no change is missed or seen twice.
//! It publishes the instances on a watch channel, which the client side
//! turns into connections; a call never reads etcd. When the watch breaks,
//! it resumes from the last revision seen; when that revision has been
//! compacted away, it reads again and applies the difference. While etcd is
//! down the last known instances stay published.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::anyhow;
use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::etcd::EtcdClient;
use crate::record::{AdvertiseAddr, Instance, KeySpace, decode_instance, instance_key_from};
use crate::retry::{Backoff, HELD_LONG_ENOUGH, Outage, Subject, within};

/// The instances of one service known right now, by etcd key.
pub type InstanceMap = BTreeMap<String, AdvertiseAddr>;

/// What the follower does while etcd is down, for the outage log line.
const WHILE_DOWN: &str = "keeping the last known instances";

/// A live view of one service's instances.
///
/// Dropping it stops following etcd; receivers handed out keep the last
/// instances they saw.
#[derive(Debug)]
pub struct Discovery {
    /// The service name, for error messages.
    service: String,
    /// The instances' addresses, for watchers.
    instances: watch::Receiver<Arc<InstanceMap>>,
    /// The follower task, aborted on drop.
    task: JoinHandle<()>,
}

impl Discovery {
    /// Reads `service`'s instances under `keys`, then follows them in the
    /// background.
    ///
    /// The first read is awaited (a few seconds at most per etcd member) so a service
    /// that depends on `service` knows its instances before it advertises
    /// itself. If etcd does not answer, following starts anyway and
    /// instances are added as soon as it does.
    pub async fn start(etcd: EtcdClient, keys: &KeySpace, service: &str) -> Self {
        let (mut follower, instances) = Follower::new(etcd, keys, service);
        let first_read = match follower.resync().await {
            Ok(revision) => Some(revision),
            Err(err) => {
                follower.failed(&err);
                None
            }
        };
        Self {
            service: service.to_owned(),
            instances,
            task: tokio::spawn(follower.run(first_read)),
        }
    }

    /// The name of the service followed.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// A receiver that sees the instance map every time it changes.
    pub fn instances(&self) -> watch::Receiver<Arc<InstanceMap>> {
        self.instances.clone()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads every decodable instance of the service under `service_prefix`,
/// with the store revision the read saw, trying each etcd member in turn
/// until one answers. Malformed records are skipped with a warning each.
pub async fn read_instances(
    etcd: &mut EtcdClient,
    service_prefix: &str,
) -> anyhow::Result<(Vec<Instance>, i64)> {
    let response = etcd
        .first_answer(
            &format!("reading {service_prefix}"),
            |mut client| async move {
                client
                    .get(service_prefix, Some(GetOptions::new().with_prefix()))
                    .await
            },
        )
        .await?;
    Ok(decode_response(service_prefix, &response))
}
/// The decodable instances in a read, and the read's revision.
fn decode_response(
    service_prefix: &str,
    response: &etcd_client::GetResponse,
) -> (Vec<Instance>, i64) {
    let revision = response.header().map_or(0, |header| header.revision());
    let instances = response
        .kvs()
        .iter()
        .filter_map(
            |kv| match decode_instance(service_prefix, kv.key(), kv.value()) {
                Ok(instance) => Some(instance),
                Err(err) => {
                    warn!(error = %err, "skipping malformed service record");
                    None
                }
            },
        )
        .collect();
    (instances, revision)
}

/// How following the watch ended.
enum WatchEnd {
    /// The revision to resume from was compacted: read everything again.
    Compacted,
    /// The stream failed; resume after the last revision seen.
    Broken {
        /// What failed, for the log.
        error: anyhow::Error,
        /// The newest revision already applied.
        last_seen: i64,
    },
}

/// The background task that mirrors etcd into the published instances.
struct Follower {
    /// Moves to another etcd member when one fails.
    etcd: EtcdClient,
    /// The service name, for logs.
    service: String,
    /// `<prefix>/<service>/`, the keys followed.
    prefix: String,
    /// The instances now, to diff a fresh read against.
    known: InstanceMap,
    /// Publishes the instances after every change.
    published: watch::Sender<Arc<InstanceMap>>,
    /// Logs an etcd outage once, not per retry.
    outage: Outage,
}

impl Follower {
    /// A follower with no instances yet, and receivers for what it publishes.
    fn new(
        etcd: EtcdClient,
        keys: &KeySpace,
        service: &str,
    ) -> (Self, watch::Receiver<Arc<InstanceMap>>) {
        let (published, instances) = watch::channel(Arc::new(InstanceMap::new()));
        let follower = Self {
            etcd,
            service: service.to_owned(),
            prefix: keys.service_prefix(service),
            known: InstanceMap::new(),
            published,
            outage: Outage::new(Subject::Service(service.to_owned())),
        };
        (follower, instances)
    }

    /// Follows etcd forever, resuming after `resume_after` when the initial
    /// read succeeded.
    async fn run(mut self, mut resume_after: Option<i64>) {
        let mut backoff = Backoff::default();
        loop {
            let revision = match resume_after {
                Some(revision) => revision,
                None => match self.resync().await {
                    Ok(revision) => revision,
                    Err(err) => {
                        self.failed(&err);
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                },
            };
            let started = Instant::now();
            let end = self.follow(revision + 1).await;
            // A watch that lasted was a success: the next problem starts the
            // backoff from the beginning.
            if started.elapsed() >= HELD_LONG_ENOUGH {
                backoff.reset();
            }
            match end {
                WatchEnd::Compacted => {
                    info!(service = %self.service, "watch history compacted; reading instances again");
                    resume_after = None;
                }
                WatchEnd::Broken { error, last_seen } => {
                    self.failed(&error);
                    resume_after = Some(last_seen);
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Reads all instances and applies the difference to the pool.
    /// Returns the read's revision.
    async fn resync(&mut self) -> anyhow::Result<i64> {
        let (instances, revision) = read_instances(&mut self.etcd, &self.prefix).await?;
        self.recovered();
        let fresh: InstanceMap = instances
            .into_iter()
            .map(|instance| (instance.key, instance.record.address))
            .collect();
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|key| !fresh.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            self.remove(&key);
        }
        for (key, address) in fresh {
            self.insert(key, address);
        }
        self.publish();
        Ok(revision)
    }

    /// Applies watch events from `start_revision` on until the stream ends.
    async fn follow(&mut self, start_revision: i64) -> WatchEnd {
        let mut last_seen = start_revision - 1;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_revision);
        let opened = within(
            self.etcd
                .client()
                .watch(self.prefix.as_str(), Some(options)),
        )
        .await;
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(err) => {
                return WatchEnd::Broken {
                    error: err.context("opening watch"),
                    last_seen,
                };
            }
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    return WatchEnd::Broken {
                        error: anyhow!("watch stream closed by etcd"),
                        last_seen,
                    };
                }
                Err(err) => {
                    return WatchEnd::Broken {
                        error: anyhow!(err).context("watch stream"),
                        last_seen,
                    };
                }
            };
            if response.compact_revision() > 0 {
                return WatchEnd::Compacted;
            }
            if response.canceled() {
                return WatchEnd::Broken {
                    error: anyhow!("watch canceled by etcd: {}", response.cancel_reason()),
                    last_seen,
                };
            }
            if response.created() {
                self.recovered();
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                last_seen = last_seen.max(kv.mod_revision());
                match event.event_type() {
                    EventType::Put => self.apply_put(kv.key(), kv.value()),
                    EventType::Delete => {
                        if let Ok(key) = instance_key_from(&self.prefix, kv.key()) {
                            self.remove(&key);
                        }
                    }
                }
            }
            if !response.events().is_empty() {
                self.publish();
            }
        }
    }

    /// Adds or updates the instance a put event describes. A malformed record
    /// is skipped with a warning and, if its key was known, removed: its old
    /// address can no longer be trusted.
    fn apply_put(&mut self, key: &[u8], value: &[u8]) {
        match decode_instance(&self.prefix, key, value) {
            Ok(instance) => self.insert(instance.key, instance.record.address),
            Err(err) => {
                warn!(error = %err, "skipping malformed service record");
                if let Ok(key) = instance_key_from(&self.prefix, key) {
                    self.remove(&key);
                }
            }
        }
    }

    /// Adds an instance unless it is already there unchanged.
    fn insert(&mut self, key: String, address: AdvertiseAddr) {
        if self.known.get(&key) == Some(&address) {
            return;
        }
        info!(service = %self.service, %key, %address, "instance added");
        self.known.insert(key, address);
    }

    /// Removes an instance if it is there.
    fn remove(&mut self, key: &str) {
        if self.known.remove(key).is_some() {
            info!(service = %self.service, %key, "instance removed");
        }
    }

    fn publish(&self) {
        self.published.send_replace(Arc::new(self.known.clone()));
    }

    /// Logs a failed etcd request (once per outage) and moves to the next member.
    fn failed(&mut self, err: &anyhow::Error) {
        self.etcd.fail_over();
        self.outage.failed(err, WHILE_DOWN);
    }

    fn recovered(&mut self) {
        self.outage.recovered();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use etcd_client::CompactionOptions;
    use shippy_test_support::Etcd;

    use super::*;
    use crate::record::ServiceRecord;

    fn record(id: &str, address: &str) -> String {
        ServiceRecord {
            name: "svc".into(),
            id: id.into(),
            address: address.parse().unwrap(),
            metadata: BTreeMap::new(),
        }
        .to_json()
    }

    #[tokio::test]
    async fn resuming_from_a_compacted_revision_reads_everything_again() {
        // A private etcd: compaction drops history for every key on the server.
        let server = Etcd::start().await.unwrap();
        let keys = KeySpace::new("/p");
        let mut writer = server.client().await.unwrap();
        let first = writer
            .put(keys.instance_key("svc", "a"), record("a", "h:1"), None)
            .await
            .unwrap();
        let stale = first.header().unwrap().revision();
        writer
            .put(keys.instance_key("svc", "b"), record("b", "h:2"), None)
            .await
            .unwrap();
        let last = writer
            .delete(keys.instance_key("svc", "a"), None)
            .await
            .unwrap();
        // History up to now is gone, so resuming after `stale` is impossible.
        writer
            .compact(
                last.header().unwrap().revision(),
                Some(CompactionOptions::new().with_physical()),
            )
            .await
            .unwrap();
        let etcd = EtcdClient::connect(&[server.endpoint().to_owned()])
            .await
            .unwrap();
        let (mut follower, mut instances) = Follower::new(etcd, &keys, "svc");
        // As if "a" had been seen before the watch broke.
        follower.insert(keys.instance_key("svc", "a"), "h:1".parse().unwrap());

        assert!(matches!(
            follower.follow(stale + 1).await,
            WatchEnd::Compacted
        ));
        let task = tokio::spawn(follower.run(Some(stale)));

        let expected: InstanceMap =
            [(keys.instance_key("svc", "b"), "h:2".parse().unwrap())].into();
        tokio::time::timeout(
            Duration::from_secs(10),
            instances.wait_for(|now| **now == expected),
        )
        .await
        .expect("a fresh read replaces the stale view")
        .unwrap();
        task.abort();
    }
}
