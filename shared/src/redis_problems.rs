//! Why the Redis connection fails, said once per cause and in words an operator can act on.
//!
//! fred retries a failed connection forever (about once a second), and each failure is an
//! error event. Logging each one would bury the cause under hundreds of identical lines, and
//! fred's own error text is a `Debug` dump such as `InvalidCertificate(UnknownIssuer)`. So every
//! failure is sorted into a fixed [`Cause`] (bounded metric labels), counted in
//! `redis_connection_errors_total{cause}`, and logged only the first time that cause appears
//! since the last successful connection. The latest cause is also what `/healthz` shows while
//! Redis is unreachable.
//!
//! The state is per process: both clients of a service talk to the same Redis, so the second
//! client failing for the same reason is not news.

use std::sync::Mutex;

use fred::error::Error;

/// The kinds of connection failure, each with a summary and what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The server's certificate is not signed by a trusted CA.
    ServerCertUnknownCa,
    /// The server's certificate has expired (or is not valid yet).
    ServerCertExpired,
    /// The server's certificate does not name the host in REDIS_URL.
    ServerCertWrongName,
    /// Any other problem with the server's certificate.
    ServerCertInvalid,
    /// The server requires a client certificate and none was sent.
    ClientCertRequired,
    /// The server refused the client certificate that was sent.
    ClientCertRejected,
    /// The other side does not speak TLS (rediss:// to a plain port), or other TLS failures.
    TlsHandshake,
    /// Wrong user name or password.
    AuthFailed,
    /// The server requires a password and none was sent.
    AuthRequired,
    /// Nothing listens at the address, or the name does not resolve.
    Unreachable,
    /// The connection was closed or timed out (Redis down, restarting or overloaded).
    ConnectionLost,
    /// Anything else.
    Other,
}

impl Cause {
    /// Every cause, for publishing the counter at zero.
    pub const ALL: [Cause; 12] = [
        Cause::ServerCertUnknownCa,
        Cause::ServerCertExpired,
        Cause::ServerCertWrongName,
        Cause::ServerCertInvalid,
        Cause::ClientCertRequired,
        Cause::ClientCertRejected,
        Cause::TlsHandshake,
        Cause::AuthFailed,
        Cause::AuthRequired,
        Cause::Unreachable,
        Cause::ConnectionLost,
        Cause::Other,
    ];

    /// Sorts a fred connection error by the text fred and rustls put in it.
    pub fn of(err: &Error) -> Cause {
        let details = err.details();
        let has = |needle: &str| details.contains(needle);
        if has("UnknownIssuer") || has("BadSignature") {
            Cause::ServerCertUnknownCa
        } else if has("InvalidCertificate(Expired") || has("InvalidCertificate(NotValidYet") {
            Cause::ServerCertExpired
        } else if has("NotValidForName") {
            Cause::ServerCertWrongName
        } else if has("InvalidCertificate") {
            Cause::ServerCertInvalid
        } else if has("AlertReceived(CertificateRequired)") {
            Cause::ClientCertRequired
        } else if has("AlertReceived(UnknownCA)")
            || has("AlertReceived(BadCertificate)")
            || has("AlertReceived(CertificateExpired)")
            || has("AlertReceived(CertificateUnknown)")
            || has("AlertReceived(UnsupportedCertificate)")
            || has("AlertReceived(AccessDenied)")
        {
            Cause::ClientCertRejected
        } else if has("WRONGPASS") {
            Cause::AuthFailed
        } else if has("NOAUTH") || has("NOPERM") {
            Cause::AuthRequired
        } else if matches!(err.kind(), fred::error::ErrorKind::Tls)
            || has("InvalidMessage")
            || has("AlertReceived")
            || has("PeerMisbehaved")
            || has("PeerIncompatible")
            || has("HandshakeFailure")
        {
            Cause::TlsHandshake
        } else if has("ConnectionRefused") || has("Connection refused") || has("failed to lookup") {
            Cause::Unreachable
        } else if matches!(
            err.kind(),
            fred::error::ErrorKind::IO
                | fred::error::ErrorKind::Timeout
                | fred::error::ErrorKind::Canceled
        ) {
            Cause::ConnectionLost
        } else {
            Cause::Other
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Cause::ServerCertUnknownCa => "server_cert_unknown_ca",
            Cause::ServerCertExpired => "server_cert_expired",
            Cause::ServerCertWrongName => "server_cert_wrong_name",
            Cause::ServerCertInvalid => "server_cert_invalid",
            Cause::ClientCertRequired => "client_cert_required",
            Cause::ClientCertRejected => "client_cert_rejected",
            Cause::TlsHandshake => "tls_handshake",
            Cause::AuthFailed => "auth_failed",
            Cause::AuthRequired => "auth_required",
            Cause::Unreachable => "unreachable",
            Cause::ConnectionLost => "connection_lost",
            Cause::Other => "other",
        }
    }

