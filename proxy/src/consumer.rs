//! The consumer loop: XREADGROUP never more entries than there are free terminals, hand each
//! entry to a terminal, take over entries dead proxies left behind, and on shutdown finish
//! what was read before leaving the group.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fred::prelude::*;
use shared::protocol::{ReplyEntry, ReplyStatus, RequestEntry};
use shared::redis::{ensure_group, is_nogroup, record_error};
use shared::streams::{StreamEntry, next_largest, read_count, read_entries};
use shared::telemetry::LogLimiter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dead_letter::{DeadLetters, Failure};
use crate::faults::{FailureInjection, Fault};
use crate::handler::{Handler, HandlerError, Request, Response};
use crate::reclaim::Reclaimer;
use crate::reply::{Delivery, ReplyQueue, Responder};

/// Longest one XREADGROUP blocks; bounds how long shutdown waits for the reader to notice.
const MAX_READ_BLOCK: Duration = Duration::from_secs(1);
/// How long acknowledging may be retried before the entry is left pending for redelivery.
const ACK_RETRY_FOR: Duration = Duration::from_secs(5);

/// Live counters of the terminal pool, shown by `/WeatherForecast/status`.
#[derive(Debug, Default)]
pub struct TerminalStats {
    /// Size of the pool.
    pub total: u64,
    /// Terminals processing an entry now.
    pub busy: AtomicU64,
    /// Entries handled since start (any outcome).
    pub handled: AtomicU64,
    /// Whether the loop stopped reading (shutdown).
    pub draining: AtomicBool,
}

/// Reclaim and dead-letter settings.
#[derive(Debug, Clone, Copy)]
pub struct RecoverySettings {
    /// Claim entries idle this long (RECLAIM_MIN_IDLE).
    pub min_idle: Duration,
    /// How often to look for them (RECLAIM_INTERVAL).
    pub interval: Duration,
    /// Deliveries after which an entry is dead-lettered (MAX_DELIVERIES).
    pub max_deliveries: u64,
}

/// Everything a terminal needs; shared by all of them.
pub struct Terminal {
    /// What each request is handed to: the weather demo, the forwarder or a user's own.
    pub handler: Arc<dyn Handler>,
    /// Acknowledges entries dropped unprocessed; the dead-letter path writes through it.
    pub responder: Responder,
    /// Where terminals hand their replies (batched reply + acknowledge).
    pub replies: ReplyQueue,
    pub dead_letters: DeadLetters,
    pub faults: Arc<FailureInjection>,
    pub consumer_name: String,
    pub stats: Arc<TerminalStats>,
    /// Ids of the entries in terminals now, whose idle time the keep-alive refreshes.
    pub in_flight: Mutex<HashSet<String>>,
}

/// Work for a terminal: an entry and how often it has been delivered (this time included).
struct Work {
    entry: StreamEntry,
    deliveries: u64,
}

/// Reads the request stream through the consumer group.
pub struct Consumer {
    blocking: Client,
    commands: Client,
    stream: String,
    group: String,
    terminal: Arc<Terminal>,
    reclaimer: Reclaimer,
    recovery: RecoverySettings,
    free_terminals: Arc<Semaphore>,
}

