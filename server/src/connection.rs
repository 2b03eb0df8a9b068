//! Which connections the server accepts and keeps: at most a fixed number
//! at once, each given a bounded time to start HTTP/2.
//!
//! hyper and tonic bound what happens on a connection once it speaks
//! HTTP/2 (streams, keepalive pings, see [`crate::config`]), but not the
//! time before: a client that connects and sends nothing, or part of the
//! preface, holds a descriptor for ever, and enough of them exhaust the
//! process's descriptors so that neither new callers nor etcd can be
//! reached. So every accepted connection is a [`GuardedStream`] that fails
//! its reads once `--handshake-timeout` passes without the HTTP/2 preface
//! and first SETTINGS frame, and [`Admission`] counts open connections:
//!
//! - at most `--max-connections`, and never more than the open-files limit
//!   minus [`RESERVED_FDS`] (the soft limit is first raised to the hard one,
//!   [`raise_open_files_limit`]);
//! - at the limit, a new connection displaces the oldest one still in its
//!   handshake, so that a flood of silent connections cannot lock out a
//!   real client, whose handshake takes one round trip;
//! - when every connection has finished its handshake, accepting waits
//!   (new connections queue in the kernel's backlog) until one closes.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, info, warn};

use crate::log_budget::{LogBudget, Severity};

/// Descriptors kept back from connections for everything else the process
/// opens: the etcd client's connections, the consignment store's files (an
/// SQLite database, its WAL and shared memory per pooled connection) or
/// PostgreSQL sockets, channels to vessel-service instances, the runtime's
/// epoll and wake-up descriptors, and stdio. These come to a few dozen;
/// the rest is margin.
pub const RESERVED_FDS: u64 = 128;

/// How long accepting pauses after an accept error (such as running out of
/// descriptors), instead of retrying in a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The client connection preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`
/// (RFC 9113, section 3.4).
const PREFACE_LEN: usize = 24;
/// A frame header: length (3 bytes), type, flags, stream id (4 bytes).
const FRAME_HEADER_LEN: usize = 9;

/// Displaced connections that may still hold their descriptor (their task
/// has yet to run and close them) before accepting waits for them: the
/// accept loop can accept many connections in one turn, and without this
/// bound each would displace one more while the displaced ones still count
/// against the open-files limit. Well within [`RESERVED_FDS`].
const MAX_CLOSING: usize = 16;

/// Individual log lines per [`crate::log_budget::WINDOW`] for each kind of
/// connection event; the rest are summarised.
const LINES_PER_WINDOW: u32 = 5;

/// Raises the soft limit on open files to the hard limit, so that the
/// connection cap can be as high as the system allows an unprivileged
/// process. Failing to is logged, not fatal: the cap then follows the
/// lower limit.
pub fn raise_open_files_limit() {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open files limit"),
            Err(err) => warn!(
                error = %err,
                soft,
                hard,
                "cannot raise the open files limit to its hard limit"
            ),
        },
        Ok(_) => {}
        Err(err) => warn!(error = %err, "cannot read the open files limit"),
    }
}

/// The most connections to keep: `configured`, but never more than the
/// open-files limit leaves once [`RESERVED_FDS`] are kept back.
pub fn connection_limit(configured: u32) -> usize {
    let configured = u64::from(configured);
    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => configured.min(soft.saturating_sub(RESERVED_FDS)).max(1),
        Err(err) => {
            warn!(error = %err, "cannot read the open files limit");
            configured
        }
    };
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// The count of open connections and the ones still in their handshake,
/// shared by the accept loop and every [`GuardedStream`].
#[derive(Debug)]
pub struct Admission {
    /// Connections open at once, at most.
    limit: usize,
    handshake_timeout: Duration,
    state: Mutex<AdmissionState>,
    /// Signalled when a connection closes.
    closed: Notify,
    late_handshakes: Arc<LogBudget>,
    displaced: Arc<LogBudget>,
    full: Arc<LogBudget>,
    accept_errors: Arc<LogBudget>,
}

#[derive(Debug, Default)]
struct AdmissionState {
    open: usize,
    next_id: u64,
    /// Connections still in their handshake, oldest first, with what
    /// displaces each one.
    handshaking: BTreeMap<u64, (SocketAddr, oneshot::Sender<()>)>,
}

