//! The batched reply path against a real Redis: per-reply outcomes inside one script call,
//! and that concurrent replies really share calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use proxy::reply::{Delivery, ReplyQueue, Responder};
use shared::protocol::{ReplyEntry, ReplyStatus};
use shared::resilience::{BreakerSettings, CircuitBreaker};
use testkit::RedisServer;
use tokio::time::Instant;

const REQUESTS: &str = "requests";
const GROUP: &str = "group";

type Entries = Vec<(String, HashMap<String, String>)>;

fn reply(request_id: &str) -> ReplyEntry {
    ReplyEntry {
        request_id: request_id.to_string(),
        token: Some(format!("t-{request_id}")),
        status: ReplyStatus::Ok,
        payload: format!("{{\"n\":\"{request_id}\"}}").into(),
        proxy: "test-proxy".to_string(),
        http: None,
    }
}

/// A request stream with `n` entries read (pending) by consumer `c` of the group.
async fn pending_entries(redis: &Client, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id: String = redis
            .xadd(REQUESTS, false, None, "*", vec![("n", i.to_string())])
            .await
            .expect("xadd request");
        ids.push(id);
    }
    let _: () = redis
        .xgroup_create(REQUESTS, GROUP, "0", false)
        .await
        .expect("create group");
    let _: Value = redis
        .xreadgroup(GROUP, "c", Some(n as u64), None, false, REQUESTS, ">")
        .await
        .expect("read as consumer c");
    ids
}

async fn queue(server: &RedisServer) -> ReplyQueue {
    let client = server.client().await;
    let breaker = Arc::new(CircuitBreaker::new(
        "proxy",
        BreakerSettings {
            failure_threshold: 5,
            open_duration: Duration::from_secs(1),
        },
    ));
    ReplyQueue::start(Responder::new(
        client,
        REQUESTS,
        GROUP,
        breaker,
        Default::default(),
    ))
}

async fn pending_count(redis: &Client) -> u64 {
    let summary: Vec<Value> = redis
        .xpending(REQUESTS, GROUP, ())
        .await
        .expect("xpending summary");
    summary.first().and_then(Value::as_u64).unwrap_or(u64::MAX)
}

#[tokio::test]
async fn each_reply_in_a_batch_has_its_own_outcome() {
    let server = RedisServer::start().await;
    let redis = server.client().await;
    let ids = pending_entries(&redis, 3).await;
    let _: String = redis
        .xadd("replies-live", false, None, "*", vec![("created", "1")])
        .await
        .expect("create live reply stream");
    let _: () = redis
        .set("replies-wrongtype", "a string", None, None, false)
        .await
        .expect("set");
    let replies = queue(&server).await;
    let deadline = Instant::now() + Duration::from_secs(2);

    let (r1, r2, r3) = (reply("r1"), reply("r2"), reply("r3"));
    let (live, gone, wrong) = tokio::join!(
        replies.reply_and_acknowledge("replies-live", &r1, &ids[0], deadline),
        replies.reply_and_acknowledge("replies-gone", &r2, &ids[1], deadline),
        replies.reply_and_acknowledge("replies-wrongtype", &r3, &ids[2], deadline),
    );

    assert_eq!(live.expect("live stream"), Delivery::Written);
    assert_eq!(gone.expect("missing stream"), Delivery::NoReplyStream);
    let err = wrong.expect_err("a key of the wrong type must fail that reply");
    assert!(err.to_string().contains("WRONGTYPE"), "error: {err}");

    let written: Entries = redis
        .xrange("replies-live", "-", "+", None)
        .await
        .expect("xrange replies");
    assert_eq!(written.len(), 2, "the marker entry and the reply");
    assert_eq!(
        written[1]
            .1
            .get(shared::protocol::reply_fields::REQUEST_ID)
            .map(String::as_str),
        Some("r1")
    );
    let exists: u64 = redis.exists("replies-gone").await.expect("exists");
    assert_eq!(
        exists, 0,
        "NOMKSTREAM must not create a dead ingress's stream"
    );

    // Written and gone are acknowledged and deleted; the failed one stays pending, untouched.
    assert_eq!(pending_count(&redis).await, 1);
    let left: Entries = redis
        .xrange(REQUESTS, "-", "+", None)
        .await
        .expect("xrange requests");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, ids[2]);
}

