//! A circuit breaker per provider, fed by classified delivery outcomes.
//!
//! Closed admits everything and watches outcomes; Open admits nothing until a
//! cooldown ends; then HalfOpen lets a few probes through, whose results close
//! the breaker or reopen it with a longer cooldown. Time is always passed in,
//! so the breaker never reads a clock and tests never sleep.

use std::time::Duration;

use tokio::time::Instant;

use super::window::OutcomeWindow;

/// Stand-in for "forever" when `now + cooldown` cannot be represented.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// How many recent outcomes the ratio rule looks at.
    pub window_size: usize,
    /// The ratio rule waits for this many outcomes, so a handful of early
    /// failures cannot open the breaker.
    pub min_samples: usize,
    /// Open when at least this share of the window failed.
    pub failure_ratio: f64,
    /// Open at once after this many consecutive *unreachable* failures
    /// (connection error or timeout): no need to wait for a ratio when the
    /// provider is plainly gone.
    pub consecutive_failures: u32,
    /// First cooldown after opening; doubles after each failed probe.
    pub cooldown_min: Duration,
    /// Ceiling for the doubling cooldown.
    pub cooldown_max: Duration,
    /// Concurrent probes allowed while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window_size: 500,
            min_samples: 50,
            failure_ratio: 0.8,
            consecutive_failures: 5,
            cooldown_min: Duration::from_secs(1),
            cooldown_max: Duration::from_secs(60),
            half_open_probes: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BreakerConfigError {
    #[error("breaker failure_ratio must be greater than 0 and at most 1, got {0}")]
    FailureRatio(f64),
    #[error("breaker window_size must be at least 1")]
    WindowSize,
    #[error(
        "breaker min_samples must be between 1 and window_size ({window_size}), got {min_samples}"
    )]
    MinSamples {
        min_samples: usize,
        window_size: usize,
    },
    #[error("breaker consecutive_failures must be at least 1")]
    ConsecutiveFailures,
    #[error("breaker cooldown_min must be greater than zero")]
    CooldownMin,
    #[error("breaker cooldown_max ({max:?}) must not be smaller than cooldown_min ({min:?})")]
    CooldownMax { min: Duration, max: Duration },
    #[error("breaker half_open_probes must be at least 1")]
    HalfOpenProbes,
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        // Written as a positive range check so NaN fails it too.
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(BreakerConfigError::FailureRatio(self.failure_ratio));
        }
        if self.window_size == 0 {
            return Err(BreakerConfigError::WindowSize);
        }
        if !(1..=self.window_size).contains(&self.min_samples) {
            return Err(BreakerConfigError::MinSamples {
                min_samples: self.min_samples,
                window_size: self.window_size,
            });
        }
        if self.consecutive_failures == 0 {
            return Err(BreakerConfigError::ConsecutiveFailures);
        }
        if self.cooldown_min.is_zero() {
            return Err(BreakerConfigError::CooldownMin);
        }
        if self.cooldown_max < self.cooldown_min {
            return Err(BreakerConfigError::CooldownMax {
                min: self.cooldown_min,
                max: self.cooldown_max,
            });
        }
        if self.half_open_probes == 0 {
            return Err(BreakerConfigError::HalfOpenProbes);
        }
        Ok(())
    }

    /// Forces out-of-range values into range, so a config that skipped
    /// [`validate`](Self::validate) can neither panic nor wedge the breaker
    /// (zero probes would leave it half-open forever).
    fn clamped(mut self) -> Self {
        self.failure_ratio = if self.failure_ratio > 0.0 {
            self.failure_ratio.min(1.0)
        } else {
            1.0 // NaN or <= 0: the most conservative rule
        };
        self.window_size = self.window_size.max(1);
        self.min_samples = self.min_samples.clamp(1, self.window_size);
        self.consecutive_failures = self.consecutive_failures.max(1);
        self.cooldown_max = self.cooldown_max.max(self.cooldown_min);
        self.half_open_probes = self.half_open_probes.max(1);
        self
    }
}

