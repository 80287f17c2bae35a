//! Latency histograms (HDR: 3 significant digits from 1 µs to 10 min) and
//! the percentile summary the report shows.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram holds; longer ones are clamped to it.
const MAX_MICROS: u64 = 600_000_000;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static bounds are valid"))
    }

    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    pub fn add(&mut self, other: &Latencies) {
        // Same bounds on both sides: cannot fail.
        self.0.add(&other.0).expect("histograms share their bounds");
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn summary(&self) -> Percentiles {
        let h = &self.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean_us: h.mean().round() as u64,
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// A latency for people: `850µs`, `1.25ms`, `2.50s`.
pub fn human_micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

impl Percentiles {
    /// One line: `p50 1.02ms  p90 …  max …  (n=…)`.
    pub fn line(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}  (n={})",
            human_micros(self.p50_us),
            human_micros(self.p90_us),
            human_micros(self.p99_us),
            human_micros(self.p999_us),
            human_micros(self.max_us),
            human_micros(self.mean_us),
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_a_thousand_ms() {
        let mut h = Latencies::new();
        for ms in 1..=1000 {
            h.record(Duration::from_millis(ms));
        }
        let p = h.summary();
        assert_eq!(p.count, 1000);
        // 3 significant digits: within 0.1%.
        let near = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 1e-3;
        assert!(near(p.p50_us, 500_000), "{p:?}");
        assert!(near(p.p90_us, 900_000), "{p:?}");
        assert!(near(p.p99_us, 990_000), "{p:?}");
        assert!(near(p.p999_us, 999_000), "{p:?}");
        assert!(near(p.max_us, 1_000_000), "{p:?}");
    }

    #[test]
    fn merging_adds_counts_and_extremes_clamp() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        a.record(Duration::ZERO);
        b.record(Duration::from_secs(3600));
        a.add(&b);
        let p = a.summary();
        assert_eq!(p.count, 2);
        assert_eq!(p.p50_us, 1);
        assert!(p.max_us >= MAX_MICROS && p.max_us <= MAX_MICROS + MAX_MICROS / 1000);
    }

    #[test]
    fn empty_summary_and_formatting() {
        assert_eq!(Latencies::new().summary(), Percentiles::default());
        assert_eq!(Percentiles::default().line(), "no samples");
        assert_eq!(human_micros(850), "850µs");
        assert_eq!(human_micros(1_250), "1.25ms");
        assert_eq!(human_micros(2_500_000), "2.50s");
    }
}
