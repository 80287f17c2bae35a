//! Group commit: a writer takes every insert and completion waiting in the
//! queue and writes them in one transaction, a handful of statements
//! whatever the batch's size (arrays through `UNNEST`). Each caller is
//! answered only once that transaction committed.
//!
//! A few writers share the queue, each on its own connection: while one
//! waits for its commit, the next takes what arrived meanwhile. A batch's
//! round trips, not the server's work, bound a single writer.

use crate::resilience::clock;
use std::collections::HashSet;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use uuid::Uuid;

use super::health::Health;
use super::{NOTIFY_CHANNEL, pg, webhooks};
use crate::store::{
    Completion, IdempotencyKey, KeyedInsert, LeaseLost, NewNotification, RoundReport, StoreError,
    StoredAnswer, WebhookRoutes,
};

pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub enum Command {
    Insert(NewNotification, Reply<()>),
    InsertMany(Vec<NewNotification>, Reply<()>),
    InsertKeyed(Vec<NewNotification>, IdempotencyKey, Reply<KeyedInsert>),
    Complete(Vec<RoundReport>, Reply<Vec<Result<(), LeaseLost>>>),
}

impl Command {
    fn rows(&self) -> usize {
        match self {
            Command::Insert(..) => 1,
            Command::InsertKeyed(ns, ..) | Command::InsertMany(ns, _) => ns.len().max(1),
            Command::Complete(reports, _) => reports.len().max(1),
        }
    }
}