/// What metrics and status pages show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// A classified delivery outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Success,
    /// `unreachable`: no answer at all (connection error, timeout), as opposed
    /// to an answer that was an error (such as a 5xx).
    Failure {
        unreachable: bool,
    },
}

/// Leave to make one attempt. Hand it back through exactly one of
/// [`Breaker::record`] or [`Breaker::cancel`]; a dropped probe permit holds
/// its half-open slot until the breaker next changes state.
#[must_use]
#[derive(Debug)]
pub struct Permit {
    probe: bool,
    /// The breaker's generation when issued: results of permits from an
    /// earlier phase are stragglers and must not drive transitions.
    generation: u64,
}

impl Permit {
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probes_out: u32 },
}

#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    phase: Phase,
    /// Bumped on every phase change; see [`Permit::generation`].
    generation: u64,
    window: OutcomeWindow,
    /// Consecutive unreachable failures while closed.
    consecutive: u32,
    /// Length of the next opening.
    cooldown: Duration,
    /// From a 429 Retry-After: admit nothing before this.
    paused_until: Option<Instant>,
}

impl Breaker {
    /// A closed breaker. `cfg` should have passed
    /// [`BreakerConfig::validate`]; out-of-range values are clamped.
    pub fn new(cfg: BreakerConfig) -> Self {
        let cfg = cfg.clamped();
        Self {
            window: OutcomeWindow::new(cfg.window_size),
            cooldown: cfg.cooldown_min,
            cfg,
            phase: Phase::Closed,
            generation: 0,
            consecutive: 0,
            paused_until: None,
        }
    }

    /// Asks to make one attempt. `None` means don't send now; see
    /// [`admits_at`](Self::admits_at) for when to ask again.
    #[must_use]
    pub fn try_acquire(&mut self, now: Instant) -> Option<Permit> {
        if self.is_paused(now) {
            return None;
        }
        if let Phase::Open { until } = self.phase
            && now >= until
        {
            self.enter(Phase::HalfOpen { probes_out: 0 });
        }
        let generation = self.generation;
        match &mut self.phase {
            Phase::Closed => Some(Permit {
                probe: false,
                generation,
            }),
            Phase::Open { .. } => None,
            Phase::HalfOpen { probes_out } => {
                if *probes_out < self.cfg.half_open_probes {
                    *probes_out += 1;
                    Some(Permit {
                        probe: true,
                        generation,
                    })
                } else {
                    None
                }
            }
        }
    }

    /// Reports the outcome of the attempt `permit` allowed.
    pub fn record(&mut self, permit: Permit, signal: Signal, now: Instant) {
        let failed = matches!(signal, Signal::Failure { .. });
        let current = permit.generation == self.generation;
        match self.phase {
            Phase::Closed if current => self.record_closed(signal, now),
            Phase::HalfOpen { .. } if current && permit.probe => {
                self.window.record(failed);
                if failed {
                    self.cooldown = self.cooldown.saturating_mul(2).min(self.cfg.cooldown_max);
                    self.open(now);
                } else {
                    self.close();
                }
            }
            // A straggler from before the probe that closed the breaker: the
            // probe is newer evidence, and the window was cleared to start
            // afresh from it.
            Phase::Closed => {}
            // A straggler sent before the breaker opened (or a probe from an
            // earlier half-open round): worth counting, not worth acting on.
            Phase::Open { .. } | Phase::HalfOpen { .. } => self.window.record(failed),
        }
    }

    /// The attempt was abandoned without an outcome: frees its probe slot,
    /// records nothing.
    pub fn cancel(&mut self, permit: Permit) {
        if permit.probe
            && permit.generation == self.generation
            && let Phase::HalfOpen { probes_out } = &mut self.phase
        {
            *probes_out = probes_out.saturating_sub(1);
        }
    }

    /// A 429 with Retry-After: admit nothing before `until`. Not a failure
    /// (the provider is alive, just busy), so state and counters stay as they
    /// are. The later of two pauses wins.
    pub fn pause_until(&mut self, until: Instant) {
        self.paused_until = self.paused_until.max(Some(until));
    }

