//! The dead-letter admin API against a real Redis and a real proxy process: replay is atomic
//! (concurrent replays of one dead letter re-inject it once), replay-all replays only what was
//! there when it started, and every bad id, count or path gets a 400 problem+json.
//!
//! Dead letters are made the way a broken client makes them: an entry whose payload is not
//! JSON, XADDed straight onto the request stream, is dead-lettered on first sight. Replayed, it
//! fails the same way again and comes back to the dead-letter stream under a new id.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use proxy::dead_letter::{DeadLetters, EntryId, REPLAY_DEAD_LETTER, is_invalid_id};
use serde_json::Value as Json;
use testkit::{RedisServer, Service, wait_until};

const REQUEST_STREAM: &str = "weather-requests";
const DLQ: &str = "weather-requests:dlq";
const REPLY_STREAM: &str = "test-caller-replies";

/// A redis-server and one proxy on it.
const ADMIN_TOKEN: &str = "dead-letter-test-token-0123";

struct Setup {
    _redis: RedisServer,
    proxy: Service,
    redis: Client,
    http: reqwest::Client,
}

impl Setup {
    async fn start() -> Self {
        let server = RedisServer::start().await;
        let proxy = Service::start(
            "proxy",
            &[
                ("REDIS_URL", server.url()),
                ("PROCESSING_DELAY_MS", "0".into()),
                ("ADMIN_TOKEN", ADMIN_TOKEN.into()),
            ],
        )
        .await;
        let redis = server.client().await;
        let _: String = redis
            .xadd(REPLY_STREAM, false, None, "*", vec![("created_by", "test")])
            .await
            .expect("XADD reply stream");
        Setup {
            _redis: server,
            proxy,
            redis,
            // The admin routes need the token; every request of these tests sends it.
            http: reqwest::Client::builder()
                .default_headers(
                    [(
                        reqwest::header::AUTHORIZATION,
                        reqwest::header::HeaderValue::from_static(concat!(
                            "Bearer ",
                            "dead-letter-test-token-0123"
                        )),
                    )]
                    .into_iter()
                    .collect(),
                )
                .build()
                .expect("HTTP client"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy.url)
    }

    /// XADDs a request whose payload is not JSON and waits until it is in the DLQ; returns
    /// its dead-letter id.
    async fn dead_letter(&self, request_id: &str) -> String {
        let before = dead_lettered_total(&self.proxy).await;
        xadd_poison(&self.redis, request_id).await;
        wait_until(
            &format!("{request_id} to be dead-lettered"),
            Duration::from_secs(10),
            || async { dead_lettered_total(&self.proxy).await > before },
        )
        .await;
        self.list()
            .await
            .into_iter()
            .filter(|letter| letter["requestId"] == request_id)
            .filter_map(|letter| letter["id"].as_str().map(str::to_string))
            .next_back()
            .unwrap_or_else(|| panic!("{request_id} is not in GET /api/dead-letters"))
    }

    async fn list(&self) -> Vec<Json> {
        let response = self
            .http
            .get(self.url("/api/dead-letters?count=1000"))
            .send()
            .await
            .expect("GET /api/dead-letters");
        assert_eq!(response.status(), 200);
        response.json().await.expect("JSON list")
    }
}

async fn xadd_poison(redis: &Client, request_id: &str) {
    let deadline = (SystemTime::now() + Duration::from_secs(30))
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis()
        .to_string();
    let _: String = redis
        .xadd(
            REQUEST_STREAM,
            false,
            None,
            "*",
            vec![
                ("v", "1"),
                ("id", request_id),
                ("reply_to", REPLY_STREAM),
                ("deadline_ms", deadline.as_str()),
                ("op", "weather.city"),
                ("payload", "this is not json"),
            ],
        )
        .await
        .expect("XADD poison");
}

async fn dead_lettered_total(proxy: &Service) -> f64 {
    proxy.metric_sum("proxy_dead_lettered_total").await
}

/// Entries ever added to `stream` (XINFO STREAM `entries-added`): counts replays even after
/// the proxy has processed and deleted them.
async fn entries_added(redis: &Client, stream: &str) -> u64 {
    let info: HashMap<String, Value> = redis
        .xinfo_stream(stream, false, None)
        .await
        .expect("XINFO STREAM");
    info.get("entries-added")
        .and_then(Value::as_u64)
        .expect("entries-added (Redis 7)")
}

async fn stream_len(redis: &Client, stream: &str) -> u64 {
    redis.xlen(stream).await.expect("XLEN")
}

/// Asserts a problem+json error with `status` carrying the request id of the response.
async fn assert_problem(response: reqwest::Response, status: u16, what: &str) -> Json {
    assert_eq!(response.status(), status, "{what}");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "{what}"
    );
    let header_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{what}: no X-Request-Id header"));
    let body: Json = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status, "{what}: {body}");
    assert_eq!(body["requestId"], header_id.as_str(), "{what}: {body}");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:problem:broker:")),
        "{what}: {body}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {body}"
    );
    body
}

