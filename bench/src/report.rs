//! The results of a run and the targets they are held to: the [`Report`],
//! which is BENCHMARKS.json (everything, for tools), and BENCHMARKS.md,
//! rendered from the report alone so that the committed JSON renders the
//! committed Markdown (a test holds them to that).
//!
//! Ratios to the floor are taken within each round, where the echo server
//! and the services were measured minutes apart at most, and the report
//! gives their median over the rounds along with the spread.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use crate::load::{Summary, TargetKind, format_us as us};
use crate::processes::{Machine, ServiceKind};
use crate::profile::{self, Outcome, ProcessProfile, Profile, Share};

/// e2e p50 may be at most this many times the echo p50.
const LATENCY_RATIO_MAX: f64 = 2.5;
/// e2e throughput at the high concurrency must be at least this share of echo's.
const THROUGHPUT_RATIO_MIN: f64 = 0.35;
/// Median registration latency limit, per service.
const REGISTRATION_MAX_MS: f64 = 300.0;
/// Median deregistration latency limit, per service.
const DEREGISTRATION_MAX_MS: f64 = 100.0;
/// Idle resident memory limit per service: 20 MB (decimal), in kB (KiB).
const IDLE_RSS_MAX_KB: u64 = 20_000_000 / 1024;
/// Every process that works for a request, whose CPU time per call is
/// measured: the load generator, the floors, then the services.
pub const WORKERS: [&str; 5] = [
    "load generator",
    "echo server",
    "relay",
    "consignment-service",
    "vessel-service",
];
/// The calls, in the order each round runs them (reversed every other round).
pub const TARGETS: [TargetKind; 4] = [
    TargetKind::Echo,
    TargetKind::Relay,
    TargetKind::Create,
    TargetKind::Find,
];

/// How the run was set up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settings {
    /// Rounds of windows.
    pub rounds: u32,
    /// Each window's length, unless a smoke run.
    pub window_secs: f64,
    /// Uncounted load before each window.
    pub warmup_secs: f64,
    /// The concurrencies measured: 1 and the high one.
    pub concurrency: [u32; 2],
    /// Start-and-stop samples per service.
    pub registration_samples: u32,
    /// A smoke run counts `smoke_requests` per window instead of timing it.
    pub smoke: bool,
    /// Requests per window in a smoke run.
    pub smoke_requests: Option<u64>,
    /// The size of the encoded sample consignment.
    pub echo_payload_bytes: usize,
    /// Where consignment-service keeps consignments.
    pub consignment_store: String,
    /// How much the services log.
    pub service_log_level: String,
    /// Where the service binaries came from, e.g. `target/release`.
    pub binaries: String,
    /// `--service-env`; empty for the default configuration.
    pub service_env: Vec<String>,
}

impl Settings {
    /// The high concurrency.
    pub fn high(&self) -> u32 {
        self.concurrency[1]
    }
}

/// One measurement window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Window {
    /// From 1.
    pub round: u32,
    /// What the load generator measured.
    pub summary: Summary,
    /// gRPC calls etcd handled during the window, by method (only those
    /// that happened).
    pub etcd_calls: BTreeMap<String, u64>,
    /// Each service's highest resident memory sampled during the window, kB.
    pub rss_peak_kb: BTreeMap<ServiceKind, u64>,
    /// CPU time (user + system) each of the [`WORKERS`] used during the
    /// window, divided by the calls made, µs.
    pub cpu_us_per_request: BTreeMap<String, f64>,
}

/// Registration and deregistration latency samples of one service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    /// The service.
    pub service: ServiceKind,
    /// Process spawned → key visible in etcd, ms.
    pub registration_ms: Vec<f64>,
    /// SIGTERM → key gone from etcd, ms.
    pub deregistration_ms: Vec<f64>,
}

/// Resident memory of one service, kB.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Memory {
    /// The service.
    pub service: ServiceKind,
    /// Registered, connected, before any load.
    pub idle_kb: u64,
    /// The highest sample during any window.
    pub under_load_peak_kb: u64,
    /// After the last window.
    pub after_load_kb: u64,
    /// The kernel's high-water mark (VmHWM) after the last window.
    pub high_water_kb: u64,
    /// consignment-service only: consignments it held by the end, since the
    /// in-memory store grows with every CreateConsignment.
    pub consignments_stored: Option<u64>,
}

/// One call at one concurrency, over all rounds: medians over the rounds of
/// each window's figure, except `max_us` (the slowest call in any round)
/// and the counts (sums).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Aggregate {
    pub target: TargetKind,
    pub concurrency: u32,
    /// Successful calls per second.
    pub throughput: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub requests: u64,
    pub errors: u64,
    pub cpu_us_per_request: BTreeMap<String, f64>,
}