    /// The end of a pause still in effect at `now`.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|&until| until > now)
    }

    /// The state as of `now`: an Open breaker whose cooldown has passed
    /// reports HalfOpen, since the next request will find it so.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// `None` if [`try_acquire`](Self::try_acquire) would admit at `now`;
    /// otherwise the earliest instant worth asking again. While half-open
    /// with every probe slot taken that instant is unknown (it depends on
    /// the probes), so it is a re-check hint `now + cooldown_min`.
    pub fn admits_at(&self, now: Instant) -> Option<Instant> {
        let blocked = match self.phase {
            Phase::Open { until } if now < until => Some(until),
            Phase::HalfOpen { probes_out } if probes_out >= self.cfg.half_open_probes => {
                Some(later(now, self.cfg.cooldown_min))
            }
            // Closed, half-open with a free slot, or open with its cooldown
            // over (the next acquire makes it half-open with every slot free).
            _ => None,
        };
        // `None < Some(_)`, so this is the later of the two blocks, if any.
        blocked.max(self.paused_until(now))
    }

    pub fn window(&self) -> &OutcomeWindow {
        &self.window
    }

    fn is_paused(&self, now: Instant) -> bool {
        self.paused_until(now).is_some()
    }

    fn record_closed(&mut self, signal: Signal, now: Instant) {
        match signal {
            Signal::Success => {
                self.window.record(false);
                self.consecutive = 0;
            }
            Signal::Failure { unreachable } => {
                self.window.record(true);
                // A provider that answers, even with a 5xx, is alive; the
                // ratio rule covers one that answers nothing but errors.
                self.consecutive = if unreachable {
                    self.consecutive.saturating_add(1)
                } else {
                    0
                };
            }
        }
        let dead = self.consecutive >= self.cfg.consecutive_failures;
        let failing = self.window.len() >= self.cfg.min_samples
            && self.window.failure_ratio() >= self.cfg.failure_ratio;
        if dead || failing {
            self.open(now);
        }
    }

    fn open(&mut self, now: Instant) {
        self.enter(Phase::Open {
            until: later(now, self.cooldown),
        });
    }

    fn close(&mut self) {
        self.enter(Phase::Closed);
        self.window.clear();
        self.consecutive = 0;
        self.cooldown = self.cfg.cooldown_min;
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.generation = self.generation.wrapping_add(1);
    }
}

