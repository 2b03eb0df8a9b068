//! vessel-service over gRPC, registered in a real etcd.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use clap::Parser;
use shippy_proto::vessel::v1 as pb;
use shippy_proto::vessel::v1::vessel_service_client::VesselServiceClient;
use shippy_registry::RegistrationState;
use shippy_test_support::Etcd;
use tonic::Code;
use vessel_service::{Application, Config};

const DEADLINE: Duration = Duration::from_secs(10);

fn spec(capacity: i32, max_weight: i32) -> pb::Specification {
    pb::Specification {
        capacity,
        max_weight,
    }
}

#[tokio::test]
async fn vessel_service_registers_answers_and_deregisters_on_stop() {
    let etcd = Etcd::start().await.unwrap();
    let config = Config::try_parse_from([
        "vessel-service",
        "--listen=127.0.0.1:0",
        &format!("--etcd-endpoints={}", etcd.endpoint()),
        "--registry-prefix=/test/services",
    ])
    .unwrap();
    let app = Application::build(config).await.unwrap();
    let address = app.server().local_addr().unwrap();
    let key = app.server().key().to_owned();
    let mut state = app.server().registration_state();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(
        DEADLINE,
        state.wait_for(|s| *s == RegistrationState::Registered),
    )
    .await
    .unwrap()
    .unwrap();

    // Registered under the documented key, with a dialable address.
    assert!(
        key.starts_with("/test/services/shippy.service.vessel/"),
        "{key}"
    );
    let stored = etcd.get_prefix(&key).await.unwrap();
    let record: serde_json::Value = serde_json::from_str(&stored[0].1).unwrap();
    assert_eq!(record["name"], "shippy.service.vessel");
    assert_eq!(record["address"], address.to_string());

    let mut client = VesselServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap();

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

    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert!(
        etcd.get_prefix(&key).await.unwrap().is_empty(),
        "key left behind after stop"
    );
    assert_eq!(*state.borrow(), RegistrationState::Deregistered);
}

#[tokio::test]
async fn a_bad_fleet_file_stops_start_up_with_a_clear_error() {
    let etcd = Etcd::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet.json");
    std::fs::write(
        &fleet,
        r#"[{"id": "v1", "name": "V", "capacity": -3, "max_weight": 1}]"#,
    )
    .unwrap();
    let config = Config::try_parse_from([
        "vessel-service",
        "--listen=127.0.0.1:0",
        &format!("--etcd-endpoints={}", etcd.endpoint()),
        &format!("--fleet-file={}", fleet.display()),
    ])
    .unwrap();

    let err = Application::build(config)
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

    let mut etcd = Etcd::not_started().unwrap();
    let config = Config::try_parse_from([
        "vessel-service",
        "--listen=127.0.0.1:0",
        &format!("--etcd-endpoints={}", etcd.endpoint()),
    ])
    .unwrap();
    let app = Application::build(config).await.unwrap();
    let address = app.server().local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
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

    stop.send(()).unwrap();
    assert_eq!(
        next_status(&mut watch).await,
        ServingStatus::NotServing as i32
    );
    // The drain ends open watch streams instead of waiting out the grace
    // period (10 s by default) for them.
    let ended = tokio::time::timeout(DEADLINE, watch.message()).await;
    assert!(matches!(ended, Ok(Ok(None))), "{ended:?}");
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("stopped without waiting for the watcher")
        .unwrap()
        .unwrap();
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
