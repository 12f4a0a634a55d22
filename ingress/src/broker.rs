//! The stream client: one call = register a waiter, write the request, await the reply.
//!
//! The write goes through `shared/lua/enqueue.lua` ([`Enqueuer`]): it checks that this
//! instance's reply stream exists (re-creating it and failing the requests Redis lost if not),
//! refuses past the backlog limit, and appends the entry, atomically. A write whose outcome is
//! unknown (sent, then a timeout or a lost connection) is never repeated and never reported as
//! "not queued": the caller keeps waiting for the reply it may still get.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fred::prelude::*;
use shared::protocol::{Operation, ReplyEntry, ReplyStatus, RequestEntry, unix_ms};
use shared::redis::{
    ConnectionWatch, MemoryState, WriteOutcome, is_oom, record_error, write_once_options,
    write_outcome,
};
use shared::resilience::{Attempt, CircuitBreaker, GuardedError, guarded};
use shared::streams::{EntryId, StreamStats};
use shared::telemetry::LogLimiter;
use tokio_util::sync::CancellationToken;

use crate::replies::{Answer, PendingReplies};

/// How long a caller whose write's outcome is unknown keeps waiting once the connection to
/// Redis is down: its reply cannot come through a dead connection, so after this it is told
/// at once instead of at its deadline.
const UNCONFIRMED_GRACE: Duration = Duration::from_secs(1);

/// Why a call produced no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("request id `{0}` is already in flight on this instance")]
    DuplicateRequestId(String),
    #[error("Redis is unreachable: {0}")]
    RedisUnavailable(String),
    #[error("Redis is out of memory and refuses writes")]
    RedisOutOfMemory,
    #[error("the circuit breaker around Redis is open; retry in {0:?}")]
    CircuitOpen(Duration),
    #[error("the request stream holds {0} entries, the backlog limit")]
    BacklogFull(u64),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("Redis did not confirm the write ({why}) and no reply came")]
    Unconfirmed { timeout: Duration, why: String },
    #[error("Redis lost its data while the request was queued")]
    DataLost,
    #[error("the reply could not be read: {0}")]
    InvalidReply(String),
    #[error("the instance stopped waiting while shutting down")]
    ShuttingDown,
}

impl CallError {
    /// Label for `ingress_round_trip_seconds{outcome}`.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::DuplicateRequestId(_) => "duplicate_id",
            CallError::RedisUnavailable(_) => "redis_unavailable",
            CallError::RedisOutOfMemory => "redis_out_of_memory",
            CallError::CircuitOpen(_) => "circuit_open",
            CallError::BacklogFull(_) => "backlog_full",
            CallError::Timeout(_) => "timeout",
            CallError::Unconfirmed { .. } => "unconfirmed",
            CallError::DataLost => "data_lost",
            CallError::InvalidReply(_) => "invalid_reply",
            CallError::ShuttingDown => "shutting_down",
        }
    }
}

/// Where a request goes: the request stream of a queue, its backlog limit and its sampled state.
#[derive(Clone)]
pub struct Queue {
    /// The request stream (`REQUEST_STREAM`).
    pub stream: Arc<str>,
    /// Entries the stream may hold before writes are refused (`MAX_BACKLOG`).
    pub max_backlog: u64,
    /// Length, lag, drain rate and consumers, sampled.
    pub stats: Arc<StreamStats>,
}

/// A request ready to be sent.
pub struct Call<'a> {
    pub request_id: &'a str,
    pub queue: &'a Queue,
    pub operation: Operation,
    /// JSON for the weather operations; the request body for `http`.
    pub payload: bytes::Bytes,
    pub timeout: Duration,
    pub traceparent: Option<String>,
    /// Method, path and headers of a forwarded request.
    pub http: Option<shared::protocol::HttpRequestHead>,
    /// Held until the request is in Redis (or refused), then dropped: e.g. the forwarded
    /// body's share of FORWARD_BUFFER_BYTES.
    pub hold: Option<Box<dyn std::any::Any + Send>>,
}