#[tokio::test]
async fn concurrent_replays_of_one_dead_letter_replay_it_exactly_once() {
    let setup = Setup::start().await;
    let id = setup.dead_letter("poison-1").await;
    assert_eq!(entries_added(&setup.redis, REQUEST_STREAM).await, 1);

    let mut replays = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let http = setup.http.clone();
        let url = setup.url(&format!("/api/dead-letters/{id}/replay"));
        replays.spawn(async move { http.post(url).send().await.expect("POST replay") });
    }
    let mut ok = 0;
    let mut not_found = 0;
    while let Some(response) = replays.join_next().await {
        let response = response.expect("replay task");
        match response.status().as_u16() {
            200 => {
                let body: Json = response.json().await.expect("JSON");
                assert_eq!(body["replayed"], 1);
                ok += 1;
            }
            404 => {
                assert_problem(response, 404, "a losing replay").await;
                not_found += 1;
            }
            other => panic!("replay answered {other}"),
        }
    }
    assert_eq!((ok, not_found), (1, 9), "one 200 and nine 404");
    // The replay is in the request stream before the 200 is sent: exactly one new entry.
    assert_eq!(entries_added(&setup.redis, REQUEST_STREAM).await, 2);

    // That one entry is processed (it fails again and is dead-lettered under a new id).
    wait_until(
        "the replayed request to be dead-lettered again",
        Duration::from_secs(10),
        || async { dead_lettered_total(&setup.proxy).await >= 2.0 },
    )
    .await;
    let letters = setup.list().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["requestId"], "poison-1");
    assert_ne!(letters[0]["id"], id.as_str(), "a new dead letter");
    assert_eq!(letters[0]["payload"], "this is not json");
    // The caller's reply stream: its marker and one error reply per time it was processed.
    wait_until(
        "the second error reply to the caller",
        Duration::from_secs(10),
        || async { stream_len(&setup.redis, REPLY_STREAM).await >= 3 },
    )
    .await;
    assert_eq!(stream_len(&setup.redis, REPLY_STREAM).await, 3);
    assert_eq!(dead_lettered_total(&setup.proxy).await, 2.0);
    assert_eq!(entries_added(&setup.redis, REQUEST_STREAM).await, 2);
}

#[tokio::test]
async fn replay_all_replays_only_the_dead_letters_there_when_it_started() {
    let setup = Setup::start().await;
    let first = setup.dead_letter("poison-1").await;

    // Each replayed entry fails again and re-enters the DLQ; it must not be replayed again.
    let response = setup
        .http
        .post(setup.url("/api/dead-letters/replay?count=50"))
        .send()
        .await
        .expect("POST replay-all");
    assert_eq!(response.status(), 200);
    let body: Json = response.json().await.expect("JSON");
    assert_eq!(body["replayed"], 1, "{body}");
    assert_eq!(entries_added(&setup.redis, REQUEST_STREAM).await, 2);
    wait_until(
        "the replayed request to be dead-lettered again",
        Duration::from_secs(10),
        || async { dead_lettered_total(&setup.proxy).await >= 2.0 },
    )
    .await;
    let letters = setup.list().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_ne!(letters[0]["id"], first.as_str());

    // Oldest first and at most `count`: of three, two are replayed, the newest stays.
    setup.dead_letter("poison-2").await;
    let newest = setup.dead_letter("poison-3").await;
    let added = entries_added(&setup.redis, REQUEST_STREAM).await;
    let response = setup
        .http
        .post(setup.url("/api/dead-letters/replay?count=2"))
        .send()
        .await
        .expect("POST replay-all");
    assert_eq!(response.status(), 200);
    let body: Json = response.json().await.expect("JSON");
    assert_eq!(body["replayed"], 2, "{body}");
    assert_eq!(entries_added(&setup.redis, REQUEST_STREAM).await, added + 2);
    let ids: Vec<Json> = setup
        .list()
        .await
        .into_iter()
        .map(|l| l["id"].clone())
        .collect();
    assert!(ids.contains(&Json::from(newest.as_str())), "{ids:?}");
}

