//! Where the services spend their CPU time under load, from `perf`.
//!
//! `perf record` samples both service processes on the `cpu-clock` event
//! (which works in virtual machines without hardware counters) with DWARF
//! call stacks, since release binaries have unwind tables but no frame
//! pointers. Each sample is charged to one area: the first frame from the
//! leaf up that belongs to a library or to shippy, skipping std, libc and
//! the kernel, so a `write` made to print a log line counts as logging and
//! one that sends an HTTP/2 frame as socket I/O; a sample whose leaf is
//! `malloc` or `free` counts as allocation.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// Samples per second per CPU.
pub const FREQUENCY_HZ: u32 = 499;
/// Bytes of user stack copied per sample for DWARF unwinding.
const STACK_BYTES: u32 = 16_384;
/// Rows kept of the system call and leaf function rankings.
const TOP: usize = 10;

const LOGGING: &str = "logging and spans (tracing)";
const SOCKET: &str = "socket I/O (tokio::net, mio), with its system calls";
/// The tokio scheduler's area.
pub const SCHEDULER: &str = "tokio scheduler: parking, wake-ups, timers";
const ALLOCATION: &str = "memory allocation (malloc, free)";
const UNRESOLVED: &str = "kernel or libc, caller not resolved";

/// Areas, each with the crates charged to it after ` = `, separated by
/// `; `; a crate not listed is an area of its own. The shippy crates are
/// one area, whichever crate the code is in.
const AREAS: &str = "\
    logging and spans (tracing) = tracing_subscriber tracing_core tracing tracing_log \
    sharded_slab nu_ansi_term; \
    HTTP/2 framing and streams (h2) = h2 tokio_util; \
    HTTP (hyper) = hyper hyper_util http http_body http_body_util httparse; \
    gRPC (tonic) = tonic tonic_prost; \
    protobuf and buffers (prost, bytes) = prost bytes; \
    tower middleware (buffer, reconnect) = tower tower_layer tower_service; \
    tokio scheduler: parking, wake-ups, timers = tokio mio parking_lot parking_lot_core \
    crossbeam_utils; \
    shippy's own code (handlers, pool, request log) = shippy_registry shippy_server \
    shippy_client consignment_service vessel_service shippy_proto; \
    random ids (uuid, getrandom) = uuid getrandom rand rand_core rand_chacha; \
    etcd client (keep-alives, watches) = etcd_client; \
    JSON (serde) = serde serde_json";
/// Glue crates: a sample in them is charged to their caller.
const GLUE: &str = "std core alloc futures_util futures_core futures pin_project_lite";
/// Module paths charged to socket I/O whatever their crate.
const SOCKET_PATHS: [&str; 4] = ["tokio::net", "tokio::io", "mio::net", "mio::io_source"];
/// glibc's allocator functions (`_int_free` and `_int_malloc` also as
/// `name.part.0` and the like).
const ALLOCATOR: &str = "malloc free realloc calloc cfree __libc_free __libc_malloc _int_malloc \
    _int_free _int_realloc malloc_consolidate unlink_chunk.constprop.0 tcache_get tcache_put";

/// The profiles taken (one per concurrency profiled), or why none could be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Taken { profiles: Vec<Profile> },
    NotTaken { reason: String },
}

/// One profiled window: its concurrency, how long perf sampled, and the
/// CreateConsignment calls per second meanwhile (below the unprofiled
/// figure, since perf slows the services down).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub concurrency: u32,
    pub seconds: f64,
    pub throughput: f64,
    pub processes: Vec<ProcessProfile>,
}

/// A share of a process's samples, in percent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Share {
    pub name: String,
    pub percent: f64,
}

/// Where one service spent its CPU time, in percent of its samples: in the
/// kernel; with a tracing frame anywhere in the stack (logging); inside its
/// gRPC handler, with what that calls; by the area each sample is charged
/// to; kernel samples by the libc call that entered the kernel; and the
/// hottest leaf functions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessProfile {
    pub name: String,
    pub samples: u64,
    pub kernel_percent: f64,
    pub logging_inclusive_percent: f64,
    pub handler_inclusive_percent: f64,
    pub areas: Vec<Share>,
    pub system_calls: Vec<Share>,
    pub top_functions: Vec<Share>,
}

