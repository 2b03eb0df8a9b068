//! The results of a run, the targets they are held to, and their two forms:
//! BENCHMARKS.json (everything, for tools) and BENCHMARKS.md (for people).
//!
//! Ratios to the floor are taken within each round, where the echo server
//! and the services were measured minutes apart at most, and the report
//! gives their median over the rounds along with the spread.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::config::{SuiteArgs, TargetKind};
use crate::load::{Amount, Summary, format_us};
use crate::processes::{Service, ServiceKind};
use crate::profile;
use crate::system::{self, Machine};

/// e2e p50 may be at most this many times the echo p50.
pub const LATENCY_RATIO_MAX: f64 = 2.5;
/// e2e throughput at the high concurrency must be at least this share of echo's.
pub const THROUGHPUT_RATIO_MIN: f64 = 0.35;
/// Median registration latency limit, per service.
pub const REGISTRATION_MAX_MS: f64 = 300.0;
/// Median deregistration latency limit, per service.
pub const DEREGISTRATION_MAX_MS: f64 = 100.0;
/// Idle resident memory limit per service: 20 MB (decimal), in kB (KiB).
pub const IDLE_RSS_MAX_KB: u64 = 20_000_000 / 1024;

/// How the run was set up.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Settings {
    /// Rounds of interleaved windows.
    pub rounds: u32,
    /// Seconds per window (timed runs).
    pub window_secs: f64,
    /// Seconds of uncounted load before each window.
    pub warmup_secs: f64,
    /// The concurrencies measured: 1 and the high one.
    pub concurrency: [u32; 2],
    /// Start-and-stop samples per service.
    pub registration_samples: u32,
    /// A smoke run counts requests instead of timing windows.
    pub smoke: bool,
    /// Requests per window in a smoke run.
    pub smoke_requests: Option<u64>,
    /// The echo payload, the size of the encoded sample consignment.
    pub echo_payload_bytes: usize,
    /// The store consignment-service used.
    pub consignment_store: String,
    /// The services' log level.
    pub service_log_level: String,
    /// Where the service binaries came from, e.g. `target/release`.
    pub binaries: String,
    /// Extra environment the services ran with (`--service-env`); empty
    /// for the default configuration.
    pub service_env: Vec<String>,
}

impl Settings {
    /// Settings from the command line; `payload` is the echo payload size.
    pub fn from_args(args: &SuiteArgs, payload: usize) -> Self {
        let smoke = args.smoke;
        Self {
            rounds: if smoke { 1 } else { args.rounds },
            window_secs: args.window.as_secs_f64(),
            warmup_secs: if smoke {
                0.0
            } else {
                args.warmup.as_secs_f64()
            },
            concurrency: [
                1,
                if smoke {
                    crate::suite::SMOKE_CONCURRENCY
                } else {
                    args.concurrency
                },
            ],
            registration_samples: if smoke { 1 } else { args.registration_samples },
            smoke,
            smoke_requests: smoke.then_some(crate::suite::SMOKE_REQUESTS),
            echo_payload_bytes: payload,
            consignment_store: "in memory (SHIPPY_DATABASE_URL=memory://)".to_owned(),
            service_log_level: "the services' default (info; a line per call)".to_owned(),
            binaries: String::new(),
            service_env: Vec::new(),
        }
    }

    /// What each window measures.
    pub fn amount(&self) -> Amount {
        match self.smoke_requests {
            Some(count) => Amount::Requests(count),
            None => Amount::Duration(self.window()),
        }
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        Duration::from_secs_f64(self.window_secs)
    }

    /// The warm-up before each window.
    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_secs)
    }

    /// The high concurrency.
    pub fn high(&self) -> u32 {
        self.concurrency[1]
    }
}

/// One measurement window.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Window {
    /// Which round, from 1.
    pub round: u32,
    /// What the load generator measured.
    pub summary: Summary,
    /// gRPC calls etcd handled during the window, by method (only those
    /// that happened).
    pub etcd_calls: BTreeMap<String, u64>,
    /// Each service's highest resident memory sampled during the window, kB.
    pub rss_peak_kb: BTreeMap<ServiceKind, u64>,
    /// CPU time (user + system) each process used during the window,
    /// divided by the calls made, µs.
    pub cpu_us_per_request: BTreeMap<String, f64>,
}

/// Registration and deregistration latency samples of one service.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Registration {
    /// Which service.
    pub service: ServiceKind,
    /// Process spawned → key visible in etcd, ms.
    pub registration_ms: Vec<f64>,
    /// SIGTERM → key gone from etcd, ms.
    pub deregistration_ms: Vec<f64>,
}

impl Registration {
    /// No samples yet.
    pub fn new(service: ServiceKind) -> Self {
        Self {
            service,
            registration_ms: Vec::new(),
            deregistration_ms: Vec::new(),
        }
    }

    /// Adds a registration sample.
    pub fn registered(&mut self, took: Duration) {
        self.registration_ms.push(took.as_secs_f64() * 1000.0);
    }

