//! This instance's reply stream: the waiters for replies, the one reader that hands replies
//! to them, and the keeper that holds the stream's expiry while the instance lives.
//!
//! One reader per process with a map correlation-id → oneshot sender is the shape NATS's
//! inbox uses: a reply costs one map lookup, whatever the number of requests in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fred::prelude::*;
use shared::protocol::ReplyEntry;
use shared::redis::record_error;
use shared::streams::read_entries;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

/// Replies read per XREAD call at most.
const READ_COUNT: u64 = 1_000;
/// How long one XREAD blocks before the loop checks for shutdown.
const READ_BLOCK_MS: u64 = 1_000;

/// The waiters of this instance, by request id.
#[derive(Default)]
pub struct PendingReplies {
    waiters: Mutex<HashMap<String, oneshot::Sender<ReplyEntry>>>,
}

/// The request id is already awaiting a reply on this instance.
#[derive(Debug)]
pub struct DuplicateRequestId;

/// A registered wait for one reply. Dropping it (timeout, client gone) unregisters it, so a
/// late reply finds nobody and is discarded.
pub struct Waiter {
    request_id: String,
    receiver: oneshot::Receiver<ReplyEntry>,
    registry: Arc<PendingReplies>,
}

impl Waiter {
    /// Resolves with the reply; `None` only if the registry was dropped.
    pub async fn reply(&mut self) -> Option<ReplyEntry> {
        (&mut self.receiver).await.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.request_id);
    }
}

impl PendingReplies {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<ReplyEntry>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single insert or
        // remove), so a poisoned lock is still usable.
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a waiter for `request_id`. Must happen before the request is written, so
    /// that even an instant reply finds its waiter.
    pub fn register(self: &Arc<Self>, request_id: &str) -> Result<Waiter, DuplicateRequestId> {
        let (sender, receiver) = oneshot::channel();
        let mut waiters = self.lock();
        if waiters.contains_key(request_id) {
            return Err(DuplicateRequestId);
        }
        waiters.insert(request_id.to_string(), sender);
        Ok(Waiter {
            request_id: request_id.to_string(),
            receiver,
            registry: self.clone(),
        })
    }

    /// Hands `reply` to its waiter; false when nobody waits (timed out, or a duplicate).
    pub fn complete(&self, reply: ReplyEntry) -> bool {
        let sender = self.lock().remove(&reply.request_id);
        match sender {
            Some(sender) => sender.send(reply).is_ok(),
            None => false,
        }
    }

    /// Number of requests awaiting replies.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no request awaits a reply.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Creates the reply stream (XADD of a marker entry) and returns the marker's id, from which
/// the reader starts. The proxy writes replies with NOMKSTREAM, so the stream must exist
/// before the first request is sent.
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
    let mut backoff = Duration::from_millis(50);
    loop {
        let read = blocking.xread::<Value, _, _>(
            Some(READ_COUNT),
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
                    tracing::warn!(error = %err, stream, "reading replies failed; retrying");
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
        let read_any = !entries.is_empty();
        for entry in entries {
            last_id = entry.id;
            deliver(&pending, entry.fields);
        }
        if read_any {
            // Everything before the last read entry has been handed over; drop it so the
            // reply stream stays small. Not awaited: the next read need not wait for it.
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

fn deliver(pending: &PendingReplies, text: HashMap<String, String>) {
    if text.contains_key("created_by") {
        return; // the stream's creation marker
    }
    match ReplyEntry::from_fields(text) {
        Ok(reply) => {
            let request_id = reply.request_id.clone();
            if !pending.complete(reply) {
                metrics::counter!("ingress_replies_unmatched_total").increment(1);
                tracing::debug!(
                    request_id,
                    "reply for a request nobody awaits (timed out or duplicate); discarded"
                );
            }
        }
        Err(err) => {
            metrics::counter!("ingress_replies_invalid_total").increment(1);
            tracing::warn!(error = %err, "unreadable reply entry discarded");
        }
    }
}

/// How often the keeper refreshes the reply stream's expiry and checks it still exists. One
/// cheap command per second bounds how long replies can be lost after Redis lost its data.
const KEEPER_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps the reply stream alive: refreshes its expiry every second (at most every quarter of
/// `ttl`), and re-creates it when it is gone (Redis lost its data) — at once after a
/// reconnect, signalled through `reconnected`. Deletes the stream when `stop` is cancelled.
pub async fn keep_reply_stream(
    commands: Client,
    stream: String,
    instance_id: String,
    ttl: Duration,
    reconnected: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        match commands
            .pexpire::<bool, _>(stream.as_str(), ttl.as_millis() as i64, None)
            .await
        {
            Ok(true) => {}
            Ok(false) => match create_reply_stream(&commands, &stream, &instance_id, ttl).await {
                Ok(_) => tracing::warn!(
                    stream,
                    "reply stream was missing (Redis restarted?); re-created it"
                ),
                Err(err) => record_error("xadd", &err),
            },
            Err(err) => record_error("pexpire", &err),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = reconnected.notified() => {}
            _ = tokio::time::sleep(KEEPER_INTERVAL.min(ttl / 4)) => {}
        }
    }
    if let Err(err) = commands.del::<(), _>(stream.as_str()).await {
        record_error("del", &err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::protocol::ReplyStatus;

    fn reply(id: &str) -> ReplyEntry {
        ReplyEntry {
            request_id: id.into(),
            status: ReplyStatus::Ok,
            payload: "{}".into(),
            proxy: "p".into(),
        }
    }

    #[tokio::test]
    async fn a_reply_reaches_its_waiter_and_only_once() {
        let pending = Arc::new(PendingReplies::default());
        let Ok(mut waiter) = pending.register("a") else {
            panic!("first registration refused");
        };
        assert!(
            pending.register("a").is_err(),
            "duplicate id must be refused"
        );
        assert!(pending.complete(reply("a")));
        assert_eq!(waiter.reply().await.map(|r| r.request_id), Some("a".into()));
        assert!(!pending.complete(reply("a")), "second reply finds nobody");
    }

    #[test]
    fn dropping_a_waiter_unregisters_it() {
        let pending = Arc::new(PendingReplies::default());
        let Ok(waiter) = pending.register("b") else {
            panic!("registration refused");
        };
        assert_eq!(pending.len(), 1);
        drop(waiter);
        assert!(pending.is_empty());
        assert!(!pending.complete(reply("b")));
    }
}
