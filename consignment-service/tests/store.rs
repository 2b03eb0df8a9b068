//! Durability through the real binaries: acknowledged consignments survive
//! `kill -9`, parallel creates are stored once each, replicas share one
//! PostgreSQL, and a store that cannot be opened stops the service at start
//! with a clear error. etcd and PostgreSQL are real, private servers.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use shippy_proto::consignment::v1 as pb;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_test_support::{ChildGuard, Etcd, Postgres, free_port, spawn_service, wait_until};
use tonic::Code;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(20);
const VESSELS: &str = "/shippy/services/shippy.service.vessel/";
const CONSIGNMENTS: &str = "/shippy/services/shippy.service.consignment/";

type Client = ShippingServiceClient<Channel>;

async fn start_vessel_service(etcd: &Etcd, logs: &Path) -> ChildGuard {
    let vessel = spawn_service("vessel-service", etcd.endpoint(), logs, "vessel", &[]).unwrap();
    wait_until(DEADLINE, "vessel-service registered", || async {
        !etcd.get_prefix(VESSELS).await.unwrap().is_empty()
    })
    .await
    .unwrap();
    vessel
}

/// Starts consignment-service on `address` with `env`, and a client once it answers.
async fn start_consignment_service(
    etcd: &Etcd,
    logs: &Path,
    name: &str,
    address: &str,
    env: &[(&str, &str)],
) -> (ChildGuard, Client) {
    let env = [&[("SHIPPY_LISTEN_ADDR", address)], env].concat();
    let mut service =
        spawn_service("consignment-service", etcd.endpoint(), logs, name, &env).unwrap();
    wait_until(DEADLINE, &format!("{name} answering on {address}"), || {
        if let Some(status) = service.try_exit().unwrap() {
            panic!("{name} exited with {status}:\n{}", service.log_tail());
        }
        async move {
            match Client::connect(format!("http://{address}")).await {
                Ok(mut client) => client
                    .get_consignments(pb::GetRequest::default())
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
    .unwrap();
    let client = Client::connect(format!("http://{address}")).await.unwrap();
    (service, client)
}

fn consignment(id: &str) -> pb::Consignment {
    pb::Consignment {
        id: id.to_owned(),
        description: format!("consignment {id}"),
        weight: 100,
        containers: vec![pb::Container {
            id: String::new(),
            customer_id: "cust001".into(),
            origin: "Manchester, United Kingdom".into(),
            user_id: "user001".into(),
        }],
        vessel_id: String::new(),
    }
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
    let etcd = Etcd::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let data = logs.path().join("data");
    let data_env = [("SHIPPY_DATA_DIR", data.to_str().unwrap())];
    let _vessel = start_vessel_service(&etcd, logs.path()).await;
    let address = format!("127.0.0.1:{}", free_port().unwrap());
    let (service, mut client) =
        start_consignment_service(&etcd, logs.path(), "first", &address, &data_env).await;

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
        start_consignment_service(&etcd, logs.path(), "restarted", &address, &data_env).await;
    assert_eq!(stored_ids(&mut client).await, created);
    assert!(data.join("consignments.sqlite3").is_file());
}

#[tokio::test]
async fn parallel_creates_are_stored_exactly_once() {
    let etcd = Etcd::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let _vessel = start_vessel_service(&etcd, logs.path()).await;
    let address = format!("127.0.0.1:{}", free_port().unwrap());
    let (_service, client) =
        start_consignment_service(&etcd, logs.path(), "consignment", &address, &[]).await;

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
    let etcd = Etcd::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let _vessel = start_vessel_service(&etcd, logs.path()).await;
    let url = postgres.url();
    let database = [("SHIPPY_DATABASE_URL", url.as_str())];
    let first_address = format!("127.0.0.1:{}", free_port().unwrap());
    let second_address = format!("127.0.0.1:{}", free_port().unwrap());
    // Started together, so both migrate the same empty database at once.
    let ((_first, mut first), (_second, mut second)) = tokio::join!(
        start_consignment_service(&etcd, logs.path(), "replica-1", &first_address, &database),
        start_consignment_service(&etcd, logs.path(), "replica-2", &second_address, &database),
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
async fn failed_start(etcd: &Etcd, logs: &Path, name: &str, env: &[(&str, &str)]) -> String {
    let mut service =
        spawn_service("consignment-service", etcd.endpoint(), logs, name, env).unwrap();
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
    let etcd = Etcd::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();

    let file = logs.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let log = failed_start(
        &etcd,
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
        &etcd,
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
        &etcd,
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
    assert!(etcd.get_prefix(CONSIGNMENTS).await.unwrap().is_empty());
}