impl Consumer {
    /// A consumer with `terminals` workers. `blocking` is used only for XREADGROUP BLOCK;
    /// everything else goes through `commands`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        blocking: Client,
        commands: Client,
        stream: &str,
        group: &str,
        terminals: u32,
        terminal: Terminal,
        reclaimer: Reclaimer,
        recovery: RecoverySettings,
    ) -> Self {
        metrics::gauge!("proxy_terminals_total").set(terminals as f64);
        metrics::gauge!("proxy_terminals_busy").set(0.0);
        Consumer {
            blocking,
            commands,
            stream: stream.to_string(),
            group: group.to_string(),
            terminal: Arc::new(terminal),
            reclaimer,
            recovery,
            free_terminals: Arc::new(Semaphore::new(terminals as usize)),
        }
    }

    /// Reads and dispatches until `stop` is cancelled, then waits up to `drain_timeout` for the
    /// terminals to finish, and removes this consumer from the group if it holds no pending
    /// entry (deleting a consumer would drop its pending entries).
    pub async fn run(self, stop: CancellationToken, drain_timeout: Duration) {
        let terminals = TaskTracker::new();
        let keep_alive_stop = CancellationToken::new();
        let keep_alive = tokio::spawn(keep_alive(
            self.reclaimer.clone(),
            self.terminal.clone(),
            self.recovery.min_idle,
            keep_alive_stop.clone(),
        ));
        let read_block = MAX_READ_BLOCK
            .min(self.recovery.interval)
            .max(Duration::from_millis(10));
        let cleanup_every = (self.recovery.interval * 10).max(Duration::from_secs(1));
        let mut last_reclaim = Instant::now();
        let mut last_cleanup = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut largest_entry = 0;
        while !stop.is_cancelled() {
            let mut permits = tokio::select! {
                _ = stop.cancelled() => break,
                permits = self.free_terminals() => permits,
            };
            if last_reclaim.elapsed() >= self.recovery.interval {
                last_reclaim = Instant::now();
                let Some(claimed) = self
                    .unless_stopped_offline(
                        &stop,
                        self.reclaim(read_count(permits.len(), largest_entry), &terminals),
                    )
                    .await
                else {
                    break;
                };
                if !claimed.is_empty() {
                    for work in claimed {
                        let Some(permit) = permits.pop() else { break };
                        self.dispatch(&terminals, work, permit);
                    }
                    let_queued_tasks_run().await; // as after a read, below
                    continue; // unused permits are released; read with them next round
                }
                if last_cleanup.elapsed() >= cleanup_every {
                    last_cleanup = Instant::now();
                    if let Err(err) = self.reclaimer.remove_idle_consumers().await {
                        tracing::warn!(error = %err, "could not clean up idle consumers");
                    }
                }
            }
            let count = read_count(permits.len(), largest_entry);
            let Some(read) = self
                .unless_stopped_offline(&stop, self.read(count, read_block))
                .await
            else {
                break;
            };
            match read {
                Ok(entries) => {
                    backoff = Duration::from_millis(50);
                    largest_entry = next_largest(largest_entry, &entries);
                    let read_any = !entries.is_empty();
                    for (entry, permit) in entries.into_iter().zip(permits) {
                        self.dispatch(
                            &terminals,
                            Work {
                                entry,
                                deliveries: 1,
                            },
                            permit,
                        );
                    }
                    if read_any {
                        // Let the terminals just started send their work (e.g. the upstream
                        // call) before the next read goes out: on the single-threaded runtime
                        // that read would otherwise be written first, on the request's
                        // critical path (each write wakes another process).
                        let_queued_tasks_run().await;
                    }
                }
                Err(err) if is_nogroup(&err) => {
                    tracing::warn!(
                        stream = self.stream,
                        group = self.group,
                        "consumer group missing (Redis lost its data?); re-creating it"
                    );
                    if let Err(err) = ensure_group(&self.commands, &self.stream, &self.group).await
                    {
                        record_error("xgroup_create", &err);
                    }
                }
                Err(err) => {
                    static READ_FAILED: LogLimiter = LogLimiter::new(1);
                    record_error("xreadgroup", &err);
                    if let Some(suppressed) = READ_FAILED.check() {
                        tracing::warn!(error = %err, suppressed, "reading requests failed; retrying in {backoff:?}");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }

        self.terminal.stats.draining.store(true, Ordering::Release);
        terminals.close();
        tracing::info!(
            busy = self.terminal.stats.busy.load(Ordering::Acquire),
            "stopped reading; finishing entries in terminals"
        );
        if tokio::time::timeout(drain_timeout, terminals.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                busy = self.terminal.stats.busy.load(Ordering::Acquire),
                "drain timeout passed; unfinished entries stay pending for another consumer"
            );
        }
        keep_alive_stop.cancel();
        let _ = keep_alive.await;
        if shared::redis::at_shutdown(&self.commands, self.leave_group())
            .await
            .is_none()
        {
            tracing::warn!(
                "Redis does not answer; stopping without leaving the consumer group (another proxy removes this consumer once it has been idle for CONSUMER_IDLE_TIMEOUT)"
            );
        }
    }

    /// Runs `call` (a read or a claim) to its end — an answer may deliver entries to this
    /// consumer, which must then be handled — unless a shutdown comes while Redis is
    /// unreachable: then no answer can come, and waiting for the command timeout would only
    /// delay the exit. `None` means: stop now.
    async fn unless_stopped_offline<T>(
        &self,
        stop: &CancellationToken,
        call: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let offline_stop = async {
            stop.cancelled().await;
            while self.commands.is_connected() && self.blocking.is_connected() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            result = call => Some(result),
            _ = offline_stop => None,
        }
    }

    fn dispatch(&self, terminals: &TaskTracker, work: Work, permit: OwnedSemaphorePermit) {
        let terminal = self.terminal.clone();
        terminals.spawn(async move {
            terminal.handle(work).await;
            drop(permit);
        });
    }

    /// Claims idle entries of dead consumers: poison ones are dead-lettered right here, the
    /// rest are returned for the terminals.
    async fn reclaim(&self, free: usize, terminals: &TaskTracker) -> Vec<Work> {
        let claimed = match self.reclaimer.claim_idle(free).await {
            Ok(claimed) => claimed,
            Err(err) => {
                if is_nogroup(&err) {
                    let _ = ensure_group(&self.commands, &self.stream, &self.group).await;
                } else {
                    tracing::warn!(error = %err, "could not look for idle entries to reclaim");
                }
                return Vec::new();
            }
        };
        let mut work = Vec::with_capacity(claimed.len());
        for claim in claimed {
            if claim.previous_deliveries >= self.recovery.max_deliveries {
                let terminal = self.terminal.clone();
                terminals.spawn(async move {
                    let failure = Failure {
                        reason: "max_deliveries",
                        error: format!(
                            "delivered {} times without being acknowledged; last held by `{}`",
                            claim.previous_deliveries, claim.previous_consumer
                        ),
                        deliveries: claim.previous_deliveries,
                        consumer: &claim.previous_consumer,
                    };
                    if let Err(err) = terminal.dead_letters.dead_letter(&terminal.responder, &claim.entry, failure).await {
                        tracing::warn!(error = %err, entry_id = claim.entry.id, "could not dead-letter; it stays pending");
                    }
                });
            } else {
                metrics::counter!("proxy_reclaimed_total").increment(1);
                tracing::info!(
                    entry_id = claim.entry.id,
                    from = claim.previous_consumer,
                    deliveries = claim.previous_deliveries + 1,
                    "reclaimed an idle entry"
                );
                work.push(Work {
                    entry: claim.entry,
                    deliveries: claim.previous_deliveries + 1,
                });
            }
        }
        work
    }

    /// Waits for one free terminal, then takes every other free one too. Permits a read does
    /// not use are released when dropped.
    async fn free_terminals(&self) -> Vec<OwnedSemaphorePermit> {
        let mut permits = Vec::new();
        match self.free_terminals.clone().acquire_owned().await {
            Ok(permit) => permits.push(permit),
            Err(_) => return permits, // the semaphore is never closed
        }
        while let Ok(permit) = self.free_terminals.clone().try_acquire_owned() {
            permits.push(permit);
        }
        permits
    }

    /// XREADGROUP … COUNT `count` BLOCK `block` STREAMS <stream> `>`. The command times out
    /// one second after the block time, so a Redis that vanished mid-read cannot hold the loop
    /// (and a shutdown) for the default command timeout.
    async fn read(&self, count: usize, block: Duration) -> Result<Vec<StreamEntry>, Error> {
        let options = fred::types::config::Options {
            timeout: Some(block + Duration::from_secs(1)),
            ..Default::default()
        };
        let reply: Value = self
            .blocking
            .with_options(&options)
            .xreadgroup(
                self.group.as_str(),
                self.terminal.consumer_name.as_str(),
                Some(count as u64),
                Some(block.as_millis() as u64),
                false,
                self.stream.as_str(),
                ">",
            )
            .await?;
        read_entries(reply)
    }

    async fn leave_group(&self) {
        let name = self.terminal.consumer_name.as_str();
        let pending: Result<Vec<Value>, _> = self
            .commands
            .xpending(
                self.stream.as_str(),
                self.group.as_str(),
                ("-", "+", 1, name),
            )
            .await;
        match pending {
            Ok(entries) if entries.is_empty() => {
                match self
                    .commands
                    .xgroup_delconsumer::<u64, _, _, _>(
                        self.stream.as_str(),
                        self.group.as_str(),
                        name,
                    )
                    .await
                {
                    Ok(_) => tracing::info!(consumer = name, "left the consumer group"),
                    Err(err) => record_error("xgroup_delconsumer", &err),
                }
            }
            Ok(_) => tracing::warn!(
                consumer = name,
                "entries still pending; staying in the group so another consumer can claim them"
            ),
            Err(err) => record_error("xpending", &err),
        }
    }
}

/// This consumer's heartbeat, at once and then every third of RECLAIM_MIN_IDLE (at least every
/// second): refreshes the idle time of the entries in terminals, so a slow but live terminal's
/// entry is never reclaimed by another proxy, or, with none, makes sure the consumer exists in
/// the group. The ingress counts a consumer unseen for a few seconds as gone, and while every
/// terminal is busy the reader does not read, so this is what keeps a busy proxy visible.
async fn keep_alive(
    reclaimer: Reclaimer,
    terminal: Arc<Terminal>,
    min_idle: Duration,
    stop: CancellationToken,
) {
    static FAILED: LogLimiter = LogLimiter::new(1);
    let every = (min_idle / 3).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let ids: Vec<String> = terminal.in_flight().iter().cloned().collect();
        // Abandoning a heartbeat is harmless; waiting for one Redis does not answer would hold
        // up the shutdown.
        let beat = tokio::select! {
            _ = stop.cancelled() => return,
            beat = reclaimer.heartbeat(ids) => beat,
        };
        if let Err(err) = beat
            && let Some(suppressed) = FAILED.check()
        {
            tracing::debug!(error = %err, suppressed, "heartbeat failed (entries in terminals not refreshed)");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Takes an entry out of the keep-alive set when dropped.
struct InFlight<'a> {
    terminal: &'a Terminal,
    entry_id: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.terminal.in_flight().remove(&self.entry_id);
    }
}

impl Terminal {
    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Single inserts and removes cannot leave the set inconsistent.
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles one entry: decode, drop if expired, process, reply, acknowledge.
    async fn handle(&self, work: Work) {
        self.stats.busy.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("proxy_terminals_busy").increment(1.0);
        self.in_flight().insert(work.entry.id.clone());
        // Removed from the keep-alive set however handling ends, a panicking handler included:
        // an entry left there would be kept alive for ever and never reclaimed.
        let _in_flight = InFlight {
            terminal: self,
            entry_id: work.entry.id.clone(),
        };
        let outcome = self.handle_inner(work).await;
        self.stats.busy.fetch_sub(1, Ordering::AcqRel);
        self.stats.handled.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("proxy_terminals_busy").decrement(1.0);
        if let Some((operation, outcome)) = outcome {
            metrics::counter!("proxy_processed_total", "operation" => operation, "outcome" => outcome).increment(1);
        }
    }

    /// Returns (operation, outcome) labels, or `None` when the entry was left pending.
    async fn handle_inner(&self, work: Work) -> Option<(String, &'static str)> {
        let Work { entry, deliveries } = work;
        let request = match RequestEntry::from_fields(entry.fields_by_name()) {
            Ok(request) => request,
            Err(err) => {
                let failure = Failure {
                    reason: err.reason(),
                    error: format!("unreadable request entry: {err}"),
                    deliveries,
                    consumer: &self.consumer_name,
                };
                return self.dead_letter(&entry, failure, "unknown".into()).await;
            }
        };
        let span = tracing::info_span!(
            "request",
            request_id = request.request_id,
            entry_id = entry.id,
            operation = request.operation,
            deliveries
        );

        if request.time_left(SystemTime::now()).is_zero() {
            static EXPIRED: LogLimiter = LogLimiter::new(5);
            metrics::counter!("proxy_expired_total").increment(1);
            if let Some(suppressed) = EXPIRED.check() {
                span.in_scope(|| {
                    tracing::info!(suppressed, "deadline passed before processing; dropped")
                });
            }
            self.ack(&entry.id).await;
            return Some((request.operation, "expired"));
        }
        let deadline = tokio::time::Instant::now() + request.time_left(SystemTime::now());

        let started = Instant::now();
        // Work stops at the caller's deadline: past it the caller has had its 504, and
        // finishing would only spend a terminal (and a backend's capacity) on nobody.
        let request_ref = &request;
        let processed = |delay: Option<Duration>| {
            tokio::time::timeout_at(deadline, async move {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                self.process(request_ref, deliveries, deadline).await
            })
        };
        let result = match self.faults.draw() {
            Some(Fault::CrashBeforeAck) => {
                span.in_scope(|| {
                    tracing::warn!("injected fault: dropping the entry without reply or ack")
                });
                return None;
            }
            Some(Fault::ProcessingError) => Ok(Err(HandlerError::Failed {
                code: "injected_failure",
                message: "failure injection: processing error".to_string(),
            })),
            Some(Fault::ResponseTimeout) => {
                tokio::time::sleep_until(deadline + Duration::from_millis(10)).await;
                Ok(Err(HandlerError::Failed {
                    code: "backend_timeout",
                    message: "failure injection: the backend did not answer in time".to_string(),
                }))
            }
            Some(Fault::SlowResponse(delay)) => processed(Some(delay)).await,
            None => processed(None).await,
        };
        let Ok(result) = result else {
            metrics::counter!("proxy_abandoned_total").increment(1);
            span.in_scope(|| {
                tracing::debug!(
                    "deadline passed while processing; stopped, acknowledged without reply"
                )
            });
            self.ack(&entry.id).await;
            return Some((request.operation, "expired"));
        };
        metrics::histogram!("proxy_processing_seconds", "operation" => request.operation.clone())
            .record(started.elapsed().as_secs_f64());

        let (reply, outcome) = match result {
            Ok(Response { payload, http }) => (
                ReplyEntry {
                    request_id: request.request_id.clone(),
                    token: request.token.clone(),
                    status: ReplyStatus::Ok,
                    payload,
                    proxy: self.consumer_name.clone(),
                    http,
                },
                "ok",
            ),
            Err(HandlerError::Invalid { message, .. }) => {
                let failure = Failure {
                    reason: "invalid_payload",
                    error: message,
                    deliveries,
                    consumer: &self.consumer_name,
                };
                return self.dead_letter(&entry, failure, request.operation).await;
            }
            Err(HandlerError::Failed { code, message }) => {
                static FAILED: LogLimiter = LogLimiter::new(5);
                if let Some(suppressed) = FAILED.check() {
                    span.in_scope(|| {
                        tracing::warn!(code, message, suppressed, "processing failed")
                    });
                }
                (
                    ReplyEntry {
                        request_id: request.request_id.clone(),
                        token: request.token.clone(),
                        status: ReplyStatus::Error {
                            code: code.to_string(),
                            message,
                        },
                        payload: Default::default(),
                        proxy: self.consumer_name.clone(),
                        http: None,
                    },
                    "error",
                )
            }
        };

        // Retry for as long as the caller waits (at least a second); reply and XACK are atomic.
        let reply_deadline = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        match self
            .replies
            .reply_and_acknowledge(&request.reply_to, &reply, &entry.id, reply_deadline)
            .await
        {
            Ok(Delivery::Written) => {}
            Ok(Delivery::NoReplyStream) => {
                static DROPPED: LogLimiter = LogLimiter::new(5);
                metrics::counter!("proxy_replies_dropped_total").increment(1);
                if let Some(suppressed) = DROPPED.check() {
                    span.in_scope(|| {
                        tracing::info!(
                            reply_to = request.reply_to,
                            suppressed,
                            "reply stream gone (its ingress stopped); reply dropped"
                        )
                    });
                }
            }
            Err(err) => {
                // Neither replied nor acknowledged: the entry stays pending and is reclaimed.
                static NOT_WRITTEN: LogLimiter = LogLimiter::new(5);
                if let Some(suppressed) = NOT_WRITTEN.check() {
                    span.in_scope(|| tracing::warn!(error = %err, suppressed, "could not write the reply; entry left pending"));
                }
                return None;
            }
        }
        span.in_scope(|| {
            tracing::debug!(
                outcome,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "handled"
            )
        });
        Some((request.operation, outcome))
    }

    async fn process(
        &self,
        entry: &RequestEntry,
        deliveries: u64,
        deadline: tokio::time::Instant,
    ) -> Result<Response, HandlerError> {
        self.handler
            .handle(Request {
                entry,
                deliveries,
                deadline,
            })
            .await
    }

    async fn dead_letter(
        &self,
        entry: &StreamEntry,
        failure: Failure<'_>,
        operation: String,
    ) -> Option<(String, &'static str)> {
        match self
            .dead_letters
            .dead_letter(&self.responder, entry, failure)
            .await
        {
            Ok(()) => Some((operation, "invalid")),
            Err(err) => {
                tracing::warn!(entry_id = entry.id, error = %err, "could not dead-letter; the entry stays pending");
                None
            }
        }
    }

    async fn ack(&self, entry_id: &str) {
        let deadline = tokio::time::Instant::now() + ACK_RETRY_FOR;
        if let Err(err) = self.responder.acknowledge(entry_id, deadline).await {
            tracing::warn!(entry_id, error = %err, "could not acknowledge; the entry stays pending and may be processed again");
        }
    }
}

/// Lets the tasks already queued on this thread run before this one goes on. Unlike
/// `tokio::task::yield_now`, which waits for the next poll of the I/O driver too (and so let
/// replies arriving meanwhile overtake the terminals' first writes), it only requeues this
/// task behind them.
async fn let_queued_tasks_run() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
