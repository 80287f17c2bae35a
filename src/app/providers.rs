//! The providers of each channel, built from the config.

use std::sync::Arc;
use std::time::Duration;

use super::AppError;
use crate::config::Config;
use crate::dispatch::pool::{ChannelPool, ProviderSlot, Providers};
use crate::domain::Channel;
use crate::provider::ContractProvider;

pub(super) fn build(config: &Config) -> Result<Providers, AppError> {
    let pool = |channel: Channel| -> Result<ChannelPool, AppError> {
        let slots = config
            .providers
            .for_channel(channel)
            .iter()
            .map(|p| {
                let provider = ContractProvider::new(
                    &p.name,
                    channel,
                    &p.url,
                    Duration::from_millis(p.timeout_ms),
                    p.max_in_flight,
                )?;
                Ok(ProviderSlot::new(
                    Arc::new(provider),
                    p.weight,
                    p.max_in_flight,
                    config.breaker(),
                ))
            })
            .collect::<Result<Vec<_>, AppError>>()?;
        Ok(ChannelPool::new(channel, slots))
    };
    Ok(Providers::new(pool(Channel::Sms)?, pool(Channel::Email)?))
}
