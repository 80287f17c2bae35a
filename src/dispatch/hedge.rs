//! Hedged sends: when a round's request has been alone in flight for the
//! hedge delay, the next admitted provider gets the same message beside it,
//! and the first to deliver wins. The rules here are pure: which
//! notifications are hedged, after how long, and each provider's recent
//! latencies that "p90" reads.
//!
//! A hedge can deliver a message twice, so nothing is hedged unless asked:
//! by the notification (`"hedge": true`) or by its channel (`all`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::Channel;

/// Which notifications of a channel are hedged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HedgeWhen {
    /// None, even those that ask.
    Never,
    /// Those sent with `"hedge": true`.
    #[default]
    Asked,
    /// Every one.
    All,
}

/// How long a request is left alone before it is hedged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HedgeAfter {
    /// A fixed delay.
    Millis(u64),
    /// The provider's recent 90th-percentile latency: a request slower than
    /// nine in ten of that provider's is hedged. None until the provider
    /// has answered [`LatencyWindow::MIN_SAMPLES`] times.
    #[default]
    P90,
}

/// One channel's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelHedge {
    pub when: HedgeWhen,
    pub after: HedgeAfter,
}

/// Every channel's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hedging {
    pub sms: ChannelHedge,
    pub email: ChannelHedge,
}

impl Hedging {
    pub fn channel(&self, channel: Channel) -> ChannelHedge {
        match channel {
            Channel::Sms => self.sms,
            Channel::Email => self.email,
        }
    }
}

impl ChannelHedge {
    /// Whether a notification that asked (`asked`) or not is hedged.
    pub fn applies(self, asked: bool) -> bool {
        match self.when {
            HedgeWhen::Never => false,
            HedgeWhen::Asked => asked,
            HedgeWhen::All => true,
        }
    }

    /// The delay for a request to a provider with these recent latencies;
    /// `None`: not hedged (a "p90" without enough samples yet).
    pub fn delay(self, latencies: &LatencyWindow) -> Option<Duration> {
        match self.after {
            HedgeAfter::Millis(ms) => Some(Duration::from_millis(ms)),
            HedgeAfter::P90 => latencies.p90(),
        }
    }
}

/// Written as a number of milliseconds or `"p90"`, in the file and in the
/// environment (`HERALD_HEDGE__SMS_AFTER_MS=250`).
impl Serialize for HedgeAfter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HedgeAfter::Millis(ms) => s.serialize_u64(*ms),
            HedgeAfter::P90 => s.serialize_str("p90"),
        }
    }
}

impl<'de> Deserialize<'de> for HedgeAfter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct After;
        impl Visitor<'_> for After {
            type Value = HedgeAfter;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of milliseconds or \"p90\"")
            }
            fn visit_u64<E: de::Error>(self, ms: u64) -> Result<HedgeAfter, E> {
                Ok(HedgeAfter::Millis(ms))
            }
            fn visit_i64<E: de::Error>(self, ms: i64) -> Result<HedgeAfter, E> {
                u64::try_from(ms)
                    .map(HedgeAfter::Millis)
                    .map_err(|_| E::custom("must not be negative"))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HedgeAfter, E> {
                if s.eq_ignore_ascii_case("p90") {
                    Ok(HedgeAfter::P90)
                } else {
                    s.parse().map(HedgeAfter::Millis).map_err(|_| {
                        E::invalid_value(de::Unexpected::Str(s), &"milliseconds or \"p90\"")
                    })
                }
            }
        }
        d.deserialize_any(After)
    }
}

/// A provider's latest answered requests' latencies, in a ring: recording
/// is one store, and only a hedged round asks for the p90.
#[derive(Debug, Clone)]
pub struct LatencyWindow {
    /// Microseconds; a `u32` holds over an hour.
    micros: [u32; Self::CAPACITY],
    next: usize,
    len: usize,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self {
            micros: [0; Self::CAPACITY],
            next: 0,
            len: 0,
        }
    }
}

