//! A whole broker on one machine for a test: its own redis-server, proxies and ingresses as
//! real processes on free ports.
#![allow(dead_code)] // each test binary uses a different part of this

use std::time::Duration;

use fred::prelude::*;
use serde_json::{Value, json};
use testkit::{RedisServer, Service, wait_until};

pub const REQUEST_STREAM: &str = "weather-requests";
/// The admin token every proxy of a [`Stack`] gets (send it with `.bearer_auth(ADMIN_TOKEN)`).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const GROUP: &str = "processing-group";

/// The seed's city/location pairs.
pub const CITIES: &[(&str, &str)] = &[
    ("New York", "Downtown"),
    ("London", "Westminster"),
    ("Tokyo", "Shibuya"),
    ("Paris", "Montmartre"),
    ("Sydney", "Harbour"),
    ("Berlin", "Mitte"),
    ("Toronto", "Downtown"),
    ("Singapore", "Marina Bay"),
    ("Dubai", "Downtown"),
    ("Mumbai", "Bandra"),
    ("São Paulo", "Paulista"),
    ("Cape Town", "Waterfront"),
    ("Moscow", "Arbat"),
    ("Seoul", "Gangnam"),
    ("Mexico City", "Centro"),
];

pub struct Stack {
    pub redis: RedisServer,
    pub proxies: Vec<Service>,
    pub ingresses: Vec<Service>,
    pub http: reqwest::Client,
    /// REDIS_URL of the ingresses (with [`StackOptions::redis_users`]' user name).
    pub ingress_redis_url: String,
    /// REDIS_URL of the proxies (with [`StackOptions::redis_users`]' user name).
    pub proxy_redis_url: String,
}

/// Redis ACL user names the services log in as (their passwords go in `REDIS_PASSWORD_FILE`
/// of [`StackOptions::ingress_env`] / [`StackOptions::proxy_env`]).
pub struct RedisUsers {
    pub ingress: String,
    pub proxy: String,
}

pub struct StackOptions {
    pub proxies: usize,
    pub ingresses: usize,
    pub proxy_env: Vec<(&'static str, String)>,
    pub ingress_env: Vec<(&'static str, String)>,
    /// Run Redis with AOF persistence (for restart tests).
    pub redis_aof: bool,
    /// Further redis-server arguments (e.g. `--aclfile <path>`).
    pub redis_args: Vec<String>,
    /// Log the services in as these ACL users instead of the default user.
    pub redis_users: Option<RedisUsers>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            proxies: 1,
            ingresses: 1,
            proxy_env: vec![("PROCESSING_DELAY_MS", "0".into())],
            ingress_env: vec![],
            redis_aof: false,
            redis_args: Vec::new(),
            redis_users: None,
        }
    }
}

