//! The embedded store: one SQLite file in WAL mode.
//!
//! Every write goes through one writer thread that owns the write
//! connection. It takes every command waiting in its queue and runs them in
//! one transaction, so one fsync commits many notifications (group commit);
//! each caller is answered only after that commit. Reads use their own
//! connection, which WAL lets run beside the writer.

mod api_keys;
mod providers;
mod schema;
mod webhooks;

pub use schema::MIGRATIONS;

use crate::resilience::clock;
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::hooks::Wal;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

use super::rows::{
    ATTEMPT_COLUMNS, AttemptRow, ClaimedRow, RECORD_COLUMNS, RecordRow, SummaryRow, id_from_bytes,
    status_from,
};
use super::{
    ApiKeyRecord, CancelOutcome, Claimed, ClaimedWebhook, EXPIRED_UNSENT, IdempotencyKey,
    KeyedInsert, LeaseLost, LeaseToken, ListFilter, ListParam, NewNotification, NotificationRecord,
    NotificationSummary, RedeliverOutcome, ReplayOutcome, RoundReport, Store, StoreError,
    StoredAnswer, WebhookDeliveryRecord, WebhookReport, WebhookRoutes, WebhookStatus,
};
use crate::domain::webhook::WebhookId;
use crate::domain::{NotificationId, Status, UnixMillis};
use webhooks::Outbox;

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
    InsertMany(Vec<NewNotification>, Reply<()>),
    InsertKeyed(Vec<NewNotification>, IdempotencyKey, Reply<KeyedInsert>),
    Claim {
        now: UnixMillis,
        limit: usize,
        lease: Duration,
        reply: Reply<Vec<Claimed>>,
    },
    Complete(Vec<RoundReport>, Reply<Vec<Result<(), LeaseLost>>>),
    ClaimWebhooks {
        now: UnixMillis,
        limit: usize,
        lease: Duration,
        reply: Reply<Vec<ClaimedWebhook>>,
    },
    CompleteWebhooks(Vec<WebhookReport>, Reply<Vec<Result<(), LeaseLost>>>),
    PurgeWebhooks {
        before: UnixMillis,
        limit: usize,
        reply: Reply<u64>,
    },
    Replay {
        id: NotificationId,
        now: UnixMillis,
        expires_at: UnixMillis,
        reply: Reply<ReplayOutcome>,
    },
    RedeliverWebhook {
        id: WebhookId,
        now: UnixMillis,
        reply: Reply<RedeliverOutcome>,
    },
    Cancel {
        id: NotificationId,
        now: UnixMillis,
        reply: Reply<CancelOutcome>,
    },
    Purge {
        before: UnixMillis,
        limit: usize,
        reply: Reply<u64>,
    },
    PurgeKeys {
        before: UnixMillis,
        limit: usize,
        reply: Reply<u64>,
    },
    Key(api_keys::KeyWrite, Reply<bool>),
    DisableProvider {
        name: String,
        disabled: bool,
        at: UnixMillis,
        reply: Reply<bool>,
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

/// Creates the database file readable and writable by its owner only
/// (0600): it holds message texts, addresses and the hashes of API keys.
/// SQLite gives the `-wal` and `-shm` files it creates beside it the
/// database file's mode, so they are 0600 too. A file already there keeps
/// its mode (an operator may have chosen it), with a warning when others
/// may read it. A file that cannot be created here is left to SQLite,
/// whose own error then says why.
fn create_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        if let Err(e) = created
            && e.kind() == std::io::ErrorKind::AlreadyExists
            && let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the SQLite database may be read by other users (it holds message texts and \
                 addresses); chmod 600 it and its -wal and -shm files"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// A failed write this recent still makes [`Store::ping`] fail: with a full
/// disk, the small probe may find room that real writes do not.
const RECENT_FAILURE_MS: i64 = 5_000;

pub struct SqliteStore {
    commands: mpsc::Sender<Command>,
    reader: Arc<Mutex<Connection>>,
    /// When a transaction last failed to commit (ms since the epoch; 0: never).
    last_failure: Arc<AtomicI64>,
    /// Poked when a commit added webhook deliveries.
    webhooks_added: Arc<Notify>,
}

impl SqliteStore {
    /// A store whose ending notifications send no webhooks.
    pub async fn open(path: &str, options: SqliteOptions) -> Result<Self, StoreError> {
        Self::open_routed(path, options, Arc::default()).await
    }

    /// A store that writes the events of ending notifications to the
    /// webhook outbox for `routes`.
    pub async fn open_routed(
        path: &str,
        options: SqliteOptions,
        routes: Arc<WebhookRoutes>,
    ) -> Result<Self, StoreError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(Path::new(&path), options, routes))
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))?
    }

    fn open_blocking(
        path: &Path,
        options: SqliteOptions,
        routes: Arc<WebhookRoutes>,
    ) -> Result<Self, StoreError> {
        create_private(path);
        let mut writer = Connection::open(path).map_err(backend)?;
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
        // Replaces SQLite's automatic checkpoint (the same hook), which ran
        // inside the commit that crossed its threshold: see `checkpoint_when_due`.
        let wal_frames = Arc::new(AtomicI32::new(0));
        let frames = Arc::clone(&wal_frames);
        writer
            .wal_hook(Some(move |_: &mut Wal, pages| {
                frames.store(pages, Ordering::Relaxed);
                Ok(())
            }))
            .map_err(backend)?;
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
        let webhooks_added = Arc::new(Notify::new());
        let added = Arc::clone(&webhooks_added);
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || {
                let writer = Writer {
                    conn: writer,
                    routes,
                    added,
                    wal_frames,
                };
                writer_loop(&writer, rx, max_batch, options.synchronous, &failures)
            })
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(Self {
            commands: tx,
            reader: Arc::new(Mutex::new(reader)),
            last_failure,
            webhooks_added,
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

/// The writer thread's connection, and where its transactions' webhook
/// events go.
struct Writer {
    conn: Connection,
    routes: Arc<WebhookRoutes>,
    added: Arc<Notify>,
    /// Frames in the write-ahead log after the last commit.
    wal_frames: Arc<AtomicI32>,
}

/// Frames of the write-ahead log past which the writer checkpoints as soon
/// as no command waits for it (SQLite's own threshold).
const CHECKPOINT_FRAMES: i32 = 1000;

/// Past this it checkpoints even with commands waiting, so that the log
/// stays bounded under a load that never lets up (32 MiB of 4 KiB pages).
const CHECKPOINT_FRAMES_MOST: i32 = 8000;

/// Copies the log's frames into the database file once it has grown past
/// [`CHECKPOINT_FRAMES`]. SQLite did this inside the commit that crossed the
/// threshold, so that commit's callers got their answers only after it
/// (1-3 ms: two fsyncs and the copy), and every accept queued behind it
/// waited as long; a few times a second at 2,000 accepts/s, that was most of
/// the p99. Here the answers have gone out already, and the copy waits for
/// an idle moment. Done on the writer's own connection, nothing commits
/// meanwhile, so a complete checkpoint lets the next transaction start the
/// log again from its beginning.
fn checkpoint_when_due(writer: &Writer, waiting: bool) {
    let frames = writer.wal_frames.load(Ordering::Relaxed);
    if frames < CHECKPOINT_FRAMES || (waiting && frames < CHECKPOINT_FRAMES_MOST) {
        return;
    }
    // PASSIVE: never waits for readers; frames a reader still needs are left
    // for the next time.
    let done = writer
        .conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
    match done {
        Ok((log, copied)) if log == copied => writer.wal_frames.store(0, Ordering::Relaxed),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not checkpoint the write-ahead log"),
    }
}

fn writer_loop(
    writer: &Writer,
    mut rx: mpsc::Receiver<Command>,
    max_batch: usize,
    synchronous: Synchronous,
    last_failure: &AtomicI64,
) {
    let conn = &writer.conn;
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
        let (started, writes) = (clock::instant(), batch.len());
        let outbox = Outbox {
            routes: &writer.routes,
            added: Cell::new(0),
        };
        let committed = run_batch(conn, &outbox, batch.drain(..));
        crate::metrics::metrics().store_commit(started.elapsed(), writes);
        if !committed {
            last_failure.store(UnixMillis::now().0, Ordering::Relaxed);
        } else if outbox.added.get() > 0 {
            writer.added.notify_one();
        }
        if closing {
            break;
        }
        checkpoint_when_due(writer, !rx.is_empty());
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
        Command::Claim { .. }
            | Command::Complete(..)
            | Command::ClaimWebhooks { .. }
            | Command::CompleteWebhooks(..)
            | Command::PurgeWebhooks { .. }
            | Command::Purge { .. }
            | Command::PurgeKeys { .. }
            | Command::Ping(_)
    )
}

/// Runs `commands` in one transaction; returns whether it committed.
fn run_batch(
    conn: &Connection,
    outbox: &Outbox<'_>,
    commands: impl Iterator<Item = Command>,
) -> bool {
    let begun = conn.execute_batch("BEGIN IMMEDIATE");
    let answers: Vec<Answer> = commands
        .map(|cmd| execute(conn, outbox, cmd, begun.is_ok()))
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
fn execute(conn: &Connection, outbox: &Outbox<'_>, cmd: Command, open: bool) -> Answer {
    match cmd {
        Command::Insert(n, reply) => {
            answer(reply, open.then(|| all_or_none(conn, || insert(conn, &n))))
        }
        Command::InsertMany(ns, reply) => answer(reply, open.then(|| insert_many(conn, &ns))),
        Command::InsertKeyed(ns, key, reply) => {
            answer(reply, open.then(|| insert_keyed(conn, &ns, &key)))
        }
        Command::Claim {
            now,
            limit,
            lease,
            reply,
        } => answer(reply, open.then(|| claim(conn, outbox, now, limit, lease))),
        Command::Complete(reports, reply) => answer(
            reply,
            open.then(|| all_or_none(conn, || complete(conn, outbox, &reports))),
        ),
        Command::ClaimWebhooks {
            now,
            limit,
            lease,
            reply,
        } => answer(
            reply,
            open.then(|| webhooks::claim(conn, now, limit, lease)),
        ),
        Command::CompleteWebhooks(reports, reply) => {
            answer(reply, open.then(|| webhooks::complete(conn, &reports)))
        }
        Command::PurgeWebhooks {
            before,
            limit,
            reply,
        } => answer(reply, open.then(|| webhooks::purge(conn, before, limit))),
        Command::Replay {
            id,
            now,
            expires_at,
            reply,
        } => answer(reply, open.then(|| replay(conn, id, now, expires_at))),
        Command::RedeliverWebhook { id, now, reply } => answer(
            reply,
            open.then(|| webhooks::redeliver(conn, outbox, id, now)),
        ),
        Command::Cancel { id, now, reply } => answer(reply, open.then(|| cancel(conn, id, now))),
        Command::Purge {
            before,
            limit,
            reply,
        } => answer(reply, open.then(|| purge(conn, before, limit))),
        Command::PurgeKeys {
            before,
            limit,
            reply,
        } => answer(reply, open.then(|| purge_keys(conn, before, limit))),
        Command::Key(change, reply) => answer(reply, open.then(|| api_keys::write(conn, &change))),
        Command::DisableProvider {
            name,
            disabled,
            at,
            reply,
        } => answer(
            reply,
            open.then(|| providers::set_disabled(conn, &name, disabled, at)),
        ),
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

const INSERT_NOTIFICATION: &str = "INSERT INTO notifications
     (id, channel, payload, status, due_at, lease_token,
      created_at, updated_at, expires_at, deliver_by, priority, callback_url,
      hedge, created_by)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

fn insert(conn: &Connection, n: &NewNotification) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(INSERT_NOTIFICATION).map_err(backend)?;
    stmt.execute(params![
        &n.id.as_bytes()[..],
        n.channel.as_str(),
        n.payload,
        n.initial_status().as_str(),
        n.due_at().0,
        n.lease.map(|l| l.token.0),
        n.created_at.0,
        n.expires_at.0,
        n.deliver_by.map(|t| t.0),
        n.priority.rank(),
        n.callback_url,
        n.hedge,
        n.created_by
    ])
    .map_err(backend)?;
    if !n.metadata.is_empty() {
        let mut add = conn
            .prepare_cached(
                "INSERT INTO notification_metadata (notification_id, key, value)
                 VALUES (?1, ?2, ?3)",
            )
            .map_err(backend)?;
        for (key, value) in &n.metadata {
            add.execute(params![&n.id.as_bytes()[..], key, value])
                .map_err(backend)?;
        }
    }
    Ok(())
}

/// All or none, under a savepoint: a failure undoes only this command.
fn insert_many(conn: &Connection, notifications: &[NewNotification]) -> Result<(), StoreError> {
    all_or_none(conn, || {
        notifications.iter().try_for_each(|n| insert(conn, n))
    })
}

/// Runs `write` under a savepoint of its own: if it fails, what it wrote
/// is undone, and the batch's other commands still commit. Without one, a
/// notification whose metadata failed, or the first half of a batch of
/// results, would be committed while its caller is told it failed.
fn all_or_none<T>(
    conn: &Connection,
    write: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT command").map_err(backend)?;
    let result = write();
    let end = match result {
        Ok(_) => "RELEASE command",
        Err(_) => "ROLLBACK TO command; RELEASE command",
    };
    conn.execute_batch(end).map_err(backend)?;
    result
}

/// Inside the batch's transaction, under a savepoint of its own: a key
/// already stored answers with its first answer and stores nothing, and
/// nothing it does can undo the other commands of the batch.
fn insert_keyed(
    conn: &Connection,
    notifications: &[NewNotification],
    key: &IdempotencyKey,
) -> Result<KeyedInsert, StoreError> {
    conn.execute_batch("SAVEPOINT keyed").map_err(backend)?;
    let result = insert_keyed_inner(conn, notifications, key);
    let end = match result {
        Ok(KeyedInsert::Stored) => "RELEASE keyed",
        _ => "ROLLBACK TO keyed; RELEASE keyed",
    };
    conn.execute_batch(end).map_err(backend)?;
    result
}

fn insert_keyed_inner(
    conn: &Connection,
    notifications: &[NewNotification],
    key: &IdempotencyKey,
) -> Result<KeyedInsert, StoreError> {
    conn.prepare_cached(
        "DELETE FROM idempotency_keys WHERE scope = ?1 AND key = ?2 AND created_at < ?3",
    )
    .map_err(backend)?
    .execute(params![key.scope, key.key, key.expired_before.0])
    .map_err(backend)?;
    let stored = conn
        .prepare_cached(
            "INSERT INTO idempotency_keys
                 (scope, key, fingerprint, status_code, response, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (scope, key) DO NOTHING",
        )
        .map_err(backend)?
        .execute(params![
            key.scope,
            key.key,
            key.fingerprint,
            key.status_code,
            key.response,
            key.created_at.0
        ])
        .map_err(backend)?;
    if stored == 0 {
        let first = conn
            .prepare_cached(
                "SELECT fingerprint, status_code, response FROM idempotency_keys
                  WHERE scope = ?1 AND key = ?2",
            )
            .map_err(backend)?
            .query_row(params![key.scope, key.key], |r| {
                Ok(StoredAnswer {
                    fingerprint: r.get(0)?,
                    status_code: r.get(1)?,
                    response: r.get(2)?,
                })
            })
            .map_err(backend)?;
        return Ok(KeyedInsert::Replayed(first));
    }
    for n in notifications {
        insert(conn, n)?;
    }
    Ok(KeyedInsert::Stored)
}

fn purge_keys(conn: &Connection, before: UnixMillis, limit: usize) -> Result<u64, StoreError> {
    let gone = conn
        .prepare_cached(
            "DELETE FROM idempotency_keys
              WHERE rowid IN (SELECT rowid FROM idempotency_keys WHERE created_at < ?1 LIMIT ?2)",
        )
        .map_err(backend)?
        .execute(params![before.0, limit as i64])
        .map_err(backend)?;
    Ok(gone as u64)
}

/// Takes due rows for a round, highest priority first.
///
/// Left to itself the planner walks the status index and sorts the whole
/// backlog on every claim. The partial index on (priority, due_at) holds
/// only unfinished rows, already in order: one walk per priority, highest
/// first, each stopping at the first row not yet due, so a backlog of
/// low-priority work costs a high-priority claim nothing. Rows past their
/// client's deadline are ended `expired` here instead of being sent.
///
/// `LIMIT ?4 + 0`: a bare parameter as a limit is read into the plan, and
/// SQLite then prepares the statement again on every run.
const CLAIM: &str = "UPDATE notifications
    SET status = CASE WHEN deliver_by <= ?3 THEN 'expired' ELSE 'sending' END,
        lease_token = CASE WHEN deliver_by <= ?3 THEN NULL ELSE ?1 END,
        due_at = CASE WHEN deliver_by <= ?3 THEN NULL ELSE ?2 END,
        last_error = CASE WHEN deliver_by <= ?3 THEN ?5 ELSE last_error END,
        updated_at = ?3
  WHERE id IN (
        SELECT id FROM (SELECT id FROM notifications INDEXED BY notifications_claim
                         WHERE priority = 0 AND due_at <= ?3 AND due_at IS NOT NULL
                         ORDER BY due_at LIMIT ?4 + 0)
        UNION ALL
        SELECT id FROM (SELECT id FROM notifications INDEXED BY notifications_claim
                         WHERE priority = 1 AND due_at <= ?3 AND due_at IS NOT NULL
                         ORDER BY due_at LIMIT ?4 + 0)
        UNION ALL
        SELECT id FROM (SELECT id FROM notifications INDEXED BY notifications_claim
                         WHERE priority = 2 AND due_at <= ?3 AND due_at IS NOT NULL
                         ORDER BY due_at LIMIT ?4 + 0)
        LIMIT ?4 + 0)
 RETURNING id, channel, payload, rounds, created_at, expires_at, deliver_by, status,
           hedge";

fn claim(
    conn: &Connection,
    outbox: &Outbox<'_>,
    now: UnixMillis,
    limit: usize,
    lease: Duration,
) -> Result<Vec<Claimed>, StoreError> {
    let token = LeaseToken::random();
    let lease_until = now.plus(lease);
    let mut stmt = conn.prepare_cached(CLAIM).map_err(backend)?;
    let rows = stmt
        .query_map(
            params![token.0, lease_until.0, now.0, limit as i64, EXPIRED_UNSENT],
            |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    ClaimedRow {
                        id: NotificationId::default(),
                        channel: r.get(1)?,
                        payload: r.get(2)?,
                        rounds: r.get(3)?,
                        created_at: r.get(4)?,
                        expires_at: r.get(5)?,
                        deliver_by: r.get(6)?,
                        status: r.get(7)?,
                        hedge: r.get(8)?,
                    },
                ))
            },
        )
        .map_err(backend)?;
    let mut claimed = Vec::with_capacity(limit.min(1024));
    let mut expired = Vec::new();
    for row in rows {
        let (id, row) = row.map_err(backend)?;
        let row = ClaimedRow {
            id: id_from_bytes(&id)?,
            ..row
        };
        let id = row.id;
        match row.decode(token, lease_until)? {
            Some(c) => claimed.push(c),
            None => expired.push(id),
        }
    }
    drop(stmt);
    webhooks::record_endings(conn, outbox, &expired)?;
    Ok(claimed)
}

/// A round's result, under its lease.
const COMPLETE_ROUND: &str = "UPDATE notifications
    SET status = COALESCE(?1, CASE WHEN rounds + ?3 > 0 THEN 'retrying' ELSE 'queued' END),
        due_at = ?2,
        rounds = rounds + ?3,
        lease_token = NULL,
        delivered_by = COALESCE(?4, delivered_by),
        last_error = COALESCE(?5, last_error),
        updated_at = ?6
  WHERE id = ?7 AND lease_token = ?8 AND status = 'sending'";

fn complete(
    conn: &Connection,
    outbox: &Outbox<'_>,
    reports: &[RoundReport],
) -> Result<Vec<Result<(), LeaseLost>>, StoreError> {
    let mut update = conn.prepare_cached(COMPLETE_ROUND).map_err(backend)?;
    let mut add_attempt = conn
        .prepare_cached(
            "INSERT INTO attempts
                 (notification_id, started_at, provider, duration_ms, outcome, http_status, error,
                  provider_message_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(backend)?;
    let mut results = Vec::with_capacity(reports.len());
    let mut ended = Vec::new();
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
        if r.completion.ends() {
            ended.push(r.id);
        }
        results.push(Ok(()));
    }
    webhooks::record_endings(conn, outbox, &ended)?;
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

fn cancel(
    conn: &Connection,
    id: NotificationId,
    now: UnixMillis,
) -> Result<CancelOutcome, StoreError> {
    let key = &id.as_bytes()[..];
    let changed = conn
        .prepare_cached(
            "UPDATE notifications
                SET status = 'canceled', due_at = NULL, lease_token = NULL, updated_at = ?2
              WHERE id = ?1 AND status IN ('scheduled', 'queued', 'retrying')",
        )
        .map_err(backend)?
        .execute(params![key, now.0])
        .map_err(backend)?;
    if changed == 1 {
        return Ok(CancelOutcome::Canceled);
    }
    let status: Option<String> = conn
        .query_row(
            "SELECT status FROM notifications WHERE id = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    match status {
        Some(status) => Ok(CancelOutcome::NotCancelable(status_from(&status)?)),
        None => Ok(CancelOutcome::NotFound),
    }
}

fn purge(conn: &Connection, before: UnixMillis, limit: usize) -> Result<u64, StoreError> {
    let mut gone = conn
        .prepare_cached(
            "DELETE FROM notifications
              WHERE rowid IN (SELECT rowid FROM notifications
                               WHERE status IN ('sent', 'delivered') AND id < ?3 AND updated_at < ?1
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
    let mut metadata = conn
        .prepare_cached("DELETE FROM notification_metadata WHERE notification_id = ?1")
        .map_err(backend)?;
    for id in &ids {
        attempts.execute([id]).map_err(backend)?;
        metadata.execute([id]).map_err(backend)?;
    }
    Ok(ids.len() as u64)
}

fn read_record(
    conn: &Connection,
    id: NotificationId,
) -> Result<Option<NotificationRecord>, StoreError> {
    let key = &id.as_bytes()[..];
    let row = conn
        .prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM notifications WHERE id = ?1"
        ))
        .map_err(backend)?
        .query_row([key], |r| {
            Ok(RecordRow {
                channel: r.get(0)?,
                status: r.get(1)?,
                priority: r.get(2)?,
                created_at: r.get(3)?,
                updated_at: r.get(4)?,
                due_at: r.get(5)?,
                expires_at: r.get(6)?,
                deliver_by: r.get(7)?,
                rounds: r.get(8)?,
                delivered_by: r.get(9)?,
                last_error: r.get(10)?,
                payload: r.get(11)?,
                callback_url: r.get(12)?,
                hedge: r.get(13)?,
                created_by: r.get(14)?,
            })
        })
        .optional()
        .map_err(backend)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE notification_id = ?1 ORDER BY rowid"
        ))
        .map_err(backend)?;
    let attempts = stmt
        .query_map([key], |r| {
            Ok(AttemptRow {
                provider: r.get(0)?,
                started_at: r.get(1)?,
                duration_ms: r.get(2)?,
                outcome: r.get(3)?,
                http_status: r.get(4)?,
                error: r.get(5)?,
                provider_message_id: r.get(6)?,
            })
        })
        .map_err(backend)?
        .map(|row| row.map_err(backend)?.decode())
        .collect::<Result<Vec<_>, StoreError>>()?;
    let metadata = conn
        .prepare_cached("SELECT key, value FROM notification_metadata WHERE notification_id = ?1")
        .map_err(backend)?
        .query_map([key], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    row.decode(id, attempts, metadata).map(Some)
}

fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Vec<u8>, SummaryRow)> {
    Ok((
        r.get(0)?,
        SummaryRow {
            id: NotificationId::default(),
            channel: r.get(1)?,
            status: r.get(2)?,
            priority: r.get(3)?,
            created_at: r.get(4)?,
            updated_at: r.get(5)?,
            rounds: r.get(6)?,
            last_error: r.get(7)?,
        },
    ))
}

/// Runs a `SELECT status, COUNT(*) … GROUP BY status`.
fn status_counts(conn: &Connection, sql: &str) -> Result<Vec<(Status, u64)>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(backend)?;
    rows.map(|row| {
        let (status, n) = row.map_err(backend)?;
        Ok((status_from(&status)?, n as u64))
    })
    .collect()
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert(&self, notification: NewNotification) -> Result<(), StoreError> {
        self.call(|reply| Command::Insert(notification, reply))
            .await
    }

    async fn insert_many(&self, notifications: Vec<NewNotification>) -> Result<(), StoreError> {
        self.call(|reply| Command::InsertMany(notifications, reply))
            .await
    }

    async fn insert_keyed(
        &self,
        notifications: Vec<NewNotification>,
        key: IdempotencyKey,
    ) -> Result<KeyedInsert, StoreError> {
        self.call(|reply| Command::InsertKeyed(notifications, key, reply))
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
        filter: ListFilter,
        after: Option<NotificationId>,
        limit: usize,
    ) -> Result<Vec<NotificationSummary>, StoreError> {
        self.read(move |conn| {
            let (sql, params) = filter.query(after, limit, |n| format!("?{n}"));
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let values: Vec<rusqlite::types::Value> = params
                .into_iter()
                .map(|p| match p {
                    ListParam::Text(t) => rusqlite::types::Value::Text(t),
                    ListParam::Rank(r) => rusqlite::types::Value::Integer(r.into()),
                    ListParam::Id(id) => rusqlite::types::Value::Blob(id.as_bytes().to_vec()),
                    ListParam::Limit(n) => rusqlite::types::Value::Integer(n),
                })
                .collect();
            let rows = stmt
                .query_map(rusqlite::params_from_iter(values), summary_row)
                .map_err(backend)?;
            rows.map(|row| {
                let (id, row) = row.map_err(backend)?;
                SummaryRow {
                    id: id_from_bytes(&id)?,
                    ..row
                }
                .decode()
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

    async fn cancel(
        &self,
        id: NotificationId,
        now: UnixMillis,
    ) -> Result<CancelOutcome, StoreError> {
        self.call(|reply| Command::Cancel { id, now, reply }).await
    }

    async fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        self.read(|conn| {
            status_counts(
                conn,
                "SELECT status, COUNT(*) FROM notifications GROUP BY status",
            )
        })
        .await
    }

    async fn backlog(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        self.read(|conn| {
            status_counts(
                conn,
                "SELECT status, COUNT(*) FROM notifications INDEXED BY notifications_claim
                  WHERE due_at IS NOT NULL
                  GROUP BY status",
            )
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

    async fn purge_keys(&self, before: UnixMillis, limit: usize) -> Result<u64, StoreError> {
        self.call(|reply| Command::PurgeKeys {
            before,
            limit,
            reply,
        })
        .await
    }

    async fn claim_webhooks(
        &self,
        now: UnixMillis,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedWebhook>, StoreError> {
        self.call(|reply| Command::ClaimWebhooks {
            now,
            limit,
            lease,
            reply,
        })
        .await
    }

    async fn complete_webhooks(
        &self,
        reports: Vec<WebhookReport>,
    ) -> Result<Vec<Result<(), LeaseLost>>, StoreError> {
        self.call(|reply| Command::CompleteWebhooks(reports, reply))
            .await
    }

    async fn webhook_deliveries(
        &self,
        status: Option<WebhookStatus>,
        after: Option<WebhookId>,
        limit: usize,
    ) -> Result<Vec<WebhookDeliveryRecord>, StoreError> {
        self.read(move |conn| webhooks::list(conn, status, after, limit))
            .await
    }

    async fn webhook_backlog(&self) -> Result<Vec<(WebhookStatus, u64)>, StoreError> {
        self.read(webhooks::backlog).await
    }

    async fn purge_webhooks(&self, before: UnixMillis, limit: usize) -> Result<u64, StoreError> {
        self.call(|reply| Command::PurgeWebhooks {
            before,
            limit,
            reply,
        })
        .await
    }

    async fn redeliver_webhook(
        &self,
        id: WebhookId,
        now: UnixMillis,
    ) -> Result<RedeliverOutcome, StoreError> {
        self.call(|reply| Command::RedeliverWebhook { id, now, reply })
            .await
    }

    fn webhooks_added(&self) -> Arc<Notify> {
        Arc::clone(&self.webhooks_added)
    }

    async fn create_api_key(&self, key: ApiKeyRecord) -> Result<bool, StoreError> {
        self.call(|reply| Command::Key(api_keys::KeyWrite::Create(key), reply))
            .await
    }

    async fn revoke_api_key(&self, name: &str, at: UnixMillis) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.call(|reply| Command::Key(api_keys::KeyWrite::Revoke { name, at }, reply))
            .await
    }

    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.read(api_keys::all).await
    }

    async fn set_provider_disabled(
        &self,
        name: &str,
        disabled: bool,
        at: UnixMillis,
    ) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.call(|reply| Command::DisableProvider {
            name,
            disabled,
            at,
            reply,
        })
        .await
    }

    async fn disabled_providers(&self) -> Result<Vec<(String, UnixMillis)>, StoreError> {
        self.read(providers::disabled).await
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

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;
    use crate::domain::Channel;

    fn migrated() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        schema::migrate(&conn).unwrap();
        conn
    }

    /// The program SQLite runs for `sql`, one opcode per step.
    fn opcodes(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        // Parameters left unbound: EXPLAIN only lists the program.
        let mut rows = stmt.raw_query();
        let mut ops = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            ops.push(row.get(1).unwrap());
        }
        ops
    }

    fn queued(now: UnixMillis) -> NewNotification {
        NewNotification::due_now(
            Channel::Sms,
            "{}".into(),
            now,
            now.plus(Duration::from_secs(60)),
        )
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_database_and_its_wal_and_shm_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let store = SqliteStore::open(path.to_str().unwrap(), SqliteOptions::default())
            .await
            .unwrap();
        let now = UnixMillis::now();
        store.insert(queued(now)).await.unwrap();
        for name in ["herald.db", "herald.db-wal", "herald.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name} is {:o}", mode & 0o777);
        }
        store.close().await;
    }

    #[test]
    fn writing_a_row_builds_no_temporary_table() {
        let conn = migrated();
        for sql in [INSERT_NOTIFICATION, COMPLETE_ROUND] {
            let ops = opcodes(&conn, sql);
            assert!(
                !ops.iter().any(|op| op == "OpenEphemeral"),
                "{sql}: {ops:?}"
            );
        }
    }

    #[test]
    fn the_claim_is_prepared_once() {
        let conn = migrated();
        let routes = WebhookRoutes::default();
        let outbox = Outbox {
            routes: &routes,
            added: Cell::new(0),
        };
        let now = UnixMillis::now();
        for round in 0..4 {
            insert(&conn, &queued(now)).unwrap();
            let at = UnixMillis(now.0 + round);
            let claimed = claim(
                &conn,
                &outbox,
                at,
                10 + round as usize,
                Duration::from_secs(30),
            );
            assert_eq!(claimed.unwrap().len(), 1);
        }
        let stmt = conn.prepare_cached(CLAIM).unwrap();
        assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0);
        assert_eq!(stmt.get_status(StatementStatus::Run), 4);
    }

    #[tokio::test]
    async fn the_writer_checkpoints_the_log_so_it_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let options = SqliteOptions {
            synchronous: Synchronous::Normal,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(path.to_str().unwrap(), options)
            .await
            .unwrap();
        // One commit each, every commit at least one frame: without a
        // checkpoint the log would hold all of them. The next insert often
        // waits already when a commit ends, so the writer may take the
        // busy path and wait for CHECKPOINT_FRAMES_MOST.
        let commits = 3 * CHECKPOINT_FRAMES_MOST;
        let now = UnixMillis::now();
        for _ in 0..commits {
            store.insert(queued(now)).await.unwrap();
        }
        let log = std::fs::metadata(dir.path().join("herald.db-wal"))
            .unwrap()
            .len();
        // A frame is a 4 KiB page and its 24-byte header; some slack for the
        // commit that crossed the threshold.
        let most = (CHECKPOINT_FRAMES_MOST as u64 + 100) * (4096 + 24);
        assert!(log <= most, "the log grew to {log} bytes");
        store.close().await;
    }
}