impl Admission {
    /// Admission of at most `limit` connections, each with
    /// `handshake_timeout` to start HTTP/2.
    pub fn new(limit: usize, handshake_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            limit,
            handshake_timeout,
            state: Mutex::default(),
            closed: Notify::new(),
            late_handshakes: LogBudget::new(
                "connections closed for not starting HTTP/2 in time",
                Severity::Info,
                LINES_PER_WINDOW,
            ),
            displaced: LogBudget::new(
                "connections in their handshake closed to make room",
                Severity::Info,
                LINES_PER_WINDOW,
            ),
            full: LogBudget::new(
                "times the connection limit held new connections back",
                Severity::Warn,
                1,
            ),
            accept_errors: LogBudget::new("failed accepts", Severity::Warn, LINES_PER_WINDOW),
        })
    }

    /// The log budgets of connection events, for [`crate::log_budget::report`].
    pub fn log_budgets(&self) -> Vec<Arc<LogBudget>> {
        vec![
            self.late_handshakes.clone(),
            self.displaced.clone(),
            self.full.clone(),
            self.accept_errors.clone(),
        ]
    }

    /// The connection limit in force.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AdmissionState> {
        // The counts stay meaningful even if a thread panicked holding them.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a connection can be accepted: one is below the limit, or
    /// one still in its handshake can be displaced (and few displaced ones
    /// are still closing).
    async fn room(&self) {
        loop {
            let closed = self.closed.notified();
            let full = {
                let state = self.state();
                if state.open < self.limit
                    || (!state.handshaking.is_empty() && state.open < self.limit + MAX_CLOSING)
                {
                    return;
                }
                state.handshaking.is_empty()
            };
            if full && self.full.admit() {
                warn!(
                    limit = self.limit,
                    "all {} connections are open and past their handshake; \
                     new connections wait until one closes",
                    self.limit
                );
            }
            closed.await;
        }
    }

    /// Counts `stream` in, displacing the oldest connection still in its
    /// handshake if the limit is reached.
    fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) -> GuardedStream {
        let (displace, displaced) = oneshot::channel();
        let id = {
            let mut state = self.state();
            if state.open >= self.limit
                && let Some((_, (oldest, displace_oldest))) = state.handshaking.pop_first()
            {
                // A send fails only if that connection is closing already.
                let _ = displace_oldest.send(());
                if self.displaced.admit() {
                    info!(
                        peer = %oldest,
                        limit = self.limit,
                        "closing a connection still in its handshake to make room for a new one"
                    );
                }
            }
            state.open += 1;
            let id = state.next_id;
            state.next_id += 1;
            state.handshaking.insert(id, (peer, displace));
            id
        };
        GuardedStream {
            inner: stream,
            peer,
            handshake: Some(Handshake {
                seen: 0,
                frame_header: [0; FRAME_HEADER_LEN],
                needed: PREFACE_LEN + FRAME_HEADER_LEN,
                deadline: Box::pin(tokio::time::sleep(self.handshake_timeout)),
                displaced,
            }),
            refused: false,
            admission: self.clone(),
            id,
        }
    }
}

