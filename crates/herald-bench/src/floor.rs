//! `--floor`: the same load against `herald noop-server` (the inbound
//! floor), then hyper's pooled client, the one Herald sends to providers
//! with, against the same server (the outbound floor), minutes before
//! Herald's own run on the same machine. Herald's CPU per accepted and per
//! delivered notification is then stated as a multiple of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use super::args::{BenchArgs, ChannelMix};
use super::histogram::{Latencies, Percentiles};
use super::load::{self, Live, Plan};
use super::messages::{Marker, options, request};
use super::pin::Pinning;
use super::report::Report;
use super::{BenchError, noop, procfs, spawn};

/// How long the no-op server is left alone after start-up.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// The bench's load against the no-op server; CPU is the server's.
    pub inbound: FloorRun,
    /// hyper's pooled client POSTing the contract's SMS body to the no-op
    /// server; CPU is the client's (the bench process, doing nothing else).
    pub outbound: FloorRun,
    /// Herald's run against these floors, when Herald's CPU was measured.
    pub herald: Option<AgainstFloor>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FloorRun {
    /// Requests answered 2xx.
    pub requests: u64,
    pub errors: u64,
    pub secs: f64,
    pub requests_per_sec: f64,
    /// CPU of the side that stands for Herald, during the run.
    pub cpu_secs: Option<f64>,
    pub cpu_us_per_request: Option<f64>,
    pub latency: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgainstFloor {
    /// Herald's CPU during the load over the notifications it accepted
    /// (with delivery running beside, unless Herald is `--role api`).
    pub cpu_us_per_accepted: f64,
    /// That, over the no-op server's CPU per request.
    pub accepted_vs_floor: Option<f64>,
    /// Herald's CPU over the load and the drain, over what it delivered.
    pub cpu_us_per_delivered: Option<f64>,
    /// Provider requests per delivered notification (Herald's
    /// `herald_attempts_total` over the run).
    pub attempts_per_delivered: Option<f64>,
    /// The floor of one delivered notification: one inbound no-op request
    /// and `attempts_per_delivered` outbound ones.
    pub floor_us_per_delivered: Option<f64>,
    /// `cpu_us_per_delivered` over `floor_us_per_delivered`.
    pub delivered_vs_floor: Option<f64>,
    /// Delivered/s during the load over the no-op server's requests/s.
    pub delivered_rate_vs_floor_rate: Option<f64>,
}

/// Runs both floors: starts the no-op server (on Herald's CPU when
/// pinning), measures, stops it.
pub async fn measure(args: &BenchArgs, pin: Option<Pinning>) -> Result<Floor, BenchError> {
    let server = tokio::task::spawn_blocking(move || spawn::start_noop(pin)).await??;
    tokio::time::sleep(SETTLE).await;
    let pid = server.id();
    let addr = server.addr;
    let inbound = inbound(args, addr, pid).await;
    let outbound = outbound(args, addr).await;
    tokio::task::spawn_blocking(move || server.stop()).await?;
    Ok(Floor {
        inbound,
        outbound,
        herald: None,
    })
}

/// The bench's own load, as against Herald: same connections, payloads,
/// rate and bounds.
async fn inbound(args: &BenchArgs, addr: SocketAddr, pid: u32) -> FloorRun {
    let start = Instant::now();
    let plan = Arc::new(Plan {
        addr,
        mix: args.channel,
        marker: Marker::random(),
        count: args.count,
        start,
        deadline: start + args.time_limit(),
        rate: args.rate,
        keep_accepted: false,
        batch: args.batch,
        options: options(args.priority.as_deref(), args.hedge),
    });
    let before = procfs::sample(pid);
    let outcome = load::run(plan, Arc::new(Live::default()), args.concurrency).await;
    let after = procfs::sample(pid);
    // Every answer is timed; those other than 202 are also counted apart.
    let answered = outcome
        .latency
        .len()
        .saturating_sub(outcome.statuses.values().sum::<u64>());
    FloorRun::new(
        answered,
        outcome.errors,
        start.elapsed(),
        cpu_between(before, after),
        outcome.latency.summary(),
    )
}

/// hyper-util's pooled client (as in Herald's provider transport, without
/// its TLS layer) in a loop, `--concurrency` requests at once or at
/// `--rate`, with the bench's SMS bodies.
async fn outbound(args: &BenchArgs, addr: SocketAddr) -> FloorRun {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency as usize)
        .build(connector);
    let uri: Uri = format!("http://{addr}{}", noop::PROVIDER_PATH)
        .parse()
        .expect("a socket address makes a valid URI");
    let start = Instant::now();
    let sender = Arc::new(Sender {
        client,
        uri,
        marker: Marker::random(),
        next: AtomicU64::new(0),
        count: args.count,
        rate: args.rate,
        start,
        deadline: start + args.time_limit(),
    });
    let me = std::process::id();
    let before = procfs::sample(me);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        tasks.spawn(Arc::clone(&sender).send_until_done());
    }
    let mut latency = Latencies::new();
    let (mut ok, mut errors) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(worker) => {
                latency.add(&worker.latency);
                ok += worker.ok;
                errors += worker.errors;
            }
            Err(_) => errors += 1,
        }
    }
    let after = procfs::sample(me);
    FloorRun::new(
        ok,
        errors,
        start.elapsed(),
        cpu_between(before, after),
        latency.summary(),
    )
}

struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    marker: Marker,
    next: AtomicU64,
    count: Option<u64>,
    rate: Option<u32>,
    start: Instant,
    deadline: Instant,
}

#[derive(Default)]
struct Sent {
    ok: u64,
    errors: u64,
    latency: Latencies,
}

impl Sender {
    /// Bounded by the count and the deadline, as the load's workers are.
    async fn send_until_done(self: Arc<Self>) -> Sent {
        const JSON: HeaderValue = HeaderValue::from_static("application/json");
        let mut out = Sent::default();
        loop {
            let seq = self.next.fetch_add(1, Ordering::Relaxed);
            if self.count.is_some_and(|n| seq >= n) {
                break;
            }
            if let Some(rate) = self.rate {
                let due = self.start
                    + Duration::from_nanos(seq.saturating_mul(1_000_000_000) / u64::from(rate));
                if due >= self.deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            if Instant::now() >= self.deadline {
                break;
            }
            let (_, body) = request(&self.marker, ChannelMix::Sms, seq);
            let mut req = Request::new(Full::new(body));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = self.uri.clone();
            req.headers_mut().insert(CONTENT_TYPE, JSON);
            let sent = Instant::now();
            let answer = match self.client.request(req).await {
                Ok(res) => {
                    let status = res.status();
                    res.into_body().collect().await.map(|_| status)
                }
                Err(_) => {
                    out.errors += 1;
                    continue;
                }
            };
            match answer {
                Ok(status) if status.is_success() => {
                    out.latency.record(sent.elapsed());
                    out.ok += 1;
                }
                _ => out.errors += 1,
            }
        }
        out
    }
}

fn cpu_between(
    before: Option<procfs::ProcSample>,
    after: Option<procfs::ProcSample>,
) -> Option<f64> {
    before.zip(after).map(|(a, b)| b.cpu_secs - a.cpu_secs)
}

impl FloorRun {
    fn new(
        requests: u64,
        errors: u64,
        took: Duration,
        cpu_secs: Option<f64>,
        latency: Percentiles,
    ) -> Self {
        let secs = took.as_secs_f64();
        Self {
            requests,
            errors,
            secs,
            requests_per_sec: requests as f64 / secs.max(1e-9),
            cpu_secs,
            cpu_us_per_request: cpu_secs
                .filter(|_| requests > 0)
                .map(|c| c * 1e6 / requests as f64),
            latency,
        }
    }
}

impl Floor {
    /// Herald's figures of `report` against this floor (none when Herald's
    /// CPU was not measured, i.e. with `--target`).
    pub fn with_herald(mut self, report: &Report) -> Self {
        self.herald = report.herald_process.as_ref().and_then(|herald| {
            let during_load = herald.cpu_secs_during_load?;
            let per_accepted =
                (report.accepted > 0).then(|| during_load * 1e6 / report.accepted as f64)?;
            let delivered = report.delivery.delivered;
            let per_delivered = herald
                .cpu_secs
                .filter(|_| delivered > 0)
                .map(|c| c * 1e6 / delivered as f64);
            let attempts_per_delivered = report
                .provider_attempts
                .filter(|_| delivered > 0)
                .map(|a| a as f64 / delivered as f64);
            let floor_per_delivered = self
                .inbound
                .cpu_us_per_request
                .zip(self.outbound.cpu_us_per_request)
                .zip(attempts_per_delivered)
                .map(|((inbound, outbound), attempts)| inbound + attempts * outbound);
            Some(AgainstFloor {
                cpu_us_per_accepted: per_accepted,
                accepted_vs_floor: ratio(Some(per_accepted), self.inbound.cpu_us_per_request),
                cpu_us_per_delivered: per_delivered,
                attempts_per_delivered,
                floor_us_per_delivered: floor_per_delivered,
                delivered_vs_floor: ratio(per_delivered, floor_per_delivered),
                delivered_rate_vs_floor_rate: ratio(
                    report.delivery.delivered_per_sec_during_load,
                    Some(self.inbound.requests_per_sec),
                ),
            })
        });
        self
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b.filter(|b| *b > 0.0)).map(|(a, b)| a / b)
}
