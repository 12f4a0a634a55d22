//! Sampling the request stream's depth: length, consumer-group lag, pending entries, how fast
//! the group drains it, and whether any consumer is alive.
//!
//! Both services run one sampler. Its numbers become Prometheus gauges, the ingress uses them
//! for admission control (refuse at once what cannot be answered before its deadline, or when
//! no proxy reads the stream), and it doubles as the watchdog that re-creates the consumer
//! group when Redis lost it (restart without persistence), so no reader loops on NOGROUP.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::redis::{ensure_group, record_error};

/// The latest sample, readable without a Redis round trip.
#[derive(Debug)]
pub struct StreamStats {
    length: AtomicU64,
    lag: AtomicU64,
    pending: AtomicU64,
    group_present: AtomicBool,
    /// Entries per second the group drained while it had a backlog (f64 bits; NaN = not
    /// measured yet).
    drain_rate: AtomicU64,
    /// When the last successful sample was taken (nanoseconds since `epoch`).
    sampled_at: AtomicU64,
    /// Consumers that read or claimed within the liveness window at the last sample.
    live_consumers: AtomicU64,
    /// When a live consumer was last seen (nanoseconds since `epoch`).
    live_seen_at: AtomicU64,
    /// Entries this process has written to the stream ([`StreamStats::note_enqueued`]).
    enqueued: AtomicU64,
    /// `enqueued` just before the last sample's XLEN.
    enqueued_at_sample: AtomicU64,
    epoch: Instant,
}

impl Default for StreamStats {
    fn default() -> Self {
        StreamStats {
            length: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            group_present: AtomicBool::new(false),
            drain_rate: AtomicU64::new(f64::NAN.to_bits()),
            sampled_at: AtomicU64::new(0),
            live_consumers: AtomicU64::new(0),
            live_seen_at: AtomicU64::new(0),
            enqueued: AtomicU64::new(0),
            enqueued_at_sample: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
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
    /// Entries per second the consumers took off the stream while it had a backlog — their
    /// capacity, measured. `None` until a backlog has been seen.
    pub fn drain_rate(&self) -> Option<f64> {
        let rate = f64::from_bits(self.drain_rate.load(Ordering::Relaxed));
        (!rate.is_nan()).then_some(rate)
    }
    /// How long ago the last sample was taken.
    pub fn sample_age(&self) -> Duration {
        self.since(self.sampled_at.load(Ordering::Relaxed))
    }
    /// Consumers alive at the last sample (only counted when the sampler watches consumers).
    pub fn live_consumers(&self) -> u64 {
        self.live_consumers.load(Ordering::Relaxed)
    }
    /// How long the group has had no live consumer (zero while one is alive). Counted from
    /// the sampler's start when none was ever seen.
    pub fn without_consumers_for(&self) -> Duration {
        if self.live_consumers() > 0 {
            return Duration::ZERO;
        }
        self.since(self.live_seen_at.load(Ordering::Relaxed))
    }

    /// Records one entry written by this process, so the backlog estimate includes it before
    /// the next sample does.
    pub fn note_enqueued(&self) {
        self.enqueued.fetch_add(1, Ordering::Relaxed);
    }

    /// Entries waiting for a terminal now, estimated: the last sample's lag, plus what this
    /// process wrote since, minus what the consumers took since at their measured rate. Other
    /// writers' entries since the sample are not known until the next one (at most one
    /// interval old).
    pub fn lag_estimate(&self) -> f64 {
        let written = self
            .enqueued
            .load(Ordering::Relaxed)
            .saturating_sub(self.enqueued_at_sample.load(Ordering::Relaxed));
        let drained = self.drain_rate().unwrap_or(0.0) * self.sample_age().as_secs_f64();
        (self.lag() as f64 + written as f64 - drained).max(0.0)
    }

    /// The stream's length now, estimated: [`lag_estimate`](Self::lag_estimate) plus the
    /// entries being processed at the last sample.
    pub fn length_estimate(&self) -> f64 {
        self.lag_estimate() + self.pending() as f64
    }

    fn since(&self, nanos: u64) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_nanos(nanos))
    }

