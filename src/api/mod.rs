//! The HTTP API: accepts notifications, answers questions about them.

pub mod auth;
mod batch;
mod dashboard;
mod events;
mod health;
mod idempotency;
pub mod live;
mod metrics;
mod notifications;
pub mod problem;
pub mod providers;
mod submit;
mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Notify;

use crate::dispatch::handoff::Handoff;
use crate::dispatch::live::LiveProviders;
use crate::domain::callback::CallbackPolicy;
use crate::store::Store;
use problem::Problem;

/// What the handlers share.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    /// The providers in use: their health view, disable and enable.
    pub providers: Arc<LiveProviders>,
    /// Reloads the config file's providers; `None` without a config file.
    pub reload: Option<Arc<dyn providers::Reload>>,
    /// Tells the dispatcher that new work was stored.
    pub wake: Arc<Notify>,
    /// Passes fresh notifications straight to this process's dispatcher,
    /// when it runs one.
    pub handoff: Option<Handoff>,
    /// Set on shutdown: refuse new work, report not ready.
    pub draining: AtomicBool,
    pub body_limit: usize,
    /// How long a notification may keep being retried.
    pub max_age: Duration,
    /// How far ahead `send_at` may be.
    pub schedule_horizon: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// Most items one `POST /v1/batch` may carry, and its largest body.
    pub batch_max_items: usize,
    pub batch_body_limit: usize,
    /// API keys and rate limits.
    pub auth: Arc<auth::Auth>,
    /// What `GET /v1/events` streams.
    pub live: Arc<live::Live>,
    /// Which `callback_url`s a notification may name.
    pub callbacks: CallbackPolicy,
}

impl ApiState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// The API; with `/metrics` too unless `metrics.listen` serves it apart.
pub fn router(state: Arc<ApiState>, with_metrics: bool) -> Router {
    let limit = state.body_limit;
    let batch_limit = state.batch_body_limit;
    let work = Router::new()
        .route("/v1/sms", post(submit::sms))
        .route("/v1/email", post(submit::email))
        // The reference service's paths, so its clients can switch unchanged.
        .route("/api/sms", post(submit::sms))
        .route("/api/email", post(submit::email))
        .route(
            "/v1/batch",
            post(batch::batch).layer(DefaultBodyLimit::max(batch_limit)),
        )
        .route("/v1/notifications", get(notifications::list))
        .route(
            "/v1/notifications/{id}",
            get(notifications::get).delete(notifications::cancel),
        )
        .route("/v1/notifications/{id}/replay", post(notifications::replay))
        .route("/v1/stats", get(notifications::stats))
        .route("/v1/providers", get(providers::list))
        .route("/v1/providers/reload", post(providers::reload))
        .route("/v1/providers/{name}/disable", post(providers::disable))
        .route("/v1/providers/{name}/enable", post(providers::enable))
        .route("/v1/events", get(events::stream))
        .route("/", get(dashboard::root))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/style.css", get(dashboard::style))
        .route("/v1/webhooks/deliveries", get(webhooks::deliveries))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            refuse_while_draining,
        ));
    let mut router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if with_metrics {
        // Scraped while draining too: the drain is worth watching.
        router = router.route("/metrics", get(metrics::scrape));
    }
    router
        .merge(work)
        .fallback(|| async { Problem::not_found("such route") })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::authorize,
        ))
        .with_state(state)
}

/// `/metrics` alone, for its own address (`metrics.listen`).
pub fn metrics_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::scrape))
        .fallback(|| async { Problem::not_found("such route on the metrics address") })
        .with_state(state)
}

async fn refuse_while_draining(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.is_draining() {
        return Problem::draining().into_response();
    }
    next.run(request).await
}
