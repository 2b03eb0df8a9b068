//! GetConsignments over consignments near the size limit, through the real
//! binaries: twelve consignments of 3.8 MB each (10,000 containers), 46 MB
//! in all, which a listing counted in rows alone put into one 46 MB
//! message no client would decode. Pages now end by bytes too, an unpaged
//! request too large for one message is refused, and listings in flight,
//! however many and however slowly their callers read, hold a bounded
//! amount of the server's memory.
//!
//! The callers that never read are raw HTTP/2 connections that advertise a
//! flow-control window of 0, so the server can send them no response data.
//!
//! Prints what it measured on a `limits:` line.

// Test code: a failed unwrap is a failed test, and the report goes to stdout.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::future::join_all;
use prost::Message;
use shippy_proto::consignment::v1 as pb;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_test_support::{ChildGuard, Etcd, free_port, spawn_service, wait_until, workspace_bin};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(20);
const VESSELS: &str = "/shippy/services/shippy.service.vessel/";
/// The consignments stored, and the containers in each.
const CONSIGNMENTS: usize = 12;
const CONTAINERS: usize = 10_000;
/// gRPC's default limit on a message received, which every page must fit.
const DEFAULT_MESSAGE_LIMIT: usize = 4 * 1024 * 1024;
/// Callers that ask for a large page and never read it.
const STALLED: usize = 16;

type Client = ShippingServiceClient<Channel>;

/// Consignment `n`: 10,000 containers of 384 bytes each, 3.84 MB encoded.
fn heavy(n: usize) -> pb::Consignment {
    pb::Consignment {
        id: format!("heavy-{n:02}"),
        description: format!("heavy consignment {n}"),
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

/// Starts consignment-service on `address` with its store in `data`, and
/// a client once it answers.
async fn start_consignment_service(
    etcd: &Etcd,
    logs: &Path,
    name: &str,
    address: &str,
    data: &Path,
) -> (ChildGuard, Client) {
    let data = data.to_str().unwrap();
    let env = [("SHIPPY_LISTEN_ADDR", address), ("SHIPPY_DATA_DIR", data)];
    let mut service =
        spawn_service("consignment-service", etcd.endpoint(), logs, name, &env).unwrap();
    wait_until(DEADLINE, &format!("{name} answering on {address}"), || {
        if let Some(status) = service.try_exit().unwrap() {
            panic!("{name} exited with {status}:\n{}", service.log_tail());
        }
        async move { connect(address).await.is_some() }
    })
    .await
    .unwrap();
    (service, connect(address).await.unwrap())
}

/// A client on its own connection, if the service answers.
async fn connect(address: &str) -> Option<Client> {
    let mut client = Client::connect(format!("http://{address}")).await.ok()?;
    // An empty page past the end: the service answers without reading any.
    let page = pb::GetRequest {
        page_size: 1,
        page_token: i64::MAX.to_string(),
    };
    client.get_consignments(page).await.ok()?;
    Some(client)
}

/// Opens an HTTP/2 connection whose receive window is 0 and asks it for
/// the first page, one consignment; the server can answer with headers
/// but never with the page, which stays with the server while the
/// connection is open.
async fn stalled_call(address: &str) -> TcpStream {
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags];
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        frame
    }
    // HPACK: each header a literal without indexing, its name a literal.
    let mut headers = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (
            ":path",
            "/shippy.consignment.v1.ShippingService/GetConsignments",
        ),
        (":authority", address),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        headers.push(0);
        headers.push(u8::try_from(name.len()).unwrap());
        headers.extend(name.as_bytes());
        headers.push(u8::try_from(value.len()).unwrap());
        headers.extend(value.as_bytes());
    }
    let request = pb::GetRequest {
        page_size: 1,
        page_token: String::new(),
    }
    .encode_to_vec();
    let mut message = vec![0];
    message.extend(u32::try_from(request.len()).unwrap().to_be_bytes());
    message.extend(request);

    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS: INITIAL_WINDOW_SIZE (4) = 0.
    bytes.extend(frame(0x4, 0, 0, &[0, 4, 0, 0, 0, 0]));
    bytes.extend(frame(0x1, 0x4, 1, &headers)); // HEADERS, END_HEADERS
    bytes.extend(frame(0x0, 0x1, 1, &message)); // DATA, END_STREAM
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    stream
}

