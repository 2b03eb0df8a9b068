//! The whole benchmark, as `make bench` runs it.
//!
//! 1. etcd starts; each service is started and stopped several times to
//!    time registration and deregistration; then one instance of each
//!    stays up, with the echo floor and the relay beside them, and their
//!    idle memory is read.
//! 2. Rounds of measurement windows: echo, relay, CreateConsignment end to
//!    end and FindAvailable, at concurrency 1 and at the high concurrency,
//!    the order reversed every other round. The machine is shared and
//!    noisy, so the floor and the services are measured side by side within
//!    each round and the ratios are taken per round. Around every window,
//!    etcd's handled-call counters and each process's CPU time are read,
//!    and the services' memory is sampled during it.
//! 3. When a target does not hold (or when asked), one more end-to-end
//!    window runs under `perf` to show where the services spend their time.
//! 4. The report is written as BENCHMARKS.json and BENCHMARKS.md.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use prost::Message;
use shippy_test_support::Etcd;

use crate::config::{ProfileMode, SuiteArgs, TargetKind};
use crate::load::{self, Amount, LoadOptions, Target};
use crate::processes::{self, Binaries, Child, ServiceKind};
use crate::report::{Memory, Registration, Report, Settings, TARGETS, WORKERS, Window};
use crate::report::{headline, spread_ms};
use crate::system::{self, Machine, status_kb};
use crate::{markdown, profile};

/// How long the services sit idle before their idle memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// How often memory is sampled during a window.
const RSS_INTERVAL: Duration = Duration::from_millis(100);
/// How many windows a profile may take before the report says why none was taken.
const PROFILE_ATTEMPTS: u32 = 3;
/// Each call's deadline, as the CLI sets one.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `shippy-bench suite`.
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
    let report = run(args, &Binaries::in_dir(bin_dir, args.service_env.clone())?).await?;
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (json_path, md_path) = (out.join("BENCHMARKS.json"), out.join("BENCHMARKS.md"));
    let json = serde_json::to_string_pretty(&report)? + "\n";
    for (path, text) in [(&json_path, json), (&md_path, markdown::markdown(&report))] {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("\n{}", headline(&report));
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());
    let failed: u64 = report.windows.iter().map(|w| w.summary.errors).sum();
    let md_path = md_path.display();
    anyhow::ensure!(
        failed == 0,
        "{failed} calls failed under load; see {md_path}"
    );
    Ok(())
}

