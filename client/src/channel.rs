//! Calling one of a service's instances, and another one when it is down.
//!
//! [`ServiceChannel`] is a tower `Service` over gRPC's HTTP/2 requests, so a
//! generated client takes it as it is: `VesselServiceClient::new(channel)`.
//! Behind it, each instance has its own lazily connected tonic channel.
//! Calls go round robin from a random start; a call that fails because its
//! instance is unreachable (refused, reset, UNAVAILABLE) or hangs is sent
//! again to the next instance within the call's deadline, and the instance
//! that failed is tried last for a while. An instance that answers as
//! something else (UNIMPLEMENTED, or not gRPC at all: a record pointing at
//! the wrong server) is tried last for longer. A balancer that hides which
//! endpoint failed cannot do this: it keeps choosing a dead instance (which
//! fails fast, so looks idle) until its registration expires.
//!
//! What travels with the call needs no code at the call site: the deadline
//! is the call's own `grpc-timeout`, else that of the call being served
//! (see [`crate::context`]), else the channel's default; and the request
//! id of the call being served goes out as `x-request-id`.
//!
//! A call may reach an instance that dies before answering and then be sent
//! again, so request bodies are buffered and a call is only sent again when
//! that is safe: always when the instance was never reached or is not the
//! service called, and otherwise unless the request carries [`SendOnce`]
//! (for calls that are not idempotent, such as a create without a
//! caller-chosen id).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use shippy_registry::{AdvertiseAddr, Discovery, InstanceMap};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::warn;

use crate::context::{self, REQUEST_ID_HEADER};
use crate::grpc_timeout;

/// How long dialing one instance may take; a dead instance must fail fast so
/// the call moves on.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a connection to an instance is pinged, and how long a ping may
/// go unanswered before the connection counts as dead (a host that vanished
/// without closing its connections).
const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an instance that failed is tried only after the others.
const SUSPECT_FOR: Duration = Duration::from_secs(3);
/// How long an instance that answered as another server is tried only after
/// the others: its record is wrong, which a retry soon will not change.
const UNUSABLE_FOR: Duration = Duration::from_secs(30);

/// Marks a request that must not be sent twice: it goes to another instance
/// only when the first was never reached. Put it in the request's
/// extensions.
#[derive(Debug, Clone, Copy)]
pub struct SendOnce;

/// A channel to whichever instances of one service are known, with
/// failover. Cheap to clone; clones share the instances and the rotation.
#[derive(Debug, Clone)]
pub struct ServiceChannel {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The service name, for error messages.
    service: String,
    /// The instances as the registry sees them.
    instances: watch::Receiver<Arc<InstanceMap>>,
    /// A channel per instance, rebuilt when the instances change.
    members: Mutex<MemberCache>,
    /// Where the next call starts, so load spreads over instances.
    next: AtomicUsize,
    /// The deadline of a call that has none of its own and is not made
    /// while serving a call that has one.
    default_timeout: Duration,
    /// Keeps discovery following etcd for as long as the channel lives.
    _discovery: Option<Discovery>,
}

/// The members built from one version of the instance map.
#[derive(Debug, Default)]
struct MemberCache {
    /// The map they were built from.
    source: Arc<InstanceMap>,
    members: Arc<Vec<Arc<Member>>>,
}

/// One instance and the channel to it.
#[derive(Debug)]
struct Member {
    /// The instance's etcd key, which identifies it.
    key: String,
    /// Where it is reached.
    address: AdvertiseAddr,
    /// Connects on first use and reconnects after failures.
    channel: Channel,
    /// Until when it is tried only after the others; cleared by a success.
    avoid_until: Mutex<Option<Instant>>,
}

impl ServiceChannel {
    /// A channel to the instances `discovery` follows, for as long as it
    /// lives.
    pub fn following(discovery: Discovery, default_timeout: Duration) -> Self {
        let service = discovery.service().to_owned();
        let instances = discovery.instances();
        Self::new(service, instances, default_timeout, Some(discovery))
    }

    /// A channel to a fixed set of instances of `service`, for a process
    /// that reads the registry once.
    pub fn fixed(service: &str, instances: InstanceMap, default_timeout: Duration) -> Self {
        let (_, receiver) = watch::channel(Arc::new(instances));
        Self::new(service.to_owned(), receiver, default_timeout, None)
    }

