//! The life of a registered gRPC server: bind, serve, register, and on a stop
//! signal deregister, stop accepting and drain.
//!
//! Both services run through [`RegisteredServer`], so they start and stop the
//! same way. The stop order matters: health turns NOT_SERVING and the
//! registration goes first, so callers stop picking this instance before it
//! stops accepting; then in-flight calls get a grace period to finish.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio_stream::Stream;
use tonic::codegen::http;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_reflection::server::{v1, v1alpha};
use tower::util::MapResponseLayer;
use tracing::{debug, info, warn};

use shippy_registry::{
    AdvertiseAddr, EtcdClient, Registration, RegistrationState, RegistryArgs, ServiceRecord,
};

use crate::call_log::RequestLogLayer;
use crate::config::ServerArgs;
use crate::health::HealthStatus;

/// How long accepting pauses after an accept error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

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
        let incoming = accept_connections(self.listener);
        let mut server = tokio::spawn(
            Server::builder()
                // Outside the size-limit mapping, so the log shows the status
                // callers receive. (tonic's own timeout wraps both; the log
                // names a call it drops as DEADLINE_EXCEEDED.)
                .layer(RequestLogLayer)
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
        let result = match tokio::time::timeout(grace, &mut server).await {
            Ok(joined) => joined
                .context("server task failed")?
                .context("gRPC server stopped"),
            Err(_) => {
                warn!(
                    grace_secs = grace.as_secs(),
                    "in-flight calls did not finish within the grace period; stopping anyway"
                );
                server.abort();
                Ok(())
            }
        };
        info!("stopped");
        result
    }
}

/// Accepted connections, with Nagle's algorithm off (small gRPC messages
/// should not wait). An accept error such as running out of file
/// descriptors pauses accepting briefly instead of retrying in a busy loop.
fn accept_connections(listener: TcpListener) -> impl Stream<Item = io::Result<TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if let Err(err) = stream.set_nodelay(true) {
                        debug!(error = %err, "cannot set TCP_NODELAY");
                    }
                    return Some((Ok(stream), listener));
                }
                Err(err) => {
                    warn!(error = %err, "cannot accept a connection; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    })
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
