//! Taking over what dead proxies left behind, and keeping our own work from being taken.
//!
//! A proxy that dies (SIGKILL, OOM, node loss) leaves its entries pending in the group. Every
//! live proxy periodically claims entries idle longer than RECLAIM_MIN_IDLE (XPENDING IDLE +
//! XCLAIM) and processes them like fresh ones; those delivered MAX_DELIVERIES times already are
//! dead-lettered instead. A live proxy whose processing legitimately takes longer than the
//! min-idle time refreshes the idle time of the entries in its terminals (XCLAIM … JUSTID,
//! which does not count as a delivery) so nobody steals them. Consumers that hold nothing and
//! have been idle for long are removed from the group — only with zero pending, because
//! deleting a consumer drops its pending entries.

use std::time::Duration;

use fred::prelude::*;
use shared::redis::record_error;
use shared::streams::{StreamEntry, range_entries};

/// An entry claimed from another (or a previous) consumer.
#[derive(Debug)]
pub struct Claimed {
    /// The entry, now owned by this consumer.
    pub entry: StreamEntry,
    /// Deliveries before this claim.
    pub previous_deliveries: u64,
    /// The consumer that held it.
    pub previous_consumer: String,
}

/// Reclaim settings and the client to do it with.
#[derive(Clone)]
pub struct Reclaimer {
    commands: Client,
    stream: String,
    group: String,
    consumer: String,
    min_idle: Duration,
    consumer_idle_timeout: Duration,
}

/// One row of the extended XPENDING reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingRow {
    id: String,
    consumer: String,
    deliveries: u64,
}

impl Reclaimer {
    /// Claims for `consumer` entries idle at least `min_idle`; removes other consumers idle
    /// for `consumer_idle_timeout` with nothing pending.
    pub fn new(
        commands: Client,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        consumer_idle_timeout: Duration,
    ) -> Self {
        Reclaimer {
            commands,
            stream: stream.to_string(),
            group: group.to_string(),
            consumer: consumer.to_string(),
            min_idle,
            consumer_idle_timeout,
        }
    }

    /// Claims up to `count` entries that have been idle for at least RECLAIM_MIN_IDLE.
    pub async fn claim_idle(&self, count: usize) -> Result<Vec<Claimed>, Error> {
        let min_idle_ms = self.min_idle.as_millis() as u64;
        let reply: Value = self
            .commands
            .xpending(
                self.stream.as_str(),
                self.group.as_str(),
                (min_idle_ms, "-", "+", count as u64),
            )
            .await
            .inspect_err(|err| record_error("xpending", err))?;
        let rows = pending_rows(reply);
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = rows.iter().map(|row| row.id.clone()).collect();
        // XCLAIM re-checks the idle time, so when two proxies race for an entry only one wins.
        let claimed: Value = self
            .commands
            .xclaim(
                self.stream.as_str(),
                self.group.as_str(),
                self.consumer.as_str(),
                min_idle_ms,
                ids,
                None,
                None,
                None,
                false,
                false,
            )
            .await
            .inspect_err(|err| record_error("xclaim", err))?;
        let claimed = range_entries(claimed)?;
        Ok(claimed
            .into_iter()
            .filter_map(|entry| {
                let row = rows.iter().find(|row| row.id == entry.id)?;
                Some(Claimed {
                    previous_deliveries: row.deliveries,
                    previous_consumer: row.consumer.clone(),
                    entry,
                })
            })
            .collect())
    }

    /// This consumer's heartbeat. With entries in terminals (`ids`), resets their idle time
    /// without counting a delivery (XCLAIM … JUSTID), so no other proxy reclaims them; that
    /// also refreshes the consumer's own idle time. With none, makes sure the consumer exists
    /// (XGROUP CREATECONSUMER): Redis 7.0 creates a consumer only when a read delivers
    /// something, and the ingress counts only consumers it can see as alive — a proxy waiting
    /// on an empty stream (after a start, a clean restart or a re-created group) must be seen.
    pub async fn heartbeat(&self, ids: Vec<String>) -> Result<(), Error> {
        if ids.is_empty() {
            let _: u64 = self
                .commands
                .xgroup_createconsumer(
                    self.stream.as_str(),
                    self.group.as_str(),
                    self.consumer.as_str(),
                )
                .await
                .inspect_err(|err| record_error("xgroup_createconsumer", err))?;
            return Ok(());
        }
        let _: Value = self
            .commands
            .xclaim(
                self.stream.as_str(),
                self.group.as_str(),
                self.consumer.as_str(),
                0,
                ids,
                None,
                None,
                None,
                false,
                true,
            )
            .await
            .inspect_err(|err| record_error("xclaim", err))?;
        Ok(())
    }

    /// Removes other consumers that hold no pending entry and have been idle longer than
    /// the consumer idle timeout. Returns how many were removed.
    pub async fn remove_idle_consumers(&self) -> Result<u64, Error> {
        let reply: Value = self
            .commands
            .xinfo_consumers(self.stream.as_str(), self.group.as_str())
            .await
            .inspect_err(|err| record_error("xinfo_consumers", err))?;
        let Value::Array(consumers) = reply else {
            return Ok(0);
        };
        let mut removed = 0;
        for consumer in consumers {
            let fields = consumer.into_map()?.inner();
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k.as_str() == Some(name))
                    .map(|(_, v)| v)
            };
            let Some(name) = field("name").and_then(|v| v.as_string()) else {
                continue;
            };
            let pending = field("pending").and_then(Value::as_u64).unwrap_or(u64::MAX);
            let idle_ms = field("idle").and_then(Value::as_u64).unwrap_or(0);
            if name == self.consumer
                || pending != 0
                || idle_ms < self.consumer_idle_timeout.as_millis() as u64
            {
                continue;
            }
            let deleted: u64 = self
                .commands
                .xgroup_delconsumer(self.stream.as_str(), self.group.as_str(), name.as_str())
                .await
                .inspect_err(|err| record_error("xgroup_delconsumer", err))?;
            // A consumer that read something in the meantime would have reported pending > 0
            // to DELCONSUMER; its reply is the number of pending entries it dropped.
            if deleted > 0 {
                tracing::error!(
                    consumer = name,
                    dropped = deleted,
                    "removed consumer had pending entries"
                );
            }
            tracing::info!(
                consumer = name,
                idle_ms,
                "removed idle consumer with nothing pending"
            );
            metrics::counter!("proxy_consumers_removed_total").increment(1);
            removed += 1;
        }
        Ok(removed)
    }
}

/// Parses `XPENDING key group IDLE ms - + count`: rows of [id, consumer, idle-ms, deliveries].
fn pending_rows(reply: Value) -> Vec<PendingRow> {
    let Value::Array(rows) = reply else {
        return Vec::new();
    };
    rows.into_iter()
        .filter_map(|row| {
            let Value::Array(cells) = row else {
                return None;
            };
            Some(PendingRow {
                id: cells.first()?.as_string()?,
                consumer: cells.get(1)?.as_string()?,
                deliveries: cells.get(3)?.as_u64()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_rows_are_parsed_and_junk_is_skipped() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                "1-0".into(),
                "p1".into(),
                Value::Integer(12_000),
                Value::Integer(2),
            ]),
            Value::Null,
            Value::Array(vec!["2-0".into()]),
        ]);
        assert_eq!(
            pending_rows(reply),
            vec![PendingRow {
                id: "1-0".into(),
                consumer: "p1".into(),
                deliveries: 2
            }]
        );
        assert!(pending_rows(Value::Null).is_empty());
    }
}
