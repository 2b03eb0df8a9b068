//! How a serving instance listens, advertises itself, keeps its
//! registration, logs and stops, and what it allows a client: the flags
//! every service binary shares.
//!
//! The limits on clients have defaults chosen so that no client, however
//! hostile, holds a stream, a call or a connection for long or without
//! bound, while no honest caller comes near them:
//!
//! - `--max-concurrent-streams` 100: advertised as
//!   SETTINGS_MAX_CONCURRENT_STREAMS. RFC 9113 recommends no less than 100,
//!   so that parallelism is not limited needlessly; shippy's own callers
//!   have a few calls in flight per connection (the benchmark 32). Streams
//!   beyond it are refused with RST_STREAM(REFUSED_STREAM), and a
//!   connection that keeps opening them is sent GOAWAY.
//! - `--default-deadline` 20 s: the deadline of a call whose caller sent no
//!   `grpc-timeout`, so that every handler ends. A call takes milliseconds;
//!   20 s is twice the CLI's own deadline and ends a stalled call well
//!   within 30 s. A caller's own deadline is honoured as sent.
//! - `--handshake-timeout` 10 s: how long a new connection may take to send
//!   the HTTP/2 preface and its first SETTINGS frame, which a client sends
//!   in its first packet; 10 s allows for a very slow link and frees a
//!   silent or trickling connection well within 30 s.
//! - `--keepalive-interval` 10 s and `--keepalive-timeout` 10 s: a
//!   connection that has sent nothing for the interval is pinged, and closed
//!   if the ping is not answered within the timeout, so a dead or silent
//!   peer is gone at most 20 s after it last sent anything. A ping is 17
//!   bytes each way.
//! - `--max-connections` 1000: more than shippy's callers need (each keeps
//!   one connection per instance), and capped at the open-files limit minus
//!   the descriptors the process needs for itself, so that a flood of
//!   connections cannot take the descriptors etcd, the store and new
//!   connections need. At the cap, a new connection displaces the oldest one
//!   still in its handshake; when none is, accepting waits for a connection
//!   to close.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use shippy_registry::AdvertiseAddr;

use crate::telemetry::LogFormat;

