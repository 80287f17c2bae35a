//! Standard Webhooks signatures (symmetric, `v1`): HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the bytes a
//! `whsec_` secret encodes, sent base64 in `webhook-signature`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

use crate::secret::Secret;

const SECRET_PREFIX: &str = "whsec_";

/// The spec's bounds on a symmetric key: 192 to 512 bits.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A secret that is not `whsec_` and the base64 of 24 to 64 bytes. Never
/// holds the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret must be whsec_ followed by the base64 of 24 to 64 random bytes")]
pub struct BadSecret;

/// The HMAC key of one receiver.
pub struct SigningKey(hmac::Key);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    pub fn from_secret(secret: &Secret) -> Result<Self, BadSecret> {
        let encoded = secret
            .expose()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(BadSecret)?;
        let key = STANDARD.decode(encoded).map_err(|_| BadSecret)?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(BadSecret);
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, &key)))
    }

    /// The `webhook-signature` value for one attempt: `v1,` and the base64
    /// of the HMAC of `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_libraries_test_vector() {
        // The vector the Standard Webhooks libraries test against.
        let key = SigningKey::from_secret(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
            .unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn id_timestamp_and_body_are_all_signed() {
        let key = SigningKey::from_secret(&Secret::new(format!(
            "whsec_{}",
            STANDARD.encode([7u8; 32])
        )))
        .unwrap();
        let base = key.sign("msg_a", 1, b"{}");
        assert_ne!(base, key.sign("msg_b", 1, b"{}"));
        assert_ne!(base, key.sign("msg_a", 2, b"{}"));
        assert_ne!(base, key.sign("msg_a", 1, b"{ }"));
        assert_eq!(base, key.sign("msg_a", 1, b"{}"));
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_a_long_enough_key() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
            &format!("whsec_{}", STANDARD.encode([1u8; 65])),
        ] {
            let err = SigningKey::from_secret(&Secret::new(bad)).unwrap_err();
            assert!(!err.to_string().contains(bad), "the secret is not shown");
        }
        assert!(
            format!(
                "{:?}",
                SigningKey::from_secret(&Secret::new(format!(
                    "whsec_{}",
                    STANDARD.encode([1u8; 24])
                )))
                .unwrap()
            )
            .contains("***")
        );
    }
}
