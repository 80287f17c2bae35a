//! Rows as both engines read them, decoded into the domain in one place.
//!
//! Each engine only takes its columns out in the order named here (SQLite
//! and PostgreSQL differ in their integer and id types, nothing else); what
//! the values mean, and which of them are invalid, is decided below.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::outbox::{ClaimedWebhook, WebhookDeliveryRecord, WebhookStatus, WebhookTarget};
use super::{Claimed, LeaseToken, NotificationRecord, NotificationSummary, StoreError};
use crate::domain::webhook::{EndedNotification, LastAttempt, WebhookEvent, WebhookId};
use crate::domain::{
    Attempt, AttemptOutcome, Channel, NotificationId, Priority, Status, UnixMillis,
};

/// The columns of a notification that [`RecordRow`] reads, in order.
pub(crate) const RECORD_COLUMNS: &str = "channel, status, priority, created_at, updated_at, \
     due_at, expires_at, deliver_by, rounds, delivered_by, last_error, payload, callback_url, \
     hedge, created_by";

/// The columns of an attempt that [`AttemptRow`] reads, in order.
pub(crate) const ATTEMPT_COLUMNS: &str =
    "provider, started_at, duration_ms, outcome, http_status, error, provider_message_id";

/// The columns of a listing line that [`SummaryRow`] reads, in order.
pub(crate) const SUMMARY_COLUMNS: &str =
    "id, channel, status, priority, created_at, updated_at, rounds, last_error";

pub(crate) fn channel_from(s: &str) -> Result<Channel, StoreError> {
    Channel::parse(s).ok_or(StoreError::Corrupt {
        what: "unknown channel",
    })
}

pub(crate) fn status_from(s: &str) -> Result<Status, StoreError> {
    Status::parse(s).ok_or(StoreError::Corrupt {
        what: "unknown status",
    })
}

pub(crate) fn priority_from(rank: i64) -> Result<Priority, StoreError> {
    Priority::from_rank(rank).ok_or(StoreError::Corrupt {
        what: "unknown priority",
    })
}

pub(crate) fn id_from_bytes(bytes: &[u8]) -> Result<NotificationId, StoreError> {
    let arr: [u8; 16] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        what: "notification id is not 16 bytes",
    })?;
    Ok(NotificationId::from_bytes(arr))
}

fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

pub(crate) struct RecordRow {
    pub channel: String,
    pub status: String,
    pub priority: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub due_at: Option<i64>,
    pub expires_at: i64,
    pub deliver_by: Option<i64>,
    pub rounds: i64,
    pub delivered_by: Option<String>,
    pub last_error: Option<String>,
    pub payload: String,
    pub callback_url: Option<String>,
    pub hedge: bool,
    pub created_by: Option<String>,
}

impl RecordRow {
    pub fn decode(
        self,
        id: NotificationId,
        attempts: Vec<Attempt>,
        metadata: BTreeMap<String, String>,
    ) -> Result<NotificationRecord, StoreError> {
        let status = status_from(&self.status)?;
        Ok(NotificationRecord {
            id,
            channel: channel_from(&self.channel)?,
            status,
            priority: priority_from(self.priority)?,
            created_at: UnixMillis(self.created_at),
            updated_at: UnixMillis(self.updated_at),
            // A sending row's due_at is its lease, not a planned attempt.
            next_attempt_at: matches!(
                status,
                Status::Scheduled | Status::Queued | Status::Retrying
            )
            .then_some(self.due_at)
            .flatten()
            .map(UnixMillis),
            retry_until: UnixMillis(self.expires_at),
            expires_at: self.deliver_by.map(UnixMillis),
            rounds: count(self.rounds),
            delivered_by: self.delivered_by,
            last_error: self.last_error,
            metadata,
            hedge: self.hedge,
            callback_url: self.callback_url,
            created_by: self.created_by,
            message: serde_json::from_str(&self.payload).map_err(|_| StoreError::Corrupt {
                what: "payload is not JSON",
            })?,
            attempts,
        })
    }
}

pub(crate) struct AttemptRow {
    pub provider: String,
    pub started_at: i64,
    pub duration_ms: i64,
    pub outcome: String,
    pub http_status: Option<i64>,
    pub error: Option<String>,
    pub provider_message_id: Option<String>,
}

