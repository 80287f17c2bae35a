//! OpenTelemetry traces over OTLP/HTTP (protobuf), off unless a collector is
//! named (`[telemetry] otlp_endpoint`, or `OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! What is traced so far: each HTTP request's span (`request`, the one every
//! log line of a request is in), continuing the caller's W3C `traceparent`.
//! Only spans are exported, never log events, so nothing a log line says
//! (a masked recipient) reaches the collector.
//!
//! Exporting never holds up a request: spans wait in the SDK's bounded queue
//! (2,048; past it they are dropped) and are sent
//! in batches by its own thread, over plain HTTP through hyper on Herald's
//! runtime (that thread has none of its own).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::HeaderMap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// `[telemetry]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's base URL (`http://127.0.0.1:4318`); spans go to its
    /// `/v1/traces`. Wins over `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `service.name`; `OTEL_SERVICE_NAME` wins over it, "herald" without
    /// either.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

impl TelemetryConfig {
    /// Where traces go, if anywhere.
    pub fn endpoint(&self) -> Option<String> {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|e| !e.trim().is_empty())
    }

    pub fn service(&self) -> String {
        std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| self.service_name.clone())
            .unwrap_or_else(|| "herald".to_owned())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP endpoint {0:?}: only http:// collectors are supported")]
    Endpoint(String),
    #[error("could not set up the OTLP exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// The tracer provider while traces are on; [`Traces::shutdown`] sends
/// what is still queued.
pub struct Traces {
    provider: SdkTracerProvider,
}

/// How long one export may take before the SDK gives it up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

impl Traces {
    /// `None` when no collector is named. Must be called on a tokio runtime,
    /// which carries the exports.
    pub fn start(config: &TelemetryConfig) -> Result<Option<Self>, TelemetryError> {
        let Some(base) = config.endpoint() else {
            return Ok(None);
        };
        if !base.starts_with("http://") {
            return Err(TelemetryError::Endpoint(base));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')))
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(OnRuntime::new(tokio::runtime::Handle::current()))
            .build()
            .map_err(TelemetryError::Exporter)?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(config.service())
                    .build(),
            )
            .build();
        Ok(Some(Self { provider }))
    }

    /// The subscriber's layer that turns spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("herald"))
            // Where in the code, which thread: noise for an operator.
            .with_location(false)
            .with_threads(false)
            // Spans only: an event's fields (a log line's) are not exported.
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| meta.is_span()))
    }

    /// Exports what is queued (bounded by the export timeout); blocking.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "traces not all exported at exit");
        }
    }
}

/// Makes `span` a child of the caller's span when the request carries a
/// W3C `traceparent` (without traces on, this does nothing).
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // Refused only when no OpenTelemetry layer is installed: nothing to do.
    let _ = span.set_parent(parent);
}

/// The exporter's HTTP client: hyper's, run on Herald's runtime, since
/// the SDK's export thread blocks on the future without one. It logs when
/// the collector stops taking exports and when it takes them again, once
/// per change, not once per batch.
#[derive(Debug)]
struct OnRuntime {
    runtime: tokio::runtime::Handle,
    client: Client<HttpConnector, Full<Bytes>>,
    failing: AtomicBool,
}

impl OnRuntime {
    fn new(runtime: tokio::runtime::Handle) -> Self {
        Self {
            runtime,
            client: Client::builder(TokioExecutor::new()).build_http(),
            failing: AtomicBool::new(false),
        }
    }

    fn note(&self, failure: Option<String>) {
        let was_failing = self.failing.swap(failure.is_some(), Ordering::Relaxed);
        match failure {
            Some(error) if !was_failing => {
                tracing::warn!(%error, "trace collector unreachable; spans are dropped until it answers");
            }
            None if was_failing => tracing::info!("trace collector reachable again"),
            _ => {}
        }
    }
}

#[async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let request = request.map(Full::new);
        let exchange = self.runtime.spawn(async move {
            let answer = client.request(request).await?;
            let (parts, body) = answer.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        });
        let answer = exchange.await.map_err(HttpError::from).and_then(|a| a);
        self.note(match &answer {
            Ok(a) if a.status().is_success() => None,
            Ok(a) => Some(format!("HTTP {}", a.status())),
            Err(e) => Some(e.to_string()),
        });
        answer
    }
}
