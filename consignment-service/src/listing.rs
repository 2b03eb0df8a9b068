//! GetConsignments' pages: what a request asks for, how much one response
//! may hold, and how much memory the listings in flight hold together.
//!
//! A page ends after `page_size` consignments (at most [`MAX_PAGE_SIZE`]),
//! or before its encoded response would pass [`MAX_PAGE_BYTES`], safely
//! below gRPC's default 4 MiB message limit, whichever comes first; its
//! `next_page_token` continues after its last consignment. So every page
//! decodes in any gRPC client, whatever the consignments weigh. Rows are
//! streamed from the store and reading stops once the page is full, so a
//! call never loads more than one page. An unpaged request (`page_size` 0,
//! "all of them", as in the original API) whose consignments do not fit in
//! one response fails with RESOURCE_EXHAUSTED naming `page_size`, instead
//! of building a message no client would accept.
//!
//! Listings in flight share [`LISTING_MEMORY_BYTES`] of page bytes. A call
//! waits for a whole page's share before it reads (at once, holding
//! nothing, so calls cannot deadlock each other), so only a few read at
//! a time, each with at most a page and the store's few rows of read-ahead
//! in memory. Once read, the page gives back what it does not use and keeps
//! the rest with its response ([`HoldShares`]) until the response has been
//! sent or the call dropped: a client that does not read its answer keeps
//! the encoded page in the server's buffers, so it must stay out of the
//! other listings' budget too. Small pages are read in milliseconds and
//! keep little, so they rarely wait.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::TryStreamExt;
use futures::future::{MapOk, TryFutureExt};
use http_body::{Body, Frame, SizeHint};
use prost::Message;
use shippy_proto::consignment::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use crate::domain::Consignment;
use crate::error::ConsignmentError;
use crate::repository::ConsignmentRepository;

/// The most consignments one page holds; larger page sizes are reduced to it.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// The most bytes one GetConsignments response holds, encoded: 64 KiB
/// below the 4 MiB that tonic, grpc-go and the other gRPC implementations
/// accept by default.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;
/// Page bytes all listings in flight may hold together: two whole pages.
/// A page byte costs a few bytes of memory while it is read and sent (the
/// rows, the response, its encoding), so this bounds listings to some tens
/// of megabytes however many calls arrive at once.
pub const LISTING_MEMORY_BYTES: usize = 2 * MAX_PAGE_BYTES;
/// Rows asked of the store at a time for an unpaged request.
const ROWS_PER_READ: u32 = MAX_PAGE_SIZE;
/// The largest `next_page_token` field, encoded: a key byte, a length byte
/// and the 19 digits of the largest `seq`.
const TOKEN_FIELD_BYTES: usize = 1 + 1 + 19;

/// The consignments a GetConsignments request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Only consignments created after the one with this `seq`.
    pub after: Option<i64>,
    /// At most this many; all of them, in one response, when `None`.
    pub limit: Option<u32>,
}

impl PageRequest {
    /// Reads a request: `page_size` 0 means all consignments (the original
    /// API); `page_token` continues after a previous page.
    pub fn parse(request: &pb::GetRequest) -> Result<Self, ConsignmentError> {
        let limit = match u32::try_from(request.page_size) {
            Err(_) => {
                return Err(ConsignmentError::invalid(
                    "page_size",
                    "must not be negative",
                ));
            }
            Ok(0) => None,
            Ok(size) => Some(size.min(MAX_PAGE_SIZE)),
        };
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(
                token
                    .parse::<i64>()
                    .ok()
                    .filter(|seq| *seq > 0)
                    .ok_or_else(|| {
                        ConsignmentError::invalid(
                            "page_token",
                            "not a token from a previous GetConsignments response",
                        )
                    })?,
            ),
        };
        Ok(Self { after, limit })
    }
}

/// Reads pages from the store within the memory all listings share.
pub struct Lister {
    repository: Arc<dyn ConsignmentRepository>,
    /// Page bytes not held by a listing in flight.
    memory: Arc<Semaphore>,
}

/// Page bytes taken from the listing memory, returned when the last clone
/// is dropped. A clone travels in the response's extensions to its body.
#[derive(Debug, Clone)]
pub struct MemoryShare {
    _permit: Arc<OwnedSemaphorePermit>,
}