impl AttemptRow {
    pub fn decode(self) -> Result<Attempt, StoreError> {
        Ok(Attempt {
            provider: self.provider,
            started_at: UnixMillis(self.started_at),
            duration_ms: self.duration_ms.max(0) as u64,
            outcome: AttemptOutcome::parse(&self.outcome).ok_or(StoreError::Corrupt {
                what: "unknown attempt outcome",
            })?,
            http_status: self.http_status.and_then(|s| u16::try_from(s).ok()),
            error: self.error,
            provider_message_id: self.provider_message_id,
        })
    }
}

pub(crate) struct SummaryRow {
    pub id: NotificationId,
    pub channel: String,
    pub status: String,
    pub priority: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub rounds: i64,
    pub last_error: Option<String>,
}

impl SummaryRow {
    pub fn decode(self) -> Result<NotificationSummary, StoreError> {
        Ok(NotificationSummary {
            id: self.id,
            channel: channel_from(&self.channel)?,
            status: status_from(&self.status)?,
            priority: priority_from(self.priority)?,
            created_at: UnixMillis(self.created_at),
            updated_at: UnixMillis(self.updated_at),
            rounds: count(self.rounds),
            last_error: self.last_error,
        })
    }
}

/// What a claim returns, in this order: id, channel, payload, rounds,
/// created_at, expires_at, deliver_by, status, hedge.
pub(crate) struct ClaimedRow {
    pub id: NotificationId,
    pub channel: String,
    pub payload: String,
    pub rounds: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub deliver_by: Option<i64>,
    pub status: String,
    pub hedge: bool,
}

impl ClaimedRow {
    /// `None` for a row the claim ended `expired` instead of leasing it.
    pub fn decode(
        self,
        lease: LeaseToken,
        lease_until: UnixMillis,
    ) -> Result<Option<Claimed>, StoreError> {
        if status_from(&self.status)? == Status::Expired {
            return Ok(None);
        }
        Ok(Some(Claimed {
            id: self.id,
            channel: channel_from(&self.channel)?,
            payload: Bytes::from(self.payload),
            rounds: count(self.rounds),
            created_at: UnixMillis(self.created_at),
            expires_at: UnixMillis(self.expires_at),
            deliver_by: self.deliver_by.map(UnixMillis),
            hedge: self.hedge,
            lease,
            lease_until,
        }))
    }
}

pub(crate) fn webhook_id_from_bytes(bytes: &[u8]) -> Result<WebhookId, StoreError> {
    let arr: [u8; 16] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        what: "webhook delivery id is not 16 bytes",
    })?;
    Ok(WebhookId::from_bytes(arr))
}

fn event_from(s: &str) -> Result<WebhookEvent, StoreError> {
    WebhookEvent::parse(s).ok_or(StoreError::Corrupt {
        what: "unknown webhook event",
    })
}

pub(crate) fn webhook_status_from(s: &str) -> Result<WebhookStatus, StoreError> {
    WebhookStatus::parse(s).ok_or(StoreError::Corrupt {
        what: "unknown webhook delivery status",
    })
}

fn target_from(s: &str) -> Result<WebhookTarget, StoreError> {
    WebhookTarget::parse(s).ok_or(StoreError::Corrupt {
        what: "unknown webhook target",
    })
}

/// The query of [`EndedRow`]s: the notifications `filter` selects, with
/// their last attempt found by `order` (SQLite's rowid, PostgreSQL's seq).
/// For a delivered one, the last attempt of the provider that delivered it:
/// a hedged round records the request that lost after the one that won, and
/// the event should name the delivery, not the loser's late answer.
pub(crate) fn ended_query(order: &str, filter: &str) -> String {
    format!(
        "SELECT n.id, n.channel, n.status, n.created_at, n.updated_at, n.last_error,
                n.callback_url,
                (SELECT COUNT(*) FROM attempts WHERE notification_id = n.id),
                a.provider, a.outcome, a.http_status, a.error
           FROM notifications n
           LEFT JOIN attempts a
                  ON a.{order} = (SELECT MAX({order}) FROM attempts
                                   WHERE notification_id = n.id
                                     AND (n.delivered_by IS NULL
                                          OR provider = n.delivered_by))
          WHERE {filter}"
    )
}

