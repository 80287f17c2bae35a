use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::problem::Problem;

#[derive(Serialize, ToSchema)]
pub struct Health {
    status: Alive,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum Alive {
    Ok,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    status: ReadyStatus,
    /// Why the store is unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize, ToSchema)]
enum ReadyStatus {
    #[serde(rename = "ready")]
    Ready,
    #[serde(rename = "draining")]
    Draining,
    #[serde(rename = "store unavailable")]
    StoreUnavailable,
}

/// Liveness: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "Up", body = Health)),
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: Alive::Ok })
}

/// Readiness: the store answers and this instance takes work.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Draining, or the store does not answer (or, as a problem, \
            over the connection cap)", content(
            (Readiness = "application/json"),
            (Problem = "application/problem+json"),
        )),
    ),
)]
pub async fn readyz(State(state): State<Arc<ApiState>>) -> (StatusCode, Json<Readiness>) {
    let not_ready = |status, error| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness { status, error }),
        )
    };
    if state.is_draining() {
        return not_ready(ReadyStatus::Draining, None);
    }
    match state.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(Readiness {
                status: ReadyStatus::Ready,
                error: None,
            }),
        ),
        Err(e) => not_ready(ReadyStatus::StoreUnavailable, Some(crate::error::chain(&e))),
    }
}