impl Lister {
    /// A lister over `repository` with [`LISTING_MEMORY_BYTES`] to share.
    pub fn new(repository: Arc<dyn ConsignmentRepository>) -> Self {
        Self {
            repository,
            memory: Arc::new(Semaphore::new(LISTING_MEMORY_BYTES)),
        }
    }

    /// The page `request` asks for, and the share of listing memory it
    /// holds until its response is gone.
    pub async fn page(
        &self,
        request: PageRequest,
    ) -> Result<(pb::Response, MemoryShare), ConsignmentError> {
        let share = self.share(MAX_PAGE_BYTES).await?;
        let overflow = match request.limit {
            Some(_) => Overflow::EndPage,
            None => Overflow::Give,
        };
        match self.read(request, MAX_PAGE_BYTES, overflow).await? {
            Some(page) => Ok(keep(share, page)),
            None => Err(ConsignmentError::TooLarge(format!(
                "the stored consignments do not fit in one response of at most \
                 {MAX_PAGE_BYTES} bytes: set page_size (up to {MAX_PAGE_SIZE}) and \
                 follow next_page_token"
            ))),
        }
    }

    /// Waits for `bytes` of listing memory.
    async fn share(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ConsignmentError> {
        let internal = |what: &str| ConsignmentError::Internal(anyhow::anyhow!("{what}"));
        let permits = u32::try_from(bytes)
            .map_err(|_| internal("a listing share beyond the semaphore's range"))?;
        Arc::clone(&self.memory)
            .acquire_many_owned(permits)
            .await
            .map_err(|_| internal("the listing memory semaphore is closed"))
    }

    /// Reads the page `request` asks for into at most `budget` bytes; `None`
    /// when a consignment would take it past them and `overflow` says to
    /// give up.
    async fn read(
        &self,
        request: PageRequest,
        budget: usize,
        overflow: Overflow,
    ) -> Result<Option<pb::Response>, ConsignmentError> {
        let mut page = PageBuilder::new(request.limit, budget, overflow);
        // One read past the limit tells whether more follow; an unpaged
        // request reads until the store or the budget runs out.
        let rows_per_read = request.limit.map_or(ROWS_PER_READ, |limit| limit + 1);
        let mut after = request.after;
        loop {
            let mut rows = self.repository.scan(after, rows_per_read);
            let mut read = 0;
            while let Some((seq, consignment)) = rows.try_next().await? {
                read += 1;
                match page.push(seq, consignment) {
                    Step::Added => {}
                    Step::Full => return Ok(Some(page.finish(true))),
                    Step::Overflowed => return Ok(None),
                }
            }
            if read < rows_per_read {
                return Ok(Some(page.finish(false)));
            }
            after = page.last_seq;
        }
    }
}

/// `share` cut down to what `page` encodes to, the rest returned to other
/// listings at once, with the page.
fn keep(mut share: OwnedSemaphorePermit, page: pb::Response) -> (pb::Response, MemoryShare) {
    // A lone consignment stored before creates were limited may be larger
    // than the share: nothing to give back then, and saturating says so.
    let unused = share
        .num_permits()
        .saturating_sub(page.encoded_len().max(1));
    drop(share.split(unused));
    (
        page,
        MemoryShare {
            _permit: Arc::new(share),
        },
    )
}

/// What a page does with a consignment that would take it past its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overflow {
    /// End the page before it, with a token to continue from it.
    EndPage,
    /// Give the page up: an unpaged request must hold everything.
    Give,
}

/// What adding a row did.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The consignment is on the page.
    Added,
    /// The page is full; the row read is on the next one.
    Full,
    /// The row would take the page past its budget, and it gave up.
    Overflowed,
}

/// A page being filled.
#[derive(Debug)]
struct PageBuilder {
    limit: Option<u32>,
    budget: usize,
    overflow: Overflow,
    consignments: Vec<pb::Consignment>,
    /// The encoded response so far, counting the largest token.
    bytes: usize,
    /// The `seq` of the last consignment on the page.
    last_seq: Option<i64>,
}

impl PageBuilder {
    fn new(limit: Option<u32>, budget: usize, overflow: Overflow) -> Self {
        Self {
            limit,
            budget,
            overflow,
            consignments: Vec::new(),
            bytes: TOKEN_FIELD_BYTES,
            last_seq: None,
        }
    }

