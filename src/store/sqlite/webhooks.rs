//! The webhook outbox in SQLite: rows added by the writer inside the
//! transaction that ends their notification; claims, results and the purge
//! written by the writer like everything else; listings on the reader.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::backend;
use crate::domain::webhook::WebhookId;
use crate::domain::{NotificationId, UnixMillis};
use crate::store::outbox::{WebhookRoutes, listing_query, webhook_columns};
use crate::store::rows::{
    CLAIMED_WEBHOOK_COLUMNS, ClaimedWebhookRow, EndedRow, WebhookRow, ended_query, id_from_bytes,
    webhook_id_from_bytes, webhook_status_from,
};
use crate::store::{
    ClaimedWebhook, LeaseLost, LeaseToken, RedeliverOutcome, StoreError, WebhookDeliveryRecord,
    WebhookReport, WebhookStatus,
};

/// Where the writer's transaction sends events, and how many rows it added
/// (to poke the webhook worker once the transaction committed).
pub(super) struct Outbox<'a> {
    pub routes: &'a WebhookRoutes,
    pub added: Cell<usize>,
}

/// Adds the outbox rows of notifications that just ended (inside the
/// transaction that ended them).
pub(super) fn record_endings(
    conn: &Connection,
    outbox: &Outbox<'_>,
    ended: &[NotificationId],
) -> Result<(), StoreError> {
    if outbox.routes.is_empty() || ended.is_empty() {
        return Ok(());
    }
    let routed = outbox.routes.routed_statuses();
    let mut read = conn
        .prepare_cached(&ended_query("rowid", "n.id = ?1"))
        .map_err(backend)?;
    let mut metadata = conn
        .prepare_cached("SELECT key, value FROM notification_metadata WHERE notification_id = ?1")
        .map_err(backend)?;
    let mut add = conn
        .prepare_cached(
            "INSERT INTO webhook_deliveries
                 (id, notification_id, event, target, url, payload, status, due_at,
                  created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7, ?7)",
        )
        .map_err(backend)?;
    for id in ended {
        let key = &id.as_bytes()[..];
        let row = read
            .query_row([key], |r| {
                Ok(EndedRow {
                    id: *id,
                    channel: r.get(1)?,
                    status: r.get(2)?,
                    created_at: r.get(3)?,
                    updated_at: r.get(4)?,
                    last_error: r.get(5)?,
                    callback_url: r.get(6)?,
                    attempts: r.get(7)?,
                    last_provider: r.get(8)?,
                    last_outcome: r.get(9)?,
                    last_http_status: r.get(10)?,
                    last_attempt_error: r.get(11)?,
                })
            })
            .optional()
            .map_err(backend)?;
        let Some(row) = row else { continue };
        let wanted = routed.contains(&row.status.as_str())
            || (outbox.routes.callbacks && row.callback_url.is_some());
        if !wanted {
            continue;
        }
        let labels: BTreeMap<String, String> = metadata
            .query_map([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        for d in outbox.routes.deliveries(&row.decode(labels)?) {
            add.execute(params![
                &d.id.as_bytes()[..],
                key,
                d.event.as_str(),
                d.target.as_str(),
                d.url,
                d.payload,
                d.created_at.0
            ])
            .map_err(backend)?;
            outbox.added.set(outbox.added.get() + 1);
        }
    }
    Ok(())
}

pub(super) fn claim(
    conn: &Connection,
    now: UnixMillis,
    limit: usize,
    lease: Duration,
) -> Result<Vec<ClaimedWebhook>, StoreError> {
    let token = LeaseToken::random();
    let lease_until = now.plus(lease);
    // `LIMIT ?4 + 0`, as in the notifications' claim: a bare parameter
    // would have the statement prepared again on every run.
    let mut stmt = conn
        .prepare_cached(&format!(
            "UPDATE webhook_deliveries
                SET status = 'sending', lease_token = ?1, due_at = ?2, updated_at = ?3
              WHERE id IN (SELECT id FROM webhook_deliveries INDEXED BY webhook_deliveries_due
                            WHERE status IN ('pending', 'sending') AND due_at <= ?3
                            ORDER BY due_at LIMIT ?4 + 0)
             RETURNING {CLAIMED_WEBHOOK_COLUMNS}"
        ))
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![token.0, lease_until.0, now.0, limit as i64], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                ClaimedWebhookRow {
                    id: WebhookId::from_bytes([0; 16]),
                    notification_id: NotificationId::default(),
                    event: r.get(2)?,
                    target: r.get(3)?,
                    url: r.get(4)?,
                    payload: r.get(5)?,
                    attempts: r.get(6)?,
                    created_at: r.get(7)?,
                },
            ))
        })
        .map_err(backend)?;
    rows.map(|row| {
        let (id, notification_id, row) = row.map_err(backend)?;
        ClaimedWebhookRow {
            id: webhook_id_from_bytes(&id)?,
            notification_id: id_from_bytes(&notification_id)?,
            ..row
        }
        .decode(token, lease_until)
    })
    .collect()
}

