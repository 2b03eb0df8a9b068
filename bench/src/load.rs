//! The load generator (`shippy-bench load`), and the sample it sends.
//!
//! `concurrency` callers share one tonic channel (one HTTP/2 connection, as
//! consignment-service has to each vessel-service instance) and each keeps
//! one call in flight: a closed loop, so throughput is what the service
//! sustains and latency is what a caller sees. Calls that start after the
//! warm-up, within the window or the request count, are counted: latencies
//! of successful ones in an HDR histogram, failures by gRPC code. Every call
//! moves the data the tutorial's CLI sends: the sample `consignment.json`,
//! the FindAvailable request consignment-service makes for it, or an echo
//! payload its size.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use prost::Message;
use serde::{Deserialize, Serialize};
use shippy_proto::consignment::v1::Consignment;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_proto::vessel::v1::Specification;
use shippy_proto::vessel::v1::vessel_service_client::VesselServiceClient;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::echo::pb::EchoMessage;
use crate::echo::pb::echo_client::EchoClient;

/// The longest latency the histogram holds; longer calls count as this.
const MAX_LATENCY: Duration = Duration::from_secs(60);
/// The file `make run` and the CLI submit.
const SAMPLE_JSON: &str = include_str!("../../consignment.json");

/// `shippy-bench load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The call to make.
    #[arg(long, value_enum)]
    pub target: TargetKind,
    /// Where the service listens, as `host:port` (see `consignment-cli services`).
    #[arg(long, value_name = "HOST:PORT")]
    pub address: String,
    #[command(flatten)]
    pub options: LoadOptions,
    /// Echo only: the payload size in bytes. Defaults to the size of the
    /// encoded sample consignment.
    #[arg(long, value_name = "BYTES")]
    pub payload_bytes: Option<usize>,
    /// Print the summary as one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// One run of the load generator; the suite fills these in itself.
#[derive(Debug, Clone, Copy, Args)]
pub struct LoadOptions {
    /// Callers running at once, each with one call in flight, all on one
    /// HTTP/2 connection.
    #[arg(long, short = 'c', default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Seconds to measure for, after the warm-up: the calls that start
    /// within it are counted.
    #[arg(long, value_parser = crate::seconds, default_value = "10", value_name = "SECONDS")]
    pub duration: Duration,
    /// Requests to measure, after the warm-up, instead of a duration.
    #[arg(long, short = 'n', conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// Seconds of load before measuring starts, not counted.
    #[arg(long, value_parser = crate::seconds, default_value = "1", value_name = "SECONDS")]
    pub warmup: Duration,
    /// Seconds each call may take, sent as its gRPC deadline.
    #[arg(long, value_parser = crate::seconds, default_value = "10", value_name = "SECONDS")]
    pub timeout: Duration,
}

/// Which call the load generator makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// `shippy.bench.v1.Echo/Echo` with a payload the size of the encoded
    /// sample consignment: the floor.
    Echo,
    /// `CreateConsignment` of the sample consignment, against
    /// consignment-service: two hops, end to end.
    Create,
    /// `FindAvailable` for the sample's containers and weight, against
    /// vessel-service: the second hop alone.
    Find,
    /// Echo through the relay (`echo-server --forward`): two hops with no
    /// shippy code, the floor for a service that calls another.
    Relay,
}

impl TargetKind {
    /// Its name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Create => "e2e CreateConsignment",
            Self::Find => "FindAvailable",
            Self::Relay => "echo relay (two hops)",
        }
    }
}

/// The sample consignment, as CreateConsignment sends it.
pub fn sample() -> anyhow::Result<Consignment> {
    serde_json::from_str(SAMPLE_JSON).context("reading consignment.json")
}

/// A client for one kind of call; clones share its connection.
#[derive(Debug, Clone)]
pub struct Target {
    /// The call it makes.
    pub kind: TargetKind,
    call: Call,
}

/// A client and what it sends with every call.
#[derive(Debug, Clone)]
enum Call {
    Echo(EchoClient<Channel>, Vec<u8>),
    Create(ShippingServiceClient<Channel>, Consignment),
    Find(VesselServiceClient<Channel>, Specification),
}

