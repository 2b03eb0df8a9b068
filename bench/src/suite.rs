//! The whole benchmark, as `make bench` runs it.
//!
//! 1. etcd starts; each service is started and stopped several times to
//!    time registration and deregistration; then one instance of each
//!    stays up, with the echo floor beside them, and their idle memory is read.
//! 2. Rounds of measurement windows: echo, CreateConsignment end to end and
//!    FindAvailable, at concurrency 1 and at the high concurrency, the order
//!    reversed every other round. The machine is shared and noisy, so the
//!    floor and the services are measured side by side within each round
//!    and the ratios are taken per round. Around every window, etcd's
//!    handled-call counters are read, and the services' memory is sampled
//!    during it.
//! 3. When a target does not hold (or when asked), one more end-to-end
//!    window runs under `perf` to show where the services spend their time.
//! 4. The report is written as BENCHMARKS.json and BENCHMARKS.md.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use shippy_test_support::Etcd;

use crate::config::{ProfileMode, SuiteArgs, TargetKind};
use crate::load::{self, Amount, LoadOptions, Target};
use crate::processes::{self, Binaries, Service, ServiceKind};
use crate::profile;
use crate::report::{self, Memory, Registration, Report, Settings, Window};
use crate::sample;
use crate::system::{self, Machine};

/// Requests per measurement in a smoke run.
pub(crate) const SMOKE_REQUESTS: u64 = 200;
/// The smoke run's high concurrency.
pub(crate) const SMOKE_CONCURRENCY: u32 = 8;
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
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("locating shippy-bench")?
            .parent()
            .context("shippy-bench has no directory")?
            .to_owned(),
    };
    let mut binaries = Binaries::in_dir(&bin_dir)?;
    binaries.service_env.clone_from(&args.service_env);
    let report = run(args, &binaries).await?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json_path = args.out.join("BENCHMARKS.json");
    let md_path = args.out.join("BENCHMARKS.md");
    let json = serde_json::to_string_pretty(&report)? + "\n";
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&md_path, report::markdown(&report))
        .with_context(|| format!("writing {}", md_path.display()))?;
    eprintln!("\n{}", report::headline(&report));
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());
    let failed: u64 = report.windows.iter().map(|w| w.summary.errors).sum();
    if failed > 0 {
        anyhow::bail!(
            "{failed} calls failed under load; see {}",
            md_path.display()
        );
    }
    Ok(())
}

