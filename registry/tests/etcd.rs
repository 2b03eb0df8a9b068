//! Registration and discovery against a real etcd process: the one this
//! test binary shares, under a key prefix per test, except where etcd
//! itself must start late.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{GetOptions, PutOptions};
use shippy_registry::discovery::read_instances;
use shippy_registry::{AdvertiseAddr, Discovery, Registration, RegistrationState, ServiceRecord};
use shippy_test_support::{DEADLINE, Etcd, KeyVersion, TestRegistry, registered, wait_until};

const SERVICE: &str = "shippy.service.test";

fn record(id: &str, address: &str) -> ServiceRecord {
    ServiceRecord {
        name: SERVICE.into(),
        id: id.into(),
        address: address.parse().unwrap(),
        metadata: BTreeMap::new(),
    }
}

/// Starts registering instance `id` of [`SERVICE`] in `registry` on a lease of `ttl`.
async fn register(registry: &TestRegistry, id: &str, ttl: Duration) -> Registration {
    Registration::spawn(
        registry.etcd_client().await.unwrap(),
        registry.keys().instance_key(SERVICE, id),
        &record(id, "127.0.0.1:4000"),
        ttl,
    )
}

/// Which incarnation of `key` is stored; panics when there is none.
async fn version(registry: &TestRegistry, key: &str) -> KeyVersion {
    registry
        .key_version(key)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{key} is not stored"))
}

#[tokio::test]
async fn a_registration_is_on_a_lease_and_revoking_removes_it_at_once() {
    let registry = TestRegistry::shared().await.unwrap();
    let registration = register(&registry, "one", Duration::from_secs(5)).await;
    registered(registration.state()).await.unwrap();
    let key = registration.key().to_owned();

    let mut reader = registry.client().await.unwrap();
    let stored = reader.get(key.as_str(), None).await.unwrap();
    let kv = &stored.kvs()[0];
    assert_ne!(kv.lease(), 0, "the key must sit on a lease");
    let ttl = reader.lease_time_to_live(kv.lease(), None).await.unwrap();
    assert!((1..=5).contains(&ttl.ttl()), "ttl {}", ttl.ttl());
    let value: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
    assert_eq!(value["address"], "127.0.0.1:4000");

    registration.deregister().await;
    let after = reader.get(key.as_str(), None).await.unwrap();
    assert!(after.kvs().is_empty(), "key still present after deregister");
}

#[tokio::test]
async fn the_lease_is_renewed_beyond_its_ttl() {
    let registry = TestRegistry::shared().await.unwrap();
    let registration = register(&registry, "kept", Duration::from_secs(2)).await;
    registered(registration.state()).await.unwrap();
    let kept = version(&registry, registration.key()).await;

    // Outlive the lease twice over; only renewals keep the key, and a key
    // that expired and was put back would be a new incarnation on a new lease.
    registry.outlive(4).await.unwrap();

    assert_eq!(version(&registry, registration.key()).await, kept);
    registration.deregister().await;
}

#[tokio::test]
async fn a_revoked_lease_is_replaced_and_the_key_put_back() {
    let registry = TestRegistry::shared().await.unwrap();
    let registration = register(&registry, "again", Duration::from_secs(10)).await;
    registered(registration.state()).await.unwrap();
    let key = registration.key().to_owned();
    let lease = version(&registry, &key).await.lease;

    registry
        .client()
        .await
        .unwrap()
        .lease_revoke(lease)
        .await
        .unwrap();

    wait_until(DEADLINE, "the key back on a new lease", || async {
        registry
            .key_version(&key)
            .await
            .unwrap()
            .is_some_and(|now| now.lease != lease)
    })
    .await
    .unwrap();
    registration.deregister().await;
}

#[tokio::test]
async fn a_deleted_key_is_put_back() {
    let registry = TestRegistry::shared().await.unwrap();
    let registration = register(&registry, "deleted", Duration::from_secs(10)).await;
    registered(registration.state()).await.unwrap();
    let key = registration.key().to_owned();
    let lease = version(&registry, &key).await.lease;

    for _ in 0..3 {
        registry
            .client()
            .await
            .unwrap()
            .delete(key.as_str(), None)
            .await
            .unwrap();
        wait_until(DEADLINE, "the deleted key back", || async {
            registry
                .key_version(&key)
                .await
                .unwrap()
                .is_some_and(|now| now.lease == lease)
        })
        .await
        .unwrap();
    }
    registration.deregister().await;
    assert_eq!(registry.key_version(&key).await.unwrap(), None);
}