/// Accepted connections, as [`GuardedStream`]s, with Nagle's algorithm off
/// (small gRPC messages should not wait), admitted by `admission`.
pub fn accept(
    listener: TcpListener,
    admission: Arc<Admission>,
) -> impl Stream<Item = io::Result<GuardedStream>> {
    futures::stream::unfold((listener, admission), |(listener, admission)| async move {
        loop {
            admission.room().await;
            match listener.accept().await {
                Ok((stream, peer)) => {
                    if let Err(err) = stream.set_nodelay(true) {
                        debug!(error = %err, "cannot set TCP_NODELAY");
                    }
                    let guarded = admission.admit(stream, peer);
                    return Some((Ok(guarded), (listener, admission)));
                }
                Err(err) => {
                    if admission.accept_errors.admit() {
                        warn!(error = %err, "cannot accept a connection; pausing");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    })
}

/// Why a connection was closed before it started HTTP/2.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// The handshake timeout passed.
    TooSlow,
    /// A newer connection needed its place.
    Displaced,
}

/// An accepted connection: reads fail once the handshake timeout passes
/// before the preface and first SETTINGS frame arrived, or when a newer
/// connection displaces it; closing it frees its place.
#[derive(Debug)]
pub struct GuardedStream {
    inner: TcpStream,
    peer: SocketAddr,
    /// Until the handshake is complete.
    handshake: Option<Handshake>,
    /// Set once the connection is refused; reads fail from then on.
    refused: bool,
    admission: Arc<Admission>,
    id: u64,
}

/// How far a connection's handshake has come.
#[derive(Debug)]
struct Handshake {
    /// Bytes received so far.
    seen: usize,
    /// The header of the frame after the preface, as far as received.
    frame_header: [u8; FRAME_HEADER_LEN],
    /// Bytes that complete the preface and the first frame; known in full
    /// once that frame's header is in.
    needed: usize,
    deadline: Pin<Box<Sleep>>,
    displaced: oneshot::Receiver<()>,
}

impl Handshake {
    /// Counts `bytes` received; true once the preface and first frame are in.
    fn received(&mut self, mut bytes: &[u8]) -> bool {
        while self.seen < PREFACE_LEN + FRAME_HEADER_LEN {
            let Some((&byte, rest)) = bytes.split_first() else {
                return false;
            };
            if let Some(slot) = self
                .seen
                .checked_sub(PREFACE_LEN)
                .and_then(|at| self.frame_header.get_mut(at))
            {
                *slot = byte;
            }
            self.seen += 1;
            bytes = rest;
        }
        if self.needed == PREFACE_LEN + FRAME_HEADER_LEN {
            let [a, b, c, ..] = self.frame_header;
            let length = u32::from_be_bytes([0, a, b, c]);
            self.needed += usize::try_from(length).unwrap_or(usize::MAX);
        }
        self.seen = self.seen.saturating_add(bytes.len());
        self.seen >= self.needed
    }

    /// Whether the connection must be closed now.
    fn poll_refused(&mut self, cx: &mut Context<'_>) -> Option<Refusal> {
        if let Poll::Ready(Ok(())) = Pin::new(&mut self.displaced).poll(cx) {
            return Some(Refusal::Displaced);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Some(Refusal::TooSlow);
        }
        None
    }
}

impl GuardedStream {
    /// Records a refusal, logs it (within budget) and makes it this read's error.
    fn refuse(&mut self, refusal: Refusal) -> io::Error {
        self.handshake = None;
        self.refused = true;
        let admission = &self.admission;
        match refusal {
            Refusal::TooSlow => {
                let secs = admission.handshake_timeout.as_secs();
                if admission.late_handshakes.admit() {
                    info!(
                        peer = %self.peer,
                        "closing a connection that did not start HTTP/2 within {secs}s"
                    );
                }
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no HTTP/2 preface and SETTINGS within {secs}s"),
                )
            }
            Refusal::Displaced => io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "displaced by a newer connection at the connection limit",
            ),
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.refused {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection was closed before it started HTTP/2",
            )));
        }
        if let Some(refusal) = this.handshake.as_mut().and_then(|h| h.poll_refused(cx)) {
            return Poll::Ready(Err(this.refuse(refusal)));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let handshake_done = match (&mut this.handshake, buf.filled().get(before..)) {
            (Some(handshake), Some(received)) => handshake.received(received),
            _ => false,
        };
        if handshake_done {
            this.handshake = None;
            this.admission.state().handshaking.remove(&this.id);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        {
            let mut state = self.admission.state();
            state.open = state.open.saturating_sub(1);
            state.handshaking.remove(&self.id);
        }
        self.admission.closed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake() -> Handshake {
        let (_, displaced) = oneshot::channel();
        Handshake {
            seen: 0,
            frame_header: [0; FRAME_HEADER_LEN],
            needed: PREFACE_LEN + FRAME_HEADER_LEN,
            deadline: Box::pin(tokio::time::sleep(Duration::from_secs(1))),
            displaced,
        }
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[tokio::test]
    async fn the_handshake_ends_with_the_first_frame_after_the_preface() {
        // A SETTINGS frame with one 6-byte setting.
        let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let all: Vec<u8> = PREFACE.iter().chain(&settings).copied().collect();

        let mut whole = handshake();
        assert!(whole.received(&all));

        // Byte by byte: complete only with the last byte.
        let mut trickled = handshake();
        let (last, first) = all.split_last().unwrap();
        for byte in first {
            assert!(!trickled.received(std::slice::from_ref(byte)));
        }
        assert!(trickled.received(&[*last]));

        // The preface and a frame header promising more than is sent.
        let mut partial = handshake();
        assert!(!partial.received(&all[..all.len() - 1]));
        assert!(!handshake().received(&PREFACE[..10]));
    }
}
