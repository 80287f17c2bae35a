//! API keys: who may call which route, and how often.
//!
//! Keys live in the store as SHA-256 hashes; each instance keeps them in
//! memory, re-read every `auth.refresh_ms`, so a request never waits on the
//! store to be let in and a revocation reaches every instance within that.
//! Rate limits are token buckets per key and per instance.

use crate::resilience::clock;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::ApiState;
use super::problem::{Problem, ProblemType};
use crate::resilience::rate::TokenBucket;
use crate::store::{ApiKeyRecord, Store, StoreError};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Create and cancel notifications.
    Send,
    /// Read notifications, stats and providers.
    Read,
    /// Replay, see and change providers, read metrics.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "send" => Some(Scope::Send),
            "read" => Some(Scope::Read),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    /// A comma-separated list, as typed and as stored; `None` if any is unknown.
    pub fn parse_list(s: &str) -> Option<Vec<Self>> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Self::parse)
            .collect()
    }
}

const KEY_PREFIX: &str = "hrd_";

/// A fresh key: 32 random bytes from the operating system, base64url.
pub fn generate_key() -> Result<String, ring::error::Unspecified> {
    let bytes: [u8; 32] = ring::rand::generate(&ring::rand::SystemRandom::new())?.expose();
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// What is stored of a key. A key has 256 random bits, so a fast hash is
/// as good as a slow one against guessing.
pub fn hash_key(key: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
        .as_ref()
        .to_vec()
}

/// Equal or not in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y))) == 0
}

/// An authenticated caller, put in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    scopes: Vec<Scope>,
    limit: Option<(f64, u32)>,
}

struct KnownKey {
    hash: Vec<u8>,
    caller: Caller,
}

/// The keys this instance knows, and the rate limits it keeps.
pub struct Auth {
    required: bool,
    keys: RwLock<Arc<Vec<KnownKey>>>,
    buckets: Mutex<HashMap<String, TokenBucket>>,
    global: Option<Mutex<TokenBucket>>,
}

impl Auth {
    pub fn new(required: bool, global_rate_per_sec: Option<f64>) -> Self {
        Self {
            required,
            keys: RwLock::new(Arc::new(Vec::new())),
            buckets: Mutex::new(HashMap::new()),
            global: global_rate_per_sec.map(|rate| {
                Mutex::new(TokenBucket::new(
                    rate,
                    TokenBucket::default_burst(rate),
                    clock::instant(),
                ))
            }),
        }
    }

    /// Re-reads the keys; revoked ones are dropped, their buckets too.
    pub async fn refresh(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let keys: Vec<KnownKey> = store
            .api_keys()
            .await?
            .into_iter()
            .filter(|k| k.revoked_at.is_none())
            .filter_map(known)
            .collect();
        let count = keys.len();
        {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            buckets.retain(|name, _| keys.iter().any(|k| &k.caller.name == name));
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(count)
    }

    fn find(&self, key: &str) -> Option<Caller> {
        let hash = hash_key(key);
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()));
        // Every stored hash is compared, whichever matches.
        let mut found = None;
        for k in keys.iter() {
            if same(&k.hash, &hash) {
                found = Some(k.caller.clone());
            }
        }
        found
    }

    /// Whether the key named `name` is still known and holds `scope`: an
    /// answer that lasts (the event stream) asks as it goes, so a revoked
    /// key stops it within `auth.refresh_ms` too.
    pub fn still_allows(&self, name: &str, scope: Scope) -> bool {
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()));
        keys.iter()
            .any(|k| k.caller.name == name && k.caller.scopes.contains(&scope))
    }

    /// A token from the caller's bucket, if it has a limit.
    fn take(&self, caller: &Caller) -> Option<(u32, Result<u32, std::time::Duration>)> {
        let (rate, burst) = caller.limit?;
        let now = clock::instant();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(caller.name.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst, now));
        Some((bucket.burst(), bucket.take(now)))
    }
}

