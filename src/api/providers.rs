//! The providers as the dispatcher sees them, and an operator's hands on
//! them: reload the config file's providers, take one out of rotation or
//! put it back.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;

use super::ApiState;
use super::problem::Problem;
use crate::dispatch::breaker::BreakerState;
use crate::dispatch::live::{Changes, LiveProviders};
use crate::dispatch::pool::ProviderSlot;
use crate::domain::{Channel, UnixMillis};
use crate::error::BoxError;

/// Reads the config file again and puts its providers in use (the wiring
/// knows the file).
pub trait Reload: Send + Sync {
    /// What changed; an error (with its causes) when the file was refused.
    fn reload(&self) -> Result<Changes, BoxError>;
}

#[derive(Serialize)]
pub struct ProviderHealth {
    name: String,
    /// `contract`, `twilio`, …
    kind: &'static str,
    channel: Channel,
    weight: u32,
    /// False once an operator disabled it: it gets no new attempts.
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_at: Option<UnixMillis>,
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

fn view(providers: &LiveProviders, channel: Channel, slot: &ProviderSlot) -> ProviderHealth {
    let (breaker, samples, failures) = slot.health();
    let [p50, p99] = slot.latency_p50_p99();
    let name = slot.provider.name();
    ProviderHealth {
        name: name.to_owned(),
        kind: slot.provider.kind(),
        channel,
        weight: slot.weight,
        enabled: slot.enabled(),
        disabled_at: providers.disabled_since(name),
        breaker: match breaker {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        },
        samples,
        failures,
        in_flight: slot.requests_in_flight(),
        latency_ms: Latency { p50, p99 },
    }
}

pub async fn list(State(state): State<Arc<ApiState>>) -> Json<Vec<ProviderHealth>> {
    Json(health(&state.providers))
}

/// Every provider in use, as `GET /v1/providers` shows it (the event
/// stream too).
pub fn health(providers: &LiveProviders) -> Vec<ProviderHealth> {
    providers
        .current()
        .all()
        .map(|(channel, slot)| view(providers, channel, slot))
        .collect()
}

pub async fn disable(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Json<ProviderHealth>, Problem> {
    set_enabled(&state, &name, false).await
}

pub async fn enable(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Json<ProviderHealth>, Problem> {
    set_enabled(&state, &name, true).await
}

/// Written to the store for every instance, applied here at once; rounds
/// in flight finish what they started.
async fn set_enabled(
    state: &ApiState,
    name: &str,
    enabled: bool,
) -> Result<Json<ProviderHealth>, Problem> {
    if !state
        .providers
        .current()
        .all()
        .any(|(_, s)| s.provider.name() == name)
    {
        return Err(Problem::not_found("provider of that name"));
    }
    let changed = state
        .providers
        .set_enabled(state.store.as_ref(), name, enabled, UnixMillis::now())
        .await
        .map_err(|e| {
            tracing::error!(provider = name, error = %crate::error::chain(&e), "could not store a provider's rotation");
            Problem::store_unavailable()
        })?;
    if changed {
        let what = if enabled { "enabled" } else { "disabled" };
        tracing::info!(provider = name, "provider {what}");
    }
    // Looked up again: a reload may have replaced the set meanwhile.
    let providers = state.providers.current();
    providers
        .all()
        .find(|(_, s)| s.provider.name() == name)
        .map(|(channel, slot)| Json(view(&state.providers, channel, slot)))
        .ok_or_else(|| Problem::not_found("provider of that name"))
}

pub async fn reload(State(state): State<Arc<ApiState>>) -> Result<Json<Changes>, Problem> {
    let Some(reloader) = &state.reload else {
        return Err(Problem::no_config_file());
    };
    reloader
        .reload()
        .map(Json)
        .map_err(|e| Problem::config_refused(crate::error::chain(&*e)))
}

impl Problem {
    pub fn no_config_file() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "/problems/no-config-file",
            "There is no config file to reload",
            "this instance was started without --config; restart it with one".into(),
        )
    }

    /// The file was refused; the providers in use stay.
    pub fn config_refused(detail: String) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/config-refused",
            "The config file was refused; the providers in use stay",
            detail,
        )
    }
}
