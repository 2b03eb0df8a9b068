//! The life of a registered gRPC server: bind, serve, register, and on a stop
//! signal deregister, stop accepting and drain.
//!
//! Both services run through [`RegisteredServer`], so they start and stop the
//! same way. The stop order matters: health turns NOT_SERVING and the
//! registration goes first, so callers stop picking this instance before it
//! stops accepting; then in-flight calls get a grace period to finish. A
//! drain cut short, by the grace period or by a second stop signal, is an
//! error, so the process exits non-zero: calls were abandoned.
//!
//! What the server allows a client (see [`crate::config`] for the values
//! and why): streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS;
//! streams beyond it are refused, and a connection that has had
//! [`MAX_REFUSED_STREAMS`] refused is sent GOAWAY), HTTP/2 keepalive pings
//! that find dead peers, a default deadline for calls without one and a
//! gRPC content-type ([`crate::call_guard`]), a handshake timeout and a
//! connection cap ([`crate::connection`]).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, anyhow};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::codegen::http;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_reflection::server::{v1, v1alpha};
use tower::util::MapResponseLayer;
use tracing::info;

use shippy_registry::{
    AdvertiseAddr, EtcdClient, Registration, RegistrationState, RegistryArgs, ServiceRecord,
};

use crate::call_guard::CallGuardLayer;
use crate::call_log::RequestLogLayer;
use crate::config::ServerArgs;
use crate::connection::{self, Admission};
use crate::health::HealthStatus;
use crate::{log_budget, shutdown};

/// Refused streams after which a connection is sent GOAWAY
/// (ENHANCE_YOUR_CALM): hyper's own default, which tonic's builder replaces
/// with no limit unless one is set. A client that respects
/// SETTINGS_MAX_CONCURRENT_STREAMS has none refused.
pub const MAX_REFUSED_STREAMS: usize = 1024;

/// A bound, not yet serving, gRPC server that will register itself.
pub struct RegisteredServer {
    /// Bound before serving so callers can bind port 0 and learn the port.
    listener: TcpListener,
    /// The etcd key and record to keep while serving.
    key: String,
    record: ServiceRecord,
    /// Shared with the rest of the process (discovery uses it too).
    etcd: EtcdClient,
    /// Lease TTL and grace period.
    args: ServerArgs,
    /// Sees registration state changes from the moment serving starts.
    state_tx: watch::Sender<RegistrationState>,
}

impl RegisteredServer {
    /// Binds the listen address and prepares the registration of `service_name`.
    ///
    /// Without an explicit advertise address, the bound address is
    /// advertised, with an unspecified IP replaced by loopback: that is right
    /// for a single host, and a container or cluster sets `--advertise`.
    pub async fn bind(
        service_name: &str,
        args: &ServerArgs,
        etcd: EtcdClient,
        registry: &RegistryArgs,
    ) -> anyhow::Result<Self> {
        let listen = args.listen;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let bound = listener
            .local_addr()
            .context("cannot read the bound address")?;
        let address = match &args.advertise {
            Some(address) => address.clone(),
            None => default_advertise(bound)?,
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let record = ServiceRecord {
            name: service_name.to_owned(),
            id: id.clone(),
            address,
            metadata: [
                ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
                ("protocol".to_owned(), "grpc".to_owned()),
            ]
            .into(),
        };
        let (state_tx, _) = watch::channel(RegistrationState::Registering);
        Ok(Self {
            listener,
            key: registry.key_space().instance_key(service_name, &id),
            record,
            etcd,
            args: args.clone(),
            state_tx,
        })
    }

    /// The address actually bound (useful after binding port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("cannot read the bound address")
    }

    /// The etcd key this instance registers under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The record this instance registers.
    pub fn record(&self) -> &ServiceRecord {
        &self.record
    }

    /// A receiver that follows the registration state once serving starts.
    pub fn registration_state(&self) -> watch::Receiver<RegistrationState> {
        self.state_tx.subscribe()
    }

