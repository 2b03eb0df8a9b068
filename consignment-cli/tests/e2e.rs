//! The whole system as users run it: a real etcd (the one this test binary
//! shares, under a key prefix per test, unless etcd itself must start
//! late), the vessel-service and consignment-service binaries on free
//! ports, and this CLI on the sample consignment.json.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use nix::sys::signal::Signal;
mod common;

use common::run_cli;
use shippy_test_support::fixtures::sample_file;
use shippy_test_support::{
    DEADLINE, Etcd, Service, ServiceProcess, TestRegistry, free_port, spawn_service, wait_until,
    workspace_bin,
};

#[tokio::test]
async fn the_cli_submits_the_sample_and_gets_vessel001() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let _vessel = ServiceProcess::start(&registry, Service::Vessel, logs.path(), "vessel", &[])
        .await
        .unwrap();
    let _consignment = ServiceProcess::start(
        &registry,
        Service::Consignment,
        logs.path(),
        "consignment",
        &[],
    )
    .await
    .unwrap();

    let sample = sample_file();
    let first = run_cli(&registry, &[sample.to_str().unwrap()]);
    let second = run_cli(&registry, &[sample.to_str().unwrap()]);

    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{first:?}");
    assert!(stdout.starts_with("Created consignment "), "{stdout}");
    assert!(stdout.contains("\n  vessel_id:   vessel001\n"), "{stdout}");
    assert!(
        stdout.contains("customer cust005 from Sheffield"),
        "{stdout}"
    );
    assert!(stdout.contains("All consignments (1):"), "{stdout}");
    let id = stdout
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("Created consignment "))
        .unwrap();
    let row = stdout
        .lines()
        .find(|line| line.trim_start().starts_with(id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{stdout}"));
    assert!(row.contains("vessel001") && row.contains("55000"), "{row}");

    let again = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{second:?}");
    assert!(again.contains("All consignments (2):"), "{again}");
    assert!(
        again.contains(id),
        "the first consignment is still listed:\n{again}"
    );
}

#[tokio::test]
async fn on_sigterm_a_service_removes_its_key_then_exits_0() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    for service in [Service::Vessel, Service::Consignment] {
        let package = service.package();
        // The longest lease: a key gone before the process exits was
        // removed, not expired.
        let mut running = ServiceProcess::start(
            &registry,
            service,
            logs.path(),
            package,
            &[("SHIPPY_LEASE_TTL", "3600")],
        )
        .await
        .unwrap();

        running.signal(Signal::SIGTERM).unwrap();
        // Exit first, key second: once exited, the key must already be gone.
        let mut exit = None;
        wait_until(DEADLINE, &format!("{package} to exit"), || {
            let exited = running.try_exit().unwrap();
            exit = exited;
            let registry = &registry;
            async move {
                let Some(status) = exited else {
                    return false;
                };
                let left = registry.instances(service.registered_name()).await.unwrap();
                assert!(
                    left.is_empty(),
                    "{package} exited ({status}) with its key still in etcd"
                );
                true
            }
        })
        .await
        .unwrap_or_else(|err| panic!("{err:#}\n{}", running.log_tail()));
        let status = exit.unwrap();

        assert!(
            status.success(),
            "{package} exited with {status}:\n{}",
            running.log_tail()
        );
        let log = running.log();
        assert!(log.contains("received SIGTERM"), "{log}");
        assert!(log.contains("deregistered from etcd"), "{log}");
    }
}

#[tokio::test]
async fn the_cli_says_when_no_consignment_service_is_registered() {
    let registry = TestRegistry::shared().await.unwrap();
    let sample = sample_file();

    let output = run_cli(&registry, &[sample.to_str().unwrap()]);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no instance of shippy.service.consignment is registered"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn the_cli_refuses_a_missing_file_with_exit_2() {
    let registry = TestRegistry::shared().await.unwrap();

    let output = run_cli(&registry, &["/nonexistent/consignment.json"]);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot open /nonexistent/consignment.json"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_probe_mode_reports_health_for_healthchecks() {
    // A private etcd, started only once the service is up.
    let mut etcd = Etcd::not_started().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port().unwrap());
    let mut vessel = spawn_service(
        &etcd.registry(),
        Service::Vessel,
        logs.path(),
        "vessel",
        &[("SHIPPY_LISTEN_ADDR", &address)],
    )
    .unwrap();
    let binary = workspace_bin("vessel-service", "vessel-service").unwrap();
    let probe = || {
        let output = Command::new(&binary)
            .env_clear()
            .args(["--probe", &address])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };

    // Serving gRPC but not registered: etcd is not up yet.
    wait_until(DEADLINE, "NOT_SERVING while etcd is down", || async {
        probe() == (Some(1), format!("{address} is NOT_SERVING\n"))
    })
    .await
    .unwrap();

    etcd.restart().await.unwrap();
    wait_until(DEADLINE, "SERVING once registered", || async {
        probe() == (Some(0), format!("{address} is SERVING\n"))
    })
    .await
    .unwrap();

    vessel.signal(Signal::SIGTERM).unwrap();
    vessel.wait_exit(DEADLINE).await.unwrap();
    let (code, said) = probe();
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.starts_with(&format!("cannot connect to {address}")),
        "{said}"
    );
}
