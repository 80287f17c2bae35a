//! Writing rounds' results back to the store, in batches.
//!
//! Rounds end one by one; writing each result on its own would make one
//! small store transaction (and one fsync) per round. Results that finish
//! within a moment of each other are written together instead. A round's
//! capacity and lease stay held until its result is written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinHandle;

use crate::domain::{Channel, NotificationId, UnixMillis};
use crate::error::chain;
use crate::resilience::clock::{Clock, SharedClock};
use crate::store::Completion;
use crate::store::{LeaseToken, RoundReport, Store};

/// How long a finished round waits for others to share its write.
const GATHER: Duration = Duration::from_millis(2);

/// Leases held by rounds not yet written back, so that the ones cut short
/// at shutdown can be given back at once instead of waiting out their lease.
pub(super) type Held = Arc<Mutex<HashMap<NotificationId, LeaseToken>>>;

pub(super) fn lock(held: &Held) -> std::sync::MutexGuard<'_, HashMap<NotificationId, LeaseToken>> {
    held.lock().unwrap_or_else(|p| p.into_inner())
}

/// A round's result, with what it holds until written.
pub(super) struct Finished {
    pub report: RoundReport,
    pub channel: Channel,
    pub lease_until: UnixMillis,
    /// The round's dispatcher capacity, given back when this is dropped.
    pub _permit: OwnedSemaphorePermit,
}

/// Starts the writer; it stops once every sender is gone and all that was
/// sent is written.
pub(super) fn spawn(
    store: Arc<dyn Store>,
    held: Held,
    max_batch: usize,
    clock: SharedClock,
) -> (mpsc::UnboundedSender<Finished>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(store, held, rx, max_batch.max(1), clock));
    (tx, task)
}

async fn run(
    store: Arc<dyn Store>,
    held: Held,
    mut rx: mpsc::UnboundedReceiver<Finished>,
    max_batch: usize,
    clock: SharedClock,
) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        tokio::time::sleep(GATHER).await;
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(finished) => batch.push(finished),
                Err(_) => break,
            }
        }
        write(&*store, &held, &*clock, &mut batch).await;
        let mut held = lock(&held);
        for finished in batch.drain(..) {
            held.remove(&finished.report.id);
        }
    }
}

/// Tries of a whole batch before each result in it is written on its own.
const TRIES_TOGETHER: u32 = 3;

