//! How the registry treats an etcd that does not answer, in one place: the
//! time one request may take, the pause between attempts, and how an outage
//! is logged.
//!
//! Registration, discovery and the catalog all retry etcd the same way:
//! each request gets [`REQUEST_TIMEOUT`]; between failed attempts the pause
//! grows exponentially with random jitter (so a fleet of instances that lost
//! etcd together does not hammer it in step when it comes back), and never
//! exceeds a second so recovery is noticed promptly; an outage is logged
//! once as a warning when it starts and once when etcd answers again, with
//! each retry in between at debug.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tracing::{debug, info, warn};

/// How long one etcd request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The first pause after a failure. Jitter adds up to as much again.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause before jitter; with it, attempts stay under a second apart.
const LONGEST_PAUSE: Duration = Duration::from_millis(500);
/// How long a watch or a lease must have held before its end counts as a
/// fresh problem, starting the pauses again from the first.
pub const HELD_LONG_ENOUGH: Duration = Duration::from_secs(1);

/// Runs one etcd request, failing it after [`REQUEST_TIMEOUT`].
pub async fn within<T>(
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.map_err(anyhow::Error::from),
        Err(_) => Err(anyhow!("etcd did not answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// The pauses between attempts while etcd fails: exponential, jittered,
/// capped, and never running out.
#[derive(Debug)]
pub struct Backoff {
    /// The pauses still to come since the last success.
    delays: ExponentialBackoff,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { delays: schedule() }
    }
}

impl Backoff {
    /// The pause to take now.
    pub fn next_delay(&mut self) -> Duration {
        // The schedule has no attempt limit, so it never ends.
        self.delays.next().unwrap_or(LONGEST_PAUSE)
    }

    /// Starts again from the first pause, after a success.
    pub fn reset(&mut self) {
        self.delays = schedule();
    }
}

fn schedule() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(FIRST_PAUSE)
        .with_max_delay(LONGEST_PAUSE)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Whether etcd is failing, so that an outage is logged when it starts and
/// when it ends rather than once per retry.
#[derive(Debug)]
pub struct Outage {
    /// What the log lines are about, e.g. `key=/shippy/services/x/1`.
    subject: Subject,
    /// Whether the last attempt failed.
    failing: bool,
}

/// The field that names what an outage affects in its log lines.
#[derive(Debug, Clone)]
pub enum Subject {
    /// An instance's registration, by its etcd key.
    Key(String),
    /// A followed service, by name.
    Service(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(key) => f.write_str(key),
            Self::Service(service) => f.write_str(service),
        }
    }
}

impl Outage {
    /// No outage yet, for `subject`.
    pub fn new(subject: Subject) -> Self {
        Self {
            subject,
            failing: false,
        }
    }

    /// Notes a failed attempt; `consequence` says what happens meanwhile.
    pub fn failed(&mut self, err: &anyhow::Error, consequence: &str) {
        let error = format!("{err:#}");
        match (&self.subject, self.failing) {
            (Subject::Key(key), true) => debug!(%key, %error, "etcd still unreachable"),
            (Subject::Service(service), true) => {
                debug!(%service, %error, "etcd still unreachable");
            }
            (Subject::Key(key), false) => warn!(%key, %error, "etcd unreachable; {consequence}"),
            (Subject::Service(service), false) => {
                warn!(%service, %error, "etcd unreachable; {consequence}");
            }
        }
        self.failing = true;
    }

    /// Notes a successful attempt, logging the end of an outage.
    pub fn recovered(&mut self) {
        if self.failing {
            match &self.subject {
                Subject::Key(key) => info!(%key, "etcd reachable again"),
                Subject::Service(service) => info!(%service, "etcd reachable again"),
            }
            self.failing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_stay_under_a_second_and_restart_after_a_reset() {
        let mut backoff = Backoff::default();
        let pauses: Vec<_> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(
            pauses[0] >= FIRST_PAUSE && pauses[0] < 2 * FIRST_PAUSE,
            "{pauses:?}"
        );
        assert!(
            pauses.iter().all(|pause| *pause < 2 * LONGEST_PAUSE),
            "{pauses:?}"
        );
        assert!(
            pauses[10..].iter().all(|pause| *pause >= LONGEST_PAUSE),
            "{pauses:?}"
        );
        backoff.reset();
        assert!(backoff.next_delay() < 2 * FIRST_PAUSE);
    }

    #[test]
    fn jitter_spreads_instances_that_failed_together() {
        let firsts: std::collections::BTreeSet<_> =
            (0..20).map(|_| Backoff::default().next_delay()).collect();
        assert!(firsts.len() > 1, "{firsts:?}");
    }
}
