//! The processes a run measures, and what is read off them and the machine:
//! etcd, the services and the floors as children on free loopback ports;
//! registration and deregistration timed through an etcd watch opened
//! beforehand (it sees a change when etcd commits it, with no polling
//! interval, and reads nothing from the key space); memory and CPU time from
//! `/proc`; etcd's call counters from its `/metrics`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};
use etcd_client::{EventType, WatchOptions, WatchStream};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use shippy_test_support::{ChildGuard, Etcd, wait_until};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a child may take to register, to listen or to exit.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a `/metrics` scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The two services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    VesselService,
    ConsignmentService,
}

impl ServiceKind {
    /// The package and binary name.
    pub fn binary(self) -> &'static str {
        match self {
            Self::VesselService => "vessel-service",
            Self::ConsignmentService => "consignment-service",
        }
    }
}

/// A running child, killed if dropped: a registered service or a floor.
pub struct Child {
    /// The process.
    pub process: ChildGuard,
    /// The `host:port` it listens on.
    pub address: String,
    /// A service's key in etcd.
    key: String,
}

/// A run's etcd, the service binaries and environment, and the directory
/// the children log to.
pub struct Lab {
    etcd: Etcd,
    bin_dir: PathBuf,
    service_env: Vec<(String, String)>,
    logs: TempDir,
}

impl Lab {
    /// Starts etcd, once both service binaries are found in `bin_dir`.
    pub async fn start(bin_dir: PathBuf, env: &[(String, String)]) -> anyhow::Result<Self> {
        for kind in [ServiceKind::VesselService, ServiceKind::ConsignmentService] {
            let path = bin_dir.join(kind.binary());
            ensure!(
                path.is_file(),
                "{} not found: build it first (`cargo build --release --workspace --bins`, or \
                 `make bench`), or pass --bin-dir",
                path.display()
            );
        }
        let logs = tempfile::Builder::new().prefix("shippy-bench-").tempdir();
        let logs = logs.context("creating a log dir")?;
        let etcd = Etcd::start().await.context("starting etcd")?;
        let service_env = env.to_vec();
        Ok(Self {
            etcd,
            bin_dir,
            service_env,
            logs,
        })
    }

    /// Where the children log, and scratch space.
    pub fn dir(&self) -> &Path {
        self.logs.path()
    }

