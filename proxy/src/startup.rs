//! Building and running the proxy: `Application::build` binds and connects, `run` consumes
//! until the shutdown token is cancelled, then drains and leaves the group.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use fred::prelude::*;
use shared::redis::{connect, ensure_group, wait_connected};
use shared::resilience::CircuitBreaker;
use shared::secrets::redact_url;
use shared::streams::{SamplerSettings, spawn_sampler};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ProxyConfig, Switch};
use crate::consumer::{Consumer, RecoverySettings, Terminal, TerminalStats};
use crate::dead_letter::DeadLetters;
use crate::faults::FailureInjection;
use crate::forward::Forwarder;
use crate::handler::Handler;
use crate::reclaim::Reclaimer;
use crate::reply::{ReplyQueue, Responder};
use crate::routes::admin_guard::AdminGuard;
use crate::routes::status::Identity;
use crate::routes::{ProxyState, router};
use crate::weather::Weather;

/// How long `build` waits for Redis before it starts anyway (consuming once Redis answers):
/// short, so a SIGTERM during a Redis outage is obeyed within a second.
const STARTUP_CONNECT_WAIT: Duration = Duration::from_millis(500);

/// How often the request stream's length, lag and pending count are sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// A bound, connecting proxy that has not started consuming yet.
pub struct Application {
    config: ProxyConfig,
    listener: TcpListener,
    commands: Client,
    blocking: Client,
    consumer_name: String,
    breaker: Arc<CircuitBreaker>,
    handler: Arc<dyn Handler>,
}

impl Application {
    /// Binds the listener and starts connecting to Redis (an unreachable Redis is waited out).
    /// The handler is the forwarder with UPSTREAM_URL, else the weather demo.
    pub async fn build(config: ProxyConfig) -> anyhow::Result<Self> {
        let handler: Arc<dyn Handler> = match &config.upstream_url {
            Some(url) => Arc::new(
                Forwarder::new(
                    url,
                    config.upstream_max_response_bytes as usize,
                    &config.request_stream(),
                )
                .context("invalid UPSTREAM_URL")?,
            ),
            None => {
                if let Some(queue) = &config.queue {
                    tracing::warn!(
                        queue,
                        "QUEUE is set without UPSTREAM_URL: this proxy serves the weather demo on that queue and dead-letters forwarded requests; set UPSTREAM_URL to forward them"
                    );
                }
                Arc::new(Weather::new(config.processing_delay_ms))
            }
        };
        Self::build_with_handler(config, handler).await
    }

