//! `Idempotency-Key`: a client that retries a request with the key it sent
//! the first time gets the first answer back, and nothing is stored twice.

use axum::http::HeaderMap;

use super::problem::Problem;

const HEADER: &str = "idempotency-key";
const MAX_KEY_CHARS: usize = 255;

/// The header as the document describes it (`params(idempotency::Header)`
/// on each route that takes it).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(dead_code, reason = "describes a header, which `key` reads")]
pub struct Header {
    /// 1 to 255 visible ASCII characters. A retry with the same key and body
    /// within `accept.idempotency_ttl_secs` (24 h) gets the first answer and
    /// stores nothing; the same key with another body is 409. Keys are
    /// scoped by API key.
    #[param(
        rename = "Idempotency-Key",
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[\\x21-\\x7E]+$"
    )]
    idempotency_key: Option<String>,
}

/// Whose keys these are: the API key's name, so callers never meet each
/// other's keys; the anonymous scope (empty) when keys are off.
pub fn caller_scope(caller: &super::auth::CallerScope) -> String {
    caller.0.clone()
}

/// The request's key, if it sent one: 1 to 255 visible ASCII characters.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_CHARS)
        .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Problem::bad_idempotency_key(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

/// What a request asked for: its kind (`sms`, `email`, `batch`, whatever
/// the path) and its exact body, as a 64-bit FNV-1a hash in hex.
pub fn fingerprint(kind: &str, body: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.as_bytes().iter().chain(b"\n").chain(body) {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{kind}:{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn keys_are_checked() {
        let mut h = HeaderMap::new();
        assert_eq!(key(&h).unwrap(), None);
        h.insert(HEADER, HeaderValue::from_static("order-42/retry"));
        assert_eq!(key(&h).unwrap().as_deref(), Some("order-42/retry"));
        for bad in ["", "has space", &"x".repeat(256)] {
            h.insert(HEADER, HeaderValue::from_str(bad).unwrap());
            assert!(key(&h).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_tell_bodies_and_kinds_apart() {
        let a = fingerprint("sms", br#"{"text":"a"}"#);
        assert_eq!(a, fingerprint("sms", br#"{"text":"a"}"#));
        assert_ne!(a, fingerprint("sms", br#"{"text":"b"}"#));
        assert_ne!(a, fingerprint("email", br#"{"text":"a"}"#));
    }
}
