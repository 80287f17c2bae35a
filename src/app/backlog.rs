//! `herald_backlog{status}` and `herald_webhook_pending`: refreshed by a
//! periodic query of the unfinished rows (their own index), not at each
//! scrape.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::domain::Status;
use crate::store::Store;

/// How stale the backlog gauge may be.
const INTERVAL: Duration = Duration::from_secs(5);

pub(super) fn start(store: Arc<dyn Store>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match store.backlog().await {
                Ok(counts) => {
                    for status in [
                        Status::Scheduled,
                        Status::Queued,
                        Status::Retrying,
                        Status::Sending,
                    ] {
                        let n = counts
                            .iter()
                            .find(|(s, _)| *s == status)
                            .map_or(0, |(_, n)| *n);
                        crate::metrics::metrics().backlog(status.as_str(), n);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %crate::error::chain(&e), "could not count the backlog");
                }
            }
            match store.webhook_backlog().await {
                Ok(counts) => {
                    crate::metrics::metrics().webhook_pending(counts.iter().map(|(_, n)| n).sum())
                }
                Err(e) => {
                    tracing::debug!(error = %crate::error::chain(&e), "could not count pending webhooks");
                }
            }
            tokio::time::sleep(INTERVAL).await;
        }
    })
}
