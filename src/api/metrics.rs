//! `GET /metrics`: the Prometheus text format.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::ApiState;
use crate::metrics::{ProviderGauges, metrics};
use crate::resilience::breaker::BreakerState;

/// Prometheus metrics, in the text format.
///
/// Served here unless `metrics.listen` serves it on an address of its own
/// (then this path is 404).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Counters, histograms and gauges", body = String,
            content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 404, description = "`metrics.listen` serves it elsewhere"),
    ),
)]
pub async fn scrape(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    let m = metrics();
    // Breakers are read now, one lock each: as cheap as the counters.
    let providers = state.providers.current();
    let gauges: Vec<ProviderGauges<'_>> = providers
        .all()
        .map(|(_, slot)| {
            let (breaker, samples, failures) = slot.health();
            ProviderGauges {
                name: slot.provider.name(),
                breaker_state: match breaker {
                    BreakerState::Closed => 0,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open => 2,
                },
                failure_ratio: if samples == 0 {
                    0.0
                } else {
                    failures as f64 / samples as f64
                },
                enabled: slot.enabled(),
            }
        })
        .collect();
    m.providers(&gauges);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.encode(),
    )
}