/// Samples `processes` (name, pid) with perf for `window`, starting after
/// `warmup`, while `load` runs; `load` yields the throughput it measured.
/// perf's data goes to `dir`.
pub async fn under_load(
    processes: &[(&str, u32)],
    concurrency: u32,
    (warmup, window): (Duration, Duration),
    dir: &Path,
    load: impl Future<Output = anyhow::Result<f64>>,
) -> anyhow::Result<Profile> {
    if perf(&["--version"]).await.is_err() {
        bail!("perf is not installed (Debian: apt-get install linux-perf)");
    }
    let data = dir.join(format!("perf-c{concurrency}.data"));
    let data = data.to_str().context("the temporary path is not UTF-8")?;
    let pids: Vec<String> = processes.iter().map(|(_, pid)| pid.to_string()).collect();
    let pids = pids.join(",");
    let seconds = window.as_secs_f64();
    let flags = format!(
        "-e cpu-clock -F {FREQUENCY_HZ} --call-graph dwarf,{STACK_BYTES} -p {pids} -- sleep \
         {seconds:.1}"
    );
    let record: Vec<&str> = ["record", "-o", data]
        .into_iter()
        .chain(flags.split(' '))
        .collect();
    let (throughput, recorded) = tokio::join!(load, async {
        tokio::time::sleep(warmup).await;
        perf(&record).await
    });
    let recorded = recorded?;
    let script = perf(&["script", "--no-inline", "-F", "pid,ip,sym,dso", "-i", data]).await?;
    let _ = std::fs::remove_file(data);
    let text = String::from_utf8_lossy(&script.stdout);
    let samples = parse_script(&text);
    if samples.is_empty() {
        bail!(
            "perf recorded no samples of pids {pids}: {} {}",
            String::from_utf8_lossy(&recorded.stderr).trim(),
            text.lines().take(3).collect::<Vec<_>>().join(" / ")
        );
    }
    let summaries = processes.iter().map(|(name, pid)| {
        let own: Vec<&Sample> = samples.iter().filter(|s| s.pid == *pid).collect();
        summarise(name, &own)
    });
    Ok(Profile {
        concurrency,
        seconds,
        throughput: throughput?,
        processes: summaries.collect(),
    })
}

/// Runs `perf` with `args`; its output, once it has succeeded.
async fn perf(args: &[&str]) -> anyhow::Result<Output> {
    let mut command = Command::new("perf");
    let output = command.args(args).env("DEBUGINFOD_URLS", "").output().await;
    let output = output.context("running perf")?;
    if !output.status.success() {
        let (what, stderr) = (args.first().unwrap_or(&""), output.stderr);
        let stderr = String::from_utf8_lossy(&stderr);
        bail!("perf {what} failed: {}", stderr.trim());
    }
    Ok(output)
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
        if !line.starts_with(char::is_whitespace) || line.trim().is_empty() {
            samples.extend(current.take());
            let pid = line.trim().parse().ok();
            current = pid.map(|pid| Sample {
                pid,
                frames: vec![],
            });
        } else if let Some(sample) = current.as_mut() {
            let rest = line.trim().split_once(' ').map_or("", |(_, rest)| rest);
            let (symbol, dso) = rest.rsplit_once(" (").unwrap_or((rest, ""));
            let (symbol, dso) = (symbol.to_owned(), dso.trim_end_matches(')').to_owned());
            sample.frames.push(Frame { symbol, dso });
        }
    }
    samples.extend(current);
    samples
}

/// The leading path segment (the crate) of a Rust symbol, if it has one.
fn crate_of(symbol: &str) -> Option<&str> {
    let path = symbol.trim_start_matches('<');
    let name = &path[..path.find("::")?];
    let valid = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    (!name.is_empty() && name.bytes().all(valid)).then_some(name)
}

/// The area a frame of crate `name` is charged to.
fn area_of(name: &str, symbol: &str) -> String {
    let path = symbol.trim_start_matches('<');
    if SOCKET_PATHS.iter().any(|prefix| path.starts_with(prefix)) {
        return SOCKET.to_owned();
    }
    let mut areas = AREAS.split("; ").filter_map(|area| area.split_once(" = "));
    let listed = areas.find(|(_, crates)| crates.split(' ').any(|c| c == name));
    listed.map_or(name, |(area, _)| area).to_owned()
}

/// The area a sample is charged to.
fn charge(sample: &Sample) -> String {
    let leaf_user = sample.frames.iter().find(|frame| !frame.in_kernel());
    let listed = |s: &str| ALLOCATOR.split(' ').any(|name| name == s);
    let allocator =
        |s: &str| listed(s) || s.starts_with("_int_free") || s.starts_with("_int_malloc");
    if leaf_user.is_some_and(|frame| frame.in_libc() && allocator(&frame.symbol)) {
        return ALLOCATION.to_owned();
    }
    let own = sample
        .frames
        .iter()
        .filter(|f| !f.in_kernel() && !f.in_libc());
    let mut crates = own.filter_map(|f| Some((crate_of(&f.symbol)?, &f.symbol)));
    let first = crates.find(|(name, _)| !GLUE.split(' ').any(|glue| glue == *name));
    let area = first.map(|(name, symbol)| area_of(name, symbol));
    area.unwrap_or_else(|| UNRESOLVED.to_owned())
}

