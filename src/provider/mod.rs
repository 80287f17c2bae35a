//! Providers: the external services that actually send a message, and how
//! their answers are classified.

mod http;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::domain::{AttemptOutcome, Channel};
use crate::error::BoxError;

pub use http::{HttpJsonProvider, HttpProviderError};

/// A provider's answer, whatever its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderResponse {
    pub status: u16,
    /// `Retry-After`, as a delay from now, when the provider sent one.
    pub retry_after: Option<Duration>,
    /// The start of the body, kept for the attempt history of failures.
    pub body_excerpt: String,
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

/// Something that can send a notification's stored body.
#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &str;
    fn channel(&self) -> Channel;
    /// How long one request may take; a lease must outlast it.
    fn timeout(&self) -> Duration;
    async fn send(&self, body: Bytes) -> Result<ProviderResponse, SendError>;
}

/// What an attempt's result means for the notification and for the
/// provider's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: AttemptOutcome,
    pub http_status: Option<u16>,
    /// True when the provider did not answer at all: a strong sign it is down.
    pub unreachable: bool,
    /// How long the provider asked us to hold off (429 `Retry-After`).
    pub pause: Option<Duration>,
    pub error: Option<String>,
}

/// 2xx delivers; 408 and 429 are transient; any other 4xx is the message's
/// fault and permanent; everything else (5xx, 3xx, no answer) is transient.
pub fn classify(result: &Result<ProviderResponse, SendError>) -> Verdict {
    match result {
        Ok(resp) => {
            let outcome = match resp.status {
                200..=299 => AttemptOutcome::Delivered,
                408 | 429 => AttemptOutcome::Transient,
                400..=499 => AttemptOutcome::Rejected,
                _ => AttemptOutcome::Transient,
            };
            let error = (outcome != AttemptOutcome::Delivered).then(|| {
                if resp.body_excerpt.is_empty() {
                    format!("HTTP {}", resp.status)
                } else {
                    format!("HTTP {}: {}", resp.status, resp.body_excerpt)
                }
            });
            Verdict {
                outcome,
                http_status: Some(resp.status),
                unreachable: false,
                pause: if resp.status == 429 {
                    resp.retry_after
                } else {
                    None
                },
                error,
            }
        }
        Err(err) => Verdict {
            outcome: AttemptOutcome::Transient,
            http_status: None,
            unreachable: matches!(err, SendError::Connect(_) | SendError::Timeout(_)),
            pause: None,
            error: Some(crate::error::chain(err)),
        },
    }
}

/// `Retry-After` is either delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16, retry_after: Option<Duration>) -> Verdict {
        classify(&Ok(ProviderResponse {
            status,
            retry_after,
            body_excerpt: String::new(),
        }))
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
            (429, Transient),
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
        let ra = Some(Duration::from_secs(7));
        assert_eq!(answered(429, ra).pause, ra);
        assert_eq!(answered(503, ra).pause, None);
    }

    #[test]
    fn timeouts_are_transient_and_unreachable() {
        let v = classify(&Err(SendError::Timeout(Duration::from_secs(1))));
        assert_eq!(v.outcome, AttemptOutcome::Transient);
        assert!(v.unreachable);
        assert_eq!(v.http_status, None);
        assert!(v.error.unwrap().contains("did not answer"));
    }

    #[test]
    fn retry_after_forms() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
