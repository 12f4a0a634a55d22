//! Redis connections and the consumer-group bookkeeping both services need.
//!
//! fred has two traps this module exists to avoid (see docs/architecture.md):
//! it does not reconnect unless a policy is set, and a blocking command (XREAD BLOCK,
//! XREADGROUP BLOCK) holds its connection, so every other command on that client waits
//! behind it. Every client is therefore built here, with a reconnect policy, and each
//! blocking reader gets a client of its own via [`connect`].

use std::time::Duration;

use fred::prelude::*;
use fred::types::config::UnresponsiveConfig;

use crate::config::RedisSettings;
use crate::redis_problems;
use crate::secrets::redact_url;

/// Timeout for an ordinary (non-blocking) command. A healthy Redis answers in well under a
/// millisecond; this bounds how long a caller can hang when Redis stalls.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds a client for the Redis described by `settings` (URL, password file, TLS files) and
/// starts connecting in the background.
///
/// The client reconnects forever with exponential backoff capped at 1 s, so after a Redis
/// outage both services resume within about a second of Redis returning, without a restart. The first connection attempt is not awaited: a service starts (and reports
/// not-ready) while Redis is still coming up, instead of crash-looping.
///
/// Failed attempts are reported through [`crate::redis_problems`]: counted, and logged once
/// per cause (with the URL's password cut out), not once per retry.
pub fn connect(settings: &RedisSettings) -> Result<Client, Error> {
    let mut config = settings
        .client_config()
        .map_err(|message| Error::new(fred::error::ErrorKind::Config, message))?;
    // Retry the very first connection too instead of failing the process.
    config.fail_fast = false;
    let client = Builder::from_config(config)
        .with_connection_config(|conn| {
            conn.connection_timeout = Duration::from_secs(3);
            conn.internal_command_timeout = Duration::from_secs(3);
            conn.max_command_attempts = 3;
            conn.unresponsive = UnresponsiveConfig {
                max_timeout: Some(Duration::from_secs(10)),
                interval: Duration::from_secs(1),
            };
        })
        .with_performance_config(|perf| {
            perf.default_command_timeout = COMMAND_TIMEOUT;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
        .build()?;
    report_connection_problems(&client, redact_url(&settings.redis_url));
    // The connection task runs until `quit`; errors surface on commands and in readiness.
    let _connection_task = client.connect();
    Ok(client)
}

/// Feeds the client's connection events to [`crate::redis_problems`]. The listener tasks end
/// when the client is dropped or quits.
fn report_connection_problems(client: &Client, redis_url: String) {
    let _errors = client.on_error(move |(error, _server)| {
        redis_problems::record_failure(&error, &redis_url);
        async { Ok(()) }
    });
    let _connected = client.on_reconnect(|_server| {
        redis_problems::record_connected();
        async { Ok(()) }
    });
}

/// Waits up to `timeout` for the client's first connection. Used at start-up only to log
/// clearly whether Redis answered; the service runs either way.
pub async fn wait_connected(client: &Client, timeout: Duration) -> bool {
    if client.is_connected() {
        return true;
    }
    matches!(
        tokio::time::timeout(timeout, client.wait_for_connect()).await,
        Ok(Ok(()))
    )
}

/// Creates the consumer group (and the stream, MKSTREAM) if it does not exist yet.
///
/// The group starts at id `0`, so entries written before the first proxy ever started are
/// still delivered. An existing group (BUSYGROUP) is left as it is. Called at start-up by both
/// services and again whenever a reader meets NOGROUP (Redis restarted without persistence).
pub async fn ensure_group(client: &Client, stream: &str, group: &str) -> Result<(), Error> {
    match client
        .xgroup_create::<(), _, _, _>(stream, group, "0", true)
        .await
    {
        Ok(()) => {
            tracing::info!(stream, group, "created consumer group");
            Ok(())
        }
        Err(err) if err.details().starts_with("BUSYGROUP") => Ok(()),
        Err(err) => Err(err),
    }
}

/// True when Redis answered that the stream or its consumer group does not exist.
pub fn is_nogroup(err: &Error) -> bool {
    err.details().starts_with("NOGROUP")
}

/// True for failures that may pass if the call is repeated: connection loss, timeouts, and
/// Redis answering that it is not ready yet (`LOADING` while replaying its AOF, `BUSY`,
/// `TRYAGAIN`, `MASTERDOWN`, `READONLY` during a fail-over). Logical errors (`WRONGTYPE`,
/// `NOGROUP`, syntax) are not retried.
pub fn is_transient(err: &Error) -> bool {
    use fred::error::ErrorKind;
    match err.kind() {
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Backpressure => true,
        _ => {
            let details = err.details();
            [
                "LOADING",
                "BUSY",
                "TRYAGAIN",
                "MASTERDOWN",
                "READONLY",
                "CLUSTERDOWN",
            ]
            .iter()
            .any(|prefix| details.starts_with(prefix))
        }
    }
}

/// Counts a failed Redis call in `redis_errors_total{operation}`.
pub fn record_error(operation: &'static str, err: &Error) {
    metrics::counter!("redis_errors_total", "operation" => operation).increment(1);
    tracing::debug!(operation, error = %err, "redis call failed");
}

/// Measures a PING round trip, for health endpoints.
pub async fn ping_ms(client: &Client, timeout: Duration) -> Result<f64, String> {
    if !client.is_connected() {
        return Err(match redis_problems::latest() {
            Some(cause) => format!("not connected to Redis: {}", cause.summary()),
            None => "not connected to Redis".into(),
        });
    }
    let started = std::time::Instant::now();
    match tokio::time::timeout(timeout, client.ping::<String>(None)).await {
        Ok(Ok(_)) => Ok(started.elapsed().as_secs_f64() * 1000.0),
        Ok(Err(err)) => Err(format!("PING failed: {err}")),
        Err(_) => Err(format!("PING timed out after {} ms", timeout.as_millis())),
    }
}
