//! A notification's own `callback_url`: where its events go besides the
//! configured webhooks. Herald POSTs to it from inside the operator's
//! network, so only hosts the operator allowed are accepted (a callback
//! naming an internal service would be a server-side request forgery).

use hyper::http::uri::{Scheme, Uri};

/// Longest `callback_url` accepted.
pub const MAX_CALLBACK_URL_CHARS: usize = 2048;

/// A host name, or `*.suffix` for any name below the suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// Held with its leading dot: `*.example.com` is `.example.com`.
    Below(String),
}

impl HostPattern {
    fn parse(raw: &str) -> Option<Self> {
        let lower = raw.trim().to_ascii_lowercase();
        let (below, name) = match lower.strip_prefix("*.") {
            Some(name) => (true, name),
            None => (false, lower.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        let bracketed_ip = name.starts_with('[')
            && name.ends_with(']')
            && name[1..name.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_ok();
        if !(bracketed_ip || name.split('.').all(label_ok)) || (below && bracketed_ip) {
            return None;
        }
        Some(if below {
            HostPattern::Below(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Below(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

/// A pattern in the settings that is neither a host name nor `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a host name or a *.suffix pattern")]
pub struct BadHostPattern(pub String);

/// Which `callback_url`s are accepted: `https://` to a host matching one
/// of `allowed`; plain `http://` only to a host matching `allowed` and
/// `http` both. Nothing is accepted when `allowed` is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackPolicy {
    allowed: Vec<HostPattern>,
    http: Vec<HostPattern>,
}

impl CallbackPolicy {
    pub const NONE: CallbackPolicy = CallbackPolicy {
        allowed: Vec::new(),
        http: Vec::new(),
    };

    pub fn new(allowed: &[String], http: &[String]) -> Result<Self, BadHostPattern> {
        let parse = |list: &[String]| {
            list.iter()
                .map(|raw| HostPattern::parse(raw).ok_or_else(|| BadHostPattern(raw.clone())))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            allowed: parse(allowed)?,
            http: parse(http)?,
        })
    }

    /// Whether any `callback_url` can be accepted at all.
    pub fn is_enabled(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// `Ok` when `url` may be called back; else why not, for the 422.
    pub fn check(&self, url: &str) -> Result<(), String> {
        if !self.is_enabled() {
            return Err("is not accepted here: no callback hosts are allowed".into());
        }
        if url.chars().count() > MAX_CALLBACK_URL_CHARS {
            return Err(format!(
                "must be at most {MAX_CALLBACK_URL_CHARS} characters"
            ));
        }
        let Ok(uri) = url.parse::<Uri>() else {
            return Err("must be an absolute https:// URL".into());
        };
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err("must be an absolute https:// URL".into());
        };
        if authority.as_str().contains('@') {
            return Err("must not carry a user name or password".into());
        }
        let host = authority.host().to_ascii_lowercase();
        let any = |patterns: &[HostPattern]| patterns.iter().any(|p| p.matches(&host));
        if !any(&self.allowed) {
            return Err(format!("host {host} is not an allowed callback host"));
        }
        if *scheme == Scheme::HTTPS || (*scheme == Scheme::HTTP && any(&self.http)) {
            Ok(())
        } else {
            Err(format!(
                "must be https:// (plain http is not allowed for {host})"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str], http: &[&str]) -> CallbackPolicy {
        let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        CallbackPolicy::new(&owned(allowed), &owned(http)).unwrap()
    }

    #[test]
    fn nothing_is_accepted_by_default() {
        assert!(!CallbackPolicy::NONE.is_enabled());
        assert!(CallbackPolicy::NONE.check("https://example.com/h").is_err());
    }

    #[test]
    fn hosts_and_suffixes() {
        let p = policy(&["hooks.example.com", "*.Example.org"], &[]);
        assert!(p.check("https://hooks.example.com/herald").is_ok());
        assert!(p.check("https://HOOKS.example.com:8443/x?y=1").is_ok());
        assert!(p.check("https://a.example.org/").is_ok());
        assert!(p.check("https://b.a.example.org/").is_ok());
        for refused in [
            "https://example.org/",
            "https://evilexample.org/",
            "https://example.com/",
            "https://hooks.example.com.evil.net/",
            "https://user:pw@hooks.example.com/",
            "hooks.example.com/h",
            "/relative",
            "ftp://hooks.example.com/",
        ] {
            assert!(p.check(refused).is_err(), "{refused}");
        }
        let long = format!("https://hooks.example.com/{}", "a".repeat(2048));
        assert!(p.check(&long).is_err());
    }

    #[test]
    fn plain_http_only_where_also_listed_for_it() {
        let p = policy(&["127.0.0.1", "hooks.example.com"], &["127.0.0.1"]);
        assert!(p.check("http://127.0.0.1:9000/cb").is_ok());
        assert!(p.check("https://127.0.0.1:9000/cb").is_ok());
        let err = p.check("http://hooks.example.com/cb").unwrap_err();
        assert!(err.contains("https"), "{err}");
        // Listed for http but not allowed at all: still refused.
        let p = policy(&["hooks.example.com"], &["10.0.0.1"]);
        assert!(p.check("http://10.0.0.1/cb").is_err());
    }

    #[test]
    fn patterns_are_checked() {
        for bad in ["*", "*.", "a..b", "http://x", "exa mple.com", "*.[::1]", ""] {
            assert!(
                CallbackPolicy::new(&[bad.to_owned()], &[]).is_err(),
                "{bad}"
            );
        }
        assert!(CallbackPolicy::new(&["[::1]".to_owned()], &[]).is_ok());
        let p = policy(&["[::1]"], &["[::1]"]);
        assert!(p.check("http://[::1]:8080/cb").is_ok());
    }
}
