//! Talking to etcd, one member at a time, moving on when a member fails.
//!
//! etcd-client spreads requests over all endpoints with a balancer that
//! cannot tell a dead member from an idle one: a member that has gone away
//! fails every request at once and so keeps looking the least loaded. With
//! one member of three down, a run of retries can all land on it until a
//! lease expires. [`EtcdClient`] instead keeps one client per member, uses
//! one, and moves to the next when a request fails.
//!
//! The clients connect lazily, so a service can start before etcd is up.
//! HTTP/2 keep-alive pings detect a dead connection within seconds.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail};
use etcd_client::{Client, ConnectOptions};
use tracing::debug;

use crate::retry::within;

/// How long one attempt to open a TCP connection to an etcd member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle connection is pinged, and how long a ping may go unanswered.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(3);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Clients for every configured etcd member, and which one is in use.
/// Cheap to clone; each clone moves between members on its own.
#[derive(Clone)]
pub struct EtcdClient {
    /// One client per endpoint, with the endpoint for logs.
    members: Vec<(String, Client)>,
    /// Index of the member in use.
    current: usize,
}

impl EtcdClient {
    /// Clients for the given endpoints (`http://host:port` or `host:port`).
    ///
    /// This does not wait for etcd: requests fail until a member answers.
    pub async fn connect(endpoints: &[String]) -> anyhow::Result<Self> {
        let endpoints: Vec<&str> = endpoints
            .iter()
            .map(|endpoint| endpoint.trim())
            .filter(|endpoint| !endpoint.is_empty())
            .collect();
        if endpoints.is_empty() {
            bail!("no etcd endpoints given");
        }
        let mut members = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let options = ConnectOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
                .with_keep_alive_while_idle(true)
                // A member cut off from the others must fail requests (and
                // end watches) rather than serve a view that no longer moves.
                .with_require_leader(true);
            let client = Client::connect([endpoint], Some(options))
                .await
                .with_context(|| format!("invalid etcd endpoint {endpoint:?}"))?;
            members.push((endpoint.to_owned(), client));
        }
        Ok(Self {
            members,
            current: 0,
        })
    }

    /// The client for the member in use.
    pub fn client(&mut self) -> &mut Client {
        let index = self.current;
        &mut self.members[index].1
    }

    /// The endpoint of the member in use.
    pub fn endpoint(&self) -> &str {
        &self.members[self.current].0
    }

    /// How many members are configured.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Every configured endpoint, comma-separated, for messages.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|(endpoint, _)| endpoint.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sends `request` to the member in use, and to each next member while
    /// one fails or does not answer in time. The error names `what` was
    /// asked and the last member tried.
    pub async fn first_answer<T, F, Fut>(&mut self, what: &str, mut request: F) -> anyhow::Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempts_left = self.member_count();
        loop {
            let failure = match within(request(self.client().clone())).await {
                Ok(answer) => return Ok(answer),
                Err(err) => err.context(format!("{what} from {}", self.endpoint())),
            };
            attempts_left -= 1;
            if attempts_left == 0 {
                return Err(failure);
            }
            debug!(
                error = format!("{failure:#}"),
                "trying the next etcd member"
            );
            self.fail_over();
        }
    }

    /// Moves to the next member after a failed request.
    pub fn fail_over(&mut self) {
        if self.members.len() > 1 {
            self.current = (self.current + 1) % self.members.len();
            debug!(endpoint = %self.endpoint(), "switching etcd member");
        }
    }
}

impl fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoints", &self.endpoints())
            .field("current", &self.endpoint())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failing_over_cycles_through_every_member() {
        let endpoints = [
            "http://127.0.0.1:1",
            " http://127.0.0.1:2",
            "http://127.0.0.1:3",
            "",
        ]
        .map(String::from);
        let mut etcd = EtcdClient::connect(&endpoints).await.unwrap();
        let mut seen = vec![etcd.endpoint().to_owned()];
        for _ in 0..3 {
            etcd.fail_over();
            seen.push(etcd.endpoint().to_owned());
        }
        assert_eq!(
            seen,
            [
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:3",
                "http://127.0.0.1:1"
            ]
        );
    }

    #[tokio::test]
    async fn no_endpoints_is_an_error() {
        let err = EtcdClient::connect(&[" ".to_owned()]).await.unwrap_err();
        assert!(err.to_string().contains("no etcd endpoints"), "{err}");
    }
}
