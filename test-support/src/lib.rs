//! Test harness for shippy's integration and end-to-end tests.
//!
//! - [`Etcd`]: a private, real etcd process on free loopback ports with a
//!   temporary data dir, stopped when dropped; [`EtcdCluster`]: several.
//! - [`ChildGuard`]: a spawned process that is killed when dropped, with its
//!   output captured to a log file the test can read.
//! - [`workspace_bin`]: locates a binary of another workspace package, as
//!   `cargo test --workspace` built it; [`spawn_service`] starts a service
//!   binary.
//! - [`wait_until`]: polls a condition until it holds or a deadline passes.
//! - [`Postgres`]: a private, real PostgreSQL server on a free loopback port.
//!
//! Nothing here is mocked: tests talk to the same etcd and binaries users run.

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

pub mod attack;
mod postgres;
pub use postgres::Postgres;

/// How long a freshly started etcd may take to answer.
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often [`wait_until`] re-checks its condition.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A free TCP port on 127.0.0.1, found by binding port 0 and letting go.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `condition` every few milliseconds until it returns true, failing
/// with `what` in the message once `timeout` has passed.
pub async fn wait_until<F, Fut>(
    timeout: Duration,
    what: &str,
    mut condition: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A real etcd server for one test: a single member, or one member of an
/// [`EtcdCluster`].
pub struct Etcd {
    /// The etcd process; `None` while it is stopped.
    process: Option<ChildGuard>,
    /// The member name, unique in its cluster.
    name: String,
    /// `http://127.0.0.1:<port>`, stable across restarts.
    endpoint: String,
    /// Peer port, stable across restarts so the member keeps its identity.
    peer_port: u16,
    /// `name=peer-url,…` for every member of the cluster.
    initial_cluster: String,
    /// Holds the data dir and the log; removed on drop.
    dir: TempDir,
}

impl Etcd {
    /// Starts a single-member etcd on free loopback ports and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let mut etcd = Self::not_started()?;
        etcd.restart().await?;
        Ok(etcd)
    }

    /// Picks the ports and data dir of an etcd without starting it, for
    /// tests of what happens before etcd is up; [`Etcd::restart`] starts it.
    pub fn not_started() -> anyhow::Result<Self> {
        let mut etcd = Self::member("test")?;
        etcd.initial_cluster = etcd.peer_entry();
        Ok(etcd)
    }

    /// A not yet started member called `name`, whose cluster is set later.
    fn member(name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("shippy-etcd-")
            .tempdir()
            .context("creating etcd temp dir")?;
        Ok(Self {
            process: None,
            name: name.to_owned(),
            endpoint: format!("http://127.0.0.1:{}", free_port()?),
            peer_port: free_port()?,
            initial_cluster: String::new(),
            dir,
        })
    }

    /// This member's `name=peer-url` entry for `--initial-cluster`.
    fn peer_entry(&self) -> String {
        format!("{}=http://127.0.0.1:{}", self.name, self.peer_port)
    }

    /// The client URL, e.g. `http://127.0.0.1:23791`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A client connected to this etcd.
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .context("connecting to test etcd")
    }

    /// Starts (again) on the same ports and data dir, and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_ready().await
    }

    /// Starts the process without waiting for it to answer (a cluster
    /// member cannot answer until a quorum is up).
    fn spawn(&mut self) -> anyhow::Result<()> {
        let binary = etcd_binary()?;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&binary);
        command
            .arg(format!("--name={}", self.name))
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.endpoint))
            .arg(format!("--advertise-client-urls={}", self.endpoint))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        let log = self.dir.path().join("etcd.log");
        self.process = Some(ChildGuard::spawn_logged(&mut command, &log)?);
        Ok(())
    }

    /// Waits until the member answers a read, failing early if it exits.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + ETCD_START_TIMEOUT;
        loop {
            if let Some(process) = self.process.as_mut()
                && let Some(status) = process.try_exit()?
            {
                bail!(
                    "etcd member {} exited with {status} at start:\n{}",
                    self.name,
                    process.log_tail()
                );
            }
            if self.answers().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd did not answer on {} within {ETCD_START_TIMEOUT:?}",
                    self.endpoint
                );
            }
            tokio::time::sleep(POLL_INTERVAL * 4).await;
        }
    }

    /// Kills etcd with SIGKILL, keeping its data dir for [`Etcd::restart`].
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Whether etcd answers a read right now.
    async fn answers(&self) -> bool {
        let Ok(mut client) = self.client().await else {
            return false;
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), client.get("health-probe", None)).await,
            Ok(Ok(_))
        )
    }

    /// The values of every key under `prefix`, as (key, value) strings.
    pub async fn get_prefix(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut client = self.client().await?;
        let response = client
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .context("reading from test etcd")?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect())
    }
}

