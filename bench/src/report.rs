//! The results of a run and the targets they are held to: the [`Report`],
//! which is BENCHMARKS.json, and BENCHMARKS.md, rendered from the report
//! alone so that the committed JSON renders the committed Markdown (a test
//! holds them to that). Ratios to the floor are taken within each round,
//! where the floor and the services were measured minutes apart at most,
//! and reported as their median over the rounds with the spread.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use crate::load::TargetKind::{self, Create, Echo, Find, Relay};
use crate::load::{Summary, format_us as us};
use crate::processes::{Machine, ServiceKind};
use crate::profile::{self, Outcome, Profile, Share};

/// e2e p50 may be at most this many times the echo p50.
const LATENCY_RATIO_MAX: f64 = 2.5;
/// e2e throughput at the high concurrency must be at least this share of echo's.
const THROUGHPUT_RATIO_MIN: f64 = 0.35;
/// Median registration and deregistration latency limits, per service.
const REGISTRATION_MAX_MS: [f64; 2] = [300.0, 100.0];
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
pub const TARGETS: [TargetKind; 4] = [Echo, Relay, Create, Find];

/// How the run was set up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settings {
    pub rounds: u32,
    pub window_secs: f64,
    pub warmup_secs: f64,
    /// 1 and the high concurrency.
    pub concurrency: [u32; 2],
    /// Start-and-stop samples per service.
    pub registration_samples: u32,
    /// A smoke run counts `smoke_requests` per window instead of timing it.
    pub smoke: bool,
    pub smoke_requests: Option<u64>,
    /// The size of the encoded sample consignment.
    pub echo_payload_bytes: usize,
    pub consignment_store: String,
    pub service_log_level: String,
    /// Where the service binaries came from, e.g. `target/release`.
    pub binaries: String,
    /// `--service-env`; empty for the default configuration.
    pub service_env: Vec<String>,
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

/// Registration (process spawned → key in etcd) and deregistration (SIGTERM
/// → key gone) latency samples of one service, ms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub service: ServiceKind,
    pub registration_ms: Vec<f64>,
    pub deregistration_ms: Vec<f64>,
}

/// Resident memory of one service, kB: idle (registered, connected, before
/// any load), the highest sample during any window, after the last window,
/// and the kernel's high-water mark (VmHWM) then.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Memory {
    pub service: ServiceKind,
    pub idle_kb: u64,
    pub under_load_peak_kb: u64,
    pub after_load_kb: u64,
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
    pub throughput: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub requests: u64,
    pub errors: u64,
    pub cpu_us_per_request: BTreeMap<String, f64>,
}

/// A ratio taken per round (`per_round`, in order), and its median.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
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

/// etcd's Range calls (reads of the key space) and all its unary calls by
/// method, during the load windows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EtcdDuringLoad {
    pub range_reads: u64,
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

