//! The HTTP server: the API, or only the health checks on a worker; with
//! a cap on connections and limits on how long a client may hold one; over
//! TLS when the listener has it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::connection::{self, Timeouts};
use crate::api::problem::Problem;
use crate::api::{self, ApiState};
use crate::config::{Config, HttpConfig};
use crate::tls::ListenerTls;

pub(super) struct HttpServer {
    task: JoinHandle<()>,
    ended: bool,
}

impl HttpServer {
    /// Serves on `listener` (over `tls` if given) until `stop` turns true;
    /// then finishes the requests under way.
    pub fn start(
        config: &Config,
        listener: TcpListener,
        tls: Option<&ListenerTls>,
        state: Arc<ApiState>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self::start_with(config, listener, tls, routes(config, state), stop)
    }

    /// Serves `/metrics` alone on `listener`, with the same limits and TLS.
    pub fn start_metrics(
        config: &Config,
        listener: TcpListener,
        tls: Option<&ListenerTls>,
        state: Arc<ApiState>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let router = api::metrics_router(state).layer(middleware::from_fn(count));
        Self::start_with(config, listener, tls, router, stop)
    }

    fn start_with(
        config: &Config,
        listener: TcpListener,
        tls: Option<&ListenerTls>,
        router: Router,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let tls = tls.map(ListenerTls::acceptor);
        let task = tokio::spawn(accept_loop(
            listener,
            tls,
            router,
            config.http.clone(),
            stop,
        ));
        Self { task, ended: false }
    }

    /// Resolves if the server ends by itself (a bug: it panicked).
    pub async fn ended(&mut self) {
        if self.ended {
            return std::future::pending().await;
        }
        let _ = (&mut self.task).await;
        tracing::error!("the HTTP server stopped; stopping");
        self.ended = true;
    }

    /// Waits for the server to finish (it was told to stop already): a
    /// client that keeps a connection busy gets 503s until `limit`, then is
    /// cut off.
    pub async fn stop(mut self, limit: Duration) {
        if !self.ended && tokio::time::timeout(limit, &mut self.task).await.is_err() {
            // Dropping the connections' tasks closes them.
            self.task.abort();
        }
    }
}

/// Connections of clients over `http.max_connections_per_client` kept at
/// once; a newer one pushes out the oldest. They may ask only for a health
/// check, so one client holding its share cannot make `/healthz` fail for
/// the load balancer that shares its address.
const OVER_CLIENT_CAP: usize = 32;

/// How long a connection over its client's cap may take to send its head.
const OVER_CLIENT_CAP_HEAD: Duration = Duration::from_secs(2);

/// A connection's places: under the connection cap and, unless it is over
/// it, under its client's.
pub(super) struct Slot {
    _global: OwnedSemaphorePermit,
    _client: Option<ClientSlot>,
}

/// Connections open per client address.
type Clients = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One of a client address's connections; given back when dropped. The
/// map holds only addresses with a connection open, so it is no larger
/// than `http.max_connections`.
struct ClientSlot {
    clients: Clients,
    ip: IpAddr,
}

