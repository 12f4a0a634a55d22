//! The secret that unlocks the proxy's mutating admin endpoints (ADMIN_TOKEN / ADMIN_TOKEN_FILE).
//!
//! The token never appears in logs, error messages or `Debug` output, and it is compared in
//! constant time, so neither a log reader nor a timing attacker learns it.

use std::ffi::OsStr;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

/// Shortest accepted token: a guessable token would make the bearer check decorative.
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin bearer token. Cheap to clone; `Debug` prints `AdminToken(***)`.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Arc<str>);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl AdminToken {
    /// Checks `text` (surrounding whitespace, e.g. a file's final newline, is dropped): at least
    /// [`MIN_TOKEN_LEN`] visible ASCII characters, since it must fit an `Authorization` header.
    /// The error never contains the text.
    pub fn new(text: &str) -> Result<Self, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err("is empty".into());
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "is shorter than {MIN_TOKEN_LEN} characters; use a random one, e.g. `openssl rand -hex 32`"
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "may contain only visible ASCII characters (no spaces); e.g. `openssl rand -hex 32`"
                    .into(),
            );
        }
        Ok(AdminToken(token.into()))
    }

    /// Reads the token from a file (a mounted Secret), so it need not sit in the environment.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read `{}` ({err})", path.display()))?;
        AdminToken::new(&text).map_err(|problem| format!("`{}` {problem}", path.display()))
    }

    /// Whether `presented` is this token, in time that depends only on the lengths.
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), presented)
    }
}

/// Equality of two byte strings whose running time does not depend on where they differ (only
/// on their lengths; the token's length is not the secret). `black_box` keeps the optimizer
/// from turning the fold back into an early-exit comparison.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(difference) == 0
}

/// clap value parser for the two token settings. Unlike a plain function parser, whose error
/// clap prints as "invalid value '<the value>'", its errors never echo the secret.
#[derive(Debug, Clone, Copy)]
pub enum TokenSetting {
    /// The value is the token itself (ADMIN_TOKEN).
    Inline,
    /// The value is a path to a file holding the token (ADMIN_TOKEN_FILE).
    File,
}

impl TypedValueParser for TokenSetting {
    type Value = AdminToken;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<AdminToken, clap::Error> {
        let (fallback, parsed) = match self {
            TokenSetting::Inline => (
                "ADMIN_TOKEN",
                value
                    .to_str()
                    .ok_or_else(|| "is not valid UTF-8".to_string())
                    .and_then(AdminToken::new),
            ),
            TokenSetting::File => ("ADMIN_TOKEN_FILE", AdminToken::from_file(Path::new(value))),
        };
        parsed.map_err(|problem| {
            let setting = arg
                .and_then(|arg| arg.get_env())
                .map(|env| env.to_string_lossy().into_owned())
                .unwrap_or_else(|| fallback.to_string());
            clap::Error::raw(ErrorKind::InvalidValue, format!("{setting}: {problem}\n"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let token = AdminToken::new("  0123456789abcdef\n").expect("16 characters"); // invariant: test code; a failure here is the test failing
        assert!(token.matches(b"0123456789abcdef"));
        assert!(!token.matches(b"0123456789abcdeF"));
        assert!(!token.matches(b"0123456789abcde"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "AdminToken(***)");
        assert!(AdminToken::new("").is_err());
        assert!(AdminToken::new("short").is_err());
        let err = AdminToken::new("with a space inside it").err();
        assert!(err.is_some_and(|e| !e.contains("space inside")));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn token_files_are_read_and_a_missing_or_empty_one_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir"); // invariant: test code; a failure here is the test failing
        let path = dir.path().join("token");
        std::fs::write(&path, "fedcba9876543210fedcba\n").expect("write"); // invariant: test code; a failure here is the test failing
        let token = AdminToken::from_file(&path).expect("readable"); // invariant: test code; a failure here is the test failing
        assert!(token.matches(b"fedcba9876543210fedcba"));
        std::fs::write(&path, "\n").expect("write"); // invariant: test code; a failure here is the test failing
        assert!(AdminToken::from_file(&path).is_err_and(|e| e.contains("empty")));
        assert!(
            AdminToken::from_file(&dir.path().join("missing"))
                .is_err_and(|e| e.contains("cannot read"))
        );
    }
}
