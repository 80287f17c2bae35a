//! Versioned migrations for the embedded store, recorded in SQLite's
//! `user_version`: one list, applied in order, each in its own transaction
//! with the version it brings, so an existing file is upgraded in place.

use rusqlite::Connection;

use super::backend;
use crate::store::StoreError;

/// Each migration runs once, in order. Never edit one that has shipped: add
/// the next.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "
CREATE TABLE notifications (
    id           BLOB PRIMARY KEY NOT NULL,
    channel      TEXT NOT NULL,
    payload      TEXT NOT NULL,
    status       TEXT NOT NULL,
    -- When the notification is next due: its next round while queued or
    -- retrying, the end of its lease while sending, NULL once final.
    due_at       INTEGER,
    lease_token  INTEGER,
    rounds       INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    delivered_by TEXT,
    last_error   TEXT
);
-- Only unfinished rows are indexed, so delivered ones cost the claim nothing.
CREATE INDEX notifications_due ON notifications (due_at)
    WHERE status IN ('queued', 'retrying', 'sending');
CREATE INDEX notifications_status ON notifications (status, id);
CREATE TABLE attempts (
    notification_id BLOB NOT NULL,
    started_at      INTEGER NOT NULL,
    provider        TEXT NOT NULL,
    duration_ms     INTEGER NOT NULL,
    outcome         TEXT NOT NULL,
    http_status     INTEGER,
    error           TEXT
);
CREATE INDEX attempts_by_notification ON attempts (notification_id);
",
    ),
    (
        2,
        // The id a real provider gave the message (Twilio's sid, SendGrid's
        // X-Message-Id, an SMTP queue reply), to match its later reports.
        "ALTER TABLE attempts ADD COLUMN provider_message_id TEXT;",
    ),
    (
        3,
        // Scheduling, the client's deadline and priorities. `expires_at`
        // stays Herald's retry age (then `dead`); `deliver_by` is the
        // client's deadline (then `expired`). Priority 0 is high, 1 normal,
        // 2 low: the claim walks each priority's due rows in due order.
        "
ALTER TABLE notifications ADD COLUMN deliver_by INTEGER;
ALTER TABLE notifications ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
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
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    response    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
",
    ),
    (
        5,
        // One row that readiness checks rewrite: a write that cannot commit
        // (a full disk) makes the instance not ready.
        "CREATE TABLE health_probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);",
    ),
    (
        6,
        // A client's metadata: a small string map per notification, one row
        // per entry so that a listing can filter by one key through an index.
        "
CREATE TABLE notification_metadata (
    notification_id BLOB NOT NULL,
    key             TEXT NOT NULL,
    value           TEXT NOT NULL,
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
    name         TEXT PRIMARY KEY NOT NULL,
    key_hash     BLOB NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    rate_per_sec REAL,
    burst        INTEGER,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);
",
    ),
    (
        8,
        // Providers an operator took out of rotation, by name: kept across
        // restarts and reloads, read by every instance.
        "
CREATE TABLE disabled_providers (
    name        TEXT PRIMARY KEY NOT NULL,
    disabled_at INTEGER NOT NULL
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
ALTER TABLE notifications ADD COLUMN callback_url TEXT;
CREATE TABLE webhook_deliveries (
    id               BLOB PRIMARY KEY NOT NULL,
    notification_id  BLOB NOT NULL,
    event            TEXT NOT NULL,
    target           TEXT NOT NULL,
    url              TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL,
    due_at           INTEGER,
    lease_token      INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    last_http_status INTEGER,
    last_error       TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (due_at)
    WHERE status IN ('pending', 'sending');
CREATE INDEX webhook_deliveries_status ON webhook_deliveries (status, id);
",
    ),
    (
        10,
        // The client asked for hedged sends (a second provider when the
        // first is slow).
        "ALTER TABLE notifications ADD COLUMN hedge INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        11,
        // The claim's index again, over the same rows: SQLite tests `status
        // IN (four values)` through a temporary table it builds for each
        // statement, so every insert and update of a row paid for one.
        // `due_at` is NULL exactly when a notification is final (rows that
        // say otherwise are made to agree first), and one NULL test costs
        // nothing.
        "
UPDATE notifications SET due_at = NULL
 WHERE due_at IS NOT NULL AND status NOT IN ('scheduled', 'queued', 'retrying', 'sending');
DROP INDEX notifications_claim;
CREATE INDEX notifications_claim ON notifications (priority, due_at) WHERE due_at IS NOT NULL;
",
    ),
    (
        12,
        // The API key that sent a notification, by name (names are never
        // reused): a key without the admin scope sees and cancels only its
        // own, and lists them through this index. NULL: sent with keys off.
        "
ALTER TABLE notifications ADD COLUMN created_by TEXT;
CREATE INDEX notifications_created_by ON notifications (created_by, id)
    WHERE created_by IS NOT NULL;
",
    ),
    (
        13,
        // Honest statuses: what a provider accepted was called `delivered`;
        // it is `sent`, and `delivered` is left for a provider's receipt.
        // The outbox's events of those ends are renamed with them, payload
        // and all, so a pending one goes out under the new name.
        "
UPDATE notifications SET status = 'sent' WHERE status = 'delivered';
UPDATE webhook_deliveries
   SET event = 'notification.sent',
       payload = json_set(payload, '$.type', 'notification.sent', '$.data.status', 'sent')
 WHERE event = 'notification.delivered';
",
    ),
];

/// The version a database has once every migration is applied.
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// Applies every migration this database lacks; returns how many.
pub fn migrate(conn: &Connection) -> Result<usize, StoreError> {
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    if current > latest() {
        return Err(StoreError::Corrupt {
            what: "the database was written by a newer Herald",
        });
    }
    let mut applied = 0;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        // The writer holds the only write connection, so no other process
        // of this store can be migrating beside it; BEGIN IMMEDIATE makes a
        // second process wait for the lock instead of failing half-way.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}\nPRAGMA user_version = {version}; COMMIT;"
        ))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            backend(e)
        })?;
        tracing::info!(version, "applied a database migration");
        applied += 1;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_by_one() {
        for (i, (v, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v, i as i64 + 1);
        }
    }

    #[test]
    fn an_empty_database_gets_every_migration_once() {
        let conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&conn).unwrap(), MIGRATIONS.len());
        assert_eq!(migrate(&conn).unwrap(), 0);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, latest());
    }

    #[test]
    fn a_version_1_database_is_upgraded_in_place() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!("{}\nPRAGMA user_version = 1;", MIGRATIONS[0].1))
            .unwrap();
        conn.execute(
            "INSERT INTO attempts (notification_id, started_at, provider, duration_ms, outcome)
             VALUES (x'00', 1, 'p', 2, 'delivered')",
            [],
        )
        .unwrap();
        assert_eq!(migrate(&conn).unwrap(), MIGRATIONS.len() - 1);
        let kept: i64 = conn
            .query_row("SELECT count(*) FROM attempts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 1);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!("PRAGMA user_version = {};", latest() + 1))
            .unwrap();
        assert!(matches!(migrate(&conn), Err(StoreError::Corrupt { .. })));
    }
}
