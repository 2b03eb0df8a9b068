//! Hostile clients against the real consignment-service binary, registered
//! in a real etcd: a stream flood on one connection, calls without a
//! deadline, stalled connections, a connection flood at the open-files
//! limit, non-gRPC requests, callers that vanish mid-call, and the stop
//! signals. Each attack is made over raw HTTP/2
//! ([`shippy_test_support::attack`]) and each test asserts what the service
//! must hold to: memory, time, log lines, registration, exit status.
//!
//! The binaries are the ones `cargo test --workspace` builds; run alone,
//! build them first with `cargo test --workspace --no-run`.

// Test code: a failed unwrap is a failed test, and what a test measured
// goes to stdout (`--nocapture` shows it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::Signal;
use shippy_client::health::{self, WireStatus};
use shippy_registry::AdvertiseAddr;
use shippy_test_support::attack::{
    self, H2Client, RawConnection, frames, kind, reason, rss_bytes, stream_flood,
};
use shippy_test_support::{
    ChildGuard, DEADLINE, Service as Binary, TestRegistry, spawn_service, wait_until, workspace_bin,
};
use tempfile::TempDir;

const CREATE: &str = "/shippy.consignment.v1.ShippingService/CreateConsignment";
const MIB: u64 = 1024 * 1024;

/// A running consignment-service and where it is.
struct Service {
    process: ChildGuard,
    address: SocketAddr,
    key: String,
    /// Holds the log and the store; removed on drop.
    _dir: TempDir,
}

impl Service {
    /// Starts consignment-service with `env` on top of the test defaults.
    async fn start(registry: &TestRegistry, env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new().unwrap();
        let process = spawn_service(registry, Binary::Consignment, dir.path(), "svc", env).unwrap();
        Self::registered(registry, process, dir).await
    }

    /// Waits until `process` has registered, and learns its address.
    async fn registered(registry: &TestRegistry, process: ChildGuard, dir: TempDir) -> Self {
        let waited = wait_until(DEADLINE, "registration", || async {
            registration(registry).await.is_some()
        })
        .await;
        if let Err(err) = waited {
            panic!("{err}\n{}", process.log_tail());
        }
        let (key, address) = registration(registry).await.unwrap();
        Self {
            process,
            address,
            key,
            _dir: dir,
        }
    }

    fn advertised(&self) -> AdvertiseAddr {
        AdvertiseAddr::new(&self.address.ip().to_string(), self.address.port()).unwrap()
    }

    /// Whether a real gRPC client gets SERVING within `within`.
    async fn serves(&self, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let status = health::check(&self.advertised(), within).await?;
        anyhow::ensure!(status == WireStatus::Serving, "health is {status:?}");
        Ok(started.elapsed())
    }

    fn log(&self) -> String {
        self.process.log()
    }

    async fn wait_for_log(&self, text: &str, within: Duration) {
        let waited = wait_until(within, &format!("{text:?} in the log"), || async {
            self.log().contains(text)
        })
        .await;
        if let Err(err) = waited {
            panic!("{err}\n{}", self.process.log_tail());
        }
    }

    fn rss(&self) -> u64 {
        rss_bytes(self.process.pid()).unwrap()
    }
}

/// The one registered consignment-service instance: its key and address.
async fn registration(registry: &TestRegistry) -> Option<(String, SocketAddr)> {
    let instance = registry
        .instances(Binary::Consignment.registered_name())
        .await
        .ok()?
        .into_iter()
        .next()?;
    let address = instance.record.address.to_string().parse().ok()?;
    Some((instance.key, address))
}

/// Whether `key` is still registered (`None` when etcd did not answer).
async fn is_registered(registry: &TestRegistry, key: &str) -> Option<bool> {
    Some(registry.key_version(key).await.ok()?.is_some())
}

/// Lines of `log` from line `from` on.
fn lines_since(log: &str, from: usize) -> Vec<&str> {
    log.lines().skip(from).collect()
}

