//! Answering a request: write the reply to the caller's stream, then acknowledge.
//!
//! The order is the delivery guarantee. Reply first, XACK second: if the proxy dies between
//! the two, the entry stays pending and is processed again (at-least-once; the ingress
//! ignores the second reply). The other order could lose a request.
//!
//! On the normal path both happen in one Lua script, `shared/lua/reply_and_ack.lua`: atomic, so there is no
//! window in which a proxy dies after replying but before acknowledging. Terminals do not call
//! it one by one: they hand their reply to the [`ReplyQueue`], whose single writer sends every
//! reply that is waiting in one script call ("group commit"). One reply alone goes out at once;
//! under load the replies that finished while the previous call was in flight share the next
//! one, so the Redis round trip, the Lua call and the XACK/XDEL are paid once per batch instead
//! of once per request. Every call goes through the circuit breaker and is retried with backoff
//! until the latest deadline in the batch, so a Redis blip (reconnect, AOF loading) does not
//! lose a reply.

use std::sync::Arc;

use fred::prelude::*;
use shared::batch::Batcher;
use shared::protocol::ReplyEntry;
use shared::redis::{MemoryState, record_error};
use shared::resilience::{CircuitBreaker, GuardedError, guarded, retry_transient};
use tokio::time::Instant;

/// Most replies one script call carries. Redis runs a script without serving anyone else, so
/// this bounds that pause (~0.5 ms here) and the size of one call; it is far above the batches
/// seen at saturation (about the number of busy terminals that finish during one round trip).
pub const MAX_BATCH: usize = 128;

/// Most reply bytes one script call carries (a lone larger reply still goes alone). A batch is
/// encoded into one command buffer that the Redis client keeps for reuse: under 1 MiB bodies
/// at 8 concurrent requests, unbounded batches of ~8 MiB raised the proxy's peak memory by
/// tens of MiB. Small replies (~300 bytes) never reach this; they stay bounded by MAX_BATCH.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Batches of replies written at once. One at a time left a quarter of the CPU idle at
/// saturation (the writer waited for each round trip); a few keep Redis busy.
pub const WRITES_IN_FLIGHT: usize = 2;

/// Writes replies and acknowledges entries of the request stream.
#[derive(Clone)]
pub struct Responder {
    commands: Client,
    request_stream: String,
    served_counter: String,
    group: String,
    breaker: Arc<CircuitBreaker>,
    memory: Arc<MemoryState>,
}

/// What happened to a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Appended to the caller's reply stream.
    Written,
    /// The reply stream no longer exists (its ingress is gone); nothing was written.
    NoReplyStream,
}

fn into_error(err: GuardedError<Error>) -> Error {
    match err {
        GuardedError::Failed(err) => err,
        GuardedError::CircuitOpen(open) => Error::new(
            fred::error::ErrorKind::Unknown,
            format!("circuit open around Redis; retry in {:?}", open.retry_after),
        ),
    }
}

impl Responder {
    /// A responder for `group` on `request_stream`, using the non-blocking client.
    pub fn new(
        commands: Client,
        request_stream: &str,
        group: &str,
        breaker: Arc<CircuitBreaker>,
        memory: Arc<MemoryState>,
    ) -> Self {
        Responder {
            commands,
            request_stream: request_stream.to_string(),
            served_counter: shared::protocol::served_counter(request_stream),
            group: group.to_string(),
            breaker,
            memory,
        }
    }

    /// Appends `reply` to `reply_to` with NOMKSTREAM, so a reply to a dead ingress never
    /// re-creates its stream. Retries transient failures until `deadline`.
    pub async fn send(
        &self,
        reply_to: &str,
        reply: &ReplyEntry,
        deadline: Instant,
    ) -> Result<Delivery, Error> {
        let fields = reply.to_fields();
        let id: Option<String> = guarded(&self.breaker, deadline, retry_transient, || {
            self.commands
                .xadd(reply_to, true, None, "*", fields.clone())
        })
        .await
        .map_err(into_error)
        .inspect_err(|err| record_error("xadd_reply", err))?;
        Ok(match id {
            Some(_) => Delivery::Written,
            None => Delivery::NoReplyStream,
        })
    }

    /// Writes every reply of `batch` and acknowledges (XACK + XDEL) the entries whose reply
    /// was written, in one atomic script call. Retries transient failures until the latest
    /// deadline of the batch; when that fails nothing happened and every entry stays pending.
    /// Otherwise returns one outcome per reply, in order.
    async fn reply_and_acknowledge(
        &self,
        batch: &[PendingReply],
    ) -> Result<Vec<Result<Delivery, Error>>, Error> {
        let mut keys: Vec<Key> = Vec::with_capacity(batch.len() + 2);
        keys.push(Key::from(self.request_stream.as_str()));
        keys.push(Key::from(self.served_counter.as_str()));
        let mut args: Vec<Value> = Vec::with_capacity(1 + batch.len() * 12);
        args.push(Value::from(self.group.as_str()));
        let mut deadline = Instant::now();
        for reply in batch {
            keys.push(Key::from(reply.reply_to.as_str()));
            args.push(Value::from(reply.entry_id.as_str()));
            args.push(Value::from(reply.fields.len() as i64 * 2));
            for (field, value) in &reply.fields {
                args.push(Value::from_static_str(field));
                args.push(Value::Bytes(value.clone()));
            }
            deadline = deadline.max(reply.deadline);
        }
        // Keys and values are reference-counted: cloning them for a retry copies no bytes.
        let results: Vec<Value> = guarded(&self.breaker, deadline, retry_transient, || {
            shared::scripts::REPLY_AND_ACK.evalsha_with_reload(
                &self.commands,
                keys.clone(),
                args.clone(),
            )
        })
        .await
        .map_err(into_error)
        .inspect_err(|err| record_error("reply_and_ack", err))?;
        if results.len() != batch.len() {
            return Err(Error::new(
                fred::error::ErrorKind::Protocol,
                format!(
                    "the reply script answered {} results for {} replies",
                    results.len(),
                    batch.len()
                ),
            ));
        }
        let outcomes: Vec<Result<Delivery, Error>> = results.into_iter().map(delivery_of).collect();
        for outcome in &outcomes {
            self.memory.observe(outcome);
        }
        Ok(outcomes)
    }