/// Runs the benchmark and returns its report.
async fn run(args: &SuiteArgs, binaries: &Binaries) -> anyhow::Result<Report> {
    let payload = load::sample()?.encoded_len();
    let settings = Settings::from_args(args, payload, binaries.describe_dir());
    let etcd_binary = std::env::var("SHIPPY_ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned());
    let machine = Machine::read(&etcd_binary);
    let load_at_start = system::load_average();
    let (cores, cpu, date) = (machine.cores, &machine.cpu, &machine.date);
    eprintln!("==> shippy benchmark on {cores} cores ({cpu}), {date}");
    let log_dir = tempfile::Builder::new().prefix("shippy-bench-").tempdir();
    let log_dir = log_dir.context("creating a log dir")?;
    let logs = log_dir.path();
    let etcd = Etcd::start().await.context("starting etcd")?;

    let samples = settings.registration_samples;
    eprintln!("==> registration and deregistration, {samples} samples per service");
    let start = |kind| registration(binaries, kind, &etcd, logs, samples);
    // With vessel-service registered, consignment-service's starts include
    // its first discovery read, as in production.
    let (vessel, vessel_times) = start(ServiceKind::VesselService).await?;
    let (consignment, consignment_times) = start(ServiceKind::ConsignmentService).await?;
    let echo = processes::start_echo(None, logs, "echo").await?;
    let relay = processes::start_echo(Some(&echo.address), logs, "relay").await?;
    let services = [
        (ServiceKind::VesselService, vessel.process.pid()),
        (ServiceKind::ConsignmentService, consignment.process.pid()),
    ];

    tokio::time::sleep(SETTLE).await;
    let idle = services.map(|(_, pid)| status_kb(pid, "VmRSS:"));
    let idle: Vec<u64> = idle.into_iter().collect::<anyhow::Result<_>>()?;
    let echo_idle_rss_kb = status_kb(echo.process.pid(), "VmRSS:")?;

    let addresses = [&echo, &relay, &consignment, &vessel].map(|child| &child.address);
    let mut targets = Vec::new();
    for (kind, address) in TARGETS.into_iter().zip(addresses) {
        targets.push(Target::connect(kind, address, None).await?);
    }
    let pids = [&echo, &relay, &consignment, &vessel].map(|child| child.process.pid());
    let pids = [std::process::id()].into_iter().chain(pids);
    let workers: Vec<(&str, u32)> = WORKERS.into_iter().zip(pids).collect();
    let mut windows = Vec::new();
    for round in 1..=settings.rounds {
        eprintln!("==> round {round} of {}", settings.rounds);
        for concurrency in settings.concurrency {
            let mut order: Vec<&Target> = targets.iter().collect();
            if round % 2 == 0 {
                order.reverse();
            }
            for target in order {
                let at = (round, concurrency);
                let window = measure(&settings, at, target, &etcd, &services, &workers).await?;
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
            idle_kb,
            under_load_peak_kb: peaks.copied().max().unwrap_or(0),
            after_load_kb: status_kb(pid, "VmRSS:")?,
            high_water_kb: status_kb(pid, "VmHWM:")?,
            consignments_stored: (service == ServiceKind::ConsignmentService).then_some(created),
        });
    }

    let mut report = Report {
        machine,
        settings,
        registration: vec![vessel_times, consignment_times],
        memory,
        echo_idle_rss_kb,
        windows,
        ..Report::default()
    };
    report.evaluate();
    let profiled = match args.profile {
        _ if report.settings.smoke => Vec::new(),
        ProfileMode::Never => Vec::new(),
        ProfileMode::Always => report.settings.concurrency.to_vec(),
        ProfileMode::Auto => report.concurrencies_to_profile(),
    };
    if !profiled.is_empty() {
        let create = &targets[2];
        let outcome = profile_windows(&report.settings, &profiled, create, &services, logs).await;
        report.profile = Some(outcome);
    }

    // The long-running instances stop last, after the load: one more
    // deregistration sample each, under a full store and warm connections.
    drop((relay, echo));
    let registration = report.registration.iter_mut().rev();
    for (times, service) in registration.zip([consignment, vessel]) {
        let took = processes::stop_service(service, times.service.binary(), &etcd).await?;
        times.deregistration_ms.push(ms(took));
    }
    report.load_average = [load_at_start, system::load_average()];
    report.evaluate();
    Ok(report)
}

/// Starts and stops `kind` `samples` times, timing registration and
/// deregistration; then starts the instance that stays up.
async fn registration(
    binaries: &Binaries,
    kind: ServiceKind,
    etcd: &Etcd,
    logs: &Path,
    samples: u32,
) -> anyhow::Result<(Child, Registration)> {
    let (name, mut registration_ms, mut deregistration_ms) = (kind.binary(), vec![], vec![]);
    for sample in 0..samples {
        let sample = format!("{name}-sample-{sample}");
        let (child, took) = processes::start_service(binaries, kind, etcd, logs, &sample).await?;
        registration_ms.push(ms(took));
        deregistration_ms.push(ms(processes::stop_service(child, name, etcd).await?));
    }
    let (registered, deregistered) = (spread_ms(&registration_ms), spread_ms(&deregistration_ms));
    eprintln!("    {name}: registration {registered}, deregistration {deregistered}");
    let (child, _) = processes::start_service(binaries, kind, etcd, logs, name).await?;
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

/// One measurement window, with etcd's counters and the `workers`' CPU
/// time read around it and the services' memory sampled during it.
async fn measure(
    settings: &Settings,
    (round, concurrency): (u32, u32),
    target: &Target,
    etcd: &Etcd,
    services: &[(ServiceKind, u32)],
    workers: &[(&str, u32)],
) -> anyhow::Result<Window> {
    let options = LoadOptions {
        concurrency,
        amount: settings.amount(),
        warmup: settings.warmup(),
        timeout: CALL_TIMEOUT,
        label: format!("{} c={concurrency}", target.kind.label()),
    };
    let cpu_times = || -> anyhow::Result<Vec<Duration>> {
        workers
            .iter()
            .map(|(_, pid)| system::cpu_time(*pid))
            .collect()
    };
    let measured = async {
        let before = (system::etcd_calls(etcd.endpoint()).await?, cpu_times()?);
        let summary = load::run(target, &options).await?;
        let after = (cpu_times()?, system::etcd_calls(etcd.endpoint()).await?);
        anyhow::Ok((summary, before, after))
    };
    tokio::pin!(measured);
    let mut rss_peak_kb: BTreeMap<_, _> = services.iter().map(|(kind, _)| (*kind, 0)).collect();
    let mut tick = tokio::time::interval(RSS_INTERVAL);
    let (summary, (etcd_before, cpu_before), (cpu_after, etcd_after)) = loop {
        tokio::select! {
            measured = &mut measured => break measured?,
            _ = tick.tick() => for (kind, pid) in services {
                let peak = rss_peak_kb.entry(*kind).or_insert(0);
                *peak = status_kb(*pid, "VmRSS:").map_or(*peak, |kb| kb.max(*peak));
            },
        }
    };
    let calls = (summary.requests + summary.errors).max(1) as f64;
    let used = cpu_before.iter().zip(&cpu_after).map(|(before, after)| {
        let used = after.saturating_sub(*before);
        used.as_secs_f64() * 1e6 / calls
    });
    let names = workers.iter().map(|(name, _)| name.to_string());
    Ok(Window {
        round,
        summary,
        etcd_calls: system::calls_between(&etcd_before, &etcd_after),
        rss_peak_kb,
        cpu_us_per_request: names.zip(used).collect(),
    })
}

/// More end-to-end windows, one per concurrency in `concurrencies`, with
/// `perf` sampling both services; a profile that could not be taken says why.
async fn profile_windows(
    settings: &Settings,
    concurrencies: &[u32],
    create: &Target,
    services: &[(ServiceKind, u32)],
    dir: &Path,
) -> profile::Outcome {
    let processes: Vec<_> = services.iter().map(|(k, pid)| (k.binary(), *pid)).collect();
    let mut profiles = Vec::new();
    for &concurrency in concurrencies {
        eprintln!("==> profiling both services under end-to-end load at concurrency {concurrency}");
        let options = LoadOptions {
            concurrency,
            amount: Amount::Duration(settings.window() + settings.warmup()),
            warmup: Duration::ZERO,
            timeout: CALL_TIMEOUT,
            label: format!("e2e under perf c={concurrency}"),
        };
        let timing = (settings.warmup(), settings.window());
        // perf has been seen to come back with no samples now and then on
        // a busy virtual machine; one more window usually has them.
        for attempt in 1.. {
            let load = async { anyhow::Ok(load::run(create, &options).await?.throughput) };
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
                    return profile::Outcome::NotTaken { reason };
                }
            }
        }
    }
    profile::Outcome::Taken { profiles }
}
