//! A service run inside the test process, built from its library, for tests
//! that look at it from within: its registration state, its discovery.
//!
//! This crate does not depend on the service crates (so that every crate
//! can use it); each service's tests build the application and hand its
//! address, key, registration state and run function to
//! [`InProcessService::spawn`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::anyhow;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_proto::vessel::v1::vessel_service_client::VesselServiceClient;
use shippy_registry::RegistrationState;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::DEADLINE;
use crate::process::channel;

/// The shutdown future a service's `run_until_stopped` is given: resolves
/// when the test stops the service (or drops it).
pub struct StopSignal(oneshot::Receiver<()>);

impl Future for StopSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// A service serving on a task of the test's runtime.
pub struct InProcessService {
    address: SocketAddr,
    /// The etcd key it registers under.
    key: String,
    state: watch::Receiver<RegistrationState>,
    /// Taken when the stop is requested.
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl InProcessService {
    /// Runs `run` (a service's `run_until_stopped`) on a new task, for a
    /// service bound to `address` that registers under `key` and reports
    /// its registration on `state`. Returns at once.
    pub fn spawn<F, Fut>(
        address: SocketAddr,
        key: &str,
        state: watch::Receiver<RegistrationState>,
        run: F,
    ) -> Self
    where
        F: FnOnce(StopSignal) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        Self {
            address,
            key: key.to_owned(),
            state,
            stop: Some(stop),
            task: tokio::spawn(run(StopSignal(stopped))),
        }
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The etcd key it registers under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Its registration state, as it changes.
    pub fn registration_state(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// A vessel-service client for it.
    pub async fn vessel_client(&self) -> anyhow::Result<VesselServiceClient<Channel>> {
        Ok(VesselServiceClient::new(self.channel().await?))
    }

    /// A consignment-service client for it.
    pub async fn shipping_client(&self) -> anyhow::Result<ShippingServiceClient<Channel>> {
        Ok(ShippingServiceClient::new(self.channel().await?))
    }

    /// A connected channel to it, for any other client.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        channel(&self.address.to_string()).await
    }

    /// Tells it to stop, without waiting: it deregisters and drains.
    pub fn request_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for it to have stopped, and returns how its run ended.
    pub async fn stopped(self) -> anyhow::Result<()> {
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .map_err(|_| anyhow!("still running {DEADLINE:?} after it was told to stop"))??
    }

    /// Stops it and waits until it has.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.request_stop();
        self.stopped().await
    }
}
