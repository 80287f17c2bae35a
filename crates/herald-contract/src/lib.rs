//! The provider contract's vocabulary (`docs/contract.md`):
//! its two channels and the rules its providers check every field against.
//!
//! Herald validates with these rules (and more of its own), the simulator
//! answers 400 by them, and the bench names channels with them; keeping them
//! in one small crate lets the server, the simulator and the bench agree
//! without the tools depending on the server.
//!
//! The contract states its rules as JavaScript regular expressions; they are
//! small enough to check by hand, exactly as JavaScript reads them (its `\s`,
//! its `trim`), and this crate needs no regex dependency for the simulator
//! and the bench. (The server's build has a regex engine all the same:
//! `phonenumber` brings one.)

use std::fmt;

use serde::{Deserialize, Serialize};

/// The contract's two kinds of provider: `/api/sms/providerN` and
/// `/api/email/providerN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
// Its schema is derived here, beside the serde attributes it must agree
// with; a trait implementation in the server would break the orphan rule.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Sms,
    Email,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Sms, Channel::Email];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sms" => Some(Channel::Sms),
            "email" => Some(Channel::Email),
            _ => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// JavaScript's `\s` and `String.prototype.trim` treat U+FEFF as white space
/// too; Rust's `char::is_whitespace` does not.
fn is_js_space(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}'
}

/// Non-empty after trimming, as the contract requires of text, subject and body.
pub fn is_blank(s: &str) -> bool {
    s.trim_matches(is_js_space).is_empty()
}

/// `^(?:\+88|88)?(01[3-9]\d{8})$`: a Bangladeshi mobile number.
pub fn is_valid_phone(phone: &str) -> bool {
    let local = phone
        .strip_prefix("+88")
        .or_else(|| phone.strip_prefix("88"))
        .unwrap_or(phone);
    let b = local.as_bytes();
    b.len() == 11
        && b[0] == b'0'
        && b[1] == b'1'
        && (b'3'..=b'9').contains(&b[2])
        && b[3..].iter().all(u8::is_ascii_digit)
}

/// `^[^\s@]+@[^\s@]+\.[^\s@]+$`: no white space, exactly one `@` with
/// something before it, and a domain with a dot that is neither its first
/// nor its last character.
pub fn is_valid_email(address: &str) -> bool {
    if address.chars().any(is_js_space) {
        return false;
    }
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    if local.is_empty() || domain.contains('@') || domain.len() < 3 {
        return false;
    }
    // The dot may be any inner byte; '.' is ASCII so byte slicing is safe
    // whenever the domain's first and last characters are excluded by index.
    let first = domain.chars().next().map_or(0, char::len_utf8);
    let last = domain.chars().next_back().map_or(0, char::len_utf8);
    domain.len() > first + last && domain[first..domain.len() - last].contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones() {
        let good = [
            "01712345678",
            "01312345678",
            "01912345678",
            "8801712345678",
            "+8801712345678",
        ];
        for p in good {
            assert!(is_valid_phone(p), "{p} should be valid");
        }
        let bad = [
            "",
            "0171234567",     // 10 digits
            "017123456789",   // 12 digits
            "01212345678",    // operator digit 2
            "01012345678",    // operator digit 0
            "02712345678",    // not 01
            "+8801212345678", // bad operator after prefix
            "+88 01712345678",
            "880171234567a",
            "+01712345678",
            "++8801712345678",
            "8801712345678 ",
            " 01712345678",
            "0171234567٨", // Arabic-Indic digit: JS \d is ASCII only
            "+8701712345678",
        ];
        for p in bad {
            assert!(!is_valid_phone(p), "{p:?} should be invalid");
        }
    }

    #[test]
    fn emails() {
        let good = [
            "a@b.c",
            "user.name+tag@example.com",
            "x@y..",  // the contract's regex accepts this; so do we
            "x@.y.z", // a dot later than the first character
            "ü@exämple.de",
        ];
        for e in good {
            assert!(is_valid_email(e), "{e} should be valid");
        }
        let bad = [
            "",
            "a",
            "a@b",
            "@b.c",
            "a@.c",
            "a@b.",
            "a@@b.c",
            "a@b@c.d",
            "a b@c.d",
            "a@b.c ",
            "a@b\t.c",
            "a@b.c\u{feff}",
            "a@b\u{a0}.c",
        ];
        for e in bad {
            assert!(!is_valid_email(e), "{e:?} should be invalid");
        }
    }

    #[test]
    fn blank_follows_javascript_trim() {
        assert!(is_blank(""));
        assert!(is_blank(" \t\n\r"));
        assert!(is_blank("\u{feff}\u{a0}\u{2003}"));
        assert!(!is_blank(" x "));
    }
}