    /// Like [`Application::build`], with a handler of your own: everything else (reading,
    /// deadlines, replies, reclaim, dead letters, shutdown) stays the proxy's.
    pub async fn build_with_handler(
        mut config: ProxyConfig,
        handler: Arc<dyn Handler>,
    ) -> anyhow::Result<Self> {
        config.redis.request_stream = config.request_stream();
        crate::metrics::register();
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("cannot listen on {} (LISTEN_ADDR)", config.listen_addr))?;
        let commands = connect(&config.redis).context("invalid Redis settings")?;
        let blocking = connect(&config.redis).context("invalid Redis settings")?;
        let breaker = Arc::new(CircuitBreaker::new("proxy", config.breaker.settings()));
        let reconnect_breaker = breaker.clone();
        let _reconnect_listener = commands.on_reconnect(move |_server| {
            tracing::info!("connected to Redis");
            reconnect_breaker.reset();
            async { Ok(()) }
        });
        if wait_connected(&commands, STARTUP_CONNECT_WAIT).await {
            ensure_group(
                &commands,
                &config.redis.request_stream,
                &config.redis.consumer_group,
            )
            .await
            .context("cannot create the consumer group")?;
        } else {
            tracing::warn!(
                redis_url = %redact_url(&config.redis.redis_url),
                "Redis does not answer yet; will start consuming when it does"
            );
        }
        let consumer_name = config.resolved_consumer_name();
        Ok(Application {
            config,
            listener,
            commands,
            blocking,
            consumer_name,
            breaker,
            handler,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Consumes until `shutdown` is cancelled; then stops reading, finishes and acknowledges
    /// what it holds (up to DRAIN_TIMEOUT), leaves the group and returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            config,
            listener,
            commands,
            blocking,
            consumer_name,
            breaker,
            handler,
        } = self;
        let stream = config.redis.request_stream.clone();
        let group = config.redis.consumer_group.clone();
        let dead_letter_stream = config.dead_letter_stream();
        let background = CancellationToken::new();
        let stream_stats = spawn_sampler(
            commands.clone(),
            SamplerSettings {
                stream: stream.clone(),
                group: group.clone(),
                also_measure: vec![dead_letter_stream.clone()],
                interval: SAMPLE_INTERVAL,
                live_idle: None,
            },
            background.clone(),
        );
        let terminal_stats = Arc::new(TerminalStats {
            total: config.terminals as u64,
            ..Default::default()
        });
        let faults = Arc::new(match config.fault_injection {
            Switch::On => FailureInjection::default(),
            Switch::Off => FailureInjection::disabled(),
        });
        let admin = AdminGuard::new(config.admin_token());
        let dead_letters = DeadLetters::new(commands.clone(), &dead_letter_stream, &stream);
        let memory = Arc::new(shared::redis::MemoryState::default());
        let responder = Responder::new(
            commands.clone(),
            &stream,
            &group,
            breaker.clone(),
            memory.clone(),
        );
        let terminal = Terminal {
            handler: handler.clone(),
            responder: responder.clone(),
            replies: ReplyQueue::start(responder),
            dead_letters: dead_letters.clone(),
            faults: faults.clone(),
            consumer_name: consumer_name.clone(),
            stats: terminal_stats.clone(),
            in_flight: Mutex::new(HashSet::new()),
        };
        let reclaimer = Reclaimer::new(
            commands.clone(),
            &stream,
            &group,
            &consumer_name,
            config.reclaim_min_idle,
            config.consumer_idle_timeout,
        );
        let consumer = Consumer::new(
            blocking.clone(),
            commands.clone(),
            &stream,
            &group,
            config.terminals,
            terminal,
            reclaimer,
            RecoverySettings {
                min_idle: config.reclaim_min_idle,
                interval: config.reclaim_interval,
                max_deliveries: config.max_deliveries,
            },
        );
        let state = ProxyState {
            redis: commands.clone(),
            stream_stats,
            terminals: terminal_stats,
            breaker,
            memory,
            faults,
            dead_letters,
            identity: Arc::new(Identity {
                consumer_name: consumer_name.clone(),
                request_stream: stream.clone(),
                consumer_group: group.clone(),
                dead_letter_stream: dead_letter_stream.clone(),
                processing_delay_ms: config.processing_delay_ms.to_string(),
            }),
        };

        let server_stop = CancellationToken::new();
        let mut server = tokio::spawn(shared::server::serve(
            listener,
            router(state, admin, handler.private_payloads()),
            config.http.settings(),
            server_stop.clone(),
        ));
        tracing::info!(
            listen_addr = %config.listen_addr,
            consumer = consumer_name,
            terminals = config.terminals,
            worker_threads = config.runtime.worker_threads,
            handler = handler.name(),
            upstream = config.upstream_url.as_deref().unwrap_or("-"),
            // PROCESSING_DELAY_MS only shapes the weather demo's simulated work.
            processing_delay_ms = %if handler.name() == "weather" {
                config.processing_delay_ms.to_string()
            } else {
                "-".to_string()
            },
            request_stream = stream,
            group,
            dead_letter_stream,
            reclaim_min_idle = ?config.reclaim_min_idle,
            max_deliveries = config.max_deliveries,
            admin_api = if config.admin_token().is_some() { "token required" } else { "off (no ADMIN_TOKEN)" },
            fault_injection = ?config.fault_injection,
            allocator = ?shared::allocator::settings(),
            "proxy consuming; Swagger UI at /swagger"
        );

        let consuming = tokio::spawn(consumer.run(shutdown.clone(), config.drain_timeout));
        tokio::select! {
            result = &mut server => {
                // The HTTP server died: stop consuming too, after draining.
                shutdown.cancel();
                let _ = consuming.await;
                background.cancel();
                result.context("HTTP server task failed")?;
                return Ok(());
            }
            _ = shutdown.cancelled() => {}
        }
        consuming.await.context("consumer task failed")?;
        server_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
        background.cancel();
        tokio::join!(
            shared::redis::quit(&commands),
            shared::redis::quit(&blocking)
        );
        tracing::info!("proxy stopped");
        Ok(())
    }
}

/// Builds the application and runs it until `shutdown` is cancelled.
pub async fn run(config: ProxyConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(config).await?.run(shutdown).await
}
