//! GetConsignments against consignments as large as a create allows,
//! through the real binaries: twelve of 3.84 MB each (10,000 containers),
//! 46 MB in all, where one message may hold 4 MiB. Pages are bounded by
//! bytes as well as rows, so `consignment-cli list` decodes every page; an
//! unpaged request too large for one message is refused naming
//! `page_size`; and listings in flight, however many and however slowly
//! their callers read, hold a bounded amount of the server's memory.
//!
//! The callers that never read are raw HTTP/2 connections that advertise a
//! flow-control window of 0: the server can send them a response's headers
//! (which flow control does not hold back) but never its page, which it
//! keeps for as long as the connection is open. The headers tell the test
//! which pages were built; a listing sent once the listing memory is held
//! must wait for it, so it ends at its deadline unanswered.
//!
//! Prints what it measured on a `limits:` line.

// Test code: a failed unwrap is a failed test, and the report goes to stdout.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use consignment_service::domain::NewConsignment;
use consignment_service::listing::{LISTING_MEMORY_BYTES, MAX_PAGE_BYTES};
use consignment_service::repository::ConsignmentRepository;
use consignment_service::repository::sqlite::{self, SqliteRepository};
use futures::future::join_all;
use prost::Message;
use shippy_proto::consignment::v1 as pb;
use shippy_test_support::attack::{RawConnection, frames, kind, rss_bytes};
use shippy_test_support::{DEADLINE, Service, ServiceProcess, TestRegistry, cli, wait_until};
use sqlx::{Connection, SqliteConnection};
use tokio::task::JoinHandle;
use tonic::Code;

/// The consignments stored, and the containers in each.
const CONSIGNMENTS: usize = 12;
const CONTAINERS: usize = 10_000;
/// gRPC's default limit on a message received, which every page must fit.
const DEFAULT_MESSAGE_LIMIT: usize = 4 * 1024 * 1024;
/// Callers that ask for a large page and never read it. Bounded, only the
/// pages the listing memory holds are built; unbounded, all of them would
/// be, and held: some 180 MB as decoded messages.
const STALLED: usize = 32;
/// The deadline of a listing sent while the stalled callers hold the
/// listing memory: it must wait for memory, and so end at its deadline
/// unanswered, where an empty page is otherwise answered in milliseconds.
const PROBE_DEADLINE: Duration = Duration::from_millis(500);
/// Unpaged listings sent at once.
const UNPAGED: usize = 4;
/// How much the lister's resident memory may grow over its memory at start
/// while the stalled callers hold their pages: the two pages the listing
/// memory holds, as decoded messages (about 1.5 times their encoded size),
/// and what reading them left in the allocator's per-thread arenas.
const STALLED_GROWTH_BOUND: u64 = 64_000_000;
/// How much its peak resident memory may grow over the whole test, with
/// pages read and sent two at a time. A single unpaged response built
/// whole would pass it: 46 MB encoded, on top of twelve decoded messages.
const PEAK_GROWTH_BOUND: u64 = 200_000_000;
const GET_CONSIGNMENTS: &str = "/shippy.consignment.v1.ShippingService/GetConsignments";

/// The id of consignment `n`, in creation order.
fn heavy_id(n: usize) -> String {
    format!("heavy-{n:02}")
}

/// The description of consignment `n`.
fn heavy_description(n: usize) -> String {
    format!("heavy consignment {n}")
}

/// Consignment `n`: 10,000 containers of 384 bytes each, 3.84 MB encoded.
fn heavy(n: usize) -> pb::Consignment {
    pb::Consignment {
        id: heavy_id(n),
        description: heavy_description(n),
        weight: 1_000_000,
        containers: (0..CONTAINERS)
            .map(|i| pb::Container {
                id: format!("box-{i:05}"),
                customer_id: "cust001".into(),
                origin: "o".repeat(349),
                user_id: "user001".into(),
            })
            .collect(),
        vessel_id: String::new(),
    }
}

/// A request with the caller's deadline set, as the CLI sends them.
fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(DEADLINE);
    request
}

/// Stores the heavy consignments in the SQLite store in `data` before the
/// service starts, so that its memory holds nothing the creates left: the
/// first through the service's own validation and store, the others as
/// copies of its row (encoding 4 MB of JSON takes a debug build a quarter
/// of a second each).
async fn store_heavy_consignments(data: &Path) {
    let store = SqliteRepository::open_in(data).await.unwrap();
    let first = NewConsignment::parse(heavy(0)).unwrap();
    store
        .create(first.assign("vessel001".into()))
        .await
        .unwrap();
    drop(store);
    let file = data.join(sqlite::FILE_NAME);
    let mut connection = SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    for n in 1..CONSIGNMENTS {
        sqlx::query(
            "INSERT INTO consignments (id, description, weight, vessel_id, containers) \
             SELECT ?1, ?2, weight, vessel_id, containers FROM consignments WHERE id = ?3",
        )
        .bind(heavy_id(n))
        .bind(heavy_description(n))
        .bind(heavy_id(0))
        .execute(&mut connection)
        .await
        .unwrap();
    }
}

/// A caller that asked for the first page, one consignment, on a
/// connection whose receive window is 0, and reads nothing but the frame
/// headers of what the server sends. Dropping it closes the connection.
struct StalledCaller {
    /// Set once the response's HEADERS arrive: the server has built the
    /// page and holds it, unsent.
    answered: Arc<AtomicBool>,
    reader: JoinHandle<()>,
}

