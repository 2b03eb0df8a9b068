//! What the CLI prints when a service or an etcd record is hostile: a
//! ShippingService that answers with control characters in every field
//! (and in its error messages), and a registration whose key and metadata
//! carry them. Every output, text and JSON, keeps them inert (escaped), so
//! that nothing forges a line or drives the terminal. And the bare form,
//! when the create succeeded but the listing after it failed, prints the
//! created consignment, then the listing's error, and exits 1.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Output;

use common::run_cli;
use shippy_proto::consignment::v1 as pb;
use shippy_proto::consignment::v1::shipping_service_server::{
    ShippingService, ShippingServiceServer,
};
use shippy_test_support::TestRegistry;
use shippy_test_support::fixtures::{consignment, sample_file};
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Text a hostile service or record could send: a forged row, a window
/// title (OSC … BEL), a clear screen (CSI, 7-bit and C1), a carriage
/// return, DEL and a Unicode line separator.
const HOSTILE: &str = "x\n  forged  row\u{1b}]0;retitled\u{7}\u{1b}[2J\u{9b}2J\rover\u{7f}\u{2028}";
/// [`HOSTILE`] as the CLI shows it.
const ESCAPED: &str =
    r"x\n  forged  row\u{1b}]0;retitled\u{7}\u{1b}[2J\u{9b}2J\rover\u{7f}\u{2028}";

/// A consignment whose every text field is hostile.
fn hostile_consignment() -> pb::Consignment {
    let mut consignment = consignment(&format!("c{HOSTILE}"));
    consignment.description = HOSTILE.into();
    consignment.vessel_id = HOSTILE.into();
    for container in &mut consignment.containers {
        container.id = HOSTILE.into();
        container.customer_id = HOSTILE.into();
        container.origin = HOSTILE.into();
        container.user_id = HOSTILE.into();
    }
    consignment
}

/// A ShippingService that stores nothing and answers with hostile text.
struct HostileService {
    /// Whether GetConsignments fails (with a hostile message) instead of
    /// listing two hostile consignments.
    listing_fails: bool,
}

#[tonic::async_trait]
impl ShippingService for HostileService {
    async fn create_consignment(
        &self,
        _request: Request<pb::Consignment>,
    ) -> Result<Response<pb::Response>, Status> {
        Ok(Response::new(pb::Response {
            created: true,
            consignment: Some(hostile_consignment()),
            ..Default::default()
        }))
    }

    async fn get_consignments(
        &self,
        _request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::Response>, Status> {
        if self.listing_fails {
            return Err(Status::internal(format!("listing broke{HOSTILE}")));
        }
        Ok(Response::new(pb::Response {
            consignments: vec![hostile_consignment(), consignment("plain")],
            ..Default::default()
        }))
    }
}

/// Serves `service` on a free loopback port until the task is dropped.
/// The tests run on two threads, so that the server answers while the
/// test waits for the CLI.
struct Served {
    address: String,
    task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn serve(service: HostileService) -> Served {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = incoming.local_addr().unwrap().to_string();
    let server = Server::builder()
        .add_service(ShippingServiceServer::new(service))
        .serve_with_incoming(incoming);
    let task = tokio::spawn(async move {
        server.await.unwrap();
    });
    Served { address, task }
}

/// Panics if `text` holds a control character (other than the layout's
/// own newlines) or a line that `HOSTILE` forged.
fn assert_inert(what: &str, text: &str) {
    let raw = text
        .chars()
        .find(|&c| (c.is_control() && c != '\n') || matches!(c, '\u{2028}' | '\u{2029}'));
    assert!(raw.is_none(), "{what}: raw {raw:?} in {text:?}");
    assert!(
        !text
            .lines()
            .any(|line| line.trim_start().starts_with("forged")),
        "{what}: a forged line in {text}"
    );
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_listing_fails_prints_the_consignment_then_the_error_and_exits_1() {
    let registry = TestRegistry::shared().await.unwrap();
    let service = serve(HostileService {
        listing_fails: true,
    });
    let sample = sample_file();
    let sample = sample.to_str().unwrap();

    let output = run_cli(&registry, &["--address", &service.address, sample]);
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        out.starts_with(&format!("Created consignment c{ESCAPED}\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!("  vessel_id:   {ESCAPED}\n")),
        "{out}"
    );
    assert!(!out.contains("All consignments"), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        err,
        format!(
            "error: consignment c{ESCAPED} was created, but listing the consignments failed: \
             GetConsignments failed: INTERNAL: listing broke{ESCAPED}\n"
        )
    );
    assert_inert("stdout", &out);
    assert_inert("stderr", &err);

    // With --json, the created consignment is one JSON document, the same.
    let output = run_cli(
        &registry,
        &["--address", &service.address, "--json", sample],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let created: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(created["consignment"]["description"], HOSTILE);
    assert_inert("stdout --json", &stdout(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_services_and_etcd_records_send_is_printed_escaped() {
    let registry = TestRegistry::shared().await.unwrap();
    let service = serve(HostileService {
        listing_fails: false,
    });
    let sample = sample_file();
    let sample = sample.to_str().unwrap();
    let address = ["--address", service.address.as_str()];

    let listed = run_cli(&registry, &[&["list"], &address[..]].concat());
    assert!(listed.status.success(), "{listed:?}");
    let out = stdout(&listed);
    assert_inert("list", &out);
    // The header, the column titles and one row per consignment.
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.contains(&format!("c{ESCAPED}  {ESCAPED}")), "{out}");

    for args in [vec!["create", sample], vec![sample]] {
        let output = run_cli(&registry, &[&args[..], &address[..]].concat());
        assert!(output.status.success(), "{args:?}: {output:?}");
        let out = stdout(&output);
        assert_inert(&format!("{args:?}"), &out);
        assert!(
            out.contains(&format!(
                "    - {ESCAPED} customer {ESCAPED} from {ESCAPED}"
            )),
            "{out}"
        );
    }

    // JSON escapes them too, and gives the text back exactly.
    let output = run_cli(&registry, &[&["list", "--json"], &address[..]].concat());
    assert!(output.status.success(), "{output:?}");
    assert_inert("list --json", &stdout(&output));
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        listed["consignments"][0]["containers"][0]["origin"],
        HOSTILE
    );

    // A registration whose service name, instance id and metadata are
    // hostile, pointing at an address that refuses connections.
    let name = format!("evil{HOSTILE}");
    let id = format!("id{HOSTILE}");
    let key = registry.keys().instance_key(&name, &id);
    let record = serde_json::json!({
        "name": name,
        "id": id,
        "address": "127.0.0.1:1",
        "metadata": {HOSTILE: HOSTILE},
    });
    registry
        .client()
        .await
        .unwrap()
        .put(key, record.to_string(), None)
        .await
        .unwrap();
    let output = run_cli(&registry, &["services"]);
    assert!(output.status.success(), "{output:?}");
    let out = stdout(&output);
    assert_inert("services", &out);
    assert!(
        out.starts_with(&format!("evil{ESCAPED} (1 instance)\n")),
        "{out}"
    );
    assert!(out.contains(&format!("{ESCAPED}={ESCAPED}")), "{out}");
    let output = run_cli(&registry, &["services", "--json"]);
    assert!(output.status.success(), "{output:?}");
    assert_inert("services --json", &stdout(&output));
}
