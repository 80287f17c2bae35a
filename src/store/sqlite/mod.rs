//! The embedded store: one SQLite file in WAL mode.
//!
//! Every write goes through one writer thread that owns the write
//! connection. It takes every command waiting in its queue and runs them in
//! one transaction, so one fsync commits many notifications (group commit);
//! each caller is answered only after that commit. Reads use their own
//! connection, which WAL lets run beside the writer.

mod schema;

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{
    Claimed, LeaseLost, LeaseToken, NewNotification, NotificationRecord, NotificationSummary,
    ReplayOutcome, RoundReport, Store, StoreError,
};
use crate::domain::{Attempt, AttemptOutcome, Channel, NotificationId, Status, UnixMillis};

/// SQLite's `synchronous` setting: `full` fsyncs every commit that
/// acknowledges something, so an accepted notification survives a power cut
/// (commits of claims and results alone ride on the next fsync).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
    Off,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Off => "OFF",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteOptions {
    pub synchronous: Synchronous,
    /// Most commands one transaction carries.
    pub max_batch: usize,
    /// Commands that may wait for the writer before callers are held back.
    pub queue_depth: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            max_batch: 1024,
            queue_depth: 16_384,
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Command {
    Insert(NewNotification, Reply<()>),
    Claim {
        now: UnixMillis,
        limit: usize,
        lease: Duration,
        reply: Reply<Vec<Claimed>>,
    },
    Complete(Vec<RoundReport>, Reply<Vec<Result<(), LeaseLost>>>),
    Replay {
        id: NotificationId,
        now: UnixMillis,
        expires_at: UnixMillis,
        reply: Reply<ReplayOutcome>,
    },
    Purge {
        before: UnixMillis,
        limit: usize,
        reply: Reply<u64>,
    },
    Ping(Reply<()>),
    Close(Reply<()>),
}

/// A command's answer, held until the transaction that made it commits:
/// called with the failure that undid the transaction, if one did.
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

/// `result` is `None` when the command never ran because the transaction
/// could not begin; its answer is then always called with that failure.
fn answer<T: Send + 'static>(reply: Reply<T>, result: Option<Result<T, StoreError>>) -> Answer {
    Box::new(move |failure| {
        let result = match (failure, result) {
            (None, Some(result)) => result,
            (failure, _) => Err(StoreError::Backend(Box::new(CommitFailed(
                failure
                    .unwrap_or("the transaction did not begin")
                    .to_owned(),
            )))),
        };
        // A caller that went away (its request was cancelled) is not an error.
        drop(reply.send(result));
    })
}

#[derive(Debug, thiserror::Error)]
#[error("the transaction could not commit: {0}")]
struct CommitFailed(String);

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// A failed write this recent still makes [`Store::ping`] fail: with a full
/// disk, the small probe may find room that real writes do not.
const RECENT_FAILURE_MS: i64 = 5_000;

pub struct SqliteStore {
    commands: mpsc::Sender<Command>,
    reader: Arc<Mutex<Connection>>,
    /// When a transaction last failed to commit (ms since the epoch; 0: never).
    last_failure: Arc<AtomicI64>,
}

impl SqliteStore {
    pub async fn open(path: &str, options: SqliteOptions) -> Result<Self, StoreError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(Path::new(&path), options))
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))?
    }

    fn open_blocking(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        let writer = Connection::open(path).map_err(backend)?;
        writer
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = {};
                 PRAGMA busy_timeout = 5000;
                 PRAGMA foreign_keys = OFF;",
                options.synchronous.pragma()
            ))
            .map_err(backend)?;
        schema::migrate(&writer)?;
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(backend)?;
        reader
            .execute_batch("PRAGMA busy_timeout = 5000;")
            .map_err(backend)?;

        let (tx, rx) = mpsc::channel(options.queue_depth.max(1));
        let max_batch = options.max_batch.max(1);
        let last_failure = Arc::new(AtomicI64::new(0));
        let failures = Arc::clone(&last_failure);
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx, max_batch, options.synchronous, &failures))
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(Self {
            commands: tx,
            reader: Arc::new(Mutex::new(reader)),
            last_failure,
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Backend(Box::new(e)))?
    }
}

