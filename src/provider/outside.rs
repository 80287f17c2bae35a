//! Text from outside Herald (a provider's or a webhook receiver's answer, an
//! SMTP server's reply, the errors their connections end with) made fit to
//! keep, in one place: every such text that is stored, shown by the API or
//! put in a webhook payload passes through [`error_text`] or [`storable`]
//! first, where it enters (a provider's [`Verdict`](super::Verdict), a
//! webhook attempt's result).
//!
//! - Control characters (NUL included) are escaped as `\u0000`: PostgreSQL
//!   refuses a NUL in a `text` column, and a round whose result cannot be
//!   written is sent again; ESC and friends would reach terminals.
//! - The text is cut to [`MAX_CHARS`].
//! - In error texts, what looks like an email address or a phone number
//!   is replaced by `[address]` or `[number]`: a refusal often quotes the
//!   recipient, and error texts reach webhook payloads, which hold no
//!   personal data.

/// The longest text kept, in characters.
pub const MAX_CHARS: usize = 1000;

/// `text` with its control characters escaped, cut to [`MAX_CHARS`].
pub fn storable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_CHARS));
    for (i, c) in text.chars().enumerate() {
        if i == MAX_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            // Every control character is below U+00A0: four hex digits.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// An error text from outside, fit to store and to send: addresses and
/// numbers redacted, then [`storable`].
pub fn error_text(text: &str) -> String {
    storable(&redact_numbers(&redact_addresses(text)))
}

/// Where an address-like token stops: what quotes or delimits an address in
/// SMTP replies, JSON and prose. A comma does not stop it: `a,b@x.com` is
/// one (invalid) recipient.
fn ends_address(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '<' | '>' | '"' | '\'' | '`' | '(' | ')' | '[' | ']' | ';'
        )
}

/// Every `local@domain` token replaced by `[address]`.
fn redact_addresses(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        // The token starting here, if it is one that holds an `@` between
        // two non-empty sides.
        let end = (i..chars.len())
            .find(|&j| ends_address(chars[j]))
            .unwrap_or(chars.len());
        if end == i {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let token = &chars[i..end];
        let is_address = token
            .iter()
            .position(|&c| c == '@')
            .is_some_and(|at| at > 0 && at + 1 < token.len());
        if is_address {
            out.push_str("[address]");
        } else {
            out.extend(token);
        }
        i = end;
    }
    out
}

/// How many digits make a phone number: E.164 numbers have 8 to 15, and
/// error codes (Twilio's 21211, SMTP's 550 5.1.1) far fewer.
const NUMBER_DIGITS: usize = 8;

/// Every run of at least [`NUMBER_DIGITS`] digits (with a leading `+` and
/// single spaces, dashes or parentheses between them) that is a word of its
/// own replaced by `[number]`. A run inside a word (`AC0123…`, a hex id) or
/// followed by `:` (a time of day) is kept.
fn redact_numbers(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let is_sep = |c: char| matches!(c, ' ' | '-' | '(' | ')');
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let starts = (chars[i].is_ascii_digit()
            || (chars[i] == '+' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
            || (chars[i] == '(' && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
            && (i == 0 || !is_word(chars[i - 1]));
        if !starts {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // The run: digits, and separators each followed by a digit.
        let mut end = i + 1;
        let mut digits = usize::from(chars[i].is_ascii_digit());
        while end < chars.len() {
            if chars[end].is_ascii_digit() {
                digits += 1;
                end += 1;
            } else if is_sep(chars[end]) && chars.get(end + 1).is_some_and(char::is_ascii_digit) {
                end += 1;
            } else if chars[end] == ')' && chars.get(end + 1) == Some(&' ') {
                // `(555) 123`
                end += 1;
            } else {
                break;
            }
        }
        let after = chars.get(end).copied();
        let alone = after.is_none_or(|c| !is_word(c) && c != ':');
        if digits >= NUMBER_DIGITS && alone {
            out.push_str("[number]");
        } else {
            out.extend(&chars[i..end]);
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(storable("bad\0body"), "bad\\u0000body");
        assert_eq!(
            storable("\u{1b}[31mred\u{7}\r\n\t\u{7f}\u{85}"),
            "\\u001b[31mred\\u0007\\u000d\\u000a\\u0009\\u007f\\u0085"
        );
        assert_eq!(storable("exämple ✓ \\u0000"), "exämple ✓ \\u0000");
        // Escaping what is escaped changes nothing.
        let once = storable("a\0b");
        assert_eq!(storable(&once), once);
    }

    #[test]
    fn long_texts_are_cut() {
        let long = "é".repeat(5000);
        let kept = storable(&long);
        assert_eq!(kept.chars().count(), MAX_CHARS + 1);
        assert!(kept.ends_with('…'));
    }

    #[test]
    fn addresses_are_redacted() {
        for (text, want) in [
            (
                "550 5.1.1 <hard550@example.test>: Recipient address rejected",
                "550 5.1.1 <[address]>: Recipient address rejected",
            ),
            (
                r#"recipient "a,b@example.com": Invalid input"#,
                r#"recipient "[address]": Invalid input"#,
            ),
            (
                r#"{"errors":[{"field":"to","message":"x@exämple.com is bad"}]}"#,
                r#"{"errors":[{"field":"to","message":"[address] is bad"}]}"#,
            ),
            (
                "to alice@example.com, bob@example.org.",
                "to [address] [address]",
            ),
            ("no address @ all, nor a@", "no address @ all, nor a@"),
        ] {
            assert_eq!(redact_addresses(text), want, "{text}");
        }
    }

    #[test]
    fn numbers_are_redacted_and_codes_kept() {
        for (text, want) in [
            (
                "The 'To' number +8801712345678 is not a valid phone number.",
                "The 'To' number [number] is not a valid phone number.",
            ),
            ("to 01712345678", "to [number]"),
            ("call (555) 123-4567 now", "call [number] now"),
            (r#"{"to":"+1 415 555 0100"}"#, r#"{"to":"[number]"}"#),
            (
                r#"{"code": 21211, "more_info": "https://www.twilio.com/docs/errors/21211"}"#,
                r#"{"code": 21211, "more_info": "https://www.twilio.com/docs/errors/21211"}"#,
            ),
            (
                "550 5.1.1 mailbox unavailable",
                "550 5.1.1 mailbox unavailable",
            ),
            (
                "Accounts/AC0123456789abcdef/Messages",
                "Accounts/AC0123456789abcdef/Messages",
            ),
            ("at 2026-12-07T15:21:07Z", "at 2026-12-07T15:21:07Z"),
            ("at 2026-12-07 15:21:07", "at 2026-12-07 15:21:07"),
            ("Vonage status 3: Invalid to", "Vonage status 3: Invalid to"),
        ] {
            assert_eq!(redact_numbers(text), want, "{text}");
        }
    }

    #[test]
    fn error_texts_are_redacted_then_escaped() {
        assert_eq!(
            error_text("HTTP 400: \0 x@example.com +8801712345678"),
            "HTTP 400: \\u0000 [address] [number]"
        );
    }
}
