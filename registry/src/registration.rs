//! Keeping one instance's record in etcd for as long as the process serves.
//!
//! [`Registration::spawn`] starts a background task that puts the record on a
//! lease and renews the lease at a third of its TTL. The task survives etcd
//! outages: it retries with backoff, renews the same lease when etcd comes
//! back, and grants a new lease (putting the key again) when etcd says the old
//! one has expired. [`Registration::deregister`] revokes the lease, which
//! deletes the key at once instead of leaving callers a dead address until
//! the TTL runs out.

use std::time::Duration;

use anyhow::{Context, anyhow};
use etcd_client::{Client, PutOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::record::ServiceRecord;

/// How long a single etcd request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The first and the longest pause between attempts while etcd is unreachable.
const RETRY_INITIAL: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(3);

/// Where the instance's registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationState {
    /// Not (or no longer) in etcd; the task is trying to put it there.
    Registering,
    /// The record is in etcd on a live lease.
    Registered,
    /// The record was removed on shutdown (or left to expire if etcd was down).
    Deregistered,
}

/// A running registration. Dropping it deregisters in the background;
/// [`Registration::deregister`] does so and waits.
#[derive(Debug)]
pub struct Registration {
    /// The etcd key this instance owns.
    key: String,
    /// Published by the task on every state change, for health and tests.
    state: watch::Receiver<RegistrationState>,
    /// Tells the task to revoke the lease and stop.
    stop: CancellationToken,
    /// The task, taken by `deregister` to wait for the revoke.
    task: Option<JoinHandle<()>>,
}

impl Registration {
    /// Starts keeping `record` under `key` on a lease of `ttl`.
    ///
    /// Returns at once; the record appears in etcd as soon as etcd answers.
    pub fn spawn(client: Client, key: String, record: &ServiceRecord, ttl: Duration) -> Self {
        let (state_tx, _) = watch::channel(RegistrationState::Registering);
        Self::spawn_reporting(client, key, record, ttl, state_tx)
    }

