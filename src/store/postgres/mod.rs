//! The shared store: PostgreSQL, for several Herald instances on one
//! database.
//!
//! - Inserts and completions go through a few writer tasks per instance,
//!   each batching whatever is waiting into one transaction (group commit,
//!   see [`writer`]); callers are answered once it committed.
//! - Claims run on their own: `FOR UPDATE SKIP LOCKED` in a CTE, then an
//!   `UPDATE … RETURNING`, so instances claiming at once never wait on each
//!   other nor get the same row.
//! - A commit that adds ready work sends `NOTIFY herald_work`; every instance
//!   running a dispatcher LISTENs ([`listen`]) and wakes at once. Polling
//!   stays as the fallback.
//! - Semantics match the SQLite store exactly: `due_at` is the next round
//!   while queued or retrying and the lease's end while sending; a partial
//!   index covers only unfinished rows; writes under a stale lease token are
//!   refused.
//! - Failover: connection errors retire the pool's connections, writers back
//!   off, new connections refuse standbys, LISTEN is made again wherever the
//!   primary now is ([`health`]).

mod health;
mod listen;
mod schema;
mod tls;
mod webhooks;
mod writer;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;

use self::writer::Command;
use super::rows::{
    ATTEMPT_COLUMNS, AttemptRow, ClaimedRow, RECORD_COLUMNS, RecordRow, SummaryRow, status_from,
};
use super::{
    ApiKeyRecord, CancelOutcome, Claimed, ClaimedWebhook, EXPIRED_UNSENT, IdempotencyKey,
    KeyedInsert, LeaseLost, LeaseToken, ListFilter, ListParam, NewNotification, NotificationRecord,
    NotificationSummary, RedeliverOutcome, ReplayOutcome, RoundReport, Store, StoreError,
    WebhookDeliveryRecord, WebhookReport, WebhookRoutes, WebhookStatus,
};
use crate::domain::webhook::WebhookId;
use crate::domain::{NotificationId, Status, UnixMillis};

pub use schema::MIGRATIONS;

/// See [`StoreError::connection_kind`].
pub(super) fn connection_kind(e: &StoreError) -> Option<&'static str> {
    health::kind(e).filter(|k| *k != health::POOL_WAIT)
}

/// The claim's RETURNING list, in rows::ClaimedRow's order.
const CLAIMED_COLUMNS_OF_N: &str = "n.id, n.channel, n.payload, n.rounds, n.created_at, n.expires_at, n.deliver_by, n.status, \
     n.hedge";

/// The channel of the wake-up NOTIFY.
const NOTIFY_CHANNEL: &str = "herald_work";

/// The channel of the NOTIFY sent with new webhook deliveries.
const WEBHOOKS_CHANNEL: &str = "herald_webhooks";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresOptions {
    /// Connections this instance opens at most (plus one for LISTEN).
    pub pool_size: usize,
    /// Writer tasks, each with a connection, committing batches side by side.
    pub writers: usize,
    /// Most rows one write transaction carries (group commit).
    pub max_batch: usize,
    /// Writes that may queue for the writer before callers are held back.
    pub queue_depth: usize,
    /// How long connecting, or waiting for a free connection, may take
    /// before the operation fails (and the API answers 503).
    pub connect_timeout_ms: u64,
    /// Statements running longer than this are cancelled by the server.
    pub statement_timeout_ms: u64,
    /// Ready only while the primary has a synchronous standby configured
    /// (`synchronous_standby_names`) and streaming (`pg_stat_replication`):
    /// checked at start, on every new connection and by `/readyz`.
    pub require_synchronous_replication: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            writers: 1,
            max_batch: 1024,
            queue_depth: 16_384,
            connect_timeout_ms: 5_000,
            statement_timeout_ms: 30_000,
            require_synchronous_replication: false,
        }
    }
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// The TLS a PostgreSQL store URL gets (`verify-full (the default off
/// loopback)`, `require`, ...), for the start-up line; `None` for a URL
/// that does not parse.
pub fn tls_mode(url: &str) -> Option<String> {
    let (url, mut settings) = tls::split_url(url).ok()?;
    let mut config: tokio_postgres::Config = url.parse().ok()?;
    tls::default_off_loopback(&mut config, &mut settings);
    Some(tls::describe(&settings))
}

