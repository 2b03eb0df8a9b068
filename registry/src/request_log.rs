//! One log line per served call, with its method, gRPC status, latency and
//! request id.
//!
//! [`RequestLogLayer`] wraps the whole server. It gives each call its
//! request id (see [`crate::request_id`]), runs the handler inside a
//! `call{request_id=…}` span so every line the handler logs names the call,
//! and logs the call once it is over. A gRPC status travels in the response
//! headers (an error with no body) or in the trailers after the body, so the
//! line is written when the response body is finished with: after the
//! trailers are sent, or when the caller goes away first (logged as
//! CANCELLED).
//!
//! Health checks log at debug, so that a healthcheck polling every few
//! seconds does not bury the calls that matter; `RUST_LOG=debug` shows them.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tower::{Layer, Service};
use tracing::{Instrument, Span, debug, info, info_span, warn};

use crate::request_id::{self, RequestId};

/// Logs every call of the service it wraps.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestLogLayer;

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLog { inner }
    }
}

/// A service whose calls are logged; see [`RequestLogLayer`].
#[derive(Debug, Clone)]
pub struct RequestLog<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestLog<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin,
{
    type Response = http::Response<LoggedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let id = request
            .headers()
            .get(request_id::HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(RequestId::parse)
            .unwrap_or_else(RequestId::generate);
        let id_header = HeaderValue::from_str(id.as_str()).ok();
        if let Some(value) = &id_header {
            // The handler reads the same id the log shows, even when the
            // caller sent none or an unusable one.
            request
                .headers_mut()
                .insert(request_id::HEADER, value.clone());
        }
        let span = info_span!("call", request_id = %id);
        let handled = request_id::scope(id, self.inner.call(request)).instrument(span.clone());
        Box::pin(async move {
            let response = handled.await?;
            let (mut parts, body) = response.into_parts();
            if let Some(value) = id_header {
                parts.headers.insert(request_id::HEADER, value);
            }
            let record = CallRecord {
                method,
                started,
                span,
                status: grpc_status(&parts.headers),
            };
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

/// What is known of a call until its log line is written, on drop.
#[derive(Debug)]
struct CallRecord {
    /// `package.Service/Method`.
    method: String,
    started: Instant,
    /// The call's span, which holds its request id.
    span: Span,
    /// The gRPC status once the response carried one.
    status: Option<Code>,
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        let _call = self.span.enter();
        // Milliseconds with microsecond precision read best in both formats.
        let latency_ms = self.started.elapsed().as_micros() as f64 / 1000.0;
        let method = self.method.as_str();
        let Some(code) = self.status else {
            info!(
                method = %method,
                status = "CANCELLED",
                latency_ms,
                "call ended before a status was sent (the caller went away)"
            );
            return;
        };
        let status = status_name(code);
        if method.starts_with("grpc.health.v1.Health/") {
            debug!(method = %method, status = %status, latency_ms, "call handled");
        } else if matches!(code, Code::Internal | Code::Unknown | Code::DataLoss) {
            warn!(method = %method, status = %status, latency_ms, "call failed");
        } else {
            info!(method = %method, status = %status, latency_ms, "call handled");
        }
    }
}

/// The `grpc-status` in response headers or trailers.
fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}

/// A status code's canonical name, as gRPC tools print it.
pub fn status_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_read_from_headers_or_trailers() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&headers), Some(Code::NotFound));
        headers.insert("grpc-status", HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&headers), None);
    }

    #[test]
    fn status_names_are_the_canonical_ones() {
        assert_eq!(status_name(Code::Ok), "OK");
        assert_eq!(status_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(status_name(Code::from_i32(8)), "RESOURCE_EXHAUSTED");
    }
}
