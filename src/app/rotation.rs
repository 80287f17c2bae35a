//! Which providers are in rotation: each instance's re-reading of the
//! disabled names, and what `herald providers` does to the store.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{AppError, open_store};
use crate::config::Config;
use crate::dispatch::live::LiveProviders;
use crate::domain::{Channel, UnixMillis};
use crate::store::{Store, StoreError};

/// Re-reads the disabled names every `every`; a failed read keeps the
/// names known.
pub(super) fn start(
    live: Arc<LiveProviders>,
    store: Arc<dyn Store>,
    every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = live.refresh(store.as_ref()).await {
                tracing::warn!(
                    error = %crate::error::chain(&e),
                    "could not re-read which providers are disabled"
                );
            }
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("the store failed")]
    Store(#[from] StoreError),
    #[error(transparent)]
    App(#[from] AppError),
}

/// A provider as `herald providers list` shows it.
pub struct Listed {
    pub name: String,
    /// `None`: disabled in the store, but not in this config.
    pub channel: Option<Channel>,
    pub kind: Option<&'static str>,
    pub disabled_at: Option<UnixMillis>,
}

/// The config's providers with whether each is disabled, then any other
/// name the store has disabled (another instance's config may have it).
pub async fn list(config: &Config) -> Result<Vec<Listed>, RotationError> {
    let store = open_store(config).await?;
    let disabled = store.disabled_providers().await;
    store.close().await;
    let mut disabled = disabled?;
    let mut out = Vec::new();
    for channel in Channel::ALL {
        for p in config.providers.for_channel(channel) {
            let at = disabled
                .iter()
                .position(|(name, _)| name == p.name())
                .map(|i| disabled.remove(i).1);
            out.push(Listed {
                name: p.name().to_owned(),
                channel: Some(channel),
                kind: Some(p.kind.name()),
                disabled_at: at,
            });
        }
    }
    out.extend(disabled.into_iter().map(|(name, at)| Listed {
        name,
        channel: None,
        kind: None,
        disabled_at: Some(at),
    }));
    Ok(out)
}

/// Disables (or enables) `name` in the store, for every instance; `false`
/// when it already was so. Any name is taken: the instances' configs may
/// differ from this one.
pub async fn set_enabled(
    config: &Config,
    name: &str,
    enabled: bool,
) -> Result<bool, RotationError> {
    let store = open_store(config).await?;
    let changed = store
        .set_provider_disabled(name, !enabled, UnixMillis::now())
        .await;
    store.close().await;
    Ok(changed?)
}
