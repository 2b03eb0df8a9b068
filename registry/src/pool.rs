//! Calling one of a service's instances, and another one when it is down.
//!
//! Each instance has its own lazily connected tonic channel. Calls go round
//! robin; a call that fails because its instance is unreachable (refused,
//! reset, UNAVAILABLE) or hangs is retried on the next instance within the
//! caller's deadline, and the instance that failed is tried last for a
//! while. A balancer that hides
//! which endpoint failed cannot do this: it keeps choosing a dead instance
//! (which fails fast, so looks idle) until its registration expires.
//!
//! Only idempotent calls should go through [`Pool::call`], since a call may
//! reach an instance that dies before answering and then be sent again.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::warn;

use crate::record::AdvertiseAddr;

/// How long an instance that failed is tried only after the others.
const SUSPECT_FOR: Duration = Duration::from_secs(3);

/// One instance and the channel to it.
#[derive(Debug)]
pub struct Member {
    /// The instance's etcd key, which identifies it.
    key: String,
    /// Where it is reached.
    address: AdvertiseAddr,
    /// Connects on first use and reconnects after failures.
    channel: Channel,
    /// When a call last found it unreachable; cleared by a success.
    failed_at: Mutex<Option<Instant>>,
}

impl Member {
    /// A member reached through `channel`.
    pub fn new(key: String, address: AdvertiseAddr, channel: Channel) -> Self {
        Self {
            key,
            address,
            channel,
            failed_at: Mutex::new(None),
        }
    }

    /// Where the instance is reached.
    pub fn address(&self) -> &AdvertiseAddr {
        &self.address
    }

    fn suspect(&self, now: Instant) -> bool {
        self.failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| now.duration_since(at) < SUSPECT_FOR)
    }

    fn record(&self, reachable: bool) {
        let mut failed_at = self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *failed_at = if reachable {
            None
        } else {
            Some(Instant::now())
        };
    }
}

/// The members at one moment, ordered by key.
pub type Members = Arc<Vec<Arc<Member>>>;

/// Why [`Pool::call`] gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No instance is known.
    #[error("no instance is registered in etcd")]
    NoInstances,
    /// The deadline passed before any instance answered.
    #[error("the deadline passed before an instance answered")]
    DeadlineExceeded,
    /// Every instance tried was unreachable or did not answer in time;
    /// holds the last failure.
    #[error("no instance could be reached: {}", .0.message())]
    Unreachable(Status),
    /// An instance answered with an error, which is returned as it is.
    #[error("{}", .0.message())]
    Refused(Status),
}

/// Whether a call failed because its instance could not be reached or went
/// away mid-call (connection refused or reset), rather than because the
/// instance answered with an error.
fn unreachable(status: &Status) -> bool {
    status.code() == Code::Unavailable
        || std::error::Error::source(status)
            .is_some_and(|source| source.is::<tonic::transport::Error>())
}

/// Round-robin calls with failover over a changing set of members.
#[derive(Debug)]
pub struct Pool {
    /// The current members, replaced as discovery sees changes.
    members: watch::Receiver<Members>,
    /// Where the next call starts, so load spreads over instances.
    next: AtomicUsize,
}

impl Pool {
    /// A pool over the members published on `members`.
    pub fn new(members: watch::Receiver<Members>) -> Self {
        Self {
            members,
            next: AtomicUsize::new(0),
        }
    }

    /// Whether any member is known.
    pub fn is_empty(&self) -> bool {
        self.members.borrow().is_empty()
    }

