//! Answering a request: write the reply to the caller's stream, then acknowledge.
//!
//! The order is the delivery guarantee. Reply first, XACK second: if the proxy dies between
//! the two, the entry stays pending and is processed again (at-least-once; the ingress
//! ignores the second reply). The other order could lose a request.

use fred::prelude::*;
use shared::protocol::ReplyEntry;
use shared::redis::record_error;

/// Writes replies and acknowledges entries of the request stream.
#[derive(Clone)]
pub struct Responder {
    commands: Client,
    request_stream: String,
    group: String,
}

/// What happened to a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Appended to the caller's reply stream.
    Written,
    /// The reply stream no longer exists (its ingress is gone); nothing was written.
    NoReplyStream,
}

impl Responder {
    /// A responder for `group` on `request_stream`, using the non-blocking client.
    pub fn new(commands: Client, request_stream: &str, group: &str) -> Self {
        Responder {
            commands,
            request_stream: request_stream.to_string(),
            group: group.to_string(),
        }
    }

    /// Appends `reply` to `reply_to` with NOMKSTREAM, so a reply to a dead ingress never
    /// re-creates its stream.
    pub async fn send(&self, reply_to: &str, reply: &ReplyEntry) -> Result<Delivery, Error> {
        let id: Option<String> = self
            .commands
            .xadd(reply_to, true, None, "*", reply.to_fields())
            .await
            .inspect_err(|err| record_error("xadd_reply", err))?;
        Ok(match id {
            Some(_) => Delivery::Written,
            None => Delivery::NoReplyStream,
        })
    }

    /// XACK and XDEL of a handled entry in one round trip: acknowledged entries are deleted
    /// so the request stream holds only what is waiting or being processed.
    pub async fn acknowledge(&self, entry_id: &str) -> Result<(), Error> {
        let pipeline = self.commands.pipeline();
        let _: () = pipeline
            .xack(self.request_stream.as_str(), self.group.as_str(), entry_id)
            .await?;
        let _: () = pipeline
            .xdel(self.request_stream.as_str(), entry_id)
            .await?;
        let _: (u64, u64) = pipeline
            .all()
            .await
            .inspect_err(|err| record_error("xack", err))?;
        Ok(())
    }
}
