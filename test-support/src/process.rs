//! Processes a test starts: the service binaries and the CLI as
//! `cargo test --workspace` built them, each killed when the test is done.

use std::collections::BTreeSet;
use std::fs::File;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_proto::vessel::v1::vessel_service_client::VesselServiceClient;
use tonic::transport::Channel;

use crate::registry::TestRegistry;
use crate::{DEADLINE, POLL_INTERVAL, wait_for};

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard {
    child: Child,
    /// Where its stdout and stderr go.
    log: PathBuf,
}

impl ChildGuard {
    /// Spawns `command` with stdout and stderr appended to `log`.
    pub fn spawn_logged(command: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {:?}", command.get_program()))?;
        Ok(Self {
            child,
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. SIGTERM) to the process.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("pid out of range")?);
        kill(pid, signal).with_context(|| format!("sending {signal} to {pid}"))
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child.try_wait().context("polling child process")
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "process {} still running after {timeout:?}; log:\n{}",
                    self.pid(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One of the service binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// vessel-service.
    Vessel,
    /// consignment-service.
    Consignment,
}

impl Service {
    /// The workspace package, which is also the binary's name.
    pub fn package(self) -> &'static str {
        match self {
            Self::Vessel => "vessel-service",
            Self::Consignment => "consignment-service",
        }
    }

    /// The name it registers under.
    pub fn registered_name(self) -> &'static str {
        match self {
            Self::Vessel => shippy_proto::vessel::SERVICE_NAME,
            Self::Consignment => shippy_proto::consignment::SERVICE_NAME,
        }
    }
}

/// Starts `service`'s binary against `registry` on a free loopback port,
/// with a clean environment plus `env`, logging to `<log_dir>/<name>.log`,
/// and returns at once. consignment-service's store goes in
/// `<log_dir>/<name>-data` unless `env` says otherwise.
pub fn spawn_service(
    registry: &TestRegistry,
    service: Service,
    log_dir: &Path,
    name: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<ChildGuard> {
    let package = service.package();
    let mut command = Command::new(workspace_bin(package, package)?);
    command
        .env_clear()
        .envs(registry.env())
        .env("SHIPPY_LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("SHIPPY_DATA_DIR", log_dir.join(format!("{name}-data")))
        .envs(env.iter().copied());
    ChildGuard::spawn_logged(&mut command, &log_dir.join(format!("{name}.log")))
}

/// A service binary that has registered under a test's prefix: its key and
/// address, clients for it, and the process itself (through `Deref`) for
/// its log and signals.
pub struct ServiceProcess {
    process: ChildGuard,
    /// The etcd key it registered under.
    key: String,
    /// The address it registered, `host:port`.
    address: String,
}

impl ServiceProcess {
    /// Starts `service` as [`spawn_service`] does and waits until it has
    /// registered. Its instance is the one that appears; starting two of
    /// one service at once needs [`ServiceProcess::start_at`].
    pub async fn start(
        registry: &TestRegistry,
        service: Service,
        log_dir: &Path,
        name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::launch(registry, service, log_dir, name, None, env).await
    }

    /// Like [`ServiceProcess::start`], listening on `address`
    /// (`127.0.0.1:<port>`), which also tells its instance from any other.
    pub async fn start_at(
        registry: &TestRegistry,
        service: Service,
        log_dir: &Path,
        name: &str,
        address: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let env = [&[("SHIPPY_LISTEN_ADDR", address)], env].concat();
        Self::launch(registry, service, log_dir, name, Some(address), &env).await
    }

    async fn launch(
        registry: &TestRegistry,
        service: Service,
        log_dir: &Path,
        name: &str,
        address: Option<&str>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let registered = service.registered_name();
        // Keys already there (e.g. of a killed predecessor whose lease still
        // runs) are not this process's.
        let before: BTreeSet<String> = registry
            .instances(registered)
            .await?
            .into_iter()
            .map(|instance| instance.key)
            .collect();
        let mut process = spawn_service(registry, service, log_dir, name, env)?;
        let found = wait_for(DEADLINE, &format!("{name} to register"), || {
            let exited = process.try_exit();
            let before = &before;
            async move {
                match exited {
                    Ok(None) => {}
                    Ok(Some(status)) => {
                        return Some(Err(anyhow!("{name} exited with {status} at start")));
                    }
                    Err(err) => return Some(Err(err)),
                }
                let mut new: Vec<_> = registry
                    .instances(registered)
                    .await
                    .ok()?
                    .into_iter()
                    .filter(|instance| !before.contains(&instance.key))
                    .filter(|instance| {
                        address.is_none_or(|address| instance.record.address.to_string() == address)
                    })
                    .collect();
                match new.len() {
                    0 => None,
                    1 => new.pop().map(Ok),
                    _ => Some(Err(anyhow!(
                        "several new instances of {registered} appeared at once; \
                         start them with start_at"
                    ))),
                }
            }
        })
        .await;
        let instance = found
            .and_then(|found| found)
            .with_context(|| format!("{name}'s log:\n{}", process.log_tail()))?;
        Ok(Self {
            process,
            key: instance.key,
            address: instance.record.address.to_string(),
        })
    }

    /// The etcd key it registered under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The address it registered, `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A vessel-service client for it.
    pub async fn vessel_client(&self) -> anyhow::Result<VesselServiceClient<Channel>> {
        Ok(VesselServiceClient::new(self.channel().await?))
    }

    /// A consignment-service client for it.
    pub async fn shipping_client(&self) -> anyhow::Result<ShippingServiceClient<Channel>> {
        Ok(ShippingServiceClient::new(self.channel().await?))
    }

    /// A connected channel to it, for any other client.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        channel(&self.address).await
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.process.signal(Signal::SIGTERM)?;
        self.process.wait_exit(DEADLINE).await
    }
}

impl Deref for ServiceProcess {
    type Target = ChildGuard;

    fn deref(&self) -> &ChildGuard {
        &self.process
    }
}

impl DerefMut for ServiceProcess {
    fn deref_mut(&mut self) -> &mut ChildGuard {
        &mut self.process
    }
}

/// A connected channel to the gRPC server at `address` (`host:port`).
pub(crate) async fn channel(address: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(format!("http://{address}"))
        .context("building a channel")?
        .connect()
        .await
        .with_context(|| format!("connecting to {address}"))
}

/// The CLI pointed at `registry`, with an otherwise clean environment.
pub fn cli(registry: &TestRegistry) -> anyhow::Result<Command> {
    let mut command = Command::new(workspace_bin("consignment-cli", "consignment-cli")?);
    command.env_clear().envs(registry.env());
    Ok(command)
}

/// The path of binary `bin` from workspace package `package`, as built
/// beside the running tests.
///
/// Tests never build binaries themselves: `cargo test --workspace` (which
/// `make test` runs) builds every package's binaries with the same features
/// as the tests, before any test starts. Running one package's tests alone
/// (`cargo test -p consignment-service`) builds only that package's
/// binaries, so build the rest first with `cargo test --workspace --no-run`
/// (`cargo build` would build them with other features, compiling the
/// dependencies a second time).
pub fn workspace_bin(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let path = target_profile_dir()?.join(bin);
    if !path.is_file() {
        bail!(
            "{} is missing: build {package}'s binaries first with `cargo test --workspace` \
             (as `make test` does) or `cargo test --workspace --no-run`",
            path.display()
        );
    }
    Ok(path)
}

/// `target/<profile>`, found from the running test binary in `target/<profile>/deps`.
fn target_profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_owned)
        .ok_or_else(|| anyhow!("unexpected test binary location {}", exe.display()))
}
