//! Providers: the external services that actually send a message. Each kind
//! renders the channel-neutral notification into its own wire format and
//! classifies its own answers into one [`Verdict`] that the round, the
//! router and the breaker understand.
//!
//! A new kind is one file here that holds its settings and implements
//! [`Provider`], plus its variant in [`ProviderKind`] and its arm in
//! [`build`] (docs/providers.md walks through it).

pub mod contract;
pub mod mailgun;
pub mod outside;
pub mod resolve;
pub mod sendgrid;
pub mod smtp;
mod transport;
pub mod twilio;
pub mod vonage;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hyper::http::uri::Uri;

use crate::config::{ProviderCommon, ProviderConfig, ProviderKind};
use crate::domain::validation::to_e164;
use crate::domain::{AttemptOutcome, Channel, Email, Message, NotificationId, Sms};

pub use contract::{ContractProvider, classify_contract};
pub use transport::{HttpAnswer, HttpTransport, TransportError, parse_retry_after};

use crate::error::BoxError;

/// A provider's settings that cannot work, found at start-up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Url(#[from] TransportError),
    #[error("provider {name}: a {kind} provider cannot send {channel}")]
    WrongChannel {
        name: String,
        kind: &'static str,
        channel: Channel,
    },
    #[error("provider {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("provider {name}: cannot set up TLS")]
    Tls {
        name: String,
        #[source]
        source: crate::tls::TlsError,
    },
}

impl BuildError {
    pub(crate) fn invalid(common: &ProviderCommon, reason: impl Into<String>) -> Self {
        Self::Invalid {
            name: common.name.clone(),
            reason: reason.into(),
        }
    }
}

/// Builds the provider a config describes, for `channel`: the one place that
/// knows every kind, as `store::open` is for stores.
pub fn build(config: &ProviderConfig, channel: Channel) -> Result<Arc<dyn Provider>, BuildError> {
    let common = &config.common;
    let kind = config.kind.name();
    let only = |wanted: Channel| {
        if channel == wanted {
            Ok(())
        } else {
            Err(BuildError::WrongChannel {
                name: common.name.clone(),
                kind,
                channel,
            })
        }
    };
    Ok(match &config.kind {
        ProviderKind::Contract(c) => Arc::new(ContractProvider::new(common, c, channel)?),
        ProviderKind::Twilio(c) => {
            only(Channel::Sms)?;
            Arc::new(twilio::Twilio::new(common, c)?)
        }
        ProviderKind::Vonage(c) => {
            only(Channel::Sms)?;
            Arc::new(vonage::Vonage::new(common, c)?)
        }
        ProviderKind::Sendgrid(c) => {
            only(Channel::Email)?;
            Arc::new(sendgrid::Sendgrid::new(common, c)?)
        }
        ProviderKind::Mailgun(c) => {
            only(Channel::Email)?;
            Arc::new(mailgun::Mailgun::new(common, c)?)
        }
        ProviderKind::Smtp(c) => {
            only(Channel::Email)?;
            Arc::new(smtp::SmtpProvider::new(common, c)?)
        }
    })
}

/// Whether `host` is a loopback address written as one (`127.0.0.1`,
/// `[::1]`). A name, even `localhost`, is not: it is resolved at connect
/// time, and Herald cannot vouch for where it leads.
pub(crate) fn is_loopback_address(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// For a kind that sends credentials to `uri`: a plain `http://` URL off
/// loopback would put them on the network in clear. Refused unless the
/// provider sets `allow_insecure = true`, and then warned about at each
/// build (start-up, and a reload that builds it again).
pub(crate) fn credentials_over(common: &ProviderCommon, uri: &Uri) -> Result<(), BuildError> {
    let plain = uri.scheme() == Some(&hyper::http::uri::Scheme::HTTP);
    if !plain || uri.host().is_some_and(is_loopback_address) {
        return Ok(());
    }
    // Host and port only: a user or password in the URL is not shown.
    let origin = match uri.port_u16() {
        Some(port) => format!("http://{}:{port}", uri.host().unwrap_or_default()),
        None => format!("http://{}", uri.host().unwrap_or_default()),
    };
    if !common.allow_insecure {
        return Err(BuildError::invalid(
            common,
            format!(
                "{origin} is plain HTTP off this machine: its credentials would cross the network in clear; \
                 use https://, or set allow_insecure = true on this provider to accept that"
            ),
        ));
    }
    tracing::warn!(
        provider = %common.name,
        url = %origin,
        "allow_insecure: this provider's credentials are sent over plain HTTP, in clear"
    );
    Ok(())
}

/// The HTTP client of one provider, sized by its settings; fails when its
/// `ca_file` cannot be read.
fn http_transport(common: &ProviderCommon) -> Result<HttpTransport, TransportError> {
    HttpTransport::new(
        &common.name,
        common.timeout(),
        common.max_in_flight,
        common.ca_file.as_deref(),
    )
}

/// One notification, as a provider is asked to send it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: NotificationId,
    pub message: Message,
    /// The JSON stored at accept time, for kinds that can send it as is.
    pub payload: Bytes,
}

