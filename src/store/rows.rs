//! Rows as both engines read them, decoded into the domain in one place.
//!
//! Each engine only takes its columns out in the order named here (SQLite
//! and PostgreSQL differ in their integer and id types, nothing else); what
//! the values mean, and which of them are invalid, is decided below.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{Claimed, LeaseToken, NotificationRecord, NotificationSummary, StoreError};
use crate::domain::{
    Attempt, AttemptOutcome, Channel, NotificationId, Priority, Status, UnixMillis,
};

/// The columns of a notification that [`RecordRow`] reads, in order.
pub(crate) const RECORD_COLUMNS: &str = "channel, status, priority, created_at, updated_at, \
     due_at, expires_at, deliver_by, rounds, delivered_by, last_error, payload, hedge";

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
    pub hedge: bool,
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
