//! Registration and discovery against a real etcd process.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{GetOptions, PutOptions};
use shippy_registry::EtcdClient;
use shippy_registry::discovery::read_instances;
use shippy_registry::{
    AdvertiseAddr, Discovery, KeySpace, Registration, RegistrationState, ServiceRecord,
};
use shippy_test_support::{Etcd, wait_until};

const SERVICE: &str = "shippy.service.test";
const DEADLINE: Duration = Duration::from_secs(10);

fn record(id: &str, address: &str) -> ServiceRecord {
    ServiceRecord {
        name: SERVICE.into(),
        id: id.into(),
        address: address.parse().unwrap(),
        metadata: BTreeMap::new(),
    }
}

async fn registered(registration: &Registration) {
    let mut state = registration.state();
    tokio::time::timeout(
        DEADLINE,
        state.wait_for(|s| *s == RegistrationState::Registered),
    )
    .await
    .expect("registered in time")
    .expect("registration task alive");
}

async fn connect(server: &Etcd) -> EtcdClient {
    EtcdClient::connect(&[server.endpoint().to_owned()])
        .await
        .unwrap()
}

#[tokio::test]
async fn a_registration_is_on_a_lease_and_revoking_removes_it_at_once() {
    let server = Etcd::start().await.unwrap();
    let key = KeySpace::new("/shippy/services").instance_key(SERVICE, "one");

    let registration = Registration::spawn(
        connect(&server).await,
        key.clone(),
        &record("one", "127.0.0.1:4000"),
        Duration::from_secs(5),
    );
    registered(&registration).await;

    let mut reader = server.client().await.unwrap();
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
    let server = Etcd::start().await.unwrap();
    let key = KeySpace::new("/p").instance_key(SERVICE, "kept");
    let registration = Registration::spawn(
        connect(&server).await,
        key.clone(),
        &record("kept", "127.0.0.1:4000"),
        Duration::from_secs(2),
    );
    registered(&registration).await;

    // Outlive the lease twice over; only renewals keep the key.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < until {
        let present = server.get_prefix(&key).await.unwrap();
        assert_eq!(
            present.len(),
            1,
            "key vanished while the lease should be renewed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    registration.deregister().await;
}

/// How soon a registration must be back after etcd or an operator removed it.
const RECOVERY: Duration = Duration::from_secs(2);

/// The lease the key sits on, if the key exists.
async fn lease_of(etcd: &Etcd, key: &str) -> Option<i64> {
    let mut reader = etcd.client().await.unwrap();
    let found = reader.get(key, None).await.unwrap();
    found.kvs().first().map(|kv| kv.lease())
}

#[tokio::test]
async fn a_revoked_lease_is_replaced_and_the_key_put_back_within_2s() {
    let server = Etcd::start().await.unwrap();
    let key = KeySpace::new("/p").instance_key(SERVICE, "again");
    let registration = Registration::spawn(
        connect(&server).await,
        key.clone(),
        &record("again", "127.0.0.1:4000"),
        Duration::from_secs(10),
    );
    registered(&registration).await;
    let lease = lease_of(&server, &key).await.unwrap();

    server
        .client()
        .await
        .unwrap()
        .lease_revoke(lease)
        .await
        .unwrap();

    wait_until(RECOVERY, "the key back on a new lease", || async {
        lease_of(&server, &key)
            .await
            .is_some_and(|now| now != lease)
    })
    .await
    .unwrap();
    registration.deregister().await;
}

#[tokio::test]
async fn a_deleted_key_is_put_back_within_2s() {
    let server = Etcd::start().await.unwrap();
    let key = KeySpace::new("/p").instance_key(SERVICE, "deleted");
    let registration = Registration::spawn(
        connect(&server).await,
        key.clone(),
        &record("deleted", "127.0.0.1:4000"),
        Duration::from_secs(10),
    );
    registered(&registration).await;
    let lease = lease_of(&server, &key).await.unwrap();

    for _ in 0..3 {
        server
            .client()
            .await
            .unwrap()
            .delete(key.as_str(), None)
            .await
            .unwrap();
        wait_until(RECOVERY, "the deleted key back", || async {
            lease_of(&server, &key).await == Some(lease)
        })
        .await
        .unwrap();
    }
    registration.deregister().await;
    assert_eq!(lease_of(&server, &key).await, None);
}

#[tokio::test]
async fn a_registration_started_before_etcd_lands_once_etcd_answers() {
    let mut server = Etcd::not_started().unwrap();
    let key = KeySpace::new("/p").instance_key(SERVICE, "early");
    let registration = Registration::spawn(
        connect(&server).await,
        key.clone(),
        &record("early", "127.0.0.1:4000"),
        Duration::from_secs(10),
    );
    // Long enough for several failed attempts, which must not end the task.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        *registration.state().borrow(),
        RegistrationState::Registering
    );

    server.restart().await.unwrap();

    wait_until(RECOVERY, "the key once etcd answers", || async {
        lease_of(&server, &key).await.is_some()
    })
    .await
    .unwrap();
    registered(&registration).await;
    registration.deregister().await;
}

#[tokio::test]
async fn discovery_follows_instances_and_skips_malformed_records() {
    let server = Etcd::start().await.unwrap();
    let keys = KeySpace::new("/shippy/services");
    let mut writer = server.client().await.unwrap();
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
    let client = connect(&server).await;
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
