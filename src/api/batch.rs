//! `POST /v1/batch`: many notifications in one request and one commit.
//! Each item is validated on its own; the valid ones are stored together,
//! and the answer has one result per item, in order.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::CallerScope;
use super::problem::Problem;
use super::submit::{
    Keyed, hand_over, parse_object, prepare, read_body, refuse_unsendable, store, validate,
};
use crate::domain::options::{OptionLimits, RawOptions};
use crate::domain::validation::{FieldError, RawEmail, RawSms, validate_email, validate_sms};
use crate::domain::{Message, UnixMillis};

#[derive(Debug, Deserialize)]
struct RawBatch {
    notifications: Option<Value>,
}

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

    let started = tokio::time::Instant::now();
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
                let p = prepare(&state, message, options, now);
                results.push(json!({"id": p.notification.id, "status": p.status}));
                prepared.push(p);
            }
            Err(errors) => results.push(json!({"error": Problem::invalid(errors)})),
        }
    }
    if prepared.is_empty() {
        let errors = results
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                r["error"]["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(move |e| {
                        FieldError::new(
                            format!("notifications[{i}].{}", e["field"].as_str().unwrap_or("")),
                            e["message"].as_str().unwrap_or(""),
                        )
                    })
            })
            .collect();
        return Err(Problem::invalid(errors));
    }

    let answer = json!({"results": results});
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
