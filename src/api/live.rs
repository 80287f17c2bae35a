//! The live view behind `GET /v1/events`: one sampler per process reads,
//! once a second, counters Herald keeps anyway ([`crate::metrics`]) and the
//! providers' health, keeps the last 15 minutes of samples in a ring, and
//! wakes every open stream. A stream costs no store query, whatever the
//! number of clients.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use utoipa::ToSchema;
use utoipa::openapi::schema::Schema;

use crate::dispatch::live::LiveProviders;
use crate::domain::UnixMillis;
use crate::store::StoreState;

/// How often a sample is taken and a snapshot sent.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// 15 minutes of one-second samples.
pub const HISTORY_LEN: usize = 900;

/// Unfinished notifications by status, as the backlog gauge last read them
/// (`herald_backlog`, refreshed every few seconds from the store).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Backlog {
    pub scheduled: u64,
    pub queued: u64,
    pub retrying: u64,
    pub sending: u64,
}

/// The counters, read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub at: UnixMillis,
    /// Totals since the process started.
    pub accepted: u64,
    /// Accepted by a provider.
    pub sent: u64,
    pub backlog: Backlog,
}

/// One second of the chart: rates between two readings, the backlog at the
/// later one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
#[schema(as = LiveSample)]
pub struct Sample {
    /// Unix milliseconds of the reading that ends it.
    pub t: i64,
    /// Accepted per second.
    pub accepted: f64,
    /// Sent (accepted by a provider) per second.
    pub sent: f64,
    pub backlog: Backlog,
}

/// The last `capacity` samples, oldest first.
#[derive(Debug, Clone)]
pub struct History {
    samples: VecDeque<Sample>,
    capacity: usize,
    last: Option<Reading>,
}

impl History {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            samples: VecDeque::with_capacity(capacity),
            capacity,
            last: None,
        }
    }

    /// Adds the sample that ends at `reading`; the first reading only sets
    /// the baseline the next one's rates are measured from.
    pub fn record(&mut self, reading: Reading) {
        let Some(last) = self.last.replace(reading) else {
            return;
        };
        // Wall-clock time may step; a second is what the sampler aims at.
        let millis = reading.at.0 - last.at.0;
        let secs = if millis > 0 {
            millis as f64 / 1000.0
        } else {
            SAMPLE_INTERVAL.as_secs_f64()
        };
        let rate = |now: u64, before: u64| {
            let per_sec = now.saturating_sub(before) as f64 / secs;
            (per_sec * 10.0).round() / 10.0
        };
        // Streams ask for the samples after the last they got: times only grow.
        let t = match self.samples.back() {
            Some(prev) => reading.at.0.max(prev.t + 1),
            None => reading.at.0,
        };
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            t,
            accepted: rate(reading.accepted, last.accepted),
            sent: rate(reading.sent, last.sent),
            backlog: reading.backlog,
        });
    }

    /// The samples after `t` (all of them for `None`), oldest first.
    pub fn since(&self, t: Option<i64>) -> Vec<Sample> {
        let start = t.map_or(0, |t| self.samples.partition_point(|s| s.t <= t));
        self.samples.range(start..).copied().collect()
    }

    pub fn latest(&self) -> Option<i64> {
        self.samples.back().map(|s| s.t)
    }
}

/// What the streams are told: a new sample, or the end (shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    Sampled(i64),
    Closed,
}

/// The latest state the sampler saw.
struct Latest {
    history: History,
    /// `GET /v1/providers`' items, as JSON.
    providers: serde_json::Value,
    /// This process's notification counters by outcome.
    totals: serde_json::Value,
    store: StoreState,
}

/// The process's live view, shared by the sampler and every stream.
pub struct Live {
    latest: Mutex<Latest>,
    beat: watch::Sender<Beat>,
}

/// Outcomes whose totals a snapshot carries.
const OUTCOMES: [&str; 8] = [
    "accepted",
    "sent",
    "delivered",
    "undelivered",
    "bounced",
    "failed",
    "dead",
    "expired",
];

/// What one `snapshot` event of `GET /v1/events` carries, as one line of
/// JSON in its `data`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = EventSnapshot)]
pub struct Snapshot {
    /// When it was taken, in Unix milliseconds.
    pub at: i64,
    /// Milliseconds between samples (and between snapshots).
    pub interval_ms: u64,
    /// Every provider in use, as `GET /v1/providers` shows it.
    #[schema(value_type = Vec<super::providers::ProviderHealth>)]
    pub providers: serde_json::Value,
    #[schema(schema_with = totals)]
    pub totals: serde_json::Value,
    /// The store as this instance sees it: for PostgreSQL, whether a
    /// writable primary answers, which one, and since when.
    pub store: StoreState,
    /// The samples since the previous snapshot, oldest first; the first
    /// snapshot of a stream carries the last 15 minutes.
    pub samples: Vec<Sample>,
}