pub struct PostgresStore {
    pool: Pool,
    health: Arc<health::Health>,
    /// How long a readiness probe may take.
    probe_timeout: Duration,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    writers: Mutex<Vec<JoinHandle<()>>>,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// Where the events of ending notifications go.
    routes: Arc<WebhookRoutes>,
    /// Poked when a commit added webhook deliveries.
    webhooks_added: Arc<Notify>,
}

impl PostgresStore {
    /// Connects, applies missing migrations, starts the writer; the events
    /// of ending notifications go to the webhook outbox for `routes`.
    pub async fn open(
        url: &str,
        options: PostgresOptions,
        routes: Arc<WebhookRoutes>,
    ) -> Result<Self, StoreError> {
        let (url, mut tls) = tls::split_url(url)
            .map_err(|e| StoreError::BadUrl(format!("{}: {e}", super::redacted(url))))?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::BadUrl(format!("{}: {e}", super::redacted(&url))))?;
        tls::default_off_loopback(&mut config, &mut tls);
        let tls = tls::connector(&tls).map_err(|e| StoreError::Backend(Box::new(e)))?;
        let timeout = Duration::from_millis(options.connect_timeout_ms.max(1));
        config
            .application_name("herald")
            .connect_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .options(format!(
                "-c statement_timeout={}",
                options.statement_timeout_ms
            ));

        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let health = Arc::new(health::Health::new(options.require_synchronous_replication));
        let on_create = Arc::clone(&health);
        let on_recycle = Arc::clone(&health);
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .post_create(Hook::async_fn(move |client, _| {
                let health = Arc::clone(&on_create);
                Box::pin(async move { on_connect(client, &health).await })
            }))
            .pre_recycle(Hook::sync_fn(move |_, metrics| {
                if on_recycle.stale(metrics.created) {
                    Err(HookError::message(
                        "made before its server went away; dropped",
                    ))
                } else {
                    Ok(())
                }
            }))
            .build()
            .map_err(|e| StoreError::Backend(Box::new(e)))?;

        {
            let mut client = pool.get().await.map_err(pool_error)?;
            schema::migrate(&mut client).await?;
        }

        let (tx, rx) = mpsc::channel(options.queue_depth.max(1));
        let queue = Arc::new(tokio::sync::Mutex::new(rx));
        let webhooks_added = Arc::new(Notify::new());
        let writers = (0..options.writers.max(1))
            .map(|_| {
                let outbox = writer::Outbox {
                    routes: Arc::clone(&routes),
                    added: Arc::clone(&webhooks_added),
                };
                tokio::spawn(writer::run(
                    pool.clone(),
                    Arc::clone(&queue),
                    options.max_batch.max(1),
                    outbox,
                    Arc::clone(&health),
                ))
            })
            .collect();
        Ok(Self {
            pool,
            health,
            probe_timeout: timeout,
            config,
            tls,
            commands: Mutex::new(Some(tx)),
            writers: Mutex::new(writers),
            listener: Mutex::new(None),
            routes,
            webhooks_added,
        })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(writer::Reply<T>) -> Command,
    ) -> Result<T, StoreError> {
        let sender = self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        let (tx, rx) = oneshot::channel();
        sender
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        if self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            return Err(StoreError::Closed);
        }
        self.pool.get().await.map_err(pool_error).inspect_err(|e| {
            self.health.failed(e);
        })
    }

    /// Passes `result` by, telling the health of it: `Ok` proves a
    /// writable primary only when `wrote`.
    fn watch<T>(&self, result: Result<T, StoreError>, wrote: bool) -> Result<T, StoreError> {
        match &result {
            Ok(_) if wrote => self.health.succeeded(),
            Ok(_) => {}
            Err(e) => {
                self.health.failed(e);
            }
        }
        result
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        if self.health.require_sync {
            let problem = health::check_sync(&client).await?;
            self.health.sync_checked(problem.clone());
            if let Some(problem) = problem {
                return Err(StoreError::NotReady(format!(
                    "postgres.require_synchronous_replication is set and {problem}"
                )));
            }
        }
        let now = UnixMillis::now().0;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&now];
        let write = client.execute(
            "INSERT INTO health_probe (id, at) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            &params,
        );
        match tokio::time::timeout(self.probe_timeout, write).await {
            Ok(written) => written.map(|_| ()).map_err(pg),
            Err(_) => {
                // Its commit still waits (for a synchronous standby that is
                // gone, say): the connection is not given to anyone else.
                let _ = deadpool_postgres::Object::take(client);
                Err(StoreError::NotReady(format!(
                    "a write did not commit within postgres.connect_timeout_ms ({} ms); \
                     with synchronous replication, is the standby there?",
                    self.probe_timeout.as_millis()
                )))
            }
        }
    }
}