fn writer_loop(
    conn: Connection,
    mut rx: mpsc::Receiver<Command>,
    max_batch: usize,
    synchronous: Synchronous,
    last_failure: &AtomicI64,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut syncing = true;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        if synchronous == Synchronous::Full {
            let sync = batch.iter().any(must_sync);
            if sync != syncing {
                let mode = if sync {
                    Synchronous::Full
                } else {
                    Synchronous::Normal
                };
                match conn.execute_batch(&format!("PRAGMA synchronous = {}", mode.pragma())) {
                    Ok(()) => syncing = sync,
                    Err(e) => tracing::warn!(error = %e, "could not switch PRAGMA synchronous"),
                }
            }
        }
        let closing = batch.iter().any(|c| matches!(c, Command::Close(_)));
        let (started, writes) = (std::time::Instant::now(), batch.len());
        let committed = run_batch(&conn, batch.drain(..));
        crate::metrics::metrics().store_commit(started.elapsed(), writes);
        if !committed {
            last_failure.store(UnixMillis::now().0, Ordering::Relaxed);
        }
        if closing {
            break;
        }
    }
}

/// Whether a power cut undoing this command's commit could break a promise.
/// Claims and results cannot: undone, they make a round run again (a second
/// send, which a crash at the wrong moment causes anyway). Their commits
/// skip the fsync; the next commit that syncs covers them as well, since
/// the write-ahead log is synced as a whole, in order.
fn must_sync(cmd: &Command) -> bool {
    !matches!(
        cmd,
        Command::Claim { .. } | Command::Complete(..) | Command::Purge { .. } | Command::Ping(_)
    )
}

/// Runs `commands` in one transaction; returns whether it committed.
fn run_batch(conn: &Connection, commands: impl Iterator<Item = Command>) -> bool {
    let begun = conn.execute_batch("BEGIN IMMEDIATE");
    let answers: Vec<Answer> = commands
        .map(|cmd| execute(conn, cmd, begun.is_ok()))
        .collect();
    let committed = match begun {
        Ok(()) => conn.execute_batch("COMMIT").map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(message) = &committed {
        let _ = conn.execute_batch("ROLLBACK");
        tracing::error!(error = %message, "sqlite transaction failed; its callers are told");
    }
    let failure = committed.as_ref().err().map(String::as_str);
    for answer in answers {
        answer(failure);
    }
    committed.is_ok()
}

/// Runs one command inside the open transaction (`open`), or not at all.
fn execute(conn: &Connection, cmd: Command, open: bool) -> Answer {
    match cmd {
        Command::Insert(n, reply) => answer(reply, open.then(|| insert(conn, &n))),
        Command::Claim {
            now,
            limit,
            lease,
            reply,
        } => answer(reply, open.then(|| claim(conn, now, limit, lease))),
        Command::Complete(reports, reply) => answer(reply, open.then(|| complete(conn, &reports))),
        Command::Replay {
            id,
            now,
            expires_at,
            reply,
        } => answer(reply, open.then(|| replay(conn, id, now, expires_at))),
        Command::Purge {
            before,
            limit,
            reply,
        } => answer(reply, open.then(|| purge(conn, before, limit))),
        Command::Ping(reply) => answer(reply, open.then(|| probe(conn))),
        Command::Close(reply) => answer(reply, open.then_some(Ok(()))),
    }
}

/// The smallest write that still has to reach the file.
fn probe(conn: &Connection) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO health_probe (id, at) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET at = excluded.at",
    )
    .and_then(|mut stmt| stmt.execute([UnixMillis::now().0]))
    .map_err(backend)?;
    Ok(())
}

