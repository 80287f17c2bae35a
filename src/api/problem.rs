//! RFC 9457 problem details: every error the API returns.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::validation::FieldError;

#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    #[serde(serialize_with = "as_u16")]
    pub status: StatusCode,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

fn as_u16<S: serde::Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

impl Problem {
    pub(super) fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: String,
    ) -> Self {
        Self {
            kind,
            title,
            status,
            detail,
            errors: Vec::new(),
        }
    }

    pub fn malformed_json(detail: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "/problems/malformed-json",
            "The body is not valid JSON",
            detail,
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "/problems/unsupported-media-type",
            "The body must be JSON",
            "send the body with Content-Type: application/json".into(),
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "/problems/too-large",
            "The body is too large",
            format!("the body must be at most {limit} bytes"),
        )
    }

    pub fn bad_body(detail: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "/problems/unreadable-body",
            "The body could not be read",
            detail,
        )
    }

    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation",
            "The notification is invalid",
            format!("invalid fields: {}", fields.join(", ")),
        );
        p.errors = errors;
        p
    }

    /// Valid JSON of the wrong shape.
    pub fn not_a_json_object(detail: String) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation",
            "The notification is invalid",
            detail,
        )
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "/problems/not-found",
            "Not found",
            format!("no {what} here"),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "/problems/method-not-allowed",
            "Method not allowed",
            "this route does not take that method".into(),
        )
    }

    pub fn bad_query(detail: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "/problems/bad-query",
            "The query is invalid",
            detail,
        )
    }

    pub fn conflict(detail: String) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "/problems/conflict",
            "The request conflicts with the notification's state",
            detail,
        )
    }

    pub fn bad_idempotency_key(detail: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "/problems/bad-idempotency-key",
            "The Idempotency-Key header is invalid",
            detail,
        )
    }

    /// The key came with a different request before.
    pub fn idempotency_key_reused() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "/problems/idempotency-key-reused",
            "This Idempotency-Key was used for a different request",
            "a retry must repeat the first request exactly; use a new key for a new request".into(),
        )
    }

    pub fn store_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "/problems/store-unavailable",
            "The store is unavailable",
            "nothing was stored; try again".into(),
        )
    }

    /// The request did not finish in time; one that carried a notification
    /// may or may not have been stored.
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "/problems/request-timeout",
            "The request took too long",
            format!(
                "it did not finish within {} ms (http.request_timeout_ms); \
                 a notification it carried may have been stored",
                limit.as_millis()
            ),
        )
    }

    pub fn draining() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "/problems/shutting-down",
            "Herald is shutting down",
            "this instance accepts no new work; try another or try again".into(),
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).expect("problems always encode");
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
