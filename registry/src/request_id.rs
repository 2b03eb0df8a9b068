//! The request id that follows one call across services.
//!
//! A served call takes the id its caller sent in the `x-request-id` metadata
//! entry, or a new one when there is none or it is unusable. The id is kept
//! for the rest of the call's handling, so the calls the handler makes
//! downstream carry it too ([`propagate`]), and it goes back to the caller
//! in the response metadata. Both services log it with every line of the
//! call, so one id finds a request in every log it touched.

use std::fmt;
use std::future::Future;

use tonic::metadata::{MetadataMap, MetadataValue};

/// The gRPC metadata key (an HTTP/2 header) that carries the id.
pub const HEADER: &str = "x-request-id";

/// The longest id accepted from a caller.
const MAX_LEN: usize = 128;

tokio::task_local! {
    /// The id of the call being handled on this task.
    static CURRENT: RequestId;
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
            .get(HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(Self::parse)
    }

    /// Puts the id into `metadata`, replacing any there.
    pub fn insert_into(&self, metadata: &mut MetadataMap) {
        // Always succeeds: `parse` and `generate` only make visible ASCII.
        if let Ok(value) = MetadataValue::try_from(self.as_str()) {
            metadata.insert(HEADER, value);
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs `future` as the handling of the call identified by `id`.
pub async fn scope<F: Future>(id: RequestId, future: F) -> F::Output {
    CURRENT.scope(id, future).await
}

/// The id of the call being handled, if this runs within one.
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Gives an outgoing call the id of the call being handled, so the callee
/// logs the same id.
pub fn propagate<T>(request: &mut tonic::Request<T>) {
    if let Some(id) = current() {
        id.insert_into(request.metadata_mut());
    }
}

#[cfg(test)]
mod tests {
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

    #[tokio::test]
    async fn outgoing_calls_carry_the_current_id_only_within_a_call() {
        let mut outside = tonic::Request::new(());
        propagate(&mut outside);
        assert!(outside.metadata().get(HEADER).is_none());

        let id = RequestId::parse("abc-123").unwrap();
        let sent = scope(id.clone(), async {
            let mut request = tonic::Request::new(());
            propagate(&mut request);
            RequestId::from_metadata(request.metadata())
        })
        .await;
        assert_eq!(sent, Some(id));
    }
}
