//! Fault tests: instances and etcd fail under steady load, and no
//! CreateConsignment request fails because of it; registrations come back
//! promptly after etcd or an operator took them away. Every service, etcd
//! member and instance here is a real process. Tests that kill or restart
//! etcd have their own; the rest share this test binary's, each under a
//! key prefix of its own.
//!
//! This is where the suite's timing claims live (a key expires within its
//! TTL and a second, a registration is back within two seconds, the CLI
//! fails well within its deadline). Each test prints what it measured on a
//! `fault:` line. `make faults` runs them one at a time and holds them to
//! their claims (`SHIPPY_FAULT_TIMING=strict`); `make test` runs the same
//! faults and checks the same outcomes, but allows each wait the suite's
//! generous deadline, since a busy machine must not fail a behaviour test.

// Test code: a failed unwrap is a failed test, and the report goes to stdout.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shippy_proto::consignment::SERVICE_NAME as CONSIGNMENTS;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_proto::vessel::SERVICE_NAME as VESSELS;
use shippy_test_support::fixtures::{sample_consignment, sample_file};
use shippy_test_support::{
    ChildGuard, DEADLINE, Etcd, EtcdCluster, KeyVersion, Service, ServiceProcess, TestRegistry,
    cli, spawn_service, wait_for, wait_until,
};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tonic::Request;

const LEASE_TTL_SECS: u64 = 3;
/// How soon a registration must be back once etcd answers again, or after
/// an operator removed it.
const RECOVERY: Duration = Duration::from_secs(2);

/// Whether this run holds the timing claims, as `make faults` asks.
fn strict() -> bool {
    std::env::var_os("SHIPPY_FAULT_TIMING").is_some_and(|value| value == "strict")
}

/// How long to wait for something claimed to take at most `claim`: the
/// claim itself under `make faults`, the suite's deadline otherwise.
fn within(claim: Duration) -> Duration {
    if strict() { claim } else { DEADLINE.max(claim) }
}

/// Holds `measured` to `claim` under `make faults`.
fn holds(what: &str, measured: Duration, claim: Duration) {
    if strict() {
        assert!(
            measured <= claim,
            "{what}: took {measured:?}, claimed {claim:?}"
        );
    }
}

/// Starts a service binary with a short lease and waits until it has registered.
async fn start(
    registry: &TestRegistry,
    service: Service,
    logs: &Path,
    name: &str,
) -> ServiceProcess {
    let ttl = LEASE_TTL_SECS.to_string();
    ServiceProcess::start(registry, service, logs, name, &[("SHIPPY_LEASE_TTL", &ttl)])
        .await
        .unwrap()
}

/// Whether etcd answered and `key` is among the instances of `service`;
/// `None` when etcd did not answer (which proves nothing either way).
async fn key_present(registry: &TestRegistry, service: &str, key: &str) -> Option<bool> {
    let found = registry.instances(service).await.ok()?;
    Some(found.iter().any(|instance| instance.key == key))
}

/// Waits up to `within` until `count` instances of `service` are registered.
async fn wait_for_count(registry: &TestRegistry, service: &str, count: usize, within: Duration) {
    wait_until(
        within,
        &format!("{count} instance(s) of {service}"),
        || async {
            registry
                .instances(service)
                .await
                .is_ok_and(|found| found.len() == count)
        },
    )
    .await
    .unwrap();
}

/// Waits until a process's log contains `text`.
async fn wait_for_log(process: &ChildGuard, text: &str) {
    wait_until(DEADLINE, &format!("{text:?} in the log"), || async {
        process.log().contains(text)
    })
    .await
    .unwrap();
}

/// Which incarnation of each of `keys` is stored, retrying reads that fail
/// (etcd electing a leader), which prove nothing either way.
async fn versions(registry: &TestRegistry, keys: &[&str]) -> Vec<KeyVersion> {
    let mut found = Vec::new();
    for key in keys {
        let version = wait_for(DEADLINE, &format!("{key} to be read"), || async {
            registry.key_version(key).await.ok().flatten()
        })
        .await
        .unwrap();
        found.push(version);
    }
    found
}

