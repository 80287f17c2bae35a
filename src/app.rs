//! Wiring: builds the store, the providers, the dispatcher and the API from
//! a [`Config`], runs them, and shuts them down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::dispatch::dispatcher::{Dispatcher, DispatcherSettings};
use crate::dispatch::pool::{ChannelPool, ProviderSlot, Providers};
use crate::dispatch::round::RetryPolicy;
use crate::domain::Channel;
use crate::provider::{HttpJsonProvider, HttpProviderError};
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
    Provider(#[from] HttpProviderError),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error("invalid retry settings")]
    Retry(#[from] crate::dispatch::backoff::BackoffError),
}

fn build_providers(config: &Config) -> Result<Providers, AppError> {
    let pool = |channel: Channel| -> Result<ChannelPool, AppError> {
        let slots = config
            .providers
            .for_channel(channel)
            .iter()
            .map(|p| {
                let provider = HttpJsonProvider::new(
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

/// Runs the API and the dispatcher on `listener` until `shutdown` resolves,
/// then drains: the API refuses new work with 503 at once, rounds in flight
/// get the drain timeout to finish, and unfinished leases are given back.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let store: Arc<dyn Store> =
        store::open(&config.store, config.sqlite)
            .await
            .map_err(|source| AppError::Store {
                url: config.store.clone(),
                source,
            })?;
    let providers = Arc::new(build_providers(&config)?);
    let wake = Arc::new(Notify::new());
    let drain_timeout = Duration::from_millis(config.dispatch.drain_timeout_ms);

    let state = Arc::new(ApiState {
        store: Arc::clone(&store),
        providers: Arc::clone(&providers),
        wake: Arc::clone(&wake),
        draining: false.into(),
        body_limit: config.body_limit_bytes,
        max_age: Duration::from_secs(config.retry.max_age_secs),
    });

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
        wake,
    );
    let dispatcher = tokio::spawn(dispatcher.run(stop_rx));

    let (stopping_tx, stopping_rx) = watch::channel(false);
    let draining_state = Arc::clone(&state);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: refusing new work, draining");
        draining_state.draining.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        let _ = stopping_tx.send(true);
    });

    let mut graceful = stopping_rx.clone();
    let server =
        axum::serve(listener, api::router(Arc::clone(&state))).with_graceful_shutdown(async move {
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
    if tokio::time::timeout(drain_timeout + Duration::from_secs(1), dispatcher)
        .await
        .is_err()
    {
        tracing::error!("the dispatcher did not stop in time");
    }
    store.close().await;
    tracing::info!("stopped");
    match served {
        Some(Err(e)) => Err(AppError::Serve(e)),
        _ => Ok(()),
    }
}

/// Binds the configured address; logs and prints where the API listens.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