/// Unique reply tokens for this process: a random prefix drawn at start (so a restarted
/// instance with the same INSTANCE_ID never repeats one) and a counter.
struct Tokens {
    prefix: String,
    next: AtomicU64,
}

impl Tokens {
    fn new() -> Self {
        Tokens {
            prefix: shared::protocol::token_prefix(),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}-{:x}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// One request for the enqueue script: its stream, that stream's backlog limit, its fields.
type NewEntry<'a> = (&'a str, u64, &'a [(&'static str, bytes::Bytes)]);

/// What the enqueue script did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Written as this entry.
    Queued(EntryId),
    /// Refused: the request stream holds this many entries, at least the backlog limit.
    Full(u64),
}

/// Writes requests and keeps this instance's reply stream, both through
/// `shared/lua/enqueue.lua`. Cheap to clone.
#[derive(Clone)]
pub struct Enqueuer {
    inner: Arc<EnqueuerInner>,
}

struct EnqueuerInner {
    commands: Client,
    command_timeout: Duration,
    reply_stream: String,
    instance_id: String,
    reply_ttl: Duration,
    pending: Arc<PendingReplies>,
    memory: Arc<MemoryState>,
}

impl Enqueuer {
    /// An enqueuer writing requests whose replies go to `reply_stream`.
    pub fn new(
        commands: Client,
        command_timeout: Duration,
        reply_stream: &str,
        instance_id: &str,
        reply_ttl: Duration,
        pending: Arc<PendingReplies>,
        memory: Arc<MemoryState>,
    ) -> Self {
        Enqueuer {
            inner: Arc::new(EnqueuerInner {
                commands,
                command_timeout,
                reply_stream: reply_stream.to_string(),
                instance_id: instance_id.to_string(),
                reply_ttl,
                pending,
                memory,
            }),
        }
    }

    /// This instance's reply stream.
    pub fn reply_stream(&self) -> &str {
        &self.inner.reply_stream
    }

    /// Expiry kept on the reply stream.
    pub fn reply_ttl(&self) -> Duration {
        self.inner.reply_ttl
    }