/// The transaction of a whole batch failed: every caller in it gets this.
#[derive(Debug, thiserror::Error)]
#[error("the batch's transaction failed")]
pub struct BatchFailed(#[source] Arc<StoreError>);

/// No writable primary was reachable a moment ago: the batch is failed at
/// once rather than trying again before the backoff is over.
#[derive(Debug, thiserror::Error)]
#[error("no writable primary (next attempt in {0} ms)")]
pub struct NoPrimary(pub u128);

/// Where a writer's transactions send the events of ending notifications.
pub struct Outbox {
    pub routes: Arc<WebhookRoutes>,
    /// Poked after a commit that added webhook deliveries.
    pub added: Arc<Notify>,
}

/// One writer: takes a batch from the shared queue, writes it, repeats until
/// the queue is closed and empty.
pub async fn run(
    pool: Pool,
    queue: Arc<Mutex<mpsc::Receiver<Command>>>,
    max_batch: usize,
    outbox: Outbox,
    health: Arc<Health>,
) {
    loop {
        let batch = {
            let mut rx = queue.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut rows = first.rows();
            let mut batch = vec![first];
            while rows < max_batch {
                match rx.try_recv() {
                    Ok(cmd) => {
                        rows += cmd.rows();
                        batch.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        write_batch(&pool, &outbox, &health, batch).await;
    }
}

/// A batch's commands by kind, each with the caller to answer.
struct Grouped {
    inserts: Vec<(Vec<NewNotification>, Reply<()>)>,
    keyed: Vec<KeyedCommand>,
    completes: Vec<CompleteCommand>,
}

type CompleteCommand = (Vec<RoundReport>, Reply<Vec<Result<(), LeaseLost>>>);

impl Grouped {
    fn new(batch: Vec<Command>) -> Self {
        let mut grouped = Grouped {
            inserts: Vec::new(),
            keyed: Vec::new(),
            completes: Vec::new(),
        };
        for cmd in batch {
            match cmd {
                Command::Insert(n, reply) => grouped.inserts.push((vec![n], reply)),
                Command::InsertMany(ns, reply) => grouped.inserts.push((ns, reply)),
                Command::InsertKeyed(ns, key, reply) => grouped.keyed.push((ns, key, reply)),
                Command::Complete(reports, reply) => grouped.completes.push((reports, reply)),
            }
        }
        grouped
    }

    fn commands(&self) -> usize {
        self.inserts.len() + self.keyed.len() + self.completes.len()
    }

    /// The commands again, each to be written alone.
    fn split(self) -> impl Iterator<Item = Grouped> {
        let inserts = self
            .inserts
            .into_iter()
            .map(|(ns, reply)| Command::InsertMany(ns, reply));
        let keyed = self
            .keyed
            .into_iter()
            .map(|(ns, key, reply)| Command::InsertKeyed(ns, key, reply));
        let completes = self
            .completes
            .into_iter()
            .map(|(reports, reply)| Command::Complete(reports, reply));
        inserts
            .chain(keyed)
            .chain(completes)
            .map(|cmd| Grouped::new(vec![cmd]))
    }

    async fn write(&self, pool: &Pool, outbox: &Outbox) -> Result<Written, StoreError> {
        let reports: Vec<&RoundReport> =
            self.completes.iter().flat_map(|(r, _)| r.iter()).collect();
        let started = clock::instant();
        let written = transact(pool, &outbox.routes, &self.inserts, &self.keyed, &reports).await;
        crate::metrics::metrics().store_commit(
            started.elapsed(),
            self.inserts.len() + self.keyed.len() + reports.len(),
        );
        written
    }

    fn answer(self, outbox: &Outbox, (outcomes, keyed_outcomes, added): Written) {
        if added > 0 {
            outbox.added.notify_one();
        }
        for (_, reply) in self.inserts {
            let _ = reply.send(Ok(()));
        }
        for ((_, _, reply), outcome) in self.keyed.into_iter().zip(keyed_outcomes) {
            let _ = reply.send(Ok(outcome));
        }
        let mut outcomes = outcomes.into_iter();
        for (reports, reply) in self.completes {
            let mine = outcomes.by_ref().take(reports.len()).collect();
            let _ = reply.send(Ok(mine));
        }
    }

    fn fail(self, e: StoreError) {
        let e = Arc::new(e);
        let fail = || StoreError::Backend(Box::new(BatchFailed(Arc::clone(&e))));
        for (_, reply) in self.inserts {
            let _ = reply.send(Err(fail()));
        }
        for (_, _, reply) in self.keyed {
            let _ = reply.send(Err(fail()));
        }
        for (_, reply) in self.completes {
            let _ = reply.send(Err(fail()));
        }
    }
}

async fn write_batch(pool: &Pool, outbox: &Outbox, health: &Health, batch: Vec<Command>) {
    let grouped = Grouped::new(batch);
    if let Some(wait) = health.wait() {
        grouped.fail(StoreError::Backend(Box::new(NoPrimary(wait.as_millis()))));
        return;
    }
    let commands = grouped.commands();
    let written = grouped.write(pool, outbox).await;
    match &written {
        Ok(_) => health.succeeded(),
        Err(e) => {
            health.failed(e);
        }
    }
    match written {
        Ok(written) => grouped.answer(outbox, written),
        // The server refused something and undid the whole transaction: one
        // caller's bad row (a text PostgreSQL cannot store, a constraint)
        // must not fail the others. Each command is written again alone, so
        // only the bad one gets the error. A refusal is an answer, so
        // nothing of the batch was committed and none is written twice.
        Err(e) if commands > 1 && refused_by_server(&e) => {
            tracing::warn!(
                commands,
                error = %crate::error::chain(&e),
                "postgres refused a write batch; writing its commands one by one"
            );
            for alone in grouped.split() {
                match alone.write(pool, outbox).await {
                    Ok(written) => alone.answer(outbox, written),
                    Err(e) if already_stored(pool, &alone, &e).await => {
                        alone.answer(outbox, (Vec::new(), Vec::new(), 0));
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::error::chain(&e), "a postgres write failed on its own; its caller is told");
                        alone.fail(e);
                    }
                }
            }
        }
        Err(e) => {
            // A lost primary is logged once, by the health; each batch that
            // meets it only here.
            if e.connection_kind().is_some() {
                tracing::debug!(error = %crate::error::chain(&e), "a postgres write batch failed; its callers are told");
            } else {
                tracing::warn!(error = %crate::error::chain(&e), "a postgres write batch failed; its callers are told");
            }
            grouped.fail(e);
        }
    }
}

/// Whether the server itself answered with an error (which rolls the
/// transaction back), rather than the connection failing (after which a
/// commit may or may not have happened).
fn refused_by_server(e: &StoreError) -> bool {
    server_error(e).is_some()
}

fn server_error(e: &StoreError) -> Option<&tokio_postgres::error::DbError> {
    match e {
        StoreError::Backend(source) => source
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error),
        _ => None,
    }
}

/// A plain insert written again that meets its own ids already stored
/// (a duplicate key) was stored after all: its caller is told so, never
/// "failed" for a notification that exists and will be sent.
async fn already_stored(pool: &Pool, alone: &Grouped, e: &StoreError) -> bool {
    let duplicate = server_error(e)
        .is_some_and(|db| *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION);
    let [(ns, _)] = alone.inserts.as_slice() else {
        return false;
    };
    if !duplicate || !alone.keyed.is_empty() || !alone.completes.is_empty() {
        return false;
    }
    let ids: Vec<Uuid> = ns.iter().map(|n| n.id.as_uuid()).collect();
    let Ok(client) = pool.get().await else {
        return false;
    };
    client
        .query_one(
            "SELECT count(*) FROM notifications WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .is_ok_and(|row| usize::try_from(row.get::<_, i64>(0)) == Ok(ids.len()))
}

type KeyedCommand = (Vec<NewNotification>, IdempotencyKey, Reply<KeyedInsert>);

/// What one transaction did: an outcome per report and per keyed insert,
/// in order, and how many webhook deliveries it added.
type Written = (Vec<Result<(), LeaseLost>>, Vec<KeyedInsert>, usize);

/// Writes everything in one transaction.
async fn transact(
    pool: &Pool,
    routes: &WebhookRoutes,
    plain: &[(Vec<NewNotification>, Reply<()>)],
    keyed: &[KeyedCommand],
    reports: &[&RoundReport],
) -> Result<Written, StoreError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| StoreError::Backend(Box::new(e)))?;
    let tx = client.transaction().await.map_err(pg)?;

    let mut keyed_outcomes = Vec::with_capacity(keyed.len());
    let mut inserts: Vec<&NewNotification> = plain.iter().flat_map(|(ns, _)| ns).collect();
    for (ns, key, _) in keyed {
        let outcome = claim_key(&tx, key).await?;
        if outcome == KeyedInsert::Stored {
            inserts.extend(ns.iter());
        }
        keyed_outcomes.push(outcome);
    }

    if !inserts.is_empty() {
        let mut ids = Vec::with_capacity(inserts.len());
        let mut channels = Vec::with_capacity(inserts.len());
        let mut payloads = Vec::with_capacity(inserts.len());
        let mut created = Vec::with_capacity(inserts.len());
        let mut expires = Vec::with_capacity(inserts.len());
        let mut tokens: Vec<Option<i64>> = Vec::with_capacity(inserts.len());
        let mut statuses = Vec::with_capacity(inserts.len());
        let mut dues = Vec::with_capacity(inserts.len());
        let mut deliver_by: Vec<Option<i64>> = Vec::with_capacity(inserts.len());
        let mut priorities: Vec<i16> = Vec::with_capacity(inserts.len());
        let mut callbacks: Vec<Option<&str>> = Vec::with_capacity(inserts.len());
        let mut hedges: Vec<bool> = Vec::with_capacity(inserts.len());
        let mut creators: Vec<Option<&str>> = Vec::with_capacity(inserts.len());
        for n in &inserts {
            ids.push(n.id.as_uuid());
            channels.push(n.channel.as_str());
            payloads.push(n.payload.as_str());
            created.push(n.created_at.0);
            expires.push(n.expires_at.0);
            tokens.push(n.lease.map(|l| l.token.0));
            statuses.push(n.initial_status().as_str());
            dues.push(n.due_at().0);
            deliver_by.push(n.deliver_by.map(|t| t.0));
            priorities.push(n.priority.rank());
            callbacks.push(n.callback_url.as_deref());
            hedges.push(n.hedge);
            creators.push(n.created_by.as_deref());
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO notifications
                     (id, channel, payload, status, due_at, lease_token,
                      created_at, updated_at, expires_at, deliver_by, priority, callback_url,
                      hedge, created_by)
                 SELECT id, channel, payload, status, due, token, at, at, expires, deliver_by,
                        priority, callback_url, hedge, created_by
                   FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::int8[],
                               $6::int8[], $7::text[], $8::int8[], $9::int8[], $10::int2[],
                               $11::text[], $12::bool[], $13::text[])
                     AS n(id, channel, payload, at, expires, token, status, due, deliver_by,
                          priority, callback_url, hedge, created_by)",
            )
            .await
            .map_err(pg)?;
        tx.execute(
            &stmt,
            &[
                &ids,
                &channels,
                &payloads,
                &created,
                &expires,
                &tokens,
                &statuses,
                &dues,
                &deliver_by,
                &priorities,
                &callbacks,
                &hedges,
                &creators,
            ],
        )
        .await
        .map_err(pg)?;
        add_metadata(&tx, &inserts).await?;
    }

    let mut outcomes = vec![Err(LeaseLost); reports.len()];
    // One UPDATE per pass; a pass never holds the same id twice, since a
    // join would match such a row only once.
    let mut pending: Vec<usize> = (0..reports.len()).collect();
    let mut won = Vec::new();
    while !pending.is_empty() {
        let mut seen = HashSet::new();
        let (pass, later): (Vec<usize>, Vec<usize>) = pending
            .into_iter()
            .partition(|&i| seen.insert(reports[i].id));
        pending = later;
        for ord in complete_pass(&tx, reports, &pass).await? {
            outcomes[ord] = Ok(());
            won.push(ord);
        }
    }
    won.sort_unstable();
    add_attempts(&tx, reports, &won).await?;
    let ended: Vec<Uuid> = won
        .iter()
        .map(|&i| reports[i])
        .filter(|r| r.completion.ends())
        .map(|r| r.id.as_uuid())
        .collect();
    let added = webhooks::record_endings(&tx, routes, &ended).await?;

    // Handed-off inserts are already in their dispatcher's hands.
    let wakes = inserts.iter().any(|n| n.lease.is_none())
        || reports
            .iter()
            .any(|r| matches!(r.completion, Completion::Released));
    if wakes {
        // Delivered at commit, and once per transaction: other instances
        // hear of a whole batch at once.
        tx.execute("SELECT pg_notify($1, '')", &[&NOTIFY_CHANNEL])
            .await
            .map_err(pg)?;
    }
    tx.commit().await.map_err(pg)?;
    Ok((outcomes, keyed_outcomes, added))
}

/// The inserted notifications' metadata, one row per entry.
async fn add_metadata(
    tx: &deadpool_postgres::Transaction<'_>,
    inserts: &[&NewNotification],
) -> Result<(), StoreError> {
    let mut ids: Vec<Uuid> = Vec::new();
    let mut keys: Vec<&str> = Vec::new();
    let mut values: Vec<&str> = Vec::new();
    for n in inserts {
        for (key, value) in &n.metadata {
            ids.push(n.id.as_uuid());
            keys.push(key);
            values.push(value);
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO notification_metadata (notification_id, key, value)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[])",
        )
        .await
        .map_err(pg)?;
    tx.execute(&stmt, &[&ids, &keys, &values])
        .await
        .map_err(pg)?;
    Ok(())
}

/// Records `key` unless it is already stored (and not expired). `ON
/// CONFLICT DO NOTHING` never fails the transaction: a key another
/// transaction is inserting makes this wait for its commit, then read it.
async fn claim_key(
    tx: &deadpool_postgres::Transaction<'_>,
    key: &IdempotencyKey,
) -> Result<KeyedInsert, StoreError> {
    let expire = tx
        .prepare_cached(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at < $3",
        )
        .await
        .map_err(pg)?;
    tx.execute(&expire, &[&key.scope, &key.key, &key.expired_before.0])
        .await
        .map_err(pg)?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO idempotency_keys
                 (scope, key, fingerprint, status_code, response, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (scope, key) DO NOTHING",
        )
        .await
        .map_err(pg)?;
    let stored = tx
        .execute(
            &insert,
            &[
                &key.scope,
                &key.key,
                &key.fingerprint,
                &i32::from(key.status_code),
                &key.response,
                &key.created_at.0,
            ],
        )
        .await
        .map_err(pg)?;
    if stored == 1 {
        return Ok(KeyedInsert::Stored);
    }
    let first = tx
        .query_one(
            "SELECT fingerprint, status_code, response FROM idempotency_keys
              WHERE scope = $1 AND key = $2",
            &[&key.scope, &key.key],
        )
        .await
        .map_err(pg)?;
    Ok(KeyedInsert::Replayed(StoredAnswer {
        fingerprint: first.get(0),
        status_code: u16::try_from(first.get::<_, i32>(1)).unwrap_or(500),
        response: first.get(2),
    }))
}

/// Updates the rows of `pass` whose lease still holds; returns their
/// positions in `reports`.
async fn complete_pass(
    tx: &deadpool_postgres::Transaction<'_>,
    reports: &[&RoundReport],
    pass: &[usize],
) -> Result<Vec<usize>, StoreError> {
    let n = pass.len();
    let mut ids: Vec<Uuid> = Vec::with_capacity(n);
    let mut leases: Vec<i64> = Vec::with_capacity(n);
    let mut statuses: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut dues: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut counted: Vec<i32> = Vec::with_capacity(n);
    let mut providers: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut ats: Vec<i64> = Vec::with_capacity(n);
    let mut ords: Vec<i32> = Vec::with_capacity(n);
    for &i in pass {
        let r = reports[i];
        let c = super::super::completion_columns(r);
        ids.push(r.id.as_uuid());
        leases.push(r.lease.0);
        statuses.push(c.status);
        dues.push(c.due_at);
        counted.push(i32::from(c.counted));
        providers.push(c.provider);
        errors.push(c.error);
        ats.push(r.at.0);
        ords.push(i as i32);
    }
    let stmt = tx
        .prepare_cached(
            "UPDATE notifications AS n SET
                 status = COALESCE(r.status,
                     CASE WHEN n.rounds + r.counted > 0 THEN 'retrying' ELSE 'queued' END),
                 due_at = r.due_at,
                 rounds = n.rounds + r.counted,
                 lease_token = NULL,
                 delivered_by = COALESCE(r.provider, n.delivered_by),
                 last_error = COALESCE(r.error, n.last_error),
                 updated_at = r.at
               FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::int8[], $5::int4[],
                           $6::text[], $7::text[], $8::int8[], $9::int4[])
                 AS r(id, lease, status, due_at, counted, provider, error, at, ord)
              WHERE n.id = r.id AND n.lease_token = r.lease AND n.status = 'sending'
             RETURNING r.ord",
        )
        .await
        .map_err(pg)?;
    let rows = tx
        .query(
            &stmt,
            &[
                &ids, &leases, &statuses, &dues, &counted, &providers, &errors, &ats, &ords,
            ],
        )
        .await
        .map_err(pg)?;
    Ok(rows
        .iter()
        .map(|row| row.get::<_, i32>(0) as usize)
        .collect())
}