    /// A command for `program` that runs in [`Self::dir`] with none of this
    /// process's environment.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command.env_clear().current_dir(self.dir());
        command
    }

    /// Spawns `command`, logging to `<name>.log`.
    fn spawn(&self, command: &mut Command, name: &str) -> anyhow::Result<ChildGuard> {
        ChildGuard::spawn_logged(command, &self.dir().join(format!("{name}.log")))
    }

    /// Starts `kind` on a free loopback port, logging to `<name>.log`, and
    /// returns it once its key is in etcd, with the time from spawning it.
    pub async fn start_service(
        &self,
        kind: ServiceKind,
        name: &str,
    ) -> anyhow::Result<(Child, Duration)> {
        let service = kind.binary().trim_end_matches("-service");
        let prefix = format!("/shippy/services/shippy.service.{service}/");
        let mut watch = self
            .watch(&prefix, WatchOptions::new().with_prefix())
            .await?;
        let mut command = self.command(self.bin_dir.join(kind.binary()));
        command.env("SHIPPY_ETCD_ENDPOINTS", self.etcd.endpoint());
        command.env("SHIPPY_LISTEN_ADDR", "127.0.0.1:0");
        if kind == ServiceKind::ConsignmentService {
            // So the benchmark measures the RPC and discovery path, not a database.
            command.env("SHIPPY_DATABASE_URL", "memory://");
        }
        command.envs(self.service_env.iter().map(|(k, v)| (k, v)));
        let spawned = Instant::now();
        let mut process = self.spawn(&mut command, name)?;
        let registered = tokio::select! {
            event = next_event(&mut watch, EventType::Put) => event,
            exited = process.wait_exit(START_TIMEOUT + Duration::from_secs(1)) => {
                exited.and_then(|status| Err(anyhow!("exited with {status} before registering")))
            }
        };
        let took = spawned.elapsed();
        let log = || process.log_tail();
        let (key, value) = registered.with_context(|| format!("starting {name}:\n{}", log()))?;
        #[derive(Deserialize)]
        struct Record {
            address: String,
        }
        let record = serde_json::from_str::<Record>(&value);
        let address = record
            .with_context(|| format!("{name} registered {value:?}"))?
            .address;
        let child = Child {
            process,
            address,
            key,
        };
        Ok((child, took))
    }

    /// Sends SIGTERM to a service and returns the time until its key was
    /// gone from etcd, once it has exited 0.
    pub async fn stop_service(&self, mut service: Child) -> anyhow::Result<Duration> {
        let (key, process) = (&service.key, &mut service.process);
        let mut watch = self.watch(key, WatchOptions::new()).await?;
        let signalled = Instant::now();
        process.signal(Signal::SIGTERM)?;
        let deleted = next_event(&mut watch, EventType::Delete).await;
        deleted.with_context(|| format!("stopping {key}:\n{}", process.log_tail()))?;
        let took = signalled.elapsed();
        let status = process.wait_exit(START_TIMEOUT).await?;
        let log = process.log_tail();
        ensure!(
            status.success(),
            "{key} exited with {status} on SIGTERM:\n{log}"
        );
        Ok(took)
    }

    /// Starts `shippy-bench echo-server` on a free loopback port, as a relay
    /// to `forward` when given, logging to `<name>.log`.
    pub async fn start_echo(&self, forward: Option<&str>, name: &str) -> anyhow::Result<Child> {
        let exe = std::env::current_exe().context("locating shippy-bench")?;
        let mut command = self.command(exe);
        command.args(["echo-server", "--listen", "127.0.0.1:0"]);
        command.args(
            forward
                .map(|backend| ["--forward", backend])
                .iter()
                .flatten(),
        );
        let process = self.spawn(&mut command, name)?;
        let listening = || {
            let log = process.log();
            let line = log.lines().find_map(|l| l.strip_prefix("listening on "));
            line.map(|address| address.trim().to_owned())
        };
        let listens = || async { listening().is_some() };
        let waited = wait_until(START_TIMEOUT, "the echo server to listen", listens).await;
        waited.with_context(|| process.log_tail())?;
        let address = listening().context("the echo server did not say where it listens")?;
        let key = String::new();
        Ok(Child {
            process,
            address,
            key,
        })
    }

    /// A watch on `key`, once etcd has confirmed it, so that no later
    /// change is missed.
    async fn watch(&self, key: &str, options: WatchOptions) -> anyhow::Result<WatchStream> {
        let watched = self.etcd.client().await?.watch(key, Some(options)).await;
        let mut stream = watched.context("opening an etcd watch")?;
        let created = stream
            .message()
            .await
            .context("waiting for the etcd watch")?;
        let confirmed = created.is_some_and(|response| response.created());
        ensure!(confirmed, "etcd did not confirm the watch on {key}");
        Ok(stream)
    }

    /// etcd's count of handled gRPC calls (`grpc_server_handled_total`) by
    /// method, from its `/metrics`, read with a plain HTTP/1.0 GET.
    pub async fn etcd_calls(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let endpoint = self.etcd.endpoint();
        let authority = endpoint.strip_prefix("http://").unwrap_or(endpoint);
        let authority = authority.trim_end_matches('/');
        let scrape = async {
            let mut stream = TcpStream::connect(authority).await?;
            let request = format!("GET /metrics HTTP/1.0\r\nHost: {authority}\r\n\r\n");
            stream.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
        };
        let late = || format!("{endpoint}/metrics did not answer within {SCRAPE_TIMEOUT:?}");
        let response = tokio::time::timeout(SCRAPE_TIMEOUT, scrape);
        let response = response.await.with_context(late)??;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
        let status = head.lines().next().unwrap_or_default();
        let ok = status.split_whitespace().nth(1) == Some("200");
        ensure!(ok, "GET {endpoint}/metrics answered {status:?}");
        Ok(parse_handled(body))
    }
}