    fn now_nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// One consumer group's row of XINFO GROUPS.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub consumers: u64,
    pub pending: u64,
    /// `None` when Redis cannot compute it (Redis < 7, or after certain deletions).
    pub lag: Option<u64>,
    /// Entries delivered to the group since it was created (`entries-read`, Redis ≥ 7).
    pub entries_read: Option<u64>,
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
            entries_read: field("entries-read").and_then(Value::as_u64),
        }));
    }
    Ok(None)
}

/// Consumers of `group` whose last read or claim is more recent than `live_idle` (XINFO
/// CONSUMERS `idle`), and all consumers. A proxy with a free terminal takes waiting entries
/// within a second and refreshes its entries at least every second while all terminals are
/// busy, so while work waits a live proxy is never idle for long; a stopped or hung one is.
/// (Before Redis 7.2 `idle` restarts only on a read or claim that returns entries, so with
/// nothing waiting it says nothing about liveness: see [`sample_once`].)
pub async fn live_consumers(
    client: &Client,
    stream: &str,
    group: &str,
    live_idle: Duration,
) -> Result<(u64, u64), Error> {
    let reply: Value = client.xinfo_consumers(stream, group).await?;
    let Value::Array(consumers) = reply else {
        return Ok((0, 0));
    };
    let total = consumers.len() as u64;
    let mut live = 0;
    for consumer in consumers {
        let fields = consumer.into_map()?.inner();
        let idle = fields
            .iter()
            .find(|(key, _)| key.as_str() == Some("idle"))
            .and_then(|(_, value)| value.as_u64());
        if idle.is_some_and(|ms| ms < live_idle.as_millis() as u64) {
            live += 1;
        }
    }
    Ok((live, total))
}

/// What the sampler watches and how often.
#[derive(Debug, Clone)]
pub struct SamplerSettings {
    /// The request stream.
    pub stream: String,
    /// Its consumer group.
    pub group: String,
    /// Further streams whose length is published as `stream_length` (the dead-letter stream).
    pub also_measure: Vec<String>,
    /// Time between samples.
    pub interval: Duration,
    /// When set, count consumers idle less than this as alive (XINFO CONSUMERS each sample).
    pub live_idle: Option<Duration>,
}

/// Weight of the newest measurement in the drain-rate average: about the last second of
/// samples at the ingress's 200 ms interval counts.
const DRAIN_RATE_WEIGHT: f64 = 0.4;

