//! Where the services spend their time under load, from `perf`.
//!
//! While the load generator runs an end-to-end window, `perf record`
//! samples both service processes on the `cpu-clock` event with DWARF call
//! stacks (release binaries have no frame pointers but do have unwind
//! tables and symbols). Each sample is then charged to one area: the first
//! frame, from the leaf up, that belongs to a library or to shippy's own
//! code, skipping the standard library, libc and the kernel, so a `write`
//! system call made to print a log line is charged to logging and one that
//! sends an HTTP/2 frame to socket I/O. A sample whose leaf is `malloc` or
//! `free` is charged to allocation. The kernel's share, the system calls
//! behind it, and the hottest leaf functions are listed as well.
//!
//! `cpu-clock` works in virtual machines without hardware counters; what it
//! counts is CPU time, not time spent waiting, which the report's per-request
//! CPU figures and latency split cover.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::process::Command;

/// Samples per second per CPU.
const FREQUENCY_HZ: u32 = 499;
/// Bytes of user stack copied per sample for DWARF unwinding.
const STACK_BYTES: u32 = 16_384;
/// Rows shown per table.
const TOP: usize = 10;

/// Profiles taken, or why none could be.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// One profile per concurrency profiled.
    Taken {
        /// The profiles.
        profiles: Vec<Profile>,
    },
    /// Why no profile was taken.
    NotTaken {
        /// The reason.
        reason: String,
    },
}

/// One profiled window.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Profile {
    /// Callers at once during the window.
    pub concurrency: u32,
    /// Seconds `perf` sampled.
    pub seconds: f64,
    /// Successful CreateConsignment calls per second meanwhile (perf slows
    /// the services down, so this is below the unprofiled figure).
    pub throughput: f64,
    /// Each service's breakdown.
    pub processes: Vec<ProcessProfile>,
}

/// One share of a process's samples.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Share {
    /// What the share is of.
    pub name: String,
    /// Percent of the process's samples.
    pub percent: f64,
}

/// Where one process spent its CPU time.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ProcessProfile {
    /// The binary.
    pub name: String,
    /// Samples taken.
    pub samples: u64,
    /// Percent of samples in the kernel.
    pub kernel_percent: f64,
    /// Percent of samples with a logging (tracing) frame anywhere in the stack.
    pub logging_inclusive_percent: f64,
    /// Percent of samples inside the service's own handler (the gRPC method
    /// implementation, including what it calls).
    pub handler_inclusive_percent: f64,
    /// Samples by the area charged.
    pub areas: Vec<Share>,
    /// Kernel samples by the libc call that entered the kernel.
    pub system_calls: Vec<Share>,
    /// The hottest leaf functions.
    pub top_functions: Vec<Share>,
}