/// A ratio taken per round, and its median.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Each round's value, in order.
    pub per_round: Vec<f64>,
}

/// The ratios to a floor: e2e, relay and FindAvailable over echo, and e2e
/// over the relay (what shippy adds to two bare hops); p50s at concurrency
/// 1 (and e2e's at the high one too), throughputs at the high concurrency.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ratios {
    pub p50_at_1: Option<Ratio>,
    pub p50_at_high: Option<Ratio>,
    pub throughput_at_high: Option<Ratio>,
    pub p50_over_relay_at_1: Option<Ratio>,
    pub throughput_over_relay_at_high: Option<Ratio>,
    pub relay_p50_at_1: Option<Ratio>,
    pub relay_throughput_at_high: Option<Ratio>,
    pub find_p50_at_1: Option<Ratio>,
    pub find_throughput_at_high: Option<Ratio>,
}

/// etcd calls during the load windows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EtcdDuringLoad {
    /// `Range` calls: reads of the key space.
    pub range_reads: u64,
    /// Every unary call etcd handled during any window, by method.
    pub calls: BTreeMap<String, u64>,
}

/// One target and whether it held.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub held: bool,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// What it ran on.
    pub machine: Machine,
    /// How it was set up.
    pub settings: Settings,
    /// The 1-minute load average at the start and at the end.
    pub load_average: [Option<f64>; 2],
    /// Each call at each concurrency, over the rounds.
    pub aggregates: Vec<Aggregate>,
    /// Ratios to the floors.
    pub ratios: Ratios,
    /// etcd's calls during the windows.
    pub etcd_during_load: EtcdDuringLoad,
    /// Per service.
    pub registration: Vec<Registration>,
    /// Per service.
    pub memory: Vec<Memory>,
    /// The echo server's idle resident memory, kB, for comparison.
    pub echo_idle_rss_kb: u64,
    /// The targets.
    pub checks: Vec<Check>,
    /// Where the services spend their time, when profiled.
    pub profile: Option<Outcome>,
    /// Every window, in the order run.
    pub windows: Vec<Window>,
}

impl Report {
    /// The concurrencies at which a latency or throughput target did not
    /// hold, where a profile shows where the time goes.
    pub fn concurrencies_to_profile(&self) -> Vec<u32> {
        let missed = |prefix| {
            self.checks
                .iter()
                .any(|c| !c.held && c.name.starts_with(prefix))
        };
        let targets = [("e2e latency", 1), ("e2e throughput", self.settings.high())];
        let missed = targets.into_iter().filter(|(prefix, _)| missed(*prefix));
        missed.map(|(_, concurrency)| concurrency).collect()
    }

    /// (Re)computes everything derived from the measurements: the medians,
    /// the ratios, etcd's calls during the load and the targets.
    pub fn evaluate(&mut self) {
        self.aggregates = aggregates(&self.settings, &self.windows);
        self.ratios = ratios(&self.settings, &self.windows);
        let mut calls = BTreeMap::new();
        for (method, count) in self.windows.iter().flat_map(|w| &w.etcd_calls) {
            *calls.entry(method.clone()).or_insert(0) += count;
        }
        let reads = calls.get("Range").copied().unwrap_or(0);
        self.etcd_during_load = EtcdDuringLoad {
            range_reads: reads,
            calls,
        };
        let ratio = |ratio: &Option<Ratio>, held: &dyn Fn(f64) -> bool| match ratio {
            Some(r) => {
                let measured = format!("{:.2}× (rounds {:.2}–{:.2})", r.median, r.min, r.max);
                (measured, held(r.median))
            }
            None => ("not measured".to_owned(), false),
        };
        let errors: u64 = self.windows.iter().map(|w| w.summary.errors).sum();
        let high = self.settings.high();
        let mut checks = vec![
            (
                "e2e latency, p50 at concurrency 1".to_owned(),
                format!("≤ {LATENCY_RATIO_MAX} × echo p50"),
                ratio(&self.ratios.p50_at_1, &|r| r <= LATENCY_RATIO_MAX),
            ),
            (
                format!("e2e throughput at concurrency {high}"),
                format!("≥ {THROUGHPUT_RATIO_MIN} × echo throughput"),
                ratio(&self.ratios.throughput_at_high, &|r| {
                    r >= THROUGHPUT_RATIO_MIN
                }),
            ),
            (
                "errors under load".into(),
                "none".into(),
                (errors.to_string(), errors == 0),
            ),
            (
                "etcd reads during the load".into(),
                "0 Range calls".into(),
                (format!("{reads} Range calls"), reads == 0),
            ),
        ];
        for times in &self.registration {
            let name = times.service.binary();
            let (registration, deregistration) = (&times.registration_ms, &times.deregistration_ms);
            for (what, ms, limit) in [
                ("registration", registration, REGISTRATION_MAX_MS),
                ("deregistration", deregistration, DEREGISTRATION_MAX_MS),
            ] {
                let held = median(ms).is_some_and(|median| median <= limit);
                let (name, goal) = (
                    format!("{name} {what} (median)"),
                    format!("≤ {limit:.0} ms"),
                );
                checks.push((name, goal, (spread_ms(ms), held)));
            }
        }
        for memory in &self.memory {
            let (name, kb) = (memory.service.binary(), memory.idle_kb);
            let measured = format!("{kb} kB ({:.1} MiB)", mib(kb));
            let goal = format!("≤ 20 MB ({IDLE_RSS_MAX_KB} kB) RSS");
            checks.push((
                format!("{name} idle memory"),
                goal,
                (measured, kb <= IDLE_RSS_MAX_KB),
            ));
        }
        let check = |(name, goal, (measured, held))| Check {
            name,
            goal,
            measured,
            held,
        };
        self.checks = checks.into_iter().map(check).collect();
    }

