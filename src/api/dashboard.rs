//! The dashboard: one page of HTML, CSS and JavaScript built into the
//! binary. It holds no data and reads everything through the public API
//! with the key the operator types in, so it is served without a key.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// Only this page's own files, and calls back to this origin.
pub(super) const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The dashboard, where a browser pointed at the API's address lands.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "root",
    tag = "dashboard",
    responses((status = 303, description = "See the dashboard", headers(
        ("Location" = String, description = "`/dashboard`"),
    ))),
)]
pub async fn root() -> Redirect {
    Redirect::to("/dashboard")
}

/// The dashboard's page.
///
/// It holds no data: its script reads the API with a key the operator
/// types in (`admin` scope where keys are required).
#[utoipa::path(
    get,
    path = "/dashboard",
    operation_id = "dashboard",
    tag = "dashboard",
    responses((status = 200, description = "The page", body = String,
        content_type = "text/html; charset=utf-8", headers(
            // Described once, with their values, in api/openapi.rs.
            ("Content-Security-Policy" = String),
            ("X-Content-Type-Options" = String),
            ("Referrer-Policy" = String),
            ("Cache-Control" = String),
        ))),
)]
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// The dashboard's script.
#[utoipa::path(
    get,
    path = "/dashboard/app.js",
    operation_id = "dashboard_script",
    tag = "dashboard",
    responses((status = 200, description = "The script", body = String,
        content_type = "text/javascript; charset=utf-8", headers(
            // Described once, with their values, in api/openapi.rs.
            ("Content-Security-Policy" = String),
            ("X-Content-Type-Options" = String),
            ("Referrer-Policy" = String),
            ("Cache-Control" = String),
        ))),
)]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The dashboard's style sheet.
#[utoipa::path(
    get,
    path = "/dashboard/style.css",
    operation_id = "dashboard_style",
    tag = "dashboard",
    responses((status = 200, description = "The style sheet", body = String,
        content_type = "text/css; charset=utf-8", headers(
            // Described once, with their values, in api/openapi.rs.
            ("Content-Security-Policy" = String),
            ("X-Content-Type-Options" = String),
            ("Referrer-Policy" = String),
            ("Cache-Control" = String),
        ))),
)]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // Revalidated each time: a new binary's page is never mixed with
        // an old script.
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