/// A real etcd cluster of several members on loopback.
pub struct EtcdCluster {
    /// The members, in the order of [`EtcdCluster::endpoints`].
    members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one answers.
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        let mut members = (0..size)
            .map(|i| Etcd::member(&format!("member{i}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let initial_cluster = members
            .iter()
            .map(Etcd::peer_entry)
            .collect::<Vec<_>>()
            .join(",");
        for member in &mut members {
            member.initial_cluster.clone_from(&initial_cluster);
            member.spawn()?;
        }
        for member in &mut members {
            member.wait_ready().await?;
        }
        Ok(Self { members })
    }

    /// Every member's client URL, comma-separated, as the services take them.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Etcd::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `index`, e.g. to kill it.
    pub fn member(&mut self, index: usize) -> anyhow::Result<&mut Etcd> {
        self.members
            .get_mut(index)
            .ok_or_else(|| anyhow!("no member {index}"))
    }

    /// The keys and values under `prefix`, read from the first member that answers.
    pub async fn get_prefix(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut last_error = anyhow!("no members");
        for member in self.members.iter().filter(|m| m.process.is_some()) {
            match member.get_prefix(prefix).await {
                Ok(found) => return Ok(found),
                Err(err) => last_error = err,
            }
        }
        Err(last_error)
    }
}

/// The etcd binary: `$SHIPPY_ETCD_BIN`, else `etcd` on the PATH.
fn etcd_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SHIPPY_ETCD_BIN") {
        return Ok(PathBuf::from(path));
    }
    find_on_path("etcd").ok_or_else(|| {
        anyhow!(
            "etcd is not installed: `make test` installs Debian's etcd-server, \
             or set SHIPPY_ETCD_BIN to an etcd binary"
        )
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

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

/// Starts the binary of service package `package` (vessel-service or
/// consignment-service) against `etcd_endpoints` on a free loopback port,
/// with a clean environment plus `env`, logging to `<log_dir>/<name>.log`.
/// consignment-service's store goes in `<log_dir>/<name>-data` unless `env`
/// says otherwise.
pub fn spawn_service(
    package: &str,
    etcd_endpoints: &str,
    log_dir: &Path,
    name: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<ChildGuard> {
    let mut command = Command::new(workspace_bin(package, package)?);
    command
        .env_clear()
        .env("SHIPPY_ETCD_ENDPOINTS", etcd_endpoints)
        .env("SHIPPY_LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("SHIPPY_DATA_DIR", log_dir.join(format!("{name}-data")))
        .envs(env.iter().copied());
    ChildGuard::spawn_logged(&mut command, &log_dir.join(format!("{name}.log")))
}

/// The path of binary `bin` from workspace package `package`, as built
/// beside the running tests.
///
/// Tests never build binaries themselves: `cargo test --workspace` (which
/// `make test` runs) builds every package's binaries with the same features
/// as the tests, before any test starts. Running one package's tests alone
/// (`cargo test -p consignment-service`) builds only that package's
/// binaries, so build the rest first with `cargo build --workspace --bins`.
pub fn workspace_bin(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let path = target_profile_dir()?.join(bin);
    if !path.is_file() {
        bail!(
            "{} is missing: build {package}'s binaries first with `cargo test --workspace` \
             (as `make test` does) or `cargo build --workspace --bins`",
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