/// Whether a large page comes back within a second, as a caller with a
/// deadline sees it; panics on any answer but the page or DEADLINE_EXCEEDED.
async fn large_page_within_a_second(address: &str) -> bool {
    let mut client = connect(address).await.unwrap();
    let mut request = tonic::Request::new(pb::GetRequest {
        page_size: 1,
        page_token: String::new(),
    });
    request.set_timeout(Duration::from_secs(1));
    match client.get_consignments(request).await {
        Ok(page) => {
            assert_eq!(page.into_inner().consignments.len(), 1);
            true
        }
        Err(status) if status.code() == Code::DeadlineExceeded => false,
        Err(status) => panic!("{status:?}"),
    }
}

/// A process's resident set and its peak since start, in bytes.
fn memory(process: &ChildGuard) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.pid())).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|line| line.starts_with(name)).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_six_megabytes_of_consignments_list_in_pages_that_decode_within_bounded_memory() {
    let etcd = Etcd::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let data = logs.path().join("data");
    let _vessel = spawn_service(
        "vessel-service",
        etcd.endpoint(),
        logs.path(),
        "vessel",
        &[],
    )
    .unwrap();
    wait_until(DEADLINE, "vessel-service registered", || async {
        !etcd.get_prefix(VESSELS).await.unwrap().is_empty()
    })
    .await
    .unwrap();
    let address = format!("127.0.0.1:{}", free_port().unwrap());

    // Stored by one process, listed by a fresh one, so that what the
    // listings take is not hidden in memory the creates left behind.
    let (filler, mut client) =
        start_consignment_service(&etcd, logs.path(), "filler", &address, &data).await;
    let size = heavy(0).encoded_len();
    assert!(size > 3_800_000, "{size}");
    for n in 0..CONSIGNMENTS {
        client.create_consignment(heavy(n)).await.unwrap();
    }
    drop((client, filler));
    let (service, mut client) =
        start_consignment_service(&etcd, logs.path(), "lister", &address, &data).await;
    let (rss_at_start, _) = memory(&service);

    // Callers that ask for a large page and never read it keep their pages
    // in the server, but only as many as the listing memory holds: the
    // rest wait, so a listing with a deadline times out, until they leave.
    let stalled = join_all((0..STALLED).map(|_| stalled_call(&address))).await;
    wait_until(
        DEADLINE,
        "listing memory to be held by stalled callers",
        || async { !large_page_within_a_second(&address).await },
    )
    .await
    .unwrap();
    let (rss_while_stalled, peak_while_stalled) = memory(&service);
    drop(stalled);
    wait_until(
        DEADLINE,
        "listing memory to come back once the stalled callers left",
        || large_page_within_a_second(&address),
    )
    .await
    .unwrap();

    // Unpaged, all twelve do not fit in a message: refused, four at once,
    // without building a 46 MB response.
    let unpaged = join_all((0..4).map(|_| async {
        let mut client = connect(&address).await.unwrap();
        client.get_consignments(pb::GetRequest::default()).await
    }))
    .await;
    for answer in unpaged {
        let status = answer.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("page_size"), "{status:?}");
    }
    let (_, peak_after_unpaged) = memory(&service);

    // Paged, one consignment per page (two would not fit in 4 MiB), each
    // page within the limit, every consignment once, in creation order.
    let mut token = String::new();
    let mut listed = Vec::new();
    loop {
        let request = pb::GetRequest {
            page_size: 1000,
            page_token: token,
        };
        let page = client.get_consignments(request).await.unwrap().into_inner();
        assert!(
            page.encoded_len() < DEFAULT_MESSAGE_LIMIT,
            "{}",
            page.encoded_len()
        );
        assert_eq!(page.consignments.len(), 1);
        listed.extend(page.consignments.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<_> = (0..CONSIGNMENTS).map(|n| heavy(n).id).collect();
    assert_eq!(listed, expected);

    // The CLI pages through all of them, every page decoding.
    let cli = Command::new(workspace_bin("consignment-cli", "consignment-cli").unwrap())
        .env_clear()
        .args(["list", "--address", &address])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&cli.stdout);
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(cli.status.success(), "{}: {stderr}", cli.status);
    assert!(stdout.starts_with("All consignments (12):\n"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.contains("heavy-")).count(), 12);

    println!(
        "limits: 12 consignments of {:.2} MB; RSS {:.0} MB at start, {:.0} MB (peak {:.0} MB) \
         with {STALLED} callers stalled on a page each; peak {:.0} MB after 4 concurrent \
         unpaged calls (RESOURCE_EXHAUSTED)",
        mb(size as u64),
        mb(rss_at_start),
        mb(rss_while_stalled),
        mb(peak_while_stalled),
        mb(peak_after_unpaged),
    );
    const BOUND: u64 = 100_000_000;
    assert!(peak_while_stalled < BOUND, "{} MB", mb(peak_while_stalled));
    assert!(peak_after_unpaged < BOUND, "{} MB", mb(peak_after_unpaged));
}