/// Starts the sampler: every `interval` it reads XLEN, XINFO GROUPS and the served counter
/// (and XINFO CONSUMERS when asked), publishes the `stream_length`, `stream_group_lag`, `stream_group_pending` and
/// `stream_group_consumers` gauges, measures the drain rate, and re-creates the group when it is
/// missing. Stops when `shutdown` is cancelled.
pub fn spawn_sampler(
    client: Client,
    settings: SamplerSettings,
    shutdown: CancellationToken,
) -> Arc<StreamStats> {
    let stats = Arc::new(StreamStats::default());
    let published = stats.clone();
    tokio::spawn(async move {
        let mut previous: Option<Sample> = None;
        loop {
            if let Some(sample) = sample_once(&client, &settings, &published).await {
                if let Some(previous) = &previous {
                    update_drain_rate(&published, previous, &sample);
                }
                previous = Some(sample);
            }
            for other in &settings.also_measure {
                match client.xlen::<u64, _>(other.as_str()).await {
                    Ok(length) => metrics::gauge!("stream_length", "stream" => other.clone())
                        .set(length as f64),
                    Err(err) => record_error("xlen", &err),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(settings.interval) => {}
            }
        }
    });
    stats
}

/// What one sample saw, for the drain rate.
struct Sample {
    at: Instant,
    lag: u64,
    /// The stream's served counter ([`crate::protocol::served_counter`]).
    served: Option<u64>,
}

/// Folds the requests served between two samples into the drain rate — only when the group
/// had a backlog at both, i.e. the consumers worked as fast as they could all along (except for
/// the very first figure, see below). With no backlog the serving rate is the arrival rate,
/// which says nothing about capacity. Entries dropped because their deadline had passed are not
/// served: counting them (as the group's `entries-read` would) made a backlog of expired
/// entries look like a burst of capacity and let admission take far too much.
fn update_drain_rate(stats: &StreamStats, previous: &Sample, current: &Sample) {
    let (Some(before), Some(after)) = (previous.served, current.served) else {
        return;
    };
    let elapsed = current.at.duration_since(previous.at).as_secs_f64();
    if current.lag == 0 || elapsed <= 0.0 || after < before {
        return; // no backlog now, or the group was re-created (counter went back)
    }
    let measured = (after - before) as f64 / elapsed;
    let rate = match stats.drain_rate() {
        Some(rate) if previous.lag > 0 => rate + DRAIN_RATE_WEIGHT * (measured - rate),
        Some(_) => return, // backlogged only for part of the interval: says too little
        // The first backlog: a burst saturates the consumers at once, so the part-backlogged
        // interval is a fair first figure, and a low one errs on the side of refusing (fast
        // 503s) rather than admitting what would time out. Backlogged intervals refine it.
        None if measured > 0.0 => measured,
        None => return,
    };
    stats.drain_rate.store(rate.to_bits(), Ordering::Relaxed);
}

async fn sample_once(
    client: &Client,
    settings: &SamplerSettings,
    stats: &StreamStats,
) -> Option<Sample> {
    let (stream, group) = (settings.stream.as_str(), settings.group.as_str());
    let labels = [("stream", stream.to_string())];
    let group_labels = [("stream", stream.to_string()), ("group", group.to_string())];
    let at = Instant::now();
    let length = match client.xlen::<u64, _>(stream).await {
        Ok(length) => length,
        Err(err) => {
            record_error("xlen", &err);
            return None;
        }
    };
    stats.length.store(length, Ordering::Relaxed);
    metrics::gauge!("stream_length", &labels).set(length as f64);

    let info = group_info(client, stream, group).await;
    let served: Option<u64> = match client
        .get::<Option<u64>, _>(crate::protocol::served_counter(stream))
        .await
    {
        Ok(served) => Some(served.unwrap_or(0)),
        Err(err) => {
            record_error("get", &err);
            None
        }
    };
    // Entries this process wrote after this point count as written since the sample. Taken
    // after both reads: an entry written meanwhile may be missed by both (the estimate is low
    // for one interval; Redis enforces the backlog limit exactly anyway) but is never counted
    // twice, which would refuse requests for nothing.
    stats
        .enqueued_at_sample
        .store(stats.enqueued.load(Ordering::Relaxed), Ordering::Relaxed);
    stats.sampled_at.store(stats.now_nanos(), Ordering::Relaxed);
    let sample = match info {
        Ok(Some(info)) => {
            stats.group_present.store(true, Ordering::Relaxed);
            stats.pending.store(info.pending, Ordering::Relaxed);
            // Without a lag figure from Redis, every entry not pending is waiting.
            let lag = info.lag.unwrap_or(length.saturating_sub(info.pending));
            stats.lag.store(lag, Ordering::Relaxed);
            metrics::gauge!("stream_group_lag", &group_labels).set(lag as f64);
            metrics::gauge!("stream_group_pending", &group_labels).set(info.pending as f64);
            metrics::gauge!("stream_group_consumers", &group_labels).set(info.consumers as f64);
            Sample { at, lag, served }
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
            Sample {
                at,
                lag: 0,
                served: None,
            }
        }
        Err(err) => {
            record_error("xinfo_groups", &err);
            return None;
        }
    };
    if let Some(live_idle) = settings.live_idle {
        match live_consumers(client, stream, group, live_idle).await {
            Ok((live, total)) => {
                // Nothing waiting: an idle consumer may simply have had nothing to take
                // (Redis 7.0/7.1 do not refresh `idle` on an empty read), so only a group
                // without consumers counts as unserved. With work waiting, a consumer that
                // took nothing for `live_idle` is gone or hung.
                let live = if sample.lag == 0 { total } else { live };
                stats.live_consumers.store(live, Ordering::Relaxed);
                if live > 0 {
                    stats
                        .live_seen_at
                        .store(stats.now_nanos(), Ordering::Relaxed);
                }
            }
            // No group: nobody consumes. Other errors leave the last figures in place.
            Err(err) if crate::redis::is_nogroup(&err) => {
                stats.live_consumers.store(0, Ordering::Relaxed)
            }
            Err(err) => record_error("xinfo_consumers", &err),
        }
    }
    Some(sample)
}

/// Field bytes, shared with fred's buffers (cloning one copies nothing).
pub use fred::bytes::Bytes;

/// One entry read from a stream: its fields exactly as stored, bytes included. Readers that
/// want text ask for it field by field; nothing is dropped for not being UTF-8, so an
/// unreadable entry can still be copied whole (to the dead-letter stream) and replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id (`<ms>-<seq>`).
    pub id: String,
    /// Name/value pairs in stream order.
    pub fields: Vec<(Bytes, Bytes)>,
}

