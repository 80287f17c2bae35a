//! What a client may say about a notification beside its message: when to
//! send it, until when it is worth sending, how urgent it is, and where its
//! end is called back.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::callback::CallbackPolicy;
use super::validation::FieldError;
use super::{Priority, UnixMillis, rfc3339};

/// The optional fields as they arrive, untyped, so that every bad one is
/// named at once with the message's own.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(
    as = DeliveryOptions,
    description = "When to send, until when it is worth sending, how urgent it is, labels, \
        hedging, and where its end is called back"
)]
pub struct RawOptions {
    /// Not before this (RFC 3339); at most `accept.schedule_horizon_secs`
    /// ahead. A time past is now.
    #[schema(schema_with = super::schema::timestamp_or_null)]
    pub send_at: Option<Value>,
    /// Not delivered by this (RFC 3339), it ends `expired`, never sent late.
    /// Later than now and than `send_at`; not together with `ttl_secs`.
    #[schema(schema_with = super::schema::timestamp_or_null)]
    pub expires_at: Option<Value>,
    #[schema(schema_with = super::schema::ttl_secs)]
    pub ttl_secs: Option<Value>,
    /// `high` is claimed before `normal` (the default) before `low`.
    #[schema(value_type = Option<Priority>)]
    pub priority: Option<Value>,
    #[schema(schema_with = super::schema::metadata)]
    pub metadata: Option<Value>,
    #[schema(schema_with = super::schema::hedge)]
    pub hedge: Option<Value>,
    #[schema(schema_with = super::schema::callback_url)]
    pub callback_url: Option<Value>,
}

/// The validated options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeliveryOptions {
    /// Not before this; `None`: at once (a `send_at` in the past is "now").
    pub send_at: Option<UnixMillis>,
    /// Not after this: undelivered by then, it ends `expired`.
    pub deliver_by: Option<UnixMillis>,
    pub priority: Priority,
    /// The client's own labels, stored and returned as given.
    pub metadata: BTreeMap<String, String>,
    /// Asked to be hedged: sent to a second provider too when the first is
    /// slow (`resilience/hedge.rs`).
    pub hedge: bool,
    /// Where this notification's own webhook events go.
    pub callback_url: Option<String>,
}

pub const MAX_METADATA_ENTRIES: usize = 16;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 256;

fn metadata(errors: &mut Vec<FieldError>, value: Option<Value>) -> BTreeMap<String, String> {
    let map = match value {
        None | Some(Value::Null) => return BTreeMap::new(),
        Some(Value::Object(map)) if map.len() <= MAX_METADATA_ENTRIES => map,
        Some(Value::Object(_)) => {
            errors.push(FieldError::new(
                "metadata",
                format!("must hold at most {MAX_METADATA_ENTRIES} entries"),
            ));
            return BTreeMap::new();
        }
        Some(_) => {
            errors.push(FieldError::new("metadata", "must be an object of strings"));
            return BTreeMap::new();
        }
    };
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_METADATA_KEY_CHARS
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        // A key is named as sent, its control characters escaped: the
        // answer (and anything that logs it) shows no raw ones.
        let field = format!("metadata.{}", key.escape_debug());
        match value {
            _ if !key_ok => errors.push(FieldError::new(
                field,
                format!("keys must be 1 to {MAX_METADATA_KEY_CHARS} of A-Z a-z 0-9 _ . -"),
            )),
            Value::String(v) if super::validation::has_control(&v) => errors.push(FieldError::new(
                field,
                "must not contain control characters (such as NUL, ESC or BEL)",
            )),
            Value::String(v) if v.chars().count() <= MAX_METADATA_VALUE_CHARS => {
                out.insert(key, v);
            }
            Value::String(_) => errors.push(FieldError::new(
                field,
                format!("must be at most {MAX_METADATA_VALUE_CHARS} characters"),
            )),
            _ => errors.push(FieldError::new(field, "must be a string")),
        }
    }
    out
}

/// How far ahead `send_at` and the delivery deadline may reach, and which
/// `callback_url`s are accepted.
#[derive(Debug, Clone, Copy)]
pub struct OptionLimits<'a> {
    pub now: UnixMillis,
    pub horizon: Duration,
    pub callbacks: &'a CallbackPolicy,
}

fn callback_url(
    errors: &mut Vec<FieldError>,
    value: Option<Value>,
    policy: &CallbackPolicy,
) -> Option<String> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) => match policy.check(&url) {
            Ok(()) => Some(url),
            Err(reason) => {
                errors.push(FieldError::new("callback_url", reason));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("callback_url", "must be a string (a URL)"));
            None
        }
    }
}

