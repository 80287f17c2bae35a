//! Load generation: closed loop (each connection sends again as soon as it is
//! answered) or open loop (requests on a fixed schedule, whatever the
//! latency). Every loop is bounded by the request count and the deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::BenchError;
use super::args::ChannelMix;
use super::client::Conn;
use super::histogram::Latencies;
use super::messages::{Marker, batch_request, options, request, with_options};

/// What every worker follows.
pub struct Plan {
    pub addr: SocketAddr,
    pub mix: ChannelMix,
    pub marker: Marker,
    /// Most requests to send, in all.
    pub count: Option<u64>,
    /// When the load starts; open-loop schedules count from here.
    pub start: Instant,
    /// No request is started at or after this.
    pub deadline: Instant,
    /// Open loop: requests per second.
    pub rate: Option<u32>,
    /// Keep `(seq, accepted at)` of every accepted request, to match
    /// deliveries against.
    pub keep_accepted: bool,
    /// Notifications per request, through `POST /v1/batch`.
    pub batch: Option<u32>,
    /// What every notification carries beside its message
    /// ([`options`](super::messages::options)).
    pub options: Option<String>,
}

impl Plan {
    /// When request `seq` is due in open loop.
    fn due(&self, seq: u64, rate: u32) -> Instant {
        self.start + Duration::from_nanos(seq.saturating_mul(1_000_000_000) / u64::from(rate))
    }
}

/// Counters the progress bar reads while the load runs.
#[derive(Debug, Default)]
pub struct Live {
    /// The next sequence number to hand out.
    pub next: AtomicU64,
    pub accepted: AtomicU64,
    pub errors: AtomicU64,
}

/// One worker's results, merged at the end.
#[derive(Debug, Default)]
pub struct Outcome {
    pub sent: u64,
    pub accepted: u64,
    /// From the request being written to the whole answer being read.
    pub latency: Latencies,
    /// Open loop: from the time the request was due (so the bench falling
    /// behind shows up instead of hiding: no coordinated omission).
    pub latency_from_due: Latencies,
    /// Answers other than 202, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Connection and protocol errors.
    pub errors: u64,
    pub first_error: Option<String>,
    /// `(seq, microseconds from the start to the 202)`.
    pub accepted_at: Vec<(u64, u64)>,
    /// When the last answer came.
    pub last_answer: Option<Instant>,
}

impl Outcome {
    pub fn merge(&mut self, other: Outcome) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        self.latency.add(&other.latency);
        self.latency_from_due.add(&other.latency_from_due);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_insert(0) += n;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.accepted_at.extend(other.accepted_at);
        self.last_answer = self.last_answer.max(other.last_answer);
    }
}

/// Runs `workers` connections until the count or the deadline is reached.
pub async fn run(plan: Arc<Plan>, live: Arc<Live>, workers: u32) -> Outcome {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        set.spawn(worker(Arc::clone(&plan), Arc::clone(&live)));
    }
    let mut total = Outcome::default();
    while let Some(done) = set.join_next().await {
        match done {
            Ok(outcome) => total.merge(outcome),
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    total
}

async fn worker(plan: Arc<Plan>, live: Arc<Live>) -> Outcome {
    let mut out = Outcome::default();
    let mut conn: Option<Conn> = None;
    loop {
        let seq = live.next.fetch_add(1, Ordering::Relaxed);
        if plan.count.is_some_and(|n| seq >= n) {
            break;
        }
        let due = match plan.rate {
            Some(rate) => {
                let due = plan.due(seq, rate);
                if due >= plan.deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                Some(due)
            }
            None => None,
        };
        if Instant::now() >= plan.deadline {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(plan.addr).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    note_error(&mut out, &live, e.to_string());
                    // Do not spin on a refused connection.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // A batch of n carries notifications seq·n … seq·n + n − 1.
        let per_request = plan.batch.map_or(1, u64::from);
        let (path, body) = match (plan.batch, plan.options.as_deref()) {
            (Some(n), options) => batch_request(
                &plan.marker,
                plan.mix,
                seq * u64::from(n),
                n.into(),
                options,
            ),
            (None, Some(options)) => {
                let (path, body) = request(&plan.marker, plan.mix, seq);
                (path, with_options(body, options))
            }
            (None, None) => request(&plan.marker, plan.mix, seq),
        };
        let sent = Instant::now();
        out.sent += 1;
        let answer = c.post_json(path, body).await;
        let now = Instant::now();
        out.last_answer = Some(now);
        match answer {
            Ok(status) => {
                out.latency.record(now - sent);
                if let Some(due) = due {
                    out.latency_from_due
                        .record(now.saturating_duration_since(due));
                }
                if status.as_u16() == 202 {
                    out.accepted += per_request;
                    live.accepted.fetch_add(per_request, Ordering::Relaxed);
                    if plan.keep_accepted {
                        let at = now.saturating_duration_since(plan.start).as_micros();
                        let first = seq * per_request;
                        out.accepted_at
                            .extend((first..first + per_request).map(|s| (s, at as u64)));
                    }
                } else {
                    *out.statuses.entry(status.as_u16()).or_insert(0) += 1;
                }
            }
            Err(e) => {
                conn = None;
                note_error(&mut out, &live, e.to_string());
            }
        }
    }
    out
}

fn note_error(out: &mut Outcome, live: &Live, message: String) {
    out.errors += 1;
    live.errors.fetch_add(1, Ordering::Relaxed);
    out.first_error.get_or_insert(message);
}

/// Stores `count` low-priority notifications through `POST /v1/batch`,
/// 1,000 at a time, under a marker of their own (not measured).
pub async fn preload_low(addr: SocketAddr, mix: ChannelMix, count: u64) -> Result<(), BenchError> {
    const PER_BATCH: u64 = 1_000;
    let marker = Marker::random();
    let low = options(Some("low"), false);
    let mut conn = Conn::open(addr).await?;
    let mut first = 0;
    while first < count {
        let n = PER_BATCH.min(count - first);
        let (path, body) = batch_request(&marker, mix, first, n, low.as_deref());
        let status = conn.post_json(path, body).await?;
        if status.as_u16() != 202 {
            return Err(BenchError::Preload {
                status: status.as_u16(),
            });
        }
        first += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_schedule_is_evenly_spaced() {
        let start = Instant::now();
        let plan = Plan {
            addr: "127.0.0.1:1".parse().unwrap(),
            mix: ChannelMix::Sms,
            marker: Marker::new(1),
            count: None,
            start,
            deadline: start + Duration::from_secs(1),
            rate: Some(4_000),
            keep_accepted: false,
            batch: None,
            options: None,
        };
        assert_eq!(plan.due(0, 4_000), start);
        assert_eq!(plan.due(1, 4_000) - start, Duration::from_micros(250));
        assert_eq!(plan.due(4_000, 4_000) - start, Duration::from_secs(1));
    }

    #[test]
    fn merging_outcomes_adds_up() {
        let mut a = Outcome {
            sent: 2,
            accepted: 1,
            statuses: BTreeMap::from([(503, 1)]),
            ..Outcome::default()
        };
        let b = Outcome {
            sent: 3,
            accepted: 2,
            errors: 1,
            first_error: Some("reset".into()),
            statuses: BTreeMap::from([(503, 1), (422, 1)]),
            ..Outcome::default()
        };
        a.merge(b);
        assert_eq!((a.sent, a.accepted, a.errors), (5, 3, 1));
        assert_eq!(a.statuses, BTreeMap::from([(422, 1), (503, 2)]));
        assert_eq!(a.first_error.as_deref(), Some("reset"));
    }
}