pub(super) fn complete(
    conn: &Connection,
    reports: &[WebhookReport],
) -> Result<Vec<Result<(), LeaseLost>>, StoreError> {
    let mut update = conn
        .prepare_cached(
            "UPDATE webhook_deliveries
                SET status = ?1, due_at = ?2, attempts = attempts + ?3, lease_token = NULL,
                    last_http_status = CASE WHEN ?3 = 1 THEN ?4 ELSE last_http_status END,
                    last_error = CASE WHEN ?3 = 1 THEN ?5 ELSE last_error END,
                    updated_at = ?6
              WHERE id = ?7 AND lease_token = ?8 AND status = 'sending'",
        )
        .map_err(backend)?;
    reports
        .iter()
        .map(|r| {
            let c = webhook_columns(r);
            let changed = update
                .execute(params![
                    c.status,
                    c.due_at,
                    i64::from(c.counted),
                    c.http_status,
                    c.error,
                    r.at.0,
                    &r.id.as_bytes()[..],
                    r.lease.0
                ])
                .map_err(backend)?;
            Ok(if changed == 1 { Ok(()) } else { Err(LeaseLost) })
        })
        .collect()
}

pub(super) fn redeliver(
    conn: &Connection,
    outbox: &Outbox<'_>,
    id: WebhookId,
    now: UnixMillis,
) -> Result<RedeliverOutcome, StoreError> {
    let key = &id.as_bytes()[..];
    let status: Option<String> = conn
        .query_row(
            "SELECT status FROM webhook_deliveries WHERE id = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    let Some(status) = status else {
        return Ok(RedeliverOutcome::NotFound);
    };
    let status = webhook_status_from(&status)?;
    if status != WebhookStatus::Failed {
        return Ok(RedeliverOutcome::NotFailed(status));
    }
    conn.execute(
        "UPDATE webhook_deliveries
            SET status = 'pending', due_at = ?2, attempts = 0, lease_token = NULL,
                created_at = ?2, updated_at = ?2
          WHERE id = ?1",
        params![key, now.0],
    )
    .map_err(backend)?;
    outbox.added.set(outbox.added.get() + 1);
    Ok(RedeliverOutcome::Requeued)
}

pub(super) fn purge(
    conn: &Connection,
    before: UnixMillis,
    limit: usize,
) -> Result<u64, StoreError> {
    // Updated before `before` means created before it too: the id bound
    // keeps the walk of the (status, id) index to those rows.
    let created_before = WebhookId::first_at(before);
    let gone = conn
        .prepare_cached(
            "DELETE FROM webhook_deliveries
              WHERE rowid IN (SELECT rowid FROM webhook_deliveries
                               WHERE status = 'delivered' AND id < ?3 AND updated_at < ?1
                               LIMIT ?2)",
        )
        .map_err(backend)?
        .execute(params![
            before.0,
            limit as i64,
            &created_before.as_bytes()[..]
        ])
        .map_err(backend)?;
    Ok(gone as u64)
}

pub(super) fn list(
    conn: &Connection,
    status: Option<WebhookStatus>,
    after: Option<WebhookId>,
    limit: usize,
) -> Result<Vec<WebhookDeliveryRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&listing_query(status.is_some(), |n| format!("?{n}")))
        .map_err(backend)?;
    let after = after.unwrap_or(WebhookId::first_at(UnixMillis(0)));
    let rows = stmt
        .query_map(
            params![
                status.map(WebhookStatus::as_str),
                &after.as_bytes()[..],
                limit as i64
            ],
            |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    WebhookRow {
                        id: WebhookId::from_bytes([0; 16]),
                        notification_id: NotificationId::default(),
                        event: r.get(2)?,
                        target: r.get(3)?,
                        url: r.get(4)?,
                        status: r.get(5)?,
                        attempts: r.get(6)?,
                        created_at: r.get(7)?,
                        updated_at: r.get(8)?,
                        due_at: r.get(9)?,
                        last_http_status: r.get(10)?,
                        last_error: r.get(11)?,
                    },
                ))
            },
        )
        .map_err(backend)?;
    rows.map(|row| {
        let (id, notification_id, row) = row.map_err(backend)?;
        WebhookRow {
            id: webhook_id_from_bytes(&id)?,
            notification_id: id_from_bytes(&notification_id)?,
            ..row
        }
        .decode()
    })
    .collect()
}

pub(super) fn backlog(conn: &Connection) -> Result<Vec<(WebhookStatus, u64)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT status, COUNT(*) FROM webhook_deliveries INDEXED BY webhook_deliveries_due
              WHERE status IN ('pending', 'sending') GROUP BY status",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(backend)?;
    rows.map(|row| {
        let (status, n) = row.map_err(backend)?;
        Ok((webhook_status_from(&status)?, n as u64))
    })
    .collect()
}