    fn new(
        service: String,
        instances: watch::Receiver<Arc<InstanceMap>>,
        default_timeout: Duration,
        discovery: Option<Discovery>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                service,
                instances,
                members: Mutex::default(),
                // Processes that start together (CLI runs, replicas) should
                // not all begin with the same instance.
                next: AtomicUsize::new(fastrand::usize(..)),
                default_timeout,
                _discovery: discovery,
            }),
        }
    }

    /// The name of the service called.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// A receiver that sees the instance map every time it changes.
    pub fn instances(&self) -> watch::Receiver<Arc<InstanceMap>> {
        self.shared.instances.clone()
    }
}

impl tower::Service<http::Request<Body>> for ServiceChannel {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // Each instance's channel is readied per attempt.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        // Read now: this runs inside the served call's task, where its
        // context lives.
        let served = context::current();
        Box::pin(async move { shared.send(request, served).await })
    }
}

impl Shared {
    /// Sends `request` to one instance after another until one answers, an
    /// instance refuses it, or the deadline passes.
    async fn send(
        &self,
        request: http::Request<Body>,
        served: Option<context::CallContext>,
    ) -> Result<http::Response<Body>, Status> {
        let (mut parts, body) = request.into_parts();
        let deadline = self.deadline(&parts.headers, served.as_ref());
        if let Some(served) = &served
            && !parts.headers.contains_key(REQUEST_ID_HEADER)
            && let Ok(value) = http::HeaderValue::from_str(served.request_id.as_str())
        {
            parts.headers.insert(REQUEST_ID_HEADER, value);
        }
        let send_once = parts.extensions.get::<SendOnce>().is_some();
        let body = body
            .collect()
            .await
            .map_err(|err| Status::internal(format!("cannot read the request body: {err}")))?
            .to_bytes();

        let candidates = self.candidates();
        let Some(last) = candidates.len().checked_sub(1) else {
            return Err(Status::unavailable(format!(
                "no instance of {} is registered in etcd",
                self.service
            )));
        };
        let mut last_failure = None;
        for (index, member) in candidates.into_iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            // While others remain to be tried, an attempt gets half the time
            // left, so one hung instance cannot use up the whole deadline;
            // a call that will not be sent again after a hang gets it all.
            let budget = if index < last && !send_once {
                remaining / 2
            } else {
                remaining
            };
            let attempt = rebuild(&parts, &body, budget);
            let failure = match tokio::time::timeout(budget, member.call(attempt)).await {
                Ok(Ok(response)) => match Failure::from_response(&response) {
                    Some(failure) => failure,
                    None => {
                        member.answered();
                        return Ok(response);
                    }
                },
                Ok(Err(err)) => Failure::from_transport(err),
                Err(_) => Failure::TimedOut,
            };
            self.set_aside(&member, &failure);
            let safe_to_resend = !send_once
                || matches!(
                    failure,
                    Failure::NeverConnected(_) | Failure::WrongServer(_)
                );
            let status = failure.into_status(&self.service, &member.address);
            if !safe_to_resend {
                return Err(status);
            }
            last_failure = Some(status);
        }
        if Instant::now() >= deadline {
            return Err(Status::deadline_exceeded(format!(
                "the deadline passed before an instance of {} answered",
                self.service
            )));
        }
        let detail = last_failure.map_or_else(String::new, |status| status.message().to_owned());
        Err(Status::unavailable(format!(
            "no instance of {} could be reached ({detail})",
            self.service
        )))
    }

    /// Tries `member` only after the others for a while, for how it failed,
    /// and says so in the log.
    fn set_aside(&self, member: &Member, failure: &Failure) {
        let (period, why) = match failure {
            Failure::WrongServer(_) => (
                UNUSABLE_FOR,
                "instance answers as another server; its record is wrong",
            ),
            _ => (SUSPECT_FOR, "instance unreachable or not answering"),
        };
        member.avoid_for(period);
        warn!(
            service = %self.service,
            key = %member.key,
            address = %member.address,
            error = %failure.message(),
            "{why}"
        );
    }

    /// The earliest of the call's own deadline, the served call's, and the
    /// default.
    fn deadline(
        &self,
        headers: &http::HeaderMap,
        served: Option<&context::CallContext>,
    ) -> Instant {
        let now = Instant::now();
        let own = grpc_timeout::from_headers(headers).map(|timeout| now + timeout);
        let inherited = served.and_then(|served| served.deadline);
        match own.into_iter().chain(inherited).min() {
            Some(deadline) => deadline,
            None => now + self.default_timeout,
        }
    }

    /// The members in the order to try them: round robin from the next
    /// start, with recently failed members moved to the end.
    fn candidates(&self) -> Vec<Arc<Member>> {
        let members = self.members();
        if members.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % members.len();
        let now = Instant::now();
        let (mut healthy, suspect): (Vec<_>, Vec<_>) = members[start..]
            .iter()
            .chain(&members[..start])
            .cloned()
            .partition(|member| !member.avoided(now));
        healthy.extend(suspect);
        healthy
    }

    /// The members for the instances known now, keeping the channels of
    /// instances that did not change.
    fn members(&self) -> Arc<Vec<Arc<Member>>> {
        let instances = Arc::clone(&self.instances.borrow());
        let mut cache = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&cache.source, &instances) {
            let members = instances
                .iter()
                .filter_map(|(key, address)| {
                    cache
                        .members
                        .iter()
                        .find(|member| member.key == *key && member.address == *address)
                        .cloned()
                        .or_else(|| Member::connect_lazy(key, address).map(Arc::new))
                })
                .collect();
            *cache = MemberCache {
                source: instances,
                members: Arc::new(members),
            };
        }
        Arc::clone(&cache.members)
    }
}