/// Samples `processes` (name, pid) with perf for `window`, starting after
/// `warmup`, while `load` runs; `load` yields the throughput it measured.
pub async fn under_load(
    processes: &[(String, u32)],
    concurrency: u32,
    warmup: Duration,
    window: Duration,
    dir: &Path,
    load: impl Future<Output = anyhow::Result<f64>>,
) -> anyhow::Result<Profile> {
    let perf_version = Command::new("perf").arg("--version").output().await;
    if !perf_version.is_ok_and(|output| output.status.success()) {
        bail!("perf is not installed (Debian: apt-get install linux-perf)");
    }
    let data = dir.join(format!("perf-c{concurrency}.data"));
    let pids = processes
        .iter()
        .map(|(_, pid)| pid.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let record = async {
        tokio::time::sleep(warmup).await;
        Command::new("perf")
            .arg("record")
            .args(["-e", "cpu-clock", "-F", &FREQUENCY_HZ.to_string()])
            .args(["--call-graph", &format!("dwarf,{STACK_BYTES}")])
            .args(["-p", &pids, "-o"])
            .arg(&data)
            .args(["--", "sleep", &format!("{:.1}", window.as_secs_f64())])
            .stdout(Stdio::null())
            .output()
            .await
    };
    let (throughput, recorded) = tokio::join!(load, record);
    let recorded = recorded.context("running perf record")?;
    if !recorded.status.success() {
        bail!(
            "perf record failed: {}",
            String::from_utf8_lossy(&recorded.stderr).trim()
        );
    }
    let script = Command::new("perf")
        .args(["script", "--no-inline", "-F", "pid,ip,sym,dso", "-i"])
        .arg(&data)
        .env("DEBUGINFOD_URLS", "")
        .output()
        .await
        .context("running perf script")?;
    if !script.status.success() {
        bail!(
            "perf script failed: {}",
            String::from_utf8_lossy(&script.stderr).trim()
        );
    }
    let _ = std::fs::remove_file(&data);
    let text = String::from_utf8_lossy(&script.stdout);
    let samples = parse_script(&text);
    if samples.is_empty() {
        bail!(
            "perf recorded no samples of pids {pids}: {} {}",
            String::from_utf8_lossy(&recorded.stderr).trim(),
            text.lines().take(3).collect::<Vec<_>>().join(" / ")
        );
    }
    let seconds = window.as_secs_f64();
    Ok(Profile {
        concurrency,
        seconds,
        throughput: throughput?,
        processes: processes
            .iter()
            .map(|(name, pid)| {
                let own: Vec<&Sample> = samples.iter().filter(|s| s.pid == *pid).collect();
                summarise(name, &own)
            })
            .collect(),
    })
}

/// One stack frame.
#[derive(Debug, Clone, PartialEq)]
struct Frame {
    symbol: String,
    dso: String,
}

impl Frame {
    fn in_kernel(&self) -> bool {
        self.dso.starts_with("[kernel")
    }

    fn in_libc(&self) -> bool {
        self.dso.contains("libc.so") || self.dso.contains("ld-linux") || self.dso == "[vdso]"
    }
}

/// One sample: the process and its stack, leaf first.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    pid: u32,
    frames: Vec<Frame>,
}

/// Parses `perf script -F pid,ip,sym,dso` output: a line with the pid, then
/// one indented line per frame (`address symbol (dso)`), then a blank line.
fn parse_script(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut current: Option<Sample> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            samples.extend(current.take());
        } else if line.starts_with(char::is_whitespace) {
            if let Some(sample) = current.as_mut() {
                let rest = line.trim();
                let rest = rest.split_once(' ').map_or("", |(_, rest)| rest);
                let (symbol, dso) = match rest.rsplit_once(" (") {
                    Some((symbol, dso)) => (symbol, dso.trim_end_matches(')')),
                    None => (rest, ""),
                };
                sample.frames.push(Frame {
                    symbol: symbol.to_owned(),
                    dso: dso.to_owned(),
                });
            }
        } else {
            samples.extend(current.take());
            if let Ok(pid) = line.trim().parse() {
                current = Some(Sample {
                    pid,
                    frames: Vec::new(),
                });
            }
        }
    }
    samples.extend(current);
    samples
}

/// The leading path segment (the crate) of a Rust symbol, if it has one.
fn crate_of(symbol: &str) -> Option<&str> {
    let path = symbol.trim_start_matches('<');
    let end = path.find("::")?;
    let name = &path[..end];
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    valid.then_some(name)
}

const LOGGING: &str = "logging and spans (tracing)";
const SOCKET: &str = "socket I/O (tokio::net, mio), with its system calls";
const SCHEDULER: &str = "tokio scheduler: parking, wake-ups, timers";
const ALLOCATION: &str = "memory allocation (malloc, free)";
const UNRESOLVED: &str = "kernel or libc, caller not resolved";

/// Crates that are glue: a sample in them is charged to their caller.
fn is_glue(name: &str) -> bool {
    matches!(
        name,
        "std" | "core" | "alloc" | "futures_util" | "futures_core" | "futures" | "pin_project_lite"
    )
}