/// A stored key as this instance uses it; a row it cannot read is skipped.
fn known(k: ApiKeyRecord) -> Option<KnownKey> {
    let Some(scopes) = Scope::parse_list(&k.scopes) else {
        tracing::warn!(key = %k.name, "an API key has unknown scopes; it is ignored");
        return None;
    };
    let limit = k.rate_per_sec.filter(|r| *r > 0.0).map(|rate| {
        (
            rate,
            k.burst.unwrap_or_else(|| TokenBucket::default_burst(rate)),
        )
    });
    Some(KnownKey {
        hash: k.key_hash,
        caller: Caller {
            name: k.name,
            scopes,
            limit,
        },
    })
}

/// The scopes any one of which lets a request through; empty: open to all.
pub(super) fn needed(method: &Method, path: &str) -> &'static [Scope] {
    match path {
        "/healthz" | "/readyz" | "/openapi.json" => &[],
        // The dashboard's page holds no data; what it shows needs a key.
        "/" | "/dashboard" | "/dashboard/app.js" | "/dashboard/style.css" => &[],
        "/metrics" | "/v1/events" => &[Scope::Admin],
        p if p.starts_with("/v1/webhooks") => &[Scope::Admin],
        // An operator who may replay and change providers may also read
        // what they act on (the dashboard's dead letters and lookups).
        _ if method == Method::GET || method == Method::HEAD => &[Scope::Read, Scope::Admin],
        p if p.starts_with("/v1/providers") => &[Scope::Admin],
        p if p.starts_with("/v1/notifications/") && p.ends_with("/replay") => &[Scope::Admin],
        _ => &[Scope::Send],
    }
}

/// The key a request carries: `Authorization: Bearer KEY` or `X-Api-Key`.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, key) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    headers.get("x-api-key")?.to_str().ok().map(str::trim)
}

/// The middleware: 401 without a known key, 403 without the scope, 429
/// over a limit; otherwise the caller goes in the request's extensions.
pub async fn authorize(
    State(state): State<Arc<ApiState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let auth = &state.auth;
    let scopes = needed(request.method(), request.uri().path());
    if scopes.is_empty() {
        return next.run(request).await;
    }
    let mut limit_headers = None;
    if auth.required {
        let Some(caller) = presented(request.headers()).and_then(|k| auth.find(k)) else {
            return Problem::unauthorized().into_response();
        };
        if !caller.scopes.iter().any(|s| scopes.contains(s)) {
            return Problem::forbidden(scopes[0].as_str()).into_response();
        }
        match auth.take(&caller) {
            Some((burst, Err(wait))) => return too_many(burst, wait),
            Some((burst, Ok(left))) => limit_headers = Some((burst, left)),
            None => {}
        }
        request.extensions_mut().insert(caller);
    }
    if let Some(global) = &auth.global {
        let taken = global
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(clock::instant());
        if let Err(wait) = taken {
            let mut response = Problem::busy().into_response();
            set(&mut response, header::RETRY_AFTER, seconds(wait));
            return response;
        }
    }
    let mut response = next.run(request).await;
    if let Some((burst, left)) = limit_headers {
        set(&mut response, "ratelimit-limit", u64::from(burst));
        set(&mut response, "ratelimit-remaining", u64::from(left));
    }
    response
}

fn too_many(burst: u32, wait: std::time::Duration) -> Response {
    let mut response = Problem::rate_limited().into_response();
    let wait = seconds(wait);
    set(&mut response, header::RETRY_AFTER, wait);
    set(&mut response, "ratelimit-limit", u64::from(burst));
    set(&mut response, "ratelimit-remaining", 0);
    set(&mut response, "ratelimit-reset", wait);
    response
}

/// Whole seconds, rounded up, at least one.
fn seconds(d: std::time::Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

fn set(response: &mut Response, name: impl header::IntoHeaderName, value: u64) {
    response
        .headers_mut()
        .insert(name, HeaderValue::from(value));
}

/// Whose request this is, for scoping its idempotency key: the key's name,
/// or the empty (anonymous) scope when keys are off.
pub struct CallerScope(pub String);

impl<S: Send + Sync> FromRequestParts<S> for CallerScope {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self(
            parts
                .extensions
                .get::<Caller>()
                .map(|c| c.name.clone())
                .unwrap_or_default(),
        ))
    }
}

