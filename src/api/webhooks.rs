//! `GET /v1/webhooks/deliveries`: the webhook outbox for the operator,
//! oldest first; `?status=failed` lists what no receiver took.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::ApiState;
use super::problem::Problem;
use crate::domain::webhook::WebhookId;
use crate::store::WebhookStatus;

const MAX_PAGE: usize = 1_000;

#[derive(Debug, Deserialize)]
pub struct DeliveriesQuery {
    status: Option<String>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    limit: Option<usize>,
}

pub async fn deliveries(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<DeliveriesQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::bad_query(e.body_text()))?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            WebhookStatus::parse(s).ok_or_else(|| {
                Problem::bad_query(format!(
                    "status must be one of {}; not {s:?}",
                    WebhookStatus::ALL.map(WebhookStatus::as_str).join(", ")
                ))
            })
        })
        .transpose()?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<WebhookId>()
                .map_err(|_| Problem::bad_query("cursor: not a cursor this API gave".into()))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let items = state
        .store
        .webhook_deliveries(status, after, limit)
        .await
        .map_err(|e| {
            tracing::error!(error = %crate::error::chain(&e), "a store read failed");
            Problem::store_unavailable()
        })?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|d| d.id))
        .flatten();
    Ok(Json(json!({"items": items, "next": next})).into_response())
}
