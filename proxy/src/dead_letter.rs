//! The dead-letter stream: where requests go that cannot be processed — unreadable on first
//! sight, or delivered MAX_DELIVERIES times without being acknowledged (they crashed every
//! proxy that took them). Poison entries would otherwise loop forever.
//!
//! Dead-lettering writes the entry to the DLQ first (durable), then answers the waiting caller
//! with an error (HTTP 502 at once instead of a 504 at its deadline), then acknowledges and
//! deletes the original. Operators list, replay or delete dead letters through the proxy's
//! admin API.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use fred::prelude::*;
use serde::Serialize;
use shared::protocol::{ReplyEntry, ReplyStatus, request_fields, unix_ms};
use shared::redis::record_error;
use shared::streams::{StreamEntry, range_entries};
use utoipa::ToSchema;

use crate::reply::Responder;

/// Deadline given to a replayed request (its original one has usually passed).
pub const REPLAY_DEADLINE: Duration = Duration::from_secs(30);

/// Why an entry was dead-lettered, as `proxy_dead_lettered_total{reason}`.
pub const REASONS: &[&str] = &[
    "unreadable",
    "unsupported_version",
    "invalid_payload",
    "max_deliveries",
];

mod fields {
    pub const SOURCE_ID: &str = "dlq_source_id";
    pub const REASON: &str = "dlq_reason";
    pub const ERROR: &str = "dlq_error";
    pub const DELIVERIES: &str = "dlq_deliveries";
    pub const CONSUMER: &str = "dlq_consumer";
    pub const AT_MS: &str = "dlq_at_ms";
}

/// What is known about the failure being dead-lettered.
pub struct Failure<'a> {
    /// Label: `unreadable`, `invalid_payload` or `max_deliveries`.
    pub reason: &'static str,
    /// The last error seen, for the operator.
    pub error: String,
    /// How many times the entry was delivered.
    pub deliveries: u64,
    /// The consumer that last held it.
    pub consumer: &'a str,
}

/// One dead letter, as the admin API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Id of the entry in the dead-letter stream (use it to replay or delete).
    pub id: String,
    /// Id the entry had in the request stream.
    pub source_id: String,
    pub request_id: Option<String>,
    pub operation: Option<String>,
    pub payload: Option<String>,
    pub reply_to: Option<String>,
    /// `unreadable`, `invalid_payload` or `max_deliveries`.
    pub reason: String,
    /// The last error.
    pub error: String,
    /// Deliveries before it was dead-lettered.
    pub deliveries: u64,
    /// The consumer that last held it.
    pub consumer: String,
    /// When it was dead-lettered (RFC 3339).
    pub dead_lettered_at: String,
}

/// The dead-letter stream of one request stream.
#[derive(Clone)]
pub struct DeadLetters {
    commands: Client,
    dlq: String,
    request_stream: String,
}

impl DeadLetters {
    /// Dead letters of `request_stream` go to `dlq`.
    pub fn new(commands: Client, dlq: &str, request_stream: &str) -> Self {
        DeadLetters {
            commands,
            dlq: dlq.to_string(),
            request_stream: request_stream.to_string(),
        }
    }

    /// The dead-letter stream's key.
    pub fn stream(&self) -> &str {
        &self.dlq
    }

