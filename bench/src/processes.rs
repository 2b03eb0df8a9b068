//! etcd, the service binaries and the echo floor as child processes on free
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
use shippy_test_support::{ChildGuard, Etcd, wait_until};
use tokio::time::Instant;

/// How long a service may take to register or to exit.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The registry prefix the services use by default.
const REGISTRY_PREFIX: &str = "/shippy/services";

/// The two services.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    /// vessel-service.
    VesselService,
    /// consignment-service.
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

    /// The name it registers under by default.
    fn registered_name(self) -> &'static str {
        match self {
            Self::VesselService => "shippy.service.vessel",
            Self::ConsignmentService => "shippy.service.consignment",
        }
    }

    /// The etcd prefix its instances' keys are under.
    fn prefix(self) -> String {
        format!("{REGISTRY_PREFIX}/{}/", self.registered_name())
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

/// The binaries the suite runs, and the environment the services get.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// Extra environment for both services (`--service-env`).
    pub service_env: Vec<(String, String)>,
    /// vessel-service.
    pub vessel: PathBuf,
    /// consignment-service.
    pub consignment: PathBuf,
    /// shippy-bench itself, run as `echo-server`.
    pub bench: PathBuf,
}

impl Binaries {
    /// The service binaries in `dir`, and the running bench binary.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let found = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(anyhow!(
                    "{} not found: build it first (`cargo build --release --workspace --bins`, \
                     or `make bench`), or pass --bin-dir",
                    path.display()
                ))
            }
        };
        Ok(Self {
            service_env: Vec::new(),
            vessel: found("vessel-service")?,
            consignment: found("consignment-service")?,
            bench: std::env::current_exe().context("locating shippy-bench")?,
        })
    }

    /// The service binaries' directory, by its last two components
    /// (`target/release`), for the report.
    pub fn describe_dir(&self) -> String {
        let components: Vec<_> = self
            .vessel
            .parent()
            .map(|dir| {
                dir.components()
                    .rev()
                    .take(2)
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        components.into_iter().rev().collect::<Vec<_>>().join("/")
    }

    fn service(&self, kind: ServiceKind) -> &Path {
        match kind {
            ServiceKind::VesselService => &self.vessel,
            ServiceKind::ConsignmentService => &self.consignment,
        }
    }
}

/// A running, registered service instance.
pub struct Service {
    /// Which service.
    pub kind: ServiceKind,
    /// The process; killed if dropped while running.
    pub process: ChildGuard,
    /// Its registration key.
    pub key: String,
    /// The `host:port` it registered.
    pub address: String,
}

impl Service {
    /// The process id, for /proc and perf.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// Opens a watch on `key` (a prefix when `prefix`) and waits until etcd
/// confirms it, so no later change is missed.
async fn watch(etcd: &Etcd, key: &str, prefix: bool) -> anyhow::Result<WatchStream> {
    let mut client = etcd.client().await?;
    let options = if prefix {
        WatchOptions::new().with_prefix()
    } else {
        WatchOptions::new()
    };
    let mut stream = client
        .watch(key, Some(options))
        .await
        .context("opening an etcd watch")?;
    let created = stream
        .message()
        .await
        .context("waiting for the etcd watch")?
        .is_some_and(|response| response.created());
    if !created {
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
        if let Some(kv) = response
            .events()
            .iter()
            .filter(|event| event.event_type() == event_type)
            .find_map(|event| event.kv())
        {
            return Ok((
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            ));
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
) -> anyhow::Result<(Service, Duration)> {
    let mut stream = watch(etcd, &kind.prefix(), true).await?;
    let mut command = Command::new(binaries.service(kind));
    command
        .env_clear()
        .current_dir(logs)
        .env("SHIPPY_ETCD_ENDPOINTS", etcd.endpoint())
        .env("SHIPPY_LISTEN_ADDR", "127.0.0.1:0")
        .envs(kind.extra_env().iter().copied())
        .envs(binaries.service_env.iter().map(|(k, v)| (k, v)));
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
    let address = serde_json::from_str::<serde_json::Value>(&value)
        .ok()
        .and_then(|record| record.get("address")?.as_str().map(str::to_owned))
        .with_context(|| format!("{name} registered an unreadable record: {value}"))?;
    Ok((
        Service {
            kind,
            process,
            key,
            address,
        },
        took,
    ))
}

/// Sends SIGTERM and returns the time until the key was gone from etcd,
/// once the process has exited 0.
pub async fn stop_service(mut service: Service, etcd: &Etcd) -> anyhow::Result<Duration> {
    let mut stream = watch(etcd, &service.key, false).await?;
    let signalled = Instant::now();
    service.process.signal(Signal::SIGTERM)?;
    next_event(&mut stream, EventType::Delete, START_TIMEOUT)
        .await
        .with_context(|| {
            format!(
                "stopping {}:\n{}",
                service.kind.binary(),
                service.process.log_tail()
            )
        })?;
    let took = signalled.elapsed();
    let status = service.process.wait_exit(START_TIMEOUT).await?;
    if !status.success() {
        bail!(
            "{} exited with {status} after SIGTERM:\n{}",
            service.kind.binary(),
            service.process.log_tail()
        );
    }
    Ok(took)
}

/// The echo floor in its own process.
pub struct EchoServer {
    /// The process; killed when dropped.
    pub process: ChildGuard,
    /// Where it listens.
    pub address: String,
}

/// Starts `shippy-bench echo-server` on a free loopback port, as a relay
/// to `forward` when given, logging to `<logs>/<name>.log`.
pub async fn start_echo(
    binaries: &Binaries,
    forward: Option<&str>,
    logs: &Path,
    name: &str,
) -> anyhow::Result<EchoServer> {
    let mut command = Command::new(&binaries.bench);
    command
        .env_clear()
        .args(["echo-server", "--listen", "127.0.0.1:0"]);
    if let Some(backend) = forward {
        command.args(["--forward", backend]);
    }
    let process = ChildGuard::spawn_logged(&mut command, &logs.join(format!("{name}.log")))?;
    wait_until(START_TIMEOUT, "the echo server to listen", || async {
        process.log().contains("listening on ")
    })
    .await
    .with_context(|| process.log_tail())?;
    let address = process
        .log()
        .lines()
        .find_map(|line| line.strip_prefix("listening on "))
        .map(|address| address.trim().to_owned())
        .context("the echo server did not say where it listens")?;
    Ok(EchoServer { process, address })
}
