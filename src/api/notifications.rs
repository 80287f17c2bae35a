//! Reading notifications back, listing them by status (the dead-letter
//! view), and replaying dead ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::Schema;
use utoipa::{IntoParams, ToSchema};

use super::auth::Sees;
use super::problem::Problem;
use super::submit::Receipt;
use super::{ApiState, listing};
use crate::domain::{Channel, NotificationId, Priority, Status, UnixMillis};
use crate::store::{
    CancelOutcome, ListFilter, NotificationRecord, NotificationSummary, ReplayOutcome,
};

/// The notification a path names.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct NotificationPath {
    /// As the 202 answer gave it.
    #[param(value_type = NotificationId)]
    id: String,
}

/// The id in the path; one that is not an id (nor even UTF-8) names no
/// notification.
fn parse_id(
    path: Result<Path<NotificationPath>, PathRejection>,
) -> Result<NotificationId, Problem> {
    path.ok()
        .and_then(|Path(p)| p.id.parse().ok())
        .ok_or_else(|| Problem::not_found("notification with this id"))
}

/// Status, history and every attempt of one notification.
#[utoipa::path(
    get,
    path = "/v1/notifications/{id}",
    operation_id = "get_notification",
    tag = "notifications",
    params(NotificationPath),
    responses(
        (status = 200, description = "The notification", body = NotificationRecord),
        (status = 404, description = "No notification with this id, or one another API key sent (a key without `admin` sees only its own)"),
    ),
)]
pub async fn get(
    State(state): State<Arc<ApiState>>,
    sees: Sees,
    path: Result<Path<NotificationPath>, PathRejection>,
) -> Result<Response, Problem> {
    let id = parse_id(path)?;
    match state.store.get(id).await.map_err(Problem::from_store)? {
        // Another key's notification is answered as one that does not
        // exist: an id proves nothing about who sent it.
        Some(record) if sees.allows(record.created_by.as_deref()) => {
            Ok(Json(record).into_response())
        }
        _ => Err(Problem::not_found("notification with this id")),
    }
}

/// A listing's filters and page; every filter given must match.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(value_type = Option<Status>)]
    status: Option<String>,
    #[param(value_type = Option<Channel>)]
    channel: Option<String>,
    #[param(value_type = Option<Priority>)]
    priority: Option<String>,
    /// Created at or after this (RFC 3339).
    #[param(format = DateTime)]
    created_after: Option<String>,
    /// Created before this (RFC 3339).
    #[param(format = DateTime)]
    created_before: Option<String>,
    /// One metadata entry to match: `metadata_key` and `metadata_value`
    /// go together.
    metadata_key: Option<String>,
    metadata_value: Option<String>,
    /// `oldest` first (the default) or `newest` first; follow `next` with
    /// the same order.
    #[param(value_type = Option<Order>, inline)]
    order: Option<String>,
    /// The `next` of the previous page.
    #[param(value_type = Option<NotificationId>)]
    cursor: Option<String>,
    /// The older name of `cursor`; not together with it.
    #[param(value_type = Option<NotificationId>)]
    after: Option<String>,
    /// Items per page (100 when not given); taken as 1 to 1,000.
    #[param(minimum = 0)]
    limit: Option<usize>,
}

/// Which end of the listing comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(rename_all = "lowercase")]
enum Order {
    Oldest,
    Newest,
}

impl Order {
    const ALL: [Order; 2] = [Order::Oldest, Order::Newest];

    fn as_str(self) -> &'static str {
        match self {
            Order::Oldest => "oldest",
            Order::Newest => "newest",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// A page of a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page {
    /// In the listing's `order`: oldest first unless `newest` was asked for.
    items: Vec<NotificationSummary>,
    /// The `cursor` of the following page; `null` on the last one.
    #[schema(required = true)]
    next: Option<NotificationId>,
}

/// How many notifications are in each status.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    #[schema(schema_with = by_status)]
    by_status: BTreeMap<&'static str, u64>,
}

/// Every status, always present, with its count.
fn by_status() -> Schema {
    super::openapi::counts(Status::ALL.map(Status::as_str)).into()
}

fn timestamp(name: &str, raw: Option<&str>) -> Result<Option<UnixMillis>, Problem> {
    raw.map(|v| {
        crate::domain::rfc3339::parse(v)
            .ok_or_else(|| Problem::bad_query(format!("{name} must be an RFC 3339 date-time")))
    })
    .transpose()
}