/// A new connection: refused on a standby (a one-host URL or a DNS name
/// may lead to one after a failover); its host is noted, and its
/// replication checked when that is required.
async fn on_connect(
    client: &mut deadpool_postgres::ClientWrapper,
    health: &health::Health,
) -> Result<(), HookError> {
    let rows = client
        .simple_query(health::WHERE_AM_I)
        .await
        .map_err(HookError::Backend)?;
    let Some(row) = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    }) else {
        return Err(HookError::message("the server did not say where it is"));
    };
    if row.get(2) == Some("t") {
        return Err(HookError::message(
            "the server is a standby (read-only); not used",
        ));
    }
    let host = match (row.get(0), row.get(1)) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        _ => "local socket".to_owned(),
    };
    health.connected(host);
    if health.require_sync {
        match health::check_sync(client).await {
            Ok(problem) => health.sync_checked(problem),
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "postgres: checking synchronous replication failed")
            }
        }
    }
    Ok(())
}

fn id_from(u: uuid::Uuid) -> NotificationId {
    NotificationId::from_bytes(*u.as_bytes())
}

/// Leases up to `limit` due notifications, highest priority first, each in
/// due order, over the partial index on (priority, due_at). Rows past their
/// client's deadline are ended `expired` here instead of being sent.
async fn claim_rows(
    conn: &impl GenericClient,
    token: LeaseToken,
    lease_until: UnixMillis,
    now: UnixMillis,
    limit: i64,
) -> Result<Vec<Row>, StoreError> {
    let stmt = conn
        .prepare_cached(&format!(
            "WITH due AS (
                 SELECT id FROM notifications
                  WHERE status IN ('scheduled', 'queued', 'retrying', 'sending')
                    AND due_at <= $3
                  ORDER BY priority, due_at
                  LIMIT $4
                  FOR UPDATE SKIP LOCKED)
             UPDATE notifications AS n
                SET status = CASE WHEN n.deliver_by <= $3 THEN 'expired' ELSE 'sending' END,
                    lease_token = CASE WHEN n.deliver_by <= $3 THEN NULL ELSE $1::int8 END,
                    due_at = CASE WHEN n.deliver_by <= $3 THEN NULL ELSE $2::int8 END,
                    last_error = CASE WHEN n.deliver_by <= $3 THEN $5::text ELSE n.last_error END,
                    updated_at = $3::int8
               FROM due
              WHERE n.id = due.id
             RETURNING {CLAIMED_COLUMNS_OF_N}"
        ))
        .await
        .map_err(pg)?;
    conn.query(
        &stmt,
        &[&token.0, &lease_until.0, &now.0, &limit, &EXPIRED_UNSENT],
    )
    .await
    .map_err(pg)
}

fn attempt_row(row: &Row) -> AttemptRow {
    AttemptRow {
        provider: row.get(0),
        started_at: row.get(1),
        duration_ms: row.get(2),
        outcome: row.get(3),
        http_status: row.get::<_, Option<i32>>(4).map(i64::from),
        error: row.get(5),
        provider_message_id: row.get(6),
    }
}

fn summary_row(row: &Row) -> SummaryRow {
    SummaryRow {
        id: id_from(row.get(0)),
        channel: row.get(1),
        status: row.get(2),
        priority: row.get::<_, i16>(3).into(),
        created_at: row.get(4),
        updated_at: row.get(5),
        rounds: row.get::<_, i32>(6).into(),
        last_error: row.get(7),
    }
}

impl PostgresStore {
    /// Runs a `SELECT status, COUNT(*) … GROUP BY status`.
    async fn status_counts(&self, sql: &str) -> Result<Vec<(Status, u64)>, StoreError> {
        let client = self.client().await?;
        let rows = client.query(sql, &[]).await.map_err(pg)?;
        rows.iter()
            .map(|row| Ok((status_from(row.get(0))?, row.get::<_, i64>(1) as u64)))
            .collect()
    }
}

