//! TLS material for Redis connections: a private CA, a client certificate and its key, read
//! from PEM files at start-up, and the rustls client configuration built from them.
//!
//! Everything here goes through the rustls that fred re-exports (feature `enable-rustls-ring`),
//! so TLS and mutual TLS need no dependency of their own. Files are read and checked while the
//! settings are parsed, so a missing or unparseable file stops the service at start with one
//! line naming the setting, instead of surfacing as a handshake failure later.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fred::rustls;
use fred::rustls::pki_types::pem::PemObject;
use fred::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest PEM file read. A CA bundle is tens of KiB (the whole Mozilla store is ~250 KiB); the
/// bound keeps a wrong path from filling memory.
const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// CA certificates (`REDIS_TLS_CA_FILE`): the only roots trusted for the Redis server's
/// certificate, so a private CA needs no change to the system store.
#[derive(Clone)]
pub struct CaCertificates {
    path: PathBuf,
    roots: Arc<rustls::RootCertStore>,
}

impl CaCertificates {
    /// Reads every `CERTIFICATE` block of the PEM file at `path` (a clap value parser).
    pub fn load(path: &str) -> Result<Self, String> {
        let path = PathBuf::from(path);
        let certs = read_certificates(&path)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{} holds an unusable CA certificate: {e}", path.display()))?;
        }
        Ok(CaCertificates {
            path,
            roots: Arc::new(roots),
        })
    }

    /// Where the certificates came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for CaCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaCertificates({})", self.path.display())
    }
}

/// The client certificate chain (`REDIS_TLS_CERT_FILE`) presented to a server that requires
/// one (`tls-auth-clients yes`): the client's certificate first, then any intermediates.
#[derive(Clone)]
pub struct CertificateChain {
    path: PathBuf,
    chain: Arc<Vec<CertificateDer<'static>>>,
}

impl CertificateChain {
    /// Reads every `CERTIFICATE` block of the PEM file at `path` (a clap value parser).
    pub fn load(path: &str) -> Result<Self, String> {
        let path = PathBuf::from(path);
        let chain = read_certificates(&path)?;
        Ok(CertificateChain {
            path,
            chain: Arc::new(chain),
        })
    }
}

impl fmt::Debug for CertificateChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertificateChain({})", self.path.display())
    }
}

/// The private key of the client certificate (`REDIS_TLS_KEY_FILE`). `Debug` shows the path
/// only.
#[derive(Clone)]
pub struct PrivateKey {
    path: PathBuf,
    key: Arc<PrivateKeyDer<'static>>,
}

impl PrivateKey {
    /// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of the PEM file at `path` (a clap
    /// value parser).
    pub fn load(path: &str) -> Result<Self, String> {
        let path = PathBuf::from(path);
        let bytes = read_bounded(&path)?;
        let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
            format!(
                "{} holds no readable PEM private key ({e}); expected a \"BEGIN PRIVATE KEY\" block",
                path.display()
            )
        })?;
        Ok(PrivateKey {
            path,
            key: Arc::new(key),
        })
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({})", self.path.display())
    }
}

/// Builds the rustls client configuration: roots from `ca` (or the system store when `None`,
/// honouring `SSL_CERT_FILE`/`SSL_CERT_DIR`), and the client certificate when `identity` is
/// given.
///
/// The ring provider is named explicitly so this never depends on a process-wide default
/// provider being installed (rustls panics without one when two providers are compiled in).
/// Errors name the setting to fix.
pub fn client_config(
    ca: Option<&CaCertificates>,
    identity: Option<(&CertificateChain, &PrivateKey)>,
) -> Result<rustls::ClientConfig, String> {
    let roots = match ca {
        Some(ca) => ca.roots.as_ref().clone(),
        None => system_roots()?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("cannot set up TLS: {e}"))?
    .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.chain.as_ref().clone(), key.key.clone_key())
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "REDIS_TLS_KEY_FILE ({}) is not the key of the certificate in REDIS_TLS_CERT_FILE ({})",
                    key.path.display(),
                    chain.path.display()
                ),
                other => format!(
                    "REDIS_TLS_CERT_FILE ({}) with REDIS_TLS_KEY_FILE ({}) cannot be used: {other}",
                    chain.path.display(),
                    key.path.display()
                ),
            }),
    }
}

/// The operating system's trust store, for public CAs.
fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = fred::rustls_native_certs::load_native_certs();
    if let Some(err) = found.errors.first() {
        return Err(format!(
            "cannot read the system CA store ({err}); set REDIS_TLS_CA_FILE to the CA that signed the Redis server's certificate"
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
    Ok(roots)
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_bounded(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a readable PEM file ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate; expected \"BEGIN CERTIFICATE\" blocks",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(format!(
            "{} is larger than {MAX_PEM_FILE_BYTES} bytes; expected a PEM file",
            path.display()
        ));
    }
    Ok(bytes)
}
