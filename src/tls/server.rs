//! TLS on Herald's own listeners (the API's, and `metrics.listen`'s): a
//! certificate chain and its private key read from PEM files, and read
//! again on demand (SIGHUP) so that a renewed certificate is served
//! without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::{self, PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use tokio_rustls::TlsAcceptor;
use x509_cert::der::Decode;

use super::{TlsError, crypto, read_certificates, read_file};

/// The one protocol ALPN offers: Herald's server speaks HTTP/1.1 only.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The TLS side of the listeners: TLS 1.2 and 1.3, ALPN `http/1.1`, and
/// the certificate in use, which [`ListenerTls::reload`] replaces.
pub struct ListenerTls {
    acceptor: TlsAcceptor,
    certificate: Arc<Certificate>,
}

/// The pair in use, and the files it comes from. rustls asks it for the
/// pair at each handshake, so a replaced pair serves every connection
/// opened after it, while open ones keep the one they started with.
#[derive(Debug)]
struct Certificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ListenerTls {
    /// Reads the pair; an unreadable or unparsable file, or a key that is
    /// not the certificate's, is an error naming the file.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let provider = crypto();
        let pair = read_pair(cert_file, key_file, &provider)?;
        let certificate = Arc::new(Certificate {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            provider: Arc::clone(&provider),
            current: RwLock::new(Arc::new(pair)),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certificate) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
        })
    }

    /// Runs the handshake on a connection taken by a listener.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    pub fn cert_file(&self) -> &Path {
        &self.certificate.cert_file
    }

    /// When the certificate served now stops being valid; `None` when its
    /// leaf does not parse as X.509 (rustls serves it as given).
    pub fn not_after(&self) -> Option<SystemTime> {
        let served = self.certificate.served();
        let leaf = x509_cert::Certificate::from_der(served.cert.first()?).ok()?;
        Some(leaf.tbs_certificate.validity.not_after.to_system_time())
    }

    /// Reads the files again and serves the new pair to connections opened
    /// from now on. A pair that does not load is refused: the one in use
    /// stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let c = &self.certificate;
        let pair = read_pair(&c.cert_file, &c.key_file, &c.provider)?;
        *c.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
        Ok(())
    }
}

impl Certificate {
    /// The pair handshakes get now.
    fn served(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.served())
    }
}

fn read_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    // Leaf first, as a chain is written.
    let chain = read_certificates(cert_file, "certificate")?;
    let key = provider
        .key_provider
        .load_private_key(read_key(key_file)?)
        .map_err(|source| TlsError::BadKey {
            path: key_file.to_owned(),
            source: Box::new(source),
        })?;
    let pair = CertifiedKey::new(chain, key);
    match pair.keys_match() {
        // Unknown: the key cannot tell its public half; the handshake's
        // signature is then what proves the pair.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(pair),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
        }),
        Err(source) => Err(TlsError::BadServerCertificate {
            path: cert_file.to_owned(),
            source: Box::new(source),
        }),
    }
}

/// The file's first private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path, "key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        _ => TlsError::BadKeyPem {
            path: path.to_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::chain;

    /// A self-signed certificate for `localhost` and its key, as PEM.
    fn pair() -> (String, String) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (made.cert.pem(), made.signing_key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Writes a fresh pair as `cert.pem` and `key.pem` in `dir`, over any
    /// there; their paths.
    fn write_pair(dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = pair();
        (write(dir, "cert.pem", &cert), write(dir, "key.pem", &key))
    }

    #[test]
    fn a_pair_loads_and_offers_http1_only() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = write_pair(dir.path());
        let tls = ListenerTls::load(&cert_file, &key_file).unwrap();
        assert_eq!(
            tls.acceptor().config().alpn_protocols,
            [b"http/1.1".to_vec()]
        );
        assert_eq!(tls.certificate.served().cert.len(), 1);
        // A certificate file that also holds the key is read the same.
        let text = |path| std::fs::read_to_string(path).unwrap();
        let both = write(
            dir.path(),
            "both.pem",
            &format!("{}{}", text(&key_file), text(&cert_file)),
        );
        ListenerTls::load(&both, &both).unwrap();
    }

    #[test]
    fn the_served_certificates_expiry_is_read_and_follows_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let ending = |year| {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params.not_after = rcgen::date_time_ymd(year, 3, 1);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            write(dir.path(), "cert.pem", &cert.pem());
            write(dir.path(), "key.pem", &key.serialize_pem());
        };
        let at = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        ending(2030);
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let tls = ListenerTls::load(&cert_file, &key_file).unwrap();
        // 2030-03-01T00:00:00Z
        assert_eq!(tls.not_after(), Some(at(1_898_553_600)));
        ending(2031);
        tls.reload().unwrap();
        assert_eq!(tls.not_after(), Some(at(1_930_089_600)));
    }

    #[test]
    fn bad_files_are_refused_naming_the_file_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = write_pair(dir.path());
        let key = std::fs::read_to_string(&key_file).unwrap();
        let (_, other_key) = pair();
        let other_key_file = write(dir.path(), "other-key.pem", &other_key);
        let missing = dir.path().join("missing.pem");
        let no_cert = write(dir.path(), "no-cert.pem", "nothing here\n");
        let broken_key = write(
            dir.path(),
            "broken-key.pem",
            &key.replace("PRIVATE KEY-----\n", "PRIVATE KEY-----\n!!"),
        );

        let cases: [(&Path, &Path, &Path); 5] = [
            (&missing, &key_file, &missing),
            (&no_cert, &key_file, &no_cert),
            (&cert_file, &cert_file, &cert_file),
            (&cert_file, &broken_key, &broken_key),
            (&cert_file, &other_key_file, &other_key_file),
        ];
        for (cert_path, key_path, named) in cases {
            let Err(err) = ListenerTls::load(cert_path, key_path) else {
                panic!("{} and {} loaded", cert_path.display(), key_path.display());
            };
            let text = chain(&err);
            assert!(text.contains(&named.display().to_string()), "{text}");
            let body = |pem: &str| pem.lines().nth(1).unwrap().to_owned();
            assert!(!text.contains(&body(&key)), "{text}");
            assert!(!text.contains(&body(&other_key)), "{text}");
        }
        assert!(matches!(
            ListenerTls::load(&cert_file, &other_key_file),
            Err(TlsError::KeyMismatch { .. })
        ));
        assert!(matches!(
            ListenerTls::load(&cert_file, &cert_file),
            Err(TlsError::NoPrivateKey { .. })
        ));
    }

    #[test]
    fn a_reload_takes_a_good_pair_and_refuses_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = write_pair(dir.path());
        let tls = ListenerTls::load(&cert_file, &key_file).unwrap();
        let first = tls.certificate.served();

        write_pair(dir.path());
        tls.reload().unwrap();
        let second = tls.certificate.served();
        assert_ne!(second.cert, first.cert);

        // A renewal caught half-written: the new certificate, the old key.
        let (cert, _) = pair();
        write(dir.path(), "cert.pem", &cert);
        assert!(matches!(tls.reload(), Err(TlsError::KeyMismatch { .. })));
        assert_eq!(tls.certificate.served().cert, second.cert);
    }
}
