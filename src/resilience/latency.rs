//! A provider's recent latencies: its p50 and p99 for the health view, and
//! its p90 for a hedge's delay. One window per provider, kept in the health
//! a reload carries over.

use std::time::Duration;

/// How many recent answered requests a provider's percentiles describe.
pub const LATENCY_WINDOW: usize = 256;

/// The last `capacity` answered requests' durations in a ring: recording
/// is O(1), and a percentile works on a copy, which only a reader (an API
/// call, the one-second live sample, a hedged round) pays for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyWindow {
    /// Microseconds, so that a hedge's delay is not rounded to the
    /// millisecond; a `u32` holds over an hour, far past any timeout.
    micros: Vec<u32>,
    /// Where the next duration goes; once full, also the oldest.
    next: usize,
    capacity: usize,
}

impl LatencyWindow {
    /// Fewer answers than this say too little to hedge after a percentile.
    pub const MIN_SAMPLES: usize = 10;

    /// A capacity of 0 is treated as 1.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            micros: Vec::with_capacity(capacity),
            next: 0,
            capacity,
        }
    }

    pub fn record(&mut self, took: Duration) {
        let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        if self.micros.len() < self.capacity {
            self.micros.push(us);
        } else {
            self.micros[self.next] = us;
        }
        self.next = (self.next + 1) % self.capacity;
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// The given percentiles (0 to 100) in whole milliseconds, nearest
    /// rank; all `None` while nothing was recorded.
    pub fn percentiles_ms<const N: usize>(&self, ps: [f64; N]) -> [Option<u32>; N] {
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        ps.map(|p| sorted.get(rank(p, sorted.len())).map(|us| us / 1000))
    }

    /// The 90th percentile (nearest rank), once at least
    /// [`Self::MIN_SAMPLES`] answers are held.
    pub fn p90(&self) -> Option<Duration> {
        if self.len() < Self::MIN_SAMPLES {
            return None;
        }
        let mut held = self.micros.clone();
        let at = rank(90.0, held.len());
        let (_, p90, _) = held.select_nth_unstable(at);
        Some(Duration::from_micros(u64::from(*p90)))
    }
}

/// The index of percentile `p` among `len` sorted values, nearest rank.
/// `p * len` is exact and the quotient correctly rounded, so a rank that
/// is a whole number is never pushed up by float error.
fn rank(p: f64, len: usize) -> usize {
    let rank = (p.clamp(0.0, 100.0) * len as f64 / 100.0).ceil() as usize;
    rank.saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn empty_has_no_percentiles() {
        let w = LatencyWindow::new(4);
        assert!(w.is_empty());
        assert_eq!(w.percentiles_ms([50.0, 99.0]), [None, None]);
        assert_eq!(w.p90(), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut w = LatencyWindow::new(100);
        // Recorded out of order: 1..=100 ms.
        for n in (1..=100).rev() {
            w.record(ms(n));
        }
        assert_eq!(
            w.percentiles_ms([50.0, 99.0, 100.0, 0.0]),
            [Some(50), Some(99), Some(100), Some(1)]
        );
        assert_eq!(w.p90(), Some(ms(90)));
        let mut one = LatencyWindow::new(8);
        one.record(ms(7));
        assert_eq!(one.percentiles_ms([50.0, 99.0]), [Some(7), Some(7)]);
    }

    #[test]
    fn milliseconds_are_whole_and_p90_keeps_the_microseconds() {
        let mut w = LatencyWindow::new(16);
        for _ in 0..LatencyWindow::MIN_SAMPLES {
            w.record(Duration::from_micros(1_999));
        }
        assert_eq!(w.percentiles_ms([50.0]), [Some(1)]);
        assert_eq!(w.p90(), Some(Duration::from_micros(1_999)));
    }

    #[test]
    fn no_p90_before_enough_answers() {
        let mut w = LatencyWindow::new(LATENCY_WINDOW);
        for n in 1..LatencyWindow::MIN_SAMPLES as u64 {
            w.record(ms(n));
        }
        assert_eq!(w.p90(), None, "too few samples");
        assert_eq!(
            w.percentiles_ms([50.0]),
            [Some(5)],
            "the health view shows them"
        );
        w.record(ms(10));
        assert_eq!(w.p90(), Some(ms(9)));
    }

    #[test]
    fn only_the_most_recent_count() {
        let mut w = LatencyWindow::new(3);
        for n in [1000, 1000, 1000, 5, 6, 7] {
            w.record(ms(n));
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.percentiles_ms([50.0, 99.0]), [Some(6), Some(7)]);
        w.record(ms(2000));
        assert_eq!(w.percentiles_ms([99.0]), [Some(2000)]);

        // A full window of 1 s answers pushes every earlier one out.
        let mut w = LatencyWindow::new(LATENCY_WINDOW);
        for n in 1..=100 {
            w.record(ms(n));
        }
        for _ in 0..LATENCY_WINDOW {
            w.record(ms(1000));
        }
        assert_eq!(w.len(), LATENCY_WINDOW);
        assert_eq!(w.p90(), Some(ms(1000)));
        assert_eq!(w.percentiles_ms([0.0]), [Some(1000)]);
    }

    #[test]
    fn zero_capacity_holds_one_and_huge_durations_saturate() {
        let mut w = LatencyWindow::new(0);
        w.record(ms(3));
        w.record(Duration::from_secs(u64::MAX / 1000));
        assert_eq!(w.len(), 1);
        assert_eq!(w.percentiles_ms([50.0]), [Some(u32::MAX / 1000)]);
    }
}
