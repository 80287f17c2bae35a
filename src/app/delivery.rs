//! The delivering half: the dispatcher, the webhook worker and the
//! retention purge, started only where the role delivers.

use crate::resilience::clock;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

use super::{AppError, purge};
use crate::config::Config;
use crate::dispatch::dispatcher::{Dispatcher, DispatcherSettings};
use crate::dispatch::handoff::Handoff;
use crate::dispatch::live::LiveProviders;
use crate::dispatch::round::RetryPolicy;
use crate::store::Store;
use crate::webhook::{Receivers, WebhookRetry, WebhookWorker, WorkerSettings};

/// The dispatcher, built but not yet running.
pub(super) struct Delivery {
    dispatcher: Option<Dispatcher>,
    /// Where some receiver is configured.
    webhooks: Option<WebhookWorker>,
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
    /// Delivered notifications' maximum age and the purge's interval.
    /// The purge's delivered-notification age (zero keeps them), key
    /// lifetime and interval.
    retention: Option<(Duration, Duration, Duration)>,
}

impl Delivery {
    pub fn new(
        config: &Config,
        store: &Arc<dyn Store>,
        providers: &Arc<LiveProviders>,
        wake: &Arc<Notify>,
    ) -> Result<Self, AppError> {
        let policy = RetryPolicy {
            backoff: config.backoff()?,
            max_rounds: config.retry.max_rounds,
            retry_after_max: Duration::from_millis(config.retry.retry_after_max_ms),
            idle_recheck: Duration::from_millis(config.dispatch.poll_interval_ms),
            out_of_rotation_recheck: Duration::from_millis(config.dispatch.providers_refresh_ms),
            hedging: config.hedge.hedging(),
        };
        let settings = DispatcherSettings {
            max_in_flight: config.dispatch.max_in_flight,
            claim_batch: config.dispatch.claim_batch,
            poll_interval: Duration::from_millis(config.dispatch.poll_interval_ms),
            lease: Duration::from_millis(config.dispatch.lease_ms),
            drain_timeout: Duration::from_millis(config.dispatch.drain_timeout_ms),
        };
        let dispatches = config.role.dispatches();
        let dispatcher = dispatches.then(|| {
            Dispatcher::new(
                Arc::clone(store),
                Arc::clone(providers),
                policy,
                settings,
                crate::resilience::clock::system(),
                Arc::clone(wake),
            )
        });
        let webhooks = match dispatches {
            true => webhook_worker(config, store)?,
            false => None,
        };
        let retention = &config.retention;
        Ok(Self {
            dispatcher,
            webhooks,
            store: Arc::clone(store),
            wake: Arc::clone(wake),
            // Idempotency keys expire even where delivered rows are kept.
            retention: dispatches.then(|| {
                (
                    Duration::from_secs(retention.delivered_max_age_secs),
                    Duration::from_secs(config.accept.idempotency_ttl_secs),
                    Duration::from_secs(retention.purge_interval_secs),
                )
            }),
        })
    }

    /// The API's hand-off to this process's dispatcher, if it runs one.
    pub fn handoff(&self) -> Option<Handoff> {
        self.dispatcher.as_ref().map(Dispatcher::handoff)
    }

    /// Runs the dispatcher, the webhook worker and the purge until `stop`
    /// turns true.
    pub fn start(self, stop: watch::Receiver<bool>) -> RunningDelivery {
        let webhooks = self
            .webhooks
            .map(|worker| tokio::spawn(worker.run(stop.clone())));
        let purger = self.retention.map(|(max_age, key_ttl, interval)| {
            tokio::spawn(purge::run(
                Arc::clone(&self.store),
                max_age,
                key_ttl,
                interval,
                stop.clone(),
            ))
        });
        let (failed_tx, failed) = oneshot::channel();
        let dispatcher = self.dispatcher.map(|dispatcher| {
            // Other instances' new work wakes this dispatcher too.
            self.store.subscribe(Arc::clone(&self.wake));
            let run = tokio::spawn(dispatcher.run(stop));
            tokio::spawn(async move {
                let failed = run.await.is_err();
                if failed {
                    tracing::error!("the dispatcher failed; stopping");
                    let _ = failed_tx.send(());
                }
                failed
            })
        });
        RunningDelivery {
            dispatcher,
            webhooks,
            purger,
            failed,
        }
    }
}

/// The webhook worker, where some receiver is configured.
fn webhook_worker(
    config: &Config,
    store: &Arc<dyn Store>,
) -> Result<Option<WebhookWorker>, AppError> {
    let receivers = Receivers::build(config)?;
    if receivers.is_empty() {
        return Ok(None);
    }
    let s = &config.webhooks_settings;
    let settings = WorkerSettings {
        max_in_flight: s.max_in_flight,
        poll_interval: Duration::from_millis(s.poll_interval_ms),
        drain_timeout: Duration::from_millis(config.dispatch.drain_timeout_ms),
        retry: WebhookRetry {
            backoff: config.webhook_backoff()?,
            max_attempts: s.max_attempts,
            max_age: Duration::from_secs(s.max_age_secs),
        },
        breaker: config.breaker(),
    };
    Ok(Some(WebhookWorker::new(
        Arc::clone(store),
        Arc::new(receivers),
        settings,
        crate::resilience::clock::system(),
    )))
}

pub(super) struct RunningDelivery {
    /// Ends with whether the dispatcher failed.
    dispatcher: Option<JoinHandle<bool>>,
    webhooks: Option<JoinHandle<()>>,
    purger: Option<JoinHandle<()>>,
    failed: oneshot::Receiver<()>,
}

impl RunningDelivery {
    /// Resolves if the dispatcher dies (a bug): an instance must not go on
    /// accepting work it will never deliver.
    pub async fn failed(&mut self) {
        if (&mut self.failed).await.is_err() {
            // No dispatcher, or one that ended cleanly: nothing to report.
            std::future::pending::<()>().await;
        }
    }

    /// Waits up to `limit` for the dispatcher and the webhook worker to
    /// drain (they were told to stop already, and drain side by side), then
    /// stops the purge; returns whether the dispatcher failed.
    pub async fn stop(self, limit: Duration) -> bool {
        let deadline = clock::instant() + limit;
        let failed = match self.dispatcher {
            None => false,
            Some(dispatcher) => match tokio::time::timeout_at(deadline, dispatcher).await {
                Ok(ended) => ended.unwrap_or(true),
                Err(_) => {
                    tracing::error!("the dispatcher did not stop in time");
                    false
                }
            },
        };
        if let Some(webhooks) = self.webhooks
            && tokio::time::timeout_at(deadline, webhooks).await.is_err()
        {
            tracing::error!("the webhook worker did not stop in time");
        }
        if let Some(purger) = self.purger {
            purger.abort();
        }
        failed
    }
}
