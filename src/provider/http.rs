//! The provider contract's transport: POST the stored JSON body to a URL.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use super::{Provider, ProviderResponse, SendError, parse_retry_after};
use crate::domain::Channel;

/// How much of an error body is kept in the attempt history.
const EXCERPT_BYTES: usize = 200;

pub struct HttpJsonProvider {
    name: String,
    channel: Channel,
    url: reqwest::Url,
    timeout: Duration,
    client: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpProviderError {
    #[error(
        "provider {name}: {url:?} is not a valid http:// URL (https is not supported by this build)"
    )]
    BadUrl { name: String, url: String },
    #[error("provider {name}: could not build its HTTP client")]
    Client {
        name: String,
        #[source]
        source: reqwest::Error,
    },
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
        let parsed = reqwest::Url::parse(url)
            .ok()
            .filter(|u| u.scheme() == "http" && u.host().is_some())
            .ok_or_else(|| HttpProviderError::BadUrl {
                name: name.to_owned(),
                url: url.to_owned(),
            })?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(max_in_flight)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| HttpProviderError::Client {
                name: name.to_owned(),
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            channel,
            url: parsed,
            timeout,
            client,
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
        let response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // The body must be read so the connection goes back to the pool.
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
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

impl HttpJsonProvider {
    fn transport_error(&self, e: reqwest::Error) -> SendError {
        if e.is_timeout() {
            SendError::Timeout(self.timeout)
        } else if e.is_connect() {
            SendError::Connect(e)
        } else {
            SendError::Transport(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(url: &str) -> Result<HttpJsonProvider, HttpProviderError> {
        HttpJsonProvider::new("p", Channel::Sms, url, Duration::from_secs(1), 1)
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