    /// What happened and what to do, in one sentence.
    pub fn summary(self) -> &'static str {
        match self {
            Cause::ServerCertUnknownCa => {
                "TLS: the Redis server's certificate is not signed by a trusted CA; set REDIS_TLS_CA_FILE to the CA that signed it"
            }
            Cause::ServerCertExpired => {
                "TLS: the Redis server's certificate has expired or is not valid yet; renew the server's tls-cert-file (and check the clocks)"
            }
            Cause::ServerCertWrongName => {
                "TLS: the Redis server's certificate does not name the host in REDIS_URL; use a host the certificate lists (subjectAltName) or reissue it"
            }
            Cause::ServerCertInvalid => {
                "TLS: the Redis server's certificate is not acceptable; check it with openssl x509 -text"
            }
            Cause::ClientCertRequired => {
                "TLS: the Redis server requires a client certificate; set REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE"
            }
            Cause::ClientCertRejected => {
                "TLS: the Redis server refused the client certificate (REDIS_TLS_CERT_FILE); it must be signed by the server's tls-ca-cert-file and be valid now"
            }
            Cause::TlsHandshake => {
                "TLS handshake failed; check that REDIS_URL's port speaks TLS (rediss://) or plain text (redis://) as its scheme says"
            }
            Cause::AuthFailed => {
                "Redis refused the user name or password; check the user in REDIS_URL and the password (REDIS_PASSWORD_FILE or REDIS_URL)"
            }
            Cause::AuthRequired => {
                "Redis requires a password (or the user lacks a permission needed at connect); set REDIS_PASSWORD_FILE or check the ACL"
            }
            Cause::Unreachable => {
                "nothing accepts connections at REDIS_URL's host and port; check that Redis runs and the address is right"
            }
            Cause::ConnectionLost => {
                "the connection to Redis was closed or timed out; Redis may be down, restarting or overloaded"
            }
            Cause::Other => "cannot talk to Redis",
        }
    }

    /// Problems that will not go away by waiting (configuration, certificates) log at ERROR,
    /// the rest at WARN.
    fn needs_an_operator(self) -> bool {
        !matches!(
            self,
            Cause::Unreachable | Cause::ConnectionLost | Cause::Other
        )
    }
}

#[derive(Default)]
struct State {
    /// Causes already logged since the last successful connection.
    logged: Vec<Cause>,
    /// The most recent cause, while not connected.
    latest: Option<Cause>,
}

static STATE: Mutex<State> = Mutex::new(State {
    logged: Vec::new(),
    latest: None,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    // A panic while holding this lock cannot leave the state inconsistent (plain fields).
    STATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records a failed connection attempt (or a dropped connection): counts it, and logs it when
/// its cause is new since the last successful connection.
pub fn record_failure(err: &Error, redis_url: &str) {
    let cause = Cause::of(err);
    metrics::counter!("redis_connection_errors_total", "cause" => cause.label()).increment(1);
    let first_time = {
        let mut state = state();
        state.latest = Some(cause);
        if state.logged.contains(&cause) {
            false
        } else {
            state.logged.push(cause);
            true
        }
    };
    if !first_time {
        return;
    }
    let error = err.details();
    if cause.needs_an_operator() {
        tracing::error!(cause = %cause.label(), %redis_url, %error, "{}", cause.summary());
    } else {
        tracing::warn!(cause = %cause.label(), %redis_url, %error, "{}", cause.summary());
    }
}

/// Records a successful connection: the next failure is news again.
pub fn record_connected() {
    let mut state = state();
    state.logged.clear();
    state.latest = None;
}

/// The latest cause while connections fail, for health output.
pub fn latest() -> Option<Cause> {
    state().latest
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::ErrorKind;

    fn cause(kind: ErrorKind, details: &str) -> Cause {
        Cause::of(&Error::new(kind, details.to_string()))
    }

    #[test]
    fn tls_failures_get_their_own_causes() {
        assert_eq!(
            cause(
                ErrorKind::IO,
                "Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }"
            ),
            Cause::ServerCertUnknownCa
        );
        assert_eq!(
            cause(
                ErrorKind::IO,
                "Custom { kind: InvalidData, error: InvalidCertificate(ExpiredContext { time: UnixTime(1), not_after: UnixTime(0) }) }"
            ),
            Cause::ServerCertExpired
        );
        assert_eq!(
            cause(
                ErrorKind::IO,
                "Custom { kind: InvalidData, error: InvalidCertificate(NotValidForNameContext { .. }) }"
            ),
            Cause::ServerCertWrongName
        );
        assert_eq!(
            cause(
                ErrorKind::IO,
                "Custom { kind: InvalidData, error: AlertReceived(CertificateRequired) }"
            ),
            Cause::ClientCertRequired
        );
        assert_eq!(
            cause(
                ErrorKind::IO,
                "Custom { kind: InvalidData, error: AlertReceived(UnknownCA) }"
            ),
            Cause::ClientCertRejected
        );
        assert_eq!(
            cause(
                ErrorKind::IO,
                "Custom { kind: InvalidData, error: InvalidMessage(InvalidContentType) }"
            ),
            Cause::TlsHandshake
        );
    }

    #[test]
    fn other_failures_are_sorted_too() {
        assert_eq!(
            cause(
                ErrorKind::Auth,
                "WRONGPASS invalid username-password pair or user is disabled."
            ),
            Cause::AuthFailed
        );
        assert_eq!(
            cause(ErrorKind::Auth, "NOAUTH Authentication required."),
            Cause::AuthRequired
        );
        assert_eq!(
            cause(
                ErrorKind::IO,
                "Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" }"
            ),
            Cause::Unreachable
        );
        assert_eq!(
            cause(ErrorKind::Timeout, "Connection timed out."),
            Cause::ConnectionLost
        );
        assert_eq!(cause(ErrorKind::Unknown, "strange"), Cause::Other);
    }

    #[test]
    fn labels_are_unique() {
        let mut labels: Vec<_> = Cause::ALL.iter().map(|c| c.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Cause::ALL.len());
    }
}
