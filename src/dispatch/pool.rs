//! The providers of each channel, with the health each one has shown.

use crate::resilience::clock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::router::pick_weighted;
use crate::domain::Channel;
use crate::provider::Provider;
use crate::resilience::breaker::{Breaker, BreakerConfig, BreakerState, Permit, Signal};
use crate::resilience::hedge::ChannelHedge;
use crate::resilience::in_flight::InFlightCap;
use crate::resilience::latency::{LATENCY_WINDOW, LatencyWindow};
use crate::resilience::rate::TokenBucket;

/// A round tries each provider at most once; the set of those tried is a
/// bit mask, which caps a channel at 64 providers.
pub const MAX_PROVIDERS_PER_CHANNEL: usize = 64;

/// One provider in a set. A clone is the same provider, health and all.
#[derive(Clone)]
pub struct ProviderSlot {
    pub provider: Arc<dyn Provider>,
    pub weight: u32,
    /// What a reload keeps of a provider whose target stays the same.
    health: Arc<SlotHealth>,
}

/// A provider's state beyond its settings: its breaker and window, the
/// requests it holds, its rate limit's bucket, and whether it is in
/// rotation. Shared by the slots of successive reloads.
struct SlotHealth {
    breaker: Mutex<Breaker>,
    in_flight: InFlightCap,
    /// Caps requests per second, when the provider has a rate limit.
    rate: Mutex<Option<TokenBucket>>,
    /// Whether `rate` holds a bucket: without one, no lock is taken.
    limited: AtomicBool,
    /// Cleared by an operator (`disable`): no new attempts.
    enabled: AtomicBool,
    /// Set when a reload removed or replaced the provider: rounds that
    /// still hold the old set start nothing new on it.
    retired: AtomicBool,
    /// How long its recent answered requests took: the health view's p50
    /// and p99, and the p90 a hedge waits for.
    latencies: Mutex<LatencyWindow>,
}

/// A provider's settings that a reload applies in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotSettings {
    pub weight: u32,
    pub max_in_flight: usize,
    /// Requests a second and burst, when rate-limited.
    pub rate: Option<(f64, u32)>,
}

impl ProviderSlot {
    pub fn new(
        provider: Arc<dyn Provider>,
        weight: u32,
        max_in_flight: usize,
        breaker: BreakerConfig,
    ) -> Self {
        Self {
            provider,
            weight,
            health: Arc::new(SlotHealth {
                breaker: Mutex::new(Breaker::new(breaker)),
                in_flight: InFlightCap::new(max_in_flight),
                rate: Mutex::new(None),
                limited: AtomicBool::new(false),
                enabled: AtomicBool::new(true),
                retired: AtomicBool::new(false),
                latencies: Mutex::new(LatencyWindow::new(LATENCY_WINDOW)),
            }),
        }
    }

    /// At most `rate` requests a second, `burst` at once.
    pub fn with_rate_limit(self, rate: f64, burst: u32) -> Self {
        *self.health.rate() = Some(TokenBucket::new(rate, burst, clock::instant()));
        self.health.limited.store(true, Ordering::Release);
        self
    }

    /// This provider's health (breaker, window, requests in flight, rate
    /// bucket) under `provider` (this one's, or a new build of it) with
    /// `settings`. The cap and the rate limit change for rounds under way
    /// too.
    pub fn reconfigured(&self, provider: Arc<dyn Provider>, settings: SlotSettings) -> Self {
        let health = &self.health;
        health.in_flight.resize(settings.max_in_flight);
        let mut rate = health.rate();
        let now = clock::instant();
        *rate = match (rate.take(), settings.rate) {
            (Some(mut bucket), Some((per_sec, burst))) => {
                bucket.set_limit(per_sec, burst, now);
                Some(bucket)
            }
            (None, Some((per_sec, burst))) => Some(TokenBucket::new(per_sec, burst, now)),
            (_, None) => None,
        };
        health.limited.store(rate.is_some(), Ordering::Release);
        drop(rate);
        Self {
            provider,
            weight: settings.weight,
            health: Arc::clone(health),
        }
    }

    /// Takes a request's token from the rate limit if one is free within
    /// `max_wait`, and says how long to wait before sending; `None` (and
    /// nothing taken) when no token is free in time.
    pub fn reserve(&self, max_wait: Duration) -> Option<Duration> {
        if !self.health.limited.load(Ordering::Acquire) {
            return Some(Duration::ZERO);
        }
        match self.health.rate().as_mut() {
            None => Some(Duration::ZERO),
            Some(bucket) => bucket.reserve(clock::instant(), max_wait),
        }
    }

    /// Waits for room under the provider's cap on requests in flight.
    pub async fn acquire_in_flight(&self) -> OwnedSemaphorePermit {
        self.health.in_flight.acquire().await
    }

    /// Room under the provider's cap on requests in flight, if there is
    /// some now.
    pub fn try_acquire_in_flight(&self) -> Option<OwnedSemaphorePermit> {
        self.health.in_flight.try_acquire()
    }

