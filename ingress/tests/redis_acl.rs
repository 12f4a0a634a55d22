//! Least-privilege Redis users: a redis-server with `default` off and one user per service,
//! each made from the binary's own `--print-redis-acl` line. The services run every path as
//! those users — round trip, reclaim after a proxy is SIGKILLed mid-request, dead-lettering,
//! replay and delete through the admin API, clean shutdown — and not one command is refused
//! (Redis's ACL LOG stays empty, no service logs NOPERM). Then each user is shown to be
//! refused what it must not do.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{ADMIN_TOKEN, GROUP, REQUEST_STREAM, RedisUsers, Stack, StackOptions};
use fred::prelude::*;
use fred::types::CustomCommand;
use testkit::{RedisServer, binary, wait_until};

const DLQ: &str = "weather-requests:dlq";
const ADMIN_PASSWORD: &str = "admin-pw-3e9a";
const INGRESS_PASSWORD: &str = "ingress-pw-51c7";
const PROXY_PASSWORD: &str = "proxy-pw-a20f";
const INSTANCE_ID: &str = "acl-ingress";

/// `<binary> --print-redis-acl` with the default settings: the one line it prints.
async fn printed_rules(name: &str) -> String {
    printed_rules_with(name, &[]).await
}

/// `<binary> --print-redis-acl` with only `env` set: the one line it prints.
async fn printed_rules_with(name: &str, env: &[(&str, &str)]) -> String {
    let output = tokio::process::Command::new(binary(name))
        .env_clear()
        .envs(env.iter().copied())
        .arg("--print-redis-acl")
        .output()
        .await
        .expect("run --print-redis-acl");
    assert_eq!(output.status.code(), Some(0), "{name} --print-redis-acl");
    let text = String::from_utf8(output.stdout).expect("UTF-8 rules");
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    assert!(text.starts_with("resetkeys resetchannels -@all "), "{text}");
    text.trim().to_string()
}

/// Files of one locked-down Redis: the ACL file (`default` off, an all-powerful `admin` for
/// the test itself, `ingress` and `proxy` from their printed rules) and the password files.
struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    async fn write() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let acl = format!(
            "user default off\nuser admin on >{ADMIN_PASSWORD} ~* &* +@all\nuser ingress on >{INGRESS_PASSWORD} {}\nuser proxy on >{PROXY_PASSWORD} {}\n",
            printed_rules("ingress").await,
            printed_rules("proxy").await,
        );
        std::fs::write(dir.path().join("users.acl"), acl).expect("write ACL file");
        for (name, password) in [("ingress", INGRESS_PASSWORD), ("proxy", PROXY_PASSWORD)] {
            std::fs::write(dir.path().join(name), format!("{password}\n")).expect("write");
        }
        Secrets { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn redis_args(&self) -> Vec<String> {
        vec!["--aclfile".into(), self.path("users.acl")]
    }
}

async fn admin(redis: &RedisServer) -> Client {
    redis
        .client_as("admin", ADMIN_PASSWORD)
        .await
        .expect("admin logs in")
}

/// ACL LOG: every refusal Redis recorded (commands, keys, also inside scripts), as text.
async fn acl_log(admin: &Client) -> Vec<String> {
    let entries: Vec<Value> = admin
        .custom(CustomCommand::new_static("ACL", None, false), vec!["LOG"])
        .await
        .expect("ACL LOG");
    entries
        .into_iter()
        .map(|entry| format!("{entry:?}"))
        .collect()
}

fn unix_ms_in(from_now: Duration) -> String {
    (SystemTime::now() + from_now)
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis()
        .to_string()
}

