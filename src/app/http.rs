//! The HTTP server: the API, or only the health checks on a worker.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::problem::Problem;
use crate::api::{self, ApiState};
use crate::config::Config;

pub(super) struct HttpServer {
    task: JoinHandle<std::io::Result<()>>,
    /// Set once the task has ended (a finished task is not awaited twice).
    ended: Option<std::io::Result<()>>,
}

impl HttpServer {
    /// Serves on `listener` until `stop` turns true; then finishes the
    /// requests under way.
    pub fn start(
        config: &Config,
        listener: TcpListener,
        state: Arc<ApiState>,
        mut stop: watch::Receiver<bool>,
    ) -> Self {
        let router = routes(config, state);
        let server = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        Self {
            task: tokio::spawn(server.into_future()),
            ended: None,
        }
    }

    /// Resolves if the server ends by itself (it failed).
    pub async fn ended(&mut self) {
        if self.ended.is_some() {
            return std::future::pending().await;
        }
        // Aborted or panicked: nothing more to report than the log has.
        self.ended = Some((&mut self.task).await.unwrap_or(Ok(())));
    }

    /// Waits for the server to finish (it was told to stop already): a
    /// client that keeps a connection busy gets 503s until `limit`, then is
    /// cut off.
    pub async fn stop(mut self, limit: Duration) -> Result<(), std::io::Error> {
        if let Some(ended) = self.ended {
            return ended;
        }
        match tokio::time::timeout(limit, &mut self.task).await {
            Ok(served) => served.unwrap_or(Ok(())),
            Err(_) => {
                self.task.abort();
                Ok(())
            }
        }
    }
}

fn routes(config: &Config, state: Arc<ApiState>) -> Router {
    let router = api::router(state);
    if config.role.serves_api() {
        router
    } else {
        router.layer(middleware::from_fn(health_only))
    }
}

/// A worker's HTTP server answers only its health checks.
async fn health_only(request: Request, next: Next) -> Response {
    match request.uri().path() {
        "/healthz" | "/readyz" => next.run(request).await,
        _ => Problem::not_found("such route on a worker-only instance").into_response(),
    }
}
