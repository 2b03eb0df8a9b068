//! The results of a run and the targets they are held to: what
//! BENCHMARKS.json holds (everything, for tools) and what
//! [`markdown`](crate::markdown) renders for people.
//!
//! Ratios to the floor are taken within each round, where the echo server
//! and the services were measured minutes apart at most, and the report
//! gives their median over the rounds along with the spread.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{SuiteArgs, TargetKind};
use crate::load::{Amount, Summary};
use crate::processes::ServiceKind;
use crate::profile;
use crate::system::Machine;

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
/// Requests per measurement in a smoke run.
pub const SMOKE_REQUESTS: u64 = 200;
/// The smoke run's high concurrency.
pub const SMOKE_CONCURRENCY: u32 = 8;
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
    pub rounds: u32,
    pub window_secs: f64,
    pub warmup_secs: f64,
    /// The concurrencies measured: 1 and the high one.
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

impl Settings {
    /// Settings from the command line; `payload` is the echo payload size.
    pub fn from_args(args: &SuiteArgs, payload: usize, binaries: String) -> Self {
        let smoke = args.smoke;
        let unless_smoke = |value: u32, smoke_value: u32| if smoke { smoke_value } else { value };
        let warmup = if smoke { Duration::ZERO } else { args.warmup };
        let service_env = args.service_env.iter().map(|(k, v)| format!("{k}={v}"));
        Self {
            rounds: unless_smoke(args.rounds, 1),
            window_secs: args.window.as_secs_f64(),
            warmup_secs: warmup.as_secs_f64(),
            concurrency: [1, unless_smoke(args.concurrency, SMOKE_CONCURRENCY)],
            registration_samples: unless_smoke(args.registration_samples, 1),
            smoke,
            smoke_requests: smoke.then_some(SMOKE_REQUESTS),
            echo_payload_bytes: payload,
            consignment_store: "in memory (SHIPPY_DATABASE_URL=memory://)".to_owned(),
            service_log_level: "the services' default (info; a line per call)".to_owned(),
            binaries,
            service_env: service_env.collect(),
        }
    }

    /// What each window measures.
    pub fn amount(&self) -> Amount {
        match self.smoke_requests {
            Some(count) => Amount::Requests(count),
            None => Amount::Duration(self.window()),
        }
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs_f64(self.window_secs)
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_secs)
    }

    pub fn high(&self) -> u32 {
        self.concurrency[1]
    }
}

/// One measurement window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Window {
    /// From 1.
    pub round: u32,
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
    pub service: ServiceKind,
    /// Process spawned → key visible in etcd, ms.
    pub registration_ms: Vec<f64>,
    /// SIGTERM → key gone from etcd, ms.
    pub deregistration_ms: Vec<f64>,
}

/// Resident memory of one service, kB.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Memory {
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

impl Ratio {
    fn of(per_round: Vec<f64>) -> Option<Self> {
        let (median, (min, max)) = (median(&per_round)?, min_max(&per_round)?);
        Some(Self {
            median,
            min,
            max,
            per_round,
        })
    }
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
    pub profile: Option<profile::Outcome>,
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
        [("e2e latency", 1), ("e2e throughput", self.settings.high())]
            .into_iter()
            .filter_map(|(prefix, concurrency)| missed(prefix).then_some(concurrency))
            .collect()
    }

    /// (Re)computes everything derived from the measurements: the medians,
    /// the ratios, etcd's calls during the load and the targets.
    pub fn evaluate(&mut self) {
        (self.aggregates, self.ratios) = (aggregates(self), ratios(self));
        let mut calls = BTreeMap::new();
        for (method, count) in self.windows.iter().flat_map(|w| &w.etcd_calls) {
            *calls.entry(method.clone()).or_insert(0) += count;
        }
        let range_reads = calls.get("Range").copied().unwrap_or(0);
        self.etcd_during_load = EtcdDuringLoad { range_reads, calls };
        let ratio = |ratio: &Option<Ratio>, held: fn(f64) -> bool| match ratio {
            Some(r) => (
                format!("{:.2}× (rounds {:.2}–{:.2})", r.median, r.min, r.max),
                held(r.median),
            ),
            None => ("not measured".to_owned(), false),
        };
        let errors: u64 = self.windows.iter().map(|w| w.summary.errors).sum();
        let reads = self.etcd_during_load.range_reads;
        let mut checks = vec![
            check(
                "e2e latency, p50 at concurrency 1".into(),
                format!("≤ {LATENCY_RATIO_MAX} × echo p50"),
                ratio(&self.ratios.p50_at_1, |r| r <= LATENCY_RATIO_MAX),
            ),
            check(
                format!("e2e throughput at concurrency {}", self.settings.high()),
                format!("≥ {THROUGHPUT_RATIO_MIN} × echo throughput"),
                ratio(&self.ratios.throughput_at_high, |r| {
                    r >= THROUGHPUT_RATIO_MIN
                }),
            ),
            check(
                "errors under load".into(),
                "none".into(),
                (errors.to_string(), errors == 0),
            ),
            check(
                "etcd reads during the load".into(),
                "0 Range calls".into(),
                (format!("{reads} Range calls"), reads == 0),
            ),
        ];
        for times in &self.registration {
            let name = times.service.binary();
            for (what, ms, limit) in [
                ("registration", &times.registration_ms, REGISTRATION_MAX_MS),
                (
                    "deregistration",
                    &times.deregistration_ms,
                    DEREGISTRATION_MAX_MS,
                ),
            ] {
                let held = median(ms).is_some_and(|median| median <= limit);
                let goal = format!("≤ {limit:.0} ms");
                checks.push(check(
                    format!("{name} {what} (median)"),
                    goal,
                    (spread_ms(ms), held),
                ));
            }
        }
        for memory in &self.memory {
            let (name, kb) = (memory.service.binary(), memory.idle_kb);
            checks.push(check(
                format!("{name} idle memory"),
                format!("≤ 20 MB ({IDLE_RSS_MAX_KB} kB) RSS"),
                (
                    format!("{kb} kB ({:.1} MiB)", mib(kb)),
                    kb <= IDLE_RSS_MAX_KB,
                ),
            ));
        }
        self.checks = checks;
    }
}