    /// Its cap on requests in flight.
    pub fn max_in_flight(&self) -> usize {
        self.health.in_flight.limit()
    }

    /// Whether an operator left it in rotation.
    pub fn enabled(&self) -> bool {
        self.health.enabled.load(Ordering::Relaxed)
    }

    pub(super) fn set_enabled(&self, enabled: bool) {
        self.health.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Takes it out of every set still held by rounds under way.
    pub(super) fn retire(&self) {
        self.health.retired.store(true, Ordering::Relaxed);
    }

    /// Whether new attempts may be offered to it (its breaker aside).
    fn in_rotation(&self) -> bool {
        self.enabled() && !self.health.retired.load(Ordering::Relaxed)
    }

    /// Whether `other` is this provider's health carried over by a reload.
    pub fn shares_health(&self, other: &ProviderSlot) -> bool {
        Arc::ptr_eq(&self.health, &other.health)
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        // The breaker's state stays consistent even if a holder panicked.
        self.health
            .breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Requests to this provider under way now.
    pub fn requests_in_flight(&self) -> usize {
        self.health.in_flight.held()
    }

    fn latencies(&self) -> MutexGuard<'_, LatencyWindow> {
        self.health
            .latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Notes how long an answered request to this provider took.
    pub fn record_latency(&self, took: Duration) {
        self.latencies().record(took);
    }

    /// The p50 and p99 of its recent answered requests, in milliseconds.
    pub fn latency_p50_p99(&self) -> [Option<u32>; 2] {
        self.latencies().percentiles_ms([50.0, 99.0])
    }

    /// How long a request to this provider is left alone before it is
    /// hedged; `None`: not hedged.
    pub fn hedge_delay(&self, hedge: ChannelHedge) -> Option<Duration> {
        hedge.delay(&self.latencies())
    }

    /// The breaker's state, and the window's samples and failures.
    pub fn health(&self) -> (BreakerState, usize, usize) {
        let breaker = self.breaker();
        let window = breaker.window();
        (
            breaker.state(clock::instant()),
            window.len(),
            window.failures(),
        )
    }
}

impl SlotHealth {
    fn rate(&self) -> MutexGuard<'_, Option<TokenBucket>> {
        self.rate.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Leave from a provider's breaker to make one attempt. Reporting the
/// outcome uses it up; dropping it unused (the attempt was abandoned, or its
/// task was cut short) hands the breaker's slot back, so a half-open breaker
/// never waits forever for a probe that will not report.
pub struct Admission<'a> {
    slot: &'a ProviderSlot,
    permit: Option<Permit>,
}

impl<'a> Admission<'a> {
    pub fn slot(&self) -> &'a ProviderSlot {
        self.slot
    }

    /// Feeds the outcome to the breaker; `pause` holds the provider off
    /// (a 429's Retry-After).
    pub fn record(mut self, signal: Signal, pause: Option<Duration>) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let now = clock::instant();
        let mut breaker = self.slot.breaker();
        breaker.record(permit, signal, now);
        if let Some(pause) = pause {
            breaker.pause_until(now + pause);
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.slot.breaker().cancel(permit);
        }
    }
}

/// The providers of one channel.
pub struct ChannelPool {
    channel: Channel,
    slots: Vec<ProviderSlot>,
}

/// A set of providers already tried in this round.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried(u64);

impl Tried {
    pub fn contains(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }
    pub fn insert(&mut self, index: usize) {
        self.0 |= 1 << index;
    }
}

impl ChannelPool {
    pub fn new(channel: Channel, slots: Vec<ProviderSlot>) -> Self {
        assert!(
            slots.len() <= MAX_PROVIDERS_PER_CHANNEL,
            "config validation caps providers per channel"
        );
        Self { channel, slots }
    }

    pub fn channel(&self) -> Channel {
        self.channel
    }

    pub fn slots(&self) -> &[ProviderSlot] {
        &self.slots
    }

    /// The providers that cannot carry `message`, as already tried.
    pub fn unable(&self, message: &crate::domain::Message) -> Tried {
        let mut tried = Tried::default();
        for (i, slot) in self.slots.iter().enumerate() {
            if !slot.provider.can_send(message) {
                tried.insert(i);
            }
        }
        tried
    }

    /// Whether some provider of the channel can carry `message`.
    pub fn can_send(&self, message: &crate::domain::Message) -> bool {
        self.slots.iter().any(|s| s.provider.can_send(message))
    }