#[tokio::test]
async fn invalid_ids_are_400_problems_on_replay_and_delete() {
    let setup = Setup::start().await;
    for id in [
        "18446744073709551616-0",
        "0-18446744073709551616",
        "99999999999999999999999999-1",
        "not-an-id",
        "1-2-3",
        "%2B1-0",
        "1",
        "-",
    ] {
        let replay = setup
            .http
            .post(setup.url(&format!("/api/dead-letters/{id}/replay")))
            .send()
            .await
            .expect("POST replay");
        let body = assert_problem(replay, 400, &format!("replay {id}")).await;
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("1700000000000-0")),
            "{body}"
        );
        let delete = setup
            .http
            .delete(setup.url(&format!("/api/dead-letters/{id}")))
            .send()
            .await
            .expect("DELETE");
        assert_problem(delete, 400, &format!("delete {id}")).await;
    }
    // The largest valid id is valid: no such dead letter.
    let max = format!("{0}-{0}", u64::MAX);
    let replay = setup
        .http
        .post(setup.url(&format!("/api/dead-letters/{max}/replay")))
        .send()
        .await
        .expect("POST replay");
    assert_problem(replay, 404, "replay of the max id").await;
    let delete = setup
        .http
        .delete(setup.url(&format!("/api/dead-letters/{max}")))
        .send()
        .await
        .expect("DELETE");
    assert_problem(delete, 404, "delete of the max id").await;

    // A real one: deleted once, then 404.
    let id = setup.dead_letter("poison-1").await;
    let url = setup.url(&format!("/api/dead-letters/{id}"));
    let deleted = setup.http.delete(&url).send().await.expect("DELETE");
    assert_eq!(deleted.status(), 204);
    let again = setup.http.delete(&url).send().await.expect("DELETE");
    assert_problem(again, 404, "second delete").await;
}

#[tokio::test]
async fn bad_counts_and_garbage_paths_are_400_problems() {
    let setup = Setup::start().await;
    for query in [
        "count=abc",
        "count=-1",
        "count=",
        "count=0",
        "count=1001",
        "count=1.5",
        "count=18446744073709551616",
    ] {
        let list = setup
            .http
            .get(setup.url(&format!("/api/dead-letters?{query}")))
            .send()
            .await
            .expect("GET");
        assert_problem(list, 400, &format!("list {query}")).await;
        let replay = setup
            .http
            .post(setup.url(&format!("/api/dead-letters/replay?{query}")))
            .send()
            .await
            .expect("POST");
        assert_problem(replay, 400, &format!("replay-all {query}")).await;
    }
    for segment in ["%FF", "%C0%AF", "%FF%FE%FD", "%00", "%E2%82"] {
        let replay = setup
            .http
            .post(setup.url(&format!("/api/dead-letters/{segment}/replay")))
            .header("X-Request-Id", "garbage-path")
            .send()
            .await
            .expect("POST");
        let body = assert_problem(replay, 400, &format!("replay {segment}")).await;
        assert_eq!(body["requestId"], "garbage-path");
        let delete = setup
            .http
            .delete(setup.url(&format!("/api/dead-letters/{segment}")))
            .send()
            .await
            .expect("DELETE");
        assert_problem(delete, 400, &format!("delete {segment}")).await;
    }
}

/// The script's effect on the streams, without a proxy consuming them: the request entry gets
/// the original fields and a fresh deadline, without the dlq_ fields.
#[tokio::test]
async fn a_replayed_entry_has_its_fields_a_fresh_deadline_and_no_dlq_fields() {
    let server = RedisServer::start().await;
    let redis = server.client().await;
    let dead_letters = DeadLetters::new(redis.clone(), DLQ, REQUEST_STREAM);
    let with_deadline: String = redis
        .xadd(
            DLQ,
            false,
            None,
            "*",
            vec![
                ("id", "r-1"),
                ("deadline_ms", "1"),
                ("payload", "{}"),
                ("dlq_reason", "max_deliveries"),
                ("dlq_source_id", "1-0"),
            ],
        )
        .await
        .expect("XADD");
    let _: String = redis
        .xadd(
            DLQ,
            false,
            None,
            "*",
            vec![("id", "r-2"), ("dlq_reason", "unreadable")],
        )
        .await
        .expect("XADD");
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;

    let first: EntryId = with_deadline.parse().expect("id");
    let new_id = dead_letters
        .replay(first)
        .await
        .expect("replay")
        .expect("replayed");
    assert_eq!(dead_letters.replay(first).await.expect("replay"), None);
    assert_eq!(dead_letters.replay_all(10).await.expect("replay all"), 1);
    assert_eq!(dead_letters.replay_all(10).await.expect("replay all"), 0);
    assert_eq!(stream_len(&redis, DLQ).await, 0);

    let entries: Vec<(String, HashMap<String, String>)> = redis
        .xrange(REQUEST_STREAM, "-", "+", None)
        .await
        .expect("XRANGE");
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].0, new_id);
    for ((_, fields), request_id) in entries.iter().zip(["r-1", "r-2"]) {
        assert_eq!(fields["id"], request_id);
        assert!(fields.keys().all(|k| !k.starts_with("dlq_")), "{fields:?}");
        let deadline: u64 = fields["deadline_ms"].parse().expect("deadline_ms");
        assert!(
            deadline >= started_ms + 29_000,
            "fresh 30 s deadline, got {deadline} at {started_ms}"
        );
    }
    assert_eq!(entries[0].1["payload"], "{}");
    assert_eq!(entries[0].1.len(), 3, "{:?}", entries[0].1);
    assert_eq!(entries[1].1.len(), 2, "{:?}", entries[1].1);
}

