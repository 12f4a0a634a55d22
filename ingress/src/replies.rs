//! This instance's reply stream: the waiters for replies, the one reader that hands replies
//! to them, and the keeper that holds the stream's expiry while the instance lives.
//!
//! One reader per process with a map token → oneshot sender is the shape NATS's inbox uses:
//! a reply costs one map lookup, whatever the number of requests in flight. Waiters are keyed
//! by the attempt's reply token, not by the client's request id: a client may reuse an id after
//! a 504, and the late reply of the first attempt must never answer the second.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fred::prelude::*;
use shared::protocol::{ReplyEntry, reply_fields};
use shared::redis::record_error;
use shared::streams::{EntryId, next_largest, read_count, read_entries};
use shared::telemetry::LogLimiter;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::broker::Enqueuer;

/// Replies read per XREAD call at most (fewer when replies are large: `read_count`).
const READ_COUNT: usize = 1_000;
/// How long one XREAD blocks before the loop checks for shutdown.
const READ_BLOCK_MS: u64 = 1_000;
/// Replies handed over stay in the stream until this many bytes of them accumulate...
const TRIM_BYTES: usize = 1 << 20;
/// ...or the oldest of them was read this long ago (checked after each read, so at worst one
/// more `READ_BLOCK_MS` passes when replies stop coming).
const TRIM_AFTER: Duration = Duration::from_millis(100);

/// What a waiter receives.
#[derive(Debug)]
pub enum Answer {
    /// The proxy's reply.
    Reply(ReplyEntry),
    /// A reply arrived for this attempt but could not be read (e.g. an unknown status).
    Invalid(String),
    /// Redis lost its data (restart without persistence, FLUSHALL) while the request waited:
    /// its entry is gone and no reply can be relied on.
    Lost,
}

struct Slot {
    request_id: String,
    sender: oneshot::Sender<Answer>,
    /// The request entry's id once the write succeeded.
    entry: Option<EntryId>,
}

#[derive(Default)]
struct Waiters {
    by_token: HashMap<String, Slot>,
    /// Request ids in flight, for the 409 on a concurrent duplicate.
    ids: HashSet<String>,
    /// Entries older than this were lost with Redis's data.
    lost_before: Option<EntryId>,
}

/// The waiters of this instance, by reply token.
#[derive(Default)]
pub struct PendingReplies {
    waiters: Mutex<Waiters>,
}

/// The request id is already awaiting a reply on this instance.
#[derive(Debug)]
pub struct DuplicateRequestId;

/// A registered wait for one reply. Dropping it (timeout, client gone) unregisters it, so a
/// late reply finds nobody and is discarded.
pub struct Waiter {
    token: String,
    receiver: oneshot::Receiver<Answer>,
    registry: Arc<PendingReplies>,
}

impl Waiter {
    /// Resolves with the answer; `None` only if the registry was dropped.
    pub async fn answer(&mut self) -> Option<Answer> {
        (&mut self.receiver).await.ok()
    }

    /// The attempt's reply token.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiters = self.registry.lock();
        if let Some(slot) = waiters.by_token.remove(&self.token) {
            waiters.ids.remove(&slot.request_id);
        }
    }
}

impl PendingReplies {
    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // A panic while holding this lock cannot leave the maps inconsistent (each critical
        // section is a few inserts or removes), so a poisoned lock is still usable.
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a waiter for the attempt `token` of `request_id`. Must happen before the
    /// request is written, so that even an instant reply finds its waiter.
    pub fn register(
        self: &Arc<Self>,
        request_id: &str,
        token: String,
    ) -> Result<Waiter, DuplicateRequestId> {
        let (sender, receiver) = oneshot::channel();
        let mut waiters = self.lock();
        if !waiters.ids.insert(request_id.to_string()) {
            return Err(DuplicateRequestId);
        }
        waiters.by_token.insert(
            token.clone(),
            Slot {
                request_id: request_id.to_string(),
                sender,
                entry: None,
            },
        );
        Ok(Waiter {
            token,
            receiver,
            registry: self.clone(),
        })
    }

