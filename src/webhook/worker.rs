//! The webhook worker: claims due deliveries from the outbox, sends each
//! in a task of its own under its own cap, and writes the results back.
//!
//! It shares nothing with the dispatcher but the store: its capacity, its
//! tasks and its breakers are its own, so a slow or dead receiver holds up
//! only its own deliveries, never a notification.

use crate::resilience::clock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::receivers::{Receivers, Sent, origin};
use crate::domain::UnixMillis;
use crate::domain::webhook::WebhookId;
use crate::error::chain;
use crate::resilience::backoff::Backoff;
use crate::resilience::breaker::{Breaker, BreakerConfig, BreakerState, Signal};
use crate::resilience::clock::SharedClock;
use crate::store::{ClaimedWebhook, LeaseToken, Store, WebhookCompletion, WebhookReport};

/// Most deliveries claimed in one go.
const CLAIM_BATCH: usize = 64;

/// A lease outlasts the longest attempt by this, for writing its result.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// How long a finished attempt waits for others to share its write.
const GATHER: Duration = Duration::from_millis(2);

/// Breakers kept at most: callback hosts are many, and each notification
/// may name a new one.
const MAX_BREAKERS: usize = 1024;

/// The receivers' breakers, by [`Receivers::breaker_key`], never more than
/// `cap` of them.
struct Breakers {
    map: HashMap<String, Breaker>,
    cap: usize,
}

