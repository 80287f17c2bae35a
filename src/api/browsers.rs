//! What a web page in the operator's browser may not do when API keys are
//! off (the loopback default).
//!
//! Without keys, the browser is the way in: any page the operator opens may
//! send a form post to `127.0.0.1` (no preflight for a form), and a
//! DNS-rebinding page may read answers under a name of its own that now
//! points at `127.0.0.1`. So, with keys off, a request must name a loopback
//! host (or one in `http.allowed_hosts`), come from no other origin, and
//! send JSON or no body when it changes something. With keys on none of
//! this applies: a browser never adds the key to a request by itself.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::problem::{Problem, ProblemType};

/// The checks, and the names beyond loopback a request may be addressed to.
#[derive(Debug, Clone, Default)]
pub struct BrowserGuard {
    /// Lowercase, without a trailing dot.
    allowed_hosts: Vec<String>,
}

impl BrowserGuard {
    pub fn new(allowed_hosts: &[String]) -> Self {
        Self {
            allowed_hosts: allowed_hosts.iter().map(|h| normal(h)).collect(),
        }
    }

    fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), Problem> {
        // Every browser sends Host; a client without one is no page.
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if let Some(host) = host
            && !self.serves(host)
        {
            return Err(Problem::unknown_host());
        }
        if headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        {
            return Err(Problem::cross_site("Sec-Fetch-Site says cross-site"));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let same = origin
                .to_str()
                .ok()
                .zip(host)
                .is_some_and(|(origin, host)| same_origin(origin, host));
            if !same {
                return Err(Problem::cross_site("the Origin is another site"));
            }
        }
        if changes_state(method) && !json_or_nothing(headers) {
            return Err(Problem::unsupported_media_type());
        }
        Ok(())
    }

    /// A loopback name or address, or a name the settings list.
    fn serves(&self, host_header: &str) -> bool {
        let Some((host, _)) = split_authority(host_header) else {
            return false;
        };
        is_loopback(&host) || self.allowed_hosts.contains(&host)
    }
}

/// The middleware, outside every other: a refused request reaches neither
/// the keys' check nor a handler.
pub async fn guard(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    if let Some(guard) = &state.browsers
        // Health checks hold nothing and change nothing; probes and load
        // balancers address them by whatever name they know.
        && !matches!(request.uri().path(), "/healthz" | "/readyz")
        && let Err(problem) = guard.check(request.method(), request.headers())
    {
        tracing::debug!(detail = %problem.detail, "refused a request a browser may have sent for another site");
        return problem.into_response();
    }
    next.run(request).await
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// JSON, or no body at all: a form post (`application/x-www-form-urlencoded`,
/// `multipart/form-data`, `text/plain`), the one cross-site request a page
/// can send without a preflight, is neither.
fn json_or_nothing(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::CONTENT_TYPE) {
        return super::submit::is_json(headers);
    }
    let no_length = headers
        .get(header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() == b"0");
    no_length && !headers.contains_key(header::TRANSFER_ENCODING)
}

/// Lowercase, without the trailing dot of a fully qualified name.
fn normal(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `host[:port]` (an IPv6 address in brackets) into the normal host, without
/// its brackets, and the port if given.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let authority = authority.trim();
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    let host = normal(host);
    (!host.is_empty()).then_some((host, port))
}

/// `localhost` and the names below it (RFC 6761: browsers resolve them to
/// loopback themselves, so no rebinding can point them elsewhere), and
/// loopback addresses.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Whether `origin` (`scheme://host[:port]`) is the site the request is
/// addressed to (`host` header): same host and port, the port defaulting
/// to the scheme's. `null` (a sandboxed or file page) is no origin of ours.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    match (split_authority(authority), split_authority(host)) {
        (Some((a, a_port)), Some((b, b_port))) => {
            a == b && a_port.unwrap_or(default_port) == b_port.unwrap_or(default_port)
        }
        _ => false,
    }
}

impl Problem {
    pub fn unknown_host() -> Self {
        Self::new(
            StatusCode::MISDIRECTED_REQUEST,
            ProblemType::UnknownHost,
            "This host name is not served",
            "with API keys off, Herald answers only requests addressed to a loopback name or \
             address, or to a name in http.allowed_hosts"
                .into(),
        )
    }

    pub fn cross_site(why: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ProblemType::CrossSite,
            "Requests from other sites are refused",
            format!(
                "{why}; with API keys off, Herald answers only its own pages and clients that are no browser page"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn loopback_names_and_listed_hosts_are_served_others_not() {
        let g = BrowserGuard::new(&["Herald.Internal.".into()]);
        for ok in [
            "127.0.0.1:8080",
            "127.1.2.3",
            "localhost",
            "LOCALHOST.:80",
            "app.localhost:3000",
            "[::1]:8080",
            "[::ffff:127.0.0.1]",
            "herald.internal:8080",
        ] {
            assert!(g.serves(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8080",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "10.0.0.5:8080",
            "[::2]",
            "",
            "127.0.0.1:port",
        ] {
            assert!(!g.serves(bad), "{bad}");
        }
    }

    #[test]
    fn origins_must_be_the_host_itself() {
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same_origin("http://localhost", "localhost:80"));
        assert!(same_origin("https://[::1]", "[::1]:443"));
        assert!(!same_origin("http://127.0.0.1:3000", "127.0.0.1:8080"));
        assert!(!same_origin("https://evil.example", "127.0.0.1:8080"));
        assert!(!same_origin("null", "127.0.0.1:8080"));
        assert!(!same_origin("file://", "127.0.0.1"));
    }

    #[test]
    fn a_cross_site_form_post_is_refused_and_plain_clients_pass() {
        let g = BrowserGuard::default();
        let post = Method::POST;
        // curl -X POST: no Origin, no body.
        assert!(g.check(&post, &headers(&[("host", "127.0.0.1:1")])).is_ok());
        // The dashboard: same origin, JSON.
        let dashboard = headers(&[
            ("host", "127.0.0.1:1"),
            ("origin", "http://127.0.0.1:1"),
            ("sec-fetch-site", "same-origin"),
            ("content-type", "application/json"),
            ("content-length", "2"),
        ]);
        assert!(g.check(&post, &dashboard).is_ok());
        let refused = |h: &HeaderMap, method: &Method| g.check(method, h).unwrap_err().status;
        let form = headers(&[
            ("host", "127.0.0.1:1"),
            ("origin", "https://evil.example"),
            ("content-type", "application/x-www-form-urlencoded"),
        ]);
        assert_eq!(refused(&form, &post), StatusCode::FORBIDDEN);
        // The same form from a page that hid its origin.
        let hidden = headers(&[
            ("host", "127.0.0.1:1"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", "0"),
        ]);
        assert_eq!(refused(&hidden, &post), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let body_without_type = headers(&[("host", "127.0.0.1:1"), ("content-length", "5")]);
        assert_eq!(
            refused(&body_without_type, &Method::DELETE),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        let fetched = headers(&[("host", "127.0.0.1:1"), ("sec-fetch-site", "cross-site")]);
        assert_eq!(refused(&fetched, &Method::GET), StatusCode::FORBIDDEN);
        let rebound = headers(&[("host", "attacker.example")]);
        assert_eq!(
            refused(&rebound, &Method::GET),
            StatusCode::MISDIRECTED_REQUEST
        );
        // A read needs no body rule.
        let read = headers(&[("host", "localhost"), ("content-type", "text/plain")]);
        assert!(g.check(&Method::GET, &read).is_ok());
    }
}
