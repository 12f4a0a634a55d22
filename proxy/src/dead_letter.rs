//! The dead-letter stream: where requests go that cannot be processed — unreadable on first
//! sight, or delivered MAX_DELIVERIES times without being acknowledged (they crashed every
//! proxy that took them). Poison entries would otherwise loop forever.
//!
//! Dead-lettering writes the entry to the DLQ first (durable), then answers the waiting caller
//! with an error (HTTP 502 at once instead of a 504 at its deadline), then acknowledges and
//! deletes the original. Operators list, replay or delete dead letters through the proxy's
//! admin API.
//!
//! Replay runs in one Lua script, [`REPLAY_DEAD_LETTER`] (`shared/lua/replay_dead_letter.lua`):
//! read, re-add and delete are atomic, so concurrent replays of one dead letter re-inject it
//! exactly once. Replay-all replays only the dead letters that were there when the call
//! started, so an entry that fails again during the call is not replayed twice.

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

/// Moves dead letters in an id range back to the request stream atomically; see
/// `shared/lua/replay_dead_letter.lua` for its keys, arguments and answer.
pub use shared::scripts::REPLAY_DEAD_LETTER_LUA as REPLAY_DEAD_LETTER;

/// Most dead letters one replay script call moves: Redis serves nobody else while a script
/// runs, so a large replay-all goes in calls of this size instead of one long pause.
const REPLAY_BATCH: u64 = 100;

