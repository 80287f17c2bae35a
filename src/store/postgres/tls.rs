//! TLS to PostgreSQL, configured the way libpq is: `sslmode` and
//! `sslrootcert` in the URL.
//!
//! - `disable`: never TLS.
//! - `prefer` and `require`: TLS (`prefer` falls back to
//!   plain text when the server has none), without checking the
//!   certificate, as libpq does; `require` with `sslrootcert` checks the
//!   chain like `verify-ca`.
//! - `verify-ca`: the chain must lead to a trusted CA.
//! - `verify-full`: that, and the certificate must name the host.
//!
//! With no `sslmode` in the URL: `prefer` (libpq's default) when every host
//! is on this machine, `verify-full` otherwise ([`default_off_loopback`]).
//!
//! Trusted CAs are the `sslrootcert` PEM file, or the public roots without
//! one. tokio-postgres knows only the first three modes and no
//! `sslrootcert`, so both are taken out of the URL before it parses it.

use std::path::PathBuf;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{self, TlsError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    /// The URL named no `sslmode`: the mode is the default for its hosts.
    pub defaulted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    #[error("sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    BadMode(String),
    #[error("sslrootcert is not valid UTF-8 once decoded")]
    BadRootCert,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("no usable CA to check the server's certificate against")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// Takes `sslmode` and `sslrootcert` out of `url`: the URL tokio-postgres
/// can parse, and what they asked for.
pub fn split_url(url: &str) -> Result<(String, TlsSettings), PgTlsError> {
    let mut settings = TlsSettings {
        mode: SslMode::Prefer,
        root_cert: None,
        defaulted: true,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), settings));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || {
            percent_decode_str(value)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| PgTlsError::BadRootCert)
        };
        match key {
            "sslmode" => {
                settings.defaulted = false;
                settings.mode = match value {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => return Err(PgTlsError::BadMode(other.to_owned())),
                }
            }
            "sslrootcert" => settings.root_cert = Some(PathBuf::from(decoded()?)),
            _ => kept.push(pair),
        }
    }
    kept.push(match settings.mode {
        SslMode::Disable => "sslmode=disable",
        SslMode::Prefer => "sslmode=prefer",
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "sslmode=require",
    });
    Ok((format!("{base}?{}", kept.join("&")), settings))
}

/// With no `sslmode` in the URL: libpq's `prefer` when every host is on
/// this machine (a loopback name or address, or a unix socket), where
/// nothing crosses a network; anywhere else `verify-full`, since `prefer`
/// falls back to plain text and checks no certificate, so anyone on the
/// path could read the traffic or stand in for the database.
pub fn default_off_loopback(config: &mut tokio_postgres::Config, settings: &mut TlsSettings) {
    if settings.defaulted && !on_this_machine(config) {
        settings.mode = SslMode::VerifyFull;
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
}

fn on_this_machine(config: &tokio_postgres::Config) -> bool {
    let local = |host: &tokio_postgres::config::Host| match host {
        tokio_postgres::config::Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    };
    config.get_hosts().iter().all(local) && config.get_hostaddrs().iter().all(|a| a.is_loopback())
}

/// The mode as the start-up line says it.
pub fn describe(settings: &TlsSettings) -> String {
    let mode = match settings.mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    };
    match (settings.defaulted, settings.mode) {
        (false, _) => mode.to_owned(),
        (true, SslMode::VerifyFull) => format!("{mode} (the default off loopback)"),
        (true, _) => format!("{mode} (the default on loopback)"),
    }
}

/// The connector for every connection of the store; a root file that
/// cannot be read fails here, when the store opens.
pub fn connector(settings: &TlsSettings) -> Result<MakeRustlsConnect, PgTlsError> {
    let root_cert = settings.root_cert.as_deref();
    let webpki = || -> Result<Arc<WebPkiServerVerifier>, PgTlsError> {
        let roots = Arc::new(tls::roots(root_cert)?);
        Ok(WebPkiServerVerifier::builder_with_provider(roots, tls::crypto()).build()?)
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (settings.mode, root_cert) {
        (SslMode::VerifyFull, _) => webpki()?,
        (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => Arc::new(ChainOnly(webpki()?)),
        (SslMode::Disable | SslMode::Prefer | SslMode::Require, _) => {
            Arc::new(Unchecked(tls::crypto()))
        }
    };
    let config = ClientConfig::builder_with_provider(tls::crypto())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// `prefer` and `require`: encrypted, the server's identity unchecked (it
/// must still prove it holds the key of the certificate it shows).
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_are_taken_out_of_the_url() {
        let (url, s) = split_url("postgres://u:p@db:5432/h").unwrap();
        assert_eq!(url, "postgres://u:p@db:5432/h");
        assert_eq!(s.mode, SslMode::Prefer);

        let (url, s) = split_url(
            "postgres://u:p@db/h?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20b.pem",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u:p@db/h?application_name=x&sslmode=require"
        );
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert, Some(PathBuf::from("/etc/ca b.pem")));

        let (url, s) = split_url("postgres://u@db/h?sslmode=disable").unwrap();
        assert_eq!(url, "postgres://u@db/h?sslmode=disable");
        assert_eq!(s.mode, SslMode::Disable);
        assert_eq!(
            split_url("postgres://u@db/h?sslmode=verify-ca")
                .unwrap()
                .1
                .mode,
            SslMode::VerifyCa
        );
        assert!(matches!(
            split_url("postgres://u@db/h?sslmode=allow-maybe"),
            Err(PgTlsError::BadMode(_))
        ));
    }

    fn effective(url: &str) -> (SslMode, String, tokio_postgres::config::SslMode) {
        let (url, mut settings) = split_url(url).unwrap();
        let mut config: tokio_postgres::Config = url.parse().unwrap();
        default_off_loopback(&mut config, &mut settings);
        (settings.mode, describe(&settings), config.get_ssl_mode())
    }

    #[test]
    fn off_loopback_the_default_is_verify_full() {
        use tokio_postgres::config::SslMode as Wire;
        for remote in [
            "postgres://u:p@db.internal:5432/h",
            "postgres://u@10.0.0.5/h?application_name=x",
            "postgres://u@127.0.0.1,db.internal/h",
            "postgres://u@localhost/h?hostaddr=10.0.0.5",
        ] {
            assert_eq!(
                effective(remote),
                (
                    SslMode::VerifyFull,
                    "verify-full (the default off loopback)".into(),
                    Wire::Require
                ),
                "{remote}"
            );
        }
        for local in [
            "postgres://u:p@127.0.0.1:5432/h",
            "postgres://u@localhost/h",
            "postgres://u@[::1]:5432/h",
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/h",
            "postgres:///h",
        ] {
            assert_eq!(
                effective(local),
                (
                    SslMode::Prefer,
                    "prefer (the default on loopback)".into(),
                    Wire::Prefer
                ),
                "{local}"
            );
        }
        // An explicit sslmode is kept, wherever the host is.
        assert_eq!(
            effective("postgres://u@db.internal/h?sslmode=prefer"),
            (SslMode::Prefer, "prefer".into(), Wire::Prefer)
        );
        assert_eq!(
            effective("postgres://u@db.internal/h?sslmode=disable").0,
            SslMode::Disable
        );
    }

    #[test]
    fn a_root_file_that_cannot_be_read_is_refused() {
        let settings = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some(PathBuf::from("/nonexistent/root.crt")),
            defaulted: false,
        };
        assert!(matches!(
            connector(&settings),
            Err(PgTlsError::Tls(TlsError::ReadFile { .. }))
        ));
    }
}