impl Member {
    /// A member whose channel connects on first use; `None` (with a
    /// warning) when the address cannot be dialled at all.
    fn connect_lazy(key: &str, address: &AdvertiseAddr) -> Option<Self> {
        let endpoint = match Endpoint::from_shared(address.http_uri()) {
            Ok(endpoint) => endpoint,
            Err(err) => {
                warn!(%key, %address, error = %err, "skipping instance with an undialable address");
                return None;
            }
        };
        let channel = endpoint
            .connect_timeout(DIAL_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy();
        Some(Self {
            key: key.to_owned(),
            address: address.clone(),
            channel,
            avoid_until: Mutex::new(None),
        })
    }

    async fn call(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, tonic::transport::Error> {
        use tower::ServiceExt;
        self.channel.clone().oneshot(request).await
    }

    /// Whether it is to be tried only after the others at `now`.
    fn avoided(&self, now: Instant) -> bool {
        self.avoid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| now < until)
    }

    /// Tries it only after the others for `period`.
    fn avoid_for(&self, period: Duration) {
        *self
            .avoid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + period);
    }

    /// It answered: back in the rotation.
    fn answered(&self) {
        *self
            .avoid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Why one attempt gave no usable answer.
enum Failure {
    /// The instance answered UNAVAILABLE.
    Answered(Status),
    /// The instance is not the service called: UNIMPLEMENTED, or an answer
    /// that is not gRPC. Nothing was done with the request.
    WrongServer(Status),
    /// The connection could not be made: the request never left.
    NeverConnected(Status),
    /// The connection failed during the call.
    Broken(Status),
    /// No answer within the attempt's budget.
    TimedOut,
}

impl Failure {
    /// Why `response` is no usable answer, if it is not: an instance that
    /// is UNAVAILABLE, or not the service called at all. Any other status
    /// is the service's answer and goes back to the caller.
    fn from_response(response: &http::Response<Body>) -> Option<Self> {
        let grpc = response.status() == http::StatusCode::OK
            && response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.starts_with("application/grpc"));
        if !grpc {
            return Some(Self::WrongServer(Status::unimplemented(format!(
                "the answer is not gRPC (HTTP {})",
                response.status()
            ))));
        }
        match response_status(response)? {
            Code::Unavailable => Some(Self::Answered(status_of(response))),
            Code::Unimplemented => Some(Self::WrongServer(status_of(response))),
            _ => None,
        }
    }

    fn from_transport(err: tonic::transport::Error) -> Self {
        let causes = || {
            std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |err| {
                err.source()
            })
        };
        // tonic's channel enforces the `grpc-timeout` it sends, and reports
        // its expiry as CANCELLED; for the caller it is the deadline.
        if causes().any(|cause| cause.is::<tonic::TimeoutExpired>()) {
            return Self::TimedOut;
        }
        let never_connected = causes().any(|cause| cause.is::<tonic::ConnectError>());
        let status = Status::from_error(Box::new(err));
        if never_connected {
            Self::NeverConnected(status)
        } else {
            Self::Broken(status)
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Answered(status)
            | Self::WrongServer(status)
            | Self::NeverConnected(status)
            | Self::Broken(status) => status.message().to_owned(),
            Self::TimedOut => "no answer within the attempt's share of the deadline".to_owned(),
        }
    }

    /// The status for this failure of a call to `service` at `address`.
    fn into_status(self, service: &str, address: &AdvertiseAddr) -> Status {
        match self {
            Self::Answered(status)
            | Self::WrongServer(status)
            | Self::NeverConnected(status)
            | Self::Broken(status) => status,
            Self::TimedOut => {
                Status::deadline_exceeded(format!("{service} at {address} did not answer in time"))
            }
        }
    }
}

