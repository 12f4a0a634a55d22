//! The consumer loop: XREADGROUP never more entries than there are free terminals, hand each
//! entry to a terminal, and on shutdown finish what was read before leaving the group.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fred::prelude::*;
use shared::protocol::{ReplyEntry, ReplyStatus, RequestEntry};
use shared::redis::{ensure_group, is_nogroup, record_error};
use shared::streams::{StreamEntry, read_entries};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::processor::Processor;
use crate::reply::{Delivery, Responder};

/// How long one XREADGROUP blocks; bounds how long shutdown waits for the reader to notice.
const READ_BLOCK_MS: u64 = 1_000;

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

/// Everything a terminal needs; shared by all of them.
struct Terminal {
    processor: Processor,
    responder: Responder,
    consumer_name: String,
    stats: Arc<TerminalStats>,
}

/// Reads the request stream through the consumer group.
pub struct Consumer {
    blocking: Client,
    commands: Client,
    stream: String,
    group: String,
    terminal: Arc<Terminal>,
    free_terminals: Arc<Semaphore>,
}

impl Consumer {
    /// A consumer named `consumer_name` with `terminals` workers. `blocking` is used only for
    /// XREADGROUP BLOCK; everything else goes through `commands`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        blocking: Client,
        commands: Client,
        stream: &str,
        group: &str,
        consumer_name: &str,
        terminals: u32,
        processor: Processor,
        stats: Arc<TerminalStats>,
    ) -> Self {
        metrics::gauge!("proxy_terminals_total").set(terminals as f64);
        metrics::gauge!("proxy_terminals_busy").set(0.0);
        Consumer {
            terminal: Arc::new(Terminal {
                processor,
                responder: Responder::new(commands.clone(), stream, group),
                consumer_name: consumer_name.to_string(),
                stats,
            }),
            blocking,
            commands,
            stream: stream.to_string(),
            group: group.to_string(),
            free_terminals: Arc::new(Semaphore::new(terminals as usize)),
        }
    }

    /// Reads and dispatches until `stop` is cancelled, then waits up to `drain_timeout` for the
    /// terminals to finish, and removes this consumer from the group if it holds no pending
    /// entry (deleting a consumer would drop its pending entries).
    pub async fn run(self, stop: CancellationToken, drain_timeout: Duration) {
        let terminals = TaskTracker::new();
        let mut backoff = Duration::from_millis(50);
        while !stop.is_cancelled() {
            let permits = tokio::select! {
                _ = stop.cancelled() => break,
                permits = self.free_terminals() => permits,
            };
            match self.read(permits.len()).await {
                Ok(entries) => {
                    backoff = Duration::from_millis(50);
                    for (entry, permit) in entries.into_iter().zip(permits) {
                        let terminal = self.terminal.clone();
                        terminals.spawn(async move {
                            terminal.handle(entry).await;
                            drop(permit);
                        });
                    }
                }
                Err(err) if is_nogroup(&err) => {
                    tracing::warn!(
                        stream = self.stream,
                        group = self.group,
                        "consumer group missing (Redis restarted without persistence?); re-creating it"
                    );
                    if let Err(err) = ensure_group(&self.commands, &self.stream, &self.group).await
                    {
                        record_error("xgroup_create", &err);
                    }
                }
                Err(err) => {
                    record_error("xreadgroup", &err);
                    tracing::warn!(error = %err, "reading requests failed; retrying in {backoff:?}");
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
        self.leave_group().await;
    }

    /// Waits for one free terminal, then takes every other free one too.
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

    /// XREADGROUP … COUNT `count` BLOCK … STREAMS <stream> `>`.
    async fn read(&self, count: usize) -> Result<Vec<StreamEntry>, Error> {
        let reply: Value = self
            .blocking
            .xreadgroup(
                self.group.as_str(),
                self.terminal.consumer_name.as_str(),
                Some(count as u64),
                Some(READ_BLOCK_MS),
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

impl Terminal {
    /// Handles one entry: decode, drop if expired, process, reply, acknowledge.
    async fn handle(&self, entry: StreamEntry) {
        self.stats.busy.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("proxy_terminals_busy").increment(1.0);
        let outcome = self.handle_inner(&entry.id, entry.fields).await;
        self.stats.busy.fetch_sub(1, Ordering::AcqRel);
        self.stats.handled.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("proxy_terminals_busy").decrement(1.0);
        if let Some((operation, outcome)) = outcome {
            metrics::counter!("proxy_processed_total", "operation" => operation, "outcome" => outcome).increment(1);
        }
    }

    /// Returns (operation, outcome) labels, or `None` when the entry was left pending.
    async fn handle_inner(
        &self,
        entry_id: &str,
        fields: HashMap<String, String>,
    ) -> Option<(String, &'static str)> {
        let request = match RequestEntry::from_fields(fields.clone()) {
            Ok(request) => request,
            Err(err) => {
                tracing::warn!(entry_id, error = %err, "unreadable request entry");
                if let (Some(request_id), Some(reply_to)) =
                    (fields.get("id"), fields.get("reply_to"))
                {
                    let reply = self.error_reply(
                        request_id,
                        "invalid_request",
                        format!("unreadable request entry: {err}"),
                    );
                    let _ = self.responder.send(reply_to, &reply).await;
                }
                self.ack(entry_id).await;
                return Some(("unknown".into(), "invalid"));
            }
        };
        let span = tracing::info_span!(
            "request",
            request_id = request.request_id,
            entry_id,
            operation = request.operation
        );

        if request.time_left(SystemTime::now()).is_zero() {
            metrics::counter!("proxy_expired_total").increment(1);
            span.in_scope(|| tracing::info!("deadline passed before processing; dropped"));
            self.ack(entry_id).await;
            return Some((request.operation, "expired"));
        }

        let started = Instant::now();
        let result = self
            .processor
            .process(&request.request_id, &request.operation, &request.payload)
            .await;
        metrics::histogram!("proxy_processing_seconds", "operation" => request.operation.clone())
            .record(started.elapsed().as_secs_f64());
        let (reply, outcome) = match result {
            Ok(payload) => (
                ReplyEntry {
                    request_id: request.request_id.clone(),
                    status: ReplyStatus::Ok,
                    payload,
                    proxy: self.consumer_name.clone(),
                },
                "ok",
            ),
            Err(err) => {
                span.in_scope(|| {
                    tracing::warn!(code = err.code, message = err.message, "processing failed")
                });
                (
                    self.error_reply(&request.request_id, err.code, err.message),
                    "error",
                )
            }
        };

        match self.responder.send(&request.reply_to, &reply).await {
            Ok(Delivery::Written) => {}
            Ok(Delivery::NoReplyStream) => {
                metrics::counter!("proxy_replies_dropped_total").increment(1);
                span.in_scope(|| {
                    tracing::info!(
                        reply_to = request.reply_to,
                        "reply stream gone (its ingress stopped); reply dropped"
                    )
                });
            }
            Err(err) => {
                // Not acknowledged: the entry stays pending and is delivered again.
                span.in_scope(|| tracing::warn!(error = %err, "could not write the reply; entry left pending"));
                return None;
            }
        }
        self.ack(entry_id).await;
        span.in_scope(|| {
            tracing::debug!(
                outcome,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "handled"
            )
        });
        Some((request.operation, outcome))
    }

    async fn ack(&self, entry_id: &str) {
        if let Err(err) = self.responder.acknowledge(entry_id).await {
            tracing::warn!(entry_id, error = %err, "could not acknowledge; the entry stays pending and may be processed again");
        }
    }

    fn error_reply(&self, request_id: &str, code: &str, message: String) -> ReplyEntry {
        ReplyEntry {
            request_id: request_id.to_string(),
            status: ReplyStatus::Error {
                code: code.to_string(),
                message,
            },
            payload: String::new(),
            proxy: self.consumer_name.clone(),
        }
    }
}