    /// Weighted random choice among providers in rotation, not yet tried,
    /// whose breaker admits a request now. Marks the chosen one as tried.
    /// A disabled provider is passed over like an open breaker, without
    /// touching its breaker.
    pub fn pick(&self, tried: &mut Tried, rng: &mut fastrand::Rng) -> Option<Admission<'_>> {
        let now = clock::instant();
        // A breaker may refuse between the look and the acquire (another task
        // took the last probe); then that provider is skipped for this round.
        for _ in 0..self.slots.len() {
            let candidates = self
                .slots
                .iter()
                .enumerate()
                .filter(|(i, s)| {
                    !tried.contains(*i) && s.in_rotation() && s.breaker().admits_at(now).is_none()
                })
                .map(|(i, s)| (i, s.weight));
            let chosen = pick_weighted(candidates, rng)?;
            tried.insert(chosen);
            let slot = &self.slots[chosen];
            if let Some(permit) = slot.breaker().try_acquire(now) {
                return Some(Admission {
                    slot,
                    permit: Some(permit),
                });
            }
        }
        None
    }

    /// When a provider able to carry the message (not in `unable`) will
    /// take a request again.
    pub fn next_admission(&self, unable: Tried) -> NextAdmission {
        let now = clock::instant();
        let mut earliest: Option<Instant> = None;
        for (i, slot) in self.slots.iter().enumerate() {
            if unable.contains(i) || !slot.in_rotation() {
                continue;
            }
            match slot.breaker().admits_at(now) {
                None => return NextAdmission::Now,
                Some(at) => earliest = Some(earliest.map_or(at, |e| e.min(at))),
            }
        }
        earliest.map_or(NextAdmission::OutOfRotation, NextAdmission::At)
    }
}

/// When a channel's providers will take a message again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextAdmission {
    /// One would now.
    Now,
    /// Once the earliest breaker or pause lets a request through.
    At(Instant),
    /// Every one that could carry it is disabled: only an operator
    /// brings one back.
    OutOfRotation,
}

/// Every channel's providers.
pub struct Providers {
    sms: ChannelPool,
    email: ChannelPool,
}

impl Providers {
    pub fn new(sms: ChannelPool, email: ChannelPool) -> Self {
        Self { sms, email }
    }

    pub fn channel(&self, channel: Channel) -> &ChannelPool {
        match channel {
            Channel::Sms => &self.sms,
            Channel::Email => &self.email,
        }
    }

    /// Every provider, SMS first, each channel's in configured order.
    pub fn all(&self) -> impl Iterator<Item = (Channel, &ProviderSlot)> {
        Channel::ALL
            .into_iter()
            .flat_map(|c| self.channel(c).slots().iter().map(move |s| (c, s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderConfig;

    fn pool(probes: u32) -> ChannelPool {
        // Never called: the tests only exercise admission.
        let config = ProviderConfig::contract("p".into(), "http://127.0.0.1:9/".into());
        let provider = crate::provider::build(&config, Channel::Sms).unwrap();
        let breaker = BreakerConfig {
            consecutive_failures: 1,
            half_open_probes: probes,
            ..BreakerConfig::default()
        };
        ChannelPool::new(
            Channel::Sms,
            vec![ProviderSlot::new(provider, 1, 1, breaker)],
        )
    }

    fn pick(pool: &ChannelPool) -> Option<Admission<'_>> {
        pool.pick(&mut Tried::default(), &mut fastrand::Rng::with_seed(1))
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_hands_its_slot_back() {
        let pool = pool(1);
        pick(&pool)
            .unwrap()
            .record(Signal::Failure { unreachable: true }, None);
        assert!(pick(&pool).is_none(), "open");
        assert!(matches!(
            pool.next_admission(Tried::default()),
            NextAdmission::At(_)
        ));

        tokio::time::advance(Duration::from_secs(2)).await;
        let probe = pick(&pool).expect("half-open lets a probe through");
        assert!(pick(&pool).is_none(), "one probe at a time");
        drop(probe);
        let probe = pick(&pool).expect("the dropped probe's slot is free again");
        probe.record(Signal::Success, None);
        assert_eq!(pool.slots()[0].health().0, BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_the_provider_off() {
        let pool = pool(1);
        pick(&pool)
            .unwrap()
            .record(Signal::Success, Some(Duration::from_secs(3)));
        assert!(pick(&pool).is_none());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(pick(&pool).is_some());
    }

    #[test]
    fn each_provider_once_per_round() {
        let pool = pool(1);
        let mut tried = Tried::default();
        let mut rng = fastrand::Rng::with_seed(7);
        assert!(pool.pick(&mut tried, &mut rng).is_some());
        assert!(pool.pick(&mut tried, &mut rng).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_disabled_provider_is_passed_over_without_touching_its_breaker() {
        let pool = pool(1);
        let slot = &pool.slots()[0];
        slot.set_enabled(false);
        assert!(pick(&pool).is_none());
        assert_eq!(
            pool.next_admission(Tried::default()),
            NextAdmission::OutOfRotation
        );
        assert_eq!(slot.health(), (BreakerState::Closed, 0, 0));
        slot.set_enabled(true);
        assert!(pick(&pool).is_some());
        assert_eq!(pool.next_admission(Tried::default()), NextAdmission::Now);
        slot.retire();
        assert!(
            pick(&pool).is_none(),
            "a retired provider starts nothing new"
        );
    }
}
