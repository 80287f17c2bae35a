//! Where deliveries go: the configured endpoints by URL, and the callback
//! URLs notifications name; one signed POST per attempt, and what its
//! answer means.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::http::uri::Uri;
use hyper::{Method, Request, StatusCode};

use super::signature::{BadSecret, Signer};
use crate::config::Config;
use crate::domain::callback::{BadHostPattern, CallbackPolicy};
use crate::provider::resolve::{self, Resolver};
use crate::provider::{HttpTransport, SendError, TransportError, outside};
use crate::store::{ClaimedWebhook, WebhookTarget};

/// Webhook requests kept open at once towards one receiver, for its pool.
const IDLE_CONNECTIONS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ReceiversError {
    #[error("webhook endpoint {0}")]
    Endpoint(usize, #[source] TransportError),
    #[error("webhooks_settings.callback_secret")]
    CallbackSecret(#[source] BadSecret),
    #[error("webhooks[{0}].secret")]
    Secret(usize, #[source] BadSecret),
    #[error("webhooks_settings.callback_allowed_hosts")]
    Hosts(#[from] BadHostPattern),
    #[error("webhooks: the callbacks' HTTP client")]
    CallbackTransport(#[source] TransportError),
}

struct Endpoint {
    uri: Uri,
    key: Signer,
    transport: HttpTransport,
}

struct Callbacks {
    key: Signer,
    transport: HttpTransport,
    /// Checked again at each send: a host no longer allowed gets nothing.
    policy: CallbackPolicy,
    /// Whether internal addresses may be reached (else the transport's
    /// resolver refuses them, and so does a URL naming one).
    private_allowed: bool,
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// A 2xx answer.
    Delivered { http_status: u16 },
    Failed {
        http_status: Option<u16>,
        error: String,
        /// No answer at all (refused, timed out): the breaker's strong sign.
        unreachable: bool,
        /// Not worth retrying: the receiver said 410 Gone, or it is no
        /// longer configured or allowed.
        permanent: bool,
        /// The receiver's `Retry-After`.
        retry_after: Option<Duration>,
    },
}

impl Sent {
    fn permanent(error: impl Into<String>) -> Self {
        Sent::Failed {
            http_status: None,
            error: error.into(),
            unreachable: false,
            permanent: true,
            retry_after: None,
        }
    }
}

/// Every receiver this instance can send to.
pub struct Receivers {
    endpoints: HashMap<String, Endpoint>,
    callbacks: Option<Callbacks>,
}

impl Receivers {
    pub fn build(config: &Config) -> Result<Self, ReceiversError> {
        let mut endpoints = HashMap::new();
        for (i, w) in config.webhooks.iter().enumerate() {
            let name = format!("webhooks[{i}]");
            let uri = HttpTransport::parse_url(&name, &w.url)
                .map_err(|e| ReceiversError::Endpoint(i, e))?;
            let transport = HttpTransport::new(
                &name,
                Duration::from_millis(w.timeout_ms),
                IDLE_CONNECTIONS,
                w.ca_file.as_deref(),
            )
            .map_err(|e| ReceiversError::Endpoint(i, e))?;
            let key = Signer::new(&w.secret, w.previous_secret.as_ref())
                .map_err(|e| ReceiversError::Secret(i, e))?;
            endpoints.insert(
                w.url.clone(),
                Endpoint {
                    uri,
                    key,
                    transport,
                },
            );
        }
        let settings = &config.webhooks_settings;
        let policy = config.callback_policy()?;
        let callbacks = match (&settings.callback_secret, policy.is_enabled()) {
            (Some(secret), true) => Some(Callbacks {
                key: Signer::new(secret, settings.callback_previous_secret.as_ref())
                    .map_err(ReceiversError::CallbackSecret)?,
                transport: HttpTransport::with_resolver(
                    "callbacks",
                    Duration::from_millis(settings.callback_timeout_ms),
                    IDLE_CONNECTIONS,
                    None,
                    if settings.callback_allow_private_addresses {
                        Resolver::system()
                    } else {
                        Resolver::public_only()
                    },
                )
                .map_err(ReceiversError::CallbackTransport)?,
                policy,
                private_allowed: settings.callback_allow_private_addresses,
            }),
            _ => None,
        };
        Ok(Self {
            endpoints,
            callbacks,
        })
    }

    /// Nothing to send to: no worker is needed.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.callbacks.is_none()
    }

    /// The longest one attempt may take.
    pub fn longest_timeout(&self) -> Duration {
        self.endpoints
            .values()
            .map(|e| e.transport.timeout())
            .chain(self.callbacks.as_ref().map(|c| c.transport.timeout()))
            .max()
            .unwrap_or_default()
    }

    /// Whose breaker a delivery answers to: its endpoint's, or for a
    /// callback its host's (many callback URLs may share one host).
    pub fn breaker_key(d: &ClaimedWebhook) -> String {
        match d.target {
            WebhookTarget::Endpoint => d.url.clone(),
            WebhookTarget::Callback => origin(&d.url),
        }
    }

    /// One signed attempt; `now` is its `webhook-timestamp`.
    pub async fn send(&self, d: &ClaimedWebhook, now: SystemTime) -> Sent {
        let (uri, key, transport) = match d.target {
            WebhookTarget::Endpoint => match self.endpoints.get(&d.url) {
                Some(e) => (e.uri.clone(), &e.key, &e.transport),
                None => return Sent::permanent("no [[webhooks]] endpoint has this url any more"),
            },
            WebhookTarget::Callback => {
                let Some(c) = &self.callbacks else {
                    return Sent::permanent("callbacks are not enabled on this instance");
                };
                if let Err(reason) = c.policy.check(&d.url) {
                    return Sent::permanent(format!("callback_url {reason}"));
                }
                let Ok(uri) = d.url.parse::<Uri>() else {
                    return Sent::permanent("callback_url is not a URL");
                };
                // An address in the URL is never resolved: checked here.
                // A name is checked by the transport's resolver.
                if !c.private_allowed && uri.host().is_some_and(names_internal_address) {
                    return Sent::permanent(
                        "callback_url names a private, loopback or link-local address, \
                         which callbacks may not reach",
                    );
                }
                (uri, &c.key, &c.transport)
            }
        };
        let id = d.id.to_string();
        let timestamp = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let signature = key.sign(&id, timestamp, &d.payload);
        let request = signed_post(uri, &id, timestamp, &signature, d.payload.clone());
        match transport.exchange(request).await {
            Ok(answer) if answer.status.is_success() => Sent::Delivered {
                http_status: answer.status.as_u16(),
            },
            // The receiver's words, made fit to store where they enter.
            Ok(answer) => Sent::Failed {
                http_status: Some(answer.status.as_u16()),
                error: outside::error_text(&crate::provider::http_error(
                    answer.status.as_u16(),
                    &answer.excerpt(),
                )),
                unreachable: false,
                permanent: answer.status == StatusCode::GONE,
                retry_after: answer.retry_after(),
            },
            Err(SendError::Connect(e)) if resolve::is_private_address(e.as_ref()) => {
                Sent::permanent(crate::error::chain(e.as_ref()))
            }
            Err(e) => Sent::Failed {
                http_status: None,
                unreachable: matches!(e, SendError::Connect(_) | SendError::Timeout(_)),
                error: outside::error_text(&no_answer(&e)),
                permanent: false,
                retry_after: None,
            },
        }
    }
}

/// A URL's host that is an internal IP address (IPv6 in brackets).
fn names_internal_address(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(resolve::is_internal)
}

fn no_answer(e: &SendError) -> String {
    let cause = std::error::Error::source(e).map(crate::error::chain);
    let what = match e {
        SendError::Connect(_) => "could not connect to the receiver".to_owned(),
        SendError::Timeout(limit) => format!("the receiver did not answer within {limit:?}"),
        SendError::Transport(_) => "the request to the receiver failed".to_owned(),
    };
    match cause {
        Some(cause) => format!("{what}: {cause}"),
        None => what,
    }
}

/// The Standard Webhooks request: the payload as is, and its id,
/// timestamp and signature in headers.
fn signed_post(
    uri: Uri,
    id: &str,
    timestamp: u64,
    signature: &str,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("herald/", env!("CARGO_PKG_VERSION"))),
    );
    // Ids are msg_ and hex, timestamps digits, signatures base64: all
    // valid header values.
    for (name, value) in [
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature.to_owned()),
    ] {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    request
}

/// `scheme://host:port` of a URL: what logs show of a receiver (a path or
/// query may hold a token), and a callback host's breaker key.
pub fn origin(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => {
                let host = authority.as_str().rsplit('@').next().unwrap_or_default();
                format!("{scheme}://{host}")
            }
            _ => "(not a URL)".into(),
        },
        Err(_) => "(not a URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_callback_urls_are_checked_names_are_left_to_the_resolver() {
        assert!(names_internal_address("127.0.0.1"));
        assert!(names_internal_address("[::1]"));
        assert!(names_internal_address("169.254.169.254"));
        assert!(!names_internal_address("93.184.216.34"));
        assert!(!names_internal_address("localhost"));
    }

    #[test]
    fn origins_leave_out_paths_queries_and_credentials() {
        assert_eq!(
            origin("https://hooks.example.com:8443/t/abc?token=s3cret"),
            "https://hooks.example.com:8443"
        );
        assert_eq!(origin("http://u:p@127.0.0.1/x"), "http://127.0.0.1");
        assert_eq!(origin("nonsense"), "(not a URL)");
    }
}