/// `now + d`, saturating at a far-future instant instead of panicking.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::clock;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);
    const UNREACHABLE: Signal = Signal::Failure { unreachable: true };
    const ANSWERED: Signal = Signal::Failure { unreachable: false };

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig::default())
    }

    fn breaker_with(f: impl FnOnce(&mut BreakerConfig)) -> Breaker {
        let mut cfg = BreakerConfig::default();
        f(&mut cfg);
        cfg.validate().expect("test config is valid");
        Breaker::new(cfg)
    }

    fn acquire(b: &mut Breaker, now: Instant) -> Permit {
        b.try_acquire(now).expect("breaker should admit")
    }

    /// One full attempt: acquire, then record `signal`.
    fn attempt(b: &mut Breaker, signal: Signal, now: Instant) {
        let p = acquire(b, now);
        b.record(p, signal, now);
    }

    /// Opens a fresh (closed) breaker at `now` via the consecutive rule.
    fn trip(b: &mut Breaker, now: Instant) {
        for _ in 0..b.cfg.consecutive_failures {
            attempt(b, UNREACHABLE, now);
        }
        assert_eq!(b.state(now), BreakerState::Open);
    }

    // --- config ---

    #[test]
    fn default_config_is_valid_and_as_documented() {
        let c = BreakerConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.window_size, 500);
        assert_eq!(c.min_samples, 50);
        assert_eq!(c.failure_ratio, 0.8);
        assert_eq!(c.consecutive_failures, 5);
        assert_eq!(c.cooldown_min, SEC);
        assert_eq!(c.cooldown_max, 60 * SEC);
        assert_eq!(c.half_open_probes, 1);
    }

    #[test]
    fn validate_rejects_each_bad_field() {
        fn check(f: impl FnOnce(&mut BreakerConfig), want: BreakerConfigError) {
            let mut c = BreakerConfig::default();
            f(&mut c);
            assert_eq!(c.validate(), Err(want));
        }
        for r in [0.0, -0.1, 1.01] {
            check(|c| c.failure_ratio = r, BreakerConfigError::FailureRatio(r));
        }
        let nan = BreakerConfig {
            failure_ratio: f64::NAN,
            ..BreakerConfig::default()
        };
        assert!(matches!(
            nan.validate(),
            Err(BreakerConfigError::FailureRatio(_))
        ));
        check(|c| c.window_size = 0, BreakerConfigError::WindowSize);
        check(
            |c| c.min_samples = 0,
            BreakerConfigError::MinSamples {
                min_samples: 0,
                window_size: 500,
            },
        );
        check(
            |c| c.min_samples = 501,
            BreakerConfigError::MinSamples {
                min_samples: 501,
                window_size: 500,
            },
        );
        check(
            |c| c.consecutive_failures = 0,
            BreakerConfigError::ConsecutiveFailures,
        );
        check(
            |c| c.cooldown_min = Duration::ZERO,
            BreakerConfigError::CooldownMin,
        );
        check(
            |c| c.cooldown_max = 500 * MS,
            BreakerConfigError::CooldownMax {
                min: SEC,
                max: 500 * MS,
            },
        );
        check(
            |c| c.half_open_probes = 0,
            BreakerConfigError::HalfOpenProbes,
        );
    }

    #[test]
    fn validate_accepts_edge_values() {
        let c = BreakerConfig {
            window_size: 1,
            min_samples: 1,
            failure_ratio: 1.0,
            consecutive_failures: 1,
            cooldown_min: MS,
            cooldown_max: MS,
            half_open_probes: 1,
        };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn config_errors_name_the_field() {
        let msg = BreakerConfigError::MinSamples {
            min_samples: 0,
            window_size: 10,
        }
        .to_string();
        assert!(msg.contains("min_samples") && msg.contains("(10)"), "{msg}");
        let msg = BreakerConfigError::FailureRatio(1.5).to_string();
        assert!(
            msg.contains("failure_ratio") && msg.contains("1.5"),
            "{msg}"
        );
    }

    #[test]
    fn unvalidated_config_is_clamped_not_wedged() {
        let now = clock::instant();
        let mut b = Breaker::new(BreakerConfig {
            window_size: 0,
            min_samples: 0,
            failure_ratio: f64::NAN,
            consecutive_failures: 0,
            cooldown_min: SEC,
            cooldown_max: Duration::ZERO,
            half_open_probes: 0,
        });
        assert_eq!(b.cfg.validate(), Ok(()));
        // A success must not open it (ratio NaN became 1.0).
        attempt(&mut b, Signal::Success, now);
        assert_eq!(b.state(now), BreakerState::Closed);
        attempt(&mut b, UNREACHABLE, now);
        assert_eq!(b.state(now), BreakerState::Open);
        // Zero probes became one, so half-open still admits.
        assert!(acquire(&mut b, now + SEC).is_probe());
    }

    // --- closed ---

    #[test]
    fn closed_admits_everything() {
        let now = clock::instant();
        let mut b = breaker();
        assert_eq!(b.state(now), BreakerState::Closed);
        assert_eq!(b.admits_at(now), None);
        let permits: Vec<Permit> = (0..1_000).map(|_| acquire(&mut b, now)).collect();
        assert!(permits.iter().all(|p| !p.is_probe()));
        for p in permits {
            b.record(p, Signal::Success, now);
        }
        assert_eq!(b.window().len(), 500);
        assert_eq!(b.state(now), BreakerState::Closed);
    }

    #[test]
    fn consecutive_unreachable_failures_open() {
        let now = clock::instant();
        let mut b = breaker();
        for _ in 0..4 {
            attempt(&mut b, UNREACHABLE, now);
            assert_eq!(b.state(now), BreakerState::Closed);
        }
        attempt(&mut b, UNREACHABLE, now);
        assert_eq!(b.state(now), BreakerState::Open);
        assert!(b.try_acquire(now).is_none());
    }

    #[test]
    fn success_or_an_answer_resets_the_consecutive_count() {
        let now = clock::instant();
        for interruption in [Signal::Success, ANSWERED] {
            let mut b = breaker();
            for _ in 0..4 {
                attempt(&mut b, UNREACHABLE, now);
            }
            attempt(&mut b, interruption, now);
            for _ in 0..4 {
                attempt(&mut b, UNREACHABLE, now);
            }
            assert_eq!(b.state(now), BreakerState::Closed, "{interruption:?}");
            attempt(&mut b, UNREACHABLE, now);
            assert_eq!(b.state(now), BreakerState::Open, "{interruption:?}");
        }
    }

    #[test]
    fn ratio_rule_opens_once_min_samples_reached() {
        let now = clock::instant();
        let mut b = breaker();
        for i in 1..50 {
            attempt(&mut b, ANSWERED, now);
            assert_eq!(b.state(now), BreakerState::Closed, "after {i}");
        }
        attempt(&mut b, ANSWERED, now);
        assert_eq!(b.state(now), BreakerState::Open);
        assert_eq!(b.window().len(), 50);
    }

    #[test]
    fn ratio_rule_threshold_is_inclusive() {
        let now = clock::instant();
        // 4 failures then 1 success, repeated: exactly 0.8 at 50 samples.
        let mut b = breaker();
        for i in 0..50 {
            let s = if i % 5 == 4 {
                Signal::Success
            } else {
                ANSWERED
            };
            attempt(&mut b, s, now);
        }
        assert_eq!(b.state(now), BreakerState::Open);

        // Just under: 3 failures then 1 success stays closed forever.
        let mut b = breaker();
        for i in 0..5_000 {
            let s = if i % 4 == 3 {
                Signal::Success
            } else {
                ANSWERED
            };
            attempt(&mut b, s, now);
        }
        assert_eq!(b.state(now), BreakerState::Closed);
    }

    // --- the contract's scenarios ---

    #[test]
    fn half_answered_failures_never_open() {
        // The contract's providers answer HTTP 500 half the time at random.
        let mut rng = fastrand::Rng::with_seed(0xB4EA_4E45);
        let mut b = breaker();
        let mut now = clock::instant();
        let mut failures = 0u32;
        for i in 0..100_000 {
            let p = b
                .try_acquire(now)
                .unwrap_or_else(|| panic!("refused at attempt {i}"));
            let signal = if rng.bool() {
                failures += 1;
                ANSWERED
            } else {
                Signal::Success
            };
            b.record(p, signal, now);
            assert_eq!(b.state(now), BreakerState::Closed, "opened at attempt {i}");
            now += MS;
        }
        // The simulation really was ~50% failures.
        assert!((49_000..51_000).contains(&failures), "{failures}");
    }

    #[test]
    fn dead_provider_opens_within_consecutive_failures_requests() {
        let mut now = clock::instant();
        let mut b = breaker();
        // Healthy history first: the consecutive rule doesn't need the window.
        for _ in 0..1_000 {
            attempt(&mut b, Signal::Success, now);
        }
        let mut requests = 0;
        while let Some(p) = b.try_acquire(now) {
            requests += 1;
            b.record(p, UNREACHABLE, now);
            now += MS;
            assert!(requests <= 5, "still admitting after {requests} failures");
        }
        assert_eq!(requests, 5);
        assert_eq!(b.state(now), BreakerState::Open);
    }

    #[test]
    fn provider_answering_only_errors_opens_via_ratio() {
        let now = clock::instant();
        // From fresh: at exactly min_samples.
        let mut b = breaker();
        let mut n = 0;
        while let Some(p) = b.try_acquire(now) {
            n += 1;
            b.record(p, ANSWERED, now);
        }
        assert_eq!(n, 50);

        // After a full window of successes: once 80% of 500 have failed.
        let mut b = breaker();
        for _ in 0..500 {
            attempt(&mut b, Signal::Success, now);
        }
        let mut n = 0;
        while let Some(p) = b.try_acquire(now) {
            n += 1;
            b.record(p, ANSWERED, now);
        }
        assert_eq!(n, 400);
    }

    // --- open and half-open ---

    #[test]
    fn open_refuses_until_cooldown_then_goes_half_open() {
        let t0 = clock::instant();
        let mut b = breaker();
        trip(&mut b, t0);
        for dt in [Duration::ZERO, MS, 999 * MS, SEC - Duration::from_nanos(1)] {
            assert!(b.try_acquire(t0 + dt).is_none(), "{dt:?}");
            assert_eq!(b.state(t0 + dt), BreakerState::Open);
            assert_eq!(b.admits_at(t0 + dt), Some(t0 + SEC));
        }
        // State reports half-open lazily, before anything acquires.
        assert_eq!(b.state(t0 + SEC), BreakerState::HalfOpen);
        assert_eq!(b.admits_at(t0 + SEC), None);
        let p = acquire(&mut b, t0 + SEC);
        assert!(p.is_probe());
        assert_eq!(b.state(t0 + SEC), BreakerState::HalfOpen);
        b.cancel(p);
    }

    #[test]
    fn half_open_admits_exactly_the_configured_probes() {
        for probes in [1, 3] {
            let t0 = clock::instant();
            let mut b = breaker_with(|c| c.half_open_probes = probes);
            trip(&mut b, t0);
            let t1 = t0 + 2 * SEC;
            let permits: Vec<Permit> = (0..probes).map(|_| acquire(&mut b, t1)).collect();
            assert!(permits.iter().all(Permit::is_probe));
            assert!(b.try_acquire(t1).is_none());
            assert!(b.try_acquire(t1 + 10 * SEC).is_none());
            assert_eq!(b.state(t1), BreakerState::HalfOpen);
            for p in permits {
                b.cancel(p);
            }
        }
    }

    #[test]
    fn probe_success_closes_and_clears_the_window() {
        let t0 = clock::instant();
        let mut b = breaker();
        attempt(&mut b, Signal::Success, t0);
        trip(&mut b, t0);
        assert_eq!(b.window().len(), 6);
        let t1 = t0 + SEC;
        let p = acquire(&mut b, t1);
        b.record(p, Signal::Success, t1);
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert!(b.window().is_empty());
        assert_eq!(b.admits_at(t1), None);
        // Consecutive count was reset: it takes a full 5 again.
        for _ in 0..4 {
            attempt(&mut b, UNREACHABLE, t1);
        }
        assert_eq!(b.state(t1), BreakerState::Closed);
        attempt(&mut b, UNREACHABLE, t1);
        assert_eq!(b.state(t1), BreakerState::Open);
    }

    #[test]
    fn probe_failure_reopens_with_doubled_cooldown() {
        let t0 = clock::instant();
        let mut b = breaker();
        trip(&mut b, t0);
        let t1 = t0 + SEC;
        let p = acquire(&mut b, t1);
        // An answered failure counts for a probe too.
        b.record(p, ANSWERED, t1);
        assert_eq!(b.state(t1), BreakerState::Open);
        assert_eq!(b.admits_at(t1), Some(t1 + 2 * SEC));
        assert!(b.try_acquire(t1 + 2 * SEC - MS).is_none());
        assert!(acquire(&mut b, t1 + 2 * SEC).is_probe());
    }

    #[test]
    fn cooldown_doubles_up_to_the_cap() {
        let mut now = clock::instant();
        let mut b = breaker();
        trip(&mut b, now);
        let mut cooldowns = vec![];
        for _ in 0..10 {
            let until = b.admits_at(now).expect("open");
            cooldowns.push((until - now).as_secs());
            now = until;
            attempt(&mut b, UNREACHABLE, now);
        }
        assert_eq!(cooldowns, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
    }

    #[test]
    fn cooldown_resets_after_closing() {
        let mut now = clock::instant();
        let mut b = breaker();
        trip(&mut b, now);
        for _ in 0..4 {
            now = b.admits_at(now).expect("open");
            attempt(&mut b, UNREACHABLE, now);
        }
        assert_eq!(b.admits_at(now), Some(now + 16 * SEC));
        now += 16 * SEC;
        attempt(&mut b, Signal::Success, now);
        assert_eq!(b.state(now), BreakerState::Closed);
        trip(&mut b, now);
        assert_eq!(b.admits_at(now), Some(now + SEC));
    }

    #[test]
    fn huge_cooldown_does_not_panic() {
        let now = clock::instant();
        let mut b = breaker_with(|c| {
            c.cooldown_min = Duration::MAX;
            c.cooldown_max = Duration::MAX;
        });
        trip(&mut b, now);
        assert!(b.admits_at(now).is_some_and(|t| t > now));
        assert!(b.try_acquire(now + 3_600 * SEC).is_none());
    }

    // --- pause (429 Retry-After) ---

    #[test]
    fn pause_blocks_then_lifts_without_changing_state() {
        let t0 = clock::instant();
        let mut b = breaker();
        attempt(&mut b, ANSWERED, t0);
        b.pause_until(t0 + 5 * SEC);
        for dt in [Duration::ZERO, SEC, 5 * SEC - MS] {
            assert!(b.try_acquire(t0 + dt).is_none());
            assert_eq!(b.state(t0 + dt), BreakerState::Closed);
            assert_eq!(b.admits_at(t0 + dt), Some(t0 + 5 * SEC));
            assert_eq!(b.paused_until(t0 + dt), Some(t0 + 5 * SEC));
        }
        // Nothing counted as a failure.
        assert_eq!((b.window().len(), b.window().failures()), (1, 1));
        let t1 = t0 + 5 * SEC;
        assert_eq!(b.admits_at(t1), None);
        assert_eq!(b.paused_until(t1), None);
        assert!(!acquire(&mut b, t1).is_probe());
        assert_eq!(b.state(t1), BreakerState::Closed);
    }

    #[test]
    fn the_later_pause_wins() {
        let t0 = clock::instant();
        let mut b = breaker();
        b.pause_until(t0 + 10 * SEC);
        b.pause_until(t0 + 2 * SEC);
        assert_eq!(b.admits_at(t0), Some(t0 + 10 * SEC));
        assert!(b.try_acquire(t0 + 5 * SEC).is_none());
        b.pause_until(t0 + 20 * SEC);
        assert_eq!(b.admits_at(t0), Some(t0 + 20 * SEC));
        assert!(b.try_acquire(t0 + 15 * SEC).is_none());
        assert!(b.try_acquire(t0 + 20 * SEC).is_some());
    }

    #[test]
    fn pause_and_cooldown_combine_to_the_later() {
        let t0 = clock::instant();
        let mut b = breaker();
        trip(&mut b, t0); // open until t0 + 1s
        b.pause_until(t0 + 3 * SEC);
        assert_eq!(b.admits_at(t0), Some(t0 + 3 * SEC));
        assert_eq!(b.state(t0 + 2 * SEC), BreakerState::HalfOpen);
        assert!(b.try_acquire(t0 + 2 * SEC).is_none());
        assert!(acquire(&mut b, t0 + 3 * SEC).is_probe());

        let mut b = breaker();
        trip(&mut b, t0);
        b.pause_until(t0 + 500 * MS);
        assert_eq!(b.admits_at(t0), Some(t0 + SEC));
    }

    #[test]
    fn pause_in_the_past_is_no_pause() {
        let t0 = clock::instant();
        let mut b = breaker();
        b.pause_until(t0);
        assert_eq!(b.admits_at(t0), None);
        assert!(b.try_acquire(t0).is_some());
    }

    // --- cancel ---

    #[test]
    fn cancel_frees_a_probe_slot_and_records_nothing() {
        let t0 = clock::instant();
        let mut b = breaker();
        trip(&mut b, t0);
        let t1 = t0 + SEC;
        let p = acquire(&mut b, t1);
        assert!(b.try_acquire(t1).is_none());
        let len = b.window().len();
        b.cancel(p);
        assert_eq!(b.window().len(), len);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert!(acquire(&mut b, t1).is_probe());
    }

    #[test]
    fn cancel_of_a_closed_permit_changes_nothing() {
        let now = clock::instant();
        let mut b = breaker();
        let p = acquire(&mut b, now);
        b.cancel(p);
        assert!(b.window().is_empty());
        assert_eq!(b.state(now), BreakerState::Closed);
    }

    #[test]
    fn cancelling_an_old_probe_frees_no_new_slot() {
        let t0 = clock::instant();
        let mut b = breaker_with(|c| c.half_open_probes = 2);
        trip(&mut b, t0);
        let t1 = t0 + SEC;
        let a = acquire(&mut b, t1);
        let old = acquire(&mut b, t1);
        b.record(a, UNREACHABLE, t1); // reopens for 2s
        let t2 = t1 + 2 * SEC;
        let x = acquire(&mut b, t2);
        let y = acquire(&mut b, t2);
        assert!(b.try_acquire(t2).is_none());
        b.cancel(old);
        assert!(b.try_acquire(t2).is_none());
        b.cancel(x);
        b.cancel(y);
    }

    // --- stragglers ---

    #[test]
    fn stragglers_are_counted_but_do_not_change_state() {
        let t0 = clock::instant();
        let mut b = breaker();
        let early: Vec<Permit> = (0..4).map(|_| acquire(&mut b, t0)).collect();
        trip(&mut b, t0);
        let mut early = early.into_iter();

        // While open: a straggler success neither closes nor shortens.
        let len = b.window().len();
        b.record(early.next().unwrap(), Signal::Success, t0 + MS);
        assert_eq!(b.window().len(), len + 1);
        assert_eq!(b.state(t0 + MS), BreakerState::Open);
        assert_eq!(b.admits_at(t0 + MS), Some(t0 + SEC));

        // While half-open: a straggler success doesn't close, a straggler
        // failure doesn't reopen, and neither frees or takes the probe slot.
        let t1 = t0 + SEC;
        let probe = acquire(&mut b, t1);
        b.record(early.next().unwrap(), Signal::Success, t1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        b.record(early.next().unwrap(), UNREACHABLE, t1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert!(b.try_acquire(t1).is_none());
        assert_eq!(b.window().len(), len + 3);

        // Once the probe closes it, a straggler from before is ignored: the
        // window starts afresh from the probe's evidence.
        b.record(probe, Signal::Success, t1);
        assert_eq!(b.state(t1), BreakerState::Closed);
        b.record(early.next().unwrap(), UNREACHABLE, t1);
        assert!(b.window().is_empty());
        for _ in 0..4 {
            attempt(&mut b, UNREACHABLE, t1);
        }
        assert_eq!(b.state(t1), BreakerState::Closed);
    }

    #[test]
    fn late_result_of_a_sibling_probe_is_a_straggler() {
        let t0 = clock::instant();
        let mut b = breaker_with(|c| c.half_open_probes = 2);
        trip(&mut b, t0);
        let t1 = t0 + SEC;
        let a = acquire(&mut b, t1);
        let late = acquire(&mut b, t1);
        b.record(a, UNREACHABLE, t1);
        assert_eq!(b.state(t1), BreakerState::Open);
        b.record(late, Signal::Success, t1);
        assert_eq!(b.state(t1), BreakerState::Open);
        assert_eq!(b.admits_at(t1), Some(t1 + 2 * SEC));
    }

    // --- admits_at ---

    #[test]
    fn admits_at_in_every_state() {
        let t0 = clock::instant();
        let mut b = breaker();
        assert_eq!(b.admits_at(t0), None); // closed
        trip(&mut b, t0);
        assert_eq!(b.admits_at(t0), Some(t0 + SEC)); // open
        assert_eq!(b.admits_at(t0 + 5 * SEC), None); // cooldown over
        let t1 = t0 + 5 * SEC;
        let p = acquire(&mut b, t1);
        // Half-open, slots taken: a re-check hint one cooldown_min ahead.
        assert_eq!(b.admits_at(t1), Some(t1 + SEC));
        assert_eq!(b.admits_at(t1 + 7 * SEC), Some(t1 + 8 * SEC));
        b.cancel(p);
        assert_eq!(b.admits_at(t1), None); // half-open, slot free
    }
}