/// Runs the benchmark and returns its report.
pub async fn run(args: &SuiteArgs, binaries: &Binaries) -> anyhow::Result<Report> {
    let mut settings = Settings::from_args(args, sample::encoded_len(&sample::consignment()?));
    settings.binaries = binaries.describe_dir();
    settings.service_env = binaries
        .service_env
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let etcd_binary = std::env::var("SHIPPY_ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned());
    let machine = Machine::read(&etcd_binary);
    let load_at_start = system::load_average();
    eprintln!(
        "==> shippy benchmark on {} cores ({}), {}",
        machine.cores, machine.cpu, machine.date
    );
    let logs = tempfile::Builder::new()
        .prefix("shippy-bench-")
        .tempdir()
        .context("creating a log dir")?;
    let etcd = Etcd::start().await.context("starting etcd")?;

    eprintln!(
        "==> registration and deregistration, {} samples per service",
        settings.registration_samples
    );
    let mut vessel_times = Registration::new(ServiceKind::VesselService);
    for sample in 0..settings.registration_samples {
        let (service, registered) = processes::start_service(
            binaries,
            ServiceKind::VesselService,
            &etcd,
            logs.path(),
            &format!("vessel-sample-{sample}"),
        )
        .await?;
        vessel_times.registered(registered);
        vessel_times.deregistered(processes::stop_service(service, &etcd).await?);
    }
    let (vessel, _) = processes::start_service(
        binaries,
        ServiceKind::VesselService,
        &etcd,
        logs.path(),
        "vessel",
    )
    .await?;
    // With vessel-service registered, consignment-service's start includes
    // its first discovery read, as in production.
    let mut consignment_times = Registration::new(ServiceKind::ConsignmentService);
    for sample in 0..settings.registration_samples {
        let (service, registered) = processes::start_service(
            binaries,
            ServiceKind::ConsignmentService,
            &etcd,
            logs.path(),
            &format!("consignment-sample-{sample}"),
        )
        .await?;
        consignment_times.registered(registered);
        consignment_times.deregistered(processes::stop_service(service, &etcd).await?);
    }
    let (consignment, _) = processes::start_service(
        binaries,
        ServiceKind::ConsignmentService,
        &etcd,
        logs.path(),
        "consignment",
    )
    .await?;
    let echo = processes::start_echo(binaries, None, logs.path(), "echo").await?;
    let relay = processes::start_echo(binaries, Some(&echo.address), logs.path(), "relay").await?;
    for times in [&vessel_times, &consignment_times] {
        eprintln!("    {}", times.describe());
    }

    tokio::time::sleep(SETTLE).await;
    let mut vessel_memory = Memory::idle(&vessel)?;
    let mut consignment_memory = Memory::idle(&consignment)?;
    let echo_idle_kb = system::rss_kb(echo.process.pid())?;

    let targets = [
        Target::connect(TargetKind::Echo, &echo.address, None).await?,
        Target::connect(TargetKind::Relay, &relay.address, None).await?,
        Target::connect(TargetKind::Create, &consignment.address, None).await?,
        Target::connect(TargetKind::Find, &vessel.address, None).await?,
    ];
    let services = [&vessel, &consignment];
    // Every process that works for a request, for CPU time per request.
    let workers = [
        ("load generator".to_owned(), std::process::id()),
        ("echo server".to_owned(), echo.process.pid()),
        ("relay".to_owned(), relay.process.pid()),
        (
            ServiceKind::ConsignmentService.binary().to_owned(),
            consignment.pid(),
        ),
        (ServiceKind::VesselService.binary().to_owned(), vessel.pid()),
    ];
    let mut windows = Vec::new();
    for round in 1..=settings.rounds {
        eprintln!("==> round {round} of {}", settings.rounds);
        for concurrency in settings.concurrency {
            let mut order: Vec<&Target> = targets.iter().collect();
            if round % 2 == 0 {
                order.reverse();
            }
            for target in order {
                let window = measure(
                    &settings,
                    round,
                    target,
                    concurrency,
                    &etcd,
                    &services,
                    &workers,
                )
                .await?;
                eprintln!("    {}", window.summary.describe().replace('\n', "\n    "));
                windows.push(window);
            }
        }
    }
    let created: u64 = windows
        .iter()
        .filter(|w| w.summary.target == TargetKind::Create)
        .map(|w| w.summary.requests)
        .sum();
    vessel_memory.after_load(&vessel, &windows)?;
    consignment_memory.after_load(&consignment, &windows)?;
    consignment_memory.consignments_stored = Some(created);

    let mut report = Report::new(
        machine,
        settings.clone(),
        windows,
        [vessel_times, consignment_times],
        [vessel_memory, consignment_memory],
        echo_idle_kb,
    );
    let profiled = match args.profile {
        _ if settings.smoke => Vec::new(),
        ProfileMode::Never => Vec::new(),
        ProfileMode::Always => settings.concurrency.to_vec(),
        ProfileMode::Auto => report.concurrencies_to_profile(),
    };
    if !profiled.is_empty() {
        report.profile =
            Some(profile_windows(&settings, &profiled, &targets[2], &services, logs.path()).await);
    }

    // The long-running instances stop last, after the load: one more
    // deregistration sample each, under a full store and warm connections.
    drop(relay);
    drop(echo);
    report.add_deregistration(
        ServiceKind::ConsignmentService,
        processes::stop_service(consignment, &etcd).await?,
    );
    report.add_deregistration(
        ServiceKind::VesselService,
        processes::stop_service(vessel, &etcd).await?,
    );
    report.load_average = [load_at_start, system::load_average()];
    report.evaluate();
    Ok(report)
}

/// One measurement window, with etcd's counters and the `workers`' CPU
/// time read around it and the services' memory sampled during it.
async fn measure(
    settings: &Settings,
    round: u32,
    target: &Target,
    concurrency: u32,
    etcd: &Etcd,
    services: &[&Service],
    workers: &[(String, u32)],
) -> anyhow::Result<Window> {
    let options = LoadOptions {
        concurrency,
        amount: settings.amount(),
        warmup: settings.warmup(),
        timeout: CALL_TIMEOUT,
        label: format!("{} c={concurrency}", target.kind().label()),
    };
    let sampler = RssSampler::start(services);
    let before = system::etcd_calls(etcd.endpoint()).await?;
    let cpu_before = cpu_times(workers)?;
    let summary = load::run(target, &options).await?;
    let cpu_after = cpu_times(workers)?;
    let after = system::etcd_calls(etcd.endpoint()).await?;
    let rss_peak_kb = sampler.finish().await;
    let calls = (summary.requests + summary.errors).max(1) as f64;
    let cpu_us_per_request = workers
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .map(|((name, _), (before, after))| {
            let used = after.saturating_sub(*before).as_secs_f64() * 1e6;
            (name.clone(), used / calls)
        })
        .collect();
    Ok(Window {
        round,
        summary,
        etcd_calls: system::calls_between(&before, &after),
        rss_peak_kb,
        cpu_us_per_request,
    })
}

fn cpu_times(workers: &[(String, u32)]) -> anyhow::Result<Vec<Duration>> {
    workers
        .iter()
        .map(|(_, pid)| system::cpu_time(*pid))
        .collect()
}

/// Samples the services' resident memory until finished; keeps each one's peak.
struct RssSampler {
    peaks: Vec<(ServiceKind, Arc<AtomicU64>)>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(services: &[&Service]) -> Self {
        let watched: Vec<_> = services
            .iter()
            .map(|service| (service.kind, service.pid(), Arc::new(AtomicU64::new(0))))
            .collect();
        let peaks = watched
            .iter()
            .map(|(kind, _, peak)| (*kind, Arc::clone(peak)))
            .collect();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(RSS_INTERVAL);
            loop {
                tick.tick().await;
                for (_, pid, peak) in &watched {
                    if let Ok(kb) = system::rss_kb(*pid) {
                        peak.fetch_max(kb, Ordering::Relaxed);
                    }
                }
            }
        });
        Self { peaks, task }
    }

    async fn finish(self) -> BTreeMap<ServiceKind, u64> {
        self.task.abort();
        let _ = self.task.await;
        self.peaks
            .into_iter()
            .map(|(kind, peak)| (kind, peak.load(Ordering::Relaxed)))
            .collect()
    }
}