/// Prefix of the fields dead-lettering adds; replay drops them.
const FIELD_PREFIX: &str = "dlq_";

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
    /// Label: `unreadable`, `unsupported_version`, `invalid_payload` or `max_deliveries`.
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
    /// The payload when it is UTF-8 text. Where the list needs no admin token (the weather
    /// demo), only weather entries show theirs: any other entry's payload (e.g. a forwarded
    /// request's body, dead-lettered by a misconfigured proxy) is left out.
    pub payload: Option<String>,
    pub reply_to: Option<String>,
    /// `unreadable`, `unsupported_version`, `invalid_payload` or `max_deliveries`.
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
        // The entry's fields exactly as read, bytes that are not UTF-8 included, so a replay
        // puts back what the caller wrote.
        let mut record: Vec<(Key, Value)> = entry
            .fields
            .iter()
            .map(|(k, v)| (Key::from(k.clone()), Value::Bytes(v.clone())))
            .collect();
        let text = |s: String| Value::from(s);
        record.extend([
            (
                Key::from_static_str(fields::SOURCE_ID),
                text(entry.id.clone()),
            ),
            (
                Key::from_static_str(fields::REASON),
                text(failure.reason.to_string()),
            ),
            (
                Key::from_static_str(fields::ERROR),
                text(failure.error.clone()),
            ),
            (
                Key::from_static_str(fields::DELIVERIES),
                text(failure.deliveries.to_string()),
            ),
            (
                Key::from_static_str(fields::CONSUMER),
                text(failure.consumer.to_string()),
            ),
            (
                Key::from_static_str(fields::AT_MS),
                text(unix_ms(SystemTime::now()).to_string()),
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
            request_id = entry.text(request_fields::REQUEST_ID).unwrap_or("?"),
            reason = failure.reason,
            deliveries = failure.deliveries,
            error = failure.error,
            dlq = self.dlq,
            "dead-lettered"
        );
        if let (Some(request_id), Some(reply_to)) = (
            entry.text(request_fields::REQUEST_ID),
            entry.text(request_fields::REPLY_TO),
        ) {
            let reply = ReplyEntry {
                request_id: request_id.to_string(),
                token: entry.text(request_fields::TOKEN).map(str::to_string),
                status: ReplyStatus::Error {
                    code: "dead_lettered".into(),
                    message: format!(
                        "the request could not be processed ({}: {}); it was moved to the dead-letter stream `{}` for an operator",
                        failure.reason, failure.error, self.dlq
                    ),
                },
                payload: Default::default(),
                proxy: failure.consumer.to_string(),
                http: None,
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
    /// from the DLQ, atomically. `Ok(None)` when there is no such dead letter, which is also
    /// what all but one of several concurrent replays of the same id get.
    pub async fn replay(&self, id: EntryId) -> Result<Option<String>, Error> {
        let id = id.to_string();
        let replayed = self.run_replay(&id, &id, 1).await?;
        Ok(replayed.into_iter().next().map(|(_, new_id)| new_id))
    }

    /// Replays up to `limit` dead letters, oldest first; returns how many.
    ///
    /// Only the dead letters present when the call starts are replayed: the newest id is read
    /// first and bounds every batch. A replayed request that fails again is dead-lettered under
    /// a newer id, so it is not picked up again by this call. On an error the batches already
    /// done stay replayed.
    pub async fn replay_all(&self, limit: u64) -> Result<u64, Error> {
        let reply: Value = self
            .commands
            .xrevrange(self.dlq.as_str(), "+", "-", Some(1))
            .await?;
        let Some(newest) = range_entries(reply)?.into_iter().next() else {
            return Ok(0);
        };
        let mut replayed = 0;
        while replayed < limit {
            let batch = (limit - replayed).min(REPLAY_BATCH);
            let moved = self.run_replay("-", &newest.id, batch).await?.len() as u64;
            replayed += moved;
            // Every entry a call finds is moved, so a short batch means none is left up to
            // `newest` (others may have replayed or deleted some meanwhile).
            if moved < batch {
                break;
            }
        }
        Ok(replayed)
    }

    /// One call of the replay script over `first..=last`: the (dead-letter id, new request id)
    /// pairs it moved, oldest first.
    async fn run_replay(
        &self,
        first: &str,
        last: &str,
        count: u64,
    ) -> Result<Vec<(String, String)>, Error> {
        let deadline = unix_ms(SystemTime::now()) + REPLAY_DEADLINE.as_millis() as u64;
        let keys = vec![
            Key::from(self.dlq.as_str()),
            Key::from(self.request_stream.as_str()),
        ];
        let args: Vec<Value> = vec![
            Value::from(first),
            Value::from(last),
            Value::from(count as i64),
            Value::from_static_str(request_fields::DEADLINE_MS),
            Value::from(deadline.to_string()),
            Value::from_static_str(FIELD_PREFIX),
        ];
        let reply: Option<Vec<String>> = shared::scripts::REPLAY_DEAD_LETTER
            .evalsha_with_reload(&self.commands, keys, args)
            .await
            .inspect_err(|err| record_error("replay_dead_letter", err))?;
        let flat = reply.unwrap_or_default();
        if !flat.len().is_multiple_of(2) {
            return Err(Error::new(
                fred::error::ErrorKind::Protocol,
                format!(
                    "the replay script answered {} ids; expected (dead-letter id, new id) pairs",
                    flat.len()
                ),
            ));
        }
        let mut pairs = Vec::with_capacity(flat.len() / 2);
        let mut ids = flat.into_iter();
        while let (Some(dead_letter), Some(entry_id)) = (ids.next(), ids.next()) {
            tracing::info!(dead_letter, entry_id, "dead letter replayed");
            pairs.push((dead_letter, entry_id));
        }
        Ok(pairs)
    }

    /// Deletes dead letter `id`; false when there was none.
    pub async fn delete(&self, id: EntryId) -> Result<bool, Error> {
        let deleted: u64 = self
            .commands
            .xdel(self.dlq.as_str(), id.to_string())
            .await?;
        Ok(deleted > 0)
    }

    /// Deletes every dead letter; returns how many there were.
    pub async fn purge(&self) -> Result<u64, Error> {
        let length: u64 = self.commands.xlen(self.dlq.as_str()).await?;
        let _: u64 = self.commands.del(self.dlq.as_str()).await?;
        Ok(length)
    }
}

/// Dead letters are named by their stream entry id; only the strict `<u64>-<u64>` form is
/// accepted, so Redis never sees an id it would reject.
pub use shared::streams::EntryId;

/// True when Redis rejected a stream id ("Invalid stream ID"): the caller's input was wrong,
/// not Redis. A second line of defence behind [`EntryId`]'s own check.
pub fn is_invalid_id(err: &Error) -> bool {
    err.details().contains("Invalid stream ID")
}

fn to_dead_letter(entry: StreamEntry) -> DeadLetter {
    let mut f: HashMap<String, String> = entry.text_fields();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_are_two_u64_parts() {
        assert_eq!(
            "1700000000000-0".parse::<EntryId>(),
            Ok(EntryId {
                ms: 1_700_000_000_000,
                seq: 0
            })
        );
        let max = format!("{0}-{0}", u64::MAX);
        assert_eq!(max.parse::<EntryId>().map(|id| id.to_string()), Ok(max));
        // Leading zeros are the same id; it is sent to Redis in canonical form.
        assert_eq!(
            "0001-02".parse::<EntryId>().map(|id| id.to_string()),
            Ok("1-2".to_string())
        );
    }

    #[test]
    fn ids_redis_would_reject_are_refused() {
        for bad in [
            "18446744073709551616-0",
            "0-18446744073709551616",
            "99999999999999999999999-0",
            "+5-0",
            "5-+0",
            "-5-0",
            "5",
            "5-",
            "-5",
            "-",
            "",
            "5-0-0",
            " 5-0",
            "5-0 ",
            "a-0",
            "١-٠",
            "*",
            "+",
        ] {
            let err = bad.parse::<EntryId>().expect_err(bad);
            assert!(err.to_string().contains("1700000000000-0"), "{err}");
        }
    }

    #[test]
    fn a_long_bad_id_is_shown_truncated() {
        let err = "9".repeat(10_000).parse::<EntryId>().expect_err("too long");
        assert!(err.to_string().len() < 400, "{err}");
    }

    #[test]
    fn dead_letter_fields_all_carry_the_prefix_replay_drops() {
        for field in [
            fields::SOURCE_ID,
            fields::REASON,
            fields::ERROR,
            fields::DELIVERIES,
            fields::CONSUMER,
            fields::AT_MS,
        ] {
            assert!(field.starts_with(FIELD_PREFIX), "{field}");
        }
    }
}
