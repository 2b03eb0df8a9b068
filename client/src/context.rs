//! What travels with a call from service to service: its request id and
//! its deadline.
//!
//! A served call takes the id its caller sent in the `x-request-id`
//! metadata entry, or a new one when there is none or it is unusable, and
//! the deadline its caller's `grpc-timeout` sets. The serving runtime reads
//! both once, when the call arrives, and runs the handler inside
//! [`scope`]; a [`ServiceChannel`](crate::ServiceChannel) used by the
//! handler then passes both on, so the callee logs the same id and gives up
//! when the first caller would.

use std::fmt;
use std::future::Future;

use tokio::time::Instant;
use tonic::codegen::http::HeaderMap;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::grpc_timeout;

/// The gRPC metadata key (an HTTP/2 header) that carries the id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest id accepted from a caller.
const MAX_LEN: usize = 128;

tokio::task_local! {
    /// The call being handled on this task.
    static CURRENT: CallContext;
}

/// The call being served: who it is, and until when it may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    /// Logged with every line of the call, in every service it reaches.
    pub request_id: RequestId,
    /// When the caller gives up, if it said.
    pub deadline: Option<Instant>,
}

impl CallContext {
    /// The context an incoming call's `headers` give it, its deadline
    /// counted from `received`.
    pub fn from_headers(headers: &HeaderMap, received: Instant) -> Self {
        let request_id = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(RequestId::parse)
            .unwrap_or_else(RequestId::generate);
        let deadline =
            grpc_timeout::from_headers(headers).and_then(|timeout| received.checked_add(timeout));
        Self {
            request_id,
            deadline,
        }
    }
}

/// One request's id: 1 to 128 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// A fresh random id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// `value` as an id, when it is usable as one (and safe to log and to
    /// send on as metadata).
    pub fn parse(value: &str) -> Option<Self> {
        let usable = !value.is_empty()
            && value.len() <= MAX_LEN
            && value.bytes().all(|byte| byte.is_ascii_graphic());
        usable.then(|| Self(value.to_owned()))
    }

    /// The id as sent in metadata.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id in `metadata`, when it holds a usable one.
    pub fn from_metadata(metadata: &MetadataMap) -> Option<Self> {
        metadata
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(Self::parse)
    }

    /// Puts the id into `metadata`, replacing any there.
    pub fn insert_into(&self, metadata: &mut MetadataMap) {
        // Always succeeds: `parse` and `generate` only make visible ASCII.
        if let Ok(value) = MetadataValue::try_from(self.as_str()) {
            metadata.insert(REQUEST_ID_HEADER, value);
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs `future` as the handling of the call described by `context`.
pub async fn scope<F: Future>(context: CallContext, future: F) -> F::Output {
    CURRENT.scope(context, future).await
}

/// The call being handled, if this runs within one.
pub fn current() -> Option<CallContext> {
    CURRENT.try_with(Clone::clone).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::codegen::http::HeaderValue;

    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_accepted() {
        assert!(RequestId::parse("cli-7f3a").is_some());
        assert!(RequestId::parse(&"a".repeat(MAX_LEN)).is_some());
        for bad in ["", "has space", "tab\t", "é", &"a".repeat(MAX_LEN + 1)] {
            assert_eq!(RequestId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_are_usable_and_distinct() {
        let (a, b) = (RequestId::generate(), RequestId::generate());
        assert_ne!(a, b);
        assert_eq!(RequestId::parse(a.as_str()), Some(a));
    }

    #[test]
    fn an_incoming_call_keeps_a_usable_id_and_its_deadline() {
        let received = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        headers.insert("grpc-timeout", HeaderValue::from_static("250m"));
        let context = CallContext::from_headers(&headers, received);
        assert_eq!(context.request_id.as_str(), "abc-123");
        assert_eq!(
            context.deadline,
            Some(received + Duration::from_millis(250))
        );

        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        headers.remove("grpc-timeout");
        let replaced = CallContext::from_headers(&headers, received);
        assert_ne!(replaced.request_id.as_str(), "has space");
        assert_eq!(replaced.deadline, None);
    }

    #[tokio::test]
    async fn the_context_is_current_only_within_its_scope() {
        assert_eq!(current(), None);
        let context = CallContext {
            request_id: RequestId::generate(),
            deadline: None,
        };
        let inside = scope(context.clone(), async { current() }).await;
        assert_eq!(inside, Some(context));
    }
}
