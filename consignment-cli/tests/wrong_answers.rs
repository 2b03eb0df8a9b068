//! Registrations that lead nowhere useful: a record pointing at another
//! gRPC server (etcd's own port, which answers UNIMPLEMENTED for shippy's
//! methods) and one pointing at a server that accepts connections and never
//! answers. Callers skip such instances, in consignment-service's vessel
//! hop and in the CLI, and a deadline that passes says DEADLINE_EXCEEDED.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{CONSIGNMENT, VESSEL, run_cli, sample_file, wait_for_keys};
use shippy_test_support::{Etcd, spawn_service};
use tokio::net::TcpListener;

/// Registers `address` under `prefix` as an instance whose key sorts first.
async fn register_first(etcd: &Etcd, prefix: &str, address: &str) {
    let record = serde_json::json!({"name": "impostor", "id": "0", "address": address});
    etcd.client()
        .await
        .unwrap()
        .put(format!("{prefix}0"), record.to_string(), None)
        .await
        .unwrap();
}

/// A server that accepts connections and never answers; they stay open for
/// as long as the returned task runs.
async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (address, task)
}

#[tokio::test]
async fn records_pointing_at_another_server_cost_no_call() {
    let etcd = Etcd::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let etcd_address = etcd.endpoint().trim_start_matches("http://").to_owned();
    register_first(&etcd, VESSEL, &etcd_address).await;
    register_first(&etcd, CONSIGNMENT, &etcd_address).await;
    let _vessel = spawn_service(
        "vessel-service",
        etcd.endpoint(),
        logs.path(),
        "vessel",
        &[],
    )
    .unwrap();
    wait_for_keys(&etcd, VESSEL, 2).await;
    let consignment = spawn_service(
        "consignment-service",
        etcd.endpoint(),
        logs.path(),
        "consignment",
        &[],
    )
    .unwrap();
    wait_for_keys(&etcd, CONSIGNMENT, 2).await;
    let sample = sample_file();

    for _ in 0..4 {
        let created = run_cli(&etcd, &["create", sample.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&created.stdout);
        assert!(created.status.success(), "{created:?}");
        assert!(stdout.contains("vessel_id:   vessel001"), "{stdout}");
    }
    let listed = run_cli(&etcd, &["list"]);
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        String::from_utf8_lossy(&listed.stdout).starts_with("All consignments (4):"),
        "{listed:?}"
    );
    assert!(
        consignment
            .log()
            .contains("instance answers as another server"),
        "{}",
        consignment.log()
    );
}

#[tokio::test]
async fn a_silent_instance_costs_a_listing_nothing_and_a_create_its_deadline() {
    let etcd = Etcd::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (silent, _holding) = silent_server().await;
    let _vessel = spawn_service(
        "vessel-service",
        etcd.endpoint(),
        logs.path(),
        "vessel",
        &[],
    )
    .unwrap();
    wait_for_keys(&etcd, VESSEL, 1).await;

    // Only the silent instance: a create may not be sent twice, so it
    // waits out its deadline and says so.
    register_first(&etcd, CONSIGNMENT, &silent).await;
    let sample = sample_file();
    let stuck = run_cli(
        &etcd,
        &["create", "--timeout", "2", sample.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&stuck.stderr);
    assert_eq!(stuck.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: CreateConsignment failed: DEADLINE_EXCEEDED"),
        "{stderr}"
    );

    // With a real instance beside it, listings (safe to send again) always
    // succeed, whichever instance they try first.
    let _consignment = spawn_service(
        "consignment-service",
        etcd.endpoint(),
        logs.path(),
        "consignment",
        &[],
    )
    .unwrap();
    wait_for_keys(&etcd, CONSIGNMENT, 2).await;
    for _ in 0..4 {
        let listed = run_cli(&etcd, &["list", "--timeout", "4"]);
        assert!(listed.status.success(), "{listed:?}");
    }
}
