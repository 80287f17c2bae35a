//! The retention purge: sent and delivered notifications and webhook deliveries
//! past their age and idempotency keys past their lifetime are deleted.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use tokio::sync::watch;

use crate::domain::UnixMillis;
use crate::store::{Store, StoreError};

const BATCH: usize = 1_000;

/// Runs `purge` a batch at a time until a batch comes back short (or the
/// process stops); logs how many rows of `what` went.
async fn in_batches<F>(stop: &watch::Receiver<bool>, what: &str, purge: impl Fn(usize) -> F)
where
    F: Future<Output = Result<u64, StoreError>>,
{
    let mut purged = 0;
    loop {
        match purge(BATCH).await {
            Ok(n) => {
                purged += n;
                if n < BATCH as u64 || *stop.borrow() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "purging {what} failed");
                break;
            }
        }
    }
    if purged > 0 {
        tracing::info!(purged, "purged {what} past retention");
    }
}

/// Deletes sent and delivered notifications and webhook deliveries older than
/// `max_age` (unless it is zero) and idempotency keys older than `key_ttl`,
/// every `interval`, in batches so that no transaction grows large.
pub(super) async fn run(
    store: Arc<dyn Store>,
    max_age: Duration,
    key_ttl: Duration,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = UnixMillis::now();
        let keys_before =
            UnixMillis(now.0 - i64::try_from(key_ttl.as_millis()).unwrap_or(i64::MAX));
        loop {
            match store.purge_keys(keys_before, BATCH).await {
                Ok(n) if n == BATCH as u64 && !*stop.borrow() => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "purging idempotency keys failed");
                    break;
                }
            }
        }
        if max_age.is_zero() {
            continue;
        }
        let before = UnixMillis(now.0 - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        in_batches(&stop, "sent and delivered notifications", |limit| {
            store.purge(before, limit)
        })
        .await;
        in_batches(&stop, "delivered webhook deliveries", |limit| {
            store.purge_webhooks(before, limit)
        })
        .await;
    }
}
