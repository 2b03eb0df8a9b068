//! The one etcd a test binary's tests share: started by the first test that
//! asks for it, used by the rest each under its own key prefix, and gone,
//! data dir and all, when the test binary exits.
//!
//! It lives in a `static`, and a static is never dropped, so no guard can
//! stop it. Instead etcd runs under a small `sh` wrapper whose stdin is a
//! pipe this process holds and never writes. However the test binary
//! exits (passing, failing, or killed), the kernel closes the pipe, the
//! wrapper's `read` returns, and the wrapper kills etcd and deletes its
//! directory. The wrapper runs in its own process group, so a Ctrl-C meant
//! for the tests does not kill it before it has cleaned up.
//!
//! Each `#[tokio::test]` runs on a runtime of its own, and the test that
//! starts etcd may finish long before the others. So the cell holds plain
//! data (the endpoint and the pipe), never a client or a task tied to the
//! runtime that happened to start it: clients are made per use.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use tokio::sync::OnceCell;

use crate::etcd::{START_TIMEOUT, answers, etcd_binary, member_args};
use crate::{POLL_INTERVAL, free_port};

/// Runs etcd (`$2…`) with its data and log in `$1`, until stdin closes.
const WRAPPER: &str = r#"
dir=$1
shift
"$@" </dev/null >"$dir/etcd.log" 2>&1 &
etcd=$!
read -r _
kill -9 "$etcd" 2>/dev/null
wait "$etcd"
rm -rf "$dir"
"#;

/// The running shared etcd.
struct Shared {
    /// Its client URL.
    endpoint: String,
    /// The wrapper's stdin, held only to be closed when this process exits.
    _lifeline: ChildStdin,
}

static SHARED: OnceCell<Shared> = OnceCell::const_new();

/// How many prefixes this test binary has handed out.
static PREFIXES: AtomicUsize = AtomicUsize::new(0);

/// The client URL of this test binary's shared etcd, started on first use.
pub(crate) async fn endpoint() -> anyhow::Result<String> {
    let shared = SHARED.get_or_try_init(start).await?;
    Ok(shared.endpoint.clone())
}

/// A key prefix no other test in this binary gets: a counter, for
/// uniqueness, and the test's name, for whoever reads etcd's keys.
pub(crate) fn unique_prefix() -> String {
    let number = PREFIXES.fetch_add(1, Ordering::Relaxed);
    // libtest runs each test on a thread named after it.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test").replace("::", ".");
    format!("/shippy-test/{number}-{test}")
}

/// Starts etcd under the wrapper and waits until it answers.
async fn start() -> anyhow::Result<Shared> {
    let dir = tempfile::Builder::new()
        .prefix("shippy-etcd-shared-")
        .tempdir()
        .context("creating the shared etcd's temp dir")?;
    let endpoint = format!("http://127.0.0.1:{}", free_port()?);
    let peer_port = free_port()?;
    let initial_cluster = format!("shared=http://127.0.0.1:{peer_port}");
    let mut wrapper = Command::new("sh")
        .arg("-c")
        .arg(WRAPPER)
        .arg("sh")
        .arg(dir.path())
        .arg(etcd_binary()?)
        .args(member_args(
            "shared",
            &dir.path().join("data"),
            &endpoint,
            peer_port,
            &initial_cluster,
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("spawning the shared etcd's wrapper")?;
    let lifeline = wrapper
        .stdin
        .take()
        .ok_or_else(|| anyhow!("the shared etcd's wrapper has no stdin"))?;
    // From here on the wrapper deletes the directory.
    let dir = dir.keep();

    let deadline = Instant::now() + START_TIMEOUT;
    while !answers(&endpoint).await {
        if Instant::now() >= deadline {
            // Dropping the lifeline stops the wrapper and its etcd.
            bail!(
                "the shared etcd did not answer on {endpoint} within {START_TIMEOUT:?}:\n{}",
                log_tail(&dir.join("etcd.log"))
            );
        }
        tokio::time::sleep(POLL_INTERVAL * 4).await;
    }
    Ok(Shared {
        endpoint,
        _lifeline: lifeline,
    })
}

/// The last lines of etcd's log, for a failure message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