/// Bytes one stream read (XREAD, XREADGROUP, XCLAIM) should bring at most, judged by the
/// entries of the previous reads; see [`read_count`].
pub const MAX_READ_BYTES: usize = 1 << 20;

/// How many entries the next read asks for: up to `max_entries`, but no more than
/// [`MAX_READ_BYTES`] worth if entries are as large as `largest_entry` (see [`next_largest`];
/// 0 before the first read), and always at least one.
///
/// Why: the Redis client buffers a whole reply before it hands it over. With 1 MiB bodies one
/// XREADGROUP of 64 entries (the proxy) or one XREAD of 1,000 replies (the ingress) would hold
/// 64 MiB or 1 GiB at once. Small entries (~300 bytes) never reach the byte bound; their reads
/// stay as large as before.
pub fn read_count(max_entries: usize, largest_entry: usize) -> usize {
    let by_bytes = MAX_READ_BYTES
        .checked_div(largest_entry)
        .unwrap_or(usize::MAX);
    max_entries.min(by_bytes).max(1)
}

/// The entry size [`read_count`] plans the next read with, after a read that brought
/// `entries`: the largest of them, or half the previous figure if that is larger. Halving
/// rather than forgetting means one small entry (a probe, a tiny request) between large ones
/// does not open the next read to the full entry count at once; after a run of small entries
/// the bound relaxes within a few reads.
pub fn next_largest(previous: usize, entries: &[StreamEntry]) -> usize {
    let largest = entries.iter().map(StreamEntry::size).max().unwrap_or(0);
    largest.max(previous / 2)
}

impl StreamEntry {
    /// Bytes of its names and values: what the entry costs in a reply frame and in memory.
    pub fn size(&self) -> usize {
        self.id.len()
            + self
                .fields
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    }

    /// The value of field `name`, as bytes.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.fields
            .iter()
            .find(|(key, _)| key.as_ref() == name.as_bytes())
            .map(|(_, value)| value)
    }

    /// The value of field `name`, when it is UTF-8.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// The fields by name, values as raw bytes (for decoding the protocol: an `http` entry's
    /// body and headers may be any bytes). Names that are not UTF-8 are dropped.
    pub fn fields_by_name(&self) -> crate::protocol::Fields {
        self.fields
            .iter()
            .filter_map(|(key, value)| {
                Some((std::str::from_utf8(key).ok()?.to_string(), value.clone()))
            })
            .collect()
    }

    /// The fields whose name and value are UTF-8, by name (for decoding the protocol, whose
    /// fields are text; a field that is not UTF-8 is simply absent here).
    pub fn text_fields(&self) -> std::collections::HashMap<String, String> {
        self.fields
            .iter()
            .filter_map(|(key, value)| {
                Some((
                    std::str::from_utf8(key).ok()?.to_string(),
                    std::str::from_utf8(value).ok()?.to_string(),
                ))
            })
            .collect()
    }
}