    /// Adds a deregistration sample.
    pub fn deregistered(&mut self, took: Duration) {
        self.deregistration_ms.push(took.as_secs_f64() * 1000.0);
    }

    /// One line: medians and ranges.
    pub fn describe(&self) -> String {
        format!(
            "{}: registration {}, deregistration {}",
            self.service.binary(),
            spread_ms(&self.registration_ms),
            spread_ms(&self.deregistration_ms)
        )
    }
}

/// `median ms (min–max)` of samples.
fn spread_ms(samples: &[f64]) -> String {
    match (median(samples), min_max(samples)) {
        (Some(median), Some((min, max))) => {
            format!(
                "{median:.0} ms (min {min:.0}, max {max:.0}, n={})",
                samples.len()
            )
        }
        _ => "no samples".to_owned(),
    }
}

/// Resident memory of one service, kB.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Memory {
    /// Which service.
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

impl Memory {
    /// Reads `service`'s idle memory now.
    pub fn idle(service: &Service) -> anyhow::Result<Self> {
        Ok(Self {
            service: service.kind,
            idle_kb: system::rss_kb(service.pid())?,
            under_load_peak_kb: 0,
            after_load_kb: 0,
            high_water_kb: 0,
            consignments_stored: None,
        })
    }

    /// Fills in the under-load figures from the windows and the process now.
    pub fn after_load(&mut self, service: &Service, windows: &[Window]) -> anyhow::Result<()> {
        self.under_load_peak_kb = windows
            .iter()
            .filter_map(|window| window.rss_peak_kb.get(&self.service))
            .copied()
            .max()
            .unwrap_or(0);
        self.after_load_kb = system::rss_kb(service.pid())?;
        self.high_water_kb = system::peak_rss_kb(service.pid())?;
        Ok(())
    }
}

/// One call at one concurrency, over all rounds.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Aggregate {
    /// The call.
    pub target: TargetKind,
    /// Callers at once.
    pub concurrency: u32,
    /// Median over rounds of successful calls per second.
    pub throughput: f64,
    /// Median over rounds of each window's p50, µs.
    pub p50_us: f64,
    /// Median over rounds of each window's p90, µs.
    pub p90_us: f64,
    /// Median over rounds of each window's p99, µs.
    pub p99_us: f64,
    /// The slowest call in any round, µs.
    pub max_us: f64,
    /// Successful calls over all rounds.
    pub requests: u64,
    /// Failed calls over all rounds.
    pub errors: u64,
    /// Median over rounds of each process's CPU time per call, µs.
    pub cpu_us_per_request: BTreeMap<String, f64>,
}

/// A ratio taken per round, and its median.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Ratio {
    /// Median over rounds.
    pub median: f64,
    /// Lowest round.
    pub min: f64,
    /// Highest round.
    pub max: f64,
    /// Each round's value, in order.
    pub per_round: Vec<f64>,
}

impl Ratio {
    fn of(per_round: Vec<f64>) -> Option<Self> {
        let median = median(&per_round)?;
        let (min, max) = min_max(&per_round)?;
        Some(Self {
            median,
            min,
            max,
            per_round,
        })
    }
}

/// The ratios to the floor.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Ratios {
    /// e2e p50 / echo p50 at concurrency 1: what a hop chain costs one caller.
    pub p50_at_1: Option<Ratio>,
    /// e2e p50 / echo p50 at the high concurrency.
    pub p50_at_high: Option<Ratio>,
    /// e2e throughput / echo throughput at the high concurrency.
    pub throughput_at_high: Option<Ratio>,
    /// e2e p50 / relay p50 at concurrency 1: what shippy adds to two bare hops.
    pub p50_over_relay_at_1: Option<Ratio>,
    /// e2e throughput / relay throughput at the high concurrency.
    pub throughput_over_relay_at_high: Option<Ratio>,
    /// Relay p50 / echo p50 at concurrency 1: two bare tonic hops.
    pub relay_p50_at_1: Option<Ratio>,
    /// Relay throughput / echo throughput at the high concurrency.
    pub relay_throughput_at_high: Option<Ratio>,
    /// FindAvailable p50 / echo p50 at concurrency 1: one service hop.
    pub find_p50_at_1: Option<Ratio>,
    /// FindAvailable throughput / echo throughput at the high concurrency.
    pub find_throughput_at_high: Option<Ratio>,
}

/// etcd calls during the load windows.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EtcdDuringLoad {
    /// Range (read) calls etcd handled during any window.
    pub range_reads: u64,
    /// Every unary call etcd handled during any window, by method.
    pub calls: BTreeMap<String, u64>,
}

