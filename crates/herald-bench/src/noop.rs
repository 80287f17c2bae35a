//! `herald noop-server` (hidden): Herald's HTTP stack with nothing behind
//! it, the floor that `herald bench --floor` measures Herald against.
//!
//! The same binary (allocator, tokio runtime), hyper's HTTP/1.1 server with
//! `TCP_NODELAY` as Herald's connections have, and an axum router. Each
//! handler reads the whole request body, as Herald must, and parses none of
//! it: the floor holds what every HTTP exchange costs, not JSON parsing or
//! validation (which `cargo bench` puts well under a microsecond). It
//! answers with bodies of the shape and size of the real answers: Herald's
//! 202 on the API paths, the contract's 200 on the provider paths.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::response::IntoResponse;
use axum::routing::post;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// What the bench reads on the server's stdout to find it.
pub const LISTENING: &str = "noop server listening on http://";

/// The provider path the outbound floor sends to.
pub const PROVIDER_PATH: &str = "/api/sms/provider1";

const JSON: &str = "application/json";
/// Herald's answer to an accepted notification, with a fixed id.
const ACCEPTED_LOCATION: &str = "/v1/notifications/ntf_019ad2a4-9b35-7c3e-8f4a-0c1d2e3f4a5b";
const ACCEPTED_BODY: &str =
    r#"{"id":"ntf_019ad2a4-9b35-7c3e-8f4a-0c1d2e3f4a5b","status":"sending"}"#;
/// The contract's answer to a successful send.
const SENT_BODY: &str = r#"{"message":"SMS sent via Provider 1"}"#;

/// Serves on a free loopback port until `shutdown` resolves; prints
/// [`LISTENING`] and the address once it listens.
pub async fn run(shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    println!("{LISTENING}{}", listener.local_addr()?);
    serve(listener, shutdown).await;
    Ok(())
}

async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let router = router();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // E.g. out of file descriptors: do not spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            // A client's reset or garbage ends its connection; nothing to do.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// Not Herald's API, so nothing to document: the workspace's clippy.toml
// makes Herald add its routes with `routes!` (documented), and once built
// Herald's router is this same plain axum `Router`, which is what the floor
// must measure.
#[allow(clippy::disallowed_methods)]
fn router() -> Router {
    Router::new()
        .route("/v1/sms", post(accepted))
        .route("/v1/email", post(accepted))
        .route("/api/sms", post(accepted))
        .route("/api/email", post(accepted))
        .route("/v1/batch", post(accepted))
        .route("/api/{channel}/{provider}", post(sent))
}

// The `Bytes` extractor reads the whole body before the handler runs.
async fn accepted(_body: Bytes) -> impl IntoResponse {
    (
        StatusCode::ACCEPTED,
        [(CONTENT_TYPE, JSON), (LOCATION, ACCEPTED_LOCATION)],
        ACCEPTED_BODY,
    )
}

async fn sent(_body: Bytes) -> impl IntoResponse {
    (StatusCode::OK, [(CONTENT_TYPE, JSON)], SENT_BODY)
}

/// The address in a [`LISTENING`] line.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix(LISTENING)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Conn;

    #[tokio::test]
    async fn answers_like_herald_and_like_a_provider() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async {
            let _ = stopped.await;
        }));
        let mut conn = Conn::open(addr).await.unwrap();
        let body = || Bytes::from_static(br#"{"phone":"01712345678","text":"hi"}"#);
        for path in ["/v1/sms", "/v1/email", "/api/sms", "/v1/batch"] {
            assert_eq!(
                conn.post_json(path, body()).await.unwrap(),
                StatusCode::ACCEPTED
            );
        }
        assert_eq!(
            conn.post_json(PROVIDER_PATH, body()).await.unwrap(),
            StatusCode::OK
        );
        // Nothing else: the bench's floor run reads no stats.
        let (status, _) = conn.get("/v1/stats").await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("stops when told")
            .unwrap();
        assert_eq!(
            parse_listening_line(&format!("{LISTENING}127.0.0.1:4242\n")),
            Some("127.0.0.1:4242".parse().unwrap())
        );
        assert_eq!(
            parse_listening_line("herald listening on http://127.0.0.1:1"),
            None
        );
    }
}