    /// The headline: the two ratios and how many targets held.
    pub fn headline(&self) -> String {
        let ratio = |r: &Option<Ratio>| {
            r.as_ref()
                .map_or("n/a".into(), |r| format!("{:.2}×", r.median))
        };
        let held = self.checks.iter().filter(|c| c.held).count();
        format!(
            "e2e p50 / echo p50 (c=1): {}; e2e / echo throughput (c={}): {}; {held} of {} targets \
             held",
            ratio(&self.ratios.p50_at_1),
            self.settings.high(),
            ratio(&self.ratios.throughput_at_high),
            self.checks.len()
        )
    }

    /// BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        // Writing into a String cannot fail.
        let _ = write_markdown(&mut md, self);
        md
    }
}

fn aggregates(settings: &Settings, windows: &[Window]) -> Vec<Aggregate> {
    let calls = settings
        .concurrency
        .into_iter()
        .flat_map(|c| TARGETS.map(|t| (t, c)));
    let aggregate = |(target, concurrency)| {
        let runs = windows.iter().map(|w| (&w.summary, &w.cpu_us_per_request));
        let runs: Vec<_> = runs
            .filter(|(s, _)| s.target == target && s.concurrency == concurrency)
            .collect();
        let med = |f: fn(&Summary) -> f64| {
            median(&runs.iter().map(|(s, _)| f(s)).collect::<Vec<_>>()).unwrap_or(0.0)
        };
        let mut cpu: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (process, us) in runs.iter().flat_map(|(_, cpu)| *cpu) {
            cpu.entry(process.clone()).or_default().push(*us);
        }
        let cpu = cpu
            .into_iter()
            .map(|(p, us)| (p, median(&us).unwrap_or(0.0)));
        (!runs.is_empty()).then(|| Aggregate {
            target,
            concurrency,
            throughput: med(|s| s.throughput),
            p50_us: med(|s| s.latency.p50_us),
            p90_us: med(|s| s.latency.p90_us),
            p99_us: med(|s| s.latency.p99_us),
            max_us: runs
                .iter()
                .map(|(s, _)| s.latency.max_us)
                .fold(0.0, f64::max),
            requests: runs.iter().map(|(s, _)| s.requests).sum(),
            errors: runs.iter().map(|(s, _)| s.errors).sum(),
            cpu_us_per_request: cpu.collect(),
        })
    };
    calls.filter_map(aggregate).collect()
}

