//! Test support: real `redis-server` processes on free ports and the real service binaries.
//!
//! A dev-dependency only: the services never link it. Its functions panic with a clear message
//! when a precondition breaks (no redis-server, a binary missing), which is how a test fails.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fred::prelude::*;
use tokio::process::{Child, Command};

mod pki;
pub use pki::TestPki;

/// Asks the OS for a free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Polls `check` every 20 ms until it returns true; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` owned by one test, on its own port and directory, killed on drop.
pub struct RedisServer {
    /// Port it listens on (127.0.0.1): plain text, or TLS only for [`RedisServer::start_tls`].
    pub port: u16,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    tls: bool,
    child: Option<Child>,
}

/// How [`RedisServer::start_tls`] sets up TLS (files usually from a [`TestPki`]).
pub struct TlsOptions {
    /// `tls-cert-file`: the server's certificate.
    pub cert: PathBuf,
    /// `tls-key-file`: its key.
    pub key: PathBuf,
    /// `tls-ca-cert-file`: the CA client certificates must be signed by.
    pub ca: PathBuf,
    /// `tls-auth-clients yes` (mutual TLS) when true, `no` otherwise.
    pub auth_clients: bool,
}

impl RedisServer {
    /// Starts a server without persistence.
    pub async fn start() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "no"]).await
    }

    /// Starts a server with extra arguments (e.g. `--appendonly yes`, `--requirepass pw`).
    pub async fn start_with(extra_args: &[&str]) -> Self {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir for redis"),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            tls: false,
            child: None,
        };
        server.spawn_on_a_free_port().await;
        server
    }

    /// Starts a server that speaks TLS only (`--port 0 --tls-port <port>`), without
    /// persistence. It logs to a file ([`RedisServer::log`]), where each refused handshake is
    /// an "Error accepting a client connection" line.
    pub async fn start_tls(options: &TlsOptions) -> Self {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        let extra_args = vec![
            "--tls-cert-file".to_string(),
            path(&options.cert),
            "--tls-key-file".into(),
            path(&options.key),
            "--tls-ca-cert-file".into(),
            path(&options.ca),
            "--tls-auth-clients".into(),
            if options.auth_clients { "yes" } else { "no" }.into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ];
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir for redis"),
            extra_args,
            tls: true,
            child: None,
        };
        server.spawn_on_a_free_port().await;
        server
    }

    /// First start. The port was free when [`free_port`] chose it, but another test's server,
    /// or an outgoing connection's local port, can take it before redis-server binds it; then
    /// the server exits at once and is started again on another port.
    async fn spawn_on_a_free_port(&mut self) {
        for _ in 0..3 {
            if self.try_spawn().await.is_ok() {
                return;
            }
            self.port = free_port();
        }
        self.spawn().await;
    }

    /// Starts the server on its port, panicking if it does not become ready.
    async fn spawn(&mut self) {
        if let Err(why) = self.try_spawn().await {
            panic!("redis-server on port {} {why}", self.port);
        }
    }

    /// Starts the server on its port and waits until it is ready (10 s at most, then a panic);
    /// `Err` if it exits before that (e.g. the port is taken).
    async fn try_spawn(&mut self) -> Result<(), String> {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut command = Command::new(&binary);
        if self.tls {
            command
                .arg("--port")
                .arg("0")
                .arg("--tls-port")
                .arg(self.port.to_string())
                .arg("--logfile")
                .arg(self.log_path());
        } else {
            command.arg("--port").arg(self.port.to_string());
        }
        let readies_before = self.log().matches(READY_LINE).count();
        let child = command
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} ({e}); install it: apt-get install -y redis-server")
            });
        self.child = Some(child);
        if self.tls {
            // A plain PING cannot pass a TLS port; the server's log says when it is ready.
            let log_path = self.log_path();
            let ready = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    if log.matches(READY_LINE).count() > readies_before {
                        return Ok(());
                    }
                    self.exited()?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            match ready {
                Ok(result) => result,
                Err(_) => panic!(
                    "TLS redis-server did not become ready in 10 s; its log:\n{}",
                    self.log()
                ),
            }
        } else {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !redis_ping(self.port).await {
                self.exited()?;
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "redis-server on port {} did not accept connections in 10 s",
                    self.port
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        }
    }

    /// `Err` if the server process has exited.
    fn exited(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(|child| child.try_wait()) {
            Some(Ok(Some(status))) => Err(format!("exited before it was ready ({status})")),
            _ => Ok(()),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// What a TLS server wrote to its log file so far (empty for plain servers, which log
    /// nowhere).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://…` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A connected client for inspecting Redis state from the test (plain servers without a
    /// password only).
    pub async fn client(&self) -> Client {
        assert!(!self.tls, "RedisServer::client does not speak TLS");
        let client = Builder::from_config(Config::from_url(&self.url()).expect("redis url"))
            .build()
            .expect("build client");
        client.init().await.expect("connect to test redis");
        client
    }

    /// A connected client logged in as ACL user `user` (plain servers only). Fails, rather
    /// than panics, when Redis refuses the login, so a test can check that too.
    pub async fn client_as(&self, user: &str, password: &str) -> Result<Client, Error> {
        assert!(!self.tls, "RedisServer::client_as does not speak TLS");
        let mut config = Config::from_url(&self.url()).expect("redis url");
        config.username = Some(user.to_string());
        config.password = Some(password.to_string());
        let client = Builder::from_config(config).build()?;
        client.init().await?;
        Ok(client)
    }

    /// SIGKILLs the server (a crash, not a shutdown).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered — what a
    /// stalled Redis (a long script, a swapping host, a paused VM) looks like to clients.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a paused server run again (SIGCONT); it then answers what queued meanwhile.
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| c.id())
            .expect("redis-server is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .expect("signal redis-server");
    }

    /// Starts the server again on the same port and directory (AOF, if enabled, is replayed).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

/// What redis-server logs once it listens (7.0: "Ready to accept connections"; 7.2 adds the
/// listener type after it).
const READY_LINE: &str = "Ready to accept connections";

async fn redis_ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    // A server started with --requirepass answers NOAUTH: it is up all the same.
    matches!(
        stream.read(&mut buf).await,
        Ok(n) if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH")
    )
}

