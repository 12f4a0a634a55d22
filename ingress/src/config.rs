//! The ingress's settings: one typed struct, each field a flag and an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::HeaderName;
use clap::Parser;
use shared::config::{
    BreakerArgs, CheckSettings, HttpServerArgs, LogFormat, RedisSettings, parse_duration,
    parse_positive_duration,
};

use crate::client_key::TrustedProxies;
use crate::rate_limit::RateLimitSetting;

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

    #[command(flatten)]
    pub runtime: shared::runtime::RuntimeArgs,

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

    /// How long the consumer group may have no live proxy (none read or claimed within the
    /// last 3 s) before new requests are refused at once with 503 `no-consumers` instead of
    /// waiting their whole deadline for a 504.
    #[arg(long, env = "NO_CONSUMER_GRACE", default_value = "3s", value_parser = parse_positive_duration)]
    pub no_consumer_grace: Duration,

    /// Largest accepted request body in bytes (413 above).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// Expiry kept on the reply stream while this instance lives, so streams of dead instances vanish.
    #[arg(long, env = "REPLY_STREAM_TTL", default_value = "60s", value_parser = parse_positive_duration)]
    pub reply_stream_ttl: Duration,

    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Per-client rate limit on the API routes: `off`, or `<n>/s`, `<n>/m`, `<n>/h`. Over it a
    /// client gets 429 + Retry-After. Health, metrics and Swagger are never limited.
    #[arg(long, env = "RATE_LIMIT", default_value = "off", value_parser = RateLimitSetting::parse)]
    pub rate_limit: RateLimitSetting,

    /// Requests a client may send at once before the rate applies (default: the rate's count).
    #[arg(long, env = "RATE_LIMIT_BURST", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub rate_limit_burst: Option<u32>,

    /// Header whose value identifies a client (e.g. `X-Api-Key` set by a gateway in front);
    /// requests without it are keyed by client IP.
    #[arg(long, env = "RATE_LIMIT_KEY_HEADER", value_parser = parse_header_name)]
    pub rate_limit_key_header: Option<HeaderName>,

    /// Most clients tracked at once; clients first seen beyond it share one bucket.
    #[arg(long, env = "RATE_LIMIT_MAX_KEYS", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub rate_limit_max_keys: u32,

    /// Forwarded routes: comma-separated `PREFIX=QUEUE` pairs, e.g. `/api=orders`. Any request
    /// under a prefix (whole path segments) goes through the stream `<QUEUE>-requests` to a
    /// proxy started with `QUEUE=<QUEUE>` and `UPSTREAM_URL`. Empty: none.
    #[arg(long, env = "ROUTES", default_value = "")]
    pub routes: String,

    /// Bytes of forwarded request bodies this instance holds at once (they are read whole
    /// before being queued); a request whose body would exceed it gets 503 + Retry-After at
    /// once, before its body is read. Bounds the ingress's memory whatever the clients send.
    #[arg(long, env = "FORWARD_BUFFER_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=(1u64 << 40)))]
    pub forward_buffer_bytes: u64,

    /// TOML file of forwarded routes with per-route settings (timeout, max_body_bytes,
    /// methods, strip_prefix); see docs/forwarding.md. Used together with ROUTES.
    #[arg(long, env = "ROUTES_FILE")]
    pub routes_file: Option<std::path::PathBuf>,

    /// Comma-separated CIDRs of proxies (load balancers) whose `X-Forwarded-For` names the
    /// client; from any other peer the header is ignored. Empty: trust nobody.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = TrustedProxies::parse)]
    pub trusted_proxies: TrustedProxies,

    /// Print the Redis ACL rules this configuration needs (one line, to put after
    /// `ACL SETUSER <user> on >password`) and exit without connecting. See docs/security.md.
    #[arg(long)]
    pub print_redis_acl: bool,
}

fn parse_header_name(value: &str) -> Result<HeaderName, String> {
    HeaderName::try_from(value.trim())
        .map_err(|_| format!("`{value}` is not a valid header name; expected e.g. `X-Api-Key`"))
}

impl IngressConfig {
    /// The forwarded routes of ROUTES_FILE and ROUTES, checked.
    pub fn forwarded_routes(&self) -> Result<Vec<crate::forwarding::RouteConfig>, String> {
        let mut routes = match &self.routes_file {
            Some(path) => crate::forwarding::read_routes_file(path)?,
            None => Vec::new(),
        };
        routes.extend(crate::forwarding::parse_routes_env(&self.routes)?);
        crate::forwarding::validate(&routes)?;
        if let Some(route) = routes
            .iter()
            .find(|route| route.max_body_bytes as u64 > self.forward_buffer_bytes)
        {
            return Err(format!(
                "route `{}`: max_body_bytes ({}) is larger than FORWARD_BUFFER_BYTES ({}), so such a body could never be taken; lower it or raise FORWARD_BUFFER_BYTES",
                route.prefix, route.max_body_bytes, self.forward_buffer_bytes
            ));
        }
        Ok(routes)
    }

    /// The least-privilege Redis ACL rules of this configuration (`--print-redis-acl`),
    /// forwarded routes' queues included.
    pub fn redis_acl_rules(&self) -> Result<String, String> {
        let route_streams: Vec<String> = self
            .forwarded_routes()?
            .iter()
            .map(|route| route.stream())
            .collect();
        Ok(shared::acl::redis_acl_rules(
            &self.redis,
            shared::acl::Role::Ingress {
                reply_stream_prefix: &self.reply_stream_prefix,
                route_streams: &route_streams,
            },
        ))
    }

    /// The instance id, generated once when not configured.
    pub fn resolved_instance_id(&self) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(|| shared::config::unique_process_name("ingress"))
    }
}

impl CheckSettings for IngressConfig {
    fn check_settings(&self) -> Result<(), String> {
        self.redis.check_settings()?;
        self.forwarded_routes().map(|_| ())
    }
}