/// How a serving instance listens, advertises itself, keeps its registration
/// and stops. Each service sets its own default for `--listen` with
/// `#[command(mut_arg("listen", ...))]`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address to accept gRPC connections on.
    #[arg(long, env = "SHIPPY_LISTEN_ADDR", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// host:port that callers use to reach this instance, as registered in
    /// etcd; never 0.0.0.0. Defaults to the listen address with 0.0.0.0
    /// replaced by 127.0.0.1.
    #[arg(long, env = "SHIPPY_ADVERTISE_ADDR", value_name = "HOST:PORT")]
    pub advertise: Option<AdvertiseAddr>,

    /// Instead of serving, ask the instance at HOST:PORT for its gRPC health
    /// and exit 0 if it is SERVING, 1 otherwise: a healthcheck for images
    /// without grpcurl. (No environment variable, so it cannot switch a
    /// service into probe mode by accident.)
    #[arg(long, value_name = "HOST:PORT")]
    pub probe: Option<AdvertiseAddr>,

    /// Seconds the registration outlives the process if it dies without
    /// deregistering; the lease is renewed every third of this.
    #[arg(
        long = "lease-ttl",
        env = "SHIPPY_LEASE_TTL",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(2..=3600),
        value_name = "SECONDS"
    )]
    pub lease_ttl_secs: u64,

    /// Seconds in-flight calls may take to finish once, after a stop
    /// signal, the instance has deregistered and stopped accepting calls.
    #[arg(
        long = "shutdown-grace",
        env = "SHIPPY_SHUTDOWN_GRACE",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(0..=3600),
        value_name = "SECONDS"
    )]
    pub shutdown_grace_secs: u64,

    /// Streams (calls) a client may have open at once on one connection,
    /// advertised as HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; more are refused.
    #[arg(
        long = "max-concurrent-streams",
        env = "SHIPPY_MAX_CONCURRENT_STREAMS",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=100_000),
        value_name = "STREAMS"
    )]
    pub max_concurrent_streams: u32,

    /// Seconds a call may take when its caller sent no deadline
    /// (`grpc-timeout`); it then ends with DEADLINE_EXCEEDED.
    #[arg(
        long = "default-deadline",
        env = "SHIPPY_DEFAULT_DEADLINE",
        default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(1..=86_400),
        value_name = "SECONDS"
    )]
    pub default_deadline_secs: u64,

    /// Seconds a new connection may take to send the HTTP/2 preface and its
    /// first SETTINGS frame before it is closed.
    #[arg(
        long = "handshake-timeout",
        env = "SHIPPY_HANDSHAKE_TIMEOUT",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        value_name = "SECONDS"
    )]
    pub handshake_timeout_secs: u64,

    /// Seconds a connection may send nothing before it is sent an HTTP/2 ping.
    #[arg(
        long = "keepalive-interval",
        env = "SHIPPY_KEEPALIVE_INTERVAL",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        value_name = "SECONDS"
    )]
    pub keepalive_interval_secs: u64,

    /// Seconds a ping may go unanswered before its connection is closed.
    #[arg(
        long = "keepalive-timeout",
        env = "SHIPPY_KEEPALIVE_TIMEOUT",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        value_name = "SECONDS"
    )]
    pub keepalive_timeout_secs: u64,

    /// Connections open at once, at most; never more than the open-files
    /// limit (raised to its hard limit at start) minus what the process
    /// needs for itself.
    #[arg(
        long = "max-connections",
        env = "SHIPPY_MAX_CONNECTIONS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000),
        value_name = "CONNECTIONS"
    )]
    pub max_connections: u32,

    /// Log lines as human-readable text or as one JSON object per line.
    #[arg(
        long = "log-format",
        env = "SHIPPY_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

impl ServerArgs {
    /// The lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }

    /// The drain period after a stop signal.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// The deadline of a call whose caller sent none.
    pub fn default_deadline(&self) -> Duration {
        Duration::from_secs(self.default_deadline_secs)
    }

    /// How long a new connection may take to start HTTP/2.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// How long a connection may be silent before it is pinged.
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(self.keepalive_interval_secs)
    }

    /// How long a ping may go unanswered.
    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
    }

    fn defaults() -> ServerArgs {
        Cli::try_parse_from(["service", "--listen", "127.0.0.1:0"])
            .unwrap()
            .server
    }

    #[test]
    fn by_default_no_stalled_connection_or_call_outlives_30_seconds() {
        let args = defaults();
        let limit = Duration::from_secs(30);
        // Silent TCP and a partial preface: the handshake timeout.
        assert_eq!(args.handshake_timeout(), Duration::from_secs(10));
        // A silent peer after the handshake: pinged, then closed.
        assert_eq!(args.keepalive_interval(), Duration::from_secs(10));
        assert_eq!(args.keepalive_timeout(), Duration::from_secs(10));
        assert!(args.keepalive_interval() + args.keepalive_timeout() < limit);
        // A call whose message never completes: the default deadline.
        assert_eq!(args.default_deadline(), Duration::from_secs(20));
        assert!(args.handshake_timeout() < limit && args.default_deadline() < limit);
    }

    #[test]
    fn by_default_a_connection_may_open_100_streams_and_1000_connections_are_kept() {
        let args = defaults();
        assert_eq!(args.max_concurrent_streams, 100);
        assert_eq!(args.max_connections, 1000);
    }

    #[test]
    fn limits_that_would_disable_a_defence_are_refused() {
        for flag in [
            "--max-concurrent-streams",
            "--default-deadline",
            "--handshake-timeout",
            "--keepalive-interval",
            "--keepalive-timeout",
            "--max-connections",
        ] {
            let parsed = Cli::try_parse_from(["service", "--listen", "127.0.0.1:0", flag, "0"]);
            assert!(parsed.is_err(), "{flag} 0 was accepted");
        }
    }
}
