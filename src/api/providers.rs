//! The health of each provider, as the dispatcher sees it.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use crate::dispatch::breaker::BreakerState;
use crate::domain::Channel;

#[derive(Serialize, ToSchema)]
pub struct ProviderHealth {
    name: String,
    /// `contract`, `twilio`, …
    kind: &'static str,
    channel: Channel,
    weight: u32,
    breaker: Breaker,
    /// Outcomes in the sliding window, and how many of them failed.
    samples: usize,
    failures: usize,
}

/// The circuit breaker: `open` admits nothing until its cooldown ends, then
/// `half_open` lets one probe through.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum Breaker {
    Closed,
    Open,
    HalfOpen,
}

/// Every provider with its breaker and recent outcomes.
#[utoipa::path(
    get,
    path = "/v1/providers",
    operation_id = "list_providers",
    tag = "operations",
    responses((status = 200, description = "Every configured provider", body = [ProviderHealth])),
)]
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
                    BreakerState::Closed => Breaker::Closed,
                    BreakerState::Open => Breaker::Open,
                    BreakerState::HalfOpen => Breaker::HalfOpen,
                },
                samples,
                failures,
            });
        }
    }
    Json(out)
}
