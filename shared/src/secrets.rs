//! Secrets: read from files (so they are neither in the environment nor in the process list),
//! kept out of `Debug` output, and cut out of URLs before a URL is printed anywhere.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// Largest secret file read. A password is tens of bytes; the bound keeps a wrong path (a
/// directory, `/dev/zero`, a log file) from filling memory or hanging the start.
const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// A secret value whose `Debug` and `Display` print `***`, so a `{:?}` of a settings struct
/// cannot leak it into a log. Use [`Secret::expose`] only where the value is handed to Redis.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that sends it (AUTH/HELLO).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Reads a secret from `path`: the whole file, less one trailing newline (`echo pw > file`
/// and Kubernetes Secrets made from literals both work).
///
/// Fails, with a message that never contains the secret, when the file cannot be read, is
/// empty, is larger than 4 KiB, or has more than one line (likely a wrong file, e.g. a
/// `.env` file).
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "{} is larger than {MAX_SECRET_FILE_BYTES} bytes; expected a file holding only the password",
            path.display()
        ));
    }
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let value = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if value.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if value.contains(['\n', '\r']) {
        return Err(format!(
            "{} has more than one line; expected a file holding only the password",
            path.display()
        ));
    }
    Ok(Secret::new(value))
}

/// The URL with its password (and any `…password=` query value) replaced by `***`, for logs,
/// health output and error messages. The user name, host, port and database stay visible
/// because they are what an operator needs to tell which Redis is meant.
///
/// A string that does not parse as a URL is not shown at all beyond its scheme: a malformed
/// URL may hold the password anywhere.
pub fn redact_url(url: &str) -> String {
    // `user:pw@host` parses as scheme `user` with an opaque path: only URLs with an authority
    // part (`scheme://…`) are trusted to have put the password where `password()` finds it.
    let parsed = url::Url::parse(url).ok().filter(|u| !u.cannot_be_a_base());
    let Some(mut parsed) = parsed else {
        return match url.split_once("://") {
            Some((scheme, _)) if is_plain_scheme(scheme) => format!("{scheme}://<not shown>"),
            _ => "<not shown>".to_string(),
        };
    };
    if parsed.password().is_some() {
        // Cannot fail for URLs with a host, which are the only ones that carry a password.
        let _ = parsed.set_password(Some("***"));
    }
    let query: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(key, value)| {
            let hidden = key.to_ascii_lowercase().contains("password");
            let value = if hidden {
                "***".into()
            } else {
                value.into_owned()
            };
            (key.into_owned(), value)
        })
        .collect();
    if !query.is_empty() {
        parsed.query_pairs_mut().clear().extend_pairs(query);
    }
    parsed.set_fragment(None);
    parsed.to_string()
}

fn is_plain_scheme(scheme: &str) -> bool {
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_cut_out_of_urls() {
        assert_eq!(
            redact_url("redis://ingress:s3cret@redis:6379/0"),
            "redis://ingress:***@redis:6379/0"
        );
        assert_eq!(
            redact_url("rediss://:s3cret@10.0.0.1:6380"),
            "rediss://:***@10.0.0.1:6380"
        );
        let sentinel = redact_url(
            "redis-sentinel://app:s3cret@s0:26379/0?sentinelServiceName=m&sentinelPassword=top%40secret&node=s1:26379",
        );
        assert!(
            !sentinel.contains("s3cret") && !sentinel.contains("top"),
            "{sentinel}"
        );
        assert!(sentinel.contains("sentinelServiceName=m"), "{sentinel}");
        assert!(sentinel.contains("node=s1"), "{sentinel}");
    }

    #[test]
    fn urls_without_a_password_are_unchanged() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("rediss://ingress@redis:6379"),
            "rediss://ingress@redis:6379"
        );
    }

    #[test]
    fn malformed_urls_show_nothing_that_could_be_a_password() {
        assert_eq!(redact_url("redis://u:s3cret@[host"), "redis://<not shown>");
        assert_eq!(redact_url("redis://u:s3 cret@host"), "redis://u:***@host");
        assert_eq!(redact_url("user:s3cret@host"), "<not shown>");
        assert!(!redact_url("redis://u:12#s3cret@host").contains("s3cret"));
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let secret = Secret::new("s3cret");
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
        assert_eq!(secret.expose(), "s3cret");
    }

    #[test]
    fn secret_files_lose_one_trailing_newline_and_reject_the_unlikely() {
        let dir = tempfile::tempdir().expect("temp dir"); // invariant: test code; a failure here is the test failing
        let write = |name: &str, content: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).expect("write"); // invariant: test code; a failure here is the test failing
            path
        };
        let read = |path: &Path| read_secret_file(path).map(|s| s.expose().to_string());
        assert_eq!(read(&write("a", b"pw\n")), Ok("pw".into()));
        assert_eq!(read(&write("b", b"pw\r\n")), Ok("pw".into()));
        assert_eq!(read(&write("c", b" pw ")), Ok(" pw ".into()));
        assert!(read(&write("d", b"")).is_err());
        assert!(read(&write("e", b"\n")).is_err());
        assert!(read(&write("f", b"A=1\nB=2\n")).is_err());
        assert!(read(&write("g", &[b'x'; 5000])).is_err());
        assert!(read(&dir.path().join("missing")).is_err());
        assert!(read(dir.path()).is_err());
        let err = read(&write("h", b"one\ntwo-s3cret\n")).unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
