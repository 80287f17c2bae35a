//! `kind = "twilio"`: SMS through Twilio's Programmable Messaging API.
//!
//! `POST {url}/2010-04-01/Accounts/{account_sid}/Messages.json`, form-encoded
//! `To` (E.164), `From` or `MessagingServiceSid`, `Body`; HTTP Basic with the
//! account SID and auth token. A 201 carries the message's `sid`; errors carry
//! a numeric `code` that says whose fault they are (docs/providers.md).

use std::time::Duration;

use async_trait::async_trait;
use hyper::header::HeaderValue;
use hyper::http::uri::Uri;
use serde::{Deserialize, Serialize};

use super::transport::{self, HttpAnswer, HttpTransport};
use super::{BuildError, Outgoing, Provider, Verdict, e164_sms, http_error, http_transport};
use crate::config::ProviderCommon;
use crate::domain::validation::to_e164;
use crate::domain::{AttemptOutcome, Channel, Message};
use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    /// The API's base URL.
    #[serde(default = "default_url")]
    pub url: String,
    pub account_sid: String,
    pub auth_token: Secret,
    /// The sending number (E.164) or alphanumeric sender id; or else
    /// `messaging_service_sid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messaging_service_sid: Option<String>,
}

fn default_url() -> String {
    "https://api.twilio.com".into()
}

enum Sender {
    From(String),
    Service(String),
}

pub struct Twilio {
    name: String,
    uri: Uri,
    auth: HeaderValue,
    sender: Sender,
    transport: HttpTransport,
}

impl Twilio {
    pub fn new(common: &ProviderCommon, config: &TwilioConfig) -> Result<Self, BuildError> {
        let sid = &config.account_sid;
        if sid.is_empty() || !sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(BuildError::invalid(
                common,
                "account_sid must be letters and digits (AC…)",
            ));
        }
        let sender = match (&config.from, &config.messaging_service_sid) {
            (Some(from), None) if !from.is_empty() => Sender::From(from.clone()),
            (None, Some(service)) if !service.is_empty() => Sender::Service(service.clone()),
            _ => {
                return Err(BuildError::invalid(
                    common,
                    "a twilio provider needs exactly one of `from` and `messaging_service_sid`",
                ));
            }
        };
        let path = format!("/2010-04-01/Accounts/{sid}/Messages.json");
        let uri = HttpTransport::endpoint(&common.name, &config.url, &path)?;
        super::credentials_over(common, &uri)?;
        Ok(Self {
            name: common.name.clone(),
            uri,
            auth: transport::basic_auth(sid, config.auth_token.expose()),
            sender,
            transport: http_transport(common)?,
        })
    }
}

#[async_trait]
impl Provider for Twilio {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "twilio"
    }

    fn channel(&self) -> Channel {
        Channel::Sms
    }

    fn timeout(&self) -> Duration {
        self.transport.timeout()
    }

    fn can_send(&self, message: &Message) -> bool {
        matches!(message, Message::Sms(sms) if to_e164(&sms.phone).is_some())
    }

    async fn send(&self, outgoing: &Outgoing) -> Verdict {
        let (sms, to) = match e164_sms("twilio", outgoing) {
            Ok(found) => found,
            Err(verdict) => return verdict,
        };
        let sender = match &self.sender {
            Sender::From(from) => ("From", from.as_str()),
            Sender::Service(sid) => ("MessagingServiceSid", sid.as_str()),
        };
        let body = transport::form([("To", to.as_str()), sender, ("Body", sms.text.as_str())]);
        let mut request = transport::post(&self.uri, transport::FORM, body);
        transport::authorize(&mut request, self.auth.clone());
        match self.transport.exchange(request).await {
            Ok(answer) => classify(&answer),
            Err(err) => Verdict::no_answer(&err),
        }
    }
}

#[derive(Deserialize)]
struct Created {
    sid: Option<String>,
}

#[derive(Deserialize)]
struct Failure {
    code: Option<u32>,
}

/// Twilio's error codes, by whose fault they are.
fn classify(answer: &HttpAnswer) -> Verdict {
    let status = answer.status.as_u16();
    if answer.status.is_success() {
        let sid = answer.json::<Created>().and_then(|c| c.sid);
        return Verdict::delivered(Some(status), sid);
    }
    let code = answer.json::<Failure>().and_then(|f| f.code);
    let error = http_error(status, &answer.excerpt());
    let outcome = match (status, code) {
        // The sender's queue is full: temporary despite the 400.
        (_, Some(21611)) => AttemptOutcome::Transient,
        (429, _) | (_, Some(20429)) => {
            return Verdict::throttled(Some(status), answer.retry_after(), error);
        }
        // Credentials, or a sender this account may not use. (21606, a
        // From that cannot reach this destination, depends on the number
        // the message names: the message's, below, or crafted numbers would
        // open the breaker.)
        (401 | 403, _) | (_, Some(20003 | 21212)) => AttemptOutcome::ProviderFault,
        // The account SID in the URL does not exist.
        (404, _) => AttemptOutcome::ProviderFault,
        // 21211 invalid To, 21610 unsubscribed, 21614 not a mobile, 21606
        // and 21612 not reachable from this sender, 21408 a region not
        // enabled, 21608, and any other complaint about the request.
        (400..=499, _) => AttemptOutcome::Rejected,
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

    fn error(status: u16, code: u32) -> Verdict {
        classify(&answer(
            status,
            &format!(
                r#"{{"code": {code}, "message": "m", "more_info": "https://www.twilio.com/docs/errors/{code}", "status": {status}}}"#
            ),
        ))
    }

    #[test]
    fn created_carries_the_sid() {
        let v = classify(&answer(
            201,
            r#"{"sid": "SM123", "status": "queued", "body": "hi"}"#,
        ));
        assert_eq!(v.outcome, AttemptOutcome::Delivered);
        assert_eq!(v.provider_message_id.as_deref(), Some("SM123"));
        assert_eq!(v.http_status, Some(201));
    }

    #[test]
    fn error_codes_are_classified() {
        use AttemptOutcome::*;
        for (status, code, want) in [
            (400, 21211, Rejected),
            (400, 21610, Rejected),
            (400, 21614, Rejected),
            (400, 21608, Rejected),
            (400, 21612, Rejected),
            (400, 21611, Transient),
            (401, 20003, ProviderFault),
            (400, 21212, ProviderFault),
            (400, 21606, Rejected),
            (400, 21408, Rejected),
            (404, 20404, ProviderFault),
            (429, 20429, Throttled),
            (500, 20500, Transient),
            (503, 20503, Transient),
        ] {
            let v = error(status, code);
            assert_eq!(v.outcome, want, "{status} {code}");
            assert!(v.error.unwrap().contains(&code.to_string()));
        }
        assert_eq!(classify(&answer(502, "<html>")).outcome, Transient);
        assert_eq!(classify(&answer(401, "")).outcome, ProviderFault);
    }

    #[test]
    fn a_429_pauses_for_its_retry_after() {
        let mut a = answer(429, r#"{"code": 20429}"#);
        a.headers
            .insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(classify(&a).pause, Some(Duration::from_secs(3)));
    }
}
