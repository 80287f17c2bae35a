//! Versioned migrations, applied under an advisory lock so that instances
//! starting at once take turns instead of racing.

use tokio_postgres::Client;

use super::pg;
use crate::store::StoreError;

/// Held for the duration of the migration transaction; any 64-bit key no
/// other application on the database uses.
const MIGRATION_LOCK: i64 = 0x4845_5241_4c44_0001; // "HERALD" 1

/// Each migration runs once, in order, in the same transaction as its
/// record in `herald_migrations`. Never edit one that has shipped: add the
/// next.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "
CREATE TABLE notifications (
    id           uuid PRIMARY KEY,
    channel      text NOT NULL,
    payload      text NOT NULL,
    status       text NOT NULL CHECK (status IN
                     ('queued', 'sending', 'retrying', 'delivered', 'failed', 'dead')),
    -- When the notification is next due: its next round while queued or
    -- retrying, the end of its lease while sending, NULL once final.
    due_at       bigint,
    lease_token  bigint,
    rounds       integer NOT NULL DEFAULT 0,
    created_at   bigint NOT NULL,
    updated_at   bigint NOT NULL,
    expires_at   bigint NOT NULL,
    delivered_by text,
    last_error   text
);
-- Rows churn (every round rewrites one): vacuum early.
ALTER TABLE notifications SET (autovacuum_vacuum_scale_factor = 0.02,
                               autovacuum_vacuum_insert_scale_factor = 0.05);
-- Only unfinished rows are indexed, so finished ones cost the claim nothing.
CREATE INDEX notifications_due ON notifications (due_at)
    WHERE status IN ('queued', 'retrying', 'sending');
