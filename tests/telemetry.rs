//! Traces: `herald serve` exporting over OTLP/HTTP to a receiver on
//! loopback, which decodes each export with the OpenTelemetry protocol's own
//! types (opentelemetry-proto).

#![allow(clippy::disallowed_methods)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;
use support::{Backend, Herald, Sim, TestStore};

const PHONE: &str = "01799887766";
const TEXT: &str = "secret-text-5b1e";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver: keeps each body POSTed to /v1/traces.
struct Receiver {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<(String, Bytes)>>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&bodies);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = Arc::clone(&kept);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let kept = Arc::clone(&kept);
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            kept.lock().unwrap().push((path, body));
                            // An empty ExportTraceServiceResponse: all taken.
                            let mut answer = Response::new(Full::new(Bytes::new()));
                            answer
                                .headers_mut()
                                .insert("content-type", "application/x-protobuf".parse().unwrap());
                            Ok::<_, Infallible>(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, bodies }
    }

    fn bodies(&self) -> Vec<(String, Bytes)> {
        self.bodies.lock().unwrap().clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn send_and_deliver(herald: &Herald) {
    let http = reqwest::Client::new();
    let base = format!("http://{}", herald.addr);
    let accepted = http
        .post(format!("{base}/v1/sms"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .body(json!({"phone": PHONE, "text": TEXT}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let body: serde_json::Value = serde_json::from_str(&accepted.text().await.unwrap()).unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let got = herald
            .client()
            .get(&format!("/v1/notifications/{id}"))
            .await
            .body;
        if got["status"] == "sent" {
            break;
        }
        assert!(Instant::now() < until, "not delivered: {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_span_continues_the_callers_trace_without_personal_data() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(0.0, Duration::ZERO).await;
    let config = format!(
        "{}\n[telemetry]\notlp_endpoint = \"http://{}\"\n",
        sim.herald_config(&store.url, ""),
        receiver.addr
    );
    let mut herald = Herald::start_with_env(
        dir.path(),
        &config,
        "all",
        &[("OTEL_SERVICE_NAME", "herald-test")],
    );
    send_and_deliver(&herald).await;
    // SIGTERM: the spans still queued are exported before the exit.
    let logs = herald.logs_at_exit();

    let bodies = receiver.bodies();
    assert!(!bodies.is_empty(), "nothing exported; log: {logs}");
    let mut continued = 0;
    for (path, body) in &bodies {
        assert_eq!(path, "/v1/traces");
        for needle in [PHONE, "0179*", TEXT] {
            assert!(
                !body.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle:?} exported"
            );
        }
        let export = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
        for resource_spans in &export.resource_spans {
            let resource = resource_spans.resource.as_ref().unwrap();
            let service = resource
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref());
            assert_eq!(
                service,
                Some(&AnyValue::StringValue("herald-test".into())),
                "{resource:?}"
            );
            for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
                assert!(span.events.is_empty(), "log events exported: {span:?}");
                if hex(&span.trace_id) == TRACE_ID {
                    assert_eq!(span.name, "request");
                    assert_eq!(hex(&span.parent_span_id), PARENT_ID, "{span:?}");
                    continued += 1;
                }
            }
        }
    }
    assert_eq!(continued, 1, "one span in the caller's trace: {bodies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_off_by_default() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(0.0, Duration::ZERO).await;
    let config = sim.herald_config(&store.url, "");
    // The standard variable, unset: no collector is named anywhere.
    let mut herald = Herald::start_with_env(
        dir.path(),
        &config,
        "all",
        &[("OTEL_SERVICE_NAME", "herald-test")],
    );
    send_and_deliver(&herald).await;
    herald.logs_at_exit();
    assert!(receiver.bodies().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_is_logged_once_and_sending_goes_on() {
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(0.0, Duration::ZERO).await;
    let config = format!(
        "{}\n[telemetry]\notlp_endpoint = \"http://{closed}\"\n",
        sim.herald_config(&store.url, "")
    );
    // Batches every 20 ms, so several exports fail during the test.
    let mut herald = Herald::start_with_env(
        dir.path(),
        &config,
        "all",
        &[("OTEL_BSP_SCHEDULE_DELAY", "20")],
    );
    for _ in 0..3 {
        send_and_deliver(&herald).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = herald.logs_at_exit();
    let said = logs.matches("trace collector unreachable").count();
    assert_eq!(said, 1, "{logs}");
}
