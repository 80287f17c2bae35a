//! `GET /metrics`: the Prometheus text format.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::ApiState;
use crate::dispatch::breaker::BreakerState;
use crate::metrics::{ProviderGauges, metrics};

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
