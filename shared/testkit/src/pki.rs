//! Certificates for TLS tests, made fresh per test with the `openssl` command-line tool.
//!
//! `openssl ca` (not `x509 -req`) signs, because it is the only OpenSSL 3.0 command that sets
//! both validity dates, which an expired certificate needs. Keys are P-256 (fast to generate;
//! both redis-server's OpenSSL and rustls accept them). Certificates carry subjectAltNames,
//! because rustls ignores the common name.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A throw-away PKI in a temporary directory: a CA, a server certificate for 127.0.0.1 and
/// localhost (plus an expired twin), a client certificate, and an unrelated second CA.
pub struct TestPki {
    dir: tempfile::TempDir,
}

const CA_CONFIG: &str = "\
[ca]
default_ca = test_ca
[test_ca]
database = index.txt
new_certs_dir = issued
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
serial = serial
[any]
commonName = supplied
";

const SERVER_EXTENSIONS: &str = "\
subjectAltName = DNS:localhost, IP:127.0.0.1
extendedKeyUsage = serverAuth
basicConstraints = CA:FALSE
keyUsage = digitalSignature
";

const CLIENT_EXTENSIONS: &str = "\
extendedKeyUsage = clientAuth
basicConstraints = CA:FALSE
keyUsage = digitalSignature
";

/// Valid from 2020 to 2099: "valid now" however the test machine's clock is set.
const VALID: (&str, &str) = ("20200101000000Z", "20991231000000Z");
/// Expired at the start of 2021.
const EXPIRED: (&str, &str) = ("20200101000000Z", "20210101000000Z");

impl TestPki {
    /// Generates every file. Panics, showing openssl's output, if openssl fails or is missing.
    pub fn generate() -> Self {
        let pki = TestPki {
            dir: tempfile::tempdir().expect("temp dir for certificates"),
        };
        let dir = pki.dir.path();
        std::fs::create_dir(dir.join("issued")).expect("create issued/");
        std::fs::write(dir.join("index.txt"), "").expect("write index.txt");
        std::fs::write(dir.join("serial"), "1000\n").expect("write serial");
        std::fs::write(dir.join("ca.cnf"), CA_CONFIG).expect("write ca.cnf");
        std::fs::write(dir.join("server.ext"), SERVER_EXTENSIONS).expect("write server.ext");
        std::fs::write(dir.join("client.ext"), CLIENT_EXTENSIONS).expect("write client.ext");

        for ca in ["ca", "other-ca"] {
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-nodes",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-days",
                    "3650",
                    "-subj",
                    &format!("/CN=broker-test-{ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.crt"),
                ],
            );
        }
        request(dir, "server", "localhost");
        sign(dir, "server", "server.crt", "server.ext", VALID);
        sign(dir, "server", "expired-server.crt", "server.ext", EXPIRED);
        request(dir, "client", "broker-test-client");
        sign(dir, "client", "client.crt", "client.ext", VALID);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA that signed every certificate here.
    pub fn ca_cert(&self) -> PathBuf {
        self.path("ca.crt")
    }

    /// A CA that signed nothing here (a "wrong CA").
    pub fn other_ca_cert(&self) -> PathBuf {
        self.path("other-ca.crt")
    }

    /// Server certificate for 127.0.0.1 and localhost, valid now.
    pub fn server_cert(&self) -> PathBuf {
        self.path("server.crt")
    }

    /// The same server key and names, but expired at the start of 2021.
    pub fn expired_server_cert(&self) -> PathBuf {
        self.path("expired-server.crt")
    }

    /// Key of both server certificates.
    pub fn server_key(&self) -> PathBuf {
        self.path("server.key")
    }

    /// Client certificate (clientAuth), valid now.
    pub fn client_cert(&self) -> PathBuf {
        self.path("client.crt")
    }

    /// Key of the client certificate.
    pub fn client_key(&self) -> PathBuf {
        self.path("client.key")
    }

    /// A path in the PKI's directory for a test's own files (e.g. a broken PEM file).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.path(name)
    }
}

/// A key and a certificate signing request for `name` with common name `cn`.
fn request(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
}

/// Signs `<name>.csr` with the CA into `out`, valid from `dates.0` to `dates.1`.
fn sign(dir: &Path, name: &str, out: &str, extensions: &str, dates: (&str, &str)) {
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-notext",
            "-config",
            "ca.cnf",
            "-cert",
            "ca.crt",
            "-keyfile",
            "ca.key",
            "-in",
            &format!("{name}.csr"),
            "-out",
            out,
            "-extfile",
            extensions,
            "-startdate",
            dates.0,
            "-enddate",
            dates.1,
        ],
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}); install it: apt-get install -y openssl")
        });
    assert!(
        output.status.success(),
        "openssl {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
