//! One log line per served call, with its method, gRPC status, latency and
//! request id.
//!
//! [`RequestLogLayer`] wraps the whole server. It reads the call's context
//! (its request id and deadline, see [`shippy_client::context`]) once from
//! the headers, runs the handler inside that context and inside a
//! `call{request_id=…}` span so every line the handler logs names the call,
//! and logs the call once it is over. A gRPC status travels in the response
//! headers (an error with no body) or in the trailers after the body, so the
//! line is written when the call is finished with: after the trailers are
//! sent, or when the call is dropped before any status, which is logged as
//! DEADLINE_EXCEEDED when the caller's `grpc-timeout` has passed (tonic's
//! timeout, which wraps this layer, drops the call) and as CANCELLED when
//! the caller went away. A call whose request stream broke off (the caller
//! reset it or closed the connection) is logged as CANCELLED too, at info,
//! whatever error the handler made of the broken request: the caller left,
//! nothing failed.
//!
//! A call whose request never arrived whole (the caller went away, or sent
//! part of it and stopped until a deadline ended the call) costs a client
//! next to nothing, so a flood of them must not flood the log: their lines
//! go through a [`LogBudget`], a few written one by one and the rest
//! summarised.
//!
//! Health checks log at debug, so that a healthcheck polling every few
//! seconds does not bury the calls that matter; `RUST_LOG=debug` shows them.
//!
//! tower-http's `SetRequestId`/`PropagateRequestId` and `Trace` layers do not
//! fit: the first keep whatever id a caller sent, where an unusable one
//! (too long, or with characters that would forge log lines) must be
//! replaced, and they know nothing of the deadline; `Trace` has no event for
//! a call dropped before its end of stream, which is exactly the call a
//! timeout or a vanished caller ends and an operator most needs to see.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use shippy_client::context::{self, CallContext, REQUEST_ID_HEADER};
use shippy_client::status;
use tokio::time::Instant;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::{Instrument, Span, debug, info, info_span, warn};

use crate::log_budget::{LogBudget, Severity};

/// Lines per [`crate::log_budget::WINDOW`] for calls whose request never
/// arrived whole; the rest are summarised.
const ABANDONED_LINES_PER_WINDOW: u32 = 10;

/// Logs every call of the service it wraps.
#[derive(Debug, Clone)]
pub struct RequestLogLayer {
    /// Shared by every call, so the allowance is the server's, not a
    /// connection's.
    abandoned: Arc<LogBudget>,
}

impl RequestLogLayer {
    /// A call log with its own budget for lines about abandoned calls.
    pub fn new() -> Self {
        Self {
            abandoned: LogBudget::new(
                "calls whose request never arrived whole",
                Severity::Info,
                ABANDONED_LINES_PER_WINDOW,
            ),
        }
    }

    /// The budget of lines about abandoned calls, for
    /// [`crate::log_budget::report`].
    pub fn log_budget(&self) -> Arc<LogBudget> {
        self.abandoned.clone()
    }
}

impl Default for RequestLogLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLog {
            inner,
            abandoned: self.abandoned.clone(),
        }
    }
}

/// A service whose calls are logged; see [`RequestLogLayer`].
#[derive(Debug, Clone)]
pub struct RequestLog<S> {
    inner: S,
    abandoned: Arc<LogBudget>,
}

