//! The dispatch loop: claim due notifications in batches sized to free
//! capacity, run a round for each, write the results back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::handoff::{Fresh, Handoff};
use super::live::LiveProviders;
use super::results::{self, Finished, Held, lock};
use super::round::{RetryPolicy, run_round};
use crate::domain::NotificationId;
use crate::error::chain;
use crate::resilience::clock::{self, SharedClock};
use crate::store::{Claimed, Completion, LeaseToken, RoundReport, Store};

/// The least time between two claims, unless the last one came back full.
const MIN_CLAIM_GAP: Duration = Duration::from_millis(2);

/// How long the results writer may still take after a drain timeout.
const WRITER_GRACE: Duration = Duration::from_millis(500);

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
    providers: Arc<LiveProviders>,
    policy: Arc<RetryPolicy>,
    settings: DispatcherSettings,
    clock: SharedClock,
    wake: Arc<Notify>,
    /// Rounds that may run at once; claims and hand-offs both take from it.
    capacity: Arc<Semaphore>,
    fresh_tx: mpsc::UnboundedSender<Fresh>,
    /// Taken by [`Dispatcher::run`].
    fresh: Option<mpsc::UnboundedReceiver<Fresh>>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        providers: Arc<LiveProviders>,
        policy: RetryPolicy,
        settings: DispatcherSettings,
        clock: SharedClock,
        wake: Arc<Notify>,
    ) -> Self {
        let (fresh_tx, fresh) = mpsc::unbounded_channel();
        Self {
            store,
            providers,
            policy: Arc::new(policy),
            capacity: Arc::new(Semaphore::new(settings.max_in_flight)),
            settings,
            clock,
            wake,
            fresh_tx,
            fresh: Some(fresh),
        }
    }

    /// The API's end of the in-memory hand-off to this dispatcher.
    pub fn handoff(&self) -> Handoff {
        Handoff::new(
            Arc::clone(&self.capacity),
            self.settings.max_in_flight / 2,
            self.settings.lease,
            self.fresh_tx.clone(),
        )
    }

    /// Runs until `shutdown` turns true, then lets running rounds finish
    /// within the drain timeout and releases the leases of those that don't.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let held: Held = Arc::default();
        let (results, mut writer) = results::spawn(
            Arc::clone(&self.store),
            Arc::clone(&held),
            self.settings.claim_batch,
            Arc::clone(&self.clock),
        );
        let mut running = Running {
            rounds: JoinSet::new(),
            held,
            results,
        };
        let mut store_backoff = Duration::from_millis(50);
        let mut claim_failing = false;
        let mut fresh = self.fresh.take().expect("a dispatcher runs once");

        let mut last_claim = clock::instant();
        while !*shutdown.borrow() {
            // Wake-ups come in bursts (every stored notification that was
            // not handed over, every poll); claiming at each would make one
            // small writer transaction per notification. Gathering for a
            // moment makes each claim carry what came due meanwhile.
            let gather = (last_claim + MIN_CLAIM_GAP).saturating_duration_since(clock::instant());
            if !gather.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(gather) => {}
                    _ = shutdown.changed() => continue,
                }
            }
            last_claim = clock::instant();
            let want = self
                .capacity
                .available_permits()
                .min(self.settings.claim_batch);
            // Whether more may be due than the last claim could take.
            let mut more_due = want == 0;
            if want > 0 {
                match self
                    .store
                    .claim(self.clock.now(), want, self.settings.lease)
                    .await
                {
                    Ok(batch) => {
                        if claim_failing {
                            tracing::info!("claiming works again");
                            claim_failing = false;
                        }
                        store_backoff = Duration::from_millis(50);
                        more_due = batch.len() == want;
                        // The API may have handed work over from the same
                        // capacity while the claim ran: what no longer fits
                        // is given back, due at once.
                        let mut no_room = Vec::new();
                        for n in batch {
                            match Arc::clone(&self.capacity).try_acquire_owned() {
                                Ok(permit) => self.start(&mut running, n, permit),
                                Err(_) => no_room.push((n.id, n.lease)),
                            }
                        }
                        if !no_room.is_empty() {
                            self.release(no_room).await;
                        }
                    }
                    Err(e) => {
                        // Once per outage, not at every attempt.
                        if claim_failing {
                            tracing::debug!(error = %chain(&e), "claiming failed again");
                        } else {
                            tracing::warn!(error = %chain(&e), "claiming failed; retrying with backoff");
                            claim_failing = true;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(store_backoff) => {}
                            // A commit (this instance's accept, or another's
                            // heard through LISTEN) says the store is back:
                            // no need to wait out the backoff, and a
                            // hand-off starts at once.
                            _ = self.wake.notified() => {}
                            Some(f) = fresh.recv() => {
                                self.start(&mut running, f.claimed, f.permit);
                            }
                            _ = shutdown.changed() => {}
                        }
                        store_backoff = (store_backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            if more_due && self.capacity.available_permits() > 0 {
                running.reap();
                last_claim -= MIN_CLAIM_GAP;
                continue;
            }
            // Wait for a reason to claim again: new queued work, the poll for
            // retries come due, or room freed while more was due.
            let poll = tokio::time::sleep(self.settings.poll_interval);
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    _ = self.wake.notified() => break,
                    Some(f) = fresh.recv() => {
                        self.start(&mut running, f.claimed, f.permit);
                        // Take the hand-offs of the next moment in one go
                        // rather than being woken for each.
                        tokio::time::sleep(MIN_CLAIM_GAP).await;
                        while let Ok(f) = fresh.try_recv() {
                            self.start(&mut running, f.claimed, f.permit);
                        }
                    }
                    Some(joined) = running.rounds.join_next(), if !running.rounds.is_empty() => {
                        log_join(joined);
                        if more_due {
                            break;
                        }
                    }
                    _ = &mut poll => break,
                    _ = shutdown.changed() => break,
                    _ = &mut writer => {
                        // Only a bug ends it early; rounds whose results
                        // cannot be written would be sent again and again.
                        panic!("the results writer stopped");
                    }
                }
            }
            running.reap();
        }

        // Hand-offs not yet started are released with the other leases.
        fresh.close();
        while let Ok(f) = fresh.try_recv() {
            lock(&running.held).insert(f.claimed.id, f.claimed.lease);
        }
        self.drain(running, writer).await;
    }

    /// Runs one round of `n` in its own task; its result goes to the results
    /// writer with `permit`, which is released once the result is written.
    fn start(&self, running: &mut Running, n: Claimed, permit: OwnedSemaphorePermit) {
        lock(&running.held).insert(n.id, n.lease);
        // The set in use now, kept to the round's end even if a reload
        // replaces it meanwhile.
        let providers = self.providers.current();
        let policy = Arc::clone(&self.policy);
        let clock = Arc::clone(&self.clock);
        let results = running.results.clone();
        running.rounds.spawn(async move {
            let _counted = InFlight::start();
            let report = run_round(providers.channel(n.channel), &policy, &*clock, &n).await;
            let finished = Finished {
                report,
                channel: n.channel,
                lease_until: n.lease_until,
                _permit: permit,
            };
            if results.send(finished).is_err() {
                tracing::error!(id = %n.id, "the results writer stopped; the round will be redone");
            }
        });
    }

    async fn drain(&self, mut running: Running, mut writer: JoinHandle<()>) {
        let in_flight = running.rounds.len();
        if in_flight > 0 {
            tracing::info!(in_flight, "draining rounds in flight");
        }
        let deadline = clock::instant() + self.settings.drain_timeout;
        let rounds = &mut running.rounds;
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
        // The last sender goes: the writer writes what it has, then stops.
        let Running { held, results, .. } = running;
        drop(results);
        if tokio::time::timeout_at(deadline.max(clock::instant() + WRITER_GRACE), &mut writer)
            .await
            .is_err()
        {
            tracing::warn!("results still unwritten at the drain timeout; releasing their leases");
            writer.abort();
        }
        let leftover: Vec<(NotificationId, LeaseToken)> = lock(&held).drain().collect();
        if !leftover.is_empty() {
            self.release(leftover).await;
        }
    }

    /// Gives leases back unfinished: the notifications are due again at once.
    async fn release(&self, leases: Vec<(NotificationId, LeaseToken)>) {
        let now = self.clock.now();
        let reports = leases
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
            Ok(_) => tracing::debug!(count, "released leases"),
            Err(e) => tracing::warn!(
                count,
                error = %chain(&e),
                "could not release leases; they will lapse instead"
            ),
        }
    }
}

