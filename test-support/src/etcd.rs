//! Private etcd servers: one member, or a cluster of several, each a real
//! etcd process on free loopback ports with its own data dir, for the tests
//! that stop or restart etcd and so cannot share one.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tempfile::TempDir;

use crate::registry::TestRegistry;
use crate::{ChildGuard, POLL_INTERVAL, free_port};

/// How long a freshly started etcd may take to answer.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(20);

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

    /// A registry on this etcd under a prefix of the calling test's own.
    pub fn registry(&self) -> TestRegistry {
        TestRegistry::new(vec![self.endpoint.clone()])
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
        let mut command = Command::new(etcd_binary()?);
        command.args(member_args(
            &self.name,
            &self.dir.path().join("data"),
            &self.endpoint,
            self.peer_port,
            &self.initial_cluster,
        ));
        let log = self.dir.path().join("etcd.log");
        self.process = Some(ChildGuard::spawn_logged(&mut command, &log)?);
        Ok(())
    }

    /// Waits until the member answers a read, failing early if it exits.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
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
            if answers(&self.endpoint).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd did not answer on {} within {START_TIMEOUT:?}",
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

    /// A registry on every member under a prefix of the calling test's own.
    pub fn registry(&self) -> TestRegistry {
        TestRegistry::new(
            self.members
                .iter()
                .map(|member| member.endpoint.clone())
                .collect(),
        )
    }

    /// Member `index`, e.g. to kill it.
    pub fn member(&mut self, index: usize) -> anyhow::Result<&mut Etcd> {
        self.members
            .get_mut(index)
            .ok_or_else(|| anyhow!("no member {index}"))
    }
}

/// The command-line arguments of etcd member `name`.
pub(crate) fn member_args(
    name: &str,
    data_dir: &Path,
    endpoint: &str,
    peer_port: u16,
    initial_cluster: &str,
) -> Vec<OsString> {
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut data = OsString::from("--data-dir=");
    data.push(data_dir);
    vec![
        format!("--name={name}").into(),
        data,
        format!("--listen-client-urls={endpoint}").into(),
        format!("--advertise-client-urls={endpoint}").into(),
        format!("--listen-peer-urls={peer}").into(),
        format!("--initial-advertise-peer-urls={peer}").into(),
        format!("--initial-cluster={initial_cluster}").into(),
        "--logger=zap".into(),
        "--log-outputs=stderr".into(),
    ]
}

/// Whether the etcd at `endpoint` answers a read right now.
pub(crate) async fn answers(endpoint: &str) -> bool {
    let Ok(mut client) = etcd_client::Client::connect([endpoint], None).await else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), client.get("health-probe", None)).await,
        Ok(Ok(_))
    )
}

/// The etcd binary: `$SHIPPY_ETCD_BIN`, else `etcd` on the PATH.
pub(crate) fn etcd_binary() -> anyhow::Result<PathBuf> {
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
