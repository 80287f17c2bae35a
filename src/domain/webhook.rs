//! Status webhooks: the events a notification's end sends, their ids and
//! their payload. No I/O here; signing is in `crate::webhook`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::notification::uuid_after;
use super::{Channel, NotificationId, Status, UnixMillis};

/// What happened to a notification: one event per final transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum WebhookEvent {
    /// A provider accepted it.
    #[serde(rename = "notification.sent")]
    Sent,
    /// A receipt confirmed it reached the handset or mailbox (no receipt
    /// sets it yet).
    #[serde(rename = "notification.delivered")]
    Delivered,
    /// A receipt said the SMS did not arrive, for good.
    #[serde(rename = "notification.undelivered")]
    Undelivered,
    /// A receipt said the email bounced, for good.
    #[serde(rename = "notification.bounced")]
    Bounced,
    #[serde(rename = "notification.failed")]
    Failed,
    #[serde(rename = "notification.dead")]
    Dead,
    #[serde(rename = "notification.expired")]
    Expired,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 7] = [
        WebhookEvent::Sent,
        WebhookEvent::Delivered,
        WebhookEvent::Undelivered,
        WebhookEvent::Bounced,
        WebhookEvent::Failed,
        WebhookEvent::Dead,
        WebhookEvent::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Sent => "notification.sent",
            WebhookEvent::Delivered => "notification.delivered",
            WebhookEvent::Undelivered => "notification.undelivered",
            WebhookEvent::Bounced => "notification.bounced",
            WebhookEvent::Failed => "notification.failed",
            WebhookEvent::Dead => "notification.dead",
            WebhookEvent::Expired => "notification.expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// The event a notification ending in `status` sends; `None` for the
    /// statuses that send none (unfinished ones, and `canceled`: the
    /// caller asked for it).
    pub fn for_status(status: Status) -> Option<Self> {
        match status {
            Status::Sent => Some(WebhookEvent::Sent),
            Status::Delivered => Some(WebhookEvent::Delivered),
            Status::Undelivered => Some(WebhookEvent::Undelivered),
            Status::Bounced => Some(WebhookEvent::Bounced),
            Status::Failed => Some(WebhookEvent::Failed),
            Status::Dead => Some(WebhookEvent::Dead),
            Status::Expired => Some(WebhookEvent::Expired),
            _ => None,
        }
    }
}

impl fmt::Display for WebhookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A webhook delivery's id, sent as `webhook-id`: one per event and
/// receiver, the same on every retry of it, so a receiver dedupes by it.
/// UUIDv7 behind a prefix, like notification ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WebhookId(Uuid);

impl WebhookId {
    const PREFIX: &'static str = "msg_";

    /// Made the way notification ids are, time first.
    pub fn new_at(t: UnixMillis) -> Self {
        Self(NotificationId::new_at(t).as_uuid())
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// The smallest id made at or after `t` (see
    /// [`NotificationId::first_at`]); `first_at(0)` is below every id.
    pub fn first_at(t: UnixMillis) -> Self {
        Self(NotificationId::first_at(t).as_uuid())
    }
}

impl fmt::Display for WebhookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Letters and digits only: the signed content joins it with `.`.
        write!(f, "{}{}", Self::PREFIX, self.0.simple())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a webhook delivery id (expected msg_ followed by 32 hex digits)")]
pub struct BadWebhookId;

impl FromStr for WebhookId {
    type Err = BadWebhookId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid_after(Self::PREFIX, s).map(Self).ok_or(BadWebhookId)
    }
}

impl Serialize for WebhookId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The last provider attempt of a notification, as its event tells it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LastAttempt {
    pub provider: String,
    pub outcome: String,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

/// A notification as it stood when it ended: what its event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedNotification {
    pub id: NotificationId,
    pub channel: Channel,
    pub status: Status,
    pub created_at: UnixMillis,
    /// When it ended.
    pub ended_at: UnixMillis,
    /// Why it did not go out (`None` once sent or delivered).
    pub error: Option<String>,
    pub attempts: u32,
    pub last_attempt: Option<LastAttempt>,
    pub metadata: BTreeMap<String, String>,
    pub callback_url: Option<String>,
}

impl EndedNotification {
    pub fn event(&self) -> Option<WebhookEvent> {
        WebhookEvent::for_status(self.status)
    }