/// List notifications.
///
/// Oldest first (`order=newest`: newest first), by the time each was
/// accepted, and those one instance accepted in the same millisecond (a
/// batch's items) in the order it accepted them; filtered by any of
/// `status`, `channel`, `priority`, `created_after` (inclusive),
/// `created_before` and one metadata entry; `next` is the `cursor` of the
/// following page (opaque to clients; pages never shift when new
/// notifications arrive). `?status=dead` is the dead-letter view. A key
/// without the `admin` scope lists only the notifications it sent.
#[utoipa::path(
    get,
    path = "/v1/notifications",
    operation_id = "list_notifications",
    tag = "notifications",
    params(ListQuery),
    responses(
        (status = 200, description = "A page", body = Page),
        (status = 400, description = "A filter, the order or the cursor is invalid"),
    ),
)]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    sees: Sees,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::bad_query(e.body_text()))?;
    let metadata = match (q.metadata_key, q.metadata_value) {
        // No stored entry holds one (they are refused at accept), and
        // PostgreSQL would refuse a NUL in the query with an error.
        (Some(k), Some(v))
            if crate::domain::validation::has_control(&k)
                || crate::domain::validation::has_control(&v) =>
        {
            return Err(Problem::bad_query(
                "metadata_key and metadata_value must not contain control characters".into(),
            ));
        }
        (Some(k), Some(v)) => Some((k, v)),
        (None, None) => None,
        _ => {
            return Err(Problem::bad_query(
                "metadata_key and metadata_value go together".into(),
            ));
        }
    };
    let filter = ListFilter {
        metadata,
        status: listing::one_of(
            "status",
            q.status.as_deref(),
            Status::parse,
            &Status::ALL.map(Status::as_str),
        )?,
        channel: listing::one_of(
            "channel",
            q.channel.as_deref(),
            Channel::parse,
            &Channel::ALL.map(Channel::as_str),
        )?,
        priority: listing::one_of(
            "priority",
            q.priority.as_deref(),
            Priority::parse,
            &Priority::ALL.map(Priority::as_str),
        )?,
        created_from: timestamp("created_after", q.created_after.as_deref())?,
        created_before: timestamp("created_before", q.created_before.as_deref())?,
        newest_first: listing::one_of(
            "order",
            q.order.as_deref(),
            Order::parse,
            &Order::ALL.map(Order::as_str),
        )? == Some(Order::Newest),
        created_by: sees.only(),
    };
    let after = match (q.cursor.as_deref(), q.after.as_deref()) {
        // Two cursors: one of them would be ignored unchecked.
        (Some(_), Some(_)) => {
            return Err(Problem::bad_query(
                "give cursor or after (its older name), not both".into(),
            ));
        }
        (given, older) => listing::cursor::<NotificationId>(given.or(older))?,
    };
    let limit = listing::limit(q.limit);
    let items = state
        .store
        .list(filter, after, limit)
        .await
        .map_err(Problem::from_store)?;
    let next = listing::next(&items, limit, |n| n.id);
    Ok(Json(Page { items, next }).into_response())
}

/// Replay a dead or failed notification.
///
/// It goes back in the queue with a fresh round budget.
#[utoipa::path(
    post,
    path = "/v1/notifications/{id}/replay",
    operation_id = "replay_notification",
    tag = "notifications",
    params(NotificationPath),
    responses(
        (status = 202, description = "Queued again", body = Receipt),
        (status = 404, description = "No notification with this id"),
        (status = 409, description = "It is neither dead nor failed"),
    ),
)]
pub async fn replay(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<NotificationPath>, PathRejection>,
) -> Result<Response, Problem> {
    let id = parse_id(path)?;
    let now = UnixMillis::now();
    let outcome = state
        .store
        .replay(id, now, now.plus(state.max_age))
        .await
        .map_err(Problem::from_store)?;
    match outcome {
        ReplayOutcome::Requeued => {
            state.wake.notify_one();
            Ok((
                StatusCode::ACCEPTED,
                Json(Receipt {
                    id,
                    status: Status::Queued,
                }),
            )
                .into_response())
        }
        ReplayOutcome::NotFound => Err(Problem::not_found("notification with this id")),
        ReplayOutcome::NotReplayable(status) => Err(Problem::conflict(format!(
            "only dead or failed notifications can be replayed; this one is {status}"
        ))),
    }
}

/// Cancel a notification.
///
/// Takes back one that has not started sending (`scheduled`, `queued` or
/// `retrying`): it becomes `canceled`, is never sent, and stays readable.
#[utoipa::path(
    delete,
    path = "/v1/notifications/{id}",
    operation_id = "cancel_notification",
    tag = "notifications",
    params(NotificationPath),
    responses(
        (status = 200, description = "Canceled", body = Receipt),
        (status = 404, description = "No notification with this id, or one another API key sent (a key without `admin` sees only its own)"),
        (status = 409, description = "It is sending (it may be at a provider already) or final"),
    ),
)]
pub async fn cancel(
    State(state): State<Arc<ApiState>>,
    sees: Sees,
    path: Result<Path<NotificationPath>, PathRejection>,
) -> Result<Response, Problem> {
    let id = parse_id(path)?;
    // Who sent a notification never changes, so this check cannot race
    // the cancel.
    if sees != Sees::All {
        let record = state.store.get(id).await.map_err(Problem::from_store)?;
        if !record.is_some_and(|r| sees.allows(r.created_by.as_deref())) {
            return Err(Problem::not_found("notification with this id"));
        }
    }
    let outcome = state
        .store
        .cancel(id, UnixMillis::now())
        .await
        .map_err(Problem::from_store)?;
    match outcome {
        CancelOutcome::Canceled => Ok(Json(Receipt {
            id,
            status: Status::Canceled,
        })
        .into_response()),
        CancelOutcome::NotFound => Err(Problem::not_found("notification with this id")),
        CancelOutcome::NotCancelable(status) => Err(Problem::conflict(format!(
            "only scheduled, queued or retrying notifications can be canceled; this one is {status}"
        ))),
    }
}

/// Count notifications by status.
#[utoipa::path(
    get,
    path = "/v1/stats",
    operation_id = "stats",
    tag = "operations",
    responses((status = 200, description = "Every status with its count", body = Stats)),
)]
pub async fn stats(State(state): State<Arc<ApiState>>) -> Result<Response, Problem> {
    let counts = state.store.counts().await.map_err(Problem::from_store)?;
    let mut by_status: BTreeMap<&str, u64> = Status::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for (status, n) in counts {
        by_status.insert(status.as_str(), n);
    }
    Ok(Json(Stats { by_status }).into_response())
}
