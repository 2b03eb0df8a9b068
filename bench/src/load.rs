//! The load generator.
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
//! The progress bar goes to stderr and is hidden when stderr is not a
//! terminal, so logs and CI output stay clean.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use shippy_proto::consignment::v1 as consignment;
use shippy_proto::consignment::v1::shipping_service_client::ShippingServiceClient;
use shippy_proto::vessel::v1 as vessel;
use shippy_proto::vessel::v1::vessel_service_client::VesselServiceClient;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::config::{LoadArgs, TargetKind};
use crate::echo::pb::EchoMessage;
use crate::echo::pb::echo_client::EchoClient;
use crate::sample;

/// The longest latency the histogram holds; longer calls count as this.
const MAX_LATENCY: Duration = Duration::from_secs(60);
/// How often the progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

/// A client for one kind of call, cheap to clone (clones share the channel).
#[derive(Debug, Clone)]
pub enum Target {
    /// The echo floor.
    Echo {
        /// Client of the echo server.
        client: EchoClient<Channel>,
        /// Sent with every call.
        payload: Vec<u8>,
    },
    /// CreateConsignment through consignment-service.
    Create {
        /// Client of consignment-service.
        client: ShippingServiceClient<Channel>,
        /// Sent with every call; the service assigns each a new id.
        consignment: consignment::Consignment,
    },
    /// The echo relay: two hops.
    Relay {
        /// Client of the relay.
        client: EchoClient<Channel>,
        /// Sent with every call.
        payload: Vec<u8>,
    },
    /// FindAvailable against vessel-service.
    Find {
        /// Client of vessel-service.
        client: VesselServiceClient<Channel>,
        /// Sent with every call.
        spec: vessel::Specification,
    },
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
        let sample = sample::consignment()?;
        let payload = vec![0x5a; payload_bytes.unwrap_or_else(|| sample::encoded_len(&sample))];
        Ok(match kind {
            TargetKind::Echo => Self::Echo {
                client: EchoClient::new(channel),
                payload,
            },
            TargetKind::Relay => Self::Relay {
                client: EchoClient::new(channel),
                payload,
            },
            TargetKind::Create => Self::Create {
                client: ShippingServiceClient::new(channel),
                consignment: sample,
            },
            TargetKind::Find => Self::Find {
                client: VesselServiceClient::new(channel),
                spec: sample::find_request(&sample),
            },
        })
    }

    /// Which call this makes.
    pub fn kind(&self) -> TargetKind {
        match self {
            Self::Echo { .. } => TargetKind::Echo,
            Self::Relay { .. } => TargetKind::Relay,
            Self::Create { .. } => TargetKind::Create,
            Self::Find { .. } => TargetKind::Find,
        }
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
        let status =
            |status: tonic::Status| (format!("{:?}", status.code()), status.message().to_owned());
        let wrong = |what: &str| ("WrongAnswer".to_owned(), what.to_owned());
        match self {
            Self::Echo { client, payload } | Self::Relay { client, payload } => {
                let sent = payload.len();
                let answer = client
                    .echo(request(
                        EchoMessage {
                            payload: payload.clone(),
                        },
                        timeout,
                    ))
                    .await
                    .map_err(status)?;
                if answer.get_ref().payload.len() != sent {
                    return Err(wrong("the echo came back a different size"));
                }
            }
            Self::Create {
                client,
                consignment,
            } => {
                let answer = client
                    .create_consignment(request(consignment.clone(), timeout))
                    .await
                    .map_err(status)?;
                let stored = answer.get_ref().consignment.as_ref();
                if !stored.is_some_and(|c| !c.vessel_id.is_empty() && !c.id.is_empty()) {
                    return Err(wrong("the created consignment has no id or vessel_id"));
                }
            }
            Self::Find { client, spec } => {
                let answer = client
                    .find_available(request(*spec, timeout))
                    .await
                    .map_err(status)?;
                if answer.get_ref().vessel.is_none() {
                    return Err(wrong("FindAvailable answered without a vessel"));
                }
            }
        }
        Ok(())
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
    /// How much is measured.
    pub amount: Amount,
    /// Uncounted load before measuring.
    pub warmup: Duration,
    /// Each call's gRPC deadline.
    pub timeout: Duration,
    /// Shown beside the progress bar.
    pub label: String,
}