impl StalledCaller {
    async fn start(address: SocketAddr) -> Self {
        let request = pb::GetRequest {
            page_size: 1,
            page_token: String::new(),
        }
        .encode_to_vec();
        let length = u32::try_from(request.len()).unwrap();
        let message = [&frames::grpc_prefix(length)[..], &request].concat();
        // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 0.
        let settings = frames::frame(kind::SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]);
        let headers = frames::request_headers(1, GET_CONSIGNMENTS, "application/grpc", &[], false);
        let mut connection = RawConnection::connect(address).await.unwrap();
        connection
            .send(
                &[
                    frames::PREFACE,
                    &settings,
                    &headers,
                    &frames::data(1, &message, true),
                ]
                .concat(),
            )
            .await
            .unwrap();
        let answered = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&answered);
        let reader = tokio::spawn(async move {
            while let Ok(Some(frame)) = connection.next_frame().await {
                if frame.kind == kind::HEADERS && frame.stream_id == 1 {
                    seen.store(true, Ordering::SeqCst);
                }
            }
        });
        Self { answered, reader }
    }

    fn answered(&self) -> bool {
        self.answered.load(Ordering::SeqCst)
    }
}

impl Drop for StalledCaller {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// How many of `callers` the server has answered (built a page for).
fn answered(callers: &[StalledCaller]) -> usize {
    callers.iter().filter(|caller| caller.answered()).count()
}

/// A process's peak resident set since start (VmHWM), in bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .unwrap();
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
    kib * 1024
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_six_megabytes_of_consignments_list_in_pages_that_decode_within_bounded_memory() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let data = logs.path().join("data");
    let env = [("SHIPPY_DATA_DIR", data.to_str().unwrap())];
    let size = heavy(0).encoded_len();
    assert!(size > 3_800_000 && size < MAX_PAGE_BYTES, "{size}");
    store_heavy_consignments(&data).await;
    let service =
        ServiceProcess::start(&registry, Service::Consignment, logs.path(), "lister", &env)
            .await
            .unwrap();
    let address: SocketAddr = service.address().parse().unwrap();
    let rss_at_start = rss_bytes(service.pid()).unwrap();

    // Callers that ask for a large page and never read it keep their pages
    // in the server, but only as many as the listing memory holds: the
    // rest wait, and so does any other listing, even of an empty page,
    // until they leave.
    let stalled = join_all((0..STALLED).map(|_| StalledCaller::start(address))).await;
    let pages_held = LISTING_MEMORY_BYTES / size;
    wait_until(DEADLINE, "stalled callers' pages to be built", || {
        let built = answered(&stalled);
        async move { built >= pages_held }
    })
    .await
    .unwrap();
    let mut probe = service.shipping_client().await.unwrap();
    let mut past_the_end = tonic::Request::new(pb::GetRequest {
        page_size: 1,
        page_token: i64::MAX.to_string(),
    });
    past_the_end.set_timeout(PROBE_DEADLINE);
    let waited = probe.get_consignments(past_the_end).await.unwrap_err();
    // tonic ends a call whose caller's deadline passed with CANCELLED
    // "Timeout expired"; DEADLINE_EXCEEDED would do as well.
    assert!(
        matches!(waited.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{waited:?}"
    );
    assert_eq!(answered(&stalled), pages_held);
    let rss_while_stalled = rss_bytes(service.pid()).unwrap();
    // Leaving closes their connections, which frees their pages.
    drop(stalled);

    // Unpaged, all twelve do not fit in a message: refused, several at
    // once, without building a 46 MB response.
    let mut client = service.shipping_client().await.unwrap();
    let unpaged = join_all((0..UNPAGED).map(|_| {
        let mut client = client.clone();
        async move {
            client
                .get_consignments(with_deadline(pb::GetRequest::default()))
                .await
        }
    }))
    .await;
    for answer in unpaged {
        let status = answer.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("page_size"), "{status:?}");
    }

    // A page of up to 1000 holds one: two would not fit in a message.
    let first = pb::GetRequest {
        page_size: 1000,
        page_token: String::new(),
    };
    let page = client
        .get_consignments(with_deadline(first))
        .await
        .unwrap()
        .into_inner();
    assert!(page.encoded_len() < DEFAULT_MESSAGE_LIMIT);
    assert_eq!(page.consignments.len(), 1);
    assert!(!page.next_page_token.is_empty());

    // The CLI pages through all of them, every page decoding with gRPC's
    // default limit.
    let listed = cli(&registry).unwrap().arg("list").output().unwrap();
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    assert!(stdout.starts_with("All consignments (12):\n"), "{stdout}");
    let ids: Vec<_> = stdout
        .lines()
        .skip(2)
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let expected: Vec<_> = (0..CONSIGNMENTS).map(heavy_id).collect();
    assert_eq!(ids, expected);
    let peak = peak_rss_bytes(service.pid());

    println!(
        "limits: {CONSIGNMENTS} consignments of {:.2} MB; lister RSS {:.0} MB at start, \
         {:.0} MB with {STALLED} callers stalled on a page each ({pages_held} pages built, \
         the rest and a probe waiting); peak {:.0} MB over the stalled callers, \
         {UNPAGED} concurrent unpaged calls (RESOURCE_EXHAUSTED) and `consignment-cli list`",
        mb(size as u64),
        mb(rss_at_start),
        mb(rss_while_stalled),
        mb(peak),
    );
    assert!(
        rss_while_stalled < rss_at_start + STALLED_GROWTH_BOUND,
        "{} MB while stalled",
        mb(rss_while_stalled)
    );
    assert!(
        peak < rss_at_start + PEAK_GROWTH_BOUND,
        "peak {} MB",
        mb(peak)
    );
}