/// The next event of `event_type` from `watch`, as (key, value).
async fn next_event(
    watch: &mut WatchStream,
    event_type: EventType,
) -> anyhow::Result<(String, String)> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let message = tokio::time::timeout_at(deadline, watch.message()).await;
        let late = |_| anyhow!("no {event_type:?} event within {START_TIMEOUT:?}");
        let response = message.map_err(late)?.context("reading the etcd watch")?;
        let response = response.context("the etcd watch ended")?;
        let mut events = response.events().iter();
        let kv = events.find_map(|event| event.kv().filter(|_| event.event_type() == event_type));
        if let Some(kv) = kv {
            let text = |bytes| String::from_utf8_lossy(bytes).into_owned();
            return Ok((text(kv.key()), text(kv.value())));
        }
    }
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
            .find_map(|l| l.strip_prefix("grpc_method=\""));
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

fn read(path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

/// A process's `VmRSS:` (resident now) or `VmHWM:` (its peak so far), kB.
pub fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    parse_kb(&read(&path)?, field).with_context(|| format!("no {field} in {path}"))
}

/// The kB value of `field` in `/proc/<pid>/status` or `/proc/meminfo` text.
fn parse_kb(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find_map(|line| line.strip_prefix(field))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// The CPU time a process has used so far, user and system, all threads.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let ticks = parse_stat_ticks(&read(&path)?).with_context(|| format!("unreadable {path}"))?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK);
    let hz = hz.ok().flatten().and_then(|hz| u64::try_from(hz).ok());
    let hz = hz.filter(|hz| *hz > 0).unwrap_or(100);
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// utime + stime, in clock ticks, from a `/proc/<pid>/stat` line: fields 14
/// and 15, counted after the last `)` since the command name may hold spaces
/// and parentheses.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let mut next = || fields.next()?.parse::<u64>().ok();
    Some(next()? + next()?)
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

/// The machine a run happened on: the CPUs this process may use, the CPU
/// model, memory, `uname -sr`, the compiler that built the bench (and, with
/// `make bench`, the services), `etcd --version` and the start (UTC).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_mib: u64,
    pub kernel: String,
    pub rustc: String,
    pub etcd: String,
    pub date: String,
}

impl Machine {
    /// Reads the machine's description; anything unreadable is `unknown`.
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
    let line = stdout.as_deref().and_then(|text| text.lines().next());
    let line = line.map(str::trim).filter(|line| !line.is_empty());
    line.unwrap_or("unknown").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_cpu_time_are_read_from_proc() {
        let status = "Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t    9876 kB\n";
        assert_eq!(parse_kb(status, "VmRSS:"), Some(9876));
        assert_eq!(parse_kb(status, "VmHWM:"), Some(12345));
        assert_eq!(parse_kb(status, "VmSwap:"), None);
        // The command name may hold spaces and parentheses.
        let stat = "42 (tokio (rt) x) S 1 42 42 0 -1 4194560 1234 0 0 0 250 36 0 0 20 0 3 0 1 2";
        assert_eq!(parse_stat_ticks(stat), Some(286));
        assert_eq!(parse_stat_ticks("garbage"), None);
        let me = std::process::id();
        assert!(status_kb(me, "VmRSS:").unwrap() > 0 && cpu_time(me).is_ok());
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
        let expected = [("LeaseGrant".into(), 1.0), ("Range".into(), 9.0)];
        assert_eq!(calls, expected.into());
        let later = BTreeMap::from([("Range".into(), 12.0)]);
        assert_eq!(calls_between(&calls, &later), [("Range".into(), 3)].into());
    }

    #[test]
    fn the_date_is_utc_to_the_minute() {
        let date = Machine::read("etcd").date;
        assert!(date.len() == 20 && date.ends_with(" UTC"), "{date}");
    }
}
