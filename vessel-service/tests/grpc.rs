//! vessel-service over gRPC, registered in a real etcd: the one this test
//! binary shares, under a key prefix per test, except where etcd itself
//! must start late.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::Parser;
use shippy_proto::vessel::SERVICE_NAME;
use shippy_proto::vessel::v1 as pb;
use shippy_registry::RegistrationState;
use shippy_test_support::{DEADLINE, Etcd, InProcessService, TestRegistry, registered};
use tonic::Code;
use vessel_service::{Application, Config};

fn spec(capacity: i32, max_weight: i32) -> pb::Specification {
    pb::Specification {
        capacity,
        max_weight,
    }
}

/// vessel-service's config: listening on a free port, registering in
/// `registry`, with `extra` flags.
fn config(registry: &TestRegistry, extra: &[&str]) -> Config {
    let args = ["vessel-service", "--listen=127.0.0.1:0"]
        .into_iter()
        .map(str::to_owned)
        .chain(registry.args())
        .chain(extra.iter().map(|arg| (*arg).to_owned()));
    Config::try_parse_from(args).unwrap()
}

/// Builds vessel-service with `extra` flags and runs it on a task; returns
/// at once, before it has registered.
async fn start(registry: &TestRegistry, extra: &[&str]) -> InProcessService {
    let app = Application::build(config(registry, extra)).await.unwrap();
    let server = app.server();
    let (address, key, state) = (
        server.local_addr().unwrap(),
        server.key().to_owned(),
        server.registration_state(),
    );
    InProcessService::spawn(address, &key, state, |stop| app.run_until_stopped(stop))
}

#[tokio::test]
async fn vessel_service_registers_answers_and_deregisters_on_stop() {
    let registry = TestRegistry::shared().await.unwrap();
    let app = start(&registry, &[]).await;
    let state = app.registration_state();
    registered(app.registration_state()).await.unwrap();

    // Registered under the documented key, with a dialable address.
    let key = app.key().to_owned();
    assert!(
        key.starts_with(&registry.keys().service_prefix(SERVICE_NAME)),
        "{key}"
    );
    let instances = registry.instances(SERVICE_NAME).await.unwrap();
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].key, key);
    assert_eq!(instances[0].record.name, SERVICE_NAME);
    assert_eq!(
        instances[0].record.address.to_string(),
        app.address().to_string()
    );

    let mut client = app.vessel_client().await.unwrap();

    let found = client.find_available(spec(3, 55_000)).await.unwrap();
    let vessel = found.into_inner().vessel.unwrap();
    assert_eq!(
        (vessel.id.as_str(), vessel.name.as_str()),
        ("vessel001", "Boaty McBoatface")
    );

    let err = client
        .find_available(spec(3, 900_000_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        err.message(),
        "no vessel can carry 3 containers weighing 900000000 kg"
    );

    let err = client.find_available(spec(-1, 10)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("capacity"), "{}", err.message());

    app.stop().await.unwrap();
    assert!(
        registry.key_version(&key).await.unwrap().is_none(),
        "key left behind after stop"
    );
    assert_eq!(*state.borrow(), RegistrationState::Deregistered);
}

#[tokio::test]
async fn a_bad_fleet_file_stops_start_up_with_a_clear_error() {
    let registry = TestRegistry::shared().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet.json");
    std::fs::write(
        &fleet,
        r#"[{"id": "v1", "name": "V", "capacity": -3, "max_weight": 1}]"#,
    )
    .unwrap();
    let fleet_flag = format!("--fleet-file={}", fleet.display());

    let err = Application::build(config(&registry, &[&fleet_flag]))
        .await
        .err()
        .expect("start-up fails");

    let message = format!("{err:#}");
    assert!(message.contains("fleet.json"), "{message}");
    assert!(message.contains("-3"), "{message}");
}

#[tokio::test]
async fn health_is_serving_only_while_registered_and_not_while_stopping() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    // A private etcd, started only once the service is up. The longest
    // grace period, so a stop that waited it out would never finish in time.
    let mut etcd = Etcd::not_started().unwrap();
    let mut app = start(&etcd.registry(), &["--shutdown-grace=3600"]).await;
    let mut health = HealthClient::new(app.channel().await.unwrap());
    let ask = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };

    // Serving gRPC, but not registered while etcd is down.
    for service in ["", "shippy.vessel.v1.VesselService"] {
        let status = health
            .check(ask(service))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::NotServing as i32, "{service:?}");
    }
    let mut watch = health.watch(ask("")).await.unwrap().into_inner();
    assert_eq!(
        next_status(&mut watch).await,
        ServingStatus::NotServing as i32
    );

    etcd.restart().await.unwrap();
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving as i32);

    app.request_stop();
    assert_eq!(
        next_status(&mut watch).await,
        ServingStatus::NotServing as i32
    );
    // The drain ends open watch streams instead of waiting out the grace
    // period for them.
    let ended = tokio::time::timeout(DEADLINE, watch.message()).await;
    assert!(matches!(ended, Ok(Ok(None))), "{ended:?}");
    app.stopped()
        .await
        .expect("stopped without waiting for the watcher");
}

/// The next status a health watch stream reports.
async fn next_status(watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> i32 {
    tokio::time::timeout(DEADLINE, watch.message())
        .await
        .expect("a health update in time")
        .unwrap()
        .expect("the watch stream stays open")
        .status
}
