//! A provider's rate limit: a token bucket. Real providers throttle (a
//! Twilio long code sends about one message a second and silently queues
//! the rest), so Herald paces itself.
//!
//! Pure: the time is passed in, so the tests never sleep.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// May go below zero: tokens reserved ahead of time by senders waiting.
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// `rate` tokens a second, at most `burst` at once; starts full.
    /// Settings are validated with the config (`rate > 0`, `burst >= 1`).
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// The burst when none is set: one second's worth, at least one.
    pub fn default_burst(rate: f64) -> u32 {
        rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32
    }

    fn refill(&mut self, now: Instant) {
        if now > self.at {
            let earned = (now - self.at).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.burst);
            self.at = now;
        }
    }

    /// New settings (a reload): what was used stays used, and no more
    /// than the new burst is saved up. Reservations made ahead of time
    /// are kept as debt, repaid at the new rate.
    pub fn set_limit(&mut self, rate: f64, burst: u32, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.burst = f64::from(burst.max(1));
        self.tokens = self.tokens.min(self.burst);
    }

    /// At most this many at once.
    pub fn burst(&self) -> u32 {
        self.burst as u32
    }

    /// Takes a token if one is free now: `Ok` with the whole tokens left,
    /// or `Err` with how long until one is (nothing taken). For callers
    /// that are answered rather than made to wait.
    pub fn take(&mut self, now: Instant) -> Result<u32, Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(self.tokens.max(0.0) as u32);
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }

    /// Takes a token if one is free within `max_wait`, and says how long to
    /// wait before using it; takes nothing (`None`) when none is.
    pub fn reserve(&mut self, now: Instant, max_wait: Duration) -> Option<Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Some(Duration::ZERO);
        }
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
        if wait > max_wait {
            return None;
        }
        self.tokens -= 1.0;
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::clock;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn take_answers_at_once() {
        let t0 = clock::instant();
        let mut b = TokenBucket::new(2.0, 2, t0);
        assert_eq!(b.take(t0), Ok(1));
        assert_eq!(b.take(t0), Ok(0));
        assert_eq!(b.take(t0), Err(Duration::from_millis(500)));
        assert_eq!(b.take(t0 + SEC / 2), Ok(0));
    }

    #[test]
    fn a_full_bucket_lets_its_burst_through_at_once() {
        let t0 = clock::instant();
        let mut b = TokenBucket::new(5.0, 3, t0);
        for _ in 0..3 {
            assert_eq!(b.reserve(t0, Duration::ZERO), Some(Duration::ZERO));
        }
        assert_eq!(b.reserve(t0, Duration::ZERO), None, "empty");
        // The next token comes 1/5 s later.
        assert_eq!(b.reserve(t0, SEC), Some(Duration::from_millis(200)));
    }

    #[test]
    fn reservations_queue_up_behind_each_other() {
        let t0 = clock::instant();
        let mut b = TokenBucket::new(5.0, 1, t0);
        let waits: Vec<_> = (0..6).map(|_| b.reserve(t0, SEC).unwrap()).collect();
        let ms: Vec<u128> = waits.iter().map(|w| w.as_millis()).collect();
        assert_eq!(ms, [0, 200, 400, 600, 800, 1000]);
        // Past the longest wait allowed: refused, and nothing is taken.
        assert_eq!(b.reserve(t0, SEC), None);
        assert_eq!(b.reserve(t0, 2 * SEC), Some(Duration::from_millis(1200)));
    }

    #[test]
    fn no_window_sees_more_than_rate_plus_burst() {
        // Greedy senders at 5/s with a burst of 2, over 10 s of virtual time:
        // every send time is when its reservation said.
        let t0 = clock::instant();
        let mut b = TokenBucket::new(5.0, 2, t0);
        let mut sends = Vec::new();
        let mut now = t0;
        while now < t0 + 10 * SEC {
            if let Some(wait) = b.reserve(now, Duration::ZERO) {
                sends.push(now + wait);
            }
            now += Duration::from_millis(7);
        }
        for (i, start) in sends.iter().enumerate() {
            let in_window = sends[i..].iter().take_while(|t| **t < *start + SEC).count();
            assert!(in_window <= 5 + 2, "{in_window} sends in one second");
        }
        assert!(sends.len() >= 50 && sends.len() <= 52, "{}", sends.len());
    }

    #[test]
    fn new_limits_keep_what_was_used() {
        let t0 = clock::instant();
        let mut b = TokenBucket::new(1.0, 4, t0);
        for _ in 0..3 {
            assert!(b.reserve(t0, Duration::ZERO).is_some());
        }
        // One token left; a smaller burst cannot hand out more than it.
        b.set_limit(10.0, 2, t0);
        assert_eq!(b.reserve(t0, Duration::ZERO), Some(Duration::ZERO));
        assert_eq!(b.reserve(t0, Duration::ZERO), None);
        // Refilled at the new rate, up to the new burst.
        assert_eq!(b.reserve(t0, SEC), Some(Duration::from_millis(100)));
        let later = t0 + 60 * SEC;
        assert_eq!(b.take(later), Ok(1));
        assert_eq!(b.take(later), Ok(0));
        assert!(b.take(later).is_err());
    }

    #[test]
    fn an_idle_bucket_refills_up_to_its_burst_only() {
        let t0 = clock::instant();
        let mut b = TokenBucket::new(2.0, 2, t0);
        assert!(b.reserve(t0, Duration::ZERO).is_some());
        assert!(b.reserve(t0, Duration::ZERO).is_some());
        let later = t0 + 60 * SEC;
        assert!(b.reserve(later, Duration::ZERO).is_some());
        assert!(b.reserve(later, Duration::ZERO).is_some());
        assert_eq!(b.reserve(later, Duration::ZERO), None);
        assert_eq!(TokenBucket::default_burst(0.5), 1);
        assert_eq!(TokenBucket::default_burst(5.0), 5);
        assert_eq!(TokenBucket::default_burst(2.5), 3);
    }
}