#[tokio::test]
async fn both_services_run_every_path_as_least_privilege_users_without_a_refusal() {
    let secrets = Secrets::write().await;
    let ingress_env = vec![
        ("REDIS_PASSWORD_FILE", secrets.path("ingress")),
        ("INSTANCE_ID", INSTANCE_ID.to_string()),
    ];
    // Proxy A is slow, so a request is in its terminal when it is killed.
    let slow_proxy = vec![
        ("REDIS_PASSWORD_FILE", secrets.path("proxy")),
        ("PROCESSING_DELAY_MS", "5000".to_string()),
    ];
    let mut stack = Stack::start(StackOptions {
        proxies: 1,
        ingresses: 1,
        proxy_env: slow_proxy,
        ingress_env,
        redis_args: secrets.redis_args(),
        redis_users: Some(RedisUsers {
            ingress: "ingress".into(),
            proxy: "proxy".into(),
        }),
        ..Default::default()
    })
    .await;
    let admin = admin(&stack.redis).await;

    // Round trip.
    let response = stack.post_city("Oslo", "Grünerløkka", None).await;
    common::assert_forecast(response, "Oslo", "Grünerløkka", None).await;

    // Reclaim: proxy A dies holding a request; proxy B takes it over.
    let (http, url) = (stack.http.clone(), stack.ingress().url.clone());
    let held = tokio::spawn(async move {
        http.post(format!("{url}/WeatherForecast/city"))
            .json(&serde_json::json!({"city": "Lima", "location": "Miraflores"}))
            .send()
            .await
            .expect("POST")
    });
    wait_until(
        "proxy A to hold the request",
        Duration::from_secs(10),
        || async { common::group_pending(&admin).await == 1 },
    )
    .await;
    stack.proxies[0].sigkill();
    stack
        .add_proxy(&[
            ("REDIS_PASSWORD_FILE", secrets.path("proxy")),
            ("PROCESSING_DELAY_MS", "0".to_string()),
            ("RECLAIM_MIN_IDLE", "1s".to_string()),
            ("RECLAIM_INTERVAL", "200ms".to_string()),
        ])
        .await;
    let response = held.await.expect("request task");
    common::assert_forecast(response, "Lima", "Miraflores", None).await;
    let proxy = &stack.proxies[1];
    assert!(proxy.metric_sum("proxy_reclaimed_total").await >= 1.0);

    // Dead letter: an entry that is not a request (payload not JSON), with a reply stream so
    // the proxy also tells its caller.
    let reply_to = format!("weather-responses:{INSTANCE_ID}");
    let _: String = admin
        .xadd(
            REQUEST_STREAM,
            false,
            None,
            "*",
            vec![
                ("v", "2"),
                ("id", "poison-1"),
                ("token", "t-1"),
                ("reply_to", reply_to.as_str()),
                ("deadline_ms", unix_ms_in(Duration::from_secs(30)).as_str()),
                ("op", "weather.city"),
                ("payload", "not json"),
            ],
        )
        .await
        .expect("XADD poison");
    common::wait_metric(proxy, "proxy_dead_lettered_total", 1.0).await;
    let admin_http = |request: reqwest::RequestBuilder| request.bearer_auth(ADMIN_TOKEN).send();
    let letters: serde_json::Value = stack
        .http
        .get(format!("{}/api/dead-letters", proxy.url))
        .send()
        .await
        .expect("GET dead letters")
        .json()
        .await
        .expect("JSON");
    let id = letters[0]["id"]
        .as_str()
        .expect("a dead letter")
        .to_string();

    // Replay (it fails again and comes back under a new id), then delete.
    let replayed = admin_http(
        stack
            .http
            .post(format!("{}/api/dead-letters/{id}/replay", proxy.url)),
    )
    .await
    .expect("POST replay");
    assert_eq!(replayed.status(), 200, "{:?}", replayed.text().await);
    common::wait_metric(proxy, "proxy_dead_lettered_total", 2.0).await;
    let letters: serde_json::Value = stack
        .http
        .get(format!("{}/api/dead-letters", proxy.url))
        .send()
        .await
        .expect("GET dead letters")
        .json()
        .await
        .expect("JSON");
    let id = letters[0]["id"]
        .as_str()
        .expect("the replayed letter")
        .to_string();
    let deleted = admin_http(
        stack
            .http
            .delete(format!("{}/api/dead-letters/{id}", proxy.url)),
    )
    .await
    .expect("DELETE");
    assert!(deleted.status().is_success(), "{}", deleted.status());
    assert_eq!(common::stream_len(&admin, DLQ).await, 0);

    // Clean shutdown of both.
    stack.ingresses[0].sigterm();
    stack.proxies[1].sigterm();
    assert_eq!(
        stack.ingresses[0].wait_exit(Duration::from_secs(30)).await,
        Some(0)
    );
    assert_eq!(
        stack.proxies[1].wait_exit(Duration::from_secs(30)).await,
        Some(0)
    );
    let reply_stream_left: u64 = admin.exists(reply_to.as_str()).await.expect("EXISTS");
    assert_eq!(reply_stream_left, 0, "the ingress deleted its reply stream");
    assert_eq!(common::group_pending(&admin).await, 0);

    let refused = acl_log(&admin).await;
    assert!(refused.is_empty(), "Redis refused commands: {refused:#?}");
    for service in stack.ingresses.iter().chain(&stack.proxies) {
        let logs = service.logs();
        assert!(
            !logs.contains("NOPERM"),
            "{} logged NOPERM:\n{logs}",
            service.name
        );
        assert!(
            !logs.contains("no permissions"),
            "{} was refused:\n{logs}",
            service.name
        );
    }
}