/// One target and whether it held.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Check {
    /// What is measured.
    pub name: String,
    /// The target.
    pub goal: String,
    /// What was measured.
    pub measured: String,
    /// Whether the target held.
    pub held: bool,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// How the run was set up.
    pub settings: Settings,
    /// The 1-minute load average at the start and at the end.
    pub load_average: [Option<f64>; 2],
    /// Medians per call and concurrency.
    pub aggregates: Vec<Aggregate>,
    /// Ratios to the floor.
    pub ratios: Ratios,
    /// etcd calls during the load.
    pub etcd_during_load: EtcdDuringLoad,
    /// Registration and deregistration samples.
    pub registration: Vec<Registration>,
    /// Resident memory per service.
    pub memory: Vec<Memory>,
    /// The echo server's idle resident memory, kB, for comparison.
    pub echo_idle_rss_kb: u64,
    /// The targets.
    pub checks: Vec<Check>,
    /// Where the services spend their time, when profiled.
    pub profile: Option<profile::Outcome>,
    /// Every window, in the order run.
    pub windows: Vec<Window>,
}

impl Report {
    /// A report of these measurements, with the targets evaluated.
    pub fn new(
        machine: Machine,
        settings: Settings,
        windows: Vec<Window>,
        registration: [Registration; 2],
        memory: [Memory; 2],
        echo_idle_rss_kb: u64,
    ) -> Self {
        let mut report = Self {
            machine,
            load_average: [None, None],
            aggregates: aggregates(&settings, &windows),
            ratios: ratios(&settings, &windows),
            etcd_during_load: etcd_during_load(&windows),
            settings,
            registration: registration.into(),
            memory: memory.into(),
            echo_idle_rss_kb,
            checks: Vec::new(),
            profile: None,
            windows,
        };
        report.evaluate();
        report
    }

    /// Adds a deregistration sample for `service`.
    pub fn add_deregistration(&mut self, service: ServiceKind, took: Duration) {
        if let Some(times) = self.registration.iter_mut().find(|r| r.service == service) {
            times.deregistered(took);
        }
    }

    /// The concurrencies at which a latency or throughput target did not
    /// hold, where a profile shows where the time goes.
    pub fn concurrencies_to_profile(&self) -> Vec<u32> {
        let missed = |prefix: &str| {
            self.checks
                .iter()
                .any(|check| !check.held && check.name.starts_with(prefix))
        };
        let mut concurrencies = Vec::new();
        if missed("e2e latency") {
            concurrencies.push(1);
        }
        if missed("e2e throughput") {
            concurrencies.push(self.settings.high());
        }
        concurrencies
    }

    /// (Re)computes the targets from the measurements.
    pub fn evaluate(&mut self) {
        let mut checks = Vec::new();
        let high = self.settings.high();
        let ratio_check =
            |name: String, goal: String, ratio: &Option<Ratio>, held: &dyn Fn(f64) -> bool| {
                match ratio {
                    Some(ratio) => Check {
                        name,
                        goal,
                        measured: format!(
                            "{:.2}× (rounds {:.2}–{:.2})",
                            ratio.median, ratio.min, ratio.max
                        ),
                        held: held(ratio.median),
                    },
                    None => Check {
                        name,
                        goal,
                        measured: "not measured".to_owned(),
                        held: false,
                    },
                }
            };
        checks.push(ratio_check(
            "e2e latency, p50 at concurrency 1".to_owned(),
            format!("≤ {LATENCY_RATIO_MAX} × echo p50"),
            &self.ratios.p50_at_1,
            &|r| r <= LATENCY_RATIO_MAX,
        ));
        checks.push(ratio_check(
            format!("e2e throughput at concurrency {high}"),
            format!("≥ {THROUGHPUT_RATIO_MIN} × echo throughput"),
            &self.ratios.throughput_at_high,
            &|r| r >= THROUGHPUT_RATIO_MIN,
        ));
        let errors: u64 = self.windows.iter().map(|w| w.summary.errors).sum();
        checks.push(Check {
            name: "errors under load".to_owned(),
            goal: "none".to_owned(),
            measured: errors.to_string(),
            held: errors == 0,
        });
        let reads = self.etcd_during_load.range_reads;
        checks.push(Check {
            name: "etcd reads during the load".to_owned(),
            goal: "0 Range calls".to_owned(),
            measured: format!("{reads} Range calls"),
            held: reads == 0,
        });
        for times in &self.registration {
            let name = times.service.binary();
            let registration = median(&times.registration_ms);
            checks.push(Check {
                name: format!("{name} registration (median)"),
                goal: format!("≤ {REGISTRATION_MAX_MS:.0} ms"),
                measured: spread_ms(&times.registration_ms),
                held: registration.is_some_and(|ms| ms <= REGISTRATION_MAX_MS),
            });
            let deregistration = median(&times.deregistration_ms);
            checks.push(Check {
                name: format!("{name} deregistration (median)"),
                goal: format!("≤ {DEREGISTRATION_MAX_MS:.0} ms"),
                measured: spread_ms(&times.deregistration_ms),
                held: deregistration.is_some_and(|ms| ms <= DEREGISTRATION_MAX_MS),
            });
        }
        for memory in &self.memory {
            checks.push(Check {
                name: format!("{} idle memory", memory.service.binary()),
                goal: format!("≤ 20 MB ({IDLE_RSS_MAX_KB} kB) RSS"),
                measured: format!("{} kB ({:.1} MiB)", memory.idle_kb, mib(memory.idle_kb)),
                held: memory.idle_kb <= IDLE_RSS_MAX_KB,
            });
        }
        self.checks = checks;
    }
}

