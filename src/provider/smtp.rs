//! `kind = "smtp"`: email through an SMTP server (lettre, rustls).
//!
//! `smtp://host:port` upgrades with STARTTLS when the server offers it
//! (`?tls=required` refuses a server that does not, `?tls=none` never
//! tries); `smtps://host:port` is TLS from the first byte. With a username
//! and password TLS is required: plain `smtp://host` means `?tls=required`,
//! and `?tls=none` is refused, unless the host is a loopback address
//! ([`security`]). A server that then offers no STARTTLS (or a network that
//! strips it) fails the connection before AUTH: the password never goes in
//! clear. The message is
//! RFC 5322: From, To (the recipients, also the envelope), Reply-To,
//! Subject, the text body, or `multipart/alternative` with the HTML part.
//!
//! Replies: 2xx delivers (the server's queue reply is the message id);
//! 530/534/535/538 (authentication) are the provider's fault; other 5xx
//! reject the message; 4xx are transient; no reply at all (refused,
//! timed out, TLS failed) is transient and unreachable. A message the
//! server cannot carry (a non-ASCII address, no SMTPUTF8) is rejected; a
//! server that cannot do what the settings ask (STARTTLS, a common AUTH
//! mechanism) is the provider's fault.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::{self as lettre_smtp, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};

use super::{BuildError, Outgoing, Provider, Verdict, email_of};
use crate::config::ProviderCommon;
use crate::domain::{AttemptOutcome, Channel, Email, Message};
use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// `smtp://host:port[?tls=required|none]` or `smtps://host:port`.
    pub url: String,
    /// `Name <address>` or an address.
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// STARTTLS when offered.
    Opportunistic,
    /// STARTTLS or fail.
    Required,
    /// Plain text.
    None,
    /// TLS from the start (smtps).
    Implicit,
}

#[derive(Debug, PartialEq, Eq)]
struct Endpoint {
    host: String,
    port: u16,
    security: Security,
}

impl Endpoint {
    /// A loopback address written as such (`127.0.0.1`, `[::1]`). A name,
    /// even `localhost`, is not: it is resolved when connecting, and Herald
    /// cannot vouch for where it leads.
    fn is_loopback(&self) -> bool {
        super::is_loopback_address(&self.host)
    }
}

/// The protection the connection gets. Credentials are never sent in
/// clear off this machine: with them, plain `smtp://` means STARTTLS
/// required, and `?tls=none` is refused; a loopback address (a relay on
/// this host) keeps what its URL says.
fn security(endpoint: &Endpoint, credentials: bool) -> Result<Security, String> {
    if !credentials || endpoint.is_loopback() {
        return Ok(endpoint.security);
    }
    match endpoint.security {
        Security::Opportunistic | Security::Required => Ok(Security::Required),
        Security::Implicit => Ok(Security::Implicit),
        Security::None => Err(format!(
            "smtp://{}:{}?tls=none would send the username and password in clear; \
             use ?tls=required (STARTTLS) or smtps:// (only a loopback address such as \
             127.0.0.1 may go without TLS)",
            endpoint.host, endpoint.port
        )),
    }
}

fn parse_url(url: &str) -> Result<Endpoint, String> {
    let (rest, implicit) = if let Some(rest) = url.strip_prefix("smtps://") {
        (rest, true)
    } else if let Some(rest) = url.strip_prefix("smtp://") {
        (rest, false)
    } else {
        return Err(format!("{url:?} is not an smtp:// or smtps:// URL"));
    };
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = authority.trim_end_matches('/');
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("{url:?} has an invalid port"))?,
        ),
        None => (authority, if implicit { 465 } else { 25 }),
    };
    if host.is_empty() || host.contains(['/', '@']) {
        return Err(format!("{url:?} has no valid host"));
    }
    let security = match (implicit, query) {
        (true, "") => Security::Implicit,
        (false, "") => Security::Opportunistic,
        (false, "tls=required") => Security::Required,
        (false, "tls=none") => Security::None,
        _ => {
            return Err(format!(
                "{url:?}: the only option is ?tls=required or ?tls=none, on smtp://"
            ));
        }
    };
    Ok(Endpoint {
        host: host.to_owned(),
        port,
        security,
    })
}