    /// Records that the request of `token` was written as entry `entry`. If Redis's data loss
    /// was already detected past that entry, the waiter is failed at once.
    pub fn enqueued(&self, token: &str, entry: EntryId) {
        let mut waiters = self.lock();
        let lost = waiters.lost_before.is_some_and(|before| entry < before);
        if lost {
            if let Some(slot) = waiters.by_token.remove(token) {
                waiters.ids.remove(&slot.request_id);
                let _ = slot.sender.send(Answer::Lost);
            }
        } else if let Some(slot) = waiters.by_token.get_mut(token) {
            slot.entry = Some(entry);
        }
    }

    /// Redis lost its data: every request written before entry id `before` is gone. Fails
    /// their waiters at once (instead of letting them wait for their deadline) and returns how
    /// many there were.
    pub fn lost(&self, before: EntryId) -> usize {
        let mut waiters = self.lock();
        let before = waiters
            .lost_before
            .map_or(before, |known| known.max(before));
        waiters.lost_before = Some(before);
        let gone: Vec<String> = waiters
            .by_token
            .iter()
            .filter(|(_, slot)| slot.entry.is_some_and(|entry| entry < before))
            .map(|(token, _)| token.clone())
            .collect();
        for token in &gone {
            if let Some(slot) = waiters.by_token.remove(token) {
                waiters.ids.remove(&slot.request_id);
                let _ = slot.sender.send(Answer::Lost);
            }
        }
        gone.len()
    }

    /// Hands `answer` to the waiter of `token` if it waits for `request_id`; false when nobody
    /// waits (timed out, a duplicate, another instance's token).
    fn complete(&self, token: &str, request_id: &str, answer: Answer) -> bool {
        let mut waiters = self.lock();
        match waiters.by_token.get(token) {
            Some(slot) if slot.request_id == request_id => {}
            _ => return false,
        }
        let Some(slot) = waiters.by_token.remove(token) else {
            return false;
        };
        waiters.ids.remove(&slot.request_id);
        slot.sender.send(answer).is_ok()
    }

    /// Number of requests awaiting replies.
    pub fn len(&self) -> usize {
        self.lock().by_token.len()
    }