/// Path of a workspace binary (`ingress`, `proxy`, `load-test`) next to the test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing; build the workspace first (cargo build --workspace, or run ./scripts/test)",
        path.display()
    );
    path
}

/// A service binary running as a child process with its own port, killed on drop.
pub struct Service {
    /// Which binary.
    pub name: String,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl Service {
    /// Starts `name` with `env` (LISTEN_ADDR is chosen here) and waits until /health/ready is 200.
    pub async fn start(name: &str, env: &[(&str, String)]) -> Self {
        let service = Self::spawn(name, env);
        service.wait_ready().await;
        service
    }

    /// Starts `name` and waits only until it answers /health/live (e.g. Redis is down).
    pub async fn start_live(name: &str, env: &[(&str, String)]) -> Self {
        let service = Self::spawn(name, env);
        let url = format!("{}/health/live", service.url);
        let http = reqwest::Client::new();
        wait_until(
            &format!("{name} to answer /health/live"),
            Duration::from_secs(20),
            || {
                let http = http.clone();
                let url = url.clone();
                async move { http.get(&url).send().await.is_ok() }
            },
        )
        .await;
        service
    }

    /// Like [`Service::start`], with the process's open-files limit (RLIMIT_NOFILE, soft and
    /// hard) set to `max_open_files`, to run it out of file descriptors on purpose.
    pub async fn start_with_open_files_limit(
        name: &str,
        env: &[(&str, String)],
        max_open_files: u64,
    ) -> Self {
        let service = Self::spawn_with(name, env, Some(max_open_files));
        service.wait_ready().await;
        service
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    fn spawn(name: &str, env: &[(&str, String)]) -> Self {
        Self::spawn_with(name, env, None)
    }

    fn spawn_with(name: &str, env: &[(&str, String)], max_open_files: Option<u64>) -> Self {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let stderr = log.reopen().expect("reopen log file");
        let mut command = Command::new(binary(name));
        if let Some(limit) = max_open_files {
            // SAFETY: setrlimit is a plain system call, safe between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        limit,
                        limit,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        let child = command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "RUST_LOG",
                std::env::var("TEST_SERVICE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Service {
            name: name.to_string(),
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            log,
        }
    }

    /// Waits until /health/ready answers 200, printing the service's log on timeout.
    pub async fn wait_ready(&self) {
        let url = format!("{}/health/ready", self.url);
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{} did not become ready in 30 s; its log:\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the service wrote to stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Sends SIGTERM (what Kubernetes and docker send on stop).
    pub fn sigterm(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// Sends SIGKILL (a crash).
    pub fn sigkill(&self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| c.id())
            .expect("service is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .expect("send signal");
    }

    /// Waits for the process to exit and returns its exit code (None if killed by a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("service is running");
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => status.code(),
            Ok(Err(e)) => panic!("waiting for {} failed: {e}", self.name),
            Err(_) => {
                let _ = child.kill().await;
                panic!(
                    "{} did not exit within {timeout:?}; its log:\n{}",
                    self.name,
                    self.logs()
                )
            }
        }
    }

    /// Reads `/metrics` and returns the sum of all samples of `name` (any labels).
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        sum_metric(&text, name)
    }
}

/// Sums the samples of metric `name` in a Prometheus text exposition.
pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// HTTP/1.1 over a raw TCP socket, for tests that must control every byte and see when the
/// server closes the connection (what an HTTP client hides).
pub mod raw_http {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// One response read off a socket.
    #[derive(Debug)]
    pub struct RawResponse {
        /// Status code.
        pub status: u16,
        /// The head as text (status line and headers).
        pub head: String,
        /// The body (by Content-Length).
        pub body: Vec<u8>,
    }

    impl RawResponse {
        /// The body as text.
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }

        /// Value of header `name` (case-insensitive).
        pub fn header(&self, name: &str) -> Option<String> {
            self.head.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_string())
            })
        }
    }

    /// Connects to a service URL like `http://127.0.0.1:40123`.
    pub async fn connect(url: &str) -> TcpStream {
        let addr = url.trim_start_matches("http://").trim_end_matches('/');
        TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Writes `bytes`, panicking on failure.
    pub async fn send(stream: &mut TcpStream, bytes: &[u8]) {
        stream.write_all(bytes).await.expect("write to the server");
    }

    /// A complete `GET path` request that keeps the connection alive.
    pub fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
    }

    /// Reads one response (head and Content-Length body); panics if the server closes first
    /// or nothing complete arrives `within`.
    pub async fn read_response(stream: &mut TcpStream, within: Duration) -> RawResponse {
        tokio::time::timeout(within, read_response_inner(stream))
            .await
            .unwrap_or_else(|_| panic!("no complete response within {within:?}"))
    }

    async fn read_response_inner(stream: &mut TcpStream) -> RawResponse {
        let mut buffer = Vec::new();
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read a response");
            assert!(
                n > 0,
                "the server closed the connection before a response; got {:?}",
                String::from_utf8_lossy(&buffer)
            );
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
        let mut response = RawResponse {
            status,
            head,
            body: buffer[head_end..].to_vec(),
        };
        let length: usize = response
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while response.body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read a response body");
            assert!(n > 0, "the server closed the connection mid-body");
            response.body.extend_from_slice(&chunk[..n]);
        }
        response
    }

    /// Waits until the server closes the connection (a read returns 0 or fails) and returns
    /// what it sent before; panics if it is still open after `within`.
    pub async fn wait_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
        let mut received = Vec::new();
        let closed = tokio::time::timeout(within, async {
            let mut chunk = [0u8; 4096];
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the server kept the connection open for {within:?}; it sent {:?}",
            String::from_utf8_lossy(&received)
        );
        received
    }

    /// True when the connection is still open, with nothing received, after `wait`.
    pub async fn still_open_after(stream: &mut TcpStream, wait: Duration) -> bool {
        let mut chunk = [0u8; 1];
        tokio::time::timeout(wait, stream.read(&mut chunk))
            .await
            .is_err()
    }
}
