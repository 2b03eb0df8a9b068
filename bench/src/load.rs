//! The load generator, and the sample it sends.
//!
//! `concurrency` callers share one tonic channel (one HTTP/2 connection, as
//! consignment-service has to each vessel-service instance) and each keeps
//! one call in flight: a closed loop, so throughput is what the service
//! sustains and latency is what a caller sees. Every caller first runs for
//! the warm-up, uncounted; then calls that start within the measured window
//! (or until the request count is used up) are counted. Latencies of
//! successful calls go into an HDR histogram, errors are counted by gRPC
//! code.
//!
//! Every call moves the data the tutorial's CLI sends: the sample
//! consignment, `consignment.json` at the workspace root, the FindAvailable
//! request consignment-service makes for it, or an echo payload its size.
//!
//! The progress bar goes to stderr and is hidden when stderr is not a
//! terminal, so logs and CI output stay clean.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message;
use serde::{Deserialize, Serialize};
use shippy_proto::consignment::v1 as consignment;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_proto::vessel::v1 as vessel;
use shippy_proto::vessel::v1::vessel_service_client::VesselServiceClient;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::config::{LoadArgs, TargetKind};
use crate::echo::pb::EchoMessage;
use crate::echo::pb::echo_client::EchoClient;

/// The longest latency the histogram holds; longer calls count as this.
const MAX_LATENCY: Duration = Duration::from_secs(60);
/// How often the progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(100);
/// The file `make run` and the CLI submit.
const SAMPLE_JSON: &str = include_str!("../../consignment.json");

/// The sample file's shape (the CLI's parser is stricter; this one only
/// reads the known sample).
#[derive(Deserialize)]
struct SampleFile {
    description: String,
    weight: i32,
    containers: Vec<SampleContainer>,
}

#[derive(Deserialize)]
struct SampleContainer {
    customer_id: String,
    origin: String,
    user_id: String,
}

/// The sample as a CreateConsignment request.
pub fn sample() -> anyhow::Result<consignment::Consignment> {
    let file: SampleFile = serde_json::from_str(SAMPLE_JSON)?;
    let containers = file.containers.into_iter().map(|c| consignment::Container {
        id: String::new(),
        customer_id: c.customer_id,
        origin: c.origin,
        user_id: c.user_id,
    });
    Ok(consignment::Consignment {
        id: String::new(),
        description: file.description,
        weight: file.weight,
        containers: containers.collect(),
        vessel_id: String::new(),
    })
}

/// A client for one kind of call, cheap to clone (clones share the channel).
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: TargetKind,
    call: Call,
}

/// A client and what it sends with every call.
#[derive(Debug, Clone)]
enum Call {
    /// The echo server or the relay.
    Echo(EchoClient<Channel>, Vec<u8>),
    /// consignment-service; it assigns each consignment a new id.
    Create(ShippingServiceClient<Channel>, consignment::Consignment),
    Find(VesselServiceClient<Channel>, vessel::Specification),
}

impl Target {
    /// Connects to `address` (`host:port`) for calls of `kind`, with the
    /// sample consignment's data; `payload_bytes` overrides the echo payload size.
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
                let spec = vessel::Specification {
                    capacity: i32::try_from(sample.containers.len()).unwrap_or(i32::MAX),
                    max_weight: sample.weight,
                };
                Call::Find(VesselServiceClient::new(channel), spec)
            }
        };
        Ok(Self { kind, call })
    }

    /// Makes one call with `timeout` as its deadline. An error is the gRPC
    /// code's name and message; an answer that lacks what the call is for
    /// (a vessel, the echoed payload) is an error too.
    async fn call(&mut self, timeout: Duration) -> Result<(), (String, String)> {
        fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
            let mut request = tonic::Request::new(message);
            request.set_timeout(timeout);
            request
        }
        let status = |s: tonic::Status| (format!("{:?}", s.code()), s.message().to_owned());
        let (answered, wrong) = match &mut self.call {
            Call::Echo(client, payload) => {
                let message = EchoMessage {
                    payload: payload.clone(),
                };
                let answer = client
                    .echo(request(message, timeout))
                    .await
                    .map_err(status)?;
                let same = answer.get_ref().payload.len() == payload.len();
                (same, "the echo came back a different size")
            }
            Call::Create(client, sample) => {
                let created = request(sample.clone(), timeout);
                let answer = client.create_consignment(created).await.map_err(status)?;
                let stored = answer.get_ref().consignment.as_ref();
                let stored = stored.is_some_and(|c| !c.vessel_id.is_empty() && !c.id.is_empty());
                (stored, "the created consignment has no id or vessel_id")
            }
            Call::Find(client, spec) => {
                let answer = client.find_available(request(*spec, timeout)).await;
                let found = answer.map_err(status)?.get_ref().vessel.is_some();
                (found, "FindAvailable answered without a vessel")
            }
        };
        if answered {
            Ok(())
        } else {
            Err(("WrongAnswer".to_owned(), wrong.to_owned()))
        }
    }
}

