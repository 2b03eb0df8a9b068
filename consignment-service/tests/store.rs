//! Durability through the real binaries: acknowledged consignments survive
//! `kill -9`, parallel creates are stored once each, replicas share one
//! PostgreSQL, and a store that cannot be opened stops the service at start
//! with a clear error. A full disk (a small tmpfs the test mounts, which
//! needs root, as `make test` in CI has) is named as such, to callers and at
//! start. etcd is the one this test binary shares, under a key
//! prefix per test; PostgreSQL is a real, private server.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use nix::sys::signal::Signal;
use shippy_proto::consignment::SERVICE_NAME;
use shippy_proto::consignment::v1 as pb;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_test_support::fixtures::consignment;
use shippy_test_support::{
    DEADLINE, Postgres, Service, ServiceProcess, TestRegistry, cli, free_port, spawn_service,
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

/// A small tmpfs mounted for one test, which the test can fill; unmounted
/// (lazily, so a process still inside cannot keep it) when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes`. Fails the test, rather than skipping it,
    /// where mounting is not allowed.
    fn mount(bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes}"),
                "shippy-small-disk",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            mounted.status.success(),
            "this test fills a disk of its own, a tmpfs it mounts, which needs root \
             (or CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Takes every byte left: appends to a file until the disk says ENOSPC.
    fn fill(&self) {
        let mut filler = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("filler"))
            .unwrap();
        let block = [0u8; 4096];
        loop {
            match filler.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::StorageFull => break,
                Err(err) => panic!("filling the disk: {err}"),
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_is_named_to_callers_and_at_start() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(8 * 1024 * 1024);
    let data = disk.path().join("data");
    let data_env = [("SHIPPY_DATA_DIR", data.to_str().unwrap())];
    let _vessel = start_vessel_service(&registry, logs.path()).await;
    let address = format!("127.0.0.1:{}", free_port().unwrap());
    let (service, mut client) =
        start_consignment_service(&registry, logs.path(), "full", &address, &data_env).await;
    client
        .create_consignment(consignment("before"))
        .await
        .unwrap();

    // A create on the full disk: refused as a service failure that says
    // why, through the CLI too (exit 1, not bad input).
    disk.fill();
    let refused = client
        .create_consignment(consignment("after"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(refused.message(), "the consignment store's disk is full");
    let sample = shippy_test_support::fixtures::sample_file();
    let cli = cli(&registry)
        .unwrap()
        .args(["create", sample.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1), "{cli:?}");
    assert_eq!(
        String::from_utf8_lossy(&cli.stderr),
        "error: CreateConsignment failed: UNAVAILABLE: the consignment store's disk is full\n"
    );
    assert_eq!(stored_ids(&mut client).await, ["before"]);
    assert!(service.stop().await.unwrap().success());

    // Started again on the full disk: one error line saying so, whether
    // SQLite runs out of space creating a store (FULL) or rebuilding the
    // WAL index of one restored from a backup without it (an I/O error).
    let fresh = disk.path().join("fresh");
    // The WAL index is a cache SQLite rebuilds on open; a backup restored
    // as the README says (the database file alone) comes without it.
    match std::fs::remove_file(data.join("consignments.sqlite3-shm")) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => panic!("{err}"),
        _ => {}
    }
    disk.fill();
    for (name, dir) in [("restored", &data), ("fresh", &fresh)] {
        let env = [("SHIPPY_DATA_DIR", dir.to_str().unwrap())];
        let log = failed_start(&registry, logs.path(), name, &env).await;
        let errors: Vec<_> = log
            .lines()
            .filter(|line| line.contains(" ERROR "))
            .collect();
        assert_eq!(errors.len(), 1, "{name}: {log}");
        assert!(
            errors[0].contains("the consignment store's disk is full"),
            "{name}: {log}"
        );
    }
}
