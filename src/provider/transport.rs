//! The HTTP client every HTTP provider kind shares: one pooled hyper client
//! per provider, over plain HTTP or TLS (rustls), one deadline per exchange,
//! at most [`MAX_ANSWER_BYTES`] of an answer read.

use crate::resilience::clock;
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use hyper::http::uri::{Scheme, Uri};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::SendError;
use super::resolve::Resolver;
use crate::tls::{self, TlsError};

/// How much of an error body is kept in the attempt history.
const EXCERPT_BYTES: usize = 200;

/// The most of an answer's body that is read (providers', webhook
/// receivers', callbacks'): far more than any id or error excerpt needs.
/// Past it the rest is not read and the connection is dropped, so a
/// receiver answering hundreds of megabytes costs Herald this much.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// An answer, whatever its status.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// At most [`MAX_ANSWER_BYTES`]: the start of a longer body.
    pub body: Bytes,
}

impl HttpAnswer {
    /// `Retry-After`, as a delay from now, when the provider sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, clock::wall()))
    }

    /// The body as JSON of the shape `T`, if it is that.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A header's value, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The start of the body, for the attempt history of failures.
    pub fn excerpt(&self) -> String {
        let end = self.body.len().min(EXCERPT_BYTES);
        let mut text = String::from_utf8_lossy(&self.body[..end]).trim().to_owned();
        // A cut may split a character; from_utf8_lossy marks it, which is fine.
        if self.body.len() > end {
            text.push('…');
        }
        text
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("provider {name}: {url:?} is not a valid http:// or https:// URL")]
    BadUrl { name: String, url: String },
    #[error("provider {name}: cannot set up TLS")]
    Tls {
        name: String,
        #[source]
        source: TlsError,
    },
}

/// hyper's pooled HTTP/1.1 client, without reqwest's per-request work (URL
/// parsing, proxy matching, header building): the profile showed it.
pub struct HttpTransport {
    client: Client<HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>,
    timeout: Duration,
}

impl HttpTransport {
    /// One client, and so one keep-alive pool, per provider: a slow provider
    /// cannot starve the others of connections. `https://` URLs are checked
    /// against the public roots, or only against `ca_file`'s CAs when given
    /// (see [`crate::tls`]); a CA file that cannot be read fails here, at
    /// start-up, not at the first send.
    pub fn new(
        name: &str,
        timeout: Duration,
        max_in_flight: usize,
        ca_file: Option<&Path>,
    ) -> Result<Self, TransportError> {
        Self::with_resolver(name, timeout, max_in_flight, ca_file, Resolver::system())
    }

    /// Like [`HttpTransport::new`], resolving names with `resolver` (one
    /// that refuses internal addresses, for callbacks).
    pub fn with_resolver(
        name: &str,
        timeout: Duration,
        max_in_flight: usize,
        ca_file: Option<&Path>,
        resolver: Resolver,
    ) -> Result<Self, TransportError> {
        let tls = tls::client_config(ca_file).map_err(|source| TransportError::Tls {
            name: name.to_owned(),
            source,
        })?;
        let mut connector = HttpConnector::new_with_resolver(resolver);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        // The TLS layer takes https:// URLs; the plain connector must let them through.
        connector.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_in_flight)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self { client, timeout })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Parses a provider's URL, refusing what this transport cannot reach.
    pub fn parse_url(name: &str, url: &str) -> Result<Uri, TransportError> {
        url.parse::<Uri>()
            .ok()
            .filter(|u| {
                matches!(u.scheme(), Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS)
                    && u.host().is_some_and(|h| !h.is_empty())
            })
            .ok_or_else(|| TransportError::BadUrl {
                name: name.to_owned(),
                url: crate::store::redacted(url),
            })
    }

    /// A provider's base URL (perhaps with a path prefix of its own)
    /// followed by an API path.
    pub fn endpoint(name: &str, base: &str, path: &str) -> Result<Uri, TransportError> {
        Self::parse_url(name, &format!("{}{path}", base.trim_end_matches('/')))
    }

    /// Sends `request` and reads the whole answer, within the timeout (TLS
    /// handshake included). A handshake that fails (an untrusted
    /// certificate, say) is a connect error: nothing was sent.
    pub async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<HttpAnswer, SendError> {
        tokio::time::timeout(self.timeout, self.exchange_unbounded(request))
            .await
            .unwrap_or(Err(SendError::Timeout(self.timeout)))
    }

    async fn exchange_unbounded(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<HttpAnswer, SendError> {
        let response = self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                SendError::Connect(Box::new(e))
            } else {
                SendError::Transport(Box::new(e))
            }
        })?;
        let (parts, body) = response.into_parts();
        let body = read_prefix(body, MAX_ANSWER_BYTES).await?;
        Ok(HttpAnswer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// The first `limit` bytes of `body`. A body that ends within them is read
/// whole, so its connection goes back to the pool; a longer one is cut
/// there and dropped unread, which closes its connection (hyper never
/// pools a connection whose body was not read to its end).
async fn read_prefix(mut body: hyper::body::Incoming, limit: usize) -> Result<Bytes, SendError> {
    let mut read = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| SendError::Transport(Box::new(e)))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let room = limit - read.len();
        if data.len() >= room {
            read.extend_from_slice(&data[..room]);
            break;
        }
        read.extend_from_slice(&data);
    }
    Ok(read.freeze())
}

/// A POST of `body` to `uri`, asking for JSON back.
pub fn post(uri: &Uri, content_type: &'static str, body: Bytes) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri.clone();
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    request
}

/// Adds `value` as the request's `Authorization`, marked sensitive so that
/// hyper never shows it.
pub fn authorize(request: &mut Request<Full<Bytes>>, mut value: HeaderValue) {
    value.set_sensitive(true);
    request.headers_mut().insert(AUTHORIZATION, value);
}