fn ratios(settings: &Settings, windows: &[Window]) -> Ratios {
    use TargetKind::{Create, Echo, Find, Relay};
    // `f(target) / f(base)` per round at `concurrency`.
    let ratio = |target, base, concurrency, f: fn(&Summary) -> f64| {
        let per_round = (1..=settings.rounds).filter_map(|round| {
            let find = |kind| {
                let mut summaries = windows
                    .iter()
                    .filter(|w| w.round == round)
                    .map(|w| &w.summary);
                summaries
                    .find(|s| s.target == kind && s.concurrency == concurrency)
                    .map(f)
            };
            let (value, floor) = (find(target)?, find(base)?);
            (floor > 0.0).then(|| value / floor)
        });
        let per_round: Vec<f64> = per_round.collect();
        let median = median(&per_round)?;
        let min = per_round.iter().copied().reduce(f64::min)?;
        let max = per_round.iter().copied().reduce(f64::max)?;
        Some(Ratio {
            median,
            min,
            max,
            per_round,
        })
    };
    fn p50(summary: &Summary) -> f64 {
        summary.latency.p50_us
    }
    fn throughput(summary: &Summary) -> f64 {
        summary.throughput
    }
    let high = settings.high();
    Ratios {
        p50_at_1: ratio(Create, Echo, 1, p50),
        p50_at_high: ratio(Create, Echo, high, p50),
        throughput_at_high: ratio(Create, Echo, high, throughput),
        p50_over_relay_at_1: ratio(Create, Relay, 1, p50),
        throughput_over_relay_at_high: ratio(Create, Relay, high, throughput),
        relay_p50_at_1: ratio(Relay, Echo, 1, p50),
        relay_throughput_at_high: ratio(Relay, Echo, high, throughput),
        find_p50_at_1: ratio(Find, Echo, 1, p50),
        find_throughput_at_high: ratio(Find, Echo, high, throughput),
    }
}

/// The median of `values`, `None` when empty.
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => sorted.get(n / 2).copied(),
        _ => Some((sorted.get(n / 2 - 1)? + sorted.get(n / 2)?) / 2.0),
    }
}