/// Keeps the highest RSS of a process seen every few milliseconds, until dropped.
struct RssSampler {
    max: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let max = Arc::new(AtomicU64::new(0));
        let running = Arc::new(AtomicBool::new(true));
        let (max_seen, still) = (max.clone(), running.clone());
        std::thread::spawn(move || {
            while still.load(Ordering::Relaxed) {
                if let Ok(rss) = rss_bytes(pid) {
                    max_seen.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Self { max, running }
    }

    fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
    }
}

/// Target: 100,000 request streams, never finished, on one connection
/// cannot take the service's memory: excess streams are refused, RSS stays
/// under 64 MB during the attack and is back under 32 MB once the client
/// has gone, and the log gets a bounded number of lines, with a summary.
///
/// Beside the flood, the client holds another connection with 100 calls
/// in progress (the limit), opened and read by the server first, so that
/// memory is measured with them and 100 calls end when the client goes.
/// (The flood's own first streams may or may not become calls before its
/// connection is closed: that is a race inside the server.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_on_one_connection_is_refused_and_costs_bounded_memory() {
    const STREAMS: u32 = 100_000;
    let registry = TestRegistry::shared().await.unwrap();
    let service = Service::start(&registry, &[]).await;
    let before = service.rss();
    let log_lines_before = service.log().lines().count();

    let sampler = RssSampler::start(service.process.pid());
    let started = Instant::now();
    let held = stream_flood(service.address, CREATE, 100, 100)
        .await
        .unwrap();
    let flood = stream_flood(service.address, CREATE, 0, STREAMS)
        .await
        .unwrap();
    // The flood is over when the server has closed the connection or
    // answered every stream beyond its limit.
    wait_until(
        Duration::from_secs(20),
        "the server's answer to the flood",
        || async {
            let tally = flood.tally();
            tally.closed || tally.refused + 100 >= tally.streams_sent
        },
    )
    .await
    .unwrap();
    let tally = flood.tally();
    let during = sampler.max();
    let attack_secs = started.elapsed().as_secs_f64();
    assert!(
        !held.tally().closed,
        "the held calls' connection was closed"
    );
    flood.leave().await;
    held.leave().await;
    drop(sampler);

    let fell_back = wait_until(Duration::from_secs(10), "RSS under 32 MB", || async {
        service.rss() < 32 * MIB
    })
    .await;
    let after = service.rss();
    println!(
        "hostile: {} HEADERS sent in {attack_secs:.2}s of {STREAMS}; SETTINGS_MAX_CONCURRENT_STREAMS \
         {:?}; {} refused, {} other resets, GOAWAY {:?}; RSS {} MB before, {} MB at most during, \
         {} MB after",
        tally.streams_sent,
        tally.max_concurrent_streams,
        tally.refused,
        tally.other_resets,
        tally.goaway,
        before / MIB,
        during / MIB,
        after / MIB,
    );
    assert_eq!(tally.max_concurrent_streams, Some(100), "{tally:?}");
    assert!(tally.refused > 0, "no stream was refused: {tally:?}");
    assert!(
        tally.goaway == Some(reason::ENHANCE_YOUR_CALM) || tally.refused + 100 >= STREAMS,
        "streams beyond the limit were neither all refused nor ended by GOAWAY: {tally:?}"
    );
    assert!(
        during > 0 && during < 64 * MIB,
        "RSS reached {during} bytes"
    );
    fell_back.unwrap();

    // The 100 held calls, and any the flood opened, are abandoned: a few
    // lines and a summary, not a line each, and nothing at WARN.
    service
        .wait_for_log(
            "more calls whose request never arrived whole",
            Duration::from_secs(10),
        )
        .await;
    let log = service.log();
    let new_lines = lines_since(&log, log_lines_before);
    println!(
        "hostile: the flood's log: {} lines, ending {:?}",
        new_lines.len(),
        new_lines.last()
    );
    assert!(
        new_lines.len() <= 30,
        "{} lines:\n{}",
        new_lines.len(),
        new_lines.join("\n")
    );
    assert!(
        !new_lines
            .iter()
            .any(|line| line.contains(" WARN ") || line.contains("ERROR")),
        "{}",
        new_lines.join("\n")
    );
    service.serves(Duration::from_secs(2)).await.unwrap();
}

/// Target: a call whose caller sent no deadline, and whose message never
/// completes, ends with DEADLINE_EXCEEDED at the server's default deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_deadline_ends_at_the_servers_default() {
    let registry = TestRegistry::shared().await.unwrap();
    let service = Service::start(&registry, &[("SHIPPY_DEFAULT_DEADLINE", "1")]).await;
    let mut client = H2Client::connect(service.address).await.unwrap();
    // The length prefix promises 100 bytes; 10 are sent.
    let partial = [&frames::grpc_prefix(100)[..], &[0u8; 10]].concat();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(CREATE, "application/grpc", &[], &partial, false),
    )
    .await
    .expect("the call never ended")
    .unwrap();
    println!(
        "hostile: a call without a deadline ended after {:?}",
        answer.after
    );
    assert_eq!(answer.grpc_status(), Some("4"), "{answer:?}");
    assert!(answer.after >= Duration::from_secs(1), "{answer:?}");
    assert!(answer.after < Duration::from_secs(5), "{answer:?}");
    service
        .wait_for_log("status=DEADLINE_EXCEEDED", Duration::from_secs(5))
        .await;
}

