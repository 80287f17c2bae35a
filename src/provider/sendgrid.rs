//! `kind = "sendgrid"`: email through SendGrid's v3 Mail Send API.
//!
//! `POST {url}/v3/mail/send`, JSON `personalizations` (the recipients, and
//! Herald's id in `custom_args`), `from`, `reply_to`, `subject`, `content`
//! (text, then HTML); `Authorization: Bearer KEY`. A 202 queues the message,
//! its id in `X-Message-Id` (docs/providers.md).

use crate::resilience::clock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::http::uri::Uri;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::transport::{self, HttpAnswer, HttpTransport};
use super::{BuildError, Outgoing, Provider, Verdict, http_error, http_transport};
use crate::config::ProviderCommon;
use crate::domain::validation::is_valid_email;
use crate::domain::{AttemptOutcome, Channel, Message};
use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendgridConfig {
    /// The API's base URL.
    #[serde(default = "default_url")]
    pub url: String,
    pub api_key: Secret,
    /// `Name <address>` or a bare address, of a verified sender.
    pub from: String,
}

fn default_url() -> String {
    "https://api.sendgrid.com".into()
}

pub struct Sendgrid {
    name: String,
    uri: Uri,
    auth: HeaderValue,
    from: serde_json::Value,
    transport: HttpTransport,
}

impl Sendgrid {
    pub fn new(common: &ProviderCommon, config: &SendgridConfig) -> Result<Self, BuildError> {
        let (name, email) = parse_mailbox(&config.from).ok_or_else(|| {
            BuildError::invalid(common, "from must be `Name <address>` or an address")
        })?;
        let auth = transport::bearer(config.api_key.expose()).ok_or_else(|| {
            BuildError::invalid(common, "api_key holds characters a header cannot")
        })?;
        let from = match name {
            Some(name) => json!({"email": email, "name": name}),
            None => json!({"email": email}),
        };
        let uri = HttpTransport::endpoint(&common.name, &config.url, "/v3/mail/send")?;
        super::credentials_over(common, &uri)?;
        Ok(Self {
            name: common.name.clone(),
            uri,
            auth,
            from,
            transport: http_transport(common)?,
        })
    }

    fn body(&self, outgoing: &Outgoing) -> Option<Bytes> {
        let Message::Email(email) = &outgoing.message else {
            return None;
        };
        let to: Vec<_> = email
            .recipients
            .iter()
            .map(|r| json!({"email": r}))
            .collect();
        let mut content = vec![json!({"type": "text/plain", "value": email.body})];
        if let Some(html) = &email.html {
            content.push(json!({"type": "text/html", "value": html}));
        }
        let mut body = json!({
            "personalizations": [{
                "to": to,
                "custom_args": {"herald_id": outgoing.id.to_string()},
            }],
            "from": self.from,
            "subject": email.subject,
            "content": content,
        });
        if let Some(reply_to) = &email.reply_to {
            body["reply_to"] = json!({"email": reply_to});
        }
        Some(Bytes::from(body.to_string()))
    }
}

/// `Name <a@b.c>`, `"Name" <a@b.c>` or `a@b.c`.
pub(crate) fn parse_mailbox(text: &str) -> Option<(Option<String>, String)> {
    let text = text.trim();
    let (name, address) = match text.strip_suffix('>').and_then(|t| t.rsplit_once('<')) {
        Some((name, address)) => {
            let name = name.trim().trim_matches('"').trim();
            ((!name.is_empty()).then(|| name.to_owned()), address.trim())
        }
        None => (None, text),
    };
    is_valid_email(address).then(|| (name, address.to_owned()))
}

#[async_trait]
impl Provider for Sendgrid {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "sendgrid"
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
        let Some(body) = self.body(outgoing) else {
            return Verdict::failed(
                AttemptOutcome::Rejected,
                None,
                "sendgrid sends email only".into(),
            );
        };
        let mut request = transport::post(&self.uri, transport::JSON, body);
        transport::authorize(&mut request, self.auth.clone());
        match self.transport.exchange(request).await {
            Ok(answer) => classify(&answer, clock::wall()),
            Err(err) => Verdict::no_answer(&err),
        }
    }
}

fn classify(answer: &HttpAnswer, now: SystemTime) -> Verdict {
    let status = answer.status.as_u16();
    if answer.status.is_success() {
        let id = answer.header("x-message-id").map(str::to_owned);
        return Verdict::delivered(Some(status), id);
    }
    let error = http_error(status, &answer.excerpt());
    let outcome = match status {
        429 => {
            // X-RateLimit-Reset is the Unix time the limit resets.
            let reset = answer
                .header("x-ratelimit-reset")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|at| {
                    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
                    Duration::from_secs(at).saturating_sub(now)
                });
            return Verdict::throttled(Some(status), reset.or(answer.retry_after()), error);
        }
        // Field errors, or a message too large: no provider will take it.
        400 | 413 => AttemptOutcome::Rejected,
        // The key, its permissions, or a (temporary) block of the account.
        401 | 403 => AttemptOutcome::ProviderFault,
        // Wrong base URL or method: the operator's to fix.
        404 | 405 => AttemptOutcome::ProviderFault,
        400..=499 => AttemptOutcome::Rejected,
        _ => AttemptOutcome::Transient,
    };
    Verdict::failed(outcome, Some(status), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;
    use hyper::header::HeaderMap;

    fn answer(status: u16, headers: &[(&'static str, &'static str)], body: &str) -> HttpAnswer {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_static(v));
        }
        HttpAnswer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn statuses_are_classified() {
        use AttemptOutcome::*;
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let v = classify(&answer(202, &[("x-message-id", "abc.1")], ""), now);
        assert_eq!(v.outcome, Delivered);
        assert_eq!(v.provider_message_id.as_deref(), Some("abc.1"));
        let field = r#"{"errors":[{"message":"Does not contain a valid address.","field":"personalizations.0.to.0.email","help":null}]}"#;
        for (status, body, want) in [
            (400, field, Rejected),
            (413, "", Rejected),
            (
                401,
                r#"{"errors":[{"message":"Permission denied, wrong credentials"}]}"#,
                ProviderFault,
            ),
            (403, "", ProviderFault),
            (500, "", Transient),
            (503, "", Transient),
        ] {
            assert_eq!(
                classify(&answer(status, &[], body), now).outcome,
                want,
                "{status}"
            );
        }
        let limited = classify(
            &answer(
                429,
                &[
                    ("x-ratelimit-reset", "1030"),
                    ("x-ratelimit-remaining", "0"),
                ],
                "",
            ),
            now,
        );
        assert_eq!(limited.outcome, Throttled);
        assert_eq!(limited.pause, Some(Duration::from_secs(30)));
    }

    #[test]
    fn mailboxes() {
        assert_eq!(
            parse_mailbox("Herald <noreply@example.test>"),
            Some((Some("Herald".into()), "noreply@example.test".into()))
        );
        assert_eq!(
            parse_mailbox("\"Herald Bot\" <a@b.io>"),
            Some((Some("Herald Bot".into()), "a@b.io".into()))
        );
        assert_eq!(parse_mailbox("a@b.io"), Some((None, "a@b.io".into())));
        assert_eq!(parse_mailbox("Herald <nope>"), None);
        assert_eq!(parse_mailbox(""), None);
    }
}