    /// Runs the script for `requests` (stream, max backlog, fields). `refresh` also refreshes
    /// the reply stream's expiry. Returns one outcome per request; an error when the call
    /// itself failed (see [`write_outcome`] for what it means).
    async fn run(
        &self,
        requests: &[NewEntry<'_>],
        refresh: bool,
        timeout: Duration,
    ) -> Result<Vec<Result<Enqueued, Error>>, Error> {
        let inner = &self.inner;
        let mut keys = Vec::with_capacity(1 + requests.len());
        keys.push(Value::from(inner.reply_stream.as_str()));
        let mut args = Vec::with_capacity(3 + requests.len() * 16);
        args.push(Value::from(inner.instance_id.as_str()));
        args.push(Value::Integer(inner.reply_ttl.as_millis() as i64));
        args.push(Value::from_static_str(if refresh { "1" } else { "0" }));
        for (stream, max_backlog, fields) in requests {
            keys.push(Value::from(*stream));
            args.push(Value::Integer(*max_backlog as i64));
            args.push(Value::Integer(fields.len() as i64 * 2));
            for (field, value) in fields.iter() {
                args.push(Value::from_static_str(field));
                args.push(Value::Bytes(value.clone()));
            }
        }
        let reply: Vec<Value> = shared::scripts::eval(
            &shared::scripts::ENQUEUE,
            &inner.commands,
            &write_once_options(timeout),
            &keys,
            &args,
        )
        .await?;
        let mut results = reply.into_iter();
        let created = results.next().and_then(|value| value.as_string());
        let outcomes: Vec<Result<Enqueued, Error>> = results.map(enqueue_result).collect();
        if outcomes.len() != requests.len() {
            return Err(Error::new(
                fred::error::ErrorKind::Protocol,
                format!(
                    "the enqueue script answered {} results for {} requests",
                    outcomes.len(),
                    requests.len()
                ),
            ));
        }
        if let Some(marker) = created.filter(|id| id != "0") {
            self.reply_stream_recreated(&marker, &outcomes);
        }
        Ok(outcomes)
    }

    /// The script found the reply stream missing and re-created it: Redis lost its data (or
    /// the key). Requests written before this call are gone and replies to them were dropped,
    /// so their callers are told now instead of at their deadlines.
    fn reply_stream_recreated(&self, marker: &str, outcomes: &[Result<Enqueued, Error>]) {
        let first_queued = outcomes.iter().find_map(|outcome| match outcome {
            Ok(Enqueued::Queued(id)) => Some(*id),
            _ => None,
        });
        let before = first_queued.or_else(|| {
            marker
                .parse::<EntryId>()
                .ok()
                .map(|id| EntryId::at_ms(id.ms))
        });
        let failed = before.map_or(0, |before| self.inner.pending.lost(before));
        tracing::warn!(
            reply_stream = self.inner.reply_stream,
            failed_requests = failed,
            "reply stream was missing (Redis lost its data, or the key expired or was evicted); re-created it and failed the requests written before"
        );
        metrics::counter!("ingress_reply_stream_recreated_total").increment(1);
    }

    /// Writes one request unless its stream is at `max_backlog` (0: no limit).
    pub async fn enqueue(
        &self,
        stream: &str,
        max_backlog: u64,
        fields: &[(&'static str, bytes::Bytes)],
        timeout: Duration,
    ) -> Result<Enqueued, Error> {
        let result = match self
            .run(&[(stream, max_backlog, fields)], false, timeout)
            .await
        {
            Ok(mut outcomes) => outcomes.pop().unwrap_or_else(|| {
                Err(Error::new(
                    fred::error::ErrorKind::Protocol,
                    "the enqueue script answered no result",
                ))
            }),
            Err(err) => Err(err),
        };
        self.inner.memory.observe(&result);
        result
    }

    /// Removes a request nobody waits for any more (its caller had its 504) from `stream`, so
    /// no proxy spends a terminal on it: deleted before delivery, it is never read. One already
    /// in a terminal is unaffected (its processing stops at the deadline anyway). Not awaited
    /// by the caller.
    pub fn withdraw(&self, stream: &str, entry: EntryId) {
        let commands = self.inner.commands.clone();
        let stream = stream.to_string();
        tokio::spawn(async move {
            if let Err(err) = commands
                .xdel::<u64, _, _>(stream.as_str(), entry.to_string())
                .await
            {
                record_error("xdel", &err);
            }
        });
    }

    /// Checks the reply stream exists (re-creating it and failing lost requests if not) and
    /// refreshes its expiry. While Redis is out of memory it also probes with a real write, so
    /// the out-of-memory state clears as soon as Redis accepts writes again.
    pub async fn keep_reply_stream(&self) -> Result<(), Error> {
        self.run(&[], true, self.inner.command_timeout).await?;
        if self.inner.memory.is_out_of_memory() {
            let probe: Result<String, Error> = self
                .inner
                .commands
                .xadd(
                    self.inner.reply_stream.as_str(),
                    true,
                    None,
                    "*",
                    vec![("created_by", self.inner.instance_id.as_str())],
                )
                .await;
            self.inner.memory.observe(&probe);
        }
        Ok(())
    }
}

/// Reads one per-request element of the script's answer.
fn enqueue_result(value: Value) -> Result<Enqueued, Error> {
    let text = value.as_string().unwrap_or_default();
    if let Some(length) = text.strip_prefix("full ") {
        return Ok(Enqueued::Full(length.parse().unwrap_or(0)));
    }
    if let Some(message) = text.strip_prefix("error: ") {
        return Err(Error::new(
            fred::error::ErrorKind::Unknown,
            message.to_string(),
        ));
    }
    text.parse::<EntryId>()
        .map(Enqueued::Queued)
        .map_err(|why| {
            Error::new(
                fred::error::ErrorKind::Protocol,
                format!("the enqueue script answered an unexpected value: {why}"),
            )
        })
}

/// Which failures of the request write may be retried: only those where Redis refused the
/// write (it did not run) for a passing reason (LOADING, READONLY…). A write whose outcome is
/// unknown is never repeated — it may have been queued, and a second copy would be processed
/// twice. A write not even sent (not connected) fails at once: the caller gets its 503 now.
fn classify_enqueue(err: &Error) -> Attempt {
    use fred::error::ErrorKind;
    match write_outcome(err) {
        WriteOutcome::Unknown => Attempt::GiveUp,
        WriteOutcome::NotDone
            if matches!(err.kind(), ErrorKind::Canceled | ErrorKind::Backpressure) =>
        {
            Attempt::GiveUp
        }
        WriteOutcome::NotDone if shared::redis::is_transient(err) => Attempt::Retry,
        WriteOutcome::NotDone => Attempt::Answered,
    }
}

/// Sends requests to a request stream and awaits their replies on this instance's stream.
#[derive(Clone)]
pub struct StreamClient {
    connection: Arc<ConnectionWatch>,
    enqueuer: Enqueuer,
    pending: Arc<PendingReplies>,
    breaker: Arc<CircuitBreaker>,
    abandon: CancellationToken,
    tokens: Arc<Tokens>,
}

impl StreamClient {
    /// `abandon` is cancelled when the drain timeout passes: waiters still waiting give up.
    pub fn new(
        connection: Arc<ConnectionWatch>,
        enqueuer: Enqueuer,
        pending: Arc<PendingReplies>,
        breaker: Arc<CircuitBreaker>,
        abandon: CancellationToken,
    ) -> Self {
        StreamClient {
            connection,
            enqueuer,
            pending,
            breaker,
            abandon,
            tokens: Arc::new(Tokens::new()),
        }
    }

    /// Sends one request and waits for its reply until `call.timeout` passes.
    pub async fn call(&self, call: Call<'_>) -> Result<ReplyEntry, CallError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + call.timeout;
        let operation = call.operation.as_str();
        let result = self.send_and_wait(call, deadline).await;
        let outcome = match &result {
            Ok(reply) if matches!(reply.status, ReplyStatus::Ok) => "ok",
            Ok(_) => "proxy_error",
            Err(err) => err.outcome(),
        };
        metrics::histogram!("ingress_round_trip_seconds", "operation" => operation, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn send_and_wait(
        &self,
        call: Call<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<ReplyEntry, CallError> {
        static UNCONFIRMED: LogLimiter = LogLimiter::new(5);
        // Known down: refuse at once, nothing is sent (fred would hold the command for a
        // reconnect, up to the command timeout).
        if !self.connection.is_up() {
            self.breaker.allow().map(|permit| permit.failure()).ok();
            return Err(CallError::RedisUnavailable(
                "not connected to Redis".to_string(),
            ));
        }
        // Waiter first, then the request: an instant reply must find somebody waiting.
        let mut waiter = self
            .pending
            .register(call.request_id, self.tokens.next())
            .map_err(|_| CallError::DuplicateRequestId(call.request_id.to_string()))?;
        let entry = RequestEntry {
            request_id: call.request_id.to_string(),
            token: Some(waiter.token().to_string()),
            reply_to: self.enqueuer.reply_stream().to_string(),
            deadline_ms: unix_ms(SystemTime::now()) + call.timeout.as_millis() as u64,
            operation: call.operation.as_str().to_string(),
            payload: call.payload,
            traceparent: call.traceparent,
            http: call.http,
        };
        let fields = entry.to_fields();
        let queue = call.queue;
        // Refusals (Redis LOADING, READONLY…) are retried with backoff within the deadline;
        // the breaker fails the call at once while Redis is known to be down.
        let write = guarded(&self.breaker, deadline, classify_enqueue, || {
            let timeout = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(self.enqueuer.inner.command_timeout);
            self.enqueuer.enqueue(
                &queue.stream,
                queue.max_backlog,
                &fields,
                timeout.max(Duration::from_millis(1)),
            )
        });
        // A write handed to fred just before the connection dropped waits there for a
        // reconnect: once the connection has stayed down for a moment, stop waiting for it.
        let write = tokio::select! {
            write = write => write,
            _ = self.connection.down_for(UNCONFIRMED_GRACE) => Err(GuardedError::Failed(Error::new(
                fred::error::ErrorKind::IO,
                "the connection to Redis was lost while the write was under way",
            ))),
        };
        let mut unconfirmed = None;
        let mut written = None;
        match write {
            Ok(Enqueued::Queued(id)) => {
                queue.stats.note_enqueued();
                self.pending.enqueued(waiter.token(), id);
                written = Some(id);
            }
            Ok(Enqueued::Full(length)) => return Err(CallError::BacklogFull(length)),
            Err(GuardedError::CircuitOpen(open)) => {
                return Err(CallError::CircuitOpen(open.retry_after));
            }
            Err(GuardedError::Failed(err)) => {
                record_error("enqueue", &err);
                match write_outcome(&err) {
                    WriteOutcome::NotDone if is_oom(&err) => {
                        return Err(CallError::RedisOutOfMemory);
                    }
                    WriteOutcome::NotDone => {
                        return Err(CallError::RedisUnavailable(err.to_string()));
                    }
                    WriteOutcome::Unknown => {
                        if let Some(suppressed) = UNCONFIRMED.check() {
                            tracing::warn!(error = %err, suppressed, "Redis did not confirm the request write; waiting for a reply it may still get");
                        }
                        unconfirmed = Some(err.to_string());
                    }
                }
            }
        }
        // The request (an `http` body may be a mebibyte) is in Redis now or never will be:
        // waiting for the reply must not keep it in memory.
        drop(fields);
        drop(entry);
        drop(call.hold);
        let connection_lost = async {
            match unconfirmed {
                Some(_) => self.connection.down_for(UNCONFIRMED_GRACE).await,
                None => std::future::pending().await,
            }
        };
        let timed_out = |unconfirmed: Option<String>| match unconfirmed {
            Some(why) => CallError::Unconfirmed {
                timeout: call.timeout,
                why,
            },
            None => CallError::Timeout(call.timeout),
        };
        tokio::select! {
            answer = waiter.answer() => match answer {
                Some(Answer::Reply(reply)) => Ok(reply),
                Some(Answer::Invalid(why)) => Err(CallError::InvalidReply(why)),
                Some(Answer::Lost) => Err(CallError::DataLost),
                None => Err(CallError::ShuttingDown),
            },
            _ = tokio::time::sleep_until(deadline) => {
                if let Some(entry) = written {
                    self.enqueuer.withdraw(&queue.stream, entry);
                }
                Err(timed_out(unconfirmed.clone()))
            }
            _ = connection_lost => Err(timed_out(unconfirmed.clone())),
            _ = self.abandon.cancelled() => Err(CallError::ShuttingDown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_differ_between_processes() {
        let (a, b) = (Tokens::new(), Tokens::new());
        let first = a.next();
        assert_ne!(first, a.next());
        assert_ne!(first, b.next(), "another prefix for another process");
    }

    #[test]
    fn script_results_are_read() {
        assert_eq!(
            enqueue_result(Value::from("1700000000000-3")).ok(),
            Some(Enqueued::Queued(EntryId {
                ms: 1_700_000_000_000,
                seq: 3
            }))
        );
        assert_eq!(
            enqueue_result(Value::from("full 10000")).ok(),
            Some(Enqueued::Full(10_000))
        );
        let err = enqueue_result(Value::from("error: OOM command not allowed"));
        assert!(err.is_err_and(|e| is_oom(&e)));
        assert!(enqueue_result(Value::Null).is_err());
    }

    #[test]
    fn only_refused_writes_are_retried() {
        use fred::error::ErrorKind;
        let refused = Error::new(ErrorKind::Unknown, "LOADING Redis is loading");
        let timed_out = Error::new(ErrorKind::Timeout, "Request timed out.");
        let not_sent = Error::new(ErrorKind::Canceled, "Connection closed unexpectedly.");
        let logical = Error::new(ErrorKind::InvalidArgument, "WRONGTYPE Operation");
        assert_eq!(classify_enqueue(&refused), Attempt::Retry);
        assert_eq!(classify_enqueue(&not_sent), Attempt::GiveUp);
        assert_eq!(classify_enqueue(&timed_out), Attempt::GiveUp);
        assert_eq!(classify_enqueue(&logical), Attempt::Answered);
    }
}
