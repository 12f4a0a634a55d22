//! The least-privilege Redis ACL rules of each service, derived from its configuration.
//!
//! `ingress --print-redis-acl` and `proxy --print-redis-acl` print [`redis_acl_rules`] so an
//! operator never guesses which commands and keys a service needs: the line goes after
//! `ACL SETUSER <name> on >password` (or after `user <name> on >password` in an ACL file).
//! It starts with `resetkeys resetchannels -@all`, so applying it to an existing user leaves
//! exactly these permissions (its passwords are kept).
//!
//! The command lists below are every Redis call the services make, including the commands the
//! Lua scripts of `shared/lua/` run: Redis checks those against the *caller's* permissions too,
//! and EVALSHA needs read and write access to every key it declares (hence `~`, not `%W~`, on
//! the reply streams). What fred sends on each connection is included (`CLIENT ID`,
//! `INFO server`; `SELECT` when the URL names a database, `ROLE` behind Sentinel). `AUTH`,
//! `HELLO` and `QUIT` need no permission (Redis 7.0 lets any user run them).
//!
//! When a service starts calling a new command, add it here: `ingress/tests/redis_acl.rs`
//! runs both services as users made from these rules and fails on any refusal.

use crate::config::RedisSettings;

/// Which service the rules are for, with the settings only that service knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role<'a> {
    /// The ingress: writes requests, owns a reply stream `<reply_stream_prefix>:<instance>`.
    Ingress {
        /// REPLY_STREAM_PREFIX.
        reply_stream_prefix: &'a str,
        /// The request streams of forwarded routes (`<queue>-requests`), beside REQUEST_STREAM.
        route_streams: &'a [String],
    },
    /// The proxy: consumes requests, writes replies to the ingresses' reply streams, keeps
    /// the dead-letter stream.
    Proxy {
        /// The ingresses' REPLY_STREAM_PREFIX: the streams replies may be written to.
        reply_stream_prefix: &'a str,
        /// DEAD_LETTER_STREAM (resolved).
        dead_letter_stream: &'a str,
    },
}

/// What fred sends on every connection, for every user: `PING` (health checks, and the
/// connection check when no password is set), `CLIENT ID` (fred caches it) and `INFO` (fred
/// reads `INFO server` for the Redis version and logs a warning when refused).
const CONNECTION_COMMANDS: &[&str] = &["ping", "client|id", "info"];

/// The ingress's commands, and where it uses them.
const INGRESS_COMMANDS: &[&str] = &[
    // shared/lua/enqueue.lua through EVALSHA (SCRIPT LOAD on NOSCRIPT): EXISTS, XADD,
    // PEXPIRE, XLEN. XADD and PEXPIRE also create the reply stream at start-up and probe
    // writes while Redis is out of memory.
    "evalsha",
    "script|load",
    "exists",
    "xadd",
    "pexpire",
    "xlen",
    // The reply reader (XREAD BLOCK on its own stream), its trimming, and the reply stream's
    // deletion at shutdown.
    "xread",
    "xtrim",
    "del",
    // Withdrawing a request whose caller gave up (XDEL on the request stream).
    "xdel",
    // Consumer-group bootstrap and the sampler: XGROUP CREATE … MKSTREAM, XINFO GROUPS,
    // XINFO CONSUMERS (are proxies alive?), GET of the served counter.
    "xgroup|create",
    "xinfo|groups",
    "xinfo|consumers",
    "get",
];

/// The proxy's commands, and where it uses them.
const PROXY_COMMANDS: &[&str] = &[
    // shared/lua/reply_and_ack.lua (XADD, XACK, XDEL, INCRBY) and
    // shared/lua/replay_dead_letter.lua (XRANGE, XADD, XDEL) through EVALSHA.
    "evalsha",
    "script|load",
    "xadd",
    "xack",
    "xdel",
    "incrby",
    "xrange",
    // Reading: XREADGROUP BLOCK; reclaim: XPENDING, XCLAIM (also the JUSTID heartbeat),
    // XGROUP CREATECONSUMER; leaving or pruning consumers: XGROUP DELCONSUMER.
    "xreadgroup",
    "xpending",
    "xclaim",
    "xgroup|create",
    "xgroup|createconsumer",
    "xgroup|delconsumer",
    // The sampler: XLEN (request and dead-letter streams), XINFO GROUPS, GET of the served
    // counter; XINFO CONSUMERS when pruning idle consumers.
    "xlen",
    "xinfo|groups",
    "xinfo|consumers",
    "get",
    // Dead-letter admin: list (XRANGE), replay-all's newest id (XREVRANGE), purge (DEL).
    "xrevrange",
    "del",
];