    /// The body every receiver of its event gets, byte for byte the same on
    /// every retry (the signature covers it). No message text, recipient or
    /// provider credential is in it: only what the caller can read back
    /// from `GET /v1/notifications/{id}` anyway.
    pub fn payload(&self, event: WebhookEvent) -> String {
        let last = self.last_attempt.as_ref();
        json!({
            "type": event.as_str(),
            "timestamp": self.ended_at,
            "data": {
                "id": self.id,
                "channel": self.channel,
                "status": self.status,
                "created_at": self.created_at,
                "error": (!matches!(self.status, Status::Sent | Status::Delivered)).then_some(self.error.as_deref()).flatten(),
                "attempts": {
                    "count": self.attempts,
                    "last_provider": last.map(|a| a.provider.as_str()),
                    "last_outcome": last.map(|a| a.outcome.as_str()),
                    "last_http_status": last.and_then(|a| a.http_status),
                    "last_error": last.and_then(|a| a.error.as_deref()),
                },
                "metadata": self.metadata,
            }
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_by_name_and_status() {
        for e in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::parse(e.as_str()), Some(e));
            let quoted = serde_json::to_string(&e).unwrap();
            assert_eq!(quoted, format!("\"{}\"", e.as_str()));
        }
        assert_eq!(WebhookEvent::parse("notification.accepted"), None);
        assert_eq!(
            WebhookEvent::for_status(Status::Sent),
            Some(WebhookEvent::Sent)
        );
        assert_eq!(WebhookEvent::Sent.as_str(), "notification.sent");
        for (status, event) in [
            (Status::Delivered, "notification.delivered"),
            (Status::Undelivered, "notification.undelivered"),
            (Status::Bounced, "notification.bounced"),
        ] {
            assert_eq!(WebhookEvent::for_status(status).unwrap().as_str(), event);
        }
        assert_eq!(
            WebhookEvent::for_status(Status::Expired),
            Some(WebhookEvent::Expired)
        );
        for quiet in [Status::Canceled, Status::Queued, Status::Sending] {
            assert_eq!(WebhookEvent::for_status(quiet), None);
        }
    }

    #[test]
    fn ids_round_trip_and_hold_no_dot() {
        let id = WebhookId::new_at(UnixMillis(1_700_000_000_000));
        let text = id.to_string();
        assert!(text.starts_with("msg_") && text.len() == 36, "{text}");
        assert!(!text.contains('.'));
        assert_eq!(text.parse::<WebhookId>().unwrap(), id);
        assert!("ntf_0123".parse::<WebhookId>().is_err());
    }

    #[test]
    fn the_payload_carries_the_summary_not_the_message() {
        let ended = EndedNotification {
            id: NotificationId::new_at(UnixMillis(1_700_000_000_000)),
            channel: Channel::Sms,
            status: Status::Dead,
            created_at: UnixMillis(1_700_000_000_000),
            ended_at: UnixMillis(1_700_000_060_000),
            error: Some("gave up after 2 rounds".into()),
            attempts: 2,
            last_attempt: Some(LastAttempt {
                provider: "sms-provider1".into(),
                outcome: "transient".into(),
                http_status: Some(503),
                error: Some("HTTP 503".into()),
            }),
            metadata: BTreeMap::from([("order".into(), "4711".into())]),
            callback_url: None,
        };
        let body: serde_json::Value =
            serde_json::from_str(&ended.payload(WebhookEvent::Dead)).unwrap();
        assert_eq!(body["type"], "notification.dead");
        assert_eq!(body["timestamp"], "2023-11-14T22:14:20.000Z");
        let data = &body["data"];
        assert_eq!(data["id"], ended.id.to_string());
        assert_eq!(data["status"], "dead");
        assert_eq!(data["error"], "gave up after 2 rounds");
        assert_eq!(data["attempts"]["count"], 2);
        assert_eq!(data["attempts"]["last_provider"], "sms-provider1");
        assert_eq!(data["attempts"]["last_http_status"], 503);
        assert_eq!(data["metadata"]["order"], "4711");

        let sent = EndedNotification {
            status: Status::Sent,
            ..ended
        };
        let body: serde_json::Value =
            serde_json::from_str(&sent.payload(WebhookEvent::Sent)).unwrap();
        assert!(body["data"]["error"].is_null(), "{body}");
        assert_eq!(body["type"], "notification.sent");
        assert_eq!(body["data"]["status"], "sent");
    }
}
