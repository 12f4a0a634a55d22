//! Answering a request: write the reply to the caller's stream, then acknowledge.
//!
//! The order is the delivery guarantee. Reply first, XACK second: if the proxy dies between
//! the two, the entry stays pending and is processed again (at-least-once; the ingress
//! ignores the second reply). The other order could lose a request.
//!
//! On the normal path both happen in one Lua script, [`REPLY_AND_ACK`]: one round trip instead
//! of two, and atomic, so there is no window in which a proxy dies after replying but before
//! acknowledging. Every call goes through the circuit breaker and is retried with backoff
//! until the given deadline, so a Redis blip (reconnect, AOF loading) does not lose a reply.

use std::sync::{Arc, LazyLock};

use fred::prelude::*;
use fred::types::scripts::Script;
use shared::protocol::ReplyEntry;
use shared::redis::{is_transient, record_error};
use shared::resilience::{CircuitBreaker, GuardedError, guarded};
use tokio::time::Instant;

/// XADD the reply with NOMKSTREAM, then XACK and XDEL the request entry, atomically.
/// KEYS: reply stream, request stream. ARGV: group, entry id, reply field/value pairs.
/// Returns the reply's id, or nil when the reply stream is gone (the entry is still
/// acknowledged: nobody waits for it). An error in XADD stops the script before the XACK.
pub const REPLY_AND_ACK: &str = r#"
local reply_id = redis.call('XADD', KEYS[1], 'NOMKSTREAM', '*', unpack(ARGV, 3))
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return reply_id
"#;

static REPLY_AND_ACK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::from_lua(REPLY_AND_ACK));

/// Writes replies and acknowledges entries of the request stream.
#[derive(Clone)]
pub struct Responder {
    commands: Client,
    request_stream: String,
    group: String,
    breaker: Arc<CircuitBreaker>,
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
    ) -> Self {
        Responder {
            commands,
            request_stream: request_stream.to_string(),
            group: group.to_string(),
            breaker,
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
        let id: Option<String> = guarded(&self.breaker, deadline, is_transient, || {
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

    /// Writes `reply` to `reply_to` and acknowledges (XACK + XDEL) `entry_id`, in one atomic
    /// script call. Retries transient failures until `deadline`; on failure nothing happened
    /// and the entry stays pending.
    pub async fn reply_and_acknowledge(
        &self,
        reply_to: &str,
        reply: &ReplyEntry,
        entry_id: &str,
        deadline: Instant,
    ) -> Result<Delivery, Error> {
        let mut args: Vec<String> = vec![self.group.clone(), entry_id.to_string()];
        for (field, value) in reply.to_fields() {
            args.push(field.to_string());
            args.push(value);
        }
        let keys = vec![reply_to.to_string(), self.request_stream.clone()];
        let id: Option<String> = guarded(&self.breaker, deadline, is_transient, || {
            REPLY_AND_ACK_SCRIPT.evalsha_with_reload(&self.commands, keys.clone(), args.clone())
        })
        .await
        .map_err(into_error)
        .inspect_err(|err| record_error("reply_and_ack", err))?;
        Ok(match id {
            Some(_) => Delivery::Written,
            None => Delivery::NoReplyStream,
        })
    }

    /// XACK and XDEL of a handled entry in one round trip: acknowledged entries are deleted
    /// so the request stream holds only what is waiting or being processed. Retries
    /// transient failures until `deadline`.
    pub async fn acknowledge(&self, entry_id: &str, deadline: Instant) -> Result<(), Error> {
        guarded(&self.breaker, deadline, is_transient, || async {
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
