//! The service binaries and the echo floor as child processes on free
//! loopback ports, and how long registration and deregistration take.
//!
//! etcd comes from `shippy-test-support` (a real etcd with a temporary data
//! dir). A service's registration is timed from just before its process is
//! spawned to the moment an etcd watch, opened beforehand, delivers the put
//! of its key; deregistration from just before SIGTERM to the delete. A
//! watch sees the change when etcd commits it, with no polling interval in
//! the measurement, and reads nothing from etcd's key space.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use etcd_client::{EventType, WatchOptions, WatchStream};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use shippy_test_support::{ChildGuard, Etcd, wait_until};
use tokio::time::Instant;

/// How long a service may take to register or to exit.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The two services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    VesselService,
    ConsignmentService,
}

impl ServiceKind {
    /// The package and binary name.
    pub fn binary(self) -> &'static str {
        match self {
            Self::VesselService => "vessel-service",
            Self::ConsignmentService => "consignment-service",
        }
    }

    /// The etcd prefix its instances' keys are under by default.
    fn prefix(self) -> &'static str {
        match self {
            Self::VesselService => "/shippy/services/shippy.service.vessel/",
            Self::ConsignmentService => "/shippy/services/shippy.service.consignment/",
        }
    }

    /// Environment beyond etcd and the listen address. consignment-service
    /// keeps consignments in memory, so the benchmark measures the RPC and
    /// discovery path rather than a database.
    fn extra_env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::VesselService => &[],
            Self::ConsignmentService => &[("SHIPPY_DATABASE_URL", "memory://")],
        }
    }
}

/// The service binaries, and the extra environment they run with.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
    /// `--service-env`.
    env: Vec<(String, String)>,
}

impl Binaries {
    /// The service binaries in `dir`, which must be there.
    pub fn in_dir(dir: PathBuf, env: Vec<(String, String)>) -> anyhow::Result<Self> {
        for kind in [ServiceKind::VesselService, ServiceKind::ConsignmentService] {
            let path = dir.join(kind.binary());
            if !path.is_file() {
                bail!(
                    "{} not found: build it first (`cargo build --release --workspace --bins`, \
                     or `make bench`), or pass --bin-dir",
                    path.display()
                );
            }
        }
        Ok(Self { dir, env })
    }

    /// The directory by its last two components (`target/release`), for
    /// the report.
    pub fn describe_dir(&self) -> String {
        let mut names: Vec<_> = self.dir.iter().rev().take(2).collect();
        names.reverse();
        names.join("/".as_ref()).to_string_lossy().into_owned()
    }
}

/// A running child process: a registered service instance or a floor.
pub struct Child {
    /// Killed if dropped while running.
    pub process: ChildGuard,
    /// The `host:port` it listens on.
    pub address: String,
    /// A service's registration key.
    key: String,
}

/// Opens a watch on `key` (a prefix when `prefix`) and waits until etcd
/// confirms it, so no later change is missed.
async fn watch(etcd: &Etcd, key: &str, prefix: bool) -> anyhow::Result<WatchStream> {
    let options = if prefix {
        WatchOptions::new().with_prefix()
    } else {
        WatchOptions::new()
    };
    let watched = etcd.client().await?.watch(key, Some(options)).await;
    let mut stream = watched.context("opening an etcd watch")?;
    let created = stream
        .message()
        .await
        .context("waiting for the etcd watch")?;
    if !created.is_some_and(|response| response.created()) {
        bail!("etcd did not confirm the watch on {key}");
    }
    Ok(stream)
}

/// The next event of `event_type` from `stream`, as (key, value), within `timeout`.
async fn next_event(
    stream: &mut WatchStream,
    event_type: EventType,
    timeout: Duration,
) -> anyhow::Result<(String, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let response = tokio::time::timeout_at(deadline, stream.message())
            .await
            .map_err(|_| anyhow!("no {event_type:?} event within {timeout:?}"))?
            .context("reading the etcd watch")?
            .context("the etcd watch ended")?;
        let mut events = response
            .events()
            .iter()
            .filter(|e| e.event_type() == event_type);
        if let Some(kv) = events.find_map(|event| event.kv()) {
            let text = |bytes| String::from_utf8_lossy(bytes).into_owned();
            return Ok((text(kv.key()), text(kv.value())));
        }
    }
}