    fn push(&mut self, seq: i64, consignment: Consignment) -> Step {
        if self
            .limit
            .is_some_and(|limit| self.consignments.len() >= limit as usize)
        {
            return Step::Full;
        }
        let consignment = pb::Consignment::from(consignment);
        let size = entry_len(&consignment);
        if self.bytes + size > self.budget {
            match self.overflow {
                Overflow::Give => return Step::Overflowed,
                Overflow::EndPage if !self.consignments.is_empty() => return Step::Full,
                // Alone on its page, a consignment goes out whatever its
                // size, so that the listing gets past it. Creates refuse
                // one that would not fit; only a row stored before they
                // did, or written by hand, can be this large.
                Overflow::EndPage => {}
            }
        }
        self.consignments.push(consignment);
        self.bytes += size;
        self.last_seq = Some(seq);
        Step::Added
    }

    /// The response, with a token to continue after its last consignment
    /// when `more` follow.
    fn finish(self, more: bool) -> pb::Response {
        let next_page_token = match self.last_seq {
            Some(seq) if more => seq.to_string(),
            _ => String::new(),
        };
        pb::Response {
            created: false,
            consignment: None,
            consignments: self.consignments,
            next_page_token,
        }
    }
}

/// What `consignment` adds to an encoded Response: its field's key (one
/// byte, field 3), its length and itself.
fn entry_len(consignment: &pb::Consignment) -> usize {
    let len = consignment.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// Wraps the ShippingService server so that the [`MemoryShare`] a response
/// carries in its extensions is held by its body, and so released once the
/// response has been sent or the call dropped rather than when the handler
/// returns.
#[derive(Debug, Clone)]
pub struct HoldShares<S> {
    inner: S,
}

impl<S> HoldShares<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: NamedService> NamedService for HoldShares<S> {
    const NAME: &'static str = S::NAME;
}

/// The response type [`HoldShares`] maps to.
type Held<B> = http::Response<SharedBody<B>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for HoldShares<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = Held<ResBody>;
    type Error = S::Error;
    type Future = MapOk<S::Future, fn(http::Response<ResBody>) -> Held<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        self.inner.call(request).map_ok(hold_share)
    }
}

fn hold_share<B>(response: http::Response<B>) -> Held<B> {
    let (mut parts, body) = response.into_parts();
    let share = parts.extensions.remove::<MemoryShare>();
    http::Response::from_parts(
        parts,
        SharedBody {
            inner: body,
            _share: share,
        },
    )
}

/// A response body holding its page's share of listing memory.
#[derive(Debug)]
pub struct SharedBody<B> {
    inner: B,
    _share: Option<MemoryShare>,
}