fn insert(conn: &Connection, n: &NewNotification) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO notifications
                 (id, channel, payload, status, due_at, lease_token,
                  created_at, updated_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
        )
        .map_err(backend)?;
    let (status, due_at, token) = match n.lease {
        Some(lease) => ("sending", lease.until.0, Some(lease.token.0)),
        None => ("queued", n.created_at.0, None),
    };
    stmt.execute(params![
        &n.id.as_bytes()[..],
        n.channel.as_str(),
        n.payload,
        status,
        due_at,
        token,
        n.created_at.0,
        n.expires_at.0
    ])
    .map_err(backend)?;
    Ok(())
}

fn claim(
    conn: &Connection,
    now: UnixMillis,
    limit: usize,
    lease: Duration,
) -> Result<Vec<Claimed>, StoreError> {
    let token = LeaseToken::random();
    let lease_until = now.plus(lease);
    // Left to itself the planner walks the status index and sorts the whole
    // backlog on every claim; the partial index on due_at is the only one
    // that stays small and already in order.
    let mut stmt = conn
        .prepare_cached(
            "UPDATE notifications
                SET status = 'sending', lease_token = ?1, due_at = ?2, updated_at = ?3
              WHERE id IN (SELECT id FROM notifications INDEXED BY notifications_due
                            WHERE status IN ('queued', 'retrying', 'sending') AND due_at <= ?3
                            ORDER BY due_at LIMIT ?4)
             RETURNING id, channel, payload, rounds, created_at, expires_at",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(
            params![token.0, lease_until.0, now.0, limit as i64],
            |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, i64>(5)?,
                ))
            },
        )
        .map_err(backend)?;
    let mut claimed = Vec::with_capacity(limit.min(1024));
    for row in rows {
        let (id, channel, payload, rounds, created_at, expires_at) = row.map_err(backend)?;
        claimed.push(Claimed {
            id: id_from(&id)?,
            channel: channel_from(&channel)?,
            payload: Bytes::from(payload),
            rounds: rounds as u32,
            created_at: UnixMillis(created_at),
            expires_at: UnixMillis(expires_at),
            lease: token,
            lease_until,
        });
    }
    Ok(claimed)
}