#[tokio::test]
async fn concurrent_replies_share_script_calls_and_all_arrive() {
    const N: usize = 400;
    let server = RedisServer::start().await;
    let redis = server.client().await;
    let ids = pending_entries(&redis, N).await;
    let _: String = redis
        .xadd("replies", false, None, "*", vec![("created", "1")])
        .await
        .expect("create reply stream");
    let replies = queue(&server).await;
    let _: () = redis
        .custom(fred::cmd!("CONFIG"), vec!["RESETSTAT"])
        .await
        .expect("reset stats");
    let deadline = Instant::now() + Duration::from_secs(5);

    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let replies = replies.clone();
            let id = id.clone();
            tokio::spawn(async move {
                replies
                    .reply_and_acknowledge("replies", &reply(&format!("r{i}")), &id, deadline)
                    .await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("join").expect("reply"), Delivery::Written);
    }

    let written: u64 = redis.xlen("replies").await.expect("xlen");
    assert_eq!(written, N as u64 + 1, "every reply written once");
    assert_eq!(pending_count(&redis).await, 0, "every entry acknowledged");
    let left: u64 = redis.xlen(REQUESTS).await.expect("xlen requests");
    assert_eq!(left, 0, "every handled entry deleted");
    let stats: String = redis
        .custom(fred::cmd!("INFO"), vec!["commandstats"])
        .await
        .expect("info");
    let calls = |command: &str| {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    };
    // The first call may be an EVAL after a NOSCRIPT; the rest are EVALSHA.
    let script_calls = calls("evalsha") + calls("eval");
    assert!(script_calls >= 1, "the script ran: {stats}");
    assert!(
        script_calls < N / 4,
        "{N} concurrent replies took {script_calls} script calls: they are not batched"
    );
    println!("{N} concurrent replies in {script_calls} script calls");
}

#[tokio::test]
async fn a_reply_stream_the_proxy_user_may_not_write_fails_only_its_own_reply() {
    const N: usize = 200;
    let server = RedisServer::start().await;
    let redis = server.client().await;
    let ids = pending_entries(&redis, N).await;
    let _: String = redis
        .xadd("replies:live", false, None, "*", vec![("created", "1")])
        .await
        .expect("create reply stream");
    let _: String = redis
        .xadd("elsewhere", false, None, "*", vec![("created", "1")])
        .await
        .expect("create a stream outside the proxy's patterns");
    // The proxy's least-privilege user for these names (replies under `replies:`).
    let rules = shared::acl::rules(
        shared::acl::Role::Proxy {
            reply_stream_prefix: "replies",
            dead_letter_stream: "dlq",
        },
        REQUESTS,
        shared::acl::ConnectionNeeds::default(),
    );
    let mut setuser = vec!["SETUSER", "proxy", "on", ">proxy-pw"];
    setuser.extend(rules.split(' '));
    let _: String = redis
        .custom(fred::cmd!("ACL"), setuser)
        .await
        .expect("ACL SETUSER");
    let client = server
        .client_as("proxy", "proxy-pw")
        .await
        .expect("proxy logs in");
    let breaker = Arc::new(CircuitBreaker::new(
        "proxy",
        BreakerSettings {
            failure_threshold: 5,
            open_duration: Duration::from_secs(1),
        },
    ));
    let replies = ReplyQueue::start(Responder::new(
        client,
        REQUESTS,
        GROUP,
        breaker,
        Default::default(),
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    let forbidden = N / 2;
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let replies = replies.clone();
            let id = id.clone();
            let stream = if i == forbidden {
                "elsewhere"
            } else {
                "replies:live"
            };
            tokio::spawn(async move {
                replies
                    .reply_and_acknowledge(stream, &reply(&format!("r{i}")), &id, deadline)
                    .await
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let outcome = task.await.expect("join");
        if i == forbidden {
            let err = outcome.expect_err("the forbidden reply stream must fail");
            assert!(err.to_string().contains("NOPERM"), "{err}");
        } else {
            assert_eq!(outcome.expect("reply"), Delivery::Written, "reply {i}");
        }
    }
    let written: u64 = redis.xlen("replies:live").await.expect("xlen");
    assert_eq!(written, N as u64, "the marker and every allowed reply");
    let elsewhere: u64 = redis.xlen("elsewhere").await.expect("xlen");
    assert_eq!(elsewhere, 1, "nothing written outside the patterns");
    assert_eq!(
        pending_count(&redis).await,
        1,
        "only the refused entry stays pending"
    );
}