impl Target {
    /// Connects to `address` (`host:port`) for calls of `kind`;
    /// `payload_bytes` overrides the echo payload's size.
    pub async fn connect(
        kind: TargetKind,
        address: &str,
        payload_bytes: Option<usize>,
    ) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .with_context(|| format!("{address} is not a usable address"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        let sample = sample()?;
        let call = match kind {
            TargetKind::Echo | TargetKind::Relay => {
                let size = payload_bytes.unwrap_or_else(|| sample.encoded_len());
                Call::Echo(EchoClient::new(channel), vec![0x5a; size])
            }
            TargetKind::Create => Call::Create(ShippingServiceClient::new(channel), sample),
            TargetKind::Find => {
                let capacity = i32::try_from(sample.containers.len()).unwrap_or(i32::MAX);
                let spec = Specification {
                    capacity,
                    max_weight: sample.weight,
                };
                Call::Find(VesselServiceClient::new(channel), spec)
            }
        };
        Ok(Self { kind, call })
    }

    /// One call with `timeout` as its deadline. An error is the gRPC code's
    /// name and message; an answer that lacks what the call is for (the
    /// payload, an id and a vessel, a vessel) is a `WrongAnswer`.
    async fn call(&mut self, timeout: Duration) -> Result<(), (String, String)> {
        fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
            let mut request = tonic::Request::new(message);
            request.set_timeout(timeout);
            request
        }
        let status = |s: tonic::Status| (format!("{:?}", s.code()), s.message().to_owned());
        let wrong = match &mut self.call {
            Call::Echo(client, payload) => {
                let message = EchoMessage {
                    payload: payload.clone(),
                };
                let answer = client.echo(request(message, timeout)).await;
                let same = answer.map_err(status)?.get_ref().payload.len() == payload.len();
                (!same).then_some("the echo came back a different size")
            }
            Call::Create(client, sample) => {
                let answer = client.create_consignment(request(sample.clone(), timeout));
                let answer = answer.await.map_err(status)?;
                let stored = answer.get_ref().consignment.as_ref();
                let stored = stored.is_some_and(|c| !c.vessel_id.is_empty() && !c.id.is_empty());
                (!stored).then_some("the created consignment has no id or vessel_id")
            }
            Call::Find(client, spec) => {
                let answer = client.find_available(request(*spec, timeout)).await;
                let found = answer.map_err(status)?.get_ref().vessel.is_some();
                (!found).then_some("FindAvailable answered without a vessel")
            }
        };
        wrong.map_or(Ok(()), |what| Err(("WrongAnswer".into(), what.into())))
    }
}

/// Latency of the successful calls, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// What one run measured: successful calls (`requests`, per second in
/// `throughput`, their latency) and failed ones (by gRPC code or
/// `WrongAnswer`, and the first failure's message), from the end of the
/// warm-up to the last counted answer (`elapsed_secs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub target: TargetKind,
    pub concurrency: u32,
    pub requests: u64,
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    pub elapsed_secs: f64,
    pub throughput: f64,
    pub latency: Latency,
}

impl Summary {
    /// Counts and rate, then latency, then the first error if any, for people.
    pub fn describe(&self) -> String {
        let l = &self.latency;
        let [p50, p90, p99, max] = [l.p50_us, l.p90_us, l.p99_us, l.max_us].map(format_us);
        let (call, c, requests, errors) = (
            self.target.label(),
            self.concurrency,
            self.requests,
            self.errors,
        );
        let (secs, rate) = (self.elapsed_secs, self.throughput);
        let first = self
            .first_error
            .iter()
            .map(|e| format!("\n  first error: {e}"));
        let first: String = first.collect();
        format!(
            "{call} c={c}: {requests} requests in {secs:.2} s, {rate:.0} req/s, {errors} errors\n  \
             latency p50 {p50}  p90 {p90}  p99 {p99}  max {max}{first}"
        )
    }
}

/// Microseconds as `812 µs` or `3.41 ms`.
pub fn format_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// What the callers share.
struct Shared {
    options: LoadOptions,
    /// Calls that start from here on are counted.
    measure_from: Instant,
    /// Counted calls started, against a request count.
    tickets: AtomicU64,
}

/// What a caller measured; the callers' tallies are merged at the end, so
/// they share nothing while they call.
struct Tally {
    histogram: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    last_answer: Option<Instant>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        let max = u64::try_from(MAX_LATENCY.as_nanos()).unwrap_or(u64::MAX);
        Ok(Self {
            histogram: Histogram::new_with_bounds(1, max, 3).context("creating a histogram")?,
            errors: BTreeMap::new(),
            first_error: None,
            last_answer: None,
        })
    }

    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.histogram
            .add(&other.histogram)
            .context("merging latency histograms")?;
        for (code, count) in other.errors {
            *self.errors.entry(code).or_insert(0) += count;
        }
        self.first_error = self.first_error.take().or(other.first_error);
        self.last_answer = self.last_answer.max(other.last_answer);
        Ok(())
    }
}

