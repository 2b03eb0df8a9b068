//! `shippy-bench suite`, the whole benchmark as `make bench` runs it: each
//! service started and stopped several times to time registration and
//! deregistration; then, with one instance of each up beside the echo floor
//! and the relay, rounds of windows (echo, relay, CreateConsignment end to
//! end and FindAvailable, at concurrency 1 and the high one, in reverse
//! order every other round: the machine is shared and noisy, so ratios are
//! only taken within a round), with etcd's counters and CPU time read
//! around each window and memory sampled during it; `perf` on the services
//! where a target is missed; and the report written as BENCHMARKS.json and
//! BENCHMARKS.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use prost::Message;

use crate::load::{self, LoadOptions, Target, TargetKind};
use crate::processes::ServiceKind::{self, ConsignmentService, VesselService};
use crate::processes::{self, Child, Lab, Machine, status_kb};
use crate::profile::{self, Outcome};
use crate::report::{Memory, Registration, Report, Settings, TARGETS, WORKERS, Window, spread_ms};

/// How long the services sit idle before their idle memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// How often memory is sampled during a window.
const RSS_INTERVAL: Duration = Duration::from_millis(100);
/// How many windows a profile may take before the report says why none was taken.
const PROFILE_ATTEMPTS: u32 = 3;
/// Each call's deadline, as the CLI sets one.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests per window in a smoke run.
const SMOKE_REQUESTS: u64 = 200;
/// The smoke run's high concurrency.
const SMOKE_CONCURRENCY: u32 = 8;

/// `shippy-bench suite`.
#[derive(Debug, Clone, Args)]
pub struct SuiteArgs {
    /// Directory to write BENCHMARKS.md and BENCHMARKS.json into.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub out: PathBuf,
    /// Directory holding the vessel-service and consignment-service
    /// binaries. Defaults to this binary's own directory (target/release
    /// after `cargo build --release`).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// How many times each measurement is repeated, interleaved with the others.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Seconds each measurement window lasts.
    #[arg(long, value_parser = crate::seconds, default_value = "3", value_name = "SECONDS")]
    pub window: Duration,
    /// Seconds of load before each window, not counted.
    #[arg(long, value_parser = crate::seconds, default_value = "1", value_name = "SECONDS")]
    pub warmup: Duration,
    /// The high concurrency, at which throughput is compared (the low one is 1).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub concurrency: u32,
    /// Start-and-stop samples per service for registration and deregistration latency.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub registration_samples: u32,
    /// When to sample the services with `perf` under load.
    #[arg(long, value_enum, default_value = "auto")]
    pub profile: ProfileMode,
    /// Extra environment for both services, as KEY=VALUE (repeatable), to
    /// measure a configuration other than the default, e.g.
    /// `--service-env RUST_LOG=warn`. The report lists what was set.
    #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
    pub service_env: Vec<(String, String)>,
    /// A quick check that everything runs: a few hundred requests per
    /// measurement instead of timed windows, one round, one registration
    /// sample, no profile. Its numbers mean nothing.
    #[arg(long)]
    pub smoke: bool,
}

/// When the suite runs `perf` on the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileMode {
    /// When a latency or throughput target does not hold.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Parses `KEY=VALUE`.
fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// `shippy-bench suite`: runs the benchmark and writes the report.
pub async fn run_command(args: &SuiteArgs) -> anyhow::Result<()> {
    // Absolute, since the services run in the log directory.
    let bin_dir = match &args.bin_dir {
        Some(dir) => std::path::absolute(dir).context("locating --bin-dir")?,
        None => {
            let exe = std::env::current_exe().context("locating shippy-bench")?;
            exe.parent()
                .context("shippy-bench has no directory")?
                .to_owned()
        }
    };
    let report = run(args, bin_dir).await?;
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (json_path, md_path) = (out.join("BENCHMARKS.json"), out.join("BENCHMARKS.md"));
    let json = serde_json::to_string_pretty(&report)? + "\n";
    for (path, text) in [(&json_path, json), (&md_path, report.markdown())] {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("\n{}", report.headline());
    let md_path = md_path.display();
    eprintln!("wrote {md_path} and {}", json_path.display());
    let failed: u64 = report.windows.iter().map(|w| w.summary.errors).sum();
    anyhow::ensure!(
        failed == 0,
        "{failed} calls failed under load; see {md_path}"
    );
    Ok(())
}

/// The settings `args` ask for; a smoke run overrides most of them.
fn settings(args: &SuiteArgs, bin_dir: &Path) -> anyhow::Result<Settings> {
    let smoke = args.smoke;
    let unless_smoke = |value: u32, smoke_value: u32| if smoke { smoke_value } else { value };
    let warmup = if smoke { Duration::ZERO } else { args.warmup };
    // The binaries' directory by its last two components, e.g. `target/release`.
    let mut binaries: Vec<_> = bin_dir.iter().rev().take(2).collect();
    binaries.reverse();
    Ok(Settings {
        rounds: unless_smoke(args.rounds, 1),
        window_secs: args.window.as_secs_f64(),
        warmup_secs: warmup.as_secs_f64(),
        concurrency: [1, unless_smoke(args.concurrency, SMOKE_CONCURRENCY)],
        registration_samples: unless_smoke(args.registration_samples, 1),
        smoke,
        smoke_requests: smoke.then_some(SMOKE_REQUESTS),
        echo_payload_bytes: load::sample()?.encoded_len(),
        consignment_store: "in memory (SHIPPY_DATABASE_URL=memory://)".to_owned(),
        service_log_level: "the services' default (info; a line per call)".to_owned(),
        binaries: binaries.join("/".as_ref()).to_string_lossy().into_owned(),
        service_env: args
            .service_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
    })
}

/// Runs the benchmark and returns its report.
async fn run(args: &SuiteArgs, bin_dir: PathBuf) -> anyhow::Result<Report> {
    let settings = settings(args, &bin_dir)?;
    let etcd_binary = std::env::var("SHIPPY_ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned());
    let (machine, load_at_start) = (Machine::read(&etcd_binary), processes::load_average());
    let (cores, cpu, date) = (machine.cores, &machine.cpu, &machine.date);
    eprintln!("==> shippy benchmark on {cores} cores ({cpu}), {date}");
    let lab = Lab::start(bin_dir, &args.service_env).await?;

    let samples = settings.registration_samples;
    eprintln!("==> registration and deregistration, {samples} samples per service");
    // With vessel-service registered, consignment-service's starts include
    // its first discovery read, as in production.
    let (vessel, vessel_times) = registration(&lab, VesselService, samples).await?;
    let (consignment, consignment_times) = registration(&lab, ConsignmentService, samples).await?;
    let echo = lab.start_echo(None, "echo").await?;
    let relay = lab.start_echo(Some(&echo.address), "relay").await?;
    tokio::time::sleep(SETTLE).await;
    let (vessel_pid, consignment_pid) = (vessel.process.pid(), consignment.process.pid());
    let services = [
        (VesselService, vessel_pid),
        (ConsignmentService, consignment_pid),
    ];
    let idle = services.map(|(_, pid)| status_kb(pid, "VmRSS:"));
    let echo_idle_rss_kb = status_kb(echo.process.pid(), "VmRSS:")?;

    // In the order of TARGETS, and of WORKERS after the load generator.
    let children = [&echo, &relay, &consignment, &vessel];
    let mut targets = Vec::new();
    for (kind, child) in TARGETS.into_iter().zip(children) {
        targets.push(Target::connect(kind, &child.address, None).await?);
    }
    let pids = [std::process::id()]
        .into_iter()
        .chain(children.map(|c| c.process.pid()));
    let workers = WORKERS.into_iter().zip(pids).collect();
    let rig = Rig {
        lab: &lab,
        settings: &settings,
        services,
        workers,
    };
    let mut windows = Vec::new();
    for round in 1..=settings.rounds {
        eprintln!("==> round {round} of {}", settings.rounds);
        for concurrency in settings.concurrency {
            let mut order: Vec<&Target> = targets.iter().collect();
            if round % 2 == 0 {
                order.reverse();
            }
            for target in order {
                let window = rig.window(round, target, concurrency).await?;
                eprintln!("    {}", window.summary.describe().replace('\n', "\n    "));
                windows.push(window);
            }
        }
    }
    let created = windows
        .iter()
        .filter(|w| w.summary.target == TargetKind::Create);
    let created = created.map(|w| w.summary.requests).sum();
    let mut memory = Vec::new();
    for ((service, pid), idle_kb) in services.into_iter().zip(idle) {
        let peaks = windows.iter().filter_map(|w| w.rss_peak_kb.get(&service));
        memory.push(Memory {
            service,
            idle_kb: idle_kb?,
            under_load_peak_kb: peaks.copied().max().unwrap_or(0),
            after_load_kb: status_kb(pid, "VmRSS:")?,
            high_water_kb: status_kb(pid, "VmHWM:")?,
            consignments_stored: (service == ConsignmentService).then_some(created),
        });
    }

    let mut report = Report {
        machine,
        settings: settings.clone(),
        registration: vec![vessel_times, consignment_times],
        memory,
        echo_idle_rss_kb,
        windows,
        ..Report::default()
    };
    report.evaluate();
    let profiled = match args.profile {
        _ if settings.smoke => Vec::new(),
        ProfileMode::Never => Vec::new(),
        ProfileMode::Always => settings.concurrency.to_vec(),
        ProfileMode::Auto => report.concurrencies_to_profile(),
    };
    if !profiled.is_empty() {
        report.profile = Some(rig.profile(&profiled, &targets[2]).await);
    }

    // The long-running instances stop last, after the load: one more
    // deregistration sample each, under a full store and warm connections.
    drop((relay, echo));
    let registration = report.registration.iter_mut().rev();
    for (times, service) in registration.zip([consignment, vessel]) {
        let took = lab.stop_service(service).await?;
        times.deregistration_ms.push(ms(took));
    }
    report.load_average = [load_at_start, processes::load_average()];
    report.evaluate();
    Ok(report)
}

/// Starts and stops `kind` `samples` times, timing registration and
/// deregistration; then starts the instance that stays up.
async fn registration(
    lab: &Lab,
    kind: ServiceKind,
    samples: u32,
) -> anyhow::Result<(Child, Registration)> {
    let (name, mut registration_ms, mut deregistration_ms) = (kind.binary(), vec![], vec![]);
    for sample in 0..samples {
        let sample = format!("{name}-sample-{sample}");
        let (child, took) = lab.start_service(kind, &sample).await?;
        registration_ms.push(ms(took));
        deregistration_ms.push(ms(lab.stop_service(child).await?));
    }
    let (registered, deregistered) = (spread_ms(&registration_ms), spread_ms(&deregistration_ms));
    eprintln!("    {name}: registration {registered}, deregistration {deregistered}");
    let (child, _) = lab.start_service(kind, name).await?;
    let times = Registration {
        service: kind,
        registration_ms,
        deregistration_ms,
    };
    Ok((child, times))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// What every window reads around the load: etcd's counters (through the
/// lab), the services' memory, and every worker's CPU time.
struct Rig<'a> {
    lab: &'a Lab,
    settings: &'a Settings,
    services: [(ServiceKind, u32); 2],
    workers: Vec<(&'static str, u32)>,
}

impl Rig<'_> {
    /// The load of each window at `concurrency`.
    fn load(&self, concurrency: u32) -> LoadOptions {
        let settings = self.settings;
        LoadOptions {
            concurrency,
            duration: Duration::from_secs_f64(settings.window_secs),
            requests: settings.smoke_requests,
            warmup: Duration::from_secs_f64(settings.warmup_secs),
            timeout: CALL_TIMEOUT,
        }
    }

    /// One measurement window, with etcd's counters and the workers' CPU
    /// time read around it and the services' memory sampled during it.
    async fn window(
        &self,
        round: u32,
        target: &Target,
        concurrency: u32,
    ) -> anyhow::Result<Window> {
        let cpu_times = || -> anyhow::Result<Vec<Duration>> {
            let pids = self.workers.iter().map(|(_, pid)| *pid);
            pids.map(processes::cpu_time).collect()
        };
        let measured = async {
            let before = (self.lab.etcd_calls().await?, cpu_times()?);
            let summary = load::run(target, &self.load(concurrency)).await?;
            let after = (cpu_times()?, self.lab.etcd_calls().await?);
            anyhow::Ok((summary, before, after))
        };
        tokio::pin!(measured);
        let mut rss_peak_kb = BTreeMap::from(self.services.map(|(kind, _)| (kind, 0)));
        let mut tick = tokio::time::interval(RSS_INTERVAL);
        let (summary, (etcd_before, cpu_before), (cpu_after, etcd_after)) = loop {
            tokio::select! {
                measured = &mut measured => break measured?,
                _ = tick.tick() => for (kind, pid) in self.services {
                    let peak = rss_peak_kb.entry(kind).or_insert(0);
                    *peak = status_kb(pid, "VmRSS:").map_or(*peak, |kb| kb.max(*peak));
                },
            }
        };
        let calls = (summary.requests + summary.errors).max(1) as f64;
        let used = cpu_before.iter().zip(&cpu_after);
        let used = used.map(|(before, after)| after.saturating_sub(*before).as_secs_f64());
        let names = self.workers.iter().map(|(name, _)| name.to_string());
        Ok(Window {
            round,
            summary,
            etcd_calls: processes::calls_between(&etcd_before, &etcd_after),
            rss_peak_kb,
            cpu_us_per_request: names.zip(used.map(|secs| secs * 1e6 / calls)).collect(),
        })
    }

    /// One more end-to-end window per concurrency in `concurrencies`, with
    /// `perf` sampling both services; a profile that could not be taken
    /// says why.
    async fn profile(&self, concurrencies: &[u32], create: &Target) -> Outcome {
        let processes = self.services.map(|(kind, pid)| (kind.binary(), pid));
        let mut profiles = Vec::new();
        for &concurrency in concurrencies {
            eprintln!(
                "==> profiling both services under end-to-end load at concurrency {concurrency}"
            );
            // A window as measured, but perf samples where counting would start.
            let measured = self.load(concurrency);
            let timing = (measured.warmup, measured.duration);
            let options = LoadOptions {
                duration: measured.warmup + measured.duration,
                requests: None,
                warmup: Duration::ZERO,
                ..measured
            };
            // perf has been seen to come back with no samples now and then on
            // a busy virtual machine; one more window usually has them.
            for attempt in 1.. {
                let load = async { anyhow::Ok(load::run(create, &options).await?.throughput) };
                let dir = self.lab.dir();
                match profile::under_load(&processes, concurrency, timing, dir, load).await {
                    Ok(profile) => {
                        profiles.push(profile);
                        break;
                    }
                    Err(err) if attempt < PROFILE_ATTEMPTS => {
                        eprintln!("    no profile ({err:#}); trying again");
                    }
                    Err(err) => {
                        eprintln!("    no profile: {err:#}");
                        let reason = format!("{err:#}");
                        return Outcome::NotTaken { reason };
                    }
                }
            }
        }
        Outcome::Taken { profiles }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_settings_are_key_value_pairs() {
        let pair = |k: &str, v: &str| Ok((k.into(), v.into()));
        assert_eq!(key_value("RUST_LOG=warn"), pair("RUST_LOG", "warn"));
        assert_eq!(key_value("A=b=c"), pair("A", "b=c"));
        assert!(key_value("=x").is_err());
        assert!(key_value("novalue").is_err());
    }
}