/// What a connection URL adds: `SELECT` when it names a database, `ROLE` when fred finds the
/// primary through Sentinel (it checks the node's role).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionNeeds {
    /// The URL names a database (`/0` counts: fred sends `SELECT 0`).
    pub select: bool,
    /// A `redis-sentinel://` URL.
    pub role: bool,
}

impl ConnectionNeeds {
    /// What `settings.redis_url` needs; the URL was checked while parsing the settings, so an
    /// unparsable one (not possible here) needs nothing extra.
    pub fn of(settings: &RedisSettings) -> Self {
        match crate::config::parse_redis_url(&settings.redis_url) {
            Ok(config) => ConnectionNeeds {
                select: config.database.is_some(),
                role: matches!(
                    config.server,
                    fred::types::config::ServerConfig::Sentinel { .. }
                ),
            },
            Err(_) => ConnectionNeeds::default(),
        }
    }
}

/// The ACL rules `role` needs with `settings` (request stream, consumer group, URL): one line
/// to put after `ACL SETUSER <name> on >password`.
pub fn redis_acl_rules(settings: &RedisSettings, role: Role<'_>) -> String {
    rules(
        role,
        &settings.request_stream,
        ConnectionNeeds::of(settings),
    )
}

/// [`redis_acl_rules`] from its parts (no URL parsing), for tests and other callers.
pub fn rules(role: Role<'_>, request_stream: &str, connection: ConnectionNeeds) -> String {
    let served = crate::protocol::served_counter(request_stream);
    let (commands, keys): (&[&str], Vec<String>) = match role {
        Role::Ingress {
            reply_stream_prefix,
            route_streams,
        } => {
            let mut keys = Vec::new();
            for stream in
                std::iter::once(request_stream).chain(route_streams.iter().map(String::as_str))
            {
                // XADD through the script needs read and write (EVALSHA's key spec).
                keys.push(format!("~{}", escape_pattern(stream)));
                // Only read: the proxies count, the ingress samples.
                keys.push(format!(
                    "%R~{}",
                    escape_pattern(&crate::protocol::served_counter(stream))
                ));
            }
            keys.push(format!("~{}:*", escape_pattern(reply_stream_prefix)));
            (INGRESS_COMMANDS, keys)
        }
        Role::Proxy {
            reply_stream_prefix,
            dead_letter_stream,
        } => (
            PROXY_COMMANDS,
            vec![
                format!("~{}", escape_pattern(request_stream)),
                format!("~{}", escape_pattern(&served)),
                format!("~{}", escape_pattern(dead_letter_stream)),
                format!("~{}:*", escape_pattern(reply_stream_prefix)),
            ],
        ),
    };
    let mut line = String::from("resetkeys resetchannels -@all");
    let extra = [
        connection.select.then_some("select"),
        connection.role.then_some("role"),
    ];
    let all = CONNECTION_COMMANDS
        .iter()
        .copied()
        .chain(extra.into_iter().flatten())
        .chain(commands.iter().copied());
    for command in all {
        line.push_str(" +");
        line.push_str(command);
    }
    for key in keys {
        line.push(' ');
        line.push_str(&key);
    }
    line
}

