//! The HTTP API: accepts notifications, answers questions about them.

pub mod auth;
mod batch;
pub mod browsers;
mod dashboard;
mod events;
mod health;
mod idempotency;
mod listing;
pub mod live;
mod metrics;
mod notifications;
pub mod openapi;
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
use tokio::sync::Notify;
use utoipa::openapi::path::Paths;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

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
    /// With keys off: the checks that keep other sites' pages out.
    pub browsers: Option<browsers::BrowserGuard>,
}

impl ApiState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// The API; with `/metrics` too unless `metrics.listen` serves it apart.
pub fn router(state: Arc<ApiState>, with_metrics: bool) -> Router {
    let work = work_routes(state.batch_body_limit).layer(middleware::from_fn_with_state(
        Arc::clone(&state),
        refuse_while_draining,
    ));
    let (router, _) = open_routes(with_metrics).merge(work).split_for_parts();
    router
        .fallback(|| async { Problem::not_found("such route") })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::authorize,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            browsers::guard,
        ))
        .with_state(state)
}

// Every route is added with `routes!(handler)`: the handler's
// `#[utoipa::path]` gives its method and path, so the route is served
// exactly as it is documented (GET /openapi.json, `herald openapi`). A new
// route is its handler's attribute and one more line below; clippy refuses
// `Router::route`, which would serve a route the document does not show.

/// The API's work, refused with 503 while draining.
fn work_routes(batch_body_limit: usize) -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::default()
        .routes(routes!(submit::sms))
        .routes(routes!(submit::email))
        .routes(compatible("/api/sms", routes!(submit::sms)))
        .routes(compatible("/api/email", routes!(submit::email)))
        .routes(routes!(batch::batch).layer(DefaultBodyLimit::max(batch_body_limit)))
        .routes(routes!(notifications::list))
        .routes(routes!(notifications::get, notifications::cancel))
        .routes(routes!(notifications::replay))
        .routes(routes!(notifications::stats))
        .routes(routes!(providers::list))
        .routes(routes!(providers::reload))
        .routes(routes!(providers::disable))
        .routes(routes!(providers::enable))
        .routes(routes!(events::stream))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(dashboard::root))
        .routes(routes!(dashboard::page))
        .routes(routes!(dashboard::script))
        .routes(routes!(dashboard::style))
}

/// Answered while draining too (the drain is worth watching): health,
/// readiness, metrics and the document.
fn open_routes(with_metrics: bool) -> OpenApiRouter<Arc<ApiState>> {
    let routes = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(openapi::serve));
    if with_metrics {
        routes.routes(routes!(metrics::scrape))
    } else {
        routes
    }
}

/// Every route the API serves, `/metrics` included, as documented.
fn documented_routes() -> utoipa::openapi::OpenApi {
    open_routes(true).merge(work_routes(0)).into_openapi()
}

/// The same operation at the reference service's `path`, so its clients
/// can switch to Herald unchanged.
fn compatible(
    path: &str,
    (schemas, paths, method_router): UtoipaMethodRouter<Arc<ApiState>>,
) -> UtoipaMethodRouter<Arc<ApiState>> {
    let mut moved = Paths::new();
    for (_, mut item) in paths.paths {
        for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
            operation.operation_id = operation
                .operation_id
                .take()
                .map(|id| format!("{id}_compat"));
            operation.tags = Some(vec!["compatibility".into()]);
        }
        moved.paths.insert(path.to_owned(), item);
    }
    (schemas, moved, method_router)
}

/// `/metrics` alone, for its own address (`metrics.listen`).
pub fn metrics_router(state: Arc<ApiState>) -> Router {
    let (router, _) = OpenApiRouter::default()
        .routes(routes!(metrics::scrape))
        .split_for_parts();
    router
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
