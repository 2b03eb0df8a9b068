//! The process-wide stop signal: SIGINT (Ctrl-C), SIGTERM or SIGHUP; and a
//! second one, which cuts a drain short.
//!
//! SIGHUP stops the service like SIGTERM: its default action would kill the
//! process without deregistering, leaving its key in etcd for a whole lease
//! (a closed terminal or a supervisor's hang-up would do that). A second
//! stop signal while the server drains means "now": the server abandons
//! its in-flight calls and the process exits non-zero, having already
//! deregistered.
//!
//! The signals are counted from the first [`signal`] call on, by one
//! background task, so a second signal is seen however soon it follows the
//! first. A process that never calls [`signal`] (a test that stops a server
//! with its own future) installs no handlers.

use std::sync::OnceLock;

use tokio::signal::unix::{Signal, SignalKind, signal as listen_for};
use tokio::sync::watch;
use tracing::{info, warn};

/// The number of stop signals received, once listening started.
static STOPS: OnceLock<watch::Receiver<u32>> = OnceLock::new();

/// Resolves when the process is asked to stop, by SIGINT, SIGTERM or SIGHUP.
pub async fn signal() {
    let mut stops = STOPS.get_or_init(listen).clone();
    // An error means the counting task ended, which it does only with the
    // runtime; nothing will stop the process by signal then.
    if stops.wait_for(|stops| *stops >= 1).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves once a second stop signal has arrived, at once if one already
/// has; never if [`signal`] was never called.
pub async fn repeated() {
    let Some(stops) = STOPS.get() else {
        return std::future::pending().await;
    };
    let mut stops = stops.clone();
    if stops.wait_for(|stops| *stops >= 2).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Installs the handlers (now, so no signal after this call is missed) and
/// counts signals in a background task.
fn listen() -> watch::Receiver<u32> {
    let (count, stops) = watch::channel(0);
    let mut kinds = [
        ("SIGINT", SignalKind::interrupt()),
        ("SIGTERM", SignalKind::terminate()),
        ("SIGHUP", SignalKind::hangup()),
    ]
    .map(|(name, kind)| {
        let stream = listen_for(kind)
            .inspect_err(|err| warn!(error = %err, "cannot listen for {name}"))
            .ok();
        (name, stream)
    });
    tokio::spawn(async move {
        loop {
            let [(interrupt, a), (terminate, b), (hangup, c)] = &mut kinds;
            let name = tokio::select! {
                () = next(a) => *interrupt,
                () = next(b) => *terminate,
                () = next(c) => *hangup,
            };
            count.send_modify(|stops| *stops += 1);
            if *count.borrow() == 1 {
                info!("received {name}");
            } else {
                warn!("received {name} again: stopping now, abandoning in-flight calls");
            }
        }
    });
    stops
}

/// The next delivery of a signal; never, if it cannot be listened for.
async fn next(stream: &mut Option<Signal>) {
    if let Some(stream) = stream
        && stream.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}
