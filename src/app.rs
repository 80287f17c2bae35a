//! Wiring: builds the store, the providers, the dispatcher and the API from
//! a [`Config`], runs them, and shuts them down in order.
//!
//! The [`Role`](crate::config::Role) decides which halves run: `all` both, `api` only the API
//! (its notifications are delivered by other instances on the same
//! database), `worker` only the dispatcher and the retention purge, with an
//! HTTP server that answers just `/healthz` and `/readyz`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot, watch};

use crate::api::problem::Problem;
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::dispatch::dispatcher::{Dispatcher, DispatcherSettings};
use crate::dispatch::pool::{ChannelPool, ProviderSlot, Providers};
use crate::dispatch::rate::TokenBucket;
use crate::dispatch::round::RetryPolicy;
use crate::domain::{Channel, UnixMillis};
use crate::provider::{self, BuildError};
use crate::store::{self, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("could not open the store {url}")]
    Store {
        url: String,
        #[source]
        source: StoreError,
    },
    #[error("invalid provider")]
    Provider(#[from] BuildError),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error("invalid retry settings")]
    Retry(#[from] crate::dispatch::backoff::BackoffError),
    #[error("the dispatcher failed (see the log above); nothing accepted is lost")]
    DispatcherFailed,
}

fn build_providers(config: &Config) -> Result<Providers, AppError> {
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

/// Runs the API and the dispatcher on `listener` until `shutdown` resolves,
/// then drains: the API refuses new work with 503 at once, rounds in flight
/// get the drain timeout to finish, and unfinished leases are given back.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let store = open_store(&config).await?;
    let role = config.role;
    let providers = Arc::new(build_providers(&config)?);
    let wake = Arc::new(Notify::new());
    let drain_timeout = Duration::from_millis(config.dispatch.drain_timeout_ms);

    let policy = RetryPolicy {
        backoff: config.backoff()?,
        max_rounds: config.retry.max_rounds,
        retry_after_max: Duration::from_millis(config.retry.retry_after_max_ms),
        idle_recheck: Duration::from_millis(config.dispatch.poll_interval_ms),
    };
    let settings = DispatcherSettings {
        max_in_flight: config.dispatch.max_in_flight,
        claim_batch: config.dispatch.claim_batch,
        poll_interval: Duration::from_millis(config.dispatch.poll_interval_ms),
        lease: Duration::from_millis(config.dispatch.lease_ms),
        drain_timeout,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let dispatcher = Dispatcher::new(
        Arc::clone(&store),
        Arc::clone(&providers),
        policy,
        settings,
        Arc::clone(&wake),
    );
    let state = Arc::new(ApiState {
        store: Arc::clone(&store),
        providers: Arc::clone(&providers),
        wake: Arc::clone(&wake),
        // Only where this process both accepts and delivers.
        handoff: (role.serves_api() && role.dispatches()).then(|| dispatcher.handoff()),
        draining: false.into(),
        body_limit: config.body_limit_bytes,
        max_age: Duration::from_secs(config.retry.max_age_secs),
    });

    let purger = (role.dispatches() && config.retention.delivered_max_age_secs > 0).then(|| {
        tokio::spawn(purge_loop(
            Arc::clone(&store),
            Duration::from_secs(config.retention.delivered_max_age_secs),
            Duration::from_secs(config.retention.purge_interval_secs),
            stop_rx.clone(),
        ))
    });
    // A dispatcher that dies (a bug) must not leave an instance that accepts
    // work it will never deliver: the whole process stops instead.
    let (failed_tx, failed_rx) = oneshot::channel::<()>();
    let dispatcher = if role.dispatches() {
        // Other instances' new work wakes this dispatcher too.
        store.subscribe(Arc::clone(&wake));
        let run = tokio::spawn(dispatcher.run(stop_rx));
        tokio::spawn(async move {
            let failed = run.await.is_err();
            if failed {
                tracing::error!("the dispatcher failed; stopping");
                let _ = failed_tx.send(());
            }
            failed
        })
    } else {
        drop(dispatcher);
        tokio::spawn(async { false })
    };

    let (stopping_tx, stopping_rx) = watch::channel(false);
    let draining_state = Arc::clone(&state);
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown => {}
            Ok(()) = failed_rx => {}
        }
        tracing::info!("shutting down: refusing new work, draining");
        draining_state.draining.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        let _ = stopping_tx.send(true);
    });

    let mut graceful = stopping_rx.clone();
    let router = api::router(Arc::clone(&state));
    let router = if role.serves_api() {
        router
    } else {
        router.layer(middleware::from_fn(health_only))
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = graceful.wait_for(|s| *s).await;
    });
    let mut server = tokio::spawn(server.into_future());

    // The server ends once shutdown began and its connections closed; a
    // client that keeps a connection busy gets 503s until the drain timeout.
    let mut deadline = stopping_rx;
    let served = tokio::select! {
        served = &mut server => served.ok(),
        _ = async {
            let _ = deadline.wait_for(|s| *s).await;
            tokio::time::sleep(drain_timeout).await;
        } => {
            server.abort();
            None
        }
    };
    if let Some(Err(e)) = &served {
        tracing::error!(error = %crate::error::chain(e), "the HTTP server failed");
    }
    let dispatcher_failed =
        match tokio::time::timeout(drain_timeout + Duration::from_secs(1), dispatcher).await {
            Ok(ended) => ended.unwrap_or(true),
            Err(_) => {
                tracing::error!("the dispatcher did not stop in time");
                false
            }
        };
    if let Some(purger) = purger {
        purger.abort();
    }
    store.close().await;
    tracing::info!("stopped");
    match served {
        Some(Err(e)) => Err(AppError::Serve(e)),
        _ if dispatcher_failed => Err(AppError::DispatcherFailed),
        _ => Ok(()),
    }
}

async fn open_store(config: &Config) -> Result<Arc<dyn Store>, AppError> {
    store::open(&config.store, &config.store_options())
        .await
        .map_err(|source| AppError::Store {
            url: store::redacted(&config.store),
            source,
        })
}

/// Creates the store's schema or brings it up to date, then returns: what
/// `herald migrate` does. `serve` does it too on start; concurrent runs take
/// turns (PostgreSQL: an advisory lock).
pub async fn migrate(config: &Config) -> Result<(), AppError> {
    let store = open_store(config).await?;
    store.close().await;
    Ok(())
}

/// A worker's HTTP server answers only its health checks.
async fn health_only(request: Request, next: Next) -> Response {
    match request.uri().path() {
        "/healthz" | "/readyz" => next.run(request).await,
        _ => Problem::not_found("such route on a worker-only instance").into_response(),
    }
}

/// Deletes delivered notifications older than `max_age`, every `interval`,
/// in batches so that no transaction grows large.
async fn purge_loop(
    store: Arc<dyn Store>,
    max_age: Duration,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    const BATCH: usize = 1_000;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = UnixMillis::now();
        let before = UnixMillis(now.0 - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let mut purged = 0;
        loop {
            match store.purge(before, BATCH).await {
                Ok(n) => {
                    purged += n;
                    if n < BATCH as u64 || *stop.borrow() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "purging delivered notifications failed");
                    break;
                }
            }
        }
        if purged > 0 {
            tracing::info!(purged, "purged delivered notifications past retention");
        }
    }
}

/// Binds the configured address; logs and prints where the API listens.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
