//! `herald bench`: drives load against Herald and reports what it measured.
//!
//! - [`args`]: the flags, and the rule that every target is on loopback;
//! - [`spawn`]: `--spawn` starts the simulator and Herald as child processes;
//! - [`load`]: closed- and open-loop load over keep-alive connections
//!   ([`client`]: one hyper HTTP/1.1 connection each);
//! - [`histogram`]: HDR latency histograms and their percentiles;
//! - [`stats`]: the backlog over time, from `GET /v1/stats`;
//! - [`procfs`]: CPU time and RSS of the spawned processes;
//! - [`floor`]: `--floor`, the same load against a no-op server of Herald's
//!   HTTP stack ([`noop`], `herald noop-server`) and hyper's client against
//!   it, to state Herald's CPU as multiples of them;
//! - [`pin`]: `--pin`, Herald on one CPU and the rest on the other;
//! - [`report`]: the findings as text or JSON.
//!
//! Benchmarks report; they assert nothing about speed.

pub mod args;
mod client;
pub mod floor;
pub mod histogram;
mod load;
pub mod messages;
pub mod noop;
pub mod pin;
pub mod procfs;
pub mod report;
mod spawn;
pub mod stats;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use args::{BenchArgs, ChannelMix, Target};
use histogram::Latencies;
use load::{Live, Outcome, Plan};
use pin::Pinning;
use report::{Backlog, Delivery, Machine, ProcReadings, ProcessReport, Report};
use spawn::{DeliveryLog, Spawned};
use stats::StatsSample;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("refusing target {url:?}: {why}")]
    Target { url: String, why: String },
    #[error("could not connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP error talking to {addr}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start {what}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not start listening in time; its log: {}", log.display())]
    Start { what: &'static str, log: PathBuf },
    #[error("{what} did not start listening in time")]
    NotListening { what: &'static str },
    #[error("{0}")]
    Pin(String),
    #[error("storing the low-priority backlog was answered {status}")]
    Preload { status: u16 },
    #[error("a bench task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs the bench and prints its report on stdout (text, or JSON with
/// `--json`).
pub async fn main(args: BenchArgs) -> Result<(), BenchError> {
    let report = run(&args).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report always serializes")
        );
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

/// Herald's counter of provider requests, by provider and outcome.
const ATTEMPTS: &str = "herald_attempts_total";
/// Herald's counter of rounds that sent a hedge, by outcome.
const HEDGES: &str = "herald_hedges_total";

/// How long after Herald starts the idle RSS is read.
const SETTLE: Duration = Duration::from_secs(1);

pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let pinning = if args.pin {
        let pinning = Pinning::choose()?;
        pinning.pin_this_process()?;
        Some(pinning)
    } else {
        None
    };
    // First, so that Herald's run is the last thing measured.
    let floor = if args.floor {
        Some(floor::measure(args, pinning).await?)
    } else {
        None
    };
    let marker = messages::Marker::random();
    let (addr, target, spawned) = if args.spawn {
        let a = args.clone();
        let m = marker.clone();
        let spawned = tokio::task::spawn_blocking(move || spawn::start(&a, &m, pinning)).await??;
        let addr = spawned.herald_addr;
        (addr, format!("http://{addr}"), Some(spawned))
    } else {
        let url = args.target.as_deref().unwrap_or_default();
        (Target::parse(url)?.addr, url.to_owned(), None)
    };
    // From here on the children are stopped whatever happens.
    let result = measure(args, &marker, addr, target, spawned.as_ref())
        .await
        .map(|mut report| {
            report.pinning = pinning;
            report.floor = floor.map(|f| f.with_herald(&report));
            report
        });
    if let Some(s) = spawned {
        let dir = tokio::task::spawn_blocking(move || s.stop()).await?;
        if args.keep {
            eprintln!("kept {}", dir.path.display());
        }
    }
    result
}

async fn measure(
    args: &BenchArgs,
    marker: &messages::Marker,
    addr: SocketAddr,
    target: String,
    spawned: Option<&Spawned>,
) -> Result<Report, BenchError> {
    let pids = spawned.map(|s| (s.herald.id(), s.simulator.id()));
    let idle = match pids {
        Some((h, s)) => {
            tokio::time::sleep(SETTLE).await;
            (procfs::sample(h), procfs::sample(s))
        }
        None => (None, None),
    };
    // Not `available_parallelism`: under `--pin` this process may use one.
    let cores = procfs::core_busy_secs().map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |c| c.len(),
    );
    let load_average_before = procfs::load_average();
    let time_limit = args.time_limit();
    if args.backlog_low > 0 {
        load::preload_low(addr, args.channel, args.backlog_low).await?;
    }
    let stats_before = stats::read_once(addr, Instant::now()).await;
    let attempts_before = stats::read_counter(addr, ATTEMPTS).await;
    let hedges_before = stats::read_counter(addr, HEDGES).await;

    let start = Instant::now();
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let me = std::process::id();
    let machine_before = procfs::machine_busy_secs();
    let cores_before = procfs::core_busy_secs();
    let bench_before = procfs::sample(me);
    let cpu_before = pids.map(|(h, s)| (procfs::sample(h), procfs::sample(s)));
    let plan = Arc::new(Plan {
        addr,
        mix: args.channel,
        marker: marker.clone(),
        count: args.count,
        start,
        deadline: start + time_limit,
        rate: args.rate,
        keep_accepted: spawned.is_some(),
        batch: args.batch,
        options: messages::options(args.priority.as_deref(), args.hedge),
    });
    let live = Arc::new(Live::default());
    let stop_polling = Arc::new(AtomicBool::new(false));
    let backlog_now = Arc::new(AtomicU64::new(0));
    let poller = tokio::spawn(stats::poll(
        addr,
        start,
        args.stats_interval,
        time_limit + args.drain_timeout + Duration::from_secs(30),
        Arc::clone(&stop_polling),
        Arc::clone(&backlog_now),
    ));
    let bar = progress_bar(args, time_limit);
    let ticker = tokio::spawn(show_progress(
        bar.clone(),
        Arc::clone(&live),
        Arc::clone(&backlog_now),
        spawned.map(|s| Arc::clone(&s.deliveries)),
        args.count,
        start,
        time_limit,
    ));

    let outcome = load::run(Arc::clone(&plan), live, args.concurrency).await;
    let load_end = Instant::now();
    let cpu_at_load_end = pids.map(|(h, s)| (procfs::sample(h), procfs::sample(s)));
    let bench_at_load_end = procfs::sample(me);
    let machine_at_load_end = procfs::machine_busy_secs();
    let cores_at_load_end = procfs::core_busy_secs();
    ticker.abort();
    let load_secs = (load_end - start).as_secs_f64();
    let stats_at_load_end = stats::read_once(addr, start).await;

    // Drain: until the backlog is empty, within the drain timeout.
    bar.set_message("draining the backlog");
    let drained_at = drain(addr, start, args.drain_timeout, &bar, &backlog_now).await;
    if let Some(s) = spawned {
        settle_deliveries(&s.deliveries).await;
    }
    bar.finish_and_clear();
    let end = Instant::now();
    let cpu_after = pids.map(|(h, s)| (procfs::sample(h), procfs::sample(s)));
    let stats_end = stats::read_once(addr, start).await;
    let attempts_end = stats::read_counter(addr, ATTEMPTS).await;
    let hedges_end = stats::read_counter(addr, HEDGES).await;
    stop_polling.store(true, Ordering::Relaxed);
    let samples = poller.await?;

    let wall = (end - start).as_secs_f64();
    let (herald_process, simulator_process) = match (pids, cpu_before, cpu_at_load_end, cpu_after) {
        (Some((h, s)), Some(before), Some(at_end), Some(after)) => {
            let readings = |idle, start, load_end, end| ProcReadings {
                idle,
                load_start: start,
                load_end,
                end,
            };
            (
                Some(ProcessReport::new(
                    h,
                    readings(idle.0, before.0, at_end.0, after.0),
                    load_secs,
                    wall,
                )),
                Some(ProcessReport::new(
                    s,
                    readings(idle.1, before.1, at_end.1, after.1),
                    load_secs,
                    wall,
                )),
            )
        }
        _ => (None, None),
    };
    let drained_after = drained_at.map(|t| (t - start).as_secs_f64());
    let machine = {
        let busy = machine_before
            .zip(machine_at_load_end)
            .map(|(a, b)| 100.0 * (b - a) / load_secs.max(1e-9));
        // What Herald, the simulator and the bench used over the same span.
        let spawned_cpu: f64 = [&herald_process, &simulator_process]
            .into_iter()
            .flatten()
            .filter_map(|p| p.cpu_percent_during_load)
            .sum();
        let bench = bench_at_load_end
            .zip(bench_before)
            .map(|(a, b)| 100.0 * (a.cpu_secs - b.cpu_secs) / load_secs.max(1e-9));
        let per_core = cores_before
            .zip(cores_at_load_end)
            .filter(|(a, b)| a.len() == b.len())
            .map(|(a, b)| {
                a.iter()
                    .zip(&b)
                    .map(|(a, b)| 100.0 * (b - a) / load_secs.max(1e-9))
                    .collect()
            });
        Machine {
            cores,
            load_average_before,
            busy_percent_during_load: busy,
            per_core_busy_percent_during_load: per_core,
            others_percent_during_load: busy
                .zip(bench)
                .map(|(busy, bench)| (busy - spawned_cpu - bench).max(0.0)),
        }
    };
    let delivery = match spawned {
        Some(s) => delivery_from_simulator(&outcome, &s.deliveries, start, load_end, drained_after),
        None => delivery_from_stats(
            &outcome,
            stats_before,
            stats_at_load_end,
            stats_end,
            load_secs,
            drained_after,
        ),
    };
    let load_ms = (load_end - start).as_millis() as i64;
    let backlog = Backlog {
        max: samples.iter().map(StatsSample::backlog).max().unwrap_or(0),
        slope_per_sec: stats::backlog_slope(&samples, 0, load_ms),
        samples,
    };
    Ok(Report {
        started_at,
        target,
        spawned: spawned.is_some(),
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        concurrency: args.concurrency,
        rate: args.rate,
        channel: args.channel,
        machine,
        load_secs,
        sent: outcome.sent,
        accepted: outcome.accepted,
        accepted_per_sec: outcome.accepted as f64 / load_secs.max(1e-9),
        other_statuses: outcome.statuses.clone(),
        errors: outcome.errors,
        first_error: outcome.first_error.clone(),
        accept_latency: outcome.latency.summary(),
        accept_latency_from_due: args.rate.map(|_| outcome.latency_from_due.summary()),
        delivery,
        provider_attempts: attempts_before
            .zip(attempts_end)
            .map(|(a, b)| b.saturating_sub(a)),
        hedged_rounds: hedges_before
            .zip(hedges_end)
            .map(|(a, b)| b.saturating_sub(a)),
        backlog,
        herald_process,
        simulator_process,
        bench_process: ProcessReport::new(
            me,
            ProcReadings {
                idle: None,
                load_start: bench_before,
                load_end: bench_at_load_end,
                end: bench_at_load_end,
            },
            load_secs,
            load_secs,
        ),
        pinning: None,
        floor: None,
    })
}