impl PostgresStore {
    async fn claim_inner(
        &self,
        now: UnixMillis,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut client = self.client().await?;
        let token = LeaseToken::random();
        let lease_until = now.plus(lease);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let decode = |rows: &[Row]| -> Result<(Vec<Claimed>, Vec<uuid::Uuid>), StoreError> {
            let mut claimed = Vec::with_capacity(rows.len());
            let mut expired = Vec::new();
            for row in rows {
                let row = ClaimedRow {
                    id: id_from(row.get(0)),
                    channel: row.get(1),
                    payload: row.get(2),
                    rounds: row.get::<_, i32>(3).into(),
                    created_at: row.get(4),
                    expires_at: row.get(5),
                    deliver_by: row.get(6),
                    status: row.get(7),
                    hedge: row.get(8),
                };
                let id = row.id;
                match row.decode(token, lease_until)? {
                    Some(c) => claimed.push(c),
                    None => expired.push(id.as_uuid()),
                }
            }
            Ok((claimed, expired))
        };
        if self.routes.is_empty() {
            let rows = claim_rows(&client, token, lease_until, now, limit).await?;
            return Ok(decode(&rows)?.0);
        }
        // Rows the claim ends `expired` send their events from the same
        // transaction.
        let tx = client.transaction().await.map_err(pg)?;
        let rows = claim_rows(&tx, token, lease_until, now, limit).await?;
        let (claimed, expired) = decode(&rows)?;
        let added = webhooks::record_endings(&tx, &self.routes, &expired).await?;
        tx.commit().await.map_err(pg)?;
        if added > 0 {
            self.webhooks_added.notify_one();
        }
        Ok(claimed)
    }
}