/// Log output collected in memory, for a test that counts log lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// How many lines logged so far contain `text`.
    fn lines_containing(&self, text: &str) -> usize {
        let bytes = self.0.lock().unwrap();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(text))
            .count()
    }
}

impl io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_registration_started_before_etcd_lands_once_etcd_answers() {
    // The registration task runs on this test's single thread, so a
    // thread-local subscriber sees its every attempt.
    let logs = Captured::default();
    let writer = logs.clone();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    // A private etcd: this one starts only after the registration does.
    let mut server = Etcd::not_started().unwrap();
    let registry = server.registry();
    let registration = register(&registry, "early", Duration::from_secs(10)).await;

    // Several failed attempts (the first logged as a warning, the rest at
    // debug), which must not end the task.
    wait_until(DEADLINE, "three failed attempts", || async {
        logs.lines_containing("etcd unreachable; will keep retrying") == 1
            && logs.lines_containing("etcd still unreachable") >= 2
    })
    .await
    .unwrap();
    assert_eq!(
        *registration.state().borrow(),
        RegistrationState::Registering
    );

    server.restart().await.unwrap();

    registered(registration.state()).await.unwrap();
    assert!(
        registry
            .key_version(registration.key())
            .await
            .unwrap()
            .is_some()
    );
    registration.deregister().await;
}

#[tokio::test]
async fn discovery_follows_instances_and_skips_malformed_records() {
    let registry = TestRegistry::shared().await.unwrap();
    let keys = registry.keys().clone();
    let mut writer = registry.client().await.unwrap();
    let key = |id: &str| keys.instance_key(SERVICE, id);

    // One instance exists before discovery starts: found by the first read.
    writer
        .put(
            key("first"),
            record("first", "127.0.0.1:4001").to_json(),
            None,
        )
        .await
        .unwrap();
    let client = registry.etcd_client().await.unwrap();
    let discovery = Discovery::start(client.clone(), &keys, SERVICE).await;
    let instances = discovery.instances();
    let expect = |expected: &[(&str, &str)]| {
        let expected: BTreeMap<String, AdvertiseAddr> = expected
            .iter()
            .map(|(id, address)| (key(id), address.parse().unwrap()))
            .collect();
        let mut instances = instances.clone();
        async move {
            tokio::time::timeout(DEADLINE, instances.wait_for(|now| **now == expected))
                .await
                .unwrap_or_else(|_| panic!("instances never became {expected:?}"))
                .unwrap();
        }
    };
    expect(&[("first", "127.0.0.1:4001")]).await;
    assert!(!discovery.instances().borrow().is_empty());

    // Later puts arrive through the watch; junk and other services are ignored.
    writer.put(key("broken"), "{not json", None).await.unwrap();
    writer
        .put(
            keys.instance_key("shippy.service.other", "x"),
            record("x", "127.0.0.1:9").to_json(),
            None,
        )
        .await
        .unwrap();
    writer
        .put(
            key("second"),
            record("second", "127.0.0.1:4002").to_json(),
            None,
        )
        .await
        .unwrap();
    expect(&[("first", "127.0.0.1:4001"), ("second", "127.0.0.1:4002")]).await;

    // A changed address replaces the old one; a delete removes the instance.
    writer
        .put(
            key("first"),
            record("first", "127.0.0.1:5001").to_json(),
            None,
        )
        .await
        .unwrap();
    writer.delete(key("second"), None).await.unwrap();
    expect(&[("first", "127.0.0.1:5001")]).await;

    // An instance whose lease ends disappears too.
    let lease = writer.lease_grant(2, None).await.unwrap().id();
    writer
        .put(
            key("leased"),
            record("leased", "127.0.0.1:4003").to_json(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    expect(&[("first", "127.0.0.1:5001"), ("leased", "127.0.0.1:4003")]).await;
    writer.lease_revoke(lease).await.unwrap();
    expect(&[("first", "127.0.0.1:5001")]).await;

    // A one-off read sees the same, skipping the malformed record that is
    // still stored.
    let mut reader = client.clone();
    let (found, revision) = read_instances(&mut reader, &keys.service_prefix(SERVICE))
        .await
        .unwrap();
    assert!(revision > 0);
    let ids: Vec<_> = found.iter().map(|i| i.record.id.as_str()).collect();
    assert_eq!(ids, ["first"]);
    let stored = writer
        .get(
            keys.service_prefix(SERVICE),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(stored.kvs().len(), 2);
}
