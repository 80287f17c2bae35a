//! The providers of each channel, built from the config.

use super::AppError;
use crate::config::Config;
use crate::dispatch::pool::{ChannelPool, ProviderSlot, Providers};
use crate::dispatch::rate::TokenBucket;
use crate::domain::Channel;
use crate::provider;

pub(super) fn build(config: &Config) -> Result<Providers, AppError> {
    let pool = |channel: Channel| -> Result<ChannelPool, AppError> {
        let slots = config
            .providers
            .for_channel(channel)
            .iter()
            .map(|p| {
                let slot = ProviderSlot::new(
                    provider::build(p, channel)?,
                    p.common.weight,
                    p.common.max_in_flight,
                    config.breaker(),
                );
                Ok(match p.common.rate_per_sec {
                    Some(rate) => slot.with_rate_limit(
                        rate,
                        p.common
                            .burst
                            .unwrap_or_else(|| TokenBucket::default_burst(rate)),
                    ),
                    None => slot,
                })
            })
            .collect::<Result<Vec<_>, AppError>>()?;
        Ok(ChannelPool::new(channel, slots))
    };
    Ok(Providers::new(pool(Channel::Sms)?, pool(Channel::Email)?))
}