    /// Runs `call` with a member's channel and the time this attempt may
    /// take, moving on to the next member while members are unreachable or
    /// hang. Returns the first answer, or why there was none.
    ///
    /// While other members remain to be tried, an attempt gets half the time
    /// left, so one hung instance cannot use up the caller's whole deadline.
    pub async fn call<T, F, Fut>(&self, deadline: Instant, mut call: F) -> Result<T, CallError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let candidates = self.candidates();
        if candidates.is_empty() {
            return Err(CallError::NoInstances);
        }
        let last = candidates.len() - 1;
        let mut last_failure = None;
        for (index, member) in candidates.into_iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(CallError::DeadlineExceeded);
            }
            let budget = if index < last {
                remaining / 2
            } else {
                remaining
            };
            let outcome = tokio::time::timeout(budget, call(member.channel.clone(), budget)).await;
            let status = match outcome {
                Ok(Ok(answer)) => {
                    member.record(true);
                    return Ok(answer);
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded("the attempt ran out of time"),
            };
            if Instant::now() >= deadline {
                return Err(CallError::DeadlineExceeded);
            }
            let timed_out = matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled);
            if !unreachable(&status) && !timed_out {
                return Err(CallError::Refused(status));
            }
            warn!(
                key = %member.key,
                address = %member.address,
                error = %status.message(),
                "instance unreachable or not answering; trying another"
            );
            member.record(false);
            last_failure = Some(status);
        }
        Err(last_failure.map_or(CallError::NoInstances, CallError::Unreachable))
    }

    /// The members in the order to try them: round robin from the next
    /// start, with recently failed members moved to the end.
    fn candidates(&self) -> Vec<Arc<Member>> {
        let members = Arc::clone(&self.members.borrow());
        if members.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % members.len();
        let now = Instant::now();
        let (mut healthy, suspect): (Vec<_>, Vec<_>) = members[start..]
            .iter()
            .chain(&members[..start])
            .cloned()
            .partition(|member| !member.suspect(now));
        healthy.extend(suspect);
        healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(names: &[&str]) -> (watch::Sender<Members>, Pool) {
        let list = names
            .iter()
            .map(|name| {
                let address: AdvertiseAddr = format!("{name}:1").parse().unwrap();
                let channel = Channel::from_shared(address.http_uri())
                    .unwrap()
                    .connect_lazy();
                Arc::new(Member::new((*name).to_owned(), address, channel))
            })
            .collect();
        let (tx, rx) = watch::channel(Arc::new(list));
        (tx, Pool::new(rx))
    }

    fn order(pool: &Pool) -> Vec<String> {
        pool.candidates().iter().map(|m| m.key.clone()).collect()
    }

    #[tokio::test]
    async fn calls_start_round_robin() {
        let (_tx, pool) = members(&["a", "b", "c"]);
        assert_eq!(order(&pool), ["a", "b", "c"]);
        assert_eq!(order(&pool), ["b", "c", "a"]);
        assert_eq!(order(&pool), ["c", "a", "b"]);
    }

    #[tokio::test]
    async fn a_failed_member_is_tried_last_until_it_answers_again() {
        let (_tx, pool) = members(&["a", "b", "c"]);
        pool.candidates()[0].record(false);
        assert_eq!(order(&pool), ["b", "c", "a"]);
        assert_eq!(order(&pool), ["c", "b", "a"]);
        pool.members.borrow()[0].record(true);
        assert_eq!(order(&pool), ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn unreachable_members_are_skipped_and_refusals_returned() {
        let (_tx, pool) = members(&["a", "b", "c"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        let attempts = AtomicUsize::new(0);
        let answer = pool
            .call(deadline, |_, _| {
                let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
                async move {
                    match attempt {
                        1 | 2 => Err(Status::unavailable("connection refused")),
                        _ => Ok(attempt),
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(answer, 3);

        let refused = pool
            .call(deadline, |_, _| async {
                Err::<(), _>(Status::not_found("no vessel"))
            })
            .await;
        assert!(matches!(refused, Err(CallError::Refused(s)) if s.code() == Code::NotFound));

        let all_down = pool
            .call(deadline, |_, _| async {
                Err::<(), _>(Status::unavailable("down"))
            })
            .await;
        assert!(matches!(all_down, Err(CallError::Unreachable(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_member_gets_half_the_time_and_the_next_one_answers() {
        let (_tx, pool) = members(&["hung", "fine"]);
        let deadline = Instant::now() + Duration::from_secs(4);
        let budgets = Mutex::new(Vec::new());
        let answer = pool
            .call(deadline, |_, budget| {
                budgets.lock().unwrap().push(budget);
                let first = budgets.lock().unwrap().len() == 1;
                async move {
                    if first {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, Status>("answered")
                }
            })
            .await
            .unwrap();
        assert_eq!(answer, "answered");
        let budgets = budgets.lock().unwrap().clone();
        assert_eq!(budgets[0], Duration::from_secs(2));
        assert!(budgets[1] <= Duration::from_secs(2), "{budgets:?}");
        assert!(Instant::now() < deadline);
    }

    #[tokio::test]
    async fn an_empty_pool_says_so_at_once() {
        let (_tx, pool) = members(&[]);
        let result = pool
            .call(Instant::now() + Duration::from_secs(5), |_, _| async {
                Ok::<_, Status>(())
            })
            .await;
        assert!(matches!(result, Err(CallError::NoInstances)));
    }
}
