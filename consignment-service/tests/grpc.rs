//! consignment-service over gRPC, with vessel-service found through a real etcd.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use shippy_proto::consignment::v1 as pb;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_proto::vessel::v1 as vessel_pb;
use shippy_proto::vessel::v1::vessel_service_server::{VesselService, VesselServiceServer};
use shippy_registry::EtcdClient;
use shippy_registry::{KeySpace, Registration, RegistrationState, ServiceRecord};
use shippy_test_support::Etcd;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

const DEADLINE: Duration = Duration::from_secs(10);

/// A running service: stop it by sending on `stop`.
struct Running {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn args(etcd: &Etcd, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "test".to_owned(),
        "--listen=127.0.0.1:0".to_owned(),
        format!("--etcd-endpoints={}", etcd.endpoint()),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

async fn spawn_vessel_service(etcd: &Etcd) -> Running {
    let config = vessel_service::Config::try_parse_from(args(etcd, &[])).unwrap();
    let app = vessel_service::Application::build(config).await.unwrap();
    let address = app.server().local_addr().unwrap();
    let mut state = app.server().registration_state();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(
        DEADLINE,
        state.wait_for(|s| *s == RegistrationState::Registered),
    )
    .await
    .expect("vessel-service registers")
    .unwrap();
    Running {
        address,
        stop,
        task,
    }
}

/// Starts consignment-service and waits until it sees `vessels` vessel instances.
async fn spawn_consignment_service(etcd: &Etcd, vessels: usize, extra: &[&str]) -> Running {
    // The handler is under test here, not the store.
    let extra = [&["--database-url=memory://"], extra].concat();
    let config = consignment_service::Config::try_parse_from(args(etcd, &extra)).unwrap();
    let app = consignment_service::Application::build(config)
        .await
        .unwrap();
    let address = app.server().local_addr().unwrap();
    let mut instances = app.vessel_instances();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(DEADLINE, instances.wait_for(|now| now.len() == vessels))
        .await
        .expect("consignment-service discovers vessel-service")
        .unwrap();
    Running {
        address,
        stop,
        task,
    }
}

async fn client(address: SocketAddr) -> ShippingServiceClient<Channel> {
    ShippingServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap()
}

fn container(customer: &str) -> pb::Container {
    pb::Container {
        id: String::new(),
        customer_id: customer.into(),
        origin: "Manchester, United Kingdom".into(),
        user_id: "user001".into(),
    }
}

fn sample() -> pb::Consignment {
    pb::Consignment {
        id: String::new(),
        description: "This is a test consignment".into(),
        weight: 55_000,
        containers: vec![
            container("cust001"),
            container("cust002"),
            container("cust005"),
        ],
        vessel_id: String::new(),
    }
}

#[tokio::test]
async fn a_consignment_is_stored_with_the_vessel_found_through_etcd() {
    let etcd = Etcd::start().await.unwrap();
    let vessels = spawn_vessel_service(&etcd).await;
    let consignments = spawn_consignment_service(&etcd, 1, &[]).await;
    let mut client = client(consignments.address).await;

    let created = client
        .create_consignment(sample())
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

    consignments.stop().await;
    vessels.stop().await;
}

#[tokio::test]
async fn refusals_carry_the_right_status_and_store_nothing() {
    let etcd = Etcd::start().await.unwrap();
    let vessels = spawn_vessel_service(&etcd).await;
    let consignments = spawn_consignment_service(&etcd, 1, &[]).await;
    let mut client = client(consignments.address).await;

    let mut no_weight = sample();
    no_weight.weight = 0;
    let err = client.create_consignment(no_weight).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("weight"), "{}", err.message());

    let mut too_heavy = sample();
    too_heavy.weight = 2_000_000_000;
    let err = client.create_consignment(too_heavy).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        err.message(),
        "no vessel can carry 3 containers weighing 2000000000 kg"
    );

    let mut named = sample();
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

    consignments.stop().await;
    vessels.stop().await;
}