/// Target: no stalled connection survives (here with 1 s timeouts; the
/// defaults are checked in shippy-server's config tests): silent TCP, a
/// partial preface, a preface and SETTINGS then silence, and a message
/// whose length prefix promises more than is sent. Keepalive pings find
/// the dead peers, and a live client that answers them keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stalled_connection_survives() {
    let registry = TestRegistry::shared().await.unwrap();
    let service = Service::start(
        &registry,
        &[
            ("SHIPPY_HANDSHAKE_TIMEOUT", "1"),
            ("SHIPPY_KEEPALIVE_INTERVAL", "1"),
            ("SHIPPY_KEEPALIVE_TIMEOUT", "1"),
            // Long, so that only keepalive can end the stalled message.
            ("SHIPPY_DEFAULT_DEADLINE", "600"),
        ],
    )
    .await;
    let mut live = H2Client::connect(service.address).await.unwrap();

    let silent = RawConnection::connect(service.address).await.unwrap();
    let mut partial_preface = RawConnection::connect(service.address).await.unwrap();
    partial_preface.send(&frames::PREFACE[..10]).await.unwrap();
    let mut after_settings = RawConnection::connect(service.address).await.unwrap();
    after_settings.send(&frames::handshake()).await.unwrap();
    let mut partial_message = RawConnection::connect(service.address).await.unwrap();
    let message = [
        frames::handshake(),
        frames::settings_ack(),
        frames::request_headers(1, CREATE, "application/grpc", &[], false),
        frames::data(
            1,
            &[&frames::grpc_prefix(100)[..], &[0u8; 10]].concat(),
            false,
        ),
    ]
    .concat();
    partial_message.send(&message).await.unwrap();

    let within = Duration::from_secs(10);
    let (silent, partial_preface, after_settings, partial_message) = tokio::join!(
        silent.wait_closed(within),
        partial_preface.wait_closed(within),
        after_settings.wait_closed(within),
        partial_message.wait_closed(within),
    );
    let cases = [
        ("silent TCP", silent.unwrap(), false),
        ("a partial preface", partial_preface.unwrap(), false),
        ("a preface and SETTINGS", after_settings.unwrap(), true),
        ("a partial message", partial_message.unwrap(), true),
    ];
    for (what, closed, pinged) in &cases {
        println!(
            "hostile: {what}: closed after {:?}, {} pings unanswered",
            closed.after,
            closed.count(kind::PING)
        );
        assert!(
            closed.after >= Duration::from_millis(900),
            "{what}: {closed:?}"
        );
        assert!(closed.after < Duration::from_secs(5), "{what}: {closed:?}");
        if *pinged {
            assert!(
                closed.count(kind::PING) > 0,
                "{what} was never pinged: {closed:?}"
            );
        }
    }
    // The client that answers pings was kept through all that, and is served.
    let answer = live
        .request(
            "/grpc.health.v1.Health/Check",
            "application/grpc",
            &[("grpc-timeout", "2S")],
            &frames::grpc_prefix(0),
            true,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    service.serves(Duration::from_secs(2)).await.unwrap();
}