/// How much to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// Calls that start within this long after the warm-up.
    Duration(Duration),
    /// This many calls after the warm-up.
    Requests(u64),
}

/// One run of the load generator.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Callers with one call in flight each.
    pub concurrency: u32,
    pub amount: Amount,
    /// Uncounted load before measuring.
    pub warmup: Duration,
    /// Each call's gRPC deadline.
    pub timeout: Duration,
    /// Shown beside the progress bar.
    pub label: String,
}

/// Latency percentiles of the successful calls, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub target: TargetKind,
    pub concurrency: u32,
    /// Successful calls measured.
    pub requests: u64,
    /// Failed calls measured.
    pub errors: u64,
    /// Failed calls by gRPC code (or `WrongAnswer`).
    pub errors_by_code: BTreeMap<String, u64>,
    /// The first failure's code and message, to say what went wrong.
    pub first_error: Option<String>,
    /// From the end of the warm-up to the last counted call's answer.
    pub elapsed_secs: f64,
    /// Successful calls per second.
    pub throughput: f64,
    pub latency: Latency,
}

impl Summary {
    /// Two lines for people: counts and rate, then latency.
    pub fn describe(&self) -> String {
        let l = &self.latency;
        let [p50, p90, p99, max] = [l.p50_us, l.p90_us, l.p99_us, l.max_us].map(format_us);
        let mut text = format!(
            "{} c={}: {} requests in {:.2} s, {:.0} req/s, {} errors\n  latency p50 {p50}  p90 {p90}  p99 {p99}  max {max}",
            self.target.label(),
            self.concurrency,
            self.requests,
            self.elapsed_secs,
            self.throughput,
            self.errors,
        );
        if let Some(first) = &self.first_error {
            text.push_str(&format!("\n  first error: {first}"));
        }
        text
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
    /// Calls that start from here on are counted.
    measure_from: Instant,
    amount: Amount,
    /// Counted calls started, against a request count.
    tickets: AtomicU64,
    /// Counted calls finished, for the progress bar.
    finished: AtomicU64,
}

impl Shared {
    /// Whether a counted call starting at `start` is past the end of the run.
    fn done(&self, start: Instant) -> bool {
        match self.amount {
            Amount::Duration(duration) => start >= self.measure_from + duration,
            Amount::Requests(count) => self.tickets.fetch_add(1, Ordering::Relaxed) >= count,
        }
    }
}

/// What callers measured; merged into one at the end.
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
    let started = Instant::now();
    let measure_from = started + options.warmup;
    let shared = Arc::new(Shared {
        measure_from,
        amount: options.amount,
        tickets: AtomicU64::new(0),
        finished: AtomicU64::new(0),
    });
    let (bar, ticker) = progress(options, Arc::clone(&shared), started);
    let call = |_| tokio::spawn(caller(target.clone(), Arc::clone(&shared), options.timeout));
    let callers: Vec<_> = (0..options.concurrency).map(call).collect();
    let mut tally = Tally::new()?;
    for joined in callers {
        tally.merge(joined.await.context("a caller task failed")??)?;
    }
    ticker.abort();
    bar.finish_and_clear();
    let last_answer = tally.last_answer.unwrap_or(measure_from).max(measure_from);
    let elapsed_secs = (last_answer - measure_from).as_secs_f64();
    let (histogram, requests) = (&tally.histogram, tally.histogram.len());
    let us = |nanos: u64| nanos as f64 / 1000.0;
    let at = |quantile| us(histogram.value_at_quantile(quantile));
    let latency = Latency {
        mean_us: histogram.mean() / 1000.0,
        p50_us: at(0.50),
        p90_us: at(0.90),
        p99_us: at(0.99),
        max_us: us(histogram.max()),
    };
    Ok(Summary {
        target: target.kind,
        concurrency: options.concurrency,
        requests,
        errors: tally.errors.values().sum(),
        errors_by_code: tally.errors,
        first_error: tally.first_error,
        elapsed_secs,
        throughput: if elapsed_secs > 0.0 {
            requests as f64 / elapsed_secs
        } else {
            0.0
        },
        latency: if requests == 0 {
            Latency::default()
        } else {
            latency
        },
    })
}

