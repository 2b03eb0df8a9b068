//! Log lines a client can cause cheaply, rate-limited: a few written one by
//! one, the rest counted and reported in one summary line.
//!
//! A call abandoned before its request was complete, a connection that never
//! finished its HTTP/2 handshake, an accept that failed for lack of file
//! descriptors: each costs a client next to nothing to cause, thousands a
//! second, and one line each would bury everything else in the log (and
//! fill the disk). Each such kind of line has a [`LogBudget`]: the first
//! [`LogBudget::new`]`(…, per_window)` lines of each [`WINDOW`] are written,
//! and [`report`] writes one line per window saying how many more there were.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing::{info, warn};

/// How often suppressed lines are summarised, and the period each budget
/// refills over. Five seconds keeps a sustained flood to a couple of lines
/// a second per kind while a summary still follows its burst closely.
pub const WINDOW: Duration = Duration::from_secs(5);

/// Whether a kind of line is an operator's concern or a client's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Caused by a client; the service is fine.
    Info,
    /// The service itself is short of something.
    Warn,
}

/// The allowance of one kind of log line.
#[derive(Debug)]
pub struct LogBudget {
    /// What the lines are about, plural, for the summary: "calls whose
    /// callers went away".
    what: &'static str,
    severity: Severity,
    /// Lines written one by one per window.
    per_window: u32,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Lines written in this window.
    written: u32,
    /// Lines not written in this window.
    suppressed: u64,
}

impl LogBudget {
    /// A budget of `per_window` lines about `what` per [`WINDOW`].
    pub fn new(what: &'static str, severity: Severity, per_window: u32) -> Arc<Self> {
        Arc::new(Self {
            what,
            severity,
            per_window,
            counts: Mutex::default(),
        })
    }

    /// Whether a line may be written now; if not, it is counted for the
    /// window's summary instead.
    pub fn admit(&self) -> bool {
        // Counting goes on even if a thread panicked while holding the lock.
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.written < self.per_window {
            counts.written += 1;
            true
        } else {
            counts.suppressed += 1;
            false
        }
    }

    /// Starts a new window, returning how many lines the last one suppressed.
    fn refill(&self) -> u64 {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *counts).suppressed
    }

    /// Writes the summary of the window that ends now, if it suppressed anything.
    fn summarise(&self) {
        let suppressed = self.refill();
        if suppressed == 0 {
            return;
        }
        let window_secs = WINDOW.as_secs();
        match self.severity {
            Severity::Info => info!(
                suppressed,
                window_secs,
                "{suppressed} more {} in the last {window_secs}s, not logged one by one",
                self.what
            ),
            Severity::Warn => warn!(
                suppressed,
                window_secs,
                "{suppressed} more {} in the last {window_secs}s, not logged one by one",
                self.what
            ),
        }
    }
}

/// Every [`WINDOW`], refills `budgets` and summarises what each suppressed.
/// Runs until dropped.
pub async fn report(budgets: Vec<Arc<LogBudget>>) {
    let mut ticks = tokio::time::interval(WINDOW);
    // The first tick is immediate; a window starts with it.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        for budget in &budgets {
            budget.summarise();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_admits_its_allowance_then_counts_until_refilled() {
        let budget = LogBudget::new("things", Severity::Info, 2);
        assert!(budget.admit());
        assert!(budget.admit());
        assert!(!budget.admit());
        assert!(!budget.admit());
        assert_eq!(budget.refill(), 2);
        assert!(budget.admit());
        assert_eq!(budget.refill(), 0);
    }
}