/// Runs `options` against `target` and summarises it.
pub async fn run(target: &Target, options: &LoadOptions) -> anyhow::Result<Summary> {
    let measure_from = Instant::now() + options.warmup;
    let (options, tickets) = (*options, AtomicU64::new(0));
    let shared = Arc::new(Shared {
        options,
        measure_from,
        tickets,
    });
    let call = |_| tokio::spawn(caller(target.clone(), Arc::clone(&shared)));
    let callers: Vec<_> = (0..options.concurrency).map(call).collect();
    let mut tally = Tally::new()?;
    for joined in callers {
        tally.merge(joined.await.context("a caller task failed")??)?;
    }
    let since = |at: Instant| at.saturating_duration_since(measure_from);
    let elapsed_secs = tally.last_answer.map(since).unwrap_or_default();
    let elapsed_secs = elapsed_secs.as_secs_f64();
    let (histogram, requests) = (&tally.histogram, tally.histogram.len());
    // No answer measured, no rate: 0 rather than infinite or NaN.
    let rate = requests as f64 / elapsed_secs;
    let throughput = if rate.is_finite() { rate } else { 0.0 };
    let at = |quantile| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    let latency = match requests {
        0 => Latency::default(),
        _ => Latency {
            mean_us: histogram.mean() / 1000.0,
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            max_us: histogram.max() as f64 / 1000.0,
        },
    };
    Ok(Summary {
        target: target.kind,
        concurrency: options.concurrency,
        requests,
        errors: tally.errors.values().sum(),
        errors_by_code: tally.errors,
        first_error: tally.first_error,
        elapsed_secs,
        throughput,
        latency,
    })
}

/// One caller: calls back to back until its share of the run is done.
async fn caller(mut target: Target, shared: Arc<Shared>) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    loop {
        let start = Instant::now();
        let counted = start >= shared.measure_from;
        let done = || match shared.options.requests {
            Some(count) => shared.tickets.fetch_add(1, Ordering::Relaxed) >= count,
            None => start >= shared.measure_from + shared.options.duration,
        };
        if counted && done() {
            return Ok(tally);
        }
        let outcome = target.call(shared.options.timeout).await;
        let end = Instant::now();
        if !counted {
            continue;
        }
        tally.last_answer = Some(end);
        match outcome {
            Ok(()) => {
                let nanos = u64::try_from((end - start).as_nanos()).unwrap_or(u64::MAX);
                tally.histogram.saturating_record(nanos.max(1));
            }
            Err((code, message)) => {
                let first = || format!("{code}: {message}");
                tally.first_error.get_or_insert_with(first);
                *tally.errors.entry(code).or_insert(0) += 1;
            }
        }
    }
}

/// `shippy-bench load`: loads one endpoint, then prints the summary.
pub async fn run_command(args: &LoadArgs) -> anyhow::Result<()> {
    let target = Target::connect(args.target, &args.address, args.payload_bytes).await?;
    let summary = run(&target, &args.options).await?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &summary)?;
        writeln!(stdout)?;
    } else {
        writeln!(stdout, "{}", summary.describe())?;
    }
    let (failed, all) = (summary.errors, summary.errors + summary.requests);
    anyhow::ensure!(failed == 0, "{failed} of {all} calls failed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::{self, Floor};

    /// Serves a floor on a free loopback port until the sender is dropped.
    async fn serve(floor: Floor) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(echo::serve(listener, floor, async {
            let _ = stopped.await;
        }));
        (address, stop)
    }

    fn options(concurrency: u32, requests: u64, warmup: Duration) -> LoadOptions {
        let (duration, timeout, requests) =
            (Duration::ZERO, Duration::from_secs(5), Some(requests));
        LoadOptions {
            concurrency,
            duration,
            requests,
            warmup,
            timeout,
        }
    }

    #[tokio::test]
    async fn calls_are_echoed_directly_and_through_the_relay_and_counted_after_the_warmup() {
        let (echo, _stop_echo) = serve(Floor::new(None).unwrap()).await;
        let (relay, _stop_relay) = serve(Floor::new(Some(&echo)).unwrap()).await;
        for (kind, address) in [(TargetKind::Echo, echo), (TargetKind::Relay, relay)] {
            let target = Target::connect(kind, &address, None).await.unwrap();
            let summary = run(&target, &options(4, 250, Duration::from_millis(50))).await;
            let summary = summary.unwrap();
            // An echo of another size would count as an error.
            assert_eq!((summary.requests, summary.errors), (250, 0), "{kind:?}");
            let l = summary.latency;
            assert!(0.0 < l.p50_us && l.p50_us <= l.p90_us && l.p99_us <= l.max_us);
            assert!(summary.throughput > 0.0);
        }
    }

    #[tokio::test]
    async fn an_unreachable_service_counts_as_errors() {
        let (address, stop) = serve(Floor::new(None).unwrap()).await;
        let target = Target::connect(TargetKind::Echo, &address, None);
        let target = target.await.unwrap();
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let summary = run(&target, &options(2, 10, Duration::ZERO)).await.unwrap();
        assert_eq!((summary.requests, summary.errors), (0, 10));
        assert!(summary.errors_by_code.contains_key("Unavailable"));
        assert!(summary.describe().contains("first error: Unavailable"));
    }
}