    /// [`Self::reply_and_acknowledge`] for each reply alone. Used when Redis refused a whole
    /// batch for lack of permission: with least-privilege ACL users, one reply stream outside
    /// the proxy's key patterns (a `reply_to` no ingress of this deployment would write) makes
    /// the script call fail for every reply in it. Alone, only that reply fails (its entry stays
    /// pending, and is dead-lettered after MAX_DELIVERIES); the others are answered.
    async fn one_by_one(&self, batch: &[PendingReply]) -> Vec<Result<Delivery, Error>> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for reply in batch.chunks(1) {
            outcomes.push(match self.reply_and_acknowledge(reply).await {
                Ok(mut outcome) => outcome.pop().unwrap_or_else(|| {
                    Err(Error::new(
                        fred::error::ErrorKind::Protocol,
                        "the reply script answered no result",
                    ))
                }),
                Err(err) => Err(err),
            });
        }
        outcomes
    }

    /// XACK and XDEL of a handled entry in one round trip: acknowledged entries are deleted
    /// so the request stream holds only what is waiting or being processed. Retries
    /// transient failures until `deadline`.
    pub async fn acknowledge(&self, entry_id: &str, deadline: Instant) -> Result<(), Error> {
        guarded(&self.breaker, deadline, retry_transient, || async {
            let pipeline = self.commands.pipeline();
            let _: () = pipeline
                .xack(self.request_stream.as_str(), self.group.as_str(), entry_id)
                .await?;
            let _: () = pipeline
                .xdel(self.request_stream.as_str(), entry_id)
                .await?;
            let _: (u64, u64) = pipeline.all().await?;
            Ok(())
        })
        .await
        .map_err(into_error)
        .inspect_err(|err| record_error("xack", err))
    }
}

/// True when Redis refused the call for lack of permission (ACL): a command or key the
/// proxy's user may not use.
fn is_noperm(err: &Error) -> bool {
    shared::redis::error_code(err) == "NOPERM"
}

/// Reads one element of the script's answer.
fn delivery_of(result: Value) -> Result<Delivery, Error> {
    match result {
        Value::Null => Ok(Delivery::NoReplyStream),
        Value::String(text) => match text.strip_prefix("error: ") {
            Some(message) => {
                let error = Error::new(fred::error::ErrorKind::Unknown, message.to_string());
                record_error("reply_and_ack", &error);
                Err(error)
            }
            None => Ok(Delivery::Written),
        },
        _ => Ok(Delivery::Written),
    }
}

/// A reply waiting for the writer.
struct PendingReply {
    reply_to: String,
    entry_id: String,
    fields: Vec<(&'static str, bytes::Bytes)>,
    deadline: Instant,
}

impl PendingReply {
    /// The bytes this reply adds to a script call (what [`MAX_BATCH_BYTES`] bounds).
    fn bytes(&self) -> usize {
        self.reply_to.len()
            + self.entry_id.len()
            + self
                .fields
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    }
}

/// The terminals' way to reply: a group-commit writer ([`Batcher`]) that sends every reply
/// waiting at that moment in one `reply_and_ack.lua` call. Cheap to clone.
#[derive(Clone)]
pub struct ReplyQueue {
    writer: Batcher<PendingReply, Result<Delivery, Error>>,
}

impl ReplyQueue {
    /// Starts the writer on the current runtime. It runs until every clone of the queue is
    /// dropped, so replies of terminals that finish during a shutdown drain are still written.
    pub fn start(responder: Responder) -> Self {
        let responder = Arc::new(responder);
        let writer = Batcher::start_weighed(
            MAX_BATCH,
            MAX_BATCH_BYTES,
            PendingReply::bytes,
            WRITES_IN_FLIGHT,
            move |batch: Vec<PendingReply>| {
                let responder = responder.clone();
                async move {
                    metrics::histogram!("proxy_reply_batch_size").record(batch.len() as f64);
                    match responder.reply_and_acknowledge(&batch).await {
                        Ok(outcomes) => outcomes,
                        Err(err) if batch.len() > 1 && is_noperm(&err) => {
                            responder.one_by_one(&batch).await
                        }
                        Err(err) => batch.iter().map(|_| Err(err.clone())).collect(),
                    }
                }
            },
        );
        ReplyQueue { writer }
    }

    /// Writes `reply` to `reply_to` and acknowledges (XACK + XDEL) `entry_id` atomically,
    /// batched with whatever other terminals reply meanwhile. Transient failures are retried
    /// until `deadline`; on failure nothing happened and the entry stays pending.
    pub async fn reply_and_acknowledge(
        &self,
        reply_to: &str,
        reply: &ReplyEntry,
        entry_id: &str,
        deadline: Instant,
    ) -> Result<Delivery, Error> {
        let pending = PendingReply {
            reply_to: reply_to.to_string(),
            entry_id: entry_id.to_string(),
            fields: reply.to_fields(),
            deadline,
        };
        self.writer.submit(pending).await.unwrap_or_else(|gone| {
            Err(Error::new(
                fred::error::ErrorKind::Canceled,
                format!("{gone} (the proxy is shutting down); the entry stays pending"),
            ))
        })
    }
}