/// Runs `args` as the client's user; the error text when Redis refuses.
async fn refusal(client: &Client, args: &[&str]) -> String {
    let (name, rest) = args.split_first().expect("a command");
    let command = CustomCommand::new(name.to_string(), None, false);
    let result: Result<Value, Error> = client.custom(command, rest.to_vec()).await;
    match result {
        Ok(value) => panic!("{args:?} was allowed: {value:?}"),
        Err(err) => err.details().to_string(),
    }
}

#[tokio::test]
async fn each_user_is_refused_what_it_must_not_do() {
    let secrets = Secrets::write().await;
    let mut args = vec!["--save", "", "--appendonly", "no"];
    let acl_args = secrets.redis_args();
    args.extend(acl_args.iter().map(String::as_str));
    let redis = RedisServer::start_with(&args).await;
    let admin = admin(&redis).await;
    // Something to be refused access to.
    shared::redis::ensure_group(&admin, REQUEST_STREAM, GROUP)
        .await
        .expect("group");
    let _: String = admin
        .xadd(DLQ, false, None, "*", vec![("id", "r-1")])
        .await
        .expect("XADD DLQ");

    // The default user is off: no anonymous access at all.
    let anonymous = Builder::from_config(Config::from_url(&redis.url()).expect("url"))
        .build()
        .expect("client");
    let denied = anonymous.init().await.expect_err("no anonymous access");
    assert!(denied.details().starts_with("NOAUTH"), "{denied}");

    let ingress = redis
        .client_as("ingress", INGRESS_PASSWORD)
        .await
        .expect("ingress logs in");
    for command in [
        vec![
            "XREADGROUP",
            "GROUP",
            GROUP,
            "c",
            "COUNT",
            "1",
            "STREAMS",
            REQUEST_STREAM,
            ">",
        ],
        vec!["XACK", REQUEST_STREAM, GROUP, "1-0"],
        vec!["XRANGE", DLQ, "-", "+"],
        vec!["XLEN", DLQ],
        vec!["XADD", DLQ, "*", "a", "b"],
        vec!["FLUSHALL"],
        vec!["KEYS", "*"],
    ] {
        let denied = refusal(&ingress, &command).await;
        assert!(denied.starts_with("NOPERM"), "{command:?}: {denied}");
    }

    let proxy = redis
        .client_as("proxy", PROXY_PASSWORD)
        .await
        .expect("proxy logs in");
    for command in [
        vec!["CONFIG", "GET", "*"],
        vec!["FLUSHALL"],
        vec!["KEYS", "*"],
        vec!["SET", "elsewhere", "x"],
        vec!["XADD", "elsewhere", "*", "a", "b"],
        vec!["XRANGE", "elsewhere", "-", "+"],
        vec!["XREAD", "STREAMS", REQUEST_STREAM, "0"],
    ] {
        let denied = refusal(&proxy, &command).await;
        assert!(denied.starts_with("NOPERM"), "{command:?}: {denied}");
    }
    // What they are for still works.
    let length: u64 = proxy.xlen(DLQ).await.expect("proxy reads the DLQ");
    assert_eq!(length, 1);
    let length: u64 = ingress.xlen(REQUEST_STREAM).await.expect("ingress XLEN");
    assert_eq!(length, 0);
}