impl<S, ResBody> Service<http::Request<tonic::body::Body>> for RequestLog<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin,
{
    type Response = http::Response<LoggedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let started = Instant::now();
        let context = CallContext::from_headers(request.headers(), started);
        let id_header = HeaderValue::from_str(context.request_id.as_str()).ok();
        let span = info_span!("call", request_id = %context.request_id);
        let request_state = Arc::new(AtomicU8::new(INCOMPLETE));
        let mut request = request.map(|body| {
            tonic::body::Body::new(WatchedBody {
                inner: body,
                state: request_state.clone(),
            })
        });
        if let Some(value) = &id_header {
            // The handler reads the same id the log shows, even when the
            // caller sent none or an unusable one.
            request
                .headers_mut()
                .insert(REQUEST_ID_HEADER, value.clone());
        }
        // Made now, so that a call dropped at any point is still logged.
        let record = CallRecord {
            method: request.uri().path().trim_start_matches('/').to_owned(),
            started,
            deadline: context.deadline,
            span: span.clone(),
            status: None,
            request: request_state,
            abandoned: self.abandoned.clone(),
        };
        let handled = context::scope(context, self.inner.call(request)).instrument(span);
        Box::pin(async move {
            let mut record = record;
            let response = handled.await?;
            let (mut parts, body) = response.into_parts();
            if let Some(value) = id_header {
                parts.headers.insert(REQUEST_ID_HEADER, value);
            }
            record.status = grpc_status(&parts.headers);
            Ok(http::Response::from_parts(
                parts,
                LoggedBody {
                    inner: body,
                    record,
                },
            ))
        })
    }
}

/// A response body that logs its call when it is dropped.
#[derive(Debug)]
pub struct LoggedBody<B> {
    inner: B,
    record: CallRecord,
}