/// The rounds under way and where their results go.
struct Running {
    rounds: JoinSet<()>,
    held: Held,
    results: mpsc::UnboundedSender<Finished>,
}

impl Running {
    fn reap(&mut self) {
        while let Some(joined) = self.rounds.try_join_next() {
            log_join(joined);
        }
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!(error = %e, "a delivery round panicked; its lease will lapse");
    }
}

/// Counts a round in `herald_in_flight` for as long as it runs, however it ends.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        crate::metrics::metrics().round_started();
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        crate::metrics::metrics().round_ended();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::dispatch::pool::{ChannelPool, Providers};
    use crate::dispatch::scripted::{Scripted, delivered, failing, lenient_breaker, pool, pool_of};
    use crate::domain::{AttemptOutcome, Channel, Message, Sms, Status, UnixMillis};
    use crate::resilience::backoff::Backoff;
    use crate::resilience::clock::{Clock, TokioClock};
    use crate::store::{NewNotification, SqliteOptions, SqliteStore};

    struct Rig {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        clock: TokioClock,
    }

    impl Rig {
        async fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("herald.db");
            let store = SqliteStore::open(path.to_str().unwrap(), SqliteOptions::default())
                .await
                .unwrap();
            Self {
                _dir: dir,
                store: Arc::new(store),
                clock: TokioClock::starting_at(UnixMillis::now()),
            }
        }

        async fn queue(&self, count: usize) -> Vec<NotificationId> {
            let mut ids = Vec::new();
            for i in 0..count {
                let now = self.clock.now();
                let message = Message::Sms(Sms {
                    phone: "01712345678".into(),
                    text: format!("message {i}"),
                });
                let notification = NewNotification::due_now(
                    Channel::Sms,
                    message.to_provider_json(),
                    now,
                    now.plus(Duration::from_secs(3600)),
                );
                let id = notification.id;
                self.store.insert(notification).await.unwrap();
                ids.push(id);
            }
            ids
        }

        fn dispatcher(&self, sms: ChannelPool, settings: DispatcherSettings) -> Dispatcher {
            let mail = Arc::new(Scripted::new("mail", [delivered("m")]));
            let email = pool_of(Channel::Email, &[mail], lenient_breaker());
            Dispatcher::new(
                Arc::clone(&self.store),
                Arc::new(LiveProviders::new(Providers::new(sms, email))),
                RetryPolicy {
                    backoff: Backoff::try_new(
                        Duration::from_millis(100),
                        2.0,
                        Duration::from_secs(1),
                    )
                    .unwrap(),
                    max_rounds: 50,
                    retry_after_max: Duration::from_secs(60),
                    idle_recheck: Duration::from_millis(100),
                    hedging: Default::default(),
                    out_of_rotation_recheck: Duration::from_millis(100),
                },
                settings,
                Arc::new(self.clock),
                Arc::new(Notify::new()),
            )
        }

        async fn count(&self, status: Status) -> u64 {
            let counts = self.store.counts().await.unwrap();
            counts
                .into_iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| n)
        }
    }

    fn settings() -> DispatcherSettings {
        DispatcherSettings {
            max_in_flight: 16,
            claim_batch: 8,
            poll_interval: Duration::from_millis(100),
            lease: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_is_delivered_once_each_through_a_failing_provider() {
        let rig = Rig::new().await;
        let ids = rig.queue(60).await;
        let sick = Arc::new(Scripted::new(
            "sick",
            [failing(AttemptOutcome::Transient, 500)],
        ));
        let well = Arc::new(Scripted::new("well", [delivered("ok")]));
        let sms = pool(&[Arc::clone(&sick), Arc::clone(&well)], lenient_breaker());
        let (stop, stopped) = watch::channel(false);
        let run = tokio::spawn(rig.dispatcher(sms, settings()).run(stopped));

        for _ in 0..2_000 {
            if rig.count(Status::Sent).await == 60 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.send(true).unwrap();
        run.await.unwrap();

        assert_eq!(rig.count(Status::Sent).await, 60);
        let sent: HashSet<_> = well.sent().into_iter().collect();
        assert_eq!(well.sent().len(), 60, "each delivered exactly once");
        assert_eq!(sent, ids.iter().copied().collect());
        // The sick provider's failures are in the history, not lost.
        let mut failures = 0;
        for id in &ids {
            let rec = rig.store.get(*id).await.unwrap().unwrap();
            assert_eq!(rec.delivered_by.as_deref(), Some("well"));
            failures += rec
                .attempts
                .iter()
                .filter(|a| a.outcome == AttemptOutcome::Transient)
                .count();
        }
        assert_eq!(failures, sick.sent().len());
    }

    #[allow(clippy::disallowed_methods)] // a real-time bound, beside paused time
    #[tokio::test(start_paused = true)]
    async fn shutdown_gives_back_the_leases_of_rounds_cut_short() {
        let rig = Rig::new().await;
        let ids = rig.queue(3).await;
        let stuck = Arc::new(
            Scripted::new("stuck", [delivered("late")])
                .latency(Duration::from_secs(60))
                .timeout(Duration::from_secs(120)),
        );
        let sms = pool(&[Arc::clone(&stuck)], lenient_breaker());
        let (stop, stopped) = watch::channel(false);
        let run = tokio::spawn(rig.dispatcher(sms, settings()).run(stopped));
        // Each turn gives the store's own thread a real millisecond and
        // moves paused time by one: bounded by count alone, paused time
        // would race ahead while that thread answers the claim.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while stuck.sent().len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(stuck.sent().len(), 3);
        assert_eq!(rig.count(Status::Sending).await, 3);

        stop.send(true).unwrap();
        let started = clock::instant();
        run.await.unwrap();
        // The drain timeout (1 s), not the provider's 60 s.
        assert!(started.elapsed() < Duration::from_secs(5));
        for id in ids {
            let rec = rig.store.get(id).await.unwrap().unwrap();
            assert_eq!(rec.status, Status::Queued, "released, due again at once");
            assert!(rec.attempts.is_empty());
            assert_eq!(rec.rounds, 0);
        }
    }
}
