//! Registrations that lead nowhere useful: a record pointing at another
//! gRPC server (etcd's own port, which answers UNIMPLEMENTED for shippy's
//! methods) and one pointing at a server that accepts connections and never
//! answers. Callers skip such instances, in consignment-service's vessel
//! hop and in the CLI, and a deadline that passes says DEADLINE_EXCEEDED.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::run_cli;
use shippy_test_support::fixtures::sample_file;
use shippy_test_support::{DEADLINE, Service, ServiceProcess, TestRegistry, wait_until};
use tokio::net::TcpListener;

/// Registers `address` as an instance of `service` whose key sorts first.
async fn register_first(registry: &TestRegistry, service: Service, address: &str) {
    let key = registry.keys().instance_key(service.registered_name(), "0");
    let record = serde_json::json!({"name": "impostor", "id": "0", "address": address});
    registry
        .client()
        .await
        .unwrap()
        .put(key, record.to_string(), None)
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

async fn start(
    registry: &TestRegistry,
    service: Service,
    logs: &tempfile::TempDir,
) -> ServiceProcess {
    let name = service.package();
    ServiceProcess::start(registry, service, logs.path(), name, &[])
        .await
        .unwrap()
}

#[tokio::test]
async fn records_pointing_at_another_server_cost_no_call() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    // etcd answers gRPC on its client port, but none of shippy's methods.
    let endpoints = registry.endpoints();
    let etcd_address = endpoints.trim_start_matches("http://");
    register_first(&registry, Service::Vessel, etcd_address).await;
    register_first(&registry, Service::Consignment, etcd_address).await;
    let _vessel = start(&registry, Service::Vessel, &logs).await;
    let consignment = start(&registry, Service::Consignment, &logs).await;
    let sample = sample_file();

    for _ in 0..4 {
        let created = run_cli(&registry, &["create", sample.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&created.stdout);
        assert!(created.status.success(), "{created:?}");
        assert!(stdout.contains("vessel_id:   vessel001"), "{stdout}");
    }
    let listed = run_cli(&registry, &["list"]);
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        String::from_utf8_lossy(&listed.stdout).starts_with("All consignments (4):"),
        "{listed:?}"
    );
    let warned = wait_until(DEADLINE, "the wrong server named in the log", || async {
        consignment
            .log()
            .contains("instance answers as another server")
    })
    .await;
    assert!(warned.is_ok(), "{}", consignment.log());
}

#[tokio::test]
async fn a_silent_instance_costs_a_listing_nothing_and_a_create_its_deadline() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (silent, _holding) = silent_server().await;
    let _vessel = start(&registry, Service::Vessel, &logs).await;

    // Only the silent instance: a create may not be sent twice, so it
    // waits out its deadline and says so.
    register_first(&registry, Service::Consignment, &silent).await;
    let sample = sample_file();
    let args = ["create", "--timeout", "2", sample.to_str().unwrap()];
    let stuck = run_cli(&registry, &args);
    let stderr = String::from_utf8_lossy(&stuck.stderr);
    assert_eq!(stuck.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: CreateConsignment failed: DEADLINE_EXCEEDED"),
        "{stderr}"
    );

    // With a real instance beside it, listings (safe to send again) always
    // succeed, whichever instance they try first. They run side by side:
    // each that tries the silent one first waits out half its deadline.
    let _consignment = start(&registry, Service::Consignment, &logs).await;
    std::thread::scope(|scope| {
        let lists: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| run_cli(&registry, &["list", "--timeout", "4"])))
            .collect();
        for list in lists {
            let listed = list.join().unwrap();
            assert!(listed.status.success(), "{listed:?}");
        }
    });
}