/// `median ms (min, max, n)` of samples.
pub fn spread_ms(samples: &[f64]) -> String {
    let min = samples.iter().copied().reduce(f64::min);
    let max = samples.iter().copied().reduce(f64::max);
    match (median(samples), min, max) {
        (Some(median), Some(min), Some(max)) => {
            let n = samples.len();
            format!("{median:.0} ms (min {min:.0}, max {max:.0}, n={n})")
        }
        _ => "no samples".to_owned(),
    }
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The cells of a table row, each formatted with `Display`.
macro_rules! row {
    ($($cell:expr),* $(,)?) => { vec![$($cell.to_string()),*] };
}

/// A Markdown table. `headers` are separated by ` | `; one starting with
/// `>` is a right-aligned column.
fn table(
    md: &mut String,
    headers: &str,
    rows: impl IntoIterator<Item = Vec<String>>,
) -> fmt::Result {
    let headers: Vec<&str> = headers.split(" | ").collect();
    let names = headers.iter().map(|h| h.trim_start_matches('>').to_owned());
    let rule = headers
        .iter()
        .map(|h| if h.starts_with('>') { "---:" } else { "---" });
    let head = [names.collect(), rule.map(str::to_owned).collect()];
    for cells in head.into_iter().chain(rows) {
        md.push('|');
        for cell in cells {
            let gap = if cell.is_empty() { "" } else { " " };
            write!(md, " {cell}{gap}|")?;
        }
        md.push('\n');
    }
    Ok(())
}

fn write_markdown(md: &mut String, report: &Report) -> fmt::Result {
    let (settings, machine, r) = (&report.settings, &report.machine, &report.ratios);
    let high = settings.high();
    writeln!(
        md,
        "# Benchmarks\n\nWritten by `make bench` on {}; run it again to regenerate this file and \
         [BENCHMARKS.json](BENCHMARKS.json), which holds every number below and each window's full \
         summary.",
        machine.date
    )?;
    if settings.smoke {
        md.push_str(
            "\n**This is a smoke run** (a few hundred requests per measurement, to check that the \
             benchmark works); its numbers mean nothing.\n",
        );
    }
    md.push_str("\n## Targets\n\n");
    let held = |held| if held { "**yes**" } else { "**no**" };
    let checks = report.checks.iter();
    let checks = checks.map(|c| row![c.name, c.goal, c.measured, held(c.held)]);
    table(md, "Measurement | Target | Measured | Held", checks)?;
    writeln!(
        md,
        "\nRatios to the floor (median of the per-round ratios):\n\n\
         - e2e p50 / echo p50 at concurrency 1: {}\n\
         - e2e p50 / echo p50 at concurrency {high}: {}\n\
         - e2e throughput / echo throughput at concurrency {high}: {}\n\
         - FindAvailable alone: p50 {} of echo's at concurrency 1, throughput {} of echo's at \
         concurrency {high}\n\
         - The echo relay (two bare tonic hops, no shippy code): p50 {} of echo's at concurrency \
         1, throughput {} of echo's at concurrency {high}\n\
         - e2e against the relay, i.e. what shippy adds to two hops: p50 {} at concurrency 1, \
         throughput {} at concurrency {high}\n",
        ratio(&r.p50_at_1),
        ratio(&r.p50_at_high),
        ratio(&r.throughput_at_high),
        ratio(&r.find_p50_at_1),
        ratio(&r.find_throughput_at_high),
        ratio(&r.relay_p50_at_1),
        ratio(&r.relay_throughput_at_high),
        ratio(&r.p50_over_relay_at_1),
        ratio(&r.throughput_over_relay_at_high),
    )?;

    let [start, end] = report
        .load_average
        .map(|v| v.map_or("unknown".into(), |v| format!("{v:.2}")));
    writeln!(
        md,
        "## Machine\n\n- {} cores ({}), {:.1} GiB memory, {}\n- {}\n- {}\n\
         - 1-minute load average {start} at the start, {end} at the end. The machine is shared \
         (other builds may run beside the benchmark), which is why the floor is measured in every \
         round beside the services and only ratios within a round are compared.\n",
        machine.cores,
        machine.cpu,
        machine.memory_mib as f64 / 1024.0,
        machine.kernel,
        machine.rustc,
        machine.etcd,
    )?;

    writeln!(
        md,
        "## What was run\n\nEverything runs on this one machine, on loopback, as separate \
         processes: a single-member etcd (temporary data dir, free ports), the `vessel-service` \
         and `consignment-service` binaries from `{}`, the echo floor (`shippy-bench \
         echo-server`), and the load generator (`shippy-bench`). The services find each other \
         through etcd as in production; their log level is {}. consignment-service stores \
         consignments {}, so the benchmark measures the RPC and discovery path, not a database.",
        settings.binaries, settings.service_log_level, settings.consignment_store
    )?;
    if !settings.service_env.is_empty() {
        let env = settings.service_env.join(" ");
        writeln!(
            md,
            "\n**Not the default configuration:** both services also ran with `{env}`."
        )?;
    }
    let amount = match settings.smoke_requests {
        Some(count) => format!("{count} requests"),
        None => format!(
            "{:.0} s, after {:.0} s of uncounted warm-up",
            settings.window_secs, settings.warmup_secs
        ),
    };
    let plural = |count: u32, noun| format!("{count} {noun}{}", if count == 1 { "" } else { "s" });
    writeln!(
        md,
        "\n- **Floor (echo):** a raw tonic unary echo server with no layers, one hop, payload of \
         {} bytes, the size of the encoded sample `consignment.json`.\n\
         - **End to end (e2e):** CreateConsignment of the sample to consignment-service, which \
         asks vessel-service (found through etcd) FindAvailable and stores the result: two hops.\n\
         - **FindAvailable** alone, straight to vessel-service: one service hop.\n\
         - **Echo relay:** the same echo call to a second raw tonic server, which makes it to the \
         echo server over a lazily connected tonic channel and returns the answer: two hops with \
         nothing else, the floor for a service that calls another as consignment-service does.\n\
         - The load generator runs N callers (concurrency 1 and {high}) on one HTTP/2 connection \
         per target, each with one call in flight (closed loop) and a 10 s deadline. Each window \
         lasts {amount}. Latency is per successful call, in an HDR histogram.\n\
         - {}; in each, echo, relay, e2e and FindAvailable at concurrency 1, then at {high}, in \
         reverse order every other round. Ratios are taken within a round, then the median over \
         rounds.\n\
         - etcd's `grpc_server_handled_total` counters, from its `/metrics`, are read before and \
         after every window; nothing else talks to etcd meanwhile.\n\
         - Registration: {} per service, the process is spawned and the time until an etcd watch \
         opened beforehand delivers its key is taken; then SIGTERM, and the time until the watch \
         delivers the key's deletion. consignment-service's starts happen with vessel-service \
         registered, so they include its first discovery read. The two instances that carried \
         the load add one deregistration sample each at the end.\n\
         - Memory: VmRSS from `/proc/<pid>/status`, idle (registered, a second after the last \
         start, before any load) and sampled every 100 ms during every window.\n",
        settings.echo_payload_bytes,
        plural(settings.rounds, "round"),
        plural(settings.registration_samples, "time"),
    )?;

    md.push_str(
        "## Latency and throughput\n\nMedian over the rounds of each window's figure; max is the \
         slowest call in any round.\n\n",
    );
    let aggregates = report.aggregates.iter().map(|a| {
        let latency = [a.p50_us, a.p90_us, a.p99_us, a.max_us];
        let mut cells = speed(row![a.target.label(), a.concurrency], a.throughput, latency);
        cells.extend(row![a.requests, a.errors]);
        cells
    });
    table(
        md,
        "Call | >Concurrency | >Throughput (req/s) | >p50 | >p90 | >p99 | >max | >Requests | >Errors",
        aggregates,
    )?;

    md.push_str(
        "\n## CPU time per request\n\nCPU time (user + system, from `/proc/<pid>/stat`) each \
         process used during a window, divided by the calls made in it; median over the rounds, \
         in µs. It includes waking up and going back to sleep, which at concurrency 1 happens for \
         every call.\n\n",
    );
    let cpu = report.aggregates.iter().map(|a| {
        let cpu = WORKERS.map(|w| a.cpu_us_per_request.get(w).copied().unwrap_or(0.0));
        let total = cpu.iter().sum::<f64>();
        let mut cells = row![a.target.label(), a.concurrency];
        cells.extend(cpu.iter().chain([&total]).map(|us| format!("{us:.0}")));
        cells
    });
    let headers = format!("Call | >Concurrency | >{} | >total", WORKERS.join(" | >"));
    table(md, &headers, cpu)?;

    let (etcd, windows) = (&report.etcd_during_load, &report.windows);
    let others = etcd.calls.iter().filter(|(method, _)| *method != "Range");
    let others: Vec<_> = others
        .map(|(method, count)| format!("{method} {count}"))
        .collect();
    let others = if others.is_empty() {
        "none".to_owned()
    } else {
        others.join(", ")
    };
    let calls: u64 = windows
        .iter()
        .map(|w| w.summary.requests + w.summary.errors)
        .sum();
    writeln!(
        md,
        "\n## etcd reads on the hot path\n\netcd handled **{} Range calls** during the {} load \
         windows ({calls} requests in all). Other unary calls in those windows: {others}. (Lease \
         keep-alives and watches are streams, which are counted when they end.)\n\n## \
         Registration and deregistration\n",
        etcd.range_reads,
        windows.len()
    )?;
    let registration = report.registration.iter().map(|t| {
        let (registered, deregistered) = (&t.registration_ms, &t.deregistration_ms);
        row![
            t.service.binary(),
            spread_ms(registered),
            spread_ms(deregistered)
        ]
    });
    table(
        md,
        "Service | Registration: start → key in etcd | Deregistration: SIGTERM → key gone",
        registration,
    )?;

    md.push_str("\n## Memory\n\n");
    let mib = |kb| format!("{:.1} MiB", mib(kb));
    let memory = report.memory.iter().map(|m| {
        let sizes = [
            m.idle_kb,
            m.under_load_peak_kb,
            m.after_load_kb,
            m.high_water_kb,
        ];
        let mut cells = row![m.service.binary()];
        cells.extend(sizes.map(mib));
        cells
    });
    let echo = row![
        "echo floor, for comparison",
        mib(report.echo_idle_rss_kb),
        "",
        "",
        ""
    ];
    table(
        md,
        "Process | >Idle RSS | >Peak RSS under load | >RSS after the load | >High-water mark",
        memory.chain([echo]),
    )?;
    if let Some(stored) = report.memory.iter().find_map(|m| m.consignments_stored) {
        writeln!(
            md,
            "\nconsignment-service's in-memory store held {stored} consignments by the end of the \
             load, so its memory under load grows with the number of requests made, not only with \
             concurrency."
        )?;
    }

    md.push_str("\n## Where the time goes\n\n");
    write_latency_split(md, report)?;
    if let Some(outcome) = &report.profile {
        md.push('\n');
        write_profile(md, outcome)?;
    }

    md.push_str("\n## Every window\n\n");
    let windows = windows.iter().map(|w| {
        let (s, l) = (&w.summary, &w.summary.latency);
        let latency = [l.p50_us, l.p90_us, l.p99_us, l.max_us];
        let reads = w.etcd_calls.get("Range").copied().unwrap_or(0);
        let mut cells = speed(
            row![w.round, s.target.label(), s.concurrency],
            s.throughput,
            latency,
        );
        cells.extend(row![s.errors, reads]);
        cells
    });
    table(
        md,
        ">Round | Call | >Concurrency | >req/s | >p50 | >p90 | >p99 | >max | >Errors | >etcd Range",
        windows,
    )
}

/// Splits the end-to-end p50 at concurrency 1 into the two hops (as echo
/// and FindAvailable show them) and what remains for consignment-service,
/// and explains throughput at the high concurrency by CPU per call.
fn write_latency_split(md: &mut String, report: &Report) -> fmt::Result {
    let at = |target: TargetKind, concurrency: u32| {
        let mut aggregates = report.aggregates.iter();
        aggregates.find(|a| a.target == target && a.concurrency == concurrency)
    };
    let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
    use TargetKind::{Create, Echo, Find, Relay};
    let (Some(echo), Some(relay), Some(e2e), Some(find)) =
        (at(Echo, 1), at(Relay, 1), at(Create, 1), at(Find, 1))
    else {
        return writeln!(md, "Not every call was measured at concurrency 1.");
    };
    let shippy = (e2e.p50_us - relay.p50_us).max(0.0);
    writeln!(
        md,
        "**Latency at concurrency 1.** Two bare tonic hops (the relay) already take p50 {} \
         ({:.2}× echo's {}): the relay is a server and a client at once, and every hop wakes \
         parked runtime threads in two processes. An end-to-end call takes p50 {}, so shippy \
         itself adds {} ({:.0}% of the end-to-end p50) on top of the two hops: in \
         vessel-service, FindAvailable alone takes p50 {} against echo's {} (request log, \
         health and reflection routes, a log line per call); in consignment-service, \
         validating the consignment, a new id, the store, two log lines, the failover pool and \
         passing on the deadline and request id.",
        us(relay.p50_us),
        ratio(relay.p50_us, echo.p50_us),
        us(echo.p50_us),
        us(e2e.p50_us),
        us(shippy),
        ratio(shippy, e2e.p50_us) * 100.0,
        us(find.p50_us),
        us(echo.p50_us),
    )?;
    let cpu = |a: &Aggregate, process: &str| a.cpu_us_per_request.get(process).copied();
    if let (Some(consignment), Some(relay_cpu), Some(vessel), Some(echo_server)) = (
        cpu(e2e, "consignment-service"),
        cpu(relay, "relay"),
        cpu(find, "vessel-service"),
        cpu(echo, "echo server"),
    ) {
        writeln!(
            md,
            "\n**CPU per call at concurrency 1:** consignment-service {consignment:.0} µs against \
             the relay's {relay_cpu:.0} µs ({:.1}×); vessel-service answering FindAvailable \
             {vessel:.0} µs against the echo server's {echo_server:.0} µs ({:.1}×).",
            ratio(consignment, relay_cpu),
            ratio(vessel, echo_server)
        )?;
    }
    let high = report.settings.high();
    let (Some(e2e), Some(relay), Some(echo)) = (at(Create, high), at(Relay, high), at(Echo, high))
    else {
        return Ok(());
    };
    let total = |a: &Aggregate| a.cpu_us_per_request.values().sum::<f64>();
    let cpu = |a, process| cpu(a, process).unwrap_or(0.0);
    writeln!(
        md,
        "\n**Throughput at concurrency {high}.** All processes share the same {} cores, so \
         throughput falls as CPU per call rises. Counting every process (load generator \
         included), an echo call costs {:.0} µs of CPU, a relay call {:.0} µs ({:.1}×) and \
         an end-to-end call {:.0} µs ({:.1}×); measured throughput: relay {:.2}× and end to \
         end {:.2}× echo's. Within the end-to-end call, consignment-service takes {:.0} µs \
         where the relay takes {:.0} µs, and vessel-service {:.0} µs where the echo server \
         takes {:.0} µs.",
        report.machine.cores,
        total(echo),
        total(relay),
        ratio(total(relay), total(echo)),
        total(e2e),
        ratio(total(e2e), total(echo)),
        ratio(relay.throughput, echo.throughput),
        ratio(e2e.throughput, echo.throughput),
        cpu(e2e, "consignment-service"),
        cpu(relay, "relay"),
        cpu(e2e, "vessel-service"),
        cpu(echo, "echo server"),
    )
}

/// Where the services spend their time, from `perf`.
fn write_profile(md: &mut String, outcome: &Outcome) -> fmt::Result {
    let profiles = match outcome {
        Outcome::NotTaken { reason } => return writeln!(md, "No profile was taken: {reason}."),
        Outcome::Taken { profiles } => profiles,
    };
    writeln!(
        md,
        "`perf record -e cpu-clock -F {} --call-graph dwarf` on both services during an extra \
         end-to-end window (not one of the measured ones; perf slows them down). Each sample is \
         charged to the first frame from the leaf up that belongs to a library or to shippy, \
         skipping std, libc and the kernel, so system calls count toward whoever made them; a \
         sample whose leaf is malloc or free counts as allocation.",
        profile::FREQUENCY_HZ
    )?;
    for profile in profiles {
        writeln!(md, "\n{}", in_short(profile))?;
    }
    let percent = |share: &Share| format!("{:.1}%", share.percent);
    let list = |shares: &[Share]| {
        let listed = shares
            .iter()
            .map(|s| format!("`{}` {}", short(&s.name), percent(s)));
        listed.collect::<Vec<_>>().join(", ")
    };
    for profile in profiles {
        writeln!(
            md,
            "\n### Concurrency {} ({:.0} s sampled, {:.0} CreateConsignment/s under perf)",
            profile.concurrency, profile.seconds, profile.throughput
        )?;
        for process in &profile.processes {
            writeln!(
                md,
                "\n**{}**: {} samples; {:.0}% in the kernel; {:.0}% under logging (any tracing \
                 frame in the stack); {:.0}% inside the handler itself (the gRPC method and what \
                 it calls).\n",
                process.name,
                process.samples,
                process.kernel_percent,
                process.logging_inclusive_percent,
                process.handler_inclusive_percent
            )?;
            let areas = process.areas.iter().filter(|share| share.percent >= 0.5);
            table(md, "Area | >Share", areas.map(|a| row![a.name, percent(a)]))?;
            writeln!(
                md,
                "\nKernel time entered through: {}.\n\nHottest functions (self): {}.",
                list(&process.system_calls),
                list(&process.top_functions)
            )?;
        }
    }
    Ok(())
}

/// One sentence per profile: how much of each service's CPU went to its
/// handler, to logging, and to the gRPC stack and runtime around them.
fn in_short(profile: &Profile) -> String {
    let share = |process: &ProcessProfile, names: &[&str]| -> f64 {
        let areas = process.areas.iter();
        let matching = areas.filter(|area| names.iter().any(|name| area.name.starts_with(name)));
        matching.map(|area| area.percent).sum()
    };
    let parts = profile.processes.iter().map(|process| {
        format!(
            "{} spends {:.0}% of its CPU inside its handler, {:.0}% under logging (formatting and \
             writing a line per call, system calls included), {:.0}% in the HTTP/2, HTTP and gRPC \
             layers and socket I/O, and {:.0}% in the tokio scheduler parking and waking threads",
            process.name,
            process.handler_inclusive_percent,
            process.logging_inclusive_percent,
            share(process, &["HTTP", "gRPC", "socket", "protobuf"]),
            share(process, &[profile::SCHEDULER]),
        )
    });
    format!(
        "**In short, at concurrency {}:** {} (the handler and logging shares overlap where the \
         handler logs).",
        profile.concurrency,
        parts.collect::<Vec<_>>().join("; ")
    )
}

/// A symbol cut to a readable length.
fn short(symbol: &str) -> String {
    const MAX: usize = 90;
    match symbol.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &symbol[..end]),
        None => symbol.to_owned(),
    }
}