fn check(name: String, goal: String, (measured, held): (String, bool)) -> Check {
    Check {
        name,
        goal,
        measured,
        held,
    }
}

fn aggregates(report: &Report) -> Vec<Aggregate> {
    let (settings, windows) = (&report.settings, &report.windows);
    let mut out = Vec::new();
    for concurrency in settings.concurrency {
        for target in TARGETS {
            let runs: Vec<&Window> = windows
                .iter()
                .filter(|w| w.summary.target == target && w.summary.concurrency == concurrency)
                .collect();
            if runs.is_empty() {
                continue;
            }
            let med = |f: fn(&Summary) -> f64| {
                median(&runs.iter().map(|w| f(&w.summary)).collect::<Vec<_>>()).unwrap_or(0.0)
            };
            let mut cpu: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for (process, us) in runs.iter().flat_map(|w| &w.cpu_us_per_request) {
                cpu.entry(process.clone()).or_default().push(*us);
            }
            out.push(Aggregate {
                target,
                concurrency,
                throughput: med(|s| s.throughput),
                p50_us: med(|s| s.latency.p50_us),
                p90_us: med(|s| s.latency.p90_us),
                p99_us: med(|s| s.latency.p99_us),
                max_us: runs
                    .iter()
                    .map(|w| w.summary.latency.max_us)
                    .fold(0.0, f64::max),
                requests: runs.iter().map(|w| w.summary.requests).sum(),
                errors: runs.iter().map(|w| w.summary.errors).sum(),
                cpu_us_per_request: cpu
                    .into_iter()
                    .filter_map(|(process, values)| Some((process, median(&values)?)))
                    .collect(),
            });
        }
    }
    out
}

/// `f(target) / f(base)` per round at `concurrency`.
fn per_round(
    settings: &Settings,
    windows: &[Window],
    (target, base): (TargetKind, TargetKind),
    concurrency: u32,
    f: fn(&Summary) -> f64,
) -> Vec<f64> {
    (1..=settings.rounds)
        .filter_map(|round| {
            let find = |kind| {
                windows
                    .iter()
                    .map(|w| (w.round, &w.summary))
                    .find(|(r, s)| *r == round && s.target == kind && s.concurrency == concurrency)
                    .map(|(_, s)| f(s))
            };
            let (value, floor) = (find(target)?, find(base)?);
            (floor > 0.0).then(|| value / floor)
        })
        .collect()
}

fn ratios(report: &Report) -> Ratios {
    let (settings, windows) = (&report.settings, &report.windows[..]);
    use TargetKind::{Create, Echo, Find, Relay};
    let p50 = |s: &Summary| s.latency.p50_us;
    let throughput = |s: &Summary| s.throughput;
    let at_1 = |pair| Ratio::of(per_round(settings, windows, pair, 1, p50));
    let high = settings.high();
    let at_high = |pair, f| Ratio::of(per_round(settings, windows, pair, high, f));
    Ratios {
        p50_at_1: at_1((Create, Echo)),
        p50_at_high: at_high((Create, Echo), p50),
        throughput_at_high: at_high((Create, Echo), throughput),
        p50_over_relay_at_1: at_1((Create, Relay)),
        throughput_over_relay_at_high: at_high((Create, Relay), throughput),
        relay_p50_at_1: at_1((Relay, Echo)),
        relay_throughput_at_high: at_high((Relay, Echo), throughput),
        find_p50_at_1: at_1((Find, Echo)),
        find_throughput_at_high: at_high((Find, Echo), throughput),
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
    Some((min, values.iter().copied().reduce(f64::max)?))
}

/// `median ms (min, max, n)` of samples.
pub fn spread_ms(samples: &[f64]) -> String {
    match (median(samples), min_max(samples)) {
        (Some(median), Some((min, max))) => {
            let n = samples.len();
            format!("{median:.0} ms (min {min:.0}, max {max:.0}, n={n})")
        }
        _ => "no samples".to_owned(),
    }
}

pub fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
