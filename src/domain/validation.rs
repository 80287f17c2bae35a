//! Input validation, at least as strict as the provider contract, so that
//! anything a provider would refuse with 400 is refused at Herald's door and
//! never stored.
//!
//! The contract states its rules as JavaScript regular expressions; they are
//! small enough to check by hand, exactly as JavaScript reads them (its `\s`,
//! its `trim`), which a regex engine's own classes would not. (The build has
//! a regex engine all the same: `phonenumber` brings one, for E.164 numbers.)

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::notification::{Email, Message, Sms};

// The contract's own rules, shared with the simulator.
pub use herald_contract::{is_blank, is_valid_email, is_valid_phone};

/// Upper bounds the contract does not set but a production service must.
pub const MAX_SMS_TEXT_CHARS: usize = 1_600;
pub const MAX_SUBJECT_CHARS: usize = 998;
pub const MAX_EMAIL_BODY_CHARS: usize = 50_000;
pub const MAX_RECIPIENTS: usize = 100;
pub const MAX_ADDRESS_CHARS: usize = 254;

/// A control character (C0, DEL or C1: `\0`, ESC, BEL, ...). None makes
/// sense in an address, a subject or a label: PostgreSQL cannot store `\0`
/// in text at all, and the others turn into terminal escapes and forged
/// lines wherever the text is shown.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// In a message's text: tab and line breaks are text; every other control
/// character is refused, as in [`has_control`].
pub fn has_control_in_text(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// An email address as strictly as it will be sent: the contract's rule,
/// and a mailbox lettre (the SMTP provider's library) parses to exactly this
/// address, with no display name, angle brackets or second address
/// (`a,b@example.com` is refused). Non-ASCII is accepted where RFC 6531
/// allows it: UTF-8 in the local part (`ü@example.de`) and internationalized
/// domain names (`x@exämple.com`, which lettre checks through IDNA).
pub fn is_strict_email(address: &str) -> bool {
    !has_control(address)
        && is_valid_email(address)
        && address
            .parse::<lettre::message::Mailbox>()
            .is_ok_and(|m| m.name.is_none() && AsRef::<str>::as_ref(&m.email) == address)
}

const CONTROL: &str = "must not contain control characters (such as NUL, ESC or BEL)";
const CONTROL_IN_TEXT: &str =
    "must not contain control characters other than tab, line feed and carriage return";

/// One bad field, named as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ToSchema)]
pub struct FieldError {
    /// As sent: `phone`, `recipients[2]`, `metadata.order`, in a batch
    /// `notifications[3].text`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An international number in E.164 form: `+`, a country code, at most 15
/// digits in all, and a number that country actually assigns (libphonenumber's
/// metadata, through the `phonenumber` crate).
pub fn is_e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (1..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && phonenumber::parse(None, phone).is_ok_and(|n| phonenumber::is_valid(&n))
}

/// Any number Herald accepts, in E.164 form: the contract's Bangladeshi
/// forms gain their country code (`01712345678` is `+8801712345678`).
pub fn to_e164(phone: &str) -> Option<String> {
    if is_valid_phone(phone) {
        let local = &phone[phone.len() - 11..];
        Some(format!("+88{local}"))
    } else if is_e164(phone) {
        Some(phone.to_owned())
    } else {
        None
    }
}

/// The request bodies as they arrive: every field optional and untyped, so a
/// client learns about every bad field at once, not only the first. Their
/// schemas say what validation requires of each.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(as = SmsFields, description = "An SMS: the number and the text")]
pub struct RawSms {
    #[schema(schema_with = super::schema::phone, required = true)]
    pub phone: Option<Value>,
    #[schema(schema_with = super::schema::sms_text, required = true)]
    pub text: Option<Value>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(as = EmailFields, description = "An email: subject, text body, recipients, and optionally an HTML body and a Reply-To")]
pub struct RawEmail {
    #[schema(schema_with = super::schema::subject, required = true)]
    pub subject: Option<Value>,
    #[schema(schema_with = super::schema::email_body, required = true)]
    pub body: Option<Value>,
    #[schema(schema_with = super::schema::recipients, required = true)]
    pub recipients: Option<Value>,
    #[schema(schema_with = super::schema::html)]
    pub html: Option<Value>,
    #[schema(schema_with = super::schema::reply_to)]
    pub reply_to: Option<Value>,
}

/// Whether a text field may hold line breaks and tabs (a body) or is a
/// single line (a subject).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lines {
    One,
    Many,
}

fn required_text(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: Option<Value>,
    max_chars: usize,
    lines: Lines,
) -> Option<String> {
    match value {
        Some(Value::String(s)) if lines == Lines::One && has_control(&s) => {
            errors.push(FieldError::new(field, CONTROL));
            None
        }
        Some(Value::String(s)) if lines == Lines::Many && has_control_in_text(&s) => {
            errors.push(FieldError::new(field, CONTROL_IN_TEXT));
            None
        }
        Some(Value::String(s)) if is_blank(&s) => {
            errors.push(FieldError::new(field, "must not be empty"));
            None
        }
        Some(Value::String(s)) if s.chars().count() > max_chars => {
            errors.push(FieldError::new(
                field,
                format!("must be at most {max_chars} characters"),
            ));
            None
        }
        Some(Value::String(s)) => Some(s),
        None | Some(Value::Null) => {
            errors.push(FieldError::new(field, "is required"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

pub fn validate_sms(raw: RawSms) -> Result<Message, Vec<FieldError>> {
    let mut errors = Vec::new();
    let phone = match raw.phone {
        Some(Value::String(p)) if is_valid_phone(&p) || is_e164(&p) => Some(p),
        Some(Value::String(_)) => {
            errors.push(FieldError::new(
                "phone",
                "must be a Bangladeshi mobile number such as 01712345678, 8801712345678 or +8801712345678, or an international number in E.164 form such as +14155552671",
            ));
            None
        }
        None | Some(Value::Null) => {
            errors.push(FieldError::new("phone", "is required"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new("phone", "must be a string"));
            None
        }
    };
    let text = required_text(
        &mut errors,
        "text",
        raw.text,
        MAX_SMS_TEXT_CHARS,
        Lines::Many,
    );
    match (phone, text) {
        (Some(phone), Some(text)) if errors.is_empty() => Ok(Message::Sms(Sms { phone, text })),
        _ => Err(errors),
    }
}

pub fn validate_email(raw: RawEmail) -> Result<Message, Vec<FieldError>> {
    let mut errors = Vec::new();
    let subject = required_text(
        &mut errors,
        "subject",
        raw.subject,
        MAX_SUBJECT_CHARS,
        Lines::One,
    );
    let body = required_text(
        &mut errors,
        "body",
        raw.body,
        MAX_EMAIL_BODY_CHARS,
        Lines::Many,
    );
    let recipients = match raw.recipients {
        Some(Value::Array(list)) if list.is_empty() => {
            errors.push(FieldError::new("recipients", "must not be empty"));
            None
        }
        Some(Value::Array(list)) if list.len() > MAX_RECIPIENTS => {
            errors.push(FieldError::new(
                "recipients",
                format!("must hold at most {MAX_RECIPIENTS} addresses"),
            ));
            None
        }
        Some(Value::Array(list)) => {
            let before = errors.len();
            let mut addresses = Vec::with_capacity(list.len());
            for (i, item) in list.into_iter().enumerate() {
                match item {
                    Value::String(a) if a.chars().count() > MAX_ADDRESS_CHARS => {
                        errors.push(FieldError::new(
                            format!("recipients[{i}]"),
                            format!("must be at most {MAX_ADDRESS_CHARS} characters"),
                        ))
                    }
                    Value::String(a) if has_control(&a) => {
                        errors.push(FieldError::new(format!("recipients[{i}]"), CONTROL))
                    }
                    Value::String(a) if is_strict_email(&a) => addresses.push(a),
                    Value::String(_) => errors.push(FieldError::new(
                        format!("recipients[{i}]"),
                        "must be an email address such as name@example.com",
                    )),
                    _ => errors.push(FieldError::new(
                        format!("recipients[{i}]"),
                        "must be a string",
                    )),
                }
            }
            (errors.len() == before).then_some(addresses)
        }
        None | Some(Value::Null) => {
            errors.push(FieldError::new("recipients", "is required"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(
                "recipients",
                "must be an array of email addresses",
            ));
            None
        }
    };
    let html = match raw.html {
        None | Some(Value::Null) => None,
        value => required_text(
            &mut errors,
            "html",
            value,
            MAX_EMAIL_BODY_CHARS,
            Lines::Many,
        ),
    };
    let reply_to = match raw.reply_to {
        None | Some(Value::Null) => None,
        Some(Value::String(a)) if has_control(&a) => {
            errors.push(FieldError::new("reply_to", CONTROL));
            None
        }
        Some(Value::String(a)) if a.chars().count() <= MAX_ADDRESS_CHARS && is_strict_email(&a) => {
            Some(a)
        }
        Some(_) => {
            errors.push(FieldError::new(
                "reply_to",
                "must be an email address such as name@example.com",
            ));
            None
        }
    };
    match (subject, body, recipients) {
        (Some(subject), Some(body), Some(recipients)) if errors.is_empty() => {
            Ok(Message::Email(Email {
                subject,
                body,
                recipients,
                html,
                reply_to,
            }))
        }
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn international_numbers() {
        for p in [
            "+14155552671",
            "+447911123456",
            "+8801712345678",
            "+4915123456789",
        ] {
            assert!(is_e164(p), "{p} should be valid");
        }
        for p in [
            "14155552671",       // no +
            "+1 415 555 2671",   // spaces
            "+1415555267",       // too short for its country
            "+1234567890123456", // 16 digits
            "+",
            "+0123456789",    // no country code 0
            "+8801212345678", // no such Bangladeshi operator
            "++14155552671",
        ] {
            assert!(!is_e164(p), "{p:?} should be invalid");
        }
        assert_eq!(to_e164("01712345678").as_deref(), Some("+8801712345678"));
        assert_eq!(to_e164("8801712345678").as_deref(), Some("+8801712345678"));
        assert_eq!(to_e164("+8801712345678").as_deref(), Some("+8801712345678"));
        assert_eq!(to_e164("+14155552671").as_deref(), Some("+14155552671"));
        assert_eq!(to_e164("0171"), None);
    }

    fn sms(v: Value) -> Result<Message, Vec<FieldError>> {
        validate_sms(serde_json::from_value(v).unwrap())
    }

    fn email(v: Value) -> Result<Message, Vec<FieldError>> {
        validate_email(serde_json::from_value(v).unwrap())
    }

    fn fields(r: Result<Message, Vec<FieldError>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn sms_requests() {
        assert!(sms(json!({"phone": "01712345678", "text": "hi"})).is_ok());
        assert!(sms(json!({"phone": "01712345678", "text": "hi", "extra": 1})).is_ok());
        assert_eq!(fields(sms(json!({}))), ["phone", "text"]);
        assert_eq!(
            fields(sms(json!({"phone": 1717, "text": "  "}))),
            ["phone", "text"]
        );
        assert_eq!(
            fields(sms(json!({"phone": "123", "text": "ok"}))),
            ["phone"]
        );
        assert_eq!(
            fields(sms(json!({"phone": "01712345678", "text": null}))),
            ["text"]
        );
        assert_eq!(
            fields(sms(json!({"phone": "01712345678", "text": ["a"]}))),
            ["text"]
        );
        let long = "x".repeat(MAX_SMS_TEXT_CHARS + 1);
        assert_eq!(
            fields(sms(json!({"phone": "01712345678", "text": long}))),
            ["text"]
        );
        let longest = "ব".repeat(MAX_SMS_TEXT_CHARS);
        assert!(sms(json!({"phone": "01712345678", "text": longest})).is_ok());
    }

    #[test]
    fn strict_addresses_and_their_non_ascii_forms() {
        for good in [
            "a@b.c",
            "user.name+tag@example.com",
            "ü@exämple.de",
            "x@exämple.com",
            "用户@例子.广告",
            "o'brien@example.ie",
        ] {
            assert!(is_strict_email(good), "{good} should be accepted");
        }
        for bad in [
            "a,b@example.com",
            "Name <a@example.com>",
            "<a@example.com>",
            "a@example.com, b@example.com",
            "a(comment)@example.com",
            "x@y..",
            "a..b@example.com",
            "a\0@example.com",
            "a@ex\u{1b}[31mample\u{7}.com",
            "a@example.com\u{85}",
        ] {
            assert!(!is_strict_email(bad), "{bad:?} should be refused");
        }
    }

    #[test]
    fn control_characters_are_refused() {
        let base =
            json!({"subject": "s", "body": "line one\r\n\tline two", "recipients": ["a@b.c"]});
        assert!(email(base.clone()).is_ok(), "tabs and line breaks are text");
        for (field, value) in [
            ("subject", json!("a\u{0}b")),
            ("subject", json!("two\nlines")),
            ("body", json!("nul \u{0}")),
            ("body", json!("esc \u{1b}[2J")),
            ("html", json!("<p>\u{7}</p>")),
            ("recipients", json!(["a@ex\u{1b}[31mample\u{7}.com"])),
            ("reply_to", json!("r\u{0}@b.c")),
        ] {
            let mut body = base.clone();
            body[field] = value;
            let errors = email(body).unwrap_err();
            assert_eq!(errors.len(), 1, "{field}: {errors:?}");
            assert!(
                errors[0].message.contains("control characters"),
                "{errors:?}"
            );
        }
        assert!(sms(json!({"phone": "01712345678", "text": "a\nb\tc"})).is_ok());
        assert_eq!(
            fields(sms(json!({"phone": "01712345678", "text": "a\u{0}b"}))),
            ["text"]
        );
        assert_eq!(
            fields(sms(json!({"phone": "0171234567\u{0}8", "text": "a"}))),
            ["phone"]
        );
    }

    #[test]
    fn email_requests() {
        let ok = json!({"subject": "s", "body": "b", "recipients": ["a@b.c"]});
        assert!(email(ok).is_ok());
        assert_eq!(fields(email(json!({}))), ["subject", "body", "recipients"]);
        assert_eq!(
            fields(email(
                json!({"subject": "s", "body": "b", "recipients": []})
            )),
            ["recipients"]
        );
        assert_eq!(
            fields(email(
                json!({"subject": "s", "body": "b", "recipients": "a@b.c"})
            )),
            ["recipients"]
        );
        assert_eq!(
            fields(email(
                json!({"subject": "", "body": "b", "recipients": ["a@b.c", "bad", 3]})
            )),
            ["subject", "recipients[1]", "recipients[2]"]
        );
        let extras = json!({"subject": "s", "body": "b", "recipients": ["a@b.c"],
            "html": "<p>b</p>", "reply_to": "r@b.c"});
        let Ok(Message::Email(e)) = email(extras) else {
            panic!("html and reply_to are accepted")
        };
        assert_eq!(
            (e.html.as_deref(), e.reply_to.as_deref()),
            (Some("<p>b</p>"), Some("r@b.c"))
        );
        assert_eq!(
            fields(email(
                json!({"subject": "s", "body": "b", "recipients": ["a@b.c"], "html": " ", "reply_to": "nope"})
            )),
            ["html", "reply_to"]
        );
        let many: Vec<String> = (0..=MAX_RECIPIENTS).map(|i| format!("u{i}@x.io")).collect();
        // Strict: what lettre would refuse when sending is refused here.
        assert_eq!(
            fields(email(
                json!({"subject": "s", "body": "b", "recipients": ["a,b@example.com", "<a@b.c>", "x@y..", "a@b.c"], "reply_to": "a;b@example.com"})
            )),
            [
                "recipients[0]",
                "recipients[1]",
                "recipients[2]",
                "reply_to"
            ]
        );
        assert_eq!(
            fields(email(
                json!({"subject": "s", "body": "b", "recipients": many})
            )),
            ["recipients"]
        );
    }
}
