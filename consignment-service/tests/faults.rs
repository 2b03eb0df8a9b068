//! Fault tests: instances and etcd fail under steady load, and no
//! CreateConsignment request fails because of it. Every service, etcd
//! member and instance here is a real process.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shippy_proto::consignment::v1 as pb;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_test_support::{ChildGuard, Etcd, wait_until, workspace_bin};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tonic::Request;

const VESSELS: &str = "/shippy/services/shippy.service.vessel/";
const CONSIGNMENTS: &str = "/shippy/services/shippy.service.consignment/";
const LEASE_TTL_SECS: u64 = 3;

/// Starts a service binary on a free port with a short lease.
fn spawn(package: &str, endpoints: &str, logs: &Path, name: &str) -> ChildGuard {
    let mut command = Command::new(workspace_bin(package, package).unwrap());
    command
        .env_clear()
        .env("SHIPPY_ETCD_ENDPOINTS", endpoints)
        .env("SHIPPY_LISTEN_ADDR", "127.0.0.1:0")
        .env("SHIPPY_LEASE_TTL", LEASE_TTL_SECS.to_string())
        .env("RUST_LOG", "info");
    ChildGuard::spawn_logged(&mut command, &logs.join(format!("{name}.log"))).unwrap()
}

/// The registered addresses under `prefix`, by key.
async fn registered(etcd: &Etcd, prefix: &str) -> Vec<(String, String)> {
    etcd.get_prefix(prefix)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| {
            let record: serde_json::Value = serde_json::from_str(&value).unwrap();
            (key, record["address"].as_str().unwrap().to_owned())
        })
        .collect()
}

async fn wait_for_count(etcd: &Etcd, prefix: &str, count: usize, within: Duration) {
    wait_until(
        within,
        &format!("{count} instance(s) under {prefix}"),
        || async { registered(etcd, prefix).await.len() == count },
    )
    .await
    .unwrap();
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

async fn consignment_address(etcd: &Etcd) -> SocketAddr {
    let found = registered(etcd, CONSIGNMENTS).await;
    found[0].1.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_vessel_instances_fails_no_request() {
    let etcd = Etcd::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let endpoint = etcd.endpoint().to_owned();
    let doomed = spawn("vessel-service", &endpoint, logs.path(), "vessel-a");
    wait_for_count(&etcd, VESSELS, 1, Duration::from_secs(10)).await;
    let doomed_key = registered(&etcd, VESSELS).await[0].0.clone();
    let _survivor = spawn("vessel-service", &endpoint, logs.path(), "vessel-b");
    wait_for_count(&etcd, VESSELS, 2, Duration::from_secs(10)).await;
    let _consignments = spawn("consignment-service", &endpoint, logs.path(), "consignment");
    wait_for_count(&etcd, CONSIGNMENTS, 1, Duration::from_secs(10)).await;
    let load = Load::start(consignment_address(&etcd).await, 4).await;
    progress(&load, 50).await;

    doomed.signal(Signal::SIGKILL).unwrap();
    let killed_at = Instant::now();
    wait_until(
        Duration::from_secs(LEASE_TTL_SECS + 1),
        "the killed instance's key to expire",
        || async {
            !registered(&etcd, VESSELS)
                .await
                .iter()
                .any(|(key, _)| *key == doomed_key)
        },
    )
    .await
    .unwrap();
    let expired_after = killed_at.elapsed();
    progress(&load, 50).await;
    let (succeeded, failures) = load.finish().await;

    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {}",
        failures.len(),
        succeeded + failures.len() as u64,
        failures[0]
    );
    assert!(expired_after <= Duration::from_secs(LEASE_TTL_SECS + 1));
}