fn aggregates(settings: &Settings, windows: &[Window]) -> Vec<Aggregate> {
    let mut out = Vec::new();
    for concurrency in settings.concurrency {
        for target in [
            TargetKind::Echo,
            TargetKind::Relay,
            TargetKind::Create,
            TargetKind::Find,
        ] {
            let runs: Vec<&Summary> = windows
                .iter()
                .map(|w| &w.summary)
                .filter(|s| s.target == target && s.concurrency == concurrency)
                .collect();
            if runs.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&Summary) -> f64| {
                median(&runs.iter().map(|s| f(s)).collect::<Vec<_>>()).unwrap_or(0.0)
            };
            out.push(Aggregate {
                target,
                concurrency,
                throughput: med(&|s| s.throughput),
                p50_us: med(&|s| s.latency.p50_us),
                p90_us: med(&|s| s.latency.p90_us),
                p99_us: med(&|s| s.latency.p99_us),
                max_us: runs.iter().map(|s| s.latency.max_us).fold(0.0, f64::max),
                requests: runs.iter().map(|s| s.requests).sum(),
                errors: runs.iter().map(|s| s.errors).sum(),
                cpu_us_per_request: cpu_medians(windows, target, concurrency),
            });
        }
    }
    out
}

/// Each process's median CPU per call over the windows of `target` at `concurrency`.
fn cpu_medians(windows: &[Window], target: TargetKind, concurrency: u32) -> BTreeMap<String, f64> {
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for window in windows
        .iter()
        .filter(|w| w.summary.target == target && w.summary.concurrency == concurrency)
    {
        for (process, us) in &window.cpu_us_per_request {
            samples.entry(process.clone()).or_default().push(*us);
        }
    }
    samples
        .into_iter()
        .filter_map(|(process, values)| Some((process, median(&values)?)))
        .collect()
}

/// `f(target) / f(echo)` per round at `concurrency`.
fn per_round(
    settings: &Settings,
    windows: &[Window],
    target: TargetKind,
    concurrency: u32,
    f: fn(&Summary) -> f64,
) -> Vec<f64> {
    per_round_over(settings, windows, target, TargetKind::Echo, concurrency, f)
}

/// `f(target) / f(base)` per round at `concurrency`.
fn per_round_over(
    settings: &Settings,
    windows: &[Window],
    target: TargetKind,
    base: TargetKind,
    concurrency: u32,
    f: fn(&Summary) -> f64,
) -> Vec<f64> {
    (1..=settings.rounds)
        .filter_map(|round| {
            let find = |kind: TargetKind| {
                windows
                    .iter()
                    .find(|w| {
                        w.round == round
                            && w.summary.target == kind
                            && w.summary.concurrency == concurrency
                    })
                    .map(|w| f(&w.summary))
            };
            let (value, floor) = (find(target)?, find(base)?);
            (floor > 0.0).then(|| value / floor)
        })
        .collect()
}

fn ratios(settings: &Settings, windows: &[Window]) -> Ratios {
    let high = settings.high();
    let p50 = |s: &Summary| s.latency.p50_us;
    let throughput = |s: &Summary| s.throughput;
    Ratios {
        p50_at_1: Ratio::of(per_round(settings, windows, TargetKind::Create, 1, p50)),
        p50_at_high: Ratio::of(per_round(settings, windows, TargetKind::Create, high, p50)),
        throughput_at_high: Ratio::of(per_round(
            settings,
            windows,
            TargetKind::Create,
            high,
            throughput,
        )),
        p50_over_relay_at_1: Ratio::of(per_round_over(
            settings,
            windows,
            TargetKind::Create,
            TargetKind::Relay,
            1,
            p50,
        )),
        throughput_over_relay_at_high: Ratio::of(per_round_over(
            settings,
            windows,
            TargetKind::Create,
            TargetKind::Relay,
            high,
            throughput,
        )),
        relay_p50_at_1: Ratio::of(per_round(settings, windows, TargetKind::Relay, 1, p50)),
        relay_throughput_at_high: Ratio::of(per_round(
            settings,
            windows,
            TargetKind::Relay,
            high,
            throughput,
        )),
        find_p50_at_1: Ratio::of(per_round(settings, windows, TargetKind::Find, 1, p50)),
        find_throughput_at_high: Ratio::of(per_round(
            settings,
            windows,
            TargetKind::Find,
            high,
            throughput,
        )),
    }
}

fn etcd_during_load(windows: &[Window]) -> EtcdDuringLoad {
    let mut calls = BTreeMap::new();
    for window in windows {
        for (method, count) in &window.etcd_calls {
            *calls.entry(method.clone()).or_insert(0) += count;
        }
    }
    EtcdDuringLoad {
        range_reads: calls.get("Range").copied().unwrap_or(0),
        calls,
    }
}