/// HTTP Basic credentials.
pub fn basic_auth(user: &str, password: &str) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    HeaderValue::try_from(format!("Basic {encoded}")).expect("base64 is a valid header value")
}

/// `Bearer TOKEN`; `None` when the token holds what a header cannot.
pub fn bearer(token: &str) -> Option<HeaderValue> {
    HeaderValue::try_from(format!("Bearer {token}")).ok()
}

/// `application/x-www-form-urlencoded` of `pairs`.
pub fn form<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Bytes {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.extend_pairs(pairs);
    Bytes::from(form.finish())
}

pub const FORM: &str = "application/x-www-form-urlencoded";
pub const JSON: &str = "application/json";

/// `Retry-After` is either delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    fn post(url: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(Method::POST)
            .uri(url)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    #[tokio::test]
    async fn an_unanswered_request_times_out_and_a_closed_port_refuses() {
        // Accepts connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/sms/provider1", silent.local_addr().unwrap());
        let t = HttpTransport::new("p", Duration::from_millis(200), 1, None).unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                open.push(socket);
            }
        });
        let sent = t.exchange(post(&url)).await;
        assert!(matches!(sent, Err(SendError::Timeout(_))), "{sent:?}");
        held.abort();

        // A port nobody listens on any more.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/sms/provider1", closed.local_addr().unwrap());
        drop(closed);
        let t = HttpTransport::new("p", Duration::from_secs(1), 1, None).unwrap();
        let sent = t.exchange(post(&url)).await;
        assert!(matches!(sent, Err(SendError::Connect(_))), "{sent:?}");
    }

    /// An HTTP server on loopback answering every request with a 500 whose
    /// body is `len` bytes, written in chunks until the peer goes away;
    /// its task answers how many bytes it managed to write.
    async fn endless_answer(len: usize) -> (String, tokio::task::JoinHandle<usize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A small send buffer, so what was written is close to what was read.
        socket.set_send_buffer_size(64 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            // The request: headers and its small body, read to their end.
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its request ended");
                request.extend_from_slice(&buf[..n]);
            }
            let head =
                format!("HTTP/1.1 500 Internal Server Error\r\ncontent-length: {len}\r\n\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b'x'; 16 * 1024];
            let mut written = 0;
            while written < len {
                match stream.write(&chunk[..chunk.len().min(len - written)]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => written += n,
                }
            }
            written
        });
        (url, server)
    }

    #[tokio::test]
    async fn a_huge_answer_is_read_up_to_its_bound_and_the_connection_dropped() {
        const HUGE: usize = 256 * 1024 * 1024;
        let (url, server) = endless_answer(HUGE).await;
        let t = HttpTransport::new("p", Duration::from_secs(30), 1, None).unwrap();
        let answer = t.exchange(post(&url)).await.expect("an answer");
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answer.body.len(), MAX_ANSWER_BYTES);
        assert!(answer.excerpt().chars().count() <= EXCERPT_BYTES + 1);
        // Dropping the connection ends the server's writes with an error;
        // the bound on the wait is only there so a kept connection fails
        // the test instead of hanging it.
        let written = tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .expect("the connection was kept open: the rest of the body was waited for")
            .unwrap();
        // What the server wrote is what was read plus the two sockets'
        // buffers: megabytes at most, never the body.
        assert!(
            written < 16 * 1024 * 1024,
            "the server wrote {written} bytes"
        );
        drop(t);
    }

    #[tokio::test]
    async fn a_short_answer_is_read_whole() {
        let (url, server) = endless_answer(1000).await;
        let t = HttpTransport::new("p", Duration::from_secs(30), 1, None).unwrap();
        let answer = t.exchange(post(&url)).await.expect("an answer");
        assert_eq!(answer.body.len(), 1000);
        assert_eq!(server.await.unwrap(), 1000);
    }

    #[test]
    fn http_and_https_urls_only() {
        assert!(HttpTransport::parse_url("p", "http://127.0.0.1:8071/api/sms/provider1").is_ok());
        assert!(HttpTransport::parse_url("p", "https://api.twilio.com").is_ok());
        for bad in [
            "ftp://x/y",
            "smtp://127.0.0.1:25",
            "127.0.0.1:8071",
            "http://",
            "https://",
            "",
        ] {
            assert!(
                matches!(
                    HttpTransport::parse_url("p", bad),
                    Err(TransportError::BadUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_unreadable_ca_file_is_refused_with_the_provider_named() {
        let err = HttpTransport::new(
            "billing-sms",
            Duration::from_secs(1),
            1,
            Some(Path::new("/nonexistent/ca.pem")),
        )
        .err()
        .unwrap();
        assert!(matches!(&err, TransportError::Tls { name, .. } if name == "billing-sms"));
        let text = crate::error::chain(&err);
        assert!(
            text.contains("could not read the CA file /nonexistent/ca.pem"),
            "{text}"
        );
    }

    #[test]
    fn endpoints_join_base_and_path() {
        let uri = HttpTransport::endpoint("p", "http://127.0.0.1:9/", "/v3/mail/send").unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:9/v3/mail/send");
        let uri = HttpTransport::endpoint("p", "http://127.0.0.1:9/prefix", "/sms/json").unwrap();
        assert_eq!(uri.path(), "/prefix/sms/json");
    }

    #[test]
    fn basic_credentials_are_base64() {
        // RFC 7617's own example.
        assert_eq!(
            basic_auth("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert!(bearer("SG.good-token").is_some());
        assert!(bearer("bad\ntoken").is_none());
    }

    #[test]
    fn retry_after_forms() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
