//! TLS for every connection Herald makes (HTTPS providers, SMTP, PostgreSQL)
//! and, with [`ListenerTls`], for the connections it takes: rustls with the
//! `ring` provider, no OpenSSL.
//!
//! Trust anchors are the public web roots compiled in from `webpki-roots`,
//! unless a CA file (PEM) is given: then exactly the certificates in that
//! file, as PostgreSQL's `sslrootcert` does. Compiled-in roots behave the
//! same in every container image, with or without a `ca-certificates`
//! package, and are the ones lettre uses for SMTP too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

mod server;

pub use server::ListenerTls;

/// Errors about a file name it by `what` it holds (`CA`, `certificate`,
/// `key`) and its path.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not read the {what} file {path}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} file {path} is not valid PEM")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the {what} file {path} holds no certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the CA file {path} holds a certificate that cannot be a trust anchor")]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS settings refused")]
    Config(#[source] rustls::Error),
    // Boxed, as is BadKey's: rustls's errors are large, and this type is
    // carried inside other layers' errors.
    #[error("the certificate file {path} holds a certificate that cannot be parsed")]
    BadServerCertificate {
        path: PathBuf,
        #[source]
        source: Box<rustls::Error>,
    },
    // No source: a PEM parser's message may quote the file, and this one
    // holds a secret.
    #[error("the key file {path} is not valid PEM")]
    BadKeyPem { path: PathBuf },
    #[error("the key file {path} holds no private key (PEM: PKCS#8, RSA or SEC1)")]
    NoPrivateKey { path: PathBuf },
    #[error("the key file {path} holds a key that cannot be used")]
    BadKey {
        path: PathBuf,
        #[source]
        source: Box<rustls::Error>,
    },
    #[error("the key file {key_file} does not match the certificate in {cert_file}")]
    KeyMismatch {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

/// The one crypto provider: ring (aws-lc-rs would need cmake and a C
/// toolchain's worth of build time).
pub fn crypto() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file, in order; at least one.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    read_certificates(path, "CA")
}

/// The certificates of the PEM file holding `what`, in order; at least
/// one. Other sections (a key kept in the same file) are passed over.
fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadPem {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The public roots, or the CA file's certificates instead.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let Some(path) = ca_file else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let mut store = RootCertStore::empty();
    for cert in read_ca_file(path)? {
        store.add(cert).map_err(|source| TlsError::BadCertificate {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(store)
}

/// A client that checks the server's chain against [`roots`] and its name
/// against the host it was asked for.
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots(ca_file)?)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_roots_by_default() {
        assert!(roots(None).unwrap().len() > 50);
        client_config(None).unwrap();
    }

    #[test]
    fn a_ca_file_replaces_the_public_roots() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert.pem()).unwrap();
        assert_eq!(roots(Some(&path)).unwrap().len(), 1);
        client_config(Some(&path)).unwrap();
    }

    #[test]
    fn unreadable_or_empty_ca_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = client_config(Some(&missing)).unwrap_err();
        assert!(matches!(err, TlsError::ReadFile { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.pem"));

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        assert!(matches!(
            client_config(Some(&empty)),
            Err(TlsError::NoCertificate { .. })
        ));

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(matches!(
            client_config(Some(&broken)),
            Err(TlsError::BadPem { .. })
        ));
    }
}
