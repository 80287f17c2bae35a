//! API keys: the refresh of each instance's copy, and what `herald keys`
//! does to the store.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{AppError, open_store};
use crate::api::auth::{self, Auth, Scope};
use crate::config::Config;
use crate::domain::UnixMillis;
use crate::store::{ApiKeyRecord, Store};

/// Re-reads the keys every `every`; a failed read keeps the keys known.
pub(super) fn start(auth: Arc<Auth>, store: Arc<dyn Store>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = auth.refresh(store.as_ref()).await {
                tracing::warn!(error = %crate::error::chain(&e), "could not re-read the API keys");
            }
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("a key named {0:?} exists already (names are never reused)")]
    Exists(String),
    #[error("no unrevoked key named {0:?}")]
    NoSuchKey(String),
    /// A name is the key's idempotency scope and is shown in logs and
    /// listings: PostgreSQL could not store a NUL in it, and other control
    /// characters would reach a terminal.
    #[error("a key's name must not be empty nor hold control characters: {0:?}")]
    BadName(String),
    #[error("unknown scope in {0:?} (expected send, read, admin)")]
    BadScopes(String),
    #[error("--rate-per-sec must be above 0 and --burst at least 1")]
    BadLimit,
    #[error("the system's random number generator failed")]
    Random,
    #[error("the store failed")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    App(#[from] AppError),
}

/// A key to create.
pub struct NewKey<'a> {
    pub name: &'a str,
    pub scopes: &'a str,
    pub rate_per_sec: Option<f64>,
    pub burst: Option<u32>,
}

/// Stores a new key; returns the key itself, which is never seen again.
pub async fn create(config: &Config, new: NewKey<'_>) -> Result<String, KeyError> {
    if new.name.is_empty() || crate::domain::validation::has_control(new.name) {
        return Err(KeyError::BadName(new.name.to_owned()));
    }
    let scopes = Scope::parse_list(new.scopes)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| KeyError::BadScopes(new.scopes.to_owned()))?;
    if new
        .rate_per_sec
        .is_some_and(|r| !(r.is_finite() && r > 0.0))
        || new.burst == Some(0)
    {
        return Err(KeyError::BadLimit);
    }
    let key = auth::generate_key().map_err(|_| KeyError::Random)?;
    let record = ApiKeyRecord {
        name: new.name.to_owned(),
        key_hash: auth::hash_key(&key),
        scopes: scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(","),
        rate_per_sec: new.rate_per_sec,
        burst: new.burst,
        created_at: UnixMillis::now(),
        revoked_at: None,
    };
    let store = open_store(config).await?;
    let created = store.create_api_key(record).await;
    store.close().await;
    if !created? {
        return Err(KeyError::Exists(new.name.to_owned()));
    }
    Ok(key)
}

pub async fn list(config: &Config) -> Result<Vec<ApiKeyRecord>, KeyError> {
    let store = open_store(config).await?;
    let keys = store.api_keys().await;
    store.close().await;
    Ok(keys?)
}

pub async fn revoke(config: &Config, name: &str) -> Result<(), KeyError> {
    let store = open_store(config).await?;
    let revoked = store.revoke_api_key(name, UnixMillis::now()).await;
    store.close().await;
    if !revoked? {
        return Err(KeyError::NoSuchKey(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_with_control_characters_is_refused_before_the_store_is_opened() {
        for name in ["", "ops\0", "ops\u{1b}[2J"] {
            let new = NewKey {
                name,
                scopes: "send",
                rate_per_sec: None,
                burst: None,
            };
            assert!(
                matches!(
                    create(&Config::default(), new).await,
                    Err(KeyError::BadName(_))
                ),
                "{name:?}"
            );
        }
    }
}