    /// Serves `routes` and keeps the registration until `shutdown` resolves,
    /// then deregisters, stops accepting, and waits up to the grace period
    /// for in-flight calls.
    ///
    /// Besides `services`, the server answers the gRPC health service, which
    /// reports each of them (and the server as a whole) NOT_SERVING until
    /// registered, SERVING while registered, and NOT_SERVING from the stop
    /// signal on; and server reflection (v1 and v1alpha) for all of them.
    /// Every call is logged once, under its request id.
    pub async fn serve(
        self,
        services: Services,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let (health, health_service) = HealthStatus::new(&services.names).await;
        let (reflection_v1, reflection_v1alpha) = reflection(&services)?;
        let routes = services
            .routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let (stop_accepting, stopped) = oneshot::channel::<()>();
        let admission = Admission::new(
            connection::connection_limit(self.args.max_connections),
            self.args.handshake_timeout(),
        );
        let call_log = RequestLogLayer::new();
        let mut budgets = admission.log_budgets();
        budgets.push(call_log.log_budget());
        let summaries = AbortOnDrop(tokio::spawn(log_budget::report(budgets)));
        let max_connections = admission.limit();
        let incoming = connection::accept(self.listener, admission);
        let mut server = tokio::spawn(
            Server::builder()
                .max_concurrent_streams(self.args.max_concurrent_streams)
                .http2_max_local_error_reset_streams(Some(MAX_REFUSED_STREAMS))
                .http2_keepalive_interval(Some(self.args.keepalive_interval()))
                .http2_keepalive_timeout(Some(self.args.keepalive_timeout()))
                // Outside the size-limit mapping and the call guard, so the
                // log shows the status callers receive. (tonic's own timeout
                // wraps them all; the log names a call it drops as
                // DEADLINE_EXCEEDED.)
                .layer(call_log)
                .layer(CallGuardLayer::new(self.args.default_deadline()))
                .layer(MapResponseLayer::new(oversized_is_resource_exhausted))
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async {
                    // A dropped sender also means stop.
                    let _ = stopped.await;
                }),
        );
        info!(
            service = %self.record.name,
            address = %self.record.address,
            key = %self.key,
            max_connections,
            "serving"
        );
        let registration = Registration::spawn_reporting(
            self.etcd,
            self.key,
            &self.record,
            self.args.lease_ttl(),
            self.state_tx,
        );

        let announce = {
            let health = health.clone();
            let state = registration.state();
            tokio::spawn(async move { health.serving_once_registered(state).await })
        };

        let served = tokio::select! {
            () = shutdown => None,
            joined = &mut server => Some(joined),
        };
        announce.abort();
        if let Some(joined) = served {
            registration.deregister().await;
            return joined
                .context("server task failed")?
                .context("gRPC server stopped");
        }

        info!("stopping: not serving, deregistering, then draining in-flight calls");
        health.set(ServingStatus::NotServing).await;
        registration.deregister().await;
        let _ = stop_accepting.send(());
        health.end_watches().await;
        let grace = self.args.shutdown_grace();
        let result = tokio::select! {
            joined = &mut server => joined
                .context("server task failed")?
                .context("gRPC server stopped"),
            () = tokio::time::sleep(grace) => {
                server.abort();
                Err(anyhow!(
                    "in-flight calls did not finish within the {}s grace period; \
                     they were abandoned",
                    grace.as_secs()
                ))
            }
            () = shutdown::repeated() => {
                server.abort();
                Err(anyhow!(
                    "a second stop signal arrived while draining; in-flight calls were abandoned"
                ))
            }
        };
        drop(summaries);
        if result.is_ok() {
            info!("stopped");
        }
        result
    }
}

/// Aborts a background task when dropped, so that it ends with the server.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a server serves.
pub struct Services {
    /// The gRPC services themselves.
    pub routes: Routes,
    /// Their full names (e.g. `shippy.vessel.v1.VesselService`), for the
    /// health service and for what reflection lists.
    pub names: Vec<&'static str>,
    /// Encoded descriptors of their .proto files, for reflection.
    pub file_descriptor_set: &'static [u8],
}

/// Server reflection, v1 and v1alpha, listing `services`, health and
/// reflection itself.
fn reflection(
    services: &Services,
) -> anyhow::Result<(
    v1::ServerReflectionServer<impl v1::ServerReflection>,
    v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
)> {
    let builder = |reflection_name: &str| {
        services
            .names
            .iter()
            .copied()
            .chain(["grpc.health.v1.Health", reflection_name])
            .fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(services.file_descriptor_set)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |builder, name| builder.with_service_name(name),
            )
    };
    let v1 = builder("grpc.reflection.v1.ServerReflection")
        .build_v1()
        .context("building server reflection")?;
    let v1alpha = builder("grpc.reflection.v1alpha.ServerReflection")
        .build_v1alpha()
        .context("building server reflection")?;
    Ok((v1, v1alpha))
}

/// Reports a request message over the size limit as RESOURCE_EXHAUSTED,
/// the status gRPC specifies for it; tonic's decoder says OUT_OF_RANGE.
fn oversized_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == b"11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|message| message.to_str().ok())
        .is_some_and(|message| message.contains("message%20length%20too%20large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

/// The address to advertise when none is configured: the bound one, with an
/// unspecified IP (0.0.0.0 or ::) replaced by loopback.
fn default_advertise(bound: SocketAddr) -> anyhow::Result<AdvertiseAddr> {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    AdvertiseAddr::new(&ip.to_string(), bound.port())
        .with_context(|| format!("cannot advertise {bound}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_advertise_address_is_never_unspecified() {
        let cases = [
            ("0.0.0.0:50052", "127.0.0.1:50052"),
            ("[::]:7", "[::1]:7"),
            ("10.0.0.5:1", "10.0.0.5:1"),
        ];
        for (bound, expected) in cases {
            let advertised = default_advertise(bound.parse().unwrap()).unwrap();
            assert_eq!(advertised.to_string(), expected);
        }
    }
}
