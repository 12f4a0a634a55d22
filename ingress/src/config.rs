//! The ingress's settings: one typed struct, each field a flag and an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shared::config::{
    BreakerArgs, HttpServerArgs, LogFormat, RedisSettings, parse_duration, parse_positive_duration,
};

/// Configuration of the ingress (HTTP front door). See README for the table of settings.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ingress",
    version,
    about = "HTTP front door: writes requests to a Redis stream and answers with the proxy's reply"
)]
pub struct IngressConfig {
    #[command(flatten)]
    pub redis: RedisSettings,

    #[command(flatten)]
    pub breaker: BreakerArgs,

    #[command(flatten)]
    pub http: HttpServerArgs,

    /// Address the HTTP server listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:5009")]
    pub listen_addr: SocketAddr,

    /// Prefix of this instance's reply stream; the stream is `<prefix>:<instance-id>`.
    #[arg(long, env = "REPLY_STREAM_PREFIX", default_value = "weather-responses")]
    pub reply_stream_prefix: String,

    /// Unique name of this instance (default: hostname, pid and a random suffix). Two running
    /// instances must never share one: each owns its reply stream.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Longest a request waits for its reply (clients may ask for less with `Request-Timeout`).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// On SIGTERM, how long requests in flight may take to get their replies before exit.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Requests this instance awaits at once; past it new requests get 503 + Retry-After.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,

    /// Entries the request stream may hold (waiting + being processed) before new requests get
    /// 503 + Retry-After instead of queueing past their deadline.
    #[arg(long, env = "MAX_BACKLOG", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_backlog: u64,

    /// Largest accepted request body in bytes (413 above).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// Expiry kept on the reply stream while this instance lives, so streams of dead instances vanish.
    #[arg(long, env = "REPLY_STREAM_TTL", default_value = "60s", value_parser = parse_positive_duration)]
    pub reply_stream_ttl: Duration,

    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl IngressConfig {
    /// The instance id, generated once when not configured.
    pub fn resolved_instance_id(&self) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(|| shared::config::unique_process_name("ingress"))
    }
}
