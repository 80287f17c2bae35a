//! `GET /v1/webhooks/deliveries`: the webhook outbox for the operator,
//! oldest first; `?status=failed` lists what no receiver took.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::problem::Problem;
use crate::domain::webhook::WebhookId;
use crate::store::{WebhookDeliveryRecord, WebhookStatus};

const MAX_PAGE: usize = 1_000;

/// The listing's filter and page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Only deliveries in this status (`failed`: what no receiver took).
    #[param(value_type = Option<WebhookStatus>)]
    status: Option<String>,
    /// The `next` of the previous page.
    #[param(value_type = Option<WebhookId>)]
    cursor: Option<String>,
    /// Items per page (100 when not given); taken as 1 to 1,000.
    #[param(minimum = 0)]
    limit: Option<usize>,
}

/// A page of webhook deliveries.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookDeliveryPage)]
pub struct DeliveryPage {
    /// Oldest first.
    items: Vec<WebhookDeliveryRecord>,
    /// The `cursor` of the following page; `null` on the last one.
    #[schema(required = true)]
    next: Option<WebhookId>,
}

/// List webhook deliveries.
///
/// Every event sent to a receiver (a `[[webhooks]]` endpoint or a
/// notification's `callback_url`), oldest first, in any status or one;
/// `next` is the `cursor` of the following page. Unknown parameters are
/// ignored.
#[utoipa::path(
    get,
    path = "/v1/webhooks/deliveries",
    operation_id = "list_webhook_deliveries",
    tag = "webhooks",
    params(DeliveriesQuery),
    responses(
        (status = 200, description = "A page", body = DeliveryPage),
        (status = 400, description = "The status or the cursor is invalid"),
    ),
)]
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
    Ok(Json(DeliveryPage { items, next }).into_response())
}
