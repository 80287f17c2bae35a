//! `POST /v1/batch`: many notifications in one request and one commit.
//! Each item is validated on its own; the valid ones are stored together,
//! and the answer has one result per item, in order.

use crate::resilience::clock;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::auth::CallerScope;
use super::problem::Problem;
use super::submit::{
    ACCEPTED, Keyed, Receipt, hand_over, keyed_by, parse_object, prepare, read_body,
    refuse_unsendable, store, validate,
};
use super::{ApiState, idempotency};
use crate::domain::options::{OptionLimits, RawOptions};
use crate::domain::validation::{FieldError, RawEmail, RawSms, validate_email, validate_sms};
use crate::domain::{Message, UnixMillis};

#[derive(Debug, Deserialize)]
struct RawBatch {
    notifications: Option<Value>,
}

/// What a batch answers: one result per item, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAnswer {
    results: Vec<BatchResult>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
enum BatchResult {
    /// The item was stored.
    Accepted(Receipt),
    /// The item was refused; the others were stored all the same.
    Refused { error: Problem },
}

/// Accept many notifications at once.
///
/// Each item is validated on its own; every valid one is stored in one
/// commit (all of them, or on 503 none), and the answer holds one result per
/// item, in order. 422 only when no item is valid.
#[utoipa::path(
    post,
    path = "/v1/batch",
    operation_id = "send_batch",
    tag = "notifications",
    params(idempotency::Header),
    request_body(content = ref("#/components/schemas/BatchRequest"), content_type = "application/json"),
    responses(
        (status = 202, description = ACCEPTED, body = BatchAnswer),
        (status = 422, description = "No item is valid, or `notifications` is missing, empty \
            or over `accept.batch_max_items`: `errors` names every bad field"),
    ),
)]
pub async fn batch(
    State(state): State<Arc<ApiState>>,
    caller: CallerScope,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let body = read_body(state.batch_body_limit, &headers, body)?;
    let keyed = Keyed::from_request(&headers, &caller, "batch", &body)?;
    let raw: RawBatch = parse_object(&body)?;
    let items = match raw.notifications {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= state.batch_max_items => {
            items
        }
        Some(Value::Array(_)) => {
            return Err(Problem::invalid(vec![FieldError::new(
                "notifications",
                format!("must hold 1 to {} notifications", state.batch_max_items),
            )]));
        }
        _ => {
            return Err(Problem::invalid(vec![FieldError::new(
                "notifications",
                "is required: an array of notifications",
            )]));
        }
    };

    let started = clock::instant();
    let now = UnixMillis::now();
    let limits = OptionLimits {
        now,
        horizon: state.schedule_horizon,
        callbacks: &state.callbacks,
    };
    let mut results = Vec::with_capacity(items.len());
    let mut prepared = Vec::new();
    for item in items {
        let valid = validate_item(item, limits).and_then(|(message, options)| {
            refuse_unsendable(&state, &message).map(|()| (message, options))
        });
        match valid {
            Ok((message, options)) => {
                let p = prepare(&state, message, options, now, keyed_by(&caller));
                results.push(BatchResult::Accepted(Receipt {
                    id: p.notification.id,
                    status: p.status,
                }));
                prepared.push(p);
            }
            Err(errors) => results.push(BatchResult::Refused {
                error: Problem::invalid(errors),
            }),
        }
    }
    if prepared.is_empty() {
        let errors = results
            .into_iter()
            .enumerate()
            .flat_map(|(i, r)| {
                match r {
                    BatchResult::Refused { error } => error.errors,
                    BatchResult::Accepted(_) => Vec::new(),
                }
                .into_iter()
                .map(move |e| FieldError::new(format!("notifications[{i}].{}", e.field), e.message))
            })
            .collect();
        return Err(Problem::invalid(errors));
    }

    let answer = json!(BatchAnswer { results });
    let accepted: Vec<_> = prepared
        .iter()
        .map(|p| (p.notification.id, p.notification.channel))
        .collect();
    let (notifications, handovers): (Vec<_>, Vec<_>) = prepared
        .into_iter()
        .map(|p| (p.notification, p.handover))
        .unzip();
    if let Some(first) = store(&state, notifications, keyed, &answer, now).await? {
        return Ok(first);
    }
    let took = started.elapsed();
    for (id, channel) in accepted {
        crate::metrics::metrics().accepted(channel.as_str(), took);
        tracing::info!(id = %id, channel = channel.as_str(), "accepted");
    }
    for handover in handovers {
        hand_over(&state, handover);
    }
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// One item: an object with a `channel` and that channel's fields, plus
/// the options any notification takes.
fn validate_item(
    item: Value,
    limits: OptionLimits<'_>,
) -> Result<(Message, crate::domain::options::DeliveryOptions), Vec<FieldError>> {
    let Value::Object(_) = &item else {
        return Err(vec![FieldError::new(
            "notification",
            "must be a JSON object",
        )]);
    };
    let options: RawOptions = serde_json::from_value(item.clone())
        .map_err(|e| vec![FieldError::new("notification", e.to_string())])?;
    let message = match item.get("channel").and_then(Value::as_str) {
        Some("sms") => serde_json::from_value::<RawSms>(item)
            .map_err(|e| vec![FieldError::new("notification", e.to_string())])
            .and_then(validate_sms),
        Some("email") => serde_json::from_value::<RawEmail>(item)
            .map_err(|e| vec![FieldError::new("notification", e.to_string())])
            .and_then(validate_email),
        _ => Err(vec![FieldError::new("channel", "must be sms or email")]),
    };
    validate(message, options, limits)
}
