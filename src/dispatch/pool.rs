//! The providers of each channel, with the health each one has shown.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::breaker::{Breaker, BreakerConfig, BreakerState, Permit, Signal};
use super::latency::{LATENCY_WINDOW, LatencyWindow};
use super::rate::TokenBucket;
use super::router::pick_weighted;
use crate::domain::Channel;
use crate::provider::Provider;

/// A round tries each provider at most once; the set of those tried is a
/// bit mask, which caps a channel at 64 providers.
pub const MAX_PROVIDERS_PER_CHANNEL: usize = 64;

pub struct ProviderSlot {
    pub provider: Arc<dyn Provider>,
    pub weight: u32,
    breaker: Mutex<Breaker>,
    /// Caps requests in flight to this provider.
    pub in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    /// Caps requests per second, when the provider has a rate limit.
    rate: Option<Mutex<TokenBucket>>,
    /// How long its recent requests took, for the health view.
    latencies: Mutex<LatencyWindow>,
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
            breaker: Mutex::new(Breaker::new(breaker)),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            rate: None,
            latencies: Mutex::new(LatencyWindow::new(LATENCY_WINDOW)),
        }
    }

    /// At most `rate` requests a second, `burst` at once.
    pub fn with_rate_limit(mut self, rate: f64, burst: u32) -> Self {
        self.rate = Some(Mutex::new(TokenBucket::new(rate, burst, Instant::now())));
        self
    }

    /// Takes a request's token from the rate limit if one is free within
    /// `max_wait`, and says how long to wait before sending; `None` (and
    /// nothing taken) when no token is free in time.
    pub fn reserve(&self, max_wait: Duration) -> Option<Duration> {
        let Some(rate) = &self.rate else {
            return Some(Duration::ZERO);
        };
        let mut bucket = rate.lock().unwrap_or_else(|p| p.into_inner());
        bucket.reserve(Instant::now(), max_wait)
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        // The breaker's state stays consistent even if a holder panicked.
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests to this provider under way now.
    pub fn requests_in_flight(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.in_flight.available_permits())
    }

    /// Notes how long a request to this provider took.
    pub fn record_latency(&self, took: Duration) {
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(took);
    }

    /// The p50 and p99 of its recent requests, in milliseconds.
    pub fn latency_p50_p99(&self) -> [Option<u32>; 2] {
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .percentiles([50.0, 99.0])
    }

    /// The breaker's state, and the window's samples and failures.
    pub fn health(&self) -> (BreakerState, usize, usize) {
        let breaker = self.breaker();
        let window = breaker.window();
        (
            breaker.state(Instant::now()),
            window.len(),
            window.failures(),
        )
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
        let now = Instant::now();
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

    /// Weighted random choice among providers not yet tried whose breaker
    /// admits a request now. Marks the chosen one as tried.
    pub fn pick(&self, tried: &mut Tried, rng: &mut fastrand::Rng) -> Option<Admission<'_>> {
        let now = Instant::now();
        // A breaker may refuse between the look and the acquire (another task
        // took the last probe); then that provider is skipped for this round.
        for _ in 0..self.slots.len() {
            let candidates = self
                .slots
                .iter()
                .enumerate()
                .filter(|(i, s)| !tried.contains(*i) && s.breaker().admits_at(now).is_none())
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

    /// When some provider will admit a request again, if none does now.
    pub fn next_admission(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        for slot in &self.slots {
            match slot.breaker().admits_at(now) {
                None => return None,
                Some(at) => earliest = Some(earliest.map_or(at, |e| e.min(at))),
            }
        }
        earliest
    }
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
        assert!(pool.next_admission().is_some());

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
}
