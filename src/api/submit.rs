//! Accepting notifications: check, validate, commit, then answer 202.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::json;

use super::ApiState;
use super::problem::Problem;
use crate::domain::validation::{FieldError, RawEmail, RawSms, validate_email, validate_sms};
use crate::domain::{Message, NotificationId, Status, UnixMillis};
use crate::store::NewNotification;

pub async fn sms(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let raw: RawSms = read_json(&state, &headers, body)?;
    accept(&state, validate_sms(raw)).await
}

pub async fn email(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let raw: RawEmail = read_json(&state, &headers, body)?;
    accept(&state, validate_email(raw)).await
}

/// `application/json`, or any `application/*+json`, with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some(subtype) = essence
        .get(..12)
        .filter(|p| p.eq_ignore_ascii_case("application/"))
        .map(|_| &essence[12..])
    else {
        return false;
    };
    subtype.eq_ignore_ascii_case("json")
        || (subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
}

fn read_json<T: DeserializeOwned>(
    state: &ApiState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Problem> {
    if !is_json(headers) {
        return Err(Problem::unsupported_media_type());
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::too_large(state.body_limit)
        } else {
            Problem::bad_body(rejection.body_text())
        }
    })?;
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // Serde would read a struct from a JSON array too; only objects count.
        return Err(match serde_json::from_slice::<IgnoredAny>(&body) {
            Ok(_) => Problem::not_a_json_object("the body must be a JSON object".into()),
            Err(e) => Problem::malformed_json(e.to_string()),
        });
    }
    serde_json::from_slice(&body).map_err(|e| {
        if e.is_data() {
            // Valid JSON that still does not fit, such as a repeated field.
            Problem::not_a_json_object(e.to_string())
        } else {
            Problem::malformed_json(e.to_string())
        }
    })
}

async fn accept(
    state: &ApiState,
    validated: Result<Message, Vec<FieldError>>,
) -> Result<Response, Problem> {
    let message = validated.map_err(Problem::invalid)?;
    if !state
        .providers
        .channel(message.channel())
        .can_send(&message)
    {
        // Stored, it could only ever fail.
        let field = match message {
            Message::Sms(_) => "phone",
            Message::Email(_) => "recipients",
        };
        return Err(Problem::invalid(vec![FieldError {
            field: field.into(),
            message: "no provider configured for this channel can send to it".into(),
        }]));
    }
    let now = UnixMillis::now();
    // The id carries the creation time exactly (retention relies on it).
    let id = NotificationId::new_at(now);
    let reservation = state.handoff.as_ref().and_then(|h| h.reserve(now));
    let notification = NewNotification {
        id,
        channel: message.channel(),
        payload: message.to_provider_json(),
        created_at: now,
        expires_at: now.plus(state.max_age),
        lease: reservation.as_ref().map(|r| r.lease()),
    };
    let handover = reservation.map(|r| r.prepare(&notification));
    if let Err(e) = state.store.insert(notification).await {
        tracing::error!(error = %crate::error::chain(&e), "could not store a notification");
        return Err(Problem::store_unavailable());
    }
    let status = match handover {
        Some(handover) => {
            handover.send();
            Status::Sending
        }
        None => {
            state.wake.notify_one();
            Status::Queued
        }
    };
    let location =
        HeaderValue::try_from(format!("/v1/notifications/{id}")).expect("ids are URL-safe");
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(json!({"id": id, "status": status})),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.herald+json",
        ] {
            assert!(is_json(&with(ok)), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
            "application/+json",
            "json",
            "",
        ] {
            assert!(!is_json(&with(bad)), "{bad}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
