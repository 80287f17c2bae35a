//! The provider contract's kind: POST the notification's JSON to a URL;
//! 2xx delivers, 408 and 429 are transient, any other 4xx is the message's
//! fault, everything else is transient.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hyper::http::uri::Uri;

use serde::{Deserialize, Serialize};

use super::transport::{self, HttpAnswer, HttpTransport, TransportError};
use super::{Outgoing, Provider, Verdict, http_error, http_transport};
use crate::config::ProviderCommon;
use crate::domain::validation::is_valid_phone;
use crate::domain::{AttemptOutcome, Channel, Message};

/// `kind = "contract"` (the default): the JSON body is POSTed to `url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractConfig {
    pub url: String,
}

pub struct ContractProvider {
    name: String,
    channel: Channel,
    uri: Uri,
    transport: HttpTransport,
}

impl ContractProvider {
    pub fn new(
        common: &ProviderCommon,
        config: &ContractConfig,
        channel: Channel,
    ) -> Result<Self, TransportError> {
        Ok(Self {
            name: common.name.clone(),
            channel,
            uri: HttpTransport::parse_url(&common.name, &config.url)?,
            transport: http_transport(common)?,
        })
    }
}

#[async_trait]
impl Provider for ContractProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "contract"
    }

    fn channel(&self) -> Channel {
        self.channel
    }

    fn timeout(&self) -> Duration {
        self.transport.timeout()
    }

    fn can_send(&self, message: &Message) -> bool {
        match message {
            // The contract's providers take only Bangladeshi mobile numbers.
            Message::Sms(sms) => is_valid_phone(&sms.phone),
            Message::Email(_) => true,
        }
    }

    async fn send(&self, outgoing: &Outgoing) -> Verdict {
        let request = transport::post(&self.uri, transport::JSON, contract_body(outgoing));
        match self.transport.exchange(request).await {
            Ok(answer) => classify_contract(&answer),
            Err(err) => Verdict::no_answer(&err),
        }
    }
}

/// The stored JSON is the contract's body already, sent without
/// re-encoding (the hot path), unless it holds fields the contract lacks.
fn contract_body(outgoing: &Outgoing) -> Bytes {
    match &outgoing.message {
        Message::Email(email) if email.has_extras() => {
            let body = serde_json::json!({
                "subject": email.subject,
                "body": email.body,
                "recipients": email.recipients,
            });
            Bytes::from(body.to_string())
        }
        _ => outgoing.payload.clone(),
    }
}

/// The contract's table, which is also plain HTTP's.
pub fn classify_contract(answer: &HttpAnswer) -> Verdict {
    let status = answer.status.as_u16();
    match status {
        200..=299 => Verdict::delivered(Some(status), None),
        429 => Verdict::throttled(
            Some(status),
            answer.retry_after(),
            http_error(status, &answer.excerpt()),
        ),
        408 => Verdict::failed(
            AttemptOutcome::Transient,
            Some(status),
            http_error(status, &answer.excerpt()),
        ),
        400..=499 => Verdict::failed(
            AttemptOutcome::Rejected,
            Some(status),
            http_error(status, &answer.excerpt()),
        ),
        _ => Verdict::failed(
            AttemptOutcome::Transient,
            Some(status),
            http_error(status, &answer.excerpt()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;
    use hyper::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    fn answered(status: u16, retry_after: Option<&str>) -> Verdict {
        let mut headers = HeaderMap::new();
        if let Some(ra) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from_str(ra).unwrap());
        }
        classify_contract(&HttpAnswer {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: Bytes::new(),
        })
    }

    #[test]
    fn statuses_are_classified() {
        use AttemptOutcome::*;
        let table = [
            (200, Delivered),
            (201, Delivered),
            (204, Delivered),
            (301, Transient),
            (400, Rejected),
            (401, Rejected),
            (404, Rejected),
            (408, Transient),
            (413, Rejected),
            (422, Rejected),
            (429, Throttled),
            (500, Transient),
            (502, Transient),
            (503, Transient),
            (504, Transient),
        ];
        for (status, want) in table {
            let v = answered(status, None);
            assert_eq!(v.outcome, want, "HTTP {status}");
            assert_eq!(v.http_status, Some(status));
            assert!(!v.unreachable);
            assert_eq!(v.error.is_some(), want != Delivered);
        }
    }

    #[test]
    fn only_429_pauses_the_provider() {
        assert_eq!(answered(429, Some("7")).pause, Some(Duration::from_secs(7)));
        assert_eq!(answered(503, Some("7")).pause, None);
    }

    #[test]
    fn no_answer_is_transient_and_a_timeout_unreachable() {
        let v = Verdict::no_answer(&super::super::SendError::Timeout(Duration::from_secs(1)));
        assert_eq!(v.outcome, AttemptOutcome::Transient);
        assert!(v.unreachable);
        assert_eq!(v.http_status, None);
        assert!(v.error.unwrap().contains("did not answer"));
    }
}
