//! Opening the etcd client that registration and discovery share.
//!
//! The client connects lazily, so a service can start before etcd is up and
//! register as soon as it answers. HTTP/2 keep-alive pings detect a dead etcd
//! connection within seconds instead of waiting for TCP to notice.

use std::time::Duration;

use anyhow::Context;
use etcd_client::{Client, ConnectOptions};

/// How long one attempt to open a TCP connection to an etcd member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle connection is pinged, and how long a ping may go unanswered.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(3);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a client for the given endpoints (`http://host:port` or `host:port`).
///
/// This does not wait for etcd: requests fail until a member answers.
pub async fn connect(endpoints: &[String]) -> anyhow::Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
        .with_keep_alive_while_idle(true);
    Client::connect(endpoints, Some(options))
        .await
        .with_context(|| format!("invalid etcd endpoints {}", endpoints.join(",")))
}