/// This process's notifications by outcome since it started.
fn totals() -> Schema {
    super::openapi::counts(OUTCOMES)
        .description(Some(
            "This process's notifications by outcome since it started",
        ))
        .into()
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

impl Live {
    pub fn new() -> Self {
        Self {
            latest: Mutex::new(Latest {
                history: History::new(HISTORY_LEN),
                providers: json!([]),
                totals: json!({}),
                store: StoreState::default(),
            }),
            beat: watch::channel(Beat::Sampled(0)).0,
        }
    }

    fn latest(&self) -> std::sync::MutexGuard<'_, Latest> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a sample every [`SAMPLE_INTERVAL`] until `stop` turns true;
    /// then ends every stream.
    pub async fn run(
        self: Arc<Self>,
        providers: Arc<LiveProviders>,
        store: impl Fn() -> StoreState + Send + 'static,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(&providers, store()),
                () = stopped(&mut stop) => break,
            }
        }
        self.beat.send_replace(Beat::Closed);
    }

    /// Reads the counters and the providers' health once.
    pub fn sample(&self, providers: &LiveProviders, store: StoreState) {
        let m = crate::metrics::metrics();
        let reading = Reading {
            at: UnixMillis::now(),
            accepted: m.notifications_total("accepted"),
            sent: m.notifications_total("sent"),
            backlog: Backlog {
                scheduled: m.backlog_of("scheduled"),
                queued: m.backlog_of("queued"),
                retrying: m.backlog_of("retrying"),
                sending: m.backlog_of("sending"),
            },
        };
        let totals: serde_json::Map<String, serde_json::Value> = OUTCOMES
            .iter()
            .map(|o| ((*o).to_owned(), m.notifications_total(o).into()))
            .collect();
        let providers =
            serde_json::to_value(super::providers::health(providers)).unwrap_or_else(|_| json!([]));
        let at = {
            let mut latest = self.latest();
            latest.history.record(reading);
            latest.providers = providers;
            latest.totals = totals.into();
            latest.store = store;
            latest.history.latest().unwrap_or(reading.at.0)
        };
        self.beat.send_replace(Beat::Sampled(at));
    }

    pub fn subscribe(&self) -> watch::Receiver<Beat> {
        self.beat.subscribe()
    }

    /// A snapshot: the providers, this process's totals, and the samples
    /// after `after` (the whole history for `None`). Also returns the last
    /// sample's time, the `after` of the next one.
    pub fn snapshot(&self, after: Option<i64>) -> (Snapshot, Option<i64>) {
        let latest = self.latest();
        let samples = latest.history.since(after);
        let last = samples.last().map(|s| s.t).or(after);
        let snapshot = Snapshot {
            at: UnixMillis::now().0,
            interval_ms: SAMPLE_INTERVAL.as_millis() as u64,
            providers: latest.providers.clone(),
            totals: latest.totals.clone(),
            store: latest.store.clone(),
            samples,
        };
        (snapshot, last)
    }
}

/// Resolves once `stop` is true (the guard `wait_for` returns is not Send).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: i64, accepted: u64, sent: u64, queued: u64) -> Reading {
        Reading {
            at: UnixMillis(at),
            accepted,
            sent,
            backlog: Backlog {
                queued,
                ..Backlog::default()
            },
        }
    }

    #[test]
    fn rates_are_per_second_between_readings() {
        let mut h = History::new(10);
        h.record(reading(1_000, 100, 50, 0));
        assert!(h.since(None).is_empty(), "the first reading is a baseline");
        h.record(reading(2_000, 130, 70, 4));
        // Half a second late: the rate is per second, not per tick.
        h.record(reading(3_500, 160, 70, 9));
        let s = h.since(None);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].t, s[0].accepted, s[0].sent), (2_000, 30.0, 20.0));
        assert_eq!(s[0].backlog.queued, 4);
        assert_eq!((s[1].accepted, s[1].sent), (20.0, 0.0));
        // A clock that stepped back counts as one interval, and the
        // sample still comes after the one before.
        h.record(reading(3_000, 170, 71, 9));
        let after = h.since(Some(3_500));
        assert_eq!((after[0].t, after[0].accepted), (3_501, 10.0));
    }

    #[test]
    fn the_ring_keeps_the_most_recent() {
        let mut h = History::new(3);
        for i in 0..=5 {
            h.record(reading(i * 1_000, i as u64, 0, 0));
        }
        let ts: Vec<i64> = h.since(None).iter().map(|s| s.t).collect();
        assert_eq!(ts, [3_000, 4_000, 5_000]);
        assert_eq!(h.latest(), Some(5_000));
        let after: Vec<i64> = h.since(Some(3_000)).iter().map(|s| s.t).collect();
        assert_eq!(after, [4_000, 5_000]);
        assert!(h.since(Some(5_000)).is_empty());
        assert_eq!(h.since(Some(0)).len(), 3, "older than the ring: all of it");
    }

    #[tokio::test(start_paused = true)]
    async fn streams_hear_each_sample_and_the_end() {
        let live = Arc::new(Live::new());
        let providers = Arc::new(LiveProviders::new(crate::dispatch::pool::Providers::new(
            crate::dispatch::pool::ChannelPool::new(crate::domain::Channel::Sms, Vec::new()),
            crate::dispatch::pool::ChannelPool::new(crate::domain::Channel::Email, Vec::new()),
        )));
        let mut beats = live.subscribe();
        let (stop_tx, stop) = watch::channel(false);
        let sampler =
            tokio::spawn(Arc::clone(&live).run(providers, || StoreState::local("sqlite"), stop));
        // The first tick sets the baseline, the second makes a sample.
        let mut seen = 0;
        while seen < 2 {
            beats.changed().await.unwrap();
            assert!(matches!(*beats.borrow(), Beat::Sampled(_)));
            seen += 1;
        }
        let (first, last) = live.snapshot(None);
        assert_eq!(first.samples.len(), 1);
        assert_eq!(first.providers, json!([]));
        assert!(first.totals["accepted"].is_u64());
        assert_eq!(first.store.engine, "sqlite");
        let (next, _) = live.snapshot(last);
        assert!(next.samples.is_empty());

        stop_tx.send(true).unwrap();
        sampler.await.unwrap();
        assert_eq!(*beats.borrow_and_update(), Beat::Closed);
    }
}
