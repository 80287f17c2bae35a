//! The providers of each channel, built from the config, and built again
//! from a new config by a reload that keeps what it can: a provider whose
//! channel, name, kind and target (URL, credentials, `ca_file`) stay the
//! same keeps its breaker, window, requests in flight and rate bucket, and
//! takes its new weight, cap, timeout and rate limit.

use std::sync::Arc;

use crate::config::{ProviderConfig, ProvidersConfig};
use crate::dispatch::live::{Changed, Changes};
use crate::dispatch::pool::{ChannelPool, ProviderSlot, Providers, SlotSettings};
use crate::domain::Channel;
use crate::provider::{self, BuildError, Provider};
use crate::resilience::breaker::BreakerConfig;
use crate::resilience::rate::TokenBucket;

pub(super) fn build(
    providers: &ProvidersConfig,
    breaker: &BreakerConfig,
) -> Result<Providers, BuildError> {
    let pool = |channel: Channel| -> Result<ChannelPool, BuildError> {
        let slots = providers
            .for_channel(channel)
            .iter()
            .map(|p| Ok(fresh_slot(provider::build(p, channel)?, p, breaker)))
            .collect::<Result<Vec<_>, BuildError>>()?;
        Ok(ChannelPool::new(channel, slots))
    };
    Ok(Providers::new(pool(Channel::Sms)?, pool(Channel::Email)?))
}

fn settings(p: &ProviderConfig) -> SlotSettings {
    let c = &p.common;
    SlotSettings {
        weight: c.weight,
        max_in_flight: c.max_in_flight,
        rate: c.rate_per_sec.map(|rate| {
            (
                rate,
                c.burst.unwrap_or_else(|| TokenBucket::default_burst(rate)),
            )
        }),
    }
}

/// A provider with no history: breaker closed, nothing in flight.
fn fresh_slot(
    provider: Arc<dyn Provider>,
    config: &ProviderConfig,
    breaker: &BreakerConfig,
) -> ProviderSlot {
    let s = settings(config);
    let slot = ProviderSlot::new(provider, s.weight, s.max_in_flight, breaker.clone());
    match s.rate {
        Some((rate, burst)) => slot.with_rate_limit(rate, burst),
        None => slot,
    }
}

/// What a reload does to one provider of the new config.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// Nothing changed: the same slot.
    Keep,
    /// Same target, new settings (named): health kept. `rebuild` when the
    /// provider's own object depends on them (its timeout, its pool size).
    Reconfigure {
        settings: Vec<&'static str>,
        rebuild: bool,
    },
    /// Same name, another kind or target: a new provider, health fresh.
    Replace,
    Add,
}

/// The fate of each provider of `new` (in its order), and the names of
/// `old` that `new` no longer has in that channel.
fn plan(old: &[ProviderConfig], new: &[ProviderConfig]) -> (Vec<Fate>, Vec<String>) {
    let fates = new
        .iter()
        .map(|p| match old.iter().find(|o| o.name() == p.name()) {
            None => Fate::Add,
            // allow_insecure too: turning it off must check the URL again.
            Some(o)
                if o.kind != p.kind
                    || o.common.ca_file != p.common.ca_file
                    || o.common.allow_insecure != p.common.allow_insecure =>
            {
                Fate::Replace
            }
            Some(o) => {
                let (a, b) = (&o.common, &p.common);
                let changed: Vec<&'static str> = [
                    ("weight", a.weight != b.weight),
                    ("timeout_ms", a.timeout_ms != b.timeout_ms),
                    ("max_in_flight", a.max_in_flight != b.max_in_flight),
                    ("rate_per_sec", a.rate_per_sec != b.rate_per_sec),
                    ("burst", a.burst != b.burst),
                ]
                .into_iter()
                .filter_map(|(name, differs)| differs.then_some(name))
                .collect();
                if changed.is_empty() {
                    Fate::Keep
                } else {
                    Fate::Reconfigure {
                        rebuild: a.timeout_ms != b.timeout_ms || a.max_in_flight != b.max_in_flight,
                        settings: changed,
                    }
                }
            }
        })
        .collect();
    let removed = old
        .iter()
        .filter(|o| !new.iter().any(|p| p.name() == o.name()))
        .map(|o| o.name().to_owned())
        .collect();
    (fates, removed)
}