    /// Whether no request awaits a reply.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Creates the reply stream (XADD of a marker entry) and returns the marker's id, from which
/// the reader starts: replies written before it (to an earlier process with the same
/// INSTANCE_ID) are never read. The proxy writes replies with NOMKSTREAM, so the stream must
/// exist before the first request is sent.
pub async fn create_reply_stream(
    commands: &Client,
    stream: &str,
    instance_id: &str,
    ttl: Duration,
) -> Result<String, Error> {
    let id: String = commands
        .xadd(stream, false, None, "*", vec![("created_by", instance_id)])
        .await?;
    let _: bool = commands
        .pexpire(stream, ttl.as_millis() as i64, None)
        .await?;
    Ok(id)
}

/// Reads the reply stream with XREAD BLOCK on `blocking` (a client of its own: the blocking
/// read would stall every other command on a shared connection), hands replies to their
/// waiters and trims what was read. Runs until `stop` is cancelled.
pub async fn read_replies(
    blocking: Client,
    commands: Client,
    stream: String,
    pending: Arc<PendingReplies>,
    mut last_id: String,
    stop: CancellationToken,
) {
    static READ_FAILED: LogLimiter = LogLimiter::new(1);
    let mut backoff = Duration::from_millis(50);
    let mut largest_entry = 0;
    let mut untrimmed = Untrimmed::default();
    loop {
        let count = read_count(READ_COUNT, largest_entry);
        let read = blocking.xread::<Value, _, _>(
            Some(count as u64),
            Some(READ_BLOCK_MS),
            stream.as_str(),
            last_id.as_str(),
        );
        let entries = tokio::select! {
            _ = stop.cancelled() => return,
            response = read => match response.and_then(read_entries) {
                Ok(entries) => entries,
                Err(err) => {
                    record_error("xread", &err);
                    if let Some(suppressed) = READ_FAILED.check() {
                        tracing::warn!(error = %err, stream, suppressed, "reading replies failed; retrying");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
        };
        backoff = Duration::from_millis(50);
        largest_entry = next_largest(largest_entry, &entries);
        for entry in entries {
            untrimmed.read(entry.size());
            deliver(&pending, entry.fields_by_name());
            last_id = entry.id;
        }
        if untrimmed.due() {
            untrimmed = Untrimmed::default();
            // Everything before the last read entry has been handed over; drop it so the
            // reply stream stays small (MINID keeps the last one). Not awaited: the next read need not wait for it.
            let commands = commands.clone();
            let stream = stream.clone();
            let min_id = last_id.clone();
            tokio::spawn(async move {
                if let Err(err) = commands
                    .xtrim::<(), _, _>(stream.as_str(), ("MINID", "=", min_id.as_str()))
                    .await
                {
                    record_error("xtrim", &err);
                }
            });
        }
    }
}

/// Replies read (and handed over) since the reply stream was last trimmed. Trimming after
/// every read cost one more Redis command per request whenever replies come one per read
/// faster than every 100 ms (e.g. one client after another against a fast backend);
/// trimming by amount or age keeps the stream as bounded (about [`TRIM_BYTES`],
/// or [`TRIM_AFTER`] plus one read's block of replies) for a fraction of the commands.
#[derive(Default)]
struct Untrimmed {
    bytes: usize,
    oldest: Option<Instant>,
}

impl Untrimmed {
    fn read(&mut self, bytes: usize) {
        self.bytes += bytes;
        self.oldest.get_or_insert_with(Instant::now);
    }

    /// Whether the stream should be trimmed now.
    fn due(&self) -> bool {
        self.bytes >= TRIM_BYTES || self.oldest.is_some_and(|read| read.elapsed() >= TRIM_AFTER)
    }
}

fn deliver(pending: &PendingReplies, fields: shared::protocol::Fields) {
    static UNREADABLE: LogLimiter = LogLimiter::new(5);
    if fields.contains_key("created_by") {
        return; // the stream's creation marker, or the keeper's write probe
    }
    let text = |name: &str| {
        fields
            .get(name)
            .map(|value| String::from_utf8_lossy(value).into_owned())
    };
    let token = text(reply_fields::TOKEN);
    let request_id = text(reply_fields::REQUEST_ID);
    let (Some(token), Some(request_id)) = (token, request_id) else {
        // A reply without a token answers a version 1 request, which this ingress never
        // writes: nobody here can be waiting for it.
        metrics::counter!("ingress_replies_unmatched_total").increment(1);
        return;
    };
    let answer = match ReplyEntry::from_fields(fields) {
        Ok(reply) => Answer::Reply(reply),
        Err(err) => {
            metrics::counter!("ingress_replies_invalid_total").increment(1);
            if let Some(suppressed) = UNREADABLE.check() {
                tracing::warn!(request_id, error = %err, suppressed, "unreadable reply; its caller gets a 502");
            }
            Answer::Invalid(err.to_string())
        }
    };
    if !pending.complete(&token, &request_id, answer) {
        metrics::counter!("ingress_replies_unmatched_total").increment(1);
        tracing::debug!(
            request_id,
            "reply for a request nobody awaits (timed out, duplicate, or an earlier attempt); discarded"
        );
    }
}

/// How often the keeper refreshes the reply stream's expiry and checks it still exists. One
/// cheap script call per second bounds how long a data loss goes unnoticed when no request
/// comes (a request's own write notices it at once).
const KEEPER_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps the reply stream alive: refreshes its expiry every second (at most every quarter of
/// the TTL) and re-creates it when it is gone (Redis lost its data), failing the requests that
/// were waiting — at once after a reconnect, signalled through `reconnected`. While Redis
/// refuses writes for lack of memory it probes with a write each round, so readiness recovers
/// without traffic. Deletes the stream when `stop` is cancelled.
pub async fn keep_reply_stream(
    commands: Client,
    enqueuer: Enqueuer,
    reconnected: Arc<Notify>,
    stop: CancellationToken,
) {
    let interval = KEEPER_INTERVAL.min(enqueuer.reply_ttl() / 4);
    loop {
        if let Err(err) = enqueuer.keep_reply_stream().await {
            record_error("keep_reply_stream", &err);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = reconnected.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
    let deleted =
        shared::redis::at_shutdown(&commands, commands.del::<(), _>(enqueuer.reply_stream())).await;
    if let Some(Err(err)) = deleted {
        record_error("del", &err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::protocol::ReplyStatus;

    fn reply(id: &str, token: &str) -> ReplyEntry {
        ReplyEntry {
            request_id: id.into(),
            token: Some(token.into()),
            status: ReplyStatus::Ok,
            payload: "{}".into(),
            proxy: "p".into(),
            http: None,
        }
    }

    #[test]
    fn the_stream_is_trimmed_by_amount_or_age_not_after_every_read() {
        let mut untrimmed = Untrimmed::default();
        assert!(!untrimmed.due(), "nothing read, nothing to trim");
        untrimmed.read(200);
        assert!(!untrimmed.due(), "one small reply just read waits");
        untrimmed.read(TRIM_BYTES);
        assert!(untrimmed.due(), "a mebibyte of replies is trimmed at once");
        if let Some(then) = Instant::now().checked_sub(TRIM_AFTER) {
            let old = Untrimmed {
                bytes: 200,
                oldest: Some(then),
            };
            assert!(old.due(), "replies read long enough ago are trimmed");
        }
    }

    fn complete(pending: &PendingReplies, id: &str, token: &str) -> bool {
        pending.complete(token, id, Answer::Reply(reply(id, token)))
    }

    #[tokio::test]
    async fn a_reply_reaches_its_waiter_and_only_once() {
        let pending = Arc::new(PendingReplies::default());
        let Ok(mut waiter) = pending.register("a", "t1".into()) else {
            panic!("first registration refused");
        };
        assert!(
            pending.register("a", "t2".into()).is_err(),
            "duplicate id must be refused"
        );
        assert!(complete(&pending, "a", "t1"));
        assert!(matches!(waiter.answer().await, Some(Answer::Reply(r)) if r.request_id == "a"));
        assert!(!complete(&pending, "a", "t1"), "second reply finds nobody");
    }

    #[test]
    fn dropping_a_waiter_unregisters_it() {
        let pending = Arc::new(PendingReplies::default());
        let Ok(waiter) = pending.register("b", "t1".into()) else {
            panic!("registration refused");
        };
        assert_eq!(pending.len(), 1);
        drop(waiter);
        assert!(pending.is_empty());
        assert!(!complete(&pending, "b", "t1"));
        assert!(
            pending.register("b", "t2".into()).is_ok(),
            "the id is free again"
        );
    }

    #[test]
    fn a_late_reply_of_an_earlier_attempt_does_not_answer_a_reused_id() {
        let pending = Arc::new(PendingReplies::default());
        let first = pending.register("dup-1", "t1".into());
        drop(first); // the first attempt got its 504
        let Ok(_second) = pending.register("dup-1", "t2".into()) else {
            panic!("the id is free after the first attempt ended");
        };
        assert!(
            !complete(&pending, "dup-1", "t1"),
            "the first attempt's reply must not complete the second"
        );
        assert!(complete(&pending, "dup-1", "t2"));
    }

    #[test]
    fn a_token_with_another_request_id_completes_nothing() {
        let pending = Arc::new(PendingReplies::default());
        let _waiter = pending.register("x", "t1".into());
        assert!(!complete(&pending, "y", "t1"));
        assert_eq!(pending.len(), 1);
    }

    #[tokio::test]
    async fn a_data_loss_fails_the_requests_written_before_it_only() {
        let pending = Arc::new(PendingReplies::default());
        let id = |ms| EntryId { ms, seq: 0 };
        let (Ok(mut old), Ok(mut new), Ok(mut unsent), Ok(mut late)) = (
            pending.register("old", "t1".into()),
            pending.register("new", "t2".into()),
            pending.register("unsent", "t3".into()),
            pending.register("late", "t4".into()),
        ) else {
            panic!("registration refused");
        };
        pending.enqueued("t1", id(10));
        pending.enqueued("t2", id(30));
        assert_eq!(pending.lost(id(20)), 1);
        assert!(matches!(old.answer().await, Some(Answer::Lost)));
        // Written before the loss, but its write's answer was handled after the detection.
        pending.enqueued("t4", id(15));
        assert!(matches!(late.answer().await, Some(Answer::Lost)));
        assert!(complete(&pending, "new", "t2"));
        assert!(matches!(new.answer().await, Some(Answer::Reply(_))));
        pending.enqueued("t3", id(40));
        assert!(complete(&pending, "unsent", "t3"));
        assert!(matches!(unsent.answer().await, Some(Answer::Reply(_))));
    }
}
