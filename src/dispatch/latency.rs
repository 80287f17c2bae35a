//! A provider's recent latencies, for its p50 and p99.

use std::time::Duration;

/// How many recent requests a provider's percentiles describe.
pub const LATENCY_WINDOW: usize = 256;

/// The last `capacity` request durations in a ring: recording is O(1), and
/// percentiles sort a copy, which only a reader (an API call, the one-second
/// live sample) pays for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyWindow {
    millis: Vec<u32>,
    /// Where the next duration goes; once full, also the oldest.
    next: usize,
    capacity: usize,
}

impl LatencyWindow {
    /// A capacity of 0 is treated as 1.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            millis: Vec::with_capacity(capacity),
            next: 0,
            capacity,
        }
    }

    pub fn record(&mut self, took: Duration) {
        let ms = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
        if self.millis.len() < self.capacity {
            self.millis.push(ms);
        } else {
            self.millis[self.next] = ms;
        }
        self.next = (self.next + 1) % self.capacity;
    }

    pub fn len(&self) -> usize {
        self.millis.len()
    }

    pub fn is_empty(&self) -> bool {
        self.millis.is_empty()
    }

    /// The given percentiles (0 to 100) in milliseconds, nearest rank; all
    /// `None` while nothing was recorded.
    pub fn percentiles<const N: usize>(&self, ps: [f64; N]) -> [Option<u32>; N] {
        let mut sorted = self.millis.clone();
        sorted.sort_unstable();
        ps.map(|p| {
            let rank = (p.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize;
            sorted.get(rank.saturating_sub(1)).copied()
        })
    }
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
        assert_eq!(w.percentiles([50.0, 99.0]), [None, None]);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut w = LatencyWindow::new(100);
        // Recorded out of order: 1..=100 ms.
        for n in (1..=100).rev() {
            w.record(ms(n));
        }
        assert_eq!(
            w.percentiles([50.0, 99.0, 100.0, 0.0]),
            [Some(50), Some(99), Some(100), Some(1)]
        );
        let mut one = LatencyWindow::new(8);
        one.record(ms(7));
        assert_eq!(one.percentiles([50.0, 99.0]), [Some(7), Some(7)]);
    }

    #[test]
    fn only_the_most_recent_count() {
        let mut w = LatencyWindow::new(3);
        for n in [1000, 1000, 1000, 5, 6, 7] {
            w.record(ms(n));
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.percentiles([50.0, 99.0]), [Some(6), Some(7)]);
        w.record(ms(2000));
        assert_eq!(w.percentiles([99.0]), [Some(2000)]);
    }

    #[test]
    fn zero_capacity_holds_one_and_huge_durations_saturate() {
        let mut w = LatencyWindow::new(0);
        w.record(ms(3));
        w.record(Duration::from_secs(u64::MAX / 1000));
        assert_eq!(w.len(), 1);
        assert_eq!(w.percentiles([50.0]), [Some(u32::MAX)]);
    }
}