/// The second line of defence: Redis's own rejection of an id, from a plain command or from
/// inside the replay script, is recognised as bad input (the handler answers 400), and other
/// Redis errors are not.
#[tokio::test]
async fn redis_rejections_of_stream_ids_are_recognised() {
    let server = RedisServer::start().await;
    let redis = server.client().await;
    let bad = "18446744073709551616-0";
    let _: String = redis
        .xadd(DLQ, false, None, "*", vec![("id", "r-1")])
        .await
        .expect("XADD");
    let err = redis
        .xdel::<u64, _, _>(DLQ, bad)
        .await
        .expect_err("XDEL of an overflowing id");
    assert!(is_invalid_id(&err), "{err}");
    let script = fred::types::scripts::Script::from_lua(REPLAY_DEAD_LETTER);
    let err = script
        .evalsha_with_reload::<Value, _, _>(
            &redis,
            vec![DLQ, REQUEST_STREAM],
            vec![bad, bad, "1", "deadline_ms", "1", "dlq_"],
        )
        .await
        .expect_err("script with an overflowing id");
    assert!(is_invalid_id(&err), "{err}");
    let _: () = redis
        .set(DLQ, "not a stream", None, None, false)
        .await
        .expect("SET");
    let err = redis
        .xdel::<u64, _, _>(DLQ, "1-0")
        .await
        .expect_err("XDEL on a string");
    assert!(!is_invalid_id(&err), "{err}");
}

/// Raw field values of the newest entry of `stream`.
async fn newest_raw(redis: &Client, stream: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let reply: fred::types::Value = redis
        .xrevrange(stream, "+", "-", Some(1))
        .await
        .expect("XREVRANGE");
    let entries = shared::streams::range_entries(reply).expect("entries");
    let entry = entries.into_iter().next().expect("an entry");
    entry
        .fields
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

#[tokio::test]
async fn a_field_that_is_not_utf8_survives_dead_lettering_and_replay_byte_for_byte() {
    let setup = Setup::start().await;
    let payload: &[u8] = b"{\"city\":\"\xff\xfe\"}";
    let before = dead_lettered_total(&setup.proxy).await;
    let fields: Vec<(&str, fred::types::Value)> = vec![
        ("v", "1".into()),
        ("id", "binary-1".into()),
        ("reply_to", REPLY_STREAM.into()),
        ("deadline_ms", "99999999999999".into()),
        ("op", "weather.city".into()),
        (
            "payload",
            fred::types::Value::Bytes(fred::bytes::Bytes::from_static(payload)),
        ),
    ];
    let _: String = setup
        .redis
        .xadd(REQUEST_STREAM, false, None, "*", fields)
        .await
        .expect("XADD");
    wait_until("dead-lettered", Duration::from_secs(10), || async {
        dead_lettered_total(&setup.proxy).await > before
    })
    .await;
    let copy = newest_raw(&setup.redis, "weather-requests:dlq").await;
    assert!(
        copy.iter()
            .any(|(k, v)| k.as_slice() == b"payload" && v.as_slice() == payload),
        "the dead-letter copy keeps the raw payload: {copy:?}"
    );
    let letter = setup
        .list()
        .await
        .into_iter()
        .find(|l| l["requestId"] == "binary-1")
        .expect("listed");
    // Payloads are bytes (an `http` body may be anything): the entry is read, and the weather
    // handler refuses a payload that is not JSON.
    assert_eq!(letter["reason"], "invalid_payload");

    // Replaying puts the same bytes back on the request stream (where it fails again).
    let id = letter["id"].as_str().expect("id").to_string();
    let replayed = setup
        .http
        .post(setup.url(&format!("/api/dead-letters/{id}/replay")))
        .send()
        .await
        .expect("replay");
    assert_eq!(replayed.status(), 200);
    wait_until("dead-lettered again", Duration::from_secs(10), || async {
        dead_lettered_total(&setup.proxy).await > before + 1.0
    })
    .await;
    let again = newest_raw(&setup.redis, "weather-requests:dlq").await;
    assert!(
        again
            .iter()
            .any(|(k, v)| k.as_slice() == b"payload" && v.as_slice() == payload),
        "{again:?}"
    );
}
