//! `GET /v1/events`: server-sent events for the dashboard and anyone else
//! who wants to watch. The first `snapshot` carries the last 15 minutes of
//! samples, each later one (a second apart) the samples since the one
//! before, with the providers' health and this process's totals every time.
//! The stream ends when the process shuts down, so it never holds the drain,
//! and when its key is revoked.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::HeaderValue;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;

use super::ApiState;
use super::auth::{Caller, Scope};
use super::live::Beat;

/// The live view, pushed: providers, throughput and backlog.
///
/// A stream of server-sent events, each `event: snapshot` with one line of
/// JSON in its `data`: an `EventSnapshot`. The first comes at once and carries the last 15 minutes of samples; each
/// later one, a second apart, the samples since the one before, with the
/// providers and this process's totals every time. The stream ends when the
/// instance shuts down or the key is revoked; it has no end otherwise.
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "events",
    tag = "operations",
    responses((status = 200, description = "The stream, open until shutdown: each of its \
        events as a `SnapshotEvent`", body = ref("#/components/schemas/SnapshotEvent"),
        content_type = "text/event-stream", headers(
            // Described once, with their values, in api/openapi.rs.
            ("Cache-Control" = String),
            ("X-Accel-Buffering" = String),
        ))),
)]
pub async fn stream(
    State(state): State<Arc<ApiState>>,
    caller: Option<Extension<Caller>>,
) -> Response {
    let beats = state.live.subscribe();
    // Without keys there is no caller, and nothing to revoke.
    let caller = caller.map(|Extension(c)| c.name);
    let snapshots = stream::unfold(
        (state, caller, beats, None, true),
        |(state, caller, mut beats, after, first)| async move {
            if !first {
                // The next sample, unless the process is stopping.
                beats.changed().await.ok()?;
            }
            if *beats.borrow_and_update() == Beat::Closed {
                return None;
            }
            if let Some(name) = &caller
                && !state.auth.still_allows(name, Scope::Admin)
            {
                return None;
            }
            let (snapshot, last) = state.live.snapshot(after);
            let event = match Event::default().event("snapshot").json_data(&snapshot) {
                Ok(event) => event,
                Err(e) => {
                    tracing::error!(error = %crate::error::chain(&e), "a snapshot could not be written");
                    return None;
                }
            };
            Some((
                Ok::<_, Infallible>(event),
                (state, caller, beats, last, false),
            ))
        },
    );
    let mut response = Sse::new(snapshots).into_response();
    // A proxy that buffers answers (nginx does by default) would hold the
    // events back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
