//! Test harness for shippy's integration and end-to-end tests.
//!
//! - [`TestRegistry`]: one test's corner of a real etcd, the endpoints and
//!   the key prefix its services register under, with the reads and waits
//!   tests make on it. [`TestRegistry::shared`] gives each test its own
//!   prefix in the one etcd its test binary shares.
//! - [`Etcd`]: a private, real etcd process on free loopback ports with a
//!   temporary data dir, stopped when dropped, for tests that stop or
//!   restart etcd; [`EtcdCluster`]: several.
//! - [`ServiceProcess`]: a service binary, started and registered under a
//!   test's prefix; [`InProcessService`]: a service built from its library
//!   and run as a task of the test. Both give its address, clients, and a
//!   stop that waits.
//! - [`ChildGuard`]: a spawned process that is killed when dropped, with its
//!   output captured to a log file the test can read; [`workspace_bin`]
//!   locates a binary of another workspace package, as
//!   `cargo test --workspace` built it.
//! - [`fixtures`]: the sample consignment and its file.
//! - [`wait_until`] and [`wait_for`]: poll a condition until it holds or a
//!   deadline passes.
//! - [`Postgres`]: a private, real PostgreSQL server on a free loopback port.
//! - [`attack`]: a raw HTTP/2 client for hostile-client tests, and readings
//!   of a process's memory and open-files limit.
//!
//! Nothing here is mocked: tests talk to the same etcd and binaries users run.

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod attack;
mod etcd;
pub mod fixtures;
mod in_process;
mod postgres;
mod process;
mod registry;
mod shared;

pub use etcd::{Etcd, EtcdCluster};
pub use in_process::{InProcessService, StopSignal};
pub use postgres::Postgres;
pub use process::{ChildGuard, Service, ServiceProcess, cli, spawn_service, workspace_bin};
pub use registry::{KeyVersion, TestRegistry, registered};

/// How long a test waits for anything that should happen promptly: a
/// service registering, answering or exiting, etcd reacting. Generous,
/// because it is only ever reached when something is wrong.
pub const DEADLINE: Duration = Duration::from_secs(20);
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
    wait_for(timeout, what, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await
}

/// Polls `probe` every few milliseconds until it returns a value, failing
/// with `what` in the message once `timeout` has passed.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