/// Starts `kind` against `etcd` on a free loopback port, logging to
/// `<logs>/<name>.log`, and returns it once its key is in etcd, with the
/// time from spawning the process to that.
pub async fn start_service(
    binaries: &Binaries,
    kind: ServiceKind,
    etcd: &Etcd,
    logs: &Path,
    name: &str,
) -> anyhow::Result<(Child, Duration)> {
    let mut stream = watch(etcd, kind.prefix(), true).await?;
    let mut command = Command::new(binaries.dir.join(kind.binary()));
    command
        .env_clear()
        .current_dir(logs)
        .env("SHIPPY_ETCD_ENDPOINTS", etcd.endpoint())
        .env("SHIPPY_LISTEN_ADDR", "127.0.0.1:0")
        .envs(kind.extra_env().iter().copied())
        .envs(binaries.env.iter().map(|(k, v)| (k, v)));
    let spawned = Instant::now();
    let mut process = ChildGuard::spawn_logged(&mut command, &logs.join(format!("{name}.log")))?;
    let registered = tokio::select! {
        event = next_event(&mut stream, EventType::Put, START_TIMEOUT) => event,
        exited = process.wait_exit(START_TIMEOUT + Duration::from_secs(1)) => match exited {
            Ok(status) => Err(anyhow!("exited with {status} before registering")),
            Err(err) => Err(err),
        },
    };
    let took = spawned.elapsed();
    let (key, value) =
        registered.with_context(|| format!("starting {name}:\n{}", process.log_tail()))?;
    let record = serde_json::from_str::<serde_json::Value>(&value).ok();
    let address = record.and_then(|record| Some(record.get("address")?.as_str()?.to_owned()));
    let address =
        address.with_context(|| format!("{name} registered an unreadable record: {value}"))?;
    let child = Child {
        process,
        address,
        key,
    };
    Ok((child, took))
}

/// Sends SIGTERM to the service `name` and returns the time until its key
/// was gone from etcd, once the process has exited 0.
pub async fn stop_service(mut service: Child, name: &str, etcd: &Etcd) -> anyhow::Result<Duration> {
    let mut stream = watch(etcd, &service.key, false).await?;
    let process = &mut service.process;
    let signalled = Instant::now();
    process.signal(Signal::SIGTERM)?;
    let deleted = next_event(&mut stream, EventType::Delete, START_TIMEOUT).await;
    deleted.with_context(|| format!("stopping {name}:\n{}", process.log_tail()))?;
    let took = signalled.elapsed();
    let status = process.wait_exit(START_TIMEOUT).await?;
    if !status.success() {
        bail!(
            "{name} exited with {status} after SIGTERM:\n{}",
            process.log_tail()
        );
    }
    Ok(took)
}

/// Starts `shippy-bench echo-server` on a free loopback port, as a relay
/// to `forward` when given, logging to `<logs>/<name>.log`.
pub async fn start_echo(forward: Option<&str>, logs: &Path, name: &str) -> anyhow::Result<Child> {
    let mut command = Command::new(std::env::current_exe().context("locating shippy-bench")?);
    command
        .env_clear()
        .args(["echo-server", "--listen", "127.0.0.1:0"]);
    if let Some(backend) = forward {
        command.args(["--forward", backend]);
    }
    let process = ChildGuard::spawn_logged(&mut command, &logs.join(format!("{name}.log")))?;
    let listening = || {
        let log = process.log();
        let address = log
            .lines()
            .find_map(|line| line.strip_prefix("listening on "));
        address.map(|address| address.trim().to_owned())
    };
    let listens = || async { listening().is_some() };
    let waited = wait_until(START_TIMEOUT, "the echo server to listen", listens).await;
    waited.with_context(|| process.log_tail())?;
    let address = listening().context("the echo server did not say where it listens")?;
    let key = String::new();
    Ok(Child {
        process,
        address,
        key,
    })
}