fn complete(
    conn: &Connection,
    reports: &[RoundReport],
) -> Result<Vec<Result<(), LeaseLost>>, StoreError> {
    let mut update = conn
        .prepare_cached(
            "UPDATE notifications
                SET status = COALESCE(?1, CASE WHEN rounds + ?3 > 0 THEN 'retrying' ELSE 'queued' END),
                    due_at = ?2,
                    rounds = rounds + ?3,
                    lease_token = NULL,
                    delivered_by = COALESCE(?4, delivered_by),
                    last_error = COALESCE(?5, last_error),
                    updated_at = ?6
              WHERE id = ?7 AND lease_token = ?8 AND status = 'sending'",
        )
        .map_err(backend)?;
    let mut add_attempt = conn
        .prepare_cached(
            "INSERT INTO attempts
                 (notification_id, started_at, provider, duration_ms, outcome, http_status, error,
                  provider_message_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(backend)?;
    let mut results = Vec::with_capacity(reports.len());
    for r in reports {
        let c = super::completion_columns(r);
        let (status, due_at, counted, provider, error) = (
            c.status,
            c.due_at,
            i64::from(c.counted),
            c.provider,
            c.error,
        );
        let id = &r.id.as_bytes()[..];
        let changed = update
            .execute(params![
                status, due_at, counted, provider, error, r.at.0, id, r.lease.0
            ])
            .map_err(backend)?;
        if changed == 0 {
            results.push(Err(LeaseLost));
            continue;
        }
        for a in &r.attempts {
            add_attempt
                .execute(params![
                    id,
                    a.started_at.0,
                    a.provider,
                    a.duration_ms as i64,
                    a.outcome.as_str(),
                    a.http_status,
                    a.error,
                    a.provider_message_id
                ])
                .map_err(backend)?;
        }
        results.push(Ok(()));
    }
    Ok(results)
}

fn replay(
    conn: &Connection,
    id: NotificationId,
    now: UnixMillis,
    expires_at: UnixMillis,
) -> Result<ReplayOutcome, StoreError> {
    let key = &id.as_bytes()[..];
    let status: Option<String> = conn
        .query_row(
            "SELECT status FROM notifications WHERE id = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    let Some(status) = status else {
        return Ok(ReplayOutcome::NotFound);
    };
    let status = status_from(&status)?;
    if !matches!(status, Status::Dead | Status::Failed) {
        return Ok(ReplayOutcome::NotReplayable(status));
    }
    conn.execute(
        "UPDATE notifications
            SET status = 'queued', due_at = ?2, rounds = 0, lease_token = NULL,
                expires_at = ?3, updated_at = ?2
          WHERE id = ?1",
        params![key, now.0, expires_at.0],
    )
    .map_err(backend)?;
    Ok(ReplayOutcome::Requeued)
}

fn purge(conn: &Connection, before: UnixMillis, limit: usize) -> Result<u64, StoreError> {
    let mut gone = conn
        .prepare_cached(
            "DELETE FROM notifications
              WHERE rowid IN (SELECT rowid FROM notifications
                               WHERE status = 'delivered' AND id < ?3 AND updated_at < ?1
                               LIMIT ?2)
             RETURNING id",
        )
        .map_err(backend)?;
    // Anything last updated before `before` was created before it too: the
    // id bound keeps the walk of the (status, id) index to those rows
    // instead of every delivered notification.
    let created_before = NotificationId::first_at(before);
    let ids = gone
        .query_map(
            params![before.0, limit as i64, &created_before.as_bytes()[..]],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    let mut attempts = conn
        .prepare_cached("DELETE FROM attempts WHERE notification_id = ?1")
        .map_err(backend)?;
    for id in &ids {
        attempts.execute([id]).map_err(backend)?;
    }
    Ok(ids.len() as u64)
}

fn id_from(bytes: &[u8]) -> Result<NotificationId, StoreError> {
    let arr: [u8; 16] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        what: "notification id is not 16 bytes",
    })?;
    Ok(NotificationId::from_bytes(arr))
}

fn channel_from(s: &str) -> Result<Channel, StoreError> {
    Channel::parse(s).ok_or(StoreError::Corrupt {
        what: "unknown channel",
    })
}

fn status_from(s: &str) -> Result<Status, StoreError> {
    Status::parse(s).ok_or(StoreError::Corrupt {
        what: "unknown status",
    })
}

fn read_record(
    conn: &Connection,
    id: NotificationId,
) -> Result<Option<NotificationRecord>, StoreError> {
    let key = &id.as_bytes()[..];
    let row = conn
        .query_row(
            "SELECT channel, status, created_at, updated_at, due_at, expires_at, rounds,
                    delivered_by, last_error, payload
               FROM notifications WHERE id = ?1",
            [key],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, String>(9)?,
                ))
            },
        )
        .optional()
        .map_err(backend)?;
    let Some((
        channel,
        status,
        created,
        updated,
        due,
        expires,
        rounds,
        delivered_by,
        last_error,
        payload,
    )) = row
    else {
        return Ok(None);
    };
    let status = status_from(&status)?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT provider, started_at, duration_ms, outcome, http_status, error,
                    provider_message_id
               FROM attempts WHERE notification_id = ?1 ORDER BY rowid",
        )
        .map_err(backend)?;
    let attempts = stmt
        .query_map([key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<u16>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })
        .map_err(backend)?
        .map(|row| {
            let (provider, started, duration, outcome, http_status, error, provider_message_id) =
                row.map_err(backend)?;
            Ok(Attempt {
                provider,
                started_at: UnixMillis(started),
                duration_ms: duration.max(0) as u64,
                outcome: AttemptOutcome::parse(&outcome).ok_or(StoreError::Corrupt {
                    what: "unknown attempt outcome",
                })?,
                http_status,
                error,
                provider_message_id,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(NotificationRecord {
        id,
        channel: channel_from(&channel)?,
        status,
        created_at: UnixMillis(created),
        updated_at: UnixMillis(updated),
        // A sending row's due_at is its lease, not a planned attempt.
        next_attempt_at: matches!(status, Status::Queued | Status::Retrying)
            .then_some(due)
            .flatten()
            .map(UnixMillis),
        expires_at: UnixMillis(expires),
        rounds: rounds as u32,
        delivered_by,
        last_error,
        message: serde_json::from_str(&payload).map_err(|_| StoreError::Corrupt {
            what: "payload is not JSON",
        })?,
        attempts,
    }))
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert(&self, notification: NewNotification) -> Result<(), StoreError> {
        self.call(|reply| Command::Insert(notification, reply))
            .await
    }

    async fn claim(
        &self,
        now: UnixMillis,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.call(|reply| Command::Claim {
            now,
            limit,
            lease,
            reply,
        })
        .await
    }

    async fn complete(
        &self,
        reports: Vec<RoundReport>,
    ) -> Result<Vec<Result<(), LeaseLost>>, StoreError> {
        self.call(|reply| Command::Complete(reports, reply)).await
    }

    async fn get(&self, id: NotificationId) -> Result<Option<NotificationRecord>, StoreError> {
        self.read(move |conn| {
            // One read transaction: the row and its attempts agree.
            conn.execute_batch("BEGIN").map_err(backend)?;
            let record = read_record(conn, id);
            let _ = conn.execute_batch("COMMIT");
            record
        })
        .await
    }

    async fn list(
        &self,
        status: Status,
        after: Option<NotificationId>,
        limit: usize,
    ) -> Result<Vec<NotificationSummary>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, channel, created_at, updated_at, rounds, last_error
                       FROM notifications
                      WHERE status = ?1 AND id > ?2
                      ORDER BY id LIMIT ?3",
                )
                .map_err(backend)?;
            let after = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
            let rows = stmt
                .query_map(params![status.as_str(), after, limit as i64], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })
                .map_err(backend)?;
            rows.map(|row| {
                let (id, channel, created, updated, rounds, last_error) = row.map_err(backend)?;
                Ok(NotificationSummary {
                    id: id_from(&id)?,
                    channel: channel_from(&channel)?,
                    status,
                    created_at: UnixMillis(created),
                    updated_at: UnixMillis(updated),
                    rounds: rounds as u32,
                    last_error,
                })
            })
            .collect()
        })
        .await
    }

    async fn replay(
        &self,
        id: NotificationId,
        now: UnixMillis,
        expires_at: UnixMillis,
    ) -> Result<ReplayOutcome, StoreError> {
        self.call(|reply| Command::Replay {
            id,
            now,
            expires_at,
            reply,
        })
        .await
    }

    async fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT status, COUNT(*) FROM notifications GROUP BY status")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(backend)?;
            rows.map(|row| {
                let (status, n) = row.map_err(backend)?;
                Ok((status_from(&status)?, n as u64))
            })
            .collect()
        })
        .await
    }

    async fn backlog(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT status, COUNT(*) FROM notifications INDEXED BY notifications_due
                      WHERE status IN ('queued', 'retrying', 'sending') GROUP BY status",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(backend)?;
            rows.map(|row| {
                let (status, n) = row.map_err(backend)?;
                Ok((status_from(&status)?, n as u64))
            })
            .collect()
        })
        .await
    }

    async fn purge(&self, before: UnixMillis, limit: usize) -> Result<u64, StoreError> {
        self.call(|reply| Command::Purge {
            before,
            limit,
            reply,
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(Command::Ping).await?;
        let ago = UnixMillis::now().0 - self.last_failure.load(Ordering::Relaxed);
        if ago < RECENT_FAILURE_MS {
            return Err(StoreError::Backend(Box::new(CommitFailed(format!(
                "a transaction failed {ago} ms ago"
            )))));
        }
        Ok(())
    }

    async fn close(&self) {
        let _ = self.call(Command::Close).await;
    }
}