/// A request that got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    #[error("could not connect to the provider")]
    Connect(#[source] BoxError),
    /// The request may or may not have reached the provider.
    #[error("the provider did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke mid-request; the request may have been sent.
    #[error("the request to the provider failed")]
    Transport(#[source] BoxError),
}

/// Something that can send notifications of one channel.
#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &str;
    /// The kind, as named in the config (`contract`, `twilio`, …).
    fn kind(&self) -> &'static str;
    fn channel(&self) -> Channel;
    /// How long one send may take; a lease must outlast it.
    fn timeout(&self) -> Duration;
    /// Whether this provider can carry `message` at all (the contract's
    /// providers take only Bangladeshi numbers, say). The router never
    /// offers it a message it cannot carry.
    fn can_send(&self, message: &Message) -> bool {
        let _ = message;
        true
    }
    /// Sends once and says what the answer means. Never retries by itself:
    /// retries and failover are the round's.
    async fn send(&self, outgoing: &Outgoing) -> Verdict;
}

/// What an attempt's result means for the notification and for the
/// provider's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: AttemptOutcome,
    pub http_status: Option<u16>,
    /// The provider's id for the message it accepted.
    pub provider_message_id: Option<String>,
    /// True when the provider did not answer at all: a strong sign it is down.
    pub unreachable: bool,
    /// How long the provider asked us to hold off.
    pub pause: Option<Duration>,
    pub error: Option<String>,
    /// How many parts the provider split the message into (a long SMS);
    /// each part gets a receipt of its own. 1 unless the provider says.
    pub parts: u32,
}

impl Verdict {
    pub fn delivered(http_status: Option<u16>, provider_message_id: Option<String>) -> Self {
        Self {
            outcome: AttemptOutcome::Delivered,
            http_status,
            // The provider's text: where it enters, made fit to store.
            provider_message_id: provider_message_id.as_deref().map(outside::storable),
            unreachable: false,
            pause: None,
            error: None,
            parts: 1,
        }
    }

    /// Any outcome but delivered, with the reason kept for the history:
    /// every error of every kind passes here, where it is made fit to
    /// store and to send in a webhook payload ([`outside::error_text`]).
    pub fn failed(outcome: AttemptOutcome, http_status: Option<u16>, error: String) -> Self {
        debug_assert_ne!(outcome, AttemptOutcome::Delivered);
        Self {
            outcome,
            http_status,
            provider_message_id: None,
            unreachable: false,
            pause: None,
            error: Some(outside::error_text(&error)),
            parts: 1,
        }
    }

    /// Held off for `pause` (a 429's `Retry-After`, a rate-limit reset).
    pub fn throttled(http_status: Option<u16>, pause: Option<Duration>, error: String) -> Self {
        Self {
            pause,
            ..Self::failed(AttemptOutcome::Throttled, http_status, error)
        }
    }

    /// No answer: transient, and a refused connection or a timeout says the
    /// provider is unreachable.
    pub fn no_answer(err: &SendError) -> Self {
        Self {
            unreachable: matches!(err, SendError::Connect(_) | SendError::Timeout(_)),
            ..Self::failed(AttemptOutcome::Transient, None, crate::error::chain(err))
        }
    }
}

/// The message as an SMS with its number in E.164, for the kinds that send
/// to E.164 numbers; anything else is rejected (the router offers such a
/// kind nothing else: `can_send`).
pub(crate) fn e164_sms<'a>(
    kind: &str,
    outgoing: &'a Outgoing,
) -> Result<(&'a Sms, String), Verdict> {
    let Message::Sms(sms) = &outgoing.message else {
        return Err(wrong_message(format!("{kind} sends SMS only")));
    };
    let to = to_e164(&sms.phone)
        .ok_or_else(|| wrong_message(format!("not a number {kind} can send to")))?;
    Ok((sms, to))
}

/// The message as an email, for the email kinds.
pub(crate) fn email_of<'a>(kind: &str, outgoing: &'a Outgoing) -> Result<&'a Email, Verdict> {
    match &outgoing.message {
        Message::Email(email) => Ok(email),
        Message::Sms(_) => Err(wrong_message(format!("{kind} sends email only"))),
    }
}

fn wrong_message(error: String) -> Verdict {
    Verdict::failed(AttemptOutcome::Rejected, None, error)
}

/// "HTTP 400: <start of the body>", for the history.
pub fn http_error(status: u16, excerpt: &str) -> String {
    if excerpt.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {excerpt}")
    }
}