/// Latency percentiles of the successful calls, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Latency {
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// The slowest call.
    pub max_us: f64,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Summary {
    /// The call made.
    pub target: TargetKind,
    /// Callers at once.
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
    /// Latency of the successful calls.
    pub latency: Latency,
}

impl Summary {
    /// Two lines for people: counts and rate, then latency.
    pub fn describe(&self) -> String {
        let latency = &self.latency;
        let mut text = format!(
            "{} c={}: {} requests in {:.2} s, {:.0} req/s, {} errors\n  latency p50 {}  p90 {}  p99 {}  max {}",
            self.target.label(),
            self.concurrency,
            self.requests,
            self.elapsed_secs,
            self.throughput,
            self.errors,
            format_us(latency.p50_us),
            format_us(latency.p90_us),
            format_us(latency.p99_us),
            format_us(latency.max_us),
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
    /// No counted call starts after this (duration runs).
    stop_at: Option<Instant>,
    /// Counted calls allowed (request-count runs).
    limit: Option<u64>,
    /// Counted calls started, against `limit`.
    tickets: AtomicU64,
    /// Counted calls finished, for the progress bar.
    finished: AtomicU64,
}

/// What one caller measured.
struct CallerResult {
    histogram: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    last_answer: Option<Instant>,
}

/// Runs `options` against `target` and summarises it.
pub async fn run(target: &Target, options: &LoadOptions) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let measure_from = started + options.warmup;
    let shared = Arc::new(Shared {
        measure_from,
        stop_at: match options.amount {
            Amount::Duration(duration) => Some(measure_from + duration),
            Amount::Requests(_) => None,
        },
        limit: match options.amount {
            Amount::Requests(count) => Some(count),
            Amount::Duration(_) => None,
        },
        tickets: AtomicU64::new(0),
        finished: AtomicU64::new(0),
    });
    let progress = Progress::start(options, Arc::clone(&shared), started);
    let callers: Vec<_> = (0..options.concurrency)
        .map(|_| tokio::spawn(caller(target.clone(), Arc::clone(&shared), options.timeout)))
        .collect();
    let mut histogram = new_histogram()?;
    let mut errors = BTreeMap::new();
    let mut first_error = None;
    let mut last_answer = measure_from;
    for joined in callers {
        let result = joined.await.context("a caller task failed")??;
        histogram
            .add(&result.histogram)
            .context("merging latency histograms")?;
        for (code, count) in result.errors {
            *errors.entry(code).or_insert(0) += count;
        }
        first_error = first_error.or(result.first_error);
        if let Some(at) = result.last_answer {
            last_answer = last_answer.max(at);
        }
    }
    progress.finish();
    let elapsed = last_answer.saturating_duration_since(measure_from);
    let requests = histogram.len();
    let elapsed_secs = elapsed.as_secs_f64();
    let us = |nanos: u64| nanos as f64 / 1000.0;
    Ok(Summary {
        target: target.kind(),
        concurrency: options.concurrency,
        requests,
        errors: errors.values().sum(),
        errors_by_code: errors,
        first_error,
        elapsed_secs,
        throughput: if elapsed_secs > 0.0 {
            requests as f64 / elapsed_secs
        } else {
            0.0
        },
        latency: if requests == 0 {
            Latency::default()
        } else {
            Latency {
                mean_us: histogram.mean() / 1000.0,
                p50_us: us(histogram.value_at_quantile(0.50)),
                p90_us: us(histogram.value_at_quantile(0.90)),
                p99_us: us(histogram.value_at_quantile(0.99)),
                max_us: us(histogram.max()),
            }
        },
    })
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    let max = u64::try_from(MAX_LATENCY.as_nanos()).unwrap_or(u64::MAX);
    Histogram::new_with_bounds(1, max, 3).context("creating a latency histogram")
}

/// One caller: calls back to back until its share of the run is done.
async fn caller(
    mut target: Target,
    shared: Arc<Shared>,
    timeout: Duration,
) -> anyhow::Result<CallerResult> {
    let mut result = CallerResult {
        histogram: new_histogram()?,
        errors: BTreeMap::new(),
        first_error: None,
        last_answer: None,
    };
    loop {
        let start = Instant::now();
        let counted = start >= shared.measure_from;
        if counted {
            if shared.stop_at.is_some_and(|stop| start >= stop) {
                break;
            }
            if shared
                .limit
                .is_some_and(|limit| shared.tickets.fetch_add(1, Ordering::Relaxed) >= limit)
            {
                break;
            }
        }
        let outcome = target.call(timeout).await;
        let end = Instant::now();
        if !counted {
            continue;
        }
        result.last_answer = Some(end);
        shared.finished.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                let nanos = u64::try_from((end - start).as_nanos()).unwrap_or(u64::MAX);
                result.histogram.saturating_record(nanos.max(1));
            }
            Err((code, message)) => {
                if result.first_error.is_none() {
                    result.first_error = Some(format!("{code}: {message}"));
                }
                *result.errors.entry(code).or_insert(0) += 1;
            }
        }
    }
    Ok(result)
}

