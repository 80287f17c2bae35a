//! Accepting notifications: check, validate, commit, then answer 202.

use crate::resilience::clock;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::json;
use utoipa::ToSchema;

use super::auth::CallerScope;
use super::problem::Problem;
use super::{ApiState, idempotency};
use crate::dispatch::handoff::Handover;
use crate::domain::options::{DeliveryOptions, OptionLimits, RawOptions, validate_options};
use crate::domain::validation::{FieldError, RawEmail, RawSms, validate_email, validate_sms};
use crate::domain::{Message, NotificationId, Status, UnixMillis};
use crate::store::{IdempotencyKey, KeyedInsert, NewNotification, StoredAnswer};

/// Accept an SMS.
///
/// Answers 202 once it is stored; it is delivered in the background (follow
/// `Location`). `POST /api/sms` is the same, at the reference service's path.
#[utoipa::path(
    post,
    path = "/v1/sms",
    operation_id = "send_sms",
    tag = "notifications",
    params(idempotency::Header),
    request_body(content = ref("#/components/schemas/SmsRequest"), content_type = "application/json"),
    responses(
        (status = 202, description = ACCEPTED, body = Receipt, headers(
            ("Location" = String, description = "The notification: `/v1/notifications/{id}`"),
        )),
        (status = 422, description = INVALID),
    ),
)]
pub async fn sms(
    State(state): State<Arc<ApiState>>,
    caller: CallerScope,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let body = read_body(state.body_limit, &headers, body)?;
    let keyed = Keyed::from_request(&headers, &caller, "sms", &body)?;
    let raw: RawSms = parse_object(&body)?;
    let options: RawOptions = parse_object(&body)?;
    accept(&state, &caller, validate_sms(raw), options, keyed).await
}

/// Accept an email.
///
/// Answers 202 once it is stored; it is delivered in the background (follow
/// `Location`). `POST /api/email` is the same, at the reference service's
/// path.
#[utoipa::path(
    post,
    path = "/v1/email",
    operation_id = "send_email",
    tag = "notifications",
    params(idempotency::Header),
    request_body(content = ref("#/components/schemas/EmailRequest"), content_type = "application/json"),
    responses(
        (status = 202, description = ACCEPTED, body = Receipt, headers(
            ("Location" = String, description = "The notification: `/v1/notifications/{id}`"),
        )),
        (status = 422, description = INVALID),
    ),
)]
pub async fn email(
    State(state): State<Arc<ApiState>>,
    caller: CallerScope,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let body = read_body(state.body_limit, &headers, body)?;
    let keyed = Keyed::from_request(&headers, &caller, "email", &body)?;
    let raw: RawEmail = parse_object(&body)?;
    let options: RawOptions = parse_object(&body)?;
    accept(&state, &caller, validate_email(raw), options, keyed).await
}

/// What a request that changed a notification answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Receipt {
    pub id: NotificationId,
    pub status: Status,
}

// What the accepting routes' answers mean, for the document (which adds
// their 400, 409, 413 and 415: api/openapi.rs).
pub(super) const ACCEPTED: &str = "Stored (committed to disk or database): it will be sent, \
    or end `failed`, `dead` or `expired`. A repeated Idempotency-Key gets the first answer again.";
pub(super) const INVALID: &str = "Failed validation: `errors` names every bad field";

/// `application/json`, or any `application/*+json`, with any parameters.
pub(super) fn is_json(headers: &HeaderMap) -> bool {
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

pub(super) fn read_body(
    limit: usize,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Problem> {
    if !is_json(headers) {
        return Err(Problem::unsupported_media_type());
    }
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::too_large(limit)
        } else {
            Problem::bad_body(rejection.body_text())
        }
    })
}

/// The body as `T`; only a JSON object counts.
pub(super) fn parse_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // Serde would read a struct from a JSON array too; only objects count.
        return Err(match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) => Problem::not_a_json_object("the body must be a JSON object".into()),
            Err(e) => Problem::malformed_json(e.to_string()),
        });
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            // Valid JSON that still does not fit, such as a repeated field.
            Problem::not_a_json_object(e.to_string())
        } else {
            Problem::malformed_json(e.to_string())
        }
    })
}