/// The deployment's ACL file (k8s/app/redis-users.acl, used by Kubernetes and Compose).
fn deployment_users_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/app/redis-users.acl")
}

#[tokio::test]
async fn the_deployment_acl_file_has_the_printed_rules_and_starts_redis_with_default_off() {
    let text = std::fs::read_to_string(deployment_users_file()).expect("read redis-users.acl");
    let rules_of = |user: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("user {user} ")))
            .unwrap_or_else(|| panic!("no line for user {user} in redis-users.acl"))
            .to_string()
    };
    for service in ["ingress", "proxy"] {
        assert_eq!(
            rules_of(service),
            printed_rules(service).await,
            "k8s/app/redis-users.acl is out of date: put `{service} --print-redis-acl` in it"
        );
    }
    // The forwarding example's users (compose profile `forwarding`, k8s/examples/forwarding/).
    for (user, service, env) in [
        ("ingress-forwarding", "ingress", ("ROUTES", "/api=orders")),
        ("proxy-orders", "proxy", ("QUEUE", "orders")),
    ] {
        assert_eq!(
            rules_of(user),
            printed_rules_with(service, &[env]).await,
            "k8s/app/redis-users.acl is out of date: put `{}={} {service} --print-redis-acl` in the line of user {user}",
            env.0,
            env.1
        );
    }

    // Start Redis the way the deployments do: k8s/app/redis-start.sh with a password per user.
    let secrets = tempfile::tempdir().expect("temp dir");
    let users = [
        "admin",
        "ingress",
        "proxy",
        "monitor",
        "ingress-forwarding",
        "proxy-orders",
    ];
    for user in users {
        std::fs::write(
            secrets.path().join(format!("{user}-password")),
            format!("{user}-pw\n"),
        )
        .expect("write password");
    }
    let port = testkit::free_port();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/app/redis-start.sh");
    let _redis = tokio::process::Command::new("sh")
        .arg(script)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(secrets.path())
        .env("REDIS_ACL_RULES", deployment_users_file())
        .env("REDIS_SECRETS_DIR", secrets.path())
        .env("REDIS_ACL_FILE", secrets.path().join("generated.acl"))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-start.sh");
    let url = format!("redis://127.0.0.1:{port}");
    let login = |user: &'static str| {
        let url = url.clone();
        async move {
            let mut config = Config::from_url(&url).expect("url");
            config.username = Some(user.into());
            config.password = Some(format!("{user}-pw"));
            let client = Builder::from_config(config).build().expect("client");
            client.init().await.map(|_| client)
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let monitor = loop {
        match login("monitor").await {
            Ok(client) => break client,
            Err(err) if tokio::time::Instant::now() >= deadline => {
                panic!("Redis did not accept the monitor user within 10 s: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let length: u64 = monitor.xlen(REQUEST_STREAM).await.expect("monitor XLEN");
    assert_eq!(length, 0);
    // KEDA scales the forwarding example's proxy on its queue's stream.
    let length: u64 = monitor
        .xlen("orders-requests")
        .await
        .expect("monitor XLEN of the orders queue");
    assert_eq!(length, 0);
    let denied = refusal(&monitor, &["XADD", REQUEST_STREAM, "*", "a", "b"]).await;
    assert!(denied.starts_with("NOPERM"), "{denied}");
    for user in users.into_iter().filter(|user| *user != "monitor") {
        login(user)
            .await
            .unwrap_or_else(|err| panic!("{user} cannot log in: {err}"));
    }
    let mut anonymous = Config::from_url(&url).expect("url");
    anonymous.password = None;
    let anonymous = Builder::from_config(anonymous).build().expect("client");
    let denied = anonymous.init().await.expect_err("the default user is off");
    assert!(denied.details().starts_with("NOAUTH"), "{denied}");
}
