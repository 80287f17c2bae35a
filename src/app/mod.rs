//! Wiring: builds the store, the providers, the dispatcher and the API from
//! a [`Config`], runs them, and shuts them down in order.
//!
//! The [`Role`](crate::config::Role) decides which halves run: `all` both, `api` only the API
//! (its notifications are delivered by other instances on the same
//! database), `worker` only the dispatcher, the webhook worker and the
//! retention purge, with an HTTP server that answers just `/healthz` and
//! `/readyz`.

mod backlog;
mod components;
mod connection;
mod delivery;
mod http;
pub mod keys;
mod providers;
mod purge;
pub mod reload;
pub mod rotation;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::api::ApiState;
use crate::api::auth::Auth;
use crate::api::live::Live;
use crate::config::{Config, ConfigSource};
use crate::dispatch::live::LiveProviders;
use crate::provider::BuildError;
use crate::store::{self, Store, StoreError};
use crate::tls::{ListenerTls, TlsError};
use components::{Component, Components};
use delivery::Delivery;
use http::HttpServer;

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
    #[error("could not listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid retry settings")]
    Retry(#[from] crate::resilience::backoff::BackoffError),
    #[error("invalid webhook settings")]
    Webhooks(#[from] crate::webhook::ReceiversError),
    #[error("cannot serve HTTPS with http.tls_cert_file and http.tls_key_file")]
    Tls(#[from] TlsError),
    #[error(
        "refusing to serve on {addr} without API keys: anyone who reaches it could send \
         on your providers' bill. Create keys (herald keys create) and set auth.required = true, \
         or pass --insecure-no-auth if something in front of Herald checks callers"
    )]
    InsecureNoAuth { addr: SocketAddr },
    #[error("the dispatcher failed (see the log above); nothing accepted is lost")]
    DispatcherFailed,
}

/// Runs the API and the dispatcher on `listener` until `shutdown` resolves,
/// then drains: the API refuses new work with 503 at once, rounds in flight
/// get the drain timeout to finish, and unfinished leases are given back.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    launch(config, None, listener, shutdown, || {}).await
}