/// The area a crate's frames are charged to.
fn area_of(name: &str, symbol: &str) -> String {
    let path = symbol.trim_start_matches('<');
    let socket = ["tokio::net", "tokio::io", "mio::net", "mio::io_source"]
        .iter()
        .any(|prefix| path.starts_with(prefix));
    match name {
        _ if socket => SOCKET,
        "tracing_subscriber" | "tracing_core" | "tracing" | "tracing_log" | "sharded_slab"
        | "nu_ansi_term" => LOGGING,
        "h2" | "tokio_util" => "HTTP/2 framing and streams (h2)",
        "hyper" | "hyper_util" | "http" | "http_body" | "http_body_util" | "httparse" => {
            "HTTP (hyper)"
        }
        "tonic" | "tonic_prost" => "gRPC (tonic)",
        "prost" | "bytes" => "protobuf and buffers (prost, bytes)",
        "tower" | "tower_layer" | "tower_service" => "tower middleware (buffer, reconnect)",
        "tokio" | "mio" | "parking_lot" | "parking_lot_core" | "crossbeam_utils" => SCHEDULER,
        "shippy_registry" | "consignment_service" | "vessel_service" | "shippy_proto" => {
            "shippy's own code (handlers, pool, request log)"
        }
        "uuid" | "getrandom" | "rand" | "rand_core" | "rand_chacha" => {
            "random ids (uuid, getrandom)"
        }
        "etcd_client" => "etcd client (keep-alives, watches)",
        "serde" | "serde_json" => "JSON (serde)",
        other => return other.to_owned(),
    }
    .to_owned()
}

/// The area a sample is charged to.
fn charge(sample: &Sample) -> String {
    let leaf_user = sample.frames.iter().find(|frame| !frame.in_kernel());
    if let Some(frame) = leaf_user
        && frame.in_libc()
        && is_allocator(&frame.symbol)
    {
        return ALLOCATION.to_owned();
    }
    for frame in &sample.frames {
        if frame.in_kernel() || frame.in_libc() {
            continue;
        }
        if let Some(name) = crate_of(&frame.symbol)
            && !is_glue(name)
        {
            return area_of(name, &frame.symbol);
        }
    }
    UNRESOLVED.to_owned()
}

fn is_allocator(symbol: &str) -> bool {
    matches!(
        symbol,
        "malloc"
            | "free"
            | "realloc"
            | "calloc"
            | "cfree"
            | "__libc_free"
            | "__libc_malloc"
            | "_int_malloc"
            | "_int_free"
            | "_int_realloc"
            | "malloc_consolidate"
            | "unlink_chunk.constprop.0"
            | "tcache_get"
            | "tcache_put"
    ) || symbol.starts_with("_int_free")
        || symbol.starts_with("_int_malloc")
}

/// The libc function that entered the kernel, for a kernel sample.
fn system_call(sample: &Sample) -> Option<String> {
    let leaf = sample.frames.first()?;
    if !leaf.in_kernel() {
        return None;
    }
    Some(
        sample
            .frames
            .iter()
            .find(|frame| frame.in_libc())
            .map_or_else(
                || "none: interrupt, page fault or preemption".to_owned(),
                |frame| {
                    frame
                        .symbol
                        .trim_start_matches("__GI___libc_")
                        .trim_start_matches("__GI_")
                        .trim_start_matches("__libc_")
                        .to_owned()
                },
            ),
    )
}