#[async_trait]
impl Store for PostgresStore {
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
        let claimed = self.claim_inner(now, limit, lease).await;
        self.watch(claimed, true)
    }

    async fn complete(
        &self,
        reports: Vec<RoundReport>,
    ) -> Result<Vec<Result<(), LeaseLost>>, StoreError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        self.call(|reply| Command::Complete(reports, reply)).await
    }

    async fn get(&self, id: NotificationId) -> Result<Option<NotificationRecord>, StoreError> {
        let mut client = self.client().await?;
        // One snapshot: the row and its attempts agree.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let key = id.as_uuid();
        let row_stmt = tx
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM notifications WHERE id = $1"
            ))
            .await
            .map_err(pg)?;
        let Some(row) = tx.query_opt(&row_stmt, &[&key]).await.map_err(pg)? else {
            return Ok(None);
        };
        let attempts_stmt = tx
            .prepare_cached(&format!(
                "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE notification_id = $1 ORDER BY seq"
            ))
            .await
            .map_err(pg)?;
        let attempts = tx
            .query(&attempts_stmt, &[&key])
            .await
            .map_err(pg)?
            .iter()
            .map(|row| attempt_row(row).decode())
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = tx
            .query(
                "SELECT key, value FROM notification_metadata WHERE notification_id = $1",
                &[&key],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        tx.commit().await.map_err(pg)?;
        let row = RecordRow {
            channel: row.get(0),
            status: row.get(1),
            priority: row.get::<_, i16>(2).into(),
            created_at: row.get(3),
            updated_at: row.get(4),
            due_at: row.get(5),
            expires_at: row.get(6),
            deliver_by: row.get(7),
            rounds: row.get::<_, i32>(8).into(),
            delivered_by: row.get(9),
            last_error: row.get(10),
            payload: row.get(11),
            callback_url: row.get(12),
            hedge: row.get(13),
            created_by: row.get(14),
        };
        row.decode(id, attempts, metadata).map(Some)
    }

    async fn list(
        &self,
        filter: ListFilter,
        after: Option<NotificationId>,
        limit: usize,
    ) -> Result<Vec<NotificationSummary>, StoreError> {
        let client = self.client().await?;
        let (sql, params) = filter.query(after, limit, |n| format!("${n}"));
        let stmt = client.prepare_cached(&sql).await.map_err(pg)?;
        let values: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = params
            .into_iter()
            .map(|p| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
                match p {
                    ListParam::Text(t) => Box::new(t),
                    ListParam::Rank(r) => Box::new(r),
                    ListParam::Id(id) => Box::new(id.as_uuid()),
                    ListParam::Limit(n) => Box::new(n),
                }
            })
            .collect();
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|v| v.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = client.query(&stmt, &refs).await.map_err(pg)?;
        rows.iter().map(|row| summary_row(row).decode()).collect()
    }

    async fn replay(
        &self,
        id: NotificationId,
        now: UnixMillis,
        expires_at: UnixMillis,
    ) -> Result<ReplayOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let key = id.as_uuid();
        let Some(row) = tx
            .query_opt(
                "SELECT status FROM notifications WHERE id = $1 FOR UPDATE",
                &[&key],
            )
            .await
            .map_err(pg)?
        else {
            return Ok(ReplayOutcome::NotFound);
        };
        let status = status_from(row.get(0))?;
        if !matches!(status, Status::Dead | Status::Failed) {
            return Ok(ReplayOutcome::NotReplayable(status));
        }
        tx.execute(
            "UPDATE notifications
                SET status = 'queued', due_at = $2, rounds = 0, lease_token = NULL,
                    expires_at = $3, updated_at = $2
              WHERE id = $1",
            &[&key, &now.0, &expires_at.0],
        )
        .await
        .map_err(pg)?;
        tx.execute("SELECT pg_notify($1, '')", &[&NOTIFY_CHANNEL])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(ReplayOutcome::Requeued)
    }

    async fn cancel(
        &self,
        id: NotificationId,
        now: UnixMillis,
    ) -> Result<CancelOutcome, StoreError> {
        let client = self.client().await?;
        let key = id.as_uuid();
        // A claim holding the row (FOR UPDATE) makes this wait for its
        // commit, after which the row is `sending` and no longer matches;
        // a cancel that wins first leaves the claim nothing to see.
        let stmt = client
            .prepare_cached(
                "UPDATE notifications
                    SET status = 'canceled', due_at = NULL, lease_token = NULL, updated_at = $2
                  WHERE id = $1 AND status IN ('scheduled', 'queued', 'retrying')",
            )
            .await
            .map_err(pg)?;
        if client.execute(&stmt, &[&key, &now.0]).await.map_err(pg)? == 1 {
            return Ok(CancelOutcome::Canceled);
        }
        let row = client
            .query_opt("SELECT status FROM notifications WHERE id = $1", &[&key])
            .await
            .map_err(pg)?;
        match row {
            Some(row) => Ok(CancelOutcome::NotCancelable(status_from(row.get(0))?)),
            None => Ok(CancelOutcome::NotFound),
        }
    }

    async fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        self.status_counts("SELECT status, COUNT(*) FROM notifications GROUP BY status")
            .await
    }

    async fn backlog(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        self.status_counts(
            "SELECT status, COUNT(*) FROM notifications
              WHERE status IN ('scheduled', 'queued', 'retrying', 'sending')
              GROUP BY status",
        )
        .await
    }

    async fn purge(&self, before: UnixMillis, limit: usize) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let stmt = client
            .prepare_cached(
                "WITH gone AS (
                     DELETE FROM notifications
                      WHERE id IN (SELECT id FROM notifications
                                    WHERE status IN ('sent', 'delivered') AND id < $3 AND updated_at < $1
                                    LIMIT $2)
                     RETURNING id),
                 attempts_gone AS (
                     DELETE FROM attempts WHERE notification_id IN (SELECT id FROM gone)),
                 metadata_gone AS (
                     DELETE FROM notification_metadata
                      WHERE notification_id IN (SELECT id FROM gone))
                 SELECT COUNT(*) FROM gone",
            )
            .await
            .map_err(pg)?;
        // Anything last updated before `before` was created before it too:
        // the id bound keeps the index walk to those rows.
        let created_before = NotificationId::first_at(before).as_uuid();
        let row = client
            .query_one(&stmt, &[&before.0, &limit, &created_before])
            .await
            .map_err(pg)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn purge_keys(&self, before: UnixMillis, limit: usize) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let gone = client
            .execute(
                "DELETE FROM idempotency_keys
                  WHERE ctid IN (SELECT ctid FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
                &[&before.0, &limit],
            )
            .await
            .map_err(pg)?;
        Ok(gone)
    }

    async fn claim_webhooks(
        &self,
        now: UnixMillis,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedWebhook>, StoreError> {
        let client = self.client().await?;
        let claimed = webhooks::claim(&client, now, limit, lease).await;
        self.watch(claimed, true)
    }

    async fn complete_webhooks(
        &self,
        reports: Vec<WebhookReport>,
    ) -> Result<Vec<Result<(), LeaseLost>>, StoreError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let completed = webhooks::complete(&client, &reports).await;
        self.watch(completed, true)
    }

    async fn webhook_deliveries(
        &self,
        status: Option<WebhookStatus>,
        after: Option<WebhookId>,
        limit: usize,
    ) -> Result<Vec<WebhookDeliveryRecord>, StoreError> {
        let client = self.client().await?;
        webhooks::list(&client, status, after, limit).await
    }

    async fn webhook_backlog(&self) -> Result<Vec<(WebhookStatus, u64)>, StoreError> {
        let client = self.client().await?;
        webhooks::backlog(&client).await
    }

    async fn purge_webhooks(&self, before: UnixMillis, limit: usize) -> Result<u64, StoreError> {
        let client = self.client().await?;
        webhooks::purge(&client, before, limit).await
    }

    async fn redeliver_webhook(
        &self,
        id: WebhookId,
        now: UnixMillis,
    ) -> Result<RedeliverOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let outcome = webhooks::redeliver(&tx, id, now).await?;
        tx.commit().await.map_err(pg)?;
        if outcome == RedeliverOutcome::Requeued {
            self.webhooks_added.notify_one();
        }
        Ok(outcome)
    }

    fn webhooks_added(&self) -> Arc<Notify> {
        Arc::clone(&self.webhooks_added)
    }

    async fn create_api_key(&self, key: ApiKeyRecord) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let burst = key.burst.map(|b| i32::try_from(b).unwrap_or(i32::MAX));
        let stored = client
            .execute(
                "INSERT INTO api_keys
                     (name, key_hash, scopes, rate_per_sec, burst, created_at, revoked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT DO NOTHING",
                &[
                    &key.name,
                    &key.key_hash,
                    &key.scopes,
                    &key.rate_per_sec,
                    &burst,
                    &key.created_at.0,
                    &key.revoked_at.map(|t| t.0),
                ],
            )
            .await
            .map_err(pg)?;
        Ok(stored == 1)
    }

    async fn revoke_api_key(&self, name: &str, at: UnixMillis) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
                &[&name, &at.0],
            )
            .await
            .map_err(pg)?;
        Ok(changed == 1)
    }

    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name, key_hash, scopes, rate_per_sec, burst, created_at, revoked_at
                   FROM api_keys ORDER BY name",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| ApiKeyRecord {
                name: r.get(0),
                key_hash: r.get(1),
                scopes: r.get(2),
                rate_per_sec: r.get(3),
                burst: r.get::<_, Option<i32>>(4).map(|b| b.max(0) as u32),
                created_at: UnixMillis(r.get(5)),
                revoked_at: r.get::<_, Option<i64>>(6).map(UnixMillis),
            })
            .collect())
    }

    async fn set_provider_disabled(
        &self,
        name: &str,
        disabled: bool,
        at: UnixMillis,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let changed = if disabled {
            client
                .execute(
                    "INSERT INTO disabled_providers (name, disabled_at) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                    &[&name, &at.0],
                )
                .await
        } else {
            client
                .execute("DELETE FROM disabled_providers WHERE name = $1", &[&name])
                .await
        }
        .map_err(pg)?;
        Ok(changed == 1)
    }

    async fn disabled_providers(&self) -> Result<Vec<(String, UnixMillis)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name, disabled_at FROM disabled_providers ORDER BY name",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), UnixMillis(r.get(1))))
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let probed = self.probe().await;
        self.watch(probed, true)
    }

    fn state(&self) -> super::StoreState {
        self.health.snapshot()
    }

    fn subscribe(&self, wake: Arc<Notify>) {
        let wakes = listen::Wakes {
            work: wake,
            webhooks: Arc::clone(&self.webhooks_added),
        };
        let task = tokio::spawn(listen::run(self.config.clone(), self.tls.clone(), wakes));
        // (The LISTEN connection follows the primary through the same URL:
        // target_session_attrs skips standbys, and a standby refuses LISTEN.)
        if let Some(old) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    async fn close(&self) {
        // Dropping the sender lets the writer finish what is queued, then end.
        let sender = self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(sender);
        let writers = std::mem::take(&mut *self.writers.lock().unwrap_or_else(|p| p.into_inner()));
        for writer in writers {
            let _ = writer.await;
        }
        if let Some(listener) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            listener.abort();
        }
        self.pool.close();
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(listener) = self
            .listener
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            listener.abort();
        }
    }
}