impl<B: Body + Unpin> Body for LoggedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(trailers) = frame.trailers_ref()
        {
            this.record.status = grpc_status(trailers).or(this.record.status);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request stream has not ended yet.
const INCOMPLETE: u8 = 0;
/// The request stream ended: the whole request arrived.
const COMPLETE: u8 = 1;
/// The request stream failed: the caller reset it or the connection went.
const BROKEN: u8 = 2;

/// A request body that records whether it arrived whole.
struct WatchedBody {
    inner: tonic::body::Body,
    /// [`INCOMPLETE`], [`COMPLETE`] or [`BROKEN`], shared with the call's record.
    state: Arc<AtomicU8>,
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let state = match &frame {
            None => COMPLETE,
            Some(Err(_)) => BROKEN,
            Some(Ok(_)) if self.inner.is_end_stream() => COMPLETE,
            Some(Ok(_)) => INCOMPLETE,
        };
        self.state.store(state, Ordering::Relaxed);
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What is known of a call until its log line is written, on drop.
#[derive(Debug)]
struct CallRecord {
    /// `package.Service/Method`.
    method: String,
    started: Instant,
    /// When the caller's `grpc-timeout` runs out, if it sent one.
    deadline: Option<Instant>,
    /// The call's span, which holds its request id.
    span: Span,
    /// The gRPC status once the response carried one.
    status: Option<Code>,
    /// How far the request stream came: [`INCOMPLETE`], [`COMPLETE`] or [`BROKEN`].
    request: Arc<AtomicU8>,
    /// The allowance of lines for calls whose request never arrived whole.
    abandoned: Arc<LogBudget>,
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        let _call = self.span.enter();
        // Milliseconds with microsecond precision read best in both formats.
        let latency_ms = self.started.elapsed().as_micros() as f64 / 1000.0;
        let method = self.method.as_str();
        let request = self.request.load(Ordering::Relaxed);
        let (status, message) = match self.status {
            // Whatever the handler made of a request that broke off (tonic
            // says UNKNOWN or INTERNAL), the caller left and nothing failed.
            Some(code) if request == BROKEN && code != Code::Ok => (
                "CANCELLED",
                "the caller broke off its request before it was complete",
            ),
            Some(code) => (status::name(code), ""),
            None if self
                .deadline
                .is_some_and(|deadline| Instant::now() >= deadline) =>
            {
                (
                    "DEADLINE_EXCEEDED",
                    "the caller's deadline passed before the call was answered",
                )
            }
            None => (
                "CANCELLED",
                "the caller went away before the call was answered",
            ),
        };
        let failed = request != BROKEN
            && matches!(
                self.status,
                Some(Code::Internal | Code::Unknown | Code::DataLoss)
            );
        if method.starts_with("grpc.health.v1.Health/") {
            debug!(method = %method, status = %status, latency_ms, "call handled");
        } else if request != COMPLETE && self.status != Some(Code::Ok) && !self.abandoned.admit() {
            // Counted for the summary instead.
        } else if failed {
            warn!(method = %method, status = %status, latency_ms, "call failed");
        } else if message.is_empty() {
            info!(method = %method, status = %status, latency_ms, "call handled");
        } else {
            info!(method = %method, status = %status, latency_ms, "call handled: {message}");
        }
    }
}

/// The `grpc-status` in response headers or trailers.
fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use super::*;
    use crate::captured_log::Captured;

    /// A handler that answers OK at once for `/t.S/Fast` and never for anything else.
    async fn handler(
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, Infallible> {
        if request.uri().path() != "/t.S/Fast" {
            std::future::pending::<()>().await;
        }
        let mut response = http::Response::new(tonic::body::Body::empty());
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from_static("0"));
        Ok(response)
    }

    #[test]
    fn every_call_is_logged_once_even_when_dropped_unanswered() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // Paused, so the deadlines below pass by the clock's design, not
            // by the machine's speed.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut service = RequestLogLayer::new().layer(tower::service_fn(handler));
                let call = |path: &str, timeout: Option<&'static str>| {
                    let mut request = http::Request::builder().uri(path);
                    if let Some(timeout) = timeout {
                        request = request.header("grpc-timeout", timeout);
                    }
                    request.body(tonic::body::Body::empty()).unwrap()
                };
                let answered = service.call(call("/t.S/Fast", None)).await.unwrap();
                drop(answered);
                // Dropped as tonic drops a call whose deadline passed, and
                // as hyper drops one whose caller went away.
                let late = service.call(call("/t.S/Late", Some("1m")));
                let _ = tokio::time::timeout(Duration::from_millis(20), late).await;
                let gone = service.call(call("/t.S/Gone", Some("1H")));
                let _ = tokio::time::timeout(Duration::from_millis(1), gone).await;
            });
        });
        let logs = captured.text();
        let lines: Vec<_> = logs.lines().collect();
        assert_eq!(lines.len(), 3, "{logs}");
        assert!(
            lines[0].contains("method=t.S/Fast status=OK latency_ms="),
            "{logs}"
        );
        assert!(
            lines[1].contains("method=t.S/Late status=DEADLINE_EXCEEDED"),
            "{logs}"
        );
        assert!(
            lines[2].contains("method=t.S/Gone status=CANCELLED"),
            "{logs}"
        );
        assert!(
            lines.iter().all(|line| line.contains("call{request_id=")),
            "{logs}"
        );
    }

    /// A request body that fails, as one whose caller reset the stream.
    struct Broken;

    impl Body for Broken {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(Some(Err(Status::unknown(
                "h2 protocol error: stream reset",
            ))))
        }
    }

    /// Reads the request body and answers UNKNOWN when it fails, as tonic does.
    async fn reads_body(
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, Infallible> {
        let mut body = request.into_body();
        let read = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(matches!(read, Some(Err(_))));
        Ok(Status::unknown("h2 protocol error: stream reset").into_http())
    }

    #[test]
    fn a_caller_that_broke_off_its_request_is_cancelled_not_failed() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut service = RequestLogLayer::new().layer(tower::service_fn(reads_body));
                let request = http::Request::builder()
                    .uri("/t.S/Gone")
                    .body(tonic::body::Body::new(Broken))
                    .unwrap();
                drop(service.call(request).await.unwrap());
            });
        });
        let logs = captured.text();
        assert!(logs.contains(" INFO "), "{logs}");
        assert!(logs.contains("method=t.S/Gone status=CANCELLED"), "{logs}");
    }

    #[test]
    fn the_status_is_read_from_headers_or_trailers() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&headers), Some(Code::NotFound));
        headers.insert("grpc-status", HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&headers), None);
    }
}
