//! The providers as the dispatcher sees them, and an operator's hands on
//! them: reload the config file's providers, take one out of rotation or
//! put it back.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::problem::{Problem, ProblemType};
use crate::dispatch::live::{Changes, LiveProviders};
use crate::dispatch::pool::ProviderSlot;
use crate::domain::{Channel, UnixMillis};
use crate::error::BoxError;
use crate::resilience::breaker::BreakerState;

/// Reads the config file again and puts its providers in use (the wiring
/// knows the file).
pub trait Reload: Send + Sync {
    /// What changed; an error (with its causes) when the file was refused.
    fn reload(&self) -> Result<Changes, BoxError>;
}

/// A provider as this instance sees it.
#[derive(Serialize, ToSchema)]
pub struct ProviderHealth {
    name: String,
    /// `contract`, `twilio`, …
    kind: &'static str,
    channel: Channel,
    weight: u32,
    /// False once an operator disabled it: it gets no new attempts.
    enabled: bool,
    /// When it was disabled; absent while it is enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    disabled_at: Option<UnixMillis>,
    breaker: Breaker,
    /// Outcomes in the sliding window, and how many of them failed.
    samples: usize,
    failures: usize,
    /// Requests to it under way in this process.
    in_flight: usize,
    latency_ms: Latency,
}

/// Milliseconds its recent answered requests took (the last 256, in this
/// process); each `null` before its first answer.
#[derive(Serialize, ToSchema)]
#[schema(as = ProviderLatency)]
struct Latency {
    #[schema(required = true)]
    p50: Option<u32>,
    #[schema(required = true)]
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
            BreakerState::Closed => Breaker::Closed,
            BreakerState::Open => Breaker::Open,
            BreakerState::HalfOpen => Breaker::HalfOpen,
        },
        samples,
        failures,
        in_flight: slot.requests_in_flight(),
        latency_ms: Latency { p50, p99 },
    }
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
    responses((status = 200, description = "Every provider in use", body = [ProviderHealth])),
)]
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

/// The provider a path names.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProviderPath {
    /// Its `name` in the config, as `GET /v1/providers` shows it.
    name: String,
}

/// The name in the path; one that is not even UTF-8 names no provider.
fn provider_name(path: Result<Path<ProviderPath>, PathRejection>) -> Result<String, Problem> {
    path.map(|Path(p)| p.name)
        .map_err(|_| Problem::not_found("provider of that name"))
}

/// Take a provider out of rotation.
///
/// It gets no new attempts, on every instance (this one at once, the others
/// within `dispatch.providers_refresh_ms`), until it is enabled again;
/// attempts already sent finish. Kept in the store: a restart or a reload
/// leaves it disabled.
#[utoipa::path(
    post,
    path = "/v1/providers/{name}/disable",
    operation_id = "disable_provider",
    tag = "operations",
    params(ProviderPath),
    responses(
        (status = 200, description = "Disabled (or already so)", body = ProviderHealth),
        (status = 404, description = "This instance has no provider of that name"),
    ),
)]
pub async fn disable(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<ProviderPath>, PathRejection>,
) -> Result<Json<ProviderHealth>, Problem> {
    set_enabled(&state, &provider_name(path)?, false).await
}

/// Put a provider back in rotation.
#[utoipa::path(
    post,
    path = "/v1/providers/{name}/enable",
    operation_id = "enable_provider",
    tag = "operations",
    params(ProviderPath),
    responses(
        (status = 200, description = "Enabled (or already so)", body = ProviderHealth),
        (status = 404, description = "This instance has no provider of that name"),
    ),
)]
pub async fn enable(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<ProviderPath>, PathRejection>,
) -> Result<Json<ProviderHealth>, Problem> {
    set_enabled(&state, &provider_name(path)?, true).await
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

/// Reload the config file's providers.
///
/// The file `serve` was started with is read again and its providers put
/// in use on this instance: a provider kept keeps its health and takes its
/// new settings; one removed finishes what it holds. Other settings that
/// differ wait for a restart (`needs_restart`). SIGHUP does the same.
#[utoipa::path(
    post,
    path = "/v1/providers/reload",
    operation_id = "reload_providers",
    tag = "operations",
    responses(
        (status = 200, description = "Reloaded: what changed, by provider name", body = Changes),
        (status = 409, description = "This instance was started without a config file"),
        (status = 422, description = "The file was refused (`detail` says why); the providers \
            in use stay"),
    ),
)]
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
            ProblemType::NoConfigFile,
            "There is no config file to reload",
            "this instance was started without --config; restart it with one".into(),
        )
    }

    /// The file was refused; the providers in use stay.
    pub fn config_refused(detail: String) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemType::ConfigRefused,
            "The config file was refused; the providers in use stay",
            detail,
        )
    }
}