impl Stack {
    pub async fn start(options: StackOptions) -> Self {
        let appendonly = if options.redis_aof { "yes" } else { "no" };
        let mut args = vec!["--appendonly", appendonly, "--save", ""];
        args.extend(options.redis_args.iter().map(String::as_str));
        let redis = RedisServer::start_with(&args).await;
        let url_as = |user: Option<&String>| match user {
            Some(user) => format!("redis://{user}@127.0.0.1:{}", redis.port),
            None => redis.url(),
        };
        let users = options.redis_users.as_ref();
        let ingress_redis_url = url_as(users.map(|u| &u.ingress));
        let proxy_redis_url = url_as(users.map(|u| &u.proxy));
        let mut stack = Stack {
            redis,
            proxies: Vec::new(),
            ingresses: Vec::new(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
            ingress_redis_url,
            proxy_redis_url,
        };
        for _ in 0..options.proxies {
            stack.add_proxy(&options.proxy_env).await;
        }
        for _ in 0..options.ingresses {
            let mut env = vec![("REDIS_URL", stack.ingress_redis_url.clone())];
            env.extend(options.ingress_env.iter().cloned());
            stack.ingresses.push(Service::start("ingress", &env).await);
        }
        stack
    }

    /// Starts a proxy with [`ADMIN_TOKEN`] as its admin token, plus `extra` settings.
    pub async fn add_proxy(&mut self, extra: &[(&'static str, String)]) {
        let mut env = vec![
            ("REDIS_URL", self.proxy_redis_url.clone()),
            ("ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ];
        env.extend(extra.iter().cloned());
        self.proxies.push(Service::start("proxy", &env).await);
    }

    pub fn ingress(&self) -> &Service {
        &self.ingresses[0]
    }

    /// POST /WeatherForecast/city on ingress `index`.
    pub async fn post_city_on(
        &self,
        index: usize,
        city: &str,
        location: &str,
        request_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!(
                "{}/WeatherForecast/city",
                self.ingresses[index].url
            ))
            .json(&json!({"city": city, "location": location}));
        if let Some(id) = request_id {
            request = request.header("X-Request-Id", id);
        }
        request.send().await.expect("POST /WeatherForecast/city")
    }

    pub async fn post_city(
        &self,
        city: &str,
        location: &str,
        request_id: Option<&str>,
    ) -> reqwest::Response {
        self.post_city_on(0, city, location, request_id).await
    }

    pub async fn redis_client(&self) -> Client {
        self.redis.client().await
    }
}

/// Asserts a 200 forecast reply belongs to the request, returns the body.
pub async fn assert_forecast(
    response: reqwest::Response,
    city: &str,
    location: &str,
    request_id: Option<&str>,
) -> Value {
    assert_eq!(response.status(), 200, "expected 200 for {city}");
    let header_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .expect("X-Request-Id header");
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(
        body["requestId"], header_id,
        "requestId equals the X-Request-Id header"
    );
    if let Some(id) = request_id {
        assert_eq!(body["requestId"], id);
    }
    assert_eq!(body["city"], city);
    assert_eq!(body["location"], location);
    body
}

/// GET `url` and its JSON body (any status).
pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON body")
}

/// Asserts a problem+json error with `status`, returns the body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let header_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status);
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:problem:broker:")),
        "{body}"
    );
    assert!(
        body["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    if let Some(id) = header_id {
        assert_eq!(
            body["requestId"],
            id.as_str(),
            "requestId in body matches header"
        );
    }
    body
}

/// Pending entries of the group (XINFO GROUPS).
pub async fn group_pending(redis: &Client) -> u64 {
    shared::streams::group_info(redis, REQUEST_STREAM, GROUP)
        .await
        .expect("XINFO GROUPS")
        .map(|info| info.pending)
        .unwrap_or(0)
}

pub async fn stream_len(redis: &Client, key: &str) -> u64 {
    redis.xlen(key).await.expect("XLEN")
}

/// Waits until the sum of `metric` on `service` reaches `value`.
pub async fn wait_metric(service: &Service, metric: &str, value: f64) {
    wait_until(
        &format!("{metric} on {} to reach {value}", service.name),
        Duration::from_secs(10),
        || async { service.metric_sum(metric).await >= value },
    )
    .await;
}

/// KEYS `pattern` (fine on a test's private Redis).
pub async fn keys(redis: &Client, pattern: &str) -> Vec<String> {
    redis
        .custom(
            fred::types::CustomCommand::new_static("KEYS", None, false),
            vec![pattern],
        )
        .await
        .expect("KEYS")
}

/// A request entry taken from the request stream by the test itself, acting as a proxy.
pub type Fields = std::collections::HashMap<String, String>;

/// Reads the next request entry as consumer `consumer` of the group (waits up to 15 s).
pub async fn take_request(redis: &Client, consumer: &str) -> Fields {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply: fred::types::Value = redis
            .xreadgroup(
                GROUP,
                consumer,
                Some(1),
                Some(500),
                false,
                REQUEST_STREAM,
                ">",
            )
            .await
            .expect("XREADGROUP");
        let entries = shared::streams::read_entries(reply).expect("entries");
        if let Some(entry) = entries.into_iter().next() {
            return entry.text_fields();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request entry arrived within 15 s"
        );
    }
}

/// Writes an `ok` reply with `payload` for `request` to its reply stream, carrying `token`
/// (pass the request's own token to answer it, another to play a stale reply).
pub async fn write_reply(redis: &Client, request: &Fields, token: Option<&str>, payload: &str) {
    let mut fields = vec![
        ("id", request["id"].clone()),
        ("status", "ok".to_string()),
        ("payload", payload.to_string()),
        ("proxy", "test-worker".to_string()),
    ];
    if let Some(token) = token {
        fields.push(("token", token.to_string()));
    }
    let _: Option<String> = redis
        .xadd(request["reply_to"].as_str(), true, None, "*", fields)
        .await
        .expect("XADD reply");
}

/// CONFIG SET `name` `value` on the test's Redis.
pub async fn config_set(redis: &Client, name: &str, value: &str) {
    let _: fred::types::Value = redis
        .custom(
            fred::types::CustomCommand::new_static("CONFIG", None, false),
            vec!["SET", name, value],
        )
        .await
        .expect("CONFIG SET");
}

/// Entries ever added to the request stream (XINFO STREAM `entries-added`).
pub async fn entries_added(redis: &Client) -> u64 {
    let info: std::collections::HashMap<String, Value> = redis
        .xinfo_stream::<fred::types::Value, _>(REQUEST_STREAM, false, None)
        .await
        .ok()
        .and_then(|value| value.into_map().ok())
        .map(|map| {
            map.inner()
                .into_iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), json!(v.as_u64()))))
                .collect()
        })
        .unwrap_or_default();
    info.get("entries-added")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}
