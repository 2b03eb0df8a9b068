//! The floors: a raw tonic unary echo service, one hop, no work behind it;
//! and a relay that answers each call by making it to the echo service, two
//! hops, as consignment-service calls vessel-service.
//!
//! Each runs in its own process (`shippy-bench echo-server`, with
//! `--forward` for the relay), as the services do, on a plain
//! `tonic::transport::Server` with Nagle's algorithm off like theirs, and
//! none of their layers: no request log, no health or reflection routes.
//! The relay calls through a lazily connected tonic `Channel`, as
//! consignment-service does. Whatever the services take beyond these is
//! their own cost.

use std::future::Future;
use std::io::Write;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use crate::config::EchoServerArgs;

/// The generated echo messages and stubs.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("shippy.bench.v1");
}

/// Answers every call with the message it was sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoHandler;

#[tonic::async_trait]
impl pb::echo_server::Echo for EchoHandler {
    async fn echo(
        &self,
        request: Request<pb::EchoMessage>,
    ) -> Result<Response<pb::EchoMessage>, Status> {
        Ok(Response::new(request.into_inner()))
    }
}

/// Answers every call with what the echo server it forwards to answers,
/// over one lazily connected channel.
#[derive(Debug, Clone)]
pub struct RelayHandler(pb::echo_client::EchoClient<Channel>);

impl RelayHandler {
    /// A relay to the echo server at `address` (`host:port`).
    pub fn new(address: &str) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .with_context(|| format!("{address} is not a usable address"))?;
        Ok(Self(pb::echo_client::EchoClient::new(
            endpoint.connect_lazy(),
        )))
    }
}

#[tonic::async_trait]
impl pb::echo_server::Echo for RelayHandler {
    async fn echo(
        &self,
        request: Request<pb::EchoMessage>,
    ) -> Result<Response<pb::EchoMessage>, Status> {
        let answer = self.0.clone().echo(request.into_inner()).await?;
        Ok(Response::new(answer.into_inner()))
    }
}

/// Serves `handler` (an [`EchoHandler`] or a [`RelayHandler`]) on
/// `listener` until `shutdown` resolves.
pub async fn serve<H: pb::echo_server::Echo>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    });
    Server::builder()
        .add_service(pb::echo_server::EchoServer::new(handler))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("echo server stopped")
}

/// `shippy-bench echo-server`: binds, says where on stdout, serves until
/// SIGINT or SIGTERM.
pub async fn run_command(args: &EchoServerArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {address}")?;
    stdout.flush()?;
    drop(stdout);
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    match &args.forward {
        Some(backend) => serve(listener, RelayHandler::new(backend)?, stop).await,
        None => serve(listener, EchoHandler, stop).await,
    }
}
