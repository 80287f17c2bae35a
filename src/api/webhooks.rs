//! `GET /v1/webhooks/deliveries`: the webhook outbox for the operator,
//! oldest first; `?status=failed` lists what no receiver took, and
//! `POST /v1/webhooks/deliveries/{id}/redeliver` sends one of those again.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::problem::Problem;
use super::{ApiState, listing};
use crate::domain::UnixMillis;
use crate::domain::webhook::WebhookId;
use crate::store::{RedeliverOutcome, WebhookDeliveryRecord, WebhookStatus};

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
    let status = listing::one_of(
        "status",
        q.status.as_deref(),
        WebhookStatus::parse,
        &WebhookStatus::ALL.map(WebhookStatus::as_str),
    )?;
    let after = listing::cursor::<WebhookId>(q.cursor.as_deref())?;
    let limit = listing::limit(q.limit);
    let items = state
        .store
        .webhook_deliveries(status, after, limit)
        .await
        .map_err(Problem::from_store)?;
    let next = listing::next(&items, limit, |d| d.id);
    Ok(Json(DeliveryPage { items, next }).into_response())
}

/// The delivery a path names.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeliveryPath {
    /// As the listing gave it (`msg_…`, the `webhook-id` receivers saw).
    #[param(value_type = WebhookId)]
    id: String,
}

/// A delivery that will be attempted again.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivery {
    id: WebhookId,
    /// `pending`: due at once.
    status: WebhookStatus,
}

/// Deliver a failed webhook again.
///
/// For a receiver that was down, misconfigured or refusing: the delivery
/// is `pending` again, due at once, with the attempts and maximum age of a
/// new one (its `created_at` becomes now). It keeps its id, so the
/// `webhook-id` a receiver dedupes by is the same.
#[utoipa::path(
    post,
    path = "/v1/webhooks/deliveries/{id}/redeliver",
    operation_id = "redeliver_webhook",
    tag = "webhooks",
    params(DeliveryPath),
    responses(
        (status = 202, description = "Pending again", body = Redelivery),
        (status = 404, description = "No webhook delivery with this id"),
        (status = 409, description = "It has not failed"),
    ),
)]
pub async fn redeliver(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<DeliveryPath>, PathRejection>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found("webhook delivery with this id");
    let id: WebhookId = path
        .ok()
        .and_then(|Path(p)| p.id.parse().ok())
        .ok_or_else(not_found)?;
    let outcome = state
        .store
        .redeliver_webhook(id, UnixMillis::now())
        .await
        .map_err(Problem::from_store)?;
    match outcome {
        RedeliverOutcome::Requeued => Ok((
            StatusCode::ACCEPTED,
            Json(Redelivery {
                id,
                status: WebhookStatus::Pending,
            }),
        )
            .into_response()),
        RedeliverOutcome::NotFound => Err(not_found()),
        RedeliverOutcome::NotFailed(status) => Err(Problem::conflict(format!(
            "only a failed delivery can be delivered again; this one is {}",
            status.as_str()
        ))),
    }
}