fn summarise(name: &str, samples: &[&Sample]) -> ProcessProfile {
    let total = samples.len() as u64;
    let percent = |count: u64| {
        if total == 0 {
            0.0
        } else {
            count as f64 * 100.0 / total as f64
        }
    };
    let mut areas: BTreeMap<String, u64> = BTreeMap::new();
    let mut calls: BTreeMap<String, u64> = BTreeMap::new();
    let mut leaves: BTreeMap<String, u64> = BTreeMap::new();
    let (mut kernel, mut logging, mut handler) = (0, 0, 0);
    for sample in samples {
        *areas.entry(charge(sample)).or_insert(0) += 1;
        if let Some(call) = system_call(sample) {
            kernel += 1;
            *calls.entry(call).or_insert(0) += 1;
        }
        if let Some(leaf) = sample.frames.first() {
            let label = if leaf.in_kernel() {
                format!("[kernel] {}", leaf.symbol)
            } else {
                leaf.symbol.clone()
            };
            *leaves.entry(label).or_insert(0) += 1;
        }
        let any = |test: &dyn Fn(&Frame) -> bool| sample.frames.iter().any(test);
        if any(&|f| crate_of(&f.symbol).is_some_and(|c| area_of(c, &f.symbol) == LOGGING)) {
            logging += 1;
        }
        if any(&|f| f.symbol.contains("create_consignment") || f.symbol.contains("find_available"))
        {
            handler += 1;
        }
    }
    let ranked = |counts: BTreeMap<String, u64>, limit: usize| {
        let mut rows: Vec<_> = counts.into_iter().collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows.into_iter()
            .take(limit)
            .map(|(name, count)| Share {
                name,
                percent: percent(count),
            })
            .collect::<Vec<_>>()
    };
    ProcessProfile {
        name: name.to_owned(),
        samples: total,
        kernel_percent: percent(kernel),
        logging_inclusive_percent: percent(logging),
        handler_inclusive_percent: percent(handler),
        areas: ranked(areas, usize::MAX),
        system_calls: ranked(calls, TOP),
        top_functions: ranked(leaves, TOP),
    }
}

