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

/// Builds a client for the Redis described by `settings` (URL, password file, TLS files) and
/// starts connecting in the background.
///
/// The client reconnects forever with exponential backoff capped at 1 s, so after a Redis
/// outage both services resume within about a second of Redis returning, without a restart.
/// The first connection attempt is not awaited: a service starts (and reports not-ready)
/// while Redis is still coming up, instead of crash-looping. Every command times out after
/// REDIS_COMMAND_TIMEOUT, which bounds how long a caller can hang when Redis stalls.
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
            // Nagle stays on (fred's default): Redis answers every command, so its ACK rides on
            // the reply and a pipelined write waits at most for the reply before it. Turning
            // it off showed no gain at c=1 and ~9 % less weather throughput at c=64 in an
            // interleaved A/B (docs/benchmarks.md, "Runtime").
            conn.unresponsive = UnresponsiveConfig {
                max_timeout: Some(Duration::from_secs(10)),
                interval: Duration::from_secs(1),
            };
        })
        .with_performance_config(|perf| {
            perf.default_command_timeout = settings.redis_command_timeout;
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

/// How long a clean-up call at shutdown may take (deleting the reply stream, leaving the group,
/// QUIT): a service asked to stop must not wait for a Redis that does not answer.
pub const SHUTDOWN_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs a best-effort clean-up call at shutdown: skipped at once when `client` is not
/// connected (fred would hold it for a reconnect), and given up after
/// [`SHUTDOWN_CALL_TIMEOUT`]. `None` when skipped or timed out; the caller logs nothing more,
/// as what it cleans up expires or is reclaimed anyway.
pub async fn at_shutdown<T>(
    client: &Client,
    call: impl std::future::Future<Output = T>,
) -> Option<T> {
    if !client.is_connected() {
        return None;
    }
    tokio::time::timeout(SHUTDOWN_CALL_TIMEOUT, call).await.ok()
}

/// Closes `client` at shutdown without waiting on a Redis that does not answer.
pub async fn quit(client: &Client) {
    let _ = at_shutdown(client, client.quit()).await;
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

/// Error codes with which Redis refuses a command it did not run, and which may pass when the
/// command is repeated: `LOADING` (replaying its AOF after a restart), `BUSY` (a script or
/// module command runs), `TRYAGAIN` and `CLUSTERDOWN` (cluster resharding or failing over),
/// `MASTERDOWN` (a replica lost its primary), `READONLY` (we reached a replica, e.g. during a
/// fail-over), `NOREPLICAS` (`min-replicas-to-write` not met), `UNBLOCKED` (a blocking command
/// was released by `CLIENT UNBLOCK`).
pub const TRANSIENT_CODES: &[&str] = &[
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "NOREPLICAS",
    "UNBLOCKED",
];

/// The error code of a Redis error reply: its first word (`LOADING`, `OOM`, `WRONGTYPE`…).
/// Replies to scripts keep the code of the command that failed inside them.
pub fn error_code(err: &Error) -> &str {
    err.details().split_whitespace().next().unwrap_or("")
}

/// True when Redis refused a write because it is over `maxmemory` (`OOM`).
pub fn is_oom(err: &Error) -> bool {
    error_code(err) == "OOM"
}

/// True for failures that may pass if the call is repeated: connection loss, timeouts, and
/// Redis answering one of the [`TRANSIENT_CODES`]. Logical errors (`WRONGTYPE`, `NOGROUP`,
/// syntax, `OOM`) are not: repeating them within milliseconds changes nothing.
pub fn is_transient(err: &Error) -> bool {
    use fred::error::ErrorKind;
    match err.kind() {
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Backpressure => true,
        _ => TRANSIENT_CODES.contains(&error_code(err)),
    }
}

/// What a failed write tells about its effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The command never ran: the client refused to send it (not connected, fail-fast), or
    /// Redis answered an error (it checks before it executes). Safe to report "not done".
    NotDone,
    /// The command was sent but no answer came (timeout, connection lost while waiting): Redis
    /// may or may not have run it.
    Unknown,
}

/// Classifies a failed write. fred reports a command refused before sending (the client is not
/// connected and the command is fail-fast) as `Canceled`, client-side backpressure as
/// `Backpressure`, and an error reply from Redis with the reply's code (Redis checks before it
/// executes, so the command did not run). Timeouts, I/O errors on a command already written and
/// answers that cannot be parsed leave the outcome unknown.
pub fn write_outcome(err: &Error) -> WriteOutcome {
    use fred::error::ErrorKind;
    match err.kind() {
        // Sent (or possibly sent) and then no usable answer.
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Protocol | ErrorKind::Parse => {
            WriteOutcome::Unknown
        }
        // Refused before sending, or an error reply from Redis: the command did not run.
        _ => WriteOutcome::NotDone,
    }
}

/// Options for a write whose repetition would duplicate it (the ingress's XADD of a request):
/// never sent while disconnected (fails at once instead of waiting in fred's buffer for a
/// reconnect), and never re-sent by fred after a reconnect (at most one attempt). The caller
/// decides what to do with an unknown outcome.
pub fn write_once_options(timeout: std::time::Duration) -> fred::types::config::Options {
    fred::types::config::Options {
        max_attempts: Some(1),
        fail_fast: true,
        timeout: Some(timeout),
        ..Default::default()
    }
}

/// Whether Redis refuses writes for lack of memory (`OOM`), as this process last saw it. Set by
/// a write that failed with OOM, cleared by one that succeeded; readiness and the error a
/// caller gets both say "out of memory" instead of a generic "unreachable".
#[derive(Debug, Default)]
pub struct MemoryState {
    out_of_memory: std::sync::atomic::AtomicBool,
}

impl MemoryState {
    /// Records what a write's outcome says about Redis's memory.
    pub fn observe<T>(&self, result: &Result<T, Error>) {
        let oom = match result {
            Ok(_) => false,
            Err(err) if is_oom(err) => true,
            Err(_) => return, // says nothing about memory
        };
        let was = self
            .out_of_memory
            .swap(oom, std::sync::atomic::Ordering::Relaxed);
        if oom && !was {
            tracing::warn!("Redis refuses writes: it is out of memory (maxmemory reached)");
        } else if was && !oom {
            tracing::info!("Redis accepts writes again");
        }
    }

    /// Whether the last write Redis answered was refused for lack of memory.
    pub fn is_out_of_memory(&self) -> bool {
        self.out_of_memory
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Whether the connection of a client is up, learnt from fred's connection events the moment
/// they happen. fred's own `is_connected` keeps saying "connected" while it waits to start its
/// reconnection loop, and a command sent in that window waits for a reconnect (up to the
/// command timeout); this watch says "down" from the very error that closed the connection,
/// so a caller is refused at once instead.
#[derive(Debug)]
pub struct ConnectionWatch {
    up: tokio::sync::watch::Sender<bool>,
}

impl ConnectionWatch {
    /// Starts watching `client`'s connection events (one listener task for errors and
    /// reconnects, so they are seen in order).
    pub fn start(client: &Client) -> std::sync::Arc<Self> {
        let (up, _) = tokio::sync::watch::channel(false);
        let watch = std::sync::Arc::new(ConnectionWatch { up });
        // One task for both kinds of event, so they are seen in the order they happened.
        // (fred's `on_any` panics in its select! once the client quits and every channel
        // closes; this loop just ends.)
        let mut errors = client.error_rx();
        let mut reconnects = client.reconnect_rx();
        let listener = watch.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                tokio::select! {
                    event = errors.recv() => match event {
                        Ok((error, _server)) => {
                            use fred::error::ErrorKind;
                            if matches!(error.kind(), ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Timeout) {
                                listener.up.send_replace(false);
                            }
                        }
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                    event = reconnects.recv() => match event {
                        Ok(_server) => {
                            listener.up.send_replace(true);
                        }
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        });
        // Connected before the listener started: its reconnect event was missed.
        if client.is_connected() {
            watch.up.send_replace(true);
        }
        watch
    }

    /// Whether the connection is up now.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Resolves once the connection has been down for `grace` without a break. For a caller
    /// whose write's outcome is unknown: while the connection is up its reply may still come;
    /// once it has been down for a while, waiting on is pointless.
    pub async fn down_for(&self, grace: std::time::Duration) {
        let mut state = self.up.subscribe();
        loop {
            if state.wait_for(|up| !*up).await.is_err() {
                return std::future::pending().await; // never: the sender lives in self
            }
            if tokio::time::timeout(grace, state.wait_for(|up| *up))
                .await
                .is_err()
            {
                return;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::ErrorKind;

    fn reply(message: &str) -> Error {
        // What fred makes of an error reply (see fred's `pretty_error`).
        Error::new(ErrorKind::Unknown, message.to_string())
    }

    #[test]
    fn loading_is_transient() {
        assert!(is_transient(&reply(
            "LOADING Redis is loading the dataset in memory"
        )));
    }

    #[test]
    fn busy_is_transient_but_busygroup_is_not() {
        assert!(is_transient(&reply(
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."
        )));
        assert!(!is_transient(&reply(
            "BUSYGROUP Consumer Group name already exists"
        )));
    }

    #[test]
    fn tryagain_is_transient() {
        assert!(is_transient(&reply(
            "TRYAGAIN Multiple keys request during rehashing of slot"
        )));
    }

    #[test]
    fn clusterdown_is_transient() {
        assert!(is_transient(&Error::new(
            ErrorKind::Cluster,
            "CLUSTERDOWN The cluster is down"
        )));
    }

    #[test]
    fn masterdown_is_transient() {
        assert!(is_transient(&reply(
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."
        )));
    }

    #[test]
    fn readonly_is_transient() {
        assert!(is_transient(&reply(
            "READONLY You can't write against a read only replica."
        )));
    }

    #[test]
    fn noreplicas_is_transient() {
        assert!(is_transient(&reply(
            "NOREPLICAS Not enough good replicas to write."
        )));
    }

    #[test]
    fn unblocked_is_transient() {
        assert!(is_transient(&reply(
            "UNBLOCKED client unblocked via CLIENT UNBLOCK"
        )));
    }

    #[test]
    fn connection_loss_and_timeouts_are_transient() {
        assert!(is_transient(&Error::new(
            ErrorKind::IO,
            "Connection closed."
        )));
        assert!(is_transient(&Error::new(
            ErrorKind::Timeout,
            "Request timed out."
        )));
    }

    #[test]
    fn logical_errors_and_oom_are_not_transient() {
        assert!(!is_transient(&Error::new(
            ErrorKind::InvalidArgument,
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        )));
        assert!(!is_transient(&reply(
            "NOGROUP No such key 'x' or consumer group 'g'"
        )));
        let oom = reply("OOM command not allowed when used memory > 'maxmemory'.");
        assert!(!is_transient(&oom));
        assert!(is_oom(&oom));
    }

    #[test]
    fn a_refused_write_did_not_happen_but_a_timed_out_one_may_have() {
        assert_eq!(
            write_outcome(&Error::new(
                ErrorKind::Canceled,
                "Connection closed unexpectedly."
            )),
            WriteOutcome::NotDone
        );
        assert_eq!(
            write_outcome(&reply("LOADING Redis is loading the dataset in memory")),
            WriteOutcome::NotDone
        );
        assert_eq!(
            write_outcome(&Error::new(ErrorKind::Timeout, "Request timed out.")),
            WriteOutcome::Unknown
        );
        assert_eq!(
            write_outcome(&Error::new(ErrorKind::IO, "Connection closed.")),
            WriteOutcome::Unknown
        );
    }
}