/// The message and its options, every bad field of both named at once.
pub(super) fn validate(
    message: Result<Message, Vec<FieldError>>,
    options: RawOptions,
    limits: OptionLimits<'_>,
) -> Result<(Message, DeliveryOptions), Vec<FieldError>> {
    match (message, validate_options(options, limits)) {
        (Ok(m), Ok(o)) => Ok((m, o)),
        (m, o) => Err(m.err().into_iter().chain(o.err()).flatten().collect()),
    }
}

/// A request's `Idempotency-Key`, whose it is, and what it asked for.
pub(super) struct Keyed {
    pub scope: String,
    pub key: String,
    pub fingerprint: String,
}

impl Keyed {
    /// The request's key if it sent one, for a request of `kind`.
    pub fn from_request(
        headers: &HeaderMap,
        caller: &CallerScope,
        kind: &str,
        body: &[u8],
    ) -> Result<Option<Self>, Problem> {
        Ok(idempotency::key(headers)?.map(|key| Keyed {
            scope: idempotency::caller_scope(caller),
            key,
            fingerprint: idempotency::fingerprint(kind, body),
        }))
    }

    /// The key as stored, with the answer this request gets.
    pub fn record(
        &self,
        state: &ApiState,
        status: StatusCode,
        answer: &serde_json::Value,
        now: UnixMillis,
    ) -> IdempotencyKey {
        let ttl = i64::try_from(state.idempotency_ttl.as_millis()).unwrap_or(i64::MAX);
        IdempotencyKey {
            scope: self.scope.clone(),
            key: self.key.clone(),
            fingerprint: self.fingerprint.clone(),
            status_code: status.as_u16(),
            response: answer.to_string(),
            created_at: now,
            expired_before: UnixMillis(now.0.saturating_sub(ttl)),
        }
    }
}

async fn accept(
    state: &ApiState,
    caller: &CallerScope,
    validated: Result<Message, Vec<FieldError>>,
    options: RawOptions,
    keyed: Option<Keyed>,
) -> Result<Response, Problem> {
    let started = clock::instant();
    let now = UnixMillis::now();
    let limits = OptionLimits {
        now,
        horizon: state.schedule_horizon,
        callbacks: &state.callbacks,
    };
    let (message, options) = validate(validated, options, limits).map_err(Problem::invalid)?;
    refuse_unsendable(state, &message).map_err(Problem::invalid)?;
    let channel = message.channel();
    let to = crate::logging::recipients(&message);
    let prepared = prepare(state, message, options, now, keyed_by(caller));
    let id = prepared.notification.id;
    let answer = json!(Receipt {
        id,
        status: prepared.status,
    });
    if let Some(first) = store(state, vec![prepared.notification], keyed, &answer, now).await? {
        // A retry: nothing was stored; the reserved room goes back unused.
        return Ok(first);
    }
    crate::metrics::metrics().accepted(channel.as_str(), started.elapsed());
    tracing::info!(id = %id, channel = channel.as_str(), to = %to, "accepted");
    hand_over(state, prepared.handover);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location(&id.to_string()))],
        Json(answer),
    )
        .into_response())
}

/// Stores what a request accepted, in one commit, under its idempotency key
/// when it sent one. `Some`: the key came before, nothing was stored, and
/// this is the answer to give (the first one, or 409 for another request).
pub(super) async fn store(
    state: &ApiState,
    mut notifications: Vec<NewNotification>,
    keyed: Option<Keyed>,
    answer: &serde_json::Value,
    now: UnixMillis,
) -> Result<Option<Response>, Problem> {
    let count = notifications.len();
    let stored = match keyed {
        // A lone notification takes the writer's single-insert path.
        None if count == 1 => state
            .store
            .insert(notifications.remove(0))
            .await
            .map(|()| None),
        None => state.store.insert_many(notifications).await.map(|()| None),
        Some(k) => {
            let key = k.record(state, StatusCode::ACCEPTED, answer, now);
            state
                .store
                .insert_keyed(notifications, key)
                .await
                .map(|outcome| match outcome {
                    KeyedInsert::Stored => None,
                    KeyedInsert::Replayed(first) => Some((k.fingerprint, first)),
                })
        }
    };
    match stored {
        Err(e) => {
            tracing::error!(count, error = %crate::error::chain(&e), "could not store notifications");
            Err(Problem::store_unavailable())
        }
        Ok(Some((fingerprint, first))) => replay(&fingerprint, first).map(Some),
        Ok(None) => Ok(None),
    }
}