/// More end-to-end windows, one per concurrency in `concurrencies`, with
/// `perf` sampling both services; a profile that could not be taken says why.
async fn profile_windows(
    settings: &Settings,
    concurrencies: &[u32],
    create: &Target,
    services: &[&Service],
    dir: &Path,
) -> profile::Outcome {
    let processes: Vec<_> = services
        .iter()
        .map(|service| (service.kind.binary().to_owned(), service.pid()))
        .collect();
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
        // perf has been seen to come back with no samples now and then on
        // a busy virtual machine; one more window usually has them.
        let mut attempt = 0;
        let profiled = loop {
            attempt += 1;
            let profiled = profile::under_load(
                &processes,
                concurrency,
                settings.warmup(),
                settings.window(),
                dir,
                async {
                    let summary = load::run(create, &options).await?;
                    Ok(summary.throughput)
                },
            )
            .await;
            match profiled {
                Err(err) if attempt < PROFILE_ATTEMPTS => {
                    eprintln!("    no profile ({err:#}); trying again");
                }
                outcome => break outcome,
            }
        };
        match profiled {
            Ok(profile) => profiles.push(profile),
            Err(err) => {
                eprintln!("    no profile: {err:#}");
                return profile::Outcome::NotTaken {
                    reason: format!("{err:#}"),
                };
            }
        }
    }
    profile::Outcome::Taken { profiles }
}