#[tokio::test]
async fn an_over_size_message_is_resource_exhausted() {
    let etcd = Etcd::start().await.unwrap();
    let consignments = spawn_consignment_service(&etcd, 0, &[]).await;
    let mut client = client(consignments.address).await;

    let mut huge = sample();
    huge.description = "x".repeat(5 * 1024 * 1024);
    let err = client.create_consignment(huge).await.unwrap_err();

    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("too large"), "{}", err.message());
    consignments.stop().await;
}

#[tokio::test]
async fn with_no_vessel_service_registered_the_call_fails_fast_and_says_why() {
    let etcd = Etcd::start().await.unwrap();
    let consignments = spawn_consignment_service(&etcd, 0, &[]).await;
    let mut client = client(consignments.address).await;

    let mut request = Request::new(sample());
    request.set_timeout(Duration::from_secs(5));
    let started = std::time::Instant::now();
    let err = client.create_consignment(request).await.unwrap_err();

    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("shippy.service.vessel"),
        "{}",
        err.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    consignments.stop().await;
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
    let etcd = Etcd::start().await.unwrap();
    let recorder = DeadlineRecorder::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(VesselServiceServer::new(recorder.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let registration = Registration::spawn(
        EtcdClient::connect(&[etcd.endpoint().to_owned()])
            .await
            .unwrap(),
        KeySpace::new("/shippy/services").instance_key("shippy.service.vessel", "recorder"),
        &ServiceRecord {
            name: "shippy.service.vessel".into(),
            id: "recorder".into(),
            address: address.to_string().parse().unwrap(),
            metadata: Default::default(),
        },
        Duration::from_secs(5),
    );
    let consignments = spawn_consignment_service(&etcd, 1, &["--vessel-timeout=7"]).await;
    let mut client = client(consignments.address).await;

    let mut with_deadline = Request::new(sample());
    with_deadline.set_timeout(Duration::from_millis(1500));
    let created = client.create_consignment(with_deadline).await.unwrap();
    assert_eq!(
        created.into_inner().consignment.unwrap().vessel_id,
        "recorder"
    );
    client.create_consignment(sample()).await.unwrap();

    let seen = recorder.seen.lock().unwrap().clone();
    let passed_on = millis(seen[0].as_deref().expect("a deadline on the first call"));
    assert!(
        (1..=1500).contains(&passed_on),
        "first call got {passed_on} ms"
    );
    let default = millis(
        seen[1]
            .as_deref()
            .expect("the default deadline on the second call"),
    );
    assert!(
        (6000..=7000).contains(&default),
        "second call got {default} ms"
    );

    consignments.stop().await;
    registration.deregister().await;
    server.abort();
}

/// Asks a server's reflection service one question.
async fn reflect(
    address: SocketAddr,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> tonic_reflection::pb::v1::server_reflection_response::MessageResponse {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;

    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
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
async fn listed_services(address: SocketAddr) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    match reflect(address, MessageRequest::ListServices(String::new())).await {
        MessageResponse::ListServicesResponse(list) => {
            let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("unexpected answer {other:?}"),
    }
}

/// The methods of `service`, from the descriptors reflection serves for it.
async fn resolved_methods(address: SocketAddr, service: &str) -> Vec<String> {
    use prost::Message;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let answer = reflect(
        address,
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
    let etcd = Etcd::start().await.unwrap();
    let vessels = spawn_vessel_service(&etcd).await;
    let consignments = spawn_consignment_service(&etcd, 1, &[]).await;
    let common = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ];

    let vessel_services = listed_services(vessels.address).await;
    let consignment_services = listed_services(consignments.address).await;

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
        resolved_methods(vessels.address, "shippy.vessel.v1.VesselService").await,
        ["FindAvailable"]
    );
    assert_eq!(
        resolved_methods(
            consignments.address,
            "shippy.consignment.v1.ShippingService"
        )
        .await,
        ["CreateConsignment", "GetConsignments"]
    );
    assert_eq!(
        resolved_methods(vessels.address, "grpc.health.v1.Health").await,
        ["Check", "Watch"]
    );

    consignments.stop().await;
    vessels.stop().await;
}
