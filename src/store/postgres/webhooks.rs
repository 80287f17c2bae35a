//! The webhook outbox in PostgreSQL: rows added inside the transaction
//! that ends their notification (the writer's, or a claim's that finds
//! notifications past their deadline); claims with `FOR UPDATE SKIP
//! LOCKED`, so instances share the deliveries and never take the same one.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{WEBHOOKS_CHANNEL, id_from, pg};
use crate::domain::UnixMillis;
use crate::domain::webhook::WebhookId;
use crate::store::outbox::{WebhookRoutes, listing_query, webhook_columns};
use crate::store::rows::{
    CLAIMED_WEBHOOK_COLUMNS, ClaimedWebhookRow, EndedRow, WebhookRow, ended_query,
    webhook_status_from,
};
use crate::store::{
    ClaimedWebhook, LeaseLost, LeaseToken, RedeliverOutcome, StoreError, WebhookDeliveryRecord,
    WebhookReport, WebhookStatus,
};

fn webhook_id(u: Uuid) -> WebhookId {
    WebhookId::from_bytes(*u.as_bytes())
}

/// Adds the outbox rows of the notifications `ended` in `tx`; returns how
/// many.
pub(super) async fn record_endings(
    tx: &Transaction<'_>,
    routes: &WebhookRoutes,
    ended: &[Uuid],
) -> Result<usize, StoreError> {
    if routes.is_empty() || ended.is_empty() {
        return Ok(0);
    }
    // Only endings some receiver takes are read back.
    let read = tx
        .prepare_cached(&ended_query(
            "seq",
            "n.id = ANY($1) AND (n.status = ANY($2) OR ($3 AND n.callback_url IS NOT NULL))",
        ))
        .await
        .map_err(pg)?;
    let routed = routes.routed_statuses();
    let rows = tx
        .query(&read, &[&ended, &routed, &routes.callbacks])
        .await
        .map_err(pg)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let labels = tx
        .prepare_cached(
            "SELECT notification_id, key, value FROM notification_metadata
              WHERE notification_id = ANY($1)",
        )
        .await
        .map_err(pg)?;
    let mut metadata: HashMap<Uuid, BTreeMap<String, String>> = HashMap::new();
    for r in tx.query(&labels, &[&ids]).await.map_err(pg)? {
        metadata
            .entry(r.get(0))
            .or_default()
            .insert(r.get(1), r.get(2));
    }
    let mut deliveries = Vec::new();
    for r in &rows {
        let id: Uuid = r.get(0);
        let row = EndedRow {
            id: id_from(id),
            channel: r.get(1),
            status: r.get(2),
            created_at: r.get(3),
            updated_at: r.get(4),
            last_error: r.get(5),
            callback_url: r.get(6),
            attempts: r.get(7),
            last_provider: r.get(8),
            last_outcome: r.get(9),
            last_http_status: r.get::<_, Option<i32>>(10).map(i64::from),
            last_attempt_error: r.get(11),
        };
        let ended = row.decode(metadata.remove(&id).unwrap_or_default())?;
        deliveries.extend(routes.deliveries(&ended));
    }
    if deliveries.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id.as_uuid()).collect();
    let notifications: Vec<Uuid> = deliveries
        .iter()
        .map(|d| d.notification_id.as_uuid())
        .collect();
    let events: Vec<&str> = deliveries.iter().map(|d| d.event.as_str()).collect();
    let targets: Vec<&str> = deliveries.iter().map(|d| d.target.as_str()).collect();
    let urls: Vec<&str> = deliveries.iter().map(|d| d.url.as_str()).collect();
    let payloads: Vec<&str> = deliveries.iter().map(|d| d.payload.as_str()).collect();
    let ats: Vec<i64> = deliveries.iter().map(|d| d.created_at.0).collect();
    let add = tx
        .prepare_cached(
            "INSERT INTO webhook_deliveries
                 (id, notification_id, event, target, url, payload, status, due_at,
                  created_at, updated_at)
             SELECT id, nid, event, target, url, payload, 'pending', at, at, at
               FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                           $6::text[], $7::int8[])
                 AS d(id, nid, event, target, url, payload, at)",
        )
        .await
        .map_err(pg)?;
    tx.execute(
        &add,
        &[
            &ids,
            &notifications,
            &events,
            &targets,
            &urls,
            &payloads,
            &ats,
        ],
    )
    .await
    .map_err(pg)?;
    // Delivered at commit: the other instances' workers wake too.
    tx.execute("SELECT pg_notify($1, '')", &[&WEBHOOKS_CHANNEL])
        .await
        .map_err(pg)?;
    Ok(deliveries.len())
}

