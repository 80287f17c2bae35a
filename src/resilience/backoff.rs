//! Retry delays: capped exponential growth with full jitter.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackoffError {
    #[error("backoff base delay must be greater than zero")]
    ZeroBase,
    #[error("backoff factor must be a finite number >= 1.0, got {0}")]
    InvalidFactor(f64),
    #[error("backoff cap ({cap:?}) must not be smaller than the base delay ({base:?})")]
    CapBelowBase { base: Duration, cap: Duration },
}

/// Delay before retry round `n`: a random point in `[0, ceiling(n)]`, where
/// the ceiling grows from `base` by `factor` per round up to `cap`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    factor: f64,
    cap: Duration,
}

impl Default for Backoff {
    /// 1s, 2s, 4s, ... capped at 60s.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    pub fn try_new(base: Duration, factor: f64, cap: Duration) -> Result<Self, BackoffError> {
        if base.is_zero() {
            return Err(BackoffError::ZeroBase);
        }
        // `is_finite` also rejects NaN, which no comparison would catch.
        if !factor.is_finite() || factor < 1.0 {
            return Err(BackoffError::InvalidFactor(factor));
        }
        if cap < base {
            return Err(BackoffError::CapBelowBase { base, cap });
        }
        Ok(Self { base, factor, cap })
    }

    pub fn base(&self) -> Duration {
        self.base
    }

    pub fn factor(&self) -> f64 {
        self.factor
    }

    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The largest delay for retry `round` (1-based; 0 is treated as 1):
    /// `min(cap, base * factor^(round-1))`.
    pub fn ceiling(&self, round: u32) -> Duration {
        let exponent = round.saturating_sub(1);
        if exponent == 0 {
            // Exact, with no float round trip.
            return self.base;
        }
        // Huge rounds make this +inf, which `try_from_secs_f64` rejects
        // rather than panicking; the cap applies either way.
        let secs = self.base.as_secs_f64() * self.factor.powf(f64::from(exponent));
        Duration::try_from_secs_f64(secs).map_or(self.cap, |d| d.min(self.cap))
    }

    /// Full jitter: uniform in `[0, ceiling(round)]` at nanosecond
    /// granularity. Spreading retries over the whole range keeps clients that
    /// failed together from retrying together.
    pub fn delay(&self, round: u32, rng: &mut fastrand::Rng) -> Duration {
        let nanos = rng.u128(0..=self.ceiling(round).as_nanos());
        // `nanos` came from a Duration, so whole seconds fit in u64.
        let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
        let sub = (nanos % NANOS_PER_SEC) as u32; // < 1e9, fits
        Duration::new(secs, sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn default_ceilings_double_up_to_the_cap() {
        let b = Backoff::default();
        let got: Vec<u64> = (1..=9).map(|r| b.ceiling(r).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.ceiling(1), secs(1));
        assert_eq!(b.ceiling(6), secs(32));
        assert_eq!(b.ceiling(7), secs(60));
    }

    #[test]
    fn default_matches_try_new() {
        assert_eq!(
            Backoff::try_new(secs(1), 2.0, secs(60)),
            Ok(Backoff::default())
        );
    }

    #[test]
    fn round_zero_is_treated_as_round_one() {
        assert_eq!(Backoff::default().ceiling(0), secs(1));
    }

    #[test]
    fn huge_rounds_do_not_overflow() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(u32::MAX), secs(60));
        assert_eq!(b.ceiling(1_000), secs(60));
        let wide = Backoff::try_new(Duration::from_nanos(1), 1e300, Duration::MAX).unwrap();
        assert_eq!(wide.ceiling(u32::MAX), Duration::MAX);
        let mut rng = fastrand::Rng::with_seed(1);
        assert!(wide.delay(u32::MAX, &mut rng) <= Duration::MAX);
        assert!(b.delay(u32::MAX, &mut rng) <= secs(60));
    }

    #[test]
    fn factor_one_is_constant() {
        let b = Backoff::try_new(Duration::from_millis(250), 1.0, secs(10)).unwrap();
        for r in [1, 2, 10, u32::MAX] {
            assert_eq!(b.ceiling(r), Duration::from_millis(250));
        }
    }

    #[test]
    fn fractional_factor_grows_and_caps() {
        let b =
            Backoff::try_new(Duration::from_millis(100), 1.5, Duration::from_millis(300)).unwrap();
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(150));
        assert_eq!(b.ceiling(3), Duration::from_millis(225));
        assert_eq!(b.ceiling(4), Duration::from_millis(300));
    }

    #[test]
    fn cap_equal_to_base_is_allowed() {
        let b = Backoff::try_new(secs(5), 3.0, secs(5)).unwrap();
        assert_eq!(b.ceiling(1), secs(5));
        assert_eq!(b.ceiling(4), secs(5));
    }

    #[test]
    fn constructor_rejections() {
        assert_eq!(
            Backoff::try_new(Duration::ZERO, 2.0, secs(60)),
            Err(BackoffError::ZeroBase)
        );
        for bad in [0.999, 0.0, -2.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = Backoff::try_new(secs(1), bad, secs(60)).unwrap_err();
            assert!(
                matches!(err, BackoffError::InvalidFactor(_)),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(
            Backoff::try_new(secs(2), 2.0, secs(1)),
            Err(BackoffError::CapBelowBase {
                base: secs(2),
                cap: secs(1)
            })
        );
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        assert_eq!(
            BackoffError::ZeroBase.to_string(),
            "backoff base delay must be greater than zero"
        );
        assert!(
            BackoffError::InvalidFactor(0.5)
                .to_string()
                .contains(">= 1.0, got 0.5")
        );
        let cap = BackoffError::CapBelowBase {
            base: secs(2),
            cap: secs(1),
        }
        .to_string();
        assert!(cap.contains("1s") && cap.contains("2s"), "{cap}");
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff::default();
        let mut rng = fastrand::Rng::with_seed(42);
        for round in 0..=12 {
            let ceiling = b.ceiling(round);
            for _ in 0..2_000 {
                assert!(b.delay(round, &mut rng) <= ceiling);
            }
        }
    }

    #[test]
    fn jitter_spreads_over_the_whole_range() {
        let b = Backoff::default();
        let mut rng = fastrand::Rng::with_seed(0xC0FFEE);
        let ceiling = b.ceiling(4).as_secs_f64(); // 8s
        let n = 20_000;
        let draws: Vec<f64> = (0..n).map(|_| b.delay(4, &mut rng).as_secs_f64()).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        // Uniform on [0, 8]: mean 4, sd of the mean ~0.016s.
        assert!((mean - ceiling / 2.0).abs() < 0.1, "mean {mean}");
        let min = draws.iter().copied().fold(f64::INFINITY, f64::min);
        let max = draws.iter().copied().fold(0.0, f64::max);
        assert!(min < ceiling * 0.01, "min {min}");
        assert!(max > ceiling * 0.99, "max {max}");
        // Finer than whole milliseconds, too.
        assert!(draws.iter().any(|d| (d * 1e3).fract() != 0.0));
    }

    #[test]
    fn seeded_jitter_is_deterministic() {
        let b = Backoff::default();
        let mut a = fastrand::Rng::with_seed(9);
        let mut c = fastrand::Rng::with_seed(9);
        for r in 1..20 {
            assert_eq!(b.delay(r, &mut a), b.delay(r, &mut c));
        }
    }
}
