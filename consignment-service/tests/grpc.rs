//! consignment-service over gRPC, with vessel-service found through a real
//! etcd: the one this test binary shares, under a key prefix per test.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use consignment_service::{Application, Config};
use shippy_proto::consignment::v1 as pb;
use shippy_proto::vessel::SERVICE_NAME as VESSEL_SERVICE;
use shippy_proto::vessel::v1 as vessel_pb;
use shippy_proto::vessel::v1::vessel_service_server::{VesselService, VesselServiceServer};
use shippy_registry::{Registration, ServiceRecord};
use shippy_test_support::fixtures::sample_consignment;
use shippy_test_support::{
    DEADLINE, InProcessService, Service, ServiceProcess, TestRegistry, registered,
};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

/// Starts the vessel-service binary and waits until it has registered.
async fn start_vessel_service(registry: &TestRegistry, logs: &Path) -> ServiceProcess {
    ServiceProcess::start(registry, Service::Vessel, logs, "vessel", &[])
        .await
        .unwrap()
}

/// Builds consignment-service with `extra` flags, runs it on a task, and
/// waits until it sees `vessels` vessel-service instances.
async fn start_consignment_service(
    registry: &TestRegistry,
    vessels: usize,
    extra: &[&str],
) -> InProcessService {
    // The handler is under test here, not the store.
    let args = [
        "consignment-service",
        "--listen=127.0.0.1:0",
        "--database-url=memory://",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(registry.args())
    .chain(extra.iter().map(|arg| (*arg).to_owned()));
    let app = Application::build(Config::try_parse_from(args).unwrap())
        .await
        .unwrap();
    let mut instances = app.vessel_instances();
    let server = app.server();
    let (address, key, state) = (
        server.local_addr().unwrap(),
        server.key().to_owned(),
        server.registration_state(),
    );
    let service = InProcessService::spawn(address, &key, state, |stop| app.run_until_stopped(stop));
    tokio::time::timeout(DEADLINE, instances.wait_for(|now| now.len() == vessels))
        .await
        .expect("consignment-service discovers vessel-service")
        .unwrap();
    service
}

#[tokio::test]
async fn a_consignment_is_stored_with_the_vessel_found_through_etcd() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let vessels = start_vessel_service(&registry, logs.path()).await;
    let consignments = start_consignment_service(&registry, 1, &[]).await;
    let mut client = consignments.shipping_client().await.unwrap();

    let created = client
        .create_consignment(sample_consignment())
        .await
        .unwrap()
        .into_inner();
    let listed = client
        .get_consignments(pb::GetRequest::default())
        .await
        .unwrap()
        .into_inner();

    assert!(created.created);
    let stored = created.consignment.unwrap();
    assert_eq!(stored.vessel_id, "vessel001");
    assert!(!stored.id.is_empty());
    assert_eq!(stored.containers.len(), 3);
    assert_eq!(listed.consignments, vec![stored]);

    consignments.stop().await.unwrap();
    assert!(vessels.stop().await.unwrap().success());
}

#[tokio::test]
async fn refusals_carry_the_right_status_and_store_nothing() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let vessels = start_vessel_service(&registry, logs.path()).await;
    let consignments = start_consignment_service(&registry, 1, &[]).await;
    let mut client = consignments.shipping_client().await.unwrap();

    let mut no_weight = sample_consignment();
    no_weight.weight = 0;
    let err = client.create_consignment(no_weight).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("weight"), "{}", err.message());

    let mut too_heavy = sample_consignment();
    too_heavy.weight = 2_000_000_000;
    let err = client.create_consignment(too_heavy).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        err.message(),
        "no vessel can carry 3 containers weighing 2000000000 kg"
    );

    let mut named = sample_consignment();
    named.id = "c-1".into();
    client.create_consignment(named.clone()).await.unwrap();
    let err = client.create_consignment(named).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("c-1"), "{}", err.message());

    let listed = client
        .get_consignments(pb::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = listed.consignments.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["c-1"]);

    consignments.stop().await.unwrap();
    assert!(vessels.stop().await.unwrap().success());
}

#[tokio::test]
async fn an_over_size_message_is_resource_exhausted() {
    let registry = TestRegistry::shared().await.unwrap();
    let consignments = start_consignment_service(&registry, 0, &[]).await;
    let mut client = consignments.shipping_client().await.unwrap();

    let mut huge = sample_consignment();
    huge.description = "x".repeat(5 * 1024 * 1024);
    let err = client.create_consignment(huge).await.unwrap_err();

    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("too large"), "{}", err.message());
    consignments.stop().await.unwrap();
}

#[tokio::test]
async fn with_no_vessel_service_registered_the_call_fails_fast_and_says_why() {
    let registry = TestRegistry::shared().await.unwrap();
    let consignments = start_consignment_service(&registry, 0, &[]).await;
    let mut client = consignments.shipping_client().await.unwrap();

    // A deadline far beyond the test's: failing fast means answering long
    // before it, not waiting it out.
    let mut request = Request::new(sample_consignment());
    request.set_timeout(Duration::from_secs(3600));
    let err = tokio::time::timeout(DEADLINE, client.create_consignment(request))
        .await
        .expect("an answer long before the call's deadline")
        .unwrap_err();

    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains(VESSEL_SERVICE), "{}", err.message());
    consignments.stop().await.unwrap();
}