fn timestamp(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: Option<Value>,
) -> Option<UnixMillis> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let t = rfc3339::parse(&s);
            if t.is_none() {
                errors.push(FieldError::new(
                    field,
                    "must be an RFC 3339 date-time such as 2026-11-23T09:30:00Z",
                ));
            }
            t
        }
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string (RFC 3339)"));
            None
        }
    }
}

/// A horizon as a caller reads it: whole days as days (humantime would
/// write 60 days as months of 30.44 days).
fn span(d: Duration) -> String {
    match d.as_secs() {
        s if s > 0 && s % 86_400 == 0 => format!("{} days", s / 86_400),
        _ => humantime::format_duration(d).to_string(),
    }
}

pub fn validate_options(
    raw: RawOptions,
    limits: OptionLimits<'_>,
) -> Result<DeliveryOptions, Vec<FieldError>> {
    let mut errors = Vec::new();
    let horizon = limits.now.plus(limits.horizon);
    let horizon_text = format!("must be at most {} ahead", span(limits.horizon));

    let send_at = timestamp(&mut errors, "send_at", raw.send_at);
    if send_at.is_some_and(|t| t > horizon) {
        errors.push(FieldError::new("send_at", horizon_text.clone()));
    }
    let send_at = send_at.filter(|t| *t > limits.now);

    let expires_at = timestamp(&mut errors, "expires_at", raw.expires_at);
    let ttl = match raw.ttl_secs {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64().filter(|s| (1..=u32::MAX.into()).contains(s)) {
            Some(secs) => Some(limits.now.plus(Duration::from_secs(secs))),
            None => {
                errors.push(FieldError::new(
                    "ttl_secs",
                    "must be a whole number of seconds, at least 1",
                ));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("ttl_secs", "must be a number of seconds"));
            None
        }
    };
    let deliver_by = match (expires_at, ttl) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                "ttl_secs",
                "give expires_at or ttl_secs, not both",
            ));
            None
        }
        (at, ttl) => at.or(ttl),
    };
    if let Some(by) = deliver_by {
        let field = if expires_at.is_some() {
            "expires_at"
        } else {
            "ttl_secs"
        };
        let start = send_at.unwrap_or(limits.now);
        if by <= start {
            let after = if send_at.is_some() { "send_at" } else { "now" };
            errors.push(FieldError::new(
                field,
                format!("must be later than {after}"),
            ));
        } else if by > horizon.plus(limits.horizon) {
            // A deadline may lie one horizon beyond the latest send_at.
            errors.push(FieldError::new(
                field,
                format!("must be at most {} ahead", span(limits.horizon * 2)),
            ));
        }
    }

    let priority = match raw.priority {
        None | Some(Value::Null) => Priority::default(),
        Some(Value::String(s)) => Priority::parse(&s).unwrap_or_else(|| {
            errors.push(FieldError::new("priority", "must be high, normal or low"));
            Priority::default()
        }),
        Some(_) => {
            errors.push(FieldError::new("priority", "must be high, normal or low"));
            Priority::default()
        }
    };

    let metadata = metadata(&mut errors, raw.metadata);
    let callback_url = callback_url(&mut errors, raw.callback_url, limits.callbacks);

    let hedge = match raw.hedge {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            errors.push(FieldError::new("hedge", "must be true or false"));
            false
        }
    };

    if errors.is_empty() {
        Ok(DeliveryOptions {
            send_at,
            deliver_by,
            priority,
            metadata,
            hedge,
            callback_url,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: UnixMillis = UnixMillis(1_700_000_000_000);
    const LIMITS: OptionLimits = OptionLimits {
        now: NOW,
        horizon: Duration::from_secs(30 * 86_400),
        callbacks: &CallbackPolicy::NONE,
    };

    fn check(v: Value) -> Result<DeliveryOptions, Vec<String>> {
        validate_options(serde_json::from_value(v).unwrap(), LIMITS)
            .map_err(|errors| errors.into_iter().map(|e| e.field).collect())
    }

    #[test]
    fn nothing_given_means_now_normal_and_no_deadline() {
        assert_eq!(check(json!({})), Ok(DeliveryOptions::default()));
    }

    #[test]
    fn send_at_in_the_past_is_now_and_beyond_the_horizon_is_refused() {
        let past = check(json!({"send_at": "2023-11-14T00:00:00Z"})).unwrap();
        assert_eq!(past.send_at, None);
        let later = check(json!({"send_at": "2023-11-15T00:00:00Z"})).unwrap();
        assert_eq!(later.send_at, Some(UnixMillis(1_700_006_400_000)));
        assert_eq!(
            check(json!({"send_at": "2024-01-01T00:00:00Z"})),
            Err(vec!["send_at".into()])
        );
        assert_eq!(check(json!({"send_at": 17})), Err(vec!["send_at".into()]));
    }

    #[test]
    fn a_deadline_from_expires_at_or_ttl() {
        let ttl = check(json!({"ttl_secs": 300})).unwrap();
        assert_eq!(ttl.deliver_by, Some(UnixMillis(NOW.0 + 300_000)));
        let at = check(json!({"expires_at": "2023-11-15T00:00:00Z"})).unwrap();
        assert_eq!(at.deliver_by, Some(UnixMillis(1_700_006_400_000)));
        assert_eq!(
            check(json!({"expires_at": "2023-11-15T00:00:00Z", "ttl_secs": 5})),
            Err(vec!["ttl_secs".into()])
        );
        assert_eq!(check(json!({"ttl_secs": 0})), Err(vec!["ttl_secs".into()]));
        assert_eq!(check(json!({"ttl_secs": -3})), Err(vec!["ttl_secs".into()]));
        assert_eq!(
            check(json!({"expires_at": "2023-11-14T00:00:00Z"})),
            Err(vec!["expires_at".into()])
        );
        // A deadline may reach one horizon past the latest send_at.
        let far = validate_options(
            serde_json::from_value(json!({"ttl_secs": 61 * 86_400})).unwrap(),
            LIMITS,
        )
        .unwrap_err();
        assert_eq!(far[0].field, "ttl_secs");
        assert_eq!(far[0].message, "must be at most 60 days ahead");
        assert!(check(json!({"ttl_secs": 59 * 86_400})).is_ok());
        // A deadline before the scheduled time could never be met.
        assert_eq!(
            check(json!({"send_at": "2023-11-15T00:00:00Z", "expires_at": "2023-11-14T23:00:00Z"})),
            Err(vec!["expires_at".into()])
        );
    }

    #[test]
    fn metadata_is_a_small_map_of_strings() {
        let ok = check(json!({"metadata": {"order": "4711", "team.name": "billing"}})).unwrap();
        assert_eq!(ok.metadata["order"], "4711");
        assert_eq!(
            check(json!({"metadata": ["x"]})),
            Err(vec!["metadata".into()])
        );
        assert_eq!(
            check(json!({"metadata": {"n": 1, "bad key": "v", "ok": "x".repeat(257)}})),
            Err(vec![
                "metadata.bad key".into(),
                "metadata.n".into(),
                "metadata.ok".into()
            ])
        );
        // PostgreSQL cannot store a NUL in text; no label needs a control
        // character.
        assert_eq!(
            check(
                json!({"metadata": {"a": "x\u{0}y", "b": "\u{1b}[31m", "c": "ok", "d\u{0}": "v"}})
            ),
            Err(vec![
                "metadata.a".into(),
                "metadata.b".into(),
                "metadata.d\\0".into()
            ])
        );
        let many: serde_json::Map<String, Value> =
            (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert_eq!(
            check(json!({"metadata": many})),
            Err(vec!["metadata".into()])
        );
    }

    #[test]
    fn hedging_is_asked_for_with_a_boolean() {
        assert!(check(json!({"hedge": true})).unwrap().hedge);
        assert!(!check(json!({"hedge": false})).unwrap().hedge);
        assert!(!check(json!({"hedge": null})).unwrap().hedge);
        assert_eq!(check(json!({"hedge": "yes"})), Err(vec!["hedge".into()]));
    }

    #[test]
    fn a_callback_url_only_to_an_allowed_host() {
        assert_eq!(
            check(json!({"callback_url": "https://hooks.example.com/h"})),
            Err(vec!["callback_url".into()])
        );
        let policy = CallbackPolicy::new(&["hooks.example.com".into()], &[]).unwrap();
        let limits = OptionLimits {
            callbacks: &policy,
            ..LIMITS
        };
        let given = |v: Value| {
            validate_options(serde_json::from_value(v).unwrap(), limits)
                .map_err(|errors| errors.into_iter().map(|e| e.field).collect::<Vec<_>>())
        };
        assert_eq!(
            given(json!({"callback_url": "https://hooks.example.com/h"}))
                .unwrap()
                .callback_url
                .as_deref(),
            Some("https://hooks.example.com/h")
        );
        assert_eq!(
            given(json!({"callback_url": "https://other.example.com/h", "priority": "x"})),
            Err(vec!["priority".into(), "callback_url".into()])
        );
        assert_eq!(
            given(json!({"callback_url": 5})),
            Err(vec!["callback_url".into()])
        );
    }

    #[test]
    fn priorities() {
        assert_eq!(
            check(json!({"priority": "high"})).unwrap().priority,
            Priority::High
        );
        assert_eq!(
            check(json!({"priority": "urgent"})),
            Err(vec!["priority".into()])
        );
        assert_eq!(
            check(json!({"priority": 1, "send_at": "soon"})),
            Err(vec!["send_at".into(), "priority".into()])
        );
    }
}