    /// Like [`Registration::spawn`], publishing state changes on `state_tx`,
    /// whose receivers may have been handed out before the registration began.
    pub fn spawn_reporting(
        client: Client,
        key: String,
        record: &ServiceRecord,
        ttl: Duration,
        state_tx: watch::Sender<RegistrationState>,
    ) -> Self {
        state_tx.send_replace(RegistrationState::Registering);
        let state = state_tx.subscribe();
        let stop = CancellationToken::new();
        let keeper = Keeper {
            client,
            key: key.clone(),
            value: record.to_json(),
            ttl_secs: i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX),
            state: state_tx,
            stop: stop.clone(),
            etcd_failing: false,
        };
        let task = tokio::spawn(keeper.run());
        Self {
            key,
            state,
            stop,
            task: Some(task),
        }
    }

    /// The etcd key this instance owns.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A receiver that sees every state change.
    pub fn state(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// Removes the record from etcd and waits until that is done or has
    /// failed (the lease then expires on its own).
    pub async fn deregister(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take()
            && let Err(err) = task.await
        {
            warn!(key = %self.key, error = %err, "registration task ended abnormally");
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How a keep-alive session ended.
enum KeepAliveEnd {
    /// etcd no longer knows the lease: the key is gone and must be put again.
    LeaseExpired,
    /// etcd could not be reached; the lease may still be alive.
    Unreachable(anyhow::Error),
}

/// The background task's state.
struct Keeper {
    /// Shared with the rest of the process; cheap to clone.
    client: Client,
    /// The key this instance owns, and the JSON record stored under it.
    key: String,
    value: String,
    /// The TTL asked for on every grant; etcd may grant more.
    ttl_secs: i64,
    /// Where state changes are published.
    state: watch::Sender<RegistrationState>,
    /// Cancelled by `deregister` or drop.
    stop: CancellationToken,
    /// Whether the last attempt failed, so an outage is logged once, not per retry.
    etcd_failing: bool,
}

impl Keeper {
    async fn run(mut self) {
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        let mut lease: Option<(i64, i64)> = None;
        loop {
            let (lease_id, granted_ttl) = match lease {
                Some(lease) => lease,
                None => {
                    let stop = self.stop.clone();
                    match stop.run_until_cancelled(self.put_on_new_lease()).await {
                        None => break,
                        Some(Ok(granted)) => {
                            self.recovered();
                            info!(key = %self.key, lease = format_args!("{:x}", granted.0), ttl_secs = granted.1, "registered in etcd");
                            self.state.send_replace(RegistrationState::Registered);
                            backoff.reset();
                            lease = Some(granted);
                            granted
                        }
                        Some(Err(err)) => {
                            self.failed(&err);
                            if self.pause(backoff.next_delay()).await {
                                break;
                            }
                            continue;
                        }
                    }
                }
            };
            let stop = self.stop.clone();
            match stop
                .run_until_cancelled(self.keep_alive(lease_id, granted_ttl))
                .await
            {
                None => break,
                Some(KeepAliveEnd::LeaseExpired) => {
                    warn!(key = %self.key, "lease expired in etcd; registering again");
                    self.state.send_replace(RegistrationState::Registering);
                    lease = None;
                }
                Some(KeepAliveEnd::Unreachable(err)) => {
                    self.failed(&err);
                    if self.pause(backoff.next_delay()).await {
                        break;
                    }
                }
            }
        }
        if let Some((lease_id, _)) = lease {
            self.revoke(lease_id).await;
        }
        self.state.send_replace(RegistrationState::Deregistered);
    }

    /// Grants a lease and puts the record on it; returns the lease id and the
    /// TTL etcd granted (which may be larger than asked for).
    async fn put_on_new_lease(&mut self) -> anyhow::Result<(i64, i64)> {
        let grant = within(self.client.lease_grant(self.ttl_secs, None))
            .await
            .context("granting a lease")?;
        let options = PutOptions::new().with_lease(grant.id());
        within(
            self.client
                .put(self.key.as_str(), self.value.as_str(), Some(options)),
        )
        .await
        .context("putting the service record")?;
        Ok((grant.id(), grant.ttl()))
    }

    /// Renews the lease every third of its TTL until etcd fails or the lease is gone.
    async fn keep_alive(&mut self, lease_id: i64, ttl_secs: i64) -> KeepAliveEnd {
        let period = Duration::from_secs(ttl_secs.max(1).unsigned_abs()) / 3;
        let (mut keeper, mut responses) = match within(self.client.lease_keep_alive(lease_id)).await
        {
            Ok(pair) => pair,
            Err(err) if err.downcast_ref().is_some_and(lease_not_found) => {
                return KeepAliveEnd::LeaseExpired;
            }
            Err(err) => return KeepAliveEnd::Unreachable(err.context("opening keep-alive stream")),
        };
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            if let Err(err) = keeper.keep_alive().await {
                return KeepAliveEnd::Unreachable(anyhow!(err).context("sending keep-alive"));
            }
            match tokio::time::timeout(period.max(REQUEST_TIMEOUT), responses.message()).await {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                    self.recovered();
                    debug!(key = %self.key, ttl_secs = answer.ttl(), "lease renewed");
                }
                Ok(Ok(Some(_))) => return KeepAliveEnd::LeaseExpired,
                Ok(Ok(None)) => {
                    return KeepAliveEnd::Unreachable(anyhow!("keep-alive stream closed by etcd"));
                }
                Ok(Err(err)) if lease_not_found(&err) => return KeepAliveEnd::LeaseExpired,
                Ok(Err(err)) => {
                    return KeepAliveEnd::Unreachable(anyhow!(err).context("keep-alive stream"));
                }
                Err(_) => {
                    return KeepAliveEnd::Unreachable(anyhow!("etcd did not answer a keep-alive"));
                }
            }
        }
    }

    /// Revokes the lease so the key disappears now rather than at TTL expiry.
    async fn revoke(&mut self, lease_id: i64) {
        match within(self.client.lease_revoke(lease_id)).await {
            Ok(_) => info!(key = %self.key, "deregistered from etcd"),
            Err(err) => warn!(
                key = %self.key,
                error = format!("{err:#}"),
                ttl_secs = self.ttl_secs,
                "could not deregister; the record expires with its lease"
            ),
        }
    }

    /// Waits `delay` unless told to stop first; returns whether to stop.
    async fn pause(&self, delay: Duration) -> bool {
        self.stop
            .run_until_cancelled(tokio::time::sleep(delay))
            .await
            .is_none()
    }

    fn failed(&mut self, err: &anyhow::Error) {
        if self.etcd_failing {
            debug!(key = %self.key, error = format!("{err:#}"), "etcd still unreachable");
        } else {
            warn!(key = %self.key, error = format!("{err:#}"), "etcd unreachable; will keep retrying");
            self.etcd_failing = true;
        }
    }

    fn recovered(&mut self) {
        if self.etcd_failing {
            info!(key = %self.key, "etcd reachable again");
            self.etcd_failing = false;
        }
    }
}

/// Runs one etcd request with the request timeout.
async fn within<T>(
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.map_err(anyhow::Error::from),
        Err(_) => Err(anyhow!("etcd did not answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// Whether etcd answered that the lease does not exist.
fn lease_not_found(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::NotFound)
}