/// Whose notifications a caller may read, list and cancel: `All` with an
/// `admin` key, or with keys off; otherwise only those its key sent, so
/// that keys given to different applications do not read each other's
/// messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sees {
    All,
    Own(String),
}

impl Sees {
    /// Whether a notification sent by `created_by` is visible.
    pub fn allows(&self, created_by: Option<&str>) -> bool {
        match self {
            Sees::All => true,
            Sees::Own(name) => created_by == Some(name.as_str()),
        }
    }

    /// The listing's restriction, if any.
    pub fn only(&self) -> Option<String> {
        match self {
            Sees::All => None,
            Sees::Own(name) => Some(name.clone()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Sees {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(match parts.extensions.get::<Caller>() {
            Some(c) if !c.scopes.contains(&Scope::Admin) => Sees::Own(c.name.clone()),
            _ => Sees::All,
        })
    }
}

impl Problem {
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ProblemType::Unauthorized,
            "An API key is needed",
            "send a valid, unrevoked key as `Authorization: Bearer KEY` or `X-Api-Key: KEY`".into(),
        )
    }

    pub fn forbidden(scope: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ProblemType::Forbidden,
            "This key may not do that",
            format!("this request needs a key with the {scope} scope"),
        )
    }

    pub fn rate_limited() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ProblemType::RateLimited,
            "Too many requests for this key",
            "this key is over its rate limit on this instance; wait for Retry-After".into(),
        )
    }

    pub fn busy() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ProblemType::InstanceBusy,
            "This instance is over its request limit",
            "auth.global_rate_per_sec was reached; wait for Retry-After or try another".into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_their_scopes() {
        assert!(needed(&Method::GET, "/healthz").is_empty());
        assert_eq!(needed(&Method::POST, "/v1/sms"), [Scope::Send]);
        assert_eq!(needed(&Method::POST, "/api/email"), [Scope::Send]);
        assert_eq!(
            needed(&Method::DELETE, "/v1/notifications/x"),
            [Scope::Send]
        );
        assert_eq!(
            needed(&Method::GET, "/v1/notifications/x"),
            [Scope::Read, Scope::Admin]
        );
        assert_eq!(
            needed(&Method::POST, "/v1/notifications/x/replay"),
            [Scope::Admin]
        );
        assert_eq!(needed(&Method::GET, "/metrics"), [Scope::Admin]);
        for path in [
            "/v1/providers/a/disable",
            "/v1/providers/a/enable",
            "/v1/providers/reload",
        ] {
            assert_eq!(needed(&Method::POST, path), [Scope::Admin]);
        }
        assert_eq!(needed(&Method::GET, "/v1/events"), [Scope::Admin]);
        assert!(needed(&Method::GET, "/dashboard").is_empty());
        assert!(needed(&Method::GET, "/dashboard/app.js").is_empty());
        assert!(needed(&Method::GET, "/").is_empty());
        assert_eq!(
            needed(&Method::GET, "/dashboard/other"),
            [Scope::Read, Scope::Admin]
        );
        assert_eq!(
            needed(&Method::GET, "/v1/providers"),
            [Scope::Read, Scope::Admin]
        );
        assert_eq!(
            needed(&Method::GET, "/v1/webhooks/deliveries"),
            [Scope::Admin]
        );
    }

    #[test]
    fn keys_are_read_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("hrd_a"));
        assert_eq!(presented(&h), Some("hrd_a"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer hrd_b"),
        );
        assert_eq!(presented(&h), Some("hrd_b"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eA=="),
        );
        assert_eq!(presented(&h), None);
    }

    #[test]
    fn keys_are_random_and_hashed() {
        let (a, b) = (generate_key().unwrap(), generate_key().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() > 40);
        assert_eq!(hash_key(&a).len(), 32);
        assert!(same(&hash_key(&a), &hash_key(&a)));
        assert!(!same(&hash_key(&a), &hash_key(&b)));
        assert_eq!(Scope::parse_list("send,read").unwrap().len(), 2);
        assert!(Scope::parse_list("send,root").is_none());
    }
}