/// Target: with 1,100 silent connections against a 1,024 open-files
/// limit, a real client is still served within 2 s. The service starts
/// with a soft limit of 512 under a hard one of 1,024, and raises the soft
/// one itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_at_the_open_files_limit_do_not_lock_out_a_real_client() {
    const SILENT: usize = 1100;
    // This test's own process holds the 1,100 client ends.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < 4096 && hard > soft {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(65_536), hard).unwrap();
    }
    let registry = TestRegistry::shared().await.unwrap();
    let dir = TempDir::new().unwrap();
    let binary = workspace_bin("consignment-service", "consignment-service").unwrap();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(r#"ulimit -S -n 512 && ulimit -H -n 1024 && exec "$0" "$@""#)
        .arg(&binary)
        .args(registry.args())
        .env_clear()
        .env("SHIPPY_LISTEN_ADDR", "127.0.0.1:0")
        .env("SHIPPY_DATA_DIR", dir.path().join("data"))
        .env("RUST_LOG", "info");
    let process = ChildGuard::spawn_logged(&mut command, &dir.path().join("svc.log")).unwrap();
    let service = Service::registered(&registry, process, dir).await;
    let (soft, hard) = attack::open_files_limit(service.process.pid()).unwrap();
    assert_eq!((soft, hard), (1024, 1024), "the soft limit was not raised");
    service.wait_for_log("max_connections=896", DEADLINE).await;

    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(RawConnection::connect(service.address).await.unwrap());
    }
    let served_after = service.serves(Duration::from_secs(2)).await;
    println!("hostile: with {SILENT} silent connections, served after {served_after:?}");
    served_after.unwrap();
    service
        .wait_for_log(
            "closing a connection still in its handshake to make room",
            Duration::from_secs(5),
        )
        .await;
    let log = service.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert_eq!(
        is_registered(&registry, &service.key).await,
        Some(true),
        "the instance lost its registration"
    );
}

/// Target: SIGHUP stops the service like SIGTERM: deregistered at once,
/// exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_stops_the_service_gracefully() {
    let registry = TestRegistry::shared().await.unwrap();
    let mut service = Service::start(&registry, &[]).await;
    let signalled = Instant::now();
    service.process.signal(Signal::SIGHUP).unwrap();
    wait_until(Duration::from_secs(2), "the key to go", || async {
        is_registered(&registry, &service.key).await == Some(false)
    })
    .await
    .unwrap();
    let deregistered = signalled.elapsed();
    let status = service
        .process
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap();
    println!("hostile: SIGHUP: key gone after {deregistered:?}, exit {status}");
    assert!(status.success(), "{status}\n{}", service.log());
    assert!(service.log().contains("received SIGHUP"));
}

/// Opens a call that will not finish by itself (its message never
/// completes), and returns once the server has started it.
async fn stuck_call(address: SocketAddr) -> RawConnection {
    let mut connection = RawConnection::connect(address).await.unwrap();
    let message = [
        frames::handshake(),
        frames::settings_ack(),
        frames::request_headers(1, CREATE, "application/grpc", &[], false),
        frames::data(1, &frames::grpc_prefix(100), false),
    ]
    .concat();
    connection.send(&message).await.unwrap();
    connection.sync(Duration::from_secs(5)).await.unwrap();
    connection
}

