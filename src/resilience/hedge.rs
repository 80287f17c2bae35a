//! Hedged sends: when a round's request has been alone in flight for the
//! hedge delay, the next admitted provider gets the same message beside it,
//! and the first to deliver wins. The rules here are pure: which
//! notifications are hedged, and after how long; "p90" reads the provider's
//! latency window (`latency.rs`), the one its health view shows too.
//!
//! A hedge can deliver a message twice, so nothing is hedged unless asked:
//! by the notification (`"hedge": true`) or by its channel (`all`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::latency::LatencyWindow;
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
    /// The provider's recent 90th-percentile latency, over its last
    /// [`LATENCY_WINDOW`](super::latency::LATENCY_WINDOW) answered
    /// requests: a request slower than nine in ten of that provider's is
    /// hedged. None until the provider has answered
    /// [`LatencyWindow::MIN_SAMPLES`] times.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::latency::LATENCY_WINDOW;

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
    fn the_delay_is_fixed_or_the_providers_p90() {
        let mut w = LatencyWindow::new(LATENCY_WINDOW);
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
