//! What the suite reads off the machine and its processes: resident memory
//! and CPU time from `/proc/<pid>`, etcd's request counters from its
//! `/metrics`, the core count, the CPU, the load average and the date.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a `/metrics` scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

fn read(path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

/// A process's resident set size (`VmRSS:`) or its peak so far
/// (`VmHWM:`), in kB.
pub fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    parse_kb(&read(&path)?, field).with_context(|| format!("no {field} in {path}"))
}

/// The kB value of `field` (e.g. `VmRSS:`) in `/proc/<pid>/status` or
/// `/proc/meminfo` text.
fn parse_kb(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find_map(|line| line.strip_prefix(field))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// CPU time a process has used so far, user and system, all threads.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let ticks = parse_stat_ticks(&read(&path)?).with_context(|| format!("unreadable {path}"))?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten();
    let per_second = per_second
        .and_then(|hz| u64::try_from(hz).ok())
        .filter(|hz| *hz > 0);
    Ok(Duration::from_micros(
        ticks * 1_000_000 / per_second.unwrap_or(100),
    ))
}

/// utime + stime, in clock ticks, from a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted from the last `)`: field 3 (state) first, utime and stime are
/// fields 14 and 15.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let mut next = || fields.next()?.parse::<u64>().ok();
    Some(next()? + next()?)
}

/// etcd's count of handled gRPC calls (`grpc_server_handled_total`) by
/// method, summed over codes and services, from `<endpoint>/metrics`.
pub async fn etcd_calls(endpoint: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, http_get(endpoint, "/metrics")).await;
    let late = || format!("{endpoint}/metrics did not answer within {SCRAPE_TIMEOUT:?}");
    Ok(parse_handled(&body.with_context(late)??))
}

/// Sums `grpc_server_handled_total` samples by their `grpc_method` label.
fn parse_handled(metrics: &str) -> BTreeMap<String, f64> {
    let mut calls = BTreeMap::new();
    for line in metrics.lines() {
        let sample = line.strip_prefix("grpc_server_handled_total{");
        let Some((labels, value)) = sample.and_then(|rest| rest.split_once('}')) else {
            continue;
        };
        let method = labels
            .split(',')
            .find_map(|label| label.strip_prefix("grpc_method=\""));
        let method = method.and_then(|value| value.strip_suffix('"'));
        if let (Some(method), Ok(value)) = (method, value.trim().parse::<f64>()) {
            *calls.entry(method.to_owned()).or_insert(0.0) += value;
        }
    }
    calls
}

/// How many calls of each method etcd handled between two scrapes; only
/// methods that changed.
pub fn calls_between(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, u64> {
    let delta = |(method, count): (&String, &f64)| {
        let delta = count - before.get(method).copied().unwrap_or(0.0);
        (delta > 0.0).then(|| (method.clone(), delta.round() as u64))
    };
    after.iter().filter_map(delta).collect()
}

/// A plain HTTP/1.0 GET against an `http://host:port` endpoint; the body.
async fn http_get(endpoint: &str, path: &str) -> anyhow::Result<String> {
    let authority = endpoint
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'));
    let authority = authority.with_context(|| format!("{endpoint} is not an http:// URL"))?;
    let stream = TcpStream::connect(authority).await;
    let mut stream = stream.with_context(|| format!("cannot connect to {authority}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("the response has no header end")?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        bail!("GET {endpoint}{path} answered {status_line:?}");
    }
    Ok(body.to_owned())
}

/// The machine a run happened on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    /// CPUs this process may run on.
    pub cores: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    pub memory_mib: u64,
    /// `uname -sr`.
    pub kernel: String,
    /// The compiler that built the bench (and, with `make bench`, the services).
    pub rustc: String,
    /// `etcd --version`'s first line.
    pub etcd: String,
    /// When the run started, `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
}

impl Machine {
    /// Reads the machine description; anything unreadable is `unknown`.
    pub fn read(etcd_binary: &str) -> Self {
        let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"));
        let cpu = cpu.and_then(|rest| Some(rest.split_once(':')?.1.trim().to_owned()));
        let memory_kb = parse_kb(&read("/proc/meminfo").unwrap_or_default(), "MemTotal:");
        Self {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            cpu: cpu.unwrap_or_else(|| "unknown".to_owned()),
            memory_mib: memory_kb.map_or(0, |kb| kb / 1024),
            kernel: first_line("uname", &["-sr"]),
            rustc: env!("SHIPPY_BENCH_RUSTC_VERSION").to_owned(),
            etcd: first_line(etcd_binary, &["--version"]),
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }
}

/// The first line a command prints, or `unknown`.
fn first_line(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().ok();
    let stdout = output.map(|output| String::from_utf8_lossy(&output.stdout).into_owned());
    let line = stdout
        .as_deref()
        .and_then(|text| text.lines().next())
        .map(str::trim);
    line.filter(|line| !line.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

/// The 1-minute load average, which shows how busy the machine was.
pub fn load_average() -> Option<f64> {
    read("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_proc_status() {
        let status = "Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t    9876 kB\n";
        assert_eq!(parse_kb(status, "VmRSS:"), Some(9876));
        assert_eq!(parse_kb(status, "VmHWM:"), Some(12345));
        assert_eq!(parse_kb(status, "VmSwap:"), None);
        assert!(status_kb(std::process::id(), "VmRSS:").unwrap() > 0);
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat =
            "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 36 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat_ticks(stat), Some(286));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert!(cpu_time(std::process::id()).is_ok());
    }

    #[test]
    fn handled_calls_are_summed_by_method() {
        let metrics = r#"# HELP grpc_server_handled_total Total number of RPCs completed on the server.
grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 7
grpc_server_handled_total{grpc_code="NotFound",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 2
grpc_server_handled_total{grpc_code="OK",grpc_method="LeaseGrant",grpc_service="etcdserverpb.Lease",grpc_type="unary"} 1
grpc_server_started_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 99
"#;
        let calls = parse_handled(metrics);
        assert_eq!(
            calls,
            [("LeaseGrant".into(), 1.0), ("Range".into(), 9.0)].into()
        );
        let mut later = calls.clone();
        later.insert("Range".into(), 12.0);
        assert_eq!(
            calls_between(&calls, &later),
            [("Range".to_owned(), 3)].into()
        );
    }

    #[test]
    fn the_date_is_utc_to_the_minute() {
        let date = Machine::read("etcd").date;
        assert!(date.len() == 20 && date.ends_with(" UTC"), "{date}");
    }
}