/// Asserts that every one of `keys` stays stored, the same incarnation on
/// the same lease, until a lease of `ttl_secs` granted now has expired.
/// Longer than the registrations' own TTL, so only renewals can keep them.
async fn registrations_hold(registry: &TestRegistry, keys: &[&str], ttl_secs: u64) {
    let before = versions(registry, keys).await;
    registry
        .outlive(i64::try_from(ttl_secs).unwrap())
        .await
        .unwrap();
    assert_eq!(
        versions(registry, keys).await,
        before,
        "a registration was lost or made again"
    );
}

/// Steady CreateConsignment traffic from a few concurrent callers.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    async fn start(address: &str, callers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for _ in 0..callers {
            let mut client = ShippingServiceClient::connect(format!("http://{address}"))
                .await
                .unwrap();
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut request = Request::new(sample_consignment());
                    request.set_timeout(Duration::from_secs(5));
                    match client.create_consignment(request).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => failures.lock().await.push(status.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Self {
            stop,
            ok,
            failures,
            workers,
        }
    }

    /// How many requests have succeeded so far.
    fn succeeded(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the callers and returns (succeeded, failures).
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        let failures = self.failures.lock().await.clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// Waits until the load has made `more` further successful requests.
async fn progress(load: &Load, more: u64) {
    let target = load.succeeded() + more;
    wait_until(DEADLINE, "load to make progress", || async {
        load.succeeded() >= target
    })
    .await
    .unwrap();
}

/// Prints one measured result.
fn report(line: String) {
    println!("fault: {line}");
}

/// Asserts that the load ran without a single failed request; on failure
/// shows the errors consignment-service logged.
fn no_failures(succeeded: u64, failures: &[String], consignments: &ChildGuard) {
    let log = consignments.log();
    let errors: Vec<_> = log.lines().filter(|line| line.contains("ERROR")).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {}\nconsignment-service errors:\n{}",
        failures.len(),
        succeeded + failures.len() as u64,
        failures[0],
        errors.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_vessel_instances_fails_no_request() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let doomed = start(&registry, Service::Vessel, logs.path(), "vessel-a").await;
    let _survivor = start(&registry, Service::Vessel, logs.path(), "vessel-b").await;
    let consignments = start(&registry, Service::Consignment, logs.path(), "consignment").await;
    let load = Load::start(consignments.address(), 4).await;
    progress(&load, 50).await;

    doomed.signal(Signal::SIGKILL).unwrap();
    let killed_at = Instant::now();
    let expiry = Duration::from_secs(LEASE_TTL_SECS + 1);
    wait_until(
        within(expiry),
        "the killed instance's key to expire",
        || async { key_present(&registry, VESSELS, doomed.key()).await == Some(false) },
    )
    .await
    .unwrap();
    let expired_after = killed_at.elapsed();
    progress(&load, 50).await;
    let (succeeded, failures) = load.finish().await;

    report(format!(
        "kill -9 one of two vessel-service instances: {} requests, {} failed; \
         its key expired {:.1} s after the kill (lease TTL {LEASE_TTL_SECS} s)",
        succeeded + failures.len() as u64,
        failures.len(),
        expired_after.as_secs_f64()
    ));
    no_failures(succeeded, &failures, &consignments);
    holds("the killed instance's key expiring", expired_after, expiry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_one_of_two_vessel_instances_fails_no_request() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut leaving = start(&registry, Service::Vessel, logs.path(), "vessel-a").await;
    let leaving_key = leaving.key().to_owned();
    let _staying = start(&registry, Service::Vessel, logs.path(), "vessel-b").await;
    let consignments = start(&registry, Service::Consignment, logs.path(), "consignment").await;
    let load = Load::start(consignments.address(), 4).await;
    progress(&load, 50).await;

    leaving.signal(Signal::SIGTERM).unwrap();
    let signalled = Instant::now();
    let mut key_gone_after = None;
    let status = loop {
        // Exit first, key second: once exited, the key must already be gone.
        let exited = leaving.try_exit().unwrap();
        let present = key_present(&registry, VESSELS, &leaving_key).await;
        if present == Some(false) && key_gone_after.is_none() {
            key_gone_after = Some(signalled.elapsed());
        }
        match exited {
            Some(_) if present != Some(false) => panic!("exited before its key was removed"),
            Some(status) => break status,
            None => assert!(
                signalled.elapsed() < DEADLINE,
                "still running after SIGTERM"
            ),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let exited_after = signalled.elapsed();
    progress(&load, 50).await;
    let (succeeded, failures) = load.finish().await;

    report(format!(
        "SIGTERM one of two vessel-service instances: {} requests, {} failed; \
         key removed {} ms after the signal, process exited ({status}) {} ms after it",
        succeeded + failures.len() as u64,
        failures.len(),
        key_gone_after.unwrap_or(exited_after).as_millis(),
        exited_after.as_millis()
    ));
    assert!(status.success(), "{status}");
    no_failures(succeeded, &failures, &consignments);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_crash_and_restart_fails_no_request_and_loses_no_registration() {
    // A private etcd: this test kills it.
    let mut etcd = Etcd::start().await.unwrap();
    let registry = etcd.registry();
    let logs = tempfile::tempdir().unwrap();
    let vessels = start(&registry, Service::Vessel, logs.path(), "vessel").await;
    let consignments = start(&registry, Service::Consignment, logs.path(), "consignment").await;
    let load = Load::start(consignments.address(), 4).await;
    progress(&load, 50).await;

    etcd.kill();
    let killed_at = Instant::now();
    // Both services notice the outage; requests keep succeeding meanwhile.
    wait_for_log(&vessels, "etcd unreachable").await;
    wait_for_log(&consignments, "etcd unreachable").await;
    let before_outage = load.succeeded();
    progress(&load, 100).await;
    let during_outage = load.succeeded() - before_outage;
    etcd.restart().await.unwrap();
    let answering = Instant::now();
    let outage = answering - killed_at;
    wait_for_count(&registry, VESSELS, 1, within(RECOVERY)).await;
    wait_for_count(&registry, CONSIGNMENTS, 1, within(RECOVERY)).await;
    // The registrations' own keep-alives are running again.
    wait_for_log(&vessels, "etcd reachable again key=").await;
    wait_for_log(&consignments, "etcd reachable again key=").await;
    let recovered_after = answering.elapsed();
    registrations_hold(
        &registry,
        &[vessels.key(), consignments.key()],
        LEASE_TTL_SECS + 1,
    )
    .await;
    progress(&load, 50).await;
    let (succeeded, failures) = load.finish().await;

    report(format!(
        "kill -9 etcd for {:.1} s, then restart it: {} requests ({during_outage} during \
         the outage), {} failed; both registrations renewing again {:.2} s after etcd answered",
        outage.as_secs_f64(),
        succeeded + failures.len() as u64,
        failures.len(),
        recovered_after.as_secs_f64()
    ));
    no_failures(succeeded, &failures, &consignments);
    holds(
        "renewing again after etcd answered",
        recovered_after,
        RECOVERY,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_member_of_a_three_member_etcd_cluster_changes_nothing() {
    // A private cluster: this test kills a member.
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    let registry = cluster.registry();
    let logs = tempfile::tempdir().unwrap();
    let vessels = start(&registry, Service::Vessel, logs.path(), "vessel").await;
    let consignments = start(&registry, Service::Consignment, logs.path(), "consignment").await;
    let load = Load::start(consignments.address(), 4).await;
    progress(&load, 50).await;

    cluster.member(0).unwrap().kill();
    // Longer than two leases: only renewals through the other members keep the keys.
    registrations_hold(
        &registry,
        &[vessels.key(), consignments.key()],
        2 * LEASE_TTL_SECS,
    )
    .await;
    progress(&load, 50).await;
    let (succeeded, failures) = load.finish().await;

    report(format!(
        "kill one member of a three-member etcd cluster: {} requests, {} failed; \
         both registrations held through a {} s lease (two of theirs) granted afterwards",
        succeeded + failures.len() as u64,
        failures.len(),
        2 * LEASE_TTL_SECS
    ));
    no_failures(succeeded, &failures, &consignments);
}

#[tokio::test]
async fn a_service_started_before_etcd_registers_once_etcd_answers() {
    // A private etcd: this one starts only after the service does.
    let mut etcd = Etcd::not_started().unwrap();
    let registry = etcd.registry();
    let logs = tempfile::tempdir().unwrap();
    let vessels = spawn_service(&registry, Service::Vessel, logs.path(), "vessel", &[]).unwrap();
    wait_for_log(&vessels, "etcd unreachable; will keep retrying").await;

    etcd.restart().await.unwrap();
    let answering = Instant::now();

    wait_for_count(&registry, VESSELS, 1, within(RECOVERY)).await;
    let registered_after = answering.elapsed();
    wait_for_log(&vessels, "registered in etcd").await;
    report(format!(
        "vessel-service started before etcd: registered {:.2} s after etcd answered",
        registered_after.as_secs_f64()
    ));
}

#[tokio::test]
async fn with_no_vessel_instance_the_cli_fails_fast_and_says_why() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let _consignments = start(&registry, Service::Consignment, logs.path(), "consignment").await;

    let started = Instant::now();
    let output = cli(&registry).unwrap().arg(sample_file()).output().unwrap();
    let took = started.elapsed();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: CreateConsignment failed: UNAVAILABLE: \
         no instance of shippy.service.vessel is registered in etcd"
    );
    // The CLI's deadline is 10 s; failing fast means well under it.
    holds("the CLI failing", took, Duration::from_secs(2));
    report(format!(
        "no vessel-service instance registered: the CLI exited 1 after {} ms with UNAVAILABLE",
        took.as_millis()
    ));
}

/// Which incarnation of `key` is stored, if etcd answers and it is there.
async fn stored(registry: &TestRegistry, key: &str) -> Option<KeyVersion> {
    registry.key_version(key).await.ok().flatten()
}

#[tokio::test]
async fn a_revoked_lease_is_replaced_and_the_key_put_back_within_2s() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let vessels = start(&registry, Service::Vessel, logs.path(), "vessel").await;
    let key = vessels.key();
    let lease = versions(&registry, &[key]).await[0].lease;

    let mut operator = registry.client().await.unwrap();
    operator.lease_revoke(lease).await.unwrap();
    let revoked = Instant::now();
    wait_until(within(RECOVERY), "the key back on a new lease", || async {
        stored(&registry, key)
            .await
            .is_some_and(|now| now.lease != lease)
    })
    .await
    .unwrap();
    let replaced = revoked.elapsed();

    report(format!(
        "an operator revokes vessel-service's lease: its key is back on a new lease {} ms later",
        replaced.as_millis()
    ));
}

#[tokio::test]
async fn a_deleted_key_is_put_back_within_2s() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let vessels = start(&registry, Service::Vessel, logs.path(), "vessel").await;
    let key = vessels.key();
    let lease = versions(&registry, &[key]).await[0].lease;

    // Again and again: a key that keeps vanishing is put back after a
    // growing pause, which must stay within the bound.
    let mut operator = registry.client().await.unwrap();
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        operator.delete(key, None).await.unwrap();
        let deleted = Instant::now();
        wait_until(
            within(RECOVERY),
            "the deleted key back on its lease",
            || async {
                stored(&registry, key)
                    .await
                    .is_some_and(|now| now.lease == lease)
            },
        )
        .await
        .unwrap();
        slowest = slowest.max(deleted.elapsed());
    }

    report(format!(
        "an operator deletes vessel-service's key three times in a row: \
         put back on the same lease within {} ms each time",
        slowest.as_millis()
    ));
}