/// Records the attempts of the rounds whose write won, in their order.
async fn add_attempts(
    tx: &deadpool_postgres::Transaction<'_>,
    reports: &[&RoundReport],
    won: &[usize],
) -> Result<(), StoreError> {
    let mut ids: Vec<Uuid> = Vec::new();
    let mut started: Vec<i64> = Vec::new();
    let mut providers: Vec<&str> = Vec::new();
    let mut durations: Vec<i64> = Vec::new();
    let mut outcomes: Vec<&str> = Vec::new();
    let mut statuses: Vec<Option<i32>> = Vec::new();
    let mut errors: Vec<Option<&str>> = Vec::new();
    let mut message_ids: Vec<Option<&str>> = Vec::new();
    for &i in won {
        let r = reports[i];
        for a in &r.attempts {
            ids.push(r.id.as_uuid());
            started.push(a.started_at.0);
            providers.push(&a.provider);
            durations.push(i64::try_from(a.duration_ms).unwrap_or(i64::MAX));
            outcomes.push(a.outcome.as_str());
            statuses.push(a.http_status.map(i32::from));
            errors.push(a.error.as_deref());
            message_ids.push(a.provider_message_id.as_deref());
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO attempts
                 (notification_id, started_at, provider, duration_ms, outcome, http_status, error,
                  provider_message_id)
             SELECT id, started, provider, duration, outcome, status, error, message_id
               FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::int8[], $5::text[],
                           $6::int4[], $7::text[], $8::text[])
                    WITH ORDINALITY
                 AS a(id, started, provider, duration, outcome, status, error, message_id, ord)
              ORDER BY ord",
        )
        .await
        .map_err(pg)?;
    tx.execute(
        &stmt,
        &[
            &ids,
            &started,
            &providers,
            &durations,
            &outcomes,
            &statuses,
            &errors,
            &message_ids,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}