/// The median of `values`, `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => sorted.get(n / 2).copied(),
        _ => Some((sorted.get(n / 2 - 1)? + sorted.get(n / 2)?) / 2.0),
    }
}

fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    let min = values.iter().copied().reduce(f64::min)?;
    let max = values.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn yes_no(held: bool) -> &'static str {
    if held { "**yes**" } else { "**no**" }
}

/// The headline: the two ratios and how many targets held.
pub fn headline(report: &Report) -> String {
    let ratio = |r: &Option<Ratio>| {
        r.as_ref()
            .map_or("n/a".to_owned(), |r| format!("{:.2}×", r.median))
    };
    let held = report.checks.iter().filter(|c| c.held).count();
    format!(
        "e2e p50 / echo p50 (c=1): {}; e2e / echo throughput (c={}): {}; {held} of {} targets held",
        ratio(&report.ratios.p50_at_1),
        report.settings.high(),
        ratio(&report.ratios.throughput_at_high),
        report.checks.len()
    )
}

/// BENCHMARKS.md.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let _ = write_markdown(&mut md, report);
    md
}

fn write_markdown(md: &mut String, report: &Report) -> std::fmt::Result {
    let settings = &report.settings;
    let machine = &report.machine;
    let high = settings.high();
    writeln!(md, "# Benchmarks")?;
    writeln!(md)?;
    writeln!(
        md,
        "Written by `make bench` on {}; run it again to regenerate this file and \
         [BENCHMARKS.json](BENCHMARKS.json), which holds every number below and each window's full summary.",
        machine.date
    )?;
    if settings.smoke {
        writeln!(md)?;
        writeln!(
            md,
            "**This is a smoke run** (a few hundred requests per measurement, to check that the \
             benchmark works); its numbers mean nothing."
        )?;
    }
    writeln!(md)?;
    writeln!(md, "## Targets")?;
    writeln!(md)?;
    writeln!(md, "| Measurement | Target | Measured | Held |")?;
    writeln!(md, "| --- | --- | --- | --- |")?;
    for check in &report.checks {
        writeln!(
            md,
            "| {} | {} | {} | {} |",
            check.name,
            check.goal,
            check.measured,
            yes_no(check.held)
        )?;
    }
    writeln!(md)?;
    let ratio = |r: &Option<Ratio>| {
        r.as_ref().map_or("n/a".to_owned(), |r| {
            format!(
                "**{:.2}×** (rounds: {})",
                r.median,
                join_ratios(&r.per_round)
            )
        })
    };
    writeln!(md, "Ratios to the floor (median of the per-round ratios):")?;
    writeln!(md)?;
    writeln!(
        md,
        "- e2e p50 / echo p50 at concurrency 1: {}",
        ratio(&report.ratios.p50_at_1)
    )?;
    writeln!(
        md,
        "- e2e p50 / echo p50 at concurrency {high}: {}",
        ratio(&report.ratios.p50_at_high)
    )?;
    writeln!(
        md,
        "- e2e throughput / echo throughput at concurrency {high}: {}",
        ratio(&report.ratios.throughput_at_high)
    )?;
    writeln!(
        md,
        "- FindAvailable alone: p50 {} of echo's at concurrency 1, throughput {} of echo's at concurrency {high}",
        ratio(&report.ratios.find_p50_at_1),
        ratio(&report.ratios.find_throughput_at_high)
    )?;
    writeln!(
        md,
        "- The echo relay (two bare tonic hops, no shippy code): p50 {} of echo's at concurrency 1, \
         throughput {} of echo's at concurrency {high}",
        ratio(&report.ratios.relay_p50_at_1),
        ratio(&report.ratios.relay_throughput_at_high)
    )?;
    writeln!(
        md,
        "- e2e against the relay, i.e. what shippy adds to two hops: p50 {} at concurrency 1, \
         throughput {} at concurrency {high}",
        ratio(&report.ratios.p50_over_relay_at_1),
        ratio(&report.ratios.throughput_over_relay_at_high)
    )?;
    writeln!(md)?;

    writeln!(md, "## Machine")?;
    writeln!(md)?;
    writeln!(
        md,
        "- {} cores ({}), {:.1} GiB memory, {}",
        machine.cores,
        machine.cpu,
        machine.memory_mib as f64 / 1024.0,
        machine.kernel
    )?;
    writeln!(md, "- {}", machine.rustc)?;
    writeln!(md, "- {}", machine.etcd)?;
    let load = |value: Option<f64>| value.map_or("unknown".to_owned(), |v| format!("{v:.2}"));
    writeln!(
        md,
        "- 1-minute load average {} at the start, {} at the end. The machine is shared \
         (other builds may run beside the benchmark), which is why the floor is measured \
         in every round beside the services and only ratios within a round are compared.",
        load(report.load_average[0]),
        load(report.load_average[1])
    )?;
    writeln!(md)?;

    writeln!(md, "## What was run")?;
    writeln!(md)?;
    writeln!(
        md,
        "Everything runs on this one machine, on loopback, as separate processes: a single-member \
         etcd (temporary data dir, free ports), the `vessel-service` and \
         `consignment-service` binaries from `{}`, the echo floor (`shippy-bench echo-server`), and the load \
         generator (`shippy-bench`). The services find each other through etcd as in production; \
         their log level is {}. consignment-service stores consignments {}, so the benchmark \
         measures the RPC and discovery path, not a database.",
        settings.binaries, settings.service_log_level, settings.consignment_store
    )?;
    if !settings.service_env.is_empty() {
        writeln!(md)?;
        writeln!(
            md,
            "**Not the default configuration:** both services also ran with `{}`.",
            settings.service_env.join(" ")
        )?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "- **Floor (echo):** a raw tonic unary echo server with no layers, one hop, payload of \
         {} bytes, the size of the encoded sample `consignment.json`.",
        settings.echo_payload_bytes
    )?;
    writeln!(
        md,
        "- **End to end (e2e):** CreateConsignment of the sample to consignment-service, which \
         asks vessel-service (found through etcd) FindAvailable and stores the result: two hops."
    )?;
    writeln!(
        md,
        "- **FindAvailable** alone, straight to vessel-service: one service hop."
    )?;
    writeln!(
        md,
        "- **Echo relay:** the same echo call to a second raw tonic server, which makes it to the \
         echo server over a lazily connected tonic channel and returns the answer: two hops with \
         nothing else, the floor for a service that calls another as consignment-service does."
    )?;
    let amount = match settings.smoke_requests {
        Some(count) => format!("{count} requests"),
        None => format!(
            "{:.0} s, after {:.0} s of uncounted warm-up",
            settings.window_secs, settings.warmup_secs
        ),
    };
    writeln!(
        md,
        "- The load generator runs N callers (concurrency 1 and {high}) on one HTTP/2 connection \
         per target, each with one call in flight (closed loop) and a 10 s deadline. Each window \
         lasts {amount}. Latency is per successful call, in an HDR histogram."
    )?;
    writeln!(
        md,
        "- {}; in each, echo, relay, e2e and FindAvailable at concurrency 1, then at {high}, \
         in reverse order every other round. Ratios are taken within a round, then the median over rounds.",
        plural(settings.rounds, "round")
    )?;
    writeln!(
        md,
        "- etcd's `grpc_server_handled_total` counters, from its `/metrics`, are read before and \
         after every window; nothing else talks to etcd meanwhile."
    )?;
    writeln!(
        md,
        "- Registration: {} per service, the process is spawned and the time until an etcd \
         watch opened beforehand delivers its key is taken; then SIGTERM, and the time until the \
         watch delivers the key's deletion. consignment-service's starts happen with vessel-service \
         registered, so they include its first discovery read. The two instances that carried the \
         load add one deregistration sample each at the end.",
        plural(settings.registration_samples, "time")
    )?;
    writeln!(
        md,
        "- Memory: VmRSS from `/proc/<pid>/status`, idle (registered, a second after the last \
         start, before any load) and sampled every 100 ms during every window."
    )?;
    writeln!(md)?;

    writeln!(md, "## Latency and throughput")?;
    writeln!(md)?;
    writeln!(
        md,
        "Median over the rounds of each window's figure; max is the slowest call in any round."
    )?;
    writeln!(md)?;
    writeln!(
        md,
        "| Call | Concurrency | Throughput (req/s) | p50 | p90 | p99 | max | Requests | Errors |"
    )?;
    writeln!(
        md,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for a in &report.aggregates {
        writeln!(
            md,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            a.target.label(),
            a.concurrency,
            a.throughput,
            format_us(a.p50_us),
            format_us(a.p90_us),
            format_us(a.p99_us),
            format_us(a.max_us),
            a.requests,
            a.errors
        )?;
    }
    writeln!(md)?;

    write_cpu(md, report)?;

    writeln!(md, "## etcd reads on the hot path")?;
    writeln!(md)?;
    let etcd = &report.etcd_during_load;
    let others: Vec<String> = etcd
        .calls
        .iter()
        .filter(|(method, _)| method.as_str() != "Range")
        .map(|(method, count)| format!("{method} {count}"))
        .collect();
    writeln!(
        md,
        "etcd handled **{} Range calls** during the {} load windows ({} requests in all). Other unary \
         calls in those windows: {}. (Lease keep-alives and watches are streams, which are counted \
         when they end.)",
        etcd.range_reads,
        report.windows.len(),
        report
            .windows
            .iter()
            .map(|w| w.summary.requests + w.summary.errors)
            .sum::<u64>(),
        if others.is_empty() {
            "none".to_owned()
        } else {
            others.join(", ")
        }
    )?;
    writeln!(md)?;

    writeln!(md, "## Registration and deregistration")?;
    writeln!(md)?;
    writeln!(
        md,
        "| Service | Registration: start → key in etcd | Deregistration: SIGTERM → key gone |"
    )?;
    writeln!(md, "| --- | --- | --- |")?;
    for times in &report.registration {
        writeln!(
            md,
            "| {} | {} | {} |",
            times.service.binary(),
            spread_ms(&times.registration_ms),
            spread_ms(&times.deregistration_ms)
        )?;
    }
    writeln!(md)?;

    writeln!(md, "## Memory")?;
    writeln!(md)?;
    writeln!(
        md,
        "| Process | Idle RSS | Peak RSS under load | RSS after the load | High-water mark |"
    )?;
    writeln!(md, "| --- | ---: | ---: | ---: | ---: |")?;
    for memory in &report.memory {
        writeln!(
            md,
            "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            memory.service.binary(),
            mib(memory.idle_kb),
            mib(memory.under_load_peak_kb),
            mib(memory.after_load_kb),
            mib(memory.high_water_kb)
        )?;
    }
    writeln!(
        md,
        "| echo floor, for comparison | {:.1} MiB | | | |",
        mib(report.echo_idle_rss_kb)
    )?;
    if let Some(stored) = report
        .memory
        .iter()
        .find_map(|memory| memory.consignments_stored)
    {
        writeln!(md)?;
        writeln!(
            md,
            "consignment-service's in-memory store held {stored} consignments by the end of the \
             load, so its memory under load grows with the number of requests made, not only with \
             concurrency."
        )?;
    }
    writeln!(md)?;

    writeln!(md, "## Where the time goes")?;
    writeln!(md)?;
    write_latency_split(md, report)?;
    if let Some(outcome) = &report.profile {
        writeln!(md)?;
        profile::write_markdown(md, outcome)?;
    }
    writeln!(md)?;

    writeln!(md, "## Every window")?;
    writeln!(md)?;
    writeln!(
        md,
        "| Round | Call | Concurrency | req/s | p50 | p90 | p99 | max | Errors | etcd Range |"
    )?;
    writeln!(
        md,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for window in &report.windows {
        let s = &window.summary;
        writeln!(
            md,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            window.round,
            s.target.label(),
            s.concurrency,
            s.throughput,
            format_us(s.latency.p50_us),
            format_us(s.latency.p90_us),
            format_us(s.latency.p99_us),
            format_us(s.latency.max_us),
            s.errors,
            window.etcd_calls.get("Range").copied().unwrap_or(0)
        )?;
    }
    Ok(())
}

/// The processes in the CPU table, in order.
const CPU_COLUMNS: [&str; 5] = [
    "load generator",
    "echo server",
    "relay",
    "consignment-service",
    "vessel-service",
];

fn write_cpu(md: &mut String, report: &Report) -> std::fmt::Result {
    writeln!(md, "## CPU time per request")?;
    writeln!(md)?;
    writeln!(
        md,
        "CPU time (user + system, from `/proc/<pid>/stat`) each process used during a window, \
         divided by the calls made in it; median over the rounds, in µs. It includes waking up and \
         going back to sleep, which at concurrency 1 happens for every call."
    )?;
    writeln!(md)?;
    writeln!(
        md,
        "| Call | Concurrency | {} | total |",
        CPU_COLUMNS.join(" | ")
    )?;
    writeln!(
        md,
        "| --- | ---: |{} ---: |",
        " ---: |".repeat(CPU_COLUMNS.len())
    )?;
    for a in &report.aggregates {
        let cells: Vec<f64> = CPU_COLUMNS
            .iter()
            .map(|process| a.cpu_us_per_request.get(*process).copied().unwrap_or(0.0))
            .collect();
        writeln!(
            md,
            "| {} | {} | {} | {:.0} |",
            a.target.label(),
            a.concurrency,
            cells
                .iter()
                .map(|us| format!("{us:.0}"))
                .collect::<Vec<_>>()
                .join(" | "),
            cells.iter().sum::<f64>()
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// Splits the end-to-end p50 at concurrency 1 into the two hops (as echo
/// and FindAvailable show them) and what remains for consignment-service.
fn write_latency_split(md: &mut String, report: &Report) -> std::fmt::Result {
    let at = |target: TargetKind, concurrency: u32| {
        report
            .aggregates
            .iter()
            .find(|a| a.target == target && a.concurrency == concurrency)
    };
    let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
    let (Some(echo), Some(relay), Some(e2e), Some(find)) = (
        at(TargetKind::Echo, 1),
        at(TargetKind::Relay, 1),
        at(TargetKind::Create, 1),
        at(TargetKind::Find, 1),
    ) else {
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
        format_us(relay.p50_us),
        ratio(relay.p50_us, echo.p50_us),
        format_us(echo.p50_us),
        format_us(e2e.p50_us),
        format_us(shippy),
        ratio(shippy, e2e.p50_us) * 100.0,
        format_us(find.p50_us),
        format_us(echo.p50_us),
    )?;
    let cpu = |a: &Aggregate, process: &str| a.cpu_us_per_request.get(process).copied();
    if let (Some(consignment), Some(relay_cpu), Some(vessel), Some(echo_server)) = (
        cpu(e2e, "consignment-service"),
        cpu(relay, "relay"),
        cpu(find, "vessel-service"),
        cpu(echo, "echo server"),
    ) {
        writeln!(md)?;
        writeln!(
            md,
            "**CPU per call at concurrency 1:** consignment-service {consignment:.0} µs against \
             the relay's {relay_cpu:.0} µs ({:.1}×); vessel-service answering FindAvailable \
             {vessel:.0} µs against the echo server's {echo_server:.0} µs ({:.1}×).",
            ratio(consignment, relay_cpu),
            ratio(vessel, echo_server)
        )?;
    }
    let high = report.settings.high();
    if let (Some(e2e_high), Some(relay_high), Some(echo_high)) = (
        at(TargetKind::Create, high),
        at(TargetKind::Relay, high),
        at(TargetKind::Echo, high),
    ) {
        let total = |a: &Aggregate| a.cpu_us_per_request.values().sum::<f64>();
        writeln!(md)?;
        writeln!(
            md,
            "**Throughput at concurrency {high}.** All processes share the same {} cores, so \
             throughput falls as CPU per call rises. Counting every process (load generator \
             included), an echo call costs {:.0} µs of CPU, a relay call {:.0} µs ({:.1}×) and \
             an end-to-end call {:.0} µs ({:.1}×); measured throughput: relay {:.2}× and end to \
             end {:.2}× echo's. Within the end-to-end call, consignment-service takes {:.0} µs \
             where the relay takes {:.0} µs, and vessel-service {:.0} µs where the echo server \
             takes {:.0} µs.",
            report.machine.cores,
            total(echo_high),
            total(relay_high),
            ratio(total(relay_high), total(echo_high)),
            total(e2e_high),
            ratio(total(e2e_high), total(echo_high)),
            ratio(relay_high.throughput, echo_high.throughput),
            ratio(e2e_high.throughput, echo_high.throughput),
            cpu(e2e_high, "consignment-service").unwrap_or(0.0),
            cpu(relay_high, "relay").unwrap_or(0.0),
            cpu(e2e_high, "vessel-service").unwrap_or(0.0),
            cpu(echo_high, "echo server").unwrap_or(0.0),
        )?;
    }
    Ok(())
}

/// `1 round`, `3 rounds`.
fn plural(count: u32, noun: &str) -> String {
    if count == 1 {
        format!("{count} {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

fn join_ratios(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn ratios_are_taken_within_each_round() {
        let window = |round, target, throughput, p50_us| Window {
            round,
            summary: Summary {
                target,
                concurrency: 1,
                requests: 10,
                errors: 0,
                errors_by_code: BTreeMap::new(),
                first_error: None,
                elapsed_secs: 1.0,
                throughput,
                latency: crate::load::Latency {
                    p50_us,
                    ..Default::default()
                },
            },
            etcd_calls: BTreeMap::new(),
            rss_peak_kb: BTreeMap::new(),
            cpu_us_per_request: BTreeMap::new(),
        };
        let windows = [
            window(1, TargetKind::Echo, 100.0, 100.0),
            window(1, TargetKind::Create, 50.0, 200.0),
            window(2, TargetKind::Echo, 50.0, 200.0),
            window(2, TargetKind::Create, 20.0, 500.0),
        ];
        let settings = Settings {
            rounds: 2,
            window_secs: 1.0,
            warmup_secs: 0.0,
            concurrency: [1, 1],
            registration_samples: 1,
            smoke: false,
            smoke_requests: None,
            echo_payload_bytes: 1,
            consignment_store: String::new(),
            service_log_level: String::new(),
            binaries: String::new(),
            service_env: Vec::new(),
        };
        let ratio =
            |f| Ratio::of(per_round(&settings, &windows, TargetKind::Create, 1, f)).unwrap();
        let p50 = ratio(|s: &Summary| s.latency.p50_us);
        assert_eq!(p50.per_round, [2.0, 2.5]);
        assert_eq!(p50.median, 2.25);
        let throughput = ratio(|s: &Summary| s.throughput);
        assert_eq!(throughput.per_round, [0.5, 0.4]);
    }
}

#[cfg(test)]
mod committed {
    use super::*;

    #[test]
    fn the_committed_markdown_renders_from_the_committed_json() {
        let report: Report = serde_json::from_str(include_str!("../../BENCHMARKS.json")).unwrap();
        let expected = include_str!("../../BENCHMARKS.md");
        let got = markdown(&report);
        for (i, (a, b)) in got.lines().zip(expected.lines()).enumerate() {
            assert_eq!(a, b, "line {}", i + 1);
        }
        assert_eq!(got, expected);
        let value: serde_json::Value =
            serde_json::from_str(include_str!("../../BENCHMARKS.json")).unwrap();
        assert_eq!(serde_json::to_value(&report).unwrap(), value);
    }
}
