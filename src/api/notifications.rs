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
use crate::domain::{NotificationId, Status, UnixMillis};
use crate::store::{CancelOutcome, ReplayOutcome};

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
    status: String,
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/notifications?status=dead[&after=ID][&limit=N]`, oldest first;
/// `next` is the `after` of the following page.
pub async fn list(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::bad_query(e.body_text()))?;
    let status = Status::parse(&q.status).ok_or_else(|| {
        Problem::bad_query(format!(
            "status must be one of {}; not {:?}",
            Status::ALL.map(Status::as_str).join(", "),
            q.status
        ))
    })?;
    let after = match q.after.as_deref() {
        Some(a) => Some(
            a.parse::<NotificationId>()
                .map_err(|e| Problem::bad_query(format!("after: {e}")))?,
        ),
        None => None,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let items = state
        .store
        .list(status, after, limit)
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