CREATE INDEX notifications_status ON notifications (status, id);
CREATE TABLE attempts (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id uuid NOT NULL,
    started_at      bigint NOT NULL,
    provider        text NOT NULL,
    duration_ms     bigint NOT NULL,
    outcome         text NOT NULL,
    http_status     integer,
    error           text
);
CREATE INDEX attempts_by_notification ON attempts (notification_id, seq);
",
    ),
    (
        2,
        // The id a real provider gave the message (Twilio's sid, SendGrid's
        // X-Message-Id, an SMTP queue reply), to match its later reports.
        "ALTER TABLE attempts ADD COLUMN provider_message_id text;",
    ),
    (
        3,
        // Scheduling, cancel, the client's deadline and priorities.
        // `expires_at` stays Herald's retry age (then `dead`); `deliver_by`
        // is the client's deadline (then `expired`). Priority 0 is high, 1
        // normal, 2 low: claims take them in that order, each in due order.
        "
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check CHECK (status IN
    ('scheduled', 'queued', 'sending', 'retrying', 'delivered', 'failed', 'dead',
     'canceled', 'expired'));
ALTER TABLE notifications ADD COLUMN deliver_by bigint;
ALTER TABLE notifications ADD COLUMN priority smallint NOT NULL DEFAULT 1;
DROP INDEX notifications_due;
CREATE INDEX notifications_claim ON notifications (priority, due_at)
    WHERE status IN ('scheduled', 'queued', 'retrying', 'sending');
",
    ),
    (
        4,
        // Idempotency keys: a client's retry finds its first answer here.
        "
CREATE TABLE idempotency_keys (
    scope       text NOT NULL,
    key         text NOT NULL,
    fingerprint text NOT NULL,
    status_code integer NOT NULL,
    response    text NOT NULL,
    created_at  bigint NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
",
    ),
    (
        5,
        // One row that readiness checks rewrite: a write that cannot commit
        // (a full disk, a read-only database) makes the instance not ready.
        "CREATE TABLE health_probe (id integer PRIMARY KEY, at bigint NOT NULL);",
    ),
    (
        6,
        // A client's metadata: a small string map per notification, one row
        // per entry so that a listing can filter by one key through an index.
        "
CREATE TABLE notification_metadata (
    notification_id uuid NOT NULL,
    key             text NOT NULL,
    value           text NOT NULL,
    PRIMARY KEY (notification_id, key)
);
CREATE INDEX notification_metadata_by_value
    ON notification_metadata (key, value, notification_id);
",
    ),
    (
        7,
        // API keys: only a SHA-256 of each; every instance reads them all.
        "
CREATE TABLE api_keys (
    name         text PRIMARY KEY,
    key_hash     bytea NOT NULL UNIQUE,
    scopes       text NOT NULL,
    rate_per_sec double precision,
    burst        integer,
    created_at   bigint NOT NULL,
    revoked_at   bigint
);
",
    ),
    (
        8,
        // Providers an operator took out of rotation, by name: kept across
        // restarts and reloads, read by every instance.
        "
CREATE TABLE disabled_providers (
    name        text PRIMARY KEY,
    disabled_at bigint NOT NULL
);
",
    ),
    (
        9,
        // Status webhooks: a notification's own callback URL, and the
        // outbox of deliveries (one per event and receiver), written with
        // the transition that ended the notification. `due_at` is the next
        // attempt while pending, the lease's end while sending, NULL once
        // delivered or failed; only unfinished rows are in its index.
        "
ALTER TABLE notifications ADD COLUMN callback_url text;
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    notification_id  uuid NOT NULL,
    event            text NOT NULL CHECK (event IN ('notification.delivered',
                         'notification.failed', 'notification.dead', 'notification.expired')),
    target           text NOT NULL CHECK (target IN ('endpoint', 'callback')),
    url              text NOT NULL,
    payload          text NOT NULL,
    status           text NOT NULL CHECK (status IN ('pending', 'sending', 'delivered', 'failed')),
    due_at           bigint,
    lease_token      bigint,
    attempts         integer NOT NULL DEFAULT 0,
    created_at       bigint NOT NULL,
    updated_at       bigint NOT NULL,
    last_http_status integer,
    last_error       text
);
ALTER TABLE webhook_deliveries SET (autovacuum_vacuum_scale_factor = 0.02,
                                    autovacuum_vacuum_insert_scale_factor = 0.05);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (due_at)
    WHERE status IN ('pending', 'sending');
CREATE INDEX webhook_deliveries_status ON webhook_deliveries (status, id);
",
    ),
    (
        10,
        // The client asked for hedged sends (a second provider when the
        // first is slow).
        "ALTER TABLE notifications ADD COLUMN hedge boolean NOT NULL DEFAULT false;",
    ),
    (
        11,
        // The API key that sent a notification, by name (names are never
        // reused): a key without the admin scope sees and cancels only its
        // own, and lists them through this index. NULL: sent with keys off.
        "
ALTER TABLE notifications ADD COLUMN created_by text;
CREATE INDEX notifications_created_by ON notifications (created_by, id)
    WHERE created_by IS NOT NULL;
",
    ),
    (
        12,
        // Honest statuses: what a provider accepted was called `delivered`;
        // it is `sent`, and `delivered` is left for a provider's receipt
        // (with `undelivered` and `bounced`). The outbox's events of those
        // ends are renamed with them, payload and all, so a pending one goes
        // out under the new name.
        "
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
UPDATE notifications SET status = 'sent' WHERE status = 'delivered';
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check CHECK (status IN
    ('scheduled', 'queued', 'sending', 'retrying', 'sent', 'delivered', 'undelivered',
     'bounced', 'failed', 'dead', 'canceled', 'expired'));
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_event_check;
UPDATE webhook_deliveries
   SET event = 'notification.sent',
       payload = jsonb_set(jsonb_set(payload::jsonb, '{type}', '\"notification.sent\"'),
                           '{data,status}', '\"sent\"')::text
 WHERE event = 'notification.delivered';
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_event_check CHECK (event IN
    ('notification.sent', 'notification.delivered', 'notification.undelivered',
     'notification.bounced', 'notification.failed', 'notification.dead',
     'notification.expired'));
",
    ),
];

/// Applies every migration this database lacks; returns how many.
pub async fn migrate(client: &mut Client) -> Result<usize, StoreError> {
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS herald_migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pg)?;
    let newest: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM herald_migrations",
            &[],
        )
        .await
        .map_err(pg)?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if newest > known {
        return Err(StoreError::Corrupt {
            what: "the database was migrated by a newer Herald",
        });
    }
    let mut applied = 0;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > newest) {
        tx.batch_execute(sql).await.map_err(pg)?;
        tx.execute(
            "INSERT INTO herald_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(pg)?;
        tracing::info!(version, "applied a database migration");
        applied += 1;
    }
    tx.commit().await.map_err(pg)?;
    Ok(applied)
}