/// The progress bar and the task that redraws it.
struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(options: &LoadOptions, shared: Arc<Shared>, started: Instant) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let warmup_ms = millis(options.warmup);
        let length = match options.amount {
            Amount::Duration(duration) => warmup_ms + millis(duration),
            Amount::Requests(count) => count,
        };
        let bar = ProgressBar::with_draw_target(Some(length), target);
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>28} [{bar:30}] {percent:>3}% {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(options.label.clone());
        let amount = options.amount;
        let ticker = {
            let bar = bar.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PROGRESS_TICK);
                loop {
                    tick.tick().await;
                    let now = Instant::now();
                    let done = shared.finished.load(Ordering::Relaxed);
                    if now < shared.measure_from {
                        bar.set_message("warming up");
                    } else {
                        let secs = (now - shared.measure_from).as_secs_f64();
                        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
                        bar.set_message(format!("{done} requests, {rate:.0}/s"));
                    }
                    bar.set_position(match amount {
                        Amount::Duration(_) => millis(now - started),
                        Amount::Requests(_) => done,
                    });
                }
            })
        };
        Self { bar, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `shippy-bench load`: loads one endpoint and prints the summary.
pub async fn run_command(args: &LoadArgs) -> anyhow::Result<()> {
    let target = Target::connect(args.target, &args.address, args.payload_bytes).await?;
    let amount = match (args.requests, args.duration) {
        (Some(count), _) => Amount::Requests(count),
        (None, Some(duration)) => Amount::Duration(duration),
        (None, None) => Amount::Duration(Duration::from_secs(10)),
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
    if summary.errors > 0 {
        anyhow::bail!(
            "{} of {} calls failed",
            summary.errors,
            summary.errors + summary.requests
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo;

    async fn echo_target() -> (Target, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(echo::serve(listener, echo::EchoHandler, async {
            let _ = stopped.await;
        }));
        let target = Target::connect(TargetKind::Echo, &address.to_string(), None)
            .await
            .unwrap();
        (target, stop)
    }

    #[tokio::test]
    async fn a_request_count_is_measured_exactly_after_the_warmup() {
        let (target, _stop) = echo_target().await;
        let options = LoadOptions {
            concurrency: 4,
            amount: Amount::Requests(250),
            warmup: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
            label: "test".into(),
        };
        let summary = run(&target, &options).await.unwrap();
        assert_eq!((summary.requests, summary.errors), (250, 0));
        let l = summary.latency;
        assert!(
            l.p50_us > 0.0 && l.p50_us <= l.p90_us && l.p90_us <= l.p99_us && l.p99_us <= l.max_us
        );
        assert!(summary.throughput > 0.0);
    }

    #[tokio::test]
    async fn an_unreachable_service_counts_as_errors() {
        let (target, stop) = echo_target().await;
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let options = LoadOptions {
            concurrency: 2,
            amount: Amount::Requests(10),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(1),
            label: "test".into(),
        };
        let summary = run(&target, &options).await.unwrap();
        assert_eq!((summary.requests, summary.errors), (0, 10));
        assert!(
            summary.errors_by_code.contains_key("Unavailable"),
            "{summary:?}"
        );
        assert!(summary.describe().contains("first error: Unavailable"));
    }
}