/// The request for one attempt: the same method, path, headers and body,
/// with `grpc-timeout` set to the attempt's budget.
fn rebuild(parts: &http::request::Parts, body: &Bytes, budget: Duration) -> http::Request<Body> {
    let mut request = http::Request::new(Body::new(Full::new(body.clone())));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
        .headers_mut()
        .insert(grpc_timeout::HEADER, grpc_timeout::encode(budget));
    request
}

/// The `grpc-status` of a response that ended in its headers (a
/// "trailers-only" error answer).
fn response_status(response: &http::Response<Body>) -> Option<Code> {
    let value = response.headers().get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}

/// The status carried in a trailers-only response's headers.
fn status_of(response: &http::Response<Body>) -> Status {
    Status::from_header_map(response.headers())
        .unwrap_or_else(|| Status::unknown("the instance answered without a status"))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::service::InterceptorLayer;
    use tonic::transport::Server;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;
    use crate::context::{CallContext, RequestId, scope};

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// What the last call a test server received carried.
    type Seen = Arc<StdMutex<Option<tonic::metadata::MetadataMap>>>;

    /// A real gRPC server (the health service, reporting SERVING) on a
    /// free loopback port, remembering the metadata of the last call.
    async fn live() -> (AdvertiseAddr, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string().parse().unwrap();
        let seen = Seen::default();
        let record = Arc::clone(&seen);
        let (_reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(
            Server::builder()
                .layer(InterceptorLayer::new(move |request: tonic::Request<()>| {
                    *record.lock().unwrap() = Some(request.metadata().clone());
                    Ok(request)
                }))
                .add_service(health)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (address, seen)
    }

    /// An address where nothing listens: connecting is refused.
    async fn refused() -> AdvertiseAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string().parse().unwrap();
        drop(listener);
        address
    }

    /// A server that accepts connections and never answers.
    async fn hung() -> AdvertiseAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string().parse().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        address
    }

    fn channel(instances: &[(&str, &AdvertiseAddr)]) -> ServiceChannel {
        let map = instances
            .iter()
            .map(|(key, address)| ((*key).to_owned(), (*address).clone()))
            .collect();
        ServiceChannel::fixed("svc", map, TIMEOUT)
    }

    async fn check(channel: &ServiceChannel, service: &str) -> Result<(), Status> {
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        HealthClient::new(channel.clone())
            .check(request)
            .await
            .map(drop)
    }

    fn order(channel: &ServiceChannel) -> Vec<String> {
        let candidates = channel.shared.candidates();
        candidates.iter().map(|m| m.key.clone()).collect()
    }

    /// `keys` rotated left by `by`.
    fn rotated(keys: &[String], by: usize) -> Vec<String> {
        let mut rotated = keys.to_vec();
        rotated.rotate_left(by % keys.len());
        rotated
    }

    #[tokio::test]
    async fn calls_go_round_robin_and_a_failed_member_goes_last() {
        let address: AdvertiseAddr = "127.0.0.1:1".parse().unwrap();
        let channel = channel(&[("a", &address), ("b", &address), ("c", &address)]);
        let first = order(&channel);
        assert_eq!(order(&channel), rotated(&first, 1));

        let mut expected = rotated(&first, 2);
        let failed = expected.remove(0);
        let member = channel
            .shared
            .members()
            .iter()
            .find(|m| m.key == failed)
            .cloned();
        member.clone().unwrap().avoid_for(SUSPECT_FOR);
        expected.push(failed);
        assert_eq!(order(&channel), expected);

        member.unwrap().answered();
        assert_eq!(order(&channel), rotated(&first, 3));
    }

    #[tokio::test]
    async fn separate_channels_start_at_different_instances() {
        let address: AdvertiseAddr = "127.0.0.1:1".parse().unwrap();
        let keys = ["a", "b", "c", "d"].map(|key| (key, &address));
        let firsts: std::collections::BTreeSet<_> =
            (0..32).map(|_| order(&channel(&keys)).remove(0)).collect();
        assert!(firsts.len() > 1, "{firsts:?}");
    }

    /// A gRPC server that serves nothing: every method is UNIMPLEMENTED.
    async fn wrong_service() -> AdvertiseAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string().parse().unwrap();
        tokio::spawn(
            Server::builder()
                .add_routes(tonic::service::Routes::default())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        address
    }

    /// An HTTP/2 server that is not gRPC: it answers 404 in plain text.
    async fn not_grpc() -> AdvertiseAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string().parse().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut connection = h2::server::handshake(stream).await.unwrap();
                    while let Some(Ok((_, mut respond))) = connection.accept().await {
                        let response = http::Response::builder()
                            .status(404)
                            .header("content-type", "text/plain")
                            .body(())
                            .unwrap();
                        let _ = respond.send_response(response, true);
                    }
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn an_instance_that_is_another_server_is_skipped_even_for_a_create() {
        let (wrong, other, up) = (wrong_service().await, not_grpc().await, live().await.0);
        let channel = channel(&[("a-wrong", &wrong), ("b-other", &other), ("c-up", &up)]);
        for _ in 0..3 {
            let mut request = tonic::Request::new(HealthCheckRequest::default());
            request.extensions_mut().insert(SendOnce);
            HealthClient::new(channel.clone())
                .check(request)
                .await
                .unwrap();
        }
        assert_eq!(order(&channel)[0], "c-up");
    }

    #[tokio::test]
    async fn an_unreachable_instance_is_skipped_for_one_that_answers() {
        let (down, up) = (refused().await, live().await.0);
        let channel = channel(&[("a-down", &down), ("b-up", &up)]);
        for _ in 0..4 {
            check(&channel, "").await.unwrap();
        }
        assert_eq!(order(&channel).last().map(String::as_str), Some("a-down"));
    }

    #[tokio::test]
    async fn a_create_is_sent_again_only_when_it_never_left() {
        let (down, stuck, up) = (refused().await, hung().await, live().await.0);
        let send_once = |channel: ServiceChannel| async move {
            let mut request = tonic::Request::new(HealthCheckRequest::default());
            request.extensions_mut().insert(SendOnce);
            request.set_timeout(Duration::from_secs(2));
            HealthClient::new(channel).check(request).await.map(drop)
        };
        send_once(channel(&[("a-down", &down), ("b-up", &up)]))
            .await
            .unwrap();
        // The live instance failed a moment ago, so the hung one is tried first.
        let stuck_first = channel(&[("a-stuck", &stuck), ("b-up", &up)]);
        let members = stuck_first.shared.members();
        let live = members.iter().find(|m| m.key == "b-up").unwrap();
        live.avoid_for(SUSPECT_FOR);
        let status = send_once(stuck_first).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    }

    #[tokio::test]
    async fn a_hung_instance_gets_part_of_the_deadline_and_the_next_one_answers() {
        let (stuck, up) = (hung().await, live().await.0);
        let channel = channel(&[("a-stuck", &stuck), ("b-up", &up)]);
        // The live instance failed a moment ago, so the hung one is tried first.
        let members = channel.shared.members();
        let live = members.iter().find(|m| m.key == "b-up").unwrap();
        live.avoid_for(SUSPECT_FOR);
        check(&channel, "").await.unwrap();
        assert_eq!(order(&channel).last().map(String::as_str), Some("a-stuck"));
    }

    #[tokio::test]
    async fn an_answer_other_than_unavailable_is_returned_as_it_is() {
        let (up, _) = live().await;
        let channel = channel(&[("a", &up), ("b", &up)]);
        let status = check(&channel, "no.such.Service").await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }

    #[tokio::test]
    async fn no_instance_or_none_reachable_is_unavailable_and_says_which() {
        let none = check(&channel(&[]), "").await.unwrap_err();
        assert_eq!(none.code(), Code::Unavailable);
        assert!(
            none.message().contains("no instance of svc is registered"),
            "{none:?}"
        );

        let (a, b) = (refused().await, refused().await);
        let down = check(&channel(&[("a", &a), ("b", &b)]), "")
            .await
            .unwrap_err();
        assert_eq!(down.code(), Code::Unavailable);
        assert!(
            down.message()
                .contains("no instance of svc could be reached"),
            "{down:?}"
        );
    }

    #[tokio::test]
    async fn a_served_calls_id_and_deadline_travel_on() {
        let (up, seen) = live().await;
        let channel = channel(&[("a", &up)]);
        let served = CallContext {
            request_id: RequestId::parse("from-the-caller").unwrap(),
            deadline: Some(Instant::now() + Duration::from_secs(2)),
        };
        scope(served, check(&channel, "")).await.unwrap();
        let metadata = seen.lock().unwrap().clone().unwrap();
        assert_eq!(
            RequestId::from_metadata(&metadata).unwrap().as_str(),
            "from-the-caller"
        );
        let timeout = metadata.get("grpc-timeout").unwrap().to_str().unwrap();
        let timeout = grpc_timeout::parse(timeout).unwrap();
        assert!(timeout <= Duration::from_secs(2), "{timeout:?}");
    }
}