pub struct SmtpProvider {
    name: String,
    from: Mailbox,
    timeout: Duration,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl SmtpProvider {
    pub fn new(common: &ProviderCommon, config: &SmtpConfig) -> Result<Self, BuildError> {
        let invalid = |reason: String| BuildError::invalid(common, reason);
        let endpoint = parse_url(&config.url).map_err(invalid)?;
        // It would read as "credentials in clear are fine here": they never are.
        if common.allow_insecure {
            return Err(invalid(
                "allow_insecure does not apply to smtp: with credentials TLS is required \
                 (only a loopback address may go without)"
                    .into(),
            ));
        }
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| invalid(format!("from {:?}: {e}", config.from)))?;
        let mut tls = TlsParameters::builder(endpoint.host.clone());
        if let Some(path) = &common.ca_file {
            tls = tls.certificate_store(CertificateStore::None);
            let certs = crate::tls::read_ca_file(path).map_err(|e| BuildError::Tls {
                name: common.name.clone(),
                source: e,
            })?;
            for der in certs {
                let cert = Certificate::from_der(der.to_vec())
                    .map_err(|e| invalid(format!("ca_file: {e}")))?;
                tls = tls.add_root_certificate(cert);
            }
        }
        let tls = tls
            .build_rustls()
            .map_err(|e| invalid(format!("TLS settings: {e}")))?;
        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(password)) => Some(Credentials::new(
                user.expose().to_owned(),
                password.expose().to_owned(),
            )),
            (None, None) => None,
            _ => return Err(invalid("username and password go together".into())),
        };
        let security = security(&endpoint, credentials.is_some()).map_err(invalid)?;
        let tls = match security {
            Security::Opportunistic => Tls::Opportunistic(tls),
            Security::Required => Tls::Required(tls),
            Security::None => Tls::None,
            Security::Implicit => Tls::Wrapper(tls),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&endpoint.host)
            .port(endpoint.port)
            .tls(tls)
            .timeout(Some(common.timeout()))
            .pool_config(
                PoolConfig::new().max_size(common.max_in_flight.min(u32::MAX as usize) as u32),
            );
        if let Some(credentials) = credentials {
            builder = builder.credentials(credentials);
        }
        Ok(Self {
            name: common.name.clone(),
            from,
            timeout: common.timeout(),
            transport: builder.build(),
        })
    }

    /// The RFC 5322 message; an address that does not parse is the
    /// message's fault.
    fn render(&self, email: &Email) -> Result<lettre::Message, String> {
        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            // A random Message-ID at this host: RFC 5322 asks for one, and
            // spam filters frown on mail without.
            .message_id(None)
            .subject(email.subject.clone());
        for to in &email.recipients {
            let to: Mailbox = to.parse().map_err(|e| format!("recipient {to:?}: {e}"))?;
            builder = builder.to(to);
        }
        if let Some(reply_to) = &email.reply_to {
            let reply_to: Mailbox = reply_to
                .parse()
                .map_err(|e| format!("reply_to {reply_to:?}: {e}"))?;
            builder = builder.reply_to(reply_to);
        }
        let built = match &email.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                email.body.clone(),
                html.clone(),
            )),
            None => builder.singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(email.body.clone()),
            ),
        };
        built.map_err(|e| e.to_string())
    }
}

#[async_trait]
impl Provider for SmtpProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "smtp"
    }

    fn channel(&self) -> Channel {
        Channel::Email
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn can_send(&self, message: &Message) -> bool {
        matches!(message, Message::Email(_))
    }

    async fn send(&self, outgoing: &Outgoing) -> Verdict {
        let email = match email_of("smtp", outgoing) {
            Ok(email) => email,
            Err(verdict) => return verdict,
        };
        let message = match self.render(email) {
            Ok(message) => message,
            Err(e) => return Verdict::failed(AttemptOutcome::Rejected, None, e),
        };
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(Ok(reply)) => {
                let text = reply.message().collect::<Vec<_>>().join(" ");
                Verdict::delivered(None, (!text.is_empty()).then_some(text))
            }
            Ok(Err(e)) => classify(&e),
            Err(_) => unreachable(format!(
                "the SMTP server did not answer within {:?}",
                self.timeout
            )),
        }
    }
}

/// What an SMTP failure means.
fn classify(e: &lettre_smtp::Error) -> Verdict {
    let text = crate::error::chain(e);
    match e.status().map(u16::from) {
        Some(530 | 534 | 535 | 538) => Verdict::failed(AttemptOutcome::ProviderFault, None, text),
        Some(_) if e.is_permanent() => Verdict::failed(AttemptOutcome::Rejected, None, text),
        Some(_) => Verdict::failed(AttemptOutcome::Transient, None, text),
        // A message this server cannot carry (an address beyond ASCII
        // without SMTPUTF8): the message's failure, not the server's, or
        // crafted recipients would open its breaker.
        None if refuses_the_message(e) => Verdict::failed(AttemptOutcome::Rejected, None, text),
        // Set-up the server cannot do (STARTTLS required but not offered,
        // no common authentication mechanism): the operator's to fix.
        None if e.is_client() => Verdict::failed(AttemptOutcome::ProviderFault, None, text),
        None => unreachable(text),
    }
}

