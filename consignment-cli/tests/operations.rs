//! What operators see: the CLI's subcommands, the per-call log lines with a
//! request id that crosses the consignment → vessel hop, and `services`
//! against a real etcd with two vessel-service instances. etcd is the one
//! this test binary shares, under a key prefix per test, except where the
//! test stops it.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nix::sys::signal::Signal;
use serde_json::Value;
use shippy_proto::vessel::SERVICE_NAME as VESSEL_SERVICE;
mod common;

use common::run_cli;
use shippy_test_support::fixtures::sample_file;
use shippy_test_support::{DEADLINE, Etcd, Service, ServiceProcess, TestRegistry, wait_until};

/// Runs the CLI, expects success, and parses its `--json` output.
fn run_cli_json(registry: &TestRegistry, args: &[&str]) -> Value {
    let output = run_cli(registry, args);
    assert!(output.status.success(), "{args:?}: {output:?}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("{args:?} printed no JSON ({err}): {output:?}"))
}

/// The lines of `log` that record a handled call under `request_id`.
fn text_call_lines(log: &str, request_id: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains(&format!("call{{request_id={request_id}}}")))
        .filter(|line| line.contains("call handled"))
        .map(str::to_owned)
        .collect()
}

/// The JSON log records of handled calls under `request_id`; panics on a
/// line that is not JSON.
fn json_call_records(log: &str, request_id: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|err| panic!("not a JSON log line ({err}): {line}"))
        })
        .filter(|record| record["message"] == "call handled")
        .filter(|record| {
            record["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|span| span["request_id"] == request_id))
        })
        .collect()
}

