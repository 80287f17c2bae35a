//! Secrets in the settings: written as `${ENV_VAR}` and read from the
//! environment at start-up, then held in a type that never shows its value.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A credential (auth token, API key, password). Its `Debug`, `Display` and
/// `Serialize` say `***`: only [`Secret::expose`] gives the value, at the
/// one place it is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

const REDACTED: &str = "***";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Settings are serialized only to layer the defaults, which hold no
/// secrets; anything else that serializes them must not see the value.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// For `#[serde(deserialize_with)]`: a secret setting written as
/// `${ENV_VAR}` (or literally), read from the environment as it is loaded.
/// A missing variable is named; the value never is.
pub fn deserialize_reference<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    let written = String::deserialize(d)?;
    expand(&written, from_env)
        .map(Secret)
        .map_err(serde::de::Error::custom)
}

/// [`deserialize_reference`] for an optional setting.
pub fn deserialize_optional_reference<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Secret>, D::Error> {
    deserialize_reference(d).map(Some)
}

/// A `${NAME}` whose variable is not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {0} is not set")]
pub struct MissingVar(pub String);

/// Replaces every `${NAME}` in `text` with `lookup(NAME)`. `NAME` is
/// letters, digits and `_`, not starting with a digit; anything else
/// (a lone `$`, `${}`, `${a-b}`) is left as written.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, MissingVar> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}').map(|end| &after[..end]) {
            Some(name) if is_var_name(name) => {
                out.push_str(&lookup(name).ok_or_else(|| MissingVar(name.to_owned()))?);
                rest = &after[name.len() + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The process environment, for [`expand`].
pub fn from_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "_A1" => Some("x".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn references_are_replaced_anywhere_in_a_value() {
        assert_eq!(expand("${TOKEN}", vars).unwrap(), "s3cret");
        assert_eq!(expand("Bearer ${TOKEN}!", vars).unwrap(), "Bearer s3cret!");
        assert_eq!(expand("${_A1}${TOKEN}", vars).unwrap(), "xs3cret");
        assert_eq!(expand("a${EMPTY}b", vars).unwrap(), "ab");
        assert_eq!(expand("plain", vars).unwrap(), "plain");
    }

    #[test]
    fn what_is_not_a_reference_stays_as_written() {
        for text in [
            "$TOKEN", "${}", "${1A}", "${a-b}", "${TOKEN", "cost: $5", "$${",
        ] {
            assert_eq!(expand(text, vars).unwrap(), text, "{text}");
        }
    }

    #[test]
    fn a_missing_variable_is_named() {
        assert_eq!(
            expand("x ${NOPE} ${TOKEN}", vars),
            Err(MissingVar("NOPE".into()))
        );
        assert_eq!(
            MissingVar("NOPE".into()).to_string(),
            "environment variable NOPE is not set"
        );
    }

    #[test]
    fn the_value_never_shows() {
        let s = Secret::new("s3cret");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose(), "s3cret");
    }
}
