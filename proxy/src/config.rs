//! The proxy's settings: one typed struct, each field a flag and an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shared::config::{
    BreakerArgs, CheckSettings, HttpServerArgs, LogFormat, RedisSettings, parse_duration,
    parse_positive_duration,
};

use crate::admin_token::{AdminToken, TokenSetting};

/// Configuration of the proxy (the worker). See README for the table of settings.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "proxy",
    version,
    about = "Worker: reads requests from a Redis stream through a bounded pool of terminals, replies and acknowledges"
)]
pub struct ProxyConfig {
    #[command(flatten)]
    pub redis: RedisSettings,

    #[command(flatten)]
    pub breaker: BreakerArgs,

    #[command(flatten)]
    pub http: HttpServerArgs,

    #[command(flatten)]
    pub runtime: shared::runtime::RuntimeArgs,

    /// Address the HTTP server (health, metrics, status, Swagger UI) listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:5010")]
    pub listen_addr: SocketAddr,

    /// Consumer name in the group (default: hostname, pid and a random suffix). Must be unique
    /// per running process.
    #[arg(long, env = "CONSUMER_NAME")]
    pub consumer_name: Option<String>,

    /// Concurrent workers ("terminals"); never more entries than free terminals are read.
    #[arg(long, env = "TERMINALS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub terminals: u32,

    /// The queue this proxy serves: it reads the request stream `<QUEUE>-requests`. Unset, it
    /// reads REQUEST_STREAM (default `weather-requests`, the weather demo's queue); setting
    /// both is refused.
    #[arg(long, env = "QUEUE", value_parser = parse_queue_name, conflicts_with = "request_stream")]
    pub queue: Option<String>,

    /// Base URL of the upstream service, e.g. `http://127.0.0.1:8080`: each `http` request is
    /// forwarded there and its response comes back unchanged. Unset, the proxy serves the
    /// weather demo.
    #[arg(long, env = "UPSTREAM_URL")]
    pub upstream_url: Option<String>,

    /// Upstream response bodies larger than this become 502 `upstream-response-too-large`.
    #[arg(long, env = "UPSTREAM_MAX_RESPONSE_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=256 * 1024 * 1024))]
    pub upstream_max_response_bytes: u64,

    /// Simulated processing time in ms: a range `100-500`, a single value `250`, or `0`.
    #[arg(long, env = "PROCESSING_DELAY_MS", default_value = "100-500", value_parser = DelayRange::parse)]
    pub processing_delay_ms: DelayRange,

    /// On SIGTERM, how long entries already read may take to finish before exit; unfinished
    /// ones stay pending in the group for another consumer.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Entries pending this long (their proxy died or hangs) are claimed by a live proxy.
    /// Keep it well below REQUEST_TIMEOUT: a request can take up to MAX_DELIVERIES times this
    /// before it is dead-lettered (see docs/resilience.md).
    #[arg(long, env = "RECLAIM_MIN_IDLE", default_value = "8s", value_parser = parse_positive_duration)]
    pub reclaim_min_idle: Duration,

    /// How often to look for idle pending entries to reclaim.
    #[arg(long, env = "RECLAIM_INTERVAL", default_value = "1s", value_parser = parse_positive_duration)]
    pub reclaim_interval: Duration,

    /// Deliveries after which an entry that was never acknowledged is dead-lettered.
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_deliveries: u64,

    /// Stream that receives poison requests (default: `<REQUEST_STREAM>:dlq`).
    #[arg(long, env = "DEAD_LETTER_STREAM")]
    pub dead_letter_stream: Option<String>,

    /// The ingresses' REPLY_STREAM_PREFIX: replies go to streams `<prefix>:<instance-id>`.
    /// Only used for `--print-redis-acl` (the streams the proxy's Redis user may write to).
    #[arg(long, env = "REPLY_STREAM_PREFIX", default_value = "weather-responses")]
    pub reply_stream_prefix: String,

    /// Print the Redis ACL rules this configuration needs (one line, to put after
    /// `ACL SETUSER <user> on >password`) and exit without connecting. See docs/security.md.
    #[arg(long)]
    pub print_redis_acl: bool,

