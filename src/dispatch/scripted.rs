//! A provider that answers from a script, for unit tests of the dispatch
//! loop: as linkerd tests its balancers, the loop runs for real and only the
//! far end is played. Its latency is a tokio timer, so with paused time a
//! slow provider costs a test nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::pool::{ChannelPool, ProviderSlot};
use crate::domain::{AttemptOutcome, Channel, Message, NotificationId};
use crate::provider::{Outgoing, Provider, Verdict};
use crate::resilience::breaker::BreakerConfig;

pub struct Scripted {
    name: String,
    channel: Channel,
    timeout: Duration,
    latency: Duration,
    /// Answers in order; the last one repeats once the others are used up.
    script: Mutex<VecDeque<Verdict>>,
    takes: fn(&Message) -> bool,
    sent: Mutex<Vec<NotificationId>>,
}

impl Scripted {
    pub fn new(name: &str, answers: impl IntoIterator<Item = Verdict>) -> Self {
        let script: VecDeque<Verdict> = answers.into_iter().collect();
        assert!(!script.is_empty(), "a script needs an answer");
        Self {
            name: name.to_owned(),
            channel: Channel::Sms,
            timeout: Duration::from_secs(1),
            latency: Duration::from_millis(10),
            script: Mutex::new(script),
            takes: |_| true,
            sent: Mutex::default(),
        }
    }

    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn takes(mut self, takes: fn(&Message) -> bool) -> Self {
        self.takes = takes;
        self
    }

    /// The notifications sent to it, in order, counted when the request
    /// goes out (before the latency).
    pub fn sent(&self) -> Vec<NotificationId> {
        self.sent.lock().unwrap().clone()
    }
}

#[async_trait]
impl Provider for Scripted {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn channel(&self) -> Channel {
        self.channel
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn can_send(&self, message: &Message) -> bool {
        (self.takes)(message)
    }

    async fn send(&self, outgoing: &Outgoing) -> Verdict {
        self.sent.lock().unwrap().push(outgoing.id);
        tokio::time::sleep(self.latency).await;
        let mut script = self.script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front().expect("not empty")
        } else {
            script[0].clone()
        }
    }
}

pub fn delivered(id: &str) -> Verdict {
    Verdict::delivered(Some(200), Some(id.to_owned()))
}

pub fn failing(outcome: AttemptOutcome, status: u16) -> Verdict {
    Verdict::failed(outcome, Some(status), format!("HTTP {status}"))
}

/// A breaker that only a run of failures opens.
pub fn lenient_breaker() -> BreakerConfig {
    BreakerConfig {
        min_samples: 500,
        consecutive_failures: 3,
        ..BreakerConfig::default()
    }
}

/// An SMS pool of `providers`, weight 1 each.
pub fn pool(providers: &[Arc<Scripted>], breaker: BreakerConfig) -> ChannelPool {
    pool_of(Channel::Sms, providers, breaker)
}

pub fn pool_of(
    channel: Channel,
    providers: &[Arc<Scripted>],
    breaker: BreakerConfig,
) -> ChannelPool {
    let slots = providers
        .iter()
        .map(|p| ProviderSlot::new(Arc::clone(p) as Arc<dyn Provider>, 1, 8, breaker.clone()))
        .collect();
    ChannelPool::new(channel, slots)
}
