//! Keeping one instance's record in etcd for as long as the process serves.
//!
//! [`Registration::spawn`] starts a background task that puts the record on a
//! lease, renews the lease every third of its TTL, and watches its own key.
//! It survives what etcd and operators do to it:
//!
//! - etcd unreachable: retry with backoff (at most a second apart), then
//!   renew the same lease, putting the key again to be sure it is there;
//! - lease gone (expired, revoked, or lost): grant a new one and put the key;
//! - key deleted behind its back: put it back on the same lease at once.
//!
//! The task starts whether or not etcd is up. [`Registration::deregister`]
//! revokes the lease, which deletes the key at once instead of leaving
//! callers a dead address until the TTL runs out.

use std::time::Duration;

use anyhow::{Context, anyhow};
use etcd_client::{EventType, PutOptions, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::etcd::EtcdClient;
use crate::record::ServiceRecord;
use crate::retry::{Backoff, HELD_LONG_ENOUGH, Outage, Subject, within};

/// What the registration does while etcd is down, for the outage log line.
const WHILE_DOWN: &str = "will keep retrying";

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
    pub fn spawn(etcd: EtcdClient, key: String, record: &ServiceRecord, ttl: Duration) -> Self {
        let (state_tx, _) = watch::channel(RegistrationState::Registering);
        Self::spawn_reporting(etcd, key, record, ttl, state_tx)
    }

    /// Like [`Registration::spawn`], publishing state changes on `state_tx`,
    /// whose receivers may have been handed out before the registration began.
    pub fn spawn_reporting(
        etcd: EtcdClient,
        key: String,
        record: &ServiceRecord,
        ttl: Duration,
        state_tx: watch::Sender<RegistrationState>,
    ) -> Self {
        state_tx.send_replace(RegistrationState::Registering);
        let state = state_tx.subscribe();
        let stop = CancellationToken::new();
        let keeper = Keeper {
            etcd,
            key: key.clone(),
            value: record.to_json(),
            ttl_secs: i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX),
            state: state_tx,
            stop: stop.clone(),
            outage: Outage::new(Subject::Key(key.clone())),
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

/// How holding the registration on one lease ended.
enum HoldEnd {
    /// etcd no longer knows the lease: a new one is needed.
    LeaseExpired,
    /// Someone deleted the key; the lease may still be good.
    KeyDeleted,
    /// etcd could not be reached; the lease may still be alive.
    Unreachable(anyhow::Error),
}

/// A granted lease.
#[derive(Debug, Clone, Copy)]
struct Lease {
    id: i64,
    /// The TTL etcd granted, which may exceed the one asked for.
    ttl_secs: i64,
}

/// The background task's state.
struct Keeper {
    /// Moves to another etcd member when one fails.
    etcd: EtcdClient,
    /// The key this instance owns, and the JSON record stored under it.
    key: String,
    value: String,
    /// The TTL asked for on every grant; etcd may grant more.
    ttl_secs: i64,
    /// Where state changes are published.
    state: watch::Sender<RegistrationState>,
    /// Cancelled by `deregister` or drop.
    stop: CancellationToken,
    /// Logs an etcd outage once, not per retry.
    outage: Outage,
}

impl Keeper {
    /// Keeps the key in etcd until stopped, then revokes the lease.
    async fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut lease: Option<Lease> = None;
        let stop = self.stop.clone();
        loop {
            let current = match lease {
                Some(current) => current,
                None => match stop.run_until_cancelled(self.grant()).await {
                    None => break,
                    Some(Ok(granted)) => {
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
                },
            };
            let started = Instant::now();
            let end = match stop.run_until_cancelled(self.hold(current)).await {
                None => break,
                Some(end) => end,
            };
            // A hold that lasted was a success: the next problem starts the
            // backoff from the beginning.
            let lasted = started.elapsed() >= HELD_LONG_ENOUGH;
            if lasted {
                backoff.reset();
            }
            let retry_at_once = match end {
                HoldEnd::LeaseExpired => {
                    warn!(key = %self.key, "lease gone from etcd; registering on a new lease");
                    self.set_state(RegistrationState::Registering);
                    lease = None;
                    lasted
                }
                HoldEnd::KeyDeleted => {
                    warn!(key = %self.key, "key deleted from etcd; putting it back");
                    self.set_state(RegistrationState::Registering);
                    lasted
                }
                HoldEnd::Unreachable(err) => {
                    self.failed(&err);
                    false
                }
            };
            // Put the key back at once, unless it keeps vanishing.
            if !retry_at_once && self.pause(backoff.next_delay()).await {
                break;
            }
        }
        if let Some(lease) = lease {
            self.revoke(lease.id).await;
        }
        self.set_state(RegistrationState::Deregistered);
    }

    /// Grants a lease of the configured TTL.
    async fn grant(&mut self) -> anyhow::Result<Lease> {
        let grant = within(self.etcd.client().lease_grant(self.ttl_secs, None))
            .await
            .context("granting a lease")?;
        Ok(Lease {
            id: grant.id(),
            ttl_secs: grant.ttl(),
        })
    }

    /// Puts the record on `lease`, then renews the lease every third of its
    /// TTL while watching the key, until something goes wrong.
    async fn hold(&mut self, lease: Lease) -> HoldEnd {
        let options = PutOptions::new().with_lease(lease.id);
        let put = within(self.etcd.client().put(
            self.key.as_str(),
            self.value.as_str(),
            Some(options),
        ))
        .await;
        let revision = match put {
            Ok(response) => response.header().map_or(0, |header| header.revision()),
            Err(err) if err.downcast_ref().is_some_and(lease_not_found) => {
                return HoldEnd::LeaseExpired;
            }
            Err(err) => return HoldEnd::Unreachable(err.context("putting the service record")),
        };
        // Watching from just after our own put, so a delete cannot slip in
        // between the put and the watch.
        let watch_options = WatchOptions::new().with_start_revision(revision + 1);
        let mut key_watch = match within(
            self.etcd
                .client()
                .watch(self.key.as_str(), Some(watch_options)),
        )
        .await
        {
            Ok(stream) => stream,
            Err(err) => return HoldEnd::Unreachable(err.context("watching the service record")),
        };
        let (mut keeper, mut answers) =
            match within(self.etcd.client().lease_keep_alive(lease.id)).await {
                Ok(pair) => pair,
                Err(err) if err.downcast_ref().is_some_and(lease_not_found) => {
                    return HoldEnd::LeaseExpired;
                }
                Err(err) => return HoldEnd::Unreachable(err.context("opening keep-alive stream")),
            };
        self.recovered();
        if *self.state.borrow() != RegistrationState::Registered {
            info!(key = %self.key, lease = format_args!("{:x}", lease.id), ttl_secs = lease.ttl_secs, "registered in etcd");
            self.set_state(RegistrationState::Registered);
        }

        let period = Duration::from_secs(lease.ttl_secs.max(1).unsigned_abs()) / 3;
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Err(err) = keeper.keep_alive().await {
                        return HoldEnd::Unreachable(anyhow!(err).context("sending keep-alive"));
                    }
                    // An answer later than the renewal period risks the lease
                    // lapsing: count it as etcd being unreachable.
                    match tokio::time::timeout(period, answers.message()).await {
                        Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                            debug!(key = %self.key, ttl_secs = answer.ttl(), "lease renewed");
                        }
                        Ok(Ok(Some(_))) => return HoldEnd::LeaseExpired,
                        Ok(Err(err)) if lease_not_found(&err) => return HoldEnd::LeaseExpired,
                        Ok(Ok(None)) => {
                            return HoldEnd::Unreachable(anyhow!("keep-alive stream closed by etcd"));
                        }
                        Ok(Err(err)) => {
                            return HoldEnd::Unreachable(anyhow!(err).context("keep-alive stream"));
                        }
                        Err(_) => {
                            return HoldEnd::Unreachable(anyhow!("etcd did not answer a keep-alive"));
                        }
                    }
                }
                event = key_watch.message() => match event {
                    Ok(Some(response)) => {
                        let deleted = response
                            .events()
                            .iter()
                            .any(|event| event.event_type() == EventType::Delete);
                        if deleted {
                            return HoldEnd::KeyDeleted;
                        }
                        if response.canceled() {
                            return HoldEnd::Unreachable(anyhow!("watch on the service record canceled"));
                        }
                    }
                    Ok(None) => {
                        return HoldEnd::Unreachable(anyhow!("watch on the service record closed"));
                    }
                    Err(err) => {
                        return HoldEnd::Unreachable(anyhow!(err).context("watching the service record"));
                    }
                },
            }
        }
    }

    /// Revokes the lease so the key disappears now rather than at TTL expiry.
    async fn revoke(&mut self, lease_id: i64) {
        let mut result = within(self.etcd.client().lease_revoke(lease_id)).await;
        if result.is_err() {
            // One more try on another member, still bounded for a quick exit.
            self.etcd.fail_over();
            result = within(self.etcd.client().lease_revoke(lease_id)).await;
        }
        match result {
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

    /// Logs a failed etcd request (once per outage) and moves to the next member.
    fn failed(&mut self, err: &anyhow::Error) {
        self.etcd.fail_over();
        self.outage.failed(err, WHILE_DOWN);
    }

    fn set_state(&self, state: RegistrationState) {
        self.state.send_replace(state);
    }

    fn recovered(&mut self) {
        self.outage.recovered();
    }
}

/// Whether etcd answered that the lease does not exist.
///
/// Opening a keep-alive for an unknown lease is reported by etcd-client as
/// its own error kind rather than as a gRPC status.
fn lease_not_found(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => status.code() == tonic::Code::NotFound,
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("not found"),
        _ => false,
    }
}