fn field_pair(key: Value, value: Value) -> Option<(Bytes, Bytes)> {
    Some((key.into_bytes()?, value.into_bytes()?))
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
                .filter_map(|(key, value)| Some((key.into_bytes(), value.into_bytes()?)))
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
        let pairs: Vec<(Bytes, Bytes)> = match fields {
            // RESP2: a flat array of names and values.
            Value::Array(flat) => {
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut values = flat.into_iter();
                while let (Some(key), Some(value)) = (values.next(), values.next()) {
                    pairs.extend(field_pair(key, value));
                }
                pairs
            }
            // RESP3: a map.
            Value::Map(map) => map
                .inner()
                .into_iter()
                .filter_map(|(key, value)| Some((key.into_bytes(), value.into_bytes()?)))
                .collect(),
            _ => continue, // nil: deleted
        };
        entries.push(StreamEntry { id, fields: pairs });
    }
    Ok(entries)
}

/// A stream entry id, `<milliseconds>-<sequence>`, comparable: ids of one stream grow with
/// every XADD, and their millisecond part is Redis's clock, so ids of different streams of one
/// server can be compared at millisecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    /// The first possible id of millisecond `ms`.
    pub fn at_ms(ms: u64) -> Self {
        EntryId { ms, seq: 0 }
    }
}

/// Exactly the texts [`EntryId`]'s `from_str` accepts, as a JSON Schema pattern, for the OpenAPI
/// document of the dead-letter routes (a unit test compares the two): two whole numbers of at
/// most `u64::MAX` (18446744073709551615), leading zeros allowed, joined by `-`. The
/// alternatives spell out "at most 20 digits and not above the maximum" digit by digit.
pub const ENTRY_ID_PATTERN: &str = "^0*(?:[0-9]{1,19}|1[0-7][0-9]{18}|18[0-3][0-9]{17}|184[0-3][0-9]{16}|1844[0-5][0-9]{15}|18446[0-6][0-9]{14}|184467[0-3][0-9]{13}|1844674[0-3][0-9]{12}|184467440[0-6][0-9]{10}|1844674407[0-2][0-9]{9}|18446744073[0-6][0-9]{8}|1844674407370[0-8][0-9]{6}|18446744073709[0-4][0-9]{5}|184467440737095[0-4][0-9]{4}|18446744073709550[0-9]{3}|18446744073709551[0-5][0-9]{2}|1844674407370955160[0-9]|1844674407370955161[0-4]|18446744073709551615)-0*(?:[0-9]{1,19}|1[0-7][0-9]{18}|18[0-3][0-9]{17}|184[0-3][0-9]{16}|1844[0-5][0-9]{15}|18446[0-6][0-9]{14}|184467[0-3][0-9]{13}|1844674[0-3][0-9]{12}|184467440[0-6][0-9]{10}|1844674407[0-2][0-9]{9}|18446744073[0-6][0-9]{8}|1844674407370[0-8][0-9]{6}|18446744073709[0-4][0-9]{5}|184467440737095[0-4][0-9]{4}|18446744073709550[0-9]{3}|18446744073709551[0-5][0-9]{2}|1844674407370955160[0-9]|1844674407370955161[0-4]|18446744073709551615)$";

