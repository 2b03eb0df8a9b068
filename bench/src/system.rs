//! What the suite reads off the machine and its processes: resident memory
//! from `/proc/<pid>/status`, etcd's request counters from its `/metrics`,
//! the core count, the CPU, the load average and the date.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a `/metrics` scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// A process's resident set size (`VmRSS`) in kB.
pub fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "VmRSS:")
}

/// A process's peak resident set size so far (`VmHWM`) in kB.
pub fn peak_rss_kb(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kb(&status, field).with_context(|| format!("no {field} in {path}"))
}

/// The kB value of `field` (e.g. `VmRSS:`) in a `/proc/<pid>/status` text.
fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|number| number.trim().parse().ok())
}

/// CPU time a process has used so far, user and system, all threads.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_ticks(&stat).with_context(|| format!("unreadable {path}"))?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|hz| u64::try_from(hz).ok())
        .filter(|hz| *hz > 0)
        .unwrap_or(100);
    Ok(Duration::from_micros(ticks * 1_000_000 / per_second))
}

/// utime + stime, in clock ticks, from a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// etcd's count of handled gRPC calls (`grpc_server_handled_total`) by
/// method, summed over codes and services, from `<endpoint>/metrics`.
pub async fn etcd_calls(endpoint: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, http_get(endpoint, "/metrics"))
        .await
        .with_context(|| {
            format!("{endpoint}/metrics did not answer within {SCRAPE_TIMEOUT:?}")
        })??;
    Ok(parse_handled(&body))
}

/// Sums `grpc_server_handled_total` samples by their `grpc_method` label.
fn parse_handled(metrics: &str) -> BTreeMap<String, f64> {
    let mut calls = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_handled_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let method = labels.split(',').find_map(|label| {
            label
                .strip_prefix("grpc_method=\"")
                .and_then(|value| value.strip_suffix('"'))
        });
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
    after
        .iter()
        .filter_map(|(method, count)| {
            let delta = count - before.get(method).copied().unwrap_or(0.0);
            (delta > 0.0).then(|| (method.clone(), delta.round() as u64))
        })
        .collect()
}

/// A plain HTTP/1.0 GET against an `http://host:port` endpoint; the body.
async fn http_get(endpoint: &str, path: &str) -> anyhow::Result<String> {
    let authority = endpoint
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .with_context(|| format!("{endpoint} is not an http:// URL"))?;
    let mut stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
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
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Machine {
    /// CPUs this process may run on.
    pub cores: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// Total memory in MiB.
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
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            cpu: cpuinfo
                .lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map_or_else(
                    || "unknown".to_owned(),
                    |(_, model)| model.trim().to_owned(),
                ),
            memory_mib: parse_status_kb(&meminfo, "MemTotal:").map_or(0, |kb| kb / 1024),
            kernel: command_line("uname", &["-sr"]),
            rustc: env!("SHIPPY_BENCH_RUSTC_VERSION").to_owned(),
            etcd: command_line(etcd_binary, &["--version"]),
            date: utc_now(),
        }
    }
}

/// The first line a command prints, or `unknown`.
fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .map(|line| line.trim().to_owned())
        })
        .filter(|line| !line.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The 1-minute load average, which shows how busy the machine was.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The current time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    format_utc(secs)
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DD HH:MM UTC`.
fn format_utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (hour, minute) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Days to civil date, after Howard Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_proc_status() {
        let status = "Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t    9876 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS:"), Some(9876));
        assert_eq!(parse_status_kb(status, "VmHWM:"), Some(12345));
        assert_eq!(parse_status_kb(status, "VmSwap:"), None);
        assert!(rss_kb(std::process::id()).unwrap() > 0);
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
        assert_eq!(calls.get("Range"), Some(&9.0));
        assert_eq!(calls.get("LeaseGrant"), Some(&1.0));
        assert_eq!(calls.len(), 2);

        let mut later = calls.clone();
        later.insert("Range".into(), 12.0);
        assert_eq!(
            calls_between(&calls, &later),
            [("Range".to_owned(), 3)].into()
        );
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13 UTC");
    }
}
