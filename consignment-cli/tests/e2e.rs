//! The whole system as users run it: a real etcd, the vessel-service and
//! consignment-service binaries on free ports, and this CLI on the sample
//! consignment.json.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
mod common;

use common::{CONSIGNMENT, DEADLINE, VESSEL, run_cli, sample_file, wait_for_keys};
use shippy_test_support::{ChildGuard, Etcd, free_port, spawn_service, wait_until, workspace_bin};

/// Starts a service binary against `etcd` on a free port, logging into `logs`.
fn spawn(etcd: &Etcd, package: &str, logs: &Path) -> ChildGuard {
    spawn_service(package, etcd.endpoint(), logs, package, &[]).unwrap()
}

#[tokio::test]
async fn the_cli_submits_the_sample_and_gets_vessel001() {
    let etcd = Etcd::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let _vessel = spawn(&etcd, "vessel-service", logs.path());
    wait_for_keys(&etcd, VESSEL, 1).await;
    let _consignment = spawn(&etcd, "consignment-service", logs.path());
    wait_for_keys(&etcd, CONSIGNMENT, 1).await;

    let sample = sample_file();
    let first = run_cli(&etcd, &[sample.to_str().unwrap()]);
    let second = run_cli(&etcd, &[sample.to_str().unwrap()]);

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
    let etcd = Etcd::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    for (package, prefix) in [
        ("vessel-service", VESSEL),
        ("consignment-service", CONSIGNMENT),
    ] {
        let mut service = spawn(&etcd, package, logs.path());
        wait_for_keys(&etcd, prefix, 1).await;

        service.signal(Signal::SIGTERM).unwrap();
        // Exit first, key second: once exited, the key must already be gone.
        // The lease is 10 s, so a key gone within this loop was removed, not expired.
        let signalled = std::time::Instant::now();
        let status = loop {
            let exited = service.try_exit().unwrap();
            let keys = etcd.get_prefix(prefix).await.unwrap();
            if let Some(status) = exited {
                assert!(
                    keys.is_empty(),
                    "{package} exited with its key still in etcd"
                );
                break status;
            }
            assert!(
                signalled.elapsed() < Duration::from_secs(5),
                "{package} still running:\n{}",
                service.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };

        assert!(
            status.success(),
            "{package} exited with {status}:\n{}",
            service.log_tail()
        );
        let log = service.log();
        assert!(log.contains("received SIGTERM"), "{log}");
        assert!(log.contains("deregistered from etcd"), "{log}");
    }
}

#[tokio::test]
async fn the_cli_says_when_no_consignment_service_is_registered() {
    let etcd = Etcd::start().await.unwrap();
    let sample = sample_file();

    let output = run_cli(&etcd, &[sample.to_str().unwrap()]);

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
    let etcd = Etcd::start().await.unwrap();

    let output = run_cli(&etcd, &["/nonexistent/consignment.json"]);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot open /nonexistent/consignment.json"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_probe_mode_reports_health_for_healthchecks() {
    let mut etcd = Etcd::not_started().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port().unwrap());
    let mut vessel = spawn_service(
        "vessel-service",
        etcd.endpoint(),
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