/// Polls the backlog every 100 ms until it is empty; answers when that was
/// seen, or `None` if it was not within `limit`.
async fn drain(
    addr: SocketAddr,
    start: Instant,
    limit: Duration,
    bar: &ProgressBar,
    backlog_now: &AtomicU64,
) -> Option<Instant> {
    let until = Instant::now() + limit;
    loop {
        if let Some(s) = stats::read_once(addr, start).await {
            backlog_now.store(s.backlog(), Ordering::Relaxed);
            bar.set_message(format!("draining: backlog {}", s.backlog()));
            if s.backlog() == 0 {
                return Some(Instant::now());
            }
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until no new delivery line has arrived for 300 ms (at most 5 s):
/// the pipe from the simulator lags its sends a little.
async fn settle_deliveries(log: &DeliveryLog) {
    let until = Instant::now() + Duration::from_secs(5);
    let mut last = log.lines.load(Ordering::Relaxed);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = log.lines.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
}

fn delivery_from_simulator(
    outcome: &Outcome,
    log: &DeliveryLog,
    start: Instant,
    load_end: Instant,
    drained_after_secs: Option<f64>,
) -> Delivery {
    let accepted: HashMap<u64, u64> = outcome.accepted_at.iter().copied().collect();
    let seen = std::mem::take(&mut *log.seen.lock().unwrap_or_else(|e| e.into_inner()));
    let mut first: HashMap<u64, Instant> = HashMap::with_capacity(seen.len());
    let mut duplicates = 0;
    for (seq, at) in seen {
        // Lines are read in order: the first one is the first delivery.
        match first.entry(seq) {
            Entry::Occupied(_) => duplicates += 1,
            Entry::Vacant(v) => {
                v.insert(at);
            }
        }
    }
    let mut latency = Latencies::new();
    let mut in_load = 0u64;
    let mut delivered = 0u64;
    for (seq, at) in &first {
        if *at <= load_end {
            in_load += 1;
        }
        // A delivery of a request whose 202 never arrived (an error) counts
        // as delivered but has no accept time to measure from.
        if let Some(&accepted_us) = accepted.get(seq) {
            delivered += 1;
            let at_us = at.saturating_duration_since(start).as_micros() as u64;
            latency.record(Duration::from_micros(at_us.saturating_sub(accepted_us)));
        }
    }
    let load_secs = (load_end - start).as_secs_f64().max(1e-9);
    Delivery {
        source: "simulator",
        delivered_per_sec_during_load: Some(in_load as f64 / load_secs),
        delivered,
        duplicates,
        undelivered: outcome.accepted.saturating_sub(delivered),
        drained_after_secs,
        accept_to_delivered: Some(latency.summary()),
    }
}

fn delivery_from_stats(
    outcome: &Outcome,
    before: Option<StatsSample>,
    at_load_end: Option<StatsSample>,
    end: Option<StatsSample>,
    load_secs: f64,
    drained_after_secs: Option<f64>,
) -> Delivery {
    let base = before.map_or(0, |s| s.delivered);
    let during = at_load_end.map(|s| s.delivered.saturating_sub(base) as f64 / load_secs.max(1e-9));
    let delivered = end.map_or(0, |s| s.delivered.saturating_sub(base));
    Delivery {
        source: "stats",
        delivered_per_sec_during_load: during,
        delivered,
        duplicates: 0,
        undelivered: end.map_or(outcome.accepted, |s| s.backlog()),
        drained_after_secs,
        accept_to_delivered: None,
    }
}

fn progress_bar(args: &BenchArgs, time_limit: Duration) -> ProgressBar {
    let target = if args.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr_with_hz(4)
    };
    let len = args.count.unwrap_or(time_limit.as_millis() as u64);
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

async fn show_progress(
    bar: ProgressBar,
    live: Arc<Live>,
    backlog: Arc<AtomicU64>,
    deliveries: Option<Arc<DeliveryLog>>,
    count: Option<u64>,
    start: Instant,
    time_limit: Duration,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // Bounded: the load phase itself is bounded by `time_limit`.
    while start.elapsed() <= time_limit + Duration::from_secs(1) {
        tick.tick().await;
        let accepted = live.accepted.load(Ordering::Relaxed);
        let elapsed = start.elapsed();
        bar.set_position(match count {
            Some(_) => accepted,
            None => elapsed.as_millis() as u64,
        });
        let delivered = deliveries.as_ref().map_or(String::new(), |d| {
            format!(", delivered {}", d.lines.load(Ordering::Relaxed))
        });
        bar.set_message(format!(
            "accepted {accepted} ({:.0}/s), errors {}, backlog {}{delivered}",
            accepted as f64 / elapsed.as_secs_f64().max(1e-3),
            live.errors.load(Ordering::Relaxed),
            backlog.load(Ordering::Relaxed),
        ));
    }
}
