//! The health of each provider, as the dispatcher sees it.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::ApiState;
use crate::dispatch::breaker::BreakerState;
use crate::dispatch::pool::Providers;
use crate::domain::Channel;

#[derive(Serialize)]
pub struct ProviderHealth {
    name: String,
    /// `contract`, `twilio`, …
    kind: &'static str,
    channel: Channel,
    weight: u32,
    /// `closed`, `open` or `half_open`.
    breaker: &'static str,
    /// Outcomes in the sliding window, and how many of them failed.
    samples: usize,
    failures: usize,
    /// Requests to it under way in this process.
    in_flight: usize,
    /// Over its recent requests (this process's); null before any.
    latency_ms: Latency,
}

#[derive(Serialize)]
struct Latency {
    p50: Option<u32>,
    p99: Option<u32>,
}

pub async fn list(State(state): State<Arc<ApiState>>) -> Json<Vec<ProviderHealth>> {
    Json(health(&state.providers))
}

/// Every provider as `GET /v1/providers` shows it (the event stream too).
pub fn health(providers: &Providers) -> Vec<ProviderHealth> {
    let mut out = Vec::new();
    for channel in Channel::ALL {
        for slot in providers.channel(channel).slots() {
            let (breaker, samples, failures) = slot.health();
            let [p50, p99] = slot.latency_p50_p99();
            out.push(ProviderHealth {
                name: slot.provider.name().to_owned(),
                kind: slot.provider.kind(),
                channel,
                weight: slot.weight,
                breaker: match breaker {
                    BreakerState::Closed => "closed",
                    BreakerState::Open => "open",
                    BreakerState::HalfOpen => "half_open",
                },
                samples,
                failures,
                in_flight: slot.requests_in_flight(),
                latency_ms: Latency { p50, p99 },
            });
        }
    }
    out
}
