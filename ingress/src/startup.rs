//! Building and running the ingress: `Application::build` binds and connects, `run` serves
//! until the shutdown token is cancelled and then drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fred::prelude::*;
use shared::redis::{ConnectionWatch, MemoryState, connect, ensure_group, wait_connected};
use shared::resilience::CircuitBreaker;
use shared::secrets::redact_url;
use shared::streams::{SamplerSettings, spawn_sampler};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::broker::{Enqueuer, Queue, StreamClient};
use crate::config::IngressConfig;
use crate::replies::{PendingReplies, create_reply_stream, keep_reply_stream, read_replies};
use crate::routes::forward::ForwardRoute;
use crate::routes::rate_limit::RateLimiting;
use crate::routes::router;
use crate::state::AppState;

/// How long `build` waits for Redis before it starts anyway (serving 503 until Redis answers):
/// short, so a SIGTERM during a Redis outage is obeyed within a second.
const STARTUP_CONNECT_WAIT: Duration = Duration::from_millis(500);

/// How often the request stream's length, lag, drain rate and consumers are sampled. Short,
/// because admission estimates waits from it; it costs three cheap commands per sample.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);

/// A consumer that has not read or claimed for this long counts as gone. A live proxy does one
/// or the other at least every second.
const CONSUMER_LIVE_IDLE: Duration = Duration::from_secs(3);

/// A bound, connected ingress that has not started serving yet.
pub struct Application {
    config: IngressConfig,
    listener: TcpListener,
    commands: Client,
    blocking: Client,
    connection: Arc<ConnectionWatch>,
    instance_id: String,
    reply_stream: String,
    first_reply_id: String,
    reconnected: Arc<Notify>,
    breaker: Arc<CircuitBreaker>,
}

impl Application {
    /// Binds the listener and starts connecting to Redis. Fails only for problems a restart
    /// cannot fix (address in use, malformed URL); an unreachable Redis is waited out.
    pub async fn build(config: IngressConfig) -> anyhow::Result<Self> {
        crate::metrics::register();
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("cannot listen on {} (LISTEN_ADDR)", config.listen_addr))?;
        let commands = connect(&config.redis).context("invalid Redis settings")?;
        let blocking = connect(&config.redis).context("invalid Redis settings")?;
        let connection = ConnectionWatch::start(&commands);
        let instance_id = config.resolved_instance_id();
        let reply_stream = format!("{}:{}", config.reply_stream_prefix, instance_id);

        let breaker = Arc::new(CircuitBreaker::new("ingress", config.breaker.settings()));
        let reconnected = Arc::new(Notify::new());
        let (notify, reconnect_breaker) = (reconnected.clone(), breaker.clone());
        let _reconnect_listener = commands.on_reconnect(move |_server| {
            tracing::info!("connected to Redis");
            reconnect_breaker.reset();
            notify.notify_one();
            async { Ok(()) }
        });

