//! BENCHMARKS.md, rendered from a [`Report`] alone, so that the committed
//! BENCHMARKS.json renders the committed BENCHMARKS.md (a test holds them
//! to that).

use std::fmt::{Result, Write as _};

use crate::config::TargetKind;
use crate::load::format_us as us;
use crate::profile::{self, Outcome, ProcessProfile, Profile, Share};
use crate::report::{Aggregate, Ratio, Report, WORKERS, mib, spread_ms};

/// The cells of a table row, each formatted with `Display`.
macro_rules! row {
    ($($cell:expr),* $(,)?) => { vec![$($cell.to_string()),*] };
}

/// BENCHMARKS.md.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    // Writing into a String cannot fail.
    let _ = write_report(&mut md, report);
    md
}

/// A Markdown table. `headers` are separated by ` | `; one starting with
/// `>` is a right-aligned column.
fn table(md: &mut String, headers: &str, rows: impl IntoIterator<Item = Vec<String>>) -> Result {
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

fn write_report(md: &mut String, report: &Report) -> Result {
    let (settings, machine) = (&report.settings, &report.machine);
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
    table(
        md,
        "Measurement | Target | Measured | Held",
        checks.map(|c| row![c.name, c.goal, c.measured, held(c.held)]),
    )?;
    let r = &report.ratios;
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

    let load = report
        .load_average
        .map(|v| v.map_or("unknown".into(), |v| format!("{v:.2}")));
    writeln!(
        md,
        "## Machine\n\n- {} cores ({}), {:.1} GiB memory, {}\n- {}\n- {}\n\
         - 1-minute load average {} at the start, {} at the end. The machine is shared (other \
         builds may run beside the benchmark), which is why the floor is measured in every round \
         beside the services and only ratios within a round are compared.\n",
        machine.cores,
        machine.cpu,
        machine.memory_mib as f64 / 1024.0,
        machine.kernel,
        machine.rustc,
        machine.etcd,
        load[0],
        load[1],
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
    let headers = format!("Call | >Concurrency | >{} | >total", WORKERS.join(" | >"));
    table(
        md,
        &headers,
        report.aggregates.iter().map(|a| {
            let cpu = WORKERS.map(|w| a.cpu_us_per_request.get(w).copied().unwrap_or(0.0));
            let total = cpu.iter().sum::<f64>();
            let mut cells = row![a.target.label(), a.concurrency];
            cells.extend(cpu.iter().chain([&total]).map(|us| format!("{us:.0}")));
            cells
        }),
    )?;

    let (reads, windows) = (report.etcd_during_load.range_reads, report.windows.len());
    let others = report
        .etcd_during_load
        .calls
        .iter()
        .filter(|(method, _)| *method != "Range");
    let others: Vec<_> = others
        .map(|(method, count)| format!("{method} {count}"))
        .collect();
    let others = Some(others.join(", ")).filter(|others| !others.is_empty());
    let others = others.unwrap_or_else(|| "none".to_owned());
    let calls: u64 = report
        .windows
        .iter()
        .map(|w| w.summary.requests + w.summary.errors)
        .sum();
    writeln!(
        md,
        "\n## etcd reads on the hot path\n\netcd handled **{reads} Range calls** during the \
         {windows} load windows ({calls} requests in all). Other unary calls in those windows: \
         {others}. (Lease keep-alives and watches are streams, which are counted when they \
         end.)\n\n## Registration and deregistration\n"
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
    let mut echo = row!["echo floor, for comparison", mib(report.echo_idle_rss_kb)];
    echo.extend(row!["", "", ""]);
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
    table(
        md,
        ">Round | Call | >Concurrency | >req/s | >p50 | >p90 | >p99 | >max | >Errors | >etcd Range",
        report.windows.iter().map(|w| {
            let (s, l) = (&w.summary, &w.summary.latency);
            let latency = [l.p50_us, l.p90_us, l.p99_us, l.max_us];
            let reads = w.etcd_calls.get("Range").copied().unwrap_or(0);
            let call = row![w.round, s.target.label(), s.concurrency];
            let mut cells = speed(call, s.throughput, latency);
            cells.extend(row![s.errors, reads]);
            cells
        }),
    )
}

/// Splits the end-to-end p50 at concurrency 1 into the two hops (as echo
/// and FindAvailable show them) and what remains for consignment-service,
/// and explains throughput at the high concurrency by CPU per call.
fn write_latency_split(md: &mut String, report: &Report) -> Result {
    let at = |target: TargetKind, concurrency: u32| {
        let mut aggregates = report.aggregates.iter();
        aggregates.find(|a| a.target == target && a.concurrency == concurrency)
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
    let (Some(e2e), Some(relay), Some(echo)) = (
        at(TargetKind::Create, high),
        at(TargetKind::Relay, high),
        at(TargetKind::Echo, high),
    ) else {
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
fn write_profile(md: &mut String, outcome: &Outcome) -> Result {
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
            let percent = |share: &Share| format!("{:.1}%", share.percent);
            table(md, "Area | >Share", areas.map(|a| row![a.name, percent(a)]))?;
            let list = |shares: &[Share]| {
                let listed = shares
                    .iter()
                    .map(|s| format!("`{}` {}", short(&s.name), percent(s)));
                listed.collect::<Vec<_>>().join(", ")
            };
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
    let parts: Vec<String> = profile
        .processes
        .iter()
        .map(|process| {
            format!(
                "{} spends {:.0}% of its CPU inside its handler, {:.0}% under logging \
                 (formatting and writing a line per call, system calls included), {:.0}% in the \
                 HTTP/2, HTTP and gRPC layers and socket I/O, and {:.0}% in the tokio scheduler \
                 parking and waking threads",
                process.name,
                process.handler_inclusive_percent,
                process.logging_inclusive_percent,
                share(process, &["HTTP", "gRPC", "socket", "protobuf"]),
                share(process, &[profile::SCHEDULER]),
            )
        })
        .collect();
    format!(
        "**In short, at concurrency {}:** {} (the handler and logging shares overlap where the \
         handler logs).",
        profile.concurrency,
        parts.join("; ")
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

/// `1 round`, `3 rounds`.
fn plural(count: u32, noun: &str) -> String {
    if count == 1 {
        format!("{count} {noun}")
    } else {
        format!("{count} {noun}s")
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
            let rendered = markdown(&report);
            for (number, (line, expected)) in rendered.lines().zip(expected.lines()).enumerate() {
                assert_eq!(line, expected, "BENCHMARKS.md line {}", number + 1);
            }
            assert_eq!(rendered, expected);
        }
    }

    #[test]
    fn tables_align_and_leave_empty_cells_empty() {
        let mut md = String::new();
        table(&mut md, "A | >B | >C", [row!["x", 1, ""]]).unwrap();
        assert_eq!(md, "| A | B | C |\n| --- | ---: | ---: |\n| x | 1 | |\n");
        assert_eq!(short(&"é".repeat(91)), format!("{}…", "é".repeat(90)));
    }
}
