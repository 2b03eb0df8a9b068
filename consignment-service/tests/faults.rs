//! Fault tests: instances and etcd fail under steady load, and no
//! CreateConsignment request fails because of it. Every service, etcd
//! member and instance here is a real process.
//!
//! Each test prints what it measured on a `fault:` line;
//! `make faults` runs them one at a time and shows those lines.

// Test code: a failed unwrap is a failed test, and the report goes to stdout.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shippy_proto::consignment::v1 as pb;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_test_support::{
    ChildGuard, Etcd, EtcdCluster, spawn_service, wait_until, workspace_bin,
};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tonic::Request;

const VESSELS: &str = "/shippy/services/shippy.service.vessel/";
const CONSIGNMENTS: &str = "/shippy/services/shippy.service.consignment/";
const LEASE_TTL_SECS: u64 = 3;

/// Starts a service binary on a free port with a short lease.
fn spawn(package: &str, endpoints: &str, logs: &Path, name: &str) -> ChildGuard {
    let ttl = LEASE_TTL_SECS.to_string();
    spawn_service(
        package,
        endpoints,
        logs,
        name,
        &[("SHIPPY_LEASE_TTL", &ttl)],
    )
    .unwrap()
}

/// Anything the registrations can be read from: one etcd or a cluster.
trait Registry {
    async fn keys_and_values(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>>;
}

impl Registry for Etcd {
    async fn keys_and_values(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        self.get_prefix(prefix).await
    }
}

impl Registry for EtcdCluster {
    async fn keys_and_values(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        self.get_prefix(prefix).await
    }
}

/// The registered addresses under `prefix`, by key, or `None` when etcd
/// did not answer (which proves nothing either way).
async fn registered(etcd: &impl Registry, prefix: &str) -> Option<Vec<(String, String)>> {
    let found = etcd.keys_and_values(prefix).await.ok()?;
    Some(
        found
            .into_iter()
            .map(|(key, value)| {
                let record: serde_json::Value = serde_json::from_str(&value).unwrap();
                (key, record["address"].as_str().unwrap().to_owned())
            })
            .collect(),
    )
}

/// Whether etcd answered and `key` is among the registrations under `prefix`.
async fn key_present(etcd: &impl Registry, prefix: &str, key: &str) -> Option<bool> {
    let found = registered(etcd, prefix).await?;
    Some(found.iter().any(|(k, _)| k == key))
}

async fn wait_for_count(etcd: &impl Registry, prefix: &str, count: usize, within: Duration) {
    wait_until(
        within,
        &format!("{count} instance(s) under {prefix}"),
        || async {
            registered(etcd, prefix)
                .await
                .is_some_and(|found| found.len() == count)
        },
    )
    .await
    .unwrap();
}

/// Waits until a process's log contains `text`.
async fn wait_for_log(process: &ChildGuard, text: &str) {
    wait_until(
        Duration::from_secs(10),
        &format!("{text:?} in the log"),
        || async { process.log().contains(text) },
    )
    .await
    .unwrap();
}

/// Asserts that both registrations stay in etcd for `period`. A read that
/// fails (etcd electing a leader) proves nothing either way and is skipped.
async fn registrations_hold(etcd: &impl Registry, period: Duration) {
    let until = Instant::now() + period;
    let mut reads = 0;
    while Instant::now() < until {
        if let Ok(found) = etcd.keys_and_values("/shippy/services/").await {
            let keys: Vec<_> = found.into_iter().map(|(key, _)| key).collect();
            assert!(
                keys.iter().any(|k| k.starts_with(VESSELS)),
                "vessel key lost: {keys:?}"
            );
            assert!(
                keys.iter().any(|k| k.starts_with(CONSIGNMENTS)),
                "consignment key lost: {keys:?}"
            );
            reads += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reads > 0,
        "etcd never answered while checking registrations"
    );
}

fn sample() -> pb::Consignment {
    pb::Consignment {
        id: String::new(),
        description: "load".into(),
        weight: 55_000,
        containers: vec![pb::Container {
            id: String::new(),
            customer_id: "cust001".into(),
            origin: "Manchester, United Kingdom".into(),
            user_id: "user001".into(),
        }],
        vessel_id: String::new(),
    }
}

/// Steady CreateConsignment traffic from a few concurrent callers.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    async fn start(address: SocketAddr, callers: usize) -> Self {
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
                    let mut request = Request::new(sample());
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
    wait_until(Duration::from_secs(10), "load to make progress", || async {
        load.succeeded() >= target
    })
    .await
    .unwrap();
}

async fn consignment_address(etcd: &impl Registry) -> SocketAddr {
    let found = registered(etcd, CONSIGNMENTS).await.unwrap();
    found[0].1.parse().unwrap()
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
    let etcd = Etcd::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let endpoint = etcd.endpoint().to_owned();
    let doomed = spawn("vessel-service", &endpoint, logs.path(), "vessel-a");
    wait_for_count(&etcd, VESSELS, 1, Duration::from_secs(10)).await;
    let doomed_key = registered(&etcd, VESSELS).await.unwrap()[0].0.clone();
    let _survivor = spawn("vessel-service", &endpoint, logs.path(), "vessel-b");
    wait_for_count(&etcd, VESSELS, 2, Duration::from_secs(10)).await;
    let consignments = spawn("consignment-service", &endpoint, logs.path(), "consignment");
    wait_for_count(&etcd, CONSIGNMENTS, 1, Duration::from_secs(10)).await;
    let load = Load::start(consignment_address(&etcd).await, 4).await;
    progress(&load, 50).await;

    doomed.signal(Signal::SIGKILL).unwrap();
    let killed_at = Instant::now();
    wait_until(
        Duration::from_secs(LEASE_TTL_SECS + 1),
        "the killed instance's key to expire",
        || async { key_present(&etcd, VESSELS, &doomed_key).await == Some(false) },
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
    assert!(expired_after <= Duration::from_secs(LEASE_TTL_SECS + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_one_of_two_vessel_instances_fails_no_request() {
    let etcd = Etcd::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let endpoint = etcd.endpoint().to_owned();
    let mut leaving = spawn("vessel-service", &endpoint, logs.path(), "vessel-a");
    wait_for_count(&etcd, VESSELS, 1, Duration::from_secs(10)).await;
    let leaving_key = registered(&etcd, VESSELS).await.unwrap()[0].0.clone();
    let _staying = spawn("vessel-service", &endpoint, logs.path(), "vessel-b");
    wait_for_count(&etcd, VESSELS, 2, Duration::from_secs(10)).await;
    let consignments = spawn("consignment-service", &endpoint, logs.path(), "consignment");
    wait_for_count(&etcd, CONSIGNMENTS, 1, Duration::from_secs(10)).await;
    let load = Load::start(consignment_address(&etcd).await, 4).await;
    progress(&load, 50).await;

    leaving.signal(Signal::SIGTERM).unwrap();
    let signalled = Instant::now();
    let mut key_gone_after = None;
    let status = loop {
        // Exit first, key second: once exited, the key must already be gone.
        let exited = leaving.try_exit().unwrap();
        let present = key_present(&etcd, VESSELS, &leaving_key).await;
        if present == Some(false) && key_gone_after.is_none() {
            key_gone_after = Some(signalled.elapsed());
        }
        match exited {
            Some(_) if present != Some(false) => panic!("exited before its key was removed"),
            Some(status) => break status,
            None => assert!(
                signalled.elapsed() < Duration::from_secs(10),
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
    let mut etcd = Etcd::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let endpoint = etcd.endpoint().to_owned();
    let vessels = spawn("vessel-service", &endpoint, logs.path(), "vessel");
    wait_for_count(&etcd, VESSELS, 1, Duration::from_secs(10)).await;
    let consignments = spawn("consignment-service", &endpoint, logs.path(), "consignment");
    wait_for_count(&etcd, CONSIGNMENTS, 1, Duration::from_secs(10)).await;
    let load = Load::start(consignment_address(&etcd).await, 4).await;
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
    wait_for_count(&etcd, VESSELS, 1, Duration::from_secs(2)).await;
    wait_for_count(&etcd, CONSIGNMENTS, 1, Duration::from_secs(2)).await;
    // The registrations' own keep-alives are running again.
    wait_for_log(&vessels, "etcd reachable again key=").await;
    wait_for_log(&consignments, "etcd reachable again key=").await;
    let recovered_after = answering.elapsed();
    registrations_hold(&etcd, Duration::from_secs(LEASE_TTL_SECS + 1)).await;
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
    assert!(
        recovered_after < Duration::from_secs(2),
        "{recovered_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_member_of_a_three_member_etcd_cluster_changes_nothing() {
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let endpoints = cluster.endpoints();
    let _vessels = spawn("vessel-service", &endpoints, logs.path(), "vessel");
    wait_for_count(&cluster, VESSELS, 1, Duration::from_secs(10)).await;
    let consignments = spawn(
        "consignment-service",
        &endpoints,
        logs.path(),
        "consignment",
    );
    wait_for_count(&cluster, CONSIGNMENTS, 1, Duration::from_secs(10)).await;
    let load = Load::start(consignment_address(&cluster).await, 4).await;
    progress(&load, 50).await;

    cluster.member(0).unwrap().kill();
    // Longer than two leases: only renewals through the other members keep the keys.
    registrations_hold(&cluster, Duration::from_secs(2 * LEASE_TTL_SECS)).await;
    progress(&load, 50).await;
    let (succeeded, failures) = load.finish().await;

    report(format!(
        "kill one member of a three-member etcd cluster: {} requests, {} failed; \
         both registrations held for {} s (two leases) afterwards",
        succeeded + failures.len() as u64,
        failures.len(),
        2 * LEASE_TTL_SECS
    ));
    no_failures(succeeded, &failures, &consignments);
}

#[tokio::test]
async fn a_service_started_before_etcd_registers_once_etcd_answers() {
    let mut etcd = Etcd::not_started().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let vessels = spawn("vessel-service", etcd.endpoint(), logs.path(), "vessel");
    wait_for_log(&vessels, "etcd unreachable; will keep retrying").await;

    etcd.restart().await.unwrap();
    let answering = Instant::now();

    wait_for_count(&etcd, VESSELS, 1, Duration::from_secs(2)).await;
    let registered_after = answering.elapsed();
    wait_for_log(&vessels, "registered in etcd").await;
    report(format!(
        "vessel-service started before etcd: registered {:.2} s after etcd answered",
        registered_after.as_secs_f64()
    ));
}

#[tokio::test]
async fn with_no_vessel_instance_the_cli_fails_fast_and_says_why() {
    let etcd = Etcd::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let _consignments = spawn(
        "consignment-service",
        etcd.endpoint(),
        logs.path(),
        "consignment",
    );
    wait_for_count(&etcd, CONSIGNMENTS, 1, Duration::from_secs(10)).await;
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../consignment.json");
    let cli = workspace_bin("consignment-cli", "consignment-cli").unwrap();

    let started = Instant::now();
    let output = Command::new(cli)
        .env_clear()
        .env("SHIPPY_ETCD_ENDPOINTS", etcd.endpoint())
        .arg(sample)
        .output()
        .unwrap();
    let took = started.elapsed();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: CreateConsignment failed: UNAVAILABLE: \
         no instance of shippy.service.vessel is registered in etcd"
    );
    // The CLI's deadline is 10 s; failing fast means well under it.
    assert!(took < Duration::from_secs(2), "{took:?}");
    report(format!(
        "no vessel-service instance registered: the CLI exited 1 after {} ms with UNAVAILABLE",
        took.as_millis()
    ));
}