impl ClientSlot {
    fn take(clients: &Clients, ip: IpAddr, cap: usize) -> Option<Self> {
        let mut open = clients.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(Self {
            clients: Arc::clone(clients),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: HttpConfig,
    mut stop: watch::Receiver<bool>,
) {
    let timeouts = Timeouts {
        header_read: Duration::from_millis(limits.header_read_timeout_ms),
        idle: Duration::from_millis(limits.idle_timeout_ms),
    };
    let over_cap_timeouts = Timeouts {
        header_read: timeouts.header_read.min(OVER_CLIENT_CAP_HEAD),
        idle: timeouts.idle.min(OVER_CLIENT_CAP_HEAD),
    };
    let over_cap_router = router.clone().layer(middleware::from_fn(health_check_only));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let clients = Clients::default();
    let mut over_cap: VecDeque<AbortHandle> = VecDeque::new();
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: the listener itself is fine. Pausing
                    // keeps a lack of descriptors from spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = stopped(&mut stop) => break,
        };
        let Ok(global) = Arc::clone(&slots).try_acquire_owned() else {
            refuse(stream, tls.is_some());
            continue;
        };
        let ip = peer.ip().to_canonical();
        match ClientSlot::take(&clients, ip, limits.max_connections_per_client) {
            Some(client) => {
                connections.spawn(connection::serve(
                    stream,
                    tls.clone(),
                    router.clone(),
                    timeouts,
                    stop.clone(),
                    Slot {
                        _global: global,
                        _client: Some(client),
                    },
                ));
            }
            None => {
                over_cap.retain(|c| !c.is_finished());
                if over_cap.len() >= OVER_CLIENT_CAP
                    && let Some(oldest) = over_cap.pop_front()
                {
                    // Dropping its task closes it.
                    oldest.abort();
                }
                tracing::debug!(%ip, "a client over http.max_connections_per_client: health checks only");
                over_cap.push_back(connections.spawn(connection::serve(
                    stream,
                    tls.clone(),
                    over_cap_router.clone(),
                    over_cap_timeouts,
                    stop.clone(),
                    Slot {
                        _global: global,
                        _client: None,
                    },
                )));
            }
        }
    }
    // No new connections; those open finish their request and close.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// A connection over its client's cap: one health check answered, anything
/// else 429; then closed.
async fn health_check_only(request: Request, next: Next) -> Response {
    let mut response = match request.uri().path() {
        "/healthz" | "/readyz" => next.run(request).await,
        _ => {
            let mut refused = Problem::too_many_client_connections().into_response();
            refused
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            refused
        }
    };
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Over the cap: a 503 if the socket takes it at once, then closed. Never
/// queued, never waited on. Over TLS only closed: a handshake to say 503
/// would spend on the client the CPU the cap is there to save.
fn refuse(stream: TcpStream, tls: bool) {
    if tls {
        tracing::debug!("refused a TLS connection over http.max_connections");
        return;
    }
    let answer = closing_answer(&Problem::too_many_connections(), "retry-after: 1\r\n");
    let _ = stream.try_write(answer.as_bytes());
    tracing::debug!("refused a connection over http.max_connections");
}

/// A whole HTTP/1.1 answer carrying `problem`, for a connection that is
/// closed before hyper ever sees it; `headers` are extra lines, each
/// ending in CRLF.
pub(super) fn closing_answer(problem: &Problem, headers: &str) -> String {
    let body = serde_json::to_string(problem).unwrap_or_default();
    format!(
        "HTTP/1.1 {}\r\ncontent-type: application/problem+json\r\n{headers}\
         {REQUEST_ID}: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        problem.status,
        fresh_request_id(),
        body.len()
    )
}

fn routes(config: &Config, state: Arc<ApiState>) -> Router {
    let router = api::router(state, config.metrics.listen.is_none());
    let router = if config.role.serves_api() {
        router
    } else {
        router.layer(middleware::from_fn(health_only))
    };
    let limit = Duration::from_millis(config.http.request_timeout_ms);
    router.layer(middleware::from_fn(move |request, next| {
        observed(limit, request, next)
    }))
}

const REQUEST_ID: &str = "x-request-id";

/// A request's id, its count and its time limit, in one layer: each
/// `from_fn` layer costs every request a clone of the service beneath it
/// and a boxed future.
async fn observed(limit: Duration, request: Request, next: Next) -> Response {
    let id = request_id(&request);
    let route = route(&request);
    let span = tracing::info_span!("request", request_id = %id);
    crate::telemetry::continue_trace(&span, request.headers());
    let mut response = within(limit, request, next).instrument(span).await;
    crate::metrics::metrics().http_request(&route, response.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Every log line of a request carries its id: the caller's `X-Request-Id`
/// when it is a sane token, a fresh one otherwise; echoed in the answer.
fn request_id(request: &Request) -> String {
    let given = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
    given.map_or_else(fresh_request_id, str::to_owned)
}

fn fresh_request_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// Answers are counted by route: the pattern, never the id in the path.
fn route(request: &Request) -> String {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned())
}

/// Counts every answer by route and status.
async fn count(request: Request, next: Next) -> Response {
    let route = route(&request);
    let response = next.run(request).await;
    crate::metrics::metrics().http_request(&route, response.status().as_u16());
    response
}

/// A request that takes longer than `limit` is answered 503 (its handler
/// is dropped where it stands).
async fn within(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::request_timeout(limit).into_response(),
    }
}

/// A worker's HTTP server answers only its health checks and metrics.
async fn health_only(request: Request, next: Next) -> Response {
    match request.uri().path() {
        "/healthz" | "/readyz" | "/metrics" => next.run(request).await,
        _ => Problem::not_found("such route on a worker-only instance").into_response(),
    }
}

/// Resolves once `stop` is true (the guard `wait_for` returns is not Send).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