pub(super) async fn claim(
    client: &impl GenericClient,
    now: UnixMillis,
    limit: usize,
    lease: Duration,
) -> Result<Vec<ClaimedWebhook>, StoreError> {
    let token = LeaseToken::random();
    let lease_until = now.plus(lease);
    let stmt = client
        .prepare_cached(&format!(
            "WITH due AS (
                 SELECT id FROM webhook_deliveries
                  WHERE status IN ('pending', 'sending') AND due_at <= $3
                  ORDER BY due_at
                  LIMIT $4
                  FOR UPDATE SKIP LOCKED)
             UPDATE webhook_deliveries
                SET status = 'sending', lease_token = $1, due_at = $2, updated_at = $3
              WHERE id IN (SELECT id FROM due)
             RETURNING {CLAIMED_WEBHOOK_COLUMNS}"
        ))
        .await
        .map_err(pg)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(&stmt, &[&token.0, &lease_until.0, &now.0, &limit])
        .await
        .map_err(pg)?;
    rows.iter()
        .map(|r| {
            ClaimedWebhookRow {
                id: webhook_id(r.get(0)),
                notification_id: id_from(r.get(1)),
                event: r.get(2),
                target: r.get(3),
                url: r.get(4),
                payload: r.get(5),
                attempts: r.get::<_, i32>(6).into(),
                created_at: r.get(7),
            }
            .decode(token, lease_until)
        })
        .collect()
}

pub(super) async fn complete(
    client: &impl GenericClient,
    reports: &[WebhookReport],
) -> Result<Vec<Result<(), LeaseLost>>, StoreError> {
    let n = reports.len();
    let mut ids: Vec<Uuid> = Vec::with_capacity(n);
    let mut leases: Vec<i64> = Vec::with_capacity(n);
    let mut statuses: Vec<&str> = Vec::with_capacity(n);
    let mut dues: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut counted: Vec<i32> = Vec::with_capacity(n);
    let mut http: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut ats: Vec<i64> = Vec::with_capacity(n);
    let mut ords: Vec<i32> = Vec::with_capacity(n);
    for (i, r) in reports.iter().enumerate() {
        let c = webhook_columns(r);
        ids.push(r.id.as_uuid());
        leases.push(r.lease.0);
        statuses.push(c.status);
        dues.push(c.due_at);
        counted.push(i32::from(c.counted));
        http.push(c.http_status.map(i32::from));
        errors.push(c.error);
        ats.push(r.at.0);
        ords.push(i32::try_from(i).unwrap_or(i32::MAX));
    }
    let stmt = client
        .prepare_cached(
            "UPDATE webhook_deliveries AS w SET
                 status = r.status,
                 due_at = r.due_at,
                 attempts = w.attempts + r.counted,
                 lease_token = NULL,
                 last_http_status = CASE WHEN r.counted = 1 THEN r.http ELSE w.last_http_status END,
                 last_error = CASE WHEN r.counted = 1 THEN r.error ELSE w.last_error END,
                 updated_at = r.at
               FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::int8[], $5::int4[],
                           $6::int4[], $7::text[], $8::int8[], $9::int4[])
                 AS r(id, lease, status, due_at, counted, http, error, at, ord)
              WHERE w.id = r.id AND w.lease_token = r.lease AND w.status = 'sending'
             RETURNING r.ord",
        )
        .await
        .map_err(pg)?;
    let rows = client
        .query(
            &stmt,
            &[
                &ids, &leases, &statuses, &dues, &counted, &http, &errors, &ats, &ords,
            ],
        )
        .await
        .map_err(pg)?;
    let mut outcomes = vec![Err(LeaseLost); n];
    for row in &rows {
        if let Some(o) = outcomes.get_mut(row.get::<_, i32>(0) as usize) {
            *o = Ok(());
        }
    }
    Ok(outcomes)
}

