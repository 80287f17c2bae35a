//! The health of each provider, as the dispatcher sees it.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::ApiState;
use crate::dispatch::breaker::BreakerState;
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
}

pub async fn list(State(state): State<Arc<ApiState>>) -> Json<Vec<ProviderHealth>> {
    let mut out = Vec::new();
    for channel in Channel::ALL {
        for slot in state.providers.channel(channel).slots() {
            let (breaker, samples, failures) = slot.health();
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
            });
        }
    }
    Json(out)
}