/// lettre's refusals, before any command, of a message the server said it
/// cannot take: non-ASCII addresses without SMTPUTF8, a non-ASCII message
/// without 8BITMIME. lettre's error says which only in its text.
fn refuses_the_message(e: &lettre_smtp::Error) -> bool {
    let text = crate::error::chain(e);
    e.is_client() && (text.contains("SMTPUTF8") || text.contains("8BITMIME"))
}

fn unreachable(error: String) -> Verdict {
    Verdict {
        unreachable: true,
        ..Verdict::failed(AttemptOutcome::Transient, None, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_need_tls_off_loopback() {
        use Security::*;
        let at = |url: &str, credentials: bool| security(&parse_url(url).unwrap(), credentials);
        // Without credentials, what the URL says.
        assert_eq!(at("smtp://mail.example.com", false), Ok(Opportunistic));
        assert_eq!(at("smtp://mail.example.com?tls=none", false), Ok(None));
        // With them, TLS or nothing: the default is STARTTLS required.
        assert_eq!(at("smtp://mail.example.com:587", true), Ok(Required));
        assert_eq!(at("smtp://localhost:587", true), Ok(Required));
        assert_eq!(at("smtp://10.0.0.5?tls=required", true), Ok(Required));
        assert_eq!(at("smtps://mail.example.com", true), Ok(Implicit));
        let refused = at("smtp://mail.example.com:587?tls=none", true).unwrap_err();
        assert!(refused.contains("in clear"), "{refused}");
        assert!(refused.contains("?tls=required"), "{refused}");
        // A relay on this machine, by address, may go without.
        assert_eq!(at("smtp://127.0.0.1:25", true), Ok(Opportunistic));
        assert_eq!(at("smtp://127.0.0.2:25?tls=none", true), Ok(None));
        assert_eq!(at("smtp://[::1]:25?tls=none", true), Ok(None));
    }

    // lettre's pool needs a runtime.
    #[tokio::test]
    async fn credentials_with_tls_none_are_refused_at_start_up() {
        let common = ProviderCommon {
            name: "mail".into(),
            weight: 1,
            timeout_ms: 1000,
            max_in_flight: 1,
            rate_per_sec: None,
            burst: None,
            ca_file: None,
            allow_insecure: false,
        };
        let config = |url: &str| SmtpConfig {
            url: url.into(),
            from: "noreply@example.com".into(),
            username: Some(Secret::new("user")),
            password: Some(Secret::new("hunter2-secret")),
        };
        let err = SmtpProvider::new(&common, &config("smtp://mail.example.com?tls=none"))
            .err()
            .expect("refused");
        let text = crate::error::chain(&err);
        assert!(text.starts_with("provider mail: "), "{text}");
        assert!(text.contains("in clear"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        for fine in [
            "smtp://mail.example.com",
            "smtps://mail.example.com",
            "smtp://127.0.0.1:2525?tls=none",
        ] {
            assert!(SmtpProvider::new(&common, &config(fine)).is_ok(), "{fine}");
        }
        let insecure = ProviderCommon {
            allow_insecure: true,
            ..common
        };
        let err = SmtpProvider::new(&insecure, &config("smtp://mail.example.com?tls=none"))
            .err()
            .expect("refused");
        assert!(crate::error::chain(&err).contains("allow_insecure does not apply to smtp"));
    }

    #[test]
    fn urls() {
        let e = parse_url("smtp://127.0.0.1:2525").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.security),
            ("127.0.0.1", 2525, Security::Opportunistic)
        );
        assert_eq!(
            parse_url("smtp://mail.example.com?tls=required").unwrap(),
            Endpoint {
                host: "mail.example.com".into(),
                port: 25,
                security: Security::Required
            }
        );
        assert_eq!(
            parse_url("smtp://h:26/?tls=none").unwrap().security,
            Security::None
        );
        let e = parse_url("smtps://smtp.example.com").unwrap();
        assert_eq!((e.port, e.security), (465, Security::Implicit));
        for bad in [
            "http://h",
            "smtp://",
            "smtp://h:x",
            "smtp://h?tls=maybe",
            "smtps://h?tls=none",
            "smtp://u@h",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