/// The profile section of BENCHMARKS.md.
pub fn write_markdown(md: &mut String, outcome: &Outcome) -> std::fmt::Result {
    let profiles = match outcome {
        Outcome::NotTaken { reason } => {
            return writeln!(md, "No profile was taken: {reason}.");
        }
        Outcome::Taken { profiles } => profiles,
    };
    writeln!(
        md,
        "`perf record -e cpu-clock -F {FREQUENCY_HZ} --call-graph dwarf` on both services during an \
         extra end-to-end window (not one of the measured ones; perf slows them down). Each sample \
         is charged to the first frame from the leaf up that belongs to a library or to shippy, \
         skipping std, libc and the kernel, so system calls count toward whoever made them; a \
         sample whose leaf is malloc or free counts as allocation."
    )?;
    for profile in profiles {
        writeln!(md)?;
        writeln!(md, "{}", in_short(profile))?;
    }
    for profile in profiles {
        writeln!(md)?;
        writeln!(
            md,
            "### Concurrency {} ({:.0} s sampled, {:.0} CreateConsignment/s under perf)",
            profile.concurrency, profile.seconds, profile.throughput
        )?;
        for process in &profile.processes {
            writeln!(md)?;
            writeln!(
                md,
                "**{}**: {} samples; {:.0}% in the kernel; {:.0}% under logging (any tracing \
                 frame in the stack); {:.0}% inside the handler itself (the gRPC method and \
                 what it calls).",
                process.name,
                process.samples,
                process.kernel_percent,
                process.logging_inclusive_percent,
                process.handler_inclusive_percent
            )?;
            writeln!(md)?;
            writeln!(md, "| Area | Share |")?;
            writeln!(md, "| --- | ---: |")?;
            for share in process.areas.iter().filter(|share| share.percent >= 0.5) {
                writeln!(md, "| {} | {:.1}% |", share.name, share.percent)?;
            }
            writeln!(md)?;
            let list = |shares: &[Share]| {
                shares
                    .iter()
                    .map(|share| format!("`{}` {:.1}%", short(&share.name), share.percent))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            writeln!(
                md,
                "Kernel time entered through: {}.",
                list(&process.system_calls)
            )?;
            writeln!(md)?;
            writeln!(
                md,
                "Hottest functions (self): {}.",
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
        process
            .areas
            .iter()
            .filter(|area| names.iter().any(|name| area.name.starts_with(name)))
            .map(|area| area.percent)
            .sum()
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
                share(process, &[SCHEDULER]),
            )
        })
        .collect();
    format!(
        "**In short, at concurrency {}:** {} (the handler and logging shares overlap where the handler logs).",
        profile.concurrency,
        parts.join("; ")
    )
}

/// A symbol cut to a readable length.
fn short(symbol: &str) -> String {
    const MAX: usize = 90;
    if symbol.chars().count() <= MAX {
        symbol.to_owned()
    } else {
        let cut: String = symbol.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "\
101 
\t          8465cf tracing_subscriber::fmt::format::Format::format_event (/bin/consignment-service)
\t          4928dd tokio::runtime::task::harness::Harness<T,S>::poll (/bin/consignment-service)

101 
\tffffffff816bb625 ksys_write ([kernel.kallsyms])
\t           f838f __GI___libc_write (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t          5d8d49 <std::io::stdio::StderrLock as std::io::Write>::write_all (/bin/consignment-service)
\t          5d8d50 <tracing_subscriber::fmt::writer::BoxMakeWriter as tracing_subscriber::fmt::MakeWriter>::make_writer (/bin/consignment-service)
\t          5d8d60 consignment_service::service::ShippingHandler::create_consignment::{{closure}} (/bin/consignment-service)

202 
\t           9a0b1 malloc (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t          44a37d <h2::proto::streams::Streams<B,P>>::recv_data (/bin/vessel-service)

202 
\tffffffff8172f2e6 ep_item_poll.isra.0 ([kernel.kallsyms])
\t          108f36 epoll_wait (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t          7f8fb3 tokio::runtime::io::driver::Driver::turn (/bin/vessel-service)

202 
\tffffffff8172f2e6 finish_task_switch.isra.0 ([kernel.kallsyms])
\t          7f8fb3 <tokio::net::tcp::stream::TcpStream as tokio::io::async_write::AsyncWrite>::poll_write (/bin/vessel-service)
";

    #[test]
    fn perf_script_output_parses_into_stacks() {
        let samples = parse_script(SCRIPT);
        assert_eq!(samples.len(), 5);
        assert_eq!(samples[0].pid, 101);
        assert_eq!(samples[1].frames.len(), 5);
        assert_eq!(samples[1].frames[1].symbol, "__GI___libc_write");
        assert_eq!(
            samples[1].frames[1].dso,
            "/usr/lib/x86_64-linux-gnu/libc.so.6"
        );
    }

    #[test]
    fn samples_are_charged_to_the_first_library_frame() {
        let samples = parse_script(SCRIPT);
        let charged: Vec<_> = samples.iter().map(charge).collect();
        assert_eq!(charged, [LOGGING, LOGGING, ALLOCATION, SCHEDULER, SOCKET]);
        assert_eq!(system_call(&samples[1]).as_deref(), Some("write"));
        assert_eq!(system_call(&samples[3]).as_deref(), Some("epoll_wait"));
        assert_eq!(system_call(&samples[0]), None);
    }

    #[test]
    fn a_process_summary_counts_shares() {
        let samples = parse_script(SCRIPT);
        let own: Vec<&Sample> = samples.iter().filter(|s| s.pid == 101).collect();
        let summary = summarise("consignment-service", &own);
        assert_eq!(summary.samples, 2);
        assert_eq!(summary.kernel_percent, 50.0);
        assert_eq!(summary.logging_inclusive_percent, 100.0);
        assert_eq!(summary.handler_inclusive_percent, 50.0);
        assert_eq!(summary.areas[0].name, LOGGING);
        assert_eq!(summary.areas[0].percent, 100.0);
    }

    #[test]
    fn crates_are_read_from_symbols() {
        assert_eq!(crate_of("<h2::proto::Foo as core::Bar>::poll"), Some("h2"));
        assert_eq!(crate_of("tokio::runtime::park"), Some("tokio"));
        assert_eq!(crate_of("<&T as core::fmt::Display>::fmt"), None);
        assert_eq!(crate_of("malloc"), None);
    }
}