impl<B: Body + Unpin> Body for SharedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Container, Weight};
    use crate::repository::InMemoryRepository;

    fn get(page_size: i32, page_token: &str) -> pb::GetRequest {
        pb::GetRequest {
            page_size,
            page_token: page_token.into(),
        }
    }

    #[test]
    fn paging_requests_are_read_and_checked() {
        assert_eq!(
            PageRequest::parse(&get(0, "")).unwrap(),
            PageRequest::default()
        );
        assert_eq!(
            PageRequest::parse(&get(10, "42")).unwrap(),
            PageRequest {
                after: Some(42),
                limit: Some(10)
            }
        );
        assert_eq!(
            PageRequest::parse(&get(i32::MAX, "")).unwrap().limit,
            Some(MAX_PAGE_SIZE)
        );
        for (request, field) in [
            (get(-1, ""), "page_size"),
            (get(1, "abc"), "page_token"),
            (get(1, "0"), "page_token"),
            (get(1, "-5"), "page_token"),
        ] {
            let status = tonic::Status::from(PageRequest::parse(&request).unwrap_err());
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(field), "{}", status.message());
        }
    }

    /// A consignment of about `bytes` encoded bytes.
    fn consignment(id: &str, bytes: usize) -> Consignment {
        let container = Container {
            id: String::new(),
            customer_id: "cust001".into(),
            origin: "o".repeat(1000),
            user_id: "user001".into(),
        };
        Consignment {
            id: id.into(),
            description: String::new(),
            weight: Weight::new(1).unwrap(),
            containers: vec![container; bytes.div_ceil(1020).max(1)],
            vessel_id: "vessel001".into(),
        }
    }

    async fn storing(sizes: &[usize]) -> Lister {
        let store = InMemoryRepository::default();
        for (i, size) in sizes.iter().enumerate() {
            store
                .create(consignment(&format!("c{i}"), *size))
                .await
                .unwrap();
        }
        Lister::new(Arc::new(store))
    }

    /// Follows the tokens from the first page; every page's ids.
    async fn pages(lister: &Lister, page_size: i32) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut token = String::new();
        loop {
            let request = PageRequest::parse(&get(page_size, &token)).unwrap();
            let (page, _share) = lister.page(request).await.unwrap();
            assert!(
                page.encoded_len() <= MAX_PAGE_BYTES,
                "{}",
                page.encoded_len()
            );
            pages.push(page.consignments.iter().map(|c| c.id.clone()).collect());
            if page.next_page_token.is_empty() {
                return pages;
            }
            token = page.next_page_token;
        }
    }

    #[tokio::test]
    async fn pages_end_at_the_byte_budget_as_well_as_the_row_limit() {
        const MB: usize = 1_000_000;
        let lister = storing(&[MB, MB, MB, MB, 3 * MB, 100, 100, 3 * MB]).await;
        assert_eq!(
            pages(&lister, 1000).await,
            [
                vec!["c0", "c1", "c2", "c3"],
                vec!["c4", "c5", "c6"],
                vec!["c7"]
            ]
        );
        assert_eq!(
            pages(&lister, 3).await,
            [
                vec!["c0", "c1", "c2"],
                vec!["c3", "c4", "c5"],
                vec!["c6", "c7"]
            ]
        );
        // Every share went back once the pages were dropped.
        assert_eq!(lister.memory.available_permits(), LISTING_MEMORY_BYTES);
    }

    #[tokio::test]
    async fn an_unpaged_request_that_does_not_fit_is_refused_naming_page_size() {
        let lister = storing(&[2_100_000, 2_100_000, 100]).await;
        let err = lister.page(PageRequest::default()).await.unwrap_err();
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("page_size"),
            "{}",
            status.message()
        );

        // What fits still comes in one response, however many rows that is.
        let lister = storing(&vec![100; 2500]).await;
        let (page, _share) = lister.page(PageRequest::default()).await.unwrap();
        assert_eq!(
            (page.consignments.len(), page.next_page_token.as_str()),
            (2500, "")
        );
    }

    #[tokio::test]
    async fn a_page_keeps_only_the_share_it_uses_until_its_response_is_gone() {
        let lister = storing(&[100, 3_000_000]).await;
        let first = PageRequest {
            after: None,
            limit: Some(1),
        };
        let (small, small_share) = lister.page(first).await.unwrap();
        let held = LISTING_MEMORY_BYTES - lister.memory.available_permits();
        assert_eq!(held, small.encoded_len());

        let (large, large_share) = lister
            .page(PageRequest {
                after: Some(1),
                limit: Some(1),
            })
            .await
            .unwrap();
        assert_eq!(
            LISTING_MEMORY_BYTES - lister.memory.available_permits(),
            small.encoded_len() + large.encoded_len()
        );
        drop((small_share, large_share));
        assert_eq!(lister.memory.available_permits(), LISTING_MEMORY_BYTES);
    }

    #[tokio::test]
    async fn a_listing_waits_for_memory_while_others_hold_it() {
        let lister = storing(&[3_900_000]).await;
        let all = PageRequest::default();
        let most = LISTING_MEMORY_BYTES / MAX_PAGE_BYTES;
        let held = futures::future::try_join_all((0..most).map(|_| lister.page(all)))
            .await
            .unwrap();
        let next = lister.page(all);
        tokio::pin!(next);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut next)
                .await
                .is_err(),
            "a large page got memory while {most} others held it all"
        );
        drop(held);
        let (page, _share) = next.await.unwrap();
        assert_eq!(page.consignments.len(), 1);
    }

    #[test]
    fn a_lone_consignment_over_the_budget_still_gets_a_page() {
        let mut page = PageBuilder::new(Some(10), 1000, Overflow::EndPage);
        assert_eq!(page.push(1, consignment("big", 5000)), Step::Added);
        assert_eq!(page.push(2, consignment("next", 10)), Step::Full);
        assert_eq!(page.finish(true).next_page_token, "1");
    }
}