/// Writes `batch`, retrying while the store is unavailable, for as long as
/// each lease holds: after that the work belongs to the next claim.
///
/// After a few failed tries each result is written alone, so that one the
/// store refuses does not hold its batch-mates back; and one refused alone
/// while the store takes others' (a text it cannot store, say) is written
/// in its minimal form ([`RoundReport::minimal`]) and counted as a store
/// fault. Retrying it whole until the lease lapsed would have the round
/// redone and its provider sent to again, every lease, until the
/// notification's age ran out.
async fn write(store: &dyn Store, held: &Held, clock: &dyn Clock, batch: &mut Vec<Finished>) {
    let mut pause = Duration::from_millis(50);
    let mut tries = 0;
    while !batch.is_empty() {
        tries += 1;
        let reports = batch.iter().map(|f| f.report.clone()).collect();
        let e = match store.complete(reports).await {
            Ok(results) => {
                for (finished, result) in batch.iter().zip(results) {
                    written(finished, result, tries > 1);
                }
                return;
            }
            Err(e) => e,
        };
        if tries >= TRIES_TOGETHER {
            write_each(store, held, batch).await;
        }
        let retry_by = clock.now().plus(pause);
        batch.retain(|f| {
            let keep = retry_by < f.lease_until;
            if !keep {
                tracing::error!(
                    id = %f.report.id,
                    error = %chain(&e),
                    "could not write a result before the lease lapsed; the round will be redone"
                );
                lock(held).remove(&f.report.id);
            }
            keep
        });
        if !batch.is_empty() {
            tracing::warn!(count = batch.len(), error = %chain(&e), "writing results failed; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// Writes each result of `batch` alone, then in its minimal form if the
/// store refuses it; takes out of `batch` every one written. What is left
/// could not be written even minimally: the store itself is failing.
async fn write_each(store: &dyn Store, held: &Held, batch: &mut Vec<Finished>) {
    let mut left = Vec::new();
    let mut pending = batch.drain(..);
    while let Some(finished) = pending.next() {
        let refused = match store.complete(vec![finished.report.clone()]).await {
            Ok(mut results) => {
                written(&finished, results.pop().unwrap_or(Ok(())), true);
                lock(held).remove(&finished.report.id);
                continue;
            }
            Err(e) => e,
        };
        match store.complete(vec![finished.report.minimal()]).await {
            Ok(mut results) => {
                let result = results.pop().unwrap_or(Ok(()));
                if result.is_ok() {
                    crate::metrics::metrics().store_fault();
                    tracing::error!(
                        id = %finished.report.id,
                        error = %chain(&refused),
                        "a store fault: the store kept refusing this round's result while it took others; \
                         written without its error texts and provider message ids, and not sent again"
                    );
                }
                written(&finished, result, true);
                lock(held).remove(&finished.report.id);
            }
            // Not even the minimal form: the store itself is failing, and
            // each further write would only wait for it too.
            Err(_) => {
                left.push(finished);
                left.extend(pending.by_ref());
            }
        }
    }
    drop(pending);
    *batch = left;
}

/// A result's write came back: counted when it won, noted when its lease
/// was gone. `retried`: an earlier try failed, and may have committed all
/// the same (a commit in doubt), which also reads as a lost lease.
fn written(finished: &Finished, result: Result<(), crate::store::LeaseLost>, retried: bool) {
    match result {
        Ok(()) => count_outcome(finished),
        Err(lost) if retried => tracing::warn!(
            id = %finished.report.id,
            "{lost}: another claim owns this notification, or an earlier try whose answer was lost wrote this result"
        ),
        Err(lost) => {
            tracing::warn!(id = %finished.report.id, "{lost}; another claim owns this notification");
        }
    }
}

/// A written round that ended its notification counts once, by outcome.
fn count_outcome(finished: &Finished) {
    let outcome = match &finished.report.completion {
        Completion::Sent { .. } => "sent",
        Completion::Failed { .. } => "failed",
        Completion::Expired { .. } => "expired",
        Completion::Dead { .. } => "dead",
        Completion::Retry { .. } | Completion::Released => return,
    };
    crate::metrics::metrics().notification(finished.channel.as_str(), outcome);
    // The error stays out: a provider's may quote the message. The record
    // (GET /v1/notifications/{id}) has it.
    tracing::info!(
        id = %finished.report.id,
        channel = finished.channel.as_str(),
        attempts_this_round = finished.report.attempts.len(),
        "{outcome}"
    );
}

#[cfg(test)]
mod tests {
    use tokio::sync::Semaphore;

    use super::*;
    use crate::resilience::clock::TokioClock;
    use crate::store::{Completion, SqliteOptions, SqliteStore};

    /// SQLite's side of the PostgreSQL test in tests/delivery.rs: a
    /// trigger refuses one round's attempt (by its error text) while the
    /// store takes everything else. Its neighbour in the same batch is
    /// written whole; it is written minimally, as a store fault, well
    /// within its lease (so its round is not redone).
    #[tokio::test]
    async fn a_result_the_store_refuses_alone_is_written_minimally() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let store = SqliteStore::open(path.to_str().unwrap(), SqliteOptions::default())
            .await
            .unwrap();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON attempts WHEN NEW.error LIKE '%refuse-me%'
                 BEGIN SELECT RAISE(ABORT, 'this attempt cannot be stored'); END;",
            )
            .unwrap();
        let now = UnixMillis::now();
        for _ in 0..2 {
            store
                .insert(crate::store::NewNotification::due_now(
                    Channel::Sms,
                    r#"{"phone":"01712345678","text":"t"}"#.into(),
                    now,
                    now.plus(Duration::from_secs(3600)),
                ))
                .await
                .unwrap();
        }
        let claimed = store.claim(now, 10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(claimed.len(), 2);
        let store: Arc<dyn Store> = Arc::new(store);
        let held: Held = Arc::default();
        let clock = crate::resilience::clock::SystemClock;
        let (results, writer) = spawn(Arc::clone(&store), Arc::clone(&held), 8, Arc::new(clock));
        let capacity = Arc::new(Semaphore::new(2));
        for (c, error) in claimed.iter().zip(["refuse-me: \\0", "HTTP 400: no"]) {
            let report = RoundReport {
                id: c.id,
                lease: c.lease,
                attempts: vec![crate::domain::Attempt {
                    provider: "p1".into(),
                    started_at: now,
                    duration_ms: 3,
                    outcome: crate::domain::AttemptOutcome::Rejected,
                    http_status: Some(400),
                    error: Some(error.into()),
                    provider_message_id: None,
                }],
                completion: Completion::Failed {
                    error: error.into(),
                },
                at: now,
            };
            lock(&held).insert(c.id, c.lease);
            results
                .send(Finished {
                    report,
                    channel: Channel::Sms,
                    lease_until: c.lease_until,
                    _permit: Arc::clone(&capacity).try_acquire_owned().unwrap(),
                })
                .unwrap();
        }
        drop(results);
        writer.await.unwrap();
        assert!(lock(&held).is_empty());
        assert_eq!(capacity.available_permits(), 2);

        let refused = store.get(claimed[0].id).await.unwrap().unwrap();
        assert_eq!(refused.status, crate::domain::Status::Failed);
        assert_eq!(
            refused.last_error.as_deref(),
            Some(crate::store::STORE_FAULT)
        );
        assert_eq!(refused.attempts.len(), 1);
        assert_eq!(refused.attempts[0].error, None);
        assert_eq!(refused.attempts[0].http_status, Some(400));
        let neighbour = store.get(claimed[1].id).await.unwrap().unwrap();
        assert_eq!(neighbour.status, crate::domain::Status::Failed);
        assert_eq!(neighbour.last_error.as_deref(), Some("HTTP 400: no"));
        assert_eq!(neighbour.attempts[0].error.as_deref(), Some("HTTP 400: no"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_result_that_cannot_be_written_is_let_go_when_its_lease_lapses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let store = SqliteStore::open(path.to_str().unwrap(), SqliteOptions::default())
            .await
            .unwrap();
        // A closed store refuses every write, as an unreachable one would.
        store.close().await;
        let clock = TokioClock::starting_at(UnixMillis(1_700_000_000_000));
        let held: Held = Arc::default();
        let (results, writer) = spawn(Arc::new(store), Arc::clone(&held), 8, Arc::new(clock));

        let capacity = Arc::new(Semaphore::new(1));
        let id = NotificationId::new_at(clock.now());
        let lease = LeaseToken(3);
        lock(&held).insert(id, lease);
        let finished = Finished {
            report: RoundReport {
                id,
                lease,
                attempts: Vec::new(),
                completion: Completion::Released,
                at: clock.now(),
            },
            channel: Channel::Sms,
            lease_until: clock.now().plus(Duration::from_secs(5)),
            _permit: Arc::clone(&capacity).try_acquire_owned().unwrap(),
        };
        results.send(finished).unwrap();
        drop(results);

        // Retried with backoff (50 ms, doubling) while a retry could still
        // land inside the lease, then dropped: the writer ends, the capacity
        // is back and nothing is held.
        // Bounded by count, not by a timeout: paused time jumps ahead
        // while the store's own thread answers.
        for _ in 0..10_000 {
            if writer.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(writer.is_finished(), "the writer gives up within the lease");
        writer.await.unwrap();
        let gave_up = clock.now().since(UnixMillis(1_700_000_000_000));
        assert!(gave_up >= Duration::from_secs(3), "{gave_up:?}");
        assert!(gave_up < Duration::from_secs(5), "{gave_up:?}");
        assert!(lock(&held).is_empty());
        assert_eq!(capacity.available_permits(), 1);
    }
}