pub(super) async fn list(
    client: &impl GenericClient,
    status: Option<WebhookStatus>,
    after: Option<WebhookId>,
    limit: usize,
) -> Result<Vec<WebhookDeliveryRecord>, StoreError> {
    let stmt = client
        .prepare_cached(&listing_query(status.is_some(), |n| format!("${n}")))
        .await
        .map_err(pg)?;
    let after = after.unwrap_or(WebhookId::first_at(UnixMillis(0)));
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(
            &stmt,
            &[&status.map(WebhookStatus::as_str), &after.as_uuid(), &limit],
        )
        .await
        .map_err(pg)?;
    rows.iter().map(|r| webhook_row(r).decode()).collect()
}

fn webhook_row(r: &Row) -> WebhookRow {
    WebhookRow {
        id: webhook_id(r.get(0)),
        notification_id: id_from(r.get(1)),
        event: r.get(2),
        target: r.get(3),
        url: r.get(4),
        status: r.get(5),
        attempts: r.get::<_, i32>(6).into(),
        created_at: r.get(7),
        updated_at: r.get(8),
        due_at: r.get(9),
        last_http_status: r.get::<_, Option<i32>>(10).map(i64::from),
        last_error: r.get(11),
    }
}

pub(super) async fn backlog(
    client: &impl GenericClient,
) -> Result<Vec<(WebhookStatus, u64)>, StoreError> {
    let rows = client
        .query(
            "SELECT status, COUNT(*) FROM webhook_deliveries
              WHERE status IN ('pending', 'sending') GROUP BY status",
            &[],
        )
        .await
        .map_err(pg)?;
    rows.iter()
        .map(|r| Ok((webhook_status_from(r.get(0))?, r.get::<_, i64>(1) as u64)))
        .collect()
}

pub(super) async fn redeliver(
    tx: &Transaction<'_>,
    id: WebhookId,
    now: UnixMillis,
) -> Result<RedeliverOutcome, StoreError> {
    let key = id.as_uuid();
    let Some(row) = tx
        .query_opt(
            "SELECT status FROM webhook_deliveries WHERE id = $1 FOR UPDATE",
            &[&key],
        )
        .await
        .map_err(pg)?
    else {
        return Ok(RedeliverOutcome::NotFound);
    };
    let status = webhook_status_from(row.get(0))?;
    if status != WebhookStatus::Failed {
        return Ok(RedeliverOutcome::NotFailed(status));
    }
    tx.execute(
        "UPDATE webhook_deliveries
            SET status = 'pending', due_at = $2, attempts = 0, lease_token = NULL,
                created_at = $2, updated_at = $2
          WHERE id = $1",
        &[&key, &now.0],
    )
    .await
    .map_err(pg)?;
    tx.execute("SELECT pg_notify($1, '')", &[&WEBHOOKS_CHANNEL])
        .await
        .map_err(pg)?;
    Ok(RedeliverOutcome::Requeued)
}

pub(super) async fn purge(
    client: &impl GenericClient,
    before: UnixMillis,
    limit: usize,
) -> Result<u64, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // Updated before `before` means created before it too: the id bound
    // keeps the index walk to those rows.
    let created_before = WebhookId::first_at(before).as_uuid();
    client
        .execute(
            "DELETE FROM webhook_deliveries
              WHERE id IN (SELECT id FROM webhook_deliveries
                            WHERE status = 'delivered' AND id < $3 AND updated_at < $1
                            LIMIT $2)",
            &[&before.0, &limit, &created_before],
        )
        .await
        .map_err(pg)
}