/// The libc function that entered the kernel, for a kernel sample.
fn system_call(sample: &Sample) -> Option<String> {
    if !sample.frames.first()?.in_kernel() {
        return None;
    }
    let caller = sample.frames.iter().find(|frame| frame.in_libc());
    Some(caller.map_or_else(
        || "none: interrupt, page fault or preemption".to_owned(),
        |frame| {
            let symbol = frame.symbol.trim_start_matches("__GI___libc_");
            let symbol = symbol.trim_start_matches("__GI_");
            symbol.trim_start_matches("__libc_").to_owned()
        },
    ))
}

fn summarise(name: &str, samples: &[&Sample]) -> ProcessProfile {
    let total = samples.len() as u64;
    let percent = |count: u64| match total {
        0 => 0.0,
        _ => count as f64 * 100.0 / total as f64,
    };
    let [mut areas, mut calls, mut leaves] = [(); 3].map(|()| BTreeMap::<String, u64>::new());
    let (mut kernel, mut logging, mut handler) = (0, 0, 0);
    let logs = |f: &Frame| crate_of(&f.symbol).is_some_and(|c| area_of(c, &f.symbol) == LOGGING);
    let handlers = ["create_consignment", "find_available"];
    let handles = |f: &Frame| handlers.iter().any(|h| f.symbol.contains(h));
    for sample in samples {
        *areas.entry(charge(sample)).or_insert(0) += 1;
        if let Some(call) = system_call(sample) {
            kernel += 1;
            *calls.entry(call).or_insert(0) += 1;
        }
        if let Some(leaf) = sample.frames.first() {
            let kernel = if leaf.in_kernel() { "[kernel] " } else { "" };
            let leaf = format!("{kernel}{}", leaf.symbol);
            *leaves.entry(leaf).or_insert(0) += 1;
        }
        logging += u64::from(sample.frames.iter().any(logs));
        handler += u64::from(sample.frames.iter().any(handles));
    }
    let ranked = |counts: BTreeMap<String, u64>, limit: usize| {
        let mut rows: Vec<_> = counts.into_iter().collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let rows = rows.into_iter().take(limit);
        rows.map(|(name, count)| Share {
            name,
            percent: percent(count),
        })
        .collect()
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
    fn samples_are_parsed_and_charged_to_the_first_library_frame() {
        let samples = parse_script(SCRIPT);
        assert_eq!(samples.len(), 5);
        assert_eq!((samples[0].pid, samples[1].frames.len()), (101, 5));
        let frame = &samples[1].frames[1];
        assert_eq!(frame.symbol, "__GI___libc_write");
        assert_eq!(frame.dso, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        let charged: Vec<_> = samples.iter().map(charge).collect();
        assert_eq!(charged, [LOGGING, LOGGING, ALLOCATION, SCHEDULER, SOCKET]);
        let calls: Vec<_> = samples.iter().map(system_call).collect();
        let calls = calls.iter().map(Option::as_deref).collect::<Vec<_>>();
        assert_eq!(
            calls,
            [
                None,
                Some("write"),
                None,
                Some("epoll_wait"),
                Some("none: interrupt, page fault or preemption")
            ]
        );
    }

    #[test]
    fn crates_are_read_from_symbols_and_grouped_into_areas() {
        assert_eq!(crate_of("<h2::proto::Foo as core::Bar>::poll"), Some("h2"));
        assert_eq!(crate_of("tokio::runtime::park"), Some("tokio"));
        assert_eq!(crate_of("<&T as core::fmt::Display>::fmt"), None);
        assert_eq!(crate_of("malloc"), None);
        for name in [
            "shippy_registry",
            "shippy_server",
            "shippy_client",
            "vessel_service",
        ] {
            let area = area_of(name, &format!("{name}::f"));
            assert!(area.starts_with("shippy's own code"), "{area}");
        }
        assert_eq!(area_of("hashbrown", "hashbrown::map::f"), "hashbrown");
    }

    #[test]
    fn a_process_summary_counts_shares() {
        let samples = parse_script(SCRIPT);
        let own: Vec<&Sample> = samples.iter().filter(|s| s.pid == 101).collect();
        let summary = summarise("consignment-service", &own);
        assert_eq!(summary.samples, 2);
        let percents = [summary.kernel_percent, summary.logging_inclusive_percent];
        assert_eq!(percents, [50.0, 100.0]);
        assert_eq!(summary.handler_inclusive_percent, 50.0);
        let top = &summary.areas[0];
        assert_eq!((top.name.as_str(), top.percent), (LOGGING, 100.0));
    }
}
