//! Configuration pieces used by both services.
//!
//! Every setting is a clap flag backed by an environment variable (operators script against
//! the variable names). Values are validated while parsing so that a bad setting stops the
//! process with one line naming it, before anything starts.

use std::time::Duration;

use clap::Args;

/// Where Redis is and which stream/group carries the requests.
#[derive(Debug, Clone, Args)]
pub struct RedisSettings {
    /// Redis URL: redis://host:port, rediss:// for TLS, redis://user:password@host:port for ACL users.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", value_parser = parse_redis_url)]
    pub redis_url: String,

    /// Stream the ingress writes requests to and the proxies read from.
    #[arg(long, env = "REQUEST_STREAM", default_value = "weather-requests", value_parser = parse_key)]
    pub request_stream: String,

    /// Consumer group the proxies read the request stream through.
    #[arg(long, env = "CONSUMER_GROUP", default_value = "processing-group", value_parser = parse_key)]
    pub consumer_group: String,
}

/// Thresholds of the circuit breaker around Redis.
#[derive(Debug, Clone, Args)]
pub struct BreakerArgs {
    /// Consecutive failed Redis calls that open the circuit (calls then fail at once with 503).
    #[arg(long, env = "BREAKER_FAILURE_THRESHOLD", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_failure_threshold: u32,

    /// How long the circuit stays open before one probe call is let through. A reconnect
    /// closes it at once.
    #[arg(long, env = "BREAKER_OPEN_DURATION", default_value = "1s", value_parser = parse_positive_duration)]
    pub breaker_open_duration: Duration,
}

impl BreakerArgs {
    /// The settings for [`crate::resilience::CircuitBreaker`].
    pub fn settings(&self) -> crate::resilience::BreakerSettings {
        crate::resilience::BreakerSettings {
            failure_threshold: self.breaker_failure_threshold,
            open_duration: self.breaker_open_duration,
        }
    }
}

/// Limits of the HTTP server against slow, silent and too many clients (see
/// [`crate::server`]): without them a few hundred such clients hold every file descriptor.
#[derive(Debug, Clone, Args)]
pub struct HttpServerArgs {
    /// Longest a client may take to send a request's headers, counted from connecting (or from
    /// the first byte of a later request on a kept-alive connection); then it is disconnected.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub http_header_read_timeout: Duration,

    /// Longest a client may take to send a request body after its headers; then it gets 408
    /// and is disconnected.
    #[arg(long, env = "HTTP_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub http_body_read_timeout: Duration,

    /// How long a kept-alive connection may sit idle between requests (or leave a response
    /// untaken) before it is closed. Keep it above the idle timeout of a load balancer in front.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub http_idle_timeout: Duration,

    /// Client connections open at once; further ones wait in the listen backlog until one
    /// closes. Keep it well below the open-files limit (`ulimit -n`).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
}

impl HttpServerArgs {
    /// The settings for [`crate::server::serve`].
    pub fn settings(&self) -> crate::server::ServerSettings {
        crate::server::ServerSettings {
            header_read_timeout: self.http_header_read_timeout,
            body_read_timeout: self.http_body_read_timeout,
            idle_timeout: self.http_idle_timeout,
            max_connections: self.max_connections as usize,
        }
    }
}

/// How the service writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A default name for this process, unique among running ones: `<hostname>-<pid>-<random>`.
/// In Kubernetes the hostname is the pod name, which makes the name easy to trace back.
pub fn unique_process_name(fallback_host: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| fallback_host.to_string());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..6])
}

/// Parses a duration such as `30s`, `250ms` or `2m`; a bare number means seconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(value)
        .map_err(|e| format!("expected a duration like 30s, 500ms or 2m ({e})"))
}

/// Like [`parse_duration`] but rejects zero, for timeouts that must allow some time.
pub fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(duration)
}

/// Checks that the URL is one fred can connect with, so a typo fails at start-up, not later.
fn parse_redis_url(value: &str) -> Result<String, String> {
    fred::prelude::Config::from_url(value)
        .map(|_| value.to_string())
        .map_err(|e| {
            format!(
                "not a Redis URL ({}); expected redis://[user:password@]host:port",
                e.details()
            )
        })
}

/// Stream and group names: non-empty, printable, no spaces (they are used as Redis keys).
fn parse_key(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > 200 {
        return Err("must be 1 to 200 characters".into());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(value.to_string())
}

/// Parses argv/env into `T`, printing a one-line error naming the setting and exiting with
/// status 2 on bad configuration (help and version still print normally).
pub fn parse_or_exit<T: clap::Parser>(service: &str) -> T {
    match T::try_parse() {
        Ok(config) => config,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                err.exit();
            }
            let rendered = err.to_string();
            let first_line = rendered
                .lines()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("invalid configuration")
                .trim_start_matches("error: ");
            eprintln!("{service}: invalid configuration: {first_line}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn redis_urls_are_checked() {
        assert!(parse_redis_url("redis://127.0.0.1:6379").is_ok());
        assert!(parse_redis_url("redis://user:secret@redis:6380/0").is_ok());
        assert!(parse_redis_url("not a url").is_err());
    }

    #[derive(clap::Parser)]
    struct HttpOnly {
        #[command(flatten)]
        http: HttpServerArgs,
    }

    #[test]
    fn http_server_defaults_match_the_server_defaults() {
        use clap::Parser;
        let parsed = HttpOnly::try_parse_from(["test"]).expect("defaults parse");
        assert_eq!(
            parsed.http.settings(),
            crate::server::ServerSettings::default()
        );
        assert!(HttpOnly::try_parse_from(["test", "--max-connections", "0"]).is_err());
        assert!(HttpOnly::try_parse_from(["test", "--http-idle-timeout", "0s"]).is_err());
    }

    #[test]
    fn keys_reject_blank_and_spaces() {
        assert!(parse_key("weather-requests").is_ok());
        assert!(parse_key("").is_err());
        assert!(parse_key("a b").is_err());
    }
}
