//! The validation rules as JSON Schema, for the API's OpenAPI document:
//! as strict as JSON Schema can say, never stricter than the rules, so that
//! whatever the schema refuses is refused by Herald too. What it cannot say
//! (a number's validity in its country, times relative to now) is in the
//! descriptions.

use std::borrow::Cow;

use serde_json::json;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema,
    SchemaFormat, SchemaType, Type,
};
use utoipa::{PartialSchema, ToSchema};

use super::callback::MAX_CALLBACK_URL_CHARS;
use super::options::{MAX_METADATA_ENTRIES, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS};
use super::validation::{
    MAX_ADDRESS_CHARS, MAX_EMAIL_BODY_CHARS, MAX_RECIPIENTS, MAX_SMS_TEXT_CHARS, MAX_SUBJECT_CHARS,
};
use super::webhook::WebhookId;
use super::{NotificationId, UnixMillis};

/// Every character Herald's trimming treats as white space: Unicode's
/// White_Space (Rust's `char::is_whitespace`) and U+FEFF, as JavaScript's
/// `\s` does. Spelled out: a regex engine's own `\s` differs between
/// engines (Python's takes U+001C to U+001F too).
const WHITE_SPACE: &str =
    r"\t\n\u000B\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000\uFEFF";

/// At least one character that is not white space (`is_blank`).
fn not_blank() -> String {
    format!("[^{WHITE_SPACE}]")
}

/// `is_valid_email`: one `@`, something before it, a dot inside the domain,
/// no white space.
fn email_pattern() -> String {
    format!("^[^{WHITE_SPACE}@]+@[^{WHITE_SPACE}@]+\\.[^{WHITE_SPACE}@]+$")
}

/// `is_valid_phone` or the form of `is_e164` (whose number must also be
/// one its country assigns, which no pattern can say).
const PHONE_PATTERN: &str = r"^(?:(?:\+88|88)?01[3-9][0-9]{8}|\+[1-9][0-9]{1,14})$";

fn nullable(t: Type) -> SchemaType {
    SchemaType::from_iter([t, Type::Null])
}

/// A string, or `null` as well where null is as good as absent.
fn string(or_null: bool) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(if or_null {
        nullable(Type::String)
    } else {
        Type::String.into()
    })
}

fn text(max: usize, or_null: bool) -> ObjectBuilder {
    string(or_null)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(not_blank()))
}

fn address(or_null: bool) -> ObjectBuilder {
    string(or_null)
        .max_length(Some(MAX_ADDRESS_CHARS))
        .pattern(Some(email_pattern()))
}

pub fn phone() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(PHONE_PATTERN))
        .description(Some(
            "A Bangladeshi mobile number (01712345678, 8801712345678, +8801712345678) or an \
             international one in E.164 form (+14155552671) that its country assigns; refused \
             (422) when no configured SMS provider can reach it.",
        ))
        .examples([json!("01712345678")])
        .into()
}

pub fn sms_text() -> Schema {
    text(MAX_SMS_TEXT_CHARS, false)
        .description(Some("The message; not only white space."))
        .examples([json!("Your code is 1234")])
        .into()
}

pub fn subject() -> Schema {
    text(MAX_SUBJECT_CHARS, false)
        .examples([json!("Welcome")])
        .into()
}

pub fn email_body() -> Schema {
    text(MAX_EMAIL_BODY_CHARS, false)
        .description(Some("The text body; not only white space."))
        .into()
}

pub fn html() -> Schema {
    text(MAX_EMAIL_BODY_CHARS, true)
        .description(Some(
            "An HTML body besides the text one, for providers that send it.",
        ))
        .into()
}

pub fn recipients() -> Schema {
    ArrayBuilder::new()
        .items(address(false).examples([json!("ada@example.com")]))
        .min_items(Some(1))
        .max_items(Some(MAX_RECIPIENTS))
        .into()
}

pub fn reply_to() -> Schema {
    address(true).into()
}

/// `send_at` and `expires_at`: RFC 3339 (`2026-11-23T09:30:00Z`).
pub fn timestamp_or_null() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .into()
}

pub fn ttl_secs() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::Integer))
        .minimum(Some(1))
        .maximum(Some(u32::MAX))
        .description(Some(
            "Seconds from now by which it must be delivered, or it ends `expired`; not \
             together with `expires_at`.",
        ))
        .into()
}

pub fn metadata() -> Schema {
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_METADATA_VALUE_CHARS));
    let key = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!(
            "^[A-Za-z0-9_.-]{{1,{MAX_METADATA_KEY_CHARS}}}$"
        )));
    ObjectBuilder::new()
        .schema_type(nullable(Type::Object))
        .max_properties(Some(MAX_METADATA_ENTRIES))
        .property_names(Some(key))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(value.into()))))
        .description(Some(
            "The client's own labels, stored and returned as given; a listing can filter by \
             one entry.",
        ))
        .examples([json!({"order": "4711"})])
        .into()
}

pub fn hedge() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::Boolean))
        .description(Some(
            "Hedged sends: a request alone in flight for the hedge delay gets the next \
             provider beside it, and the first 2xx wins. Heeded where the channel's setting \
             (`hedge.sms`, `hedge.email`) is `asked`, the default; `all` hedges every \
             notification and `never` none. `null` is `false`.",
        ))
        .into()
}

/// `http` or `https` in any case, as the URL parser takes them; the host,
/// which the settings allow, is checked by Herald alone.
const CALLBACK_PATTERN: &str = "^[Hh][Tt][Tt][Pp][Ss]?://";

pub fn callback_url() -> Schema {
    string(true)
        .max_length(Some(MAX_CALLBACK_URL_CHARS))
        .pattern(Some(CALLBACK_PATTERN))
        .description(Some(
            "Where this notification's webhook events go, besides the configured endpoints: an \
             absolute `https://` URL (`http://` only to a host of \
             `webhooks_settings.callback_http_hosts`) whose host is one of \
             `webhooks_settings.callback_allowed_hosts`, without a user name or password; \
             otherwise 422, as always while no callback host is allowed.",
        ))
        .examples([json!("https://hooks.example.com/herald")])
        .into()
}

/// A stored message: an SMS's or an email's provider body.
pub fn message() -> Schema {
    OneOfBuilder::new()
        .item(super::Sms::schema())
        .item(super::Email::schema())
        .into()
}

/// An id as the API writes it: `prefix` and a UUID's 32 hex digits.
fn prefixed_uuid(prefix: &str, description: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!("^{prefix}[0-9a-fA-F]{{32}}$")))
        .description(Some(description))
        .examples([json!(example)])
        .into()
}

impl PartialSchema for NotificationId {
    fn schema() -> RefOr<Schema> {
        prefixed_uuid(
            "ntf_",
            "`ntf_` and a UUIDv7 in hex: ids sort by creation time.",
            "ntf_0190c3f5a1b27c3d8e4f5a6b7c8d9e0f",
        )
    }
}

impl ToSchema for NotificationId {}

impl PartialSchema for WebhookId {
    fn schema() -> RefOr<Schema> {
        prefixed_uuid(
            "msg_",
            "`msg_` and a UUIDv7 in hex, sent as `webhook-id`: one per event and receiver, the \
             same on every retry of it.",
            "msg_01a2272cbc827da282488d771c8a6377",
        )
    }
}

impl ToSchema for WebhookId {}

impl PartialSchema for UnixMillis {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339, in UTC, to the millisecond."))
            .examples([json!("2026-11-23T09:30:00.250Z")])
            .into()
    }
}

impl ToSchema for UnixMillis {
    fn name() -> Cow<'static, str> {
        "Timestamp".into()
    }
}
