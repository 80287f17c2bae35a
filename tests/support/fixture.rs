//! A stand-in for a real provider's API: an HTTP server on 127.0.0.1 that
//! records every request and answers as the test scripts it, in the shapes
//! the provider documents.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

/// One request the fixture received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// When it arrived, by the fixture's clock.
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Every value of a form field, in order.
    pub fn fields(&self, name: &str) -> Vec<String> {
        form_urlencoded::parse(&self.body)
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .collect()
    }

    /// A form field's value, if it occurs once.
    pub fn field(&self, name: &str) -> Option<String> {
        let mut values = self.fields(name);
        (values.len() == 1).then(|| values.remove(0))
    }

    pub fn form_keys(&self) -> Vec<String> {
        form_urlencoded::parse(&self.body)
            .map(|(k, _)| k.into_owned())
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What the fixture answers.
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

pub fn reply(status: u16, body: impl Into<String>) -> Reply {
    Reply {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.into(),
    }
}

/// A 200 answer with an HTML page: what a web page of another site serves.
pub fn page(body: impl Into<String>) -> Reply {
    Reply {
        status: 200,
        headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
        body: body.into(),
    }
}

impl Reply {
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Answers a request, seeing the requests that came before it.
type Script = dyn Fn(&Recorded, &[Recorded]) -> Reply + Send + Sync;

struct Inner {
    script: Box<Script>,
    requests: Mutex<Vec<Recorded>>,
    /// How long each answer is held back after its request is recorded.
    delay: std::time::Duration,
}

pub struct Fixture {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Fixture {
    pub async fn start(
        script: impl Fn(&Recorded, &[Recorded]) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start_delayed(std::time::Duration::ZERO, script).await
    }

    /// Like [`Fixture::start`], answering each request `delay` after it
    /// arrived (it is in [`Fixture::requests`] at once): a provider that
    /// holds requests in flight.
    pub async fn start_delayed(
        delay: std::time::Duration,
        script: impl Fn(&Recorded, &[Recorded]) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let inner = Arc::new(Inner {
            script: Box::new(script),
            requests: Mutex::new(Vec::new()),
            delay,
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, inner, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// The requests whose form field or JSON text contains `needle`.
    pub fn requests_with(&self, needle: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.text().contains(needle))
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body: body.to_vec(),
        at: Instant::now(),
    };
    let reply = {
        let mut requests = inner.requests.lock().unwrap();
        let reply = (inner.script)(&recorded, &requests);
        requests.push(recorded);
        reply
    };
    tokio::time::sleep(inner.delay).await;
    let mut response = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    response.body(Body::from(reply.body)).unwrap()
}