/// Everything a run measured; `aggregates`, `ratios`, `etcd_during_load`
/// and `checks` are derived from the rest by [`Report::evaluate`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    /// The 1-minute load average at the start and at the end.
    pub load_average: [Option<f64>; 2],
    pub aggregates: Vec<Aggregate>,
    pub ratios: Ratios,
    pub etcd_during_load: EtcdDuringLoad,
    pub registration: Vec<Registration>,
    pub memory: Vec<Memory>,
    /// The echo server's idle resident memory, kB, for comparison.
    pub echo_idle_rss_kb: u64,
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
        let targets = [
            ("e2e latency", 1),
            ("e2e throughput", self.settings.concurrency[1]),
        ];
        let missed = targets.into_iter().filter(|(prefix, _)| missed(*prefix));
        missed.map(|(_, concurrency)| concurrency).collect()
    }

    /// (Re)computes everything derived from the measurements: the medians,
    /// the ratios, etcd's calls during the load and the targets.
    pub fn evaluate(&mut self) {
        let (settings, windows) = (&self.settings, &self.windows);
        self.aggregates = aggregates(settings, windows);
        self.ratios = ratios(settings, windows);
        let mut calls = BTreeMap::new();
        for (method, count) in windows.iter().flat_map(|w| &w.etcd_calls) {
            *calls.entry(method.clone()).or_insert(0) += count;
        }
        let range_reads = calls.get("Range").copied().unwrap_or(0);
        self.etcd_during_load = EtcdDuringLoad { range_reads, calls };
        let errors: u64 = windows.iter().map(|w| w.summary.errors).sum();
        let ratio = |ratio: &Option<Ratio>, held: &dyn Fn(f64) -> bool| match ratio {
            Some(r) => (r.describe(), held(r.median)),
            None => ("not measured".to_owned(), false),
        };
        let (latency, throughput) = (&self.ratios.p50_at_1, &self.ratios.throughput_at_high);
        let mut checks = vec![
            (
                "e2e latency, p50 at concurrency 1".to_owned(),
                format!("≤ {LATENCY_RATIO_MAX} × echo p50"),
                ratio(latency, &|r| r <= LATENCY_RATIO_MAX),
            ),
            (
                format!("e2e throughput at concurrency {}", settings.concurrency[1]),
                format!("≥ {THROUGHPUT_RATIO_MIN} × echo throughput"),
                ratio(throughput, &|r| r >= THROUGHPUT_RATIO_MIN),
            ),
            (
                "errors under load".into(),
                "none".into(),
                (errors.to_string(), errors == 0),
            ),
            (
                "etcd reads during the load".into(),
                "0 Range calls".into(),
                (format!("{range_reads} Range calls"), range_reads == 0),
            ),
        ];
        for times in &self.registration {
            let samples = [&times.registration_ms, &times.deregistration_ms];
            let what = ["registration", "deregistration"].into_iter().zip(samples);
            for ((what, ms), limit) in what.zip(REGISTRATION_MAX_MS) {
                let name = format!("{} {what} (median)", times.service.binary());
                let held = median(ms).is_some_and(|median| median <= limit);
                checks.push((name, format!("≤ {limit:.0} ms"), (spread_ms(ms), held)));
            }
        }
        for memory in &self.memory {
            let (name, kb) = (memory.service.binary(), memory.idle_kb);
            let measured = format!("{kb} kB ({:.1} MiB)", kb as f64 / 1024.0);
            let goal = format!("≤ 20 MB ({IDLE_RSS_MAX_KB} kB) RSS");
            let name = format!("{name} idle memory");
            checks.push((name, goal, (measured, kb <= IDLE_RSS_MAX_KB)));
        }
        let checks = checks
            .into_iter()
            .map(|(name, goal, (measured, held))| Check {
                name,
                goal,
                measured,
                held,
            });
        self.checks = checks.collect();
    }

    /// How many targets held, and the ones that did not.
    pub fn headline(&self) -> String {
        let missed = self.checks.iter().filter(|c| !c.held);
        let missed: Vec<_> = missed
            .map(|c| format!("\n  missed: {}, {}", c.name, c.measured))
            .collect();
        let all = self.checks.len();
        format!(
            "{} of {all} targets held{}",
            all - missed.len(),
            missed.concat()
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

impl Window {
    fn is(&self, target: TargetKind, concurrency: u32) -> bool {
        self.summary.target == target && self.summary.concurrency == concurrency
    }
}

impl Ratio {
    /// `3.60× (rounds 3.26–3.99)`.
    fn describe(&self) -> String {
        format!(
            "{:.2}× (rounds {:.2}–{:.2})",
            self.median, self.min, self.max
        )
    }

    /// `**3.60×** (rounds: 3.63, 3.26, 3.99, 3.57)`, or `n/a`.
    fn listed(ratio: &Option<Self>) -> String {
        let Some(r) = ratio else {
            return "n/a".to_owned();
        };
        let rounds: Vec<String> = r.per_round.iter().map(|v| format!("{v:.2}")).collect();
        format!("**{:.2}×** (rounds: {})", r.median, rounds.join(", "))
    }
}

fn aggregates(settings: &Settings, windows: &[Window]) -> Vec<Aggregate> {
    let calls = settings
        .concurrency
        .into_iter()
        .flat_map(|c| TARGETS.map(|t| (t, c)));
    let aggregate = |(target, concurrency)| {
        let runs: Vec<&Window> = windows
            .iter()
            .filter(|w| w.is(target, concurrency))
            .collect();
        let median_of = |f: fn(&Summary) -> f64| {
            let values: Vec<f64> = runs.iter().map(|w| f(&w.summary)).collect();
            median(&values).unwrap_or(0.0)
        };
        let mut cpu: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (process, us) in runs.iter().flat_map(|w| &w.cpu_us_per_request) {
            cpu.entry(process.clone()).or_default().push(*us);
        }
        let cpu = cpu
            .into_iter()
            .map(|(p, us)| (p, median(&us).unwrap_or(0.0)));
        let summaries = || runs.iter().map(|w| &w.summary);
        (!runs.is_empty()).then(|| Aggregate {
            target,
            concurrency,
            throughput: median_of(|s| s.throughput),
            p50_us: median_of(|s| s.latency.p50_us),
            p90_us: median_of(|s| s.latency.p90_us),
            p99_us: median_of(|s| s.latency.p99_us),
            max_us: summaries().map(|s| s.latency.max_us).fold(0.0, f64::max),
            requests: summaries().map(|s| s.requests).sum(),
            errors: summaries().map(|s| s.errors).sum(),
            cpu_us_per_request: cpu.collect(),
        })
    };
    calls.filter_map(aggregate).collect()
}

fn ratios(settings: &Settings, windows: &[Window]) -> Ratios {
    fn p50(summary: &Summary) -> f64 {
        summary.latency.p50_us
    }
    fn throughput(summary: &Summary) -> f64 {
        summary.throughput
    }
    // `f(target) / f(base)` in each round at `concurrency`.
    let ratio = |target, base, concurrency, f: fn(&Summary) -> f64| {
        let per_round = (1..=settings.rounds).filter_map(|round| {
            let find = |kind| {
                let window = windows
                    .iter()
                    .find(|w| w.round == round && w.is(kind, concurrency));
                window.map(|w| f(&w.summary))
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
    let high = settings.concurrency[1];
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
    let [min, max] = [f64::min, f64::max].map(|f| samples.iter().copied().reduce(f));
    match (median(samples), min, max) {
        (Some(median), Some(min), Some(max)) => {
            let n = samples.len();
            format!("{median:.0} ms (min {min:.0}, max {max:.0}, n={n})")
        }
        _ => "no samples".to_owned(),
    }
}

/// The cells of a table row, each formatted with `Display`.
macro_rules! row {
    ($($cell:expr),* $(,)?) => { vec![$($cell.to_string()),*] };
}

/// A Markdown table. `headers` are separated by ` | `; one starting with
/// `>` is a right-aligned column.
fn table(headers: &str, rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let headers: Vec<&str> = headers.split(" | ").collect();
    let names = headers.iter().map(|h| h.trim_start_matches('>').to_owned());
    let rule = headers
        .iter()
        .map(|h| if h.starts_with('>') { "---:" } else { "---" });
    let head = [names.collect(), rule.map(str::to_owned).collect()];
    let line = |cells: Vec<String>| {
        let cells = cells.iter().map(|c| {
            if c.is_empty() {
                " |".into()
            } else {
                format!(" {c} |")
            }
        });
        format!("|{}\n", cells.collect::<String>())
    };
    head.into_iter().chain(rows).map(line).collect()
}

fn write_markdown(md: &mut String, report: &Report) -> fmt::Result {
    let (settings, machine, r) = (&report.settings, &report.machine, &report.ratios);
    let high = settings.concurrency[1];
    let smoke = match settings.smoke {
        true => {
            "\n**This is a smoke run** (a few hundred requests per measurement, to check that \
                 the benchmark works); its numbers mean nothing.\n"
        }
        false => "",
    };
    let held = |held| if held { "**yes**" } else { "**no**" };
    let checks = report.checks.iter();
    let checks = checks.map(|c| row![c.name, c.goal, c.measured, held(c.held)]);
    let checks = table("Measurement | Target | Measured | Held", checks);
    writeln!(
        md,
        "# Benchmarks\n\nWritten by `make bench` on {}; run it again to regenerate this file and \
         [BENCHMARKS.json](BENCHMARKS.json), which holds every number below and each window's full \
         summary.\n{smoke}\n## Targets\n\n{checks}\n\
         Ratios to the floor (median of the per-round ratios):\n\n\
         - e2e p50 / echo p50 at concurrency 1: {}\n\
         - e2e p50 / echo p50 at concurrency {high}: {}\n\
         - e2e throughput / echo throughput at concurrency {high}: {}\n\
         - FindAvailable alone: p50 {} of echo's at concurrency 1, throughput {} of echo's at \
         concurrency {high}\n\
         - The echo relay (two bare tonic hops, no shippy code): p50 {} of echo's at concurrency \
         1, throughput {} of echo's at concurrency {high}\n\
         - e2e against the relay, i.e. what shippy adds to two hops: p50 {} at concurrency 1, \
         throughput {} at concurrency {high}\n",
        machine.date,
        Ratio::listed(&r.p50_at_1),
        Ratio::listed(&r.p50_at_high),
        Ratio::listed(&r.throughput_at_high),
        Ratio::listed(&r.find_p50_at_1),
        Ratio::listed(&r.find_throughput_at_high),
        Ratio::listed(&r.relay_p50_at_1),
        Ratio::listed(&r.relay_throughput_at_high),
        Ratio::listed(&r.p50_over_relay_at_1),
        Ratio::listed(&r.throughput_over_relay_at_high),
    )?;

    let load = report.load_average.map(|v| v.map(|v| format!("{v:.2}")));
    let [start, end] = load.map(|v| v.unwrap_or_else(|| "unknown".into()));
    let (cores, cpu, memory) = (
        machine.cores,
        &machine.cpu,
        machine.memory_mib as f64 / 1024.0,
    );
    let (kernel, rustc, etcd) = (&machine.kernel, &machine.rustc, &machine.etcd);
    let (binaries, log_level) = (&settings.binaries, &settings.service_log_level);
    let store = &settings.consignment_store;
    let env = settings.service_env.join(" ");
    let env = match env.is_empty() {
        true => String::new(),
        false => {
            format!("\n**Not the default configuration:** both services also ran with `{env}`.\n")
        }
    };
    writeln!(
        md,
        "## Machine\n\n- {cores} cores ({cpu}), {memory:.1} GiB memory, {kernel}\n- {rustc}\n- \
         {etcd}\n- 1-minute load average {start} at the start, {end} at the end. The machine is \
         shared (other builds may run beside the benchmark), which is why the floor is measured \
         in every round beside the services and only ratios within a round are compared.\n\n\
         ## What was run\n\nEverything runs on this one machine, on loopback, as separate \
         processes: a single-member etcd (temporary data dir, free ports), the `vessel-service` \
         and `consignment-service` binaries from `{binaries}`, the echo floor (`shippy-bench \
         echo-server`), and the load generator (`shippy-bench`). The services find each other \
         through etcd as in production; their log level is {log_level}. consignment-service \
         stores consignments {store}, so the benchmark measures the RPC and discovery path, not a \
         database.\n{env}"
    )?;
    let (window, warmup) = (settings.window_secs, settings.warmup_secs);
    let amount = match settings.smoke_requests {
        Some(count) => format!("{count} requests"),
        None => format!("{window:.0} s, after {warmup:.0} s of uncounted warm-up"),
    };
    let plural = |count: u32, noun| format!("{count} {noun}{}", if count == 1 { "" } else { "s" });
    let rounds = plural(settings.rounds, "round");
    let registrations = plural(settings.registration_samples, "time");
    let payload = settings.echo_payload_bytes;
    let aggregates = report.aggregates.iter().map(|a| {
        let latency = [a.p50_us, a.p90_us, a.p99_us, a.max_us].map(us);
        let (call, throughput) = (a.target.label(), format!("{:.0}", a.throughput));
        let mut cells = row![call, a.concurrency, throughput];
        cells.extend(latency.into_iter().chain(row![a.requests, a.errors]));
        cells
    });
    let head = "Call | >Concurrency | >Throughput (req/s) | >p50 | >p90 | >p99 | >max | >Requests";
    let aggregates = table(&format!("{head} | >Errors"), aggregates);
    let cpu = report.aggregates.iter().map(|a| {
        let cpu = WORKERS.map(|w| a.cpu_us_per_request.get(w).copied().unwrap_or(0.0));
        let total = cpu.iter().sum::<f64>();
        let mut cells = row![a.target.label(), a.concurrency];
        cells.extend(cpu.iter().chain([&total]).map(|us| format!("{us:.0}")));
        cells
    });
    let cpu = table(
        &format!("Call | >Concurrency | >{} | >total", WORKERS.join(" | >")),
        cpu,
    );
    writeln!(
        md,
        "- **Floor (echo):** a raw tonic unary echo server with no layers, one hop, payload of \
         {payload} bytes, the size of the encoded sample `consignment.json`.\n\
         - **End to end (e2e):** CreateConsignment of the sample to consignment-service, which \
         asks vessel-service (found through etcd) FindAvailable and stores the result: two hops.\n\
         - **FindAvailable** alone, straight to vessel-service: one service hop.\n\
         - **Echo relay:** the same echo call to a second raw tonic server, which makes it to the \
         echo server over a lazily connected tonic channel and returns the answer: two hops with \
         nothing else, the floor for a service that calls another as consignment-service does.\n\
         - The load generator runs N callers (concurrency 1 and {high}) on one HTTP/2 connection \
         per target, each with one call in flight (closed loop) and a 10 s deadline. Each window \
         lasts {amount}. Latency is per successful call, in an HDR histogram.\n\
         - {rounds}; in each, echo, relay, e2e and FindAvailable at concurrency 1, then at \
         {high}, in reverse order every other round. Ratios are taken within a round, then the \
         median over rounds.\n\
         - etcd's `grpc_server_handled_total` counters, from its `/metrics`, are read before and \
         after every window; nothing else talks to etcd meanwhile.\n\
         - Registration: {registrations} per service, the process is spawned and the time until \
         an etcd watch opened beforehand delivers its key is taken; then SIGTERM, and the time \
         until the watch delivers the key's deletion. consignment-service's starts happen with \
         vessel-service registered, so they include its first discovery read. The two instances \
         that carried the load add one deregistration sample each at the end.\n\
         - Memory: VmRSS from `/proc/<pid>/status`, idle (registered, a second after the last \
         start, before any load) and sampled every 100 ms during every window.\n\n\
         ## Latency and throughput\n\nMedian over the rounds of each window's figure; max is the \
         slowest call in any round.\n\n{aggregates}\n\
         ## CPU time per request\n\nCPU time (user + system, from `/proc/<pid>/stat`) each \
         process used during a window, divided by the calls made in it; median over the rounds, \
         in µs. It includes waking up and going back to sleep, which at concurrency 1 happens for \
         every call.\n\n{cpu}"
    )?;

    let (etcd, windows) = (&report.etcd_during_load, &report.windows);
    let (reads, count) = (etcd.range_reads, windows.len());
    let others = etcd.calls.iter().filter(|(method, _)| *method != "Range");
    let others: Vec<_> = others.map(|(method, n)| format!("{method} {n}")).collect();
    let others = if others.is_empty() {
        "none".into()
    } else {
        others.join(", ")
    };
    let calls: u64 = windows
        .iter()
        .map(|w| w.summary.requests + w.summary.errors)
        .sum();
    let registration = report.registration.iter().map(|t| {
        let samples = [&t.registration_ms, &t.deregistration_ms].map(|ms| spread_ms(ms));
        let mut cells = row![t.service.binary()];
        cells.extend(samples);
        cells
    });
    let head = "Service | Registration: start → key in etcd | Deregistration: SIGTERM → key gone";
    let registration = table(head, registration);
    let mib = |kb| format!("{:.1} MiB", kb as f64 / 1024.0);
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
    let head = "Process | >Idle RSS | >Peak RSS under load | >RSS after the load";
    let memory = table(&format!("{head} | >High-water mark"), memory.chain([echo]));
    let stored = report.memory.iter().find_map(|m| m.consignments_stored);
    let stored = stored.map_or(String::new(), |stored| {
        format!(
            "\nconsignment-service's in-memory store held {stored} consignments by the end of the \
             load, so its memory under load grows with the number of requests made, not only with \
             concurrency.\n"
        )
    });
    writeln!(
        md,
        "## etcd reads on the hot path\n\netcd handled **{reads} Range calls** during the {count} \
         load windows ({calls} requests in all). Other unary calls in those windows: {others}. \
         (Lease keep-alives and watches are streams, which are counted when they end.)\n\n\
         ## Registration and deregistration\n\n{registration}\n## Memory\n\n{memory}{stored}\n\
         ## Where the time goes\n"
    )?;
    write_latency_split(md, report)?;
    if let Some(outcome) = &report.profile {
        md.push('\n');
        write_profile(md, outcome)?;
    }
    let windows = windows.iter().map(|w| {
        let (s, l) = (&w.summary, &w.summary.latency);
        let latency = [l.p50_us, l.p90_us, l.p99_us, l.max_us].map(us);
        let reads = w.etcd_calls.get("Range").copied().unwrap_or(0);
        let throughput = format!("{:.0}", s.throughput);
        let mut cells = row![w.round, s.target.label(), s.concurrency, throughput];
        cells.extend(latency.into_iter().chain(row![s.errors, reads]));
        cells
    });
    let head = ">Round | Call | >Concurrency | >req/s | >p50 | >p90 | >p99 | >max | >Errors";
    let windows = table(&format!("{head} | >etcd Range"), windows);
    write!(md, "\n## Every window\n\n{windows}")
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
    let cpu = |a: &Aggregate, process: &str| a.cpu_us_per_request.get(process).copied();
    let (Some(echo), Some(relay), Some(e2e), Some(find)) =
        (at(Echo, 1), at(Relay, 1), at(Create, 1), at(Find, 1))
    else {
        return writeln!(md, "Not every call was measured at concurrency 1.");
    };
    let shippy = (e2e.p50_us - relay.p50_us).max(0.0);
    let (over_echo, share) = (
        ratio(relay.p50_us, echo.p50_us),
        ratio(shippy, e2e.p50_us) * 100.0,
    );
    let [relay_p50, echo_p50, e2e_p50, shippy, find_p50] =
        [relay.p50_us, echo.p50_us, e2e.p50_us, shippy, find.p50_us].map(us);
    writeln!(
        md,
        "**Latency at concurrency 1.** Two bare tonic hops (the relay) already take p50 \
         {relay_p50} ({over_echo:.2}× echo's {echo_p50}): the relay is a server and a client at \
         once, and every hop wakes parked runtime threads in two processes. An end-to-end call \
         takes p50 {e2e_p50}, so shippy itself adds {shippy} ({share:.0}% of the end-to-end p50) \
         on top of the two hops: in vessel-service, FindAvailable alone takes p50 {find_p50} \
         against echo's {echo_p50} (request log, health and reflection routes, a log line per \
         call); in consignment-service, validating the consignment, a new id, the store, two log \
         lines, the failover pool and passing on the deadline and request id."
    )?;
    let consignment = cpu(e2e, "consignment-service").zip(cpu(relay, "relay"));
    let vessel = cpu(find, "vessel-service").zip(cpu(echo, "echo server"));
    if let (Some((consignment, relay)), Some((vessel, echo))) = (consignment, vessel) {
        let (over_relay, over_echo) = (ratio(consignment, relay), ratio(vessel, echo));
        writeln!(
            md,
            "\n**CPU per call at concurrency 1:** consignment-service {consignment:.0} µs against \
             the relay's {relay:.0} µs ({over_relay:.1}×); vessel-service answering FindAvailable \
             {vessel:.0} µs against the echo server's {echo:.0} µs ({over_echo:.1}×)."
        )?;
    }
    let (cores, high) = (report.machine.cores, report.settings.concurrency[1]);
    let (Some(e2e), Some(relay), Some(echo)) = (at(Create, high), at(Relay, high), at(Echo, high))
    else {
        return Ok(());
    };
    let total = |a: &Aggregate| a.cpu_us_per_request.values().sum::<f64>();
    let [echo_cpu, relay_cpu, e2e_cpu] = [echo, relay, e2e].map(total);
    let cpu = |a, process| cpu(a, process).unwrap_or(0.0);
    writeln!(
        md,
        "\n**Throughput at concurrency {high}.** All processes share the same {cores} cores, so \
         throughput falls as CPU per call rises. Counting every process (load generator \
         included), an echo call costs {echo_cpu:.0} µs of CPU, a relay call {relay_cpu:.0} µs \
         ({:.1}×) and an end-to-end call {e2e_cpu:.0} µs ({:.1}×); measured throughput: relay \
         {:.2}× and end to end {:.2}× echo's. Within the end-to-end call, consignment-service \
         takes {:.0} µs where the relay takes {:.0} µs, and vessel-service {:.0} µs where the \
         echo server takes {:.0} µs.",
        ratio(relay_cpu, echo_cpu),
        ratio(e2e_cpu, echo_cpu),
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
    for Profile {
        concurrency,
        seconds,
        throughput,
        processes,
    } in profiles
    {
        writeln!(
            md,
            "\n### Concurrency {concurrency} ({seconds:.0} s sampled, {throughput:.0} \
             CreateConsignment/s under perf)"
        )?;
        for p in processes {
            let (kernel, logging) = (p.kernel_percent, p.logging_inclusive_percent);
            let (name, samples, handler) = (&p.name, p.samples, p.handler_inclusive_percent);
            writeln!(
                md,
                "\n**{name}**: {samples} samples; {kernel:.0}% in the kernel; {logging:.0}% under \
                 logging (any tracing frame in the stack); {handler:.0}% inside the handler itself \
                 (the gRPC method and what it calls).\n"
            )?;
            let areas = p.areas.iter().filter(|share| share.percent >= 0.5);
            let areas = table("Area | >Share", areas.map(|a| row![a.name, percent(a)]));
            let (calls, functions) = (list(&p.system_calls), list(&p.top_functions));
            writeln!(
                md,
                "{areas}\nKernel time entered through: {calls}.\n\nHottest functions (self): \
                 {functions}."
            )?;
        }
    }
    Ok(())
}

/// One sentence per profile: how much of each service's CPU went to its
/// handler, to logging, and to the gRPC stack and runtime around them.
fn in_short(profile: &Profile) -> String {
    let parts = profile.processes.iter().map(|p| {
        let share = |names: &[&str]| -> f64 {
            let areas = p.areas.iter();
            let matching = areas.filter(|a| names.iter().any(|name| a.name.starts_with(name)));
            matching.map(|area| area.percent).sum()
        };
        let (handler, logging) = (p.handler_inclusive_percent, p.logging_inclusive_percent);
        let stack = share(&["HTTP", "gRPC", "socket", "protobuf"]);
        let scheduler = share(&[profile::SCHEDULER]);
        format!(
            "{} spends {handler:.0}% of its CPU inside its handler, {logging:.0}% under logging \
             (formatting and writing a line per call, system calls included), {stack:.0}% in the \
             HTTP/2, HTTP and gRPC layers and socket I/O, and {scheduler:.0}% in the tokio \
             scheduler parking and waking threads",
            p.name
        )
    });
    let parts = parts.collect::<Vec<_>>().join("; ");
    format!(
        "**In short, at concurrency {}:** {parts} (the handler and logging shares overlap where \
         the handler logs).",
        profile.concurrency
    )
}

/// A symbol cut to a readable length.
fn short(symbol: &str) -> String {
    match symbol.char_indices().nth(90) {
        Some((end, _)) => format!("{}…", &symbol[..end]),
        None => symbol.to_owned(),
    }
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
}
