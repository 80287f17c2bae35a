//! The provider contract's transport: POST the stored JSON body to a URL.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::http::uri::{Scheme, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{Provider, ProviderResponse, SendError, parse_retry_after};
use crate::domain::Channel;

/// How much of an error body is kept in the attempt history.
const EXCERPT_BYTES: usize = 200;

/// hyper's pooled HTTP/1.1 client, without reqwest's per-request work (URL
/// parsing, proxy matching, header building): the profile showed it.
pub struct HttpJsonProvider {
    name: String,
    channel: Channel,
    uri: Uri,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpProviderError {
    #[error(
        "provider {name}: {url:?} is not a valid http:// URL (https is not supported by this build)"
    )]
    BadUrl { name: String, url: String },
}

impl HttpJsonProvider {
    /// One client, and so one keep-alive pool, per provider: a slow provider
    /// cannot starve the others of connections.
    pub fn new(
        name: &str,
        channel: Channel,
        url: &str,
        timeout: Duration,
        max_in_flight: usize,
    ) -> Result<Self, HttpProviderError> {
        // This build has no TLS stack (it keeps the binary lean); an https
        // URL would fail on every send, so it is refused at start-up.
        let uri = url
            .parse::<Uri>()
            .ok()
            .filter(|u| {
                u.scheme() == Some(&Scheme::HTTP) && u.host().is_some_and(|h| !h.is_empty())
            })
            .ok_or_else(|| HttpProviderError::BadUrl {
                name: name.to_owned(),
                url: url.to_owned(),
            })?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_in_flight)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            name: name.to_owned(),
            channel,
            uri,
            timeout,
            client,
        })
    }

    async fn exchange(&self, body: Bytes) -> Result<ProviderResponse, SendError> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = self.uri.clone();
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let response = self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                SendError::Connect(Box::new(e))
            } else {
                SendError::Transport(Box::new(e))
            }
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // The body must be read so the connection goes back to the pool.
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| SendError::Transport(Box::new(e)))?
            .to_bytes();
        let body_excerpt = if (200..300).contains(&status) {
            String::new()
        } else {
            let end = bytes.len().min(EXCERPT_BYTES);
            String::from_utf8_lossy(&bytes[..end]).trim().to_owned()
        };
        Ok(ProviderResponse {
            status,
            retry_after,
            body_excerpt,
        })
    }
}

#[async_trait]
impl Provider for HttpJsonProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn channel(&self) -> Channel {
        self.channel
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn send(&self, body: Bytes) -> Result<ProviderResponse, SendError> {
        // One deadline for connecting, sending and reading the answer.
        tokio::time::timeout(self.timeout, self.exchange(body))
            .await
            .unwrap_or(Err(SendError::Timeout(self.timeout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(url: &str) -> Result<HttpJsonProvider, HttpProviderError> {
        HttpJsonProvider::new("p", Channel::Sms, url, Duration::from_secs(1), 1)
    }

    #[tokio::test]
    async fn an_unanswered_request_times_out_and_a_closed_port_refuses() {
        // Accepts connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/sms/provider1", silent.local_addr().unwrap());
        let p =
            HttpJsonProvider::new("p", Channel::Sms, &url, Duration::from_millis(200), 1).unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                open.push(socket);
            }
        });
        let sent = p.send(Bytes::from_static(b"{}")).await;
        assert!(matches!(sent, Err(SendError::Timeout(_))), "{sent:?}");
        held.abort();

        // A port nobody listens on any more.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/sms/provider1", closed.local_addr().unwrap());
        drop(closed);
        let p = HttpJsonProvider::new("p", Channel::Sms, &url, Duration::from_secs(1), 1).unwrap();
        let sent = p.send(Bytes::from_static(b"{}")).await;
        assert!(matches!(sent, Err(SendError::Connect(_))), "{sent:?}");
    }

    #[test]
    fn only_plain_http_urls() {
        assert!(make("http://127.0.0.1:8071/api/sms/provider1").is_ok());
        for bad in [
            "https://sms.example.com/send",
            "ftp://x/y",
            "127.0.0.1:8071",
            "http://",
            "",
        ] {
            assert!(
                matches!(make(bad), Err(HttpProviderError::BadUrl { .. })),
                "{bad}"
            );
        }
    }
}
