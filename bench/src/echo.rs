//! The floors: a raw tonic unary echo service, one hop with no work behind
//! it; and a relay that makes each call to the echo service over a lazily
//! connected tonic channel, two hops, as consignment-service calls
//! vessel-service. Each runs in its own process (`shippy-bench echo-server`,
//! with `--forward` for the relay) on a plain tonic `Server` with Nagle's
//! algorithm off, as the services do, and none of their layers (request log,
//! health, reflection): what the services take beyond these is their own.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use pb::EchoMessage;
use pb::echo_client::EchoClient;

/// The generated echo messages and stubs.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("shippy.bench.v1");
}

/// `shippy-bench echo-server`.
#[derive(Debug, Clone, Args)]
pub struct EchoServerArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Relay instead: answer each call by making it to the echo server at
    /// this `host:port` and returning its answer.
    #[arg(long, value_name = "HOST:PORT")]
    pub forward: Option<String>,
}

/// Answers every call with its own message, or, as the relay, with what the
/// echo server behind it answers.
#[derive(Debug, Clone)]
pub struct Floor(Option<EchoClient<Channel>>);

impl Floor {
    /// The echo floor; with `forward` (`host:port`), the relay to it.
    pub fn new(forward: Option<&str>) -> anyhow::Result<Self> {
        let Some(address) = forward else {
            return Ok(Self(None));
        };
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .with_context(|| format!("{address} is not a usable address"))?;
        Ok(Self(Some(EchoClient::new(endpoint.connect_lazy()))))
    }
}

#[tonic::async_trait]
impl pb::echo_server::Echo for Floor {
    async fn echo(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        match &self.0 {
            None => Ok(Response::new(request.into_inner())),
            Some(backend) => {
                let answer = backend.clone().echo(request.into_inner()).await?;
                Ok(Response::new(answer.into_inner()))
            }
        }
    }
}

/// Serves `floor` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    floor: Floor,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    });
    Server::builder()
        .add_service(pb::echo_server::EchoServer::new(floor))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("echo server stopped")
}

/// `shippy-bench echo-server`: binds, says where on stdout, and serves until
/// the process is killed (the suite kills it; nothing needs a clean stop).
pub async fn run_command(args: &EchoServerArgs) -> anyhow::Result<()> {
    let floor = Floor::new(args.forward.as_deref())?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", listener.local_addr()?)?;
    stdout.flush()?;
    drop(stdout);
    serve(listener, floor, std::future::pending()).await
}