/// A notification that just ended, with its attempts summed up: id,
/// channel, status, created_at, updated_at, last_error, callback_url, the
/// attempts' count, then the last attempt's provider, outcome, http_status
/// and error (NULL without one). Metadata comes apart.
pub(crate) struct EndedRow {
    pub id: NotificationId,
    pub channel: String,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_error: Option<String>,
    pub callback_url: Option<String>,
    pub attempts: i64,
    pub last_provider: Option<String>,
    pub last_outcome: Option<String>,
    pub last_http_status: Option<i64>,
    pub last_attempt_error: Option<String>,
}

impl EndedRow {
    pub fn decode(
        self,
        metadata: BTreeMap<String, String>,
    ) -> Result<EndedNotification, StoreError> {
        let last_attempt = match (self.last_provider, self.last_outcome) {
            (Some(provider), Some(outcome)) => Some(LastAttempt {
                provider,
                outcome,
                http_status: self.last_http_status.and_then(|s| u16::try_from(s).ok()),
                error: self.last_attempt_error,
            }),
            _ => None,
        };
        Ok(EndedNotification {
            id: self.id,
            channel: channel_from(&self.channel)?,
            status: status_from(&self.status)?,
            created_at: UnixMillis(self.created_at),
            ended_at: UnixMillis(self.updated_at),
            error: self.last_error,
            attempts: count(self.attempts),
            last_attempt,
            metadata,
            callback_url: self.callback_url,
        })
    }
}

/// The columns of an outbox row that [`ClaimedWebhookRow`] reads, in order.
pub(crate) const CLAIMED_WEBHOOK_COLUMNS: &str =
    "id, notification_id, event, target, url, payload, attempts, created_at";

pub(crate) struct ClaimedWebhookRow {
    pub id: WebhookId,
    pub notification_id: NotificationId,
    pub event: String,
    pub target: String,
    pub url: String,
    pub payload: String,
    pub attempts: i64,
    pub created_at: i64,
}

impl ClaimedWebhookRow {
    pub fn decode(
        self,
        lease: LeaseToken,
        lease_until: UnixMillis,
    ) -> Result<ClaimedWebhook, StoreError> {
        Ok(ClaimedWebhook {
            id: self.id,
            notification_id: self.notification_id,
            event: event_from(&self.event)?,
            target: target_from(&self.target)?,
            url: self.url,
            payload: Bytes::from(self.payload),
            attempts: count(self.attempts),
            created_at: UnixMillis(self.created_at),
            lease,
            lease_until,
        })
    }
}

/// The columns of an outbox row that [`WebhookRow`] reads, in order.
pub(crate) const WEBHOOK_COLUMNS: &str = "id, notification_id, event, target, url, status, \
     attempts, created_at, updated_at, due_at, last_http_status, last_error";

pub(crate) struct WebhookRow {
    pub id: WebhookId,
    pub notification_id: NotificationId,
    pub event: String,
    pub target: String,
    pub url: String,
    pub status: String,
    pub attempts: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub due_at: Option<i64>,
    pub last_http_status: Option<i64>,
    pub last_error: Option<String>,
}

impl WebhookRow {
    pub fn decode(self) -> Result<WebhookDeliveryRecord, StoreError> {
        let status = webhook_status_from(&self.status)?;
        let mut url = self.url;
        if let Some(query) = url.find(['?', '#']) {
            url.truncate(query);
        }
        Ok(WebhookDeliveryRecord {
            id: self.id,
            notification_id: self.notification_id,
            event: event_from(&self.event)?,
            target: target_from(&self.target)?,
            url,
            // A sending row's due_at is its lease, not a planned attempt.
            next_attempt_at: (status == WebhookStatus::Pending)
                .then_some(self.due_at)
                .flatten()
                .map(UnixMillis),
            status,
            attempts: count(self.attempts),
            created_at: UnixMillis(self.created_at),
            updated_at: UnixMillis(self.updated_at),
            last_http_status: self.last_http_status.and_then(|s| u16::try_from(s).ok()),
            last_error: self.last_error,
        })
    }
}
