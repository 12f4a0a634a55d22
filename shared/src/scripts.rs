//! The Lua scripts of the protocol, loaded from `shared/lua/`.
//!
//! The files are the source of truth: the services load them at build time (`include_str!`)
//! and docs/protocol.md points to them, so a worker or client written in another language
//! runs exactly the code the Rust services run, and the two cannot drift apart.

use std::sync::LazyLock;

use fred::types::scripts::Script;

/// Source of `shared/lua/enqueue.lua`: the ingress's request write (reply stream check,
/// backlog limit, XADD). See the file's header for its keys, arguments and result.
pub const ENQUEUE_LUA: &str = include_str!("../lua/enqueue.lua");

/// Source of `shared/lua/reply_and_ack.lua`: the proxy's reply + XACK + XDEL of a batch. See
/// the file's header for its keys, arguments and result.
pub const REPLY_AND_ACK_LUA: &str = include_str!("../lua/reply_and_ack.lua");

/// Source of `shared/lua/replay_dead_letter.lua`: the proxy's atomic dead-letter replay (read,
/// XADD back with a fresh deadline, XDEL from the DLQ). See the file's header.
pub const REPLAY_DEAD_LETTER_LUA: &str = include_str!("../lua/replay_dead_letter.lua");

/// [`REPLAY_DEAD_LETTER_LUA`], hashed once; called with EVALSHA (loaded on NOSCRIPT).
pub static REPLAY_DEAD_LETTER: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(REPLAY_DEAD_LETTER_LUA));

/// [`ENQUEUE_LUA`], hashed once; called with EVALSHA (loaded on NOSCRIPT).
pub static ENQUEUE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(ENQUEUE_LUA));

/// [`REPLY_AND_ACK_LUA`], hashed once; called with EVALSHA (loaded on NOSCRIPT).
pub static REPLY_AND_ACK: LazyLock<Script> = LazyLock::new(|| Script::from_lua(REPLY_AND_ACK_LUA));

/// Runs `script` with EVALSHA on `client` with `options`, loading it first if Redis answers
/// NOSCRIPT (after a restart or SCRIPT FLUSH; the refused EVALSHA did not run, so the retry
/// cannot run it twice). fred's `evalsha` ignores per-call options (its `WithOptions` wrapper
/// does not implement the Lua interface), so the call goes out as a custom command, which
/// does honour them.
pub async fn eval<R: fred::types::FromValue>(
    script: &Script,
    client: &fred::clients::Client,
    options: &fred::types::config::Options,
    keys: &[fred::types::Value],
    args: &[fred::types::Value],
) -> Result<R, fred::error::Error> {
    use fred::interfaces::ClientLike;
    use fred::types::{CustomCommand, Value};
    let mut call: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
    call.push(Value::from(script.sha1().clone()));
    call.push(Value::Integer(keys.len() as i64));
    call.extend(keys.iter().cloned());
    call.extend(args.iter().cloned());
    let with = client.with_options(options);
    let command = || CustomCommand::new_static("EVALSHA", None, false);
    match with.custom::<R, Value>(command(), call.clone()).await {
        Err(err) if err.details().starts_with("NOSCRIPT") => {
            script.load(client).await?;
            with.custom(command(), call).await
        }
        result => result,
    }
}