/// `key` as an ACL key pattern matching only itself: the glob characters `*`, `?`, `[`, `]`
/// and `\` are escaped with a backslash (stream names may contain them; spaces they may not).
pub fn escape_pattern(key: &str) -> String {
    let mut escaped = String::with_capacity(key.len());
    for c in key.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<&str> {
        line.split(' ').collect()
    }

    #[test]
    fn ingress_rules_with_the_defaults() {
        let line = rules(
            Role::Ingress {
                reply_stream_prefix: "weather-responses",
                route_streams: &[],
            },
            "weather-requests",
            ConnectionNeeds::default(),
        );
        assert!(
            line.starts_with("resetkeys resetchannels -@all +ping +client|id +info "),
            "{line}"
        );
        let words = words(&line);
        for needed in [
            "+evalsha",
            "+xadd",
            "+exists",
            "+xread",
            "+xgroup|create",
            "+get",
        ] {
            assert!(words.contains(&needed), "{needed} missing: {line}");
        }
        for refused in [
            "+xreadgroup",
            "+xack",
            "+xrange",
            "+xclaim",
            "+select",
            "+role",
        ] {
            assert!(!words.contains(&refused), "{refused} granted: {line}");
        }
        assert!(
            line.ends_with(" ~weather-requests %R~weather-requests:served ~weather-responses:*")
        );
        assert!(!line.contains("dlq"), "{line}");
    }

    #[test]
    fn proxy_rules_cover_the_dead_letter_stream_and_the_counter() {
        let line = rules(
            Role::Proxy {
                reply_stream_prefix: "replies",
                dead_letter_stream: "poison",
            },
            "jobs",
            ConnectionNeeds::default(),
        );
        let words = words(&line);
        for needed in [
            "+xreadgroup",
            "+xack",
            "+xclaim",
            "+xpending",
            "+incrby",
            "+xgroup|createconsumer",
            "+xgroup|delconsumer",
            "+xrevrange",
            "+script|load",
        ] {
            assert!(words.contains(&needed), "{needed} missing: {line}");
        }
        for refused in ["+xread", "+keys", "+flushall", "+config", "+set", "+@all"] {
            assert!(!words.contains(&refused), "{refused} granted: {line}");
        }
        assert!(
            line.ends_with(" ~jobs ~jobs:served ~poison ~replies:*"),
            "{line}"
        );
    }

    #[test]
    fn each_command_is_listed_once() {
        for list in [INGRESS_COMMANDS, PROXY_COMMANDS] {
            let mut all: Vec<&str> = CONNECTION_COMMANDS.iter().chain(list).copied().collect();
            let count = all.len();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), count);
        }
    }

    #[test]
    fn the_url_adds_select_and_role() {
        let line = rules(
            Role::Ingress {
                reply_stream_prefix: "r",
                route_streams: &[],
            },
            "s",
            ConnectionNeeds {
                select: true,
                role: true,
            },
        );
        assert!(line.contains(" +info +select +role +evalsha"), "{line}");
    }

    #[test]
    fn connection_needs_come_from_the_url() {
        let settings = |url: &str| RedisSettings {
            redis_url: url.into(),
            redis_password_file: None,
            redis_tls_ca_file: None,
            redis_tls_cert_file: None,
            redis_tls_key_file: None,
            request_stream: "s".into(),
            consumer_group: "g".into(),
            redis_command_timeout: std::time::Duration::from_secs(5),
        };
        let needs = |url: &str| ConnectionNeeds::of(&settings(url));
        assert_eq!(
            needs("redis://ingress@redis:6379"),
            ConnectionNeeds::default()
        );
        assert!(needs("rediss://u@redis:6379/0").select);
        assert!(needs("redis-sentinel://u@s1:26379?sentinelServiceName=m").role);
    }

    #[test]
    fn glob_characters_in_names_are_escaped() {
        assert_eq!(escape_pattern("a*b?[c]\\d"), "a\\*b\\?\\[c\\]\\\\d");
        let line = rules(
            Role::Ingress {
                reply_stream_prefix: "re*",
                route_streams: &[],
            },
            "s?",
            ConnectionNeeds::default(),
        );
        assert!(line.ends_with(" ~s\\? %R~s\\?:served ~re\\*:*"), "{line}");
    }

    #[test]
    fn forwarded_queues_get_their_stream_and_a_read_only_served_counter() {
        let streams = vec!["orders-requests".to_string()];
        let line = rules(
            Role::Ingress {
                reply_stream_prefix: "r",
                route_streams: &streams,
            },
            "weather-requests",
            ConnectionNeeds::default(),
        );
        assert!(line.contains(" ~orders-requests "), "{line}");
        assert!(line.contains(" %R~orders-requests:served "), "{line}");
        assert!(line.contains(" ~weather-requests "), "{line}");
    }
}