/// One caller: calls back to back until its share of the run is done.
async fn caller(
    mut target: Target,
    shared: Arc<Shared>,
    timeout: Duration,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    loop {
        let start = Instant::now();
        let counted = start >= shared.measure_from;
        if counted && shared.done(start) {
            return Ok(tally);
        }
        let outcome = target.call(timeout).await;
        let end = Instant::now();
        if !counted {
            continue;
        }
        tally.last_answer = Some(end);
        shared.finished.fetch_add(1, Ordering::Relaxed);
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

/// The progress bar (drawn only when stderr is a terminal), and the task
/// that redraws it until aborted.
fn progress(
    options: &LoadOptions,
    shared: Arc<Shared>,
    started: Instant,
) -> (ProgressBar, JoinHandle<()>) {
    let bar = ProgressBar::new(match options.amount {
        Amount::Duration(duration) => millis(options.warmup) + millis(duration),
        Amount::Requests(count) => count,
    });
    if let Ok(style) = ProgressStyle::with_template("{prefix:>28} [{bar:30}] {percent:>3}% {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(options.label.clone());
    let drawn = bar.clone();
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROGRESS_TICK);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let done = shared.finished.load(Ordering::Relaxed);
            if now < shared.measure_from {
                drawn.set_message("warming up");
            } else {
                let secs = (now - shared.measure_from).as_secs_f64();
                let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
                drawn.set_message(format!("{done} requests, {rate:.0}/s"));
            }
            drawn.set_position(match shared.amount {
                Amount::Duration(_) => millis(now - started),
                Amount::Requests(_) => done,
            });
        }
    });
    (bar, ticker)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `shippy-bench load`: loads one endpoint and prints the summary.
pub async fn run_command(args: &LoadArgs) -> anyhow::Result<()> {
    let target = Target::connect(args.target, &args.address, args.payload_bytes).await?;
    let amount = match (args.requests, args.duration) {
        (Some(count), _) => Amount::Requests(count),
        (None, duration) => Amount::Duration(duration.unwrap_or(Duration::from_secs(10))),
    };
    let options = LoadOptions {
        concurrency: args.concurrency,
        amount,
        warmup: args.warmup,
        timeout: args.timeout,
        label: format!("{} c={}", args.target.label(), args.concurrency),
    };
    let summary = run(&target, &options).await?;
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
    use crate::echo::{self, pb::echo_server::Echo};

    /// Serves `handler` on a free loopback port until the sender is dropped.
    async fn serve(handler: impl Echo) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(echo::serve(listener, handler, async {
            let _ = stopped.await;
        }));
        (address, stop)
    }

    fn options(concurrency: u32, requests: u64, warmup: Duration) -> LoadOptions {
        LoadOptions {
            concurrency,
            amount: Amount::Requests(requests),
            warmup,
            timeout: Duration::from_secs(5),
            label: "test".into(),
        }
    }

    #[test]
    fn the_sample_is_the_tutorials_consignment() {
        let sample = sample().unwrap();
        assert_eq!((sample.weight, sample.containers.len()), (55_000, 3));
        assert!(sample.encoded_len() > 100, "{}", sample.encoded_len());
    }

    #[tokio::test]
    async fn calls_are_echoed_directly_and_through_the_relay_and_counted_after_the_warmup() {
        let (echo, _stop_echo) = serve(echo::EchoHandler).await;
        let (relay, _stop_relay) = serve(echo::RelayHandler::new(&echo).unwrap()).await;
        for (kind, address) in [(TargetKind::Echo, echo), (TargetKind::Relay, relay)] {
            let target = Target::connect(kind, &address, None).await.unwrap();
            let summary = run(&target, &options(4, 250, Duration::from_millis(50))).await;
            let summary = summary.unwrap();
            // An echo of another size would count as an error.
            assert_eq!((summary.requests, summary.errors), (250, 0), "{kind:?}");
            let l = summary.latency;
            assert!(
                0.0 < l.p50_us && l.p50_us <= l.p90_us && l.p99_us <= l.max_us,
                "{l:?}"
            );
            assert!(summary.throughput > 0.0);
        }
    }

    #[tokio::test]
    async fn an_unreachable_service_counts_as_errors() {
        let (address, stop) = serve(echo::EchoHandler).await;
        let target = Target::connect(TargetKind::Echo, &address, None)
            .await
            .unwrap();
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let summary = run(&target, &options(2, 10, Duration::ZERO)).await.unwrap();
        assert_eq!((summary.requests, summary.errors), (0, 10));
        assert!(
            summary.errors_by_code.contains_key("Unavailable"),
            "{summary:?}"
        );
        assert!(summary.describe().contains("first error: Unavailable"));
    }
}
