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

/// An error text from outside, fit to store and to send.
pub fn error_text(text: &str) -> String {
    storable(text)
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
}
