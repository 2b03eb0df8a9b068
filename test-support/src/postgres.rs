//! A private PostgreSQL server for one test: Debian's `postgresql` binaries,
//! a fresh cluster in a temporary directory, on a free loopback port.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tempfile::TempDir;

use crate::{ChildGuard, POLL_INTERVAL, free_port};

/// How long a fresh server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The superuser `initdb` creates; connections need no password.
const USER: &str = "shippy";

/// A running PostgreSQL server, stopped and deleted when dropped.
pub struct Postgres {
    /// The postmaster.
    process: ChildGuard,
    port: u16,
    /// Holds the cluster, its socket and its log.
    _dir: TempDir,
}

impl Postgres {
    /// Creates a cluster and starts a server on a free port, waiting until
    /// it accepts connections.
    ///
    /// PostgreSQL refuses to run as root, so under root the cluster is
    /// owned by, and the server runs as, the `postgres` system user that
    /// Debian's package creates.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("shippy-postgres-")
            .tempdir()
            .context("creating the PostgreSQL temp dir")?;
        let owner = run_as()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("handing the PostgreSQL temp dir to the postgres user")?;
        }
        let data = dir.path().join("data");

        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(&data)
            .args(["--username", USER, "--auth", "trust", "--encoding", "UTF8"])
            .arg("--no-sync");
        as_owner(&mut initdb, owner);
        let output = initdb.output().context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed with {}:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }

        let port = free_port()?;
        let mut server = Command::new(bin.join("postgres"));
        server
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            // Throwaway data: skip the syncs that make a real server durable.
            .args(["-c", "fsync=off"])
            .arg("-k")
            .arg(dir.path());
        as_owner(&mut server, owner);
        let mut process = ChildGuard::spawn_logged(&mut server, &dir.path().join("postgres.log"))?;

        let deadline = Instant::now() + START_TIMEOUT;
        while !accepts_connections(&bin, port)? {
            if let Some(status) = process.try_exit()? {
                bail!(
                    "postgres exited with {status} at start:\n{}",
                    process.log_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "postgres did not accept connections on port {port} within {START_TIMEOUT:?}"
                );
            }
            tokio::time::sleep(POLL_INTERVAL * 4).await;
        }
        Ok(Self {
            process,
            port,
            _dir: dir,
        })
    }

    /// A connection URL for database `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }
}

/// How long a server may take to stop when dropped.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Drop for Postgres {
    /// Stops the server with a fast shutdown (SIGINT), so it releases its
    /// shared memory, before its directory is deleted; killed if it lingers.
    fn drop(&mut self) {
        if self
            .process
            .signal(nix::sys::signal::Signal::SIGINT)
            .is_err()
        {
            return;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(self.process.try_exit(), Ok(None)) {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

/// Whether the server on `port` accepts connections, by `pg_isready`.
fn accepts_connections(bin: &Path, port: u16) -> anyhow::Result<bool> {
    let status = Command::new(bin.join("pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
        .status()
        .context("running pg_isready")?;
    Ok(status.success())
}

/// The directory of PostgreSQL's server binaries: `$SHIPPY_PG_BIN`, else
/// the newest `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SHIPPY_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let versions = std::fs::read_dir("/usr/lib/postgresql").map_err(|_| not_installed())?;
    versions
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
        .ok_or_else(not_installed)
}

fn not_installed() -> anyhow::Error {
    anyhow!(
        "PostgreSQL's server is not installed: `make test` installs Debian's postgresql, \
         or set SHIPPY_PG_BIN to the directory holding initdb and postgres"
    )
}

/// The `postgres` user's uid and gid when running as root; `None` otherwise.
fn run_as() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .context("looking up the postgres user")?
        .ok_or_else(|| {
            anyhow!("running as root, but there is no postgres user to run PostgreSQL as")
        })?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}
