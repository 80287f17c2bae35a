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

/// Writes `batch`, retrying while the store is unavailable, for as long as
/// each lease holds: after that the work belongs to the next claim.
async fn write(store: &dyn Store, held: &Held, clock: &dyn Clock, batch: &mut Vec<Finished>) {
    let mut pause = Duration::from_millis(50);
    while !batch.is_empty() {
        let reports = batch.iter().map(|f| f.report.clone()).collect();
        let e = match store.complete(reports).await {
            Ok(results) => {
                for (finished, result) in batch.iter().zip(results) {
                    match result {
                        Ok(()) => count_outcome(finished),
                        Err(lost) => {
                            tracing::warn!(id = %finished.report.id, "{lost}; another claim owns this notification");
                        }
                    }
                }
                return;
            }
            Err(e) => e,
        };
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
