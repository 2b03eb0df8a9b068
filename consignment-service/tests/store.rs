//! Durability through the real binaries: acknowledged consignments survive
//! `kill -9`, parallel creates are stored once each, replicas share one
//! PostgreSQL, and a store that cannot be opened stops the service at start
//! with a clear error. etcd is the one this test binary shares, under a key
//! prefix per test; PostgreSQL is a real, private server.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::Path;

use nix::sys::signal::Signal;
use shippy_proto::consignment::SERVICE_NAME;
use shippy_proto::consignment::v1 as pb;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_test_support::fixtures::consignment;
use shippy_test_support::{
    DEADLINE, Postgres, Service, ServiceProcess, TestRegistry, free_port, spawn_service,
};
use tonic::Code;
use tonic::transport::Channel;

type Client = ShippingServiceClient<Channel>;

async fn start_vessel_service(registry: &TestRegistry, logs: &Path) -> ServiceProcess {
    ServiceProcess::start(registry, Service::Vessel, logs, "vessel", &[])
        .await
        .unwrap()
}

/// Starts consignment-service on `address` with `env`, and a client once it
/// has registered (which it does once it serves).
async fn start_consignment_service(
    registry: &TestRegistry,
    logs: &Path,
    name: &str,
    address: &str,
    env: &[(&str, &str)],
) -> (ServiceProcess, Client) {
    let service =
        ServiceProcess::start_at(registry, Service::Consignment, logs, name, address, env)
            .await
            .unwrap();
    let client = service.shipping_client().await.unwrap();
    (service, client)
}

async fn stored_ids(client: &mut Client) -> Vec<String> {
    client
        .get_consignments(pb::GetRequest::default())
        .await
        .unwrap()
        .into_inner()
        .consignments
        .into_iter()
        .map(|c| c.id)
        .collect()
}

#[tokio::test]
async fn acknowledged_consignments_survive_kill_9() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let data = logs.path().join("data");
    let data_env = [("SHIPPY_DATA_DIR", data.to_str().unwrap())];
    let _vessel = start_vessel_service(&registry, logs.path()).await;
    let address = format!("127.0.0.1:{}", free_port().unwrap());
    let (service, mut client) =
        start_consignment_service(&registry, logs.path(), "first", &address, &data_env).await;

    let created: Vec<String> = (0..25).map(|i| format!("durable-{i:02}")).collect();
    for id in &created {
        let answer = client.create_consignment(consignment(id)).await.unwrap();
        assert!(
            !answer
                .into_inner()
                .consignment
                .unwrap()
                .vessel_id
                .is_empty()
        );
    }
    service.signal(Signal::SIGKILL).unwrap();
    drop(service);
    drop(client);

    let (_service, mut client) =
        start_consignment_service(&registry, logs.path(), "restarted", &address, &data_env).await;
    assert_eq!(stored_ids(&mut client).await, created);
    assert!(data.join("consignments.sqlite3").is_file());
}

#[tokio::test]
async fn parallel_creates_are_stored_exactly_once() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let _vessel = start_vessel_service(&registry, logs.path()).await;
    let address = format!("127.0.0.1:{}", free_port().unwrap());
    let (_service, client) =
        start_consignment_service(&registry, logs.path(), "consignment", &address, &[]).await;

    // 100 distinct consignments, each sent twice at once: one of each pair
    // is stored, the other refused as a duplicate.
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .create_consignment(consignment(&format!("parallel-{}", i % 100)))
                    .await
                    .map(|_| ())
                    .map_err(|status| status.code())
            })
        })
        .collect();
    let mut created = 0;
    let mut duplicates = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => created += 1,
            Err(Code::AlreadyExists) => duplicates += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((created, duplicates), (100, 100));

    let mut client = client;
    let ids = stored_ids(&mut client).await;
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (100, 100));
}

#[tokio::test]
async fn replicas_on_one_postgres_see_each_others_consignments() {
    let postgres = Postgres::start().await.unwrap();
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let _vessel = start_vessel_service(&registry, logs.path()).await;
    let url = postgres.url();
    let database = [("SHIPPY_DATABASE_URL", url.as_str())];
    let first_address = format!("127.0.0.1:{}", free_port().unwrap());
    let second_address = format!("127.0.0.1:{}", free_port().unwrap());
    // Started together, so both migrate the same empty database at once.
    let ((_first, mut first), (_second, mut second)) = tokio::join!(
        start_consignment_service(
            &registry,
            logs.path(),
            "replica-1",
            &first_address,
            &database
        ),
        start_consignment_service(
            &registry,
            logs.path(),
            "replica-2",
            &second_address,
            &database
        ),
    );

    first
        .create_consignment(consignment("from-1"))
        .await
        .unwrap();
    second
        .create_consignment(consignment("from-2"))
        .await
        .unwrap();
    assert_eq!(stored_ids(&mut first).await, ["from-1", "from-2"]);
    assert_eq!(stored_ids(&mut second).await, ["from-1", "from-2"]);

    let duplicate = second
        .create_consignment(consignment("from-1"))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");

    // Paging crosses replicas too.
    let page = first
        .get_consignments(pb::GetRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let rest = second
        .get_consignments(pb::GetRequest {
            page_size: 1,
            page_token: page.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.consignments[0].id, "from-1");
    assert_eq!(rest.consignments[0].id, "from-2");
    assert!(!page.next_page_token.is_empty());
    assert!(rest.next_page_token.is_empty());
}

/// Starts consignment-service with `env` and returns its exit status and
/// log once it has stopped.
async fn failed_start(
    registry: &TestRegistry,
    logs: &Path,
    name: &str,
    env: &[(&str, &str)],
) -> String {
    let mut service = spawn_service(registry, Service::Consignment, logs, name, env).unwrap();
    let status = service.wait_exit(DEADLINE).await.unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "{name}: {status}\n{}",
        service.log()
    );
    service.log()
}

#[tokio::test]
async fn a_store_that_cannot_be_opened_stops_the_service_at_start() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();

    let file = logs.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let log = failed_start(
        &registry,
        logs.path(),
        "file",
        &[("SHIPPY_DATA_DIR", file.to_str().unwrap())],
    )
    .await;
    assert!(
        log.contains(&format!("data directory {}", file.display())),
        "{log}"
    );

    let corrupt = logs.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::write(corrupt.join("consignments.sqlite3"), vec![0x5a; 8192]).unwrap();
    let log = failed_start(
        &registry,
        logs.path(),
        "corrupt",
        &[("SHIPPY_DATA_DIR", corrupt.to_str().unwrap())],
    )
    .await;
    assert!(log.contains("cannot open the SQLite store"), "{log}");
    assert!(log.contains("file is not a database"), "{log}");

    let url = format!(
        "postgres://shippy:secret@127.0.0.1:{}/shippy",
        free_port().unwrap()
    );
    let log = failed_start(
        &registry,
        logs.path(),
        "unreachable",
        &[("SHIPPY_DATABASE_URL", &url)],
    )
    .await;
    assert!(
        log.contains("cannot connect to PostgreSQL at shippy@127.0.0.1:"),
        "{log}"
    );
    assert!(!log.contains("secret"), "{log}");

    // None of them got as far as registering.
    assert!(registry.instances(SERVICE_NAME).await.unwrap().is_empty());
}
