//! `kind = "vonage"`: SMS through Vonage's (Nexmo's) SMS API.
//!
//! `POST {url}/sms/json`, form-encoded `api_key`, `api_secret`, `from`, `to`
//! (E.164 without the `+`), `text`, and Herald's id as `client-ref`. Vonage
//! answers HTTP 200 even when it refused the message: the verdict is each
//! part's `status` in the body (docs/providers.md).

use std::time::Duration;

use async_trait::async_trait;
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
pub struct VonageConfig {
    /// The API's base URL.
    #[serde(default = "default_url")]
    pub url: String,
    pub api_key: String,
    pub api_secret: Secret,
    /// The sender: a number or an alphanumeric sender id.
    pub from: String,
}

fn default_url() -> String {
    "https://rest.nexmo.com".into()
}

pub struct Vonage {
    name: String,
    uri: Uri,
    api_key: String,
    api_secret: Secret,
    from: String,
    transport: HttpTransport,
}

impl Vonage {
    pub fn new(common: &ProviderCommon, config: &VonageConfig) -> Result<Self, BuildError> {
        if config.api_key.is_empty() || config.from.is_empty() {
            return Err(BuildError::invalid(
                common,
                "a vonage provider needs api_key and from",
            ));
        }
        let uri = HttpTransport::endpoint(&common.name, &config.url, "/sms/json")?;
        super::credentials_over(common, &uri)?;
        Ok(Self {
            name: common.name.clone(),
            uri,
            api_key: config.api_key.clone(),
            api_secret: config.api_secret.clone(),
            from: config.from.clone(),
            transport: http_transport(common)?,
        })
    }
}

#[async_trait]
impl Provider for Vonage {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "vonage"
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
        let (sms, to) = match e164_sms("vonage", outgoing) {
            Ok(found) => found,
            Err(verdict) => return verdict,
        };
        let id = outgoing.id.to_string();
        let mut pairs = vec![
            ("api_key", self.api_key.as_str()),
            ("api_secret", self.api_secret.expose()),
            ("from", self.from.as_str()),
            // Vonage wants the number without its `+`.
            ("to", &to[1..]),
            ("text", sms.text.as_str()),
            ("client-ref", id.as_str()),
        ];
        // Text beyond GSM's alphabet must be sent as unicode, or it arrives
        // garbled; plain ASCII is the common case and stays `text`.
        if !sms.text.is_ascii() {
            pairs.push(("type", "unicode"));
        }
        let request = transport::post(&self.uri, transport::FORM, transport::form(pairs));
        match self.transport.exchange(request).await {
            Ok(answer) => classify(&answer),
            Err(err) => Verdict::no_answer(&err),
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    messages: Vec<Part>,
}

/// One part of a (possibly concatenated) message.
#[derive(Deserialize)]
struct Part {
    status: String,
    #[serde(rename = "message-id")]
    message_id: Option<String>,
    #[serde(rename = "error-text")]
    error_text: Option<String>,
}

/// HTTP first, then the status of every part in the body.
fn classify(answer: &HttpAnswer) -> Verdict {
    let status = answer.status.as_u16();
    if !answer.status.is_success() {
        let error = http_error(status, &answer.excerpt());
        return match status {
            429 => Verdict::throttled(Some(status), answer.retry_after(), error),
            401 | 403 => Verdict::failed(AttemptOutcome::ProviderFault, Some(status), error),
            _ => Verdict::failed(AttemptOutcome::Transient, Some(status), error),
        };
    }
    let Some(parts) = answer.json::<Answer>().map(|a| a.messages) else {
        return Verdict::failed(
            AttemptOutcome::Transient,
            Some(status),
            http_error(status, &answer.excerpt()),
        );
    };
    if let Some(failed) = parts.iter().find(|p| p.status != "0") {
        let error = format!(
            "Vonage status {}: {}",
            failed.status,
            failed.error_text.as_deref().unwrap_or("no error text")
        );
        let outcome = match failed.status.as_str() {
            // Throttled: sending faster than the account's limit.
            "1" => return Verdict::throttled(Some(status), Some(Duration::from_secs(1)), error),
            // Missing or invalid parameters, an unroutable or barred
            // number, a message too long, an invalid network code, a
            // destination a trial account may not reach.
            "2" | "3" | "6" | "7" | "12" | "22" | "29" => AttemptOutcome::Rejected,
            // Credentials, a barred account, no credit, no HTTP access, a
            // bad signature, a sender id not allowed.
            "4" | "8" | "9" | "11" | "14" | "15" => AttemptOutcome::ProviderFault,
            // 5 internal error, 10 too many binds, and anything unknown.
            _ => AttemptOutcome::Transient,
        };
        return Verdict::failed(outcome, Some(status), error);
    }
    if parts.is_empty() {
        return Verdict::failed(
            AttemptOutcome::Transient,
            Some(status),
            "Vonage answered without any message".into(),
        );
    }
    let ids: Vec<&str> = parts
        .iter()
        .filter_map(|p| p.message_id.as_deref())
        .collect();
    Verdict::delivered(Some(status), (!ids.is_empty()).then(|| ids.join(",")))
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

    fn with_status(code: &str) -> Verdict {
        classify(&answer(
            200,
            &format!(
                r#"{{"message-count": "1", "messages": [{{"status": "{code}", "error-text": "because"}}]}}"#
            ),
        ))
    }

    #[test]
    fn every_part_must_say_0() {
        let v = classify(&answer(
            200,
            r#"{"message-count": "2", "messages": [
                {"to": "447700900000", "message-id": "0A01", "status": "0", "remaining-balance": "3.1"},
                {"to": "447700900000", "message-id": "0A02", "status": "0"}]}"#,
        ));
        assert_eq!(v.outcome, AttemptOutcome::Delivered);
        assert_eq!(v.provider_message_id.as_deref(), Some("0A01,0A02"));
    }

    #[test]
    fn http_200_with_a_failure_inside() {
        use AttemptOutcome::*;
        for (code, want) in [
            ("1", Throttled),
            ("2", Rejected),
            ("3", Rejected),
            ("4", ProviderFault),
            ("5", Transient),
            ("6", Rejected),
            ("7", Rejected),
            ("8", ProviderFault),
            ("9", ProviderFault),
            ("15", ProviderFault),
            ("29", Rejected),
            ("99", Transient),
        ] {
            let v = with_status(code);
            assert_eq!(v.outcome, want, "status {code}");
            assert_eq!(v.http_status, Some(200));
            assert!(v.error.unwrap().contains(&format!("status {code}")));
        }
        assert!(with_status("1").pause.is_some());
    }

    #[test]
    fn transport_failures() {
        use AttemptOutcome::*;
        assert_eq!(classify(&answer(500, "")).outcome, Transient);
        assert_eq!(classify(&answer(401, "")).outcome, ProviderFault);
        assert_eq!(classify(&answer(429, "")).outcome, Throttled);
        assert_eq!(classify(&answer(200, "<html>")).outcome, Transient);
        assert_eq!(
            classify(&answer(200, r#"{"messages": []}"#)).outcome,
            Transient
        );
    }
}