/// A message no provider of its channel can take is refused: stored, it
/// could only ever fail.
pub(super) fn refuse_unsendable(
    state: &ApiState,
    message: &Message,
) -> Result<(), Vec<FieldError>> {
    if state
        .providers
        .current()
        .channel(message.channel())
        .can_send(message)
    {
        return Ok(());
    }
    let field = match message {
        Message::Sms(_) => "phone",
        Message::Email(_) => "recipients",
    };
    Err(vec![FieldError {
        field: field.into(),
        message: "no provider configured for this channel can send to it".into(),
    }])
}

/// A valid notification, ready to store, and its hand-over to this
/// process's dispatcher when it has room.
pub(super) struct Prepared<'a> {
    pub notification: NewNotification,
    pub handover: Option<Handover<'a>>,
    /// What the answer says: `sending` when handed over, else as stored.
    pub status: Status,
}

/// The name of the API key that sent a request; `None` with keys off.
pub(super) fn keyed_by(caller: &CallerScope) -> Option<String> {
    (!caller.0.is_empty()).then(|| caller.0.clone())
}

pub(super) fn prepare<'a>(
    state: &'a ApiState,
    message: Message,
    options: DeliveryOptions,
    now: UnixMillis,
    created_by: Option<String>,
) -> Prepared<'a> {
    // The id carries the creation time exactly (retention relies on it).
    let id = NotificationId::new_at(now);
    // Scheduled work waits for its time in the store; only what is due now
    // may go straight to this process's dispatcher.
    let reservation = match options.send_at {
        None => state.handoff.as_ref().and_then(|h| h.reserve(now)),
        Some(_) => None,
    };
    let notification = NewNotification {
        id,
        channel: message.channel(),
        payload: message.to_provider_json(),
        created_at: now,
        expires_at: now.plus(state.max_age),
        deliver_by: options.deliver_by,
        send_at: options.send_at,
        priority: options.priority,
        metadata: options.metadata,
        hedge: options.hedge,
        callback_url: options.callback_url,
        created_by,
        lease: reservation.as_ref().map(|r| r.lease()),
    };
    let status = match reservation {
        Some(_) => Status::Sending,
        None => notification.initial_status(),
    };
    let handover = reservation.map(|r| r.prepare(&notification));
    Prepared {
        notification,
        handover,
        status,
    }
}

/// After the commit: hands the fresh work over, or wakes the dispatcher.
pub(super) fn hand_over(state: &ApiState, handover: Option<Handover<'_>>) {
    match handover {
        Some(handover) => handover.send(),
        None => state.wake.notify_one(),
    }
}

fn location(id: &str) -> HeaderValue {
    HeaderValue::try_from(format!("/v1/notifications/{id}"))
        .unwrap_or_else(|_| HeaderValue::from_static("/v1/notifications"))
}

/// The first answer to a request repeated with its key; 409 when the key
/// came with a different request.
fn replay(fingerprint: &str, first: StoredAnswer) -> Result<Response, Problem> {
    if first.fingerprint != fingerprint {
        return Err(Problem::idempotency_key_reused());
    }
    let body: serde_json::Value =
        serde_json::from_str(&first.response).map_err(|_| Problem::store_unavailable())?;
    let status = StatusCode::from_u16(first.status_code).unwrap_or(StatusCode::ACCEPTED);
    let mut response = (status, Json(&body)).into_response();
    if let Some(id) = body.get("id").and_then(|v| v.as_str()) {
        response
            .headers_mut()
            .insert(header::LOCATION, location(id));
    }
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(response)
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
