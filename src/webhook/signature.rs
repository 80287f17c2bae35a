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

/// What signs one receiver's requests: its secret and, during a rotation,
/// the one being retired. Each request then carries a `v1,` signature under
/// each, space-separated (Standard Webhooks), so a receiver that holds
/// either secret verifies it and the receivers can change over one by one.
#[derive(Debug)]
pub struct Signer {
    current: SigningKey,
    previous: Option<SigningKey>,
}

impl Signer {
    pub fn new(current: &Secret, previous: Option<&Secret>) -> Result<Self, BadSecret> {
        Ok(Self {
            current: SigningKey::from_secret(current)?,
            previous: previous.map(SigningKey::from_secret).transpose()?,
        })
    }

    /// The `webhook-signature` value: the current secret's signature
    /// first, then the previous one's.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let current = self.current.sign(id, timestamp, body);
        match &self.previous {
            Some(previous) => format!("{current} {}", previous.sign(id, timestamp, body)),
            None => current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver's check, as the Standard Webhooks libraries do it: any
    /// one `v1,` entry of the header made with its own secret.
    fn verifies(secret: &str, header: &str, id: &str, timestamp: u64, body: &[u8]) -> bool {
        let mine = SigningKey::from_secret(&Secret::new(secret))
            .unwrap()
            .sign(id, timestamp, body);
        header.split(' ').any(|entry| entry == mine)
    }

    #[test]
    fn during_a_rotation_either_secret_verifies() {
        let old = format!("whsec_{}", STANDARD.encode([3u8; 32]));
        let new = format!("whsec_{}", STANDARD.encode([4u8; 32]));
        let other = format!("whsec_{}", STANDARD.encode([5u8; 32]));
        let signer = Signer::new(&Secret::new(&new), Some(&Secret::new(&old))).unwrap();
        let header = signer.sign("msg_a", 7, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.split(' ').all(|e| e.starts_with("v1,")));
        assert!(
            verifies(&old, &header, "msg_a", 7, b"{}"),
            "a receiver not yet changed"
        );
        assert!(
            verifies(&new, &header, "msg_a", 7, b"{}"),
            "a receiver already changed"
        );
        assert!(!verifies(&other, &header, "msg_a", 7, b"{}"));
        assert!(!verifies(&old, &header, "msg_a", 7, b"{ }"));
        // Outside a rotation: one signature, as before.
        let single = Signer::new(&Secret::new(&new), None).unwrap();
        assert_eq!(
            single.sign("msg_a", 7, b"{}"),
            header.split(' ').next().unwrap()
        );
        assert!(Signer::new(&Secret::new(&new), Some(&Secret::new("whsec_c2hvcnQ="))).is_err());
    }

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
