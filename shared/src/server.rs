//! The HTTP server of both services: hyper's HTTP/1.1 connection driver behind an accept loop
//! that bounds what a client can hold.
//!
//! `axum::serve` waits for headers, bodies and the next request on a kept-alive connection
//! without any deadline and accepts connections without limit, so a few hundred silent or slow
//! clients use up the process's file descriptors and every new connection is refused. [`serve`]
//! gives every phase of a connection a deadline:
//!
//! | phase | starts | ends | limit |
//! |---|---|---|---|
//! | headers | accept, or the first byte of a later request | the request head is parsed | `header_read_timeout` |
//! | body | the request head is parsed | the handler has read the whole body | `body_read_timeout` |
//! | idle | the response is ready | the first byte of the next request | `idle_timeout` |
//!
//! A connection past its headers or idle limit is closed. A body past its limit fails inside the
//! handler, which answers 408 (see [`BodyReadTimeout`]); hyper then closes the connection because
//! the body was never finished. The idle limit also bounds a client that does not take its
//! response. While a handler works on a request no connection deadline applies: the handlers
//! bound their own waits (REQUEST_TIMEOUT).
//!
//! At most `max_connections` connections are open at once. Beyond that the accept loop stops
//! accepting, so further connections wait in the kernel's listen backlog: they cost no file
//! descriptor, and each is served as soon as an open connection closes (at the latest after one
//! of the limits above). Accepting them only to close them again would spend a descriptor and
//! a system call on each and turn a burst into errors. An accept that fails for lack of
//! descriptors (EMFILE/ENFILE) pauses the loop with a growing pause (10 ms to 1 s) instead of
//! retrying at once, and is logged at most every 10 s.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Default of [`ServerSettings::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`ServerSettings::body_read_timeout`].
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`ServerSettings::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of [`ServerSettings::max_connections`]: well below the usual `ulimit -n` of
/// containers (65536 and up), with room for Redis connections and files.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// First pause of the accept loop after a failed accept; doubled per failure up to
/// [`MAX_ACCEPT_PAUSE`], reset by a successful accept.
const MIN_ACCEPT_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause of the accept loop: how late, at worst, it notices that descriptors are free.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);
/// At most one log line per this interval for accept failures and for the connection cap.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// File descriptors the process needs besides client connections (listener, Redis
/// connections, epoll, logs), with room to spare; used only to warn about a low `ulimit -n`.
const RESERVED_FILES: u64 = 64;

/// How long each phase of a connection may take, and how many connections may be open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// From accept (or from the first byte of a later request) until the request head is
    /// parsed; past it the connection is closed.
    pub header_read_timeout: Duration,
    /// From the parsed head until the whole request body is read; past it the handler answers
    /// 408 and the connection is closed.
    pub body_read_timeout: Duration,
    /// From a response until the next request starts (or the client has taken the response);
    /// past it the connection is closed.
    pub idle_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Describes the server's metrics and publishes them at zero (called by
/// [`crate::telemetry::register_common_metrics`]).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!("http_connections_open", "Client connections open now");
    describe_gauge!(
        "http_connections_max",
        "Connections that may be open at once (MAX_CONNECTIONS)"
    );
    describe_counter!(
        "http_connection_limit_reached_total",
        "Times the accept loop waited because MAX_CONNECTIONS connections were open"
    );
    describe_counter!(
        "http_connection_timeouts_total",
        "Connections closed (header, idle) or requests answered 408 (body) for exceeding a time limit, by phase"
    );
    describe_counter!(
        "http_accept_errors_total",
        "Failed accepts that paused the accept loop (e.g. Too many open files)"
    );
    metrics::gauge!("http_connections_open").set(0.0);
    for phase in ["header", "body", "idle"] {
        metrics::counter!("http_connection_timeouts_total", "phase" => phase).absolute(0);
    }
    metrics::counter!("http_connection_limit_reached_total").absolute(0);
    metrics::counter!("http_accept_errors_total").absolute(0);
}

/// Serves `router` on `listener` until `shutdown` is cancelled; then stops accepting (new
/// connections are refused), lets requests in flight finish, closes idle kept-alive
/// connections, and returns when every connection is closed.
///
/// Callers that must keep answering while they drain (the ingress answers 503 `draining`)
/// cancel `shutdown` only after their drain.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    warn_if_open_files_limit_is_low(settings.max_connections);
    metrics::gauge!("http_connections_max").set(settings.max_connections as f64);
    let settings = Arc::new(settings);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let connections = TaskTracker::new();
    let mut accept_failures = AcceptFailures::default();
    let mut limit_log = RateLimitedLog::default();
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                metrics::counter!("http_connection_limit_reached_total").increment(1);
                if let Some(suppressed) = limit_log.due() {
                    tracing::warn!(
                        max_connections = settings.max_connections,
                        suppressed,
                        "MAX_CONNECTIONS connections are open; new connections wait in the listen backlog until one closes"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        // The semaphore is never closed; stop serving rather than spin if it were.
                        Err(_) => break,
                    },
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                accept_failures.succeeded();
                connections.spawn(serve_connection(
                    stream,
                    peer,
                    router.clone(),
                    settings.clone(),
                    shutdown.clone(),
                    slot,
                ));
            }
            Err(error) => {
                if let Some(pause) = accept_failures.failed(&error) {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
    }
    drop(listener);
    connections.close();
    tracing::info!(
        open_connections = connections.len(),
        "HTTP server stopped accepting; waiting for open connections to finish"
    );
    connections.wait().await;
}

/// Serves one connection until it ends, exceeds a phase limit, or finishes after `shutdown`.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    settings: Arc<ServerSettings>,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let _open = OpenConnection::count();
    // Answers go out at once instead of waiting (Nagle) for the client's ACK of an earlier
    // segment; failing to set it only costs latency, so the connection is served anyway.
    let _ = stream.set_nodelay(true);
    let clock = Arc::new(ConnectionClock::default());
    let io = TokioIo::new(WatchedIo {
        stream,
        clock: clock.clone(),
    });
    let service = ConnectionService {
        router: TowerToHyperService::new(router),
        clock: clock.clone(),
        body_read_timeout: settings.body_read_timeout,
        peer,
    };
    let mut builder = http1::Builder::new();
    // Our own clock below does this per phase; hyper's timer would also cut idle connections.
    builder.header_read_timeout(None);
    let mut connection = pin!(builder.serve_connection(io, service));
    let mut expired = pin!(clock.expired(&settings));
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                break;
            }
            phase = expired.as_mut() => {
                metrics::counter!("http_connection_timeouts_total", "phase" => phase.label()).increment(1);
                tracing::debug!(%peer, phase = phase.label(), "closing a connection that exceeded its time limit");
                break;
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Counts the connection in `http_connections_open` while alive.
struct OpenConnection;

impl OpenConnection {
    fn count() -> Self {
        metrics::gauge!("http_connections_open").increment(1.0);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("http_connections_open").decrement(1.0);
    }
}

/// Where a connection is in its request cycle; see the table in the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Headers = 0,
    Handling = 1,
    Idle = 2,
}

/// Bits of [`ConnectionClock::state`] holding the phase; the rest count phase changes.
const PHASE_BITS: u32 = 2;

impl Phase {
    fn of(state: u64) -> Phase {
        match state & ((1 << PHASE_BITS) - 1) {
            0 => Phase::Headers,
            1 => Phase::Handling,
            _ => Phase::Idle,
        }
    }

    /// Label value in `http_connection_timeouts_total{phase}`.
    fn label(self) -> &'static str {
        match self {
            Phase::Headers => "header",
            Phase::Handling => "body",
            Phase::Idle => "idle",
        }
    }
}

/// The phase of one connection and when it last changed, shared by the socket wrapper, the
/// service and the watcher that closes the connection when a phase takes too long.
struct ConnectionClock {
    /// Phase in the low bits, a change counter above them: the watcher sees whether the phase
    /// it timed was left (or restarted) in the meantime.
    state: AtomicU64,
    changed: Notify,
}

impl Default for ConnectionClock {
    fn default() -> Self {
        ConnectionClock {
            state: AtomicU64::new(Phase::Headers as u64),
            changed: Notify::new(),
        }
    }
}

impl ConnectionClock {
    /// Enters `phase` now (restarting its clock when already in it).
    fn enter(&self, phase: Phase) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                Some(next_state(state, phase))
            });
        self.changed.notify_one();
    }

    /// Enters `to` only while in `from`.
    fn advance(&self, from: Phase, to: Phase) {
        let state = self.state.load(Ordering::Acquire);
        if Phase::of(state) == from
            && self
                .state
                .compare_exchange(
                    state,
                    next_state(state, to),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// Resolves with the phase that outlived its limit; never while a handler works.
    async fn expired(&self, settings: &ServerSettings) -> Phase {
        loop {
            // Registered before reading the state: a change in between leaves a permit.
            let changed = self.changed.notified();
            let state = self.state.load(Ordering::Acquire);
            let phase = Phase::of(state);
            let limit = match phase {
                Phase::Headers => settings.header_read_timeout,
                Phase::Idle => settings.idle_timeout,
                Phase::Handling => {
                    changed.await;
                    continue;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(limit) => {
                    if self.state.load(Ordering::Acquire) == state {
                        return phase;
                    }
                }
                _ = changed => {}
            }
        }
    }
}

fn next_state(state: u64, phase: Phase) -> u64 {
    (((state >> PHASE_BITS).wrapping_add(1)) << PHASE_BITS) | phase as u64
}

/// The client socket; the first byte of a request on an idle connection starts the headers
/// phase.
struct WatchedIo {
    stream: TcpStream,
    clock: Arc<ConnectionClock>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.clock.advance(Phase::Idle, Phase::Headers);
        }
        result
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Hands each request to the router with a deadline on its body, and moves the clock.
struct ConnectionService {
    router: TowerToHyperService<Router>,
    clock: Arc<ConnectionClock>,
    body_read_timeout: Duration,
    /// The client's address, handed to handlers as axum's `ConnectInfo<SocketAddr>` (what
    /// `into_make_service_with_connect_info` would do), e.g. for per-client rate limits.
    peer: SocketAddr,
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<hyper::Response<ResponseBody>, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for ConnectionService {
    type Response = hyper::Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        self.clock.enter(Phase::Handling);
        let timeout = self.body_read_timeout;
        let mut request = request.map(|body| TimedBody::new(body, timeout));
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let response = hyper::service::Service::call(&self.router, request);
        let clock = self.clock.clone();
        Box::pin(async move {
            let response = response.await?;
            clock.enter(Phase::Idle);
            Ok(response.map(|body| ResponseBody { body, clock }))
        })
    }
}

/// A response body that restarts the idle clock once hyper has taken all of it, so the idle
/// limit counts from then (a large response may take a while to hand over).
struct ResponseBody {
    body: axum::body::Body,
    clock: Arc<ConnectionClock>,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.clock.advance(Phase::Idle, Phase::Idle);
    }
}

/// The error a request body gives once [`ServerSettings::body_read_timeout`] has passed
/// without the whole body. [`crate::http::ApiJson`] turns it into a 408 problem; find it in an
/// extractor's rejection with [`is_body_read_timeout`].
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the request body did not arrive within {} ms (HTTP_BODY_READ_TIMEOUT)",
    timeout.as_millis()
)]
pub struct BodyReadTimeout {
    /// The limit that passed.
    pub timeout: Duration,
}

/// Whether `error` or any error it wraps is a [`BodyReadTimeout`].
pub fn is_body_read_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    body_read_timeout_in(error).is_some()
}

/// The [`BodyReadTimeout`] inside `error`, if any.
pub fn body_read_timeout_in<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a BodyReadTimeout> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(timeout) = error.downcast_ref::<BodyReadTimeout>() {
            return Some(timeout);
        }
        current = error.source();
    }
    None
}

/// A request body that fails with [`BodyReadTimeout`] when it is not complete by its deadline.
/// The timer is created only when the body is not already there, so the usual small body that
/// arrives with its headers costs no timer.
pub(crate) struct TimedBody<B> {
    body: B,
    deadline: Instant,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl<B> TimedBody<B> {
    /// `body` must be complete within `timeout` from now.
    pub(crate) fn new(body: B, timeout: Duration) -> Self {
        TimedBody {
            body,
            deadline: Instant::now() + timeout,
            timeout,
            timer: None,
            expired: false,
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = self.get_mut();
        let timed_out =
            |timeout: Duration| -> axum::BoxError { Box::new(BodyReadTimeout { timeout }) };
        if this.expired {
            return Poll::Ready(Some(Err(timed_out(this.timeout))));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|frame| frame.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.expired = true;
                metrics::counter!("http_connection_timeouts_total", "phase" => Phase::Handling.label())
                    .increment(1);
                Poll::Ready(Some(Err(timed_out(this.timeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.expired && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Pause and logging of the accept loop after failed accepts.
struct AcceptFailures {
    pause: Duration,
    log: RateLimitedLog,
}

impl Default for AcceptFailures {
    fn default() -> Self {
        AcceptFailures {
            pause: MIN_ACCEPT_PAUSE,
            log: RateLimitedLog::default(),
        }
    }
}

impl AcceptFailures {
    /// How long to pause after `error`; `None` for an error of that one connection only (the
    /// client went away before it was accepted), after which the next accept can follow at once.
    fn failed(&mut self, error: &std::io::Error) -> Option<Duration> {
        use std::io::ErrorKind;
        if matches!(
            error.kind(),
            ErrorKind::ConnectionAborted
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionRefused
                | ErrorKind::Interrupted
        ) {
            return None;
        }
        metrics::counter!("http_accept_errors_total").increment(1);
        let pause = self.pause;
        self.pause = (pause * 2).min(MAX_ACCEPT_PAUSE);
        if let Some(suppressed) = self.log.due() {
            tracing::error!(
                %error,
                pause_ms = pause.as_millis() as u64,
                suppressed,
                "cannot accept connections; pausing the accept loop. `Too many open files` means the process reached its open-files limit: lower MAX_CONNECTIONS or raise `ulimit -n`"
            );
        }
        Some(pause)
    }

    /// An accept worked: the next failure pauses briefly again.
    fn succeeded(&mut self) {
        self.pause = MIN_ACCEPT_PAUSE;
    }
}

/// Lets one log line through per [`LOG_INTERVAL`] and counts the ones held back.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    /// `Some(lines held back since the last one)` when a line may be logged now.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Warns at start-up when MAX_CONNECTIONS cannot be reached before the open-files limit,
/// which would turn a connection flood into `Too many open files` instead of a wait.
fn warn_if_open_files_limit_is_low(max_connections: usize) {
    let Some(limit) = open_files_limit() else {
        return;
    };
    if max_connections as u64 + RESERVED_FILES > limit {
        tracing::warn!(
            max_connections,
            open_files_limit = limit,
            "MAX_CONNECTIONS is not well below the open-files limit; under a connection flood accepts fail with `Too many open files`. Raise `ulimit -n` or lower MAX_CONNECTIONS"
        );
    }
}

/// The soft open-files limit of this process (Linux; `None` elsewhere or when unlimited).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that never yields anything: a client that stopped sending.
    struct Stalled;

    impl Body for Stalled {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_with_a_recognisable_timeout() {
        let body = TimedBody::new(Stalled, Duration::from_secs(30));
        let error = axum::body::to_bytes(axum::body::Body::new(body), 1024)
            .await
            .expect_err("a stalled body cannot complete");
        let timeout = body_read_timeout_in(&error).expect("the timeout is in the error chain"); // invariant: test code; a failure here is the test failing
        assert_eq!(timeout.timeout, Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_complete_body_passes_through() {
        let body = TimedBody::new(
            axum::body::Body::from("{\"city\":\"Oslo\"}"),
            Duration::from_secs(1),
        );
        let bytes = axum::body::to_bytes(axum::body::Body::new(body), 1024)
            .await
            .expect("complete body"); // invariant: test code; a failure here is the test failing
        assert_eq!(&bytes[..], b"{\"city\":\"Oslo\"}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_expires_the_phase_that_outlived_its_limit() {
        let settings = ServerSettings {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ServerSettings::default()
        };
        let clock = ConnectionClock::default();
        let started = Instant::now();
        assert_eq!(clock.expired(&settings).await, Phase::Headers);
        assert_eq!(started.elapsed(), Duration::from_secs(10));

        clock.enter(Phase::Idle);
        let started = Instant::now();
        assert_eq!(clock.expired(&settings).await, Phase::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(60));

        // A handler at work is never cut; the idle limit counts from its response.
        clock.enter(Phase::Handling);
        let expired = clock.expired(&settings);
        let mut expired = pin!(expired);
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), expired.as_mut())
                .await
                .is_err()
        );
        clock.enter(Phase::Idle);
        let started = Instant::now();
        assert_eq!(expired.await, Phase::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[test]
    fn only_an_idle_connection_starts_its_headers_on_a_read() {
        let clock = ConnectionClock::default();
        clock.enter(Phase::Handling);
        clock.advance(Phase::Idle, Phase::Headers);
        assert_eq!(
            Phase::of(clock.state.load(Ordering::Acquire)),
            Phase::Handling
        );
        clock.enter(Phase::Idle);
        clock.advance(Phase::Idle, Phase::Headers);
        assert_eq!(
            Phase::of(clock.state.load(Ordering::Acquire)),
            Phase::Headers
        );
    }

    #[test]
    fn accept_pauses_grow_and_reset() {
        let mut failures = AcceptFailures::default();
        let emfile = std::io::Error::from_raw_os_error(24);
        assert_eq!(failures.failed(&emfile), Some(Duration::from_millis(10)));
        assert_eq!(failures.failed(&emfile), Some(Duration::from_millis(20)));
        for _ in 0..20 {
            failures.failed(&emfile);
        }
        assert_eq!(failures.failed(&emfile), Some(MAX_ACCEPT_PAUSE));
        failures.succeeded();
        assert_eq!(failures.failed(&emfile), Some(MIN_ACCEPT_PAUSE));
        let aborted = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert_eq!(failures.failed(&aborted), None);
    }
}