#[tokio::test]
async fn create_and_list_carry_a_request_id_into_both_services_logs() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let vessel = ServiceProcess::start(
        &registry,
        Service::Vessel,
        logs.path(),
        "vessel",
        &[("SHIPPY_LOG_FORMAT", "json")],
    )
    .await
    .unwrap();
    let consignment = ServiceProcess::start(
        &registry,
        Service::Consignment,
        logs.path(),
        "consignment",
        &[],
    )
    .await
    .unwrap();
    let sample = sample_file();

    let created = run_cli_json(&registry, &["create", "--json", sample.to_str().unwrap()]);
    let request_id = created["request_id"].as_str().unwrap().to_owned();
    let id = created["consignment"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["consignment"]["vessel_id"], "vessel001",
        "{created}"
    );
    assert_eq!(
        created["consignment"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert!(created.get("consignments").is_none(), "{created}");

    let listed = run_cli_json(&registry, &["list", "--json"]);
    let consignments = listed["consignments"].as_array().unwrap();
    assert_eq!(consignments.len(), 1, "{listed}");
    assert_eq!(consignments[0]["id"], id.as_str());

    let text = run_cli(&registry, &["create", sample.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with("Created consignment "), "{text}");
    assert!(text.contains("\n  request_id:  "), "{text}");
    assert!(!text.contains("All consignments"), "{text}");

    // consignment-service (text logs): one line for the call, under its id.
    wait_until(
        DEADLINE,
        "CreateConsignment logged in consignment-service",
        || async { !text_call_lines(&consignment.log(), &request_id).is_empty() },
    )
    .await
    .unwrap();
    let lines = text_call_lines(&consignment.log(), &request_id);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("method=shippy.consignment.v1.ShippingService/CreateConsignment")
            && lines[0].contains("status=OK")
            && lines[0].contains("latency_ms="),
        "{}",
        lines[0]
    );

    // vessel-service (JSON logs): the FindAvailable it was asked, under the same id.
    wait_until(
        DEADLINE,
        "FindAvailable logged in vessel-service",
        || async { !json_call_records(&vessel.log(), &request_id).is_empty() },
    )
    .await
    .unwrap();
    let records = json_call_records(&vessel.log(), &request_id);
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!(
        record["method"],
        "shippy.vessel.v1.VesselService/FindAvailable"
    );
    assert_eq!(record["status"], "OK");
    assert!(
        record["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{record}"
    );
    assert_eq!(record["level"], "INFO");
}

#[tokio::test]
async fn a_caller_chosen_request_id_is_kept_and_an_unusable_one_replaced() {
    use shippy_proto::vessel::v1 as pb;

    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let vessel = ServiceProcess::start(&registry, Service::Vessel, logs.path(), "vessel", &[])
        .await
        .unwrap();
    let mut client = vessel.vessel_client().await.unwrap();
    let find = |id: &str| {
        let mut request = tonic::Request::new(pb::Specification {
            capacity: 1,
            max_weight: 1,
        });
        request
            .metadata_mut()
            .insert("x-request-id", id.parse().unwrap());
        request
    };

    let kept = client.find_available(find("trace-42")).await.unwrap();
    assert_eq!(kept.metadata().get("x-request-id").unwrap(), "trace-42");

    let too_long = "x".repeat(200);
    let replaced = client.find_available(find(&too_long)).await.unwrap();
    let new_id = replaced
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_ne!(new_id, too_long);
    assert_eq!(new_id.len(), 32, "{new_id}");

    wait_until(DEADLINE, "both calls logged", || async {
        let log = vessel.log();
        !text_call_lines(&log, "trace-42").is_empty() && !text_call_lines(&log, new_id).is_empty()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn services_lists_every_instance_with_lease_and_live_health() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let start = |service: Service, name: &'static str| {
        ServiceProcess::start(&registry, service, logs.path(), name, &[])
    };
    let _first = start(Service::Vessel, "vessel-1").await.unwrap();
    let second = start(Service::Vessel, "vessel-2").await.unwrap();
    let _consignment = start(Service::Consignment, "consignment").await.unwrap();

    // Registered comes just before SERVING: wait for health to follow.
    wait_until(DEADLINE, "every instance SERVING", || async {
        let listed = run_cli_json(&registry, &["services", "--json"]);
        listed["services"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|service| service["instances"].as_array().unwrap())
            .filter(|instance| instance["health"] == "SERVING")
            .count()
            == 3
    })
    .await
    .unwrap();
    let listed = run_cli_json(&registry, &["services", "--json"]);
    let services = listed["services"].as_array().unwrap();
    let names: Vec<_> = services
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["shippy.service.consignment", "shippy.service.vessel"]
    );
    let vessels = services[1]["instances"].as_array().unwrap();
    assert_eq!(vessels.len(), 2, "{listed}");
    assert_ne!(vessels[0]["address"], vessels[1]["address"], "{listed}");
    for instance in vessels {
        assert_eq!(instance["health"], "SERVING", "{instance}");
        assert_eq!(instance["metadata"]["protocol"], "grpc", "{instance}");
        assert_eq!(instance["lease_granted_secs"], 10, "{instance}");
        let left = instance["lease_ttl_secs"].as_u64().unwrap();
        assert!((1..=10).contains(&left), "{instance}");
        let key = instance["key"].as_str().unwrap();
        let id = instance["id"].as_str().unwrap();
        assert_eq!(key, registry.keys().instance_key(VESSEL_SERVICE, id));
    }

    let text = run_cli(&registry, &["services"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("shippy.service.vessel (2 instances)\n"),
        "{text}"
    );
    assert!(
        text.contains("shippy.service.consignment (1 instance)\n"),
        "{text}"
    );
    assert_eq!(text.matches(" SERVING ").count(), 3, "{text}");
    assert!(text.contains("s of 10s"), "{text}");

    // Killed without deregistering: the key stays until its lease runs out,
    // and live health shows the instance is gone.
    let second_pid = second.pid();
    second.signal(Signal::SIGKILL).unwrap();
    let unreachable = wait_until(DEADLINE, "the killed instance UNREACHABLE", || async {
        let listed = run_cli_json(&registry, &["services", "--json"]);
        listed["services"][1]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|instance| instance["health"] == "UNREACHABLE")
    })
    .await;
    unreachable.unwrap_or_else(|err| panic!("pid {second_pid}: {err:#}"));
    let listed = run_cli_json(&registry, &["services", "--json"]);
    let gone = listed["services"][1]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|instance| instance["health"] == "UNREACHABLE")
        .unwrap()
        .clone();
    assert!(
        gone["health_error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{gone}"
    );
    drop(second);
}

#[tokio::test]
async fn services_says_so_when_nothing_is_registered_or_etcd_is_down() {
    // A private etcd: this test stops it.
    let mut etcd = Etcd::start().await.unwrap();
    let registry = etcd.registry();

    let empty = run_cli(&registry, &["services"]);
    assert!(empty.status.success(), "{empty:?}");
    assert_eq!(
        String::from_utf8_lossy(&empty.stdout),
        "No services are registered.\n"
    );

    etcd.kill();
    let down = run_cli(&registry, &["services"]);
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert_eq!(down.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot read the registry from etcd at "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