impl LatencyWindow {
    pub const CAPACITY: usize = 128;
    /// Fewer answers than this say too little for a percentile.
    pub const MIN_SAMPLES: usize = 10;

    pub fn record(&mut self, latency: Duration) {
        self.micros[self.next] = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.next = (self.next + 1) % Self::CAPACITY;
        self.len = (self.len + 1).min(Self::CAPACITY);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The 90th percentile (nearest rank) of the latencies held.
    pub fn p90(&self) -> Option<Duration> {
        if self.len < Self::MIN_SAMPLES {
            return None;
        }
        let mut held = self.micros;
        let held = &mut held[..self.len];
        let rank = (self.len * 9).div_ceil(10) - 1;
        let (_, p90, _) = held.select_nth_unstable(rank);
        Some(Duration::from_micros(u64::from(*p90)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_is_hedged() {
        let hedge = |when| ChannelHedge {
            when,
            after: HedgeAfter::P90,
        };
        assert!(!hedge(HedgeWhen::Never).applies(true));
        assert!(hedge(HedgeWhen::Asked).applies(true));
        assert!(!hedge(HedgeWhen::Asked).applies(false));
        assert!(hedge(HedgeWhen::All).applies(false));
        assert_eq!(ChannelHedge::default().when, HedgeWhen::Asked);
    }

    #[test]
    fn p90_of_the_latest_answers() {
        let mut w = LatencyWindow::default();
        assert_eq!(w.p90(), None);
        for ms in 1..=9 {
            w.record(Duration::from_millis(ms));
        }
        assert_eq!(w.p90(), None, "too few samples");
        w.record(Duration::from_millis(10));
        assert_eq!(w.p90(), Some(Duration::from_millis(9)));
        for ms in 11..=100 {
            w.record(Duration::from_millis(ms));
        }
        assert_eq!(w.p90(), Some(Duration::from_millis(90)));
        // The oldest go: 128 answers of 1 s push every earlier one out.
        for _ in 0..LatencyWindow::CAPACITY {
            w.record(Duration::from_secs(1));
        }
        assert_eq!(w.len(), LatencyWindow::CAPACITY);
        assert_eq!(w.p90(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn the_delay_is_fixed_or_the_providers_p90() {
        let mut w = LatencyWindow::default();
        let fixed = ChannelHedge {
            when: HedgeWhen::All,
            after: HedgeAfter::Millis(250),
        };
        assert_eq!(fixed.delay(&w), Some(Duration::from_millis(250)));
        let p90 = ChannelHedge {
            when: HedgeWhen::All,
            after: HedgeAfter::P90,
        };
        assert_eq!(p90.delay(&w), None);
        for _ in 0..LatencyWindow::MIN_SAMPLES {
            w.record(Duration::from_millis(40));
        }
        assert_eq!(p90.delay(&w), Some(Duration::from_millis(40)));
    }

    #[test]
    fn the_delay_reads_as_milliseconds_or_p90() {
        let parse = |v: serde_json::Value| serde_json::from_value::<HedgeAfter>(v);
        assert_eq!(
            parse(serde_json::json!(300)).unwrap(),
            HedgeAfter::Millis(300)
        );
        assert_eq!(parse(serde_json::json!("p90")).unwrap(), HedgeAfter::P90);
        assert_eq!(
            parse(serde_json::json!("300")).unwrap(),
            HedgeAfter::Millis(300)
        );
        assert!(parse(serde_json::json!("p99")).is_err());
        assert!(parse(serde_json::json!(-1)).is_err());
        assert_eq!(
            serde_json::to_value(HedgeAfter::Millis(5)).unwrap(),
            serde_json::json!(5)
        );
        assert_eq!(
            serde_json::to_value(HedgeAfter::P90).unwrap(),
            serde_json::json!("p90")
        );
    }
}