impl Breakers {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// `key`'s breaker, made if it has none. At the cap, closed breakers
    /// (which hold only history) go first; if every one is open, those
    /// that would let a request through soonest go, since they are about
    /// to probe their receiver anyway: a flood of hosts that never answer
    /// cannot grow this without end.
    fn entry(
        &mut self,
        key: &str,
        config: &BreakerConfig,
        now: tokio::time::Instant,
    ) -> &mut Breaker {
        if !self.map.contains_key(key) && self.map.len() >= self.cap {
            self.map.retain(|_, b| b.state(now) != BreakerState::Closed);
            let excess = (self.map.len() + 1).saturating_sub(self.cap);
            if excess > 0 {
                let mut by_admission: Vec<(Option<tokio::time::Instant>, String)> = self
                    .map
                    .iter()
                    .map(|(k, b)| (b.admits_at(now), k.clone()))
                    .collect();
                by_admission.sort_unstable();
                for (_, k) in by_admission.into_iter().take(excess) {
                    self.map.remove(&k);
                }
            }
        }
        self.map
            .entry(key.to_owned())
            .or_insert_with(|| Breaker::new(config.clone()))
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Breaker> {
        self.map.get_mut(key)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// When an attempt that failed is tried again, and when never.
#[derive(Debug, Clone)]
pub struct WebhookRetry {
    pub backoff: Backoff,
    pub max_attempts: u32,
    /// From the event's time.
    pub max_age: Duration,
}

impl WebhookRetry {
    /// What an attempt leads to: delivered; or, failed, another attempt at
    /// a backoff's distance (or the receiver's `Retry-After`, up to the
    /// backoff's cap); or none.
    pub fn decide(
        &self,
        d: &ClaimedWebhook,
        sent: Sent,
        now: UnixMillis,
        rng: &mut fastrand::Rng,
    ) -> WebhookCompletion {
        let (http_status, error, permanent, retry_after) = match sent {
            Sent::Delivered { http_status } => return WebhookCompletion::Delivered { http_status },
            Sent::Failed {
                http_status,
                error,
                permanent,
                retry_after,
                ..
            } => (http_status, error, permanent, retry_after),
        };
        let attempts = d.attempts.saturating_add(1);
        if permanent {
            return WebhookCompletion::Failed { http_status, error };
        }
        if attempts >= self.max_attempts {
            return WebhookCompletion::Failed {
                http_status,
                error: format!("gave up after {attempts} attempts; last error: {error}"),
            };
        }
        let delay = retry_after
            .map(|r| r.min(self.backoff.cap()))
            .unwrap_or_else(|| self.backoff.delay(attempts, rng));
        let at = now.plus(delay);
        if at > d.created_at.plus(self.max_age) {
            return WebhookCompletion::Failed {
                http_status,
                error: format!(
                    "gave up at its maximum age after {attempts} attempts; last error: {error}"
                ),
            };
        }
        WebhookCompletion::Retry {
            at,
            http_status,
            error,
        }
    }

    fn too_old(&self, d: &ClaimedWebhook, now: UnixMillis) -> bool {
        now > d.created_at.plus(self.max_age)
    }
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub max_in_flight: usize,
    pub poll_interval: Duration,
    pub drain_timeout: Duration,
    pub retry: WebhookRetry,
    pub breaker: BreakerConfig,
}

type Held = Arc<Mutex<HashMap<WebhookId, LeaseToken>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A delivery's result, with the capacity it holds until written.
struct Done {
    report: WebhookReport,
    lease_until: UnixMillis,
    /// For the log line of a delivery that failed for good.
    receiver: String,
    _permit: OwnedSemaphorePermit,
}

impl Done {
    fn new(
        d: &ClaimedWebhook,
        completion: WebhookCompletion,
        at: UnixMillis,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            report: WebhookReport {
                id: d.id,
                lease: d.lease,
                completion,
                at,
            },
            lease_until: d.lease_until,
            receiver: origin(&d.url),
            _permit: permit,
        }
    }
}

pub struct WebhookWorker {
    store: Arc<dyn Store>,
    receivers: Arc<Receivers>,
    settings: WorkerSettings,
    clock: SharedClock,
    lease: Duration,
    capacity: Arc<Semaphore>,
    breakers: Arc<Mutex<Breakers>>,
}

impl WebhookWorker {
    pub fn new(
        store: Arc<dyn Store>,
        receivers: Arc<Receivers>,
        settings: WorkerSettings,
        clock: SharedClock,
    ) -> Self {
        Self {
            lease: receivers.longest_timeout() + LEASE_MARGIN,
            capacity: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            store,
            receivers,
            settings,
            clock,
            breakers: Arc::new(Mutex::new(Breakers::new(MAX_BREAKERS))),
        }
    }

    /// Runs until `shutdown` turns true, then lets attempts under way
    /// finish within the drain timeout and gives back the leases of the
    /// rest.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let wake = self.store.webhooks_added();
        let held: Held = Arc::default();
        let (results, rx) = mpsc::unbounded_channel();
        let mut writer = tokio::spawn(write_results(
            Arc::clone(&self.store),
            Arc::clone(&held),
            rx,
            Arc::clone(&self.clock),
        ));
        let mut attempts = JoinSet::new();
        let mut pause = Duration::from_millis(50);
        while !*shutdown.borrow() {
            let want = self.capacity.available_permits().min(CLAIM_BATCH);
            let mut more_due = want == 0;
            if want > 0 {
                match self
                    .store
                    .claim_webhooks(self.clock.now(), want, self.lease)
                    .await
                {
                    Ok(batch) => {
                        pause = Duration::from_millis(50);
                        more_due = batch.len() == want;
                        for d in batch {
                            // Only this loop takes capacity, and it claimed
                            // no more than was free.
                            let Ok(permit) = Arc::clone(&self.capacity).try_acquire_owned() else {
                                break;
                            };
                            lock(&held).insert(d.id, d.lease);
                            self.start(d, permit, &results, &mut attempts);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %chain(&e), "claiming webhook deliveries failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = shutdown.changed() => {}
                        }
                        pause = (pause * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            if more_due && self.capacity.available_permits() > 0 {
                reap(&mut attempts);
                continue;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                Some(joined) = attempts.join_next(), if more_due && !attempts.is_empty() => log_join(joined),
                _ = shutdown.changed() => {}
                _ = &mut writer => panic!("the webhook results writer stopped"),
            }
            reap(&mut attempts);
        }
        self.drain(attempts, results, writer, held).await;
    }

    /// Decides what to do with one claimed delivery: give it up (too old),
    /// let it wait (its breaker is open), or attempt it in a task.
    fn start(
        &self,
        d: ClaimedWebhook,
        permit: OwnedSemaphorePermit,
        results: &mpsc::UnboundedSender<Done>,
        attempts: &mut JoinSet<()>,
    ) {
        let now = self.clock.now();
        let retry = &self.settings.retry;
        let done = |completion, permit| Done::new(&d, completion, now, permit);
        if retry.too_old(&d, now) {
            let error = format!("gave up at its maximum age after {} attempts", d.attempts);
            let _ = results.send(done(
                WebhookCompletion::Failed {
                    http_status: None,
                    error,
                },
                permit,
            ));
            return;
        }
        let key = Receivers::breaker_key(&d);
        let admitted = {
            let mut breakers = lock(&self.breakers);
            let at = clock::instant();
            let breaker = breakers.entry(&key, &self.settings.breaker, at);
            breaker.try_acquire(at).ok_or_else(|| {
                breaker
                    .admits_at(at)
                    .unwrap_or(at)
                    .saturating_duration_since(at)
            })
        };
        let probe = match admitted {
            Ok(probe) => probe,
            Err(wait) => {
                // Waits out the breaker instead of being attempted: no
                // attempt is used up.
                let at = now.plus(wait.max(Duration::from_millis(1)));
                let _ = results.send(done(WebhookCompletion::Deferred { at }, permit));
                return;
            }
        };
        let receivers = Arc::clone(&self.receivers);
        let breakers = Arc::clone(&self.breakers);
        let clock = Arc::clone(&self.clock);
        let retry = retry.clone();
        let results = results.clone();
        attempts.spawn(async move {
            let started = clock::instant();
            let sent = receivers.send(&d, clock::wall()).await;
            let took = started.elapsed();
            let signal = match &sent {
                Sent::Delivered { .. } => Signal::Success,
                Sent::Failed { unreachable, .. } => Signal::Failure {
                    unreachable: *unreachable,
                },
            };
            if let Some(b) = lock(&breakers).get_mut(&key) {
                b.record(probe, signal, clock::instant());
            }
            let receiver = origin(&d.url);
            let http_status = match &sent {
                Sent::Delivered { http_status } => Some(*http_status),
                Sent::Failed { http_status, .. } => *http_status,
            };
            tracing::info!(
                webhook_id = %d.id,
                id = %d.notification_id,
                event = d.event.as_str(),
                receiver = %receiver,
                delivered = matches!(sent, Sent::Delivered { .. }),
                status = http_status,
                ms = took.as_millis() as u64,
                "webhook attempt"
            );
            let now = clock.now();
            let completion = retry.decide(&d, sent, now, &mut fastrand::Rng::new());
            if results.send(Done::new(&d, completion, now, permit)).is_err() {
                tracing::error!(webhook_id = %d.id, "the webhook results writer stopped; the delivery will be retried");
            }
        });
    }

    async fn drain(
        &self,
        mut attempts: JoinSet<()>,
        results: mpsc::UnboundedSender<Done>,
        mut writer: JoinHandle<()>,
        held: Held,
    ) {
        let deadline = clock::instant() + self.settings.drain_timeout;
        while !attempts.is_empty() {
            match tokio::time::timeout_at(deadline, attempts.join_next()).await {
                Ok(Some(joined)) => log_join(joined),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        left = attempts.len(),
                        "drain timeout reached; cutting the remaining webhook attempts short"
                    );
                    attempts.abort_all();
                    while attempts.join_next().await.is_some() {}
                    break;
                }
            }
        }
        drop(results);
        let grace = deadline.max(clock::instant() + Duration::from_millis(500));
        if tokio::time::timeout_at(grace, &mut writer).await.is_err() {
            writer.abort();
        }
        let leftover: Vec<(WebhookId, LeaseToken)> = lock(&held).drain().collect();
        if leftover.is_empty() {
            return;
        }
        let now = self.clock.now();
        let count = leftover.len();
        let reports = leftover
            .into_iter()
            .map(|(id, lease)| WebhookReport {
                id,
                lease,
                completion: WebhookCompletion::Released,
                at: now,
            })
            .collect();
        match self.store.complete_webhooks(reports).await {
            Ok(_) => tracing::debug!(count, "released webhook leases"),
            Err(e) => tracing::warn!(
                count,
                error = %chain(&e),
                "could not release webhook leases; they will lapse instead"
            ),
        }
    }
}

fn reap(attempts: &mut JoinSet<()>) {
    while let Some(joined) = attempts.try_join_next() {
        log_join(joined);
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!(error = %e, "a webhook attempt panicked; its lease will lapse");
    }
}

/// Writes results in batches, retrying while the store is unavailable for
/// as long as each lease holds (after that, the next claim redoes it).
async fn write_results(
    store: Arc<dyn Store>,
    held: Held,
    mut rx: mpsc::UnboundedReceiver<Done>,
    clock: SharedClock,
) {
    let mut batch: Vec<Done> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        tokio::time::sleep(GATHER).await;
        while let Ok(done) = rx.try_recv() {
            batch.push(done);
        }
        let mut pause = Duration::from_millis(50);
        while !batch.is_empty() {
            let reports = batch.iter().map(|d| d.report.clone()).collect();
            match store.complete_webhooks(reports).await {
                Ok(written) => {
                    for (done, result) in batch.iter().zip(written) {
                        if result.is_ok() {
                            count(done);
                        }
                    }
                    break;
                }
                Err(e) => {
                    let retry_by = clock.now().plus(pause);
                    batch.retain(|d| {
                        let keep = retry_by < d.lease_until;
                        if !keep {
                            lock(&held).remove(&d.report.id);
                        }
                        keep
                    });
                    tracing::warn!(count = batch.len(), error = %chain(&e), "writing webhook results failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
        let mut held = lock(&held);
        for done in batch.drain(..) {
            held.remove(&done.report.id);
        }
    }
}

/// A written attempt counts once, by outcome; one that failed for good is
/// logged for the operator (`GET /v1/webhooks/deliveries?status=failed`).
fn count(done: &Done) {
    let outcome = match &done.report.completion {
        WebhookCompletion::Delivered { .. } => "delivered",
        WebhookCompletion::Retry { .. } => "retried",
        WebhookCompletion::Failed { http_status, error } => {
            tracing::warn!(
                webhook_id = %done.report.id,
                receiver = %done.receiver,
                status = http_status,
                error = %error,
                "webhook delivery failed for good"
            );
            "failed"
        }
        WebhookCompletion::Deferred { .. } | WebhookCompletion::Released => return,
    };
    crate::metrics::metrics().webhook_delivery(outcome);
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::domain::NotificationId;
    use crate::domain::webhook::WebhookEvent;
    use crate::store::WebhookTarget;

    fn retry() -> WebhookRetry {
        WebhookRetry {
            backoff: Backoff::try_new(Duration::from_secs(5), 4.0, Duration::from_secs(3600))
                .unwrap(),
            max_attempts: 3,
            max_age: Duration::from_secs(86_400),
        }
    }

    fn claimed(attempts: u32) -> ClaimedWebhook {
        ClaimedWebhook {
            id: WebhookId::new_at(UnixMillis(1_000)),
            notification_id: NotificationId::new(),
            event: WebhookEvent::Sent,
            target: WebhookTarget::Endpoint,
            url: "https://hooks.example.com/h".into(),
            payload: Bytes::from_static(b"{}"),
            attempts,
            created_at: UnixMillis(1_000),
            lease: LeaseToken(1),
            lease_until: UnixMillis(100_000),
        }
    }

    fn failed(status: u16, retry_after: Option<Duration>) -> Sent {
        Sent::Failed {
            http_status: Some(status),
            error: format!("HTTP {status}"),
            unreachable: false,
            permanent: status == 410,
            retry_after,
        }
    }

    const NOW: UnixMillis = UnixMillis(2_000);

    /// What an attempt leads to, for a delivery `attempts` in, at `now`.
    fn after(attempts: u32, sent: Sent, now: UnixMillis) -> WebhookCompletion {
        let mut rng = fastrand::Rng::with_seed(7);
        retry().decide(&claimed(attempts), sent, now, &mut rng)
    }

    fn retried_at(c: &WebhookCompletion) -> Option<UnixMillis> {
        match c {
            WebhookCompletion::Retry { at, .. } => Some(*at),
            _ => None,
        }
    }

    fn failure(c: &WebhookCompletion) -> &str {
        match c {
            WebhookCompletion::Failed { error, .. } => error,
            other => panic!("not failed: {other:?}"),
        }
    }

    #[test]
    fn breakers_stay_under_their_cap_when_every_one_is_open() {
        let config = BreakerConfig::default();
        let now = clock::instant();
        let mut breakers = Breakers::new(8);
        let unreachable = Signal::Failure { unreachable: true };
        // Each host a callback names, and none of them answering: each
        // breaker opens, with cooldowns ending one after another.
        for host in 0..100u64 {
            let at = now + Duration::from_millis(host);
            let b = breakers.entry(&format!("http://h{host}.example"), &config, at);
            for _ in 0..config.consecutive_failures {
                let permit = b.try_acquire(at).unwrap();
                b.record(permit, unreachable, at);
            }
            assert_eq!(b.state(at), BreakerState::Open);
            assert!(breakers.len() <= 8, "{} breakers", breakers.len());
        }
        let at = now + Duration::from_millis(100);
        // The newest ones stay (they admit last), the hosts least recently
        // opened went.
        assert!(breakers.get_mut("http://h99.example").is_some());
        assert!(breakers.get_mut("http://h0.example").is_none());
        assert_eq!(
            breakers.get_mut("http://h99.example").unwrap().state(at),
            BreakerState::Open
        );
    }

    #[test]
    fn failures_are_retried_with_backoff_until_the_attempts_run_out() {
        let first = after(0, failed(500, None), NOW);
        let at = retried_at(&first).unwrap();
        assert!(
            at >= NOW && at <= NOW.plus(Duration::from_secs(5)),
            "{at:?}"
        );
        assert!(matches!(
            first,
            WebhookCompletion::Retry { http_status: Some(500), ref error, .. } if error == "HTTP 500"
        ));
        let last = after(2, failed(500, None), NOW);
        assert!(failure(&last).starts_with("gave up after 3 attempts"));
        assert_eq!(
            after(0, Sent::Delivered { http_status: 204 }, NOW),
            WebhookCompletion::Delivered { http_status: 204 }
        );
    }

    #[test]
    fn gone_is_final_and_retry_after_is_honoured_up_to_the_cap() {
        assert_eq!(failure(&after(0, failed(410, None), NOW)), "HTTP 410");
        let asked = after(0, failed(429, Some(Duration::from_secs(30))), NOW);
        assert_eq!(retried_at(&asked), Some(NOW.plus(Duration::from_secs(30))));
        let clamped = after(0, failed(503, Some(Duration::from_secs(86_000))), NOW);
        assert_eq!(
            retried_at(&clamped),
            Some(NOW.plus(Duration::from_secs(3600)))
        );
    }

    #[test]
    fn a_retry_past_the_maximum_age_fails_instead() {
        let old = UnixMillis(1_000).plus(Duration::from_secs(86_399));
        let late = after(0, failed(503, Some(Duration::from_secs(60))), old);
        assert!(failure(&late).contains("maximum age"));
        assert!(retry().too_old(
            &claimed(0),
            UnixMillis(1_000).plus(Duration::from_secs(86_401))
        ));
        assert!(!retry().too_old(&claimed(0), old));
    }
}
