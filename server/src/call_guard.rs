//! What a request must be to reach a handler, and how long a handler may
//! run when its caller set no limit.
//!
//! - A request whose content-type is not `application/grpc` (or
//!   `application/grpc+…`, `application/grpc;…`) is answered HTTP 415
//!   Unsupported Media Type, as the gRPC over HTTP/2 spec says a server
//!   should, so that a client that does not speak gRPC does not mistake the
//!   usual HTTP 200 for success. The answer also carries `grpc-status`
//!   INVALID_ARGUMENT, as grpc-go's does, for gRPC clients that read only that.
//! - A call whose caller sent no (valid) `grpc-timeout` gets the server's
//!   default deadline (`--default-deadline`): when it passes, the handler
//!   is dropped and the call ends with DEADLINE_EXCEEDED. Without it, a
//!   call whose request never completes would hold its stream, its task
//!   and its buffers for as long as the connection lives. A caller's own
//!   deadline is left to tonic, which enforces it; this deadline is not
//!   passed on to the calls the handler makes, which keep their own defaults.

use std::time::Duration;

use futures::future::BoxFuture;
use shippy_client::grpc_timeout;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap, StatusCode, header};
use tower::{Layer, Service};

/// Checks every request's content-type and gives a deadline to calls that
/// have none.
#[derive(Debug, Clone, Copy)]
pub struct CallGuardLayer {
    default_deadline: Duration,
}

impl CallGuardLayer {
    /// Calls without a deadline may run for `default_deadline`.
    pub fn new(default_deadline: Duration) -> Self {
        Self { default_deadline }
    }
}

impl<S> Layer<S> for CallGuardLayer {
    type Service = CallGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallGuard {
            inner,
            default_deadline: self.default_deadline,
        }
    }
}

/// A service guarded by [`CallGuardLayer`].
#[derive(Debug, Clone)]
pub struct CallGuard<S> {
    inner: S,
    default_deadline: Duration,
}

impl<S> Service<http::Request<Body>> for CallGuard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !is_grpc(request.headers()) {
            return Box::pin(std::future::ready(Ok(unsupported_media_type())));
        }
        let has_deadline = grpc_timeout::from_headers(request.headers()).is_some();
        let handled = self.inner.call(request);
        if has_deadline {
            return Box::pin(handled);
        }
        let deadline = self.default_deadline;
        Box::pin(async move {
            match tokio::time::timeout(deadline, handled).await {
                Ok(answered) => answered,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call did not finish within the server's default deadline of {}s \
                     (the caller set no grpc-timeout)",
                    deadline.as_secs()
                ))
                .into_http()),
            }
        })
    }
}

/// Whether `headers` carry a gRPC content-type.
fn is_grpc(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    value
        .get(..GRPC.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(GRPC))
        && matches!(value.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// HTTP 415, with a gRPC status for gRPC clients.
fn unsupported_media_type() -> http::Response<Body> {
    let mut response =
        Status::invalid_argument("the content-type must be application/grpc").into_http();
    *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic::codegen::http::HeaderValue;

    use super::*;

    #[test]
    fn only_grpc_content_types_are_grpc() {
        let cases = [
            (Some("application/grpc"), true),
            (Some("application/grpc+proto"), true),
            (Some("application/grpc;charset=utf-8"), true),
            (Some("Application/GRPC"), true),
            (Some("application/grpcx"), false),
            (Some("application/json"), false),
            (Some("application/grp"), false),
            (None, false),
        ];
        for (content_type, expected) in cases {
            let mut headers = HeaderMap::new();
            if let Some(value) = content_type {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            }
            assert_eq!(is_grpc(&headers), expected, "{content_type:?}");
        }
    }

    /// A handler that never answers.
    async fn stuck(_: http::Request<Body>) -> Result<http::Response<Body>, Infallible> {
        std::future::pending().await
    }

    fn grpc_status(response: &http::Response<Body>) -> Option<&str> {
        response.headers().get("grpc-status")?.to_str().ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_without_a_deadline_ends_at_the_default_one() {
        let mut service =
            CallGuardLayer::new(Duration::from_secs(3)).layer(tower::service_fn(stuck));
        let request = http::Request::builder()
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .unwrap();
        let started = tokio::time::Instant::now();
        let response = service.call(request).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(grpc_status(&response), Some("4"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_callers_deadline_is_left_to_tonic() {
        let mut service =
            CallGuardLayer::new(Duration::from_secs(3)).layer(tower::service_fn(stuck));
        let request = http::Request::builder()
            .header("content-type", "application/grpc")
            .header("grpc-timeout", "1H")
            .body(Body::empty())
            .unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(60), service.call(request)).await;
        assert!(
            answered.is_err(),
            "the server's default cut a caller's deadline short"
        );
    }

    #[tokio::test]
    async fn a_request_that_is_not_grpc_gets_415() {
        let mut service =
            CallGuardLayer::new(Duration::from_secs(3)).layer(tower::service_fn(stuck));
        let request = http::Request::builder()
            .header("content-type", "application/json")
            .body(Body::empty())
            .unwrap();
        let response = service.call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(grpc_status(&response), Some("3"));
    }
}