    /// Moves `entry` to the dead-letter stream, answers its caller with an error, and
    /// acknowledges it. If the DLQ write fails the entry stays pending (retried later).
    pub async fn dead_letter(
        &self,
        responder: &Responder,
        entry: &StreamEntry,
        failure: Failure<'_>,
    ) -> Result<(), Error> {
        let mut record: Vec<(String, String)> = entry
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        record.sort();
        record.extend([
            (fields::SOURCE_ID.to_string(), entry.id.clone()),
            (fields::REASON.to_string(), failure.reason.to_string()),
            (fields::ERROR.to_string(), failure.error.clone()),
            (
                fields::DELIVERIES.to_string(),
                failure.deliveries.to_string(),
            ),
            (fields::CONSUMER.to_string(), failure.consumer.to_string()),
            (
                fields::AT_MS.to_string(),
                unix_ms(SystemTime::now()).to_string(),
            ),
        ]);
        let _: String = self
            .commands
            .xadd(self.dlq.as_str(), false, None, "*", record)
            .await
            .inspect_err(|err| record_error("xadd_dlq", err))?;
        metrics::counter!("proxy_dead_lettered_total", "reason" => failure.reason).increment(1);
        tracing::warn!(
            entry_id = entry.id,
            request_id = entry
                .fields
                .get(request_fields::REQUEST_ID)
                .map(String::as_str)
                .unwrap_or("?"),
            reason = failure.reason,
            deliveries = failure.deliveries,
            error = failure.error,
            dlq = self.dlq,
            "dead-lettered"
        );
        if let (Some(request_id), Some(reply_to)) = (
            entry.fields.get(request_fields::REQUEST_ID),
            entry.fields.get(request_fields::REPLY_TO),
        ) {
            let reply = ReplyEntry {
                request_id: request_id.clone(),
                token: entry.fields.get(request_fields::TOKEN).cloned(),
                status: ReplyStatus::Error {
                    code: "dead_lettered".into(),
                    message: format!(
                        "the request could not be processed ({}: {}); it was moved to the dead-letter stream `{}` for an operator",
                        failure.reason, failure.error, self.dlq
                    ),
                },
                payload: String::new(),
                proxy: failure.consumer.to_string(),
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            if let Err(err) = responder.send(reply_to, &reply, deadline).await {
                tracing::warn!(error = %err, "could not tell the caller about the dead letter");
            }
        }
        responder
            .acknowledge(
                &entry.id,
                tokio::time::Instant::now() + Duration::from_secs(2),
            )
            .await
    }

    /// Up to `count` dead letters, oldest first.
    pub async fn list(&self, count: u64) -> Result<Vec<DeadLetter>, Error> {
        let reply: Value = self
            .commands
            .xrange(self.dlq.as_str(), "-", "+", Some(count))
            .await?;
        Ok(range_entries(reply)?
            .into_iter()
            .map(to_dead_letter)
            .collect())
    }

    /// Puts dead letter `id` back on the request stream with a fresh deadline and removes it
    /// from the DLQ. `Ok(None)` when there is no such dead letter.
    pub async fn replay(&self, id: &str) -> Result<Option<String>, Error> {
        let reply: Value = self
            .commands
            .xrange(self.dlq.as_str(), id, id, Some(1))
            .await?;
        let Some(entry) = range_entries(reply)?.into_iter().next() else {
            return Ok(None);
        };
        let mut request: Vec<(String, String)> = entry
            .fields
            .into_iter()
            .filter(|(key, _)| !key.starts_with("dlq_"))
            .collect();
        let deadline =
            (unix_ms(SystemTime::now()) + REPLAY_DEADLINE.as_millis() as u64).to_string();
        match request
            .iter_mut()
            .find(|(key, _)| key == request_fields::DEADLINE_MS)
        {
            Some((_, value)) => *value = deadline,
            None => request.push((request_fields::DEADLINE_MS.to_string(), deadline)),
        }
        request.sort();
        let new_id: String = self
            .commands
            .xadd(self.request_stream.as_str(), false, None, "*", request)
            .await?;
        let _: u64 = self.commands.xdel(self.dlq.as_str(), id).await?;
        tracing::info!(dead_letter = id, entry_id = new_id, "dead letter replayed");
        Ok(Some(new_id))
    }

    /// Replays up to `limit` dead letters; returns how many.
    pub async fn replay_all(&self, limit: u64) -> Result<u64, Error> {
        let mut replayed = 0;
        while replayed < limit {
            let batch = self.list((limit - replayed).min(100)).await?;
            if batch.is_empty() {
                break;
            }
            for letter in batch {
                if self.replay(&letter.id).await?.is_some() {
                    replayed += 1;
                }
            }
        }
        Ok(replayed)
    }

    /// Deletes dead letter `id`; false when there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, Error> {
        let deleted: u64 = self.commands.xdel(self.dlq.as_str(), id).await?;
        Ok(deleted > 0)
    }

    /// Deletes every dead letter; returns how many there were.
    pub async fn purge(&self) -> Result<u64, Error> {
        let length: u64 = self.commands.xlen(self.dlq.as_str()).await?;
        let _: u64 = self.commands.del(self.dlq.as_str()).await?;
        Ok(length)
    }
}

fn to_dead_letter(entry: StreamEntry) -> DeadLetter {
    let mut f: HashMap<String, String> = entry.fields;
    let at_ms = f
        .remove(fields::AT_MS)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    DeadLetter {
        id: entry.id,
        source_id: f.remove(fields::SOURCE_ID).unwrap_or_default(),
        request_id: f.remove(request_fields::REQUEST_ID),
        operation: f.remove(request_fields::OPERATION),
        payload: f.remove(request_fields::PAYLOAD),
        reply_to: f.remove(request_fields::REPLY_TO),
        reason: f.remove(fields::REASON).unwrap_or_default(),
        error: f.remove(fields::ERROR).unwrap_or_default(),
        deliveries: f
            .remove(fields::DELIVERIES)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        consumer: f.remove(fields::CONSUMER).unwrap_or_default(),
        dead_lettered_at: humantime::format_rfc3339_millis(
            SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms),
        )
        .to_string(),
    }
}