/// Like [`serve`], calling `ready` once the store is open, the providers
/// built and the API answering. With a `source`, SIGHUP and
/// `POST /v1/providers/reload` read it again and apply its providers.
pub async fn launch(
    config: Config,
    source: Option<ConfigSource>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> Result<(), AppError> {
    // Caught before anything else: a SIGHUP during start-up must not end
    // the process; it is handled once the providers are up.
    let hangup = reload::catch_hangup();
    let drain_timeout = Duration::from_millis(config.dispatch.drain_timeout_ms);
    refuse_exposure_without_keys(&config)?;
    let tls = listener_tls(&config)?.map(Arc::new);
    if let Some(tls) = &tls {
        reload::note_certificate_expiry(tls);
    }
    if clear_text_beyond_loopback(&config) {
        tracing::warn!(
            addr = %config.listen,
            "serving plain HTTP beyond loopback: API keys and personal data (phone numbers, \
             addresses, texts) travel in clear text unless a proxy in front terminates TLS; \
             http.tls_cert_file and http.tls_key_file make Herald serve HTTPS itself"
        );
    }
    let auth_required = config.auth_required();
    let store = open_store(&config).await?;
    let auth = Arc::new(Auth::new(auth_required, config.auth.global_rate_per_sec));
    if auth_required {
        auth.refresh(store.as_ref())
            .await
            .map_err(|source| AppError::Store {
                url: store::redacted(&config.store),
                source,
            })?;
    }
    let providers = Arc::new(LiveProviders::new(providers::build(
        &config.providers,
        &config.breaker(),
    )?));
    // A provider disabled before the start sends nothing, from the first round.
    providers
        .refresh(store.as_ref())
        .await
        .map_err(|source| AppError::Store {
            url: store::redacted(&config.store),
            source,
        })?;
    let reloader = source.map(|source| {
        Arc::new(reload::Reloader::new(
            source,
            &config,
            Arc::clone(&providers),
        ))
    });
    let wake = Arc::new(Notify::new());
    let delivery = Delivery::new(&config, &store, &providers, &wake)?;
    let state = Arc::new(ApiState {
        store: Arc::clone(&store),
        providers: Arc::clone(&providers),
        reload: reloader
            .clone()
            .map(|r| r as Arc<dyn crate::api::providers::Reload>),
        wake: Arc::clone(&wake),
        handoff: delivery.handoff(),
        draining: false.into(),
        body_limit: config.body_limit_bytes,
        max_age: Duration::from_secs(config.retry.max_age_secs),
        schedule_horizon: Duration::from_secs(config.accept.schedule_horizon_secs),
        idempotency_ttl: Duration::from_secs(config.accept.idempotency_ttl_secs),
        batch_max_items: config.accept.batch_max_items,
        batch_body_limit: config.accept.batch_body_limit_bytes,
        auth: Arc::clone(&auth),
        live: Arc::new(Live::new()),
        callbacks: config
            .callback_policy()
            .map_err(crate::webhook::ReceiversError::from)?,
        browsers: (!auth_required)
            .then(|| crate::api::browsers::BrowserGuard::new(&config.http.allowed_hosts)),
    });

    let (stop_tx, stop) = watch::channel(false);
    let mut running = Components::default();
    running.add(
        "delivery",
        Component::Delivery(delivery.start(stop.clone())),
    );
    // The event stream's sampler; it ends every stream when told to stop.
    running.add_task(
        "live",
        config.role.serves_api().then(|| {
            let store = Arc::clone(&store);
            tokio::spawn(Arc::clone(&state.live).run(
                Arc::clone(&providers),
                move || store.state(),
                stop.clone(),
            ))
        }),
    );
    running.add_task("backlog", Some(backlog::start(Arc::clone(&store))));
    running.add_task(
        "rotation",
        Some(rotation::start(
            Arc::clone(&providers),
            Arc::clone(&store),
            Duration::from_millis(config.dispatch.providers_refresh_ms),
        )),
    );
    running.add_task(
        "keys",
        auth_required.then(|| {
            keys::start(
                Arc::clone(&auth),
                Arc::clone(&store),
                Duration::from_millis(config.auth.refresh_ms),
            )
        }),
    );
    running.add_task(
        "hangup",
        hangup.map(|hangup| reload::on_hangup(hangup, reloader, tls.clone())),
    );
    if let Some(addr) = config.metrics.listen {
        let (listener, local) = bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })?;
        tracing::info!(addr = %local, tls = tls.is_some(), "metrics listening");
        let metrics = HttpServer::start_metrics(
            &config,
            listener,
            tls.as_deref(),
            Arc::clone(&state),
            stop.clone(),
        );
        running.add("metrics", Component::Http(metrics));
    }
    let http = HttpServer::start(&config, listener, tls.as_deref(), Arc::clone(&state), stop);
    running.add("http", Component::Http(http));
    ready();

    tokio::select! {
        () = shutdown => {}
        ended = running.first_ended() => tracing::error!(component = ended, "stopped by itself; stopping"),
    }

    // The order of shutdown: refuse new work at once; let the HTTP server
    // finish its requests and the dispatcher its rounds (both within the
    // drain timeout); only then close the store they both write to.
    tracing::info!("shutting down: refusing new work, draining");
    state.draining.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let dispatcher_failed = running.stop(drain_timeout).await;
    store.close().await;
    tracing::info!("stopped");
    if dispatcher_failed {
        return Err(AppError::DispatcherFailed);
    }
    Ok(())
}

/// A non-loopback `listen` without API keys is refused unless
/// `--insecure-no-auth` says so: checked before binding, too.
pub fn refuse_exposure_without_keys(config: &Config) -> Result<(), AppError> {
    if !config.auth_required() && !config.listen.ip().is_loopback() && !config.auth.insecure_no_auth
    {
        return Err(AppError::InsecureNoAuth {
            addr: config.listen,
        });
    }
    Ok(())
}

/// The listeners' TLS, when `http.tls_cert_file` and `http.tls_key_file`
/// are set: read at start-up, before `ready`, so that a pair that does not
/// load stops `serve` before it says it listens.
fn listener_tls(config: &Config) -> Result<Option<ListenerTls>, AppError> {
    let Some((cert_file, key_file)) = config.http.tls_files() else {
        return Ok(None);
    };
    Ok(Some(ListenerTls::load(cert_file, key_file)?))
}

/// Plain HTTP beyond loopback is allowed (a proxy in front may terminate
/// TLS), but worth a warning.
fn clear_text_beyond_loopback(config: &Config) -> bool {
    config.http.tls_files().is_none() && !config.listen.ip().is_loopback()
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

/// Binds the configured address; answers the listener and the address it
/// got (with port 0, a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_worth_a_warning_only_beyond_loopback() {
        let mut config = Config::default();
        assert!(!clear_text_beyond_loopback(&config));
        config.listen = "10.0.0.5:8080".parse().unwrap();
        assert!(clear_text_beyond_loopback(&config));
        config.http.tls_cert_file = Some("cert.pem".into());
        config.http.tls_key_file = Some("key.pem".into());
        assert!(!clear_text_beyond_loopback(&config));
    }
}