    /// Other consumers with nothing pending and idle this long are removed from the group.
    #[arg(long, env = "CONSUMER_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_positive_duration)]
    pub consumer_idle_timeout: Duration,

    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Bearer token the mutating admin endpoints (failure injection, dead-letter replay and
    /// delete) require. Without it (or ADMIN_TOKEN_FILE) those endpoints answer 403. Prefer
    /// ADMIN_TOKEN_FILE, which keeps the secret out of the environment.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, value_parser = TokenSetting::Inline, conflicts_with = "admin_token_file")]
    pub admin_token: Option<AdminToken>,

    /// File holding the admin bearer token (e.g. a mounted Kubernetes Secret). A missing or
    /// empty file stops the proxy at start.
    #[arg(long, env = "ADMIN_TOKEN_FILE", value_parser = TokenSetting::File)]
    pub admin_token_file: Option<AdminToken>,

    /// `off` turns failure injection off for good: its endpoints answer 403 and no fault is
    /// ever drawn. Use `off` anywhere real traffic flows; `on` (the default) is for demos.
    #[arg(long, env = "FAULT_INJECTION", value_enum, default_value = "on")]
    pub fault_injection: Switch,
}

/// An on/off setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// A queue name: 1-64 characters of `[A-Za-z0-9._-]`, so `<queue>-requests` is a tidy Redis
/// key and a bounded metric label.
pub fn parse_queue_name(value: &str) -> Result<String, String> {
    shared::protocol::validate_queue_name(value).map(|()| value.to_string())
}

impl ProxyConfig {
    /// The request stream this proxy reads: `<QUEUE>-requests`, else REQUEST_STREAM.
    pub fn request_stream(&self) -> String {
        match &self.queue {
            Some(queue) => shared::protocol::queue_stream(queue),
            None => self.redis.request_stream.clone(),
        }
    }

    /// The least-privilege Redis ACL rules of this configuration (`--print-redis-acl`).
    pub fn redis_acl_rules(&self) -> String {
        let mut redis = self.redis.clone();
        redis.request_stream = self.request_stream();
        shared::acl::redis_acl_rules(
            &redis,
            shared::acl::Role::Proxy {
                reply_stream_prefix: &self.reply_stream_prefix,
                dead_letter_stream: &self.dead_letter_stream(),
            },
        )
    }

    /// The dead-letter stream's key.
    pub fn dead_letter_stream(&self) -> String {
        self.dead_letter_stream
            .clone()
            .unwrap_or_else(|| format!("{}:dlq", self.request_stream()))
    }

    /// The admin token from ADMIN_TOKEN or ADMIN_TOKEN_FILE (clap refuses both at once).
    pub fn admin_token(&self) -> Option<AdminToken> {
        self.admin_token
            .clone()
            .or_else(|| self.admin_token_file.clone())
    }

    /// The consumer name, generated once when not configured.
    pub fn resolved_consumer_name(&self) -> String {
        self.consumer_name
            .clone()
            .unwrap_or_else(|| shared::config::unique_process_name("proxy"))
    }
}

/// An inclusive range of milliseconds the simulated processing takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayRange {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl DelayRange {
    /// Parses `100-500`, `250` or `0`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let number = |text: &str| {
            text.trim().parse::<u64>().map_err(|_| {
                format!("expected milliseconds like `100-500`, `250` or `0`, got `{value}`")
            })
        };
        let range = match value.split_once('-') {
            Some((min, max)) => DelayRange {
                min_ms: number(min)?,
                max_ms: number(max)?,
            },
            None => {
                let ms = number(value)?;
                DelayRange {
                    min_ms: ms,
                    max_ms: ms,
                }
            }
        };
        if range.min_ms > range.max_ms {
            return Err(format!(
                "the range `{value}` has its minimum above its maximum"
            ));
        }
        if range.max_ms > 600_000 {
            return Err("at most 600000 ms (10 minutes)".into());
        }
        Ok(range)
    }
}

impl std::fmt::Display for DelayRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min_ms == self.max_ms {
            write!(f, "{}", self.min_ms)
        } else {
            write!(f, "{}-{}", self.min_ms, self.max_ms)
        }
    }
}

impl CheckSettings for ProxyConfig {
    fn check_settings(&self) -> Result<(), String> {
        self.redis.check_settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_ranges_parse() {
        assert_eq!(
            DelayRange::parse("100-500"),
            Ok(DelayRange {
                min_ms: 100,
                max_ms: 500
            })
        );
        assert_eq!(
            DelayRange::parse("250"),
            Ok(DelayRange {
                min_ms: 250,
                max_ms: 250
            })
        );
        assert_eq!(
            DelayRange::parse("0"),
            Ok(DelayRange {
                min_ms: 0,
                max_ms: 0
            })
        );
        assert!(DelayRange::parse("500-100").is_err());
        assert!(DelayRange::parse("fast").is_err());
        assert!(DelayRange::parse("-5").is_err());
    }
}
