//! The backlog over time, read from Herald's `GET /v1/stats`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::Conn;

/// One reading of `/v1/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSample {
    /// Milliseconds since the load started (negative: before it).
    pub t_ms: i64,
    pub queued: u64,
    pub sending: u64,
    pub retrying: u64,
    /// Gone out through a provider: `sent` (the provider accepted it), and
    /// `delivered` or `undelivered`/`bounced` once a receipt said more.
    pub delivered: u64,
    pub failed: u64,
    pub dead: u64,
}

impl StatsSample {
    /// Work not finished yet: queued + sending + retrying.
    pub fn backlog(&self) -> u64 {
        self.queued + self.sending + self.retrying
    }

    /// Parses `{"by_status": {"queued": 1, …}}`.
    pub fn parse(body: &[u8], t_ms: i64) -> Option<StatsSample> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let by = v.get("by_status")?;
        let n = |k: &str| by.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        Some(StatsSample {
            t_ms,
            queued: n("queued"),
            sending: n("sending"),
            retrying: n("retrying"),
            delivered: n("sent") + n("delivered") + n("undelivered") + n("bounced"),
            failed: n("failed"),
            dead: n("dead"),
        })
    }
}

/// Reads the stats once, on a fresh connection.
pub async fn read_once(addr: SocketAddr, start: Instant) -> Option<StatsSample> {
    let mut conn = Conn::open(addr).await.ok()?;
    fetch(&mut conn, start).await
}

async fn fetch(conn: &mut Conn, start: Instant) -> Option<StatsSample> {
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), conn.get("/v1/stats"))
        .await
        .ok()?
        .ok()?;
    if !status.is_success() {
        return None;
    }
    let now = Instant::now();
    let t_ms = if now >= start {
        (now - start).as_millis() as i64
    } else {
        -((start - now).as_millis() as i64)
    };
    StatsSample::parse(&body, t_ms)
}

/// Polls the stats every `interval` until `stop` is set or `limit` has
/// passed; the latest backlog is also published in `backlog` for the
/// progress bar.
pub async fn poll(
    addr: SocketAddr,
    start: Instant,
    interval: Duration,
    limit: Duration,
    stop: Arc<AtomicBool>,
    backlog: Arc<AtomicU64>,
) -> Vec<StatsSample> {
    let mut samples = Vec::new();
    let mut conn = None;
    let until = Instant::now() + limit;
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        tick.tick().await;
        if conn.is_none() {
            conn = Conn::open(addr).await.ok();
        }
        if let Some(c) = conn.as_mut() {
            match fetch(c, start).await {
                Some(s) => {
                    backlog.store(s.backlog(), Ordering::Relaxed);
                    samples.push(s);
                }
                None => conn = None,
            }
        }
    }
    samples
}

/// The sum of a counter's series (every label set) in Herald's
/// `GET /metrics`, read once on a fresh connection.
pub async fn read_counter(addr: SocketAddr, name: &str) -> Option<u64> {
    let mut conn = Conn::open(addr).await.ok()?;
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), conn.get("/metrics"))
        .await
        .ok()?
        .ok()?;
    if !status.is_success() {
        return None;
    }
    Some(sum_counter(std::str::from_utf8(&body).ok()?, name))
}

/// `name{…} 12` and `name 3` lines of the Prometheus text format, summed
/// (0 before the counter's first series exists).
pub fn sum_counter(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter(|rest| rest.starts_with('{') || rest.starts_with(' '))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Least-squares slope of the backlog, in notifications per second, over
/// the samples taken in `[from_ms, to_ms]`: near 0 when the backlog is flat.
pub fn backlog_slope(samples: &[StatsSample], from_ms: i64, to_ms: i64) -> Option<f64> {
    let pts: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t_ms >= from_ms && s.t_ms <= to_ms)
        .map(|s| (s.t_ms as f64 / 1e3, s.backlog() as f64))
        .collect();
    if pts.len() < 3 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_stats_answer() {
        let body =
            br#"{"by_status":{"dead":1,"sent":90,"failed":0,"queued":5,"retrying":3,"sending":2}}"#;
        let s = StatsSample::parse(body, 1500).unwrap();
        assert_eq!(s.backlog(), 10);
        assert_eq!((s.delivered, s.dead, s.t_ms), (90, 1, 1500));
        // A receipt moves some on from sent: they went out all the same.
        let body = br#"{"by_status":{"sent":80,"delivered":7,"undelivered":2,"bounced":1}}"#;
        assert_eq!(StatsSample::parse(body, 0).unwrap().delivered, 90);
        assert_eq!(StatsSample::parse(b"{}", 0), None);
        assert_eq!(StatsSample::parse(b"<html>", 0), None);
    }

    #[test]
    fn sums_a_counters_series() {
        let text = "# TYPE herald_attempts counter\n\
            herald_attempts_total{provider=\"sms-provider1\",outcome=\"delivered\"} 7\n\
            herald_attempts_total{provider=\"sms-provider2\",outcome=\"transient\"} 5\n\
            herald_attempts_total_other 100\n\
            herald_in_flight 3\n";
        assert_eq!(sum_counter(text, "herald_attempts_total"), 12);
        assert_eq!(sum_counter(text, "herald_in_flight"), 3);
        assert_eq!(sum_counter(text, "herald_hedges_total"), 0);
    }

    #[test]
    fn slope_of_a_growing_and_a_flat_backlog() {
        let growing: Vec<_> = (0..10)
            .map(|i| StatsSample {
                t_ms: i * 1000,
                queued: (i * 100) as u64,
                ..StatsSample::default()
            })
            .collect();
        let slope = backlog_slope(&growing, 0, 9_000).unwrap();
        assert!((slope - 100.0).abs() < 1e-9, "{slope}");
        let flat: Vec<_> = (0..10)
            .map(|i| StatsSample {
                t_ms: i * 1000,
                queued: 50,
                ..StatsSample::default()
            })
            .collect();
        assert_eq!(backlog_slope(&flat, 0, 9_000), Some(0.0));
        assert_eq!(backlog_slope(&flat[..2], 0, 9_000), None);
    }
}