        let routes = config
            .forwarded_routes()
            .map_err(|why| anyhow::anyhow!("invalid forwarded routes: {why}"))?;
        let mut first_reply_id = "0-0".to_string();
        if wait_connected(&commands, STARTUP_CONNECT_WAIT).await {
            let streams = std::iter::once(config.redis.request_stream.clone())
                .chain(routes.iter().map(|route| route.stream()));
            for stream in streams {
                ensure_group(&commands, &stream, &config.redis.consumer_group)
                    .await
                    .with_context(|| format!("cannot create the consumer group on {stream}"))?;
            }
            first_reply_id = create_reply_stream(
                &commands,
                &reply_stream,
                &instance_id,
                config.reply_stream_ttl,
            )
            .await
            .context("cannot create the reply stream")?;
        } else {
            tracing::warn!(redis_url = %redact_url(&config.redis.redis_url), "Redis does not answer yet; serving 503 until it does");
        }
        Ok(Application {
            config,
            listener,
            commands,
            blocking,
            connection,
            instance_id,
            reply_stream,
            first_reply_id,
            reconnected,
            breaker,
        })
    }

    /// The address actually bound (tests ask for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then drains: not ready at once, new requests get
    /// 503, requests in flight get their replies until DRAIN_TIMEOUT, then exit.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            config,
            listener,
            commands,
            blocking,
            connection,
            instance_id,
            reply_stream,
            first_reply_id,
            reconnected,
            breaker,
        } = self;
        let background = CancellationToken::new();
        let abandon = CancellationToken::new();
        let pending = Arc::new(PendingReplies::default());
        let memory = Arc::new(MemoryState::default());
        let stream_stats = spawn_sampler(
            commands.clone(),
            SamplerSettings {
                stream: config.redis.request_stream.clone(),
                group: config.redis.consumer_group.clone(),
                also_measure: Vec::new(),
                interval: SAMPLE_INTERVAL,
                live_idle: Some(CONSUMER_LIVE_IDLE),
            },
            background.clone(),
        );
        let queue = Queue {
            stream: config.redis.request_stream.as_str().into(),
            max_backlog: config.max_backlog,
            stats: stream_stats,
        };
        let admission = Arc::new(Admission::new(
            config.max_in_flight,
            config.no_consumer_grace,
        ));
        let enqueuer = Enqueuer::new(
            commands.clone(),
            config.redis.redis_command_timeout,
            &reply_stream,
            &instance_id,
            config.reply_stream_ttl,
            pending.clone(),
            memory.clone(),
        );
        let state = AppState {
            broker: StreamClient::new(
                connection,
                enqueuer.clone(),
                pending.clone(),
                breaker.clone(),
                abandon.clone(),
            ),
            admission: admission.clone(),
            queue,
            memory,
            breaker,
            redis: commands.clone(),
            request_timeout: config.request_timeout,
        };

        let reader = tokio::spawn(read_replies(
            blocking.clone(),
            commands.clone(),
            reply_stream.clone(),
            pending,
            first_reply_id,
            background.clone(),
        ));
        let keeper = tokio::spawn(keep_reply_stream(
            commands.clone(),
            enqueuer,
            reconnected,
            background.clone(),
        ));

        let server_stop = CancellationToken::new();
        let buffer = Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(config.forward_buffer_bytes.div_ceil(1024)).unwrap_or(usize::MAX),
        ));
        let forwarded = config
            .forwarded_routes()
            .map_err(|why| anyhow::anyhow!("invalid forwarded routes: {why}"))?
            .into_iter()
            .map(|route| {
                let stats = spawn_sampler(
                    commands.clone(),
                    SamplerSettings {
                        stream: route.stream(),
                        group: config.redis.consumer_group.clone(),
                        also_measure: Vec::new(),
                        interval: SAMPLE_INTERVAL,
                        live_idle: Some(CONSUMER_LIVE_IDLE),
                    },
                    background.clone(),
                );
                tracing::info!(
                    prefix = route.prefix,
                    queue = route.queue,
                    stream = route.stream(),
                    "forwarding route"
                );
                Arc::new(ForwardRoute {
                    queue: Queue {
                        stream: route.stream().into(),
                        max_backlog: route.max_backlog.unwrap_or(config.max_backlog),
                        stats,
                    },
                    config: route,
                    trusted: config.trusted_proxies.clone(),
                    buffer: buffer.clone(),
                })
            })
            .collect();
        let rate_limits = RateLimiting::from_config(&config);
        let _eviction = rate_limits
            .as_ref()
            .map(|l| l.spawn_eviction(background.clone()));
        let app = router(state, config.max_body_bytes, rate_limits, forwarded);
        let mut server = tokio::spawn(shared::server::serve(
            listener,
            app,
            config.http.settings(),
            server_stop.clone(),
        ));
        tracing::info!(
            listen_addr = %config.listen_addr,
            instance_id,
            reply_stream,
            request_stream = config.redis.request_stream,
            worker_threads = config.runtime.worker_threads,
            rate_limit = ?config.rate_limit,
            allocator = ?shared::allocator::settings(),
            "ingress serving; Swagger UI at /swagger"
        );

        let served_early = tokio::select! {
            result = &mut server => Some(result),
            _ = shutdown.cancelled() => None,
        };
        if let Some(result) = served_early {
            background.cancel();
            result.context("HTTP server task failed")?;
            return Ok(());
        }

        admission.start_draining();
        tracing::info!(in_flight = admission.in_flight(), drain_timeout = ?config.drain_timeout, "draining: new requests get 503");
        if tokio::time::timeout(config.drain_timeout, admission.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = admission.in_flight(),
                "drain timeout passed; abandoning requests still waiting (they get 503)"
            );
            abandon.cancel();
        }
        server_stop.cancel();
        match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
            Ok(result) => result.context("HTTP server task failed")?,
            Err(_) => {
                tracing::warn!("HTTP connections did not close within 5 s; closing them");
                server.abort();
            }
        }
        background.cancel();
        let _ = reader.await;
        let _ = keeper.await; // deletes the reply stream
        tokio::join!(
            shared::redis::quit(&commands),
            shared::redis::quit(&blocking)
        );
        tracing::info!("ingress stopped");
        Ok(())
    }
}

/// Builds the application and runs it until `shutdown` is cancelled.
pub async fn run(config: IngressConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(config).await?.run(shutdown).await
}
