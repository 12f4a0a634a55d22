//! Sampling the request stream's depth: length, consumer-group lag, pending entries.
//!
//! Both services run one sampler. Its numbers become Prometheus gauges, the ingress uses the
//! length for admission control (refuse early instead of queueing past the deadline), and it
//! doubles as the watchdog that re-creates the consumer group when Redis lost it (restart
//! without persistence), so no reader loops on NOGROUP.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::redis::{ensure_group, record_error};

/// The latest sample, readable without a Redis round trip.
#[derive(Debug, Default)]
pub struct StreamStats {
    length: AtomicU64,
    lag: AtomicU64,
    pending: AtomicU64,
    group_present: AtomicBool,
}

impl StreamStats {
    /// Entries in the request stream: waiting plus being processed (processed ones are deleted).
    pub fn length(&self) -> u64 {
        self.length.load(Ordering::Relaxed)
    }
    /// Entries not yet delivered to any consumer (XINFO GROUPS lag; Redis ≥ 7).
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }
    /// Entries delivered but not yet acknowledged.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }
    /// Whether the consumer group existed at the last sample (part of readiness).
    pub fn group_present(&self) -> bool {
        self.group_present.load(Ordering::Relaxed)
    }
}

/// One consumer group's row of XINFO GROUPS.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub consumers: u64,
    pub pending: u64,
    /// `None` when Redis cannot compute it (Redis < 7, or after certain deletions).
    pub lag: Option<u64>,
}

/// Reads XINFO GROUPS for `group`; `Ok(None)` when the stream or the group does not exist.
pub async fn group_info(
    client: &Client,
    stream: &str,
    group: &str,
) -> Result<Option<GroupInfo>, Error> {
    let groups: Value = match client.xinfo_groups(stream).await {
        Ok(value) => value,
        Err(err) if err.details().contains("no such key") => return Ok(None),
        Err(err) => return Err(err),
    };
    let Value::Array(groups) = groups else {
        return Ok(None);
    };
    for entry in groups {
        let fields = entry.into_map()?.inner();
        let field = |name: &str| {
            fields
                .iter()
                .find(|(key, _)| key.as_str() == Some(name))
                .map(|(_, value)| value)
        };
        if field("name").and_then(|v| v.as_string()).as_deref() != Some(group) {
            continue;
        }
        return Ok(Some(GroupInfo {
            consumers: field("consumers").and_then(Value::as_u64).unwrap_or(0),
            pending: field("pending").and_then(Value::as_u64).unwrap_or(0),
            lag: field("lag").and_then(Value::as_u64),
        }));
    }
    Ok(None)
}

/// Starts the sampler: every `interval` it reads XLEN and XINFO GROUPS, publishes the
/// `stream_length`, `stream_group_lag`, `stream_group_pending` and `stream_group_consumers`
/// gauges, and re-creates the group when it is missing. `also_measure` are further streams
/// whose length is published as `stream_length` (the dead-letter stream). Stops when
/// `shutdown` is cancelled.
pub fn spawn_sampler(
    client: Client,
    stream: String,
    group: String,
    also_measure: Vec<String>,
    interval: Duration,
    shutdown: CancellationToken,
) -> Arc<StreamStats> {
    let stats = Arc::new(StreamStats::default());
    let published = stats.clone();
    tokio::spawn(async move {
        loop {
            sample_once(&client, &stream, &group, &published).await;
            for other in &also_measure {
                match client.xlen::<u64, _>(other.as_str()).await {
                    Ok(length) => metrics::gauge!("stream_length", "stream" => other.clone())
                        .set(length as f64),
                    Err(err) => record_error("xlen", &err),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    });
    stats
}

async fn sample_once(client: &Client, stream: &str, group: &str, stats: &StreamStats) {
    let labels = [("stream", stream.to_string())];
    let group_labels = [("stream", stream.to_string()), ("group", group.to_string())];
    let length = match client.xlen::<u64, _>(stream).await {
        Ok(length) => length,
        Err(err) => {
            record_error("xlen", &err);
            return;
        }
    };
    stats.length.store(length, Ordering::Relaxed);
    metrics::gauge!("stream_length", &labels).set(length as f64);

    match group_info(client, stream, group).await {
        Ok(Some(info)) => {
            stats.group_present.store(true, Ordering::Relaxed);
            stats.pending.store(info.pending, Ordering::Relaxed);
            // Without a lag figure from Redis, every entry not pending is waiting.
            let lag = info.lag.unwrap_or(length.saturating_sub(info.pending));
            stats.lag.store(lag, Ordering::Relaxed);
            metrics::gauge!("stream_group_lag", &group_labels).set(lag as f64);
            metrics::gauge!("stream_group_pending", &group_labels).set(info.pending as f64);
            metrics::gauge!("stream_group_consumers", &group_labels).set(info.consumers as f64);
        }
        Ok(None) => {
            stats.group_present.store(false, Ordering::Relaxed);
            tracing::warn!(
                stream,
                group,
                "consumer group missing (Redis restarted without persistence?); re-creating it"
            );
            match ensure_group(client, stream, group).await {
                Ok(()) => stats.group_present.store(true, Ordering::Relaxed),
                Err(err) => record_error("xgroup_create", &err),
            }
        }
        Err(err) => {
            record_error("xinfo_groups", &err);
        }
    }
}

/// One entry read from a stream, its fields as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id (`<ms>-<seq>`).
    pub id: String,
    /// Fields whose name and value are UTF-8; others are left out, so one malformed entry
    /// cannot make a whole read fail.
    pub fields: std::collections::HashMap<String, String>,
}

/// Flattens an XREAD / XREADGROUP reply (RESP2 or RESP3) into its entries, in order.
/// A nil reply (BLOCK timed out with nothing new) is an empty list.
pub fn read_entries(reply: Value) -> Result<Vec<StreamEntry>, Error> {
    use fred::types::Key;
    use fred::types::streams::XReadResponse;
    if reply.is_null() {
        return Ok(Vec::new());
    }
    let streams: XReadResponse<String, String, Key, Value> = reply.into_xread_response()?;
    Ok(streams
        .into_values()
        .flatten()
        .map(|(id, fields)| StreamEntry {
            id,
            fields: fields
                .into_iter()
                .filter_map(|(key, value)| Some((key.as_str()?.to_string(), value.as_string()?)))
                .collect(),
        })
        .collect())
}

/// Entries of an XRANGE or XCLAIM reply, in order. Entries Redis reports as deleted (nil) are
/// left out.
pub fn range_entries(reply: Value) -> Result<Vec<StreamEntry>, Error> {
    let Value::Array(items) = reply else {
        return Ok(Vec::new());
    };
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else {
            continue; // a deleted entry
        };
        if pair.len() != 2 {
            continue;
        }
        let fields = pair.pop().unwrap_or(Value::Null);
        let Some(id) = pair.pop().and_then(|id| id.as_string()) else {
            continue;
        };
        let fields = match fields {
            Value::Null => continue,
            other => other.into_map()?,
        };
        entries.push(StreamEntry {
            id,
            fields: fields
                .inner()
                .into_iter()
                .filter_map(|(key, value)| Some((key.as_str()?.to_string(), value.as_string()?)))
                .collect(),
        });
    }
    Ok(entries)
}