/// The set `new` describes, built from `current` (which `old` describes):
/// nothing of `current` changes unless every new provider builds, so a
/// refused reload leaves it exactly as it was.
pub(super) fn rebuild(
    current: &Providers,
    old: &ProvidersConfig,
    new: &ProvidersConfig,
    breaker: &BreakerConfig,
) -> Result<(Providers, Changes), BuildError> {
    let mut changes = Changes::default();
    // First everything that can fail: the providers to build.
    let mut pending = Vec::new();
    for channel in Channel::ALL {
        let (fates, removed) = plan(old.for_channel(channel), new.for_channel(channel));
        changes.removed.extend(removed);
        for (p, fate) in new.for_channel(channel).iter().zip(fates) {
            let built = match &fate {
                Fate::Add | Fate::Replace | Fate::Reconfigure { rebuild: true, .. } => {
                    Some(provider::build(p, channel)?)
                }
                Fate::Keep | Fate::Reconfigure { rebuild: false, .. } => None,
            };
            pending.push((channel, p, fate, built));
        }
    }
    // Then the slots, settings applied to the health kept.
    let mut slots = (Vec::new(), Vec::new());
    for (channel, p, fate, built) in pending {
        let name = p.name().to_owned();
        let old_slot = || {
            current
                .channel(channel)
                .slots()
                .iter()
                .find(|s| s.provider.name() == p.name())
                .expect("a provider the old config has is in the set built from it")
        };
        let slot = match (fate, built) {
            (Fate::Keep, _) => {
                changes.unchanged.push(name);
                old_slot().clone()
            }
            (
                Fate::Reconfigure {
                    settings: names, ..
                },
                built,
            ) => {
                let old = old_slot();
                let provider = built.unwrap_or_else(|| Arc::clone(&old.provider));
                changes.changed.push(Changed {
                    name,
                    settings: names,
                });
                old.reconfigured(provider, settings(p))
            }
            (fate, Some(provider)) => {
                if fate == Fate::Replace {
                    changes.replaced.push(name);
                } else {
                    changes.added.push(name);
                }
                fresh_slot(provider, p, breaker)
            }
            (Fate::Add | Fate::Replace, None) => unreachable!("added and replaced ones are built"),
        };
        match channel {
            Channel::Sms => slots.0.push(slot),
            Channel::Email => slots.1.push(slot),
        }
    }
    let providers = Providers::new(
        ChannelPool::new(Channel::Sms, slots.0),
        ChannelPool::new(Channel::Email, slots.1),
    );
    Ok((providers, changes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::pool::Tried;
    use crate::resilience::breaker::BreakerState;
    use crate::resilience::breaker::Signal;

    fn contract(name: &str, port: u16) -> ProviderConfig {
        ProviderConfig::contract(name.into(), format!("http://127.0.0.1:{port}/api/sms/p"))
    }

    fn config(sms: Vec<ProviderConfig>) -> ProvidersConfig {
        ProvidersConfig {
            sms,
            email: vec![ProviderConfig::contract(
                "mail".into(),
                "http://127.0.0.1:9/api/email/p".into(),
            )],
        }
    }

    #[test]
    fn the_plan_tells_kept_changed_replaced_added_and_removed_apart() {
        let old = [
            contract("same", 1),
            contract("reweighted", 2),
            contract("slower", 3),
            contract("moved", 4),
            contract("gone", 5),
        ];
        let mut reweighted = contract("reweighted", 2);
        reweighted.common.weight = 5;
        reweighted.common.rate_per_sec = Some(2.0);
        let mut slower = contract("slower", 3);
        slower.common.timeout_ms = 9_000;
        let new = [
            contract("new", 6),
            contract("moved", 40),
            slower,
            reweighted,
            contract("same", 1),
        ];
        let (fates, removed) = plan(&old, &new);
        assert_eq!(
            fates,
            [
                Fate::Add,
                Fate::Replace,
                Fate::Reconfigure {
                    settings: vec!["timeout_ms"],
                    rebuild: true
                },
                Fate::Reconfigure {
                    settings: vec!["weight", "rate_per_sec"],
                    rebuild: false
                },
                Fate::Keep,
            ]
        );
        assert_eq!(removed, ["gone"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rebuild_keeps_the_health_of_what_stays_and_starts_the_rest_fresh() {
        let breaker = BreakerConfig {
            consecutive_failures: 1,
            ..BreakerConfig::default()
        };
        let old = config(vec![
            contract("kept", 1),
            contract("reweighted", 2),
            contract("moved", 3),
            contract("gone", 4),
        ]);
        let current = build(&old, &breaker).unwrap();
        // Open every breaker.
        let sms = current.channel(Channel::Sms);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut tried = Tried::default();
        while let Some(admission) = sms.pick(&mut tried, &mut rng) {
            admission.record(Signal::Failure { unreachable: true }, None);
        }

        let mut reweighted = contract("reweighted", 2);
        reweighted.common.weight = 7;
        reweighted.common.max_in_flight = 3;
        reweighted.common.rate_per_sec = Some(1.0);
        let new = config(vec![
            contract("kept", 1),
            reweighted,
            contract("moved", 30),
            contract("added", 5),
        ]);
        let (next, changes) = rebuild(&current, &old, &new, &breaker).unwrap();
        assert_eq!(changes.unchanged, ["kept", "mail"]);
        assert_eq!(
            changes.changed,
            [Changed {
                name: "reweighted".into(),
                settings: vec!["weight", "max_in_flight", "rate_per_sec"]
            }]
        );
        assert_eq!(changes.replaced, ["moved"]);
        assert_eq!(changes.added, ["added"]);
        assert_eq!(changes.removed, ["gone"]);

        let states: Vec<(&str, u32, BreakerState)> = next
            .channel(Channel::Sms)
            .slots()
            .iter()
            .map(|s| (s.provider.name(), s.weight, s.health().0))
            .collect();
        assert_eq!(
            states,
            [
                ("kept", 1, BreakerState::Open),
                ("reweighted", 7, BreakerState::Open),
                ("moved", 1, BreakerState::Closed),
                ("added", 1, BreakerState::Closed),
            ]
        );
        let old_sms = current.channel(Channel::Sms).slots();
        let new_sms = next.channel(Channel::Sms).slots();
        assert!(new_sms[0].shares_health(&old_sms[0]));
        assert!(Arc::ptr_eq(&new_sms[0].provider, &old_sms[0].provider));
        assert!(new_sms[1].shares_health(&old_sms[1]));
        assert_eq!(
            old_sms[1].max_in_flight(),
            3,
            "the cap moves for rounds under way too"
        );
        assert!(!new_sms[2].shares_health(&old_sms[2]));
    }

    #[test]
    fn a_provider_that_fails_to_build_refuses_the_whole_reload() {
        let breaker = BreakerConfig::default();
        let old = config(vec![contract("a", 1)]);
        let current = build(&old, &breaker).unwrap();
        let mut a = contract("a", 1);
        a.common.max_in_flight = 9;
        let broken = ProviderConfig::contract("broken".into(), "not a url".into());
        let new = config(vec![a, broken]);
        assert!(rebuild(&current, &old, &new, &breaker).is_err());
        assert_eq!(current.channel(Channel::Sms).slots()[0].max_in_flight(), 64);
    }
}
