//! RFC 9457 problem details: every error the API returns.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::validation::FieldError;

/// An error answer (`application/problem+json`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: ProblemType,
    /// The same for every problem of a type.
    pub title: &'static str,
    /// The answer's HTTP status.
    #[serde(serialize_with = "as_u16")]
    #[schema(value_type = u16, minimum = 400, maximum = 599)]
    pub status: StatusCode,
    /// What went wrong with this request.
    pub detail: String,
    /// Every bad field of a notification (422 only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// Every kind of problem the API answers with: a relative URI naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum ProblemType {
    #[serde(rename = "/problems/malformed-json")]
    MalformedJson,
    #[serde(rename = "/problems/unreadable-body")]
    UnreadableBody,
    #[serde(rename = "/problems/bad-query")]
    BadQuery,
    #[serde(rename = "/problems/bad-idempotency-key")]
    BadIdempotencyKey,
    #[serde(rename = "/problems/unauthorized")]
    Unauthorized,
    #[serde(rename = "/problems/forbidden")]
    Forbidden,
    #[serde(rename = "/problems/not-found")]
    NotFound,
    #[serde(rename = "/problems/method-not-allowed")]
    MethodNotAllowed,
    #[serde(rename = "/problems/conflict")]
    Conflict,
    #[serde(rename = "/problems/idempotency-key-reused")]
    IdempotencyKeyReused,
    #[serde(rename = "/problems/too-large")]
    TooLarge,
    #[serde(rename = "/problems/unsupported-media-type")]
    UnsupportedMediaType,
    #[serde(rename = "/problems/validation")]
    Validation,
    #[serde(rename = "/problems/rate-limited")]
    RateLimited,
    #[serde(rename = "/problems/instance-busy")]
    InstanceBusy,
    #[serde(rename = "/problems/store-unavailable")]
    StoreUnavailable,
    #[serde(rename = "/problems/request-timeout")]
    RequestTimeout,
    #[serde(rename = "/problems/shutting-down")]
    ShuttingDown,
    #[serde(rename = "/problems/too-many-connections")]
    TooManyConnections,
    #[serde(rename = "/problems/too-many-client-connections")]
    TooManyClientConnections,
    #[serde(rename = "/problems/https-required")]
    HttpsRequired,
    #[serde(rename = "/problems/no-config-file")]
    NoConfigFile,
    #[serde(rename = "/problems/config-refused")]
    ConfigRefused,
    #[serde(rename = "/problems/unknown-host")]
    UnknownHost,
    #[serde(rename = "/problems/cross-site")]
    CrossSite,
}

fn as_u16<S: serde::Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

impl Problem {
    pub(super) fn new(
        status: StatusCode,
        kind: ProblemType,
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
            ProblemType::MalformedJson,
            "The body is not valid JSON",
            detail,
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemType::UnsupportedMediaType,
            "The body must be JSON",
            "send the body with Content-Type: application/json".into(),
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ProblemType::TooLarge,
            "The body is too large",
            format!("the body must be at most {limit} bytes"),
        )
    }

    pub fn bad_body(detail: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ProblemType::UnreadableBody,
            "The body could not be read",
            detail,
        )
    }

    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemType::Validation,
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
            ProblemType::Validation,
            "The notification is invalid",
            detail,
        )
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ProblemType::NotFound,
            "Not found",
            format!("no {what} here"),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ProblemType::MethodNotAllowed,
            "Method not allowed",
            "this route does not take that method".into(),
        )
    }

    pub fn bad_query(detail: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ProblemType::BadQuery,
            "The query is invalid",
            detail,
        )
    }

    pub fn conflict(detail: String) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            ProblemType::Conflict,
            "The request conflicts with the notification's state",
            detail,
        )
    }

    pub fn bad_idempotency_key(detail: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ProblemType::BadIdempotencyKey,
            "The Idempotency-Key header is invalid",
            detail,
        )
    }

    /// The key came with a different request before.
    pub fn idempotency_key_reused() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            ProblemType::IdempotencyKeyReused,
            "This Idempotency-Key was used for a different request",
            "a retry must repeat the first request exactly; use a new key for a new request".into(),
        )
    }

    pub fn store_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ProblemType::StoreUnavailable,
            "The store is unavailable",
            "the store failed or did not confirm the write (one whose commit was cut off may \
             still have been stored); retry, with the same Idempotency-Key for a notification: \
             it returns the first answer if that was stored"
                .into(),
        )
    }

    /// A store call that failed: logged with its cause, answered 503.
    /// A lost database connection is logged once, by the store, not at
    /// each request that meets it.
    pub fn from_store(e: crate::store::StoreError) -> Self {
        if e.connection_kind().is_some() {
            tracing::debug!(error = %crate::error::chain(&e), "a store call failed");
        } else {
            tracing::error!(error = %crate::error::chain(&e), "a store call failed");
        }
        Self::store_unavailable()
    }

    /// The request did not finish in time; one that carried a notification
    /// may or may not have been stored.
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ProblemType::RequestTimeout,
            "The request took too long",
            format!(
                "it did not finish within {} ms (http.request_timeout_ms); \
                 a notification it carried may have been stored",
                limit.as_millis()
            ),
        )
    }

    /// Over `http.max_connections`: answered before any routing.
    pub fn too_many_connections() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ProblemType::TooManyConnections,
            "Too many connections",
            "this instance has as many connections open as it allows; try again or try another"
                .into(),
        )
    }

    /// Over `http.max_connections_per_client`: such a connection is
    /// answered only its health check.
    pub fn too_many_client_connections() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ProblemType::TooManyClientConnections,
            "Too many connections from this address",
            "this address has as many connections open as http.max_connections_per_client \
             allows; use one of them, or close some"
                .into(),
        )
    }

    /// Plain HTTP sent to a listener that speaks HTTPS: answered before
    /// any TLS, so that a client shows why instead of a broken connection.
    pub fn https_required() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ProblemType::HttpsRequired,
            "This port speaks HTTPS",
            "the request was sent as plain HTTP to a listener that serves HTTPS only; \
             send it to the same address with https://"
                .into(),
        )
    }

    pub fn draining() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ProblemType::ShuttingDown,
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
