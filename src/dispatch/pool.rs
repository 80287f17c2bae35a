//! The providers of each channel, with the health each one has shown.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::breaker::{Breaker, BreakerConfig, BreakerState, Permit, Signal};
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
        }
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        // The breaker's state stays consistent even if a holder panicked.
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, permit: Permit, signal: Signal, pause: Option<Duration>) {
        let now = Instant::now();
        let mut breaker = self.breaker();
        breaker.record(permit, signal, now);
        if let Some(pause) = pause {
            breaker.pause_until(now + pause);
        }
    }

    pub fn cancel(&self, permit: Permit) {
        self.breaker().cancel(permit);
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

    /// Weighted random choice among providers not yet tried whose breaker
    /// admits a request now. Marks the chosen one as tried.
    pub fn pick(&self, tried: &mut Tried, rng: &mut fastrand::Rng) -> Option<(usize, Permit)> {
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
            if let Some(permit) = self.slots[chosen].breaker().try_acquire(now) {
                return Some((chosen, permit));
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