/// A vessel-service stand-in that records the deadline each call arrived with.
#[derive(Clone, Default)]
struct DeadlineRecorder {
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

#[tonic::async_trait]
impl VesselService for DeadlineRecorder {
    async fn find_available(
        &self,
        request: Request<vessel_pb::Specification>,
    ) -> Result<Response<vessel_pb::Response>, Status> {
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        self.seen.lock().unwrap().push(timeout);
        Ok(Response::new(vessel_pb::Response {
            vessel: Some(vessel_pb::Vessel {
                id: "recorder".into(),
                ..Default::default()
            }),
            vessels: Vec::new(),
        }))
    }
}

/// Parses a grpc-timeout header value into milliseconds.
fn millis(header: &str) -> u64 {
    let (digits, unit) = header.split_at(header.len() - 1);
    let amount: u64 = digits.parse().unwrap();
    match unit {
        "S" => amount * 1000,
        "m" => amount,
        "u" => amount / 1000,
        "n" => amount / 1_000_000,
        other => panic!("unexpected unit {other}"),
    }
}

#[tokio::test]
async fn the_callers_deadline_is_passed_on_to_vessel_service() {
    let registry = TestRegistry::shared().await.unwrap();
    let recorder = DeadlineRecorder::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(VesselServiceServer::new(recorder.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let registration = Registration::spawn(
        registry.etcd_client().await.unwrap(),
        registry.keys().instance_key(VESSEL_SERVICE, "recorder"),
        &ServiceRecord {
            name: VESSEL_SERVICE.into(),
            id: "recorder".into(),
            address: address.to_string().parse().unwrap(),
            metadata: Default::default(),
        },
        Duration::from_secs(5),
    );
    registered(registration.state()).await.unwrap();
    // Both deadlines far apart and far longer than the calls take, so each
    // is told from the other however slowly the calls run.
    let consignments = start_consignment_service(&registry, 1, &["--vessel-timeout=300"]).await;
    let mut client = consignments.shipping_client().await.unwrap();

    let mut with_deadline = Request::new(sample_consignment());
    with_deadline.set_timeout(Duration::from_secs(60));
    let created = client.create_consignment(with_deadline).await.unwrap();
    assert_eq!(
        created.into_inner().consignment.unwrap().vessel_id,
        "recorder"
    );
    client
        .create_consignment(sample_consignment())
        .await
        .unwrap();

    let seen = recorder.seen.lock().unwrap().clone();
    let slack = u64::try_from(DEADLINE.as_millis()).unwrap();
    let passed_on = millis(seen[0].as_deref().expect("a deadline on the first call"));
    assert!(
        (60_000 - slack..=60_000).contains(&passed_on),
        "first call got {passed_on} ms"
    );
    let default = millis(
        seen[1]
            .as_deref()
            .expect("the default deadline on the second call"),
    );
    assert!(
        (300_000 - slack..=300_000).contains(&default),
        "second call got {default} ms"
    );

    consignments.stop().await.unwrap();
    registration.deregister().await;
    server.abort();
}

/// Asks a server's reflection service one question.
async fn reflect(
    channel: Channel,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> tonic_reflection::pb::v1::server_reflection_response::MessageResponse {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;

    let mut client = ServerReflectionClient::new(channel);
    let question = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([question]))
        .await
        .unwrap()
        .into_inner();
    answers
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

/// The services a server lists through reflection.
async fn listed_services(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    match reflect(channel, MessageRequest::ListServices(String::new())).await {
        MessageResponse::ListServicesResponse(list) => {
            let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("unexpected answer {other:?}"),
    }
}

/// The methods of `service`, from the descriptors reflection serves for it.
async fn resolved_methods(channel: Channel, service: &str) -> Vec<String> {
    use prost::Message;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let answer = reflect(
        channel,
        MessageRequest::FileContainingSymbol(service.to_owned()),
    )
    .await;
    let MessageResponse::FileDescriptorResponse(files) = answer else {
        panic!("unexpected answer {answer:?}");
    };
    let (package, name) = service.rsplit_once('.').unwrap();
    files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .filter(|file| file.package() == package)
        .flat_map(|file| file.service)
        .filter(|described| described.name() == name)
        .flat_map(|described| described.method)
        .map(|method| method.name().to_owned())
        .collect()
}

#[tokio::test]
async fn reflection_lists_what_each_server_serves_and_resolves_its_methods() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let vessels = start_vessel_service(&registry, logs.path()).await;
    let consignments = start_consignment_service(&registry, 1, &[]).await;
    let vessel_channel = vessels.channel().await.unwrap();
    let consignment_channel = consignments.channel().await.unwrap();
    let common = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ];

    let vessel_services = listed_services(vessel_channel.clone()).await;
    let consignment_services = listed_services(consignment_channel.clone()).await;

    let expected = |own: &str| {
        let mut names: Vec<String> = common.iter().map(|s| (*s).to_owned()).collect();
        names.push(own.to_owned());
        names.sort();
        names
    };
    assert_eq!(vessel_services, expected("shippy.vessel.v1.VesselService"));
    assert_eq!(
        consignment_services,
        expected("shippy.consignment.v1.ShippingService")
    );
    assert_eq!(
        resolved_methods(vessel_channel.clone(), "shippy.vessel.v1.VesselService").await,
        ["FindAvailable"]
    );
    assert_eq!(
        resolved_methods(consignment_channel, "shippy.consignment.v1.ShippingService").await,
        ["CreateConsignment", "GetConsignments"]
    );
    assert_eq!(
        resolved_methods(vessel_channel.clone(), "grpc.health.v1.Health").await,
        ["Check", "Watch"]
    );

    consignments.stop().await.unwrap();
    assert!(vessels.stop().await.unwrap().success());
}
