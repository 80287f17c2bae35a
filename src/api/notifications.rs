//! Reading notifications back, listing them by status (the dead-letter
//! view), and replaying dead ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::ApiState;
use super::problem::Problem;
use crate::domain::{Channel, NotificationId, Priority, Status, UnixMillis};
use crate::store::{CancelOutcome, ListFilter, ReplayOutcome};

const MAX_PAGE: usize = 1_000;

fn store_problem(e: crate::store::StoreError) -> Problem {
    tracing::error!(error = %crate::error::chain(&e), "a store read failed");
    Problem::store_unavailable()
}

fn parse_id(raw: &str) -> Result<NotificationId, Problem> {
    raw.parse()
        .map_err(|_| Problem::not_found("notification with this id"))
}

pub async fn get(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = parse_id(&id)?;
    match state.store.get(id).await.map_err(store_problem)? {
        Some(record) => Ok(Json(record).into_response()),
        None => Err(Problem::not_found("notification with this id")),
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    channel: Option<String>,
    priority: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
    /// One metadata entry to match: `metadata_key` and `metadata_value`.
    metadata_key: Option<String>,
    metadata_value: Option<String>,
    /// `oldest` (first; the default) or `newest` (first).
    order: Option<String>,
    /// The `next` of the previous page (`after` is its older name).
    cursor: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

fn one_of<T>(
    name: &str,
    raw: Option<&str>,
    parse: fn(&str) -> Option<T>,
    all: &[&str],
) -> Result<Option<T>, Problem> {
    raw.map(|v| {
        parse(v).ok_or_else(|| {
            Problem::bad_query(format!(
                "{name} must be one of {}; not {v:?}",
                all.join(", ")
            ))
        })
    })
    .transpose()
}

fn timestamp(name: &str, raw: Option<&str>) -> Result<Option<UnixMillis>, Problem> {
    raw.map(|v| {
        crate::domain::rfc3339::parse(v)
            .ok_or_else(|| Problem::bad_query(format!("{name} must be an RFC 3339 date-time")))
    })
    .transpose()
}

/// `GET /v1/notifications`, oldest first (`order=newest`: newest first),
/// filtered by any of `status`, `channel`, `priority`, `created_after`
/// (inclusive) and `created_before`; `next` is the `cursor` of the following
/// page (opaque to clients; pages never shift when new notifications
/// arrive). `?status=dead` is the dead-letter view.
pub async fn list(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::bad_query(e.body_text()))?;
    let metadata = match (q.metadata_key, q.metadata_value) {
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
        status: one_of(
            "status",
            q.status.as_deref(),
            Status::parse,
            &Status::ALL.map(Status::as_str),
        )?,
        channel: one_of(
            "channel",
            q.channel.as_deref(),
            Channel::parse,
            &Channel::ALL.map(Channel::as_str),
        )?,
        priority: one_of(
            "priority",
            q.priority.as_deref(),
            Priority::parse,
            &Priority::ALL.map(Priority::as_str),
        )?,
        created_from: timestamp("created_after", q.created_after.as_deref())?,
        created_before: timestamp("created_before", q.created_before.as_deref())?,
        newest_first: one_of(
            "order",
            q.order.as_deref(),
            |o| match o {
                "oldest" => Some(false),
                "newest" => Some(true),
                _ => None,
            },
            &["oldest", "newest"],
        )?
        .unwrap_or(false),
    };
    let after = match q.cursor.as_deref().or(q.after.as_deref()) {
        Some(a) => Some(
            a.parse::<NotificationId>()
                .map_err(|_| Problem::bad_query("cursor: not a cursor this API gave".into()))?,
        ),
        None => None,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let items = state
        .store
        .list(filter, after, limit)
        .await
        .map_err(store_problem)?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|n| n.id))
        .flatten();
    Ok(Json(json!({"items": items, "next": next})).into_response())
}

/// Puts a dead or failed notification back in the queue.
pub async fn replay(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = parse_id(&id)?;
    let now = UnixMillis::now();
    let outcome = state
        .store
        .replay(id, now, now.plus(state.max_age))
        .await
        .map_err(store_problem)?;
    match outcome {
        ReplayOutcome::Requeued => {
            state.wake.notify_one();
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"id": id, "status": "queued"})),
            )
                .into_response())
        }
        ReplayOutcome::NotFound => Err(Problem::not_found("notification with this id")),
        ReplayOutcome::NotReplayable(status) => Err(Problem::conflict(format!(
            "only dead or failed notifications can be replayed; this one is {status}"
        ))),
    }
}

/// `DELETE /v1/notifications/{id}`: takes back a notification that has not
/// started sending; it becomes `canceled` and is never sent.
pub async fn cancel(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = parse_id(&id)?;
    let outcome = state
        .store
        .cancel(id, UnixMillis::now())
        .await
        .map_err(store_problem)?;
    match outcome {
        CancelOutcome::Canceled => {
            Ok(Json(json!({"id": id, "status": "canceled"})).into_response())
        }
        CancelOutcome::NotFound => Err(Problem::not_found("notification with this id")),
        CancelOutcome::NotCancelable(status) => Err(Problem::conflict(format!(
            "only scheduled, queued or retrying notifications can be canceled; this one is {status}"
        ))),
    }
}

/// How many notifications are in each status.
pub async fn stats(State(state): State<Arc<ApiState>>) -> Result<Response, Problem> {
    let counts = state.store.counts().await.map_err(store_problem)?;
    let mut by_status: BTreeMap<&str, u64> = Status::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for (status, n) in counts {
        by_status.insert(status.as_str(), n);
    }
    Ok(Json(json!({ "by_status": by_status })).into_response())
}
