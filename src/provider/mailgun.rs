//! `kind = "mailgun"`: email through Mailgun's Messages API.
//!
//! `POST {url}/v3/{domain}/messages`, form-encoded `from`, one `to` per
//! recipient, `subject`, `text`, `html`, `h:Reply-To`, and Herald's id as
//! the custom variable `v:herald-id`; HTTP Basic `api:KEY`. A 200 carries
//! the message's `id`. EU domains use `url = "https://api.eu.mailgun.net"`.

use std::time::Duration;

use async_trait::async_trait;
use hyper::header::HeaderValue;
use hyper::http::uri::Uri;
use serde::{Deserialize, Serialize};

use super::sendgrid::parse_mailbox;
use super::transport::{self, HttpAnswer, HttpTransport};
use super::{BuildError, Outgoing, Provider, Verdict, email_of, http_error, http_transport};
use crate::config::ProviderCommon;
use crate::domain::{AttemptOutcome, Channel, Message};
use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailgunConfig {
    /// The API's base URL: the US region's by default; the EU region's is
    /// `https://api.eu.mailgun.net`.
    #[serde(default = "default_url")]
    pub url: String,
    /// The sending domain, as set up at Mailgun.
    pub domain: String,
    pub api_key: Secret,
    /// `Name <address>` or a bare address, at that domain.
    pub from: String,
}

fn default_url() -> String {
    "https://api.mailgun.net".into()
}

pub struct Mailgun {
    name: String,
    uri: Uri,
    auth: HeaderValue,
    from: String,
    transport: HttpTransport,
}

impl Mailgun {
    pub fn new(common: &ProviderCommon, config: &MailgunConfig) -> Result<Self, BuildError> {
        let domain = &config.domain;
        let domain_ok = !domain.is_empty()
            && domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !domain_ok {
            return Err(BuildError::invalid(common, "domain must be a domain name"));
        }
        if parse_mailbox(&config.from).is_none() {
            return Err(BuildError::invalid(
                common,
                "from must be `Name <address>` or an address",
            ));
        }
        let uri =
            HttpTransport::endpoint(&common.name, &config.url, &format!("/v3/{domain}/messages"))?;
        super::credentials_over(common, &uri)?;
        Ok(Self {
            name: common.name.clone(),
            uri,
            auth: transport::basic_auth("api", config.api_key.expose()),
            from: config.from.trim().to_owned(),
            transport: http_transport(common)?,
        })
    }
}

#[async_trait]
impl Provider for Mailgun {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "mailgun"
    }

    fn channel(&self) -> Channel {
        Channel::Email
    }

    fn timeout(&self) -> Duration {
        self.transport.timeout()
    }

    fn can_send(&self, message: &Message) -> bool {
        matches!(message, Message::Email(_))
    }

    async fn send(&self, outgoing: &Outgoing) -> Verdict {
        let email = match email_of("mailgun", outgoing) {
            Ok(email) => email,
            Err(verdict) => return verdict,
        };
        let id = outgoing.id.to_string();
        let mut pairs = vec![("from", self.from.as_str())];
        pairs.extend(email.recipients.iter().map(|r| ("to", r.as_str())));
        pairs.push(("subject", email.subject.as_str()));
        pairs.push(("text", email.body.as_str()));
        if let Some(html) = &email.html {
            pairs.push(("html", html.as_str()));
        }
        if let Some(reply_to) = &email.reply_to {
            pairs.push(("h:Reply-To", reply_to.as_str()));
        }
        pairs.push(("v:herald-id", id.as_str()));
        let mut request = transport::post(&self.uri, transport::FORM, transport::form(pairs));
        transport::authorize(&mut request, self.auth.clone());
        match self.transport.exchange(request).await {
            Ok(answer) => classify(&answer),
            Err(err) => Verdict::no_answer(&err),
        }
    }
}

#[derive(Deserialize)]
struct Queued {
    id: Option<String>,
}

fn classify(answer: &HttpAnswer) -> Verdict {
    let status = answer.status.as_u16();
    if answer.status.is_success() {
        let id = answer.json::<Queued>().and_then(|q| q.id);
        return Verdict::delivered(Some(status), id);
    }
    let error = http_error(status, &answer.excerpt());
    let outcome = match status {
        429 => return Verdict::throttled(Some(status), answer.retry_after(), error),
        // The key, or a domain this account may not send from.
        401 | 403 | 404 => AttemptOutcome::ProviderFault,
        400..=499 => AttemptOutcome::Rejected,
        // A 5xx may still have been sent: like a timeout, tried again.
        _ => AttemptOutcome::Transient,
    };
    Verdict::failed(outcome, Some(status), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hyper::StatusCode;
    use hyper::header::HeaderMap;

    fn answer(status: u16, body: &str) -> HttpAnswer {
        HttpAnswer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn statuses_are_classified() {
        use AttemptOutcome::*;
        let v = classify(&answer(
            200,
            r#"{"id": "<2024.abc@mg.example.test>", "message": "Queued. Thank you."}"#,
        ));
        assert_eq!(v.outcome, Delivered);
        assert_eq!(
            v.provider_message_id.as_deref(),
            Some("<2024.abc@mg.example.test>")
        );
        for (status, want) in [
            (400, Rejected),
            (401, ProviderFault),
            (403, ProviderFault),
            (404, ProviderFault),
            (429, Throttled),
            (500, Transient),
            (503, Transient),
        ] {
            let v = classify(&answer(status, r#"{"message": "why"}"#));
            assert_eq!(v.outcome, want, "{status}");
            assert!(v.error.unwrap().contains("why"));
        }
    }
}