/// Target: a second SIGINT or SIGTERM during the drain ends the process at
/// once, non-zero, after it deregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_stops_at_once_and_fails() {
    let registry = TestRegistry::shared().await.unwrap();
    let mut service = Service::start(
        &registry,
        &[
            ("SHIPPY_SHUTDOWN_GRACE", "60"),
            ("SHIPPY_DEFAULT_DEADLINE", "60"),
        ],
    )
    .await;
    let _stuck = stuck_call(service.address).await;

    service.process.signal(Signal::SIGTERM).unwrap();
    wait_until(Duration::from_secs(2), "the key to go", || async {
        is_registered(&registry, &service.key).await == Some(false)
    })
    .await
    .unwrap();
    service
        .wait_for_log("draining in-flight calls", Duration::from_secs(2))
        .await;
    assert!(
        service.process.try_exit().unwrap().is_none(),
        "the drain did not wait for the stuck call"
    );

    let second = Instant::now();
    service.process.signal(Signal::SIGINT).unwrap();
    let status = service
        .process
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap();
    let stopped_after = second.elapsed();
    println!("hostile: second signal: exit {status} after {stopped_after:?}");
    assert!(!status.success(), "{status}\n{}", service.log());
    assert!(stopped_after < Duration::from_secs(2), "{stopped_after:?}");
    assert!(
        service
            .log()
            .contains("a second stop signal arrived while draining"),
        "{}",
        service.log()
    );
}

/// Target: a drain that abandons stuck calls at the end of the grace period
/// exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_abandons_calls_fails() {
    let registry = TestRegistry::shared().await.unwrap();
    let mut service = Service::start(
        &registry,
        &[
            ("SHIPPY_SHUTDOWN_GRACE", "1"),
            ("SHIPPY_DEFAULT_DEADLINE", "60"),
        ],
    )
    .await;
    let _stuck = stuck_call(service.address).await;

    let signalled = Instant::now();
    service.process.signal(Signal::SIGTERM).unwrap();
    let status = service
        .process
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap();
    println!(
        "hostile: abandoned drain: exit {status} after {:?}",
        signalled.elapsed()
    );
    assert!(!status.success(), "{status}\n{}", service.log());
    assert!(signalled.elapsed() >= Duration::from_secs(1));
    assert!(
        service
            .log()
            .contains("did not finish within the 1s grace period"),
        "{}",
        service.log()
    );
    assert_eq!(is_registered(&registry, &service.key).await, Some(false));
}

/// Target: a request with a non-gRPC content-type gets HTTP 415.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_grpc_content_type_gets_415() {
    let registry = TestRegistry::shared().await.unwrap();
    let service = Service::start(&registry, &[]).await;
    let mut client = H2Client::connect(service.address).await.unwrap();
    for content_type in ["application/json", "text/plain", "application/grpcx"] {
        let answer = client
            .request(CREATE, content_type, &[], b"{\"id\": \"x\"}", true)
            .await
            .unwrap();
        assert_eq!(answer.status, 415, "{content_type}: {answer:?}");
        assert_eq!(
            answer.grpc_status(),
            Some("3"),
            "{content_type}: {answer:?}"
        );
    }
    service.serves(Duration::from_secs(2)).await.unwrap();
}

/// Target: a client that leaves mid-call, by resetting its stream or by
/// closing its connection, is logged as CANCELLED at info, not as a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_call_is_logged_as_cancelled() {
    let registry = TestRegistry::shared().await.unwrap();
    let service = Service::start(&registry, &[]).await;
    let before = service.log().lines().count();

    // Resets its stream with CANCEL after part of the message.
    let mut resets = stuck_call(service.address).await;
    resets
        .send(&frames::frame(
            kind::RST_STREAM,
            0,
            1,
            &0x8u32.to_be_bytes(),
        ))
        .await
        .unwrap();
    // Closes its connection after part of the message.
    let closes = stuck_call(service.address).await;
    drop(closes);

    let ended = |log: &str| {
        lines_since(log, before)
            .into_iter()
            .filter(|line| {
                line.contains("method=shippy.consignment.v1.ShippingService/CreateConsignment")
            })
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    wait_until(Duration::from_secs(5), "both calls in the log", || async {
        ended(&service.log()).len() == 2
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", service.log()));
    for line in ended(&service.log()) {
        println!("hostile: {line}");
        assert!(line.contains("status=CANCELLED"), "{line}");
        assert!(line.contains(" INFO "), "{line}");
    }
}