impl std::str::FromStr for EntryId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            let shown: String = text.chars().take(64).collect();
            let ellipsis = if text.chars().count() > 64 { "…" } else { "" };
            format!(
                "`{shown}{ellipsis}` is not a stream entry id: expected <milliseconds>-<sequence>, both whole numbers of at most {}, like 1700000000000-0",
                u64::MAX
            )
        };
        let (ms, seq) = text.split_once('-').ok_or_else(invalid)?;
        let number = |part: &str| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            part.parse::<u64>().map_err(|_| invalid())
        };
        Ok(EntryId {
            ms: number(ms)?,
            seq: number(seq)?,
        })
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_entries_are_read_up_to_the_entry_limit() {
        assert_eq!(read_count(64, 0), 64);
        assert_eq!(read_count(64, 300), 64);
        assert_eq!(read_count(1_000, 300), 1_000);
        assert_eq!(read_count(3, 300), 3);
    }

    #[test]
    fn the_planned_entry_size_halves_after_small_reads_instead_of_forgetting() {
        let entry = |bytes: usize| StreamEntry {
            id: "1-1".into(),
            fields: vec![(
                Bytes::from_static(b"payload"),
                Bytes::from(vec![0u8; bytes]),
            )],
        };
        let big = next_largest(0, &[entry(1 << 20), entry(10)]);
        assert!(big > 1 << 20, "the largest entry of a read counts");
        let after_small = next_largest(big, &[entry(10)]);
        assert_eq!(after_small, big / 2, "one small read halves it");
        assert!(read_count(64, after_small) <= 2, "still a few at a time");
        let mut planned = after_small;
        for _ in 0..30 {
            planned = next_largest(planned, &[]);
        }
        assert_eq!(
            read_count(64, planned),
            64,
            "a run of empty reads relaxes it"
        );
    }

    #[test]
    fn large_entries_are_read_a_few_at_a_time_and_never_none() {
        assert_eq!(read_count(64, 100 * 1024), 10);
        assert_eq!(read_count(1_000, 1 << 20), 1);
        assert_eq!(read_count(64, 64 << 20), 1);
        assert_eq!(read_count(0, 0), 1);
    }

    /// The documented pattern accepts exactly what `from_str` accepts, around the edges of the
    /// range (u64::MAX, one above, every digit position) and with leading zeros.
    #[test]
    fn the_documented_pattern_matches_the_parser() {
        let pattern = regex::Regex::new(ENTRY_ID_PATTERN).expect("pattern"); // invariant: test code; a failure here is the test failing
        let max = u128::from(u64::MAX);
        let mut numbers: Vec<String> = vec!["0".into(), "00".into(), "".into(), "+1".into()];
        for edge in [max, max + 1, max - 1, max + 10, max + 100] {
            numbers.push(edge.to_string());
            numbers.push(format!("000{edge}"));
        }
        for digits in 1..=22u32 {
            let low = 10u128.pow(digits - 1);
            for n in [low, low * 2 - 1, low * 10 - 1, low * 5 + 3] {
                numbers.push(n.to_string());
            }
        }
        // Every number that differs from u64::MAX in one digit.
        let text = max.to_string();
        for position in 0..text.len() {
            for digit in '0'..='9' {
                let mut changed: Vec<char> = text.chars().collect();
                changed[position] = digit;
                numbers.push(changed.into_iter().collect());
            }
        }
        for ms in &numbers {
            for seq in ["0", "18446744073709551615", "18446744073709551616"] {
                for id in [format!("{ms}-{seq}"), format!("{seq}-{ms}")] {
                    assert_eq!(pattern.is_match(&id), id.parse::<EntryId>().is_ok(), "{id}");
                }
            }
        }
    }

    #[test]
    fn entry_ids_parse_and_order() {
        let a: Result<EntryId, _> = "1700000000000-5".parse();
        let b: Result<EntryId, _> = "1700000000001-0".parse();
        assert_eq!(
            a,
            Ok(EntryId {
                ms: 1_700_000_000_000,
                seq: 5
            })
        );
        assert!(a < b);
        for bad in ["", "1-", "-1", "1", "a-1", "18446744073709551616-0", "1-+2"] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad}");
        }
    }
}
