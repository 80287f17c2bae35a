//! A fixed-size sliding window over the most recent delivery outcomes.

/// The last `capacity` outcomes (`true` = failure), kept in a ring buffer so
/// recording is O(1) and the failure count never needs a rescan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeWindow {
    slots: Vec<bool>,
    /// Index the next outcome is written to; once full, also the oldest.
    next: usize,
    len: usize,
    failures: usize,
}

impl OutcomeWindow {
    /// A window of the last `capacity` outcomes. A capacity of 0 is treated
    /// as 1: a window that can hold nothing would make every ratio 0.0 and
    /// silently disable whatever rule reads it.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: vec![false; capacity.max(1)],
            next: 0,
            len: 0,
            failures: 0,
        }
    }

    /// Adds an outcome, evicting the oldest one if the window is full.
    pub fn record(&mut self, failed: bool) {
        let capacity = self.slots.len();
        if self.len == capacity {
            // Full: the slot about to be overwritten holds the oldest outcome.
            if self.slots[self.next] {
                self.failures -= 1;
            }
        } else {
            self.len += 1;
        }
        self.slots[self.next] = failed;
        if failed {
            self.failures += 1;
        }
        self.next = (self.next + 1) % capacity;
    }

    /// How many outcomes the window holds (at most its capacity).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many outcomes the window can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// How many of the held outcomes are failures.
    pub fn failures(&self) -> usize {
        self.failures
    }

    /// Failures over held outcomes; 0.0 when empty, so "no data" never looks
    /// like "all failing".
    pub fn failure_ratio(&self) -> f64 {
        if self.len == 0 {
            0.0
        } else {
            self.failures as f64 / self.len as f64
        }
    }

    /// Forgets every outcome; the capacity stays.
    pub fn clear(&mut self) {
        self.next = 0;
        self.len = 0;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_window_has_zero_ratio() {
        let w = OutcomeWindow::new(4);
        assert!(w.is_empty());
        assert_eq!(w.len(), 0);
        assert_eq!(w.failures(), 0);
        assert_eq!(w.failure_ratio(), 0.0);
        assert_eq!(w.capacity(), 4);
    }

    #[test]
    fn zero_capacity_is_clamped_to_one() {
        let mut w = OutcomeWindow::new(0);
        assert_eq!(w.capacity(), 1);
        w.record(true);
        assert_eq!((w.len(), w.failures()), (1, 1));
        w.record(false);
        assert_eq!((w.len(), w.failures()), (1, 0));
        assert_eq!(w.failure_ratio(), 0.0);
    }

    #[test]
    fn ratio_before_wrap_around() {
        let mut w = OutcomeWindow::new(4);
        w.record(true);
        assert_eq!(w.failure_ratio(), 1.0);
        w.record(false);
        assert_eq!(w.failure_ratio(), 0.5);
        w.record(false);
        assert_eq!(w.len(), 3);
        assert_eq!(w.failures(), 1);
        assert!((w.failure_ratio() - 1.0 / 3.0).abs() < 1e-12);
        assert!(!w.is_empty());
    }

    #[test]
    fn oldest_outcome_is_evicted_after_wrap_around() {
        let mut w = OutcomeWindow::new(3);
        // [F, S, S]
        w.record(true);
        w.record(false);
        w.record(false);
        assert_eq!((w.len(), w.failures()), (3, 1));
        // Evicts the F: [S, S, S].
        w.record(false);
        assert_eq!((w.len(), w.failures()), (3, 0));
        assert_eq!(w.failure_ratio(), 0.0);
        // Evicts an S each time: [S, F, F] then [F, F, F].
        w.record(true);
        w.record(true);
        assert_eq!(w.failures(), 2);
        w.record(true);
        assert_eq!((w.len(), w.failures()), (3, 3));
        assert_eq!(w.failure_ratio(), 1.0);
        // Evicts an F, adds an S: [F, F, S].
        w.record(false);
        assert_eq!(w.failures(), 2);
        assert!((w.failure_ratio() - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn matches_a_naive_model_over_many_wraps() {
        let mut rng = fastrand::Rng::with_seed(7);
        let cap = 5;
        let mut w = OutcomeWindow::new(cap);
        let mut all = Vec::new();
        for _ in 0..1_000 {
            let failed = rng.bool();
            w.record(failed);
            all.push(failed);
            let tail = &all[all.len().saturating_sub(cap)..];
            assert_eq!(w.len(), tail.len());
            assert_eq!(w.failures(), tail.iter().filter(|&&f| f).count());
        }
    }

    #[test]
    fn clear_forgets_everything_and_keeps_working() {
        let mut w = OutcomeWindow::new(3);
        for _ in 0..5 {
            w.record(true);
        }
        w.clear();
        assert!(w.is_empty());
        assert_eq!(w.failures(), 0);
        assert_eq!(w.failure_ratio(), 0.0);
        assert_eq!(w.capacity(), 3);
        w.record(false);
        w.record(true);
        assert_eq!((w.len(), w.failures()), (2, 1));
        w.record(true);
        w.record(true); // evicts the first S recorded after clear
        assert_eq!((w.len(), w.failures()), (3, 3));
    }
}