/// `**3.60×** (rounds: 3.63, 3.26)`, or `n/a`.
fn ratio(ratio: &Option<Ratio>) -> String {
    ratio.as_ref().map_or("n/a".to_owned(), |r| {
        let rounds: Vec<String> = r.per_round.iter().map(|v| format!("{v:.2}")).collect();
        format!("**{:.2}×** (rounds: {})", r.median, rounds.join(", "))
    })
}

/// `cells` followed by throughput and latency, as both tables of them show it.
fn speed(mut cells: Vec<String>, throughput: f64, latency: [f64; 4]) -> Vec<String> {
    cells.push(format!("{throughput:.0}"));
    cells.extend(latency.map(us));
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed BENCHMARKS.json renders the committed BENCHMARKS.md,
    /// both as it stands and with everything derived from the measurements
    /// (medians, ratios, targets) computed again; and nothing in the JSON is
    /// lost or renamed on the way through.
    #[test]
    fn the_committed_markdown_renders_from_the_committed_json() {
        let json = include_str!("../../BENCHMARKS.json");
        let committed: Report = serde_json::from_str(json).unwrap();
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_value(&committed).unwrap(), value);
        let mut recomputed = committed.clone();
        recomputed.evaluate();
        let expected = include_str!("../../BENCHMARKS.md");
        for report in [committed, recomputed] {
            let rendered = report.markdown();
            for (number, (line, expected)) in rendered.lines().zip(expected.lines()).enumerate() {
                assert_eq!(line, expected, "BENCHMARKS.md line {}", number + 1);
            }
            assert_eq!(rendered, expected);
        }
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn tables_align_and_leave_empty_cells_empty() {
        let mut md = String::new();
        table(&mut md, "A | >B | >C", [row!["x", 1, ""]]).unwrap();
        assert_eq!(md, "| A | B | C |\n| --- | ---: | ---: |\n| x | 1 | |\n");
        assert_eq!(short(&"é".repeat(91)), format!("{}…", "é".repeat(90)));
    }
}
