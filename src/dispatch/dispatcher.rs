//! The dispatch loop: claim due notifications in batches sized to free
//! capacity, run a round for each, write the results back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::pool::Providers;
use super::round::{RetryPolicy, run_round};
use crate::domain::{NotificationId, UnixMillis};
use crate::error::chain;
use crate::store::{Claimed, Completion, LeaseToken, RoundReport, Store};

/// The least time between two claims, unless the last one came back full.
const MIN_CLAIM_GAP: Duration = Duration::from_millis(2);

#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub max_in_flight: usize,
    pub claim_batch: usize,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub drain_timeout: Duration,
}

pub struct Dispatcher {
    store: Arc<dyn Store>,
    providers: Arc<Providers>,
    policy: Arc<RetryPolicy>,
    settings: DispatcherSettings,
    wake: Arc<Notify>,
}

/// Leases held by rounds still running, so that the ones cut short at
/// shutdown can be given back at once instead of waiting out their lease.
type Held = Arc<Mutex<HashMap<NotificationId, LeaseToken>>>;

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        providers: Arc<Providers>,
        policy: RetryPolicy,
        settings: DispatcherSettings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            providers,
            policy: Arc::new(policy),
            settings,
            wake,
        }
    }

    /// Runs until `shutdown` turns true, then lets running rounds finish
    /// within the drain timeout and releases the leases of those that don't.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let capacity = Arc::new(Semaphore::new(self.settings.max_in_flight));
        let held: Held = Arc::default();
        let mut rounds = JoinSet::new();
        let mut store_backoff = Duration::from_millis(50);

        let mut last_claim = Instant::now();
        while !*shutdown.borrow() {
            // Every accept and every finished round wakes the loop; claiming
            // at each wake-up would make one small writer transaction per
            // notification. Gathering for a moment makes each claim carry
            // what came due meanwhile.
            let gather = (last_claim + MIN_CLAIM_GAP).saturating_duration_since(Instant::now());
            if !gather.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(gather) => {}
                    _ = shutdown.changed() => continue,
                }
            }
            last_claim = Instant::now();
            let free = capacity.available_permits().min(self.settings.claim_batch);
            let mut claimed_full_batch = false;
            if free > 0 {
                match self
                    .store
                    .claim(UnixMillis::now(), free, self.settings.lease)
                    .await
                {
                    Ok(batch) => {
                        store_backoff = Duration::from_millis(50);
                        claimed_full_batch = batch.len() == free;
                        for n in batch {
                            let Ok(permit) = Arc::clone(&capacity).try_acquire_owned() else {
                                unreachable!("claims never exceed free capacity");
                            };
                            held.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(n.id, n.lease);
                            let ctx = (
                                Arc::clone(&self.store),
                                Arc::clone(&self.providers),
                                Arc::clone(&self.policy),
                                Arc::clone(&held),
                            );
                            rounds.spawn(async move {
                                let (store, providers, policy, held) = ctx;
                                deliver(&*store, &providers, &policy, n, &held).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %chain(&e), "claiming failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(store_backoff) => {}
                            _ = shutdown.changed() => {}
                        }
                        store_backoff = (store_backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            if claimed_full_batch && capacity.available_permits() > 0 {
                // More may be due right now.
                reap(&mut rounds);
                last_claim -= MIN_CLAIM_GAP;
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                Some(joined) = rounds.join_next(), if !rounds.is_empty() => log_join(joined),
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
            reap(&mut rounds);
        }

        self.drain(rounds, &held).await;
    }

    async fn drain(&self, mut rounds: JoinSet<()>, held: &Held) {
        let running = rounds.len();
        if running > 0 {
            tracing::info!(running, "draining rounds in flight");
        }
        let deadline = Instant::now() + self.settings.drain_timeout;
        while !rounds.is_empty() {
            match tokio::time::timeout_at(deadline, rounds.join_next()).await {
                Ok(Some(joined)) => log_join(joined),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        left = rounds.len(),
                        "drain timeout reached; cutting the remaining rounds short"
                    );
                    rounds.abort_all();
                    while rounds.join_next().await.is_some() {}
                    break;
                }
            }
        }
        let leftover: Vec<(NotificationId, LeaseToken)> = held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        if leftover.is_empty() {
            return;
        }
        let now = UnixMillis::now();
        let reports = leftover
            .into_iter()
            .map(|(id, lease)| RoundReport {
                id,
                lease,
                attempts: Vec::new(),
                completion: Completion::Released,
                at: now,
            })
            .collect::<Vec<_>>();
        let count = reports.len();
        match self.store.complete(reports).await {
            Ok(_) => tracing::info!(count, "released unfinished leases"),
            Err(e) => tracing::warn!(
                count,
                error = %chain(&e),
                "could not release leases; they will lapse instead"
            ),
        }
    }
}

async fn deliver(
    store: &dyn Store,
    providers: &Providers,
    policy: &RetryPolicy,
    n: Claimed,
    held: &Held,
) {
    let report = run_round(providers.channel(n.channel), policy, &n).await;
    write_back(store, report, n.lease_until).await;
    held.lock().unwrap_or_else(|p| p.into_inner()).remove(&n.id);
}

/// Writes a round's result, retrying while the store is unavailable, for as
/// long as the lease holds: after that the work belongs to the next claim.
async fn write_back(store: &dyn Store, report: RoundReport, lease_until: UnixMillis) {
    let mut pause = Duration::from_millis(50);
    loop {
        match store.complete(vec![report.clone()]).await {
            Ok(results) => {
                if let Some(Err(lost)) = results.first() {
                    tracing::warn!(id = %report.id, "{lost}; another claim owns this notification");
                }
                return;
            }
            Err(e) if UnixMillis::now().plus(pause) < lease_until => {
                tracing::warn!(id = %report.id, error = %chain(&e), "writing a result failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(
                    id = %report.id,
                    error = %chain(&e),
                    "could not write a result before the lease lapsed; the round will be redone"
                );
                return;
            }
        }
    }
}

fn reap(rounds: &mut JoinSet<()>) {
    while let Some(joined) = rounds.try_join_next() {
        log_join(joined);
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!(error = %e, "a delivery round panicked; its lease will lapse");
    }
}
